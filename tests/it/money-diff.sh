#!/usr/bin/env bash
#
# tests/it/money-diff.sh: the differential test of the money. A seeded
# generator (tests/model/moneydiff.py) writes randomized reading streams:
# duplicates, reordering, gaps filled later, readings older than a meter's
# first, register resets, implausible jumps accepted, rejected or left open,
# a jump just above and just below the power limit, far-ahead sequence
# numbers, clock stalls, days offline, readings exactly at local midnight
# and on band edges, timestamps in several offsets, two sites in different
# time zones, tariff versions and assignments changing mid-stream, a meter
# commissioned at 00:10, month and year boundaries, tiers starting on the
# 2nd, holidays and a make-up workday, credits and their repeats. They are
# published to the real daemon over MQTT, and the daemon's ledger is compared
# with the reference model (tests/model/money.py, written from
# prepaidd-sql(7) alone, never calling the SQL): per interval, per part
# (day, tariff version, band, tier), per standing day, per anomaly and per
# balance, to the unit; every statement must add up exactly. A repeated
# credit reference with another amount must be refused, naming the first.
#
# make check runs seed 1 with 24 meters over 7 days. A release runs more:
#   MONEYDIFF_SEEDS="11 12 13" MONEYDIFF_METERS=100 MONEYDIFF_DAYS=14 \
#       make check TESTS=tests/it/money-diff.sh
# (about 20,000 messages a seed, a few minutes each). To tell a model
# error from a daemon defect, `moneydiff.py gen --clean` writes the same
# streams in order and without odd data: there the two must agree on every
# interval and standing day.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
command -v python3 >/dev/null 2>&1 || skip "python3 is not installed"
model=$top_srcdir/tests/model/moneydiff.py

# A broken harness is a hard error (99), never an expected failure.
harness_error()
{
	echo "ERROR: $*" >&2
	exit 99
}

# The model first, on the worked cases of issue 10.
python3 "$top_srcdir/tests/model/test_money.py" 2>&1 | tail -n 3
[ "${PIPESTATUS[0]}" = 0 ] || harness_error "the reference model fails its own worked cases"

seeds=${MONEYDIFF_SEEDS:-${MONEYDIFF_SEED:-1}}
meters=${MONEYDIFF_METERS:-24}
days=${MONEYDIFF_DAYS:-7}
rc=0
pg_start
broker_start
daemon_config
export PG_BINDIR PG_PORT BROKER_PORT
for seed in $seeds; do
	note "seed $seed: $meters meters over $days days"
	# a fresh database for each seed
	"$PG_BINDIR/psql" -X -q -d postgres -c "DROP DATABASE IF EXISTS prepaid" \
	    -c "CREATE DATABASE prepaid OWNER $PG_ADMIN" || harness_error "could not recreate the database"
	daemon_migrate
	daemon_start
	python3 "$model" gen --seed "$seed" --meters "$meters" --days "$days" >"$LIB_TMP/scenario.json" ||
	    harness_error "seed $seed: the generator failed"
	python3 "$model" run "$LIB_TMP/scenario.json" ||
	    harness_error "seed $seed: the scenario could not be run"
	python3 "$model" check "$LIB_TMP/scenario.json" || {
		[ $? = 1 ] || harness_error "seed $seed: the comparison failed"
		rc=1
	}

	# A repeated credit reference with another amount is refused, naming
	# the first entry; with the same amount it is the first entry again.
	m=MD$(printf '%04d' "$seed")0000
	first=$(psql_q "SELECT prepaid.credit('$m', 10.00, 'moneydiff-r1')")
	again=$(psql_q "SELECT prepaid.credit('$m', 10.00, 'moneydiff-r1')")
	assert_eq "$first" "$again" "a repeated credit returns the first entry"
	if err=$(psql_q "SELECT prepaid.credit('$m', 99.99, 'moneydiff-r1')" 2>&1); then
		echo "FAIL: credit 99.99 with the reference of a 10.00 credit was taken (entry $err)" >&2
		rc=1
	elif ! grep -q "$first" <<<"$err"; then
		echo "FAIL: the refusal does not name entry $first: $err" >&2
		rc=1
	else
		echo "ok - a conflicting credit reference is refused: $err"
	fi

	# A seq far ahead is held, billing goes on; accepted, it is stored and
	# charged like any reading (here: the meter's new latest).
	h=MDHOLD$seed
	base=$(date -u +%s)
	for k in 0 1 2; do
		pub "meters/$h/reading" "{\"seq\":$((100 + k)),\"ts\":\"$(date -u -d "@$((base + k * 60))" +%FT%TZ)\",\"energy_wh\":$((k * 100))}"
	done
	pub "meters/$h/reading" "{\"seq\":1000000000,\"ts\":\"$(date -u -d "@$((base + 300))" +%FT%TZ)\",\"energy_wh\":500}"
	pub "meters/$h/reading" "{\"seq\":103,\"ts\":\"$(date -u -d "@$((base + 240))" +%FT%TZ)\",\"energy_wh\":400}"
	wait_until "SELECT last_seq = 103 FROM prepaid.meters WHERE meter_id = '$h'" 10 \
	    "$h: billing goes on past a far-ahead seq"
	assert_eq "seq_out_of_range|open|1000000000|0|400" "$(psql_q "SELECT a.kind || '|' || a.state ||
	    '|' || a.to_seq || '|' || (SELECT count(*) FROM prepaid.readings r WHERE r.meter_id = '$h'
	        AND r.seq = 1000000000) || '|' || (SELECT sum(energy_wh) FROM prepaid.ledger l
	        WHERE l.meter_id = '$h' AND l.kind = 'charge')
	    FROM prepaid.anomalies a WHERE a.meter_id = '$h'")" "$h: the far seq held, 400 Wh charged"
	assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.gaps WHERE meter_id = '$h'")" \
	    "$h: no gap opened by it"
	psql_q "SELECT prepaid.accept_anomaly(id, 'moneydiff: a meter swap') FROM prepaid.anomalies
	    WHERE meter_id = '$h'" >/dev/null
	assert_eq "accepted|1000000000|1|500" "$(psql_q "SELECT a.state || '|' || m.last_seq || '|' ||
	    (SELECT count(*) FROM prepaid.readings r WHERE r.meter_id = '$h' AND r.seq = 1000000000)
	    || '|' || (SELECT sum(energy_wh) FROM prepaid.ledger l WHERE l.meter_id = '$h'
	        AND l.kind = 'charge')
	    FROM prepaid.anomalies a JOIN prepaid.meters m USING (meter_id) WHERE a.meter_id = '$h'")" \
	    "$h: accepted, stored as the latest reading and its 100 Wh charged"
	assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.verify_ledger()")" "verify_ledger() after it"
	daemon_stop
done
[ "$rc" = 0 ] || fail "the daemon's money differs from the model (see above)"
echo "PASS: money-diff"
