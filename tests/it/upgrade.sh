#!/usr/bin/env bash
#
# tests/it/upgrade.sh: a database made by the pre-release prepaidd
# (migrations 001-006, everything owned by the daemon's login; see
# tests/data/upgrade/README) is converted in place by --migrate, as the
# README's upgrade procedure says: refused, with a hint, for a login that
# cannot take the objects from their owner; converted by a superuser, its
# data kept to the fen, its schema then the same as a new database's,
# every object owned by prepaid_owner; and the daemon, as its old login now
# holding prepaid_daemon only, charges the next reading.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
broker_start
daemon_config
daemon_migrate # a new database "prepaid", to compare with

psql_q "CREATE DATABASE v6 OWNER $PG_DAEMON" >/dev/null
gzip -dc "$top_srcdir/tests/data/upgrade/prepaid-v6.sql.gz" |
    "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -U postgres -d v6 >"$LIB_TMP/restore.log" 2>&1 ||
    fail "restoring the old database: $(tail -n 5 "$LIB_TMP/restore.log")"
q6()
{
	"$PG_BINDIR/psql" -X -q -A -t -v ON_ERROR_STOP=1 -U postgres -d v6 -c "$1"
}
assert_eq "6|$PG_DAEMON" "$(q6 "SELECT max(version), (SELECT nspowner::regrole FROM pg_namespace
    WHERE nspname = 'prepaid') FROM prepaid.schema_migrations")" "the old database's version and owner"

note "a login that cannot take the objects from their owner is refused"
ci="host=127.0.0.1 port=$PG_PORT dbname=v6 user=$PG_ADMIN"
if "$top_builddir/prepaidd" --migrate="$ci" >"$LIB_TMP/m1.out" 2>&1; then
	fail "--migrate as $PG_ADMIN converted a database owned by $PG_DAEMON"
fi
grep -q 'superuser' "$LIB_TMP/m1.out" || fail "the refusal gives no hint: $(cat "$LIB_TMP/m1.out")"
echo "ok - refused: $(grep 'superuser' "$LIB_TMP/m1.out" | head -n 1)"
assert_eq 6 "$(q6 "SELECT max(version) FROM prepaid.schema_migrations")" "version after the refusal"

note "converted by a superuser"
"$top_builddir/prepaidd" --migrate="host=127.0.0.1 port=$PG_PORT dbname=v6 user=postgres" \
    >"$LIB_TMP/m2.out" 2>&1 || fail "--migrate as a superuser: $(cat "$LIB_TMP/m2.out")"
grep -q 'converting the pre-release layout' "$LIB_TMP/m2.out" ||
    fail "no conversion said: $(cat "$LIB_TMP/m2.out")"
echo "ok - $(head -n 1 "$LIB_TMP/m2.out")"
# The same migrations as a new database's (001_baseline first, standing
# for the old 001-006, then every later one).
migs="SELECT string_agg(version || ' ' || name, ',' ORDER BY version) FROM prepaid.schema_migrations"
[[ "$(psql_q "$migs")" == "1 001_baseline,2 002_clock_drills"* ]] ||
    fail "the new database's migrations: $(psql_q "$migs")"
assert_eq "$(psql_q "$migs")" "$(q6 "$migs")" "the migrations recorded"
assert_eq "OLD0001 47.00,OLD0002 0.00" "$(q6 "SELECT string_agg(meter_id || ' ' || balance, ','
    ORDER BY meter_id) FROM prepaid.balances")" "balances kept"
assert_eq "2|0" "$(q6 "SELECT (SELECT count(*) FROM prepaid.ledger),
    (SELECT count(*) FROM prepaid.verify_ledger())")" "ledger entries kept, and it verifies"
assert_eq "queued|Li Lei" "$(q6 "SELECT (SELECT state FROM prepaid.commands WHERE meter_id = 'OLD0002'),
    (SELECT name FROM prepaid.occupants)")" "the queued trip and the occupant kept"
assert_eq 0 "$(q6 "SELECT count(*) FROM (
    SELECT relowner o FROM pg_class WHERE relnamespace IN ('prepaid'::regnamespace,
        'prepaid_internal'::regnamespace)
    UNION ALL SELECT proowner FROM pg_proc WHERE pronamespace IN ('prepaid'::regnamespace,
        'prepaid_internal'::regnamespace)
    UNION ALL SELECT nspowner FROM pg_namespace WHERE nspname IN ('prepaid', 'prepaid_internal')) x
    WHERE o <> 'prepaid_owner'::regrole")" "objects not owned by prepaid_owner"
echo "ok - data kept to the fen, every object handed to prepaid_owner"

for d in prepaid v6; do
	"$PG_BINDIR/pg_dump" -s -U postgres -n prepaid -n prepaid_internal "$d" |
	    grep -v '^\\\(un\)\{0,1\}restrict' >"$LIB_TMP/schema.$d"
done
diff -u "$LIB_TMP/schema.prepaid" "$LIB_TMP/schema.v6" >"$LIB_TMP/schema.diff" ||
    fail "the converted schema differs from a new one: $(head -n 40 "$LIB_TMP/schema.diff")"
echo "ok - the converted schema is the same as a new database's ($(wc -l <"$LIB_TMP/schema.v6") lines of pg_dump -s)"

note "the daemon, as its old login with prepaid_daemon only, charges the next reading"
q6 "GRANT prepaid_daemon TO $PG_DAEMON; ALTER DATABASE v6 OWNER TO postgres" >/dev/null
daemon_config "database.conninfo=host=127.0.0.1 port=$PG_PORT user=$PG_DAEMON dbname=v6 connect_timeout=5"
daemon_start
pub meters/OLD0001/reading "{\"seq\":3,\"ts\":\"$(date -u +%FT%TZ)\",\"energy_wh\":11000,\"relay\":\"closed\"}"
deadline=$(($(lib_now_ms) + 10000))
until [ "$(q6 "SELECT balance FROM prepaid.balances WHERE meter_id = 'OLD0001'")" = 44.00 ]; do
	daemon_check_alive
	[ "$(lib_now_ms)" -lt "$deadline" ] ||
	    fail "OLD0001 not charged: balance $(q6 "SELECT balance FROM prepaid.balances
	        WHERE meter_id = 'OLD0001'"), want 44.00"
	sleep 0.2
done
echo "ok - OLD0001's next reading (5 kWh at 0.6) charged: balance 47.00 -> 44.00"
daemon_stop
! grep -q 'connects as' "$DAEMON_LOG" || fail "the daemon warned: $(grep 'connects as' "$DAEMON_LOG")"
echo "ok - no owner or superuser warning"
