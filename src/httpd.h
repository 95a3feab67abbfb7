/*
 * httpd.h: the daemon's HTTP listener (libevent evhttp): GET /healthz (200
 * "ok" when PostgreSQL and the broker are connected and the schema is right,
 * 503 with the reason otherwise), GET /metrics (Prometheus text), and the
 * POST routes other modules register (the payment callbacks).
 *
 * Hardened for a listener a payment gateway reaches through a reverse proxy:
 * exact paths (the raw request target, byte for byte), the method each
 * route takes (405 otherwise), a body limit (413), a head size and header
 * count limit (431), absolute deadlines for the head and for the whole
 * request (a client trickling bytes is cut off however slowly it sends),
 * and connection caps, global and per address, that close the oldest
 * connection still sending its request so that a newcomer sent whole (a
 * provider's callback) always finds a slot. See httpd.c.
 */
#ifndef PREPAIDD_HTTPD_H
#define PREPAIDD_HTTPD_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>
#include <event2/http.h>

#include "conf.h"

struct httpd;

/* Fills why (when unhealthy) and returns whether the daemon is healthy. */
typedef bool (*httpd_health_fn)(void *arg, char *why, size_t whylen);
/* A POST to a registered path (method, path, header count already checked).
 * The handler must answer, now or later, with evhttp_send_reply. */
typedef void (*httpd_post_fn)(struct evhttp_request *req, void *arg);

struct httpd *httpd_new(struct event_base *base, const struct conf *conf, httpd_health_fn health,
    void *arg, char *err, size_t errlen);
/* Route POSTs to path (exact: no query string, fragment or encoding) to fn. */
void httpd_route_post(struct httpd *h, const char *path, httpd_post_fn fn, void *arg);
/* Route GET, HEAD and POST requests whose path is prefix or starts with
 * prefix + "/" to fn (a query string is allowed on GET and HEAD only).
 * Exact routes win over a prefix. */
void httpd_route_prefix(struct httpd *h, const char *prefix, httpd_post_fn fn, void *arg);
/* Reloadable limits (deadlines, header count, per-address cap) from a new
 * configuration. */
void httpd_reconfigure(struct httpd *h, const struct conf *conf);
/* Reply with a body (type, body NUL-terminated; body may be NULL). */
void httpd_reply(
    struct evhttp_request *req, int code, const char *reason, const char *type, const char *body);
/* The peer's address as "a.b.c.d:port" (for audit rows). */
void httpd_peer(struct evhttp_request *req, char *buf, size_t len);
void httpd_free(struct httpd *h);

#endif
