/*
 * check_payapi.c: tests of payapi.c, the outbound payment requests and the
 * checks of their answers. Every signature here is a known answer made
 * outside this code base with the openssl command line over the fixed test
 * key tests/data/pay/rsa_private.pem (RSA PKCS#1 v1.5 is deterministic):
 *   printf 'MESSAGE' | openssl dgst -sha256 -sign rsa_private.pem | base64 -w0
 * with MESSAGE the exact bytes written next to each vector, so a builder
 * and a verifier sharing one mistake cannot pass together.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "common.h"
#include "payapi.h"
#include "payverify.h"

#define DATA(name) TOP_SRCDIR "/tests/data/pay/" name

#define TS 1700000000
#define NONCE "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
#define OTN "PP20261207000000abcdef0123"

static EVP_PKEY *priv, *pub;

/* "GET\n/v3/pay/transactions/out-trade-no/" OTN "?mchid=1900000001\n1700000000\n" NONCE "\n\n" */
#define SIG_QUERY                                                                                  \
	"KCUau8vRTJMq6kRRy3WaR288thUVIVa4cOlh2hcXmqqPrgbnigqyl3eJLVG9tczMIUVcxdka+uYrOnS54Zw+"     \
	"ctVFydPsZ"                                                                                \
	"KycoA2nkQ161FfpuE9mCQ2605lbjtEvqBDQCI1NAQ6qbJQrQenrH3n0ABLhxwOQRcv/"                      \
	"fy5Eg7XvOQwV3C6VHOj12QOnb"                                                                \
	"whJgpYl/"                                                                                 \
	"3ufmXxU61IskwD78hbGgoHQteq5fC00ShYHgXHRRxwAg4y3EHXwgi7sfk1V33lfoQhtFg5H1v0ETxE2pmhDM"     \
	"lzEewfnhT9d8UGLJZpwRnlvvHx6qjzWeAv3dcbFdtHIqWRej4CteGqciMfNNHJ0yQ=="

#define NATIVE_BODY                                                                                \
	"{\"appid\":\"wxd678efh567hg6787\",\"mchid\":\"1900000001\",\"description\":\"电费 "     \
	"M0001\",\"out_trade_no\":\"" OTN "\",\"time_expire\":\"2026-12-07T12:30:00+08:00\","      \
	"\"notify_url\":\"https://pay.example.com/pay/wechat\",\"amount\":{\"total\":5000,"        \
	"\"currency\":\"CNY\"}}"
/* "POST\n/v3/pay/transactions/native\n1700000000\n" NONCE "\n" NATIVE_BODY "\n" */
#define SIG_NATIVE                                                                                 \
	"atZmh3tyr1vlJFS+C8jDL9BGkoJel2JhZbdqrHrYE++"                                              \
	"lGSoDUS0VxXZf5h7rOK6yvZVD2WyCBvR4sigRkuHfKT5jnaB1q"                                       \
	"ZvJKMSAEs0fWhhxtJ6g4DzVuzH3sFxErE5V+vpMrx5Up+v9OLKgeOCRQgF3kSmr+"                         \
	"HIFGK0HMJea2FYp8js42oKazzBIx"                                                             \
	"UrRhWi673Met8wkV2HzVwHkyTqAN3bWVSNVdlq43wEISH02p7MEzj4i1sSx+"                             \
	"zznsnzBpK0CB2mPKDhDyo7nLDoYrtw3r"                                                         \
	"kCX15YPfqG7NZK37pVbrdA/+tFBmwLa83urv2AAQWhxva0PHi5Hy7HQdxPpFKtuBg=="
/* "wxd678efh567hg6787\n1700000000\n" NONCE "\nprepay_id=wx201410272009395522657a690389285100\n" */
#define SIG_JSAPI                                                                                  \
	"h/8EmBEzV13ig+E+KKLHvmSZ5fG5lJfbO1iNgYCyMJLe4uk1lfUXtKsn2Bz8/"                            \
	"Py0UE7Ggmh2tyBpuIVQUz3ceDlX6k0IV"                                                         \
	"f0iWNhQYB+"                                                                               \
	"nd0f8KBDPOXs8PJht9PoqY5eNr8nq8y1T7in5h2NBhQexJaX30Sp9AklleFcrJ7YFdEQ1dRZ3V8FmPeusx"       \
	"dAcRfl8ELOvA3b1p+hqATKkRbOgrkJuuqyUWTBYwjX8i0h9Ft3apZVKBIVz64NtaD0erTOXaI8+"              \
	"CtyAFtVCsgn7iT5UE"                                                                        \
	"2zEMad+F1bx7jmgJrifFWAgfDcQ97YR9JYVtkgD96nBfFm7j9QHMK0EsRbEQ1bZfQ=="
#define ALI_SIGNED                                                                                  \
	"app_id=2021000000000001&biz_content={\"out_trade_no\":\"" OTN "\",\"total_amount\":"       \
	"\"50.00\",\"subject\":\"电费 M0001\",\"timeout_express\":\"30m\"}&charset=utf-8&format=" \
	"JSON&method=alipay.trade.precreate&notify_url=https://pay.example.com/pay/"                \
	"alipay&sign_type="                                                                         \
	"RSA2&timestamp=2026-12-07 12:00:00&version=1.0"
/* ALI_SIGNED */
#define SIG_ALI                                                                                    \
	"oIXL+tOUx+"                                                                               \
	"06bcjM3XlnmoX1OQbK4VaiEshOBHwajXI7oS6rEAHpsSG0sHJqy8YAUAVDdQNJkER6KAEDaPjRSmTIQ9A5z"      \
	"FqtxaEZvsVeGgHKXZYkpc1EZ0QbMqPGg2LWtjERmftrJRx1n2CDVMBiv0mNMrLdeRdEX9U2mfV9mzEit+"        \
	"nNoh1YgOE3E"                                                                              \
	"ibo5uU+O6wWHjYviG+oB49x3C2HuX5cxNC3N0E9gGpPfkyI3j8ykksPKC7tZ/"                            \
	"9Otyv2jHkjCmC9Kd1f3JwEpfkbs5uYT"                                                          \
	"6UAK8IY/J0uHb5gcP5Byv49w2vJPMEvaarn8S4bc4Vdm/7jTwQUmeNuSbLmN9Lhzw=="
#define ALI_INNER(note)                                                                            \
	"{\"code\":\"10000\",\"msg\":\"Success\",\"trade_no\":\"2026120722001400000000000001\","   \
	"\"out_trade_no\":\"" OTN "\",\"buyer_logon_id\":\"159****5620\",\"trade_status\":"        \
	"\"TRADE_SUCCESS\",\"total_amount\":\"50.00\",\"send_pay_date\":\"2026-12-07 12:01:02\","  \
	"\"note\":\"" note "\"}"
/* ALI_INNER("a\\/b"), as the bytes came */
#define SIG_ALI_ANSWER                                                                             \
	"S3tyO5cTymtTzGjPInodaovkMc7CzXegrxdxBfg3l8RPdVeKmQIKaCHsLWCDc3ZagwiUD7vDBirk6PpgMiAciOYd" \
	"sfoRt"                                                                                    \
	"NDGYSwctPQC3rLFDWzjGs9+5tU27lJyL5UMAEfUuP7+"                                              \
	"Vu3p3I8cnlplSIikH2E7H8HC2SjwjKNcU7JbvIZDCRy3WnzTS"                                        \
	"/HCgRFBwmmlzH25asp7VCAJ3qkdJ4WcyMg4hmUWL0I9A8C5FgUPaQjr8tLXniKz8woMdpPhTN1l4QsF4R5ZBWmxt" \
	"sWw5"                                                                                     \
	"DR2RKkk0vyKFKRGEzQTZj9cgTs96O48gZZTjunkqNShVhG316YtjLa2R4SyBrGffA=="
/* ALI_INNER("a/b"): what the Java SDK's fallback verifies */
#define SIG_ALI_ANSWER_UNESCAPED                                                                   \
	"UhPZLa30MmjCCc1hrqah+SewMIaDXxGUDYMCSdCLsV9CZ+9QE09D8FT+"                                 \
	"JlXFKyllU41870VEWcICIwjZBMXa8uWzcXk2h"                                                    \
	"RTMikK7ixzOUKZaIvajKAxcon9tsD5uPG0USthVhPZ+7Wy5zkYe1zFAEanHFHrISjFVtH/BHHH5XHSFHJ2sG9/"   \
	"kI8R43"                                                                                   \
	"pFMfIeDmB2sG+z9kQ/zgmCfD/8fer9uFUPkJq256BbZ/"                                             \
	"Bh3VKM2ta3ssFT1DUeC9wNhRpDb3798ifx0lSiyezPcsfs9t"                                         \
	"D8LyO3Zf4mbqJ5XYiSdb+p4HFPC7VAbehYYq5VgDh/FuVL8oiPA3KrMNZD9auXwlg=="

START_TEST(wechat_query_authorization_known_answer)
{
	char *path = payapi_wx_query_path(OTN, "1900000001");
	char *auth;

	ck_assert_str_eq(path, "/v3/pay/transactions/out-trade-no/" OTN "?mchid=1900000001");
	auth = payapi_wx_authorization(
	    priv, "1900000001", "ABCDEF0123", "GET", path, TS, NONCE, NULL, 0);
	ck_assert_str_eq(auth,
	    "WECHATPAY2-SHA256-RSA2048 mchid=\"1900000001\",nonce_str=\"" NONCE
	    "\",timestamp=\"1700000000\",serial_no=\"ABCDEF0123\",signature=\"" SIG_QUERY "\"");
	free(auth);
	free(path);
}
END_TEST

START_TEST(wechat_native_order_exact_body_and_signature)
{
	struct payapi_wx_order o = {.appid = "wxd678efh567hg6787",
	    .mchid = "1900000001",
	    .description = "电费 M0001",
	    .out_trade_no = OTN,
	    .notify_url = "https://pay.example.com/pay/wechat",
	    .time_expire = "2026-12-07T12:30:00+08:00",
	    .total_fen = 5000};
	char err[128], *body, *auth, *want;

	body = payapi_wx_order_body(PAYAPI_WX_NATIVE, &o, err, sizeof err);
	ck_assert_ptr_nonnull(body);
	ck_assert_str_eq(body, NATIVE_BODY);
	ck_assert_str_eq(payapi_wx_order_path(PAYAPI_WX_NATIVE), "/v3/pay/transactions/native");
	auth = payapi_wx_authorization(priv, "1900000001", "S1", "POST",
	    payapi_wx_order_path(PAYAPI_WX_NATIVE), TS, NONCE, body, strlen(body));
	xasprintf(&want, "signature=\"%s\"", SIG_NATIVE);
	ck_assert_ptr_nonnull(strstr(auth, want));
	free(want);
	free(auth);
	free(body);
}
END_TEST

START_TEST(wechat_jsapi_and_h5_need_their_fields)
{
	struct payapi_wx_order o = {.appid = "wxd678efh567hg6787",
	    .mchid = "1900000001",
	    .out_trade_no = OTN,
	    .notify_url = "https://pay.example.com/pay/wechat",
	    .total_fen = 1};
	char err[128], *body;

	ck_assert_ptr_null(payapi_wx_order_body(PAYAPI_WX_JSAPI, &o, err, sizeof err));
	ck_assert_ptr_nonnull(strstr(err, "openid"));
	ck_assert_ptr_null(payapi_wx_order_body(PAYAPI_WX_H5, &o, err, sizeof err));
	ck_assert_ptr_nonnull(strstr(err, "IP"));
	o.openid = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o";
	body = payapi_wx_order_body(PAYAPI_WX_JSAPI, &o, err, sizeof err);
	ck_assert_ptr_nonnull(
	    strstr(body, ",\"payer\":{\"openid\":\"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o\"}"));
	free(body);
	o.client_ip = "203.0.113.9";
	body = payapi_wx_order_body(PAYAPI_WX_H5, &o, err, sizeof err);
	ck_assert_ptr_nonnull(strstr(body, "\"scene_info\":{\"payer_client_ip\":\"203.0.113.9\","
	                                   "\"h5_info\":{\"type\":\"Wap\"}}"));
	free(body);
	o.total_fen = 0;
	ck_assert_ptr_null(payapi_wx_order_body(PAYAPI_WX_NATIVE, &o, err, sizeof err));
	o.total_fen = 1;
	o.out_trade_no = "PP1/../x";
	ck_assert_ptr_null(payapi_wx_order_body(PAYAPI_WX_NATIVE, &o, err, sizeof err));
}
END_TEST

START_TEST(wechat_jsapi_page_params_known_answer)
{
	json_t *j = payapi_wx_jsapi_params(
	    priv, "wxd678efh567hg6787", "wx201410272009395522657a690389285100", TS, NONCE);
	char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);

	ck_assert_str_eq(s, "{\"appId\":\"wxd678efh567hg6787\",\"timeStamp\":\"1700000000\","
	                    "\"nonceStr\":\"" NONCE "\",\"package\":\"prepay_id="
	                    "wx201410272009395522657a690389285100\",\"signType\":\"RSA\","
	                    "\"paySign\":\"" SIG_JSAPI "\"}");
	free(s);
	json_decref(j);
}
END_TEST

START_TEST(wechat_other_requests_exact_bytes)
{
	char *s;

	s = payapi_wx_close_path(OTN);
	ck_assert_str_eq(s, "/v3/pay/transactions/out-trade-no/" OTN "/close");
	free(s);
	s = payapi_wx_close_body("1900000001");
	ck_assert_str_eq(s, "{\"mchid\":\"1900000001\"}");
	free(s);
	s = payapi_wx_refund_body(OTN, "RF1", 1250, 5000, "退款", NULL);
	ck_assert_str_eq(s,
	    "{\"out_trade_no\":\"" OTN "\",\"out_refund_no\":\"RF1\",\"reason\":"
	    "\"退款\",\"amount\":{\"refund\":1250,\"total\":5000,\"currency\":\"CNY\"}}");
	free(s);
	s = payapi_wx_bill_path("2026-12-06");
	ck_assert_str_eq(s, "/v3/bill/tradebill?bill_date=2026-12-06&bill_type=ALL");
	free(s);
	s = payapi_wx_message("POST", "/p", 7, "n", "", 0);
	ck_assert_str_eq(s, "POST\n/p\n7\nn\n\n");
	free(s);
}
END_TEST

START_TEST(wechat_trade_answers_parse)
{
	static const char paid[] =
	    "{\"appid\":\"wxd678efh567hg6787\",\"mchid\":\"1900000001\",\"out_trade_no\":\"" OTN
	    "\",\"transaction_id\":\"4200000001\",\"trade_state\":\"SUCCESS\",\"trade_state_desc\":"
	    "\"ok\",\"success_time\":\"2026-12-07T12:01:02+08:00\",\"amount\":{\"total\":5000,"
	    "\"currency\":\"CNY\"}}";
	static const char notpay[] = "{\"out_trade_no\":\"" OTN "\",\"trade_state\":\"NOTPAY\"}";
	struct payapi_trade t;
	char err[128];

	ck_assert_int_eq(payapi_wx_trade_parse(paid, strlen(paid), &t, err, sizeof err), PAY_OK);
	ck_assert_int_eq(t.state, PAYAPI_PAID);
	ck_assert_int_eq(t.fen, 5000);
	ck_assert_str_eq(t.txn, "4200000001");
	ck_assert_str_eq(t.paid_at, "2026-12-07T12:01:02+08:00");
	ck_assert_int_eq(
	    payapi_wx_trade_parse(notpay, strlen(notpay), &t, err, sizeof err), PAY_OK);
	ck_assert_int_eq(t.state, PAYAPI_NOTPAY);
	/* paid without a transaction id: not believed */
	ck_assert_int_eq(
	    payapi_wx_trade_parse("{\"trade_state\":\"SUCCESS\"}", 25, &t, err, sizeof err),
	    PAY_EFORMAT);
	ck_assert_int_eq(payapi_wx_trade_parse("[1]", 3, &t, err, sizeof err), PAY_EFORMAT);
}
END_TEST

START_TEST(alipay_request_known_answer)
{
	struct payapi_ali_req r;
	char *biz = payapi_ali_biz_precreate(OTN, 5000, "电费 M0001", "30m");

	ck_assert_int_eq(payapi_ali_request(priv, "2021000000000001", "alipay.trade.precreate", biz,
	                     "2026-12-07 12:00:00", "https://pay.example.com/pay/alipay", NULL, &r),
	    PAY_OK);
	ck_assert_str_eq(r.signed_string, ALI_SIGNED);
	ck_assert_ptr_nonnull(
	    strstr(r.query, "&sign_type=RSA2&timestamp=2026-12-07%2012%3A00%3A00"));
	/* sign goes on the wire percent-encoded */
	ck_assert_ptr_nonnull(strstr(r.query, "&sign=oIXL%2BtOUx%2B06bcjM3Xln"));
	ck_assert_ptr_nonnull(strstr(r.body, "biz_content=%7B%22out_trade_no%22%3A%22" OTN));
	payapi_ali_req_free(&r);
	free(biz);
}
END_TEST

START_TEST(alipay_biz_contents_exact)
{
	char *s;

	s = payapi_ali_biz_wap(OTN, 1, "x", "https://q", NULL);
	ck_assert_str_eq(s, "{\"out_trade_no\":\"" OTN "\",\"total_amount\":\"0.01\",\"subject\":"
	                    "\"x\",\"product_code\":\"QUICK_WAP_WAY\",\"quit_url\":\"https://q\"}");
	free(s);
	s = payapi_ali_biz_refund(OTN, 123456, "RF1", NULL);
	ck_assert_str_eq(s, "{\"out_trade_no\":\"" OTN "\",\"refund_amount\":\"1234.56\","
	                    "\"out_request_no\":\"RF1\"}");
	free(s);
	s = payapi_ali_biz_bill("2026-12-06");
	ck_assert_str_eq(s, "{\"bill_type\":\"trade\",\"bill_date\":\"2026-12-06\"}");
	free(s);
}
END_TEST

START_TEST(alipay_answer_verified_over_exact_text)
{
	static const char good[] = "{\"alipay_trade_query_response\":" ALI_INNER(
	    "a\\/b") ",\"sign\":\"" SIG_ALI_ANSWER "\"}";
	static const char fallback[] = "{\"alipay_trade_query_response\":" ALI_INNER(
	    "a\\/b") ",\"sign\":\"" SIG_ALI_ANSWER_UNESCAPED "\"}";
	static const char tampered[] = "{\"alipay_trade_query_response\":" ALI_INNER(
	    "a\\/c") ",\"sign\":\"" SIG_ALI_ANSWER "\"}";
	static const char unsigned_[] = "{\"alipay_trade_query_response\":" ALI_INNER("a") "}";
	struct payapi_trade t;
	json_t *resp;
	char err[128];

	ck_assert_int_eq(payapi_ali_answer(
	                     pub, "alipay.trade.query", good, strlen(good), &resp, err, sizeof err),
	    PAY_OK);
	ck_assert_int_eq(payapi_ali_trade_parse(resp, &t, err, sizeof err), PAY_OK);
	ck_assert_int_eq(t.state, PAYAPI_PAID);
	ck_assert_int_eq(t.fen, 5000);
	ck_assert_str_eq(t.txn, "2026120722001400000000000001");
	ck_assert_str_eq(t.paid_at, "2026-12-07 12:01:02+08");
	json_decref(resp);
	ck_assert_int_eq(payapi_ali_answer(pub, "alipay.trade.query", fallback, strlen(fallback),
	                     &resp, err, sizeof err),
	    PAY_OK);
	json_decref(resp);
	ck_assert_int_eq(payapi_ali_answer(pub, "alipay.trade.query", tampered, strlen(tampered),
	                     &resp, err, sizeof err),
	    PAY_ESIG);
	ck_assert_ptr_null(resp);
	ck_assert_int_eq(payapi_ali_answer(pub, "alipay.trade.query", unsigned_, strlen(unsigned_),
	                     &resp, err, sizeof err),
	    PAY_ESIG);
	/* the answer to another method is not this one's */
	ck_assert_int_eq(payapi_ali_answer(
	                     pub, "alipay.trade.close", good, strlen(good), &resp, err, sizeof err),
	    PAY_EFORMAT);
}
END_TEST

START_TEST(alipay_not_exist_is_its_own_state)
{
	json_t *r = json_pack("{s:s, s:s, s:s}", "code", "40004", "msg", "Business Failed",
	    "sub_code", "ACQ.TRADE_NOT_EXIST");
	struct payapi_trade t;
	char err[64];

	ck_assert_int_eq(payapi_ali_trade_parse(r, &t, err, sizeof err), PAY_OK);
	ck_assert_int_eq(t.state, PAYAPI_NOTEXIST);
	json_decref(r);
	r = json_pack("{s:s, s:s}", "code", "10000", "trade_status", "WAIT_BUYER_PAY");
	ck_assert_int_eq(payapi_ali_trade_parse(r, &t, err, sizeof err), PAY_OK);
	ck_assert_int_eq(t.state, PAYAPI_NOTPAY);
	json_decref(r);
}
END_TEST

START_TEST(member_span_skips_strings_and_nesting)
{
	static const char b[] = " { \"x\" : \"}{\\\"\" , \"y\":[{\"z\":1}], \"r\" : {\"a\":\"}\"} ,"
	                        "\"sign\":\"s\"}";
	size_t off, n;

	ck_assert_int_eq(payapi_json_member_span(b, strlen(b), "r", &off, &n), PAY_OK);
	ck_assert_int_eq((int)n, 9);
	ck_assert(memcmp(b + off, "{\"a\":\"}\"}", n) == 0);
	ck_assert_int_eq(payapi_json_member_span(b, strlen(b), "q", &off, &n), PAY_EFORMAT);
	ck_assert_int_eq(payapi_json_member_span("{\"r\":{", 6, "r", &off, &n), PAY_EFORMAT);
}
END_TEST

START_TEST(money_and_times)
{
	char b[40];

	payapi_yuan(5000, b, sizeof b);
	ck_assert_str_eq(b, "50.00");
	payapi_yuan(7, b, sizeof b);
	ck_assert_str_eq(b, "0.07");
	payapi_cn_time(1700000000, true, b, sizeof b);
	ck_assert_str_eq(b, "2023-11-15T06:13:20+08:00");
	payapi_cn_time(1700000000, false, b, sizeof b);
	ck_assert_str_eq(b, "2023-11-15 06:13:20");
	/* 2023-11-14 16:30 UTC is already the 15th in Beijing */
	payapi_cn_yesterday(1699979400, b, sizeof b);
	ck_assert_str_eq(b, "2023-11-14");
	ck_assert(payapi_trade_no_ok(OTN));
	ck_assert(!payapi_trade_no_ok("PP123"));
	ck_assert_int_eq(payapi_channel_parse("wap"), PAYAPI_ALI_WAP);
	ck_assert_int_eq(payapi_channel_parse("card"), -1);
}
END_TEST

static char *
slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = xmalloc(1 << 16);

	ck_assert_ptr_nonnull(f);
	*len = fread(buf, 1, (1 << 16) - 1, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

/* tests/data/pay/wechat_bill.csv: a bill_type=ALL bill as WeChat Pay serves
 * it (BOM, CRLF, backticks, the summary), written by python3 (README). */
START_TEST(wechat_bill_parses_by_header_name)
{
	struct payapi_bill b;
	size_t len;
	char *csv = slurp(DATA("wechat_bill.csv"), &len), err[128], hex[41], *j;

	ck_assert_int_eq(payapi_wx_bill_parse(csv, len, &b, err, sizeof err), PAY_OK);
	ck_assert_uint_eq(b.n, 3);
	ck_assert_str_eq(b.rows[0].txn, "4200000001");
	ck_assert_str_eq(b.rows[0].otn, "PP20261206000000000000001");
	ck_assert(!b.rows[0].refund);
	ck_assert_int_eq(b.rows[0].fen, 5000);
	ck_assert_int_eq(b.rows[1].fen, 7);
	ck_assert(b.rows[2].refund);
	ck_assert_int_eq(b.rows[2].fen, 1000);
	j = payapi_bill_json(&b);
	ck_assert_ptr_nonnull(
	    strstr(j, "{\"txn\":\"4200000002\",\"otn\":\"PP20261206000000000000002\","
	              "\"kind\":\"payment\",\"fen\":7}"));
	free(j);
	payapi_bill_free(&b);
	/* sha1sum tests/data/pay/wechat_bill.csv */
	payapi_sha1_hex(csv, len, hex);
	ck_assert_str_eq(hex, "842a23ae2563cd841a10c50e47c58ca107e4eaf8");
	ck_assert_int_eq(payapi_wx_bill_parse("a,b\n", 4, &b, err, sizeof err), PAY_EFORMAT);
	payapi_bill_free(&b);
	free(csv);
}
END_TEST

/* tests/data/pay/alipay_bill.zip: the detail and the summary CSVs in GBK,
 * the detail deflated, made by python3 zipfile (README). */
START_TEST(alipay_bill_unzips_converts_and_parses)
{
	struct payapi_bill b;
	size_t len, dlen, ulen;
	char *zip = slurp(DATA("alipay_bill.zip"), &len), *det, *utf8, err[128];

	ck_assert_int_eq(payapi_unzip_detail(zip, len, &det, &dlen, err, sizeof err), PAY_OK);
	utf8 = payapi_gbk_to_utf8(det, dlen, &ulen);
	free(det);
	ck_assert_ptr_nonnull(utf8);
	ck_assert_ptr_nonnull(strstr(utf8, "#支付宝业务明细查询"));
	ck_assert_int_eq(payapi_ali_bill_parse(utf8, ulen, &b, err, sizeof err), PAY_OK);
	ck_assert_uint_eq(b.n, 2);
	ck_assert_str_eq(b.rows[0].txn, "2026120622001400000000000001");
	ck_assert_str_eq(b.rows[0].otn, "PP20261206000000000000003");
	ck_assert_int_eq(b.rows[0].fen, 2000);
	ck_assert(b.rows[1].refund);
	ck_assert_int_eq(b.rows[1].fen, 500);
	payapi_bill_free(&b);
	/* truncated archives are refused, never read past */
	ck_assert_int_eq(
	    payapi_unzip_detail(zip, len / 2, &det, &dlen, err, sizeof err), PAY_EFORMAT);
	ck_assert_int_eq(payapi_unzip_detail("PK", 2, &det, &dlen, err, sizeof err), PAY_EFORMAT);
	free(utf8);
	free(zip);
}
END_TEST

static Suite *
payapi_suite(void)
{
	Suite *s = suite_create("payapi");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, wechat_query_authorization_known_answer);
	tcase_add_test(tc, wechat_native_order_exact_body_and_signature);
	tcase_add_test(tc, wechat_jsapi_and_h5_need_their_fields);
	tcase_add_test(tc, wechat_jsapi_page_params_known_answer);
	tcase_add_test(tc, wechat_other_requests_exact_bytes);
	tcase_add_test(tc, wechat_trade_answers_parse);
	tcase_add_test(tc, alipay_request_known_answer);
	tcase_add_test(tc, alipay_biz_contents_exact);
	tcase_add_test(tc, alipay_answer_verified_over_exact_text);
	tcase_add_test(tc, alipay_not_exist_is_its_own_state);
	tcase_add_test(tc, member_span_skips_strings_and_nesting);
	tcase_add_test(tc, money_and_times);
	tcase_add_test(tc, wechat_bill_parses_by_header_name);
	tcase_add_test(tc, alipay_bill_unzips_converts_and_parses);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr;
	char err[256];
	int failed;

	priv = payapi_privkey_load(DATA("rsa_private.pem"), err, sizeof err);
	pub = pay_pubkey_load(DATA("rsa_public.pem"), err, sizeof err);
	if (priv == NULL || pub == NULL) {
		fprintf(stderr, "test keys: %s\n", err);
		return EXIT_FAILURE;
	}
	sr = srunner_create(payapi_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	EVP_PKEY_free(priv);
	EVP_PKEY_free(pub);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
