/*
 * signer.h: the request signatures of the SMS gateways that cannot be
 * described by a plain template — Aliyun's RPC signature V1 (HMAC-SHA1 over
 * the sorted, percent-encoded parameters) and Tencent Cloud's
 * TC3-HMAC-SHA256 (a derived key over a canonical request). Pure functions:
 * no I/O, no clock and no randomness; the time stamp and the nonce are
 * parameters, so a fixed input always gives the same signature and the
 * known-answer tests can hold them to the providers' published examples.
 * Every returned string is allocated with xmalloc and belongs to the caller,
 * who frees it; none of them contains a secret, and key material used on
 * the way is wiped before return. On bad input a function returns NULL or
 * false and sets *cause (unless cause is NULL) to a one-line reason that
 * never contains a secret, allocated like the results.
 */
#ifndef PREPAIDD_SIGNER_H
#define PREPAIDD_SIGNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* One request parameter; neither pointer may be NULL. */
struct signer_param {
	const char *name;
	const char *value;
};

/*
 * RFC 3986 percent-encoding of the bytes of s the way Aliyun wants it:
 * A-Z a-z 0-9 - _ . ~ stay, every other byte becomes %XY (upper-case hex),
 * so a space is %20 (never +), * is %2A and UTF-8 is encoded byte by byte.
 */
char *signer_percent_encode(const char *s);

/*
 * The CanonicalizedQueryString: the parameters sorted by name in byte order
 * (the caller's array is not reordered), each as encode(name)=encode(value),
 * joined with &. NULL if a name is empty or appears twice.
 */
char *signer_aliyun_canonical(const struct signer_param *params, size_t n, char **cause);

/* METHOD & %2F & encode(canonical). */
char *signer_aliyun_string_to_sign(const char *method, const char *canonical);

/* Base64(HMAC-SHA1(key = secret + "&", string_to_sign)); NULL only if the
 * crypto library fails. */
char *signer_aliyun_signature(const char *secret, const char *string_to_sign);

/* The common parameters of one Aliyun RPC call. */
struct signer_aliyun_req {
	const char *access_key_id;
	const char *access_key_secret;
	const char *method; /* NULL: "POST" (the body is the form) */
	const char *action; /* "SendSms" */
	const char *version; /* "2017-05-25" */
	const char *format; /* NULL: "JSON" */
	const char *region_id; /* NULL: no RegionId parameter */
	const char *nonce; /* SignatureNonce, unique per request (a UUID) */
	int64_t timestamp; /* Unix seconds, sent as YYYY-MM-DDThh:mm:ssZ */
};

/*
 * The complete signed parameter string: the business parameters plus
 * Action, Version, Format, AccessKeyId, SignatureMethod=HMAC-SHA1,
 * SignatureVersion=1.0, SignatureNonce, Timestamp and RegionId (if given),
 * canonicalized, then "&Signature=" and the encoded signature. It is the
 * body of an application/x-www-form-urlencoded POST, or the query string of
 * a GET. NULL if a required field is missing, a business parameter repeats
 * a common one or "Signature", or the time stamp is out of range.
 */
char *signer_aliyun_form(
    const struct signer_aliyun_req *req, const struct signer_param *biz, size_t nbiz, char **cause);

/* One Tencent Cloud API 3.0 call, signed with TC3-HMAC-SHA256. */
struct signer_tc3_req {
	const char *secret_id;
	const char *secret_key;
	const char *service; /* "sms" */
	const char *host; /* "sms.tencentcloudapi.com" */
	const char *action; /* "SendSms" */
	const char *version; /* "2021-01-11" */
	const char *region; /* "ap-guangzhou"; NULL: no X-TC-Region */
	int64_t timestamp; /* Unix seconds; Date is its UTC day */
	const char *content_type; /* NULL: "application/json; charset=utf-8" */
	const char *payload; /* the exact body bytes that will be sent */
	size_t payload_len;
	bool sign_action; /* also sign x-tc-action (newer documents) */
};

#define SIGNER_TC3_NHEADERS 7

/* The result; all strings are owned by it, see signer_tc3_free. */
struct signer_tc3 {
	char *canonical_request;
	char *string_to_sign;
	char *authorization; /* the value of the Authorization header */
	/* "Name: value" lines ready for curl_slist_append: Authorization,
	 * Content-Type, Host, X-TC-Action, X-TC-Version, X-TC-Timestamp and
	 * X-TC-Region; NULL-terminated (X-TC-Region may be absent). */
	char *headers[SIGNER_TC3_NHEADERS + 1];
	char date[11]; /* YYYY-MM-DD */
};

/*
 * Sign req into *out. False (and *out empty) if a field is missing, a header
 * value holds a control character, or the time stamp is out of range.
 */
bool signer_tc3_sign(const struct signer_tc3_req *req, struct signer_tc3 *out, char **cause);
void signer_tc3_free(struct signer_tc3 *out);

#endif
