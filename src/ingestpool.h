/*
 * ingestpool.h: several ingest batch writers (ingest.h), each on its own
 * PostgreSQL connection, so that several batches are in flight at once.
 *
 * Every message goes to the writer of its meter (a hash of the meter id
 * from the topic): a meter's readings, events and acknowledgements always
 * take the same connection, in the order they came, so its sequence order,
 * its lock order and the order of an acknowledgement after what it follows
 * hold as with one connection; writers lock disjoint sets of meters and do
 * not wait on each other. A message whose topic names no meter goes to the
 * first writer. The count is [ingest] connections; the first writer uses
 * the connection it is given, the others open their own.
 *
 * Each writer keeps its own queue (queue_bound / connections items), its
 * batch in flight (at most batch_size / connections readings), its retries and its poison-batch
 * split; the broker link is asked to pause while any writer is full or not ready, and to resume
 * once none is. Journal records are held and released by the writer that
 * took them, in any order across writers (journal.h counts per record).
 */
#ifndef PREPAIDD_INGESTPOOL_H
#define PREPAIDD_INGESTPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "conf.h"
#include "ingest.h"
#include "pgconn.h"

struct ingestpool;

/* pc is the first writer's connection (owned by the caller). */
struct ingestpool *ingestpool_new(struct event_base *base, struct pgconn *pc,
    const struct conf *conf, const struct ingest_hooks *h);
void ingestpool_free(struct ingestpool *p);

/* A new configuration after SIGHUP (connections is not reloaded). */
void ingestpool_set_conf(struct ingestpool *p, const struct conf *conf);

/* The schema is right and the first connection is up (true) or not. */
void ingestpool_set_ready(struct ingestpool *p, bool ready);

/* One MQTT message, to the writer of its meter (arguments as ingest_message()). */
void ingestpool_message(struct ingestpool *p, uint64_t jseq, int64_t received_us, const char *topic,
    const void *payload, size_t len);

/* Release committed items in jnl (NULL: no journal), in every writer. */
void ingestpool_set_journal(struct ingestpool *p, struct journal *jnl);

/* Shutdown: every writer sends what it holds now. */
void ingestpool_drain(struct ingestpool *p);

/* Nothing queued and nothing in flight, in every writer. */
bool ingestpool_idle(const struct ingestpool *p);

/* Items queued in all writers. */
size_t ingestpool_depth(const struct ingestpool *p);

/* The writer a meter id goes to among n (FNV-1a of the id). */
int ingestpool_route(const char *meter, int n);

#endif
