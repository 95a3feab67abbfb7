-- 003_durability.sql: the record of broker sessions found lost (issue 11).
-- Each time a daemon reconnected and found that the broker had not kept its
-- session (so what the broker had queued for it is gone), with what was
-- done about it. Written only by prepaid_internal.broker_session_lost()
-- (sql/meters.sql); append-only: no runtime role may update or delete it.
CREATE TABLE prepaid.session_losses (
	id        bigserial PRIMARY KEY,
	at        timestamptz NOT NULL DEFAULT now(),
	client_id text NOT NULL,
	hours     integer NOT NULL,   -- meters seen within this many hours ...
	meters    integer NOT NULL,   -- ... were asked to resend: this many
	rate      integer NOT NULL,   -- resend commands a second
	last_due  timestamptz         -- when the last of them is due
);
