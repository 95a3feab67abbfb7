/*
 * payverify.h: verifying and decoding payment notifications, without I/O.
 *
 * Pure functions over bytes: the daemon's HTTP handlers (payments.c) call
 * them, the unit tests and the fuzzers call exactly the same code. WeChat Pay
 * API v3: SHA256-RSA over "timestamp\nnonce\nbody\n" with a key chosen by
 * Wechatpay-Serial, then AES-256-GCM decryption of the resource. Alipay: the
 * form is decoded once, sign and sign_type dropped, empty values skipped,
 * keys sorted, RSA2 verified with the Alipay public key. Money is parsed as
 * exact decimal into integer fen. A genuine notification is then classified
 * (a payment to record, a refund, close or not-paid notice, or a refusal)
 * against our merchant identity. The other functions return 0 on success or a
 * PAY_E* code, with a one-line reason in err that never holds a secret.
 */
#ifndef PREPAID_PAYVERIFY_H
#define PREPAID_PAYVERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

enum {
	PAY_OK = 0,
	PAY_EFORMAT = 1, /* malformed input (form, JSON, base64, header) */
	PAY_ESERIAL = 2, /* Wechatpay-Serial names no configured key */
	PAY_ESIG = 3, /* signature does not verify */
	PAY_ESTALE = 4, /* timestamp too far from now */
	PAY_EDECRYPT = 5, /* AES-GCM tag mismatch, bad nonce, bad key */
	PAY_EKEY = 6, /* a key file could not be read or used */
};

/* --- keys */

/* Public keys by id: WeChat platform certificate serials and PUB_KEY_ID_...
 * ids. */
struct pay_keyring;

struct pay_keyring *pay_keyring_new(void);
/* Add a key from a PEM file: "PUBLIC KEY" (then id is required) or an X.509
 * "CERTIFICATE" (id NULL: the certificate's serial number, upper-case hex,
 * no leading zero stripping beyond what the serial has). */
int pay_keyring_add_file(
    struct pay_keyring *kr, const char *id, const char *path, char *err, size_t errlen);
/* The key of id, or NULL. Id comparison is case-insensitive. */
EVP_PKEY *pay_keyring_find(const struct pay_keyring *kr, const char *id);
size_t pay_keyring_count(const struct pay_keyring *kr);
void pay_keyring_free(struct pay_keyring *kr);

/* A PEM public key or certificate file as an EVP_PKEY (caller frees). */
EVP_PKEY *pay_pubkey_load(const char *path, char *err, size_t errlen);
/* A 32-byte secret (the WeChat APIv3 key) from a file; one trailing newline
 * is allowed. */
int pay_secret_load(const char *path, unsigned char key[32], char *err, size_t errlen);

/* --- money */

/* "12", "12.3", "12.30", "0.01" (yuan) -> fen. No sign, no spaces, no
 * exponent, at most 2 decimals, at least one digit before the point, at most
 * 12 integer digits. */
int pay_money_parse(const char *s, size_t len, int64_t *fen);

/* --- Alipay */

struct pay_kv {
	char *key;
	char *val;
};

struct pay_form {
	struct pay_kv *kv;
	size_t n;
};

/* application/x-www-form-urlencoded: '+' is a space, %XX a byte. Refused:
 * a bad escape, a decoded NUL, an empty key, a repeated key, more than 200
 * pairs, a body over 64 KiB. Empty pairs ("a=1&&b=2", a trailing '&') are
 * skipped; "flag" without '=' is flag with an empty value. On failure *f is
 * left empty. */
int pay_form_parse(const char *body, size_t len, struct pay_form *f, char *err, size_t errlen);
const char *pay_form_get(const struct pay_form *f, const char *key);
void pay_form_free(struct pay_form *f);
/* The signed content: sign and sign_type removed, empty values skipped, keys
 * in byte order, "k=v" joined by '&'. Caller frees. */
char *pay_alipay_signing_string(const struct pay_form *f);
/* sign_type must be RSA2; sign is base64 of SHA256-RSA (PKCS#1 v1.5).
 * A missing sign_type, or any other (legacy SHA1 "RSA" included, so that a
 * sender cannot choose the weaker hash), is PAY_EFORMAT; no key, PAY_EKEY. */
int pay_alipay_verify(const struct pay_form *f, EVP_PKEY *key, char *err, size_t errlen);

/* --- WeChat Pay API v3 */

/* All four headers must be present and non-empty, without control bytes
 * (a line feed in the nonce would let nonce and body be re-split); the
 * timestamp is decimal digits only; |now - timestamp| must be below max_skew
 * seconds; the key is found by serial; the body is at most 64 KiB and need
 * not be NUL-terminated. */
int pay_wechat_verify(const struct pay_keyring *kr, const char *serial, const char *timestamp,
    const char *nonce, const char *signature, const char *body, size_t len, int64_t now,
    int64_t max_skew, char *err, size_t errlen);

struct pay_wechat_envelope {
	char *id; /* notification id */
	char *event_type; /* TRANSACTION.SUCCESS, REFUND.SUCCESS, ... */
	char *resource_type; /* encrypt-resource */
	char *original_type; /* transaction, refund */
	char *algorithm; /* AEAD_AES_256_GCM */
	char *ciphertext; /* base64 */
	char *associated_data; /* may be "" */
	char *nonce; /* 12 bytes */
};

/* Required strings: id, event_type, resource.{algorithm,ciphertext,nonce};
 * resource_type, original_type and associated_data are optional (absent
 * associated_data reads as ""), but a present one must be a string. A
 * repeated JSON key is refused. On failure *e is left empty. */
int pay_wechat_envelope_parse(
    const char *body, size_t len, struct pay_wechat_envelope *e, char *err, size_t errlen);
void pay_wechat_envelope_free(struct pay_wechat_envelope *e);
/* Decrypt e's resource with the APIv3 key; *plain is NUL-terminated, caller
 * frees (NULL on failure: unauthenticated plaintext is never handed out).
 * Not base64, 16 bytes or fewer, or an algorithm other than
 * AEAD_AES_256_GCM: PAY_EFORMAT; a nonce not of 12 bytes or a tag mismatch
 * (wrong key, altered ciphertext, wrong associated_data): PAY_EDECRYPT. */
int pay_wechat_decrypt(const unsigned char key[32], const struct pay_wechat_envelope *e,
    char **plain, size_t *plen, char *err, size_t errlen);

struct pay_wechat_txn {
	char *appid, *mchid, *out_trade_no, *transaction_id, *trade_state, *currency, *success_time;
	int64_t total; /* fen; -1 if absent */
	int64_t payer_total; /* fen; -1 if absent */
};

/* Required strings: out_trade_no, transaction_id, trade_state; appid, mchid,
 * success_time and amount.currency are strings when present; amount.total
 * and amount.payer_total are non-negative JSON integers when present. */
int pay_wechat_txn_parse(
    const char *plain, size_t len, struct pay_wechat_txn *t, char *err, size_t errlen);
void pay_wechat_txn_free(struct pay_wechat_txn *t);

/* --- what a verified notification asks for */

/* The longest id stored; providers use 32 (WeChat) and 64 (Alipay). */
#define PAY_ID_MAX 63

enum pay_action {
	PAY_RECORD, /* a payment: prepaid.record_payment() */
	PAY_NOTICE, /* a refund, a close, a payment not made: recorded, never credited */
	PAY_REFUSE /* answered http_status with reason; nothing recorded as a payment */
};

/*
 * The classification of one genuine notification (its signature verified,
 * a WeChat resource decrypted) against our merchant identity. Every string
 * is owned (pay_class_free); NULL where the notification had none.
 */
struct pay_class {
	enum pay_action action;
	int http_status; /* PAY_REFUSE: 400 or 403 */
	bool audited; /* PAY_REFUSE: the ids below are the provider's, log and audit them */
	char reason[256]; /* PAY_REFUSE */
	char *kind; /* PAY_NOTICE: "refund", "closed", "not_paid", or WeChat's original_type */
	char *status; /* trade_state, trade_status, or for a WeChat notice its event_type */
	char *notify_id; /* the notification's id */
	char *paid_at; /* PAY_RECORD: when paid, as a PostgreSQL timestamptz text */
	char out_trade_no[PAY_ID_MAX + 1]; /* "" when absent or not a storable id */
	char txn[PAY_ID_MAX + 1]; /* transaction_id / trade_no, likewise */
	int64_t fen; /* the amount (a refund's for a refund notice); -1 if none */
};

/*
 * A decrypted WeChat Pay resource of envelope e. mchid is ours; appids our
 * space-separated app ids. A transaction that is not SUCCESS is a
 * "not_paid" notice; a resource of another original_type (a refund) is a
 * notice of that kind unless its mchid is not ours.
 */
void pay_wechat_classify(const struct pay_wechat_envelope *e, const char *plain, size_t plen,
    const char *mchid, const char *appids, struct pay_class *c);

/*
 * A verified Alipay form. app_id is ours; seller_id, when not NULL, too.
 * refund_fee, gmt_refund or out_biz_no make a "refund" notice;
 * TRADE_CLOSED a "closed" one; any status but TRADE_SUCCESS or
 * TRADE_FINISHED a "not_paid" one.
 */
void pay_alipay_classify(
    const struct pay_form *f, const char *app_id, const char *seller_id, struct pay_class *c);
void pay_class_free(struct pay_class *c);

/* An id fit to store and log: printable ASCII, 1..PAY_ID_MAX characters. */
bool pay_id_ok(const char *s);
/* A timestamp PostgreSQL may parse: digits, -:T+. Z and a space, 10..40. */
bool pay_time_ok(const char *s);

#endif
