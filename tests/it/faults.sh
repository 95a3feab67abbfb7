#!/usr/bin/env bash
#
# tests/it/faults.sh: fault injection. A simulated fleet publishes at QoS 1
# and records every (meter, seq) the broker acknowledged (prepaid-sim
# --record); its meters never answer resend, so nothing lost by the daemon
# can come back from them. Proves that:
# - kill -9 of the daemon, five times under load, loses and doubles nothing
#   (the journal replays what was acknowledged but not committed);
# - kill -9 while catching up after a PostgreSQL outage loses nothing
#   (the in-memory queue, already acknowledged to the broker, is journaled);
# - a PostgreSQL immediate stop (a crash) under load loses nothing;
# - and every time prepaid.verify_ledger() is empty;
# - a broker killed with a backlog queued for the stopped daemon, restarted
#   without it: the daemon sees its session gone, records the loss and asks
#   every recently seen meter to resend from its last stored seq + 1,
#   throttled through the command outbox;
# - a journal past 3/4 of its bound pauses reading, and nothing is lost.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
broker_start
daemon_config database.reconnect_max_ms=1000 mqtt.reconnect_max_ms=1000 \
    mqtt.session_resend_rate=20
daemon_migrate
daemon_start

# Wait until the daemon's log matches $1 within $2 seconds (grep on the file:
# a pipe into grep -q can fail with SIGPIPE under pipefail on a long log).
log_shows()
{
	local deadline=$(($(lib_now_ms) + ${2:-10} * 1000))

	until grep -qE "$1" "$DAEMON_LOG"; do
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "daemon log did not show /$1/ within ${2:-10}s"
		sleep 0.2
	done
	echo "ok - log shows /$1/"
}

# kill -9 the daemon and start it again.
daemon_kill9()
{
	kill -9 "$DAEMON_PID"
	wait "$DAEMON_PID" 2>/dev/null || true
	DAEMON_PID=
	daemon_start
}

sim_done()
{
	local pid=$1 log=$2 deadline

	deadline=$(($(lib_now_ms) + 60000))
	while lib_alive "$pid"; do
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "simulator did not finish"
		sleep 0.2
	done
	wait "$pid" || fail "simulator failed: $(tail -n 2 "$log")"
	echo "ok - simulator: $(grep RESULT "$log" || tail -n 1 "$log")"
}

# Everything the broker acknowledged for fleet prefix $1 (record file $2) is
# in the database exactly once; the ledger verifies.
nothing_lost()
{
	local prefix=$1 rec=$2 acked lost

	acked=$(sort -u "$rec" | wc -l)
	[ "$acked" -gt 0 ] || fail "the broker acknowledged nothing for $prefix"
	wait_until "SELECT count(*) >= $acked FROM prepaid.readings WHERE meter_id LIKE '$prefix%'" \
	    60 "$acked acknowledged readings of $prefix written"
	sort -u "$rec" | awk '{ print $1 "\t" $2 }' >"$LIB_TMP/acked.tsv"
	"$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -c "DROP TABLE IF EXISTS public.acked" \
	    -c "CREATE TABLE public.acked (meter_id text, seq bigint)" \
	    -c "\\copy public.acked FROM '$LIB_TMP/acked.tsv'" || fail "loading $rec"
	lost=$(psql_q "SELECT count(*) FROM public.acked a WHERE NOT EXISTS (SELECT 1
	    FROM prepaid.readings r WHERE r.meter_id = a.meter_id AND r.seq = a.seq)")
	assert_eq 0 "$lost" "acknowledged readings of $prefix lost"
	assert_eq 0 "$(psql_q "SELECT count(*) FROM (SELECT 1 FROM prepaid.readings
	    WHERE meter_id LIKE '$prefix%' GROUP BY meter_id, seq HAVING count(*) > 1) x")" \
	    "readings of $prefix stored twice"
	assert_eq "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id LIKE '$prefix%'")" \
	    "$(psql_q "SELECT sum(readings) FROM prepaid.meters WHERE meter_id LIKE '$prefix%'")" \
	    "readings counted on the meters of $prefix"
	assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.verify_ledger()")" \
	    "rows of prepaid.verify_ledger()"
	psql_q "DROP TABLE public.acked" >/dev/null 2>&1 || true
	echo "ok - $prefix: $acked acknowledged, 0 lost, 0 doubled"
}

note "kill -9 five times under load"
# 200 meters, 16,000 readings at 1,000/s.
sim_bg -i KIL -n 200 --load 16000 --rate 1000 --no-commands --record "$LIB_TMP/kil.rec"
kil_pid=$SIM_PID
kil_log=$SIM_LOG
for i in 1 2 3 4 5; do
	sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 1 + r % 200 / 100 }')"
	daemon_kill9
done
sim_done "$kil_pid" "$kil_log"
nothing_lost KIL "$LIB_TMP/kil.rec"
echo "journal: $(grep -c 'record(s) of the last run' "$DAEMON_LOG") replays logged"

note "kill -9 while catching up after a PostgreSQL outage"
pg_stop fast
sim -i CAT -n 100 --load 8000 --rate 4000 --no-commands --record "$LIB_TMP/cat.rec" \
    >"$LIB_TMP/cat.log" 2>&1 || fail "simulator failed: $(tail -n 2 "$LIB_TMP/cat.log")"
pg_start
wait_until "SELECT count(*) > 500 FROM prepaid.readings WHERE meter_id LIKE 'CAT%'" 30 \
    "catching up"
daemon_kill9
nothing_lost CAT "$LIB_TMP/cat.rec"

note "PostgreSQL immediate stop (crash) under load"
sim_bg -i IMM -n 100 --load 8000 --rate 1000 --no-commands --record "$LIB_TMP/imm.rec"
imm_pid=$SIM_PID
imm_log=$SIM_LOG
sleep 2
pg_stop immediate
sleep 2
pg_start
sim_done "$imm_pid" "$imm_log"
nothing_lost IMM "$LIB_TMP/imm.rec"

note "the broker killed with a backlog: session loss detected, resends requested"
daemon_stop
sim -i BRK -n 20 -c 10 -r 10 --no-commands --record "$LIB_TMP/brk.rec" >/dev/null 2>&1 ||
    fail "simulator failed"
# mosquitto saves its database only on exit here (autosave_interval 0):
# kill -9 loses the session and the 200 readings it queued.
kill -9 "$BROKER_PID"
wait "$BROKER_PID" 2>/dev/null || true
BROKER_PID=
rm -f "$LIB_TMP/broker/mosquitto.db"
broker_start "$BROKER_PORT"
active=$(psql_q "SELECT count(*) FROM prepaid.meters WHERE last_seq IS NOT NULL
    AND last_seen >= now() - interval '24 hours'")
daemon_start
wait_until "SELECT count(*) = 1 FROM prepaid.session_losses" 15 "session loss recorded"
assert_eq "1" "$(daemon_metric mqtt_session_lost_total)" "prepaidd_mqtt_session_lost_total"
log_shows "the broker did not keep our session" 5
assert_eq "$active" "$(psql_q "SELECT meters FROM prepaid.session_losses")" \
    "meters asked to resend"
# One resend per active meter, from its last stored seq + 1.
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.meters m WHERE m.last_seq IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM prepaid.commands c WHERE c.meter_id = m.meter_id
        AND c.action = 'resend' AND c.reason LIKE 'broker session of % lost'
        AND c.from_seq = m.last_seq + 1)")" "active meters without a resend from last_seq + 1"
# Throttled at 20 a second: the last one is due (n - 1) / 20 s after the first.
assert_eq t "$(psql_q "SELECT last_due - at = ($active - 1) * interval '50 ms'
    FROM prepaid.session_losses")" "resends spread at 20/s"
wait_until "SELECT count(*) >= 10 FROM prepaid.commands WHERE reason LIKE 'broker session of % lost'
    AND state <> 'queued'" 15 "resends leaving through the outbox"
log_shows "ALERT: the broker lost the session of prepaidd-test" 5
# The same restart with the session kept raises nothing.
daemon_stop
daemon_start
sleep 1
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.session_losses")" \
    "session losses after a restart that kept the session"

note "journal bound: reading pauses past 3/4 of max_mb, nothing lost"
daemon_stop
daemon_config database.reconnect_max_ms=1000 mqtt.reconnect_max_ms=1000 journal.max_mb=1 \
    ingest.queue_bound=100000
daemon_start
# The database stalls (a lock on the readings), the queue grows, the journal
# fills up to its high-water mark.
"$PG_BINDIR/psql" -X -q -c "BEGIN; LOCK prepaid.readings IN ACCESS EXCLUSIVE MODE;
    SELECT pg_sleep(6); COMMIT" >/dev/null 2>&1 &
lock_pid=$!
sleep 0.5
sim -i JFL -n 80 -c 100 -r 1 --no-commands --record "$LIB_TMP/jfl.rec" >/dev/null 2>&1 ||
    fail "simulator failed"
log_shows "journal: [0-9]+ of 1048576 bytes used .*reading from the broker paused" 10
[ "$(daemon_metric journal_full_total)" -ge 1 ] || fail "prepaidd_journal_full_total not counted"
echo "ok - journal full counted: $(daemon_metric journal_full_total)"
wait "$lock_pid" || true
nothing_lost JFL "$LIB_TMP/jfl.rec"
log_shows "reading from the broker again" 10
assert_eq 0 "$(daemon_metric journal_overflow_total)" "messages queued without a journal record"

daemon_stop
echo "PASS: faults"
