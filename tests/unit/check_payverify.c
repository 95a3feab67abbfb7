/*
 * check_payverify.c: tests of payverify.c, the code that decides whether a
 * payment notification is genuine. A bug here either credits a forged
 * payment or refuses a real one, so every case is proved both ways: this
 * file implements the providers' SIGNING side itself (RSA keys generated at
 * start, SHA256-RSA signing, AES-256-GCM encryption, form encoding), and
 * the same checks run against fixed known-answer vectors made outside this
 * code base with the openssl command line and python3 cryptography (see
 * tests/data/pay/README.md for the exact commands), so that a verifier and
 * a signer sharing one mistake cannot pass together.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "common.h"
#include "payverify.h"

#define DATA(name) TOP_SRCDIR "/tests/data/pay/" name

/*
 * Known answers. WX_KAT_SIG: openssl dgst -sha256 -sign rsa_private.pem over
 * "1700000000\n5K8264ILTKCH16CQ2502SI8ZNMTM67VS\n" + wechat_notify.json +
 * "\n", base64 -w0. The ciphertext inside wechat_notify.json was computed
 * with python3 cryptography AESGCM (key apiv3.key, nonce "PF96HFvp29mV",
 * AAD "transaction") over wechat_txn.json.
 */
#define WX_KAT_TS "1700000000"
#define WX_KAT_NONCE "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
#define WX_KAT_SERIAL "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
#define WX_KAT_SIG                                                                                 \
	"Rp6EWfvVtWkPaPKMILDu7PBq/3cR2lDodM1L3Mwqqmrk4TXtBDI6c+b95tNeXPE5/"                        \
	"xOQ+QJlZUw9BLR7xwF3xsyGBcK5I/"                                                            \
	"Gz/ub6KL8wOtRzrBGvGcgD8RvB/"                                                              \
	"Cik50s0AuITPONwsRIXKtF3m2GjMfF1GbVVwSs4hfs7Qh+IDKKS6aY+OfAv9qJ/"                          \
	"rmbXG92+bJjFt/"                                                                           \
	"ejEH93XgMVM5LzWmRQudindE6cThIPM+lGxcORp2vAVCNcNankzCLBO4qnm3FlSVCsuaUUf2B181Lzc"          \
	"xXWzI9evJ/lwKrcPJnM/nxhTjJ6eKpIY35AMZqc4VP6S+Qv3a4aYrYG0dV1PPhmYA=="
#define WX_KAT_NOW INT64_C(1700000000)

/* Keys generated once in main(), before Check forks the tests. */
static EVP_PKEY *key_a, *key_b;
static char pub_a_path[64] = "/tmp/check_payverify_a.XXXXXX";
static char cert_a_path[64] = "/tmp/check_payverify_c.XXXXXX";
static char junk_path[64] = "/tmp/check_payverify_j.XXXXXX";
static const unsigned char gcm_key[32] = "0123456789abcdef0123456789ABCDEF";

/* --- helpers: files, base64, the providers' signing side ------------- */

static char *
slurp(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	char *buf;
	long n;

	ck_assert_msg(fp != NULL, "cannot open %s", path);
	fseek(fp, 0, SEEK_END);
	n = ftell(fp);
	rewind(fp);
	buf = xmalloc((size_t)n + 1);
	ck_assert_uint_eq(fread(buf, 1, (size_t)n, fp), (size_t)n);
	buf[n] = '\0';
	fclose(fp);
	*len = (size_t)n;
	return buf;
}

/* A copy in a buffer of exactly len bytes: ASan sees any read past it. */
static char *
exact(const void *p, size_t len)
{
	char *b = xmalloc(len);

	memcpy(b, p, len);
	return b;
}

static char *
b64(const unsigned char *p, size_t len)
{
	char *out = xmalloc(4 * ((len + 2) / 3) + 1);

	EVP_EncodeBlock((unsigned char *)out, p, (int)len);
	return out;
}

/* SHA256-RSA PKCS#1 v1.5 over the concatenation of up to three pieces. */
static char *
rsa_sign(EVP_PKEY *key, const char *a, size_t alen, const char *b, size_t blen)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char sig[512];
	size_t siglen = sizeof sig;

	ck_assert(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1);
	ck_assert(EVP_DigestSignUpdate(md, a, alen) == 1);
	if (blen > 0)
		ck_assert(EVP_DigestSignUpdate(md, b, blen) == 1);
	ck_assert(EVP_DigestSignFinal(md, sig, &siglen) == 1);
	EVP_MD_CTX_free(md);
	return b64(sig, siglen);
}

/* As WeChat Pay signs: timestamp "\n" nonce "\n" body "\n". */
static char *
wx_sign(EVP_PKEY *key, const char *ts, const char *nonce, const char *body, size_t len)
{
	char *head, *withnl, *sig;

	xasprintf(&head, "%s\n%s\n", ts, nonce);
	withnl = xmalloc(len + 1);
	memcpy(withnl, body, len);
	withnl[len] = '\n';
	sig = rsa_sign(key, head, strlen(head), withnl, len + 1);
	free(head);
	free(withnl);
	return sig;
}

/* As WeChat Pay encrypts a resource: base64(ciphertext || 16-byte tag). */
static char *
wx_encrypt(const unsigned char key[32], const char *nonce, const char *aad, const char *plain)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	size_t len = strlen(plain);
	unsigned char *out = xmalloc(len + 16);
	int n;
	char *s;

	ck_assert(EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1);
	ck_assert(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, (int)strlen(nonce), NULL) == 1);
	ck_assert(EVP_EncryptInit_ex(c, NULL, NULL, key, (const unsigned char *)nonce) == 1);
	if (*aad != '\0')
		ck_assert(EVP_EncryptUpdate(
		              c, NULL, &n, (const unsigned char *)aad, (int)strlen(aad)) == 1);
	ck_assert(EVP_EncryptUpdate(c, out, &n, (const unsigned char *)plain, (int)len) == 1);
	ck_assert(EVP_EncryptFinal_ex(c, out + n, &n) == 1);
	ck_assert(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, out + len) == 1);
	EVP_CIPHER_CTX_free(c);
	s = b64(out, len + 16);
	free(out);
	return s;
}

/* Form encoding as a sender does it: unreserved kept, space '+', rest %XX. */
static void
form_add(struct sbuf *b, const char *k, const char *v)
{
	const char *s;
	int i;

	if (b->len > 0)
		sbuf_adds(b, "&");
	for (i = 0; i < 2; i++) {
		for (s = i == 0 ? k : v; *s != '\0'; s++) {
			unsigned char c = (unsigned char)*s;

			if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			    (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.')
				sbuf_add(b, s, 1);
			else if (c == ' ')
				sbuf_adds(b, "+");
			else
				sbuf_printf(b, "%%%02X", c);
		}
		if (i == 0)
			sbuf_adds(b, "=");
	}
}

/*
 * An Alipay notification as Alipay builds it: the signing string is made
 * here from the pairs (sorted by strcmp, empty values and sign_type left
 * out), signed with key, then everything is form-encoded.
 */
struct kvc {
	const char *k, *v;
};

static int
kvc_cmp(const void *a, const void *b)
{
	return strcmp(((const struct kvc *)a)->k, ((const struct kvc *)b)->k);
}

static char *
ali_build(EVP_PKEY *key, const struct kvc *pairs, size_t n, const char *sign_type)
{
	struct kvc *sorted = xcalloc(n, sizeof *sorted);
	struct sbuf content = {0}, form = {0};
	size_t i;
	char *sig;

	memcpy(sorted, pairs, n * sizeof *pairs);
	qsort(sorted, n, sizeof *sorted, kvc_cmp);
	sbuf_adds(&content, "");
	for (i = 0; i < n; i++) {
		if (*sorted[i].v == '\0')
			continue;
		sbuf_printf(&content, "%s%s=%s", content.len ? "&" : "", sorted[i].k, sorted[i].v);
	}
	sig = rsa_sign(key, content.p, content.len, NULL, 0);
	for (i = 0; i < n; i++)
		form_add(&form, pairs[i].k, pairs[i].v);
	form_add(&form, "sign", sig);
	if (sign_type != NULL)
		form_add(&form, "sign_type", sign_type);
	free(sig);
	free(sorted);
	free(content.p);
	return form.p;
}

static const struct kvc ali_pairs[] = {
    {"notify_type", "trade_status_sync"},
    {"out_trade_no", "PP-0001"},
    {"trade_no", "2026112722001446880000000009"},
    {"trade_status", "TRADE_SUCCESS"},
    {"total_amount", "12.50"},
    {"subject", "电费 & 充值=100%"},
    {"passback_params", ""},
    {"app_id", "2021000000000000"},
    {"charset", "utf-8"},
};

static int
ali_verify_body(const char *body, EVP_PKEY *key)
{
	struct pay_form f;
	char err[256];
	int rc;

	rc = pay_form_parse(body, strlen(body), &f, err, sizeof err);
	ck_assert_msg(rc == PAY_OK, "form: %s", err);
	rc = pay_alipay_verify(&f, key, err, sizeof err);
	ck_assert(rc == PAY_OK || *err != '\0');
	pay_form_free(&f);
	return rc;
}

static struct pay_keyring *
ring_kat(void)
{
	struct pay_keyring *kr = pay_keyring_new();
	char err[256];

	ck_assert_msg(
	    pay_keyring_add_file(kr, NULL, DATA("platform_cert.pem"), err, sizeof err) == PAY_OK,
	    "%s", err);
	return kr;
}

static struct pay_keyring *
ring_a(void)
{
	struct pay_keyring *kr = pay_keyring_new();
	char err[256];

	ck_assert_msg(
	    pay_keyring_add_file(kr, "PUB_KEY_ID_0000A", pub_a_path, err, sizeof err) == PAY_OK,
	    "%s", err);
	return kr;
}

/* --- WeChat Pay: signature -------------------------------------------- */

START_TEST(wechat_known_answer_verifies)
{
	struct pay_keyring *kr = ring_kat();
	size_t len;
	char *body = slurp(DATA("wechat_notify.json"), &len), *b = exact(body, len);
	char err[256];

	ck_assert_msg(pay_wechat_verify(kr, WX_KAT_SERIAL, WX_KAT_TS, WX_KAT_NONCE, WX_KAT_SIG, b,
	                  len, WX_KAT_NOW + 10, 300, err, sizeof err) == PAY_OK,
	    "%s", err);
	ck_assert_str_eq(err, "");
	/* Serial lookup ignores case. */
	ck_assert_int_eq(
	    pay_wechat_verify(kr, "5157f09efdc096de15ebe81a47057a7232f1b8e1", WX_KAT_TS,
	        WX_KAT_NONCE, WX_KAT_SIG, b, len, WX_KAT_NOW, 300, err, sizeof err),
	    PAY_OK);
	/* One flipped byte of the body. */
	b[len / 2] ^= 1;
	ck_assert_int_eq(pay_wechat_verify(kr, WX_KAT_SERIAL, WX_KAT_TS, WX_KAT_NONCE, WX_KAT_SIG,
	                     b, len, WX_KAT_NOW, 300, err, sizeof err),
	    PAY_ESIG);
	b[len / 2] ^= 1;
	/* The trailing "\n" of the message is part of what is signed. */
	ck_assert_int_eq(pay_wechat_verify(kr, WX_KAT_SERIAL, WX_KAT_TS, WX_KAT_NONCE, WX_KAT_SIG,
	                     b, len - 1, WX_KAT_NOW, 300, err, sizeof err),
	    PAY_ESIG);
	ck_assert_int_eq(pay_wechat_verify(kr, WX_KAT_SERIAL, "1700000001", WX_KAT_NONCE,
	                     WX_KAT_SIG, b, len, WX_KAT_NOW, 300, err, sizeof err),
	    PAY_ESIG);
	free(b);
	free(body);
	pay_keyring_free(kr);
}
END_TEST

START_TEST(wechat_known_answer_with_public_key_id)
{
	struct pay_keyring *kr = pay_keyring_new();
	size_t len;
	char *body = slurp(DATA("wechat_notify.json"), &len);
	char err[256];

	ck_assert_int_eq(pay_keyring_add_file(kr, "PUB_KEY_ID_0000000000000024101100397200000006",
	                     DATA("rsa_public.pem"), err, sizeof err),
	    PAY_OK);
	ck_assert_int_eq(
	    pay_wechat_verify(kr, "PUB_KEY_ID_0000000000000024101100397200000006", WX_KAT_TS,
	        WX_KAT_NONCE, WX_KAT_SIG, body, len, WX_KAT_NOW, 300, err, sizeof err),
	    PAY_OK);
	/* The certificate's serial is not configured in this ring. */
	ck_assert_int_eq(pay_wechat_verify(kr, WX_KAT_SERIAL, WX_KAT_TS, WX_KAT_NONCE, WX_KAT_SIG,
	                     body, len, WX_KAT_NOW, 300, err, sizeof err),
	    PAY_ESERIAL);
	free(body);
	pay_keyring_free(kr);
}
END_TEST

START_TEST(wechat_signed_here_verifies_and_tampering_fails)
{
	struct pay_keyring *kr = ring_a();
	const char *text = "{\"id\":\"EV-1\",\"event_type\":\"TRANSACTION.SUCCESS\"}";
	size_t len = strlen(text);
	char *body = exact(text, len), *sig = wx_sign(key_a, "1800000000", "n0nce", body, len);
	char *sig_b = wx_sign(key_b, "1800000000", "n0nce", body, len);
	char err[256];

	ck_assert_msg(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n0nce", sig, body,
	                  len, 1800000000, 300, err, sizeof err) == PAY_OK,
	    "%s", err);
	ck_assert_int_eq(pay_wechat_verify(kr, "pub_key_id_0000a", "1800000000", "n0nce", sig, body,
	                     len, 1800000000, 300, err, sizeof err),
	    PAY_OK);
	/* Every byte of the body counts. */
	body[0] = '[';
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n0nce", sig, body,
	                     len, 1800000000, 300, err, sizeof err),
	    PAY_ESIG);
	ck_assert_str_eq(err, "WeChat Pay signature does not verify");
	body[0] = '{';
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n0nce", sig, body,
	                     len - 1, 1800000000, 300, err, sizeof err),
	    PAY_ESIG);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n0nc3", sig, body,
	                     len, 1800000000, 300, err, sizeof err),
	    PAY_ESIG);
	/* Signed by a key that is not the one the serial names. */
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n0nce", sig_b,
	                     body, len, 1800000000, 300, err, sizeof err),
	    PAY_ESIG);
	/* Wrong serial. */
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000B", "1800000000", "n0nce", sig, body,
	                     len, 1800000000, 300, err, sizeof err),
	    PAY_ESERIAL);
	/* A flipped byte of the signature itself. */
	sig[10] = sig[10] == 'A' ? 'B' : 'A';
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n0nce", sig, body,
	                     len, 1800000000, 300, err, sizeof err),
	    PAY_ESIG);
	free(sig);
	free(sig_b);
	free(body);
	pay_keyring_free(kr);
}
END_TEST

START_TEST(wechat_empty_body_is_a_bare_line_feed)
{
	struct pay_keyring *kr = ring_a();
	char *sig = wx_sign(key_a, "1800000000", "n", "", 0);
	char err[256];

	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", sig, NULL, 0,
	                     1800000000, 300, err, sizeof err),
	    PAY_OK);
	free(sig);
	pay_keyring_free(kr);
}
END_TEST

START_TEST(wechat_stale_timestamp_both_directions)
{
	struct pay_keyring *kr = ring_a();
	const char *body = "{}";
	char *sig = wx_sign(key_a, "1800000000", "n", body, 2);
	char err[256];
	const int64_t ts = 1800000000;

	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", sig, body, 2,
	                     ts + 299, 300, err, sizeof err),
	    PAY_OK);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", sig, body, 2,
	                     ts - 299, 300, err, sizeof err),
	    PAY_OK);
	/* |now - ts| must be below the limit: exactly 300 s is stale. */
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", sig, body, 2,
	                     ts + 300, 300, err, sizeof err),
	    PAY_ESTALE);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", sig, body, 2,
	                     ts - 300, 300, err, sizeof err),
	    PAY_ESTALE);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", sig, body, 2,
	                     ts + 86400, 300, err, sizeof err),
	    PAY_ESTALE);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", sig, body, 2,
	                     INT64_MIN, 300, err, sizeof err),
	    PAY_ESTALE);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "999999999999999999", "n", sig,
	                     body, 2, INT64_MAX, 300, err, sizeof err),
	    PAY_ESTALE);
	free(sig);
	pay_keyring_free(kr);
}
END_TEST

START_TEST(wechat_bad_headers_are_format_errors)
{
	struct pay_keyring *kr = ring_a();
	const char *body = "{}";
	char *sig = wx_sign(key_a, "1800000000", "n", body, 2);
	char *big = xcalloc(1, 65537);
	char err[256];
	static const char *bad_ts[] = {
	    "", "17e8", "-1", "+1", " 1", "1 ", "1.0", "0x10", "1800000000000000000"};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(bad_ts); i++)
		ck_assert_msg(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", bad_ts[i], "n", sig, body,
		                  2, 1800000000, 300, err, sizeof err) == PAY_EFORMAT,
		    "timestamp \"%s\"", bad_ts[i]);
	ck_assert_int_eq(pay_wechat_verify(kr, NULL, "1800000000", "n", sig, body, 2, 1800000000,
	                     300, err, sizeof err),
	    PAY_EFORMAT);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "", sig, body, 2,
	                     1800000000, 300, err, sizeof err),
	    PAY_EFORMAT);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n\nx", sig, body,
	                     2, 1800000000, 300, err, sizeof err),
	    PAY_EFORMAT);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", NULL, body, 2,
	                     1800000000, 300, err, sizeof err),
	    PAY_EFORMAT);
	/* WeChat's deliberate probes simply fail; no special case. */
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n",
	                     "WECHATPAY/SIGNTEST/bm90IGEgc2lnbmF0dXJl", body, 2, 1800000000, 300,
	                     err, sizeof err),
	    PAY_EFORMAT);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", "abc", body,
	                     2, 1800000000, 300, err, sizeof err),
	    PAY_EFORMAT);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", "ab=c", body,
	                     2, 1800000000, 300, err, sizeof err),
	    PAY_EFORMAT);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", "QUJD\n",
	                     body, 2, 1800000000, 300, err, sizeof err),
	    PAY_EFORMAT);
	/* Well-formed base64 of the wrong length is just a wrong signature. */
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", "QUJD", body,
	                     2, 1800000000, 300, err, sizeof err),
	    PAY_ESIG);
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "1800000000", "n", sig, big,
	                     65537, 1800000000, 300, err, sizeof err),
	    PAY_EFORMAT);
	/* A NULL err is allowed. */
	ck_assert_int_eq(pay_wechat_verify(kr, "PUB_KEY_ID_0000A", "x", "n", sig, body, 2,
	                     1800000000, 300, NULL, 0),
	    PAY_EFORMAT);
	free(big);
	free(sig);
	pay_keyring_free(kr);
}
END_TEST

/* --- keys ---------------------------------------------------------------- */

START_TEST(keyring_serials_and_refusals)
{
	struct pay_keyring *kr = pay_keyring_new();
	unsigned char k[32];
	char err[256];
	EVP_PKEY *pk;

	ck_assert_int_eq(pay_keyring_count(kr), 0);
	ck_assert_int_eq(
	    pay_keyring_add_file(kr, NULL, DATA("platform_cert.pem"), err, sizeof err), PAY_OK);
	ck_assert_ptr_nonnull(pay_keyring_find(kr, WX_KAT_SERIAL));
	/* The generated certificate's serial is 00 0A BC: upper-case hex. */
	ck_assert_int_eq(pay_keyring_add_file(kr, NULL, cert_a_path, err, sizeof err), PAY_OK);
	ck_assert_ptr_nonnull(pay_keyring_find(kr, "0ABC"));
	ck_assert_ptr_nonnull(pay_keyring_find(kr, "0abc"));
	ck_assert_ptr_null(pay_keyring_find(kr, "ABC"));
	ck_assert_ptr_null(pay_keyring_find(kr, NULL));
	ck_assert_int_eq(pay_keyring_count(kr), 2);
	/* Refused: a repeated id, a bare key without id, no file, not PEM, a
	 * private key file. */
	ck_assert_int_eq(
	    pay_keyring_add_file(kr, NULL, DATA("platform_cert.pem"), err, sizeof err), PAY_EKEY);
	ck_assert_int_eq(
	    pay_keyring_add_file(kr, NULL, DATA("rsa_public.pem"), err, sizeof err), PAY_EKEY);
	ck_assert_int_eq(
	    pay_keyring_add_file(kr, "x", DATA("no-such.pem"), err, sizeof err), PAY_EKEY);
	ck_assert_int_eq(pay_keyring_add_file(kr, "x", junk_path, err, sizeof err), PAY_EKEY);
	ck_assert_int_eq(
	    pay_keyring_add_file(kr, "x", DATA("rsa_private.pem"), err, sizeof err), PAY_EKEY);
	ck_assert_int_eq(
	    pay_keyring_add_file(kr, "", DATA("rsa_public.pem"), err, sizeof err), PAY_EKEY);
	ck_assert_int_eq(pay_keyring_count(kr), 2);
	pay_keyring_free(kr);
	pay_keyring_free(NULL);

	pk = pay_pubkey_load(DATA("platform_cert.pem"), err, sizeof err);
	ck_assert_ptr_nonnull(pk);
	EVP_PKEY_free(pk);
	ck_assert_ptr_null(pay_pubkey_load(junk_path, err, sizeof err));

	ck_assert_int_eq(pay_secret_load(DATA("apiv3.key"), k, err, sizeof err), PAY_OK);
	ck_assert(memcmp(k, "prepaiddTestApiV3Key0123456789ab", 32) == 0);
	ck_assert_int_eq(pay_secret_load(junk_path, k, err, sizeof err), PAY_EKEY);
	ck_assert(strstr(err, "not 4") != NULL);
	ck_assert_int_eq(pay_secret_load(DATA("rsa_public.pem"), k, err, sizeof err), PAY_EKEY);
	ck_assert(strstr(err, "BEGIN") == NULL);
}
END_TEST

/* --- WeChat Pay: envelope, decryption, transaction ---------------------- */

START_TEST(wechat_known_answer_decrypts_and_parses)
{
	struct pay_wechat_envelope e;
	struct pay_wechat_txn t;
	unsigned char key[32];
	size_t len, tlen, plen;
	char *body = slurp(DATA("wechat_notify.json"), &len), *b = exact(body, len);
	char *want = slurp(DATA("wechat_txn.json"), &tlen), *plain;
	char err[256];

	ck_assert_int_eq(pay_secret_load(DATA("apiv3.key"), key, err, sizeof err), PAY_OK);
	ck_assert_msg(pay_wechat_envelope_parse(b, len, &e, err, sizeof err) == PAY_OK, "%s", err);
	ck_assert_str_eq(e.id, "EV-2018022511223320873");
	ck_assert_str_eq(e.event_type, "TRANSACTION.SUCCESS");
	ck_assert_str_eq(e.resource_type, "encrypt-resource");
	ck_assert_str_eq(e.original_type, "transaction");
	ck_assert_str_eq(e.algorithm, "AEAD_AES_256_GCM");
	ck_assert_str_eq(e.associated_data, "transaction");
	ck_assert_str_eq(e.nonce, "PF96HFvp29mV");
	ck_assert_msg(
	    pay_wechat_decrypt(key, &e, &plain, &plen, err, sizeof err) == PAY_OK, "%s", err);
	ck_assert_uint_eq(plen, tlen);
	ck_assert_str_eq(plain, want);

	ck_assert_msg(pay_wechat_txn_parse(plain, plen, &t, err, sizeof err) == PAY_OK, "%s", err);
	ck_assert_str_eq(t.appid, "wxd678efh567hg6787");
	ck_assert_str_eq(t.mchid, "1900000100");
	ck_assert_str_eq(t.out_trade_no, "PP20261127000001");
	ck_assert_str_eq(t.transaction_id, "4200000000202611270000000001");
	ck_assert_str_eq(t.trade_state, "SUCCESS");
	ck_assert_str_eq(t.currency, "CNY");
	ck_assert_str_eq(t.success_time, "2026-11-27T10:15:00+08:00");
	ck_assert_int_eq(t.total, 2500);
	ck_assert_int_eq(t.payer_total, 2400);
	pay_wechat_txn_free(&t);
	free(plain);

	/* Another merchant's key. */
	key[0] ^= 1;
	ck_assert_int_eq(pay_wechat_decrypt(key, &e, &plain, &plen, err, sizeof err), PAY_EDECRYPT);
	ck_assert_ptr_null(plain);
	pay_wechat_envelope_free(&e);
	pay_wechat_envelope_free(&e);
	free(b);
	free(body);
	free(want);
}
END_TEST

/* Decrypt a hand-made envelope; returns the code, frees everything. */
static int
decrypt_with(
    const unsigned char key[32], const char *ct, const char *aad, const char *nonce, char **plain)
{
	struct pay_wechat_envelope e = {0};
	size_t plen;
	char err[256];
	int rc;

	e.algorithm = xstrdup("AEAD_AES_256_GCM");
	e.ciphertext = xstrdup(ct);
	e.associated_data = aad != NULL ? xstrdup(aad) : NULL;
	e.nonce = xstrdup(nonce);
	rc = pay_wechat_decrypt(key, &e, plain, &plen, err, sizeof err);
	if (rc == PAY_OK)
		ck_assert_uint_eq(plen, strlen(*plain));
	else
		ck_assert(*plain == NULL && *err != '\0');
	pay_wechat_envelope_free(&e);
	return rc;
}

START_TEST(wechat_decrypt_rejects_tampering)
{
	const char *txt = "{\"out_trade_no\":\"PP-1\",\"transaction_id\":\"42\","
	                  "\"trade_state\":\"SUCCESS\",\"amount\":{\"total\":1}}";
	char *ct = wx_encrypt(gcm_key, "abcdefghijkl", "transaction", txt);
	char *ct0 = wx_encrypt(gcm_key, "abcdefghijkl", "", txt);
	unsigned char other[32];
	size_t n = strlen(ct);
	char *plain, *cut;

	ck_assert_int_eq(decrypt_with(gcm_key, ct, "transaction", "abcdefghijkl", &plain), PAY_OK);
	ck_assert_str_eq(plain, txt);
	free(plain);
	/* Empty (or absent) associated data round-trips; it must match too. */
	ck_assert_int_eq(decrypt_with(gcm_key, ct0, "", "abcdefghijkl", &plain), PAY_OK);
	free(plain);
	ck_assert_int_eq(decrypt_with(gcm_key, ct0, NULL, "abcdefghijkl", &plain), PAY_OK);
	free(plain);
	ck_assert_int_eq(
	    decrypt_with(gcm_key, ct0, "transaction", "abcdefghijkl", &plain), PAY_EDECRYPT);
	ck_assert_int_eq(decrypt_with(gcm_key, ct, "", "abcdefghijkl", &plain), PAY_EDECRYPT);
	ck_assert_int_eq(
	    decrypt_with(gcm_key, ct, "transactioN", "abcdefghijkl", &plain), PAY_EDECRYPT);
	/* Wrong key, wrong nonce. */
	memcpy(other, gcm_key, 32);
	other[31] ^= 0x80;
	ck_assert_int_eq(
	    decrypt_with(other, ct, "transaction", "abcdefghijkl", &plain), PAY_EDECRYPT);
	ck_assert_int_eq(
	    decrypt_with(gcm_key, ct, "transaction", "abcdefghijkL", &plain), PAY_EDECRYPT);
	/* The nonce must be 12 bytes. */
	ck_assert_int_eq(
	    decrypt_with(gcm_key, ct, "transaction", "abcdefghijk", &plain), PAY_EDECRYPT);
	ck_assert_int_eq(
	    decrypt_with(gcm_key, ct, "transaction", "abcdefghijklm", &plain), PAY_EDECRYPT);
	/* One changed base64 character at the start (data) and near the end (tag). */
	ct[0] = ct[0] == 'A' ? 'B' : 'A';
	ck_assert_int_eq(
	    decrypt_with(gcm_key, ct, "transaction", "abcdefghijkl", &plain), PAY_EDECRYPT);
	ct[0] = ct[0] == 'A' ? 'B' : 'A';
	ct[n - 4] = ct[n - 4] == 'A' ? 'B' : 'A';
	ck_assert_int_eq(
	    decrypt_with(gcm_key, ct, "transaction", "abcdefghijkl", &plain), PAY_EDECRYPT);
	ct[n - 4] = ct[n - 4] == 'A' ? 'B' : 'A';
	/* Truncated: four base64 characters (three bytes) short. */
	cut = xstrndup(ct, n - 4);
	ck_assert_int_eq(
	    decrypt_with(gcm_key, cut, "transaction", "abcdefghijkl", &plain), PAY_EDECRYPT);
	free(cut);
	/* 16 bytes or fewer hold no data: format error; not base64 likewise. */
	ck_assert_int_eq(
	    decrypt_with(gcm_key, "AAAAAAAAAAAAAAAAAAAAAA==", "", "abcdefghijkl", &plain),
	    PAY_EFORMAT);
	ck_assert_int_eq(
	    decrypt_with(gcm_key, "AAAAAAAAAAAAAAAAAAAAAAA=", "", "abcdefghijkl", &plain),
	    PAY_EDECRYPT);
	ck_assert_int_eq(decrypt_with(gcm_key, "", "", "abcdefghijkl", &plain), PAY_EFORMAT);
	ck_assert_int_eq(decrypt_with(gcm_key, "!!!!", "", "abcdefghijkl", &plain), PAY_EFORMAT);
	free(ct);
	free(ct0);
}
END_TEST

START_TEST(wechat_decrypt_wants_aes_gcm)
{
	struct pay_wechat_envelope e = {0};
	char *plain, err[256];
	size_t plen;

	ck_assert_int_eq(
	    pay_wechat_decrypt(gcm_key, &e, &plain, &plen, err, sizeof err), PAY_EFORMAT);
	e.algorithm = xstrdup("AEAD_SM4_GCM");
	e.ciphertext = wx_encrypt(gcm_key, "abcdefghijkl", "", "{}");
	e.nonce = xstrdup("abcdefghijkl");
	ck_assert_int_eq(
	    pay_wechat_decrypt(gcm_key, &e, &plain, &plen, err, sizeof err), PAY_EFORMAT);
	pay_wechat_envelope_free(&e);
}
END_TEST

static int
envelope(const char *json)
{
	struct pay_wechat_envelope e;
	char err[256], *b = exact(json, strlen(json));
	int rc = pay_wechat_envelope_parse(b, strlen(json), &e, err, sizeof err);

	if (rc != PAY_OK)
		ck_assert(e.id == NULL && e.ciphertext == NULL && *err != '\0');
	pay_wechat_envelope_free(&e);
	free(b);
	return rc;
}

START_TEST(wechat_envelope_shapes)
{
	ck_assert_int_eq(envelope("{\"id\":\"x\",\"event_type\":\"REFUND.SUCCESS\",\"resource\":"
	                          "{\"algorithm\":\"a\",\"ciphertext\":\"c\",\"nonce\":\"n\"}}"),
	    PAY_OK);
	ck_assert_int_eq(envelope(""), PAY_EFORMAT);
	ck_assert_int_eq(envelope("[]"), PAY_EFORMAT);
	ck_assert_int_eq(envelope("{\"id\":\"x\"}"), PAY_EFORMAT);
	ck_assert_int_eq(
	    envelope("{\"id\":\"x\",\"event_type\":\"T\",\"resource\":\"r\"}"), PAY_EFORMAT);
	ck_assert_int_eq(envelope("{\"id\":\"x\",\"event_type\":\"T\",\"resource\":"
	                          "{\"algorithm\":\"a\",\"ciphertext\":1,\"nonce\":\"n\"}}"),
	    PAY_EFORMAT);
	ck_assert_int_eq(envelope("{\"id\":\"x\",\"event_type\":\"T\",\"resource\":"
	                          "{\"algorithm\":\"a\",\"ciphertext\":\"c\",\"nonce\":\"n\","
	                          "\"associated_data\":null}}"),
	    PAY_EFORMAT);
	/* A repeated key, an embedded NUL: refused, not guessed at. */
	ck_assert_int_eq(envelope("{\"id\":\"x\",\"id\":\"y\",\"event_type\":\"T\",\"resource\":"
	                          "{\"algorithm\":\"a\",\"ciphertext\":\"c\",\"nonce\":\"n\"}}"),
	    PAY_EFORMAT);
	ck_assert_int_eq(envelope("{\"id\":\"x\\u0000y\",\"event_type\":\"T\",\"resource\":"
	                          "{\"algorithm\":\"a\",\"ciphertext\":\"c\",\"nonce\":\"n\"}}"),
	    PAY_EFORMAT);
	ck_assert_int_eq(envelope("{\"id\":\"x\",\"event_type\":\"T\",\"resource\":"
	                          "{\"algorithm\":\"a\",\"ciphertext\":\"c\",\"nonce\":\"n\"}} x"),
	    PAY_EFORMAT);
}
END_TEST

static int
txn(const char *json, struct pay_wechat_txn *t)
{
	char err[256], *b = exact(json, strlen(json));
	int rc = pay_wechat_txn_parse(b, strlen(json), t, err, sizeof err);

	free(b);
	return rc;
}

START_TEST(wechat_txn_types_and_required_fields)
{
	struct pay_wechat_txn t = {0};

	/* Free works on a zeroed struct and twice in a row. */
	pay_wechat_txn_free(&t);
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\","
	                     "\"trade_state\":\"NOTPAY\"}",
	                     &t),
	    PAY_OK);
	ck_assert_int_eq(t.total, -1);
	ck_assert_int_eq(t.payer_total, -1);
	ck_assert_ptr_null(t.appid);
	ck_assert_ptr_null(t.currency);
	pay_wechat_txn_free(&t);
	pay_wechat_txn_free(&t);

	ck_assert_int_eq(
	    txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\",\"trade_state\":"
	        "\"SUCCESS\",\"amount\":{\"total\":0,\"payer_total\":9007199254740993}}",
	        &t),
	    PAY_OK);
	ck_assert_int_eq(t.total, 0);
	ck_assert_int_eq(t.payer_total, INT64_C(9007199254740993));
	pay_wechat_txn_free(&t);

	ck_assert_int_eq(txn("{\"transaction_id\":\"t\",\"trade_state\":\"S\"}", &t), PAY_EFORMAT);
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"trade_state\":\"S\"}", &t), PAY_EFORMAT);
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\"}", &t), PAY_EFORMAT);
	ck_assert_ptr_null(t.out_trade_no);
	ck_assert_int_eq(
	    txn("{\"out_trade_no\":1,\"transaction_id\":\"t\",\"trade_state\":\"S\"}", &t),
	    PAY_EFORMAT);
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\",\"trade_state\":"
	                     "\"S\",\"appid\":7}",
	                     &t),
	    PAY_EFORMAT);
	/* Fen are JSON integers: not strings, not reals, not negative. */
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\",\"trade_state\":"
	                     "\"S\",\"amount\":{\"total\":\"2500\"}}",
	                     &t),
	    PAY_EFORMAT);
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\",\"trade_state\":"
	                     "\"S\",\"amount\":{\"total\":25.0}}",
	                     &t),
	    PAY_EFORMAT);
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\",\"trade_state\":"
	                     "\"S\",\"amount\":{\"total\":-1}}",
	                     &t),
	    PAY_EFORMAT);
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\",\"trade_state\":"
	                     "\"S\",\"amount\":{\"total\":1,\"payer_total\":1e2}}",
	                     &t),
	    PAY_EFORMAT);
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\",\"trade_state\":"
	                     "\"S\",\"amount\":{\"total\":99999999999999999999}}",
	                     &t),
	    PAY_EFORMAT);
	ck_assert_int_eq(txn("{\"out_trade_no\":\"o\",\"transaction_id\":\"t\",\"trade_state\":"
	                     "\"S\",\"amount\":[1]}",
	                     &t),
	    PAY_EFORMAT);
	ck_assert_int_eq(txn("not json", &t), PAY_EFORMAT);
	ck_assert_ptr_null(t.transaction_id);
	pay_wechat_txn_free(&t);
}
END_TEST

/* --- Alipay ---------------------------------------------------------------- */

START_TEST(alipay_known_answer_verifies)
{
	struct pay_form f;
	size_t len, clen;
	char *body = slurp(DATA("alipay_notify.form"), &len), *b = exact(body, len);
	char *want = slurp(DATA("alipay_notify.content"), &clen), *got;
	EVP_PKEY *key;
	char err[256];

	key = pay_pubkey_load(DATA("rsa_public.pem"), err, sizeof err);
	ck_assert_msg(key != NULL, "%s", err);
	ck_assert_msg(pay_form_parse(b, len, &f, err, sizeof err) == PAY_OK, "%s", err);
	ck_assert_str_eq(pay_form_get(&f, "subject"), "电费充值 100元");
	ck_assert_str_eq(pay_form_get(&f, "body"), "a+b&c=d%");
	ck_assert_str_eq(pay_form_get(&f, "seller_email"), "");
	ck_assert_ptr_null(pay_form_get(&f, "refund_fee"));
	got = pay_alipay_signing_string(&f);
	ck_assert_str_eq(got, want);
	free(got);
	ck_assert_msg(pay_alipay_verify(&f, key, err, sizeof err) == PAY_OK, "%s", err);
	pay_form_free(&f);

	/* total_amount=100.00 -> 100.01: the signature no longer holds. */
	got = strstr(b, "total_amount=100.00");
	ck_assert_ptr_nonnull(got);
	got[strlen("total_amount=100.0")] = '1';
	ck_assert_int_eq(pay_form_parse(b, len, &f, err, sizeof err), PAY_OK);
	ck_assert_int_eq(pay_alipay_verify(&f, key, err, sizeof err), PAY_ESIG);
	pay_form_free(&f);
	pay_form_free(&f);
	EVP_PKEY_free(key);
	free(b);
	free(body);
	free(want);
}
END_TEST

/* The Alipay console shows its public key as one line of base64, without
 * the PEM armour: that loads too, and verifies the same notification. */
START_TEST(alipay_bare_base64_public_key)
{
	size_t len, flen, i, n = 0;
	char *pem = slurp(DATA("rsa_public.pem"), &len), *bare = xmalloc(len + 1);
	char *body = slurp(DATA("alipay_notify.form"), &flen), *b = exact(body, flen);
	char path[] = "/tmp/check_payverify_b.XXXXXX", err[256];
	struct pay_form f;
	EVP_PKEY *key;
	const char *line;
	int fd;

	/* Keep the lines between the BEGIN and END lines, joined. */
	for (line = pem; *line != '\0';) {
		const char *end = strchr(line, '\n');
		size_t l = end != NULL ? (size_t)(end - line) : strlen(line);

		if (line[0] != '-')
			for (i = 0; i < l; i++)
				bare[n++] = line[i];
		line += l + (end != NULL);
	}
	bare[n] = '\0';
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, bare, n), (ssize_t)n);
	ck_assert_int_eq(write(fd, "\n", 1), 1);
	close(fd);
	key = pay_pubkey_load(path, err, sizeof err);
	ck_assert_msg(key != NULL, "%s", err);
	ck_assert_int_eq(pay_form_parse(b, flen, &f, err, sizeof err), PAY_OK);
	ck_assert_msg(pay_alipay_verify(&f, key, err, sizeof err) == PAY_OK, "%s", err);
	pay_form_free(&f);
	EVP_PKEY_free(key);

	/* One character less is no key at all. */
	fd = open(path, O_WRONLY | O_TRUNC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, bare + 4, n - 4), (ssize_t)(n - 4));
	close(fd);
	ck_assert_ptr_null(pay_pubkey_load(path, err, sizeof err));
	unlink(path);
	free(bare);
	free(pem);
	free(b);
	free(body);
}
END_TEST

START_TEST(alipay_signed_here_verifies_and_tampering_fails)
{
	char *body = ali_build(key_a, ali_pairs, ARRAY_SIZE(ali_pairs), "RSA2");
	char *other = ali_build(key_b, ali_pairs, ARRAY_SIZE(ali_pairs), "RSA2");
	char *rsa1 = ali_build(key_a, ali_pairs, ARRAY_SIZE(ali_pairs), "RSA");
	char *none = ali_build(key_a, ali_pairs, ARRAY_SIZE(ali_pairs), NULL);
	char *amount, *p, *filled;

	ck_assert_int_eq(ali_verify_body(body, key_a), PAY_OK);
	ck_assert_int_eq(ali_verify_body(body, key_b), PAY_ESIG);
	ck_assert_int_eq(ali_verify_body(other, key_a), PAY_ESIG);
	/* A good SHA256 signature still fails under any sign_type but RSA2. */
	ck_assert_int_eq(ali_verify_body(rsa1, key_a), PAY_EFORMAT);
	ck_assert_int_eq(ali_verify_body(none, key_a), PAY_EFORMAT);
	ck_assert_int_eq(ali_verify_body(body, NULL), PAY_EKEY);
	amount = strstr(body, "total_amount=12.50");
	amount[strlen("total_amount=1")] = '3';
	ck_assert_int_eq(ali_verify_body(body, key_a), PAY_ESIG);

	/* A non-empty value where the signer had an empty one breaks it too. */
	free(body);
	body = ali_build(key_a, ali_pairs, ARRAY_SIZE(ali_pairs), "RSA2");
	ck_assert_int_eq(ali_verify_body(body, key_a), PAY_OK);
	p = strstr(body, "passback_params=");
	ck_assert_ptr_nonnull(p);
	p += strlen("passback_params=");
	xasprintf(&filled, "%.*sx%s", (int)(p - body), body, p);
	ck_assert_int_eq(ali_verify_body(filled, key_a), PAY_ESIG);
	free(filled);
	free(body);
	free(other);
	free(rsa1);
	free(none);
}
END_TEST

START_TEST(alipay_sign_field_must_be_base64)
{
	struct pay_form f;
	char err[256];
	const char *bodies[] = {
	    "a=1&sign_type=RSA2",
	    "a=1&sign_type=RSA2&sign=",
	    "a=1&sign_type=RSA2&sign=abc",
	    /* '+' not percent-encoded arrives as a space: not base64. */
	    "a=1&sign_type=RSA2&sign=ab+d",
	    "a=1&sign_type=rsa2&sign=QUJD",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(bodies); i++) {
		ck_assert_int_eq(
		    pay_form_parse(bodies[i], strlen(bodies[i]), &f, err, sizeof err), PAY_OK);
		ck_assert_msg(
		    pay_alipay_verify(&f, key_a, err, sizeof err) == PAY_EFORMAT, "%s", bodies[i]);
		pay_form_free(&f);
	}
}
END_TEST

static char *
signing_string_of(const char *body)
{
	struct pay_form f;
	char err[256], *b = exact(body, strlen(body)), *s;

	ck_assert_msg(
	    pay_form_parse(b, strlen(body), &f, err, sizeof err) == PAY_OK, "%s: %s", body, err);
	s = pay_alipay_signing_string(&f);
	pay_form_free(&f);
	free(b);
	return s;
}

START_TEST(alipay_signing_string_rules)
{
	static const struct {
		const char *body, *want;
	} cases[] = {
	    /* sign and sign_type dropped, empty values skipped, byte order. */
	    {"b=2&a=1&c=&sign=xyz&sign_type=RSA2&B=3", "B=3&a=1&b=2"},
	    {"a_b=1&a.b=2&aB=3&a=4&a%C3%A9=5&a~=6", "a=4&a.b=2&aB=3&a_b=1&a~=6&aé=5"},
	    /* Decoded once: '+' is a space, %XX a byte; '&' and '=' inside
	     * values are kept raw, never re-encoded. */
	    {"s=a+b%2Bc%26d%3De%25", "s=a b+c&d=e%"},
	    {"s=%252B", "s=%2B"},
	    {"k%20x=%e7%94%b5", "k x=电"},
	    /* No '=' is an empty value; empty pairs carry nothing. */
	    {"&&z=1&flag&", "z=1"},
	    {"sign=only", ""},
	    {"", ""},
	};
	size_t i;
	char *got;

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		got = signing_string_of(cases[i].body);
		ck_assert_msg(
		    strcmp(got, cases[i].want) == 0, "%s: got \"%s\"", cases[i].body, got);
		free(got);
	}
}
END_TEST

START_TEST(alipay_form_refusals)
{
	static const char *bad[] = {
	    "a=%",
	    "a=%4",
	    "a=%G1",
	    "a=%1G",
	    "a=1%",
	    "%=1",
	    "a=%00",
	    "a=x%00y",
	    "=1",
	    "a=1&=2",
	    "a=1&a=2",
	    "a=1&b=2&a=",
	    "a%3D=1&a==1&a%3D=2",
	};
	struct pay_form f;
	struct sbuf many = {0};
	char err[256], *b, nul[] = "a=1\0b";
	size_t i;

	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		b = exact(bad[i], strlen(bad[i]));
		ck_assert_msg(pay_form_parse(b, strlen(bad[i]), &f, err, sizeof err) == PAY_EFORMAT,
		    "%s", bad[i]);
		ck_assert(f.n == 0 && f.kv == NULL && *err != '\0');
		free(b);
	}
	ck_assert_int_eq(pay_form_parse(nul, sizeof nul - 1, &f, err, sizeof err), PAY_EFORMAT);
	/* 200 pairs pass, 201 do not. */
	for (i = 0; i < 200; i++)
		sbuf_printf(&many, "%sk%zu=v", i ? "&" : "", i);
	ck_assert_int_eq(pay_form_parse(many.p, many.len, &f, err, sizeof err), PAY_OK);
	ck_assert_uint_eq(f.n, 200);
	pay_form_free(&f);
	sbuf_adds(&many, "&k200=v");
	ck_assert_int_eq(pay_form_parse(many.p, many.len, &f, err, sizeof err), PAY_EFORMAT);
	free(many.p);
	/* Over 64 KiB. */
	b = xmalloc(65537);
	memset(b, 'a', 65537);
	ck_assert_int_eq(pay_form_parse(b, 65537, &f, err, sizeof err), PAY_EFORMAT);
	ck_assert_int_eq(pay_form_parse(b, 65536, &f, err, sizeof err), PAY_OK);
	ck_assert_uint_eq(f.n, 1);
	pay_form_free(&f);
	free(b);
}
END_TEST

/* --- money ------------------------------------------------------------------ */

START_TEST(money_table)
{
	static const struct {
		const char *s;
		int64_t fen; /* -1: PAY_EFORMAT */
	} cases[] = {
	    {"0", 0},
	    {"0.00", 0},
	    {"0.0", 0},
	    {"0.01", 1},
	    {"0.10", 10},
	    {"0.1", 10},
	    {"1", 100},
	    {"12", 1200},
	    {"12.3", 1230},
	    {"12.30", 1230},
	    {"2.00", 200},
	    {"100.00", 10000},
	    {"007.05", 705},
	    {"999999999999.99", INT64_C(99999999999999)},
	    {"1.234", -1},
	    {"1.", -1},
	    {".5", -1},
	    {"-1", -1},
	    {"+1", -1},
	    {"1e2", -1},
	    {" 1", -1},
	    {"1 ", -1},
	    {"", -1},
	    {".", -1},
	    {"1.2.3", -1},
	    {"1,00", -1},
	    {"1..0", -1},
	    {"0x10", -1},
	    {"1.0a", -1},
	    {"１", -1},
	    {"1000000000000", -1},
	    {"1000000000000.00", -1},
	    {"NaN", -1},
	    {"1.-1", -1},
	};
	size_t i;
	int64_t fen;
	char *b;
	int rc;

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		size_t len = strlen(cases[i].s);

		b = exact(cases[i].s, len);
		fen = -42;
		rc = pay_money_parse(b, len, &fen);
		if (cases[i].fen < 0)
			ck_assert_msg(rc == PAY_EFORMAT && fen == -42, "\"%s\" accepted as %lld",
			    cases[i].s, (long long)fen);
		else
			ck_assert_msg(rc == PAY_OK && fen == cases[i].fen, "\"%s\": rc %d fen %lld",
			    cases[i].s, rc, (long long)fen);
		free(b);
	}
	/* The length is honoured: "12.345" cut at 5 is "12.34". */
	ck_assert_int_eq(pay_money_parse("12.345", 5, &fen), PAY_OK);
	ck_assert_int_eq(fen, 1234);
	ck_assert_int_eq(pay_money_parse("1\0", 2, &fen), PAY_EFORMAT);
	ck_assert_int_eq(pay_money_parse(NULL, 0, &fen), PAY_EFORMAT);
}
END_TEST

/* --- set-up --------------------------------------------------------------- */

/* --- classifying genuine notifications ----------------------------------- */

#define WX_MCHID "1900000001"
#define WX_APPIDS "wx0000000000000001 wx0000000000000002"

static void
wx_classify(const char *original_type, const char *plain, struct pay_class *c)
{
	struct pay_wechat_envelope e;
	char id[] = "EV-7", ev[] = "TRANSACTION.SUCCESS", refund_ev[] = "REFUND.SUCCESS";
	char ot[32];

	memset(&e, 0, sizeof e);
	e.id = id;
	e.event_type = ev;
	if (original_type != NULL) {
		snprintf(ot, sizeof ot, "%s", original_type);
		e.original_type = ot;
		if (strcmp(ot, "refund") == 0)
			e.event_type = refund_ev;
	}
	pay_wechat_classify(&e, plain, strlen(plain), WX_MCHID, WX_APPIDS, c);
}

#define WX_TXN(appid, mchid, state, total, currency)                                               \
	"{\"appid\":\"" appid "\",\"mchid\":\"" mchid "\",\"out_trade_no\":\"PP-302-1\","          \
	"\"transaction_id\":\"4200000001\",\"trade_state\":\"" state "\","                         \
	"\"success_time\":\"2026-01-01T12:00:00+08:00\","                                          \
	"\"amount\":{\"total\":" total ",\"currency\":\"" currency "\"}}"

START_TEST(wechat_success_is_a_payment)
{
	struct pay_class c;

	wx_classify(
	    "transaction", WX_TXN("wx0000000000000002", WX_MCHID, "SUCCESS", "1250", "CNY"), &c);
	ck_assert_int_eq(c.action, PAY_RECORD);
	ck_assert_str_eq(c.out_trade_no, "PP-302-1");
	ck_assert_str_eq(c.txn, "4200000001");
	ck_assert_int_eq(c.fen, 1250);
	ck_assert_str_eq(c.status, "SUCCESS");
	ck_assert_str_eq(c.notify_id, "EV-7");
	ck_assert_str_eq(c.paid_at, "2026-01-01T12:00:00+08:00");
	pay_class_free(&c);
	/* No original_type: a transaction too. */
	wx_classify(NULL, WX_TXN("wx0000000000000001", WX_MCHID, "SUCCESS", "1", "CNY"), &c);
	ck_assert_int_eq(c.action, PAY_RECORD);
	ck_assert_int_eq(c.fen, 1);
	pay_class_free(&c);
}
END_TEST

START_TEST(wechat_unpaid_states_are_not_paid_notices)
{
	static const char *const states[] = {"NOTPAY", "CLOSED", "REVOKED", "PAYERROR", "REFUND"};
	char plain[512];
	struct pay_class c;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(states); i++) {
		snprintf(plain, sizeof plain,
		    "{\"appid\":\"wx0000000000000001\",\"mchid\":\"" WX_MCHID "\","
		    "\"out_trade_no\":\"PP-302-1\",\"transaction_id\":\"4200000001\","
		    "\"trade_state\":\"%s\",\"amount\":{\"total\":1250}}",
		    states[i]);
		wx_classify("transaction", plain, &c);
		ck_assert_int_eq(c.action, PAY_NOTICE);
		ck_assert_str_eq(c.kind, "not_paid");
		ck_assert_str_eq(c.status, states[i]);
		ck_assert_str_eq(c.notify_id, "EV-7");
		ck_assert_str_eq(c.out_trade_no, "PP-302-1");
		ck_assert_int_eq(c.fen, 1250);
		pay_class_free(&c);
	}
}
END_TEST

START_TEST(wechat_refusals_after_verification)
{
	struct pay_class c;

	wx_classify("transaction",
	    WX_TXN("wx0000000000000001", "1900000999", "SUCCESS", "1250", "CNY"), &c);
	ck_assert_int_eq(c.action, PAY_REFUSE);
	ck_assert_int_eq(c.http_status, 403);
	ck_assert(c.audited);
	ck_assert_str_eq(c.reason, "mchid is not ours");
	ck_assert_str_eq(c.out_trade_no, "PP-302-1"); /* for the audit row */
	pay_class_free(&c);

	wx_classify(
	    "transaction", WX_TXN("wx000000000000000", WX_MCHID, "SUCCESS", "1250", "CNY"), &c);
	ck_assert_int_eq(c.http_status, 403);
	ck_assert_str_eq(c.reason, "appid is not one of ours");
	pay_class_free(&c);

	wx_classify(
	    "transaction", WX_TXN("wx0000000000000001", WX_MCHID, "SUCCESS", "1250", "USD"), &c);
	ck_assert_int_eq(c.action, PAY_REFUSE);
	ck_assert_int_eq(c.http_status, 400);
	ck_assert(c.audited);
	ck_assert_str_eq(c.reason, "amount 1250 USD: only CNY fen are accepted");
	pay_class_free(&c);

	wx_classify("transaction",
	    "{\"out_trade_no\":\"PP 1\",\"transaction_id\":\"42\",\"trade_state\":\"SUCCESS\"}",
	    &c);
	ck_assert_int_eq(c.http_status, 400);
	ck_assert(!c.audited);
	ck_assert_str_eq(c.reason, "out_trade_no or transaction_id missing or too long");
	ck_assert_str_eq(c.out_trade_no, "");
	pay_class_free(&c);

	wx_classify("transaction", "{\"out_trade_no\":\"PP-1\"}", &c);
	ck_assert_int_eq(c.action, PAY_REFUSE);
	ck_assert_int_eq(c.http_status, 400);
	ck_assert(!c.audited);
	ck_assert_str_ne(c.reason, "");
	pay_class_free(&c);
}
END_TEST

START_TEST(wechat_refund_is_a_notice_of_ours_only)
{
	struct pay_class c;

	wx_classify("refund",
	    "{\"mchid\":\"" WX_MCHID "\",\"out_trade_no\":\"PP-302-1\","
	    "\"transaction_id\":\"4200000001\",\"out_refund_no\":\"R1\","
	    "\"amount\":{\"total\":1250,\"refund\":500}}",
	    &c);
	ck_assert_int_eq(c.action, PAY_NOTICE);
	ck_assert_str_eq(c.kind, "refund");
	ck_assert_str_eq(c.status, "REFUND.SUCCESS");
	ck_assert_str_eq(c.notify_id, "EV-7");
	ck_assert_str_eq(c.out_trade_no, "PP-302-1");
	ck_assert_str_eq(c.txn, "4200000001");
	ck_assert_int_eq(c.fen, 500);
	pay_class_free(&c);

	wx_classify("refund", "{\"mchid\":\"1900000999\",\"out_trade_no\":\"PP-302-1\"}", &c);
	ck_assert_int_eq(c.action, PAY_REFUSE);
	ck_assert_int_eq(c.http_status, 403);
	ck_assert_str_eq(c.reason, "mchid is not ours");
	pay_class_free(&c);

	/* Not JSON, or no amount: still a notice, with what there is. */
	wx_classify("refund", "not json", &c);
	ck_assert_int_eq(c.action, PAY_NOTICE);
	ck_assert_str_eq(c.out_trade_no, "");
	ck_assert_int_eq(c.fen, -1);
	pay_class_free(&c);
}
END_TEST

static void
ali_classify(const char *form, const char *seller_id, struct pay_class *c)
{
	struct pay_form f;
	char err[256];

	ck_assert_int_eq(pay_form_parse(form, strlen(form), &f, err, sizeof err), PAY_OK);
	pay_alipay_classify(&f, "2021000000000000", seller_id, c);
	pay_form_free(&f);
}

#define ALI_BASE                                                                                   \
	"app_id=2021000000000000&seller_id=2088000000000001&out_trade_no=PP-302-2"                 \
	"&trade_no=2026010122001400001&notify_id=N-9&total_amount=12.50"                           \
	"&gmt_payment=2026-01-01+12%3A00%3A00"

START_TEST(alipay_success_and_finished_are_payments)
{
	struct pay_class c;

	ali_classify(ALI_BASE "&trade_status=TRADE_SUCCESS", "2088000000000001", &c);
	ck_assert_int_eq(c.action, PAY_RECORD);
	ck_assert_str_eq(c.out_trade_no, "PP-302-2");
	ck_assert_str_eq(c.txn, "2026010122001400001");
	ck_assert_int_eq(c.fen, 1250);
	ck_assert_str_eq(c.status, "TRADE_SUCCESS");
	ck_assert_str_eq(c.notify_id, "N-9");
	ck_assert_str_eq(c.paid_at, "2026-01-01 12:00:00+08"); /* Beijing time */
	pay_class_free(&c);

	ali_classify(ALI_BASE "&trade_status=TRADE_FINISHED", NULL, &c);
	ck_assert_int_eq(c.action, PAY_RECORD);
	ck_assert_str_eq(c.status, "TRADE_FINISHED");
	pay_class_free(&c);
}
END_TEST

START_TEST(alipay_refund_close_and_unpaid_are_notices)
{
	static const struct {
		const char *extra, *kind, *status;
	} t[] = {
	    {"&trade_status=TRADE_SUCCESS&refund_fee=5.00", "refund", "TRADE_SUCCESS"},
	    {"&trade_status=TRADE_CLOSED&gmt_refund=2026-01-02+10%3A00%3A00", "refund",
	        "TRADE_CLOSED"},
	    {"&trade_status=TRADE_SUCCESS&out_biz_no=R1", "refund", "TRADE_SUCCESS"},
	    {"&trade_status=TRADE_CLOSED", "closed", "TRADE_CLOSED"},
	    {"&trade_status=WAIT_BUYER_PAY", "not_paid", "WAIT_BUYER_PAY"},
	    {"", "not_paid", ""},
	};
	char form[512];
	struct pay_class c;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(t); i++) {
		snprintf(form, sizeof form, "%s%s", ALI_BASE, t[i].extra);
		ali_classify(form, NULL, &c);
		ck_assert_int_eq(c.action, PAY_NOTICE);
		ck_assert_str_eq(c.kind, t[i].kind);
		ck_assert_str_eq(c.status, t[i].status);
		ck_assert_str_eq(c.notify_id, "N-9");
		ck_assert_str_eq(c.out_trade_no, "PP-302-2");
		ck_assert_int_eq(c.fen, 1250);
		ck_assert_ptr_null(c.paid_at);
		pay_class_free(&c);
	}
}
END_TEST

START_TEST(alipay_refusals_after_verification)
{
	static const struct {
		const char *form, *seller;
		int status;
		const char *reason;
	} t[] = {
	    {"app_id=2021000000000001&out_trade_no=A&trade_no=B&total_amount=1"
	     "&trade_status=TRADE_SUCCESS",
	        NULL, 403, "app_id is not ours"},
	    {"out_trade_no=A&trade_no=B&total_amount=1&trade_status=TRADE_SUCCESS", NULL, 403,
	        "app_id is not ours"},
	    {ALI_BASE "&trade_status=TRADE_SUCCESS", "2088000000000002", 403,
	        "seller_id is not ours"},
	    {"app_id=2021000000000000&out_trade_no=A&trade_no=B&total_amount=1"
	     "&trade_status=TRADE_SUCCESS",
	        "2088000000000001", 403, "seller_id is not ours"},
	    {"app_id=2021000000000000&out_trade_no=A&total_amount=1&trade_status=TRADE_SUCCESS",
	        NULL, 400, "out_trade_no or trade_no missing or too long"},
	    {"app_id=2021000000000000&out_trade_no=A&trade_no=B&total_amount=0.00"
	     "&trade_status=TRADE_SUCCESS",
	        NULL, 400, "total_amount is not a positive yuan amount"},
	    {"app_id=2021000000000000&out_trade_no=A&trade_no=B&total_amount=-1"
	     "&trade_status=TRADE_FINISHED",
	        NULL, 400, "total_amount is not a positive yuan amount"},
	};
	struct pay_class c;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(t); i++) {
		ali_classify(t[i].form, t[i].seller, &c);
		ck_assert_int_eq(c.action, PAY_REFUSE);
		ck_assert_int_eq(c.http_status, t[i].status);
		ck_assert(c.audited);
		ck_assert_str_eq(c.reason, t[i].reason);
		pay_class_free(&c);
	}
}
END_TEST

static void
write_pubkey(char *path, EVP_PKEY *key)
{
	int fd = mkstemp(path);
	FILE *fp = fdopen(fd, "w");

	if (fp == NULL || PEM_write_PUBKEY(fp, key) != 1) {
		fprintf(stderr, "cannot write %s\n", path);
		exit(EXIT_FAILURE);
	}
	fclose(fp);
}

/* A self-signed certificate whose serial is the bytes 00 0A BC. */
static void
write_cert(char *path, EVP_PKEY *key)
{
	static const unsigned char serial[] = {0x00, 0x0a, 0xbc};
	X509 *x = X509_new();
	BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
	X509_NAME *name;
	int fd = mkstemp(path);
	FILE *fp = fdopen(fd, "w");

	X509_set_version(x, 2);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(
	    name, "CN", MBSTRING_ASC, (const unsigned char *)"test", -1, -1, 0);
	X509_set_issuer_name(x, name);
	if (X509_sign(x, key, EVP_sha256()) == 0 || fp == NULL || PEM_write_X509(fp, x) != 1) {
		fprintf(stderr, "cannot write %s\n", path);
		exit(EXIT_FAILURE);
	}
	fclose(fp);
	X509_free(x);
	BN_free(bn);
}

static Suite *
payverify_suite(void)
{
	Suite *s = suite_create("payverify");
	TCase *tc;

	tc = tcase_create("wechat");
	tcase_add_test(tc, wechat_known_answer_verifies);
	tcase_add_test(tc, wechat_known_answer_with_public_key_id);
	tcase_add_test(tc, wechat_signed_here_verifies_and_tampering_fails);
	tcase_add_test(tc, wechat_empty_body_is_a_bare_line_feed);
	tcase_add_test(tc, wechat_stale_timestamp_both_directions);
	tcase_add_test(tc, wechat_bad_headers_are_format_errors);
	tcase_add_test(tc, wechat_known_answer_decrypts_and_parses);
	tcase_add_test(tc, wechat_decrypt_rejects_tampering);
	tcase_add_test(tc, wechat_decrypt_wants_aes_gcm);
	tcase_add_test(tc, wechat_envelope_shapes);
	tcase_add_test(tc, wechat_txn_types_and_required_fields);
	suite_add_tcase(s, tc);

	tc = tcase_create("keys");
	tcase_add_test(tc, keyring_serials_and_refusals);
	suite_add_tcase(s, tc);

	tc = tcase_create("alipay");
	tcase_add_test(tc, alipay_known_answer_verifies);
	tcase_add_test(tc, alipay_bare_base64_public_key);
	tcase_add_test(tc, alipay_signed_here_verifies_and_tampering_fails);
	tcase_add_test(tc, alipay_sign_field_must_be_base64);
	tcase_add_test(tc, alipay_signing_string_rules);
	tcase_add_test(tc, alipay_form_refusals);
	suite_add_tcase(s, tc);

	tc = tcase_create("classify");
	tcase_add_test(tc, wechat_success_is_a_payment);
	tcase_add_test(tc, wechat_unpaid_states_are_not_paid_notices);
	tcase_add_test(tc, wechat_refusals_after_verification);
	tcase_add_test(tc, wechat_refund_is_a_notice_of_ours_only);
	tcase_add_test(tc, alipay_success_and_finished_are_payments);
	tcase_add_test(tc, alipay_refund_close_and_unpaid_are_notices);
	tcase_add_test(tc, alipay_refusals_after_verification);
	suite_add_tcase(s, tc);

	tc = tcase_create("money");
	tcase_add_test(tc, money_table);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr;
	FILE *fp;
	int failed, fd;

	key_a = EVP_RSA_gen(2048);
	key_b = EVP_RSA_gen(2048);
	if (key_a == NULL || key_b == NULL) {
		fprintf(stderr, "RSA key generation failed\n");
		return EXIT_FAILURE;
	}
	write_pubkey(pub_a_path, key_a);
	write_cert(cert_a_path, key_a);
	/* Not PEM, and four bytes: a bad key file and a bad secret. */
	fd = mkstemp(junk_path);
	if (fd < 0 || (fp = fdopen(fd, "w")) == NULL || fputs("junk", fp) < 0) {
		fprintf(stderr, "cannot write %s\n", junk_path);
		return EXIT_FAILURE;
	}
	fclose(fp);

	sr = srunner_create(payverify_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	unlink(pub_a_path);
	unlink(cert_a_path);
	unlink(junk_path);
	EVP_PKEY_free(key_a);
	EVP_PKEY_free(key_b);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
