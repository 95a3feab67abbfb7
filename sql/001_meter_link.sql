-- 001_meter_link.sql: the meter link — meters and their latest state,
-- readings (partitioned by month), sequence gaps, rejected input, meter
-- events, the command outbox with its audit trail, the batch ingest function
-- the daemon calls once per batch, and the operator views and functions.
-- Applied by `prepaidd --migrate` in one transaction; documented in
-- prepaidd-sql(7).

CREATE SCHEMA IF NOT EXISTS prepaid;

-- ---------------------------------------------------------------- meters
-- Meter ids are ASCII ([A-Za-z0-9_.-]): they compare with the "C" collation,
-- byte-wise, which is both the natural order and the cheapest.

CREATE TABLE prepaid.meters (
	meter_id        text COLLATE "C" PRIMARY KEY
	                CHECK (meter_id ~ '^[A-Za-z0-9_.-]{1,32}$'),
	registered_at   timestamptz NOT NULL DEFAULT now(),
	auto_registered boolean NOT NULL DEFAULT false,
	last_seq        bigint,          -- highest seq accepted
	last_ts         timestamptz,     -- ts of that reading
	last_energy_wh  bigint,          -- its register
	relay           text CHECK (relay IN ('closed', 'open', 'armed')),
	relay_at        timestamptz,     -- when the meter reported it
	relay_source    text CHECK (relay_source IN ('reading', 'event', 'ack')),
	last_seen       timestamptz,     -- last message of any kind
	readings        bigint NOT NULL DEFAULT 0,
	duplicates      bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 70);  -- room for HOT updates: every batch updates its meters
COMMENT ON TABLE prepaid.meters IS
	'One row per meter: its latest reading, relay state and when it was last heard from.';

-- Register a meter by hand (when [ingest] auto_register is off).
CREATE FUNCTION prepaid.register_meter(p_meter text) RETURNS boolean
LANGUAGE sql AS $$
	INSERT INTO prepaid.meters (meter_id) VALUES (p_meter)
	ON CONFLICT (meter_id) DO NOTHING
	RETURNING true;
$$;

-- -------------------------------------------------------------- readings

-- Partitioned by month of ts (UTC). A partition for the current month and
-- the next [ingest] partitions_ahead months is kept by the daemon through
-- prepaid.ensure_partitions(); readings outside them land in the default
-- partition and are moved when their month's partition is created.
-- De-duplication on (meter, seq) cannot be a unique index across time
-- partitions: it is enforced by prepaid.ingest_batch() from the meter's
-- last_seq and its open gaps, under a row lock on the meter. (A unique index
-- with ON CONFLICT would only catch repeats with the same ts, and its
-- per-row check cost a sixth of the ingest time.)
CREATE TABLE prepaid.readings (
	meter_id    text COLLATE "C" NOT NULL,
	seq         bigint NOT NULL,
	ts          timestamptz NOT NULL,
	energy_wh   bigint NOT NULL CHECK (energy_wh >= 0),
	relay       text,
	power_w     double precision,
	voltage_v   double precision,
	current_a   double precision,
	received_at timestamptz NOT NULL,   -- when the daemon received it
	ingested_at timestamptz NOT NULL    -- when it was written (just before commit)
) PARTITION BY RANGE (ts);
CREATE INDEX readings_meter_seq ON prepaid.readings (meter_id, seq);
CREATE TABLE prepaid.readings_default PARTITION OF prepaid.readings DEFAULT;

CREATE FUNCTION prepaid.ensure_partitions(p_months_ahead integer DEFAULT 3)
RETURNS integer LANGUAGE plpgsql AS $$
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

-- ------------------------------------------------------------------ gaps

-- A run of sequence numbers [from_seq, to_seq] that a meter skipped. When
-- readings of the run arrive later (a resend), the run shrinks or splits;
-- filled_at is set once none of it is missing.
CREATE TABLE prepaid.gaps (
	id                bigserial PRIMARY KEY,
	meter_id          text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	from_seq          bigint NOT NULL,
	to_seq            bigint NOT NULL CHECK (to_seq >= from_seq),
	detected_at       timestamptz NOT NULL DEFAULT now(),
	filled_at         timestamptz,
	resend_command_id text
);
CREATE INDEX gaps_open ON prepaid.gaps (meter_id, from_seq) WHERE filled_at IS NULL;

-- --------------------------------------------------------------- rejects

-- Input the daemon could not accept, with the reason, kept for inspection.
-- Bounded: the daemon keeps the newest [ingest] rejects_keep rows.
CREATE TABLE prepaid.rejects (
	id          bigserial PRIMARY KEY,
	received_at timestamptz NOT NULL,
	meter_id    text COLLATE "C",           -- NULL when the topic named no valid meter
	topic       text NOT NULL,
	reason      text NOT NULL,
	payload     bytea           -- as received (truncated to 4 KiB)
);
CREATE INDEX rejects_meter ON prepaid.rejects (meter_id, id);

-- ---------------------------------------------------------------- events

CREATE TABLE prepaid.events (
	id          bigserial PRIMARY KEY,
	meter_id    text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	ts          timestamptz NOT NULL,
	type        text NOT NULL,
	relay       text,
	cause       text,
	received_at timestamptz NOT NULL
);
CREATE INDEX events_meter ON prepaid.events (meter_id, ts);

-- -------------------------------------------------------------- commands

-- The command outbox. A row is written first (by an operator function, or by
-- the daemon for resends); the daemon claims due rows with FOR UPDATE SKIP
-- LOCKED, marks them sent in a committed transaction, then publishes, and
-- publishes again with backoff until the meter acknowledges or valid_until
-- passes. A command is never published after valid_until: it is expired.
CREATE TABLE prepaid.commands (
	id              text PRIMARY KEY DEFAULT gen_random_uuid()::text,
	meter_id        text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	action          text NOT NULL CHECK (action IN ('trip', 'arm', 'close',
	                    'keep_power_on', 'keep_power_off', 'resend')),
	from_seq        bigint,
	reason          text,
	state           text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued',
	                    'sent', 'acked', 'rejected', 'unsupported', 'expired', 'cancelled')),
	created_at      timestamptz NOT NULL DEFAULT now(),
	created_by      text NOT NULL DEFAULT session_user,
	valid_until     timestamptz NOT NULL,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	attempts        integer NOT NULL DEFAULT 0,
	sent_at         timestamptz,
	acked_at        timestamptz,
	result          text,
	relay_after     text,
	detail          text,
	CHECK (action <> 'resend' OR from_seq IS NOT NULL)
);
CREATE INDEX commands_due ON prepaid.commands (next_attempt_at)
	WHERE state IN ('queued', 'sent');
CREATE INDEX commands_meter ON prepaid.commands (meter_id, created_at);

-- One row per state change of a command (and per re-send), naming the
-- database role and the application that made it.
CREATE TABLE prepaid.command_audit (
	id          bigserial PRIMARY KEY,
	command_id  text NOT NULL,
	at          timestamptz NOT NULL DEFAULT clock_timestamp(),
	actor       text NOT NULL,
	application text,
	old_state   text,
	new_state   text NOT NULL,
	attempt     integer,
	detail      text
);
CREATE INDEX command_audit_command ON prepaid.command_audit (command_id, id);

CREATE FUNCTION prepaid.command_audit_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO prepaid.command_audit (command_id, actor, application,
	    old_state, new_state, attempt, detail)
	VALUES (NEW.id, session_user, nullif(current_setting('application_name', true), ''),
	    CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state, NEW.attempts,
	    CASE WHEN TG_OP = 'INSERT' THEN NEW.reason ELSE NEW.detail END);
	RETURN NULL;
END $$;
CREATE TRIGGER commands_audit_insert AFTER INSERT ON prepaid.commands
	FOR EACH ROW EXECUTE FUNCTION prepaid.command_audit_trigger();
CREATE TRIGGER commands_audit_update AFTER UPDATE ON prepaid.commands
	FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.attempts IS DISTINCT FROM NEW.attempts)
	EXECUTE FUNCTION prepaid.command_audit_trigger();

-- Wake the daemons whoever queued the command (psql, a function, a daemon).
-- (Row level: identical notifications collapse within a transaction, and an
-- INSERT of no rows wakes nobody.)
CREATE FUNCTION prepaid.commands_notify_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('prepaid_commands', '');
	RETURN NULL;
END $$;
CREATE TRIGGER commands_notify AFTER INSERT ON prepaid.commands
	FOR EACH ROW EXECUTE FUNCTION prepaid.commands_notify_trigger();

-- The general operator function: queue a command for a meter.
CREATE FUNCTION prepaid.send_command(p_meter text, p_action text, p_reason text,
    p_valid_for interval DEFAULT interval '10 minutes', p_from_seq bigint DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
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

CREATE FUNCTION prepaid.trip(p_meter text, p_reason text,
    p_valid_for interval DEFAULT interval '10 minutes') RETURNS text
LANGUAGE sql AS $$ SELECT prepaid.send_command(p_meter, 'trip', p_reason, p_valid_for) $$;

CREATE FUNCTION prepaid.arm(p_meter text, p_reason text,
    p_valid_for interval DEFAULT interval '10 minutes') RETURNS text
LANGUAGE sql AS $$ SELECT prepaid.send_command(p_meter, 'arm', p_reason, p_valid_for) $$;

CREATE FUNCTION prepaid.close(p_meter text, p_reason text,
    p_valid_for interval DEFAULT interval '10 minutes') RETURNS text
LANGUAGE sql AS $$ SELECT prepaid.send_command(p_meter, 'close', p_reason, p_valid_for) $$;

CREATE FUNCTION prepaid.resend(p_meter text, p_from_seq bigint,
    p_valid_for interval DEFAULT interval '5 minutes') RETURNS text
LANGUAGE sql AS $$
	SELECT prepaid.send_command(p_meter, 'resend', 'operator resend', p_valid_for, p_from_seq)
$$;

-- Stop a command that has not been acknowledged (it is not published again).
CREATE FUNCTION prepaid.cancel_command(p_id text, p_reason text) RETURNS boolean
LANGUAGE sql AS $$
	UPDATE prepaid.commands SET state = 'cancelled', detail = p_reason
	WHERE id = p_id AND state IN ('queued', 'sent')
	RETURNING true;
$$;

-- Called by the daemon: expire what is past valid_until, then claim due
-- commands, mark them sent (with the next retry time) and return them. The
-- daemon publishes only after this transaction has committed.
CREATE FUNCTION prepaid.claim_commands(p_limit integer, p_retry_initial interval,
    p_retry_max interval)
RETURNS TABLE (id text, meter_id text, action text, from_seq bigint,
    valid_until timestamptz, attempts integer)
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.commands c
	SET state = 'expired', detail = 'valid_until passed before an acknowledgement'
	FROM (SELECT x.id FROM prepaid.commands x
	      WHERE x.state IN ('queued', 'sent') AND x.valid_until <= clock_timestamp()
	      FOR UPDATE SKIP LOCKED) e
	WHERE c.id = e.id;

	RETURN QUERY
	UPDATE prepaid.commands c
	SET state = 'sent', attempts = c.attempts + 1, sent_at = clock_timestamp(),
	    next_attempt_at = clock_timestamp()
	        + least(p_retry_max, p_retry_initial * power(2, least(c.attempts, 20)))
	FROM (SELECT x.id FROM prepaid.commands x
	      WHERE x.state IN ('queued', 'sent') AND x.next_attempt_at <= clock_timestamp()
	        AND x.valid_until > clock_timestamp() + interval '1 second'
	      ORDER BY x.next_attempt_at
	      LIMIT p_limit
	      FOR UPDATE SKIP LOCKED) d
	WHERE c.id = d.id
	RETURNING c.id, c.meter_id, c.action, c.from_seq, c.valid_until, c.attempts;
END $$;

-- ---------------------------------------------------------------- ingest

-- Data-modifying CTEs below run to completion whether or not the final
-- SELECT reads them. One call per batch from the daemon: readings as parallel arrays, events,
-- acknowledgements and rejects as JSON arrays. Everything in one
-- transaction: readings, each meter's latest state, gaps, resend commands,
-- events, command acknowledgements and rejects.
CREATE FUNCTION prepaid.ingest_batch(
    p_meter text[], p_seq bigint[], p_ts timestamptz[], p_energy bigint[],
    p_relay text[], p_power double precision[], p_voltage double precision[],
    p_current double precision[], p_received timestamptz[],
    p_events jsonb, p_acks jsonb, p_rejects jsonb,
    p_auto_register boolean, p_resend_on_gap boolean, p_rejects_keep integer,
    p_topic_prefix text,
    OUT inserted integer, OUT duplicates integer, OUT gaps integer,
    OUT unknown integer, OUT filled integer, OUT events integer,
    OUT acks integer, OUT rejects integer)
LANGUAGE plpgsql AS $$
DECLARE
	v_ids text[];
	v_known text[];
	v_last bigint[];
	v_n integer;
BEGIN
	inserted := 0; duplicates := 0; gaps := 0; unknown := 0; filled := 0;
	events := 0; acks := 0; rejects := 0;

	-- Every meter this batch touches, in id order.
	SELECT array_agg(DISTINCT m ORDER BY m) INTO v_ids FROM (
		SELECT unnest(p_meter) COLLATE "C" AS m
		UNION ALL SELECT e->>'meter' FROM jsonb_array_elements(p_events) e
		UNION ALL SELECT a->>'meter' FROM jsonb_array_elements(p_acks) a) x
	WHERE m IS NOT NULL;

	-- Lock them, reading last_seq in the same pass. Batches of several
	-- daemons that touch the same meters are serialised here, in meter order
	-- so that two batches cannot deadlock; NO KEY UPDATE leaves operators free
	-- to insert commands referencing the meters meanwhile.
	SELECT array_agg(meter_id ORDER BY meter_id), array_agg(last_seq ORDER BY meter_id)
	INTO v_known, v_last
	FROM (SELECT meter_id, last_seq FROM prepaid.meters WHERE meter_id = ANY (v_ids)
	      ORDER BY meter_id FOR NO KEY UPDATE) x;
	IF p_auto_register AND coalesce(cardinality(v_known), 0) < coalesce(cardinality(v_ids), 0) THEN
		INSERT INTO prepaid.meters (meter_id, auto_registered)
		SELECT m, true FROM unnest(v_ids) m
		ON CONFLICT (meter_id) DO NOTHING;
		SELECT array_agg(meter_id ORDER BY meter_id), array_agg(last_seq ORDER BY meter_id)
		INTO v_known, v_last
		FROM (SELECT meter_id, last_seq FROM prepaid.meters WHERE meter_id = ANY (v_ids)
		      ORDER BY meter_id FOR NO KEY UPDATE) x;
	END IF;

	-- The readings. The statement is written so that its plan does not depend
	-- on row estimates (PL/pgSQL keeps a generic plan after a few calls):
	-- one pass classifies each reading, one aggregate per meter feeds the
	-- meter update, with no join between derived sets.
	IF coalesce(cardinality(p_meter), 0) > 0 THEN
		WITH cls0 AS (
			SELECT u.*, k.last AS old_last, k.m IS NOT NULL AS known,
			       row_number() OVER (PARTITION BY u.m, u.s ORDER BY u.rcv) AS rn
			FROM unnest(p_meter, p_seq, p_ts, p_energy, p_relay, p_power,
			            p_voltage, p_current, p_received)
			     AS u(m, s, t, e, r, pw, v, c, rcv)
			LEFT JOIN unnest(v_known, v_last) AS k(m, last) ON k.m = u.m
		), cls AS (
			-- fresh: first copy in the batch, of a known meter, and either
			-- beyond the meter's last seq or inside one of its open gaps.
			SELECT cls0.*,
			       known AND rn = 1 AND (old_last IS NULL OR s > old_last
			           OR EXISTS (SELECT 1 FROM prepaid.gaps g
			                      WHERE g.meter_id = cls0.m AND g.filled_at IS NULL
			                        AND cls0.s BETWEEN g.from_seq AND g.to_seq)) AS fresh,
			       old_last IS NULL OR s > old_last AS ahead
			FROM cls0
		), ins AS (
			INSERT INTO prepaid.readings (meter_id, seq, ts, energy_wh, relay,
			    power_w, voltage_v, current_a, received_at, ingested_at)
			SELECT m, s, t, e, r, pw, v, c, rcv, clock_timestamp() FROM cls WHERE fresh
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
			INSERT INTO prepaid.commands (id, meter_id, action, from_seq, reason, valid_until)
			SELECT cmd, m, 'resend', from_seq, 'sequence gap', now() + interval '5 minutes'
			FROM resend
			RETURNING 1
		), gins AS (
			INSERT INTO prepaid.gaps (meter_id, from_seq, to_seq, resend_command_id)
			SELECT g.m, g.gf, g.gt, (SELECT r.cmd FROM resend r WHERE r.m = g.m)
			FROM newgaps g
			RETURNING 1
		), agg AS (
			SELECT m, count(*) AS nall, count(*) FILTER (WHERE fresh) AS nfresh,
			       max(s) FILTER (WHERE fresh AND ahead) AS ls,
			       (array_agg(t ORDER BY s DESC) FILTER (WHERE fresh AND ahead))[1] AS lt,
			       (array_agg(e ORDER BY s DESC) FILTER (WHERE fresh AND ahead))[1] AS le,
			       (array_agg(r ORDER BY s DESC) FILTER (WHERE fresh AND ahead))[1] AS lr
			FROM cls WHERE known GROUP BY m
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
				duplicates = mt.duplicates + a.nall - a.nfresh
			FROM agg a
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
		       (SELECT count(*) FROM cls WHERE fresh AND NOT ahead)
		INTO inserted, gaps, unknown, filled;
		duplicates := cardinality(p_meter) - inserted - unknown;
	END IF;

	-- Readings that arrived into open gaps (a resend): shrink or split them.
	IF filled > 0 THEN
		WITH g AS (
			SELECT id, meter_id, from_seq, to_seq, detected_at, resend_command_id
			FROM prepaid.gaps
			WHERE filled_at IS NULL AND meter_id = ANY (v_ids)
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
			RETURNING 1
		), split AS (
			INSERT INTO prepaid.gaps (meter_id, from_seq, to_seq, detected_at, resend_command_id)
			SELECT g.meter_id, r.rf, r.rt, g.detected_at, g.resend_command_id
			FROM ranked r JOIN g ON g.id = r.id WHERE r.rn > 1
			RETURNING 1
		)
		-- (Data-modifying CTEs run to completion whether read or not.)
		SELECT count(*) INTO v_n FROM touched;
	END IF;

	-- Meter events; a relay event updates the meter's relay state.
	IF jsonb_array_length(p_events) > 0 THEN
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
		INTO events, v_n;
		unknown := unknown + v_n;
	END IF;

	-- Acknowledgements, matched to commands by id (and meter).
	IF jsonb_array_length(p_acks) > 0 THEN
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
		INTO acks, v_n;
		rejects := rejects + v_n;
	END IF;

	-- Input the daemon refused (malformed, bad meter id, oversize...).
	IF jsonb_array_length(p_rejects) > 0 THEN
		INSERT INTO prepaid.rejects (received_at, meter_id, topic, reason, payload)
		SELECT (x->>'received_at')::timestamptz, x->>'meter', x->>'topic', x->>'reason',
		       decode(x->>'payload', 'hex')
		FROM jsonb_array_elements(p_rejects) x;
		GET DIAGNOSTICS v_n = ROW_COUNT;
		rejects := rejects + v_n;
	END IF;

	IF rejects + unknown > 0 THEN
		DELETE FROM prepaid.rejects
		WHERE id <= (SELECT max(id) FROM prepaid.rejects) - p_rejects_keep;
	END IF;
END $$;

-- ----------------------------------------------------------------- views

CREATE VIEW prepaid.meter_status AS
SELECT m.meter_id, m.relay, m.relay_at, m.relay_source, m.last_seq, m.last_ts,
       m.last_energy_wh, m.last_seen, now() - m.last_seen AS seen_ago,
       m.readings, m.duplicates,
       (SELECT count(*) FROM prepaid.gaps g
        WHERE g.meter_id = m.meter_id AND g.filled_at IS NULL) AS open_gaps
FROM prepaid.meters m;

CREATE VIEW prepaid.command_status AS
SELECT id, meter_id, action, state, reason, created_by, created_at, valid_until,
       attempts, sent_at, acked_at, result, relay_after, detail, from_seq
FROM prepaid.commands;

CREATE VIEW prepaid.recent_rejects AS
SELECT id, received_at, meter_id, topic, reason,
       encode(payload, 'escape') AS payload_text
FROM prepaid.rejects
ORDER BY id DESC;

CREATE VIEW prepaid.open_gaps AS
SELECT meter_id, from_seq, to_seq, to_seq - from_seq + 1 AS missing, detected_at,
       resend_command_id
FROM prepaid.gaps
WHERE filled_at IS NULL;

SELECT prepaid.ensure_partitions(3);
