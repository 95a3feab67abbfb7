/*
 * pgconn.h: one asynchronous PostgreSQL connection on the libevent loop.
 *
 * libpq in non-blocking mode: PQconnectStart/PQconnectPoll, then queries
 * sent with PQsendQueryParams (text parameters) one at a time from a FIFO;
 * results are collected with PQconsumeInput/PQisBusy/PQgetResult when the
 * socket is readable. The wait logic lives only here.
 *
 * Reconnects by itself with exponential backoff (250 ms doubling up to
 * reconnect_max_ms, with jitter). When the connection is lost, every query
 * still queued or in flight completes with res == NULL (outcome unknown),
 * so its owner can retry: every write prepaidd makes is idempotent.
 * LISTEN/NOTIFY notifications are delivered through on_notify. Errors
 * reach the callbacks as a one-line err or why, valid during the call.
 */
#ifndef PREPAIDD_PGCONN_H
#define PREPAIDD_PGCONN_H

#include <stdbool.h>

#include <event2/event.h>
#include <libpq-fe.h>

struct pgconn;

/*
 * Query completion. res is the last PGresult of the query (owned by pgconn:
 * it is cleared after the callback returns; copy what you need), or NULL if
 * the connection failed before a result came. err is a one-line message
 * when res is NULL or res is not PGRES_COMMAND_OK/PGRES_TUPLES_OK, else NULL.
 */
typedef void (*pgconn_cb)(void *arg, PGresult *res, const char *err);

struct pgconn_handlers {
	/* Connected (again). Queries sent from here run before queued ones. */
	void (*on_connect)(void *arg, struct pgconn *pc);
	/* Lost (after having been connected) or a connect attempt failed. */
	void (*on_disconnect)(void *arg, struct pgconn *pc, const char *why);
	/* A NOTIFY arrived for a channel this connection LISTENs on. */
	void (*on_notify)(void *arg, const char *channel, const char *payload);
	void *arg;
};

/* name is used in log lines ("ingest", "control"). Starts connecting at once. */
struct pgconn *pgconn_new(struct event_base *base, const char *name, const char *conninfo,
    int reconnect_max_ms, const struct pgconn_handlers *h);
void pgconn_free(struct pgconn *pc);

/* New conninfo (SIGHUP): reconnects if it differs. */
void pgconn_set_conninfo(struct pgconn *pc, const char *conninfo);

bool pgconn_ready(const struct pgconn *pc);
/* Queries queued or in flight. */
int pgconn_pending(const struct pgconn *pc);

/*
 * Queue a query with text parameters (params may contain NULL for SQL NULL).
 * The strings are copied. pgconn_query_front() puts it ahead of the queued
 * ones, behind other front ones (for on_connect: LISTEN, SET, the schema
 * check). Queries queued while disconnected wait for the next connection.
 * cb may be NULL.
 */
void pgconn_query(struct pgconn *pc, const char *sql, int nparams, const char *const *params,
    pgconn_cb cb, void *arg);
void pgconn_query_front(struct pgconn *pc, const char *sql, int nparams, const char *const *params,
    pgconn_cb cb, void *arg);
/*
 * pgconn_query() with parameters in PostgreSQL's binary format where
 * formats[i] is 1 (lengths[i] bytes of params[i]), text where it is 0.
 */
void pgconn_query_bin(struct pgconn *pc, const char *sql, int nparams, const char *const *params,
    const int *lengths, const int *formats, pgconn_cb cb, void *arg);

/* Drop the connection now and reconnect after backoff (e.g. on a fatal error). */
void pgconn_reset(struct pgconn *pc);

#endif
