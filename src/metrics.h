/*
 * metrics.h: the daemon's counters and gauges, one global struct written
 * from the event loop (single-threaded, so plain integers), rendered in the
 * Prometheus text format for GET /metrics.
 */
#ifndef PREPAIDD_METRICS_H
#define PREPAIDD_METRICS_H

#include <stdint.h>

#include "common.h"

/* A histogram over METRICS_LAG_BUCKETS (microseconds). */
struct metrics_hist {
	uint64_t bucket[10];
	uint64_t count;
	uint64_t sum_us;
};

/* Most ingest writers ([ingest] connections). */
#define METRICS_WRITERS_MAX 16

struct metrics {
	/* ingest */
	uint64_t messages_received; /* MQTT messages on our topics */
	uint64_t readings_received; /* valid readings decoded */
	uint64_t readings_inserted; /* new readings written */
	uint64_t readings_duplicate; /* repeats ignored */
	uint64_t readings_unknown_meter;
	uint64_t gaps_detected;
	uint64_t gaps_filled;
	uint64_t events_received;
	uint64_t acks_received;
	uint64_t rejects; /* bad input stored in prepaid.rejects */
	uint64_t ingest_poison; /* items the database refused on their own */
	uint64_t batches;
	uint64_t batch_errors;
	uint64_t batch_items_last;
	int64_t batch_us_last;
	uint64_t batch_us_sum;
	int64_t queue_depth; /* items waiting, not yet sent */
	/* per ingest writer (ingestpool.h), [0, ingest_writers) */
	int ingest_writers;
	uint64_t writer_batches[METRICS_WRITERS_MAX];
	uint64_t writer_us_sum[METRICS_WRITERS_MAX]; /* time with a batch in flight */
	int64_t writer_depth[METRICS_WRITERS_MAX];
	int writer_up[METRICS_WRITERS_MAX];
	int64_t queue_bound;
	uint64_t paused_total; /* times reading was paused */
	/* journal */
	int64_t journal_bytes; /* bytes of all segment files */
	int64_t journal_max_bytes;
	int64_t journal_segments;
	uint64_t journal_records; /* records appended */
	uint64_t journal_syncs; /* fdatasync calls */
	uint64_t journal_replayed; /* records replayed at start */
	uint64_t journal_trimmed; /* segments deleted once committed */
	uint64_t journal_torn; /* segments found with a bad tail */
	uint64_t journal_corrupt; /* older segments found damaged */
	uint64_t journal_full; /* times it passed its high-water mark */
	uint64_t journal_overflow; /* messages queued without a journal record */
	uint64_t mqtt_session_lost; /* reconnects that found our session gone */
	/* commands */
	uint64_t commands_published;
	uint64_t command_claims;
	/* messages */
	uint64_t messages_sent;
	uint64_t messages_retried;
	uint64_t messages_failed;
	uint64_t alerts; /* NOTIFY prepaid_alerts received */
	/* ladder */
	uint64_t ladder_sweeps;
	uint64_t ladder_meters;
	/* http */
	uint64_t http_connections_total;
	int64_t http_connections; /* open now */
	uint64_t http_requests;
	uint64_t http_refused_cap; /* closed past the connection cap */
	uint64_t http_refused_deadline; /* cut off: request not whole in time */
	uint64_t http_refused_request; /* 404, 405, 431 */
	/* payments */
	uint64_t pay_credited;
	uint64_t pay_duplicate;
	uint64_t pay_held; /* unmatched or disputed */
	uint64_t pay_notices; /* refunds, closes: recorded, not credited */
	uint64_t pay_refused; /* signature, key, timestamp, merchant, format */
	uint64_t pay_unaudited; /* refusals not written to payment_rejects */
	uint64_t pay_unavailable; /* 503: database away or slow */
	uint64_t pay_rearmed; /* arm or close commands queued by a payment */
	/* links */
	int pg_up;
	int mqtt_up;
	uint64_t pg_reconnects;
	uint64_t mqtt_reconnects;
	/* loop */
	int64_t loop_lag_us_last;
	int64_t loop_lag_us_max;
	/* lag of a 10 ms probe timer, as a histogram (METRICS_LAG_BUCKETS) */
	struct metrics_hist loop_lag;
	/* payment callbacks: arrival to answer (METRICS_LAG_BUCKETS too) */
	struct metrics_hist pay_answer;
	int64_t started_wall_us;
};

extern struct metrics metrics;

/* Upper bounds of the loop-lag histogram buckets, in microseconds. */
#define METRICS_LAG_BUCKETS                                                                        \
	{                                                                                          \
		1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000, 1000000             \
	}

/* Count one loop-lag sample. */
void metrics_lag(int64_t lag_us);
/* Count one sample of h, in microseconds. */
void metrics_observe(struct metrics_hist *h, int64_t us);

/* Render all metrics; the caller frees the string. */
char *metrics_render(void);

#endif
