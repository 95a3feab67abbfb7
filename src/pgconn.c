/*
 * pgconn.c: one asynchronous PostgreSQL connection driven by libevent (see
 * pgconn.h). A small state machine: WAIT (no connection, a timer brings the
 * next attempt), CONNECTING (PQconnectPoll steps, bounded by a timer) and
 * READY (a FIFO of queries, one in flight). All socket waiting is in
 * pgconn_io(); user callbacks run only from libevent callbacks, never from
 * inside pgconn_query() or pgconn_reset(), so callers need not guard against
 * re-entry, and pgconn_free() may be called from a callback (the free is then
 * deferred until the callback returns).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "log.h"
#include "pgconn.h"

#define PGCONN_CONNECT_TIMEOUT_MS 10000
#define PGCONN_BACKOFF_MIN_MS 250

enum pgconn_state { PGCONN_WAIT, PGCONN_CONNECTING, PGCONN_READY };

struct pgconn_query {
	char *sql;
	int nparams;
	char **params;
	int *lengths, *formats; /* NULL: all text */
	pgconn_cb cb;
	void *arg;
	struct pgconn_query *next;
};

struct pgconn {
	struct event_base *base;
	char *name;
	char *appname;
	char *conninfo;
	int reconnect_max_ms;
	struct pgconn_handlers h;

	enum pgconn_state state;
	PGconn *conn;
	/* Bumped whenever the connection goes away: lets a loop that ran a
	 * callback notice that the connection it was using is gone. */
	unsigned gen;

	struct event *ev_read;
	struct event *ev_write;
	int ev_fd;
	struct event *ev_timer; /* reconnect (WAIT) or connect timeout */
	struct event *ev_kick; /* deferred work: send next, reset */
	int backoff_ms;
	bool fail_logged; /* a connect failure was logged at warning */
	bool flushing; /* PQflush returned 1: wait for writable */
	char *reset_why; /* pgconn_reset() or new conninfo pending */
	bool reset_now; /* reconnect at once, not after the backoff */

	struct pgconn_query *head, *tail;
	struct pgconn_query *front_tail; /* last unsent pgconn_query_front() one */
	struct pgconn_query *inflight;
	PGresult *last;
	int nqueued;

	int depth; /* nesting of libevent callbacks running */
	bool doomed; /* pgconn_free() called inside a callback */
};

static void pgconn_io(evutil_socket_t, short, void *);
static void pgconn_drop(struct pgconn *, const char *, bool);

static void
pgconn_query_free(struct pgconn_query *q)
{
	int i;

	for (i = 0; i < q->nparams; i++)
		free(q->params[i]);
	free(q->params);
	free(q->lengths);
	free(q->formats);
	free(q->sql);
	free(q);
}

/* Make a libpq message one line: whitespace runs become one space. */
static char *
pgconn_oneline(const char *msg)
{
	char *s, *p, *q, c;
	size_t n;

	s = xstrdup(msg != NULL && *msg != '\0' ? msg : "unknown error");
	for (p = q = s; *p != '\0'; p++) {
		c = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
		if (c == ' ' && (q == s || q[-1] == ' '))
			continue;
		*q++ = c;
	}
	*q = '\0';
	n = strlen(s);
	while (n > 0 && s[n - 1] == ' ')
		s[--n] = '\0';
	return s;
}

/* Server notices go to our log instead of libpq's stderr default. */
static void
pgconn_notice(void *arg, const PGresult *res)
{
	struct pgconn *pc = arg;
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	char *msg = pgconn_oneline(PQresultErrorMessage(res));

	if (sev != NULL && strcmp(sev, "WARNING") == 0)
		log_warn("database %s: %s", pc->name, msg);
	else
		log_debug("database %s: %s", pc->name, msg);
	free(msg);
}

/*
 * Watch the connection's socket. libpq may close and reopen its socket during
 * connect (trying the next host or address), possibly getting the same fd
 * number back; the kernel then drops the old registration silently, so
 * `force` re-creates the events even when the number has not changed.
 */
static void
pgconn_unwatch(struct pgconn *pc)
{
	if (pc->ev_read != NULL)
		event_free(pc->ev_read);
	if (pc->ev_write != NULL)
		event_free(pc->ev_write);
	pc->ev_read = pc->ev_write = NULL;
	pc->ev_fd = -1;
}

static void
pgconn_watch(struct pgconn *pc, bool rd, bool wr, bool force)
{
	int fd = pc->conn != NULL ? PQsocket(pc->conn) : -1;

	if (force || fd != pc->ev_fd) {
		pgconn_unwatch(pc);
		pc->ev_fd = fd;
		if (fd < 0)
			return;
		pc->ev_read = event_new(pc->base, fd, EV_READ | EV_PERSIST, pgconn_io, pc);
		pc->ev_write = event_new(pc->base, fd, EV_WRITE | EV_PERSIST, pgconn_io, pc);
		if (pc->ev_read == NULL || pc->ev_write == NULL) {
			log_error("database %s: cannot create events", pc->name);
			abort();
		}
	}
	if (pc->ev_read == NULL)
		return;
	if (rd)
		event_add(pc->ev_read, NULL);
	else
		event_del(pc->ev_read);
	if (wr)
		event_add(pc->ev_write, NULL);
	else
		event_del(pc->ev_write);
}

static void
pgconn_timer_ms(struct pgconn *pc, int ms)
{
	struct timeval tv;

	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(pc->ev_timer, &tv);
}

static void
pgconn_kick(struct pgconn *pc)
{
	event_active(pc->ev_kick, EV_TIMEOUT, 0);
}

/* Close the libpq connection and forget its events; callbacks not called. */
static void
pgconn_close(struct pgconn *pc)
{
	pgconn_unwatch(pc);
	if (pc->last != NULL) {
		PQclear(pc->last);
		pc->last = NULL;
	}
	if (pc->conn != NULL) {
		PQfinish(pc->conn);
		pc->conn = NULL;
	}
	evtimer_del(pc->ev_timer);
	pc->flushing = false;
	pc->state = PGCONN_WAIT;
	pc->gen++;
}

/* Next attempt after the backoff, with +-20% jitter, then double it. */
static void
pgconn_schedule(struct pgconn *pc)
{
	int span = pc->backoff_ms / 5, delay = pc->backoff_ms;

	if (span > 0)
		delay += (int)(now_mono_us() % (2 * span + 1)) - span;
	log_debug("database %s: next connect attempt in %d ms", pc->name, delay);
	pgconn_timer_ms(pc, delay);
	if (pc->backoff_ms < pc->reconnect_max_ms / 2)
		pc->backoff_ms *= 2;
	else
		pc->backoff_ms = pc->reconnect_max_ms;
}

static void
pgconn_connect_failed(struct pgconn *pc, const char *reason)
{
	char *why = pgconn_oneline(reason);
	unsigned gen;

	if (!pc->fail_logged)
		log_warn("database %s: cannot connect: %s", pc->name, why);
	else
		log_debug("database %s: cannot connect: %s", pc->name, why);
	pc->fail_logged = true;
	pgconn_close(pc);
	gen = pc->gen;
	if (pc->h.on_disconnect != NULL)
		pc->h.on_disconnect(pc->h.arg, pc, why);
	free(why);
	if (!pc->doomed && pc->gen == gen && pc->state == PGCONN_WAIT)
		pgconn_schedule(pc);
}

static void
pgconn_connect_start(struct pgconn *pc)
{
	const char *keys[] = {"dbname", "fallback_application_name", NULL};
	const char *vals[] = {pc->conninfo, pc->appname, NULL};

	/*
	 * expand_dbname: the configured string may be a conninfo or a URI.
	 * The fallback name applies only if the string (or PGAPPNAME) names
	 * none, which is what an operator who set one would expect.
	 */
	pc->conn = PQconnectStartParams(keys, vals, 1);
	if (pc->conn == NULL) {
		pgconn_connect_failed(pc, "out of memory");
		return;
	}
	if (PQstatus(pc->conn) == CONNECTION_BAD) {
		pgconn_connect_failed(pc, PQerrorMessage(pc->conn));
		return;
	}
	PQsetNoticeReceiver(pc->conn, pgconn_notice, pc);
	pc->state = PGCONN_CONNECTING;
	pgconn_timer_ms(pc, PGCONN_CONNECT_TIMEOUT_MS);
	/* libpq: start as if PQconnectPoll had returned PGRES_POLLING_WRITING. */
	pgconn_watch(pc, false, true, true);
}

static void
pgconn_connected(struct pgconn *pc)
{
	unsigned gen;

	evtimer_del(pc->ev_timer);
	if (PQsetnonblocking(pc->conn, 1) != 0) {
		pgconn_connect_failed(pc, PQerrorMessage(pc->conn));
		return;
	}
	pc->state = PGCONN_READY;
	pc->backoff_ms = PGCONN_BACKOFF_MIN_MS;
	pc->fail_logged = false;
	log_info("database %s: connected to %s:%s/%s (server %d)", pc->name, PQhost(pc->conn),
	    PQport(pc->conn), PQdb(pc->conn), PQserverVersion(pc->conn));
	pgconn_watch(pc, true, false, true);
	gen = pc->gen;
	if (pc->h.on_connect != NULL)
		pc->h.on_connect(pc->h.arg, pc);
	if (!pc->doomed && pc->gen == gen)
		pgconn_kick(pc);
}

static void
pgconn_connect_poll(struct pgconn *pc)
{
	switch (PQconnectPoll(pc->conn)) {
	case PGRES_POLLING_READING:
		pgconn_watch(pc, true, false, true);
		break;
	case PGRES_POLLING_WRITING:
		pgconn_watch(pc, false, true, true);
		break;
	case PGRES_POLLING_OK:
		pgconn_connected(pc);
		break;
	case PGRES_POLLING_FAILED:
	default:
		pgconn_connect_failed(pc, PQerrorMessage(pc->conn));
		break;
	}
}

/* PQflush until done; while it has more to write, also wait for writable. */
static bool
pgconn_flush(struct pgconn *pc)
{
	switch (PQflush(pc->conn)) {
	case 0:
		if (pc->flushing)
			event_del(pc->ev_write);
		pc->flushing = false;
		return true;
	case 1:
		if (!pc->flushing)
			event_add(pc->ev_write, NULL);
		pc->flushing = true;
		return true;
	default:
		pgconn_drop(pc, PQerrorMessage(pc->conn), true);
		return false;
	}
}

/* Send the head of the queue if nothing is in flight. */
static void
pgconn_send_next(struct pgconn *pc)
{
	struct pgconn_query *q;
	unsigned gen;
	char *err;

	while (pc->state == PGCONN_READY && pc->inflight == NULL && pc->head != NULL) {
		q = pc->head;
		pc->head = q->next;
		if (pc->head == NULL)
			pc->tail = NULL;
		if (pc->front_tail == q)
			pc->front_tail = NULL;
		pc->nqueued--;
		q->next = NULL;
		pc->inflight = q;
		if (PQsendQueryParams(pc->conn, q->sql, q->nparams, NULL,
		        (const char *const *)q->params, q->lengths, q->formats, 0)) {
			pgconn_flush(pc);
			return;
		}
		if (PQstatus(pc->conn) != CONNECTION_OK) {
			pgconn_drop(pc, PQerrorMessage(pc->conn), true);
			return;
		}
		/* Refused by libpq itself (bad arguments): fail this one only. */
		pc->inflight = NULL;
		err = pgconn_oneline(PQerrorMessage(pc->conn));
		log_warn("database %s: cannot send query: %s", pc->name, err);
		gen = pc->gen;
		if (q->cb != NULL)
			q->cb(q->arg, NULL, err);
		free(err);
		pgconn_query_free(q);
		if (pc->doomed || pc->gen != gen)
			return;
	}
}

/* The in-flight query has all its results: report and start the next. */
static void
pgconn_complete(struct pgconn *pc)
{
	struct pgconn_query *q = pc->inflight;
	PGresult *res = pc->last;
	ExecStatusType st;
	char *err = NULL;

	pc->inflight = NULL;
	pc->last = NULL;
	if (res == NULL) {
		err = xstrdup("no result");
	} else {
		st = PQresultStatus(res);
		if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
			err = pgconn_oneline(PQresultErrorMessage(res));
	}
	if (q->cb != NULL)
		q->cb(q->arg, res, err);
	free(err);
	if (res != NULL)
		PQclear(res);
	pgconn_query_free(q);
}

static void
pgconn_input(struct pgconn *pc)
{
	PGnotify *n;
	PGresult *res;
	unsigned gen = pc->gen;

	if (!PQconsumeInput(pc->conn)) {
		pgconn_drop(pc, PQerrorMessage(pc->conn), true);
		return;
	}
	while ((n = PQnotifies(pc->conn)) != NULL) {
		if (pc->h.on_notify != NULL)
			pc->h.on_notify(pc->h.arg, n->relname, n->extra);
		PQfreemem(n);
		if (pc->doomed || pc->gen != gen)
			return;
	}
	while (!PQisBusy(pc->conn)) {
		res = PQgetResult(pc->conn);
		if (res != NULL) {
			if (pc->last != NULL)
				PQclear(pc->last);
			pc->last = res;
			continue;
		}
		if (pc->inflight == NULL) {
			/* Nothing asked (an error the server sent on its own). */
			if (pc->last != NULL) {
				PQclear(pc->last);
				pc->last = NULL;
			}
			break;
		}
		/*
		 * A query cut off by a broken connection ends with an error
		 * result that libpq made up: its outcome is unknown, and the
		 * owner must see NULL, so treat it as a lost connection.
		 */
		if (PQstatus(pc->conn) == CONNECTION_BAD)
			break;
		pgconn_complete(pc);
		if (pc->doomed || pc->gen != gen)
			return;
		pgconn_send_next(pc);
		if (pc->doomed || pc->gen != gen)
			return;
		break;
	}
	if (PQstatus(pc->conn) == CONNECTION_BAD) {
		pgconn_drop(pc, PQerrorMessage(pc->conn), true);
		return;
	}
	if (pc->flushing)
		pgconn_flush(pc);
}

static void
pgconn_enter(struct pgconn *pc)
{
	pc->depth++;
}

static void pgconn_destroy(struct pgconn *);

/* Returns false if pc is gone. */
static bool
pgconn_leave(struct pgconn *pc)
{
	if (--pc->depth == 0 && pc->doomed) {
		pgconn_destroy(pc);
		return false;
	}
	return true;
}

static void
pgconn_io(evutil_socket_t fd, short what, void *arg)
{
	struct pgconn *pc = arg;

	UNUSED(fd);
	pgconn_enter(pc);
	if (pc->state == PGCONN_CONNECTING) {
		pgconn_connect_poll(pc);
	} else if (pc->state == PGCONN_READY) {
		if ((what & EV_WRITE) && pc->flushing)
			pgconn_flush(pc);
		if ((what & EV_READ) && pc->state == PGCONN_READY && !pc->doomed)
			pgconn_input(pc);
	}
	pgconn_leave(pc);
}

static void
pgconn_timer(evutil_socket_t fd, short what, void *arg)
{
	struct pgconn *pc = arg;

	UNUSED(fd);
	UNUSED(what);
	pgconn_enter(pc);
	if (pc->state == PGCONN_WAIT)
		pgconn_connect_start(pc);
	else if (pc->state == PGCONN_CONNECTING)
		pgconn_connect_failed(pc, "timeout expired");
	pgconn_leave(pc);
}

static void
pgconn_kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pgconn *pc = arg;
	char *why;

	UNUSED(fd);
	UNUSED(what);
	pgconn_enter(pc);
	if (pc->reset_why != NULL) {
		why = pc->reset_why;
		pc->reset_why = NULL;
		if (pc->state == PGCONN_READY) {
			pgconn_drop(pc, why, false);
		} else if (pc->state == PGCONN_CONNECTING) {
			log_info("database %s: connect abandoned: %s", pc->name, why);
			pgconn_close(pc);
		}
		free(why);
		if (!pc->doomed && pc->state == PGCONN_WAIT &&
		    !evtimer_pending(pc->ev_timer, NULL)) {
			if (pc->reset_now)
				pgconn_timer_ms(pc, 0);
			else
				pgconn_schedule(pc);
		}
	}
	if (!pc->doomed)
		pgconn_send_next(pc);
	pgconn_leave(pc);
}

/*
 * The connection is gone (or we drop it): fail what was sent or queued,
 * tell the owner, reconnect after the backoff. The lists are taken first,
 * since a callback may queue new queries (they wait for the next connection)
 * or free pc.
 */
static void
pgconn_drop(struct pgconn *pc, const char *reason, bool unexpected)
{
	struct pgconn_query *list, *q;
	bool was_ready = pc->state == PGCONN_READY;
	char *why = pgconn_oneline(reason);
	unsigned gen;

	if (pc->state == PGCONN_CONNECTING) {
		pgconn_connect_failed(pc, why);
		free(why);
		return;
	}
	if (unexpected)
		log_warn("database %s: connection lost: %s", pc->name, why);
	else
		log_info("database %s: disconnecting: %s", pc->name, why);
	pgconn_close(pc);
	/* The outage was logged: failed attempts that follow go to debug. */
	pc->fail_logged = true;
	gen = pc->gen;

	list = pc->inflight;
	if (list != NULL)
		list->next = pc->head;
	else
		list = pc->head;
	pc->inflight = NULL;
	pc->head = pc->tail = pc->front_tail = NULL;
	pc->nqueued = 0;
	while ((q = list) != NULL) {
		list = q->next;
		if (q->cb != NULL && !pc->doomed)
			q->cb(q->arg, NULL, "connection lost");
		pgconn_query_free(q);
	}
	if (was_ready && !pc->doomed && pc->h.on_disconnect != NULL)
		pc->h.on_disconnect(pc->h.arg, pc, why);
	free(why);
	/* An unexpected loss reconnects here; a reset is scheduled by its caller. */
	if (unexpected && !pc->doomed && pc->gen == gen && pc->state == PGCONN_WAIT &&
	    !evtimer_pending(pc->ev_timer, NULL))
		pgconn_schedule(pc);
}

struct pgconn *
pgconn_new(struct event_base *base, const char *name, const char *conninfo, int reconnect_max_ms,
    const struct pgconn_handlers *h)
{
	struct pgconn *pc = xcalloc(1, sizeof *pc);

	pc->base = base;
	pc->name = xstrdup(name);
	xasprintf(&pc->appname, "prepaidd-%s", name);
	pc->conninfo = xstrdup(conninfo);
	pc->reconnect_max_ms =
	    reconnect_max_ms > PGCONN_BACKOFF_MIN_MS ? reconnect_max_ms : PGCONN_BACKOFF_MIN_MS;
	pc->h = *h;
	pc->ev_fd = -1;
	pc->backoff_ms = PGCONN_BACKOFF_MIN_MS;
	pc->ev_timer = evtimer_new(base, pgconn_timer, pc);
	pc->ev_kick = event_new(base, -1, 0, pgconn_kick_cb, pc);
	if (pc->ev_timer == NULL || pc->ev_kick == NULL) {
		log_error("database %s: cannot create events", name);
		abort();
	}
	/* Connect from the loop, so no callback runs before we return. */
	pgconn_timer_ms(pc, 0);
	return pc;
}

static void
pgconn_destroy(struct pgconn *pc)
{
	struct pgconn_query *q;

	if (pc->inflight != NULL) {
		pc->inflight->next = pc->head;
		pc->head = pc->inflight;
		pc->inflight = NULL;
	}
	while ((q = pc->head) != NULL) {
		pc->head = q->next;
		pgconn_query_free(q);
	}
	event_free(pc->ev_timer);
	event_free(pc->ev_kick);
	free(pc->reset_why);
	free(pc->conninfo);
	free(pc->appname);
	free(pc->name);
	free(pc);
}

void
pgconn_free(struct pgconn *pc)
{
	if (pc == NULL || pc->doomed)
		return;
	pgconn_close(pc);
	event_del(pc->ev_kick);
	if (pc->depth > 0) {
		/* Inside one of our callbacks: finish when it returns. */
		pc->doomed = true;
		return;
	}
	pgconn_destroy(pc);
}

void
pgconn_set_conninfo(struct pgconn *pc, const char *conninfo)
{
	if (strcmp(conninfo, pc->conninfo) == 0)
		return;
	free(pc->conninfo);
	pc->conninfo = xstrdup(conninfo);
	pc->backoff_ms = PGCONN_BACKOFF_MIN_MS;
	if (pc->state == PGCONN_WAIT) {
		/* Try the new settings now rather than after the backoff. */
		pgconn_timer_ms(pc, 0);
		return;
	}
	free(pc->reset_why);
	pc->reset_why = xstrdup("connection settings changed");
	pc->reset_now = true;
	pgconn_kick(pc);
}

bool
pgconn_ready(const struct pgconn *pc)
{
	return pc->state == PGCONN_READY;
}

int
pgconn_pending(const struct pgconn *pc)
{
	return pc->nqueued + (pc->inflight != NULL ? 1 : 0);
}

static void
pgconn_enqueue(struct pgconn *pc, bool front, const char *sql, int nparams,
    const char *const *params, const int *lengths, const int *formats, pgconn_cb cb, void *arg)
{
	struct pgconn_query *q = xcalloc(1, sizeof *q);
	size_t n = (size_t)(nparams > 0 ? nparams : 1);
	int i;

	q->sql = xstrdup(sql);
	q->nparams = nparams;
	q->params = xcalloc(n, sizeof *q->params);
	if (formats != NULL) {
		q->lengths = xcalloc(n, sizeof *q->lengths);
		q->formats = xcalloc(n, sizeof *q->formats);
	}
	for (i = 0; i < nparams; i++) {
		if (params[i] == NULL)
			continue;
		if (formats != NULL && formats[i] == 1) {
			/* binary: any bytes, lengths[i] of them */
			q->params[i] = xmalloc(lengths[i] > 0 ? (size_t)lengths[i] : 1);
			memcpy(q->params[i], params[i], (size_t)lengths[i]);
			q->lengths[i] = lengths[i];
			q->formats[i] = 1;
		} else
			q->params[i] = xstrdup(params[i]);
	}
	q->cb = cb;
	q->arg = arg;
	if (front) {
		/* Ahead of the others, but in order among the front ones. */
		if (pc->front_tail != NULL) {
			q->next = pc->front_tail->next;
			pc->front_tail->next = q;
		} else {
			q->next = pc->head;
			pc->head = q;
		}
		if (q->next == NULL)
			pc->tail = q;
		pc->front_tail = q;
	} else {
		if (pc->tail != NULL)
			pc->tail->next = q;
		else
			pc->head = q;
		pc->tail = q;
	}
	pc->nqueued++;
	if (pc->state == PGCONN_READY && pc->inflight == NULL)
		pgconn_kick(pc);
}

void
pgconn_query(struct pgconn *pc, const char *sql, int nparams, const char *const *params,
    pgconn_cb cb, void *arg)
{
	pgconn_enqueue(pc, false, sql, nparams, params, NULL, NULL, cb, arg);
}

void
pgconn_query_bin(struct pgconn *pc, const char *sql, int nparams, const char *const *params,
    const int *lengths, const int *formats, pgconn_cb cb, void *arg)
{
	pgconn_enqueue(pc, false, sql, nparams, params, lengths, formats, cb, arg);
}

void
pgconn_query_front(struct pgconn *pc, const char *sql, int nparams, const char *const *params,
    pgconn_cb cb, void *arg)
{
	pgconn_enqueue(pc, true, sql, nparams, params, NULL, NULL, cb, arg);
}

void
pgconn_reset(struct pgconn *pc)
{
	if (pc->state == PGCONN_WAIT || pc->reset_why != NULL)
		return;
	pc->reset_why = xstrdup("reset requested");
	pc->reset_now = false;
	pgconn_kick(pc);
}
