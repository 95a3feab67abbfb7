#!/usr/bin/env bash
#
# tests/it/listener.sh: the payment listener under abuse. Proves that only
# the exact callback path is the route ("/pay/wechat%00", an absolute URI,
# a fragment and a query string get 404, and a valid callback sent that way
# credits nothing); that a request head past 8 KiB gets 431 (one header of
# 10 KiB, and one of 40 KiB, past evhttp's own limit) and a body past
# max_body_bytes 413; that a head trickled a line a second is cut off at
# header_deadline_ms; and that with 1,000 slow clients (a header line a
# second, reconnecting when cut off, from 10 addresses) and a flood of
# forged callbacks at once, at least 99% of valid signed WeChat Pay
# callbacks (tests/paysign, 20 a second) are answered 204 within 1 s each;
# and the same when the slow clients, the forgers and the callbacks all
# come from one address, as they do behind a reverse proxy.
# The figures are printed. The flood's audit rows stay bounded by
# [payments] rejects_keep, and a verified refusal is kept. Secrets: a config file readable by everyone is
# warned about at start and by -n; a world-readable APIv3 key is refused by
# -n, by a start and by a reload (which keeps the keys in use), naming the
# key and the file. Under AddressSanitizer (a build configured with
# --enable-asan) the flood is scaled down to 300 slow clients and 4 forgers,
# as the sanitized daemon is several times slower.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

skip_unless_tools
command -v python3 >/dev/null || skip "python3 is not installed"
pay_keys

pg_start
broker_start
daemon_config \
	http.max_connections=256 \
	http.max_connections_per_address=32 \
	http.header_deadline_ms=2000 \
	http.deadline_ms=4000 \
	"${PAY_KEYS_CONF[@]}" \
	payments.notify_occupant=false \
	payments.rejects_keep=500 \
	log.level=warning
daemon_migrate
chmod 644 "$CONF"
daemon_start
WX=http://127.0.0.1:$HTTP_PORT/pay/wechat

# The status code of a raw request ($1, printf %b escapes) sent over a
# fresh connection.
raw_status()
{
	local line=
	exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT"
	printf '%b' "$1" >&3 2>/dev/null || true
	IFS= read -r -t 5 line <&3 || true
	exec 3<&- 3>&- || true
	line=${line%$'\r'}
	echo "${line#* }" | cut -d' ' -f1
}

balance()
{
	psql_q "SELECT balance_exact FROM prepaid.balances WHERE meter_id = '$1'"
}

note "exact paths: a valid callback on a path that is not exactly the route credits nothing"
psql_q "SELECT prepaid.register_meter('LS0001')" >/dev/null
o1=$(psql_q "SELECT prepaid.create_order('LS0001', 1.00, 'wechat')")
"$PAYSIGN" wechat "$WX" --keys "$KEYS" --serial "$WX_SERIAL" --out-trade-no "$o1" \
    --transaction-id 4200000701 --total 100 --dump "$LIB_TMP/cb" -n 0 >/dev/null
[ -s "$LIB_TMP/cb.body" ] && [ -s "$LIB_TMP/cb.hdr" ] || fail "paysign --dump wrote nothing"
post_raw_path()
{
	local hdrs body len
	hdrs=$(grep -v -i -e "^expect:" -e "^content-length:" "$LIB_TMP/cb.hdr" | sed 's/$/\\r\\n/' | tr -d '\n')
	body=$(cat "$LIB_TMP/cb.body")
	len=$(wc -c <"$LIB_TMP/cb.body")
	raw_status "POST $1 HTTP/1.1\r\nHost: pay\r\nConnection: close\r\n${hdrs}Content-Length: $len\r\n\r\n$body"
}
for target in '/pay/wechat%00' "http://127.0.0.1:$HTTP_PORT/pay/wechat" '/pay/wechat#frag' \
    '/pay/wechat?x=1' '/pay/wechat/' '/pay/wech%61t' '//pay/wechat'; do
	assert_eq 404 "$(post_raw_path "$target")" "POST $target"
done
assert_eq "" "$(psql_q "SELECT 1 FROM prepaid.payments WHERE provider_txn = '4200000701'")" \
    "nothing recorded from the inexact paths"
assert_eq 204 "$(post_raw_path /pay/wechat)" "the same callback on the exact path"
assert_eq 1.0000000 "$(balance LS0001)" "LS0001 credited once, on the exact path"

note "limits: a head past 8 KiB gets 431, a body past max_body_bytes 413"
big=$(head -c 10000 /dev/zero | tr '\0' a)
assert_eq 431 "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' -H "X-Big: $big" "$WX")" \
    "a 10 KiB header"
big=$(head -c 40000 /dev/zero | tr '\0' a)
assert_eq 431 "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' -H "X-Big: $big" "$WX")" \
    "a 40 KiB header (past evhttp's own limit)"
assert_eq 431 "$(raw_status "POST /pay/wechat HTTP/1.1\r\nX-Big: $big")" \
    "a 40 KiB head that never ends"
head -c 70000 /dev/zero | tr '\0' a >"$LIB_TMP/big"
assert_eq 413 "$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary @"$LIB_TMP/big" \
    "$WX")" "a 70,000-byte body"
assert_eq 200 "$(daemon_healthz)" "healthy after the limits"

note "header deadline: a head trickled a line a second is cut off at 2 s"
t0=$(lib_now_ms)
cut0=$(daemon_metric http_refused_deadline_total)
trap '' PIPE
exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT"
printf 'POST /pay/wechat HTTP/1.1\r\n' >&3
for i in $(seq 1 8); do
	sleep 1
	printf 'X-Slow-%d: %d\r\n' "$i" "$i" >&3 2>/dev/null || break
done
exec 3>&- 3<&- || true
trap - PIPE
t1=$(lib_now_ms)
[ "$(daemon_metric http_refused_deadline_total)" -gt "$cut0" ] ||
    fail "the slow head was not cut off"
[ $((t1 - t0)) -lt 5000 ] || fail "the slow head was cut off after $((t1 - t0)) ms, not ~2 s"
echo "ok - slow head cut off after $((t1 - t0)) ms"

psql_q "INSERT INTO prepaid.payment_rejects (received_at, provider, reason, http_status, peer,
    verified, out_trade_no, provider_txn, amount_fen)
    VALUES (now(), 'wechat', 'test: refused by the database', 500, '127.0.0.1:1', true,
    'PTEST', '4200000799', 100)" >/dev/null

SLOW=1000
FORGERS=8
if grep -q -- '--enable-asan' "$top_builddir/config.log" 2>/dev/null; then
	SLOW=300
	FORGERS=4
fi
# One flood: $1 label, $2 meter prefix, $3 slow clients' addresses, $4 the
# forgers' address, $5 valid callbacks, at $6 a second.
flood()
{
	local label=$1 pfx=$2 srcs=$3 fsrc=$4 n=$5 rate=$6 secs ok p99 maxms forged opened

	secs=$((n / rate + 8))
	psql_q "SELECT count(prepaid.register_meter('$pfx' || lpad(i::text, 5, '0')))
	    FROM generate_series(1, $n) i" >/dev/null
	psql_q "COPY (SELECT 'wechat', prepaid.create_order('$pfx' || lpad(i::text, 5, '0'),
	        1.00, 'wechat', '1 day'), 100, '$pfx' || lpad(i::text, 5, '0')
	    FROM generate_series(1, $n) i) TO STDOUT WITH (DELIMITER ' ')" >"$LIB_TMP/orders"
	python3 "$top_srcdir/tests/slowflood.py" --port "$HTTP_PORT" --slow "$SLOW" \
	    --slow-src "$srcs" --forgers "$FORGERS" --forge-src "$fsrc" --seconds "$secs" \
	    >"$LIB_TMP/flood.out" 2>&1 &
	FLOOD_PID=$!
	LIB_PIDS+=("$FLOOD_PID")
	# Let the slow clients take every slot they can first.
	sleep 4
	curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics" >"$LIB_TMP/metrics-before"
	"$PAYSIGN" load "$WX" "$WX" --keys "$KEYS" --serial "$WX_SERIAL" \
	    --orders "$LIB_TMP/orders" --rate "$rate" --concurrency 4 --timeout 1000 \
	    >"$LIB_TMP/valid.out" 2>"$LIB_TMP/valid.err" || true
	curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics" >"$LIB_TMP/metrics-after"
	wait "$FLOOD_PID" || fail "slowflood.py failed: $(cat "$LIB_TMP/flood.out")"
	cat "$LIB_TMP/flood.out" "$LIB_TMP/valid.out"
	head -n 5 "$LIB_TMP/valid.err"
	ok=$(sed -n 's/^sent=.* ok=\([0-9]*\) .*/\1/p' "$LIB_TMP/valid.out")
	p99=$(sed -n 's/^latency_ms.* p99=\([0-9.]*\).*/\1/p' "$LIB_TMP/valid.out")
	maxms=$(sed -n 's/^latency_ms.* max=\([0-9.]*\).*/\1/p' "$LIB_TMP/valid.out")
	forged=$(sed -n 's/.* forged=\([0-9]*\) .*/\1/p' "$LIB_TMP/flood.out")
	opened=$(sed -n 's/^slow_opened=\([0-9]*\) .*/\1/p' "$LIB_TMP/flood.out")
	printf '%s\n' \
	    "=== listener under abuse: $label ($SLOW slow clients, $FORGERS forgers)" \
	    "valid callbacks answered 204 within 1 s: ${ok:-0} of $n (target >= 99%)" \
	    "  answer time p99 ${p99:-?} ms, max ${maxms:-?} ms" \
	    "slow connections opened $opened; forged callbacks answered $forged" \
	    "closed for a cap: $(($(flood_metric http_refused_cap_total after) -
	        $(flood_metric http_refused_cap_total before)))," \
	    "cut off at a deadline: $(($(flood_metric http_refused_deadline_total after) -
	        $(flood_metric http_refused_deadline_total before)))"
	[ -n "$ok" ] && [ $((ok * 100)) -ge $((n * 99)) ] ||
	    fail "$label: ${ok:-0} of $n valid callbacks answered within 1 s"
	[ "${forged:-0}" -ge 100 ] || fail "$label: the forgery flood did not run ($forged answered)"
	[ "${opened:-0}" -ge "$SLOW" ] || fail "$label: the slow clients did not run ($opened opened)"
	assert_eq "$ok" "$(psql_q "SELECT count(*) FROM prepaid.payments p JOIN prepaid.orders o
	    USING (out_trade_no) WHERE o.meter_id LIKE '$pfx%'")" "each answered callback recorded"
	echo "ok - $label: $ok of $n valid callbacks answered within 1 s under the flood"
	assert_eq 200 "$(daemon_healthz)" "healthy after the flood"
}
flood_metric()
{
	awk -v n="prepaidd_$1" '$1 == n { print $2 }' "$LIB_TMP/metrics-$2"
}

note "slow clients from 10 addresses and a forgery flood: valid callbacks answered within 1 s"
flood "10 addresses" LF "$(seq -f '127.0.1.%g' 1 10 | paste -sd,)" 127.0.2.1 200 20
note "the same from the callbacks' own address (as behind a reverse proxy)"
flood "one address" LP 127.0.0.1 127.0.0.1 100 25

note "retention: payment_rejects keeps the newest 500 unverified rows, and every verified one"
n=$(psql_q "SELECT count(*) FROM prepaid.payment_rejects WHERE NOT verified")
total=$(psql_q "SELECT max(id) FROM prepaid.payment_rejects")
# At most 100 refusals are audited a second, so how many the floods audited
# depends on the machine: with fewer than 600, nothing need have gone yet.
[ "$n" -le 600 ] && { [ "$n" -ge 500 ] || [ "$total" -lt 600 ]; } ||
    fail "$n unverified rows in payment_rejects after $total audited (rejects_keep = 500)"
echo "ok - $n unverified rows kept of $total audited (rejects_keep = 500)"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.payment_rejects WHERE verified")" \
    "the verified refusal from before the flood is kept"
assert_eq 0 "$(psql_q "SELECT prepaid_internal.prune_payment_rejects(100000)")" \
    "a prune with a larger bound deletes nothing"
psql_q "SELECT prepaid_internal.prune_payment_rejects(100)" >/dev/null
n=$(psql_q "SELECT count(*) FROM prepaid.payment_rejects WHERE NOT verified")
[ "$n" -le 100 ] || fail "$n unverified rows left by a prune to 100"
assert_eq 1 "$(psql_q "SELECT count(*) FROM prepaid.payment_rejects WHERE verified")" \
    "a prune keeps the verified refusal"
echo "ok - a prune to 100 leaves $n unverified rows and the verified one"

note "secrets: a config readable by everyone is warned about, a world-readable APIv3 key refused"
wait_log "warning: $CONF: the configuration file is readable by everyone \(mode 0644\)"
"$top_builddir/prepaidd" -n -c "$CONF" >"$LIB_TMP/n.out" 2>"$LIB_TMP/n.err" ||
    fail "prepaidd -n failed: $(cat "$LIB_TMP/n.err")"
grep -q "configuration OK" "$LIB_TMP/n.out" || fail "prepaidd -n did not say configuration OK"
grep -q "^warning: $CONF: the configuration file is readable by everyone" "$LIB_TMP/n.err" ||
    fail "prepaidd -n did not warn about the open config: $(cat "$LIB_TMP/n.err")"
echo "ok - -n warns about the config file readable by everyone"
chmod 644 "$KEYS/apiv3.key"
rc=0
"$top_builddir/prepaidd" -n -c "$CONF" >"$LIB_TMP/n.out" 2>"$LIB_TMP/n.err" || rc=$?
assert_eq 1 "$rc" "prepaidd -n exit status with a world-readable APIv3 key"
grep -q "payments.wechat_apiv3_key_file: $KEYS/apiv3.key is readable by everyone (mode 0644): refused" \
    "$LIB_TMP/n.err" || fail "-n did not name the key and file: $(cat "$LIB_TMP/n.err")"
echo "ok - -n refuses it, naming the key and the file"
from=$(($(daemon_log_lines) + 1))
daemon_reload
wait_log "reload failed: .*payments.wechat_apiv3_key_file: .*apiv3.key is readable by everyone" "$from"
psql_q "SELECT prepaid.register_meter('LS0002')" >/dev/null
o2=$(psql_q "SELECT prepaid.create_order('LS0002', 2.00, 'wechat')")
"$PAYSIGN" wechat "$WX" --keys "$KEYS" --serial "$WX_SERIAL" --out-trade-no "$o2" \
    --transaction-id 4200000702 --total 200 --expect 204 >/dev/null ||
    fail "the refused reload dropped the keys in use"
assert_eq 2.0000000 "$(balance LS0002)" "credited with the keys kept over the refused reload"
rc=0
"$top_builddir/prepaidd" -c "$CONF" >"$LIB_TMP/start.out" 2>&1 || rc=$?
assert_eq 1 "$rc" "a start with a world-readable APIv3 key fails"
grep -q "wechat_apiv3_key_file: .*refused" "$LIB_TMP/start.out" ||
    fail "the refused start did not say why: $(cat "$LIB_TMP/start.out")"
chmod 600 "$KEYS/apiv3.key"
daemon_stop
