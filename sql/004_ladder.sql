-- 004_ladder.sql: the arrears ladder. Policies (community and rental
-- shipped) with their steps, arrears episodes and what each step sent, call
-- tasks for staff, the sweep that moves episodes forward (driven by
-- meters.ladder_due_at, set when a balance changes near or below the first
-- threshold and when a timed step falls due), trip proposals, approvals,
-- keep-power, the trip guards checked inside the transaction that marks a
-- trip sent, and the mass-trip breaker. Documented in prepaidd-sql(7),
-- section ARREARS.

-- The ladder's clock: now() plus an offset, so that tests (and drills) can
-- move time forward. In production the offset is zero.
CREATE TABLE prepaid.clock (
	one    boolean PRIMARY KEY DEFAULT true CHECK (one),
	offset_by interval NOT NULL DEFAULT '0'
);
INSERT INTO prepaid.clock DEFAULT VALUES;

CREATE FUNCTION prepaid.now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
	SELECT now() + (SELECT offset_by FROM prepaid.clock)
$$;

-- ---------------------------------------------------------------- policies

CREATE TABLE prepaid.policies (
	policy_id           text PRIMARY KEY,
	name                text NOT NULL,
	trip_level          numeric(20,2) NOT NULL,  -- a trip is due when balance <= this
	grace               interval NOT NULL DEFAULT '0',  -- after reaching the trip level
	trip_needs_approval boolean NOT NULL,
	restore_level       numeric(20,2) NOT NULL,  -- the episode ends at balance >= this
	restore_mode        text NOT NULL DEFAULT 'arm' CHECK (restore_mode IN ('arm', 'close')),
	-- trip guards
	trip_quiet_from     time NOT NULL DEFAULT '18:00',   -- no trips from ...
	trip_quiet_until    time NOT NULL DEFAULT '08:00',   -- ... to (site's local time)
	trip_on_rest_days   boolean NOT NULL DEFAULT false,  -- weekends and holidays
	reading_max_age     interval NOT NULL DEFAULT '2 hours',
	trip_valid_for      interval NOT NULL DEFAULT '10 minutes'
);

CREATE TABLE prepaid.policy_steps (
	policy_id    text NOT NULL REFERENCES prepaid.policies ON UPDATE CASCADE,
	step_no      integer NOT NULL CHECK (step_no >= 1),
	threshold    numeric(20,2) NOT NULL,   -- the step applies when balance < threshold
	channels     text[] NOT NULL CHECK (channels <@ ARRAY['sms', 'email', 'call']),
	template_key text NOT NULL,
	repeat_every interval,                 -- NULL: once
	repeat_count integer NOT NULL DEFAULT 1 CHECK (repeat_count >= 1),
	PRIMARY KEY (policy_id, step_no)
);

INSERT INTO prepaid.policies (policy_id, name, trip_level, grace, trip_needs_approval,
    restore_level, trip_on_rest_days) VALUES
('community', 'Residential community: reminders, collection, approved trip', -50, '3 days',
 true, 20, false),
('rental', 'Rental apartment: a warning, then an automatic trip', 0, '0', false, 10, true);
INSERT INTO prepaid.policy_steps (policy_id, step_no, threshold, channels, template_key,
    repeat_every, repeat_count) VALUES
('community', 1, 20, '{sms}', 'low_balance', '1 day', 2),
('community', 2, 0, '{sms,email,call}', 'arrears', '2 days', 3),
('rental', 1, 10, '{sms}', 'low_balance', NULL, 1);

ALTER TABLE prepaid.sites ADD COLUMN policy_id text NOT NULL DEFAULT 'community'
	REFERENCES prepaid.policies ON UPDATE CASCADE;
ALTER TABLE prepaid.meters
	ADD COLUMN policy_id text REFERENCES prepaid.policies ON UPDATE CASCADE, -- NULL: the site's
	ADD COLUMN ladder_watch numeric(20,2),      -- the policy's first threshold (cached)
	ADD COLUMN ladder_due_at timestamptz,       -- when the sweep should look at it
	ADD COLUMN ladder_rearmed boolean NOT NULL DEFAULT true, -- a new episode may start
	ADD COLUMN keep_power boolean NOT NULL DEFAULT false,
	ADD COLUMN keep_power_until timestamptz,
	ADD COLUMN keep_power_reason text,
	ADD COLUMN restore_mode text CHECK (restore_mode IN ('arm', 'close'));  -- NULL: the policy's
CREATE INDEX meters_ladder_due ON prepaid.meters (ladder_due_at) WHERE ladder_due_at IS NOT NULL;
UPDATE prepaid.meters SET ladder_due_at = now();

-- A balance change makes the meter due for the sweep when it is below the
-- first threshold of its policy, or was (or the threshold is unknown yet).
-- The WHEN clause keeps this off the common path: most meters are above it.
CREATE FUNCTION prepaid.meters_ladder_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	NEW.ladder_due_at := least(NEW.ladder_due_at, now());
	IF NEW.ladder_due_at IS NULL THEN
		NEW.ladder_due_at := now();
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER meters_ladder BEFORE UPDATE OF balance ON prepaid.meters
	FOR EACH ROW WHEN (NEW.balance IS DISTINCT FROM OLD.balance
	    AND (NEW.ladder_watch IS NULL OR NEW.balance < NEW.ladder_watch
	         OR OLD.balance < NEW.ladder_watch))
	EXECUTE FUNCTION prepaid.meters_ladder_trigger();
CREATE TRIGGER meters_ladder_new BEFORE INSERT ON prepaid.meters
	FOR EACH ROW EXECUTE FUNCTION prepaid.meters_ladder_trigger();

-- Policy changes: every meter is looked at again.
CREATE FUNCTION prepaid.policies_changed_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.meters SET ladder_watch = NULL, ladder_due_at = now();
	RETURN NULL;
END $$;
CREATE TRIGGER policies_changed AFTER INSERT OR UPDATE OR DELETE ON prepaid.policies
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid.policies_changed_trigger();
CREATE TRIGGER policy_steps_changed AFTER INSERT OR UPDATE OR DELETE ON prepaid.policy_steps
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid.policies_changed_trigger();

-- A meter that changes policy or site, or a site that changes policy, is
-- looked at again.
CREATE FUNCTION prepaid.meters_policy_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	NEW.ladder_watch := NULL;
	NEW.ladder_due_at := now();
	RETURN NEW;
END $$;
CREATE TRIGGER meters_policy BEFORE UPDATE OF policy_id, site_id ON prepaid.meters
	FOR EACH ROW WHEN (OLD.policy_id IS DISTINCT FROM NEW.policy_id
	                   OR OLD.site_id IS DISTINCT FROM NEW.site_id)
	EXECUTE FUNCTION prepaid.meters_policy_trigger();
CREATE FUNCTION prepaid.sites_policy_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.meters SET ladder_watch = NULL, ladder_due_at = now()
	WHERE site_id = NEW.site_id;
	RETURN NULL;
END $$;
CREATE TRIGGER sites_policy AFTER UPDATE OF policy_id ON prepaid.sites
	FOR EACH ROW WHEN (OLD.policy_id IS DISTINCT FROM NEW.policy_id)
	EXECUTE FUNCTION prepaid.sites_policy_trigger();

-- ---------------------------------------------------------------- episodes

-- From falling below the first threshold until paid back to the restore
-- level: what the ladder did for one stretch of arrears.
CREATE TABLE prepaid.arrears_episodes (
	episode_id    bigserial PRIMARY KEY,
	meter_id      text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	policy_id     text NOT NULL,
	started_at    timestamptz NOT NULL,
	ended_at      timestamptz,
	end_reason    text,
	start_balance numeric(20,7) NOT NULL,
	step_no       integer NOT NULL DEFAULT 0,   -- the deepest step reached
	trip_level_at timestamptz,                  -- when the balance reached the trip level
	trip_state    text CHECK (trip_state IN ('awaiting_approval', 'approved', 'cancelled',
	                  'sent', 'confirmed', 'unknown')),
	trip_command  text,                         -- the trip's command id
	trip_note     text
);
CREATE UNIQUE INDEX arrears_episodes_open ON prepaid.arrears_episodes (meter_id)
	WHERE ended_at IS NULL;

CREATE TABLE prepaid.episode_steps (
	episode_id bigint NOT NULL REFERENCES prepaid.arrears_episodes,
	step_no    integer NOT NULL,
	reached_at timestamptz NOT NULL,
	PRIMARY KEY (episode_id, step_no)
);

-- One row per (episode, step, repeat, channel) ever sent: the unique key is
-- what makes a reminder go out at most once, whoever runs the sweep.
CREATE TABLE prepaid.episode_sends (
	episode_id bigint NOT NULL REFERENCES prepaid.arrears_episodes,
	step_no    integer NOT NULL,
	repeat_no  integer NOT NULL,
	channel    text NOT NULL,
	at         timestamptz NOT NULL,
	message_id bigint,
	task_id    bigint,
	note       text,
	PRIMARY KEY (episode_id, step_no, repeat_no, channel)
);

-- Phone calls for staff (community policies).
CREATE TABLE prepaid.call_tasks (
	task_id    bigserial PRIMARY KEY,
	meter_id   text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	episode_id bigint REFERENCES prepaid.arrears_episodes,
	created_at timestamptz NOT NULL DEFAULT now(),
	reason     text NOT NULL,
	done_at    timestamptz,
	done_by    text,
	note       text
);

CREATE FUNCTION prepaid.call_done(p_task bigint, p_note text) RETURNS boolean
LANGUAGE sql AS $$
	UPDATE prepaid.call_tasks SET done_at = now(), done_by = session_user, note = p_note
	WHERE task_id = p_task AND done_at IS NULL
	RETURNING true;
$$;

-- The policy of a meter.
CREATE FUNCTION prepaid.meter_policy(p_meter text) RETURNS prepaid.policies
LANGUAGE sql STABLE AS $$
	SELECT p.* FROM prepaid.meters m JOIN prepaid.sites s ON s.site_id = m.site_id
	JOIN prepaid.policies p ON p.policy_id = coalesce(m.policy_id, s.policy_id)
	WHERE m.meter_id = p_meter
$$;

-- Move one meter's ladder forward: open or end its episode, send the steps
-- and repeats that are due (each at most once), propose the trip when its
-- grace has passed, and set when to look again. The meter row is locked by
-- the caller.
CREATE FUNCTION prepaid.ladder_step(p_meter text) RETURNS void
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
			    ladder_rearmed = true
			WHERE meter_id = p_meter;
			RETURN;
		END IF;
		-- Paid back to the restore level but not above the first threshold:
		-- no new episode until the balance falls below the restore level
		-- again or has been above the first threshold.
		IF NOT m.ladder_rearmed AND m.balance >= p.restore_level THEN
			UPDATE prepaid.meters SET ladder_watch = v_first, ladder_due_at = NULL,
			    ladder_rearmed = false
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
			CONTINUE WHEN m.balance >= st.threshold;
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
	UPDATE prepaid.meters SET ladder_watch = v_first, ladder_due_at = v_next,
	    ladder_rearmed = m.ladder_rearmed
	WHERE meter_id = p_meter;
END $$;

-- Queue the trip command of an episode (state approved). The guards run
-- when it is sent (prepaid.claim_commands).
CREATE FUNCTION prepaid.queue_trip(p_meter text, p_episode bigint, p_reason text) RETURNS text
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
CREATE FUNCTION prepaid.ladder_sweep(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
	v_m text;
	v_n integer := 0;
BEGIN
	-- due times are on the ladder's clock (prepaid.now())
	FOR v_m IN SELECT meter_id FROM prepaid.meters
	           WHERE ladder_due_at <= prepaid.now()
	           ORDER BY ladder_due_at LIMIT p_limit
	           FOR NO KEY UPDATE SKIP LOCKED LOOP
		PERFORM prepaid.ladder_step(v_m);
		v_n := v_n + 1;
	END LOOP;
	RETURN v_n;
END $$;

-- ----------------------------------------------------------- operator

CREATE FUNCTION prepaid.approve_trip(p_meter text) RETURNS text
LANGUAGE plpgsql AS $$
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
	v_id := prepaid.queue_trip(p_meter, ep.episode_id, 'arrears: approved by ' || session_user);
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('approve_trip', p_meter, jsonb_build_object('episode', ep.episode_id, 'command', v_id));
	RETURN v_id;
END $$;

CREATE FUNCTION prepaid.cancel_trip(p_meter text, p_reason text) RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- Keep power (保电): the meter is never tripped while on (until p_until, if
-- given); meters that support it are told too.
CREATE FUNCTION prepaid.keep_power(p_meter text, p_on boolean, p_reason text,
    p_until timestamptz DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM prepaid.lock_meter(p_meter);
	UPDATE prepaid.meters SET keep_power = p_on, keep_power_until = CASE WHEN p_on THEN p_until END,
	    keep_power_reason = p_reason
	WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('keep_power', p_meter, jsonb_build_object('on', p_on, 'reason', p_reason, 'until', p_until));
	RETURN prepaid.send_command(p_meter, CASE WHEN p_on THEN 'keep_power_on' ELSE 'keep_power_off' END,
	    p_reason);
END $$;

-- ------------------------------------------------------------ payment orders

-- An order is what the back office or the mini-program creates before the
-- occupant pays: its out_trade_no goes to the payment API, and the payment
-- callback is matched to it. While an order of a meter is pending, the
-- ladder does not trip the meter: the occupant may be paying right now.
CREATE TABLE prepaid.orders (
	out_trade_no text PRIMARY KEY CHECK (out_trade_no ~ '^[0-9A-Za-z_-]{6,32}$'),
	meter_id     text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	provider     text NOT NULL CHECK (provider IN ('wechat', 'alipay')),
	amount       numeric(20,2) NOT NULL CHECK (amount > 0),   -- yuan
	state        text NOT NULL DEFAULT 'pending'
	             CHECK (state IN ('pending', 'paid', 'expired', 'disputed')),
	created_at   timestamptz NOT NULL DEFAULT now(),
	created_by   text NOT NULL DEFAULT session_user,
	expires_at   timestamptz NOT NULL,
	paid_at      timestamptz
);
CREATE INDEX orders_pending ON prepaid.orders (meter_id, expires_at) WHERE state = 'pending';

-- Create an order; returns its out_trade_no (PP + time + random, 26
-- characters, valid for WeChat Pay and Alipay).
CREATE FUNCTION prepaid.create_order(p_meter text, p_amount numeric, p_provider text,
    p_valid_for interval DEFAULT interval '30 minutes') RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	v_no text;
BEGIN
	IF p_amount IS NULL OR p_amount <= 0 OR p_amount <> round(p_amount, 2) THEN
		RAISE EXCEPTION 'order: amount must be positive yuan with at most 2 decimals (got %)', p_amount
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF p_provider NOT IN ('wechat', 'alipay') THEN
		RAISE EXCEPTION 'order: provider must be wechat or alipay' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF p_valid_for <= interval '0' OR p_valid_for > interval '1 day' THEN
		RAISE EXCEPTION 'order: valid_for must be more than 0 and at most 1 day'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM prepaid.lock_meter(p_meter);
	v_no := 'PP' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS')
	        || substr(replace(gen_random_uuid()::text, '-', ''), 1, 10);
	INSERT INTO prepaid.orders (out_trade_no, meter_id, provider, amount, expires_at)
	VALUES (v_no, p_meter, p_provider, p_amount, now() + p_valid_for);
	RETURN v_no;
END $$;

-- Orders with their state as of now (a pending order past its expiry is
-- shown expired).
CREATE VIEW prepaid.order_status AS
SELECT out_trade_no, meter_id, provider, amount,
       CASE WHEN state = 'pending' AND expires_at <= now() THEN 'expired' ELSE state END AS state,
       created_at, created_by, expires_at, paid_at
FROM prepaid.orders;

-- ------------------------------------------------------- the breaker

-- At most max_trips trips per site (site_id) and per fleet (site_id NULL)
-- within window; past that, trips are quarantined until released.
CREATE TABLE prepaid.trip_breakers (
	scope       text PRIMARY KEY,          -- a site id, or '*' for the fleet
	max_trips   integer NOT NULL CHECK (max_trips >= 0),
	window_len  interval NOT NULL,
	tripped_at  timestamptz,               -- set when it opened; NULL: closed
	released_at timestamptz,
	released_by text
);
INSERT INTO prepaid.trip_breakers (scope, max_trips, window_len) VALUES ('*', 50, '1 hour');

CREATE FUNCTION prepaid.release_breaker(p_scope text DEFAULT '*') RETURNS integer
LANGUAGE plpgsql AS $$
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

-- --------------------------------------------------------- trip guards

-- Trips of the ladder pass every guard; a trip an operator asked for by hand
-- (prepaid.trip) passes keep-power and the breaker only.
ALTER TABLE prepaid.commands ADD COLUMN ladder boolean NOT NULL DEFAULT false;
ALTER TABLE prepaid.commands DROP CONSTRAINT commands_state_check;
ALTER TABLE prepaid.commands ADD CONSTRAINT commands_state_check CHECK (state IN ('queued',
    'sent', 'acked', 'rejected', 'unsupported', 'expired', 'cancelled', 'quarantined', 'unknown'));

-- The guards of one trip at the moment of sending (local day and time on
-- the ladder's clock; reading age and the breaker's window on the real
-- clock, which is what last_seen and sent_at are written with): NULL to
-- send now, or
-- ('defer', until, reason), ('cancel', NULL, reason), ('quarantine', NULL,
-- reason).
CREATE FUNCTION prepaid.trip_guard(p_command text, OUT verdict text, OUT until timestamptz,
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

-- claim_commands of 001, now with the trip guards: every trip is checked
-- inside the transaction that marks it sent; a failing guard defers it
-- (with a new validity from then), cancels it, or quarantines it, and says
-- why in command_audit. A trip that expires unacknowledged is 'unknown',
-- never re-issued under a new id.
CREATE OR REPLACE FUNCTION prepaid.claim_commands(p_limit integer, p_retry_initial interval,
    p_retry_max interval)
RETURNS TABLE (id text, meter_id text, action text, from_seq bigint,
    valid_until timestamptz, attempts integer)
LANGUAGE plpgsql AS $$
DECLARE
	t record;
	g record;
BEGIN
	UPDATE prepaid.commands c
	SET state = CASE WHEN c.action = 'trip' AND c.state = 'sent' THEN 'unknown' ELSE 'expired' END,
	    detail = CASE WHEN c.action = 'trip' AND c.state = 'sent'
	                  THEN 'not confirmed within its validity: check the meter'
	                  ELSE 'valid_until passed before an acknowledgement' END
	FROM (SELECT x.id FROM prepaid.commands x
	      WHERE x.state IN ('queued', 'sent') AND x.valid_until <= clock_timestamp()
	      FOR UPDATE SKIP LOCKED) e
	WHERE c.id = e.id;

	-- Trips about to be sent for the first time pass the guards first.
	FOR t IN SELECT x.id, x.valid_until - x.next_attempt_at AS validity FROM prepaid.commands x
	         WHERE x.action = 'trip' AND x.state = 'queued'
	           AND x.next_attempt_at <= clock_timestamp()
	         ORDER BY x.next_attempt_at LIMIT p_limit
	         FOR UPDATE SKIP LOCKED LOOP
		g := prepaid.trip_guard(t.id);
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

-- A trip is done when the meter acknowledged it and reports the relay open.
CREATE FUNCTION prepaid.trip_confirm_trigger() RETURNS trigger
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
CREATE TRIGGER commands_trip_confirm AFTER UPDATE OF state ON prepaid.commands
	FOR EACH ROW WHEN (NEW.action = 'trip' AND OLD.state IS DISTINCT FROM NEW.state)
	EXECUTE FUNCTION prepaid.trip_confirm_trigger();

-- ------------------------------------------------------------------ views

CREATE VIEW prepaid.arrears AS
SELECT e.meter_id, m.site_id, e.policy_id, round(m.balance, 2) AS balance, e.step_no,
       e.started_at, e.trip_level_at, e.trip_state, e.trip_note,
       (SELECT max(s.at) FROM prepaid.episode_sends s WHERE s.episode_id = e.episode_id) AS last_sent,
       e.episode_id
FROM prepaid.arrears_episodes e JOIN prepaid.meters m ON m.meter_id = e.meter_id
WHERE e.ended_at IS NULL;

CREATE VIEW prepaid.trips_awaiting_approval AS
SELECT e.meter_id, m.site_id, round(m.balance, 2) AS balance, e.trip_level_at, e.started_at,
       e.episode_id
FROM prepaid.arrears_episodes e JOIN prepaid.meters m ON m.meter_id = e.meter_id
WHERE e.ended_at IS NULL AND e.trip_state = 'awaiting_approval'
  -- a balance that recovered above the trip level has nothing to approve
  AND m.balance <= (prepaid.meter_policy(e.meter_id)).trip_level;

CREATE VIEW prepaid.trips_quarantined AS
SELECT c.id, c.meter_id, m.site_id, c.created_at, c.detail
FROM prepaid.commands c JOIN prepaid.meters m ON m.meter_id = c.meter_id
WHERE c.state = 'quarantined';

CREATE VIEW prepaid.open_call_tasks AS
SELECT t.task_id, t.meter_id, t.created_at, t.reason, o.name, o.phone, o.language
FROM prepaid.call_tasks t
LEFT JOIN prepaid.meter_occupants mo ON mo.meter_id = t.meter_id AND mo.moved_out IS NULL
LEFT JOIN prepaid.occupants o ON o.occupant_id = mo.occupant_id
WHERE t.done_at IS NULL;
