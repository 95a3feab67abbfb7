#!/usr/bin/env bash
#
# prepaid.sh: the one script behind the README's two commands.
#
#   ./prepaid.sh demo   install what is missing, build, start a throwaway
#                       PostgreSQL and mosquitto on loopback, run prepaidd and
#                       a simulated fleet of 50 meters, and show it working
#                       until Ctrl-C, which stops everything.
#   ./prepaid.sh test   install what is missing, build, and run the whole
#                       suite (unit and integration tests) twice: as built,
#                       and under AddressSanitizer/UndefinedBehaviorSanitizer.
#
# Builds are out of tree, in _build/ and _build-asan/. The servers and
# their data live in a temporary directory and are removed on exit; the
# server functions are those of tests/lib.sh, shared with the tests.
set -euo pipefail

cd "$(dirname "$0")"
TOP=$(pwd)
JOBS=$(nproc 2>/dev/null || echo 2)

PACKAGES="build-essential autoconf automake pkg-config libevent-dev libpq-dev
libcurl4-openssl-dev libjansson-dev libmosquitto-dev mosquitto mosquitto-clients
check libssl-dev zlib1g-dev libsystemd-dev postgresql postgresql-common curl mandoc clang
clang-format libqrencode-dev chromium chromium-driver python3-selenium python3"

say()
{
	printf '\n==> %s\n' "$*"
}

die()
{
	echo "prepaid.sh: $*" >&2
	exit 1
}

usage()
{
	echo "usage: ./prepaid.sh demo | test" >&2
	exit 2
}

# Install the Debian packages that are not installed yet, and only those.
deps()
{
	local p missing="" sudo=""

	if ! command -v dpkg-query >/dev/null 2>&1; then
		echo "not a Debian system: make sure these are installed:" "$PACKAGES"
		return 0
	fi
	for p in $PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
		    grep -q 'install ok installed' || missing="$missing $p"
	done
	[ -n "$missing" ] || return 0
	say "installing:$missing"
	if [ "$(id -u)" != 0 ]; then
		command -v sudo >/dev/null 2>&1 || die "need root or sudo to install:$missing"
		sudo="sudo"
	fi
	$sudo apt-get update -q
	# shellcheck disable=SC2086
	$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    --no-install-recommends $missing </dev/null
}

# Configure (once) and build in directory $1 with configure options $2...
build()
{
	local dir=$1

	shift
	if [ ! -x configure ]; then
		say "autoreconf"
		autoreconf -fi
	fi
	mkdir -p "$dir"
	if [ ! -f "$dir/Makefile" ]; then
		say "configure $* in $dir/"
		(cd "$dir" && "$TOP/configure" -q "$@")
	fi
	say "build in $dir/"
	make -C "$dir" -s -j"$JOBS"
}

# --- ./prepaid.sh test

# "PASS 6 FAIL 0 ..." from the test-suite.log of build directory $1.
suite_counts()
{
	local log=$1/test-suite.log

	[ -f "$log" ] || { echo "no test-suite.log"; return 0; }
	sed -n 's/^# \([A-Z]*\): *\([0-9]*\)$/\1 \2/p' "$log" | tr '\n' ' '
}

# Run make check in $1; print the logs of what failed. Returns make's status.
suite()
{
	local dir=$1 rc=0

	say "make check in $dir/"
	make -C "$dir" -j"$JOBS" check || rc=$?
	if [ "$rc" != 0 ] && [ -f "$dir/test-suite.log" ]; then
		say "failures in $dir/ (test-suite.log)"
		cat "$dir/test-suite.log"
	fi
	return "$rc"
}

cmd_test()
{
	local plain=0 asan=0 format=0

	deps
	build _build
	say "format check (clang-format, .clang-format)"
	make -C _build -s format-check || format=$?
	suite _build || plain=$?

	build _build-asan --enable-asan
	# Leak checking on; UBSan stops at the first error (the build also has
	# -fno-sanitize-recover) so that a bug fails its test.
	export ASAN_OPTIONS=detect_leaks=1
	export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
	suite _build-asan || asan=$?

	say "summary"
	printf '  %-28s %s\n' "format check" "$([ $format = 0 ] && echo ok || echo FAILED)"
	printf '  %-28s %s %s\n' "make check" "$([ $plain = 0 ] && echo ok || echo FAILED)" \
	    "($(suite_counts _build))"
	printf '  %-28s %s %s\n' "make check (ASan+UBSan)" \
	    "$([ $asan = 0 ] && echo ok || echo FAILED)" "($(suite_counts _build-asan))"
	[ "$plain" = 0 ] && [ "$asan" = 0 ] && [ "$format" = 0 ]
}

# --- ./prepaid.sh demo

cmd_demo()
{
	local now prev_n prev_t n t rate row meters closed open armed

	deps
	build _build
	# The tests' payment gateway signs notifications as WeChat Pay and
	# Alipay do: the demo pays with it.
	make -C _build -s tests/paysign

	# The servers, from the test harness; its EXIT trap stops them all.
	export top_srcdir=$TOP top_builddir=$TOP/_build
	# shellcheck source=tests/lib.sh
	. "$TOP/tests/lib.sh"
	trap 'echo; echo "stopping everything..."; exit 0' INT TERM

	say "starting a throwaway PostgreSQL and mosquitto in $LIB_TMP"
	skip_unless_tools
	pg_start
	broker_start
	pay_keys
	daemon_config mqtt.client_id=prepaidd-demo ingest.batch_window_ms=50 "${PAY_KEYS_CONF[@]}"
	daemon_migrate
	# A residential tariff (time of use, a tier above 200 kWh a month, a
	# standing charge) as the default of the meters' site, so that money moves.
	psql_q "SELECT prepaid.create_tariff('demo', 'Demo residential');
	    SELECT prepaid.create_tariff_version('demo', '2000-01-01', '{
	        \"tiers\": [{\"from_kwh\": 0, \"price\": 0}, {\"from_kwh\": 200, \"price\": 0.05}],
	        \"bands\": {\"work\": [{\"start\": \"00:00\", \"band\": \"valley\", \"price\": 0.3},
	                               {\"start\": \"08:00\", \"band\": \"peak\", \"price\": 0.6},
	                               {\"start\": \"22:00\", \"band\": \"valley\", \"price\": 0.3}]},
	        \"standing_per_day\": 0.1}');
	    UPDATE prepaid.sites SET default_tariff_id = 'demo' WHERE site_id = 'default'" >/dev/null
	daemon_start
	sim_bg -n 50 -r 1000 -w 3000 --linger -1

	cat <<EOF

prepaidd is running (log: $DAEMON_LOG), with 50 simulated meters
reading once a second (prepaid-sim output: $SIM_LOG).

Open psql on the throwaway database, in another terminal:

    $PG_BINDIR/psql -h 127.0.0.1 -p $PG_PORT -U postgres prepaid

and try:

    SELECT * FROM prepaid.meter_status LIMIT 5;
    SELECT prepaid.trip('SIM0001', 'demo');
    SELECT * FROM prepaid.command_status;
    SELECT prepaid.arm('SIM0001', 'paid');  -- the occupant presses the button 2 s later
    SELECT * FROM prepaid.balances ORDER BY meter_id LIMIT 5;
    SELECT prepaid.credit('SIM0001', 50.00, 'demo-payment-1');
    SELECT * FROM prepaid.statement('SIM0001', current_date - 1, current_date + 1);

Pay 30.00 yuan for SIM0002 the way WeChat Pay calls back (a signed and
encrypted notification for an order): trip it in psql first,

    SELECT prepaid.trip('SIM0002', 'demo');

then, in a shell, create the order and pay it; the meter is re-armed and
its occupant restores power 2 s later:

    no=\$($PG_BINDIR/psql -h 127.0.0.1 -p $PG_PORT -U postgres prepaid -Atc "SELECT prepaid.create_order('SIM0002', 30.00, 'wechat')")
    $PAYSIGN wechat http://127.0.0.1:$HTTP_PORT/pay/wechat --keys $KEYS --out-trade-no "\$no" --total 3000

and see it in psql:

    SELECT * FROM prepaid.payment_status;
    SELECT * FROM prepaid.restore_times;

Metrics: curl http://127.0.0.1:$HTTP_PORT/metrics    Health: curl http://127.0.0.1:$HTTP_PORT/healthz

Ctrl-C stops everything and removes the throwaway data.

EOF
	prev_n=
	prev_t=$(lib_now_ms)
	while :; do
		sleep 1
		lib_alive "$DAEMON_PID" || die "prepaidd stopped; see the log above"
		row=$(psql_q "SELECT coalesce(sum(readings), 0), count(*),
		    count(*) FILTER (WHERE relay = 'closed'),
		    count(*) FILTER (WHERE relay = 'open'),
		    count(*) FILTER (WHERE relay = 'armed'),
		    (SELECT coalesce(round(-sum(amount), 2), 0) FROM prepaid.ledger
		     WHERE kind IN ('charge', 'standing')),
		    (SELECT coalesce(round(sum(amount), 2), 0) FROM prepaid.ledger
		     WHERE kind = 'payment')
		    FROM prepaid.meter_status" 2>/dev/null) || row="?|?|?|?|?|?|?"
		IFS='|' read -r n meters closed open armed charged paid <<<"$row"
		t=$(lib_now_ms)
		rate="-"
		if [ "$n" != "?" ]; then
			[ -z "$prev_n" ] ||
			    rate=$(((n - prev_n) * 1000 / (t - prev_t > 0 ? t - prev_t : 1)))
			prev_n=$n
		fi
		prev_t=$t
		now=$(date +%T)
		printf '%s  readings/s %5s  readings %8s  meters %4s  relay closed %4s open %4s armed %4s  charged %8s paid %8s yuan  health %s\n' \
		    "$now" "$rate" "$n" "$meters" "$closed" "$open" "$armed" "$charged" "$paid" "$(daemon_healthz)"
	done
}

case "${1:-}" in
demo) cmd_demo ;;
test) cmd_test ;;
*) usage ;;
esac
