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
 */
#ifndef PREPAIDD_CONF_H
#define PREPAIDD_CONF_H

#include <stdbool.h>
#include <stddef.h>

struct conf {
	char *path; /* the file it was read from */

	/* [database] */
	char *db_conninfo;          /* libpq conninfo string or URI */
	int db_reconnect_max_ms;    /* cap of the reconnect backoff */

	/* [mqtt] */
	char *mqtt_host;
	int mqtt_port;
	char *mqtt_client_id;       /* stable id: the broker keeps our session */
	char *mqtt_username;        /* optional */
	char *mqtt_password_file;   /* optional; file holds the password */
	char *mqtt_password;        /* read from mqtt_password_file, never logged */
	char *mqtt_tls_ca;          /* optional CA file: TLS on when set */
	char *mqtt_tls_cert;        /* optional client certificate */
	char *mqtt_tls_key;         /* optional client key */
	char *mqtt_topic_prefix;    /* default "meters" */
	int mqtt_qos;               /* 0..2, default 1 */
	int mqtt_keepalive;         /* seconds */
	char *mqtt_shared_group;    /* optional: subscribe via $share/<group>/... */
	int mqtt_reconnect_max_ms;

	/* [ingest] */
	int ingest_batch_size;      /* readings per database round trip */
	int ingest_batch_window_ms; /* flush a partial batch after this long */
	int ingest_queue_bound;     /* items held in memory before reading stops */
	int ingest_max_payload;     /* bytes; larger payloads are rejected */
	bool ingest_auto_register;  /* unknown meters: register (true) or reject */
	bool ingest_resend_on_gap;  /* enqueue a resend command for a seq gap */
	int ingest_reject_log_interval; /* seconds between log lines per meter */
	int ingest_rejects_keep;    /* rows kept in prepaid.rejects */
	int ingest_partitions_ahead; /* months of reading partitions kept ready */

	/* [commands] */
	int cmd_retry_initial_ms;   /* first resend of an unacknowledged command */
	int cmd_retry_max_ms;       /* backoff cap */
	int cmd_poll_interval_ms;   /* outbox poll, a safety net behind NOTIFY */
	int cmd_claim_batch;        /* commands claimed per round trip */

	/* [http] */
	bool http_enabled;
	char *http_listen;          /* address, default 127.0.0.1 */
	int http_port;

	/* [log] */
	char *log_level;            /* error, warning, info, debug */
};

enum conf_type { CONF_STRING, CONF_INT, CONF_BOOL, CONF_FILE };

struct conf_key {
	const char *section;
	const char *name;
	enum conf_type type;
	const char *def;        /* default as text; NULL = unset */
	long min, max;          /* for CONF_INT */
	bool reloadable;        /* may change on SIGHUP without a restart */
	size_t offset;          /* offsetof(struct conf, field) */
	const char *help;       /* one line, used in docs and -n output */
};

/* The key table (for the docs-drift test and for listing). */
const struct conf_key *conf_keys(size_t *n);

/*
 * Load and validate a file. On success returns a new conf. On failure
 * returns NULL and writes "FILE:LINE: section.key: what is wrong" (or
 * "FILE: what is wrong" when no line applies, such as an unreadable file)
 * into err. Files named by CONF_FILE keys must exist and be readable;
 * mqtt_password is read from mqtt_password_file (trailing newline stripped).
 */
struct conf *conf_load(const char *path, char *err, size_t errlen);
void conf_free(struct conf *c);

/*
 * For SIGHUP: fill `out` with a description of the first key that differs
 * between old and new and may not change on reload ("mqtt.host"), return
 * true if there is one. Reloadable keys may differ freely.
 */
bool conf_needs_restart(const struct conf *old, const struct conf *new_conf,
    char *out, size_t outlen);

/*
 * For SIGHUP: copy every key that may not change on reload from the running
 * configuration into the new one, so a reload applies only reloadable keys
 * (the others keep their values until a restart).
 */
void conf_keep_fixed(struct conf *new_conf, const struct conf *old);

#endif
