/*
 * check_rating.c: tests of the rating engine (sql/rating.sql)
 * against hand-computed amounts. Rating lives in SQL, inside
 * prepaid_internal.ingest_batch(), so every test drives it exactly as the daemon
 * does: it defines its own site, tariff and meter (names unique to the test
 * and to the run, so tests never see each other's rows), sends readings
 * through prepaid_internal.ingest_batch() with the daemon's own statement, and reads
 * prepaid.ledger, prepaid.meters and the views. Every expected amount is
 * worked out by hand in a comment beside its assertion, and compared as an
 * exact NUMERIC in SQL, never through floating point. Every test ends by
 * checking that prepaid.verify_ledger() finds nothing.
 *
 * The connection comes from the libpq environment (PGHOST, PGPORT, PGUSER,
 * PGDATABASE), which tests/it/rating.sh sets after starting a throwaway
 * PostgreSQL and migrating it with the real `prepaidd --migrate`.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <check.h>
#include <libpq-fe.h>

#if defined(__GNUC__)
#define RATING_PRINTFLIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define RATING_PRINTFLIKE(f, a)
#endif

#define RATING_NELEM(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Where tariffs start: every test's tariff version and assignment is in
 * force from here, before all of its readings.
 */
#define RATING_EPOCH "2025-01-01 00:00+08"

/* The statement src/ingest.c sends, word for word. */
#define RATING_INGEST_SQL                                                                          \
	"SELECT inserted, duplicates FROM prepaid_internal.ingest_batch($1::text[], "              \
	"$2::int8[], $3::timestamptz[], $4::int8[], $5::text[], $6::float8[], "                    \
	"$7::float8[], $8::float8[], $9::timestamptz[], $10::jsonb, $11::jsonb, "                  \
	"$12::jsonb, $13::bool, $14::bool, $15::int, $16::text)"

/* One reading: sequence number, UTC time stamp, register in Wh. */
struct rating_reading {
	long long seq;
	const char *ts;
	long long wh;
};

/* The names of a test's own meter, site and tariff. */
struct rating_ids {
	char meter[40];
	char site[40];
	char tariff[40];
};

static PGconn *rating_conn;
/*
 * A tag unique to this run, in every name, so that the suite may run again
 * against the same database. Set in main() before the tests fork.
 */
static char rating_tag[8];

static void
rating_setup(void)
{
	PGresult *res;

	rating_conn = PQconnectdb("");
	ck_assert_msg(PQstatus(rating_conn) == CONNECTION_OK,
	    "cannot connect (PGHOST, PGPORT, PGDATABASE set?): %s", PQerrorMessage(rating_conn));
	res = PQexec(rating_conn, "SET client_min_messages = warning; "
	                          "SET datestyle = ISO; SET application_name = 'check_rating'");
	ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s", PQerrorMessage(rating_conn));
	PQclear(res);
}

static void
rating_teardown(void)
{
	PQfinish(rating_conn);
	rating_conn = NULL;
}

static void RATING_PRINTFLIKE(3, 0)
    rating_vformat(char *buf, size_t size, const char *fmt, va_list ap)
{
	int n;

	n = vsnprintf(buf, size, fmt, ap);
	ck_assert_msg(n >= 0 && (size_t)n < size, "SQL text too long");
}

/*
 * Run SQL that must succeed. Returns the first column of its first row
 * ("" when there is none, "NULL" for a null) in one of a few rotating
 * buffers, so that two results can be compared in one expression.
 */
static const char *RATING_PRINTFLIKE(1, 2) rating_sql(const char *fmt, ...)
{
	static char out[4][512];
	static int next;
	char sql[8192], *o;
	PGresult *res;
	ExecStatusType st;
	va_list ap;

	va_start(ap, fmt);
	rating_vformat(sql, sizeof sql, fmt, ap);
	va_end(ap);

	o = out[next++ % 4];
	res = PQexec(rating_conn, sql);
	st = PQresultStatus(res);
	ck_assert_msg(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK, "SQL failed: %s\n  %s",
	    PQresultErrorMessage(res), sql);
	if (st == PGRES_TUPLES_OK && PQntuples(res) > 0 && PQnfields(res) > 0)
		snprintf(o, sizeof out[0], "%s",
		    PQgetisnull(res, 0, 0) ? "NULL" : PQgetvalue(res, 0, 0));
	else
		o[0] = '\0';
	PQclear(res);
	return o;
}

/* Run SQL that must fail with an error message containing want. */
static void RATING_PRINTFLIKE(2, 3) rating_sql_fails(const char *want, const char *fmt, ...)
{
	char sql[8192];
	PGresult *res;
	va_list ap;
	const char *msg;

	va_start(ap, fmt);
	rating_vformat(sql, sizeof sql, fmt, ap);
	va_end(ap);

	res = PQexec(rating_conn, sql);
	ck_assert_msg(PQresultStatus(res) == PGRES_FATAL_ERROR, "SQL should have failed: %s", sql);
	msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	ck_assert_msg(msg != NULL && strstr(msg, want) != NULL,
	    "error for %s should name \"%s\", got: %s", sql, want, msg == NULL ? "(none)" : msg);
	PQclear(res);
}

/*
 * Run SQL whose outcome does not matter (a repeat that may be refused or
 * ignored); the test then checks that nothing changed.
 */
static void RATING_PRINTFLIKE(1, 2) rating_sql_any(const char *fmt, ...)
{
	char sql[8192];
	va_list ap;

	va_start(ap, fmt);
	rating_vformat(sql, sizeof sql, fmt, ap);
	va_end(ap);
	PQclear(PQexec(rating_conn, sql));
}

/* The value of a query must be exactly the text want. */
#define rating_expect(want, ...)                                                                   \
	do {                                                                                       \
		const char *rating_got_ = rating_sql(__VA_ARGS__);                                 \
		ck_assert_msg(                                                                     \
		    strcmp(rating_got_, (want)) == 0, "expected %s, got %s", (want), rating_got_); \
	} while (0)

/*
 * The sum of the exact amounts (yuan) of a meter's ledger rows matching
 * where must equal want as a NUMERIC (so 0.45 equals -0.4500000 * -1, scale
 * aside): a charge's exact_fen / 100, a credit's amount. The whole fen of
 * charges are checked by rating_balance().
 */
#define RATING_EXACT "coalesce(exact_fen / 100, amount)"
static void
rating_sum(const char *meter, const char *where, const char *want)
{
	const char *ok, *got;

	got = rating_sql("SELECT coalesce(sum(" RATING_EXACT "), 0)::text FROM prepaid.ledger "
	                 "WHERE meter_id = '%s' AND (%s)",
	    meter, where);
	ok = rating_sql("SELECT coalesce(sum(" RATING_EXACT "), 0) = (%s)::numeric "
	                "FROM prepaid.ledger WHERE meter_id = '%s' AND (%s)",
	    want, meter, where);
	ck_assert_msg(strcmp(ok, "t") == 0,
	    "meter %s, ledger rows where %s: "
	    "sum(amount) expected %s, got %s",
	    meter, where, want, got);
}

/* The sum of energy_wh of a meter's ledger rows matching where. */
static void
rating_energy(const char *meter, const char *where, long long want)
{
	const char *got;
	char w[32];

	got = rating_sql("SELECT coalesce(sum(energy_wh), 0) FROM prepaid.ledger "
	                 "WHERE meter_id = '%s' AND (%s)",
	    meter, where);
	snprintf(w, sizeof w, "%lld", want);
	ck_assert_msg(strcmp(got, w) == 0,
	    "meter %s, ledger rows where %s: "
	    "sum(energy_wh) expected %s, got %s",
	    meter, where, w, got);
}

/*
 * The meter's exact balance (credits less exact charges) must equal want
 * exactly; its balance must be the whole fen of it by the carry, i.e.
 * credits less floor(exact charges): want rounded up to the fen; it must
 * equal the sum of its ledger, and prepaid.verify_ledger() must find no
 * meter at all out of step. Called at the end of every test.
 */
static void
rating_balance(const char *meter, const char *want_in)
{
	const char *ok, *got;
	char want[128];

	/* want may be one of rating_sql()'s buffers: keep a copy. */
	snprintf(want, sizeof want, "%s", want_in);

	got = rating_sql("SELECT balance_exact::text || ' (' || balance || ')' "
	                 "FROM prepaid.balances WHERE meter_id = '%s'",
	    meter);
	ok = rating_sql("SELECT b.balance_exact = (%s)::numeric "
	                "AND m.balance_fen = ceil((%s)::numeric * 100) "
	                "AND m.balance * 100 = m.balance_fen "
	                "FROM prepaid.balances b JOIN prepaid.meters m USING (meter_id) "
	                "WHERE meter_id = '%s'",
	    want, want, meter);
	ck_assert_msg(strcmp(ok, "t") == 0,
	    "meter %s: exact balance expected %s (whole fen rounded up), "
	    "got %s",
	    meter, want, got);
	rating_expect("t",
	    "SELECT balance = (SELECT coalesce(sum(amount), 0) "
	    "FROM prepaid.ledger l WHERE l.meter_id = m.meter_id) "
	    "FROM prepaid.meters m WHERE meter_id = '%s'",
	    meter);
	got = rating_sql("SELECT coalesce(string_agg(meter_id || ': ' || "
	                 "balance || ' <> ' || ledger_sum, ', '), '') "
	                 "FROM prepaid.verify_ledger()");
	ck_assert_msg(got[0] == '\0', "verify_ledger() found: %s", got);
}

/* Names for a test: meter R<tag>_<name>, site S<tag>_<name>, tariff T... */
static void
rating_names(struct rating_ids *id, const char *name)
{
	ck_assert_int_le(strlen(name), 22);
	snprintf(id->meter, sizeof id->meter, "R%s_%s", rating_tag, name);
	snprintf(id->site, sizeof id->site, "S%s_%s", rating_tag, name);
	snprintf(id->tariff, sizeof id->tariff, "T%s_%s", rating_tag, name);
}

/* A tariff with one version in force from RATING_EPOCH. */
static void
rating_tariff(const char *tariff, const char *definition)
{
	rating_sql("SELECT prepaid.create_tariff('%s', 'test tariff %s')", tariff, tariff);
	rating_sql("SELECT prepaid.create_tariff_version('%s', '%s', "
	           "$def$%s$def$::jsonb)",
	    tariff, RATING_EPOCH, definition);
}

/*
 * The usual set-up: a site in time zone tz, a tariff with definition, and a
 * registered meter on that site with the tariff assigned from the epoch.
 */
static void
rating_meter(struct rating_ids *id, const char *name, const char *tz, const char *definition)
{
	rating_names(id, name);
	rating_sql("SELECT prepaid.create_site('%s', 'test site %s', '%s')", id->site, name, tz);
	rating_tariff(id->tariff, definition);
	rating_sql("SELECT prepaid.register_meter('%s')", id->meter);
	rating_sql("SELECT prepaid.set_meter_site('%s', '%s')", id->meter, id->site);
	rating_sql(
	    "SELECT prepaid.assign_tariff('%s', '%s', '%s')", id->meter, id->tariff, RATING_EPOCH);
}

static void
rating_append(char *buf, size_t size, const char *s)
{
	size_t len = strlen(buf);

	ck_assert_msg(len + strlen(s) < size, "array literal too long");
	memcpy(buf + len, s, strlen(s) + 1);
}

/*
 * Send readings of one meter as one batch through prepaid_internal.ingest_batch(),
 * with the parameters the daemon sends (auto_register on, resend_on_gap
 * off). Returns the number of readings the batch inserted.
 */
static int
rating_ingest(const char *meter, const struct rating_reading *r, size_t n)
{
	char m[4096] = "{", s[4096] = "{", t[4096] = "{", e[4096] = "{";
	char rel[4096] = "{", nul[4096] = "{", item[128];
	const char *params[16];
	PGresult *res;
	size_t i;
	int inserted;

	for (i = 0; i < n; i++) {
		const char *sep = i + 1 < n ? "," : "}";

		snprintf(item, sizeof item, "\"%s\"%s", meter, sep);
		rating_append(m, sizeof m, item);
		snprintf(item, sizeof item, "%lld%s", r[i].seq, sep);
		rating_append(s, sizeof s, item);
		snprintf(item, sizeof item, "\"%s\"%s", r[i].ts, sep);
		rating_append(t, sizeof t, item);
		snprintf(item, sizeof item, "%lld%s", r[i].wh, sep);
		rating_append(e, sizeof e, item);
		snprintf(item, sizeof item, "closed%s", sep);
		rating_append(rel, sizeof rel, item);
		snprintf(item, sizeof item, "NULL%s", sep);
		rating_append(nul, sizeof nul, item);
	}
	params[0] = m;
	params[1] = s;
	params[2] = t;
	params[3] = e;
	params[4] = rel;
	params[5] = nul;
	params[6] = nul;
	params[7] = nul;
	params[8] = t; /* received when read: it does not matter here */
	params[9] = "[]";
	params[10] = "[]";
	params[11] = "[]";
	params[12] = "true";
	params[13] = "false";
	params[14] = "1000";
	params[15] = "meters";
	res = PQexecParams(rating_conn, RATING_INGEST_SQL, 16, NULL, params, NULL, NULL, 0);
	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "ingest_batch for %s failed: %s",
	    meter, PQresultErrorMessage(res));
	inserted = atoi(PQgetvalue(res, 0, 0));
	PQclear(res);
	return inserted;
}

/* One reading on its own batch. */
static void
rating_read(const char *meter, long long seq, const char *ts, long long wh)
{
	struct rating_reading r = {seq, ts, wh};

	rating_ingest(meter, &r, 1);
}

/* ------------------------------------------------------------ flat, tiers */

START_TEST(test_flat_price_charges_each_interval)
{
	struct rating_ids id;

	rating_meter(&id, "flat", "Asia/Shanghai", "{\"price\": 0.5283}");
	/* The first reading only sets the baseline: nothing to charge. */
	rating_read(id.meter, 1, "2025-03-10T01:00:00Z", 1000000);
	rating_sum(id.meter, "kind = 'charge'", "0");
	/* 2000 Wh x 0.5283 / 1000 = 1.0566 */
	rating_read(id.meter, 2, "2025-03-10T02:00:00Z", 1002000);
	rating_sum(id.meter, "kind = 'charge'", "-1.0566");
	/* + 1234 Wh x 0.5283 / 1000 = 0.6519222; total 1.7085222 */
	rating_read(id.meter, 3, "2025-03-10T03:00:00Z", 1003234);
	rating_sum(id.meter, "kind = 'charge'", "-1.7085222");
	rating_sum(id.meter, "to_seq = 3", "-0.6519222");
	rating_energy(id.meter, "kind = 'charge'", 3234);
	/* The charge says what it is for: its interval, energy and version. */
	rating_expect("t",
	    "SELECT bool_and(from_seq = 2 AND to_seq = 3 AND "
	    "from_ts = '2025-03-10T02:00:00Z' AND to_ts = '2025-03-10T03:00:00Z' "
	    "AND tariff_version_id IS NOT NULL AND price = 0.5283) "
	    "FROM prepaid.ledger WHERE meter_id = '%s' AND to_seq = 3",
	    id.meter);
	rating_balance(id.meter, "-1.7085222");
}
END_TEST

START_TEST(test_tier_boundary_inside_one_interval_is_split)
{
	struct rating_ids id;

	/* The usual Chinese residential blocks: 0-200, 200-400, 400+ kWh. */
	rating_meter(&id, "tiers", "Asia/Shanghai",
	    "{\"tiers\": [{\"from_kwh\": 0, \"price\": 0.5283}, "
	    "{\"from_kwh\": 200, \"price\": 0.5783}, "
	    "{\"from_kwh\": 400, \"price\": 0.8283}]}");
	rating_read(id.meter, 1, "2025-03-02T02:00:00Z", 0);
	/* 150 kWh, all in tier 1: 150 x 0.5283 = 79.245 */
	rating_read(id.meter, 2, "2025-03-05T02:00:00Z", 150000);
	rating_sum(id.meter, "kind = 'charge'", "-79.245");
	/*
	 * 100 kWh from 150 to 250 kWh in the period: 50 kWh at 0.5283 =
	 * 26.415 and 50 kWh at 0.5783 = 28.915; the interval 55.33.
	 */
	rating_read(id.meter, 3, "2025-03-10T02:00:00Z", 250000);
	rating_sum(id.meter, "to_seq = 3", "-55.33");
	rating_energy(id.meter, "to_seq = 3 AND price = 0.5283", 50000);
	rating_energy(id.meter, "to_seq = 3 AND price = 0.5783", 50000);
	rating_sum(id.meter, "to_seq = 3 AND price = 0.5783", "-28.915");
	/*
	 * 200 kWh from 250 to 450: 150 kWh at 0.5783 = 86.745 and 50 kWh
	 * at 0.8283 = 41.415; the interval 128.16. In all: 200 x 0.5283 +
	 * 200 x 0.5783 + 50 x 0.8283 = 105.66 + 115.66 + 41.415 = 262.735.
	 */
	rating_read(id.meter, 4, "2025-03-20T02:00:00Z", 450000);
	rating_sum(id.meter, "to_seq = 4", "-128.16");
	rating_energy(id.meter, "to_seq = 4 AND price = 0.8283", 50000);
	rating_sum(id.meter, "true", "-262.735");
	/* Three tiers, three distinct tier labels on the rows. */
	rating_expect("3",
	    "SELECT count(DISTINCT tier) FROM prepaid.ledger "
	    "WHERE meter_id = '%s' AND kind = 'charge'",
	    id.meter);
	rating_expect("t",
	    "SELECT period_wh = 450000 AND period_start = "
	    "'2025-03-01' FROM prepaid.meters WHERE meter_id = '%s'",
	    id.meter);
	rating_balance(id.meter, "-262.735");
}
END_TEST

START_TEST(test_month_rollover_resets_tiers)
{
	struct rating_ids id;

	/* Periods start on the 1st, at local midnight. */
	rating_meter(&id, "month1", "Asia/Shanghai",
	    "{\"tiers\": [{\"from_kwh\": 0, \"price\": 0.5}, "
	    "{\"from_kwh\": 10, \"price\": 0.7}]}");
	rating_read(id.meter, 1, "2025-05-30T02:00:00Z", 0);
	/* 12 kWh in May: 10 x 0.5 + 2 x 0.7 = 5 + 1.4 = 6.4 */
	rating_read(id.meter, 2, "2025-05-31T12:00:00Z", 12000);
	rating_sum(id.meter, "true", "-6.4");
	/*
	 * 2000 Wh from May 31 20:00 to June 1 04:00 local (12:00Z-20:00Z):
	 * split at local midnight (16:00Z), 4 h each side, 1000 Wh each.
	 * May's half is beyond 10 kWh: 1 x 0.7 = 0.7. June's half starts the
	 * new period in tier 1: 1 x 0.5 = 0.5. The interval 1.2, in all 7.6.
	 */
	rating_read(id.meter, 3, "2025-05-31T20:00:00Z", 14000);
	rating_sum(id.meter, "to_seq = 3", "-1.2");
	rating_energy(id.meter, "to_seq = 3 AND price = 0.7", 1000);
	rating_energy(id.meter, "to_seq = 3 AND price = 0.5", 1000);
	/*
	 * 10 kWh more in June, from 1 to 11 kWh in the period: 9 x 0.5 +
	 * 1 x 0.7 = 4.5 + 0.7 = 5.2. In all 6.4 + 1.2 + 5.2 = 12.8.
	 */
	rating_read(id.meter, 4, "2025-06-03T02:00:00Z", 24000);
	rating_sum(id.meter, "to_seq = 4", "-5.2");
	rating_expect("t",
	    "SELECT period_start = '2025-06-01' AND "
	    "period_wh = 11000 FROM prepaid.meters WHERE meter_id = '%s'",
	    id.meter);
	rating_balance(id.meter, "-12.8");
}
END_TEST

START_TEST(test_period_start_day_15_rolls_over_at_local_midnight)
{
	struct rating_ids id;

	rating_meter(&id, "month15", "Asia/Shanghai",
	    "{\"tiers\": [{\"from_kwh\": 0, \"price\": 0.5}, "
	    "{\"from_kwh\": 10, \"price\": 0.7}], "
	    "\"period\": \"month\", \"period_start_day\": 15}");
	rating_read(id.meter, 1, "2025-04-10T02:00:00Z", 0);
	/*
	 * 12 kWh in the period that began on March 15: 10 x 0.5 + 2 x 0.7 =
	 * 6.4. (The 1st of April is not a period start here.)
	 */
	rating_read(id.meter, 2, "2025-04-14T14:00:00Z", 12000);
	rating_sum(id.meter, "true", "-6.4");
	/*
	 * 4000 Wh from April 14 22:00 to April 15 02:00 local (14:00Z-18:00Z):
	 * split at local midnight, 16:00Z, 2000 Wh each side. Before: still
	 * beyond 10 kWh, 2 x 0.7 = 1.4. After: the new period, 2 x 0.5 = 1.0.
	 * The interval 2.4. (Were periods cut at UTC midnight, all 4000 Wh
	 * would be in the old period: 2.8.)
	 */
	rating_read(id.meter, 3, "2025-04-14T18:00:00Z", 16000);
	rating_sum(id.meter, "to_seq = 3", "-2.4");
	rating_energy(id.meter, "to_seq = 3 AND price = 0.7", 2000);
	/*
	 * 10 kWh more, from 2 to 12 kWh in the new period: 8 x 0.5 + 2 x 0.7
	 * = 4 + 1.4 = 5.4. In all 6.4 + 2.4 + 5.4 = 14.2.
	 */
	rating_read(id.meter, 4, "2025-04-20T02:00:00Z", 26000);
	rating_sum(id.meter, "to_seq = 4", "-5.4");
	rating_expect("t",
	    "SELECT period_start = '2025-04-15' AND "
	    "period_wh = 12000 FROM prepaid.meters WHERE meter_id = '%s'",
	    id.meter);
	rating_balance(id.meter, "-14.2");
}
END_TEST

START_TEST(test_yearly_period_rolls_over_on_its_start_month)
{
	struct rating_ids id;

	/* Yearly blocks from 1 July. */
	rating_meter(&id, "year7", "Asia/Shanghai",
	    "{\"tiers\": [{\"from_kwh\": 0, \"price\": 0.5}, "
	    "{\"from_kwh\": 10, \"price\": 0.7}], "
	    "\"period\": \"year\", \"period_start_month\": 7}");
	rating_read(id.meter, 1, "2025-06-29T02:00:00Z", 0);
	/* 12 kWh in the year from 1 July 2024: 10 x 0.5 + 2 x 0.7 = 6.4 */
	rating_read(id.meter, 2, "2025-06-30T12:00:00Z", 12000);
	/*
	 * 2000 Wh over 30 June 20:00 - 1 July 04:00 local, split at local
	 * midnight (16:00Z): 1000 Wh in the old year at 0.7, 1000 Wh in the
	 * new at 0.5; 1.2.
	 */
	rating_read(id.meter, 3, "2025-06-30T20:00:00Z", 14000);
	rating_sum(id.meter, "to_seq = 3", "-1.2");
	/*
	 * 10 kWh into August, no reset on 1 August: from 1 to 11 kWh of the
	 * year, 9 x 0.5 + 1 x 0.7 = 5.2. In all 6.4 + 1.2 + 5.2 = 12.8.
	 */
	rating_read(id.meter, 4, "2025-08-02T02:00:00Z", 24000);
	rating_sum(id.meter, "to_seq = 4", "-5.2");
	rating_expect("t",
	    "SELECT period_start = '2025-07-01' AND "
	    "period_wh = 11000 FROM prepaid.meters WHERE meter_id = '%s'",
	    id.meter);
	rating_balance(id.meter, "-12.8");
}
END_TEST

START_TEST(test_free_quota_is_free_of_energy_and_service_fee)
{
	struct rating_ids id;

	rating_meter(&id, "free", "Asia/Shanghai",
	    "{\"price\": 0.5, \"service_per_kwh\": 0.1, \"free_kwh\": 10}");
	rating_read(id.meter, 1, "2025-03-03T02:00:00Z", 0);
	/* 8 kWh, all inside the 10 free kWh: nothing. */
	rating_read(id.meter, 2, "2025-03-04T02:00:00Z", 8000);
	rating_sum(id.meter, "true", "0");
	/*
	 * 7 kWh: 2 kWh free, 5 kWh charged at 0.5 + 0.1 service:
	 * 5 x 0.6 = 3.0.
	 */
	rating_read(id.meter, 3, "2025-03-05T02:00:00Z", 15000);
	rating_sum(id.meter, "true", "-3.0");
	rating_energy(id.meter, "kind = 'charge' AND amount <> 0", 5000);
	/*
	 * April is a new period with its own 10 free kWh: 12 kWh in it (the
	 * interval lies wholly in April) is 2 x 0.6 = 1.2; in all 4.2.
	 */
	rating_read(id.meter, 4, "2025-04-02T02:00:00Z", 15000);
	rating_read(id.meter, 5, "2025-04-05T02:00:00Z", 27000);
	rating_sum(id.meter, "to_seq = 5", "-1.2");
	rating_balance(id.meter, "-4.2");
}
END_TEST

/* ---------------------------------------------------------- time of use */

#define RATING_TOU_BANDS                                                                           \
	"\"bands\": {\"work\": ["                                                                  \
	"{\"start\": \"00:00\", \"band\": \"valley\", \"price\": 0.3}, "                           \
	"{\"start\": \"08:00\", \"band\": \"peak\", \"price\": 0.6}, "                             \
	"{\"start\": \"22:00\", \"band\": \"valley\", \"price\": 0.3}], "                          \
	"\"rest\": [{\"start\": \"00:00\", \"band\": \"flat\", \"price\": 0.4}]}"

START_TEST(test_tou_band_start_splits_interval_by_local_time)
{
	struct rating_ids id;

	rating_meter(&id, "tou", "Asia/Shanghai", "{" RATING_TOU_BANDS "}");
	/* Wednesday 15 January 2025, 07:30 local (UTC+8). */
	rating_read(id.meter, 1, "2025-01-14T23:30:00Z", 100000);
	/*
	 * 1000 Wh from 07:30 to 08:30 local: half an hour each side of the
	 * 08:00 peak start, 500 Wh each: 500 x 0.3 = 0.15 valley, 500 x 0.6 =
	 * 0.30 peak; 0.45. (In UTC, 23:30-00:30, it would all be valley: 0.3.)
	 */
	rating_read(id.meter, 2, "2025-01-15T00:30:00Z", 101000);
	rating_sum(id.meter, "to_seq = 2", "-0.45");
	rating_sum(id.meter, "to_seq = 2 AND band = 'valley'", "-0.15");
	rating_sum(id.meter, "to_seq = 2 AND band = 'peak'", "-0.30");
	rating_energy(id.meter, "to_seq = 2 AND band = 'peak'", 500);
	/*
	 * 2800 Wh from 08:30 to 22:30 local (14 h = 28 half hours, 100 Wh
	 * each): 13.5 h peak = 2700 Wh x 0.6 = 1.62, 0.5 h valley after 22:00
	 * = 100 Wh x 0.3 = 0.03; 1.65. In all 0.45 + 1.65 = 2.1.
	 */
	rating_read(id.meter, 3, "2025-01-15T14:30:00Z", 103800);
	rating_sum(id.meter, "to_seq = 3", "-1.65");
	rating_energy(id.meter, "to_seq = 3 AND band = 'valley'", 100);
	rating_energy(id.meter, "band = 'peak'", 3200);
	/*
	 * 1000 Wh from 07:50 to 08:20 the next day (Thursday): 10 min valley,
	 * 20 min peak, 333.3 and 666.7 Wh: the parts are whole Wh that sum to
	 * 1000, each priced at its band.
	 */
	rating_read(id.meter, 4, "2025-01-15T23:50:00Z", 103800);
	rating_read(id.meter, 5, "2025-01-16T00:20:00Z", 104800);
	rating_energy(id.meter, "to_seq = 5", 1000);
	rating_expect("t",
	    "SELECT sum(energy_wh) FILTER (WHERE band = 'valley') "
	    "BETWEEN 333 AND 334 FROM prepaid.ledger WHERE meter_id = '%s' "
	    "AND to_seq = 5",
	    id.meter);
	rating_expect("t",
	    "SELECT sum(exact_fen) / 100 = -(sum(energy_wh) FILTER "
	    "(WHERE band = 'valley') * 0.3 + sum(energy_wh) FILTER "
	    "(WHERE band = 'peak') * 0.6) / 1000 FROM prepaid.ledger "
	    "WHERE meter_id = '%s' AND to_seq = 5",
	    id.meter);
	rating_balance(id.meter, rating_sql("SELECT sum(" RATING_EXACT ") FROM "
	                                    "prepaid.ledger WHERE meter_id = '%s'",
	                             id.meter));
	rating_sum(id.meter, "to_seq <= 3", "-2.1");
}
END_TEST

START_TEST(test_holidays_and_make_up_workdays_choose_bands)
{
	struct rating_ids hol, mk, sat;

	/*
	 * Wednesday 1 October 2025 is a holiday (rest bands); Sunday 28
	 * September 2025 a make-up working day (work bands). Seeded calendars
	 * may hold them already; they must say the same.
	 */
	rating_sql("INSERT INTO prepaid.holidays (calendar, day, kind, name) "
	           "VALUES ('CN', '2025-10-01', 'holiday', 'National Day'), "
	           "('CN', '2025-09-28', 'workday', 'National Day make-up') "
	           "ON CONFLICT DO NOTHING");
	rating_expect("holiday,workday",
	    "SELECT string_agg(kind, ',' ORDER BY "
	    "day DESC) FROM prepaid.holidays WHERE calendar = 'CN' AND "
	    "day IN ('2025-10-01', '2025-09-28')");

	rating_meter(&hol, "holiday", "Asia/Shanghai", "{" RATING_TOU_BANDS "}");
	rating_meter(&mk, "makeup", "Asia/Shanghai", "{" RATING_TOU_BANDS "}");
	rating_meter(&sat, "saturday", "Asia/Shanghai", "{" RATING_TOU_BANDS "}");
	ck_assert_str_eq(rating_sql("SELECT calendar FROM prepaid.sites "
	                            "WHERE site_id = '%s'",
	                     hol.site),
	    "CN");

	/*
	 * 1000 Wh from 01:00 to 02:00 local on the holiday (Tuesday 17:00Z-
	 * 18:00Z in UTC): rest band 0.4. A working Wednesday would be valley
	 * 0.3; Tuesday 17:00 read in UTC, peak 0.6.
	 */
	rating_read(hol.meter, 1, "2025-09-30T17:00:00Z", 5000);
	rating_read(hol.meter, 2, "2025-09-30T18:00:00Z", 6000);
	rating_sum(hol.meter, "true", "-0.4");
	rating_expect("flat",
	    "SELECT string_agg(DISTINCT band, ',') FROM "
	    "prepaid.ledger WHERE meter_id = '%s' AND kind = 'charge'",
	    hol.meter);
	rating_balance(hol.meter, "-0.4");

	/* 1000 Wh 10:00-11:00 local on the make-up Sunday: peak 0.6. */
	rating_read(mk.meter, 1, "2025-09-28T02:00:00Z", 5000);
	rating_read(mk.meter, 2, "2025-09-28T03:00:00Z", 6000);
	rating_sum(mk.meter, "true", "-0.6");
	rating_sum(mk.meter, "band = 'peak'", "-0.6");
	rating_balance(mk.meter, "-0.6");

	/* 1000 Wh 10:00-11:00 local on an ordinary Saturday: rest 0.4. */
	rating_read(sat.meter, 1, "2025-03-15T02:00:00Z", 5000);
	rating_read(sat.meter, 2, "2025-03-15T03:00:00Z", 6000);
	rating_sum(sat.meter, "true", "-0.4");
	rating_balance(sat.meter, "-0.4");
}
END_TEST

START_TEST(test_tiers_with_bands_add_tier_increment_to_band_price)
{
	struct rating_ids id;

	/* Band prices plus a tier increment (阶梯加价) of 0.05 past 2 kWh. */
	rating_meter(&id, "tierband", "Asia/Shanghai",
	    "{\"tiers\": [{\"from_kwh\": 0, \"price\": 0}, "
	    "{\"from_kwh\": 2, \"price\": 0.05}], " RATING_TOU_BANDS "}");
	/* Monday 3 March 2025, 07:00 local. */
	rating_read(id.meter, 1, "2025-03-02T23:00:00Z", 0);
	/*
	 * 3000 Wh from 07:00 to 10:00 local: 1000 Wh valley (07-08), 2000 Wh
	 * peak (08-10). Valley: 0-1000 Wh of the period, tier 1: 1000 x 0.3 =
	 * 0.3. Peak: 1000-3000 Wh, 1000 in tier 1 at 0.6 = 0.6 and 1000 in
	 * tier 2 at 0.6 + 0.05 = 0.65. In all 0.3 + 0.6 + 0.65 = 1.55.
	 */
	rating_read(id.meter, 2, "2025-03-03T02:00:00Z", 3000);
	rating_sum(id.meter, "true", "-1.55");
	rating_sum(id.meter, "band = 'valley'", "-0.3");
	rating_sum(id.meter, "band = 'peak'", "-1.25");
	rating_energy(id.meter, "band = 'peak' AND amount = -0.65", 1000);
	rating_balance(id.meter, "-1.55");
}
END_TEST

/* ------------------------------------------------- versions, assignments */

START_TEST(test_version_change_mid_interval_splits_by_time)
{
	struct rating_ids id;

	rating_meter(&id, "version", "Asia/Shanghai", "{\"price\": 0.5}");
	/* From noon local on 1 February (04:00Z) the price is 0.8. */
	rating_sql("SELECT prepaid.create_tariff_version('%s', "
	           "'2025-02-01 12:00+08', '{\"price\": 0.8}')",
	    id.tariff);
	rating_read(id.meter, 1, "2025-02-01T03:00:00Z", 7000);
	/*
	 * 2000 Wh from 11:00 to 13:00 local: 1000 Wh before noon at 0.5 = 0.5,
	 * 1000 Wh after at 0.8 = 0.8; 1.3, on two versions.
	 */
	rating_read(id.meter, 2, "2025-02-01T05:00:00Z", 9000);
	rating_sum(id.meter, "true", "-1.3");
	rating_sum(id.meter, "price = 0.5", "-0.5");
	rating_sum(id.meter, "price = 0.8", "-0.8");
	rating_expect("2",
	    "SELECT count(DISTINCT tariff_version_id) FROM "
	    "prepaid.ledger WHERE meter_id = '%s'",
	    id.meter);
	/* Later consumption is all at the new price: 500 x 0.8 = 0.4. */
	rating_read(id.meter, 3, "2025-02-02T05:00:00Z", 9500);
	rating_sum(id.meter, "to_seq = 3", "-0.4");
	rating_balance(id.meter, "-1.7");
}
END_TEST

START_TEST(test_tariff_assignment_change_mid_interval_splits_by_time)
{
	struct rating_ids id;
	char other[48];

	rating_meter(&id, "assign", "Asia/Shanghai", "{\"price\": 0.5}");
	snprintf(other, sizeof other, "%s_b", id.tariff);
	rating_tariff(other, "{\"price\": 0.9}");
	rating_sql("SELECT prepaid.assign_tariff('%s', '%s', "
	           "'2025-02-10 12:00+08')",
	    id.meter, other);
	rating_expect("2",
	    "SELECT count(*) FROM prepaid.meter_tariffs "
	    "WHERE meter_id = '%s'",
	    id.meter);
	rating_read(id.meter, 1, "2025-02-10T03:00:00Z", 0);
	/* 3000 Wh over 11:00-13:00 local: 1500 x 0.5 + 1500 x 0.9 = 0.75 + 1.35 */
	rating_read(id.meter, 2, "2025-02-10T05:00:00Z", 3000);
	rating_sum(id.meter, "price = 0.5", "-0.75");
	rating_sum(id.meter, "price = 0.9", "-1.35");
	rating_balance(id.meter, "-2.1");
}
END_TEST

START_TEST(test_site_default_tariff_and_no_tariff)
{
	struct rating_ids dflt, none;

	/* A meter without an assignment uses its site's default tariff. */
	rating_names(&dflt, "sitedefault");
	rating_sql("SELECT prepaid.create_site('%s', 'default tariff site', "
	           "'Asia/Shanghai')",
	    dflt.site);
	rating_tariff(dflt.tariff, "{\"price\": 0.6}");
	rating_sql("UPDATE prepaid.sites SET default_tariff_id = '%s' "
	           "WHERE site_id = '%s'",
	    dflt.tariff, dflt.site);
	rating_sql("SELECT prepaid.register_meter('%s')", dflt.meter);
	rating_sql("SELECT prepaid.set_meter_site('%s', '%s')", dflt.meter, dflt.site);
	rating_read(dflt.meter, 1, "2025-03-03T02:00:00Z", 0);
	/* 1000 Wh x 0.6 = 0.6 */
	rating_read(dflt.meter, 2, "2025-03-03T03:00:00Z", 1000);
	rating_balance(dflt.meter, "-0.6");

	/* With neither, consumption is not charged. */
	rating_names(&none, "notariff");
	rating_sql("SELECT prepaid.create_site('%s', 'no tariff site', "
	           "'Asia/Shanghai')",
	    none.site);
	rating_sql("SELECT prepaid.register_meter('%s')", none.meter);
	rating_sql("SELECT prepaid.set_meter_site('%s', '%s')", none.meter, none.site);
	rating_read(none.meter, 1, "2025-03-03T02:00:00Z", 0);
	rating_read(none.meter, 2, "2025-03-03T03:00:00Z", 1000);
	rating_expect("0",
	    "SELECT count(*) FROM prepaid.ledger WHERE "
	    "meter_id = '%s'",
	    none.meter);
	rating_balance(none.meter, "0");
}
END_TEST

/* ------------------------------------------- standing charge, service fee */

START_TEST(test_standing_charge_per_local_day)
{
	struct rating_ids id;

	rating_meter(
	    &id, "standing", "Asia/Shanghai", "{\"price\": 0.5, \"standing_per_day\": 1.2}");
	/* 23:30 local on Monday 3 March: the first reading charges its day. */
	rating_read(id.meter, 1, "2025-03-03T15:30:00Z", 0);
	rating_expect("2025-03-03",
	    "SELECT string_agg(day::text, ',' ORDER BY "
	    "day) FROM prepaid.ledger WHERE meter_id = '%s' AND kind = "
	    "'standing'",
	    id.meter);
	/*
	 * 16:30Z is 00:30 on 4 March local (still 3 March in UTC): a new day,
	 * a second standing charge. 1000 Wh x 0.5 = 0.5 across midnight.
	 */
	rating_read(id.meter, 2, "2025-03-03T16:30:00Z", 1000);
	rating_expect("2025-03-03,2025-03-04",
	    "SELECT string_agg(day::text, "
	    "',' ORDER BY day) FROM prepaid.ledger WHERE meter_id = '%s' "
	    "AND kind = 'standing'",
	    id.meter);
	rating_sum(id.meter, "kind = 'charge'", "-0.5");
	/* 23:00 local on 6 March: the 5th and the 6th. */
	rating_read(id.meter, 3, "2025-03-06T15:00:00Z", 1000);
	/* Again the 6th (23:59 local), and a duplicate: no more days. */
	rating_read(id.meter, 4, "2025-03-06T15:59:00Z", 1000);
	rating_read(id.meter, 4, "2025-03-06T15:59:00Z", 1000);
	rating_expect("2025-03-03,2025-03-04,2025-03-05,2025-03-06",
	    "SELECT string_agg(day::text, ',' ORDER BY day) FROM prepaid.ledger "
	    "WHERE meter_id = '%s' AND kind = 'standing'",
	    id.meter);
	/* Four days x 1.2 = 4.8, each row exactly 1.2. */
	rating_sum(id.meter, "kind = 'standing'", "-4.8");
	rating_expect("0",
	    "SELECT count(*) FROM prepaid.ledger WHERE "
	    "meter_id = '%s' AND kind = 'standing' AND amount <> -1.2",
	    id.meter);
	/* 4.8 + 0.5 = 5.3 */
	rating_balance(id.meter, "-5.3");
}
END_TEST

START_TEST(test_service_fee_per_kwh_added_to_price)
{
	struct rating_ids id;

	rating_meter(
	    &id, "service", "Asia/Shanghai", "{\"price\": 0.5283, \"service_per_kwh\": 0.05}");
	rating_read(id.meter, 1, "2025-03-03T02:00:00Z", 0);
	/* 1234 Wh x (0.5283 + 0.05) / 1000 = 1234 x 0.5783 / 1000 = 0.7136222 */
	rating_read(id.meter, 2, "2025-03-03T03:00:00Z", 1234);
	rating_sum(id.meter, "true", "-0.7136222");
	rating_balance(id.meter, "-0.7136222");
}
END_TEST

/* -------------------------------------------------------------- rounding */

START_TEST(test_amounts_exact_whole_fen_by_the_carry)
{
	struct rating_ids id, half;

	rating_meter(&id, "round", "Asia/Shanghai", "{\"price\": 0.5283}");
	rating_read(id.meter, 1, "2025-03-03T02:00:00Z", 0);
	/* 1 Wh x 0.5283 / 1000 = 0.0005283 yuan exactly, 0 fen yet. */
	rating_read(id.meter, 2, "2025-03-03T02:15:00Z", 1);
	rating_expect("-0.05283|0",
	    "SELECT exact_fen::numeric(20,5) || '|' || amount_fen FROM prepaid.ledger "
	    "WHERE meter_id = '%s' AND to_seq = 2",
	    id.meter);
	/* Two more 1 Wh intervals: 3 x 0.0005283 = 0.0015849, no drift. */
	rating_read(id.meter, 3, "2025-03-03T02:30:00Z", 2);
	rating_read(id.meter, 4, "2025-03-03T02:45:00Z", 3);
	rating_balance(id.meter, "-0.0015849");
	rating_expect("t",
	    "SELECT balance_exact = -0.0015849 AND balance = 0 AND carry_fen = 0.15849 "
	    "AND balance::text = '0.00' FROM prepaid.balances WHERE "
	    "meter_id = '%s'",
	    id.meter);
	rating_expect("t",
	    "SELECT site_id = '%s' AND last_reading_at = "
	    "'2025-03-03T02:45:00Z' FROM prepaid.balances WHERE meter_id = '%s'",
	    id.site, id.meter);

	/*
	 * Half a fen is carried, not charged: 10 Wh x 0.5 = 0.5 fen -> 0.00;
	 * the next half fen makes one: 20 Wh -> 1 fen, on that entry.
	 */
	rating_meter(&half, "roundhalf", "Asia/Shanghai", "{\"price\": 0.5}");
	rating_read(half.meter, 1, "2025-03-03T02:00:00Z", 0);
	rating_read(half.meter, 2, "2025-03-03T03:00:00Z", 10);
	rating_balance(half.meter, "-0.005");
	rating_expect("0.00",
	    "SELECT balance::text FROM prepaid.balances "
	    "WHERE meter_id = '%s'",
	    half.meter);
	rating_read(half.meter, 3, "2025-03-03T04:00:00Z", 20);
	rating_expect("0,-1",
	    "SELECT string_agg(amount_fen::text, ',' ORDER BY entry_id) FROM prepaid.ledger "
	    "WHERE meter_id = '%s' AND kind = 'charge'",
	    half.meter);
	/* Credit 0.01: -0.01 -> 0.00. */
	rating_sql("SELECT prepaid.credit('%s', 0.01, 'round-%s')", half.meter, rating_tag);
	rating_expect("0.00",
	    "SELECT balance::text FROM prepaid.balances "
	    "WHERE meter_id = '%s'",
	    half.meter);
	rating_balance(half.meter, "0.000");
}
END_TEST

/* ---------------------------------------------------- anomalies, repeats */

START_TEST(test_register_down_is_noted_never_charged)
{
	struct rating_ids id;

	rating_meter(&id, "regdown", "Asia/Shanghai", "{\"price\": 0.5}");
	rating_read(id.meter, 1, "2025-03-03T02:00:00Z", 5000);
	/* 1000 Wh x 0.5 = 0.5 */
	rating_read(id.meter, 2, "2025-03-03T03:00:00Z", 6000);
	/* Meter replaced: the register starts again from 100. */
	rating_read(id.meter, 3, "2025-03-03T04:00:00Z", 100);
	rating_sum(id.meter, "true", "-0.5");
	rating_expect("t",
	    "SELECT count(*) = 1 AND bool_and(state = 'noted' "
	    "AND from_seq = 2 AND to_seq = 3 AND from_wh = 6000 AND to_wh = 100) "
	    "FROM prepaid.anomalies WHERE meter_id = '%s' AND kind = "
	    "'register_down'",
	    id.meter);
	rating_expect("0",
	    "SELECT count(*) FROM prepaid.ledger WHERE "
	    "meter_id = '%s' AND to_seq = 3",
	    id.meter);
	/* Charging resumes from the new register: 1000 Wh x 0.5 = 0.5. */
	rating_read(id.meter, 4, "2025-03-03T05:00:00Z", 1100);
	rating_sum(id.meter, "to_seq = 4", "-0.5");
	rating_balance(id.meter, "-1.0");
}
END_TEST

START_TEST(test_implausible_jump_held_until_accepted)
{
	struct rating_ids id;
	char aid[32];

	/* The site's default limit: 60 kW. */
	rating_meter(&id, "jumpaccept", "Asia/Shanghai", "{\"price\": 0.5}");
	rating_read(id.meter, 1, "2025-03-03T02:00:00Z", 0);
	/* 1000 Wh in 15 min (4 kW): 0.5 */
	rating_read(id.meter, 2, "2025-03-03T02:15:00Z", 1000);
	/* 50000 Wh in 15 min is 200 kW; the limit is 60 kW x 0.25 h = 15000 Wh. */
	rating_read(id.meter, 3, "2025-03-03T02:30:00Z", 51000);
	rating_sum(id.meter, "true", "-0.5");
	rating_expect("t",
	    "SELECT count(*) = 1 AND bool_and(state = 'open' "
	    "AND from_seq = 2 AND to_seq = 3 AND energy_wh = 50000 AND "
	    "limit_wh = 15000) FROM prepaid.anomalies WHERE meter_id = '%s' "
	    "AND kind = 'implausible_jump'",
	    id.meter);
	/* Charging goes on from the new reading: 1000 Wh, 0.5; 1.0 in all. */
	rating_read(id.meter, 4, "2025-03-03T02:45:00Z", 52000);
	rating_sum(id.meter, "true", "-1.0");
	rating_balance(id.meter, "-1.0");

	snprintf(aid, sizeof aid, "%s",
	    rating_sql("SELECT id FROM "
	               "prepaid.anomalies WHERE meter_id = '%s'",
	        id.meter));
	rating_sql("SELECT prepaid.accept_anomaly(%s, 'confirmed by phone')", aid);
	/* Accepted: 50000 Wh x 0.5 = 25.0 for its interval; 26.0 in all. */
	rating_sum(id.meter, "from_seq = 2 AND to_seq = 3", "-25.0");
	rating_balance(id.meter, "-26.0");
	rating_expect("accepted",
	    "SELECT state FROM prepaid.anomalies "
	    "WHERE id = %s",
	    aid);
	/* Accepting again never charges again (an error or a no-op). */
	rating_sql_any("SELECT prepaid.accept_anomaly(%s, 'again')", aid);
	rating_balance(id.meter, "-26.0");
}
END_TEST

START_TEST(test_implausible_jump_rejected_is_never_charged)
{
	struct rating_ids id;
	char aid[32];

	rating_meter(&id, "jumpreject", "Asia/Shanghai", "{\"price\": 0.5}");
	/* A meter limit of 10 kW overrides the site's 60 kW. */
	rating_sql("UPDATE prepaid.meters SET max_power_w = 10000 "
	           "WHERE meter_id = '%s'",
	    id.meter);
	rating_read(id.meter, 1, "2025-03-03T02:00:00Z", 0);
	/*
	 * 1000 Wh in 10 s: the limit uses at least 60 s, 10 kW x 60 s =
	 * 166.67 Wh; held.
	 */
	rating_read(id.meter, 2, "2025-03-03T02:00:10Z", 1000);
	rating_expect("open",
	    "SELECT state FROM prepaid.anomalies WHERE "
	    "meter_id = '%s' AND kind = 'implausible_jump'",
	    id.meter);
	/* 2000 Wh in 1 h (2 kW), fine: 1.0 */
	rating_read(id.meter, 3, "2025-03-03T03:00:10Z", 3000);
	/* 30000 Wh in 1 h, beyond 10000 Wh: held. */
	rating_read(id.meter, 4, "2025-03-03T04:00:10Z", 33000);
	rating_expect("2",
	    "SELECT count(*) FROM prepaid.anomalies WHERE "
	    "meter_id = '%s' AND state = 'open'",
	    id.meter);
	snprintf(aid, sizeof aid, "%s",
	    rating_sql("SELECT id FROM "
	               "prepaid.anomalies WHERE meter_id = '%s' AND to_seq = 4",
	        id.meter));
	rating_sql("SELECT prepaid.reject_anomaly(%s, 'glitch')", aid);
	rating_expect("rejected",
	    "SELECT state FROM prepaid.anomalies "
	    "WHERE id = %s",
	    aid);
	/* And an accept after the reject must not charge it either. */
	rating_sql_any("SELECT prepaid.accept_anomaly(%s, 'too late')", aid);
	rating_read(id.meter, 5, "2025-03-03T05:00:10Z", 34000);
	/* 1.0 + 1000 Wh x 0.5 = 0.5: 1.5; the jumps never charged. */
	rating_sum(id.meter, "true", "-1.5");
	rating_expect("0",
	    "SELECT count(*) FROM prepaid.ledger WHERE "
	    "meter_id = '%s' AND to_seq IN (2, 4)",
	    id.meter);
	rating_balance(id.meter, "-1.5");
}
END_TEST

START_TEST(test_duplicates_and_late_readings_never_charge_twice)
{
	struct rating_ids id;
	static const struct rating_reading first[] = {
	    {1, "2025-03-03T02:00:00Z", 0}, {2, "2025-03-03T02:15:00Z", 1000},
	    {2, "2025-03-03T02:15:00Z", 1000}, /* in-batch repeat */
	};
	static const struct rating_reading late[] = {
	    {4, "2025-03-03T02:45:00Z", 3000},
	    {3, "2025-03-03T02:30:00Z", 2000},
	    {2, "2025-03-03T02:15:00Z", 1000},
	};
	static const struct rating_reading disorder[] = {
	    {8, "2025-03-03T03:45:00Z", 7500},
	    {7, "2025-03-03T03:30:00Z", 6000},
	    {8, "2025-03-03T03:45:00Z", 7500},
	};

	rating_meter(&id, "repeats", "Asia/Shanghai", "{\"price\": 0.5}");
	/* 1000 Wh x 0.5 = 0.5, once. */
	ck_assert_int_eq(rating_ingest(id.meter, first, RATING_NELEM(first)), 2);
	ck_assert_int_eq(rating_ingest(id.meter, first, RATING_NELEM(first)), 0);
	rating_sum(id.meter, "true", "-0.5");
	/* seq 5 after a gap (3, 4): 3000 Wh x 0.5 = 1.5, one interval 2-5. */
	rating_read(id.meter, 5, "2025-03-03T03:00:00Z", 4000);
	rating_sum(id.meter, "from_seq = 2 AND to_seq = 5", "-1.5");
	/*
	 * The gap filled late (with a repeat of 2): stored, and the interval
	 * 2-5 re-rated with the real readings: reversed, then 2-3, 3-4 and 4-5
	 * charged; the total stays 2.0 at a flat price.
	 */
	ck_assert_int_eq(rating_ingest(id.meter, late, RATING_NELEM(late)), 2);
	ck_assert_str_eq(rating_sql("SELECT count(*) FROM prepaid.readings "
	                            "WHERE meter_id = '%s'",
	                     id.meter),
	    "5");
	rating_sum(id.meter, "true", "-2.0");
	rating_expect("0|1|2-3:1000,2-5:0,3-4:1000,4-5:1000",
	    "SELECT sum(energy_wh) FILTER (WHERE from_seq = 2 AND to_seq = 5) || '|' || "
	    "count(*) FILTER (WHERE reverses IS NOT NULL) || '|' || "
	    "(SELECT string_agg(k || ':' || e, ',' ORDER BY k) FROM (SELECT from_seq || '-' || "
	    "to_seq AS k, sum(energy_wh) AS e FROM prepaid.ledger WHERE meter_id = '%s' AND "
	    "kind = 'charge' AND from_seq >= 2 GROUP BY 1) x) "
	    "FROM prepaid.ledger WHERE meter_id = '%s' AND kind = 'charge'",
	    id.meter, id.meter);
	/* Next in order: 1000 Wh, 0.5. */
	rating_read(id.meter, 6, "2025-03-03T03:15:00Z", 5000);
	/* Out of order in one batch, with a repeat: 2500 Wh, 1.25. */
	ck_assert_int_eq(rating_ingest(id.meter, disorder, RATING_NELEM(disorder)), 2);
	/* Everything again, in one batch: nothing new. */
	ck_assert_int_eq(rating_ingest(id.meter, disorder, RATING_NELEM(disorder)), 0);
	rating_read(id.meter, 5, "2025-03-03T03:00:00Z", 4000);
	/* 0.5 + 1.5 + 0.5 + 1.25 = 3.75 for 7500 Wh */
	rating_energy(id.meter, "kind = 'charge'", 7500);
	rating_balance(id.meter, "-3.75");
}
END_TEST

/* ----------------------------------------------------- operator money */

START_TEST(test_credit_idempotent_on_reference_and_audited)
{
	struct rating_ids id;
	char ref[32], e1[32];

	rating_names(&id, "credit");
	rating_sql("SELECT prepaid.register_meter('%s')", id.meter);
	snprintf(ref, sizeof ref, "wx-%s-1", rating_tag);

	snprintf(e1, sizeof e1, "%s",
	    rating_sql("SELECT prepaid.credit('%s', "
	               "100.00, '%s')",
	        id.meter, ref));
	/* The same reference again: the first entry, nothing credited. */
	ck_assert_str_eq(
	    rating_sql("SELECT prepaid.credit('%s', 100.00, '%s')", id.meter, ref), e1);
	rating_balance(id.meter, "100");
	rating_expect("t",
	    "SELECT count(*) = 1 AND bool_and(kind = 'payment' "
	    "AND amount = 100 AND reference = '%s') FROM prepaid.ledger "
	    "WHERE meter_id = '%s'",
	    ref, id.meter);
	/* Another reference credits again: 150.5 */
	rating_sql("SELECT prepaid.credit('%s', 50.5, '%s-2')", id.meter, ref);
	rating_balance(id.meter, "150.5");

	/* An adjustment, negative, with its reason and author: 145.0 */
	rating_sql("SELECT prepaid.adjust('%s', -5.5, 'meter test fee')", id.meter);
	rating_expect("t",
	    "SELECT count(*) = 1 AND bool_and(amount = -5.5 AND "
	    "reason = 'meter test fee' AND author = session_user) FROM "
	    "prepaid.ledger WHERE meter_id = '%s' AND kind = 'adjustment'",
	    id.meter);
	rating_balance(id.meter, "145.0");
	rating_expect("145.00",
	    "SELECT balance::text FROM prepaid.balances "
	    "WHERE meter_id = '%s'",
	    id.meter);

	/* Audit rows naming the database role, for credits and adjustment. */
	rating_expect("t",
	    "SELECT count(*) FILTER (WHERE action ILIKE "
	    "'%%credit%%') >= 2 AND count(*) FILTER (WHERE action ILIKE "
	    "'%%adjust%%') = 1 AND bool_and(actor = session_user AND at IS NOT "
	    "NULL) FROM prepaid.operator_audit WHERE "
	    "meter_id = '%s'",
	    id.meter);
}
END_TEST

START_TEST(test_ledger_is_append_only)
{
	struct rating_ids id;

	rating_names(&id, "appendonly");
	rating_sql("SELECT prepaid.register_meter('%s')", id.meter);
	rating_sql("SELECT prepaid.credit('%s', 10, 'ao-%s')", id.meter, rating_tag);
	rating_sql_fails("",
	    "UPDATE prepaid.ledger SET amount = 1000 "
	    "WHERE meter_id = '%s'",
	    id.meter);
	rating_sql_fails("", "DELETE FROM prepaid.ledger WHERE meter_id = '%s'", id.meter);
	rating_balance(id.meter, "10");
}
END_TEST

/* ------------------------------------------------------ bad definitions */

START_TEST(test_bad_tariff_definitions_raise_errors)
{
	struct rating_ids id;

	rating_names(&id, "bad");
	rating_sql("SELECT prepaid.create_tariff('%s', 'bad')", id.tariff);
	/* The first tier must start at 0 kWh (the message names from_kwh). */
	rating_sql_fails("from_kwh",
	    "SELECT prepaid.create_tariff_version('%s', "
	    "'%s', '{\"tiers\": [{\"from_kwh\": 10, \"price\": 0.5}]}')",
	    id.tariff, RATING_EPOCH);
	/* Tiers must rise. */
	rating_sql_fails("tiers",
	    "SELECT prepaid.create_tariff_version('%s', "
	    "'%s', '{\"tiers\": [{\"from_kwh\": 0, \"price\": 0.5}, "
	    "{\"from_kwh\": 0, \"price\": 0.6}]}')",
	    id.tariff, RATING_EPOCH);
	/* Bands must start at 00:00. */
	rating_sql_fails("bands",
	    "SELECT prepaid.create_tariff_version('%s', "
	    "'%s', '{\"bands\": {\"work\": [{\"start\": \"08:00\", \"band\": "
	    "\"peak\", \"price\": 0.6}]}}')",
	    id.tariff, RATING_EPOCH);
	/* No negative prices. */
	rating_sql_fails("price",
	    "SELECT prepaid.create_tariff_version('%s', "
	    "'%s', '{\"price\": -0.5}')",
	    id.tariff, RATING_EPOCH);
	/* Some price is required. */
	rating_sql_fails("price",
	    "SELECT prepaid.create_tariff_version('%s', "
	    "'%s', '{\"standing_per_day\": 1}')",
	    id.tariff, RATING_EPOCH);
	/* period_start_day is 1..28. */
	rating_sql_fails("period_start_day",
	    "SELECT "
	    "prepaid.create_tariff_version('%s', '%s', '{\"price\": 0.5, "
	    "\"period_start_day\": 31}')",
	    id.tariff, RATING_EPOCH);
	/* An unknown tariff for a version, or to assign. */
	rating_sql_fails("",
	    "SELECT prepaid.create_tariff_version('%s_nosuch', "
	    "'%s', '{\"price\": 0.5}')",
	    id.tariff, RATING_EPOCH);
	/* None of them left a version behind: a good one still goes in. */
	rating_sql("SELECT prepaid.create_tariff_version('%s', '%s', "
	           "'{\"price\": 0.5}')",
	    id.tariff, RATING_EPOCH);
}
END_TEST

/* ------------------------------------------------ fast path = full rating */

/*
 * The daemon charges most intervals on a fast path (the meter's rate cache,
 * no tariff lookup) and the rest by full rating. Whatever path an interval
 * takes, the money must be the same: two meters on the same tiered
 * time-of-use tariff with a free quota, a service fee and a standing charge
 * get the same 60 readings every 47 minutes over two days (crossing band
 * starts, midnights, the free quota and a tier threshold); one meter gets
 * each reading in its own batch (fast path wherever the cache covers the
 * interval), another all of them in one batch (full rating of the whole
 * chain), a third the first alone and then the rest 7 to a batch (the fast
 * path takes a batch's intervals up to the first its cache does not cover,
 * full rating the rest). Their ledgers must agree to the last digit, in
 * total, per band, per tier and in standing charges.
 */
#define RATING_FAST_N 60
START_TEST(test_fast_path_charges_exactly_as_full_rating)
{
	static const char def[] =
	    "{\"tiers\": [{\"from_kwh\": 0, \"price\": 0},"
	    " {\"from_kwh\": 6, \"price\": 0.05}], \"free_kwh\": 1,"
	    " \"service_per_kwh\": 0.01, \"standing_per_day\": 0.2, " RATING_TOU_BANDS "}";
	static char ts[RATING_FAST_N][32];
	struct rating_reading r[RATING_FAST_N];
	struct rating_ids fast, full, multi;
	time_t t0 = 1736884800; /* 2025-01-14T20:00:00Z, 04:00 local */
	long long wh = 500000;
	int i;

	for (i = 0; i < RATING_FAST_N; i++) {
		time_t t = t0 + (time_t)i * 47 * 60;
		struct tm tm;

		gmtime_r(&t, &tm);
		strftime(ts[i], sizeof ts[i], "%Y-%m-%dT%H:%M:%SZ", &tm);
		wh += 37 * (i % 7) + 11;
		r[i].seq = i + 1;
		r[i].ts = ts[i];
		r[i].wh = wh;
	}
	rating_meter(&fast, "fastpath", "Asia/Shanghai", def);
	rating_meter(&full, "fullrate", "Asia/Shanghai", def);
	rating_meter(&multi, "fastmany", "Asia/Shanghai", def);
	for (i = 0; i < RATING_FAST_N; i++)
		rating_ingest(fast.meter, &r[i], 1);
	rating_ingest(full.meter, r, RATING_FAST_N);
	rating_ingest(multi.meter, r, 1);
	for (i = 1; i < RATING_FAST_N; i += 7)
		rating_ingest(
		    multi.meter, &r[i], RATING_FAST_N - i < 7 ? (size_t)(RATING_FAST_N - i) : 7);

#define RATING_FAST_Q                                                                              \
	"SELECT coalesce(string_agg(k || '=' || v, ' ' ORDER BY k), '') FROM ("                    \
	" SELECT 'total' AS k, sum(" RATING_EXACT                                                  \
	")::text AS v FROM prepaid.ledger WHERE meter_id = '%s'"                                   \
	" UNION ALL SELECT 'standing', sum(" RATING_EXACT ")::text FROM prepaid.ledger"            \
	"  WHERE meter_id = '%s' AND kind = 'standing'"                                            \
	" UNION ALL SELECT 'band:' || band, sum(energy_wh)::text || '/' || sum(" RATING_EXACT      \
	")::text"                                                                                  \
	"  FROM prepaid.ledger WHERE meter_id = '%s' AND kind = 'charge' GROUP BY band"            \
	" UNION ALL SELECT 'tier:' || tier, sum(energy_wh)::text || '/' || sum(" RATING_EXACT      \
	")::text"                                                                                  \
	"  FROM prepaid.ledger WHERE meter_id = '%s' AND kind = 'charge' GROUP BY tier) x"
	{
		char *a = strdup(
		    rating_sql(RATING_FAST_Q, fast.meter, fast.meter, fast.meter, fast.meter));
		const char *b =
		    rating_sql(RATING_FAST_Q, full.meter, full.meter, full.meter, full.meter);

		ck_assert_msg(strcmp(a, b) == 0, "fast path: %s\nfull rating: %s", a, b);
		free(a);
		a = strdup(
		    rating_sql(RATING_FAST_Q, multi.meter, multi.meter, multi.meter, multi.meter));
		b = rating_sql(RATING_FAST_Q, full.meter, full.meter, full.meter, full.meter);
		ck_assert_msg(strcmp(a, b) == 0, "batches of 7: %s\nfull rating: %s", a, b);
		free(a);
	}
	/* The one-reading batches left a rate cache for the fast path to use. */
	rating_expect("t",
	    "SELECT rate_until IS NOT NULL FROM prepaid.meters"
	    " WHERE meter_id = '%s'",
	    fast.meter);
	/* All energy after the first reading was charged (some of it free). */
	rating_energy(fast.meter, "kind = 'charge'", wh - r[0].wh);
	rating_balance(fast.meter, rating_sql("SELECT sum(" RATING_EXACT ") FROM prepaid.ledger"
	                                      " WHERE meter_id = '%s'",
	                               full.meter));
	rating_balance(multi.meter, rating_sql("SELECT sum(" RATING_EXACT ") FROM prepaid.ledger"
	                                       " WHERE meter_id = '%s'",
	                                full.meter));
}
END_TEST

static Suite *
rating_suite(void)
{
	Suite *s = suite_create("rating");
	TCase *tc;

	tc = tcase_create("energy");
	tcase_add_checked_fixture(tc, rating_setup, rating_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_flat_price_charges_each_interval);
	tcase_add_test(tc, test_tier_boundary_inside_one_interval_is_split);
	tcase_add_test(tc, test_month_rollover_resets_tiers);
	tcase_add_test(tc, test_period_start_day_15_rolls_over_at_local_midnight);
	tcase_add_test(tc, test_yearly_period_rolls_over_on_its_start_month);
	tcase_add_test(tc, test_free_quota_is_free_of_energy_and_service_fee);
	tcase_add_test(tc, test_service_fee_per_kwh_added_to_price);
	tcase_add_test(tc, test_amounts_exact_whole_fen_by_the_carry);
	suite_add_tcase(s, tc);

	tc = tcase_create("time");
	tcase_add_checked_fixture(tc, rating_setup, rating_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_tou_band_start_splits_interval_by_local_time);
	tcase_add_test(tc, test_holidays_and_make_up_workdays_choose_bands);
	tcase_add_test(tc, test_tiers_with_bands_add_tier_increment_to_band_price);
	tcase_add_test(tc, test_version_change_mid_interval_splits_by_time);
	tcase_add_test(tc, test_tariff_assignment_change_mid_interval_splits_by_time);
	tcase_add_test(tc, test_site_default_tariff_and_no_tariff);
	tcase_add_test(tc, test_standing_charge_per_local_day);
	suite_add_tcase(s, tc);

	tc = tcase_create("anomalies");
	tcase_add_checked_fixture(tc, rating_setup, rating_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_register_down_is_noted_never_charged);
	tcase_add_test(tc, test_implausible_jump_held_until_accepted);
	tcase_add_test(tc, test_implausible_jump_rejected_is_never_charged);
	tcase_add_test(tc, test_duplicates_and_late_readings_never_charge_twice);
	suite_add_tcase(s, tc);

	tc = tcase_create("operator");
	tcase_add_checked_fixture(tc, rating_setup, rating_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_credit_idempotent_on_reference_and_audited);
	tcase_add_test(tc, test_ledger_is_append_only);
	tcase_add_test(tc, test_bad_tariff_definitions_raise_errors);
	tcase_add_test(tc, test_fast_path_charges_exactly_as_full_rating);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr;
	int failed;

	/* Four base-36 characters from the clock and the process. */
	{
		static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
		unsigned long v = (unsigned long)time(NULL) * 31UL + (unsigned long)getpid();
		int i;

		for (i = 0; i < 4; i++) {
			rating_tag[i] = digits[v % 36];
			v /= 36;
		}
		rating_tag[4] = '\0';
	}
	if (getenv("PGDATABASE") == NULL && getenv("PGHOST") == NULL) {
		fprintf(stderr, "check_rating: no PostgreSQL in the environment "
		                "(run it through tests/it/rating.sh)\n");
		return 77;
	}
	sr = srunner_create(rating_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
