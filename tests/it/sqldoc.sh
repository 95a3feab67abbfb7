#!/usr/bin/env bash
#
# tests/it/sqldoc.sh: the SQL interface and its documentation agree. After
# `prepaidd --migrate` (run twice: the function and view files are applied
# again every time), every table, view and function in schema prepaid -- the
# operator interface -- has an entry in the CATALOG section of
# prepaidd-sql(7) and a COMMENT with the same text, and every name that
# section lists exists.
# Internal objects (schema prepaid_internal), partitions of readings and the
# sequences behind serial columns are not part of the interface.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
daemon_config mqtt.port=1883
daemon_migrate
daemon_migrate
grep -q "schema is up to date (version" "$DAEMON_LOG" ||
    fail "a second --migrate did not find the schema up to date"
echo "ok - --migrate applies again on a migrated database"

# Objects of schema prepaid: kind, name, whether it has a comment.
psql_q "
SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'S' THEN 'sequence' ELSE 'table' END,
       c.relname, obj_description(c.oid, 'pg_class') IS NOT NULL
FROM pg_class c
WHERE c.relnamespace = 'prepaid'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND NOT c.relispartition
  AND (c.relkind <> 'S' OR NOT EXISTS (SELECT 1 FROM pg_depend d
       WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT 'function', p.proname, obj_description(p.oid, 'pg_proc') IS NOT NULL
FROM pg_proc p WHERE p.pronamespace = 'prepaid'::regnamespace
UNION ALL
SELECT 'type', t.typname, obj_description(t.oid, 'pg_type') IS NOT NULL
FROM pg_type t WHERE t.typnamespace = 'prepaid'::regnamespace AND t.typrelid = 0
  AND t.typelem = 0 OR (t.typnamespace = 'prepaid'::regnamespace AND t.typtype IN ('d', 'e'))
ORDER BY 2" | tr '|' ' ' >"$LIB_TMP/objects"
[ "$(wc -l <"$LIB_TMP/objects")" -gt 50 ] || fail "too few objects in prepaid: $(cat "$LIB_TMP/objects")"

# The names listed in the CATALOG section of the page.
man=$top_srcdir/man/prepaidd-sql.7
sed -n '/^\.Sh CATALOG/,/^\.Sh /p' "$man" |
    sed -n 's/^\.It \(Sy\|Fn\) prepaid\.\([a-z_0-9]*\).*/\2/p' | sort -u >"$LIB_TMP/documented"
[ -s "$LIB_TMP/documented" ] || fail "no CATALOG entries in $man"

awk '{ print $2 }' "$LIB_TMP/objects" | sort -u >"$LIB_TMP/existing"
undocumented=$(comm -23 "$LIB_TMP/existing" "$LIB_TMP/documented" | tr '\n' ' ')
[ -z "$undocumented" ] || fail "in schema prepaid but not in prepaidd-sql(7) CATALOG: $undocumented"
echo "ok - every object of schema prepaid ($(wc -l <"$LIB_TMP/existing")) is in prepaidd-sql(7)"
missing=$(comm -13 "$LIB_TMP/existing" "$LIB_TMP/documented" | tr '\n' ' ')
[ -z "$missing" ] || fail "in prepaidd-sql(7) CATALOG but not in schema prepaid: $missing"
echo "ok - every name in the CATALOG of prepaidd-sql(7) ($(wc -l <"$LIB_TMP/documented")) exists"
uncommented=$(awk '$3 != "t" { print $1 " " $2 }' "$LIB_TMP/objects" | tr '\n' ',')
[ -z "$uncommented" ] || fail "without COMMENT ON: $uncommented"
echo "ok - every object of schema prepaid carries a COMMENT"

# The page says what the COMMENT says: the line after each entry.
sed -n '/^\.Sh CATALOG/,/^\.Sh /p' "$man" |
    awk '/^\.It (Sy|Fn) prepaid\.[a-z_0-9]+$/ { n = substr($3, 9); getline; print n "|" $0 }' |
    sort >"$LIB_TMP/page_text"
psql_q "SELECT c.relname || '|' || obj_description(c.oid, 'pg_class') FROM pg_class c
    WHERE c.relnamespace = 'prepaid'::regnamespace AND c.relkind IN ('r', 'p', 'v')
      AND NOT c.relispartition
    UNION ALL
    SELECT p.proname || '|' || obj_description(p.oid, 'pg_proc') FROM pg_proc p
    WHERE p.pronamespace = 'prepaid'::regnamespace" | sort >"$LIB_TMP/comment_text"
diff "$LIB_TMP/comment_text" "$LIB_TMP/page_text" >"$LIB_TMP/text.diff" ||
    fail "COMMENT and prepaidd-sql(7) say different things: $(cat "$LIB_TMP/text.diff")"
[ "$(wc -l <"$LIB_TMP/page_text")" -gt 50 ] || fail "too few CATALOG texts"
echo "ok - each COMMENT ($(wc -l <"$LIB_TMP/comment_text")) is the text of its entry in prepaidd-sql(7)"
