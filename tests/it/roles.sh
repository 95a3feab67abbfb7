#!/usr/bin/env bash
#
# tests/it/roles.sh: who may do what, on a real PostgreSQL. The role matrix
# is generated from one table, the CATALOG section of prepaidd-sql(7): for
# each runtime role (daemon, operator, finance, readonly) and each object
# listed there, a login holding only that role reads the table or view, or
# calls the function (with NULL arguments, rolled back), and the server's
# answer -- refused with insufficient_privilege, or anything else -- must be
# what the page says. Internal functions the page does not list are refused
# to every role. Then: no runtime role can alter, update, delete or truncate
# the ledger, readings, payments or an audit table, nor disable their
# triggers; in a default install an operator cannot move the guards' clock,
# nor can a superuser by hand; where the owner allows it, a move is audited
# with the operator's login; and the daemon warns at start when it runs as a
# superuser or as a member of prepaid_owner, and not when it runs as its
# own login.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
broker_start
daemon_config
daemon_migrate

# A login per role, holding that role only (the daemon's is lib.sh's).
declare -A LOGIN=([daemon]=$PG_DAEMON [operator]=op_anna [finance]=fin_li [readonly]=audit_wu)
psql_q "CREATE ROLE op_anna LOGIN IN ROLE prepaid_operator;
        CREATE ROLE fin_li LOGIN IN ROLE prepaid_finance;
        CREATE ROLE audit_wu LOGIN IN ROLE prepaid_readonly"
ROLES=(daemon operator finance readonly)

# Run SQL as a login; SQL on stdin, output (stdout and stderr) on stdout.
as_login()
{
	"$PG_BINDIR/psql" -X -q -A -t -h 127.0.0.1 -p "$PG_PORT" -U "$1" -d prepaid 2>&1
}

# SQLSTATE of one statement run as a login, in a transaction rolled back.
state_as()
{
	printf '\\set VERBOSITY terse\nBEGIN;\n%s;\n\\echo STATE :SQLSTATE\nROLLBACK;\n' "$2" |
	    as_login "$1" | sed -n 's/^STATE //p'
}

# --- the matrix, from the page

man=$top_srcdir/man/prepaidd-sql.7
sed -n '/^\.Sh CATALOG/,/^\.Sh /p' "$man" | awk '
	/^\.It (Sy|Fn) prepaid(_internal)?\.[a-z_0-9]+$/ { obj = $3; next }
	obj != "" && /^Roles: / {
		sub(/^Roles: /, ""); sub(/\.$/, ""); gsub(/,/, "")
		print obj, $0; obj = ""
	}' >"$LIB_TMP/expected"
[ "$(wc -l <"$LIB_TMP/expected")" -gt 90 ] ||
    fail "too few CATALOG entries with Roles: in $man: $(wc -l <"$LIB_TMP/expected")"
entries=$(sed -n '/^\.Sh CATALOG/,/^\.Sh /p' "$man" | grep -cE '^\.It (Sy|Fn) prepaid')
assert_eq "$entries" "$(wc -l <"$LIB_TMP/expected")" "CATALOG entries with a Roles: line"

# How each object is tried: a relation is read, a function called with as
# many NULLs as it takes.
psql_q "SELECT n.nspname || '.' || c.relname, 'SELECT 1 FROM ' || n.nspname || '.' || c.relname
        || ' LIMIT 1'
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('prepaid', 'prepaid_internal') AND c.relkind IN ('r', 'p', 'v')
        UNION ALL
        SELECT n.nspname || '.' || p.proname, 'SELECT ' || n.nspname || '.' || p.proname || '('
        || coalesce((SELECT string_agg('NULL', ', ') FROM generate_series(1, p.pronargs)), '')
        || ')'
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname IN ('prepaid', 'prepaid_internal')" >"$LIB_TMP/tries"

cells=0
mismatches=0
for role in "${ROLES[@]}"; do
	{
		echo '\set VERBOSITY terse'
		while read -r obj _; do
			sql=$(awk -F '|' -v o="$obj" '$1 == o { print $2; exit }' "$LIB_TMP/tries")
			[ -n "$sql" ] || fail "$obj is in the CATALOG but not in the database"
			printf 'BEGIN;\n%s;\n\\echo CELL %s :SQLSTATE\nROLLBACK;\n' "$sql" "$obj"
		done <"$LIB_TMP/expected"
	} | as_login "${LOGIN[$role]}" | sed -n 's/^CELL //p' >"$LIB_TMP/actual.$role"
	while read -r obj roles; do
		got=$(awk -v o="$obj" '$1 == o { print $2 }' "$LIB_TMP/actual.$role")
		[ -n "$got" ] || fail "no answer for $obj as $role"
		if [ "$got" = 42501 ]; then actual=refused; else actual=allowed; fi
		case " $roles " in *" $role "*) want=allowed ;; *) want=refused ;; esac
		cells=$((cells + 1))
		if [ "$actual" != "$want" ]; then
			echo "MISMATCH: $role on $obj: $actual (SQLSTATE $got), prepaidd-sql(7) says $want" >&2
			mismatches=$((mismatches + 1))
		fi
	done <"$LIB_TMP/expected"
done
[ "$mismatches" = 0 ] || fail "$mismatches of $cells role x object cells differ from prepaidd-sql(7)"
echo "ok - role matrix: ${#ROLES[@]} roles x $(wc -l <"$LIB_TMP/expected") objects = $cells cells, all as prepaidd-sql(7) says"

# Every other internal function (the rest of prepaid_internal, the trigger
# functions) is refused to every role, and to PUBLIC.
awk '{ print $1 }' "$LIB_TMP/expected" | sed 's/^/"/; s/$/"/' | paste -sd, >"$LIB_TMP/listed"
leaks=$(psql_q "SELECT p.oid::regprocedure || ' to ' || r
    FROM pg_proc p CROSS JOIN unnest(ARRAY['prepaid_daemon', 'prepaid_operator',
         'prepaid_finance', 'prepaid_readonly']) r
    WHERE p.pronamespace = 'prepaid_internal'::regnamespace
      AND 'prepaid_internal.' || p.proname <> ALL (ARRAY[$(sed "s/\"/'/g" "$LIB_TMP/listed")])
      AND (has_function_privilege(r, p.oid, 'EXECUTE')
           OR EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                      WHERE a.grantee = 0))")
[ -z "$leaks" ] || fail "internal functions executable beyond the page: $leaks"
n=$(psql_q "SELECT count(*) FROM pg_proc WHERE pronamespace = 'prepaid_internal'::regnamespace")
echo "ok - the other internal functions ($n in prepaid_internal in all) are refused to every role and to PUBLIC"

# The daemon's role is what the daemon runs with in every test (lib.sh):
# it holds prepaid_daemon and nothing else.
assert_eq "prepaid_daemon" "$(psql_q "SELECT string_agg(b.rolname, ',') FROM pg_auth_members m
    JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = '$PG_DAEMON'::regrole")" \
    "roles of the daemon's login"
assert_eq "f|f" "$(psql_q "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = '$PG_DAEMON'")" \
    "the daemon's login is neither superuser nor CREATEROLE"

# --- append-only that holds

for role in "${ROLES[@]}"; do
	for t in ledger:entry_id readings:seq payments:payment_id command_audit:id \
	    operator_audit:id message_attempts:attempt payment_rejects:id payment_notices:id \
	    session_losses:id; do
		tab=${t%%:*}
		col=${t#*:}
		for sql in "ALTER TABLE prepaid.$tab DISABLE TRIGGER ALL" \
		    "UPDATE prepaid.$tab SET $col = $col" "DELETE FROM prepaid.$tab" \
		    "TRUNCATE prepaid.$tab"; do
			got=$(state_as "${LOGIN[$role]}" "$sql")
			assert_eq 42501 "$got" "$role: $sql"
		done
	done
done
echo "ok - no runtime role may disable a trigger of, update, delete or truncate the ledger, readings, payments or an audit table (${#ROLES[@]} roles x 9 tables x 4 statements)"
got=$(state_as "$PG_DAEMON" "ALTER TABLE prepaid.ledger DISABLE TRIGGER ledger_append_only")
assert_eq 42501 "$got" "daemon: ALTER TABLE prepaid.ledger DISABLE TRIGGER ledger_append_only"
got=$(state_as "$PG_DAEMON" "CREATE OR REPLACE FUNCTION prepaid_internal.ledger_append_only_trigger()
    RETURNS trigger LANGUAGE plpgsql AS \$\$ BEGIN RETURN NEW; END \$\$")
assert_eq 42501 "$got" "daemon: replacing the append-only trigger function"
echo "ok - as the daemon, disabling ledger_append_only or replacing its function is refused"

# --- settings staff keep in tables

echo "SELECT prepaid.register_meter('R0001');" | as_login op_anna >/dev/null
for t in "operator|UPDATE prepaid.policies SET grace = grace|00000" \
    "operator|UPDATE prepaid.meters SET max_power_w = 9000 WHERE meter_id = 'R0001'|00000" \
    "operator|UPDATE prepaid.meters SET balance = balance + 100|42501" \
    "operator|UPDATE prepaid.sites SET default_tariff_id = NULL|42501" \
    "operator|INSERT INTO prepaid.holidays (day, kind) VALUES ('2030-01-01', 'holiday')|00000" \
    "finance|UPDATE prepaid.sites SET default_tariff_id = NULL|00000" \
    "finance|UPDATE prepaid.policies SET grace = grace|42501" \
    "readonly|UPDATE prepaid.holidays SET name = name|42501"; do
	IFS='|' read -r role sql want <<<"$t"
	assert_eq "$want" "$(state_as "${LOGIN[$role]}" "$sql")" "$role: $sql"
done
echo "ok - operators change the settings tables (their triggers, which touch the meters, run as the owner), not balances; finance sets a site's tariff"

# --- the guards' clock

out=$(echo "SELECT prepaid.move_clock('3 days', 'drill');" | as_login op_anna)
[[ "$out" == *"not movable"* ]] || fail "an operator moved the clock of a default install: $out"
got=$(state_as op_anna "UPDATE prepaid.clock SET offset_by = '3 days'")
assert_eq 42501 "$got" "operator: UPDATE prepaid.clock"
got=$(state_as op_anna "UPDATE prepaid.clock SET movable = true")
assert_eq 42501 "$got" "operator: UPDATE prepaid.clock SET movable"
if psql_q "UPDATE prepaid.clock SET offset_by = '3 days'" >"$LIB_TMP/su.out" 2>&1; then
	fail "a superuser moved the clock of a default install by hand"
fi
assert_eq "00:00:00" "$(psql_q "SELECT offset_by FROM prepaid.clock")" "clock offset"
echo "ok - in a default install the clock does not move: not for an operator (function or UPDATE), not for a superuser by hand"

psql_q "UPDATE prepaid.clock SET movable = true"
out=$(echo "SELECT prepaid.move_clock('2 days', 'evening drill') - now() > interval '47 hours';" |
    as_login op_anna)
assert_eq t "$out" "prepaid.now() after the operator moved the clock 2 days"
assert_eq "op_anna|2 days|evening drill" "$(psql_q "SELECT actor, detail->>'to', detail->>'reason'
    FROM prepaid.operator_audit WHERE action = 'move_clock' ORDER BY id DESC LIMIT 1")" \
    "the audit of the move"
echo "ok - where the owner allows it, an operator moves the clock, audited with the login (op_anna)"
psql_q "UPDATE prepaid.clock SET offset_by = '0'"
psql_q "UPDATE prepaid.clock SET movable = false"

# --- the daemon's start check

start_as()
{
	# A port free now: the one picked at the start may have been taken since.
	HTTP_PORT=$(free_port)
	daemon_config "database.conninfo=host=127.0.0.1 port=$PG_PORT user=$1 dbname=prepaid connect_timeout=5"
	from=$(($(daemon_log_lines) + 1))
	daemon_start
	wait_log "database: schema version" "$from"
	sleep 0.5
	daemon_stop
}
start_as postgres
tail -n "+$from" "$DAEMON_LOG" | grep -q 'connects as "postgres", a superuser' ||
    fail "no warning when the daemon runs as a superuser"
echo "ok - as a superuser the daemon warns: $(tail -n "+$from" "$DAEMON_LOG" | grep -o 'connects as "postgres", a superuser[^;]*' | head -n 1)"
start_as "$PG_ADMIN"
tail -n "+$from" "$DAEMON_LOG" | grep -q "connects as \"$PG_ADMIN\", a member of prepaid_owner" ||
    fail "no warning when the daemon runs as a member of prepaid_owner"
echo "ok - as a member of prepaid_owner the daemon warns"
start_as "$PG_DAEMON"
if tail -n "+$from" "$DAEMON_LOG" | grep -q 'connects as'; then
	fail "the daemon warns as its own login: $(tail -n "+$from" "$DAEMON_LOG" | grep 'connects as')"
fi
echo "ok - as its own login (prepaid_daemon only) the daemon does not warn"
