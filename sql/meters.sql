-- meters.sql: the meter link -- registering meters, partition upkeep of
-- readings, the command outbox (operator commands, the daemon's claim, the
-- audit trail), the batch ingest the daemon calls once per batch, and the
-- operator views of meters, commands, rejects and gaps.
--
-- Functions, views and triggers only: tables are in the numbered migrations.
-- `prepaidd --migrate` re-applies this file every time, after the pending
-- migrations, so every statement is idempotent: CREATE OR REPLACE, and
-- DROP TRIGGER IF EXISTS before CREATE TRIGGER. A function whose result
-- type changes, or a view whose columns change or go, needs a DROP ... IF
-- EXISTS before it. Objects in prepaid are the operator interface
-- (documented in prepaidd-sql(7)); those in prepaid_internal are called by
-- the daemon and by triggers only.

-- ---------------------------------------------------------------- tables

COMMENT ON TABLE prepaid.meters IS
	'One row per meter: its latest reading, relay state and when it was last heard from.';
COMMENT ON TABLE prepaid.readings IS
	'Every accepted reading, partitioned by month of ts; never updated.';
COMMENT ON TABLE prepaid.gaps IS
	'Runs of sequence numbers a meter skipped; filled_at is set once resent readings fill them.';
COMMENT ON TABLE prepaid.rejects IS
	'Input the daemon could not accept, with the reason; the newest [ingest] rejects_keep rows are kept.';
COMMENT ON TABLE prepaid.events IS
	'Meter events as the meters reported them: relay changes with their cause, tamper, power down and up.';
COMMENT ON TABLE prepaid.commands IS
	'The command outbox: trips, arms, closes, keep-power and resends, from queued to acknowledged or expired.';
COMMENT ON TABLE prepaid.session_losses IS
	'Broker sessions found lost on reconnect, and the resends requested for them.';
COMMENT ON TABLE prepaid.command_audit IS
	'Every state change of a command, naming the database role and the application.';
COMMENT ON TABLE prepaid.schema_migrations IS
	'The numbered migrations prepaidd --migrate applied.';
COMMENT ON TABLE prepaid.schema_code IS
	'The SHA-256 of the function and view files prepaidd --migrate applied last.';
COMMENT ON SCHEMA prepaid IS
	'The operator interface of prepaidd: see prepaidd-sql(7).';
COMMENT ON SCHEMA prepaid_internal IS
	'What the daemon and the triggers of prepaidd call; not an interface.';


-- Register a meter by hand (when [ingest] auto_register is off).
CREATE OR REPLACE FUNCTION prepaid.register_meter(p_meter text) RETURNS boolean
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	INSERT INTO prepaid.meters (meter_id) VALUES (p_meter)
	ON CONFLICT (meter_id) DO NOTHING
	RETURNING true;
$$;
COMMENT ON FUNCTION prepaid.register_meter(text) IS
	'Register a meter by hand (when [ingest] auto_register is off).';

CREATE OR REPLACE FUNCTION prepaid_internal.ensure_partitions(p_months_ahead integer DEFAULT 3)
RETURNS integer LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_month date;
	v_name text;
	v_from timestamptz;
	v_to timestamptz;
	v_created integer := 0;
BEGIN
	-- Several daemons may call this at once.
	PERFORM pg_advisory_xact_lock(hashtext('prepaid.ensure_partitions'));
	FOR i IN 0..p_months_ahead LOOP
		v_month := (date_trunc('month', now() AT TIME ZONE 'UTC')
		            + make_interval(months => i))::date;
		v_name := 'readings_' || to_char(v_month, 'YYYY"m"MM');
		CONTINUE WHEN to_regclass('prepaid.' || v_name) IS NOT NULL;
		v_from := v_month::timestamp AT TIME ZONE 'UTC';
		v_to := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
		EXECUTE format('CREATE TABLE prepaid.%I (LIKE prepaid.readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name);
		-- Rows that arrived before the partition existed move with it.
		EXECUTE format('WITH moved AS (DELETE FROM prepaid.readings_default WHERE ts >= %L AND ts < %L RETURNING *) INSERT INTO prepaid.%I SELECT * FROM moved',
		               v_from, v_to, v_name);
		EXECUTE format('ALTER TABLE prepaid.readings ATTACH PARTITION prepaid.%I FOR VALUES FROM (%L) TO (%L)',
		               v_name, v_from, v_to);
		v_created := v_created + 1;
	END LOOP;
	RETURN v_created;
END $$;

CREATE OR REPLACE FUNCTION prepaid_internal.command_audit_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO prepaid.command_audit (command_id, actor, application,
	    old_state, new_state, attempt, detail)
	VALUES (NEW.id, session_user, nullif(current_setting('application_name', true), ''),
	    CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state, NEW.attempts,
	    CASE WHEN TG_OP = 'INSERT' THEN NEW.reason ELSE NEW.detail END);
	RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS commands_audit_insert ON prepaid.commands;
CREATE TRIGGER commands_audit_insert AFTER INSERT ON prepaid.commands
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.command_audit_trigger();

DROP TRIGGER IF EXISTS commands_audit_update ON prepaid.commands;
CREATE TRIGGER commands_audit_update AFTER UPDATE ON prepaid.commands
	FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.attempts IS DISTINCT FROM NEW.attempts)
	EXECUTE FUNCTION prepaid_internal.command_audit_trigger();

-- ------------------------------------------------------- notifications

-- A NOTIFY makes its transaction's commit wait in line behind every other
-- notifying commit (PostgreSQL holds a lock on the notification queue
-- until the commit is flushed). The daemon recording a payment wakes its
-- own command outbox and message dispatcher right after the commit, so its
-- transactions ask for no NOTIFY (prepaid.notify = off, for the
-- transaction only); other daemons find such rows at their next poll.
CREATE OR REPLACE FUNCTION prepaid_internal.commands_notify_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('prepaid.notify', true) IS DISTINCT FROM 'off' THEN
		PERFORM pg_notify('prepaid_commands', '');
	END IF;
	RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS commands_notify ON prepaid.commands;
CREATE TRIGGER commands_notify AFTER INSERT ON prepaid.commands
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.commands_notify_trigger();

-- The general operator function: queue a command for a meter.
CREATE OR REPLACE FUNCTION prepaid.send_command(p_meter text, p_action text, p_reason text,
    p_valid_for interval DEFAULT interval '10 minutes', p_from_seq bigint DEFAULT NULL)
RETURNS text LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_id text;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM prepaid.meters WHERE meter_id = p_meter) THEN
		RAISE EXCEPTION 'unknown meter "%"', p_meter USING ERRCODE = 'no_data_found';
	END IF;
	IF p_action NOT IN ('trip', 'arm', 'close', 'keep_power_on', 'keep_power_off', 'resend') THEN
		RAISE EXCEPTION 'unknown action "%"', p_action
			USING ERRCODE = 'invalid_parameter_value',
			      HINT = 'one of trip, arm, close, keep_power_on, keep_power_off, resend';
	END IF;
	IF p_valid_for > interval '1 day' THEN
		RAISE EXCEPTION 'valid_for % is too long (at most 1 day)', p_valid_for
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO prepaid.commands (meter_id, action, reason, valid_until, from_seq)
	VALUES (p_meter, p_action, p_reason, now() + p_valid_for, p_from_seq)
	RETURNING id INTO v_id;
	RETURN v_id;
END $$;
COMMENT ON FUNCTION prepaid.send_command(text,text,text,interval,bigint) IS
	'Queue any meter command (trip, arm, close, keep_power_on, keep_power_off, resend); returns its id.';

CREATE OR REPLACE FUNCTION prepaid.trip(p_meter text, p_reason text,
    p_valid_for interval DEFAULT interval '10 minutes') RETURNS text
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$ SELECT prepaid.send_command(p_meter, 'trip', p_reason, p_valid_for) $$;
COMMENT ON FUNCTION prepaid.trip(text,text,interval) IS
	'Queue a remote trip (open the relay); returns the command id.';

CREATE OR REPLACE FUNCTION prepaid.arm(p_meter text, p_reason text,
    p_valid_for interval DEFAULT interval '10 minutes') RETURNS text
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$ SELECT prepaid.send_command(p_meter, 'arm', p_reason, p_valid_for) $$;
COMMENT ON FUNCTION prepaid.arm(text,text,interval) IS
	'Queue an arm: the occupant restores power with the meter''s button or card; returns the command id.';

CREATE OR REPLACE FUNCTION prepaid.close(p_meter text, p_reason text,
    p_valid_for interval DEFAULT interval '10 minutes') RETURNS text
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$ SELECT prepaid.send_command(p_meter, 'close', p_reason, p_valid_for) $$;
COMMENT ON FUNCTION prepaid.close(text,text,interval) IS
	'Queue a direct close of the relay; returns the command id.';

CREATE OR REPLACE FUNCTION prepaid.resend(p_meter text, p_from_seq bigint,
    p_valid_for interval DEFAULT interval '5 minutes') RETURNS text
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	SELECT prepaid.send_command(p_meter, 'resend', 'operator resend', p_valid_for, p_from_seq)
$$;
COMMENT ON FUNCTION prepaid.resend(text,bigint,interval) IS
	'Ask a meter to publish its readings again from a sequence number; returns the command id.';

-- Stop a command that has not been acknowledged (it is not published again).
CREATE OR REPLACE FUNCTION prepaid.cancel_command(p_id text, p_reason text) RETURNS boolean
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	UPDATE prepaid.commands SET state = 'cancelled', detail = p_reason
	WHERE id = p_id AND state IN ('queued', 'sent')
	RETURNING true;
$$;
COMMENT ON FUNCTION prepaid.cancel_command(text,text) IS
	'Stop a command not yet acknowledged; true if it was stopped.';

-- Called by the daemon: expire what is past valid_until, then claim due
-- commands, mark them sent (with the next retry time) and return them. The
-- daemon publishes only after this transaction has committed. Every trip is
-- checked against the trip guards (prepaid_internal.trip_guard) inside this
-- transaction; a failing guard defers it (with a new validity from then),
-- cancels it, or quarantines it, and says why in command_audit. A trip that
-- expires unacknowledged is 'unknown', never re-issued under a new id.
--
-- The due and expiry tests compare with now() (the claim is a transaction
-- of its own, so now() is when it started), not clock_timestamp(), so that
-- they can use the indexes commands_due and commands_expiry; the rows to
-- update are chosen once, in a materialised CTE: joined as a subquery, a
-- planner that believed the table empty (a fresh database, statistics not
-- yet gathered) re-ran it for every row of the table.
CREATE OR REPLACE FUNCTION prepaid_internal.claim_commands(p_limit integer, p_retry_initial interval,
    p_retry_max interval)
RETURNS TABLE (id text, meter_id text, action text, from_seq bigint,
    valid_until timestamptz, attempts integer)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	t record;
	g record;
BEGIN
	WITH e AS MATERIALIZED (
		SELECT x.id FROM prepaid.commands x
		WHERE x.state IN ('queued', 'sent') AND x.valid_until <= now()
		FOR UPDATE SKIP LOCKED)
	UPDATE prepaid.commands c
	SET state = CASE WHEN c.action = 'trip' AND c.state = 'sent' THEN 'unknown' ELSE 'expired' END,
	    detail = CASE WHEN c.action = 'trip' AND c.state = 'sent'
	                  THEN 'not confirmed within its validity: check the meter'
	                  ELSE 'valid_until passed before an acknowledgement' END
	FROM e
	WHERE c.id = e.id;

	-- Trips about to be sent for the first time pass the guards first.
	FOR t IN SELECT x.id, x.valid_until - x.next_attempt_at AS validity FROM prepaid.commands x
	         WHERE x.action = 'trip' AND x.state = 'queued'
	           AND x.next_attempt_at <= now()
	         ORDER BY x.next_attempt_at LIMIT p_limit
	         FOR UPDATE SKIP LOCKED LOOP
		g := prepaid_internal.trip_guard(t.id);
		IF g.verdict IS NULL THEN
			-- passed: counts for the breaker of the next trips of this batch
			UPDATE prepaid.commands c SET sent_at = clock_timestamp() WHERE c.id = t.id;
			CONTINUE;
		END IF;
		UPDATE prepaid.commands c SET
			state = CASE g.verdict WHEN 'cancel' THEN 'cancelled'
			                       WHEN 'quarantine' THEN 'quarantined' ELSE 'queued' END,
			next_attempt_at = CASE WHEN g.verdict = 'defer'
			                       THEN g.until - (prepaid.now() - clock_timestamp())
			                       ELSE c.next_attempt_at END,
			valid_until = CASE WHEN g.verdict = 'defer'
			                   THEN g.until - (prepaid.now() - clock_timestamp()) + greatest(t.validity, interval '1 minute')
			                   ELSE c.valid_until END,
			attempts = c.attempts,
			detail = g.verdict || ': ' || g.reason
		WHERE c.id = t.id;
		-- a deferral is a state change only in its detail: audit it
		IF g.verdict = 'defer' THEN
			INSERT INTO prepaid.command_audit (command_id, actor, application, old_state,
			    new_state, attempt, detail)
			VALUES (t.id, session_user, current_setting('application_name', true), 'queued',
			    'queued', 0, 'deferred: ' || g.reason);
		END IF;
		UPDATE prepaid.arrears_episodes SET trip_state = CASE g.verdict WHEN 'cancel' THEN 'cancelled'
		    ELSE trip_state END, trip_note = g.verdict || ': ' || g.reason
		WHERE trip_command = t.id;
	END LOOP;

	RETURN QUERY
	WITH d AS MATERIALIZED (
		SELECT x.id FROM prepaid.commands x
		WHERE x.state IN ('queued', 'sent') AND x.next_attempt_at <= now()
		  AND x.valid_until > clock_timestamp() + interval '1 second'
		ORDER BY x.next_attempt_at
		LIMIT p_limit
		FOR UPDATE SKIP LOCKED)
	UPDATE prepaid.commands c
	SET state = 'sent', attempts = c.attempts + 1, sent_at = clock_timestamp(),
	    next_attempt_at = clock_timestamp()
	        + least(p_retry_max, p_retry_initial * power(2, least(c.attempts, 20)))
	FROM d
	WHERE c.id = d.id
	RETURNING c.id, c.meter_id, c.action, c.from_seq, c.valid_until, c.attempts;
END $$;

-- ----------------------------------------------------------------- ingest

-- The batch the daemon sends once per [ingest] batch_window_ms: readings,
-- events, acknowledgements and refused input of many meters, written in one
-- transaction with their effect -- readings stored, sequence gaps opened
-- (and resends queued) or filled, what the readings consumed charged to the
-- ledger and the balance, relay states updated, commands acknowledged,
-- rejects kept and pruned. Each job is a helper below, all in the caller's
-- transaction; this function only says in which order they run.
CREATE OR REPLACE FUNCTION prepaid_internal.ingest_batch(
    p_meter text[], p_seq bigint[], p_ts timestamptz[], p_energy bigint[],
    p_relay text[], p_power double precision[], p_voltage double precision[],
    p_current double precision[], p_received timestamptz[],
    p_events jsonb, p_acks jsonb, p_rejects jsonb,
    p_auto_register boolean, p_resend_on_gap boolean, p_rejects_keep integer,
    p_topic_prefix text,
    OUT inserted integer, OUT duplicates integer, OUT gaps integer,
    OUT unknown integer, OUT filled integer, OUT events integer,
    OUT acks integer, OUT rejects integer)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
SET jit = off
AS $$
DECLARE
	v_ids text[];
	m record;   -- the batch's meters, locked, with their state
	r record;   -- what a helper did
	a record;   -- the meters to charge ahead (charge_next)
	v_many text[];   -- meters with several new intervals
	v_ahead text[];  -- meters charged ahead
	v_round integer;
	v_sm text[]; v_sf timestamptz[]; v_st timestamptz[];  -- standing days due
BEGIN
	inserted := 0; duplicates := 0; gaps := 0; unknown := 0; filled := 0;
	events := 0; acks := 0; rejects := 0;

	v_ids := prepaid_internal.ingest_meter_ids(p_meter, p_events, p_acks);
	IF p_auto_register AND v_ids IS NOT NULL THEN
		PERFORM prepaid_internal.ingest_register(v_ids);
	END IF;
	m := prepaid_internal.ingest_lock(v_ids);

	IF coalesce(cardinality(p_meter), 0) > 0 THEN
		r := prepaid_internal.ingest_readings(p_meter, p_seq, p_ts, p_energy, p_relay,
		    p_power, p_voltage, p_current, p_received, m.known, m.last, m.last_ts,
		    m.last_wh, m.first, m.first_ts, m.first_wh, p_resend_on_gap, p_topic_prefix);
		inserted := r.inserted; gaps := r.gaps; unknown := r.unknown; filled := r.filled;
		duplicates := cardinality(p_meter) - inserted - unknown - r.n_held;
		-- Meters whose new readings the fast path did not charge: several
		-- new intervals take the fast path as far as it goes, the rest
		-- the full one.
		IF r.slow_meter IS NOT NULL THEN
			IF true = ANY (r.slow_many) THEN
				v_many := (SELECT array_agg(k.m) FROM unnest(r.slow_meter, r.slow_many) AS k(m, many)
				           WHERE k.many);
				r := prepaid_internal.charge_fast(r.slow_meter, r.slow_last, r.slow_last_ts,
				    r.slow_last_wh, r.slow_late, r.slow_many);
				-- Charging ahead: where the fast path stopped at the end of
				-- a meter's rate cache (a local midnight, a band or tier
				-- edge) with more intervals to go, the full rating takes
				-- the next interval only, its reading refreshes the cache,
				-- and the fast path goes on. Standing days wait until
				-- every part is written (see below).
				FOR v_round IN 1..3 LOOP
					EXIT WHEN r.slow_meter IS NULL;
					a := prepaid_internal.charge_next(r.slow_meter, r.slow_last, r.slow_last_ts,
					    r.slow_last_wh, r.slow_late, v_many);
					EXIT WHEN a.a_meter IS NULL;
					PERFORM prepaid_internal.charge_slow(a.a_meter, a.a_last, a.a_last_ts,
					    a.a_last_wh, array_fill(false, ARRAY[cardinality(a.a_meter)]),
					    a.a_meter, a.a_seq, a.a_ts, a.a_wh, true);
					v_ahead := v_ahead || a.a_meter;
					r := prepaid_internal.charge_fast(a.n_meter, a.n_last, a.n_last_ts,
					    a.n_last_wh, a.n_late, a.n_many);
				END LOOP;
			END IF;
			IF r.slow_meter IS NOT NULL THEN
				PERFORM prepaid_internal.charge_slow(r.slow_meter, r.slow_last, r.slow_last_ts,
				    r.slow_last_wh, r.slow_late, p_meter, p_seq, p_ts, p_energy);
			END IF;
			-- The standing days of the meters charged ahead that the full
			-- rating did not finish (it writes them itself), as it would:
			-- the local days from their earliest stored reading of the
			-- batch to their latest.
			IF v_ahead IS NOT NULL THEN
				SELECT array_agg(k.m), array_agg(k.f), array_agg(k.t) INTO v_sm, v_sf, v_st
				FROM (SELECT x.meter_id AS m, min(x.ts) AS f, max(x.ts) AS t
				      FROM unnest(p_meter, p_seq) AS u(m, s)
				      JOIN prepaid.readings x ON x.meter_id = u.m AND x.seq = u.s
				      WHERE u.m = ANY (v_ahead)
				        AND (r.slow_meter IS NULL OR u.m <> ALL (r.slow_meter))
				      GROUP BY x.meter_id) k;
				IF v_sm IS NOT NULL THEN
					PERFORM prepaid_internal.charge('{}', '{}', '{}', '{}', '{}', '{}',
					    v_sm, v_sf, v_st);
				END IF;
			END IF;
		END IF;
	END IF;
	IF filled > 0 THEN
		PERFORM prepaid_internal.ingest_fill_gaps(v_ids);
	END IF;
	IF jsonb_array_length(p_events) > 0 THEN
		r := prepaid_internal.ingest_events(p_events, p_topic_prefix);
		events := r.events;
		unknown := unknown + r.unknown;
	END IF;
	IF jsonb_array_length(p_acks) > 0 THEN
		r := prepaid_internal.ingest_acks(p_acks, p_topic_prefix);
		acks := r.acks;
		rejects := rejects + r.rejects;
	END IF;
	IF jsonb_array_length(p_rejects) > 0 THEN
		rejects := rejects + prepaid_internal.ingest_rejects(p_rejects);
	END IF;
	IF rejects + unknown > 0 THEN
		PERFORM prepaid_internal.prune_rejects(p_rejects_keep);
	END IF;
END $$;

-- Every meter a batch touches, in id order.
CREATE OR REPLACE FUNCTION prepaid_internal.ingest_meter_ids(p_meter text[], p_events jsonb,
    p_acks jsonb)
RETURNS text[] LANGUAGE plpgsql STABLE AS $$
BEGIN
	RETURN (SELECT array_agg(DISTINCT m ORDER BY m) FROM (
		SELECT unnest(p_meter) COLLATE "C" AS m
		UNION ALL SELECT e->>'meter' FROM jsonb_array_elements(p_events) e
		UNION ALL SELECT a->>'meter' FROM jsonb_array_elements(p_acks) a) x
	WHERE m IS NOT NULL);
END $$;

-- Register new meters ([ingest] auto_register) before locking any, in id
-- order: a batch that waits here (another daemon registering the same
-- meter) holds no meter lock, so two batches cannot deadlock.
CREATE OR REPLACE FUNCTION prepaid_internal.ingest_register(p_ids text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO prepaid.meters (meter_id, auto_registered)
	SELECT m, true FROM unnest(p_ids) m
	WHERE NOT EXISTS (SELECT 1 FROM prepaid.meters x WHERE x.meter_id = m)
	ON CONFLICT (meter_id) DO NOTHING;
END $$;

-- Lock the batch's meters, reading their state in the same pass. Batches
-- of several daemons that touch the same meters are serialised here, in
-- meter order so that two batches cannot deadlock; NO KEY UPDATE leaves
-- operators free to insert commands referencing the meters meanwhile.
-- Unknown meters (auto_register off) are not in known.
CREATE OR REPLACE FUNCTION prepaid_internal.ingest_lock(p_ids text[],
    OUT known text[], OUT last bigint[], OUT last_ts timestamptz[], OUT last_wh bigint[],
    OUT first bigint[], OUT first_ts timestamptz[], OUT first_wh bigint[])
LANGUAGE plpgsql AS $$
BEGIN
	-- (The arrays are only ever joined on the meter, so any order will do
	-- as long as it is the same in all: one aggregate node fills them all
	-- from the same rows. An ORDER BY in each would sort the batch seven
	-- times more.)
	SELECT array_agg(x.meter_id), array_agg(x.last_seq), array_agg(x.last_ts),
	       array_agg(x.last_energy_wh), array_agg(x.first_seq), array_agg(x.first_ts),
	       array_agg(x.first_wh)
	INTO known, last, last_ts, last_wh, first, first_ts, first_wh
	FROM (SELECT x.meter_id, x.last_seq, x.last_ts, x.last_energy_wh, x.first_seq, x.first_ts,
	             x.first_wh
	      FROM prepaid.meters x
	      WHERE x.meter_id = ANY (p_ids) ORDER BY x.meter_id FOR NO KEY UPDATE) x;
END $$;

-- The readings of a batch, in one set-based statement whose parts are the
-- jobs a reading sets off: classify each reading (new, repeat, a reading
-- between stored ones, held for a seq out of range, unknown meter) against
-- the locked meters' state (p_known ...); hold the out-of-range ones (hold);
-- store the new ones (ins); open gaps for skipped sequence numbers (newgaps,
-- gins) and queue their resends (resend, rins); charge the common case, one
-- interval the meter's rate cache covers (fast, fled); move the meters'
-- last and first readings, relay and balance (upd); and keep the readings
-- of unknown meters as rejects (unk). It stays one statement because every
-- part reads the same classification: split into statements, each would
-- rebuild it or need it stored, and the batch would be slower. The meters
-- the fast path did not charge come back in slow_* (slow_many: several new
-- intervals, none late, for charge_fast() first) for charge_slow().
--
-- The statement is written so that its plan does not depend on row
-- estimates (PL/pgSQL keeps a generic plan after a few calls): one pass
-- classifies each reading, one aggregate per meter feeds the meter update,
-- with no join between derived sets.
DROP FUNCTION IF EXISTS prepaid_internal.ingest_readings(text[], bigint[], timestamptz[],
    bigint[], text[], double precision[], double precision[], double precision[],
    timestamptz[], text[], bigint[], timestamptz[], bigint[], bigint[], timestamptz[],
    bigint[], boolean, text);
CREATE OR REPLACE FUNCTION prepaid_internal.ingest_readings(
    p_meter text[], p_seq bigint[], p_ts timestamptz[], p_energy bigint[],
    p_relay text[], p_power double precision[], p_voltage double precision[],
    p_current double precision[], p_received timestamptz[],
    p_known text[], p_last bigint[], p_last_ts timestamptz[], p_last_wh bigint[],
    p_first bigint[], p_first_ts timestamptz[], p_first_wh bigint[],
    p_resend_on_gap boolean, p_topic_prefix text,
    OUT inserted integer, OUT gaps integer, OUT unknown integer, OUT filled integer,
    OUT n_held integer, OUT slow_meter text[], OUT slow_last bigint[],
    OUT slow_last_ts timestamptz[], OUT slow_last_wh bigint[], OUT slow_late boolean[],
    OUT slow_many boolean[])
LANGUAGE plpgsql
SET jit = off
AS $$
BEGIN
	WITH cls0 AS (
		SELECT u.*, k.last AS old_last, k.lts AS old_ts, k.lwh AS old_wh,
		       k.first AS old_first, k.fts AS old_first_ts, k.fwh AS old_first_wh,
		       k.m IS NOT NULL AS known,
		       row_number() OVER (PARTITION BY u.m COLLATE "C", u.s ORDER BY u.rcv) AS rn,
		       -- the highest and the lowest seq of the meter's readings in
		       -- the batch (the three windows are computed from one sort,
		       -- bytewise whatever the database's collation)
		       max(u.s) OVER (PARTITION BY u.m COLLATE "C") AS bmax,
		       min(u.s) OVER (PARTITION BY u.m COLLATE "C") AS bmin
		FROM unnest(p_meter, p_seq, p_ts, p_energy, p_relay, p_power,
		            p_voltage, p_current, p_received)
		     AS u(m, s, t, e, r, pw, v, c, rcv)
		LEFT JOIN unnest(p_known, p_last, p_last_ts, p_last_wh, p_first, p_first_ts, p_first_wh)
		     AS k(m, last, lts, lwh, first, fts, fwh) ON k.m = u.m
	), cls AS (
		-- held: a seq more than 1,000,000 above the meter's highest stored
		-- when the batch began, or below its lowest (a new meter's: from the
		-- batch's lowest); never stored (seq_out_of_range).
		-- fresh: first copy in the batch, of a known meter, not held, and
		-- either beyond the meter's last seq, before its first, or a seq
		-- between them not stored yet (a gap filled, or one left by a
		-- reading older than the first).
		SELECT c.*,
		       -- the meter's reading with the highest seq (its first copy), and
		       -- the one with the lowest
		       rn = 1 AND s = bmax AS top, rn = 1 AND s = bmin AS bot,
		       known AND rn = 1 AND NOT held AND (old_last IS NULL OR s > old_last OR s < old_first
		           OR NOT EXISTS (SELECT 1 FROM prepaid.readings x
		                          WHERE x.meter_id = c.m AND x.seq = c.s)) AS fresh,
		       old_last IS NULL OR s > old_last AS ahead,
		       coalesce(s < old_first, false) AS behind
		FROM (SELECT cls0.*,
		             known AND rn = 1 AND (s - coalesce(old_last, bmin) > 1000000
		                                   OR coalesce(old_first, bmin) - s > 1000000) AS held
		      FROM cls0) c
	), ins AS (
		INSERT INTO prepaid.readings (meter_id, seq, ts, energy_wh, relay,
		    power_w, voltage_v, current_a, received_at, ingested_at)
		SELECT m, s, t, e, r, pw, v, c, rcv, clock_timestamp() FROM cls WHERE fresh
		RETURNING 1
	), hold AS (
		INSERT INTO prepaid.anomalies (meter_id, kind, from_seq, to_seq, from_ts, to_ts,
		    from_wh, to_wh, energy_wh, state)
		SELECT m, 'seq_out_of_range', s, s, t, t, e, e, 0, 'open' FROM cls
		WHERE held AND NOT EXISTS (SELECT 1 FROM prepaid.anomalies a
		                           WHERE a.meter_id = cls.m AND a.kind = 'seq_out_of_range'
		                             AND a.to_seq = cls.s AND a.state = 'open')
		RETURNING 1
	), newgaps AS (
		SELECT m, prev + 1 AS gf, s - 1 AS gt FROM (
			SELECT m, s, coalesce(lag(s) OVER (PARTITION BY m ORDER BY s), old_last) AS prev
			FROM cls WHERE fresh AND ahead) x
		WHERE prev IS NOT NULL AND s - prev > 1
	), resend AS (
		SELECT m, min(gf) AS from_seq, gen_random_uuid()::text AS cmd
		FROM newgaps WHERE p_resend_on_gap GROUP BY m
	), rins AS (
		-- Sent after a short delay: with several daemons sharing the
		-- readings, the "missing" one is often just being written by
		-- another; a gap filled meanwhile cancels its resend.
		INSERT INTO prepaid.commands (id, meter_id, action, from_seq, reason, valid_until,
		    next_attempt_at)
		SELECT cmd, m, 'resend', from_seq, 'sequence gap', now() + interval '5 minutes',
		       now() + interval '2 seconds'
		FROM resend
		RETURNING 1
	), gins AS (
		INSERT INTO prepaid.gaps (meter_id, from_seq, to_seq, resend_command_id)
		SELECT g.m, g.gf, g.gt, (SELECT r.cmd FROM resend r WHERE r.m = g.m)
		FROM newgaps g
		RETURNING 1
	), agg AS (
		SELECT m, count(*) AS nall, count(*) FILTER (WHERE fresh) AS nfresh,
		       count(*) FILTER (WHERE fresh AND ahead) AS nahead,
		       -- the newest reading: the top one, if it is new (if the top one
		       -- is not new, no reading of the batch is beyond the meter's last)
		       max(s) FILTER (WHERE top AND fresh AND ahead) AS ls,
		       max(t) FILTER (WHERE top AND fresh AND ahead) AS lt,
		       max(e) FILTER (WHERE top AND fresh AND ahead) AS le,
		       max(r) FILTER (WHERE top AND fresh AND ahead) AS lr,
		       count(*) FILTER (WHERE fresh AND behind) AS nbehind,
		       count(*) FILTER (WHERE fresh AND NOT ahead AND NOT behind) AS nfill,
		       -- the new first reading, if this batch brings one
		       max(s) FILTER (WHERE bot AND fresh AND (old_first IS NULL OR behind)) AS fs_,
		       max(t) FILTER (WHERE bot AND fresh AND (old_first IS NULL OR behind)) AS ft,
		       max(e) FILTER (WHERE bot AND fresh AND (old_first IS NULL OR behind)) AS fe,
		       max(old_last) AS old_last, max(old_ts) AS old_ts, max(old_wh) AS old_wh,
		       max(old_first) AS old_first, max(old_first_ts) AS old_first_ts,
		       max(old_first_wh) AS old_first_wh
		FROM cls WHERE known GROUP BY m
	), fast AS (
		-- The fast path of charging: one new interval that the meter's
		-- rate cache covers (see prepaid_internal.fast_rate); amt is NULL otherwise,
		-- and the meter goes to prepaid_internal.charge_slow() below.
		SELECT a.*, a.le - a.old_wh AS wh,
		       mt.rate_vid, mt.rate_tier, mt.rate_band, mt.rate_price, mt.rate_service,
		       mt.rate_day, mt.rate_period, mt.exact_fen AS x0,
		       -- amt: the exact fen of the interval
		       CASE WHEN a.nahead = 1 AND a.nbehind = 0 AND a.nfill = 0 AND a.old_last IS NOT NULL
		            THEN prepaid_internal.fast_rate(mt, a.old_ts, a.lt, a.le - a.old_wh) * 100 END AS amt
		FROM agg a JOIN prepaid.meters mt ON mt.meter_id = a.m
	), fled AS (
		-- whole fen by the carry: floor(X + amt) - floor(X)
		INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, exact_fen, from_seq,
		    to_seq, from_ts, to_ts, energy_wh, tariff_version_id, tier, band, price,
		    service_fee, period_start, author)
		SELECT m, rate_day, 'charge', -(floor(x0 + amt) - floor(x0))::bigint, -amt, old_last,
		       ls, old_ts, lt, wh, rate_vid, rate_tier, rate_band, rate_price,
		       CASE WHEN amt = 0 THEN 0 ELSE rate_service END, rate_period, 'prepaidd'
		FROM fast WHERE amt IS NOT NULL AND rate_vid IS NOT NULL AND wh > 0
		RETURNING 1
	), upd AS (
		UPDATE prepaid.meters mt SET
			last_seq = coalesce(a.ls, mt.last_seq),
			last_ts = coalesce(a.lt, mt.last_ts),
			last_energy_wh = coalesce(a.le, mt.last_energy_wh),
			relay = CASE WHEN a.lr IS NOT NULL AND (mt.relay_at IS NULL OR a.lt >= mt.relay_at)
			             THEN a.lr ELSE mt.relay END,
			relay_at = CASE WHEN a.lr IS NOT NULL AND (mt.relay_at IS NULL OR a.lt >= mt.relay_at)
			                THEN a.lt ELSE mt.relay_at END,
			relay_source = CASE WHEN a.lr IS NOT NULL AND (mt.relay_at IS NULL OR a.lt >= mt.relay_at)
			                    THEN 'reading' ELSE mt.relay_source END,
			last_seen = now(),
			readings = mt.readings + a.nfresh,
			duplicates = mt.duplicates + a.nall - a.nfresh,
			first_seq = coalesce(a.fs_, mt.first_seq),
			first_ts = CASE WHEN a.fs_ IS NOT NULL THEN a.ft ELSE mt.first_ts END,
			first_wh = CASE WHEN a.fs_ IS NOT NULL THEN a.fe ELSE mt.first_wh END,
			exact_fen = mt.exact_fen + CASE WHEN a.rate_vid IS NOT NULL AND a.wh > 0
			                                THEN coalesce(a.amt, 0) ELSE 0 END,
			balance_fen = mt.balance_fen - CASE WHEN a.amt IS NOT NULL AND a.rate_vid IS NOT NULL
			        AND a.wh > 0 THEN (floor(a.x0 + a.amt) - floor(a.x0))::bigint ELSE 0 END,
			balance = (mt.balance_fen - CASE WHEN a.amt IS NOT NULL AND a.rate_vid IS NOT NULL
			        AND a.wh > 0 THEN (floor(a.x0 + a.amt) - floor(a.x0))::bigint ELSE 0 END) / 100.0,
			rated_ts = CASE WHEN a.amt IS NOT NULL AND a.rate_vid IS NOT NULL AND a.wh > 0
			                THEN a.lt ELSE mt.rated_ts END,
			period_wh = mt.period_wh + CASE WHEN a.amt IS NOT NULL AND a.rate_vid IS NOT NULL
			                                THEN a.wh ELSE 0 END
		FROM fast a
		WHERE mt.meter_id = a.m
		RETURNING 1
	), unk AS (
		INSERT INTO prepaid.rejects (received_at, meter_id, topic, reason, payload)
		SELECT rcv, m, p_topic_prefix || '/' || m || '/reading',
		       'unknown meter (auto_register is off)',
		       convert_to(json_build_object('seq', s, 'ts', t, 'energy_wh', e)::text, 'UTF8')
		FROM cls WHERE NOT known
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM gins),
	       (SELECT count(*) FROM unk),
	       (SELECT count(*) FROM cls WHERE fresh AND NOT ahead AND NOT behind),
	       (SELECT count(*) FROM hold),
	       sl.m, sl.s, sl.t, sl.e, sl.late, sl.many
	INTO inserted, gaps, unknown, filled, n_held, slow_meter, slow_last, slow_last_ts,
	     slow_last_wh, slow_late, slow_many
	FROM (SELECT array_agg(m) AS m, array_agg(old_last) AS s, array_agg(old_ts) AS t,
	             array_agg(old_wh) AS e, array_agg(nbehind > 0 OR nfill > 0) AS late,
	             array_agg(nahead > 1 AND nbehind = 0 AND nfill = 0
	                       AND old_last IS NOT NULL) AS many
	      FROM fast WHERE (amt IS NULL AND nahead > 0) OR nbehind > 0 OR nfill > 0) sl;
	-- A held reading may have been the batch's highest (or lowest): the
	-- meter's latest (first) reading is then the highest (lowest) stored.
	IF n_held > 0 THEN
		UPDATE prepaid.meters mt SET last_seq = r.seq, last_ts = r.ts, last_energy_wh = r.energy_wh
		FROM (SELECT DISTINCT ON (x.meter_id) x.meter_id, x.seq, x.ts, x.energy_wh
		      FROM prepaid.readings x
		      WHERE x.meter_id IN (SELECT a.meter_id FROM prepaid.anomalies a
		                           WHERE a.kind = 'seq_out_of_range' AND a.state = 'open'
		                             AND a.meter_id = ANY (p_known))
		      ORDER BY x.meter_id, x.seq DESC) r
		WHERE mt.meter_id = r.meter_id AND r.seq > coalesce(mt.last_seq, -1);
		UPDATE prepaid.meters mt SET first_seq = r.seq, first_ts = r.ts, first_wh = r.energy_wh
		FROM (SELECT DISTINCT ON (x.meter_id) x.meter_id, x.seq, x.ts, x.energy_wh
		      FROM prepaid.readings x
		      WHERE x.meter_id IN (SELECT a.meter_id FROM prepaid.anomalies a
		                           WHERE a.kind = 'seq_out_of_range' AND a.state = 'open'
		                             AND a.meter_id = ANY (p_known))
		      ORDER BY x.meter_id, x.seq) r
		WHERE mt.meter_id = r.meter_id AND (mt.first_seq IS NULL OR r.seq < mt.first_seq);
	END IF;
END $$;

-- Readings that arrived into open gaps (a resend): shrink or split the
-- gaps, mark the ones filled, and cancel a resend no longer needed.
CREATE OR REPLACE FUNCTION prepaid_internal.ingest_fill_gaps(p_ids text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	v_n integer;
BEGIN
	WITH g AS (
		SELECT id, meter_id, from_seq, to_seq, detected_at, resend_command_id
		FROM prepaid.gaps
		WHERE filled_at IS NULL AND meter_id = ANY (p_ids)
	), f AS (
		SELECT DISTINCT g.id, r.seq FROM g
		JOIN prepaid.readings r ON r.meter_id = g.meter_id
		     AND r.seq BETWEEN g.from_seq AND g.to_seq
	), b AS (
		SELECT f.id, g.meter_id, g.from_seq, g.to_seq, f.seq,
		       lag(f.seq) OVER w AS prev, lead(f.seq) OVER w AS next
		FROM f JOIN g ON g.id = f.id
		WINDOW w AS (PARTITION BY f.id ORDER BY f.seq)
	), runs AS (
		SELECT id, from_seq AS rf, seq - 1 AS rt FROM b WHERE prev IS NULL AND seq > from_seq
		UNION ALL
		SELECT id, seq + 1, next - 1 FROM b WHERE next IS NOT NULL AND next - seq > 1
		UNION ALL
		SELECT id, seq + 1, to_seq FROM b WHERE next IS NULL AND seq < to_seq
	), ranked AS (
		SELECT runs.*, row_number() OVER (PARTITION BY id ORDER BY rf) AS rn FROM runs
	), touched AS (
		SELECT DISTINCT id FROM f
	), shrink AS (
		UPDATE prepaid.gaps x SET from_seq = r.rf, to_seq = r.rt
		FROM ranked r WHERE x.id = r.id AND r.rn = 1
		RETURNING 1
	), done AS (
		UPDATE prepaid.gaps x SET filled_at = now()
		FROM touched t
		WHERE x.id = t.id AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = t.id)
		RETURNING x.id, x.resend_command_id
	), unsend AS (
		-- a resend whose gaps are all filled now is not needed any more
		UPDATE prepaid.commands c SET state = 'cancelled',
		    detail = 'the gap was filled before the resend was sent'
		FROM (SELECT DISTINCT resend_command_id AS id FROM done) d
		WHERE c.id = d.id AND c.state = 'queued'
		  AND NOT EXISTS (SELECT 1 FROM prepaid.gaps g
		                  WHERE g.resend_command_id = d.id AND g.filled_at IS NULL
		                    AND g.id NOT IN (SELECT id FROM done))
		RETURNING 1
	), split AS (
		INSERT INTO prepaid.gaps (meter_id, from_seq, to_seq, detected_at, resend_command_id)
		SELECT g.meter_id, r.rf, r.rt, g.detected_at, g.resend_command_id
		FROM ranked r JOIN g ON g.id = r.id WHERE r.rn > 1
		RETURNING 1
	)
	-- (Data-modifying CTEs run to completion whether read or not.)
	SELECT count(*) INTO v_n FROM touched;
END $$;

-- Meter events; a relay event updates the meter's relay state. Events of
-- unknown meters are kept as rejects.
CREATE OR REPLACE FUNCTION prepaid_internal.ingest_events(p_events jsonb, p_topic_prefix text,
    OUT events integer, OUT unknown integer)
LANGUAGE plpgsql AS $$
BEGIN
	WITH ev AS (
		SELECT e->>'meter' AS m, (e->>'ts')::timestamptz AS t, e->>'type' AS ty,
		       e->>'relay' AS r, nullif(e->>'cause', '') AS c,
		       (e->>'received_at')::timestamptz AS rcv, e->>'payload' AS raw,
		       EXISTS (SELECT 1 FROM prepaid.meters x WHERE x.meter_id = e->>'meter') AS known
		FROM jsonb_array_elements(p_events) e
	), ins AS (
		INSERT INTO prepaid.events (meter_id, ts, type, relay, cause, received_at)
		SELECT m, t, ty, r, c, rcv FROM ev WHERE known
		RETURNING 1
	), lat AS (
		SELECT DISTINCT ON (m) m, t, r FROM ev
		WHERE known AND r IS NOT NULL ORDER BY m, t DESC
	), upd AS (
		UPDATE prepaid.meters mt SET relay = lat.r, relay_at = lat.t,
		    relay_source = 'event', last_seen = now()
		FROM lat WHERE mt.meter_id = lat.m AND (mt.relay_at IS NULL OR lat.t >= mt.relay_at)
		RETURNING 1
	), unk AS (
		INSERT INTO prepaid.rejects (received_at, meter_id, topic, reason, payload)
		SELECT rcv, m, p_topic_prefix || '/' || m || '/event',
		       'unknown meter (auto_register is off)', decode(raw, 'hex')
		FROM ev WHERE NOT known
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM unk)
	INTO events, unknown;
END $$;

-- Acknowledgements, matched to commands by id (and meter); the relay state
-- they report updates the meter. An acknowledgement of no known command is
-- kept as a reject.
CREATE OR REPLACE FUNCTION prepaid_internal.ingest_acks(p_acks jsonb, p_topic_prefix text,
    OUT acks integer, OUT rejects integer)
LANGUAGE plpgsql AS $$
BEGIN
	WITH a AS (
		SELECT DISTINCT ON (x->>'id') x->>'meter' AS m, x->>'id' AS id,
		       x->>'result' AS res, x->>'relay' AS r, x->>'detail' AS d,
		       (x->>'received_at')::timestamptz AS rcv, x->>'payload' AS raw
		FROM jsonb_array_elements(p_acks) x
		ORDER BY x->>'id', (x->>'received_at')::timestamptz
	), mt AS (
		SELECT a.*, c.id IS NOT NULL AS matched FROM a
		LEFT JOIN prepaid.commands c ON c.id = a.id AND c.meter_id = a.m
	), upd AS (
		UPDATE prepaid.commands c SET
			state = CASE a.res WHEN 'ok' THEN 'acked' WHEN 'rejected' THEN 'rejected'
			                   WHEN 'unsupported' THEN 'unsupported' ELSE 'expired' END,
			acked_at = a.rcv, result = a.res, relay_after = a.r, detail = a.d
		FROM a
		WHERE c.id = a.id AND c.meter_id = a.m AND c.state IN ('queued', 'sent', 'expired')
		RETURNING 1
	), lat AS (
		SELECT DISTINCT ON (m) m, r, rcv FROM mt
		WHERE matched AND r IS NOT NULL ORDER BY m, rcv DESC
	), rel AS (
		UPDATE prepaid.meters x SET relay = lat.r, relay_at = lat.rcv,
		    relay_source = 'ack', last_seen = now()
		FROM lat WHERE x.meter_id = lat.m AND (x.relay_at IS NULL OR lat.rcv >= x.relay_at)
		RETURNING 1
	), rej AS (
		INSERT INTO prepaid.rejects (received_at, meter_id, topic, reason, payload)
		SELECT rcv, m, p_topic_prefix || '/' || m || '/ack',
		       'acknowledgement for an unknown command', decode(raw, 'hex')
		FROM mt WHERE NOT matched
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM rej)
	INTO acks, rejects;
END $$;

-- Input the daemon refused (malformed, bad meter id, oversize...).
CREATE OR REPLACE FUNCTION prepaid_internal.ingest_rejects(p_rejects jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
	v_n integer;
BEGIN
	INSERT INTO prepaid.rejects (received_at, meter_id, topic, reason, payload)
	SELECT (x->>'received_at')::timestamptz, x->>'meter', x->>'topic', x->>'reason',
	       decode(x->>'payload', 'hex')
	FROM jsonb_array_elements(p_rejects) x;
	GET DIAGNOSTICS v_n = ROW_COUNT;
	RETURN v_n;
END $$;

-- Keep the newest p_keep rejects ([ingest] rejects_keep).
CREATE OR REPLACE FUNCTION prepaid_internal.prune_rejects(p_keep integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	DELETE FROM prepaid.rejects
	WHERE id <= (SELECT max(id) FROM prepaid.rejects) - p_keep;
END $$;

-- ----------------------------------------------------------------- views

CREATE OR REPLACE VIEW prepaid.meter_status AS
SELECT m.meter_id, m.relay, m.relay_at, m.relay_source, m.last_seq, m.last_ts,
       m.last_energy_wh, m.last_seen, now() - m.last_seen AS seen_ago,
       m.readings, m.duplicates,
       (SELECT count(*) FROM prepaid.gaps g
        WHERE g.meter_id = m.meter_id AND g.filled_at IS NULL) AS open_gaps
FROM prepaid.meters m;
COMMENT ON VIEW prepaid.meter_status IS
	'Each meter''s relay, last reading, when it was last heard from and its open gaps.';

CREATE OR REPLACE VIEW prepaid.command_status AS
SELECT id, meter_id, action, state, reason, created_by, created_at, valid_until,
       attempts, sent_at, acked_at, result, relay_after, detail, from_seq
FROM prepaid.commands;
COMMENT ON VIEW prepaid.command_status IS
	'Commands with their state, author, attempts and result.';

CREATE OR REPLACE VIEW prepaid.recent_rejects AS
SELECT id, received_at, meter_id, topic, reason,
       encode(payload, 'escape') AS payload_text
FROM prepaid.rejects
ORDER BY id DESC;
COMMENT ON VIEW prepaid.recent_rejects IS
	'Refused input, newest first, with the payload as text.';

CREATE OR REPLACE VIEW prepaid.open_gaps AS
SELECT meter_id, from_seq, to_seq, to_seq - from_seq + 1 AS missing, detected_at,
       resend_command_id
FROM prepaid.gaps
WHERE filled_at IS NULL;
COMMENT ON VIEW prepaid.open_gaps IS
	'Sequence gaps not filled yet, with the resend asked for.';

-- A meter has history (readings, ledger): it is never deleted.
CREATE OR REPLACE FUNCTION prepaid_internal.meters_no_delete_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'meter %: meters are never deleted (they carry readings and a ledger)', OLD.meter_id
		USING ERRCODE = 'object_not_in_prerequisite_state';
END $$;

DROP TRIGGER IF EXISTS meters_no_delete ON prepaid.meters;
CREATE TRIGGER meters_no_delete BEFORE DELETE ON prepaid.meters
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.meters_no_delete_trigger();

-- Partitions for this month and the next three, so that a new database
-- takes readings at once; the daemon keeps [ingest] partitions_ahead.
SELECT prepaid_internal.ensure_partitions(3);

-- ---------------------------------------------------------- durability

-- An event can arrive more than once: replayed from the daemon's journal
-- after a crash (when its batch had committed but the journal was not yet
-- trimmed), or received by every daemon, since events and acknowledgements
-- are subscribed to unshared so that they reach a live one. It is stored
-- once: a repeat of (meter, ts, type, relay, cause) is skipped. Batches that
-- touch a meter are serialised on its row lock in ingest_batch(), so the
-- check sees any earlier copy.
CREATE OR REPLACE FUNCTION prepaid_internal.events_once_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM prepaid.events e
	           WHERE e.meter_id = NEW.meter_id AND e.ts = NEW.ts AND e.type = NEW.type
	             AND e.relay IS NOT DISTINCT FROM NEW.relay
	             AND e.cause IS NOT DISTINCT FROM NEW.cause) THEN
		RETURN NULL;
	END IF;
	RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS events_once ON prepaid.events;
CREATE TRIGGER events_once BEFORE INSERT ON prepaid.events
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.events_once_trigger();

-- The broker lost the session of daemon p_client_id: ask every meter seen in
-- the last p_hours hours to resend from its last stored reading on, at most
-- p_rate requests a second (spread through next_attempt_at of the command
-- outbox), record the loss in prepaid.session_losses and raise an alert.
-- Returns the number of meters. Called by the daemon (prepaid_daemon).
CREATE OR REPLACE FUNCTION prepaid_internal.broker_session_lost(p_client_id text,
    p_hours integer, p_rate integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_n integer;
	v_last timestamptz;
BEGIN
	IF p_client_id IS NULL OR p_hours IS NULL OR p_hours < 1 OR p_rate IS NULL
	   OR p_rate < 1 THEN
		RAISE EXCEPTION 'broker_session_lost: a client id, and positive hours and rate, are needed';
	END IF;
	WITH m AS (
		SELECT meter_id, last_seq,
		       now() + (row_number() OVER (ORDER BY last_seen DESC, meter_id) - 1)
		               * interval '1 second' / p_rate AS due
		FROM prepaid.meters
		WHERE last_seq IS NOT NULL
		  AND last_seen >= now() - make_interval(hours => p_hours)
	), ins AS (
		INSERT INTO prepaid.commands (meter_id, action, from_seq, reason, valid_until,
		    next_attempt_at)
		SELECT meter_id, 'resend', last_seq + 1,
		       'broker session of ' || p_client_id || ' lost', due + interval '5 minutes', due
		FROM m
		RETURNING next_attempt_at
	)
	SELECT count(*), max(next_attempt_at) INTO v_n, v_last FROM ins;
	INSERT INTO prepaid.session_losses (client_id, hours, meters, rate, last_due)
	VALUES (p_client_id, p_hours, v_n, p_rate, v_last);
	PERFORM pg_notify('prepaid_alerts', format('the broker lost the session of %s: '
	    'what it had queued is gone; %s meter(s) seen in the last %s h asked to resend',
	    p_client_id, v_n, p_hours));
	PERFORM pg_notify('prepaid_commands', '');
	RETURN v_n;
END $$;
