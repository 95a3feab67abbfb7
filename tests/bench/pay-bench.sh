#!/bin/bash
#
# tests/bench/pay-bench.sh: payment callbacks under load, PostgreSQL with
# fsync and synchronous commit on. Three phases, each printing its figures:
#
#   1. baseline: tests/paysign load posts signed WeChat Pay and Alipay
#      notifications to tests/fakegw, which answers success without
#      verifying or storing anything: the ceiling of the client and of HTTP
#      on loopback on this machine.
#   2. throughput: the same load against prepaidd: every callback verified
#      (RSA-2048 signature, and AES-256-GCM for WeChat), matched to its
#      order and credited in its own committed transaction. Target >= 1000
#      callbacks/s; the ratio to the baseline is printed.
#   3. latency: 100 callbacks/s for tripped meters while prepaid-sim keeps
#      readings flowing; tests/paysign subscribes to the meters' command
#      topics and measures from each callback's POST to its meter's arm
#      arriving over MQTT. Target p99 <= 20 ms.
#
# A measurement, not a test: exits 0 unless something broke. Environment:
# BUILD (default _build), PAY_N (callbacks in phases 1 and 2, default
# 20000), PAY_CONC (concurrency, default 32), LAT_SECONDS (default 20),
# READ_RATE (readings/s during phase 3, default 5000).
set -e

top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$top_srcdir/_build}
top_builddir=$(cd "$BUILD" && pwd)
export top_srcdir top_builddir
# shellcheck source=../lib.sh
. "$top_srcdir/tests/lib.sh"

N=${PAY_N:-20000}
CONC=${PAY_CONC:-32}
LAT_SECONDS=${LAT_SECONDS:-20}
LAT_N=$((LAT_SECONDS * 100))
READ_RATE=${READ_RATE:-5000}

skip_unless_tools
note "setting up: keys, PostgreSQL (fsync on), broker, prepaidd"
pay_keys
pg_start
for s in "fsync = on" "full_page_writes = on" "synchronous_commit = on" \
    "shared_buffers = '128MB'" "max_connections = 60"; do
	psql_q "ALTER SYSTEM SET $s" >/dev/null
done
pg_restart
broker_start
daemon_config \
	log.level=warning \
	commands.retry_initial_ms=30000 \
	commands.retry_max_ms=60000 \
	http.max_connections=512 \
	"${PAY_KEYS_CONF[@]}" \
	payments.notify_occupant=false \
	payments.connections=${PAY_CONNS:-4}
daemon_migrate
daemon_start

# Orders: $1 count, $2 meter prefix; alternating providers.
orders()
{
	psql_q "SELECT count(prepaid.register_meter('$2' || lpad(i::text, 5, '0')))
	    FROM generate_series(1, $1) i" >/dev/null
	psql_q "COPY (SELECT CASE WHEN i % 2 = 0 THEN 'wechat' ELSE 'alipay' END,
	        prepaid.create_order('$2' || lpad(i::text, 5, '0'), 50 + i % 100 / 100.0,
	            CASE WHEN i % 2 = 0 THEN 'wechat' ELSE 'alipay' END, '1 day'),
	        5000 + i % 100, '$2' || lpad(i::text, 5, '0')
	    FROM generate_series(1, $1) i) TO STDOUT WITH (DELIMITER ' ')"
}
field()
{
	sed -n "s/.*\\b$1=\\([0-9.]*\\).*/\\1/p" "$2" | head -n 1
}

note "phase 1: baseline, $N notifications to a server that only answers success"
orders "$N" PT >"$LIB_TMP/orders-t"
GW_PORT=$(free_port)
"$top_builddir/tests/fakegw" "$GW_PORT" /dev/null >"$LIB_TMP/fakegw.out" 2>&1 &
GW_PID=$!
LIB_PIDS+=("$GW_PID")
until grep -q listening "$LIB_TMP/fakegw.out"; do sleep 0.1; done
"$PAYSIGN" load "http://127.0.0.1:$GW_PORT/success" "http://127.0.0.1:$GW_PORT/success" \
    --keys "$KEYS" --serial "$WX_SERIAL" --orders "$LIB_TMP/orders-t" --rate 0 \
    --concurrency "$CONC" >"$LIB_TMP/base.out" 2>&1 || { cat "$LIB_TMP/base.out"; fail "baseline load failed"; }
kill "$GW_PID"
cat "$LIB_TMP/base.out"
base=$(field rate "$LIB_TMP/base.out")

note "phase 2: throughput, $N callbacks verified and credited"
"$PAYSIGN" load "http://127.0.0.1:$HTTP_PORT/pay/wechat" "http://127.0.0.1:$HTTP_PORT/pay/alipay" \
    --keys "$KEYS" --serial "$WX_SERIAL" --orders "$LIB_TMP/orders-t" --rate 0 \
    --concurrency "$CONC" >"$LIB_TMP/tput.out" 2>&1 || { cat "$LIB_TMP/tput.out"; fail "load failed"; }
cat "$LIB_TMP/tput.out"
tput=$(field rate "$LIB_TMP/tput.out")
credited=$(psql_q "SELECT count(*) FROM prepaid.payments WHERE state = 'credited'")
[ "$credited" = "$N" ] || fail "$credited of $N credited"
[ -z "$(psql_q "SELECT * FROM prepaid.verify_ledger()")" ] || fail "verify_ledger() not empty"

note "phase 3: latency at 100 callbacks/s for $LAT_N tripped meters, readings at $READ_RATE/s"
orders "$LAT_N" PL >"$LIB_TMP/orders-l"
psql_q "UPDATE prepaid.meters SET relay = 'open' WHERE meter_id LIKE 'PL%'" >/dev/null
psql_q "SELECT count(prepaid.adjust(meter_id, -10, 'bench: in arrears'))
    FROM prepaid.meters WHERE meter_id LIKE 'PL%'" >/dev/null
# Measure the steady state, not the aftermath of the bulk load above: the
# tables analysed and a checkpoint behind us.
psql_q "VACUUM ANALYZE" >/dev/null
psql_q "CHECKPOINT" >/dev/null
sim_bg -n 2000 --load $((READ_RATE * (LAT_SECONDS + 10))) --rate "$READ_RATE" -q 1 --no-commands
READ_PID=$SIM_PID
sleep 3
r0=$(daemon_metric readings_inserted_total)
curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics" >"$LIB_TMP/metrics-before"
"$PAYSIGN" load "http://127.0.0.1:$HTTP_PORT/pay/wechat" "http://127.0.0.1:$HTTP_PORT/pay/alipay" \
    --keys "$KEYS" --serial "$WX_SERIAL" --orders "$LIB_TMP/orders-l" --rate 100 \
    --concurrency 16 --mqtt "127.0.0.1:$BROKER_PORT" --prefix meters \
    >"$LIB_TMP/lat.out" 2>&1 || { cat "$LIB_TMP/lat.out"; fail "latency load failed"; }
r1=$(daemon_metric readings_inserted_total)
curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics" >"$LIB_TMP/metrics-after"
lag99=$(hist_p99_ms prepaidd_loop_lag_histogram_seconds "$LIB_TMP/metrics-before" \
    "$LIB_TMP/metrics-after")
ans99=$(hist_p99_ms prepaidd_payment_callback_seconds "$LIB_TMP/metrics-before" \
    "$LIB_TMP/metrics-after")
kill "$READ_PID" 2>/dev/null || true
cat "$LIB_TMP/lat.out"
p99=$(sed -n 's/^arm_ms.* p99=\([0-9.]*\).*/\1/p' "$LIB_TMP/lat.out")
p50=$(sed -n 's/^arm_ms.* p50=\([0-9.]*\).*/\1/p' "$LIB_TMP/lat.out")
arms=$(psql_q "SELECT count(*) FROM prepaid.restores WHERE meter_id LIKE 'PL%'")
[ "$arms" = "$LAT_N" ] || fail "$arms of $LAT_N meters re-armed"
lag=$(daemon_metric loop_lag_max_seconds)

echo
echo "=== payment callbacks (PostgreSQL fsync on, synchronous commit)"
awk -v b="$base" -v t="$tput" -v n="$N" -v c="$CONC" -v p50="$p50" -v p99="$p99" \
    -v r="$(( (r1 - r0) ))" -v s="$LAT_SECONDS" -v lag="$lag" -v lag99="$lag99" \
    -v ans99="$ans99" 'BEGIN {
	printf "baseline: client + HTTP, no verification    %8.0f callbacks/s\n", b
	printf "prepaidd: verified + credited (%d, conc %d) %8.0f callbacks/s  (target >= 1000) %s\n", n, c, t, (t >= 1000 ? "PASS" : "MISS")
	printf "prepaidd / baseline                          %8.2f\n", t / b
	printf "callback -> arm on MQTT at 100/s            p50 %.1f ms  p99 %.1f ms  (target <= 20) %s\n", p50, p99, (p99 <= 20 ? "PASS" : "MISS")
	printf "  readings ingested meanwhile               %8.0f readings/s\n", r / (s + 0.0)
	printf "  callback arrival -> answer, in prepaidd   p99 <= %s ms\n", ans99
	printf "  event-loop lag meanwhile                  p99 <= %s ms, max over the run %.1f ms\n", lag99, lag * 1000
}'
