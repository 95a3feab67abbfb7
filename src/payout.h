/*
 * payout.h: prepaidd's calls to the payment providers: creating orders at
 * WeChat Pay (Native, JSAPI, H5) and Alipay (precreate, WAP), querying the
 * orders still pending on a ladder of delays, closing those that expire
 * unpaid, and sending the refunds finance staff ask for in
 * prepaid.refunds.
 *
 * Every call goes through the libcurl multi loop (httpc.c), never blocks,
 * has [payments] api_timeout_ms, and is signed with the merchant's key
 * (payapi.c); an answer is believed only after its signature verified. A
 * payment a query finds is recorded by prepaid_internal.record_payment under the
 * same unique key a notification uses, so whichever comes second is a
 * duplicate. Calls are idempotent at the providers: the same out_trade_no
 * with the same parameters, the same refund number.
 */
#ifndef PREPAIDD_PAYOUT_H
#define PREPAIDD_PAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <jansson.h>

#include "conf.h"
#include "payapi.h"
#include "paypage.h"

struct payout;

/* Load and check the merchant keys the configuration names (for -n and
 * the start): 0, or -1 with "file:line: payments.key: why" in err. */
int payout_check(const struct conf *conf, char *err, size_t errlen);

/* NULL with err set if the keys cannot be loaded. Returns a valid object
 * that does nothing when no merchant key is configured. */
struct payout *payout_new(
    struct event_base *base, const struct conf *conf, char *err, size_t errlen);
/* SIGHUP: new keys (the old ones stay if the new cannot be loaded), URLs,
 * ladder and timeouts. conf must outlive the payout. */
void payout_reconfigure(struct payout *p, const struct conf *conf);
/* Calls in flight are abandoned (the claims expire after query_retry_s). */
void payout_free(struct payout *p);

/*
 * Creating an order at its provider, for the pay page: the order exists
 * already (prepaid.create_order gave its out_trade_no); this asks the
 * provider for the means to pay it. Calling it again for the same order
 * with the same fields is safe: the provider answers the same.
 */
struct payout_order {
	const char *out_trade_no;
	int64_t amount_fen;
	enum payapi_channel channel;
	const char *description; /* shown by the provider; NULL: the order number */
	int64_t expires_at; /* Unix seconds; 0: none sent */
	const char *openid; /* JSAPI */
	const char *client_ip; /* H5 */
	const char *return_url; /* WAP: where Alipay sends the browser back */
};

struct payout_order_result {
	const char *error; /* NULL on success: one line, for a log or a page */
	const char *code_url; /* WeChat Native */
	const char *prepay_id; /* WeChat JSAPI */
	json_t *jsapi_params; /* WeChat JSAPI: for WeixinJSBridge (borrowed) */
	const char *h5_url; /* WeChat H5 */
	const char *qr_code; /* Alipay precreate */
	const char *pay_url; /* Alipay WAP: open in the browser */
};

typedef void (*payout_order_cb)(void *arg, const struct payout_order_result *res);

/* The callback runs exactly once, from the event loop, never from inside
 * this call; the result is valid during the callback only. */
void payout_create_order(
    struct payout *p, const struct payout_order *o, payout_order_cb cb, void *arg);

/*
 * The pay page's provider (struct paypage_provider's create, with arg the
 * struct payout): paysite_set_provider(s, &(struct paypage_provider){
 * payout_paypage_create, p }). Per channel: Alipay WAP -> a redirect to
 * the signed alipay.trade.wap.pay URL (return_url: the result page);
 * WeChat Native -> the code_url to scan; WeChat H5 (payer_client_ip: the
 * client's address) -> a redirect to h5_url&redirect_url=<the result
 * page>; WeChat JSAPI without a code -> a redirect to WeChat's authorize
 * URL (snsapi_base, redirect_uri oauth_return, state out_trade_no), with
 * one -> the code is exchanged for the openid ([payments]
 * wechat_app_secret_file) and the JSAPI order made: the signed
 * getBrandWCPayRequest parameters. A provider that refuses or does not
 * answer: PAYPAGE_FAILED; a channel not configured: PAYPAGE_UNAVAILABLE;
 * no provider configured at all: paypage_stub_handoff() ([paypage]
 * stub_handoff_url, for tests and demos). Never blocks; done runs exactly
 * once (now or from the loop), unless payout_free() comes first: free the
 * payout before the paysite.
 */
void payout_paypage_create(
    void *arg, const struct paypage_order *o, paypage_handoff_cb done, void *ctx);

#endif
