-- 913_payout.sql: prepaidd's calls to the payment providers (src/payout.c).
-- Orders still pending are queried at their provider on a ladder of delays
-- after creation; a success found that way is recorded by
-- prepaid.record_payment exactly as a notification would be (same unique
-- key, so a later notification is a duplicate); an order that expires
-- unpaid is closed at the provider, then here. Refunds are asked for by
-- finance staff with prepaid.refund(), sent by the daemon from
-- prepaid.refunds, and debited only when the provider confirms. Each day
-- the providers' bills are compared with what was credited.
-- Documented in prepaidd-sql(7), section PAYOUT.

-- ------------------------------------------------------------ orders

ALTER TABLE prepaid.orders
	ADD COLUMN queries        integer NOT NULL DEFAULT 0,  -- answered queries at the provider
	ADD COLUMN queried_at     timestamptz,                 -- last query or close sent
	ADD COLUMN provider_state text,                        -- what the provider last said
	ADD COLUMN closed_at      timestamptz;                 -- closed at the provider
CREATE INDEX orders_unsettled ON prepaid.orders (created_at) WHERE state = 'pending';

-- Orders to look at now, claimed for p_retry_s seconds: pending orders
-- whose next query on the ladder is due (p_ladder_s: seconds after
-- creation) and pending orders past their expiry (query, then close).
-- Called by the daemon.
CREATE FUNCTION prepaid.payout_due(p_ladder_s integer[], p_retry_s integer, p_providers text[],
    p_limit integer)
RETURNS TABLE (out_trade_no text, provider text, amount_fen bigint, expired boolean)
LANGUAGE sql AS $$
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
	RETURNING o.out_trade_no, o.provider, round(o.amount * 100)::bigint, o.expires_at <= now();
$$;

-- The provider answered a query (p_closed false) or closed the order
-- (p_closed true: the order, expired, is closed here too; a payment that
-- still arrives for it is held as disputed by prepaid.record_payment).
-- Called by the daemon.
CREATE FUNCTION prepaid.payout_answered(p_out_trade_no text, p_provider_state text,
    p_closed boolean) RETURNS void
LANGUAGE sql AS $$
	UPDATE prepaid.orders SET queries = queries + CASE WHEN p_closed THEN 0 ELSE 1 END,
	    provider_state = p_provider_state,
	    closed_at = CASE WHEN p_closed THEN now() ELSE closed_at END,
	    state = CASE WHEN p_closed AND state = 'pending' THEN 'expired' ELSE state END
	WHERE out_trade_no = p_out_trade_no;
$$;

-- ------------------------------------------------------------ refunds

CREATE TABLE prepaid.refunds (
	refund_no      text PRIMARY KEY CHECK (refund_no ~ '^[0-9A-Za-z_-]{6,64}$'),
	payment_id     bigint NOT NULL REFERENCES prepaid.payments,
	provider       text NOT NULL,
	out_trade_no   text NOT NULL,
	meter_id       text COLLATE "C" NOT NULL,
	amount_fen     bigint NOT NULL CHECK (amount_fen > 0),
	total_fen      bigint NOT NULL,            -- the payment's amount
	reason         text,
	state          text NOT NULL DEFAULT 'queued'
	               CHECK (state IN ('queued', 'processing', 'refunded', 'failed')),
	attempts       integer NOT NULL DEFAULT 0,
	next_at        timestamptz NOT NULL DEFAULT now(),
	provider_state text,
	last_error     text,
	requested_by   text NOT NULL DEFAULT session_user,
	requested_at   timestamptz NOT NULL DEFAULT now(),
	confirmed_at   timestamptz,
	ledger_entry   bigint
);
CREATE INDEX refunds_open ON prepaid.refunds (next_at) WHERE state IN ('queued', 'processing');
CREATE INDEX refunds_order ON prepaid.refunds (out_trade_no);

-- Refund p_amount yuan of the payment of order p_out_trade_no under
-- p_refund_no (the provider's out_refund_no / out_request_no: one number
-- refunds at most once). For finance staff. Refused before anything is
-- sent when larger than the meter's balance (less refunds not yet
-- confirmed) or than what is left of the payment. The balance is debited
-- only when the provider confirms. A repeat with the same number and
-- amount returns the refund's state; with another amount, an error.
-- Audited with the login role (session_user).
CREATE FUNCTION prepaid.refund(p_out_trade_no text, p_amount numeric, p_refund_no text,
    p_reason text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
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
	v_meter := prepaid.lock_meter(pay.meter_id);
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

-- Refunds to send (queued) or to ask about (processing), claimed for
-- p_retry_s seconds. Called by the daemon.
CREATE FUNCTION prepaid.refund_due(p_providers text[], p_retry_s integer, p_limit integer)
RETURNS TABLE (refund_no text, provider text, out_trade_no text, amount_fen bigint,
    total_fen bigint, reason text, state text)
LANGUAGE sql AS $$
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
CREATE FUNCTION prepaid.refund_answered(p_refund_no text, p_outcome text, p_provider_state text,
    p_error text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	r prepaid.refunds;
	v_entry bigint;
BEGIN
	SELECT * INTO r FROM prepaid.refunds WHERE refund_no = p_refund_no;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no refund %', p_refund_no USING ERRCODE = 'no_data_found';
	END IF;
	PERFORM prepaid.lock_meter(r.meter_id);
	SELECT * INTO r FROM prepaid.refunds WHERE refund_no = p_refund_no FOR UPDATE;
	IF r.state IN ('refunded', 'failed') THEN
		RETURN r.state;         -- final already: a repeat changes nothing
	END IF;
	IF p_outcome = 'refunded' THEN
		INSERT INTO prepaid.ledger (meter_id, day, kind, amount, reference)
		VALUES (r.meter_id, prepaid.local_day(r.meter_id, now()), 'adjustment',
		    -(r.amount_fen / 100.0), 'refund:' || r.refund_no)
		RETURNING entry_id INTO v_entry;
		UPDATE prepaid.meters SET balance = balance - r.amount_fen / 100.0
		WHERE meter_id = r.meter_id;
		UPDATE prepaid.refunds SET state = 'refunded', confirmed_at = now(),
		    ledger_entry = v_entry, provider_state = p_provider_state, last_error = NULL
		WHERE refund_no = p_refund_no;
		IF EXISTS (SELECT 1 FROM prepaid.arrears_episodes e
		           WHERE e.meter_id = r.meter_id AND e.ended_at IS NULL) THEN
			PERFORM prepaid.ladder_step(r.meter_id);
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
CREATE FUNCTION prepaid.refund_notice_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
	v_no text;
BEGIN
	SELECT r.refund_no INTO v_no FROM prepaid.refunds r
	WHERE r.provider = NEW.provider AND r.out_trade_no = NEW.out_trade_no
	  AND r.amount_fen = NEW.amount_fen AND r.state IN ('queued', 'processing')
	ORDER BY r.requested_at LIMIT 1;
	IF v_no IS NOT NULL THEN
		PERFORM prepaid.refund_answered(v_no,
		    CASE NEW.trade_status WHEN 'REFUND.SUCCESS' THEN 'refunded' ELSE 'failed' END,
		    NEW.trade_status, 'refund notification');
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER payment_notices_refund AFTER INSERT ON prepaid.payment_notices
	FOR EACH ROW WHEN (NEW.kind = 'refund' AND NEW.provider = 'wechat'
	                   AND NEW.trade_status IN ('REFUND.SUCCESS', 'REFUND.CLOSED'))
	EXECUTE FUNCTION prepaid.refund_notice_trigger();

CREATE VIEW prepaid.refund_status AS
SELECT r.refund_no, r.provider, r.out_trade_no, r.meter_id, round(r.amount_fen / 100.0, 2) AS amount,
       r.state, r.provider_state, r.attempts, r.last_error, r.requested_by, r.requested_at,
       r.confirmed_at, r.ledger_entry
FROM prepaid.refunds r;

-- ------------------------------------------------------ reconciliation

-- One comparison of a provider's daily bill (a Beijing calendar day) with
-- what was credited here. Queued by the daemon each day at [payments]
-- reconcile_at for the day before, or by prepaid.reconcile() from psql for
-- any day; the daemon downloads the bill, loads its rows into
-- prepaid.bill_entries, and the differences are in
-- prepaid.reconciliation_discrepancies.
CREATE TABLE prepaid.reconciliations (
	id            bigserial PRIMARY KEY,
	provider      text NOT NULL CHECK (provider IN ('wechat', 'alipay')),
	bill_date     date NOT NULL,
	state         text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'done', 'failed')),
	requested_by  text NOT NULL DEFAULT session_user,
	requested_at  timestamptz NOT NULL DEFAULT now(),
	attempts      integer NOT NULL DEFAULT 0,
	next_at       timestamptz NOT NULL DEFAULT now(),
	finished_at   timestamptz,
	bill_rows     integer,
	discrepancies integer,
	last_error    text
);
CREATE INDEX reconciliations_due ON prepaid.reconciliations (next_at) WHERE state = 'queued';
CREATE INDEX reconciliations_day ON prepaid.reconciliations (provider, bill_date);

CREATE TABLE prepaid.bill_entries (
	reconciliation_id bigint NOT NULL REFERENCES prepaid.reconciliations ON DELETE CASCADE,
	provider          text NOT NULL,
	bill_date         date NOT NULL,
	provider_txn      text NOT NULL,
	out_trade_no      text,
	kind              text NOT NULL CHECK (kind IN ('payment', 'refund')),
	amount_fen        bigint NOT NULL
);
CREATE INDEX bill_entries_txn ON prepaid.bill_entries (provider, provider_txn);
CREATE INDEX bill_entries_rec ON prepaid.bill_entries (reconciliation_id);

-- Queue a reconciliation of p_day (both providers, or p_provider) now:
-- for psql, to re-run any day. Returns the ids queued.
CREATE FUNCTION prepaid.reconcile(p_day date, p_provider text DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
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
CREATE FUNCTION prepaid.reconcile_daily(p_day date, p_providers text[]) RETURNS integer
LANGUAGE plpgsql AS $$
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
CREATE FUNCTION prepaid.reconcile_due(p_providers text[], p_retry_s integer, p_limit integer)
RETURNS TABLE (id bigint, provider text, bill_date date)
LANGUAGE plpgsql AS $$
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

-- Why the last attempt got no bill. Called by the daemon.
CREATE FUNCTION prepaid.reconcile_error(p_id bigint, p_error text) RETURNS void
LANGUAGE sql AS $$
	UPDATE prepaid.reconciliations SET last_error = p_error WHERE id = p_id;
$$;

-- Paid at the provider but not credited here; credited here but not in
-- the bill (by the Beijing day the payment arrived); amounts that differ.
-- Per provider and day, from the latest reconciliation done.
CREATE VIEW prepaid.reconciliation_discrepancies AS
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

-- The bill's payments per provider and day next to prepaid.payments_daily
-- (credited and applied).
CREATE VIEW prepaid.reconciliation_totals AS
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

-- Load a downloaded bill (p_entries: [{"txn","otn","kind","fen"}, ...]):
-- the reconciliation is done; returns the number of discrepancies, and
-- alerts when there are any. Called by the daemon.
CREATE FUNCTION prepaid.reconcile_load(p_id bigint, p_entries jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
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
