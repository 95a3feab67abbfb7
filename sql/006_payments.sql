-- 006_payments.sql: payments from WeChat Pay and Alipay callbacks. Every
-- verified notification the daemon receives is recorded here in one
-- transaction with its effect: a payment credited exactly once (unique on
-- provider and provider transaction id), the order marked paid, the arrears
-- episode ended, a queued trip cancelled and the meter re-armed for manual
-- restore; or a payment held as unmatched/disputed for reconciliation; or a
-- notification that never credits (refund, close). Forged or misdirected
-- notifications are audited in payment_rejects. Manual restores after a
-- payment are timed in prepaid.restores. Documented in prepaidd-sql(7),
-- section PAYMENTS.

-- ---------------------------------------------------------------- payments

CREATE TABLE prepaid.payments (
	payment_id     bigserial PRIMARY KEY,
	provider       text NOT NULL CHECK (provider IN ('wechat', 'alipay')),
	provider_txn   text NOT NULL,            -- WeChat transaction_id, Alipay trade_no
	out_trade_no   text NOT NULL,            -- as the provider reported it
	meter_id       text COLLATE "C",         -- the order's meter; NULL: no such order
	amount_fen     bigint NOT NULL CHECK (amount_fen >= 0),
	state          text NOT NULL CHECK (state IN ('credited', 'unmatched', 'disputed',
	                   'applied', 'rejected')),
	reason         text,                     -- why it is unmatched or disputed
	notify_id      text,                     -- WeChat notification id, Alipay notify_id
	trade_status   text,                     -- SUCCESS, TRADE_SUCCESS, TRADE_FINISHED
	paid_at        timestamptz,              -- the provider's payment time
	received_at    timestamptz NOT NULL,     -- the callback reached the daemon
	recorded_at    timestamptz NOT NULL DEFAULT now(),
	ledger_entry   bigint,                   -- the credit (credited, applied)
	resolved_by    text,
	resolved_at    timestamptz,
	resolution     text,
	UNIQUE (provider, provider_txn)
);
CREATE INDEX payments_open ON prepaid.payments (recorded_at)
	WHERE state IN ('unmatched', 'disputed');
CREATE INDEX payments_order ON prepaid.payments (out_trade_no);
COMMENT ON TABLE prepaid.payments IS
	'Verified payments, one row per provider transaction: credited, or held for reconciliation.';

-- Verified notifications that are not payments (refunds, closed or unpaid
-- trades, refund fields on a trade notification): recorded, never credited.
CREATE TABLE prepaid.payment_notices (
	id            bigserial PRIMARY KEY,
	provider      text NOT NULL,
	kind          text NOT NULL,             -- refund, closed, not_paid, ...
	provider_txn  text,
	out_trade_no  text,
	notify_id     text,
	trade_status  text,
	amount_fen    bigint,
	received_at   timestamptz NOT NULL,
	recorded_at   timestamptz NOT NULL DEFAULT now(),
	UNIQUE (provider, notify_id, kind)
);

-- Refused notifications (bad signature, unknown key, stale timestamp, wrong
-- merchant, malformed): written by the daemon after it answered, so that a
-- forgery is audited. Nothing from an unverified body is trusted here: the
-- order and transaction are recorded only when the signature verified.
CREATE TABLE prepaid.payment_rejects (
	id           bigserial PRIMARY KEY,
	received_at  timestamptz NOT NULL,
	provider     text NOT NULL,
	reason       text NOT NULL,
	http_status  integer NOT NULL,
	peer         text,
	verified     boolean NOT NULL DEFAULT false,
	out_trade_no text,
	provider_txn text,
	amount_fen   bigint
);
CREATE INDEX payment_rejects_at ON prepaid.payment_rejects (received_at);

-- ------------------------------------------------------------- restores

-- After a payment re-arms a meter: when the arm was sent and acknowledged
-- and when the occupant restored power at the meter (button or card).
CREATE TABLE prepaid.restores (
	restore_id   bigserial PRIMARY KEY,
	meter_id     text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	payment_id   bigint REFERENCES prepaid.payments,
	command_id   text NOT NULL,              -- the arm (or close) command
	action       text NOT NULL CHECK (action IN ('arm', 'close')),
	paid_at      timestamptz NOT NULL,       -- the callback reached the daemon
	armed_at     timestamptz,                -- the meter acknowledged
	restored_at  timestamptz,                -- relay closed
	cause        text,                       -- button, card, remote
	state        text NOT NULL DEFAULT 'pending'
	             CHECK (state IN ('pending', 'armed', 'restored', 'failed', 'superseded'))
);
CREATE UNIQUE INDEX restores_open ON prepaid.restores (meter_id)
	WHERE state IN ('pending', 'armed');
CREATE INDEX restores_command ON prepaid.restores (command_id);

-- ------------------------------------------------------- notifications

-- A NOTIFY makes its transaction's commit wait in line behind every other
-- notifying commit (PostgreSQL holds a lock on the notification queue
-- until the commit is flushed). The daemon recording a payment wakes its
-- own command outbox and message dispatcher right after the commit, so its
-- transactions ask for no NOTIFY (prepaid.notify = off, for the
-- transaction only); other daemons find such rows at their next poll.
CREATE OR REPLACE FUNCTION prepaid.commands_notify_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('prepaid.notify', true) IS DISTINCT FROM 'off' THEN
		PERFORM pg_notify('prepaid_commands', '');
	END IF;
	RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION prepaid.messages_notify_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF current_setting('prepaid.notify', true) IS DISTINCT FROM 'off' THEN
		PERFORM pg_notify('prepaid_messages', '');
	END IF;
	RETURN NULL;
END $$;

-- ------------------------------------------------------ command claims

-- The outbox claim of 004, with index conditions: its due and expiry tests
-- compared with clock_timestamp(), which an index scan cannot use, so each
-- claim read every command still in flight (all the unacknowledged arms of
-- a busy hour, say) -- milliseconds per claim, growing with the backlog.
-- They compare with now() (the claim is a transaction of its own, so now()
-- is when it started), and expiry has an index of its own. The rows to
-- update are chosen once, in a materialised CTE: joined as a subquery, a
-- planner that believed the table empty (a fresh database, statistics not
-- yet gathered) re-ran it for every row of the table.
CREATE INDEX commands_expiry ON prepaid.commands (valid_until)
	WHERE state IN ('queued', 'sent');

CREATE OR REPLACE FUNCTION prepaid.claim_commands(p_limit integer, p_retry_initial interval,
    p_retry_max interval)
RETURNS TABLE (id text, meter_id text, action text, from_seq bigint,
    valid_until timestamptz, attempts integer)
LANGUAGE plpgsql AS $$
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

-- ------------------------------------------------------------- crediting

-- Re-arm a meter whose balance is back to the restore level: a queued or
-- quarantined trip is cancelled; a meter that is tripped (relay open) or
-- has a trip in flight gets an arm (restore_mode arm, the default: the
-- occupant presses the button) or a close (auto). Returns the command id,
-- or NULL when nothing was needed. The meter row is locked by the caller.
CREATE FUNCTION prepaid.payment_rearm(p_meter text, p_payment bigint, p_paid_at timestamptz)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	m prepaid.meters;
	p prepaid.policies;
	v_mode text;
	v_cmd text;
	v_trip_sent boolean;
	v_trip_queued boolean;
BEGIN
	SELECT * INTO m FROM prepaid.meters WHERE meter_id = p_meter;
	-- The common case first, cheaply: not tripped, no trip about.
	SELECT coalesce(bool_or(c.state = 'sent'), false),
	       coalesce(bool_or(c.state IN ('queued', 'quarantined')), false)
	INTO v_trip_sent, v_trip_queued
	FROM prepaid.commands c
	WHERE c.meter_id = p_meter AND c.action = 'trip'
	  AND c.state IN ('queued', 'quarantined', 'sent');
	IF m.relay IS DISTINCT FROM 'open' AND NOT v_trip_sent AND NOT v_trip_queued THEN
		RETURN NULL;
	END IF;
	SELECT pol.* INTO p FROM prepaid.sites s
	JOIN prepaid.policies pol ON pol.policy_id = coalesce(m.policy_id, s.policy_id)
	WHERE s.site_id = m.site_id;
	IF m.balance < p.restore_level THEN
		RETURN NULL;
	END IF;
	IF v_trip_queued THEN
		UPDATE prepaid.commands SET state = 'cancelled', detail = 'superseded by a payment'
		WHERE meter_id = p_meter AND action = 'trip' AND state IN ('queued', 'quarantined');
	END IF;
	IF m.relay IS DISTINCT FROM 'open' AND NOT v_trip_sent THEN
		RETURN NULL;
	END IF;
	v_mode := coalesce(m.restore_mode, p.restore_mode);
	-- One restore at a time: a second payment does not send a second arm.
	SELECT command_id INTO v_cmd FROM prepaid.restores
	WHERE meter_id = p_meter AND state IN ('pending', 'armed');
	IF FOUND THEN
		RETURN v_cmd;
	END IF;
	v_cmd := prepaid.send_command(p_meter, v_mode,
	    CASE WHEN p_payment IS NULL THEN 'payment applied by hand'
	         ELSE format('payment %s', p_payment) END);
	INSERT INTO prepaid.restores (meter_id, payment_id, command_id, action, paid_at)
	VALUES (p_meter, p_payment, v_cmd, v_mode, p_paid_at);
	RETURN v_cmd;
END $$;

-- Credit a payment row to a meter (state credited or applied): the ledger,
-- the balance, the ladder, the re-arm and optionally the occupant's
-- "payment received" message. The meter row is locked by the caller.
CREATE FUNCTION prepaid.payment_credit(p_payment bigint, p_meter text, p_state text,
    p_notify boolean, OUT entry_id bigint, OUT command_id text)
LANGUAGE plpgsql AS $$
DECLARE
	pay prepaid.payments;
	v_amount numeric;
	v_ch text;
	v_day date;
BEGIN
	SELECT * INTO pay FROM prepaid.payments WHERE payment_id = p_payment;
	v_amount := pay.amount_fen / 100.0;
	SELECT (now() AT TIME ZONE s.time_zone)::date INTO v_day
	FROM prepaid.meters m JOIN prepaid.sites s ON s.site_id = m.site_id
	WHERE m.meter_id = p_meter;
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount, reference)
	VALUES (p_meter, v_day, 'payment', v_amount, pay.provider || ':' || pay.provider_txn)
	RETURNING ledger.entry_id INTO entry_id;
	UPDATE prepaid.meters SET balance = balance + v_amount WHERE meter_id = p_meter;
	UPDATE prepaid.payments SET state = p_state, meter_id = p_meter, ledger_entry = entry_id
	WHERE payment_id = p_payment;
	-- The ladder sees the new balance now: an open episode paid back ends,
	-- a trip not yet sent is cancelled (prepaid.ladder_step). A meter
	-- without an episode has nothing to end; the sweep looks at it as at
	-- any balance change.
	IF EXISTS (SELECT 1 FROM prepaid.arrears_episodes e
	           WHERE e.meter_id = p_meter AND e.ended_at IS NULL) THEN
		PERFORM prepaid.ladder_step(p_meter);
	END IF;
	command_id := prepaid.payment_rearm(p_meter, p_payment, pay.received_at);
	IF p_notify THEN
		-- Best effort: a meter without an occupant or address gets no message.
		FOREACH v_ch IN ARRAY ARRAY['sms', 'email'] LOOP
			BEGIN
				PERFORM prepaid.send_message(p_meter, 'payment_received', v_ch,
				    jsonb_build_object('amount', round(v_amount, 2)::text));
			EXCEPTION WHEN no_data_found THEN
				NULL;
			END;
		END LOOP;
	END IF;
END $$;

-- Called by the daemon for every verified payment notification (WeChat
-- trade_state SUCCESS; Alipay TRADE_SUCCESS or TRADE_FINISHED without
-- refund fields), in its own transaction with synchronous commit. Outcomes:
--   credited   - matched its pending order: credited once, order paid
--   duplicate  - this provider transaction is already recorded: nothing done
--   unmatched  - no such order: held for reconciliation, not credited
--   disputed   - the order exists but the amount or provider differs, it
--                expired, or it was already paid by another transaction:
--                held, not credited
-- The daemon answers success to the provider for all four: the payment is
-- durably recorded, and retrying would not change the outcome. With
-- p_wake_self the commands and messages queued here send no NOTIFY: the
-- caller wakes its own outbox and dispatcher after the commit.
CREATE FUNCTION prepaid.record_payment(p_provider text, p_txn text, p_out_trade_no text,
    p_amount_fen bigint, p_trade_status text, p_notify_id text, p_paid_at timestamptz,
    p_received_at timestamptz, p_notify_occupant boolean, p_wake_self boolean,
    OUT outcome text, OUT payment_id bigint, OUT meter_id text, OUT command_id text,
    OUT balance numeric)
LANGUAGE plpgsql AS $$
DECLARE
	o prepaid.orders;
	v_reason text;
	v_entry bigint;
BEGIN
	-- A payment is money: its commit waits for the WAL flush whatever the
	-- session's setting (this lasts until the end of the transaction).
	PERFORM set_config('synchronous_commit', 'on', true);
	IF p_wake_self THEN
		PERFORM set_config('prepaid.notify', 'off', true);
	END IF;
	SELECT * INTO o FROM prepaid.orders x WHERE x.out_trade_no = p_out_trade_no;
	IF FOUND THEN
		-- Every change to a meter's money holds its row lock (ingest,
		-- credit, adjust, orders): take it, then read the order again as
		-- it is now (a new statement sees what committed meanwhile).
		PERFORM 1 FROM prepaid.meters m WHERE m.meter_id = o.meter_id FOR NO KEY UPDATE;
		SELECT * INTO o FROM prepaid.orders x WHERE x.out_trade_no = p_out_trade_no;
	END IF;
	INSERT INTO prepaid.payments AS pp (provider, provider_txn, out_trade_no, meter_id,
	    amount_fen, state, notify_id, trade_status, paid_at, received_at)
	VALUES (p_provider, p_txn, p_out_trade_no, o.meter_id, p_amount_fen, 'unmatched',
	    p_notify_id, p_trade_status, p_paid_at, p_received_at)
	ON CONFLICT (provider, provider_txn) DO NOTHING
	RETURNING pp.payment_id INTO payment_id;
	IF payment_id IS NULL THEN
		SELECT 'duplicate', pp.payment_id, pp.meter_id INTO outcome, payment_id, meter_id
		FROM prepaid.payments pp WHERE pp.provider = p_provider AND pp.provider_txn = p_txn;
		SELECT m.balance INTO balance FROM prepaid.meters m WHERE m.meter_id = record_payment.meter_id;
		RETURN;
	END IF;
	meter_id := o.meter_id;
	IF o.out_trade_no IS NULL THEN
		v_reason := 'no such order';
	ELSIF o.provider <> p_provider THEN
		v_reason := format('the order is for %s', o.provider);
	ELSIF round(o.amount * 100) <> p_amount_fen THEN
		v_reason := format('amount %s fen, the order is %s fen', p_amount_fen,
		    round(o.amount * 100));
	ELSIF o.state = 'paid' THEN
		v_reason := 'the order was already paid by another transaction';
	ELSIF o.state = 'disputed' THEN
		v_reason := 'the order is disputed already (see prepaid.payments_unreconciled)';
	ELSIF o.state <> 'pending' OR o.expires_at <= p_received_at THEN
		v_reason := format('the order expired at %s', o.expires_at);
	END IF;
	IF v_reason IS NOT NULL THEN
		outcome := CASE WHEN o.out_trade_no IS NULL THEN 'unmatched' ELSE 'disputed' END;
		UPDATE prepaid.payments pp SET state = outcome, reason = v_reason
		WHERE pp.payment_id = record_payment.payment_id;
		IF o.out_trade_no IS NOT NULL AND o.state = 'pending' THEN
			-- the order no longer holds off a trip: somebody must look at it
			UPDATE prepaid.orders x SET state = 'disputed' WHERE x.out_trade_no = o.out_trade_no;
		END IF;
		PERFORM pg_notify('prepaid_alerts', format('payment %s (%s %s) %s: %s', payment_id,
		    p_provider, p_txn, outcome, v_reason));
		SELECT m.balance INTO balance FROM prepaid.meters m WHERE m.meter_id = o.meter_id;
		RETURN;
	END IF;
	UPDATE prepaid.orders x SET state = 'paid', paid_at = p_received_at
	WHERE x.out_trade_no = o.out_trade_no;
	SELECT c.entry_id, c.command_id INTO v_entry, command_id
	FROM prepaid.payment_credit(payment_id, o.meter_id, 'credited', p_notify_occupant) c;
	outcome := 'credited';
	SELECT m.balance INTO balance FROM prepaid.meters m WHERE m.meter_id = o.meter_id;
END $$;

-- Called by the daemon for a verified notification that must not credit
-- (refund, closed trade, refund fields on a trade notification). Repeats
-- are recorded once.
CREATE FUNCTION prepaid.record_payment_notice(p_provider text, p_kind text, p_txn text,
    p_out_trade_no text, p_notify_id text, p_trade_status text, p_amount_fen bigint,
    p_received_at timestamptz) RETURNS boolean
LANGUAGE sql AS $$
	INSERT INTO prepaid.payment_notices (provider, kind, provider_txn, out_trade_no, notify_id,
	    trade_status, amount_fen, received_at)
	VALUES (p_provider, p_kind, p_txn, p_out_trade_no, coalesce(p_notify_id, ''), p_trade_status,
	    p_amount_fen, p_received_at)
	ON CONFLICT (provider, notify_id, kind) DO NOTHING
	RETURNING true;
$$;

-- ------------------------------------------------------------ operator

-- Credit an unmatched or disputed payment by hand, to the meter of its
-- order or to p_meter. Audited.
CREATE FUNCTION prepaid.apply_payment(p_payment bigint, p_meter text DEFAULT NULL,
    p_note text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	pay prepaid.payments;
	v_meter text;
	v_entry bigint;
	v_cmd text;
BEGIN
	SELECT * INTO pay FROM prepaid.payments WHERE payment_id = p_payment;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no payment %', p_payment USING ERRCODE = 'no_data_found';
	END IF;
	v_meter := coalesce(p_meter, pay.meter_id);
	IF v_meter IS NULL THEN
		RAISE EXCEPTION 'payment % matches no order: name the meter', p_payment
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF coalesce(p_note, '') = '' THEN
		RAISE EXCEPTION 'apply_payment: a note is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM prepaid.lock_meter(v_meter);
	SELECT * INTO pay FROM prepaid.payments WHERE payment_id = p_payment FOR UPDATE;
	IF pay.state NOT IN ('unmatched', 'disputed') THEN
		RAISE EXCEPTION 'payment % is %, not unmatched or disputed', p_payment, pay.state
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	SELECT c.entry_id, c.command_id INTO v_entry, v_cmd
	FROM prepaid.payment_credit(p_payment, v_meter, 'applied', false) c;
	UPDATE prepaid.payments SET resolved_by = session_user, resolved_at = now(),
	    resolution = p_note
	WHERE payment_id = p_payment;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('apply_payment', v_meter, jsonb_build_object('payment', p_payment,
	    'amount', round(pay.amount_fen / 100.0, 2), 'entry_id', v_entry, 'command', v_cmd,
	    'note', p_note));
	RETURN v_entry;
END $$;

-- Close an unmatched or disputed payment without crediting it (refunded at
-- the provider, or not ours). Audited.
CREATE FUNCTION prepaid.reject_payment(p_payment bigint, p_note text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
	pay prepaid.payments;
BEGIN
	IF coalesce(p_note, '') = '' THEN
		RAISE EXCEPTION 'reject_payment: a note is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	UPDATE prepaid.payments SET state = 'rejected', resolved_by = session_user,
	    resolved_at = now(), resolution = p_note
	WHERE payment_id = p_payment AND state IN ('unmatched', 'disputed')
	RETURNING * INTO pay;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('reject_payment', pay.meter_id, jsonb_build_object('payment', p_payment,
	    'amount', round(pay.amount_fen / 100.0, 2), 'note', p_note));
	RETURN true;
END $$;

-- ------------------------------------------------------ manual restore

-- The arm (or close) of a restore is acknowledged: armed (or, for a close
-- with the relay closed, restored); an arm that fails is marked failed for
-- the operator.
CREATE FUNCTION prepaid.restore_ack_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.restores r SET
	    armed_at = CASE WHEN NEW.state = 'acked' THEN coalesce(NEW.acked_at, now()) ELSE r.armed_at END,
	    state = CASE
	        WHEN NEW.state = 'acked' AND NEW.relay_after = 'closed' THEN 'restored'
	        WHEN NEW.state = 'acked' THEN 'armed'
	        WHEN NEW.state IN ('rejected', 'unsupported', 'expired', 'unknown', 'cancelled')
	             THEN 'failed'
	        ELSE r.state END,
	    restored_at = CASE WHEN NEW.state = 'acked' AND NEW.relay_after = 'closed'
	                       THEN coalesce(NEW.acked_at, now()) ELSE r.restored_at END,
	    cause = CASE WHEN NEW.state = 'acked' AND NEW.relay_after = 'closed'
	                 THEN 'remote' ELSE r.cause END
	WHERE r.command_id = NEW.id AND r.state IN ('pending', 'armed');
	IF FOUND AND NEW.state IN ('rejected', 'unsupported', 'expired', 'unknown', 'cancelled') THEN
		-- A paid meter that stays off: somebody must look at it.
		PERFORM pg_notify('prepaid_alerts', format('meter %s paid but its %s command %s '
		    'ended %s: the meter may still be off (prepaid.%s(%L, ...) sends it again)',
		    NEW.meter_id, NEW.action, NEW.id, NEW.state, NEW.action, NEW.meter_id));
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER commands_restore_ack AFTER UPDATE OF state ON prepaid.commands
	FOR EACH ROW WHEN (NEW.action IN ('arm', 'close') AND OLD.state IS DISTINCT FROM NEW.state)
	EXECUTE FUNCTION prepaid.restore_ack_trigger();

-- A trip the meter executes after a re-arm (an operator's, or a new
-- episode's) supersedes the restore still waiting: the next payment arms
-- the meter again instead of pointing at the old arm.
CREATE FUNCTION prepaid.restore_trip_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.restores r SET state = 'superseded'
	WHERE r.meter_id = NEW.meter_id AND r.state IN ('pending', 'armed')
	  AND r.paid_at < coalesce(NEW.acked_at, now());
	RETURN NULL;
END $$;
CREATE TRIGGER commands_restore_trip AFTER UPDATE OF state ON prepaid.commands
	FOR EACH ROW WHEN (NEW.action = 'trip' AND NEW.state = 'acked'
	                   AND OLD.state IS DISTINCT FROM NEW.state)
	EXECUTE FUNCTION prepaid.restore_trip_trigger();

-- The meter reports its relay closed by the button or the card: the
-- occupant restored power; the meter is back to normal.
CREATE FUNCTION prepaid.restore_event_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.restores r SET state = 'restored', restored_at = NEW.ts, cause = NEW.cause,
	    armed_at = coalesce(r.armed_at, NEW.ts)
	WHERE r.meter_id = NEW.meter_id AND r.state IN ('pending', 'armed') AND NEW.ts >= r.paid_at;
	RETURN NULL;
END $$;
CREATE TRIGGER events_restore AFTER INSERT ON prepaid.events
	FOR EACH ROW WHEN (NEW.type = 'relay' AND NEW.relay = 'closed'
	                   AND NEW.cause IN ('button', 'card', 'remote'))
	EXECUTE FUNCTION prepaid.restore_event_trigger();

-- The "payment received" texts of 003 now say how much arrived ({{amount}},
-- added by the payment) as well as the balance and how to restore power.
UPDATE prepaid.message_templates SET body = CASE channel || '/' || language
	WHEN 'sms/zh' THEN '【物业】{{name}}您好，电表{{meter}}已到账{{amount}}元，余额{{balance}}元。如已停电，请按住电表按钮10秒恢复供电。'
	WHEN 'sms/en' THEN 'Dear {{name}}, {{amount}} yuan received for meter {{meter}}; balance {{balance}} yuan. If the power is off, hold the meter''s button for 10 seconds to restore it.'
	WHEN 'email/zh' THEN E'{{name}}您好：\n\n电表{{meter}}已到账{{amount}}元，当前余额{{balance}}元。\n如已停电，请按住电表上的按钮10秒（或插入电卡后按按钮）恢复供电。\n'
	WHEN 'email/en' THEN E'Dear {{name}},\n\n{{amount}} yuan was received for meter {{meter}}; the balance is {{balance}} yuan.\nIf the power is off, hold the button on the meter for 10 seconds (or insert the card and press it) to restore it.\n'
	END
WHERE template_key = 'payment_received';

-- ----------------------------------------------------------------- views

CREATE VIEW prepaid.payment_status AS
SELECT p.payment_id, p.provider, p.provider_txn, p.out_trade_no, p.meter_id,
       round(p.amount_fen / 100.0, 2) AS amount, p.state, p.reason, p.trade_status,
       p.paid_at, p.received_at, p.recorded_at, p.ledger_entry, p.resolved_by,
       p.resolved_at, p.resolution
FROM prepaid.payments p;

CREATE VIEW prepaid.payments_unreconciled AS
SELECT * FROM prepaid.payment_status WHERE state IN ('unmatched', 'disputed');

-- Payments per day, provider and state, for reconciliation against the
-- providers' daily statements (which are kept in Beijing time: so is day).
CREATE VIEW prepaid.payments_daily AS
SELECT (p.received_at AT TIME ZONE 'Asia/Shanghai')::date AS day, p.provider, p.state,
       count(*) AS payments, round(sum(p.amount_fen) / 100.0, 2) AS amount
FROM prepaid.payments p
GROUP BY 1, 2, 3;

-- Time from payment (the callback) to power restored at the meter.
CREATE VIEW prepaid.restore_times AS
SELECT r.restore_id, r.meter_id, r.payment_id, r.action, r.state, r.cause, r.paid_at,
       r.armed_at, r.restored_at,
       r.restored_at - r.paid_at AS paid_to_restored,
       r.armed_at - r.paid_at AS paid_to_armed
FROM prepaid.restores r;

-- Meters armed and waiting for the occupant's button press.
CREATE VIEW prepaid.awaiting_restore AS
SELECT r.meter_id, m.site_id, r.paid_at, r.armed_at, now() - r.paid_at AS waiting, r.command_id
FROM prepaid.restores r JOIN prepaid.meters m ON m.meter_id = r.meter_id
WHERE r.state IN ('pending', 'armed');

-- The order view now also shows the payment that paid (or disputed) it.
CREATE OR REPLACE VIEW prepaid.order_status AS
SELECT o.out_trade_no, o.meter_id, o.provider, o.amount,
       CASE WHEN o.state = 'pending' AND o.expires_at <= now() THEN 'expired' ELSE o.state END AS state,
       o.created_at, o.created_by, o.expires_at, o.paid_at,
       (SELECT p.payment_id FROM prepaid.payments p WHERE p.out_trade_no = o.out_trade_no
        ORDER BY p.payment_id LIMIT 1) AS payment_id
FROM prepaid.orders o;
