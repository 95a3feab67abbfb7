#!/usr/bin/env bash
#
# tests/it/ingest.sh: readings travel from simulated meters through a real
# mosquitto and the real prepaidd into PostgreSQL exactly once. Proves that
# a fleet's readings all land with the right register, that readings sent
# twice land once, that a skipped sequence number becomes a recorded gap
# which the daemon's resend command fills, that malformed input is stored
# as rejects while good readings around it still land, and that an unknown
# meter is rejected once auto-registration is switched off.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
broker_start
daemon_config ingest.max_payload_bytes=1024
daemon_migrate
daemon_start

# 3600 kW for 20 ms is 20 Wh: each reading after the first adds exactly 20 Wh
# to the simulator's start register of 1000000 Wh.
FLEET=(-n 100 -c 10 -r 20 -w 3600000 --ts-step)

# Readings published before a marker reading are written before it when
# they take the same ingest connection (one ordered stream per connection,
# batches in order): a marker on each connection, and wait for them all.
marker=0
wait_marker()
{
	local ids id

	marker=$((marker + 1))
	ids=$(marker_ids)
	for id in $ids; do
		pub "meters/$id/reading" \
		    "{\"seq\":$marker,\"ts\":\"$(date -u +%FT%TZ)\",\"energy_wh\":1,\"relay\":\"closed\"}"
	done
	wait_until "SELECT count(*) = $(echo "$ids" | wc -l) FROM prepaid.readings
	    WHERE meter_id LIKE 'MARK%' AND seq = $marker" 20 "marker readings $marker written"
}

note "100 meters x 10 readings land exactly once"
sim "${FLEET[@]}" >"$LIB_TMP/fleet.out"
grep -q 'published=1000 acked=1000' "$LIB_TMP/fleet.out" ||
    fail "simulator did not publish 1000 readings: $(tail -n 1 "$LIB_TMP/fleet.out")"
wait_until "SELECT count(*) = 1000 FROM prepaid.readings WHERE meter_id LIKE 'SIM%'" 20 \
    "1000 readings written"
wait_marker
assert_eq 1000 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id LIKE 'SIM%'")" \
    "readings after the fleet"
assert_eq 1000 "$(psql_q "SELECT count(DISTINCT (meter_id, seq)) FROM prepaid.readings
    WHERE meter_id LIKE 'SIM%'")" "distinct (meter, seq)"
assert_eq 100 "$(psql_q "SELECT count(*) FROM prepaid.meters WHERE meter_id LIKE 'SIM%'")" \
    "meters registered"
assert_eq 100 "$(psql_q "SELECT count(*) FROM prepaid.meter_status WHERE meter_id LIKE 'SIM%'
    AND last_seq = 10 AND last_energy_wh = 1000180 AND relay = 'closed' AND open_gaps = 0")" \
    "meters at seq 10 with register 1000180 Wh"
assert_eq 1000000,1000180 "$(psql_q "SELECT min(energy_wh) || ',' || max(energy_wh)
    FROM prepaid.readings WHERE meter_id = 'SIM0042'")" "SIM0042 first and last register"

note "the same readings published twice land once"
sim "${FLEET[@]}" >"$LIB_TMP/fleet2.out"
wait_until "SELECT sum(duplicates) >= 1000 FROM prepaid.meters WHERE meter_id LIKE 'SIM%'" 20 \
    "second run counted as 1000 duplicates"
wait_marker
assert_eq 1000 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id LIKE 'SIM%'")" \
    "readings after a second identical run"
assert_eq 100 "$(psql_q "SELECT count(*) FROM prepaid.meters WHERE meter_id LIKE 'SIM%'
    AND last_seq = 10 AND last_energy_wh = 1000180 AND readings = 10")" \
    "meters unchanged by the repeat"

sim -i DUP -n 10 -c 10 -r 20 --duplicate >"$LIB_TMP/dup.out"
grep -q 'published=200 acked=200' "$LIB_TMP/dup.out" ||
    fail "--duplicate did not publish every reading twice: $(tail -n 1 "$LIB_TMP/dup.out")"
wait_marker
assert_eq 100 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id LIKE 'DUP%'")" \
    "readings of a fleet that sends each one twice"
wait_until "SELECT sum(duplicates) = 100 FROM prepaid.meters WHERE meter_id LIKE 'DUP%'" 10 \
    "every second copy counted as a duplicate"
v=$(daemon_metric readings_duplicate_total)
[ "${v:-0}" -ge 1100 ] || fail "/metrics readings_duplicate_total = '$v', want >= 1100"
echo "ok - /metrics readings_duplicate_total ($v)"
v=$(daemon_metric readings_inserted_total)
[ "${v:-0}" -ge 1100 ] || fail "/metrics readings_inserted_total = '$v', want >= 1100"
echo "ok - /metrics readings_inserted_total ($v)"

note "a skipped seq is recorded as a gap and filled by a resend"
sim_bg -i GAP -n 3 -c 10 -r 20 --skip-seq 5 --linger 30000
gap_sim=$SIM_PID
wait_until "SELECT count(*) = 3 FROM prepaid.gaps
    WHERE meter_id LIKE 'GAP%' AND from_seq = 5 AND to_seq = 5" 20 "gap 5..5 recorded for 3 meters"
wait_until "SELECT count(*) = 3 FROM prepaid.commands
    WHERE meter_id LIKE 'GAP%' AND action = 'resend' AND from_seq = 5" 10 "resend commands queued"
wait_until "SELECT count(*) = 30 FROM prepaid.readings WHERE meter_id LIKE 'GAP%'" 20 \
    "resent seq 5 written"
wait_until "SELECT count(*) = 0 FROM prepaid.open_gaps WHERE meter_id LIKE 'GAP%'" 10 \
    "gaps closed"
assert_eq 3 "$(psql_q "SELECT count(*) FROM prepaid.gaps
    WHERE meter_id LIKE 'GAP%' AND filled_at IS NOT NULL")" "gaps marked filled"
wait_until "SELECT count(*) = 3 FROM prepaid.commands
    WHERE meter_id LIKE 'GAP%' AND action = 'resend' AND state = 'acked'" 10 \
    "resend commands acknowledged"
grep -q 'cmd meter=GAP0001 id=.* action=resend result=ok' "$SIM_LOG" ||
    fail "the simulated meter never received the resend"
assert_eq 3 "$(psql_q "SELECT count(*) FROM prepaid.meters
    WHERE meter_id LIKE 'GAP%' AND last_seq = 10 AND readings = 10")" "gap meters complete"
lib_terminate "$gap_sim" 5

note "a repeat with another time stamp (another partition) is still a duplicate"
pub meters/XPART1/reading '{"seq":7,"ts":"2026-01-15T08:00:00+08:00","energy_wh":900,"relay":"closed"}'
wait_until "SELECT count(*) = 1 FROM prepaid.readings WHERE meter_id = 'XPART1'" 20 "first copy written"
pub meters/XPART1/reading "{\"seq\":7,\"ts\":\"$(date -u +%FT%TZ)\",\"energy_wh\":900,\"relay\":\"closed\"}"
wait_until "SELECT duplicates = 1 FROM prepaid.meters WHERE meter_id = 'XPART1'" 20 \
    "second copy counted as a duplicate"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id = 'XPART1'")" \
    "seq 7 stored once across partitions"

note "every field of a reading is stored as the meter sent it"
# (The daemon sends numbers and times to PostgreSQL in its binary format:
# an offset, a fraction, a leap second and doubles must arrive unchanged.)
pub meters/EXACT1/reading '[{"seq":1,"ts":"2026-03-01T07:59:60.123456+05:45","energy_wh":9007199254740993,"relay":"armed","power_w":1234.5678901234567,"voltage_v":229.99999999999997,"current_a":-0.0},{"seq":2,"ts":"2026-11-30T23:59:59.999999-00:30","energy_wh":0}]'
wait_until "SELECT count(*) = 2 FROM prepaid.readings WHERE meter_id = 'EXACT1'" 20 "EXACT1 written"
assert_eq "1|2026-03-01 02:15:00.123456+00|9007199254740993|armed|1234.5678901234567|229.99999999999997|-0|
2|2026-12-01 00:29:59.999999+00|0|||||t" \
    "$(psql_q "SET TIME ZONE 'UTC'; SELECT seq, ts, energy_wh, relay, power_w, voltage_v, current_a,
        CASE WHEN seq = 2 THEN abs(extract(epoch FROM received_at - now())) < 60 END
        FROM prepaid.readings WHERE meter_id = 'EXACT1' ORDER BY seq")" \
    "EXACT1: time, register, relay and measurements as sent (NULL when absent)"

note "malformed payloads are stored as rejects; good readings around them land"
ts=$(date -u +%FT%TZ)
pub meters/GOOD01/reading "{\"seq\":1,\"ts\":\"$ts\",\"energy_wh\":500,\"relay\":\"closed\"}"
pub meters/BAD0001/reading 'not json'
pub meters/BAD0002/reading "{\"seq\":\"x\",\"ts\":\"$ts\",\"energy_wh\":1,\"relay\":\"closed\"}"
pub meters/BAD0003/reading "{\"seq\":1,\"ts\":\"$ts\",\"energy_wh\":-5,\"relay\":\"closed\"}"
pub 'meters/bad id!/reading' "{\"seq\":1,\"ts\":\"$ts\",\"energy_wh\":1,\"relay\":\"closed\"}"
pub 'meters/电表01/reading' "{\"seq\":1,\"ts\":\"$ts\",\"energy_wh\":1,\"relay\":\"closed\"}"
pub meters/BAD0004/reading \
    "{\"seq\":1,\"ts\":\"$ts\",\"energy_wh\":1,\"pad\":\"$(printf '%02000d' 0)\"}"
pub meters/GOOD01/reading "{\"seq\":2,\"ts\":\"$ts\",\"energy_wh\":510,\"relay\":\"closed\"}"
wait_until "SELECT count(*) = 2 FROM prepaid.readings WHERE meter_id = 'GOOD01'" 20 \
    "good readings around the bad ones written"
reject_is()
{
	wait_until "SELECT count(*) >= 1 FROM prepaid.rejects WHERE $1 AND reason LIKE '$2'" 10 \
	    "reject: $2"
}
reject_is "meter_id = 'BAD0001'" 'malformed JSON%'
reject_is "meter_id = 'BAD0002'" '%seq: not a non-negative integer%'
reject_is "meter_id = 'BAD0003'" '%energy_wh: negative register%'
reject_is "meter_id IS NULL AND topic = 'meters/bad id!/reading'" '%bad meter id%'
# A Unicode meter id: its UTF-8 bytes percent-escaped, not "???".
reject_is "meter_id IS NULL AND topic = 'meters/%E7%94%B5%E8%A1%A801/reading'" '%bad meter id%'
reject_is "meter_id = 'BAD0004'" 'payload too large%'
assert_eq 'not json' "$(psql_q "SELECT payload_text FROM prepaid.recent_rejects
    WHERE meter_id = 'BAD0001' LIMIT 1")" "rejected payload kept"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id LIKE 'BAD%'")" \
    "nothing of the bad payloads written"
assert_eq 2 "$(psql_q "SELECT last_seq FROM prepaid.meters WHERE meter_id = 'GOOD01'")" \
    "GOOD01 last_seq"

note "an item the database refuses is set aside as a reject; the rest of its batch lands"
# Test-only SQL, not a migration: a trigger that refuses every reading of
# one meter, as a constraint or an operator's trigger might.
psql_q "CREATE FUNCTION public.test_poison() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	RAISE EXCEPTION 'test poison: meter % refused', NEW.meter_id;
END \$\$;
CREATE TRIGGER test_poison BEFORE INSERT ON prepaid.readings
    FOR EACH ROW WHEN (NEW.meter_id = 'PSN0017') EXECUTE FUNCTION public.test_poison();
CREATE TRIGGER test_poison BEFORE INSERT ON prepaid.events
    FOR EACH ROW WHEN (NEW.meter_id = 'PSN0017') EXECUTE FUNCTION public.test_poison()" >/dev/null
from=$(daemon_log_lines)
poison0=$(daemon_metric ingest_poison_total)
# 50 meters publish at once, twice: each burst is one or two batches.
sim -i PSN -n 50 -c 2 -r 500 --ts-step >"$LIB_TMP/poison.out"
grep -q 'published=100 acked=100' "$LIB_TMP/poison.out" ||
    fail "simulator did not publish 100 readings: $(tail -n 1 "$LIB_TMP/poison.out")"
wait_until "SELECT count(*) = 98 FROM prepaid.readings WHERE meter_id LIKE 'PSN%'" 20 \
    "the 49 good meters' 98 readings written"
wait_until "SELECT count(*) = 2 FROM prepaid.rejects WHERE meter_id = 'PSN0017'" 20 \
    "the refused meter's 2 readings stored as rejects"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id = 'PSN0017'")" \
    "nothing of the refused meter written"
assert_eq 49 "$(psql_q "SELECT count(*) FROM prepaid.meters WHERE meter_id LIKE 'PSN%'
    AND last_seq = 2 AND readings = 2")" "good meters complete"
assert_eq 2 "$(psql_q "SELECT count(*) FROM prepaid.rejects WHERE meter_id = 'PSN0017'
    AND topic = 'meters/PSN0017/reading'
    AND reason = 'database refused: P0001 test poison: meter PSN0017 refused'")" \
    "rejects carry the database's SQLSTATE and message"
assert_eq '1,2' "$(psql_q "SELECT string_agg((convert_from(payload, 'UTF8')::jsonb->>'seq'), ','
    ORDER BY id) FROM prepaid.rejects WHERE meter_id = 'PSN0017'")" \
    "rejects keep the readings (re-serialised as JSON)"
v=$(daemon_metric ingest_poison_total)
assert_eq 2 "$((v - ${poison0:-0}))" "/metrics ingest_poison_total counted the refused items"
wait_log 'meter PSN0017: reading refused by the database, stored as a reject: database refused: P0001' \
    "$from" 10
n=$(tail -n "+$from" "$DAEMON_LOG" | grep -c 'meter PSN0017: reading refused' || true)
assert_eq 1 "$n" "the refused meter logged once (rate-limited)"
# How the burst was cut into batches depends on timing: say whether a
# batch of several items had to be split (the outcome above holds either way).
if tail -n "+$from" "$DAEMON_LOG" | grep -qE 'batch of ([2-9]|[1-9][0-9]+) items refused by the database'; then
	echo "ok - a batch of several items was split down to the refused one"
else
	echo "note - the refused readings came in batches of their own this time"
fi
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.rejects
    WHERE meter_id LIKE 'PSN%' AND meter_id <> 'PSN0017'")" "no good meter rejected"

note "ingest keeps flowing after a refused item"
pub meters/PSN0017/reading "{\"seq\":3,\"ts\":\"$(date -u +%FT%TZ)\",\"energy_wh\":7,\"relay\":\"closed\"}"
pub meters/FLOW01/reading "{\"seq\":1,\"ts\":\"$(date -u +%FT%TZ)\",\"energy_wh\":7,\"relay\":\"closed\"}"
wait_until "SELECT count(*) = 1 FROM prepaid.readings WHERE meter_id = 'FLOW01'" 5 \
    "a new reading stored within seconds"
wait_until "SELECT count(*) = 3 FROM prepaid.rejects WHERE meter_id = 'PSN0017'" 5 \
    "the refused meter's next reading set aside too"
ev="{\"ts\":\"$(date -u +%FT%TZ)\",\"type\":\"tamper\"}"
pub meters/PSN0017/event "$ev"
wait_until "SELECT count(*) = 1 FROM prepaid.recent_rejects WHERE meter_id = 'PSN0017'
    AND topic = 'meters/PSN0017/event' AND reason LIKE 'database refused: P0001 %'" 5 \
    "a refused event set aside too"
assert_eq "$ev" "$(psql_q "SELECT payload_text FROM prepaid.recent_rejects
    WHERE topic = 'meters/PSN0017/event'")" "the refused event's payload kept as received"
psql_q "DROP TRIGGER test_poison ON prepaid.readings; DROP TRIGGER test_poison ON prepaid.events;
    DROP FUNCTION public.test_poison()" >/dev/null

note "a batch refused once with a retryable error (40001) is sent again whole"
# A sequence, not a table, is the flag: its nextval survives the rollback of
# the refused batch. Readings are written as prepaid_owner (ingest_batch is
# SECURITY DEFINER), so the trigger reaches the flag as that role.
psql_q "CREATE SEQUENCE public.test_flaky_seq;
GRANT USAGE ON SEQUENCE public.test_flaky_seq TO prepaid_owner;
CREATE FUNCTION public.test_flaky() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	IF nextval('public.test_flaky_seq') = 1 THEN
		RAISE EXCEPTION 'test: could not serialize access' USING ERRCODE = '40001';
	END IF;
	RETURN NEW;
END \$\$;
CREATE TRIGGER test_flaky BEFORE INSERT ON prepaid.readings
    FOR EACH ROW WHEN (NEW.meter_id LIKE 'FLK%') EXECUTE FUNCTION public.test_flaky()" >/dev/null
from=$(daemon_log_lines)
poison0=$(daemon_metric ingest_poison_total)
sim -i FLK -n 20 -c 2 -r 500 --ts-step >"$LIB_TMP/flaky.out"
grep -q 'published=40 acked=40' "$LIB_TMP/flaky.out" ||
    fail "simulator did not publish 40 readings: $(tail -n 1 "$LIB_TMP/flaky.out")"
wait_until "SELECT count(*) = 40 FROM prepaid.readings WHERE meter_id LIKE 'FLK%'" 20 \
    "all 40 readings written after the retry"
wait_log 'items failed \(attempt 1\): .*could not serialize access' "$from" 5
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.rejects WHERE meter_id LIKE 'FLK%'")" \
    "nothing rejected"
! tail -n "+$from" "$DAEMON_LOG" | grep -q 'refused by the database' ||
    fail "a retryable error split a batch"
echo "ok - the batch was not split"
assert_eq "${poison0:-0}" "$(daemon_metric ingest_poison_total)" "ingest_poison_total unchanged"
assert_eq 20 "$(psql_q "SELECT count(*) FROM prepaid.meters WHERE meter_id LIKE 'FLK%'
    AND last_seq = 2 AND readings = 2")" "retried meters complete"
psql_q "DROP TRIGGER test_flaky ON prepaid.readings; DROP FUNCTION public.test_flaky();
    DROP SEQUENCE public.test_flaky_seq" >/dev/null

note "an unknown meter is rejected when auto_register is off (SIGHUP)"
from=$(daemon_log_lines)
daemon_config ingest.max_payload_bytes=1024 ingest.auto_register=false
daemon_reload
wait_log 'reload: configuration .* applied' "$from" 10
! tail -n "+$from" "$DAEMON_LOG" | grep -q 'reload failed' || fail "reload failed"
pub meters/NEW0001/reading "{\"seq\":1,\"ts\":\"$ts\",\"energy_wh\":1,\"relay\":\"closed\"}"
pub meters/GOOD01/reading "{\"seq\":3,\"ts\":\"$ts\",\"energy_wh\":520,\"relay\":\"closed\"}"
wait_until "SELECT count(*) = 3 FROM prepaid.readings WHERE meter_id = 'GOOD01'" 20 \
    "a known meter still lands"
wait_until "SELECT count(*) >= 1 FROM prepaid.rejects
    WHERE meter_id = 'NEW0001' AND reason LIKE 'unknown meter%'" 10 "unknown meter rejected"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.meters WHERE meter_id = 'NEW0001'")" \
    "unknown meter not registered"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id = 'NEW0001'")" \
    "unknown meter's reading not written"

note "four ingest connections: each meter's readings land once and in order, one connection lost meanwhile"
daemon_stop
daemon_config ingest.max_payload_bytes=1024 ingest.connections=4 ingest.batch_size=50
daemon_start
wait_until "SELECT count(*) = 4 FROM pg_stat_activity
    WHERE application_name ~ '^prepaidd-ingest[0-9]*$'" 10 "four ingest connections"
sim_bg -i POOL -n 40 -c 50 -r 40 -w 3600000 --ts-step
sleep 1
assert_eq 1 "$(psql_q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE application_name = 'prepaidd-ingest3'")" "ingest connection 3 terminated"
wait "$SIM_PID" || fail "prepaid-sim failed: $(tail -n 3 "$SIM_LOG")"
wait_until "SELECT count(*) = 2000 FROM prepaid.readings WHERE meter_id LIKE 'POOL%'" 20 \
    "40 meters x 50 readings written"
# 3600 kW for 40 ms is 40 Wh a reading; a reading written out of its
# meter's order would have left a gap behind (detected, then filled).
assert_eq 40 "$(psql_q "SELECT count(*) FROM prepaid.meters WHERE meter_id LIKE 'POOL%'
    AND last_seq = 50 AND readings = 50 AND duplicates = 0
    AND last_energy_wh = 1000000 + 49 * 40")" "meters complete, latest state from their last reading"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.gaps WHERE meter_id LIKE 'POOL%'")" \
    "no gap: every meter's readings were written in order"
wait_until "SELECT count(*) = 4 FROM pg_stat_activity
    WHERE application_name ~ '^prepaidd-ingest[0-9]*$'" 20 "the lost connection is back"
daemon_metrics >"$LIB_TMP/pool-metrics"
for w in 1 2 3 4; do
	b=$(awk -v k="prepaidd_ingest_writer_batches_total{writer=\"$w\"}" '$1 == k { print $2 }' \
	    "$LIB_TMP/pool-metrics")
	[ "${b:-0}" -gt 0 ] || fail "writer $w wrote no batch: the meters are not spread"
	echo "ok - writer $w wrote $b batches"
done
deadline=$(($(lib_now_ms) + 10000))
until daemon_metrics | grep -q '^prepaidd_ingest_writer_up{writer="3"} 1$'; do
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "writer 3 not usable again"
	sleep 0.2
done
echo "ok - writer 3 usable again"

daemon_stop
echo "PASS: ingest"
