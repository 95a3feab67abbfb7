-- roles.sql: who may do what. The group roles (NOLOGIN) that `prepaidd
-- --migrate` creates, and that a site grants to its login roles:
--
--   prepaid_owner     owns every object; only --migrate acts as it.
--   prepaid_daemon    the running daemon: EXECUTE on the internal functions
--                     it calls, INSERT on payment_rejects, and the schema
--                     version; nothing that could change history.
--   prepaid_operator  office and field staff: the views and tables, commands,
--                     trip approvals, keep-power, the breaker, anomalies,
--                     call tasks, occupants and messages, and the settings
--                     of sites, holidays, policies, templates and breakers.
--   prepaid_finance   credits, adjustments, orders, held payments, tariffs,
--                     statements, and reading what operators read.
--   prepaid_readonly  auditors and reporting: the views and statements.
--
-- prepaidd-sql(7), section CATALOG, says the same per object, and
-- tests/it/roles.sh checks one against the other on a real server.
--
-- Applied last of the concern files, every --migrate, in the same
-- transaction: every privilege of the runtime roles on the two schemas is
-- revoked first and granted again below, so this file is the whole truth.
-- The runtime roles own nothing, so none of them can disable a trigger,
-- alter a table or replace a function; readings, ledger, payments and the
-- audit tables are written only through functions that run as the owner
-- (SECURITY DEFINER, search_path pinned), and append-only triggers refuse
-- an UPDATE or DELETE of them even there.

-- ---------------------------------------------------------------- reset

REVOKE ALL ON SCHEMA prepaid, prepaid_internal FROM PUBLIC,
    prepaid_daemon, prepaid_operator, prepaid_finance, prepaid_readonly;
REVOKE ALL ON ALL TABLES IN SCHEMA prepaid, prepaid_internal FROM PUBLIC,
    prepaid_daemon, prepaid_operator, prepaid_finance, prepaid_readonly;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA prepaid, prepaid_internal FROM PUBLIC,
    prepaid_daemon, prepaid_operator, prepaid_finance, prepaid_readonly;
-- Functions are EXECUTE to PUBLIC by default.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA prepaid, prepaid_internal FROM PUBLIC,
    prepaid_daemon, prepaid_operator, prepaid_finance, prepaid_readonly;
ALTER DEFAULT PRIVILEGES FOR ROLE prepaid_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

GRANT USAGE ON SCHEMA prepaid TO prepaid_daemon, prepaid_operator, prepaid_finance,
    prepaid_readonly;
GRANT USAGE ON SCHEMA prepaid_internal TO prepaid_daemon;

-- --------------------------------------------------------------- daemon

GRANT EXECUTE ON FUNCTION
    prepaid_internal.ingest_batch(text[], bigint[], timestamptz[], bigint[], text[],
        double precision[], double precision[], double precision[], timestamptz[],
        jsonb, jsonb, jsonb, boolean, boolean, integer, text),
    prepaid_internal.claim_commands(integer, interval, interval),
    prepaid_internal.claim_messages(text[], text[], boolean[], integer[], interval),
    prepaid_internal.finish_message(bigint, integer, text, text, integer, text, text, text,
        integer, interval),
    prepaid_internal.finish_messages(jsonb),
    prepaid_internal.ladder_sweep(integer),
    prepaid_internal.ensure_partitions(integer),
    prepaid_internal.record_payment(text, text, text, bigint, text, text, timestamptz,
        timestamptz, boolean, boolean),
    prepaid_internal.record_payment_notice(text, text, text, text, text, text, bigint,
        timestamptz),
    prepaid_internal.prune_payment_rejects(integer),
    prepaid_internal.broker_session_lost(text, integer, integer)
TO prepaid_daemon;
GRANT SELECT ON prepaid.schema_migrations, prepaid.schema_code TO prepaid_daemon;
-- Refused payment callbacks are written after the answer, outside a
-- function: an insert only, and the table is append-only.
GRANT INSERT ON prepaid.payment_rejects TO prepaid_daemon;
GRANT USAGE ON SEQUENCE prepaid.payment_rejects_id_seq TO prepaid_daemon;

-- ---------------------------------------------------------------- views

-- Every view of the interface is for every person's role. Views run with
-- their owner's rights on the tables behind them.
DO $$
DECLARE
	v text;
BEGIN
	FOR v IN SELECT c.relname FROM pg_class c
	         WHERE c.relnamespace = 'prepaid'::regnamespace AND c.relkind = 'v' LOOP
		EXECUTE format('GRANT SELECT ON prepaid.%I TO prepaid_operator, prepaid_finance, '
		               'prepaid_readonly', v);
	END LOOP;
END $$;

-- Functions that only read, for everyone who reads.
GRANT EXECUTE ON FUNCTION
    prepaid.now(),
    prepaid.day_type(text, date),
    prepaid.meter_policy(text),
    prepaid.statement(text, date, date),
    prepaid.verify_ledger()
TO prepaid_operator, prepaid_finance, prepaid_readonly;
-- prepaid.now() and prepaid.day_type() read these as the caller.
GRANT SELECT ON prepaid.clock, prepaid.holidays TO prepaid_readonly;
-- The record of broker sessions lost, for auditors too (append-only: only
-- broker_session_lost() writes it, as the owner).
GRANT SELECT ON prepaid.session_losses TO prepaid_readonly;

-- --------------------------------------------------------------- operator

-- Staff read the tables too (prepaidd-sql(7) describes them).
GRANT SELECT ON ALL TABLES IN SCHEMA prepaid TO prepaid_operator, prepaid_finance;

GRANT EXECUTE ON FUNCTION
    prepaid.trip(text, text, interval),
    prepaid.arm(text, text, interval),
    prepaid.close(text, text, interval),
    prepaid.resend(text, bigint, interval),
    prepaid.send_command(text, text, text, interval, bigint),
    prepaid.cancel_command(text, text),
    prepaid.register_meter(text),
    prepaid.create_site(text, text, text),
    prepaid.set_meter_site(text, text),
    prepaid.approve_trip(text),
    prepaid.cancel_trip(text, text),
    prepaid.keep_power(text, boolean, text, timestamptz),
    prepaid.release_breaker(text),
    prepaid.accept_anomaly(bigint, text),
    prepaid.reject_anomaly(bigint, text),
    prepaid.call_done(bigint, text),
    prepaid.move_in(text, text, text, text, text),
    prepaid.move_out(text),
    prepaid.send_message(text, text, text, jsonb),
    prepaid.cancel_message(bigint, text),
    prepaid.move_clock(interval, text)
TO prepaid_operator;

-- Settings operators keep in the tables themselves. The triggers these
-- writes fire and that touch other tables run as the owner.
GRANT INSERT, UPDATE, DELETE ON prepaid.holidays, prepaid.message_templates,
    prepaid.policies, prepaid.policy_steps TO prepaid_operator;
GRANT UPDATE (max_trips, window_len) ON prepaid.trip_breakers TO prepaid_operator;
GRANT INSERT (scope, max_trips, window_len) ON prepaid.trip_breakers TO prepaid_operator;
GRANT UPDATE (name, time_zone, calendar, max_power_w, quiet_from, quiet_until,
    payment_link, policy_id) ON prepaid.sites TO prepaid_operator;
GRANT UPDATE (max_power_w, policy_id, restore_mode) ON prepaid.meters TO prepaid_operator;
GRANT UPDATE (name, phone, email, language) ON prepaid.occupants TO prepaid_operator;

-- ---------------------------------------------------------------- finance

GRANT EXECUTE ON FUNCTION
    prepaid.credit(text, numeric, text),
    prepaid.adjust(text, numeric, text),
    prepaid.create_order(text, numeric, text, interval),
    prepaid.apply_payment(bigint, text, text),
    prepaid.reject_payment(bigint, text),
    prepaid.create_tariff(text, text),
    prepaid.create_tariff_version(text, timestamptz, jsonb),
    prepaid.assign_tariff(text, text, timestamptz)
TO prepaid_finance;
GRANT UPDATE (default_tariff_id) ON prepaid.sites TO prepaid_finance;
