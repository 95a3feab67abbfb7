/*
 * ladder.h: drives the arrears ladder. Once a second (and at once when more
 * is due) it asks PostgreSQL to move the due meters' ladders forward with
 * prepaid_internal.ladder_sweep(): the work is found by the indexed due time
 * meters.ladder_due_at, never by scanning every meter, and meters are
 * claimed with SKIP LOCKED, so several daemons share the sweep and never
 * send a reminder twice (prepaid.episode_sends is unique per episode, step,
 * repeat and channel).
 */
#ifndef PREPAIDD_LADDER_H
#define PREPAIDD_LADDER_H

#include <stdbool.h>

#include <event2/event.h>

#include "pgconn.h"

struct ladder;

struct ladder *ladder_new(struct event_base *base, struct pgconn *pc);
void ladder_free(struct ladder *l);
void ladder_set_ready(struct ladder *l, bool ready);

#endif
