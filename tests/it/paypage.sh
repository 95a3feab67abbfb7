#!/usr/bin/env bash
#
# tests/it/paypage.sh: the occupants' pay page, over loopback HTTP with curl,
# on a real prepaidd and PostgreSQL. Proves that a meter's link, issued from
# SQL, shows that meter's balance to the fen, its use and its power state,
# in English or Chinese by Accept-Language, with the security headers; that
# the link cannot be shown twice; that a wrong, a malformed and a revoked
# token all get the same 404 page, which names no meter; that rotating a
# link ends the old one; that paying creates the order for that meter and
# hands it to the cashier, an amount not offered creating nothing; that
# after the provider's notification the result page shows the payment, the
# new balance and how to restore power; that a token cannot see another
# meter's order; that a client past the rate gets 429 while another does
# not; and that every link action is audited with the database role.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pay_keys

pg_start
broker_start
HTTP_PORT=$(free_port)
BASE=http://127.0.0.1:$HTTP_PORT
CASHIER=http://127.0.0.1:9/cashier
PP_CONF=(
	"${PAY_KEYS_CONF[@]}"
	paypage.path=/p
	paypage.public_url="$BASE"
	paypage.amounts="20 50 100"
	paypage.rate_per_minute=6000
	paypage.rate_burst=200
	paypage.stub_handoff_url="$CASHIER"
)
daemon_config "${PP_CONF[@]}"
daemon_migrate
daemon_start
ALI=$BASE/pay/alipay

psql_q "SELECT prepaid.register_meter(m) FROM unnest(ARRAY['PPM1', 'PPM2', 'PPM3']) m" >/dev/null
psql_q "SELECT prepaid.adjust('PPM1', 12.34, 'test'), prepaid.adjust('PPM2', -12.34, 'test'),
    prepaid.adjust('PPM3', 99, 'test')" >/dev/null
psql_q "UPDATE prepaid.meters SET relay = CASE meter_id WHEN 'PPM2' THEN 'open' ELSE 'closed' END
    WHERE meter_id LIKE 'PPM%'"
# Use on the meter's local days: 1.5 kWh yesterday, 2.25 kWh today
# (charges as ingest writes them; the balance is set above).
psql_q "INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, exact_fen, energy_wh)
    SELECT 'PPM1', (now() AT TIME ZONE 'Asia/Shanghai')::date - d, 'charge', 0, 0, wh
    FROM (VALUES (1, 1500), (0, 1000), (0, 1250)) v(d, wh)"

get()
{
	# get URL [curl options]: prints the status, the body goes to $LIB_TMP/body
	local url=$1
	shift
	curl -s -o "$LIB_TMP/body" -D "$LIB_TMP/headers" -w '%{http_code}' "$@" "$url"
}
body_has()
{
	grep -qF -- "$1" "$LIB_TMP/body" || fail "${2:-page} lacks '$1': $(head -c 600 "$LIB_TMP/body")"
	echo "ok - ${2:-page} shows '$1'"
}
body_lacks()
{
	! grep -qF -- "$1" "$LIB_TMP/body" || fail "${2:-page} shows '$1'"
}

note "links from SQL"
url1=$(psql_q "SELECT prepaid.pay_link('PPM1')")
url2=$(psql_q "SELECT prepaid.pay_link('PPM2')")
url3=$(psql_q "SELECT prepaid.pay_link('PPM3')")
[[ "$url1" =~ ^$BASE/p/[A-Za-z0-9_-]{43}$ ]] || fail "link '$url1' is not $BASE/p/<43 characters>"
echo "ok - a link is the public URL, the path and a 43-character token"
[ "$url1" != "$url2" ] || fail "two meters got the same link"
if psql_q "SELECT prepaid.pay_link('PPM1')" >"$LIB_TMP/again" 2>&1; then
	fail "a second pay_link for the same meter showed a link: $(cat "$LIB_TMP/again")"
fi
grep -q "rotate_pay_link" "$LIB_TMP/again" || fail "the refusal does not say how to rotate"
echo "ok - an active link is not shown twice (only its hash is kept)"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.pay_links
    WHERE position(convert_to('${url1##*/}', 'UTF8') IN token_sha256) > 0")" \
    "no token kept in clear"

note "the page"
assert_eq 200 "$(get "$url1" -H 'Accept-Language: en-US,en;q=0.9')" "GET the link"
body_has 'id="meter">PPM1<'
body_has 'id="balance">&#165;12.34<'
body_has 'Power on'
body_has '<td>Yesterday</td><td>1.50</td>'
body_has '<td>Today</td><td>2.25</td>'
body_has 'value="50.00"'
body_lacks 'PPM2'
grep -qi "^Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'" \
    "$LIB_TMP/headers" || fail "no CSP: $(cat "$LIB_TMP/headers")"
grep -qi '^Cache-Control: no-store' "$LIB_TMP/headers" || fail "balance page may be cached"
grep -qi '^Referrer-Policy: no-referrer' "$LIB_TMP/headers" || fail "no Referrer-Policy"
echo "ok - CSP without scripts, no-store, no-referrer"
assert_eq 200 "$(get "$url1" -H 'Accept-Language: zh-CN,zh;q=0.9,en;q=0.5')" "GET in Chinese"
body_has '余额' "the Chinese page"
body_has '供电正常' "the Chinese page"
assert_eq 200 "$(get "$url2" -H 'Accept-Language: en')" "GET the tripped meter's link"
body_has 'id="balance">-&#165;12.34<'
body_has 'Power off'

note "wrong, malformed and revoked links reveal nothing"
assert_eq 200 "$(get "$url3" -H 'Accept-Language: en')" "PPM3's link works before revocation"
assert_eq t "$(psql_q "SELECT prepaid.revoke_pay_link('PPM3', 'label torn off')")" "revoke"
wrong=$BASE/p/$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' | head -c 43)
assert_eq 404 "$(get "$url3" -H 'Accept-Language: en')" "the revoked link"
cp "$LIB_TMP/body" "$LIB_TMP/revoked"
assert_eq 404 "$(get "$wrong" -H 'Accept-Language: en')" "a wrong token"
cmp -s "$LIB_TMP/body" "$LIB_TMP/revoked" || fail "a wrong token and a revoked one differ"
echo "ok - a wrong token and a revoked one get the same bytes"
for u in "$BASE/p/short" "$BASE/p/${url1##*/}x" "$BASE/p/" "$BASE/p" "$url1/other" \
    "$BASE/p/$(printf '%043d' 0 | tr 0 '%')"; do
	assert_eq 404 "$(get "$u" -H 'Accept-Language: en')" "GET $u"
	cmp -s "$LIB_TMP/body" "$LIB_TMP/revoked" || fail "$u: page differs from the revoked one"
done
for m in PPM1 PPM2 PPM3 99.00 12.34 Balance; do
	grep -qF "$m" "$LIB_TMP/revoked" && fail "the 404 page mentions $m"
done
echo "ok - the 404 page names no meter and no balance"

note "rotation"
old1=$url1
url1=$(psql_q "SELECT prepaid.rotate_pay_link('PPM1', 'new label')")
[ "$url1" != "$old1" ] || fail "rotation kept the token"
assert_eq 404 "$(get "$old1" -H 'Accept-Language: en')" "the link before rotation"
cmp -s "$LIB_TMP/body" "$LIB_TMP/revoked" || fail "the rotated-out link's page differs"
assert_eq 200 "$(get "$url1" -H 'Accept-Language: en')" "the rotated link"
body_has 'id="balance">&#165;12.34<'
assert_eq "pay_link_issue pay_link_issue pay_link_issue pay_link_revoke pay_link_rotate" \
    "$(psql_q "SELECT string_agg(action, ' ' ORDER BY id) FROM prepaid.operator_audit
        WHERE action LIKE 'pay_link%' AND actor = 'postgres'")" "link actions audited with the role"

note "paying"
orders()
{
	psql_q "SELECT count(*) FROM prepaid.orders WHERE meter_id = '$1'"
}
assert_eq 400 "$(get "$url2/pay" -d 'amount=33.00&via=alipay')" "an amount not offered"
assert_eq 400 "$(get "$url2/pay" -d 'amount=50.00&via=paypal')" "a provider not offered"
assert_eq 400 "$(get "$url2/pay" -X POST -H 'Content-Type: application/x-www-form-urlencoded')" \
    "an empty form"
assert_eq 0 "$(orders PPM2)" "orders created by refused posts"
assert_eq 404 "$(get "$wrong/pay" -d 'amount=50.00&via=alipay')" "pay on a wrong token"
assert_eq 404 "$(get "$url3/pay" -d 'amount=50.00&via=alipay')" "pay on a revoked token"
assert_eq 0 "$(orders PPM3)" "orders for the revoked link"
assert_eq 303 "$(get "$url2/pay" -d 'amount=50.00&via=alipay' -H 'Accept-Language: en')" \
    "pay 50 yuan with Alipay"
loc=$(sed -n 's/^Location: //Ip' "$LIB_TMP/headers" | tr -d '\r')
otn=$(psql_q "SELECT out_trade_no FROM prepaid.orders WHERE meter_id = 'PPM2'")
assert_eq "alipay|50.00|pending|$PG_DAEMON" "$(psql_q "SELECT provider, amount, state, created_by
    FROM prepaid.orders WHERE out_trade_no = '$otn'")" "the order, made by the daemon's login"
ret=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' \
    "$url2/result/$otn")
assert_eq "$CASHIER?out_trade_no=$otn&total_amount=50.00&meter=PPM2&channel=alipay_wap&return_url=$ret" \
    "$loc" "handed to the cashier with its return URL"
assert_eq 200 "$(get "$url2/result/$otn" -H 'Accept-Language: en')" "result before payment"
body_has 'data-state="pending"'
body_has 'http-equiv="refresh"'
body_lacks 'id="restore"'

"$PAYSIGN" alipay "$ALI" --keys "$KEYS" --out-trade-no "$otn" --trade-no 2026120722001 \
    --total 50.00 --expect 200 >/dev/null || fail "the Alipay notification was not accepted"
assert_eq 37.66 "$(psql_q "SELECT balance FROM prepaid.balances WHERE meter_id = 'PPM2'")" \
    "balance after paying 50.00"
assert_eq 200 "$(get "$url2/result/$otn" -H 'Accept-Language: en')" "result after payment"
body_has 'data-state="paid"'
body_has 'id="balance">&#165;37.66<'
body_has 'Hold the button on the meter for more than 10 seconds, or insert the IC card and press the button three times.'
assert_eq 200 "$(get "$url2/result/$otn" -H 'Accept-Language: zh')" "the result in Chinese"
body_has '长按电表上的按钮 10 秒以上' "the Chinese result"
assert_eq 200 "$(get "$url2" -H 'Accept-Language: en')" "the meter page after payment"
body_has 'id="restore"'
assert_eq 404 "$(get "$url1/result/$otn")" "PPM1's link asking for PPM2's order"
cmp -s "$LIB_TMP/body" "$LIB_TMP/revoked" || true
body_lacks 'PPM2'
assert_eq 404 "$(get "$url3/result/$otn" -H 'Accept-Language: en')" "the revoked link's result"

note "WeChat: the channel by browser, and back from the openid step"
assert_eq 303 "$(get "$url1/pay" -d 'amount=20.00&via=wechat' \
    -A 'Mozilla/5.0 (X11; Linux x86_64) Chrome/120')" "WeChat Pay from a desktop"
grep -q 'channel=wechat_native&' "$LIB_TMP/headers" || fail "a desktop is not sent to Native"
echo "ok - a desktop pays WeChat Native (a code to scan)"
assert_eq 303 "$(get "$url1/pay" -d 'amount=20.00&via=wechat' \
    -A 'Mozilla/5.0 (iPhone) AppleWebKit Mobile MicroMessenger/8.0.47')" "WeChat Pay inside WeChat"
grep -q 'channel=wechat_jsapi&' "$LIB_TMP/headers" || fail "inside WeChat is not JSAPI"
echo "ok - inside WeChat pays JSAPI"
otn1=$(psql_q "SELECT out_trade_no FROM prepaid.orders WHERE meter_id = 'PPM1'
    ORDER BY created_at DESC LIMIT 1")
assert_eq 303 "$(get "$url1/wechat?code=0a1B2c3D&state=$otn1")" "back from the openid step"
grep -q "channel=wechat_jsapi&.*&oauth_code=0a1B2c3D" "$LIB_TMP/headers" ||
    fail "the code did not reach the provider: $(grep -i location "$LIB_TMP/headers")"
echo "ok - WeChat's code goes to the provider with the order"
assert_eq 404 "$(get "$url1/wechat?code=0a1B2c3D&state=$otn")" "the openid step with another meter's order"
assert_eq 404 "$(get "$url1/wechat?state=$otn1")" "the openid step without a code"
assert_eq 303 "$(get "$url2/wechat?code=x&state=$otn")" "the openid step for a paid order"
grep -q "^Location: /p/${url2##*/}/result/$otn" "$LIB_TMP/headers" ||
    fail "a paid order's openid step does not show its result"
echo "ok - a paid order's openid step shows its result"

note "rate limit per client address"
daemon_config "${PP_CONF[@]}" paypage.rate_per_minute=60 paypage.rate_burst=5
daemon_reload
wait_log "reload: configuration .* applied" 10
codes=""
for i in $(seq 1 10); do
	codes="$codes $(get "$url1" -H 'X-Forwarded-For: 10.9.9.9')"
done
n429=$(echo "$codes" | tr ' ' '\n' | grep -c 429 || true)
[ "$n429" -ge 4 ] || fail "10 requests at once past a burst of 5 got:$codes"
echo "ok - a client past its burst gets 429 ($codes )"
grep -qi '^Retry-After: 60' "$LIB_TMP/headers" || fail "429 without Retry-After"
assert_eq 200 "$(get "$url1" -H 'X-Forwarded-For: 10.9.9.8')" "another client meanwhile"
assert_eq 429 "$(get "$wrong" -H 'X-Forwarded-For: 10.9.9.9')" \
    "wrong tokens count against the client too"

daemon_stop
echo "PASS"
