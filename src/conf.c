/*
 * conf.c: reading and checking prepaidd.conf. The table conf_key_table is
 * the one list of keys: the parser, the defaults, the range checks, the
 * reload rules (conf_needs_restart), `prepaidd -n` and the docs-drift test
 * all walk it, so a key added here and nowhere else fails `make check` until
 * the sample config and the manual describe it. Loading is all or nothing: a
 * file is parsed completely into a new struct conf, and the first error
 * returns NULL with "FILE:LINE: section.key: what is wrong", so a bad reload
 * never touches the running configuration.
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

/* Longest line accepted; far beyond any sane conninfo. */
#define CONF_LINE_MAX 4096
/* Largest password file; a password is a line, not a document. */
#define CONF_SECRET_MAX 1024
/* mosquitto accepts long ids, but an id this long is a mistake. */
#define CONF_CLIENT_ID_MAX 128

#define O(field) offsetof(struct conf, field)

static const struct conf_key conf_key_table[] = {
	/* section, name, type, default, min, max, reloadable, field, help */
	{ "database", "conninfo", CONF_STRING, "dbname=prepaid", 0, 0, true,
	  O(db_conninfo), "libpq connection string or URI" },
	{ "database", "reconnect_max_ms", CONF_INT, "30000", 1000, 600000, true,
	  O(db_reconnect_max_ms), "cap of the reconnect backoff, milliseconds" },

	{ "mqtt", "host", CONF_STRING, "localhost", 0, 0, false,
	  O(mqtt_host), "broker host name or address" },
	{ "mqtt", "port", CONF_INT, "1883", 1, 65535, false,
	  O(mqtt_port), "broker TCP port" },
	{ "mqtt", "client_id", CONF_STRING, "prepaidd", 0, 0, false,
	  O(mqtt_client_id), "stable client id, unique per instance" },
	{ "mqtt", "username", CONF_STRING, NULL, 0, 0, false,
	  O(mqtt_username), "user name for the broker (unset: none)" },
	{ "mqtt", "password_file", CONF_FILE, NULL, 0, 0, false,
	  O(mqtt_password_file), "file holding the broker password" },
	{ "mqtt", "tls_ca", CONF_FILE, NULL, 0, 0, false,
	  O(mqtt_tls_ca), "CA certificate file; TLS is on when set" },
	{ "mqtt", "tls_cert", CONF_FILE, NULL, 0, 0, false,
	  O(mqtt_tls_cert), "client certificate file (with tls_key)" },
	{ "mqtt", "tls_key", CONF_FILE, NULL, 0, 0, false,
	  O(mqtt_tls_key), "client private key file (with tls_cert)" },
	{ "mqtt", "topic_prefix", CONF_STRING, "meters", 0, 0, false,
	  O(mqtt_topic_prefix), "first topic levels before <meter id>" },
	{ "mqtt", "qos", CONF_INT, "1", 0, 2, false,
	  O(mqtt_qos), "QoS of subscriptions and commands" },
	{ "mqtt", "keepalive", CONF_INT, "30", 5, 3600, false,
	  O(mqtt_keepalive), "MQTT keepalive, seconds" },
	{ "mqtt", "shared_group", CONF_STRING, NULL, 0, 0, false,
	  O(mqtt_shared_group), "share readings via $share/<group>/ (unset: off)" },
	{ "mqtt", "reconnect_max_ms", CONF_INT, "30000", 1000, 600000, true,
	  O(mqtt_reconnect_max_ms), "cap of the reconnect backoff, milliseconds" },

	{ "ingest", "batch_size", CONF_INT, "1000", 1, 50000, true,
	  O(ingest_batch_size), "readings written per database round trip" },
	{ "ingest", "batch_window_ms", CONF_INT, "50", 1, 10000, true,
	  O(ingest_batch_window_ms), "flush a partial batch after, milliseconds" },
	{ "ingest", "queue_bound", CONF_INT, "20000", 100, 10000000, false,
	  O(ingest_queue_bound), "items held before reading from MQTT stops" },
	{ "ingest", "max_payload_bytes", CONF_INT, "65536", 256, 16777216, true,
	  O(ingest_max_payload), "larger payloads are rejected, bytes" },
	{ "ingest", "auto_register", CONF_BOOL, "true", 0, 0, true,
	  O(ingest_auto_register), "register unknown meters instead of rejecting" },
	{ "ingest", "resend_on_gap", CONF_BOOL, "true", 0, 0, true,
	  O(ingest_resend_on_gap), "ask a meter to resend after a sequence gap" },
	{ "ingest", "reject_log_interval", CONF_INT, "60", 1, 86400, true,
	  O(ingest_reject_log_interval), "seconds between reject log lines per meter" },
	{ "ingest", "rejects_keep", CONF_INT, "10000", 100, 10000000, true,
	  O(ingest_rejects_keep), "rows kept in prepaid.rejects" },
	{ "ingest", "partitions_ahead", CONF_INT, "3", 1, 24, true,
	  O(ingest_partitions_ahead), "months of reading partitions made ahead" },

	{ "commands", "retry_initial_ms", CONF_INT, "5000", 100, 3600000, true,
	  O(cmd_retry_initial_ms), "first resend of an unacknowledged command" },
	{ "commands", "retry_max_ms", CONF_INT, "60000", 100, 3600000, true,
	  O(cmd_retry_max_ms), "cap of the resend backoff, milliseconds" },
	{ "commands", "poll_interval_ms", CONF_INT, "1000", 50, 60000, true,
	  O(cmd_poll_interval_ms), "outbox poll behind NOTIFY, milliseconds" },
	{ "commands", "claim_batch", CONF_INT, "100", 1, 10000, true,
	  O(cmd_claim_batch), "commands claimed per round trip" },

	{ "http", "enabled", CONF_BOOL, "true", 0, 0, false,
	  O(http_enabled), "serve /metrics and /healthz" },
	{ "http", "listen", CONF_STRING, "127.0.0.1", 0, 0, false,
	  O(http_listen), "address the HTTP endpoint listens on" },
	{ "http", "port", CONF_INT, "9187", 1, 65535, false,
	  O(http_port), "port the HTTP endpoint listens on" },

	{ "log", "level", CONF_STRING, "info", 0, 0, true,
	  O(log_level), "error, warning, info or debug" },
};

static const char *conf_log_levels[] = { "error", "warning", "info", "debug" };

/* State of one conf_load: where errors go and on which line each key was set. */
struct conf_parse {
	const char *path;
	char *err;
	size_t errlen;
	struct conf *c;
	int lines[ARRAY_SIZE(conf_key_table)]; /* 0: still the default */
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
	return k->type == CONF_STRING || k->type == CONF_FILE;
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
	snprintf(p->err, p->errlen, "%s%s: %s%s%s", p->path, where,
	    subject != NULL ? subject : "", subject != NULL ? ": " : "", msg);
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
	static const char *yes[] = { "true", "yes", "on", "1" };
	static const char *no[] = { "false", "no", "off", "0" };
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
 * Read the password file already opened as fd into c->mqtt_password. One
 * line is expected; trailing newlines (and carriage returns) are dropped.
 */
static const char *
conf_read_secret(struct conf *c, int fd, char *why, size_t len)
{
	char buf[CONF_SECRET_MAX + 1];
	size_t have = 0;
	ssize_t n;
	const char *bad = NULL;

	for (;;) {
		n = read(fd, buf + have, sizeof buf - have);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			snprintf(why, len, "cannot read %s: %s", c->mqtt_password_file,
			    strerror(errno));
			bad = why;
			goto out;
		}
		if (n == 0)
			break;
		have += (size_t)n;
		if (have == sizeof buf) {
			snprintf(why, len, "%s is larger than %d bytes",
			    c->mqtt_password_file, CONF_SECRET_MAX);
			bad = why;
			goto out;
		}
	}
	while (have > 0 && (buf[have - 1] == '\n' || buf[have - 1] == '\r'))
		have--;
	if (memchr(buf, '\0', have) != NULL) {
		snprintf(why, len, "%s contains a NUL byte", c->mqtt_password_file);
		bad = why;
		goto out;
	}
	conf_wipe_free(c->mqtt_password);
	c->mqtt_password = xstrndup(buf, have);
out:
	explicit_bzero(buf, sizeof buf);
	return bad;
}

/*
 * A CONF_FILE key names a file the daemon will need later (possibly after
 * dropping privileges or inside a sandbox): check now that it can be read,
 * so that a typo fails the start or the reload rather than the first TLS
 * handshake.
 */
static const char *
conf_check_file(struct conf *c, const struct conf_key *k, const char *path,
    char *why, size_t len)
{
	struct stat st;
	const char *bad = NULL;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1) {
		snprintf(why, len, "cannot read %s: %s", path, strerror(errno));
		return why;
	}
	if (fstat(fd, &st) == -1) {
		snprintf(why, len, "cannot read %s: %s", path, strerror(errno));
		bad = why;
	} else if (S_ISDIR(st.st_mode)) {
		snprintf(why, len, "cannot read %s: %s", path, strerror(EISDIR));
		bad = why;
	} else if (k->offset == O(mqtt_password_file))
		bad = conf_read_secret(c, fd, why, len);
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
			snprintf(why, sizeof why, "%s is out of range (%ld..%ld)", value,
			    k->min, k->max);
			bad = why;
		} else
			*(int *)conf_field(p->c, k) = (int)lv;
		break;
	case CONF_BOOL:
		if (!conf_parse_bool(value, &bv)) {
			snprintf(why, sizeof why,
			    "\"%s\" is not a boolean (true/false, yes/no, on/off, 1/0)",
			    value);
			bad = why;
		} else
			*(bool *)conf_field(p->c, k) = bv;
		break;
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
conf_parse_line(struct conf_parse *p, char *line, size_t len, int lineno,
    const char **section)
{
	const struct conf_key *k;
	char subject[128], list[128];
	char *s, *e, *eq, *key, *value;
	const char *bad, *sec;
	size_t idx;

	if (len > 0 && line[len - 1] == '\n')
		line[--len] = '\0';
	if (len > 0 && line[len - 1] == '\r')
		line[--len] = '\0';
	if (len > CONF_LINE_MAX) {
		s = conf_trim(line);
		conf_line_subject(subject, sizeof subject, *section, s);
		conf_error(p, lineno, subject, "line too long (more than %d bytes)",
		    CONF_LINE_MAX);
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
		conf_line_subject(subject, sizeof subject, *section, s);
		conf_error(p, lineno, subject, "missing '=' after the key");
		return -1;
	}
	*eq = '\0';
	key = conf_trim(s);
	value = conf_trim(eq + 1);
	if (*key == '\0') {
		conf_error(p, lineno, *section, "missing key name before '='");
		return -1;
	}
	if (*section == NULL) {
		conf_line_subject(subject, sizeof subject, NULL, key);
		conf_error(p, lineno, subject, "key outside any [section]");
		return -1;
	}
	if ((k = conf_find(*section, key)) == NULL) {
		conf_line_subject(subject, sizeof subject, *section, key);
		conf_error(p, lineno, subject, "unknown key");
		return -1;
	}
	idx = (size_t)(k - conf_key_table);
	if (p->lines[idx] != 0) {
		conf_subject(subject, sizeof subject, k);
		conf_error(p, lineno, subject, "duplicate key (first set on line %d)",
		    p->lines[idx]);
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

/*
 * Rules between keys, checked once the whole file is read. Each error
 * points at the line of the key that was set last, which is where the
 * reader's eye should go.
 */
static int
conf_check_cross(struct conf_parse *p)
{
	struct conf *c = p->c;
	int lc, lk, li, lm;
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
			conf_key_error(p, lk, conf_key_at(O(mqtt_tls_key)),
			    "client key without mqtt.tls_ca");
		return -1;
	}
	if (c->mqtt_password_file != NULL && c->mqtt_username == NULL) {
		/* libmosquitto ignores a password without a user name. */
		conf_key_error(p, conf_line_of(p, O(mqtt_password_file)),
		    conf_key_at(O(mqtt_password_file)), "set without mqtt.username");
		return -1;
	}

	li = conf_line_of(p, O(cmd_retry_initial_ms));
	lm = conf_line_of(p, O(cmd_retry_max_ms));
	if (c->cmd_retry_max_ms < c->cmd_retry_initial_ms) {
		if (lm > li) {
			snprintf(why, sizeof why,
			    "%d is less than commands.retry_initial_ms (%d)",
			    c->cmd_retry_max_ms, c->cmd_retry_initial_ms);
			conf_key_error(p, lm, conf_key_at(O(cmd_retry_max_ms)), why);
		} else {
			snprintf(why, sizeof why,
			    "%d is greater than commands.retry_max_ms (%d)",
			    c->cmd_retry_initial_ms, c->cmd_retry_max_ms);
			conf_key_error(p, li, conf_key_at(O(cmd_retry_initial_ms)), why);
		}
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
		if (conf_key_table[i].offset == O(db_conninfo))
			conf_wipe_free(*sp);
		else
			free(*sp);
	}
	conf_wipe_free(c->mqtt_password);
	free(c->path);
	free(c);
}

static bool
conf_str_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

bool
conf_needs_restart(const struct conf *old, const struct conf *new_conf,
    char *out, size_t outlen)
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
			same = *(const int *)conf_cfield(old, k) ==
			    *(const int *)conf_cfield(new_conf, k);
			break;
		case CONF_BOOL:
			same = *(const bool *)conf_cfield(old, k) ==
			    *(const bool *)conf_cfield(new_conf, k);
			break;
		case CONF_STRING:
		case CONF_FILE:
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
			*(int *)conf_field(new_conf, k) = *(const int *)conf_cfield(old, k);
			break;
		case CONF_BOOL:
			*(bool *)conf_field(new_conf, k) = *(const bool *)conf_cfield(old, k);
			break;
		case CONF_STRING:
		case CONF_FILE:
			dst = conf_field(new_conf, k);
			free(*dst);
			*dst = *(char *const *)conf_cfield(old, k) ?
			    xstrdup(*(char *const *)conf_cfield(old, k)) : NULL;
			break;
		}
	}
	conf_wipe_free(new_conf->mqtt_password);
	new_conf->mqtt_password = old->mqtt_password ? xstrdup(old->mqtt_password) : NULL;
}
