/*
 * conf.h: the configuration of prepaidd. Every key is declared once, in the
 * table in conf.c (section, name, type, default, limits, whether a reload
 * may change it, a one-line description); parsing, `prepaidd -n`, the
 * reload rules and the docs-drift test are all driven from that table.
 *
 * File format: INI. `[section]` headers, `key = value` lines, `#` or `;`
 * comments on their own line, blank lines. Values may be double-quoted.
 * Unknown sections or keys, duplicate keys, bad values and values out of
 * range are errors reported as "FILE:LINE: section.key: what is wrong".
 * `[gateway NAME]` sections repeat, one per gateway; errors in them read
 * "FILE:LINE: gateway.NAME.key: what is wrong".
 *
 * A field is named after its key: section_key for a [section] key
 * (mqtt_host holds [mqtt] host, payments_wechat_mchid [payments]
 * wechat_mchid), the key itself in struct conf_gateway, whose repeated
 * header key fills header_name and header_value.
 */
#ifndef PREPAIDD_CONF_H
#define PREPAIDD_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include "template.h"

/*
 * A notification gateway, from a [gateway NAME] section: how one SMS or
 * e-mail leaves, as templates. Every template field holds the template text
 * exactly as configured (already checked by template_parse against
 * conf_gateway_placeholders(), so rendering can only fail on a value);
 * the dispatcher parses it again into a struct template it owns. Enum
 * fields hold the index of the configured word in the order listed.
 * Cross-key defaults are already applied: content_type, region, action,
 * api_version and service hold what will be used, or NULL when unused.
 */
#define CONF_GATEWAYS_MAX 16 /* [gateway NAME] sections per file */
#define CONF_GW_NAME_MAX 32 /* NAME: 1..32 of [a-z0-9_-] */
#define CONF_GW_HEADERS_MAX 16 /* header = lines per gateway */
#define CONF_GW_STATUS_MAX 16 /* codes in success_status */

enum conf_gw_channel { CONF_GW_SMS, CONF_GW_EMAIL };
enum conf_gw_type { CONF_GW_HTTP, CONF_GW_SMTP };
enum conf_gw_method { CONF_GW_POST, CONF_GW_GET, CONF_GW_PUT };
enum conf_gw_escape { CONF_GW_ESC_JSON, CONF_GW_ESC_FORM, CONF_GW_ESC_RAW };
enum conf_gw_auth {
	CONF_GW_AUTH_NONE,
	CONF_GW_AUTH_BASIC,
	CONF_GW_AUTH_BEARER,
	CONF_GW_AUTH_HEADER
};
enum conf_gw_signer { CONF_GW_SIGNER_NONE, CONF_GW_SIGNER_ALIYUN, CONF_GW_SIGNER_TENCENT };

struct conf_gateway {
	char name[CONF_GW_NAME_MAX + 1];
	int line; /* line of its [gateway NAME] header */

	int channel; /* enum conf_gw_channel */
	int type; /* enum conf_gw_type */
	char *url; /* template, placeholders escaped as TEMPLATE_URL */
	int method; /* enum conf_gw_method (http only) */

	/* header = "Name: value" lines in file order; name is an HTTP token,
	 * value a template (TEMPLATE_HEADER), possibly empty. */
	char *header_name[CONF_GW_HEADERS_MAX];
	char *header_value[CONF_GW_HEADERS_MAX];
	int nheaders;

	char *body; /* template: the body key's value, or the
	               contents of body_file; NULL: no body */
	char *body_file; /* path, when the body came from a file */
	int escape; /* enum conf_gw_escape */
	enum template_mode body_mode; /* the same as a template mode */
	char *content_type; /* NULL for GET and smtp */

	int auth; /* enum conf_gw_auth */
	char *username; /* basic auth, or the SMTP login */
	char *secret_file;
	char *secret; /* password, token or key: never log it */
	char *auth_header; /* header name for auth = header */

	int signer; /* enum conf_gw_signer */
	char *access_key_id; /* with a signer */
	char *region; /* aliyun: RegionId; tencent: X-TC-Region */
	char *action; /* with a signer: "SendSms" */
	char *api_version; /* aliyun 2017-05-25, tencent 2021-01-11 */
	char *service; /* tencent only: "sms" */

	char *success_status; /* as written: "200,201,202" */
	int status[CONF_GW_STATUS_MAX]; /* the same, parsed */
	int nstatus;
	char *success_field; /* dot path into the JSON answer, or NULL */
	char *success_value; /* required with success_field */
	char *message_id_field; /* dot path or "header:Name", or NULL */
	char *mail_from; /* smtp: the envelope and From address */

	int timeout_ms;
	int concurrency; /* requests in flight at once */
	int max_attempts; /* including the first */
	int retry_initial_ms; /* first backoff; doubles up to retry_max_ms */
	int retry_max_ms;
};

#define CONF_WARNINGS_MAX 16

struct conf {
	char *path; /* the file it was read from */
	/* What conf_load found risky but accepted ("FILE:LINE: key: why"): the
	 * caller prints them (-n) or logs them (start, reload). */
	char *warnings[CONF_WARNINGS_MAX];
	int nwarnings;
	int *key_lines; /* line of each key of the table; 0: the default */

	/* [database] */
	char *database_conninfo; /* libpq conninfo string or URI */
	int database_reconnect_max_ms; /* cap of the reconnect backoff */

	/* [mqtt] */
	char *mqtt_host;
	int mqtt_port;
	char *mqtt_client_id; /* stable id: the broker keeps our session */
	char *mqtt_username; /* optional */
	char *mqtt_password_file; /* optional; file holds the password */
	char *mqtt_password; /* read from mqtt_password_file, never logged */
	char *mqtt_tls_ca; /* optional CA file: TLS on when set */
	char *mqtt_tls_cert; /* optional client certificate */
	char *mqtt_tls_key; /* optional client key */
	char *mqtt_topic_prefix; /* default "meters" */
	int mqtt_qos; /* 0..2, default 1 */
	int mqtt_keepalive; /* seconds */
	char *mqtt_shared_group; /* optional: subscribe via $share/<group>/... */
	int mqtt_reconnect_max_ms;
	int mqtt_session_resend_hours; /* session lost: meters seen this recently resend */
	int mqtt_session_resend_rate; /* session lost: resend requests per second */

	/* [journal] */
	bool journal_enabled; /* off only for benchmarks: unsafe */
	char *journal_directory;
	int journal_sync_ms; /* fdatasync at most this often */
	int journal_max_mb; /* size bound */

	/* [ingest] */
	int ingest_batch_size; /* readings per database round trip */
	int ingest_batch_window_ms; /* flush a partial batch after this long */
	int ingest_queue_bound; /* items held in memory before reading stops */
	int ingest_max_payload_bytes; /* bytes; larger payloads are rejected */
	bool ingest_auto_register; /* unknown meters: register (true) or reject */
	bool ingest_resend_on_gap; /* enqueue a resend command for a seq gap */
	int ingest_reject_log_interval; /* seconds between log lines per meter */
	int ingest_rejects_keep; /* rows kept in prepaid.rejects */
	int ingest_partitions_ahead; /* months of reading partitions kept ready */
	int ingest_connections; /* batch writers, each on its own connection */

	/* [commands] */
	int commands_retry_initial_ms; /* first resend of an unacknowledged command */
	int commands_retry_max_ms; /* backoff cap */
	int commands_poll_interval_ms; /* outbox poll, a safety net behind NOTIFY */
	int commands_claim_batch; /* commands claimed per round trip */

	/* [http] */
	bool http_enabled;
	char *http_listen; /* address, default 127.0.0.1 */
	int http_port;
	int http_max_connections; /* connections served at once; more are closed */
	int http_max_connections_per_address; /* waiting ones; 0: no cap */
	int http_header_deadline_ms; /* the request head must arrive within this */
	int http_deadline_ms; /* a request must arrive whole within this */
	int http_max_body_bytes; /* bytes of a request body */
	int http_max_headers; /* request header lines */

	/* [payments] */
	int payments_connections; /* PostgreSQL connections for callbacks */
	int payments_answer_within_ms; /* answer a callback within this (WeChat: 5 s) */
	bool payments_notify_occupant; /* "payment received" SMS/e-mail */
	char *payments_wechat_path; /* WeChat Pay callback path; unset: off */
	char *payments_wechat_mchid;
	char *payments_wechat_appids; /* accepted appids, separated by spaces */
	char *payments_wechat_apiv3_key_file;
	char *payments_wechat_platform_certs; /* platform certificate files, separated by spaces */
	char *payments_wechat_public_key_id; /* PUB_KEY_ID_... of payments_wechat_public_key_file */
	char *payments_wechat_public_key_file;
	int payments_wechat_max_skew; /* seconds between Wechatpay-Timestamp and now */
	char *payments_alipay_path; /* Alipay callback path; unset: off */
	char *payments_alipay_app_id;
	char *payments_alipay_seller_id; /* optional */
	char *payments_alipay_public_key_file;
	/* [payments]: calls to the providers (payout.c) */
	char *payments_wechat_merchant_key_file; /* apiclient_key.pem; unset: no WeChat calls */
	char *payments_wechat_merchant_serial; /* serial of the merchant API certificate */
	char *payments_wechat_api_url; /* https://api.mch.weixin.qq.com */
	char *payments_wechat_notify_url; /* public URL of wechat_path, sent with orders */
	char *payments_alipay_app_key_file; /* the app private key; unset: no Alipay calls */
	char *payments_alipay_gateway_url; /* https://openapi.alipay.com/gateway.do */
	char *payments_alipay_notify_url; /* public URL of alipay_path, sent with orders */
	int payments_api_timeout_ms; /* one provider call, queueing included */
	char *payments_query_after; /* seconds after creation a pending order is queried */
	int payments_query_retry_s; /* a call without an answer is tried again after */
	int payments_query_poll_s; /* how often due orders and refunds are looked for */
	char *payments_reconcile_at; /* HH:MM Beijing time: yesterday's bills are fetched */
	/* [payments]: the pay page's JSAPI openid step (payout.c) */
	char *payments_wechat_app_secret_file; /* Official Account AppSecret; unset: no JSAPI */
	char *payments_wechat_authorize_url; /* WeChat's OAuth2 authorize page */
	char *payments_wechat_oauth_api_url; /* https://api.weixin.qq.com: code -> openid */
	int payments_rejects_keep; /* unverified rows kept in prepaid.payment_rejects */

	/* [paypage] */
	char *paypage_path; /* the page's path prefix; unset: off */
	char *paypage_public_url; /* scheme://host[:port] occupants reach */
	char *paypage_amounts; /* amount buttons, yuan, separated by spaces */
	int paypage_usage_days; /* days of use shown */
	int paypage_connections; /* PostgreSQL connections for the page */
	int paypage_answer_within_ms; /* 503 page if the database is slower */
	int paypage_rate_per_minute; /* requests per client address */
	int paypage_rate_burst;
	char *paypage_trusted_proxies; /* peers whose X-Forwarded-For is believed */
	int paypage_order_valid_minutes;
	char *paypage_stub_handoff_url; /* stand-in cashier (tests, demo) */

	/* [log] */
	char *log_level; /* error, warning, info, debug */

	/* [gateway NAME] sections, in file order; reloadable as a whole. */
	struct conf_gateway gateways[CONF_GATEWAYS_MAX];
	int ngateways;
};

/*
 * CONF_ENUM is stored as an int, the index of the value in choices;
 * CONF_TEMPLATE is a string checked with template_parse. Both are used by
 * gateway keys only.
 */
enum conf_type { CONF_STRING, CONF_INT, CONF_BOOL, CONF_FILE, CONF_ENUM, CONF_TEMPLATE };

struct conf_key {
	const char *section;
	const char *name;
	enum conf_type type;
	const char *def; /* default as text; NULL = unset */
	long min, max; /* for CONF_INT */
	bool reloadable; /* may change on SIGHUP without a restart */
	size_t offset; /* offsetof(struct conf, field), or of struct
	                  conf_gateway for gateway keys */
	const char *help; /* one line, used in docs and -n output */
	const char *const *choices; /* CONF_ENUM: the words, NULL-terminated */
	int repeat; /* > 1: may appear up to this many times */
};

/* The line of the key stored at field (a member of c), 0 if defaulted. */
int conf_line(const struct conf *c, const void *field);

/* The key table (for the docs-drift test and for listing). */
const struct conf_key *conf_keys(size_t *n);

/* The keys of a [gateway NAME] section; their section is "gateway". */
const struct conf_key *conf_gateway_keys(size_t *n);

/*
 * The placeholders a gateway template may use, NULL-terminated: what the
 * notification dispatcher supplies for every message.
 */
const char *const *conf_gateway_placeholders(void);

/* The gateway called name, or NULL. */
const struct conf_gateway *conf_gateway_find(const struct conf *c, const char *name);

/*
 * Load and validate a file. On success returns a new conf. On failure
 * returns NULL and writes "FILE:LINE: section.key: what is wrong" (or
 * "FILE: what is wrong" when no line applies, such as an unreadable file)
 * into err. Files named by CONF_FILE keys must exist and be readable;
 * mqtt_password is read from mqtt_password_file (trailing newline stripped).
 */
struct conf *conf_load(const char *path, char *err, size_t errlen);
/*
 * How open a secret file with this st_mode may be: 0 fine; 1 worth a
 * warning (readable by everyone, or by a group the daemon is not in:
 * own_group false); -1 refused (a key, key true, readable by everyone).
 * why says which and what to do.
 */
int conf_secret_mode(unsigned mode, bool own_group, bool key, char *why, size_t len);
void conf_free(struct conf *c);

/*
 * For SIGHUP: fill `out` with a description of the first key that differs
 * between old and new and may not change on reload ("mqtt.host"), return
 * true if there is one. Reloadable keys may differ freely.
 */
bool conf_needs_restart(
    const struct conf *old, const struct conf *new_conf, char *out, size_t outlen);

/*
 * For SIGHUP: copy every key that may not change on reload from the running
 * configuration into the new one, so a reload applies only reloadable keys
 * (the others keep their values until a restart). Gateways are all
 * reloadable: new_conf keeps the gateways of its own file.
 */
void conf_keep_fixed(struct conf *new_conf, const struct conf *old);

#endif
