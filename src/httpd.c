/*
 * httpd.c: the HTTP listener of httpd.h on evhttp.
 *
 * evhttp 2.1 has an idle timeout only (a client sending a byte every few
 * seconds keeps a connection forever) and no connection cap. Both are done
 * here from evhttp_set_bevcb: every connection's bufferevent is created
 * here, and an extra reference keeps it valid after evhttp frees it, so a
 * sweep every 100 ms can tell live connections from finished ones (evhttp
 * clears a freed bufferevent's callbacks). The bufferevent is made without
 * BEV_OPT_CLOSE_ON_FREE: evhttp closes the socket itself when it frees the
 * connection, so the extra reference never holds a socket open.
 *
 * A connection is in one of these phases:
 *   HEAD   waiting for its request head (request line and headers), which
 *          must arrive whole within [http] header_deadline_ms of the
 *          connection's start (or of the previous answer on keep-alive);
 *   BODY   head whole, body still coming: the whole request must arrive
 *          within [http] deadline_ms;
 *   OWNED  the request arrived whole and a handler owns it until it
 *          answers: never cut off or evicted;
 *   CLOSING shut down by us; evhttp frees it when it sees end of file.
 * HEAD and BODY connections are "waiting". The head is seen as it arrives
 * through a callback on the input buffer (evhttp 2.1 has no hook between
 * the head and the body), which also measures it: a head past
 * HTTPD_HEAD_MAX is answered 431 at once, whole or not.
 *
 * The reserve: a newcomer always gets a slot while a waiting connection
 * can make room. When an address has [http] max_connections_per_address
 * waiting connections, its oldest waiting one is closed for the newcomer
 * (if it is older than HTTPD_GRACE_US: a burst sent at once is let in);
 * when [http] max_connections are open, the oldest waiting one overall is.
 * A newcomer is refused only when every other slot is OWNED. A callback
 * that sends its request at once (every provider, and every reverse proxy
 * that buffers requests, as nginx does by default) is whole within one
 * read, so it is never the oldest waiting one: trickling clients, however
 * many, from however many addresses, cannot starve it. Addresses are the
 * TCP peer's: X-Forwarded-For is not used (it arrives with the head, after
 * the slot is taken).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "httpd.h"
#include "log.h"
#include "metrics.h"

#define HTTPD_SWEEP_MS 100
#define HTTPD_ROUTES_MAX 8
/* Request line and headers, bytes: 431 past it. */
#define HTTPD_HEAD_MAX 8192
/* The listen backlog: a burst of connections waits in the kernel, not in
 * SYN retries. */
#define HTTPD_BACKLOG 1024
/* A newcomer is not closed for its own address's cap within this long: a
 * burst of callbacks from one address, all sent at once, is not cut by its
 * own members before their requests are read. */
#define HTTPD_GRACE_US 250000
/* File descriptors left for everything but the listener's connections. */
#define HTTPD_FDS_SPARE 128
/* After a raw 431, how long the peer has to read it before the close. */
#define HTTPD_LINGER_US 1000000

enum httpd_phase { HTTPD_NEW, HTTPD_HEAD, HTTPD_BODY, HTTPD_OWNED, HTTPD_CLOSING };

struct httpd_conn {
	struct httpd *h;
	struct bufferevent *bev;
	enum httpd_phase phase;
	int64_t start_us; /* connection start, or the previous answer */
	int64_t close_us; /* CLOSING after a raw 431: shut down at */
	char addr[INET6_ADDRSTRLEN]; /* the peer, set on admission */
	size_t head_bytes; /* of the head so far */
	bool bol; /* the scanner is at the beginning of a line */
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
	struct httpd_conn *conns; /* newest first */
	int nconns;
	int max_conns;
	int max_per_address;
	int64_t head_deadline_us;
	int64_t deadline_us;
	int max_headers;
	struct event *sweep;
	struct event *admit; /* newcomers: address and caps */
	struct evconnlistener *lev;
	struct event *resume; /* accepting again after running out of files */
	struct httpd_route routes[HTTPD_ROUTES_MAX];
	int nroutes;
	struct httpd_route prefixes[HTTPD_ROUTES_MAX];
	int nprefixes;
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

/* evhttp freed the connection: its bufferevent has no callbacks left. */
static bool
httpd_conn_done(const struct httpd_conn *hc)
{
	bufferevent_data_cb rd = NULL, wr = NULL;
	bufferevent_event_cb ev = NULL;

	bufferevent_getcb(hc->bev, &rd, &wr, &ev, NULL);
	return rd == NULL && wr == NULL && ev == NULL;
}

static void httpd_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

static void
httpd_conn_free(struct httpd_conn *hc)
{
	evbuffer_remove_cb(bufferevent_get_input(hc->bev), httpd_input, hc);
	bufferevent_decref(hc->bev);
	free(hc);
}

/* Forget the connections evhttp has freed. */
static void
httpd_reap(struct httpd *h)
{
	struct httpd_conn **pp = &h->conns, *hc;

	while ((hc = *pp) != NULL) {
		if (httpd_conn_done(hc)) {
			*pp = hc->next;
			httpd_conn_free(hc);
			h->nconns--;
		} else
			pp = &hc->next;
	}
	metrics.http_connections = h->nconns;
}

/* Close a connection now: evhttp sees end of file and frees it. */
static void
httpd_close(struct httpd_conn *hc)
{
	evutil_socket_t s = bufferevent_getfd(hc->bev);

	if (s >= 0)
		shutdown(s, SHUT_RDWR);
	hc->phase = HTTPD_CLOSING;
	hc->close_us = 0;
}

/* The head grew past HTTPD_HEAD_MAX: answer 431 on the socket (evhttp
 * would say 400), then close once the peer had time to read it. */
static void
httpd_head_too_large(struct httpd_conn *hc)
{
	static const char answer[] = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
	                             "Content-Type: text/plain\r\n"
	                             "Content-Length: 23\r\n"
	                             "Connection: close\r\n\r\n"
	                             "request head too large\n";
	evutil_socket_t s = bufferevent_getfd(hc->bev);

	metrics.http_refused_request++;
	log_ratelimited(LOG_LVL_WARN, "http-head", 60,
	    "http: a request head from %s passed %d bytes: 431", hc->addr, HTTPD_HEAD_MAX);
	if (s < 0 || evbuffer_get_length(bufferevent_get_output(hc->bev)) > 0) {
		httpd_close(hc);
		return;
	}
	if (send(s, answer, sizeof answer - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
		httpd_close(hc);
		return;
	}
	shutdown(s, SHUT_WR);
	hc->phase = HTTPD_CLOSING;
	hc->close_us = now_mono_us() + HTTPD_LINGER_US;
}

/*
 * Bytes arrived (before evhttp parses them). In HEAD, look for the empty
 * line that ends the head, and measure it.
 */
static void
httpd_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct httpd_conn *hc = arg;
	struct evbuffer_ptr pos;
	unsigned char chunk[1024];
	size_t len, at, n, i;

	if (info->n_added == 0)
		return;
	if (hc->phase == HTTPD_CLOSING && hc->close_us != 0) {
		/* After a raw 431: read and drop what still comes until the
		 * close, so that evhttp never answers it and the peer, still
		 * sending, is not reset before it reads the 431. */
		evbuffer_drain(buf, evbuffer_get_length(buf));
		return;
	}
	if (hc->phase != HTTPD_HEAD && hc->phase != HTTPD_NEW)
		return;
	len = evbuffer_get_length(buf);
	at = len - info->n_added;
	while (at < len && hc->phase != HTTPD_BODY) {
		if (evbuffer_ptr_set(buf, &pos, at, EVBUFFER_PTR_SET) != 0)
			return;
		n = len - at < sizeof chunk ? len - at : sizeof chunk;
		if (evbuffer_copyout_from(buf, &pos, chunk, n) != (ev_ssize_t)n)
			return;
		for (i = 0; i < n; i++) {
			hc->head_bytes++;
			if (chunk[i] == '\n') {
				if (hc->bol && hc->head_bytes > 2) {
					hc->phase = HTTPD_BODY;
					break;
				}
				hc->bol = true;
			} else if (chunk[i] != '\r')
				hc->bol = false;
		}
		at += n;
		if (hc->phase != HTTPD_BODY && hc->head_bytes > HTTPD_HEAD_MAX) {
			httpd_head_too_large(hc);
			if (hc->close_us != 0)
				evbuffer_drain(buf, evbuffer_get_length(buf));
			return;
		}
	}
}

static void
httpd_wait_head(struct httpd_conn *hc, int64_t now)
{
	hc->phase = HTTPD_HEAD;
	hc->start_us = now;
	hc->head_bytes = 0;
	hc->bol = false;
}

static struct bufferevent *
httpd_bevcb(struct event_base *base, void *arg)
{
	struct httpd *h = arg;
	struct httpd_conn *hc;

	/* Count exactly: connections closed since the last sweep are out. */
	httpd_reap(h);
	hc = xcalloc(1, sizeof *hc);
	hc->h = h;
	hc->bev = bufferevent_socket_new(base, -1, 0);
	if (hc->bev == NULL) {
		free(hc);
		return NULL; /* evhttp makes its own; it is then not tracked */
	}
	bufferevent_incref(hc->bev);
	hc->phase = HTTPD_NEW;
	hc->start_us = now_mono_us();
	evbuffer_add_cb(bufferevent_get_input(hc->bev), httpd_input, hc);
	hc->next = h->conns;
	h->conns = hc;
	h->nconns++;
	metrics.http_connections_total++;
	/* evhttp gives the bufferevent its socket after this returns. */
	event_active(h->admit, EV_TIMEOUT, 0);
	return hc->bev;
}

static bool
httpd_waiting(const struct httpd_conn *hc)
{
	return hc->phase == HTTPD_HEAD || hc->phase == HTTPD_BODY;
}

/* The oldest waiting connection other than self, of addr if not NULL,
 * started before "before"; *n counts the waiting ones of addr. */
static struct httpd_conn *
httpd_oldest_waiting(
    struct httpd *h, const struct httpd_conn *self, const char *addr, int64_t before, int *n)
{
	struct httpd_conn *hc, *old = NULL;

	*n = 0;
	for (hc = h->conns; hc != NULL; hc = hc->next) {
		if (hc == self || !httpd_waiting(hc))
			continue;
		if (addr != NULL && strcmp(hc->addr, addr) != 0)
			continue;
		(*n)++;
		if (hc->start_us < before && (old == NULL || hc->start_us <= old->start_us))
			old = hc;
	}
	return old;
}

static void
httpd_peer_of(evutil_socket_t s, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	const void *a = NULL;

	snprintf(buf, len, "?");
	if (getpeername(s, (struct sockaddr *)&ss, &sl) != 0)
		return;
	if (ss.ss_family == AF_INET)
		a = &((struct sockaddr_in *)&ss)->sin_addr;
	else if (ss.ss_family == AF_INET6)
		a = &((struct sockaddr_in6 *)&ss)->sin6_addr;
	if (a == NULL || inet_ntop(ss.ss_family, a, buf, (socklen_t)len) == NULL)
		snprintf(buf, len, "?");
}

/* Admit one newcomer: make room by the caps of the header comment. */
static void
httpd_admit_one(struct httpd *h, struct httpd_conn *hc)
{
	struct httpd_conn *victim, *c;
	int n, open = 0;

	httpd_peer_of(bufferevent_getfd(hc->bev), hc->addr, sizeof hc->addr);
	/* It may have sent its head already: the scanner runs from the start. */
	if (hc->phase == HTTPD_NEW)
		hc->phase = HTTPD_HEAD;
	if (h->max_per_address > 0) {
		victim = httpd_oldest_waiting(h, hc, hc->addr, now_mono_us() - HTTPD_GRACE_US, &n);
		if (n >= h->max_per_address && victim != NULL) {
			metrics.http_refused_cap++;
			httpd_close(victim);
		}
	}
	for (c = h->conns; c != NULL; c = c->next)
		open += c->phase != HTTPD_CLOSING;
	if (open <= h->max_conns)
		return;
	metrics.http_refused_cap++;
	victim = httpd_oldest_waiting(h, hc, NULL, INT64_MAX, &n);
	if (victim != NULL) {
		httpd_close(victim);
		return;
	}
	httpd_close(hc);
	log_ratelimited(LOG_LVL_WARN, "http-cap", 60,
	    "http: %d connections, all busy with requests: a new one from %s closed "
	    "([http] max_connections)",
	    h->max_conns, hc->addr);
}

/* Newcomers, oldest first, so that the caps close in arrival order. */
static void
httpd_admit(evutil_socket_t fd, short what, void *arg)
{
	struct httpd *h = arg;
	struct httpd_conn *hc, **todo;
	int n = 0;

	UNUSED(fd);
	UNUSED(what);
	for (hc = h->conns; hc != NULL; hc = hc->next)
		n += hc->addr[0] == '\0';
	if (n == 0)
		return;
	todo = xcalloc((size_t)n, sizeof *todo);
	n = 0;
	for (hc = h->conns; hc != NULL; hc = hc->next)
		if (hc->addr[0] == '\0')
			todo[n++] = hc;
	while (n-- > 0) {
		hc = todo[n];
		if (hc->phase == HTTPD_CLOSING || bufferevent_getfd(hc->bev) < 0)
			snprintf(hc->addr, sizeof hc->addr, "?");
		else
			httpd_admit_one(h, hc);
	}
	free(todo);
}

static void
httpd_sweep(evutil_socket_t fd, short what, void *arg)
{
	struct httpd *h = arg;
	struct httpd_conn *hc;
	int64_t now = now_mono_us();
	bool late;

	UNUSED(fd);
	UNUSED(what);
	httpd_reap(h);
	for (hc = h->conns; hc != NULL; hc = hc->next) {
		if (hc->phase == HTTPD_CLOSING) {
			if (hc->close_us != 0 && now >= hc->close_us)
				httpd_close(hc);
			continue;
		}
		late = (hc->phase <= HTTPD_HEAD && now >= hc->start_us + h->head_deadline_us) ||
		       (hc->phase == HTTPD_BODY && now >= hc->start_us + h->deadline_us);
		if (!late)
			continue;
		metrics.http_refused_deadline++;
		log_ratelimited(LOG_LVL_WARN, "http-deadline", 60,
		    "http: a request from %s did not arrive whole within %lld ms (%s): "
		    "connection closed",
		    hc->addr,
		    (long long)((hc->phase <= HTTPD_HEAD ? h->head_deadline_us : h->deadline_us) /
		                1000),
		    hc->phase <= HTTPD_HEAD ? "[http] header_deadline_ms" : "[http] deadline_ms");
		httpd_close(hc);
	}
}

/*
 * accept() failed for another reason than a retry: out of file descriptors
 * above all (EMFILE, ENFILE). libevent would call accept() again at once,
 * in a loop, while the socket stays readable: pause for a sweep instead,
 * while the caps close connections.
 */
/* The listener's argument is evhttp's; the daemon has one httpd. */
static struct httpd *httpd_listening;

static void
httpd_accept_error(struct evconnlistener *lev, void *arg)
{
	struct httpd *h = httpd_listening;
	struct timeval tv = {0, HTTPD_SWEEP_MS * 1000};
	int e = EVUTIL_SOCKET_ERROR();

	UNUSED(arg);
	if (h == NULL || h->lev != lev)
		return;
	evconnlistener_disable(lev);
	evtimer_add(h->resume, &tv);
	log_ratelimited(LOG_LVL_WARN, "http-accept", 60,
	    "http: cannot accept a connection: %s; pausing %d ms (%d open)",
	    evutil_socket_error_to_string(e), HTTPD_SWEEP_MS, h->nconns);
}

static void
httpd_resume(evutil_socket_t fd, short what, void *arg)
{
	struct httpd *h = arg;

	UNUSED(fd);
	UNUSED(what);
	evconnlistener_enable(h->lev);
}

/* The answer went out: the next request on this connection gets new
 * deadlines. */
static void
httpd_complete(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	struct httpd_conn *hc = httpd_conn_of(h, req);

	if (hc != NULL && hc->phase == HTTPD_OWNED)
		httpd_wait_head(hc, now_mono_us());
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

	metrics.http_requests++;
	if (hc != NULL && hc->phase == HTTPD_CLOSING) {
		/* Closed for a cap or a 431 while evhttp still had its bytes:
		 * nobody reads this answer, and no handler runs. */
		httpd_reply(req, 503, "Service Unavailable", "text/plain", "closed\n");
		return false;
	}
	if (hc != NULL)
		hc->phase = HTTPD_OWNED;
	evhttp_request_set_on_complete_cb(req, httpd_complete, h);
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
	if (uri != NULL && evhttp_uri_get_query(uri) != NULL &&
	    evhttp_request_get_command(req) == EVHTTP_REQ_POST) {
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
	/* evhttp matched the decoded path: "/pay/wechat%00", an absolute
	 * URI and a fragment all reach here. Only the exact path is the
	 * route; a query string is not part of any provider's callback. */
	if (strcmp(evhttp_request_get_uri(req), r->path) != 0) {
		metrics.http_refused_request++;
		httpd_reply(req, 404, "Not Found", "text/plain", "not found\n");
		return;
	}
	r->fn(req, r->arg);
}

static void
httpd_notfound(struct evhttp_request *req, void *arg)
{
	struct httpd *h = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
	int i;
	size_t n;

	for (i = 0; path != NULL && i < h->nprefixes; i++) {
		n = strlen(h->prefixes[i].path);
		if (strncmp(path, h->prefixes[i].path, n) == 0 &&
		    (path[n] == '\0' || path[n] == '/')) {
			if (httpd_accept(
			        h, req, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST))
				h->prefixes[i].fn(req, h->prefixes[i].arg);
			return;
		}
	}
	if (!httpd_accept(h, req, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST))
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
httpd_route_prefix(struct httpd *h, const char *prefix, httpd_post_fn fn, void *arg)
{
	struct httpd_route *r;

	if (h->nprefixes == HTTPD_ROUTES_MAX)
		abort();
	r = &h->prefixes[h->nprefixes++];
	r->path = xstrdup(prefix);
	r->fn = fn;
	r->arg = arg;
	r->h = h;
	log_info("http: GET, POST %s/...", prefix);
}

void
httpd_reconfigure(struct httpd *h, const struct conf *conf)
{
	h->deadline_us = (int64_t)conf->http_deadline_ms * 1000;
	h->head_deadline_us = (int64_t)conf->http_header_deadline_ms * 1000;
	if (h->head_deadline_us > h->deadline_us)
		h->head_deadline_us = h->deadline_us;
	h->max_headers = conf->http_max_headers;
	h->max_per_address = conf->http_max_connections_per_address;
}

struct httpd *
httpd_new(struct event_base *base, const struct conf *conf, httpd_health_fn health, void *arg,
    char *err, size_t errlen)
{
	struct httpd *h = xcalloc(1, sizeof *h);
	struct timeval sweep = {0, HTTPD_SWEEP_MS * 1000};
	struct sockaddr_storage ss;
	int sslen = (int)sizeof ss;
	struct evconnlistener *lev;
	struct rlimit rl;
	char where[INET6_ADDRSTRLEN + 16];

	h->base = base;
	h->health = health;
	h->arg = arg;
	h->max_conns = conf->http_max_connections;
	/* Running out of files would stop accept() for everyone: stay below. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    (rlim_t)h->max_conns + HTTPD_FDS_SPARE > rl.rlim_cur) {
		h->max_conns =
		    rl.rlim_cur > HTTPD_FDS_SPARE + 16 ? (int)(rl.rlim_cur - HTTPD_FDS_SPARE) : 16;
		log_warn("http: [http] max_connections = %d does not fit in %llu open files "
		         "(LimitNOFILE); using %d",
		    conf->http_max_connections, (unsigned long long)rl.rlim_cur, h->max_conns);
	}
	httpd_reconfigure(h, conf);
	h->http = evhttp_new(base);
	evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
	/* The head is measured in httpd_input (431 past HTTPD_HEAD_MAX);
	 * evhttp's own limit, which answers 400, stays out of the way. */
	evhttp_set_max_headers_size(h->http, 4 * HTTPD_HEAD_MAX);
	evhttp_set_max_body_size(h->http, (ev_ssize_t)conf->http_max_body_bytes);
	/* A body past it is read and dropped before the 413 (within the
	 * deadline), so that a client still sending it reads the 413 rather
	 * than a reset. */
	evhttp_set_flags(h->http, EVHTTP_SERVER_LINGERING_CLOSE);
	/* The idle timeout stays as a second line behind the deadline. */
	evhttp_set_timeout(h->http, 10);
	evhttp_set_bevcb(h->http, httpd_bevcb, h);
	evhttp_set_cb(h->http, "/healthz", httpd_healthz, h);
	evhttp_set_cb(h->http, "/metrics", httpd_metrics, h);
	evhttp_set_gencb(h->http, httpd_notfound, h);
	h->sweep = event_new(base, -1, EV_PERSIST, httpd_sweep, h);
	event_add(h->sweep, &sweep);
	h->admit = event_new(base, -1, 0, httpd_admit, h);
	snprintf(where, sizeof where, strchr(conf->http_listen, ':') ? "[%s]:%d" : "%s:%d",
	    conf->http_listen, conf->http_port);
	lev = NULL;
	if (evutil_parse_sockaddr_port(where, (struct sockaddr *)&ss, &sslen) == 0)
		lev = evconnlistener_new_bind(base, NULL, NULL,
		    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE,
		    HTTPD_BACKLOG, (struct sockaddr *)&ss, sslen);
	if (lev == NULL || evhttp_bind_listener(h->http, lev) == NULL) {
		if (lev != NULL)
			evconnlistener_free(lev);
		snprintf(err, errlen, "http: cannot listen on %s:%d", conf->http_listen,
		    conf->http_port);
		httpd_free(h);
		return NULL;
	}
	h->lev = lev;
	h->resume = evtimer_new(base, httpd_resume, h);
	httpd_listening = h;
	evconnlistener_set_error_cb(lev, httpd_accept_error);
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
	if (httpd_listening == h)
		httpd_listening = NULL;
	evhttp_free(h->http);
	while ((hc = h->conns) != NULL) {
		h->conns = hc->next;
		httpd_conn_free(hc);
	}
	if (h->sweep != NULL)
		event_free(h->sweep);
	if (h->admit != NULL)
		event_free(h->admit);
	if (h->resume != NULL)
		event_free(h->resume);
	for (i = 0; i < h->nroutes; i++)
		free(h->routes[i].path);
	for (i = 0; i < h->nprefixes; i++)
		free(h->prefixes[i].path);
	free(h);
}
