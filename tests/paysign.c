/*
 * paysign.c: the tests' payment gateway. It plays the provider side of
 * WeChat Pay API v3 and Alipay: it makes the keys, builds notifications,
 * encrypts and signs them exactly as the providers do (reference/payments.md
 * sections 1 and 2), and posts them to the daemon once, N times, N at once,
 * or as a load of many orders with the providers' retry behaviour. It shares
 * no code with src/payverify.c on purpose: a signer that reused the verifier
 * would agree with the verifier's bugs.
 *
 *   paysign keys DIR
 *   paysign wechat URL [options]
 *   paysign alipay URL [options]
 *   paysign load URL-WX URL-ALI --orders FILE [options]
 *
 * Run "paysign --help" for the options. Exit 0 on success, 1 when an
 * expectation (--expect, --retry, arms) failed, 2 on a usage or setup error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <mosquitto.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "common.h"

/* The WeChat Pay public key id the tests use (reference/payments.md 1.2). */
#define PAYSIGN_WX_PUBKEY_ID "PUB_KEY_ID_0000000000000024101100397200000006"

struct paysign_opts {
	const char *keys_dir, *wx_key, *ali_key, *serial, *apiv3;
	bool wx_pubkey;
	const char *mchid, *appid, *app_id, *seller_id, *buyer_id;
	const char *out_trade_no, *transaction_id, *trade_no, *total, *currency;
	const char *trade_state, *trade_status, *event_type, *original_type;
	const char *id, *notify_id, *refund_fee, *sign_type, *subject, *receipt_amount;
	char **fields;
	size_t nfields;
	long skew;
	bool tamper, bad_sig, apiv3_wrong, plus_space;
	long count, parallel, expect, timeout_ms;
	bool count_set;
	const char *dump;
	/* load */
	const char *orders, *success_log, *mqtt, *prefix;
	long rate, concurrency, retry_delay_ms, deadline_s;
	bool retry;
};

/* What the options resolve to: loaded keys and secrets. */
struct paysign_keys {
	EVP_PKEY *wx, *ali;
	char *serial;
	unsigned char apiv3[32];
};

/* One HTTP exchange on the multi handle; reused from request to request so
 * that libcurl keeps its connections. */
struct paysign_xfer {
	CURL *easy;
	struct curl_slist *hdrs; /* owned when per-request (WeChat in load) */
	char head[64];
	size_t head_len, total;
	char err[CURL_ERROR_SIZE];
	struct paysign_order *order;
	int64_t start_us;
	struct paysign_xfer *next_free;
};

/* One order of a load run. */
struct paysign_order {
	char *otn, *meter, *txid;
	int64_t fen;
	bool wechat, ok, armed;
	struct sbuf body;
	int64_t first_us, arm_us, retry_at;
	struct paysign_order *next_retry, *next_meter;
};

struct paysign_load {
	const struct paysign_opts *o;
	const struct paysign_keys *k;
	struct paysign_order *orders;
	size_t n;
	struct paysign_order **meters; /* open addressing, chains by meter */
	size_t meters_cap;
	struct paysign_order *rq_head, *rq_tail;
	int64_t *lat;
	size_t nlat, sent, ok, retries, armed, errors_shown;
	FILE *success_log;
	struct mosquitto *mosq;
	char *prefix;
	bool subscribed, mqtt_up;
	int64_t start_us;
};

static struct sbuf paysign_scratch;

/* --- small helpers */

static void PRINTFLIKE(1, 2) NORETURN paysign_fatal(const char *fmt, ...)
{
	va_list ap;
	unsigned long e;

	fputs("paysign: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	while ((e = ERR_get_error()) != 0)
		fprintf(stderr, "paysign:   %s\n", ERR_error_string(e, NULL));
	exit(2);
}

static long
paysign_number(const char *s, long min, long max, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		paysign_fatal("%s: bad number '%s' (%ld..%ld)", what, s, min, max);
	return v;
}

/* Random [A-Za-z0-9] characters, without modulo bias. */
static void
paysign_alnum(char *out, size_t n)
{
	static const char set[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	unsigned char b[64];
	size_t i = 0, j;

	while (i < n) {
		if (RAND_bytes(b, sizeof b) != 1)
			paysign_fatal("RAND_bytes failed");
		for (j = 0; j < sizeof b && i < n; j++) {
			if (b[j] < 248)
				out[i++] = set[b[j] % 62];
		}
	}
	out[n] = '\0';
}

static void
paysign_b64(struct sbuf *b, const unsigned char *in, size_t len)
{
	size_t need = 4 * ((len + 2) / 3);
	unsigned char *tmp = xmalloc(need + 1);

	EVP_EncodeBlock(tmp, in, (int)len);
	sbuf_add(b, (const char *)tmp, need);
	free(tmp);
}

/* Beijing time (UTC+8, no DST), as both providers write it. */
static void
paysign_cntime(time_t t, bool rfc3339, char *buf, size_t len)
{
	time_t cn = t + 8 * 3600;
	struct tm tm;

	gmtime_r(&cn, &tm);
	if (rfc3339)
		strftime(buf, len, "%Y-%m-%dT%H:%M:%S+08:00", &tm);
	else
		strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

static void
paysign_write_file(const char *path, const void *p, size_t len)
{
	FILE *f = fopen(path, "w");

	if (f == NULL || fwrite(p, 1, len, f) != len || fclose(f) != 0)
		paysign_fatal("%s: %s", path, strerror(errno));
}

/* SHA-RSA PKCS#1 v1.5 over msg, base64 into out; bad flips one byte of the
 * signature so it is well-formed but wrong. raw, if given, gets the bytes. */
static void
paysign_sign(EVP_PKEY *key, const EVP_MD *md, const void *msg, size_t len, bool bad,
    struct sbuf *out, struct sbuf *raw)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	size_t siglen = (size_t)EVP_PKEY_get_size(key);
	unsigned char *sig = xmalloc(siglen);

	if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, md, NULL, key) != 1 ||
	    EVP_DigestSign(ctx, sig, &siglen, msg, len) != 1)
		paysign_fatal("signing failed");
	EVP_MD_CTX_free(ctx);
	if (bad)
		sig[siglen / 2] ^= 0x01;
	paysign_b64(out, sig, siglen);
	if (raw != NULL)
		sbuf_add(raw, (const char *)sig, siglen);
	free(sig);
}

/* --- keys */

static FILE *
paysign_create(const char *dir, const char *name)
{
	char *path;
	FILE *f;
	int fd;

	xasprintf(&path, "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd == -1 || fchmod(fd, 0600) == -1 || (f = fdopen(fd, "w")) == NULL)
		paysign_fatal("%s: %s", path, strerror(errno));
	free(path);
	return f;
}

static void
paysign_close(FILE *f, const char *name)
{
	if (fclose(f) != 0)
		paysign_fatal("%s: %s", name, strerror(errno));
}

static EVP_PKEY *
paysign_keypair(const char *dir, const char *keyname, const char *pubname)
{
	EVP_PKEY *k = EVP_RSA_gen(2048);
	FILE *f;

	if (k == NULL)
		paysign_fatal("RSA key generation failed");
	f = paysign_create(dir, keyname);
	if (PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1)
		paysign_fatal("%s: write failed", keyname);
	paysign_close(f, keyname);
	if (pubname != NULL) {
		f = paysign_create(dir, pubname);
		if (PEM_write_PUBKEY(f, k) != 1)
			paysign_fatal("%s: write failed", pubname);
		paysign_close(f, pubname);
	}
	return k;
}

/*
 * The platform certificate. The serial is 160 random bits with the top bit
 * clear and the next one set: always 40 hex digits, as WeChat's are, and
 * a positive DER integer of 20 octets (RFC 5280's limit).
 */
static void
paysign_cert(const char *dir, EVP_PKEY *k)
{
	X509 *x = X509_new();
	BIGNUM *bn = BN_new();
	X509_NAME *name;
	char *hex;
	FILE *f;

	if (x == NULL || bn == NULL || BN_rand(bn, 159, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) != 1 ||
	    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL ||
	    X509_set_version(x, 2) != 1 || X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
	    X509_gmtime_adj(X509_getm_notAfter(x), 5L * 365 * 86400) == NULL ||
	    X509_set_pubkey(x, k) != 1)
		paysign_fatal("certificate set-up failed");
	name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "C", MBSTRING_ASC, (const unsigned char *)"CN", -1, -1, 0);
	X509_NAME_add_entry_by_txt(
	    name, "O", MBSTRING_ASC, (const unsigned char *)"Tenpay.com", -1, -1, 0);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
	    (const unsigned char *)"paysign test platform certificate", -1, -1, 0);
	if (X509_set_issuer_name(x, name) != 1 || X509_sign(x, k, EVP_sha256()) == 0)
		paysign_fatal("certificate signing failed");
	f = paysign_create(dir, "wx_platform.pem");
	if (PEM_write_X509(f, x) != 1)
		paysign_fatal("wx_platform.pem: write failed");
	paysign_close(f, "wx_platform.pem");
	hex = BN_bn2hex(bn);
	printf("wx_serial=%s\n", hex);
	OPENSSL_free(hex);
	BN_free(bn);
	X509_free(x);
}

static int
paysign_keys_cmd(const char *dir)
{
	char secret[33];
	EVP_PKEY *k;
	FILE *f;

	if (mkdir(dir, 0700) == -1 && errno != EEXIST)
		paysign_fatal("%s: %s", dir, strerror(errno));
	k = paysign_keypair(dir, "wx_platform.key", NULL);
	paysign_cert(dir, k);
	EVP_PKEY_free(k);
	EVP_PKEY_free(paysign_keypair(dir, "wx_pub.key", "wx_pub.pub"));
	printf("wx_pubkey_id=%s\n", PAYSIGN_WX_PUBKEY_ID);
	paysign_alnum(secret, 32);
	f = paysign_create(dir, "apiv3.key");
	fputs(secret, f);
	paysign_close(f, "apiv3.key");
	EVP_PKEY_free(paysign_keypair(dir, "alipay.key", "alipay.pub"));
	EVP_PKEY_free(paysign_keypair(dir, "other.key", NULL));
	return 0;
}

/* --- resolving the options into keys */

static EVP_PKEY *
paysign_load_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	if (f == NULL)
		paysign_fatal("%s: %s", path, strerror(errno));
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (k == NULL)
		paysign_fatal("%s: not a PEM private key", path);
	return k;
}

static char *
paysign_cert_serial(const char *path)
{
	FILE *f = fopen(path, "r");
	BIGNUM *bn;
	X509 *x;
	char *hex, *s;

	if (f == NULL)
		paysign_fatal("%s: %s", path, strerror(errno));
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (x == NULL || (bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(x), NULL)) == NULL)
		paysign_fatal("%s: not a PEM certificate", path);
	hex = BN_bn2hex(bn);
	s = xstrdup(hex);
	OPENSSL_free(hex);
	BN_free(bn);
	X509_free(x);
	return s;
}

static char *
paysign_in_dir(const struct paysign_opts *o, const char *name, const char *what)
{
	char *path;

	if (o->keys_dir == NULL)
		paysign_fatal("%s not given (and no --keys DIR)", what);
	xasprintf(&path, "%s/%s", o->keys_dir, name);
	return path;
}

static void
paysign_resolve(const struct paysign_opts *o, bool wx, bool ali, struct paysign_keys *k)
{
	char *path, buf[64];
	size_t n;
	FILE *f;

	memset(k, 0, sizeof *k);
	if (wx) {
		if (o->wx_key != NULL)
			k->wx = paysign_load_key(o->wx_key);
		else {
			path = paysign_in_dir(
			    o, o->wx_pubkey ? "wx_pub.key" : "wx_platform.key", "--key");
			k->wx = paysign_load_key(path);
			free(path);
		}
		if (o->serial != NULL)
			k->serial = xstrdup(o->serial);
		else if (o->wx_pubkey)
			k->serial = xstrdup(PAYSIGN_WX_PUBKEY_ID);
		else {
			path = paysign_in_dir(o, "wx_platform.pem", "--serial");
			k->serial = paysign_cert_serial(path);
			free(path);
		}
		path = o->apiv3 != NULL ? xstrdup(o->apiv3)
		                        : paysign_in_dir(o, "apiv3.key", "--apiv3");
		if ((f = fopen(path, "r")) == NULL)
			paysign_fatal("%s: %s", path, strerror(errno));
		n = fread(buf, 1, sizeof buf, f);
		fclose(f);
		if (n > 32 && buf[n - 1] == '\n')
			n--;
		if (n != 32)
			paysign_fatal("%s: the APIv3 key must be 32 bytes", path);
		memcpy(k->apiv3, buf, 32);
		free(path);
		/* A key that is not the merchant's: the tag will not verify. */
		if (o->apiv3_wrong)
			k->apiv3[0] ^= 0x01;
	}
	if (ali) {
		if (o->ali_key != NULL)
			k->ali = paysign_load_key(o->ali_key);
		else {
			path = paysign_in_dir(o, "alipay.key", "--key");
			k->ali = paysign_load_key(path);
			free(path);
		}
	}
}

/* --- WeChat Pay API v3 */

static const char *
paysign_wx_state_desc(const char *state)
{
	if (strcmp(state, "SUCCESS") == 0)
		return "支付成功";
	if (strcmp(state, "REFUND") == 0)
		return "转入退款";
	if (strcmp(state, "NOTPAY") == 0)
		return "未支付";
	if (strcmp(state, "CLOSED") == 0)
		return "已关闭";
	return "支付失败";
}

/*
 * The notification body: the transaction, encrypted with AES-256-GCM under
 * the APIv3 key (12-character nonce, associated data "transaction",
 * ciphertext = base64(ct || tag)), in its envelope. --tamper flips a byte
 * of the ciphertext here, before the body is signed: the signature is then
 * good and only the tag fails.
 */
static void
paysign_wx_body(const struct paysign_opts *o, const struct paysign_keys *k, const char *otn,
    const char *txid, int64_t total, struct sbuf *body)
{
	static const char aad[] = "transaction";
	char when[40], nonce[13], evid[40];
	unsigned char *ct, tag[16];
	EVP_CIPHER_CTX *ctx;
	struct sbuf b64 = {0};
	json_t *tx, *env;
	char *plain, *out;
	int len, fin;
	size_t plen;

	paysign_cntime(time(NULL), true, when, sizeof when);
	tx = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:{s:s},"
	               " s:{s:I, s:I, s:s, s:s}}",
	    "appid", o->appid, "mchid", o->mchid, "out_trade_no", otn, "transaction_id", txid,
	    "trade_type", "JSAPI", "trade_state", o->trade_state, "trade_state_desc",
	    paysign_wx_state_desc(o->trade_state), "bank_type", "OTHERS", "attach", "",
	    "success_time", when, "payer", "openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "amount",
	    "total", (json_int_t)total, "payer_total", (json_int_t)total, "currency", o->currency,
	    "payer_currency", o->currency);
	if (tx == NULL)
		paysign_fatal("json_pack failed");
	plain = json_dumps(tx, JSON_COMPACT);
	json_decref(tx);
	plen = strlen(plain);

	paysign_alnum(nonce, 12);
	ct = xmalloc(plen + 16);
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL || EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
	    EVP_EncryptInit_ex(ctx, NULL, NULL, k->apiv3, (const unsigned char *)nonce) != 1 ||
	    EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *)aad, (int)strlen(aad)) != 1 ||
	    EVP_EncryptUpdate(ctx, ct, &len, (const unsigned char *)plain, (int)plen) != 1 ||
	    EVP_EncryptFinal_ex(ctx, ct + len, &fin) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1)
		paysign_fatal("AES-256-GCM failed");
	EVP_CIPHER_CTX_free(ctx);
	memcpy(ct + plen, tag, 16);
	if (o->tamper)
		ct[plen / 2] ^= 0x01;
	paysign_b64(&b64, ct, plen + 16);
	free(ct);
	free(plain);

	if (o->id != NULL)
		snprintf(evid, sizeof evid, "%s", o->id);
	else {
		memcpy(evid, "EV-", 3);
		paysign_alnum(evid + 3, 24);
	}
	env = json_pack("{s:s, s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s, s:s, s:s}}", "id", evid,
	    "create_time", when, "resource_type", "encrypt-resource", "event_type", o->event_type,
	    "summary", strcmp(o->trade_state, "SUCCESS") == 0 ? "支付成功" : "交易通知", "resource",
	    "original_type", o->original_type, "algorithm", "AEAD_AES_256_GCM", "ciphertext", b64.p,
	    "associated_data", aad, "nonce", nonce);
	if (env == NULL)
		paysign_fatal("json_pack failed");
	out = json_dumps(env, JSON_COMPACT);
	json_decref(env);
	sbuf_adds(body, out);
	free(out);
	free(b64.p);
}

static struct curl_slist *
paysign_header(struct curl_slist *l, const char *name, const char *value)
{
	struct curl_slist *n;

	sbuf_reset(&paysign_scratch);
	sbuf_printf(&paysign_scratch, "%s: %s", name, value);
	if ((n = curl_slist_append(l, paysign_scratch.p)) == NULL)
		paysign_fatal("out of memory");
	return n;
}

/*
 * Sign "timestamp\nnonce\nbody\n" with SHA256-RSA and return the request
 * headers. Called for every delivery: a provider's resend carries a fresh
 * timestamp and signature over the same body.
 */
static struct curl_slist *
paysign_wx_headers(const struct paysign_opts *o, const struct paysign_keys *k,
    const struct sbuf *body, struct sbuf *dmsg, struct sbuf *dsig)
{
	struct sbuf msg = {0}, sig = {0};
	struct curl_slist *h = NULL;
	char ts[32], nonce[33];

	snprintf(ts, sizeof ts, "%lld", (long long)time(NULL) + o->skew);
	paysign_alnum(nonce, 32);
	sbuf_printf(&msg, "%s\n%s\n", ts, nonce);
	sbuf_add(&msg, body->p, body->len);
	sbuf_add(&msg, "\n", 1);
	paysign_sign(k->wx, EVP_sha256(), msg.p, msg.len, o->bad_sig, &sig, dsig);
	if (dmsg != NULL)
		sbuf_add(dmsg, msg.p, msg.len);
	h = paysign_header(h, "Content-Type", "application/json");
	h = paysign_header(h, "User-Agent", "Mozilla/4.0");
	h = paysign_header(h, "Wechatpay-Serial", k->serial);
	h = paysign_header(h, "Wechatpay-Signature", sig.p);
	h = paysign_header(h, "Wechatpay-Timestamp", ts);
	h = paysign_header(h, "Wechatpay-Nonce", nonce);
	h = paysign_header(h, "Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048");
	/* No "Expect: 100-continue" round trip on larger bodies. */
	h = curl_slist_append(h, "Expect:");
	free(msg.p);
	free(sig.p);
	return h;
}

/* --- Alipay */

struct paysign_kv {
	char *k, *v;
};

static int
paysign_kv_cmp(const void *a, const void *b)
{
	const struct paysign_kv *x = *(const struct paysign_kv *const *)a;
	const struct paysign_kv *y = *(const struct paysign_kv *const *)b;

	return strcmp(x->k, y->k);
}

static void
paysign_kv_set(struct paysign_kv *kv, size_t *n, const char *k, const char *v, size_t vlen)
{
	size_t i;

	for (i = 0; i < *n; i++) {
		if (strcmp(kv[i].k, k) == 0) {
			free(kv[i].v);
			kv[i].v = xstrndup(v, vlen);
			return;
		}
	}
	kv[*n].k = xstrdup(k);
	kv[*n].v = xstrndup(v, vlen);
	(*n)++;
}

/* Percent-encode everything but RFC 3986 unreserved characters. */
static void
paysign_form_escape(struct sbuf *b, const char *s, bool plus_space)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;
	char e[3];

	for (p = (const unsigned char *)s; *p != '\0'; p++) {
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' || *p == '~')
			sbuf_add(b, (const char *)p, 1);
		else if (*p == ' ' && plus_space)
			sbuf_add(b, "+", 1);
		else {
			e[0] = '%';
			e[1] = hex[*p >> 4];
			e[2] = hex[*p & 15];
			sbuf_add(b, e, 3);
		}
	}
}

/*
 * The notification form, signed as Alipay signs it (payments.md 2.2): sign
 * and sign_type left out, empty values skipped, keys in byte order, "k=v"
 * joined by '&' over the decoded values, SHA256-RSA for RSA2 (SHA1-RSA for
 * the legacy RSA). Every value is then form-encoded.
 */
static void
paysign_ali_form(const struct paysign_opts *o, const struct paysign_keys *k, const char *otn,
    const char *trade_no, const char *total, struct sbuf *form, struct sbuf *dmsg,
    struct sbuf *dsig)
{
	struct paysign_kv *kv = xcalloc(32 + o->nfields, sizeof *kv);
	struct paysign_kv **srt = xcalloc(32 + o->nfields, sizeof *srt);
	struct sbuf msg = {0}, sig = {0};
	char now[32], created[32], paid[32], nid[33], *eq, *key;
	time_t t = time(NULL);
	size_t n = 0, ns = 0, i;

	paysign_cntime(t, false, now, sizeof now);
	paysign_cntime(t - 5, false, created, sizeof created);
	paysign_cntime(t - 3, false, paid, sizeof paid);
	paysign_alnum(nid, 32);
#define KV(key, val) paysign_kv_set(kv, &n, key, val, strlen(val))
	KV("notify_time", now);
	KV("notify_type", "trade_status_sync");
	KV("notify_id", o->notify_id != NULL ? o->notify_id : nid);
	KV("app_id", o->app_id);
	KV("charset", "utf-8");
	KV("version", "1.0");
	KV("sign_type", o->sign_type);
	KV("trade_no", trade_no);
	KV("out_trade_no", otn);
	KV("buyer_id", o->buyer_id);
	KV("seller_id", o->seller_id);
	KV("trade_status", o->trade_status);
	KV("total_amount", total);
	KV("receipt_amount", o->receipt_amount != NULL ? o->receipt_amount : total);
	KV("subject", o->subject);
	KV("gmt_create", created);
	KV("gmt_payment", paid);
	if (o->refund_fee != NULL) {
		KV("refund_fee", o->refund_fee);
		KV("gmt_refund", now);
		sbuf_reset(&paysign_scratch);
		sbuf_printf(&paysign_scratch, "R%s", otn);
		KV("out_biz_no", paysign_scratch.p);
	}
#undef KV
	for (i = 0; i < o->nfields; i++) {
		eq = strchr(o->fields[i], '=');
		key = xstrndup(o->fields[i], (size_t)(eq - o->fields[i]));
		paysign_kv_set(kv, &n, key, eq + 1, strlen(eq + 1));
		free(key);
	}

	for (i = 0; i < n; i++) {
		if (strcmp(kv[i].k, "sign") != 0 && strcmp(kv[i].k, "sign_type") != 0 &&
		    kv[i].v[0] != '\0')
			srt[ns++] = &kv[i];
	}
	qsort(srt, ns, sizeof *srt, paysign_kv_cmp);
	for (i = 0; i < ns; i++)
		sbuf_printf(&msg, "%s%s=%s", i ? "&" : "", srt[i]->k, srt[i]->v);
	paysign_sign(k->ali, strcmp(o->sign_type, "RSA") == 0 ? EVP_sha1() : EVP_sha256(),
	    msg.p != NULL ? msg.p : "", msg.len, o->bad_sig, &sig, dsig);
	if (dmsg != NULL)
		sbuf_add(dmsg, msg.p != NULL ? msg.p : "", msg.len);
	paysign_kv_set(kv, &n, "sign", sig.p, sig.len);

	for (i = 0; i < n; i++) {
		if (i > 0)
			sbuf_add(form, "&", 1);
		paysign_form_escape(form, kv[i].k, o->plus_space);
		sbuf_add(form, "=", 1);
		paysign_form_escape(form, kv[i].v, o->plus_space);
		free(kv[i].k);
		free(kv[i].v);
	}
	free(kv);
	free(srt);
	free(msg.p);
	free(sig.p);
}

static struct curl_slist *
paysign_ali_headers(void)
{
	struct curl_slist *h = NULL;

	h = paysign_header(h, "Content-Type", "application/x-www-form-urlencoded; charset=utf-8");
	h = paysign_header(h, "User-Agent", "Mozilla/4.0");
	h = curl_slist_append(h, "Expect:");
	return h;
}

/* --- HTTP */

static size_t
paysign_on_data(char *p, size_t size, size_t nmemb, void *arg)
{
	struct paysign_xfer *x = arg;
	size_t n = size * nmemb, room = sizeof x->head - x->head_len;

	memcpy(x->head + x->head_len, p, n < room ? n : room);
	x->head_len += n < room ? n : room;
	x->total += n;
	return n;
}

static void
paysign_xfer_init(struct paysign_xfer *x, long timeout_ms)
{
	if ((x->easy = curl_easy_init()) == NULL)
		paysign_fatal("curl_easy_init failed");
	curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, paysign_on_data);
	curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
	curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->err);
	curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(x->easy, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
}

static void
paysign_xfer_start(CURLM *multi, struct paysign_xfer *x, const char *url, const struct sbuf *body,
    struct curl_slist *hdrs)
{
	x->head_len = x->total = 0;
	x->err[0] = '\0';
	x->start_us = now_mono_us();
	curl_easy_setopt(x->easy, CURLOPT_URL, url);
	curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, body->p);
	curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
	curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, hdrs);
	if (curl_multi_add_handle(multi, x->easy) != CURLM_OK)
		paysign_fatal("curl_multi_add_handle failed");
}

static long
paysign_status(const struct paysign_xfer *x, CURLcode rc)
{
	long status = 0;

	if (rc == CURLE_OK)
		curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
	return status;
}

/* "status=<code> body=<first 60 bytes, escaped>"; a transport failure is
 * status=0 with the curl error as the body. */
static void
paysign_print_answer(const struct paysign_xfer *x, long status)
{
	size_t i, n = x->head_len < 60 ? x->head_len : 60;
	unsigned char c;

	if (status == 0) {
		printf("status=0 body=curl: %s\n", x->err);
		return;
	}
	printf("status=%ld body=", status);
	for (i = 0; i < n; i++) {
		c = (unsigned char)x->head[i];
		if (c == '\\')
			fputs("\\\\", stdout);
		else if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\r')
			fputs("\\r", stdout);
		else if (c < 0x20 || c > 0x7e)
			printf("\\x%02x", c);
		else
			putchar(c);
	}
	putchar('\n');
}

/* The same request count times, parallel at a time; 1 if --expect failed. */
static int
paysign_fire(
    const struct paysign_opts *o, const char *url, const struct sbuf *body, struct curl_slist *hdrs)
{
	long par = o->parallel < o->count ? o->parallel : o->count;
	long started = 0, done = 0;
	struct paysign_xfer *xs, *x;
	int running, left, bad = 0;
	CURLM *multi;
	CURLMsg *m;
	long status, i;

	if (o->count == 0)
		return 0;
	if ((multi = curl_multi_init()) == NULL)
		paysign_fatal("curl_multi_init failed");
	xs = xcalloc((size_t)par, sizeof *xs);
	for (i = 0; i < par; i++) {
		paysign_xfer_init(&xs[i], o->timeout_ms);
		paysign_xfer_start(multi, &xs[i], url, body, hdrs);
		started++;
	}
	while (done < o->count) {
		curl_multi_perform(multi, &running);
		while ((m = curl_multi_info_read(multi, &left)) != NULL) {
			if (m->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
			status = paysign_status(x, m->data.result);
			paysign_print_answer(x, status);
			if (o->expect != 0 && status != o->expect)
				bad = 1;
			curl_multi_remove_handle(multi, x->easy);
			done++;
			if (started < o->count) {
				paysign_xfer_start(multi, x, url, body, hdrs);
				started++;
			}
		}
		if (done < o->count)
			curl_multi_poll(multi, NULL, 0, 1000, NULL);
	}
	fflush(stdout);
	for (i = 0; i < par; i++)
		curl_easy_cleanup(xs[i].easy);
	free(xs);
	curl_multi_cleanup(multi);
	return bad;
}

static void
paysign_dump(const struct paysign_opts *o, const struct sbuf *body, const struct sbuf *msg,
    const struct sbuf *sig, const struct curl_slist *hdrs)
{
	struct sbuf h = {0};
	char *path;

	if (o->dump == NULL)
		return;
	for (; hdrs != NULL; hdrs = hdrs->next)
		sbuf_printf(&h, "%s\n", hdrs->data);
	xasprintf(&path, "%s.body", o->dump);
	paysign_write_file(path, body->p, body->len);
	free(path);
	xasprintf(&path, "%s.msg", o->dump);
	paysign_write_file(path, msg->p != NULL ? msg->p : "", msg->len);
	free(path);
	xasprintf(&path, "%s.sig", o->dump);
	paysign_write_file(path, sig->p, sig->len);
	free(path);
	xasprintf(&path, "%s.hdr", o->dump);
	paysign_write_file(path, h.p != NULL ? h.p : "", h.len);
	free(path);
	free(h.p);
}

static char *
paysign_default_otn(const struct paysign_opts *o)
{
	char r[17], *s;

	if (o->out_trade_no != NULL)
		return xstrdup(o->out_trade_no);
	paysign_alnum(r, 16);
	xasprintf(&s, "PS%s", r);
	return s;
}

static int
paysign_wechat_cmd(const struct paysign_opts *o, const char *url)
{
	struct sbuf body = {0}, msg = {0}, sig = {0};
	struct paysign_keys k;
	struct curl_slist *h;
	char *otn, *txid;
	long total;
	int rc;

	total = paysign_number(o->total != NULL ? o->total : "1230", 0, 100000000000L, "--total");
	paysign_resolve(o, true, false, &k);
	otn = paysign_default_otn(o);
	if (o->transaction_id != NULL)
		txid = xstrdup(o->transaction_id);
	else
		xasprintf(&txid, "T%s", otn);
	paysign_wx_body(o, &k, otn, txid, total, &body);
	h = paysign_wx_headers(o, &k, &body, &msg, &sig);
	paysign_dump(o, &body, &msg, &sig, h);
	rc = paysign_fire(o, url, &body, h);
	curl_slist_free_all(h);
	free(body.p);
	free(msg.p);
	free(sig.p);
	free(otn);
	free(txid);
	free(k.serial);
	EVP_PKEY_free(k.wx);
	return rc;
}

static int
paysign_alipay_cmd(const struct paysign_opts *o, const char *url)
{
	struct sbuf body = {0}, msg = {0}, sig = {0};
	struct paysign_keys k;
	struct curl_slist *h;
	char *otn, *tno;
	int rc;

	paysign_resolve(o, false, true, &k);
	otn = paysign_default_otn(o);
	if (o->trade_no != NULL)
		tno = xstrdup(o->trade_no);
	else
		xasprintf(&tno, "T%s", otn);
	paysign_ali_form(o, &k, otn, tno, o->total != NULL ? o->total : "12.30", &body, &msg, &sig);
	h = paysign_ali_headers();
	paysign_dump(o, &body, &msg, &sig, h);
	rc = paysign_fire(o, url, &body, h);
	curl_slist_free_all(h);
	free(body.p);
	free(msg.p);
	free(sig.p);
	free(otn);
	free(tno);
	EVP_PKEY_free(k.ali);
	return rc;
}

/* --- load */

static uint64_t
paysign_hash(const char *s)
{
	uint64_t h = 14695981039346656037ULL;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

/* The slot of meter's chain (its head or an empty slot). */
static struct paysign_order **
paysign_meter_slot(struct paysign_load *l, const char *meter)
{
	size_t i = (size_t)paysign_hash(meter) & (l->meters_cap - 1);

	while (l->meters[i] != NULL && strcmp(l->meters[i]->meter, meter) != 0)
		i = (i + 1) & (l->meters_cap - 1);
	return &l->meters[i];
}

static void
paysign_load_orders(struct paysign_load *l, const char *path)
{
	char line[512], prov[32], otn[128], fen[32], meter[128];
	struct paysign_order *od, **slot;
	size_t cap = 0, lineno = 0, i;
	FILE *f = fopen(path, "r");

	if (f == NULL)
		paysign_fatal("%s: %s", path, strerror(errno));
	while (fgets(line, sizeof line, f) != NULL) {
		lineno++;
		if (line[strspn(line, " \t\r\n")] == '\0' || line[0] == '#')
			continue;
		if (sscanf(line, "%31s %127s %31s %127s", prov, otn, fen, meter) != 4)
			paysign_fatal(
			    "%s:%zu: want 'provider out_trade_no fen meter_id'", path, lineno);
		if (l->n == cap) {
			cap = cap ? cap * 2 : 1024;
			l->orders = xreallocarray(l->orders, cap, sizeof *l->orders);
		}
		od = &l->orders[l->n++];
		memset(od, 0, sizeof *od);
		if (strcmp(prov, "wechat") == 0)
			od->wechat = true;
		else if (strcmp(prov, "alipay") != 0)
			paysign_fatal("%s:%zu: provider is wechat or alipay", path, lineno);
		od->otn = xstrdup(otn);
		od->meter = xstrdup(meter);
		xasprintf(&od->txid, "T%s", otn);
		od->fen = paysign_number(fen, 0, 100000000000L, "fen");
	}
	fclose(f);
	if (l->n == 0)
		paysign_fatal("%s: no orders", path);
	for (l->meters_cap = 16; l->meters_cap < 2 * l->n; l->meters_cap *= 2)
		;
	l->meters = xcalloc(l->meters_cap, sizeof *l->meters);
	for (i = 0; i < l->n; i++) {
		slot = paysign_meter_slot(l, l->orders[i].meter);
		l->orders[i].next_meter = *slot;
		*slot = &l->orders[i];
	}
}

static void
paysign_on_connect(struct mosquitto *mosq, void *arg, int rc)
{
	struct paysign_load *l = arg;
	char *topic;

	if (rc != 0) {
		fprintf(
		    stderr, "paysign: MQTT connect refused: %s\n", mosquitto_connack_string(rc));
		return;
	}
	l->mqtt_up = true;
	xasprintf(&topic, "%s/+/cmd", l->prefix);
	mosquitto_subscribe(mosq, NULL, topic, 1);
	free(topic);
}

static void
paysign_on_subscribe(struct mosquitto *mosq, void *arg, int mid, int n, const int *granted)
{
	struct paysign_load *l = arg;

	UNUSED(mosq);
	UNUSED(mid);
	if (n < 1 || granted[0] > 2)
		paysign_fatal("MQTT subscription refused");
	l->subscribed = true;
}

static void
paysign_on_disconnect(struct mosquitto *mosq, void *arg, int rc)
{
	struct paysign_load *l = arg;

	UNUSED(mosq);
	l->mqtt_up = false;
	if (rc != 0)
		fprintf(stderr, "paysign: MQTT connection lost (%d)\n", rc);
}

/* A command for a meter: the first arm or close after an order's first
 * POST is that order's arm time. */
static void
paysign_on_message(struct mosquitto *mosq, void *arg, const struct mosquitto_message *msg)
{
	struct paysign_load *l = arg;
	size_t plen = strlen(l->prefix), tlen = strlen(msg->topic);
	int64_t now = now_mono_us();
	struct paysign_order *od;
	const char *action;
	char meter[METER_ID_MAX + 1];
	json_t *j;

	UNUSED(mosq);
	if (tlen < plen + 6 || strncmp(msg->topic, l->prefix, plen) != 0 ||
	    msg->topic[plen] != '/' || strcmp(msg->topic + tlen - 4, "/cmd") != 0 ||
	    tlen - plen - 5 > METER_ID_MAX)
		return;
	memcpy(meter, msg->topic + plen + 1, tlen - plen - 5);
	meter[tlen - plen - 5] = '\0';
	j = json_loadb(msg->payload, (size_t)msg->payloadlen, 0, NULL);
	action = json_string_value(json_object_get(j, "action"));
	if (action != NULL && (strcmp(action, "arm") == 0 || strcmp(action, "close") == 0)) {
		for (od = *paysign_meter_slot(l, meter); od != NULL; od = od->next_meter) {
			if (od->first_us != 0 && !od->armed) {
				od->armed = true;
				od->arm_us = now - od->first_us;
				l->armed++;
			}
		}
	}
	json_decref(j);
}

static void
paysign_mqtt_start(struct paysign_load *l)
{
	char host[256], *colon;
	int64_t until;
	long port;

	snprintf(host, sizeof host, "%s", l->o->mqtt);
	if ((colon = strrchr(host, ':')) == NULL)
		paysign_fatal("--mqtt wants HOST:PORT");
	*colon = '\0';
	port = paysign_number(colon + 1, 1, 65535, "--mqtt port");
	mosquitto_lib_init();
	if ((l->mosq = mosquitto_new(NULL, true, l)) == NULL)
		paysign_fatal("mosquitto_new failed");
	mosquitto_int_option(l->mosq, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_connect_callback_set(l->mosq, paysign_on_connect);
	mosquitto_subscribe_callback_set(l->mosq, paysign_on_subscribe);
	mosquitto_disconnect_callback_set(l->mosq, paysign_on_disconnect);
	mosquitto_message_callback_set(l->mosq, paysign_on_message);
	if (mosquitto_connect(l->mosq, host, (int)port, 30) != MOSQ_ERR_SUCCESS)
		paysign_fatal("MQTT: cannot connect to %s", l->o->mqtt);
	until = now_mono_us() + 5000000;
	while (!l->subscribed && now_mono_us() < until)
		mosquitto_loop(l->mosq, 100, 1);
	if (!l->subscribed)
		paysign_fatal("MQTT: no subscription after 5 s");
}

/* Service the MQTT socket after a poll; reconnect once a second when down. */
static void
paysign_mqtt_service(struct paysign_load *l, const struct curl_waitfd *w, int64_t *misc_at)
{
	int64_t now = now_mono_us();

	if (w != NULL && (w->revents & CURL_WAIT_POLLIN))
		mosquitto_loop_read(l->mosq, 1);
	if (mosquitto_want_write(l->mosq))
		mosquitto_loop_write(l->mosq, 1);
	if (now >= *misc_at) {
		*misc_at = now + 1000000;
		if (mosquitto_loop_misc(l->mosq) == MOSQ_ERR_NO_CONN && !l->mqtt_up)
			mosquitto_reconnect(l->mosq);
	}
}

static void
paysign_load_start(struct paysign_load *l, CURLM *multi, struct paysign_xfer *x,
    struct paysign_order *od, struct curl_slist *ali_hdrs, const char *url_wx, const char *url_ali)
{
	x->order = od;
	if (od->wechat) {
		x->hdrs = paysign_wx_headers(l->o, l->k, &od->body, NULL, NULL);
		paysign_xfer_start(multi, x, url_wx, &od->body, x->hdrs);
	} else {
		x->hdrs = NULL;
		paysign_xfer_start(multi, x, url_ali, &od->body, ali_hdrs);
	}
	if (od->first_us == 0)
		od->first_us = x->start_us;
	l->sent++;
}

/* One answer: success is WeChat 200/204, Alipay 200 with exactly "success". */
static void
paysign_load_done(struct paysign_load *l, struct paysign_xfer *x, CURLcode rc, int64_t deadline)
{
	struct paysign_order *od = x->order;
	long status = paysign_status(x, rc);
	int64_t now = now_mono_us();
	bool good;

	if (od->wechat)
		good = status == 200 || status == 204;
	else
		good = status == 200 && x->total == 7 && memcmp(x->head, "success", 7) == 0;
	curl_slist_free_all(x->hdrs);
	x->hdrs = NULL;
	if (good) {
		if (od->ok)
			return;
		od->ok = true;
		l->ok++;
		l->lat[l->nlat++] = now - x->start_us;
		if (l->success_log != NULL) {
			fprintf(l->success_log, "%s\n", od->otn);
			fflush(l->success_log);
		}
		return;
	}
	if (l->errors_shown < 10) {
		l->errors_shown++;
		fprintf(stderr, "paysign: %s %s: ", od->wechat ? "wechat" : "alipay", od->otn);
		fflush(stderr);
		if (status == 0)
			fprintf(stderr, "curl: %s\n", x->err);
		else
			fprintf(
			    stderr, "status=%ld body=%.*s\n", status, (int)x->head_len, x->head);
	}
	if (l->o->retry && now + l->o->retry_delay_ms * 1000 < deadline) {
		od->retry_at = now + l->o->retry_delay_ms * 1000;
		od->next_retry = NULL;
		if (l->rq_tail != NULL)
			l->rq_tail->next_retry = od;
		else
			l->rq_head = od;
		l->rq_tail = od;
	}
}

static int
paysign_cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Milliseconds with one decimal, from microseconds, without floating point. */
static void
paysign_print_ms(const char *name, int64_t us)
{
	printf(" %s=%" PRId64 ".%" PRId64, name, us / 1000, (us % 1000) / 100);
}

static void
paysign_print_pcts(int64_t *v, size_t n)
{
	qsort(v, n, sizeof *v, paysign_cmp_i64);
	paysign_print_ms("p50", n ? v[(n - 1) * 50 / 100] : 0);
	paysign_print_ms("p99", n ? v[(n - 1) * 99 / 100] : 0);
	paysign_print_ms("max", n ? v[n - 1] : 0);
	putchar('\n');
}

static int
paysign_load_cmd(const struct paysign_opts *o, const char *url_wx, const char *url_ali)
{
	struct paysign_load l = {0};
	struct paysign_keys k;
	struct paysign_xfer *xs, *x, *free_x = NULL;
	struct paysign_order *od;
	struct curl_slist *ali_hdrs;
	struct curl_waitfd w;
	bool need_wx = false, need_ali = false;
	int64_t now, deadline, due, wait, misc_at = 0, elapsed_ms, until;
	size_t next = 0, inflight = 0, i, missing = 0;
	char total[40];
	int running, left, wait_ms, rc = 0;
	CURLM *multi;
	CURLMsg *m;

	if (o->orders == NULL)
		paysign_fatal("load needs --orders FILE");
	l.o = o;
	l.k = &k;
	paysign_load_orders(&l, o->orders);
	for (i = 0; i < l.n; i++) {
		need_wx |= l.orders[i].wechat;
		need_ali |= !l.orders[i].wechat;
	}
	paysign_resolve(o, need_wx, need_ali, &k);
	l.lat = xcalloc(l.n, sizeof *l.lat);
	if (o->success_log != NULL && (l.success_log = fopen(o->success_log, "w")) == NULL)
		paysign_fatal("%s: %s", o->success_log, strerror(errno));

	/* Bodies first (encryption, and the Alipay signatures, which do not
	 * change on resend), so that the timed part only posts. */
	for (i = 0; i < l.n; i++) {
		od = &l.orders[i];
		if (od->wechat)
			paysign_wx_body(o, &k, od->otn, od->txid, od->fen, &od->body);
		else {
			snprintf(total, sizeof total, "%" PRId64 ".%02" PRId64, od->fen / 100,
			    od->fen % 100);
			paysign_ali_form(o, &k, od->otn, od->txid, total, &od->body, NULL, NULL);
		}
	}
	if (o->mqtt != NULL) {
		l.prefix = xstrdup(o->prefix);
		paysign_mqtt_start(&l);
	}

	if ((multi = curl_multi_init()) == NULL)
		paysign_fatal("curl_multi_init failed");
	curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, o->concurrency);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, o->concurrency * 2);
	ali_hdrs = paysign_ali_headers();
	xs = xcalloc((size_t)o->concurrency, sizeof *xs);
	for (i = 0; i < (size_t)o->concurrency; i++) {
		paysign_xfer_init(&xs[i], o->timeout_ms);
		xs[i].next_free = free_x;
		free_x = &xs[i];
	}

	l.start_us = now_mono_us();
	deadline = l.start_us + (int64_t)o->deadline_s * 1000000;
	for (;;) {
		now = now_mono_us();
		/* Start what is due: retries first (they are older), then new
		 * orders at --rate. Pacing is to the millisecond of the poll
		 * below: what is due within one is on time. */
		while (free_x != NULL) {
			if (l.rq_head != NULL && l.rq_head->retry_at <= now + 1000) {
				od = l.rq_head;
				if ((l.rq_head = od->next_retry) == NULL)
					l.rq_tail = NULL;
				l.retries++;
			} else if (next < l.n &&
			           (o->rate == 0 ||
			               l.start_us + (int64_t)next * 1000000 / o->rate <=
			                   now + 1000)) {
				od = &l.orders[next++];
			} else
				break;
			x = free_x;
			free_x = x->next_free;
			paysign_load_start(&l, multi, x, od, ali_hdrs, url_wx, url_ali);
			inflight++;
		}
		if (next == l.n && inflight == 0 && l.rq_head == NULL)
			break;

		curl_multi_perform(multi, &running);
		while ((m = curl_multi_info_read(multi, &left)) != NULL) {
			if (m->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
			curl_multi_remove_handle(multi, x->easy);
			paysign_load_done(&l, x, m->data.result, deadline);
			x->next_free = free_x;
			free_x = x;
			inflight--;
		}

		now = now_mono_us();
		wait = 100000;
		if (free_x != NULL) {
			if (next < l.n) {
				due = o->rate == 0 ? now
				                   : l.start_us + (int64_t)next * 1000000 / o->rate;
				if (due - now < wait)
					wait = due - now;
			}
			if (l.rq_head != NULL && l.rq_head->retry_at - now < wait)
				wait = l.rq_head->retry_at - now;
		}
		wait_ms = wait < 0 ? 0 : (int)((wait + 999) / 1000);
		if (l.mosq != NULL) {
			w.fd = mosquitto_socket(l.mosq);
			w.events = CURL_WAIT_POLLIN |
			           (mosquitto_want_write(l.mosq) ? CURL_WAIT_POLLOUT : 0);
			w.revents = 0;
			curl_multi_poll(
			    multi, w.fd >= 0 ? &w : NULL, w.fd >= 0 ? 1 : 0, wait_ms, NULL);
			paysign_mqtt_service(&l, w.fd >= 0 ? &w : NULL, &misc_at);
		} else
			curl_multi_poll(multi, NULL, 0, wait_ms, NULL);
	}
	elapsed_ms = (now_mono_us() - l.start_us) / 1000;

	/* Arms still on their way: wait up to 10 s for the paid orders'. */
	if (l.mosq != NULL) {
		until = now_mono_us() + 10000000;
		for (;;) {
			missing = 0;
			for (i = 0; i < l.n; i++)
				missing += l.orders[i].ok && !l.orders[i].armed;
			if (missing == 0 || now_mono_us() >= until)
				break;
			mosquitto_loop(l.mosq, 100, 1);
			if (!l.mqtt_up)
				mosquitto_reconnect(l.mosq);
		}
	}

	printf("sent=%zu ok=%zu failed=%zu retries=%zu elapsed_ms=%" PRId64 " rate=%" PRId64
	       ".%" PRId64 "\n",
	    l.sent, l.ok, l.n - l.ok, l.retries, elapsed_ms,
	    elapsed_ms ? (int64_t)l.ok * 1000 / elapsed_ms : 0,
	    elapsed_ms ? (int64_t)l.ok * 10000 / elapsed_ms % 10 : 0);
	printf("latency_ms");
	paysign_print_pcts(l.lat, l.nlat);
	if (l.mosq != NULL) {
		size_t na = 0;

		for (i = 0; i < l.n; i++) {
			if (l.orders[i].armed)
				l.lat[na++] = l.orders[i].arm_us;
		}
		printf("arm_ms n=%zu", na);
		paysign_print_pcts(l.lat, na);
		for (i = 0; i < l.n && missing > 0; i++) {
			if (l.orders[i].ok && !l.orders[i].armed)
				fprintf(stderr, "paysign: no arm for %s (meter %s)\n",
				    l.orders[i].otn, l.orders[i].meter);
		}
		if (missing > 0)
			rc = 1;
	}
	fflush(stdout);
	for (i = 0; i < l.n; i++) {
		if (!l.orders[i].ok && o->retry) {
			fprintf(stderr, "paysign: never succeeded: %s\n", l.orders[i].otn);
			rc = 1;
		}
	}

	for (i = 0; i < (size_t)o->concurrency; i++)
		curl_easy_cleanup(xs[i].easy);
	free(xs);
	curl_slist_free_all(ali_hdrs);
	curl_multi_cleanup(multi);
	if (l.mosq != NULL) {
		mosquitto_disconnect(l.mosq);
		mosquitto_destroy(l.mosq);
		mosquitto_lib_cleanup();
	}
	if (l.success_log != NULL)
		fclose(l.success_log);
	for (i = 0; i < l.n; i++) {
		free(l.orders[i].otn);
		free(l.orders[i].meter);
		free(l.orders[i].txid);
		free(l.orders[i].body.p);
	}
	free(l.orders);
	free(l.meters);
	free(l.lat);
	free(l.prefix);
	free(k.serial);
	EVP_PKEY_free(k.wx);
	EVP_PKEY_free(k.ali);
	return rc;
}

/* --- start-up */

static void
paysign_usage(FILE *f)
{
	fprintf(f,
	    "usage: paysign keys DIR\n"
	    "       paysign wechat URL [options]\n"
	    "       paysign alipay URL [options]\n"
	    "       paysign load URL-WX URL-ALI --orders FILE [options]\n"
	    "keys:    --keys DIR (defaults below) --key F (wechat/alipay signing key)\n"
	    "         --wx-key F --ali-key F --serial S --wx-pubkey (sign with wx_pub.key as\n"
	    "         " PAYSIGN_WX_PUBKEY_ID ") --apiv3 F\n"
	    "wechat:  --mchid --appid --out-trade-no --transaction-id --total FEN --currency\n"
	    "         --trade-state --event-type --original-type --id --skew SEC --tamper\n"
	    "         --bad-sig --apiv3-wrong\n"
	    "alipay:  --app-id --out-trade-no --trade-no --total YUAN --receipt-amount\n"
	    "         --trade-status --buyer-id --seller-id --subject --notify-id\n"
	    "         --field k=v ... --refund-fee X --sign-type RSA2|RSA --bad-sig --plus-space\n"
	    "sending: -n N (sequential) -P N (concurrent) --expect CODE --timeout MS\n"
	    "         --dump PREFIX (write PREFIX.body .msg .sig .hdr; -n 0 sends nothing)\n"
	    "load:    --orders FILE --rate R --concurrency C --retry --retry-delay MS\n"
	    "         --deadline SEC --success-log FILE --mqtt HOST:PORT --prefix P\n");
}

enum {
	OPT_KEYS = 256,
	OPT_KEY,
	OPT_WX_KEY,
	OPT_ALI_KEY,
	OPT_SERIAL,
	OPT_WX_PUBKEY,
	OPT_APIV3,
	OPT_MCHID,
	OPT_APPID,
	OPT_APP_ID,
	OPT_SELLER_ID,
	OPT_BUYER_ID,
	OPT_OTN,
	OPT_TXID,
	OPT_TRADE_NO,
	OPT_TOTAL,
	OPT_CURRENCY,
	OPT_TRADE_STATE,
	OPT_TRADE_STATUS,
	OPT_EVENT_TYPE,
	OPT_ORIGINAL_TYPE,
	OPT_ID,
	OPT_NOTIFY_ID,
	OPT_REFUND_FEE,
	OPT_SIGN_TYPE,
	OPT_SUBJECT,
	OPT_RECEIPT,
	OPT_FIELD,
	OPT_SKEW,
	OPT_TAMPER,
	OPT_BAD_SIG,
	OPT_APIV3_WRONG,
	OPT_PLUS_SPACE,
	OPT_EXPECT,
	OPT_TIMEOUT,
	OPT_DUMP,
	OPT_ORDERS,
	OPT_RATE,
	OPT_CONCURRENCY,
	OPT_RETRY,
	OPT_RETRY_DELAY,
	OPT_DEADLINE,
	OPT_SUCCESS_LOG,
	OPT_MQTT,
	OPT_PREFIX,
	OPT_HELP
};

static const struct option paysign_longopts[] = {{"keys", required_argument, NULL, OPT_KEYS},
    {"key", required_argument, NULL, OPT_KEY}, {"wx-key", required_argument, NULL, OPT_WX_KEY},
    {"ali-key", required_argument, NULL, OPT_ALI_KEY},
    {"serial", required_argument, NULL, OPT_SERIAL},
    {"wx-pubkey", no_argument, NULL, OPT_WX_PUBKEY}, {"apiv3", required_argument, NULL, OPT_APIV3},
    {"mchid", required_argument, NULL, OPT_MCHID}, {"appid", required_argument, NULL, OPT_APPID},
    {"app-id", required_argument, NULL, OPT_APP_ID},
    {"seller-id", required_argument, NULL, OPT_SELLER_ID},
    {"buyer-id", required_argument, NULL, OPT_BUYER_ID},
    {"out-trade-no", required_argument, NULL, OPT_OTN},
    {"transaction-id", required_argument, NULL, OPT_TXID},
    {"trade-no", required_argument, NULL, OPT_TRADE_NO},
    {"total", required_argument, NULL, OPT_TOTAL},
    {"currency", required_argument, NULL, OPT_CURRENCY},
    {"trade-state", required_argument, NULL, OPT_TRADE_STATE},
    {"trade-status", required_argument, NULL, OPT_TRADE_STATUS},
    {"event-type", required_argument, NULL, OPT_EVENT_TYPE},
    {"original-type", required_argument, NULL, OPT_ORIGINAL_TYPE},
    {"id", required_argument, NULL, OPT_ID}, {"notify-id", required_argument, NULL, OPT_NOTIFY_ID},
    {"refund-fee", required_argument, NULL, OPT_REFUND_FEE},
    {"sign-type", required_argument, NULL, OPT_SIGN_TYPE},
    {"subject", required_argument, NULL, OPT_SUBJECT},
    {"receipt-amount", required_argument, NULL, OPT_RECEIPT},
    {"field", required_argument, NULL, OPT_FIELD}, {"skew", required_argument, NULL, OPT_SKEW},
    {"tamper", no_argument, NULL, OPT_TAMPER}, {"bad-sig", no_argument, NULL, OPT_BAD_SIG},
    {"apiv3-wrong", no_argument, NULL, OPT_APIV3_WRONG},
    {"plus-space", no_argument, NULL, OPT_PLUS_SPACE},
    {"expect", required_argument, NULL, OPT_EXPECT},
    {"timeout", required_argument, NULL, OPT_TIMEOUT}, {"dump", required_argument, NULL, OPT_DUMP},
    {"orders", required_argument, NULL, OPT_ORDERS}, {"rate", required_argument, NULL, OPT_RATE},
    {"concurrency", required_argument, NULL, OPT_CONCURRENCY},
    {"retry", no_argument, NULL, OPT_RETRY},
    {"retry-delay", required_argument, NULL, OPT_RETRY_DELAY},
    {"deadline", required_argument, NULL, OPT_DEADLINE},
    {"success-log", required_argument, NULL, OPT_SUCCESS_LOG},
    {"mqtt", required_argument, NULL, OPT_MQTT}, {"prefix", required_argument, NULL, OPT_PREFIX},
    {"help", no_argument, NULL, OPT_HELP}, {NULL, 0, NULL, 0}};

static void NORETURN
paysign_bad_usage(void)
{
	paysign_usage(stderr);
	exit(2);
}

static void
paysign_options(int argc, char **argv, const char *cmd, struct paysign_opts *o)
{
	bool alipay = strcmp(cmd, "alipay") == 0;
	int c;

	memset(o, 0, sizeof *o);
	o->mchid = "1900000001";
	o->appid = "wxd678efh567hg6787";
	o->app_id = "2021000000000001";
	o->seller_id = "2088000000000001";
	o->buyer_id = "2088102122524333";
	o->currency = "CNY";
	o->trade_state = "SUCCESS";
	o->trade_status = "TRADE_SUCCESS";
	o->event_type = "TRANSACTION.SUCCESS";
	o->original_type = "transaction";
	o->sign_type = "RSA2";
	o->subject = "电费充值 Room 3&4 =A+B 100%";
	o->count = 1;
	o->parallel = 1;
	o->timeout_ms = 10000;
	o->prefix = "meters";
	o->concurrency = 16;
	o->retry_delay_ms = 200;
	o->deadline_s = 60;
	while ((c = getopt_long(argc, argv, "n:P:", paysign_longopts, NULL)) != -1) {
		switch (c) {
		case 'n':
			o->count = paysign_number(optarg, 0, 1000000, "-n");
			o->count_set = true;
			break;
		case 'P':
			o->parallel = paysign_number(optarg, 1, 10000, "-P");
			break;
		case OPT_KEYS:
			o->keys_dir = optarg;
			break;
		case OPT_KEY:
			if (alipay)
				o->ali_key = optarg;
			else
				o->wx_key = optarg;
			break;
		case OPT_WX_KEY:
			o->wx_key = optarg;
			break;
		case OPT_ALI_KEY:
			o->ali_key = optarg;
			break;
		case OPT_SERIAL:
			o->serial = optarg;
			break;
		case OPT_WX_PUBKEY:
			o->wx_pubkey = true;
			break;
		case OPT_APIV3:
			o->apiv3 = optarg;
			break;
		case OPT_MCHID:
			o->mchid = optarg;
			break;
		case OPT_APPID:
			o->appid = optarg;
			break;
		case OPT_APP_ID:
			o->app_id = optarg;
			break;
		case OPT_SELLER_ID:
			o->seller_id = optarg;
			break;
		case OPT_BUYER_ID:
			o->buyer_id = optarg;
			break;
		case OPT_OTN:
			o->out_trade_no = optarg;
			break;
		case OPT_TXID:
			o->transaction_id = optarg;
			break;
		case OPT_TRADE_NO:
			o->trade_no = optarg;
			break;
		case OPT_TOTAL:
			o->total = optarg;
			break;
		case OPT_CURRENCY:
			o->currency = optarg;
			break;
		case OPT_TRADE_STATE:
			o->trade_state = optarg;
			break;
		case OPT_TRADE_STATUS:
			o->trade_status = optarg;
			break;
		case OPT_EVENT_TYPE:
			o->event_type = optarg;
			break;
		case OPT_ORIGINAL_TYPE:
			o->original_type = optarg;
			break;
		case OPT_ID:
			o->id = optarg;
			break;
		case OPT_NOTIFY_ID:
			o->notify_id = optarg;
			break;
		case OPT_REFUND_FEE:
			o->refund_fee = optarg;
			break;
		case OPT_SIGN_TYPE:
			o->sign_type = optarg;
			break;
		case OPT_SUBJECT:
			o->subject = optarg;
			break;
		case OPT_RECEIPT:
			o->receipt_amount = optarg;
			break;
		case OPT_FIELD:
			if (strchr(optarg, '=') == NULL || optarg[0] == '=')
				paysign_fatal("--field wants k=v");
			o->fields = xreallocarray(o->fields, o->nfields + 1, sizeof *o->fields);
			o->fields[o->nfields++] = optarg;
			break;
		case OPT_SKEW:
			o->skew = paysign_number(optarg, -86400000, 86400000, "--skew");
			break;
		case OPT_TAMPER:
			o->tamper = true;
			break;
		case OPT_BAD_SIG:
			o->bad_sig = true;
			break;
		case OPT_APIV3_WRONG:
			o->apiv3_wrong = true;
			break;
		case OPT_PLUS_SPACE:
			o->plus_space = true;
			break;
		case OPT_EXPECT:
			o->expect = paysign_number(optarg, 0, 999, "--expect");
			break;
		case OPT_TIMEOUT:
			o->timeout_ms = paysign_number(optarg, 1, 3600000, "--timeout");
			break;
		case OPT_DUMP:
			o->dump = optarg;
			break;
		case OPT_ORDERS:
			o->orders = optarg;
			break;
		case OPT_RATE:
			o->rate = paysign_number(optarg, 0, 10000000, "--rate");
			break;
		case OPT_CONCURRENCY:
			o->concurrency = paysign_number(optarg, 1, 10000, "--concurrency");
			break;
		case OPT_RETRY:
			o->retry = true;
			break;
		case OPT_RETRY_DELAY:
			o->retry_delay_ms = paysign_number(optarg, 0, 3600000, "--retry-delay");
			break;
		case OPT_DEADLINE:
			o->deadline_s = paysign_number(optarg, 1, 86400, "--deadline");
			break;
		case OPT_SUCCESS_LOG:
			o->success_log = optarg;
			break;
		case OPT_MQTT:
			o->mqtt = optarg;
			break;
		case OPT_PREFIX:
			o->prefix = optarg;
			break;
		case OPT_HELP:
			paysign_usage(stdout);
			exit(0);
		default:
			paysign_bad_usage();
		}
	}
	/* -P N alone sends N copies at once; with -n, N copies P at a time. */
	if (!o->count_set && o->parallel > 1)
		o->count = o->parallel;
}

int
main(int argc, char **argv)
{
	struct paysign_opts o;
	const char *cmd;
	int rc;

	if (argc < 2)
		paysign_bad_usage();
	cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
		paysign_usage(stdout);
		return 0;
	}
	if (strcmp(cmd, "keys") == 0) {
		if (argc != 3)
			paysign_bad_usage();
		/* Private keys and the APIv3 key as a provider hands them out:
		 * owner only (prepaidd refuses a key readable by everyone). */
		umask(077);
		return paysign_keys_cmd(argv[2]);
	}
	if (strcmp(cmd, "wechat") != 0 && strcmp(cmd, "alipay") != 0 && strcmp(cmd, "load") != 0)
		paysign_bad_usage();
	/* Options may come before or after the URLs (getopt permutes). */
	paysign_options(argc - 1, argv + 1, cmd, &o);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		paysign_fatal("curl_global_init failed");
	if (strcmp(cmd, "load") == 0) {
		if (argc - 1 - optind != 2)
			paysign_bad_usage();
		rc = paysign_load_cmd(&o, argv[1 + optind], argv[2 + optind]);
	} else {
		if (argc - 1 - optind != 1)
			paysign_bad_usage();
		if (strcmp(cmd, "wechat") == 0)
			rc = paysign_wechat_cmd(&o, argv[1 + optind]);
		else
			rc = paysign_alipay_cmd(&o, argv[1 + optind]);
	}
	free(o.fields);
	free(paysign_scratch.p);
	curl_global_cleanup();
	return rc;
}
