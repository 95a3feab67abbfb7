/*
 * httpc.c: the HTTP client of httpc.h — libcurl's multi interface driven by
 * libevent, after curl's docs/examples/hiperfifo.c.
 *
 * curl tells us which sockets to watch (httpc_sock_cb) and when to wake it
 * (httpc_timer_cb); both only arm libevent events, because curl forbids
 * calling back into the multi handle from its callbacks. The libevent
 * callbacks call curl_multi_socket_action() and then drain finished
 * transfers (httpc_drain), which is the only place completion callbacks
 * run. A completion callback may start requests, cancel others or free the
 * whole client: freeing is deferred until the drain loop has unwound, and
 * no further callback is made once it was asked for.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include "httpc.h"
#include "log.h"

#define HTTPC_HOST_CONN_DEFAULT 4
#define HTTPC_TIMEOUT_DEFAULT_MS 30000
#define HTTPC_RETRY_AFTER_MAX_S 86400

struct httpc_sock {
	struct httpc *h;
	curl_socket_t fd;
	struct event *ev;
	TAILQ_ENTRY(httpc_sock) entry;
};

struct httpc_req {
	struct httpc *h;
	CURL *easy;
	struct curl_slist *headers;
	httpc_cb cb;
	void *arg;
	char *tag;
	char *method;
	char url_log[256]; /* redacted */
	struct sbuf body;
	size_t body_max;
	bool truncated;
	bool completing; /* its callback is running */
	bool smtp;
	struct curl_slist *rcpt;
	char *upload; /* SMTP: the message, and how much of it is sent */
	size_t upload_len, upload_off;
	int64_t start_us;
	char errbuf[CURL_ERROR_SIZE];
	TAILQ_ENTRY(httpc_req) entry;
};

struct httpc {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	char *user_agent;
	TAILQ_HEAD(, httpc_req) reqs;
	TAILQ_HEAD(, httpc_sock) socks;
	int depth; /* completion callbacks running */
	bool dying; /* httpc_free() called from a callback */
	struct httpc_stats st;
};

static void httpc_destroy(struct httpc *h);

/* --- pure helpers */

enum httpc_class
httpc_classify(const struct httpc_result *res)
{
	if (res->smtp) {
		if (res->code == CURLE_OK)
			return HTTPC_OK;
		if (res->status >= 500 && res->status <= 599)
			return HTTPC_FINAL;
		if (res->code == CURLE_LOGIN_DENIED || res->code == CURLE_UNSUPPORTED_PROTOCOL ||
		    res->code == CURLE_URL_MALFORMAT)
			return HTTPC_FINAL;
		return HTTPC_RETRY;
	}
	if (res->code != CURLE_OK) {
		/* Retrying cannot mend a request we built wrong. */
		switch (res->code) {
		case CURLE_UNSUPPORTED_PROTOCOL:
		case CURLE_URL_MALFORMAT:
		case CURLE_NOT_BUILT_IN:
		case CURLE_BAD_FUNCTION_ARGUMENT:
		case CURLE_UNKNOWN_OPTION:
			return HTTPC_FINAL;
		default:
			return HTTPC_RETRY;
		}
	}
	if (res->status >= 200 && res->status <= 299)
		return HTTPC_OK;
	if (res->status == 429 || (res->status >= 500 && res->status <= 599))
		return HTTPC_RETRY;
	return HTTPC_FINAL;
}

const char *
httpc_class_name(enum httpc_class c)
{
	switch (c) {
	case HTTPC_OK:
		return "ok";
	case HTTPC_RETRY:
		return "retry";
	case HTTPC_FINAL:
		return "final";
	}
	return "?";
}

int
httpc_parse_retry_after(const char *value, time_t now)
{
	const char *p = value, *q;
	long long v = 0;
	time_t t;

	if (value == NULL)
		return -1;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0')
		return -1;
	for (q = p; isdigit((unsigned char)*q); q++) {
		if (v <= HTTPC_RETRY_AFTER_MAX_S)
			v = v * 10 + (*q - '0');
	}
	if (q != p) {
		while (*q == ' ' || *q == '\t')
			q++;
		if (*q != '\0')
			return -1;
		return v > HTTPC_RETRY_AFTER_MAX_S ? HTTPC_RETRY_AFTER_MAX_S : (int)v;
	}
	/* An HTTP-date; curl_getdate() also accepts the obsolete forms. */
	t = curl_getdate(p, NULL);
	if (t == (time_t)-1)
		return -1;
	if (t <= now)
		return 0;
	if (t - now > HTTPC_RETRY_AFTER_MAX_S)
		return HTTPC_RETRY_AFTER_MAX_S;
	return (int)(t - now);
}

void
httpc_redact_url(const char *url, char *out, size_t outlen)
{
	struct sbuf b = {0};
	const char *p, *auth, *end, *at;

	if (outlen == 0)
		return;
	p = strstr(url, "://");
	if (p != NULL) {
		sbuf_add(&b, url, (size_t)(p + 3 - url));
		auth = p + 3;
	} else
		auth = url;
	end = auth + strcspn(auth, "/?#");
	/* Drop user:password@ (the last '@' ends the user info). */
	for (at = end; at > auth && at[-1] != '@'; at--)
		;
	sbuf_add(&b, at, (size_t)(end - at));
	sbuf_add(&b, end, strcspn(end, "?#"));
	snprintf(out, outlen, "%s", b.p != NULL ? b.p : "");
	free(b.p);
}

/* --- curl callbacks: they only arm events, never call the multi handle */

static void httpc_event_cb(evutil_socket_t fd, short what, void *arg);

static int
httpc_sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
	struct httpc *h = userp;
	struct httpc_sock *s = sockp;
	short kind;

	UNUSED(easy);
	if (what == CURL_POLL_REMOVE) {
		if (s != NULL) {
			event_free(s->ev);
			TAILQ_REMOVE(&h->socks, s, entry);
			free(s);
		}
		return 0;
	}
	kind = EV_PERSIST;
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;
	if (s == NULL) {
		s = xcalloc(1, sizeof *s);
		s->h = h;
		s->fd = fd;
		s->ev = event_new(h->base, fd, kind, httpc_event_cb, s);
		if (s->ev == NULL) {
			free(s);
			return -1; /* curl fails the transfer */
		}
		TAILQ_INSERT_TAIL(&h->socks, s, entry);
		curl_multi_assign(h->multi, fd, s);
	} else {
		event_del(s->ev);
		event_assign(s->ev, h->base, fd, kind, httpc_event_cb, s);
	}
	event_add(s->ev, NULL);
	return 0;
}

static int
httpc_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct httpc *h = userp;
	struct timeval tv;

	UNUSED(multi);
	if (timeout_ms < 0) {
		evtimer_del(h->timer);
		return 0;
	}
	/* 0 means "now": let the loop call us, as hiperfifo does. */
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	evtimer_add(h->timer, &tv);
	return 0;
}

static size_t
httpc_write_cb(char *ptr, size_t size, size_t nmemb, void *userp)
{
	struct httpc_req *req = userp;
	size_t n = size * nmemb, room;

	/* Keep reading past the bound, so the connection stays reusable. */
	room = req->body.len < req->body_max ? req->body_max - req->body.len : 0;
	if (n > room)
		req->truncated = true;
	if (room > 0)
		sbuf_add(&req->body, ptr, n < room ? n : room);
	return n;
}

/* --- requests */

/* Forget a request: out of the multi handle, no callback. */
static void
httpc_req_destroy(struct httpc_req *req)
{
	struct httpc *h = req->h;

	TAILQ_REMOVE(&h->reqs, req, entry);
	h->st.in_flight--;
	/* May call httpc_sock_cb(REMOVE): fine, we are not inside curl. */
	curl_multi_remove_handle(h->multi, req->easy);
	curl_easy_cleanup(req->easy);
	curl_slist_free_all(req->headers);
	curl_slist_free_all(req->rcpt);
	free(req->upload);
	free(req->body.p);
	free(req->tag);
	free(req->method);
	free(req);
}

static const char *
httpc_header(CURL *easy, const char *name)
{
	struct curl_header *hdr;

	if (curl_easy_header(easy, name, 0, CURLH_HEADER, -1, &hdr) != CURLHE_OK)
		return NULL;
	return hdr->value;
}

const char *
httpc_result_header(const struct httpc_result *res, const char *name)
{
	if (res->req == NULL || res->req->easy == NULL)
		return NULL;
	return httpc_header(res->req->easy, name);
}

static void
httpc_finish(struct httpc *h, struct httpc_req *req, CURLcode code)
{
	struct httpc_result res;
	const char *v;
	long conns = 0;
	size_t n;

	memset(&res, 0, sizeof res);
	res.code = code;
	res.req = req;
	res.tag = req->tag;
	res.smtp = req->smtp;
	res.retry_after_s = -1;
	if (code != CURLE_OK) {
		n = strlen(req->errbuf);
		while (n > 0 && (req->errbuf[n - 1] == '\n' || req->errbuf[n - 1] == '\r'))
			req->errbuf[--n] = '\0';
		res.error = n > 0 ? req->errbuf : curl_easy_strerror(code);
		h->st.transport_errors++;
	} else
		res.error = "";
	curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &res.status);
	curl_easy_getinfo(req->easy, CURLINFO_NUM_CONNECTS, &conns);
	res.new_connections = conns;
	h->st.connections += (uint64_t)conns;
	if (res.status != 0) {
		if ((v = httpc_header(req->easy, "Retry-After")) != NULL)
			res.retry_after_s = httpc_parse_retry_after(v, time(NULL));
		if ((v = httpc_header(req->easy, "X-Message-Id")) != NULL)
			snprintf(res.message_id, sizeof res.message_id, "%s", v);
	}
	if (req->body.p == NULL)
		sbuf_add(&req->body, "", 0);
	res.body = req->body.p;
	res.body_len = req->body.len;
	res.truncated = req->truncated;
	res.total_us = now_mono_us() - req->start_us;
	h->st.completed++;

	if (code != CURLE_OK)
		log_debug("httpc: %s%s%s %s: %s (%lld ms)", req->tag ? req->tag : "",
		    req->tag ? ": " : "", req->method, req->url_log, res.error,
		    (long long)(res.total_us / 1000));
	else
		log_debug("httpc: %s%s%s %s: %ld, %zu bytes%s, %lld ms%s", req->tag ? req->tag : "",
		    req->tag ? ": " : "", req->method, req->url_log, res.status, res.body_len,
		    res.truncated ? " (truncated)" : "", (long long)(res.total_us / 1000),
		    conns > 0 ? "" : ", reused");

	req->completing = true;
	h->depth++;
	req->cb(req->arg, &res);
	h->depth--;
	/* If the callback freed the client, httpc_destroy() takes req too. */
	if (!h->dying)
		httpc_req_destroy(req);
}

/*
 * Deliver every finished transfer. The only caller of completion callbacks;
 * must not be called from a curl callback. May free h.
 */
static void
httpc_drain(struct httpc *h)
{
	CURLMsg *msg;
	CURL *easy;
	CURLcode code;
	char *priv;
	int left;

	h->depth++;
	while (!h->dying && (msg = curl_multi_info_read(h->multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		/* msg dies with the handle: copy first. */
		easy = msg->easy_handle;
		code = msg->data.result;
		priv = NULL;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
		if (priv != NULL)
			httpc_finish(h, (struct httpc_req *)(void *)priv, code);
	}
	h->depth--;
	if (h->dying && h->depth == 0)
		httpc_destroy(h);
}

static void
httpc_event_cb(evutil_socket_t fd, short what, void *arg)
{
	struct httpc_sock *s = arg;
	struct httpc *h = s->h; /* s may be freed by socket_action */
	int action = 0, running = 0;

	if (what & EV_READ)
		action |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		action |= CURL_CSELECT_OUT;
	curl_multi_socket_action(h->multi, fd, action, &running);
	if (running <= 0)
		evtimer_del(h->timer);
	httpc_drain(h);
}

static void
httpc_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct httpc *h = arg;
	int running = 0;

	UNUSED(fd);
	UNUSED(what);
	curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	httpc_drain(h);
}

/* --- the client */

struct httpc *
httpc_new(struct event_base *base, const struct httpc_config *cfg)
{
	struct httpc *h;

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		log_error("httpc: curl_global_init failed");
		return NULL;
	}
	h = xcalloc(1, sizeof *h);
	h->base = base;
	TAILQ_INIT(&h->reqs);
	TAILQ_INIT(&h->socks);
	h->timer = evtimer_new(base, httpc_timeout_cb, h);
	h->multi = curl_multi_init();
	if (h->timer == NULL || h->multi == NULL) {
		log_error("httpc: cannot create the multi handle");
		if (h->timer != NULL)
			event_free(h->timer);
		if (h->multi != NULL)
			curl_multi_cleanup(h->multi);
		free(h);
		curl_global_cleanup();
		return NULL;
	}
	if (cfg != NULL && cfg->user_agent != NULL)
		h->user_agent = xstrdup(cfg->user_agent);
	else
		h->user_agent = xstrdup("prepaidd/" PACKAGE_VERSION);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, httpc_sock_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, httpc_timer_cb);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	/* One request per connection at a time, so max_host_connections is
	 * the concurrency a gateway sees even over HTTP/2. */
	curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
	httpc_set_limits(h, cfg != NULL ? cfg->max_host_connections : 0,
	    cfg != NULL ? cfg->max_total_connections : 0);
	return h;
}

void
httpc_set_limits(struct httpc *h, int max_host_connections, int max_total_connections)
{
	if (max_host_connections <= 0)
		max_host_connections = HTTPC_HOST_CONN_DEFAULT;
	if (max_total_connections < 0)
		max_total_connections = 0;
	curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)max_host_connections);
	curl_multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)max_total_connections);
}

static void
httpc_destroy(struct httpc *h)
{
	struct httpc_req *req;
	struct httpc_sock *s;

	while ((req = TAILQ_FIRST(&h->reqs)) != NULL)
		httpc_req_destroy(req);
	/* Closes the pooled connections; may call httpc_sock_cb(REMOVE). */
	curl_multi_cleanup(h->multi);
	while ((s = TAILQ_FIRST(&h->socks)) != NULL) {
		TAILQ_REMOVE(&h->socks, s, entry);
		event_free(s->ev);
		free(s);
	}
	event_free(h->timer);
	free(h->user_agent);
	free(h);
	curl_global_cleanup();
}

void
httpc_free(struct httpc *h)
{
	if (h == NULL)
		return;
	if (h->depth > 0) {
		/* Inside a completion callback: httpc_drain() finishes this. */
		h->dying = true;
		return;
	}
	httpc_destroy(h);
}

void
httpc_stats(const struct httpc *h, struct httpc_stats *st)
{
	*st = h->st;
}

/* SMTP: hand curl the message. */
static size_t
httpc_read_cb(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct httpc_req *req = arg;
	size_t n = size * nmemb, left = req->upload_len - req->upload_off;

	if (n > left)
		n = left;
	memcpy(buf, req->upload + req->upload_off, n);
	req->upload_off += n;
	return n;
}

/* Options of one request; returns the first failure, CURLE_OK if none. */
static CURLcode
httpc_setup(struct httpc *h, struct httpc_req *req, const struct httpc_request *r)
{
	CURL *e = req->easy;
	CURLcode rc = CURLE_OK;
	const char *const *hp;
	struct curl_slist *l;
	bool has_expect = false;

#define HTTPC_OPT(opt, val)                                                                        \
	do {                                                                                       \
		if (rc == CURLE_OK)                                                                \
			rc = curl_easy_setopt(e, opt, val);                                        \
	} while (0)

	HTTPC_OPT(CURLOPT_URL, r->url);
	HTTPC_OPT(CURLOPT_PRIVATE, (void *)req);
	HTTPC_OPT(CURLOPT_ERRORBUFFER, req->errbuf);
	HTTPC_OPT(CURLOPT_NOSIGNAL, 1L);
	HTTPC_OPT(CURLOPT_PROTOCOLS_STR, req->smtp ? "smtp,smtps" : "http,https");
	HTTPC_OPT(CURLOPT_FOLLOWLOCATION, 0L);
	HTTPC_OPT(CURLOPT_TCP_KEEPALIVE, 1L);
	HTTPC_OPT(CURLOPT_USERAGENT, h->user_agent);
	HTTPC_OPT(CURLOPT_TIMEOUT_MS,
	    (long)(r->timeout_ms > 0 ? r->timeout_ms : HTTPC_TIMEOUT_DEFAULT_MS));
	HTTPC_OPT(CURLOPT_WRITEFUNCTION, httpc_write_cb);
	HTTPC_OPT(CURLOPT_WRITEDATA, (void *)req);

	if (req->smtp) {
		if ((req->rcpt = curl_slist_append(NULL, r->mail_rcpt)) == NULL)
			return CURLE_OUT_OF_MEMORY;
		req->upload = xmalloc(r->body_len + 1);
		memcpy(req->upload, r->body, r->body_len);
		req->upload_len = r->body_len;
		HTTPC_OPT(CURLOPT_MAIL_FROM, r->mail_from);
		HTTPC_OPT(CURLOPT_MAIL_RCPT, req->rcpt);
		HTTPC_OPT(CURLOPT_UPLOAD, 1L);
		HTTPC_OPT(CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->body_len);
		HTTPC_OPT(CURLOPT_READFUNCTION, httpc_read_cb);
		HTTPC_OPT(CURLOPT_READDATA, (void *)req);
		HTTPC_OPT(CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
		if (r->user != NULL) {
			HTTPC_OPT(CURLOPT_USERNAME, r->user);
			HTTPC_OPT(CURLOPT_PASSWORD, r->password != NULL ? r->password : "");
		}
		return rc;
	}
	if (strcmp(req->method, "GET") == 0 && r->body_len == 0)
		HTTPC_OPT(CURLOPT_HTTPGET, 1L);
	else if (strcmp(req->method, "HEAD") == 0)
		HTTPC_OPT(CURLOPT_NOBODY, 1L);
	else {
		if (strcmp(req->method, "POST") == 0 || r->body_len > 0) {
			/* Size first, so COPYPOSTFIELDS copies exactly the bytes. */
			HTTPC_OPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
			HTTPC_OPT(
			    CURLOPT_COPYPOSTFIELDS, r->body_len > 0 ? (const char *)r->body : "");
		}
		if (strcmp(req->method, "POST") != 0)
			HTTPC_OPT(CURLOPT_CUSTOMREQUEST, req->method);
	}

	for (hp = r->headers; hp != NULL && *hp != NULL; hp++) {
		if (strncasecmp(*hp, "Expect:", 7) == 0)
			has_expect = true;
		if ((l = curl_slist_append(req->headers, *hp)) == NULL)
			return CURLE_OUT_OF_MEMORY;
		req->headers = l;
	}
	/* No "Expect: 100-continue" round trip before a large body. */
	if (!has_expect) {
		if ((l = curl_slist_append(req->headers, "Expect:")) == NULL)
			return CURLE_OUT_OF_MEMORY;
		req->headers = l;
	}
	HTTPC_OPT(CURLOPT_HTTPHEADER, req->headers);

	if (r->bearer != NULL) {
		HTTPC_OPT(CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
		HTTPC_OPT(CURLOPT_XOAUTH2_BEARER, r->bearer);
	} else if (r->user != NULL) {
		HTTPC_OPT(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
		HTTPC_OPT(CURLOPT_USERNAME, r->user);
		HTTPC_OPT(CURLOPT_PASSWORD, r->password != NULL ? r->password : "");
	}
#undef HTTPC_OPT
	return rc;
}

struct httpc_req *
httpc_send(struct httpc *h, const struct httpc_request *r, httpc_cb cb, void *arg, char **cause)
{
	struct httpc_req *req;
	CURLcode rc;
	CURLMcode mc;

	if (h->dying) {
		xasprintf(cause, "HTTP client is shutting down");
		return NULL;
	}
	if (r->url == NULL || cb == NULL) {
		xasprintf(cause, "no URL or no callback");
		return NULL;
	}
	if (r->body == NULL && r->body_len > 0) {
		xasprintf(cause, "body_len without a body");
		return NULL;
	}
	if (r->bearer != NULL && r->user != NULL) {
		xasprintf(cause, "both basic and bearer auth given");
		return NULL;
	}
	req = xcalloc(1, sizeof *req);
	req->h = h;
	req->cb = cb;
	req->arg = arg;
	req->tag = r->tag != NULL ? xstrdup(r->tag) : NULL;
	if (r->method != NULL)
		req->method = xstrdup(r->method);
	else
		req->method = xstrdup(r->body_len > 0 ? "POST" : "GET");
	req->body_max = r->body_max > 0 ? r->body_max : HTTPC_BODY_MAX_DEFAULT;
	req->smtp = strncmp(r->url, "smtp://", 7) == 0 || strncmp(r->url, "smtps://", 8) == 0;
	if (req->smtp && (r->mail_from == NULL || r->mail_rcpt == NULL)) {
		xasprintf(cause, "an SMTP request needs mail_from and mail_rcpt");
		free(req->tag);
		free(req->method);
		free(req);
		return NULL;
	}
	httpc_redact_url(r->url, req->url_log, sizeof req->url_log);
	req->start_us = now_mono_us();
	if ((req->easy = curl_easy_init()) == NULL) {
		xasprintf(cause, "curl_easy_init failed");
		goto fail;
	}
	if ((rc = httpc_setup(h, req, r)) != CURLE_OK) {
		xasprintf(cause, "%s %s: %s", req->method, req->url_log, curl_easy_strerror(rc));
		goto fail;
	}
	TAILQ_INSERT_TAIL(&h->reqs, req, entry);
	h->st.in_flight++;
	/* Arms the timer through httpc_timer_cb; the loop starts the transfer. */
	if ((mc = curl_multi_add_handle(h->multi, req->easy)) != CURLM_OK) {
		xasprintf(cause, "%s %s: %s", req->method, req->url_log, curl_multi_strerror(mc));
		TAILQ_REMOVE(&h->reqs, req, entry);
		h->st.in_flight--;
		goto fail;
	}
	h->st.started++;
	return req;

fail:
	if (req->easy != NULL)
		curl_easy_cleanup(req->easy);
	curl_slist_free_all(req->headers);
	curl_slist_free_all(req->rcpt);
	free(req->upload);
	free(req->tag);
	free(req->method);
	free(req);
	return NULL;
}

void
httpc_cancel(struct httpc_req *req)
{
	/* A request whose callback runs is freed when the callback returns. */
	if (req == NULL || req->completing || req->h->dying)
		return;
	httpc_req_destroy(req);
}
