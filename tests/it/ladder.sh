#!/usr/bin/env bash
#
# tests/it/ladder.sh: the arrears ladder runs a simulated community and
# rental estate from a low balance to a trip that the meter executes,
# against a real PostgreSQL, mosquitto, prepaidd and prepaid-sim, with the
# ladder's clock (prepaid.clock) moved forward instead of waiting for days.
# Proves that a community meter gets its low-balance SMS once and its repeat
# a day later, never a third; then the arrears SMS, e-mail and call task;
# that after the trip level and three days of grace its trip waits for an
# operator and, approved on a working morning, reaches the meter, which
# acknowledges with the relay open (trip confirmed); that a rental meter
# drained by consumption trips at once, without approval, on a rest day
# too; that each guard (keep-power, quiet hours, weekend, holiday, stale
# reading, recovered balance, pending payment order) stops or defers a trip
# with its reason; that
# a payment ends the episode at once, cancels its queued trip and stops the
# messages; that the mass-trip breaker quarantines the trip past its limit
# until an operator releases it; and that two daemons on one database send
# each reminder and each trip of 20 meters exactly once.
#
# No gateway is configured: messages stay queued in prepaid.messages, which
# is what is asserted on. Message quiet hours are off (sites.quiet_from =
# quiet_until); trip quiet hours are the policies' own (18:00-08:00).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

# On failure show the ladder's state too (lib.sh shows the daemons' logs),
# then let lib.sh stop everything.
ladder_exit()
{
	local rc=$?

	set +e
	if [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
		if [ -n "$PG_RUNNING" ]; then
			echo "--- ladder clock, episodes and trips:" >&2
			psql_q "SELECT 'clock ' || (prepaid.now() AT TIME ZONE 'Asia/Shanghai')" >&2
			psql_q "SELECT meter_id, episode_id, step_no, trip_state, trip_note, end_reason
			    FROM prepaid.arrears_episodes ORDER BY episode_id" >&2
			psql_q "SELECT meter_id, state, attempts, detail FROM prepaid.commands
			    WHERE action = 'trip' ORDER BY created_at" >&2
		fi
	fi
	(exit "$rc")
	lib_cleanup
}
trap ladder_exit EXIT

skip_unless_tools
pg_start
broker_start
daemon_config commands.retry_initial_ms=500 commands.retry_max_ms=2000 \
    commands.poll_interval_ms=200
daemon_migrate
# This test is a drill: its database lets the guards' clock move (as the
# owner may set; a default install refuses, see tests/it/roles.sh).
psql_q "UPDATE prepaid.clock SET movable = true"
daemon_start

# --- the estate

# Meters by role, all played by one simulated fleet (L0001...) that reads
# every second and uses no energy, so that only this script moves money.
C1=L0001 # community: the whole ladder, approved trip
RB=L0002 # community: balance recovers between proposal and sending
WE=L0003 # community: approved on a Sunday
HO=L0004 # community: approved on a holiday
PA=L0005 # community: pays while its trip is queued
B1=L0006 # rental: the breaker's three
B2=L0007
B3=L0008
KP=L0009 # rental: keep-power
QH=L0010 # rental: quiet hours
DR=D0001 # rental: drained by its own consumption (its own simulator)
ST=S0001 # rental: stale reading (its own simulator, stopped)
NC=N0001 # rental: a meter that never answers commands (trip unknown)

# The ladder's time: a local time in Asia/Shanghai, as days after Monday D0
# (the Monday two weeks from now, so that D0..D0+9 are plain weeks: no
# holiday is in the calendar but the one this test adds).
D0=$(psql_q "SELECT (date_trunc('week', now() AT TIME ZONE 'Asia/Shanghai')
    + interval '14 days')::date")
clock_at()
{
	psql_q "UPDATE prepaid.clock SET offset_by =
	    ((date '$D0' + $1 + time '$2') AT TIME ZONE 'Asia/Shanghai') - now()"
	echo "    ladder clock: $(psql_q "SELECT to_char(prepaid.now() AT TIME ZONE 'Asia/Shanghai',
	    'Dy YYYY-MM-DD HH24:MI')") (Asia/Shanghai)"
}

# The open episode of a meter, and its trip command.
episode()
{
	psql_q "SELECT episode_id FROM prepaid.arrears_episodes
	    WHERE meter_id = '$1' ORDER BY episode_id DESC LIMIT 1"
}
trip_of()
{
	psql_q "SELECT trip_command FROM prepaid.arrears_episodes
	    WHERE episode_id = $(episode "$1")"
}

# Set a balance with an adjustment (in one transaction for several meters:
# set_balance AMOUNT METER...).
set_balance()
{
	local amount=$1 sql="" m

	shift
	for m in "$@"; do
		sql="$sql SELECT prepaid.adjust(meter_id, $amount - balance, 'ladder test')
		    FROM prepaid.meters WHERE meter_id = '$m' AND balance <> $amount;"
	done
	psql_q "$sql" >/dev/null
}

# Messages queued for a meter: "template/channel" lines in order.
msgs()
{
	psql_q "SELECT coalesce(string_agg(template_key || '/' || channel, ' '
	    ORDER BY message_id), '') FROM prepaid.messages WHERE meter_id = '$1'"
}

# Make a meter due and wait until the sweep has looked at it: proves that
# nothing more is sent on a sweep, not just that none ran.
sweep_now()
{
	psql_q "UPDATE prepaid.meters SET ladder_due_at = now() WHERE meter_id = '$1'"
	wait_until "SELECT ladder_due_at IS NULL OR ladder_due_at > prepaid.now()
	    FROM prepaid.meters WHERE meter_id = '$1'" 10 "sweep looked at $1"
}

# The simulated meter executed a trip: "result=ok" lines in its log.
sim_trips()
{
	cat "$LIB_TMP"/sim.*.log | grep -c "^cmd meter=$1 id=.* action=trip result=ok" || true
}

# A flat 0.50 yuan/kWh everywhere; a steep one drains the consumption meter
# in seconds at a power under the site's plausibility limit.
psql_q "SET client_min_messages = warning;
    SELECT prepaid.create_tariff('flat', 'Flat 0.50');
    SELECT prepaid.create_tariff_version('flat', '2000-01-01 00:00+08', '{\"price\": 0.5}');
    SELECT prepaid.create_tariff('steep', 'Steep 300');
    SELECT prepaid.create_tariff_version('steep', '2000-01-01 00:00+08', '{\"price\": 300}');
    SELECT prepaid.create_site('comm', 'Garden Community');
    SELECT prepaid.create_site('rent', 'River Apartments');
    UPDATE prepaid.sites SET default_tariff_id = 'flat', quiet_from = '00:00',
        quiet_until = '00:00', payment_link = 'https://pay.example/m'
    WHERE site_id IN ('comm', 'rent');
    UPDATE prepaid.sites SET policy_id = 'rental' WHERE site_id = 'rent'" >/dev/null

# trip_guard measures the reading age and the breaker's window on the real
# clock (last_seen and sent_at are stamped with it); the long values below
# keep the days of ladder clock this test moves through out of both. Two
# more rental policies: readings older than 3 s are
# stale (for the meter whose simulator is stopped), and trips valid for
# 4 s (for the meter that never answers).
psql_q "UPDATE prepaid.policies SET reading_max_age = '60 days';
    UPDATE prepaid.trip_breakers SET window_len = '60 days' WHERE scope = '*';
    INSERT INTO prepaid.policies SELECT x.id, x.name, trip_level, grace, trip_needs_approval,
        restore_level, restore_mode, trip_quiet_from, trip_quiet_until, trip_on_rest_days,
        x.age, x.valid
    FROM prepaid.policies, (VALUES
        ('rental_stale', 'Rental, readings older than 3 s are stale', interval '3 seconds',
         interval '10 minutes'),
        ('rental_short', 'Rental, trips valid for 4 s', interval '60 days',
         interval '4 seconds')) x (id, name, age, valid)
    WHERE policy_id = 'rental';
    INSERT INTO prepaid.policy_steps SELECT x.id, step_no, threshold, channels,
        template_key, repeat_every, repeat_count
    FROM prepaid.policy_steps, (VALUES ('rental_stale'), ('rental_short')) x (id)
    WHERE policy_id = 'rental'" >/dev/null

# Every meter starts with 100 yuan and an occupant, registered, credited
# and moved in in one transaction, so that no ladder ever sees it at 0.
new_meter()
{
	local m=$1 site=$2

	psql_q "SELECT prepaid.register_meter('$m');
	    SELECT prepaid.credit('$m', 100.00, 'opening-$m');
	    SELECT prepaid.move_in('$m', 'Occupant $m', '+861380000${m: -4}',
	        '$m@example.com', 'en');
	    SELECT prepaid.set_meter_site('$m', '$site')" >/dev/null
}
for m in $C1 $RB $WE $HO $PA; do new_meter "$m" comm; done
for m in $B1 $B2 $B3 $KP $QH $DR $ST $NC; do new_meter "$m" rent; done
psql_q "SELECT prepaid.assign_tariff('$DR', 'steep', '2000-01-01 00:00+08');
    UPDATE prepaid.meters SET policy_id = 'rental_stale' WHERE meter_id = '$ST';
    UPDATE prepaid.meters SET policy_id = 'rental_short' WHERE meter_id = '$NC'" >/dev/null
for i in $(seq -w 1 20); do new_meter "T00$i" rent; done

cmd_watch
sim_bg -i L -n 10 -r 1000 -w 0
sim_bg -i S -n 1 -r 1000 -w 0
st_sim=$SIM_PID
sim_bg -i N -n 1 -r 1000 -w 0 --no-commands
sim_bg -i T -n 20 -r 1000 -w 0
wait_until "SELECT count(*) = 32 FROM prepaid.meters WHERE relay = 'closed'
    AND meter_id ~ '^[LSNT]'" 20 "32 meters reporting, relay closed"
wait_until "SELECT count(*) = 0 FROM prepaid.meters WHERE ladder_due_at IS NOT NULL" 10 \
    "the ladder has looked at every meter"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.arrears_episodes")" \
    "episodes while every balance is 100"

##########################################################################
note "1. community: reminders, arrears, grace, approval, a confirmed trip"

# Tuesday: C1 and PA fall below 20.
clock_at 1 10:00
set_balance 15.00 $C1 $PA
wait_until "SELECT count(*) = 1 FROM prepaid.episode_sends s
    JOIN prepaid.arrears_episodes e USING (episode_id)
    WHERE e.meter_id = '$C1' AND s.step_no = 1 AND s.repeat_no = 0 AND s.channel = 'sms'
      AND s.message_id IS NOT NULL" 10 "C1: low_balance SMS recorded as step 1, repeat 0"
assert_eq low_balance/sms "$(msgs $C1)" "C1 messages after falling below 20"
assert_eq "+8613800000001|en|15.00|0.00|https://pay.example/m" "$(psql_q "SELECT to_address ||
    '|' || language || '|' || (params->>'balance') || '|' || (params->>'amount_due') || '|' ||
    (params->>'link') FROM prepaid.messages WHERE meter_id = '$C1'")" \
    "C1 low_balance SMS: to the occupant's phone, with the balance"
assert_eq "comm|community|1|15.00" "$(psql_q "SELECT site_id || '|' || policy_id || '|' ||
    step_no || '|' || balance FROM prepaid.arrears WHERE meter_id = '$C1'")" \
    "prepaid.arrears shows C1 at step 1"
assert_eq "Tue 10:00" "$(psql_q "SELECT to_char(ladder_due_at AT TIME ZONE 'Asia/Shanghai'
    - interval '1 day', 'Dy HH24:MI') FROM prepaid.meters WHERE meter_id = '$C1'")" \
    "C1 is due again a day later, for the repeat"

# Wednesday: the repeat falls due on the ladder's clock alone.
clock_at 2 10:30
wait_until "SELECT count(*) = 1 FROM prepaid.episode_sends s
    JOIN prepaid.arrears_episodes e USING (episode_id)
    WHERE e.meter_id = '$C1' AND s.step_no = 1 AND s.repeat_no = 1" 10 \
    "C1: the repeat a day later (step 1, repeat 1)"
assert_eq "low_balance/sms low_balance/sms" "$(msgs $C1)" "C1 messages after the repeat"

# Thursday: no third low_balance (repeat_count 2), then arrears.
clock_at 3 11:00
sweep_now $C1
assert_eq "low_balance/sms low_balance/sms" "$(msgs $C1)" "C1: never a third low_balance"
set_balance -10.00 $C1
wait_until "SELECT count(*) = 3 FROM prepaid.episode_sends s
    JOIN prepaid.arrears_episodes e USING (episode_id)
    WHERE e.meter_id = '$C1' AND s.step_no = 2 AND s.repeat_no = 0" 10 \
    "C1: step 2 on sms, email and call"
assert_eq "low_balance/sms low_balance/sms arrears/sms arrears/email" "$(msgs $C1)" \
    "C1 messages below 0"
assert_eq "L0001@example.com|10.00" "$(psql_q "SELECT to_address || '|' ||
    (params->>'amount_due') FROM prepaid.messages WHERE meter_id = '$C1'
    AND template_key = 'arrears' AND channel = 'email'")" "C1 arrears e-mail: address, amount due"
assert_eq "step 2 (arrears), balance -10.00|Occupant L0001|+8613800000001" "$(psql_q "SELECT
    reason || '|' || name || '|' || phone FROM prepaid.open_call_tasks
    WHERE meter_id = '$C1'")" "C1: a call task for staff, with the occupant"

# Below the trip level (-50): the grace of 3 days starts now, Thursday 11:00.
set_balance -60.00 $C1 $RB $WE $HO $PA
wait_until "SELECT count(*) = 5 FROM prepaid.arrears_episodes
    WHERE meter_id IN ('$C1', '$RB', '$WE', '$HO', '$PA') AND ended_at IS NULL
      AND trip_level_at IS NOT NULL" 10 "five community meters at the trip level"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.trips_awaiting_approval")" \
    "no trip proposed during the grace"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.commands WHERE action = 'trip'")" \
    "no trip command during the grace"
assert_eq "low_balance/sms arrears/sms arrears/email" "$(msgs $RB)" \
    "RB, straight from 100 to -60: steps 1 and 2 at once"

##########################################################################
note "2. rental: used up by consumption, tripped at once on a Saturday"

clock_at 5 10:00
assert_eq rest "$(psql_q "SELECT prepaid.day_type('CN', date '$D0' + 5)")" "Saturday is a rest day"
set_balance 12.00 $DR
# 50 kW for 0.5 s at 300 yuan/kWh is about 2.08 yuan a reading.
sim_bg -i D -n 1 -r 500 -w 50000
wait_until "SELECT relay = 'open' FROM prepaid.meters WHERE meter_id = '$DR'" 20 \
    "DR: the relay opened when the credit ran out"
assert_eq 1 "$(sim_trips $DR)" "DR: the meter executed one trip"
assert_eq "acked|open|arrears: automatic|true" "$(psql_q "SELECT state || '|' || relay_after ||
    '|' || reason || '|' || ladder FROM prepaid.commands
    WHERE meter_id = '$DR' AND action = 'trip'")" "DR: an automatic ladder trip, acked"
wait_until "SELECT trip_state = 'confirmed' FROM prepaid.arrears_episodes
    WHERE meter_id = '$DR'" 5 "DR: trip confirmed"
assert_eq low_balance/sms "$(msgs $DR)" "DR: one low_balance warning first"
assert_eq t "$(psql_q "SELECT balance <= 0 AND balance > -12 FROM prepaid.meters
    WHERE meter_id = '$DR'")" "DR: balance used up, not much beyond"
b=$(psql_q "SELECT balance FROM prepaid.meters WHERE meter_id = '$DR'")
sleep 1.5
assert_eq "$b" "$(psql_q "SELECT balance FROM prepaid.meters WHERE meter_id = '$DR'")" \
    "DR: an open relay uses nothing more"

##########################################################################
note "3. every guard stops or defers a trip, with its reason"

# (No guard for a pending payment order yet: orders come with the payments
# issue; its case belongs here then.)

note "3a. keep-power cancels the trip"
kp=$(psql_q "SELECT prepaid.keep_power('$KP', true, 'oxygen concentrator')")
wait_until "SELECT state = 'acked' FROM prepaid.commands WHERE id = '$kp'" 10 \
    "KP: keep_power_on reaches the meter"
set_balance -1.00 $KP
wait_until "SELECT state = 'cancelled' FROM prepaid.commands WHERE meter_id = '$KP'
    AND action = 'trip'" 10 "KP: trip cancelled"
assert_eq "cancel: keep power: oxygen concentrator|cancelled|0" "$(psql_q "SELECT c.detail ||
    '|' || e.trip_state || '|' || c.attempts FROM prepaid.commands c
    JOIN prepaid.arrears_episodes e ON e.trip_command = c.id WHERE c.meter_id = '$KP'")" \
    "KP: the reason is recorded, nothing was sent"
assert_eq 0 "$(sim_trips $KP)" "KP: the meter never got a trip"

note "3b. quiet hours defer the trip to 08:00"
clock_at 5 20:00
set_balance -1.00 $QH
wait_until "SELECT detail = 'defer: quiet hours' FROM prepaid.commands
    WHERE meter_id = '$QH' AND action = 'trip'" 10 "QH: trip deferred for quiet hours"
qh=$(trip_of $QH)
assert_eq "queued|0|Sun 08:00" "$(psql_q "SELECT state || '|' || attempts || '|' ||
    to_char((next_attempt_at + (SELECT offset_by FROM prepaid.clock))
        AT TIME ZONE 'Asia/Shanghai', 'Dy HH24:MI')
    FROM prepaid.commands WHERE id = '$qh'")" "QH: queued until Sunday 08:00"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.command_audit WHERE command_id = '$qh'
    AND detail = 'deferred: quiet hours'")" "QH: the deferral is audited"
assert_eq "approved|defer: quiet hours" "$(psql_q "SELECT trip_state || '|' || trip_note
    FROM prepaid.arrears_episodes WHERE meter_id = '$QH'")" "QH: the episode says why"
assert_eq 0 "$(sim_trips $QH)" "QH: the meter got no trip at night"
# Sunday morning. A deferral is kept as a real time (next_attempt_at), so
# moving the ladder clock does not bring it forward: do what the passing
# night would have done.
clock_at 6 09:00
psql_q "UPDATE prepaid.commands SET next_attempt_at = now() WHERE id = '$qh'" >/dev/null
wait_until "SELECT trip_state = 'confirmed' FROM prepaid.arrears_episodes
    WHERE meter_id = '$QH'" 10 "QH: the same trip goes out after the quiet hours"
assert_eq 1 "$(sim_trips $QH)" "QH: the meter executed it once"

note "3c. a trip that no meter acknowledges ends unknown, never re-issued"
set_balance -1.00 $NC
wait_until "SELECT state = 'unknown' FROM prepaid.commands WHERE meter_id = '$NC'
    AND action = 'trip'" 15 "NC: trip unknown after its 4 s of validity"
assert_eq "unknown|not confirmed within its validity: check the meter" "$(psql_q "SELECT
    e.trip_state || '|' || c.detail FROM prepaid.arrears_episodes e
    JOIN prepaid.commands c ON c.id = e.trip_command WHERE e.meter_id = '$NC'")" \
    "NC: the episode's trip is unknown, for the operator"
sweep_now $NC
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.commands WHERE meter_id = '$NC'
    AND action = 'trip'")" "NC: no new trip command"

# Sunday noon: the community grace (Thursday 11:00 + 3 days) has passed.
clock_at 6 12:00
wait_until "SELECT count(*) = 5 FROM prepaid.trips_awaiting_approval
    WHERE meter_id IN ('$C1', '$RB', '$WE', '$HO', '$PA')" 10 \
    "five community trips awaiting approval after the grace"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.commands c JOIN prepaid.meters m
    USING (meter_id) WHERE c.action = 'trip' AND m.site_id = 'comm'")" \
    "no community trip without an approval"

note "3d. a weekend defers an approved community trip to Monday 08:00"
we=$(psql_q "SELECT prepaid.approve_trip('$WE')")
wait_until "SELECT detail = 'defer: weekend or holiday' FROM prepaid.commands
    WHERE id = '$we'" 10 "WE: approved trip deferred on a Sunday"
assert_eq "queued|0|true|Mon 08:00" "$(psql_q "SELECT state || '|' || attempts || '|' || ladder ||
    '|' || to_char((next_attempt_at + (SELECT offset_by FROM prepaid.clock))
        AT TIME ZONE 'Asia/Shanghai', 'Dy HH24:MI')
    FROM prepaid.commands WHERE id = '$we'")" "WE: queued until Monday 08:00"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.operator_audit
    WHERE action = 'approve_trip' AND meter_id = '$WE' AND actor = 'postgres'")" \
    "WE: the approval is audited"
# The operator changes their mind: cancel_trip stops the queued trip.
assert_eq t "$(psql_q "SELECT prepaid.cancel_trip('$WE', 'staff visited')")" "WE: cancel_trip"
assert_eq "cancelled|staff visited|cancelled" "$(psql_q "SELECT c.state || '|' || e.trip_note ||
    '|' || e.trip_state FROM prepaid.commands c JOIN prepaid.arrears_episodes e
    ON e.trip_command = c.id WHERE c.id = '$we'")" "WE: trip and episode cancelled"
assert_eq 0 "$(sim_trips $WE)" "WE: the meter never got a trip"

##########################################################################
note "4. a payment stops the ladder at once and cancels the queued trip"

pa=$(psql_q "SELECT prepaid.approve_trip('$PA')")
wait_until "SELECT detail = 'defer: weekend or holiday' FROM prepaid.commands
    WHERE id = '$pa'" 10 "PA: approved trip queued (deferred to Monday)"
pa_msgs=$(msgs $PA)
# A reminder of the episode held (as quiet hours hold one) when the payment
# comes: it must never go out after it.
pa_held=$(psql_q "UPDATE prepaid.messages SET state = 'queued',
    next_attempt_at = now() + interval '1 hour'
    WHERE message_id = (SELECT max(s.message_id) FROM prepaid.episode_sends s
        JOIN prepaid.arrears_episodes e USING (episode_id)
        WHERE e.meter_id = '$PA' AND e.ended_at IS NULL AND s.message_id IS NOT NULL)
    RETURNING message_id")
[ -n "$pa_held" ] || fail "PA: no message of the episode to hold"
pa_entry=$(psql_q "SELECT prepaid.credit('$PA', 100.00, 'wx-4200001')")
wait_until "SELECT ended_at IS NOT NULL FROM prepaid.arrears_episodes
    WHERE meter_id = '$PA'" 5 "PA: the episode ends within a sweep of the payment"
assert_eq "paid|cancelled|balance restored" "$(psql_q "SELECT end_reason || '|' ||
    trip_state || '|' || trip_note FROM prepaid.arrears_episodes WHERE meter_id = '$PA'")" \
    "PA: episode ended 'paid', trip cancelled"
assert_eq "cancelled|balance restored" "$(psql_q "SELECT state || '|' || detail
    FROM prepaid.commands WHERE id = '$pa'")" "PA: the queued trip command is cancelled"
assert_eq "cancelled|episode ended: paid, entry $pa_entry" "$(psql_q "SELECT state || '|' ||
    last_error FROM prepaid.messages WHERE message_id = $pa_held")" \
    "PA: the held reminder is cancelled, with the reason"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.arrears WHERE meter_id = '$PA'")" \
    "PA: no longer in prepaid.arrears"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.trips_awaiting_approval
    WHERE meter_id = '$PA'")" "PA: nothing awaits approval"

##########################################################################
note "1 (end). approved on a working morning, the trip is confirmed"

# Monday 10:00: a working day outside quiet hours, every guard passes.
clock_at 7 10:00
c1=$(psql_q "SELECT prepaid.approve_trip('$C1')")
assert_eq "true|arrears: approved by postgres" "$(psql_q "SELECT ladder || '|' || reason
    FROM prepaid.commands WHERE id = '$c1'")" "C1: the approval queues a ladder trip"
wait_until "SELECT trip_state = 'confirmed' FROM prepaid.arrears_episodes
    WHERE trip_command = '$c1'" 15 "C1: trip acknowledged with the relay open: confirmed"
assert_eq "acked|open|open" "$(psql_q "SELECT c.state || '|' || c.relay_after || '|' || m.relay
    FROM prepaid.commands c JOIN prepaid.meters m USING (meter_id) WHERE c.id = '$c1'")" \
    "C1: command acked, meter open"
grep -q "^cmd meter=$C1 id=$c1 action=trip result=ok relay=open$" "$LIB_TMP"/sim.*.log ||
    fail "C1: the simulated meter did not execute the trip"
echo "ok - C1: the simulated meter executed the trip"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.trips_awaiting_approval
    WHERE meter_id = '$C1'")" "C1: no longer awaiting approval"

note "4 (end). no message for the paid episode, days later"
sweep_now $PA
assert_eq "$pa_msgs" "$(msgs $PA)" "PA: nothing sent after the payment"

note "3e. a balance recovered between proposal and sending cancels the trip"
# -60 + 20 = -40: above the trip level (-50), below the restore level (20).
psql_q "SELECT prepaid.credit('$RB', 20.00, 'cash-77')" >/dev/null
rb=$(psql_q "SELECT prepaid.approve_trip('$RB')")
wait_until "SELECT state = 'cancelled' FROM prepaid.commands WHERE id = '$rb'" 10 \
    "RB: the approved trip is cancelled at sending"
assert_eq "cancel: balance -40.00 is above the trip level -50.00|cancelled|open" \
    "$(psql_q "SELECT c.detail || '|' || e.trip_state || '|' || (CASE WHEN e.ended_at IS NULL
    THEN 'open' ELSE 'ended' END) FROM prepaid.commands c JOIN prepaid.arrears_episodes e
    ON e.trip_command = c.id WHERE c.id = '$rb'")" "RB: why, and the episode goes on"
assert_eq 0 "$(sim_trips $RB)" "RB: the meter never got a trip"

note "3f. a holiday in prepaid.holidays defers the trip"
psql_q "INSERT INTO prepaid.holidays (calendar, day, kind, name)
    VALUES ('CN', date '$D0' + 8, 'holiday', 'Test holiday')" >/dev/null
clock_at 8 10:00
ho=$(psql_q "SELECT prepaid.approve_trip('$HO')")
wait_until "SELECT detail = 'defer: weekend or holiday' FROM prepaid.commands
    WHERE id = '$ho'" 10 "HO: approved trip deferred on a Tuesday holiday"
assert_eq "queued|Wed 08:00" "$(psql_q "SELECT state || '|' ||
    to_char((next_attempt_at + (SELECT offset_by FROM prepaid.clock))
        AT TIME ZONE 'Asia/Shanghai', 'Dy HH24:MI')
    FROM prepaid.commands WHERE id = '$ho'")" "HO: queued until the next working day, 08:00"
assert_eq 0 "$(sim_trips $HO)" "HO: the meter got no trip"

note "3g. a stale reading defers the trip"
lib_terminate "$st_sim" 5
# Older than the policy's 3 s on either clock.
sleep 4
set_balance -1.00 $ST
wait_until "SELECT detail = 'defer: no recent reading: the balance may be stale'
    FROM prepaid.commands WHERE meter_id = '$ST' AND action = 'trip'" 10 \
    "ST: trip deferred for a stale reading"
assert_eq "queued|0" "$(psql_q "SELECT state || '|' || attempts FROM prepaid.commands
    WHERE meter_id = '$ST' AND action = 'trip'")" "ST: nothing sent"
assert_eq 0 "$(sim_trips $ST)" "ST: the meter got no trip"

##########################################################################
note "6. two daemons on one database: every reminder and trip once"

clock_at 9 10:00
daemon2_config mqtt.client_id=prepaidd-test-2 commands.retry_initial_ms=500 \
    commands.retry_max_ms=2000 commands.poll_interval_ms=200
daemon2_start
m1=$(daemon_metric ladder_meters_total)
m2=$(daemon2_metric ladder_meters_total)
# Each queued message takes 0.15 s to write (a test-only trigger): a sweep
# locks the due meters ten at a time (PL/pgSQL fetches ten rows at once), so
# it holds ten for 1.5 s, and the other daemon's sweep, less than a second
# later, takes the other ten: the two really compete for the meters (SKIP
# LOCKED) instead of taking turns.
psql_q "CREATE FUNCTION public.ladder_test_slow() RETURNS trigger LANGUAGE plpgsql AS
        \$\$ BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END \$\$;
    CREATE TRIGGER ladder_test_slow AFTER INSERT ON prepaid.messages
        FOR EACH ROW EXECUTE FUNCTION public.ladder_test_slow()" >/dev/null
tmeters=$(for i in $(seq -w 1 20); do echo "T00$i"; done)
# shellcheck disable=SC2086
set_balance -1.00 $tmeters
wait_until "SELECT count(*) = 20 FROM prepaid.arrears_episodes
    WHERE meter_id LIKE 'T%' AND trip_state = 'confirmed'" 20 "20 trips confirmed"
assert_eq 20 "$(psql_q "SELECT count(*) FROM (SELECT meter_id FROM prepaid.messages
    WHERE meter_id LIKE 'T%' AND template_key = 'low_balance' AND channel = 'sms'
    GROUP BY meter_id HAVING count(*) = 1) x")" "each of 20 meters: one low_balance SMS"
assert_eq 20 "$(psql_q "SELECT count(*) FROM prepaid.messages WHERE meter_id LIKE 'T%'")" \
    "20 messages in all"
assert_eq 20 "$(psql_q "SELECT count(*) FROM (SELECT meter_id FROM prepaid.commands
    WHERE meter_id LIKE 'T%' AND action = 'trip' GROUP BY meter_id HAVING count(*) = 1) x")" \
    "each of 20 meters: one trip command"
n=0
for m in $tmeters; do
	[ "$(sim_trips "$m")" = 1 ] || fail "$m executed $(sim_trips "$m") trips"
	n=$((n + 1))
done
assert_eq 20 "$n" "each simulated meter executed its trip once"
m1=$(($(daemon_metric ladder_meters_total) - m1))
m2=$(($(daemon2_metric ladder_meters_total) - m2))
echo "    meters swept: by the first daemon $m1, by the second $m2"
if [ "$m1" -eq 0 ] || [ "$m2" -eq 0 ]; then
	fail "the daemons did not share the sweep ($m1, $m2)"
fi
echo "ok - both daemons swept some of the 20 meters"
psql_q "DROP TRIGGER ladder_test_slow ON prepaid.messages" >/dev/null
lib_terminate "$DAEMON2_PID" 15
DAEMON2_PID=
assert_eq 0 "$LIB_RC" "second prepaidd exit status after SIGTERM"
##########################################################################
note "5. the mass-trip breaker quarantines the trip past its limit"

# Two more trips than the fleet has sent in the window (the earlier cases'
# trips count too: see the window above).
psql_q "UPDATE prepaid.trip_breakers SET max_trips = 2 + (SELECT count(*)
    FROM prepaid.commands WHERE action = 'trip' AND state IN ('sent', 'acked', 'unknown'))
    WHERE scope = '*'" >/dev/null
# Three rental meters used up at once, as a tariff error would do it: their
# trips reach the outbox together and one claim takes all three, so the
# breaker must count the trips of the batch it is letting through.
set_balance -1.00 $B1 $B2 $B3
wait_until "SELECT count(*) = 3 FROM prepaid.commands WHERE action = 'trip'
    AND meter_id IN ('$B1', '$B2', '$B3') AND state IN ('acked', 'quarantined')" 15 \
    "three trips acked or quarantined"
assert_eq "acked acked quarantined" "$(psql_q "SELECT string_agg(state, ' ' ORDER BY state)
    FROM prepaid.commands WHERE action = 'trip' AND meter_id IN ('$B1', '$B2', '$B3')")" \
    "the breaker lets two trips through"
bq=$(psql_q "SELECT meter_id FROM prepaid.trips_quarantined")
assert_eq 1 "$(echo "$bq" | grep -c .)" "one meter in prepaid.trips_quarantined"
assert_eq 0 "$(sim_trips "$bq")" "the quarantined meter got no trip"
assert_eq t "$(psql_q "SELECT tripped_at IS NOT NULL FROM prepaid.trip_breakers
    WHERE scope = '*'")" "the fleet breaker is open"
# The alert is a NOTIFY from the outbox's connection to the control one:
# it may reach the log a moment after the quarantine is visible.
wait_log "ALERT: mass-trip breaker \* opened" 1 10
echo "ok - the breaker's alert is in the daemon log"
[ "$(daemon_metric alerts_total)" -ge 1 ] || fail "/metrics alerts_total did not count the alert"
echo "ok - /metrics alerts_total counts it"
assert_eq 1 "$(psql_q "SELECT prepaid.release_breaker('*')")" "release_breaker('*') releases one"
wait_until "SELECT state = 'acked' FROM prepaid.commands WHERE action = 'trip'
    AND meter_id = '$bq'" 15 "the released trip is sent and acked"
assert_eq 1 "$(sim_trips "$bq")" "the released meter executed its trip"
assert_eq "confirmed confirmed confirmed" "$(psql_q "SELECT string_agg(trip_state, ' ')
    FROM prepaid.arrears_episodes WHERE meter_id IN ('$B1', '$B2', '$B3')")" \
    "three trips confirmed"

note "3h. a pending payment order defers the trip (the occupant may be paying)"
order=$(psql_q "SELECT prepaid.create_order('$B1', 30.00, 'wechat', '20 minutes')")
[[ "$order" =~ ^PP[0-9]{14}[0-9a-f]{10}$ ]] || fail "out_trade_no '$order' is not PP + time + 10 hex"
po=$(psql_q "SELECT prepaid.send_command('$B1', 'trip', 'arrears: test');")
psql_q "UPDATE prepaid.commands SET ladder = true WHERE id = '$po'" >/dev/null
assert_eq "defer|a payment order is pending|true" "$(psql_q "SELECT verdict || '|' || reason || '|' ||
    (until > prepaid.now() + interval '20 minutes')::text FROM prepaid_internal.trip_guard('$po')")" \
    "B1: the guard defers the trip until the order has expired"
assert_eq "pending" "$(psql_q "SELECT state FROM prepaid.order_status
    WHERE out_trade_no = '$order'")" "the order is pending"
psql_q "SELECT prepaid.cancel_command('$po', 'test over')" >/dev/null

##########################################################################
note "7. in arrears, a balance change wakes the ladder only across a bound"

# A meter in an open episode keeps using power: each reading lowers its
# balance. Only crossing what the ladder would act on makes it due: the
# threshold of a step not reached yet, the trip level, the restore level.
# Whether a change made the meter due is read inside the transaction that
# made it (the trigger sets ladder_due_at to now()), before a sweep can
# look at it and put back the same due time.
XB=X0001 # community, no simulator: only this script moves its balance
woken()
{
	psql_q "BEGIN;
	    SELECT prepaid.adjust(meter_id, $2 - balance, 'ladder test')
	    FROM prepaid.meters WHERE meter_id = '$1';
	    SELECT coalesce(ladder_due_at = now(), false) FROM prepaid.meters
	    WHERE meter_id = '$1';
	    COMMIT" | tail -n 1
}
xb_due()
{
	psql_q "SELECT ladder_due_at FROM prepaid.meters WHERE meter_id = '$XB'"
}
new_meter $XB comm
set_balance 15.00 $XB
wait_until "SELECT step_no = 1 AND (SELECT ladder_due_at > prepaid.now() FROM prepaid.meters
    WHERE meter_id = '$XB') FROM prepaid.arrears WHERE meter_id = '$XB'" 10 \
    "XB: episode at step 1, due again for the repeat"
xb=$(xb_due)
assert_eq f "$(woken $XB 5.00)" "XB: 15 -> 5 crosses no bound: not due"
assert_eq "$xb" "$(xb_due)" "XB: due time of the repeat unchanged"
assert_eq t "$(woken $XB -1.00)" "XB: 5 -> -1 crosses step 2's threshold (0): due"
wait_until "SELECT step_no = 2 FROM prepaid.arrears WHERE meter_id = '$XB'" 10 \
    "XB: step 2 reached"
assert_eq f "$(woken $XB -40.00)" "XB: -1 -> -40, above the trip level: not due"
assert_eq t "$(woken $XB -50.00)" "XB: -40 -> -50 reaches the trip level: due"
wait_until "SELECT trip_level_at IS NOT NULL FROM prepaid.arrears WHERE meter_id = '$XB'" 10 \
    "XB: trip level reached, the grace starts"
assert_eq f "$(woken $XB -55.00)" "XB: deeper within the grace: not due"
assert_eq f "$(woken $XB 19.00)" "XB: up to 19, below the restore level: not due"
assert_eq t "$(woken $XB 20.00)" "XB: up to the restore level (20): due"
wait_until "SELECT end_reason = 'paid' FROM prepaid.arrears_episodes
    WHERE episode_id = $(episode $XB)" 10 "XB: the episode ends, paid"
assert_eq "low_balance/sms arrears/sms arrears/email" "$(msgs $XB)" \
    "XB: each step's messages once, nothing for the changes in between"
assert_eq 3 "$(psql_q "SELECT num_nulls(ladder_low, ladder_trip, ladder_high)
    FROM prepaid.meters WHERE meter_id = '$XB'")" "XB: no bounds without an episode"

daemon_stop
echo "PASS: ladder"
