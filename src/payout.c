/*
 * payout.c: the provider calls of payout.h.
 *
 * Every query_poll_s seconds one connection asks PostgreSQL for the orders
 * due (prepaid_internal.payout_due: the next step of the query_after ladder, or
 * expired) and the refunds due (prepaid_internal.refund_due); both claim their rows
 * for query_retry_s, so a call that gets no answer is simply tried again
 * later, with the same numbers. Answers:
 *   query: paid -> prepaid_internal.record_payment (as a notification, under the
 *     provider's transaction id), then payout_answered; not paid and
 *     expired -> close; otherwise payout_answered records the state;
 *   close: done (or the order is unknown there) -> payout_answered closes
 *     the order here;
 *   refund: success -> prepaid_internal.refund_answered debits once; processing ->
 *     asked again later (WeChat: refund query); refused -> failed.
 * A 2xx answer without a valid signature is not believed (logged, the claim
 * expires). The merchant keys and the Authorization header are never
 * logged.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common.h"
#include "httpc.h"
#include "log.h"
#include "payapi.h"
#include "paypage.h"
#include "payout.h"
#include "payverify.h"
#include "pgconn.h"

#define PAYOUT_BATCH 200
/* Calls signed per turn of the event loop: an RSA-2048 signature costs
 * about a millisecond, so a batch is spread over turns and the loop keeps
 * serving readings and callbacks in between. */
#define PAYOUT_PER_TURN 2

/* An order due, waiting for its turn to be signed and sent. */
struct payout_job {
	bool wechat, expired;
	char otn[65];
	int64_t fen;
	struct payout_job *next;
};

struct payout_keys {
	EVP_PKEY *wx_priv; /* merchant API key: signs WeChat requests */
	EVP_PKEY *ali_priv; /* app key: signs Alipay requests */
	struct pay_keyring *wx_pub; /* verifies WeChat answers */
	EVP_PKEY *ali_pub; /* verifies Alipay answers */
	char *wx_app_secret; /* the Official Account's AppSecret: the openid step */
};

/* One order of the pay page (payout_paypage_create): done(ctx) is called
 * exactly once, unless payout_free() comes first. */
struct payout_page {
	struct payout *p;
	paypage_handoff_cb done;
	void *ctx;
	enum paypage_channel channel;
	char otn[65];
	int64_t fen;
	char *description;
	char ip[48];
	char *return_url;
	struct httpc_req *req; /* the openid exchange */
	struct payout_page *prev, *next;
};

enum payout_kind {
	CALL_QUERY,
	CALL_CLOSE,
	CALL_REFUND,
	CALL_REFUND_QUERY,
	CALL_ORDER,
	CALL_BILL,
	CALL_BILL_FILE
};

struct payout_call {
	struct payout *p;
	enum payout_kind kind;
	bool wechat;
	char otn[65];
	int64_t fen;
	bool expired;
	char refund_no[65];
	int64_t total_fen;
	const char *method; /* Alipay method */
	/* orders */
	enum payapi_channel channel;
	payout_order_cb cb;
	void *arg;
	char *pay_url;
	char error[256]; /* an order refused before any call */
	/* bills */
	char rec_id[24];
	char bill_date[16];
	char hash[48]; /* WeChat: SHA-1 of the file */
	struct httpc_req *req;
	struct payout_call *prev, *next;
};

struct payout {
	struct event_base *base;
	const struct conf *conf;
	struct payout_keys keys;
	struct httpc *http;
	struct pgconn *pg;
	struct event *tick;
	bool scanning;
	struct payout_call *calls;
	char reconciled_day[16]; /* the Beijing day the daily run was asked for */
	struct payout_job *jobs, *jobs_tail;
	struct event *pump;
	struct payout_page *pages; /* the pay page's orders being made */
};

static const char *const payout_kind_names[] = {
    "query", "close", "refund", "refund query", "order", "bill", "bill download"};

/* ---------------------------------------------------------------- keys */

static void
payout_keys_free(struct payout_keys *k)
{
	EVP_PKEY_free(k->wx_priv);
	EVP_PKEY_free(k->ali_priv);
	EVP_PKEY_free(k->ali_pub);
	pay_keyring_free(k->wx_pub);
	if (k->wx_app_secret != NULL) {
		OPENSSL_cleanse(k->wx_app_secret, strlen(k->wx_app_secret));
		free(k->wx_app_secret);
	}
	memset(k, 0, sizeof *k);
}

static int
payout_key_error(const struct conf *c, const void *field, const char *key, const char *why,
    char *err, size_t errlen)
{
	snprintf(err, errlen, "%s:%d: payments.%s: %s", c->path, conf_line(c, field), key, why);
	return -1;
}

/* The AppSecret file: one line of 16 to 64 letters and digits (WeChat's
 * are 32 hex digits), a trailing newline allowed. Never logged. */
static char *
payout_secret_load(const char *path, char *why, size_t whylen)
{
	char buf[130];
	size_t n;
	FILE *f = fopen(path, "r");

	if (f == NULL) {
		snprintf(why, whylen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	if (n < 16 || n > 64 ||
	    strspn(buf, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") != n) {
		OPENSSL_cleanse(buf, sizeof buf);
		snprintf(why, whylen,
		    "%s: not an AppSecret (one line of 16 to 64 letters and digits)", path);
		return NULL;
	}
	{
		char *s = xstrdup(buf);

		OPENSSL_cleanse(buf, sizeof buf);
		return s;
	}
}

static int
payout_keys_load(const struct conf *c, struct payout_keys *k, char *err, size_t errlen)
{
	char why[256], *list, *save = NULL, *f;
	int rc = 0;

	memset(k, 0, sizeof *k);
	if (c->payments_wechat_merchant_key_file != NULL) {
		k->wx_priv =
		    payapi_privkey_load(c->payments_wechat_merchant_key_file, why, sizeof why);
		if (k->wx_priv == NULL)
			return payout_key_error(c, &c->payments_wechat_merchant_key_file,
			    "wechat_merchant_key_file", why, err, errlen);
		k->wx_pub = pay_keyring_new();
		if (c->payments_wechat_platform_certs != NULL) {
			list = xstrdup(c->payments_wechat_platform_certs);
			for (f = strtok_r(list, " \t", &save); f != NULL && rc == 0;
			     f = strtok_r(NULL, " \t", &save))
				if (pay_keyring_add_file(k->wx_pub, NULL, f, why, sizeof why) != 0)
					rc = payout_key_error(c, &c->payments_wechat_platform_certs,
					    "wechat_platform_certs", why, err, errlen);
			free(list);
			if (rc != 0)
				return rc;
		}
		if (c->payments_wechat_public_key_file != NULL &&
		    pay_keyring_add_file(k->wx_pub, c->payments_wechat_public_key_id,
		        c->payments_wechat_public_key_file, why, sizeof why) != 0)
			return payout_key_error(c, &c->payments_wechat_public_key_file,
			    "wechat_public_key_file", why, err, errlen);
		if (c->payments_wechat_app_secret_file != NULL) {
			k->wx_app_secret =
			    payout_secret_load(c->payments_wechat_app_secret_file, why, sizeof why);
			if (k->wx_app_secret == NULL)
				return payout_key_error(c, &c->payments_wechat_app_secret_file,
				    "wechat_app_secret_file", why, err, errlen);
		}
	}
	if (c->payments_alipay_app_key_file != NULL) {
		k->ali_priv = payapi_privkey_load(c->payments_alipay_app_key_file, why, sizeof why);
		if (k->ali_priv == NULL)
			return payout_key_error(c, &c->payments_alipay_app_key_file,
			    "alipay_app_key_file", why, err, errlen);
		k->ali_pub = pay_pubkey_load(c->payments_alipay_public_key_file, why, sizeof why);
		if (k->ali_pub == NULL)
			return payout_key_error(c, &c->payments_alipay_public_key_file,
			    "alipay_public_key_file", why, err, errlen);
	}
	return 0;
}

int
payout_check(const struct conf *conf, char *err, size_t errlen)
{
	struct payout_keys k;
	int rc = payout_keys_load(conf, &k, err, errlen);

	payout_keys_free(&k);
	return rc;
}

/* ------------------------------------------------------------ helpers */

/* The first of the configured appids: the one orders are made for. */
static void
payout_appid(const struct conf *c, char *buf, size_t len)
{
	const char *s = c->payments_wechat_appids != NULL ? c->payments_wechat_appids : "";
	size_t n;

	s += strspn(s, " \t");
	n = strcspn(s, " \t");
	snprintf(buf, len, "%.*s", (int)n, s);
}

/* "60 300" -> "{60,300}" (checked by conf.c). */
static void
payout_ladder(const char *s, char *buf, size_t len)
{
	size_t o = 0;
	bool first = true;

	o += (size_t)snprintf(buf + o, len - o, "{");
	while (*s != '\0' && o < len) {
		size_t n;

		s += strspn(s, " \t");
		n = strcspn(s, " \t");
		if (n == 0)
			break;
		o += (size_t)snprintf(buf + o, len - o, "%s%.*s", first ? "" : ",", (int)n, s);
		first = false;
		s += n;
	}
	if (o < len)
		snprintf(buf + o, len - o, "}");
}

static void
payout_call_unlink(struct payout_call *c)
{
	struct payout *p = c->p;

	if (c->prev != NULL)
		c->prev->next = c->next;
	else if (p->calls == c)
		p->calls = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
}

static struct payout_call *
payout_call_new(struct payout *p, enum payout_kind kind, bool wechat)
{
	struct payout_call *c = xcalloc(1, sizeof *c);

	c->p = p;
	c->kind = kind;
	c->wechat = wechat;
	c->next = p->calls;
	if (p->calls != NULL)
		p->calls->prev = c;
	p->calls = c;
	return c;
}

static void
payout_call_free(struct payout_call *c)
{
	payout_call_unlink(c);
	free(c->pay_url);
	free(c);
}

static void
payout_db_done(void *arg, PGresult *res, const char *err)
{
	char *what = arg;

	if (err != NULL || res == NULL)
		log_warn("payout: %s: %s", what, err != NULL ? err : "connection lost");
	free(what);
}

/* A statement whose result only matters when it fails. */
static void
payout_db(struct payout *p, const char *what, const char *sql, int n, const char *const *params)
{
	pgconn_query(p->pg, sql, n, params, payout_db_done, xstrdup(what));
}

static void payout_done(void *arg, const struct httpc_result *res);

static void
payout_fail_order(struct payout_call *c, const char *why)
{
	struct payout_order_result r;

	memset(&r, 0, sizeof r);
	r.error = why;
	if (c->cb != NULL)
		c->cb(c->arg, &r);
}

/* Sign and send a WeChat Pay request (body NULL: GET). */
static void payout_wap_cb(evutil_socket_t fd, short what, void *arg);

/* An order that cannot even be sent: its callback runs from the loop, as
 * payout.h promises, never from inside payout_create_order(). */
static void
payout_order_later(struct payout_call *c, const char *why)
{
	struct timeval now = {0, 0};

	snprintf(c->error, sizeof c->error, "%s", why);
	free(c->pay_url);
	c->pay_url = NULL;
	event_base_once(c->p->base, -1, EV_TIMEOUT, payout_wap_cb, c, &now);
}

/* Sign and send a WeChat Pay request (body NULL: GET) to the API's path,
 * or to full_url (a bill download) whose path and query are path. */
static void
payout_wx_send_url(struct payout_call *c, const char *method, const char *full_url,
    const char *path, const char *body, size_t body_max)
{
	struct payout *p = c->p;
	const struct conf *conf = p->conf;
	char nonce[33], *auth, *hauth, *url, *cause = NULL;
	const char *headers[5];
	struct httpc_request r;
	size_t blen = body != NULL ? strlen(body) : 0;

	payapi_nonce(nonce);
	auth = payapi_wx_authorization(p->keys.wx_priv, conf->payments_wechat_mchid,
	    conf->payments_wechat_merchant_serial, method, path, now_wall_us() / 1000000, nonce,
	    body, blen);
	xasprintf(&hauth, "Authorization: %s", auth != NULL ? auth : "");
	if (full_url != NULL)
		url = xstrdup(full_url);
	else
		xasprintf(&url, "%s%s", conf->payments_wechat_api_url, path);
	headers[0] = hauth;
	headers[1] = "Accept: application/json";
	headers[2] = body != NULL ? "Content-Type: application/json" : "Content-Type:";
	headers[3] = NULL;
	memset(&r, 0, sizeof r);
	r.url = url;
	r.method = method;
	r.headers = headers;
	r.body = body;
	r.body_len = blen;
	r.timeout_ms = conf->payments_api_timeout_ms;
	r.body_max = body_max;
	r.tag = "wechatpay";
	c->req = auth != NULL ? httpc_send(p->http, &r, payout_done, c, &cause) : NULL;
	if (c->req == NULL) {
		log_error("payout: wechat %s %s: cannot send: %s", payout_kind_names[c->kind],
		    c->otn, auth == NULL ? "the merchant key cannot sign" : cause);
		if (c->kind == CALL_ORDER)
			payout_order_later(c, "the request could not be sent");
		else
			payout_call_free(c);
	}
	free(cause);
	free(url);
	free(hauth);
	free(auth);
}

static void
payout_wx_send(struct payout_call *c, const char *method, const char *path, const char *body)
{
	payout_wx_send_url(c, method, NULL, path, body, 0);
}

/* Sign and send an Alipay gateway request. */
static void
payout_ali_send(struct payout_call *c, const char *method, const char *biz)
{
	struct payout *p = c->p;
	const struct conf *conf = p->conf;
	struct payapi_ali_req ar;
	struct httpc_request r;
	char ts[32], *url, *cause = NULL;
	const char *headers[] = {
	    "Content-Type: application/x-www-form-urlencoded;charset=utf-8", NULL};

	c->method = method;
	payapi_cn_time(now_wall_us() / 1000000, false, ts, sizeof ts);
	if (payapi_ali_request(p->keys.ali_priv, conf->payments_alipay_app_id, method, biz, ts,
	        c->kind == CALL_ORDER ? conf->payments_alipay_notify_url : NULL, NULL,
	        &ar) != PAY_OK) {
		log_error("payout: alipay %s %s: the app key cannot sign",
		    payout_kind_names[c->kind], c->otn);
		if (c->kind == CALL_ORDER)
			payout_order_later(c, "the request could not be signed");
		else
			payout_call_free(c);
		return;
	}
	xasprintf(&url, "%s?%s", conf->payments_alipay_gateway_url, ar.query);
	memset(&r, 0, sizeof r);
	r.url = url;
	r.method = "POST";
	r.headers = headers;
	r.body = ar.body;
	r.body_len = strlen(ar.body);
	r.timeout_ms = conf->payments_api_timeout_ms;
	r.tag = "alipay";
	c->req = httpc_send(p->http, &r, payout_done, c, &cause);
	if (c->req == NULL) {
		log_error("payout: alipay %s %s: cannot send: %s", payout_kind_names[c->kind],
		    c->otn, cause);
		if (c->kind == CALL_ORDER)
			payout_order_later(c, "the request could not be sent");
		else
			payout_call_free(c);
	}
	free(cause);
	free(url);
	payapi_ali_req_free(&ar);
}

/* ------------------------------------------------------------ calls */

static void
payout_query(struct payout *p, bool wechat, const char *otn, int64_t fen, bool expired)
{
	struct payout_call *c = payout_call_new(p, CALL_QUERY, wechat);
	char *s;

	snprintf(c->otn, sizeof c->otn, "%s", otn);
	c->fen = fen;
	c->expired = expired;
	if (wechat) {
		s = payapi_wx_query_path(otn, p->conf->payments_wechat_mchid);
		payout_wx_send(c, "GET", s, NULL);
	} else {
		s = payapi_ali_biz_trade(otn);
		payout_ali_send(c, "alipay.trade.query", s);
	}
	free(s);
}

static void
payout_close(struct payout *p, bool wechat, const char *otn)
{
	struct payout_call *c = payout_call_new(p, CALL_CLOSE, wechat);
	char *path, *body;

	snprintf(c->otn, sizeof c->otn, "%s", otn);
	log_info("payout: %s order %s expired unpaid: closing it at the provider",
	    wechat ? "wechat" : "alipay", otn);
	if (wechat) {
		path = payapi_wx_close_path(otn);
		body = payapi_wx_close_body(p->conf->payments_wechat_mchid);
		payout_wx_send(c, "POST", path, body);
		free(path);
		free(body);
	} else {
		body = payapi_ali_biz_trade(otn);
		payout_ali_send(c, "alipay.trade.close", body);
		free(body);
	}
}

static void
payout_refund(struct payout *p, bool wechat, bool processing, const char *no, const char *otn,
    int64_t fen, int64_t total, const char *reason)
{
	struct payout_call *c = payout_call_new(p, CALL_REFUND, wechat);
	char *s;

	snprintf(c->otn, sizeof c->otn, "%s", otn);
	snprintf(c->refund_no, sizeof c->refund_no, "%s", no);
	c->fen = fen;
	c->total_fen = total;
	if (wechat && processing) {
		c->kind = CALL_REFUND_QUERY;
		s = payapi_wx_refund_query_path(no);
		payout_wx_send(c, "GET", s, NULL);
	} else if (wechat) {
		s = payapi_wx_refund_body(
		    otn, no, fen, total, reason, p->conf->payments_wechat_notify_url);
		payout_wx_send(c, "POST", PAYAPI_WX_REFUND_PATH, s);
	} else {
		s = payapi_ali_biz_refund(otn, fen, no, reason);
		payout_ali_send(c, "alipay.trade.refund", s);
	}
	free(s);
}

#define PAYOUT_BILL_MAX (64 * 1024 * 1024)

static void
payout_bill(struct payout *p, bool wechat, const char *id, const char *date)
{
	struct payout_call *c = payout_call_new(p, CALL_BILL, wechat);
	char *s;

	snprintf(c->rec_id, sizeof c->rec_id, "%s", id);
	snprintf(c->bill_date, sizeof c->bill_date, "%s", date);
	snprintf(c->otn, sizeof c->otn, "%s", date);
	log_info("payout: reconciliation %s: fetching the %s bill of %s", id,
	    wechat ? "wechat" : "alipay", date);
	if (wechat) {
		s = payapi_wx_bill_path(date);
		payout_wx_send(c, "GET", s, NULL);
	} else {
		s = payapi_ali_biz_bill(date);
		payout_ali_send(c, "alipay.data.dataservice.bill.downloadurl.query", s);
	}
	free(s);
}

/* Download a bill file at once (its URL lives 30 s). */
static void
payout_bill_file(struct payout_call *from, const char *url, const char *hash)
{
	struct payout *p = from->p;
	struct payout_call *c = payout_call_new(p, CALL_BILL_FILE, from->wechat);
	struct httpc_request r;
	const char *path;
	char *cause = NULL;

	snprintf(c->rec_id, sizeof c->rec_id, "%s", from->rec_id);
	snprintf(c->bill_date, sizeof c->bill_date, "%s", from->bill_date);
	snprintf(c->otn, sizeof c->otn, "%s", from->bill_date);
	snprintf(c->hash, sizeof c->hash, "%s", hash != NULL ? hash : "");
	if (from->wechat) {
		/* Signed like any request, over the URL's path and query. */
		path = strstr(url, "://");
		path = path != NULL ? strchr(path + 3, '/') : NULL;
		payout_wx_send_url(c, "GET", url, path != NULL ? path : "/", NULL, PAYOUT_BILL_MAX);
		return;
	}
	memset(&r, 0, sizeof r);
	r.url = url;
	r.method = "GET";
	r.timeout_ms = p->conf->payments_api_timeout_ms;
	r.body_max = PAYOUT_BILL_MAX;
	r.tag = "alipay";
	c->req = httpc_send(p->http, &r, payout_done, c, &cause);
	if (c->req == NULL) {
		log_error("payout: alipay bill download: %s", cause);
		payout_call_free(c);
	}
	free(cause);
}

static void
payout_bill_error(struct payout_call *c, const char *why)
{
	const char *params[2] = {c->rec_id, why};

	log_warn("payout: reconciliation %s (%s bill of %s): %s (tried again later)", c->rec_id,
	    c->wechat ? "wechat" : "alipay", c->bill_date, why);
	payout_db(c->p, "recording a bill error",
	    "SELECT prepaid_internal.reconcile_error($1::bigint, $2)", 2, params);
}

static void
payout_bill_loaded(void *arg, PGresult *res, const char *err)
{
	char *id = arg;

	if (err != NULL || res == NULL)
		log_warn("payout: reconciliation %s: loading the bill failed: %s", id,
		    err != NULL ? err : "connection lost");
	else if (PQntuples(res) == 1)
		log_info(
		    "payout: reconciliation %s done: %s discrepancies", id, PQgetvalue(res, 0, 0));
	free(id);
}

static void
payout_bill_load(struct payout_call *c, const struct payapi_bill *b)
{
	char *json = payapi_bill_json(b);
	const char *params[2] = {c->rec_id, json};

	pgconn_query(c->p->pg, "SELECT prepaid_internal.reconcile_load($1::bigint, $2::jsonb)", 2,
	    params, payout_bill_loaded, xstrdup(c->rec_id));
	free(json);
}

/* A downloaded bill file: checked, parsed, loaded. */
static void
payout_bill_body(struct payout_call *c, const struct httpc_result *res)
{
	struct payapi_bill b;
	char hex[41], why[256], *det = NULL, *utf8 = NULL;
	size_t dlen, ulen;
	int rc;

	memset(&b, 0, sizeof b);
	if (res->status != 200 || res->truncated) {
		snprintf(why, sizeof why, "bill download: HTTP %ld%s", res->status,
		    res->truncated ? " (too large)" : "");
		payout_bill_error(c, why);
		return;
	}
	if (c->wechat) {
		payapi_sha1_hex(res->body, res->body_len, hex);
		if (strcasecmp(hex, c->hash) != 0) {
			payout_bill_error(c, "the bill's SHA-1 is not its hash_value");
			return;
		}
		rc = payapi_wx_bill_parse(res->body, res->body_len, &b, why, sizeof why);
	} else if ((rc = payapi_unzip_detail(
	                res->body, res->body_len, &det, &dlen, why, sizeof why)) == PAY_OK) {
		utf8 = payapi_gbk_to_utf8(det, dlen, &ulen);
		if (utf8 == NULL) {
			rc = PAY_EFORMAT;
			snprintf(why, sizeof why, "the bill is not GBK text");
		} else
			rc = payapi_ali_bill_parse(utf8, ulen, &b, why, sizeof why);
	}
	if (rc == PAY_OK)
		payout_bill_load(c, &b);
	else
		payout_bill_error(c, why);
	payapi_bill_free(&b);
	free(utf8);
	free(det);
}

/* ------------------------------------------------------------ answers */

static void
payout_answered(struct payout *p, const char *otn, const char *state, bool closed)
{
	const char *params[3] = {otn, state, closed ? "true" : "false"};

	payout_db(p, "recording a provider's answer",
	    "SELECT prepaid_internal.payout_answered($1, $2, $3::boolean)", 3, params);
}

static void
payout_recorded(void *arg, PGresult *res, const char *err)
{
	char *otn = arg;

	if (err != NULL || res == NULL)
		log_warn(
		    "payout: order %s: recording the payment a query found failed: %s (the next "
		    "query or the notification records it)",
		    otn, err != NULL ? err : "connection lost");
	else if (PQntuples(res) == 1)
		log_info("payout: order %s paid (found by a query): %s, meter %s", otn,
		    PQgetvalue(res, 0, 0), PQgetisnull(res, 0, 1) ? "-" : PQgetvalue(res, 0, 1));
	free(otn);
}

static void
payout_paid(struct payout_call *c, const struct payapi_trade *t)
{
	struct payout *p = c->p;
	char fen[24], now[40];
	const char *params[10];
	time_t tt = (time_t)(now_wall_us() / 1000000);
	struct tm tm;

	snprintf(fen, sizeof fen, "%" PRId64, t->fen);
	gmtime_r(&tt, &tm);
	strftime(now, sizeof now, "%Y-%m-%d %H:%M:%S+00", &tm);
	params[0] = c->wechat ? "wechat" : "alipay";
	params[1] = t->txn;
	params[2] = c->otn;
	params[3] = fen;
	params[4] = t->status;
	params[5] = NULL;
	params[6] = t->paid_at[0] != '\0' ? t->paid_at : NULL;
	/* The payment arrived when the provider says it was paid: an order
	 * paid in time and found after its expiry by a query is still paid in
	 * time. */
	params[7] = t->paid_at[0] != '\0' ? t->paid_at : now;
	params[8] = p->conf->payments_notify_occupant ? "true" : "false";
	params[9] = "false";
	pgconn_query(p->pg,
	    "SELECT outcome, meter_id FROM prepaid_internal.record_payment($1, $2, $3, $4::bigint, "
	    "$5, $6, "
	    "$7::timestamptz, $8::timestamptz, $9::boolean, $10::boolean)",
	    10, params, payout_recorded, xstrdup(c->otn));
	payout_answered(p, c->otn, t->status, false);
}

static void
payout_query_answer(struct payout_call *c, const struct payapi_trade *t)
{
	struct payout *p = c->p;

	if (t->out_trade_no[0] != '\0' && strcmp(t->out_trade_no, c->otn) != 0) {
		log_error(
		    "payout: query of %s answered for order %s: ignored", c->otn, t->out_trade_no);
		return;
	}
	switch (t->state) {
	case PAYAPI_PAID:
	case PAYAPI_REFUND:
		payout_paid(c, t);
		break;
	case PAYAPI_NOTPAY:
	case PAYAPI_NOTEXIST:
		if (c->expired)
			payout_close(p, c->wechat, c->otn);
		else
			payout_answered(p, c->otn, t->status, false);
		break;
	case PAYAPI_CLOSED:
		payout_answered(p, c->otn, t->status, c->expired);
		break;
	default:
		payout_answered(p, c->otn, t->status, false);
		break;
	}
}

static void
payout_refund_result(
    struct payout_call *c, const char *outcome, const char *state, const char *error)
{
	const char *params[4] = {c->refund_no, outcome, state, error};

	if (strcmp(outcome, "refunded") == 0)
		log_info("payout: refund %s of order %s (%" PRId64 " fen) confirmed by %s",
		    c->refund_no, c->otn, c->fen, c->wechat ? "wechat" : "alipay");
	else if (strcmp(outcome, "failed") == 0)
		log_error("payout: refund %s of order %s refused by %s: %s", c->refund_no, c->otn,
		    c->wechat ? "wechat" : "alipay", error != NULL ? error : state);
	payout_db(c->p, "recording a refund's answer",
	    "SELECT prepaid_internal.refund_answered($1, $2, $3, $4)", 4, params);
}

/* The answer to a WeChat Pay call, believed only when signed. */
static void
payout_wx_answer(struct payout_call *c, const struct httpc_result *res)
{
	struct payout *p = c->p;
	char why[256];
	struct payapi_trade t;
	json_t *j = NULL;
	const char *code = NULL, *v;
	int rc;

	if (c->kind == CALL_BILL_FILE) {
		/* Not signed: its integrity is the SHA-1 of the signed answer. */
		payout_bill_body(c, res);
		return;
	}
	if (res->status >= 200 && res->status < 300) {
		rc = pay_wechat_verify(p->keys.wx_pub, httpc_result_header(res, "Wechatpay-Serial"),
		    httpc_result_header(res, "Wechatpay-Timestamp"),
		    httpc_result_header(res, "Wechatpay-Nonce"),
		    httpc_result_header(res, "Wechatpay-Signature"), res->body, res->body_len,
		    now_wall_us() / 1000000, p->conf->payments_wechat_max_skew, why, sizeof why);
		if (rc != PAY_OK) {
			log_error("payout: wechat %s %s: answer %ld not believed: %s",
			    payout_kind_names[c->kind], c->otn, res->status, why);
			if (c->kind == CALL_ORDER)
				payout_fail_order(c, "the provider's answer did not verify");
			return;
		}
		if (res->body_len > 0)
			j = json_loadb(res->body, res->body_len, 0, NULL);
	} else {
		j = json_loadb(res->body, res->body_len, 0, NULL);
		code = json_string_value(json_object_get(j, "code"));
	}
	switch (c->kind) {
	case CALL_QUERY:
		if (res->status == 200 &&
		    payapi_wx_trade_parse(res->body, res->body_len, &t, why, sizeof why) == PAY_OK)
			payout_query_answer(c, &t);
		else if (res->status == 404 && code != NULL &&
		         strcmp(code, "ORDER_NOT_EXIST") == 0) {
			memset(&t, 0, sizeof t);
			t.state = PAYAPI_NOTEXIST;
			snprintf(t.status, sizeof t.status, "ORDER_NOT_EXIST");
			payout_query_answer(c, &t);
		} else
			log_warn("payout: wechat query %s: %ld %s (asked again later)", c->otn,
			    res->status, code != NULL ? code : "");
		break;
	case CALL_CLOSE:
		if (res->status >= 200 && res->status < 300)
			payout_answered(p, c->otn, "CLOSED", true);
		else
			log_warn("payout: wechat close %s: %ld %s (tried again later)", c->otn,
			    res->status, code != NULL ? code : "");
		break;
	case CALL_REFUND:
	case CALL_REFUND_QUERY:
		if (res->status == 200 &&
		    (v = json_string_value(json_object_get(j, "status"))) != NULL)
			payout_refund_result(c,
			    strcmp(v, "SUCCESS") == 0  ? "refunded"
			    : strcmp(v, "CLOSED") == 0 ? "failed"
			                               : "processing",
			    v, NULL);
		else if (res->status >= 400 && res->status < 500 && res->status != 429 &&
		         !(c->kind == CALL_REFUND_QUERY && res->status == 404))
			payout_refund_result(c, "failed", code, code != NULL ? code : "refused");
		else
			payout_refund_result(c, "retry", NULL, code != NULL ? code : "no answer");
		break;
	case CALL_BILL:
		if (res->status == 200 &&
		    (v = json_string_value(json_object_get(j, "download_url"))) != NULL)
			payout_bill_file(c, v, json_string_value(json_object_get(j, "hash_value")));
		else if (res->status == 400 && code != NULL &&
		         strcmp(code, "NO_STATEMENT_EXIST") == 0) {
			struct payapi_bill none = {NULL, 0};

			payout_bill_load(c, &none); /* no trade that day */
		} else {
			snprintf(
			    why, sizeof why, "bill: %ld %s", res->status, code != NULL ? code : "");
			payout_bill_error(c, why);
		}
		break;
	case CALL_BILL_FILE:
		break;
	case CALL_ORDER: {
		struct payout_order_result r;
		const char *id;
		char nonce[33], appid[64];

		memset(&r, 0, sizeof r);
		if (res->status != 200) {
			snprintf(why, sizeof why, "WeChat Pay refused the order: %ld %s",
			    res->status, code != NULL ? code : "");
			r.error = why;
		} else if (c->channel == PAYAPI_WX_NATIVE)
			r.code_url = json_string_value(json_object_get(j, "code_url"));
		else if (c->channel == PAYAPI_WX_H5)
			r.h5_url = json_string_value(json_object_get(j, "h5_url"));
		else if ((id = json_string_value(json_object_get(j, "prepay_id"))) != NULL) {
			r.prepay_id = id;
			payapi_nonce(nonce);
			payout_appid(p->conf, appid, sizeof appid);
			r.jsapi_params = payapi_wx_jsapi_params(
			    p->keys.wx_priv, appid, id, now_wall_us() / 1000000, nonce);
		}
		if (r.error == NULL && r.code_url == NULL && r.h5_url == NULL &&
		    r.prepay_id == NULL)
			r.error = "WeChat Pay's answer has no payment link";
		c->cb(c->arg, &r);
		json_decref(r.jsapi_params);
		break;
	}
	}
	json_decref(j);
}

static void
payout_ali_answer(struct payout_call *c, const struct httpc_result *res)
{
	struct payout *p = c->p;
	char why[256];
	struct payapi_trade t;
	json_t *r = NULL;
	const char *code, *sub;

	if (c->kind == CALL_BILL_FILE) {
		payout_bill_body(c, res);
		return;
	}
	if (res->status != 200 || payapi_ali_answer(p->keys.ali_pub, c->method, res->body,
	                              res->body_len, &r, why, sizeof why) != PAY_OK) {
		if (res->status != 200)
			snprintf(why, sizeof why, "HTTP %ld", res->status);
		log_error("payout: alipay %s %s: answer not believed: %s",
		    payout_kind_names[c->kind], c->otn, why);
		if (c->kind == CALL_ORDER)
			payout_fail_order(c, "the provider's answer did not verify");
		if (c->kind == CALL_REFUND)
			payout_refund_result(c, "retry", NULL, why);
		if (c->kind == CALL_BILL)
			payout_bill_error(c, why);
		return;
	}
	code = json_string_value(json_object_get(r, "code"));
	sub = json_string_value(json_object_get(r, "sub_code"));
	if (code == NULL)
		code = "";
	switch (c->kind) {
	case CALL_QUERY:
		if (payapi_ali_trade_parse(r, &t, why, sizeof why) == PAY_OK &&
		    (strcmp(code, "10000") == 0 || t.state == PAYAPI_NOTEXIST))
			payout_query_answer(c, &t);
		else
			log_warn("payout: alipay query %s: %s %s (asked again later)", c->otn, code,
			    sub != NULL ? sub : "");
		break;
	case CALL_CLOSE:
		if (strcmp(code, "10000") == 0 ||
		    (sub != NULL && strcmp(sub, "ACQ.TRADE_NOT_EXIST") == 0))
			payout_answered(p, c->otn, "TRADE_CLOSED", true);
		else
			log_warn("payout: alipay close %s: %s %s (tried again later)", c->otn, code,
			    sub != NULL ? sub : "");
		break;
	case CALL_REFUND:
	case CALL_REFUND_QUERY:
		if (strcmp(code, "10000") == 0)
			payout_refund_result(c, "refunded",
			    json_string_value(json_object_get(r, "fund_change")), NULL);
		else if (strcmp(code, "40004") == 0 && sub != NULL &&
		         strcmp(sub, "ACQ.SYSTEM_ERROR") != 0)
			payout_refund_result(c, "failed", sub, sub);
		else
			payout_refund_result(c, "retry", NULL, sub != NULL ? sub : code);
		break;
	case CALL_BILL: {
		const char *url = json_string_value(json_object_get(r, "bill_download_url"));

		if (strcmp(code, "10000") == 0 && url != NULL)
			payout_bill_file(c, url, NULL);
		else if (sub != NULL && strcmp(sub, "isp.bill_not_exist") == 0) {
			struct payapi_bill none = {NULL, 0};

			payout_bill_load(c, &none); /* no trade that day */
		} else {
			snprintf(why, sizeof why, "bill: %s %s", code, sub != NULL ? sub : "");
			payout_bill_error(c, why);
		}
		break;
	}
	case CALL_BILL_FILE:
		break;
	case CALL_ORDER: {
		struct payout_order_result o;

		memset(&o, 0, sizeof o);
		if (strcmp(code, "10000") != 0) {
			snprintf(why, sizeof why, "Alipay refused the order: %s %s", code,
			    sub != NULL ? sub : "");
			o.error = why;
		} else if ((o.qr_code = json_string_value(json_object_get(r, "qr_code"))) == NULL)
			o.error = "Alipay's answer has no qr_code";
		c->cb(c->arg, &o);
		break;
	}
	}
	json_decref(r);
}

static void
payout_done(void *arg, const struct httpc_result *res)
{
	struct payout_call *c = arg;
	const char *rid = httpc_result_header(res, "Request-ID");

	c->req = NULL;
	if (res->code != CURLE_OK) {
		log_warn("payout: %s %s %s: %s (tried again later)",
		    c->wechat ? "wechat" : "alipay", payout_kind_names[c->kind],
		    c->refund_no[0] ? c->refund_no : c->otn, res->error);
		if (c->kind == CALL_ORDER)
			payout_fail_order(c, "the provider did not answer in time");
		else if (c->kind == CALL_REFUND || c->kind == CALL_REFUND_QUERY)
			payout_refund_result(c, "retry", NULL, res->error);
		else if (c->kind == CALL_BILL || c->kind == CALL_BILL_FILE)
			payout_bill_error(c, res->error);
	} else {
		log_debug("payout: %s %s %s: %ld%s%s", c->wechat ? "wechat" : "alipay",
		    payout_kind_names[c->kind], c->otn, res->status, rid != NULL ? " request " : "",
		    rid != NULL ? rid : "");
		if (c->wechat)
			payout_wx_answer(c, res);
		else
			payout_ali_answer(c, res);
	}
	payout_call_free(c);
}

/* ------------------------------------------------------------ orders */

static void
payout_wap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct payout_call *c = arg;
	struct payout_order_result r;

	UNUSED(fd);
	UNUSED(what);
	memset(&r, 0, sizeof r);
	r.pay_url = c->pay_url;
	if (c->pay_url == NULL)
		r.error = c->error[0] != '\0' ? c->error : "the order could not be signed";
	c->cb(c->arg, &r);
	payout_call_free(c);
}

void
payout_create_order(struct payout *p, const struct payout_order *o, payout_order_cb cb, void *arg)
{
	const struct conf *conf = p->conf;
	struct payout_call *c;
	bool wechat = payapi_channel_is_wechat(o->channel);
	char err[256], appid[64], expire[40], tx[32], *body;
	struct timeval now = {0, 0};

	c = payout_call_new(p, CALL_ORDER, wechat);
	c->cb = cb;
	c->arg = arg;
	c->channel = o->channel;
	c->fen = o->amount_fen;
	snprintf(c->otn, sizeof c->otn, "%s", o->out_trade_no != NULL ? o->out_trade_no : "");
	if ((wechat && p->keys.wx_priv == NULL) || (!wechat && p->keys.ali_priv == NULL) ||
	    !payapi_trade_no_ok(o->out_trade_no) || o->amount_fen <= 0) {
		snprintf(c->error, sizeof c->error, "%s",
		    !payapi_trade_no_ok(o->out_trade_no) || o->amount_fen <= 0
		        ? "not a valid order number and amount"
		        : "this provider is not configured (no merchant key)");
		event_base_once(p->base, -1, EV_TIMEOUT, payout_wap_cb, c, &now);
		return;
	}
	if (wechat) {
		struct payapi_wx_order wo;

		payout_appid(conf, appid, sizeof appid);
		if (o->expires_at > 0)
			payapi_cn_time(o->expires_at, true, expire, sizeof expire);
		memset(&wo, 0, sizeof wo);
		wo.appid = appid;
		wo.mchid = conf->payments_wechat_mchid;
		wo.description = o->description;
		wo.out_trade_no = o->out_trade_no;
		wo.notify_url = conf->payments_wechat_notify_url;
		wo.time_expire = o->expires_at > 0 ? expire : NULL;
		wo.total_fen = o->amount_fen;
		wo.openid = o->openid;
		wo.client_ip = o->client_ip;
		body = payapi_wx_order_body(o->channel, &wo, err, sizeof err);
		if (body == NULL) {
			log_warn("payout: order %s: %s", c->otn, err);
			snprintf(c->error, sizeof c->error, "%s", err);
			event_base_once(p->base, -1, EV_TIMEOUT, payout_wap_cb, c, &now);
			return;
		}
		payout_wx_send(c, "POST", payapi_wx_order_path(o->channel), body);
		free(body);
		return;
	}
	/* Alipay: minutes left, at least one. */
	snprintf(tx, sizeof tx, "%lldm",
	    o->expires_at > 0
	        ? (long long)((o->expires_at - now_wall_us() / 1000000 + 59) / 60 < 1
	                          ? 1
	                          : (o->expires_at - now_wall_us() / 1000000 + 59) / 60)
	        : 30LL);
	if (o->channel == PAYAPI_ALI_WAP) {
		struct payapi_ali_req ar;
		char ts[32];

		body = payapi_ali_biz_wap(
		    o->out_trade_no, o->amount_fen, o->description, o->return_url, tx);
		payapi_cn_time(now_wall_us() / 1000000, false, ts, sizeof ts);
		if (payapi_ali_request(p->keys.ali_priv, conf->payments_alipay_app_id,
		        "alipay.trade.wap.pay", body, ts, conf->payments_alipay_notify_url,
		        o->return_url, &ar) == PAY_OK) {
			c->pay_url = payapi_ali_page_url(conf->payments_alipay_gateway_url, &ar);
			payapi_ali_req_free(&ar);
		}
		free(body);
		event_base_once(p->base, -1, EV_TIMEOUT, payout_wap_cb, c, &now);
		return;
	}
	body = payapi_ali_biz_precreate(o->out_trade_no, o->amount_fen, o->description, tx);
	payout_ali_send(c, "alipay.trade.precreate", body);
	free(body);
}

/* ------------------------------------------------------------ the scan */

static const char *
payout_providers(const struct payout *p)
{
	return p->keys.wx_priv != NULL && p->keys.ali_priv != NULL ? "{wechat,alipay}"
	       : p->keys.wx_priv != NULL                           ? "{wechat}"
	       : p->keys.ali_priv != NULL                          ? "{alipay}"
	                                                           : NULL;
}

static void
payout_reconcile_due(void *arg, PGresult *res, const char *err)
{
	struct payout *p = arg;
	int i;

	p->scanning = false;
	if (err != NULL || res == NULL) {
		log_ratelimited(LOG_LVL_WARN, "payout-scan", 60, "payout: reconciliations due: %s",
		    err != NULL ? err : "connection lost");
		return;
	}
	for (i = 0; i < PQntuples(res); i++)
		payout_bill(p, strcmp(PQgetvalue(res, i, 1), "wechat") == 0, PQgetvalue(res, i, 0),
		    PQgetvalue(res, i, 2));
}

static void
payout_refunds_due(void *arg, PGresult *res, const char *err)
{
	struct payout *p = arg;
	char retry[16];
	const char *params[3];
	int i;

	if (err != NULL || res == NULL) {
		p->scanning = false;
		log_ratelimited(LOG_LVL_WARN, "payout-scan", 60, "payout: refunds due: %s",
		    err != NULL ? err : "connection lost");
		return;
	}
	for (i = 0; i < PQntuples(res); i++) {
		bool wechat = strcmp(PQgetvalue(res, i, 1), "wechat") == 0;

		payout_refund(p, wechat, strcmp(PQgetvalue(res, i, 6), "processing") == 0,
		    PQgetvalue(res, i, 0), PQgetvalue(res, i, 2),
		    strtoll(PQgetvalue(res, i, 3), NULL, 10),
		    strtoll(PQgetvalue(res, i, 4), NULL, 10),
		    PQgetisnull(res, i, 5) ? NULL : PQgetvalue(res, i, 5));
	}
	snprintf(retry, sizeof retry, "%d", p->conf->payments_query_retry_s);
	params[0] = payout_providers(p);
	params[1] = retry;
	params[2] = "4";
	pgconn_query(p->pg,
	    "SELECT * FROM prepaid_internal.reconcile_due($1::text[], $2::int, $3::int)", 3, params,
	    payout_reconcile_due, p);
}

static void
payout_orders_due(void *arg, PGresult *res, const char *err)
{
	struct payout *p = arg;
	char retry[16], limit[16];
	const char *params[3];
	int i;

	if (err != NULL || res == NULL) {
		p->scanning = false;
		log_ratelimited(LOG_LVL_WARN, "payout-scan", 60, "payout: orders due: %s",
		    err != NULL ? err : "connection lost");
		return;
	}
	for (i = 0; i < PQntuples(res); i++) {
		struct payout_job *j = xcalloc(1, sizeof *j);

		j->wechat = strcmp(PQgetvalue(res, i, 1), "wechat") == 0;
		snprintf(j->otn, sizeof j->otn, "%s", PQgetvalue(res, i, 0));
		j->fen = strtoll(PQgetvalue(res, i, 2), NULL, 10);
		j->expired = PQgetvalue(res, i, 3)[0] == 't';
		if (p->jobs_tail != NULL)
			p->jobs_tail->next = j;
		else
			p->jobs = j;
		p->jobs_tail = j;
	}
	if (p->jobs != NULL) {
		struct timeval zero = {0, 0};

		evtimer_add(p->pump, &zero);
	}
	snprintf(retry, sizeof retry, "%d", p->conf->payments_query_retry_s);
	snprintf(limit, sizeof limit, "%d", PAYOUT_BATCH);
	params[0] = payout_providers(p);
	params[1] = retry;
	params[2] = limit;
	pgconn_query(p->pg,
	    "SELECT * FROM prepaid_internal.refund_due($1::text[], $2::int, $3::int)", 3, params,
	    payout_refunds_due, p);
}

/* Send a few queries, then let the loop serve everything else. */
static void
payout_pump(evutil_socket_t fd, short what, void *arg)
{
	struct payout *p = arg;
	struct payout_job *j;
	int n;

	UNUSED(fd);
	UNUSED(what);
	for (n = 0; n < PAYOUT_PER_TURN && (j = p->jobs) != NULL; n++) {
		p->jobs = j->next;
		if (p->jobs == NULL)
			p->jobs_tail = NULL;
		payout_query(p, j->wechat, j->otn, j->fen, j->expired);
		free(j);
	}
	if (p->jobs != NULL) {
		struct timeval zero = {0, 0};

		evtimer_add(p->pump, &zero);
	}
}

/* Once a Beijing day, at reconcile_at: queue yesterday's bills (the
 * database makes it once whatever the number of daemons). */
static void
payout_daily(struct payout *p)
{
	int64_t now = now_wall_us() / 1000000;
	char bj[32], today[16], yesterday[16];
	const char *params[2];

	payapi_cn_time(now, false, bj, sizeof bj);
	snprintf(today, sizeof today, "%.10s", bj);
	if (strcmp(today, p->reconciled_day) == 0 ||
	    strncmp(bj + 11, p->conf->payments_reconcile_at, 5) < 0)
		return;
	snprintf(p->reconciled_day, sizeof p->reconciled_day, "%s", today);
	payapi_cn_yesterday(now, yesterday, sizeof yesterday);
	params[0] = yesterday;
	params[1] = payout_providers(p);
	payout_db(p, "queueing the daily reconciliation",
	    "SELECT prepaid_internal.reconcile_daily($1::date, $2::text[])", 2, params);
}

static void
payout_tick(evutil_socket_t fd, short what, void *arg)
{
	struct payout *p = arg;
	char ladder[256], retry[16], limit[16];
	const char *params[4];

	UNUSED(fd);
	UNUSED(what);
	if (p->scanning || p->jobs != NULL || payout_providers(p) == NULL || !pgconn_ready(p->pg))
		return;
	payout_daily(p);
	p->scanning = true;
	payout_ladder(p->conf->payments_query_after, ladder, sizeof ladder);
	snprintf(retry, sizeof retry, "%d", p->conf->payments_query_retry_s);
	snprintf(limit, sizeof limit, "%d", PAYOUT_BATCH);
	params[0] = ladder;
	params[1] = retry;
	params[2] = payout_providers(p);
	params[3] = limit;
	pgconn_query(p->pg,
	    "SELECT * FROM prepaid_internal.payout_due($1::int[], $2::int, $3::text[], $4::int)", 4,
	    params, payout_orders_due, p);
}

/* ---------------------------------------------------------- lifecycle */

static void
payout_arm_tick(struct payout *p)
{
	struct timeval tv = {p->conf->payments_query_poll_s, 0};

	if (p->tick == NULL)
		p->tick = event_new(p->base, -1, EV_PERSIST, payout_tick, p);
	event_add(p->tick, &tv);
}

/* ------------------------------------------------------- the pay page */

static void
payout_page_free(struct payout_page *pg)
{
	struct payout *p = pg->p;

	if (pg->prev != NULL)
		pg->prev->next = pg->next;
	else if (p->pages == pg)
		p->pages = pg->next;
	if (pg->next != NULL)
		pg->next->prev = pg->prev;
	free(pg->description);
	free(pg->return_url);
	free(pg);
}

/* The one answer to the page; pg is gone afterwards. */
static void
payout_page_done(struct payout_page *pg, enum paypage_handoff_kind kind, const char *url)
{
	struct paypage_handoff h;
	paypage_handoff_cb done = pg->done;
	void *ctx = pg->ctx;

	payout_page_free(pg);
	h.kind = kind;
	h.url = url;
	done(ctx, &h);
}

static void
payout_page_ordered(void *arg, const struct payout_order_result *res)
{
	struct payout_page *pg = arg;
	char *url = NULL, *enc;

	if (res->error != NULL) {
		log_warn("payout: pay page order %s (%s): %s", pg->otn,
		    paypage_channel_name(pg->channel), res->error);
		payout_page_done(pg, PAYPAGE_FAILED, NULL);
		return;
	}
	switch (pg->channel) {
	case PAYPAGE_ALIPAY_WAP:
		if (res->pay_url != NULL)
			url = xstrdup(res->pay_url);
		break;
	case PAYPAGE_WECHAT_NATIVE:
		if (res->code_url != NULL)
			url = xstrdup(res->code_url);
		break;
	case PAYPAGE_WECHAT_H5:
		/* WeChat sends the browser back to redirect_url after paying. */
		if (res->h5_url != NULL && (enc = evhttp_encode_uri(pg->return_url)) != NULL) {
			xasprintf(&url, "%s%sredirect_url=%s", res->h5_url,
			    strchr(res->h5_url, '?') != NULL ? "&" : "?", enc);
			free(enc);
		}
		break;
	case PAYPAGE_WECHAT_JSAPI:
		if (res->jsapi_params != NULL)
			url = json_dumps(res->jsapi_params, JSON_COMPACT | JSON_PRESERVE_ORDER);
		break;
	}
	if (url == NULL) {
		log_warn("payout: pay page order %s (%s): the provider's answer has no way to pay",
		    pg->otn, paypage_channel_name(pg->channel));
		payout_page_done(pg, PAYPAGE_FAILED, NULL);
		return;
	}
	log_info("payout: pay page order %s made at %s (%s)", pg->otn,
	    pg->channel == PAYPAGE_ALIPAY_WAP ? "Alipay" : "WeChat Pay",
	    paypage_channel_name(pg->channel));
	payout_page_done(pg,
	    pg->channel == PAYPAGE_WECHAT_NATIVE  ? PAYPAGE_CODE_URL
	    : pg->channel == PAYPAGE_WECHAT_JSAPI ? PAYPAGE_JSAPI
	                                          : PAYPAGE_REDIRECT,
	    url);
	free(url);
}

/* Ask the provider for the order (JSAPI: with the payer's openid). */
static void
payout_page_order(struct payout_page *pg, const char *openid)
{
	struct payout_order po;

	memset(&po, 0, sizeof po);
	po.out_trade_no = pg->otn;
	po.amount_fen = pg->fen;
	po.channel = pg->channel == PAYPAGE_ALIPAY_WAP      ? PAYAPI_ALI_WAP
	             : pg->channel == PAYPAGE_WECHAT_NATIVE ? PAYAPI_WX_NATIVE
	             : pg->channel == PAYPAGE_WECHAT_H5     ? PAYAPI_WX_H5
	                                                    : PAYAPI_WX_JSAPI;
	po.description = pg->description;
	po.openid = openid;
	po.client_ip = pg->ip;
	po.return_url = pg->return_url;
	payout_create_order(pg->p, &po, payout_page_ordered, pg);
}

/* WeChat's answer to the code: {"openid": ...} or {"errcode": ...}. */
static void
payout_page_openid(void *arg, const struct httpc_result *res)
{
	struct payout_page *pg = arg;
	json_t *j = NULL;
	const char *openid = NULL;

	pg->req = NULL;
	if (res->code == CURLE_OK && res->status == 200)
		j = json_loadb(res->body, res->body_len, JSON_REJECT_DUPLICATES, NULL);
	openid = json_string_value(json_object_get(j, "openid"));
	if (openid == NULL || openid[0] == '\0' || strlen(openid) > 128 ||
	    strspn(openid, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-") !=
	        strlen(openid)) {
		if (res->code != CURLE_OK)
			log_warn("payout: pay page order %s: WeChat's openid step: %s", pg->otn,
			    res->error);
		else
			log_warn("payout: pay page order %s: WeChat's openid step: HTTP %ld, "
			         "errcode %lld %s",
			    pg->otn, res->status,
			    (long long)json_integer_value(json_object_get(j, "errcode")),
			    json_string_value(json_object_get(j, "errmsg")) ?: "(no openid)");
		json_decref(j);
		payout_page_done(pg, PAYPAGE_FAILED, NULL);
		return;
	}
	payout_page_order(pg, openid);
	json_decref(j);
}

void
payout_paypage_create(void *arg, const struct paypage_order *o, paypage_handoff_cb done, void *ctx)
{
	struct payout *p = arg;
	const struct conf *conf = p->conf;
	bool wechat = o->channel != PAYPAGE_ALIPAY_WAP;
	struct paypage_handoff h = {PAYPAGE_UNAVAILABLE, NULL};
	struct payout_page *pg;
	char appid[64];

	if (p->keys.wx_priv == NULL && p->keys.ali_priv == NULL) {
		/* No provider at all: the stand-in of paypage.h ([paypage]
		 * stub_handoff_url, tests and demos), or unavailable. */
		struct sbuf b = {0};

		h.kind = paypage_stub_handoff(conf->paypage_stub_handoff_url, o, &b);
		h.url = b.p;
		done(ctx, &h);
		free(b.p);
		return;
	}
	if ((wechat && p->keys.wx_priv == NULL) || (!wechat && p->keys.ali_priv == NULL) ||
	    (o->channel == PAYPAGE_WECHAT_JSAPI && p->keys.wx_app_secret == NULL) ||
	    !payapi_trade_no_ok(o->out_trade_no) || o->amount_fen <= 0) {
		if (payapi_trade_no_ok(o->out_trade_no) && o->amount_fen > 0)
			log_ratelimited(LOG_LVL_WARN, "payout-page-unset", 60,
			    "payout: the pay page asked for %s, which is not set up "
			    "(payments.%s)",
			    paypage_channel_name(o->channel),
			    !wechat                   ? "alipay_app_key_file"
			    : p->keys.wx_priv == NULL ? "wechat_merchant_key_file"
			                              : "wechat_app_secret_file");
		else
			h.kind = PAYPAGE_FAILED;
		done(ctx, &h);
		return;
	}
	payout_appid(conf, appid, sizeof appid);
	if (o->channel == PAYPAGE_WECHAT_JSAPI && o->oauth_code == NULL) {
		/* The openid step: WeChat sends the occupant back to
		 * oauth_return with a code (snsapi_base asks them nothing). */
		char *ru = o->oauth_return != NULL ? evhttp_encode_uri(o->oauth_return) : NULL;
		char *url;

		if (ru == NULL) {
			h.kind = PAYPAGE_FAILED;
			done(ctx, &h);
			return;
		}
		xasprintf(&url,
		    "%s?appid=%s&redirect_uri=%s&response_type=code&scope=snsapi_base&state=%s"
		    "#wechat_redirect",
		    conf->payments_wechat_authorize_url, appid, ru, o->out_trade_no);
		h.kind = PAYPAGE_REDIRECT;
		h.url = url;
		done(ctx, &h);
		free(url);
		free(ru);
		return;
	}
	pg = xcalloc(1, sizeof *pg);
	pg->p = p;
	pg->done = done;
	pg->ctx = ctx;
	pg->channel = o->channel;
	pg->fen = o->amount_fen;
	snprintf(pg->otn, sizeof pg->otn, "%s", o->out_trade_no);
	snprintf(pg->ip, sizeof pg->ip, "%s", o->client_ip != NULL ? o->client_ip : "");
	pg->return_url = xstrdup(o->return_url != NULL ? o->return_url : "");
	if (o->meter_id != NULL)
		xasprintf(&pg->description, "电费 %s", o->meter_id);
	pg->next = p->pages;
	if (p->pages != NULL)
		p->pages->prev = pg;
	p->pages = pg;
	if (o->channel == PAYPAGE_WECHAT_JSAPI) {
		/* The code for the openid, server to server; the URL carries the
		 * AppSecret (httpc logs URLs without their query). */
		char *code = evhttp_encode_uri(o->oauth_code), *url, *cause = NULL;
		struct httpc_request r;

		xasprintf(&url,
		    "%s/sns/oauth2/access_token?appid=%s&secret=%s&code=%s"
		    "&grant_type=authorization_code",
		    conf->payments_wechat_oauth_api_url, appid, p->keys.wx_app_secret,
		    code != NULL ? code : "");
		memset(&r, 0, sizeof r);
		r.url = url;
		r.method = "GET";
		r.timeout_ms = conf->payments_api_timeout_ms;
		r.tag = "wechat-oauth";
		pg->req =
		    code != NULL ? httpc_send(p->http, &r, payout_page_openid, pg, &cause) : NULL;
		OPENSSL_cleanse(url, strlen(url));
		free(url);
		free(code);
		if (pg->req == NULL) {
			log_error(
			    "payout: pay page order %s: WeChat's openid step cannot be sent: %s",
			    pg->otn, cause != NULL ? cause : "bad code");
			free(cause);
			payout_page_done(pg, PAYPAGE_FAILED, NULL);
		}
		return;
	}
	payout_page_order(pg, NULL);
}

struct payout *
payout_new(struct event_base *base, const struct conf *conf, char *err, size_t errlen)
{
	struct payout *p = xcalloc(1, sizeof *p);
	struct httpc_config hc;
	struct pgconn_handlers ph;

	p->base = base;
	p->conf = conf;
	if (payout_keys_load(conf, &p->keys, err, errlen) != 0) {
		payout_keys_free(&p->keys);
		free(p);
		return NULL;
	}
	memset(&hc, 0, sizeof hc);
	hc.max_host_connections = 256;
	p->http = httpc_new(base, &hc);
	memset(&ph, 0, sizeof ph);
	p->pg = pgconn_new(
	    base, "payout", conf->database_conninfo, conf->database_reconnect_max_ms, &ph);
	p->pump = evtimer_new(base, payout_pump, p);
	payout_arm_tick(p);
	if (payout_providers(p) != NULL)
		log_info("payout: calls to %s%s%s (queries after %s s, timeout %d ms)",
		    p->keys.wx_priv != NULL ? conf->payments_wechat_api_url : "",
		    p->keys.wx_priv != NULL && p->keys.ali_priv != NULL ? " and " : "",
		    p->keys.ali_priv != NULL ? conf->payments_alipay_gateway_url : "",
		    conf->payments_query_after, conf->payments_api_timeout_ms);
	return p;
}

void
payout_reconfigure(struct payout *p, const struct conf *conf)
{
	struct payout_keys k;
	char err[512];

	if (payout_keys_load(conf, &k, err, sizeof err) != 0) {
		log_error("payout: %s; the previous keys stay in use", err);
		payout_keys_free(&k);
	} else {
		payout_keys_free(&p->keys);
		p->keys = k;
	}
	p->conf = conf;
	pgconn_set_conninfo(p->pg, conf->database_conninfo);
	payout_arm_tick(p);
}

void
payout_free(struct payout *p)
{
	if (p == NULL)
		return;
	httpc_free(p->http); /* cancels the calls: their callbacks never run */
	while (p->calls != NULL)
		payout_call_free(p->calls);
	/* The pay page's orders get no answer: paysite_free() answers them. */
	while (p->pages != NULL)
		payout_page_free(p->pages);
	if (p->tick != NULL)
		event_free(p->tick);
	event_free(p->pump);
	while (p->jobs != NULL) {
		struct payout_job *j = p->jobs;

		p->jobs = j->next;
		free(j);
	}
	pgconn_free(p->pg);
	payout_keys_free(&p->keys);
	free(p);
}
