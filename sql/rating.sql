-- rating.sql: sites, the holiday calendar and tariffs (effective-dated
-- versions, ranges, bands, assignments), and the set-based rating engine
-- that prices reading intervals inside the ingest transaction (with its
-- per-meter rate cache).
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

COMMENT ON TABLE prepaid.sites IS
	'Sites: time zone, holiday calendar, power limit, default tariff, quiet hours, payment link and arrears policy.';
COMMENT ON TABLE prepaid.holidays IS
	'Rest days and make-up working days per calendar, for time-of-use tariffs and trip guards.';
COMMENT ON TABLE prepaid.tariffs IS
	'Tariffs by id; their prices are in the versions.';
COMMENT ON TABLE prepaid.tariff_versions IS
	'Immutable, effective-dated versions of a tariff with their JSON definition.';
COMMENT ON TABLE prepaid.tariff_ranges IS
	'Energy ranges of a tariff version''s billing period (free quota, tiers) with their kWh price.';
COMMENT ON TABLE prepaid.tariff_bands IS
	'Time-of-use bands of a tariff version by day type, with their kWh price.';
COMMENT ON TABLE prepaid.meter_tariffs IS
	'Which tariff applies to a meter from when: the history of assignments.';


-- A time zone is valid if PostgreSQL can convert with it.
CREATE OR REPLACE FUNCTION prepaid_internal.sites_check_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM now() AT TIME ZONE NEW.time_zone;
	RETURN NEW;
EXCEPTION WHEN invalid_parameter_value THEN
	RAISE EXCEPTION 'site %: unknown time zone "%"', NEW.site_id, NEW.time_zone
		USING ERRCODE = 'invalid_parameter_value';
END $$;

DROP TRIGGER IF EXISTS sites_check ON prepaid.sites;
CREATE TRIGGER sites_check BEFORE INSERT OR UPDATE OF time_zone ON prepaid.sites
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.sites_check_trigger();

-- 'rest' or 'work' for a local date of a calendar.
CREATE OR REPLACE FUNCTION prepaid.day_type(p_calendar text, p_day date) RETURNS text
LANGUAGE sql STABLE AS $$
	SELECT coalesce(
	    (SELECT CASE h.kind WHEN 'holiday' THEN 'rest' ELSE 'work' END
	     FROM prepaid.holidays h WHERE h.calendar = p_calendar AND h.day = p_day),
	    CASE WHEN extract(isodow FROM p_day) >= 6 THEN 'rest' ELSE 'work' END)
$$;
COMMENT ON FUNCTION prepaid.day_type(text,date) IS
	'Whether a day is a work or a rest day in a holiday calendar.';

CREATE OR REPLACE FUNCTION prepaid_internal.tariff_immutable_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION '% is immutable: create a new tariff version instead', TG_TABLE_NAME
		USING ERRCODE = 'object_not_in_prerequisite_state';
END $$;

DROP TRIGGER IF EXISTS tariff_versions_immutable ON prepaid.tariff_versions;
CREATE TRIGGER tariff_versions_immutable BEFORE UPDATE OR DELETE ON prepaid.tariff_versions
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.tariff_immutable_trigger();

DROP TRIGGER IF EXISTS tariff_ranges_immutable ON prepaid.tariff_ranges;
CREATE TRIGGER tariff_ranges_immutable BEFORE UPDATE OR DELETE ON prepaid.tariff_ranges
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.tariff_immutable_trigger();

DROP TRIGGER IF EXISTS tariff_bands_immutable ON prepaid.tariff_bands;
CREATE TRIGGER tariff_bands_immutable BEFORE UPDATE OR DELETE ON prepaid.tariff_bands
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.tariff_immutable_trigger();

-- The first day of the billing period that contains a local date.
CREATE OR REPLACE FUNCTION prepaid_internal.period_start(p_period text, p_start_day integer,
    p_start_month integer, p_day date) RETURNS date
LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE
	  WHEN p_period = 'year' THEN
	    CASE WHEN p_day >= make_date(extract(year FROM p_day)::int, p_start_month, p_start_day)
	         THEN make_date(extract(year FROM p_day)::int, p_start_month, p_start_day)
	         ELSE make_date(extract(year FROM p_day)::int - 1, p_start_month, p_start_day) END
	  ELSE
	    CASE WHEN extract(day FROM p_day) >= p_start_day
	         THEN make_date(extract(year FROM p_day)::int, extract(month FROM p_day)::int, p_start_day)
	         ELSE (make_date(extract(year FROM p_day)::int, extract(month FROM p_day)::int, p_start_day)
	               - interval '1 month')::date END
	END
$$;

CREATE OR REPLACE FUNCTION prepaid.create_tariff(p_tariff text, p_name text) RETURNS void
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	INSERT INTO prepaid.tariffs (tariff_id, name) VALUES (p_tariff, p_name);
$$;
COMMENT ON FUNCTION prepaid.create_tariff(text,text) IS
	'Create a tariff (its prices come with its versions).';

-- Read a price: a JSON number or numeric string, >= 0, at most 4 decimals.
CREATE OR REPLACE FUNCTION prepaid_internal.tariff_price(p_value jsonb, p_key text) RETURNS numeric
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	v numeric;
BEGIN
	IF p_value IS NULL OR jsonb_typeof(p_value) NOT IN ('number', 'string') THEN
		RAISE EXCEPTION 'tariff: "%" must be a number', p_key USING ERRCODE = 'invalid_parameter_value';
	END IF;
	v := (p_value #>> '{}')::numeric;
	IF v < 0 OR v <> round(v, 4) THEN
		RAISE EXCEPTION 'tariff: "%" must be >= 0 with at most 4 decimals (got %)', p_key, v
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN v;
EXCEPTION WHEN invalid_text_representation THEN
	RAISE EXCEPTION 'tariff: "%" is not a number', p_key USING ERRCODE = 'invalid_parameter_value';
END $$;

-- Read kWh as integer Wh (at most 3 decimals of kWh).
CREATE OR REPLACE FUNCTION prepaid_internal.tariff_wh(p_value jsonb, p_key text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	v numeric;
BEGIN
	IF p_value IS NULL OR jsonb_typeof(p_value) <> 'number' THEN
		RAISE EXCEPTION 'tariff: "%" must be a number of kWh', p_key USING ERRCODE = 'invalid_parameter_value';
	END IF;
	v := (p_value #>> '{}')::numeric * 1000;
	IF v < 0 OR v <> trunc(v) THEN
		RAISE EXCEPTION 'tariff: "%" must be >= 0 kWh with at most 3 decimals', p_key
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN v::bigint;
END $$;

-- Create a tariff version from its definition (see prepaidd-sql(7)).
CREATE OR REPLACE FUNCTION prepaid.create_tariff_version(p_tariff text, p_effective_from timestamptz,
    p_def jsonb) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_id bigint;
	v_key text;
	v_free bigint := 0;
	v_tiers jsonb := p_def->'tiers';
	v_bands jsonb := p_def->'bands';
	v_has_bands boolean := p_def ? 'bands';
	v_prev bigint := -1;
	v_from bigint;
	v_t jsonb;
	v_i integer := 0;
	v_dt text;
	v_list jsonb;
	v_start time;
	v_prev_start time;
	v_period text := coalesce(p_def->>'period', 'month');
BEGIN
	IF jsonb_typeof(p_def) IS DISTINCT FROM 'object' THEN
		RAISE EXCEPTION 'tariff: the definition must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	FOR v_key IN SELECT jsonb_object_keys(p_def) LOOP
		IF v_key NOT IN ('price', 'tiers', 'period', 'period_start_day', 'period_start_month',
		    'free_kwh', 'bands', 'standing_per_day', 'service_per_kwh', 'note') THEN
			RAISE EXCEPTION 'tariff: unknown key "%"', v_key USING ERRCODE = 'invalid_parameter_value',
				HINT = 'price, tiers, period, period_start_day, period_start_month, free_kwh, bands, standing_per_day, service_per_kwh, note';
		END IF;
	END LOOP;
	IF NOT EXISTS (SELECT 1 FROM prepaid.tariffs WHERE tariff_id = p_tariff) THEN
		RAISE EXCEPTION 'tariff "%" does not exist (prepaid.create_tariff first)', p_tariff
			USING ERRCODE = 'no_data_found';
	END IF;
	IF v_period NOT IN ('month', 'year') THEN
		RAISE EXCEPTION 'tariff: "period" must be "month" or "year"' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF p_def ? 'tiers' AND p_def ? 'price' THEN
		RAISE EXCEPTION 'tariff: give "price" or "tiers", not both' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF NOT (p_def ? 'tiers' OR p_def ? 'price' OR v_has_bands) THEN
		RAISE EXCEPTION 'tariff: one of "price", "tiers" or "bands" is required' USING ERRCODE = 'invalid_parameter_value';
	END IF;

	INSERT INTO prepaid.tariff_versions (tariff_id, effective_from, definition, has_bands, period,
	    period_start_day, period_start_month, standing_per_day, service_per_kwh)
	VALUES (p_tariff, p_effective_from, p_def, v_has_bands, v_period,
	    coalesce((p_def->>'period_start_day')::int, 1), coalesce((p_def->>'period_start_month')::int, 1),
	    CASE WHEN p_def ? 'standing_per_day' THEN prepaid_internal.tariff_price(p_def->'standing_per_day', 'standing_per_day') ELSE 0 END,
	    CASE WHEN p_def ? 'service_per_kwh' THEN prepaid_internal.tariff_price(p_def->'service_per_kwh', 'service_per_kwh') ELSE 0 END)
	RETURNING version_id INTO v_id;

	-- Energy ranges: [0, free) free, then the tiers (or one flat range).
	IF p_def ? 'free_kwh' THEN
		v_free := prepaid_internal.tariff_wh(p_def->'free_kwh', 'free_kwh');
	END IF;
	IF v_tiers IS NULL THEN
		v_tiers := jsonb_build_array(jsonb_build_object('from_kwh', 0,
		    'price', coalesce(p_def->'price', '0'::jsonb)));
	ELSIF jsonb_typeof(v_tiers) <> 'array' OR jsonb_array_length(v_tiers) = 0 THEN
		RAISE EXCEPTION 'tariff: "tiers" must be a non-empty array' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	CREATE TEMP TABLE IF NOT EXISTS pg_temp.tariff_build (lo bigint, tier int, price numeric) ON COMMIT DROP;
	DELETE FROM pg_temp.tariff_build;
	FOR v_t IN SELECT value FROM jsonb_array_elements(v_tiers) LOOP
		v_i := v_i + 1;
		v_from := prepaid_internal.tariff_wh(v_t->'from_kwh', format('tiers[%s].from_kwh', v_i));
		IF v_i = 1 AND v_from <> 0 THEN
			RAISE EXCEPTION 'tariff: the first tier must start at from_kwh 0' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		IF v_from <= v_prev THEN
			RAISE EXCEPTION 'tariff: tiers must be in increasing from_kwh order' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		INSERT INTO pg_temp.tariff_build VALUES (v_from, v_i,
		    prepaid_internal.tariff_price(v_t->'price', format('tiers[%s].price', v_i)));
		v_prev := v_from;
	END LOOP;
	-- Breakpoints: every tier start and the end of the free quota.
	INSERT INTO prepaid.tariff_ranges (version_id, lo_wh, hi_wh, tier, free, price)
	SELECT v_id, lo, lead(lo) OVER (ORDER BY lo),
	       CASE WHEN lo < v_free THEN 0 ELSE (SELECT max(b.tier) FROM pg_temp.tariff_build b WHERE b.lo <= p.lo) END,
	       lo < v_free,
	       CASE WHEN lo < v_free THEN 0
	            ELSE (SELECT b.price FROM pg_temp.tariff_build b WHERE b.lo <= p.lo ORDER BY b.lo DESC LIMIT 1) END
	FROM (SELECT lo FROM pg_temp.tariff_build UNION SELECT v_free WHERE v_free > 0) p;

	IF v_has_bands THEN
		IF jsonb_typeof(v_bands) <> 'object' OR NOT v_bands ? 'work' THEN
			RAISE EXCEPTION 'tariff: "bands" must be an object with a "work" list (and optionally "rest")'
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		FOR v_dt IN SELECT unnest(ARRAY['work', 'rest']) LOOP
			v_list := coalesce(v_bands->v_dt, v_bands->'work');
			IF jsonb_typeof(v_list) <> 'array' OR jsonb_array_length(v_list) = 0 THEN
				RAISE EXCEPTION 'tariff: bands.% must be a non-empty array', v_dt USING ERRCODE = 'invalid_parameter_value';
			END IF;
			v_prev_start := NULL;
			v_i := 0;
			FOR v_t IN SELECT value FROM jsonb_array_elements(v_list) LOOP
				v_i := v_i + 1;
				BEGIN
					v_start := (v_t->>'start')::time;
				EXCEPTION WHEN OTHERS THEN
					RAISE EXCEPTION 'tariff: bands.%[%].start is not a time (HH:MM)', v_dt, v_i
						USING ERRCODE = 'invalid_parameter_value';
				END;
				IF v_start IS NULL OR (v_i = 1 AND v_start <> time '00:00') THEN
					RAISE EXCEPTION 'tariff: bands.% must start at 00:00', v_dt USING ERRCODE = 'invalid_parameter_value';
				END IF;
				IF v_prev_start IS NOT NULL AND v_start <= v_prev_start THEN
					RAISE EXCEPTION 'tariff: bands.% must be in increasing start order', v_dt
						USING ERRCODE = 'invalid_parameter_value';
				END IF;
				IF coalesce(v_t->>'band', '') = '' THEN
					RAISE EXCEPTION 'tariff: bands.%[%].band (its name) is required', v_dt, v_i
						USING ERRCODE = 'invalid_parameter_value';
				END IF;
				INSERT INTO prepaid.tariff_bands (version_id, day_type, start_time, band, price)
				VALUES (v_id, v_dt, v_start, v_t->>'band',
				    prepaid_internal.tariff_price(v_t->'price', format('bands.%s[%s].price', v_dt, v_i)));
				v_prev_start := v_start;
			END LOOP;
		END LOOP;
	END IF;
	RETURN v_id;
END $$;
COMMENT ON FUNCTION prepaid.create_tariff_version(text,timestamp with time zone,jsonb) IS
	'Add a version of a tariff from a JSON definition, effective from a time.';

-- Assign a tariff to a meter from a time (history is kept).
CREATE OR REPLACE FUNCTION prepaid.assign_tariff(p_meter text, p_tariff text, p_effective_from timestamptz)
RETURNS void LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM prepaid.meters WHERE meter_id = p_meter) THEN
		RAISE EXCEPTION 'unknown meter "%"', p_meter USING ERRCODE = 'no_data_found';
	END IF;
	INSERT INTO prepaid.meter_tariffs (meter_id, tariff_id, effective_from)
	VALUES (p_meter, p_tariff, p_effective_from);
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('assign_tariff', p_meter, jsonb_build_object('tariff', p_tariff, 'effective_from', p_effective_from));
END $$;
COMMENT ON FUNCTION prepaid.assign_tariff(text,text,timestamp with time zone) IS
	'Assign a tariff to a meter from a time.';

CREATE OR REPLACE FUNCTION prepaid.create_site(p_site text, p_name text,
    p_time_zone text DEFAULT 'Asia/Shanghai') RETURNS void
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	INSERT INTO prepaid.sites (site_id, name, time_zone) VALUES (p_site, p_name, p_time_zone);
$$;
COMMENT ON FUNCTION prepaid.create_site(text,text,text) IS
	'Create or rename a site, with its time zone.';

CREATE OR REPLACE FUNCTION prepaid.set_meter_site(p_meter text, p_site text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	UPDATE prepaid.meters SET site_id = p_site WHERE meter_id = p_meter;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown meter "%"', p_meter USING ERRCODE = 'no_data_found';
	END IF;
END $$;
COMMENT ON FUNCTION prepaid.set_meter_site(text,text) IS
	'Move a meter to a site.';

-- ------------------------------------------------------------------ rating

-- Whether wh Wh between two reading times is more than max_power_w can
-- deliver: wh * 3600 > max_power_w * seconds (at least 60), exactly.
CREATE OR REPLACE FUNCTION prepaid_internal.implausible(p_wh bigint, p_t0 timestamptz, p_t1 timestamptz,
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
CREATE OR REPLACE FUNCTION prepaid_internal.interval_parts(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
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
), keyed AS (
	SELECT part.ivn, part.m, part.fs, part.ts, part.s0, part.s1, part.local0::date AS d, part.e,
	       v.version_id, v.service_per_kwh,
	       prepaid_internal.period_start(v.period, v.period_start_day, v.period_start_month,
	           part.local0::date) AS pstart,
	       b.band, b.price AS bprice
	FROM part
	LEFT JOIN LATERAL (SELECT x.tariff_id FROM prepaid.meter_tariffs x
	                   WHERE x.meter_id = part.m AND x.effective_from <= part.s0
	                   ORDER BY x.effective_from DESC LIMIT 1) a ON true
	LEFT JOIN LATERAL (SELECT y.* FROM prepaid.tariff_versions y
	                   WHERE y.tariff_id = coalesce(a.tariff_id, part.deft) AND y.effective_from <= part.s0
	                   ORDER BY y.effective_from DESC LIMIT 1) v ON true
	LEFT JOIN LATERAL (SELECT bb.band, bb.price FROM prepaid.tariff_bands bb
	                   WHERE v.has_bands AND bb.version_id = v.version_id
	                     AND bb.day_type = prepaid.day_type(part.calendar, part.local0::date)
	                     AND bb.start_time <= part.local0::time
	                   ORDER BY bb.start_time DESC LIMIT 1) b ON true
), islands AS (
	-- a part is the longest span of one day, version and band: merge the
	-- cuts that changed none of them (their Wh add up, floor differences)
	SELECT x.*, sum(CASE WHEN x.k = x.pk THEN 0 ELSE 1 END)
	                OVER (PARTITION BY x.ivn ORDER BY x.s0) AS g
	FROM (SELECT keyed.*, ROW(d, version_id, band, bprice)::text AS k,
	             lag(ROW(d, version_id, band, bprice)::text) OVER (PARTITION BY ivn ORDER BY s0) AS pk
	      FROM keyed) x
)
SELECT ivn, m, fs, ts, min(s0), max(s1), d, sum(e)::bigint, version_id, service_per_kwh, pstart,
       band, bprice
FROM islands
WHERE version_id IS NOT NULL
GROUP BY ivn, m, fs, ts, g, d, version_id, service_per_kwh, pstart, band, bprice
HAVING sum(e) > 0
$$;

-- The energy a meter's billing period already holds before a part (by
-- from_ts, to_ts, to_seq): its tier position. Reversals cancel what they
-- reverse, so a plain sum of the period's charge entries is the live one.
CREATE OR REPLACE FUNCTION prepaid_internal.period_wh_before(p_meter text, p_period date, p_s0 timestamptz,
    p_s1 timestamptz, p_to_seq bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
	SELECT coalesce(sum(l.energy_wh), 0)::bigint FROM prepaid.ledger l
	WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.period_start = p_period
	  -- (a part of the period is on its first local day or later: the
	  -- ledger's index by meter and day finds them)
	  AND l.day >= p_period AND l.day <= (p_s0 AT TIME ZONE 'UTC')::date + 1
	  AND (l.from_ts, l.to_ts, l.to_seq) < (p_s0, p_s1, p_to_seq)
$$;

-- Rate intervals that come after every part already charged for their
-- meters (the in-order case): each part's position is the energy of its
-- period so far plus the earlier parts of the call. Returns the pieces cut
-- at the tier thresholds and free quota, with their exact amount in fen.
DROP FUNCTION IF EXISTS prepaid_internal.rate_intervals(text[], bigint[], bigint[], timestamptz[], timestamptz[], bigint[]);
CREATE OR REPLACE FUNCTION prepaid_internal.rate_intervals(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
    p_t0 timestamptz[], p_t1 timestamptz[], p_wh bigint[])
RETURNS TABLE (meter_id text, ivn bigint, from_seq bigint, to_seq bigint,
    seg_from timestamptz, seg_to timestamptz, day date, energy_wh bigint, version_id bigint,
    tier integer, free boolean, band text, price numeric, service_fee numeric, exact_fen numeric,
    period_start date, period_wh_after bigint)
LANGUAGE sql STABLE AS $$
WITH priced AS (
	SELECT p.*, mt.period_start AS base_period, mt.period_wh AS base_wh
	FROM prepaid_internal.interval_parts(p_meter, p_from_seq, p_to_seq, p_t0, p_t1, p_wh) p
	JOIN prepaid.meters mt ON mt.meter_id = p.meter_id
), first AS (
	SELECT DISTINCT ON (meter_id, pstart) meter_id, pstart, base_period, base_wh, seg_from, seg_to, to_seq
	FROM priced ORDER BY meter_id, pstart, seg_from, seg_to, to_seq
), base AS (
	SELECT f.meter_id, f.pstart,
	       CASE WHEN f.pstart = f.base_period THEN f.base_wh
	            ELSE prepaid_internal.period_wh_before(f.meter_id, f.pstart, f.seg_from, f.seg_to, f.to_seq) END AS wh
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
CREATE OR REPLACE FUNCTION prepaid_internal.standing_due(p_meter text[], p_from timestamptz[], p_to timestamptz[])
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
CREATE OR REPLACE FUNCTION prepaid_internal.post_open() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	-- (created once per session; emptied with DELETE: TRUNCATE of a temp
	-- table costs a new file each time)
	IF to_regclass('pg_temp.post_rows') IS NOT NULL THEN
		DELETE FROM pg_temp.post_rows;
		RETURN;
	END IF;
	CREATE TEMP TABLE post_rows (ord bigint, meter_id text, day date, kind text,
	    exact_fen numeric, from_seq bigint, to_seq bigint, from_ts timestamptz, to_ts timestamptz,
	    energy_wh bigint, tariff_version_id bigint, tier integer, band text, price numeric,
	    service_fee numeric, anomaly_id bigint, reverses bigint, period_start date)
	    ON COMMIT DELETE ROWS;
END $$;

-- Write the charge and standing entries of pg_temp.post_rows (exact_fen is
-- the exact debit: positive for a charge, the negated one for a reversal)
-- with their fen by the carry, meter by meter in the order ord: an entry of
-- exact x after exact charges X takes floor(X + x) - floor(X) fen. Moves the
-- meters' balances, exact charges, rated time and standing range.
CREATE OR REPLACE FUNCTION prepaid_internal.post_entries() RETURNS integer
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
	DELETE FROM pg_temp.post_rows;
	RETURN v_n;
END $$;

-- The standing range of meters grows to the local days of their readings.
CREATE OR REPLACE FUNCTION prepaid_internal.standing_extend(p_meter text[], p_from timestamptz[], p_to timestamptz[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.meters mt SET
		standing_from = least(mt.standing_from, (k.f AT TIME ZONE s.time_zone)::date),
		standing_through = greatest(mt.standing_through, (k.t AT TIME ZONE s.time_zone)::date)
	FROM (SELECT u.m, min(u.f) AS f, max(u.t) AS t FROM unnest(p_meter, p_from, p_to) AS u(m, f, t)
	      GROUP BY u.m) k, prepaid.sites s
	WHERE mt.meter_id = k.m AND s.site_id = mt.site_id;
END $$;

-- Charge intervals that come after everything charged for their meters
-- (rate_intervals) and the standing days the batch's readings reach
-- (p_upto_*: per meter, the oldest and newest reading), with the carry.
DROP FUNCTION IF EXISTS prepaid_internal.charge(text[], bigint[], bigint[], timestamptz[], timestamptz[], bigint[],
    text[], timestamptz[], timestamptz[], bigint);
CREATE OR REPLACE FUNCTION prepaid_internal.charge(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
    p_t0 timestamptz[], p_t1 timestamptz[], p_wh bigint[],
    p_upto_meter text[], p_upto_from timestamptz[], p_upto_ts timestamptz[])
RETURNS integer LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	v_n integer;
BEGIN
	PERFORM prepaid_internal.post_open();
	WITH r AS (
		SELECT * FROM prepaid_internal.rate_intervals(p_meter, p_from_seq, p_to_seq, p_t0, p_t1, p_wh)
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
		FROM prepaid_internal.standing_due(p_upto_meter, p_upto_from, p_upto_ts) st
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
	v_n := prepaid_internal.post_entries();
	PERFORM prepaid_internal.standing_extend(p_upto_meter, p_upto_from, p_upto_ts);
	RETURN v_n;
END $$;

-- Make a meter's ledger what the rules give for its readings with seq in
-- [p_lo, p_hi] (late readings, gap fills, an accepted jump): intervals that
-- no longer exist are reversed (an open jump among them superseded), new
-- ones classified and charged in their own periods at their position in
-- time, and the later parts of those periods whose tiers moved corrected
-- (reversal + new charge) from the first changed position on; standing
-- days the readings reach are charged. Returns the entries written.
CREATE OR REPLACE FUNCTION prepaid_internal.rerate_meter(p_meter text, p_lo bigint, p_hi bigint) RETURNS integer
LANGUAGE plpgsql
-- (one meter, a few intervals: generic plans, planned once a session, do
-- as well as custom ones and save planning the big statements every call)
SET jit = off
AS $$
DECLARE
	v_maxp bigint;
	v_n integer;
	v_f timestamptz;
	v_t timestamptz;
	v_d0 date;
	v_d1 date;
	a_fs bigint[]; a_ts bigint[]; a_t0 timestamptz[]; a_t1 timestamptz[]; a_wh bigint[];
BEGIN
	SELECT coalesce(mt.max_power_w, s.max_power_w) INTO v_maxp
	FROM prepaid.meters mt JOIN prepaid.sites s ON s.site_id = mt.site_id WHERE mt.meter_id = p_meter;

	IF to_regclass('pg_temp.rr_iv') IS NULL THEN
		CREATE TEMP TABLE rr_iv (fs bigint, ts bigint, t0 timestamptz, t1 timestamptz,
		    r0 timestamptz, e0 bigint, e1 bigint, wh bigint, cls text, anomaly bigint, live boolean)
		    ON COMMIT DELETE ROWS;
		CREATE TEMP TABLE rr_parts (ivn bigint, fs bigint, ts bigint, s0 timestamptz,
		    s1 timestamptz, day date, e bigint, vid bigint, service numeric, pstart date, band text,
		    bprice numeric, anomaly bigint, fresh boolean) ON COMMIT DELETE ROWS;
		CREATE TEMP TABLE rr_drop (entry_id bigint, period_start date, from_ts timestamptz,
		    to_ts timestamptz, to_seq bigint) ON COMMIT DELETE ROWS;
		CREATE TEMP TABLE rr_k (pstart date, k0 timestamptz, k1 timestamptz, k2 bigint)
		    ON COMMIT DELETE ROWS;
		CREATE TEMP TABLE rr_want (fs bigint, ts bigint, pstart date, s0 timestamptz,
		    s1 timestamptz, day date, e bigint, vid bigint, tier integer, band text, price numeric,
		    service numeric, exact numeric, anomaly bigint, fresh boolean) ON COMMIT DELETE ROWS;
	ELSE
		DELETE FROM rr_iv;
		DELETE FROM rr_parts;
		DELETE FROM rr_drop;
		DELETE FROM rr_k;
		DELETE FROM rr_want;
	END IF;
	-- every part of an interval of the range lies between these (and on
	-- local days between these, whatever the time zone)
	SELECT min(ts) - interval '1 second', max(ts) INTO v_f, v_t FROM prepaid.readings
	WHERE meter_id = p_meter AND seq BETWEEN p_lo AND p_hi;
	v_d0 := (v_f AT TIME ZONE 'UTC')::date - 1;
	v_d1 := (v_t AT TIME ZONE 'UTC')::date + 1;

	-- The intervals now: consecutive stored readings in the range.
	INSERT INTO rr_iv
	SELECT x.fs, x.s, CASE WHEN x.t > x.t0 THEN x.t0 ELSE x.t - interval '1 second' END, x.t, x.t0,
	       x.e0, x.e, x.e - x.e0,
	       CASE WHEN x.e < x.e0 THEN 'register_down' WHEN x.e = x.e0 THEN 'zero'
	            WHEN prepaid_internal.implausible(x.e - x.e0, x.t0, x.t, v_maxp) THEN 'implausible_jump'
	            ELSE 'chargeable' END,
	       NULL,
	       EXISTS (SELECT 1 FROM prepaid.ledger l
	               WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.to_seq = x.s
	                 AND l.day BETWEEN v_d0 AND v_d1
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
	  AND l.day BETWEEN v_d0 AND v_d1
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
	FROM prepaid_internal.interval_parts(array_fill(p_meter, ARRAY[coalesce(cardinality(a_fs), 0)]),
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
	        AND l.day >= (k.k0 AT TIME ZONE 'UTC')::date - 1
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
	FROM prepaid_internal.interval_parts(array_fill(p_meter, ARRAY[coalesce(cardinality(a_fs), 0)]),
	                            a_fs, a_ts, a_t0, a_t1, a_wh) p
	JOIN rr_k k ON k.pstart = p.pstart AND (p.seg_from, p.seg_to, p.to_seq) >= (k.k0, k.k1, k.k2);

	-- Positions in time order from the period's energy before, then tiers.
	INSERT INTO rr_want
	SELECT c.fs, c.ts, c.pstart, c.s0, c.s1, c.day, pe.wh, c.vid, r.tier, c.band,
	       CASE WHEN r.free THEN 0 ELSE coalesce(c.bprice, 0) + r.price END,
	       CASE WHEN r.free THEN 0 ELSE c.service END,
	       CASE WHEN r.free THEN 0 ELSE pe.wh * (coalesce(c.bprice, 0) + r.price + c.service) / 10 END,
	       c.anomaly, c.fresh
	FROM (SELECT p.*, prepaid_internal.period_wh_before(p_meter, k.pstart, k.k0, k.k1, k.k2)
	              + coalesce(sum(p.e) OVER (PARTITION BY p.pstart ORDER BY p.s0, p.s1, p.ts
	                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS cb
	      FROM rr_parts p JOIN rr_k k ON k.pstart = p.pstart) c
	JOIN prepaid.tariff_ranges r ON r.version_id = c.vid
	     AND r.lo_wh < c.cb + c.e AND (r.hi_wh IS NULL OR r.hi_wh > c.cb)
	CROSS JOIN LATERAL (SELECT least(coalesce(r.hi_wh, c.cb + c.e), c.cb + c.e)
	                           - greatest(r.lo_wh, c.cb) AS wh) pe;

	-- Post: reversals (dropped intervals, changed ones), then new charges.
	PERFORM prepaid_internal.post_open();
	WITH live AS (
		SELECT l.* FROM prepaid.ledger l JOIN rr_k k ON l.period_start = k.pstart
		WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.reverses IS NULL
		  AND l.day >= (k.k0 AT TIME ZONE 'UTC')::date - 1
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
	v_f := v_f + interval '1 second';
	IF v_f IS NOT NULL THEN
		INSERT INTO pg_temp.post_rows (ord, meter_id, day, kind, exact_fen, tariff_version_id)
		SELECT 1000000000 + row_number() OVER (ORDER BY st.day), p_meter, st.day, 'standing',
		       st.exact_fen, st.version_id
		FROM prepaid_internal.standing_due(ARRAY[p_meter], ARRAY[v_f], ARRAY[v_t]) st;
	END IF;
	v_n := prepaid_internal.post_entries();
	IF v_f IS NOT NULL THEN
		PERFORM prepaid_internal.standing_extend(ARRAY[p_meter], ARRAY[v_f], ARRAY[v_t]);
	END IF;

	-- The period cache of the fast path follows.
	UPDATE prepaid.meters mt SET period_wh = (
		SELECT coalesce(sum(l.energy_wh), 0) FROM prepaid.ledger l
		WHERE l.meter_id = p_meter AND l.kind = 'charge' AND l.period_start = mt.period_start
		  AND l.day >= mt.period_start)
	WHERE mt.meter_id = p_meter AND mt.period_start IN (SELECT pstart FROM rr_k);
	RETURN v_n;
END $$;

-- The amount (exact yuan, >= 0) of an interval the meter's rate cache
-- covers, or NULL: then it goes the full way. Covered means: inside the
-- cache window (ending strictly before its end, so that a reading at local
-- midnight starts the new day's standing charge), after everything charged,
-- not an anomaly (no negative step, not beyond the power limit, compared
-- exactly), and within the cached tier range of the current period.
CREATE OR REPLACE FUNCTION prepaid_internal.fast_rate(m prepaid.meters, p_t0 timestamptz, p_t1 timestamptz,
    p_wh bigint) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE WHEN m.rate_until IS NOT NULL AND p_t0 >= m.rate_from AND p_t1 > p_t0
	             AND p_t1 < m.rate_until AND p_wh >= 0
	             AND (m.rated_ts IS NULL OR p_t0 >= m.rated_ts)
	             -- (prepaid_internal.implausible(), written out: this runs for
	             -- every reading)
	             AND p_wh::numeric * 3600
	                 <= m.rate_max_power_w * greatest(extract(epoch FROM p_t1 - p_t0), 60)
	             AND (m.rate_vid IS NULL
	                  OR (m.period_start = m.rate_period AND m.period_wh >= m.rate_lo
	                      AND (m.rate_hi IS NULL OR m.period_wh + p_wh <= m.rate_hi)))
	        THEN CASE WHEN m.rate_vid IS NULL OR m.rate_free THEN 0
	                  ELSE p_wh * (m.rate_price + m.rate_service) / 1000 END
	       END
$$;

-- Charging's fast path for meters with several new intervals in a batch
-- (a backlog drained, a meter's array), none of them late (p_many; the
-- other meters pass through): from the meter's last reading before the
-- batch (p_last ...), each interval of its stored readings in seq order is
-- charged as prepaid_internal.ingest_readings() charges one the rate cache
-- covers (see prepaid_internal.fast_rate, with the period's energy up to
-- the interval's end), up to the first the cache does not cover; none if
-- any reading is not later in time than the one before it. Whole fen by
-- the carry, as post_entries() writes them. Returns the meters for
-- charge_slow(): the others, and these unless all their intervals were
-- charged, with the last reading charged as their last.
CREATE OR REPLACE FUNCTION prepaid_internal.charge_fast(p_meter text[], p_last bigint[],
    p_last_ts timestamptz[], p_last_wh bigint[], p_late boolean[], p_many boolean[],
    OUT slow_meter text[], OUT slow_last bigint[], OUT slow_last_ts timestamptz[],
    OUT slow_last_wh bigint[], OUT slow_late boolean[])
LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
	WITH iv AS (
		-- the intervals: each stored reading after the last, from the one
		-- before it
		SELECT y.*, lag(y.s) OVER w AS s0, lag(y.t) OVER w AS t0,
		       y.e - lag(y.e) OVER w AS wh
		FROM (SELECT k.m, k.last AS s, k.lts AS t, k.lwh AS e
		      FROM unnest(p_meter, p_last, p_last_ts, p_last_wh, p_many) AS k(m, last, lts, lwh, many)
		      WHERE k.many
		      UNION ALL
		      -- (an index lookup per meter, OFFSET 0 keeping the subquery
		      -- from being flattened into a join: with statistics not yet
		      -- gathered on a fresh month, the join was planned as a scan of
		      -- all its readings)
		      SELECT k.m, r.seq, r.ts, r.energy_wh
		      FROM unnest(p_meter, p_last, p_many) AS k(m, last, many)
		      CROSS JOIN LATERAL (SELECT x.seq, x.ts, x.energy_wh FROM prepaid.readings x
		                          WHERE x.meter_id = k.m AND x.seq > k.last OFFSET 0) r
		      WHERE k.many) y
		WINDOW w AS (PARTITION BY y.m ORDER BY y.s)
	), ok AS (
		SELECT iv.*, mt.exact_fen AS x0, mt.rate_day, mt.rate_vid, mt.rate_tier, mt.rate_band,
		       mt.rate_price, mt.rate_period,
		       CASE WHEN mt.rate_vid IS NULL OR mt.rate_free THEN 0 ELSE mt.rate_service END AS service,
		       CASE WHEN mt.rate_vid IS NULL OR mt.rate_free THEN 0
		            ELSE iv.wh * (mt.rate_price + mt.rate_service) / 1000 * 100 END AS amt,
		       coalesce(NOT bool_or(iv.t <= iv.t0) OVER (PARTITION BY iv.m)
		           AND mt.rate_until IS NOT NULL AND iv.t0 >= mt.rate_from
		           AND iv.t < mt.rate_until AND iv.wh >= 0
		           AND (mt.rated_ts IS NULL OR iv.t0 >= mt.rated_ts)
		           AND iv.wh::numeric * 3600
		               <= mt.rate_max_power_w * greatest(extract(epoch FROM iv.t - iv.t0), 60)
		           AND (mt.rate_vid IS NULL
		                OR (mt.period_start = mt.rate_period AND mt.period_wh >= mt.rate_lo
		                    AND (mt.rate_hi IS NULL
		                         OR mt.period_wh + sum(iv.wh) OVER (PARTITION BY iv.m ORDER BY iv.s)
		                            <= mt.rate_hi))),
		           false) AS ok
		-- (the meters by their ids, an index lookup each: joined by meter_id
		-- alone, the planner hashed a scan of every meter, 0.9 ms a call
		-- with 1,000 meters and growing with the fleet)
		FROM iv JOIN (SELECT x.* FROM prepaid.meters x WHERE x.meter_id = ANY (p_meter)) mt
		     ON mt.meter_id = iv.m
		WHERE iv.s0 IS NOT NULL
	), f AS (
		-- fast: it and every interval before it are covered; cum: the exact
		-- fen of those
		SELECT ok.*, bool_and(ok.ok) OVER w AS fast, sum(ok.amt) OVER w AS cum
		FROM ok WINDOW w AS (PARTITION BY ok.m ORDER BY ok.s)
	), led AS (
		INSERT INTO prepaid.ledger (meter_id, day, kind, amount_fen, exact_fen, from_seq,
		    to_seq, from_ts, to_ts, energy_wh, tariff_version_id, tier, band, price,
		    service_fee, period_start, author)
		SELECT m, rate_day, 'charge', -(floor(x0 + cum) - floor(x0 + cum - amt))::bigint, -amt,
		       s0, s, t0, t, wh, rate_vid, rate_tier, rate_band, rate_price,
		       CASE WHEN amt = 0 THEN 0 ELSE service END, rate_period, 'prepaidd'
		FROM f WHERE fast AND rate_vid IS NOT NULL AND wh > 0
		ORDER BY m, s
		RETURNING 1
	), agg AS (
		SELECT m, count(*) AS n, count(*) FILTER (WHERE fast) AS nfast,
		       -- the last reading charged (seq, time and energy all grow
		       -- along the fast intervals)
		       max(s) FILTER (WHERE fast) AS ls, max(t) FILTER (WHERE fast) AS lt,
		       max(e) FILTER (WHERE fast) AS le,
		       coalesce(sum(amt) FILTER (WHERE fast), 0) AS x,
		       coalesce(sum(wh) FILTER (WHERE fast AND rate_vid IS NOT NULL), 0) AS pwh,
		       max(t) FILTER (WHERE fast AND rate_vid IS NOT NULL AND wh > 0) AS rated
		FROM f GROUP BY m
	), upd AS (
		UPDATE prepaid.meters mt SET
			exact_fen = mt.exact_fen + a.x,
			balance_fen = mt.balance_fen - (floor(mt.exact_fen + a.x) - floor(mt.exact_fen))::bigint,
			balance = (mt.balance_fen
			           - (floor(mt.exact_fen + a.x) - floor(mt.exact_fen))::bigint) / 100.0,
			rated_ts = coalesce(a.rated, mt.rated_ts),
			period_wh = mt.period_wh + a.pwh
		FROM agg a
		WHERE mt.meter_id = a.m AND a.nfast > 0 AND mt.meter_id = ANY (p_meter)
		RETURNING 1
	)
	SELECT array_agg(k.m), array_agg(coalesce(a.ls, k.last)), array_agg(coalesce(a.lt, k.lts)),
	       array_agg(coalesce(a.le, k.lwh)), array_agg(k.late)
	INTO slow_meter, slow_last, slow_last_ts, slow_last_wh, slow_late
	FROM unnest(p_meter, p_last, p_last_ts, p_last_wh, p_late) AS k(m, last, lts, lwh, late)
	LEFT JOIN agg a ON a.m = k.m
	-- (the data-modifying parts run whether read or not)
	WHERE a.m IS NULL OR a.nfast < a.n;
END $$;

-- Charging ahead (see prepaid_internal.ingest_batch): of the meters
-- charge_fast() left (p_meter ..., its slow_* output), those with several
-- new intervals (p_many) and none late that still have two or more stored
-- readings after their last charged one, the next of them later in time:
-- a_* names them, their last charged reading and that next one, for the
-- full rating of that one interval; n_* is the input with their last
-- charged reading moved to the next one and p_many true for them alone, for
-- charge_fast() again.
CREATE OR REPLACE FUNCTION prepaid_internal.charge_next(p_meter text[], p_last bigint[],
    p_last_ts timestamptz[], p_last_wh bigint[], p_late boolean[], p_many text[],
    OUT a_meter text[], OUT a_last bigint[], OUT a_last_ts timestamptz[], OUT a_last_wh bigint[],
    OUT a_seq bigint[], OUT a_ts timestamptz[], OUT a_wh bigint[],
    OUT n_meter text[], OUT n_last bigint[], OUT n_last_ts timestamptz[], OUT n_last_wh bigint[],
    OUT n_late boolean[], OUT n_many boolean[])
LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
	WITH k AS (
		SELECT k.m, k.last, k.lts, k.lwh, k.late, nx.seq, nx.ts, nx.energy_wh,
		       coalesce(nx.ts > k.lts AND n2.more, false) AS ahead
		FROM unnest(p_meter, p_last, p_last_ts, p_last_wh, p_late) AS k(m, last, lts, lwh, late)
		-- the next stored reading, and whether another one follows it
		LEFT JOIN LATERAL (
			SELECT x.seq, x.ts, x.energy_wh FROM prepaid.readings x
			WHERE x.meter_id = k.m AND x.seq > k.last ORDER BY x.seq LIMIT 1) nx
		    ON k.m = ANY (p_many) AND NOT k.late AND k.last IS NOT NULL
		LEFT JOIN LATERAL (
			SELECT true AS more FROM prepaid.readings x
			WHERE x.meter_id = k.m AND x.seq > nx.seq ORDER BY x.seq LIMIT 1) n2
		    ON nx.seq IS NOT NULL
	)
	-- (one aggregate node fills every array from the same rows, sorted
	-- once by meter, as prepaid_internal.ingest_lock's)
	SELECT array_agg(m) FILTER (WHERE ahead), array_agg(last) FILTER (WHERE ahead),
	       array_agg(lts) FILTER (WHERE ahead), array_agg(lwh) FILTER (WHERE ahead),
	       array_agg(seq) FILTER (WHERE ahead), array_agg(ts) FILTER (WHERE ahead),
	       array_agg(energy_wh) FILTER (WHERE ahead),
	       array_agg(m), array_agg(CASE WHEN ahead THEN seq ELSE last END),
	       array_agg(CASE WHEN ahead THEN ts ELSE lts END),
	       array_agg(CASE WHEN ahead THEN energy_wh ELSE lwh END),
	       array_agg(late), array_agg(ahead)
	INTO a_meter, a_last, a_last_ts, a_last_wh, a_seq, a_ts, a_wh,
	     n_meter, n_last, n_last_ts, n_last_wh, n_late, n_many
	FROM (SELECT * FROM k ORDER BY m) k;
END $$;

-- Recompute the rate cache of meters at their newest reading (see 002), or
-- at p_at itself with p_exact (a reading charged ahead, see
-- prepaid_internal.ingest_batch); a period that is not the cached one starts
-- from the energy the ledger holds for it (tier state is per period).
DROP FUNCTION IF EXISTS prepaid_internal.refresh_rate_cache(text[], timestamptz[]);
CREATE OR REPLACE FUNCTION prepaid_internal.refresh_rate_cache(p_meter text[], p_at timestamptz[],
    p_exact boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
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
		       prepaid_internal.period_start(v.period, v.period_start_day, v.period_start_month,
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
		            WHEN mt2.period_start = prepaid_internal.period_start(v.period, v.period_start_day,
		                     v.period_start_month, (u.at AT TIME ZONE s.time_zone)::date)
		            THEN mt2.period_wh
		            ELSE prepaid_internal.period_wh_before(u.m,
		                     prepaid_internal.period_start(v.period, v.period_start_day,
		                         v.period_start_month, (u.at AT TIME ZONE s.time_zone)::date),
		                     'infinity', 'infinity', NULL) END AS base
		FROM (SELECT x.m, CASE WHEN p_exact THEN x.at ELSE greatest(x.at, y.last_ts) END AS at
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
	WHERE mt.meter_id = c.m;
END $$;

-- Anything that changes how consumption is priced forgets the caches.
CREATE OR REPLACE FUNCTION prepaid_internal.rate_cache_forget_trigger() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	IF TG_TABLE_NAME = 'sites' THEN
		UPDATE prepaid.meters SET rate_until = NULL
		WHERE site_id = NEW.site_id AND rate_until IS NOT NULL;
	ELSIF TG_TABLE_NAME = 'meter_tariffs' THEN
		UPDATE prepaid.meters SET rate_until = NULL
		WHERE meter_id = NEW.meter_id AND rate_until IS NOT NULL;
	ELSE
		UPDATE prepaid.meters SET rate_until = NULL WHERE rate_until IS NOT NULL;
	END IF;
	RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS sites_rate_cache ON prepaid.sites;
CREATE TRIGGER sites_rate_cache AFTER UPDATE ON prepaid.sites
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.rate_cache_forget_trigger();

DROP TRIGGER IF EXISTS meter_tariffs_rate_cache ON prepaid.meter_tariffs;
CREATE TRIGGER meter_tariffs_rate_cache AFTER INSERT OR UPDATE ON prepaid.meter_tariffs
	FOR EACH ROW EXECUTE FUNCTION prepaid_internal.rate_cache_forget_trigger();

DROP TRIGGER IF EXISTS tariff_versions_rate_cache ON prepaid.tariff_versions;
CREATE TRIGGER tariff_versions_rate_cache AFTER INSERT ON prepaid.tariff_versions
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid_internal.rate_cache_forget_trigger();

DROP TRIGGER IF EXISTS holidays_rate_cache ON prepaid.holidays;
CREATE TRIGGER holidays_rate_cache AFTER INSERT OR UPDATE OR DELETE ON prepaid.holidays
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid_internal.rate_cache_forget_trigger();

CREATE OR REPLACE FUNCTION prepaid_internal.meters_rate_cache_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	NEW.rate_until := NULL;
	RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS meters_rate_cache ON prepaid.meters;
CREATE TRIGGER meters_rate_cache BEFORE UPDATE OF site_id, max_power_w ON prepaid.meters
	FOR EACH ROW WHEN (OLD.site_id IS DISTINCT FROM NEW.site_id
	                   OR OLD.max_power_w IS DISTINCT FROM NEW.max_power_w)
	EXECUTE FUNCTION prepaid_internal.meters_rate_cache_trigger();

-- The full path of charging, for the meters whose new readings the fast
-- path of prepaid_internal.ingest_batch() did not charge. Readings beyond the
-- meter's latest, all later in time than what was charged: every new
-- interval is classified (register down: noted, never charged; beyond the
-- power limit: held) and the rest rated with the standing days. Anything
-- else (readings older than the first, gap fills, a reading dated before
-- what was charged): prepaid_internal.rerate_meter() over the batch's seq range.
-- Then the meters' rate caches are refreshed. p_ahead (charging ahead,
-- see prepaid_internal.ingest_batch) leaves the standing days to a later
-- call in the same transaction, standing days being written after every
-- part, and refreshes the caches at the batch's readings given, not at the
-- meters' newest.
DROP FUNCTION IF EXISTS prepaid_internal.charge_slow(text[], bigint[], timestamptz[], bigint[], bigint[],
    timestamptz[], bigint[], text[], bigint[], timestamptz[], bigint[]);
DROP FUNCTION IF EXISTS prepaid_internal.charge_slow(text[], bigint[], timestamptz[], bigint[], boolean[],
    text[], bigint[], timestamptz[], bigint[]);
DROP FUNCTION IF EXISTS prepaid_internal.charge_slow(text[], bigint[], timestamptz[], bigint[], boolean[],
    text[], bigint[], timestamptz[], bigint[], boolean);
CREATE OR REPLACE FUNCTION prepaid_internal.charge_slow(p_sm text[], p_last bigint[], p_last_ts timestamptz[],
    p_last_wh bigint[], p_late boolean[],
    p_meter text[], p_seq bigint[], p_ts timestamptz[], p_energy bigint[],
    p_ahead boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
	c_meter text[]; c_fs bigint[]; c_ts bigint[]; c_t0 timestamptz[]; c_t1 timestamptz[];
	c_wh bigint[]; u_meter text[]; u_from timestamptz[]; u_ts timestamptz[];
	v_late text[];
	r record;
BEGIN
	IF to_regclass('pg_temp.charge_iv') IS NULL THEN
		CREATE TEMP TABLE charge_iv (m text, fs bigint, ts bigint, t0 timestamptz,
		    t1 timestamptz, e0 bigint, e1 bigint, wh bigint, limit_wh bigint, jump boolean)
		    ON COMMIT DELETE ROWS;
		CREATE TEMP TABLE charge_rd (m text, s bigint, t timestamptz, e bigint)
		    ON COMMIT DELETE ROWS;
	ELSE
		DELETE FROM charge_iv;
		DELETE FROM charge_rd;
	END IF;
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
	       prepaid_internal.implausible(e1 - e0, t0, t1, coalesce(mt.max_power_w, s.max_power_w))
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
	      WHERE NOT p_ahead AND (v_late IS NULL OR c.m <> ALL (v_late)) GROUP BY c.m) k;
	PERFORM prepaid_internal.charge(coalesce(c_meter, '{}'), coalesce(c_fs, '{}'), coalesce(c_ts, '{}'),
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
		PERFORM prepaid_internal.rerate_meter(r.m, r.lo, r.hi);
	END LOOP;

	SELECT array_agg(c.m), array_agg(c.t) INTO u_meter, u_ts
	FROM (SELECT m, max(t) AS t FROM charge_rd GROUP BY m) c;
	PERFORM prepaid_internal.refresh_rate_cache(u_meter, u_ts, p_ahead);
END $$;

CREATE OR REPLACE FUNCTION prepaid_internal.local_day(p_meter text, p_at timestamptz) RETURNS date
LANGUAGE sql STABLE AS $$
	SELECT (p_at AT TIME ZONE s.time_zone)::date
	FROM prepaid.meters m JOIN prepaid.sites s ON s.site_id = m.site_id
	WHERE m.meter_id = p_meter
$$;
