#!/usr/bin/env bash
#
# tests/it/charging.sh: readings become money exactly once, through a real
# mosquitto, the real prepaidd and PostgreSQL. Proves that a simulated fleet
# with duplicates, reordering, gaps and a register reset ends with balances
# equal, to the smallest unit, to the rating of its true consumption at a
# flat price, with prepaid.verify_ledger() empty; that the implausible-jump
# guard holds a glitch until an operator rejects it (never charged) or
# accepts it (charged exactly); that credits and adjustments made in psql
# show at once in balances and statements and are audited with the role
# that made them; that two daemons sharing the readings through an MQTT
# shared subscription still charge every interval exactly once; that a
# new meter's first reading arriving after its second is stored and charged;
# and that a buffered array across a local midnight and a time-of-use band
# edge is charged as the same readings one by one, its standing day last.
#
# The expected money is computed here, in shell integers, from what was
# published: at 0.5283 yuan/kWh, W Wh cost W * 5283 units of 1e-7 yuan,
# exactly; a balance holds the whole fen of it, floor(W * 5283 / 100000)
# (the sub-fen remainder is carried, see prepaidd-sql(7)).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
broker_start
daemon_config
daemon_migrate
daemon_start

# --- money and readings

PRICE=0.5283
PRICE_E7=5283 # the price in 1e-7 yuan per Wh: 0.5283 yuan/kWh

# The whole-fen charge of W Wh at the flat price.
fen_of()
{
	echo $(($1 * PRICE_E7 / 100000))
}

# The balance after W Wh at the flat price, as numeric(20,7) prints it.
neg_yuan()
{
	local f

	f=$(fen_of "$1")
	if [ "$f" = 0 ]; then
		echo 0.0000000
	else
		printf -- '-%d.%02d00000\n' $((f / 100)) $((f % 100))
	fi
}

# One reading object: seq, epoch seconds, register.
rd()
{
	printf '{"seq":%d,"ts":"%s","energy_wh":%d,"relay":"closed"}' \
	    "$1" "$(date -u -d "@$2" +%FT%TZ)" "$3"
}

# Publish one reading of meter $1: seq $2, at epoch $3, register $4.
pub_rd()
{
	pub "meters/$1/reading" "$(rd "$2" "$3" "$4")"
}

# Readings published before a marker reading are written before it when
# they take the same ingest connection (one daemon, one ordered stream per
# connection, batches in order): a marker on each, and wait for them all.
marker=0
wait_marker()
{
	local ids id

	marker=$((marker + 1))
	ids=$(marker_ids)
	for id in $ids; do
		pub_rd "$id" "$marker" "$(date +%s)" 1
	done
	wait_until "SELECT count(*) = $(echo "$ids" | wc -l) FROM prepaid.readings
	    WHERE meter_id LIKE 'MARK%' AND seq = $marker" 20 "marker readings $marker written"
}

bal()
{
	psql_q "SELECT balance FROM prepaid.meters WHERE meter_id = '$1'"
}

no_ledger_drift()
{
	assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.verify_ledger()")" \
	    "prepaid.verify_ledger() rows${1:+ ($1)}"
}

# Consumed Wh per meter, as published; compared with balances and with the
# energy of the charge rows.
declare -A WH

# check_wh WHAT REGEX: the meters whose id matches REGEX.
check_wh()
{
	local what=$1 re=$2 want got m

	want=$(for m in $(printf '%s\n' "${!WH[@]}" | LC_ALL=C sort); do
		if [[ $m =~ $re ]]; then
			echo "$m $(neg_yuan "${WH[$m]}") ${WH[$m]}"
		fi
	done)
	got=$(psql_q "SELECT m.meter_id || ' ' || m.balance || ' ' ||
	    coalesce((SELECT sum(energy_wh) FROM prepaid.ledger l
	              WHERE l.meter_id = m.meter_id AND l.kind = 'charge'), 0)
	    FROM prepaid.meters m WHERE m.meter_id ~ '$re'
	    ORDER BY m.meter_id")
	if [ "$want" != "$got" ]; then
		echo "meter expected-balance expected-Wh | got-balance charged-Wh:" >&2
		diff <(echo "$want") <(echo "$got") >&2 || true
		fail "$what: balances differ from the rating of the published consumption"
	fi
	echo "ok - $what: $(echo "$want" | wc -l) balances exact"
}

psql_q "SELECT prepaid.create_tariff('flat', 'Flat $PRICE');
    SELECT prepaid.create_tariff_version('flat', '2000-01-01 00:00+08',
        '{\"price\": $PRICE}');
    UPDATE prepaid.sites SET default_tariff_id = 'flat' WHERE site_id = 'default'" >/dev/null

##########################################################################
note "1. a fleet with duplicates, reordering, gaps and a register reset"

# 3600 kW for 20 ms is 20 Wh: each reading after the first adds 20 Wh to
# the start register of 1000000 Wh, so 10 readings consume 180 Wh.
FLEET=(-c 10 -r 20 -w 3600000 --ts-step)

# FA: 20 meters publishing every reading twice, then the whole run again.
sim -i FA -n 20 "${FLEET[@]}" --duplicate >"$LIB_TMP/fa1.out"
grep -q 'published=400 acked=400' "$LIB_TMP/fa1.out" ||
    fail "FA run: $(tail -n 1 "$LIB_TMP/fa1.out")"
sim -i FA -n 20 "${FLEET[@]}" >"$LIB_TMP/fa2.out"
grep -q 'published=200 acked=200' "$LIB_TMP/fa2.out" ||
    fail "FA rerun: $(tail -n 1 "$LIB_TMP/fa2.out")"
for i in $(seq -w 1 20); do WH[FA00$i]=180; done

# FG: 5 meters sending arrays of 2 that lose seq 4 and 7; the daemon's
# resend commands bring them back (with repeats of the readings around).
sim_bg -i FG -n 5 "${FLEET[@]}" -b 2 --skip-seq 4,7 --linger 30000
fg_sim=$SIM_PID
for i in 1 2 3 4 5; do WH[FG000$i]=180; done
wait_until "SELECT count(*) = 50 FROM prepaid.readings WHERE meter_id LIKE 'FG%'" 20 \
    "FG: skipped readings resent and written"
wait_until "SELECT count(*) = 0 FROM prepaid.open_gaps WHERE meter_id LIKE 'FG%'" 10 \
    "FG: gaps closed"
lib_terminate "$fg_sim" 5

wait_marker
assert_eq 200 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id LIKE 'FA%'")" \
    "FA readings after duplicates and a rerun"

# By hand, after the fleet (which ended at seq 10, register 1000180), time
# stamps a second apart from now on.
t=$(($(date +%s) + 1))

# FA0001: seq 11..15 buffered and sent as one array in reverse order; then
# 18 before 16 and 17 (a gap, filled late), and 16 once more.
pub meters/FA0001/reading "[$(rd 15 $((t + 5)) 1000280),$(rd 14 $((t + 4)) 1000260),\
$(rd 13 $((t + 3)) 1000240),$(rd 12 $((t + 2)) 1000220),$(rd 11 $((t + 1)) 1000200)]"
pub_rd FA0001 18 $((t + 8)) 1000340
wait_until "SELECT last_seq = 18 FROM prepaid.meters WHERE meter_id = 'FA0001'" 10 \
    "FA0001 at seq 18 before 16 and 17"
pub_rd FA0001 16 $((t + 6)) 1000300
pub_rd FA0001 17 $((t + 7)) 1000320
pub_rd FA0001 16 $((t + 6)) 1000300
WH[FA0001]=$((1000340 - 1000000))

# FA0002: the meter is replaced: the register falls to 5000, then counts on.
pub_rd FA0002 11 $((t + 1)) 5000
pub_rd FA0002 12 $((t + 2)) 5040
pub_rd FA0002 13 $((t + 3)) 5100
WH[FA0002]=$((180 + 5100 - 5000))

# FA0003: a reset to 0 inside a reversed buffered array: by seq, 10 -> 11
# is the reset and 11 -> 13 the 60 Wh used since.
pub meters/FA0003/reading "[$(rd 13 $((t + 3)) 60),$(rd 12 $((t + 2)) 20),$(rd 11 $((t + 1)) 0)]"
WH[FA0003]=$((180 + 60))

# FA0004: a repeat of seq 10 carrying another register is still a repeat.
pub_rd FA0004 10 $((t + 1)) 9999999
WH[FA0004]=180

wait_marker
wait_until "SELECT string_agg(last_seq::text, ',' ORDER BY meter_id) = '18,13,13,10'
    FROM prepaid.meters WHERE meter_id IN ('FA0001', 'FA0002', 'FA0003', 'FA0004')" 10 \
    "hand readings written"
assert_eq 18 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id = 'FA0001'")" \
    "FA0001 readings (16 and its repeat stored once)"
assert_eq 1000180 "$(psql_q "SELECT energy_wh FROM prepaid.readings
    WHERE meter_id = 'FA0004' AND seq = 10")" "FA0004 seq 10 keeps its first register"
assert_eq "register_down|noted|10|11|1000180|5000" "$(psql_q "SELECT kind || '|' || state ||
    '|' || from_seq || '|' || to_seq || '|' || from_wh || '|' || to_wh
    FROM prepaid.anomalies WHERE meter_id = 'FA0002'")" "FA0002 reset is a noted anomaly"
assert_eq "register_down|noted|10|11" "$(psql_q "SELECT kind || '|' || state ||
    '|' || from_seq || '|' || to_seq FROM prepaid.anomalies WHERE meter_id = 'FA0003'")" \
    "FA0003 reset is a noted anomaly"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.ledger WHERE kind = 'charge'
    AND ((meter_id IN ('FA0002', 'FA0003') AND to_seq = 11)
      OR (amount > 0 AND reverses IS NULL))")" \
    "no charge for a reset, nor a positive one"
# The gap 15-18 was charged as one interval; 16 and 17 re-rate it: reversed,
# then 15-16, 16-17, 17-18 charged with the real readings (if 16 came in a
# batch before 17, 16-18 was charged and reversed in between).
assert_eq "15-16:20,16-17:20,17-18:20|1" "$(psql_q "SELECT string_agg(k || ':' || e, ','
    ORDER BY k) || '|' || (SELECT count(*) FROM prepaid.ledger WHERE meter_id = 'FA0001'
        AND from_seq = 15 AND to_seq = 18 AND reverses IS NOT NULL)
    FROM (SELECT from_seq || '-' || to_seq AS k, sum(energy_wh) AS e
    FROM prepaid.ledger WHERE meter_id = 'FA0001' AND kind = 'charge' AND to_seq > 15
    GROUP BY 1 HAVING sum(energy_wh) <> 0) x")" \
    "FA0001 gap re-rated with the late readings"
assert_eq 0 "$(psql_q "SELECT count(*) FROM (SELECT 1 FROM prepaid.ledger l WHERE kind = 'charge'
    AND reverses IS NULL
    AND NOT EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id)
    GROUP BY meter_id, from_seq, to_seq, from_ts, tier, band HAVING count(*) > 1) d")" \
    "no interval charged twice"
check_wh "fleet FA and FG" '^F[AG]'
fleet_wh=0
fleet_fen=0
for m in "${!WH[@]}"; do
	fleet_wh=$((fleet_wh + WH[$m]))
	fleet_fen=$((fleet_fen + $(fen_of "${WH[$m]}")))
done
assert_eq "-$fleet_fen" "$(psql_q "SELECT sum(balance_fen) FROM prepaid.meters
    WHERE meter_id LIKE 'F%'")" "fleet total for $fleet_wh Wh"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.balances b JOIN prepaid.meters m
    USING (meter_id) WHERE b.balance <> m.balance OR b.balance * 100 <> m.balance_fen
    OR b.balance - b.balance_exact NOT BETWEEN 0 AND 0.0099999")" \
    "prepaid.balances: whole fen, the exact balance less than a fen below"
no_ledger_drift "fleet"

##########################################################################
note "2. the implausible-jump guard holds a glitch"

# A 1200 W limit allows 1200 W x 60 s = 20 Wh in readings up to a minute apart.
t=$(($(date +%s) - 600))
psql_q "SELECT prepaid.register_meter('JUMP1');
    UPDATE prepaid.meters SET max_power_w = 1200 WHERE meter_id = 'JUMP1';
    SELECT prepaid.create_site('tiny', 'Tiny site');
    UPDATE prepaid.sites SET max_power_w = 1200 WHERE site_id = 'tiny';
    SELECT prepaid.register_meter('JUMP2');
    SELECT prepaid.set_meter_site('JUMP2', 'tiny');
    SELECT prepaid.assign_tariff('JUMP2', 'flat', '2000-01-01 00:00+08');
    SELECT prepaid.register_meter('NOTARIFF');
    SELECT prepaid.set_meter_site('NOTARIFF', 'tiny')" >/dev/null

# anomaly_id METER TO_SEQ
anomaly_id()
{
	psql_q "SELECT id FROM prepaid.anomalies WHERE meter_id = '$1' AND to_seq = $2
	    AND kind = 'implausible_jump'"
}

pub_rd JUMP1 1 $((t + 10)) 1000
pub_rd JUMP1 2 $((t + 20)) 1010
pub_rd JUMP1 3 $((t + 30)) 1510
wait_until "SELECT count(*) = 1 FROM prepaid.anomalies WHERE meter_id = 'JUMP1'" 10 \
    "JUMP1: 500 Wh in 10 s held as an anomaly"
assert_eq "implausible_jump|open|2|3|500|20" "$(psql_q "SELECT kind || '|' || state || '|' ||
    from_seq || '|' || to_seq || '|' || energy_wh || '|' || limit_wh
    FROM prepaid.anomalies WHERE meter_id = 'JUMP1'")" "JUMP1 anomaly row"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.open_anomalies WHERE meter_id = 'JUMP1'")" \
    "JUMP1 listed in prepaid.open_anomalies"
assert_eq "$(neg_yuan 10)" "$(bal JUMP1)" "JUMP1 balance: only the 10 Wh before the glitch"
pub_rd JUMP1 4 $((t + 40)) 1515
wait_until "SELECT last_seq = 4 FROM prepaid.meters WHERE meter_id = 'JUMP1'" 10 "JUMP1 seq 4"
assert_eq "$(neg_yuan 15)" "$(bal JUMP1)" "JUMP1 charging goes on from the glitch's register"
psql_q "SELECT prepaid.reject_anomaly($(anomaly_id JUMP1 3), 'glitch')" >/dev/null
assert_eq rejected "$(psql_q "SELECT state FROM prepaid.anomalies WHERE meter_id = 'JUMP1'
    AND to_seq = 3")" "JUMP1 glitch rejected"
assert_eq "$(neg_yuan 15)" "$(bal JUMP1)" "JUMP1 rejected glitch never charged"

pub_rd JUMP1 5 $((t + 50)) 2515
pub_rd JUMP1 6 $((t + 60)) 2520
wait_until "SELECT last_seq = 6 FROM prepaid.meters WHERE meter_id = 'JUMP1'" 10 "JUMP1 seq 6"
assert_eq "$(neg_yuan 20)" "$(bal JUMP1)" "JUMP1 second glitch (1000 Wh) held"
jid=$(anomaly_id JUMP1 5)
psql_q "SELECT prepaid.accept_anomaly($jid, 'ok')" >/dev/null
assert_eq "$(neg_yuan 1020)" "$(bal JUMP1)" "JUMP1 accepted glitch charged exactly"
assert_eq "1000|-0.5283000" "$(psql_q "SELECT sum(energy_wh) || '|' || (sum(exact_fen) / 100)::numeric(20,7)
    FROM prepaid.ledger WHERE meter_id = 'JUMP1' AND kind = 'charge' AND to_seq = 5")" \
    "JUMP1 charge row of the accepted glitch"
psql_q "SELECT prepaid.accept_anomaly($jid, 'again')" >/dev/null 2>&1 || true
psql_q "SELECT prepaid.reject_anomaly($jid, 'too late')" >/dev/null 2>&1 || true
assert_eq "$(neg_yuan 1020)" "$(bal JUMP1)" "JUMP1 second accept or a late reject changes nothing"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.ledger WHERE meter_id = 'JUMP1'
    AND to_seq = 3")" "JUMP1 rejected interval has no ledger row"

# The site's limit applies to a meter without its own; a step exactly at the
# limit is plausible.
pub_rd JUMP2 1 $((t + 10)) 1000
pub_rd JUMP2 2 $((t + 20)) 1020
pub_rd JUMP2 3 $((t + 30)) 1600
pub_rd NOTARIFF 1 $((t + 10)) 1000
pub_rd NOTARIFF 2 $((t + 20)) 1010
wait_until "SELECT count(*) = 1 FROM prepaid.anomalies WHERE meter_id = 'JUMP2'" 10 \
    "JUMP2: 580 Wh against the site's 1200 W held"
wait_until "SELECT last_seq = 2 FROM prepaid.meters WHERE meter_id = 'NOTARIFF'" 10 \
    "NOTARIFF readings written"
assert_eq "open|2|3|580|20" "$(psql_q "SELECT state || '|' || from_seq || '|' || to_seq ||
    '|' || energy_wh || '|' || limit_wh FROM prepaid.anomalies WHERE meter_id = 'JUMP2'")" \
    "JUMP2 anomaly row"
assert_eq "$(neg_yuan 20)" "$(bal JUMP2)" "JUMP2 balance: 20 Wh at the limit charged"
psql_q "SELECT prepaid.accept_anomaly($(anomaly_id JUMP2 3), 'ok')" >/dev/null
assert_eq "$(neg_yuan 600)" "$(bal JUMP2)" "JUMP2 accepted glitch charged exactly"
assert_eq 0.0000000 "$(bal NOTARIFF)" "a meter with no tariff is not charged"
no_ledger_drift "jump guard"

##########################################################################
note "3. credits and adjustments from psql, balances and statements"

# 50000 Wh in an hour (50 kW, under the default site's 60 kW) cost 26.415
# yuan exactly: 26.41 are charged, the half fen is carried.
t=$(date +%s)
pub_rd PAY1 1 $((t - 3600)) 1000
pub_rd PAY1 2 "$t" 51000
wait_until "SELECT last_seq = 2 FROM prepaid.meters WHERE meter_id = 'PAY1'" 10 "PAY1 readings"
assert_eq -26.4100000 "$(bal PAY1)" "PAY1 charged for 50000 Wh"

c1=$(psql_q "SELECT prepaid.credit('PAY1', 50.00, 'ref-1')")
assert_eq 23.5900000 "$(bal PAY1)" "PAY1 balance at once after the credit"
c2=$(psql_q "SELECT prepaid.credit('PAY1', 50.00, 'ref-1')")
assert_eq "$c1" "$c2" "a repeated credit returns the first entry"
assert_eq 23.5900000 "$(bal PAY1)" "a repeated credit credits nothing"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.ledger WHERE meter_id = 'PAY1'
    AND kind = 'payment'")" "one payment row"

# The adjustment comes from another login role: the audit must name it.
psql_q "CREATE ROLE clerk LOGIN SUPERUSER" >/dev/null
"$PG_BINDIR/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U clerk \
    -d prepaid -c "SELECT prepaid.adjust('PAY1', -1.50, 'meter test')" >/dev/null ||
    fail "prepaid.adjust() as clerk failed"
assert_eq 22.0900000 "$(bal PAY1)" "PAY1 balance at once after the adjustment"
assert_eq "22.09|22.0850000" "$(psql_q "SELECT balance || '|' || balance_exact
    FROM prepaid.balances WHERE meter_id = 'PAY1'")" \
    "prepaid.balances: whole fen, and the exact balance with the carried half fen"
assert_eq "adjustment|-1.50|meter test|clerk" "$(psql_q "SELECT kind || '|' || amount ||
    '|' || reason || '|' || author FROM prepaid.ledger WHERE meter_id = 'PAY1'
    AND kind = 'adjustment'")" "adjustment ledger row"
assert_eq "clerk postgres" "$(psql_q "SELECT string_agg(DISTINCT actor, ' ' ORDER BY actor)
    FROM prepaid.operator_audit WHERE meter_id = 'PAY1'
    AND ((actor = 'postgres' AND action ILIKE '%credit%')
      OR (actor = 'clerk' AND action ILIKE '%adjust%'))")" \
    "operator_audit names postgres (credit) and clerk (adjustment)"
psql_q "SELECT action, actor, detail FROM prepaid.operator_audit WHERE meter_id = 'PAY1'
    ORDER BY id" | sed 's/^/    audit: /'

# The statement: opening line, charges, payment, adjustment, closing line.
stmt="SELECT * FROM prepaid.statement('PAY1', current_date - 2, current_date + 2)"
psql_q "$stmt" | sed 's/^/    statement: /'
assert_eq 0.00 "$(psql_q "SELECT balance FROM ($stmt) s ORDER BY line_no LIMIT 1")" \
    "statement opening balance"
assert_eq 22.09 "$(psql_q "SELECT balance FROM ($stmt) s ORDER BY line_no DESC LIMIT 1")" \
    "statement closing balance equals the balance"
assert_eq 1 "$(psql_q "SELECT count(*) FROM ($stmt) s WHERE kind = 'payment'
    AND amount = 50.00")" "statement payment line"
assert_eq 1 "$(psql_q "SELECT count(*) FROM ($stmt) s WHERE kind = 'adjustment'
    AND amount = -1.50")" "statement adjustment line"
assert_eq 50.000 "$(psql_q "SELECT sum(energy_kwh)::numeric(20,3) FROM ($stmt) s
    WHERE kind NOT IN ('opening', 'closing')")" "statement energy"

# Charging goes on from the credited balance.
pub_rd PAY1 3 $((t + 60)) 51100
wait_until "SELECT last_seq = 3 FROM prepaid.meters WHERE meter_id = 'PAY1'" 10 "PAY1 seq 3"
# 5.283 fen more: the carry (0.5 + 5.283) makes 5 fen, 0.783 carried.
assert_eq "22.04|22.0321700" "$(psql_q "SELECT balance || '|' || balance_exact
    FROM prepaid.balances WHERE meter_id = 'PAY1'")" "PAY1 after 100 Wh more"
no_ledger_drift "credits"

##########################################################################
note "4. two daemons on one shared subscription charge each interval once"

# Each meter's first reading (seq 1, register 1000000) goes through one
# daemon, before sharing: the property under test is that every interval
# after it is charged once, whichever daemon writes which reading. (A new
# meter whose seq 2 is written before its seq 1 is the last check below.)
sim -i TW -n 50 -c 1 -r 20 --ts-step >"$LIB_TMP/tw0.out"
wait_until "SELECT count(*) = 50 FROM prepaid.meters WHERE meter_id LIKE 'TW%'
    AND last_seq = 1 AND last_energy_wh = 1000000" 10 "TW meters registered at seq 1"

# New client ids: the first daemon's old session keeps its own, unshared
# subscription in the broker.
daemon_stop
daemon_config mqtt.shared_group=g1 mqtt.client_id=prepaidd-g1-a
daemon_start
daemon2_config mqtt.shared_group=g1 mqtt.client_id=prepaidd-g1-b
daemon2_start

# 50 meters x 20 more readings (seq 2 repeats the register of seq 1): 380 Wh
# each, alternating between the daemons.
sim -i TW -n 50 -c 20 -r 20 -w 3600000 --ts-step --start-seq 2 >"$LIB_TMP/tw.out"
# The meters answer the resend commands the daemons send when one of them
# writes a reading before the other has written the one before it: more
# than 1000 may be published, each acknowledged by the broker.
read -r tw_pub tw_ack < <(sed -n 's/^sim: published=\([0-9]*\) acked=\([0-9]*\)$/\1 \2/p' \
    "$LIB_TMP/tw.out")
if [ "${tw_pub:-0}" -lt 1000 ] || [ "$tw_pub" != "$tw_ack" ]; then
	fail "TW run: $(tail -n 1 "$LIB_TMP/tw.out")"
fi
for i in $(seq -w 1 50); do WH[TW00$i]=$((1000380 - 1000000)); done
# On a time-out, show how long the daemons' batches took.
if ! (wait_until "SELECT count(*) = 1050 FROM prepaid.readings WHERE meter_id LIKE 'TW%'" 30 \
    "1050 readings (50 seeds + 1000) written by two daemons"); then
	echo "--- readings written: $(psql_q "SELECT count(*) FROM prepaid.readings
	    WHERE meter_id LIKE 'TW%'"); the daemons' last batches:" >&2
	grep -h 'ingest: batch' "$DAEMON_LOG" "$DAEMON2_LOG" | tail -n 12 >&2
	fail "two daemons did not write the fleet's readings within 30 s"
fi
wait_until "SELECT count(*) = 50 FROM prepaid.meters WHERE meter_id LIKE 'TW%'
    AND last_seq = 21" 10 "TW meters at seq 21"
assert_eq 1050 "$(psql_q "SELECT count(DISTINCT (meter_id, seq)) FROM prepaid.readings
    WHERE meter_id LIKE 'TW%'")" "distinct (meter, seq) = published (50 seeds + 1000)"
# (A reading one daemon writes before the other's earlier one is a gap
# filled late: the interval is reversed and re-rated; live entries only.)
assert_eq 0 "$(psql_q "SELECT count(*) FROM (SELECT 1 FROM prepaid.ledger l
    WHERE meter_id LIKE 'TW%' AND kind = 'charge' AND reverses IS NULL
      AND NOT EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id)
    GROUP BY meter_id, from_seq, to_seq, from_ts, tier, band HAVING count(*) > 1) d")" \
    "no live ledger row twice per interval"
assert_eq 0 "$(psql_q "WITH live AS (SELECT * FROM prepaid.ledger l
    WHERE kind = 'charge' AND reverses IS NULL AND meter_id LIKE 'TW%'
      AND NOT EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id))
    SELECT count(*) FROM (SELECT 1 FROM live a
    JOIN live b ON a.meter_id = b.meter_id AND a.entry_id < b.entry_id
    AND a.from_seq < b.to_seq AND b.from_seq < a.to_seq
    AND NOT (a.from_seq = b.from_seq AND a.to_seq = b.to_seq)) o")" \
    "no overlapping live charge intervals"
check_wh "two daemons" '^TW'
no_ledger_drift "two daemons"
v1=$(daemon_metric readings_inserted_total)
v2=$(daemon2_metric readings_inserted_total)
echo "    readings inserted: first daemon ${v1:-?}, second ${v2:-?}"
[ "${v1:-0}" -gt 0 ] || fail "the first daemon inserted no readings ($v1)"
[ "${v2:-0}" -gt 0 ] || fail "the second daemon inserted no readings ($v2)"
echo "ok - both daemons wrote readings"
echo "    published $tw_pub (1000 readings), $(psql_q "SELECT count(*) FROM prepaid.commands
    WHERE meter_id LIKE 'TW%' AND action = 'resend'") resend commands for transient gaps"
grep -hiE 'deadlock|error' "$DAEMON_LOG" "$DAEMON2_LOG" | head -n 5 | sed 's/^/    log: /' || true

check_wh "all meters at the end" '^(F[AG]|TW)'

##########################################################################
note "5. a new meter's first two readings arriving in reverse order"

# What two daemons (or a gateway's buffer) can do to a new meter: seq 2 is
# written first, then seq 1 arrives. Seq 1 was never stored: it is not a
# duplicate, and the 100 Wh between them are consumption.
t=$(date +%s)
pub_rd NEWM 2 "$t" 1100
wait_until "SELECT last_seq = 2 FROM prepaid.meters WHERE meter_id = 'NEWM'" 10 "NEWM seq 2"
pub_rd NEWM 1 $((t - 10)) 1000
wait_until "SELECT readings + duplicates = 2 FROM prepaid.meters WHERE meter_id = 'NEWM'" 10 \
    "NEWM seq 1 processed"
echo "    NEWM: $(psql_q "SELECT 'readings=' || readings || ' duplicates=' || duplicates ||
    ' balance=' || balance FROM prepaid.meters WHERE meter_id = 'NEWM'")"
assert_eq 2 "$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id = 'NEWM'")" \
    "NEWM: the late first reading is stored, not taken for a duplicate"
assert_eq "$(neg_yuan 100)" "$(bal NEWM)" "NEWM: the 100 Wh between seq 1 and 2 charged"
no_ledger_drift "end"

##########################################################################
note "6. a buffered array across a local midnight and a band edge"

# A meter's backlog as one array: its intervals are charged from the rate
# cache up to the local midnight, the interval across it alone by the full
# rating, then from the new day's cache up to the band edge at 00:30, and
# so on. The same readings sent one by one (a batch each) must give the
# same entries, exact amounts and balance to the unit (the whole fen of
# each entry follow the order of writing: the carry), and the new day's
# standing charge must come after every part the array's transaction
# wrote (prepaidd-sql(7)).
psql_q "SELECT prepaid.create_site('AH', 'ahead', 'Asia/Shanghai');
    SELECT prepaid.create_tariff('tou', 'peak and valley');
    SELECT prepaid.create_tariff_version('tou', '2000-01-01 00:00+08',
        '{\"price\": 0.0511, \"standing_per_day\": 0.1234, \"service_per_kwh\": 0.0117,
          \"bands\": {\"work\": [{\"start\": \"00:00\", \"band\": \"valley\", \"price\": 0.3013},
                               {\"start\": \"00:30\", \"band\": \"peak\", \"price\": 0.6007}]}}');
    UPDATE prepaid.sites SET default_tariff_id = 'tou' WHERE site_id = 'AH'" >/dev/null
# Tuesday 2026-11-03 23:40 in Shanghai, then every 7 minutes and 13 s to
# 01:02 on Wednesday, with uneven consumption.
t0=$(date -u -d '2026-11-03 15:40:00' +%s)
steps=(37 53 41 29 61 47 33 59 43 31 57 39)
for m in AHA AHS; do
	psql_q "SELECT prepaid.register_meter('$m'); SELECT prepaid.set_meter_site('$m', 'AH')" >/dev/null
	pub_rd "$m" 1 "$t0" 1000000
	wait_until "SELECT last_seq = 1 FROM prepaid.meters WHERE meter_id = '$m'" 10 "$m seq 1"
done
arr=""
e=1000000
for i in "${!steps[@]}"; do
	e=$((e + steps[i]))
	arr="$arr${arr:+,}$(rd $((i + 2)) $((t0 + (i + 1) * 433)) "$e")"
	pub_rd AHS $((i + 2)) $((t0 + (i + 1) * 433)) "$e"
	wait_until "SELECT last_seq = $((i + 2)) FROM prepaid.meters WHERE meter_id = 'AHS'" 10 \
	    "AHS seq $((i + 2)) on its own"
done
pub meters/AHA/reading "[$arr]"
wait_until "SELECT last_seq = 13 FROM prepaid.meters WHERE meter_id = 'AHA'" 10 "AHA's array"
entries()
{
	psql_q "SELECT kind, day, from_seq, to_seq, from_ts, to_ts, band, tier, energy_wh,
	               price, service_fee, exact_fen
	        FROM prepaid.ledger WHERE meter_id = '$1' AND reverses IS NULL
	        ORDER BY kind, day, from_ts, to_seq, tier"
}
a_entries=$(entries AHA)
s_entries=$(entries AHS)
if [ "$a_entries" != "$s_entries" ]; then
	diff <(echo "$s_entries") <(echo "$a_entries") >&2 || true
	fail "the array's entries differ from the same readings one by one"
fi
assert_eq "2 parts at midnight, 2 at 00:30, 2 standing days" \
    "$(psql_q "SELECT count(*) FILTER (WHERE kind = 'charge' AND to_seq = 4) || ' parts at midnight, '
        || count(*) FILTER (WHERE kind = 'charge' AND to_seq = 8) || ' at 00:30, '
        || count(*) FILTER (WHERE kind = 'standing') || ' standing days'
        FROM prepaid.ledger WHERE meter_id = 'AHA'")" "AHA: the interval across midnight and the one across the band edge are cut"
assert_eq "$(bal AHS)" "$(bal AHA)" "AHA: the array's balance equals the one-by-one balance"
assert_eq t "$(psql_q "SELECT max(entry_id) FILTER (WHERE kind = 'standing' AND day = '2026-11-04')
        > max(entry_id) FILTER (WHERE kind = 'charge')
    FROM prepaid.ledger WHERE meter_id = 'AHA'")" "AHA: the new day's standing charge after every part"
echo "    AHA: $(psql_q "SELECT count(*) FILTER (WHERE kind = 'charge') || ' charge entries, balance '
    || balance FROM prepaid.ledger l JOIN prepaid.meters m USING (meter_id)
    WHERE meter_id = 'AHA' GROUP BY balance")"
no_ledger_drift "arrays across midnight"

# Both daemons stop together: a member of a shared group that is gone but
# whose persistent session remains still gets its share of the messages,
# queued in the broker until it comes back.
daemon2_stop
daemon_stop
echo "PASS: charging"
