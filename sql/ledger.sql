-- ledger.sql: the append-only ledger and each meter's balance: credits,
-- adjustments, anomalies held for review, verification, balances, site
-- reports and statements.
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

COMMENT ON TABLE prepaid.ledger IS
	'The append-only ledger: charges, standing charges, payments and adjustments per meter, in yuan.';
COMMENT ON TABLE prepaid.operator_audit IS
	'Operator actions on money, tariffs, trips and payments, naming the database role.';
COMMENT ON TABLE prepaid.anomalies IS
	'Implausible readings (register down, a jump over the power limit), noted or held for review.';


CREATE OR REPLACE FUNCTION prepaid_internal.ledger_append_only_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'prepaid.ledger is append-only: correct with prepaid.adjust()'
		USING ERRCODE = 'object_not_in_prerequisite_state';
END $$;

DROP TRIGGER IF EXISTS ledger_append_only ON prepaid.ledger;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON prepaid.ledger
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.ledger_append_only_trigger();

DROP TRIGGER IF EXISTS ledger_no_truncate ON prepaid.ledger;
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON prepaid.ledger
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid_internal.ledger_append_only_trigger();

-- -------------------------------------------------------- operator money

-- Lock a meter for a money change, or fail for an unknown one.
CREATE OR REPLACE FUNCTION prepaid_internal.lock_meter(p_meter text) RETURNS prepaid.meters
LANGUAGE plpgsql AS $$
DECLARE
	v prepaid.meters;
BEGIN
	SELECT * INTO v FROM prepaid.meters WHERE meter_id = p_meter FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown meter "%"', p_meter USING ERRCODE = 'no_data_found';
	END IF;
	RETURN v;
END $$;

-- Credit a payment. Idempotent on (meter, reference): a repeat returns the
-- first entry and credits nothing.
CREATE OR REPLACE FUNCTION prepaid.credit(p_meter text, p_amount numeric, p_reference text) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_id bigint;
BEGIN
	IF p_amount IS NULL OR p_amount <= 0 OR p_amount <> round(p_amount, 2) THEN
		RAISE EXCEPTION 'credit: amount must be positive yuan with at most 2 decimals (got %)', p_amount
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF coalesce(p_reference, '') = '' THEN
		RAISE EXCEPTION 'credit: a reference is required (it makes the credit idempotent)'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM prepaid_internal.lock_meter(p_meter);
	SELECT entry_id INTO v_id FROM prepaid.ledger
	WHERE meter_id = p_meter AND kind = 'payment' AND reference = p_reference;
	IF FOUND THEN
		RETURN v_id;
	END IF;
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount, reference)
	VALUES (p_meter, prepaid_internal.local_day(p_meter, now()), 'payment', p_amount, p_reference)
	RETURNING entry_id INTO v_id;
	UPDATE prepaid.meters SET balance = balance + p_amount WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('credit', p_meter, jsonb_build_object('amount', p_amount, 'reference', p_reference,
	    'entry_id', v_id));
	RETURN v_id;
END $$;
COMMENT ON FUNCTION prepaid.credit(text,numeric,text) IS
	'Credit money to a meter, once per reference; returns the ledger entry.';

-- Adjust a balance (either sign) with a reason.
CREATE OR REPLACE FUNCTION prepaid.adjust(p_meter text, p_amount numeric, p_reason text) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_id bigint;
BEGIN
	IF p_amount IS NULL OR p_amount = 0 OR p_amount <> round(p_amount, 2) THEN
		RAISE EXCEPTION 'adjust: amount must be non-zero yuan with at most 2 decimals (got %)', p_amount
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF coalesce(p_reason, '') = '' THEN
		RAISE EXCEPTION 'adjust: a reason is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM prepaid_internal.lock_meter(p_meter);
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount, reason)
	VALUES (p_meter, prepaid_internal.local_day(p_meter, now()), 'adjustment', p_amount, p_reason)
	RETURNING entry_id INTO v_id;
	UPDATE prepaid.meters SET balance = balance + p_amount WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('adjust', p_meter, jsonb_build_object('amount', p_amount, 'reason', p_reason,
	    'entry_id', v_id));
	RETURN v_id;
END $$;
COMMENT ON FUNCTION prepaid.adjust(text,numeric,text) IS
	'Add a signed adjustment with a reason to a meter''s ledger; returns the ledger entry.';

-- Accept a held implausible jump: it is rated now (on the tariff in force
-- over its interval and the period's consumption so far) and charged.
CREATE OR REPLACE FUNCTION prepaid.accept_anomaly(p_id bigint, p_note text) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	a prepaid.anomalies;
	v_n integer;
BEGIN
	SELECT * INTO a FROM prepaid.anomalies WHERE id = p_id FOR UPDATE;
	IF NOT FOUND OR a.state <> 'open' THEN
		RAISE EXCEPTION 'anomaly % is not open', p_id USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	PERFORM prepaid_internal.lock_meter(a.meter_id);
	v_n := prepaid_internal.charge(ARRAY[a.meter_id], ARRAY[a.from_seq], ARRAY[a.to_seq],
	    ARRAY[CASE WHEN a.to_ts > a.from_ts THEN a.from_ts ELSE a.to_ts - interval '1 second' END],
	    ARRAY[a.to_ts], ARRAY[a.energy_wh], '{}', '{}', '{}', a.id);
	UPDATE prepaid.anomalies SET state = 'accepted', resolved_by = session_user,
	    resolved_at = now(), note = p_note WHERE id = p_id;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('accept_anomaly', a.meter_id, jsonb_build_object('anomaly', p_id, 'note', p_note,
	    'energy_wh', a.energy_wh, 'entries', v_n));
	RETURN v_n;
END $$;
COMMENT ON FUNCTION prepaid.accept_anomaly(bigint,text) IS
	'Accept a held anomaly: its interval is charged.';

-- Reject a held jump: it is never charged.
CREATE OR REPLACE FUNCTION prepaid.reject_anomaly(p_id bigint, p_note text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	a prepaid.anomalies;
BEGIN
	SELECT * INTO a FROM prepaid.anomalies WHERE id = p_id FOR UPDATE;
	IF NOT FOUND OR a.state <> 'open' THEN
		RAISE EXCEPTION 'anomaly % is not open', p_id USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	UPDATE prepaid.anomalies SET state = 'rejected', resolved_by = session_user,
	    resolved_at = now(), note = p_note WHERE id = p_id;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('reject_anomaly', a.meter_id, jsonb_build_object('anomaly', p_id, 'note', p_note,
	    'energy_wh', a.energy_wh));
END $$;
COMMENT ON FUNCTION prepaid.reject_anomaly(bigint,text) IS
	'Reject a held anomaly: its interval is not charged.';

-- Every meter whose balance is not the sum of its ledger. Always empty.
CREATE OR REPLACE FUNCTION prepaid.verify_ledger()
RETURNS TABLE (meter_id text, balance numeric, ledger_sum numeric)
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	SELECT m.meter_id, m.balance, coalesce(l.total, 0)
	FROM prepaid.meters m
	LEFT JOIN (SELECT x.meter_id, sum(x.amount) AS total FROM prepaid.ledger x GROUP BY x.meter_id) l
	       ON l.meter_id = m.meter_id
	WHERE m.balance <> coalesce(l.total, 0)
$$;
COMMENT ON FUNCTION prepaid.verify_ledger() IS
	'Meters whose balance is not the sum of their ledger (none, normally).';

-- ------------------------------------------------------------------ views

CREATE OR REPLACE VIEW prepaid.balances AS
SELECT m.meter_id, m.site_id, round(m.balance, 2) AS balance, m.balance AS balance_exact,
       m.last_ts AS last_reading_at, m.last_energy_wh,
       coalesce((SELECT x.tariff_id FROM prepaid.meter_tariffs x
                 WHERE x.meter_id = m.meter_id AND x.effective_from <= now()
                 ORDER BY x.effective_from DESC LIMIT 1), s.default_tariff_id) AS tariff_id
FROM prepaid.meters m JOIN prepaid.sites s ON s.site_id = m.site_id;
COMMENT ON VIEW prepaid.balances IS
	'Each meter''s balance (rounded to the fen, and exact), last reading and tariff.';

CREATE OR REPLACE VIEW prepaid.open_anomalies AS
SELECT id, meter_id, kind, from_seq, to_seq, from_ts, to_ts, from_wh, to_wh, energy_wh,
       limit_wh, detected_at
FROM prepaid.anomalies WHERE state = 'open';
COMMENT ON VIEW prepaid.open_anomalies IS
	'Anomalies held for review.';

CREATE OR REPLACE VIEW prepaid.recent_anomalies AS
SELECT * FROM prepaid.anomalies ORDER BY id DESC;
COMMENT ON VIEW prepaid.recent_anomalies IS
	'All anomalies, newest first.';

CREATE OR REPLACE VIEW prepaid.site_daily AS
SELECT m.site_id, l.day,
       round(sum(l.energy_wh) FILTER (WHERE l.kind = 'charge') / 1000.0, 3) AS energy_kwh,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind = 'charge'), 0), 2) AS energy_charges,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind = 'standing'), 0), 2) AS standing_charges,
       round(coalesce(sum(l.amount) FILTER (WHERE l.kind = 'payment'), 0), 2) AS payments,
       round(coalesce(sum(l.amount) FILTER (WHERE l.kind = 'adjustment'), 0), 2) AS adjustments,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'standing')), 0), 2) AS revenue
FROM prepaid.ledger l JOIN prepaid.meters m ON m.meter_id = l.meter_id
GROUP BY m.site_id, l.day;
COMMENT ON VIEW prepaid.site_daily IS
	'Energy, charges, payments and adjustments per site and local day.';

CREATE OR REPLACE VIEW prepaid.site_monthly AS
SELECT m.site_id, date_trunc('month', l.day)::date AS month,
       round(sum(l.energy_wh) FILTER (WHERE l.kind = 'charge') / 1000.0, 3) AS energy_kwh,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind = 'charge'), 0), 2) AS energy_charges,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind = 'standing'), 0), 2) AS standing_charges,
       round(coalesce(sum(l.amount) FILTER (WHERE l.kind = 'payment'), 0), 2) AS payments,
       round(coalesce(sum(l.amount) FILTER (WHERE l.kind = 'adjustment'), 0), 2) AS adjustments,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'standing')), 0), 2) AS revenue
FROM prepaid.ledger l JOIN prepaid.meters m ON m.meter_id = l.meter_id
GROUP BY m.site_id, date_trunc('month', l.day);
COMMENT ON VIEW prepaid.site_monthly IS
	'Energy, charges, payments and adjustments per site and month.';

-- A bill for a meter over local days [p_from, p_to]: the opening balance,
-- per day the energy and charges by tier and band, standing charges,
-- payments and adjustments, and the closing balance. Amounts are shown
-- rounded to the fen; the running balance is exact before its rounding.
CREATE OR REPLACE FUNCTION prepaid.statement(p_meter text, p_from date, p_to date)
RETURNS TABLE (line_no bigint, day date, kind text, detail text, energy_kwh numeric,
    amount numeric, balance numeric)
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
WITH opening AS (
	SELECT coalesce(sum(l.amount), 0) AS amount FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.day < p_from
), lines AS (
	SELECT l.day, 1 AS ord, 'charge' AS kind,
	       format('energy, tier %s%s @ %s yuan/kWh%s', l.tier,
	              CASE WHEN l.band IS NOT NULL THEN ', ' || l.band ELSE '' END, l.price,
	              CASE WHEN l.service_fee > 0 THEN format(' + service %s', l.service_fee) ELSE '' END)
	           || CASE WHEN bool_or(l.price = 0 AND l.tier = 0) THEN ' (free quota)' ELSE '' END AS detail,
	       sum(l.energy_wh) / 1000.0 AS energy_kwh, sum(l.amount) AS amount, min(l.entry_id) AS first
	FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.day BETWEEN p_from AND p_to AND l.kind = 'charge'
	GROUP BY l.day, l.tier, l.band, l.price, l.service_fee
	UNION ALL
	SELECT l.day, 2, l.kind,
	       CASE l.kind WHEN 'standing' THEN 'standing charge'
	                   WHEN 'payment' THEN 'payment ' || l.reference
	                   ELSE 'adjustment: ' || l.reason || ' (' || l.author || ')' END,
	       NULL, l.amount, l.entry_id
	FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.day BETWEEN p_from AND p_to AND l.kind <> 'charge'
), numbered AS (
	SELECT row_number() OVER (ORDER BY day, ord, first) AS n, lines.* FROM lines
)
SELECT 0::bigint, p_from, 'opening', 'opening balance', NULL::numeric, NULL::numeric,
       round((SELECT amount FROM opening), 2)
UNION ALL
SELECT n, numbered.day, numbered.kind, numbered.detail, round(numbered.energy_kwh, 3),
       round(numbered.amount, 2),
       round((SELECT amount FROM opening) + sum(numbered.amount) OVER (ORDER BY n), 2)
FROM numbered
UNION ALL
SELECT (SELECT count(*) FROM numbered) + 1, p_to, 'closing', 'closing balance', NULL, NULL,
       round((SELECT amount FROM opening) + coalesce((SELECT sum(amount) FROM numbered), 0), 2)
ORDER BY 1
$$;
COMMENT ON FUNCTION prepaid.statement(text,date,date) IS
	'A meter''s statement for a range of days: opening balance, entries, closing balance.';
