/*
 * check_payload.c: unit tests of payload.c, the meter contract of DESIGN.md.
 * Each test feeds a topic, a time stamp or a payload as a meter would send
 * it and asserts the exact outcome the daemon acts on: the decoded values,
 * or the one reject and its reason. Reasons are asserted verbatim because
 * operators read them in logs and metrics.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "payload.h"

#define MAX_BYTES 4096
#define MAX_ITEMS 16

/* 2026-11-27T10:15:00+08:00, checked with date(1): 1795745700 s. */
#define KNOWN_US INT64_C(1795745700000000)

struct collect {
	int nreadings, nrejects;
	struct reading readings[MAX_ITEMS];
	int reject_index[MAX_ITEMS];
	char reject_reason[MAX_ITEMS][200];
};

static void
collect_reading(void *arg, const struct reading *r)
{
	struct collect *c = arg;

	ck_assert_int_lt(c->nreadings, MAX_ITEMS);
	c->readings[c->nreadings++] = *r;
}

static void
collect_reject(void *arg, int item_index, const char *reason)
{
	struct collect *c = arg;

	ck_assert_int_lt(c->nrejects, MAX_ITEMS);
	c->reject_index[c->nrejects] = item_index;
	snprintf(c->reject_reason[c->nrejects], sizeof c->reject_reason[0], "%s", reason);
	c->nrejects++;
}

static int
decode_len(struct collect *c, const char *buf, size_t len)
{
	struct payload_sink sink = {collect_reading, collect_reject, c};
	int good;

	memset(c, 0, sizeof *c);
	good = payload_decode_readings("m-1", buf, len, MAX_BYTES, MAX_ITEMS, &sink);
	ck_assert_int_eq(good, c->nreadings);
	return good;
}

static int
decode(struct collect *c, const char *json)
{
	return decode_len(c, json, strlen(json));
}

/* The payload yields exactly one reject, at index, with this reason. */
static void
assert_one_reject(const char *buf, size_t len, int index, const char *reason)
{
	struct collect c;

	ck_assert_int_eq(decode_len(&c, buf, len), 0);
	ck_assert_int_eq(c.nrejects, 1);
	ck_assert_int_eq(c.reject_index[0], index);
	ck_assert_str_eq(c.reject_reason[0], reason);
}

START_TEST(topic_escaped_for_the_operator)
{
	char out[64];

	payload_escape_topic("meters/bad id!/reading", out, sizeof out);
	ck_assert_str_eq(out, "meters/bad id!/reading");
	/* UTF-8 (电表) kept as its bytes, escaped; '%' and controls too. */
	payload_escape_topic("meters/\xe7\x94\xb5\xe8\xa1\xa8/reading", out, sizeof out);
	ck_assert_str_eq(out, "meters/%E7%94%B5%E8%A1%A8/reading");
	payload_escape_topic("a%b\n\x7f\xff", out, sizeof out);
	ck_assert_str_eq(out, "a%25b%0A%7F%FF");
	/* Cut with "...", never inside an escape; an exact fit is not cut. */
	payload_escape_topic("abcdefgh", out, 9);
	ck_assert_str_eq(out, "abcdefgh");
	payload_escape_topic("abcdefghi", out, 9);
	ck_assert_str_eq(out, "abcde...");
	payload_escape_topic("ab\xe7\x94\xb5", out, 9);
	ck_assert_str_eq(out, "ab%E7...");
	payload_escape_topic("abcd\xe7", out, 8);
	ck_assert_str_eq(out, "abcd%E7");
	payload_escape_topic("abcd\xe7", out, 7);
	ck_assert_str_eq(out, "abc...");
	payload_escape_topic("", out, 4);
	ck_assert_str_eq(out, "");
}
END_TEST

START_TEST(reading_good_decodes_every_field)
{
	struct collect c;
	const struct reading *r;

	ck_assert_int_eq(
	    decode(&c,
	        "{\"seq\": 1042, \"ts\": \"2026-11-27T10:15:00+08:00\", \"energy_wh\": 1234567,"
	        " \"relay\": \"closed\", \"power_w\": 1500, \"voltage_v\": 230.5,"
	        " \"current_a\": 6.52, \"meter\": \"someone-else\", \"fw\": {\"v\": [1, 2]}}"),
	    1);
	ck_assert_int_eq(c.nrejects, 0);
	r = &c.readings[0];
	ck_assert_str_eq(r->meter_id, "m-1");
	ck_assert_int_eq(r->seq, 1042);
	ck_assert_int_eq(r->ts_us, KNOWN_US);
	ck_assert_str_eq(r->ts, "2026-11-27T10:15:00+08:00");
	ck_assert_int_eq(r->energy_wh, 1234567);
	ck_assert_int_eq(r->relay, RELAY_CLOSED);
	ck_assert(r->has_power && r->has_voltage && r->has_current);
	ck_assert_double_eq(r->power_w, 1500.0);
	ck_assert_double_eq(r->voltage_v, 230.5);
	ck_assert_double_eq(r->current_a, 6.52);
}
END_TEST

START_TEST(reading_minimal_leaves_optionals_absent)
{
	struct collect c;
	const struct reading *r;

	ck_assert_int_eq(
	    decode(&c, "{\"seq\":0,\"ts\":\"2000-01-01T00:00:00Z\",\"energy_wh\":0}"), 1);
	r = &c.readings[0];
	ck_assert_int_eq(r->seq, 0);
	ck_assert_int_eq(r->energy_wh, 0);
	ck_assert_int_eq(r->ts_us, INT64_C(946684800000000));
	ck_assert_int_eq(r->relay, RELAY_NONE);
	ck_assert(!r->has_power && !r->has_voltage && !r->has_current);
}
END_TEST

START_TEST(reading_large_int64_values_kept_exactly)
{
	struct collect c;

	ck_assert_int_eq(decode(&c, "{\"seq\":9223372036854775807,\"ts\":\"2026-01-01T00:00:00Z\","
	                            "\"energy_wh\":9007199254740993}"),
	    1);
	ck_assert_int_eq(c.readings[0].seq, INT64_MAX);
	/* 2^53 + 1: would be lost through a double. */
	ck_assert_int_eq(c.readings[0].energy_wh, INT64_C(9007199254740993));
}
END_TEST

START_TEST(reading_array_bad_item_rejected_rest_kept)
{
	struct collect c;

	ck_assert_int_eq(
	    decode(&c, "["
	               "{\"seq\":1,\"ts\":\"2026-11-27T10:00:00+08:00\",\"energy_wh\":100,"
	               "\"relay\":\"open\"},"
	               "{\"seq\":2,\"ts\":\"2026-11-27T10:15:00+08:00\",\"energy_wh\":-5},"
	               "{\"seq\":3,\"ts\":\"2026-11-27T10:30:00+08:00\",\"energy_wh\":120,"
	               "\"relay\":\"armed\"}]"),
	    2);
	ck_assert_int_eq(c.nrejects, 1);
	ck_assert_int_eq(c.reject_index[0], 1);
	ck_assert_str_eq(c.reject_reason[0], "energy_wh: negative register");
	ck_assert_int_eq(c.readings[0].seq, 1);
	ck_assert_int_eq(c.readings[0].energy_wh, 100);
	ck_assert_int_eq(c.readings[0].relay, RELAY_OPEN);
	ck_assert_int_eq(c.readings[1].seq, 3);
	ck_assert_int_eq(c.readings[1].energy_wh, 120);
	ck_assert_int_eq(c.readings[1].relay, RELAY_ARMED);
	ck_assert_int_eq(c.readings[1].ts_us - c.readings[0].ts_us, INT64_C(30) * 60 * 1000000);
}
END_TEST

START_TEST(reading_array_non_object_items_rejected)
{
	struct collect c;

	ck_assert_int_eq(decode(&c, "[1, {\"seq\":7,\"ts\":\"2026-11-27T10:00:00Z\","
	                            "\"energy_wh\":1}, \"x\", null, []]"),
	    1);
	ck_assert_int_eq(c.readings[0].seq, 7);
	ck_assert_int_eq(c.nrejects, 4);
	ck_assert_int_eq(c.reject_index[0], 0);
	ck_assert_int_eq(c.reject_index[1], 2);
	ck_assert_int_eq(c.reject_index[2], 3);
	ck_assert_int_eq(c.reject_index[3], 4);
	ck_assert_str_eq(c.reject_reason[3], "item is not an object");
}
END_TEST

/* One bad field per row; every other field of the item is good. */
static const struct {
	const char *json;
	const char *reason;
} item_rejects[] = {
    {"{\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1}", "seq: missing"},
    {"{\"seq\":\"5\",\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1}",
        "seq: not a non-negative integer"},
    {"{\"seq\":-1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1}",
        "seq: not a non-negative integer"},
    {"{\"seq\":5.0,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1}",
        "seq: not a non-negative integer"},
    {"{\"seq\":true,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1}",
        "seq: not a non-negative integer"},
    {"{\"seq\":null,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1}",
        "seq: not a non-negative integer"},
    {"{\"seq\":1e30,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1}",
        "seq: not a non-negative integer"},
    {"{\"seq\":1,\"energy_wh\":1}", "ts: missing"},
    {"{\"seq\":1,\"ts\":1795745700,\"energy_wh\":1}", "ts: not RFC 3339 with offset"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00\",\"energy_wh\":1}", "ts: not RFC 3339 with offset"},
    {"{\"seq\":1,\"ts\":\"2026-11-27 10:15:00Z\",\"energy_wh\":1}", "ts: not RFC 3339 with offset"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00+08:00                \",\"energy_wh\":1}",
        "ts: not RFC 3339 with offset"},
    {"{\"seq\":1,\"ts\":\"1999-12-31T23:59:59Z\",\"energy_wh\":1}", "ts: out of range"},
    {"{\"seq\":1,\"ts\":\"2100-01-01T00:00:00Z\",\"energy_wh\":1}", "ts: out of range"},
    {"{\"seq\":1,\"ts\":\"1970-01-01T00:00:00Z\",\"energy_wh\":1}", "ts: out of range"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\"}", "energy_wh: missing"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":-1}",
        "energy_wh: negative register"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1.5}", "energy_wh: not an integer"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1e30}", "energy_wh: not an integer"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":\"100\"}",
        "energy_wh: not an integer"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1,\"relay\":\"half\"}",
        "relay: not closed, open or armed"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1,\"relay\":\"CLOSED\"}",
        "relay: not closed, open or armed"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1,\"relay\":1}",
        "relay: not closed, open or armed"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1,\"power_w\":\"1\"}",
        "power_w: not a number"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1,\"voltage_v\":true}",
        "voltage_v: not a number"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1,\"current_a\":null}",
        "current_a: not a number"},
};

START_TEST(reading_item_reject_reasons)
{
	assert_one_reject(
	    item_rejects[_i].json, strlen(item_rejects[_i].json), 0, item_rejects[_i].reason);
}
END_TEST

/* Whole-payload problems: one reject with item index -1, nothing decoded. */
static const struct {
	const char *buf;
	size_t len; /* 0: strlen(buf) */
	const char *reason;
} payload_rejects[] = {
    {"{\"seq\":1,", 0, "malformed JSON: string or '}' expected at line 1 column 9"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1,\"seq\":2}", 0,
        "malformed JSON: duplicate object key at line 1 column 56"},
    {"{\"seq\":99999999999999999999,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1}", 0,
        "malformed JSON: too big integer at line 1 column 27"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1e400}", 0,
        "malformed JSON: real number overflow at line 1 column 54"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1,\"x\":\"\xff\xfe\"}", 0,
        "malformed JSON: unable to decode byte 0xff at line 1 column 56"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1,\"x\":\"a\0b\"}", 59,
        "malformed JSON: control character 0x0 at line 1 column 57"},
    {"{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1}\0", 52,
        "malformed JSON: end of file expected at line 1 column 52"},
    {"{\"seq\":1,\"x\":\"\\u0000\"}", 0,
        "malformed JSON: \\u0000 is not allowed without JSON_ALLOW_NUL at line 1 column 21"},
    {"", 0, "malformed JSON: unexpected token at line 1 column 0"},
    {"5", 0, "not an object or array"},
    {"\"reading\"", 0, "not an object or array"},
    {"null", 0, "not an object or array"},
    {"[]", 0, "empty array"},
    {"[{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}]", 0, "too many items (17 > 16)"},
};

START_TEST(reading_payload_reject_reasons)
{
	const char *buf = payload_rejects[_i].buf;
	size_t len = payload_rejects[_i].len ? payload_rejects[_i].len : strlen(buf);

	assert_one_reject(buf, len, -1, payload_rejects[_i].reason);
}
END_TEST

START_TEST(reading_oversize_rejected_before_parsing)
{
	struct payload_sink sink = {collect_reading, collect_reject, NULL};
	struct collect c;
	char *big = malloc(MAX_BYTES + 1);

	/* Not even JSON: the size check must come first. */
	memset(big, '[', MAX_BYTES + 1);
	memset(&c, 0, sizeof c);
	sink.arg = &c;
	ck_assert_int_eq(
	    payload_decode_readings("m-1", big, MAX_BYTES + 1, MAX_BYTES, MAX_ITEMS, &sink), 0);
	ck_assert_int_eq(c.nrejects, 1);
	ck_assert_int_eq(c.reject_index[0], -1);
	ck_assert_str_eq(c.reject_reason[0], "payload too large (4097 bytes > 4096)");
	free(big);
}
END_TEST

START_TEST(reading_reasons_never_echo_payload)
{
	struct collect c;

	decode(&c, "{\"password\": \"hunter2\" \"energy_wh\"}");
	ck_assert_int_eq(c.nrejects, 1);
	ck_assert_ptr_null(strstr(c.reject_reason[0], "hunter2"));
	ck_assert_ptr_null(strstr(c.reject_reason[0], "energy_wh"));
	decode(&c, "{\"seq\":1,\"ts\":\"hunter2hunter2\",\"energy_wh\":1}");
	ck_assert_ptr_null(strstr(c.reject_reason[0], "hunter2"));
}
END_TEST

START_TEST(reading_null_sink_callbacks_tolerated)
{
	struct payload_sink sink = {NULL, NULL, NULL};
	const char *json = "[{\"seq\":1,\"ts\":\"2026-11-27T10:15:00Z\",\"energy_wh\":1},2]";

	ck_assert_int_eq(payload_decode_readings("m", json, strlen(json), MAX_BYTES, 4, &sink), 1);
	ck_assert_int_eq(payload_decode_readings("m", json, strlen(json), MAX_BYTES, 4, NULL), 1);
}
END_TEST

/* RFC 3339: the string, whether it parses, and the instant in seconds. */
static const struct {
	const char *s;
	bool ok;
	int64_t secs;
	int64_t frac_us;
} ts_cases[] = {
    {"2026-11-27T10:15:00+08:00", true, 1795745700, 0},
    {"2026-11-27T02:15:00Z", true, 1795745700, 0},
    {"2026-11-27t02:15:00z", true, 1795745700, 0},
    {"2026-11-26T20:45:00-05:30", true, 1795745700, 0},
    {"2026-11-27T02:15:00-00:00", true, 1795745700, 0},
    {"2026-11-27T02:15:00.5Z", true, 1795745700, 500000},
    {"2026-11-27T10:15:00.123456+08:00", true, 1795745700, 123456},
    {"2026-11-27T02:15:00.000001Z", true, 1795745700, 1},
    {"2026-11-28T02:14:00+23:59", true, 1795745700, 0},
    {"1970-01-01T00:00:00Z", true, 0, 0},
    {"0000-01-01T00:00:00Z", true, -62167219200, 0},
    {"9999-12-31T23:59:59Z", true, 253402300799, 0},
    {"2024-02-29T12:00:00Z", true, 1709208000, 0},
    {"2000-02-29T00:00:00Z", true, 951782400, 0},
    /* leap second: counted as the next second (documented in payload.c) */
    {"2016-12-31T23:59:60Z", true, 1483228800, 0},
    {"2026-11-27T02:15:00.1234567Z", false, 0, 0},
    {"2026-11-27T02:15:00.Z", false, 0, 0},
    {"2026-11-27T10:15:00", false, 0, 0},
    {"2026-11-27T10:15:00+08", false, 0, 0},
    {"2026-11-27T10:15:00+0800", false, 0, 0},
    {"2026-11-27T10:15:00+24:00", false, 0, 0},
    {"2026-11-27T10:15:00+08:60", false, 0, 0},
    {"2026-11-27T10:15:00Z ", false, 0, 0},
    {"2026-11-27 10:15:00Z", false, 0, 0},
    {"2026-11-27T10:15Z", false, 0, 0},
    {"2026-11-27", false, 0, 0},
    {"2023-02-29T00:00:00Z", false, 0, 0},
    {"2100-02-29T00:00:00Z", false, 0, 0},
    {"2026-04-31T00:00:00Z", false, 0, 0},
    {"2026-11-27T24:00:00Z", false, 0, 0},
    {"2026-11-27T10:60:00Z", false, 0, 0},
    {"2026-11-27T10:15:61Z", false, 0, 0},
    {"2026-13-01T00:00:00Z", false, 0, 0},
    {"2026-00-01T00:00:00Z", false, 0, 0},
    {"2026-01-00T00:00:00Z", false, 0, 0},
    {"+026-11-27T10:15:00Z", false, 0, 0},
    {"2026-1a-27T10:15:00Z", false, 0, 0},
    {"", false, 0, 0},
};

START_TEST(rfc3339_parse_cases)
{
	int64_t us = -42;

	ck_assert_msg(
	    payload_parse_rfc3339(ts_cases[_i].s, &us) == ts_cases[_i].ok, "%s", ts_cases[_i].s);
	if (ts_cases[_i].ok)
		ck_assert_int_eq(us, ts_cases[_i].secs * 1000000 + ts_cases[_i].frac_us);
}
END_TEST

START_TEST(rfc3339_format_known_instants)
{
	char out[64];

	payload_format_rfc3339(KNOWN_US, out, sizeof out);
	ck_assert_str_eq(out, "2026-11-27T02:15:00.000000Z");
	payload_format_rfc3339(KNOWN_US + 123456, out, sizeof out);
	ck_assert_str_eq(out, "2026-11-27T02:15:00.123456Z");
	payload_format_rfc3339(0, out, sizeof out);
	ck_assert_str_eq(out, "1970-01-01T00:00:00.000000Z");
	payload_format_rfc3339(-1, out, sizeof out);
	ck_assert_str_eq(out, "1969-12-31T23:59:59.999999Z");
	payload_format_rfc3339(INT64_C(951782400000000) - 1, out, sizeof out);
	ck_assert_str_eq(out, "2000-02-28T23:59:59.999999Z");
	payload_format_rfc3339(INT64_C(-62167219200000000), out, sizeof out);
	ck_assert_str_eq(out, "0000-01-01T00:00:00.000000Z");
	/* a short buffer is truncated, never overrun */
	memset(out, 'x', sizeof out);
	payload_format_rfc3339(KNOWN_US, out, 11);
	ck_assert_str_eq(out, "2026-11-27");
	ck_assert_int_eq(out[11], 'x');
	payload_format_rfc3339(INT64_MIN, out, sizeof out);
	payload_format_rfc3339(INT64_MAX, out, sizeof out);
}
END_TEST

START_TEST(rfc3339_round_trip_through_format)
{
	static const int64_t values[] = {
	    KNOWN_US,
	    KNOWN_US + 1,
	    0,
	    -1,
	    INT64_C(951782400000000),
	    INT64_C(1483228799999999),
	    INT64_C(4102444799999999),
	    INT64_C(-62167219200000000),
	    INT64_C(253402300799999999),
	};
	char out[64];
	int64_t us;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(values); i++) {
		payload_format_rfc3339(values[i], out, sizeof out);
		ck_assert_int_eq(strlen(out), 27);
		ck_assert_msg(payload_parse_rfc3339(out, &us), "%s", out);
		ck_assert_int_eq(us, values[i]);
	}
	ck_assert(payload_parse_rfc3339("2026-11-27T10:15:00+08:00", &us));
	payload_format_rfc3339(us, out, sizeof out);
	ck_assert_str_eq(out, "2026-11-27T02:15:00.000000Z");
}
END_TEST

static const struct {
	const char *topic;
	const char *prefix;
	enum topic_kind kind;
	const char *id_or_why;
} topic_cases[] = {
    {"meters/0123456789AB/reading", "meters", TOPIC_READING, "0123456789AB"},
    {"meters/m-1/event", "meters", TOPIC_EVENT, "m-1"},
    {"meters/A.b_c-9/ack", "meters", TOPIC_ACK, "A.b_c-9"},
    {"site/7/meters/m1/reading", "site/7/meters", TOPIC_READING, "m1"},
    {"meters/abcdefghijklmnopqrstuvwxyz012345/reading", "meters", TOPIC_READING,
        "abcdefghijklmnopqrstuvwxyz012345"},
    {"meters/abcdefghijklmnopqrstuvwxyz0123456/reading", "meters", TOPIC_UNKNOWN, "bad meter id"},
    {"meters//reading", "meters", TOPIC_UNKNOWN, "bad meter id"},
    {"meters/m+1/reading", "meters", TOPIC_UNKNOWN, "bad meter id"},
    {"meters/m 1/reading", "meters", TOPIC_UNKNOWN, "bad meter id"},
    {"meters/m\xc3\xa9/reading", "meters", TOPIC_UNKNOWN, "bad meter id"},
    {"meters/m1/cmd", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"meters/m1/Reading", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"meters/m1/reading/", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"meters/m1/reading/x", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"meters/a/b/reading", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"meters/m1", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"meters", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"other/m1/reading", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"metersX/m1/reading", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"meter/m1/reading", "meters", TOPIC_UNKNOWN, "unknown topic"},
    {"meters/m1/reading", "site/meters", TOPIC_UNKNOWN, "unknown topic"},
    {"", "meters", TOPIC_UNKNOWN, "unknown topic"},
};

START_TEST(topic_parse_cases)
{
	char id[METER_ID_MAX + 1];
	const char *why = "unset";
	enum topic_kind kind;

	memset(id, 'x', sizeof id);
	kind = payload_parse_topic(topic_cases[_i].topic, topic_cases[_i].prefix, id, &why);
	ck_assert_msg(kind == topic_cases[_i].kind, "%s", topic_cases[_i].topic);
	if (kind != TOPIC_UNKNOWN) {
		ck_assert_str_eq(id, topic_cases[_i].id_or_why);
		ck_assert_ptr_null(why);
	} else {
		ck_assert_str_eq(why, topic_cases[_i].id_or_why);
		ck_assert_str_eq(id, "");
	}
}
END_TEST

START_TEST(meter_id_and_relay_names)
{
	ck_assert(payload_meter_id_valid("m1", 2));
	ck_assert(payload_meter_id_valid("m1/reading", 2)); /* only len counts */
	ck_assert(!payload_meter_id_valid("m1", 0));
	ck_assert(!payload_meter_id_valid("m\0", 2));
	ck_assert(!payload_meter_id_valid("m/", 2));
	ck_assert(!payload_meter_id_valid(NULL, 2));
	ck_assert(payload_meter_id_valid("01234567890123456789012345678901", 32));
	ck_assert(!payload_meter_id_valid("012345678901234567890123456789012", 33));

	ck_assert_str_eq(payload_relay_name(RELAY_CLOSED), "closed");
	ck_assert_str_eq(payload_relay_name(RELAY_OPEN), "open");
	ck_assert_str_eq(payload_relay_name(RELAY_ARMED), "armed");
	ck_assert_ptr_null(payload_relay_name(RELAY_NONE));
	ck_assert_int_eq(payload_relay_parse("closed"), RELAY_CLOSED);
	ck_assert_int_eq(payload_relay_parse("open"), RELAY_OPEN);
	ck_assert_int_eq(payload_relay_parse("armed"), RELAY_ARMED);
	ck_assert_int_eq(payload_relay_parse("opened"), RELAY_NONE);
	ck_assert_int_eq(payload_relay_parse(""), RELAY_NONE);
	ck_assert_int_eq(payload_relay_parse(NULL), RELAY_NONE);
}
END_TEST

static bool
event(const char *json, struct meter_event *ev, char *why)
{
	return payload_decode_event("m-1", json, strlen(json), MAX_BYTES, ev, why, 128);
}

START_TEST(event_relay_decodes)
{
	struct meter_event ev;
	char why[128] = "";

	ck_assert(event("{\"ts\":\"2026-11-27T10:15:00+08:00\",\"type\":\"relay\","
	                "\"relay\":\"closed\",\"cause\":\"button\",\"note\":1}",
	    &ev, why));
	ck_assert_str_eq(ev.meter_id, "m-1");
	ck_assert_int_eq(ev.ts_us, KNOWN_US);
	ck_assert_str_eq(ev.ts, "2026-11-27T10:15:00+08:00");
	ck_assert_str_eq(ev.type, "relay");
	ck_assert_int_eq(ev.relay, RELAY_CLOSED);
	ck_assert_str_eq(ev.cause, "button");
}
END_TEST

START_TEST(event_other_types_decode)
{
	struct meter_event ev;
	char why[128] = "";

	/* relay means nothing outside a relay event: ignored, even if bogus */
	ck_assert(event(
	    "{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"tamper\",\"relay\":\"x\"}", &ev, why));
	ck_assert_str_eq(ev.type, "tamper");
	ck_assert_int_eq(ev.relay, RELAY_NONE);
	ck_assert_str_eq(ev.cause, "");
	ck_assert(event("{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"power_up\",\"cause\":"
	                "\"power_up\"}",
	    &ev, why));
	ck_assert_str_eq(ev.cause, "power_up");
	ck_assert(event(
	    "{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"abcdefghijklmnopqrstuvw\"}", &ev, why));
	ck_assert_str_eq(ev.type, "abcdefghijklmnopqrstuvw");
}
END_TEST

static const struct {
	const char *json;
	const char *reason;
} event_rejects[] = {
    {"{\"type\":\"tamper\"}", "ts: missing"},
    {"{\"ts\":\"2026-11-27T10:15:00\",\"type\":\"tamper\"}", "ts: not RFC 3339 with offset"},
    {"{\"ts\":\"1980-01-01T00:00:00Z\",\"type\":\"tamper\"}", "ts: out of range"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\"}", "type: missing"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"\"}", "type: not 1-23 of [a-z_]"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"Relay\"}", "type: not 1-23 of [a-z_]"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"power-up\"}", "type: not 1-23 of [a-z_]"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"abcdefghijklmnopqrstuvwx\"}",
        "type: not 1-23 of [a-z_]"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":5}", "type: not 1-23 of [a-z_]"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"relay\"}", "relay: missing"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"relay\",\"relay\":\"ajar\"}",
        "relay: not closed, open or armed"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"relay\",\"relay\":\"open\","
     "\"cause\":\"lightning\"}",
        "cause: unknown"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"tamper\",\"cause\":3}", "cause: unknown"},
    {"[{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"tamper\"}]", "not an object"},
    {"{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"tamper\",\"type\":\"clock\"}",
        "malformed JSON: duplicate object key at line 1 column 51"},
    {"{\"ts\":", "malformed JSON: unexpected token at line 1 column 6"},
};

START_TEST(event_reject_reasons)
{
	struct meter_event ev;
	char why[128] = "";

	ck_assert(!event(event_rejects[_i].json, &ev, why));
	ck_assert_str_eq(why, event_rejects[_i].reason);
	ck_assert_str_eq(ev.type, "");
}
END_TEST

START_TEST(event_oversize_and_short_why)
{
	const char *json = "{\"ts\":\"2026-11-27T02:15:00Z\",\"type\":\"tamper\"}";
	struct meter_event ev;
	char why[16];

	ck_assert(!payload_decode_event("m", json, strlen(json), 10, &ev, why, sizeof why));
	ck_assert_str_eq(why, "payload too lar");
	ck_assert(!payload_decode_event("m", json, strlen(json), 10, &ev, NULL, 0));
	ck_assert(payload_decode_event("m", json, strlen(json), strlen(json), &ev, NULL, 0));
}
END_TEST

static bool
ack(const char *json, struct meter_ack *a, char *why)
{
	return payload_decode_ack("m-1", json, strlen(json), MAX_BYTES, a, why, 128);
}

START_TEST(ack_decodes)
{
	struct meter_ack a;
	char why[128] = "";

	ck_assert(ack("{\"id\":\"cmd-42:7.x_Y\",\"result\":\"ok\",\"relay\":\"armed\","
	              "\"detail\":\"armed, press button\",\"extra\":true}",
	    &a, why));
	ck_assert_str_eq(a.meter_id, "m-1");
	ck_assert_str_eq(a.id, "cmd-42:7.x_Y");
	ck_assert_str_eq(a.result, "ok");
	ck_assert_int_eq(a.relay, RELAY_ARMED);
	ck_assert_str_eq(a.detail, "armed, press button");

	ck_assert(ack("{\"id\":\"1\",\"result\":\"unsupported\"}", &a, why));
	ck_assert_str_eq(a.result, "unsupported");
	ck_assert_int_eq(a.relay, RELAY_NONE);
	ck_assert_str_eq(a.detail, "");
	ck_assert(ack("{\"id\":\"1\",\"result\":\"rejected\"}", &a, why));
	ck_assert(ack("{\"id\":\"1\",\"result\":\"expired\"}", &a, why));
}
END_TEST

START_TEST(ack_id_length_limit)
{
	char json[256], id[PAYLOAD_CMD_ID_MAX + 2];
	struct meter_ack a;
	char why[128] = "";

	memset(id, 'a', sizeof id - 1);
	id[PAYLOAD_CMD_ID_MAX] = '\0';
	snprintf(json, sizeof json, "{\"id\":\"%s\",\"result\":\"ok\"}", id);
	ck_assert(ack(json, &a, why));
	ck_assert_str_eq(a.id, id);
	id[PAYLOAD_CMD_ID_MAX] = 'a';
	id[PAYLOAD_CMD_ID_MAX + 1] = '\0';
	snprintf(json, sizeof json, "{\"id\":\"%s\",\"result\":\"ok\"}", id);
	ck_assert(!ack(json, &a, why));
	ck_assert_str_eq(why, "id: not 1-64 of [A-Za-z0-9_.:-]");
}
END_TEST

START_TEST(ack_detail_truncated_on_utf8_boundary)
{
	char json[1024], detail[512];
	struct meter_ack a;
	char why[128] = "";

	/* 255 ASCII bytes then "é" (2 bytes) straddling the 256-byte limit */
	memset(detail, 'a', 255);
	strcpy(detail + 255, "\xc3\xa9tail");
	snprintf(json, sizeof json, "{\"id\":\"c1\",\"result\":\"ok\",\"detail\":\"%s\"}", detail);
	ck_assert(ack(json, &a, why));
	ck_assert_int_eq(strlen(a.detail), 255);
	ck_assert_int_eq(a.detail[254], 'a');

	/* 254 ASCII + "é": fits exactly in 256 */
	detail[254] = '\0';
	strcat(detail, "\xc3\xa9tail");
	snprintf(json, sizeof json, "{\"id\":\"c1\",\"result\":\"ok\",\"detail\":\"%s\"}", detail);
	ck_assert(ack(json, &a, why));
	ck_assert_int_eq(strlen(a.detail), 256);
	ck_assert_str_eq(a.detail + 254, "\xc3\xa9");

	/* 300 ASCII: cut to exactly 256 */
	memset(detail, 'b', 300);
	detail[300] = '\0';
	snprintf(json, sizeof json, "{\"id\":\"c1\",\"result\":\"ok\",\"detail\":\"%s\"}", detail);
	ck_assert(ack(json, &a, why));
	ck_assert_int_eq(strlen(a.detail), PAYLOAD_DETAIL_MAX);
}
END_TEST

static const struct {
	const char *json;
	const char *reason;
} ack_rejects[] = {
    {"{\"result\":\"ok\"}", "id: missing"},
    {"{\"id\":\"\",\"result\":\"ok\"}", "id: not 1-64 of [A-Za-z0-9_.:-]"},
    {"{\"id\":\"c 1\",\"result\":\"ok\"}", "id: not 1-64 of [A-Za-z0-9_.:-]"},
    {"{\"id\":\"c/1\",\"result\":\"ok\"}", "id: not 1-64 of [A-Za-z0-9_.:-]"},
    {"{\"id\":42,\"result\":\"ok\"}", "id: not 1-64 of [A-Za-z0-9_.:-]"},
    {"{\"id\":\"c1\"}", "result: missing"},
    {"{\"id\":\"c1\",\"result\":\"OK\"}", "result: not ok, rejected, expired or unsupported"},
    {"{\"id\":\"c1\",\"result\":true}", "result: not ok, rejected, expired or unsupported"},
    {"{\"id\":\"c1\",\"result\":\"ok\",\"relay\":\"on\"}", "relay: not closed, open or armed"},
    {"{\"id\":\"c1\",\"result\":\"ok\",\"detail\":{}}", "detail: not a string"},
    {"{\"id\":\"c1\",\"result\":\"ok\",\"detail\":null}", "detail: not a string"},
    {"\"ok\"", "not an object"},
    {"{\"id\":\"c1\",\"id\":\"c2\",\"result\":\"ok\"}",
        "malformed JSON: duplicate object key at line 1 column 15"},
};

START_TEST(ack_reject_reasons)
{
	struct meter_ack a;
	char why[128] = "";

	ck_assert(!ack(ack_rejects[_i].json, &a, why));
	ck_assert_str_eq(why, ack_rejects[_i].reason);
	ck_assert_str_eq(a.id, "");
}
END_TEST

/* --- commands ----------------------------------------------------------- */

START_TEST(cmd_encodes_exact_bytes)
{
	struct meter_cmd c;
	char *body;

	memset(&c, 0, sizeof c);
	snprintf(c.id, sizeof c.id, "1234");
	snprintf(c.action, sizeof c.action, "trip");
	c.has_valid_until = true;
	c.valid_until_us = KNOWN_US + 250000;
	body = payload_encode_cmd(&c);
	ck_assert_str_eq(body, "{\"id\":\"1234\",\"action\":\"trip\",\"valid_until\":\"2026-11-"
	                       "27T02:15:00.250000Z\"}");
	free(body);

	snprintf(c.action, sizeof c.action, "resend");
	c.has_from_seq = true;
	c.from_seq = INT64_C(9007199254740993); /* beyond a double's integers */
	body = payload_encode_cmd(&c);
	ck_assert_str_eq(body, "{\"id\":\"1234\",\"action\":\"resend\","
	                       "\"valid_until\":\"2026-11-27T02:15:00.250000Z\","
	                       "\"from_seq\":9007199254740993}");
	free(body);

	c.id[0] = '\0';
	ck_assert_ptr_null(payload_encode_cmd(&c));
}
END_TEST

START_TEST(cmd_round_trips_through_the_decoder)
{
	struct meter_cmd c, d;
	char why[160] = "";
	char *body;

	memset(&c, 0, sizeof c);
	snprintf(c.id, sizeof c.id, "77");
	snprintf(c.action, sizeof c.action, "resend");
	c.has_valid_until = true;
	c.valid_until_us = KNOWN_US;
	c.has_from_seq = true;
	c.from_seq = 0;
	body = payload_encode_cmd(&c);
	ck_assert_msg(
	    payload_decode_cmd(body, strlen(body), MAX_BYTES, &d, why, sizeof why), "%s", why);
	ck_assert_str_eq(d.id, "77");
	ck_assert_str_eq(d.action, "resend");
	ck_assert(d.has_valid_until);
	ck_assert_int_eq(d.valid_until_us, KNOWN_US);
	ck_assert(d.has_from_seq);
	ck_assert_int_eq(d.from_seq, 0);
	free(body);
}
END_TEST

static void
assert_cmd(const char *json, struct meter_cmd *c)
{
	char why[160] = "";

	ck_assert_msg(
	    payload_decode_cmd(json, strlen(json), MAX_BYTES, c, why, sizeof why), "%s", why);
}

START_TEST(cmd_decoder_reports_what_a_meter_judges)
{
	struct meter_cmd c;

	/* Offsets are honoured; no action, no from_seq. */
	assert_cmd("{\"id\":\"a.b:c-d_1\",\"valid_until\":\"2026-11-27T10:15:00+08:00\"}", &c);
	ck_assert_str_eq(c.id, "a.b:c-d_1");
	ck_assert_str_eq(c.action, "");
	ck_assert(c.has_valid_until);
	ck_assert_int_eq(c.valid_until_us, KNOWN_US);
	ck_assert(!c.has_from_seq);

	assert_cmd("{\"id\":\"1\",\"action\":7,\"valid_until\":\"tomorrow\",\"from_seq\":-1}", &c);
	ck_assert_str_eq(c.action, "");
	ck_assert(!c.has_valid_until);
	ck_assert(!c.has_from_seq);

	assert_cmd("{\"id\":\"1\",\"action\":\"resend\",\"from_seq\":\"5\"}", &c);
	ck_assert_str_eq(c.action, "resend");
	ck_assert(!c.has_valid_until);
	ck_assert(!c.has_from_seq);
}
END_TEST

static void
assert_cmd_refused(const char *json, const char *want)
{
	struct meter_cmd c;
	char why[160] = "";

	ck_assert(!payload_decode_cmd(json, strlen(json), 64, &c, why, sizeof why));
	ck_assert_str_eq(why, want);
	ck_assert_str_eq(c.id, "");
}

START_TEST(cmd_without_a_valid_id_is_refused)
{
	assert_cmd_refused("[]", "not an object");
	assert_cmd_refused("{\"action\":\"trip\"}", "id: missing");
	assert_cmd_refused("{\"id\":12}", "id: not 1-64 of [A-Za-z0-9_.:-]");
	assert_cmd_refused("{\"id\":\"\"}", "id: not 1-64 of [A-Za-z0-9_.:-]");
	assert_cmd_refused("{\"id\":\"a b\"}", "id: not 1-64 of [A-Za-z0-9_.:-]");
	assert_cmd_refused("{\"id\":\"1\",\"id\":\"2\"}",
	    "malformed JSON: duplicate object key at line 1 column 14");
	assert_cmd_refused(
	    "{\"id\":\"1\",\"action\":\"trip\",\"valid_until\":\"2026-11-27T02:15:00.000000Z\"}",
	    "payload too large (70 bytes > 64)");
}
END_TEST

static Suite *
payload_suite(void)
{
	Suite *s = suite_create("payload");
	TCase *tc;

	tc = tcase_create("reading");
	tcase_add_test(tc, reading_good_decodes_every_field);
	tcase_add_test(tc, topic_escaped_for_the_operator);
	tcase_add_test(tc, reading_minimal_leaves_optionals_absent);
	tcase_add_test(tc, reading_large_int64_values_kept_exactly);
	tcase_add_test(tc, reading_array_bad_item_rejected_rest_kept);
	tcase_add_test(tc, reading_array_non_object_items_rejected);
	tcase_add_loop_test(tc, reading_item_reject_reasons, 0, (int)ARRAY_SIZE(item_rejects));
	tcase_add_loop_test(
	    tc, reading_payload_reject_reasons, 0, (int)ARRAY_SIZE(payload_rejects));
	tcase_add_test(tc, reading_oversize_rejected_before_parsing);
	tcase_add_test(tc, reading_reasons_never_echo_payload);
	tcase_add_test(tc, reading_null_sink_callbacks_tolerated);
	suite_add_tcase(s, tc);

	tc = tcase_create("rfc3339");
	tcase_add_loop_test(tc, rfc3339_parse_cases, 0, (int)ARRAY_SIZE(ts_cases));
	tcase_add_test(tc, rfc3339_format_known_instants);
	tcase_add_test(tc, rfc3339_round_trip_through_format);
	suite_add_tcase(s, tc);

	tc = tcase_create("topic");
	tcase_add_loop_test(tc, topic_parse_cases, 0, (int)ARRAY_SIZE(topic_cases));
	tcase_add_test(tc, meter_id_and_relay_names);
	suite_add_tcase(s, tc);

	tc = tcase_create("event");
	tcase_add_test(tc, event_relay_decodes);
	tcase_add_test(tc, event_other_types_decode);
	tcase_add_loop_test(tc, event_reject_reasons, 0, (int)ARRAY_SIZE(event_rejects));
	tcase_add_test(tc, event_oversize_and_short_why);
	suite_add_tcase(s, tc);

	tc = tcase_create("ack");
	tcase_add_test(tc, ack_decodes);
	tcase_add_test(tc, ack_id_length_limit);
	tcase_add_test(tc, ack_detail_truncated_on_utf8_boundary);
	tcase_add_loop_test(tc, ack_reject_reasons, 0, (int)ARRAY_SIZE(ack_rejects));
	suite_add_tcase(s, tc);

	tc = tcase_create("cmd");
	tcase_add_test(tc, cmd_encodes_exact_bytes);
	tcase_add_test(tc, cmd_round_trips_through_the_decoder);
	tcase_add_test(tc, cmd_decoder_reports_what_a_meter_judges);
	tcase_add_test(tc, cmd_without_a_valid_id_is_refused);
	suite_add_tcase(s, tc);

	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(payload_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
