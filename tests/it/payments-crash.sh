#!/usr/bin/env bash
#
# tests/it/payments-crash.sh: crash safety of crediting. A storm of signed
# WeChat Pay and Alipay callbacks (tests/paysign load, which retries like
# the providers until it gets a success answer) while prepaidd is killed
# with SIGKILL at random moments and restarted each time. Proves that every
# notification that got a success answer was credited exactly once, that
# the ones cut off were credited once when the gateway retried them, that
# no payment was credited twice, and that prepaid.verify_ledger() is empty.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
pay_keys
METERS=${CRASH_METERS:-100}
ORDERS=${CRASH_ORDERS:-1500}
KILLS=${CRASH_KILLS:-8}

pg_start
broker_start
daemon_config "${PAY_KEYS_CONF[@]}"
daemon_migrate
daemon_start

# Meters and one order per notification, alternating providers, amounts in
# odd fen so that a double credit or a lost fen shows in the sums.
psql_q "SELECT count(prepaid.register_meter('CR' || lpad(i::text, 4, '0'))) FROM generate_series(1, $METERS) i" \
    >/dev/null
psql_q "COPY (SELECT CASE WHEN i % 2 = 0 THEN 'wechat' ELSE 'alipay' END,
        prepaid.create_order('CR' || lpad((1 + i % $METERS)::text, 4, '0'), (100 + i) / 100.0,
            CASE WHEN i % 2 = 0 THEN 'wechat' ELSE 'alipay' END, '1 hour'),
        100 + i, 'CR' || lpad((1 + i % $METERS)::text, 4, '0')
    FROM generate_series(1, $ORDERS) i) TO STDOUT WITH (DELIMITER ' ')" >"$LIB_TMP/orders"
assert_eq "$ORDERS" "$(wc -l <"$LIB_TMP/orders")" "orders written"

note "a storm of $ORDERS callbacks, prepaidd killed -9 $KILLS times"
SUCCESS=$LIB_TMP/success.log
$LIB_SETSID "$PAYSIGN" load "http://127.0.0.1:$HTTP_PORT/pay/wechat" \
    "http://127.0.0.1:$HTTP_PORT/pay/alipay" --keys "$KEYS" --serial "$WX_SERIAL" \
    --orders "$LIB_TMP/orders" --rate 150 --concurrency 16 --retry --retry-delay 150 \
    --deadline 120 --success-log "$SUCCESS" >"$LIB_TMP/load.out" 2>&1 &
LOAD_PID=$!
LIB_PIDS+=("$LOAD_PID")
for k in $(seq 1 "$KILLS"); do
	sleep "0.$((RANDOM % 7 + 2))"
	lib_alive "$LOAD_PID" || break
	kill -9 "$DAEMON_PID"
	wait "$DAEMON_PID" 2>/dev/null || true
	DAEMON_PID=
	echo "kill $k after $(wc -l <"$SUCCESS" 2>/dev/null || echo 0) successes"
	daemon_start
done
rc=0
wait "$LOAD_PID" || rc=$?
cat "$LIB_TMP/load.out"
assert_eq 0 "$rc" "every notification eventually answered success"
assert_eq "$ORDERS" "$(sort -u "$SUCCESS" | wc -l)" "success answers logged"

note "every success credited exactly once, nothing twice, the ledger consistent"
"$PG_BINDIR/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d prepaid \
    -c "CREATE TABLE crash_ok (out_trade_no text)" \
    -c "\\copy crash_ok FROM '$SUCCESS'"
assert_eq 0 "$(psql_q "SELECT count(*) FROM crash_ok k
    LEFT JOIN prepaid.payments p ON p.out_trade_no = k.out_trade_no AND p.state = 'credited'
    WHERE p.payment_id IS NULL")" "every success answer has its credited payment"
assert_eq "$ORDERS" "$(psql_q "SELECT count(*) FROM prepaid.ledger WHERE kind = 'payment'")" \
    "one ledger credit per notification"
assert_eq "$ORDERS" "$(psql_q "SELECT count(*) FROM prepaid.orders WHERE state = 'paid'")" \
    "every order paid"
assert_eq 0 "$(psql_q "SELECT count(*) FROM prepaid.payments WHERE state <> 'credited'")" \
    "nothing held or disputed"
expect=$(awk '{ s += $3 } END { printf "%d.%02d", s / 100, s % 100 }' "$LIB_TMP/orders")
assert_eq "$expect" "$(psql_q "SELECT round(sum(balance), 2) FROM prepaid.meters
    WHERE meter_id LIKE 'CR%'")" "the balances add up to the orders, to the fen"
assert_eq "" "$(psql_q "SELECT * FROM prepaid.verify_ledger()")" "verify_ledger() is empty"
daemon_stop
echo "PASS"
