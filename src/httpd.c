/*
 * httpd.c: the HTTP listener of httpd.h on evhttp.
 *
 * evhttp 2.1 has an idle timeout only (a client sending a byte every few
 * seconds keeps a connection forever) and no connection cap. Both are done
 * here from evhttp_set_bevcb: every connection's bufferevent is created
 * here, and an extra reference keeps it valid after evhttp frees it, so a
 * sweep every 100 ms can tell live connections from finished ones (evhttp
 * clears a freed bufferevent's callbacks) and shut down those whose request
 * has not arrived whole by its deadline, or that came past the cap. The
 * bufferevent is made without BEV_OPT_CLOSE_ON_FREE: evhttp closes the
 * socket itself when it frees the connection, so the extra reference never
 * holds a socket open. The deadline restarts after each answer on a
 * keep-alive connection, and stops while a handler owns the request.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "httpd.h"
#include "log.h"
#include "metrics.h"

#define HTTPD_SWEEP_MS 100
#define HTTPD_ROUTES_MAX 8

struct httpd_conn {
	struct bufferevent *bev;
	int64_t deadline_us; /* 0: a handler owns the request */
	bool refuse; /* past the connection cap */
	struct httpd_conn *next;
};

struct httpd_route {
	char *path;
	httpd_post_fn fn;
	void *arg;
	struct httpd *h;
};

struct httpd {
	struct event_base *base;
	struct evhttp *http;
	httpd_health_fn health;
	void *arg;
	struct httpd_conn *conns;
	int nconns;
	int max_conns;
	int64_t deadline_us;
	int max_headers;
	struct event *sweep;
	struct httpd_route routes[HTTPD_ROUTES_MAX];
	int nroutes;
};

void
httpd_reply(
    struct evhttp_request *req, int code, const char *reason, const char *type, const char *body)
{
	struct evbuffer *buf = evbuffer_new();

	if (type != NULL)
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
	if (body != NULL)
		evbuffer_add(buf, body, strlen(body));
	evhttp_send_reply(req, code, reason, buf);
	evbuffer_free(buf);
}

void
httpd_peer(struct evhttp_request *req, char *buf, size_t len)
{
	struct evhttp_connection *c = evhttp_request_get_connection(req);
	char *addr = NULL;
	ev_uint16_t port = 0;

	if (c == NULL) {
		snprintf(buf, len, "?");
		return;
	}
	evhttp_connection_get_peer(c, &addr, &port);
	snprintf(buf, len, "%s:%u", addr != NULL ? addr : "?", (unsigned)port);
}

/* ------------------------------------------------------ connections */

static struct httpd_conn *
httpd_conn_of(struct httpd *h, struct evhttp_request *req)
{
	struct evhttp_connection *c = evhttp_request_get_connection(req);
	struct bufferevent *bev;
	struct httpd_conn *hc;

	if (c == NULL)
		return NULL;
	bev = evhttp_connection_get_bufferevent(c);
	for (hc = h->conns; hc != NULL; hc = hc->next)
		if (hc->bev == bev)
			return hc;
	return NULL;
}

static bool httpd_conn_done(const struct httpd_conn *hc);

/* Forget the connections evhttp has freed. */
static void
httpd_reap(struct httpd *h)
{
	struct httpd_conn **pp = &h->conns, *hc;

	while ((hc = *pp) != NULL) {
		if (httpd_conn_done(hc)) {
			*pp = hc->next;
			bufferevent_decref(hc->bev);
			free(hc);
			h->nconns--;
		} else
			pp = &hc->next;
	}
	metrics.http_connections = h->nconns;
}

static struct bufferevent *
httpd_bevcb(struct event_base *base, void *arg)
{
	struct httpd *h = arg;
	struct httpd_conn *hc;

	/* Count exactly: connections closed since the last sweep are out. */
	httpd_reap(h);
	hc = xcalloc(1, sizeof *hc);

	hc->bev = bufferevent_socket_new(base, -1, 0);
	if (hc->bev == NULL) {
		free(hc);
		return NULL; /* evhttp makes its own; it is then not tracked */
	}
	bufferevent_incref(hc->bev);
	hc->deadline_us = now_mono_us() + h->deadline_us;
	hc->next = h->conns;
	h->conns = hc;
	h->nconns++;
	metrics.http_connections_total++;
	if (h->nconns > h->max_conns) {
		hc->refuse = true;
		metrics.http_refused_cap++;
		event_active(h->sweep, EV_TIMEOUT, 0);
	}
	return hc->bev;
}

/* evhttp freed the connection: its bufferevent has no callbacks left. */
static bool
httpd_conn_done(const struct httpd_conn *hc)
{
	bufferevent_data_cb rd = NULL, wr = NULL;
	bufferevent_event_cb ev = NULL;

	bufferevent_getcb(hc->bev, &rd, &wr, &ev, NULL);
	return rd == NULL && wr == NULL && ev == NULL;
}

static void
httpd_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct httpd *h = arg;
	struct httpd_conn *hc;
	int64_t now = now_mono_us();
	evutil_socket_t s;

	UNUSED(fd);
	UNUSED(what);
	httpd_reap(h);
	for (hc = h->conns; hc != NULL; hc = hc->next) {
		s = bufferevent_getfd(hc->bev);
		if (s >= 0 && (hc->refuse || (hc->deadline_us != 0 && now >= hc->deadline_us))) {
			if (!hc->refuse) {
				metrics.http_refused_deadline++;
				log_ratelimited(LOG_LVL_WARN, "http-deadline", 60,
				    "http: a request did not arrive whole within %lld ms: "
				    "connection closed",
				    (long long)(h->deadline_us / 1000));
			}
			/* evhttp sees end of file and frees the connection. */
			shutdown(s, SHUT_RDWR);
			hc->deadline_us = 0;
			hc->refuse = false;
		}
	}
}

/* The answer went out: the next request on this connection gets a new
 * deadline. */
static void
httpd_complete(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	struct httpd_conn *hc = httpd_conn_of(h, req);

	if (hc != NULL)
		hc->deadline_us = now_mono_us() + h->deadline_us;
}

/* A request arrived whole: its handler owns it until it answers. Checks
 * what every route shares. Returns false if it answered already. */
static bool
httpd_accept(struct httpd *h, struct evhttp_request *req, int methods)
{
	struct httpd_conn *hc = httpd_conn_of(h, req);
	struct evkeyvalq *hdr = evhttp_request_get_input_headers(req);
	struct evkeyval *kv;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	int n = 0;

	if (hc != NULL)
		hc->deadline_us = 0;
	evhttp_request_set_on_complete_cb(req, httpd_complete, h);
	metrics.http_requests++;
	if ((evhttp_request_get_command(req) & methods) == 0) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow",
		    methods & EVHTTP_REQ_POST ? "POST" : "GET, HEAD");
		metrics.http_refused_request++;
		httpd_reply(req, 405, "Method Not Allowed", "text/plain", "method not allowed\n");
		return false;
	}
	for (kv = hdr->tqh_first; kv != NULL; kv = kv->next.tqe_next)
		n++;
	if (n > h->max_headers) {
		metrics.http_refused_request++;
		httpd_reply(req, 431, "Request Header Fields Too Large", "text/plain",
		    "too many header lines\n");
		return false;
	}
	if (uri != NULL && evhttp_uri_get_query(uri) != NULL && (methods & EVHTTP_REQ_POST)) {
		metrics.http_refused_request++;
		httpd_reply(req, 404, "Not Found", "text/plain", "not found\n");
		return false;
	}
	return true;
}

/* ------------------------------------------------------------ routes */

static void
httpd_healthz(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	char why[256] = "", body[300];

	if (!httpd_accept(h, req, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD))
		return;
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
	struct httpd *h = arg;
	char *text;

	if (!httpd_accept(h, req, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD))
		return;
	text = metrics_render();
	httpd_reply(req, 200, "OK", "text/plain; version=0.0.4", text);
	free(text);
}

static void
httpd_post(struct evhttp_request *req, void *arg)
{
	struct httpd_route *r = arg;

	if (!httpd_accept(r->h, req, EVHTTP_REQ_POST))
		return;
	r->fn(req, r->arg);
}

static void
httpd_notfound(struct evhttp_request *req, void *arg)
{
	if (!httpd_accept(arg, req, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST))
		return;
	metrics.http_refused_request++;
	httpd_reply(req, 404, "Not Found", "text/plain", "not found\n");
}

void
httpd_route_post(struct httpd *h, const char *path, httpd_post_fn fn, void *arg)
{
	struct httpd_route *r;

	if (h->nroutes == HTTPD_ROUTES_MAX)
		abort();
	r = &h->routes[h->nroutes++];
	r->path = xstrdup(path);
	r->fn = fn;
	r->arg = arg;
	r->h = h;
	evhttp_set_cb(h->http, path, httpd_post, r);
	log_info("http: POST %s", path);
}

void
httpd_reconfigure(struct httpd *h, const struct conf *conf)
{
	h->deadline_us = (int64_t)conf->http_deadline_ms * 1000;
	h->max_headers = conf->http_max_headers;
}

struct httpd *
httpd_new(struct event_base *base, const struct conf *conf, httpd_health_fn health, void *arg,
    char *err, size_t errlen)
{
	struct httpd *h = xcalloc(1, sizeof *h);
	struct timeval sweep = {0, HTTPD_SWEEP_MS * 1000};

	h->base = base;
	h->health = health;
	h->arg = arg;
	h->max_conns = conf->http_max_connections;
	httpd_reconfigure(h, conf);
	h->http = evhttp_new(base);
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
	evhttp_set_max_headers_size(h->http, 8192);
	evhttp_set_max_body_size(h->http, (ev_ssize_t)conf->http_max_body_bytes);
	/* The idle timeout stays as a second line behind the deadline. */
	evhttp_set_timeout(h->http, 10);
	evhttp_set_bevcb(h->http, httpd_bevcb, h);
	evhttp_set_cb(h->http, "/healthz", httpd_healthz, h);
	evhttp_set_cb(h->http, "/metrics", httpd_metrics, h);
	evhttp_set_gencb(h->http, httpd_notfound, h);
	h->sweep = event_new(base, -1, EV_PERSIST, httpd_sweep, h);
	event_add(h->sweep, &sweep);
	if (evhttp_bind_socket(h->http, conf->http_listen, (ev_uint16_t)conf->http_port) != 0) {
		snprintf(err, errlen, "http: cannot listen on %s:%d", conf->http_listen,
		    conf->http_port);
		httpd_free(h);
		return NULL;
	}
	log_info(
	    "http: listening on %s:%d (/healthz, /metrics)", conf->http_listen, conf->http_port);
	return h;
}

void
httpd_free(struct httpd *h)
{
	struct httpd_conn *hc;
	int i;

	if (h == NULL)
		return;
	evhttp_free(h->http);
	while ((hc = h->conns) != NULL) {
		h->conns = hc->next;
		bufferevent_decref(hc->bev);
		free(hc);
	}
	if (h->sweep != NULL)
		event_free(h->sweep);
	for (i = 0; i < h->nroutes; i++)
		free(h->routes[i].path);
	free(h);
}
