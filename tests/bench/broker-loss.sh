#!/usr/bin/env bash
#
# tests/bench/broker-loss.sh: what a mosquitto kill -9 costs a stopped
# daemon's queue, per persistence setting. For each setting: a persistent
# session subscribes to meters/+/reading (QoS 1) and goes away, like a
# stopped prepaidd; prepaid-sim publishes N readings at QoS 1 (all
# acknowledged by the broker, which queues them for the session); after a
# pause mosquitto is killed with -9 and started again; the session then
# collects what survived. Prints one line per setting: the setting, the
# publish rate the broker allowed, the readings acknowledged and those that
# survived. Manual: not part of make check.
#
# Usage: tests/bench/broker-loss.sh [readings] [pause seconds]
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
. "${top_srcdir:-$(cd "$(dirname "$0")/../.." && pwd)}/tests/lib.sh"

N=${1:-10000}
PAUSE=${2:-2}
skip_unless_tools

run()
{
	local label=$1 extra=$2 n=${3:-$N} rate survived

	rm -rf "$LIB_TMP/broker"
	BROKER_EXTRA=$extra
	broker_start
	mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -i lossd -c -q 1 -t 'meters/+/reading' \
	    -W 1 >/dev/null 2>&1 || true
	rate=$(sim -i LOS -n 100 --load "$n" --inflight 100 --no-commands 2>/dev/null |
	    sed -n 's/.*rate=\([0-9]*\).*/\1/p')
	sleep "$PAUSE"
	kill -9 "$BROKER_PID"
	wait "$BROKER_PID" 2>/dev/null || true
	BROKER_PID=
	broker_start "$BROKER_PORT"
	survived=$(timeout 20 mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -i lossd -c -q 1 \
	    -t 'meters/+/reading' -W 3 2>/dev/null | wc -l || true)
	broker_stop
	BROKER_EXTRA=
	printf '%-48s rate %6s/s  acknowledged %6d  survived %6d\n' "$label" "$rate" "$n" \
	    "$survived"
}

echo "mosquitto $("${MOSQUITTO:-/usr/sbin/mosquitto}" -h 2>/dev/null | head -n 1 |
    awk '{ print $3 }'): kill -9 ${PAUSE}s after $N readings were queued"
run "autosave_interval 60" "autosave_interval 60"
run "autosave_interval 1" "autosave_interval 1"
run "autosave_on_changes true, autosave_interval 1000" \
    "autosave_on_changes true
autosave_interval 1000"
run "autosave_on_changes true, autosave_interval 100" \
    "autosave_on_changes true
autosave_interval 100"
# A full snapshot per change: far slower, so fewer readings.
run "autosave_on_changes true, autosave_interval 1" \
    "autosave_on_changes true
autosave_interval 1" $((N / 20))
