-- payments.sql: payment orders, recording verified WeChat Pay and Alipay
-- notifications with their effect (credit, re-arm, hold), reconciliation by
-- finance staff, and restore timing.
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

COMMENT ON TABLE prepaid.orders IS
	'Payment orders, created before an occupant pays; a payment is matched to its out_trade_no.';
COMMENT ON TABLE prepaid.payments IS
	'Verified payments, one row per provider transaction: credited, or held for reconciliation.';
COMMENT ON TABLE prepaid.payment_notices IS
	'Verified notifications that are not payments (refunds, closed or unpaid trades): recorded, never credited.';
COMMENT ON TABLE prepaid.payment_rejects IS
	'Refused payment notifications (bad signature, wrong merchant, malformed), audited.';
COMMENT ON TABLE prepaid.restores IS
	'Re-arms after payments: when the meter acknowledged and when power was restored.';


-- Create an order; returns its out_trade_no (PP + time + random, 26
-- characters, valid for WeChat Pay and Alipay).
CREATE OR REPLACE FUNCTION prepaid.create_order(p_meter text, p_amount numeric, p_provider text,
    p_valid_for interval DEFAULT interval '30 minutes') RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
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
	PERFORM prepaid_internal.lock_meter(p_meter);
	v_no := 'PP' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS')
	        || substr(replace(gen_random_uuid()::text, '-', ''), 1, 10);
	INSERT INTO prepaid.orders (out_trade_no, meter_id, provider, amount_fen, expires_at)
	VALUES (v_no, p_meter, p_provider, (p_amount * 100)::bigint, now() + p_valid_for);
	RETURN v_no;
END $$;
COMMENT ON FUNCTION prepaid.create_order(text,numeric,text,interval) IS
	'Create a payment order for a meter; returns its out_trade_no.';

-- Orders with their state (a pending one past expires_at shows as
-- expired) and the payment that paid (or disputed) it.
CREATE OR REPLACE VIEW prepaid.order_status AS
SELECT o.out_trade_no, o.meter_id, o.provider, o.amount,
       CASE WHEN o.state = 'pending' AND o.expires_at <= now() THEN 'expired' ELSE o.state END AS state,
       o.created_at, o.created_by, o.expires_at, o.paid_at,
       (SELECT p.payment_id FROM prepaid.payments p WHERE p.out_trade_no = o.out_trade_no
        ORDER BY p.payment_id LIMIT 1) AS payment_id
FROM prepaid.orders o;
COMMENT ON VIEW prepaid.order_status IS
	'Payment orders with their state and payment.';

-- ------------------------------------------------------------- crediting

-- Re-arm a meter whose balance is back to the restore level: a queued or
-- quarantined trip is cancelled; a meter that is tripped (relay open) or
-- has a trip in flight gets an arm (restore_mode arm, the default: the
-- occupant presses the button) or a close (auto). Returns the command id,
-- or NULL when nothing was needed. The meter row is locked by the caller.
-- A tripped meter left off says why in its payment's rearm_note.
CREATE OR REPLACE FUNCTION prepaid_internal.payment_rearm(p_meter text, p_payment bigint, p_paid_at timestamptz)
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
		UPDATE prepaid.payments SET rearm_note = format('below restore level %s: not re-armed',
		    p.restore_level)
		WHERE payment_id = p_payment;
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
		UPDATE prepaid.payments SET rearm_note = format('a restore is already pending (command %s)',
		    v_cmd)
		WHERE payment_id = p_payment;
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
CREATE OR REPLACE FUNCTION prepaid_internal.payment_credit(p_payment bigint, p_meter text, p_state text,
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
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, reference)
	VALUES (p_meter, v_day, 'payment', pay.amount_fen, pay.provider || ':' || pay.provider_txn)
	RETURNING ledger.entry_id INTO entry_id;
	UPDATE prepaid.meters SET balance_fen = balance_fen + pay.amount_fen,
	    balance = (balance_fen + pay.amount_fen) / 100.0
	WHERE meter_id = p_meter;
	UPDATE prepaid.payments SET state = p_state, meter_id = p_meter, ledger_entry = entry_id
	WHERE payment_id = p_payment;
	-- The ladder sees the new balance now: an open episode paid back ends,
	-- a trip not yet sent is cancelled (prepaid_internal.ladder_step). A meter
	-- without an episode has nothing to end; the sweep looks at it as at
	-- any balance change.
	IF EXISTS (SELECT 1 FROM prepaid.arrears_episodes e
	           WHERE e.meter_id = p_meter AND e.ended_at IS NULL) THEN
		PERFORM prepaid_internal.ladder_step(p_meter);
	END IF;
	command_id := prepaid_internal.payment_rearm(p_meter, p_payment, pay.received_at);
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
-- rearm_note says why a tripped meter was left off (see payment_rearm).
DROP FUNCTION IF EXISTS prepaid_internal.record_payment(text, text, text, bigint, text, text,
    timestamptz, timestamptz, boolean, boolean);
CREATE OR REPLACE FUNCTION prepaid_internal.record_payment(p_provider text, p_txn text, p_out_trade_no text,
    p_amount_fen bigint, p_trade_status text, p_notify_id text, p_paid_at timestamptz,
    p_received_at timestamptz, p_notify_occupant boolean, p_wake_self boolean,
    OUT outcome text, OUT payment_id bigint, OUT meter_id text, OUT command_id text,
    OUT balance numeric, OUT rearm_note text)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
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
	ELSIF o.amount_fen <> p_amount_fen THEN
		v_reason := format('amount %s fen, the order is %s fen', p_amount_fen, o.amount_fen);
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
	FROM prepaid_internal.payment_credit(payment_id, o.meter_id, 'credited', p_notify_occupant) c;
	outcome := 'credited';
	SELECT m.balance INTO balance FROM prepaid.meters m WHERE m.meter_id = o.meter_id;
	SELECT pp.rearm_note INTO rearm_note FROM prepaid.payments pp
	WHERE pp.payment_id = record_payment.payment_id;
END $$;

-- Called by the daemon for a verified notification that must not credit
-- (refund, closed trade, refund fields on a trade notification). Repeats
-- are recorded once.
CREATE OR REPLACE FUNCTION prepaid_internal.record_payment_notice(p_provider text, p_kind text, p_txn text,
    p_out_trade_no text, p_notify_id text, p_trade_status text, p_amount_fen bigint,
    p_received_at timestamptz) RETURNS boolean
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
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
CREATE OR REPLACE FUNCTION prepaid.apply_payment(p_payment bigint, p_meter text DEFAULT NULL,
    p_note text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
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
	PERFORM prepaid_internal.lock_meter(v_meter);
	SELECT * INTO pay FROM prepaid.payments WHERE payment_id = p_payment FOR UPDATE;
	IF pay.state NOT IN ('unmatched', 'disputed') THEN
		RAISE EXCEPTION 'payment % is %, not unmatched or disputed', p_payment, pay.state
			USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	SELECT c.entry_id, c.command_id INTO v_entry, v_cmd
	FROM prepaid_internal.payment_credit(p_payment, v_meter, 'applied', false) c;
	UPDATE prepaid.payments SET resolved_by = session_user, resolved_at = now(),
	    resolution = p_note
	WHERE payment_id = p_payment;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('apply_payment', v_meter, jsonb_build_object('payment', p_payment,
	    'amount', round(pay.amount_fen / 100.0, 2), 'entry_id', v_entry, 'command', v_cmd,
	    'note', p_note));
	RETURN v_entry;
END $$;
COMMENT ON FUNCTION prepaid.apply_payment(bigint,text,text) IS
	'Credit a held (unmatched or disputed) payment to a meter.';

-- Close an unmatched or disputed payment without crediting it (refunded at
-- the provider, or not ours). Audited.
CREATE OR REPLACE FUNCTION prepaid.reject_payment(p_payment bigint, p_note text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
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
COMMENT ON FUNCTION prepaid.reject_payment(bigint,text) IS
	'Close a held payment without crediting it.';

-- ------------------------------------------------------ manual restore

-- Keep the newest p_keep unverified payment_rejects ([payments]
-- rejects_keep): a forgery flood audits up to 100 refusals a second. The
-- daemon calls it after every 100 audited refusals, as ingest_batch prunes
-- prepaid.rejects. Rows of verified callbacks (a real payment that was
-- still refused, by the database for one) are evidence about money and are
-- never deleted. Returns how many rows went.
CREATE OR REPLACE FUNCTION prepaid_internal.prune_payment_rejects(p_keep integer) RETURNS bigint
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp AS $$
	WITH del AS (
		DELETE FROM prepaid.payment_rejects
		WHERE NOT verified
		  AND id <= (SELECT max(id) FROM prepaid.payment_rejects) - greatest(p_keep, 100)
		RETURNING 1)
	SELECT count(*) FROM del
$$;

-- The arm (or close) of a restore is acknowledged: armed (or, for a close
-- with the relay closed, restored); an arm that fails is marked failed for
-- the operator.
CREATE OR REPLACE FUNCTION prepaid_internal.restore_ack_trigger() RETURNS trigger
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

DROP TRIGGER IF EXISTS commands_restore_ack ON prepaid.commands;
CREATE TRIGGER commands_restore_ack AFTER UPDATE OF state ON prepaid.commands
	FOR EACH ROW WHEN (NEW.action IN ('arm', 'close') AND OLD.state IS DISTINCT FROM NEW.state)
	EXECUTE FUNCTION prepaid_internal.restore_ack_trigger();

-- A trip the meter executes after a re-arm (an operator's, or a new
-- episode's) supersedes the restore still waiting: the next payment arms
-- the meter again instead of pointing at the old arm.
CREATE OR REPLACE FUNCTION prepaid_internal.restore_trip_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.restores r SET state = 'superseded'
	WHERE r.meter_id = NEW.meter_id AND r.state IN ('pending', 'armed')
	  AND r.paid_at < coalesce(NEW.acked_at, now());
	RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS commands_restore_trip ON prepaid.commands;
CREATE TRIGGER commands_restore_trip AFTER UPDATE OF state ON prepaid.commands
	FOR EACH ROW WHEN (NEW.action = 'trip' AND NEW.state = 'acked'
	                   AND OLD.state IS DISTINCT FROM NEW.state)
	EXECUTE FUNCTION prepaid_internal.restore_trip_trigger();

-- The meter reports its relay closed by the button or the card: the
-- occupant restored power; the meter is back to normal.
CREATE OR REPLACE FUNCTION prepaid_internal.restore_event_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.restores r SET state = 'restored', restored_at = NEW.ts, cause = NEW.cause,
	    armed_at = coalesce(r.armed_at, NEW.ts)
	WHERE r.meter_id = NEW.meter_id AND r.state IN ('pending', 'armed') AND NEW.ts >= r.paid_at;
	RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS events_restore ON prepaid.events;
CREATE TRIGGER events_restore AFTER INSERT ON prepaid.events
	FOR EACH ROW WHEN (NEW.type = 'relay' AND NEW.relay = 'closed'
	                   AND NEW.cause IN ('button', 'card', 'remote'))
	EXECUTE FUNCTION prepaid_internal.restore_event_trigger();

-- ----------------------------------------------------------------- views

CREATE OR REPLACE VIEW prepaid.payment_status AS
SELECT p.payment_id, p.provider, p.provider_txn, p.out_trade_no, p.meter_id,
       round(p.amount_fen / 100.0, 2) AS amount, p.state, p.reason, p.trade_status,
       p.paid_at, p.received_at, p.recorded_at, p.ledger_entry, p.resolved_by,
       p.resolved_at, p.resolution, p.rearm_note
FROM prepaid.payments p;
COMMENT ON VIEW prepaid.payment_status IS
	'Payments with their order, meter, state and resolution.';

CREATE OR REPLACE VIEW prepaid.payments_unreconciled AS
SELECT * FROM prepaid.payment_status WHERE state IN ('unmatched', 'disputed');
COMMENT ON VIEW prepaid.payments_unreconciled IS
	'Payments held as unmatched or disputed, for finance staff to apply or reject.';

-- Payments per day, provider and state, for reconciliation against the
-- providers' daily statements (which are kept in Beijing time: so is day).
CREATE OR REPLACE VIEW prepaid.payments_daily AS
SELECT (p.received_at AT TIME ZONE 'Asia/Shanghai')::date AS day, p.provider, p.state,
       count(*) AS payments, round(sum(p.amount_fen) / 100.0, 2) AS amount
FROM prepaid.payments p
GROUP BY 1, 2, 3;
COMMENT ON VIEW prepaid.payments_daily IS
	'Payments per day (China time), provider and state.';

-- Time from payment (the callback) to power restored at the meter.
CREATE OR REPLACE VIEW prepaid.restore_times AS
SELECT r.restore_id, r.meter_id, r.payment_id, r.action, r.state, r.cause, r.paid_at,
       r.armed_at, r.restored_at,
       r.restored_at - r.paid_at AS paid_to_restored,
       r.armed_at - r.paid_at AS paid_to_armed
FROM prepaid.restores r;
COMMENT ON VIEW prepaid.restore_times IS
	'Per re-arm after a payment: the time to the meter''s acknowledgement and to power back.';

-- Meters armed and waiting for the occupant's button press.
CREATE OR REPLACE VIEW prepaid.awaiting_restore AS
SELECT r.meter_id, m.site_id, r.paid_at, r.armed_at, now() - r.paid_at AS waiting, r.command_id
FROM prepaid.restores r JOIN prepaid.meters m ON m.meter_id = r.meter_id
WHERE r.state IN ('pending', 'armed');
COMMENT ON VIEW prepaid.awaiting_restore IS
	'Meters re-armed after a payment whose power is not back yet.';

-- ==================================================================== payout
-- prepaidd's calls to the providers (src/payout.c; tables in 004_payout.sql):
-- orders still pending are queried on a ladder and closed at expiry; refunds
-- asked for by finance staff are sent by the daemon and debited when the
-- provider confirms; the providers' daily bills are compared with what was
-- credited. prepaid.refund and prepaid.reconcile are for finance staff; the
-- rest is called by the daemon.

-- ------------------------------------------------------------ orders


-- Orders to look at now, claimed for p_retry_s seconds: pending orders
-- whose next query on the ladder is due (p_ladder_s: seconds after
-- creation) and pending orders past their expiry (query, then close).
-- Called by the daemon.
CREATE OR REPLACE FUNCTION prepaid_internal.payout_due(p_ladder_s integer[], p_retry_s integer, p_providers text[],
    p_limit integer)
RETURNS TABLE (out_trade_no text, provider text, amount_fen bigint, expired boolean)
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	UPDATE prepaid.orders o SET queried_at = now()
	FROM (SELECT x.out_trade_no FROM prepaid.orders x
	      WHERE x.state = 'pending' AND x.provider = ANY (p_providers)
	        AND (x.queried_at IS NULL OR x.queried_at <= now() - make_interval(secs => p_retry_s))
	        AND (x.expires_at <= now()
	             OR (x.queries < cardinality(p_ladder_s)
	                 AND x.created_at + make_interval(secs => p_ladder_s[x.queries + 1]) <= now()))
	      ORDER BY x.created_at
	      LIMIT p_limit
	      FOR UPDATE SKIP LOCKED) d
	WHERE o.out_trade_no = d.out_trade_no
	RETURNING o.out_trade_no, o.provider, o.amount_fen, o.expires_at <= now();
$$;

-- The provider answered a query (p_closed false) or closed the order
-- (p_closed true: the order, expired, is closed here too; a payment that
-- still arrives for it is held as disputed by prepaid_internal.record_payment).
-- Called by the daemon.
CREATE OR REPLACE FUNCTION prepaid_internal.payout_answered(p_out_trade_no text, p_provider_state text,
    p_closed boolean) RETURNS void
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	UPDATE prepaid.orders SET queries = queries + CASE WHEN p_closed THEN 0 ELSE 1 END,
	    provider_state = p_provider_state,
	    closed_at = CASE WHEN p_closed THEN now() ELSE closed_at END,
	    state = CASE WHEN p_closed AND state = 'pending' THEN 'expired' ELSE state END
	WHERE out_trade_no = p_out_trade_no;
$$;

-- ------------------------------------------------------------ refunds


-- Refund p_amount yuan of the payment of order p_out_trade_no under
-- p_refund_no (the provider's out_refund_no / out_request_no: one number
-- refunds at most once). For finance staff. Refused before anything is
-- sent when larger than the meter's balance (less refunds not yet
-- confirmed) or than what is left of the payment. The balance is debited
-- only when the provider confirms. A repeat with the same number and
-- amount returns the refund's state; with another amount, an error.
-- Audited with the login role (session_user).
CREATE OR REPLACE FUNCTION prepaid.refund(p_out_trade_no text, p_amount numeric, p_refund_no text,
    p_reason text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	r prepaid.refunds;
	pay prepaid.payments;
	v_fen bigint;
	v_meter prepaid.meters;
	v_open bigint;
	v_left bigint;
BEGIN
	IF p_amount IS NULL OR p_amount <= 0 OR p_amount <> round(p_amount, 2) THEN
		RAISE EXCEPTION 'refund: amount must be positive yuan with at most 2 decimals (got %)',
		    p_amount USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF p_refund_no IS NULL OR p_refund_no !~ '^[0-9A-Za-z_-]{6,64}$' THEN
		RAISE EXCEPTION 'refund: the refund number must be 6 to 64 of [0-9A-Za-z_-]'
		    USING ERRCODE = 'invalid_parameter_value';
	END IF;
	v_fen := (p_amount * 100)::bigint;
	SELECT * INTO pay FROM prepaid.payments p
	WHERE p.out_trade_no = p_out_trade_no AND p.state IN ('credited', 'applied')
	ORDER BY p.payment_id LIMIT 1;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'refund: order % has no credited payment', p_out_trade_no
		    USING ERRCODE = 'no_data_found';
	END IF;
	v_meter := prepaid_internal.lock_meter(pay.meter_id);
	SELECT * INTO r FROM prepaid.refunds x WHERE x.refund_no = p_refund_no;
	IF FOUND THEN
		IF r.out_trade_no <> p_out_trade_no OR r.amount_fen <> v_fen THEN
			RAISE EXCEPTION 'refund: % was asked for % fen of order % already',
			    p_refund_no, r.amount_fen, r.out_trade_no
			    USING ERRCODE = 'unique_violation';
		END IF;
		RETURN r.state;
	END IF;
	SELECT coalesce(sum(x.amount_fen) FILTER (WHERE x.state IN ('queued', 'processing')), 0),
	       pay.amount_fen - coalesce(sum(x.amount_fen)
	           FILTER (WHERE x.payment_id = pay.payment_id AND x.state <> 'failed'), 0)
	INTO v_open, v_left
	FROM prepaid.refunds x WHERE x.meter_id = pay.meter_id;
	IF v_fen > v_left THEN
		RAISE EXCEPTION 'refund: % yuan is more than the % yuan left of the payment of order %',
		    p_amount, round(v_left / 100.0, 2), p_out_trade_no
		    USING ERRCODE = 'check_violation';
	END IF;
	IF v_fen > round(v_meter.balance * 100) - v_open THEN
		RAISE EXCEPTION 'refund: % yuan is larger than the balance of meter % (% yuan, % yuan '
		    'of refunds not yet confirmed)', p_amount, pay.meter_id, round(v_meter.balance, 2),
		    round(v_open / 100.0, 2) USING ERRCODE = 'check_violation';
	END IF;
	INSERT INTO prepaid.refunds (refund_no, payment_id, provider, out_trade_no, meter_id,
	    amount_fen, total_fen, reason)
	VALUES (p_refund_no, pay.payment_id, pay.provider, p_out_trade_no, pay.meter_id, v_fen,
	    pay.amount_fen, p_reason);
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('refund', pay.meter_id, jsonb_build_object('refund_no', p_refund_no,
	    'out_trade_no', p_out_trade_no, 'amount', round(p_amount, 2), 'reason', p_reason));
	RETURN 'queued';
END $$;

COMMENT ON FUNCTION prepaid.refund(text,numeric,text,text) IS
	'Refund part or all of an order''s payment under a refund number; refused when larger than the balance; debited when the provider confirms.';

-- Refunds to send (queued) or to ask about (processing), claimed for
-- p_retry_s seconds. Called by the daemon.
CREATE OR REPLACE FUNCTION prepaid_internal.refund_due(p_providers text[], p_retry_s integer, p_limit integer)
RETURNS TABLE (refund_no text, provider text, out_trade_no text, amount_fen bigint,
    total_fen bigint, reason text, state text)
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	UPDATE prepaid.refunds r SET attempts = r.attempts + 1,
	    next_at = now() + make_interval(secs => p_retry_s)
	FROM (SELECT x.refund_no FROM prepaid.refunds x
	      WHERE x.state IN ('queued', 'processing') AND x.next_at <= now()
	        AND x.provider = ANY (p_providers)
	      ORDER BY x.next_at LIMIT p_limit FOR UPDATE SKIP LOCKED) d
	WHERE r.refund_no = d.refund_no
	RETURNING r.refund_no, r.provider, r.out_trade_no, r.amount_fen, r.total_fen, r.reason,
	    r.state;
$$;

-- What the provider said about a refund: p_outcome refunded (debit the
-- balance, once), processing (ask again later), failed (nothing debited),
-- or retry (not known: send again with the same number). Returns the
-- refund's state. Called by the daemon, and by the refund notification.
CREATE OR REPLACE FUNCTION prepaid_internal.refund_answered(p_refund_no text, p_outcome text, p_provider_state text,
    p_error text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	r prepaid.refunds;
	v_entry bigint;
BEGIN
	SELECT * INTO r FROM prepaid.refunds WHERE refund_no = p_refund_no;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no refund %', p_refund_no USING ERRCODE = 'no_data_found';
	END IF;
	PERFORM prepaid_internal.lock_meter(r.meter_id);
	SELECT * INTO r FROM prepaid.refunds WHERE refund_no = p_refund_no FOR UPDATE;
	IF r.state IN ('refunded', 'failed') THEN
		RETURN r.state;         -- final already: a repeat changes nothing
	END IF;
	IF p_outcome = 'refunded' THEN
		INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, reference)
		VALUES (r.meter_id, prepaid_internal.local_day(r.meter_id, now()), 'adjustment',
		    -r.amount_fen, 'refund:' || r.refund_no)
		RETURNING entry_id INTO v_entry;
		UPDATE prepaid.meters SET balance_fen = balance_fen - r.amount_fen,
		    balance = (balance_fen - r.amount_fen) / 100.0
		WHERE meter_id = r.meter_id;
		UPDATE prepaid.refunds SET state = 'refunded', confirmed_at = now(),
		    ledger_entry = v_entry, provider_state = p_provider_state, last_error = NULL
		WHERE refund_no = p_refund_no;
		IF EXISTS (SELECT 1 FROM prepaid.arrears_episodes e
		           WHERE e.meter_id = r.meter_id AND e.ended_at IS NULL) THEN
			PERFORM prepaid_internal.ladder_step(r.meter_id);
		END IF;
		RETURN 'refunded';
	ELSIF p_outcome = 'failed' THEN
		UPDATE prepaid.refunds SET state = 'failed', provider_state = p_provider_state,
		    last_error = p_error
		WHERE refund_no = p_refund_no;
		PERFORM pg_notify('prepaid_alerts', format('refund %s of order %s failed at %s: %s',
		    r.refund_no, r.out_trade_no, r.provider, coalesce(p_error, p_provider_state)));
		RETURN 'failed';
	ELSIF p_outcome = 'processing' THEN
		UPDATE prepaid.refunds SET state = 'processing', provider_state = p_provider_state,
		    last_error = NULL
		WHERE refund_no = p_refund_no;
		RETURN 'processing';
	END IF;
	UPDATE prepaid.refunds SET last_error = p_error WHERE refund_no = p_refund_no;
	RETURN r.state;
END $$;

-- A WeChat Pay refund notification (REFUND.SUCCESS / REFUND.CLOSED) confirms
-- the refund still processing for its order and amount.
CREATE OR REPLACE FUNCTION prepaid_internal.refund_notice_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
	v_no text;
BEGIN
	SELECT r.refund_no INTO v_no FROM prepaid.refunds r
	WHERE r.provider = NEW.provider AND r.out_trade_no = NEW.out_trade_no
	  AND r.amount_fen = NEW.amount_fen AND r.state IN ('queued', 'processing')
	ORDER BY r.requested_at LIMIT 1;
	IF v_no IS NOT NULL THEN
		PERFORM prepaid_internal.refund_answered(v_no,
		    CASE NEW.trade_status WHEN 'REFUND.SUCCESS' THEN 'refunded' ELSE 'failed' END,
		    NEW.trade_status, 'refund notification');
	END IF;
	RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS payment_notices_refund ON prepaid.payment_notices;
CREATE TRIGGER payment_notices_refund AFTER INSERT ON prepaid.payment_notices
	FOR EACH ROW WHEN (NEW.kind = 'refund' AND NEW.provider = 'wechat'
	                   AND NEW.trade_status IN ('REFUND.SUCCESS', 'REFUND.CLOSED'))
	EXECUTE FUNCTION prepaid_internal.refund_notice_trigger();

COMMENT ON TABLE prepaid.refunds IS
	'Refunds asked for by finance staff: queued, processing at the provider, refunded (debited once) or failed.';

CREATE OR REPLACE VIEW prepaid.refund_status AS
SELECT r.refund_no, r.provider, r.out_trade_no, r.meter_id, round(r.amount_fen / 100.0, 2) AS amount,
       r.state, r.provider_state, r.attempts, r.last_error, r.requested_by, r.requested_at,
       r.confirmed_at, r.ledger_entry
FROM prepaid.refunds r;
COMMENT ON VIEW prepaid.refund_status IS
	'Refunds with their amount in yuan, state at the provider and who asked for them.';

-- ------------------------------------------------------ reconciliation

-- One comparison of a provider's daily bill (a Beijing calendar day) with
-- what was credited here. Queued by the daemon each day at [payments]
-- reconcile_at for the day before, or by prepaid.reconcile() from psql for
-- any day; the daemon downloads the bill, loads its rows into
-- prepaid.bill_entries, and the differences are in
-- prepaid.reconciliation_discrepancies.


COMMENT ON TABLE prepaid.reconciliations IS
	'Comparisons of a provider''s daily bill with the payments credited: queued, done or failed.';
COMMENT ON TABLE prepaid.bill_entries IS
	'The rows of the providers'' daily bills, per reconciliation: payments and refunds in fen.';

-- Queue a reconciliation of p_day (both providers, or p_provider) now:
-- for psql, to re-run any day. Returns the ids queued.
CREATE OR REPLACE FUNCTION prepaid.reconcile(p_day date, p_provider text DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	IF p_day IS NULL OR p_day > (now() AT TIME ZONE 'Asia/Shanghai')::date THEN
		RAISE EXCEPTION 'reconcile: a bill is for a past Beijing day (got %)', p_day
		    USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF p_provider IS NOT NULL AND p_provider NOT IN ('wechat', 'alipay') THEN
		RAISE EXCEPTION 'reconcile: provider must be wechat or alipay'
		    USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
	INSERT INTO prepaid.reconciliations (provider, bill_date)
	SELECT p, p_day
	FROM unnest(CASE WHEN p_provider IS NULL THEN ARRAY['wechat', 'alipay']
	                 ELSE ARRAY[p_provider] END) p
	RETURNING id;
END $$;

-- The daily run: queue p_day for each provider not reconciled (or queued)
-- for it yet, whatever the number of daemons. Called by the daemon.
CREATE OR REPLACE FUNCTION prepaid_internal.reconcile_daily(p_day date, p_providers text[]) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_n integer;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtext('prepaid.reconcile_daily'));
	INSERT INTO prepaid.reconciliations (provider, bill_date)
	SELECT p, p_day FROM unnest(p_providers) p
	WHERE NOT EXISTS (SELECT 1 FROM prepaid.reconciliations r
	                  WHERE r.provider = p AND r.bill_date = p_day);
	GET DIAGNOSTICS v_n = ROW_COUNT;
	RETURN v_n;
END $$;

-- Reconciliations to run, claimed for p_retry_s seconds; one tried 10
-- times without a bill is failed, with an alert. Called by the daemon.
CREATE OR REPLACE FUNCTION prepaid_internal.reconcile_due(p_providers text[], p_retry_s integer, p_limit integer)
RETURNS TABLE (id bigint, provider text, bill_date date)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_failed bigint;
BEGIN
	WITH f AS (
		UPDATE prepaid.reconciliations r SET state = 'failed', finished_at = now()
		WHERE r.state = 'queued' AND r.attempts >= 10 AND r.next_at <= now()
		RETURNING r.id, r.provider, r.bill_date, r.last_error)
	SELECT count(*) INTO STRICT v_failed FROM (
		SELECT pg_notify('prepaid_alerts', format('reconciliation %s of the %s bill of %s failed: %s',
		    f.id, f.provider, f.bill_date, f.last_error)) FROM f) x;
	RETURN QUERY
	UPDATE prepaid.reconciliations r SET attempts = r.attempts + 1,
	    next_at = now() + make_interval(secs => p_retry_s)
	FROM (SELECT x.id FROM prepaid.reconciliations x
	      WHERE x.state = 'queued' AND x.next_at <= now() AND x.provider = ANY (p_providers)
	      ORDER BY x.next_at LIMIT p_limit FOR UPDATE SKIP LOCKED) d
	WHERE r.id = d.id
	RETURNING r.id, r.provider, r.bill_date;
END $$;

COMMENT ON FUNCTION prepaid.reconcile(date,text) IS
	'Queue a reconciliation of a Beijing day''s bills (both providers, or one); returns the ids.';

-- Why the last attempt got no bill. Called by the daemon.
CREATE OR REPLACE FUNCTION prepaid_internal.reconcile_error(p_id bigint, p_error text) RETURNS void
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	UPDATE prepaid.reconciliations SET last_error = p_error WHERE id = p_id;
$$;

-- Paid at the provider but not credited here; credited here but not in
-- the bill (by the Beijing day the payment arrived); amounts that differ.
-- Per provider and day, from the latest reconciliation done.
CREATE OR REPLACE VIEW prepaid.reconciliation_discrepancies AS
WITH latest AS (
	SELECT DISTINCT ON (r.provider, r.bill_date) r.*
	FROM prepaid.reconciliations r WHERE r.state = 'done'
	ORDER BY r.provider, r.bill_date, r.id DESC),
bill AS (
	SELECT b.* FROM prepaid.bill_entries b JOIN latest l ON l.id = b.reconciliation_id
	WHERE b.kind = 'payment'),
ours AS (
	SELECT p.*, (p.received_at AT TIME ZONE 'Asia/Shanghai')::date AS day
	FROM prepaid.payments p WHERE p.state IN ('credited', 'applied'))
SELECT b.reconciliation_id, b.provider, b.bill_date, 'not_credited'::text AS kind,
       b.provider_txn, b.out_trade_no, b.amount_fen AS bill_fen, NULL::bigint AS credited_fen,
       (SELECT p.payment_id FROM prepaid.payments p
        WHERE p.provider = b.provider AND p.provider_txn = b.provider_txn) AS payment_id
FROM bill b
WHERE NOT EXISTS (SELECT 1 FROM ours o
                  WHERE o.provider = b.provider AND o.provider_txn = b.provider_txn)
UNION ALL
SELECT l.id, l.provider, l.bill_date, 'not_in_bill', o.provider_txn, o.out_trade_no, NULL,
       o.amount_fen, o.payment_id
FROM latest l JOIN ours o ON o.provider = l.provider AND o.day = l.bill_date
WHERE NOT EXISTS (SELECT 1 FROM bill b
                  WHERE b.reconciliation_id = l.id AND b.provider_txn = o.provider_txn)
UNION ALL
SELECT b.reconciliation_id, b.provider, b.bill_date, 'amount_differs', b.provider_txn,
       b.out_trade_no, b.amount_fen, o.amount_fen, o.payment_id
FROM bill b JOIN ours o ON o.provider = b.provider AND o.provider_txn = b.provider_txn
WHERE o.amount_fen <> b.amount_fen;
COMMENT ON VIEW prepaid.reconciliation_discrepancies IS
	'Differences between a provider''s bill and the payments credited: not credited, not in the bill, amounts differ.';

-- The bill's payments per provider and day next to prepaid.payments_daily
-- (credited and applied).
CREATE OR REPLACE VIEW prepaid.reconciliation_totals AS
WITH latest AS (
	SELECT DISTINCT ON (r.provider, r.bill_date) r.*
	FROM prepaid.reconciliations r WHERE r.state = 'done'
	ORDER BY r.provider, r.bill_date, r.id DESC)
SELECT l.provider, l.bill_date, l.id AS reconciliation_id,
       (SELECT count(*) FROM prepaid.bill_entries b
        WHERE b.reconciliation_id = l.id AND b.kind = 'payment') AS bill_payments,
       (SELECT round(coalesce(sum(b.amount_fen), 0) / 100.0, 2) FROM prepaid.bill_entries b
        WHERE b.reconciliation_id = l.id AND b.kind = 'payment') AS bill_amount,
       (SELECT coalesce(sum(d.payments), 0) FROM prepaid.payments_daily d
        WHERE d.day = l.bill_date AND d.provider = l.provider
          AND d.state IN ('credited', 'applied')) AS credited_payments,
       (SELECT coalesce(sum(d.amount), 0) FROM prepaid.payments_daily d
        WHERE d.day = l.bill_date AND d.provider = l.provider
          AND d.state IN ('credited', 'applied')) AS credited_amount,
       l.discrepancies
FROM latest l;
COMMENT ON VIEW prepaid.reconciliation_totals IS
	'Per provider and Beijing day: the bill''s payments next to those credited (payments_daily).';

-- Load a downloaded bill (p_entries: [{"txn","otn","kind","fen"}, ...]):
-- the reconciliation is done; returns the number of discrepancies, and
-- alerts when there are any. Called by the daemon.
CREATE OR REPLACE FUNCTION prepaid_internal.reconcile_load(p_id bigint, p_entries jsonb) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	r prepaid.reconciliations;
	v_n integer;
BEGIN
	SELECT * INTO r FROM prepaid.reconciliations WHERE id = p_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no reconciliation %', p_id USING ERRCODE = 'no_data_found';
	END IF;
	DELETE FROM prepaid.bill_entries WHERE reconciliation_id = p_id;
	INSERT INTO prepaid.bill_entries (reconciliation_id, provider, bill_date, provider_txn,
	    out_trade_no, kind, amount_fen)
	SELECT p_id, r.provider, r.bill_date, e->>'txn', nullif(e->>'otn', ''), e->>'kind',
	       (e->>'fen')::bigint
	FROM jsonb_array_elements(p_entries) e;
	UPDATE prepaid.reconciliations SET state = 'done', finished_at = now(), last_error = NULL,
	    bill_rows = jsonb_array_length(p_entries)
	WHERE id = p_id;
	SELECT count(*) INTO v_n FROM prepaid.reconciliation_discrepancies d
	WHERE d.reconciliation_id = p_id;
	UPDATE prepaid.reconciliations SET discrepancies = v_n WHERE id = p_id;
	IF v_n > 0 THEN
		PERFORM pg_notify('prepaid_alerts', format('reconciliation %s: the %s bill of %s differs '
		    'from the payments credited in %s place(s) (see prepaid.reconciliation_discrepancies)',
		    p_id, r.provider, r.bill_date, v_n));
	END IF;
	RETURN v_n;
END $$;
