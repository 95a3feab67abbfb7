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

-- The rating engine, set-based: one call rates any number of reading
-- intervals. Each interval [t0, t1] with wh Wh is cut at local midnights, at
-- the starts of time-of-use bands, and where the meter's tariff assignment
-- or the tariff's version changes; the energy is shared in proportion to
-- time (whole Wh: the parts are differences of floor(wh * elapsed / total),
-- so they add up to wh exactly). Each part takes the tariff version in force
-- at its start and, with bands, the band of its local day type and time;
-- then it is cut at the period's tier thresholds and free quota on the
-- meter's cumulative consumption in the billing period (meters.period_start
-- and period_wh before the call, plus the earlier parts of the call).
-- Parts with no tariff in force are not returned (not charged).
CREATE OR REPLACE FUNCTION prepaid_internal.rate_intervals(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
    p_t0 timestamptz[], p_t1 timestamptz[], p_wh bigint[])
RETURNS TABLE (meter_id text, ivn bigint, from_seq bigint, to_seq bigint,
    seg_from timestamptz, seg_to timestamptz, day date, energy_wh bigint, version_id bigint,
    tier integer, free boolean, band text, price numeric, service_fee numeric, amount numeric,
    period_start date, period_wh_after bigint)
LANGUAGE sql STABLE AS $$
WITH iv AS (
	SELECT u.ord AS ivn, u.m, u.fs, u.ts, u.t0, u.t1, u.wh, s.time_zone AS tz, s.calendar,
	       s.default_tariff_id AS deft, mt.period_start AS base_period, mt.period_wh AS base_wh
	FROM unnest(p_meter, p_from_seq, p_to_seq, p_t0, p_t1, p_wh) WITH ORDINALITY
	     AS u(m, fs, ts, t0, t1, wh, ord)
	JOIN prepaid.meters mt ON mt.meter_id = u.m
	JOIN prepaid.sites s ON s.site_id = mt.site_id
	WHERE u.t1 > u.t0 AND u.wh > 0
), tar AS (
	-- tariffs that can apply: the one in force at t0 and any assigned inside
	SELECT iv.ivn, coalesce(a.tariff_id, iv.deft) AS tariff_id FROM iv
	LEFT JOIN LATERAL (SELECT x.tariff_id FROM prepaid.meter_tariffs x
	                   WHERE x.meter_id = iv.m AND x.effective_from <= iv.t0
	                   ORDER BY x.effective_from DESC LIMIT 1) a ON true
	UNION
	SELECT iv.ivn, x.tariff_id FROM iv
	JOIN prepaid.meter_tariffs x ON x.meter_id = iv.m AND x.effective_from > iv.t0 AND x.effective_from < iv.t1
), bst AS (
	-- band start times of every version of the tariffs that can apply
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
	SELECT iv.ivn, iv.m, iv.fs, iv.ts, iv.tz, iv.calendar, iv.deft, iv.base_period, iv.base_wh,
	       seg.s0, seg.s1, (seg.s0 AT TIME ZONE iv.tz) AS local0,
	       (floor(iv.wh * extract(epoch FROM seg.s1 - iv.t0) / extract(epoch FROM iv.t1 - iv.t0))
	        - floor(iv.wh * extract(epoch FROM seg.s0 - iv.t0) / extract(epoch FROM iv.t1 - iv.t0)))::bigint AS e
	FROM seg JOIN iv ON iv.ivn = seg.ivn
	WHERE seg.s1 IS NOT NULL
), priced AS (
	SELECT part.*, v.version_id AS vid, v.has_bands, v.service_per_kwh,
	       prepaid_internal.period_start(v.period, v.period_start_day, v.period_start_month, part.local0::date) AS pstart,
	       b.band AS bname, b.price AS bprice
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
), cum AS (
	SELECT priced.*,
	       CASE WHEN pstart = base_period THEN base_wh ELSE 0 END
	       + coalesce(sum(e) OVER (PARTITION BY m, pstart ORDER BY s0, ivn
	                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS cb
	FROM priced
)
SELECT c.m, c.ivn, c.fs, c.ts, c.s0, c.s1, c.local0::date, pe.wh, c.vid, r.tier, r.free, c.bname,
       CASE WHEN r.free THEN 0 ELSE coalesce(c.bprice, 0) + r.price END,
       CASE WHEN r.free THEN 0 ELSE c.service_per_kwh END,
       CASE WHEN r.free THEN 0
            ELSE pe.wh * (coalesce(c.bprice, 0) + r.price + c.service_per_kwh) / 1000 END,
       c.pstart, c.cb + c.e
FROM cum c
JOIN prepaid.tariff_ranges r ON r.version_id = c.vid
     AND r.lo_wh < c.cb + c.e AND (r.hi_wh IS NULL OR r.hi_wh > c.cb)
CROSS JOIN LATERAL (SELECT least(coalesce(r.hi_wh, c.cb + c.e), c.cb + c.e) - greatest(r.lo_wh, c.cb) AS wh) pe
$$;

-- Charge rated intervals and standing days: ledger rows, balances and the
-- period state, in one statement. p_upto_* name, per meter, the oldest and
-- the newest reading of the batch: every local day since the last one
-- charged (for a meter never charged, since the oldest reading's day) up to
-- the newest reading's day gets its standing charge.
CREATE OR REPLACE FUNCTION prepaid_internal.charge(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
    p_t0 timestamptz[], p_t1 timestamptz[], p_wh bigint[],
    p_upto_meter text[], p_upto_from timestamptz[], p_upto_ts timestamptz[],
    p_anomaly bigint DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql
-- A generic plan would guess a few rows for the array parameters and join
-- them in nested loops; JIT compiling such plans once cost seconds.
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
	v_n integer;
BEGIN
	WITH r AS (
		SELECT * FROM prepaid_internal.rate_intervals(p_meter, p_from_seq, p_to_seq, p_t0, p_t1, p_wh)
	), st AS (
		-- standing days since the last one charged, up to the newest reading's day
		SELECT mt.meter_id AS m, d.d::date AS day, v.version_id AS vid, v.standing_per_day AS amount
		FROM unnest(p_upto_meter, p_upto_from, p_upto_ts) AS u(m, f, t)
		JOIN prepaid.meters mt ON mt.meter_id = u.m
		JOIN prepaid.sites s ON s.site_id = mt.site_id
		CROSS JOIN LATERAL generate_series(
		    coalesce(mt.standing_through + 1, (u.f AT TIME ZONE s.time_zone)::date),
		    (u.t AT TIME ZONE s.time_zone)::date, interval '1 day') AS d(d)
		LEFT JOIN LATERAL (SELECT x.tariff_id FROM prepaid.meter_tariffs x
		                   WHERE x.meter_id = mt.meter_id
		                     AND x.effective_from <= (d.d::date + time '00:00') AT TIME ZONE s.time_zone
		                   ORDER BY x.effective_from DESC LIMIT 1) a ON true
		JOIN LATERAL (SELECT y.version_id, y.standing_per_day FROM prepaid.tariff_versions y
		              WHERE y.tariff_id = coalesce(a.tariff_id, s.default_tariff_id)
		                AND y.effective_from <= (d.d::date + time '00:00') AT TIME ZONE s.time_zone
		              ORDER BY y.effective_from DESC LIMIT 1) v ON true
		WHERE v.standing_per_day > 0
	), led AS (
		INSERT INTO prepaid.ledger (meter_id, day, kind, amount, from_seq, to_seq, from_ts, to_ts,
		    energy_wh, tariff_version_id, tier, band, price, service_fee, anomaly_id, author)
		SELECT r.meter_id, r.day, 'charge', -r.amount, r.from_seq, r.to_seq, r.seg_from, r.seg_to,
		       r.energy_wh, r.version_id, r.tier, r.band, r.price, r.service_fee, p_anomaly, 'prepaidd'
		FROM r
		UNION ALL
		SELECT m, day, 'standing', -amount, NULL, NULL, NULL, NULL, NULL, vid, NULL, NULL, NULL, NULL,
		       NULL, 'prepaidd'
		FROM st
		RETURNING meter_id, amount
	), tot AS (
		SELECT meter_id AS m, sum(amount) AS amount FROM led GROUP BY meter_id
	), per AS (
		SELECT DISTINCT ON (r.meter_id) r.meter_id AS m, r.period_start, r.period_wh_after
		FROM r ORDER BY r.meter_id, r.seg_from DESC, r.ivn DESC
	), upto AS (
		SELECT u.m, max(u.t) AS t FROM unnest(p_upto_meter, p_upto_ts) AS u(m, t) GROUP BY u.m
	), touched AS (
		SELECT m FROM unnest(p_meter) AS m UNION SELECT m FROM upto
	), upd AS (
		UPDATE prepaid.meters mt SET
			balance = mt.balance + coalesce(x.amount, 0),
			period_start = coalesce(x.period_start, mt.period_start),
			period_wh = CASE WHEN x.period_start IS NULL
			                   OR (p_anomaly IS NOT NULL AND x.period_start < mt.period_start)
			                 THEN mt.period_wh ELSE x.period_wh_after END,
			standing_through = greatest(mt.standing_through, (x.upto AT TIME ZONE s.time_zone)::date)
		FROM (SELECT tc.m, t.amount, p.period_start, p.period_wh_after, up.t AS upto
		      FROM touched tc
		      LEFT JOIN tot t ON t.m = tc.m
		      LEFT JOIN per p ON p.m = tc.m
		      LEFT JOIN upto up ON up.m = tc.m) x,
		     prepaid.sites s
		WHERE mt.meter_id = x.m AND s.site_id = mt.site_id
		RETURNING 1
	)
	SELECT count(*) INTO v_n FROM led;
	RETURN v_n;
END $$;

-- ------------------------------------------------------------ rate cache

-- The amount (>= 0) of an interval that the meter's rate cache covers, or
-- NULL when it does not: then the interval is rated in full. Covered means:
-- inside the cache window, not an anomaly (no negative step, nothing beyond
-- the power limit), and within the cached tier range of the current period.
CREATE OR REPLACE FUNCTION prepaid_internal.fast_rate(m prepaid.meters, p_t0 timestamptz, p_t1 timestamptz,
    p_wh bigint) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE WHEN m.rate_until IS NOT NULL AND p_t0 >= m.rate_from AND p_t1 > p_t0
	             AND p_t1 <= m.rate_until AND p_wh >= 0
	             AND p_wh <= ceil(m.rate_max_power_w * greatest(extract(epoch FROM p_t1 - p_t0), 60) / 3600)
	             AND (m.rate_vid IS NULL
	                  OR (m.period_start = m.rate_period AND m.period_wh >= m.rate_lo
	                      AND (m.rate_hi IS NULL OR m.period_wh + p_wh <= m.rate_hi)))
	        THEN CASE WHEN m.rate_vid IS NULL OR m.rate_free THEN 0
	                  ELSE p_wh * (m.rate_price + m.rate_service) / 1000 END
	       END
$$;

-- Recompute the rate cache of meters at a time (their newest reading): the
-- window runs from then to the first of: the next local midnight, the next
-- band start, the next tariff assignment, the next version of the tariff. A
-- period that has begun resets period_wh (nothing of it was charged yet).
CREATE OR REPLACE FUNCTION prepaid_internal.refresh_rate_cache(p_meter text[], p_at timestamptz[]) RETURNS void
LANGUAGE sql AS $$
	UPDATE prepaid.meters mt SET
		period_start = CASE WHEN c.vid IS NOT NULL AND c.pstart IS DISTINCT FROM mt.period_start
		                    THEN c.pstart ELSE mt.period_start END,
		period_wh = CASE WHEN c.vid IS NOT NULL AND c.pstart IS DISTINCT FROM mt.period_start
		                 THEN 0 ELSE mt.period_wh END,
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
		            THEN mt2.period_wh ELSE 0 END AS base
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
-- path of prepaid_internal.ingest_batch() did not charge: every new interval between
-- consecutive readings (by seq), from the meter's latest reading before the
-- batch (p_last_*) through the batch's readings beyond it, is classified
-- (a register that went down is noted and never charged; a jump beyond the
-- power limit is held) and the rest rated and charged with the standing
-- days; then the meters' rate caches are refreshed. Readings older than the
-- meter's first one (p_first_*) form a second chain up to it.
CREATE OR REPLACE FUNCTION prepaid_internal.charge_slow(p_sm text[], p_last bigint[], p_last_ts timestamptz[],
    p_last_wh bigint[], p_first bigint[], p_first_ts timestamptz[], p_first_wh bigint[],
    p_meter text[], p_seq bigint[], p_ts timestamptz[], p_energy bigint[])
RETURNS void LANGUAGE plpgsql
SET jit = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
	c_meter text[]; c_fs bigint[]; c_ts bigint[]; c_t0 timestamptz[]; c_t1 timestamptz[];
	c_wh bigint[]; u_meter text[]; u_from timestamptz[]; u_ts timestamptz[];
BEGIN
	CREATE TEMP TABLE IF NOT EXISTS charge_iv (m text, fs bigint, ts bigint, t0 timestamptz,
	    t1 timestamptz, e0 bigint, e1 bigint, wh bigint, limit_wh bigint) ON COMMIT DELETE ROWS;
	TRUNCATE charge_iv;
	WITH sm AS (
		SELECT * FROM unnest(p_sm, p_last, p_last_ts, p_last_wh, p_first, p_first_ts, p_first_wh)
		     AS k(m, last, lts, lwh, first, fts, fwh)
	), pts AS (
		-- chain 1: from the latest reading before the batch onwards
		SELECT m, 1 AS chain, last AS s, lts AS t, lwh AS e FROM sm WHERE last IS NOT NULL
		UNION ALL
		SELECT DISTINCT ON (u.m, u.s) u.m, 1, u.s, u.t, u.e
		FROM unnest(p_meter, p_seq, p_ts, p_energy) AS u(m, s, t, e)
		JOIN sm ON sm.m = u.m
		WHERE sm.last IS NULL OR u.s > sm.last
		UNION ALL
		-- chain 2: readings older than the meter's first one, up to it
		SELECT m, 2, first, fts, fwh FROM sm WHERE first IS NOT NULL
		UNION ALL
		SELECT DISTINCT ON (u.m, u.s) u.m, 2, u.s, u.t, u.e
		FROM unnest(p_meter, p_seq, p_ts, p_energy) AS u(m, s, t, e)
		JOIN sm ON sm.m = u.m
		WHERE u.s < sm.first
	), iv AS (
		SELECT m, lag(s) OVER w AS fs, s AS ts, lag(t) OVER w AS t0, t AS t1,
		       lag(e) OVER w AS e0, e AS e1
		FROM pts WINDOW w AS (PARTITION BY m, chain ORDER BY s)
	)
	INSERT INTO charge_iv
	SELECT iv.m, fs, ts, t0, t1, e0, e1, e1 - e0,
	       -- at least a minute, so that clock jitter cannot turn a small step into a glitch
	       ceil(coalesce(mt.max_power_w, s.max_power_w)
	            * greatest(extract(epoch FROM t1 - t0), 60) / 3600)::bigint
	FROM iv JOIN prepaid.meters mt ON mt.meter_id = iv.m
	JOIN prepaid.sites s ON s.site_id = mt.site_id
	WHERE iv.fs IS NOT NULL;

	INSERT INTO prepaid.anomalies (meter_id, kind, from_seq, to_seq, from_ts, to_ts,
	    from_wh, to_wh, energy_wh, limit_wh, state)
	SELECT m, CASE WHEN wh < 0 THEN 'register_down' ELSE 'implausible_jump' END,
	       fs, ts, t0, t1, e0, e1, wh, limit_wh,
	       CASE WHEN wh < 0 THEN 'noted' ELSE 'open' END
	FROM charge_iv WHERE wh < 0 OR wh > limit_wh;

	SELECT array_agg(m), array_agg(fs), array_agg(ts),
	       -- a reading not later than the one before it: its energy is
	       -- placed in the second before it
	       array_agg(CASE WHEN t1 > t0 THEN t0 ELSE t1 - interval '1 second' END),
	       array_agg(t1), array_agg(wh)
	INTO c_meter, c_fs, c_ts, c_t0, c_t1, c_wh
	FROM charge_iv WHERE wh > 0 AND wh <= limit_wh;

	SELECT array_agg(k.m), array_agg(k.f), array_agg(k.t) INTO u_meter, u_from, u_ts
	FROM (SELECT u.m, min(u.t) AS f, max(u.t) AS t FROM unnest(p_meter, p_ts) AS u(m, t)
	      JOIN unnest(p_sm) AS sm(m) ON sm.m = u.m GROUP BY u.m) k;
	PERFORM prepaid_internal.charge(coalesce(c_meter, '{}'), coalesce(c_fs, '{}'), coalesce(c_ts, '{}'),
	    coalesce(c_t0, '{}'), coalesce(c_t1, '{}'), coalesce(c_wh, '{}'),
	    coalesce(u_meter, '{}'), coalesce(u_from, '{}'), coalesce(u_ts, '{}'));
	PERFORM prepaid_internal.refresh_rate_cache(u_meter, u_ts);
END $$;

CREATE OR REPLACE FUNCTION prepaid_internal.local_day(p_meter text, p_at timestamptz) RETURNS date
LANGUAGE sql STABLE AS $$
	SELECT (p_at AT TIME ZONE s.time_zone)::date
	FROM prepaid.meters m JOIN prepaid.sites s ON s.site_id = m.site_id
	WHERE m.meter_id = p_meter
$$;
