/*
 * ingest.c: the batch writer of ingest.h. Messages are decoded as they
 * arrive; readings wait in an array, events, acknowledgements and rejects in
 * JSON arrays. A batch takes up to batch_size readings (and everything else
 * queued) and turns them into the text parameters of one call of
 * prepaid.ingest_batch(). The parameters are kept until the call succeeds,
 * so a batch lost with the connection is sent again as it was.
 *
 * Ownership: the jansson arrays belong to the ingest struct until a batch
 * is built from them (then they are dumped and released); PGresults belong
 * to pgconn.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "payload.h"

/* Rejected payloads are stored up to this many bytes. */
#define INGEST_REJECT_KEEP_BYTES 4096
/* Most readings accepted from one array payload. */
#define INGEST_MAX_ITEMS 10000
#define INGEST_NPARAMS 16

struct ingest_reading {
	struct reading r;
	int64_t received_us;
};

struct ingest_batch {
	char *params[INGEST_NPARAMS];
	size_t readings;
	size_t items;
	int attempts;
	int64_t started_us;
	bool in_pg;       /* queued or running on the connection now */
};

struct ingest {
	struct event_base *base;
	struct pgconn *pc;
	const struct conf *conf;
	struct ingest_hooks hooks;

	struct ingest_reading *rd; /* queued readings */
	size_t nrd, caprd;
	json_t *events, *acks, *rejects;
	int64_t oldest_us;         /* arrival of the oldest queued item */

	struct ingest_batch *inflight;
	bool ready;                /* PostgreSQL usable */
	bool full;                 /* we asked the broker link to pause */
	bool draining;

	struct event *window_timer;
	struct event *retry_timer;
	/* scratch for the message being decoded */
	const char *cur_topic;
	const void *cur_payload;
	size_t cur_len;
	int64_t cur_us;
	const char *rd_meter;      /* meter of the message being decoded */
};

static void ingest_maybe_flush(struct ingest *in);
static void ingest_send(struct ingest *in);

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
	size_t bound = (size_t)in->conf->ingest_queue_bound;
	bool full;

	metrics.queue_depth = (int64_t)depth;
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

/* ---------------------------------------------------------- decoding */

static void
ingest_add_reject(struct ingest *in, const char *meter, const char *reason)
{
	struct sbuf hex = { 0 };
	char topic[256];
	size_t i;
	json_t *o;

	/* Topics are UTF-8 per MQTT; keep them printable ASCII all the same. */
	for (i = 0; in->cur_topic[i] != '\0' && i + 1 < sizeof topic; i++) {
		unsigned char c = (unsigned char)in->cur_topic[i];
		topic[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	topic[i] = '\0';
	sbuf_hex(&hex, in->cur_payload, in->cur_len, INGEST_REJECT_KEEP_BYTES);
	o = json_pack("{s:s?, s:s, s:s, s:s, s:s}", "meter", meter, "topic", topic,
	    "reason", reason, "payload", hex.p ? hex.p : "", "received_at", "");
	free(hex.p);
	{
		char ts[40];

		payload_format_rfc3339(in->cur_us, ts, sizeof ts);
		json_object_set_new(o, "received_at", json_string(ts));
	}
	ingest_mark(in);
	json_array_append_new(in->rejects, o);
	metrics.rejects++;
	log_ratelimited(LOG_LVL_WARN, meter ? meter : topic, in->conf->ingest_reject_log_interval,
	    "meter %s: rejected message on %s: %s", meter ? meter : "(none)", topic, reason);
}

static void
ingest_on_reading(void *arg, const struct reading *r)
{
	struct ingest *in = arg;

	if (in->nrd == in->caprd) {
		in->caprd = in->caprd ? in->caprd * 2 : 1024;
		in->rd = xreallocarray(in->rd, in->caprd, sizeof *in->rd);
	}
	ingest_mark(in);
	in->rd[in->nrd].r = *r;
	in->rd[in->nrd].received_us = in->cur_us;
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
ingest_message(struct ingest *in, const char *topic, const void *payload, size_t len)
{
	char meter[METER_ID_MAX + 1];
	const char *why = NULL;
	char reason[256];
	enum topic_kind kind;
	struct payload_sink sink = { ingest_on_reading, ingest_on_item_reject, in };
	size_t maxb = (size_t)in->conf->ingest_max_payload;

	metrics.messages_received++;
	in->cur_topic = topic;
	in->cur_payload = payload;
	in->cur_len = len;
	in->cur_us = now_wall_us();

	kind = payload_parse_topic(topic, in->conf->mqtt_topic_prefix, meter, &why);
	in->rd_meter = meter;
	switch (kind) {
	case TOPIC_READING:
		payload_decode_readings(meter, payload, len, maxb, INGEST_MAX_ITEMS, &sink);
		break;
	case TOPIC_EVENT: {
		struct meter_event ev;
		struct sbuf hex = { 0 };
		char ts[40];

		if (!payload_decode_event(meter, payload, len, maxb, &ev, reason, sizeof reason)) {
			ingest_add_reject(in, meter, reason);
			break;
		}
		sbuf_hex(&hex, payload, len, INGEST_REJECT_KEEP_BYTES);
		payload_format_rfc3339(in->cur_us, ts, sizeof ts);
		ingest_mark(in);
		json_array_append_new(in->events, json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:s, s:s}",
		    "meter", meter, "ts", ev.ts, "type", ev.type,
		    "relay", payload_relay_name(ev.relay), "cause", ev.cause[0] ? ev.cause : NULL,
		    "received_at", ts, "payload", hex.p ? hex.p : ""));
		free(hex.p);
		metrics.events_received++;
		break;
	}
	case TOPIC_ACK: {
		struct meter_ack ack;
		struct sbuf hex = { 0 };
		char ts[40];

		if (!payload_decode_ack(meter, payload, len, maxb, &ack, reason, sizeof reason)) {
			ingest_add_reject(in, meter, reason);
			break;
		}
		sbuf_hex(&hex, payload, len, INGEST_REJECT_KEEP_BYTES);
		payload_format_rfc3339(in->cur_us, ts, sizeof ts);
		ingest_mark(in);
		json_array_append_new(in->acks, json_pack("{s:s, s:s, s:s, s:s?, s:s, s:s, s:s}",
		    "meter", meter, "id", ack.id, "result", ack.result,
		    "relay", payload_relay_name(ack.relay), "detail", ack.detail,
		    "received_at", ts, "payload", hex.p ? hex.p : ""));
		free(hex.p);
		break;
	}
	default:
		ingest_add_reject(in, NULL, why ? why : "unknown topic");
		break;
	}
	in->rd_meter = NULL;
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
	free(b);
}

/* Append one array element (already safe for a quoted array literal). */
static void
ingest_elem(struct sbuf *b, const char *s, bool quote)
{
	sbuf_add(b, b->len > 1 ? "," : "", b->len > 1 ? 1 : 0);
	if (s == NULL)
		sbuf_adds(b, "NULL");
	else if (quote) {
		sbuf_adds(b, "\"");
		sbuf_adds(b, s);
		sbuf_adds(b, "\"");
	} else
		sbuf_adds(b, s);
}

static char *
ingest_take_json(json_t **arr)
{
	char *s = json_dumps(*arr, JSON_COMPACT);

	json_decref(*arr);
	*arr = json_array();
	return s ? s : xstrdup("[]");
}

/* Build a batch from the front of the queue. */
static struct ingest_batch *
ingest_build(struct ingest *in)
{
	struct ingest_batch *b = xcalloc(1, sizeof *b);
	struct sbuf p[9] = { { 0 } };
	size_t n = in->nrd, i;
	char num[40];
	int k;

	if (n > (size_t)in->conf->ingest_batch_size)
		n = (size_t)in->conf->ingest_batch_size;
	for (k = 0; k < 9; k++)
		sbuf_adds(&p[k], "{");
	for (i = 0; i < n; i++) {
		const struct ingest_reading *ir = &in->rd[i];
		const struct reading *r = &ir->r;

		ingest_elem(&p[0], r->meter_id, true);
		snprintf(num, sizeof num, "%lld", (long long)r->seq);
		ingest_elem(&p[1], num, false);
		ingest_elem(&p[2], r->ts, true);
		snprintf(num, sizeof num, "%lld", (long long)r->energy_wh);
		ingest_elem(&p[3], num, false);
		ingest_elem(&p[4], payload_relay_name(r->relay), false);
		snprintf(num, sizeof num, "%.17g", r->power_w);
		ingest_elem(&p[5], r->has_power ? num : NULL, false);
		snprintf(num, sizeof num, "%.17g", r->voltage_v);
		ingest_elem(&p[6], r->has_voltage ? num : NULL, false);
		snprintf(num, sizeof num, "%.17g", r->current_a);
		ingest_elem(&p[7], r->has_current ? num : NULL, false);
		payload_format_rfc3339(ir->received_us, num, sizeof num);
		ingest_elem(&p[8], num, true);
	}
	for (k = 0; k < 9; k++) {
		sbuf_adds(&p[k], "}");
		b->params[k] = p[k].p;
	}
	b->items = n + json_array_size(in->events) + json_array_size(in->acks) +
	    json_array_size(in->rejects);
	b->readings = n;
	b->params[9] = ingest_take_json(&in->events);
	b->params[10] = ingest_take_json(&in->acks);
	b->params[11] = ingest_take_json(&in->rejects);
	b->params[12] = xstrdup(in->conf->ingest_auto_register ? "t" : "f");
	b->params[13] = xstrdup(in->conf->ingest_resend_on_gap ? "t" : "f");
	xasprintf(&b->params[14], "%d", in->conf->ingest_rejects_keep);
	b->params[15] = xstrdup(in->conf->mqtt_topic_prefix);

	/* What stays queued keeps the older arrival time: it is flushed no later. */
	in->nrd -= n;
	memmove(in->rd, in->rd + n, in->nrd * sizeof *in->rd);
	return b;
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
		b->attempts++;
		metrics.batch_errors++;
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
			log_ratelimited(LOG_LVL_WARN, "ingest-unknown", in->conf->ingest_reject_log_interval,
			    "ingest: %llu reading(s) from unregistered meters rejected (auto_register is off)",
			    (unsigned long long)v[3]);
		log_debug("ingest: batch %zu items: %llu new, %llu duplicate, %.1f ms", b->items,
		    (unsigned long long)v[0], (unsigned long long)v[1], (double)took / 1000);
	}
	metrics.batches++;
	metrics.batch_items_last = b->items;
	metrics.batch_us_last = took;
	metrics.batch_us_sum += (uint64_t)took;
	ingest_batch_free(b);
	in->inflight = NULL;
	ingest_pressure(in);
	ingest_maybe_flush(in);
}

static const char ingest_sql[] =
    "SELECT inserted, duplicates, gaps, unknown, filled, events, acks, rejects "
    "FROM prepaid.ingest_batch($1::text[], $2::int8[], $3::timestamptz[], $4::int8[], "
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
	pgconn_query(in->pc, ingest_sql, INGEST_NPARAMS, (const char *const *)b->params,
	    ingest_done, in);
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
	if (in->draining || in->nrd >= (size_t)in->conf->ingest_batch_size || age >= window) {
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
	metrics.queue_bound = conf->ingest_queue_bound;
	return in;
}

void
ingest_free(struct ingest *in)
{
	if (in == NULL)
		return;
	event_free(in->window_timer);
	event_free(in->retry_timer);
	ingest_batch_free(in->inflight);
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
