/*
 * check_gwreq.c: the exact bytes gwreq.c builds for each kind of gateway
 * (JSON, form, GET, Aliyun and Tencent signed, SMTP), the escaping of a
 * placeholder for where it lands, and each kind of auth. The signed
 * requests reuse the known-answer vectors of check_signer.c, reached here
 * through a gateway's templates, so a template or escaping slip shows up
 * as a wrong signature. The e-mail's base64 lines were computed with
 * python3 base64.b64encode.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "gwreq.h"

#define NOW 1767225600 /* 2026-01-01T00:00:00Z, a Thursday */

/* A gateway as conf.c leaves it: defaults applied, templates as written. */
static struct conf_gateway
gw_http(const char *url, const char *body, enum template_mode mode, const char *ct)
{
	struct conf_gateway gw;

	memset(&gw, 0, sizeof gw);
	snprintf(gw.name, sizeof gw.name, "test");
	gw.channel = CONF_GW_SMS;
	gw.type = CONF_GW_HTTP;
	gw.url = xstrdup(url);
	gw.method = CONF_GW_POST;
	gw.body = body ? xstrdup(body) : NULL;
	gw.body_mode = mode;
	gw.content_type = ct ? xstrdup(ct) : NULL;
	return gw;
}

/* The fields a test sets are its own copies, as in a parsed conf. */
static void
gw_free(struct conf_gateway *gw)
{
	int i;

	for (i = 0; i < gw->nheaders; i++) {
		free(gw->header_name[i]);
		free(gw->header_value[i]);
	}
	free(gw->url);
	free(gw->body);
	free(gw->content_type);
	free(gw->username);
	free(gw->secret);
	free(gw->auth_header);
	free(gw->access_key_id);
	free(gw->region);
	free(gw->mail_from);
}

/* Message 42, attempt 2, to meter 302's occupant, with params (owned). */
static struct gwreq_msg
msg_with(json_t *params)
{
	struct gwreq_msg m;

	memset(&m, 0, sizeof m);
	m.id = 42;
	m.attempt = 2;
	m.to = "+8613800000000";
	m.meter = "302";
	m.language = "zh";
	m.text_template = "Meter {{meter}}: balance {{balance}} yuan. Pay at {{link}}";
	m.params = params;
	m.now = NOW;
	m.nonce = "8d3b1c2e-0f4a-4b5c-9d6e-7f8091a2b3c4";
	return m;
}

static json_t *
params_plain(void)
{
	return json_pack(
	    "{s:s, s:s, s:s}", "balance", "12.50", "link", "https://pay.example/302", "name", "Li");
}

static void
assert_headers(const struct gwreq *r, const char *const *want)
{
	size_t i;

	for (i = 0; want[i] != NULL; i++) {
		ck_assert_ptr_nonnull(r->headers[i]);
		ck_assert_str_eq(r->headers[i], want[i]);
	}
	ck_assert_ptr_null(r->headers[i]);
}

/* --- HTTP gateways ------------------------------------------------------ */

START_TEST(json_post_with_bearer)
{
	struct conf_gateway gw = gw_http("https://sms.example/v1/send?meter={{meter}}",
	    "{\"to\":\"{{to}}\",\"text\":\"{{text}}\",\"id\":\"{{message_id}}\","
	    "\"at\":\"{{timestamp}}\",\"p\":{{params_json}}}",
	    TEMPLATE_JSON, "application/json");
	json_t *p = params_plain();
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;
	const char *want_h[] = {
	    "X-Meter: 302", "X-Lang: zh", "Content-Type: application/json", NULL};

	gw.header_name[0] = xstrdup("X-Meter");
	gw.header_value[0] = xstrdup("{{meter}}");
	gw.header_name[1] = xstrdup("X-Lang");
	gw.header_value[1] = xstrdup("{{language}}");
	gw.nheaders = 2;
	gw.auth = CONF_GW_AUTH_BEARER;
	gw.secret = xstrdup("tok-123");
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	ck_assert_str_eq(r.text, "Meter 302: balance 12.50 yuan. Pay at https://pay.example/302");
	ck_assert_ptr_null(r.subject);
	ck_assert_str_eq(r.method, "POST");
	ck_assert_str_eq(r.url, "https://sms.example/v1/send?meter=302");
	assert_headers(&r, want_h);
	ck_assert_str_eq(r.body,
	    "{\"to\":\"+8613800000000\",\"text\":\"Meter 302: balance 12.50 yuan. Pay at "
	    "https://pay.example/302\",\"id\":\"42\",\"at\":\"2026-01-01T00:00:00Z\","
	    "\"p\":{\"balance\":\"12.50\",\"link\":\"https://pay.example/302\",\"name\":\"Li\"}}");
	ck_assert_uint_eq(r.body_len, strlen(r.body));
	ck_assert_str_eq(r.bearer, "tok-123");
	ck_assert_ptr_null(r.user);
	ck_assert_ptr_null(r.password);
	ck_assert_ptr_null(r.mail_rcpt);
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(json_body_escapes_quotes_and_controls)
{
	struct conf_gateway gw =
	    gw_http("https://sms.example/send", "{\"text\":\"{{text}}\"}", TEMPLATE_JSON, NULL);
	json_t *p = json_pack("{s:s}", "name", "Zhang \"Li\" \\ 物业\n\t");
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;
	const char *want_h[] = {NULL};

	m.text_template = "Dear {{name}}";
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	ck_assert_str_eq(r.text, "Dear Zhang \"Li\" \\ 物业\n\t");
	ck_assert_str_eq(r.body, "{\"text\":\"Dear Zhang \\\"Li\\\" \\\\ 物业\\n\\t\"}");
	assert_headers(&r, want_h);
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(form_post_with_basic_auth)
{
	struct conf_gateway gw =
	    gw_http("https://api.example/2010-04-01/Accounts/{{name}}/Messages",
	        "To={{to}}&From=%2B15005550006&Body={{text}}", TEMPLATE_FORM,
	        "application/x-www-form-urlencoded");
	json_t *p = json_pack("{s:s, s:s}", "name", "a b/c", "balance", "1 & 2 = 3~*");
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;
	const char *want_h[] = {"Content-Type: application/x-www-form-urlencoded", NULL};

	m.text_template = "{{balance}} 元";
	gw.auth = CONF_GW_AUTH_BASIC;
	gw.username = xstrdup("AC123");
	gw.secret = xstrdup("pw");
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	/* a URL component: space %20, / encoded */
	ck_assert_str_eq(r.url, "https://api.example/2010-04-01/Accounts/a%20b%2Fc/Messages");
	/* a form field: space +, & = * and UTF-8 percent-encoded, ~ kept */
	ck_assert_str_eq(
	    r.body, "To=%2B8613800000000&From=%2B15005550006&Body=1+%26+2+%3D+3~%2A+%E5%85%83");
	assert_headers(&r, want_h);
	ck_assert_str_eq(r.user, "AC123");
	ck_assert_str_eq(r.password, "pw");
	ck_assert_ptr_null(r.bearer);
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(basic_auth_without_user_sends_empty_user)
{
	struct conf_gateway gw = gw_http("https://api.example/x", NULL, TEMPLATE_RAW, NULL);
	json_t *p = params_plain();
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;

	gw.auth = CONF_GW_AUTH_BASIC;
	gw.secret = xstrdup("key-1");
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	ck_assert_str_eq(r.user, "");
	ck_assert_str_eq(r.password, "key-1");
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(get_with_auth_header_and_no_body)
{
	struct conf_gateway gw =
	    gw_http("https://sms.example/send?to={{to}}&text={{text}}", NULL, TEMPLATE_RAW, NULL);
	json_t *p = params_plain();
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;
	const char *want_h[] = {"X-Api-Key: k3y", NULL};

	m.text_template = "Pay {{balance}}";
	gw.method = CONF_GW_GET;
	gw.auth = CONF_GW_AUTH_HEADER;
	gw.auth_header = xstrdup("X-Api-Key");
	gw.secret = xstrdup("k3y");
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	ck_assert_str_eq(r.method, "GET");
	ck_assert_str_eq(r.url, "https://sms.example/send?to=%2B8613800000000&text=Pay%2012.50");
	ck_assert_ptr_null(r.body);
	ck_assert_uint_eq(r.body_len, 0);
	assert_headers(&r, want_h);
	ck_assert_ptr_null(r.user);
	ck_assert_ptr_null(r.bearer);
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(header_value_cannot_add_a_header)
{
	struct conf_gateway gw = gw_http("https://sms.example/send", NULL, TEMPLATE_RAW, NULL);
	json_t *p = json_pack("{s:s}", "name", "Li\r\nX-Evil: 1");
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;

	m.text_template = "hello";
	gw.header_name[0] = xstrdup("X-Name");
	gw.header_value[0] = xstrdup("{{name}}");
	gw.nheaders = 1;
	ck_assert(!gwreq_build(&gw, &m, &r, &cause));
	ck_assert_ptr_nonnull(cause);
	ck_assert_ptr_null(r.url); /* freed */
	ck_assert_ptr_null(r.headers[0]);
	free(cause);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(unknown_placeholder_fails_with_a_reason)
{
	struct conf_gateway gw = gw_http("https://sms.example/send", NULL, TEMPLATE_RAW, NULL);
	json_t *p = params_plain();
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;

	m.text_template = "owed {{amount_due}}"; /* not among this message's params */
	ck_assert(!gwreq_build(&gw, &m, &r, &cause));
	ck_assert_ptr_nonnull(strstr(cause, "amount_due"));
	ck_assert_ptr_null(r.text);
	free(cause);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(subject_and_text_reach_the_body)
{
	struct conf_gateway gw = gw_http("https://mail.example/send",
	    "{\"subject\":\"{{subject}}\",\"text\":\"{{text}}\"}", TEMPLATE_JSON,
	    "application/json");
	json_t *p = params_plain();
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;

	m.subject_template = "Meter {{meter}}: {{text}}"; /* text is rendered first */
	m.text_template = "low";
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	ck_assert_str_eq(r.subject, "Meter 302: low");
	ck_assert_str_eq(r.body, "{\"subject\":\"Meter 302: low\",\"text\":\"low\"}");
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

/* --- signed gateways ----------------------------------------------------- */

START_TEST(aliyun_form_is_signed_as_the_known_vector)
{
	/* check_signer.c aliyun_form_post_send_sms_computed, through templates */
	struct conf_gateway gw = gw_http("https://dysmsapi.aliyuncs.com/",
	    "PhoneNumbers={{to}}&SignName=物业中心&TemplateCode=SMS_12345678"
	    "&TemplateParam={{params_json}}",
	    TEMPLATE_FORM, "application/x-www-form-urlencoded");
	json_t *p = json_pack("{s:s, s:s, s:s}", "name", "Zhang & \"Li\"", "amount", "12.50*",
	    "link", "https://pay.example/a b~c+d");
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;
	const char *want_h[] = {"Content-Type: application/x-www-form-urlencoded", NULL};

	m.to = "13800000000";
	m.text_template = "x";
	gw.signer = CONF_GW_SIGNER_ALIYUN;
	gw.access_key_id = xstrdup("LTAI-test-id");
	gw.secret = xstrdup("test-secret");
	gw.region = xstrdup("cn-hangzhou");
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	ck_assert_str_eq(r.method, "POST");
	ck_assert_str_eq(r.url, "https://dysmsapi.aliyuncs.com/");
	ck_assert_str_eq(r.body, "AccessKeyId=LTAI-test-id&Action=SendSms&Format=JSON"
	                         "&PhoneNumbers=13800000000&RegionId=cn-hangzhou"
	                         "&SignName=%E7%89%A9%E4%B8%9A%E4%B8%AD%E5%BF%83"
	                         "&SignatureMethod=HMAC-SHA1"
	                         "&SignatureNonce=8d3b1c2e-0f4a-4b5c-9d6e-7f8091a2b3c4"
	                         "&SignatureVersion=1.0&TemplateCode=SMS_12345678"
	                         "&TemplateParam=%7B%22name%22%3A%22Zhang%20%26%20%5C%22Li%5C%22%22"
	                         "%2C%22amount%22%3A%2212.50%2A%22%2C%22link%22%3A%22https%3A%2F%2F"
	                         "pay.example%2Fa%20b~c%2Bd%22%7D"
	                         "&Timestamp=2026-01-01T00%3A00%3A00Z&Version=2017-05-25"
	                         "&Signature=e4zq%2F4eBVqKZ8D%2Frrb8kCgz5Qvs%3D");
	ck_assert_uint_eq(r.body_len, strlen(r.body));
	assert_headers(&r, want_h);
	ck_assert_ptr_null(strstr(r.body, "test-secret"));
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(aliyun_refusal_is_a_reason)
{
	struct conf_gateway gw =
	    gw_http("https://dysmsapi.aliyuncs.com/", "PhoneNumbers={{to}}", TEMPLATE_FORM, NULL);
	json_t *p = params_plain();
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;

	m.text_template = "x";
	gw.signer = CONF_GW_SIGNER_ALIYUN;
	gw.access_key_id = xstrdup("LTAI-test-id");
	gw.secret = NULL; /* no key: the signer refuses */
	ck_assert(!gwreq_build(&gw, &m, &r, &cause));
	ck_assert_str_eq(cause, "aliyun signer: missing access key");
	ck_assert_ptr_null(r.body);
	free(cause);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(tencent_headers_are_signed_as_the_known_vector)
{
	/* check_signer.c tc3_send_sms_computed, through templates */
	struct conf_gateway gw = gw_http("https://sms.tencentcloudapi.com/",
	    "{\"PhoneNumberSet\":[\"{{to}}\"],\"SmsSdkAppId\":\"1400006666\","
	    "\"SignName\":\"物业中心\",\"TemplateId\":\"1234567\","
	    "\"TemplateParamSet\":[\"{{meter}}\",\"{{balance}}\"]}",
	    TEMPLATE_JSON, "application/json; charset=utf-8");
	json_t *p = params_plain();
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;
	const char *want_h[] = {
	    "Authorization: TC3-HMAC-SHA256 Credential=AKIDtest0000/2025-12-31/sms/tc3_request, "
	    "SignedHeaders=content-type;host, "
	    "Signature=f344dc99985e3c2e7a91ac3670ee15e242631671049fdf2d59ba00ba4bd8a38b",
	    "Content-Type: application/json; charset=utf-8", "Host: sms.tencentcloudapi.com",
	    "X-TC-Action: SendSms", "X-TC-Version: 2021-01-11", "X-TC-Timestamp: 1767196800",
	    "X-TC-Region: ap-guangzhou", NULL};

	m.now = 1767196800;
	gw.signer = CONF_GW_SIGNER_TENCENT;
	gw.access_key_id = xstrdup("AKIDtest0000");
	gw.secret = xstrdup("test-key-0000");
	gw.region = xstrdup("ap-guangzhou");
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	ck_assert_str_eq(r.body,
	    "{\"PhoneNumberSet\":[\"+8613800000000\"],\"SmsSdkAppId\":\"1400006666\","
	    "\"SignName\":\"物业中心\",\"TemplateId\":\"1234567\","
	    "\"TemplateParamSet\":[\"302\",\"12.50\"]}");
	/* one Content-Type, the signed one */
	assert_headers(&r, want_h);
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

/* --- SMTP ---------------------------------------------------------------- */

static struct conf_gateway
gw_smtp(void)
{
	struct conf_gateway gw;

	memset(&gw, 0, sizeof gw);
	snprintf(gw.name, sizeof gw.name, "smtp");
	gw.channel = CONF_GW_EMAIL;
	gw.type = CONF_GW_SMTP;
	gw.url = xstrdup("smtp://mail.example:587");
	gw.mail_from = xstrdup("billing@prop.example");
	gw.username = xstrdup("billing");
	gw.secret = xstrdup("mailpw");
	return gw;
}

START_TEST(smtp_message_exact)
{
	struct conf_gateway gw = gw_smtp();
	json_t *p = params_plain();
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;

	m.to = "li@home.example";
	m.subject_template = "电费余额不足";
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	ck_assert_ptr_null(r.method);
	ck_assert_ptr_null(r.headers[0]);
	ck_assert_str_eq(r.url, "smtp://mail.example:587");
	ck_assert_str_eq(r.mail_from, "billing@prop.example");
	ck_assert_str_eq(r.mail_rcpt, "li@home.example");
	ck_assert_str_eq(r.user, "billing");
	ck_assert_str_eq(r.password, "mailpw");
	ck_assert_str_eq(r.body,
	    "From: <billing@prop.example>\r\n"
	    "To: <li@home.example>\r\n"
	    "Subject: =?UTF-8?B?55S16LS55L2Z6aKd5LiN6Laz?=\r\n"
	    "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
	    "Message-ID: <prepaidd.42.2@prop.example>\r\n"
	    "MIME-Version: 1.0\r\n"
	    "Content-Type: text/plain; charset=UTF-8\r\n"
	    "Content-Transfer-Encoding: base64\r\n"
	    "\r\n"
	    "TWV0ZXIgMzAyOiBiYWxhbmNlIDEyLjUwIHl1YW4uIFBheSBhdCBodHRwczovL3BheS5leGFtcGxl\r\n"
	    "LzMwMg==\r\n");
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(smtp_body_template_replaces_text_and_no_login_without_user)
{
	struct conf_gateway gw = gw_smtp();
	json_t *p = params_plain();
	struct gwreq_msg m = msg_with(p);
	struct gwreq r;
	char *cause = NULL;
	const char *tail;

	free(gw.username);
	gw.username = NULL;
	gw.body = xstrdup("{{name}}");
	m.to = "li@home.example";
	ck_assert_msg(gwreq_build(&gw, &m, &r, &cause), "%s", cause);
	ck_assert_ptr_null(r.user);
	ck_assert_ptr_null(r.password);
	ck_assert_ptr_nonnull(strstr(r.body, "Subject: =?UTF-8?B?"
	                                     "?=\r\n"));
	tail = strstr(r.body, "\r\n\r\n");
	ck_assert_ptr_nonnull(tail);
	ck_assert_str_eq(tail, "\r\n\r\nTGk=\r\n"); /* "Li" */
	gwreq_free(&r);
	json_decref(p);
	gw_free(&gw);
}
END_TEST

START_TEST(smtp_refuses_a_recipient_that_is_no_address)
{
	static const char *const bad[] = {
	    "+8613800000000", "li@home.example\r\nBcc: x@evil.example", "<li@home.example>"};
	struct conf_gateway gw = gw_smtp();
	json_t *p = params_plain();
	size_t i;

	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		struct gwreq_msg m = msg_with(p);
		struct gwreq r;
		char *cause = NULL;

		m.to = bad[i];
		ck_assert(!gwreq_build(&gw, &m, &r, &cause));
		ck_assert_str_eq(cause, "the recipient or the sender is not an e-mail address");
		ck_assert_ptr_null(r.body);
		free(cause);
	}
	json_decref(p);
	gw_free(&gw);
}
END_TEST

static Suite *
gwreq_suite(void)
{
	Suite *s = suite_create("gwreq");
	TCase *tc;

	tc = tcase_create("http");
	tcase_add_test(tc, json_post_with_bearer);
	tcase_add_test(tc, json_body_escapes_quotes_and_controls);
	tcase_add_test(tc, form_post_with_basic_auth);
	tcase_add_test(tc, basic_auth_without_user_sends_empty_user);
	tcase_add_test(tc, get_with_auth_header_and_no_body);
	tcase_add_test(tc, header_value_cannot_add_a_header);
	tcase_add_test(tc, unknown_placeholder_fails_with_a_reason);
	tcase_add_test(tc, subject_and_text_reach_the_body);
	suite_add_tcase(s, tc);

	tc = tcase_create("signed");
	tcase_add_test(tc, aliyun_form_is_signed_as_the_known_vector);
	tcase_add_test(tc, aliyun_refusal_is_a_reason);
	tcase_add_test(tc, tencent_headers_are_signed_as_the_known_vector);
	suite_add_tcase(s, tc);

	tc = tcase_create("smtp");
	tcase_add_test(tc, smtp_message_exact);
	tcase_add_test(tc, smtp_body_template_replaces_text_and_no_login_without_user);
	tcase_add_test(tc, smtp_refuses_a_recipient_that_is_no_address);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(gwreq_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
