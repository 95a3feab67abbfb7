/*
 * paysite.c: the pay page of paysite.h on the event loop.
 *
 * A request is checked (rate, route, token shape) before anything is
 * asked of PostgreSQL; then one query on one of the page's connections
 * (the token's SHA-256 is matched in SQL, through a unique index); then
 * the answer is rendered by paypage.c. Nothing here blocks. A request whose
 * query has not answered within [paypage] answer_within_ms gets the busy
 * page (503); the late result is dropped.
 *
 * The answers carry a Content-Security-Policy that allows no script, no
 * external asset and no framing, no-referrer (the token is in the URL) and
 * no-store (a balance must not be cached by a shared phone's browser or a
 * proxy).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/rand.h>

#include "log.h"
#include "paysite.h"
#include "pgconn.h"

#define PS_AMOUNTS_MAX 16
#define PS_ALNUM "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

enum ps_kind { PS_VIEW, PS_PAY, PS_RESULT, PS_OAUTH };

struct ps_req;

struct paysite {
	struct event_base *base;
	const struct conf *conf;
	struct pgconn **pg;
	int npg;
	int next;
	struct paypage_limiter *lim;
	int64_t amounts[PS_AMOUNTS_MAX];
	int namounts;
	struct paypage_provider provider;
	bool has_provider;
	struct ps_req *pending;
	bool stopping;
	char *base_url; /* public_url + path */
};

struct ps_req {
	struct paysite *s;
	struct evhttp_request *req; /* NULL once answered */
	struct event *timer;
	enum ps_kind kind;
	enum paypage_lang lang;
	enum paypage_client client;
	enum paypage_channel channel;
	bool busy; /* a query or a provider call is out */
	int64_t fen; /* the amount chosen (pay) */
	char token[PAYPAGE_TOKEN_LEN + 1];
	char otn[40];
	char ip[48];
	char code[129]; /* WeChat's OAuth code (PS_OAUTH) */
	struct ps_req *prev, *next;
};

static const char ps_csp[] = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                             "base-uri 'none'; frame-ancestors 'none'";

/* ------------------------------------------------------------ answers */

static void
ps_send_csp(struct evhttp_request *req, enum paypage_lang lang, int code, const char *reason,
    const struct sbuf *body, const char *csp)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *buf = evbuffer_new();

	evhttp_add_header(h, "Content-Type", "text/html; charset=utf-8");
	evhttp_add_header(h, "Content-Language", lang == PAYPAGE_ZH ? "zh-CN" : "en");
	evhttp_add_header(h, "Content-Security-Policy", csp);
	evhttp_add_header(h, "Referrer-Policy", "no-referrer");
	evhttp_add_header(h, "Cache-Control", "no-store");
	evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(h, "X-Frame-Options", "DENY");
	evhttp_add_header(h, "Vary", "Accept-Language, User-Agent");
	if (body != NULL && body->len > 0)
		evbuffer_add(buf, body->p, body->len);
	evhttp_send_reply(req, code, reason, buf);
	evbuffer_free(buf);
}

static void
ps_send(struct evhttp_request *req, enum paypage_lang lang, int code, const char *reason,
    const struct sbuf *body)
{
	ps_send_csp(req, lang, code, reason, body, ps_csp);
}

static void
ps_nothing(struct evhttp_request *req, enum paypage_lang lang)
{
	struct sbuf b = {0};

	paypage_render_nothing(lang, &b);
	ps_send(req, lang, 404, "Not Found", &b);
	free(b.p);
}

static void
ps_message(struct evhttp_request *req, enum paypage_lang lang, int code, const char *reason,
    enum paypage_msg msg, const char *back)
{
	struct sbuf b = {0};

	paypage_render_message(lang, msg, back, &b);
	ps_send(req, lang, code, reason, &b);
	free(b.p);
}

/* The meter page's path (relative to the host): for links and forms. */
static void
ps_page_path(const struct paysite *s, const char *token, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", s->conf->paypage_path, token);
}

/* ----------------------------------------------------------- requests */

static void
ps_req_free(struct ps_req *r)
{
	struct paysite *s = r->s;

	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		s->pending = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	if (r->timer != NULL)
		event_free(r->timer);
	free(r);
}

/* The request is answered (or given up): forget the evhttp request. */
static struct evhttp_request *
ps_take(struct ps_req *r)
{
	struct evhttp_request *req = r->req;

	r->req = NULL;
	if (r->timer != NULL)
		event_del(r->timer);
	return req;
}

static void
ps_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct ps_req *r = arg;
	struct evhttp_request *req = ps_take(r);

	UNUSED(fd);
	UNUSED(what);
	log_ratelimited(LOG_LVL_WARN, "paypage-slow", 10,
	    "paypage: no answer from PostgreSQL within %d ms: busy page",
	    r->s->conf->paypage_answer_within_ms);
	if (req != NULL)
		ps_message(req, r->lang, 503, "Service Unavailable", PAYPAGE_MSG_BUSY, NULL);
}

static struct pgconn *
ps_pick(struct paysite *s)
{
	int i;

	for (i = 0; i < s->npg; i++) {
		struct pgconn *pc = s->pg[(s->next + i) % s->npg];

		if (pgconn_ready(pc) && pgconn_pending(pc) < 1000) {
			s->next = (s->next + i + 1) % s->npg;
			return pc;
		}
	}
	return NULL;
}

/* Send a query for r; false (and the busy page) if no connection. */
static bool
ps_query(struct ps_req *r, const char *sql, int n, const char *const *params, pgconn_cb cb)
{
	struct pgconn *pc = ps_pick(r->s);
	int ms = r->s->conf->paypage_answer_within_ms;
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	if (pc == NULL) {
		log_ratelimited(LOG_LVL_WARN, "paypage-down", 10,
		    "paypage: PostgreSQL is not connected: busy page");
		ps_message(ps_take(r), r->lang, 503, "Service Unavailable", PAYPAGE_MSG_BUSY, NULL);
		return false;
	}
	if (r->timer == NULL)
		r->timer = evtimer_new(r->s->base, ps_timeout, r);
	evtimer_add(r->timer, &tv);
	r->busy = true;
	pgconn_query(pc, sql, n, params, cb, r);
	return true;
}

/* "12.34" or "-0.50" (numeric rounded to 2 places) to fen. */
static int64_t
ps_fen(const char *s)
{
	bool neg = *s == '-';
	int64_t v;

	v = paypage_yuan_parse(neg ? s + 1 : s);
	if (v < 0) {
		/* zero, which paypage_yuan_parse refuses */
		v = 0;
	}
	return neg ? -v : v;
}

/* A failed query: the busy page, unless it is one the page expects. */
static bool
ps_failed(PGresult *res, const char *err, const char **sqlstate)
{
	*sqlstate = NULL;
	if (res != NULL && err == NULL)
		return false;
	if (res != NULL)
		*sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	if (*sqlstate == NULL ||
	    (strcmp(*sqlstate, "P0002") != 0 && strcmp(*sqlstate, "54000") != 0))
		log_ratelimited(LOG_LVL_WARN, "paypage-db", 10, "paypage: %s: %s",
		    res == NULL ? "connection lost" : "SQL error", err != NULL ? err : "?");
	return true;
}

/* ------------------------------------------------------------- views */

static const char ps_view_sql[] = "SELECT meter_id, balance, relay, restoring, use_wh FROM "
                                  "prepaid_internal.pay_page($1, $2::int)";

static void
ps_viewed(void *arg, PGresult *res, const char *err)
{
	struct ps_req *r = arg;
	struct paysite *s = r->s;
	struct evhttp_request *req = ps_take(r);
	struct paypage_view v;
	struct sbuf b = {0};
	char action[160];
	const char *state, *p;
	char *end;

	r->busy = false;
	if (req == NULL)
		goto out;
	if (ps_failed(res, err, &state)) {
		ps_message(req, r->lang, 503, "Service Unavailable", PAYPAGE_MSG_BUSY, NULL);
		goto out;
	}
	if (PQntuples(res) != 1) {
		ps_nothing(req, r->lang);
		goto out;
	}
	memset(&v, 0, sizeof v);
	v.lang = r->lang;
	v.client = r->client;
	v.meter_id = PQgetvalue(res, 0, 0);
	v.balance_fen = ps_fen(PQgetvalue(res, 0, 1));
	v.relay = PQgetisnull(res, 0, 2) ? NULL : PQgetvalue(res, 0, 2);
	v.restoring = PQgetvalue(res, 0, 3)[0] == 't';
	for (p = PQgetvalue(res, 0, 4); *p != '\0' && v.ndays < PAYPAGE_DAYS_MAX;) {
		if (*p == '{' || *p == ',' || *p == '}') {
			p++;
			continue;
		}
		v.use_wh[v.ndays++] = strtoll(p, &end, 10);
		if (end == p)
			break;
		p = end;
	}
	v.amounts_fen = s->amounts;
	v.namounts = s->namounts;
	ps_page_path(s, r->token, action, sizeof action);
	strncat(action, "/pay", sizeof action - strlen(action) - 1);
	v.pay_action = action;
	v.alipay = s->conf->payments_alipay_path != NULL;
	v.wechat = s->conf->payments_wechat_path != NULL;
	paypage_render_meter(&v, &b);
	ps_send(req, r->lang, 200, "OK", &b);
	free(b.p);
out:
	ps_req_free(r);
}

/* ------------------------------------------------------------ results */

static const char ps_result_sql[] = "SELECT meter_id, amount, state, balance, relay, restoring "
                                    "FROM prepaid_internal.pay_page_result($1, $2)";

static void
ps_resulted(void *arg, PGresult *res, const char *err)
{
	struct ps_req *r = arg;
	struct evhttp_request *req = ps_take(r);
	struct paypage_result pr;
	struct sbuf b = {0};
	char back[160];
	const char *state;

	r->busy = false;
	if (req == NULL)
		goto out;
	if (ps_failed(res, err, &state)) {
		ps_message(req, r->lang, 503, "Service Unavailable", PAYPAGE_MSG_BUSY, NULL);
		goto out;
	}
	if (PQntuples(res) != 1) {
		ps_nothing(req, r->lang);
		goto out;
	}
	memset(&pr, 0, sizeof pr);
	pr.lang = r->lang;
	pr.meter_id = PQgetvalue(res, 0, 0);
	pr.out_trade_no = r->otn;
	pr.amount_fen = ps_fen(PQgetvalue(res, 0, 1));
	pr.state = PQgetvalue(res, 0, 2);
	pr.balance_fen = ps_fen(PQgetvalue(res, 0, 3));
	pr.relay = PQgetisnull(res, 0, 4) ? NULL : PQgetvalue(res, 0, 4);
	pr.restoring = PQgetvalue(res, 0, 5)[0] == 't';
	ps_page_path(r->s, r->token, back, sizeof back);
	pr.back = back;
	paypage_render_result(&pr, &b);
	ps_send(req, r->lang, 200, "OK", &b);
	free(b.p);
out:
	ps_req_free(r);
}

/* -------------------------------------------------------------- pay */

static const char ps_order_sql[] =
    "SELECT out_trade_no, meter_id FROM prepaid_internal.pay_page_order($1, $2::numeric, $3, "
    "make_interval(mins => $4::int))";

static void
ps_handed(void *ctx, const struct paypage_handoff *h)
{
	struct ps_req *r = ctx;
	struct evhttp_request *req = ps_take(r);
	struct sbuf b = {0};
	char back[160], result[256];

	r->busy = false;
	if (req == NULL)
		goto out;
	ps_page_path(r->s, r->token, back, sizeof back);
	switch (h->kind) {
	case PAYPAGE_REDIRECT:
		evhttp_add_header(evhttp_request_get_output_headers(req), "Location", h->url);
		ps_send(req, r->lang, 303, "See Other", NULL);
		break;
	case PAYPAGE_CODE_URL:
		snprintf(result, sizeof result, "%s/result/%s", back, r->otn);
		paypage_render_code(r->lang, h->url, result, &b);
		ps_send(req, r->lang, 200, "OK", &b);
		break;
	case PAYPAGE_JSAPI: {
		unsigned char raw[16];
		char nonce[40], csp[sizeof ps_csp + 80];
		struct sbuf n = {0};

		/* The one script of the page, allowed by a nonce of this answer. */
		if (RAND_bytes(raw, sizeof raw) != 1) {
			ps_message(
			    req, r->lang, 503, "Service Unavailable", PAYPAGE_MSG_BUSY, back);
			break;
		}
		sbuf_hex(&n, raw, sizeof raw, sizeof raw);
		snprintf(nonce, sizeof nonce, "%s", n.p);
		free(n.p);
		snprintf(csp, sizeof csp, "%s; script-src 'nonce-%s'", ps_csp, nonce);
		snprintf(result, sizeof result, "%s/result/%s", back, r->otn);
		paypage_render_jsapi(r->lang, h->url, result, nonce, &b);
		ps_send_csp(req, r->lang, 200, "OK", &b, csp);
		break;
	}
	case PAYPAGE_UNAVAILABLE:
		ps_message(req, r->lang, 501, "Not Implemented", PAYPAGE_MSG_UNAVAILABLE, back);
		break;
	case PAYPAGE_FAILED:
	default:
		ps_message(req, r->lang, 502, "Bad Gateway", PAYPAGE_MSG_BUSY, back);
		break;
	}
	free(b.p);
out:
	ps_req_free(r);
}

static void ps_stub_create(
    void *arg, const struct paypage_order *o, paypage_handoff_cb done, void *ctx);

/* Hand the order to the provider module (or the stand-in). */
static void
ps_create(struct ps_req *r, const struct paypage_order *o)
{
	struct paysite *s = r->s;

	r->busy = true;
	if (s->has_provider)
		s->provider.create(s->provider.arg, o, ps_handed, r);
	else
		ps_stub_create(s, o, ps_handed, r);
}

/* The stand-in provider: a redirect to [paypage] stub_handoff_url. */
static void
ps_stub_create(void *arg, const struct paypage_order *o, paypage_handoff_cb done, void *ctx)
{
	struct paysite *s = arg;
	struct sbuf b = {0};
	struct paypage_handoff h;

	h.kind = paypage_stub_handoff(s->conf->paypage_stub_handoff_url, o, &b);
	h.url = b.p;
	done(ctx, &h);
	free(b.p);
}

static void
ps_ordered(void *arg, PGresult *res, const char *err)
{
	struct ps_req *r = arg;
	struct paysite *s = r->s;
	struct paypage_order o;
	const char *state;
	char back[160], ret[512], oauth[512];

	r->busy = false;
	if (r->req == NULL) {
		ps_req_free(r);
		return;
	}
	ps_page_path(s, r->token, back, sizeof back);
	if (ps_failed(res, err, &state)) {
		struct evhttp_request *req = ps_take(r);

		if (state != NULL && strcmp(state, "P0002") == 0)
			ps_nothing(req, r->lang);
		else if (state != NULL && strcmp(state, "54000") == 0)
			ps_message(req, r->lang, 429, "Too Many Requests",
			    PAYPAGE_MSG_TOO_MANY_ORDERS, back);
		else
			ps_message(
			    req, r->lang, 503, "Service Unavailable", PAYPAGE_MSG_BUSY, NULL);
		ps_req_free(r);
		return;
	}
	if (PQntuples(res) != 1) {
		ps_nothing(ps_take(r), r->lang);
		ps_req_free(r);
		return;
	}
	snprintf(r->otn, sizeof r->otn, "%s", PQgetvalue(res, 0, 0));
	snprintf(ret, sizeof ret, "%s%s/result/%s", s->conf->paypage_public_url, back, r->otn);
	memset(&o, 0, sizeof o);
	o.out_trade_no = r->otn;
	o.meter_id = PQgetvalue(res, 0, 1);
	o.amount_fen = r->fen;
	o.channel = r->channel;
	o.client_ip = r->ip;
	o.return_url = ret;
	snprintf(oauth, sizeof oauth, "%s%s/wechat", s->conf->paypage_public_url, back);
	o.oauth_return = oauth;
	log_info("paypage: order %s for meter %s created (%s, from %s)", r->otn, o.meter_id,
	    paypage_channel_name(r->channel), r->ip);
	ps_create(r, &o);
}

/* Back from WeChat's openid step: the order must be this token's and
 * still pending; then the provider gets the code. */
static void
ps_oauth_back(void *arg, PGresult *res, const char *err)
{
	struct ps_req *r = arg;
	struct paysite *s = r->s;
	struct paypage_order o;
	const char *state;
	char back[160], ret[512];

	r->busy = false;
	if (r->req == NULL) {
		ps_req_free(r);
		return;
	}
	if (ps_failed(res, err, &state)) {
		ps_message(ps_take(r), r->lang, 503, "Service Unavailable", PAYPAGE_MSG_BUSY, NULL);
		ps_req_free(r);
		return;
	}
	if (PQntuples(res) != 1) {
		ps_nothing(ps_take(r), r->lang);
		ps_req_free(r);
		return;
	}
	ps_page_path(s, r->token, back, sizeof back);
	snprintf(ret, sizeof ret, "%s/result/%s", back, r->otn);
	if (strcmp(PQgetvalue(res, 0, 2), "pending") != 0) {
		/* paid, expired or reloaded: show what it is */
		evhttp_add_header(evhttp_request_get_output_headers(r->req), "Location", ret);
		ps_send(ps_take(r), r->lang, 303, "See Other", NULL);
		ps_req_free(r);
		return;
	}
	snprintf(ret, sizeof ret, "%s%s/result/%s", s->conf->paypage_public_url, back, r->otn);
	memset(&o, 0, sizeof o);
	o.out_trade_no = r->otn;
	o.meter_id = PQgetvalue(res, 0, 0);
	o.amount_fen = ps_fen(PQgetvalue(res, 0, 1));
	o.channel = PAYPAGE_WECHAT_JSAPI;
	o.client_ip = r->ip;
	o.return_url = ret;
	o.oauth_code = r->code;
	ps_create(r, &o);
}

static void
ps_pay(struct ps_req *r)
{
	struct paysite *s = r->s;
	struct evbuffer *in = evhttp_request_get_input_buffer(r->req);
	size_t len = evbuffer_get_length(in);
	struct evkeyvalq form;
	const char *amount, *via, *params[4];
	char *body, yuan[32], mins[16], back[160];
	int64_t fen = -1;
	int i;
	bool ok = false;

	TAILQ_INIT(&form);
	body = len > 0 ? xstrndup((const char *)evbuffer_pullup(in, -1), len) : xstrdup("");
	ps_page_path(s, r->token, back, sizeof back);
	if (evhttp_parse_query_str(body, &form) == 0) {
		amount = evhttp_find_header(&form, "amount");
		via = evhttp_find_header(&form, "via");
		fen = paypage_yuan_parse(amount);
		for (i = 0; i < s->namounts && fen > 0; i++)
			ok = ok || s->amounts[i] == fen;
		if (via != NULL && strcmp(via, "alipay") == 0 &&
		    s->conf->payments_alipay_path != NULL)
			r->channel = PAYPAGE_ALIPAY_WAP;
		else if (via != NULL && strcmp(via, "wechat") == 0 &&
		         s->conf->payments_wechat_path != NULL)
			r->channel = r->client == PAYPAGE_IN_WECHAT ? PAYPAGE_WECHAT_JSAPI
			             : r->client == PAYPAGE_MOBILE  ? PAYPAGE_WECHAT_H5
			                                            : PAYPAGE_WECHAT_NATIVE;
		else
			ok = false;
	}
	evhttp_clear_headers(&form);
	free(body);
	if (!ok) {
		ps_message(ps_take(r), r->lang, 400, "Bad Request", PAYPAGE_MSG_BAD_AMOUNT, back);
		ps_req_free(r);
		return;
	}
	snprintf(yuan, sizeof yuan, "%" PRId64 ".%02d", fen / 100, (int)(fen % 100));
	snprintf(mins, sizeof mins, "%d", s->conf->paypage_order_valid_minutes);
	r->fen = fen;
	params[0] = r->token;
	params[1] = yuan;
	params[2] = r->channel == PAYPAGE_ALIPAY_WAP ? "alipay" : "wechat";
	params[3] = mins;
	if (!ps_query(r, ps_order_sql, 4, params, ps_ordered))
		ps_req_free(r);
}

/* ------------------------------------------------------------ routing */

static void
ps_route(struct evhttp_request *req, void *arg)
{
	struct paysite *s = arg;
	struct evkeyvalq *hdr = evhttp_request_get_input_headers(req);
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = evhttp_uri_get_path(uri), *rest, *tail;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	char *peer = NULL;
	ev_uint16_t port = 0;
	struct ps_req *r = xcalloc(1, sizeof *r);
	const char *params[2];
	char days[8];
	size_t n;

	r->s = s;
	r->req = req;
	r->lang = paypage_lang_pick(evhttp_find_header(hdr, "Accept-Language"));
	r->client = paypage_client_of(evhttp_find_header(hdr, "User-Agent"));
	r->next = s->pending;
	if (s->pending != NULL)
		s->pending->prev = r;
	s->pending = r;
	if (conn != NULL)
		evhttp_connection_get_peer(conn, &peer, &port);
	paypage_client_addr(peer, evhttp_find_header(hdr, "X-Forwarded-For"),
	    s->conf->paypage_trusted_proxies, r->ip, sizeof r->ip);
	if (s->stopping) {
		ps_message(ps_take(r), r->lang, 503, "Service Unavailable", PAYPAGE_MSG_BUSY, NULL);
		goto done;
	}
	if (!paypage_limiter_take(s->lim, r->ip, now_mono_us())) {
		log_ratelimited(LOG_LVL_WARN, "paypage-rate", 60,
		    "paypage: %s over [paypage] rate_per_minute: 429", r->ip);
		evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "60");
		ps_message(
		    ps_take(r), r->lang, 429, "Too Many Requests", PAYPAGE_MSG_SLOW_DOWN, NULL);
		goto done;
	}
	/* <path>/<token>[/pay | /result/<out_trade_no>] */
	rest = path + strlen(s->conf->paypage_path);
	if (*rest != '/' || !paypage_token_ok(rest + 1, strcspn(rest + 1, "/"))) {
		ps_nothing(ps_take(r), r->lang);
		goto done;
	}
	memcpy(r->token, rest + 1, PAYPAGE_TOKEN_LEN);
	tail = rest + 1 + PAYPAGE_TOKEN_LEN;
	if (*tail == '\0' && cmd != EVHTTP_REQ_POST) {
		r->kind = PS_VIEW;
		snprintf(days, sizeof days, "%d", s->conf->paypage_usage_days);
		params[0] = r->token;
		params[1] = days;
		ps_query(r, ps_view_sql, 2, params, ps_viewed);
	} else if (strcmp(tail, "/pay") == 0 && cmd == EVHTTP_REQ_POST) {
		const char *ct = evhttp_find_header(hdr, "Content-Type");

		r->kind = PS_PAY;
		if (ct == NULL || strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0) {
			ps_message(
			    ps_take(r), r->lang, 400, "Bad Request", PAYPAGE_MSG_BAD_AMOUNT, NULL);
			goto done;
		}
		ps_pay(r);
		return;
	} else if (strncmp(tail, "/result/", 8) == 0 && cmd != EVHTTP_REQ_POST &&
	           (n = strlen(tail + 8)) >= 6 && n < sizeof r->otn &&
	           strspn(tail + 8, PS_ALNUM "_-") == n) {
		r->kind = PS_RESULT;
		memcpy(r->otn, tail + 8, n + 1);
		params[0] = r->token;
		params[1] = r->otn;
		ps_query(r, ps_result_sql, 2, params, ps_resulted);
	} else if (strcmp(tail, "/wechat") == 0 && cmd != EVHTTP_REQ_POST) {
		struct evkeyvalq q;
		const char *code, *st;
		bool ok;

		TAILQ_INIT(&q);
		ok = evhttp_uri_get_query(uri) != NULL &&
		     evhttp_parse_query_str(evhttp_uri_get_query(uri), &q) == 0 &&
		     (code = evhttp_find_header(&q, "code")) != NULL &&
		     (st = evhttp_find_header(&q, "state")) != NULL && (n = strlen(code)) > 0 &&
		     n < sizeof r->code && strspn(code, PS_ALNUM "_-") == n &&
		     (n = strlen(st)) >= 6 && n < sizeof r->otn && strspn(st, PS_ALNUM "_-") == n;
		if (ok) {
			snprintf(r->code, sizeof r->code, "%s", code);
			snprintf(r->otn, sizeof r->otn, "%s", st);
		}
		evhttp_clear_headers(&q);
		if (!ok) {
			ps_nothing(ps_take(r), r->lang);
			goto done;
		}
		r->kind = PS_OAUTH;
		params[0] = r->token;
		params[1] = r->otn;
		ps_query(r, ps_result_sql, 2, params, ps_oauth_back);
	} else
		ps_nothing(ps_take(r), r->lang);
done:
	if (!r->busy)
		ps_req_free(r);
}

/* ---------------------------------------------------------- lifecycle */

static void
ps_url_set(void *arg, PGresult *res, const char *err)
{
	UNUSED(arg);
	UNUSED(res);
	if (err != NULL)
		log_ratelimited(LOG_LVL_WARN, "paypage-url", 60,
		    "paypage: could not record the public URL (run prepaidd --migrate?): %s", err);
}

static void
ps_connected(void *arg, struct pgconn *pc)
{
	struct paysite *s = arg;
	const char *params[1] = {s->base_url};

	pgconn_query_front(
	    pc, "SELECT prepaid_internal.set_pay_page_url($1)", 1, params, ps_url_set, NULL);
	/* A view is a few index lookups: compiling it (JIT) would cost more
	 * than running it. */
	pgconn_query_front(pc, "SET jit = off", 0, NULL, NULL, NULL);
}

static void
ps_lost(void *arg, struct pgconn *pc, const char *why)
{
	UNUSED(arg);
	UNUSED(pc);
	log_ratelimited(LOG_LVL_WARN, "paypage-lost", 30,
	    "paypage: PostgreSQL connection lost: %s (busy page meanwhile)", why);
}

static void
ps_configure(struct paysite *s, const struct conf *conf)
{
	char why[200];
	int n;

	s->conf = conf;
	n = paypage_amounts_parse(
	    conf->paypage_amounts, s->amounts, PS_AMOUNTS_MAX, why, sizeof why);
	s->namounts = n > 0 ? n : 0;
	s->lim->rate_per_minute = conf->paypage_rate_per_minute;
	s->lim->burst = conf->paypage_rate_burst;
	free(s->base_url);
	xasprintf(&s->base_url, "%s%s",
	    conf->paypage_public_url != NULL ? conf->paypage_public_url : "",
	    conf->paypage_path != NULL ? conf->paypage_path : "");
}

struct paysite *
paysite_new(
    struct event_base *base, struct httpd *httpd, const struct conf *conf, char *err, size_t errlen)
{
	struct paysite *s = xcalloc(1, sizeof *s);
	struct pgconn_handlers ph;
	int i;

	s->base = base;
	s->lim = xmalloc(sizeof *s->lim);
	paypage_limiter_init(s->lim, conf->paypage_rate_per_minute, conf->paypage_rate_burst);
	ps_configure(s, conf);
	if (conf->paypage_path == NULL)
		return s;
	if (httpd == NULL) {
		snprintf(err, errlen,
		    "%s: the pay page needs the HTTP listener ([http] enabled = true)", conf->path);
		paysite_free(s);
		return NULL;
	}
	memset(&ph, 0, sizeof ph);
	ph.on_connect = ps_connected;
	ph.on_disconnect = ps_lost;
	ph.arg = s;
	s->npg = conf->paypage_connections;
	s->pg = xcalloc((size_t)s->npg, sizeof *s->pg);
	for (i = 0; i < s->npg; i++)
		s->pg[i] = pgconn_new(
		    base, "paypage", conf->database_conninfo, conf->database_reconnect_max_ms, &ph);
	httpd_route_prefix(httpd, conf->paypage_path, ps_route, s);
	log_info("paypage: pay page on %s/<token> (links %s/...; %d amounts; %d requests/min per "
	         "address)",
	    conf->paypage_path, s->base_url, s->namounts, conf->paypage_rate_per_minute);
	return s;
}

void
paysite_set_provider(struct paysite *s, const struct paypage_provider *p)
{
	s->provider = *p;
	s->has_provider = true;
}

void
paysite_reconfigure(struct paysite *s, const struct conf *conf)
{
	char *old = xstrdup(s->base_url);
	const char *params[1];
	int i;

	ps_configure(s, conf);
	for (i = 0; i < s->npg; i++) {
		pgconn_set_conninfo(s->pg[i], conf->database_conninfo);
		if (strcmp(old, s->base_url) != 0 && pgconn_ready(s->pg[i])) {
			params[0] = s->base_url;
			pgconn_query(s->pg[i], "SELECT prepaid_internal.set_pay_page_url($1)", 1,
			    params, ps_url_set, NULL);
		}
	}
	free(old);
}

void
paysite_stop(struct paysite *s)
{
	if (s != NULL)
		s->stopping = true;
}

void
paysite_free(struct paysite *s)
{
	int i;

	if (s == NULL)
		return;
	while (s->pending != NULL) {
		struct ps_req *r = s->pending;
		struct evhttp_request *req = ps_take(r);

		if (req != NULL)
			ps_message(
			    req, r->lang, 503, "Service Unavailable", PAYPAGE_MSG_BUSY, NULL);
		ps_req_free(r);
	}
	for (i = 0; i < s->npg; i++)
		pgconn_free(s->pg[i]);
	free(s->pg);
	free(s->lim);
	free(s->base_url);
	free(s);
}
