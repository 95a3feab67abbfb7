-- 005_ladder_sweep.sql: the ladder sweep of 004, set-based in its common
-- case. A sweep locks the due meters that may need no per-meter work (no
-- open episode, balance above the trip level) in one statement, and then
-- does, over the whole page at once, what prepaid.ladder_step would do for
-- each of them: record that a meter needs nothing (above the first
-- threshold, not billed, or paid back but not re-armed), or open its
-- episode with the steps it reached, the messages and call tasks of those
-- steps (as prepaid.send_message and ladder_step write them) and their
-- episode_sends rows, and set when to look again. Everything else -- open
-- episodes (repeats, deeper steps, the end of an episode), trips, and a
-- message that cannot be sent (no occupant, address or template, which
-- ladder_step records with its reason) -- still goes through ladder_step,
-- one meter at a time and fetched a few rows at a time as before, so that
-- two daemons share such meters. What is sent, and when, is that of 004.
--
-- A balance change wakes the ladder for a meter in arrears only when it
-- crosses a bound that matters. In 004 every balance change below the
-- first threshold made the meter due, so a meter in an open episode that
-- keeps using power ran prepaid.ladder_step on each of its readings for
-- nothing. Here ladder_step and ladder_open write, with the due time, the
-- balances at which the next look would do something: below the threshold
-- of the next step not yet reached (ladder_low), at or below the trip level
-- while the trip may still be proposed (ladder_trip), at or above the
-- restore level, where the episode ends (ladder_high). The trigger of 004
-- makes the meter due only across one of them. ladder_high NULL means no
-- bounds (no open episode, rows written before this migration, anything
-- that does not know them): the trigger then behaves as in 004. Time-based
-- due times (repeats, grace) are unchanged.

-- How many repeats of a step (p_count, every p_every) are due when it is
-- reached at p_now: ladder_step's repeat loop sends from the first one
-- until one falls due later.
CREATE FUNCTION prepaid.ladder_repeats_due(p_now timestamptz, p_every interval,
    p_count integer) RETURNS integer
LANGUAGE sql STABLE AS $$
	SELECT coalesce((SELECT min(r) FROM generate_series(1, p_count - 1) r
	                 WHERE p_now + coalesce(p_every, '0') * r > p_now), p_count)
$$;

-- Called by the daemon: the ladder of up to p_limit due meters. Returns how
-- many it looked at (p_limit: call again).
CREATE OR REPLACE FUNCTION prepaid.ladder_sweep(p_limit integer) RETURNS integer
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
	-- due times are on the ladder's clock (prepaid.now())
	v_now timestamptz := prepaid.now();
	v_page text[];
	v_idle text[];
	v_idle_first numeric[];
	v_idle_rearmed boolean[];
	v_open text[];
	v_open_first numeric[];
	v_step text[];
	v_m text;
	v_n integer;
BEGIN
	-- The meters that may need no per-meter work, locked at once. The
	-- filter is only a guess (taken before the locks): they are looked at
	-- again below, now that nobody else can change them.
	SELECT coalesce(array_agg(x.meter_id), '{}') INTO v_page
	FROM (SELECT m.meter_id FROM prepaid.meters m
	      JOIN prepaid.sites s ON s.site_id = m.site_id
	      JOIN prepaid.policies p ON p.policy_id = coalesce(m.policy_id, s.policy_id)
	      WHERE m.ladder_due_at <= v_now AND m.balance > p.trip_level
	        -- OFFSET 0 keeps this a look-up per meter in the index of open
	        -- episodes: as an anti-join, statistics taken before a wave of
	        -- new episodes make it scan every open episode per meter.
	        AND NOT EXISTS (SELECT 1 FROM prepaid.arrears_episodes e
	                        WHERE e.meter_id = m.meter_id AND e.ended_at IS NULL OFFSET 0)
	      ORDER BY m.ladder_due_at LIMIT p_limit
	      FOR NO KEY UPDATE OF m SKIP LOCKED) x;
	v_n := cardinality(v_page);

	-- What ladder_step would do with each, in its order: nothing to do
	-- (rearmed or not), a new episode, or per-meter work after all.
	WITH c AS MATERIALIZED (   -- the kind is worked out once per meter
		SELECT m.meter_id, f.first,
		       m.balance >= f.first OR NOT b.billed AS rearmed,
		       CASE
		       WHEN EXISTS (SELECT 1 FROM prepaid.arrears_episodes e
		                    WHERE e.meter_id = m.meter_id AND e.ended_at IS NULL)
		           THEN 'step'
		       WHEN m.balance >= f.first OR NOT b.billed THEN 'idle'
		       WHEN NOT m.ladder_rearmed AND m.balance >= p.restore_level THEN 'idle'
		       WHEN m.balance <= p.trip_level THEN 'step'
		       -- a message that cannot be sent: ladder_step records why
		       WHEN EXISTS (SELECT 1 FROM prepaid.policy_steps st
		                    CROSS JOIN unnest(st.channels) ch (channel)
		                    WHERE st.policy_id = p.policy_id AND m.balance < st.threshold
		                      AND ch.channel <> 'call'
		                      AND (o.occupant_id IS NULL
		                           OR coalesce(CASE ch.channel WHEN 'sms' THEN o.phone
		                                       WHEN 'email' THEN o.email END, '') = ''
		                           OR NOT EXISTS (SELECT 1 FROM prepaid.message_templates t
		                                          WHERE t.template_key = st.template_key
		                                            AND t.channel = ch.channel
		                                            AND t.language = o.language)))
		           THEN 'step'
		       ELSE 'open' END AS kind
		FROM unnest(v_page) u (meter_id)
		JOIN prepaid.meters m ON m.meter_id = u.meter_id
		JOIN prepaid.sites s ON s.site_id = m.site_id
		JOIN prepaid.policies p ON p.policy_id = coalesce(m.policy_id, s.policy_id)
		CROSS JOIN LATERAL (SELECT greatest(coalesce(max(st.threshold), p.trip_level),
		                        p.trip_level + 0.01) AS first
		                    FROM prepaid.policy_steps st
		                    WHERE st.policy_id = p.policy_id) f
		CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM prepaid.meter_tariffs x
		                        WHERE x.meter_id = m.meter_id AND x.effective_from <= v_now)
		                    OR s.default_tariff_id IS NOT NULL AS billed) b
		LEFT JOIN prepaid.meter_occupants mo ON mo.meter_id = m.meter_id
		     AND mo.moved_out IS NULL
		LEFT JOIN prepaid.occupants o ON o.occupant_id = mo.occupant_id
	)
	SELECT array_agg(c.meter_id) FILTER (WHERE c.kind = 'idle'),
	       array_agg(c.first) FILTER (WHERE c.kind = 'idle'),
	       array_agg(c.rearmed) FILTER (WHERE c.kind = 'idle'),
	       array_agg(c.meter_id) FILTER (WHERE c.kind = 'open'),
	       array_agg(c.first) FILTER (WHERE c.kind = 'open'),
	       array_agg(c.meter_id) FILTER (WHERE c.kind = 'step')
	INTO v_idle, v_idle_first, v_idle_rearmed, v_open, v_open_first, v_step
	FROM c;

	IF v_idle IS NOT NULL THEN
		UPDATE prepaid.meters m SET ladder_watch = i.first, ladder_due_at = NULL,
		    ladder_rearmed = i.rearmed
		FROM unnest(v_idle, v_idle_first, v_idle_rearmed) i (meter_id, first, rearmed)
		WHERE m.meter_id = i.meter_id;
	END IF;
	IF v_open IS NOT NULL THEN
		PERFORM prepaid.ladder_open(v_open, v_open_first);
	END IF;
	IF v_step IS NOT NULL THEN
		FOREACH v_m IN ARRAY v_step LOOP
			PERFORM prepaid.ladder_step(v_m);
		END LOOP;
	END IF;

	-- The rest of the page, one meter at a time (the meters above are no
	-- longer due).
	IF v_n < p_limit THEN
		FOR v_m IN SELECT meter_id FROM prepaid.meters
		           WHERE ladder_due_at <= v_now
		           ORDER BY ladder_due_at LIMIT p_limit - v_n
		           FOR NO KEY UPDATE SKIP LOCKED LOOP
			PERFORM prepaid.ladder_step(v_m);
			v_n := v_n + 1;
		END LOOP;
	END IF;
	RETURN v_n;
END $$;

-- Due when balance < ladder_low, balance <= ladder_trip (a NULL one is
-- never crossed) or balance >= ladder_high; all three in force only while
-- ladder_high is set.
ALTER TABLE prepaid.meters
	ADD COLUMN ladder_low numeric(20,2),
	ADD COLUMN ladder_trip numeric(20,2),
	ADD COLUMN ladder_high numeric(20,2);

-- 004's condition, narrowed by the bounds when they are set. A row whose
-- bounds are NULL is due exactly as before.
DROP TRIGGER meters_ladder ON prepaid.meters;
CREATE TRIGGER meters_ladder BEFORE UPDATE OF balance ON prepaid.meters
	FOR EACH ROW WHEN (NEW.balance IS DISTINCT FROM OLD.balance
	    AND (NEW.ladder_watch IS NULL OR NEW.balance < NEW.ladder_watch
	         OR OLD.balance < NEW.ladder_watch)
	    AND (NEW.ladder_high IS NULL OR NEW.balance >= NEW.ladder_high
	         OR NEW.balance < NEW.ladder_low OR NEW.balance <= NEW.ladder_trip))
	EXECUTE FUNCTION prepaid.meters_ladder_trigger();

-- The "look at every meter again" triggers of 004 forget the bounds too:
-- they were worked out from the old policy.
CREATE OR REPLACE FUNCTION prepaid.policies_changed_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.meters SET ladder_watch = NULL, ladder_due_at = now(),
	    ladder_low = NULL, ladder_trip = NULL, ladder_high = NULL;
	RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION prepaid.meters_policy_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	NEW.ladder_watch := NULL;
	NEW.ladder_due_at := now();
	NEW.ladder_low := NULL;
	NEW.ladder_trip := NULL;
	NEW.ladder_high := NULL;
	RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION prepaid.sites_policy_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.meters SET ladder_watch = NULL, ladder_due_at = now(),
	    ladder_low = NULL, ladder_trip = NULL, ladder_high = NULL
	WHERE site_id = NEW.site_id;
	RETURN NULL;
END $$;

-- The bounds describe one open episode as ladder_step left it. An episode
-- changed behind its back (ended, its trip or trip level cleared, or a
-- reached step removed, as an operator in psql might do) makes them wrong:
-- they are dropped, and the meter is due on balance changes as in 004
-- until ladder_step writes them again. ladder_step's own end of an
-- episode passes here too; it writes the meter row afterwards anyway.
CREATE FUNCTION prepaid.ladder_bounds_reset_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF TG_TABLE_NAME = 'episode_steps' THEN
		UPDATE prepaid.meters m SET ladder_low = NULL, ladder_trip = NULL, ladder_high = NULL
		FROM prepaid.arrears_episodes e
		WHERE e.episode_id = OLD.episode_id AND m.meter_id = e.meter_id
		  AND m.ladder_high IS NOT NULL;
	ELSE
		UPDATE prepaid.meters SET ladder_low = NULL, ladder_trip = NULL, ladder_high = NULL
		WHERE meter_id = OLD.meter_id AND ladder_high IS NOT NULL;
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER arrears_episodes_bounds AFTER UPDATE ON prepaid.arrears_episodes
	FOR EACH ROW WHEN (OLD.ended_at IS NULL AND (NEW.ended_at IS NOT NULL
	    OR (OLD.trip_state IS NOT NULL AND NEW.trip_state IS NULL)
	    OR (OLD.trip_level_at IS NOT NULL AND NEW.trip_level_at IS NULL)))
	EXECUTE FUNCTION prepaid.ladder_bounds_reset_trigger();
CREATE TRIGGER arrears_episodes_bounds_gone AFTER DELETE ON prepaid.arrears_episodes
	FOR EACH ROW WHEN (OLD.ended_at IS NULL)
	EXECUTE FUNCTION prepaid.ladder_bounds_reset_trigger();
CREATE TRIGGER episode_steps_bounds AFTER UPDATE OR DELETE ON prepaid.episode_steps
	FOR EACH ROW EXECUTE FUNCTION prepaid.ladder_bounds_reset_trigger();

-- ladder_step of 004, whole, now also writing the bounds: where an open
-- episode would next need it on a balance change (the highest threshold of
-- a step not reached yet; the trip level while the trip can still be
-- proposed and the balance is above it; the restore level), and no bounds
-- without an episode, where 004's trigger condition is the rule.
--
-- Move one meter's ladder forward: open or end its episode, send the steps
-- and repeats that are due (each at most once), propose the trip when its
-- grace has passed, and set when to look again. The meter row is locked by
-- the caller.
CREATE OR REPLACE FUNCTION prepaid.ladder_step(p_meter text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	m prepaid.meters;
	p prepaid.policies;
	ep prepaid.arrears_episodes;
	st prepaid.policy_steps;
	v_now timestamptz := prepaid.now();
	v_first numeric;
	v_next timestamptz;
	v_reached timestamptz;
	v_due timestamptz;
	v_ch text;
	v_r integer;
	v_msg bigint;
	v_task bigint;
	v_cmd text;
	v_new boolean := false;   -- the episode opened in this call: nothing sent yet
	v_low numeric;            -- the bounds written with the due time
	v_trip numeric;
BEGIN
	SELECT * INTO m FROM prepaid.meters WHERE meter_id = p_meter;
	p := prepaid.meter_policy(p_meter);
	SELECT max(threshold) INTO v_first FROM prepaid.policy_steps WHERE policy_id = p.policy_id;
	v_first := greatest(coalesce(v_first, p.trip_level), p.trip_level + 0.01);
	SELECT * INTO ep FROM prepaid.arrears_episodes WHERE meter_id = p_meter AND ended_at IS NULL;

	IF ep.episode_id IS NOT NULL AND m.balance >= p.restore_level THEN
		-- Paid back: the episode ends, nothing more is sent, a trip not
		-- yet sent is cancelled.
		UPDATE prepaid.arrears_episodes SET ended_at = v_now, end_reason = 'paid',
		    trip_state = CASE WHEN trip_state IN ('awaiting_approval', 'approved')
		                      THEN 'cancelled' ELSE trip_state END,
		    trip_note = CASE WHEN trip_state IN ('awaiting_approval', 'approved')
		                     THEN 'balance restored' ELSE trip_note END
		WHERE episode_id = ep.episode_id;
		UPDATE prepaid.commands SET state = 'cancelled', detail = 'balance restored'
		WHERE id = ep.trip_command AND state IN ('queued', 'quarantined');
		m.ladder_rearmed := m.balance >= v_first;
		ep := NULL;
	END IF;
	IF ep.episode_id IS NULL THEN
		-- A meter that is not billed (no tariff in force) is not chased.
		IF m.balance >= v_first OR NOT (EXISTS (SELECT 1 FROM prepaid.meter_tariffs x
		        WHERE x.meter_id = p_meter AND x.effective_from <= v_now)
		    OR EXISTS (SELECT 1 FROM prepaid.sites sx WHERE sx.site_id = m.site_id
		        AND sx.default_tariff_id IS NOT NULL)) THEN
			UPDATE prepaid.meters SET ladder_watch = v_first, ladder_due_at = NULL,
			    ladder_rearmed = true, ladder_low = NULL, ladder_trip = NULL,
			    ladder_high = NULL
			WHERE meter_id = p_meter;
			RETURN;
		END IF;
		-- Paid back to the restore level but not above the first threshold:
		-- no new episode until the balance falls below the restore level
		-- again or has been above the first threshold.
		IF NOT m.ladder_rearmed AND m.balance >= p.restore_level THEN
			UPDATE prepaid.meters SET ladder_watch = v_first, ladder_due_at = NULL,
			    ladder_rearmed = false, ladder_low = NULL, ladder_trip = NULL,
			    ladder_high = NULL
			WHERE meter_id = p_meter;
			RETURN;
		END IF;
		INSERT INTO prepaid.arrears_episodes (meter_id, policy_id, started_at, start_balance)
		VALUES (p_meter, p.policy_id, v_now, m.balance)
		RETURNING * INTO ep;
		v_new := true;
		m.ladder_rearmed := false;   -- written with the due time below
	END IF;

	-- Steps reached, their repeats.
	FOR st IN SELECT * FROM prepaid.policy_steps WHERE policy_id = p.policy_id ORDER BY step_no LOOP
		v_reached := NULL;
		IF NOT v_new THEN
			SELECT reached_at INTO v_reached FROM prepaid.episode_steps
			WHERE episode_id = ep.episode_id AND step_no = st.step_no;
		END IF;
		IF v_reached IS NULL THEN
			IF m.balance >= st.threshold THEN
				-- not reached: falling below it wakes the meter
				v_low := greatest(v_low, st.threshold);
				CONTINUE;
			END IF;
			v_reached := v_now;
			INSERT INTO prepaid.episode_steps VALUES (ep.episode_id, st.step_no, v_now);
			UPDATE prepaid.arrears_episodes SET step_no = greatest(step_no, st.step_no)
			WHERE episode_id = ep.episode_id;
		END IF;
		FOR v_r IN 0 .. st.repeat_count - 1 LOOP
			v_due := v_reached + coalesce(st.repeat_every, '0') * v_r;
			IF v_due > v_now THEN
				v_next := least(v_next, v_due);
				EXIT;
			END IF;
			FOREACH v_ch IN ARRAY st.channels LOOP
				CONTINUE WHEN NOT v_new AND EXISTS (SELECT 1 FROM prepaid.episode_sends
				    WHERE episode_id = ep.episode_id AND step_no = st.step_no
				      AND repeat_no = v_r AND channel = v_ch);
				v_msg := NULL;
				v_task := NULL;
				IF v_ch = 'call' THEN
					INSERT INTO prepaid.call_tasks (meter_id, episode_id, reason)
					VALUES (p_meter, ep.episode_id, format('step %s (%s), balance %s',
					    st.step_no, st.template_key, round(m.balance, 2)))
					RETURNING task_id INTO v_task;
				ELSE
					BEGIN
						v_msg := prepaid.send_message(p_meter, st.template_key, v_ch);
					EXCEPTION WHEN no_data_found THEN
						-- no occupant, address or template: recorded, not retried
						INSERT INTO prepaid.episode_sends VALUES (ep.episode_id, st.step_no,
						    v_r, v_ch, v_now, NULL, NULL, SQLERRM);
						CONTINUE;
					END;
				END IF;
				INSERT INTO prepaid.episode_sends VALUES (ep.episode_id, st.step_no, v_r,
				    v_ch, v_now, v_msg, v_task, NULL);
			END LOOP;
		END LOOP;
	END LOOP;

	-- The trip.
	IF m.balance <= p.trip_level THEN
		IF ep.trip_level_at IS NULL THEN
			ep.trip_level_at := v_now;
			UPDATE prepaid.arrears_episodes SET trip_level_at = v_now
			WHERE episode_id = ep.episode_id;
		END IF;
		IF ep.trip_state IS NULL THEN
			IF ep.trip_level_at + p.grace > v_now THEN
				v_next := least(v_next, ep.trip_level_at + p.grace);
			ELSIF p.trip_needs_approval THEN
				UPDATE prepaid.arrears_episodes SET trip_state = 'awaiting_approval'
				WHERE episode_id = ep.episode_id;
			ELSE
				v_cmd := prepaid.queue_trip(p_meter, ep.episode_id, 'arrears: automatic');
			END IF;
		END IF;
	END IF;
	-- Reaching the trip level matters while it would set trip_level_at or
	-- propose the trip. At or below it already, the grace is in v_next or
	-- the trip was proposed; rising above it and falling back within the
	-- grace changes nothing the due time at the grace's end does not see.
	IF m.balance > p.trip_level AND (ep.trip_level_at IS NULL OR ep.trip_state IS NULL) THEN
		v_trip := p.trip_level;
	END IF;
	UPDATE prepaid.meters SET ladder_watch = v_first, ladder_due_at = v_next,
	    ladder_rearmed = m.ladder_rearmed, ladder_low = v_low, ladder_trip = v_trip,
	    ladder_high = p.restore_level
	WHERE meter_id = p_meter;
END $$;

-- Open the episodes of meters that need one and can have it set-based
-- (prepaid.ladder_sweep decides which): p_meters with the first threshold
-- of their policy. The meters are locked by the caller. Ids are drawn
-- first so that the episode, its messages, call tasks and sends can be
-- written in one statement, with the bounds ladder_step writes for a new
-- episode: the highest threshold not reached, the trip level (trip_level_at
-- is not set here: ladder_sweep sends meters at or below it to ladder_step)
-- and the restore level. Returns how many episodes were opened.
-- JIT is off: the row estimates of unnest and generate_series are far
-- above the few hundred rows really handled, and compiling the plan would
-- cost more than running it (about 100 ms a call).
CREATE FUNCTION prepaid.ladder_open(p_meters text[], p_first numeric[]) RETURNS integer
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
	v_now timestamptz := prepaid.now();
	v_n integer;
BEGIN
	WITH src AS MATERIALIZED (
		-- One row per meter: its episode, the deepest step it reaches,
		-- when to look again (the first repeat not yet due), and what a
		-- message needs. No CTE is joined to another below: their row
		-- estimates are no guide for a join.
		SELECT u.meter_id, u.first, m.balance, p.policy_id, s.payment_link,
		       oc.occupant_id, oc.name, oc.language, oc.phone, oc.email, d.step_no, d.due,
		       nextval('prepaid.arrears_episodes_episode_id_seq') AS episode_id,
		       p.trip_level, p.restore_level,
		       (SELECT max(st.threshold) FROM prepaid.policy_steps st
		        WHERE st.policy_id = p.policy_id AND m.balance >= st.threshold) AS low
		FROM unnest(p_meters, p_first) u (meter_id, first)
		JOIN prepaid.meters m ON m.meter_id = u.meter_id
		JOIN prepaid.sites s ON s.site_id = m.site_id
		JOIN prepaid.policies p ON p.policy_id = coalesce(m.policy_id, s.policy_id)
		LEFT JOIN prepaid.meter_occupants mo ON mo.meter_id = m.meter_id
		     AND mo.moved_out IS NULL
		LEFT JOIN prepaid.occupants oc ON oc.occupant_id = mo.occupant_id
		CROSS JOIN LATERAL (
			SELECT coalesce(max(st.step_no), 0) AS step_no,
			       min(CASE WHEN k.n < st.repeat_count
			                THEN v_now + coalesce(st.repeat_every, '0') * k.n END) AS due
			FROM prepaid.policy_steps st
			CROSS JOIN LATERAL (SELECT prepaid.ladder_repeats_due(v_now, st.repeat_every,
			                        st.repeat_count) AS n) k
			WHERE st.policy_id = p.policy_id AND m.balance < st.threshold) d
	), reached AS MATERIALIZED (
		SELECT src.*, st.step_no AS step, st.template_key, st.channels,
		       prepaid.ladder_repeats_due(v_now, st.repeat_every, st.repeat_count) AS repeats
		FROM src JOIN prepaid.policy_steps st ON st.policy_id = src.policy_id
		     AND src.balance < st.threshold
	), sends AS MATERIALIZED (
		SELECT rc.*, r.r, ch.channel,
		       CASE WHEN ch.channel = 'call'
		            THEN nextval('prepaid.call_tasks_task_id_seq') END AS task_id,
		       CASE WHEN ch.channel <> 'call'
		            THEN nextval('prepaid.messages_message_id_seq') END AS message_id
		FROM reached rc
		CROSS JOIN generate_series(0, rc.repeats - 1) r (r)
		CROSS JOIN unnest(rc.channels) ch (channel)
	), episodes AS (
		INSERT INTO prepaid.arrears_episodes (episode_id, meter_id, policy_id, started_at,
		    start_balance, step_no)
		SELECT episode_id, meter_id, policy_id, v_now, balance, step_no FROM src
	), steps AS (
		INSERT INTO prepaid.episode_steps (episode_id, step_no, reached_at)
		SELECT episode_id, step, v_now FROM reached
	), calls AS (
		INSERT INTO prepaid.call_tasks (task_id, meter_id, episode_id, reason)
		SELECT task_id, meter_id, episode_id, format('step %s (%s), balance %s',
		    step, template_key, round(balance, 2))
		FROM sends WHERE channel = 'call'
	), messages AS (
		-- what prepaid.send_message writes
		INSERT INTO prepaid.messages (message_id, meter_id, occupant_id, channel,
		    to_address, language, template_key, params)
		SELECT message_id, meter_id, occupant_id, channel,
		       CASE channel WHEN 'sms' THEN phone WHEN 'email' THEN email END,
		       language, template_key,
		       jsonb_build_object('name', name, 'meter', meter_id,
		           'balance', round(balance, 2)::text,
		           'amount_due', round(greatest(-balance, 0), 2)::text,
		           'link', coalesce(payment_link, ''))
		FROM sends WHERE channel <> 'call'
	), sent AS (
		INSERT INTO prepaid.episode_sends (episode_id, step_no, repeat_no, channel, at,
		    message_id, task_id, note)
		SELECT episode_id, step, r, channel, v_now, message_id, task_id, NULL
		FROM sends
	)
	UPDATE prepaid.meters m SET ladder_watch = src.first, ladder_rearmed = false,
	    ladder_due_at = src.due, ladder_low = src.low,
	    ladder_trip = src.trip_level,
	    ladder_high = src.restore_level
	FROM src
	WHERE m.meter_id = src.meter_id;
	GET DIAGNOSTICS v_n = ROW_COUNT;
	RETURN v_n;
END $$;
