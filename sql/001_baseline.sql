-- 001_baseline.sql: the tables of prepaidd, their indexes, constraints and
-- shipped data (sites, policies, message templates, the breaker, the clock).
-- Functions, views and triggers are not here: they live one file per concern
-- (meters.sql, rating.sql, ledger.sql, ladder.sql, payments.sql, roles.sql)
-- and `prepaidd --migrate` re-applies them after the numbered migrations,
-- every time. This file squashes the pre-release migrations 001-006; from the
-- first release on, a landed migration is never edited: a table change is a
-- new numbered file. Documented in prepaidd-sql(7).
--
-- Money is NUMERIC, never floating point. Energy is integer Wh; prices are
-- yuan per kWh with at most 4 decimals, so an amount energy_wh * price /
-- 1000 is exact with 7 decimals: the ledger keeps numeric(20,7) and nothing
-- is rounded inside. Views round to 0.01 yuan (round(): half away from zero).

CREATE SCHEMA IF NOT EXISTS prepaid;           -- the operator interface
CREATE SCHEMA IF NOT EXISTS prepaid_internal;  -- what the daemon and triggers call

-- ----------------------------------------------------------------- tariffs

CREATE TABLE prepaid.tariffs (
	tariff_id  text COLLATE "C" PRIMARY KEY,
	name       text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	created_by text NOT NULL DEFAULT session_user
);

-- ---------------------------------------------------------------- policies

CREATE TABLE prepaid.policies (
	policy_id           text PRIMARY KEY,
	name                text NOT NULL,
	trip_level          numeric(20,2) NOT NULL,  -- a trip is due when balance <= this
	grace               interval NOT NULL DEFAULT '0',  -- after reaching the trip level
	trip_needs_approval boolean NOT NULL,
	restore_level       numeric(20,2) NOT NULL,  -- the episode ends at balance >= this
	restore_mode        text NOT NULL DEFAULT 'arm' CHECK (restore_mode IN ('arm', 'close')),
	-- trip guards
	trip_quiet_from     time NOT NULL DEFAULT '18:00',   -- no trips from ...
	trip_quiet_until    time NOT NULL DEFAULT '08:00',   -- ... to (site's local time)
	trip_on_rest_days   boolean NOT NULL DEFAULT false,  -- weekends and holidays
	reading_max_age     interval NOT NULL DEFAULT '2 hours',
	trip_valid_for      interval NOT NULL DEFAULT '10 minutes'
);

CREATE TABLE prepaid.policy_steps (
	policy_id    text NOT NULL REFERENCES prepaid.policies ON UPDATE CASCADE,
	step_no      integer NOT NULL CHECK (step_no >= 1),
	threshold    numeric(20,2) NOT NULL,   -- the step applies when balance < threshold
	channels     text[] NOT NULL CHECK (channels <@ ARRAY['sms', 'email', 'call']),
	template_key text NOT NULL,
	repeat_every interval,                 -- NULL: once
	repeat_count integer NOT NULL DEFAULT 1 CHECK (repeat_count >= 1),
	PRIMARY KEY (policy_id, step_no)
);

INSERT INTO prepaid.policies (policy_id, name, trip_level, grace, trip_needs_approval,
    restore_level, trip_on_rest_days) VALUES
('community', 'Residential community: reminders, collection, approved trip', -50, '3 days',
 true, 20, false),
('rental', 'Rental apartment: a warning, then an automatic trip', 0, '0', false, 10, true);
INSERT INTO prepaid.policy_steps (policy_id, step_no, threshold, channels, template_key,
    repeat_every, repeat_count) VALUES
('community', 1, 20, '{sms}', 'low_balance', '1 day', 2),
('community', 2, 0, '{sms,email,call}', 'arrears', '2 days', 3),
('rental', 1, 10, '{sms}', 'low_balance', NULL, 1);

-- ------------------------------------------------------------------- sites

CREATE TABLE prepaid.sites (
	site_id           text COLLATE "C" PRIMARY KEY,
	name              text NOT NULL,
	time_zone         text NOT NULL DEFAULT 'Asia/Shanghai',
	calendar          text NOT NULL DEFAULT 'CN',
	max_power_w       bigint NOT NULL DEFAULT 60000 CHECK (max_power_w > 0),
	default_tariff_id text REFERENCES prepaid.tariffs,
	created_at        timestamptz NOT NULL DEFAULT now(),
	-- Quiet hours for messages, in the site's time zone: nothing is sent from
	-- quiet_from to quiet_until (wrapping midnight); messages wait for the end.
	quiet_from        time NOT NULL DEFAULT '21:00',
	quiet_until       time NOT NULL DEFAULT '08:00',
	payment_link      text,
	policy_id         text NOT NULL DEFAULT 'community'
	                  REFERENCES prepaid.policies ON UPDATE CASCADE
);
INSERT INTO prepaid.sites (site_id, name) VALUES ('default', 'Default site');

-- Rest days and make-up working days (调休), shared by tariffs (time-of-use
-- day types) and, later, by trip guards.
CREATE TABLE prepaid.holidays (
	calendar text NOT NULL DEFAULT 'CN',
	day      date NOT NULL,
	kind     text NOT NULL CHECK (kind IN ('holiday', 'workday')),
	name     text,
	PRIMARY KEY (calendar, day)
);

-- ------------------------------------------------------------------ meters

CREATE TABLE prepaid.meters (
	meter_id          text COLLATE "C" PRIMARY KEY
	                  CHECK (meter_id ~ '^[A-Za-z0-9_.-]{1,32}$'),
	registered_at     timestamptz NOT NULL DEFAULT now(),
	auto_registered   boolean NOT NULL DEFAULT false,
	last_seq          bigint,          -- highest seq accepted
	last_ts           timestamptz,     -- ts of that reading
	last_energy_wh    bigint,          -- its register
	relay             text CHECK (relay IN ('closed', 'open', 'armed')),
	relay_at          timestamptz,     -- when the meter reported it
	relay_source      text CHECK (relay_source IN ('reading', 'event', 'ack')),
	last_seen         timestamptz,     -- last message of any kind
	readings          bigint NOT NULL DEFAULT 0,
	duplicates        bigint NOT NULL DEFAULT 0,
	site_id           text COLLATE "C" NOT NULL DEFAULT 'default' REFERENCES prepaid.sites,
	max_power_w       bigint CHECK (max_power_w > 0),  -- NULL: the site's
	balance           numeric(20,7) NOT NULL DEFAULT 0,
	period_start      date,       -- billing period of period_wh
	period_wh         bigint NOT NULL DEFAULT 0,
	standing_through  date,   -- last local day with its standing charge
	-- The meter's reading with the lowest seq: a reading older than it
	-- (meters may deliver out of order, several daemons may race) is still
	-- new, and the interval from it to this one is charged.
	first_seq         bigint,
	first_ts          timestamptz,
	first_wh          bigint,
	-- The rate cache: how the meter's next interval is priced if it lies in
	-- [rate_from, rate_until] (one local day, one tariff version, one band)
	-- and stays inside the tier range [rate_lo, rate_hi) of period rate_period.
	-- Kept by prepaid_internal.refresh_rate_cache(); rate_until NULL means unknown.
	-- It lets prepaid_internal.ingest_batch() charge the common interval with no
	-- tariff lookup at all (prepaid_internal.fast_rate); anything else is rated in full.
	rate_from         timestamptz,
	rate_until        timestamptz,
	rate_vid          bigint,           -- NULL with rate_until set: no tariff
	rate_day          date,
	rate_period       date,
	rate_lo           bigint,
	rate_hi           bigint,
	rate_tier         integer,
	rate_band         text,
	rate_free         boolean,
	rate_price        numeric(10,4),  -- band price + tier price (0 when free)
	rate_service      numeric(10,4),
	rate_max_power_w  bigint,
	policy_id         text REFERENCES prepaid.policies ON UPDATE CASCADE, -- NULL: the site's
	ladder_watch      numeric(20,2),      -- the policy's first threshold (cached)
	ladder_due_at     timestamptz,       -- when the sweep should look at it
	ladder_rearmed    boolean NOT NULL DEFAULT true, -- a new episode may start
	keep_power        boolean NOT NULL DEFAULT false,
	keep_power_until  timestamptz,
	keep_power_reason text,
	restore_mode      text CHECK (restore_mode IN ('arm', 'close')),  -- NULL: the policy's
	-- The ladder's bounds: due when balance < ladder_low, balance <= ladder_trip
	-- (a NULL one is never crossed) or balance >= ladder_high; all three in force
	-- only while ladder_high is set.
	ladder_low        numeric(20,2),
	ladder_trip       numeric(20,2),
	ladder_high       numeric(20,2)
) WITH (fillfactor = 70);  -- room for HOT updates: every batch updates its meters
CREATE INDEX meters_ladder_due ON prepaid.meters (ladder_due_at) WHERE ladder_due_at IS NOT NULL;

-- -------------------------------------------------------------- readings

-- Partitioned by month of ts (UTC). A partition for the current month and
-- the next [ingest] partitions_ahead months is kept by the daemon through
-- prepaid_internal.ensure_partitions(); readings outside them land in the default
-- partition and are moved when their month's partition is created.
-- De-duplication on (meter, seq) cannot be a unique index across time
-- partitions: it is enforced by prepaid_internal.ingest_batch() from the meter's
-- last_seq and its open gaps, under a row lock on the meter. (A unique index
-- with ON CONFLICT would only catch repeats with the same ts, and its
-- per-row check cost a sixth of the ingest time.)
CREATE TABLE prepaid.readings (
	meter_id    text COLLATE "C" NOT NULL,
	seq         bigint NOT NULL,
	ts          timestamptz NOT NULL,
	energy_wh   bigint NOT NULL CHECK (energy_wh >= 0),
	relay       text,
	power_w     double precision,
	voltage_v   double precision,
	current_a   double precision,
	received_at timestamptz NOT NULL,   -- when the daemon received it
	ingested_at timestamptz NOT NULL    -- when it was written (just before commit)
) PARTITION BY RANGE (ts);
CREATE INDEX readings_meter_seq ON prepaid.readings (meter_id, seq);
CREATE TABLE prepaid.readings_default PARTITION OF prepaid.readings DEFAULT;

-- ------------------------------------------------------------------ gaps

-- A run of sequence numbers [from_seq, to_seq] that a meter skipped. When
-- readings of the run arrive later (a resend), the run shrinks or splits;
-- filled_at is set once none of it is missing.
CREATE TABLE prepaid.gaps (
	id                bigserial PRIMARY KEY,
	meter_id          text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	from_seq          bigint NOT NULL,
	to_seq            bigint NOT NULL CHECK (to_seq >= from_seq),
	detected_at       timestamptz NOT NULL DEFAULT now(),
	filled_at         timestamptz,
	resend_command_id text
);
CREATE INDEX gaps_open ON prepaid.gaps (meter_id, from_seq) WHERE filled_at IS NULL;

-- --------------------------------------------------------------- rejects

-- Input the daemon could not accept, with the reason, kept for inspection.
-- Bounded: the daemon keeps the newest [ingest] rejects_keep rows.
CREATE TABLE prepaid.rejects (
	id          bigserial PRIMARY KEY,
	received_at timestamptz NOT NULL,
	meter_id    text COLLATE "C",           -- NULL when the topic named no valid meter
	topic       text NOT NULL,
	reason      text NOT NULL,
	payload     bytea           -- as received (truncated to 4 KiB)
);
CREATE INDEX rejects_meter ON prepaid.rejects (meter_id, id);

-- ---------------------------------------------------------------- events

CREATE TABLE prepaid.events (
	id          bigserial PRIMARY KEY,
	meter_id    text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	ts          timestamptz NOT NULL,
	type        text NOT NULL,
	relay       text,
	cause       text,
	received_at timestamptz NOT NULL
);
CREATE INDEX events_meter ON prepaid.events (meter_id, ts);

-- -------------------------------------------------------------- commands

-- The command outbox. A row is written first (by an operator function, or by
-- the daemon for resends); the daemon claims due rows with FOR UPDATE SKIP
-- LOCKED, marks them sent in a committed transaction, then publishes, and
-- publishes again with backoff until the meter acknowledges or valid_until
-- passes. A command is never published after valid_until: it is expired.
CREATE TABLE prepaid.commands (
	id              text PRIMARY KEY DEFAULT gen_random_uuid()::text,
	meter_id        text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	action          text NOT NULL CHECK (action IN ('trip', 'arm', 'close',
	                    'keep_power_on', 'keep_power_off', 'resend')),
	from_seq        bigint,
	reason          text,
	state           text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued',
	                    'sent', 'acked', 'rejected', 'unsupported', 'expired', 'cancelled',
	                    'quarantined', 'unknown')),
	created_at      timestamptz NOT NULL DEFAULT now(),
	created_by      text NOT NULL DEFAULT session_user,
	valid_until     timestamptz NOT NULL,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	attempts        integer NOT NULL DEFAULT 0,
	sent_at         timestamptz,
	acked_at        timestamptz,
	result          text,
	relay_after     text,
	detail          text,
	-- Trips of the ladder pass every guard; a trip an operator asked for by
	-- hand (prepaid.trip) passes keep-power and the breaker only.
	ladder          boolean NOT NULL DEFAULT false,
	CHECK (action <> 'resend' OR from_seq IS NOT NULL)
);
CREATE INDEX commands_due ON prepaid.commands (next_attempt_at)
	WHERE state IN ('queued', 'sent');
CREATE INDEX commands_expiry ON prepaid.commands (valid_until)
	WHERE state IN ('queued', 'sent');
CREATE INDEX commands_meter ON prepaid.commands (meter_id, created_at);

-- One row per state change of a command (and per re-send), naming the
-- database role and the application that made it.
CREATE TABLE prepaid.command_audit (
	id          bigserial PRIMARY KEY,
	command_id  text NOT NULL,
	at          timestamptz NOT NULL DEFAULT clock_timestamp(),
	actor       text NOT NULL,
	application text,
	old_state   text,
	new_state   text NOT NULL,
	attempt     integer,
	detail      text
);
CREATE INDEX command_audit_command ON prepaid.command_audit (command_id, id);

-- --------------------------------------------------------- tariff versions

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

-- --------------------------------------------------------------- occupants

CREATE TABLE prepaid.occupants (
	occupant_id bigserial PRIMARY KEY,
	name        text NOT NULL,
	phone       text,           -- E.164 preferred: +8613800138000
	email       text,
	language    text NOT NULL DEFAULT 'zh' CHECK (language IN ('zh', 'en')),
	created_at  timestamptz NOT NULL DEFAULT now()
);

-- Who lives at a meter: an occupant moves in, and out; another moves in.
CREATE TABLE prepaid.meter_occupants (
	meter_id    text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	occupant_id bigint NOT NULL REFERENCES prepaid.occupants,
	moved_in    timestamptz NOT NULL DEFAULT now(),
	moved_out   timestamptz,
	PRIMARY KEY (meter_id, moved_in)
);
CREATE UNIQUE INDEX meter_occupants_current ON prepaid.meter_occupants (meter_id)
	WHERE moved_out IS NULL;

-- -------------------------------------------------------------- templates

-- Message texts with {{placeholders}}: name, meter, balance, amount_due,
-- link (and whatever the caller adds in extra). Edit freely in SQL.
CREATE TABLE prepaid.message_templates (
	template_key text NOT NULL,
	channel      text NOT NULL CHECK (channel IN ('sms', 'email')),
	language     text NOT NULL CHECK (language IN ('zh', 'en')),
	subject      text,           -- e-mail only
	body         text NOT NULL,
	PRIMARY KEY (template_key, channel, language)
);

INSERT INTO prepaid.message_templates (template_key, channel, language, subject, body) VALUES
('low_balance', 'sms', 'zh', NULL,
 '【物业】{{name}}您好，电表{{meter}}余额{{balance}}元，请及时充值：{{link}}'),
('low_balance', 'sms', 'en', NULL,
 'Dear {{name}}, the balance of meter {{meter}} is {{balance}} yuan. Please top up: {{link}}'),
('low_balance', 'email', 'zh', '电费余额不足',
 E'{{name}}您好：\n\n您的电表{{meter}}当前余额为{{balance}}元，请及时充值以免停电。\n充值链接：{{link}}\n'),
('low_balance', 'email', 'en', 'Your electricity balance is low',
 E'Dear {{name}},\n\nThe balance of meter {{meter}} is {{balance}} yuan. Please top up to avoid an interruption.\nTop up: {{link}}\n'),
('arrears', 'sms', 'zh', NULL,
 '【物业】{{name}}您好，电表{{meter}}已欠费{{amount_due}}元，请尽快缴费，逾期将停电：{{link}}'),
('arrears', 'sms', 'en', NULL,
 'Dear {{name}}, meter {{meter}} is {{amount_due}} yuan in arrears. Please pay soon or supply will be cut: {{link}}'),
('arrears', 'email', 'zh', '电费欠费提醒',
 E'{{name}}您好：\n\n您的电表{{meter}}已欠费{{amount_due}}元，请尽快缴费，逾期将停止供电。\n缴费链接：{{link}}\n'),
('arrears', 'email', 'en', 'Electricity arrears',
 E'Dear {{name}},\n\nMeter {{meter}} is {{amount_due}} yuan in arrears. Please pay soon; otherwise the supply will be cut.\nPay: {{link}}\n'),
('payment_received', 'sms', 'zh', NULL,
 '【物业】{{name}}您好，电表{{meter}}已到账{{amount}}元，余额{{balance}}元。如已停电，请按住电表按钮10秒恢复供电。'),
('payment_received', 'sms', 'en', NULL,
 'Dear {{name}}, {{amount}} yuan received for meter {{meter}}; balance {{balance}} yuan. If the power is off, hold the meter''s button for 10 seconds to restore it.'),
('payment_received', 'email', 'zh', '缴费成功',
 E'{{name}}您好：\n\n电表{{meter}}已到账{{amount}}元，当前余额{{balance}}元。\n如已停电，请按住电表上的按钮10秒（或插入电卡后按按钮）恢复供电。\n'),
('payment_received', 'email', 'en', 'Payment received',
 E'Dear {{name}},\n\n{{amount}} yuan was received for meter {{meter}}; the balance is {{balance}} yuan.\nIf the power is off, hold the button on the meter for 10 seconds (or insert the card and press it) to restore it.\n');

-- --------------------------------------------------------------- outbox

-- A message is a row before it is anything else. A daemon claims due rows
-- (FOR UPDATE SKIP LOCKED) by marking them 'sending' with a lease, sends,
-- and records the outcome; a lease that runs out (the daemon died) puts the
-- message back, so a message may in that one case be sent twice.
CREATE TABLE prepaid.messages (
	message_id      bigserial PRIMARY KEY,
	meter_id        text COLLATE "C" REFERENCES prepaid.meters,
	occupant_id     bigint REFERENCES prepaid.occupants,
	channel         text NOT NULL CHECK (channel IN ('sms', 'email')),
	gateway         text,           -- NULL: the first configured gateway of the channel
	to_address      text NOT NULL,
	language        text NOT NULL,
	template_key    text NOT NULL,
	params          jsonb NOT NULL DEFAULT '{}',  -- placeholder values
	state           text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sending',
	                    'sent', 'failed', 'cancelled')),
	created_at      timestamptz NOT NULL DEFAULT now(),
	created_by      text NOT NULL DEFAULT session_user,
	next_attempt_at timestamptz NOT NULL DEFAULT now(),
	lease_until     timestamptz,
	attempts        integer NOT NULL DEFAULT 0,
	sent_at         timestamptz,
	provider_id     text,
	last_error      text
);
CREATE INDEX messages_due ON prepaid.messages (next_attempt_at) WHERE state = 'queued';
CREATE INDEX messages_lease ON prepaid.messages (lease_until) WHERE state = 'sending';
CREATE INDEX messages_meter ON prepaid.messages (meter_id, created_at);

CREATE TABLE prepaid.message_attempts (
	message_id  bigint NOT NULL REFERENCES prepaid.messages,
	attempt     integer NOT NULL,
	at          timestamptz NOT NULL DEFAULT now(),
	gateway     text NOT NULL,
	outcome     text NOT NULL CHECK (outcome IN ('sent', 'retry', 'failed')),
	http_status integer,
	answer_code text,           -- the success field's value, e.g. Aliyun's Code
	provider_id text,
	error       text,
	duration_ms integer,
	PRIMARY KEY (message_id, attempt)
);
-- --------------------------------------------------------------- the clock

-- The ladder's clock: now() plus an offset, so that tests (and drills) can
-- move time forward. In production the offset is zero.
CREATE TABLE prepaid.clock (
	one    boolean PRIMARY KEY DEFAULT true CHECK (one),
	offset_by interval NOT NULL DEFAULT '0'
);
INSERT INTO prepaid.clock DEFAULT VALUES;

-- ---------------------------------------------------------------- episodes

-- From falling below the first threshold until paid back to the restore
-- level: what the ladder did for one stretch of arrears.
CREATE TABLE prepaid.arrears_episodes (
	episode_id    bigserial PRIMARY KEY,
	meter_id      text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	policy_id     text NOT NULL,
	started_at    timestamptz NOT NULL,
	ended_at      timestamptz,
	end_reason    text,
	start_balance numeric(20,7) NOT NULL,
	step_no       integer NOT NULL DEFAULT 0,   -- the deepest step reached
	trip_level_at timestamptz,                  -- when the balance reached the trip level
	trip_state    text CHECK (trip_state IN ('awaiting_approval', 'approved', 'cancelled',
	                  'sent', 'confirmed', 'unknown')),
	trip_command  text,                         -- the trip's command id
	trip_note     text
);
CREATE UNIQUE INDEX arrears_episodes_open ON prepaid.arrears_episodes (meter_id)
	WHERE ended_at IS NULL;

CREATE TABLE prepaid.episode_steps (
	episode_id bigint NOT NULL REFERENCES prepaid.arrears_episodes,
	step_no    integer NOT NULL,
	reached_at timestamptz NOT NULL,
	PRIMARY KEY (episode_id, step_no)
);

-- One row per (episode, step, repeat, channel) ever sent: the unique key is
-- what makes a reminder go out at most once, whoever runs the sweep.
CREATE TABLE prepaid.episode_sends (
	episode_id bigint NOT NULL REFERENCES prepaid.arrears_episodes,
	step_no    integer NOT NULL,
	repeat_no  integer NOT NULL,
	channel    text NOT NULL,
	at         timestamptz NOT NULL,
	message_id bigint,
	task_id    bigint,
	note       text,
	PRIMARY KEY (episode_id, step_no, repeat_no, channel)
);

-- Phone calls for staff (community policies).
CREATE TABLE prepaid.call_tasks (
	task_id    bigserial PRIMARY KEY,
	meter_id   text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	episode_id bigint REFERENCES prepaid.arrears_episodes,
	created_at timestamptz NOT NULL DEFAULT now(),
	reason     text NOT NULL,
	done_at    timestamptz,
	done_by    text,
	note       text
);

-- ------------------------------------------------------------ payment orders

-- An order is what the back office or the mini-program creates before the
-- occupant pays: its out_trade_no goes to the payment API, and the payment
-- callback is matched to it. While an order of a meter is pending, the
-- ladder does not trip the meter: the occupant may be paying right now.
CREATE TABLE prepaid.orders (
	out_trade_no text PRIMARY KEY CHECK (out_trade_no ~ '^[0-9A-Za-z_-]{6,32}$'),
	meter_id     text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	provider     text NOT NULL CHECK (provider IN ('wechat', 'alipay')),
	amount       numeric(20,2) NOT NULL CHECK (amount > 0),   -- yuan
	state        text NOT NULL DEFAULT 'pending'
	             CHECK (state IN ('pending', 'paid', 'expired', 'disputed')),
	created_at   timestamptz NOT NULL DEFAULT now(),
	created_by   text NOT NULL DEFAULT session_user,
	expires_at   timestamptz NOT NULL,
	paid_at      timestamptz
);
CREATE INDEX orders_pending ON prepaid.orders (meter_id, expires_at) WHERE state = 'pending';

-- ------------------------------------------------------- the breaker

-- At most max_trips trips per site (site_id) and per fleet (site_id NULL)
-- within window; past that, trips are quarantined until released.
CREATE TABLE prepaid.trip_breakers (
	scope       text PRIMARY KEY,          -- a site id, or '*' for the fleet
	max_trips   integer NOT NULL CHECK (max_trips >= 0),
	window_len  interval NOT NULL,
	tripped_at  timestamptz,               -- set when it opened; NULL: closed
	released_at timestamptz,
	released_by text
);
INSERT INTO prepaid.trip_breakers (scope, max_trips, window_len) VALUES ('*', 50, '1 hour');

-- ---------------------------------------------------------------- payments

CREATE TABLE prepaid.payments (
	payment_id     bigserial PRIMARY KEY,
	provider       text NOT NULL CHECK (provider IN ('wechat', 'alipay')),
	provider_txn   text NOT NULL,            -- WeChat transaction_id, Alipay trade_no
	out_trade_no   text NOT NULL,            -- as the provider reported it
	meter_id       text COLLATE "C",         -- the order's meter; NULL: no such order
	amount_fen     bigint NOT NULL CHECK (amount_fen >= 0),
	state          text NOT NULL CHECK (state IN ('credited', 'unmatched', 'disputed',
	                   'applied', 'rejected')),
	reason         text,                     -- why it is unmatched or disputed
	notify_id      text,                     -- WeChat notification id, Alipay notify_id
	trade_status   text,                     -- SUCCESS, TRADE_SUCCESS, TRADE_FINISHED
	paid_at        timestamptz,              -- the provider's payment time
	received_at    timestamptz NOT NULL,     -- the callback reached the daemon
	recorded_at    timestamptz NOT NULL DEFAULT now(),
	ledger_entry   bigint,                   -- the credit (credited, applied)
	resolved_by    text,
	resolved_at    timestamptz,
	resolution     text,
	UNIQUE (provider, provider_txn)
);
CREATE INDEX payments_open ON prepaid.payments (recorded_at)
	WHERE state IN ('unmatched', 'disputed');
CREATE INDEX payments_order ON prepaid.payments (out_trade_no);

-- Verified notifications that are not payments (refunds, closed or unpaid
-- trades, refund fields on a trade notification): recorded, never credited.
CREATE TABLE prepaid.payment_notices (
	id            bigserial PRIMARY KEY,
	provider      text NOT NULL,
	kind          text NOT NULL,             -- refund, closed, not_paid, ...
	provider_txn  text,
	out_trade_no  text,
	notify_id     text,
	trade_status  text,
	amount_fen    bigint,
	received_at   timestamptz NOT NULL,
	recorded_at   timestamptz NOT NULL DEFAULT now(),
	UNIQUE (provider, notify_id, kind)
);

-- Refused notifications (bad signature, unknown key, stale timestamp, wrong
-- merchant, malformed): written by the daemon after it answered, so that a
-- forgery is audited. Nothing from an unverified body is trusted here: the
-- order and transaction are recorded only when the signature verified.
CREATE TABLE prepaid.payment_rejects (
	id           bigserial PRIMARY KEY,
	received_at  timestamptz NOT NULL,
	provider     text NOT NULL,
	reason       text NOT NULL,
	http_status  integer NOT NULL,
	peer         text,
	verified     boolean NOT NULL DEFAULT false,
	out_trade_no text,
	provider_txn text,
	amount_fen   bigint
);
CREATE INDEX payment_rejects_at ON prepaid.payment_rejects (received_at);

-- ------------------------------------------------------------- restores

-- After a payment re-arms a meter: when the arm was sent and acknowledged
-- and when the occupant restored power at the meter (button or card).
CREATE TABLE prepaid.restores (
	restore_id   bigserial PRIMARY KEY,
	meter_id     text COLLATE "C" NOT NULL REFERENCES prepaid.meters,
	payment_id   bigint REFERENCES prepaid.payments,
	command_id   text NOT NULL,              -- the arm (or close) command
	action       text NOT NULL CHECK (action IN ('arm', 'close')),
	paid_at      timestamptz NOT NULL,       -- the callback reached the daemon
	armed_at     timestamptz,                -- the meter acknowledged
	restored_at  timestamptz,                -- relay closed
	cause        text,                       -- button, card, remote
	state        text NOT NULL DEFAULT 'pending'
	             CHECK (state IN ('pending', 'armed', 'restored', 'failed', 'superseded'))
);
CREATE UNIQUE INDEX restores_open ON prepaid.restores (meter_id)
	WHERE state IN ('pending', 'armed');
CREATE INDEX restores_command ON prepaid.restores (command_id);
