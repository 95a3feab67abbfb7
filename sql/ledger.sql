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

-- Credit a payment (yuan, at most 2 decimals). Idempotent on (meter,
-- reference): the same amount again returns the first entry; another amount
-- is refused, naming the first entry.
CREATE OR REPLACE FUNCTION prepaid.credit(p_meter text, p_amount numeric, p_reference text) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_id bigint;
	v_fen bigint;
	v_day date;
	v_fen0 bigint;
BEGIN
	IF p_amount IS NULL OR p_amount <= 0 OR p_amount <> round(p_amount, 2) THEN
		RAISE EXCEPTION 'credit: amount must be positive yuan with at most 2 decimals (got %)', p_amount
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF coalesce(p_reference, '') = '' THEN
		RAISE EXCEPTION 'credit: a reference is required (it makes the credit idempotent)'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	v_fen := (p_amount * 100)::bigint;
	PERFORM prepaid_internal.lock_meter(p_meter);
	SELECT entry_id, amount_fen, day INTO v_id, v_fen0, v_day FROM prepaid.ledger
	WHERE meter_id = p_meter AND kind = 'payment' AND reference = p_reference;
	IF FOUND THEN
		IF v_fen0 <> v_fen THEN
			RAISE EXCEPTION 'credit: reference "%" of meter % was credited already with % yuan (entry %, %), not %',
				p_reference, p_meter, (v_fen0 / 100.0)::numeric(20,2), v_id, v_day, p_amount
				USING ERRCODE = 'unique_violation';
		END IF;
		RETURN v_id;
	END IF;
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, reference)
	VALUES (p_meter, prepaid_internal.local_day(p_meter, now()), 'payment', v_fen, p_reference)
	RETURNING entry_id INTO v_id;
	UPDATE prepaid.meters SET balance_fen = balance_fen + v_fen, balance = (balance_fen + v_fen) / 100.0
	WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('credit', p_meter, jsonb_build_object('amount', p_amount, 'reference', p_reference,
	    'entry_id', v_id));
	RETURN v_id;
END $$;
COMMENT ON FUNCTION prepaid.credit(text,numeric,text) IS
	'Credit money to a meter, once per reference; returns the ledger entry.';

CREATE OR REPLACE FUNCTION prepaid.adjust(p_meter text, p_amount numeric, p_reason text) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_id bigint;
	v_fen bigint;
BEGIN
	IF p_amount IS NULL OR p_amount = 0 OR p_amount <> round(p_amount, 2) THEN
		RAISE EXCEPTION 'adjust: amount must be non-zero yuan with at most 2 decimals (got %)', p_amount
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF coalesce(p_reason, '') = '' THEN
		RAISE EXCEPTION 'adjust: a reason is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	v_fen := (p_amount * 100)::bigint;
	PERFORM prepaid_internal.lock_meter(p_meter);
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, reason)
	VALUES (p_meter, prepaid_internal.local_day(p_meter, now()), 'adjustment', v_fen, p_reason)
	RETURNING entry_id INTO v_id;
	UPDATE prepaid.meters SET balance_fen = balance_fen + v_fen, balance = (balance_fen + v_fen) / 100.0
	WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('adjust', p_meter, jsonb_build_object('amount', p_amount, 'reason', p_reason,
	    'entry_id', v_id));
	RETURN v_id;
END $$;
COMMENT ON FUNCTION prepaid.adjust(text,numeric,text) IS
	'Add a signed adjustment with a reason to a meter''s ledger; returns the ledger entry.';

-- Accept a held anomaly. A jump is rated in its own period at its place in
-- time (later parts of the period whose tiers move are corrected); a seq
-- out of range is stored as a reading and charged like a late one.
CREATE OR REPLACE FUNCTION prepaid.accept_anomaly(p_id bigint, p_note text) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	a prepaid.anomalies;
	v_n integer;
	v_lo bigint;
	v_hi bigint;
	v_last timestamptz;
BEGIN
	SELECT * INTO a FROM prepaid.anomalies WHERE id = p_id FOR UPDATE;
	IF NOT FOUND OR a.state <> 'open' THEN
		RAISE EXCEPTION 'anomaly % is not open', p_id USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	PERFORM prepaid_internal.lock_meter(a.meter_id);
	UPDATE prepaid.anomalies SET state = 'accepted', resolved_by = session_user,
	    resolved_at = now(), note = p_note WHERE id = p_id;
	v_lo := a.from_seq;
	v_hi := a.to_seq;
	IF a.kind = 'seq_out_of_range' THEN
		INSERT INTO prepaid.readings (meter_id, seq, ts, energy_wh, received_at, ingested_at)
		VALUES (a.meter_id, a.to_seq, a.to_ts, a.to_wh, a.detected_at, now())
		ON CONFLICT DO NOTHING;
		UPDATE prepaid.meters SET
			last_seq = CASE WHEN a.to_seq > last_seq THEN a.to_seq ELSE last_seq END,
			last_ts = CASE WHEN a.to_seq > last_seq THEN a.to_ts ELSE last_ts END,
			last_energy_wh = CASE WHEN a.to_seq > last_seq THEN a.to_wh ELSE last_energy_wh END,
			first_seq = CASE WHEN a.to_seq < first_seq THEN a.to_seq ELSE first_seq END,
			first_ts = CASE WHEN a.to_seq < first_seq THEN a.to_ts ELSE first_ts END,
			first_wh = CASE WHEN a.to_seq < first_seq THEN a.to_wh ELSE first_wh END,
			readings = readings + 1
		WHERE meter_id = a.meter_id;
		SELECT coalesce(max(seq), a.to_seq) INTO v_lo FROM prepaid.readings
		WHERE meter_id = a.meter_id AND seq < a.to_seq;
		SELECT coalesce(min(seq), a.to_seq) INTO v_hi FROM prepaid.readings
		WHERE meter_id = a.meter_id AND seq > a.to_seq;
	END IF;
	v_n := prepaid_internal.rerate_meter(a.meter_id, v_lo, v_hi);
	SELECT last_ts INTO v_last FROM prepaid.meters WHERE meter_id = a.meter_id;
	PERFORM prepaid_internal.refresh_rate_cache(ARRAY[a.meter_id], ARRAY[v_last]);
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('accept_anomaly', a.meter_id, jsonb_build_object('anomaly', p_id, 'note', p_note,
	    'kind', a.kind, 'energy_wh', a.energy_wh, 'entries', v_n));
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

-- Every meter whose balance is not the sum of its ledger, or whose charged
-- fen are not the floor of its exact charges. Always empty.
DROP FUNCTION IF EXISTS prepaid.verify_ledger();
CREATE FUNCTION prepaid.verify_ledger()
RETURNS TABLE (meter_id text, balance numeric, ledger_sum numeric, exact_charges_fen numeric,
    charged_fen bigint)
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	SELECT m.meter_id, m.balance, coalesce(l.total, 0) / 100.0, -coalesce(l.x, 0),
	       -coalesce(l.charged, 0)::bigint
	FROM prepaid.meters m
	LEFT JOIN (SELECT x.meter_id, sum(x.amount_fen) AS total, sum(x.exact_fen) AS x,
	                  sum(x.amount_fen) FILTER (WHERE x.kind IN ('charge', 'standing')) AS charged
	           FROM prepaid.ledger x GROUP BY x.meter_id) l ON l.meter_id = m.meter_id
	WHERE m.balance_fen <> coalesce(l.total, 0)
	   OR m.exact_fen <> -coalesce(l.x, 0)
	   OR -coalesce(l.charged, 0) <> floor(-coalesce(l.x, 0))
$$;
COMMENT ON FUNCTION prepaid.verify_ledger() IS
	'Meters whose balance is not the sum of their ledger (none, normally).';

-- ------------------------------------------------------------------ views

DROP VIEW IF EXISTS prepaid.balances;
CREATE VIEW prepaid.balances AS
SELECT m.meter_id, m.site_id, (m.balance_fen / 100.0)::numeric(20,2) AS balance, m.balance_fen,
       (m.exact_fen - floor(m.exact_fen))::numeric(24,5) AS carry_fen,
       -- credits less exact charges: what the balance would be without the carry
       ((m.balance_fen - (m.exact_fen - floor(m.exact_fen))) / 100)::numeric(20,7) AS balance_exact,
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

DROP VIEW IF EXISTS prepaid.site_daily;
CREATE VIEW prepaid.site_daily AS
SELECT m.site_id, l.day,
       round(coalesce(sum(l.energy_wh) FILTER (WHERE l.kind = 'charge'), 0) / 1000.0, 3) AS energy_kwh,
       (-coalesce(sum(l.amount_fen) FILTER (WHERE l.kind = 'charge'), 0) / 100.0)::numeric(20,2) AS energy_charges,
       (-coalesce(sum(l.amount_fen) FILTER (WHERE l.kind = 'standing'), 0) / 100.0)::numeric(20,2) AS standing_charges,
       (coalesce(sum(l.amount_fen) FILTER (WHERE l.kind = 'payment'), 0) / 100.0)::numeric(20,2) AS payments,
       (coalesce(sum(l.amount_fen) FILTER (WHERE l.kind = 'adjustment'), 0) / 100.0)::numeric(20,2) AS adjustments,
       (-coalesce(sum(l.amount_fen) FILTER (WHERE l.kind IN ('charge', 'standing')), 0) / 100.0)::numeric(20,2) AS revenue
FROM prepaid.ledger l JOIN prepaid.meters m ON m.meter_id = l.meter_id
GROUP BY m.site_id, l.day;
COMMENT ON VIEW prepaid.site_daily IS
	'Energy, charges, payments and adjustments per site and local day.';

DROP VIEW IF EXISTS prepaid.site_monthly;
CREATE VIEW prepaid.site_monthly AS
SELECT m.site_id, date_trunc('month', l.day)::date AS month,
       round(coalesce(sum(l.energy_wh) FILTER (WHERE l.kind = 'charge'), 0) / 1000.0, 3) AS energy_kwh,
       (-coalesce(sum(l.amount_fen) FILTER (WHERE l.kind = 'charge'), 0) / 100.0)::numeric(20,2) AS energy_charges,
       (-coalesce(sum(l.amount_fen) FILTER (WHERE l.kind = 'standing'), 0) / 100.0)::numeric(20,2) AS standing_charges,
       (coalesce(sum(l.amount_fen) FILTER (WHERE l.kind = 'payment'), 0) / 100.0)::numeric(20,2) AS payments,
       (coalesce(sum(l.amount_fen) FILTER (WHERE l.kind = 'adjustment'), 0) / 100.0)::numeric(20,2) AS adjustments,
       (-coalesce(sum(l.amount_fen) FILTER (WHERE l.kind IN ('charge', 'standing')), 0) / 100.0)::numeric(20,2) AS revenue
FROM prepaid.ledger l JOIN prepaid.meters m ON m.meter_id = l.meter_id
GROUP BY m.site_id, date_trunc('month', l.day);
COMMENT ON VIEW prepaid.site_monthly IS
	'Energy, charges, payments and adjustments per site and month.';

-- A bill for a meter over local days [p_from, p_to]: the opening balance,
-- per day the energy and charges by tier and band, standing charges,
-- payments, adjustments and corrections, and the closing balance. Every
-- line is a sum of whole-fen entries: the lines add up exactly.
CREATE OR REPLACE FUNCTION prepaid.statement(p_meter text, p_from date, p_to date)
RETURNS TABLE (line_no bigint, day date, kind text, detail text, energy_kwh numeric,
    amount numeric, balance numeric)
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
WITH opening AS (
	SELECT coalesce(sum(l.amount_fen), 0) AS fen FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.day < p_from
), lines AS (
	SELECT l.day, 1 AS ord, 'charge' AS kind,
	       format('energy, tier %s%s @ %s yuan/kWh%s', l.tier,
	              CASE WHEN l.band IS NOT NULL THEN ', ' || l.band ELSE '' END, l.price,
	              CASE WHEN l.service_fee > 0 THEN format(' + service %s', l.service_fee) ELSE '' END)
	           || CASE WHEN bool_or(l.price = 0 AND l.tier = 0) THEN ' (free quota)' ELSE '' END AS detail,
	       sum(l.energy_wh) / 1000.0 AS energy_kwh, sum(l.amount_fen) AS fen, min(l.entry_id) AS first
	FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.day BETWEEN p_from AND p_to AND l.kind = 'charge'
	  AND l.reverses IS NULL
	  AND NOT EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id)
	GROUP BY l.day, l.tier, l.band, l.price, l.service_fee
	UNION ALL
	-- corrections: each reversed entry with its reversal, and the new charge
	-- above; shown on the day of what they correct
	SELECT l.day, 3, 'correction',
	       format('correction of entry %s (readings %s-%s, tier %s%s): %s',
	              coalesce(l.reverses, l.entry_id), l.from_seq, l.to_seq, l.tier,
	              CASE WHEN l.band IS NOT NULL THEN ', ' || l.band ELSE '' END,
	              CASE WHEN l.reverses IS NULL THEN 'as charged' ELSE 'reversed' END),
	       l.energy_wh / 1000.0, l.amount_fen, l.entry_id
	FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.day BETWEEN p_from AND p_to AND l.kind IN ('charge', 'standing')
	  AND (l.reverses IS NOT NULL
	       OR EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id))
	UNION ALL
	SELECT l.day, 2, l.kind,
	       CASE l.kind WHEN 'standing' THEN 'standing charge'
	                   WHEN 'payment' THEN 'payment ' || l.reference
	                   ELSE 'adjustment: ' || l.reason || ' (' || l.author || ')' END,
	       NULL, l.amount_fen, l.entry_id
	FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.day BETWEEN p_from AND p_to AND l.kind <> 'charge'
	  AND l.reverses IS NULL
	  AND NOT EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id)
), numbered AS (
	SELECT row_number() OVER (ORDER BY day, ord, first) AS n, lines.* FROM lines
)
SELECT 0::bigint, p_from, 'opening', 'opening balance', NULL::numeric, NULL::numeric,
       ((SELECT fen FROM opening) / 100.0)::numeric(20,2)
UNION ALL
SELECT n, numbered.day, numbered.kind, numbered.detail, round(numbered.energy_kwh, 3),
       (numbered.fen / 100.0)::numeric(20,2),
       (((SELECT fen FROM opening) + sum(numbered.fen) OVER (ORDER BY n)) / 100.0)::numeric(20,2)
FROM numbered
UNION ALL
SELECT (SELECT count(*) FROM numbered) + 1, p_to, 'closing', 'closing balance', NULL, NULL,
       (((SELECT fen FROM opening) + coalesce((SELECT sum(fen) FROM numbered), 0)) / 100.0)::numeric(20,2)
ORDER BY 1
$$;
COMMENT ON FUNCTION prepaid.statement(text,date,date) IS
	'A meter''s statement for a range of days: opening balance, entries, closing balance.';
