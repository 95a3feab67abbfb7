/*
 * payapi.c: building and signing the outbound payment requests, verifying
 * and reading the answers (payapi.h). No I/O beyond reading a key file.
 * JSON is serialized once here and that buffer is both signed and sent;
 * answers are read from the bytes as they came.
 */
#include <errno.h>
#include <iconv.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <zlib.h>

#include "common.h"
#include "payapi.h"

#define PAYAPI_MAX_PEM (1024 * 1024)
#define PAYAPI_MAX_ANSWER (1024 * 1024)

static const char *const payapi_channel_names[] = {"native", "jsapi", "h5", "precreate", "wap"};

int
payapi_channel_parse(const char *s)
{
	size_t i;

	for (i = 0; s != NULL && i < ARRAY_SIZE(payapi_channel_names); i++)
		if (strcmp(s, payapi_channel_names[i]) == 0)
			return (int)i;
	return -1;
}

const char *
payapi_channel_name(enum payapi_channel ch)
{
	return (size_t)ch < ARRAY_SIZE(payapi_channel_names) ? payapi_channel_names[ch] : "?";
}

bool
payapi_channel_is_wechat(enum payapi_channel ch)
{
	return ch == PAYAPI_WX_NATIVE || ch == PAYAPI_WX_JSAPI || ch == PAYAPI_WX_H5;
}

static int PRINTFLIKE(4, 5) payapi_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

/* ------------------------------------------------------------- keys */

EVP_PKEY *
payapi_privkey_load(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	if (f == NULL) {
		payapi_fail(err, errlen, PAY_EKEY, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	ERR_clear_error();
	if (k == NULL) {
		payapi_fail(err, errlen, PAY_EKEY,
		    "%s: no PEM private key (unencrypted PKCS#8 or PKCS#1)", path);
		return NULL;
	}
	if (EVP_PKEY_base_id(k) != EVP_PKEY_RSA || EVP_PKEY_bits(k) < 2048) {
		payapi_fail(err, errlen, PAY_EKEY, "%s: not an RSA key of 2048 bits or more", path);
		EVP_PKEY_free(k);
		return NULL;
	}
	return k;
}

char *
payapi_sign(EVP_PKEY *key, const void *msg, size_t len)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char *sig = NULL;
	size_t siglen = 0;
	char *out = NULL;

	if (ctx == NULL || key == NULL)
		goto done;
	if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
	    EVP_DigestSign(ctx, NULL, &siglen, msg, len) != 1)
		goto done;
	sig = xmalloc(siglen);
	if (EVP_DigestSign(ctx, sig, &siglen, msg, len) != 1)
		goto done;
	out = xmalloc(4 * ((siglen + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)out, sig, (int)siglen);
done:
	ERR_clear_error();
	free(sig);
	EVP_MD_CTX_free(ctx);
	return out;
}

/* SHA256withRSA over msg against a base64 signature. */
static bool
payapi_verify(EVP_PKEY *key, const char *msg, size_t len, const char *b64)
{
	EVP_MD_CTX *ctx;
	unsigned char *sig;
	size_t blen = strlen(b64);
	int n, pad = 0;
	bool ok = false;

	if (key == NULL || blen == 0 || blen % 4 != 0 || blen > 4096)
		return false;
	if (strspn(b64, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") !=
	    blen)
		return false;
	pad = (b64[blen - 1] == '=') + (b64[blen - 2] == '=');
	sig = xmalloc(blen);
	n = EVP_DecodeBlock(sig, (const unsigned char *)b64, (int)blen);
	ctx = EVP_MD_CTX_new();
	if (n > pad && ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) == 1)
		ok = EVP_DigestVerify(
		         ctx, sig, (size_t)(n - pad), (const unsigned char *)msg, len) == 1;
	ERR_clear_error();
	EVP_MD_CTX_free(ctx);
	free(sig);
	return ok;
}

void
payapi_nonce(char out[33])
{
	static const char set[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	unsigned char r[32];
	int i;

	if (RAND_bytes(r, sizeof r) != 1)
		abort(); /* no randomness: nothing safe to sign */
	for (i = 0; i < 32; i++)
		out[i] = set[r[i] % 62];
	out[32] = '\0';
}

/* ------------------------------------------------------- small values */

void
payapi_yuan(int64_t fen, char *buf, size_t len)
{
	if (fen < 0)
		fen = 0;
	snprintf(buf, len, "%lld.%02d", (long long)(fen / 100), (int)(fen % 100));
}

void
payapi_cn_time(int64_t t, bool rfc3339, char *buf, size_t len)
{
	time_t bj = (time_t)(t + 8 * 3600);
	struct tm tm;

	gmtime_r(&bj, &tm);
	strftime(buf, len, rfc3339 ? "%Y-%m-%dT%H:%M:%S+08:00" : "%Y-%m-%d %H:%M:%S", &tm);
}

void
payapi_cn_yesterday(int64_t t, char *buf, size_t len)
{
	time_t bj = (time_t)(t + 8 * 3600 - 86400);
	struct tm tm;

	gmtime_r(&bj, &tm);
	strftime(buf, len, "%Y-%m-%d", &tm);
}

bool
payapi_trade_no_ok(const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;

	return n >= 6 && n <= 32 &&
	       strspn(s, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-") == n;
}

static char *
payapi_dump(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);

	json_decref(j);
	if (s == NULL)
		abort(); /* jansson fails only for want of memory */
	return s;
}

/* ------------------------------------------------------------ WeChat */

const char *
payapi_wx_order_path(enum payapi_channel ch)
{
	switch (ch) {
	case PAYAPI_WX_NATIVE:
		return "/v3/pay/transactions/native";
	case PAYAPI_WX_JSAPI:
		return "/v3/pay/transactions/jsapi";
	case PAYAPI_WX_H5:
		return "/v3/pay/transactions/h5";
	default:
		return NULL;
	}
}

char *
payapi_wx_order_body(
    enum payapi_channel ch, const struct payapi_wx_order *o, char *err, size_t errlen)
{
	json_t *j;

	if (!payapi_channel_is_wechat(ch)) {
		payapi_fail(err, errlen, PAY_EFORMAT, "not a WeChat Pay channel");
		return NULL;
	}
	if (o->appid == NULL || o->mchid == NULL || o->notify_url == NULL ||
	    !payapi_trade_no_ok(o->out_trade_no) || o->total_fen <= 0) {
		payapi_fail(err, errlen, PAY_EFORMAT,
		    "an order needs appid, mchid, notify_url, a valid out_trade_no and an amount");
		return NULL;
	}
	if (ch == PAYAPI_WX_JSAPI && (o->openid == NULL || o->openid[0] == '\0')) {
		payapi_fail(err, errlen, PAY_EFORMAT, "a JSAPI order needs the payer's openid");
		return NULL;
	}
	if (ch == PAYAPI_WX_H5 && (o->client_ip == NULL || o->client_ip[0] == '\0')) {
		payapi_fail(err, errlen, PAY_EFORMAT, "an H5 order needs the payer's IP address");
		return NULL;
	}
	j = json_object();
	json_object_set_new(j, "appid", json_string(o->appid));
	json_object_set_new(j, "mchid", json_string(o->mchid));
	json_object_set_new(j, "description",
	    json_string(o->description != NULL ? o->description : o->out_trade_no));
	json_object_set_new(j, "out_trade_no", json_string(o->out_trade_no));
	if (o->time_expire != NULL)
		json_object_set_new(j, "time_expire", json_string(o->time_expire));
	json_object_set_new(j, "notify_url", json_string(o->notify_url));
	json_object_set_new(j, "amount",
	    json_pack("{s:I, s:s}", "total", (json_int_t)o->total_fen, "currency", "CNY"));
	if (ch == PAYAPI_WX_JSAPI)
		json_object_set_new(j, "payer", json_pack("{s:s}", "openid", o->openid));
	if (ch == PAYAPI_WX_H5)
		json_object_set_new(j, "scene_info",
		    json_pack("{s:s, s:{s:s}}", "payer_client_ip", o->client_ip, "h5_info", "type",
		        "Wap"));
	if (json_object_size(j) == 0 || json_object_get(j, "description") == NULL) {
		/* a string that is not UTF-8 */
		json_decref(j);
		payapi_fail(err, errlen, PAY_EFORMAT, "a field is not UTF-8");
		return NULL;
	}
	return payapi_dump(j);
}

char *
payapi_wx_query_path(const char *out_trade_no, const char *mchid)
{
	char *s;

	xasprintf(&s, "/v3/pay/transactions/out-trade-no/%s?mchid=%s", out_trade_no, mchid);
	return s;
}

char *
payapi_wx_close_path(const char *out_trade_no)
{
	char *s;

	xasprintf(&s, "/v3/pay/transactions/out-trade-no/%s/close", out_trade_no);
	return s;
}

char *
payapi_wx_close_body(const char *mchid)
{
	return payapi_dump(json_pack("{s:s}", "mchid", mchid));
}

char *
payapi_wx_refund_body(const char *out_trade_no, const char *out_refund_no, int64_t refund_fen,
    int64_t total_fen, const char *reason, const char *notify_url)
{
	json_t *j = json_object();

	json_object_set_new(j, "out_trade_no", json_string(out_trade_no));
	json_object_set_new(j, "out_refund_no", json_string(out_refund_no));
	if (reason != NULL && reason[0] != '\0')
		json_object_set_new(j, "reason", json_string(reason));
	if (notify_url != NULL)
		json_object_set_new(j, "notify_url", json_string(notify_url));
	json_object_set_new(j, "amount",
	    json_pack("{s:I, s:I, s:s}", "refund", (json_int_t)refund_fen, "total",
	        (json_int_t)total_fen, "currency", "CNY"));
	return payapi_dump(j);
}

char *
payapi_wx_refund_query_path(const char *out_refund_no)
{
	char *s;

	xasprintf(&s, "/v3/refund/domestic/refunds/%s", out_refund_no);
	return s;
}

char *
payapi_wx_bill_path(const char *date)
{
	char *s;

	xasprintf(&s, "/v3/bill/tradebill?bill_date=%s&bill_type=ALL", date);
	return s;
}

char *
payapi_wx_message(const char *method, const char *path, int64_t ts, const char *nonce,
    const char *body, size_t len)
{
	struct sbuf b;

	memset(&b, 0, sizeof b);
	sbuf_printf(&b, "%s\n%s\n%lld\n%s\n", method, path, (long long)ts, nonce);
	if (len > 0)
		sbuf_add(&b, body, len);
	sbuf_add(&b, "\n", 1);
	return b.p;
}

char *
payapi_wx_authorization(EVP_PKEY *key, const char *mchid, const char *serial, const char *method,
    const char *path, int64_t ts, const char *nonce, const char *body, size_t len)
{
	char *msg = payapi_wx_message(method, path, ts, nonce, body, len);
	char *sig = payapi_sign(key, msg, strlen(msg));
	char *out = NULL;

	if (sig != NULL)
		xasprintf(&out,
		    "WECHATPAY2-SHA256-RSA2048 mchid=\"%s\",nonce_str=\"%s\",timestamp=\"%lld\","
		    "serial_no=\"%s\",signature=\"%s\"",
		    mchid, nonce, (long long)ts, serial, sig);
	free(sig);
	free(msg);
	return out;
}

json_t *
payapi_wx_jsapi_params(
    EVP_PKEY *key, const char *appid, const char *prepay_id, int64_t ts, const char *nonce)
{
	char tsbuf[24], *pkg, *msg, *sig;
	json_t *j = NULL;

	snprintf(tsbuf, sizeof tsbuf, "%lld", (long long)ts);
	xasprintf(&pkg, "prepay_id=%s", prepay_id);
	xasprintf(&msg, "%s\n%s\n%s\n%s\n", appid, tsbuf, nonce, pkg);
	sig = payapi_sign(key, msg, strlen(msg));
	if (sig != NULL) {
		j = json_object();
		json_object_set_new(j, "appId", json_string(appid));
		json_object_set_new(j, "timeStamp", json_string(tsbuf));
		json_object_set_new(j, "nonceStr", json_string(nonce));
		json_object_set_new(j, "package", json_string(pkg));
		json_object_set_new(j, "signType", json_string("RSA"));
		json_object_set_new(j, "paySign", json_string(sig));
	}
	free(sig);
	free(msg);
	free(pkg);
	return j;
}

static void
payapi_copy(char *dst, size_t n, const char *src)
{
	snprintf(dst, n, "%s", src != NULL ? src : "");
}

int
payapi_wx_trade_parse(
    const char *body, size_t len, struct payapi_trade *t, char *err, size_t errlen)
{
	json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
	json_t *total;
	const char *st;

	memset(t, 0, sizeof *t);
	t->fen = -1;
	if (!json_is_object(j)) {
		json_decref(j);
		return payapi_fail(err, errlen, PAY_EFORMAT, "the answer is not a JSON object");
	}
	st = json_string_value(json_object_get(j, "trade_state"));
	if (st == NULL) {
		json_decref(j);
		return payapi_fail(err, errlen, PAY_EFORMAT, "the answer has no trade_state");
	}
	payapi_copy(t->status, sizeof t->status, st);
	payapi_copy(t->out_trade_no, sizeof t->out_trade_no,
	    json_string_value(json_object_get(j, "out_trade_no")));
	payapi_copy(t->txn, sizeof t->txn, json_string_value(json_object_get(j, "transaction_id")));
	payapi_copy(
	    t->paid_at, sizeof t->paid_at, json_string_value(json_object_get(j, "success_time")));
	total = json_object_get(json_object_get(j, "amount"), "total");
	if (json_is_integer(total) && json_integer_value(total) >= 0)
		t->fen = (int64_t)json_integer_value(total);
	if (strcmp(st, "SUCCESS") == 0)
		t->state = PAYAPI_PAID;
	else if (strcmp(st, "NOTPAY") == 0)
		t->state = PAYAPI_NOTPAY;
	else if (strcmp(st, "CLOSED") == 0)
		t->state = PAYAPI_CLOSED;
	else if (strcmp(st, "REFUND") == 0)
		t->state = PAYAPI_REFUND;
	else
		t->state = PAYAPI_UNKNOWN;
	json_decref(j);
	if ((t->state == PAYAPI_PAID || t->state == PAYAPI_REFUND) &&
	    (t->txn[0] == '\0' || t->fen < 0))
		return payapi_fail(
		    err, errlen, PAY_EFORMAT, "a paid order without transaction_id or amount");
	return PAY_OK;
}

/* ------------------------------------------------------------ Alipay */

/* RFC 3986 unreserved bytes stay; everything else is %XX. */
static void
payapi_url_escape(struct sbuf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	char e[3];

	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		    c == '-' || c == '_' || c == '.' || c == '~') {
			sbuf_add(b, s, 1);
			continue;
		}
		e[0] = '%';
		e[1] = hex[c >> 4];
		e[2] = hex[c & 15];
		sbuf_add(b, e, 3);
	}
}

struct payapi_kv {
	const char *k, *v;
};

static int
payapi_kv_cmp(const void *a, const void *b)
{
	return strcmp(((const struct payapi_kv *)a)->k, ((const struct payapi_kv *)b)->k);
}

int
payapi_ali_request(EVP_PKEY *key, const char *app_id, const char *method, const char *biz_content,
    const char *timestamp, const char *notify_url, const char *return_url,
    struct payapi_ali_req *out)
{
	struct payapi_kv kv[10];
	struct sbuf s, q, body;
	size_t n = 0, i;
	char *sig;

	memset(out, 0, sizeof *out);
	kv[n++] = (struct payapi_kv){"app_id", app_id};
	kv[n++] = (struct payapi_kv){"method", method};
	kv[n++] = (struct payapi_kv){"format", "JSON"};
	kv[n++] = (struct payapi_kv){"charset", "utf-8"};
	kv[n++] = (struct payapi_kv){"sign_type", "RSA2"};
	kv[n++] = (struct payapi_kv){"timestamp", timestamp};
	kv[n++] = (struct payapi_kv){"version", "1.0"};
	if (notify_url != NULL && notify_url[0] != '\0')
		kv[n++] = (struct payapi_kv){"notify_url", notify_url};
	if (return_url != NULL && return_url[0] != '\0')
		kv[n++] = (struct payapi_kv){"return_url", return_url};
	kv[n++] = (struct payapi_kv){"biz_content", biz_content};
	qsort(kv, n, sizeof kv[0], payapi_kv_cmp);
	memset(&s, 0, sizeof s);
	for (i = 0; i < n; i++)
		sbuf_printf(&s, "%s%s=%s", i > 0 ? "&" : "", kv[i].k, kv[i].v);
	sig = payapi_sign(key, s.p, s.len);
	if (sig == NULL) {
		free(s.p);
		return PAY_EKEY;
	}
	memset(&q, 0, sizeof q);
	memset(&body, 0, sizeof body);
	for (i = 0; i < n; i++) {
		struct sbuf *b = strcmp(kv[i].k, "biz_content") == 0 ? &body : &q;

		sbuf_printf(b, "%s%s=", b->len > 0 ? "&" : "", kv[i].k);
		payapi_url_escape(b, kv[i].v);
	}
	sbuf_adds(&q, "&sign=");
	payapi_url_escape(&q, sig);
	free(sig);
	out->query = q.p;
	out->body = body.p;
	out->signed_string = s.p;
	return PAY_OK;
}

void
payapi_ali_req_free(struct payapi_ali_req *r)
{
	free(r->query);
	free(r->body);
	free(r->signed_string);
	memset(r, 0, sizeof *r);
}

char *
payapi_ali_page_url(const char *gateway, const struct payapi_ali_req *r)
{
	char *s;

	xasprintf(&s, "%s?%s&%s", gateway, r->query, r->body);
	return s;
}

char *
payapi_ali_biz_precreate(
    const char *out_trade_no, int64_t fen, const char *subject, const char *timeout_express)
{
	char yuan[32];
	json_t *j = json_object();

	payapi_yuan(fen, yuan, sizeof yuan);
	json_object_set_new(j, "out_trade_no", json_string(out_trade_no));
	json_object_set_new(j, "total_amount", json_string(yuan));
	json_object_set_new(j, "subject", json_string(subject != NULL ? subject : out_trade_no));
	if (timeout_express != NULL)
		json_object_set_new(j, "timeout_express", json_string(timeout_express));
	return payapi_dump(j);
}

char *
payapi_ali_biz_wap(const char *out_trade_no, int64_t fen, const char *subject, const char *quit_url,
    const char *timeout_express)
{
	char yuan[32];
	json_t *j = json_object();

	payapi_yuan(fen, yuan, sizeof yuan);
	json_object_set_new(j, "out_trade_no", json_string(out_trade_no));
	json_object_set_new(j, "total_amount", json_string(yuan));
	json_object_set_new(j, "subject", json_string(subject != NULL ? subject : out_trade_no));
	json_object_set_new(j, "product_code", json_string("QUICK_WAP_WAY"));
	if (quit_url != NULL)
		json_object_set_new(j, "quit_url", json_string(quit_url));
	if (timeout_express != NULL)
		json_object_set_new(j, "timeout_express", json_string(timeout_express));
	return payapi_dump(j);
}

char *
payapi_ali_biz_trade(const char *out_trade_no)
{
	return payapi_dump(json_pack("{s:s}", "out_trade_no", out_trade_no));
}

char *
payapi_ali_biz_refund(
    const char *out_trade_no, int64_t fen, const char *out_request_no, const char *reason)
{
	char yuan[32];
	json_t *j = json_object();

	payapi_yuan(fen, yuan, sizeof yuan);
	json_object_set_new(j, "out_trade_no", json_string(out_trade_no));
	json_object_set_new(j, "refund_amount", json_string(yuan));
	if (reason != NULL && reason[0] != '\0')
		json_object_set_new(j, "refund_reason", json_string(reason));
	json_object_set_new(j, "out_request_no", json_string(out_request_no));
	return payapi_dump(j);
}

char *
payapi_ali_biz_bill(const char *date)
{
	return payapi_dump(json_pack("{s:s, s:s}", "bill_type", "trade", "bill_date", date));
}

/* --- the exact text of a member */

static size_t
payapi_ws(const char *b, size_t i, size_t len)
{
	while (i < len && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n'))
		i++;
	return i;
}

/* b[*i] is '"': past the closing quote. */
static int
payapi_skip_string(const char *b, size_t *i, size_t len)
{
	size_t k = *i + 1;

	while (k < len && b[k] != '"') {
		if (b[k] == '\\')
			k++;
		k++;
	}
	if (k >= len)
		return -1;
	*i = k + 1;
	return 0;
}

static int
payapi_skip_value(const char *b, size_t *i, size_t len)
{
	size_t k = *i;
	int depth = 0;

	if (k >= len)
		return -1;
	if (b[k] == '"')
		return payapi_skip_string(b, i, len);
	if (b[k] != '{' && b[k] != '[') {
		while (k < len && strchr(",}] \t\r\n", b[k]) == NULL)
			k++;
		if (k == *i)
			return -1;
		*i = k;
		return 0;
	}
	while (k < len) {
		if (b[k] == '"') {
			if (payapi_skip_string(b, &k, len) != 0)
				return -1;
			continue;
		}
		if (b[k] == '{' || b[k] == '[')
			depth++;
		else if (b[k] == '}' || b[k] == ']') {
			if (--depth == 0) {
				*i = k + 1;
				return 0;
			}
		}
		k++;
	}
	return -1;
}

int
payapi_json_member_span(const char *body, size_t len, const char *name, size_t *off, size_t *n)
{
	size_t i = payapi_ws(body, 0, len), ks, ke, vs, nlen = strlen(name);

	if (i >= len || body[i] != '{')
		return PAY_EFORMAT;
	i++;
	for (;;) {
		i = payapi_ws(body, i, len);
		if (i >= len || body[i] != '"')
			return PAY_EFORMAT;
		ks = i + 1;
		if (payapi_skip_string(body, &i, len) != 0)
			return PAY_EFORMAT;
		ke = i - 1;
		i = payapi_ws(body, i, len);
		if (i >= len || body[i] != ':')
			return PAY_EFORMAT;
		i = payapi_ws(body, i + 1, len);
		vs = i;
		if (payapi_skip_value(body, &i, len) != 0)
			return PAY_EFORMAT;
		if (ke - ks == nlen && memcmp(body + ks, name, nlen) == 0 && body[vs] == '{') {
			*off = vs;
			*n = i - vs;
			return PAY_OK;
		}
		i = payapi_ws(body, i, len);
		if (i < len && body[i] == ',') {
			i++;
			continue;
		}
		return PAY_EFORMAT;
	}
}

int
payapi_ali_answer(EVP_PKEY *alipay_key, const char *method, const char *body, size_t len,
    json_t **resp, char *err, size_t errlen)
{
	char name[96], *p;
	size_t off, n, i, k;
	json_t *j, *r;
	const char *sign;
	bool ok;

	*resp = NULL;
	if (len > PAYAPI_MAX_ANSWER)
		return payapi_fail(
		    err, errlen, PAY_EFORMAT, "answer over %d bytes", PAYAPI_MAX_ANSWER);
	snprintf(name, sizeof name, "%s_response", method);
	for (p = name; *p != '\0'; p++)
		if (*p == '.')
			*p = '_';
	j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_object(j)) {
		json_decref(j);
		return payapi_fail(err, errlen, PAY_EFORMAT, "the answer is not a JSON object");
	}
	if ((r = json_object_get(j, name)) == NULL) {
		r = json_object_get(j, "error_response");
		snprintf(name, sizeof name, "error_response");
	}
	sign = json_string_value(json_object_get(j, "sign"));
	if (!json_is_object(r) || payapi_json_member_span(body, len, name, &off, &n) != PAY_OK) {
		json_decref(j);
		return payapi_fail(err, errlen, PAY_EFORMAT, "the answer has no %s", name);
	}
	if (sign == NULL) {
		json_decref(j);
		return payapi_fail(err, errlen, PAY_ESIG, "the answer is not signed");
	}
	ok = payapi_verify(alipay_key, body + off, n, sign);
	if (!ok && memmem(body + off, n, "\\/", 2) != NULL) {
		p = xmalloc(n);
		for (i = 0, k = 0; i < n; i++) {
			if (body[off + i] == '\\' && i + 1 < n && body[off + i + 1] == '/')
				continue;
			p[k++] = body[off + i];
		}
		ok = payapi_verify(alipay_key, p, k, sign);
		free(p);
	}
	if (!ok) {
		json_decref(j);
		return payapi_fail(err, errlen, PAY_ESIG, "the answer's sign does not verify");
	}
	*resp = json_incref(r);
	json_decref(j);
	return PAY_OK;
}

int
payapi_ali_trade_parse(const json_t *resp, struct payapi_trade *t, char *err, size_t errlen)
{
	const char *code = json_string_value(json_object_get(resp, "code"));
	const char *sub = json_string_value(json_object_get(resp, "sub_code"));
	const char *st, *amount, *date;

	memset(t, 0, sizeof *t);
	t->fen = -1;
	if (code == NULL)
		return payapi_fail(err, errlen, PAY_EFORMAT, "the answer has no code");
	if (strcmp(code, "10000") != 0) {
		payapi_copy(t->status, sizeof t->status, sub != NULL ? sub : code);
		t->state = sub != NULL && strcmp(sub, "ACQ.TRADE_NOT_EXIST") == 0 ? PAYAPI_NOTEXIST
		                                                                  : PAYAPI_UNKNOWN;
		return PAY_OK;
	}
	st = json_string_value(json_object_get(resp, "trade_status"));
	if (st == NULL)
		return payapi_fail(err, errlen, PAY_EFORMAT, "the answer has no trade_status");
	payapi_copy(t->status, sizeof t->status, st);
	payapi_copy(t->out_trade_no, sizeof t->out_trade_no,
	    json_string_value(json_object_get(resp, "out_trade_no")));
	payapi_copy(t->txn, sizeof t->txn, json_string_value(json_object_get(resp, "trade_no")));
	date = json_string_value(json_object_get(resp, "send_pay_date"));
	if (date != NULL && strlen(date) == 19)
		snprintf(t->paid_at, sizeof t->paid_at, "%s+08", date);
	amount = json_string_value(json_object_get(resp, "total_amount"));
	if (amount != NULL && pay_money_parse(amount, strlen(amount), &t->fen) != PAY_OK)
		t->fen = -1;
	if (strcmp(st, "TRADE_SUCCESS") == 0 || strcmp(st, "TRADE_FINISHED") == 0)
		t->state = PAYAPI_PAID;
	else if (strcmp(st, "WAIT_BUYER_PAY") == 0)
		t->state = PAYAPI_NOTPAY;
	else if (strcmp(st, "TRADE_CLOSED") == 0)
		t->state = PAYAPI_CLOSED;
	else
		t->state = PAYAPI_UNKNOWN;
	if (t->state == PAYAPI_PAID && (t->txn[0] == '\0' || t->fen <= 0))
		return payapi_fail(
		    err, errlen, PAY_EFORMAT, "a paid trade without trade_no or amount");
	return PAY_OK;
}

/* ------------------------------------------------------------- bills */

void
payapi_bill_free(struct payapi_bill *b)
{
	free(b->rows);
	memset(b, 0, sizeof *b);
}

static struct payapi_bill_row *
payapi_bill_add(struct payapi_bill *b)
{
	struct payapi_bill_row *r;

	b->rows = xreallocarray(b->rows, b->n + 1, sizeof *b->rows);
	r = &b->rows[b->n++];
	memset(r, 0, sizeof *r);
	return r;
}

/* Split one line into at most max fields on sep (a string); fields are
 * pointers into line, which is modified. */
static size_t
payapi_split(char *line, const char *sep, char **f, size_t max)
{
	size_t n = 0, sl = strlen(sep);
	char *p = line, *q;

	while (n < max) {
		f[n++] = p;
		if ((q = strstr(p, sep)) == NULL)
			break;
		*q = '\0';
		p = q + sl;
	}
	return n;
}

static char *
payapi_trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t' || *s == '`')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

static int
payapi_col(char **h, size_t n, const char *name)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(payapi_trim(h[i]), name) == 0)
			return (int)i;
	return -1;
}

#define PAYAPI_BILL_COLS 64

/* Lines of buf (a copy, NUL-terminated), LF or CRLF. */
static char *
payapi_next_line(char **p)
{
	char *s = *p, *e;

	if (s == NULL || *s == '\0')
		return NULL;
	e = strchr(s, '\n');
	if (e != NULL) {
		*e = '\0';
		*p = e + 1;
	} else
		*p = NULL;
	if ((e = strchr(s, '\r')) != NULL && e[1] == '\0')
		*e = '\0';
	return s;
}

static int
payapi_bill_money(const char *s, int64_t *fen)
{
	if (*s == '-')
		s++;
	return pay_money_parse(s, strlen(s), fen);
}

int
payapi_wx_bill_parse(const char *csv, size_t len, struct payapi_bill *b, char *err, size_t errlen)
{
	char *buf = xmalloc(len + 1), *p, *line, *h[PAYAPI_BILL_COLS], *f[PAYAPI_BILL_COLS];
	size_t nh, nf;
	int ctxn, cotn, cst, camt, crefund, rc = PAY_OK;
	long lineno = 1;

	memset(b, 0, sizeof *b);
	memcpy(buf, csv, len);
	buf[len] = '\0';
	if (strlen(buf) != len) {
		free(buf);
		return payapi_fail(err, errlen, PAY_EFORMAT, "the bill holds a NUL byte");
	}
	p = buf;
	if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
		p += 3;
	if ((line = payapi_next_line(&p)) == NULL) {
		free(buf);
		return payapi_fail(err, errlen, PAY_EFORMAT, "an empty bill");
	}
	nh = payapi_split(line, ",", h, PAYAPI_BILL_COLS);
	ctxn = payapi_col(h, nh, "微信订单号");
	cotn = payapi_col(h, nh, "商户订单号");
	cst = payapi_col(h, nh, "交易状态");
	camt = payapi_col(h, nh, "订单金额");
	if (camt < 0)
		camt = payapi_col(h, nh, "应结订单金额");
	crefund = payapi_col(h, nh, "退款金额");
	if (ctxn < 0 || cotn < 0 || cst < 0 || camt < 0) {
		free(buf);
		return payapi_fail(err, errlen, PAY_EFORMAT,
		    "the bill's header lacks 微信订单号, 商户订单号, 交易状态 or 订单金额");
	}
	while ((line = payapi_next_line(&p)) != NULL) {
		const char *st;
		struct payapi_bill_row *r;
		int64_t fen;

		lineno++;
		if (*payapi_trim(line) == '\0')
			continue;
		if (strncmp(line, "总交易单数", strlen("总交易单数")) == 0)
			break;
		nf = payapi_split(line, ",`", f, PAYAPI_BILL_COLS);
		if (nf != nh) {
			rc = payapi_fail(err, errlen, PAY_EFORMAT,
			    "bill line %ld: %zu fields, not %zu", lineno, nf, nh);
			break;
		}
		st = payapi_trim(f[cst]);
		if (strcmp(st, "SUCCESS") != 0 && strcmp(st, "REFUND") != 0)
			continue;
		r = payapi_bill_add(b);
		r->refund = strcmp(st, "REFUND") == 0;
		snprintf(r->txn, sizeof r->txn, "%s", payapi_trim(f[ctxn]));
		snprintf(r->otn, sizeof r->otn, "%s", payapi_trim(f[cotn]));
		if ((r->refund && crefund < 0) ||
		    payapi_bill_money(payapi_trim(f[r->refund ? crefund : camt]), &fen) != PAY_OK ||
		    r->txn[0] == '\0') {
			rc = payapi_fail(err, errlen, PAY_EFORMAT,
			    "bill line %ld: no transaction id or amount", lineno);
			break;
		}
		r->fen = fen;
	}
	free(buf);
	if (rc != PAY_OK)
		payapi_bill_free(b);
	return rc;
}

int
payapi_ali_bill_parse(const char *csv, size_t len, struct payapi_bill *b, char *err, size_t errlen)
{
	char *buf = xmalloc(len + 1), *p, *line, *h[PAYAPI_BILL_COLS], *f[PAYAPI_BILL_COLS];
	size_t nh = 0, nf;
	int ctxn = -1, cotn = -1, ckind = -1, camt = -1, rc = PAY_OK;
	long lineno = 0;

	memset(b, 0, sizeof *b);
	memcpy(buf, csv, len);
	buf[len] = '\0';
	p = buf;
	if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
		p += 3;
	while ((line = payapi_next_line(&p)) != NULL) {
		struct payapi_bill_row *r;
		const char *kind;
		int64_t fen;

		lineno++;
		if (line[0] == '#' || *payapi_trim(line) == '\0') {
			if (nh > 0 && line[0] == '#')
				break; /* the end of the detail */
			continue;
		}
		if (nh == 0) {
			nh = payapi_split(line, ",", h, PAYAPI_BILL_COLS);
			ctxn = payapi_col(h, nh, "支付宝交易号");
			cotn = payapi_col(h, nh, "商户订单号");
			ckind = payapi_col(h, nh, "业务类型");
			camt = payapi_col(h, nh, "订单金额（元）");
			if (ctxn < 0 || cotn < 0 || ckind < 0 || camt < 0) {
				rc = payapi_fail(err, errlen, PAY_EFORMAT,
				    "the bill's header lacks 支付宝交易号, 商户订单号, 业务类型 or "
				    "订单金额（元）");
				break;
			}
			continue;
		}
		nf = payapi_split(line, ",", f, PAYAPI_BILL_COLS);
		if (nf < nh) {
			rc = payapi_fail(err, errlen, PAY_EFORMAT,
			    "bill line %ld: %zu fields, not %zu", lineno, nf, nh);
			break;
		}
		kind = payapi_trim(f[ckind]);
		if (strcmp(kind, "交易") != 0 && strcmp(kind, "退款") != 0)
			continue;
		r = payapi_bill_add(b);
		r->refund = strcmp(kind, "退款") == 0;
		snprintf(r->txn, sizeof r->txn, "%s", payapi_trim(f[ctxn]));
		snprintf(r->otn, sizeof r->otn, "%s", payapi_trim(f[cotn]));
		if (payapi_bill_money(payapi_trim(f[camt]), &fen) != PAY_OK || r->txn[0] == '\0') {
			rc = payapi_fail(err, errlen, PAY_EFORMAT,
			    "bill line %ld: no trade number or amount", lineno);
			break;
		}
		r->fen = fen;
	}
	if (rc == PAY_OK && nh == 0)
		rc = payapi_fail(err, errlen, PAY_EFORMAT, "the bill has no header");
	free(buf);
	if (rc != PAY_OK)
		payapi_bill_free(b);
	return rc;
}

char *
payapi_bill_json(const struct payapi_bill *b)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; i < b->n; i++)
		json_array_append_new(
		    a, json_pack("{s:s, s:s, s:s, s:I}", "txn", b->rows[i].txn, "otn",
		           b->rows[i].otn, "kind", b->rows[i].refund ? "refund" : "payment", "fen",
		           (json_int_t)b->rows[i].fen));
	return payapi_dump(a);
}

void
payapi_sha1_hex(const void *buf, size_t len, char out[41])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0, i;

	EVP_Digest(buf, len, md, &n, EVP_sha1(), NULL);
	for (i = 0; i < n && i < 20; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	out[2 * (n < 20 ? n : 20)] = '\0';
}

static uint32_t
payapi_le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t
payapi_le16(const unsigned char *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

#define PAYAPI_UNZIP_MAX (64 * 1024 * 1024)

int
payapi_unzip_detail(
    const void *zip, size_t len, char **out, size_t *outlen, char *err, size_t errlen)
{
	const unsigned char *z = zip, *e = NULL, *c;
	size_t i, co, count, k;

	*out = NULL;
	*outlen = 0;
	for (i = len >= 22 ? len - 22 : 0; len >= 22; i--) {
		if (payapi_le32(z + i) == 0x06054b50) {
			e = z + i;
			break;
		}
		if (i == 0 || len - i > 22 + 65535)
			break;
	}
	if (e == NULL)
		return payapi_fail(err, errlen, PAY_EFORMAT, "not a ZIP archive");
	count = payapi_le16(e + 10);
	co = payapi_le32(e + 16); /* offsets, never pointers past the buffer */
	for (k = 0; k < count; k++) {
		size_t nlen, xlen, clen, method, csize, usize, off, data;
		z_stream zs;
		int zr;

		if (co > len || len - co < 46 || payapi_le32(z + co) != 0x02014b50)
			return payapi_fail(err, errlen, PAY_EFORMAT, "a bad ZIP central directory");
		c = z + co;
		method = payapi_le16(c + 10);
		csize = payapi_le32(c + 20);
		usize = payapi_le32(c + 24);
		nlen = payapi_le16(c + 28);
		xlen = payapi_le16(c + 30);
		clen = payapi_le16(c + 32);
		off = payapi_le32(c + 42);
		if (len - co - 46 < nlen)
			return payapi_fail(err, errlen, PAY_EFORMAT, "a bad ZIP central directory");
		if (memchr(c + 46, '(', nlen) != NULL) {
			co += 46 + nlen + xlen + clen;
			continue;
		}
		if (off + 30 > len || payapi_le32(z + off) != 0x04034b50)
			return payapi_fail(err, errlen, PAY_EFORMAT, "a bad ZIP local header");
		data = off + 30 + payapi_le16(z + off + 26) + payapi_le16(z + off + 28);
		if (data > len || csize > len - data || usize > PAYAPI_UNZIP_MAX)
			return payapi_fail(err, errlen, PAY_EFORMAT, "a ZIP entry out of bounds");
		*out = xmalloc(usize + 1);
		if (method == 0 && csize == usize) {
			memcpy(*out, z + data, usize);
		} else if (method == 8) {
			memset(&zs, 0, sizeof zs);
			if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
				free(*out);
				*out = NULL;
				return payapi_fail(err, errlen, PAY_EFORMAT, "zlib cannot start");
			}
			zs.next_in = (unsigned char *)(uintptr_t)(z + data);
			zs.avail_in = (uInt)csize;
			zs.next_out = (unsigned char *)*out;
			zs.avail_out = (uInt)usize;
			zr = inflate(&zs, Z_FINISH);
			inflateEnd(&zs);
			if (zr != Z_STREAM_END || zs.total_out != usize) {
				free(*out);
				*out = NULL;
				return payapi_fail(
				    err, errlen, PAY_EFORMAT, "a ZIP entry does not inflate");
			}
		} else {
			free(*out);
			*out = NULL;
			return payapi_fail(err, errlen, PAY_EFORMAT, "ZIP method %zu", method);
		}
		(*out)[usize] = '\0';
		*outlen = usize;
		return PAY_OK;
	}
	return payapi_fail(err, errlen, PAY_EFORMAT, "no detail file in the ZIP archive");
}

char *
payapi_gbk_to_utf8(const char *in, size_t len, size_t *outlen)
{
	iconv_t cd = iconv_open("UTF-8", "GB18030");
	size_t cap = len * 2 + 16, left = cap, inleft = len;
	char *out, *o, *i = (char *)(uintptr_t)in;

	if (cd == (iconv_t)-1)
		return NULL;
	out = o = xmalloc(cap + 1);
	if (iconv(cd, &i, &inleft, &o, &left) == (size_t)-1) {
		iconv_close(cd);
		free(out);
		return NULL;
	}
	iconv_close(cd);
	*o = '\0';
	*outlen = (size_t)(o - out);
	return out;
}
