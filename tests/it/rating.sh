#!/usr/bin/env bash
#
# tests/it/rating.sh: runs the rating unit tests (tests/unit/check_rating)
# against a throwaway PostgreSQL migrated by the real `prepaidd --migrate`,
# so that the tariffs, the ledger and the charging inside
# prepaid_internal.ingest_batch() are tested exactly as the daemon installs them. No
# broker or daemon is needed: check_rating calls ingest_batch() itself with
# the daemon's statement. Its connection comes from the libpq environment
# (PGHOST, PGPORT, PGUSER, PGDATABASE) that pg_start exports.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

check=$top_builddir/tests/unit/check_rating
[ -x "$check" ] || fail "$check is not built"

skip_unless_tools
pg_start
# The config must name a broker port to load; no broker is started.
BROKER_PORT=$(free_port)
daemon_config
daemon_migrate
assert_eq t "$(psql_q "SELECT to_regprocedure('prepaid.verify_ledger()') IS NOT NULL")" \
    "the ledger schema is installed"

note "rating unit tests against PostgreSQL on port $PG_PORT"
rc=0
# CK_VERBOSITY=normal prints each failure with its test name and message.
CK_VERBOSITY=${CK_VERBOSITY:-normal} "$check" || rc=$?
if [ "$rc" != 0 ]; then
	fail "check_rating exited with status $rc"
fi
echo "PASS: rating"
