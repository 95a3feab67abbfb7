#!/usr/bin/env bash
#
# tests/it/resilience.sh: the daemon outlives the servers it depends on and
# loses nothing. Proves that with PostgreSQL stopped for five seconds in the
# middle of a steady stream the daemon survives, resumes and writes every
# reading exactly once; that after a broker restart (with its session kept,
# and with it lost) the daemon reconnects, subscribes again and new readings
# land; and that SIGTERM in the middle of a stream exits 0 and what the
# broker queued meanwhile lands after the next start.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
broker_start
daemon_config database.reconnect_max_ms=1000 mqtt.reconnect_max_ms=1000
daemon_migrate
daemon_start

# Wait until /healthz answers $1 (or, with "!200", anything but 200).
wait_health()
{
	local want=$1 secs=$2 deadline code

	deadline=$(($(lib_now_ms) + secs * 1000))
	while :; do
		code=$(daemon_healthz)
		case "$want" in
		!*) [ "$code" != "${want#!}" ] && break ;;
		*) [ "$code" = "$want" ] && break ;;
		esac
		daemon_check_alive
		[ "$(lib_now_ms)" -lt "$deadline" ] ||
		    fail "/healthz did not become $want within ${secs}s (last $code)"
		sleep 0.2
	done
	echo "ok - /healthz $code"
}

# Every reading of fleet prefix $1 is written exactly once: $2 in all.
exactly_once()
{
	wait_until "SELECT count(*) = $2 FROM prepaid.readings WHERE meter_id LIKE '$1%'" 30 \
	    "$2 readings of $1 written"
	assert_eq "$2" "$(psql_q "SELECT count(DISTINCT (meter_id, seq)) FROM prepaid.readings
	    WHERE meter_id LIKE '$1%'")" "distinct readings of $1"
	assert_eq "$2" "$(psql_q "SELECT sum(readings) FROM prepaid.meters
	    WHERE meter_id LIKE '$1%'")" "readings counted on the meters of $1"
	assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.open_gaps WHERE meter_id LIKE '$1%'")" \
	    "open gaps of $1"
}

sim_wait()
{
	local pid=$1 what=$2 deadline

	deadline=$(($(lib_now_ms) + 30000))
	while lib_alive "$pid"; do
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "simulator ($what) did not finish"
		sleep 0.2
	done
	wait "$pid" || fail "simulator ($what) failed"
}

note "PostgreSQL stopped for 5 s during a steady stream"
# 20 meters, 5 readings/s each for 10 s: 1000 readings.
sim_bg -i PGS -n 20 -c 50 -r 200
pgs_sim=$SIM_PID
pgs_log=$SIM_LOG
wait_until "SELECT count(*) > 100 FROM prepaid.readings WHERE meter_id LIKE 'PGS%'" 15 \
    "stream flowing"
pg_stop fast
echo "PostgreSQL stopped at $(date +%T)"
wait_health '!200' 5
sleep 5
lib_alive "$DAEMON_PID" || fail "prepaidd died while PostgreSQL was away"
echo "ok - prepaidd alive with PostgreSQL away"
pg_start
echo "PostgreSQL started at $(date +%T)"
wait_health 200 20
sim_wait "$pgs_sim" PGS
grep -q 'published=1000 acked=1000' "$pgs_log" ||
    fail "simulator: $(tail -n 1 "$pgs_log")"
exactly_once PGS 1000

note "broker restarted with its session kept"
broker_stop
wait_health '!200' 10
broker_start "$BROKER_PORT"
wait_health 200 20
sim -i BRA -n 5 -c 10 -r 20 >/dev/null
exactly_once BRA 50

note "broker restarted with its session lost: the daemon subscribes again"
broker_stop
wait_health '!200' 10
rm -f "$LIB_TMP/broker/mosquitto.db"
broker_start "$BROKER_PORT"
wait_health 200 20
sim -i BRB -n 5 -c 10 -r 20 >/dev/null
exactly_once BRB 50

note "SIGTERM in the middle of a stream exits 0 and loses nothing"
sim_bg -i TRM -n 10 -c 40 -r 100
trm_sim=$SIM_PID
trm_log=$SIM_LOG
wait_until "SELECT count(*) > 50 FROM prepaid.readings WHERE meter_id LIKE 'TRM%'" 15 \
    "stream flowing"
daemon_stop
sim_wait "$trm_sim" TRM
grep -q 'published=400 acked=400' "$trm_log" ||
    fail "simulator: $(tail -n 1 "$trm_log")"
written=$(psql_q "SELECT count(*) FROM prepaid.readings WHERE meter_id LIKE 'TRM%'")
echo "written before the restart: $written of 400 (the rest queued on the broker)"
daemon_start
exactly_once TRM 400

daemon_stop
echo "PASS: resilience"
