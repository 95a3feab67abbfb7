#!/bin/bash
#
# tests/bench/ladder-bench.sh: the arrears ladder at scale. A PostgreSQL with
# fsync on holds LADDER_METERS meters (1,000,000 by default) with healthy
# balances; 1% of the balances change (half of those fall below the first
# threshold of the community policy, half stay above); then the sweep does
# the due work as the daemon runs it: prepaid_internal.ladder_sweep(LADDER_LIMIT),
# each call its own transaction, called again at once while a call returns
# the limit (src/ladder.c), opening an episode and queueing a low-balance
# SMS for each meter that fell. Prints the database time of finding and
# doing that work (all calls, and the longest one: how long a sweep holds
# its meters locked), and of an idle sweep (nothing due). Then meters in
# arrears keep using power: 5% of the fleet in open episodes each have their
# balance lowered a little, crossing no bound of the ladder (sql/ladder.sql), in
# one UPDATE, and the sweep runs again; once without the bounds (as in
# 004: every such meter is due and goes through ladder_step) and once with
# the bounds ladder_step wrote on that sweep. A measurement, not a test:
# exits 0 unless something broke. Environment: BUILD (default _build),
# LADDER_METERS, LADDER_LIMIT (default 200, what src/ladder.c passes).
set -e

top_srcdir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$top_srcdir/_build}
top_builddir=$(cd "$BUILD" && pwd)
export top_srcdir top_builddir
# shellcheck source=../lib.sh
. "$top_srcdir/tests/lib.sh"

N=${LADDER_METERS:-1000000}
CHANGED=$((N / 100))
ARREARS=$((N / 20))
LIMIT=${LADDER_LIMIT:-200}

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

# Sweep as the daemon does: ladder_sweep(LIMIT) on one connection (its
# plans cached as in the daemon's session), each call its own transaction,
# again at once while a call returns the limit. psql cannot loop, so each
# round sends a series of calls, each one skipped once a call returned less
# than the limit. Sets sweep_calls, sweep_meters, sweep_ms (all calls) and
# sweep_max_ms.
sweep()
{
	local out script rounds last

	sweep_calls=0 sweep_meters=0 sweep_ms=0 sweep_max_ms=0
	rounds=$(($(psql_q "SELECT count(*) FROM prepaid.meters
	    WHERE ladder_due_at <= prepaid.now()") / LIMIT + 2))
	while :; do
		script='\timing on
\set more true'
		for _ in $(seq "$rounds"); do
			script="$script
\\if :more
SELECT n, n >= $LIMIT AS more FROM prepaid_internal.ladder_sweep($LIMIT) n \\gset
\\echo calls :n
\\endif"
		done
		out=$(echo "$script" | "$PG_BINDIR/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres \
		    -d prepaid -X -q -A -t -v ON_ERROR_STOP=1)
		eval "$(echo "$out" | awk -v c="$sweep_calls" -v n="$sweep_meters" -v t="$sweep_ms" \
		    -v m="$sweep_max_ms" '
			/^Time: / { t += $2; if ($2 > m) m = $2 }
			/^calls / { c++; n += $2; last = $2 }
			END { printf "sweep_calls=%d sweep_meters=%d sweep_ms=%.3f sweep_max_ms=%.3f last=%d\n",
			    c, n, t, m, last }')"
		[ "$last" -ge "$LIMIT" ] || break
	done
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
# History, as a database in service has it: ended episodes of 5% of the
# meters. (On empty tables the plans of the foreign-key checks, cached for
# the session, scan the table: the sweep then slows down with every episode
# it opens until autovacuum analyzes, in a new database only.)
psql_q "INSERT INTO prepaid.arrears_episodes (meter_id, policy_id, started_at, ended_at,
        end_reason, start_balance, step_no)
    SELECT 'M' || i, 'community', now() - interval '30 days', now() - interval '20 days',
        'paid', 15, 1 FROM generate_series(1, $N / 20) i" >/dev/null
# Every new meter is due once, for the ladder to learn its threshold; with
# 100 yuan each that visit finds nothing to do: record its outcome directly.
psql_q "UPDATE prepaid.meters SET ladder_watch = 20, ladder_due_at = NULL" >/dev/null
psql_q "VACUUM ANALYZE" >/dev/null

note "1% of the balances change"
ms_change=$(timed "UPDATE prepaid.meters SET balance = CASE WHEN i % 2 = 0 THEN 15 ELSE 95 END,
    balance_fen = CASE WHEN i % 2 = 0 THEN 1500 ELSE 9500 END
    FROM generate_series(1, $CHANGED) i WHERE meter_id = 'M' || (i * 100)")
due=$(psql_q "SELECT count(*) FROM prepaid.meters WHERE ladder_due_at <= prepaid.now()")
sweep
episodes=$(psql_q "SELECT count(*) FROM prepaid.arrears_episodes WHERE ended_at IS NULL")
messages=$(psql_q "SELECT count(*) FROM prepaid.messages")
ms_idle=$(timed "SELECT prepaid_internal.ladder_sweep($LIMIT)")

printf '%-44s %s\n' "meters" "$N"
printf '%-44s %s\n' "balances changed" "$CHANGED ($ms_change ms, the ladder's trigger included)"
printf '%-44s %s\n' "meters due for the ladder" "$due (of $N)"
printf '%-44s %s\n' "sweep doing the due work" "$sweep_ms ms: $episodes episodes opened, $messages SMS queued"
printf '%-44s %s\n' "  in calls of ladder_sweep($LIMIT)" "$sweep_calls calls, $sweep_meters meters, longest $sweep_max_ms ms"
printf '%-44s %s\n' "idle sweep (nothing due)" "$ms_idle ms"
printf '%-44s %s\n' "target: due work found and done" "< 1000 ms: $(awk -v t="$sweep_ms" 'BEGIN { print (t < 1000) ? "PASS" : "MISS" }')"

note "$ARREARS meters in arrears use a little more"
# Meters M1, M21, M41...: none changed above. Each is in an open community
# episode at step 1 (15 yuan), its first SMS sent an hour ago, its repeat
# due in 23 hours: what ladder_step leaves for such a meter, without the
# bounds (written set-based, as rows written before 005 are).
psql_q "WITH a AS (SELECT 'M' || (20 * k + 1) AS meter_id
                   FROM generate_series(0, $ARREARS - 1) k),
    e AS (INSERT INTO prepaid.arrears_episodes (meter_id, policy_id, started_at,
              start_balance, step_no)
          SELECT meter_id, 'community', prepaid.now() - interval '1 hour', 15, 1 FROM a
          RETURNING episode_id, started_at),
    s AS (INSERT INTO prepaid.episode_steps (episode_id, step_no, reached_at)
          SELECT episode_id, 1, started_at FROM e)
    INSERT INTO prepaid.episode_sends (episode_id, step_no, repeat_no, channel, at, note)
    SELECT episode_id, 1, 0, 'sms', started_at, 'bench' FROM e" >/dev/null
psql_q "UPDATE prepaid.meters SET balance = 15, balance_fen = 1500
    WHERE meter_id IN (SELECT 'M' || (20 * k + 1) FROM generate_series(0, $ARREARS - 1) k)" >/dev/null
psql_q "UPDATE prepaid.meters SET ladder_watch = 20, ladder_rearmed = false,
        ladder_due_at = prepaid.now() + interval '23 hours',
        ladder_low = NULL, ladder_trip = NULL, ladder_high = NULL
    WHERE meter_id IN (SELECT 'M' || (20 * k + 1) FROM generate_series(0, $ARREARS - 1) k)" >/dev/null
psql_q "VACUUM ANALYZE" >/dev/null

# One reading's charge for each, in one UPDATE; then the sweep. $1: label.
arrears_round()
{
	local ms_use due_use

	ms_use=$(timed "UPDATE prepaid.meters SET balance = balance - 0.01, balance_fen = balance_fen - 1
	    WHERE meter_id IN (SELECT 'M' || (20 * k + 1) FROM generate_series(0, $ARREARS - 1) k)")
	due_use=$(psql_q "SELECT count(*) FROM prepaid.meters WHERE ladder_due_at <= prepaid.now()")
	sweep
	printf '%-44s %s\n' "$1: charge, one UPDATE" "$ms_use ms, $due_use meters made due"
	printf '%-44s %s\n' "$1: sweep" "$sweep_ms ms: $sweep_calls calls, $sweep_meters meters, longest $sweep_max_ms ms"
}
arrears_round "no bounds (as in 004)"
bounded=$(psql_q "SELECT count(*) FROM prepaid.meters WHERE ladder_high IS NOT NULL
    AND meter_id IN (SELECT 'M' || (20 * k + 1) FROM generate_series(0, $ARREARS - 1) k)")
printf '%-44s %s\n' "  bounds written by that sweep" "$bounded of $ARREARS meters"
arrears_round "bounds (005)"
sent=$(psql_q "SELECT count(*) FROM prepaid.episode_sends WHERE note IS DISTINCT FROM 'bench'
    AND episode_id IN (SELECT episode_id FROM prepaid.arrears_episodes e
                       WHERE e.meter_id IN (SELECT 'M' || (20 * k + 1)
                                            FROM generate_series(0, $ARREARS - 1) k))")
printf '%-44s %s\n' "  sent for the meters in arrears" "$sent (nothing was due)"
exit 0
