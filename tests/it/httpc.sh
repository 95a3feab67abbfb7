#!/usr/bin/env bash
#
# tests/it/httpc.sh: the HTTP client against a real loopback gateway. Starts
# tests/fakegw on a free port and runs the Check suite tests/unit/check_httpc
# with the gateway's URL, its request log and a port nobody listens on.
# Needs no PostgreSQL or broker.

set -eu
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

FAKEGW=$top_builddir/tests/fakegw
CHECK=$top_builddir/tests/unit/check_httpc
[ -x "$FAKEGW" ] || fail "$FAKEGW is not built"
[ -x "$CHECK" ] || fail "$CHECK is not built"

# A proxy from the environment would swallow loopback requests.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY || true

GW_PORT=$(free_port)
CLOSED_PORT=$(free_port)
GW_LOG=$LIB_TMP/fakegw.log
GW_OUT=$LIB_TMP/fakegw.out
: >"$GW_LOG"

note "fakegw on 127.0.0.1:$GW_PORT"
$LIB_SETSID "$FAKEGW" "$GW_PORT" "$GW_LOG" >"$GW_OUT" 2>&1 &
LIB_PIDS+=("$!")
deadline=$(($(lib_now_ms) + 10000))
until grep -q "^fakegw: listening on $GW_PORT" "$GW_OUT"; do
	lib_alive "${LIB_PIDS[-1]}" || { cat "$GW_OUT" >&2; fail "fakegw exited"; }
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "fakegw did not start"
	sleep 0.1
done

note "check_httpc"
rc=0
FAKEGW_URL=http://127.0.0.1:$GW_PORT FAKEGW_LOG=$GW_LOG \
    FAKEGW_CLOSED_URL=http://127.0.0.1:$CLOSED_PORT/ok CK_FORK=no \
    "$CHECK" || rc=$?
if [ "$rc" != 0 ]; then
	echo "--- last 5 lines of the fakegw log:" >&2
	tail -n 5 "$GW_LOG" >&2
	fail "check_httpc exited with $rc"
fi

# The gateway must stop cleanly on SIGTERM (under ASan: without leaks),
# even with requests it never answered.
lib_terminate "${LIB_PIDS[-1]}" 10
unset 'LIB_PIDS[-1]'
cat "$GW_OUT"
assert_eq 0 "$LIB_RC" "fakegw exit status after SIGTERM"
