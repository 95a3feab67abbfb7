#!/bin/bash
#
# tests/bench/sizing.sh: the figures of SIZING in prepaidd(8). Against one
# throwaway PostgreSQL (fsync on, as in bench.sh) and one mosquitto, with
# charging on (a flat tariff), it measures:
#
#   1. memory in fleet size: a fresh daemon receives readings from 1,000,
#      10,000 and 100,000 meters (SIZING_PER_METER readings each); its peak
#      RSS (VmHWM) after each;
#   2. the CPU cost at 100,000 meters: readings at the rate of a 15-minute
#      and of a 1-minute cadence (111/s and 1,667/s), open loop, for
#      SIZING_SECONDS each; the daemon's CPU and PostgreSQL's (all its
#      processes) over that time, as a share of one core, and the
#      publish->commit p99;
#   3. two daemons sharing one database and the readings (mqtt.shared_group):
#      the sustained rate with charging of SIZING_N readings, against one
#      daemon alone on the same machine.
#
# A measurement, not a test (not part of make check). Prints the machine's
# load average with every figure: on a machine shared with other work the
# figures are only as good as the CPU left to them.
#
# Environment: BUILD (as bench.sh), SIZING_SECONDS (60), SIZING_N (200000),
# SIZING_PER_METER (2), SIZING_CONNECTIONS ([ingest] connections; default),
# SIZING_PARTS (which of "rss cpu shared" to run; all).

set -e

top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$top_srcdir/_build}
top_builddir=$(cd "$BUILD" && pwd)
export top_srcdir top_builddir
# shellcheck source=../lib.sh
. "$top_srcdir/tests/lib.sh"

SECONDS_EACH=${SIZING_SECONDS:-60}
PARTS=${SIZING_PARTS:-rss cpu shared}
N=${SIZING_N:-200000}
PER_METER=${SIZING_PER_METER:-2}
SIM_TIMEOUT=900
skip_unless_tools

line()
{
	printf '%-46s %s\n' "$1" "$2"
}

load()
{
	cut -d' ' -f1 /proc/loadavg
}

# CPU ticks (user + system) of a process and of its children that exited.
ticks()
{
	awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# CPU ticks of every PostgreSQL process (the postmaster and its backends).
pg_ticks()
{
	local pm t=0 p

	pm=$(head -n 1 "$PG_DIR/data/postmaster.pid")
	for p in $pm $(pgrep -P "$pm"); do
		t=$((t + $(ticks "$p")))
	done
	echo "$t"
}

start_daemon()
{
	local conf=$1 port=$2 deadline

	$LIB_SETSID "$top_builddir/prepaidd" -c "$conf" >>"$DAEMON_LOG" 2>&1 &
	STARTED_PID=$!
	LIB_PIDS+=("$STARTED_PID")
	deadline=$(($(lib_now_ms) + 15000))
	until [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' \
	    "http://127.0.0.1:$port/healthz" || true)" = 200 ]; do
		lib_alive "$STARTED_PID" || fail "prepaidd exited during start-up"
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "prepaidd not ready within 15 s"
		sleep 0.2
	done
}

inserted()
{
	local a b

	a=$(curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics" |
	    awk '$1 == "prepaidd_readings_inserted_total" { print $2 }')
	b=0
	[ -z "${DAEMON2_PID:-}" ] || b=$(daemon2_metric readings_inserted_total)
	echo $((${a:-0} + ${b:-0}))
}

wait_inserted()
{
	local want=$1 deadline

	deadline=$(($(lib_now_ms) + 900000))
	until [ "$(inserted)" -ge "$want" ]; do
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "only $(inserted) of $want inserted"
		sleep 0.1
	done
}

reset()
{
	psql_q "SET session_replication_role = replica;
	    TRUNCATE prepaid.readings, prepaid.meters, prepaid.gaps, prepaid.events,
	        prepaid.commands, prepaid.command_audit, prepaid.rejects, prepaid.ledger,
	        prepaid.anomalies CASCADE" >/dev/null 2>&1 || fail "could not empty the tables"
	psql_q "CHECKPOINT" >/dev/null
}

pg_start
for s in "fsync = on" "full_page_writes = on" "synchronous_commit = on" \
    "shared_buffers = '128MB'"; do
	psql_q "ALTER SYSTEM SET $s" >/dev/null
done
pg_restart
broker_start
CONF_ARGS=("mqtt.client_id=sizing-a" "ingest.resend_on_gap=false" "log.level=info"
    ${SIZING_CONNECTIONS:+"ingest.connections=$SIZING_CONNECTIONS"})
daemon_config "${CONF_ARGS[@]}"
daemon_migrate
psql_q "SELECT prepaid.create_tariff('flat', 'sizing flat');
    SELECT prepaid.create_tariff_version('flat', '2000-01-01', '{\"price\": 0.5283, \"standing_per_day\": 0.5}');
    UPDATE prepaid.sites SET default_tariff_id = 'flat' WHERE site_id = 'default'" >/dev/null

echo
echo "prepaidd sizing — $(date '+%F %T'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
line "PostgreSQL" "$(psql_q 'SHOW server_version'), fsync=$(psql_q 'SHOW fsync')"
line "[ingest] connections" "${SIZING_CONNECTIONS:-default}"
echo

# --- 1. memory in fleet size

for m in 1000 10000 100000; do
	[[ " $PARTS " == *" rss "* ]] || break
	reset
	start_daemon "$CONF" "$HTTP_PORT"
	DAEMON_PID=$STARTED_PID
	sim -i "R$m" -n "$m" --load $((m * PER_METER)) -q 1 --inflight 100 --no-commands \
	    -w 500 -r 900000 >"$LIB_TMP/sim-rss.out" 2>&1 || fail "prepaid-sim failed"
	wait_inserted $((m * PER_METER))
	hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status")
	line "peak RSS, $m meters x $PER_METER readings" "$((hwm / 1024)) MiB (load $(load))"
	daemon_stop >/dev/null
done

# --- 2. CPU at 100,000 meters

for cad in 900 60; do
	[[ " $PARTS " == *" cpu "* ]] || break
	rate=$(((100000 + cad - 1) / cad))
	n=$((rate * SECONDS_EACH))
	reset
	start_daemon "$CONF" "$HTTP_PORT"
	DAEMON_PID=$STARTED_PID
	# Every meter registered in credit (as most of a fleet is: the arrears
	# ladder has nothing to do), known and charged twice before the window
	# (its rate cached), the ladder's first look at every meter done,
	# vacuumed and checkpointed: the window's readings take the steady
	# path, as in a fleet running for a while.
	psql_q "SELECT count(prepaid.credit(id, 100000, 'sizing')) FROM (
	    SELECT id FROM (SELECT 'C' || CASE WHEN i < 10000 THEN lpad(i::text, 4, '0')
	                                      ELSE i::text END AS id
	                    FROM generate_series(1, 100000) i) x
	    WHERE prepaid.register_meter(id) IS NOT NULL) y" >/dev/null
	sim -i C -n 100000 --load 200000 -q 1 --inflight 100 --no-commands -w 500 -r 900000 \
	    >"$LIB_TMP/sim-warm.out" 2>&1 || fail "prepaid-sim failed"
	wait_inserted 200000
	deadline=$(($(lib_now_ms) + 600000))
	until [ "$(psql_q "SELECT count(*) FROM prepaid.meters WHERE ladder_due_at <= now()")" = 0 ]; do
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "the ladder did not settle"
		sleep 1
	done
	psql_q "VACUUM ANALYZE" >/dev/null 2>&1
	psql_q "CHECKPOINT" >/dev/null
	base=$(inserted)
	d0=$(ticks "$DAEMON_PID") p0=$(pg_ticks) t0=$(date +%s.%N)
	# The window goes on where the warm-up ended: seq 3, and the register
	# one interval further (500 W for 15 minutes is 125 Wh a reading after
	# 1,000,000 and 1,000,125), so that its readings are plausible
	# consumption and take the steady path (a register far ahead would be
	# an implausible jump, held and measured as the anomaly path).
	sim -i C -n 100000 --start-seq 3 --start-energy 1000250 --load "$n" --rate "$rate" -q 1 --inflight 100 \
	    --no-commands -w 500 -r 900000 >"$LIB_TMP/sim-cad.out" 2>&1 || fail "prepaid-sim failed"
	wait_inserted $((base + n))
	d1=$(ticks "$DAEMON_PID") p1=$(pg_ticks) t1=$(date +%s.%N)
	hz=$(getconf CLK_TCK)
	p99=$(psql_q "SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY
	        extract(epoch FROM ingested_at - ts) * 1000)::numeric, 1)
	    FROM prepaid.readings WHERE seq >= 3")
	line "100,000 meters every $((cad / 60)) min ($rate/s)" \
	    "$(awk -v d=$((d1 - d0)) -v p=$((p1 - p0)) -v hz="$hz" -v t0="$t0" -v t1="$t1" -v n="$n" \
	    'BEGIN { w = t1 - t0; printf "daemon %.1f%% of a core, PostgreSQL %.1f%%; %.0f us + %.0f us CPU a reading", 100 * d / hz / w, 100 * p / hz / w, 1e6 * d / hz / n, 1e6 * p / hz / n }') (p99 $p99 ms, load $(load))"
	daemon_stop >/dev/null
done

# --- 3. two daemons sharing the readings

shared_rate()
{
	local two=$1 t0 t1

	reset
	daemon_config "${CONF_ARGS[@]}" "mqtt.shared_group=sizing"
	start_daemon "$CONF" "$HTTP_PORT"
	DAEMON_PID=$STARTED_PID
	if [ "$two" = 1 ]; then
		daemon2_config "${CONF_ARGS[@]}" "mqtt.client_id=sizing-b" "mqtt.shared_group=sizing"
		start_daemon "$CONF2" "$HTTP2_PORT"
		DAEMON2_PID=$STARTED_PID
	fi
	# Warm: the meters known and charged once.
	sim -i S -n 1000 --load 1000 -q 1 --no-commands -w 50000 -r 60000 \
	    >"$LIB_TMP/sim-sw.out" 2>&1 || fail "prepaid-sim failed"
	wait_inserted 1000
	psql_q "SELECT count(prepaid.credit(meter_id, 100000, 'sizing'))
	    FROM prepaid.meters WHERE meter_id LIKE 'S%'" >/dev/null
	base=$(inserted)
	t0=$(date +%s.%N)
	sim -i S -n 1000 --start-seq 2 --start-energy 2000000 --load "$N" -q 1 --inflight 200 --no-commands -w 50000 \
	    -r 60000 >"$LIB_TMP/sim-s.out" 2>&1 || fail "prepaid-sim failed"
	wait_inserted $((base + N))
	t1=$(date +%s.%N)
	SHARED_RATE=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
	[ "$two" = 1 ] && SHARE2="$(daemon2_metric readings_inserted_total)" || SHARE2=0
	[ "$two" = 1 ] && daemon2_stop >/dev/null
	daemon_stop >/dev/null
}

[[ " $PARTS " == *" shared "* ]] || exit 0
shared_rate 0
ONE=$SHARED_RATE
line "one daemon, charging on" "$ONE readings/s (load $(load))"
shared_rate 1
TWO=$SHARED_RATE
line "two daemons, one shared subscription" "$TWO readings/s (second daemon wrote $SHARE2, load $(load))"
line "two / one" "$(awk -v a="$TWO" -v b="$ONE" 'BEGIN { printf "%.2f", a / b }')"
exit 0
