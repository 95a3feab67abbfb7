/*
 * check_httpc.c: the HTTP client (src/httpc.c) on a real event loop against
 * the fake gateway (tests/fakegw.c), which tests/it/httpc.sh starts. It
 * passes FAKEGW_URL (http://127.0.0.1:PORT), FAKEGW_LOG (the gateway's
 * request log) and FAKEGW_CLOSED_URL (a port nobody listens on). Without
 * them only the pure helpers are tested.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <event2/event.h>
#include <jansson.h>

#include "httpc.h"
#include "log.h"

/* What one completion callback saw, copied out of the result. */
struct call {
	int done;
	CURLcode code;
	char error[CURL_ERROR_SIZE];
	long status;
	char *body;
	size_t body_len;
	bool truncated;
	int retry_after_s;
	char message_id[HTTPC_MSGID_MAX];
	char content_type[64];
	int64_t total_us;
	long new_connections;
	enum httpc_class cls;
	/* Optional action run inside the callback. */
	void (*then)(struct call *c);
};

static struct event_base *base;
static struct httpc *hc;
static int pending; /* callbacks still expected */
static bool freed; /* hc was freed: no callback may come */
static int late_calls; /* callbacks after free */
static const char *gw_url;
static const char *gw_log;
static const char *gw_closed_url;

static void
call_reset(struct call *c)
{
	free(c->body);
	memset(c, 0, sizeof *c);
}

static void
test_cb(void *arg, const struct httpc_result *res)
{
	struct call *c = arg;
	const char *ct;

	if (freed)
		late_calls++;
	c->done++;
	c->code = res->code;
	snprintf(c->error, sizeof c->error, "%s", res->error);
	c->status = res->status;
	free(c->body);
	c->body = xmalloc(res->body_len + 1);
	memcpy(c->body, res->body, res->body_len + 1);
	c->body_len = res->body_len;
	c->truncated = res->truncated;
	c->retry_after_s = res->retry_after_s;
	snprintf(c->message_id, sizeof c->message_id, "%s", res->message_id);
	ct = httpc_result_header(res, "Content-Type");
	snprintf(c->content_type, sizeof c->content_type, "%s", ct != NULL ? ct : "");
	c->total_us = res->total_us;
	c->new_connections = res->new_connections;
	c->cls = httpc_classify(res);
	if (c->then != NULL)
		c->then(c);
	if (--pending == 0)
		event_base_loopbreak(base);
}

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	event_base_loopbreak(base);
}

/* Run the loop until no callback is pending or max_ms passed. */
static void
run(int max_ms)
{
	struct event *ev = evtimer_new(base, deadline_cb, NULL);
	struct timeval tv = {max_ms / 1000, (max_ms % 1000) * 1000};

	evtimer_add(ev, &tv);
	if (pending > 0)
		event_base_dispatch(base);
	event_free(ev);
}

/* Run the loop for exactly ms, whatever completes. */
static void
run_for(int ms)
{
	struct event *ev = evtimer_new(base, deadline_cb, NULL);
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	evtimer_add(ev, &tv);
	event_base_dispatch(base);
	event_free(ev);
}

static void
client(int max_host)
{
	struct httpc_config cfg = {max_host, 0, NULL};

	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	hc = httpc_new(base, &cfg);
	ck_assert_ptr_nonnull(hc);
	pending = 0;
	freed = false;
	late_calls = 0;
}

static void
client_free(void)
{
	if (!freed)
		httpc_free(hc);
	hc = NULL;
	event_base_free(base);
	base = NULL;
}

static char *
url(const char *path)
{
	char *u;

	xasprintf(&u, "%s%s", gw_url, path);
	return u;
}

/* Send; the request template is filled from the arguments. */
static struct httpc_req *
send_req(const char *path, const char *body, size_t len, int timeout_ms, struct call *c)
{
	struct httpc_request r;
	struct httpc_req *req;
	char *u = url(path), *cause = NULL;

	memset(&r, 0, sizeof r);
	r.url = u;
	r.body = body;
	r.body_len = len;
	r.timeout_ms = timeout_ms;
	r.tag = "test";
	req = httpc_send(hc, &r, test_cb, c, &cause);
	ck_assert_msg(req != NULL, "httpc_send: %s", cause ? cause : "?");
	pending++;
	free(u);
	return req;
}

/* Every fakegw log line (a JSON object) for which match() is true. */
static json_t *
gw_lines(bool (*match)(json_t *line, const void *arg), const void *arg)
{
	json_t *all = json_array(), *o;
	FILE *f = fopen(gw_log, "r");
	char *line = NULL;
	size_t cap = 0;

	ck_assert_msg(f != NULL, "cannot open %s", gw_log);
	while (getline(&line, &cap, f) > 0) {
		o = json_loads(line, JSON_ALLOW_NUL, NULL);
		ck_assert_msg(o != NULL, "bad log line %s", line);
		if (match(o, arg))
			json_array_append(all, o);
		json_decref(o);
	}
	free(line);
	fclose(f);
	return all;
}

static bool
match_query(json_t *line, const void *arg)
{
	const char *q = json_string_value(json_object_get(line, "query"));

	return q != NULL && strcmp(q, arg) == 0;
}

/* --- pure helpers */

START_TEST(classify_maps_status_and_transport_errors)
{
	struct httpc_result r;

	memset(&r, 0, sizeof r);
	r.status = 200;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_OK);
	r.status = 204;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_OK);
	r.status = 301;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_FINAL);
	r.status = 400;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_FINAL);
	r.status = 404;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_FINAL);
	r.status = 429;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_RETRY);
	r.status = 500;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_RETRY);
	r.status = 503;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_RETRY);
	r.status = 0;
	r.code = CURLE_OPERATION_TIMEDOUT;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_RETRY);
	r.code = CURLE_COULDNT_CONNECT;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_RETRY);
	r.code = CURLE_COULDNT_RESOLVE_HOST;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_RETRY);
	r.code = CURLE_URL_MALFORMAT;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_FINAL);
	r.code = CURLE_UNSUPPORTED_PROTOCOL;
	ck_assert_int_eq(httpc_classify(&r), HTTPC_FINAL);
	ck_assert_str_eq(httpc_class_name(HTTPC_RETRY), "retry");
}
END_TEST

START_TEST(retry_after_takes_seconds_and_dates)
{
	time_t t = curl_getdate("Wed, 21 Oct 2015 07:28:00 GMT", NULL);

	ck_assert_int_eq(httpc_parse_retry_after("1", 0), 1);
	ck_assert_int_eq(httpc_parse_retry_after(" 120 ", 0), 120);
	ck_assert_int_eq(httpc_parse_retry_after("0", 0), 0);
	ck_assert_int_eq(httpc_parse_retry_after("99999999999999999999", 0), 86400);
	ck_assert_int_eq(httpc_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", t - 120), 120);
	ck_assert_int_eq(httpc_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", t + 5), 0);
	ck_assert_int_eq(httpc_parse_retry_after("soon", 0), -1);
	ck_assert_int_eq(httpc_parse_retry_after("12abc", 0), -1);
	ck_assert_int_eq(httpc_parse_retry_after("", 0), -1);
	ck_assert_int_eq(httpc_parse_retry_after(NULL, 0), -1);
}
END_TEST

START_TEST(redacted_url_has_no_secrets)
{
	char out[128];

	httpc_redact_url(
	    "https://user:s3cret@api.example.com:8443/v1/send?Signature=abc#x", out, sizeof out);
	ck_assert_str_eq(out, "https://api.example.com:8443/v1/send");
	httpc_redact_url("http://h/p?q", out, sizeof out);
	ck_assert_str_eq(out, "http://h/p");
	httpc_redact_url("http://a@b@h?x", out, sizeof out);
	ck_assert_str_eq(out, "http://h");
	httpc_redact_url("http://h/p", out, 5);
	ck_assert_str_eq(out, "http");
}
END_TEST

/* --- against the fake gateway */

START_TEST(ok_answer_has_body_and_message_id)
{
	struct call c = {0};
	char want[HTTPC_MSGID_MAX + 64];

	client(4);
	send_req("/ok", "{\"to\":\"1\"}", 10, 5000, &c);
	run(5000);
	ck_assert_int_eq(c.done, 1);
	ck_assert_int_eq(c.code, CURLE_OK);
	ck_assert_str_eq(c.error, "");
	ck_assert_int_eq(c.status, 200);
	ck_assert_int_eq(c.cls, HTTPC_OK);
	ck_assert_msg(strncmp(c.message_id, "fake-", 5) == 0, "message id '%s'", c.message_id);
	snprintf(want, sizeof want, "{\"Code\":\"OK\",\"BizId\":\"%s\"}", c.message_id);
	ck_assert_str_eq(c.body, want);
	ck_assert_int_eq(c.body_len, strlen(want));
	ck_assert(!c.truncated);
	ck_assert_int_eq(c.retry_after_s, -1);
	ck_assert_str_eq(c.content_type, "application/json");
	ck_assert_int_gt(c.total_us, 0);
	ck_assert_int_eq(c.new_connections, 1);
	call_reset(&c);
	client_free();
}
END_TEST

START_TEST(created_is_ok_and_400_is_final)
{
	struct call c201 = {0}, c400 = {0}, cfail = {0};

	client(4);
	send_req("/created", "a", 1, 5000, &c201);
	send_req("/400", "a", 1, 5000, &c400);
	send_req("/fail", "a", 1, 5000, &cfail);
	run(5000);
	ck_assert_int_eq(c201.status, 201);
	ck_assert_int_eq(c201.cls, HTTPC_OK);
	ck_assert_int_eq(c400.status, 400);
	ck_assert_int_eq(c400.cls, HTTPC_FINAL);
	ck_assert_str_eq(c400.body, "{\"Code\":\"InvalidParameter\"}");
	/* A 200 that the gateway's body calls a failure is the success rule's
	 * business, not the transport's. */
	ck_assert_int_eq(cfail.cls, HTTPC_OK);
	ck_assert_str_eq(cfail.body, "{\"Code\":\"isv.MOBILE_NUMBER_ILLEGAL\"}");
	call_reset(&c201);
	call_reset(&c400);
	call_reset(&cfail);
	client_free();
}
END_TEST

static char resend_body[64];
static struct call resend_call;

/* Retry from inside the completion callback: httpc_send() is re-entrant. */
static void
resend_then(struct call *c)
{
	UNUSED(c);
	send_req("/429", resend_body, strlen(resend_body), 5000, &resend_call);
}

START_TEST(status_429_retries_after_retry_after)
{
	struct call c = {0};

	client(4);
	snprintf(
	    resend_body, sizeof resend_body, "{\"id\":\"429-%lld\"}", (long long)now_wall_us());
	c.then = resend_then;
	memset(&resend_call, 0, sizeof resend_call);
	send_req("/429", resend_body, strlen(resend_body), 5000, &c);
	run(5000);
	ck_assert_int_eq(c.done, 1);
	ck_assert_int_eq(c.status, 429);
	ck_assert_int_eq(c.cls, HTTPC_RETRY);
	ck_assert_int_eq(c.retry_after_s, 1);
	ck_assert_int_eq(resend_call.done, 1);
	ck_assert_int_eq(resend_call.status, 200);
	ck_assert_int_eq(resend_call.cls, HTTPC_OK);
	ck_assert_int_eq(resend_call.retry_after_s, -1);
	/* The retry went over the same kept-alive connection. */
	ck_assert_int_eq(resend_call.new_connections, 0);
	call_reset(&c);
	call_reset(&resend_call);
	client_free();
}
END_TEST

START_TEST(status_500_retries_until_gateway_recovers)
{
	struct call c = {0};
	char body[64];
	int i;

	client(4);
	snprintf(body, sizeof body, "{\"id\":\"500-%lld\"}", (long long)now_wall_us());
	for (i = 0; i < 3; i++) {
		send_req("/500", body, strlen(body), 5000, &c);
		run(5000);
		ck_assert_int_eq(c.done, 1);
		ck_assert_int_eq(c.status, i < 2 ? 500 : 200);
		ck_assert_int_eq(c.cls, i < 2 ? HTTPC_RETRY : HTTPC_OK);
		call_reset(&c);
	}
	client_free();
}
END_TEST

START_TEST(hanging_gateway_times_out_as_retry)
{
	struct call c = {0};
	int64_t t0;

	client(4);
	t0 = now_mono_us();
	send_req("/hang", "x", 1, 300, &c);
	run(3000);
	ck_assert_int_eq(c.done, 1);
	ck_assert_int_eq(c.code, CURLE_OPERATION_TIMEDOUT);
	ck_assert_int_eq(c.status, 0);
	ck_assert_int_eq(c.cls, HTTPC_RETRY);
	ck_assert_msg(c.error[0] != '\0', "no error text");
	ck_assert_msg(now_mono_us() - t0 >= 280000, "timed out early: %lld us",
	    (long long)(now_mono_us() - t0));
	ck_assert_msg(now_mono_us() - t0 < 1000000, "timed out late: %lld us",
	    (long long)(now_mono_us() - t0));
	call_reset(&c);
	client_free();
}
END_TEST

START_TEST(refused_connection_is_retry)
{
	struct httpc_request r;
	struct call c = {0};
	char *cause = NULL;

	client(4);
	memset(&r, 0, sizeof r);
	r.url = gw_closed_url;
	r.body = "x";
	r.body_len = 1;
	r.timeout_ms = 2000;
	ck_assert_ptr_nonnull(httpc_send(hc, &r, test_cb, &c, &cause));
	pending++;
	run(3000);
	ck_assert_int_eq(c.done, 1);
	ck_assert_int_eq(c.code, CURLE_COULDNT_CONNECT);
	ck_assert_int_eq(c.cls, HTTPC_RETRY);
	ck_assert_int_eq(c.status, 0);
	call_reset(&c);
	client_free();
}
END_TEST

#define NCONC 50
#define MAX_HOST 8

START_TEST(concurrent_requests_share_few_connections)
{
	static struct call c[NCONC];
	char path[96], query[80];
	json_t *lines, *peers;
	long conns = 0;
	int64_t t0, el;
	size_t i;

	client(MAX_HOST);
	snprintf(query, sizeof query, "ms=100&run=%lld", (long long)now_wall_us());
	snprintf(path, sizeof path, "/slow?%s", query);
	t0 = now_mono_us();
	for (i = 0; i < NCONC; i++) {
		memset(&c[i], 0, sizeof c[i]);
		send_req(path, NULL, 0, 10000, &c[i]);
	}
	run(10000);
	el = now_mono_us() - t0;
	for (i = 0; i < NCONC; i++) {
		ck_assert_int_eq(c[i].done, 1);
		ck_assert_int_eq(c[i].status, 200);
		conns += c[i].new_connections;
		call_reset(&c[i]);
	}
	/* 50 requests of 100 ms through 8 connections: at least 7 rounds. */
	ck_assert_msg(
	    el >= 600000, "too fast for %d connections: %lld us", MAX_HOST, (long long)el);
	ck_assert_msg(el < 5000000, "too slow: %lld us", (long long)el);
	ck_assert_msg(conns >= 1 && conns <= MAX_HOST, "%ld connections", conns);

	/* The gateway saw them on as few connections (client ports). */
	lines = gw_lines(match_query, query);
	ck_assert_int_eq(json_array_size(lines), NCONC);
	peers = json_object();
	for (i = 0; i < json_array_size(lines); i++)
		json_object_set_new(peers,
		    json_string_value(json_object_get(json_array_get(lines, i), "peer")),
		    json_true());
	ck_assert_msg(json_object_size(peers) <= MAX_HOST, "%zu peers", json_object_size(peers));
	ck_assert_int_eq((long)json_object_size(peers), conns);
	json_decref(peers);
	json_decref(lines);
	client_free();
}
END_TEST

static bool
match_marker(json_t *line, const void *arg)
{
	const char *q = json_string_value(json_object_get(line, "query"));

	return q != NULL && strcmp(q, arg) == 0;
}

START_TEST(body_and_headers_arrive_byte_exact)
{
	static const char body[] = "{\"name\":\"O'Brien \\\"Jr\\\" & Sons\",\n\t\"text\":"
	                           "\"line1\\nline2\r\n\xe7\x94\xb5\xe8\xb4\xb9\"}\n\0tail";
	const char *hdrs[] = {
	    "Content-Type: application/json; charset=utf-8", "X-Test: a \"quoted\" value", NULL};
	struct httpc_request r;
	struct call c = {0}, cb = {0};
	char marker[64], *u, *cause = NULL;
	json_t *lines, *l, *b, *h;

	client(4);
	snprintf(marker, sizeof marker, "exact=%lld", (long long)now_wall_us());
	xasprintf(&u, "%s/ok?%s", gw_url, marker);
	memset(&r, 0, sizeof r);
	r.url = u;
	r.method = "PUT";
	r.headers = hdrs;
	r.body = body;
	r.body_len = sizeof body - 1; /* with the NUL inside */
	r.timeout_ms = 5000;
	r.user = "user";
	r.password = "pa:ss";
	ck_assert_ptr_nonnull(httpc_send(hc, &r, test_cb, &c, &cause));
	pending++;
	/* And one with a bearer token, method defaulted to POST by the body. */
	r.method = NULL;
	r.user = r.password = NULL;
	r.bearer = "tok-123";
	r.headers = NULL;
	r.body = "k=v";
	r.body_len = 3;
	ck_assert_ptr_nonnull(httpc_send(hc, &r, test_cb, &cb, &cause));
	pending++;
	free(u);
	run(5000);
	ck_assert_int_eq(c.status, 200);
	ck_assert_int_eq(cb.status, 200);

	lines = gw_lines(match_marker, marker);
	ck_assert_int_eq(json_array_size(lines), 2);
	l = json_array_get(lines, 0);
	if (strcmp(json_string_value(json_object_get(l, "method")), "PUT") != 0)
		l = json_array_get(lines, 1);
	ck_assert_str_eq(json_string_value(json_object_get(l, "method")), "PUT");
	b = json_object_get(l, "body");
	ck_assert_ptr_nonnull(b);
	ck_assert_int_eq(json_string_length(b), sizeof body - 1);
	ck_assert(memcmp(json_string_value(b), body, sizeof body - 1) == 0);
	h = json_object_get(l, "headers");
	ck_assert_str_eq(json_string_value(json_object_get(h, "Content-Type")),
	    "application/json; charset=utf-8");
	ck_assert_str_eq(json_string_value(json_object_get(h, "X-Test")), "a \"quoted\" value");
	/* base64("user:pa:ss") */
	ck_assert_str_eq(
	    json_string_value(json_object_get(h, "Authorization")), "Basic dXNlcjpwYTpzcw==");
	ck_assert_ptr_null(json_object_get(h, "Expect"));

	l = json_array_get(lines, json_array_get(lines, 0) == l ? 1 : 0);
	ck_assert_str_eq(json_string_value(json_object_get(l, "method")), "POST");
	ck_assert_str_eq(json_string_value(json_object_get(l, "body")), "k=v");
	h = json_object_get(l, "headers");
	ck_assert_str_eq(json_string_value(json_object_get(h, "Authorization")), "Bearer tok-123");
	json_decref(lines);
	call_reset(&c);
	call_reset(&cb);
	client_free();
}
END_TEST

START_TEST(large_answer_is_truncated_and_connection_kept)
{
	struct httpc_request r;
	struct call c = {0}, c2 = {0};
	char *u, *cause = NULL;

	client(1);
	u = url("/big?bytes=200000");
	memset(&r, 0, sizeof r);
	r.url = u;
	r.timeout_ms = 5000;
	r.body_max = 1000;
	ck_assert_ptr_nonnull(httpc_send(hc, &r, test_cb, &c, &cause));
	pending++;
	run(5000);
	free(u);
	ck_assert_int_eq(c.status, 200);
	ck_assert(c.truncated);
	ck_assert_int_eq(c.body_len, 1000);
	ck_assert_int_eq(strlen(c.body), 1000);
	send_req("/ok", NULL, 0, 5000, &c2);
	run(5000);
	ck_assert_int_eq(c2.status, 200);
	ck_assert(!c2.truncated);
	ck_assert_int_eq(c2.new_connections, 0);
	call_reset(&c);
	call_reset(&c2);
	client_free();
}
END_TEST

START_TEST(cancelled_request_never_calls_back)
{
	struct call c = {0}, c2 = {0};
	struct httpc_req *req;

	client(4);
	req = send_req("/slow?ms=50", "x", 1, 5000, &c);
	send_req("/slow?ms=100", "y", 1, 5000, &c2);
	run_for(20);
	httpc_cancel(req);
	pending--;
	run(3000);
	ck_assert_int_eq(c.done, 0);
	ck_assert_int_eq(c2.done, 1);
	ck_assert_int_eq(c2.status, 200);
	call_reset(&c2);
	client_free();
}
END_TEST

#define NFLIGHT 12

START_TEST(free_with_requests_in_flight)
{
	static struct call c[NFLIGHT];
	const char *paths[] = {"/hang", "/slow?ms=200", "/ok", "/slow?ms=30"};
	struct httpc_stats st;
	int i;

	client(4);
	for (i = 0; i < NFLIGHT; i++) {
		memset(&c[i], 0, sizeof c[i]);
		send_req(paths[i % 4], "x", 1, 5000, &c[i]);
	}
	run_for(60);
	httpc_stats(hc, &st);
	ck_assert_int_eq((int)st.started, NFLIGHT);
	ck_assert_int_gt(st.in_flight, 0);
	httpc_free(hc);
	freed = true;
	run_for(400);
	ck_assert_int_eq(late_calls, 0);
	for (i = 0; i < NFLIGHT; i++)
		call_reset(&c[i]);
	client_free();
}
END_TEST

static void
free_then(struct call *c)
{
	UNUSED(c);
	httpc_free(hc);
	freed = true;
	pending = 1; /* stop counting: nothing else may complete */
}

START_TEST(free_from_callback_stops_all_callbacks)
{
	static struct call c[6];
	int i;

	client(8);
	for (i = 0; i < 6; i++)
		memset(&c[i], 0, sizeof c[i]);
	c[0].then = free_then;
	send_req("/ok", "x", 1, 5000, &c[0]);
	for (i = 1; i < 6; i++)
		send_req(i % 2 ? "/hang" : "/ok", "x", 1, 5000, &c[i]);
	run(3000);
	run_for(300);
	ck_assert_int_eq(late_calls, 0);
	ck_assert_int_eq(c[0].done, 1);
	for (i = 0; i < 6; i++)
		call_reset(&c[i]);
	client_free();
}
END_TEST

static Suite *
httpc_suite(void)
{
	Suite *s = suite_create("httpc");
	TCase *tc = tcase_create("pure");

	tcase_add_test(tc, classify_maps_status_and_transport_errors);
	tcase_add_test(tc, retry_after_takes_seconds_and_dates);
	tcase_add_test(tc, redacted_url_has_no_secrets);
	suite_add_tcase(s, tc);

	if (gw_url != NULL && gw_log != NULL && gw_closed_url != NULL) {
		tc = tcase_create("gateway");
		tcase_set_timeout(tc, 30);
		tcase_add_test(tc, ok_answer_has_body_and_message_id);
		tcase_add_test(tc, created_is_ok_and_400_is_final);
		tcase_add_test(tc, status_429_retries_after_retry_after);
		tcase_add_test(tc, status_500_retries_until_gateway_recovers);
		tcase_add_test(tc, hanging_gateway_times_out_as_retry);
		tcase_add_test(tc, refused_connection_is_retry);
		tcase_add_test(tc, concurrent_requests_share_few_connections);
		tcase_add_test(tc, body_and_headers_arrive_byte_exact);
		tcase_add_test(tc, large_answer_is_truncated_and_connection_kept);
		tcase_add_test(tc, cancelled_request_never_calls_back);
		tcase_add_test(tc, free_with_requests_in_flight);
		tcase_add_test(tc, free_from_callback_stops_all_callbacks);
		suite_add_tcase(s, tc);
	} else
		fprintf(stderr, "check_httpc: FAKEGW_URL etc. not set: gateway tests skipped\n");
	return s;
}

int
main(void)
{
	SRunner *sr;
	int failed;

	gw_url = getenv("FAKEGW_URL");
	gw_log = getenv("FAKEGW_LOG");
	gw_closed_url = getenv("FAKEGW_CLOSED_URL");
	if (getenv("HTTPC_DEBUG") != NULL)
		log_set_level(LOG_LVL_DEBUG);
	sr = srunner_create(httpc_suite());
	/* One event loop per test, made inside it: no fork needed. */
	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
