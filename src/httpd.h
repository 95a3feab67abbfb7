/*
 * httpd.h: the daemon's local HTTP listener (libevent evhttp): GET /healthz
 * (200 "ok" when PostgreSQL and the broker are connected and the schema is
 * right, 503 with the reason otherwise) and GET /metrics (Prometheus text).
 * Bounded: small header and body limits, an idle timeout.
 */
#ifndef PREPAIDD_HTTPD_H
#define PREPAIDD_HTTPD_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

#include "conf.h"

struct httpd;

/* Fills why (when unhealthy) and returns whether the daemon is healthy. */
typedef bool (*httpd_health_fn)(void *arg, char *why, size_t whylen);

struct httpd *httpd_new(struct event_base *base, const struct conf *conf,
    httpd_health_fn health, void *arg, char *err, size_t errlen);
void httpd_free(struct httpd *h);

#endif
