-- 005_paypage.sql: the tables of the occupants' pay page. Each meter may
-- have one pay link, <public_url><path>/<token>, printed as a QR code on
-- the meter box; only the SHA-256 of its token is stored. The functions
-- and views are in paypage.sql; prepaidd-sql(7), PAY PAGE.

-- What the daemon says its pay page is (public_url and path from
-- [paypage]): written by the daemon when it connects, read when a link is
-- issued.
CREATE TABLE prepaid.pay_page_settings (
	one        boolean PRIMARY KEY DEFAULT true CHECK (one),
	base_url   text NOT NULL,  -- public_url + path, without the trailing /
	updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE prepaid.pay_links (
	meter_id     text COLLATE "C" PRIMARY KEY REFERENCES prepaid.meters,
	token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
	issued_at    timestamptz NOT NULL DEFAULT now(),
	issued_by    text NOT NULL DEFAULT session_user,
	revoked_at   timestamptz,  -- set: the link shows nothing
	revoked_by   text,
	reason       text
);
