/*
 * ingestpool.c: the writers of ingestpool.h. Writer 0 runs on the caller's
 * connection, whose state the caller reports through ingestpool_set_ready();
 * writers 1..n-1 open their own connections ("ingest2", ...) and are ready
 * when the caller says the schema is right and their own connection is up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingestpool.h"
#include "log.h"
#include "payload.h"

struct ingestpool;

struct ingestpool_writer {
	struct ingestpool *pool;
	int idx;
	struct ingest *in;
	struct pgconn *pc; /* own connection (NULL for writer 0) */
	bool up; /* own connection up (writer 0: always true) */
	bool full; /* asked to pause */
};

struct ingestpool {
	const struct conf *conf;
	struct ingest_hooks hooks;
	struct ingestpool_writer *w;
	int n;
	int nfull; /* writers asking to pause */
	bool ready;
};

int
ingestpool_route(const char *meter, int n)
{
	uint32_t h = 2166136261u;

	if (n <= 1 || meter == NULL)
		return 0;
	for (; *meter != '\0'; meter++) {
		h ^= (unsigned char)*meter;
		h *= 16777619u;
	}
	return (int)(h % (uint32_t)n);
}

/* A writer's queue is full (or its connection down), or no longer. */
static void
ingestpool_pressure(void *arg, bool full)
{
	struct ingestpool_writer *w = arg;
	struct ingestpool *p = w->pool;
	int before = p->nfull;

	if (full == w->full)
		return;
	w->full = full;
	p->nfull += full ? 1 : -1;
	if (p->hooks.on_pressure == NULL)
		return;
	if (before == 0 && p->nfull > 0)
		p->hooks.on_pressure(p->hooks.arg, true);
	else if (before > 0 && p->nfull == 0)
		p->hooks.on_pressure(p->hooks.arg, false);
}

static void
ingestpool_update(struct ingestpool_writer *w)
{
	ingest_set_ready(w->in, w->pool->ready && w->up);
}

static void
ingestpool_connected(void *arg, struct pgconn *pc)
{
	struct ingestpool_writer *w = arg;

	UNUSED(pc);
	w->up = true;
	ingestpool_update(w);
}

static void
ingestpool_lost(void *arg, struct pgconn *pc, const char *why)
{
	struct ingestpool_writer *w = arg;

	UNUSED(pc);
	UNUSED(why);
	w->up = false;
	ingestpool_update(w);
}

struct ingestpool *
ingestpool_new(struct event_base *base, struct pgconn *pc, const struct conf *conf,
    const struct ingest_hooks *h)
{
	struct ingestpool *p = xcalloc(1, sizeof *p);
	int i, n = conf->ingest_connections > 0 ? conf->ingest_connections : 1;

	p->conf = conf;
	if (h)
		p->hooks = *h;
	p->n = n;
	p->w = xcalloc((size_t)n, sizeof *p->w);
	for (i = 0; i < n; i++) {
		struct ingestpool_writer *w = &p->w[i];
		struct ingest_hooks wh = {ingestpool_pressure, w};

		w->pool = p;
		w->idx = i;
		if (i == 0) {
			w->pc = NULL;
			w->up = true;
		} else {
			struct pgconn_handlers ph = {0};
			char name[32];

			ph.on_connect = ingestpool_connected;
			ph.on_disconnect = ingestpool_lost;
			ph.arg = w;
			snprintf(name, sizeof name, "ingest%d", i + 1);
			w->pc = pgconn_new(base, name, conf->database_conninfo,
			    conf->database_reconnect_max_ms, &ph);
		}
		w->in = ingest_new(base, i == 0 ? pc : w->pc, conf, &wh);
		ingest_set_share(w->in, i, n);
	}
	return p;
}

void
ingestpool_free(struct ingestpool *p)
{
	int i;

	if (p == NULL)
		return;
	for (i = 0; i < p->n; i++) {
		ingest_free(p->w[i].in);
		pgconn_free(p->w[i].pc);
	}
	free(p->w);
	free(p);
}

void
ingestpool_set_conf(struct ingestpool *p, const struct conf *conf)
{
	int i;

	p->conf = conf;
	for (i = 0; i < p->n; i++) {
		ingest_set_conf(p->w[i].in, conf);
		if (p->w[i].pc != NULL)
			pgconn_set_conninfo(p->w[i].pc, conf->database_conninfo);
	}
}

void
ingestpool_set_ready(struct ingestpool *p, bool ready)
{
	int i;

	p->ready = ready;
	for (i = 0; i < p->n; i++)
		ingestpool_update(&p->w[i]);
}

void
ingestpool_set_journal(struct ingestpool *p, struct journal *jnl)
{
	int i;

	for (i = 0; i < p->n; i++)
		ingest_set_journal(p->w[i].in, jnl);
}

void
ingestpool_message(struct ingestpool *p, uint64_t jseq, int64_t received_us, const char *topic,
    const void *payload, size_t len)
{
	char meter[METER_ID_MAX + 1];
	const char *why = NULL;
	int k = 0;

	if (p->n > 1 &&
	    payload_parse_topic(topic, p->conf->mqtt_topic_prefix, meter, &why) != TOPIC_UNKNOWN)
		k = ingestpool_route(meter, p->n);
	ingest_message(p->w[k].in, jseq, received_us, topic, payload, len);
}

void
ingestpool_drain(struct ingestpool *p)
{
	int i;

	for (i = 0; i < p->n; i++)
		ingest_drain(p->w[i].in);
}

bool
ingestpool_idle(const struct ingestpool *p)
{
	int i;

	for (i = 0; i < p->n; i++)
		if (!ingest_idle(p->w[i].in))
			return false;
	return true;
}

size_t
ingestpool_depth(const struct ingestpool *p)
{
	size_t d = 0;
	int i;

	for (i = 0; i < p->n; i++)
		d += ingest_depth(p->w[i].in);
	return d;
}
