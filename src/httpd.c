/*
 * httpd.c: the local HTTP listener of httpd.h on evhttp.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "httpd.h"
#include "log.h"
#include "metrics.h"

struct httpd {
	struct evhttp *http;
	httpd_health_fn health;
	void *arg;
};

static void
httpd_reply(struct evhttp_request *req, int code, const char *reason,
    const char *type, const char *body)
{
	struct evbuffer *buf = evbuffer_new();

	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
	evbuffer_add(buf, body, strlen(body));
	evhttp_send_reply(req, code, reason, buf);
	evbuffer_free(buf);
}

static void
httpd_healthz(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	char why[256] = "", body[300];

	if (h->health(h->arg, why, sizeof why)) {
		httpd_reply(req, 200, "OK", "text/plain", "ok\n");
		return;
	}
	snprintf(body, sizeof body, "unhealthy: %s\n", why);
	httpd_reply(req, 503, "Service Unavailable", "text/plain", body);
}

static void
httpd_metrics(struct evhttp_request *req, void *arg)
{
	char *text = metrics_render();

	UNUSED(arg);
	httpd_reply(req, 200, "OK", "text/plain; version=0.0.4", text);
	free(text);
}

static void
httpd_notfound(struct evhttp_request *req, void *arg)
{
	UNUSED(arg);
	httpd_reply(req, 404, "Not Found", "text/plain", "not found\n");
}

struct httpd *
httpd_new(struct event_base *base, const struct conf *conf, httpd_health_fn health,
    void *arg, char *err, size_t errlen)
{
	struct httpd *h = xcalloc(1, sizeof *h);

	h->health = health;
	h->arg = arg;
	h->http = evhttp_new(base);
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_max_headers_size(h->http, 8192);
	evhttp_set_max_body_size(h->http, 4096);
	evhttp_set_timeout(h->http, 10);
	evhttp_set_cb(h->http, "/healthz", httpd_healthz, h);
	evhttp_set_cb(h->http, "/metrics", httpd_metrics, h);
	evhttp_set_gencb(h->http, httpd_notfound, h);
	if (evhttp_bind_socket(h->http, conf->http_listen, (ev_uint16_t)conf->http_port) != 0) {
		snprintf(err, errlen, "http: cannot listen on %s:%d", conf->http_listen,
		    conf->http_port);
		evhttp_free(h->http);
		free(h);
		return NULL;
	}
	log_info("http: listening on %s:%d (/healthz, /metrics)", conf->http_listen,
	    conf->http_port);
	return h;
}

void
httpd_free(struct httpd *h)
{
	if (h == NULL)
		return;
	evhttp_free(h->http);
	free(h);
}
