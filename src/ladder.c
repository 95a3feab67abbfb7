/*
 * ladder.c: the sweep timer of ladder.h. One sweep round trip at a time on
 * the control connection; a full page (LADDER_PAGE meters) means more is
 * due, and the next page follows at once.
 */
#include <stdlib.h>

#include "ladder.h"
#include "log.h"
#include "metrics.h"

#define LADDER_PAGE 200
#define LADDER_PAGE_TEXT "200"
#define LADDER_EVERY_MS 1000

struct ladder {
	struct pgconn *pc;
	struct event *timer;
	bool ready;
	bool sweeping;
};

static void ladder_sweep(struct ladder *l);

static void
ladder_swept(void *arg, PGresult *res, const char *err)
{
	struct ladder *l = arg;
	int n = 0;

	l->sweeping = false;
	if (err != NULL) {
		log_warn("ladder: sweep failed: %s", err);
		return;
	}
	if (res != NULL && PQntuples(res) == 1)
		n = atoi(PQgetvalue(res, 0, 0));
	metrics.ladder_meters += (uint64_t)n;
	if (n > 0)
		log_debug("ladder: %d meter(s) looked at", n);
	if (n >= LADDER_PAGE)
		ladder_sweep(l);
}

static void
ladder_sweep(struct ladder *l)
{
	const char *params[1] = {LADDER_PAGE_TEXT};

	if (!l->ready || l->sweeping)
		return;
	l->sweeping = true;
	metrics.ladder_sweeps++;
	pgconn_query(
	    l->pc, "SELECT prepaid_internal.ladder_sweep($1::int)", 1, params, ladder_swept, l);
}

static void
ladder_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	ladder_sweep(arg);
}

struct ladder *
ladder_new(struct event_base *base, struct pgconn *pc)
{
	struct ladder *l = xcalloc(1, sizeof *l);
	struct timeval tv = {LADDER_EVERY_MS / 1000, (LADDER_EVERY_MS % 1000) * 1000};

	l->pc = pc;
	l->timer = event_new(base, -1, EV_PERSIST, ladder_timer_cb, l);
	event_add(l->timer, &tv);
	return l;
}

void
ladder_free(struct ladder *l)
{
	if (l == NULL)
		return;
	event_free(l->timer);
	free(l);
}

void
ladder_set_ready(struct ladder *l, bool ready)
{
	l->ready = ready;
	if (!ready)
		l->sweeping = false;
	else
		ladder_sweep(l);
}
