#!/bin/bash
#
# tests/bench/payout-bench.sh: prepaidd's calls to the payment providers
# under load. 200 orders are queried at tests/fakepay every second (the
# query ladder "1 2 ... 10"), each call signed (RSA-2048) and its answer
# verified, with the fake answering 300 ms late so that 200 calls are in
# flight at once, while prepaid-sim publishes readings at READ_RATE/s.
# Prints the calls made, the most in flight at the fake, the readings
# ingested meanwhile and the event loop's lag p99 from /metrics (target
# under 20 ms).
#
# A measurement, not a test: exits 0 unless something broke. Environment:
# BUILD (default _build), ORDERS (default 200), STEPS (ladder steps, 10),
# DELAY_MS (default 300), READ_RATE (default 2500: half of pay-bench's
# reading load).
set -e

top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$top_srcdir/_build}
top_builddir=$(cd "$BUILD" && pwd)
export top_srcdir top_builddir
# shellcheck source=../lib.sh
. "$top_srcdir/tests/lib.sh"

ORDERS=${ORDERS:-200}
STEPS=${STEPS:-10}
DELAY_MS=${DELAY_MS:-300}
READ_RATE=${READ_RATE:-2500}

skip_unless_tools
note "setting up: keys, fakepay, PostgreSQL, broker, prepaidd"
pay_keys
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEYS/merchant.key" 2>/dev/null
openssl pkey -in "$KEYS/merchant.key" -pubout -out "$KEYS/wx_merchant.pub"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEYS/app.key" 2>/dev/null
openssl pkey -in "$KEYS/app.key" -pubout -out "$KEYS/ali_app.pub"
MSERIAL=3775B6A45ACD588826D15E583A95F5DD00000001
FP_PORT=$(free_port)
"$top_builddir/tests/fakepay" "$FP_PORT" "$KEYS" /dev/null "$MSERIAL" >"$LIB_TMP/fakepay.out" 2>&1 &
LIB_PIDS+=("$!")
until grep -q listening "$LIB_TMP/fakepay.out"; do sleep 0.1; done
FP=http://127.0.0.1:$FP_PORT
pg_start
broker_start
ladder=$(seq -s ' ' 1 "$STEPS")
daemon_config "${PAY_KEYS_CONF[@]}" \
	log.level=warning \
	payments.wechat_merchant_key_file="$KEYS/merchant.key" \
	payments.wechat_merchant_serial="$MSERIAL" \
	payments.wechat_api_url="$FP" \
	payments.wechat_notify_url=https://pay.example.com/pay/wechat \
	payments.alipay_app_key_file="$KEYS/app.key" \
	payments.alipay_gateway_url="$FP/gateway.do" \
	payments.alipay_notify_url=https://pay.example.com/pay/alipay \
	payments.query_after="$ladder" \
	payments.query_retry_s=1 \
	payments.query_poll_s=1 \
	payments.reconcile_at=23:59
daemon_migrate
daemon_start

psql_q "SELECT count(prepaid.register_meter('PB' || lpad(i::text, 5, '0')))
    FROM generate_series(1, $ORDERS) i" >/dev/null
sim_bg -n 2000 --load $((READ_RATE * (STEPS + 15))) --rate "$READ_RATE" -q 1 --no-commands
READ_PID=$SIM_PID
sleep 3
curl -s -X POST "$FP/_fake/delay?ms=$DELAY_MS" >/dev/null
psql_q "SELECT count(*) FROM (SELECT prepaid.create_order('PB' || lpad(i::text, 5, '0'), 10,
    CASE WHEN i % 2 = 0 THEN 'wechat' ELSE 'alipay' END, '1 hour')
    FROM generate_series(1, $ORDERS) i) x" >/dev/null
r0=$(daemon_metric readings_inserted_total)
curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics" >"$LIB_TMP/metrics-before"
t0=$(lib_now_ms)
wait_until "SELECT count(*) = $ORDERS FROM prepaid.orders WHERE out_trade_no LIKE 'PP%'
    AND queries = $STEPS" $((STEPS * 4 + 30)) "every order queried $STEPS times"
t1=$(lib_now_ms)
r1=$(daemon_metric readings_inserted_total)
curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics" >"$LIB_TMP/metrics-after"
kill "$READ_PID" 2>/dev/null || true
lag99=$(hist_p99_ms prepaidd_loop_lag_histogram_seconds "$LIB_TMP/metrics-before" \
    "$LIB_TMP/metrics-after")
# The lag histogram between the snapshots, bucket by bucket.
awk 'FNR == 1 { f++ } /^prepaidd_loop_lag_histogram_seconds_bucket/ {
	if (f == 1) b[$1] = $2; else { printf "  lag %-58s %d\n", $1, $2 - b[$1] } }' \
    "$LIB_TMP/metrics-before" "$LIB_TMP/metrics-after"
stats=$(curl -s "$FP/_fake/stats")
calls=$(echo "$stats" | sed 's/.*"calls":\([0-9]*\).*/\1/')
inflight=$(echo "$stats" | sed 's/.*"max_in_flight":\([0-9]*\).*/\1/')

echo
echo "=== provider calls (signed RSA-2048, answers verified; the fake answers ${DELAY_MS} ms late)"
awk -v c="$calls" -v m="$inflight" -v s="$(( t1 - t0 ))" -v r="$(( r1 - r0 ))" -v lag99="$lag99" 'BEGIN {
	printf "calls made                                 %8d in %.1f s\n", c, s / 1000.0
	printf "most in flight at the provider at once     %8d  (target 200) %s\n", m, (m >= 200 ? "PASS" : "MISS")
	printf "readings ingested meanwhile                %8.0f readings/s\n", r / (s / 1000.0)
	printf "event-loop lag meanwhile                   p99 <= %s ms  (target < 20) %s\n", lag99, (lag99 + 0 < 20 ? "PASS" : "MISS")
}'
