/*
 * fakegw.c: a fake SMS / e-mail gateway for the tests — a real HTTP server
 * on loopback that records every request and answers by path, so that
 * tests can drive the client's retry classes and check what a gateway
 * would have received.
 *
 * Usage: fakegw PORT LOGFILE. Listens on 127.0.0.1:PORT, prints
 * "fakegw: listening on PORT" when ready, stops on SIGTERM or SIGINT.
 * Each request is appended to LOGFILE as one JSON line:
 * {"n":N,"peer":"127.0.0.1:PORT","method":..,"path":..,"query":..,
 *  "headers":{name:value,...},"body":..} — "peer" tells connections apart.
 *
 * Answers by path:
 *   /ok         200 {"Code":"OK","BizId":"fake-N"} and X-Message-Id: fake-N
 *   /created    201 {"id":"fake-N"}
 *   /success    200 "success" (what a payment provider wants to hear: the
 *               baseline of tests/bench/pay-bench.sh)
 *   /fail       200 {"Code":"isv.MOBILE_NUMBER_ILLEGAL"}
 *   /429        429 with Retry-After: 1 for the first request of each
 *               distinct body, then 200 as /ok
 *   /500        500 twice per distinct body, then 200 as /ok
 *   /400        400 always
 *   /slow?ms=N  200 as /ok after N ms (a timer: the server keeps serving)
 *   /hang       never answers (keeps the connection)
 *   /big?bytes=N 200 with N bytes of 'x'
 *   otherwise   404
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "common.h"

/* A request we answer later (/slow) or never (/hang). */
struct fakegw_held {
	struct evhttp_request *req;
	struct event *timer; /* NULL for /hang */
	unsigned long n;
	TAILQ_ENTRY(fakegw_held) entry;
};

/* How often a (path, body) was seen, for /429 and /500. */
struct fakegw_seen {
	uint64_t hash;
	unsigned count;
};

static struct event_base *fakegw_base;
static int fakegw_log_fd = -1;
static unsigned long fakegw_n;
static TAILQ_HEAD(, fakegw_held) fakegw_held = TAILQ_HEAD_INITIALIZER(fakegw_held);
static struct fakegw_seen *fakegw_seen;
static size_t fakegw_nseen;

static uint64_t
fakegw_hash(const char *path, const unsigned char *p, size_t len)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	size_t i;

	for (; *path != '\0'; path++)
		h = (h ^ (unsigned char)*path) * 1099511628211ULL;
	h = (h ^ 0xff) * 1099511628211ULL;
	for (i = 0; i < len; i++)
		h = (h ^ p[i]) * 1099511628211ULL;
	return h;
}

/* Times this (path, body) was seen before this request. */
static unsigned
fakegw_seen_before(const char *path, const unsigned char *body, size_t len)
{
	uint64_t h = fakegw_hash(path, body, len);
	size_t i;

	for (i = 0; i < fakegw_nseen; i++) {
		if (fakegw_seen[i].hash == h)
			return fakegw_seen[i].count++;
	}
	fakegw_seen = xreallocarray(fakegw_seen, fakegw_nseen + 1, sizeof *fakegw_seen);
	fakegw_seen[fakegw_nseen].hash = h;
	fakegw_seen[fakegw_nseen].count = 1;
	fakegw_nseen++;
	return 0;
}

/* Append one JSON line; one write() so that lines never interleave. */
static void
fakegw_log(struct evhttp_request *req, unsigned long n, const char *path, const char *query,
    const unsigned char *body, size_t len)
{
	struct evkeyvalq *hdrs = evhttp_request_get_input_headers(req);
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	struct evkeyval *kv;
	json_t *o, *h, *old;
	char *line, peer[80] = "";
	const char *method;
	char *addr = NULL;
	ev_uint16_t port = 0;
	size_t linelen;

	switch (evhttp_request_get_command(req)) {
	case EVHTTP_REQ_GET:
		method = "GET";
		break;
	case EVHTTP_REQ_POST:
		method = "POST";
		break;
	case EVHTTP_REQ_PUT:
		method = "PUT";
		break;
	case EVHTTP_REQ_DELETE:
		method = "DELETE";
		break;
	case EVHTTP_REQ_PATCH:
		method = "PATCH";
		break;
	case EVHTTP_REQ_HEAD:
		method = "HEAD";
		break;
	default:
		method = "OTHER";
		break;
	}
	if (evcon != NULL) {
		evhttp_connection_get_peer(evcon, &addr, &port);
		snprintf(peer, sizeof peer, "%s:%u", addr != NULL ? addr : "?", port);
	}
	h = json_object();
	TAILQ_FOREACH(kv, hdrs, next)
	{
		/* Repeated headers are joined as HTTP allows. */
		if ((old = json_object_get(h, kv->key)) != NULL) {
			char *joined;

			xasprintf(&joined, "%s, %s", json_string_value(old), kv->value);
			json_object_set_new(h, kv->key, json_string(joined));
			free(joined);
		} else
			json_object_set_new(h, kv->key, json_string(kv->value));
	}
	o = json_pack("{s:I, s:s, s:s, s:s, s:s?, s:o}", "n", (json_int_t)n, "peer", peer, "method",
	    method, "path", path, "query", query, "headers", h);
	/* Bodies that are not UTF-8 cannot be a JSON string: log them as hex. */
	if (json_object_set_new(o, "body", json_stringn((const char *)body, len)) != 0) {
		struct sbuf b = {0};

		sbuf_hex(&b, body, len, len);
		json_object_set_new(o, "body_hex", json_string(b.p != NULL ? b.p : ""));
		free(b.p);
	}
	line = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
	json_decref(o);
	if (line == NULL)
		return;
	linelen = strlen(line);
	line = xrealloc(line, linelen + 2);
	line[linelen++] = '\n';
	if (write(fakegw_log_fd, line, linelen) != (ssize_t)linelen)
		fprintf(stderr, "fakegw: log write: %s\n", strerror(errno));
	free(line);
}

static void
fakegw_reply(struct evhttp_request *req, int code, const char *reason, const char *body)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct evbuffer *buf = evbuffer_new();

	evhttp_add_header(out, "Content-Type", "application/json");
	if (body != NULL)
		evbuffer_add(buf, body, strlen(body));
	evhttp_send_reply(req, code, reason, buf);
	evbuffer_free(buf);
}

static void
fakegw_reply_ok(struct evhttp_request *req, unsigned long n)
{
	char body[128], id[32];

	snprintf(id, sizeof id, "fake-%lu", n);
	snprintf(body, sizeof body, "{\"Code\":\"OK\",\"BizId\":\"%s\"}", id);
	evhttp_add_header(evhttp_request_get_output_headers(req), "X-Message-Id", id);
	fakegw_reply(req, 200, "OK", body);
}

static void
fakegw_held_free(struct fakegw_held *hd)
{
	TAILQ_REMOVE(&fakegw_held, hd, entry);
	if (hd->timer != NULL)
		event_free(hd->timer);
	free(hd);
}

static void
fakegw_slow_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fakegw_held *hd = arg;

	UNUSED(fd);
	UNUSED(what);
	/* A request whose client went away is freed by evhttp_send_reply. */
	fakegw_reply_ok(hd->req, hd->n);
	fakegw_held_free(hd);
}

static long
fakegw_query_long(const char *query, const char *key, long def)
{
	struct evkeyvalq q;
	const char *v;
	long r = def;

	if (query == NULL)
		return def;
	TAILQ_INIT(&q);
	if (evhttp_parse_query_str(query, &q) == 0 && (v = evhttp_find_header(&q, key)) != NULL)
		r = strtol(v, NULL, 10);
	evhttp_clear_headers(&q);
	return r;
}

static void
fakegw_request_cb(struct evhttp_request *req, void *arg)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	const char *path = evhttp_uri_get_path(uri);
	const char *query = evhttp_uri_get_query(uri);
	size_t len = evbuffer_get_length(in);
	unsigned char *body;
	unsigned long n = ++fakegw_n;
	struct fakegw_held *hd;

	UNUSED(arg);
	if (path == NULL || *path == '\0')
		path = "/";
	body = xmalloc(len + 1);
	evbuffer_copyout(in, body, len);
	body[len] = '\0';
	fakegw_log(req, n, path, query, body, len);

	if (strcmp(path, "/ok") == 0) {
		fakegw_reply_ok(req, n);
	} else if (strcmp(path, "/success") == 0) {
		fakegw_reply(req, 200, "OK", "success");
	} else if (strcmp(path, "/created") == 0) {
		char b[64];

		snprintf(b, sizeof b, "{\"id\":\"fake-%lu\"}", n);
		fakegw_reply(req, 201, "Created", b);
	} else if (strcmp(path, "/fail") == 0) {
		fakegw_reply(req, 200, "OK", "{\"Code\":\"isv.MOBILE_NUMBER_ILLEGAL\"}");
	} else if (strcmp(path, "/429") == 0) {
		if (fakegw_seen_before(path, body, len) == 0) {
			evhttp_add_header(
			    evhttp_request_get_output_headers(req), "Retry-After", "1");
			fakegw_reply(req, 429, "Too Many Requests", "{\"Code\":\"Throttling\"}");
		} else
			fakegw_reply_ok(req, n);
	} else if (strcmp(path, "/500") == 0) {
		if (fakegw_seen_before(path, body, len) < 2)
			fakegw_reply(
			    req, 500, "Internal Server Error", "{\"Code\":\"ServiceUnavailable\"}");
		else
			fakegw_reply_ok(req, n);
	} else if (strcmp(path, "/400") == 0) {
		fakegw_reply(req, 400, "Bad Request", "{\"Code\":\"InvalidParameter\"}");
	} else if (strcmp(path, "/slow") == 0 || strcmp(path, "/hang") == 0) {
		hd = xcalloc(1, sizeof *hd);
		hd->req = req;
		hd->n = n;
		TAILQ_INSERT_TAIL(&fakegw_held, hd, entry);
		if (strcmp(path, "/slow") == 0) {
			long ms = fakegw_query_long(query, "ms", 100);
			struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

			hd->timer = evtimer_new(fakegw_base, fakegw_slow_cb, hd);
			evtimer_add(hd->timer, &tv);
		}
	} else if (strcmp(path, "/big") == 0) {
		long bytes = fakegw_query_long(query, "bytes", 100000);
		struct evbuffer *buf = evbuffer_new();
		char chunk[1024];

		memset(chunk, 'x', sizeof chunk);
		while (bytes > 0) {
			size_t k = bytes > (long)sizeof chunk ? sizeof chunk : (size_t)bytes;

			evbuffer_add(buf, chunk, k);
			bytes -= (long)k;
		}
		evhttp_send_reply(req, 200, "OK", buf);
		evbuffer_free(buf);
	} else {
		fakegw_reply(req, 404, "Not Found", "{\"Code\":\"NotFound\"}");
	}
	free(body);
}

static void
fakegw_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	UNUSED(sig);
	UNUSED(what);
	UNUSED(arg);
	event_base_loopbreak(fakegw_base);
}

/* ---------------------------------------------------------------- SMTP */

/*
 * With -s, an SMTP server instead: it accepts every message and logs it as
 * a JSON line {"smtp":n,"from":...,"rcpt":[...],"data":...}, except that a
 * recipient starting "refuse" gets 550 (final) and one starting "later" gets
 * 451 (try again) the first time its message comes. No TLS, no AUTH.
 */
struct fakegw_smtp {
	struct fakegw_smtp *next, *prev; /* open connections, freed at exit */
	struct bufferevent *bev;
	bool in_data;
	json_t *rcpt;
	char *from;
	struct sbuf data;
};

static struct fakegw_smtp *fakegw_smtp_conns;

static void
fakegw_smtp_free(struct fakegw_smtp *c)
{
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		fakegw_smtp_conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	bufferevent_free(c->bev);
	json_decref(c->rcpt);
	free(c->from);
	free(c->data.p);
	free(c);
}

static void
fakegw_smtp_reply(struct fakegw_smtp *c, const char *line)
{
	bufferevent_write(c->bev, line, strlen(line));
	bufferevent_write(c->bev, "\r\n", 2);
}

static void
fakegw_smtp_read_cb(struct bufferevent *bev, void *arg)
{
	struct fakegw_smtp *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	static unsigned long later_seen;
	char *line;
	size_t len;

	while ((line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF)) != NULL) {
		if (c->in_data) {
			if (strcmp(line, ".") == 0) {
				json_t *o = json_pack("{s:I, s:s, s:O, s:s}", "smtp",
				    (json_int_t)++fakegw_n, "from", c->from ? c->from : "", "rcpt",
				    c->rcpt, "data", c->data.p ? c->data.p : "");
				char *js = json_dumps(o, JSON_COMPACT);

				if (js != NULL) {
					size_t l = strlen(js);

					if (write(fakegw_log_fd, js, l) != (ssize_t)l ||
					    write(fakegw_log_fd, "\n", 1) != 1)
						fprintf(stderr, "fakegw: log write failed\n");
				}
				free(js);
				json_decref(o);
				c->in_data = false;
				sbuf_reset(&c->data);
				json_array_clear(c->rcpt);
				fakegw_smtp_reply(c, "250 2.0.0 queued as fake");
			} else {
				/* dot-stuffing undone */
				sbuf_adds(&c->data, line[0] == '.' ? line + 1 : line);
				sbuf_adds(&c->data, "\r\n");
			}
		} else if (strncasecmp(line, "EHLO", 4) == 0 || strncasecmp(line, "HELO", 4) == 0) {
			fakegw_smtp_reply(c, "250 fakegw");
		} else if (strncasecmp(line, "MAIL FROM:", 10) == 0) {
			free(c->from);
			c->from = xstrdup(line + 10);
			fakegw_smtp_reply(c, "250 2.1.0 ok");
		} else if (strncasecmp(line, "RCPT TO:", 8) == 0) {
			const char *a = line + 8 + (line[8] == '<');

			if (strncmp(a, "refuse", 6) == 0)
				fakegw_smtp_reply(c, "550 5.1.1 no such user");
			else if (strncmp(a, "later", 5) == 0 && later_seen++ % 2 == 0)
				fakegw_smtp_reply(c, "451 4.3.0 try again later");
			else {
				json_array_append_new(c->rcpt, json_string(line + 8));
				fakegw_smtp_reply(c, "250 2.1.5 ok");
			}
		} else if (strncasecmp(line, "DATA", 4) == 0) {
			c->in_data = true;
			fakegw_smtp_reply(c, "354 go ahead");
		} else if (strncasecmp(line, "RSET", 4) == 0) {
			json_array_clear(c->rcpt);
			fakegw_smtp_reply(c, "250 ok");
		} else if (strncasecmp(line, "QUIT", 4) == 0) {
			fakegw_smtp_reply(c, "221 bye");
		} else if (strncasecmp(line, "NOOP", 4) == 0) {
			fakegw_smtp_reply(c, "250 ok");
		} else
			fakegw_smtp_reply(c, "502 5.5.2 not implemented");
		free(line);
	}
}

static void
fakegw_smtp_event_cb(struct bufferevent *bev, short what, void *arg)
{
	UNUSED(bev);
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		fakegw_smtp_free(arg);
}

static void
fakegw_smtp_accept_cb(
    struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int socklen, void *arg)
{
	struct fakegw_smtp *c = xcalloc(1, sizeof *c);

	UNUSED(l);
	UNUSED(sa);
	UNUSED(socklen);
	UNUSED(arg);
	c->rcpt = json_array();
	c->next = fakegw_smtp_conns;
	if (c->next != NULL)
		c->next->prev = c;
	fakegw_smtp_conns = c;
	c->bev = bufferevent_socket_new(fakegw_base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(c->bev, fakegw_smtp_read_cb, NULL, fakegw_smtp_event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	fakegw_smtp_reply(c, "220 fakegw ESMTP");
}

static struct evconnlistener *
fakegw_smtp_listen(long port)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(0x7f000001);
	sin.sin_port = htons((uint16_t)port);
	return evconnlistener_new_bind(fakegw_base, fakegw_smtp_accept_cb, NULL,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1, (struct sockaddr *)&sin, sizeof sin);
}

int
main(int argc, char **argv)
{
	struct evhttp *http;
	struct event *sigterm, *sigint;
	struct fakegw_held *hd;
	char *end;
	long port;

	bool smtp = argc == 4 && strcmp(argv[1], "-s") == 0;

	if (smtp) {
		argc--;
		argv++;
	}
	if (argc != 3) {
		fprintf(stderr, "usage: fakegw [-s] PORT LOGFILE\n");
		return 2;
	}
	port = strtol(argv[1], &end, 10);
	if (*end != '\0' || port <= 0 || port > 65535) {
		fprintf(stderr, "fakegw: bad port %s\n", argv[1]);
		return 2;
	}
	fakegw_log_fd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fakegw_log_fd < 0) {
		fprintf(stderr, "fakegw: %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	fakegw_base = event_base_new();
	if (smtp) {
		struct evconnlistener *lst = fakegw_smtp_listen(port);

		if (lst == NULL) {
			fprintf(stderr, "fakegw: cannot listen on 127.0.0.1:%ld\n", port);
			return 1;
		}
		sigterm = evsignal_new(fakegw_base, SIGTERM, fakegw_signal_cb, NULL);
		evsignal_add(sigterm, NULL);
		printf("fakegw: smtp listening on %ld\n", port);
		fflush(stdout);
		event_base_dispatch(fakegw_base);
		while (fakegw_smtp_conns != NULL)
			fakegw_smtp_free(fakegw_smtp_conns);
		evconnlistener_free(lst);
		event_free(sigterm);
		event_base_free(fakegw_base);
		close(fakegw_log_fd);
		return 0;
	}
	http = evhttp_new(fakegw_base);
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
	                                     EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
	                                     EVHTTP_REQ_HEAD);
	evhttp_set_gencb(http, fakegw_request_cb, NULL);
	if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)port) != 0) {
		fprintf(stderr, "fakegw: cannot listen on 127.0.0.1:%ld\n", port);
		return 1;
	}
	sigterm = evsignal_new(fakegw_base, SIGTERM, fakegw_signal_cb, NULL);
	sigint = evsignal_new(fakegw_base, SIGINT, fakegw_signal_cb, NULL);
	evsignal_add(sigterm, NULL);
	evsignal_add(sigint, NULL);
	printf("fakegw: listening on %ld\n", port);
	fflush(stdout);

	event_base_dispatch(fakegw_base);

	/* Held requests still on a connection die with it in evhttp_free();
	 * those whose client left are ours to free. */
	while ((hd = TAILQ_FIRST(&fakegw_held)) != NULL) {
		if (evhttp_request_get_connection(hd->req) == NULL)
			evhttp_request_free(hd->req);
		fakegw_held_free(hd);
	}
	evhttp_free(http);
	event_free(sigterm);
	event_free(sigint);
	event_base_free(fakegw_base);
	free(fakegw_seen);
	close(fakegw_log_fd);
	printf("fakegw: %lu requests\n", fakegw_n);
	return 0;
}
