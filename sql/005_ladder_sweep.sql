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
-- two daemons share such meters. Behaviour is that of 004; only the number
-- of statements changes.

-- How many repeats of a step (p_count, every p_every) are due when it is
-- reached at p_now: ladder_step's repeat loop sends from the first one
-- until one falls due later.
CREATE FUNCTION prepaid.ladder_repeats_due(p_now timestamptz, p_every interval,
    p_count integer) RETURNS integer
LANGUAGE sql STABLE AS $$
	SELECT coalesce((SELECT min(r) FROM generate_series(1, p_count - 1) r
	                 WHERE p_now + coalesce(p_every, '0') * r > p_now), p_count)
$$;

-- Open the episodes of meters that need one and can have it set-based
-- (prepaid.ladder_sweep decides which): p_meters with the first threshold
-- of their policy. The meters are locked by the caller. Ids are drawn
-- first so that the episode, its messages, call tasks and sends can be
-- written in one statement. Returns how many episodes were opened.
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
		       nextval('prepaid.arrears_episodes_episode_id_seq') AS episode_id
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
	    ladder_due_at = src.due
	FROM src
	WHERE m.meter_id = src.meter_id;
	GET DIAGNOSTICS v_n = ROW_COUNT;
	RETURN v_n;
END $$;

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
