/*
 * payverify.c: the pure half of the payment callbacks. Everything that
 * decides whether a WeChat Pay or Alipay notification is genuine, and what
 * it says, lives here as functions over bytes with no I/O except reading
 * key files at start-up, so that the unit tests and fuzzers exercise the
 * very code the daemon runs. All input is hostile until its signature has
 * verified: lengths are checked before every read, the body need not be
 * NUL-terminated, and crypto, base64 and JSON are OpenSSL's and jansson's,
 * never home-made. A reason written to err is one line, never holds a key,
 * and never echoes the sender's bytes (they could forge log lines).
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common.h"
#include "payverify.h"

/* Brief limits: a notification body or ciphertext over 64 KiB is refused. */
#define PAY_MAX_BODY 65536
/* A PEM file holding one certificate or key is a few KiB. */
#define PAY_MAX_PEM (1024 * 1024)
/* Alipay sends a few dozen fields; the header promises 200 at most. */
#define PAY_MAX_PAIRS 200
/* Headers are bounded by the HTTP server already; this keeps sums small. */
#define PAY_MAX_HEADER 1024
/* A Unix time in decimal digits; 18 digits cannot overflow int64_t. */
#define PAY_MAX_TS_DIGITS 18
/* AES-256-GCM as WeChat Pay uses it. */
#define PAY_GCM_TAG 16
#define PAY_GCM_NONCE 12
/* Money: at most 12 integer digits (the header's promise) fits in int64_t. */
#define PAY_MONEY_INT_DIGITS 12

struct pay_key {
	char *id;
	EVP_PKEY *pkey;
};

struct pay_keyring {
	struct pay_key *keys;
	size_t n;
};

static int pay_fail(char *err, size_t errlen, int code, const char *fmt, ...) PRINTFLIKE(4, 5);

/*
 * Write a reason and return code. Every error path goes through here, which
 * also drops OpenSSL's error queue so that a failure here never surfaces as
 * a stale error in some unrelated later call.
 */
static int
pay_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
	va_list ap;

	ERR_clear_error();
	if (err != NULL && errlen > 0) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

static void
pay_ok(char *err, size_t errlen)
{
	if (err != NULL && errlen > 0)
		err[0] = '\0';
}

/* Read a whole small file; *buf is NUL-terminated, caller frees. */
static int
pay_read_file(const char *path, size_t max, char **buf, size_t *len, char *err, size_t errlen)
{
	FILE *fp;
	char *p;
	size_t n;

	*buf = NULL;
	*len = 0;
	if (path == NULL || *path == '\0')
		return pay_fail(err, errlen, PAY_EKEY, "no key file given");
	if ((fp = fopen(path, "rb")) == NULL)
		return pay_fail(err, errlen, PAY_EKEY, "%s: %s", path, strerror(errno));
	p = xmalloc(max + 1);
	n = fread(p, 1, max + 1, fp);
	if (ferror(fp)) {
		fclose(fp);
		free(p);
		return pay_fail(err, errlen, PAY_EKEY, "%s: read error", path);
	}
	fclose(fp);
	if (n > max) {
		free(p);
		return pay_fail(err, errlen, PAY_EKEY, "%s: larger than %zu bytes", path, max);
	}
	p[n] = '\0';
	*buf = p;
	*len = n;
	return PAY_OK;
}

/*
 * Strict standard base64 (RFC 4648 with padding, no whitespace), decoded by
 * OpenSSL. EVP_DecodeBlock itself skips blanks and counts padding as zero
 * bytes, so the alphabet and the padding are checked first and the padding
 * is then taken off the length it reports. *out is freed by the caller.
 */
static int
pay_base64_decode(const char *in, size_t inlen, unsigned char **out, size_t *outlen)
{
	size_t i, pad = 0;
	unsigned char *buf;
	int n;

	*out = NULL;
	*outlen = 0;
	if (inlen == 0 || inlen % 4 != 0 || inlen > INT32_MAX)
		return -1;
	if (in[inlen - 1] == '=')
		pad = in[inlen - 2] == '=' ? 2 : 1;
	for (i = 0; i < inlen - pad; i++) {
		unsigned char c = (unsigned char)in[i];

		if (!(isascii(c) && isalnum(c)) && c != '+' && c != '/')
			return -1;
	}
	buf = xmalloc(inlen / 4 * 3 + 1);
	n = EVP_DecodeBlock(buf, (const unsigned char *)in, (int)inlen);
	if (n < 0 || (size_t)n < pad) {
		free(buf);
		return -1;
	}
	*out = buf;
	*outlen = (size_t)n - pad;
	return 0;
}

/* SHA256-RSA PKCS#1 v1.5 over the concatenation of parts (both providers). */
static int
pay_rsa_verify(EVP_PKEY *key, const unsigned char *sig, size_t siglen, const void *const *parts,
    const size_t *lens, size_t nparts)
{
	EVP_MD_CTX *md;
	size_t i;
	int ok = 0;

	if ((md = EVP_MD_CTX_new()) == NULL)
		return 0;
	if (EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) != 1)
		goto out;
	for (i = 0; i < nparts; i++) {
		if (lens[i] > 0 && EVP_DigestVerifyUpdate(md, parts[i], lens[i]) != 1)
			goto out;
	}
	ok = EVP_DigestVerifyFinal(md, sig, siglen) == 1;
out:
	EVP_MD_CTX_free(md);
	ERR_clear_error();
	return ok;
}

/* --- keys */

/*
 * Read a PEM certificate or public key. A certificate is tried first so
 * that a platform certificate also yields its serial (*serial, upper-case
 * hex, caller frees with free()) when serial is not NULL.
 */
/*
 * A public key as the Alipay console shows it: the base64 of the DER
 * SubjectPublicKeyInfo on one line, without the PEM armour. Blanks and
 * line breaks are allowed around and inside it.
 */
static EVP_PKEY *
pay_bare_pubkey(const char *buf, size_t len)
{
	char *b64 = xmalloc(len + 1);
	unsigned char *der = NULL;
	const unsigned char *p;
	size_t i, n = 0, derlen = 0;
	EVP_PKEY *pkey = NULL;

	for (i = 0; i < len; i++)
		if (!isspace((unsigned char)buf[i]))
			b64[n++] = buf[i];
	if (n > 0 && pay_base64_decode(b64, n, &der, &derlen) == 0 && derlen <= LONG_MAX) {
		p = der;
		pkey = d2i_PUBKEY(NULL, &p, (long)derlen);
		if (pkey != NULL && p != der + derlen) {
			/* trailing bytes: not one key */
			EVP_PKEY_free(pkey);
			pkey = NULL;
		}
	}
	free(der);
	free(b64);
	ERR_clear_error();
	return pkey;
}

static EVP_PKEY *
pay_pem_load(const char *path, char **serial, char *err, size_t errlen)
{
	EVP_PKEY *pkey = NULL;
	X509 *x509;
	BIO *bio;
	BIGNUM *bn;
	char *buf, *hex;
	size_t len;

	if (serial != NULL)
		*serial = NULL;
	if (pay_read_file(path, PAY_MAX_PEM, &buf, &len, err, errlen) != PAY_OK)
		return NULL;

	bio = BIO_new_mem_buf(buf, (int)len);
	x509 = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	if (x509 != NULL) {
		pkey = X509_get_pubkey(x509);
		if (pkey != NULL && serial != NULL) {
			bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x509), NULL);
			hex = bn != NULL ? BN_bn2hex(bn) : NULL;
			if (hex != NULL)
				*serial = xstrdup(hex);
			OPENSSL_free(hex);
			BN_free(bn);
			if (*serial == NULL) {
				EVP_PKEY_free(pkey);
				pkey = NULL;
			}
		}
		X509_free(x509);
	} else {
		ERR_clear_error();
		bio = BIO_new_mem_buf(buf, (int)len);
		pkey = bio != NULL ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
		BIO_free(bio);
		if (pkey == NULL)
			pkey = pay_bare_pubkey(buf, len);
	}
	free(buf);
	if (pkey == NULL) {
		pay_fail(err, errlen, PAY_EKEY,
		    "%s: no PEM certificate or public key (nor a bare base64 public key)", path);
		return NULL;
	}
	/* Both providers sign with RSA; anything else is a configuration slip. */
	if (!EVP_PKEY_is_a(pkey, "RSA")) {
		EVP_PKEY_free(pkey);
		if (serial != NULL) {
			free(*serial);
			*serial = NULL;
		}
		pay_fail(err, errlen, PAY_EKEY, "%s: not an RSA key", path);
		return NULL;
	}
	ERR_clear_error();
	pay_ok(err, errlen);
	return pkey;
}

EVP_PKEY *
pay_pubkey_load(const char *path, char *err, size_t errlen)
{
	return pay_pem_load(path, NULL, err, errlen);
}

struct pay_keyring *
pay_keyring_new(void)
{
	return xcalloc(1, sizeof(struct pay_keyring));
}

int
pay_keyring_add_file(
    struct pay_keyring *kr, const char *id, const char *path, char *err, size_t errlen)
{
	EVP_PKEY *pkey;
	char *serial;

	if (id != NULL && (*id == '\0' || strlen(id) > PAY_MAX_HEADER))
		return pay_fail(err, errlen, PAY_EKEY, "%s: empty or overlong key id", path);
	if ((pkey = pay_pem_load(path, &serial, err, errlen)) == NULL)
		return PAY_EKEY;
	if (id == NULL && serial == NULL) {
		EVP_PKEY_free(pkey);
		return pay_fail(err, errlen, PAY_EKEY,
		    "%s: a bare public key needs an id (PUB_KEY_ID_...)", path);
	}
	if (id == NULL)
		id = serial;
	/* Two keys under one id would make the choice depend on file order. */
	if (pay_keyring_find(kr, id) != NULL) {
		EVP_PKEY_free(pkey);
		free(serial);
		return pay_fail(err, errlen, PAY_EKEY, "%s: key id already present", path);
	}
	kr->keys = xreallocarray(kr->keys, kr->n + 1, sizeof *kr->keys);
	kr->keys[kr->n].id = xstrdup(id);
	kr->keys[kr->n].pkey = pkey;
	kr->n++;
	free(serial);
	pay_ok(err, errlen);
	return PAY_OK;
}

EVP_PKEY *
pay_keyring_find(const struct pay_keyring *kr, const char *id)
{
	size_t i;

	if (kr == NULL || id == NULL)
		return NULL;
	for (i = 0; i < kr->n; i++) {
		if (strcasecmp(kr->keys[i].id, id) == 0)
			return kr->keys[i].pkey;
	}
	return NULL;
}

size_t
pay_keyring_count(const struct pay_keyring *kr)
{
	return kr != NULL ? kr->n : 0;
}

void
pay_keyring_free(struct pay_keyring *kr)
{
	size_t i;

	if (kr == NULL)
		return;
	for (i = 0; i < kr->n; i++) {
		free(kr->keys[i].id);
		EVP_PKEY_free(kr->keys[i].pkey);
	}
	free(kr->keys);
	free(kr);
}

int
pay_secret_load(const char *path, unsigned char key[32], char *err, size_t errlen)
{
	char *buf;
	size_t len;
	int rc;

	if ((rc = pay_read_file(path, 64, &buf, &len, err, errlen)) != PAY_OK)
		return rc;
	if (len == 33 && buf[32] == '\n')
		len = 32;
	if (len != 32) {
		OPENSSL_cleanse(buf, len);
		free(buf);
		/* The length is safe to tell; the bytes are not. */
		return pay_fail(err, errlen, PAY_EKEY,
		    "%s: the APIv3 key must be 32 bytes (with one optional newline), not %zu", path,
		    len);
	}
	memcpy(key, buf, 32);
	OPENSSL_cleanse(buf, len);
	free(buf);
	pay_ok(err, errlen);
	return PAY_OK;
}

/* --- money */

int
pay_money_parse(const char *s, size_t len, int64_t *fen)
{
	int64_t yuan = 0, cents = 0;
	size_t i = 0, idigits = 0, fdigits = 0;

	if (s == NULL)
		return PAY_EFORMAT;
	while (i < len && s[i] >= '0' && s[i] <= '9') {
		if (++idigits > PAY_MONEY_INT_DIGITS)
			return PAY_EFORMAT;
		yuan = yuan * 10 + (s[i] - '0');
		i++;
	}
	if (idigits == 0)
		return PAY_EFORMAT;
	if (i < len) {
		if (s[i] != '.')
			return PAY_EFORMAT;
		i++;
		while (i < len && s[i] >= '0' && s[i] <= '9') {
			if (++fdigits > 2)
				return PAY_EFORMAT;
			cents = cents * 10 + (s[i] - '0');
			i++;
		}
		/* "1." is not a Number(9,2) as Alipay writes it. */
		if (fdigits == 0 || i < len)
			return PAY_EFORMAT;
		if (fdigits == 1)
			cents *= 10;
	}
	*fen = yuan * 100 + cents;
	return PAY_OK;
}

/* --- Alipay */

static int
pay_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Form-decode s[0..len) into a new string; NULL on a bad escape or a NUL. */
static char *
pay_form_decode(const char *s, size_t len)
{
	char *out = xmalloc(len + 1);
	size_t i, o = 0;
	int hi, lo;

	for (i = 0; i < len; i++) {
		if (s[i] == '+') {
			out[o++] = ' ';
		} else if (s[i] == '%') {
			if (len - i < 3 || (hi = pay_hexval(s[i + 1])) < 0 ||
			    (lo = pay_hexval(s[i + 2])) < 0 || (hi == 0 && lo == 0))
				goto bad;
			out[o++] = (char)(hi << 4 | lo);
			i += 2;
		} else if (s[i] == '\0') {
			goto bad;
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
	return out;
bad:
	free(out);
	return NULL;
}

int
pay_form_parse(const char *body, size_t len, struct pay_form *f, char *err, size_t errlen)
{
	const char *p, *end, *amp, *eq;
	char *key, *val;
	size_t n;

	memset(f, 0, sizeof *f);
	if (body == NULL && len > 0)
		return pay_fail(err, errlen, PAY_EFORMAT, "no body");
	if (len > PAY_MAX_BODY)
		return pay_fail(err, errlen, PAY_EFORMAT, "form body over %d bytes", PAY_MAX_BODY);
	if (len == 0) {
		pay_ok(err, errlen);
		return PAY_OK;
	}
	p = body;
	end = body + len;
	while (p < end) {
		amp = memchr(p, '&', (size_t)(end - p));
		if (amp == NULL)
			amp = end;
		n = (size_t)(amp - p);
		/* "a=1&&b=2" and a trailing '&' carry nothing: skipped, not refused. */
		if (n == 0) {
			p = amp + 1;
			continue;
		}
		if (f->n == PAY_MAX_PAIRS) {
			pay_form_free(f);
			return pay_fail(
			    err, errlen, PAY_EFORMAT, "more than %d form fields", PAY_MAX_PAIRS);
		}
		eq = memchr(p, '=', n);
		if (eq == NULL)
			eq = amp;
		key = pay_form_decode(p, (size_t)(eq - p));
		val =
		    pay_form_decode(eq < amp ? eq + 1 : amp, eq < amp ? (size_t)(amp - eq - 1) : 0);
		if (key == NULL || val == NULL || *key == '\0' || pay_form_get(f, key) != NULL) {
			const char *why = "repeated name of";
			size_t field = f->n + 1;

			if (key == NULL || val == NULL)
				why = "bad %-escape or NUL in";
			else if (*key == '\0')
				why = "empty name of";

			free(key);
			free(val);
			pay_form_free(f);
			return pay_fail(err, errlen, PAY_EFORMAT, "%s form field %zu", why, field);
		}
		f->kv = xreallocarray(f->kv, f->n + 1, sizeof *f->kv);
		f->kv[f->n].key = key;
		f->kv[f->n].val = val;
		f->n++;
		p = amp + 1;
	}
	pay_ok(err, errlen);
	return PAY_OK;
}

const char *
pay_form_get(const struct pay_form *f, const char *key)
{
	size_t i;

	if (f == NULL || key == NULL)
		return NULL;
	for (i = 0; i < f->n; i++) {
		if (strcmp(f->kv[i].key, key) == 0)
			return f->kv[i].val;
	}
	return NULL;
}

void
pay_form_free(struct pay_form *f)
{
	size_t i;

	if (f == NULL)
		return;
	for (i = 0; i < f->n; i++) {
		free(f->kv[i].key);
		free(f->kv[i].val);
	}
	free(f->kv);
	f->kv = NULL;
	f->n = 0;
}

/* strcmp compares as unsigned char: byte order, as Alipay sorts. */
static int
pay_kv_cmp(const void *a, const void *b)
{
	const struct pay_kv *const *x = a, *const *y = b;

	return strcmp((*x)->key, (*y)->key);
}

char *
pay_alipay_signing_string(const struct pay_form *f)
{
	struct sbuf b = {0};
	const struct pay_kv **v;
	size_t i, n = 0;

	v = xcalloc(f->n > 0 ? f->n : 1, sizeof *v);
	for (i = 0; i < f->n; i++) {
		const struct pay_kv *kv = &f->kv[i];

		if (strcmp(kv->key, "sign") == 0 || strcmp(kv->key, "sign_type") == 0)
			continue;
		if (*kv->val == '\0')
			continue;
		v[n++] = kv;
	}
	qsort(v, n, sizeof *v, pay_kv_cmp);
	sbuf_adds(&b, "");
	for (i = 0; i < n; i++) {
		if (i > 0)
			sbuf_add(&b, "&", 1);
		sbuf_adds(&b, v[i]->key);
		sbuf_add(&b, "=", 1);
		sbuf_adds(&b, v[i]->val);
	}
	free(v);
	return b.p;
}

int
pay_alipay_verify(const struct pay_form *f, EVP_PKEY *key, char *err, size_t errlen)
{
	const char *type, *sign;
	unsigned char *sig;
	size_t siglen;
	const void *parts[1];
	size_t lens[1];
	char *content;
	int ok;

	if ((type = pay_form_get(f, "sign_type")) == NULL)
		return pay_fail(err, errlen, PAY_EFORMAT, "sign_type missing");
	/*
	 * RSA (SHA1) is refused outright: SHA1 signatures are forgeable in
	 * principle, and an attacker must not be able to pick the weaker one.
	 */
	if (strcmp(type, "RSA2") != 0)
		return pay_fail(err, errlen, PAY_EFORMAT,
		    "sign_type is not RSA2 (SHA1 \"RSA\" and others are refused)");
	if ((sign = pay_form_get(f, "sign")) == NULL || *sign == '\0')
		return pay_fail(err, errlen, PAY_EFORMAT, "sign missing");
	if (pay_base64_decode(sign, strlen(sign), &sig, &siglen) != 0)
		return pay_fail(err, errlen, PAY_EFORMAT, "sign is not base64");
	if (key == NULL) {
		free(sig);
		return pay_fail(err, errlen, PAY_EKEY, "no Alipay public key");
	}
	content = pay_alipay_signing_string(f);
	parts[0] = content;
	lens[0] = strlen(content);
	ok = pay_rsa_verify(key, sig, siglen, parts, lens, 1);
	free(content);
	free(sig);
	if (!ok)
		return pay_fail(err, errlen, PAY_ESIG, "Alipay signature does not verify");
	pay_ok(err, errlen);
	return PAY_OK;
}

/* --- WeChat Pay API v3 */

/* A header value we will put into the signed message: bounded, no control
 * bytes (a line feed in the nonce would let the nonce and body be re-split). */
static int
pay_header_ok(const char *s)
{
	size_t i;

	if (s == NULL || *s == '\0')
		return 0;
	for (i = 0; s[i] != '\0'; i++) {
		if (i >= PAY_MAX_HEADER || (unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	}
	return 1;
}

int
pay_wechat_verify(const struct pay_keyring *kr, const char *serial, const char *timestamp,
    const char *nonce, const char *signature, const char *body, size_t len, int64_t now,
    int64_t max_skew, char *err, size_t errlen)
{
	const void *parts[6];
	size_t lens[6], i, siglen;
	unsigned char *sig;
	uint64_t skew;
	int64_t ts = 0;
	EVP_PKEY *key;
	int ok;

	if (!pay_header_ok(serial) || !pay_header_ok(timestamp) || !pay_header_ok(nonce) ||
	    !pay_header_ok(signature))
		return pay_fail(err, errlen, PAY_EFORMAT,
		    "a Wechatpay-Serial/-Timestamp/-Nonce/-Signature header is missing or bad");
	if (body == NULL && len > 0)
		return pay_fail(err, errlen, PAY_EFORMAT, "no body");
	if (len > PAY_MAX_BODY)
		return pay_fail(err, errlen, PAY_EFORMAT, "body over %d bytes", PAY_MAX_BODY);
	for (i = 0; timestamp[i] != '\0'; i++) {
		if (timestamp[i] < '0' || timestamp[i] > '9' || i >= PAY_MAX_TS_DIGITS)
			return pay_fail(err, errlen, PAY_EFORMAT,
			    "Wechatpay-Timestamp is not a decimal Unix time");
		ts = ts * 10 + (timestamp[i] - '0');
	}
	/* Unsigned difference: no overflow whatever now the caller passes. */
	skew = ts >= now ? (uint64_t)ts - (uint64_t)now : (uint64_t)now - (uint64_t)ts;
	if (max_skew <= 0 || skew >= (uint64_t)max_skew)
		return pay_fail(err, errlen, PAY_ESTALE,
		    "Wechatpay-Timestamp is %s by %llu s (limit %lld s)",
		    ts >= now ? "ahead" : "behind", (unsigned long long)skew, (long long)max_skew);
	if ((key = pay_keyring_find(kr, serial)) == NULL)
		return pay_fail(
		    err, errlen, PAY_ESERIAL, "Wechatpay-Serial names no configured key");
	if (pay_base64_decode(signature, strlen(signature), &sig, &siglen) != 0)
		return pay_fail(err, errlen, PAY_EFORMAT, "Wechatpay-Signature is not base64");

	parts[0] = timestamp;
	lens[0] = strlen(timestamp);
	parts[1] = "\n";
	lens[1] = 1;
	parts[2] = nonce;
	lens[2] = strlen(nonce);
	parts[3] = "\n";
	lens[3] = 1;
	parts[4] = body;
	lens[4] = len;
	parts[5] = "\n";
	lens[5] = 1;
	ok = pay_rsa_verify(key, sig, siglen, parts, lens, 6);
	free(sig);
	if (!ok)
		return pay_fail(err, errlen, PAY_ESIG, "WeChat Pay signature does not verify");
	pay_ok(err, errlen);
	return PAY_OK;
}

/*
 * Copy the string member name of obj into *out. Absent: *out stays NULL and
 * that is success unless required. Present but not a string, or a string
 * with an embedded NUL (which C would silently truncate): refused.
 */
static int
pay_json_str(json_t *obj, const char *name, int required, char **out)
{
	json_t *v = json_object_get(obj, name);
	const char *s;

	*out = NULL;
	if (v == NULL)
		return required ? -1 : 0;
	if (!json_is_string(v))
		return -1;
	s = json_string_value(v);
	if (strlen(s) != json_string_length(v))
		return -1;
	*out = xstrdup(s);
	return 0;
}

/* A JSON object from untrusted bytes; a repeated key is refused, since
 * which of two values a reader takes differs between parsers. */
static json_t *
pay_json_load(const char *buf, size_t len, const char *what, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *root;

	if (buf == NULL && len > 0) {
		pay_fail(err, errlen, PAY_EFORMAT, "no %s", what);
		return NULL;
	}
	if (len > PAY_MAX_BODY) {
		pay_fail(err, errlen, PAY_EFORMAT, "%s over %d bytes", what, PAY_MAX_BODY);
		return NULL;
	}
	root = json_loadb(buf != NULL ? buf : "", len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		pay_fail(err, errlen, PAY_EFORMAT, "%s: invalid JSON at line %d column %d", what,
		    jerr.line, jerr.column);
		return NULL;
	}
	if (!json_is_object(root)) {
		json_decref(root);
		pay_fail(err, errlen, PAY_EFORMAT, "%s: not a JSON object", what);
		return NULL;
	}
	return root;
}

int
pay_wechat_envelope_parse(
    const char *body, size_t len, struct pay_wechat_envelope *e, char *err, size_t errlen)
{
	json_t *root, *res;
	const char *bad = NULL;

	memset(e, 0, sizeof *e);
	if ((root = pay_json_load(body, len, "notification", err, errlen)) == NULL)
		return PAY_EFORMAT;
	res = json_object_get(root, "resource");
	if (pay_json_str(root, "id", 1, &e->id) != 0)
		bad = "id";
	else if (pay_json_str(root, "event_type", 1, &e->event_type) != 0)
		bad = "event_type";
	else if (pay_json_str(root, "resource_type", 0, &e->resource_type) != 0)
		bad = "resource_type";
	else if (!json_is_object(res))
		bad = "resource";
	else if (pay_json_str(res, "original_type", 0, &e->original_type) != 0)
		bad = "resource.original_type";
	else if (pay_json_str(res, "algorithm", 1, &e->algorithm) != 0)
		bad = "resource.algorithm";
	else if (pay_json_str(res, "ciphertext", 1, &e->ciphertext) != 0)
		bad = "resource.ciphertext";
	else if (pay_json_str(res, "associated_data", 0, &e->associated_data) != 0)
		bad = "resource.associated_data";
	else if (pay_json_str(res, "nonce", 1, &e->nonce) != 0)
		bad = "resource.nonce";
	json_decref(root);
	if (bad != NULL) {
		pay_wechat_envelope_free(e);
		return pay_fail(
		    err, errlen, PAY_EFORMAT, "notification: %s missing or not a string", bad);
	}
	/* The documents say it may be empty; absent is read the same way. */
	if (e->associated_data == NULL)
		e->associated_data = xstrdup("");
	pay_ok(err, errlen);
	return PAY_OK;
}

void
pay_wechat_envelope_free(struct pay_wechat_envelope *e)
{
	if (e == NULL)
		return;
	free(e->id);
	free(e->event_type);
	free(e->resource_type);
	free(e->original_type);
	free(e->algorithm);
	free(e->ciphertext);
	free(e->associated_data);
	free(e->nonce);
	memset(e, 0, sizeof *e);
}

int
pay_wechat_decrypt(const unsigned char key[32], const struct pay_wechat_envelope *e, char **plain,
    size_t *plen, char *err, size_t errlen)
{
	EVP_CIPHER_CTX *ctx = NULL;
	unsigned char *ct = NULL, *out = NULL;
	const char *aad;
	size_t ctlen, aadlen, bodylen;
	int n, total, rc;

	*plain = NULL;
	*plen = 0;
	if (e == NULL || e->ciphertext == NULL || e->nonce == NULL)
		return pay_fail(err, errlen, PAY_EFORMAT, "no resource to decrypt");
	if (e->algorithm == NULL || strcmp(e->algorithm, "AEAD_AES_256_GCM") != 0)
		return pay_fail(
		    err, errlen, PAY_EFORMAT, "resource algorithm is not AEAD_AES_256_GCM");
	if (strlen(e->ciphertext) > PAY_MAX_BODY)
		return pay_fail(err, errlen, PAY_EFORMAT, "ciphertext over %d bytes", PAY_MAX_BODY);
	if (pay_base64_decode(e->ciphertext, strlen(e->ciphertext), &ct, &ctlen) != 0)
		return pay_fail(err, errlen, PAY_EFORMAT, "ciphertext is not base64");
	if (ctlen <= PAY_GCM_TAG) {
		free(ct);
		return pay_fail(
		    err, errlen, PAY_EFORMAT, "ciphertext of %zu bytes holds no data", ctlen);
	}
	if (strlen(e->nonce) != PAY_GCM_NONCE) {
		free(ct);
		return pay_fail(err, errlen, PAY_EDECRYPT, "nonce is not %d bytes", PAY_GCM_NONCE);
	}
	aad = e->associated_data != NULL ? e->associated_data : "";
	aadlen = strlen(aad);
	bodylen = ctlen - PAY_GCM_TAG;
	out = xmalloc(bodylen + 1);
	rc = PAY_EDECRYPT;

	if ((ctx = EVP_CIPHER_CTX_new()) == NULL)
		goto out;
	if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, PAY_GCM_NONCE, NULL) != 1 ||
	    EVP_DecryptInit_ex(ctx, NULL, NULL, key, (const unsigned char *)e->nonce) != 1)
		goto out;
	if (aadlen > 0 &&
	    EVP_DecryptUpdate(ctx, NULL, &n, (const unsigned char *)aad, (int)aadlen) != 1)
		goto out;
	if (EVP_DecryptUpdate(ctx, out, &n, ct, (int)bodylen) != 1)
		goto out;
	total = n;
	if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, PAY_GCM_TAG, ct + bodylen) != 1)
		goto out;
	/* Only now is the plaintext authentic; before this it must not escape. */
	if (EVP_DecryptFinal_ex(ctx, out + total, &n) != 1)
		goto out;
	total += n;
	out[total] = '\0';
	*plain = (char *)out;
	*plen = (size_t)total;
	out = NULL;
	rc = PAY_OK;
out:
	EVP_CIPHER_CTX_free(ctx);
	if (out != NULL) {
		OPENSSL_cleanse(out, bodylen + 1);
		free(out);
	}
	free(ct);
	if (rc != PAY_OK)
		return pay_fail(err, errlen, rc,
		    "AES-GCM tag mismatch (wrong APIv3 key, altered ciphertext or wrong "
		    "associated_data)");
	ERR_clear_error();
	pay_ok(err, errlen);
	return PAY_OK;
}

/* A fen amount: a JSON integer, not negative. Absent is -1. */
static int
pay_json_fen(json_t *obj, const char *name, int64_t *out)
{
	json_t *v = json_object_get(obj, name);

	*out = -1;
	if (v == NULL)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -1;
	*out = (int64_t)json_integer_value(v);
	return 0;
}

int
pay_wechat_txn_parse(
    const char *plain, size_t len, struct pay_wechat_txn *t, char *err, size_t errlen)
{
	json_t *root, *amount;
	const char *bad = NULL;

	memset(t, 0, sizeof *t);
	t->total = -1;
	t->payer_total = -1;
	if ((root = pay_json_load(plain, len, "transaction", err, errlen)) == NULL)
		return PAY_EFORMAT;
	amount = json_object_get(root, "amount");
	if (pay_json_str(root, "out_trade_no", 1, &t->out_trade_no) != 0)
		bad = "out_trade_no";
	else if (pay_json_str(root, "transaction_id", 1, &t->transaction_id) != 0)
		bad = "transaction_id";
	else if (pay_json_str(root, "trade_state", 1, &t->trade_state) != 0)
		bad = "trade_state";
	else if (pay_json_str(root, "appid", 0, &t->appid) != 0)
		bad = "appid";
	else if (pay_json_str(root, "mchid", 0, &t->mchid) != 0)
		bad = "mchid";
	else if (pay_json_str(root, "success_time", 0, &t->success_time) != 0)
		bad = "success_time";
	else if (amount != NULL && !json_is_object(amount))
		bad = "amount";
	else if (amount != NULL && pay_json_str(amount, "currency", 0, &t->currency) != 0)
		bad = "amount.currency";
	else if (amount != NULL && pay_json_fen(amount, "total", &t->total) != 0)
		bad = "amount.total";
	else if (amount != NULL && pay_json_fen(amount, "payer_total", &t->payer_total) != 0)
		bad = "amount.payer_total";
	json_decref(root);
	if (bad != NULL) {
		pay_wechat_txn_free(t);
		return pay_fail(
		    err, errlen, PAY_EFORMAT, "transaction: %s missing or mistyped", bad);
	}
	pay_ok(err, errlen);
	return PAY_OK;
}

void
pay_wechat_txn_free(struct pay_wechat_txn *t)
{
	if (t == NULL)
		return;
	free(t->appid);
	free(t->mchid);
	free(t->out_trade_no);
	free(t->transaction_id);
	free(t->trade_state);
	free(t->currency);
	free(t->success_time);
	memset(t, 0, sizeof *t);
	t->total = -1;
	t->payer_total = -1;
}

/* ------------------------------------------------------------ classifying */

bool
pay_id_ok(const char *s)
{
	size_t n = 0;

	if (s == NULL)
		return false;
	for (; s[n] != '\0'; n++)
		if (n >= PAY_ID_MAX || !isgraph((unsigned char)s[n]))
			return false;
	return n > 0;
}

bool
pay_time_ok(const char *s)
{
	size_t n;

	if (s == NULL || (n = strlen(s)) < 10 || n > 40)
		return false;
	return strspn(s, "0123456789-:T+. Z") == n;
}

/* Is word one of the space-separated words of list? */
static bool
pay_word_in(const char *word, const char *list)
{
	size_t n = strlen(word);
	const char *s = list;

	if (list == NULL || n == 0)
		return false;
	while (*s != '\0') {
		while (*s == ' ' || *s == '\t')
			s++;
		if (strncmp(s, word, n) == 0 && (s[n] == '\0' || s[n] == ' ' || s[n] == '\t'))
			return true;
		while (*s != '\0' && *s != ' ' && *s != '\t')
			s++;
	}
	return false;
}

static char *
pay_dup(const char *s)
{
	return s != NULL ? xstrdup(s) : NULL;
}

static void
pay_set_ids(struct pay_class *c, const char *out_trade_no, const char *txn)
{
	snprintf(c->out_trade_no, sizeof c->out_trade_no, "%s",
	    pay_id_ok(out_trade_no) ? out_trade_no : "");
	snprintf(c->txn, sizeof c->txn, "%s", pay_id_ok(txn) ? txn : "");
}

static void
pay_class_refuse(struct pay_class *c, int http_status, bool audited, const char *reason)
{
	c->action = PAY_REFUSE;
	c->http_status = http_status;
	c->audited = audited;
	snprintf(c->reason, sizeof c->reason, "%s", reason);
}

static void
pay_class_notice(struct pay_class *c, const char *kind, const char *status, const char *notify_id)
{
	c->action = PAY_NOTICE;
	c->kind = pay_dup(kind);
	c->status = pay_dup(status);
	c->notify_id = pay_dup(notify_id);
}

static void
pay_class_init(struct pay_class *c)
{
	memset(c, 0, sizeof *c);
	c->fen = -1;
}

/*
 * A resource that is not a transaction (a refund: mchid, out_trade_no,
 * transaction_id, amount.refund in fen): what the notice row keeps.
 */
static void
pay_wechat_other(const struct pay_wechat_envelope *e, const char *plain, size_t plen,
    const char *mchid, struct pay_class *c)
{
	json_t *j = json_loadb(plain, plen, JSON_REJECT_DUPLICATES, NULL);
	const char *theirs;
	json_t *refund;

	theirs = json_string_value(json_object_get(j, "mchid"));
	pay_set_ids(c, json_string_value(json_object_get(j, "out_trade_no")),
	    json_string_value(json_object_get(j, "transaction_id")));
	refund = json_object_get(json_object_get(j, "amount"), "refund");
	if (json_is_integer(refund) && json_integer_value(refund) >= 0)
		c->fen = (int64_t)json_integer_value(refund);
	if (theirs != NULL && (mchid == NULL || strcmp(theirs, mchid) != 0))
		pay_class_refuse(c, 403, true, "mchid is not ours");
	else
		pay_class_notice(c, e->original_type, e->event_type, e->id);
	json_decref(j);
}

void
pay_wechat_classify(const struct pay_wechat_envelope *e, const char *plain, size_t plen,
    const char *mchid, const char *appids, struct pay_class *c)
{
	struct pay_wechat_txn t;
	char why[256];

	pay_class_init(c);
	memset(&t, 0, sizeof t);
	if (e->original_type != NULL && strcmp(e->original_type, "transaction") != 0) {
		pay_wechat_other(e, plain, plen, mchid, c);
		return;
	}
	if (pay_wechat_txn_parse(plain, plen, &t, why, sizeof why) != PAY_OK) {
		pay_class_refuse(c, 400, false, why);
		goto out;
	}
	if (!pay_id_ok(t.out_trade_no) || !pay_id_ok(t.transaction_id)) {
		pay_class_refuse(
		    c, 400, false, "out_trade_no or transaction_id missing or too long");
		goto out;
	}
	pay_set_ids(c, t.out_trade_no, t.transaction_id);
	c->fen = t.total;
	if (t.mchid == NULL || mchid == NULL || strcmp(t.mchid, mchid) != 0)
		pay_class_refuse(c, 403, true, "mchid is not ours");
	else if (t.appid == NULL || !pay_word_in(t.appid, appids))
		pay_class_refuse(c, 403, true, "appid is not one of ours");
	else if (strcmp(t.trade_state, "SUCCESS") != 0)
		pay_class_notice(c, "not_paid", t.trade_state, e->id);
	else if (t.total < 0 || (t.currency != NULL && strcmp(t.currency, "CNY") != 0)) {
		snprintf(why, sizeof why, "amount %" PRId64 " %s: only CNY fen are accepted",
		    t.total, t.currency != NULL ? t.currency : "?");
		pay_class_refuse(c, 400, true, why);
	} else {
		c->action = PAY_RECORD;
		c->status = pay_dup(t.trade_state);
		c->notify_id = pay_dup(e->id);
		c->paid_at = pay_dup(t.success_time);
	}
out:
	pay_wechat_txn_free(&t);
}

void
pay_alipay_classify(
    const struct pay_form *f, const char *app_id, const char *seller_id, struct pay_class *c)
{
	const char *v, *status, *amount, *notify_id;
	int64_t fen;

	pay_class_init(c);
	pay_set_ids(c, pay_form_get(f, "out_trade_no"), pay_form_get(f, "trade_no"));
	amount = pay_form_get(f, "total_amount");
	if (amount == NULL || pay_money_parse(amount, strlen(amount), &fen) != PAY_OK)
		fen = -1;
	c->fen = fen;
	/*
	 * Any charset (utf-8, gbk): the signature covers the decoded bytes as
	 * they came, and every field used here is ASCII.
	 */
	if ((v = pay_form_get(f, "app_id")) == NULL || app_id == NULL || strcmp(v, app_id) != 0) {
		pay_class_refuse(c, 403, true, "app_id is not ours");
		return;
	}
	if (seller_id != NULL &&
	    ((v = pay_form_get(f, "seller_id")) == NULL || strcmp(v, seller_id) != 0)) {
		pay_class_refuse(c, 403, true, "seller_id is not ours");
		return;
	}
	if (c->out_trade_no[0] == '\0' || c->txn[0] == '\0') {
		pay_class_refuse(c, 400, true, "out_trade_no or trade_no missing or too long");
		return;
	}
	if ((status = pay_form_get(f, "trade_status")) == NULL)
		status = "";
	notify_id = pay_form_get(f, "notify_id");
	if (pay_form_get(f, "refund_fee") != NULL || pay_form_get(f, "gmt_refund") != NULL ||
	    pay_form_get(f, "out_biz_no") != NULL)
		pay_class_notice(c, "refund", status, notify_id);
	else if (strcmp(status, "TRADE_SUCCESS") != 0 && strcmp(status, "TRADE_FINISHED") != 0)
		pay_class_notice(c, strcmp(status, "TRADE_CLOSED") == 0 ? "closed" : "not_paid",
		    status, notify_id);
	else if (fen <= 0)
		pay_class_refuse(c, 400, true, "total_amount is not a positive yuan amount");
	else {
		c->action = PAY_RECORD;
		c->status = xstrdup(status);
		c->notify_id = pay_dup(notify_id);
		/* Alipay's times are Beijing time, without an offset. */
		if (pay_time_ok(v = pay_form_get(f, "gmt_payment")))
			xasprintf(&c->paid_at, "%s+08", v);
	}
}

void
pay_class_free(struct pay_class *c)
{
	if (c == NULL)
		return;
	free(c->kind);
	free(c->status);
	free(c->notify_id);
	free(c->paid_at);
	memset(c, 0, sizeof *c);
}
