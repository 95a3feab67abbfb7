# shellcheck shell=bash
#
# tests/lib.sh: the integration-test harness, sourced by every tests/it/*.sh
# and by ./prepaid.sh demo. It gives each test a private temporary directory
# and a throwaway PostgreSQL cluster, mosquitto broker and prepaidd on free
# loopback ports, and an EXIT trap that stops whatever was started (and, when
# the test failed, prints the tail of the daemon's log) so that a failed
# test never leaves servers behind. Tests are independent: nothing is shared
# between two scripts, so `make -j check` may run them side by side.
#
# Environment (set by `make check`; all optional when sourced by hand):
# top_srcdir, top_builddir, MOSQUITTO (broker path, may be empty),
# PG_CONFIG (pg_config path). PREPAID_KEEP_TMP=1 keeps the temporary
# directory for inspection.
#
# Exit codes follow automake: 0 pass, 1 fail, 77 skip.

: "${top_srcdir:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${top_builddir:=$top_srcdir}"
: "${MOSQUITTO=}"
: "${PG_CONFIG=}"

LIB_TMP=$(mktemp -d "${TMPDIR:-/tmp}/prepaid-test.XXXXXX")
# PostgreSQL and mosquitto may run as other users: they must reach their
# subdirectories below this one.
chmod 755 "$LIB_TMP"

CONF=$LIB_TMP/prepaidd.conf
DAEMON_LOG=$LIB_TMP/prepaidd.log
DAEMON_PID=
BROKER_PID=
BROKER_PORT=
BROKER_LOG=$LIB_TMP/mosquitto.log
PG_PORT=
PG_DIR=$LIB_TMP/pg
PG_BINDIR=
PG_RUNNING=
# The login that runs --migrate, and the daemon's login (prepaid_daemon only).
PG_ADMIN=prepaid_admin
PG_DAEMON=prepaidd
HTTP_PORT=
LIB_PIDS=()
SIM_LOG=
LIB_USED_PORTS=" "
# Servers run in their own session so that a Ctrl-C on the terminal reaches
# only this script, whose EXIT trap then stops them in order.
LIB_SETSID=$(command -v setsid 2>/dev/null || true)

# --- messages and assertions

fail()
{
	echo "FAIL: $*" >&2
	exit 1
}

skip()
{
	echo "SKIP: $*" >&2
	exit 77
}

note()
{
	echo "--- $*"
}

assert_eq()
{
	local expected=$1 actual=$2 what=${3:-value}

	if [ "$expected" != "$actual" ]; then
		fail "$what: expected '$expected', got '$actual'"
	fi
	echo "ok - $what ($actual)"
}

# Milliseconds on the monotonic-enough wall clock, for deadlines.
lib_now_ms()
{
	echo $(($(date +%s%N) / 1000000))
}

# A process we started is alive (a zombie is not).
lib_alive()
{
	local pid=$1 state

	[ -n "$pid" ] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
	[ "$state" != Z ]
}

# Send SIGTERM, wait up to $2 seconds (default 10), then SIGKILL. Sets
# LIB_RC to the exit status (128+signal when killed by one).
lib_terminate()
{
	local pid=$1 secs=${2:-10} deadline

	LIB_RC=0
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$(($(lib_now_ms) + secs * 1000))
	while lib_alive "$pid" && [ "$(lib_now_ms)" -lt "$deadline" ]; do
		sleep 0.1
	done
	if lib_alive "$pid"; then
		echo "process $pid did not stop within ${secs}s: killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || LIB_RC=$?
}

# --- tools

lib_pg_bindir()
{
	local d

	if [ -n "$PG_CONFIG" ] && d=$("$PG_CONFIG" --bindir 2>/dev/null) &&
	    [ -x "$d/initdb" ]; then
		echo "$d"
		return 0
	fi
	for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
		if [ -x "$d/initdb" ]; then
			echo "$d"
			return 0
		fi
	done
	d=$(command -v initdb 2>/dev/null) || return 1
	dirname "$d"
}

# Exit 77 when a server this test needs is not installed. Under CI the
# tools are installed by ./prepaid.sh, so a missing one is a failure, not a
# silent skip.
skip_unless_tools()
{
	local missing="" t

	[ -n "$MOSQUITTO" ] || MOSQUITTO=$(command -v mosquitto 2>/dev/null ||
	    { [ -x /usr/sbin/mosquitto ] && echo /usr/sbin/mosquitto; } || true)
	[ -n "$MOSQUITTO" ] && [ -x "$MOSQUITTO" ] || missing="$missing mosquitto"
	PG_BINDIR=$(lib_pg_bindir) || missing="$missing postgresql(initdb)"
	for t in curl mosquitto_pub mosquitto_sub; do
		command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
	done
	if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
		missing="$missing postgres-user"
	fi
	for t in prepaidd prepaid-sim; do
		[ -x "$top_builddir/$t" ] || fail "$top_builddir/$t is not built"
	done
	if [ -n "$missing" ]; then
		if [ "${CI:-}" = true ]; then
			fail "missing in CI:$missing"
		fi
		skip "missing:$missing"
	fi
}

# A TCP port on 127.0.0.1 that nothing listens on and this test has not
# handed out yet. Random so that parallel tests rarely race for one.
free_port()
{
	local p tries

	for ((tries = 0; tries < 200; tries++)); do
		p=$((20000 + RANDOM % 40000))
		case "$LIB_USED_PORTS" in *" $p "*) continue ;; esac
		if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			continue
		fi
		if command -v ss >/dev/null 2>&1 &&
		    [ -n "$(ss -Htan "sport = :$p" 2>/dev/null)" ]; then
			continue
		fi
		LIB_USED_PORTS="$LIB_USED_PORTS$p "
		echo "$p"
		return 0
	done
	fail "no free port found"
}

lib_port_open()
{
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# --- PostgreSQL: a private cluster in $PG_DIR. As root the server runs as
# user postgres (it refuses root) in a directory that user owns.

lib_as_pg()
{
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

pg_start()
{
	[ -n "$PG_BINDIR" ] || PG_BINDIR=$(lib_pg_bindir) ||
	    fail "PostgreSQL server binaries not found"
	[ -n "$PG_PORT" ] || PG_PORT=$(free_port)
	if [ ! -d "$PG_DIR/data" ]; then
		mkdir -p "$PG_DIR/sock"
		[ "$(id -u)" != 0 ] || chown -R postgres: "$PG_DIR"
		lib_as_pg "$PG_BINDIR/initdb" -D "$PG_DIR/data" -U postgres \
		    -A trust -E UTF8 --no-locale --no-sync \
		    >"$LIB_TMP/initdb.log" 2>&1 ||
		    { cat "$LIB_TMP/initdb.log" >&2; fail "initdb failed"; }
		# Tests need speed, not durability: fsync off.
		lib_as_pg tee -a "$PG_DIR/data/postgresql.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/sock'
fsync = off
full_page_writes = off
max_connections = 40
shared_buffers = 32MB
log_min_messages = warning
log_connections = off
EOF
	fi
	lib_as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" \
	    -w -t 30 start >/dev/null ||
	    { tail -n 20 "$PG_DIR/server.log" >&2; fail "PostgreSQL did not start"; }
	PG_RUNNING=1
	export PGHOST=127.0.0.1 PGPORT=$PG_PORT PGUSER=postgres PGDATABASE=prepaid
	# As the README sets a site up: an administrator login that owns the
	# database and runs --migrate, and the daemon's own login, which
	# daemon_migrate gives prepaid_daemon and nothing else.
	if [ "$("$PG_BINDIR/psql" -X -A -t -d postgres -c \
	    "SELECT count(*) FROM pg_database WHERE datname = 'prepaid'")" = 0 ]; then
		"$PG_BINDIR/psql" -X -q -d postgres -v ON_ERROR_STOP=1 \
		    -c "CREATE ROLE $PG_ADMIN LOGIN CREATEROLE" \
		    -c "CREATE ROLE $PG_DAEMON LOGIN" \
		    -c "CREATE DATABASE prepaid OWNER $PG_ADMIN" ||
		    fail "CREATE DATABASE failed"
	fi
}

# Stop the cluster. $1: shutdown mode (fast by default; immediate is a crash).
pg_stop()
{
	[ -n "$PG_RUNNING" ] || return 0
	lib_as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m "${1:-fast}" -w -t 30 \
	    stop >/dev/null || fail "PostgreSQL did not stop"
	PG_RUNNING=
}

pg_restart()
{
	pg_stop fast
	pg_start
}

# Run SQL on the test database; unaligned, tuples only, stops on error.
psql_q()
{
	"$PG_BINDIR/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 \
	    -p "$PG_PORT" -U postgres -d prepaid -c "$1"
}

# --- mosquitto: one broker per test, persistent so a restart keeps sessions.

broker_start()
{
	local dir=$LIB_TMP/broker deadline

	BROKER_PORT=${1:-${BROKER_PORT:-$(free_port)}}
	[ -n "$MOSQUITTO" ] || MOSQUITTO=/usr/sbin/mosquitto
	mkdir -p "$dir"
	# As root mosquitto drops to its own user; give it the directory.
	if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
		chown mosquitto: "$dir"
	fi
	cat >"$dir/mosquitto.conf" <<EOF
listener $BROKER_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $dir/
autosave_interval 0
max_queued_messages 1000000
max_inflight_messages 100
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
EOF
	# Settings of a test's own (later lines win), e.g. persistence.
	[ -z "${BROKER_EXTRA:-}" ] || printf '%s\n' "$BROKER_EXTRA" >>"$dir/mosquitto.conf"
	$LIB_SETSID "$MOSQUITTO" -c "$dir/mosquitto.conf" >>"$BROKER_LOG" 2>&1 &
	BROKER_PID=$!
	deadline=$(($(lib_now_ms) + 10000))
	until lib_port_open "$BROKER_PORT"; do
		lib_alive "$BROKER_PID" ||
		    { tail -n 20 "$BROKER_LOG" >&2; fail "mosquitto exited"; }
		[ "$(lib_now_ms)" -lt "$deadline" ] ||
		    fail "mosquitto did not listen on $BROKER_PORT"
		sleep 0.1
	done
}

broker_stop()
{
	[ -n "$BROKER_PID" ] || return 0
	lib_terminate "$BROKER_PID" 10
	BROKER_PID=
}

broker_restart()
{
	broker_stop
	broker_start "$BROKER_PORT"
}

# --- prepaidd

# Write $CONF for the current ports. Arguments "section.key=value" override
# or add keys; "section.key=" removes one. Sets HTTP_PORT.
daemon_config()
{
	local a k s v
	local -A kv

	[ -n "$HTTP_PORT" ] || HTTP_PORT=$(free_port)
	kv=(
		[database.conninfo]="host=127.0.0.1 port=$PG_PORT user=$PG_DAEMON dbname=prepaid connect_timeout=5"
		[mqtt.host]=127.0.0.1
		[mqtt.port]=$BROKER_PORT
		[mqtt.client_id]=prepaidd-test
		[mqtt.topic_prefix]=meters
		[mqtt.qos]=1
		[mqtt.keepalive]=10
		[ingest.batch_size]=200
		[ingest.batch_window_ms]=50
		[ingest.auto_register]=true
		[ingest.resend_on_gap]=true
		[commands.retry_initial_ms]=500
		[commands.retry_max_ms]=2000
		[commands.poll_interval_ms]=500
		[http.enabled]=true
		[http.listen]=127.0.0.1
		[http.port]=$HTTP_PORT
		[log.level]=info
		[journal.directory]=$LIB_TMP/journal
	)
	for a in "$@"; do
		k=${a%%=*}
		v=${a#*=}
		if [ -z "$v" ]; then
			unset "kv[$k]"
		else
			kv[$k]=$v
		fi
	done
	{
		echo "# written by tests/lib.sh daemon_config"
		for s in database mqtt ingest journal commands http payments paypage log; do
			echo "[$s]"
			for k in $(printf '%s\n' "${!kv[@]}" | grep "^$s\." | sort); do
				v=${kv[$k]}
				case "$v" in *" "*) v="\"$v\"" ;; esac
				echo "${k#*.} = $v"
			done
		done
	} >"$CONF"
}

# --migrate as the administrator login, on the database of $CONF's
# conninfo; then the daemon's login gets prepaid_daemon (roles are made by
# --migrate).
daemon_migrate()
{
	local ci

	ci=$(sed -n 's/^conninfo = "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CONF" | head -n 1)
	ci=$(echo "$ci" | sed "s/user=[^ ]*/user=$PG_ADMIN/")
	"$top_builddir/prepaidd" --migrate="$ci" >>"$DAEMON_LOG" 2>&1 ||
	    { tail -n 20 "$DAEMON_LOG" >&2; fail "prepaidd --migrate failed"; }
	"$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres \
	    -d postgres -c "GRANT prepaid_daemon TO $PG_DAEMON" >/dev/null 2>&1 ||
	    fail "GRANT prepaid_daemon failed"
}

# Start the daemon in the background and wait until it serves: /healthz
# answers 200 (connected to PostgreSQL and the broker) or, with the HTTP
# listener off, the log says it is ready.
daemon_start()
{
	local from deadline

	from=$(($(wc -l <"$DAEMON_LOG" 2>/dev/null || echo 0) + 1))
	echo "=== daemon_start $(date +%T)" >>"$DAEMON_LOG"
	$LIB_SETSID "$top_builddir/prepaidd" -c "$CONF" -v >>"$DAEMON_LOG" 2>&1 &
	DAEMON_PID=$!
	deadline=$(($(lib_now_ms) + 15000))
	while :; do
		if ! lib_alive "$DAEMON_PID"; then
			wait "$DAEMON_PID" && LIB_RC=0 || LIB_RC=$?
			DAEMON_PID=
			fail "prepaidd exited with status $LIB_RC during start-up"
		fi
		if [ -n "$HTTP_PORT" ] && [ "$(curl -s -o /dev/null -m 1 \
		    -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/healthz" || true)" = 200 ]; then
			return 0
		fi
		if tail -n "+$from" "$DAEMON_LOG" | grep -q "info: ready"; then
			return 0
		fi
		[ "$(lib_now_ms)" -lt "$deadline" ] ||
		    fail "prepaidd not ready within 15 s"
		sleep 0.2
	done
}

# SIGTERM and wait: a graceful stop must exit 0.
daemon_stop()
{
	[ -n "$DAEMON_PID" ] || return 0
	lib_terminate "$DAEMON_PID" 15
	DAEMON_PID=
	assert_eq 0 "$LIB_RC" "prepaidd exit status after SIGTERM"
}

daemon_reload()
{
	kill -HUP "$DAEMON_PID"
}

daemon_healthz()
{
	curl -s -o /dev/null -m 2 -w '%{http_code}' \
	    "http://127.0.0.1:$HTTP_PORT/healthz" || true
}

daemon_metrics()
{
	curl -s -m 2 "http://127.0.0.1:$HTTP_PORT/metrics"
}

# The value of one metric, by its name without the prepaidd_ prefix.
daemon_metric()
{
	daemon_metrics | awk -v n="prepaidd_$1" '$1 == n { print $2 }'
}

# Wait until the daemon's log (since line $2, default 1) matches the
# extended regular expression $1, within $3 seconds.
wait_log()
{
	local re=$1 from=${2:-1} secs=${3:-10} deadline

	deadline=$(($(lib_now_ms) + secs * 1000))
	until tail -n "+$from" "$DAEMON_LOG" | grep -qE "$re"; do
		daemon_check_alive
		[ "$(lib_now_ms)" -lt "$deadline" ] ||
		    fail "daemon log did not show /$re/ within ${secs}s"
		sleep 0.2
	done
	echo "ok - log shows /$re/"
}

daemon_log_lines()
{
	wc -l <"$DAEMON_LOG"
}

# --- the simulator

sim()
{
	timeout "${SIM_TIMEOUT:-40}" "$top_builddir/prepaid-sim" -h 127.0.0.1 -p "$BROKER_PORT" "$@"
}

# Run the simulator in the background; its output goes to $SIM_LOG, its
# process id is $SIM_PID.
sim_bg()
{
	SIM_LOG=$LIB_TMP/sim.${#LIB_PIDS[@]}.log
	$LIB_SETSID "$top_builddir/prepaid-sim" -h 127.0.0.1 -p "$BROKER_PORT" "$@" \
	    >"$SIM_LOG" 2>&1 &
	SIM_PID=$!
	LIB_PIDS+=("$SIM_PID")
}

# Record every command published to meters in $CMD_LOG ("topic payload"
# lines), from a subscription that is live when this returns.
cmd_watch()
{
	local deadline

	CMD_LOG=$LIB_TMP/cmd.log
	$LIB_SETSID mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -v -t 'meters/+/cmd' \
	    >"$CMD_LOG" 2>&1 &
	LIB_PIDS+=("$!")
	deadline=$(($(lib_now_ms) + 10000))
	until grep -q '^meters/WATCH/cmd probe$' "$CMD_LOG"; do
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "mosquitto_sub did not start"
		mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -t meters/WATCH/cmd -m probe
		sleep 0.2
	done
}

# Publish one raw message (QoS 1) with mosquitto_pub.
pub()
{
	mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -t "$1" -m "$2"
}

# --- waiting

# Fail at once, instead of at a time-out, when the daemon has died.
daemon_check_alive()
{
	local rc=0

	[ -n "$DAEMON_PID" ] || return 0
	lib_alive "$DAEMON_PID" && return 0
	wait "$DAEMON_PID" || rc=$?
	DAEMON_PID=
	fail "prepaidd exited unexpectedly with status $rc"
}

# The 99th percentile of a /metrics histogram (name, without _bucket)
# between two snapshots saved in files: the upper bound of the bucket that
# holds it, in ms (">1000" past the last bound, "?" when nothing was counted).
hist_p99_ms()
{
	awk -v name="$1_bucket" '
	    FNR == 1 { f++ }
	    index($0, name "{") == 1 {
		match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
		if (f == 1) b[le] = $2; else { a[le] = $2; order[++n] = le }
	    }
	    END {
		total = a["+Inf"] - b["+Inf"]
		for (i = 1; i <= n; i++) {
			c = a[order[i]] - b[order[i]]
			if (total > 0 && c >= 0.99 * total) {
				if (order[i] == "+Inf") print ">1000"; else print order[i] * 1000
				exit
			}
		}
		print "?"
	    }' "$2" "$3"
}

# Keys for the tests' payment gateway (tests/paysign) in $LIB_TMP/keys.
# Sets PAYSIGN, KEYS, WX_SERIAL (the platform certificate's serial),
# WX_PUBID (the public key's id) and PAY_KEYS_CONF: the [payments] keys of
# a daemon that takes WeChat Pay (/pay/wechat) and Alipay (/pay/alipay)
# callbacks signed with them, for daemon_config.
pay_keys()
{
	PAYSIGN=$top_builddir/tests/paysign
	[ -x "$PAYSIGN" ] || fail "tests/paysign is not built (make check builds it)"
	KEYS=$LIB_TMP/keys
	mkdir -p "$KEYS"
	"$PAYSIGN" keys "$KEYS" >"$LIB_TMP/keys.out" || fail "paysign keys failed"
	WX_SERIAL=$(sed -n 's/^wx_serial=//p' "$LIB_TMP/keys.out")
	WX_PUBID=$(sed -n 's/^wx_pubkey_id=//p' "$LIB_TMP/keys.out")
	[ -n "$WX_SERIAL" ] && [ -n "$WX_PUBID" ] || fail "paysign keys printed no serial or id"
	PAY_KEYS_CONF=(
		payments.wechat_path=/pay/wechat
		payments.wechat_mchid=1900000001
		payments.wechat_appids=wxd678efh567hg6787
		payments.wechat_apiv3_key_file="$KEYS/apiv3.key"
		payments.wechat_platform_certs="$KEYS/wx_platform.pem"
		payments.alipay_path=/pay/alipay
		payments.alipay_app_id=2021000000000001
		payments.alipay_public_key_file="$KEYS/alipay.pub"
	)
}

# Poll SQL (which returns t or f) every 0.2 s until it returns t.
wait_until()
{
	local sql=$1 secs=${2:-10} what=${3:-$1} deadline v=""

	deadline=$(($(lib_now_ms) + secs * 1000))
	while :; do
		v=$(psql_q "$sql" 2>&1) || true
		if [ "$v" = t ]; then
			echo "ok - $what"
			return 0
		fi
		daemon_check_alive
		[ "$(lib_now_ms)" -lt "$deadline" ] ||
		    fail "timed out after ${secs}s waiting for: $what (last value: $v)"
		sleep 0.2
	done
}

# Meter ids, one for each of the daemon's ingest connections: a meter's
# messages are written in order on the connection of its meter (FNV-1a of
# the id modulo [ingest] connections, as src/ingestpool.c routes them), so
# a marker reading written on each of them means that everything published
# before the markers is written. Prints MARK plus a number, one a line.
marker_ids()
{
	local n i c h id k
	local -A seen=()

	n=$(awk '/^\[/ { s = $1 } s == "[ingest]" && /^connections *=/ { sub(/.*= */, ""); v = $0 }
	    END { print v }' "$CONF" 2>/dev/null)
	# (The default, as the sample configuration shows it.)
	[ -n "$n" ] || n=$(awk '/^\[/ { s = $1 } s == "[ingest]" && /^;connections =/ { print $3 }' \
	    "$top_srcdir/etc/prepaidd.conf")
	[ -n "$n" ] || n=1
	for ((i = 0; ${#seen[@]} < n; i++)); do
		id=MARK$i
		h=2166136261
		for ((c = 0; c < ${#id}; c++)); do
			printf -v k '%d' "'${id:c:1}"
			h=$((((h ^ k) * 16777619) & 0xffffffff))
		done
		k=$((h % n))
		[ -n "${seen[$k]:-}" ] && continue
		seen[$k]=1
		echo "$id"
	done
}

# --- clean-up

# --- a second daemon on the same database and broker (tests of several
# instances): its own config (lib.sh's writer, swapped in), log and HTTP port.
CONF2=$LIB_TMP/prepaidd2.conf
DAEMON2_LOG=$LIB_TMP/prepaidd2.log
DAEMON2_PID=
HTTP2_PORT=

daemon2_config()
{
	local conf1=$CONF http1=$HTTP_PORT

	[ -n "$HTTP2_PORT" ] || HTTP2_PORT=$(free_port)
	CONF=$CONF2
	HTTP_PORT=$HTTP2_PORT
	daemon_config "journal.directory=$LIB_TMP/journal2" "$@"
	CONF=$conf1
	HTTP_PORT=$http1
}

daemon2_start()
{
	local deadline

	$LIB_SETSID "$top_builddir/prepaidd" -c "$CONF2" -v >>"$DAEMON2_LOG" 2>&1 &
	DAEMON2_PID=$!
	LIB_PIDS+=("$DAEMON2_PID")
	deadline=$(($(lib_now_ms) + 15000))
	until [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' \
	    "http://127.0.0.1:$HTTP2_PORT/healthz" || true)" = 200 ]; do
		lib_alive "$DAEMON2_PID" || fail "second prepaidd exited during start-up"
		[ "$(lib_now_ms)" -lt "$deadline" ] || fail "second prepaidd not ready within 15 s"
		sleep 0.2
	done
}

daemon2_stop()
{
	lib_terminate "$DAEMON2_PID" 15
	DAEMON2_PID=
	assert_eq 0 "$LIB_RC" "second prepaidd exit status after SIGTERM"
}

daemon2_metric()
{
	curl -s -m 2 "http://127.0.0.1:$HTTP2_PORT/metrics" |
	    awk -v n="prepaidd_$1" '$1 == n { print $2 }'
}

lib_cleanup()
{
	local rc=$? pid f

	set +e
	trap - EXIT INT TERM
	for pid in "${LIB_PIDS[@]}"; do
		lib_alive "$pid" && lib_terminate "$pid" 5
	done
	if [ -n "$DAEMON_PID" ]; then
		lib_terminate "$DAEMON_PID" 10
	fi
	broker_stop
	if [ -n "$PG_RUNNING" ]; then
		lib_as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m immediate -w \
		    stop >/dev/null 2>&1
	fi
	if [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
		if [ -s "$DAEMON_LOG" ]; then
			echo "--- last 60 lines of the prepaidd log:" >&2
			tail -n 60 "$DAEMON_LOG" >&2
		fi
		if [ -s "$DAEMON2_LOG" ]; then
			echo "--- last 30 lines of the second prepaidd log:" >&2
			tail -n 30 "$DAEMON2_LOG" >&2
		fi
		for f in "$LIB_TMP"/sim.*.log; do
			[ -s "$f" ] || continue
			echo "--- last 10 lines of $(basename "$f"):" >&2
			tail -n 10 "$f" >&2
		done
		if [ -s "$BROKER_LOG" ]; then
			echo "--- last 10 lines of the mosquitto log:" >&2
			tail -n 10 "$BROKER_LOG" >&2
		fi
		if [ -s "$PG_DIR/server.log" ]; then
			echo "--- last 10 lines of the PostgreSQL log:" >&2
			tail -n 10 "$PG_DIR/server.log" >&2
		fi
	fi
	if [ "${PREPAID_KEEP_TMP:-}" = 1 ]; then
		echo "kept $LIB_TMP" >&2
	else
		rm -rf "$LIB_TMP"
	fi
	exit "$rc"
}

trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
