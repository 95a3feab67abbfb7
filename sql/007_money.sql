-- 007_money.sql: money an auditor signs off (issue 10), as prepaidd-sql(7),
-- section MONEY, states it.
--
-- * Money at rest is whole fen. The ledger keeps amount_fen (bigint) and,
--   for charges, the exact amount in exact_fen; ledger.amount is now the
--   yuan of amount_fen, for the views. meters.balance_fen is the balance,
--   meters.balance its yuan (both written together, checked equal).
-- * Each charge or standing entry's fen follow the carry: with X the
--   meter's exact charges so far (meters.exact_fen), an entry of exact x
--   takes floor(X + x) - floor(X) fen.
-- * Tier state is per meter and billing period, in the order consumption
--   happened: a part's position is the energy of the period's parts before
--   it (by from_ts, to_ts, to_seq), summed from the ledger (period_start).
-- * Late readings, gap fills and accepted jumps are rated by
--   prepaid.rerate_meter(): intervals that no longer exist are reversed,
--   new ones charged, and later parts of the same period whose tiers move
--   are corrected (reversal + new charge), never updated.
-- * Exact power limit, a sequence-number bound (seq_out_of_range), every
--   standing day charged once, credit conflicts refused.
--
-- (Functions replaced here are ported to their concern files when sql/ is
-- laid out by concern.)

-- ------------------------------------------------------------ the ledger

ALTER TABLE prepaid.ledger
	ADD COLUMN amount_fen bigint,
	ADD COLUMN exact_fen numeric(24,5),
	ADD COLUMN reverses bigint,
	ADD COLUMN period_start date;

ALTER TABLE prepaid.ledger DISABLE TRIGGER ledger_append_only;
-- Existing entries: credits are whole fen already; charges take their fen by
-- the carry, in entry order.
WITH c AS (
	SELECT l.entry_id, l.kind, -l.amount * 100 AS x,
	       sum(CASE WHEN l.kind IN ('charge', 'standing') THEN -l.amount * 100 ELSE 0 END)
	           OVER (PARTITION BY l.meter_id ORDER BY l.entry_id) AS cum,
	       prepaid.period_start(v.period, v.period_start_day, v.period_start_month, l.day) AS pstart
	FROM prepaid.ledger l LEFT JOIN prepaid.tariff_versions v ON v.version_id = l.tariff_version_id
)
UPDATE prepaid.ledger l SET
	exact_fen = CASE WHEN c.kind IN ('charge', 'standing') THEN -c.x END,
	amount_fen = CASE WHEN c.kind IN ('charge', 'standing') THEN -(floor(c.cum) - floor(c.cum - c.x))
	                  ELSE round(l.amount * 100) END,
	period_start = CASE WHEN c.kind = 'charge' THEN c.pstart END
FROM c WHERE c.entry_id = l.entry_id;
ALTER TABLE prepaid.ledger ENABLE TRIGGER ledger_append_only;

DROP VIEW prepaid.balances;
DROP VIEW prepaid.site_daily;
DROP VIEW prepaid.site_monthly;
ALTER TABLE prepaid.ledger ALTER COLUMN amount_fen SET NOT NULL,
	DROP COLUMN amount,
	ADD COLUMN amount numeric(20,2) GENERATED ALWAYS AS (amount_fen / 100.0) STORED,
	ADD CONSTRAINT ledger_exact CHECK ((exact_fen IS NOT NULL) = (kind IN ('charge', 'standing'))),
	ADD CONSTRAINT ledger_reversal CHECK (reverses IS NULL OR kind IN ('charge', 'standing'));
CREATE INDEX ledger_reverses ON prepaid.ledger (reverses) WHERE reverses IS NOT NULL;
CREATE INDEX ledger_meter_period ON prepaid.ledger (meter_id, period_start, from_ts)
	WHERE kind = 'charge';
CREATE INDEX ledger_meter_interval ON prepaid.ledger (meter_id, to_seq) WHERE kind = 'charge';
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

-- ----------------------------------------------------------------- rating

-- Whether wh Wh between two reading times is more than max_power_w can
-- deliver: wh * 3600 > max_power_w * seconds (at least 60), exactly.
CREATE FUNCTION prepaid.implausible(p_wh bigint, p_t0 timestamptz, p_t1 timestamptz,
    p_max_power_w bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
	SELECT p_wh::numeric * 3600 > p_max_power_w * greatest(extract(epoch FROM p_t1 - p_t0), 60)
$$;

-- The parts of reading intervals: each interval [t0, t1] of wh Wh is cut at
-- local midnights, band starts, tariff assignment and version changes; a
-- part's Wh is floor(wh * (s1 - t0) / (t1 - t0)) - floor(wh * (s0 - t0) /
-- (t1 - t0)) on exact microseconds. Each part has the version in force at
-- its start (none: not returned), its band, and the billing period of its
-- local day.
CREATE FUNCTION prepaid.interval_parts(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
    p_t0 timestamptz[], p_t1 timestamptz[], p_wh bigint[])
RETURNS TABLE (ivn bigint, meter_id text, from_seq bigint, to_seq bigint,
    seg_from timestamptz, seg_to timestamptz, day date, energy_wh bigint, version_id bigint,
    service numeric, pstart date, band text, bprice numeric)
LANGUAGE sql STABLE AS $$
WITH iv AS (
	SELECT u.ord AS ivn, u.m, u.fs, u.ts, u.t0, u.t1, u.wh, s.time_zone AS tz, s.calendar,
	       s.default_tariff_id AS deft,
	       extract(epoch FROM u.t1 - u.t0) * 1000000 AS span
	FROM unnest(p_meter, p_from_seq, p_to_seq, p_t0, p_t1, p_wh) WITH ORDINALITY
	     AS u(m, fs, ts, t0, t1, wh, ord)
	JOIN prepaid.meters mt ON mt.meter_id = u.m
	JOIN prepaid.sites s ON s.site_id = mt.site_id
	WHERE u.t1 > u.t0 AND u.wh > 0
), tar AS (
	SELECT iv.ivn, coalesce(a.tariff_id, iv.deft) AS tariff_id FROM iv
	LEFT JOIN LATERAL (SELECT x.tariff_id FROM prepaid.meter_tariffs x
	                   WHERE x.meter_id = iv.m AND x.effective_from <= iv.t0
	                   ORDER BY x.effective_from DESC LIMIT 1) a ON true
	UNION
	SELECT iv.ivn, x.tariff_id FROM iv
	JOIN prepaid.meter_tariffs x ON x.meter_id = iv.m AND x.effective_from > iv.t0 AND x.effective_from < iv.t1
), bst AS (
	SELECT DISTINCT tar.ivn, b.start_time AS t FROM tar
	JOIN prepaid.tariff_versions v ON v.tariff_id = tar.tariff_id AND v.has_bands
	JOIN prepaid.tariff_bands b ON b.version_id = v.version_id
), days AS (
	SELECT iv.ivn, iv.tz, iv.t0, iv.t1, d.d::date AS day FROM iv
	CROSS JOIN LATERAL generate_series((iv.t0 AT TIME ZONE iv.tz)::date,
	                                   (iv.t1 AT TIME ZONE iv.tz)::date, interval '1 day') AS d(d)
), starts AS (
	SELECT ivn, time '00:00' AS t FROM iv
	UNION SELECT ivn, t FROM bst
), cut AS (
	SELECT ivn, t0 AS p FROM iv
	UNION SELECT ivn, t1 FROM iv
	UNION SELECT iv.ivn, x.effective_from FROM iv
	      JOIN prepaid.meter_tariffs x ON x.meter_id = iv.m AND x.effective_from > iv.t0 AND x.effective_from < iv.t1
	UNION SELECT iv.ivn, v.effective_from FROM iv JOIN tar ON tar.ivn = iv.ivn
	      JOIN prepaid.tariff_versions v ON v.tariff_id = tar.tariff_id
	       AND v.effective_from > iv.t0 AND v.effective_from < iv.t1
	UNION SELECT x.ivn, x.p FROM (
	          SELECT days.ivn, days.t0, days.t1, (days.day + starts.t) AT TIME ZONE days.tz AS p
	          FROM days JOIN starts ON starts.ivn = days.ivn) x
	      WHERE x.p > x.t0 AND x.p < x.t1
), seg AS (
	SELECT ivn, p AS s0, lead(p) OVER (PARTITION BY ivn ORDER BY p) AS s1 FROM cut
), part AS (
	SELECT iv.ivn, iv.m, iv.fs, iv.ts, iv.calendar, iv.deft, seg.s0, seg.s1,
	       (seg.s0 AT TIME ZONE iv.tz) AS local0,
	       (div(iv.wh * extract(epoch FROM seg.s1 - iv.t0) * 1000000, iv.span)
	        - div(iv.wh * extract(epoch FROM seg.s0 - iv.t0) * 1000000, iv.span))::bigint AS e
	FROM seg JOIN iv ON iv.ivn = seg.ivn
	WHERE seg.s1 IS NOT NULL
)
SELECT part.ivn, part.m, part.fs, part.ts, part.s0, part.s1, part.local0::date, part.e,
       v.version_id, v.service_per_kwh,
       prepaid.period_start(v.period, v.period_start_day, v.period_start_month, part.local0::date),
       b.band, b.price
FROM part
LEFT JOIN LATERAL (SELECT x.tariff_id FROM prepaid.meter_tariffs x
                   WHERE x.meter_id = part.m AND x.effective_from <= part.s0
                   ORDER BY x.effective_from DESC LIMIT 1) a ON true
JOIN LATERAL (SELECT y.* FROM prepaid.tariff_versions y
              WHERE y.tariff_id = coalesce(a.tariff_id, part.deft) AND y.effective_from <= part.s0
              ORDER BY y.effective_from DESC LIMIT 1) v ON true
LEFT JOIN LATERAL (SELECT bb.band, bb.price FROM prepaid.tariff_bands bb
                   WHERE v.has_bands AND bb.version_id = v.version_id
                     AND bb.day_type = prepaid.day_type(part.calendar, part.local0::date)
                     AND bb.start_time <= part.local0::time
                   ORDER BY bb.start_time DESC LIMIT 1) b ON true
WHERE part.e > 0
$$;

-- The energy a meter's billing period already holds before a part (by
-- from_ts, to_ts, to_seq): its tier position. Reversals cancel what they
-- reverse, so a plain sum of the period's charge entries is the live one.
CREATE FUNCTION prepaid.period_wh_before(p_meter text, p_period date, p_s0 timestamptz,
    p_s1 timestamptz, p_to_seq bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
	SELECT coalesce(sum(l.energy_wh), 0)::bigint FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.period_start = p_period
	  AND (l.from_ts, l.to_ts, l.to_seq) < (p_s0, p_s1, p_to_seq)
$$;

-- Rate intervals that come after every part already charged for their
-- meters (the in-order case): each part's position is the energy of its
-- period so far plus the earlier parts of the call. Returns the pieces cut
-- at the tier thresholds and free quota, with their exact amount in fen.
DROP FUNCTION prepaid.rate_intervals(text[], bigint[], bigint[], timestamptz[], timestamptz[], bigint[]);
CREATE FUNCTION prepaid.rate_intervals(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
    p_t0 timestamptz[], p_t1 timestamptz[], p_wh bigint[])
RETURNS TABLE (meter_id text, ivn bigint, from_seq bigint, to_seq bigint,
    seg_from timestamptz, seg_to timestamptz, day date, energy_wh bigint, version_id bigint,
    tier integer, free boolean, band text, price numeric, service_fee numeric, exact_fen numeric,
    period_start date, period_wh_after bigint)
LANGUAGE sql STABLE AS $$
WITH priced AS (
	SELECT p.*, mt.period_start AS base_period, mt.period_wh AS base_wh
	FROM prepaid.interval_parts(p_meter, p_from_seq, p_to_seq, p_t0, p_t1, p_wh) p
	JOIN prepaid.meters mt ON mt.meter_id = p.meter_id
), first AS (
	SELECT DISTINCT ON (meter_id, pstart) meter_id, pstart, base_period, base_wh, seg_from, seg_to, to_seq
	FROM priced ORDER BY meter_id, pstart, seg_from, seg_to, to_seq
), base AS (
	SELECT f.meter_id, f.pstart,
	       CASE WHEN f.pstart = f.base_period THEN f.base_wh
	            ELSE prepaid.period_wh_before(f.meter_id, f.pstart, f.seg_from, f.seg_to, f.to_seq) END AS wh
	FROM first f
), cum AS (
	SELECT priced.*, base.wh
	       + coalesce(sum(priced.energy_wh) OVER (PARTITION BY priced.meter_id, priced.pstart
	                       ORDER BY priced.seg_from, priced.seg_to, priced.to_seq
	                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS cb
	FROM priced JOIN base ON base.meter_id = priced.meter_id AND base.pstart = priced.pstart
)
SELECT c.meter_id, c.ivn, c.from_seq, c.to_seq, c.seg_from, c.seg_to, c.day, pe.wh, c.version_id,
       r.tier, r.free, c.band,
       CASE WHEN r.free THEN 0 ELSE coalesce(c.bprice, 0) + r.price END,
       CASE WHEN r.free THEN 0 ELSE c.service END,
       CASE WHEN r.free THEN 0
            ELSE pe.wh * (coalesce(c.bprice, 0) + r.price + c.service) / 10 END,
       c.pstart, c.cb + c.energy_wh
FROM cum c
JOIN prepaid.tariff_ranges r ON r.version_id = c.version_id
     AND r.lo_wh < c.cb + c.energy_wh AND (r.hi_wh IS NULL OR r.hi_wh > c.cb)
CROSS JOIN LATERAL (SELECT least(coalesce(r.hi_wh, c.cb + c.energy_wh), c.cb + c.energy_wh)
                           - greatest(r.lo_wh, c.cb) AS wh) pe
$$;

-- Standing days due for meters whose stored readings now reach from p_from
-- to p_to: every local day of that range outside the days already charged
-- (meters.standing_from .. standing_through), at the standing_per_day of
-- the version in force at the first instant of the day at which any is.
CREATE FUNCTION prepaid.standing_due(p_meter text[], p_from timestamptz[], p_to timestamptz[])
RETURNS TABLE (meter_id text, day date, version_id bigint, exact_fen numeric)
LANGUAGE sql STABLE AS $$
	SELECT k.m, d.d::date, v.version_id, v.standing_per_day * 100
	FROM (SELECT u.m, min(u.f) AS f, max(u.t) AS t FROM unnest(p_meter, p_from, p_to) AS u(m, f, t)
	      GROUP BY u.m) k
	JOIN prepaid.meters mt ON mt.meter_id = k.m
	JOIN prepaid.sites s ON s.site_id = mt.site_id
	CROSS JOIN LATERAL generate_series(
	    least((k.f AT TIME ZONE s.time_zone)::date, mt.standing_from),
	    greatest((k.t AT TIME ZONE s.time_zone)::date, mt.standing_through), interval '1 day') AS d(d)
	CROSS JOIN LATERAL (SELECT (d.d::date + time '00:00') AT TIME ZONE s.time_zone AS ds,
	                           (d.d::date + 1 + time '00:00') AT TIME ZONE s.time_zone AS de) b
	JOIN LATERAL (
		SELECT y.version_id, y.standing_per_day
		FROM (SELECT b.ds AS t
		      UNION SELECT x.effective_from FROM prepaid.meter_tariffs x
		            WHERE x.meter_id = k.m AND x.effective_from > b.ds AND x.effective_from < b.de
		      UNION SELECT z.effective_from FROM prepaid.tariff_versions z
		            WHERE z.effective_from > b.ds AND z.effective_from < b.de) c
		LEFT JOIN LATERAL (SELECT x.tariff_id FROM prepaid.meter_tariffs x
		                   WHERE x.meter_id = k.m AND x.effective_from <= c.t
		                   ORDER BY x.effective_from DESC LIMIT 1) a ON true
		JOIN LATERAL (SELECT y.* FROM prepaid.tariff_versions y
		              WHERE y.tariff_id = coalesce(a.tariff_id, s.default_tariff_id)
		                AND y.effective_from <= c.t
		              ORDER BY y.effective_from DESC LIMIT 1) y ON true
		ORDER BY c.t LIMIT 1) v ON true
	WHERE NOT (d.d::date BETWEEN coalesce(mt.standing_from, 'infinity') AND coalesce(mt.standing_through, '-infinity'))
	  AND v.standing_per_day > 0
$$;

-- The entries a transaction is about to write, in order (see post_entries).
CREATE FUNCTION prepaid.post_open() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	CREATE TEMP TABLE IF NOT EXISTS post_rows (ord bigint, meter_id text, day date, kind text,
	    exact_fen numeric, from_seq bigint, to_seq bigint, from_ts timestamptz, to_ts timestamptz,
	    energy_wh bigint, tariff_version_id bigint, tier integer, band text, price numeric,
	    service_fee numeric, anomaly_id bigint, reverses bigint, period_start date)
	    ON COMMIT DELETE ROWS;
	TRUNCATE post_rows;
END $$;

-- Write the charge and standing entries of pg_temp.post_rows (exact_fen is
-- the exact debit: positive for a charge, the negated one for a reversal)
-- with their fen by the carry, meter by meter in the order ord: an entry of
-- exact x after exact charges X takes floor(X + x) - floor(X) fen. Moves the
-- meters' balances, exact charges, rated time and standing range.
CREATE FUNCTION prepaid.post_entries() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
	v_n integer;
BEGIN
	WITH e AS (
		SELECT x.*, mt.exact_fen AS x0,
		       mt.exact_fen + sum(x.exact_fen) OVER (PARTITION BY x.meter_id ORDER BY x.ord) AS cum
		FROM pg_temp.post_rows x
		JOIN prepaid.meters mt ON mt.meter_id = x.meter_id
	), led AS (
		INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, exact_fen, from_seq, to_seq,
		    from_ts, to_ts, energy_wh, tariff_version_id, tier, band, price, service_fee,
		    anomaly_id, reverses, period_start, author)
		SELECT meter_id, day, kind, -(floor(cum) - floor(cum - exact_fen))::bigint, -exact_fen,
		       from_seq, to_seq, from_ts, to_ts, energy_wh, tariff_version_id, tier, band, price,
		       service_fee, anomaly_id, reverses, period_start, 'prepaidd'
		FROM e ORDER BY meter_id, ord
		RETURNING 1
	), tot AS (
		SELECT meter_id, max(x0) AS x0, sum(exact_fen) AS x,
		       max(to_ts) FILTER (WHERE kind = 'charge' AND reverses IS NULL) AS rated
		FROM e GROUP BY meter_id
	), upd AS (
		UPDATE prepaid.meters mt SET
			exact_fen = t.x0 + t.x,
			balance_fen = mt.balance_fen - (floor(t.x0 + t.x) - floor(t.x0))::bigint,
			balance = (mt.balance_fen - (floor(t.x0 + t.x) - floor(t.x0))::bigint) / 100.0,
			rated_ts = greatest(mt.rated_ts, t.rated)
		FROM tot t WHERE mt.meter_id = t.meter_id
		RETURNING 1
	)
	SELECT count(*) INTO v_n FROM led;
	TRUNCATE pg_temp.post_rows;
	RETURN v_n;
END $$;

-- The standing range of meters grows to the local days of their readings.
CREATE FUNCTION prepaid.standing_extend(p_meter text[], p_from timestamptz[], p_to timestamptz[])
RETURNS void LANGUAGE sql AS $$
	UPDATE prepaid.meters mt SET
		standing_from = least(mt.standing_from, (k.f AT TIME ZONE s.time_zone)::date),
		standing_through = greatest(mt.standing_through, (k.t AT TIME ZONE s.time_zone)::date)
	FROM (SELECT u.m, min(u.f) AS f, max(u.t) AS t FROM unnest(p_meter, p_from, p_to) AS u(m, f, t)
	      GROUP BY u.m) k, prepaid.sites s
	WHERE mt.meter_id = k.m AND s.site_id = mt.site_id
$$;

-- Charge intervals that come after everything charged for their meters
-- (rate_intervals) and the standing days the batch's readings reach
-- (p_upto_*: per meter, the oldest and newest reading), with the carry.
DROP FUNCTION prepaid.charge(text[], bigint[], bigint[], timestamptz[], timestamptz[], bigint[],
    text[], timestamptz[], timestamptz[], bigint);
CREATE FUNCTION prepaid.charge(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
    p_t0 timestamptz[], p_t1 timestamptz[], p_wh bigint[],
    p_upto_meter text[], p_upto_from timestamptz[], p_upto_ts timestamptz[])
RETURNS integer LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
	v_n integer;
BEGIN
	PERFORM prepaid.post_open();
	WITH r AS (
		SELECT * FROM prepaid.rate_intervals(p_meter, p_from_seq, p_to_seq, p_t0, p_t1, p_wh)
	), ins AS (
		INSERT INTO pg_temp.post_rows (ord, meter_id, day, kind, exact_fen, from_seq, to_seq,
		    from_ts, to_ts, energy_wh, tariff_version_id, tier, band, price, service_fee,
		    period_start)
		SELECT row_number() OVER (ORDER BY r.meter_id, r.seg_from, r.seg_to, r.to_seq, r.tier),
		       r.meter_id, r.day, 'charge', r.exact_fen, r.from_seq, r.to_seq, r.seg_from, r.seg_to,
		       r.energy_wh, r.version_id, r.tier, r.band, r.price, r.service_fee, r.period_start
		FROM r
		UNION ALL
		SELECT 1000000000 + row_number() OVER (ORDER BY st.meter_id, st.day), st.meter_id, st.day,
		       'standing', st.exact_fen, NULL, NULL, NULL, NULL, NULL, st.version_id, NULL, NULL,
		       NULL, NULL, NULL
		FROM prepaid.standing_due(p_upto_meter, p_upto_from, p_upto_ts) st
		RETURNING 1
	), per AS (
		SELECT DISTINCT ON (r.meter_id) r.meter_id AS m, r.period_start, r.period_wh_after
		FROM r ORDER BY r.meter_id, r.seg_from DESC, r.seg_to DESC, r.to_seq DESC, r.tier DESC
	), upd AS (
		UPDATE prepaid.meters mt SET period_start = per.period_start, period_wh = per.period_wh_after
		FROM per WHERE mt.meter_id = per.m
		RETURNING 1
	)
	SELECT (SELECT count(*) FROM ins) INTO v_n;
	v_n := prepaid.post_entries();
	PERFORM prepaid.standing_extend(p_upto_meter, p_upto_from, p_upto_ts);
	RETURN v_n;
END $$;

-- Make a meter's ledger what the rules give for its readings with seq in
-- [p_lo, p_hi] (late readings, gap fills, an accepted jump): intervals that
-- no longer exist are reversed (an open jump among them superseded), new
-- ones classified and charged in their own periods at their position in
-- time, and the later parts of those periods whose tiers moved corrected
-- (reversal + new charge) from the first changed position on; standing
-- days the readings reach are charged. Returns the entries written.
CREATE FUNCTION prepaid.rerate_meter(p_meter text, p_lo bigint, p_hi bigint) RETURNS integer
LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
	v_maxp bigint;
	v_n integer;
	v_f timestamptz;
	v_t timestamptz;
	a_fs bigint[]; a_ts bigint[]; a_t0 timestamptz[]; a_t1 timestamptz[]; a_wh bigint[];
BEGIN
	SELECT coalesce(mt.max_power_w, s.max_power_w) INTO v_maxp
	FROM prepaid.meters mt JOIN prepaid.sites s ON s.site_id = mt.site_id WHERE mt.meter_id = p_meter;

	CREATE TEMP TABLE IF NOT EXISTS rr_iv (fs bigint, ts bigint, t0 timestamptz, t1 timestamptz,
	    r0 timestamptz, e0 bigint, e1 bigint, wh bigint, cls text, anomaly bigint, live boolean)
	    ON COMMIT DELETE ROWS;
	CREATE TEMP TABLE IF NOT EXISTS rr_parts (ivn bigint, fs bigint, ts bigint, s0 timestamptz,
	    s1 timestamptz, day date, e bigint, vid bigint, service numeric, pstart date, band text,
	    bprice numeric, anomaly bigint, fresh boolean) ON COMMIT DELETE ROWS;
	CREATE TEMP TABLE IF NOT EXISTS rr_drop (entry_id bigint, period_start date, from_ts timestamptz,
	    to_ts timestamptz, to_seq bigint) ON COMMIT DELETE ROWS;
	CREATE TEMP TABLE IF NOT EXISTS rr_k (pstart date, k0 timestamptz, k1 timestamptz, k2 bigint)
	    ON COMMIT DELETE ROWS;
	CREATE TEMP TABLE IF NOT EXISTS rr_want (fs bigint, ts bigint, pstart date, s0 timestamptz,
	    s1 timestamptz, day date, e bigint, vid bigint, tier integer, band text, price numeric,
	    service numeric, exact numeric, anomaly bigint, fresh boolean) ON COMMIT DELETE ROWS;
	TRUNCATE rr_iv, rr_parts, rr_drop, rr_k, rr_want;

	-- The intervals now: consecutive stored readings in the range.
	INSERT INTO rr_iv
	SELECT x.fs, x.s, CASE WHEN x.t > x.t0 THEN x.t0 ELSE x.t - interval '1 second' END, x.t, x.t0,
	       x.e0, x.e, x.e - x.e0,
	       CASE WHEN x.e < x.e0 THEN 'register_down' WHEN x.e = x.e0 THEN 'zero'
	            WHEN prepaid.implausible(x.e - x.e0, x.t0, x.t, v_maxp) THEN 'implausible_jump'
	            ELSE 'chargeable' END,
	       NULL,
	       EXISTS (SELECT 1 FROM prepaid.ledger l
	               WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.to_seq = x.s
	                 AND l.from_seq = x.fs AND l.reverses IS NULL
	                 AND NOT EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id))
	FROM (SELECT lag(seq) OVER w AS fs, seq AS s, lag(ts) OVER w AS t0, ts AS t,
	             lag(energy_wh) OVER w AS e0, energy_wh AS e
	      FROM prepaid.readings WHERE meter_id = p_meter AND seq BETWEEN p_lo AND p_hi
	      WINDOW w AS (ORDER BY seq)) x
	WHERE x.fs IS NOT NULL;

	-- Anomalies of new intervals; open jumps of intervals split meanwhile.
	INSERT INTO prepaid.anomalies (meter_id, kind, from_seq, to_seq, from_ts, to_ts,
	    from_wh, to_wh, energy_wh, limit_wh, state)
	SELECT p_meter, i.cls, i.fs, i.ts, i.r0, i.t1, i.e0, i.e1, i.wh,
	       floor(v_maxp * greatest(extract(epoch FROM i.t1 - i.r0), 60) / 3600)::bigint,
	       CASE i.cls WHEN 'register_down' THEN 'noted' ELSE 'open' END
	FROM rr_iv i
	WHERE i.cls IN ('register_down', 'implausible_jump')
	  AND NOT EXISTS (SELECT 1 FROM prepaid.anomalies a WHERE a.meter_id = p_meter
	                  AND a.from_seq = i.fs AND a.to_seq = i.ts AND a.kind = i.cls);
	UPDATE prepaid.anomalies a SET state = 'superseded', resolved_at = now(),
	    note = 'a late reading split its interval'
	WHERE a.meter_id = p_meter AND a.kind IN ('register_down', 'implausible_jump')
	  AND a.state IN ('noted', 'open', 'accepted')
	  AND a.from_seq >= p_lo AND a.to_seq <= p_hi
	  AND NOT EXISTS (SELECT 1 FROM rr_iv i WHERE i.fs = a.from_seq AND i.ts = a.to_seq);
	UPDATE rr_iv i SET anomaly = a.id FROM prepaid.anomalies a
	WHERE i.cls = 'implausible_jump' AND a.meter_id = p_meter AND a.kind = 'implausible_jump'
	  AND a.from_seq = i.fs AND a.to_seq = i.ts AND a.state = 'accepted';

	-- Entries of intervals that no longer exist.
	INSERT INTO rr_drop
	SELECT l.entry_id, l.period_start, l.from_ts, l.to_ts, l.to_seq FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.to_seq BETWEEN p_lo AND p_hi
	  AND l.from_seq >= p_lo AND l.reverses IS NULL
	  AND NOT EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id)
	  AND NOT EXISTS (SELECT 1 FROM rr_iv i WHERE i.fs = l.from_seq AND i.ts = l.to_seq);

	-- The parts of the intervals to charge.
	SELECT array_agg(fs), array_agg(ts), array_agg(t0), array_agg(t1), array_agg(wh)
	INTO a_fs, a_ts, a_t0, a_t1, a_wh
	FROM rr_iv WHERE NOT live AND (cls = 'chargeable' OR anomaly IS NOT NULL);
	INSERT INTO rr_parts
	SELECT p.ivn, p.from_seq, p.to_seq, p.seg_from, p.seg_to, p.day, p.energy_wh, p.version_id,
	       p.service, p.pstart, p.band, p.bprice, i.anomaly, true
	FROM prepaid.interval_parts(array_fill(p_meter, ARRAY[coalesce(cardinality(a_fs), 0)]),
	                            a_fs, a_ts, a_t0, a_t1, a_wh) p
	JOIN rr_iv i ON i.fs = p.from_seq AND i.ts = p.to_seq;

	-- The periods they change, from their first changed position.
	INSERT INTO rr_k
	SELECT DISTINCT ON (pstart) pstart, s0, s1, ts FROM (
		SELECT pstart, s0, s1, ts FROM rr_parts
		UNION ALL SELECT period_start, from_ts, to_ts, to_seq FROM rr_drop) z
	ORDER BY pstart, s0, s1, ts;

	-- The intervals already charged there from that position on, rated
	-- again (only their parts in those periods, from that position, count).
	SELECT array_agg(x.fs), array_agg(x.ts), array_agg(CASE WHEN ra.ts < rb.ts THEN ra.ts ELSE rb.ts - interval '1 second' END),
	       array_agg(rb.ts), array_agg(rb.energy_wh - ra.energy_wh)
	INTO a_fs, a_ts, a_t0, a_t1, a_wh
	FROM (SELECT DISTINCT l.from_seq AS fs, l.to_seq AS ts FROM prepaid.ledger l
	      JOIN rr_k k ON l.period_start = k.pstart
	      WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.reverses IS NULL
	        AND (l.from_ts, l.to_ts, l.to_seq) >= (k.k0, k.k1, k.k2)
	        AND NOT EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id)
	        AND NOT EXISTS (SELECT 1 FROM rr_drop d WHERE d.entry_id = l.entry_id)) x
	JOIN prepaid.readings ra ON ra.meter_id = p_meter AND ra.seq = x.fs
	JOIN prepaid.readings rb ON rb.meter_id = p_meter AND rb.seq = x.ts;
	INSERT INTO rr_parts
	SELECT p.ivn, p.from_seq, p.to_seq, p.seg_from, p.seg_to, p.day, p.energy_wh, p.version_id,
	       p.service, p.pstart, p.band, p.bprice,
	       (SELECT a.id FROM prepaid.anomalies a WHERE a.meter_id = p_meter AND a.kind = 'implausible_jump'
	          AND a.from_seq = p.from_seq AND a.to_seq = p.to_seq AND a.state = 'accepted'),
	       false
	FROM prepaid.interval_parts(array_fill(p_meter, ARRAY[coalesce(cardinality(a_fs), 0)]),
	                            a_fs, a_ts, a_t0, a_t1, a_wh) p
	JOIN rr_k k ON k.pstart = p.pstart AND (p.seg_from, p.seg_to, p.to_seq) >= (k.k0, k.k1, k.k2);

	-- Positions in time order from the period's energy before, then tiers.
	INSERT INTO rr_want
	SELECT c.fs, c.ts, c.pstart, c.s0, c.s1, c.day, pe.wh, c.vid, r.tier, c.band,
	       CASE WHEN r.free THEN 0 ELSE coalesce(c.bprice, 0) + r.price END,
	       CASE WHEN r.free THEN 0 ELSE c.service END,
	       CASE WHEN r.free THEN 0 ELSE pe.wh * (coalesce(c.bprice, 0) + r.price + c.service) / 10 END,
	       c.anomaly, c.fresh
	FROM (SELECT p.*, prepaid.period_wh_before(p_meter, k.pstart, k.k0, k.k1, k.k2)
	              + coalesce(sum(p.e) OVER (PARTITION BY p.pstart ORDER BY p.s0, p.s1, p.ts
	                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS cb
	      FROM rr_parts p JOIN rr_k k ON k.pstart = p.pstart) c
	JOIN prepaid.tariff_ranges r ON r.version_id = c.vid
	     AND r.lo_wh < c.cb + c.e AND (r.hi_wh IS NULL OR r.hi_wh > c.cb)
	CROSS JOIN LATERAL (SELECT least(coalesce(r.hi_wh, c.cb + c.e), c.cb + c.e)
	                           - greatest(r.lo_wh, c.cb) AS wh) pe;

	-- Post: reversals (dropped intervals, changed ones), then new charges.
	PERFORM prepaid.post_open();
	WITH live AS (
		SELECT l.* FROM prepaid.ledger l JOIN rr_k k ON l.period_start = k.pstart
		WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.reverses IS NULL
		  AND (l.from_ts, l.to_ts, l.to_seq) >= (k.k0, k.k1, k.k2)
		  AND NOT EXISTS (SELECT 1 FROM prepaid.ledger r WHERE r.reverses = l.entry_id)
		  AND NOT EXISTS (SELECT 1 FROM rr_drop d WHERE d.entry_id = l.entry_id)
	), changed AS (
		SELECT DISTINCT fs, ts, pstart FROM (
			(SELECT from_seq AS fs, to_seq AS ts, period_start AS pstart, from_ts, to_ts, day,
			        tariff_version_id, tier, band, price, service_fee, energy_wh, -exact_fen AS x
			 FROM live
			 EXCEPT ALL
			 SELECT fs, ts, pstart, s0, s1, day, vid, tier, band, price, service, e, exact
			 FROM rr_want WHERE NOT fresh)
			UNION ALL
			(SELECT fs, ts, pstart, s0, s1, day, vid, tier, band, price, service, e, exact
			 FROM rr_want WHERE NOT fresh
			 EXCEPT ALL
			 SELECT from_seq, to_seq, period_start, from_ts, to_ts, day, tariff_version_id, tier,
			        band, price, service_fee, energy_wh, -exact_fen
			 FROM live)) z
	), rev AS (
		SELECT l.* FROM prepaid.ledger l WHERE l.entry_id IN (SELECT entry_id FROM rr_drop)
		UNION ALL
		SELECT live.* FROM live JOIN changed c
		     ON c.fs = live.from_seq AND c.ts = live.to_seq AND c.pstart = live.period_start
	)
	INSERT INTO pg_temp.post_rows (ord, meter_id, day, kind, exact_fen, from_seq, to_seq, from_ts,
	    to_ts, energy_wh, tariff_version_id, tier, band, price, service_fee, anomaly_id, reverses,
	    period_start)
	SELECT row_number() OVER (ORDER BY rev.entry_id), p_meter, rev.day, 'charge', rev.exact_fen,
	       rev.from_seq, rev.to_seq, rev.from_ts, rev.to_ts, -rev.energy_wh, rev.tariff_version_id,
	       rev.tier, rev.band, rev.price, rev.service_fee, rev.anomaly_id, rev.entry_id,
	       rev.period_start
	FROM rev
	UNION ALL
	SELECT 1000000 + row_number() OVER (ORDER BY w.s0, w.s1, w.ts, w.tier), p_meter, w.day, 'charge',
	       w.exact, w.fs, w.ts, w.s0, w.s1, w.e, w.vid, w.tier, w.band, w.price, w.service,
	       w.anomaly, NULL, w.pstart
	FROM rr_want w
	WHERE w.fresh OR EXISTS (SELECT 1 FROM changed c WHERE c.fs = w.fs AND c.ts = w.ts AND c.pstart = w.pstart);

	-- Standing days the range's readings reach.
	SELECT min(ts), max(ts) INTO v_f, v_t FROM prepaid.readings
	WHERE meter_id = p_meter AND seq BETWEEN p_lo AND p_hi;
	IF v_f IS NOT NULL THEN
		INSERT INTO pg_temp.post_rows (ord, meter_id, day, kind, exact_fen, tariff_version_id)
		SELECT 1000000000 + row_number() OVER (ORDER BY st.day), p_meter, st.day, 'standing',
		       st.exact_fen, st.version_id
		FROM prepaid.standing_due(ARRAY[p_meter], ARRAY[v_f], ARRAY[v_t]) st;
	END IF;
	v_n := prepaid.post_entries();
	IF v_f IS NOT NULL THEN
		PERFORM prepaid.standing_extend(ARRAY[p_meter], ARRAY[v_f], ARRAY[v_t]);
	END IF;

	-- The period cache of the fast path follows.
	UPDATE prepaid.meters mt SET period_wh = (
		SELECT coalesce(sum(l.energy_wh), 0) FROM prepaid.ledger l
		WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.period_start = mt.period_start)
	WHERE mt.meter_id = p_meter AND mt.period_start IN (SELECT pstart FROM rr_k);
	RETURN v_n;
END $$;

-- The full path of charging, for the meters whose new readings the fast
-- path of prepaid.ingest_batch() did not charge. Readings beyond the
-- meter's latest, all later in time than what was charged: every new
-- interval is classified (register down: noted, never charged; beyond the
-- power limit: held) and the rest rated with the standing days. Anything
-- else (readings older than the first, gap fills, a reading dated before
-- what was charged): prepaid.rerate_meter() over the batch's seq range.
-- Then the meters' rate caches are refreshed.
DROP FUNCTION prepaid.charge_slow(text[], bigint[], timestamptz[], bigint[], bigint[],
    timestamptz[], bigint[], text[], bigint[], timestamptz[], bigint[]);
CREATE FUNCTION prepaid.charge_slow(p_sm text[], p_last bigint[], p_last_ts timestamptz[],
    p_last_wh bigint[], p_late boolean[],
    p_meter text[], p_seq bigint[], p_ts timestamptz[], p_energy bigint[])
RETURNS void LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
	c_meter text[]; c_fs bigint[]; c_ts bigint[]; c_t0 timestamptz[]; c_t1 timestamptz[];
	c_wh bigint[]; u_meter text[]; u_from timestamptz[]; u_ts timestamptz[];
	v_late text[];
	r record;
BEGIN
	CREATE TEMP TABLE IF NOT EXISTS charge_iv (m text, fs bigint, ts bigint, t0 timestamptz,
	    t1 timestamptz, e0 bigint, e1 bigint, wh bigint, limit_wh bigint, jump boolean)
	    ON COMMIT DELETE ROWS;
	CREATE TEMP TABLE IF NOT EXISTS charge_rd (m text, s bigint, t timestamptz, e bigint)
	    ON COMMIT DELETE ROWS;
	TRUNCATE charge_iv, charge_rd;
	-- the batch's readings of these meters that were stored (first copies)
	INSERT INTO charge_rd
	SELECT DISTINCT ON (u.m, u.s) u.m, u.s, u.t, u.e
	FROM unnest(p_meter, p_seq, p_ts, p_energy) AS u(m, s, t, e)
	WHERE u.m = ANY (p_sm)
	  AND EXISTS (SELECT 1 FROM prepaid.readings x WHERE x.meter_id = u.m AND x.seq = u.s);

	WITH sm AS (
		SELECT * FROM unnest(p_sm, p_last, p_last_ts, p_last_wh, p_late) AS k(m, last, lts, lwh, late)
	), pts AS (
		SELECT m, last AS s, lts AS t, lwh AS e FROM sm WHERE last IS NOT NULL AND NOT late
		UNION ALL
		SELECT c.m, c.s, c.t, c.e FROM charge_rd c JOIN sm ON sm.m = c.m
		WHERE NOT sm.late AND (sm.last IS NULL OR c.s > sm.last)
	), iv AS (
		SELECT m, lag(s) OVER w AS fs, s AS ts, lag(t) OVER w AS t0, t AS t1,
		       lag(e) OVER w AS e0, e AS e1
		FROM pts WINDOW w AS (PARTITION BY m ORDER BY s)
	)
	INSERT INTO charge_iv
	SELECT iv.m, fs, ts, t0, t1, e0, e1, e1 - e0,
	       floor(coalesce(mt.max_power_w, s.max_power_w)
	             * greatest(extract(epoch FROM t1 - t0), 60) / 3600)::bigint,
	       prepaid.implausible(e1 - e0, t0, t1, coalesce(mt.max_power_w, s.max_power_w))
	FROM iv JOIN prepaid.meters mt ON mt.meter_id = iv.m
	JOIN prepaid.sites s ON s.site_id = mt.site_id
	WHERE iv.fs IS NOT NULL;

	-- Late: readings before what was charged go the full way.
	SELECT array_agg(DISTINCT z.m) INTO v_late FROM (
		SELECT k.m FROM unnest(p_sm, p_late) AS k(m, late) WHERE k.late
		UNION
		SELECT c.m FROM charge_iv c JOIN prepaid.meters mt ON mt.meter_id = c.m
		WHERE (CASE WHEN c.t1 > c.t0 THEN c.t0 ELSE c.t1 - interval '1 second' END) < mt.rated_ts) z;
	IF v_late IS NOT NULL THEN
		DELETE FROM charge_iv WHERE m = ANY (v_late);
	END IF;

	INSERT INTO prepaid.anomalies (meter_id, kind, from_seq, to_seq, from_ts, to_ts,
	    from_wh, to_wh, energy_wh, limit_wh, state)
	SELECT m, CASE WHEN wh < 0 THEN 'register_down' ELSE 'implausible_jump' END,
	       fs, ts, t0, t1, e0, e1, wh, limit_wh,
	       CASE WHEN wh < 0 THEN 'noted' ELSE 'open' END
	FROM charge_iv WHERE wh < 0 OR jump;

	SELECT array_agg(m), array_agg(fs), array_agg(ts),
	       -- a reading not later than the one before it: its energy is
	       -- placed in the second before it
	       array_agg(CASE WHEN t1 > t0 THEN t0 ELSE t1 - interval '1 second' END),
	       array_agg(t1), array_agg(wh)
	INTO c_meter, c_fs, c_ts, c_t0, c_t1, c_wh
	FROM (SELECT * FROM charge_iv WHERE wh > 0 AND NOT jump ORDER BY m, ts) x;

	SELECT array_agg(k.m), array_agg(k.f), array_agg(k.t) INTO u_meter, u_from, u_ts
	FROM (SELECT c.m, min(c.t) AS f, max(c.t) AS t FROM charge_rd c
	      WHERE v_late IS NULL OR c.m <> ALL (v_late) GROUP BY c.m) k;
	PERFORM prepaid.charge(coalesce(c_meter, '{}'), coalesce(c_fs, '{}'), coalesce(c_ts, '{}'),
	    coalesce(c_t0, '{}'), coalesce(c_t1, '{}'), coalesce(c_wh, '{}'),
	    coalesce(u_meter, '{}'), coalesce(u_from, '{}'), coalesce(u_ts, '{}'));

	FOR r IN
		SELECT k.m,
		       coalesce((SELECT max(x.seq) FROM prepaid.readings x WHERE x.meter_id = k.m AND x.seq < k.lo), k.lo) AS lo,
		       coalesce((SELECT min(x.seq) FROM prepaid.readings x WHERE x.meter_id = k.m AND x.seq > k.hi), k.hi) AS hi
		FROM (SELECT c.m, min(c.s) AS lo, max(c.s) AS hi FROM charge_rd c
		      WHERE c.m = ANY (v_late) GROUP BY c.m) k
		ORDER BY k.m
	LOOP
		PERFORM prepaid.rerate_meter(r.m, r.lo, r.hi);
	END LOOP;

	SELECT array_agg(c.m), array_agg(c.t) INTO u_meter, u_ts
	FROM (SELECT m, max(t) AS t FROM charge_rd GROUP BY m) c;
	PERFORM prepaid.refresh_rate_cache(u_meter, u_ts);
END $$;

-- ------------------------------------------------------------ rate cache

-- The amount (exact yuan, >= 0) of an interval the meter's rate cache
-- covers, or NULL: then it goes the full way. Covered means: inside the
-- cache window (ending strictly before its end, so that a reading at local
-- midnight starts the new day's standing charge), after everything charged,
-- not an anomaly (no negative step, not beyond the power limit, compared
-- exactly), and within the cached tier range of the current period.
CREATE OR REPLACE FUNCTION prepaid.fast_rate(m prepaid.meters, p_t0 timestamptz, p_t1 timestamptz,
    p_wh bigint) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE WHEN m.rate_until IS NOT NULL AND p_t0 >= m.rate_from AND p_t1 > p_t0
	             AND p_t1 < m.rate_until AND p_wh >= 0
	             AND (m.rated_ts IS NULL OR p_t0 >= m.rated_ts)
	             AND NOT prepaid.implausible(p_wh, p_t0, p_t1, m.rate_max_power_w)
	             AND (m.rate_vid IS NULL
	                  OR (m.period_start = m.rate_period AND m.period_wh >= m.rate_lo
	                      AND (m.rate_hi IS NULL OR m.period_wh + p_wh <= m.rate_hi)))
	        THEN CASE WHEN m.rate_vid IS NULL OR m.rate_free THEN 0
	                  ELSE p_wh * (m.rate_price + m.rate_service) / 1000 END
	       END
$$;

-- Recompute the rate cache of meters at their newest reading (see 002); a
-- period that is not the cached one starts from the energy the ledger holds
-- for it (tier state is per period).
CREATE OR REPLACE FUNCTION prepaid.refresh_rate_cache(p_meter text[], p_at timestamptz[]) RETURNS void
LANGUAGE sql AS $$
	UPDATE prepaid.meters mt SET
		period_start = CASE WHEN c.vid IS NOT NULL AND c.pstart IS DISTINCT FROM mt.period_start
		                    THEN c.pstart ELSE mt.period_start END,
		period_wh = CASE WHEN c.vid IS NOT NULL AND c.pstart IS DISTINCT FROM mt.period_start
		                 THEN c.base ELSE mt.period_wh END,
		rate_from = c.at,
		rate_until = c.until,
		rate_vid = c.vid,
		rate_day = c.day,
		rate_period = c.pstart,
		rate_lo = r.lo_wh,
		rate_hi = r.hi_wh,
		rate_tier = r.tier,
		rate_band = c.band,
		rate_free = r.free,
		rate_price = CASE WHEN r.free THEN 0 ELSE coalesce(c.bprice, 0) + r.price END,
		rate_service = c.service,
		rate_max_power_w = coalesce(mt.max_power_w, c.site_maxp)
	FROM (
		SELECT u.m, u.at, (u.at AT TIME ZONE s.time_zone)::date AS day, s.max_power_w AS site_maxp,
		       v.version_id AS vid, v.service_per_kwh AS service,
		       prepaid.period_start(v.period, v.period_start_day, v.period_start_month,
		                            (u.at AT TIME ZONE s.time_zone)::date) AS pstart,
		       b.band, b.price AS bprice,
		       least(((u.at AT TIME ZONE s.time_zone)::date + 1)::timestamp AT TIME ZONE s.time_zone,
		             (SELECT min(x.effective_from) FROM prepaid.meter_tariffs x
		              WHERE x.meter_id = u.m AND x.effective_from > u.at),
		             (SELECT min(y.effective_from) FROM prepaid.tariff_versions y
		              WHERE y.tariff_id = coalesce(a.tariff_id, s.default_tariff_id) AND y.effective_from > u.at),
		             (SELECT min(((u.at AT TIME ZONE s.time_zone)::date + bb.start_time) AT TIME ZONE s.time_zone)
		              FROM prepaid.tariff_bands bb
		              WHERE v.has_bands AND bb.version_id = v.version_id
		                AND bb.day_type = prepaid.day_type(s.calendar, (u.at AT TIME ZONE s.time_zone)::date)
		                AND bb.start_time > (u.at AT TIME ZONE s.time_zone)::time)) AS until,
		       CASE WHEN v.version_id IS NULL THEN 0
		            WHEN mt2.period_start = prepaid.period_start(v.period, v.period_start_day,
		                     v.period_start_month, (u.at AT TIME ZONE s.time_zone)::date)
		            THEN mt2.period_wh
		            ELSE (SELECT coalesce(sum(l.energy_wh), 0) FROM prepaid.ledger l
		                  WHERE l.meter_id = u.m AND l.kind = 'charge'
		                    AND l.period_start = prepaid.period_start(v.period, v.period_start_day,
		                        v.period_start_month, (u.at AT TIME ZONE s.time_zone)::date)) END AS base
		FROM (SELECT x.m, greatest(x.at, y.last_ts) AS at
		      FROM unnest(p_meter, p_at) AS x(m, at) JOIN prepaid.meters y ON y.meter_id = x.m) u
		JOIN prepaid.meters mt2 ON mt2.meter_id = u.m
		JOIN prepaid.sites s ON s.site_id = mt2.site_id
		LEFT JOIN LATERAL (SELECT x.tariff_id FROM prepaid.meter_tariffs x
		                   WHERE x.meter_id = u.m AND x.effective_from <= u.at
		                   ORDER BY x.effective_from DESC LIMIT 1) a ON true
		LEFT JOIN LATERAL (SELECT y.* FROM prepaid.tariff_versions y
		                   WHERE y.tariff_id = coalesce(a.tariff_id, s.default_tariff_id)
		                     AND y.effective_from <= u.at
		                   ORDER BY y.effective_from DESC LIMIT 1) v ON true
		LEFT JOIN LATERAL (SELECT bb.band, bb.price FROM prepaid.tariff_bands bb
		                   WHERE v.has_bands AND bb.version_id = v.version_id
		                     AND bb.day_type = prepaid.day_type(s.calendar, (u.at AT TIME ZONE s.time_zone)::date)
		                     AND bb.start_time <= (u.at AT TIME ZONE s.time_zone)::time
		                   ORDER BY bb.start_time DESC LIMIT 1) b ON true
	) c
	LEFT JOIN prepaid.tariff_ranges r ON r.version_id = c.vid AND r.lo_wh <= c.base
	     AND (r.hi_wh IS NULL OR r.hi_wh > c.base)
	WHERE mt.meter_id = c.m
$$;


-- prepaid.ingest_batch() of 002 with the money of 007: a reading whose seq is
-- more than 1,000,000 from the meter's (seq_out_of_range) is held, not
-- stored; the fast path writes whole fen by the carry; meters with gap
-- fills go the full way.
CREATE OR REPLACE FUNCTION prepaid.ingest_batch(
    p_meter text[], p_seq bigint[], p_ts timestamptz[], p_energy bigint[],
    p_relay text[], p_power double precision[], p_voltage double precision[],
    p_current double precision[], p_received timestamptz[],
    p_events jsonb, p_acks jsonb, p_rejects jsonb,
    p_auto_register boolean, p_resend_on_gap boolean, p_rejects_keep integer,
    p_topic_prefix text,
    OUT inserted integer, OUT duplicates integer, OUT gaps integer,
    OUT unknown integer, OUT filled integer, OUT events integer,
    OUT acks integer, OUT rejects integer)
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
	v_ids text[];
	v_known text[];
	v_last bigint[];
	v_last_ts timestamptz[];
	v_last_wh bigint[];
	v_first bigint[];
	v_first_ts timestamptz[];
	v_first_wh bigint[];
	v_n integer;
	s_meter text[]; s_last bigint[]; s_last_ts timestamptz[]; s_last_wh bigint[];
	s_late boolean[];
BEGIN
	inserted := 0; duplicates := 0; gaps := 0; unknown := 0; filled := 0;
	events := 0; acks := 0; rejects := 0;

	-- Every meter this batch touches, in id order.
	SELECT array_agg(DISTINCT m ORDER BY m) INTO v_ids FROM (
		SELECT unnest(p_meter) COLLATE "C" AS m
		UNION ALL SELECT e->>'meter' FROM jsonb_array_elements(p_events) e
		UNION ALL SELECT a->>'meter' FROM jsonb_array_elements(p_acks) a) x
	WHERE m IS NOT NULL;

	-- Register new meters first, in id order, before locking any: a batch
	-- that waits here (another daemon registering the same meter) holds no
	-- meter lock, so two batches cannot deadlock.
	IF p_auto_register AND v_ids IS NOT NULL THEN
		INSERT INTO prepaid.meters (meter_id, auto_registered)
		SELECT m, true FROM unnest(v_ids) m
		WHERE NOT EXISTS (SELECT 1 FROM prepaid.meters x WHERE x.meter_id = m)
		ON CONFLICT (meter_id) DO NOTHING;
	END IF;

	-- Lock them, reading their state in the same pass. Batches of several
	-- daemons that touch the same meters are serialised here, in meter order
	-- so that two batches cannot deadlock; NO KEY UPDATE leaves operators free
	-- to insert commands referencing the meters meanwhile.
	SELECT array_agg(meter_id ORDER BY meter_id), array_agg(last_seq ORDER BY meter_id),
	       array_agg(last_ts ORDER BY meter_id), array_agg(last_energy_wh ORDER BY meter_id),
	       array_agg(first_seq ORDER BY meter_id), array_agg(first_ts ORDER BY meter_id),
	       array_agg(first_wh ORDER BY meter_id)
	INTO v_known, v_last, v_last_ts, v_last_wh, v_first, v_first_ts, v_first_wh
	FROM (SELECT meter_id, last_seq, last_ts, last_energy_wh, first_seq, first_ts, first_wh
	      FROM prepaid.meters
	      WHERE meter_id = ANY (v_ids) ORDER BY meter_id FOR NO KEY UPDATE) x;

	-- The readings. The statement is written so that its plan does not depend
	-- on row estimates (PL/pgSQL keeps a generic plan after a few calls):
	-- one pass classifies each reading, one aggregate per meter feeds the
	-- meter update, with no join between derived sets.
	IF coalesce(cardinality(p_meter), 0) > 0 THEN
		WITH cls0 AS (
			SELECT u.*, k.last AS old_last, k.lts AS old_ts, k.lwh AS old_wh,
			       k.first AS old_first, k.fts AS old_first_ts, k.fwh AS old_first_wh,
			       k.m IS NOT NULL AS known,
			       row_number() OVER (PARTITION BY u.m, u.s ORDER BY u.rcv) AS rn
			FROM unnest(p_meter, p_seq, p_ts, p_energy, p_relay, p_power,
			            p_voltage, p_current, p_received)
			     AS u(m, s, t, e, r, pw, v, c, rcv)
			LEFT JOIN unnest(v_known, v_last, v_last_ts, v_last_wh, v_first, v_first_ts, v_first_wh)
			     AS k(m, last, lts, lwh, first, fts, fwh) ON k.m = u.m
		), side AS (
			-- which side of the meter's stored range a first copy lies on
			SELECT cls0.*,
			       CASE WHEN NOT known OR rn > 1 THEN 'x'
			            WHEN old_last IS NULL OR s > old_last THEN 'a'
			            WHEN s < old_first THEN 'b' ELSE 'f' END AS sd
			FROM cls0
		), jumps AS (
			-- a step of more than 1,000,000 from the meter's highest seq (or
			-- the batch's reading below it), or down from its lowest
			SELECT side.*,
			       CASE sd WHEN 'a' THEN s - coalesce(lag(s) OVER wa, old_last, s) > 1000000
			               WHEN 'b' THEN coalesce(lag(s) OVER wb, old_first) - s > 1000000
			               ELSE false END AS jump
			FROM side
			WINDOW wa AS (PARTITION BY m, sd ORDER BY s), wb AS (PARTITION BY m, sd ORDER BY s DESC)
		), cls1 AS (
			-- held: beyond such a step (seq_out_of_range), never stored
			SELECT jumps.*,
			       CASE sd WHEN 'a' THEN bool_or(jump) OVER (PARTITION BY m, sd ORDER BY s)
			               WHEN 'b' THEN bool_or(jump) OVER (PARTITION BY m, sd ORDER BY s DESC)
			               ELSE false END AS held
			FROM jumps
		), cls1b AS (
			SELECT cls1.*,
			       -- 1 for the meter's reading with the highest seq (its first copy)
			       row_number() OVER (PARTITION BY m ORDER BY held, s DESC, rcv) AS top,
			       -- 1 for the one with the lowest seq
			       row_number() OVER (PARTITION BY m ORDER BY held, s, rcv) AS bot
			FROM cls1
		), cls AS (
			-- fresh: first copy in the batch, of a known meter, not held, and either
			-- beyond the meter's last seq, before its first, or inside one
			-- of its open gaps.
			SELECT cls1b.*,
			       known AND rn = 1 AND NOT held AND (old_last IS NULL OR s > old_last OR s < old_first
			           OR NOT EXISTS (SELECT 1 FROM prepaid.readings x
			                          WHERE x.meter_id = cls1b.m AND x.seq = cls1b.s)) AS fresh,
			       old_last IS NULL OR s > old_last AS ahead,
			       coalesce(s < old_first, false) AS behind
			FROM cls1b
		), ins AS (
			INSERT INTO prepaid.readings (meter_id, seq, ts, energy_wh, relay,
			    power_w, voltage_v, current_a, received_at, ingested_at)
			SELECT m, s, t, e, r, pw, v, c, rcv, clock_timestamp() FROM cls WHERE fresh
			RETURNING 1
		), hold AS (
			INSERT INTO prepaid.anomalies (meter_id, kind, from_seq, to_seq, from_ts, to_ts,
			    from_wh, to_wh, energy_wh, state)
			SELECT m, 'seq_out_of_range', s, s, t, t, e, e, 0, 'open' FROM cls
			WHERE held AND NOT EXISTS (SELECT 1 FROM prepaid.anomalies a
			                           WHERE a.meter_id = cls.m AND a.kind = 'seq_out_of_range'
			                             AND a.to_seq = cls.s AND a.state = 'open')
			RETURNING 1
		), newgaps AS (
			SELECT m, prev + 1 AS gf, s - 1 AS gt FROM (
				SELECT m, s, coalesce(lag(s) OVER (PARTITION BY m ORDER BY s), old_last) AS prev
				FROM cls WHERE fresh AND ahead) x
			WHERE prev IS NOT NULL AND s - prev > 1
		), resend AS (
			SELECT m, min(gf) AS from_seq, gen_random_uuid()::text AS cmd
			FROM newgaps WHERE p_resend_on_gap GROUP BY m
		), rins AS (
			-- Sent after a short delay: with several daemons sharing the
			-- readings, the "missing" one is often just being written by
			-- another; a gap filled meanwhile cancels its resend.
			INSERT INTO prepaid.commands (id, meter_id, action, from_seq, reason, valid_until,
			    next_attempt_at)
			SELECT cmd, m, 'resend', from_seq, 'sequence gap', now() + interval '5 minutes',
			       now() + interval '2 seconds'
			FROM resend
			RETURNING 1
		), gins AS (
			INSERT INTO prepaid.gaps (meter_id, from_seq, to_seq, resend_command_id)
			SELECT g.m, g.gf, g.gt, (SELECT r.cmd FROM resend r WHERE r.m = g.m)
			FROM newgaps g
			RETURNING 1
		), agg AS (
			SELECT m, count(*) AS nall, count(*) FILTER (WHERE fresh) AS nfresh,
			       count(*) FILTER (WHERE fresh AND ahead) AS nahead,
			       -- the newest reading: the top one, if it is new (if the top one
			       -- is not new, no reading of the batch is beyond the meter's last)
			       max(s) FILTER (WHERE top = 1 AND fresh AND ahead) AS ls,
			       max(t) FILTER (WHERE top = 1 AND fresh AND ahead) AS lt,
			       max(e) FILTER (WHERE top = 1 AND fresh AND ahead) AS le,
			       max(r) FILTER (WHERE top = 1 AND fresh AND ahead) AS lr,
			       count(*) FILTER (WHERE fresh AND behind) AS nbehind,
			       count(*) FILTER (WHERE fresh AND NOT ahead AND NOT behind) AS nfill,
			       -- the new first reading, if this batch brings one
			       max(s) FILTER (WHERE bot = 1 AND fresh AND (old_first IS NULL OR behind)) AS fs_,
			       max(t) FILTER (WHERE bot = 1 AND fresh AND (old_first IS NULL OR behind)) AS ft,
			       max(e) FILTER (WHERE bot = 1 AND fresh AND (old_first IS NULL OR behind)) AS fe,
			       max(old_last) AS old_last, max(old_ts) AS old_ts, max(old_wh) AS old_wh,
			       max(old_first) AS old_first, max(old_first_ts) AS old_first_ts,
			       max(old_first_wh) AS old_first_wh
			FROM cls WHERE known GROUP BY m
		), fast AS (
			-- The fast path of charging: one new interval that the meter's
			-- rate cache covers (see prepaid.fast_rate); amt is NULL otherwise,
			-- and the meter goes to prepaid.charge_slow() below.
			SELECT a.*, a.le - a.old_wh AS wh,
			       mt.rate_vid, mt.rate_tier, mt.rate_band, mt.rate_price, mt.rate_service,
			       mt.rate_day, mt.rate_period, mt.exact_fen AS x0,
			       CASE WHEN a.nahead = 1 AND a.nbehind = 0 AND a.nfill = 0 AND a.old_last IS NOT NULL
			            THEN prepaid.fast_rate(mt, a.old_ts, a.lt, a.le - a.old_wh) * 100 END AS amt
			FROM agg a JOIN prepaid.meters mt ON mt.meter_id = a.m
		), fled AS (
			-- (amt: the exact fen; the entry takes floor(X + amt) - floor(X))
			INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, exact_fen, from_seq,
			    to_seq, from_ts, to_ts, energy_wh, tariff_version_id, tier, band, price,
			    service_fee, period_start, author)
			SELECT m, rate_day, 'charge', -(floor(x0 + amt) - floor(x0))::bigint, -amt, old_last,
			       ls, old_ts, lt, wh, rate_vid, rate_tier, rate_band, rate_price,
			       CASE WHEN amt = 0 THEN 0 ELSE rate_service END, rate_period, 'prepaidd'
			FROM fast WHERE amt IS NOT NULL AND rate_vid IS NOT NULL AND wh > 0
			RETURNING 1
		), upd AS (
			UPDATE prepaid.meters mt SET
				last_seq = coalesce(a.ls, mt.last_seq),
				last_ts = coalesce(a.lt, mt.last_ts),
				last_energy_wh = coalesce(a.le, mt.last_energy_wh),
				relay = CASE WHEN a.lr IS NOT NULL AND (mt.relay_at IS NULL OR a.lt >= mt.relay_at)
				             THEN a.lr ELSE mt.relay END,
				relay_at = CASE WHEN a.lr IS NOT NULL AND (mt.relay_at IS NULL OR a.lt >= mt.relay_at)
				                THEN a.lt ELSE mt.relay_at END,
				relay_source = CASE WHEN a.lr IS NOT NULL AND (mt.relay_at IS NULL OR a.lt >= mt.relay_at)
				                    THEN 'reading' ELSE mt.relay_source END,
				last_seen = now(),
				readings = mt.readings + a.nfresh,
				duplicates = mt.duplicates + a.nall - a.nfresh,
				first_seq = coalesce(a.fs_, mt.first_seq),
				first_ts = CASE WHEN a.fs_ IS NOT NULL THEN a.ft ELSE mt.first_ts END,
				first_wh = CASE WHEN a.fs_ IS NOT NULL THEN a.fe ELSE mt.first_wh END,
				exact_fen = mt.exact_fen + CASE WHEN a.rate_vid IS NOT NULL AND a.wh > 0
				                                THEN coalesce(a.amt, 0) ELSE 0 END,
				balance_fen = mt.balance_fen - CASE WHEN a.amt IS NOT NULL AND a.rate_vid IS NOT NULL
				        AND a.wh > 0 THEN (floor(a.x0 + a.amt) - floor(a.x0))::bigint ELSE 0 END,
				balance = (mt.balance_fen - CASE WHEN a.amt IS NOT NULL AND a.rate_vid IS NOT NULL
				        AND a.wh > 0 THEN (floor(a.x0 + a.amt) - floor(a.x0))::bigint ELSE 0 END) / 100.0,
				rated_ts = CASE WHEN a.amt IS NOT NULL AND a.rate_vid IS NOT NULL AND a.wh > 0
				                THEN a.lt ELSE mt.rated_ts END,
				period_wh = mt.period_wh + CASE WHEN a.amt IS NOT NULL AND a.rate_vid IS NOT NULL
				                                THEN a.wh ELSE 0 END
			FROM fast a
			WHERE mt.meter_id = a.m
			RETURNING 1
		), unk AS (
			INSERT INTO prepaid.rejects (received_at, meter_id, topic, reason, payload)
			SELECT rcv, m, p_topic_prefix || '/' || m || '/reading',
			       'unknown meter (auto_register is off)',
			       convert_to(json_build_object('seq', s, 'ts', t, 'energy_wh', e)::text, 'UTF8')
			FROM cls WHERE NOT known
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM gins),
		       (SELECT count(*) FROM unk),
		       (SELECT count(*) FROM cls WHERE fresh AND NOT ahead AND NOT behind),
		       (SELECT count(*) FROM hold),
		       sl.m, sl.s, sl.t, sl.e, sl.late
		INTO inserted, gaps, unknown, filled, v_n, s_meter, s_last, s_last_ts, s_last_wh, s_late
		FROM (SELECT array_agg(m) AS m, array_agg(old_last) AS s, array_agg(old_ts) AS t,
		             array_agg(old_wh) AS e, array_agg(nbehind > 0 OR nfill > 0) AS late
		      FROM fast WHERE (amt IS NULL AND nahead > 0) OR nbehind > 0 OR nfill > 0) sl;
		duplicates := cardinality(p_meter) - inserted - unknown - v_n;
	END IF;

	-- Meters whose new readings the fast path above did not charge.
	IF s_meter IS NOT NULL THEN
		PERFORM prepaid.charge_slow(s_meter, s_last, s_last_ts, s_last_wh, s_late,
		    p_meter, p_seq, p_ts, p_energy);
	END IF;

	-- Readings that arrived into open gaps (a resend): shrink or split them.
	IF filled > 0 THEN
		WITH g AS (
			SELECT id, meter_id, from_seq, to_seq, detected_at, resend_command_id
			FROM prepaid.gaps
			WHERE filled_at IS NULL AND meter_id = ANY (v_ids)
		), f AS (
			SELECT DISTINCT g.id, r.seq FROM g
			JOIN prepaid.readings r ON r.meter_id = g.meter_id
			     AND r.seq BETWEEN g.from_seq AND g.to_seq
		), b AS (
			SELECT f.id, g.meter_id, g.from_seq, g.to_seq, f.seq,
			       lag(f.seq) OVER w AS prev, lead(f.seq) OVER w AS next
			FROM f JOIN g ON g.id = f.id
			WINDOW w AS (PARTITION BY f.id ORDER BY f.seq)
		), runs AS (
			SELECT id, from_seq AS rf, seq - 1 AS rt FROM b WHERE prev IS NULL AND seq > from_seq
			UNION ALL
			SELECT id, seq + 1, next - 1 FROM b WHERE next IS NOT NULL AND next - seq > 1
			UNION ALL
			SELECT id, seq + 1, to_seq FROM b WHERE next IS NULL AND seq < to_seq
		), ranked AS (
			SELECT runs.*, row_number() OVER (PARTITION BY id ORDER BY rf) AS rn FROM runs
		), touched AS (
			SELECT DISTINCT id FROM f
		), shrink AS (
			UPDATE prepaid.gaps x SET from_seq = r.rf, to_seq = r.rt
			FROM ranked r WHERE x.id = r.id AND r.rn = 1
			RETURNING 1
		), done AS (
			UPDATE prepaid.gaps x SET filled_at = now()
			FROM touched t
			WHERE x.id = t.id AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = t.id)
			RETURNING x.id, x.resend_command_id
		), unsend AS (
			-- a resend whose gaps are all filled now is not needed any more
			UPDATE prepaid.commands c SET state = 'cancelled',
			    detail = 'the gap was filled before the resend was sent'
			FROM (SELECT DISTINCT resend_command_id AS id FROM done) d
			WHERE c.id = d.id AND c.state = 'queued'
			  AND NOT EXISTS (SELECT 1 FROM prepaid.gaps g
			                  WHERE g.resend_command_id = d.id AND g.filled_at IS NULL
			                    AND g.id NOT IN (SELECT id FROM done))
			RETURNING 1
		), split AS (
			INSERT INTO prepaid.gaps (meter_id, from_seq, to_seq, detected_at, resend_command_id)
			SELECT g.meter_id, r.rf, r.rt, g.detected_at, g.resend_command_id
			FROM ranked r JOIN g ON g.id = r.id WHERE r.rn > 1
			RETURNING 1
		)
		-- (Data-modifying CTEs run to completion whether read or not.)
		SELECT count(*) INTO v_n FROM touched;
	END IF;

	-- Meter events; a relay event updates the meter's relay state.
	IF jsonb_array_length(p_events) > 0 THEN
		WITH ev AS (
			SELECT e->>'meter' AS m, (e->>'ts')::timestamptz AS t, e->>'type' AS ty,
			       e->>'relay' AS r, nullif(e->>'cause', '') AS c,
			       (e->>'received_at')::timestamptz AS rcv, e->>'payload' AS raw,
			       EXISTS (SELECT 1 FROM prepaid.meters x WHERE x.meter_id = e->>'meter') AS known
			FROM jsonb_array_elements(p_events) e
		), ins AS (
			INSERT INTO prepaid.events (meter_id, ts, type, relay, cause, received_at)
			SELECT m, t, ty, r, c, rcv FROM ev WHERE known
			RETURNING 1
		), lat AS (
			SELECT DISTINCT ON (m) m, t, r FROM ev
			WHERE known AND r IS NOT NULL ORDER BY m, t DESC
		), upd AS (
			UPDATE prepaid.meters mt SET relay = lat.r, relay_at = lat.t,
			    relay_source = 'event', last_seen = now()
			FROM lat WHERE mt.meter_id = lat.m AND (mt.relay_at IS NULL OR lat.t >= mt.relay_at)
			RETURNING 1
		), unk AS (
			INSERT INTO prepaid.rejects (received_at, meter_id, topic, reason, payload)
			SELECT rcv, m, p_topic_prefix || '/' || m || '/event',
			       'unknown meter (auto_register is off)', decode(raw, 'hex')
			FROM ev WHERE NOT known
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM unk)
		INTO events, v_n;
		unknown := unknown + v_n;
	END IF;

	-- Acknowledgements, matched to commands by id (and meter).
	IF jsonb_array_length(p_acks) > 0 THEN
		WITH a AS (
			SELECT DISTINCT ON (x->>'id') x->>'meter' AS m, x->>'id' AS id,
			       x->>'result' AS res, x->>'relay' AS r, x->>'detail' AS d,
			       (x->>'received_at')::timestamptz AS rcv, x->>'payload' AS raw
			FROM jsonb_array_elements(p_acks) x
			ORDER BY x->>'id', (x->>'received_at')::timestamptz
		), mt AS (
			SELECT a.*, c.id IS NOT NULL AS matched FROM a
			LEFT JOIN prepaid.commands c ON c.id = a.id AND c.meter_id = a.m
		), upd AS (
			UPDATE prepaid.commands c SET
				state = CASE a.res WHEN 'ok' THEN 'acked' WHEN 'rejected' THEN 'rejected'
				                   WHEN 'unsupported' THEN 'unsupported' ELSE 'expired' END,
				acked_at = a.rcv, result = a.res, relay_after = a.r, detail = a.d
			FROM a
			WHERE c.id = a.id AND c.meter_id = a.m AND c.state IN ('queued', 'sent', 'expired')
			RETURNING 1
		), lat AS (
			SELECT DISTINCT ON (m) m, r, rcv FROM mt
			WHERE matched AND r IS NOT NULL ORDER BY m, rcv DESC
		), rel AS (
			UPDATE prepaid.meters x SET relay = lat.r, relay_at = lat.rcv,
			    relay_source = 'ack', last_seen = now()
			FROM lat WHERE x.meter_id = lat.m AND (x.relay_at IS NULL OR lat.rcv >= x.relay_at)
			RETURNING 1
		), rej AS (
			INSERT INTO prepaid.rejects (received_at, meter_id, topic, reason, payload)
			SELECT rcv, m, p_topic_prefix || '/' || m || '/ack',
			       'acknowledgement for an unknown command', decode(raw, 'hex')
			FROM mt WHERE NOT matched
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM rej)
		INTO acks, v_n;
		rejects := rejects + v_n;
	END IF;

	-- Input the daemon refused (malformed, bad meter id, oversize...).
	IF jsonb_array_length(p_rejects) > 0 THEN
		INSERT INTO prepaid.rejects (received_at, meter_id, topic, reason, payload)
		SELECT (x->>'received_at')::timestamptz, x->>'meter', x->>'topic', x->>'reason',
		       decode(x->>'payload', 'hex')
		FROM jsonb_array_elements(p_rejects) x;
		GET DIAGNOSTICS v_n = ROW_COUNT;
		rejects := rejects + v_n;
	END IF;

	IF rejects + unknown > 0 THEN
		DELETE FROM prepaid.rejects
		WHERE id <= (SELECT max(id) FROM prepaid.rejects) - p_rejects_keep;
	END IF;
END $$;


-- ------------------------------------------------------- operator money

-- Credit a payment (yuan, at most 2 decimals). Idempotent on (meter,
-- reference): the same amount again returns the first entry; another amount
-- is refused, naming the first entry.
CREATE OR REPLACE FUNCTION prepaid.credit(p_meter text, p_amount numeric, p_reference text) RETURNS bigint
LANGUAGE plpgsql AS $$
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
	PERFORM prepaid.lock_meter(p_meter);
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
	VALUES (p_meter, prepaid.local_day(p_meter, now()), 'payment', v_fen, p_reference)
	RETURNING entry_id INTO v_id;
	UPDATE prepaid.meters SET balance_fen = balance_fen + v_fen, balance = (balance_fen + v_fen) / 100.0
	WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('credit', p_meter, jsonb_build_object('amount', p_amount, 'reference', p_reference,
	    'entry_id', v_id));
	RETURN v_id;
END $$;

CREATE OR REPLACE FUNCTION prepaid.adjust(p_meter text, p_amount numeric, p_reason text) RETURNS bigint
LANGUAGE plpgsql AS $$
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
	PERFORM prepaid.lock_meter(p_meter);
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, reason)
	VALUES (p_meter, prepaid.local_day(p_meter, now()), 'adjustment', v_fen, p_reason)
	RETURNING entry_id INTO v_id;
	UPDATE prepaid.meters SET balance_fen = balance_fen + v_fen, balance = (balance_fen + v_fen) / 100.0
	WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('adjust', p_meter, jsonb_build_object('amount', p_amount, 'reason', p_reason,
	    'entry_id', v_id));
	RETURN v_id;
END $$;

-- Accept a held anomaly. A jump is rated in its own period at its place in
-- time (later parts of the period whose tiers move are corrected); a seq
-- out of range is stored as a reading and charged like a late one.
CREATE OR REPLACE FUNCTION prepaid.accept_anomaly(p_id bigint, p_note text) RETURNS integer
LANGUAGE plpgsql AS $$
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
	PERFORM prepaid.lock_meter(a.meter_id);
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
	v_n := prepaid.rerate_meter(a.meter_id, v_lo, v_hi);
	SELECT last_ts INTO v_last FROM prepaid.meters WHERE meter_id = a.meter_id;
	PERFORM prepaid.refresh_rate_cache(ARRAY[a.meter_id], ARRAY[v_last]);
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('accept_anomaly', a.meter_id, jsonb_build_object('anomaly', p_id, 'note', p_note,
	    'kind', a.kind, 'energy_wh', a.energy_wh, 'entries', v_n));
	RETURN v_n;
END $$;

-- Every meter whose balance is not the sum of its ledger, or whose charged
-- fen are not the floor of its exact charges. Always empty.
DROP FUNCTION prepaid.verify_ledger();
CREATE FUNCTION prepaid.verify_ledger()
RETURNS TABLE (meter_id text, balance numeric, ledger_sum numeric, exact_charges_fen numeric,
    charged_fen bigint)
LANGUAGE sql STABLE AS $$
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

-- ------------------------------------------------------------------ views

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

-- A bill for a meter over local days [p_from, p_to]: the opening balance,
-- per day the energy and charges by tier and band, standing charges,
-- payments, adjustments and corrections, and the closing balance. Every
-- line is a sum of whole-fen entries: the lines add up exactly.
CREATE OR REPLACE FUNCTION prepaid.statement(p_meter text, p_from date, p_to date)
RETURNS TABLE (line_no bigint, day date, kind text, detail text, energy_kwh numeric,
    amount numeric, balance numeric)
LANGUAGE sql STABLE AS $$
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

-- ------------------------------------------------------------- payments

CREATE OR REPLACE FUNCTION prepaid.payment_credit(p_payment bigint, p_meter text, p_state text,
    p_notify boolean, OUT entry_id bigint, OUT command_id text)
LANGUAGE plpgsql AS $$
DECLARE
	pay prepaid.payments;
	v_ch text;
	v_day date;
BEGIN
	SELECT * INTO pay FROM prepaid.payments WHERE payment_id = p_payment;
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
				    jsonb_build_object('amount', (pay.amount_fen / 100.0)::numeric(20,2)::text));
			EXCEPTION WHEN no_data_found THEN
				NULL;
			END;
		END LOOP;
	END IF;
END $$;
