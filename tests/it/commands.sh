#!/usr/bin/env bash
#
# tests/it/commands.sh: operator commands travel from SQL through the
# daemon's outbox and a real mosquitto to the simulated meter, and its
# acknowledgement comes back. Proves that prepaid.trip() opens the meter's
# relay and the command ends acked, that prepaid.arm() arms it and the
# occupant's button press (a relay event with cause 'button') closes it,
# that a command whose valid_until has passed is never published and ends
# expired, and that every state change of a command leaves an audit row.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
broker_start
daemon_config commands.retry_initial_ms=500 commands.retry_max_ms=2000
daemon_migrate
daemon_start
cmd_watch

# Three meters reading every half second, listening for commands; an armed
# meter's occupant presses the button 1.5 s after the arm.
sim_bg -n 3 -r 500 --press-delay 1500
wait_until "SELECT count(*) = 3 FROM prepaid.meter_status
    WHERE meter_id LIKE 'SIM%' AND relay = 'closed'" 20 "3 meters reporting, relay closed"

# The audit trail of a command: its states in order, collapsed.
states()
{
	psql_q "SELECT string_agg(new_state, ',' ORDER BY id) FROM prepaid.command_audit
	    WHERE command_id = '$1'"
}

note "prepaid.trip() in SQL reaches the meter and is acknowledged"
trip=$(psql_q "SELECT prepaid.trip('SIM0001', 'test')")
[ -n "$trip" ] || fail "prepaid.trip() returned no id"
wait_until "SELECT state = 'acked' FROM prepaid.commands WHERE id = '$trip'" 15 "trip acked"
grep -q "^cmd meter=SIM0001 id=$trip action=trip result=ok relay=open$" "$SIM_LOG" ||
    fail "the simulated meter did not execute the trip: $(grep '^cmd' "$SIM_LOG" || true)"
assert_eq "ok|open" "$(psql_q "SELECT result || '|' || relay_after
    FROM prepaid.command_status WHERE id = '$trip'")" "trip result and relay after"
wait_until "SELECT relay = 'open' FROM prepaid.meter_status WHERE meter_id = 'SIM0001'" 10 \
    "SIM0001 shows relay open"
grep -q "^meters/SIM0001/cmd .*\"$trip\"" "$CMD_LOG" || fail "trip not seen on the broker"
grep "^meters/SIM0001/cmd .*\"$trip\"" "$CMD_LOG" | head -n 1 | grep -q '"valid_until"' ||
    fail "published command has no valid_until"

note "prepaid.arm() arms the meter; the button press closes it"
arm=$(psql_q "SELECT prepaid.arm('SIM0001', 'paid')")
wait_until "SELECT state = 'acked' FROM prepaid.commands WHERE id = '$arm'" 15 "arm acked"
grep -q "^cmd meter=SIM0001 id=$arm action=arm result=ok relay=armed$" "$SIM_LOG" ||
    fail "the simulated meter did not arm"
assert_eq armed "$(psql_q "SELECT relay_after FROM prepaid.command_status WHERE id = '$arm'")" \
    "relay after the arm"
wait_until "SELECT count(*) >= 1 FROM prepaid.events WHERE meter_id = 'SIM0001'
    AND type = 'relay' AND relay = 'closed' AND cause = 'button'" 15 "button event recorded"
wait_until "SELECT relay = 'closed' FROM prepaid.meter_status WHERE meter_id = 'SIM0001'" 10 \
    "SIM0001 shows relay closed"
grep -q '^event meter=SIM0001 relay=closed cause=button$' "$SIM_LOG" ||
    fail "the simulator did not report the button press"

note "a command past its valid_until is never published"
late=$(psql_q "SELECT prepaid.trip('SIM0002', 'late', '-1 second')")
wait_until "SELECT state = 'expired' FROM prepaid.commands WHERE id = '$late'" 15 \
    "late trip expired"
# A later command makes a full round trip: the outbox has moved past the
# late one, so if it were to be published it would have been by now.
after=$(psql_q "SELECT prepaid.trip('SIM0003', 'after')")
wait_until "SELECT state = 'acked' FROM prepaid.commands WHERE id = '$after'" 15 \
    "the next trip acked"
if grep -q "$late" "$CMD_LOG"; then
	fail "the expired command was published: $(grep "$late" "$CMD_LOG")"
fi
echo "ok - expired command never on the broker"
if grep -q "id=$late " "$SIM_LOG"; then
	fail "the meter received the expired command"
fi
assert_eq closed "$(psql_q "SELECT relay FROM prepaid.meter_status WHERE meter_id = 'SIM0002'")" \
    "SIM0002 still closed"
assert_eq 0 "$(psql_q "SELECT attempts FROM prepaid.commands WHERE id = '$late'")" \
    "expired command attempts"

note "unknown meters and actions are refused"
if psql_q "SELECT prepaid.trip('NOSUCHMETER', 'x')" >/dev/null 2>&1; then
	fail "prepaid.trip() accepted an unknown meter"
fi
if psql_q "SELECT prepaid.send_command('SIM0001', 'explode', 'x', '1 minute')" \
    >/dev/null 2>&1; then
	fail "prepaid.send_command() accepted an unknown action"
fi
echo "ok - unknown meter and action raise errors"

note "every state change is audited"
[[ "$(states "$trip")" =~ ^queued(,sent)+,acked$ ]] ||
    fail "trip audit trail: $(states "$trip")"
echo "ok - trip audit: $(states "$trip")"
[[ "$(states "$arm")" =~ ^queued(,sent)+,acked$ ]] ||
    fail "arm audit trail: $(states "$arm")"
assert_eq queued,expired "$(states "$late")" "expired command audit trail"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.command_audit a
    JOIN prepaid.commands c ON c.id = a.command_id
    WHERE c.id IN ('$trip', '$arm', '$late') AND (a.at IS NULL OR a.actor IS NULL)")" \
    "audit rows say who and when"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.commands c WHERE c.state <> (
    SELECT new_state FROM prepaid.command_audit a WHERE a.command_id = c.id
    ORDER BY a.id DESC LIMIT 1)")" "each command's last audit row matches its state"

daemon_stop
echo "PASS: commands"
