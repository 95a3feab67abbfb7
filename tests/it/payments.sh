#!/usr/bin/env bash
#
# tests/it/payments.sh: WeChat Pay v3 and Alipay callbacks, signed and
# encrypted by the test's own gateway (tests/paysign, independent of the
# daemon's verifier) and posted to a real prepaidd over loopback HTTP,
# against a real PostgreSQL, mosquitto and simulated meters. Proves that a
# valid WeChat and a valid Alipay payment credit the right meter to the fen
# and re-arm a tripped meter, whose occupant then presses the button: the
# meter is back to normal and the time from payment to restore is recorded;
# that an IC card restores power as the button does; that a meter set to
# automatic restore is closed remotely instead;
# that the same notification 5 times and 50 at once credits once; that
# TRADE_FINISHED after TRADE_SUCCESS credits once, and so does the same
# notification sent to two daemons on one database at once; that refund notices
# credit nothing; that a bad signature, an unknown key serial, a stale
# timestamp, a tampered ciphertext, another merchant's mchid/appid/app_id
# are refused and audited, and a wrong amount, an expired order or an
# unknown order is held for reconciliation, never credited; that an oversize body, too many
# headers, a trickling client, a GET and a query string are refused
# without harm; that with PostgreSQL stopped the answer is 503 and the
# retried notification credits once after it returns; that a payment the
# database refuses is answered 500 and kept in payment_rejects, and
# credited on the retry once the fault is gone; that the public-key
# mode of WeChat Pay verifies; that a platform certificate added on SIGHUP
# verifies and a reload naming a bad key keeps the keys in use; and that
# the operator can apply a held payment by hand.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pay_keys

pg_start
broker_start
PAY_CONF=(
	http.deadline_ms=1500
	http.max_connections=120
	http.max_headers=40
	"${PAY_KEYS_CONF[@]}"
	payments.wechat_appids="wxd678efh567hg6787 wx0000000000000002"
	payments.wechat_public_key_id="$WX_PUBID"
	payments.wechat_public_key_file="$KEYS/wx_pub.pub"
	payments.alipay_seller_id=2088000000000001
	payments.answer_within_ms=2000
)
daemon_config "${PAY_CONF[@]}"
daemon_migrate
daemon_start
WX=http://127.0.0.1:$HTTP_PORT/pay/wechat
ALI=http://127.0.0.1:$HTTP_PORT/pay/alipay

# Meters reading every half second; an armed meter's occupant presses the
# button 1 s after the arm.
sim_bg -n 6 -r 500 --press-delay 1000
wait_until "SELECT count(*) = 6 FROM prepaid.meter_status
    WHERE meter_id LIKE 'SIM%' AND relay = 'closed'" 20 "6 meters reporting, relay closed"

balance()
{
	psql_q "SELECT balance_exact FROM prepaid.balances WHERE meter_id = '$1'"
}
order()
{
	psql_q "SELECT prepaid.create_order('$1', $2, '$3')"
}
wx()
{
	"$PAYSIGN" wechat "$WX" --keys "$KEYS" --serial "$WX_SERIAL" "$@"
}
ali()
{
	"$PAYSIGN" alipay "$ALI" --keys "$KEYS" "$@"
}
credits()
{
	psql_q "SELECT count(*) FROM prepaid.ledger WHERE kind = 'payment' AND meter_id = '$1'"
}

# SIM0001 and SIM0002 are in arrears and tripped.
for m in SIM0001 SIM0002; do
	psql_q "SELECT prepaid.adjust('$m', -30.25, 'test: arrears')" >/dev/null
	t=$(psql_q "SELECT prepaid.trip('$m', 'test: arrears')")
	wait_until "SELECT state = 'acked' FROM prepaid.commands WHERE id = '$t'" 15 "$m tripped"
done
wait_until "SELECT count(*) = 2 FROM prepaid.meter_status
    WHERE meter_id IN ('SIM0001', 'SIM0002') AND relay = 'open'" 10 "two meters open"

note "a valid WeChat payment credits to the fen, re-arms, the button restores power"
psql_q "SELECT prepaid.move_in('SIM0001', 'Wang \"Xiao\" & Co', '+8613800000001',
    'wang@example.com', 'en')" >/dev/null
o1=$(order SIM0001 100.07 wechat)
wx --out-trade-no "$o1" --transaction-id 4200000001 --total 10007 --expect 204 >/dev/null ||
    fail "WeChat payment not answered 204"
assert_eq "69.8200000" "$(balance SIM0001)" "SIM0001 balance after 100.07 on -30.25"
assert_eq "credited|100.07|SIM0001" "$(psql_q "SELECT state || '|' || amount || '|' || meter_id
    FROM prepaid.payment_status WHERE provider_txn = '4200000001'")" "payment row"
assert_eq paid "$(psql_q "SELECT state FROM prepaid.order_status WHERE out_trade_no = '$o1'")" \
    "order state"
wait_until "SELECT state = 'restored' AND cause = 'button' AND paid_to_restored IS NOT NULL
    FROM prepaid.restore_times WHERE meter_id = 'SIM0001'" 15 \
    "SIM0001 armed, button pressed, restore timed"
grep -q "^cmd meter=SIM0001 id=.* action=arm result=ok relay=armed$" "$SIM_LOG" ||
    fail "the meter never received the arm"
wait_until "SELECT relay = 'closed' FROM prepaid.meter_status WHERE meter_id = 'SIM0001'" 10 \
    "SIM0001 back to normal (relay closed)"
psql_q "SELECT 'paid -> restored: ' || paid_to_restored FROM prepaid.restore_times
    WHERE meter_id = 'SIM0001'"
assert_eq "sms|69.82|100.07,email|69.82|100.07" "$(psql_q "SELECT string_agg(channel || '|' ||
    (params->>'balance') || '|' || (params->>'amount'), ',' ORDER BY channel DESC)
    FROM prepaid.messages WHERE meter_id = 'SIM0001' AND template_key = 'payment_received'")" \
    "the occupant's payment-received SMS and e-mail queued"

note "a valid Alipay payment credits to the fen and re-arms"
o2=$(order SIM0002 88.80 alipay)
out=$(ali --out-trade-no "$o2" --trade-no 2026112722001 --total 88.80 --expect 200)
echo "$out" | grep -q 'body=success' || fail "Alipay not answered success: $out"
assert_eq "58.5500000" "$(balance SIM0002)" "SIM0002 balance after 88.80 on -30.25"
wait_until "SELECT state = 'restored' AND cause = 'button' FROM prepaid.restore_times
    WHERE meter_id = 'SIM0002'" 15 "SIM0002 re-armed and restored by the button"

note "a meter set to automatic restore gets a close, not an arm"
psql_q "UPDATE prepaid.meters SET restore_mode = 'close' WHERE meter_id = 'SIM0004'" >/dev/null
psql_q "SELECT prepaid.adjust('SIM0004', -5.00, 'test: arrears')" >/dev/null
t=$(psql_q "SELECT prepaid.trip('SIM0004', 'test: arrears')")
wait_until "SELECT state = 'acked' FROM prepaid.commands WHERE id = '$t'" 15 "SIM0004 tripped"
oc=$(order SIM0004 30.00 wechat)
wx --out-trade-no "$oc" --transaction-id 4200000020 --total 3000 --expect 204 >/dev/null ||
    fail "payment for SIM0004 not answered 204"
wait_until "SELECT action = 'close' AND state = 'restored' AND cause = 'remote'
    FROM prepaid.restore_times WHERE meter_id = 'SIM0004'" 15 "SIM0004 closed remotely"
wait_until "SELECT relay = 'closed' FROM prepaid.meter_status WHERE meter_id = 'SIM0004'" 10 \
    "SIM0004 relay closed without a button press"
assert_eq "25.0000000" "$(balance SIM0004)" "SIM0004 balance -5.00 + 30.00"
psql_q "SELECT prepaid.adjust('SIM0004', -25.00, 'test: back to zero')" >/dev/null

note "a payment below the restore level credits, does not re-arm, and says why"
psql_q "SELECT prepaid.register_meter('LOW0001')" >/dev/null
psql_q "UPDATE prepaid.meters SET relay = 'open' WHERE meter_id = 'LOW0001'" >/dev/null
psql_q "SELECT prepaid.adjust('LOW0001', -30.00, 'test: arrears')" >/dev/null
restore=$(psql_q "SELECT p.restore_level FROM prepaid.meters m JOIN prepaid.sites s USING (site_id)
    JOIN prepaid.policies p ON p.policy_id = coalesce(m.policy_id, s.policy_id)
    WHERE m.meter_id = 'LOW0001'")
ol=$(order LOW0001 10.00 wechat)
wx --out-trade-no "$ol" --transaction-id 4200000099 --total 1000 --expect 204 >/dev/null ||
    fail "payment for LOW0001 not answered 204"
assert_eq "-20.0000000" "$(balance LOW0001)" "LOW0001 credited: -30.00 + 10.00"
assert_eq "credited|below restore level $restore: not re-armed" "$(psql_q "SELECT state || '|' ||
    rearm_note FROM prepaid.payment_status WHERE provider_txn = '4200000099'")" \
    "payment_status says why LOW0001 was not re-armed"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.commands WHERE meter_id = 'LOW0001'
    AND action IN ('arm', 'close')")" "no arm for LOW0001"
wait_log "10.00 yuan credited to meter LOW0001 .*below restore level $restore: not re-armed" 1 5
psql_q "SELECT prepaid.adjust('LOW0001', 20.00, 'test: back to zero')" >/dev/null

note "an IC card and the button restore power too (a meter without a simulator)"
psql_q "SELECT prepaid.register_meter('CARD0001')" >/dev/null
psql_q "UPDATE prepaid.meters SET relay = 'open' WHERE meter_id = 'CARD0001'" >/dev/null
oca=$(order CARD0001 40.00 alipay)
ali --out-trade-no "$oca" --trade-no 2026112722030 --total 40.00 --expect 200 >/dev/null ||
    fail "payment for CARD0001 not answered"
assert_eq "arm|pending" "$(psql_q "SELECT action || '|' || state FROM prepaid.restore_times
    WHERE meter_id = 'CARD0001'")" "CARD0001 re-armed, waiting"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.awaiting_restore WHERE meter_id = 'CARD0001'")" \
    "CARD0001 listed as awaiting its occupant"
# Tripped again before anyone came: the waiting restore is superseded and
# the next payment arms the meter again.
tc=$(psql_q "SELECT prepaid.trip('CARD0001', 'test: tripped again')")
psql_q "UPDATE prepaid.commands SET state = 'acked', acked_at = now(), result = 'ok',
    relay_after = 'open' WHERE id = '$tc'" >/dev/null
assert_eq superseded "$(psql_q "SELECT state FROM prepaid.restore_times WHERE meter_id = 'CARD0001'")" \
    "the waiting restore superseded by the trip"
oca2=$(order CARD0001 1.00 alipay)
ali --out-trade-no "$oca2" --trade-no 2026112722031 --total 1.00 --expect 200 >/dev/null ||
    fail "second payment for CARD0001 not answered"
assert_eq "superseded,pending" "$(psql_q "SELECT string_agg(state, ',' ORDER BY restore_id)
    FROM prepaid.restore_times WHERE meter_id = 'CARD0001'")" "a new arm for the second payment"
pub meters/CARD0001/event "{\"ts\":\"$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)\",\"type\":\"relay\",\"relay\":\"closed\",\"cause\":\"card\"}"
wait_until "SELECT state = 'restored' AND cause = 'card' FROM prepaid.restore_times
    WHERE meter_id = 'CARD0001' ORDER BY restore_id DESC LIMIT 1" 10 \
    "CARD0001 restored with the card"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.awaiting_restore WHERE meter_id = 'CARD0001'")" \
    "CARD0001 no longer awaiting"

note "the same notification 5 times, then 50 at once: one credit each"
o3=$(order SIM0003 10.00 wechat)
wx --out-trade-no "$o3" --transaction-id 4200000003 --total 1000 -n 5 --expect 204 >/dev/null ||
    fail "a repeat was not answered 204"
o4=$(order SIM0003 20.00 wechat)
wx --out-trade-no "$o4" --transaction-id 4200000004 --total 2000 -P 50 --expect 204 >/dev/null ||
    fail "one of 50 concurrent repeats was not answered 204"
o5=$(order SIM0003 5.00 alipay)
ali --out-trade-no "$o5" --trade-no 2026112722005 --total 5.00 -P 50 --expect 200 >/dev/null ||
    fail "one of 50 concurrent Alipay repeats was not answered 200"
assert_eq 3 "$(credits SIM0003)" "three payments credited to SIM0003"
assert_eq "35.0000000" "$(balance SIM0003)" "SIM0003 balance 10 + 20 + 5"

note "two daemons on one database: the same notification to both at once credits once"
daemon2_config mqtt.client_id=prepaidd-test-2 "${PAY_CONF[@]}"
daemon2_start
WX2=http://127.0.0.1:$HTTP2_PORT/pay/wechat
o13=$(order SIM0003 7.77 wechat)
"$PAYSIGN" wechat "$WX" --keys "$KEYS" --serial "$WX_SERIAL" --out-trade-no "$o13" \
    --transaction-id 4200000030 --total 777 -P 20 --expect 204 >"$LIB_TMP/d1.out" &
d1=$!
"$PAYSIGN" wechat "$WX2" --keys "$KEYS" --serial "$WX_SERIAL" --out-trade-no "$o13" \
    --transaction-id 4200000030 --total 777 -P 20 --expect 204 >"$LIB_TMP/d2.out" ||
    fail "the second daemon did not answer 204 to every copy: $(sort "$LIB_TMP/d2.out" | uniq -c)"
wait "$d1" || fail "the first daemon did not answer 204 to every copy"
assert_eq "42.7700000" "$(balance SIM0003)" "SIM0003 credited 7.77 once"
daemon2_stop

note "TRADE_FINISHED after TRADE_SUCCESS credits once"
o6=$(order SIM0004 12.34 alipay)
ali --out-trade-no "$o6" --trade-no 2026112722006 --total 12.34 --trade-status TRADE_SUCCESS \
    --expect 200 >/dev/null || fail "TRADE_SUCCESS refused"
ali --out-trade-no "$o6" --trade-no 2026112722006 --total 12.34 --trade-status TRADE_FINISHED \
    --expect 200 >/dev/null || fail "TRADE_FINISHED refused"
assert_eq "12.3400000" "$(balance SIM0004)" "SIM0004 credited once"

note "an Alipay app set to GBK: the subject in GBK bytes, verified and credited"
og=$(order SIM0004 2.00 alipay)
ali --out-trade-no "$og" --trade-no 2026112722007 --total 2.00 --field charset=gbk \
    --subject "$(printf '\xb5\xe7\xb7\xd1 & \xb3\xe4\xd6\xb5')" --expect 200 >/dev/null ||
    fail "a GBK notification was not acknowledged"
assert_eq "14.3400000" "$(balance SIM0004)" "SIM0004 credited the GBK payment"

note "refund notifications credit nothing"
ali --out-trade-no "$o6" --trade-no 2026112722006 --total 12.34 --trade-status TRADE_SUCCESS \
    --refund-fee 2.00 --expect 200 >/dev/null || fail "partial refund notice not answered"
wx --out-trade-no "$o1" --transaction-id 4200000001 --total 10007 --event-type REFUND.SUCCESS \
    --original-type refund --expect 204 >/dev/null || fail "WeChat refund notice not answered 204"
ali --out-trade-no "$o6" --trade-no 2026112722006 --total 12.34 --trade-status TRADE_CLOSED \
    --expect 200 >/dev/null || fail "TRADE_CLOSED not answered"
assert_eq "14.3400000" "$(balance SIM0004)" "SIM0004 unchanged by the refund"
assert_eq "69.8200000" "$(balance SIM0001)" "SIM0001 unchanged by the refund"
assert_eq 3 "$(psql_q "SELECT count(*) FROM prepaid.payment_notices")" "3 notices recorded"
assert_eq "refund|$o1|4200000001" "$(psql_q "SELECT kind || '|' || out_trade_no || '|' || provider_txn
    FROM prepaid.payment_notices WHERE provider = 'wechat'")" "the WeChat refund notice names its order"

note "forged and misdirected notifications are refused and audited"
o7=$(order SIM0005 50.00 wechat)
refused()
{
	local code=$1
	shift
	out=$("$@" 2>&1) && rc=0 || rc=$?
	echo "$out" | grep -q "status=$code " || fail "expected $code from: $* -- got: $out"
	echo "ok - $code: ${*: -1}"
}
refused 401 wx --out-trade-no "$o7" --transaction-id 4200000007 --total 5000 --bad-sig
refused 401 wx --out-trade-no "$o7" --transaction-id 4200000007 --total 5000 --serial 0123ABCD
refused 401 wx --out-trade-no "$o7" --transaction-id 4200000007 --total 5000 --skew -600
refused 401 wx --out-trade-no "$o7" --transaction-id 4200000007 --total 5000 --skew 600
refused 400 wx --out-trade-no "$o7" --transaction-id 4200000007 --total 5000 --tamper
refused 400 wx --out-trade-no "$o7" --transaction-id 4200000007 --total 5000 --apiv3-wrong
refused 403 wx --out-trade-no "$o7" --transaction-id 4200000007 --total 5000 --mchid 1900000999
refused 403 wx --out-trade-no "$o7" --transaction-id 4200000007 --total 5000 --appid wx999
refused 401 wx --out-trade-no "$o7" --transaction-id 4200000007 --total 5000 \
    --key "$KEYS/other.key"
o8=$(order SIM0005 50.00 alipay)
refused 401 ali --out-trade-no "$o8" --trade-no 2026112722008 --total 50.00 --bad-sig
refused 403 ali --out-trade-no "$o8" --trade-no 2026112722008 --total 50.00 --app-id 2021999
refused 403 ali --out-trade-no "$o8" --trade-no 2026112722008 --total 50.00 --seller-id 2088999
refused 400 ali --out-trade-no "$o8" --trade-no 2026112722008 --total 50.00 --sign-type RSA
assert_eq "0.0000000" "$(balance SIM0005)" "nothing credited to SIM0005"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.payments WHERE meter_id = 'SIM0005'")" \
    "no payment rows for SIM0005"
assert_eq pending "$(psql_q "SELECT state FROM prepaid.order_status WHERE out_trade_no = '$o7'")" \
    "the forged order is still pending"
wait_until "SELECT count(*) = 13 FROM prepaid.payment_rejects" 5 "13 refusals audited"
assert_eq 2 "$(psql_q "SELECT count(*) FROM prepaid.payment_rejects
    WHERE verified AND out_trade_no = '$o7' AND http_status = 403")" \
    "the verified WeChat refusals carry their order"
grep -q "4200000007" "$DAEMON_LOG" || fail "the log does not name the refused transaction"

note "a wrong amount is disputed, an unknown order unmatched: held, not credited"
wx --out-trade-no "$o7" --transaction-id 4200000009 --total 4999 --expect 204 >/dev/null ||
    fail "a verified payment of another amount was not acknowledged"
ali --out-trade-no PPNOSUCHORDER0001 --trade-no 2026112722010 --total 9.99 --expect 200 \
    >/dev/null || fail "a verified payment of an unknown order was not acknowledged"
assert_eq "0.0000000" "$(balance SIM0005)" "nothing credited for the wrong amount"
assert_eq "disputed|SIM0005" "$(psql_q "SELECT state || '|' || meter_id FROM prepaid.payments
    WHERE provider_txn = '4200000009'")" "wrong amount disputed"
assert_eq "unmatched" "$(psql_q "SELECT state FROM prepaid.payments
    WHERE provider_txn = '2026112722010'")" "unknown order unmatched"
oe=$(psql_q "SELECT prepaid.create_order('SIM0005', 1.00, 'alipay', '1 second')")
sleep 1.2
ali --out-trade-no "$oe" --trade-no 2026112722011 --total 1.00 --expect 200 >/dev/null ||
    fail "a verified payment of an expired order was not acknowledged"
assert_eq "disputed|the order expired" "$(psql_q "SELECT state || '|' || left(reason, 17)
    FROM prepaid.payments WHERE provider_txn = '2026112722011'")" "a late payment disputed"
assert_eq "0.0000000" "$(balance SIM0005)" "nothing credited for the expired order"
pid=$(psql_q "SELECT payment_id FROM prepaid.payments WHERE provider_txn = '2026112722011'")
psql_q "SELECT prepaid.apply_payment($pid, NULL, 'paid a little late: fine')" >/dev/null
assert_eq "1.0000000" "$(balance SIM0005)" "applied to the order's meter by hand"
assert_eq 2 "$(psql_q "SELECT count(*) FROM prepaid.payments_unreconciled")" \
    "two payments to reconcile"
note "the operator applies the unmatched payment by hand"
pid=$(psql_q "SELECT payment_id FROM prepaid.payments WHERE provider_txn = '2026112722010'")
psql_q "SELECT prepaid.apply_payment($pid, 'SIM0006', 'occupant sent the receipt')" >/dev/null
assert_eq "9.9900000" "$(balance SIM0006)" "applied to SIM0006"
assert_eq 2 "$(psql_q "SELECT count(*) FROM prepaid.operator_audit WHERE action = 'apply_payment'")" \
    "apply_payment audited"
pid=$(psql_q "SELECT payment_id FROM prepaid.payments WHERE provider_txn = '4200000009'")
assert_eq t "$(psql_q "SELECT prepaid.reject_payment($pid, 'refunded at WeChat Pay')")" \
    "the disputed payment rejected by hand"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.payments_unreconciled")" "nothing left"

note "WeChat Pay public-key mode (PUB_KEY_ID_...) verifies too"
o9=$(order SIM0006 1.00 wechat)
"$PAYSIGN" wechat "$WX" --keys "$KEYS" --wx-pubkey --out-trade-no "$o9" \
    --transaction-id 4200000011 --total 100 --expect 204 >/dev/null ||
    fail "a notification signed with the WeChat Pay public key was refused"
assert_eq "10.9900000" "$(balance SIM0006)" "SIM0006 credited"

note "key rotation: a new platform certificate added on SIGHUP verifies; a bad reload keeps the keys"
KEYS2=$LIB_TMP/keys2
mkdir -p "$KEYS2"
"$PAYSIGN" keys "$KEYS2" >"$LIB_TMP/keys2.out"
WX_SERIAL2=$(sed -n 's/^wx_serial=//p' "$LIB_TMP/keys2.out")
o11=$(order SIM0006 0.50 wechat)
refused 401 "$PAYSIGN" wechat "$WX" --keys "$KEYS" --key "$KEYS2/wx_platform.key" \
    --serial "$WX_SERIAL2" --out-trade-no "$o11" --transaction-id 4200000013 --total 50
daemon_config "${PAY_CONF[@]}" \
    payments.wechat_platform_certs="$KEYS/wx_platform.pem $KEYS2/wx_platform.pem"
from=$(daemon_log_lines)
daemon_reload
wait_log "reload: configuration .* applied" "$from"
"$PAYSIGN" wechat "$WX" --keys "$KEYS" --key "$KEYS2/wx_platform.key" --serial "$WX_SERIAL2" \
    --out-trade-no "$o11" --transaction-id 4200000013 --total 50 --expect 204 >/dev/null ||
    fail "a notification signed with the new platform key was refused after the reload"
echo "ok - the new certificate verifies after SIGHUP"
daemon_config "${PAY_CONF[@]}" \
    payments.wechat_platform_certs="$KEYS/wx_platform.pem $KEYS/apiv3.key"
from=$(daemon_log_lines)
daemon_reload
wait_log "payments: .*wechat_platform_certs.*previous keys stay in use" "$from"
o12=$(order SIM0006 0.25 wechat)
"$PAYSIGN" wechat "$WX" --keys "$KEYS" --key "$KEYS2/wx_platform.key" --serial "$WX_SERIAL2" \
    --out-trade-no "$o12" --transaction-id 4200000014 --total 25 --expect 204 >/dev/null ||
    fail "a reload with a bad key file dropped the keys in use"
echo "ok - a reload naming a bad key keeps the keys in use"
assert_eq "11.7400000" "$(balance SIM0006)" "SIM0006 credited 0.50 + 0.25"
daemon_config "${PAY_CONF[@]}"

note "HTTP hardening: oversize, too many headers, GET, query string, trickling client"
head -c 70000 /dev/zero | tr '\0' a >"$LIB_TMP/big"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary @"$LIB_TMP/big" "$WX")
assert_eq 413 "$code" "oversize body"
hdrs=()
for i in $(seq 1 50); do hdrs+=(-H "X-Filler-$i: $i"); done
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "${hdrs[@]}" "$WX")
assert_eq 431 "$code" "too many header lines"
assert_eq 405 "$(curl -s -o /dev/null -w '%{http_code}' "$WX")" "GET on the callback path"
assert_eq 404 "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "$WX?x=1")" \
    "query string on the callback path"
assert_eq 404 "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' "$WX/")" \
    "a path that is not exact"
assert_eq 405 "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' \
    "http://127.0.0.1:$HTTP_PORT/metrics")" "POST on /metrics"
# A client sending one byte every 0.4 s is cut off at the 1.5 s deadline,
# although it is never idle for longer than the idle timeout.
t0=$(lib_now_ms)
trap '' PIPE
exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT"
for ch in P O S T ' ' / p a y / w e c h a t ' ' H T T P / 1 . 1; do
	printf %s "$ch" >&3 2>/dev/null || break
	sleep 0.4
done
exec 3>&- 3<&- || true
trap - PIPE
t1=$(lib_now_ms)
[ "$(daemon_metric http_refused_deadline_total)" -ge 1 ] ||
    fail "the trickling client was not cut off (after $((t1 - t0)) ms)"
echo "ok - trickling client cut off (metric http_refused_deadline_total)"
# Past the connection cap, connections are closed as they come; those
# within it still work, and everything is back once they are gone.
fds=()
for i in $(seq 1 130); do
	exec {fd}<>"/dev/tcp/127.0.0.1/$HTTP_PORT"
	fds+=("$fd")
done
sleep 0.5
for fd in "${fds[@]}"; do exec {fd}>&-; done
# Closed connections are counted out within the 100 ms sweep.
deadline=$(($(lib_now_ms) + 5000))
until [ "$(daemon_healthz)" = 200 ]; do
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "the listener did not recover after the cap"
	sleep 0.1
done
[ "$(daemon_metric http_refused_cap_total)" -ge 10 ] ||
    fail "130 connections against a cap of 120 were all kept"
echo "ok - connections past the cap closed ($(daemon_metric http_refused_cap_total))"
assert_eq 200 "$(daemon_healthz)" "daemon healthy after the abuse"

note "a payment the database refuses: 500, kept in payment_rejects, credited on the retry"
psql_q "CREATE FUNCTION public.test_refuse() RETURNS trigger LANGUAGE plpgsql AS \$\$
    BEGIN RAISE EXCEPTION 'test: refused by a trigger'; END \$\$;
    CREATE TRIGGER test_refuse BEFORE INSERT ON prepaid.payments
    FOR EACH ROW WHEN (NEW.provider_txn = '4200000040') EXECUTE FUNCTION public.test_refuse()" >/dev/null
o14=$(order SIM0006 3.00 wechat)
refused 500 wx --out-trade-no "$o14" --transaction-id 4200000040 --total 300
wait_until "SELECT count(*) = 1 FROM prepaid.payment_rejects WHERE provider_txn = '4200000040'
    AND verified AND http_status = 500 AND reason LIKE 'recording failed:%refused by a trigger%'
    AND out_trade_no = '$o14' AND amount_fen = 300" 5 "the refused payment kept for the operator"
psql_q "DROP TRIGGER test_refuse ON prepaid.payments" >/dev/null
wx --out-trade-no "$o14" --transaction-id 4200000040 --total 300 --expect 204 >/dev/null ||
    fail "the retry after the fix was not answered 204"

note "a flood of forgeries is refused, counted and only partly written row by row"
r0=$(psql_q "SELECT count(*) FROM prepaid.payment_rejects")
wx --out-trade-no "$o7" --transaction-id 4200000050 --total 5000 --bad-sig -n 400 -P 50 \
    --expect 401 >/dev/null || fail "a forged notification in the flood was not refused"
sleep 0.5
r1=$(psql_q "SELECT count(*) FROM prepaid.payment_rejects")
[ $((r1 - r0)) -lt 400 ] && [ "$(daemon_metric payment_rejects_unaudited_total)" -ge 1 ] ||
    fail "400 forgeries wrote $((r1 - r0)) audit rows"
echo "ok - 400 forgeries: $((r1 - r0)) audit rows, $(daemon_metric payment_rejects_unaudited_total) counted only"
assert_eq 200 "$(daemon_healthz)" "healthy after the flood"

note "PostgreSQL stopped: 503; after it returns the retried notification credits once"
o10=$(order SIM0006 2.00 wechat)
pg_stop
out=$(wx --out-trade-no "$o10" --transaction-id 4200000012 --total 200 2>&1 || true)
echo "$out" | grep -q "status=503 " || fail "with PostgreSQL stopped: $out"
echo "ok - 503 while PostgreSQL is away"
pg_restart
wait_until "SELECT true" 20 "PostgreSQL back"
deadline=$(($(lib_now_ms) + 20000))
until wx --out-trade-no "$o10" --transaction-id 4200000012 --total 200 --expect 204 \
    >/dev/null 2>&1; do
	[ "$(lib_now_ms)" -lt "$deadline" ] || fail "the retried notification never succeeded"
	sleep 0.5
done
wx --out-trade-no "$o10" --transaction-id 4200000012 --total 200 --expect 204 >/dev/null
assert_eq "16.7400000" "$(balance SIM0006)" "credited once after PostgreSQL returned"

note "the daily reconciliation view adds up to the payments"
assert_eq "$(psql_q "SELECT round(sum(amount_fen) / 100.0, 2) FROM prepaid.payments
    WHERE state IN ('credited', 'applied')")" "$(psql_q "SELECT sum(amount)
    FROM prepaid.payments_daily WHERE state IN ('credited', 'applied')")" \
    "payments_daily sums the credited and applied payments"
assert_eq "$(psql_q "SELECT round(sum(amount), 2) FROM prepaid.ledger WHERE kind = 'payment'")" \
    "$(psql_q "SELECT sum(amount) FROM prepaid.payments_daily
    WHERE state IN ('credited', 'applied')")" "and they are what the ledger credited"

note "the ledger is consistent"
assert_eq "" "$(psql_q "SELECT * FROM prepaid.verify_ledger()")" "verify_ledger() is empty"
assert_eq 0 "$(psql_q "SELECT count(*) FROM (SELECT reference FROM prepaid.ledger
    WHERE kind = 'payment' GROUP BY reference HAVING count(*) > 1) d")" "no payment twice"
[ "$(daemon_metric payments_credited_total)" -ge 8 ] || fail "payments_credited_total too low"
[ "$(daemon_metric payment_callback_seconds_count)" -ge 100 ] ||
    fail "the answer-time histogram did not count the callbacks"
echo "ok - callbacks answered: $(daemon_metric payment_callback_seconds_count), $(daemon_metric \
    payment_callback_seconds_sum) s in all"
# The APIv3 key itself, and no private key, ever appear in the log.
if grep -qF "$(cat "$KEYS/apiv3.key")" "$DAEMON_LOG" || grep -q "PRIVATE KEY" "$DAEMON_LOG"; then
	fail "a secret reached the log"
fi
echo "ok - no secret in the log"

note "-n reports an unusable key with its file and line"
daemon_config "${PAY_CONF[@]}" payments.alipay_public_key_file="$KEYS/apiv3.key"
out=$("$top_builddir/prepaidd" -n -c "$CONF" 2>&1) && fail "-n accepted a bad key: $out"
echo "$out" | grep -q "$CONF:[0-9]*: payments.alipay_public_key_file: " ||
    fail "-n did not name the key and line: $out"
echo "ok - $out"
daemon_config "${PAY_CONF[@]}" payments.wechat_public_key_file="$LIB_TMP/missing.pem"
out=$("$top_builddir/prepaidd" -n -c "$CONF" 2>&1) && fail "-n accepted a missing key file"
echo "$out" | grep -q "payments.wechat_public_key_file" || fail "-n: $out"
echo "ok - $out"

daemon_stop
echo "PASS"
