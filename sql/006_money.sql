-- 006_money.sql: money at rest in whole fen, with the exact amounts and the
-- carry (issue 10; prepaidd-sql(7), section MONEY, is the contract).
--
-- * ledger: amount_fen (whole fen, + credit, - charge), exact_fen (a charge's
--   exact amount, at most 5 decimals), reverses (a correction's reversal
--   names the entry), period_start (a charge's billing period: tier state
--   is per meter and period); amount becomes the yuan of amount_fen.
-- * meters: balance_fen (balance is kept equal to it, for the ladder),
--   exact_fen (the exact charges so far: the carry), rated_ts (the end of
--   the latest part charged), standing_from (the first standing day).
-- * anomalies: seq_out_of_range, and superseded (split by a late reading).
--
-- An existing ledger is converted: credits are whole fen already; charges
-- take their fen by the carry, in entry order, so balances become whole fen
-- (at most a fen less negative than the exact ones of 001).

-- ------------------------------------------------------------ the ledger

ALTER TABLE prepaid.ledger
	ADD COLUMN amount_fen bigint,
	ADD COLUMN exact_fen numeric(24,5),
	ADD COLUMN reverses bigint,
	ADD COLUMN period_start date;

-- Existing entries (an upgrade: the concern files, triggers included, are
-- in place): credits are whole fen already; charges take their fen by the
-- carry, in entry order. A new database has no entries and no triggers yet.
DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM prepaid.ledger) THEN
		ALTER TABLE prepaid.ledger DISABLE TRIGGER USER;
		WITH c AS (
			SELECT l.entry_id, l.kind, -l.amount * 100 AS x,
			       sum(CASE WHEN l.kind IN ('charge', 'standing') THEN -l.amount * 100 ELSE 0 END)
			           OVER (PARTITION BY l.meter_id ORDER BY l.entry_id) AS cum,
			       CASE WHEN v.period = 'year' THEN
			            make_date(extract(year FROM l.day)::int
			                      - CASE WHEN l.day < make_date(extract(year FROM l.day)::int,
			                                 v.period_start_month, v.period_start_day) THEN 1 ELSE 0 END,
			                      v.period_start_month, v.period_start_day)
			            ELSE (date_trunc('month', l.day - (v.period_start_day - 1))
			                  + (v.period_start_day - 1) * interval '1 day')::date END AS pstart
			FROM prepaid.ledger l LEFT JOIN prepaid.tariff_versions v ON v.version_id = l.tariff_version_id
		)
		UPDATE prepaid.ledger l SET
			exact_fen = CASE WHEN c.kind IN ('charge', 'standing') THEN -c.x END,
			amount_fen = CASE WHEN c.kind IN ('charge', 'standing')
			                  THEN -(floor(c.cum) - floor(c.cum - c.x)) ELSE round(l.amount * 100) END,
			period_start = CASE WHEN c.kind = 'charge' THEN c.pstart END
		FROM c WHERE c.entry_id = l.entry_id;
		ALTER TABLE prepaid.ledger ENABLE TRIGGER USER;
	END IF;
END $$;

-- (ledger.sql makes them again, after the migrations)
DROP VIEW IF EXISTS prepaid.balances;
DROP VIEW IF EXISTS prepaid.site_daily;
DROP VIEW IF EXISTS prepaid.site_monthly;
-- (views on amount are dropped with it: the concern files make them again)
ALTER TABLE prepaid.ledger ALTER COLUMN amount_fen SET NOT NULL,
	DROP COLUMN amount CASCADE,
	ADD COLUMN amount numeric(20,2) GENERATED ALWAYS AS (amount_fen / 100.0) STORED,
	ADD CONSTRAINT ledger_exact CHECK ((exact_fen IS NOT NULL) = (kind IN ('charge', 'standing'))),
	ADD CONSTRAINT ledger_reversal CHECK (reverses IS NULL OR kind IN ('charge', 'standing'));
CREATE INDEX ledger_reverses ON prepaid.ledger (reverses) WHERE reverses IS NOT NULL;
-- (The full path of charging finds a period's or an interval's entries
-- through ledger_meter_day: no index more for charging to keep.)
DROP INDEX prepaid.ledger_standing_once;
CREATE UNIQUE INDEX ledger_standing_once ON prepaid.ledger (meter_id, day)
	WHERE kind = 'standing' AND reverses IS NULL;

-- ------------------------------------------------------------ the meters

ALTER TABLE prepaid.meters
	ADD COLUMN balance_fen bigint NOT NULL DEFAULT 0,
	ADD COLUMN exact_fen numeric(24,5) NOT NULL DEFAULT 0,  -- X: exact charges so far
	ADD COLUMN rated_ts timestamptz,     -- the end of the latest part charged
	ADD COLUMN standing_from date;       -- first local day with its standing charge
UPDATE prepaid.meters m SET
	balance_fen = coalesce(l.total, 0), exact_fen = coalesce(l.x, 0), rated_ts = l.rated,
	standing_from = l.sfrom, balance = coalesce(l.total, 0) / 100.0
FROM (SELECT meter_id, sum(amount_fen) AS total, -sum(exact_fen) AS x,
             max(to_ts) FILTER (WHERE kind = 'charge') AS rated,
             min(day) FILTER (WHERE kind = 'standing') AS sfrom
      FROM prepaid.ledger GROUP BY meter_id) l
WHERE l.meter_id = m.meter_id;
UPDATE prepaid.meters m SET standing_from = least(m.standing_from, (m.first_ts AT TIME ZONE s.time_zone)::date)
FROM prepaid.sites s WHERE s.site_id = m.site_id AND m.standing_through IS NOT NULL;
ALTER TABLE prepaid.meters
	ADD CONSTRAINT meters_balance_fen CHECK (balance * 100 = balance_fen);

-- -------------------------------------------------------------- anomalies

ALTER TABLE prepaid.anomalies DROP CONSTRAINT anomalies_kind_check,
	ADD CONSTRAINT anomalies_kind_check
	    CHECK (kind IN ('register_down', 'implausible_jump', 'seq_out_of_range')),
	DROP CONSTRAINT anomalies_state_check,
	ADD CONSTRAINT anomalies_state_check
	    CHECK (state IN ('noted', 'open', 'accepted', 'rejected', 'superseded'));
CREATE INDEX anomalies_meter_pair ON prepaid.anomalies (meter_id, to_seq);

-- ------------------------------------------------------------- payments

-- Orders in fen like payments (amount: their yuan, for the views).
DROP VIEW IF EXISTS prepaid.order_status;
ALTER TABLE prepaid.orders ADD COLUMN amount_fen bigint;
UPDATE prepaid.orders SET amount_fen = round(amount * 100);
ALTER TABLE prepaid.orders ALTER COLUMN amount_fen SET NOT NULL,
	ADD CONSTRAINT orders_amount_fen CHECK (amount_fen > 0),
	DROP COLUMN amount CASCADE,
	ADD COLUMN amount numeric(20,2) GENERATED ALWAYS AS (amount_fen / 100.0) STORED;

-- Why a payment left a tripped meter off ("below restore level 20.00: not
-- re-armed"); NULL when it re-armed it or the meter was not tripped.
ALTER TABLE prepaid.payments ADD COLUMN rearm_note text;

-- ------------------------------------------------------------ templates

-- The shipped texts read well when the site has no payment_link: the link
-- is an optional section ({{#link}}...{{/link}}). Texts an operator edited
-- are left as they are.
UPDATE prepaid.message_templates t SET body = n.body
FROM (VALUES
	('low_balance', 'sms', 'zh',
	 '【物业】{{name}}您好，电表{{meter}}余额{{balance}}元，请及时充值：{{link}}',
	 '【物业】{{name}}您好，电表{{meter}}余额{{balance}}元，请及时充值{{#link}}：{{link}}{{/link}}。'),
	('low_balance', 'sms', 'en',
	 'Dear {{name}}, the balance of meter {{meter}} is {{balance}} yuan. Please top up: {{link}}',
	 'Dear {{name}}, the balance of meter {{meter}} is {{balance}} yuan. Please top up{{#link}}: {{link}}{{/link}}.'),
	('low_balance', 'email', 'zh',
	 E'{{name}}您好：\n\n您的电表{{meter}}当前余额为{{balance}}元，请及时充值以免停电。\n充值链接：{{link}}\n',
	 E'{{name}}您好：\n\n您的电表{{meter}}当前余额为{{balance}}元，请及时充值以免停电。\n{{#link}}充值链接：{{link}}\n{{/link}}'),
	('low_balance', 'email', 'en',
	 E'Dear {{name}},\n\nThe balance of meter {{meter}} is {{balance}} yuan. Please top up to avoid an interruption.\nTop up: {{link}}\n',
	 E'Dear {{name}},\n\nThe balance of meter {{meter}} is {{balance}} yuan. Please top up to avoid an interruption.\n{{#link}}Top up: {{link}}\n{{/link}}'),
	('arrears', 'sms', 'zh',
	 '【物业】{{name}}您好，电表{{meter}}已欠费{{amount_due}}元，请尽快缴费，逾期将停电：{{link}}',
	 '【物业】{{name}}您好，电表{{meter}}已欠费{{amount_due}}元，请尽快缴费，逾期将停电{{#link}}：{{link}}{{/link}}。'),
	('arrears', 'sms', 'en',
	 'Dear {{name}}, meter {{meter}} is {{amount_due}} yuan in arrears. Please pay soon or supply will be cut: {{link}}',
	 'Dear {{name}}, meter {{meter}} is {{amount_due}} yuan in arrears. Please pay soon or supply will be cut{{#link}}: {{link}}{{/link}}.'),
	('arrears', 'email', 'zh',
	 E'{{name}}您好：\n\n您的电表{{meter}}已欠费{{amount_due}}元，请尽快缴费，逾期将停止供电。\n缴费链接：{{link}}\n',
	 E'{{name}}您好：\n\n您的电表{{meter}}已欠费{{amount_due}}元，请尽快缴费，逾期将停止供电。\n{{#link}}缴费链接：{{link}}\n{{/link}}'),
	('arrears', 'email', 'en',
	 E'Dear {{name}},\n\nMeter {{meter}} is {{amount_due}} yuan in arrears. Please pay soon; otherwise the supply will be cut.\nPay: {{link}}\n',
	 E'Dear {{name}},\n\nMeter {{meter}} is {{amount_due}} yuan in arrears. Please pay soon; otherwise the supply will be cut.\n{{#link}}Pay: {{link}}\n{{/link}}')
) AS n(template_key, channel, language, old, body)
WHERE t.template_key = n.template_key AND t.channel = n.channel AND t.language = n.language
  AND t.body = n.old;
