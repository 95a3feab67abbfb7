/*
 * conf.c: reading and checking prepaidd.conf. The table conf_key_table is
 * the one list of keys: the parser, the defaults, the range checks, the
 * reload rules (conf_needs_restart), `prepaidd -n` and the docs-drift test
 * all walk it, so a key added here and nowhere else fails `make check` until
 * the sample config and the manual describe it. Loading is all or nothing: a
 * file is parsed completely into a new struct conf, and the first error
 * returns NULL with "FILE:LINE: section.key: what is wrong", so a bad reload
 * never touches the running configuration. Notification gateways are
 * repeatable [gateway NAME] sections with a table of their own,
 * conf_gateway_table, which drives them the same way; every template in
 * them is parsed here against the dispatcher's placeholders, so a typo in
 * a body fails `prepaidd -n` with its line and offset rather than the
 * first reminder.
 */
#include <sys/stat.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common.h"
#include "conf.h"
#include "paypage.h"

/* Longest line accepted; far beyond any sane conninfo. */
#define CONF_LINE_MAX 4096
/* Largest password file; a password is a line, not a document. */
#define CONF_SECRET_MAX 1024
/* mosquitto accepts long ids, but an id this long is a mistake. */
#define CONF_CLIENT_ID_MAX 128

#define O(field) offsetof(struct conf, field)

static const struct conf_key conf_key_table[] = {
    /* section, name, type, default, min, max, reloadable, field, help,
       choices, repeat */
    {"database", "conninfo", CONF_STRING, "dbname=prepaid", 0, 0, true, O(database_conninfo),
        "libpq connection string or URI", NULL, 0},
    {"database", "reconnect_max_ms", CONF_INT, "30000", 1000, 600000, true,
        O(database_reconnect_max_ms), "cap of the reconnect backoff, milliseconds", NULL, 0},

    {"mqtt", "host", CONF_STRING, "localhost", 0, 0, false, O(mqtt_host),
        "broker host name or address", NULL, 0},
    {"mqtt", "port", CONF_INT, "1883", 1, 65535, false, O(mqtt_port), "broker TCP port", NULL, 0},
    {"mqtt", "client_id", CONF_STRING, "prepaidd", 0, 0, false, O(mqtt_client_id),
        "stable client id, unique per instance", NULL, 0},
    {"mqtt", "username", CONF_STRING, NULL, 0, 0, false, O(mqtt_username),
        "user name for the broker (unset: none)", NULL, 0},
    {"mqtt", "password_file", CONF_FILE, NULL, 0, 0, false, O(mqtt_password_file),
        "file holding the broker password", NULL, 0},
    {"mqtt", "tls_ca", CONF_FILE, NULL, 0, 0, false, O(mqtt_tls_ca),
        "CA certificate file; TLS is on when set", NULL, 0},
    {"mqtt", "tls_cert", CONF_FILE, NULL, 0, 0, false, O(mqtt_tls_cert),
        "client certificate file (with tls_key)", NULL, 0},
    {"mqtt", "tls_key", CONF_FILE, NULL, 0, 0, false, O(mqtt_tls_key),
        "client private key file (with tls_cert)", NULL, 0},
    {"mqtt", "topic_prefix", CONF_STRING, "meters", 0, 0, false, O(mqtt_topic_prefix),
        "first topic levels before <meter id>", NULL, 0},
    {"mqtt", "qos", CONF_INT, "1", 0, 2, false, O(mqtt_qos), "QoS of subscriptions and commands",
        NULL, 0},
    {"mqtt", "keepalive", CONF_INT, "30", 5, 3600, false, O(mqtt_keepalive),
        "MQTT keepalive, seconds", NULL, 0},
    {"mqtt", "shared_group", CONF_STRING, NULL, 0, 0, false, O(mqtt_shared_group),
        "share readings via $share/<group>/ (unset: off)", NULL, 0},
    {"mqtt", "reconnect_max_ms", CONF_INT, "30000", 1000, 600000, true, O(mqtt_reconnect_max_ms),
        "cap of the reconnect backoff, milliseconds", NULL, 0},

    {"mqtt", "session_resend_hours", CONF_INT, "24", 1, 8760, true, O(mqtt_session_resend_hours),
        "session lost: ask meters seen within this many hours to resend", NULL, 0},
    {"mqtt", "session_resend_rate", CONF_INT, "50", 1, 100000, true, O(mqtt_session_resend_rate),
        "session lost: resend requests per second", NULL, 0},

    {"ingest", "batch_size", CONF_INT, "1000", 1, 50000, true, O(ingest_batch_size),
        "readings written per database round trip", NULL, 0},
    {"ingest", "batch_window_ms", CONF_INT, "50", 1, 10000, true, O(ingest_batch_window_ms),
        "flush a partial batch after, milliseconds", NULL, 0},
    {"ingest", "queue_bound", CONF_INT, "20000", 100, 10000000, false, O(ingest_queue_bound),
        "items held before reading from MQTT stops", NULL, 0},
    {"ingest", "max_payload_bytes", CONF_INT, "65536", 256, 16777216, true,
        O(ingest_max_payload_bytes), "larger payloads are rejected, bytes", NULL, 0},
    {"ingest", "auto_register", CONF_BOOL, "true", 0, 0, true, O(ingest_auto_register),
        "register unknown meters instead of rejecting", NULL, 0},
    {"ingest", "resend_on_gap", CONF_BOOL, "true", 0, 0, true, O(ingest_resend_on_gap),
        "ask a meter to resend after a sequence gap", NULL, 0},
    {"ingest", "reject_log_interval", CONF_INT, "60", 1, 86400, true, O(ingest_reject_log_interval),
        "seconds between reject log lines per meter", NULL, 0},
    {"ingest", "rejects_keep", CONF_INT, "10000", 100, 10000000, true, O(ingest_rejects_keep),
        "rows kept in prepaid.rejects", NULL, 0},
    {"ingest", "partitions_ahead", CONF_INT, "3", 1, 24, true, O(ingest_partitions_ahead),
        "months of reading partitions made ahead", NULL, 0},
    {"ingest", "connections", CONF_INT, "2", 1, 16, false, O(ingest_connections),
        "PostgreSQL connections writing batches, meters routed by hash", NULL, 0},

    {"journal", "enabled", CONF_BOOL, "true", 0, 0, false, O(journal_enabled),
        "journal every message before queueing (off: unsafe, benchmarks only)", NULL, 0},
    {"journal", "directory", CONF_STRING, "/var/lib/prepaidd/journal", 0, 0, false,
        O(journal_directory), "directory of the journal's segment files", NULL, 0},
    {"journal", "sync_ms", CONF_INT, "50", 1, 10000, true, O(journal_sync_ms),
        "fdatasync the journal at most this often, milliseconds", NULL, 0},
    {"journal", "max_mb", CONF_INT, "1024", 1, 1048576, false, O(journal_max_mb),
        "journal size bound, MiB (reading pauses at 3/4)", NULL, 0},

    {"commands", "retry_initial_ms", CONF_INT, "5000", 100, 3600000, true,
        O(commands_retry_initial_ms), "first resend of an unacknowledged command", NULL, 0},
    {"commands", "retry_max_ms", CONF_INT, "60000", 100, 3600000, true, O(commands_retry_max_ms),
        "cap of the resend backoff, milliseconds", NULL, 0},
    {"commands", "poll_interval_ms", CONF_INT, "1000", 50, 60000, true,
        O(commands_poll_interval_ms), "outbox poll behind NOTIFY, milliseconds", NULL, 0},
    {"commands", "claim_batch", CONF_INT, "100", 1, 10000, true, O(commands_claim_batch),
        "commands claimed per round trip", NULL, 0},

    {"http", "enabled", CONF_BOOL, "true", 0, 0, false, O(http_enabled),
        "serve /metrics and /healthz", NULL, 0},
    {"http", "listen", CONF_STRING, "127.0.0.1", 0, 0, false, O(http_listen),
        "address the HTTP endpoint listens on", NULL, 0},
    {"http", "port", CONF_INT, "9187", 1, 65535, false, O(http_port),
        "port the HTTP endpoint listens on", NULL, 0},

    {"http", "max_connections", CONF_INT, "256", 1, 100000, false, O(http_max_connections),
        "connections served at once; more are closed", NULL, 0},
    {"http", "max_connections_per_address", CONF_INT, "32", 0, 100000, true,
        O(http_max_connections_per_address),
        "connections of one address still sending their request; 0: no cap", NULL, 0},
    {"http", "header_deadline_ms", CONF_INT, "5000", 100, 600000, true, O(http_header_deadline_ms),
        "a request head must arrive whole within, milliseconds", NULL, 0},
    {"http", "deadline_ms", CONF_INT, "10000", 100, 600000, true, O(http_deadline_ms),
        "a request must arrive whole within, milliseconds", NULL, 0},
    {"http", "max_body_bytes", CONF_INT, "65536", 1024, 16777216, false, O(http_max_body_bytes),
        "largest request body, bytes (413 past it)", NULL, 0},
    {"http", "max_headers", CONF_INT, "64", 8, 1000, true, O(http_max_headers),
        "most request header lines (431 past it)", NULL, 0},

    {"payments", "connections", CONF_INT, "4", 1, 16, false, O(payments_connections),
        "PostgreSQL connections for payment callbacks", NULL, 0},
    {"payments", "answer_within_ms", CONF_INT, "4000", 100, 60000, true,
        O(payments_answer_within_ms), "answer 503 if the database takes longer, milliseconds", NULL,
        0},
    {"payments", "notify_occupant", CONF_BOOL, "true", 0, 0, true, O(payments_notify_occupant),
        "queue a \"payment received\" SMS and e-mail", NULL, 0},
    {"payments", "wechat_path", CONF_STRING, NULL, 0, 0, false, O(payments_wechat_path),
        "WeChat Pay v3 callback path (unset: off)", NULL, 0},
    {"payments", "wechat_mchid", CONF_STRING, NULL, 0, 0, true, O(payments_wechat_mchid),
        "our WeChat Pay merchant id", NULL, 0},
    {"payments", "wechat_appids", CONF_STRING, NULL, 0, 0, true, O(payments_wechat_appids),
        "accepted appids, separated by spaces", NULL, 0},
    {"payments", "wechat_apiv3_key_file", CONF_FILE, NULL, 0, 0, true,
        O(payments_wechat_apiv3_key_file), "file holding the 32-character APIv3 key", NULL, 0},
    {"payments", "wechat_platform_certs", CONF_STRING, NULL, 0, 0, true,
        O(payments_wechat_platform_certs), "platform certificate files (PEM), separated by spaces",
        NULL, 0},
    {"payments", "wechat_public_key_id", CONF_STRING, NULL, 0, 0, true,
        O(payments_wechat_public_key_id), "PUB_KEY_ID_... of wechat_public_key_file", NULL, 0},
    {"payments", "wechat_public_key_file", CONF_FILE, NULL, 0, 0, true,
        O(payments_wechat_public_key_file), "WeChat Pay public key file (PEM)", NULL, 0},
    {"payments", "wechat_max_skew", CONF_INT, "300", 10, 3600, true, O(payments_wechat_max_skew),
        "seconds a Wechatpay-Timestamp may be off", NULL, 0},
    {"payments", "alipay_path", CONF_STRING, NULL, 0, 0, false, O(payments_alipay_path),
        "Alipay notification path (unset: off)", NULL, 0},
    {"payments", "alipay_app_id", CONF_STRING, NULL, 0, 0, true, O(payments_alipay_app_id),
        "our Alipay app_id", NULL, 0},
    {"payments", "alipay_seller_id", CONF_STRING, NULL, 0, 0, true, O(payments_alipay_seller_id),
        "our seller_id (2088...); unset: not checked", NULL, 0},
    {"payments", "alipay_public_key_file", CONF_FILE, NULL, 0, 0, true,
        O(payments_alipay_public_key_file), "the Alipay public key file (PEM)", NULL, 0},
    {"payments", "wechat_merchant_key_file", CONF_FILE, NULL, 0, 0, true,
        O(payments_wechat_merchant_key_file),
        "merchant API private key (PEM); unset: no WeChat Pay calls", NULL, 0},
    {"payments", "wechat_merchant_serial", CONF_STRING, NULL, 0, 0, true,
        O(payments_wechat_merchant_serial), "serial number of the merchant API certificate", NULL,
        0},
    {"payments", "wechat_api_url", CONF_STRING, "https://api.mch.weixin.qq.com", 0, 0, true,
        O(payments_wechat_api_url), "WeChat Pay API base URL", NULL, 0},
    {"payments", "wechat_notify_url", CONF_STRING, NULL, 0, 0, true, O(payments_wechat_notify_url),
        "public https URL of wechat_path, sent with each order", NULL, 0},
    {"payments", "alipay_app_key_file", CONF_FILE, NULL, 0, 0, true,
        O(payments_alipay_app_key_file), "Alipay app private key (PEM); unset: no Alipay calls",
        NULL, 0},
    {"payments", "alipay_gateway_url", CONF_STRING, "https://openapi.alipay.com/gateway.do", 0, 0,
        true, O(payments_alipay_gateway_url), "Alipay OpenAPI gateway URL", NULL, 0},
    {"payments", "alipay_notify_url", CONF_STRING, NULL, 0, 0, true, O(payments_alipay_notify_url),
        "public https URL of alipay_path, sent with each order", NULL, 0},
    {"payments", "api_timeout_ms", CONF_INT, "10000", 1000, 120000, true,
        O(payments_api_timeout_ms), "timeout of one call to a provider, milliseconds", NULL, 0},
    {"payments", "query_after", CONF_STRING, "60 300 900 3600", 0, 0, true, O(payments_query_after),
        "seconds after creation a pending order is queried, ascending", NULL, 0},
    {"payments", "query_retry_s", CONF_INT, "60", 1, 86400, true, O(payments_query_retry_s),
        "a provider call left unanswered is tried again after, seconds", NULL, 0},
    {"payments", "query_poll_s", CONF_INT, "10", 1, 3600, true, O(payments_query_poll_s),
        "how often due orders and refunds are looked for, seconds", NULL, 0},
    {"payments", "reconcile_at", CONF_STRING, "10:30", 0, 0, true, O(payments_reconcile_at),
        "Beijing time of day the previous day's bills are compared (HH:MM)", NULL, 0},
    {"payments", "wechat_app_secret_file", CONF_FILE, NULL, 0, 0, true,
        O(payments_wechat_app_secret_file),
        "the Official Account's AppSecret, for the pay page's openid step; unset: no JSAPI", NULL,
        0},
    {"payments", "wechat_authorize_url", CONF_STRING,
        "https://open.weixin.qq.com/connect/oauth2/authorize", 0, 0, true,
        O(payments_wechat_authorize_url), "WeChat's OAuth2 authorize page (the openid step)", NULL,
        0},
    {"payments", "wechat_oauth_api_url", CONF_STRING, "https://api.weixin.qq.com", 0, 0, true,
        O(payments_wechat_oauth_api_url), "base URL where the openid step's code is exchanged",
        NULL, 0},
    {"payments", "rejects_keep", CONF_INT, "100000", 100, 100000000, true, O(payments_rejects_keep),
        "unverified refusals kept in prepaid.payment_rejects", NULL, 0},

    {"paypage", "path", CONF_STRING, NULL, 0, 0, false, O(paypage_path),
        "the pay page's path prefix, e.g. /p (unset: off)", NULL, 0},
    {"paypage", "public_url", CONF_STRING, NULL, 0, 0, true, O(paypage_public_url),
        "scheme://host the occupants reach the page at (the links)", NULL, 0},
    {"paypage", "amounts", CONF_STRING, "20 50 100 200", 0, 0, true, O(paypage_amounts),
        "amount buttons in yuan, separated by spaces", NULL, 0},
    {"paypage", "usage_days", CONF_INT, "7", 1, 31, true, O(paypage_usage_days),
        "days of use the page shows", NULL, 0},
    {"paypage", "connections", CONF_INT, "2", 1, 16, false, O(paypage_connections),
        "PostgreSQL connections for the pay page", NULL, 0},
    {"paypage", "answer_within_ms", CONF_INT, "3000", 100, 60000, true, O(paypage_answer_within_ms),
        "show the busy page if the database takes longer", NULL, 0},
    {"paypage", "rate_per_minute", CONF_INT, "30", 1, 1000000, true, O(paypage_rate_per_minute),
        "requests a minute per client address (429 past it)", NULL, 0},
    {"paypage", "rate_burst", CONF_INT, "10", 1, 1000000, true, O(paypage_rate_burst),
        "requests a client address may make at once", NULL, 0},
    {"paypage", "trusted_proxies", CONF_STRING, "127.0.0.1 ::1", 0, 0, true,
        O(paypage_trusted_proxies), "peers whose X-Forwarded-For names the client", NULL, 0},
    {"paypage", "order_valid_minutes", CONF_INT, "30", 1, 1440, true,
        O(paypage_order_valid_minutes), "how long an order from the page may be paid", NULL, 0},
    {"paypage", "stub_handoff_url", CONF_STRING, NULL, 0, 0, true, O(paypage_stub_handoff_url),
        "tests and demos: a stand-in cashier orders are sent to", NULL, 0},

    {"log", "level", CONF_STRING, "info", 0, 0, true, O(log_level), "error, warning, info or debug",
        NULL, 0},
};

static const char *conf_log_levels[] = {"error", "warning", "info", "debug"};

#define G(field) offsetof(struct conf_gateway, field)

/* In the order of the enums in conf.h: the stored value is the index. */
static const char *const conf_gw_channels[] = {"sms", "email", NULL};
static const char *const conf_gw_types[] = {"http", "smtp", NULL};
static const char *const conf_gw_methods[] = {"POST", "GET", "PUT", NULL};
static const char *const conf_gw_escapes[] = {"json", "form", "raw", NULL};
static const char *const conf_gw_auths[] = {"none", "basic", "bearer", "header", NULL};
static const char *const conf_gw_signers[] = {"none", "aliyun", "tencent", NULL};

/*
 * The keys of a [gateway NAME] section. All are reloadable: a SIGHUP
 * replaces the whole set of gateways. Defaults that depend on other keys
 * (content_type, region, action, api_version, service) are NULL here and
 * filled in by conf_gw_finish.
 */
static const struct conf_key conf_gateway_table[] = {
    {"gateway", "channel", CONF_ENUM, NULL, 0, 0, true, G(channel), "sms or email (required)",
        conf_gw_channels, 0},
    {"gateway", "type", CONF_ENUM, "http", 0, 0, true, G(type), "http or smtp", conf_gw_types, 0},
    {"gateway", "url", CONF_TEMPLATE, NULL, 0, 0, true, G(url),
        "request URL template, http(s):// or smtp(s):// (required)", NULL, 0},
    {"gateway", "method", CONF_ENUM, "POST", 0, 0, true, G(method), "POST, GET or PUT",
        conf_gw_methods, 0},
    {"gateway", "header", CONF_TEMPLATE, NULL, 0, 0, true, G(header_value),
        "\"Name: value\" request header, value a template; repeatable", NULL, CONF_GW_HEADERS_MAX},
    {"gateway", "body", CONF_TEMPLATE, NULL, 0, 0, true, G(body), "body template, one line", NULL,
        0},
    {"gateway", "body_file", CONF_FILE, NULL, 0, 0, true, G(body_file),
        "file holding the body template, read at load", NULL, 0},
    {"gateway", "escape", CONF_ENUM, "json", 0, 0, true, G(escape),
        "json, form or raw: how body placeholders are escaped", conf_gw_escapes, 0},
    {"gateway", "content_type", CONF_STRING, NULL, 0, 0, true, G(content_type),
        "Content-Type of the body (default from escape)", NULL, 0},
    {"gateway", "auth", CONF_ENUM, "none", 0, 0, true, G(auth), "none, basic, bearer or header",
        conf_gw_auths, 0},
    {"gateway", "username", CONF_STRING, NULL, 0, 0, true, G(username),
        "user name for basic auth or the SMTP login", NULL, 0},
    {"gateway", "secret_file", CONF_FILE, NULL, 0, 0, true, G(secret_file),
        "file holding the password, token or key", NULL, 0},
    {"gateway", "auth_header", CONF_STRING, NULL, 0, 0, true, G(auth_header),
        "header that carries the secret for auth = header", NULL, 0},
    {"gateway", "signer", CONF_ENUM, "none", 0, 0, true, G(signer),
        "none, aliyun or tencent: built-in request signature", conf_gw_signers, 0},
    {"gateway", "access_key_id", CONF_STRING, NULL, 0, 0, true, G(access_key_id),
        "AccessKeyId (aliyun) or SecretId (tencent)", NULL, 0},
    {"gateway", "region", CONF_STRING, NULL, 0, 0, true, G(region),
        "region (aliyun default cn-hangzhou, tencent required)", NULL, 0},
    {"gateway", "action", CONF_STRING, NULL, 0, 0, true, G(action),
        "API action for a signer (default SendSms)", NULL, 0},
    {"gateway", "api_version", CONF_STRING, NULL, 0, 0, true, G(api_version),
        "API version for a signer", NULL, 0},
    {"gateway", "service", CONF_STRING, NULL, 0, 0, true, G(service),
        "tencent service name (default sms)", NULL, 0},
    {"gateway", "success_status", CONF_STRING, "200,201,202", 0, 0, true, G(success_status),
        "HTTP codes that mean sent, comma-separated", NULL, 0},
    {"gateway", "success_field", CONF_STRING, NULL, 0, 0, true, G(success_field),
        "dot path into the JSON answer that must equal success_value", NULL, 0},
    {"gateway", "success_value", CONF_STRING, NULL, 0, 0, true, G(success_value),
        "value success_field must have", NULL, 0},
    {"gateway", "message_id_field", CONF_STRING, NULL, 0, 0, true, G(message_id_field),
        "dot path or header:Name of the provider's id", NULL, 0},
    {"gateway", "mail_from", CONF_STRING, NULL, 0, 0, true, G(mail_from),
        "sender address of an smtp gateway", NULL, 0},
    {"gateway", "timeout_ms", CONF_INT, "10000", 100, 120000, true, G(timeout_ms),
        "whole-request timeout, milliseconds", NULL, 0},
    {"gateway", "concurrency", CONF_INT, "4", 1, 64, true, G(concurrency),
        "requests in flight at once", NULL, 0},
    {"gateway", "max_attempts", CONF_INT, "5", 1, 20, true, G(max_attempts),
        "attempts per message, the first included", NULL, 0},
    {"gateway", "retry_initial_ms", CONF_INT, "2000", 100, 3600000, true, G(retry_initial_ms),
        "first retry delay, milliseconds", NULL, 0},
    {"gateway", "retry_max_ms", CONF_INT, "300000", 100, 3600000, true, G(retry_max_ms),
        "cap of the retry delay, milliseconds", NULL, 0},
};

/* What the notification dispatcher supplies to every gateway template. */
static const char *const conf_gw_placeholders[] = {"to", "text", "subject", "name", "meter",
    "balance", "amount_due", "link", "language", "message_id", "params_json", "timestamp", NULL};

/* A body template is a request, not a document. */
#define CONF_BODY_MAX 65536
/* Longest dot path or header name accepted in success and id rules. */
#define CONF_GW_PATH_MAX 128
#define CONF_GW_TOKEN_MAX 64

/* State of one conf_load: where errors go and on which line each key was set. */
struct conf_parse {
	const char *path;
	char *err;
	size_t errlen;
	struct conf *c;
	int lines[ARRAY_SIZE(conf_key_table)]; /* 0: still the default */

	/* The [gateway NAME] section being read, or NULL. */
	struct conf_gateway *gw;
	char gwlabel[48]; /* "gateway.NAME", for errors */
	/* Line of each gateway key (the first header), and of every header. */
	int gwlines[CONF_GATEWAYS_MAX][ARRAY_SIZE(conf_gateway_table)];
	int gwhdrlines[CONF_GATEWAYS_MAX][CONF_GW_HEADERS_MAX];
};

const struct conf_key *
conf_keys(size_t *n)
{
	if (n != NULL)
		*n = ARRAY_SIZE(conf_key_table);
	return conf_key_table;
}

static void *
conf_field(struct conf *c, const struct conf_key *k)
{
	return (char *)c + k->offset;
}

static const void *
conf_cfield(const struct conf *c, const struct conf_key *k)
{
	return (const char *)c + k->offset;
}

static bool
conf_is_string(const struct conf_key *k)
{
	return k->type == CONF_STRING || k->type == CONF_FILE || k->type == CONF_TEMPLATE;
}

/*
 * Write "PATH[:LINE][: SUBJECT]: message". The subject is "section.key"
 * (or a section or bare key when that is all there is).
 */
static void PRINTFLIKE(4, 5)
    conf_error(struct conf_parse *p, int line, const char *subject, const char *fmt, ...)
{
	char msg[512], where[32] = "";
	va_list ap;

	if (p->err == NULL || p->errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (line > 0)
		snprintf(where, sizeof where, ":%d", line);
	snprintf(p->err, p->errlen, "%s%s: %s%s%s", p->path, where, subject != NULL ? subject : "",
	    subject != NULL ? ": " : "", msg);
}

static void
conf_subject(char *buf, size_t len, const struct conf_key *k)
{
	snprintf(buf, len, "%s.%s", k->section, k->name);
}

static void
conf_key_error(struct conf_parse *p, int line, const struct conf_key *k, const char *why)
{
	char subject[96];

	conf_subject(subject, sizeof subject, k);
	conf_error(p, line, subject, "%s", why);
}

static const struct conf_key *
conf_find(const char *section, const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(conf_key_table); i++) {
		if (strcmp(conf_key_table[i].section, section) == 0 &&
		    strcmp(conf_key_table[i].name, name) == 0)
			return &conf_key_table[i];
	}
	return NULL;
}

/* The table's own spelling of a section, so the parser can keep a pointer. */
static const char *
conf_find_section(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(conf_key_table); i++) {
		if (strcmp(conf_key_table[i].section, name) == 0)
			return conf_key_table[i].section;
	}
	return NULL;
}

static void
conf_section_list(char *buf, size_t len)
{
	size_t i, off = 0;

	buf[0] = '\0';
	for (i = 0; i < ARRAY_SIZE(conf_key_table); i++) {
		const char *s = conf_key_table[i].section;
		int n;

		if (i > 0 && strcmp(conf_key_table[i - 1].section, s) == 0)
			continue;
		n = snprintf(buf + off, len - off, "%s%s", off > 0 ? ", " : "", s);
		if (n < 0 || (size_t)n >= len - off)
			return;
		off += (size_t)n;
	}
	snprintf(buf + off, len - off, ", gateway NAME");
}

static char *
conf_trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* Decimal only: an optional sign and digits, nothing else, not even spaces. */
static bool
conf_parse_int(const char *v, long *out)
{
	const char *s = v;
	char *end;

	if (*s == '+' || *s == '-')
		s++;
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++) {
		if (!isdigit((unsigned char)*s))
			return false;
	}
	errno = 0;
	*out = strtol(v, &end, 10);
	if (errno == ERANGE)
		*out = (*v == '-') ? LONG_MIN : LONG_MAX;
	return *end == '\0';
}

static bool
conf_parse_bool(const char *v, bool *out)
{
	static const char *yes[] = {"true", "yes", "on", "1"};
	static const char *no[] = {"false", "no", "off", "0"};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(yes); i++) {
		if (strcasecmp(v, yes[i]) == 0) {
			*out = true;
			return true;
		}
		if (strcasecmp(v, no[i]) == 0) {
			*out = false;
			return true;
		}
	}
	return false;
}

/*
 * Rules for particular string keys that the table's types cannot express.
 * Returns NULL if v is acceptable, else what is wrong.
 */
static const char *
conf_check_string(const struct conf_key *k, const char *v, char *why, size_t len)
{
	size_t i;

	switch (k->offset) {
	case O(mqtt_host):
	case O(http_listen):
	case O(journal_directory):
		if (*v == '\0')
			return "must not be empty";
		break;
	case O(mqtt_client_id):
		if (*v == '\0')
			return "must not be empty";
		if (strlen(v) > CONF_CLIENT_ID_MAX) {
			snprintf(why, len, "longer than %d characters", CONF_CLIENT_ID_MAX);
			return why;
		}
		break;
	case O(mqtt_topic_prefix):
		if (*v == '\0')
			return "must not be empty";
		if (strpbrk(v, "+#") != NULL)
			return "must not contain the wildcards '+' or '#'";
		if (v[0] == '/' || v[strlen(v) - 1] == '/')
			return "must not begin or end with '/'";
		break;
	case O(mqtt_shared_group):
		if (strpbrk(v, "/+#") != NULL)
			return "must not contain '/', '+' or '#'";
		break;
	case O(log_level):
		for (i = 0; i < ARRAY_SIZE(conf_log_levels); i++) {
			if (strcmp(v, conf_log_levels[i]) == 0)
				return NULL;
		}
		snprintf(why, len, "\"%s\" is not one of error, warning, info, debug", v);
		return why;
	default:
		break;
	}
	return NULL;
}

static void
conf_wipe_free(char *s)
{
	if (s != NULL) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

/*
 * Read the whole file already opened as fd (at most max bytes) into *dst,
 * replacing what it held (wiped: it may be a secret). Trailing newlines
 * (and carriage returns) are dropped: a password or a body template is
 * what the editor saved, less the line end it added. The read buffer is
 * wiped too, since it may hold a password.
 */
static const char *
conf_read_fd(int fd, const char *path, size_t max, char **dst, char *why, size_t len)
{
	char *buf = xmalloc(max + 1);
	size_t have = 0;
	ssize_t n;
	const char *bad = NULL;

	for (;;) {
		n = read(fd, buf + have, max + 1 - have);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			snprintf(why, len, "cannot read %s: %s", path, strerror(errno));
			bad = why;
			goto out;
		}
		if (n == 0)
			break;
		have += (size_t)n;
		if (have == max + 1) {
			snprintf(why, len, "%s is larger than %zu bytes", path, max);
			bad = why;
			goto out;
		}
	}
	while (have > 0 && (buf[have - 1] == '\n' || buf[have - 1] == '\r'))
		have--;
	if (memchr(buf, '\0', have) != NULL) {
		snprintf(why, len, "%s contains a NUL byte", path);
		bad = why;
		goto out;
	}
	conf_wipe_free(*dst);
	*dst = xstrndup(buf, have);
out:
	explicit_bzero(buf, max + 1);
	free(buf);
	return bad;
}

/* Open path for reading, refusing a directory; *fd is -1 on error. */
static const char *
conf_open_file(const char *path, int *fd, char *why, size_t len)
{
	struct stat st;

	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd == -1) {
		snprintf(why, len, "cannot read %s: %s", path, strerror(errno));
		return why;
	}
	if (fstat(*fd, &st) == -1)
		snprintf(why, len, "cannot read %s: %s", path, strerror(errno));
	else if (S_ISDIR(st.st_mode))
		snprintf(why, len, "cannot read %s: %s", path, strerror(EISDIR));
	else
		return NULL;
	close(*fd);
	*fd = -1;
	return why;
}

/*
 * A CONF_FILE key names a file the daemon will need later (possibly after
 * dropping privileges or inside a sandbox): check now that it can be read,
 * so that a typo fails the start or the reload rather than the first TLS
 * handshake.
 */
static const char *
conf_check_file(struct conf *c, const struct conf_key *k, const char *path, char *why, size_t len)
{
	const char *bad;
	int fd;

	if ((bad = conf_open_file(path, &fd, why, len)) != NULL)
		return bad;
	if (k->offset == O(mqtt_password_file))
		bad = conf_read_fd(fd, path, CONF_SECRET_MAX, &c->mqtt_password, why, len);
	close(fd);
	return bad;
}

/* Parse value for key k and store it in p->c; line 0 means the default. */
static int
conf_set(struct conf_parse *p, const struct conf_key *k, const char *value, int line)
{
	char why[512];
	const char *bad = NULL;
	long lv;
	bool bv;
	char **sp;

	switch (k->type) {
	case CONF_INT:
		if (!conf_parse_int(value, &lv)) {
			snprintf(why, sizeof why, "\"%s\" is not a decimal integer", value);
			bad = why;
		} else if (lv < k->min || lv > k->max) {
			snprintf(why, sizeof why, "%s is out of range (%ld..%ld)", value, k->min,
			    k->max);
			bad = why;
		} else
			*(int *)conf_field(p->c, k) = (int)lv;
		break;
	case CONF_BOOL:
		if (!conf_parse_bool(value, &bv)) {
			snprintf(why, sizeof why,
			    "\"%s\" is not a boolean (true/false, yes/no, on/off, 1/0)", value);
			bad = why;
		} else
			*(bool *)conf_field(p->c, k) = bv;
		break;
	case CONF_ENUM:
	case CONF_TEMPLATE:
		/* Only gateway keys have these types: see conf_gw_set. */
		abort();
	case CONF_STRING:
	case CONF_FILE:
		sp = conf_field(p->c, k);
		/* An optional key given an empty value is simply unset. */
		if (k->def == NULL && *value == '\0') {
			free(*sp);
			*sp = NULL;
			if (k->offset == O(mqtt_password_file)) {
				conf_wipe_free(p->c->mqtt_password);
				p->c->mqtt_password = NULL;
			}
			break;
		}
		bad = conf_check_string(k, value, why, sizeof why);
		if (bad != NULL)
			break;
		free(*sp);
		*sp = xstrdup(value);
		if (k->type == CONF_FILE)
			bad = conf_check_file(p->c, k, value, why, sizeof why);
		break;
	}
	if (bad != NULL) {
		conf_key_error(p, line, k, bad);
		return -1;
	}
	return 0;
}

/* Undo the quoting of a value in place: "...", with \" and \\ as escapes. */
static const char *
conf_unquote(char *v)
{
	char *r = v + 1, *w = v;

	for (;;) {
		if (*r == '\0')
			return "unterminated quoted string";
		if (*r == '"')
			break;
		if (*r == '\\') {
			r++;
			if (*r != '"' && *r != '\\')
				return "bad escape in quoted string (only \\\" and \\\\)";
		}
		*w++ = *r++;
	}
	if (r[1] != '\0')
		return "text after the closing quote";
	*w = '\0';
	return NULL;
}

const struct conf_key *
conf_gateway_keys(size_t *n)
{
	if (n != NULL)
		*n = ARRAY_SIZE(conf_gateway_table);
	return conf_gateway_table;
}

const char *const *
conf_gateway_placeholders(void)
{
	return conf_gw_placeholders;
}

const struct conf_gateway *
conf_gateway_find(const struct conf *c, const char *name)
{
	int i;

	for (i = 0; i < c->ngateways; i++) {
		if (strcmp(c->gateways[i].name, name) == 0)
			return &c->gateways[i];
	}
	return NULL;
}

/* "FILE:LINE: gateway.NAME.key: ..."; line 0 means the section's header. */
static void PRINTFLIKE(5, 6) conf_gw_error(struct conf_parse *p, const struct conf_gateway *gw,
    int line, const char *key, const char *fmt, ...)
{
	char msg[512], subject[96];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	snprintf(subject, sizeof subject, "gateway.%s.%s", gw->name, key);
	conf_error(p, line > 0 ? line : gw->line, subject, "%s", msg);
}

static size_t
conf_gw_index(size_t offset)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(conf_gateway_table); i++) {
		if (conf_gateway_table[i].offset == offset)
			return i;
	}
	abort();
}

static const struct conf_key *
conf_gw_find(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(conf_gateway_table); i++) {
		if (strcmp(conf_gateway_table[i].name, name) == 0)
			return &conf_gateway_table[i];
	}
	return NULL;
}

/* Which gateway of p->c this is (for the line tables). */
static int
conf_gw_number(const struct conf_parse *p, const struct conf_gateway *gw)
{
	return (int)(gw - p->c->gateways);
}

/* Line of the key stored at offset in gw; 0 if it was not set. */
static int
conf_gw_line(const struct conf_parse *p, const struct conf_gateway *gw, size_t offset)
{
	return p->gwlines[conf_gw_number(p, gw)][conf_gw_index(offset)];
}

/* The later of two lines that are set (for an error between two keys). */
static int
conf_gw_later(int a, int b)
{
	return a > b ? a : b;
}

/* An RFC 9110 token: a header name. */
static bool
conf_gw_token(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > CONF_GW_TOKEN_MAX)
		return false;
	for (i = 0; i < len; i++) {
		if (!isalnum((unsigned char)s[i]) && strchr("!#$%&'*+-.^_`|~", s[i]) == NULL)
			return false;
	}
	return true;
}

/* Printable ASCII and UTF-8, no control characters: safe in a header. */
static bool
conf_gw_no_controls(const char *s)
{
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	}
	return true;
}

/* Every byte of s in the set allowed, and s not empty. */
static bool
conf_gw_chars(const char *s, const char *allowed)
{
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++) {
		if (!isalnum((unsigned char)*s) && strchr(allowed, *s) == NULL)
			return false;
	}
	return true;
}

/*
 * A dot path into a JSON answer: names and array indexes joined by '.',
 * as "Response.SendStatusSet.0.Code".
 */
static bool
conf_gw_dot_path(const char *s)
{
	size_t seg = 0;

	if (strlen(s) > CONF_GW_PATH_MAX)
		return false;
	for (; *s != '\0'; s++) {
		if (*s == '.') {
			if (seg == 0)
				return false;
			seg = 0;
			continue;
		}
		if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '$' && *s != '@')
			return false;
		seg++;
	}
	return seg > 0;
}

/* An addr-spec for MAIL FROM: local@domain, nothing that needs quoting. */
static bool
conf_gw_address(const char *s)
{
	const char *at = strchr(s, '@');

	if (at == NULL || at == s || at[1] == '\0' || strchr(at + 1, '@') != NULL ||
	    strlen(s) > 254)
		return false;
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s <= 0x20 || *s == 0x7f || strchr("<>()[]\\,;:\"", *s) != NULL)
			return false;
	}
	return true;
}

/* "200, 201,202" into gw->status; NULL if it is a good list. */
static const char *
conf_gw_status_list(struct conf_gateway *gw, const char *v, char *why, size_t len)
{
	char *copy = xstrdup(v), *tok, *save = NULL;
	const char *bad = NULL;
	long code;
	int i, n = 0;

	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		tok = conf_trim(tok);
		if (!conf_parse_int(tok, &code) || code < 100 || code > 599) {
			snprintf(why, len, "\"%s\" is not an HTTP status code (100..599)", tok);
			bad = why;
			goto out;
		}
		for (i = 0; i < n; i++) {
			if (gw->status[i] == code) {
				snprintf(why, len, "%ld is listed twice", code);
				bad = why;
				goto out;
			}
		}
		if (n == CONF_GW_STATUS_MAX) {
			snprintf(why, len, "more than %d status codes", CONF_GW_STATUS_MAX);
			bad = why;
			goto out;
		}
		gw->status[n++] = (int)code;
	}
	if (n == 0 || v[strlen(v) - 1] == ',' || strstr(v, ",,") != NULL || *v == ',') {
		bad = "must be a comma-separated list of HTTP status codes";
		goto out;
	}
	gw->nstatus = n;
out:
	free(copy);
	return bad;
}

/* Parse text as a gateway template; the template itself is not kept. */
static const char *
conf_gw_template(const char *text, const char *file, char *why, size_t len)
{
	struct template *t;
	char *cause = NULL;

	t = template_parse(text, conf_gw_placeholders, &cause);
	if (t != NULL) {
		template_free(t);
		return NULL;
	}
	if (file != NULL)
		snprintf(why, len, "%s (in %s)", cause != NULL ? cause : "bad template", file);
	else
		snprintf(why, len, "%s", cause != NULL ? cause : "bad template");
	free(cause);
	return why;
}

/*
 * One "header = Name: value" line. The whole text is parsed as a template
 * so that an offset in an error counts from the start of the value as
 * written; the name cannot hold a placeholder, since braces are not token
 * characters.
 */
static const char *
conf_gw_header(struct conf_gateway *gw, const char *v, char *why, size_t len)
{
	const char *colon = strchr(v, ':'), *val, *bad;
	size_t nlen;
	int i;

	static const char *const daemon_set[] = {
	    "Host", "Content-Length", "Transfer-Encoding", "Connection", "Expect"};

	if (gw->nheaders == CONF_GW_HEADERS_MAX) {
		snprintf(why, len, "more than %d headers", CONF_GW_HEADERS_MAX);
		return why;
	}
	if (colon == NULL)
		return "must be \"Name: value\"";
	nlen = (size_t)(colon - v);
	while (nlen > 0 && (v[nlen - 1] == ' ' || v[nlen - 1] == '\t'))
		nlen--;
	if (!conf_gw_token(v, nlen))
		return "the header name must be 1 to 64 token characters (A-Z a-z 0-9 "
		       "and !#$%&'*+-.^_`|~)";
	for (i = 0; i < (int)ARRAY_SIZE(daemon_set); i++) {
		if (strlen(daemon_set[i]) == nlen && strncasecmp(v, daemon_set[i], nlen) == 0) {
			snprintf(why, len, "%s is set by the daemon", daemon_set[i]);
			return why;
		}
	}
	if (nlen == 12 && strncasecmp(v, "Content-Type", nlen) == 0)
		return "use content_type for the Content-Type header";
	for (i = 0; i < gw->nheaders; i++) {
		if (strlen(gw->header_name[i]) == nlen &&
		    strncasecmp(gw->header_name[i], v, nlen) == 0) {
			snprintf(why, len, "header %s given twice", gw->header_name[i]);
			return why;
		}
	}
	if (!conf_gw_no_controls(v))
		return "the header value must not contain control characters";
	if ((bad = conf_gw_template(v, NULL, why, len)) != NULL)
		return bad;
	for (val = colon + 1; *val == ' ' || *val == '\t'; val++)
		;
	gw->header_name[gw->nheaders] = xstrndup(v, nlen);
	gw->header_value[gw->nheaders] = xstrdup(val);
	gw->nheaders++;
	return NULL;
}

/* Rules for particular gateway string keys; NULL if v is acceptable. */
static const char *
conf_gw_check_string(
    struct conf_gateway *gw, const struct conf_key *k, const char *v, char *why, size_t len)
{
	switch (k->offset) {
	case G(content_type):
		if (!conf_gw_no_controls(v) || strchr(v, '/') == NULL)
			return "must be a media type such as application/json";
		break;
	case G(username):
	case G(access_key_id):
		if (!conf_gw_no_controls(v))
			return "must not contain control characters";
		break;
	case G(auth_header):
		if (!conf_gw_token(v, strlen(v)))
			return "must be a header name (1 to 64 token characters)";
		break;
	case G(region):
	case G(action):
	case G(api_version):
	case G(service):
		if (!conf_gw_chars(v, "-_."))
			return "must be letters, digits, '-', '_' or '.'";
		break;
	case G(success_status):
		return conf_gw_status_list(gw, v, why, len);
	case G(success_field):
		if (!conf_gw_dot_path(v))
			return "must be a dot path such as Code or Response.SendStatusSet.0.Code";
		break;
	case G(success_value):
		if (!conf_gw_no_controls(v))
			return "must not contain control characters";
		break;
	case G(message_id_field):
		if (strncmp(v, "header:", 7) == 0) {
			if (!conf_gw_token(v + 7, strlen(v + 7)))
				return "header: must be followed by a header name";
		} else if (!conf_gw_dot_path(v))
			return "must be a dot path such as BizId, or header:Name";
		break;
	case G(mail_from):
		if (!conf_gw_address(v))
			return "must be a bare address such as billing@example.com";
		break;
	default:
		break;
	}
	return NULL;
}

/* Read secret_file or body_file. */
static const char *
conf_gw_read(
    struct conf_gateway *gw, const struct conf_key *k, const char *path, char *why, size_t len)
{
	const char *bad;
	int fd;

	if ((bad = conf_open_file(path, &fd, why, len)) != NULL)
		return bad;
	if (k->offset == G(secret_file)) {
		bad = conf_read_fd(fd, path, CONF_SECRET_MAX, &gw->secret, why, len);
		if (bad == NULL && gw->secret[0] == '\0') {
			snprintf(why, len, "%s is empty", path);
			bad = why;
		}
	} else {
		bad = conf_read_fd(fd, path, CONF_BODY_MAX, &gw->body, why, len);
		if (bad == NULL)
			bad = conf_gw_template(gw->body, path, why, len);
	}
	close(fd);
	return bad;
}

/* Parse value for gateway key k into gw; line 0 means the default. */
static int
conf_gw_set(struct conf_parse *p, struct conf_gateway *gw, const struct conf_key *k,
    const char *value, int line)
{
	char why[512];
	const char *bad = NULL;
	char **sp = (char **)(void *)((char *)gw + k->offset);
	int *ip = (int *)(void *)((char *)gw + k->offset);
	long lv;
	size_t i;

	switch (k->type) {
	case CONF_INT:
		if (!conf_parse_int(value, &lv)) {
			snprintf(why, sizeof why, "\"%s\" is not a decimal integer", value);
			bad = why;
		} else if (lv < k->min || lv > k->max) {
			snprintf(why, sizeof why, "%s is out of range (%ld..%ld)", value, k->min,
			    k->max);
			bad = why;
		} else
			*ip = (int)lv;
		break;
	case CONF_ENUM:
		for (i = 0; k->choices[i] != NULL; i++) {
			if (strcasecmp(value, k->choices[i]) == 0)
				break;
		}
		if (k->choices[i] != NULL) {
			*ip = (int)i;
			break;
		}
		snprintf(why, sizeof why, "\"%s\" is not one of ", value);
		for (i = 0; k->choices[i] != NULL; i++) {
			strncat(why, k->choices[i], sizeof why - strlen(why) - 1);
			if (k->choices[i + 1] != NULL)
				strncat(why, k->choices[i + 2] != NULL ? ", " : " or ",
				    sizeof why - strlen(why) - 1);
		}
		bad = why;
		break;
	case CONF_BOOL:
		abort(); /* no gateway key is a boolean */
	case CONF_TEMPLATE:
		if (k->offset == G(header_value)) {
			bad = conf_gw_header(gw, value, why, sizeof why);
			break;
		}
		/* FALLTHROUGH */
	case CONF_STRING:
	case CONF_FILE:
		/* An optional key given an empty value is simply unset. */
		if (k->def == NULL && *value == '\0') {
			free(*sp);
			*sp = NULL;
			if (k->offset == G(secret_file)) {
				conf_wipe_free(gw->secret);
				gw->secret = NULL;
			}
			break;
		}
		if (k->type == CONF_TEMPLATE)
			bad = conf_gw_template(value, NULL, why, sizeof why);
		else if (k->type == CONF_STRING)
			bad = conf_gw_check_string(gw, k, value, why, sizeof why);
		if (bad != NULL)
			break;
		free(*sp);
		*sp = xstrdup(value);
		if (k->type == CONF_FILE)
			bad = conf_gw_read(gw, k, value, why, sizeof why);
		break;
	}
	if (bad != NULL) {
		conf_gw_error(p, gw, line, k->name, "%s", bad);
		return -1;
	}
	return 0;
}

static bool
conf_gw_name_ok(const char *name)
{
	size_t n = strlen(name);

	return n >= 1 && n <= CONF_GW_NAME_MAX &&
	       strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

/* A "[gateway NAME]" header: start a new gateway with the table's defaults. */
static int
conf_gw_open(struct conf_parse *p, const char *name, int lineno)
{
	struct conf_gateway *gw;
	char subject[64];
	size_t i;
	int n;

	snprintf(subject, sizeof subject, "[gateway %.40s]", name);
	if (*name == '\0') {
		conf_error(p, lineno, "[gateway]",
		    "a gateway section needs a name: "
		    "[gateway NAME]");
		return -1;
	}
	if (!conf_gw_name_ok(name)) {
		conf_error(p, lineno, subject,
		    "bad gateway name (1 to %d characters of "
		    "a-z, 0-9, '_' and '-')",
		    CONF_GW_NAME_MAX);
		return -1;
	}
	for (n = 0; n < p->c->ngateways; n++) {
		if (strcmp(p->c->gateways[n].name, name) == 0) {
			conf_error(p, lineno, subject, "duplicate gateway (first on line %d)",
			    p->c->gateways[n].line);
			return -1;
		}
	}
	if (p->c->ngateways == CONF_GATEWAYS_MAX) {
		conf_error(p, lineno, subject, "more than %d gateways", CONF_GATEWAYS_MAX);
		return -1;
	}
	gw = &p->c->gateways[p->c->ngateways++];
	snprintf(gw->name, sizeof gw->name, "%s", name);
	gw->line = lineno;
	gw->channel = -1; /* required: no default */
	p->gw = gw;
	snprintf(p->gwlabel, sizeof p->gwlabel, "gateway.%s", name);
	for (i = 0; i < ARRAY_SIZE(conf_gateway_table); i++) {
		if (conf_gateway_table[i].def != NULL &&
		    conf_gw_set(p, gw, &conf_gateway_table[i], conf_gateway_table[i].def, 0) != 0)
			return -1;
	}
	return 0;
}

/* A "key = value" line inside a gateway section. */
static int
conf_gw_key(struct conf_parse *p, const char *key, char *value, int lineno)
{
	struct conf_gateway *gw = p->gw;
	const struct conf_key *k;
	const char *bad;
	int *lines = p->gwlines[conf_gw_number(p, gw)], other;
	size_t idx;

	if ((k = conf_gw_find(key)) == NULL) {
		conf_gw_error(p, gw, lineno, key, "unknown key");
		return -1;
	}
	idx = (size_t)(k - conf_gateway_table);
	if (k->repeat <= 1 && lines[idx] != 0) {
		conf_gw_error(
		    p, gw, lineno, k->name, "duplicate key (first set on line %d)", lines[idx]);
		return -1;
	}
	/* body and body_file both fill gw->body: refuse the second at once. */
	other = 0;
	if (k->offset == G(body))
		other = conf_gw_line(p, gw, G(body_file));
	else if (k->offset == G(body_file))
		other = conf_gw_line(p, gw, G(body));
	if (other != 0) {
		conf_gw_error(p, gw, lineno, k->name,
		    "%s is set too (line %d): give one of "
		    "body and body_file",
		    k->offset == G(body) ? "body_file" : "body", other);
		return -1;
	}
	if (*value == '"' && (bad = conf_unquote(value)) != NULL) {
		conf_gw_error(p, gw, lineno, k->name, "%s", bad);
		return -1;
	}
	if (k->offset == G(header_value) && gw->nheaders < CONF_GW_HEADERS_MAX)
		p->gwhdrlines[conf_gw_number(p, gw)][gw->nheaders] = lineno;
	if (conf_gw_set(p, gw, k, value, lineno) != 0)
		return -1;
	if (lines[idx] == 0)
		lines[idx] = lineno;
	return 0;
}

/* Keys that mean nothing to an SMTP gateway. */
static const size_t conf_gw_http_only[] = {G(method), G(header_value), G(escape), G(content_type),
    G(auth), G(auth_header), G(signer), G(access_key_id), G(region), G(action), G(api_version),
    G(service), G(success_status), G(success_field), G(success_value), G(message_id_field)};

/* Keys that only a signer uses. */
static const size_t conf_gw_signer_only[] = {
    G(access_key_id), G(region), G(action), G(api_version), G(service)};

static void
conf_gw_default(char **sp, const char *def)
{
	if (*sp == NULL)
		*sp = xstrdup(def);
}

/* The checks of an SMTP gateway. */
static int
conf_gw_finish_smtp(struct conf_parse *p, struct conf_gateway *gw)
{
	const struct conf_key *k;
	size_t i;
	int line;

	for (i = 0; i < ARRAY_SIZE(conf_gw_http_only); i++) {
		if ((line = conf_gw_line(p, gw, conf_gw_http_only[i])) == 0)
			continue;
		k = &conf_gateway_table[conf_gw_index(conf_gw_http_only[i])];
		conf_gw_error(p, gw, line, k->name, "not used with type smtp");
		return -1;
	}
	if (gw->channel != CONF_GW_EMAIL) {
		conf_gw_error(
		    p, gw, conf_gw_line(p, gw, G(type)), "type", "smtp needs channel email");
		return -1;
	}
	if (gw->mail_from == NULL) {
		conf_gw_error(p, gw, 0, "mail_from", "required with type smtp");
		return -1;
	}
	if (gw->username != NULL && gw->secret_file == NULL) {
		conf_gw_error(p, gw, conf_gw_line(p, gw, G(username)), "username",
		    "set without secret_file (the SMTP password)");
		return -1;
	}
	if (gw->secret_file != NULL && gw->username == NULL) {
		conf_gw_error(p, gw, conf_gw_line(p, gw, G(secret_file)), "secret_file",
		    "set without username (the SMTP login)");
		return -1;
	}
	/* The body is the message itself: nothing to escape for, no status. */
	gw->escape = CONF_GW_ESC_RAW;
	gw->body_mode = TEMPLATE_RAW;
	gw->auth = CONF_GW_AUTH_NONE;
	free(gw->success_status);
	gw->success_status = NULL;
	gw->nstatus = 0;
	return 0;
}

/* auth, username, secret_file, auth_header and the headers they clash with. */
static int
conf_gw_finish_auth(struct conf_parse *p, struct conf_gateway *gw)
{
	int la = conf_gw_line(p, gw, G(auth)), lu = conf_gw_line(p, gw, G(username));
	int ls = conf_gw_line(p, gw, G(secret_file)), lh = conf_gw_line(p, gw, G(auth_header));
	int i, gi = conf_gw_number(p, gw);
	const char *auth = conf_gw_auths[gw->auth];

	if (gw->username != NULL && gw->auth != CONF_GW_AUTH_BASIC) {
		conf_gw_error(p, gw, lu, "username", "only used with auth basic");
		return -1;
	}
	if (gw->auth_header != NULL && gw->auth != CONF_GW_AUTH_HEADER) {
		conf_gw_error(p, gw, lh, "auth_header", "only used with auth header");
		return -1;
	}
	switch (gw->auth) {
	case CONF_GW_AUTH_NONE:
		if (gw->secret_file != NULL && gw->signer == CONF_GW_SIGNER_NONE) {
			conf_gw_error(p, gw, ls, "secret_file",
			    "set, but auth is none and "
			    "there is no signer");
			return -1;
		}
		break;
	case CONF_GW_AUTH_BASIC:
		if (gw->username == NULL) {
			conf_gw_error(p, gw, la, "username", "required with auth basic");
			return -1;
		}
		if (strchr(gw->username, ':') != NULL) {
			conf_gw_error(p, gw, lu, "username",
			    "must not contain ':' with auth "
			    "basic");
			return -1;
		}
		break;
	case CONF_GW_AUTH_HEADER:
		if (gw->auth_header == NULL) {
			conf_gw_error(p, gw, la, "auth_header", "required with auth header");
			return -1;
		}
		break;
	default:
		break;
	}
	if (gw->auth != CONF_GW_AUTH_NONE && gw->secret_file == NULL) {
		conf_gw_error(p, gw, la, "secret_file", "required with auth %s", auth);
		return -1;
	}
	/* A header must not carry, or fight with, what auth sends. */
	for (i = 0; i < gw->nheaders; i++) {
		const char *h = gw->header_name[i];

		if (strcasecmp(h, "Authorization") == 0 &&
		    (gw->auth == CONF_GW_AUTH_BASIC || gw->auth == CONF_GW_AUTH_BEARER ||
		        gw->signer != CONF_GW_SIGNER_NONE)) {
			conf_gw_error(p, gw, p->gwhdrlines[gi][i], "header",
			    "Authorization "
			    "is set by %s %s",
			    gw->signer != CONF_GW_SIGNER_NONE ? "signer" : "auth",
			    gw->signer != CONF_GW_SIGNER_NONE ? conf_gw_signers[gw->signer] : auth);
			return -1;
		}
		if (gw->auth == CONF_GW_AUTH_HEADER && strcasecmp(h, gw->auth_header) == 0) {
			conf_gw_error(p, gw, p->gwhdrlines[gi][i], "header",
			    "%s is set by "
			    "auth header",
			    h);
			return -1;
		}
		if (gw->signer == CONF_GW_SIGNER_TENCENT && strncasecmp(h, "X-TC-", 5) == 0) {
			conf_gw_error(p, gw, p->gwhdrlines[gi][i], "header",
			    "%s is set by "
			    "signer tencent",
			    h);
			return -1;
		}
	}
	return 0;
}

static int
conf_gw_finish_signer(struct conf_parse *p, struct conf_gateway *gw)
{
	const struct conf_key *k;
	const char *name = conf_gw_signers[gw->signer];
	int lsig = conf_gw_line(p, gw, G(signer)), line;
	size_t i;

	if (gw->signer == CONF_GW_SIGNER_NONE) {
		for (i = 0; i < ARRAY_SIZE(conf_gw_signer_only); i++) {
			if ((line = conf_gw_line(p, gw, conf_gw_signer_only[i])) == 0)
				continue;
			k = &conf_gateway_table[conf_gw_index(conf_gw_signer_only[i])];
			conf_gw_error(p, gw, line, k->name, "only used with a signer");
			return -1;
		}
		return 0;
	}
	if (gw->auth != CONF_GW_AUTH_NONE) {
		conf_gw_error(p, gw, conf_gw_line(p, gw, G(auth)), "auth",
		    "must be none "
		    "with signer %s (the signature authenticates the request)",
		    name);
		return -1;
	}
	if (gw->access_key_id == NULL) {
		conf_gw_error(p, gw, lsig, "access_key_id", "required with signer %s", name);
		return -1;
	}
	if (gw->secret_file == NULL) {
		conf_gw_error(p, gw, lsig, "secret_file",
		    "required with signer %s "
		    "(it holds the secret key)",
		    name);
		return -1;
	}
	if (gw->method != CONF_GW_POST) {
		conf_gw_error(p, gw, conf_gw_line(p, gw, G(method)), "method",
		    "must be POST "
		    "with signer %s",
		    name);
		return -1;
	}
	if (gw->signer == CONF_GW_SIGNER_ALIYUN) {
		/* The signer signs the business parameters: it needs them as a form. */
		if (gw->escape != CONF_GW_ESC_FORM) {
			conf_gw_error(p, gw, conf_gw_line(p, gw, G(escape)), "escape",
			    "must be form with signer aliyun");
			return -1;
		}
		if ((line = conf_gw_line(p, gw, G(service))) != 0) {
			conf_gw_error(p, gw, line, "service", "only used with signer tencent");
			return -1;
		}
		conf_gw_default(&gw->region, "cn-hangzhou");
		conf_gw_default(&gw->action, "SendSms");
		conf_gw_default(&gw->api_version, "2017-05-25");
	} else {
		if (gw->escape != CONF_GW_ESC_JSON) {
			conf_gw_error(p, gw, conf_gw_line(p, gw, G(escape)), "escape",
			    "must be json with signer tencent");
			return -1;
		}
		if (gw->region == NULL) {
			conf_gw_error(p, gw, lsig, "region",
			    "required with signer tencent "
			    "(e.g. ap-guangzhou)");
			return -1;
		}
		conf_gw_default(&gw->action, "SendSms");
		conf_gw_default(&gw->api_version, "2021-01-11");
		conf_gw_default(&gw->service, "sms");
	}
	return 0;
}

/* The checks of an HTTP gateway. */
static int
conf_gw_finish_http(struct conf_parse *p, struct conf_gateway *gw)
{
	int lm = conf_gw_line(p, gw, G(method)), le = conf_gw_line(p, gw, G(escape));
	int lc = conf_gw_line(p, gw, G(content_type)), line;
	static const enum template_mode modes[] = {TEMPLATE_JSON, TEMPLATE_FORM, TEMPLATE_RAW};

	if ((line = conf_gw_line(p, gw, G(mail_from))) != 0) {
		conf_gw_error(p, gw, line, "mail_from",
		    "only used with type smtp (an HTTP "
		    "gateway takes the sender in its body)");
		return -1;
	}
	gw->body_mode = modes[gw->escape];
	if (gw->method == CONF_GW_GET) {
		line =
		    conf_gw_later(conf_gw_line(p, gw, G(body)), conf_gw_line(p, gw, G(body_file)));
		if (line != 0) {
			conf_gw_error(p, gw, line,
			    line == conf_gw_line(p, gw, G(body)) ? "body" : "body_file",
			    "no body with method GET");
			return -1;
		}
		if (le != 0 || lc != 0) {
			conf_gw_error(p, gw, conf_gw_later(le, lc),
			    le > lc ? "escape" : "content_type",
			    "not used with method GET (there is no body)");
			return -1;
		}
	} else {
		if (gw->body == NULL) {
			conf_gw_error(p, gw, lm, "body", "required with method %s (or body_file)",
			    conf_gw_methods[gw->method]);
			return -1;
		}
		if (gw->content_type == NULL) {
			if (gw->escape == CONF_GW_ESC_RAW) {
				conf_gw_error(
				    p, gw, le, "content_type", "required with escape raw");
				return -1;
			}
			gw->content_type = xstrdup(gw->escape == CONF_GW_ESC_JSON
			                               ? "application/json; charset=utf-8"
			                               : "application/x-www-form-urlencoded");
		}
	}
	if (conf_gw_finish_signer(p, gw) != 0 || conf_gw_finish_auth(p, gw) != 0)
		return -1;
	if (gw->success_field != NULL && gw->success_value == NULL) {
		conf_gw_error(p, gw, conf_gw_line(p, gw, G(success_field)), "success_field",
		    "set without success_value");
		return -1;
	}
	if (gw->success_value != NULL && gw->success_field == NULL) {
		conf_gw_error(p, gw, conf_gw_line(p, gw, G(success_value)), "success_value",
		    "set without success_field");
		return -1;
	}
	return 0;
}

/*
 * The url: the scheme its type needs, and a literal host: a placeholder
 * there would let a message choose where it is sent, and credentials there
 * would put a secret in the config file.
 */
static int
conf_gw_finish_url(struct conf_parse *p, struct conf_gateway *gw)
{
	static const char *const http[] = {"http://", "https://", NULL};
	static const char *const smtp[] = {"smtp://", "smtps://", NULL};
	const char *const *schemes = gw->type == CONF_GW_SMTP ? smtp : http;
	const char *host = NULL;
	int line = conf_gw_line(p, gw, G(url));
	size_t i, n;

	for (i = 0; schemes[i] != NULL; i++) {
		if (strncasecmp(gw->url, schemes[i], strlen(schemes[i])) == 0)
			host = gw->url + strlen(schemes[i]);
	}
	if (host == NULL) {
		conf_gw_error(p, gw, line, "url", "must begin with %s or %s for type %s",
		    schemes[0], schemes[1], conf_gw_types[gw->type]);
		return -1;
	}
	n = strcspn(host, "/?#");
	if (n == 0) {
		conf_gw_error(p, gw, line, "url", "has no host");
		return -1;
	}
	if (memchr(host, '@', n) != NULL) {
		conf_gw_error(p, gw, line, "url",
		    "must not hold credentials: use username "
		    "and secret_file");
		return -1;
	}
	for (i = 0; i + 1 < n; i++) {
		if (host[i] == '{' && host[i + 1] == '{') {
			conf_gw_error(p, gw, line, "url",
			    "the host must not contain a "
			    "placeholder");
			return -1;
		}
	}
	return 0;
}

/* Rules between the keys of one gateway, once its section is read. */
static int
conf_gw_finish(struct conf_parse *p, struct conf_gateway *gw)
{
	int li, lm;

	if (gw->channel < 0) {
		conf_gw_error(p, gw, 0, "channel", "missing: sms or email is required");
		return -1;
	}
	if (gw->url == NULL) {
		conf_gw_error(p, gw, 0, "url", "missing (required)");
		return -1;
	}
	if (conf_gw_finish_url(p, gw) != 0)
		return -1;
	if (gw->type == CONF_GW_SMTP) {
		if (conf_gw_finish_smtp(p, gw) != 0)
			return -1;
	} else if (conf_gw_finish_http(p, gw) != 0)
		return -1;

	li = conf_gw_line(p, gw, G(retry_initial_ms));
	lm = conf_gw_line(p, gw, G(retry_max_ms));
	if (gw->retry_max_ms < gw->retry_initial_ms) {
		if (lm > li)
			conf_gw_error(p, gw, lm, "retry_max_ms",
			    "%d is less than "
			    "retry_initial_ms (%d)",
			    gw->retry_max_ms, gw->retry_initial_ms);
		else
			conf_gw_error(p, gw, li, "retry_initial_ms",
			    "%d is greater than "
			    "retry_max_ms (%d)",
			    gw->retry_initial_ms, gw->retry_max_ms);
		return -1;
	}
	return 0;
}

static void
conf_gw_free(struct conf_gateway *gw)
{
	const struct conf_key *k;
	size_t i;
	int h;

	for (i = 0; i < ARRAY_SIZE(conf_gateway_table); i++) {
		k = &conf_gateway_table[i];
		if (k->type == CONF_INT || k->type == CONF_ENUM || k->offset == G(header_value))
			continue;
		free(*(char **)(void *)((char *)gw + k->offset));
	}
	for (h = 0; h < gw->nheaders; h++) {
		free(gw->header_name[h]);
		free(gw->header_value[h]);
	}
	conf_wipe_free(gw->secret);
}

/*
 * The subject for an error on a line that could not be parsed as a key:
 * "section.key" from the text before '=' when there is one, else the first
 * word.
 */
static void
conf_line_subject(char *buf, size_t len, const char *section, const char *s)
{
	size_t n = strcspn(s, "= \t");

	if (n > 64)
		n = 64;
	if (section != NULL)
		snprintf(buf, len, "%s.%.*s", section, (int)n, s);
	else
		snprintf(buf, len, "%.*s", (int)n, s);
}

static int
conf_parse_line(struct conf_parse *p, char *line, size_t len, int lineno, const char **section)
{
	const struct conf_key *k;
	char subject[128], list[128];
	char *s, *e, *eq, *key, *value;
	const char *bad, *sec, *label;
	size_t idx;

	if (len > 0 && line[len - 1] == '\n')
		line[--len] = '\0';
	if (len > 0 && line[len - 1] == '\r')
		line[--len] = '\0';
	label = p->gw != NULL ? p->gwlabel : *section;
	if (len > CONF_LINE_MAX) {
		s = conf_trim(line);
		conf_line_subject(subject, sizeof subject, label, s);
		conf_error(p, lineno, subject, "line too long (more than %d bytes)", CONF_LINE_MAX);
		return -1;
	}
	if (strlen(line) != len) {
		conf_error(p, lineno, NULL, "NUL byte in line");
		return -1;
	}
	s = line;
	/* Editors on other systems may begin the file with a UTF-8 BOM. */
	if (lineno == 1 && strncmp(s, "\xef\xbb\xbf", 3) == 0)
		s += 3;
	s = conf_trim(s);
	if (*s == '\0' || *s == '#' || *s == ';')
		return 0;

	if (*s == '[') {
		e = strchr(s, ']');
		if (e == NULL || e[1] != '\0') {
			conf_error(p, lineno, NULL, "bad section header \"%s\"", s);
			return -1;
		}
		*e = '\0';
		key = conf_trim(s + 1);
		p->gw = NULL;
		if (strncmp(key, "gateway", 7) == 0 &&
		    (key[7] == '\0' || isspace((unsigned char)key[7]))) {
			*section = "gateway";
			return conf_gw_open(p, conf_trim(key + 7), lineno);
		}
		if ((sec = conf_find_section(key)) == NULL) {
			conf_section_list(list, sizeof list);
			snprintf(subject, sizeof subject, "[%.64s]", key);
			conf_error(p, lineno, subject, "unknown section (known: %s)", list);
			return -1;
		}
		*section = sec;
		return 0;
	}

	eq = strchr(s, '=');
	if (eq == NULL) {
		conf_line_subject(subject, sizeof subject, label, s);
		conf_error(p, lineno, subject, "missing '=' after the key");
		return -1;
	}
	*eq = '\0';
	key = conf_trim(s);
	value = conf_trim(eq + 1);
	if (*key == '\0') {
		conf_error(p, lineno, label, "missing key name before '='");
		return -1;
	}
	if (*section == NULL) {
		conf_line_subject(subject, sizeof subject, NULL, key);
		conf_error(p, lineno, subject, "key outside any [section]");
		return -1;
	}
	if (p->gw != NULL)
		return conf_gw_key(p, key, value, lineno);
	if ((k = conf_find(*section, key)) == NULL) {
		conf_line_subject(subject, sizeof subject, *section, key);
		conf_error(p, lineno, subject, "unknown key");
		return -1;
	}
	idx = (size_t)(k - conf_key_table);
	if (p->lines[idx] != 0) {
		conf_subject(subject, sizeof subject, k);
		conf_error(
		    p, lineno, subject, "duplicate key (first set on line %d)", p->lines[idx]);
		return -1;
	}
	if (*value == '"' && (bad = conf_unquote(value)) != NULL) {
		conf_key_error(p, lineno, k, bad);
		return -1;
	}
	if (conf_set(p, k, value, lineno) != 0)
		return -1;
	p->lines[idx] = lineno;
	return 0;
}

/* Index in the table of the key stored at offset; a miss is a bug here. */
static size_t
conf_index(size_t offset)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(conf_key_table); i++) {
		if (conf_key_table[i].offset == offset)
			return i;
	}
	abort();
}

static int
conf_line_of(const struct conf_parse *p, size_t offset)
{
	return p->lines[conf_index(offset)];
}

static const struct conf_key *
conf_key_at(size_t offset)
{
	return &conf_key_table[conf_index(offset)];
}

/* A callback path: absolute, no query, not one of the daemon's own. */
static int
conf_check_pay_path(struct conf_parse *p, size_t off, const char *path, const char *other)
{
	const char *why = NULL;

	if (path == NULL)
		return 0;
	if (path[0] != '/' || strpbrk(path, "?# \t") != NULL)
		why = "must be an absolute path without query, fragment or spaces";
	else if (strcmp(path, "/healthz") == 0 || strcmp(path, "/metrics") == 0)
		why = "is one of the daemon's own paths (/healthz, /metrics)";
	else if (other != NULL && strcmp(path, other) == 0)
		why = "is the same as the other provider's path";
	if (why == NULL)
		return 0;
	conf_key_error(p, conf_line_of(p, off), conf_key_at(off), why);
	return -1;
}

/* "60 300 900 3600": 1..16 ascending positive seconds. */
static bool
conf_ladder_ok(const char *s)
{
	long prev = 0, v;
	int n = 0;
	char *end;

	while (*s != '\0') {
		while (*s == ' ' || *s == '\t')
			s++;
		if (*s == '\0')
			break;
		errno = 0;
		v = strtol(s, &end, 10);
		if (end == s || errno != 0 || v <= prev || v > 30L * 86400 || ++n > 16 ||
		    (*end != '\0' && *end != ' ' && *end != '\t'))
			return false;
		prev = v;
		s = end;
	}
	return n > 0;
}

/* Calls to a provider need its ids, the keys to verify its answers, and
 * the public callback URL sent with each order. */
static int
conf_check_payout(struct conf_parse *p)
{
	struct conf *c = p->c;
	char why[256];
	const char *missing;

	if (!conf_ladder_ok(c->payments_query_after)) {
		conf_key_error(p, conf_line_of(p, O(payments_query_after)),
		    conf_key_at(O(payments_query_after)),
		    "must be 1 to 16 ascending whole numbers of seconds, separated by spaces");
		return -1;
	}
	if (strlen(c->payments_reconcile_at) != 5 ||
	    !isdigit((unsigned char)c->payments_reconcile_at[0]) ||
	    !isdigit((unsigned char)c->payments_reconcile_at[1]) ||
	    c->payments_reconcile_at[2] != ':' ||
	    !isdigit((unsigned char)c->payments_reconcile_at[3]) ||
	    !isdigit((unsigned char)c->payments_reconcile_at[4]) ||
	    atoi(c->payments_reconcile_at) > 23 || atoi(c->payments_reconcile_at + 3) > 59) {
		conf_key_error(p, conf_line_of(p, O(payments_reconcile_at)),
		    conf_key_at(O(payments_reconcile_at)),
		    "must be HH:MM (Beijing time), e.g. 10:30");
		return -1;
	}
	if (c->payments_wechat_merchant_key_file != NULL) {
		missing = c->payments_wechat_merchant_serial == NULL ? "wechat_merchant_serial"
		          : c->payments_wechat_mchid == NULL         ? "wechat_mchid"
		          : c->payments_wechat_appids == NULL        ? "wechat_appids"
		          : c->payments_wechat_notify_url == NULL    ? "wechat_notify_url"
		          : c->payments_wechat_platform_certs == NULL &&
		                  c->payments_wechat_public_key_file == NULL
		              ? "wechat_platform_certs or wechat_public_key_file"
		              : NULL;
		if (missing != NULL) {
			snprintf(why, sizeof why, "calls to WeChat Pay need payments.%s", missing);
			conf_key_error(p, conf_line_of(p, O(payments_wechat_merchant_key_file)),
			    conf_key_at(O(payments_wechat_merchant_key_file)), why);
			return -1;
		}
	}
	if (c->payments_alipay_app_key_file != NULL) {
		missing = c->payments_alipay_app_id == NULL            ? "alipay_app_id"
		          : c->payments_alipay_public_key_file == NULL ? "alipay_public_key_file"
		          : c->payments_alipay_notify_url == NULL      ? "alipay_notify_url"
		                                                       : NULL;
		if (missing != NULL) {
			snprintf(why, sizeof why, "calls to Alipay need payments.%s", missing);
			conf_key_error(p, conf_line_of(p, O(payments_alipay_app_key_file)),
			    conf_key_at(O(payments_alipay_app_key_file)), why);
			return -1;
		}
	}
	return 0;
}

/* A provider's callback needs its merchant ids and keys. */
static int
conf_check_payments(struct conf_parse *p)
{
	struct conf *c = p->c;
	char why[256];

	if (conf_check_pay_path(p, O(payments_wechat_path), c->payments_wechat_path, NULL) != 0 ||
	    conf_check_pay_path(
	        p, O(payments_alipay_path), c->payments_alipay_path, c->payments_wechat_path) != 0)
		return -1;
	if ((c->payments_wechat_public_key_id == NULL) !=
	    (c->payments_wechat_public_key_file == NULL)) {
		size_t off = c->payments_wechat_public_key_id != NULL
		                 ? O(payments_wechat_public_key_id)
		                 : O(payments_wechat_public_key_file);

		conf_key_error(p, conf_line_of(p, off), conf_key_at(off),
		    "give both payments.wechat_public_key_id and wechat_public_key_file, or "
		    "neither");
		return -1;
	}
	if (c->payments_wechat_path != NULL) {
		const char *missing = c->payments_wechat_mchid == NULL    ? "wechat_mchid"
		                      : c->payments_wechat_appids == NULL ? "wechat_appids"
		                      : c->payments_wechat_apiv3_key_file == NULL
		                          ? "wechat_apiv3_key_file"
		                      : c->payments_wechat_platform_certs == NULL &&
		                              c->payments_wechat_public_key_file == NULL
		                          ? "wechat_platform_certs or wechat_public_key_file"
		                          : NULL;

		if (missing != NULL) {
			snprintf(why, sizeof why, "WeChat Pay callbacks need payments.%s", missing);
			conf_key_error(p, conf_line_of(p, O(payments_wechat_path)),
			    conf_key_at(O(payments_wechat_path)), why);
			return -1;
		}
	}
	if (c->payments_alipay_path != NULL) {
		const char *missing = c->payments_alipay_app_id == NULL ? "alipay_app_id"
		                      : c->payments_alipay_public_key_file == NULL
		                          ? "alipay_public_key_file"
		                          : NULL;

		if (missing != NULL) {
			snprintf(why, sizeof why, "Alipay notifications need payments.%s", missing);
			conf_key_error(p, conf_line_of(p, O(payments_alipay_path)),
			    conf_key_at(O(payments_alipay_path)), why);
			return -1;
		}
	}
	return conf_check_payout(p);
}

/* The pay page: a path of its own, a public URL for its links, amounts. */
static int
conf_check_paypage(struct conf_parse *p)
{
	struct conf *c = p->c;
	int64_t fen[16];
	char why[256];
	const char *u;

	if (c->paypage_path == NULL)
		return 0;
	if (conf_check_pay_path(p, O(paypage_path), c->paypage_path, c->payments_wechat_path) !=
	        0 ||
	    conf_check_pay_path(p, O(paypage_path), c->paypage_path, c->payments_alipay_path) != 0)
		return -1;
	if (strlen(c->paypage_path) < 2 || c->paypage_path[strlen(c->paypage_path) - 1] == '/') {
		conf_key_error(p, conf_line_of(p, O(paypage_path)), conf_key_at(O(paypage_path)),
		    "must be a path such as /p, without a trailing /");
		return -1;
	}
	u = c->paypage_public_url;
	if (u == NULL) {
		conf_key_error(p, conf_line_of(p, O(paypage_path)), conf_key_at(O(paypage_path)),
		    "the pay page needs paypage.public_url (its links are printed with it)");
		return -1;
	}
	if ((strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0) ||
	    strpbrk(u, "?# \t\"'<>") != NULL || u[strlen(u) - 1] == '/') {
		conf_key_error(p, conf_line_of(p, O(paypage_public_url)),
		    conf_key_at(O(paypage_public_url)),
		    "must be https://host[:port][/prefix] without a trailing /, query or quotes");
		return -1;
	}
	if (paypage_amounts_parse(c->paypage_amounts, fen, (int)ARRAY_SIZE(fen), why, sizeof why) <
	    0) {
		conf_key_error(
		    p, conf_line_of(p, O(paypage_amounts)), conf_key_at(O(paypage_amounts)), why);
		return -1;
	}
	u = c->paypage_stub_handoff_url;
	if (u != NULL && ((strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0) ||
	                     strpbrk(u, "# \t\"'<>") != NULL)) {
		conf_key_error(p, conf_line_of(p, O(paypage_stub_handoff_url)),
		    conf_key_at(O(paypage_stub_handoff_url)), "must be an http(s) URL");
		return -1;
	}
	return 0;
}

/*
 * Rules between keys, checked once the whole file is read. Each error
 * points at the line of the key that was set last, which is where the
 * reader's eye should go.
 */
static int
conf_check_cross(struct conf_parse *p)
{
	struct conf *c = p->c;
	int lc, lk, li, lm, i;
	char why[256];

	lc = conf_line_of(p, O(mqtt_tls_cert));
	lk = conf_line_of(p, O(mqtt_tls_key));
	if (c->mqtt_tls_cert != NULL && c->mqtt_tls_key == NULL) {
		conf_key_error(p, lc, conf_key_at(O(mqtt_tls_cert)),
		    "set without mqtt.tls_key (give both or neither)");
		return -1;
	}
	if (c->mqtt_tls_key != NULL && c->mqtt_tls_cert == NULL) {
		conf_key_error(p, lk, conf_key_at(O(mqtt_tls_key)),
		    "set without mqtt.tls_cert (give both or neither)");
		return -1;
	}
	if (c->mqtt_tls_cert != NULL && c->mqtt_tls_ca == NULL) {
		/* libmosquitto cannot enable TLS without a CA to verify with. */
		if (lc > lk)
			conf_key_error(p, lc, conf_key_at(O(mqtt_tls_cert)),
			    "client certificate without mqtt.tls_ca");
		else
			conf_key_error(
			    p, lk, conf_key_at(O(mqtt_tls_key)), "client key without mqtt.tls_ca");
		return -1;
	}
	if (c->mqtt_password_file != NULL && c->mqtt_username == NULL) {
		/* libmosquitto ignores a password without a user name. */
		conf_key_error(p, conf_line_of(p, O(mqtt_password_file)),
		    conf_key_at(O(mqtt_password_file)), "set without mqtt.username");
		return -1;
	}

	li = conf_line_of(p, O(commands_retry_initial_ms));
	lm = conf_line_of(p, O(commands_retry_max_ms));
	if (c->commands_retry_max_ms < c->commands_retry_initial_ms) {
		if (lm > li) {
			snprintf(why, sizeof why, "%d is less than commands.retry_initial_ms (%d)",
			    c->commands_retry_max_ms, c->commands_retry_initial_ms);
			conf_key_error(p, lm, conf_key_at(O(commands_retry_max_ms)), why);
		} else {
			snprintf(why, sizeof why, "%d is greater than commands.retry_max_ms (%d)",
			    c->commands_retry_initial_ms, c->commands_retry_max_ms);
			conf_key_error(p, li, conf_key_at(O(commands_retry_initial_ms)), why);
		}
		return -1;
	}

	for (i = 0; i < c->ngateways; i++) {
		if (conf_gw_finish(p, &c->gateways[i]) != 0)
			return -1;
	}
	if (conf_check_paypage(p) != 0)
		return -1;
	return conf_check_payments(p);
}

/* ------------------------------------------------------------ secrets */

int
conf_secret_mode(unsigned mode, bool own_group, bool key, char *why, size_t len)
{
	if (mode & 0004) {
		snprintf(why, len, "readable by everyone (mode %04o)%s", mode & 07777,
		    key ? ": refused, as OpenSSH refuses such a key; chmod o-r it"
		        : ": chmod o-r it");
		return key ? -1 : 1;
	}
	if ((mode & 0040) && !own_group) {
		snprintf(why, len,
		    "readable by its group, which prepaidd is not in (mode %04o): chgrp it to "
		    "prepaidd's group or chmod g-r it",
		    mode & 07777);
		return 1;
	}
	return 0;
}

/* Whether gid is the process's group or one of its supplementary ones. */
static bool
conf_own_group(gid_t gid)
{
	gid_t groups[256];
	int n, i;

	if (gid == getegid() || gid == getgid())
		return true;
	n = getgroups((int)ARRAY_SIZE(groups), groups);
	for (i = 0; i < n; i++)
		if (groups[i] == gid)
			return true;
	return false;
}

/* Check one secret file; subject is "section.key" or "the configuration". */
static int
conf_secret(struct conf_parse *p, const char *path, int line, const char *subject, bool key)
{
	struct stat st;
	char why[256];
	int rc;

	if (path == NULL || stat(path, &st) != 0)
		return 0; /* unset; a missing file was refused while parsing */
	rc =
	    conf_secret_mode((unsigned)st.st_mode, conf_own_group(st.st_gid), key, why, sizeof why);
	if (rc < 0) {
		conf_error(p, line, subject, "%s is %s", path, why);
		return -1;
	}
	if (rc > 0 && p->c->nwarnings < CONF_WARNINGS_MAX) {
		if (line > 0)
			xasprintf(&p->c->warnings[p->c->nwarnings++], "%s:%d: %s: %s is %s",
			    p->path, line, subject, path, why);
		else
			xasprintf(&p->c->warnings[p->c->nwarnings++], "%s: %s is %s", p->path,
			    subject, why);
	}
	return 0;
}

/*
 * Files holding secrets: the configuration itself (a conninfo may carry a
 * password), the MQTT password and client key, the APIv3 key, the merchant
 * keys that sign calls to the providers, gateway secrets. Keys (the MQTT
 * client key, the APIv3 key, the WeChat Pay merchant key, the Alipay app
 * key, the Official Account's AppSecret, a gateway's API secret) readable by
 * everyone are refused; everything else open is warned about
 * (conf->warnings).
 */
static int
conf_check_secrets(struct conf_parse *p)
{
	static const struct {
		size_t offset;
		bool key;
	} files[] = {
	    {O(mqtt_password_file), false},
	    {O(mqtt_tls_key), true},
	    {O(payments_wechat_apiv3_key_file), true},
	    {O(payments_wechat_merchant_key_file), true},
	    {O(payments_alipay_app_key_file), true},
	    {O(payments_wechat_app_secret_file), true},
	};
	const struct conf_key *k;
	char subject[96];
	size_t i, j;
	int g;

	if (conf_secret(p, p->path, 0, "the configuration file", false) != 0)
		return -1;
	for (i = 0; i < ARRAY_SIZE(files); i++) {
		for (j = 0; j < ARRAY_SIZE(conf_key_table); j++)
			if (conf_key_table[j].offset == files[i].offset)
				break;
		k = &conf_key_table[j];
		conf_subject(subject, sizeof subject, k);
		if (conf_secret(
		        p, *(char **)conf_field(p->c, k), p->lines[j], subject, files[i].key) != 0)
			return -1;
	}
	for (g = 0; g < p->c->ngateways; g++) {
		snprintf(subject, sizeof subject, "gateway.%s.secret_file", p->c->gateways[g].name);
		if (conf_secret(p, p->c->gateways[g].secret_file,
		        conf_gw_line(p, &p->c->gateways[g], G(secret_file)), subject, true) != 0)
			return -1;
	}
	return 0;
}

struct conf *
conf_load(const char *path, char *err, size_t errlen)
{
	struct conf_parse p;
	const char *section = NULL;
	char *line = NULL;
	size_t cap = 0, i;
	ssize_t len;
	int lineno = 0;
	FILE *f;

	memset(&p, 0, sizeof p);
	p.path = path;
	p.err = err;
	p.errlen = errlen;
	if (err != NULL && errlen > 0)
		err[0] = '\0';

	if ((f = fopen(path, "re")) == NULL) {
		conf_error(&p, 0, NULL, "cannot open: %s", strerror(errno));
		return NULL;
	}
	p.c = xcalloc(1, sizeof *p.c);
	p.c->path = xstrdup(path);
	for (i = 0; i < ARRAY_SIZE(conf_key_table); i++) {
		if (conf_key_table[i].def != NULL &&
		    conf_set(&p, &conf_key_table[i], conf_key_table[i].def, 0) != 0)
			goto fail;
	}

	while ((len = getline(&line, &cap, f)) != -1) {
		if (conf_parse_line(&p, line, (size_t)len, ++lineno, &section) != 0)
			goto fail;
	}
	if (ferror(f)) {
		conf_error(&p, 0, NULL, "cannot read: %s", strerror(errno));
		goto fail;
	}
	if (conf_check_cross(&p) != 0)
		goto fail;
	if (conf_check_secrets(&p) != 0)
		goto fail;
	p.c->key_lines = xcalloc(ARRAY_SIZE(conf_key_table), sizeof(int));
	memcpy(p.c->key_lines, p.lines, sizeof p.lines);

	/* The line buffer may have held a conninfo with a password in it. */
	if (line != NULL)
		explicit_bzero(line, cap);
	free(line);
	fclose(f);
	return p.c;

fail:
	if (line != NULL)
		explicit_bzero(line, cap);
	free(line);
	fclose(f);
	conf_free(p.c);
	return NULL;
}

void
conf_free(struct conf *c)
{
	size_t i;
	char **sp;

	if (c == NULL)
		return;
	for (i = 0; i < ARRAY_SIZE(conf_key_table); i++) {
		if (!conf_is_string(&conf_key_table[i]))
			continue;
		sp = conf_field(c, &conf_key_table[i]);
		/* conninfo may carry a password too. */
		if (conf_key_table[i].offset == O(database_conninfo))
			conf_wipe_free(*sp);
		else
			free(*sp);
	}
	conf_wipe_free(c->mqtt_password);
	for (i = 0; i < (size_t)c->ngateways; i++)
		conf_gw_free(&c->gateways[i]);
	for (i = 0; i < (size_t)c->nwarnings; i++)
		free(c->warnings[i]);
	free(c->key_lines);
	free(c->path);
	free(c);
}

int
conf_line(const struct conf *c, const void *field)
{
	size_t off = (size_t)((const char *)field - (const char *)c), i;

	if (c->key_lines == NULL)
		return 0;
	for (i = 0; i < ARRAY_SIZE(conf_key_table); i++)
		if (conf_key_table[i].offset == off)
			return c->key_lines[i];
	return 0;
}

static bool
conf_str_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

bool
conf_needs_restart(const struct conf *old, const struct conf *new_conf, char *out, size_t outlen)
{
	const struct conf_key *k;
	bool same = true;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(conf_key_table); i++) {
		k = &conf_key_table[i];
		if (k->reloadable)
			continue;
		switch (k->type) {
		case CONF_INT:
		case CONF_ENUM:
			same = *(const int *)conf_cfield(old, k) ==
			       *(const int *)conf_cfield(new_conf, k);
			break;
		case CONF_BOOL:
			same = *(const bool *)conf_cfield(old, k) ==
			       *(const bool *)conf_cfield(new_conf, k);
			break;
		case CONF_STRING:
		case CONF_FILE:
		case CONF_TEMPLATE:
			same = conf_str_equal(*(char *const *)conf_cfield(old, k),
			    *(char *const *)conf_cfield(new_conf, k));
			break;
		}
		/* The same password file may hold a new password. */
		if (same && k->offset == O(mqtt_password_file))
			same = conf_str_equal(old->mqtt_password, new_conf->mqtt_password);
		if (!same) {
			if (out != NULL && outlen > 0)
				conf_subject(out, outlen, k);
			return true;
		}
	}
	if (out != NULL && outlen > 0)
		out[0] = '\0';
	return false;
}

void
conf_keep_fixed(struct conf *new_conf, const struct conf *old)
{
	const struct conf_key *k;
	char **dst;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(conf_key_table); i++) {
		k = &conf_key_table[i];
		if (k->reloadable)
			continue;
		switch (k->type) {
		case CONF_INT:
		case CONF_ENUM:
			*(int *)conf_field(new_conf, k) = *(const int *)conf_cfield(old, k);
			break;
		case CONF_BOOL:
			*(bool *)conf_field(new_conf, k) = *(const bool *)conf_cfield(old, k);
			break;
		case CONF_STRING:
		case CONF_FILE:
		case CONF_TEMPLATE:
			dst = conf_field(new_conf, k);
			free(*dst);
			*dst = *(char *const *)conf_cfield(old, k)
			           ? xstrdup(*(char *const *)conf_cfield(old, k))
			           : NULL;
			break;
		}
	}
	conf_wipe_free(new_conf->mqtt_password);
	new_conf->mqtt_password = old->mqtt_password ? xstrdup(old->mqtt_password) : NULL;
}
