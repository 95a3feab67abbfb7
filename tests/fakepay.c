/*
 * fakepay.c: fake WeChat Pay v3 and Alipay OpenAPI servers for the tests, a
 * real HTTP server on loopback. It checks the merchant's signature as the
 * providers do (reference/payments-outbound.md section 6), signs its
 * answers with the providers' keys, keeps orders and refunds, and lets a
 * test pay an order, inject faults and read what it holds. It shares no
 * code with src/payapi.c on purpose: a fake that reused the client's
 * signer would agree with its bugs.
 *
 * Usage: fakepay PORT KEYDIR LOGFILE MERCHANT_SERIAL
 * KEYDIR holds wx_merchant.pub (the merchant's public key), wx_platform.key
 * and wx_platform.pem (signs WeChat answers; its serial goes in
 * Wechatpay-Serial), ali_app.pub (the app's public key) and alipay.key
 * (signs Alipay answers). Prints "fakepay: listening on PORT" when ready.
 * Each request is a line in LOGFILE: "METHOD URI -> STATUS CODE".
 *
 * WeChat: POST /v3/pay/transactions/{native,jsapi,h5},
 *   GET /v3/pay/transactions/out-trade-no/NO?mchid=M, POST .../NO/close,
 *   POST /v3/refund/domestic/refunds, GET /v3/refund/domestic/refunds/NO.
 * Alipay: /gateway.do, methods alipay.trade.precreate, .wap.pay (GET, an
 *   HTML page), .query, .close, .refund.
 * WeChat's openid step (Official Accounts, snsapi_base): GET
 *   /connect/oauth2/authorize?appid=&redirect_uri=&response_type=code&
 *   scope=snsapi_base&state= redirects (302) to redirect_uri?code=&state=
 *   with a new code; GET /sns/oauth2/access_token?appid=&secret=&code=&
 *   grant_type=authorization_code answers the code's openid once (the
 *   secret is KEYDIR/wx_app.secret, when that file exists), else
 *   {"errcode":40029} (a code used or unknown) or 40125 (a wrong secret).
 * Test hooks:
 *   POST /_fake/order?provider=P&out_trade_no=NO&fen=N  an order made
 *        elsewhere (WeChat NOTPAY; Alipay WAIT_BUYER_PAY, scanned)
 *   POST /_fake/pay?provider=P&out_trade_no=NO[&fen=N]  pay (creating the
 *        order when unknown); answers {"txn":..,"fen":..}
 *   POST /_fake/fault?mode=M[&count=N]  the next N provider calls (-1: all)
 *        get M: timeout (never answered), 500 (SYSTEM_ERROR), 429,
 *        notexist (ORDER_NOT_EXIST / ACQ.TRADE_NOT_EXIST), badsig (the
 *        answer's signature is wrong), none
 *   POST /_fake/refund_mode?mode=success|processing  how refunds end
 *   POST /_fake/refund_done?provider=P&no=NO  a refund processing succeeds
 *   POST /_fake/refund_notify?no=NO&url=URL  a WeChat refund processing
 *        succeeds and its REFUND.SUCCESS notification (encrypted with
 *        KEYDIR/apiv3.key, signed) is posted to URL; answers {"status":N}
 *   POST /_fake/delay?ms=N  provider calls answered N ms late (0: at once)
 *   GET  /_fake/stats  {"calls":N,"max_in_flight":M} (M: delayed at once)
 *   POST /_fake/amend?provider=P&out_trade_no=NO&bill_fen=N  the bill shows
 *        another amount for that order
 *   GET  /_fake/orders, GET /_fake/refunds  what the fake holds (JSON)
 * Bills: GET /v3/bill/tradebill (signed answer with a download_url and the
 * SHA-1), GET /v3/billdownload/file?token= (the CSV, signed request,
 * unsigned answer); alipay.data.dataservice.bill.downloadurl.query, then
 * GET /_bill/TOKEN (a ZIP of GBK CSVs). Paid orders of the Beijing day.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>
#include <iconv.h>
#include <stdint.h>
#include <zlib.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "common.h"

struct fp_order {
	char provider[8];
	char otn[65];
	char kind[16]; /* native, jsapi, h5, precreate, wap, hook */
	char *body; /* the prepay body, for idempotency */
	long long fen;
	long long refunded;
	char state[20]; /* NOTPAY, SUCCESS, CLOSED, REFUND / WAIT_BUYER_PAY, TRADE_... */
	char txn[40];
	char paid_at[40];
	bool scanned; /* Alipay precreate: exists at the provider only once scanned */
	int closes, queries;
	long long bill_fen; /* >0: the amount the bill shows instead */
	char openid[64]; /* JSAPI: payer.openid */
	char client_ip[48]; /* H5: scene_info.payer_client_ip */
};

/* Codes of the openid step: each gives its openid once. */
struct fp_code {
	char code[40];
	char openid[40];
	bool used;
};
static struct fp_code fp_codes[256];
static size_t fp_ncodes;
static char fp_wx_secret[129]; /* the Official Account's AppSecret */

struct fp_refund {
	char provider[8];
	char no[65];
	char otn[65];
	long long fen;
	char status[16];
	char id[40];
};

static struct event_base *fp_base;
static FILE *fp_log;
static EVP_PKEY *fp_wx_merchant, *fp_wx_platform, *fp_ali_app, *fp_alipay_key;
static char *fp_platform_serial;
static unsigned char fp_apiv3[32]; /* encrypts the notifications it sends */
static const char *fp_merchant_serial;
static struct fp_order *fp_orders;
static size_t fp_norders;
static struct fp_refund *fp_refunds;
static size_t fp_nrefunds;
static char fp_fault[16] = "none";
static long fp_fault_count;
static bool fp_refund_processing;
static long fp_delay_ms; /* provider calls answered after this */
static long fp_inflight, fp_max_inflight, fp_calls;
static unsigned long fp_seq;
static long fp_port;

/* Bill files served once by token: WeChat CSV, Alipay ZIP. */
struct fp_file {
	char token[24];
	char *data;
	size_t len;
	const char *ctype;
};
static struct fp_file fp_files[64];
static size_t fp_nfiles;

/* ------------------------------------------------------------ crypto */

static EVP_PKEY *
fp_load(const char *dir, const char *name, bool priv)
{
	char path[1024];
	FILE *f;
	EVP_PKEY *k;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	if ((f = fopen(path, "r")) == NULL) {
		fprintf(stderr, "fakepay: %s: %s\n", path, strerror(errno));
		exit(2);
	}
	k = priv ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (k == NULL) {
		fprintf(stderr, "fakepay: %s: not a PEM key\n", path);
		exit(2);
	}
	return k;
}

static char *
fp_cert_serial(const char *dir)
{
	char path[1024], *hex, *out;
	FILE *f;
	X509 *x;
	BIGNUM *bn;

	snprintf(path, sizeof path, "%s/wx_platform.pem", dir);
	if ((f = fopen(path, "r")) == NULL || (x = PEM_read_X509(f, NULL, NULL, NULL)) == NULL) {
		fprintf(stderr, "fakepay: %s: no certificate\n", path);
		exit(2);
	}
	fclose(f);
	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	hex = BN_bn2hex(bn);
	out = xstrdup(hex);
	OPENSSL_free(hex);
	BN_free(bn);
	X509_free(x);
	return out;
}

static char *
fp_sign(EVP_PKEY *k, const char *msg, size_t len)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char sig[1024];
	size_t n = sizeof sig;
	char *out = xmalloc(2048);

	if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k) != 1 ||
	    EVP_DigestSign(ctx, sig, &n, (const unsigned char *)msg, len) != 1) {
		fprintf(stderr, "fakepay: signing failed\n");
		exit(1);
	}
	EVP_MD_CTX_free(ctx);
	EVP_EncodeBlock((unsigned char *)out, sig, (int)n);
	return out;
}

static bool
fp_verify(EVP_PKEY *k, const char *msg, size_t len, const char *b64)
{
	unsigned char sig[1024];
	EVP_MD_CTX *ctx;
	size_t bl = b64 != NULL ? strlen(b64) : 0;
	int n;
	bool ok;

	if (bl == 0 || bl > 1300 || bl % 4 != 0)
		return false;
	n = EVP_DecodeBlock(sig, (const unsigned char *)b64, (int)bl);
	if (n <= 0)
		return false;
	n -= (b64[bl - 1] == '=') + (b64[bl - 2] == '=');
	ctx = EVP_MD_CTX_new();
	ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, k) == 1 &&
	     EVP_DigestVerify(ctx, sig, (size_t)n, (const unsigned char *)msg, len) == 1;
	EVP_MD_CTX_free(ctx);
	ERR_clear_error();
	return ok;
}

/* ------------------------------------------------------------ store */

static struct fp_order *
fp_order_find(const char *provider, const char *otn)
{
	size_t i;

	for (i = 0; i < fp_norders; i++)
		if (strcmp(fp_orders[i].provider, provider) == 0 &&
		    strcmp(fp_orders[i].otn, otn) == 0)
			return &fp_orders[i];
	return NULL;
}

static struct fp_order *
fp_order_add(const char *provider, const char *otn, const char *kind, long long fen)
{
	struct fp_order *o;

	fp_orders = xreallocarray(fp_orders, fp_norders + 1, sizeof *fp_orders);
	o = &fp_orders[fp_norders++];
	memset(o, 0, sizeof *o);
	snprintf(o->provider, sizeof o->provider, "%s", provider);
	snprintf(o->otn, sizeof o->otn, "%s", otn);
	snprintf(o->kind, sizeof o->kind, "%s", kind);
	snprintf(o->state, sizeof o->state, "%s",
	    strcmp(provider, "wechat") == 0 ? "NOTPAY" : "WAIT_BUYER_PAY");
	o->fen = fen;
	return o;
}

static void
fp_now(bool rfc3339, char *buf, size_t len)
{
	time_t t = time(NULL) + 8 * 3600;
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(buf, len, rfc3339 ? "%Y-%m-%dT%H:%M:%S+08:00" : "%Y-%m-%d %H:%M:%S", &tm);
}

static void
fp_pay(struct fp_order *o)
{
	fp_seq++;
	if (strcmp(o->provider, "wechat") == 0) {
		snprintf(o->txn, sizeof o->txn, "42000%015lu", fp_seq);
		snprintf(o->state, sizeof o->state, "SUCCESS");
		fp_now(true, o->paid_at, sizeof o->paid_at);
	} else {
		snprintf(o->txn, sizeof o->txn, "2026%020lu", fp_seq);
		snprintf(o->state, sizeof o->state, "TRADE_SUCCESS");
		fp_now(false, o->paid_at, sizeof o->paid_at);
	}
	o->scanned = true;
}

/* ------------------------------------------------------------ replies */

static const char *
fp_method(struct evhttp_request *req)
{
	switch (evhttp_request_get_command(req)) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_POST:
		return "POST";
	default:
		return "OTHER";
	}
}

static void
fp_reply(
    struct evhttp_request *req, int code, const char *ctype, const char *body, const char *what)
{
	struct evbuffer *b = evbuffer_new();
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	if (ctype != NULL)
		evhttp_add_header(h, "Content-Type", ctype);
	if (body != NULL)
		evbuffer_add(b, body, strlen(body));
	fprintf(fp_log, "%s %s -> %d %s\n", fp_method(req), evhttp_request_get_uri(req), code,
	    what != NULL ? what : "");
	fflush(fp_log);
	evhttp_send_reply(req, code, code < 300 ? "OK" : "Error", b);
	evbuffer_free(b);
}

/* A WeChat answer: 2xx signed with the platform key, errors unsigned. */
static void
fp_wx_reply(struct evhttp_request *req, int code, const char *body, const char *what)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	char ts[24], nonce[40], *msg, *sig, rid[40];

	snprintf(rid, sizeof rid, "fake-%lu", ++fp_seq);
	evhttp_add_header(h, "Request-ID", rid);
	if (code < 300) {
		snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
		snprintf(nonce, sizeof nonce, "N%lu", fp_seq);
		xasprintf(&msg, "%s\n%s\n%s\n", ts, nonce, body != NULL ? body : "");
		sig = fp_sign(fp_wx_platform, msg, strlen(msg));
		if (strcmp(fp_fault, "badsig") == 0)
			sig[10] = sig[10] == 'A' ? 'B' : 'A';
		evhttp_add_header(h, "Wechatpay-Timestamp", ts);
		evhttp_add_header(h, "Wechatpay-Nonce", nonce);
		evhttp_add_header(h, "Wechatpay-Signature", sig);
		evhttp_add_header(h, "Wechatpay-Serial", fp_platform_serial);
		free(sig);
		free(msg);
	}
	fp_reply(req, code, body != NULL ? "application/json" : NULL, body, what);
}

static void
fp_wx_error(struct evhttp_request *req, int code, const char *ecode, const char *message)
{
	json_t *j = json_pack("{s:s, s:s}", "code", ecode, "message", message);
	char *s = json_dumps(j, JSON_COMPACT);

	fp_wx_reply(req, code, s, ecode);
	free(s);
	json_decref(j);
}

/* An Alipay answer: {"<m>_response":inner,"sign":...}, signed over inner. */
static void
fp_ali_reply(struct evhttp_request *req, const char *method, json_t *inner, bool sign)
{
	char name[96], *p, *in, *sig = NULL, *body;

	snprintf(name, sizeof name, "%s_response", method);
	for (p = name; *p != '\0'; p++)
		if (*p == '.')
			*p = '_';
	in = json_dumps(inner, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (sign) {
		sig = fp_sign(fp_alipay_key, in, strlen(in));
		if (strcmp(fp_fault, "badsig") == 0)
			sig[10] = sig[10] == 'A' ? 'B' : 'A';
		xasprintf(&body, "{\"%s\":%s,\"sign\":\"%s\"}", name, in, sig);
	} else
		xasprintf(&body, "{\"%s\":%s}", name, in);
	fp_reply(req, 200, "application/json;charset=utf-8", body,
	    json_string_value(json_object_get(inner, "sub_code")));
	free(body);
	free(sig);
	free(in);
	json_decref(inner);
}

static json_t *
fp_ali_fail(const char *sub_code, const char *sub_msg)
{
	return json_pack("{s:s, s:s, s:s, s:s}", "code", "40004", "msg", "Business Failed",
	    "sub_code", sub_code, "sub_msg", sub_msg);
}

/* A fault due now, or NULL. */
static const char *
fp_fault_take(void)
{
	if (strcmp(fp_fault, "none") == 0 || fp_fault_count == 0)
		return NULL;
	if (fp_fault_count > 0 && --fp_fault_count == 0) {
		static char last[16];

		snprintf(last, sizeof last, "%s", fp_fault);
		if (strcmp(last, "badsig") != 0)
			snprintf(fp_fault, sizeof fp_fault, "none");
		return last;
	}
	return fp_fault;
}

/* ------------------------------------------------------------ bills */

static const char *
fp_file_add(char *data, size_t len, const char *ctype)
{
	struct fp_file *f = &fp_files[fp_nfiles++ % ARRAY_SIZE(fp_files)];

	free(f->data);
	snprintf(f->token, sizeof f->token, "T%lu", ++fp_seq);
	f->data = data;
	f->len = len;
	f->ctype = ctype;
	return f->token;
}

static long long
fp_bill_amount(const struct fp_order *o)
{
	return o->bill_fen > 0 ? o->bill_fen : o->fen;
}

/* The WeChat ALL bill of date: header, backticked rows, summary. */
static char *
fp_wx_bill(const char *date, size_t *n)
{
	struct sbuf b = {0};
	long long total = 0;
	size_t i, rows = 0;

	sbuf_adds(&b,
	    "\xEF\xBB\xBF交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,"
	    "用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,"
	    "微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,"
	    "商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r\n");
	for (i = 0; i < fp_norders; i++) {
		const struct fp_order *o = &fp_orders[i];
		long long a = fp_bill_amount(o);

		if (strcmp(o->provider, "wechat") != 0 || o->txn[0] == '\0' ||
		    strncmp(o->paid_at, date, 10) != 0)
			continue;
		sbuf_printf(&b,
		    "`%.10s %.8s,`wxd678efh567hg6787,`1900000001,`0,`,`%s,`%s,`oUpF8uMu,`NATIVE,"
		    "`SUCCESS,`OTHERS,`CNY,`%lld.%02lld,`0.00,`0,`0,`0.00,`0.00,`,`,`电费,`,"
		    "`0.00000,`0.60%%,`%lld.%02lld,`0.00,`\r\n",
		    o->paid_at, o->paid_at + 11, o->txn, o->otn, a / 100, a % 100, a / 100,
		    a % 100);
		total += a;
		rows++;
	}
	sbuf_printf(&b,
	    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,"
	    "申请退款总金额\r\n`%zu,`%lld.%02lld,`0.00,`0.00,`0.00000,`%lld.%02lld,`0.00\r\n",
	    rows, total / 100, total % 100, total / 100, total % 100);
	*n = b.len;
	return b.p;
}

static char *
fp_gbk(const char *utf8, size_t *n)
{
	iconv_t cd = iconv_open("GBK", "UTF-8");
	size_t inl = strlen(utf8), cap = inl * 2 + 16, left = cap;
	char *out = xmalloc(cap), *o = out, *i = (char *)(uintptr_t)utf8;

	if (cd == (iconv_t)-1 || iconv(cd, &i, &inl, &o, &left) == (size_t)-1) {
		fprintf(stderr, "fakepay: iconv to GBK failed\n");
		exit(1);
	}
	iconv_close(cd);
	*n = (size_t)(o - out);
	return out;
}

static void
fp_le(struct sbuf *b, unsigned long v, int bytes)
{
	char c[4];
	int k;

	for (k = 0; k < bytes; k++)
		c[k] = (char)((v >> (8 * k)) & 0xff);
	sbuf_add(b, c, (size_t)bytes);
}

/* A ZIP archive of two deflated entries (names and contents as given). */
static char *
fp_zip(const char *const *names, char *const *data, const size_t *lens, size_t n, size_t *outlen)
{
	struct sbuf z = {0}, cd = {0};
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned long crc = crc32(0, (const Bytef *)data[i], (uInt)lens[i]);
		uLong cap = compressBound((uLong)lens[i]) + 64;
		unsigned char *def = xmalloc(cap);
		z_stream zs;
		size_t off = z.len, nl = strlen(names[i]);

		memset(&zs, 0, sizeof zs);
		deflateInit2(&zs, 6, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
		zs.next_in = (Bytef *)data[i];
		zs.avail_in = (uInt)lens[i];
		zs.next_out = def;
		zs.avail_out = (uInt)cap;
		deflate(&zs, Z_FINISH);
		deflateEnd(&zs);
		fp_le(&z, 0x04034b50, 4);
		fp_le(&z, 20, 2);
		fp_le(&z, 0, 2);
		fp_le(&z, 8, 2);
		fp_le(&z, 0, 4);
		fp_le(&z, crc, 4);
		fp_le(&z, zs.total_out, 4);
		fp_le(&z, lens[i], 4);
		fp_le(&z, nl, 2);
		fp_le(&z, 0, 2);
		sbuf_add(&z, names[i], nl);
		sbuf_add(&z, (const char *)def, zs.total_out);
		fp_le(&cd, 0x02014b50, 4);
		fp_le(&cd, 20, 2);
		fp_le(&cd, 20, 2);
		fp_le(&cd, 0, 2);
		fp_le(&cd, 8, 2);
		fp_le(&cd, 0, 4);
		fp_le(&cd, crc, 4);
		fp_le(&cd, zs.total_out, 4);
		fp_le(&cd, lens[i], 4);
		fp_le(&cd, nl, 2);
		fp_le(&cd, 0, 2);
		fp_le(&cd, 0, 2);
		fp_le(&cd, 0, 2);
		fp_le(&cd, 0, 2);
		fp_le(&cd, 0, 4);
		fp_le(&cd, off, 4);
		sbuf_add(&cd, names[i], nl);
		free(def);
	}
	i = z.len;
	sbuf_add(&z, cd.p, cd.len);
	fp_le(&z, 0x06054b50, 4);
	fp_le(&z, 0, 4);
	fp_le(&z, n, 2);
	fp_le(&z, n, 2);
	fp_le(&z, cd.len, 4);
	fp_le(&z, i, 4);
	fp_le(&z, 0, 2);
	free(cd.p);
	*outlen = z.len;
	return z.p;
}

/* The Alipay trade bill of date: a ZIP of the GBK detail and summary. */
static char *
fp_ali_bill(const char *date, size_t *n)
{
	struct sbuf d = {0};
	size_t i, lens[2];
	char *data[2], *names[2], *zip;
	const char *cnames[2];

	sbuf_printf(&d,
	    "#支付宝业务明细查询\n#账号：[20880000000000010156]\n#起始日期：[%s 00:00:00]\n"
	    "#-----------------------------------------业务明细列表-------------\n"
	    "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,"
	    "操作员,终端号,对方账户,订单金额（元）,商家实收（元）,支付宝红包（元）,备注\n",
	    date);
	for (i = 0; i < fp_norders; i++) {
		const struct fp_order *o = &fp_orders[i];
		long long a = fp_bill_amount(o);

		if (strcmp(o->provider, "alipay") != 0 || o->txn[0] == '\0' ||
		    strncmp(o->paid_at, date, 10) != 0)
			continue;
		sbuf_printf(&d,
		    "%s\t,%s\t,交易            ,电费     "
		    ",%s,%s,,,,,159****5620,%lld.%02lld,%lld.%02lld,"
		    "0.00,\n",
		    o->txn, o->otn, o->paid_at, o->paid_at, a / 100, a % 100, a / 100, a % 100);
	}
	sbuf_adds(&d, "#-----------------------------------------业务明细列表结束---------\n"
	              "#导出时间：[fake]\n");
	data[0] = fp_gbk(d.p, &lens[0]);
	data[1] = fp_gbk("#支付宝业务汇总查询\n门店编号,门店名称\n合计,\n", &lens[1]);
	names[0] = fp_gbk("20880000000000010156_业务明细.csv", &i);
	names[0] = xrealloc(names[0], i + 1);
	names[0][i] = '\0';
	names[1] = fp_gbk("20880000000000010156_业务明细(汇总).csv", &i);
	names[1] = xrealloc(names[1], i + 1);
	names[1][i] = '\0';
	cnames[0] = names[1]; /* the summary first, as Alipay lists them */
	cnames[1] = names[0];
	{
		char *dd[2] = {data[1], data[0]};
		size_t ll[2] = {lens[1], lens[0]};

		zip = fp_zip(cnames, dd, ll, 2, n);
	}
	free(d.p);
	free(data[0]);
	free(data[1]);
	free(names[0]);
	free(names[1]);
	return zip;
}

/* ------------------------------------------------------------ WeChat */

static char *
fp_body(struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);
	char *s = xmalloc(n + 1);

	evbuffer_copyout(in, s, n);
	s[n] = '\0';
	return s;
}

/* Authorization: WECHATPAY2-SHA256-RSA2048 k="v",... -> 0 if it verifies. */
static int
fp_wx_auth(struct evhttp_request *req, const char *body, char *why, size_t whylen)
{
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	const char *a = evhttp_find_header(h, "Authorization");
	static const char *const keys[5] = {
	    "mchid", "nonce_str", "timestamp", "serial_no", "signature"};
	char vals[5][1024], *msg;
	const char *p;
	int i;
	bool ok;

	if (evhttp_find_header(h, "User-Agent") == NULL ||
	    evhttp_find_header(h, "Accept") == NULL) {
		snprintf(why, whylen, "INVALID_REQUEST");
		return 400;
	}
	if (a == NULL || strncmp(a, "WECHATPAY2-SHA256-RSA2048 ", 26) != 0) {
		snprintf(why, whylen, "SIGN_ERROR");
		return 401;
	}
	for (i = 0; i < 5; i++) {
		char pat[32];
		const char *e;

		snprintf(pat, sizeof pat, "%s=\"", keys[i]);
		p = strstr(a + 26, pat);
		if (p == NULL || (p != a + 26 && p[-1] != ',') ||
		    (e = strchr(p + strlen(pat), '"')) == NULL ||
		    (size_t)(e - p - (long)strlen(pat)) >= sizeof vals[i]) {
			snprintf(why, whylen, "SIGN_ERROR");
			return 401;
		}
		snprintf(vals[i], sizeof vals[i], "%.*s", (int)(e - p - (long)strlen(pat)),
		    p + strlen(pat));
	}
	if (strcmp(vals[3], fp_merchant_serial) != 0 || strcmp(vals[0], "1900000001") != 0 ||
	    llabs(atoll(vals[2]) - (long long)time(NULL)) > 300) {
		snprintf(why, whylen, "SIGN_ERROR");
		return 401;
	}
	xasprintf(&msg, "%s\n%s\n%s\n%s\n%s\n", fp_method(req), evhttp_request_get_uri(req),
	    vals[2], vals[1], body);
	ok = fp_verify(fp_wx_merchant, msg, strlen(msg), vals[4]);
	free(msg);
	if (!ok) {
		snprintf(why, whylen, "SIGN_ERROR");
		return 401;
	}
	return 0;
}

static char *
fp_wx_txn(const struct fp_order *o)
{
	json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s}", "appid", "wxd678efh567hg6787", "mchid",
	    "1900000001", "out_trade_no", o->otn, "trade_state", o->state, "trade_state_desc",
	    "fake");
	char *s;

	if (o->txn[0] != '\0') {
		json_object_set_new(j, "transaction_id", json_string(o->txn));
		json_object_set_new(j, "success_time", json_string(o->paid_at));
		json_object_set_new(j, "amount",
		    json_pack("{s:I, s:I, s:s}", "total", (json_int_t)o->fen, "payer_total",
		        (json_int_t)o->fen, "currency", "CNY"));
	}
	s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(j);
	return s;
}

static void
fp_wx_prepay(struct evhttp_request *req, const char *kind, const char *body)
{
	json_t *j = json_loads(body, JSON_REJECT_DUPLICATES, NULL), *amount;
	const char *otn = json_string_value(json_object_get(j, "out_trade_no"));
	const char *url = json_string_value(json_object_get(j, "notify_url"));
	struct fp_order *o;
	char *ans;
	json_int_t total;

	amount = json_object_get(j, "amount");
	total = json_integer_value(json_object_get(amount, "total"));
	if (otn == NULL || strlen(otn) < 6 || strlen(otn) > 32 ||
	    strspn(otn, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-*") !=
	        strlen(otn) ||
	    total <= 0 ||
	    strcmp(json_string_value(json_object_get(amount, "currency")) ?: "", "CNY") != 0 ||
	    url == NULL || strncmp(url, "https://", 8) != 0 || strchr(url, '?') != NULL ||
	    json_string_value(json_object_get(j, "description")) == NULL ||
	    (strcmp(kind, "jsapi") == 0 && json_string_value(json_object_get(
	                                       json_object_get(j, "payer"), "openid")) == NULL) ||
	    (strcmp(kind, "h5") == 0 &&
	        json_string_value(json_object_get(
	            json_object_get(j, "scene_info"), "payer_client_ip")) == NULL)) {
		json_decref(j);
		fp_wx_error(req, 400, "PARAM_ERROR", "bad parameters");
		return;
	}
	if (strcmp(json_string_value(json_object_get(j, "mchid")) ?: "", "1900000001") != 0 ||
	    strcmp(json_string_value(json_object_get(j, "appid")) ?: "", "wxd678efh567hg6787") !=
	        0) {
		json_decref(j);
		fp_wx_error(req, 400, "APPID_MCHID_NOT_MATCH", "appid and mchid do not match");
		return;
	}
	o = fp_order_find("wechat", otn);
	if (o != NULL && strcmp(o->state, "SUCCESS") == 0) {
		json_decref(j);
		fp_wx_error(req, 403, "ORDERPAID", "order paid");
		return;
	}
	if (o != NULL && (o->body == NULL || strcmp(o->body, body) != 0)) {
		json_decref(j);
		fp_wx_error(req, 403, "OUT_TRADE_NO_USED", "商户订单号重复");
		return;
	}
	if (o == NULL) {
		o = fp_order_add("wechat", otn, kind, (long long)total);
		o->body = xstrdup(body);
		snprintf(o->openid, sizeof o->openid, "%s",
		    json_string_value(json_object_get(json_object_get(j, "payer"), "openid"))
		        ?: "");
		snprintf(o->client_ip, sizeof o->client_ip, "%s",
		    json_string_value(
		        json_object_get(json_object_get(j, "scene_info"), "payer_client_ip"))
		        ?: "");
	}
	if (strcmp(kind, "native") == 0)
		xasprintf(&ans, "{\"code_url\":\"weixin://wxpay/bizpayurl?pr=%s\"}", otn);
	else if (strcmp(kind, "jsapi") == 0)
		xasprintf(&ans, "{\"prepay_id\":\"wx%s\"}", otn);
	else
		xasprintf(&ans,
		    "{\"h5_url\":\"https://wx.tenpay.com/cgi-bin/mmpayweb-bin/"
		    "checkmweb?prepay_id=wx%s\"}",
		    otn);
	fp_wx_reply(req, 200, ans, "prepay");
	free(ans);
	json_decref(j);
}

static char *
fp_wx_refund_json(const struct fp_refund *r, const struct fp_order *o)
{
	json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:{s:I, s:I, s:s}}", "refund_id",
	    r->id, "out_refund_no", r->no, "transaction_id", o->txn, "out_trade_no", o->otn,
	    "channel", "ORIGINAL", "status", r->status, "amount", "refund", (json_int_t)r->fen,
	    "total", (json_int_t)o->fen, "currency", "CNY");
	char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);

	json_decref(j);
	return s;
}

static struct fp_refund *
fp_refund_find(const char *provider, const char *no)
{
	size_t i;

	for (i = 0; i < fp_nrefunds; i++)
		if (strcmp(fp_refunds[i].provider, provider) == 0 &&
		    strcmp(fp_refunds[i].no, no) == 0)
			return &fp_refunds[i];
	return NULL;
}

static struct fp_refund *
fp_refund_add(const char *provider, const char *no, const char *otn, long long fen)
{
	struct fp_refund *r;

	fp_refunds = xreallocarray(fp_refunds, fp_nrefunds + 1, sizeof *fp_refunds);
	r = &fp_refunds[fp_nrefunds++];
	memset(r, 0, sizeof *r);
	snprintf(r->provider, sizeof r->provider, "%s", provider);
	snprintf(r->no, sizeof r->no, "%s", no);
	snprintf(r->otn, sizeof r->otn, "%s", otn);
	snprintf(r->id, sizeof r->id, "50300%015lu", ++fp_seq);
	snprintf(
	    r->status, sizeof r->status, "%s", fp_refund_processing ? "PROCESSING" : "SUCCESS");
	r->fen = fen;
	return r;
}

static void
fp_wechat(struct evhttp_request *req, const char *path)
{
	char why[64], *body = fp_body(req), *s, otn[65];
	const char *fault;
	int rc;
	struct fp_order *o;

	if ((rc = fp_wx_auth(req, body, why, sizeof why)) != 0) {
		fp_wx_error(req, rc, why, "request refused");
		goto out;
	}
	if ((fault = fp_fault_take()) != NULL && strcmp(fault, "badsig") != 0) {
		if (strcmp(fault, "timeout") == 0) {
			fprintf(fp_log, "%s %s -> held (timeout)\n", fp_method(req),
			    evhttp_request_get_uri(req));
			fflush(fp_log);
			goto out; /* never answered */
		}
		if (strcmp(fault, "500") == 0)
			fp_wx_error(req, 500, "SYSTEM_ERROR", "系统错误");
		else if (strcmp(fault, "429") == 0)
			fp_wx_error(req, 429, "RATELIMIT_EXCEEDED", "too many");
		else
			fp_wx_error(req, 404, "ORDER_NOT_EXIST", "订单不存在");
		goto out;
	}
	if (strncmp(path, "/v3/pay/transactions/", 21) == 0 &&
	    (strcmp(path + 21, "native") == 0 || strcmp(path + 21, "jsapi") == 0 ||
	        strcmp(path + 21, "h5") == 0)) {
		fp_wx_prepay(req, path + 21, body);
		goto out;
	}
	if (sscanf(path, "/v3/pay/transactions/out-trade-no/%64[^/?]", otn) == 1) {
		o = fp_order_find("wechat", otn);
		if (strstr(path, "/close") != NULL) {
			if (o != NULL && strcmp(o->state, "SUCCESS") == 0) {
				fp_wx_error(req, 400, "ORDERPAID", "order paid");
				goto out;
			}
			if (o != NULL) {
				snprintf(o->state, sizeof o->state, "CLOSED");
				o->closes++;
			}
			fp_wx_reply(req, 204, NULL, "closed");
			goto out;
		}
		if (o == NULL) {
			fp_wx_error(req, 404, "ORDER_NOT_EXIST", "订单不存在");
			goto out;
		}
		o->queries++;
		s = fp_wx_txn(o);
		fp_wx_reply(req, 200, s, o->state);
		free(s);
		goto out;
	}
	if (strcmp(path, "/v3/refund/domestic/refunds") == 0) {
		json_t *j = json_loads(body, 0, NULL);
		const char *no = json_string_value(json_object_get(j, "out_refund_no"));
		const char *on = json_string_value(json_object_get(j, "out_trade_no"));
		json_int_t fen =
		    json_integer_value(json_object_get(json_object_get(j, "amount"), "refund"));
		struct fp_refund *r;

		o = on != NULL ? fp_order_find("wechat", on) : NULL;
		if (no == NULL || fen <= 0) {
			fp_wx_error(req, 400, "PARAM_ERROR", "bad parameters");
		} else if (o == NULL || o->txn[0] == '\0') {
			fp_wx_error(req, 404, "RESOURCE_NOT_EXISTS", "订单不存在");
		} else if ((r = fp_refund_find("wechat", no)) != NULL) {
			s = fp_wx_refund_json(r, o);
			fp_wx_reply(req, 200, s, "refund repeated");
			free(s);
		} else if (o->refunded + fen > o->fen) {
			fp_wx_error(req, 403, "NOT_ENOUGH", "退款金额超过订单金额");
		} else {
			r = fp_refund_add("wechat", no, o->otn, (long long)fen);
			o->refunded += fen;
			snprintf(o->state, sizeof o->state, "REFUND");
			s = fp_wx_refund_json(r, o);
			fp_wx_reply(req, 200, s, "refund");
			free(s);
		}
		json_decref(j);
		goto out;
	}
	if (strncmp(path, "/v3/refund/domestic/refunds/", 28) == 0) {
		struct fp_refund *r = fp_refund_find("wechat", path + 28);

		if (r == NULL || (o = fp_order_find("wechat", r->otn)) == NULL) {
			fp_wx_error(req, 404, "RESOURCE_NOT_EXISTS", "退款单不存在");
			goto out;
		}
		s = fp_wx_refund_json(r, o);
		fp_wx_reply(req, 200, s, r->status);
		free(s);
		goto out;
	}
	if (strncmp(path, "/v3/bill/tradebill?bill_date=", 29) == 0) {
		char date[11], hex[41], *csv, *ans;
		unsigned char md[20];
		size_t n, k;
		const char *tok;

		snprintf(date, sizeof date, "%.10s", path + 29);
		csv = fp_wx_bill(date, &n);
		SHA1((const unsigned char *)csv, n, md);
		for (k = 0; k < 20; k++)
			snprintf(hex + 2 * k, 3, "%02x", md[k]);
		tok = fp_file_add(csv, n, "text/csv; charset=utf-8");
		xasprintf(&ans,
		    "{\"hash_type\":\"SHA1\",\"hash_value\":\"%s\",\"download_url\":"
		    "\"http://127.0.0.1:%ld/v3/billdownload/file?token=%s\"}",
		    hex, fp_port, tok);
		fp_wx_reply(req, 200, ans, "tradebill");
		free(ans);
		goto out;
	}
	if (strncmp(path, "/v3/billdownload/file?token=", 28) == 0) {
		size_t k;

		for (k = 0; k < ARRAY_SIZE(fp_files); k++)
			if (fp_files[k].data != NULL && strcmp(fp_files[k].token, path + 28) == 0) {
				struct evbuffer *eb = evbuffer_new();

				evhttp_add_header(evhttp_request_get_output_headers(req),
				    "Content-Type", fp_files[k].ctype);
				evbuffer_add(eb, fp_files[k].data, fp_files[k].len);
				fprintf(fp_log, "GET %s -> 200 bill\n", path);
				fflush(fp_log);
				evhttp_send_reply(req, 200, "OK", eb);
				evbuffer_free(eb);
				goto out;
			}
		fp_wx_error(req, 404, "NO_STATEMENT_EXIST", "no such file");
		goto out;
	}
	fp_wx_error(req, 404, "NOT_FOUND", "no such API");
out:
	free(body);
}

/* ------------------------------------------------------------ Alipay */

struct fp_kv {
	const char *k, *v;
};

static int
fp_kv_cmp(const void *a, const void *b)
{
	return strcmp(((const struct fp_kv *)a)->k, ((const struct fp_kv *)b)->k);
}

static void
fp_alipay(struct evhttp_request *req)
{
	struct evkeyvalq q, f;
	struct evkeyval *kv;
	struct fp_kv all[64];
	size_t n = 0, i;
	char *body = fp_body(req), *signed_str = NULL;
	const char *sign = NULL, *method = NULL, *biz = NULL, *ts = NULL, *ver = NULL, *fault;
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	struct sbuf s = {0};
	json_t *b = NULL, *inner;
	struct fp_order *o;
	const char *otn;

	TAILQ_INIT(&q);
	TAILQ_INIT(&f);
	if (query != NULL)
		evhttp_parse_query_str(query, &q);
	if (body[0] != '\0')
		evhttp_parse_query_str(body, &f);
	for (int pass = 0; pass < 2; pass++)
		TAILQ_FOREACH(kv, pass == 0 ? &q : &f, next)
		{
			if (n >= ARRAY_SIZE(all))
				break;
			if (strcmp(kv->key, "sign") == 0) {
				sign = kv->value;
				continue;
			}
			if (strcmp(kv->key, "method") == 0)
				method = kv->value;
			if (strcmp(kv->key, "biz_content") == 0)
				biz = kv->value;
			if (strcmp(kv->key, "timestamp") == 0)
				ts = kv->value;
			if (strcmp(kv->key, "version") == 0)
				ver = kv->value;
			if (kv->value[0] != '\0')
				all[n++] = (struct fp_kv){kv->key, kv->value};
		}
	qsort(all, n, sizeof all[0], fp_kv_cmp);
	for (i = 0; i < n; i++)
		sbuf_printf(&s, "%s%s=%s", i > 0 ? "&" : "", all[i].k, all[i].v);
	signed_str = s.p != NULL ? s.p : xstrdup("");
	if (method == NULL)
		method = "unknown";
	if (sign == NULL || !fp_verify(fp_ali_app, signed_str, strlen(signed_str), sign)) {
		char *msg;

		xasprintf(&msg,
		    "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串"
		    "为：%s",
		    signed_str);
		inner = json_pack("{s:s, s:s, s:s, s:s}", "code", "40002", "msg",
		    "Invalid Arguments", "sub_code", "isv.invalid-signature", "sub_msg", msg);
		free(msg);
		fp_ali_reply(req, "error", inner, false);
		goto out;
	}
	b = biz != NULL ? json_loads(biz, JSON_REJECT_DUPLICATES, NULL) : NULL;
	if (!json_is_object(b) || ts == NULL || strlen(ts) != 19 || ver == NULL ||
	    strcmp(ver, "1.0") != 0) {
		fp_ali_reply(req, method,
		    json_pack("{s:s, s:s, s:s, s:s}", "code", "40002", "msg", "Invalid Arguments",
		        "sub_code", "isv.invalid-parameter", "sub_msg", "参数不合法"),
		    true);
		goto out;
	}
	otn = json_string_value(json_object_get(b, "out_trade_no"));
	if ((fault = fp_fault_take()) != NULL && strcmp(fault, "badsig") != 0) {
		if (strcmp(fault, "timeout") == 0) {
			fprintf(fp_log, "%s %s -> held (timeout)\n", fp_method(req), method);
			fflush(fp_log);
			goto out;
		}
		if (strcmp(fault, "500") == 0)
			fp_ali_reply(
			    req, method, fp_ali_fail("ACQ.SYSTEM_ERROR", "系统错误"), true);
		else if (strcmp(fault, "429") == 0)
			fp_reply(req, 429, "text/plain", "too many requests", "429");
		else
			fp_ali_reply(
			    req, method, fp_ali_fail("ACQ.TRADE_NOT_EXIST", "交易不存在"), true);
		goto out;
	}
	o = otn != NULL ? fp_order_find("alipay", otn) : NULL;
	if (strcmp(method, "alipay.trade.precreate") == 0 ||
	    strcmp(method, "alipay.trade.wap.pay") == 0) {
		const char *amount = json_string_value(json_object_get(b, "total_amount"));
		long long yuan = 0;
		int cents = 0;

		if (otn == NULL || amount == NULL ||
		    sscanf(amount, "%lld.%2d", &yuan, &cents) != 2 || yuan * 100 + cents <= 0) {
			fp_ali_reply(
			    req, method, fp_ali_fail("ACQ.INVALID_PARAMETER", "参数无效"), true);
			goto out;
		}
		if (o == NULL)
			o = fp_order_add("alipay", otn, method[13] == 'p' ? "precreate" : "wap",
			    yuan * 100 + cents);
		if (strcmp(method, "alipay.trade.wap.pay") == 0) {
			char *page;

			o->scanned = true;
			xasprintf(&page,
			    "<!doctype html><title>Fake Alipay</title><p>Pay %s for %s</p>"
			    "<form method=post "
			    "action=\"/_fake/pay?provider=alipay&out_trade_no=%s\">"
			    "<button id=pay>Pay</button></form>",
			    amount, otn, otn);
			fp_reply(req, 200, "text/html; charset=utf-8", page, "wap");
			free(page);
			goto out;
		}
		fp_ali_reply(req, method,
		    json_pack("{s:s, s:s, s:s, s:s}", "code", "10000", "msg", "Success",
		        "out_trade_no", otn, "qr_code", "https://qr.alipay.com/fake"),
		    true);
		goto out;
	}
	if (strcmp(method, "alipay.trade.query") == 0 ||
	    strcmp(method, "alipay.trade.close") == 0) {
		bool close = strcmp(method, "alipay.trade.close") == 0;

		if (o == NULL || !o->scanned) {
			if (o != NULL && close)
				o->closes++;
			fp_ali_reply(
			    req, method, fp_ali_fail("ACQ.TRADE_NOT_EXIST", "交易不存在"), true);
			goto out;
		}
		if (close) {
			if (o->txn[0] != '\0') {
				fp_ali_reply(req, method,
				    fp_ali_fail("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"), true);
				goto out;
			}
			o->closes++;
			snprintf(o->state, sizeof o->state, "TRADE_CLOSED");
			fp_ali_reply(req, method,
			    json_pack("{s:s, s:s, s:s}", "code", "10000", "msg", "Success",
			        "out_trade_no", otn),
			    true);
			goto out;
		}
		o->queries++;
		inner = json_pack("{s:s, s:s, s:s, s:s}", "code", "10000", "msg", "Success",
		    "out_trade_no", otn, "trade_status", o->state);
		if (o->txn[0] != '\0') {
			char yuan[32];

			snprintf(yuan, sizeof yuan, "%lld.%02lld", o->fen / 100, o->fen % 100);
			json_object_set_new(inner, "trade_no", json_string(o->txn));
			json_object_set_new(inner, "total_amount", json_string(yuan));
			json_object_set_new(inner, "send_pay_date", json_string(o->paid_at));
		}
		fp_ali_reply(req, method, inner, true);
		goto out;
	}
	if (strcmp(method, "alipay.trade.refund") == 0) {
		const char *no = json_string_value(json_object_get(b, "out_request_no"));
		const char *amount = json_string_value(json_object_get(b, "refund_amount"));
		long long yuan = 0, fen;
		int cents = 0;
		struct fp_refund *r;
		char tot[32];

		if (o == NULL || o->txn[0] == '\0') {
			fp_ali_reply(
			    req, method, fp_ali_fail("ACQ.TRADE_NOT_EXIST", "交易不存在"), true);
			goto out;
		}
		if (amount == NULL || sscanf(amount, "%lld.%2d", &yuan, &cents) != 2) {
			fp_ali_reply(
			    req, method, fp_ali_fail("ACQ.INVALID_PARAMETER", "参数无效"), true);
			goto out;
		}
		fen = yuan * 100 + cents;
		if (no == NULL && fen != o->fen) {
			fp_ali_reply(req, method,
			    fp_ali_fail("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额不等于总额"),
			    true);
			goto out;
		}
		r = no != NULL ? fp_refund_find("alipay", no) : NULL;
		if (r == NULL) {
			if (o->refunded + fen > o->fen) {
				fp_ali_reply(req, method,
				    fp_ali_fail("ACQ.REASON_TRADE_REFUND_FEE_ERR", "退款金额超限"),
				    true);
				goto out;
			}
			r = fp_refund_add("alipay", no != NULL ? no : otn, otn, fen);
			snprintf(r->status, sizeof r->status, "SUCCESS");
			o->refunded += fen;
			if (o->refunded == o->fen)
				snprintf(o->state, sizeof o->state, "TRADE_CLOSED");
			inner = json_pack("{s:s, s:s}", "code", "10000", "msg", "Success");
			json_object_set_new(inner, "fund_change", json_string("Y"));
		} else {
			inner = json_pack("{s:s, s:s}", "code", "10000", "msg", "Success");
			json_object_set_new(inner, "fund_change", json_string("N"));
		}
		snprintf(tot, sizeof tot, "%lld.%02lld", o->refunded / 100, o->refunded % 100);
		json_object_set_new(inner, "trade_no", json_string(o->txn));
		json_object_set_new(inner, "out_trade_no", json_string(otn));
		json_object_set_new(inner, "refund_fee", json_string(tot));
		fp_ali_reply(req, method, inner, true);
		goto out;
	}
	if (strcmp(method, "alipay.data.dataservice.bill.downloadurl.query") == 0) {
		const char *date = json_string_value(json_object_get(b, "bill_date"));
		char url[128], *zip;
		size_t zlen;

		if (date == NULL || strlen(date) != 10) {
			fp_ali_reply(
			    req, method, fp_ali_fail("isv.invalid-parameter", "参数不合法"), true);
			goto out;
		}
		zip = fp_ali_bill(date, &zlen);
		snprintf(url, sizeof url, "http://127.0.0.1:%ld/_bill/%s", fp_port,
		    fp_file_add(zip, zlen, "application/zip"));
		fp_ali_reply(req, method,
		    json_pack("{s:s, s:s, s:s}", "code", "10000", "msg", "Success",
		        "bill_download_url", url),
		    true);
		goto out;
	}
	fp_ali_reply(req, method, fp_ali_fail("isv.invalid-method", "不存在的方法名"), true);
out:
	json_decref(b);
	free(signed_str);
	evhttp_clear_headers(&q);
	evhttp_clear_headers(&f);
	free(body);
}

/* ------------------------------------------------------ notifications */

/* A refund notification as WeChat Pay sends it: the resource encrypted
 * with the APIv3 key (AES-256-GCM, AAD "refund"), the body signed with the
 * platform key; posted to the daemon, its answer relayed to the test. */
struct fp_notify {
	struct evhttp_request *hook; /* the test's request, answered at the end */
	struct evhttp_connection *conn;
};

static void
fp_notify_done(struct evhttp_request *r, void *arg)
{
	struct fp_notify *n = arg;
	char ans[64];

	snprintf(ans, sizeof ans, "{\"status\":%d}",
	    r != NULL ? evhttp_request_get_response_code(r) : 0);
	fp_reply(n->hook, 200, "application/json", ans, "notified");
	/* the connection is freed once this callback has returned */
	evhttp_connection_free_on_completion(n->conn);
	free(n);
}

static char *
fp_wx_envelope(const char *plain, const char *event, const char *aad)
{
	unsigned char *ct, tag[16], nonce[13];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int len = 0, fin = 0;
	size_t plen = strlen(plain), i;
	char *b64, *out, when[40];
	json_t *env;

	RAND_bytes(nonce, 12);
	for (i = 0; i < 12; i++)
		nonce[i] = (unsigned char)("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"[nonce[i] % 32]);
	nonce[12] = '\0';
	ct = xmalloc(plen + 16);
	if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
	    EVP_EncryptInit_ex(ctx, NULL, NULL, fp_apiv3, nonce) != 1 ||
	    EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
	    EVP_EncryptUpdate(ctx, ct, &len, (const unsigned char *)plain, (int)plen) != 1 ||
	    EVP_EncryptFinal_ex(ctx, ct + len, &fin) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1) {
		fprintf(stderr, "fakepay: AES-256-GCM failed\n");
		exit(1);
	}
	EVP_CIPHER_CTX_free(ctx);
	memcpy(ct + plen, tag, 16);
	b64 = xmalloc(4 * ((plen + 16 + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)b64, ct, (int)(plen + 16));
	fp_now(true, when, sizeof when);
	env = json_pack("{s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s, s:s, s:s}}", "id", "EV-fake",
	    "create_time", when, "resource_type", "encrypt-resource", "event_type", event,
	    "summary", "退款成功", "resource", "original_type", aad, "algorithm",
	    "AEAD_AES_256_GCM", "ciphertext", b64, "associated_data", aad, "nonce",
	    (const char *)nonce);
	json_object_set_new(env, "id", json_sprintf("EV-%lu", ++fp_seq));
	out = json_dumps(env, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(env);
	free(b64);
	free(ct);
	return out;
}

static void
fp_refund_notify(struct evhttp_request *hook, const struct fp_refund *r, const char *url)
{
	struct evhttp_uri *u = evhttp_uri_parse(url);
	const struct fp_order *o = fp_order_find("wechat", r->otn);
	struct fp_notify *n;
	struct evhttp_request *req;
	struct evkeyvalq *h;
	char *plain, *body, *msg, *sig, ts[24], nonce[24], when[40];
	json_t *j;

	if (u == NULL || evhttp_uri_get_host(u) == NULL || o == NULL) {
		fp_reply(hook, 400, "text/plain", "bad url or refund", NULL);
		if (u != NULL)
			evhttp_uri_free(u);
		return;
	}
	fp_now(true, when, sizeof when);
	j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:{s:I, s:I, s:I, s:I}}", "mchid",
	    "1900000001", "out_trade_no", o->otn, "transaction_id", o->txn, "out_refund_no", r->no,
	    "refund_id", r->id, "refund_status", "SUCCESS", "success_time", when, "amount", "total",
	    (json_int_t)o->fen, "refund", (json_int_t)r->fen, "payer_total", (json_int_t)o->fen,
	    "payer_refund", (json_int_t)r->fen);
	plain = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(j);
	body = fp_wx_envelope(plain, "REFUND.SUCCESS", "refund");
	free(plain);
	snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
	snprintf(nonce, sizeof nonce, "RN%lu", ++fp_seq);
	xasprintf(&msg, "%s\n%s\n%s\n", ts, nonce, body);
	sig = fp_sign(fp_wx_platform, msg, strlen(msg));
	n = xcalloc(1, sizeof *n);
	n->hook = hook;
	n->conn = evhttp_connection_base_new(fp_base, NULL, evhttp_uri_get_host(u),
	    (ev_uint16_t)(evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80));
	req = evhttp_request_new(fp_notify_done, n);
	h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Host", evhttp_uri_get_host(u));
	evhttp_add_header(h, "Content-Type", "application/json");
	evhttp_add_header(h, "Wechatpay-Timestamp", ts);
	evhttp_add_header(h, "Wechatpay-Nonce", nonce);
	evhttp_add_header(h, "Wechatpay-Signature", sig);
	evhttp_add_header(h, "Wechatpay-Serial", fp_platform_serial);
	evbuffer_add(evhttp_request_get_output_buffer(req), body, strlen(body));
	evhttp_make_request(n->conn, req, EVHTTP_REQ_POST,
	    evhttp_uri_get_path(u) != NULL ? evhttp_uri_get_path(u) : "/");
	evhttp_uri_free(u);
	free(sig);
	free(msg);
	free(body);
}

/* ------------------------------------------------------------ hooks */

static void
fp_hook(struct evhttp_request *req, const char *path)
{
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	struct evkeyvalq q;
	const char *prov, *otn, *v;
	struct fp_order *o;
	json_t *j;
	char *s;
	size_t i;

	TAILQ_INIT(&q);
	if (query != NULL)
		evhttp_parse_query_str(query, &q);
	if (strcmp(path, "/_fake/pay") == 0) {
		prov = evhttp_find_header(&q, "provider");
		otn = evhttp_find_header(&q, "out_trade_no");
		v = evhttp_find_header(&q, "fen");
		if (prov == NULL || otn == NULL) {
			fp_reply(req, 400, "text/plain", "provider and out_trade_no", NULL);
			goto out;
		}
		o = fp_order_find(prov, otn);
		if (o == NULL) {
			if (v == NULL) {
				fp_reply(req, 404, "text/plain", "no such order (give fen)", NULL);
				goto out;
			}
			o = fp_order_add(prov, otn, "hook", atoll(v));
		}
		if (o->txn[0] == '\0')
			fp_pay(o);
		xasprintf(&s, "{\"txn\":\"%s\",\"fen\":%lld,\"paid_at\":\"%s\"}", o->txn, o->fen,
		    o->paid_at);
		fp_reply(req, 200, "application/json", s, "paid");
		free(s);
	} else if (strcmp(path, "/_fake/order") == 0) {
		prov = evhttp_find_header(&q, "provider");
		otn = evhttp_find_header(&q, "out_trade_no");
		v = evhttp_find_header(&q, "fen");
		if (prov == NULL || otn == NULL || v == NULL || fp_order_find(prov, otn) != NULL) {
			fp_reply(req, 400, "text/plain", "provider, out_trade_no, fen; new", NULL);
			goto out;
		}
		o = fp_order_add(prov, otn, "hook", atoll(v));
		o->scanned = true;
		fp_reply(req, 200, "text/plain", "ok", "order");
	} else if (strcmp(path, "/_fake/amend") == 0) {
		prov = evhttp_find_header(&q, "provider");
		otn = evhttp_find_header(&q, "out_trade_no");
		v = evhttp_find_header(&q, "bill_fen");
		o = prov != NULL && otn != NULL ? fp_order_find(prov, otn) : NULL;
		if (o == NULL || v == NULL) {
			fp_reply(req, 404, "text/plain", "no such order, or no bill_fen", NULL);
			goto out;
		}
		o->bill_fen = atoll(v);
		fp_reply(req, 200, "text/plain", "ok", "amend");
	} else if (strcmp(path, "/_fake/fault") == 0) {
		v = evhttp_find_header(&q, "mode");
		snprintf(fp_fault, sizeof fp_fault, "%s", v != NULL ? v : "none");
		v = evhttp_find_header(&q, "count");
		fp_fault_count = v != NULL ? atol(v) : 1;
		fp_reply(req, 200, "text/plain", "ok", fp_fault);
	} else if (strcmp(path, "/_fake/refund_done") == 0) {
		struct fp_refund *r;

		v = evhttp_find_header(&q, "no");
		prov = evhttp_find_header(&q, "provider");
		r = v != NULL && prov != NULL ? fp_refund_find(prov, v) : NULL;
		if (r == NULL) {
			fp_reply(req, 404, "text/plain", "no such refund", NULL);
			goto out;
		}
		snprintf(r->status, sizeof r->status, "SUCCESS");
		fp_reply(req, 200, "text/plain", "ok", "refund done");
	} else if (strcmp(path, "/_fake/stats") == 0) {
		xasprintf(&s, "{\"calls\":%ld,\"max_in_flight\":%ld}", fp_calls, fp_max_inflight);
		fp_reply(req, 200, "application/json", s, NULL);
		free(s);
	} else if (strcmp(path, "/_fake/delay") == 0) {
		v = evhttp_find_header(&q, "ms");
		fp_delay_ms = v != NULL ? atol(v) : 0;
		fp_reply(req, 200, "text/plain", "ok", "delay");
	} else if (strcmp(path, "/_fake/refund_notify") == 0) {
		struct fp_refund *r;

		v = evhttp_find_header(&q, "no");
		r = v != NULL ? fp_refund_find("wechat", v) : NULL;
		if (r == NULL || evhttp_find_header(&q, "url") == NULL) {
			fp_reply(req, 404, "text/plain", "no such refund, or no url", NULL);
			goto out;
		}
		snprintf(r->status, sizeof r->status, "SUCCESS");
		fp_refund_notify(req, r, evhttp_find_header(&q, "url"));
	} else if (strcmp(path, "/_fake/refund_mode") == 0) {
		v = evhttp_find_header(&q, "mode");
		fp_refund_processing = v != NULL && strcmp(v, "processing") == 0;
		fp_reply(req, 200, "text/plain", "ok", NULL);
	} else if (strcmp(path, "/_fake/orders") == 0) {
		j = json_array();
		for (i = 0; i < fp_norders; i++)
			json_array_append_new(j,
			    json_pack("{s:s, s:s, s:s, s:I, s:s, s:s, s:i, s:i, s:I, s:s, s:s}",
			        "provider", fp_orders[i].provider, "out_trade_no", fp_orders[i].otn,
			        "kind", fp_orders[i].kind, "fen", (json_int_t)fp_orders[i].fen,
			        "state", fp_orders[i].state, "txn", fp_orders[i].txn, "closes",
			        fp_orders[i].closes, "queries", fp_orders[i].queries, "refunded",
			        (json_int_t)fp_orders[i].refunded, "openid", fp_orders[i].openid,
			        "client_ip", fp_orders[i].client_ip));
		s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
		fp_reply(req, 200, "application/json", s, NULL);
		free(s);
		json_decref(j);
	} else if (strcmp(path, "/_fake/refunds") == 0) {
		j = json_array();
		for (i = 0; i < fp_nrefunds; i++)
			json_array_append_new(
			    j, json_pack("{s:s, s:s, s:s, s:I, s:s}", "provider",
			           fp_refunds[i].provider, "no", fp_refunds[i].no, "out_trade_no",
			           fp_refunds[i].otn, "fen", (json_int_t)fp_refunds[i].fen,
			           "status", fp_refunds[i].status));
		s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
		fp_reply(req, 200, "application/json", s, NULL);
		free(s);
		json_decref(j);
	} else
		fp_reply(req, 404, "text/plain", "no such hook", NULL);
out:
	evhttp_clear_headers(&q);
}

/* ------------------------------------------------------ openid step */

/* The browser's side: WeChat asks nothing (snsapi_base) and sends the
 * occupant back with a new code. */
static void
fp_oauth_authorize(struct evhttp_request *req)
{
	struct evkeyvalq q;
	const char *appid, *ru, *rt, *scope, *state;
	struct fp_code *c;
	char *loc;

	TAILQ_INIT(&q);
	evhttp_parse_query(evhttp_request_get_uri(req), &q);
	appid = evhttp_find_header(&q, "appid");
	ru = evhttp_find_header(&q, "redirect_uri");
	rt = evhttp_find_header(&q, "response_type");
	scope = evhttp_find_header(&q, "scope");
	state = evhttp_find_header(&q, "state");
	if (appid == NULL || strcmp(appid, "wxd678efh567hg6787") != 0 || ru == NULL ||
	    (strncmp(ru, "http://", 7) != 0 && strncmp(ru, "https://", 8) != 0) || rt == NULL ||
	    strcmp(rt, "code") != 0 || scope == NULL || strcmp(scope, "snsapi_base") != 0 ||
	    fp_ncodes == ARRAY_SIZE(fp_codes)) {
		fp_reply(req, 400, "text/plain", "bad authorize request", "authorize");
		evhttp_clear_headers(&q);
		return;
	}
	c = &fp_codes[fp_ncodes++];
	snprintf(c->code, sizeof c->code, "fakecode%lu", ++fp_seq);
	snprintf(c->openid, sizeof c->openid, "oFake%06lu", fp_seq);
	xasprintf(&loc, "%s%ccode=%s&state=%s", ru, strchr(ru, '?') != NULL ? '&' : '?', c->code,
	    state != NULL ? state : "");
	evhttp_add_header(evhttp_request_get_output_headers(req), "Location", loc);
	fp_reply(req, 302, "text/plain", "", "authorize");
	free(loc);
	evhttp_clear_headers(&q);
}

/* The server's side: the code for the openid, once. */
static void
fp_oauth_token(struct evhttp_request *req)
{
	struct evkeyvalq q;
	const char *appid, *secret, *code, *gt;
	size_t i;
	char *ans = NULL;

	TAILQ_INIT(&q);
	evhttp_parse_query(evhttp_request_get_uri(req), &q);
	appid = evhttp_find_header(&q, "appid");
	secret = evhttp_find_header(&q, "secret");
	code = evhttp_find_header(&q, "code");
	gt = evhttp_find_header(&q, "grant_type");
	if (appid == NULL || strcmp(appid, "wxd678efh567hg6787") != 0)
		ans = xstrdup("{\"errcode\":40013,\"errmsg\":\"invalid appid\"}");
	else if (secret == NULL || fp_wx_secret[0] == '\0' || strcmp(secret, fp_wx_secret) != 0)
		ans = xstrdup("{\"errcode\":40125,\"errmsg\":\"invalid appsecret\"}");
	else if (gt == NULL || strcmp(gt, "authorization_code") != 0)
		ans = xstrdup("{\"errcode\":40002,\"errmsg\":\"invalid grant_type\"}");
	for (i = 0; ans == NULL && i < fp_ncodes; i++)
		if (code != NULL && strcmp(fp_codes[i].code, code) == 0 && !fp_codes[i].used) {
			fp_codes[i].used = true;
			fp_seq++;
			xasprintf(&ans,
			    "{\"access_token\":\"ACCESSTOKEN%lu\",\"expires_in\":7200,"
			    "\"refresh_token\":\"REFRESH%lu\",\"openid\":\"%s\","
			    "\"scope\":\"snsapi_base\"}",
			    fp_seq, fp_seq, fp_codes[i].openid);
		}
	if (ans == NULL)
		ans = xstrdup("{\"errcode\":40029,\"errmsg\":\"invalid code\"}");
	fp_reply(req, 200, "application/json", ans, "access_token");
	free(ans);
	evhttp_clear_headers(&q);
}

static void fp_request_cb(struct evhttp_request *req, void *arg);

static void
fp_delayed_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	fp_inflight--;
	fp_request_cb(arg, fp_delayed_cb);
}

static void
fp_request_cb(struct evhttp_request *req, void *arg)
{
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	char full[2048];
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));

	if (path == NULL)
		path = "/";
	if (fp_delay_ms > 0 && arg != (void *)fp_delayed_cb && strncmp(path, "/_fake/", 7) != 0) {
		struct timeval tv = {fp_delay_ms / 1000, (fp_delay_ms % 1000) * 1000};

		if (++fp_inflight > fp_max_inflight)
			fp_max_inflight = fp_inflight;
		event_base_once(fp_base, -1, EV_TIMEOUT, fp_delayed_cb, req, &tv);
		return;
	}
	if (strncmp(path, "/_fake/", 7) != 0)
		fp_calls++;
	if (strncmp(path, "/_bill/", 7) == 0) {
		size_t k;

		for (k = 0; k < ARRAY_SIZE(fp_files); k++)
			if (fp_files[k].data != NULL && strcmp(fp_files[k].token, path + 7) == 0) {
				struct evbuffer *eb = evbuffer_new();

				evhttp_add_header(evhttp_request_get_output_headers(req),
				    "Content-Type", fp_files[k].ctype);
				evbuffer_add(eb, fp_files[k].data, fp_files[k].len);
				fprintf(fp_log, "GET %s -> 200 bill\n", path);
				fflush(fp_log);
				evhttp_send_reply(req, 200, "OK", eb);
				evbuffer_free(eb);
				return;
			}
		fp_reply(req, 404, "text/plain", "gone", NULL);
	} else if (strncmp(path, "/_fake/", 7) == 0)
		fp_hook(req, path);
	else if (strcmp(path, "/gateway.do") == 0)
		fp_alipay(req);
	else if (strcmp(path, "/connect/oauth2/authorize") == 0)
		fp_oauth_authorize(req);
	else if (strcmp(path, "/sns/oauth2/access_token") == 0)
		fp_oauth_token(req);
	else if (strncmp(path, "/v3/", 4) == 0) {
		snprintf(full, sizeof full, "%s%s%s", path, query != NULL ? "?" : "",
		    query != NULL ? query : "");
		fp_wechat(req, full);
	} else
		fp_reply(req, 404, "text/plain", "not found", NULL);
}

static void
fp_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	UNUSED(sig);
	UNUSED(what);
	UNUSED(arg);
	event_base_loopexit(fp_base, NULL);
}

int
main(int argc, char **argv)
{
	struct evhttp *http;
	struct event *sigterm;
	long port;

	if (argc != 5) {
		fprintf(stderr, "usage: fakepay PORT KEYDIR LOGFILE MERCHANT_SERIAL\n");
		return 2;
	}
	port = fp_port = strtol(argv[1], NULL, 10);
	fp_wx_merchant = fp_load(argv[2], "wx_merchant.pub", false);
	fp_wx_platform = fp_load(argv[2], "wx_platform.key", true);
	fp_ali_app = fp_load(argv[2], "ali_app.pub", false);
	fp_alipay_key = fp_load(argv[2], "alipay.key", true);
	fp_platform_serial = fp_cert_serial(argv[2]);
	{
		char path[1024];
		FILE *f;

		snprintf(path, sizeof path, "%s/apiv3.key", argv[2]);
		if ((f = fopen(path, "r")) == NULL || fread(fp_apiv3, 1, 32, f) != 32) {
			fprintf(stderr, "fakepay: %s: no 32-byte APIv3 key\n", path);
			return 2;
		}
		fclose(f);
		snprintf(path, sizeof path, "%s/wx_app.secret", argv[2]);
		if ((f = fopen(path, "r")) != NULL) {
			if (fgets(fp_wx_secret, sizeof fp_wx_secret, f) == NULL)
				fp_wx_secret[0] = '\0';
			fp_wx_secret[strcspn(fp_wx_secret, "\r\n")] = '\0';
			fclose(f);
		}
	}
	fp_merchant_serial = argv[4];
	if ((fp_log = fopen(argv[3], "a")) == NULL) {
		fprintf(stderr, "fakepay: %s: %s\n", argv[3], strerror(errno));
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	fp_base = event_base_new();
	http = evhttp_new(fp_base);
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
	evhttp_set_gencb(http, fp_request_cb, NULL);
	if (port <= 0 || port > 65535 ||
	    evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)port) != 0) {
		fprintf(stderr, "fakepay: cannot listen on 127.0.0.1:%ld\n", port);
		return 1;
	}
	sigterm = evsignal_new(fp_base, SIGTERM, fp_signal_cb, NULL);
	evsignal_add(sigterm, NULL);
	printf("fakepay: listening on %ld\n", port);
	fflush(stdout);
	event_base_dispatch(fp_base);
	evhttp_free(http);
	event_free(sigterm);
	event_base_free(fp_base);
	fclose(fp_log);
	return 0;
}
