/*
 * ingest.c: the batch writer of ingest.h. Messages are decoded as they
 * arrive; readings wait in an array, events, acknowledgements and rejects in
 * JSON arrays. A batch takes up to batch_size readings (and everything else
 * queued) and turns them into the text parameters of one call of
 * prepaid_internal.ingest_batch(). The parameters are kept until the call succeeds,
 * so a batch lost with the connection is sent again as it was.
 *
 * Poison items: a batch the database refuses with an error that would
 * repeat (a constraint or trigger refusing one item) would otherwise be
 * retried for ever with every later reading stuck behind it. So the batch
 * keeps its items too, and such a batch is split in halves, each sent on
 * its own (the first half first, so per-meter order holds), recursively;
 * an item the database still refuses on its own is queued as a reject with
 * the database's reason, logged and counted, and the rest lands as usual.
 * Transient errors (serialization, resources, connection, a read-only or
 * misconfigured database) are retried whole, as before.
 *
 * Ownership: the jansson arrays belong to the ingest struct until a batch
 * is built from them, then to the batch; PGresults belong to pgconn.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ingest.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "payload.h"

/* Rejected payloads are stored up to this many bytes. */
#define INGEST_REJECT_KEEP_BYTES 4096
/* Most readings accepted from one array payload. */
#define INGEST_MAX_ITEMS 10000
#define INGEST_NPARAMS 16
/* Bytes of the database's message kept in a poison item's reject reason. */
#define INGEST_POISON_REASON_BYTES 200

struct ingest_reading {
	struct reading r;
	int64_t received_us;
	uint64_t jseq; /* journal record it came from; 0: none */
};

struct ingest_batch {
	char *params[INGEST_NPARAMS];
	int plen[INGEST_NPARAMS], pfmt[INGEST_NPARAMS]; /* readings' arrays: binary */
	/* The items, in this order, kept so that a refused batch can be split. */
	struct ingest_reading *rd;
	size_t readings;
	json_t *events, *acks, *rejects;
	size_t items;
	int attempts;
	int64_t started_us;
	bool in_pg; /* queued or running on the connection now */
	bool part; /* a part of a batch the database refused */
};

struct ingest {
	struct event_base *base;
	struct pgconn *pc;
	const struct conf *conf;
	struct ingest_hooks hooks;
	struct journal *jnl; /* NULL: journal off */

	/*
	 * Queued readings, a ring: nrd of them from rd[rd0], wrapping around
	 * at caprd; taken from the front.
	 */
	struct ingest_reading *rd;
	size_t rd0, nrd, caprd;
	json_t *events, *acks, *rejects;
	int64_t oldest_us; /* arrival of the oldest queued item */

	struct ingest_batch *inflight;
	/* Second halves of refused batches, to send after inflight (a stack). */
	struct ingest_batch **parts;
	size_t nparts, capparts;
	bool ready; /* PostgreSQL usable */
	bool full; /* we asked the broker link to pause */
	int share; /* writers sharing queue_bound (ingestpool.h) */
	int writer; /* this writer's index among them */
	size_t depth_shown; /* our part of metrics.queue_depth */
	bool draining;

	struct event *window_timer;
	struct event *retry_timer;
	/* scratch for the message being decoded */
	const char *cur_topic;
	const void *cur_payload;
	size_t cur_len;
	int64_t cur_us;
	uint64_t cur_jseq; /* journal record of the message being decoded */
	const char *rd_meter; /* meter of the message being decoded */
};

static void ingest_maybe_flush(struct ingest *in);
static void ingest_send(struct ingest *in);
static void ingest_next(struct ingest *in);

static size_t
ingest_queued(const struct ingest *in)
{
	return in->nrd + json_array_size(in->events) + json_array_size(in->acks) +
	       json_array_size(in->rejects);
}

size_t
ingest_depth(const struct ingest *in)
{
	return ingest_queued(in);
}

bool
ingest_idle(const struct ingest *in)
{
	return ingest_queued(in) == 0 && in->inflight == NULL;
}

/* Tell the broker link to pause or resume when the state changes. */
static void
ingest_pressure(struct ingest *in)
{
	size_t depth = ingest_queued(in);
	size_t bound = (size_t)in->conf->ingest_queue_bound / (size_t)in->share;
	bool full;

	/* Several writers add up to the queue depth shown. */
	metrics.queue_depth += (int64_t)depth - (int64_t)in->depth_shown;
	in->depth_shown = depth;
	if (in->writer < METRICS_WRITERS_MAX) {
		metrics.writer_depth[in->writer] = (int64_t)depth;
		metrics.writer_up[in->writer] = in->ready;
	}
	if (!in->ready || depth >= bound)
		full = true;
	else if (depth <= bound / 2)
		full = false;
	else
		full = in->full; /* hysteresis */
	if (full == in->full)
		return;
	in->full = full;
	if (full) {
		metrics.paused_total++;
		log_debug("ingest: pausing reads (%zu queued, database %s)", depth,
		    in->ready ? "up" : "down");
	} else
		log_debug("ingest: resuming reads (%zu queued)", depth);
	if (in->hooks.on_pressure)
		in->hooks.on_pressure(in->hooks.arg, full);
}

static void
ingest_mark(struct ingest *in)
{
	if (ingest_queued(in) == 0)
		in->oldest_us = now_mono_us();
}

/* ---------------------------------------------------------- journal */

/*
 * Every queued item carries the journal record it was decoded from (a
 * reading in its struct, the others as "j" in their JSON object, which
 * prepaid.ingest_batch() ignores), so that its commit can be released.
 */
static void
ingest_tag(json_t *o, uint64_t jseq)
{
	if (jseq != 0)
		json_object_set_new(o, "j", json_integer((json_int_t)jseq));
}

static uint64_t
ingest_jseq(const json_t *o)
{
	return (uint64_t)json_integer_value(json_object_get(o, "j"));
}

static void
ingest_release_one(struct ingest *in, uint64_t jseq)
{
	if (jseq != 0 && in->jnl != NULL)
		journal_release(in->jnl, jseq);
}

static void
ingest_release_arr(struct ingest *in, const json_t *arr)
{
	size_t i;

	for (i = 0; i < json_array_size(arr); i++)
		ingest_release_one(in, ingest_jseq(json_array_get(arr, i)));
}

/* The batch committed: its items leave the journal. */
static void
ingest_release(struct ingest *in, const struct ingest_batch *b)
{
	size_t i;

	for (i = 0; i < b->readings; i++)
		ingest_release_one(in, b->rd[i].jseq);
	ingest_release_arr(in, b->events);
	ingest_release_arr(in, b->acks);
	ingest_release_arr(in, b->rejects);
}

void
ingest_set_journal(struct ingest *in, struct journal *jnl)
{
	in->jnl = jnl;
}

/* ---------------------------------------------------------- decoding */

/* Queue one reject row; hex is the payload as hex, received_at RFC 3339. */
static void
ingest_push_reject(struct ingest *in, const char *meter, const char *topic, const char *reason,
    const char *hex, const char *received_at, uint64_t jseq)
{
	json_t *o;

	o = json_pack("{s:s?, s:s, s:s, s:s, s:s}", "meter", meter, "topic", topic, "reason",
	    reason, "payload", hex, "received_at", received_at);
	if (o == NULL) {
		/* Not UTF-8 (only the database's message can be): say so plainly. */
		o = json_pack("{s:s?, s:s, s:s, s:s, s:s}", "meter", meter, "topic", topic,
		    "reason", "(reason not valid UTF-8)", "payload", hex, "received_at",
		    received_at);
		if (o == NULL)
			return;
	}
	ingest_tag(o, jseq);
	ingest_mark(in);
	json_array_append_new(in->rejects, o);
	metrics.rejects++;
}

static void
ingest_add_reject(struct ingest *in, const char *meter, const char *reason)
{
	struct sbuf hex = {0};
	char topic[512];
	char ts[40];

	/* Printable ASCII kept, every other byte %XX: what came, visibly. */
	payload_escape_topic(in->cur_topic, topic, sizeof topic);
	sbuf_hex(&hex, in->cur_payload, in->cur_len, INGEST_REJECT_KEEP_BYTES);
	payload_format_rfc3339(in->cur_us, ts, sizeof ts);
	ingest_push_reject(in, meter, topic, reason, hex.p ? hex.p : "", ts, in->cur_jseq);
	free(hex.p);
	log_ratelimited(LOG_LVL_WARN, meter ? meter : topic, in->conf->ingest_reject_log_interval,
	    "meter %s: rejected message on %s: %s", meter ? meter : "(none)", topic, reason);
}

/* Copy the first n queued readings to dst, in order (the ring unwrapped). */
static void
ingest_ring_copy(const struct ingest *in, struct ingest_reading *dst, size_t n)
{
	size_t first = in->caprd - in->rd0;

	if (n == 0)
		return;
	if (first > n)
		first = n;
	memcpy(dst, in->rd + in->rd0, first * sizeof *dst);
	if (n > first)
		memcpy(dst + first, in->rd, (n - first) * sizeof *dst);
}

static void
ingest_on_reading(void *arg, const struct reading *r)
{
	struct ingest *in = arg;
	struct ingest_reading *q;

	if (in->nrd == in->caprd) {
		size_t cap = in->caprd ? in->caprd * 2 : 1024;
		struct ingest_reading *n = xreallocarray(NULL, cap, sizeof *n);

		ingest_ring_copy(in, n, in->nrd);
		free(in->rd);
		in->rd = n;
		in->rd0 = 0;
		in->caprd = cap;
	}
	ingest_mark(in);
	q = &in->rd[(in->rd0 + in->nrd) % in->caprd];
	q->r = *r;
	q->received_us = in->cur_us;
	q->jseq = in->cur_jseq;
	in->nrd++;
	metrics.readings_received++;
}

static void
ingest_on_item_reject(void *arg, int item, const char *reason)
{
	struct ingest *in = arg;
	char why[256];

	if (item >= 0)
		snprintf(why, sizeof why, "item %d: %s", item, reason);
	else
		snprintf(why, sizeof why, "%s", reason);
	/* The meter id is the one from the topic, already validated. */
	ingest_add_reject(in, in->rd_meter, why);
}

void
ingest_message(struct ingest *in, uint64_t jseq, int64_t received_us, const char *topic,
    const void *payload, size_t len)
{
	size_t before = ingest_queued(in);
	json_t *o;
	char meter[METER_ID_MAX + 1];
	const char *why = NULL;
	char reason[256];
	enum topic_kind kind;
	struct payload_sink sink = {ingest_on_reading, ingest_on_item_reject, in};
	size_t maxb = (size_t)in->conf->ingest_max_payload_bytes;

	metrics.messages_received++;
	in->cur_topic = topic;
	in->cur_payload = payload;
	in->cur_len = len;
	in->cur_us = received_us;
	in->cur_jseq = jseq;

	kind = payload_parse_topic(topic, in->conf->mqtt_topic_prefix, meter, &why);
	in->rd_meter = meter;
	switch (kind) {
	case TOPIC_READING:
		payload_decode_readings(meter, payload, len, maxb, INGEST_MAX_ITEMS, &sink);
		break;
	case TOPIC_EVENT: {
		struct meter_event ev;
		struct sbuf hex = {0};
		char ts[40];

		if (!payload_decode_event(meter, payload, len, maxb, &ev, reason, sizeof reason)) {
			ingest_add_reject(in, meter, reason);
			break;
		}
		sbuf_hex(&hex, payload, len, INGEST_REJECT_KEEP_BYTES);
		payload_format_rfc3339(in->cur_us, ts, sizeof ts);
		ingest_mark(in);
		o = json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:s, s:s}", "meter", meter, "ts", ev.ts,
		    "type", ev.type, "relay", payload_relay_name(ev.relay), "cause",
		    ev.cause[0] ? ev.cause : NULL, "received_at", ts, "payload",
		    hex.p ? hex.p : "");
		ingest_tag(o, jseq);
		json_array_append_new(in->events, o);
		free(hex.p);
		metrics.events_received++;
		break;
	}
	case TOPIC_ACK: {
		struct meter_ack ack;
		struct sbuf hex = {0};
		char ts[40];

		if (!payload_decode_ack(meter, payload, len, maxb, &ack, reason, sizeof reason)) {
			ingest_add_reject(in, meter, reason);
			break;
		}
		sbuf_hex(&hex, payload, len, INGEST_REJECT_KEEP_BYTES);
		payload_format_rfc3339(in->cur_us, ts, sizeof ts);
		ingest_mark(in);
		o = json_pack("{s:s, s:s, s:s, s:s?, s:s, s:s, s:s}", "meter", meter, "id", ack.id,
		    "result", ack.result, "relay", payload_relay_name(ack.relay), "detail",
		    ack.detail, "received_at", ts, "payload", hex.p ? hex.p : "");
		ingest_tag(o, jseq);
		json_array_append_new(in->acks, o);
		free(hex.p);
		break;
	}
	default:
		ingest_add_reject(in, NULL, why ? why : "unknown topic");
		break;
	}
	in->rd_meter = NULL;
	in->cur_jseq = 0;
	/* Nothing flushed meanwhile: what was queued now came from this message. */
	if (jseq != 0 && in->jnl != NULL)
		journal_hold(in->jnl, jseq, ingest_queued(in) - before);
	ingest_pressure(in);
	ingest_maybe_flush(in);
}

/* ---------------------------------------------------------- batching */

static void
ingest_batch_free(struct ingest_batch *b)
{
	int i;

	if (b == NULL)
		return;
	for (i = 0; i < INGEST_NPARAMS; i++)
		free(b->params[i]);
	free(b->rd);
	json_decref(b->events);
	json_decref(b->acks);
	json_decref(b->rejects);
	free(b);
}

/*
 * The readings' columns go to PostgreSQL as one-dimensional arrays in its
 * binary format (array_recv): no number or time is printed here and parsed
 * there. Big-endian: the number of dimensions, whether any element is
 * NULL, the element type's OID, the length and lower bound; then each
 * element as its length (-1: NULL) and its bytes.
 */
#define PG_OID_INT8 20
#define PG_OID_TEXT 25
#define PG_OID_FLOAT8 701
#define PG_OID_TIMESTAMPTZ 1184
/* PostgreSQL counts time from 2000-01-01 00:00 UTC, in microseconds. */
#define PG_EPOCH_US INT64_C(946684800000000)

static void
ingest_be32(struct sbuf *b, uint32_t v)
{
	char c[4] = {(char)(v >> 24), (char)(v >> 16), (char)(v >> 8), (char)v};

	sbuf_add(b, c, sizeof c);
}

static void
ingest_be64(struct sbuf *b, uint64_t v)
{
	ingest_be32(b, (uint32_t)(v >> 32));
	ingest_be32(b, (uint32_t)v);
}

static void
ingest_arr_head(struct sbuf *b, size_t n, bool has_null, uint32_t oid)
{
	ingest_be32(b, n > 0 ? 1 : 0);
	ingest_be32(b, has_null ? 1 : 0);
	ingest_be32(b, oid);
	if (n > 0) {
		ingest_be32(b, (uint32_t)n);
		ingest_be32(b, 1);
	}
}

static void
ingest_arr_int8(struct sbuf *b, int64_t v)
{
	ingest_be32(b, 8);
	ingest_be64(b, (uint64_t)v);
}

static void
ingest_arr_text(struct sbuf *b, const char *s)
{
	size_t n;

	if (s == NULL) {
		ingest_be32(b, UINT32_MAX); /* -1: NULL */
		return;
	}
	n = strlen(s);
	ingest_be32(b, (uint32_t)n);
	sbuf_add(b, s, n);
}

static void
ingest_arr_float8(struct sbuf *b, bool has, double v)
{
	uint64_t bits;

	if (!has) {
		ingest_be32(b, UINT32_MAX);
		return;
	}
	memcpy(&bits, &v, sizeof bits);
	ingest_be32(b, 8);
	ingest_be64(b, bits);
}

static char *
ingest_dump(const json_t *arr)
{
	char *s = json_dumps(arr, JSON_COMPACT);

	return s ? s : xstrdup("[]");
}

/*
 * The parameters of prepaid_internal.ingest_batch() for the batch's items:
 * the readings' nine columns as binary arrays, the rest as text.
 */
static void
ingest_params(struct ingest *in, struct ingest_batch *b)
{
	struct sbuf p[9] = {{0}};
	static const uint32_t oid[9] = {PG_OID_TEXT, PG_OID_INT8, PG_OID_TIMESTAMPTZ, PG_OID_INT8,
	    PG_OID_TEXT, PG_OID_FLOAT8, PG_OID_FLOAT8, PG_OID_FLOAT8, PG_OID_TIMESTAMPTZ};
	bool null[9] = {false};
	size_t i;
	int k;

	for (i = 0; i < b->readings; i++) {
		const struct reading *r = &b->rd[i].r;

		null[4] = null[4] || r->relay == RELAY_NONE;
		null[5] = null[5] || !r->has_power;
		null[6] = null[6] || !r->has_voltage;
		null[7] = null[7] || !r->has_current;
	}
	for (k = 0; k < 9; k++)
		ingest_arr_head(&p[k], b->readings, null[k], oid[k]);
	for (i = 0; i < b->readings; i++) {
		const struct ingest_reading *ir = &b->rd[i];
		const struct reading *r = &ir->r;

		ingest_arr_text(&p[0], r->meter_id);
		ingest_arr_int8(&p[1], r->seq);
		ingest_arr_int8(&p[2], r->ts_us - PG_EPOCH_US);
		ingest_arr_int8(&p[3], r->energy_wh);
		ingest_arr_text(&p[4], payload_relay_name(r->relay));
		ingest_arr_float8(&p[5], r->has_power, r->power_w);
		ingest_arr_float8(&p[6], r->has_voltage, r->voltage_v);
		ingest_arr_float8(&p[7], r->has_current, r->current_a);
		ingest_arr_int8(&p[8], ir->received_us - PG_EPOCH_US);
	}
	for (k = 0; k < 9; k++) {
		b->params[k] = p[k].p;
		b->plen[k] = (int)p[k].len;
		b->pfmt[k] = 1;
	}
	b->items = b->readings + json_array_size(b->events) + json_array_size(b->acks) +
	           json_array_size(b->rejects);
	b->params[9] = ingest_dump(b->events);
	b->params[10] = ingest_dump(b->acks);
	b->params[11] = ingest_dump(b->rejects);
	b->params[12] = xstrdup(in->conf->ingest_auto_register ? "t" : "f");
	b->params[13] = xstrdup(in->conf->ingest_resend_on_gap ? "t" : "f");
	xasprintf(&b->params[14], "%d", in->conf->ingest_rejects_keep);
	b->params[15] = xstrdup(in->conf->mqtt_topic_prefix);
}

/*
 * Readings in one batch: batch_size shared among the writers, so that as
 * many readings are in flight as with one.
 */
static size_t
ingest_batch_max(const struct ingest *in)
{
	size_t n = (size_t)in->conf->ingest_batch_size / (size_t)in->share;

	return n > 0 ? n : 1;
}

/* Build a batch from the front of the queue; it takes the items over. */
static struct ingest_batch *
ingest_build(struct ingest *in)
{
	struct ingest_batch *b = xcalloc(1, sizeof *b);
	size_t n = in->nrd;

	if (n > ingest_batch_max(in))
		n = ingest_batch_max(in);
	if (n > 0) {
		b->rd = xreallocarray(NULL, n, sizeof *b->rd);
		ingest_ring_copy(in, b->rd, n);
	}
	b->readings = n;
	b->events = in->events;
	b->acks = in->acks;
	b->rejects = in->rejects;
	in->events = json_array();
	in->acks = json_array();
	in->rejects = json_array();
	ingest_params(in, b);

	/* What stays queued keeps the older arrival time: it is flushed no later. */
	in->nrd -= n;
	in->rd0 = in->nrd > 0 ? (in->rd0 + n) % in->caprd : 0;
	return b;
}

/* The elements [lo, hi) of arr, in a new array (lo, hi may exceed its size). */
static json_t *
ingest_slice(const json_t *arr, size_t lo, size_t hi)
{
	json_t *out = json_array();
	size_t i, n = json_array_size(arr);

	for (i = lo; i < hi && i < n; i++)
		json_array_append(out, json_array_get(arr, i));
	return out;
}

/*
 * The items [lo, hi) of b as a batch of their own. Items count readings
 * first, then events, acknowledgements and rejects, as ingest_batch()
 * handles them, so the parts of a batch keep its order.
 */
static struct ingest_batch *
ingest_part(struct ingest *in, const struct ingest_batch *b, size_t lo, size_t hi)
{
	struct ingest_batch *p = xcalloc(1, sizeof *p);
	size_t ne = json_array_size(b->events), na = json_array_size(b->acks);
	size_t base;

	if (lo < b->readings) {
		p->readings = (hi < b->readings ? hi : b->readings) - lo;
		p->rd = xreallocarray(NULL, p->readings, sizeof *p->rd);
		memcpy(p->rd, b->rd + lo, p->readings * sizeof *p->rd);
	}
	base = b->readings;
	p->events = ingest_slice(b->events, lo > base ? lo - base : 0, hi > base ? hi - base : 0);
	base += ne;
	p->acks = ingest_slice(b->acks, lo > base ? lo - base : 0, hi > base ? hi - base : 0);
	base += na;
	p->rejects = ingest_slice(b->rejects, lo > base ? lo - base : 0, hi > base ? hi - base : 0);
	p->part = true;
	ingest_params(in, p);
	return p;
}

/*
 * Whether an SQLSTATE names a condition of the database rather than of the
 * batch's data, so that the same batch may well pass later: serialization
 * failures and deadlocks (40), connection (08), resources (53), operator
 * intervention and timeouts (57), system (58); and, because every item
 * would fail alike and splitting would turn a misconfiguration into a flood
 * of rejects, an invalid transaction state such as a read-only standby
 * (25), a wrong schema or missing grants (42), a lock timeout or object in
 * use (55), configuration (F0) and internal errors (XX). An unknown or
 * missing SQLSTATE is treated as retryable: retrying never loses anything.
 */
static bool
ingest_sqlstate_retryable(const char *state)
{
	static const char *const classes[] = {
	    "08", "25", "40", "42", "53", "55", "57", "58", "F0", "XX"};
	size_t i;

	if (state == NULL || strlen(state) != 5)
		return true;
	for (i = 0; i < ARRAY_SIZE(classes); i++)
		if (strncmp(state, classes[i], 2) == 0)
			return true;
	return false;
}

/*
 * The reason stored with a poison item: "database refused: <SQLSTATE>
 * <message>", on one line, cut to INGEST_POISON_REASON_BYTES of message at
 * a character boundary.
 */
static void
ingest_poison_reason(const char *state, const char *msg, char *out, size_t outlen)
{
	char m[INGEST_POISON_REASON_BYTES + 4];
	size_t i, n = 0;

	for (i = 0; msg[i] != '\0' && n < INGEST_POISON_REASON_BYTES; i++) {
		unsigned char c = (unsigned char)msg[i];

		m[n++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
	}
	if (msg[i] != '\0') {
		/* Do not leave half a UTF-8 sequence behind. */
		while (n > 0 && ((unsigned char)m[n - 1] & 0xc0) == 0x80)
			n--;
		if (n > 0 && ((unsigned char)m[n - 1] & 0xc0) == 0xc0)
			n--;
		m[n++] = '.';
		m[n++] = '.';
		m[n++] = '.';
	}
	while (n > 0 && m[n - 1] == ' ')
		n--;
	m[n] = '\0';
	snprintf(out, outlen, "database refused: %s %s", state, m);
}

/* A reading as JSON, as hex: what a poison reading's reject keeps of it. */
static char *
ingest_reading_hex(const struct reading *r)
{
	struct sbuf hex = {0};
	json_t *o;
	char *s;

	o = json_pack("{s:I, s:s, s:I, s:s?}", "seq", (json_int_t)r->seq, "ts", r->ts, "energy_wh",
	    (json_int_t)r->energy_wh, "relay", payload_relay_name(r->relay));
	if (o != NULL) {
		if (r->has_power)
			json_object_set_new(o, "power_w", json_real(r->power_w));
		if (r->has_voltage)
			json_object_set_new(o, "voltage_v", json_real(r->voltage_v));
		if (r->has_current)
			json_object_set_new(o, "current_a", json_real(r->current_a));
	}
	s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (s != NULL)
		sbuf_hex(&hex, s, strlen(s), INGEST_REJECT_KEEP_BYTES);
	free(s);
	return hex.p ? hex.p : xstrdup("");
}

/*
 * One item the database refused on its own: it is not sent again as it is,
 * but queued as a reject (sent with a later batch), logged and counted. A
 * reject refused on its own has nowhere left to go: it is logged and dropped.
 */
static void
ingest_poison(struct ingest *in, const struct ingest_batch *b, const char *state, const char *msg)
{
	char reason[INGEST_POISON_REASON_BYTES + 64], topic[256], ts[40];
	const char *meter, *kind, *hex, *rcv;
	char *rhex = NULL;
	json_t *o = NULL;
	uint64_t jseq;

	ingest_poison_reason(state, msg, reason, sizeof reason);
	metrics.ingest_poison++;
	if (b->readings == 1) {
		meter = b->rd[0].r.meter_id;
		kind = "reading";
		rhex = ingest_reading_hex(&b->rd[0].r);
		hex = rhex;
		payload_format_rfc3339(b->rd[0].received_us, ts, sizeof ts);
		rcv = ts;
		jseq = b->rd[0].jseq;
	} else {
		if ((o = json_array_get(b->events, 0)) != NULL)
			kind = "event";
		else if ((o = json_array_get(b->acks, 0)) != NULL)
			kind = "ack";
		else {
			o = json_array_get(b->rejects, 0);
			meter = json_string_value(json_object_get(o, "meter"));
			log_error(
			    "ingest: reject of meter %s (%s) refused by the database: %s; dropped",
			    meter ? meter : "(none)",
			    json_string_value(json_object_get(o, "reason")), reason);
			ingest_release_one(in, ingest_jseq(o));
			return;
		}
		jseq = ingest_jseq(o);
		meter = json_string_value(json_object_get(o, "meter"));
		hex = json_string_value(json_object_get(o, "payload"));
		rcv = json_string_value(json_object_get(o, "received_at"));
	}
	snprintf(
	    topic, sizeof topic, "%s/%s/%s", in->conf->mqtt_topic_prefix, meter ? meter : "", kind);
	/* The reject takes the item's place in the journal's count. */
	ingest_push_reject(in, meter, topic, reason, hex ? hex : "", rcv ? rcv : "", jseq);
	free(rhex);
	log_ratelimited(LOG_LVL_WARN, meter ? meter : topic, in->conf->ingest_reject_log_interval,
	    "meter %s: %s refused by the database, stored as a reject: %s",
	    meter ? meter : "(none)", kind, reason);
}

/*
 * The database refused b (now in flight) with an error that would repeat:
 * split it, send its first half and keep the second for after; or, for a
 * single item, set it aside as poison.
 */
static void
ingest_refused(struct ingest *in, struct ingest_batch *b, const char *state, const char *msg)
{
	size_t mid;

	in->inflight = NULL;
	if (b->items <= 1) {
		if (b->items == 1)
			ingest_poison(in, b, state, msg);
		ingest_batch_free(b);
		ingest_next(in);
		return;
	}
	if (!b->part)
		log_warn("ingest: batch of %zu items refused by the database (%s: %s); "
		         "sending it in parts to set the refused items aside",
		    b->items, state, msg);
	else
		log_debug("ingest: part of %zu items refused (%s); splitting it", b->items, state);
	mid = b->items / 2;
	if (in->nparts == in->capparts) {
		in->capparts = in->capparts ? in->capparts * 2 : 16;
		in->parts = xreallocarray(in->parts, in->capparts, sizeof *in->parts);
	}
	in->parts[in->nparts++] = ingest_part(in, b, mid, b->items);
	in->inflight = ingest_part(in, b, 0, mid);
	ingest_batch_free(b);
	if (in->ready)
		ingest_send(in);
}

static void
ingest_done(void *arg, PGresult *res, const char *err)
{
	struct ingest *in = arg;
	struct ingest_batch *b = in->inflight;
	int64_t took;
	struct timeval tv;

	if (b == NULL || !b->in_pg) {
		log_error("ingest: completion of a batch that is not in flight (ignored)");
		return;
	}
	b->in_pg = false;
	took = now_mono_us() - b->started_us;
	if (res == NULL) {
		/* Connection lost: outcome unknown; send it again once back. */
		log_warn("ingest: batch of %zu items not confirmed (%s); will send it again",
		    b->items, err ? err : "connection lost");
		metrics.batch_errors++;
		return; /* ingest_set_ready(true) resends in->inflight */
	}
	if (err != NULL) {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

		metrics.batch_errors++;
		if (!ingest_sqlstate_retryable(state)) {
			ingest_refused(in, b, state, msg ? msg : err);
			return;
		}
		b->attempts++;
		log_error("ingest: batch of %zu items failed (attempt %d): %s", b->items,
		    b->attempts, err);
		tv.tv_sec = b->attempts < 5 ? b->attempts : 5;
		tv.tv_usec = 0;
		evtimer_add(in->retry_timer, &tv);
		return;
	}
	if (PQntuples(res) == 1 && PQnfields(res) == 8) {
		uint64_t v[8];
		int i;

		for (i = 0; i < 8; i++)
			v[i] = strtoull(PQgetvalue(res, 0, i), NULL, 10);
		metrics.readings_inserted += v[0];
		metrics.readings_duplicate += v[1];
		metrics.gaps_detected += v[2];
		metrics.readings_unknown_meter += v[3];
		metrics.gaps_filled += v[4];
		metrics.acks_received += v[6];
		if (v[2] > 0)
			log_info("ingest: %llu sequence gap(s) recorded", (unsigned long long)v[2]);
		if (v[3] > 0)
			log_ratelimited(LOG_LVL_WARN, "ingest-unknown",
			    in->conf->ingest_reject_log_interval,
			    "ingest: %llu reading(s) from unregistered meters rejected "
			    "(auto_register is off)",
			    (unsigned long long)v[3]);
		log_debug("ingest: batch %zu items: %llu new, %llu duplicate, %.1f ms", b->items,
		    (unsigned long long)v[0], (unsigned long long)v[1], (double)took / 1000);
	}
	ingest_release(in, b);
	metrics.batches++;
	if (in->writer < METRICS_WRITERS_MAX) {
		metrics.writer_batches[in->writer]++;
		metrics.writer_us_sum[in->writer] += (uint64_t)took;
	}
	metrics.batch_items_last = b->items;
	metrics.batch_us_last = took;
	metrics.batch_us_sum += (uint64_t)took;
	ingest_batch_free(b);
	in->inflight = NULL;
	ingest_next(in);
}

/* Nothing in flight: the next part of a refused batch, else the queue. */
static void
ingest_next(struct ingest *in)
{
	if (in->nparts > 0) {
		in->inflight = in->parts[--in->nparts];
		if (in->ready)
			ingest_send(in); /* else ingest_set_ready(true) sends it */
		return;
	}
	ingest_pressure(in);
	ingest_maybe_flush(in);
}

static const char ingest_sql[] =
    "SELECT inserted, duplicates, gaps, unknown, filled, events, acks, rejects "
    "FROM prepaid_internal.ingest_batch($1::text[], $2::int8[], $3::timestamptz[], $4::int8[], "
    "$5::text[], $6::float8[], $7::float8[], $8::float8[], $9::timestamptz[], "
    "$10::jsonb, $11::jsonb, $12::jsonb, $13::bool, $14::bool, $15::int, $16::text)";

static void
ingest_send(struct ingest *in)
{
	struct ingest_batch *b = in->inflight;

	if (b->in_pg)
		return; /* already on its way */
	b->in_pg = true;
	b->started_us = now_mono_us();
	pgconn_query_bin(in->pc, ingest_sql, INGEST_NPARAMS, (const char *const *)b->params,
	    b->plen, b->pfmt, ingest_done, in);
}

static void
ingest_flush(struct ingest *in)
{
	if (in->inflight != NULL || !in->ready || ingest_queued(in) == 0)
		return;
	evtimer_del(in->window_timer);
	in->inflight = ingest_build(in);
	ingest_send(in);
	ingest_pressure(in);
}

/* Flush when a batch is full or the window has passed; else arm the timer. */
static void
ingest_maybe_flush(struct ingest *in)
{
	int64_t window = (int64_t)in->conf->ingest_batch_window_ms * 1000;
	int64_t age, left;
	struct timeval tv;

	if (ingest_queued(in) == 0 || in->inflight != NULL || !in->ready)
		return;
	age = now_mono_us() - in->oldest_us;
	if (in->draining || in->nrd >= ingest_batch_max(in) || age >= window) {
		ingest_flush(in);
		return;
	}
	if (evtimer_pending(in->window_timer, NULL))
		return;
	left = window - age;
	tv.tv_sec = left / 1000000;
	tv.tv_usec = left % 1000000;
	evtimer_add(in->window_timer, &tv);
}

static void
ingest_window_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	ingest_flush(arg);
}

static void
ingest_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct ingest *in = arg;

	UNUSED(fd);
	UNUSED(what);
	if (in->inflight != NULL && in->ready)
		ingest_send(in);
}

/* ---------------------------------------------------------- lifecycle */

struct ingest *
ingest_new(struct event_base *base, struct pgconn *pc, const struct conf *conf,
    const struct ingest_hooks *h)
{
	struct ingest *in = xcalloc(1, sizeof *in);

	in->base = base;
	in->pc = pc;
	in->conf = conf;
	if (h)
		in->hooks = *h;
	in->events = json_array();
	in->acks = json_array();
	in->rejects = json_array();
	in->window_timer = evtimer_new(base, ingest_window_cb, in);
	in->retry_timer = evtimer_new(base, ingest_retry_cb, in);
	in->full = false;
	in->share = 1;
	metrics.queue_bound = conf->ingest_queue_bound;
	return in;
}

void
ingest_set_share(struct ingest *in, int writer, int share)
{
	in->share = share > 0 ? share : 1;
	in->writer = writer >= 0 ? writer : 0;
	if (in->share > metrics.ingest_writers)
		metrics.ingest_writers = in->share;
}

void
ingest_free(struct ingest *in)
{
	if (in == NULL)
		return;
	metrics.queue_depth -= (int64_t)in->depth_shown;
	event_free(in->window_timer);
	event_free(in->retry_timer);
	ingest_batch_free(in->inflight);
	while (in->nparts > 0)
		ingest_batch_free(in->parts[--in->nparts]);
	free(in->parts);
	json_decref(in->events);
	json_decref(in->acks);
	json_decref(in->rejects);
	free(in->rd);
	free(in);
}

void
ingest_set_conf(struct ingest *in, const struct conf *conf)
{
	in->conf = conf;
}

void
ingest_set_ready(struct ingest *in, bool ready)
{
	bool was = in->ready;

	in->ready = ready;
	if (ready && !was && in->inflight != NULL && !in->inflight->in_pg) {
		evtimer_del(in->retry_timer);
		ingest_send(in); /* the batch whose outcome was unknown */
	}
	ingest_pressure(in);
	ingest_maybe_flush(in);
}

void
ingest_drain(struct ingest *in)
{
	in->draining = true;
	ingest_maybe_flush(in);
}
