/*
 * fuzz_alipay.c: libFuzzer harness for the Alipay half of payverify.c: the
 * form parser, the signing-string builder and the verifier, in the order the
 * daemon calls them on a notification body. Checks, beyond surviving: a
 * parsed form keeps its promises (at most 200 pairs, unique non-empty keys
 * without NUL, found again by pay_form_get), the form re-encoded by this
 * harness parses back to the same pairs, and the signing string holds
 * exactly the pairs it should. Verification runs against a fixed test key
 * (tests/data/pay/rsa_public.pem), so the known-answer form from that
 * directory is a useful seed; every parsed form is also classified as if
 * verified (pay_alipay_classify). Built with --enable-fuzzing (clang).
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/pem.h>

#include "common.h"
#include "fuzz_class.h"
#include "payverify.h"

/* tests/data/pay/rsa_public.pem: a published TEST key. */
static const char fuzz_pubkey[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvqPHSn4LuVWh2V/gY8bG\n"
    "qY1x6/XVYdM0Lvhof+2ftKntzN7gMoIy6KZBfyzbSnxPS4K2F3OQLjzf6kSwZyhv\n"
    "JBgjG79tEaLr2SAdUN4DDkHXyuERQJyGbOJr5fHw1L0q0W/pZVg7M8b1tLMwyNL+\n"
    "cAKF38CrSkCEph7dIP2C7BmRlQKlcy1RoLopVrPIKpV5mDbrZedPSv+9mUbo3SqO\n"
    "RNjQpITnJZt2Mte2c3+6WU3J5L2o2T6O+0Q1VLP3oNTskk03+lnSl6xOQLXm1Ll3\n"
    "B8eHNauybo4+B1VY+9SGnO8X99xZ7Lb1TYUnGF+1K0gB0EwWxItgIQt7wZYZlLi7\n"
    "5QIDAQAB\n"
    "-----END PUBLIC KEY-----\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static EVP_PKEY *
fuzz_key(void)
{
	static EVP_PKEY *key;
	BIO *bio;

	if (key == NULL) {
		bio = BIO_new_mem_buf(fuzz_pubkey, -1);
		key = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
		BIO_free(bio);
		if (key == NULL)
			abort();
	}
	return key;
}

/* Percent-encode every byte but alphanumerics: the parser must undo it. */
static void
fuzz_encode(struct sbuf *b, const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
			sbuf_add(b, s, 1);
		else
			sbuf_printf(b, "%%%02x", c);
	}
}

/*
 * The signing string holds exactly the pairs that are not sign or
 * sign_type and not empty, "k=v" joined by '&': its length says so, and so
 * does its first pair, which is the smallest such key in byte order.
 */
static void
fuzz_check_signing_string(const struct pay_form *f)
{
	char *s = pay_alipay_signing_string(f);
	const char *first = NULL;
	size_t i, want = 0, n = 0;

	if (s == NULL)
		abort();
	for (i = 0; i < f->n; i++) {
		const struct pay_kv *kv = &f->kv[i];

		if (strcmp(kv->key, "sign") == 0 || strcmp(kv->key, "sign_type") == 0 ||
		    kv->val[0] == '\0')
			continue;
		want += (n++ > 0) + strlen(kv->key) + 1 + strlen(kv->val);
		if (first == NULL || strcmp(kv->key, first) < 0)
			first = kv->key;
	}
	if (strlen(s) != want)
		abort();
	if (first != NULL && (strncmp(s, first, strlen(first)) != 0 || s[strlen(first)] != '='))
		abort();
	free(s);
}

/*
 * What the daemon does with a verified form (the fuzzer cannot sign, so
 * classify every form): a decision that keeps its promises.
 */
static void
fuzz_classify(const struct pay_form *f, const char *seller_id)
{
	struct pay_class c;

	pay_alipay_classify(f, "2021000000000000", seller_id, &c);
	fuzz_class_check(&c);
	if (c.action == PAY_RECORD && (c.fen <= 0 ||
	                                  (strcmp(c.status, "TRADE_SUCCESS") != 0 &&
	                                      strcmp(c.status, "TRADE_FINISHED") != 0) ||
	                                  (c.paid_at != NULL && !pay_time_ok(c.paid_at))))
		abort();
	if (c.action == PAY_NOTICE &&
	    (c.status == NULL || (strcmp(c.kind, "refund") != 0 && strcmp(c.kind, "closed") != 0 &&
	                             strcmp(c.kind, "not_paid") != 0)))
		abort();
	pay_class_free(&c);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pay_form f, g;
	struct sbuf re = {0};
	char err[256];
	size_t i, j;

	if (pay_form_parse((const char *)data, size, &f, err, sizeof err) != PAY_OK) {
		if (err[0] == '\0' || f.n != 0 || f.kv != NULL)
			abort();
		return 0;
	}
	if (f.n > 200)
		abort();
	for (i = 0; i < f.n; i++) {
		if (f.kv[i].key[0] == '\0' || pay_form_get(&f, f.kv[i].key) != f.kv[i].val)
			abort();
		for (j = 0; j < i; j++) {
			if (strcmp(f.kv[i].key, f.kv[j].key) == 0)
				abort();
		}
		if (i > 0)
			sbuf_adds(&re, "&");
		fuzz_encode(&re, f.kv[i].key);
		sbuf_adds(&re, "=");
		fuzz_encode(&re, f.kv[i].val);
	}
	/* Re-encoded, the same pairs come back (within the size limit). */
	if (re.len <= 65536) {
		if (pay_form_parse(re.p != NULL ? re.p : "", re.len, &g, err, sizeof err) !=
		        PAY_OK ||
		    g.n != f.n)
			abort();
		for (i = 0; i < f.n; i++) {
			if (strcmp(g.kv[i].key, f.kv[i].key) != 0 ||
			    strcmp(g.kv[i].val, f.kv[i].val) != 0)
				abort();
		}
		pay_form_free(&g);
	}
	free(re.p);

	fuzz_check_signing_string(&f);
	fuzz_classify(&f, NULL);
	fuzz_classify(&f, "2088000000000001");
	if (pay_alipay_verify(&f, fuzz_key(), err, sizeof err) != PAY_OK && err[0] == '\0')
		abort();
	pay_form_free(&f);
	return 0;
}
