#!/usr/bin/env bash
#
# tests/it/payout.sh: prepaidd's calls to the providers, against
# tests/fakepay (fake WeChat Pay v3 and Alipay servers on loopback that
# check the merchant's signature as the providers do and sign their
# answers) and a real PostgreSQL. Proves that an order paid at the
# provider whose notification is lost is found by a query and credited
# once, and that the notification arriving afterwards is a duplicate
# (WeChat and Alipay); that a query that times out, or whose answer does
# not verify, credits nothing and is tried again; that an expired order is
# closed at the provider and here, and a payment arriving for it afterwards
# is held as disputed; that a refund larger than the balance is refused
# before anything is sent; that a confirmed refund debits the balance once,
# and asking again with the same number debits nothing more (WeChat and
# Alipay), asked for and audited with a finance login, and that a refund still processing
# is debited once its query or its WeChat notification says it succeeded;
# that ACQ.SYSTEM_ERROR and 429 answers are asked again; that -n checks the
# merchant key and a reload naming a bad one keeps the key in use; that
# orders are created at the providers as the pay page will (every channel,
# idempotent); that the pay page itself makes its orders there (Alipay WAP
# to a signed URL the fake gateway accepts, paid and credited; WeChat
# Native's code_url shown; H5 with the client's address and the result page
# as redirect_url; JSAPI through the fake's authorize page, the code
# exchanged for the openid with the AppSecret; a refused code the busy page;
# JSAPI without the AppSecret not available); and that the
# daily bills are downloaded (WeChat CSV checked by its SHA-1, Alipay ZIP of
# GBK CSVs) and a payment missing here, one credited here missing from the
# bill and one whose amount differs are in the discrepancy view, with an
# alert.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pay_keys
FAKEPAY=$top_builddir/tests/fakepay
[ -x "$FAKEPAY" ] || fail "$FAKEPAY is not built (make check builds it)"
command -v openssl >/dev/null || skip "no openssl command"

# The merchant's keys: the daemon signs with the private halves, the fake
# verifies with the public ones. The fake signs its answers with the keys
# paysign made (the daemon verifies them as it verifies notifications).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEYS/merchant.key" 2>/dev/null
openssl pkey -in "$KEYS/merchant.key" -pubout -out "$KEYS/wx_merchant.pub"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEYS/app.key" 2>/dev/null
openssl pkey -in "$KEYS/app.key" -pubout -out "$KEYS/ali_app.pub"
MSERIAL=3775B6A45ACD588826D15E583A95F5DD00000001
# The Official Account's AppSecret, for the pay page's openid step: the
# fake reads it at start, the daemon from its file.
WX_SECRET=fakeAppSecret0123456789abcdef012
(umask 077 && echo "$WX_SECRET" >"$KEYS/wx_app.secret")

FP_PORT=$(free_port)
FP_LOG=$LIB_TMP/fakepay.log
$LIB_SETSID "$FAKEPAY" "$FP_PORT" "$KEYS" "$FP_LOG" "$MSERIAL" >"$LIB_TMP/fakepay.out" 2>&1 &
LIB_PIDS+=("$!")
deadline=$(($(lib_now_ms) + 10000))
until grep -q "listening on $FP_PORT" "$LIB_TMP/fakepay.out"; do
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "fakepay did not start: $(cat "$LIB_TMP/fakepay.out")"
	sleep 0.1
done
FP=http://127.0.0.1:$FP_PORT
fake()
{
	curl -sS -X "${2:-POST}" "$FP$1"
}

pg_start
broker_start
PAYOUT_CONF=(
	"${PAY_KEYS_CONF[@]}"
	payments.wechat_merchant_key_file="$KEYS/merchant.key"
	payments.wechat_merchant_serial="$MSERIAL"
	payments.wechat_api_url="$FP"
	payments.wechat_notify_url=https://pay.example.com/pay/wechat
	payments.alipay_app_key_file="$KEYS/app.key"
	payments.alipay_gateway_url="$FP/gateway.do"
	payments.alipay_notify_url=https://pay.example.com/pay/alipay
	payments.api_timeout_ms=1500
	payments.query_after="1 2 3 4 5 6"
	payments.query_retry_s=2
	payments.query_poll_s=1
	payments.notify_occupant=false
	payments.reconcile_at=00:00
)
daemon_config "${PAYOUT_CONF[@]}"
"$top_builddir/prepaidd" -n -c "$CONF" >/dev/null || fail "prepaidd -n refused the config"
daemon_migrate
daemon_start
WX=http://127.0.0.1:$HTTP_PORT/pay/wechat
ALI=http://127.0.0.1:$HTTP_PORT/pay/alipay

psql_q "SELECT prepaid.register_meter('PO1'); SELECT prepaid.register_meter('PO2');" >/dev/null
# Finance staff ask for refunds and reconciliations with their own login
# (prepaid_finance only); the functions run as the owner and record it.
psql_q "CREATE ROLE fin_zhou LOGIN IN ROLE prepaid_finance" >/dev/null
psql_fin()
{
	"$PG_BINDIR/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 \
	    -p "$PG_PORT" -U fin_zhou -d prepaid -c "$1"
}
balance()
{
	psql_q "SELECT round(balance, 2) FROM prepaid.meters WHERE meter_id = '$1'"
}
order()
{
	psql_q "SELECT prepaid.create_order('$1', $2, '$3'${4:+, interval '$4'})"
}
json_field()
{
	python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

note "WeChat: paid, notification lost -> the query credits once; the late notification is a duplicate"
o1=$(order PO1 50.00 wechat)
txn1=$(fake "/_fake/pay?provider=wechat&out_trade_no=$o1&fen=5000" | json_field txn)
wait_until "SELECT count(*) = 1 FROM prepaid.payments WHERE out_trade_no = '$o1'
    AND state = 'credited' AND provider_txn = '$txn1' AND amount_fen = 5000" 15 \
    "the query found the payment and credited it"
assert_eq "50.00" "$(balance PO1)" "PO1 balance after the query's credit"
assert_eq paid "$(psql_q "SELECT state FROM prepaid.orders WHERE out_trade_no = '$o1'")" "order paid"
"$PAYSIGN" wechat "$WX" --keys "$KEYS" --serial "$WX_SERIAL" --out-trade-no "$o1" \
    --transaction-id "$txn1" --total 5000 --expect 204 >/dev/null ||
    fail "the late notification was not answered 204"
assert_eq 1 "$(daemon_metric payments_duplicate_total)" "the late notification counted a duplicate"
assert_eq "50.00" "$(balance PO1)" "PO1 credited once"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.ledger WHERE meter_id = 'PO1' AND kind = 'payment'")" \
    "one ledger credit"
grep -q "^GET /v3/pay/transactions/out-trade-no/$o1?mchid=1900000001 -> 200 SUCCESS" "$FP_LOG" ||
    fail "the fake never answered a signed query for $o1: $(cat "$FP_LOG")"

note "Alipay: paid, notification lost -> the query credits once; the late notification is a duplicate"
o2=$(order PO2 20.00 alipay)
fake "/_fake/order?provider=alipay&out_trade_no=$o2&fen=2000" >/dev/null
wait_until "SELECT provider_state = 'WAIT_BUYER_PAY' AND queries >= 1 FROM prepaid.orders
    WHERE out_trade_no = '$o2'" 15 "queried on the ladder: not paid yet"
txn2=$(fake "/_fake/pay?provider=alipay&out_trade_no=$o2" | json_field txn)
wait_until "SELECT count(*) = 1 FROM prepaid.payments WHERE out_trade_no = '$o2'
    AND state = 'credited' AND provider_txn = '$txn2' AND amount_fen = 2000" 15 \
    "the Alipay query found the payment and credited it"
out=$("$PAYSIGN" alipay "$ALI" --keys "$KEYS" --out-trade-no "$o2" --trade-no "$txn2" \
    --total 20.00 --expect 200)
echo "$out" | grep -q 'body=success' || fail "late Alipay notification not answered success: $out"
assert_eq 2 "$(daemon_metric payments_duplicate_total)" "the late Alipay notification is a duplicate"
assert_eq "20.00" "$(balance PO2)" "PO2 credited once"

note "a query that times out, then one not signed by WeChat Pay, credit nothing; the next credits"
o3=$(order PO1 7.77 wechat)
fake "/_fake/order?provider=wechat&out_trade_no=$o3&fen=777" >/dev/null
fake "/_fake/pay?provider=wechat&out_trade_no=$o3" >/dev/null
fake "/_fake/fault?mode=timeout&count=1" >/dev/null
wait_log "payout: wechat query $o3: .*(Timeout|timed out)" 1 15
fake "/_fake/fault?mode=badsig&count=-1" >/dev/null
wait_log "payout: wechat query $o3: answer 200 not believed" 1 15
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.payments WHERE out_trade_no = '$o3'")" \
    "nothing recorded from an unverified answer"
fake "/_fake/fault?mode=none" >/dev/null
wait_until "SELECT count(*) = 1 FROM prepaid.payments WHERE out_trade_no = '$o3'
    AND state = 'credited'" 15 "credited once the answers verify"
assert_eq "57.77" "$(balance PO1)" "PO1 balance after 7.77"

note "Alipay answering ACQ.SYSTEM_ERROR, then HTTP 429: nothing recorded, asked again, credited once"
o13=$(order PO2 1.11 alipay)
fake "/_fake/order?provider=alipay&out_trade_no=$o13&fen=111" >/dev/null
fake "/_fake/pay?provider=alipay&out_trade_no=$o13" >/dev/null
fake "/_fake/fault?mode=500&count=1" >/dev/null
wait_log "payout: alipay query $o13: 40004 ACQ.SYSTEM_ERROR \(asked again later\)" 1 15
fake "/_fake/fault?mode=429&count=1" >/dev/null
wait_log "payout: alipay query $o13: answer not believed: HTTP 429" 1 15
wait_until "SELECT count(*) = 1 FROM prepaid.payments WHERE out_trade_no = '$o13'
    AND state = 'credited' AND amount_fen = 111" 15 "credited once the provider answers"
assert_eq "21.11" "$(balance PO2)" "PO2 balance after 1.11"

note "the merchant key: checked by -n, never logged; a reload naming a bad one keeps it in use"
daemon_config "${PAYOUT_CONF[@]}" payments.wechat_merchant_key_file="$KEYS/apiv3.key"
out=$("$top_builddir/prepaidd" -n -c "$CONF" 2>&1) && fail "-n accepted a bad merchant key"
echo "$out" | grep -q "^$CONF:[0-9]*: payments.wechat_merchant_key_file: .*no PEM private key" ||
    fail "-n did not name the key and its line: $out"
echo "ok - -n names the file, line and key: $out"
cp "$KEYS/app.key" "$KEYS/app-open.key"
chmod 0644 "$KEYS/app-open.key"
daemon_config "${PAYOUT_CONF[@]}" payments.alipay_app_key_file="$KEYS/app-open.key"
out=$("$top_builddir/prepaidd" -n -c "$CONF" 2>&1) && fail "-n accepted an app key readable by everyone"
echo "$out" | grep -q "^$CONF:[0-9]*: payments.alipay_app_key_file: .*readable by everyone" ||
    fail "-n did not refuse the open app key by name: $out"
echo "ok - an Alipay app key readable by everyone is refused: $out"
daemon_config "${PAYOUT_CONF[@]}" payments.wechat_merchant_key_file="$KEYS/apiv3.key"
from=$(daemon_log_lines)
daemon_reload
wait_log "payout: .*wechat_merchant_key_file.*previous keys stay in use" "$from" 10
o14=$(order PO1 0.50 wechat)
fake "/_fake/order?provider=wechat&out_trade_no=$o14&fen=50" >/dev/null
fake "/_fake/pay?provider=wechat&out_trade_no=$o14" >/dev/null
wait_until "SELECT count(*) = 1 FROM prepaid.payments WHERE out_trade_no = '$o14'
    AND state = 'credited'" 15 "queries still signed with the key in use"
daemon_config "${PAYOUT_CONF[@]}"
from=$(daemon_log_lines)
daemon_reload
wait_log "reload: configuration .* applied" "$from" 10
assert_eq "58.27" "$(balance PO1)" "PO1 balance after 0.50"

note "an expired order is closed at the provider and here; a payment arriving later is held"
o4=$(order PO1 9.00 wechat '2 seconds')
fake "/_fake/order?provider=wechat&out_trade_no=$o4&fen=900" >/dev/null
o5=$(order PO2 9.00 alipay '2 seconds')
fake "/_fake/order?provider=alipay&out_trade_no=$o5&fen=900" >/dev/null
wait_until "SELECT count(*) = 2 FROM prepaid.orders WHERE out_trade_no IN ('$o4', '$o5')
    AND state = 'expired' AND closed_at IS NOT NULL" 20 "both expired orders closed here"
orders=$(fake /_fake/orders GET)
python3 - "$orders" "$o4" "$o5" <<'EOF' || fail "the fake did not close both orders: $orders"
import json, sys
got = {o["out_trade_no"]: o for o in json.loads(sys.argv[1])}
for otn, state in ((sys.argv[2], "CLOSED"), (sys.argv[3], "TRADE_CLOSED")):
    assert got[otn]["state"] == state and got[otn]["closes"] >= 1, got[otn]
EOF
echo "ok - closed at WeChat Pay (CLOSED) and Alipay (TRADE_CLOSED)"
"$PAYSIGN" wechat "$WX" --keys "$KEYS" --serial "$WX_SERIAL" --out-trade-no "$o4" \
    --transaction-id 4200000000000000000099 --total 900 --expect 204 >/dev/null
assert_eq disputed "$(psql_q "SELECT state FROM prepaid.payments
    WHERE provider_txn = '4200000000000000000099'")" "a payment for an order closed here is held"
assert_eq "58.27" "$(balance PO1)" "nothing credited for the closed order"

note "refunds: larger than the balance refused before sending; confirmed -> debited once"
err=$(psql_q "SELECT prepaid.refund('$o2', 25.00, 'RF00000001', 'too much')" 2>&1) &&
    fail "a refund larger than the payment was accepted"
echo "$err" | grep -q "more than the 20.00 yuan left" || fail "unexpected refusal: $err"
psql_q "SELECT prepaid.adjust('PO2', -15.00, 'test: use')" >/dev/null
err=$(psql_q "SELECT prepaid.refund('$o2', 6.50, 'RF00000001', 'too much')" 2>&1) &&
    fail "a refund larger than the balance was accepted"
echo "$err" | grep -q "larger than the balance of meter PO2" || fail "unexpected refusal: $err"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.refunds")" "no refund row for a refusal"
sleep 1.5
assert_eq 0 "$(grep -c "alipay.trade.refund\|/v3/refund" "$FP_LOG" || true)" \
    "nothing sent to a provider for a refused refund"

assert_eq queued "$(psql_fin "SELECT prepaid.refund('$o1', 10.00, 'RF00000002', 'moved out')")" \
    "WeChat refund queued (by a finance login)"
wait_until "SELECT state = 'refunded' FROM prepaid.refunds WHERE refund_no = 'RF00000002'" 15 \
    "WeChat confirmed the refund"
assert_eq "48.27" "$(balance PO1)" "PO1 debited 10.00 once confirmed"
assert_eq refunded "$(psql_q "SELECT prepaid.refund('$o1', 10.00, 'RF00000002', 'moved out')")" \
    "the same refund number again: already refunded"
sleep 2
assert_eq "48.27" "$(balance PO1)" "PO1 debited once"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.ledger WHERE reference = 'refund:RF00000002'")" \
    "one ledger debit"
err=$(psql_q "SELECT prepaid.refund('$o1', 11.00, 'RF00000002')" 2>&1) &&
    fail "the same refund number with another amount was accepted"
assert_eq "fin_zhou|fin_zhou" "$(psql_q "SELECT a.actor || '|' || r.requested_by
    FROM prepaid.operator_audit a JOIN prepaid.refunds r ON r.refund_no = a.detail->>'refund_no'
    WHERE a.action = 'refund' AND r.refund_no = 'RF00000002'")" \
    "audited and requested by the finance login (session_user, not the owner)"

note "a WeChat refund still processing is asked about again, debited only once it succeeds"
fake "/_fake/refund_mode?mode=processing" >/dev/null
assert_eq queued "$(psql_q "SELECT prepaid.refund('$o3', 1.00, 'RF00000004')")" "refund queued"
wait_until "SELECT state = 'processing' FROM prepaid.refunds WHERE refund_no = 'RF00000004'" 15 \
    "accepted by WeChat Pay, still processing"
assert_eq "48.27" "$(balance PO1)" "nothing debited while processing"
fake "/_fake/refund_done?provider=wechat&no=RF00000004" >/dev/null
wait_until "SELECT state = 'refunded' AND provider_state = 'SUCCESS' FROM prepaid.refunds
    WHERE refund_no = 'RF00000004'" 15 "the refund query found it done"
assert_eq "47.27" "$(balance PO1)" "debited 1.00 once it succeeded"
grep -q "^GET /v3/refund/domestic/refunds/RF00000004 -> 200 SUCCESS" "$FP_LOG" ||
    fail "the daemon never queried the refund"
fake "/_fake/refund_mode?mode=success" >/dev/null

note "a WeChat REFUND.SUCCESS notification confirms a refund still processing: debited once"
fake "/_fake/refund_mode?mode=processing" >/dev/null
assert_eq queued "$(psql_q "SELECT prepaid.refund('$o1', 2.00, 'RF00000005')")" "refund queued"
wait_until "SELECT state = 'processing' FROM prepaid.refunds WHERE refund_no = 'RF00000005'" 15 \
    "accepted by WeChat Pay, still processing"
assert_eq '{"status":204}' "$(fake "/_fake/refund_notify?no=RF00000005&url=$WX")" \
    "the refund notification answered 204"
wait_until "SELECT state = 'refunded' AND provider_state = 'REFUND.SUCCESS' FROM prepaid.refunds
    WHERE refund_no = 'RF00000005'" 10 "confirmed by the notification"
assert_eq "45.27" "$(balance PO1)" "debited 2.00"
assert_eq '{"status":204}' "$(fake "/_fake/refund_notify?no=RF00000005&url=$WX")" \
    "the notification again answered 204"
sleep 2.5 # the refund query would find it done too
assert_eq "45.27" "$(balance PO1)" "debited once"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.ledger WHERE reference = 'refund:RF00000005'")" \
    "one ledger debit"
fake "/_fake/refund_mode?mode=success" >/dev/null

assert_eq queued "$(psql_q "SELECT prepaid.refund('$o2', 5.00, 'RF00000003')")" "Alipay refund queued"
wait_until "SELECT state = 'refunded' FROM prepaid.refunds WHERE refund_no = 'RF00000003'" 15 \
    "Alipay confirmed the refund"
assert_eq "1.11" "$(balance PO2)" "PO2 debited 5.00"
refunds=$(fake /_fake/refunds GET)
assert_eq 4 "$(echo "$refunds" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" \
    "the providers refunded four times in all, once per refund number"

note "orders at the providers, as the pay page creates them (payout_create_order)"
PAYORDER=$top_builddir/tests/payorder
porder()
{
	local otn=$2
	PAYORDER_EXPIRES_AT=$(psql_q "SELECT extract(epoch FROM expires_at)::bigint
	    FROM prepaid.orders WHERE out_trade_no = '$otn'") "$PAYORDER" "$CONF" "$@"
}
o6=$(order PO1 12.34 wechat)
r=$(porder native "$o6" 1234) || fail "native order: $r"
assert_eq "weixin://wxpay/bizpayurl?pr=$o6" "$(echo "$r" | json_field code_url)" "Native: code_url"
r2=$(porder native "$o6" 1234) || fail "native order again: $r2"
assert_eq "$r" "$r2" "the same order again: the same code_url (idempotent on out_trade_no)"
r=$(porder native "$o6" 1300) && fail "the same out_trade_no with another amount was accepted: $r"
echo "$r" | grep -q OUT_TRADE_NO_USED || fail "not OUT_TRADE_NO_USED: $r"
echo "ok - the same out_trade_no with another amount: OUT_TRADE_NO_USED"
o7=$(order PO1 1.00 wechat)
r=$(porder jsapi "$o7" 100) && fail "a JSAPI order without openid was sent: $r"
r=$(porder jsapi "$o7" 100 oUpF8uMuAJO_M2pxb1Q9zNjWeS6o) || fail "jsapi order: $r"
assert_eq "wx$o7" "$(echo "$r" | json_field prepay_id)" "JSAPI: prepay_id"
echo "$r" | python3 -c '
import json, sys
j = json.load(sys.stdin)["jsapi"]
assert j["appId"] == "wxd678efh567hg6787" and j["signType"] == "RSA", j
assert j["package"] == "prepay_id=wx" + sys.argv[3], j
open(sys.argv[1], "w").write("%s\n%s\n%s\n%s\n" % (j["appId"], j["timeStamp"], j["nonceStr"], j["package"]))
open(sys.argv[2], "w").write(j["paySign"])
' "$LIB_TMP/jsapi.msg" "$LIB_TMP/jsapi.sig" "$o7"
base64 -d "$LIB_TMP/jsapi.sig" >"$LIB_TMP/jsapi.bin"
openssl dgst -sha256 -verify "$KEYS/wx_merchant.pub" -signature "$LIB_TMP/jsapi.bin" \
    "$LIB_TMP/jsapi.msg" >/dev/null || fail "paySign does not verify with the merchant key"
echo "ok - JSAPI page parameters signed with the merchant key (openssl verifies)"
o8=$(order PO1 2.00 wechat)
r=$(porder h5 "$o8" 200 203.0.113.9) || fail "h5 order: $r"
echo "$r" | json_field h5_url | grep -q "^https://wx.tenpay.com/.*prepay_id=wx$o8" ||
    fail "H5: no h5_url: $r"
echo "ok - H5: h5_url"
o9=$(order PO2 3.00 alipay)
r=$(porder precreate "$o9" 300) || fail "precreate: $r"
assert_eq "https://qr.alipay.com/fake" "$(echo "$r" | json_field qr_code)" "Alipay precreate: qr_code"
o10=$(order PO2 4.56 alipay)
r=$(porder wap "$o10" 456 https://pay.example.com/done) || fail "wap: $r"
url=$(echo "$r" | json_field pay_url)
case "$url" in "$FP/gateway.do?"*) ;; *) fail "WAP URL not at the gateway: $url" ;; esac
page=$(curl -sS "$url")
echo "$page" | grep -q "Pay 4.56 for $o10" || fail "the fake gateway did not accept the WAP URL: $page"
echo "ok - Alipay WAP: a signed URL the gateway accepts"
page=$(curl -sS "${url/total_amount%22%3A%224.56/total_amount%22%3A%220.01}")
echo "$page" | grep -q "isv.invalid-signature" || fail "a tampered WAP URL was accepted: $page"
echo "ok - a tampered WAP URL is refused by the gateway"
orders=$(fake /_fake/orders GET)
python3 - "$orders" "$o6" "$o7" "$o8" "$o9" "$o10" <<'PYEOF' || fail "the fake's orders: $orders"
import json, sys
got = {o["out_trade_no"]: o for o in json.loads(sys.argv[1])}
want = dict(zip(sys.argv[2:], ["native", "jsapi", "h5", "precreate", "wap"]))
for otn, kind in want.items():
    assert got[otn]["kind"] == kind, (otn, got.get(otn))
assert got[sys.argv[2]]["fen"] == 1234
PYEOF
echo "ok - the providers hold one order each, of its channel"

note "the daily run at reconcile_at fetched yesterday's bills (empty): nothing differs"
wait_until "SELECT count(*) = 2 FROM prepaid.reconciliations
    WHERE bill_date = (now() AT TIME ZONE 'Asia/Shanghai')::date - 1 AND state = 'done'
      AND bill_rows = 0 AND discrepancies = 0 AND requested_by = '$PG_DAEMON'" 15 \
    "yesterday's WeChat Pay and Alipay bills reconciled"

note "reconciliation: a bill with a payment missing here, one amount differing, one credited here missing"
fake "/_fake/pay?provider=wechat&out_trade_no=PPGHOSTWX00001&fen=999" >/dev/null
fake "/_fake/pay?provider=alipay&out_trade_no=PPGHOSTALI0001&fen=500" >/dev/null
fake "/_fake/amend?provider=wechat&out_trade_no=$o3&bill_fen=770" >/dev/null
o12=$(order PO1 3.00 wechat)
"$PAYSIGN" wechat "$WX" --keys "$KEYS" --serial "$WX_SERIAL" --out-trade-no "$o12" \
    --transaction-id 4200000000000000000777 --total 300 --expect 204 >/dev/null ||
    fail "the notification of $o12 was not answered 204"
today=$(psql_q "SELECT (now() AT TIME ZONE 'Asia/Shanghai')::date")
assert_eq 2 "$(psql_fin "SELECT count(*) FROM prepaid.reconcile('$today')")" \
    "prepaid.reconcile() by a finance login queues today for both providers"
assert_eq "fin_zhou" "$(psql_q "SELECT string_agg(DISTINCT requested_by, ',')
    FROM prepaid.reconciliations WHERE bill_date = '$today'")" "requested by the finance login"
wait_until "SELECT count(*) = 2 FROM prepaid.reconciliations WHERE bill_date = '$today'
    AND state = 'done'" 20 "both bills downloaded and compared"
got=$(psql_q "SELECT string_agg(provider || '|' || kind || '|' || coalesce(out_trade_no, '-') || '|'
    || coalesce(bill_fen::text, '-') || '|' || coalesce(credited_fen::text, '-'), ',' ORDER BY provider, kind)
    FROM prepaid.reconciliation_discrepancies WHERE bill_date = '$today'")
assert_eq "alipay|not_credited|PPGHOSTALI0001|500|-,wechat|amount_differs|$o3|770|777,wechat|not_credited|PPGHOSTWX00001|999|-,wechat|not_in_bill|$o12|-|300" \
    "$got" "the discrepancies, and nothing else"
wait_log "reconciliation [0-9]+: the wechat bill of $today differs from the payments credited in 3 place" 1 10
assert_eq "4|68.19|4|61.27" "$(psql_q "SELECT bill_payments || '|' || bill_amount || '|' ||
    credited_payments || '|' || credited_amount FROM prepaid.reconciliation_totals
    WHERE provider = 'wechat' AND bill_date = '$today'")" \
    "totals: the bill (50.00 + 7.70 + 9.99 + 0.50) next to payments_daily (50.00 + 7.77 + 3.00 + 0.50)"

note "the pay page makes its orders at the providers (the stand-in cashier is not used)"
daemon_stop
PAGE_CONF=(
	"${PAYOUT_CONF[@]}"
	payments.wechat_app_secret_file="$KEYS/wx_app.secret"
	payments.wechat_authorize_url="$FP/connect/oauth2/authorize"
	payments.wechat_oauth_api_url="$FP"
	paypage.path=/p
	paypage.public_url="http://127.0.0.1:$HTTP_PORT"
	paypage.rate_per_minute=6000
	paypage.rate_burst=200
	paypage.stub_handoff_url=http://127.0.0.1:9/cashier
)
daemon_config "${PAGE_CONF[@]}"
daemon_start
link=""
for _ in $(seq 1 50); do
	link=$(psql_q "SELECT prepaid.pay_link('PO2')" 2>/dev/null) && break
	sleep 0.2
done
[ -n "$link" ] || fail "no pay link for PO2"
page()
{
	# page URL [curl options]: the status; body and headers in $LIB_TMP
	local url=$1
	shift
	curl -s -o "$LIB_TMP/page" -D "$LIB_TMP/page.h" -w '%{http_code}' -H 'Accept-Language: en' \
	    "$@" "$url"
}
location()
{
	sed -n 's/^Location: //Ip' "$LIB_TMP/page.h" | tr -d '\r'
}
page_order()
{
	psql_q "SELECT out_trade_no FROM prepaid.orders WHERE meter_id = 'PO2'
	    AND created_by = '$PG_DAEMON' ORDER BY created_at DESC, out_trade_no DESC LIMIT 1"
}
urlenc()
{
	python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"
}
before=$(balance PO2)

assert_eq 303 "$(page "$link/pay" -d 'amount=20.00&via=alipay')" "pay 20 yuan with Alipay"
po1=$(page_order)
loc=$(location)
case "$loc" in "$FP/gateway.do?"*) ;; *) fail "Alipay WAP: not sent to the gateway: $loc" ;; esac
python3 - "$loc" "$link/result/$po1" "$po1" <<'PYEOF' || fail "the WAP URL: $loc"
import json, sys, urllib.parse
q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(sys.argv[1]).query))
assert q["method"] == "alipay.trade.wap.pay", q
assert q["return_url"] == sys.argv[2], (q["return_url"], sys.argv[2])
biz = json.loads(q["biz_content"])
assert biz["out_trade_no"] == sys.argv[3] and biz["total_amount"] == "20.00", biz
PYEOF
curl -sS "$loc" >"$LIB_TMP/wap"
grep -q "Pay 20.00 for $po1" "$LIB_TMP/wap" ||
    fail "the fake Alipay did not accept the page's WAP URL: $(cat "$LIB_TMP/wap")"
echo "ok - Alipay WAP: the page sends the browser to a signed alipay.trade.wap.pay URL the gateway accepts, returning to the result page"
fake "/_fake/pay?provider=alipay&out_trade_no=$po1" >/dev/null
wait_until "SELECT count(*) = 1 FROM prepaid.payments WHERE out_trade_no = '$po1'
    AND state = 'credited' AND amount_fen = 2000" 15 "the page's Alipay order paid and credited"
assert_eq "$(psql_q "SELECT round($before + 20, 2)")" "$(balance PO2)" "PO2 credited 20.00 once"
assert_eq 200 "$(page "$link/result/$po1")" "the result page"
grep -q 'data-state="paid"' "$LIB_TMP/page" || fail "the result page does not say paid"
echo "ok - the result page shows the order paid"

assert_eq 200 "$(page "$link/pay" -d 'amount=50.00&via=wechat' \
    -A 'Mozilla/5.0 (X11; Linux x86_64) Chrome/120')" "WeChat Pay from a desktop"
po2=$(page_order)
grep -qF "weixin://wxpay/bizpayurl?pr=$po2" "$LIB_TMP/page" ||
    fail "no code_url on the Native page: $(head -c 600 "$LIB_TMP/page")"
grep -q "<svg" "$LIB_TMP/page" || fail "no QR code on the Native page"
echo "ok - WeChat Native: the page shows the provider's code_url ($po2) as a QR code"

assert_eq 303 "$(page "$link/pay" -d 'amount=20.00&via=wechat' \
    -A 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) AppleWebKit Mobile Safari' \
    -H 'X-Forwarded-For: 203.0.113.7')" "WeChat Pay from a phone browser"
po3=$(page_order)
assert_eq "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx$po3&redirect_url=$(urlenc "$link/result/$po3")" \
    "$(location)" "WeChat H5: h5_url with the result page as redirect_url"

assert_eq 303 "$(page "$link/pay" -d 'amount=20.00&via=wechat' \
    -A 'Mozilla/5.0 (iPhone) AppleWebKit Mobile MicroMessenger/8.0.47')" "WeChat Pay inside WeChat"
po4=$(page_order)
assert_eq "$FP/connect/oauth2/authorize?appid=wxd678efh567hg6787&redirect_uri=$(urlenc "$link/wechat")&response_type=code&scope=snsapi_base&state=$po4#wechat_redirect" \
    "$(location)" "JSAPI: first the authorize page (snsapi_base, back to the page, state the order)"
assert_eq 302 "$(page "$(location)")" "the fake authorize page"
back=$(location)
case "$back" in "$link/wechat?code="*"&state=$po4") ;; *) fail "authorize sent back to $back" ;; esac
assert_eq 200 "$(page "$back" -A 'Mozilla/5.0 (iPhone) AppleWebKit Mobile MicroMessenger/8.0.47')" \
    "back from the openid step"
python3 - "$LIB_TMP/page" "$po4" <<'PYEOF' || fail "the JSAPI page: $(head -c 1500 "$LIB_TMP/page")"
import json, re, sys
page = open(sys.argv[1]).read()
m = re.search(r'\{[^{}]*"paySign"[^{}]*\}', page)
assert m, "no getBrandWCPayRequest parameters"
p = json.loads(m.group(0).replace("\\/", "/"))
assert p["appId"] == "wxd678efh567hg6787" and p["package"] == "prepay_id=wx" + sys.argv[2], p
assert p["signType"] == "RSA" and len(p["paySign"]) > 300 and p["timeStamp"] and p["nonceStr"], p
PYEOF
echo "ok - JSAPI: the code exchanged for the openid, the order made, the page carries the signed parameters"
orders=$(fake /_fake/orders GET)
python3 - "$orders" "$po2" "$po3" "$po4" "$po1" "$(sed 's/.*code=\([^&]*\)&.*/\1/' <<<"$back")" \
    <<'PYEOF' || fail "the fake's orders: $orders"
import json, sys
got = {o["out_trade_no"]: o for o in json.loads(sys.argv[1])}
native, h5, jsapi, wap = (got[n] for n in sys.argv[2:6])
assert (native["kind"], native["fen"]) == ("native", 5000), native
assert (h5["kind"], h5["fen"], h5["client_ip"]) == ("h5", 2000, "203.0.113.7"), h5
code_n = int(sys.argv[6].replace("fakecode", ""))
assert (jsapi["kind"], jsapi["openid"]) == ("jsapi", "oFake%06d" % code_n), jsapi
assert (wap["kind"], wap["state"]) == ("wap", "TRADE_SUCCESS"), wap
PYEOF
echo "ok - the fake holds the page's orders: Native 50.00, H5 with the client's address (X-Forwarded-For), JSAPI for the openid of the code, WAP paid"

jsapi_calls=$(grep -c "POST /v3/pay/transactions/jsapi" "$FP_LOG")
assert_eq 502 "$(page "$back" -A 'Mozilla/5.0 (iPhone) AppleWebKit Mobile MicroMessenger/8.0.47')" \
    "the same code again (WeChat: invalid code)"
assert_eq "$jsapi_calls" "$(grep -c "POST /v3/pay/transactions/jsapi" "$FP_LOG")" \
    "JSAPI orders sent after a refused code"
wait_log "payout: pay page order $po4: WeChat's openid step: HTTP 200, errcode 40029 invalid code" 1 5
echo "ok - a code WeChat refuses: the busy page (502), nothing sent to WeChat Pay"

from=$(daemon_log_lines)
daemon_config "${PAGE_CONF[@]}" payments.wechat_app_secret_file=
daemon_reload
wait_log "reload: configuration .* applied" "$from" 10
assert_eq 501 "$(page "$link/pay" -d 'amount=20.00&via=wechat' \
    -A 'Mozilla/5.0 (iPhone) AppleWebKit Mobile MicroMessenger/8.0.47')" \
    "inside WeChat without wechat_app_secret_file"
wait_log "payout: the pay page asked for wechat_jsapi, which is not set up \(payments.wechat_app_secret_file\)" "$from" 5
echo "ok - JSAPI without the AppSecret: not available (501), said in the log"
if grep -q "127.0.0.1:9/cashier" "$FP_LOG" "$LIB_TMP/page.h"; then
	fail "the stand-in cashier was used with providers configured"
fi

note "the merchant key never reaches the log"
if grep -q "PRIVATE KEY\\|WECHATPAY2-SHA256-RSA2048" "$DAEMON_LOG"; then
	fail "a key or an Authorization header in the log"
fi
grep -q "$WX_SECRET" "$DAEMON_LOG" && fail "the AppSecret in the log"
echo "ok - no key material in the log, nor the AppSecret"
daemon_stop
echo "all payout tests passed"
