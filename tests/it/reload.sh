#!/usr/bin/env bash
#
# tests/it/reload.sh: configuration checks and SIGHUP. Proves that
# `prepaidd -n` names the file and line of an error and accepts a good file,
# that SIGHUP with a broken file keeps the daemon running on its old
# configuration, that SIGHUP applies a changed reloadable key and names a
# key that needs a restart, and that the daemon refuses to start on a
# database that has not been migrated, pointing at --migrate.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pg_start
broker_start
daemon_config
daemon_migrate
cp "$CONF" "$LIB_TMP/good.conf"

note "--version names the libraries"
"$top_builddir/prepaidd" --version >"$LIB_TMP/version.out" 2>&1 ||
    fail "--version failed: $(cat "$LIB_TMP/version.out")"
for lib in prepaidd libevent libpq libmosquitto jansson; do
	grep -qi "$lib" "$LIB_TMP/version.out" || fail "--version does not mention $lib"
done
echo "ok - --version: $(head -n 1 "$LIB_TMP/version.out")"

note "prepaidd -n on a good file"
out=$("$top_builddir/prepaidd" -n -c "$CONF" 2>&1) || fail "-n on a good file: $out"
[[ "$out" == *"configuration OK"* ]] || fail "-n printed: $out"
echo "ok - -n: $out"

note "prepaidd -n on a broken file names the file and line"
daemon_config ingest.batch_size=banana
cp "$CONF" "$LIB_TMP/broken.conf"
line=$(grep -n '^batch_size = banana$' "$CONF" | cut -d: -f1)
rc=0
out=$("$top_builddir/prepaidd" -n -c "$CONF" 2>&1) || rc=$?
[ "$rc" != 0 ] || fail "-n accepted batch_size = banana"
[[ "$out" == *"$CONF:$line: "* ]] || fail "-n did not say $CONF:$line: ...; it said: $out"
echo "ok - -n exit $rc: $out"
rc=0
out=$("$top_builddir/prepaidd" -n -c "$LIB_TMP/no-such.conf" 2>&1) || rc=$?
[ "$rc" != 0 ] || fail "-n accepted a missing file"
echo "ok - -n on a missing file exit $rc: $out"

note "SIGHUP with a broken file keeps the running configuration"
cp "$LIB_TMP/good.conf" "$CONF"
daemon_start
sim -i RLA -n 5 -c 4 -r 20 >/dev/null
wait_until "SELECT count(*) = 20 FROM prepaid.readings WHERE meter_id LIKE 'RLA%'" 15 \
    "readings before the reload"
cp "$LIB_TMP/broken.conf" "$CONF"
from=$(daemon_log_lines)
daemon_reload
wait_log "reload failed: $CONF:$line: " "$from" 10
wait_log "keeping the running configuration" "$from" 5
sleep 0.5
lib_alive "$DAEMON_PID" || fail "prepaidd died on a broken reload"
sim -i RLB -n 5 -c 4 -r 20 >/dev/null
wait_until "SELECT count(*) = 20 FROM prepaid.readings WHERE meter_id LIKE 'RLB%'" 15 \
    "still ingesting on the old configuration"
assert_eq 200 "$(daemon_healthz)" "/healthz after a failed reload"

note "SIGHUP with a changed reloadable key applies it"
daemon_config ingest.batch_window_ms=80 ingest.auto_register=false
from=$(daemon_log_lines)
daemon_reload
wait_log 'reload: configuration .* applied' "$from" 10
if tail -n "+$from" "$DAEMON_LOG" | grep -q 'reload failed'; then
	fail "a valid reload failed: $(tail -n "+$from" "$DAEMON_LOG")"
fi
# auto_register = false now: a new meter is refused, a known one lands.
pub meters/RLNEW/reading "{\"seq\":1,\"ts\":\"$(date -u +%FT%TZ)\",\"energy_wh\":1,\"relay\":\"closed\"}"
sim -i RLA -n 1 -c 1 --start-seq 10 >/dev/null
wait_until "SELECT count(*) = 1 FROM prepaid.readings WHERE meter_id = 'RLA0001' AND seq = 10" \
    15 "a known meter lands after the reload"
wait_until "SELECT count(*) >= 1 FROM prepaid.rejects
    WHERE meter_id = 'RLNEW' AND reason LIKE 'unknown meter%'" 10 \
    "the reloaded auto_register = false is in force"

note "SIGHUP with a changed non-reloadable key names it"
daemon_config ingest.batch_window_ms=80 ingest.auto_register=false mqtt.keepalive=20
from=$(daemon_log_lines)
daemon_reload
wait_log 'mqtt\.keepalive' "$from" 10
lib_alive "$DAEMON_PID" || fail "prepaidd died on a reload that needs a restart"
daemon_stop

note "an un-migrated database is refused with a hint to --migrate"
psql_q "CREATE DATABASE unmigrated" >/dev/null
CONF=$LIB_TMP/unmigrated.conf
HTTP_PORT=
daemon_config "database.conninfo=host=127.0.0.1 port=$PG_PORT user=postgres dbname=unmigrated" \
    mqtt.client_id=prepaidd-unmigrated
rc=0
out=$(timeout 20 "$top_builddir/prepaidd" -c "$CONF" 2>&1) || rc=$?
[ "$rc" != 0 ] || fail "prepaidd started on an un-migrated database"
[ "$rc" != 124 ] || fail "prepaidd kept running on an un-migrated database"
[[ "$out" == *--migrate* ]] || fail "refusal does not mention --migrate: $out"
echo "ok - refused with exit $rc: $(echo "$out" | grep -e --migrate | head -n 1)"

echo "PASS: reload"
