#!/usr/bin/env bash
#
# tests/it/paypage-browser.sh: the pay page in a real headless Chromium
# (tests/it/paypage_browser.py, Selenium): open a tripped meter's link, see
# its balance, pay 50 yuan through a fake Alipay WAP cashier that has
# tests/paysign send the signed notification, come back to the result page
# and see the new balance and how to restore power; a wrong and a revoked
# token show nothing about any meter. Skipped (77) only when Chromium
# cannot start.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver || true)}
[ -n "$CHROMIUM" ] && [ -n "$CHROMEDRIVER" ] ||
    skip "chromium and chromium-driver are not installed (./prepaid.sh installs them)"
# Debian's python3-selenium is for the system python3, whatever else is first
# on PATH.
PY=
for p in /usr/bin/python3 python3; do
	if "$p" -c 'import selenium' 2>/dev/null; then
		PY=$p
		break
	fi
done
[ -n "$PY" ] || fail "python3-selenium is not installed (./prepaid.sh installs it)"
pay_keys

pg_start
broker_start
HTTP_PORT=$(free_port)
BASE=http://127.0.0.1:$HTTP_PORT
PP_CASHIER_PORT=$(free_port)
daemon_config "${PAY_KEYS_CONF[@]}" \
	paypage.path=/p \
	paypage.public_url="$BASE" \
	paypage.amounts="20 50 100" \
	paypage.stub_handoff_url="http://127.0.0.1:$PP_CASHIER_PORT/cashier"
daemon_migrate
daemon_start

psql_q "SELECT prepaid.register_meter(m) FROM unnest(ARRAY['PPB1', 'PPB2']) m" >/dev/null
psql_q "SELECT prepaid.adjust('PPB1', -12.34, 'test'), prepaid.adjust('PPB2', 5, 'test')" >/dev/null
psql_q "UPDATE prepaid.meters SET relay = 'open' WHERE meter_id = 'PPB1'"
PP_URL=$(psql_q "SELECT prepaid.pay_link('PPB1')")
PP_REVOKED=$(psql_q "SELECT prepaid.pay_link('PPB2')")
psql_q "SELECT prepaid.revoke_pay_link('PPB2', 'test')" >/dev/null
PP_WRONG=$BASE/p/$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' | head -c 43)

export PAYSIGN KEYS LIB_TMP CHROMIUM CHROMEDRIVER PP_URL PP_REVOKED PP_WRONG PP_CASHIER_PORT
export PP_ALI=$BASE/pay/alipay
rc=0
timeout 180 "$PY" "$top_srcdir/tests/it/paypage_browser.py" || rc=$?
[ "$rc" = 77 ] && skip "Chromium could not start"
[ "$rc" = 0 ] || fail "the browser test failed ($rc)"

assert_eq "paid|50.00" "$(psql_q "SELECT state, amount FROM prepaid.orders WHERE meter_id = 'PPB1'")" \
    "the order paid in the browser"
assert_eq 37.66 "$(psql_q "SELECT balance FROM prepaid.balances WHERE meter_id = 'PPB1'")" \
    "PPB1's balance"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.restores WHERE meter_id = 'PPB1'
    AND state IN ('pending', 'armed')")" "PPB1 re-armed for the occupant's button"
daemon_stop
echo "PASS"
