-- paypage.sql: the occupants' pay page. Each meter may have one pay link,
-- <public_url><path>/<token>, printed as a QR code on the meter box. The
-- token is 32 bytes of two gen_random_uuid() (244 random bits) in
-- base64url, 43 characters; only its SHA-256 is stored, so the link is
-- shown once, when it is issued or rotated, and a copy of the database
-- does not give anyone the links. The daemon serves the page and calls the
-- prepaid_internal.pay_page* functions with the token from the URL: they
-- answer for that token's meter only, and nothing for a wrong or revoked
-- token. Every issue, rotation and revocation is audited in
-- prepaid.operator_audit with the login role (session_user). Documented in
-- prepaidd-sql(7), PAY PAGE.
--
-- Functions, views and triggers only: tables are in the numbered migrations
-- (005_paypage.sql). `prepaidd --migrate` re-applies this file every time,
-- after the pending migrations, so every statement is idempotent: CREATE
-- OR REPLACE. A function whose result type changes, or a view whose
-- columns change or go, needs a DROP ... IF EXISTS before it. Objects in
-- prepaid are the operator interface (documented in prepaidd-sql(7));
-- those in prepaid_internal are called by the daemon and by the functions
-- here only.

-- ---------------------------------------------------------------- tables

COMMENT ON TABLE prepaid.pay_links IS
	'One pay-page link per meter; only the SHA-256 of its token is kept.';
COMMENT ON TABLE prepaid.pay_page_settings IS
	'The pay page''s public base URL (public_url and path), as the daemon last recorded it.';

-- ------------------------------------------------------------ internals

-- A new token: 32 random bytes in base64url without padding.
CREATE OR REPLACE FUNCTION prepaid_internal.pay_link_token() RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	SELECT rtrim(translate(encode(decode(
	    replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''),
	    'hex'), 'base64'), '+/', '-_'), '=')
$$;

-- The link of a token, from the base URL the daemon recorded.
CREATE OR REPLACE FUNCTION prepaid_internal.pay_link_url(p_token text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_base text;
BEGIN
	SELECT base_url INTO v_base FROM prepaid.pay_page_settings;
	IF v_base IS NULL THEN
		RAISE EXCEPTION 'pay page: no public URL known yet'
			USING ERRCODE = 'object_not_in_prerequisite_state',
			      HINT = 'set [paypage] path and public_url in prepaidd.conf and start prepaidd once';
	END IF;
	RETURN v_base || '/' || p_token;
END $$;

-- Give the meter a new token (its old link, if any, stops working);
-- returns the new link. Called by the operator functions below, as the
-- owner; the author recorded is the login role.
CREATE OR REPLACE FUNCTION prepaid_internal.pay_link_new(p_meter text, p_action text,
    p_reason text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_token text := prepaid_internal.pay_link_token();
	v_url text := prepaid_internal.pay_link_url(v_token);
BEGIN
	PERFORM prepaid_internal.lock_meter(p_meter);
	INSERT INTO prepaid.pay_links (meter_id, token_sha256, reason)
	VALUES (p_meter, sha256(convert_to(v_token, 'UTF8')), p_reason)
	ON CONFLICT (meter_id) DO UPDATE SET
	    token_sha256 = EXCLUDED.token_sha256, issued_at = now(), issued_by = session_user,
	    revoked_at = NULL, revoked_by = NULL, reason = EXCLUDED.reason;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES (p_action, p_meter, jsonb_build_object('reason', p_reason));
	RETURN v_url;
END $$;

-- The meter of an active token, or NULL.
CREATE OR REPLACE FUNCTION prepaid_internal.pay_link_meter(p_token text) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	SELECT l.meter_id FROM prepaid.pay_links l
	WHERE l.token_sha256 = sha256(convert_to(p_token, 'UTF8')) AND l.revoked_at IS NULL
$$;

-- ------------------------------------------------------------ operators

-- The meter's link, issued now if it has none. An active link cannot be
-- shown again (only its hash is kept): rotate it to print a new one.
CREATE OR REPLACE FUNCTION prepaid.pay_link(p_meter text) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	l prepaid.pay_links;
BEGIN
	SELECT * INTO l FROM prepaid.pay_links WHERE meter_id = p_meter;
	IF FOUND AND l.revoked_at IS NULL THEN
		RAISE EXCEPTION 'meter "%" has a pay link already, issued % by %', p_meter,
		    l.issued_at, l.issued_by
			USING ERRCODE = 'unique_violation',
			      HINT = 'only a hash of it is kept: prepaid.rotate_pay_link(meter, reason) issues a new one and ends the old';
	END IF;
	RETURN prepaid_internal.pay_link_new(p_meter, 'pay_link_issue', NULL);
END $$;
COMMENT ON FUNCTION prepaid.pay_link(text) IS
	'Issue a meter''s pay-page link and return it (shown once; an active link is refused: rotate it).';

-- Links for every meter of a site (or of all sites) that has none yet, for
-- printing labels in one go.
CREATE OR REPLACE FUNCTION prepaid.pay_links_issue(p_site text DEFAULT NULL)
RETURNS TABLE (meter_id text, url text)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_meter text;
BEGIN
	FOR v_meter IN
		SELECT m.meter_id FROM prepaid.meters m
		WHERE (p_site IS NULL OR m.site_id = p_site)
		  AND NOT EXISTS (SELECT 1 FROM prepaid.pay_links l WHERE l.meter_id = m.meter_id)
		ORDER BY m.meter_id
	LOOP
		meter_id := v_meter;
		url := prepaid_internal.pay_link_new(v_meter, 'pay_link_issue', NULL);
		RETURN NEXT;
	END LOOP;
END $$;
COMMENT ON FUNCTION prepaid.pay_links_issue(text) IS
	'Issue pay-page links for every meter of a site (or of all) that has none; returns meter and link.';

-- A new link for the meter; the old one shows nothing from now on.
CREATE OR REPLACE FUNCTION prepaid.rotate_pay_link(p_meter text, p_reason text) RETURNS text
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	SELECT prepaid_internal.pay_link_new(p_meter, 'pay_link_rotate', p_reason)
$$;
COMMENT ON FUNCTION prepaid.rotate_pay_link(text, text) IS
	'A new pay-page link for a meter, with a reason; the old one shows nothing from now on.';

-- The meter's link shows nothing from now on; pay_link issues a new one.
CREATE OR REPLACE FUNCTION prepaid.revoke_pay_link(p_meter text, p_reason text) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	UPDATE prepaid.pay_links SET revoked_at = now(), revoked_by = session_user,
	    reason = p_reason
	WHERE meter_id = p_meter AND revoked_at IS NULL;
	IF NOT FOUND THEN
		RETURN false;
	END IF;
	INSERT INTO prepaid.operator_audit (action, meter_id, detail)
	VALUES ('pay_link_revoke', p_meter, jsonb_build_object('reason', p_reason));
	RETURN true;
END $$;
COMMENT ON FUNCTION prepaid.revoke_pay_link(text, text) IS
	'End a meter''s pay-page link, with a reason; true if it had an active one.';

CREATE OR REPLACE VIEW prepaid.pay_link_status AS
SELECT m.meter_id, m.site_id,
       CASE WHEN l.meter_id IS NULL THEN 'none'
            WHEN l.revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS state,
       l.issued_at, l.issued_by, l.revoked_at, l.revoked_by, l.reason
FROM prepaid.meters m LEFT JOIN prepaid.pay_links l ON l.meter_id = m.meter_id;
COMMENT ON VIEW prepaid.pay_link_status IS
	'Each meter''s pay-page link: none, active or revoked, when and by whom, and why.';

-- ------------------------------------------------ what the daemon calls

-- The page's public base URL (public_url + path), when the daemon connects.
CREATE OR REPLACE FUNCTION prepaid_internal.set_pay_page_url(p_base_url text) RETURNS void
LANGUAGE sql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
	INSERT INTO prepaid.pay_page_settings (base_url) VALUES (rtrim(p_base_url, '/'))
	ON CONFLICT (one) DO UPDATE SET base_url = EXCLUDED.base_url, updated_at = now()
	WHERE prepaid.pay_page_settings.base_url IS DISTINCT FROM EXCLUDED.base_url
$$;

-- What the page shows: one row for an active token, none otherwise. use_wh
-- is the energy charged on each of the last p_days local days, oldest
-- first (0 for a day with none). restoring: a payment re-armed the meter
-- and the occupant has not restored power yet.
CREATE OR REPLACE FUNCTION prepaid_internal.pay_page(p_token text, p_days integer DEFAULT 7)
RETURNS TABLE (meter_id text, balance numeric, relay text, restoring boolean,
               today date, use_wh bigint[])
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	-- PL/pgSQL, not SQL: its plan is kept for the session, and planning
	-- would cost more than running it.
	IF p_days NOT BETWEEN 1 AND 31 THEN
		RAISE EXCEPTION 'pay page: days must be 1 to 31' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
	SELECT m.meter_id::text, round(m.balance, 2), m.relay,
	       EXISTS (SELECT 1 FROM prepaid.restores r
	               WHERE r.meter_id = m.meter_id AND r.state IN ('pending', 'armed')),
	       d.today,
	       ARRAY(SELECT coalesce(u.wh, 0)::bigint
	             FROM generate_series(0, p_days - 1) AS x(i)
	             LEFT JOIN (SELECT g.day, sum(g.energy_wh) AS wh FROM prepaid.ledger g
	                        WHERE g.meter_id = m.meter_id AND g.kind = 'charge'
	                          AND g.day > d.today - p_days AND g.day <= d.today
	                        GROUP BY g.day) u ON u.day = d.today - (p_days - 1) + x.i
	             ORDER BY x.i)
	FROM prepaid.pay_links l
	JOIN prepaid.meters m ON m.meter_id = l.meter_id
	JOIN prepaid.sites s ON s.site_id = m.site_id
	CROSS JOIN LATERAL (SELECT (now() AT TIME ZONE s.time_zone)::date AS today) d
	WHERE l.token_sha256 = sha256(convert_to(p_token, 'UTF8')) AND l.revoked_at IS NULL;
END $$;

-- An order for the token's meter (prepaid.create_order), or an error.
-- At most 10 orders of a meter are pending from the page at once, so a
-- link cannot fill the orders table.
CREATE OR REPLACE FUNCTION prepaid_internal.pay_page_order(p_token text, p_amount numeric,
    p_provider text, p_valid_for interval DEFAULT interval '30 minutes')
RETURNS TABLE (out_trade_no text, meter_id text, amount numeric)
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
DECLARE
	v_meter text := prepaid_internal.pay_link_meter(p_token);
BEGIN
	IF v_meter IS NULL THEN
		RAISE EXCEPTION 'pay page: no such link' USING ERRCODE = 'no_data_found';
	END IF;
	IF (SELECT count(*) FROM prepaid.orders o
	    WHERE o.meter_id = v_meter AND o.state = 'pending' AND o.expires_at > now()
	      AND o.created_by = session_user) >= 10 THEN
		RAISE EXCEPTION 'pay page: too many pending orders for meter "%"', v_meter
			USING ERRCODE = 'program_limit_exceeded';
	END IF;
	out_trade_no := prepaid.create_order(v_meter, p_amount, p_provider, p_valid_for);
	meter_id := v_meter;
	amount := p_amount;
	RETURN NEXT;
END $$;

-- An order of the token's meter as the result page shows it (state as
-- prepaid.order_status has it); no row for another meter's order.
CREATE OR REPLACE FUNCTION prepaid_internal.pay_page_result(p_token text, p_out_trade_no text)
RETURNS TABLE (meter_id text, amount numeric, state text, balance numeric, relay text,
               restoring boolean)
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, prepaid, prepaid_internal, pg_temp
AS $$
BEGIN
	RETURN QUERY
	SELECT o.meter_id::text, o.amount,
	       CASE WHEN o.state = 'pending' AND o.expires_at <= now() THEN 'expired' ELSE o.state END,
	       round(m.balance, 2), m.relay,
	       EXISTS (SELECT 1 FROM prepaid.restores r
	               WHERE r.meter_id = m.meter_id AND r.state IN ('pending', 'armed'))
	FROM prepaid.orders o
	JOIN prepaid.meters m ON m.meter_id = o.meter_id
	JOIN prepaid.pay_links l ON l.meter_id = o.meter_id
	WHERE o.out_trade_no = p_out_trade_no
	  AND l.token_sha256 = sha256(convert_to(p_token, 'UTF8')) AND l.revoked_at IS NULL;
END $$;
