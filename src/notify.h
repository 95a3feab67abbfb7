/*
 * notify.h: the message dispatcher. prepaid.messages is the outbox; this
 * module LISTENs for prepaid_messages, claims due messages of the channels
 * it has gateways for through prepaid_internal.claim_messages() (SKIP LOCKED and a
 * lease, so several daemons never send the same attempt twice), has
 * gwreq.c build the message and the gateway's request from their
 * templates (conf.h [gateway NAME], signed where the provider wants),
 * sends it with the HTTP client on the event loop (httpc.c) and records
 * the outcome through prepaid_internal.finish_messages(): sent; retry later
 * (transport error, timeout, 429 honouring Retry-After, 5xx) with backoff
 * up to the gateway's max_attempts; or failed for good.
 */
#ifndef PREPAIDD_NOTIFY_H
#define PREPAIDD_NOTIFY_H

#include <stdbool.h>

#include <event2/event.h>

#include "conf.h"
#include "pgconn.h"

struct notify;

struct notify *notify_new(struct event_base *base, struct pgconn *pc, const struct conf *conf);
void notify_free(struct notify *n);
void notify_set_conf(struct notify *n, const struct conf *conf);
/* The connection is up with the right schema (LISTEN is issued here). */
void notify_set_ready(struct notify *n, bool ready);
/* A NOTIFY on prepaid_messages: claim now. */
void notify_kick(struct notify *n);

#endif
