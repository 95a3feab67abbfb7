/*
 * payload.c: the meter contract of DESIGN.md ("Meter link (MQTT)") as pure
 * functions: topic parsing, meter id and RFC 3339 validation, and decoding of
 * reading, event and acknowledgement payloads with jansson. Nothing here does
 * I/O, reads the clock or touches time zone state, so the unit tests and the
 * libFuzzer harness run exactly what the daemon runs. Every payload is
 * untrusted: sizes are checked before parsing, every field is checked before
 * it is copied, and no reason handed back quotes the payload, because reasons
 * end up in logs.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "payload.h"

/* Room for the longest reason built here ("malformed JSON: ..."). */
#define PAYLOAD_WHY_MAX 160

static const char *payload_relay_names[] = {NULL, "closed", "open", "armed"};

static const char *payload_causes[] = {
    "remote", "button", "card", "overload", "tamper", "power_up"};

static const char *payload_results[] = {"ok", "rejected", "expired", "unsupported"};

#define PAYLOAD_TS_BAD "ts: not RFC 3339 with offset"
#define PAYLOAD_RELAY_BAD "relay: not closed, open or armed"

const char *
payload_relay_name(enum relay_state r)
{
	if ((unsigned)r >= ARRAY_SIZE(payload_relay_names))
		return NULL;
	return payload_relay_names[r];
}

enum relay_state
payload_relay_parse(const char *s)
{
	size_t i;

	if (s == NULL)
		return RELAY_NONE;
	for (i = 1; i < ARRAY_SIZE(payload_relay_names); i++) {
		if (strcmp(s, payload_relay_names[i]) == 0)
			return (enum relay_state)i;
	}
	return RELAY_NONE;
}

/* Whether s is one of the n words of list (the closed vocabularies). */
static bool
payload_in_list(const char *s, const char **list, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (strcmp(s, list[i]) == 0)
			return true;
	}
	return false;
}

/*
 * Every one of the len bytes of s is a lowercase letter, or (alnum) any ASCII
 * letter or digit, or one of extra; and len is within 1..max.
 */
static bool
payload_chars_in(const char *s, size_t len, size_t max, const char *extra, bool alnum)
{
	size_t i;
	unsigned char c;

	if (s == NULL || len == 0 || len > max)
		return false;
	for (i = 0; i < len; i++) {
		c = (unsigned char)s[i];
		if ((c >= 'a' && c <= 'z') || (alnum && c >= 'A' && c <= 'Z') ||
		    (alnum && c >= '0' && c <= '9'))
			continue;
		/* strchr would match the terminating NUL: refuse it first. */
		if (c == '\0' || strchr(extra, c) == NULL)
			return false;
	}
	return true;
}

bool
payload_meter_id_valid(const char *id, size_t len)
{
	return payload_chars_in(id, len, METER_ID_MAX, "_.-", true);
}

static size_t
payload_topic_byte(unsigned char c)
{
	return (c >= 0x20 && c < 0x7f && c != '%') ? 1 : 3;
}

void
payload_escape_topic(const char *topic, char *out, size_t outlen)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *t;
	size_t o = 0, whole = 0, room = outlen - 1;

	for (t = (const unsigned char *)topic; *t != '\0'; t++)
		whole += payload_topic_byte(*t);
	if (whole > room)
		room -= 3; /* for the "..." of a cut */
	for (t = (const unsigned char *)topic; *t != '\0'; t++) {
		if (o + payload_topic_byte(*t) > room) {
			memcpy(out + o, "...", 4);
			return;
		}
		if (payload_topic_byte(*t) == 1)
			out[o++] = (char)*t;
		else {
			out[o++] = '%';
			out[o++] = hex[*t >> 4];
			out[o++] = hex[*t & 15];
		}
	}
	out[o] = '\0';
}

enum topic_kind
payload_parse_topic(
    const char *topic, const char *prefix, char meter_id[METER_ID_MAX + 1], const char **why)
{
	static const struct {
		const char *name;
		enum topic_kind kind;
	} kinds[] = {
	    {"reading", TOPIC_READING},
	    {"event", TOPIC_EVENT},
	    {"ack", TOPIC_ACK},
	};
	const char *rest, *slash, *reason = "unknown topic";
	enum topic_kind kind = TOPIC_UNKNOWN;
	size_t plen, idlen, i;

	meter_id[0] = '\0';
	if (topic == NULL)
		goto fail;
	if (prefix == NULL)
		prefix = "";
	plen = strlen(prefix);
	if (strncmp(topic, prefix, plen) != 0 || topic[plen] != '/')
		goto fail;

	/*
	 * What follows the prefix is exactly "<id>/<kind>": an id never holds
	 * a '/', so a second one means extra levels, not a strange id.
	 */
	rest = topic + plen + 1;
	if ((slash = strchr(rest, '/')) == NULL || strchr(slash + 1, '/') != NULL)
		goto fail;
	for (i = 0; i < ARRAY_SIZE(kinds); i++) {
		if (strcmp(slash + 1, kinds[i].name) == 0)
			kind = kinds[i].kind;
	}
	if (kind == TOPIC_UNKNOWN)
		goto fail;

	idlen = (size_t)(slash - rest);
	if (!payload_meter_id_valid(rest, idlen)) {
		reason = "bad meter id";
		goto fail;
	}
	memcpy(meter_id, rest, idlen);
	meter_id[idlen] = '\0';
	if (why != NULL)
		*why = NULL;
	return kind;

fail:
	if (why != NULL)
		*why = reason;
	return TOPIC_UNKNOWN;
}

/* Exactly n ASCII digits at s. Stops at the first non-digit (or NUL). */
static bool
payload_digits(const char *s, int n, int *out)
{
	int i, v = 0;

	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*out = v;
	return true;
}

static bool
payload_leap(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int
payload_days_in_month(int y, int m)
{
	static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};

	return m == 2 && payload_leap(y) ? 29 : days[m - 1];
}

/*
 * Days since 1970-01-01 of a proleptic Gregorian date, and back (Howard
 * Hinnant's algorithms). Plain arithmetic instead of timegm() so that the
 * result never depends on TZ or on the C library's time zone state.
 */
static int64_t
payload_days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void
payload_civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
	int64_t era, doe, yoe, doy, mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = (int)(doy - (153 * mp + 2) / 5 + 1);
	*m = (int)(mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

/*
 * A leap second (":60") is accepted and counted as the second after :59,
 * i.e. 23:59:60Z is the same instant as the next day's 00:00:00Z: the epoch
 * scale has no leap seconds, and a meter's clock is not that precise anyway.
 */
bool
payload_parse_rfc3339(const char *s, int64_t *us)
{
	int y, mo, d, h, mi, sec, oh = 0, om = 0, sign = 0, ndig = 0;
	int64_t frac = 0, t;
	const char *p;

	if (s == NULL)
		return false;
	if (!payload_digits(s, 4, &y) || s[4] != '-' || !payload_digits(s + 5, 2, &mo) ||
	    s[7] != '-' || !payload_digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
	    !payload_digits(s + 11, 2, &h) || s[13] != ':' || !payload_digits(s + 14, 2, &mi) ||
	    s[16] != ':' || !payload_digits(s + 17, 2, &sec))
		return false;
	p = s + 19;
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++) {
			if (++ndig > 6)
				return false;
			frac = frac * 10 + (*p - '0');
		}
		if (ndig == 0)
			return false;
		for (; ndig < 6; ndig++)
			frac *= 10;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		sign = *p == '-' ? -1 : 1;
		if (!payload_digits(p + 1, 2, &oh) || p[3] != ':' || !payload_digits(p + 4, 2, &om))
			return false;
		p += 6;
	} else
		return false;
	if (*p != '\0')
		return false;

	if (mo < 1 || mo > 12 || d < 1 || d > payload_days_in_month(y, mo) || h > 23 || mi > 59 ||
	    sec > 60 || oh > 23 || om > 59)
		return false;

	t = payload_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
	t -= sign * (oh * 3600 + om * 60);
	if (us != NULL)
		*us = t * 1000000 + frac;
	return true;
}

void
payload_format_rfc3339(int64_t us, char *out, size_t outlen)
{
	int64_t secs, sub, days, sod, y;
	int m, d;

	if (out == NULL || outlen == 0)
		return;
	/* Floor division: instants before 1970 still print forwards. */
	secs = us / 1000000;
	sub = us % 1000000;
	if (sub < 0) {
		sub += 1000000;
		secs--;
	}
	days = secs / 86400;
	sod = secs % 86400;
	if (sod < 0) {
		sod += 86400;
		days--;
	}
	payload_civil_from_days(days, &y, &m, &d);
	snprintf(out, outlen, "%04" PRId64 "-%02d-%02dT%02d:%02d:%02d.%06dZ", y, m, d,
	    (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60), (int)sub);
}

static void
payload_set_why(char *why, size_t whylen, const char *reason)
{
	if (why != NULL && whylen > 0)
		snprintf(why, whylen, "%s", reason);
}

/* Copy the meter id from the topic; it was validated there. */
static void
payload_copy_id(char dst[METER_ID_MAX + 1], const char *meter_id)
{
	snprintf(dst, METER_ID_MAX + 1, "%s", meter_id != NULL ? meter_id : "");
}

/*
 * Size check, then parse. Returns a new reference the caller must decref, or
 * NULL with a reason in why. jansson ends most messages with " near '<the
 * offending token>'": that is payload content, so it is cut off.
 */
static json_t *
payload_load(const char *buf, size_t len, size_t max_bytes, char *why, size_t whylen)
{
	json_error_t err;
	json_t *root;
	char *near;

	if (len > max_bytes) {
		snprintf(why, whylen, "payload too large (%zu bytes > %zu)", len, max_bytes);
		return NULL;
	}
	if (buf == NULL)
		buf = "";
	root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
	if (root == NULL) {
		if ((near = strstr(err.text, " near ")) != NULL)
			*near = '\0';
		snprintf(why, whylen, "malformed JSON: %.64s at line %d column %d", err.text,
		    err.line, err.column);
	}
	return root;
}

/*
 * "ts" of a reading or event: RFC 3339 with an offset, short enough for
 * PAYLOAD_TS_MAX, and a year (as written) in 2000..2099 — anything else is a
 * meter with a reset or broken clock, and its readings must not be dated.
 */
static const char *
payload_get_ts(json_t *o, char ts[PAYLOAD_TS_MAX], int64_t *us)
{
	json_t *v;
	const char *s;
	size_t len;
	int year;

	if ((v = json_object_get(o, "ts")) == NULL)
		return "ts: missing";
	if (!json_is_string(v))
		return PAYLOAD_TS_BAD;
	s = json_string_value(v);
	len = json_string_length(v);
	if (len >= PAYLOAD_TS_MAX || strlen(s) != len || !payload_parse_rfc3339(s, us))
		return PAYLOAD_TS_BAD;
	if (!payload_digits(s, 4, &year) || year < 2000 || year > 2099)
		return "ts: out of range";
	memcpy(ts, s, len + 1);
	return NULL;
}

static const char *
payload_get_relay(json_t *o, bool required, enum relay_state *out)
{
	json_t *v;

	*out = RELAY_NONE;
	if ((v = json_object_get(o, "relay")) == NULL)
		return required ? "relay: missing" : NULL;
	if (!json_is_string(v) || (*out = payload_relay_parse(json_string_value(v))) == RELAY_NONE)
		return PAYLOAD_RELAY_BAD;
	return NULL;
}

/* An optional measurement: any JSON number, integer or real. */
static const char *
payload_get_number(json_t *o, const char *key, const char *bad, bool *has, double *out)
{
	json_t *v;

	if ((v = json_object_get(o, key)) == NULL)
		return NULL;
	if (!json_is_number(v))
		return bad;
	*has = true;
	*out = json_number_value(v);
	return NULL;
}

/* Validate one reading object into r. Returns NULL or the reject reason. */
static const char *
payload_reading_item(json_t *o, const char *meter_id, struct reading *r)
{
	json_t *v;
	const char *reason;

	memset(r, 0, sizeof *r);
	payload_copy_id(r->meter_id, meter_id);

	if ((v = json_object_get(o, "seq")) == NULL)
		return "seq: missing";
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return "seq: not a non-negative integer";
	r->seq = json_integer_value(v);

	if ((reason = payload_get_ts(o, r->ts, &r->ts_us)) != NULL)
		return reason;

	if ((v = json_object_get(o, "energy_wh")) == NULL)
		return "energy_wh: missing";
	if (!json_is_integer(v))
		return "energy_wh: not an integer";
	if (json_integer_value(v) < 0)
		return "energy_wh: negative register";
	r->energy_wh = json_integer_value(v);

	if ((reason = payload_get_relay(o, false, &r->relay)) != NULL)
		return reason;
	if ((reason = payload_get_number(
	         o, "power_w", "power_w: not a number", &r->has_power, &r->power_w)) != NULL)
		return reason;
	if ((reason = payload_get_number(o, "voltage_v", "voltage_v: not a number", &r->has_voltage,
	         &r->voltage_v)) != NULL)
		return reason;
	return payload_get_number(
	    o, "current_a", "current_a: not a number", &r->has_current, &r->current_a);
}

static void
payload_sink_reading(const struct payload_sink *sink, const struct reading *r)
{
	if (sink != NULL && sink->on_reading != NULL)
		sink->on_reading(sink->arg, r);
}

static void
payload_sink_reject(const struct payload_sink *sink, int item_index, const char *reason)
{
	if (sink != NULL && sink->on_reject != NULL)
		sink->on_reject(sink->arg, item_index, reason);
}

/* One item; a single object payload is item 0. Returns 1 if it was good. */
static int
payload_reading_one(json_t *item, int index, const char *meter_id, const struct payload_sink *sink)
{
	struct reading r;
	const char *reason;

	if (!json_is_object(item)) {
		payload_sink_reject(sink, index, "item is not an object");
		return 0;
	}
	if ((reason = payload_reading_item(item, meter_id, &r)) != NULL) {
		payload_sink_reject(sink, index, reason);
		return 0;
	}
	payload_sink_reading(sink, &r);
	return 1;
}

int
payload_decode_readings(const char *meter_id, const char *buf, size_t len, size_t max_bytes,
    size_t max_items, const struct payload_sink *sink)
{
	char why[PAYLOAD_WHY_MAX];
	json_t *root;
	size_t i, n;
	int good = 0;

	if ((root = payload_load(buf, len, max_bytes, why, sizeof why)) == NULL) {
		payload_sink_reject(sink, -1, why);
		return 0;
	}
	if (json_is_object(root)) {
		good = payload_reading_one(root, 0, meter_id, sink);
	} else if (json_is_array(root)) {
		n = json_array_size(root);
		if (n == 0) {
			payload_sink_reject(sink, -1, "empty array");
		} else if (n > max_items || n > INT_MAX) {
			snprintf(why, sizeof why, "too many items (%zu > %zu)", n, max_items);
			payload_sink_reject(sink, -1, why);
		} else {
			for (i = 0; i < n; i++) {
				good += payload_reading_one(
				    json_array_get(root, i), (int)i, meter_id, sink);
			}
		}
	} else
		payload_sink_reject(sink, -1, "not an object or array");
	json_decref(root);
	return good;
}

static const char *
payload_event_fields(json_t *o, struct meter_event *ev)
{
	json_t *v;
	const char *reason, *s;

	if ((reason = payload_get_ts(o, ev->ts, &ev->ts_us)) != NULL)
		return reason;

	if ((v = json_object_get(o, "type")) == NULL)
		return "type: missing";
	if (!json_is_string(v) || !payload_chars_in(json_string_value(v), json_string_length(v),
	                              sizeof ev->type - 1, "_", false))
		return "type: not 1-23 of [a-z_]";
	memcpy(ev->type, json_string_value(v), json_string_length(v) + 1);

	/* The relay state only means something on a relay event. */
	if (strcmp(ev->type, "relay") == 0 &&
	    (reason = payload_get_relay(o, true, &ev->relay)) != NULL)
		return reason;

	if ((v = json_object_get(o, "cause")) != NULL) {
		if (!json_is_string(v) || !payload_in_list((s = json_string_value(v)),
		                              payload_causes, ARRAY_SIZE(payload_causes)))
			return "cause: unknown";
		snprintf(ev->cause, sizeof ev->cause, "%s", s);
	}
	return NULL;
}

bool
payload_decode_event(const char *meter_id, const char *buf, size_t len, size_t max_bytes,
    struct meter_event *ev, char *why, size_t whylen)
{
	char jwhy[PAYLOAD_WHY_MAX];
	const char *reason;
	json_t *root;

	memset(ev, 0, sizeof *ev);
	if ((root = payload_load(buf, len, max_bytes, jwhy, sizeof jwhy)) == NULL) {
		payload_set_why(why, whylen, jwhy);
		return false;
	}
	reason = json_is_object(root) ? payload_event_fields(root, ev) : "not an object";
	json_decref(root);
	if (reason != NULL) {
		memset(ev, 0, sizeof *ev);
		payload_set_why(why, whylen, reason);
		return false;
	}
	payload_copy_id(ev->meter_id, meter_id);
	return true;
}

/*
 * Copy a JSON string into dst, cut to fit on a character boundary: jansson
 * guarantees valid UTF-8 without NULs (JSON_ALLOW_NUL is off), so the copy
 * stays valid.
 */
static void
payload_copy_utf8(char *dst, size_t size, json_t *v)
{
	const char *s = json_string_value(v);
	size_t len = json_string_length(v);

	if (len > size - 1) {
		len = size - 1;
		while (len > 0 && ((unsigned char)s[len] & 0xc0) == 0x80)
			len--;
	}
	memcpy(dst, s, len);
	dst[len] = '\0';
}

static const char *
payload_ack_fields(json_t *o, struct meter_ack *ack)
{
	json_t *v;
	const char *reason, *s;

	if ((v = json_object_get(o, "id")) == NULL)
		return "id: missing";
	if (!json_is_string(v) || !payload_chars_in(json_string_value(v), json_string_length(v),
	                              PAYLOAD_CMD_ID_MAX, "_.:-", true))
		return "id: not 1-64 of [A-Za-z0-9_.:-]";
	memcpy(ack->id, json_string_value(v), json_string_length(v) + 1);

	if ((v = json_object_get(o, "result")) == NULL)
		return "result: missing";
	if (!json_is_string(v) || !payload_in_list((s = json_string_value(v)), payload_results,
	                              ARRAY_SIZE(payload_results)))
		return "result: not ok, rejected, expired or unsupported";
	snprintf(ack->result, sizeof ack->result, "%s", s);

	if ((reason = payload_get_relay(o, false, &ack->relay)) != NULL)
		return reason;

	if ((v = json_object_get(o, "detail")) != NULL) {
		if (!json_is_string(v))
			return "detail: not a string";
		payload_copy_utf8(ack->detail, sizeof ack->detail, v);
	}
	return NULL;
}

bool
payload_decode_ack(const char *meter_id, const char *buf, size_t len, size_t max_bytes,
    struct meter_ack *ack, char *why, size_t whylen)
{
	char jwhy[PAYLOAD_WHY_MAX];
	const char *reason;
	json_t *root;

	memset(ack, 0, sizeof *ack);
	if ((root = payload_load(buf, len, max_bytes, jwhy, sizeof jwhy)) == NULL) {
		payload_set_why(why, whylen, jwhy);
		return false;
	}
	reason = json_is_object(root) ? payload_ack_fields(root, ack) : "not an object";
	json_decref(root);
	if (reason != NULL) {
		memset(ack, 0, sizeof *ack);
		payload_set_why(why, whylen, reason);
		return false;
	}
	payload_copy_id(ack->meter_id, meter_id);
	return true;
}

/* ------------------------------------------------------------ commands */

char *
payload_encode_cmd(const struct meter_cmd *cmd)
{
	char until[PAYLOAD_TS_MAX];
	json_t *o;
	char *body;

	if (cmd->id[0] == '\0')
		return NULL;
	payload_format_rfc3339(cmd->valid_until_us, until, sizeof until);
	o = json_pack(
	    "{s:s, s:s, s:s}", "id", cmd->id, "action", cmd->action, "valid_until", until);
	if (cmd->has_from_seq)
		json_object_set_new(o, "from_seq", json_integer(cmd->from_seq));
	body = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return body;
}

bool
payload_decode_cmd(
    const char *buf, size_t len, size_t max_bytes, struct meter_cmd *cmd, char *why, size_t whylen)
{
	char jwhy[PAYLOAD_WHY_MAX];
	const char *reason = NULL;
	json_t *root, *v;

	memset(cmd, 0, sizeof *cmd);
	if ((root = payload_load(buf, len, max_bytes, jwhy, sizeof jwhy)) == NULL) {
		payload_set_why(why, whylen, jwhy);
		return false;
	}
	if (!json_is_object(root))
		reason = "not an object";
	else if ((v = json_object_get(root, "id")) == NULL)
		reason = "id: missing";
	else if (!json_is_string(v) || !payload_chars_in(json_string_value(v),
	                                   json_string_length(v), PAYLOAD_CMD_ID_MAX, "_.:-", true))
		reason = "id: not 1-64 of [A-Za-z0-9_.:-]";
	if (reason != NULL) {
		json_decref(root);
		payload_set_why(why, whylen, reason);
		return false;
	}
	memcpy(cmd->id, json_string_value(v), json_string_length(v) + 1);
	v = json_object_get(root, "action");
	if (json_is_string(v))
		payload_copy_utf8(cmd->action, sizeof cmd->action, v);
	v = json_object_get(root, "valid_until");
	cmd->has_valid_until =
	    json_is_string(v) && payload_parse_rfc3339(json_string_value(v), &cmd->valid_until_us);
	v = json_object_get(root, "from_seq");
	if (json_is_integer(v) && json_integer_value(v) >= 0) {
		cmd->has_from_seq = true;
		cmd->from_seq = json_integer_value(v);
	}
	json_decref(root);
	return true;
}
