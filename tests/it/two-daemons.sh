#!/usr/bin/env bash
#
# tests/it/two-daemons.sh: two daemons share the readings (one shared
# group, two client ids); one is killed with -9. Proves that trips issued
# while it is down are each published once and confirmed by the survivor
# (acknowledgements are subscribed to unshared, so none is parked in the
# dead daemon's session), and that once the dead daemon is back and drains
# what its session kept, no acknowledgement changes a command again and no
# event is stored twice; and that an event, which both daemons receive, is
# stored once.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
broker_start
daemon_config mqtt.client_id=prepaidd-a mqtt.shared_group=g commands.retry_initial_ms=1000
daemon2_config mqtt.client_id=prepaidd-b mqtt.shared_group=g commands.retry_initial_ms=1000
daemon_migrate
daemon_start
daemon2_start
cmd_watch

sim_bg -n 10 -r 300
wait_until "SELECT count(*) = 10 FROM prepaid.meter_status
    WHERE meter_id LIKE 'SIM%' AND relay = 'closed'" 20 "10 meters reporting, relay closed"

note "an event reaches both daemons and is stored once"
for i in 1 2 3; do
	pub meters/SIM0001/event "{\"ts\":\"2026-11-27T10:15:0$i+08:00\",\"type\":\"tamper\"}"
done
wait_until "SELECT count(*) >= 3 FROM prepaid.events WHERE meter_id = 'SIM0001'
    AND type = 'tamper'" 10 "tamper events stored"
sleep 1
assert_eq 3 "$(psql_q "SELECT count(*) FROM prepaid.events WHERE meter_id = 'SIM0001'
    AND type = 'tamper'")" "tamper events stored (each once, though both daemons got it)"
[ "$(daemon_metric messages_received_total)" -gt 0 ] &&
    [ "$(daemon2_metric messages_received_total)" -gt 0 ] || fail "a daemon received nothing"

note "daemon A killed with -9; ten trips issued"
kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
DAEMON_PID=
for i in 01 02 03 04 05 06 07 08 09 10; do
	psql_q "SELECT prepaid.trip('SIM00$i', 'test')" >/dev/null
done
wait_until "SELECT count(*) = 10 FROM prepaid.commands WHERE action = 'trip' AND state = 'acked'" \
    20 "10 trips acknowledged while daemon A is down"
sleep 2 # a re-send would come retry_initial_ms after the first
published=$(grep -c '"action":"trip"' "$CMD_LOG" || true)
assert_eq 10 "$published" "trip publications (each once)"
assert_eq 10 "$(grep '"action":"trip"' "$CMD_LOG" | grep -o '"id":"[^"]*"' | sort -u | wc -l)" \
    "distinct trips published"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.commands WHERE action = 'trip'
    AND attempts <> 1")" "trips sent more than once"

note "daemon A back: what its session kept changes nothing"
events_before=$(psql_q "SELECT count(*) FROM prepaid.events")
acked_before=$(psql_q "SELECT md5(string_agg(id || acked_at || state, ',' ORDER BY id))
    FROM prepaid.commands WHERE action = 'trip'")
daemon_start
deadline=$(($(lib_now_ms) + 10000))
until grep -q "ready: connected" "$DAEMON_LOG"; do
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "daemon A not ready"
	sleep 0.2
done
sleep 2
assert_eq 0 "$(psql_q "SELECT count(*) FROM (SELECT 1 FROM prepaid.events
    GROUP BY meter_id, ts, type, relay, cause HAVING count(*) > 1) x")" "events stored twice"
assert_eq "$acked_before" "$(psql_q "SELECT md5(string_agg(id || acked_at || state, ','
    ORDER BY id)) FROM prepaid.commands WHERE action = 'trip'")" "trip acknowledgements unchanged"
echo "events: $events_before before daemon A came back, $(psql_q "SELECT count(*)
    FROM prepaid.events") after"

daemon_stop
daemon2_stop
echo "PASS: two-daemons"
