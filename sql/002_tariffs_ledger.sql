-- 002_tariffs_ledger.sql: money. Sites (time zone, calendar, power limit),
-- the holiday calendar, effective-dated tariffs (flat, tiered, time of use,
-- standing charge, service fee), tariff assignments with history, the
-- append-only ledger with each meter's balance, anomalies held for review,
-- the set-based rating engine called from prepaid.ingest_batch() in the
-- same transaction as the readings, and the operator functions and reports.
-- Documented in prepaidd-sql(7), section MONEY.
--
-- Money is NUMERIC, never floating point. Energy is integer Wh; prices are
-- yuan per kWh with at most 4 decimals, so an amount energy_wh * price /
-- 1000 is exact with 7 decimals: the ledger keeps numeric(20,7) and nothing
-- is rounded inside. Views round to 0.01 yuan (round(): half away from zero).

-- ------------------------------------------------------------------ sites

CREATE TABLE prepaid.sites (
	site_id           text COLLATE "C" PRIMARY KEY,
	name              text NOT NULL,
	time_zone         text NOT NULL DEFAULT 'Asia/Shanghai',
	calendar          text NOT NULL DEFAULT 'CN',
	max_power_w       bigint NOT NULL DEFAULT 60000 CHECK (max_power_w > 0),
	default_tariff_id text,
	created_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO prepaid.sites (site_id, name) VALUES ('default', 'Default site');

-- A time zone is valid if PostgreSQL can convert with it.
CREATE FUNCTION prepaid.sites_check_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM now() AT TIME ZONE NEW.time_zone;
	RETURN NEW;
EXCEPTION WHEN invalid_parameter_value THEN
	RAISE EXCEPTION 'site %: unknown time zone "%"', NEW.site_id, NEW.time_zone
		USING ERRCODE = 'invalid_parameter_value';
END $$;
CREATE TRIGGER sites_check BEFORE INSERT OR UPDATE OF time_zone ON prepaid.sites
	FOR EACH ROW EXECUTE FUNCTION prepaid.sites_check_trigger();

ALTER TABLE prepaid.meters
	ADD COLUMN site_id text COLLATE "C" NOT NULL DEFAULT 'default' REFERENCES prepaid.sites,
	ADD COLUMN max_power_w bigint CHECK (max_power_w > 0),  -- NULL: the site's
	ADD COLUMN balance numeric(20,7) NOT NULL DEFAULT 0,
	ADD COLUMN period_start date,       -- billing period of period_wh
	ADD COLUMN period_wh bigint NOT NULL DEFAULT 0,
	ADD COLUMN standing_through date,   -- last local day with its standing charge
	-- The meter's reading with the lowest seq: a reading older than it
	-- (meters may deliver out of order, several daemons may race) is still
	-- new, and the interval from it to this one is charged.
	ADD COLUMN first_seq bigint,
	ADD COLUMN first_ts timestamptz,
	ADD COLUMN first_wh bigint,
	-- The rate cache: how the meter's next interval is priced if it lies in
	-- [rate_from, rate_until] (one local day, one tariff version, one band)
	-- and stays inside the tier range [rate_lo, rate_hi) of period rate_period.
	-- Kept by prepaid.refresh_rate_cache(); rate_until NULL means unknown.
	-- It lets prepaid.ingest_batch() charge the common interval with no
	-- tariff lookup at all (prepaid.fast_rate); anything else is rated in full.
	ADD COLUMN rate_from timestamptz,
	ADD COLUMN rate_until timestamptz,
	ADD COLUMN rate_vid bigint,           -- NULL with rate_until set: no tariff
	ADD COLUMN rate_day date,
	ADD COLUMN rate_period date,
	ADD COLUMN rate_lo bigint,
	ADD COLUMN rate_hi bigint,
	ADD COLUMN rate_tier integer,
	ADD COLUMN rate_band text,
	ADD COLUMN rate_free boolean,
	ADD COLUMN rate_price numeric(10,4),  -- band price + tier price (0 when free)
	ADD COLUMN rate_service numeric(10,4),
	ADD COLUMN rate_max_power_w bigint;

UPDATE prepaid.meters m SET first_seq = r.seq, first_ts = r.ts, first_wh = r.energy_wh
FROM (SELECT DISTINCT ON (meter_id) meter_id, seq, ts, energy_wh FROM prepaid.readings
      ORDER BY meter_id, seq) r
WHERE r.meter_id = m.meter_id;

-- ---------------------------------------------------------------- holidays

-- Rest days and make-up working days (调休), shared by tariffs (time-of-use
-- day types) and, later, by trip guards.
CREATE TABLE prepaid.holidays (
	calendar text NOT NULL DEFAULT 'CN',
	day      date NOT NULL,
	kind     text NOT NULL CHECK (kind IN ('holiday', 'workday')),
	name     text,
	PRIMARY KEY (calendar, day)
);

-- 'rest' or 'work' for a local date of a calendar.
CREATE FUNCTION prepaid.day_type(p_calendar text, p_day date) RETURNS text
LANGUAGE sql STABLE AS $$
	SELECT coalesce(
	    (SELECT CASE h.kind WHEN 'holiday' THEN 'rest' ELSE 'work' END
	     FROM prepaid.holidays h WHERE h.calendar = p_calendar AND h.day = p_day),
	    CASE WHEN extract(isodow FROM p_day) >= 6 THEN 'rest' ELSE 'work' END)
$$;

-- ----------------------------------------------------------------- tariffs

CREATE TABLE prepaid.tariffs (
	tariff_id  text COLLATE "C" PRIMARY KEY,
	name       text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	created_by text NOT NULL DEFAULT session_user
);
ALTER TABLE prepaid.sites ADD FOREIGN KEY (default_tariff_id) REFERENCES prepaid.tariffs;

-- A version is immutable: a price change is a new version with a later
-- effective_from, and consumption before it keeps the old price.
CREATE TABLE prepaid.tariff_versions (
	version_id         bigserial PRIMARY KEY,
	tariff_id          text COLLATE "C" NOT NULL REFERENCES prepaid.tariffs,
	effective_from     timestamptz NOT NULL,
	definition         jsonb NOT NULL,
	has_bands          boolean NOT NULL,
	period             text NOT NULL CHECK (period IN ('month', 'year')),
	period_start_day   integer NOT NULL CHECK (period_start_day BETWEEN 1 AND 28),
	period_start_month integer NOT NULL CHECK (period_start_month BETWEEN 1 AND 12),
	standing_per_day   numeric(10,4) NOT NULL CHECK (standing_per_day >= 0),
	service_per_kwh    numeric(10,4) NOT NULL CHECK (service_per_kwh >= 0),
	created_at         timestamptz NOT NULL DEFAULT now(),
	created_by         text NOT NULL DEFAULT session_user,
	UNIQUE (tariff_id, effective_from)
);

-- Energy ranges of a billing period with their kWh price: the free quota,
-- then the tiers (a flat tariff is one range from 0). With bands, price is
-- the increment added to the band's price.
CREATE TABLE prepaid.tariff_ranges (
	version_id bigint NOT NULL REFERENCES prepaid.tariff_versions,
	lo_wh      bigint NOT NULL,
	hi_wh      bigint,                  -- NULL: no upper bound
	tier       integer NOT NULL,        -- 0 for the free quota
	free       boolean NOT NULL,
	price      numeric(10,4) NOT NULL,
	PRIMARY KEY (version_id, lo_wh)
);

-- Time-of-use bands: each runs from start_time to the next band's start.
CREATE TABLE prepaid.tariff_bands (
	version_id bigint NOT NULL REFERENCES prepaid.tariff_versions,
	day_type   text NOT NULL CHECK (day_type IN ('work', 'rest')),
	start_time time NOT NULL,
	band       text NOT NULL,
	price      numeric(10,4) NOT NULL CHECK (price >= 0),
	PRIMARY KEY (version_id, day_type, start_time)
);

CREATE TABLE prepaid.meter_tariffs (
	meter_id       text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	tariff_id      text COLLATE "C" NOT NULL REFERENCES prepaid.tariffs,
	effective_from timestamptz NOT NULL,
	assigned_by    text NOT NULL DEFAULT session_user,
	assigned_at    timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (meter_id, effective_from)
);

CREATE FUNCTION prepaid.tariff_immutable_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION '% is immutable: create a new tariff version instead', TG_TABLE_NAME
		USING ERRCODE = 'object_not_in_prerequisite_state';
END $$;
CREATE TRIGGER tariff_versions_immutable BEFORE UPDATE OR DELETE ON prepaid.tariff_versions
	FOR EACH ROW EXECUTE FUNCTION prepaid.tariff_immutable_trigger();
CREATE TRIGGER tariff_ranges_immutable BEFORE UPDATE OR DELETE ON prepaid.tariff_ranges
	FOR EACH ROW EXECUTE FUNCTION prepaid.tariff_immutable_trigger();
CREATE TRIGGER tariff_bands_immutable BEFORE UPDATE OR DELETE ON prepaid.tariff_bands
	FOR EACH ROW EXECUTE FUNCTION prepaid.tariff_immutable_trigger();

-- The first day of the billing period that contains a local date.
CREATE FUNCTION prepaid.period_start(p_period text, p_start_day integer,
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

CREATE FUNCTION prepaid.create_tariff(p_tariff text, p_name text) RETURNS void
LANGUAGE sql AS $$
	INSERT INTO prepaid.tariffs (tariff_id, name) VALUES (p_tariff, p_name);
$$;

-- Read a price: a JSON number or numeric string, >= 0, at most 4 decimals.
CREATE FUNCTION prepaid.tariff_price(p_value jsonb, p_key text) RETURNS numeric
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
CREATE FUNCTION prepaid.tariff_wh(p_value jsonb, p_key text) RETURNS bigint
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
CREATE FUNCTION prepaid.create_tariff_version(p_tariff text, p_effective_from timestamptz,
    p_def jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$
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
	    CASE WHEN p_def ? 'standing_per_day' THEN prepaid.tariff_price(p_def->'standing_per_day', 'standing_per_day') ELSE 0 END,
	    CASE WHEN p_def ? 'service_per_kwh' THEN prepaid.tariff_price(p_def->'service_per_kwh', 'service_per_kwh') ELSE 0 END)
	RETURNING version_id INTO v_id;

	-- Energy ranges: [0, free) free, then the tiers (or one flat range).
	IF p_def ? 'free_kwh' THEN
		v_free := prepaid.tariff_wh(p_def->'free_kwh', 'free_kwh');
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
		v_from := prepaid.tariff_wh(v_t->'from_kwh', format('tiers[%s].from_kwh', v_i));
		IF v_i = 1 AND v_from <> 0 THEN
			RAISE EXCEPTION 'tariff: the first tier must start at from_kwh 0' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		IF v_from <= v_prev THEN
			RAISE EXCEPTION 'tariff: tiers must be in increasing from_kwh order' USING ERRCODE = 'invalid_parameter_value';
		END IF;
		INSERT INTO pg_temp.tariff_build VALUES (v_from, v_i,
		    prepaid.tariff_price(v_t->'price', format('tiers[%s].price', v_i)));
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
				    prepaid.tariff_price(v_t->'price', format('bands.%s[%s].price', v_dt, v_i)));
				v_prev_start := v_start;
			END LOOP;
		END LOOP;
	END IF;
	RETURN v_id;
END $$;

-- Assign a tariff to a meter from a time (history is kept).
CREATE FUNCTION prepaid.assign_tariff(p_meter text, p_tariff text, p_effective_from timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM prepaid.meters WHERE meter_id = p_meter) THEN
		RAISE EXCEPTION 'unknown meter "%"', p_meter USING ERRCODE = 'no_data_found';
	END IF;
	INSERT INTO prepaid.meter_tariffs (meter_id, tariff_id, effective_from)
	VALUES (p_meter, p_tariff, p_effective_from);
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('assign_tariff', p_meter, jsonb_build_object('tariff', p_tariff, 'effective_from', p_effective_from));
END $$;

CREATE FUNCTION prepaid.create_site(p_site text, p_name text,
    p_time_zone text DEFAULT 'Asia/Shanghai') RETURNS void
LANGUAGE sql AS $$
	INSERT INTO prepaid.sites (site_id, name, time_zone) VALUES (p_site, p_name, p_time_zone);
$$;

CREATE FUNCTION prepaid.set_meter_site(p_meter text, p_site text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	UPDATE prepaid.meters SET site_id = p_site WHERE meter_id = p_meter;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'unknown meter "%"', p_meter USING ERRCODE = 'no_data_found';
	END IF;
END $$;

-- ------------------------------------------------------------------ ledger

CREATE TABLE prepaid.ledger (
	entry_id          bigserial PRIMARY KEY,
	-- (No foreign keys: a check per row would cost more than the rest of
	-- charging; meters and tariff versions are never deleted, see below.)
	meter_id          text COLLATE "C" NOT NULL,
	at                timestamptz NOT NULL DEFAULT now(),
	day               date NOT NULL,  -- local day it belongs to (consumption day for charges)
	kind              text NOT NULL CHECK (kind IN ('charge', 'standing', 'payment', 'adjustment')),
	amount            numeric(20,7) NOT NULL,   -- + credit, - charge
	-- charge: the reading interval, the part of it this entry prices
	from_seq          bigint,
	to_seq            bigint,
	from_ts           timestamptz,
	to_ts             timestamptz,
	energy_wh         bigint,
	tariff_version_id bigint,
	tier              integer,
	band              text,
	price             numeric(10,4),
	service_fee       numeric(10,4),
	anomaly_id        bigint,
	-- payment, adjustment
	reference         text,
	reason            text,
	author            text NOT NULL DEFAULT session_user
);
CREATE INDEX ledger_meter_day ON prepaid.ledger (meter_id, day);
CREATE UNIQUE INDEX ledger_standing_once ON prepaid.ledger (meter_id, day) WHERE kind = 'standing';
CREATE UNIQUE INDEX ledger_payment_once ON prepaid.ledger (meter_id, reference) WHERE kind = 'payment';

CREATE FUNCTION prepaid.ledger_append_only_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'prepaid.ledger is append-only: correct with prepaid.adjust()'
		USING ERRCODE = 'object_not_in_prerequisite_state';
END $$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON prepaid.ledger
	FOR EACH ROW EXECUTE FUNCTION prepaid.ledger_append_only_trigger();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON prepaid.ledger
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid.ledger_append_only_trigger();

-- A meter has history (readings, ledger): it is never deleted.
CREATE FUNCTION prepaid.meters_no_delete_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'meter %: meters are never deleted (they carry readings and a ledger)', OLD.meter_id
		USING ERRCODE = 'object_not_in_prerequisite_state';
END $$;
CREATE TRIGGER meters_no_delete BEFORE DELETE ON prepaid.meters
	FOR EACH ROW EXECUTE FUNCTION prepaid.meters_no_delete_trigger();

-- Operator actions on money and tariffs, naming the database role.
CREATE TABLE prepaid.operator_audit (
	id       bigserial PRIMARY KEY,
	at       timestamptz NOT NULL DEFAULT now(),
	actor    text NOT NULL DEFAULT session_user,
	action   text NOT NULL,
	meter_id text,
	detail   jsonb
);

CREATE TABLE prepaid.anomalies (
	id          bigserial PRIMARY KEY,
	meter_id    text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	kind        text NOT NULL CHECK (kind IN ('register_down', 'implausible_jump')),
	from_seq    bigint NOT NULL,
	to_seq      bigint NOT NULL,
	from_ts     timestamptz NOT NULL,
	to_ts       timestamptz NOT NULL,
	from_wh     bigint NOT NULL,
	to_wh       bigint NOT NULL,
	energy_wh   bigint NOT NULL,
	limit_wh    bigint,
	state       text NOT NULL CHECK (state IN ('noted', 'open', 'accepted', 'rejected')),
	detected_at timestamptz NOT NULL DEFAULT now(),
	resolved_by text,
	resolved_at timestamptz,
	note        text
);
CREATE INDEX anomalies_open ON prepaid.anomalies (meter_id) WHERE state = 'open';

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
CREATE FUNCTION prepaid.rate_intervals(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
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
	       prepaid.period_start(v.period, v.period_start_day, v.period_start_month, part.local0::date) AS pstart,
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
CREATE FUNCTION prepaid.charge(p_meter text[], p_from_seq bigint[], p_to_seq bigint[],
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
		SELECT * FROM prepaid.rate_intervals(p_meter, p_from_seq, p_to_seq, p_t0, p_t1, p_wh)
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
CREATE FUNCTION prepaid.fast_rate(m prepaid.meters, p_t0 timestamptz, p_t1 timestamptz,
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
CREATE FUNCTION prepaid.refresh_rate_cache(p_meter text[], p_at timestamptz[]) RETURNS void
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
CREATE FUNCTION prepaid.rate_cache_forget_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
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
CREATE TRIGGER sites_rate_cache AFTER UPDATE ON prepaid.sites
	FOR EACH ROW EXECUTE FUNCTION prepaid.rate_cache_forget_trigger();
CREATE TRIGGER meter_tariffs_rate_cache AFTER INSERT OR UPDATE ON prepaid.meter_tariffs
	FOR EACH ROW EXECUTE FUNCTION prepaid.rate_cache_forget_trigger();
CREATE TRIGGER tariff_versions_rate_cache AFTER INSERT ON prepaid.tariff_versions
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid.rate_cache_forget_trigger();
CREATE TRIGGER holidays_rate_cache AFTER INSERT OR UPDATE OR DELETE ON prepaid.holidays
	FOR EACH STATEMENT EXECUTE FUNCTION prepaid.rate_cache_forget_trigger();

CREATE FUNCTION prepaid.meters_rate_cache_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	NEW.rate_until := NULL;
	RETURN NEW;
END $$;
CREATE TRIGGER meters_rate_cache BEFORE UPDATE OF site_id, max_power_w ON prepaid.meters
	FOR EACH ROW WHEN (OLD.site_id IS DISTINCT FROM NEW.site_id
	                   OR OLD.max_power_w IS DISTINCT FROM NEW.max_power_w)
	EXECUTE FUNCTION prepaid.meters_rate_cache_trigger();

-- The full path of charging, for the meters whose new readings the fast
-- path of prepaid.ingest_batch() did not charge: every new interval between
-- consecutive readings (by seq), from the meter's latest reading before the
-- batch (p_last_*) through the batch's readings beyond it, is classified
-- (a register that went down is noted and never charged; a jump beyond the
-- power limit is held) and the rest rated and charged with the standing
-- days; then the meters' rate caches are refreshed. Readings older than the
-- meter's first one (p_first_*) form a second chain up to it.
CREATE FUNCTION prepaid.charge_slow(p_sm text[], p_last bigint[], p_last_ts timestamptz[],
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
	PERFORM prepaid.charge(coalesce(c_meter, '{}'), coalesce(c_fs, '{}'), coalesce(c_ts, '{}'),
	    coalesce(c_t0, '{}'), coalesce(c_t1, '{}'), coalesce(c_wh, '{}'),
	    coalesce(u_meter, '{}'), coalesce(u_from, '{}'), coalesce(u_ts, '{}'));
	PERFORM prepaid.refresh_rate_cache(u_meter, u_ts);
END $$;

-- ----------------------------------------------------------------- ingest

-- prepaid.ingest_batch() of 001, now also charging what the batch's readings
-- consumed, in the same transaction.
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
	s_first bigint[]; s_first_ts timestamptz[]; s_first_wh bigint[];
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
			       row_number() OVER (PARTITION BY u.m, u.s ORDER BY u.rcv) AS rn,
			       -- 1 for the meter's reading with the highest seq (its first copy)
			       row_number() OVER (PARTITION BY u.m ORDER BY u.s DESC, u.rcv) AS top,
			       -- 1 for the one with the lowest seq
			       row_number() OVER (PARTITION BY u.m ORDER BY u.s, u.rcv) AS bot
			FROM unnest(p_meter, p_seq, p_ts, p_energy, p_relay, p_power,
			            p_voltage, p_current, p_received)
			     AS u(m, s, t, e, r, pw, v, c, rcv)
			LEFT JOIN unnest(v_known, v_last, v_last_ts, v_last_wh, v_first, v_first_ts, v_first_wh)
			     AS k(m, last, lts, lwh, first, fts, fwh) ON k.m = u.m
		), cls AS (
			-- fresh: first copy in the batch, of a known meter, and either
			-- beyond the meter's last seq, before its first, or inside one
			-- of its open gaps.
			SELECT cls0.*,
			       known AND rn = 1 AND (old_last IS NULL OR s > old_last OR s < old_first
			           OR EXISTS (SELECT 1 FROM prepaid.gaps g
			                      WHERE g.meter_id = cls0.m AND g.filled_at IS NULL
			                        AND cls0.s BETWEEN g.from_seq AND g.to_seq)) AS fresh,
			       old_last IS NULL OR s > old_last AS ahead,
			       coalesce(s < old_first, false) AS behind
			FROM cls0
		), ins AS (
			INSERT INTO prepaid.readings (meter_id, seq, ts, energy_wh, relay,
			    power_w, voltage_v, current_a, received_at, ingested_at)
			SELECT m, s, t, e, r, pw, v, c, rcv, clock_timestamp() FROM cls WHERE fresh
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
			       mt.rate_day,
			       CASE WHEN a.nahead = 1 AND a.nbehind = 0 AND a.old_last IS NOT NULL
			            THEN prepaid.fast_rate(mt, a.old_ts, a.lt, a.le - a.old_wh) END AS amt
			FROM agg a JOIN prepaid.meters mt ON mt.meter_id = a.m
		), fled AS (
			INSERT INTO prepaid.ledger (meter_id, day, kind, amount, from_seq, to_seq, from_ts,
			    to_ts, energy_wh, tariff_version_id, tier, band, price, service_fee, author)
			SELECT m, rate_day, 'charge', -amt, old_last, ls, old_ts, lt, wh, rate_vid,
			       rate_tier, rate_band, rate_price, CASE WHEN amt = 0 THEN 0 ELSE rate_service END,
			       'prepaidd'
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
				balance = mt.balance - coalesce(a.amt, 0),
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
		       sl.m, sl.s, sl.t, sl.e, sl.fs, sl.ft, sl.fe
		INTO inserted, gaps, unknown, filled, s_meter, s_last, s_last_ts, s_last_wh,
		     s_first, s_first_ts, s_first_wh
		FROM (SELECT array_agg(m) AS m, array_agg(old_last) AS s, array_agg(old_ts) AS t,
		             array_agg(old_wh) AS e, array_agg(old_first) AS fs,
		             array_agg(old_first_ts) AS ft, array_agg(old_first_wh) AS fe
		      FROM fast WHERE (amt IS NULL AND nahead > 0) OR nbehind > 0) sl;
		duplicates := cardinality(p_meter) - inserted - unknown;
	END IF;

	-- Meters whose new readings the fast path above did not charge.
	IF s_meter IS NOT NULL THEN
		PERFORM prepaid.charge_slow(s_meter, s_last, s_last_ts, s_last_wh,
		    s_first, s_first_ts, s_first_wh, p_meter, p_seq, p_ts, p_energy);
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

-- -------------------------------------------------------- operator money

-- Lock a meter for a money change, or fail for an unknown one.
CREATE FUNCTION prepaid.lock_meter(p_meter text) RETURNS prepaid.meters
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

CREATE FUNCTION prepaid.local_day(p_meter text, p_at timestamptz) RETURNS date
LANGUAGE sql STABLE AS $$
	SELECT (p_at AT TIME ZONE s.time_zone)::date
	FROM prepaid.meters m JOIN prepaid.sites s ON s.site_id = m.site_id
	WHERE m.meter_id = p_meter
$$;

-- Credit a payment. Idempotent on (meter, reference): a repeat returns the
-- first entry and credits nothing.
CREATE FUNCTION prepaid.credit(p_meter text, p_amount numeric, p_reference text) RETURNS bigint
LANGUAGE plpgsql AS $$
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
	PERFORM prepaid.lock_meter(p_meter);
	SELECT entry_id INTO v_id FROM prepaid.ledger
	WHERE meter_id = p_meter AND kind = 'payment' AND reference = p_reference;
	IF FOUND THEN
		RETURN v_id;
	END IF;
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount, reference)
	VALUES (p_meter, prepaid.local_day(p_meter, now()), 'payment', p_amount, p_reference)
	RETURNING entry_id INTO v_id;
	UPDATE prepaid.meters SET balance = balance + p_amount WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('credit', p_meter, jsonb_build_object('amount', p_amount, 'reference', p_reference,
	    'entry_id', v_id));
	RETURN v_id;
END $$;

-- Adjust a balance (either sign) with a reason.
CREATE FUNCTION prepaid.adjust(p_meter text, p_amount numeric, p_reason text) RETURNS bigint
LANGUAGE plpgsql AS $$
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
	PERFORM prepaid.lock_meter(p_meter);
	INSERT INTO prepaid.ledger (meter_id, day, kind, amount, reason)
	VALUES (p_meter, prepaid.local_day(p_meter, now()), 'adjustment', p_amount, p_reason)
	RETURNING entry_id INTO v_id;
	UPDATE prepaid.meters SET balance = balance + p_amount WHERE meter_id = p_meter;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('adjust', p_meter, jsonb_build_object('amount', p_amount, 'reason', p_reason,
	    'entry_id', v_id));
	RETURN v_id;
END $$;

-- Accept a held implausible jump: it is rated now (on the tariff in force
-- over its interval and the period's consumption so far) and charged.
CREATE FUNCTION prepaid.accept_anomaly(p_id bigint, p_note text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
	a prepaid.anomalies;
	v_n integer;
BEGIN
	SELECT * INTO a FROM prepaid.anomalies WHERE id = p_id FOR UPDATE;
	IF NOT FOUND OR a.state <> 'open' THEN
		RAISE EXCEPTION 'anomaly % is not open', p_id USING ERRCODE = 'object_not_in_prerequisite_state';
	END IF;
	PERFORM prepaid.lock_meter(a.meter_id);
	v_n := prepaid.charge(ARRAY[a.meter_id], ARRAY[a.from_seq], ARRAY[a.to_seq],
	    ARRAY[CASE WHEN a.to_ts > a.from_ts THEN a.from_ts ELSE a.to_ts - interval '1 second' END],
	    ARRAY[a.to_ts], ARRAY[a.energy_wh], '{}', '{}', '{}', a.id);
	UPDATE prepaid.anomalies SET state = 'accepted', resolved_by = session_user,
	    resolved_at = now(), note = p_note WHERE id = p_id;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('accept_anomaly', a.meter_id, jsonb_build_object('anomaly', p_id, 'note', p_note,
	    'energy_wh', a.energy_wh, 'entries', v_n));
	RETURN v_n;
END $$;

-- Reject a held jump: it is never charged.
CREATE FUNCTION prepaid.reject_anomaly(p_id bigint, p_note text) RETURNS void
LANGUAGE plpgsql AS $$
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

-- Every meter whose balance is not the sum of its ledger. Always empty.
CREATE FUNCTION prepaid.verify_ledger()
RETURNS TABLE (meter_id text, balance numeric, ledger_sum numeric)
LANGUAGE sql STABLE AS $$
	SELECT m.meter_id, m.balance, coalesce(l.total, 0)
	FROM prepaid.meters m
	LEFT JOIN (SELECT x.meter_id, sum(x.amount) AS total FROM prepaid.ledger x GROUP BY x.meter_id) l
	       ON l.meter_id = m.meter_id
	WHERE m.balance <> coalesce(l.total, 0)
$$;

-- ------------------------------------------------------------------ views

CREATE VIEW prepaid.balances AS
SELECT m.meter_id, m.site_id, round(m.balance, 2) AS balance, m.balance AS balance_exact,
       m.last_ts AS last_reading_at, m.last_energy_wh,
       coalesce((SELECT x.tariff_id FROM prepaid.meter_tariffs x
                 WHERE x.meter_id = m.meter_id AND x.effective_from <= now()
                 ORDER BY x.effective_from DESC LIMIT 1), s.default_tariff_id) AS tariff_id
FROM prepaid.meters m JOIN prepaid.sites s ON s.site_id = m.site_id;

CREATE VIEW prepaid.open_anomalies AS
SELECT id, meter_id, kind, from_seq, to_seq, from_ts, to_ts, from_wh, to_wh, energy_wh,
       limit_wh, detected_at
FROM prepaid.anomalies WHERE state = 'open';

CREATE VIEW prepaid.recent_anomalies AS
SELECT * FROM prepaid.anomalies ORDER BY id DESC;

CREATE VIEW prepaid.site_daily AS
SELECT m.site_id, l.day,
       round(sum(l.energy_wh) FILTER (WHERE l.kind = 'charge') / 1000.0, 3) AS energy_kwh,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind = 'charge'), 0), 2) AS energy_charges,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind = 'standing'), 0), 2) AS standing_charges,
       round(coalesce(sum(l.amount) FILTER (WHERE l.kind = 'payment'), 0), 2) AS payments,
       round(coalesce(sum(l.amount) FILTER (WHERE l.kind = 'adjustment'), 0), 2) AS adjustments,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'standing')), 0), 2) AS revenue
FROM prepaid.ledger l JOIN prepaid.meters m ON m.meter_id = l.meter_id
GROUP BY m.site_id, l.day;

CREATE VIEW prepaid.site_monthly AS
SELECT m.site_id, date_trunc('month', l.day)::date AS month,
       round(sum(l.energy_wh) FILTER (WHERE l.kind = 'charge') / 1000.0, 3) AS energy_kwh,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind = 'charge'), 0), 2) AS energy_charges,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind = 'standing'), 0), 2) AS standing_charges,
       round(coalesce(sum(l.amount) FILTER (WHERE l.kind = 'payment'), 0), 2) AS payments,
       round(coalesce(sum(l.amount) FILTER (WHERE l.kind = 'adjustment'), 0), 2) AS adjustments,
       round(-coalesce(sum(l.amount) FILTER (WHERE l.kind IN ('charge', 'standing')), 0), 2) AS revenue
FROM prepaid.ledger l JOIN prepaid.meters m ON m.meter_id = l.meter_id
GROUP BY m.site_id, date_trunc('month', l.day);

-- A bill for a meter over local days [p_from, p_to]: the opening balance,
-- per day the energy and charges by tier and band, standing charges,
-- payments and adjustments, and the closing balance. Amounts are shown
-- rounded to the fen; the running balance is exact before its rounding.
CREATE FUNCTION prepaid.statement(p_meter text, p_from date, p_to date)
RETURNS TABLE (line_no bigint, day date, kind text, detail text, energy_kwh numeric,
    amount numeric, balance numeric)
LANGUAGE sql STABLE AS $$
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
