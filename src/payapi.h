/*
 * payapi.h: the requests prepaidd sends to WeChat Pay API v3 and to the
 * Alipay OpenAPI gateway, and the checks of their answers, without I/O.
 *
 * Builders take data and return the exact bytes to put on the wire (a path,
 * a JSON body serialized once, a form, a header); signing is RSA PKCS#1
 * v1.5 over SHA-256 with the merchant's private key, deterministic, so the
 * unit tests compare bytes. Answers are believed only after their
 * signature verified: WeChat's Wechatpay-* headers over
 * "timestamp\nnonce\nbody\n" (payverify.c), Alipay's sign over the exact
 * text of the "<method>_response" value. Facts: reference/payments-outbound.md.
 *
 * Money crosses this interface in integer fen only; payapi_yuan() is the
 * one place that writes an Alipay yuan string. Strings returned are the
 * caller's to free. Error codes are payverify.h's PAY_E*.
 */
#ifndef PREPAIDD_PAYAPI_H
#define PREPAIDD_PAYAPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "payverify.h"

/* How the occupant pays: decides the provider call and what comes back. */
enum payapi_channel {
	PAYAPI_WX_NATIVE, /* code_url, shown as a QR code */
	PAYAPI_WX_JSAPI, /* prepay_id and the signed page parameters */
	PAYAPI_WX_H5, /* h5_url, a mobile browser outside WeChat */
	PAYAPI_ALI_PRECREATE, /* qr_code */
	PAYAPI_ALI_WAP /* a signed gateway URL the browser opens */
};

/* "native", "jsapi", "h5", "precreate", "wap" -> channel; -1 if none. */
int payapi_channel_parse(const char *s);
const char *payapi_channel_name(enum payapi_channel ch);
bool payapi_channel_is_wechat(enum payapi_channel ch);

/* A merchant's private key (PEM, PKCS#8 or PKCS#1), or NULL with err. */
EVP_PKEY *payapi_privkey_load(const char *path, char *err, size_t errlen);
/* base64(SHA256withRSA(msg)); NULL only if the key cannot sign. */
char *payapi_sign(EVP_PKEY *key, const void *msg, size_t len);
/* fen -> "12.34" (Alipay amounts); buf of at least 24 bytes. */
void payapi_yuan(int64_t fen, char *buf, size_t len);
/* Unix seconds -> Beijing time: "2026-12-07T12:00:00+08:00" (rfc3339) or
 * "2026-12-07 12:00:00" (Alipay timestamp). */
void payapi_cn_time(int64_t t, bool rfc3339, char *buf, size_t len);
/* The Beijing calendar day before t, "YYYY-MM-DD". */
void payapi_cn_yesterday(int64_t t, char *buf, size_t len);
/* An out_trade_no both providers accept: 6..32 of [0-9A-Za-z_-]. */
bool payapi_trade_no_ok(const char *s);

/* --- WeChat Pay v3 */

struct payapi_wx_order {
	const char *appid, *mchid, *description, *out_trade_no, *notify_url;
	const char *time_expire; /* RFC 3339, payapi_cn_time(.., true, ..) */
	int64_t total_fen;
	const char *openid; /* JSAPI: required */
	const char *client_ip; /* H5: required */
};

/* The prepay path for a WeChat channel, e.g. "/v3/pay/transactions/native". */
const char *payapi_wx_order_path(enum payapi_channel ch);
/* The prepay JSON body (fixed key order), or NULL with err when a field
 * the channel needs is missing or invalid. */
char *payapi_wx_order_body(
    enum payapi_channel ch, const struct payapi_wx_order *o, char *err, size_t errlen);
/* "/v3/pay/transactions/out-trade-no/{no}?mchid={mchid}" */
char *payapi_wx_query_path(const char *out_trade_no, const char *mchid);
/* "/v3/pay/transactions/out-trade-no/{no}/close" and {"mchid":"..."} */
char *payapi_wx_close_path(const char *out_trade_no);
char *payapi_wx_close_body(const char *mchid);
/* POST /v3/refund/domestic/refunds */
#define PAYAPI_WX_REFUND_PATH "/v3/refund/domestic/refunds"
char *payapi_wx_refund_body(const char *out_trade_no, const char *out_refund_no, int64_t refund_fen,
    int64_t total_fen, const char *reason, const char *notify_url);
/* "/v3/refund/domestic/refunds/{no}" */
char *payapi_wx_refund_query_path(const char *out_refund_no);
/* "/v3/bill/tradebill?bill_date=YYYY-MM-DD&bill_type=ALL" */
char *payapi_wx_bill_path(const char *date);
/* The signed message "METHOD\nPATH\nTS\nNONCE\nBODY\n". */
char *payapi_wx_message(const char *method, const char *path, int64_t ts, const char *nonce,
    const char *body, size_t len);
/* The Authorization header value: WECHATPAY2-SHA256-RSA2048 mchid="..",
 * nonce_str="..",timestamp="..",serial_no="..",signature="..". NULL if the
 * key cannot sign. */
char *payapi_wx_authorization(EVP_PKEY *key, const char *mchid, const char *serial,
    const char *method, const char *path, int64_t ts, const char *nonce, const char *body,
    size_t len);
/* The JSAPI page's parameters: {"appId","timeStamp","nonceStr","package",
 * "signType":"RSA","paySign"}, paySign over "appId\ntimeStamp\nnonceStr\n
 * package\n". New reference, NULL if the key cannot sign. */
json_t *payapi_wx_jsapi_params(
    EVP_PKEY *key, const char *appid, const char *prepay_id, int64_t ts, const char *nonce);
/* 32 characters of [0-9A-Za-z] from the OpenSSL random generator. */
void payapi_nonce(char out[33]);

/* --- Alipay (gateway.do, RSA2) */

struct payapi_ali_req {
	char *query; /* the common parameters and sign, URL-encoded (after '?') */
	char *body; /* "biz_content=..." form-encoded */
	char *signed_string; /* what was signed, for the tests */
};

/* The common parameters (app_id, method, format, charset, sign_type,
 * timestamp, version, and notify_url / return_url when given) with
 * biz_content, signed over the sorted "k=v&..." string. 0, or PAY_EKEY. */
int payapi_ali_request(EVP_PKEY *key, const char *app_id, const char *method,
    const char *biz_content, const char *timestamp, const char *notify_url, const char *return_url,
    struct payapi_ali_req *out);
void payapi_ali_req_free(struct payapi_ali_req *r);
/* A wap.pay URL: gateway "?" every parameter, biz_content included. */
char *payapi_ali_page_url(const char *gateway, const struct payapi_ali_req *r);

/* biz_content of each method (JSON, fixed key order). */
char *payapi_ali_biz_precreate(
    const char *out_trade_no, int64_t fen, const char *subject, const char *timeout_express);
char *payapi_ali_biz_wap(const char *out_trade_no, int64_t fen, const char *subject,
    const char *quit_url, const char *timeout_express);
char *payapi_ali_biz_trade(const char *out_trade_no); /* query and close */
char *payapi_ali_biz_refund(
    const char *out_trade_no, int64_t fen, const char *out_request_no, const char *reason);
char *payapi_ali_biz_bill(const char *date);

/* The exact text of the top-level member name's value (an object), as a
 * span of body; 0 or PAY_EFORMAT. */
int payapi_json_member_span(const char *body, size_t len, const char *name, size_t *off, size_t *n);
/* Verify an Alipay answer to method: "<method, dots as _>_response" and
 * "sign" over its exact text (once more with "\/" read as "/", as the
 * Java SDK does). On success *resp is the parsed response object (new
 * reference). An unsigned answer is PAY_ESIG; an error_response is
 * returned in *resp with PAY_OK only when it is signed. */
int payapi_ali_answer(EVP_PKEY *alipay_key, const char *method, const char *body, size_t len,
    json_t **resp, char *err, size_t errlen);

/* --- what a query found, either provider */

enum payapi_state {
	PAYAPI_UNKNOWN, /* anything else: look again later */
	PAYAPI_NOTPAY, /* exists, not paid */
	PAYAPI_PAID, /* SUCCESS, TRADE_SUCCESS, TRADE_FINISHED */
	PAYAPI_CLOSED, /* CLOSED, TRADE_CLOSED */
	PAYAPI_REFUND, /* WeChat: paid, a refund under way */
	PAYAPI_NOTEXIST /* ORDER_NOT_EXIST, ACQ.TRADE_NOT_EXIST */
};

struct payapi_trade {
	enum payapi_state state;
	char status[32]; /* the provider's word */
	char out_trade_no[65];
	char txn[65]; /* transaction_id / trade_no */
	char paid_at[41]; /* provider time, with its offset */
	int64_t fen; /* -1 if absent */
};

/* A WeChat Transaction object (query answer). */
int payapi_wx_trade_parse(
    const char *body, size_t len, struct payapi_trade *t, char *err, size_t errlen);
/* An alipay_trade_query_response object (from payapi_ali_answer). */
int payapi_ali_trade_parse(const json_t *resp, struct payapi_trade *t, char *err, size_t errlen);

/* --- daily bills */

struct payapi_bill_row {
	char txn[65]; /* transaction_id / trade_no */
	char otn[65];
	bool refund; /* a refund row (its amount positive) */
	int64_t fen;
};

struct payapi_bill {
	struct payapi_bill_row *rows;
	size_t n;
};

/* A WeChat Pay trade bill (bill_type ALL or SUCCESS): header row, data rows
 * of backtick-prefixed fields, then the summary. Columns by header name;
 * SUCCESS rows are payments (订单金额, else 应结订单金额), REFUND rows refunds
 * (退款金额). *b is the caller's to free; on failure it is empty. */
int payapi_wx_bill_parse(
    const char *csv, size_t len, struct payapi_bill *b, char *err, size_t errlen);
/* The detail CSV of an Alipay trade bill, already in UTF-8: '#' lines,
 * the header, data rows; 业务类型 交易 is a payment, 退款 a refund (its
 * negative amount made positive). */
int payapi_ali_bill_parse(
    const char *csv, size_t len, struct payapi_bill *b, char *err, size_t errlen);
void payapi_bill_free(struct payapi_bill *b);
/* [{"txn":..,"otn":..,"kind":"payment"|"refund","fen":N},...] */
char *payapi_bill_json(const struct payapi_bill *b);
/* The lower-case hex SHA-1 of buf (WeChat's hash_value). */
void payapi_sha1_hex(const void *buf, size_t len, char out[41]);
/* The one entry of a ZIP archive whose name does not contain '(' (Alipay:
 * the detail, not the "(汇总)" summary), stored or deflated; *out is the
 * caller's. 0, or PAY_EFORMAT with err. */
int payapi_unzip_detail(
    const void *zip, size_t len, char **out, size_t *outlen, char *err, size_t errlen);
/* GBK (GB18030) to UTF-8; NULL if the bytes are not GBK. */
char *payapi_gbk_to_utf8(const char *in, size_t len, size_t *outlen);

#endif
