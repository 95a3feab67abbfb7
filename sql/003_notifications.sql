-- 003_notifications.sql: occupants and who lives where, message templates
-- per channel and language (Chinese and English shipped), the message
-- outbox the daemon dispatches through the configured SMS and e-mail
-- gateways, every attempt, quiet hours, and the operator functions and
-- views. Documented in prepaidd-sql(7), section MESSAGES.

-- --------------------------------------------------------------- occupants

CREATE TABLE prepaid.occupants (
	occupant_id bigserial PRIMARY KEY,
	name        text NOT NULL,
	phone       text,           -- E.164 preferred: +8613800138000
	email       text,
	language    text NOT NULL DEFAULT 'zh' CHECK (language IN ('zh', 'en')),
	created_at  timestamptz NOT NULL DEFAULT now()
);

-- Who lives at a meter: an occupant moves in, and out; another moves in.
CREATE TABLE prepaid.meter_occupants (
	meter_id    text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	occupant_id bigint NOT NULL REFERENCES prepaid.occupants,
	moved_in    timestamptz NOT NULL DEFAULT now(),
	moved_out   timestamptz,
	PRIMARY KEY (meter_id, moved_in)
);
CREATE UNIQUE INDEX meter_occupants_current ON prepaid.meter_occupants (meter_id)
	WHERE moved_out IS NULL;

-- Move an occupant in (the previous one, if any, moves out). Returns the
-- occupant id.
CREATE FUNCTION prepaid.move_in(p_meter text, p_name text, p_phone text, p_email text,
    p_language text DEFAULT 'zh') RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	v_id bigint;
BEGIN
	PERFORM prepaid.lock_meter(p_meter);
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

CREATE FUNCTION prepaid.move_out(p_meter text) RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- Quiet hours for messages, in the site's time zone: nothing is sent from
-- quiet_from to quiet_until (wrapping midnight); messages wait for the end.
ALTER TABLE prepaid.sites
	ADD COLUMN quiet_from time NOT NULL DEFAULT '21:00',
	ADD COLUMN quiet_until time NOT NULL DEFAULT '08:00',
	ADD COLUMN payment_link text;   -- {{link}} in messages, e.g. a mini-program URL

-- The end of the quiet hours that t falls in, or t itself when it does not.
CREATE FUNCTION prepaid.after_quiet_hours(p_site text, p_t timestamptz) RETURNS timestamptz
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

-- -------------------------------------------------------------- templates

-- Message texts with {{placeholders}}: name, meter, balance, amount_due,
-- link (and whatever the caller adds in extra). Edit freely in SQL.
CREATE TABLE prepaid.message_templates (
	template_key text NOT NULL,
	channel      text NOT NULL CHECK (channel IN ('sms', 'email')),
	language     text NOT NULL CHECK (language IN ('zh', 'en')),
	subject      text,           -- e-mail only
	body         text NOT NULL,
	PRIMARY KEY (template_key, channel, language)
);

INSERT INTO prepaid.message_templates (template_key, channel, language, subject, body) VALUES
('low_balance', 'sms', 'zh', NULL,
 '【物业】{{name}}您好，电表{{meter}}余额{{balance}}元，请及时充值：{{link}}'),
('low_balance', 'sms', 'en', NULL,
 'Dear {{name}}, the balance of meter {{meter}} is {{balance}} yuan. Please top up: {{link}}'),
('low_balance', 'email', 'zh', '电费余额不足',
 E'{{name}}您好：\n\n您的电表{{meter}}当前余额为{{balance}}元，请及时充值以免停电。\n充值链接：{{link}}\n'),
('low_balance', 'email', 'en', 'Your electricity balance is low',
 E'Dear {{name}},\n\nThe balance of meter {{meter}} is {{balance}} yuan. Please top up to avoid an interruption.\nTop up: {{link}}\n'),
('arrears', 'sms', 'zh', NULL,
 '【物业】{{name}}您好，电表{{meter}}已欠费{{amount_due}}元，请尽快缴费，逾期将停电：{{link}}'),
('arrears', 'sms', 'en', NULL,
 'Dear {{name}}, meter {{meter}} is {{amount_due}} yuan in arrears. Please pay soon or supply will be cut: {{link}}'),
('arrears', 'email', 'zh', '电费欠费提醒',
 E'{{name}}您好：\n\n您的电表{{meter}}已欠费{{amount_due}}元，请尽快缴费，逾期将停止供电。\n缴费链接：{{link}}\n'),
('arrears', 'email', 'en', 'Electricity arrears',
 E'Dear {{name}},\n\nMeter {{meter}} is {{amount_due}} yuan in arrears. Please pay soon; otherwise the supply will be cut.\nPay: {{link}}\n'),
('payment_received', 'sms', 'zh', NULL,
 '【物业】{{name}}您好，电表{{meter}}已到账，余额{{balance}}元。如已停电，请按住电表按钮10秒恢复供电。'),
('payment_received', 'sms', 'en', NULL,
 'Dear {{name}}, payment received for meter {{meter}}; balance {{balance}} yuan. If the power is off, hold the meter''s button for 10 seconds to restore it.'),
('payment_received', 'email', 'zh', '缴费成功',
 E'{{name}}您好：\n\n电表{{meter}}已到账，当前余额{{balance}}元。\n如已停电，请按住电表上的按钮10秒（或插入电卡后按按钮）恢复供电。\n'),
('payment_received', 'email', 'en', 'Payment received',
 E'Dear {{name}},\n\nPayment received for meter {{meter}}; the balance is {{balance}} yuan.\nIf the power is off, hold the button on the meter for 10 seconds (or insert the card and press it) to restore it.\n');

-- --------------------------------------------------------------- outbox

-- A message is a row before it is anything else. A daemon claims due rows
-- (FOR UPDATE SKIP LOCKED) by marking them 'sending' with a lease, sends,
-- and records the outcome; a lease that runs out (the daemon died) puts the
-- message back, so a message may in that one case be sent twice.
CREATE TABLE prepaid.messages (
	message_id      bigserial PRIMARY KEY,
	meter_id        text COLLATE "C" REFERENCES prepaid.meters,
	occupant_id     bigint REFERENCES prepaid.occupants,
	channel         text NOT NULL CHECK (channel IN ('sms', 'email')),
	gateway         text,           -- NULL: the first configured gateway of the channel
	to_address      text NOT NULL,
	language        text NOT NULL,
	template_key    text NOT NULL,
	params          jsonb NOT NULL DEFAULT '{}',  -- placeholder values
	state           text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sending',
	                    'sent', 'failed', 'cancelled')),
	created_at      timestamptz NOT NULL DEFAULT now(),
	created_by      text NOT NULL DEFAULT session_user,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	lease_until     timestamptz,
	attempts        integer NOT NULL DEFAULT 0,
	sent_at         timestamptz,
	provider_id     text,
	last_error      text
);
CREATE INDEX messages_due ON prepaid.messages (next_attempt_at) WHERE state = 'queued';
CREATE INDEX messages_lease ON prepaid.messages (lease_until) WHERE state = 'sending';
CREATE INDEX messages_meter ON prepaid.messages (meter_id, created_at);

CREATE TABLE prepaid.message_attempts (
	message_id  bigint NOT NULL REFERENCES prepaid.messages,
	attempt     integer NOT NULL,
	at          timestamptz NOT NULL DEFAULT now(),
	gateway     text NOT NULL,
	outcome     text NOT NULL CHECK (outcome IN ('sent', 'retry', 'failed')),
	http_status integer,
	answer_code text,           -- the success field's value, e.g. Aliyun's Code
	provider_id text,
	error       text,
	duration_ms integer,
	PRIMARY KEY (message_id, attempt)
);

CREATE FUNCTION prepaid.messages_notify_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('prepaid_messages', '');
	RETURN NULL;
END $$;
CREATE TRIGGER messages_notify AFTER INSERT ON prepaid.messages
	FOR EACH ROW EXECUTE FUNCTION prepaid.messages_notify_trigger();

-- Queue a message to a meter's current occupant, rendered from a template
-- (channel sms: to the phone, email: to the e-mail address, in the
-- occupant's language). extra adds or overrides placeholder values.
-- Returns the message id.
CREATE FUNCTION prepaid.send_message(p_meter text, p_template text,
    p_channel text DEFAULT 'sms', p_extra jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE plpgsql AS $$
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

CREATE FUNCTION prepaid.cancel_message(p_id bigint, p_reason text) RETURNS boolean
LANGUAGE plpgsql AS $$
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

-- Called by the daemon: put back messages whose lease ran out, fail those
-- whose template is gone, move due messages that fall in their site's quiet
-- hours to the end of them, then claim, for each of its gateways, at most
-- as many due messages as that gateway has free sending slots: a message
-- names its gateway, or goes to the default gateway of its channel (the
-- first one configured for it: p_default). Returns what the daemon needs to
-- render and send them.
CREATE FUNCTION prepaid.claim_messages(p_gateways text[], p_channels text[],
    p_default boolean[], p_limits integer[], p_lease interval)
RETURNS TABLE (message_id bigint, attempt integer, meter_id text, channel text,
    gateway text, to_address text, language text, subject text, body text, params jsonb)
LANGUAGE plpgsql AS $$
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
			       coalesce(prepaid.after_quiet_hours(mt.site_id, now()), now()) AS ok_at
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
CREATE FUNCTION prepaid.finish_message(p_id bigint, p_attempt integer, p_gateway text,
    p_outcome text, p_status integer, p_answer text, p_provider_id text, p_error text,
    p_duration_ms integer, p_retry_after interval) RETURNS boolean
LANGUAGE plpgsql AS $$
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

CREATE VIEW prepaid.message_status AS
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

-- Per gateway, over the last day: messages sent and failed, attempts retried.
CREATE VIEW prepaid.gateway_stats AS
SELECT a.gateway,
       count(*) FILTER (WHERE a.outcome = 'sent') AS sent,
       count(*) FILTER (WHERE a.outcome = 'failed') AS failed,
       count(*) FILTER (WHERE a.outcome = 'retry') AS retried,
       round(avg(a.duration_ms)) AS avg_ms,
       max(a.at) AS last_attempt
FROM prepaid.message_attempts a
WHERE a.at > now() - interval '1 day'
GROUP BY a.gateway;

-- Several outcomes at once, one transaction: [{"id", "attempt", "gateway",
-- "outcome", "status", "answer", "provider_id", "error", "duration_ms",
-- "retry_after_ms"}, ...] as the daemon batches them. Returns how many
-- were recorded.
CREATE FUNCTION prepaid.finish_messages(p_outcomes jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
	o jsonb;
	v_n integer := 0;
BEGIN
	FOR o IN SELECT value FROM jsonb_array_elements(p_outcomes) LOOP
		IF prepaid.finish_message((o->>'id')::bigint, (o->>'attempt')::int, o->>'gateway',
		    o->>'outcome', (o->>'status')::int, o->>'answer', o->>'provider_id', o->>'error',
		    (o->>'duration_ms')::int,
		    make_interval(secs => coalesce((o->>'retry_after_ms')::numeric, 0) / 1000)) THEN
			v_n := v_n + 1;
		END IF;
	END LOOP;
	RETURN v_n;
END $$;
