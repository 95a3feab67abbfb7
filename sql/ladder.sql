-- ladder.sql: occupants and messages (templates, the outbox the daemon
-- dispatches, quiet hours), the guards' clock, and the arrears ladder:
-- policies, episodes, the sweep, trip proposals and approvals, keep-power,
-- the trip guards and the mass-trip breaker.
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

COMMENT ON TABLE prepaid.occupants IS
	'People who live at meters, with their phone, e-mail and language.';
COMMENT ON TABLE prepaid.meter_occupants IS
	'Who lives at which meter, from moving in to moving out.';
COMMENT ON TABLE prepaid.message_templates IS
	'Message texts per template, channel and language, with {{placeholders}}.';
COMMENT ON TABLE prepaid.messages IS
	'The message outbox (SMS and e-mail) the daemon dispatches through its gateways.';
COMMENT ON TABLE prepaid.message_attempts IS
	'Every attempt to send a message: gateway, outcome, answer and duration.';
COMMENT ON TABLE prepaid.clock IS
	'The guards'' clock: prepaid.now() is now() plus offset_by, which moves only where the owner set movable.';
COMMENT ON TABLE prepaid.policies IS
	'Arrears policies: trip level, grace, approval, restore level and trip guards.';
COMMENT ON TABLE prepaid.policy_steps IS
	'The reminder steps of a policy: threshold, channels, template and repeats.';
COMMENT ON TABLE prepaid.arrears_episodes IS
	'Stretches of arrears of a meter, from below the first threshold until paid back, with their trip.';
COMMENT ON TABLE prepaid.episode_steps IS
	'The policy steps an arrears episode reached, and when.';
COMMENT ON TABLE prepaid.episode_sends IS
	'Each reminder an arrears episode sent, per step, repeat and channel, at most once.';
COMMENT ON TABLE prepaid.call_tasks IS
	'Phone calls for staff to make about meters in arrears.';
COMMENT ON TABLE prepaid.trip_breakers IS
	'The mass-trip breaker per site and for the fleet: at most max_trips trips per window_len.';


-- Move an occupant in (the previous one, if any, moves out). Returns the
-- occupant id.
CREATE OR REPLACE FUNCTION prepaid.move_in(p_meter text, p_name text, p_phone text, p_email text,
    p_language text DEFAULT 'zh') RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_id bigint;
BEGIN
	PERFORM prepaid_internal.lock_meter(p_meter);
	UPDATE prepaid.meter_occupants SET moved_out = now()
	WHERE meter_id = p_meter AND moved_out IS NULL;
	INSERT INTO prepaid.occupants (name, phone, email, language)
	VALUES (p_name, p_phone, p_email, p_language)
	RETURNING occupant_id INTO v_id;
	INSERT INTO prepaid.meter_occupants (meter_id, occupant_id) VALUES (p_meter, v_id);
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('move_in', p_meter, jsonb_build_object('occupant', v_id));
	RETURN v_id;
END $$;
COMMENT ON FUNCTION prepaid.move_in(text,text,text,text,text) IS
	'An occupant moves in at a meter (the previous one moves out).';

CREATE OR REPLACE FUNCTION prepaid.move_out(p_meter text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	UPDATE prepaid.meter_occupants SET moved_out = now()
	WHERE meter_id = p_meter AND moved_out IS NULL;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('move_out', p_meter, '{}');
	RETURN true;
END $$;
COMMENT ON FUNCTION prepaid.move_out(text) IS
	'The occupant of a meter moves out.';

   -- {{link}} in messages, e.g. a mini-program URL

-- The end of the quiet hours that t falls in, or t itself when it does not.
CREATE OR REPLACE FUNCTION prepaid_internal.after_quiet_hours(p_site text, p_t timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
	SELECT CASE
	  WHEN s.quiet_from = s.quiet_until THEN p_t
	  WHEN s.quiet_from < s.quiet_until THEN
	    CASE WHEN l.t::time >= s.quiet_from AND l.t::time < s.quiet_until
	         THEN (l.t::date + s.quiet_until) AT TIME ZONE s.time_zone ELSE p_t END
	  ELSE -- wraps midnight, e.g. 21:00 to 08:00
	    CASE WHEN l.t::time >= s.quiet_from
	         THEN (l.t::date + 1 + s.quiet_until) AT TIME ZONE s.time_zone
	         WHEN l.t::time < s.quiet_until
	         THEN (l.t::date + s.quiet_until) AT TIME ZONE s.time_zone
	         ELSE p_t END
	END
	FROM prepaid.sites s CROSS JOIN LATERAL (SELECT p_t AT TIME ZONE s.time_zone AS t) l
	WHERE s.site_id = p_site
$$;

CREATE OR REPLACE FUNCTION prepaid_internal.messages_notify_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('prepaid.notify', true) IS DISTINCT FROM 'off' THEN
		PERFORM pg_notify('prepaid_messages', '');
	END IF;
	RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS messages_notify ON prepaid.messages;
CREATE TRIGGER messages_notify AFTER INSERT ON prepaid.messages
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.messages_notify_trigger();

-- Queue a message to a meter's current occupant, rendered from a template
-- (channel sms: to the phone, email: to the e-mail address, in the
-- occupant's language). extra adds or overrides placeholder values.
-- Returns the message id.
CREATE OR REPLACE FUNCTION prepaid.send_message(p_meter text, p_template text,
    p_channel text DEFAULT 'sms', p_extra jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_occupant bigint;
	v_name text;
	v_language text;
	v_to text;
	v_has_template boolean;
	v_link text;
	v_balance numeric;
	v_found boolean;
	v_id bigint;
BEGIN
	-- Everything the message needs, in one look.
	SELECT true, oc.occupant_id, oc.name, oc.language,
	       CASE p_channel WHEN 'sms' THEN oc.phone WHEN 'email' THEN oc.email END,
	       EXISTS (SELECT 1 FROM prepaid.message_templates t WHERE t.template_key = p_template
	               AND t.channel = p_channel AND t.language = oc.language),
	       s.payment_link, m.balance
	INTO v_found, v_occupant, v_name, v_language, v_to, v_has_template, v_link, v_balance
	FROM prepaid.meters m JOIN prepaid.sites s ON s.site_id = m.site_id
	LEFT JOIN prepaid.meter_occupants mo ON mo.meter_id = m.meter_id AND mo.moved_out IS NULL
	LEFT JOIN prepaid.occupants oc ON oc.occupant_id = mo.occupant_id
	WHERE m.meter_id = p_meter;
	IF v_found IS NULL THEN
		RAISE EXCEPTION 'unknown meter "%"', p_meter USING ERRCODE = 'no_data_found';
	END IF;
	IF v_occupant IS NULL THEN
		RAISE EXCEPTION 'meter "%" has no occupant (prepaid.move_in first)', p_meter
			USING ERRCODE = 'no_data_found';
	END IF;
	IF coalesce(v_to, '') = '' THEN
		RAISE EXCEPTION 'occupant % of meter "%" has no % address', v_occupant, p_meter, p_channel
			USING ERRCODE = 'no_data_found';
	END IF;
	IF NOT v_has_template THEN
		RAISE EXCEPTION 'no % template "%" in language %', p_channel, p_template, v_language
			USING ERRCODE = 'no_data_found';
	END IF;
	INSERT INTO prepaid.messages (meter_id, occupant_id, channel, to_address, language,
	    template_key, params)
	VALUES (p_meter, v_occupant, p_channel, v_to, v_language, p_template,
	    jsonb_build_object('name', v_name, 'meter', p_meter,
	        'balance', round(v_balance, 2)::text,
	        'amount_due', round(greatest(-v_balance, 0), 2)::text,
	        'link', coalesce(v_link, '')) || p_extra)
	RETURNING message_id INTO v_id;
	RETURN v_id;
END $$;
COMMENT ON FUNCTION prepaid.send_message(text,text,text,jsonb) IS
	'Queue a message from a template to a meter''s occupant; returns the message id.';

CREATE OR REPLACE FUNCTION prepaid.cancel_message(p_id bigint, p_reason text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	UPDATE prepaid.messages SET state = 'cancelled', last_error = p_reason
	WHERE message_id = p_id AND state = 'queued';
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	INSERT INTO prepaid.operator_audit (action, detail)
	VALUES ('cancel_message', jsonb_build_object('message', p_id, 'reason', p_reason));
	RETURN true;
END $$;
COMMENT ON FUNCTION prepaid.cancel_message(bigint,text) IS
	'Cancel a queued message; true if it was cancelled.';

-- Called by the daemon: put back messages whose lease ran out, fail those
-- whose template is gone, move due messages that fall in their site's quiet
-- hours to the end of them, then claim, for each of its gateways, at most
-- as many due messages as that gateway has free sending slots: a message
-- names its gateway, or goes to the default gateway of its channel (the
-- first one configured for it: p_default). Returns what the daemon needs to
-- render and send them.
CREATE OR REPLACE FUNCTION prepaid_internal.claim_messages(p_gateways text[], p_channels text[],
    p_default boolean[], p_limits integer[], p_lease interval)
RETURNS TABLE (message_id bigint, attempt integer, meter_id text, channel text,
    gateway text, to_address text, language text, subject text, body text, params jsonb)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	i integer;
BEGIN
	UPDATE prepaid.messages m SET state = 'queued', lease_until = NULL,
	    last_error = 'lease expired: the sending daemon stopped'
	WHERE m.state = 'sending' AND m.lease_until < now();

	-- Only the candidates are looked at (never the whole queue): those in
	-- quiet hours wait for their end, those whose template is gone fail,
	-- the rest are claimed.
	FOR i IN 1 .. coalesce(cardinality(p_gateways), 0) LOOP
		CONTINUE WHEN p_limits[i] <= 0;
		RETURN QUERY
		WITH cand AS (
			SELECT x.message_id, x.meter_id, x.channel, x.template_key, x.language
			FROM prepaid.messages x
			WHERE x.state = 'queued' AND x.next_attempt_at <= now()
			  AND (x.gateway = p_gateways[i]
			       OR (x.gateway IS NULL AND p_default[i] AND x.channel = p_channels[i]))
			ORDER BY x.next_attempt_at LIMIT p_limits[i]
			FOR UPDATE SKIP LOCKED
		), chk AS (
			SELECT c.message_id, t.body, t.subject, t.template_key IS NOT NULL AS has_template,
			       coalesce(prepaid_internal.after_quiet_hours(mt.site_id, now()), now()) AS ok_at
			FROM cand c
			LEFT JOIN prepaid.meters mt ON mt.meter_id = c.meter_id
			LEFT JOIN prepaid.message_templates t ON t.template_key = c.template_key
			     AND t.channel = c.channel AND t.language = c.language
		), failed AS (
			UPDATE prepaid.messages m SET state = 'failed',
			    last_error = format('no %s template "%s" in language %s', m.channel,
			                        m.template_key, m.language)
			FROM chk WHERE m.message_id = chk.message_id AND NOT chk.has_template
			RETURNING 1
		), deferred AS (
			UPDATE prepaid.messages m SET next_attempt_at = chk.ok_at
			FROM chk WHERE m.message_id = chk.message_id AND chk.has_template
			  AND chk.ok_at > now()
			RETURNING 1
		)
		UPDATE prepaid.messages m SET state = 'sending', attempts = m.attempts + 1,
		    lease_until = now() + p_lease, gateway = coalesce(m.gateway, p_gateways[i])
		FROM chk
		WHERE m.message_id = chk.message_id AND chk.has_template AND chk.ok_at <= now()
		RETURNING m.message_id, m.attempts, m.meter_id, m.channel, m.gateway, m.to_address,
		          m.language, chk.subject, chk.body, m.params;
	END LOOP;
END $$;

-- Called by the daemon with the outcome of an attempt: 'sent', 'retry'
-- (again after p_retry_after) or 'failed' (final). Ignored unless the
-- message is still 'sending' in that attempt (a lease that ran out).
CREATE OR REPLACE FUNCTION prepaid_internal.finish_message(p_id bigint, p_attempt integer, p_gateway text,
    p_outcome text, p_status integer, p_answer text, p_provider_id text, p_error text,
    p_duration_ms integer, p_retry_after interval) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	INSERT INTO prepaid.message_attempts (message_id, attempt, gateway, outcome, http_status,
	    answer_code, provider_id, error, duration_ms)
	VALUES (p_id, p_attempt, p_gateway, p_outcome, p_status, p_answer, p_provider_id,
	    p_error, p_duration_ms)
	ON CONFLICT DO NOTHING;
	UPDATE prepaid.messages SET
		state = CASE p_outcome WHEN 'sent' THEN 'sent' WHEN 'failed' THEN 'failed' ELSE 'queued' END,
		lease_until = NULL,
		sent_at = CASE WHEN p_outcome = 'sent' THEN now() END,
		provider_id = coalesce(p_provider_id, provider_id),
		last_error = CASE WHEN p_outcome = 'sent' THEN NULL ELSE p_error END,
		next_attempt_at = CASE WHEN p_outcome = 'retry' THEN now() + p_retry_after
		                       ELSE next_attempt_at END
	WHERE message_id = p_id AND state = 'sending' AND attempts = p_attempt;
	RETURN FOUND;
END $$;

-- ------------------------------------------------------------------ views

CREATE OR REPLACE VIEW prepaid.message_status AS
SELECT m.message_id, m.meter_id, m.channel, coalesce(a.gateway, m.gateway) AS gateway,
       -- the address, masked: operators see whom, not the number
       CASE WHEN length(m.to_address) > 4
            THEN repeat('*', length(m.to_address) - 4) || right(m.to_address, 4)
            ELSE m.to_address END AS to_masked,
       m.template_key, m.language, m.state, m.attempts, m.created_at, m.created_by,
       m.next_attempt_at, m.sent_at, m.provider_id, m.last_error,
       a.http_status AS last_http_status, a.answer_code AS last_answer
FROM prepaid.messages m
LEFT JOIN LATERAL (SELECT * FROM prepaid.message_attempts x WHERE x.message_id = m.message_id
                   ORDER BY x.attempt DESC LIMIT 1) a ON true;
COMMENT ON VIEW prepaid.message_status IS
	'Messages with their state, gateway and last attempt.';

-- Per gateway, over the last day: messages sent and failed, attempts retried.
CREATE OR REPLACE VIEW prepaid.gateway_stats AS
SELECT a.gateway,
       count(*) FILTER (WHERE a.outcome = 'sent') AS sent,
       count(*) FILTER (WHERE a.outcome = 'failed') AS failed,
       count(*) FILTER (WHERE a.outcome = 'retry') AS retried,
       round(avg(a.duration_ms)) AS avg_ms,
       max(a.at) AS last_attempt
FROM prepaid.message_attempts a
WHERE a.at > now() - interval '1 day'
GROUP BY a.gateway;
COMMENT ON VIEW prepaid.gateway_stats IS
	'Per gateway over the last day: messages sent, retried and failed, and answer times.';

-- Several outcomes at once, one transaction: [{"id", "attempt", "gateway",
-- "outcome", "status", "answer", "provider_id", "error", "duration_ms",
-- "retry_after_ms"}, ...] as the daemon batches them. Returns how many
-- were recorded.
CREATE OR REPLACE FUNCTION prepaid_internal.finish_messages(p_outcomes jsonb) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	o jsonb;
	v_n integer := 0;
BEGIN
	FOR o IN SELECT value FROM jsonb_array_elements(p_outcomes) LOOP
		IF prepaid_internal.finish_message((o->>'id')::bigint, (o->>'attempt')::int, o->>'gateway',
		    o->>'outcome', (o->>'status')::int, o->>'answer', o->>'provider_id', o->>'error',
		    (o->>'duration_ms')::int,
		    make_interval(secs => coalesce((o->>'retry_after_ms')::numeric, 0) / 1000)) THEN
			v_n := v_n + 1;
		END IF;
	END LOOP;
	RETURN v_n;
END $$;

CREATE OR REPLACE FUNCTION prepaid.now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
	SELECT now() + (SELECT offset_by FROM prepaid.clock)
$$;
COMMENT ON FUNCTION prepaid.now() IS
	'The guards'' clock: now() plus the offset in prepaid.clock.';

-- The clock moves only where the owner set movable (no runtime role may
-- write prepaid.clock at all), and every move is audited with the login
-- role that made it, whoever that is.
CREATE OR REPLACE FUNCTION prepaid_internal.clock_guard_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.offset_by IS DISTINCT FROM OLD.offset_by THEN
		IF NOT NEW.movable THEN
			RAISE EXCEPTION 'the guards'' clock is not movable in this database'
				USING ERRCODE = 'insufficient_privilege',
				      HINT = 'Drills and tests: the owner sets prepaid.clock.movable first.';
		END IF;
		INSERT INTO prepaid.operator_audit (action, detail)
		VALUES ('move_clock', jsonb_build_object('from', OLD.offset_by, 'to', NEW.offset_by,
		    'reason', current_setting('prepaid.clock_reason', true)));
	END IF;
	RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS clock_guard ON prepaid.clock;
CREATE TRIGGER clock_guard BEFORE UPDATE ON prepaid.clock
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.clock_guard_trigger();

-- Move the guards' clock to now() + p_offset, for a drill; refused unless
-- the owner made the clock movable.
CREATE OR REPLACE FUNCTION prepaid.move_clock(p_offset interval, p_reason text) RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	IF p_offset IS NULL OR p_reason IS NULL OR p_reason = '' THEN
		RAISE EXCEPTION 'move_clock: an offset and a reason are needed'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM set_config('prepaid.clock_reason', p_reason, true);
	UPDATE prepaid.clock SET offset_by = p_offset;
	RETURN prepaid.now();
END $$;
COMMENT ON FUNCTION prepaid.move_clock(interval, text) IS
	'Move the guards'' clock to now() plus an offset, for a drill; only where the owner made it movable.';

-- A balance change makes the meter due for the sweep when it is below the
-- first threshold of its policy, or was (or the threshold is unknown yet).
-- The WHEN clause keeps this off the common path: most meters are above it.
CREATE OR REPLACE FUNCTION prepaid_internal.meters_ladder_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	NEW.ladder_due_at := least(NEW.ladder_due_at, now());
	IF NEW.ladder_due_at IS NULL THEN
		NEW.ladder_due_at := now();
	END IF;
	RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS meters_ladder ON prepaid.meters;
CREATE TRIGGER meters_ladder BEFORE UPDATE OF balance ON prepaid.meters
	FOR EACH ROW WHEN (NEW.balance IS DISTINCT FROM OLD.balance
	    AND (NEW.ladder_watch IS NULL OR NEW.balance < NEW.ladder_watch
	         OR OLD.balance < NEW.ladder_watch)
	    AND (NEW.ladder_high IS NULL OR NEW.balance >= NEW.ladder_high
	         OR NEW.balance < NEW.ladder_low OR NEW.balance <= NEW.ladder_trip))
	EXECUTE FUNCTION prepaid_internal.meters_ladder_trigger();

DROP TRIGGER IF EXISTS meters_ladder_new ON prepaid.meters;
CREATE TRIGGER meters_ladder_new BEFORE INSERT ON prepaid.meters
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.meters_ladder_trigger();

-- A policy change makes every meter it may concern due again, and forgets
-- the bounds: they were worked out from the old policy.
CREATE OR REPLACE FUNCTION prepaid_internal.policies_changed_trigger() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	UPDATE prepaid.meters SET ladder_watch = NULL, ladder_due_at = now(),
	    ladder_low = NULL, ladder_trip = NULL, ladder_high = NULL;
	RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS policies_changed ON prepaid.policies;
CREATE TRIGGER policies_changed AFTER INSERT OR UPDATE OR DELETE ON prepaid.policies
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid_internal.policies_changed_trigger();

DROP TRIGGER IF EXISTS policy_steps_changed ON prepaid.policy_steps;
CREATE TRIGGER policy_steps_changed AFTER INSERT OR UPDATE OR DELETE ON prepaid.policy_steps
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid_internal.policies_changed_trigger();

CREATE OR REPLACE FUNCTION prepaid_internal.meters_policy_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	NEW.ladder_watch := NULL;
	NEW.ladder_due_at := now();
	NEW.ladder_low := NULL;
	NEW.ladder_trip := NULL;
	NEW.ladder_high := NULL;
	RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS meters_policy ON prepaid.meters;
CREATE TRIGGER meters_policy BEFORE UPDATE OF policy_id, site_id ON prepaid.meters
	FOR EACH ROW WHEN (OLD.policy_id IS DISTINCT FROM NEW.policy_id
	                   OR OLD.site_id IS DISTINCT FROM NEW.site_id)
	EXECUTE FUNCTION prepaid_internal.meters_policy_trigger();

CREATE OR REPLACE FUNCTION prepaid_internal.sites_policy_trigger() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	UPDATE prepaid.meters SET ladder_watch = NULL, ladder_due_at = now(),
	    ladder_low = NULL, ladder_trip = NULL, ladder_high = NULL
	WHERE site_id = NEW.site_id;
	RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS sites_policy ON prepaid.sites;
CREATE TRIGGER sites_policy AFTER UPDATE OF policy_id ON prepaid.sites
	FOR EACH ROW WHEN (OLD.policy_id IS DISTINCT FROM NEW.policy_id)
	EXECUTE FUNCTION prepaid_internal.sites_policy_trigger();

CREATE OR REPLACE FUNCTION prepaid.call_done(p_task bigint, p_note text) RETURNS boolean
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	UPDATE prepaid.call_tasks SET done_at = now(), done_by = session_user, note = p_note
	WHERE task_id = p_task AND done_at IS NULL
	RETURNING true;
$$;
COMMENT ON FUNCTION prepaid.call_done(bigint,text) IS
	'Mark a phone call task done, with a note.';

-- The policy of a meter.
CREATE OR REPLACE FUNCTION prepaid.meter_policy(p_meter text) RETURNS prepaid.policies
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	SELECT p.* FROM prepaid.meters m JOIN prepaid.sites s ON s.site_id = m.site_id
	JOIN prepaid.policies p ON p.policy_id = coalesce(m.policy_id, s.policy_id)
	WHERE m.meter_id = p_meter
$$;
COMMENT ON FUNCTION prepaid.meter_policy(text) IS
	'The arrears policy that applies to a meter.';

-- Move one meter's ladder forward: open or end its episode, send the steps
-- and repeats that are due (each at most once), propose the trip when its
-- grace has passed, and set when to look again. The meter row is locked by
-- the caller. It also writes the bounds: where an open episode would next
-- need it on a balance change (the highest threshold of a step not reached
-- yet; the trip level while the trip can still be proposed and the balance
-- is above it; the restore level), and no bounds without an episode, where
-- the trigger's threshold condition is the rule.
CREATE OR REPLACE FUNCTION prepaid_internal.ladder_step(p_meter text) RETURNS void
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
		-- Its reminders not sent yet (held by quiet hours, waiting for a
		-- retry) never go out after the payment.
		UPDATE prepaid.messages x SET state = 'cancelled',
		    last_error = 'episode ended: paid'
		        || coalesce(', entry ' || (SELECT max(l.entry_id) FROM prepaid.ledger l
		                                   WHERE l.meter_id = p_meter
		                                     AND l.kind IN ('payment', 'adjustment')), '')
		FROM prepaid.episode_sends es
		WHERE es.episode_id = ep.episode_id AND es.message_id = x.message_id
		  AND x.state = 'queued';
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
				v_cmd := prepaid_internal.queue_trip(p_meter, ep.episode_id, 'arrears: automatic');
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

-- Queue the trip command of an episode (state approved). The guards run
-- when it is sent (prepaid_internal.claim_commands).
CREATE OR REPLACE FUNCTION prepaid_internal.queue_trip(p_meter text, p_episode bigint, p_reason text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	v_id text;
BEGIN
	v_id := prepaid.send_command(p_meter, 'trip', p_reason,
	    (prepaid.meter_policy(p_meter)).trip_valid_for);
	UPDATE prepaid.commands SET ladder = true WHERE id = v_id;
	UPDATE prepaid.arrears_episodes SET trip_state = 'approved', trip_command = v_id
	WHERE episode_id = p_episode;
	RETURN v_id;
END $$;

-- Called by the daemon: the ladder of up to p_limit due meters. Returns how
-- many it looked at (p_limit: call again).
CREATE OR REPLACE FUNCTION prepaid_internal.ladder_sweep(p_limit integer) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
SET jit = off AS $$
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
		PERFORM prepaid_internal.ladder_open(v_open, v_open_first);
	END IF;
	IF v_step IS NOT NULL THEN
		FOREACH v_m IN ARRAY v_step LOOP
			PERFORM prepaid_internal.ladder_step(v_m);
		END LOOP;
	END IF;

	-- The rest of the page, one meter at a time (the meters above are no
	-- longer due).
	IF v_n < p_limit THEN
		FOR v_m IN SELECT meter_id FROM prepaid.meters
		           WHERE ladder_due_at <= v_now
		           ORDER BY ladder_due_at LIMIT p_limit - v_n
		           FOR NO KEY UPDATE SKIP LOCKED LOOP
			PERFORM prepaid_internal.ladder_step(v_m);
			v_n := v_n + 1;
		END LOOP;
	END IF;
	RETURN v_n;
END $$;

-- ----------------------------------------------------------- operator

CREATE OR REPLACE FUNCTION prepaid.approve_trip(p_meter text) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	ep prepaid.arrears_episodes;
	v_id text;
BEGIN
	SELECT * INTO ep FROM prepaid.arrears_episodes
	WHERE meter_id = p_meter AND ended_at IS NULL AND trip_state = 'awaiting_approval'
	FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'meter "%" has no trip awaiting approval', p_meter
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	v_id := prepaid_internal.queue_trip(p_meter, ep.episode_id, 'arrears: approved by ' || session_user);
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('approve_trip', p_meter, jsonb_build_object('episode', ep.episode_id, 'command', v_id));
	RETURN v_id;
END $$;
COMMENT ON FUNCTION prepaid.approve_trip(text) IS
	'Approve the trip the ladder proposes for a meter.';

CREATE OR REPLACE FUNCTION prepaid.cancel_trip(p_meter text, p_reason text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	ep prepaid.arrears_episodes;
BEGIN
	SELECT * INTO ep FROM prepaid.arrears_episodes
	WHERE meter_id = p_meter AND ended_at IS NULL
	  AND trip_state IN ('awaiting_approval', 'approved') FOR UPDATE;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	UPDATE prepaid.arrears_episodes SET trip_state = 'cancelled', trip_note = p_reason
	WHERE episode_id = ep.episode_id;
	UPDATE prepaid.commands SET state = 'cancelled', detail = p_reason
	WHERE id = ep.trip_command AND state IN ('queued', 'quarantined');
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('cancel_trip', p_meter, jsonb_build_object('episode', ep.episode_id, 'reason', p_reason));
	RETURN true;
END $$;
COMMENT ON FUNCTION prepaid.cancel_trip(text,text) IS
	'Cancel a meter''s proposed or queued trip, with a reason.';

-- Keep power (保电): the meter is never tripped while on (until p_until, if
-- given); meters that support it are told too.
CREATE OR REPLACE FUNCTION prepaid.keep_power(p_meter text, p_on boolean, p_reason text,
    p_until timestamptz DEFAULT NULL) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	PERFORM prepaid_internal.lock_meter(p_meter);
	UPDATE prepaid.meters SET keep_power = p_on, keep_power_until = CASE WHEN p_on THEN p_until END,
	    keep_power_reason = p_reason
	WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('keep_power', p_meter, jsonb_build_object('on', p_on, 'reason', p_reason, 'until', p_until));
	RETURN prepaid.send_command(p_meter, CASE WHEN p_on THEN 'keep_power_on' ELSE 'keep_power_off' END,
	    p_reason);
END $$;
COMMENT ON FUNCTION prepaid.keep_power(text,boolean,text,timestamp with time zone) IS
	'Keep a meter''s power on (no trips), or end that, until a time.';

CREATE OR REPLACE FUNCTION prepaid.release_breaker(p_scope text DEFAULT '*') RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_n integer;
BEGIN
	UPDATE prepaid.trip_breakers SET tripped_at = NULL, released_at = now(),
	    released_by = session_user
	WHERE scope = p_scope;
	-- Quarantined trips go back to the queue: the guards run again.
	UPDATE prepaid.commands c SET state = 'queued', next_attempt_at = now(),
	    valid_until = now() + (c.valid_until - c.created_at),
	    detail = 'released from quarantine by ' || session_user
	FROM prepaid.meters m
	WHERE c.meter_id = m.meter_id AND c.state = 'quarantined'
	  AND (p_scope = '*' OR m.site_id = p_scope);
	GET DIAGNOSTICS v_n = ROW_COUNT;
	INSERT INTO prepaid.operator_audit (action, detail)
	VALUES ('release_breaker', jsonb_build_object('scope', p_scope, 'released', v_n));
	RETURN v_n;
END $$;
COMMENT ON FUNCTION prepaid.release_breaker(text) IS
	'Close the mass-trip breaker of a scope and release its quarantined trips.';

-- The guards of one trip at the moment of sending (local day and time on
-- the ladder's clock; reading age and the breaker's window on the real
-- clock, which is what last_seen and sent_at are written with): NULL to
-- send now, or
-- ('defer', until, reason), ('cancel', NULL, reason), ('quarantine', NULL,
-- reason).
CREATE OR REPLACE FUNCTION prepaid_internal.trip_guard(p_command text, OUT verdict text, OUT until timestamptz,
    OUT reason text)
LANGUAGE plpgsql AS $$
DECLARE
	c prepaid.commands;
	m prepaid.meters;
	s prepaid.sites;
	p prepaid.policies;
	v_now timestamptz := prepaid.now();
	v_local timestamp;
	v_day date;
	b prepaid.trip_breakers;
	v_count integer;
BEGIN
	SELECT * INTO c FROM prepaid.commands WHERE id = p_command;
	SELECT * INTO m FROM prepaid.meters WHERE meter_id = c.meter_id;
	SELECT * INTO s FROM prepaid.sites WHERE site_id = m.site_id;
	p := prepaid.meter_policy(c.meter_id);
	v_local := v_now AT TIME ZONE s.time_zone;
	v_day := v_local::date;

	IF m.keep_power AND (m.keep_power_until IS NULL OR m.keep_power_until > v_now) THEN
		verdict := 'cancel'; reason := 'keep power: ' || coalesce(m.keep_power_reason, '');
		RETURN;
	END IF;
	IF NOT c.ladder THEN
		-- an operator's own trip: keep-power (above) and the breaker only
		NULL;
	ELSIF m.balance > p.trip_level THEN
		verdict := 'cancel'; reason := format('balance %s is above the trip level %s',
		    round(m.balance, 2), p.trip_level);
		RETURN;
	ELSIF m.last_seen IS NULL OR m.last_seen < now() - p.reading_max_age THEN
		verdict := 'defer'; until := v_now + interval '15 minutes';
		reason := 'no recent reading: the balance may be stale';
		RETURN;
	ELSIF EXISTS (SELECT 1 FROM prepaid.orders o WHERE o.meter_id = m.meter_id
	              AND o.state = 'pending' AND o.expires_at > now()) THEN
		verdict := 'defer'; reason := 'a payment order is pending';
		SELECT max(o.expires_at) + interval '1 minute' + (v_now - now()) INTO until
		FROM prepaid.orders o WHERE o.meter_id = m.meter_id AND o.state = 'pending';
		RETURN;
	ELSIF NOT p.trip_on_rest_days AND prepaid.day_type(s.calendar, v_day) = 'rest' THEN
		verdict := 'defer'; reason := 'weekend or holiday';
		-- the next working day at the end of the quiet hours
		SELECT (d::date + p.trip_quiet_until) AT TIME ZONE s.time_zone INTO until
		FROM generate_series(v_day + 1, v_day + 30, interval '1 day') d
		WHERE prepaid.day_type(s.calendar, d::date) = 'work' ORDER BY d LIMIT 1;
		RETURN;
	ELSIF p.trip_quiet_from <> p.trip_quiet_until AND (
	    (p.trip_quiet_from < p.trip_quiet_until AND v_local::time >= p.trip_quiet_from
	     AND v_local::time < p.trip_quiet_until)
	    OR (p.trip_quiet_from > p.trip_quiet_until AND (v_local::time >= p.trip_quiet_from
	        OR v_local::time < p.trip_quiet_until))) THEN
		verdict := 'defer'; reason := 'quiet hours';
		until := (CASE WHEN v_local::time >= p.trip_quiet_until AND p.trip_quiet_from > p.trip_quiet_until
		               THEN v_day + 1 ELSE v_day END + p.trip_quiet_until) AT TIME ZONE s.time_zone;
		RETURN;
	END IF;
	-- The breaker: the site's, then the fleet's.
	FOR b IN SELECT * FROM prepaid.trip_breakers WHERE scope IN (m.site_id, '*')
	         ORDER BY scope = '*' FOR UPDATE LOOP
		IF b.tripped_at IS NOT NULL THEN
			verdict := 'quarantine'; reason := format('mass-trip breaker %s is open', b.scope);
			RETURN;
		END IF;
		SELECT count(*) INTO v_count FROM prepaid.commands x JOIN prepaid.meters y
		    ON y.meter_id = x.meter_id
		WHERE x.action = 'trip'
		  AND x.sent_at > greatest(now() - b.window_len, coalesce(b.released_at, '-infinity'))
		  AND x.state IN ('queued', 'sent', 'acked', 'unknown') AND (b.scope = '*' OR y.site_id = b.scope);
		IF v_count >= b.max_trips THEN
			UPDATE prepaid.trip_breakers SET tripped_at = v_now WHERE scope = b.scope;
			-- the alert: every daemon logs it and counts it in /metrics
			PERFORM pg_notify('prepaid_alerts', format('mass-trip breaker %s opened: %s trips '
			    'within %s; further trips are quarantined until prepaid.release_breaker(%L)',
			    b.scope, v_count, b.window_len, b.scope));
			verdict := 'quarantine';
			reason := format('mass-trip breaker %s: %s trips within %s', b.scope, v_count, b.window_len);
			RETURN;
		END IF;
	END LOOP;
END $$;

-- A trip is done when the meter acknowledged it and reports the relay open.
CREATE OR REPLACE FUNCTION prepaid_internal.trip_confirm_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.arrears_episodes SET trip_state = CASE
	        WHEN NEW.state = 'acked' AND NEW.relay_after = 'open' THEN 'confirmed'
	        -- acknowledged, but the meter does not say the relay is open
	        WHEN NEW.state = 'acked' THEN 'unknown'
	        WHEN NEW.state = 'sent' THEN 'sent'
	        WHEN NEW.state IN ('unknown', 'rejected', 'unsupported', 'expired') THEN 'unknown'
	        ELSE trip_state END
	    , trip_note = CASE WHEN NEW.state = 'acked' AND NEW.relay_after IS DISTINCT FROM 'open'
	                       THEN format('acknowledged with relay %s: check the meter',
	                                   coalesce(NEW.relay_after, 'not reported'))
	                       ELSE trip_note END
	WHERE trip_command = NEW.id;
	RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS commands_trip_confirm ON prepaid.commands;
CREATE TRIGGER commands_trip_confirm AFTER UPDATE OF state ON prepaid.commands
	FOR EACH ROW WHEN (NEW.action = 'trip' AND OLD.state IS DISTINCT FROM NEW.state)
	EXECUTE FUNCTION prepaid_internal.trip_confirm_trigger();

-- ------------------------------------------------------------------ views

CREATE OR REPLACE VIEW prepaid.arrears AS
SELECT e.meter_id, m.site_id, e.policy_id, round(m.balance, 2) AS balance, e.step_no,
       e.started_at, e.trip_level_at, e.trip_state, e.trip_note,
       (SELECT max(s.at) FROM prepaid.episode_sends s WHERE s.episode_id = e.episode_id) AS last_sent,
       e.episode_id
FROM prepaid.arrears_episodes e JOIN prepaid.meters m ON m.meter_id = e.meter_id
WHERE e.ended_at IS NULL;
COMMENT ON VIEW prepaid.arrears IS
	'Meters in an open arrears episode, with balance, step and trip state.';

CREATE OR REPLACE VIEW prepaid.trips_awaiting_approval AS
SELECT e.meter_id, m.site_id, round(m.balance, 2) AS balance, e.trip_level_at, e.started_at,
       e.episode_id
FROM prepaid.arrears_episodes e JOIN prepaid.meters m ON m.meter_id = e.meter_id
WHERE e.ended_at IS NULL AND e.trip_state = 'awaiting_approval'
  -- a balance that recovered above the trip level has nothing to approve
  AND m.balance <= (prepaid.meter_policy(e.meter_id)).trip_level;
COMMENT ON VIEW prepaid.trips_awaiting_approval IS
	'Trips the ladder proposes that wait for prepaid.approve_trip.';

CREATE OR REPLACE VIEW prepaid.trips_quarantined AS
SELECT c.id, c.meter_id, m.site_id, c.created_at, c.detail
FROM prepaid.commands c JOIN prepaid.meters m ON m.meter_id = c.meter_id
WHERE c.state = 'quarantined';
COMMENT ON VIEW prepaid.trips_quarantined IS
	'Trips held by the mass-trip breaker.';

CREATE OR REPLACE VIEW prepaid.open_call_tasks AS
SELECT t.task_id, t.meter_id, t.created_at, t.reason, o.name, o.phone, o.language
FROM prepaid.call_tasks t
LEFT JOIN prepaid.meter_occupants mo ON mo.meter_id = t.meter_id AND mo.moved_out IS NULL
LEFT JOIN prepaid.occupants o ON o.occupant_id = mo.occupant_id
WHERE t.done_at IS NULL;
COMMENT ON VIEW prepaid.open_call_tasks IS
	'Phone calls for staff not made yet.';

-- The ladder sweep, set-based in its common case. A sweep locks the due meters that may need no per-meter work (no
-- open episode, balance above the trip level) in one statement, and then
-- does, over the whole page at once, what prepaid_internal.ladder_step would do for
-- each of them: record that a meter needs nothing (above the first
-- threshold, not billed, or paid back but not re-armed), or open its
-- episode with the steps it reached, the messages and call tasks of those
-- steps (as prepaid.send_message and ladder_step write them) and their
-- episode_sends rows, and set when to look again. Everything else -- open
-- episodes (repeats, deeper steps, the end of an episode), trips, and a
-- message that cannot be sent (no occupant, address or template, which
-- ladder_step records with its reason) -- still goes through ladder_step,
-- one meter at a time and fetched a few rows at a time as before, so that
-- two daemons share such meters. What is sent, and when, is ladder_step's.
--
-- A balance change wakes the ladder for a meter in arrears only when it
-- crosses a bound that matters. Were every balance change below the first
-- threshold to make the meter due, a meter in an open episode that keeps
-- using power would run prepaid_internal.ladder_step on each of its readings
-- for nothing. So ladder_step and ladder_open write, with the due time, the
-- balances at which the next look would do something: below the threshold
-- of the next step not yet reached (ladder_low), at or below the trip level
-- while the trip may still be proposed (ladder_trip), at or above the
-- restore level, where the episode ends (ladder_high). The trigger
-- meters_ladder makes the meter due only across one of them. ladder_high
-- NULL means no bounds (no open episode, anything that does not know
-- them): the trigger then makes the meter due on any change below the
-- first threshold. Time-based due times (repeats, grace) are unchanged.

-- How many repeats of a step (p_count, every p_every) are due when it is
-- reached at p_now: ladder_step's repeat loop sends from the first one
-- until one falls due later.
CREATE OR REPLACE FUNCTION prepaid_internal.ladder_repeats_due(p_now timestamptz, p_every interval,
    p_count integer) RETURNS integer
LANGUAGE sql STABLE AS $$
	SELECT coalesce((SELECT min(r) FROM generate_series(1, p_count - 1) r
	                 WHERE p_now + coalesce(p_every, '0') * r > p_now), p_count)
$$;

-- The bounds describe one open episode as ladder_step left it. An episode
-- changed behind its back (ended, its trip or trip level cleared, or a
-- reached step removed, as an operator in psql might do) makes them wrong:
-- they are dropped, and the meter is due on any balance change below the
-- first threshold until ladder_step writes them again. ladder_step's own end of an
-- episode passes here too; it writes the meter row afterwards anyway.
CREATE OR REPLACE FUNCTION prepaid_internal.ladder_bounds_reset_trigger() RETURNS trigger
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

DROP TRIGGER IF EXISTS arrears_episodes_bounds ON prepaid.arrears_episodes;
CREATE TRIGGER arrears_episodes_bounds AFTER UPDATE ON prepaid.arrears_episodes
	FOR EACH ROW WHEN (OLD.ended_at IS NULL AND (NEW.ended_at IS NOT NULL
	    OR (OLD.trip_state IS NOT NULL AND NEW.trip_state IS NULL)
	    OR (OLD.trip_level_at IS NOT NULL AND NEW.trip_level_at IS NULL)))
	EXECUTE FUNCTION prepaid_internal.ladder_bounds_reset_trigger();

DROP TRIGGER IF EXISTS arrears_episodes_bounds_gone ON prepaid.arrears_episodes;
CREATE TRIGGER arrears_episodes_bounds_gone AFTER DELETE ON prepaid.arrears_episodes
	FOR EACH ROW WHEN (OLD.ended_at IS NULL)
	EXECUTE FUNCTION prepaid_internal.ladder_bounds_reset_trigger();

DROP TRIGGER IF EXISTS episode_steps_bounds ON prepaid.episode_steps;
CREATE TRIGGER episode_steps_bounds AFTER UPDATE OR DELETE ON prepaid.episode_steps
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.ladder_bounds_reset_trigger();

-- Open the episodes of meters that need one and can have it set-based
-- (prepaid_internal.ladder_sweep decides which): p_meters with the first threshold
-- of their policy. The meters are locked by the caller. Ids are drawn
-- first so that the episode, its messages, call tasks and sends can be
-- written in one statement, with the bounds ladder_step writes for a new
-- episode: the highest threshold not reached, the trip level (trip_level_at
-- is not set here: ladder_sweep sends meters at or below it to ladder_step)
-- and the restore level. Returns how many episodes were opened.
-- JIT is off: the row estimates of unnest and generate_series are far
-- above the few hundred rows really handled, and compiling the plan would
-- cost more than running it (about 100 ms a call).
CREATE OR REPLACE FUNCTION prepaid_internal.ladder_open(p_meters text[], p_first numeric[]) RETURNS integer
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
			CROSS JOIN LATERAL (SELECT prepaid_internal.ladder_repeats_due(v_now, st.repeat_every,
			                        st.repeat_count) AS n) k
			WHERE st.policy_id = p.policy_id AND m.balance < st.threshold) d
	), reached AS MATERIALIZED (
		SELECT src.*, st.step_no AS step, st.template_key, st.channels,
		       prepaid_internal.ladder_repeats_due(v_now, st.repeat_every, st.repeat_count) AS repeats
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
