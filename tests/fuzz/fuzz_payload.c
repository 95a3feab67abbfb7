/*
 * fuzz_payload.c: libFuzzer harness for payload.c, the code that reads what
 * meters send. Every input goes through each entry point (readings, event,
 * ack, command, topic, RFC 3339) and the harness checks the promises the daemon relies
 * on: decoded values are in range, a decoded time stamp re-parses to the same
 * instant, and an RFC 3339 instant survives a trip through
 * payload_format_rfc3339; a decoded command re-encodes and decodes to
 * the same fields. Built with --enable-fuzzing (clang).
 */
#include <stdlib.h>
#include <string.h>

#include "payload.h"

/* Small limits so that the oversize and too-many-items paths are reached. */
#define FUZZ_MAX_BYTES 2048
#define FUZZ_MAX_ITEMS 8

/* 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z. */
#define FUZZ_YEAR0_US INT64_C(-62167219200000000)
#define FUZZ_YEAR10000_US INT64_C(253402300800000000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_on_reading(void *arg, const struct reading *r)
{
	int64_t us;

	(*(int *)arg)++;
	if (r->seq < 0 || r->energy_wh < 0 || strcmp(r->meter_id, "m-1") != 0)
		abort();
	if (!payload_parse_rfc3339(r->ts, &us) || us != r->ts_us)
		abort();
	if (r->relay != RELAY_NONE && payload_relay_name(r->relay) == NULL)
		abort();
}

static void
fuzz_on_reject(void *arg, int item_index, const char *reason)
{
	UNUSED(arg);
	if (item_index < -1 || item_index >= FUZZ_MAX_ITEMS || reason == NULL || *reason == '\0')
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int good = 0;
	struct payload_sink sink = {fuzz_on_reading, fuzz_on_reject, &good};
	const char *buf = (const char *)data;
	char id[METER_ID_MAX + 1], why[128], out[64];
	struct meter_event ev;
	struct meter_ack ack;
	struct meter_cmd cmd, again;
	const char *twhy;
	int64_t us, back;
	char *s;

	if (payload_decode_readings("m-1", buf, size, FUZZ_MAX_BYTES, FUZZ_MAX_ITEMS, &sink) !=
	    good)
		abort();

	if (payload_decode_event("m-1", buf, size, FUZZ_MAX_BYTES, &ev, why, sizeof why)) {
		if (!payload_parse_rfc3339(ev.ts, &us) || us != ev.ts_us || ev.type[0] == '\0')
			abort();
	}
	if (payload_decode_ack("m-1", buf, size, FUZZ_MAX_BYTES, &ack, why, sizeof why)) {
		if (ack.id[0] == '\0' || strlen(ack.detail) > PAYLOAD_DETAIL_MAX)
			abort();
	}

	if (payload_decode_cmd(buf, size, FUZZ_MAX_BYTES, &cmd, why, sizeof why)) {
		char *enc;

		if (cmd.id[0] == '\0')
			abort();
		if (cmd.has_valid_until && cmd.valid_until_us >= FUZZ_YEAR0_US &&
		    cmd.valid_until_us < FUZZ_YEAR10000_US) {
			if ((enc = payload_encode_cmd(&cmd)) == NULL ||
			    !payload_decode_cmd(
			        enc, strlen(enc), FUZZ_MAX_BYTES, &again, why, sizeof why) ||
			    strcmp(again.id, cmd.id) != 0 ||
			    strcmp(again.action, cmd.action) != 0 || !again.has_valid_until ||
			    again.valid_until_us != cmd.valid_until_us ||
			    again.has_from_seq != cmd.has_from_seq ||
			    again.from_seq != cmd.from_seq)
				abort();
			free(enc);
		}
	}

	/* The string APIs take C strings: a NUL-terminated copy. */
	s = xmalloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';
	if (payload_parse_topic(s, "meters", id, &twhy) != TOPIC_UNKNOWN) {
		if (!payload_meter_id_valid(id, strlen(id)))
			abort();
	} else if (twhy == NULL)
		abort();
	/*
	 * An offset can move 0000-01-01 or 9999-12-31 out of four-digit years,
	 * which RFC 3339 cannot write: only those inside round-trip.
	 */
	if (payload_parse_rfc3339(s, &us) && us >= FUZZ_YEAR0_US && us < FUZZ_YEAR10000_US) {
		payload_format_rfc3339(us, out, sizeof out);
		if (!payload_parse_rfc3339(out, &back) || back != us)
			abort();
	}
	free(s);
	return 0;
}
