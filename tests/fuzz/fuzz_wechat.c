/*
 * fuzz_wechat.c: libFuzzer harness for the WeChat Pay half of payverify.c,
 * in the order the daemon runs it: the signature check over the raw body
 * (headers taken from the first lines of the input), the envelope parser,
 * AES-256-GCM decryption with a fixed APIv3 key, and the transaction
 * parser and the classifier (pay_wechat_classify), which are also fed the
 * input directly since the fuzzer will seldom
 * forge a GCM tag. The fixed key and public key are the published test
 * material of tests/data/pay, so tests/data/pay/wechat_notify.json is a
 * seed that reaches every stage. Checks, beyond surviving: parsed structs
 * hold what a success promises, and a failed decryption releases nothing.
 * Built with --enable-fuzzing (clang).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "fuzz_class.h"
#include "payverify.h"

/* tests/data/pay/apiv3.key and rsa_public.pem: published TEST keys. */
static const unsigned char fuzz_apiv3[32] = "prepaiddTestApiV3Key0123456789ab";
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
#define FUZZ_SERIAL "PUB_KEY_ID_FUZZ"
#define FUZZ_NOW INT64_C(1700000000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The keyring API reads files: write the key once, load it, remove it. */
static struct pay_keyring *
fuzz_ring(void)
{
	static struct pay_keyring *kr;
	char path[] = "/tmp/fuzz_wechat.XXXXXX", err[256];
	int fd;

	if (kr != NULL)
		return kr;
	kr = pay_keyring_new();
	if ((fd = mkstemp(path)) < 0 ||
	    write(fd, fuzz_pubkey, sizeof fuzz_pubkey - 1) != (ssize_t)(sizeof fuzz_pubkey - 1))
		abort();
	close(fd);
	if (pay_keyring_add_file(kr, FUZZ_SERIAL, path, err, sizeof err) != PAY_OK)
		abort();
	unlink(path);
	return kr;
}

static void
fuzz_txn(const char *buf, size_t len)
{
	struct pay_wechat_txn t;
	char err[256];

	if (pay_wechat_txn_parse(buf, len, &t, err, sizeof err) == PAY_OK) {
		if (t.out_trade_no == NULL || t.transaction_id == NULL || t.trade_state == NULL ||
		    t.total < -1 || t.payer_total < -1)
			abort();
	} else if (t.out_trade_no != NULL || t.appid != NULL || err[0] == '\0') {
		abort();
	}
	pay_wechat_txn_free(&t);
}

/*
 * What the daemon does with a genuine resource: a decision, always, and
 * one that keeps its promises (a payment has ids and an amount, a refusal
 * a status and a reason, every id is storable).
 */
static void
fuzz_classify(const char *buf, size_t len, const char *original_type)
{
	struct pay_wechat_envelope e;
	struct pay_class c;
	char id[] = "EV-1", event[] = "TRANSACTION.SUCCESS", type[64] = "";

	memset(&e, 0, sizeof e);
	e.id = id;
	e.event_type = event;
	if (original_type != NULL) {
		snprintf(type, sizeof type, "%s", original_type);
		e.original_type = type;
	}
	pay_wechat_classify(&e, buf, len, "1900000001", "wx0000000000000001 wx2", &c);
	fuzz_class_check(&c);
	if (c.action == PAY_RECORD && (strcmp(c.status, "SUCCESS") != 0 || c.notify_id == NULL))
		abort();
	if (c.action == PAY_NOTICE && c.notify_id == NULL)
		abort();
	pay_class_free(&c);
}

/*
 * Input: "timestamp\nnonce\nsignature\n" then the body; without three line
 * feeds the whole input is the body and the signature headers are those
 * of the known-answer vector.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	char ts[64] = "1700000000", nonce[64] = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS";
	char sig[512] = "AAAA", err[256], *fields[3] = {ts, nonce, sig}, *plain;
	size_t sizes[3] = {sizeof ts, sizeof nonce, sizeof sig};
	const char *body = buf, *nl;
	size_t blen = size, plen, i;
	struct pay_wechat_envelope e;
	int rc;

	for (i = 0; i < 3; i++) {
		nl = memchr(body, '\n', blen);
		if (nl == NULL || (size_t)(nl - body) >= sizes[i])
			break;
		memcpy(fields[i], body, (size_t)(nl - body));
		fields[i][nl - body] = '\0';
		blen -= (size_t)(nl - body) + 1;
		body = nl + 1;
	}
	if (i < 3) {
		body = buf;
		blen = size;
	}
	rc = pay_wechat_verify(
	    fuzz_ring(), FUZZ_SERIAL, ts, nonce, sig, body, blen, FUZZ_NOW, 300, err, sizeof err);
	if (rc < PAY_OK || rc > PAY_EKEY || (rc != PAY_OK && err[0] == '\0'))
		abort();

	if (pay_wechat_envelope_parse(body, blen, &e, err, sizeof err) == PAY_OK) {
		if (e.id == NULL || e.event_type == NULL || e.algorithm == NULL ||
		    e.ciphertext == NULL || e.nonce == NULL || e.associated_data == NULL)
			abort();
		rc = pay_wechat_decrypt(fuzz_apiv3, &e, &plain, &plen, err, sizeof err);
		if (rc == PAY_OK) {
			if (plain == NULL || plain[plen] != '\0')
				abort();
			fuzz_txn(plain, plen);
			fuzz_classify(plain, plen, e.original_type);
			free(plain);
		} else if (plain != NULL || plen != 0 || err[0] == '\0') {
			abort();
		}
	} else if (e.id != NULL || e.ciphertext != NULL) {
		abort();
	}
	pay_wechat_envelope_free(&e);

	fuzz_txn(buf, size);
	fuzz_classify(buf, size, NULL);
	fuzz_classify(buf, size, "refund");
	return 0;
}
