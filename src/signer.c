/*
 * signer.c: Aliyun RPC signature V1 and Tencent Cloud TC3-HMAC-SHA256, as
 * described in signer.h and reference/payments.md sections 3.1 and 3.2. The
 * digests, MACs and Base64 come from OpenSSL's libcrypto; this file only
 * arranges the strings each provider signs. Buffers that held a secret or a
 * derived key are wiped with OPENSSL_cleanse before they are freed.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "signer.h"

/* 9999-12-31T23:59:59Z: the last second both formats can spell. */
#define SIGNER_TIME_MAX INT64_C(253402300799)

#define SIGNER_TC3_ALGORITHM "TC3-HMAC-SHA256"
#define SIGNER_TC3_DEFAULT_CT "application/json; charset=utf-8"

/* The parameters signer_aliyun_form adds itself; a caller may not set them. */
/* A refusal: one line for *cause (the caller frees it), when wanted. */
static void
signer_fail(char **cause, const char *what)
{
	if (cause != NULL)
		*cause = xstrdup(what);
}

static const char *const signer_aliyun_reserved[] = {
    "AccessKeyId",
    "Action",
    "Format",
    "RegionId",
    "Signature",
    "SignatureMethod",
    "SignatureNonce",
    "SignatureVersion",
    "Timestamp",
    "Version",
};

/* Hand over an sbuf's string; an sbuf that never grew has no buffer yet. */
static char *
signer_take(struct sbuf *b)
{
	return b->p != NULL ? b->p : xstrdup("");
}

static bool
signer_empty(const char *s)
{
	return s == NULL || *s == '\0';
}

/* Header values end up on a header line: a CR or LF would start another. */
static bool
signer_has_control(const char *s)
{
	const unsigned char *p;

	for (p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return true;
	}
	return false;
}

/* gmtime_r, not localtime_r: both providers want the UTC calendar. */
static bool
signer_utc(int64_t t, struct tm *tm)
{
	time_t tt;

	if (t < 0 || t > SIGNER_TIME_MAX)
		return false;
	tt = (time_t)t;
	return gmtime_r(&tt, tm) != NULL;
}

static bool
signer_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.' || c == '~';
}

static void
signer_encode_into(struct sbuf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;
	char esc[3];

	for (p = (const unsigned char *)s; *p != '\0'; p++) {
		if (signer_unreserved(*p)) {
			sbuf_add(b, (const char *)p, 1);
			continue;
		}
		esc[0] = '%';
		esc[1] = hex[*p >> 4];
		esc[2] = hex[*p & 15];
		sbuf_add(b, esc, 3);
	}
}

char *
signer_percent_encode(const char *s)
{
	struct sbuf b = {0};

	signer_encode_into(&b, s);
	return signer_take(&b);
}

static int
signer_param_cmp(const void *a, const void *b)
{
	const struct signer_param *const *pa = a;
	const struct signer_param *const *pb = b;

	/* strcmp compares as unsigned char: the byte order Aliyun sorts by. */
	return strcmp((*pa)->name, (*pb)->name);
}

char *
signer_aliyun_canonical(const struct signer_param *params, size_t n, char **cause)
{
	const struct signer_param **sorted;
	struct sbuf b = {0};
	size_t i;

	for (i = 0; i < n; i++) {
		if (signer_empty(params[i].name)) {
			signer_fail(cause, "empty parameter name");
			return NULL;
		}
		if (params[i].value == NULL) {
			signer_fail(cause, "parameter without a value");
			return NULL;
		}
	}
	sorted = xreallocarray(NULL, n, sizeof *sorted);
	for (i = 0; i < n; i++)
		sorted[i] = &params[i];
	qsort(sorted, n, sizeof *sorted, signer_param_cmp);
	for (i = 0; i < n; i++) {
		if (i > 0 && strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
			signer_fail(cause, "duplicate parameter");
			free(sorted);
			free(b.p);
			return NULL;
		}
		if (i > 0)
			sbuf_add(&b, "&", 1);
		signer_encode_into(&b, sorted[i]->name);
		sbuf_add(&b, "=", 1);
		signer_encode_into(&b, sorted[i]->value);
	}
	free(sorted);
	return signer_take(&b);
}

char *
signer_aliyun_string_to_sign(const char *method, const char *canonical)
{
	struct sbuf b = {0};

	sbuf_adds(&b, method);
	sbuf_adds(&b, "&%2F&");
	signer_encode_into(&b, canonical);
	return signer_take(&b);
}

char *
signer_aliyun_signature(const char *secret, const char *string_to_sign)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned char out[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
	unsigned int mdlen = 0;
	size_t keylen = strlen(secret) + 1;
	char *key;
	bool ok;

	if (keylen > INT_MAX)
		return NULL;
	/* Aliyun's key is the secret followed by "&" (an empty token secret). */
	key = xmalloc(keylen + 1);
	memcpy(key, secret, keylen - 1);
	key[keylen - 1] = '&';
	key[keylen] = '\0';
	ok = HMAC(EVP_sha1(), key, (int)keylen, (const unsigned char *)string_to_sign,
	         strlen(string_to_sign), md, &mdlen) != NULL;
	OPENSSL_cleanse(key, keylen);
	free(key);
	if (!ok)
		return NULL;
	EVP_EncodeBlock(out, md, (int)mdlen);
	OPENSSL_cleanse(md, sizeof md);
	return xstrdup((const char *)out);
}

static bool
signer_aliyun_reserved_name(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(signer_aliyun_reserved); i++) {
		if (strcmp(name, signer_aliyun_reserved[i]) == 0)
			return true;
	}
	return false;
}

static bool
signer_method_valid(const char *m)
{
	if (signer_empty(m))
		return false;
	for (; *m != '\0'; m++) {
		if (*m < 'A' || *m > 'Z')
			return false;
	}
	return true;
}

char *
signer_aliyun_form(
    const struct signer_aliyun_req *req, const struct signer_param *biz, size_t nbiz, char **cause)
{
	struct signer_param *all;
	struct sbuf b = {0};
	const char *method = req->method != NULL ? req->method : "POST";
	char stamp[32];
	char *canonical, *sts, *sig;
	struct tm tm;
	size_t i, n = 0;

	if (signer_empty(req->access_key_id) || signer_empty(req->access_key_secret)) {
		signer_fail(cause, "missing access key");
		return NULL;
	}
	if (signer_empty(req->action) || signer_empty(req->version)) {
		signer_fail(cause, "missing action or version");
		return NULL;
	}
	if (signer_empty(req->nonce)) {
		signer_fail(cause, "missing signature nonce");
		return NULL;
	}
	if (!signer_method_valid(method)) {
		signer_fail(cause, "bad HTTP method");
		return NULL;
	}
	if (!signer_utc(req->timestamp, &tm) ||
	    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
		signer_fail(cause, "time stamp out of range");
		return NULL;
	}
	for (i = 0; i < nbiz; i++) {
		if (biz[i].name != NULL && signer_aliyun_reserved_name(biz[i].name)) {
			signer_fail(cause, "business parameter overrides a common one");
			return NULL;
		}
	}

	all = xreallocarray(NULL, nbiz + 9, sizeof *all);
	all[n++] = (struct signer_param){"AccessKeyId", req->access_key_id};
	all[n++] = (struct signer_param){"Action", req->action};
	all[n++] = (struct signer_param){"Format", req->format != NULL ? req->format : "JSON"};
	if (req->region_id != NULL)
		all[n++] = (struct signer_param){"RegionId", req->region_id};
	all[n++] = (struct signer_param){"SignatureMethod", "HMAC-SHA1"};
	all[n++] = (struct signer_param){"SignatureNonce", req->nonce};
	all[n++] = (struct signer_param){"SignatureVersion", "1.0"};
	all[n++] = (struct signer_param){"Timestamp", stamp};
	all[n++] = (struct signer_param){"Version", req->version};
	for (i = 0; i < nbiz; i++)
		all[n++] = biz[i];

	canonical = signer_aliyun_canonical(all, n, cause);
	free(all);
	if (canonical == NULL)
		return NULL;
	sts = signer_aliyun_string_to_sign(method, canonical);
	sig = signer_aliyun_signature(req->access_key_secret, sts);
	free(sts);
	if (sig == NULL) {
		signer_fail(cause, "HMAC-SHA1 failed");
		free(canonical);
		return NULL;
	}
	/* The canonical string is already a valid form body; append to it. */
	b.p = canonical;
	b.len = strlen(canonical);
	b.cap = b.len + 1;
	sbuf_adds(&b, "&Signature=");
	signer_encode_into(&b, sig);
	free(sig);
	return b.p;
}

/* Lower-case hex SHA-256 of len bytes at data, appended to b. */
static bool
signer_sha256_hex(struct sbuf *b, const void *data, size_t len)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL))
		return false;
	sbuf_hex(b, md, mdlen, mdlen);
	return true;
}

/* HMAC-SHA256(key, msg) into out (32 bytes). */
static bool
signer_hmac256(const unsigned char *key, size_t keylen, const char *msg, unsigned char out[32])
{
	unsigned int outlen = 0;

	if (keylen > INT_MAX)
		return false;
	return HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)msg, strlen(msg), out,
	           &outlen) != NULL &&
	       outlen == 32;
}

/* The canonical header value: lower case, no surrounding blanks. */
static void
signer_canonical_value(struct sbuf *b, const char *s)
{
	const char *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	for (; s < end; s++) {
		char c = *s;

		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		sbuf_add(b, &c, 1);
	}
}

/*
 * The signature proper: SecretDate = HMAC("TC3" + key, date), then the
 * service, then "tc3_request", then the string to sign. Hex into b.
 */
static bool
signer_tc3_signature(struct sbuf *b, const char *secret_key, const char *date, const char *service,
    const char *string_to_sign)
{
	unsigned char k1[32], k2[32], k3[32], sig[32];
	size_t keylen = strlen(secret_key) + 3;
	unsigned char *key = xmalloc(keylen);
	bool ok;

	memcpy(key, "TC3", 3);
	memcpy(key + 3, secret_key, keylen - 3);
	ok = signer_hmac256(key, keylen, date, k1) && signer_hmac256(k1, sizeof k1, service, k2) &&
	     signer_hmac256(k2, sizeof k2, "tc3_request", k3) &&
	     signer_hmac256(k3, sizeof k3, string_to_sign, sig);
	if (ok)
		sbuf_hex(b, sig, sizeof sig, sizeof sig);
	OPENSSL_cleanse(key, keylen);
	free(key);
	OPENSSL_cleanse(k1, sizeof k1);
	OPENSSL_cleanse(k2, sizeof k2);
	OPENSSL_cleanse(k3, sizeof k3);
	return ok;
}

void
signer_tc3_free(struct signer_tc3 *out)
{
	size_t i;

	free(out->canonical_request);
	free(out->string_to_sign);
	free(out->authorization);
	for (i = 0; i < ARRAY_SIZE(out->headers); i++)
		free(out->headers[i]);
	memset(out, 0, sizeof *out);
}

static bool
signer_tc3_check(const struct signer_tc3_req *req, char **cause)
{
	const char *const fields[] = {
	    req->secret_id,
	    req->service,
	    req->host,
	    req->action,
	    req->version,
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(fields); i++) {
		if (signer_empty(fields[i])) {
			signer_fail(cause, "missing secret id, service, host, action or version");
			return false;
		}
		if (signer_has_control(fields[i])) {
			signer_fail(cause, "control character in a header value");
			return false;
		}
	}
	if (signer_empty(req->secret_key)) {
		signer_fail(cause, "missing secret key");
		return false;
	}
	if ((req->region != NULL && signer_has_control(req->region)) ||
	    (req->content_type != NULL && signer_has_control(req->content_type))) {
		signer_fail(cause, "control character in a header value");
		return false;
	}
	if (req->payload == NULL && req->payload_len != 0) {
		signer_fail(cause, "missing payload");
		return false;
	}
	return true;
}

bool
signer_tc3_sign(const struct signer_tc3_req *req, struct signer_tc3 *out, char **cause)
{
	const char *ct = req->content_type != NULL ? req->content_type : SIGNER_TC3_DEFAULT_CT;
	const char *signed_headers =
	    req->sign_action ? "content-type;host;x-tc-action" : "content-type;host";
	struct sbuf creq = {0}, sts = {0}, sig = {0};
	struct tm tm;
	size_t h = 0;

	memset(out, 0, sizeof *out);
	if (!signer_tc3_check(req, cause))
		return false;
	if (!signer_utc(req->timestamp, &tm) ||
	    strftime(out->date, sizeof out->date, "%Y-%m-%d", &tm) == 0) {
		signer_fail(cause, "time stamp out of range");
		return false;
	}

	/* Always POST to "/" with no query: the JSON body carries everything. */
	sbuf_adds(&creq, "POST\n/\n\ncontent-type:");
	signer_canonical_value(&creq, ct);
	sbuf_adds(&creq, "\nhost:");
	signer_canonical_value(&creq, req->host);
	sbuf_adds(&creq, "\n");
	if (req->sign_action) {
		sbuf_adds(&creq, "x-tc-action:");
		signer_canonical_value(&creq, req->action);
		sbuf_adds(&creq, "\n");
	}
	sbuf_printf(&creq, "\n%s\n", signed_headers);
	if (!signer_sha256_hex(&creq, req->payload != NULL ? req->payload : "", req->payload_len))
		goto fail;

	sbuf_printf(&sts, "%s\n%lld\n%s/%s/tc3_request\n", SIGNER_TC3_ALGORITHM,
	    (long long)req->timestamp, out->date, req->service);
	if (!signer_sha256_hex(&sts, creq.p, creq.len))
		goto fail;

	if (!signer_tc3_signature(&sig, req->secret_key, out->date, req->service, sts.p))
		goto fail;

	out->canonical_request = creq.p;
	out->string_to_sign = sts.p;
	xasprintf(&out->authorization,
	    "%s Credential=%s/%s/%s/tc3_request, SignedHeaders=%s, Signature=%s",
	    SIGNER_TC3_ALGORITHM, req->secret_id, out->date, req->service, signed_headers, sig.p);
	free(sig.p);

	xasprintf(&out->headers[h++], "Authorization: %s", out->authorization);
	xasprintf(&out->headers[h++], "Content-Type: %s", ct);
	xasprintf(&out->headers[h++], "Host: %s", req->host);
	xasprintf(&out->headers[h++], "X-TC-Action: %s", req->action);
	xasprintf(&out->headers[h++], "X-TC-Version: %s", req->version);
	xasprintf(&out->headers[h++], "X-TC-Timestamp: %lld", (long long)req->timestamp);
	if (!signer_empty(req->region))
		xasprintf(&out->headers[h++], "X-TC-Region: %s", req->region);
	return true;

fail:
	free(creq.p);
	free(sts.p);
	free(sig.p);
	memset(out, 0, sizeof *out);
	signer_fail(cause, "SHA-256 or HMAC-SHA256 failed");
	return false;
}
