-- 912_hardening.sql: prepaid.payment_rejects is kept bounded (issue 11).
--
-- A forgery flood has every refusal audited, up to 100 a second (8.6 M
-- rows a day). The daemon keeps the newest [payments] rejects_keep rows
-- that were never verified, calling prepaid.prune_payment_rejects after
-- every 100 audited refusals, as ingest_batch prunes prepaid.rejects to
-- [ingest] rejects_keep. Rows of a verified callback (one that carried a
-- real payment and was still refused, e.g. by the database) are evidence
-- about money and are never pruned.

CREATE FUNCTION prepaid.prune_payment_rejects(p_keep integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, prepaid
AS $$
DECLARE
	v_n bigint;
BEGIN
	IF p_keep IS NULL OR p_keep < 100 THEN
		RAISE EXCEPTION 'prune_payment_rejects: keep must be at least 100, not %', p_keep;
	END IF;
	DELETE FROM prepaid.payment_rejects
	WHERE NOT verified
	  AND id <= (SELECT max(id) FROM prepaid.payment_rejects) - p_keep;
	GET DIAGNOSTICS v_n = ROW_COUNT;
	RETURN v_n;
END $$;
COMMENT ON FUNCTION prepaid.prune_payment_rejects(integer) IS
    'Delete the unverified payment_rejects rows older than the newest p_keep rows '
    '(verified ones are kept); returns how many were deleted. Called by the daemon.';
REVOKE ALL ON FUNCTION prepaid.prune_payment_rejects(integer) FROM PUBLIC;
