#!/bin/bash
#
# tests/bench/paypage-bench.sh: pay page views per second. Every view is a
# full one: the rate limiter, the token's SHA-256 looked up in PostgreSQL
# (prepaid_internal.pay_page: balance, relay, restore, 7 days of use from the
# ledger) and the HTML rendered. Load from ApacheBench (`ab`, Debian
# package apache2-utils), a new connection per view as phones make them,
# over PAGE_METERS links taken in turn.
#
#   1. idle: views only.
#   2. the same while prepaid-sim publishes readings at READ_RATE/s (the
#      ingest bench's half load on a small machine); the event loop's lag
#      p99 meanwhile is read from /metrics.
#
# Target >= 500 views/s. A measurement, not a test: exits 0 unless something
# broke. Environment: BUILD (default _build), PAGE_N (views per phase,
# default 20000), PAGE_CONC (concurrency, default 32), PAGE_METERS (default
# 200), READ_RATE (default 2500), PAGE_CONNS ([paypage] connections,
# default 2).
set -e

top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$top_srcdir/_build}
top_builddir=$(cd "$BUILD" && pwd)
export top_srcdir top_builddir
# shellcheck source=../lib.sh
. "$top_srcdir/tests/lib.sh"

N=${PAGE_N:-20000}
CONC=${PAGE_CONC:-32}
METERS=${PAGE_METERS:-200}
READ_RATE=${READ_RATE:-2500}

skip_unless_tools
command -v ab >/dev/null 2>&1 || skip "ab is not installed (apt-get install apache2-utils)"
note "setting up: PostgreSQL, broker, prepaidd with the pay page"
pg_start
broker_start
HTTP_PORT=$(free_port)
daemon_config \
	log.level=warning \
	http.max_connections=512 \
	paypage.path=/p \
	paypage.public_url="http://127.0.0.1:$HTTP_PORT" \
	paypage.rate_per_minute=1000000 \
	paypage.rate_burst=1000000 \
	paypage.connections="${PAGE_CONNS:-2}"
daemon_migrate
daemon_start

psql_q "SELECT count(prepaid.register_meter('PG' || lpad(i::text, 5, '0')))
    FROM generate_series(1, $METERS) i" >/dev/null
# A week of use on every meter: 96 charges a day, as 15-minute readings make.
psql_q "INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, exact_fen, energy_wh)
    SELECT 'PG' || lpad(i::text, 5, '0'), current_date - d, 'charge', -5, -5, 100
    FROM generate_series(1, $METERS) i, generate_series(0, 6) d, generate_series(1, 96) k" \
    >/dev/null
psql_q "SELECT url FROM prepaid.pay_links_issue()" >"$LIB_TMP/urls"
psql_q "VACUUM ANALYZE" >/dev/null
url=$(head -n 1 "$LIB_TMP/urls")
curl -s -o "$LIB_TMP/page" -w '%{http_code} %{size_download}\n' "$url" >"$LIB_TMP/one"
read -r code size <"$LIB_TMP/one"
[ "$code" = 200 ] || fail "the page answered $code"
grep -q 'id="balance"' "$LIB_TMP/page" || fail "the page shows no balance"

# ab takes one URL; the views are spread over the links by running one ab
# per link slice at once, CONC connections in all.
views()
{
	local out=$1 per=$((N / 8)) i pids=()

	for i in $(seq 1 8); do
		ab -q -n "$per" -c $((CONC / 8)) "$(sed -n "${i}p" "$LIB_TMP/urls")" \
		    >"$out.$i" 2>&1 &
		pids+=($!)
	done
	for i in "${pids[@]}"; do
		wait "$i" || true
	done
	cat "$out".* >"$out"
	grep -q "Non-2xx responses" "$out" && { grep "Non-2xx" "$out"; fail "non-200 answers"; }
	grep -q "Failed requests: *[1-9]" "$out" && { grep "Failed requests" "$out"; fail "failures"; }
	return 0
}
rate()
{
	# the sum of the concurrent ab runs' rates
	awk '/^Requests per second/ {s += $4} END {printf "%.0f", s}' "$1"
}
p99()
{
	awk '/^  99%/ {if ($2 > m) m = $2} END {print m}' "$1"
}

note "phase 1: $N views, concurrency $CONC, over 8 links"
t0=$(lib_now_ms)
views "$LIB_TMP/idle"
t1=$(lib_now_ms)
idle=$(rate "$LIB_TMP/idle")
idle_wall=$(awk -v n="$N" -v ms=$((t1 - t0)) 'BEGIN {printf "%.0f", n / (ms / 1000.0)}')

note "phase 2: the same while readings arrive at $READ_RATE/s"
sim_bg -n 2000 --load $((READ_RATE * 60)) --rate "$READ_RATE" -q 1 --no-commands
READ_PID=$SIM_PID
sleep 3
r0=$(daemon_metric readings_inserted_total)
curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics" >"$LIB_TMP/metrics-before"
t0=$(lib_now_ms)
views "$LIB_TMP/busy"
t1=$(lib_now_ms)
r1=$(daemon_metric readings_inserted_total)
curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics" >"$LIB_TMP/metrics-after"
kill "$READ_PID" 2>/dev/null || true
busy=$(rate "$LIB_TMP/busy")
busy_wall=$(awk -v n="$N" -v ms=$((t1 - t0)) 'BEGIN {printf "%.0f", n / (ms / 1000.0)}')
lag99=$(hist_p99_ms prepaidd_loop_lag_histogram_seconds "$LIB_TMP/metrics-before" \
    "$LIB_TMP/metrics-after")
reads=$(awk -v r=$((r1 - r0)) -v ms=$((t1 - t0)) 'BEGIN {printf "%.0f", r / (ms / 1000.0)}')

echo
echo "=== pay page views (a new connection per view; page $size bytes)"
printf "idle:               %6s views/s (wall %s)  p99 %s ms  (target >= 500) %s\n" \
    "$idle" "$idle_wall" "$(p99 "$LIB_TMP/idle")" "$([ "$idle_wall" -ge 500 ] && echo PASS || echo MISS)"
printf "with readings:      %6s views/s (wall %s)  p99 %s ms  (target >= 500) %s\n" \
    "$busy" "$busy_wall" "$(p99 "$LIB_TMP/busy")" "$([ "$busy_wall" -ge 500 ] && echo PASS || echo MISS)"
printf "  readings ingested meanwhile  %s/s; event-loop lag p99 <= %s ms\n" "$reads" "$lag99"
daemon_stop
