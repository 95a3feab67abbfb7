/*
 * metrics.c: the global metrics struct and its Prometheus text rendering.
 * Names follow Prometheus conventions (prepaidd_ prefix, _total counters,
 * base units: seconds).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

struct metrics metrics;

struct metrics_buf {
	char *p;
	size_t len, cap;
};

static void metrics_add(struct metrics_buf *b, const char *name, const char *type, const char *help,
    const char *fmt, ...) PRINTFLIKE(5, 6);

static void
metrics_add(struct metrics_buf *b, const char *name, const char *type, const char *help,
    const char *fmt, ...)
{
	char value[64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	vsnprintf(value, sizeof value, fmt, ap);
	va_end(ap);
	for (;;) {
		n = snprintf(b->p + b->len, b->cap - b->len, "# HELP %s %s\n# TYPE %s %s\n%s %s\n",
		    name, help, name, type, name, value);
		if (n >= 0 && (size_t)n < b->cap - b->len)
			break;
		b->cap *= 2;
		b->p = xrealloc(b->p, b->cap);
	}
	b->len += (size_t)n;
}

static const int64_t metrics_lag_bounds[] = METRICS_LAG_BUCKETS;

void
metrics_observe(struct metrics_hist *h, int64_t us)
{
	size_t i;

	if (us < 0)
		us = 0;
	for (i = 0; i < ARRAY_SIZE(metrics_lag_bounds); i++)
		if (us <= metrics_lag_bounds[i])
			break;
	if (i < ARRAY_SIZE(metrics_lag_bounds))
		h->bucket[i]++;
	h->count++;
	h->sum_us += (uint64_t)us;
}

void
metrics_lag(int64_t lag_us)
{
	if (lag_us < 0)
		lag_us = 0;
	metrics.loop_lag_us_last = lag_us;
	if (lag_us > metrics.loop_lag_us_max)
		metrics.loop_lag_us_max = lag_us;
	metrics_observe(&metrics.loop_lag, lag_us);
}

/* A histogram in the Prometheus format (cumulative buckets, seconds). */
static void
metrics_histogram(
    struct metrics_buf *b, const char *name, const char *help, const struct metrics_hist *h)
{
	uint64_t cum = 0;
	size_t i;
	int n;

	for (;;) {
		size_t need = b->len + 2048;

		if (need < b->cap)
			break;
		b->cap *= 2;
		b->p = xrealloc(b->p, b->cap);
	}
	n = snprintf(b->p + b->len, b->cap - b->len, "# HELP %s %s\n# TYPE %s histogram\n", name,
	    help, name);
	b->len += (size_t)n;
	for (i = 0; i < ARRAY_SIZE(metrics_lag_bounds); i++) {
		cum += h->bucket[i];
		n = snprintf(b->p + b->len, b->cap - b->len, "%s_bucket{le=\"%g\"} %llu\n", name,
		    (double)metrics_lag_bounds[i] / 1e6, (unsigned long long)cum);
		b->len += (size_t)n;
	}
	n = snprintf(b->p + b->len, b->cap - b->len,
	    "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
	    (unsigned long long)h->count, name, (double)h->sum_us / 1e6, name,
	    (unsigned long long)h->count);
	b->len += (size_t)n;
}

/* One gauge or counter per ingest writer, labelled writer="1".."n". */
static void
metrics_writers(struct metrics_buf *b, const char *name, const char *type, const char *help,
    int decimals, double (*get)(int))
{
	int i, n;

	for (;;) {
		size_t need = b->len + 512 + (size_t)metrics.ingest_writers * 96;

		if (need < b->cap)
			break;
		b->cap *= 2;
		b->p = xrealloc(b->p, b->cap);
	}
	n = snprintf(
	    b->p + b->len, b->cap - b->len, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
	b->len += (size_t)n;
	for (i = 0; i < metrics.ingest_writers && i < METRICS_WRITERS_MAX; i++) {
		n = snprintf(b->p + b->len, b->cap - b->len, "%s{writer=\"%d\"} ", name, i + 1);
		b->len += (size_t)n;
		n = snprintf(b->p + b->len, b->cap - b->len, "%.*f", decimals, get(i));
		b->len += (size_t)n;
		b->p[b->len++] = '\n';
		b->p[b->len] = '\0';
	}
}

static double
metrics_w_batches(int i)
{
	return (double)metrics.writer_batches[i];
}

static double
metrics_w_seconds(int i)
{
	return (double)metrics.writer_us_sum[i] / 1e6;
}

static double
metrics_w_depth(int i)
{
	return (double)metrics.writer_depth[i];
}

static double
metrics_w_up(int i)
{
	return (double)metrics.writer_up[i];
}

#define C(name, help, v)                                                                           \
	metrics_add(&b, "prepaidd_" name, "counter", help, "%llu", (unsigned long long)(v))
#define G(name, help, fmt, v) metrics_add(&b, "prepaidd_" name, "gauge", help, fmt, v)

char *
metrics_render(void)
{
	struct metrics_buf b = {xmalloc(4096), 0, 4096};
	const struct metrics *m = &metrics;

	b.p[0] = '\0';
	C("messages_received_total", "MQTT messages received on the meter topics.",
	    m->messages_received);
	C("readings_received_total", "Valid readings decoded.", m->readings_received);
	C("readings_inserted_total", "New readings written to PostgreSQL.", m->readings_inserted);
	C("readings_duplicate_total", "Readings ignored as repeats of (meter, seq).",
	    m->readings_duplicate);
	C("readings_unknown_meter_total", "Readings refused because the meter is not registered.",
	    m->readings_unknown_meter);
	C("gaps_detected_total", "Sequence gaps recorded.", m->gaps_detected);
	C("gaps_filled_total", "Readings that filled an open gap.", m->gaps_filled);
	C("events_received_total", "Meter events stored.", m->events_received);
	C("acks_received_total", "Command acknowledgements matched to a command.",
	    m->acks_received);
	C("rejects_total", "Bad input stored in prepaid.rejects.", m->rejects);
	C("ingest_poison_total", "Items the database refused on their own, set aside as rejects.",
	    m->ingest_poison);
	C("batches_total", "Batches written to PostgreSQL.", m->batches);
	C("batch_errors_total", "Batches that failed and were retried.", m->batch_errors);
	G("batch_last_items", "Items in the last batch.", "%llu",
	    (unsigned long long)m->batch_items_last);
	G("batch_last_seconds", "Round trip of the last batch.", "%.6f",
	    (double)m->batch_us_last / 1e6);
	C("batch_seconds_total",
	    "Time spent in batch round trips, microsecond resolution (as seconds).",
	    m->batch_us_sum / 1000000);
	G("queue_depth", "Items waiting to be written.", "%lld", (long long)m->queue_depth);
	metrics_writers(&b, "prepaidd_ingest_writer_batches_total", "counter",
	    "Batches written, per ingest connection.", 0, metrics_w_batches);
	metrics_writers(&b, "prepaidd_ingest_writer_busy_seconds_total", "counter",
	    "Time with a batch in flight, per ingest connection.", 3, metrics_w_seconds);
	metrics_writers(&b, "prepaidd_ingest_writer_queue_depth", "gauge",
	    "Items waiting to be written, per ingest connection.", 0, metrics_w_depth);
	metrics_writers(&b, "prepaidd_ingest_writer_up", "gauge",
	    "Ingest connection usable (1) or not (0).", 0, metrics_w_up);
	G("queue_bound", "Items held before reading from the broker pauses.", "%lld",
	    (long long)m->queue_bound);
	C("ingest_pauses_total", "Times reading from the broker was paused (backpressure).",
	    m->paused_total);
	G("journal_bytes", "Bytes of the journal's segment files.", "%lld",
	    (long long)m->journal_bytes);
	G("journal_max_bytes", "Bound of the journal ([journal] max_mb).", "%lld",
	    (long long)m->journal_max_bytes);
	G("journal_segments", "Journal segment files.", "%lld", (long long)m->journal_segments);
	C("journal_records_total", "Messages appended to the journal.", m->journal_records);
	C("journal_syncs_total", "Journal syncs (fdatasync).", m->journal_syncs);
	C("journal_replayed_total", "Journal records replayed at start.", m->journal_replayed);
	C("journal_trimmed_total", "Journal segments deleted once all their items committed.",
	    m->journal_trimmed);
	C("journal_torn_total", "Journal segments found with a bad tail at start.",
	    m->journal_torn);
	C("journal_corrupt_total", "Older journal segments found damaged (kept as *.corrupt).",
	    m->journal_corrupt);
	C("journal_full_total", "Times the journal passed its high-water mark (reading paused).",
	    m->journal_full);
	C("journal_overflow_total", "Messages queued without a journal record (journal full).",
	    m->journal_overflow);
	C("mqtt_session_lost_total",
	    "Reconnects that found the broker had lost our session (resends requested).",
	    m->mqtt_session_lost);
	C("commands_published_total", "Commands published to meters (including re-sends).",
	    m->commands_published);
	C("command_claims_total", "Outbox claim round trips.", m->command_claims);
	C("messages_sent_total", "Messages a gateway accepted.", m->messages_sent);
	C("messages_retried_total", "Message attempts to be tried again.", m->messages_retried);
	C("messages_failed_total", "Messages that failed for good.", m->messages_failed);
	C("alerts_total", "Alerts raised in the database (mass-trip breaker opened).", m->alerts);
	C("ladder_sweeps_total", "Arrears ladder sweeps.", m->ladder_sweeps);
	C("ladder_meters_total", "Meters whose ladder a sweep moved forward.", m->ladder_meters);
	C("http_connections_total", "HTTP connections accepted.", m->http_connections_total);
	G("http_connections", "HTTP connections open.", "%lld", (long long)m->http_connections);
	C("http_requests_total", "HTTP requests received whole.", m->http_requests);
	C("http_refused_cap_total", "HTTP connections closed past [http] max_connections.",
	    m->http_refused_cap);
	C("http_refused_deadline_total",
	    "HTTP connections cut off: no whole request within [http] deadline_ms.",
	    m->http_refused_deadline);
	C("http_refused_request_total", "HTTP requests refused (404, 405, 431).",
	    m->http_refused_request);
	C("payments_credited_total", "Payments credited from a callback.", m->pay_credited);
	C("payments_duplicate_total", "Payment callbacks for a transaction already recorded.",
	    m->pay_duplicate);
	C("payments_held_total", "Verified payments held as unmatched or disputed.", m->pay_held);
	C("payment_notices_total", "Verified notifications that do not credit (refund, close).",
	    m->pay_notices);
	C("payment_callbacks_refused_total",
	    "Payment callbacks refused (signature, key, timestamp, merchant, format).",
	    m->pay_refused);
	C("payment_rejects_unaudited_total",
	    "Refused callbacks not written to prepaid.payment_rejects (database away, or more than "
	    "100 unverified a second).",
	    m->pay_unaudited);
	C("payment_callbacks_unavailable_total",
	    "Payment callbacks answered 503 (database away or slow).", m->pay_unavailable);
	C("payment_rearms_total", "Arm or close commands queued by a payment.", m->pay_rearmed);
	G("postgres_up", "1 when connected to PostgreSQL with the expected schema.", "%d",
	    m->pg_up);
	G("mqtt_up", "1 when connected to the broker.", "%d", m->mqtt_up);
	C("postgres_reconnects_total", "PostgreSQL connections (re)established.", m->pg_reconnects);
	C("mqtt_reconnects_total", "Broker connections (re)established.", m->mqtt_reconnects);
	G("loop_lag_seconds", "Lateness of the last run of a 10 ms timer on the event loop.",
	    "%.6f", (double)m->loop_lag_us_last / 1e6);
	G("loop_lag_max_seconds", "Largest event-loop lag seen.", "%.6f",
	    (double)m->loop_lag_us_max / 1e6);
	metrics_histogram(&b, "prepaidd_loop_lag_histogram_seconds",
	    "Lateness of a 10 ms timer on the event loop.", &m->loop_lag);
	metrics_histogram(&b, "prepaidd_payment_callback_seconds",
	    "Payment callbacks from arrival to answer (after the commit, or a refusal).",
	    &m->pay_answer);
	G("start_time_seconds", "Start time of the daemon since the Unix epoch.", "%lld",
	    (long long)(m->started_wall_us / 1000000));
	return b.p;
}
