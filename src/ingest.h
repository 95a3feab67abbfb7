/*
 * ingest.h: from MQTT messages to rows. Each message on a meter topic is
 * decoded and validated (payload.c); good readings, events and
 * acknowledgements and the rejects are queued, and written to PostgreSQL in
 * batches — one round trip per batch through prepaid_internal.ingest_batch() —
 * flushed when a batch is full or the batch window has passed, with one
 * batch in flight at a time while the next one fills (ingestpool.h runs
 * several of these writers, one a connection). A batch whose
 * outcome is unknown (connection lost) is sent again: the database side is
 * idempotent on (meter, seq). Every item remembers the journal record it
 * came from (journal.h), released once its batch commits.
 *
 * Backpressure: when the queue reaches its bound, or PostgreSQL is not
 * usable, the on_pressure hook asks the broker link to stop reading; it is
 * asked to resume once the queue has drained to half.
 */
#ifndef PREPAIDD_INGEST_H
#define PREPAIDD_INGEST_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

#include "conf.h"
#include "pgconn.h"

struct ingest;

struct ingest_hooks {
	/* full: stop reading from the broker; !full: resume. */
	void (*on_pressure)(void *arg, bool full);
	void *arg;
};

struct ingest *ingest_new(struct event_base *base, struct pgconn *pc, const struct conf *conf,
    const struct ingest_hooks *h);
void ingest_free(struct ingest *in);

/* A new configuration after SIGHUP (the pointer must stay valid). */
void ingest_set_conf(struct ingest *in, const struct conf *conf);

/*
 * This is writer number writer (from 0) of n sharing queue_bound and
 * batch_size: it holds queue_bound / n items, writes batches of at most
 * batch_size / n readings, and its metrics are shown as writer="writer + 1".
 */
void ingest_set_share(struct ingest *in, int writer, int n);

/* PostgreSQL connected with the right schema (true) or not (false). */
void ingest_set_ready(struct ingest *in, bool ready);

/*
 * One MQTT message (topic and payload are only valid during the call),
 * received at received_us (wall clock), from journal record jseq (0: not
 * journaled). The items decoded from it are held in the journal until
 * their batch commits.
 */
void ingest_message(struct ingest *in, uint64_t jseq, int64_t received_us, const char *topic,
    const void *payload, size_t len);

struct journal;
/* Release committed items in jnl (NULL: no journal). */
void ingest_set_journal(struct ingest *in, struct journal *jnl);

/* Shutdown: send what is queued now, without waiting for the window. */
void ingest_drain(struct ingest *in);

/* Nothing queued and nothing in flight. */
bool ingest_idle(const struct ingest *in);

/* Items queued (not yet in a batch). */
size_t ingest_depth(const struct ingest *in);

#endif
