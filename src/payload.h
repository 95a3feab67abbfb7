/*
 * payload.h: the meter contract of DESIGN.md as pure functions — topic
 * parsing, meter id validation, decoding/validating reading, event and
 * acknowledgement payloads, and encoding (for the daemon) and decoding (for
 * the simulator) the commands sent on <prefix>/<id>/cmd. A refusal gives a
 * one-line reason the caller neither frees nor keeps: in the caller's why
 * buffer, or a static phrase. No I/O and no global state: this is what
 * the unit tests and the libFuzzer harness call.
 */
#ifndef PREPAIDD_PAYLOAD_H
#define PREPAIDD_PAYLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

enum topic_kind { TOPIC_UNKNOWN = 0, TOPIC_READING, TOPIC_EVENT, TOPIC_ACK };

enum relay_state { RELAY_NONE = 0, RELAY_CLOSED, RELAY_OPEN, RELAY_ARMED };

/* "closed", "open", "armed"; NULL for RELAY_NONE. */
const char *payload_relay_name(enum relay_state r);
/* Parse a relay name; returns RELAY_NONE if it is not one of the three. */
enum relay_state payload_relay_parse(const char *s);

/* 1..32 characters of [A-Za-z0-9_.-]. */
bool payload_meter_id_valid(const char *id, size_t len);

/*
 * Split "<prefix>/<id>/<kind>" (kind: reading, event, ack). Returns the kind
 * and copies the id into meter_id (NUL-terminated, at most METER_ID_MAX
 * characters). Returns TOPIC_UNKNOWN if the topic is not of that shape or the
 * id is invalid; then *why says why ("bad meter id", "unknown topic").
 * A "$share/<group>/" prefix is never part of a received topic.
 */
enum topic_kind payload_parse_topic(
    const char *topic, const char *prefix, char meter_id[METER_ID_MAX + 1], const char **why);

/*
 * A received topic as the operator may see it (prepaid.rejects, the log):
 * printable ASCII as it is, every other byte (UTF-8 of a Chinese meter
 * id, control characters) and '%' itself as %XX, so that nothing is lost
 * or ambiguous: "meters/电表/reading" is "meters/%E7%94%B5%E8%A1%A8/reading".
 * Cut, never inside an escape, with "..." at the end when it does not fit
 * into out (outlen >= 4).
 */
void payload_escape_topic(const char *topic, char *out, size_t outlen);

/*
 * RFC 3339 date-time with a mandatory offset ("Z" or "+hh:mm"/"-hh:mm"),
 * optional fraction up to 6 digits (more digits: error). Checks field
 * ranges (month 1-12, day within the month incl. leap years, hour 0-23,
 * minute 0-59, second 0-60). On success stores microseconds since the Unix
 * epoch (UTC) in *us and returns true.
 */
bool payload_parse_rfc3339(const char *s, int64_t *us);

/* Format microseconds since the epoch as RFC 3339 in UTC ("...Z"). */
void payload_format_rfc3339(int64_t us, char *out, size_t outlen);

#define PAYLOAD_TS_MAX 40

struct reading {
	char meter_id[METER_ID_MAX + 1];
	int64_t seq; /* >= 0 */
	int64_t ts_us; /* parsed ts */
	char ts[PAYLOAD_TS_MAX]; /* ts as received (validated), for a reject record */
	int64_t energy_wh; /* >= 0, cumulative import register */
	enum relay_state relay; /* RELAY_NONE if absent */
	bool has_power, has_voltage, has_current;
	double power_w, voltage_v, current_a; /* measurements, not money */
};

struct meter_event {
	char meter_id[METER_ID_MAX + 1];
	int64_t ts_us;
	char ts[PAYLOAD_TS_MAX];
	char type[24]; /* relay, tamper, power_down, power_up, clock, ... */
	enum relay_state relay; /* for type "relay"; RELAY_NONE otherwise */
	char cause[16]; /* remote, button, card, overload, tamper, power_up, or "" */
};

#define PAYLOAD_CMD_ID_MAX 64
#define PAYLOAD_DETAIL_MAX 256

struct meter_ack {
	char meter_id[METER_ID_MAX + 1];
	char id[PAYLOAD_CMD_ID_MAX + 1]; /* command id */
	char result[16]; /* ok, rejected, expired, unsupported */
	enum relay_state relay; /* RELAY_NONE if absent */
	char detail[PAYLOAD_DETAIL_MAX + 1]; /* truncated */
};

/*
 * Decoding a reading payload: one object, or an array of objects. Each item
 * is validated on its own; good items are passed to on_reading, bad ones to
 * on_reject with a short reason ("seq: not a non-negative integer",
 * "energy_wh: negative register", ...). Payload-level problems (oversize,
 * malformed JSON, not an object or array, empty array, more than max_items
 * items) call on_reject once with item_index -1. Returns the number of good
 * readings. Never fails on any input; never keeps pointers to buf.
 */
struct payload_sink {
	void (*on_reading)(void *arg, const struct reading *r);
	void (*on_reject)(void *arg, int item_index, const char *reason);
	void *arg;
};
int payload_decode_readings(const char *meter_id, const char *buf, size_t len, size_t max_bytes,
    size_t max_items, const struct payload_sink *sink);

/* Decode one event / ack object. Returns false with a reason in why. */
bool payload_decode_event(const char *meter_id, const char *buf, size_t len, size_t max_bytes,
    struct meter_event *ev, char *why, size_t whylen);
bool payload_decode_ack(const char *meter_id, const char *buf, size_t len, size_t max_bytes,
    struct meter_ack *ack, char *why, size_t whylen);

/*
 * A command to a meter: {"id":..., "action":..., "valid_until":...} and,
 * for "resend", "from_seq". The decoder is lenient past the id, as a
 * meter is: it reports what is there and leaves judging the action, the
 * expiry and from_seq to the meter (prepaid-sim answers "rejected" or
 * "unsupported" in its ack).
 */
#define PAYLOAD_ACTION_MAX 32

struct meter_cmd {
	char id[PAYLOAD_CMD_ID_MAX + 1];
	char action[PAYLOAD_ACTION_MAX + 1]; /* "" if absent or not a string */
	bool has_valid_until; /* false: missing or not RFC 3339 */
	int64_t valid_until_us;
	bool has_from_seq; /* false: missing or not a non-negative integer */
	int64_t from_seq;
};

/* The command as compact JSON (caller frees); NULL if cmd->id is empty. */
char *payload_encode_cmd(const struct meter_cmd *cmd);

/*
 * Decode a command. Returns false with a reason in why when it is not a
 * JSON object or has no valid id (then there is no one to acknowledge).
 */
bool payload_decode_cmd(
    const char *buf, size_t len, size_t max_bytes, struct meter_cmd *cmd, char *why, size_t whylen);

#endif
