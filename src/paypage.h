/*
 * paypage.h: the occupants' pay page, as pure functions (data in, HTML
 * bytes out) and the small pieces of request logic worth testing alone:
 * the language from Accept-Language, the kind of browser from User-Agent,
 * the token's shape, the amounts, the per-address rate limiter. No I/O
 * here; paysite.c serves the page on the HTTP listener and asks
 * PostgreSQL.
 *
 * Also the interface between the page and whatever creates the order at
 * the payment provider (struct paypage_provider): the page creates the
 * order in prepaid.orders, then hands it to the provider module, which
 * answers with where the occupant goes next.
 */
#ifndef PREPAIDD_PAYPAGE_H
#define PREPAIDD_PAYPAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

enum paypage_lang { PAYPAGE_ZH, PAYPAGE_EN };

/* Chinese or English, by the highest q of zh* and en* (Chinese when
 * neither is named, or on a tie). */
enum paypage_lang paypage_lang_pick(const char *accept_language);

/* Inside WeChat (MicroMessenger), another phone browser, or a desktop. */
enum paypage_client { PAYPAGE_IN_WECHAT, PAYPAGE_MOBILE, PAYPAGE_DESKTOP };
enum paypage_client paypage_client_of(const char *user_agent);

/* A token as prepaid.pay_link_token() makes them: 43 of [A-Za-z0-9_-]. */
#define PAYPAGE_TOKEN_LEN 43
bool paypage_token_ok(const char *s, size_t n);

/* "12.5", "12.50" or "12" yuan to fen; -1 if not a positive amount with at
 * most two decimals and at most 1,000,000 yuan. */
int64_t paypage_yuan_parse(const char *s);
/* The amount list of [paypage] amounts ("20 50 100"): the count, or -1
 * with why set. */
int paypage_amounts_parse(const char *list, int64_t *fen, int max, char *why, size_t whylen);

/* HTML-escape s (& < > " ') onto b. */
void paypage_html(struct sbuf *b, const char *s);

/* What a meter's page shows. */
#define PAYPAGE_DAYS_MAX 31
struct paypage_view {
	enum paypage_lang lang;
	enum paypage_client client;
	const char *meter_id;
	int64_t balance_fen;
	const char *relay; /* closed, open, armed, or NULL (unknown) */
	bool restoring; /* a payment re-armed it; power not restored yet */
	int ndays; /* use_wh[0] is the oldest day */
	int64_t use_wh[PAYPAGE_DAYS_MAX];
	const int64_t *amounts_fen;
	int namounts;
	const char *pay_action; /* the form's action (a path) */
	bool wechat, alipay; /* which providers are offered */
};
void paypage_render_meter(const struct paypage_view *v, struct sbuf *out);

/* The result of an order, as the result page shows it. */
struct paypage_result {
	enum paypage_lang lang;
	const char *meter_id;
	const char *out_trade_no;
	int64_t amount_fen;
	const char *state; /* pending, paid, expired, disputed */
	int64_t balance_fen;
	const char *relay;
	bool restoring;
	const char *back; /* the meter's page (a path) */
};
void paypage_render_result(const struct paypage_result *r, struct sbuf *out);

/* Where a desktop occupant scans: the WeChat Native code_url as a QR code
 * (inline SVG, libqrencode) and as a link. */
void paypage_render_code(
    enum paypage_lang lang, const char *code_url, const char *result, struct sbuf *out);

/*
 * Inside WeChat: a page whose one script (allowed by nonce, a fresh one
 * per answer) calls WeixinJSBridge getBrandWCPayRequest with params (the
 * provider's JSON object, written so it cannot close the script), then
 * goes to the result page whatever the outcome (an "ok" proves nothing:
 * the result page asks the database).
 */
void paypage_render_jsapi(enum paypage_lang lang, const char *params, const char *result,
    const char *nonce, struct sbuf *out);

/* The page for a wrong, revoked or malformed link, the same bytes for
 * each: it says nothing about any meter. */
void paypage_render_nothing(enum paypage_lang lang, struct sbuf *out);

/* A short page with one message: PAYPAGE_MSG_*. back may be NULL. */
enum paypage_msg {
	PAYPAGE_MSG_BUSY, /* 503 */
	PAYPAGE_MSG_SLOW_DOWN, /* 429 */
	PAYPAGE_MSG_BAD_AMOUNT, /* 400 */
	PAYPAGE_MSG_UNAVAILABLE, /* online payment not set up */
	PAYPAGE_MSG_TOO_MANY_ORDERS,
};
void paypage_render_message(
    enum paypage_lang lang, enum paypage_msg msg, const char *back, struct sbuf *out);

/*
 * Per-address token buckets: rate_per_minute requests a minute, bursts of
 * burst. A fixed table (no allocation per client); when the probe window
 * is full the least recently seen entry is replaced, which only ever
 * forgives a client.
 */
#define PAYPAGE_LIMIT_SLOTS 4096
struct paypage_limiter_slot {
	char addr[48];
	int64_t units; /* 60,000,000 units = one request */
	int64_t last_us;
};
struct paypage_limiter {
	int rate_per_minute;
	int burst;
	struct paypage_limiter_slot slots[PAYPAGE_LIMIT_SLOTS];
};
void paypage_limiter_init(struct paypage_limiter *l, int rate_per_minute, int burst);
/* May addr make a request at now_us? Takes one token if so. */
bool paypage_limiter_take(struct paypage_limiter *l, const char *addr, int64_t now_us);

/*
 * The client's address for the limiter: the peer, unless the peer is one
 * of trusted (space-separated addresses: the reverse proxy), in which case
 * the last address of X-Forwarded-For (the one that proxy appended). Fills
 * out (at most outlen bytes).
 */
void paypage_client_addr(
    const char *peer, const char *xff, const char *trusted, char *out, size_t outlen);

/* ---------------------------------------------------- the provider side */

/* How the occupant pays: chosen from the browser and the button. */
enum paypage_channel {
	PAYPAGE_ALIPAY_WAP, /* any browser but WeChat's: redirect to Alipay */
	PAYPAGE_WECHAT_NATIVE, /* desktop: a code_url to scan */
	PAYPAGE_WECHAT_JSAPI, /* inside WeChat: openid step, then JSAPI */
	PAYPAGE_WECHAT_H5, /* phone browser outside WeChat: h5_url */
};
const char *paypage_channel_name(enum paypage_channel c);

/* An order created in prepaid.orders, to be created at the provider. */
struct paypage_order {
	const char *out_trade_no;
	const char *meter_id;
	int64_t amount_fen;
	enum paypage_channel channel;
	const char *client_ip; /* WeChat H5 scene_info.payer_client_ip */
	const char *return_url; /* absolute: the order's result page */
	/*
	 * JSAPI, the openid step: the first create() has oauth_code NULL and
	 * answers PAYPAGE_REDIRECT to WeChat's authorize URL (snsapi_base) with
	 * redirect_uri = oauth_return and state = out_trade_no. WeChat sends
	 * the occupant back there with ?code=&state=; the page checks the order
	 * is its token's and still pending and calls create() again with
	 * oauth_code set, which the provider exchanges for the openid (server
	 * side) before the JSAPI prepay, answering PAYPAGE_JSAPI.
	 */
	const char *oauth_return; /* absolute: <public_url><path>/<token>/wechat */
	const char *oauth_code; /* the code WeChat returned, or NULL */
};

enum paypage_handoff_kind {
	PAYPAGE_REDIRECT, /* send the browser to url (Alipay WAP, WeChat H5 or OAuth) */
	PAYPAGE_CODE_URL, /* show url to scan (WeChat Native) */
	PAYPAGE_UNAVAILABLE, /* this channel is not set up */
	PAYPAGE_FAILED, /* the provider refused or did not answer */
	/* url is the JSON object of getBrandWCPayRequest's parameters (appId,
	 * timeStamp, nonceStr, package, signType, paySign) */
	PAYPAGE_JSAPI,
};
struct paypage_handoff {
	enum paypage_handoff_kind kind;
	const char *url;
};

/* Called once per create(), now or later; h and its strings are only
 * valid during the call. */
typedef void (*paypage_handoff_cb)(void *ctx, const struct paypage_handoff *h);

struct paypage_provider {
	/* Create o at the provider (idempotent on out_trade_no) without
	 * blocking the loop, then call done(ctx, ...) exactly once. o and its
	 * strings are valid only during this call: copy what a later answer
	 * needs. */
	void (*create)(
	    void *arg, const struct paypage_order *o, paypage_handoff_cb done, void *ctx);
	void *arg;
};

/*
 * The stand-in when no provider is configured (payout_paypage_create()
 * falls back to it, for tests and demos): with stub_url set,
 * every channel is a redirect to stub_url?out_trade_no=..&total_amount=
 * <yuan>&meter=..&channel=..&return_url=..[&oauth_code=..] (a test or demo
 * cashier that pays and sends the browser back); without it,
 * PAYPAGE_UNAVAILABLE.
 * Builds the URL onto out; pure.
 */
enum paypage_handoff_kind paypage_stub_handoff(
    const char *stub_url, const struct paypage_order *o, struct sbuf *out);

#endif
