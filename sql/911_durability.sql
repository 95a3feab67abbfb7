-- 911_durability.sql: what the daemon's durability needs from the database
-- (issue 11): meter events stored once however often they arrive, and the
-- record and remedy of a broker that lost the daemon's session.

-- ---------------------------------------------------------------- events

-- An event can arrive more than once: replayed from the daemon's journal
-- after a crash (when its batch had committed but the journal was not yet
-- trimmed), or received by every daemon, since events and acknowledgements
-- are subscribed to unshared so that they reach a live one. It is stored
-- once: a repeat of (meter, ts, type, relay, cause) is skipped. Batches that
-- touch a meter are serialised on its row lock in prepaid.ingest_batch(), so
-- the check sees any earlier copy.
CREATE FUNCTION prepaid.events_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM prepaid.events e
	           WHERE e.meter_id = NEW.meter_id AND e.ts = NEW.ts AND e.type = NEW.type
	             AND e.relay IS NOT DISTINCT FROM NEW.relay
	             AND e.cause IS NOT DISTINCT FROM NEW.cause) THEN
		RETURN NULL;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER events_once BEFORE INSERT ON prepaid.events
	FOR EACH ROW EXECUTE FUNCTION prepaid.events_once();

-- ------------------------------------------------------ broker sessions

-- Each time a daemon reconnected and found that the broker had not kept its
-- session (so what the broker had queued for it is gone), with what was
-- done about it.
CREATE TABLE prepaid.session_losses (
	id        bigserial PRIMARY KEY,
	at        timestamptz NOT NULL DEFAULT now(),
	client_id text NOT NULL,
	hours     integer NOT NULL,   -- meters seen within this many hours ...
	meters    integer NOT NULL,   -- ... were asked to resend: this many
	rate      integer NOT NULL,   -- resend commands a second
	last_due  timestamptz         -- when the last of them is due
);
COMMENT ON TABLE prepaid.session_losses IS
	'Broker sessions found lost on reconnect, and the resends requested for them.';

-- The broker lost the session of daemon p_client_id: ask every meter seen in
-- the last p_hours hours to resend from its last stored reading on, at most
-- p_rate requests a second (spread through next_attempt_at of the command
-- outbox), record the loss and raise an alert. Returns the number of meters.
CREATE FUNCTION prepaid.broker_session_lost(p_client_id text, p_hours integer,
    p_rate integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
	v_n integer;
	v_last timestamptz;
BEGIN
	IF p_hours IS NULL OR p_hours < 1 OR p_rate IS NULL OR p_rate < 1 THEN
		RAISE EXCEPTION 'broker_session_lost: hours and rate must be positive';
	END IF;
	WITH m AS (
		SELECT meter_id, last_seq,
		       now() + (row_number() OVER (ORDER BY last_seen DESC, meter_id) - 1)
		               * interval '1 second' / p_rate AS due
		FROM prepaid.meters
		WHERE last_seq IS NOT NULL
		  AND last_seen >= now() - make_interval(hours => p_hours)
	), ins AS (
		INSERT INTO prepaid.commands (meter_id, action, from_seq, reason, valid_until,
		    next_attempt_at)
		SELECT meter_id, 'resend', last_seq + 1,
		       'broker session of ' || p_client_id || ' lost', due + interval '5 minutes', due
		FROM m
		RETURNING next_attempt_at
	)
	SELECT count(*), max(next_attempt_at) INTO v_n, v_last FROM ins;
	INSERT INTO prepaid.session_losses (client_id, hours, meters, rate, last_due)
	VALUES (p_client_id, p_hours, v_n, p_rate, v_last);
	PERFORM pg_notify('prepaid_alerts', format('the broker lost the session of %s: '
	    'what it had queued is gone; %s meter(s) seen in the last %s h asked to resend',
	    p_client_id, v_n, p_hours));
	PERFORM pg_notify('prepaid_commands', '');
	RETURN v_n;
END $$;
COMMENT ON FUNCTION prepaid.broker_session_lost(text, integer, integer) IS
	'Called by the daemon when the broker lost its session: queue throttled resends.';
