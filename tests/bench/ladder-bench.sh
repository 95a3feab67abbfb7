#!/bin/bash
#
# tests/bench/ladder-bench.sh: the arrears ladder at scale. A PostgreSQL with
# fsync on holds LADDER_METERS meters (1,000,000 by default) with healthy
# balances; 1% of the balances change (half of those fall below the first
# threshold of the community policy, half stay above); then one sweep
# (prepaid.ladder_sweep, what the daemon runs every second) does the due
# work: opening an episode and queueing a low-balance SMS for each meter
# that fell. Prints the database time of finding and doing that work, and
# of an idle sweep (nothing due). A measurement, not a test: exits 0 unless
# something broke. Environment: BUILD (default _build), LADDER_METERS.
set -e

top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$top_srcdir/_build}
top_builddir=$(cd "$BUILD" && pwd)
export top_srcdir top_builddir
# shellcheck source=../lib.sh
. "$top_srcdir/tests/lib.sh"

N=${LADDER_METERS:-1000000}
CHANGED=$((N / 100))

skip_unless_tools
note "setting up: PostgreSQL (fsync on), schema, $N meters"
pg_start
for s in "fsync = on" "full_page_writes = on" "synchronous_commit = on" \
    "shared_buffers = '128MB'"; do
	psql_q "ALTER SYSTEM SET $s" >/dev/null
done
pg_restart
BROKER_PORT=$(free_port) # the config names one; no broker is needed here
daemon_config
daemon_migrate

# Time one statement in ms (psql's \timing, server round trip included).
timed()
{
	"$PG_BINDIR/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d prepaid -X -q -v ON_ERROR_STOP=1 \
	    -c '\timing on' -c "$1" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -n 1
}

psql_q "SELECT prepaid.create_tariff('flat', 'Flat');
    SELECT prepaid.create_tariff_version('flat', '2020-01-01', '{\"price\": 1}');
    UPDATE prepaid.sites SET default_tariff_id = 'flat', quiet_from = '00:00', quiet_until = '00:00';
    INSERT INTO prepaid.meters (meter_id, balance, last_seen)
        SELECT 'M' || i, 100, now() FROM generate_series(1, $N) i;
    INSERT INTO prepaid.occupants (occupant_id, name, phone, language)
        SELECT i, 'O' || i, '+86138' || lpad(i::text, 8, '0'), 'zh' FROM generate_series(1, $CHANGED) i;
    INSERT INTO prepaid.meter_occupants (meter_id, occupant_id)
        SELECT 'M' || (i * 100), i FROM generate_series(1, $CHANGED) i" >/dev/null
# Every new meter is due once, for the ladder to learn its threshold; with
# 100 yuan each that visit finds nothing to do: record its outcome directly.
psql_q "UPDATE prepaid.meters SET ladder_watch = 20, ladder_due_at = NULL" >/dev/null
psql_q "VACUUM ANALYZE prepaid.meters" >/dev/null

note "1% of the balances change"
ms_change=$(timed "UPDATE prepaid.meters SET balance = CASE WHEN i % 2 = 0 THEN 15 ELSE 95 END
    FROM generate_series(1, $CHANGED) i WHERE meter_id = 'M' || (i * 100)")
due=$(psql_q "SELECT count(*) FROM prepaid.meters WHERE ladder_due_at <= prepaid.now()")
ms_sweep=$(timed "SELECT prepaid.ladder_sweep($N)")
episodes=$(psql_q "SELECT count(*) FROM prepaid.arrears_episodes WHERE ended_at IS NULL")
messages=$(psql_q "SELECT count(*) FROM prepaid.messages")
ms_idle=$(timed "SELECT prepaid.ladder_sweep($N)")

printf '%-44s %s\n' "meters" "$N"
printf '%-44s %s\n' "balances changed" "$CHANGED ($ms_change ms, the ladder's trigger included)"
printf '%-44s %s\n' "meters due for the ladder" "$due (of $N)"
printf '%-44s %s\n' "sweep doing the due work" "$ms_sweep ms: $episodes episodes opened, $messages SMS queued"
printf '%-44s %s\n' "idle sweep (nothing due)" "$ms_idle ms"
printf '%-44s %s\n' "target: due work found and done" "< 1000 ms: $(awk -v t="$ms_sweep" 'BEGIN { print (t < 1000) ? "PASS" : "MISS" }')"
exit 0
