/*
 * check_conf.c: unit tests of conf.c, the configuration parser. Each test
 * writes a small config to a temporary file, loads it with the real
 * conf_load() and checks the values or the exact "FILE:LINE: section.key:"
 * error an operator would see. The docs-drift tests walk conf_keys() and
 * fail, naming the keys, when the sample config or prepaidd.conf(5) does
 * not describe every key; another proves the shipped sample loads as is.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "common.h"
#include "conf.h"

#ifndef TOP_SRCDIR
#error "TOP_SRCDIR must be defined by the build"
#endif

#define CONF_SAMPLE TOP_SRCDIR "/etc/prepaidd.conf"
#define CONF_MANUAL TOP_SRCDIR "/man/prepaidd.conf.5"

/* Temporary files made by a test; removed by conf_test_cleanup(). */
static char conf_test_paths[32][64];
static int conf_test_npaths;

static const char *
conf_test_file(const char *text)
{
	char *path;
	size_t len = strlen(text);
	int fd;

	ck_assert_int_lt(conf_test_npaths, (int)ARRAY_SIZE(conf_test_paths));
	path = conf_test_paths[conf_test_npaths++];
	snprintf(path, sizeof conf_test_paths[0], "/tmp/check_conf.XXXXXX");
	fd = mkstemp(path);
	ck_assert_msg(fd != -1, "mkstemp: %s", strerror(errno));
	ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
	close(fd);
	return path;
}

static void
conf_test_cleanup(void)
{
	int i;

	for (i = 0; i < conf_test_npaths; i++)
		unlink(conf_test_paths[i]);
	conf_test_npaths = 0;
}

/* Load text that must be valid. */
static struct conf *
conf_test_load(const char *text)
{
	char err[1024];
	struct conf *c;

	c = conf_load(conf_test_file(text), err, sizeof err);
	ck_assert_msg(c != NULL, "conf_load failed: %s", err);
	return c;
}

/*
 * Load text that must fail, and check the message begins with
 * "PATH:LINE: SUBJECT: " and contains want (when not NULL).
 */
static void
conf_test_fail(const char *text, int line, const char *subject, const char *want)
{
	char err[1024], prefix[256];
	const char *path = conf_test_file(text);
	struct conf *c;

	err[0] = '\0';
	c = conf_load(path, err, sizeof err);
	ck_assert_msg(c == NULL, "expected an error for:\n%s", text);
	if (line > 0 && subject != NULL)
		snprintf(prefix, sizeof prefix, "%s:%d: %s: ", path, line, subject);
	else if (line > 0)
		snprintf(prefix, sizeof prefix, "%s:%d: ", path, line);
	else
		snprintf(prefix, sizeof prefix, "%s: ", path);
	ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0,
	    "error \"%s\" does not begin with \"%s\"", err, prefix);
	if (want != NULL)
		ck_assert_msg(strstr(err, want) != NULL,
		    "error \"%s\" does not contain \"%s\"", err, want);
}

START_TEST(test_defaults_from_empty_file)
{
	struct conf *c = conf_test_load("");

	ck_assert_str_eq(c->db_conninfo, "dbname=prepaid");
	ck_assert_int_eq(c->db_reconnect_max_ms, 30000);
	ck_assert_str_eq(c->mqtt_host, "localhost");
	ck_assert_int_eq(c->mqtt_port, 1883);
	ck_assert_str_eq(c->mqtt_client_id, "prepaidd");
	ck_assert_ptr_null(c->mqtt_username);
	ck_assert_ptr_null(c->mqtt_password_file);
	ck_assert_ptr_null(c->mqtt_password);
	ck_assert_ptr_null(c->mqtt_tls_ca);
	ck_assert_ptr_null(c->mqtt_tls_cert);
	ck_assert_ptr_null(c->mqtt_tls_key);
	ck_assert_str_eq(c->mqtt_topic_prefix, "meters");
	ck_assert_int_eq(c->mqtt_qos, 1);
	ck_assert_int_eq(c->mqtt_keepalive, 30);
	ck_assert_ptr_null(c->mqtt_shared_group);
	ck_assert_int_eq(c->mqtt_reconnect_max_ms, 30000);
	ck_assert_int_eq(c->ingest_batch_size, 1000);
	ck_assert_int_eq(c->ingest_batch_window_ms, 50);
	ck_assert_int_eq(c->ingest_queue_bound, 20000);
	ck_assert_int_eq(c->ingest_max_payload, 65536);
	ck_assert(c->ingest_auto_register);
	ck_assert(c->ingest_resend_on_gap);
	ck_assert_int_eq(c->ingest_reject_log_interval, 60);
	ck_assert_int_eq(c->ingest_rejects_keep, 10000);
	ck_assert_int_eq(c->ingest_partitions_ahead, 3);
	ck_assert_int_eq(c->cmd_retry_initial_ms, 5000);
	ck_assert_int_eq(c->cmd_retry_max_ms, 60000);
	ck_assert_int_eq(c->cmd_poll_interval_ms, 1000);
	ck_assert_int_eq(c->cmd_claim_batch, 100);
	ck_assert(c->http_enabled);
	ck_assert_str_eq(c->http_listen, "127.0.0.1");
	ck_assert_int_eq(c->http_port, 9187);
	ck_assert_str_eq(c->log_level, "info");
	ck_assert_ptr_nonnull(c->path);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_every_default_parses_as_its_type)
{
	const struct conf_key *k;
	size_t n, i;

	k = conf_keys(&n);
	ck_assert_uint_gt(n, 30);
	for (i = 0; i < n; i++) {
		ck_assert_ptr_nonnull(k[i].help);
		if (k[i].type == CONF_INT) {
			long v;

			ck_assert_ptr_nonnull(k[i].def);
			v = strtol(k[i].def, NULL, 10);
			ck_assert_msg(v >= k[i].min && v <= k[i].max,
			    "%s.%s default outside its range", k[i].section, k[i].name);
		}
	}
}
END_TEST

START_TEST(test_values_of_each_type)
{
	struct conf *c = conf_test_load(
	    "# a comment\n"
	    "   ; an indented comment\n"
	    "\n"
	    "[database]\n"
	    "conninfo = host=db.example port=5433 dbname=prepaid\n"
	    "  reconnect_max_ms=1000  \n"
	    "[mqtt]\n"
	    "host = broker.example\n"
	    "port = 8883\n"
	    "qos = +2\n"
	    "username = reader\n"
	    "topic_prefix = site/a/meters\n"
	    "shared_group = pool1\n"
	    "[ingest]\n"
	    "batch_size = 50000\n"
	    "auto_register = no\n"
	    "resend_on_gap = OFF\n"
	    "[http]\n"
	    "enabled = 0\n"
	    "[log]\n"
	    "level = debug\n");

	ck_assert_str_eq(c->db_conninfo, "host=db.example port=5433 dbname=prepaid");
	ck_assert_int_eq(c->db_reconnect_max_ms, 1000);
	ck_assert_str_eq(c->mqtt_host, "broker.example");
	ck_assert_int_eq(c->mqtt_port, 8883);
	ck_assert_int_eq(c->mqtt_qos, 2);
	ck_assert_str_eq(c->mqtt_username, "reader");
	ck_assert_str_eq(c->mqtt_topic_prefix, "site/a/meters");
	ck_assert_str_eq(c->mqtt_shared_group, "pool1");
	ck_assert_int_eq(c->ingest_batch_size, 50000);
	ck_assert(!c->ingest_auto_register);
	ck_assert(!c->ingest_resend_on_gap);
	ck_assert(!c->http_enabled);
	ck_assert_str_eq(c->log_level, "debug");
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_every_bool_spelling)
{
	static const char *yes[] = { "true", "yes", "on", "1", "TRUE", "Yes" };
	static const char *no[] = { "false", "no", "off", "0", "False", "NO" };
	char text[128];
	struct conf *c;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(yes); i++) {
		snprintf(text, sizeof text, "[ingest]\nauto_register = %s\n"
		    "resend_on_gap = %s\n", yes[i], no[i]);
		c = conf_test_load(text);
		ck_assert_msg(c->ingest_auto_register, "%s", yes[i]);
		ck_assert_msg(!c->ingest_resend_on_gap, "%s", no[i]);
		conf_free(c);
		conf_test_cleanup();
	}
}
END_TEST

START_TEST(test_quoted_strings)
{
	struct conf *c = conf_test_load(
	    "[database]\n"
	    "conninfo = \"  host=a password='x\\\"y\\\\z'  \"\n"
	    "[mqtt]\n"
	    "client_id = \"id # not a comment\"\n"
	    "username = \"\"\n");

	ck_assert_str_eq(c->db_conninfo, "  host=a password='x\"y\\z'  ");
	ck_assert_str_eq(c->mqtt_client_id, "id # not a comment");
	ck_assert_ptr_null(c->mqtt_username);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_crlf_and_byte_order_mark_accepted)
{
	struct conf *c = conf_test_load("\xef\xbb\xbf[mqtt]\r\nhost = a\r\n"
	    "port = 2\r\n");

	ck_assert_str_eq(c->mqtt_host, "a");
	ck_assert_int_eq(c->mqtt_port, 2);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_range_edges_accepted)
{
	struct conf *c = conf_test_load(
	    "[mqtt]\nport = 1\nkeepalive = 3600\nqos = 0\n"
	    "[ingest]\nqueue_bound = 10000000\nmax_payload_bytes = 256\n"
	    "[commands]\nretry_initial_ms = 100\nretry_max_ms = 100\n");

	ck_assert_int_eq(c->mqtt_port, 1);
	ck_assert_int_eq(c->mqtt_keepalive, 3600);
	ck_assert_int_eq(c->mqtt_qos, 0);
	ck_assert_int_eq(c->ingest_queue_bound, 10000000);
	ck_assert_int_eq(c->ingest_max_payload, 256);
	ck_assert_int_eq(c->cmd_retry_max_ms, 100);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_unreadable_config_file)
{
	char err[512];

	ck_assert_ptr_null(conf_load("/nonexistent/prepaidd.conf", err, sizeof err));
	ck_assert_str_eq(err, "/nonexistent/prepaidd.conf: cannot open: "
	    "No such file or directory");
}
END_TEST

START_TEST(test_error_unknown_section)
{
	conf_test_fail("[mqtt]\nhost = a\n\n[mqt]\n", 4, "[mqt]", "unknown section");
	conf_test_fail("[mqtt\n", 1, NULL, "bad section header");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_unknown_key)
{
	conf_test_fail("[mqtt]\nhots = a\n", 2, "mqtt.hots", "unknown key");
	/* A key of another section is unknown here. */
	conf_test_fail("[http]\nqos = 1\n", 2, "http.qos", "unknown key");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_duplicate_key)
{
	conf_test_fail("[mqtt]\nport = 1883\n[ingest]\n[mqtt]\nport = 1884\n", 5,
	    "mqtt.port", "duplicate key (first set on line 2)");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_missing_equals)
{
	conf_test_fail("[mqtt]\nhost localhost\n", 2, "mqtt.host", "missing '='");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_bad_int)
{
	conf_test_fail("[mqtt]\nport = 18x3\n", 2, "mqtt.port", "not a decimal integer");
	conf_test_fail("[mqtt]\nport = 0x10\n", 2, "mqtt.port", "not a decimal integer");
	conf_test_fail("[mqtt]\nport =\n", 2, "mqtt.port", "not a decimal integer");
	conf_test_fail("[mqtt]\nport = \" 1883\"\n", 2, "mqtt.port",
	    "not a decimal integer");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_out_of_range)
{
	conf_test_fail("[mqtt]\nport = 65536\n", 2, "mqtt.port",
	    "65536 is out of range (1..65535)");
	conf_test_fail("[mqtt]\nqos = -1\n", 2, "mqtt.qos", "out of range (0..2)");
	conf_test_fail("\n[ingest]\nbatch_size = 99999999999999999999999\n", 3,
	    "ingest.batch_size", "out of range (1..50000)");
	conf_test_fail("[ingest]\npartitions_ahead = 25\n", 2,
	    "ingest.partitions_ahead", "(1..24)");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_bad_bool)
{
	conf_test_fail("[http]\nenabled = maybe\n", 2, "http.enabled", "not a boolean");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_bad_enum)
{
	conf_test_fail("[log]\nlevel = verbose\n", 2, "log.level",
	    "\"verbose\" is not one of error, warning, info, debug");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_bad_strings)
{
	conf_test_fail("[mqtt]\ntopic_prefix = a/+/b\n", 2, "mqtt.topic_prefix", "'+'");
	conf_test_fail("[mqtt]\ntopic_prefix = a/#\n", 2, "mqtt.topic_prefix", "'#'");
	conf_test_fail("[mqtt]\ntopic_prefix = /meters\n", 2, "mqtt.topic_prefix", "'/'");
	conf_test_fail("[mqtt]\ntopic_prefix = meters/\n", 2, "mqtt.topic_prefix", "'/'");
	conf_test_fail("[mqtt]\ntopic_prefix = \"\"\n", 2, "mqtt.topic_prefix", "empty");
	conf_test_fail("[mqtt]\nshared_group = a/b\n", 2, "mqtt.shared_group", NULL);
	conf_test_fail("[mqtt]\nshared_group = a+\n", 2, "mqtt.shared_group", NULL);
	conf_test_fail("[mqtt]\nclient_id =\n", 2, "mqtt.client_id", "empty");
	conf_test_fail("[mqtt]\nclient_id = "
	    "0123456789012345678901234567890123456789012345678901234567890123"
	    "0123456789012345678901234567890123456789012345678901234567890123x\n",
	    2, "mqtt.client_id", "longer than 128");
	conf_test_fail("[database]\nconninfo = \"abc\n", 2, "database.conninfo",
	    "unterminated");
	conf_test_fail("[database]\nconninfo = \"a\\nb\"\n", 2, "database.conninfo",
	    "bad escape");
	conf_test_fail("[database]\nconninfo = \"a\" b\n", 2, "database.conninfo",
	    "after the closing quote");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_client_id_of_128_characters_accepted)
{
	struct conf *c = conf_test_load("[mqtt]\nclient_id = "
	    "0123456789012345678901234567890123456789012345678901234567890123"
	    "0123456789012345678901234567890123456789012345678901234567890123\n");

	ck_assert_uint_eq(strlen(c->mqtt_client_id), 128);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_unreadable_file_key)
{
	conf_test_fail("[mqtt]\n\ntls_ca = /nonexistent/ca.pem\n", 3, "mqtt.tls_ca",
	    "cannot read /nonexistent/ca.pem: No such file or directory");
	conf_test_fail("[mqtt]\ntls_ca = /tmp\n", 2, "mqtt.tls_ca",
	    "cannot read /tmp: Is a directory");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_line_too_long)
{
	size_t n = 5000, off;
	char *text = xmalloc(n + 64);

	off = (size_t)snprintf(text, n + 64, "[database]\nconninfo = ");
	memset(text + off, 'x', n);
	snprintf(text + off + n, 64 - off, "\n");
	conf_test_fail(text, 2, "database.conninfo", "line too long");
	free(text);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_key_outside_section)
{
	conf_test_fail("# header\nhost = a\n[mqtt]\n", 2, "host", "outside any");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_tls_cert_without_key)
{
	char text[512];
	const char *pem = conf_test_file("not really a certificate\n");

	snprintf(text, sizeof text, "[mqtt]\ntls_ca = %s\n\ntls_cert = %s\n", pem, pem);
	conf_test_fail(text, 4, "mqtt.tls_cert", "tls_key");
	snprintf(text, sizeof text, "[mqtt]\ntls_ca = %s\ntls_key = %s\n", pem, pem);
	conf_test_fail(text, 3, "mqtt.tls_key", "tls_cert");
	snprintf(text, sizeof text, "[mqtt]\ntls_key = %s\ntls_cert = %s\n", pem, pem);
	conf_test_fail(text, 3, "mqtt.tls_cert", "tls_ca");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_tls_files_accepted)
{
	char text[512];
	const char *pem = conf_test_file("not really a certificate\n");
	struct conf *c;

	snprintf(text, sizeof text, "[mqtt]\ntls_ca = %s\ntls_cert = %s\n"
	    "tls_key = \"%s\"\n", pem, pem, pem);
	c = conf_test_load(text);
	ck_assert_str_eq(c->mqtt_tls_ca, pem);
	ck_assert_str_eq(c->mqtt_tls_key, pem);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_retry_max_below_initial_points_at_later_key)
{
	conf_test_fail("[commands]\nretry_initial_ms = 5000\nretry_max_ms = 1000\n", 3,
	    "commands.retry_max_ms", "less than commands.retry_initial_ms (5000)");
	conf_test_fail("[commands]\nretry_max_ms = 1000\n\nretry_initial_ms = 2000\n", 4,
	    "commands.retry_initial_ms", "greater than commands.retry_max_ms (1000)");
	/* Against the default retry_max_ms (60000). */
	conf_test_fail("[commands]\n\nretry_initial_ms = 70000\n", 3,
	    "commands.retry_initial_ms", "retry_max_ms (60000)");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_password_file_read_and_newline_stripped)
{
	char text[512];
	const char *pw = conf_test_file("s3cret pass\n");
	struct conf *c;

	snprintf(text, sizeof text, "[mqtt]\nusername = u\npassword_file = %s\n", pw);
	c = conf_test_load(text);
	ck_assert_str_eq(c->mqtt_password_file, pw);
	ck_assert_str_eq(c->mqtt_password, "s3cret pass");
	conf_free(c);

	pw = conf_test_file("crlf\r\n");
	snprintf(text, sizeof text, "[mqtt]\nusername = u\npassword_file = %s\n", pw);
	c = conf_test_load(text);
	ck_assert_str_eq(c->mqtt_password, "crlf");
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_missing_password_file)
{
	conf_test_fail("[mqtt]\nusername = u\npassword_file = /nonexistent/pw\n", 3,
	    "mqtt.password_file", "cannot read /nonexistent/pw: No such file");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_password_without_username)
{
	char text[512];
	const char *pw = conf_test_file("x\n");

	snprintf(text, sizeof text, "[mqtt]\npassword_file = %s\n", pw);
	conf_test_fail(text, 2, "mqtt.password_file", "mqtt.username");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_restart_needed_for_mqtt_host)
{
	struct conf *a = conf_test_load("[mqtt]\nhost = a\n");
	struct conf *b = conf_test_load("[mqtt]\nhost = b\n");
	char out[64];

	ck_assert(conf_needs_restart(a, b, out, sizeof out));
	ck_assert_str_eq(out, "mqtt.host");
	conf_free(a);
	conf_free(b);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_restart_not_needed_for_reloadable_keys)
{
	struct conf *a = conf_test_load("[ingest]\nbatch_size = 10\n");
	struct conf *b = conf_test_load("[ingest]\nbatch_size = 20\n"
	    "[log]\nlevel = debug\n[database]\nconninfo = dbname=other\n");
	char out[64];

	ck_assert(!conf_needs_restart(a, b, out, sizeof out));
	ck_assert_str_eq(out, "");
	conf_free(a);
	conf_free(b);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_restart_needed_for_unset_to_set_and_bool)
{
	struct conf *a = conf_test_load("");
	struct conf *b = conf_test_load("[mqtt]\nshared_group = g\n");
	struct conf *d = conf_test_load("[http]\nenabled = false\n");
	char out[64];

	ck_assert(conf_needs_restart(a, b, out, sizeof out));
	ck_assert_str_eq(out, "mqtt.shared_group");
	ck_assert(conf_needs_restart(b, a, out, sizeof out));
	ck_assert(conf_needs_restart(a, d, out, sizeof out));
	ck_assert_str_eq(out, "http.enabled");
	conf_free(a);
	conf_free(b);
	conf_free(d);
	conf_free(NULL);
	conf_test_cleanup();
}
END_TEST

/* Collect lines of a whole file; the caller frees the array and the lines. */
static char **
conf_test_read_lines(const char *path, size_t *n)
{
	FILE *f = fopen(path, "r");
	char **lines = NULL, *line = NULL;
	size_t cap = 0;
	ssize_t len;

	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	*n = 0;
	while ((len = getline(&line, &cap, f)) != -1) {
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		lines = xreallocarray(lines, *n + 1, sizeof *lines);
		lines[(*n)++] = xstrdup(line);
	}
	free(line);
	fclose(f);
	return lines;
}

static void
conf_test_free_lines(char **lines, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
}

/* "key =", ";key =" or "# key =" (any spacing) in the sample config. */
static bool
conf_test_sample_line_names(const char *line, const char *key)
{
	size_t klen = strlen(key);

	while (*line == ' ' || *line == '\t')
		line++;
	if (*line == ';' || *line == '#')
		line++;
	while (*line == ' ' || *line == '\t')
		line++;
	if (strncmp(line, key, klen) != 0)
		return false;
	line += klen;
	while (*line == ' ' || *line == '\t')
		line++;
	return *line == '=';
}

/* The section a "[name]" line opens, or NULL. */
static bool
conf_test_section_line(const char *line, char *out, size_t outlen)
{
	const char *e;

	while (*line == ' ' || *line == '\t')
		line++;
	if (*line != '[' || (e = strchr(line, ']')) == NULL)
		return false;
	snprintf(out, outlen, "%.*s", (int)(e - line - 1), line + 1);
	return true;
}

START_TEST(test_sample_config_documents_every_key)
{
	const struct conf_key *k;
	char **lines, section[64], missing[2048] = "";
	size_t nkeys, nlines, i, j;
	bool found;

	k = conf_keys(&nkeys);
	lines = conf_test_read_lines(CONF_SAMPLE, &nlines);
	for (i = 0; i < nkeys; i++) {
		found = false;
		section[0] = '\0';
		for (j = 0; j < nlines && !found; j++) {
			if (conf_test_section_line(lines[j], section, sizeof section))
				continue;
			if (strcmp(section, k[i].section) == 0 &&
			    conf_test_sample_line_names(lines[j], k[i].name))
				found = true;
		}
		if (!found) {
			strncat(missing, " ", sizeof missing - strlen(missing) - 1);
			strncat(missing, k[i].section, sizeof missing - strlen(missing) - 1);
			strncat(missing, ".", sizeof missing - strlen(missing) - 1);
			strncat(missing, k[i].name, sizeof missing - strlen(missing) - 1);
		}
	}
	conf_test_free_lines(lines, nlines);
	ck_assert_msg(missing[0] == '\0', "%s lacks keys:%s", CONF_SAMPLE, missing);
}
END_TEST

START_TEST(test_manual_documents_every_key)
{
	const struct conf_key *k;
	char **lines, section[64], want[128], missing[2048] = "";
	size_t nkeys, nlines, i, j, wlen;
	bool found;

	k = conf_keys(&nkeys);
	lines = conf_test_read_lines(CONF_MANUAL, &nlines);
	for (i = 0; i < nkeys; i++) {
		found = false;
		section[0] = '\0';
		wlen = (size_t)snprintf(want, sizeof want, ".It Cm %s", k[i].name);
		for (j = 0; j < nlines && !found; j++) {
			if (strncmp(lines[j], ".Ss [", 5) == 0) {
				conf_test_section_line(lines[j] + 4, section, sizeof section);
				continue;
			}
			if (strncmp(lines[j], ".Ss ", 4) == 0 || strncmp(lines[j], ".Sh ", 4) == 0) {
				section[0] = '\0';
				continue;
			}
			if (strcmp(section, k[i].section) == 0 &&
			    strncmp(lines[j], want, wlen) == 0 &&
			    (lines[j][wlen] == '\0' || lines[j][wlen] == ' '))
				found = true;
		}
		if (!found) {
			strncat(missing, " ", sizeof missing - strlen(missing) - 1);
			strncat(missing, k[i].section, sizeof missing - strlen(missing) - 1);
			strncat(missing, ".", sizeof missing - strlen(missing) - 1);
			strncat(missing, k[i].name, sizeof missing - strlen(missing) - 1);
		}
	}
	conf_test_free_lines(lines, nlines);
	ck_assert_msg(missing[0] == '\0', "%s lacks keys:%s", CONF_MANUAL, missing);
}
END_TEST

START_TEST(test_sample_config_loads)
{
	char err[1024];
	struct conf *c;

	c = conf_load(CONF_SAMPLE, err, sizeof err);
	ck_assert_msg(c != NULL, "%s", err);
	/* Everything in it is commented out: it must give the defaults. */
	ck_assert_int_eq(c->mqtt_port, 1883);
	ck_assert_str_eq(c->log_level, "info");
	conf_free(c);
}
END_TEST

static Suite *
conf_suite(void)
{
	Suite *s = suite_create("conf");
	TCase *tc;

	tc = tcase_create("values");
	tcase_add_test(tc, test_defaults_from_empty_file);
	tcase_add_test(tc, test_every_default_parses_as_its_type);
	tcase_add_test(tc, test_values_of_each_type);
	tcase_add_test(tc, test_every_bool_spelling);
	tcase_add_test(tc, test_quoted_strings);
	tcase_add_test(tc, test_crlf_and_byte_order_mark_accepted);
	tcase_add_test(tc, test_range_edges_accepted);
	tcase_add_test(tc, test_client_id_of_128_characters_accepted);
	tcase_add_test(tc, test_tls_files_accepted);
	tcase_add_test(tc, test_password_file_read_and_newline_stripped);
	suite_add_tcase(s, tc);

	tc = tcase_create("errors");
	tcase_add_test(tc, test_error_unreadable_config_file);
	tcase_add_test(tc, test_error_unknown_section);
	tcase_add_test(tc, test_error_unknown_key);
	tcase_add_test(tc, test_error_duplicate_key);
	tcase_add_test(tc, test_error_missing_equals);
	tcase_add_test(tc, test_error_bad_int);
	tcase_add_test(tc, test_error_out_of_range);
	tcase_add_test(tc, test_error_bad_bool);
	tcase_add_test(tc, test_error_bad_enum);
	tcase_add_test(tc, test_error_bad_strings);
	tcase_add_test(tc, test_error_unreadable_file_key);
	tcase_add_test(tc, test_error_line_too_long);
	tcase_add_test(tc, test_error_key_outside_section);
	tcase_add_test(tc, test_error_tls_cert_without_key);
	tcase_add_test(tc, test_error_retry_max_below_initial_points_at_later_key);
	tcase_add_test(tc, test_error_missing_password_file);
	tcase_add_test(tc, test_error_password_without_username);
	suite_add_tcase(s, tc);

	tc = tcase_create("reload");
	tcase_add_test(tc, test_restart_needed_for_mqtt_host);
	tcase_add_test(tc, test_restart_not_needed_for_reloadable_keys);
	tcase_add_test(tc, test_restart_needed_for_unset_to_set_and_bool);
	suite_add_tcase(s, tc);

	tc = tcase_create("docs");
	tcase_add_test(tc, test_sample_config_documents_every_key);
	tcase_add_test(tc, test_manual_documents_every_key);
	tcase_add_test(tc, test_sample_config_loads);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(conf_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
