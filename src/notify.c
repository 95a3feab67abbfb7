/*
 * notify.c: the message dispatcher of notify.h.
 *
 * One claim round trip at a time on the control connection, for as many
 * messages as there are free sending slots (the sum of the gateways'
 * concurrency, capped); a wake-up during a claim sets a flag for another.
 * Each message: gwreq.c builds the request (its text and subject from the
 * message's templates, the gateway's url, headers and body around them,
 * auth or a signature); then one HTTP request. The outcome goes back
 * through prepaid_internal.finish_messages() on the same connection.
 *
 * Secrets (conf_gateway.secret) go to libcurl and signers only; recipients
 * are masked in log lines; bodies are never logged.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "gwreq.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"

/* Messages in flight at once, whatever the gateways allow. */
#define NOTIFY_INFLIGHT_MAX 256
/* A claimed message returns to the queue if not finished by then. */
#define NOTIFY_LEASE "10 minutes"
#define NOTIFY_POLL_MS 1000

struct notify {
	struct event_base *base;
	struct pgconn *pc;
	const struct conf *conf;
	struct httpc *http;
	struct event *poll_timer;
	bool ready;
	bool claiming;
	bool again;
	int inflight;
	int gw_inflight[CONF_GATEWAYS_MAX];
	struct notify_msg *sending; /* in flight, to free them if we stop first */
	json_t *outcomes; /* finished attempts not yet recorded */
	bool finishing; /* a finish_messages() round trip in flight */
	struct event *finish_timer;
};

/* One message being sent. */
struct notify_msg {
	struct notify *n;
	struct notify_msg *next, *prev;
	int gw; /* index into conf->gateways at send time */
	char gw_name[CONF_GW_NAME_MAX + 1];
	int max_attempts, retry_initial_ms, retry_max_ms;
	long long id;
	int attempt;
	char to_masked[256];
	/* success rule, copied: the conf may be swapped while we wait */
	int status[CONF_GW_STATUS_MAX];
	int nstatus;
	char *success_field, *success_value, *message_id_field;
};

static void notify_claim(struct notify *n);

static void
notify_unlink(struct notify_msg *m)
{
	if (m->prev != NULL)
		m->prev->next = m->next;
	else if (m->n->sending == m)
		m->n->sending = m->next;
	if (m->next != NULL)
		m->next->prev = m->prev;
	m->next = m->prev = NULL;
}

static void
notify_msg_free(struct notify_msg *m)
{
	if (m == NULL)
		return;
	free(m->success_field);
	free(m->success_value);
	free(m->message_id_field);
	free(m);
}

/* ------------------------------------------------------------ finishing */

static void notify_flush(struct notify *n);

static void
notify_finished(void *arg, PGresult *res, const char *err)
{
	struct notify *n = arg;

	UNUSED(res);
	n->finishing = false;
	if (err != NULL)
		log_warn("notify: recording attempts failed: %s (their leases will return the "
		         "messages to the queue)",
		    err);
	if (json_array_size(n->outcomes) > 0)
		notify_flush(n);
	notify_claim(n);
}

/* Record the finished attempts: one round trip, one commit, for all of them. */
static void
notify_flush(struct notify *n)
{
	const char *params[1];
	char *body;

	if (n->finishing || json_array_size(n->outcomes) == 0 || !n->ready)
		return;
	body = json_dumps(n->outcomes, JSON_COMPACT);
	json_array_clear(n->outcomes);
	params[0] = body;
	n->finishing = true;
	pgconn_query(n->pc, "SELECT prepaid_internal.finish_messages($1::jsonb)", 1, params,
	    notify_finished, n);
	free(body);
}

static void
notify_finish_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	notify_flush(arg);
}

static void
notify_finish(struct notify_msg *m, const char *outcome, long status, const char *answer,
    const char *provider_id, const char *error, int64_t duration_us, int retry_after_ms)
{
	struct notify *n = m->n;
	struct timeval tv = {0, 20000};

	if (strcmp(outcome, "sent") == 0) {
		metrics.messages_sent++;
		log_info("message %lld: sent to %s through %s (attempt %d%s%s)", m->id,
		    m->to_masked, m->gw_name, m->attempt,
		    provider_id && *provider_id ? ", id " : "", provider_id ? provider_id : "");
	} else if (strcmp(outcome, "retry") == 0) {
		metrics.messages_retried++;
		log_warn("message %lld to %s through %s: attempt %d: %s; again in %d ms", m->id,
		    m->to_masked, m->gw_name, m->attempt, error ? error : "?", retry_after_ms);
	} else {
		metrics.messages_failed++;
		log_error("message %lld to %s through %s: failed for good after attempt %d: %s",
		    m->id, m->to_masked, m->gw_name, m->attempt, error ? error : "?");
	}
	json_array_append_new(n->outcomes,
	    json_pack("{s:I, s:i, s:s, s:s, s:o, s:s?, s:s?, s:s?, s:I, s:i}", "id",
	        (json_int_t)m->id, "attempt", m->attempt, "gateway", m->gw_name, "outcome", outcome,
	        "status", status ? json_integer(status) : json_null(), "answer", answer,
	        "provider_id", provider_id && provider_id[0] ? provider_id : NULL, "error", error,
	        "duration_ms", (json_int_t)(duration_us / 1000), "retry_after_ms", retry_after_ms));
	/* A batch goes when the previous one is recorded, or after 20 ms. */
	if (!n->finishing)
		notify_flush(n);
	else if (!evtimer_pending(n->finish_timer, NULL))
		evtimer_add(n->finish_timer, &tv);
}

/* ------------------------------------------------------------ answers */

/* Follow a dot path ("Response.SendStatusSet.0.Code") into a JSON value. */
static json_t *
notify_json_path(json_t *root, const char *path)
{
	char *copy = xstrdup(path), *seg, *save = NULL;
	json_t *v = root;

	for (seg = strtok_r(copy, ".", &save); seg != NULL && v != NULL;
	     seg = strtok_r(NULL, ".", &save)) {
		if (json_is_array(v)) {
			char *end;
			long i = strtol(seg, &end, 10);

			v = (*end == '\0' && i >= 0) ? json_array_get(v, (size_t)i) : NULL;
		} else
			v = json_object_get(v, seg);
	}
	free(copy);
	return v;
}

/* The text of a scalar JSON value, into buf. */
static const char *
notify_json_text(json_t *v, char *buf, size_t len)
{
	if (json_is_string(v))
		snprintf(buf, len, "%s", json_string_value(v));
	else if (json_is_integer(v))
		snprintf(buf, len, "%lld", (long long)json_integer_value(v));
	else if (json_is_true(v) || json_is_false(v))
		snprintf(buf, len, "%s", json_is_true(v) ? "true" : "false");
	else
		return NULL;
	return buf;
}

static int
notify_backoff_ms(const struct notify_msg *m)
{
	long long ms = m->retry_initial_ms;
	int i;

	for (i = 1; i < m->attempt && ms < m->retry_max_ms; i++)
		ms *= 2;
	return (int)(ms < m->retry_max_ms ? ms : m->retry_max_ms);
}

static void
notify_answered(void *arg, const struct httpc_result *res)
{
	struct notify_msg *m = arg;
	struct notify *n = m->n;
	enum httpc_class cls = httpc_classify(res);
	json_t *answer = NULL;
	char code[128] = "", provider[HTTPC_MSGID_MAX] = "", error[256] = "";
	const char *code_p = NULL;
	bool status_ok = false;
	int i, retry_ms;

	notify_unlink(m);
	n->inflight--;
	if (m->gw >= 0 && m->gw < CONF_GATEWAYS_MAX)
		n->gw_inflight[m->gw]--;
	for (i = 0; i < m->nstatus; i++)
		if (res->status == m->status[i])
			status_ok = true;
	if (res->smtp)
		status_ok = cls == HTTPC_OK; /* the server accepted the message */
	if (res->body_len > 0)
		answer = json_loadb(res->body, res->body_len, 0, NULL);
	if (m->success_field != NULL && answer != NULL) {
		code_p =
		    notify_json_text(notify_json_path(answer, m->success_field), code, sizeof code);
	}
	if (m->message_id_field != NULL) {
		if (strncmp(m->message_id_field, "header:", 7) == 0) {
			const char *h = httpc_result_header(res, m->message_id_field + 7);

			snprintf(provider, sizeof provider, "%s", h ? h : "");
		} else if (answer != NULL)
			notify_json_text(notify_json_path(answer, m->message_id_field), provider,
			    sizeof provider);
	}

	if (cls == HTTPC_RETRY) {
		if (res->code != CURLE_OK)
			snprintf(error, sizeof error, "%s", res->error);
		else
			snprintf(error, sizeof error, "HTTP %ld", res->status);
		retry_ms = notify_backoff_ms(m);
		if (res->retry_after_s >= 0 && res->retry_after_s * 1000 > retry_ms)
			retry_ms = res->retry_after_s * 1000;
		notify_finish(m, m->attempt < m->max_attempts ? "retry" : "failed", res->status,
		    NULL, NULL, error, res->total_us, retry_ms);
	} else if (!status_ok && res->smtp) {
		snprintf(error, sizeof error, "the SMTP server refused it (reply %ld): %s",
		    res->status, res->error);
		notify_finish(m, "failed", res->status, NULL, NULL, error, res->total_us, 0);
	} else if (!status_ok) {
		snprintf(
		    error, sizeof error, "HTTP %ld is not a success for this gateway", res->status);
		notify_finish(m, "failed", res->status, code_p, provider, error, res->total_us, 0);
	} else if (m->success_field != NULL &&
	           (code_p == NULL || strcmp(code_p, m->success_value) != 0)) {
		snprintf(error, sizeof error, "%s is %s%s%s, not %s", m->success_field,
		    code_p ? "\"" : "", code_p ? code_p : "missing", code_p ? "\"" : "",
		    m->success_value);
		notify_finish(m, "failed", res->status, code_p, provider, error, res->total_us, 0);
	} else
		notify_finish(m, "sent", res->status, code_p, provider, NULL, res->total_us, 0);
	json_decref(answer);
	notify_msg_free(m);
	notify_claim(n);
}

/* ------------------------------------------------------------ sending */

static void
notify_uuid(char *out, size_t len)
{
	unsigned char b[16];

	if (RAND_bytes(b, sizeof b) != 1)
		memset(b, 0, sizeof b);
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	snprintf(out, len, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
	    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
	    b[14], b[15]);
}

static int
notify_find_gateway(const struct conf *c, const char *name, const char *channel)
{
	int i, want = strcmp(channel, "email") == 0 ? CONF_GW_EMAIL : CONF_GW_SMS;

	for (i = 0; i < c->ngateways; i++) {
		if (name != NULL ? strcmp(c->gateways[i].name, name) == 0
		                 : c->gateways[i].channel == want)
			return i;
	}
	return -1;
}

/* Copy what the answer is judged by: the conf may be swapped while we wait. */
static void
notify_keep_rules(struct notify_msg *m, const struct conf_gateway *gw)
{
	m->max_attempts = gw->max_attempts;
	m->retry_initial_ms = gw->retry_initial_ms;
	m->retry_max_ms = gw->retry_max_ms;
	memcpy(m->status, gw->status, sizeof m->status);
	m->nstatus = gw->nstatus;
	m->success_field = gw->success_field ? xstrdup(gw->success_field) : NULL;
	m->success_value = gw->success_value ? xstrdup(gw->success_value) : NULL;
	m->message_id_field = gw->message_id_field ? xstrdup(gw->message_id_field) : NULL;
}

/*
 * Build (gwreq.c) and send one claimed message. On any error before the
 * request leaves, the message fails for good (a bad template or
 * configuration will not get better by retrying) and the reason is
 * recorded.
 */
static void
notify_send(struct notify *n, PGresult *res, int row)
{
	struct notify_msg *m = xcalloc(1, sizeof *m);
	const struct conf_gateway *gw;
	struct gwreq_msg gm;
	struct gwreq r;
	struct httpc_request req;
	char nonce[40], *cause = NULL;
	json_error_t jerr;
	int i;

	m->n = n;
	m->id = strtoll(PQgetvalue(res, row, 0), NULL, 10);
	m->attempt = atoi(PQgetvalue(res, row, 1));
	log_mask(PQgetvalue(res, row, 5), m->to_masked, sizeof m->to_masked);
	i = notify_find_gateway(n->conf, PQgetisnull(res, row, 4) ? NULL : PQgetvalue(res, row, 4),
	    PQgetvalue(res, row, 3));
	snprintf(m->gw_name, sizeof m->gw_name, "%s",
	    i >= 0 ? n->conf->gateways[i].name
	           : (PQgetisnull(res, row, 4) ? "none" : PQgetvalue(res, row, 4)));
	m->gw = i;
	if (i < 0) {
		notify_finish(m, "failed", 0, NULL, NULL, "no such gateway configured", 0, 0);
		notify_msg_free(m);
		return;
	}
	gw = &n->conf->gateways[i];
	notify_keep_rules(m, gw);

	memset(&gm, 0, sizeof gm);
	gm.id = m->id;
	gm.attempt = m->attempt;
	gm.meter = PQgetisnull(res, row, 2) ? NULL : PQgetvalue(res, row, 2);
	gm.to = PQgetvalue(res, row, 5);
	gm.language = PQgetvalue(res, row, 6);
	gm.subject_template = PQgetisnull(res, row, 7) ? NULL : PQgetvalue(res, row, 7);
	gm.text_template = PQgetvalue(res, row, 8);
	gm.params = json_loads(PQgetvalue(res, row, 9), 0, &jerr);
	gm.now = (int64_t)time(NULL);
	notify_uuid(nonce, sizeof nonce);
	gm.nonce = nonce;
	if (!gwreq_build(gw, &gm, &r, &cause)) {
		json_decref(gm.params);
		notify_finish(
		    m, "failed", 0, NULL, NULL, cause ? cause : "cannot build the request", 0, 0);
		free(cause);
		notify_msg_free(m);
		return;
	}
	json_decref(gm.params);

	memset(&req, 0, sizeof req);
	req.url = r.url;
	req.method = r.method;
	req.headers = r.method != NULL ? (const char *const *)r.headers : NULL;
	req.body = r.body;
	req.body_len = r.body_len;
	req.timeout_ms = gw->timeout_ms;
	req.user = r.user;
	req.password = r.password;
	req.bearer = r.bearer;
	req.mail_from = r.mail_from;
	req.mail_rcpt = r.mail_rcpt;
	req.tag = gw->name;
	n->inflight++;
	n->gw_inflight[m->gw]++;
	if (httpc_send(n->http, &req, notify_answered, m, &cause) == NULL) {
		/* refused before it left: judged like a transport error */
		struct httpc_result hr;

		memset(&hr, 0, sizeof hr);
		hr.code = CURLE_FAILED_INIT;
		hr.error = cause ? cause : "request refused";
		hr.retry_after_s = -1;
		notify_answered(m, &hr);
	} else {
		m->next = n->sending;
		if (n->sending != NULL)
			n->sending->prev = m;
		n->sending = m;
		log_debug("message %lld: sending to %s through %s (attempt %d)", m->id,
		    m->to_masked, m->gw_name, m->attempt);
	} /* either way m is owned by the request now */
	gwreq_free(&r);
	free(cause);
}

/* ------------------------------------------------------------ claiming */

/*
 * The claim's per-gateway arrays: name, channel, whether it is its
 * channel's default (the first configured), and its free sending slots.
 * Returns the total of free slots.
 */
struct notify_claim_args {
	struct sbuf names, channels, defaults, limits;
};

static void
notify_array_add(struct sbuf *b, const char *v)
{
	sbuf_adds(b, b->len > 1 ? "," : "");
	sbuf_adds(b, v);
}

static int
notify_free_slots(const struct notify *n, struct notify_claim_args *a)
{
	bool seen_sms = false, seen_email = false;
	int i, slots = 0, room = NOTIFY_INFLIGHT_MAX - n->inflight;
	char num[16];

	sbuf_adds(&a->names, "{");
	sbuf_adds(&a->channels, "{");
	sbuf_adds(&a->defaults, "{");
	sbuf_adds(&a->limits, "{");
	for (i = 0; i < n->conf->ngateways; i++) {
		const struct conf_gateway *gw = &n->conf->gateways[i];
		bool email = gw->channel == CONF_GW_EMAIL;
		bool dflt = email ? !seen_email : !seen_sms;
		int free_slots = gw->concurrency - n->gw_inflight[i];

		if (email)
			seen_email = true;
		else
			seen_sms = true;
		if (free_slots > room - slots)
			free_slots = room - slots;
		if (free_slots < 0)
			free_slots = 0;
		slots += free_slots;
		notify_array_add(&a->names, gw->name); /* [a-z0-9_-]: no quoting needed */
		notify_array_add(&a->channels, email ? "email" : "sms");
		notify_array_add(&a->defaults, dflt ? "t" : "f");
		snprintf(num, sizeof num, "%d", free_slots);
		notify_array_add(&a->limits, num);
	}
	sbuf_adds(&a->names, "}");
	sbuf_adds(&a->channels, "}");
	sbuf_adds(&a->defaults, "}");
	sbuf_adds(&a->limits, "}");
	return slots;
}

static void
notify_claimed(void *arg, PGresult *res, const char *err)
{
	struct notify *n = arg;
	int i, rows = 0;

	n->claiming = false;
	if (err != NULL)
		log_warn("notify: claiming messages failed: %s", err);
	else {
		rows = PQntuples(res);
		for (i = 0; i < rows; i++)
			notify_send(n, res, i);
	}
	if (n->again) {
		n->again = false;
		notify_claim(n);
	}
}

static void
notify_claim(struct notify *n)
{
	struct notify_claim_args a;
	const char *params[5];
	int slots;

	if (!n->ready || n->conf->ngateways == 0)
		return;
	if (n->claiming) {
		n->again = true;
		return;
	}
	memset(&a, 0, sizeof a);
	slots = notify_free_slots(n, &a);
	if (slots > 0) {
		params[0] = a.names.p;
		params[1] = a.channels.p;
		params[2] = a.defaults.p;
		params[3] = a.limits.p;
		params[4] = NOTIFY_LEASE;
		n->claiming = true;
		pgconn_query(n->pc,
		    "SELECT message_id, attempt, meter_id, channel, gateway, to_address, language, "
		    "subject, body, params FROM prepaid_internal.claim_messages($1::text[], "
		    "$2::text[], "
		    "$3::bool[], $4::int[], $5::interval)",
		    5, params, notify_claimed, n);
	} /* else: a completion claims again */
	free(a.names.p);
	free(a.channels.p);
	free(a.defaults.p);
	free(a.limits.p);
}

static void
notify_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	notify_claim(arg);
}

static void
notify_limits(struct notify *n)
{
	int i, most = 1;

	for (i = 0; i < n->conf->ngateways; i++)
		if (n->conf->gateways[i].concurrency > most)
			most = n->conf->gateways[i].concurrency;
	httpc_set_limits(n->http, most, NOTIFY_INFLIGHT_MAX);
}

struct notify *
notify_new(struct event_base *base, struct pgconn *pc, const struct conf *conf)
{
	struct notify *n = xcalloc(1, sizeof *n);
	struct httpc_config hc;
	struct timeval tv = {NOTIFY_POLL_MS / 1000, (NOTIFY_POLL_MS % 1000) * 1000};

	memset(&hc, 0, sizeof hc);
	n->base = base;
	n->pc = pc;
	n->conf = conf;
	n->http = httpc_new(base, &hc);
	notify_limits(n);
	n->poll_timer = event_new(base, -1, EV_PERSIST, notify_poll_cb, n);
	event_add(n->poll_timer, &tv);
	n->finish_timer = evtimer_new(base, notify_finish_timer_cb, n);
	n->outcomes = json_array();
	return n;
}

void
notify_free(struct notify *n)
{
	if (n == NULL)
		return;
	event_free(n->poll_timer);
	event_free(n->finish_timer);
	json_decref(n->outcomes); /* unrecorded: their leases return them to the queue */
	httpc_free(n->http); /* in-flight messages return to the queue by lease */
	while (n->sending != NULL) {
		struct notify_msg *m = n->sending;

		notify_unlink(m);
		notify_msg_free(m);
	}
	free(n);
}

void
notify_set_conf(struct notify *n, const struct conf *conf)
{
	n->conf = conf;
	notify_limits(n);
}

void
notify_set_ready(struct notify *n, bool ready)
{
	n->ready = ready;
	if (!ready) {
		n->claiming = false;
		n->finishing = false; /* failed with the connection; flushed again */
		return;
	}
	notify_flush(n);
	pgconn_query_front(n->pc, "LISTEN prepaid_messages", 0, NULL, NULL, NULL);
	notify_claim(n);
}

void
notify_kick(struct notify *n)
{
	notify_claim(n);
}
