/*
 * payments.c: the payment callbacks of payments.h.
 *
 * A callback is answered exactly once: refused at once when it does not
 * verify, after the commit of prepaid_internal.record_payment() when it does, or 503
 * when the database is away or has not answered within answer_within_ms
 * (WeChat counts an answer after 5 s as a failure). A result that arrives
 * after a 503 is only logged: the provider's retry finds the payment
 * recorded and credits nothing. Nothing here blocks: verification is a few
 * tens of microseconds of RSA and AES, the database is asynchronous.
 *
 * Answers, and why (also in prepaidd-sql(7), PAYMENTS):
 *   success (WeChat 204, Alipay "success") after the commit, for a payment
 *     credited, a repeat of one, and a verified payment held as unmatched or
 *     disputed, and for a verified refund or close notification recorded:
 *     the money is on record, and a retry would change nothing;
 *   400 malformed or undecryptable, 401 signature, key serial or timestamp,
 *   403 another merchant's (mchid, appid, app_id, seller_id), 415 not a
 *     form: refused, audited, nothing recorded as a payment;
 *   500 an SQL error (the verified payment is also kept in payment_rejects),
 *   503 the database away or slow, or the daemon stopping: the provider
 *     retries.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "log.h"
#include "metrics.h"
#include "payments.h"
#include "payverify.h"
#include "pgconn.h"

enum pay_provider { PAY_WECHAT, PAY_ALIPAY };

static const char *const pay_provider_names[] = {"wechat", "alipay"};

/* Keys of one configuration, swapped whole on reload. */
struct pay_keys {
	struct pay_keyring *wx;
	unsigned char apiv3[32];
	EVP_PKEY *ali;
};

struct pay_req;

struct payments {
	struct event_base *base;
	const struct conf *conf;
	struct pay_keys keys;
	struct pgconn **pg;
	int npg;
	int next;
	struct pay_req *pending;
	int npending;
	bool stopping;
	struct payments_hooks hooks;
	int64_t audit_second; /* the second audit_count counts in */
	int audit_count;
	int audits_unpruned; /* audit rows written since the last prune */
};

/* One callback between its arrival and its answer. */
struct pay_req {
	struct payments *p;
	struct evhttp_request *req; /* NULL once answered */
	struct event *timer;
	enum pay_provider provider;
	int64_t t0_us; /* wall clock: received_at */
	int64_t t0_mono_us; /* for the answer-time histogram */
	bool in_db;
	char out_trade_no[64];
	char txn[64];
	int64_t fen;
	struct pay_req *prev, *next;
};

/* Refusals of unverified callbacks audited per second at most: a flood of
 * forgeries is counted and logged, not written row by row. */
#define PAY_AUDIT_PER_S 100
/* Audit rows written between two prunes of prepaid.payment_rejects. */
#define PAY_PRUNE_EVERY 100

/* ---------------------------------------------------------------- keys */

static void
pay_keys_free(struct pay_keys *k)
{
	pay_keyring_free(k->wx);
	EVP_PKEY_free(k->ali);
	OPENSSL_cleanse(k->apiv3, sizeof k->apiv3);
	memset(k, 0, sizeof *k);
}

static int
pay_key_error(const struct conf *c, const void *field, const char *key, const char *why, char *err,
    size_t errlen)
{
	snprintf(err, errlen, "%s:%d: payments.%s: %s", c->path, conf_line(c, field), key, why);
	return -1;
}

/* Load every key the configuration names. */
static int
pay_keys_load(const struct conf *c, struct pay_keys *k, char *err, size_t errlen)
{
	char why[256], *list, *save = NULL, *f;
	int rc = 0;

	memset(k, 0, sizeof *k);
	if (c->payments_wechat_path != NULL) {
		k->wx = pay_keyring_new();
		if (pay_secret_load(c->payments_wechat_apiv3_key_file, k->apiv3, why, sizeof why) !=
		    0)
			return pay_key_error(c, &c->payments_wechat_apiv3_key_file,
			    "wechat_apiv3_key_file", why, err, errlen);
		if (c->payments_wechat_platform_certs != NULL) {
			list = xstrdup(c->payments_wechat_platform_certs);
			for (f = strtok_r(list, " \t", &save); f != NULL && rc == 0;
			     f = strtok_r(NULL, " \t", &save)) {
				if (pay_keyring_add_file(k->wx, NULL, f, why, sizeof why) != 0)
					rc = pay_key_error(c, &c->payments_wechat_platform_certs,
					    "wechat_platform_certs", why, err, errlen);
			}
			free(list);
			if (rc != 0)
				return rc;
		}
		if (c->payments_wechat_public_key_file != NULL &&
		    pay_keyring_add_file(k->wx, c->payments_wechat_public_key_id,
		        c->payments_wechat_public_key_file, why, sizeof why) != 0)
			return pay_key_error(c, &c->payments_wechat_public_key_file,
			    "wechat_public_key_file", why, err, errlen);
	}
	if (c->payments_alipay_path != NULL) {
		k->ali = pay_pubkey_load(c->payments_alipay_public_key_file, why, sizeof why);
		if (k->ali == NULL)
			return pay_key_error(c, &c->payments_alipay_public_key_file,
			    "alipay_public_key_file", why, err, errlen);
	}
	return 0;
}

int
payments_check(const struct conf *conf, char *err, size_t errlen)
{
	struct pay_keys k;
	int rc = pay_keys_load(conf, &k, err, errlen);

	pay_keys_free(&k);
	return rc;
}

/* ------------------------------------------------------------ helpers */

/* A key serial or id fit for a log line: [0-9A-Za-z_], 1..64 characters. */
static bool
pay_serial_printable(const char *s)
{
	size_t n;

	if (s == NULL || (n = strlen(s)) == 0 || n > 64)
		return false;
	return strspn(s, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_") == n;
}

static void
pay_format_utc(int64_t us, char *buf, size_t len)
{
	time_t t = (time_t)(us / 1000000);
	struct tm tm;
	char date[24];

	gmtime_r(&t, &tm);
	strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
	snprintf(buf, len, "%s.%06d+00", date, (int)(us % 1000000));
}

static void
pay_format_fen(int64_t fen, char *buf, size_t len)
{
	snprintf(buf, len, "%" PRId64 ".%02d", fen / 100, (int)(fen % 100));
}

/* ------------------------------------------------------------ answers */

static void
pay_req_unlink(struct pay_req *r)
{
	struct payments *p = r->p;

	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		p->pending = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	p->npending--;
}

static void
pay_req_free(struct pay_req *r)
{
	pay_req_unlink(r);
	if (r->timer != NULL)
		event_free(r->timer);
	free(r);
}

/* Answer the provider (once) in its own dialect. */
static void
pay_answer(struct pay_req *r, int code, const char *message)
{
	struct evhttp_request *req = r->req;
	const char *reason = code == 200   ? "OK"
	                     : code == 204 ? "No Content"
	                     : code == 400 ? "Bad Request"
	                     : code == 401 ? "Unauthorized"
	                     : code == 403 ? "Forbidden"
	                     : code == 415 ? "Unsupported Media Type"
	                     : code == 500 ? "Internal Server Error"
	                                   : "Service Unavailable";
	json_t *j;
	char *s;

	if (req == NULL)
		return;
	r->req = NULL;
	if (r->timer != NULL)
		event_del(r->timer);
	metrics_observe(&metrics.pay_answer, now_mono_us() - r->t0_mono_us);
	if (r->provider == PAY_ALIPAY) {
		/* Alipay looks at the body only: exactly "success", or not. */
		httpd_reply(req, code, reason, "text/plain; charset=utf-8",
		    code < 300 ? "success" : "failure");
		return;
	}
	if (code < 300) {
		httpd_reply(req, code, reason, NULL, NULL);
		return;
	}
	j = json_pack("{s:s, s:s}", "code", "FAIL", "message", message);
	s = json_dumps(j, JSON_COMPACT);
	httpd_reply(req, code, reason, "application/json", s);
	free(s);
	json_decref(j);
}

static void
pay_audit_done(void *arg, PGresult *res, const char *err)
{
	UNUSED(arg);
	UNUSED(res);
	if (err != NULL)
		log_ratelimited(LOG_LVL_WARN, "pay-audit", 60,
		    "payments: could not audit a refused callback: %s", err);
}

static void
pay_prune_done(void *arg, PGresult *res, const char *err)
{
	UNUSED(arg);
	UNUSED(res);
	if (err != NULL)
		log_ratelimited(LOG_LVL_WARN, "pay-prune", 60,
		    "payments: could not prune prepaid.payment_rejects: %s", err);
}

static struct pgconn *
pay_pick(struct payments *p)
{
	int i;

	for (i = 0; i < p->npg; i++) {
		struct pgconn *pc = p->pg[(p->next + i) % p->npg];

		if (pgconn_ready(pc)) {
			p->next = (p->next + i + 1) % p->npg;
			return pc;
		}
	}
	return NULL;
}

/*
 * Refuse a callback: answer now, log (never the body), and audit it when
 * the database is there to take it (a flood of forgeries while it is away
 * is logged only). verified: the fields are a provider's, not a forger's.
 */
/* Write the audit row of a refused or failed callback, when the database
 * is there to take it. */
static void
pay_audit(struct pay_req *r, const char *peer, int code, const char *reason, bool verified)
{
	struct payments *p = r->p;
	struct pgconn *pc = pay_pick(p);
	char at[40], fen[24], status[8], keep[16];
	const char *params[9];
	int64_t sec = now_mono_us() / 1000000;

	if (!verified) {
		if (sec != p->audit_second) {
			p->audit_second = sec;
			p->audit_count = 0;
		}
		if (++p->audit_count > PAY_AUDIT_PER_S) {
			metrics.pay_unaudited++;
			return;
		}
	}
	if (pc == NULL || pgconn_pending(pc) > 1000) {
		metrics.pay_unaudited++;
		return;
	}
	pay_format_utc(r->t0_us, at, sizeof at);
	snprintf(status, sizeof status, "%d", code);
	snprintf(fen, sizeof fen, "%" PRId64, r->fen);
	params[0] = at;
	params[1] = pay_provider_names[r->provider];
	params[2] = reason;
	params[3] = status;
	params[4] = peer;
	params[5] = verified ? "true" : "false";
	params[6] = verified && r->out_trade_no[0] ? r->out_trade_no : NULL;
	params[7] = verified && r->txn[0] ? r->txn : NULL;
	params[8] = verified && r->fen >= 0 ? fen : NULL;
	pgconn_query(pc,
	    "INSERT INTO prepaid.payment_rejects (received_at, provider, reason, http_status, "
	    "peer, verified, out_trade_no, provider_txn, amount_fen) "
	    "VALUES ($1, $2, $3, $4::int, $5, $6::boolean, $7, $8, $9::bigint)",
	    9, params, pay_audit_done, NULL);
	/* Bounded as prepaid.rejects is: the newest [payments] rejects_keep
	 * unverified rows stay (sql/payments.sql). */
	if (++p->audits_unpruned >= PAY_PRUNE_EVERY) {
		p->audits_unpruned = 0;
		snprintf(keep, sizeof keep, "%d", p->conf->payments_rejects_keep);
		params[0] = keep;
		pgconn_query(pc, "SELECT prepaid_internal.prune_payment_rejects($1::int)", 1,
		    params, pay_prune_done, NULL);
	}
}

static void
pay_refuse(struct pay_req *r, int code, const char *reason, bool verified)
{
	char peer[80] = "?", key[64];

	metrics.pay_refused++;
	if (r->req != NULL)
		httpd_peer(r->req, peer, sizeof peer);
	snprintf(key, sizeof key, "pay-%s-%d", pay_provider_names[r->provider], code);
	log_ratelimited(verified ? LOG_LVL_ERROR : LOG_LVL_WARN, key, 10,
	    "payments: %s callback from %s refused (%d): %s%s%s%s%s",
	    pay_provider_names[r->provider], peer, code, reason, verified ? " out_trade_no=" : "",
	    verified ? r->out_trade_no : "", verified ? " transaction=" : "",
	    verified ? r->txn : "");
	pay_answer(r, code, reason);
	pay_audit(r, peer, code, reason, verified);
}

/* ----------------------------------------------------------- database */

static void
pay_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct pay_req *r = arg;

	UNUSED(fd);
	UNUSED(what);
	metrics.pay_unavailable++;
	log_ratelimited(LOG_LVL_WARN, "pay-slow", 10,
	    "payments: %s out_trade_no=%s transaction=%s: no answer from PostgreSQL within "
	    "%d ms: 503 (the provider retries)",
	    pay_provider_names[r->provider], r->out_trade_no, r->txn,
	    r->p->conf->payments_answer_within_ms);
	pay_answer(r, 503, "database busy, retry");
}

static void
pay_recorded(void *arg, PGresult *res, const char *err)
{
	struct pay_req *r = arg;
	const char *outcome, *meter, *cmd, *bal, *note;
	char yuan[32];
	bool late = r->req == NULL;

	r->in_db = false;
	pay_format_fen(r->fen, yuan, sizeof yuan);
	if (res == NULL || err != NULL) {
		log_ratelimited(LOG_LVL_WARN, "pay-db", 10,
		    "payments: %s out_trade_no=%s transaction=%s: %s: %s",
		    pay_provider_names[r->provider], r->out_trade_no, r->txn,
		    res == NULL ? "outcome unknown (connection lost)" : "SQL error",
		    err != NULL ? err : "?");
		if (!late) {
			metrics.pay_unavailable++;
			pay_answer(r, res == NULL ? 503 : 500, "database error, retry");
		}
		if (res != NULL) {
			/* The database refused a verified payment: keep it for the
			 * operator while the provider retries. */
			char why[300];

			snprintf(why, sizeof why, "recording failed: %s", err != NULL ? err : "?");
			pay_audit(r, "-", 500, why, true);
		}
		pay_req_free(r);
		return;
	}
	if (PQntuples(res) == 1 && PQnfields(res) == 6) {
		/* a payment: outcome, payment_id, meter_id, command_id, balance,
		 * and why a tripped meter was left off */
		outcome = PQgetvalue(res, 0, 0);
		meter = PQgetisnull(res, 0, 2) ? "-" : PQgetvalue(res, 0, 2);
		cmd = PQgetisnull(res, 0, 3) ? NULL : PQgetvalue(res, 0, 3);
		bal = PQgetisnull(res, 0, 4) ? "-" : PQgetvalue(res, 0, 4);
		note = PQgetisnull(res, 0, 5) ? NULL : PQgetvalue(res, 0, 5);
		if (strcmp(outcome, "credited") == 0) {
			metrics.pay_credited++;
			if (cmd != NULL) {
				metrics.pay_rearmed++;
				if (r->p->hooks.on_command != NULL)
					r->p->hooks.on_command(r->p->hooks.arg);
			}
			/* The occupant's message, or one the ladder queued in
			 * the same transaction. */
			if (r->p->hooks.on_message != NULL)
				r->p->hooks.on_message(r->p->hooks.arg);
			log_info("payments: %s out_trade_no=%s transaction=%s %s yuan credited to "
			         "meter %s (balance %s)%s%s%s%s%s",
			    pay_provider_names[r->provider], r->out_trade_no, r->txn, yuan, meter,
			    bal, cmd != NULL ? "; " : "", cmd != NULL ? "restore command " : "",
			    cmd != NULL ? cmd : "", note != NULL ? "; " : "",
			    note != NULL ? note : "");
		} else if (strcmp(outcome, "duplicate") == 0) {
			metrics.pay_duplicate++;
			log_debug("payments: %s transaction=%s repeated: already recorded",
			    pay_provider_names[r->provider], r->txn);
		} else {
			metrics.pay_held++;
			log_warn("payments: %s out_trade_no=%s transaction=%s %s yuan held as %s "
			         "(see prepaid.payments_unreconciled)",
			    pay_provider_names[r->provider], r->out_trade_no, r->txn, yuan,
			    outcome);
		}
	} else {
		/* a notice (refund, close): recorded, never credited */
		metrics.pay_notices++;
		log_info("payments: %s out_trade_no=%s transaction=%s: notice recorded, nothing "
		         "credited",
		    pay_provider_names[r->provider], r->out_trade_no, r->txn);
	}
	if (late)
		log_info("payments: %s transaction=%s committed after its 503; the retry will be "
		         "answered success",
		    pay_provider_names[r->provider], r->txn);
	else
		pay_answer(r, r->provider == PAY_WECHAT ? 204 : 200, "OK");
	pay_req_free(r);
}

/* Send the recording query; the answer waits for its commit. */
static void
pay_submit(struct pay_req *r, const char *sql, int n, const char *const *params)
{
	struct payments *p = r->p;
	struct pgconn *pc = pay_pick(p);
	struct timeval tv;

	if (pc == NULL) {
		metrics.pay_unavailable++;
		log_ratelimited(LOG_LVL_WARN, "pay-down", 10,
		    "payments: %s out_trade_no=%s transaction=%s: PostgreSQL is not connected: "
		    "503 (the provider retries)",
		    pay_provider_names[r->provider], r->out_trade_no, r->txn);
		pay_answer(r, 503, "database unavailable, retry");
		return;
	}
	r->in_db = true;
	tv.tv_sec = p->conf->payments_answer_within_ms / 1000;
	tv.tv_usec = (p->conf->payments_answer_within_ms % 1000) * 1000;
	r->timer = evtimer_new(p->base, pay_timeout, r);
	evtimer_add(r->timer, &tv);
	pgconn_query(pc, sql, n, params, pay_recorded, r);
}

static const char pay_record_sql[] =
    "SELECT outcome, payment_id, meter_id, command_id, round(balance, 2), rearm_note "
    "FROM prepaid_internal.record_payment($1, $2, $3, $4::bigint, $5, $6, $7::timestamptz, "
    "$8::timestamptz, $9::boolean, $10::boolean)";
static const char pay_notice_sql[] = "SELECT prepaid_internal.record_payment_notice($1, $2, $3, "
                                     "$4, $5, $6, $7::bigint, $8::timestamptz)";

static void
pay_record(struct pay_req *r, const char *status, const char *notify_id, const char *paid_at)
{
	char fen[24], at[40];
	const char *params[10];

	snprintf(fen, sizeof fen, "%" PRId64, r->fen);
	pay_format_utc(r->t0_us, at, sizeof at);
	params[0] = pay_provider_names[r->provider];
	params[1] = r->txn;
	params[2] = r->out_trade_no;
	params[3] = fen;
	params[4] = status;
	params[5] = notify_id;
	params[6] = pay_time_ok(paid_at) ? paid_at : NULL;
	params[7] = at;
	params[8] = r->p->conf->payments_notify_occupant ? "true" : "false";
	params[9] = r->p->hooks.on_command != NULL ? "true" : "false";
	pay_submit(r, pay_record_sql, 10, params);
}

static void
pay_notice(struct pay_req *r, const char *kind, const char *status, const char *notify_id)
{
	char fen[24], at[40];
	const char *params[8];

	snprintf(fen, sizeof fen, "%" PRId64, r->fen);
	pay_format_utc(r->t0_us, at, sizeof at);
	params[0] = pay_provider_names[r->provider];
	params[1] = kind;
	params[2] = r->txn[0] ? r->txn : NULL;
	params[3] = r->out_trade_no[0] ? r->out_trade_no : NULL;
	params[4] = notify_id;
	params[5] = status;
	params[6] = r->fen >= 0 ? fen : NULL;
	params[7] = at;
	pay_submit(r, pay_notice_sql, 8, params);
}

/* ------------------------------------------------------------ WeChat */

static int
pay_status_of(int rc)
{
	switch (rc) {
	case PAY_ESERIAL:
	case PAY_ESIG:
	case PAY_ESTALE:
		return 401;
	default:
		return 400;
	}
}

/* Act on a classified notification (payverify.c). */
static void
pay_act(struct pay_req *r, const struct pay_class *c)
{
	snprintf(r->out_trade_no, sizeof r->out_trade_no, "%s", c->out_trade_no);
	snprintf(r->txn, sizeof r->txn, "%s", c->txn);
	r->fen = c->fen;
	switch (c->action) {
	case PAY_RECORD:
		pay_record(r, c->status, c->notify_id, c->paid_at);
		break;
	case PAY_NOTICE:
		pay_notice(r, c->kind, c->status, c->notify_id);
		break;
	case PAY_REFUSE:
		pay_refuse(r, c->http_status, c->reason, c->audited);
		break;
	}
}

static void
pay_wechat_handle(struct pay_req *r, const char *body, size_t len)
{
	struct payments *p = r->p;
	const struct conf *c = p->conf;
	struct evkeyvalq *h = evhttp_request_get_input_headers(r->req);
	struct pay_wechat_envelope env;
	struct pay_class cls;
	const char *v;
	char why[256], msg[400];
	char *plain = NULL;
	size_t plen = 0;
	int rc;

	memset(&env, 0, sizeof env);
	/* Absent means the default (the SDKs assume it); anything else is not
	 * an algorithm we verify. */
	if ((v = evhttp_find_header(h, "Wechatpay-Signature-Type")) != NULL &&
	    strcmp(v, "WECHATPAY2-SHA256-RSA2048") != 0) {
		pay_refuse(r, 400, "unsupported Wechatpay-Signature-Type", false);
		return;
	}
	rc = pay_wechat_verify(p->keys.wx, evhttp_find_header(h, "Wechatpay-Serial"),
	    evhttp_find_header(h, "Wechatpay-Timestamp"), evhttp_find_header(h, "Wechatpay-Nonce"),
	    evhttp_find_header(h, "Wechatpay-Signature"), body, len, now_wall_us() / 1000000,
	    c->payments_wechat_max_skew, why, sizeof why);
	if (rc == PAY_ESERIAL &&
	    pay_serial_printable(v = evhttp_find_header(h, "Wechatpay-Serial"))) {
		/* Rotation: name the key WeChat Pay now signs with. */
		snprintf(msg, sizeof msg,
		    "Wechatpay-Serial %s names no configured key (add its "
		    "certificate to wechat_platform_certs, or its public key)",
		    v);
		pay_refuse(r, 401, msg, false);
		goto out;
	}
	if (rc != PAY_OK) {
		pay_refuse(r, pay_status_of(rc), why, false);
		goto out;
	}
	if ((rc = pay_wechat_envelope_parse(body, len, &env, why, sizeof why)) != PAY_OK ||
	    (rc = pay_wechat_decrypt(p->keys.apiv3, &env, &plain, &plen, why, sizeof why)) !=
	        PAY_OK) {
		snprintf(msg, sizeof msg, "%s%s",
		    rc == PAY_EDECRYPT
		        ? "signed by WeChat Pay but not decryptable (check wechat_apiv3_key_file): "
		        : "",
		    why);
		pay_refuse(r, 400, msg, false);
		goto out;
	}
	pay_wechat_classify(
	    &env, plain, plen, c->payments_wechat_mchid, c->payments_wechat_appids, &cls);
	pay_act(r, &cls);
	pay_class_free(&cls);
out:
	free(plain);
	pay_wechat_envelope_free(&env);
}

/* ------------------------------------------------------------ Alipay */

static void
pay_alipay_handle(struct pay_req *r, const char *body, size_t len)
{
	struct payments *p = r->p;
	const struct conf *c = p->conf;
	struct evkeyvalq *h = evhttp_request_get_input_headers(r->req);
	const char *ct = evhttp_find_header(h, "Content-Type");
	struct pay_form f;
	struct pay_class cls;
	char why[256];
	int rc;

	memset(&f, 0, sizeof f);
	if (ct == NULL || strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0) {
		pay_refuse(r, 415, "not application/x-www-form-urlencoded", false);
		return;
	}
	if ((rc = pay_form_parse(body, len, &f, why, sizeof why)) != PAY_OK) {
		pay_refuse(r, 400, why, false);
		goto out;
	}
	if ((rc = pay_alipay_verify(&f, p->keys.ali, why, sizeof why)) != PAY_OK) {
		pay_refuse(r, rc == PAY_ESIG ? 401 : 400, why, false);
		goto out;
	}
	/* Verified: from here the fields are Alipay's. */
	pay_alipay_classify(&f, c->payments_alipay_app_id, c->payments_alipay_seller_id, &cls);
	pay_act(r, &cls);
	pay_class_free(&cls);
out:
	pay_form_free(&f);
}

/* ------------------------------------------------------------ routes */

static void
pay_route(struct evhttp_request *req, struct payments *p, enum pay_provider prov)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	struct pay_req *r = xcalloc(1, sizeof *r);
	const char *body;

	r->p = p;
	r->req = req;
	r->provider = prov;
	r->t0_us = now_wall_us();
	r->t0_mono_us = now_mono_us();
	r->fen = -1;
	r->next = p->pending;
	if (p->pending != NULL)
		p->pending->prev = r;
	p->pending = r;
	p->npending++;
	body = (const char *)evbuffer_pullup(in, -1);
	if (body == NULL)
		body = "";
	if (p->stopping) {
		metrics.pay_unavailable++;
		pay_answer(r, 503, "shutting down, retry");
	} else if (prov == PAY_WECHAT)
		pay_wechat_handle(r, body, len);
	else
		pay_alipay_handle(r, body, len);
	if (!r->in_db)
		pay_req_free(r);
}

static void
pay_wechat_cb(struct evhttp_request *req, void *arg)
{
	pay_route(req, arg, PAY_WECHAT);
}

static void
pay_alipay_cb(struct evhttp_request *req, void *arg)
{
	pay_route(req, arg, PAY_ALIPAY);
}

/* ---------------------------------------------------------- lifecycle */

static void
pay_connected(void *arg, struct pgconn *pc)
{
	UNUSED(arg);
	/* A payment's commit waits for its WAL whatever the server's default. */
	pgconn_query_front(pc, "SET synchronous_commit = on", 0, NULL, NULL, NULL);
}

static void
pay_lost(void *arg, struct pgconn *pc, const char *why)
{
	UNUSED(arg);
	UNUSED(pc);
	log_ratelimited(LOG_LVL_WARN, "pay-lost", 30,
	    "payments: PostgreSQL connection lost: %s (callbacks answered 503 meanwhile)", why);
}

struct payments *
payments_new(
    struct event_base *base, struct httpd *httpd, const struct conf *conf, char *err, size_t errlen)
{
	struct payments *p = xcalloc(1, sizeof *p);
	struct pgconn_handlers ph;
	int i;

	p->base = base;
	p->conf = conf;
	if (pay_keys_load(conf, &p->keys, err, errlen) != 0) {
		pay_keys_free(&p->keys);
		free(p);
		return NULL;
	}
	if (conf->payments_wechat_path == NULL && conf->payments_alipay_path == NULL)
		return p;
	if (httpd == NULL) {
		snprintf(err, errlen,
		    "%s: payment callbacks need the HTTP listener "
		    "([http] enabled = true)",
		    conf->path);
		pay_keys_free(&p->keys);
		free(p);
		return NULL;
	}
	memset(&ph, 0, sizeof ph);
	ph.on_connect = pay_connected;
	ph.on_disconnect = pay_lost;
	ph.arg = p;
	p->npg = conf->payments_connections;
	p->pg = xcalloc((size_t)p->npg, sizeof *p->pg);
	for (i = 0; i < p->npg; i++)
		p->pg[i] = pgconn_new(base, "payments", conf->database_conninfo,
		    conf->database_reconnect_max_ms, &ph);
	if (conf->payments_wechat_path != NULL) {
		httpd_route_post(httpd, conf->payments_wechat_path, pay_wechat_cb, p);
		log_info("payments: WeChat Pay callbacks on %s (merchant %s, %zu key(s))",
		    conf->payments_wechat_path, conf->payments_wechat_mchid,
		    pay_keyring_count(p->keys.wx));
	}
	if (conf->payments_alipay_path != NULL) {
		httpd_route_post(httpd, conf->payments_alipay_path, pay_alipay_cb, p);
		log_info("payments: Alipay notifications on %s (app %s)",
		    conf->payments_alipay_path, conf->payments_alipay_app_id);
	}
	return p;
}

void
payments_reconfigure(struct payments *p, const struct conf *conf)
{
	struct pay_keys k;
	char err[512];
	int i;

	if (pay_keys_load(conf, &k, err, sizeof err) != 0) {
		log_error("payments: %s; the previous keys stay in use", err);
		pay_keys_free(&k);
	} else {
		pay_keys_free(&p->keys);
		p->keys = k;
	}
	p->conf = conf;
	for (i = 0; i < p->npg; i++)
		pgconn_set_conninfo(p->pg[i], conf->database_conninfo);
}

void
payments_set_hooks(struct payments *p, const struct payments_hooks *h)
{
	p->hooks = *h;
}

void
payments_stop(struct payments *p)
{
	p->stopping = true;
}

int
payments_pending(const struct payments *p)
{
	return p != NULL ? p->npending : 0;
}

void
payments_free(struct payments *p)
{
	int i;

	if (p == NULL)
		return;
	while (p->pending != NULL) {
		struct pay_req *r = p->pending;

		pay_answer(r, 503, "shutting down, retry");
		pay_req_free(r);
	}
	for (i = 0; i < p->npg; i++)
		pgconn_free(p->pg[i]);
	free(p->pg);
	pay_keys_free(&p->keys);
	free(p);
}
