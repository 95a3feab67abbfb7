/*
 * check_paypage.c: unit tests of paypage.c, the occupants' pay page as data
 * in, HTML out. What an occupant cares about: the page is in the language
 * the phone asks for; it shows the balance to the fen, the state of the
 * power and, when the meter is armed, how to restore it; a hostile meter
 * id or order number is shown as text, never as markup; a wrong link says
 * nothing about any meter; a client hammering the page is slowed down
 * while others are not; the stand-in cashier gets an order it can read
 * back exactly.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "paypage.h"

static const int64_t amounts[] = {2000, 5000, 10050};

static struct paypage_view
view(enum paypage_lang lang)
{
	struct paypage_view v;
	int i;

	memset(&v, 0, sizeof v);
	v.lang = lang;
	v.client = PAYPAGE_MOBILE;
	v.meter_id = "M-0001";
	v.balance_fen = 1234;
	v.relay = "closed";
	v.ndays = 7;
	for (i = 0; i < 7; i++)
		v.use_wh[i] = 1000 * i + 5;
	v.amounts_fen = amounts;
	v.namounts = 3;
	v.pay_action = "/p/TOKEN/pay";
	v.wechat = true;
	v.alipay = true;
	return v;
}

static char *
render(const struct paypage_view *v)
{
	struct sbuf b = {0};

	paypage_render_meter(v, &b);
	ck_assert_ptr_nonnull(b.p);
	/* self-contained: no script, no external asset */
	ck_assert_ptr_null(strstr(b.p, "<script"));
	ck_assert_ptr_null(strstr(b.p, "src="));
	ck_assert_ptr_null(strstr(b.p, "<link"));
	return b.p;
}

START_TEST(language_follows_accept_language)
{
	ck_assert_int_eq(paypage_lang_pick(NULL), PAYPAGE_ZH);
	ck_assert_int_eq(paypage_lang_pick(""), PAYPAGE_ZH);
	ck_assert_int_eq(paypage_lang_pick("en-US,en;q=0.9"), PAYPAGE_EN);
	ck_assert_int_eq(paypage_lang_pick("zh-CN,zh;q=0.9,en;q=0.8"), PAYPAGE_ZH);
	ck_assert_int_eq(paypage_lang_pick("en;q=0.5, zh;q=0.8"), PAYPAGE_ZH);
	ck_assert_int_eq(paypage_lang_pick("en-GB;q=0.9, zh-TW;q=0.3"), PAYPAGE_EN);
	ck_assert_int_eq(paypage_lang_pick("fr-FR, de"), PAYPAGE_ZH);
	ck_assert_int_eq(paypage_lang_pick("fr-FR, en;q=0.2"), PAYPAGE_EN);
	ck_assert_int_eq(paypage_lang_pick("en;q=0"), PAYPAGE_ZH);
	ck_assert_int_eq(paypage_lang_pick("english"), PAYPAGE_ZH);
	ck_assert_int_eq(paypage_lang_pick("EN-us"), PAYPAGE_EN);
	ck_assert_int_eq(paypage_lang_pick("en;q=0.800, zh;q=0.799"), PAYPAGE_EN);
}
END_TEST

START_TEST(page_in_english_and_chinese)
{
	struct paypage_view v = view(PAYPAGE_EN);
	char *en, *zh;

	en = render(&v);
	ck_assert_ptr_nonnull(strstr(en, "<html lang=\"en\">"));
	ck_assert_ptr_nonnull(strstr(en, "Balance"));
	ck_assert_ptr_nonnull(strstr(en, "Power on"));
	ck_assert_ptr_null(strstr(en, "余额"));
	v.lang = PAYPAGE_ZH;
	zh = render(&v);
	ck_assert_ptr_nonnull(strstr(zh, "<html lang=\"zh-CN\">"));
	ck_assert_ptr_nonnull(strstr(zh, "余额"));
	ck_assert_ptr_nonnull(strstr(zh, "供电正常"));
	ck_assert_ptr_null(strstr(zh, "Balance"));
	free(en);
	free(zh);
}
END_TEST

START_TEST(balance_to_the_fen_and_use_in_kwh)
{
	struct paypage_view v = view(PAYPAGE_EN);
	char *out;

	out = render(&v);
	ck_assert_ptr_nonnull(strstr(out, "id=\"balance\">&#165;12.34<"));
	/* today (6,005 Wh) first, the oldest (5 Wh) last */
	ck_assert_ptr_nonnull(strstr(out, "<td>Today</td><td>6.00</td>"));
	ck_assert_ptr_nonnull(strstr(out, "<td>6 days ago</td><td>0.00</td>"));
	ck_assert_ptr_nonnull(strstr(out, "<td>Yesterday</td><td>5.00</td>"));
	free(out);
	v.balance_fen = -305;
	out = render(&v);
	ck_assert_ptr_nonnull(strstr(out, "class=\"bal neg\" id=\"balance\">-&#165;3.05<"));
	free(out);
	v.balance_fen = 0;
	out = render(&v);
	ck_assert_ptr_nonnull(strstr(out, "id=\"balance\">&#165;0.00<"));
	free(out);
}
END_TEST

START_TEST(amount_buttons_and_providers)
{
	struct paypage_view v = view(PAYPAGE_EN);
	char *out;

	out = render(&v);
	ck_assert_ptr_nonnull(strstr(out, "value=\"20.00\" checked>&#165;20.00"));
	ck_assert_ptr_nonnull(strstr(out, "value=\"50.00\">"));
	ck_assert_ptr_nonnull(strstr(out, "value=\"100.50\">&#165;100.50"));
	ck_assert_ptr_nonnull(strstr(out, "action=\"/p/TOKEN/pay\""));
	ck_assert_ptr_nonnull(strstr(out, "id=\"pay-alipay\""));
	ck_assert_ptr_nonnull(strstr(out, "id=\"pay-wechat\""));
	free(out);
	/* Alipay cannot be paid inside WeChat: its button is not offered. */
	v.client = PAYPAGE_IN_WECHAT;
	out = render(&v);
	ck_assert_ptr_null(strstr(out, "id=\"pay-alipay\""));
	ck_assert_ptr_nonnull(strstr(out, "id=\"pay-wechat\""));
	free(out);
	v.wechat = v.alipay = false;
	out = render(&v);
	ck_assert_ptr_null(strstr(out, "<form"));
	ck_assert_ptr_nonnull(strstr(out, "not available"));
	free(out);
}
END_TEST

START_TEST(restore_instructions_only_when_armed)
{
	struct paypage_view v = view(PAYPAGE_EN);
	struct paypage_result r;
	struct sbuf b = {0};
	char *out;

	out = render(&v);
	ck_assert_ptr_null(strstr(out, "id=\"restore\""));
	free(out);
	v.relay = "open";
	out = render(&v);
	ck_assert_ptr_nonnull(strstr(out, "Power off"));
	ck_assert_ptr_null(strstr(out, "id=\"restore\""));
	free(out);
	v.relay = "armed";
	out = render(&v);
	ck_assert_ptr_nonnull(strstr(out, "Hold the button on the meter for more than 10 seconds"));
	ck_assert_ptr_nonnull(strstr(out, "insert the IC card and press the button three times"));
	free(out);

	memset(&r, 0, sizeof r);
	r.lang = PAYPAGE_ZH;
	r.meter_id = "M-0001";
	r.out_trade_no = "PP2026";
	r.amount_fen = 5000;
	r.state = "paid";
	r.balance_fen = 4000;
	r.relay = "open";
	r.restoring = true;
	r.back = "/p/T";
	paypage_render_result(&r, &b);
	ck_assert_ptr_nonnull(strstr(b.p, "支付成功"));
	ck_assert_ptr_nonnull(strstr(b.p, "10 秒以上"));
	ck_assert_ptr_nonnull(strstr(b.p, "按按钮三次"));
	ck_assert_ptr_null(strstr(b.p, "http-equiv=\"refresh\""));
	sbuf_reset(&b);
	/* pending: no instructions yet, and the page refreshes itself */
	r.state = "pending";
	paypage_render_result(&r, &b);
	ck_assert_ptr_null(strstr(b.p, "按按钮三次"));
	ck_assert_ptr_nonnull(strstr(b.p, "http-equiv=\"refresh\""));
	ck_assert_ptr_nonnull(strstr(b.p, "data-state=\"pending\""));
	free(b.p);
}
END_TEST

START_TEST(dynamic_values_are_escaped)
{
	struct paypage_view v = view(PAYPAGE_EN);
	struct paypage_result r;
	struct sbuf b = {0};
	char *out;
	static const char hostile[] = "<script>alert('x')</script>\"&";

	v.meter_id = hostile;
	v.pay_action = "/p/\"><script>/pay";
	v.relay = "<b>";
	out = render(&v);
	ck_assert_ptr_nonnull(
	    strstr(out, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"));
	ck_assert_ptr_nonnull(strstr(out, "action=\"/p/&quot;&gt;&lt;script&gt;/pay\""));
	ck_assert_ptr_nonnull(strstr(out, "Unknown"));
	free(out);

	memset(&r, 0, sizeof r);
	r.lang = PAYPAGE_EN;
	r.meter_id = hostile;
	r.out_trade_no = hostile;
	r.state = "\"><script>";
	r.back = "javascript:\"<x>";
	paypage_render_result(&r, &b);
	ck_assert_ptr_null(strstr(b.p, "<script"));
	ck_assert_ptr_nonnull(strstr(b.p, "href=\"javascript:&quot;&lt;x&gt;\""));
	sbuf_reset(&b);
	paypage_render_code(PAYPAGE_EN, "weixin://wxpay/bizpayurl?pr=a&b=\"<", "/r", &b);
	ck_assert_ptr_nonnull(
	    strstr(b.p, "href=\"weixin://wxpay/bizpayurl?pr=a&amp;b=&quot;&lt;\""));
	free(b.p);
}
END_TEST

/* Inside WeChat: the provider's parameters reach the script as data; no
 * value can end the script. */
START_TEST(jsapi_page_script_cannot_be_broken_out_of)
{
	struct sbuf b = {0};
	const char *script, *end;

	paypage_render_jsapi(PAYPAGE_EN,
	    "{\"appId\":\"wx1\",\"package\":\"prepay_id=</"
	    "script><script>x()\",\"paySign\":\"a'b\"}",
	    "/p/T/result/PP1", "abc123", &b);
	script = strstr(b.p, "<script nonce=\"abc123\">");
	ck_assert_ptr_nonnull(script);
	end = strstr(script, "</script>");
	ck_assert_ptr_nonnull(end);
	/* exactly one script element, and it ends where it should */
	ck_assert_ptr_null(strstr(end + 1, "<script"));
	ck_assert_ptr_nonnull(
	    strstr(script, "prepay_id=\\u003c/script\\u003e\\u003cscript\\u003ex()"));
	ck_assert_ptr_nonnull(strstr(script, "a\\u0027b"));
	ck_assert_ptr_nonnull(strstr(script, "getBrandWCPayRequest"));
	ck_assert_ptr_nonnull(strstr(b.p, "href=\"/p/T/result/PP1\""));
	free(b.p);
}
END_TEST

START_TEST(native_code_url_as_a_qr_code)
{
	struct sbuf b = {0};
	const char *svg, *d;
	int w = 0;

	paypage_render_code(
	    PAYPAGE_EN, "weixin://wxpay/bizpayurl?pr=AbCdEf123", "/p/T/result/PP1", &b);
	svg = strstr(b.p, "<svg id=\"qr\"");
	ck_assert_ptr_nonnull(svg);
	/* 38 bytes: version 3 (29 modules) at level M, plus the quiet zone */
	ck_assert_int_eq(sscanf(strstr(svg, "viewBox=\"0 0 ") + 13, "%d", &w), 1);
	ck_assert_int_eq(w, 29 + 8);
	/* every QR code starts with the 7-module finder pattern, top left */
	d = strstr(svg, " d=\"");
	ck_assert_ptr_nonnull(d);
	ck_assert_msg(strncmp(d + 4, "M4 4h7v1h-7z", 12) == 0, "first row: %.40s", d + 4);
	ck_assert_ptr_nonnull(strstr(b.p, "href=\"/p/T/result/PP1\">I have paid"));
	ck_assert_ptr_null(strstr(b.p, "<script"));
	free(b.p);
}
END_TEST

START_TEST(a_wrong_link_says_nothing)
{
	struct sbuf a = {0}, b = {0};

	paypage_render_nothing(PAYPAGE_EN, &a);
	paypage_render_nothing(PAYPAGE_EN, &b);
	ck_assert_uint_eq(a.len, b.len);
	ck_assert_mem_eq(a.p, b.p, a.len);
	ck_assert_ptr_nonnull(strstr(a.p, "not valid"));
	ck_assert_ptr_null(strstr(a.p, "Balance"));
	ck_assert_ptr_null(strstr(a.p, "&#165;"));
	sbuf_reset(&a);
	paypage_render_nothing(PAYPAGE_ZH, &a);
	ck_assert_ptr_nonnull(strstr(a.p, "链接无效"));
	free(a.p);
	free(b.p);
}
END_TEST

START_TEST(yuan_amounts_parse_exactly)
{
	int64_t fen[8];
	char why[128];

	ck_assert_int_eq(paypage_yuan_parse("12"), 1200);
	ck_assert_int_eq(paypage_yuan_parse("12.5"), 1250);
	ck_assert_int_eq(paypage_yuan_parse("12.05"), 1205);
	ck_assert_int_eq(paypage_yuan_parse("0.01"), 1);
	ck_assert_int_eq(paypage_yuan_parse("1000000"), 100000000);
	ck_assert_int_eq(paypage_yuan_parse("1000000.01"), -1);
	ck_assert_int_eq(paypage_yuan_parse("0"), -1);
	ck_assert_int_eq(paypage_yuan_parse("0.00"), -1);
	ck_assert_int_eq(paypage_yuan_parse("1.234"), -1);
	ck_assert_int_eq(paypage_yuan_parse("-1"), -1);
	ck_assert_int_eq(paypage_yuan_parse("1e3"), -1);
	ck_assert_int_eq(paypage_yuan_parse(""), -1);
	ck_assert_int_eq(paypage_yuan_parse("1."), -1);
	ck_assert_int_eq(paypage_yuan_parse(".5"), -1);
	ck_assert_int_eq(paypage_yuan_parse(NULL), -1);
	ck_assert_int_eq(paypage_amounts_parse("20 50 100.5", fen, 8, why, sizeof why), 3);
	ck_assert_int_eq(fen[2], 10050);
	ck_assert_int_eq(paypage_amounts_parse("20 abc", fen, 8, why, sizeof why), -1);
	ck_assert_ptr_nonnull(strstr(why, "\"abc\""));
	ck_assert_int_eq(paypage_amounts_parse("", fen, 8, why, sizeof why), -1);
	ck_assert_int_eq(paypage_amounts_parse("1 2 3", fen, 2, why, sizeof why), -1);
}
END_TEST

START_TEST(tokens_and_browsers)
{
	const char *t = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde";

	ck_assert_uint_eq(strlen(t), PAYPAGE_TOKEN_LEN);
	ck_assert(paypage_token_ok(t, strlen(t)));
	ck_assert(!paypage_token_ok(t, strlen(t) - 1));
	ck_assert(!paypage_token_ok("AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abc%2", 43));
	ck_assert(!paypage_token_ok("AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abc/.", 43));
	ck_assert_int_eq(
	    paypage_client_of("Mozilla/5.0 (iPhone) MicroMessenger/8.0"), PAYPAGE_IN_WECHAT);
	ck_assert_int_eq(
	    paypage_client_of("Mozilla/5.0 (Linux; Android 13) Mobile Safari"), PAYPAGE_MOBILE);
	ck_assert_int_eq(paypage_client_of("Mozilla/5.0 (X11; Linux x86_64)"), PAYPAGE_DESKTOP);
	ck_assert_int_eq(paypage_client_of(NULL), PAYPAGE_DESKTOP);
}
END_TEST

START_TEST(rate_limit_per_address)
{
	struct paypage_limiter *l = malloc(sizeof *l);
	int64_t t = 1000000000;
	char addr[32];
	int i, passed = 0;

	paypage_limiter_init(l, 60, 3); /* one a second, bursts of 3 */
	ck_assert(paypage_limiter_take(l, "10.0.0.1", t));
	ck_assert(paypage_limiter_take(l, "10.0.0.1", t));
	ck_assert(paypage_limiter_take(l, "10.0.0.1", t));
	ck_assert(!paypage_limiter_take(l, "10.0.0.1", t));
	ck_assert(!paypage_limiter_take(l, "10.0.0.1", t + 500000));
	/* another client is not slowed down */
	ck_assert(paypage_limiter_take(l, "10.0.0.2", t));
	/* one more a second */
	ck_assert(paypage_limiter_take(l, "10.0.0.1", t + 1000000));
	ck_assert(!paypage_limiter_take(l, "10.0.0.1", t + 1100000));
	/* a long pause refills the burst, no more */
	for (i = 0; i < 10; i++)
		passed += paypage_limiter_take(l, "10.0.0.1", t + 3600LL * 1000000);
	ck_assert_int_eq(passed, 3);
	/* many clients: the table stays bounded and keeps working */
	for (i = 0; i < 20000; i++) {
		snprintf(addr, sizeof addr, "10.1.%d.%d", i / 256, i % 256);
		ck_assert(paypage_limiter_take(l, addr, t + 7200LL * 1000000 + i));
	}
	free(l);
}
END_TEST

START_TEST(client_address_behind_a_trusted_proxy)
{
	char out[48];

	paypage_client_addr("127.0.0.1", "1.2.3.4, 5.6.7.8", "127.0.0.1 ::1", out, sizeof out);
	ck_assert_str_eq(out, "5.6.7.8");
	paypage_client_addr("::1", "2001:db8::1", "127.0.0.1 ::1", out, sizeof out);
	ck_assert_str_eq(out, "2001:db8::1");
	/* an untrusted peer cannot choose its address */
	paypage_client_addr("9.9.9.9", "5.6.7.8", "127.0.0.1 ::1", out, sizeof out);
	ck_assert_str_eq(out, "9.9.9.9");
	paypage_client_addr("127.0.0.1", "<junk>", "127.0.0.1", out, sizeof out);
	ck_assert_str_eq(out, "127.0.0.1");
	paypage_client_addr("127.0.0.1", NULL, "127.0.0.1", out, sizeof out);
	ck_assert_str_eq(out, "127.0.0.1");
	paypage_client_addr("127.0.0.1", "5.6.7.8", "", out, sizeof out);
	ck_assert_str_eq(out, "127.0.0.1");
}
END_TEST

START_TEST(stub_handoff_carries_the_order)
{
	struct paypage_order o;
	struct sbuf b = {0};

	memset(&o, 0, sizeof o);
	o.out_trade_no = "PP20261207040000abcdef1234";
	o.meter_id = "M-1";
	o.amount_fen = 5005;
	o.channel = PAYPAGE_ALIPAY_WAP;
	o.return_url = "http://127.0.0.1:1/p/T/result/PP1?x=1&y=2";
	ck_assert_int_eq(paypage_stub_handoff(NULL, &o, &b), PAYPAGE_UNAVAILABLE);
	ck_assert_int_eq(
	    paypage_stub_handoff("http://127.0.0.1:9/cashier", &o, &b), PAYPAGE_REDIRECT);
	ck_assert_str_eq(b.p, "http://127.0.0.1:9/cashier?out_trade_no=PP20261207040000abcdef1234"
	                      "&total_amount=50.05&meter=M-1&channel=alipay_wap&return_url="
	                      "http%3A%2F%2F127.0.0.1%3A1%2Fp%2FT%2Fresult%2FPP1%3Fx%3D1%26y%3D2");
	free(b.p);
}
END_TEST

static Suite *
paypage_suite(void)
{
	Suite *s = suite_create("paypage");
	TCase *tc = tcase_create("render");

	tcase_add_test(tc, language_follows_accept_language);
	tcase_add_test(tc, page_in_english_and_chinese);
	tcase_add_test(tc, balance_to_the_fen_and_use_in_kwh);
	tcase_add_test(tc, amount_buttons_and_providers);
	tcase_add_test(tc, restore_instructions_only_when_armed);
	tcase_add_test(tc, dynamic_values_are_escaped);
	tcase_add_test(tc, a_wrong_link_says_nothing);
	tcase_add_test(tc, native_code_url_as_a_qr_code);
	tcase_add_test(tc, jsapi_page_script_cannot_be_broken_out_of);
	suite_add_tcase(s, tc);
	tc = tcase_create("requests");
	tcase_add_test(tc, yuan_amounts_parse_exactly);
	tcase_add_test(tc, tokens_and_browsers);
	tcase_add_test(tc, rate_limit_per_address);
	tcase_add_test(tc, client_address_behind_a_trusted_proxy);
	tcase_add_test(tc, stub_handoff_carries_the_order);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(paypage_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
