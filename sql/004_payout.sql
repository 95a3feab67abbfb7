-- 004_payout.sql: the tables of prepaidd's calls to the payment providers
-- (src/payout.c): where each order stands at its provider (the query ladder,
-- closing at expiry), refunds asked for by finance staff and sent by the
-- daemon, and the daily reconciliation of the providers' bills. Functions,
-- views and triggers are in payments.sql. Documented in prepaidd-sql(7),
-- section PAYOUT.

-- ------------------------------------------------------------ orders

ALTER TABLE prepaid.orders
	ADD COLUMN queries        integer NOT NULL DEFAULT 0,  -- answered queries at the provider
	ADD COLUMN queried_at     timestamptz,                 -- last query or close sent
	ADD COLUMN provider_state text,                        -- what the provider last said
	ADD COLUMN closed_at      timestamptz;                 -- closed at the provider
CREATE INDEX orders_unsettled ON prepaid.orders (created_at) WHERE state = 'pending';

-- ------------------------------------------------------------ refunds

CREATE TABLE prepaid.refunds (
	refund_no      text PRIMARY KEY CHECK (refund_no ~ '^[0-9A-Za-z_-]{6,64}$'),
	payment_id     bigint NOT NULL REFERENCES prepaid.payments,
	provider       text NOT NULL,
	out_trade_no   text NOT NULL,
	meter_id       text COLLATE "C" NOT NULL,
	amount_fen     bigint NOT NULL CHECK (amount_fen > 0),
	total_fen      bigint NOT NULL,            -- the payment's amount
	reason         text,
	state          text NOT NULL DEFAULT 'queued'
	               CHECK (state IN ('queued', 'processing', 'refunded', 'failed')),
	attempts       integer NOT NULL DEFAULT 0,
	next_at        timestamptz NOT NULL DEFAULT now(),
	provider_state text,
	last_error     text,
	requested_by   text NOT NULL DEFAULT session_user,
	requested_at   timestamptz NOT NULL DEFAULT now(),
	confirmed_at   timestamptz,
	ledger_entry   bigint
);
CREATE INDEX refunds_open ON prepaid.refunds (next_at) WHERE state IN ('queued', 'processing');
CREATE INDEX refunds_order ON prepaid.refunds (out_trade_no);

-- ------------------------------------------------------ reconciliation

CREATE TABLE prepaid.reconciliations (
	id            bigserial PRIMARY KEY,
	provider      text NOT NULL CHECK (provider IN ('wechat', 'alipay')),
	bill_date     date NOT NULL,
	state         text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'done', 'failed')),
	requested_by  text NOT NULL DEFAULT session_user,
	requested_at  timestamptz NOT NULL DEFAULT now(),
	attempts      integer NOT NULL DEFAULT 0,
	next_at       timestamptz NOT NULL DEFAULT now(),
	finished_at   timestamptz,
	bill_rows     integer,
	discrepancies integer,
	last_error    text
);
CREATE INDEX reconciliations_due ON prepaid.reconciliations (next_at) WHERE state = 'queued';
CREATE INDEX reconciliations_day ON prepaid.reconciliations (provider, bill_date);

CREATE TABLE prepaid.bill_entries (
	reconciliation_id bigint NOT NULL REFERENCES prepaid.reconciliations ON DELETE CASCADE,
	provider          text NOT NULL,
	bill_date         date NOT NULL,
	provider_txn      text NOT NULL,
	out_trade_no      text,
	kind              text NOT NULL CHECK (kind IN ('payment', 'refund')),
	amount_fen        bigint NOT NULL
);
CREATE INDEX bill_entries_txn ON prepaid.bill_entries (provider, provider_txn);
CREATE INDEX bill_entries_rec ON prepaid.bill_entries (reconciliation_id);
