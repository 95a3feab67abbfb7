#!/bin/bash
#
# tests/bench/bench.sh: the ingest benchmark of the meter link. In one run,
# against one throwaway PostgreSQL (fsync and synchronous_commit on, so every
# commit is paid for) and one mosquitto on loopback, and always into the same
# prepaid.readings table (emptied between phases), it measures:
#
#   1. the broker-only ceiling: prepaid-sim load -> mosquitto -> a QoS 1
#      subscriber that discards (mosquitto_sub > /dev/null);
#   2. batched COPY of the same rows at the daemon's batch size (bench-copy);
#   2b. the write-set floor: PostgreSQL alone writing, in the daemon's batch
#      shape, what the daemon writes for the readings it charges (a
#      readings row and a ledger row each, the meters' rows updated, the
#      batch's meters locked), with pgbench, one reading per meter in a
#      batch and arrays: the most any daemon could ingest here while
#      writing that;
#   3. the naive subscriber: one autocommit INSERT per message (bench-naive);
#   4. prepaidd's sustained ingest rate, QoS 1, from the simulator, with
#      charging off (no tariff) and (4b) on (a flat tariff; the meters
#      registered in advance and in credit, so that the arrears ladder is
#      not measured as charging);
#   5. publish->commit latency (p50/p99) at half that rate, open loop;
#   6. prepaidd's peak RSS;
#   6b. the journal's cost: sustained rate and p99 publish->commit at a
#      quarter of that rate, with the journal and with [journal] enabled =
#      false (unsafe, benchmarks only), alternating, twice each;
#   7. notification dispatch: messages/s to a loopback gateway (tests/fakegw)
#      while readings keep arriving, and the event loop's lag p99 meanwhile;
#   8. catch-up: a backlog queued in the broker for the daemon's session
#      while it is stopped (charging on), then drained after a start: (8a)
#      single readings from $METERS meters (one reading per meter in a
#      batch), (8b) single readings from a few meters (many readings per
#      meter in a batch, as in any catch-up), (8c) array payloads of
#      BENCH_CATCHUP_ARRAY readings (a gateway's or a back-filling meter's);
#
# then prints the ratios against the targets of the meter-link issue. It is
# a measurement, not a test: it exits 0 whatever the figures, and non-zero
# only when something broke. Takes a minute or two on a 2-core machine.
#
# Environment: BUILD (directory holding prepaidd, prepaid-sim and
# tests/bench/*; default _build under the repository root), BENCH_N
# (readings for phases 1, 2 and 4; 300000), BENCH_METERS (1000),
# BENCH_BATCH (the daemon's batch_size, also COPY's; 1000), BENCH_WINDOW_MS
# (batch_window_ms; 50), BENCH_QUEUE (queue_bound; 50000), BENCH_NAIVE_N
# (20000), BENCH_LAT_SECONDS (length of the latency phase; 10),
# BENCH_INFLIGHT (the simulator's publish window; 100), BENCH_CONNECTIONS
# ([ingest] connections; the daemon's default if unset), BENCH_CATCHUP_N
# (readings in each catch-up backlog; 200000, 1000000 for the published
# figure), BENCH_CATCHUP_FEW (meters in 8b; 20), BENCH_CATCHUP_ARRAY
# (readings per array payload in 8c; 96, a day at 15 minutes),
# BENCH_JOURNAL_ROUNDS (rounds of phase 6b; 2, 0 skips it), BENCH_FLOOR_SECONDS
# (length of phase 2b; 10),
# BENCH_SKIP_CATCHUP=1 skips phase 8, BENCH_ONLY_CATCHUP=1 runs phases 1, 2 and 8
# only, BENCH_ONLY_SUSTAINED=1 phases 1 to 4b only, BENCH_PROFILE=1 prints
# PostgreSQL's time per function after phases 4, 4b and each catch-up,
# BENCH_PG_CONF adds PostgreSQL settings ("name = value", separated by ";",
# e.g. auto_explain's), PREPAID_KEEP_TMP=1 keeps the logs.

set -e

top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$top_srcdir/_build}
[ -d "$BUILD" ] || { echo "bench: BUILD=$BUILD is not a directory" >&2; exit 1; }
top_builddir=$(cd "$BUILD" && pwd)
export top_srcdir top_builddir

# shellcheck source=../lib.sh
. "$top_srcdir/tests/lib.sh"

N=${BENCH_N:-300000}
METERS=${BENCH_METERS:-1000}
BATCH=${BENCH_BATCH:-1000}
WINDOW_MS=${BENCH_WINDOW_MS:-50}
QUEUE=${BENCH_QUEUE:-50000}
NAIVE_N=${BENCH_NAIVE_N:-20000}
LAT_SECONDS=${BENCH_LAT_SECONDS:-10}
INFLIGHT=${BENCH_INFLIGHT:-100}
CONNECTIONS=${BENCH_CONNECTIONS:-}
CATCHUP_N=${BENCH_CATCHUP_N:-200000}
CATCHUP_FEW=${BENCH_CATCHUP_FEW:-20}
CATCHUP_ARRAY=${BENCH_CATCHUP_ARRAY:-96}
JOURNAL_ROUNDS=${BENCH_JOURNAL_ROUNDS:-2}
# Generous: a phase that takes this long has broken, not run slowly.
PHASE_TIMEOUT=${BENCH_PHASE_TIMEOUT:-180}
SIM_TIMEOUT=$PHASE_TIMEOUT

for t in tests/bench/bench-naive tests/bench/bench-copy; do
	[ -x "$top_builddir/$t" ] ||
	    fail "$top_builddir/$t is not built (make $t)"
done
skip_unless_tools

# --- helpers

bench_now()
{
	date +%s.%N
}

# awk does the floating point: bench_calc 'expression' [name=value ...]
bench_calc()
{
	local expr=$1

	shift
	awk "$@" "BEGIN { printf \"%s\", $expr }" </dev/null
}

bench_line()
{
	printf '%-44s %s\n' "$1" "$2"
}

# A field of a "RESULT a=1 b=2" line.
bench_field()
{
	echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"
}

bench_result()
{
	grep '^RESULT ' "$1" | tail -n 1
}

bench_psql()
{
	psql_q "$1"
}

# Empty the table (and the meters' state) so that every phase writes the
# same rows into the same, empty table; the checkpoint keeps the previous
# phase's dirty pages out of the next one's timing.
bench_reset()
{
	# (The ledger refuses TRUNCATE: triggers are off for this session only.)
	bench_psql "SET lock_timeout = '10s'; SET session_replication_role = replica;
	    TRUNCATE prepaid.readings, prepaid.meters, prepaid.gaps, prepaid.events,
	        prepaid.commands, prepaid.command_audit, prepaid.rejects, prepaid.ledger,
	        prepaid.anomalies CASCADE;
	    UPDATE prepaid.sites SET default_tariff_id = NULL" \
	    >/dev/null || fail "could not empty the tables"
	bench_psql "CHECKPOINT" >/dev/null
}

# Register the simulator's meters $1 0001..$2 in advance, in credit, as
# most of a fleet is: with every meter in arrears the arrears ladder (a
# trigger on every balance change, sweeps) would be measured as charging.
bench_credit()
{
	bench_psql "SELECT count(prepaid.credit(id, 1000000, 'bench')) FROM (
	    SELECT id FROM (SELECT '$1' || CASE WHEN i < 10000 THEN lpad(i::text, 4, '0')
	                                       ELSE i::text END AS id
	                    FROM generate_series(1, $2) i) x
	    WHERE prepaid.register_meter(id) IS NOT NULL) y" >/dev/null ||
	    fail "could not register and credit the meters"
}

bench_metric()
{
	daemon_metrics | awk -v m="$1" '$1 == m { print $2; exit }'
}

# Poll /metrics every 100 ms until readings_inserted_total reaches $1; sets
# BENCH_T_DONE to the wall clock (seconds since the epoch) when it did.
bench_wait_inserted()
{
	local want=$1 deadline v

	deadline=$(($(lib_now_ms) + PHASE_TIMEOUT * 1000))
	while :; do
		v=$(bench_metric prepaidd_readings_inserted_total)
		if [ -n "$v" ] && [ "$v" -ge "$want" ]; then
			BENCH_T_DONE=$(bench_now)
			return 0
		fi
		lib_alive "$DAEMON_PID" || fail "prepaidd died"
		[ "$(lib_now_ms)" -lt "$deadline" ] ||
		    fail "prepaidd inserted ${v:-?} of $want readings in ${PHASE_TIMEOUT}s"
		sleep 0.1
	done
}

# The broker exactly as the benchmark wants it (persistence off, deep
# queues); lib_cleanup stops it through BROKER_PID.
bench_broker_start()
{
	local dir=$LIB_TMP/broker deadline

	BROKER_PORT=$(free_port)
	mkdir -p "$dir"
	cat >"$dir/mosquitto.conf" <<EOF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 100
log_dest stderr
log_type error
log_type warning
EOF
	$LIB_SETSID "$MOSQUITTO" -c "$dir/mosquitto.conf" >>"$BROKER_LOG" 2>&1 &
	BROKER_PID=$!
	deadline=$(($(lib_now_ms) + 10000))
	until lib_port_open "$BROKER_PORT"; do
		lib_alive "$BROKER_PID" ||
		    { tail -n 20 "$BROKER_LOG" >&2; fail "mosquitto exited"; }
		[ "$(lib_now_ms)" -lt "$deadline" ] ||
		    fail "mosquitto did not listen on $BROKER_PORT"
		sleep 0.1
	done
}

# The daemon without -v: debug logging would cost it time per message. Ready
# when /healthz says so and a probe on a reading topic has arrived, which
# proves the subscription is in place before the load starts.
bench_daemon_start()
{
	local deadline

	echo "=== bench daemon start $(date +%T)" >>"$DAEMON_LOG"
	$LIB_SETSID "$top_builddir/prepaidd" -c "$CONF" >>"$DAEMON_LOG" 2>&1 &
	DAEMON_PID=$!
	deadline=$(($(lib_now_ms) + 15000))
	until [ "$(daemon_healthz)" = 200 ]; do
		lib_alive "$DAEMON_PID" || { DAEMON_PID=; fail "prepaidd exited during start-up"; }
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "prepaidd not healthy within 15 s"
		sleep 0.1
	done
	until [ "$(bench_metric prepaidd_messages_received_total)" -gt 0 ] 2>/dev/null; do
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "prepaidd does not receive readings"
		pub meters/PROBE/reading probe
		sleep 0.2
	done
}

# The flat tariff of the charging phases, as the default site's.
bench_tariff()
{
	bench_psql "SELECT prepaid.create_tariff('bench', 'bench flat')
	            WHERE NOT EXISTS (SELECT 1 FROM prepaid.tariffs WHERE tariff_id = 'bench');
	    SELECT prepaid.create_tariff_version('bench', '2000-01-01', '{\"price\": 0.5283, \"standing_per_day\": 0.5}')
	            WHERE NOT EXISTS (SELECT 1 FROM prepaid.tariff_versions WHERE tariff_id = 'bench');
	    UPDATE prepaid.sites SET default_tariff_id = 'bench' WHERE site_id = 'default'" >/dev/null ||
	    fail "could not set up the tariff"
}

# BENCH_PROFILE=1: where PostgreSQL's time went since the last call (the
# functions with the most time of their own, track_functions = all).
bench_profile()
{
	[ -n "${BENCH_PROFILE:-}" ] || return 0
	bench_psql "SELECT '  ' || rpad(funcname, 24) || lpad(calls::text, 8) || ' calls '
	                   || lpad(round(self_time)::text, 7) || ' ms self '
	                   || lpad(round(total_time)::text, 7) || ' ms total'
	            FROM pg_stat_user_functions ORDER BY self_time DESC LIMIT 8"
	bench_psql "SELECT pg_stat_reset()" >/dev/null
}

# --- set-up

note "setting up: PostgreSQL (fsync on), mosquitto, schema"
pg_start
# lib.sh makes a cluster for tests (fsync off, small buffers). A benchmark
# pays real commits: fsync, full-page writes and synchronous commit on, and
# PostgreSQL's default shared_buffers.
for s in "fsync = on" "full_page_writes = on" "synchronous_commit = on" \
    "shared_buffers = '128MB'" ${BENCH_PROFILE:+"track_functions = 'all'"}; do
	bench_psql "ALTER SYSTEM SET $s" >/dev/null
done
# (appended to postgresql.conf: ALTER SYSTEM refuses a module's settings
# before the module is loaded)
IFS=';' read -r -a extra <<<"${BENCH_PG_CONF:-}"
for s in "${extra[@]}"; do
	printf '%s\n' "$s" | lib_as_pg tee -a "$PG_DIR/data/postgresql.conf" >/dev/null
done
pg_restart
[ "$(bench_psql 'SHOW fsync')" = on ] || fail "fsync is not on"
[ "$(bench_psql 'SHOW synchronous_commit')" = on ] || fail "synchronous_commit is not on"
CONNINFO="host=127.0.0.1 port=$PG_PORT user=postgres dbname=prepaid"

bench_broker_start
BENCH_CONF=(
    "mqtt.client_id=bench-prepaidd" \
    "ingest.batch_size=$BATCH" \
    "ingest.batch_window_ms=$WINDOW_MS" \
    "ingest.queue_bound=$QUEUE" \
    "ingest.resend_on_gap=false" \
    "commands.poll_interval_ms=1000" \
    "commands.retry_initial_ms=5000" \
    "commands.retry_max_ms=60000" \
    "log.level=info"
    ${CONNECTIONS:+"ingest.connections=$CONNECTIONS"}
)
daemon_config "${BENCH_CONF[@]}"
daemon_migrate

echo
echo "prepaidd ingest benchmark — $(date '+%F %T')"
bench_line "machine" "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
bench_line "PostgreSQL" "$(bench_psql 'SHOW server_version'), fsync=$(bench_psql 'SHOW fsync'), synchronous_commit=$(bench_psql 'SHOW synchronous_commit'), shared_buffers=$(bench_psql 'SHOW shared_buffers')"
bench_line "readings, meters" "$N readings from $METERS meters, QoS 1, window $INFLIGHT"
bench_line "daemon batch" "batch_size=$BATCH batch_window_ms=$WINDOW_MS queue_bound=$QUEUE connections=${CONNECTIONS:-default}"
echo

# --- 1. broker-only ceiling

note "1/5 broker only: simulator -> mosquitto -> mosquitto_sub > /dev/null"
# A persistent session subscribed before the load starts, so that the
# subscriber misses nothing however late its process gets going.
mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -c -i bench-sink \
    -t 'meters/+/reading' -E || fail "mosquitto_sub could not subscribe"
$LIB_SETSID timeout "$PHASE_TIMEOUT" mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" \
    -q 1 -c -i bench-sink -t 'meters/+/reading' -C "$N" >/dev/null 2>"$LIB_TMP/sink.err" &
SINK_PID=$!
LIB_PIDS+=("$SINK_PID")
t0=$(bench_now)
sim -n "$METERS" --load "$N" -q 1 --inflight "$INFLIGHT" --no-commands \
    >"$LIB_TMP/sim-broker.out" 2>&1 || fail "prepaid-sim failed: $(tail -n 3 "$LIB_TMP/sim-broker.out")"
wait "$SINK_PID" || fail "the discarding subscriber did not receive $N messages"
t1=$(bench_now)
# Drop the session: a clean connect with the same id discards it.
mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -i bench-sink -t bench/none -E
BROKER_RATE=$(bench_calc 'sprintf("%.0f", n / (t1 - t0))' -v n="$N" -v t0="$t0" -v t1="$t1")
bench_line "broker only (sim -> mosquitto -> sink)" "$BROKER_RATE readings/s"
bench_line "  simulator" "$(bench_result "$LIB_TMP/sim-broker.out")"

# --- 2. batched COPY

note "2/5 batched COPY, $BATCH rows a transaction"
bench_reset
"$top_builddir/tests/bench/bench-copy" -d "$CONNINFO" -N "$N" -b "$BATCH" -m "$METERS" \
    >"$LIB_TMP/copy.out" || fail "bench-copy failed"
r=$(bench_result "$LIB_TMP/copy.out")
COPY_RATE=$(bench_field "$r" rate)
[ "$(bench_psql 'SELECT count(*) FROM prepaid.readings')" = "$N" ] ||
    fail "bench-copy did not write $N rows"
bench_line "batched COPY ($BATCH rows/commit)" "$COPY_RATE readings/s"

# --- 2b. the write-set floor

# What PostgreSQL alone takes to write what the daemon writes for readings
# charged on the fast path, and nothing else: per batch, lock the meters in
# id order; per reading, a readings row and a ledger charge row; per meter,
# its row updated (register, counters, exact charges, balance). No parsing,
# classification or rating; in the daemon's batch shape (batch_size shared
# among the connections, each connection its own meters), with pgbench on
# as many connections, for FLOOR_SECONDS: once with one reading per meter
# in a batch (phases 4b and 8a), once with arrays of CATCHUP_ARRAY readings
# (8c). The machine is PostgreSQL's alone here; in phases 4b and 8 the
# broker, the simulator and the daemon share it.
FLOOR_CONN=${CONNECTIONS:-2}   # (the daemon's default)
FLOOR_B=$((BATCH / FLOOR_CONN))
FLOOR_SECONDS=${BENCH_FLOOR_SECONDS:-10}

# bench_floor PER_METER: sets FLOOR_RATE, readings/s with PER_METER readings
# of each meter in a batch (as many meters as fit in FLOOR_B readings).
bench_floor()
{
	local pm=$1 nm tps

	nm=$((FLOOR_B / pm))
	[ "$nm" -gt 0 ] || nm=1
	note "2b write-set floor: pgbench, $FLOOR_CONN connections, $nm meters x $pm readings a commit, ${FLOOR_SECONDS}s"
	bench_reset
	bench_tariff
	bench_credit FLOOR "$METERS"
	bench_psql "CREATE TABLE bench_floor AS
	    SELECT (i % $FLOOR_CONN) AS client,
	           (array_agg('FLOOR' || CASE WHEN i < 10000 THEN lpad(i::text, 4, '0') ELSE i::text END
	                      ORDER BY i))[1:$nm] AS ids
	    FROM generate_series(1, $METERS) i GROUP BY 1" >/dev/null ||
	    fail "could not set up the write-set floor"
	sed "s/@PM@/$pm/g" >"$LIB_TMP/floor.sql" <<'EOF'
\set base random(1, 1000000000)
BEGIN;
SELECT count(*) FROM (SELECT meter_id FROM prepaid.meters
    WHERE meter_id = ANY ((SELECT ids FROM bench_floor WHERE client = :client_id)::text[])
    ORDER BY meter_id FOR NO KEY UPDATE) x;
WITH b AS (
	SELECT u.m COLLATE "C" AS m, :base::bigint + u.i * 1000 + j AS s, now() AS t,
	       (:base + u.i * 100000 + j * 833)::bigint AS e
	FROM bench_floor f, unnest(f.ids) WITH ORDINALITY AS u(m, i), generate_series(1, @PM@) j
	WHERE f.client = :client_id
), ins AS (
	INSERT INTO prepaid.readings (meter_id, seq, ts, energy_wh, relay, power_w, voltage_v,
	    current_a, received_at, ingested_at)
	SELECT m, s, t, e, 'closed', 1234.5, 230.1, 5.2, now(), clock_timestamp() FROM b
	RETURNING 1
), led AS (
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, exact_fen, from_seq, to_seq,
	    from_ts, to_ts, energy_wh, tariff_version_id, tier, band, price, service_fee,
	    period_start, author)
	SELECT m, current_date, 'charge', -44, -44.02039, s - 1, s, t - interval '1 minute', t, 833,
	       1, 1, NULL, 0.5283, 0, date_trunc('month', now())::date, 'prepaidd' FROM b
	RETURNING 1
), upd AS (
	UPDATE prepaid.meters mt SET last_seq = x.s, last_ts = x.t, last_energy_wh = x.e,
	    last_seen = now(), readings = mt.readings + x.n,
	    exact_fen = mt.exact_fen + 44.02039 * x.n, balance_fen = mt.balance_fen - 44 * x.n,
	    balance = (mt.balance_fen - 44 * x.n) / 100.0, rated_ts = x.t,
	    period_wh = mt.period_wh + 833 * x.n
	FROM (SELECT m, max(s) AS s, max(t) AS t, max(e) AS e, count(*) AS n FROM b GROUP BY m) x
	WHERE mt.meter_id = x.m
	RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM led), (SELECT count(*) FROM upd);
COMMIT;
EOF
	"$PG_BINDIR/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared \
	    -c "$FLOOR_CONN" -j "$FLOOR_CONN" -T "$FLOOR_SECONDS" -f "$LIB_TMP/floor.sql" prepaid \
	    >"$LIB_TMP/floor.out" 2>&1 || fail "pgbench failed: $(tail -n 3 "$LIB_TMP/floor.out")"
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$LIB_TMP/floor.out" | tail -n 1)
	[ -n "$tps" ] || fail "pgbench printed no tps: $(tail -n 3 "$LIB_TMP/floor.out")"
	FLOOR_RATE=$(bench_calc 'sprintf("%.0f", t * n * p)' -v t="$tps" -v n="$nm" -v p="$pm")
	[ "$(bench_psql "SELECT count(*) FROM prepaid.ledger WHERE kind = 'charge'")" = \
	  "$(bench_psql 'SELECT count(*) FROM prepaid.readings')" ] ||
	    fail "the write-set floor wrote readings and charges unevenly"
	bench_line "write-set floor ($nm meters x $pm readings/commit)" \
	    "$FLOOR_RATE readings/s (PostgreSQL alone on the machine)"
	bench_psql "DROP TABLE bench_floor" >/dev/null
}
bench_floor 1
FLOOR_ONE=$FLOOR_RATE
FLOOR_ARRAY=
if [ -z "${BENCH_SKIP_CATCHUP:-}" ] && [ -z "${BENCH_ONLY_SUSTAINED:-}" ]; then
	bench_floor "$CATCHUP_ARRAY"
	FLOOR_ARRAY=$FLOOR_RATE
fi

# Each reading carries 833 Wh (50 kW for a minute's worth of readings), so
# that with charging on every interval is charged; the meters have no tariff
# in phase 4 (charging off) and a flat one in phases 4b and 8.
CONSUMPTION_S=60
CONSUMPTION=(-w 50000 -r $((CONSUMPTION_S * 1000)))

# BENCH_ONLY_CATCHUP=1: phases 1, 2 and 8 only (the catch-up ratios).
if [ -z "${BENCH_ONLY_CATCHUP:-}" ]; then

# --- 3. naive subscriber

note "3/5 naive subscriber, one autocommit INSERT per message"
bench_reset
$LIB_SETSID "$top_builddir/tests/bench/bench-naive" -h 127.0.0.1 -p "$BROKER_PORT" \
    -d "$CONNINFO" -N "$NAIVE_N" -P meters >"$LIB_TMP/naive.out" 2>&1 &
NAIVE_PID=$!
LIB_PIDS+=("$NAIVE_PID")
deadline=$(($(lib_now_ms) + 10000))
until grep -q '^READY' "$LIB_TMP/naive.out"; do
	lib_alive "$NAIVE_PID" || fail "bench-naive exited: $(cat "$LIB_TMP/naive.out")"
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "bench-naive did not subscribe"
	sleep 0.1
done
sim -n "$METERS" --load "$NAIVE_N" -q 1 --inflight "$INFLIGHT" --no-commands \
    >"$LIB_TMP/sim-naive.out" 2>&1 || fail "prepaid-sim failed"
wait "$NAIVE_PID" || fail "bench-naive failed: $(tail -n 3 "$LIB_TMP/naive.out")"
r=$(bench_result "$LIB_TMP/naive.out")
NAIVE_RATE=$(bench_field "$r" rate)
[ "$(bench_psql 'SELECT count(*) FROM prepaid.readings')" = "$NAIVE_N" ] ||
    fail "bench-naive did not write $NAIVE_N rows"
bench_line "naive subscriber (1 INSERT/commit per msg)" "$NAIVE_RATE readings/s ($NAIVE_N readings)"

# --- 4. the daemon, sustained

note "4/5 prepaidd sustained ingest (charging off: no tariff)"
bench_reset
bench_daemon_start
base=$(bench_metric prepaidd_readings_inserted_total)
sim_bg -n "$METERS" --load "$N" -q 1 --inflight "$INFLIGHT" --no-commands "${CONSUMPTION[@]}"
DSIM_PID=$SIM_PID
DSIM_LOG=$SIM_LOG
bench_wait_inserted $((base + N))
wait "$DSIM_PID" || fail "prepaid-sim failed: $(tail -n 3 "$DSIM_LOG")"
first=$(bench_psql "SELECT extract(epoch FROM min(ts)) FROM prepaid.readings")
last=$(bench_psql "SELECT extract(epoch FROM max(ingested_at)) FROM prepaid.readings")
rows=$(bench_psql "SELECT count(*) FROM prepaid.readings")
[ "$rows" = "$N" ] || fail "prepaidd wrote $rows rows, expected $N"
DAEMON_RATE=$(bench_calc 'sprintf("%.0f", n / (t1 - t0))' -v n="$N" -v t0="$first" -v t1="$BENCH_T_DONE")
bench_line "prepaidd sustained (first publish -> N)" "$DAEMON_RATE readings/s"
bench_line "  same, to the last commit (SQL)" \
    "$(bench_calc 'sprintf("%.0f readings/s over %.2f s", n / (t1 - t0), t1 - t0)' \
    -v n="$N" -v t0="$first" -v t1="$last")"
bench_line "  simulator" "$(bench_result "$DSIM_LOG")"
batches=$(bench_metric prepaidd_batches_total)
bench_line "  batches" "$batches, $(bench_calc 'sprintf("%.0f", n / b)' -v n="$N" -v b="$batches") readings each on average, $(bench_metric prepaidd_ingest_pauses_total) read pauses, loop lag max $(bench_metric prepaidd_loop_lag_max_seconds) s"
bench_profile

# --- 4b. the same with charging on

note "4b/5 prepaidd sustained ingest (charging on: flat tariff with a standing charge)"
bench_reset
bench_tariff
bench_credit SIM "$METERS"
base=$(bench_metric prepaidd_readings_inserted_total)
sim_bg -n "$METERS" --load "$N" -q 1 --inflight "$INFLIGHT" --no-commands "${CONSUMPTION[@]}"
CSIM_PID=$SIM_PID
bench_wait_inserted $((base + N))
wait "$CSIM_PID" || fail "prepaid-sim failed: $(tail -n 3 "$SIM_LOG")"
first=$(bench_psql "SELECT extract(epoch FROM min(ts)) FROM prepaid.readings")
CHARGE_RATE=$(bench_calc 'sprintf("%.0f", n / (t1 - t0))' -v n="$N" -v t0="$first" -v t1="$BENCH_T_DONE")
charged=$(bench_psql "SELECT count(*) FILTER (WHERE kind = 'charge') || ' charges, '
    || count(*) FILTER (WHERE kind = 'standing') || ' standing, balance sum '
    || round(sum(amount), 2) || ' yuan, unbalanced meters '
    || (SELECT count(*) FROM prepaid.verify_ledger()) FROM prepaid.ledger")
bench_line "prepaidd with charging (first publish -> N)" "$CHARGE_RATE readings/s"
bench_line "  ledger" "$charged"
expect=$((N - METERS))
got=$(bench_psql "SELECT count(*) FROM prepaid.ledger WHERE kind = 'charge'")
[ "$got" -ge "$expect" ] || fail "only $got charge entries for $expect intervals"
bench_profile
if [ -n "${BENCH_ONLY_SUSTAINED:-}" ]; then
	bench_line "charging on / off" "$(bench_calc 'sprintf("%.2f", c / d)' -v c="$CHARGE_RATE" -v d="$DAEMON_RATE")"
	exit 0
fi

# --- 5. latency at half load

HALF=$((DAEMON_RATE / 2))
[ "$HALF" -gt 0 ] || HALF=1
LAT_N=$((HALF * LAT_SECONDS))
note "5/5 publish->commit latency at $HALF readings/s (open loop, ${LAT_SECONDS}s)"
# Other meter ids than phase 4, so nothing the daemon remembers of those
# meters can turn these readings into duplicates.
bench_reset
base=$(bench_metric prepaidd_readings_inserted_total)
sim_bg -n "$METERS" -i LAT --load "$LAT_N" --rate "$HALF" -q 1 --inflight "$INFLIGHT" --no-commands
LSIM_PID=$SIM_PID
LSIM_LOG=$SIM_LOG
bench_wait_inserted $((base + LAT_N))
wait "$LSIM_PID" || fail "prepaid-sim failed: $(tail -n 3 "$LSIM_LOG")"
lat=$(bench_psql "SELECT count(*),
        round(percentile_cont(0.50) WITHIN GROUP (ORDER BY d)::numeric, 1),
        round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 1),
        round(max(d)::numeric, 1)
    FROM (SELECT extract(epoch FROM ingested_at - ts) * 1000 AS d
          FROM prepaid.readings WHERE meter_id LIKE 'LAT%') x")
IFS='|' read -r lat_n P50 P99 PMAX <<<"$lat"
[ "$lat_n" = "$LAT_N" ] || fail "latency phase wrote $lat_n rows, expected $LAT_N"
bench_line "publish->commit at $HALF/s" "p50 $P50 ms, p99 $P99 ms, max $PMAX ms ($LAT_N readings)"
echo "  (ingested_at - ts: ts is the simulator's publish time, ingested_at is"
echo "   clock_timestamp() taken as the row is inserted inside the batch"
echo "   transaction, just before its commit; the rest of the batch function"
echo "   and the commit's WAL flush, a few ms, come on top of these figures)"
bench_line "  simulator" "$(bench_result "$LSIM_LOG")"

# --- 6. memory

HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status")
RSS=$(awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status")
bench_line "prepaidd peak RSS (VmHWM)" "$((HWM / 1024)) MiB (now $((RSS / 1024)) MiB)"
daemon_stop >/dev/null

# --- 6b. the journal's cost

# Phases 4 and 5 once more, with the journal as configured ($1: true or
# false), so that both see the same machine; the latency at a quarter of
# phase 4's rate ($JRATE), well below saturation, where a difference is the
# journal's and not the queue's. Sets JB_RATE and JB_P99.
bench_journal()
{
	local base pid first lat_n p50 pmax

	daemon_config "${BENCH_CONF[@]}" "journal.enabled=$1"
	bench_reset
	bench_daemon_start
	base=$(bench_metric prepaidd_readings_inserted_total)
	sim_bg -n "$METERS" -i JB --load "$N" -q 1 --inflight "$INFLIGHT" --no-commands \
	    "${CONSUMPTION[@]}"
	pid=$SIM_PID
	bench_wait_inserted $((base + N))
	wait "$pid" || fail "prepaid-sim failed: $(tail -n 3 "$SIM_LOG")"
	first=$(bench_psql "SELECT extract(epoch FROM min(ts)) FROM prepaid.readings")
	JB_RATE=$(bench_calc 'sprintf("%.0f", n / (t1 - t0))' -v n="$N" -v t0="$first" \
	    -v t1="$BENCH_T_DONE")
	bench_reset
	base=$(bench_metric prepaidd_readings_inserted_total)
	sim_bg -n "$METERS" -i JL --load "$JLAT_N" --rate "$JRATE" -q 1 --inflight "$INFLIGHT" \
	    --no-commands
	pid=$SIM_PID
	bench_wait_inserted $((base + JLAT_N))
	wait "$pid" || fail "prepaid-sim failed: $(tail -n 3 "$SIM_LOG")"
	IFS='|' read -r lat_n p50 JB_P99 pmax <<<"$(bench_psql "SELECT count(*),
	        round(percentile_cont(0.50) WITHIN GROUP (ORDER BY d)::numeric, 1),
	        round(percentile_cont(0.99) WITHIN GROUP (ORDER BY d)::numeric, 1),
	        round(max(d)::numeric, 1)
	    FROM (SELECT extract(epoch FROM ingested_at - ts) * 1000 AS d
	          FROM prepaid.readings WHERE meter_id LIKE 'JL%') x")"
	bench_line "journal $1: sustained" "$JB_RATE readings/s"
	bench_line "journal $1: publish->commit at $JRATE/s" \
	    "p50 $p50 ms, p99 $JB_P99 ms, max $pmax ms ($lat_n readings)"
	[ "$1" = false ] || bench_line "  journal" \
	    "$(bench_metric prepaidd_journal_records_total) records, $(bench_metric prepaidd_journal_syncs_total) syncs, $(bench_metric prepaidd_journal_trimmed_total) segments trimmed, $(bench_metric prepaidd_journal_bytes) bytes left"
	daemon_stop >/dev/null
}

note "6b the journal's cost: with it and without ([journal] enabled = false), twice, alternating"
JRATE=$((DAEMON_RATE / 4))
[ "$JRATE" -gt 0 ] || JRATE=1
JLAT_N=$((JRATE * LAT_SECONDS))
J_RATE=0 J_P99=0 NOJ_RATE=0 NOJ_P99=0
for round in $(seq 1 "$JOURNAL_ROUNDS"); do
	bench_journal true
	J_RATE=$((J_RATE + JB_RATE))
	J_P99=$(bench_calc 'sprintf("%.1f", a + b)' -v a="$J_P99" -v b="$JB_P99")
	bench_journal false
	NOJ_RATE=$((NOJ_RATE + JB_RATE))
	NOJ_P99=$(bench_calc 'sprintf("%.1f", a + b)' -v a="$NOJ_P99" -v b="$JB_P99")
done
JR=$((JOURNAL_ROUNDS > 0 ? JOURNAL_ROUNDS : 1))
J_RATE=$((J_RATE / JR)) NOJ_RATE=$((NOJ_RATE / JR))
J_P99=$(bench_calc 'sprintf("%.1f", a / r)' -v a="$J_P99" -v r="$JR")
NOJ_P99=$(bench_calc 'sprintf("%.1f", a / r)' -v a="$NOJ_P99" -v r="$JR")
daemon_config "${BENCH_CONF[@]}"

# --- 7. notification dispatch while readings keep arriving

MSG_N=${BENCH_MSG_N:-10000}
note "7/7 notification dispatch: $MSG_N messages to a loopback gateway, while readings arrive"
FAKEGW_PORT=$(free_port)
$LIB_SETSID "$top_builddir/tests/fakegw" "$FAKEGW_PORT" "$LIB_TMP/fakegw.log" \
    >"$LIB_TMP/fakegw.out" 2>&1 &
FAKEGW_PID=$!
deadline=$(($(lib_now_ms) + 10000))
until grep -q listening "$LIB_TMP/fakegw.out" 2>/dev/null; do
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "the fake gateway did not start"
	sleep 0.1
done
cat >>"$CONF" <<EOF

[gateway bench]
channel = sms
url = http://127.0.0.1:$FAKEGW_PORT/ok
body = {"to":"{{to}}","text":"{{text}}","id":"{{message_id}}"}
success_field = Code
success_value = OK
message_id_field = BizId
concurrency = 16
EOF
bench_reset
bench_psql "UPDATE prepaid.sites SET quiet_from = '00:00', quiet_until = '00:00';
    INSERT INTO prepaid.meters (meter_id) SELECT 'MSG' || i FROM generate_series(1, 1000) i;
    INSERT INTO prepaid.occupants (occupant_id, name, phone, language)
        SELECT i, 'Occupant ' || i, '+86138' || lpad(i::text, 8, '0'), 'en'
        FROM generate_series(1, 1000) i;
    INSERT INTO prepaid.meter_occupants (meter_id, occupant_id)
        SELECT 'MSG' || i, i FROM generate_series(1, 1000) i" >/dev/null ||
    fail "could not create the occupants"
bench_daemon_start
daemon_metrics >"$LIB_TMP/metrics-before"
sim_bg -n "$METERS" -i LOAD --load $((HALF * 30)) --rate "$HALF" -q 1 --inflight "$INFLIGHT" --no-commands
MSIM_PID=$SIM_PID
sleep 1
t0=$(bench_now)
bench_psql "SELECT count(prepaid.send_message('MSG' || (1 + i % 1000), 'low_balance'))
    FROM generate_series(1, $MSG_N) i" >/dev/null || fail "could not queue the messages"
deadline=$(($(lib_now_ms) + PHASE_TIMEOUT * 1000))
while [ "$(bench_psql "SELECT count(*) FROM prepaid.messages WHERE state IN ('queued', 'sending')")" != 0 ]; do
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "messages not all sent in ${PHASE_TIMEOUT}s"
	sleep 0.1
done
t1=$(bench_now)
daemon_metrics >"$LIB_TMP/metrics-after"
kill "$MSIM_PID" 2>/dev/null || true
kill "$FAKEGW_PID" 2>/dev/null || true
sent=$(bench_psql "SELECT count(*) FROM prepaid.messages WHERE state = 'sent'")
[ "$sent" = "$MSG_N" ] || fail "only $sent of $MSG_N messages were sent"
MSG_RATE=$(bench_calc 'sprintf("%.0f", n / (t1 - t0))' -v n="$MSG_N" -v t0="$t0" -v t1="$t1")
LAG_P99=$(hist_p99_ms prepaidd_loop_lag_histogram_seconds "$LIB_TMP/metrics-before" \
    "$LIB_TMP/metrics-after")
bench_line "messages sent (queued -> gateway answered)" "$MSG_RATE messages/s ($MSG_N, gateway concurrency 16)"
bench_line "  event-loop lag p99 meanwhile" "<= $LAG_P99 ms (readings at $HALF/s at the same time)"
daemon_stop >/dev/null

fi # BENCH_ONLY_CATCHUP

# --- 8. catch-up

# The daemon's session exists (it ran above); with the daemon stopped, the
# simulator queues a backlog of $CATCHUP_N readings in the broker for that
# session from $2 meters that were reading before the outage, $3 readings
# each at most ($1: a label, then the simulator's further arguments); the
# daemon is started and the drain rate is the backlog over the time from
# its start to the last reading inserted. Charging is on (the flat tariff of
# phase 4b). The readings were taken during the outage, a minute apart, and
# every meter's readings are centred on a local midnight of the site, so
# that each crosses it once (a day's charging ends there: the slow path
# takes that interval) whatever the time of day the bench runs at; 8b's
# meters, with a week of readings each, cross seven. Sets CU_RATE.
bench_catchup()
{
	local label=$1 n_meters=$2 per_meter=$3 n_prefix="CU$CU_ROUND" t0 base pub b start

	shift 3
	bench_reset
	bench_tariff
	bench_credit "$n_prefix" "$n_meters"
	# The backlog's first reading: half its span before the latest local
	# midnight that leaves the other half before now.
	start=$(bench_psql "SELECT extract(epoch FROM m - h)::bigint FROM (
	        SELECT date_trunc('day', (now() - h) AT TIME ZONE s.time_zone)
	               AT TIME ZONE s.time_zone AS m, h
	        FROM prepaid.sites s, (SELECT make_interval(secs => $per_meter * $CONSUMPTION_S / 2) AS h) x
	        WHERE s.site_id = 'default') y") || fail "could not place the backlog"
	# The meters were reading before the outage: each has its reading 1
	# of an hour before the backlog (1,000,000 Wh, the simulator's start),
	# written as the daemon would have (through ingest_batch, so with its
	# rate cache).
	bench_psql "SELECT (prepaid_internal.ingest_batch(array_agg(id), array_agg(1::bigint),
	        array_agg(to_timestamp($start - 3600)), array_agg(1000000::bigint),
	        array_agg('closed'::text), array_agg(NULL::float8), array_agg(NULL::float8),
	        array_agg(NULL::float8), array_agg(now()), '[]', '[]', '[]', false, false,
	        100000, 'meters')).inserted
	    FROM (SELECT '$n_prefix' || CASE WHEN i < 10000 THEN lpad(i::text, 4, '0') ELSE i::text END AS id
	          FROM generate_series(1, $n_meters) i) x" >/dev/null ||
	    fail "could not write the readings before the outage"
	# The backlog: readings 2.. a minute apart from $start, as the meters
	# took them during the outage.
	sim -i "$n_prefix" -n "$n_meters" --load "$CATCHUP_N" -q 1 --inflight "$INFLIGHT" --no-commands \
	    --start-seq 2 --ts-start "$start" "${CONSUMPTION[@]}" "$@" >"$LIB_TMP/sim-catchup.out" 2>&1 ||
	    fail "prepaid-sim failed: $(tail -n 3 "$LIB_TMP/sim-catchup.out")"
	pub=$(bench_result "$LIB_TMP/sim-catchup.out")
	echo "=== bench daemon start (catch-up $label) $(date +%T)" >>"$DAEMON_LOG"
	t0=$(bench_now)
	$LIB_SETSID "$top_builddir/prepaidd" -c "$CONF" >>"$DAEMON_LOG" 2>&1 &
	DAEMON_PID=$!
	bench_wait_inserted "$CATCHUP_N"
	CU_RATE=$(bench_calc 'sprintf("%.0f", n / (t1 - t0))' -v n="$CATCHUP_N" -v t0="$t0" \
	    -v t1="$BENCH_T_DONE")
	b=$(bench_metric prepaidd_batches_total)
	bench_line "catch-up $label" "$CU_RATE readings/s ($CATCHUP_N queued, start -> last insert)"
	bench_line "  batches, readings each, loop lag max" \
	    "$b, $(bench_calc 'sprintf("%.0f", n / b)' -v n="$CATCHUP_N" -v b="$b"), $(bench_metric prepaidd_loop_lag_max_seconds) s"
	bench_line "  backlog publish" "$pub"
	bench_profile
	rows=$(bench_psql "SELECT count(*) FROM prepaid.readings WHERE meter_id LIKE 'CU%'")
	[ "$rows" = $((CATCHUP_N + n_meters)) ] ||
	    fail "catch-up wrote $rows rows, expected $CATCHUP_N after $n_meters"
	daemon_stop >/dev/null
	CU_ROUND=$((CU_ROUND + 1))
}

CU_ONE=0 CU_MANY=0 CU_ARRAY=0
if [ -z "${BENCH_SKIP_CATCHUP:-}" ]; then
	note "8 catch-up: $CATCHUP_N readings queued while the daemon is stopped, then drained"
	daemon_config "${BENCH_CONF[@]}"
	# The session's queue must hold the whole backlog: drain what phase 7
	# left behind with the daemon itself, then stop it.
	bench_reset
	bench_daemon_start
	sleep 1
	daemon_stop >/dev/null
	CU_ROUND=1
	bench_catchup "single, $METERS meters" "$METERS" $(((CATCHUP_N + METERS - 1) / METERS))
	CU_ONE=$CU_RATE
	bench_catchup "single, $CATCHUP_FEW meters" "$CATCHUP_FEW" \
	    $(((CATCHUP_N + CATCHUP_FEW - 1) / CATCHUP_FEW))
	CU_MANY=$CU_RATE
	# (whole arrays go round the meters: some have one array more)
	bench_catchup "arrays of $CATCHUP_ARRAY, $METERS meters" "$METERS" \
	    $((((CATCHUP_N + CATCHUP_ARRAY - 1) / CATCHUP_ARRAY + METERS - 1) / METERS * CATCHUP_ARRAY)) \
	    -b "$CATCHUP_ARRAY"
	CU_ARRAY=$CU_RATE
fi

# --- verdict

CEIL=$BROKER_RATE
CEIL_NAME="broker only"
if [ "$COPY_RATE" -lt "$CEIL" ]; then
	CEIL=$COPY_RATE
	CEIL_NAME="batched COPY"
fi
verdict()
{
	if [ "$(bench_calc "($1) ? 1 : 0" "${@:2}")" = 1 ]; then echo PASS; else echo MISS; fi
}
TARGET_MS=$((WINDOW_MS + 50))
echo
echo "summary"
bench_line "load average at the end" "$(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
bench_line "broker only" "$BROKER_RATE readings/s"
bench_line "batched COPY" "$COPY_RATE readings/s"
bench_line "write-set floor, 1 reading/meter" "$FLOOR_ONE readings/s"
[ -z "$FLOOR_ARRAY" ] || bench_line "write-set floor, arrays" "$FLOOR_ARRAY readings/s"
if [ -z "${BENCH_ONLY_CATCHUP:-}" ]; then
	# The targets are on the daemon with charging; the same ratios with
	# charging off are printed without one.
	R1=$(bench_calc 'sprintf("%.2f", d / c)' -v d="$CHARGE_RATE" -v c="$CEIL")
	R2=$(bench_calc 'sprintf("%.1f", d / n)' -v d="$CHARGE_RATE" -v n="$NAIVE_RATE")
	R1OFF=$(bench_calc 'sprintf("%.2f", d / c)' -v d="$DAEMON_RATE" -v c="$CEIL")
	R2OFF=$(bench_calc 'sprintf("%.1f", d / n)' -v d="$DAEMON_RATE" -v n="$NAIVE_RATE")
	bench_line "naive subscriber" "$NAIVE_RATE readings/s"
	bench_line "prepaidd" "$DAEMON_RATE readings/s"
	bench_line "prepaidd with charging" "$CHARGE_RATE readings/s"
	R3=$(bench_calc 'sprintf("%.2f", c / d)' -v c="$CHARGE_RATE" -v d="$DAEMON_RATE")
	bench_line "charging on / off" "$R3 (target >= 0.8: charging costs <= 20%) $(verdict 'r >= 0.8' -v r="$R3")"
	bench_line "prepaidd with charging / min(broker, COPY)" \
	    "$R1 [$CEIL_NAME] (target >= 0.8) $(verdict 'r >= 0.8' -v r="$R1")"
	bench_line "prepaidd with charging / naive" "$R2 (target >= 10) $(verdict 'r >= 10' -v r="$R2")"
	bench_line "prepaidd, charging off / min(broker, COPY)" "$R1OFF (no target)"
	bench_line "prepaidd, charging off / naive" "$R2OFF (no target)"
	bench_line "prepaidd with charging / write-set floor" \
	    "$(bench_calc 'sprintf("%.2f", c / f)' -v c="$CHARGE_RATE" -v f="$FLOOR_ONE") (no target; 0.8 x broker is $(bench_calc 'sprintf("%.2f", 0.8 * b / f)' -v b="$BROKER_RATE" -v f="$FLOOR_ONE") x the floor)"
	bench_line "p99 publish->commit at half load" \
	    "$P99 ms (target <= $TARGET_MS ms) $(verdict 'p <= t' -v p="$P99" -v t="$TARGET_MS")"
	bench_line "prepaidd peak RSS" "$((HWM / 1024)) MiB"
	RJ=$(bench_calc 'sprintf("%.2f", n ? d / n : 0)' -v d="$J_RATE" -v n="$NOJ_RATE")
	DJ=$(bench_calc 'sprintf("%.1f", p - q)' -v p="$J_P99" -v q="$NOJ_P99")
	if [ "$JOURNAL_ROUNDS" -gt 0 ]; then
		bench_line "journal: rate with / without (mean of $JOURNAL_ROUNDS)" "$J_RATE / $NOJ_RATE = $RJ (target >= 0.9) $(verdict 'r >= 0.9' -v r="$RJ")"
		bench_line "journal: p99 at $JRATE/s with - without" "$J_P99 - $NOJ_P99 = $DJ ms (target <= +10 ms) $(verdict 'd <= 10' -v d="$DJ")"
	fi
fi
if [ -z "${BENCH_SKIP_CATCHUP:-}" ]; then
	C1=$(bench_calc 'sprintf("%.2f", d / b)' -v d="$CU_ONE" -v b="$BROKER_RATE")
	C2=$(bench_calc 'sprintf("%.2f", d / b)' -v d="$CU_MANY" -v b="$BROKER_RATE")
	C3=$(bench_calc 'sprintf("%.2f", d / c)' -v d="$CU_ARRAY" -v c="$COPY_RATE")
	bench_line "catch-up single, 1/meter/batch / broker" "$CU_ONE / $BROKER_RATE = $C1 (target >= 0.8) $(verdict 'r >= 0.8' -v r="$C1")"
	bench_line "catch-up single, many/meter/batch / broker" "$CU_MANY / $BROKER_RATE = $C2 (target >= 0.8) $(verdict 'r >= 0.8' -v r="$C2")"
	bench_line "catch-up arrays / batched COPY" "$CU_ARRAY / $COPY_RATE = $C3 (target >= 0.5) $(verdict 'r >= 0.5' -v r="$C3")"
	bench_line "catch-up single, 1/meter / write-set floor" \
	    "$(bench_calc 'sprintf("%.2f", d / f)' -v d="$CU_ONE" -v f="$FLOOR_ONE") (no target)"
	bench_line "catch-up arrays / write-set floor, arrays" \
	    "$(bench_calc 'sprintf("%.2f", d / f)' -v d="$CU_ARRAY" -v f="$FLOOR_ARRAY") (no target; 0.5 x COPY is $(bench_calc 'sprintf("%.2f", 0.5 * c / f)' -v c="$COPY_RATE" -v f="$FLOOR_ARRAY") x the floor)"
fi
[ -n "${BENCH_ONLY_CATCHUP:-}" ] && exit 0
bench_line "message dispatch" "$MSG_RATE messages/s (target >= 500) $(verdict 'r >= 500' -v r="$MSG_RATE")"
bench_line "  loop lag p99 meanwhile" "<= $LAG_P99 ms (target < 20 ms) $(verdict 'l < 20' -v l="${LAG_P99//>/}")"
exit 0
