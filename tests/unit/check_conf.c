/*
 * check_conf.c: unit tests of conf.c, the configuration parser. Each test
 * writes a small config to a temporary file, loads it with the real
 * conf_load() and checks the values or the exact "FILE:LINE: section.key:"
 * error an operator would see. The docs-drift tests walk conf_keys() and
 * fail, naming the keys, when the sample config or prepaidd.conf(5) does
 * not describe every key; another proves the shipped sample loads as is.
 * Gateway sections get the same treatment: each provider's example in the
 * sample loads once uncommented, and every cross-key mistake an operator
 * can make is reported on the right line without ever quoting a secret.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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
static char conf_test_paths[128][64];
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
		ck_assert_msg(
		    strstr(err, want) != NULL, "error \"%s\" does not contain \"%s\"", err, want);
}

/* ------------------------------------------------------------ secrets */

START_TEST(test_secret_mode_rules)
{
	char why[256];

	ck_assert_int_eq(conf_secret_mode(0100600, false, true, why, sizeof why), 0);
	ck_assert_int_eq(conf_secret_mode(0100400, false, true, why, sizeof why), 0);
	/* root:prepaidd 0640, the documented set-up: fine. */
	ck_assert_int_eq(conf_secret_mode(0100640, true, true, why, sizeof why), 0);
	/* Readable by a group the daemon is not in: a warning. */
	ck_assert_int_eq(conf_secret_mode(0100640, false, true, why, sizeof why), 1);
	ck_assert_ptr_nonnull(strstr(why, "readable by its group"));
	ck_assert_ptr_nonnull(strstr(why, "0640"));
	/* Readable by everyone: a key is refused, anything else warned. */
	ck_assert_int_eq(conf_secret_mode(0100644, true, true, why, sizeof why), -1);
	ck_assert_ptr_nonnull(strstr(why, "readable by everyone (mode 0644)"));
	ck_assert_int_eq(conf_secret_mode(0100604, true, true, why, sizeof why), -1);
	ck_assert_int_eq(conf_secret_mode(0100644, true, false, why, sizeof why), 1);
	ck_assert_ptr_nonnull(strstr(why, "chmod o-r"));
}
END_TEST

START_TEST(test_world_readable_apiv3_key_refused)
{
	const char *key = conf_test_file("0123456789abcdef0123456789abcdef");
	char text[512];
	struct conf *c;

	snprintf(text, sizeof text, "[payments]\n\nwechat_apiv3_key_file = %s\n", key);
	c = conf_test_load(text);
	ck_assert_int_eq(c->nwarnings, 0);
	conf_free(c);
	ck_assert_int_eq(chmod(key, 0644), 0);
	conf_test_fail(text, 3, "payments.wechat_apiv3_key_file", "is readable by everyone");
	conf_test_fail(text, 3, "payments.wechat_apiv3_key_file", key);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_world_readable_mqtt_key_refused)
{
	const char *key = conf_test_file("-----BEGIN PRIVATE KEY-----\n");
	char text[512];

	ck_assert_int_eq(chmod(key, 0604), 0);
	snprintf(
	    text, sizeof text, "[mqtt]\ntls_ca = %s\ntls_cert = %s\ntls_key = %s\n", key, key, key);
	conf_test_fail(text, 4, "mqtt.tls_key", "refused");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_world_readable_gateway_secret_refused)
{
	const char *sec = conf_test_file("token\n");
	char text[512];

	ck_assert_int_eq(chmod(sec, 0644), 0);
	snprintf(text, sizeof text,
	    "[gateway g]\nchannel = sms\nurl = https://x/\n"
	    "auth = bearer\nsecret_file = \"%s\"\nbody = x\nescape = raw\n"
	    "content_type = text/plain\n",
	    sec);
	conf_test_fail(text, 5, "gateway.g.secret_file", "is readable by everyone");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_open_config_and_password_warned)
{
	const char *pw = conf_test_file("secret\n");
	const char *path;
	char text[512], err[1024];
	struct conf *c;

	snprintf(text, sizeof text, "[mqtt]\nusername = u\npassword_file = %s\n", pw);
	path = conf_test_file(text);
	c = conf_load(path, err, sizeof err);
	ck_assert_msg(c != NULL, "%s", err);
	ck_assert_int_eq(c->nwarnings, 0);
	conf_free(c);
	ck_assert_int_eq(chmod(pw, 0644), 0);
	ck_assert_int_eq(chmod(path, 0644), 0);
	c = conf_load(path, err, sizeof err);
	ck_assert_msg(c != NULL, "a password file or config readable by everyone is a warning");
	ck_assert_int_eq(c->nwarnings, 2);
	ck_assert_ptr_nonnull(strstr(c->warnings[0], "the configuration file is readable by "
	                                             "everyone (mode 0644)"));
	ck_assert_ptr_nonnull(strstr(c->warnings[1], ":3: mqtt.password_file: "));
	ck_assert_ptr_nonnull(strstr(c->warnings[1], pw));
	/* Never the secret itself. */
	ck_assert_ptr_null(strstr(c->warnings[1], "secret\n"));
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_defaults_from_empty_file)
{
	struct conf *c = conf_test_load("");

	ck_assert_str_eq(c->database_conninfo, "dbname=prepaid");
	ck_assert_int_eq(c->database_reconnect_max_ms, 30000);
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
	ck_assert_int_eq(c->ingest_max_payload_bytes, 65536);
	ck_assert(c->ingest_auto_register);
	ck_assert(c->ingest_resend_on_gap);
	ck_assert_int_eq(c->ingest_reject_log_interval, 60);
	ck_assert_int_eq(c->ingest_rejects_keep, 10000);
	ck_assert_int_eq(c->ingest_partitions_ahead, 3);
	ck_assert_int_eq(c->commands_retry_initial_ms, 5000);
	ck_assert_int_eq(c->commands_retry_max_ms, 60000);
	ck_assert_int_eq(c->commands_poll_interval_ms, 1000);
	ck_assert_int_eq(c->commands_claim_batch, 100);
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
	struct conf *c = conf_test_load("# a comment\n"
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

	ck_assert_str_eq(c->database_conninfo, "host=db.example port=5433 dbname=prepaid");
	ck_assert_int_eq(c->database_reconnect_max_ms, 1000);
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
	static const char *yes[] = {"true", "yes", "on", "1", "TRUE", "Yes"};
	static const char *no[] = {"false", "no", "off", "0", "False", "NO"};
	char text[128];
	struct conf *c;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(yes); i++) {
		snprintf(text, sizeof text,
		    "[ingest]\nauto_register = %s\n"
		    "resend_on_gap = %s\n",
		    yes[i], no[i]);
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
	struct conf *c = conf_test_load("[database]\n"
	                                "conninfo = \"  host=a password='x\\\"y\\\\z'  \"\n"
	                                "[mqtt]\n"
	                                "client_id = \"id # not a comment\"\n"
	                                "username = \"\"\n");

	ck_assert_str_eq(c->database_conninfo, "  host=a password='x\"y\\z'  ");
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
	struct conf *c =
	    conf_test_load("[mqtt]\nport = 1\nkeepalive = 3600\nqos = 0\n"
	                   "[ingest]\nqueue_bound = 10000000\nmax_payload_bytes = 256\n"
	                   "[commands]\nretry_initial_ms = 100\nretry_max_ms = 100\n");

	ck_assert_int_eq(c->mqtt_port, 1);
	ck_assert_int_eq(c->mqtt_keepalive, 3600);
	ck_assert_int_eq(c->mqtt_qos, 0);
	ck_assert_int_eq(c->ingest_queue_bound, 10000000);
	ck_assert_int_eq(c->ingest_max_payload_bytes, 256);
	ck_assert_int_eq(c->commands_retry_max_ms, 100);
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
	conf_test_fail("[mqtt]\nport = 1883\n[ingest]\n[mqtt]\nport = 1884\n", 5, "mqtt.port",
	    "duplicate key (first set on line 2)");
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
	conf_test_fail("[mqtt]\nport = \" 1883\"\n", 2, "mqtt.port", "not a decimal integer");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_out_of_range)
{
	conf_test_fail(
	    "[mqtt]\nport = 65536\n", 2, "mqtt.port", "65536 is out of range (1..65535)");
	conf_test_fail("[mqtt]\nqos = -1\n", 2, "mqtt.qos", "out of range (0..2)");
	conf_test_fail("\n[ingest]\nbatch_size = 99999999999999999999999\n", 3, "ingest.batch_size",
	    "out of range (1..50000)");
	conf_test_fail(
	    "[ingest]\npartitions_ahead = 25\n", 2, "ingest.partitions_ahead", "(1..24)");
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
	conf_test_fail("[database]\nconninfo = \"abc\n", 2, "database.conninfo", "unterminated");
	conf_test_fail("[database]\nconninfo = \"a\\nb\"\n", 2, "database.conninfo", "bad escape");
	conf_test_fail(
	    "[database]\nconninfo = \"a\" b\n", 2, "database.conninfo", "after the closing quote");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_client_id_of_128_characters_accepted)
{
	struct conf *c =
	    conf_test_load("[mqtt]\nclient_id = "
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
	conf_test_fail(
	    "[mqtt]\ntls_ca = /tmp\n", 2, "mqtt.tls_ca", "cannot read /tmp: Is a directory");
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

	snprintf(text, sizeof text,
	    "[mqtt]\ntls_ca = %s\ntls_cert = %s\n"
	    "tls_key = \"%s\"\n",
	    pem, pem, pem);
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
	conf_test_fail("[commands]\n\nretry_initial_ms = 70000\n", 3, "commands.retry_initial_ms",
	    "retry_max_ms (60000)");
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
	struct conf *b =
	    conf_test_load("[ingest]\nbatch_size = 20\n"
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

/*
 * Gateway tests. Texts use @SECRET@ and @BODY@ for the paths of a secret
 * file (holding CONF_TEST_SECRET) and a body template file made per call,
 * so every error message can also be checked never to hold the secret.
 */
#define CONF_TEST_SECRET "TOPSECRET-9c1e-do-not-log"

static const char *
conf_test_gw_text(const char *text)
{
	static char out[8192];
	const char *sec = conf_test_file(CONF_TEST_SECRET "\n");
	const char *body = conf_test_file("{\"to\":\"{{to}}\",\n \"text\":\"{{text}}\"}\n");
	const char *s = text;
	size_t off = 0;

	while (*s != '\0') {
		if (strncmp(s, "@SECRET@", 8) == 0) {
			off += (size_t)snprintf(out + off, sizeof out - off, "%s", sec);
			s += 8;
		} else if (strncmp(s, "@BODY@", 6) == 0) {
			off += (size_t)snprintf(out + off, sizeof out - off, "%s", body);
			s += 6;
		} else if (off + 1 < sizeof out)
			out[off++] = *s++;
		ck_assert_uint_lt(off, sizeof out - 1);
	}
	out[off] = '\0';
	return out;
}

static struct conf *
conf_test_gw_load(const char *text)
{
	return conf_test_load(conf_test_gw_text(text));
}

/* conf_test_fail for gateway texts; the secret must never be in the error. */
static void
conf_test_gw_fail(const char *text, int line, const char *subject, const char *want)
{
	char err[1024], prefix[256];
	const char *path = conf_test_file(conf_test_gw_text(text));
	struct conf *c;

	err[0] = '\0';
	c = conf_load(path, err, sizeof err);
	ck_assert_msg(c == NULL, "expected an error for:\n%s", text);
	snprintf(prefix, sizeof prefix, "%s:%d: %s: ", path, line, subject);
	ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0,
	    "error \"%s\" does not begin with \"%s\"", err, prefix);
	if (want != NULL)
		ck_assert_msg(
		    strstr(err, want) != NULL, "error \"%s\" does not contain \"%s\"", err, want);
	ck_assert_msg(strstr(err, "TOPSECRET") == NULL, "secret in error \"%s\"", err);
}

/* A valid HTTP gateway to break one key at a time; lines 1..6. */
#define GW_SMS                                                                                     \
	"[gateway sms1]\n"                                                                         \
	"channel = sms\n"                                                                          \
	"url = https://sms.example.net/send\n"                                                     \
	"auth = bearer\n"                                                                          \
	"secret_file = @SECRET@\n"                                                                 \
	"body = {\"to\":\"{{to}}\",\"text\":\"{{text}}\"}\n"

START_TEST(test_gateway_minimal_has_defaults)
{
	struct conf *c = conf_test_gw_load(
	    "[gateway plain]\nchannel = sms\n"
	    "url = http://127.0.0.1:8080/sms?to={{to}}\nbody = {\"t\":\"{{text}}\"}\n");
	const struct conf_gateway *g;

	ck_assert_int_eq(c->ngateways, 1);
	g = &c->gateways[0];
	ck_assert_str_eq(g->name, "plain");
	ck_assert_int_eq(g->line, 1);
	ck_assert_int_eq(g->channel, CONF_GW_SMS);
	ck_assert_int_eq(g->type, CONF_GW_HTTP);
	ck_assert_int_eq(g->method, CONF_GW_POST);
	ck_assert_int_eq(g->escape, CONF_GW_ESC_JSON);
	ck_assert_int_eq(g->body_mode, TEMPLATE_JSON);
	ck_assert_str_eq(g->content_type, "application/json; charset=utf-8");
	ck_assert_int_eq(g->auth, CONF_GW_AUTH_NONE);
	ck_assert_int_eq(g->signer, CONF_GW_SIGNER_NONE);
	ck_assert_ptr_null(g->secret);
	ck_assert_ptr_null(g->region);
	ck_assert_ptr_null(g->action);
	ck_assert_str_eq(g->success_status, "200,201,202");
	ck_assert_int_eq(g->nstatus, 3);
	ck_assert_int_eq(g->status[0], 200);
	ck_assert_int_eq(g->status[2], 202);
	ck_assert_ptr_null(g->success_field);
	ck_assert_int_eq(g->nheaders, 0);
	ck_assert_int_eq(g->timeout_ms, 10000);
	ck_assert_int_eq(g->concurrency, 4);
	ck_assert_int_eq(g->max_attempts, 5);
	ck_assert_int_eq(g->retry_initial_ms, 2000);
	ck_assert_int_eq(g->retry_max_ms, 300000);
	ck_assert_ptr_eq(conf_gateway_find(c, "plain"), g);
	ck_assert_ptr_null(conf_gateway_find(c, "other"));
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_aliyun_loads)
{
	struct conf *c =
	    conf_test_gw_load("[log]\nlevel = info\n"
	                      "[gateway aliyun]\n"
	                      "channel = sms\n"
	                      "url = https://dysmsapi.aliyuncs.com/\n"
	                      "signer = aliyun\n"
	                      "access_key_id = LTAI5tExample\n"
	                      "secret_file = @SECRET@\n"
	                      "escape = form\n"
	                      "body = PhoneNumbers={{to}}&SignName=Sign&TemplateCode=SMS_1&"
	                      "TemplateParam={{params_json}}\n"
	                      "success_field = Code\n"
	                      "success_value = OK\n"
	                      "message_id_field = BizId\n");
	const struct conf_gateway *g = conf_gateway_find(c, "aliyun");

	ck_assert_ptr_nonnull(g);
	ck_assert_int_eq(g->line, 3);
	ck_assert_int_eq(g->signer, CONF_GW_SIGNER_ALIYUN);
	ck_assert_str_eq(g->access_key_id, "LTAI5tExample");
	ck_assert_str_eq(g->secret, CONF_TEST_SECRET);
	ck_assert_str_eq(g->region, "cn-hangzhou");
	ck_assert_str_eq(g->action, "SendSms");
	ck_assert_str_eq(g->api_version, "2017-05-25");
	ck_assert_ptr_null(g->service);
	ck_assert_int_eq(g->body_mode, TEMPLATE_FORM);
	ck_assert_str_eq(g->content_type, "application/x-www-form-urlencoded");
	ck_assert_str_eq(g->success_field, "Code");
	ck_assert_str_eq(g->success_value, "OK");
	ck_assert_str_eq(g->message_id_field, "BizId");
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_tencent_loads)
{
	struct conf *c = conf_test_gw_load(
	    "[gateway tencent]\n"
	    "channel = sms\n"
	    "url = https://sms.tencentcloudapi.com/\n"
	    "signer = tencent\n"
	    "access_key_id = AKIDExample\n"
	    "secret_file = @SECRET@\n"
	    "region = ap-guangzhou\n"
	    "body = {\"PhoneNumberSet\":[\"{{to}}\"],\"SmsSdkAppId\":\"1400006666\","
	    "\"TemplateId\":\"1\",\"SignName\":\"S\",\"TemplateParamSet\":[\"{{balance}}\"]}\n"
	    "success_field = Response.SendStatusSet.0.Code\n"
	    "success_value = Ok\n"
	    "message_id_field = Response.SendStatusSet.0.SerialNo\n");
	const struct conf_gateway *g = &c->gateways[0];

	ck_assert_int_eq(g->signer, CONF_GW_SIGNER_TENCENT);
	ck_assert_str_eq(g->region, "ap-guangzhou");
	ck_assert_str_eq(g->action, "SendSms");
	ck_assert_str_eq(g->api_version, "2021-01-11");
	ck_assert_str_eq(g->service, "sms");
	ck_assert_int_eq(g->body_mode, TEMPLATE_JSON);
	ck_assert_str_eq(g->success_field, "Response.SendStatusSet.0.Code");
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_twilio_sendgrid_mailgun_load)
{
	struct conf *c =
	    conf_test_gw_load("[gateway twilio]\n"
	                      "channel = sms\n"
	                      "url = https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json\n"
	                      "auth = basic\n"
	                      "username = AC1\n"
	                      "secret_file = @SECRET@\n"
	                      "escape = form\n"
	                      "body = To={{to}}&From=%2B15005550006&Body={{text}}\n"
	                      "success_status = 201\n"
	                      "message_id_field = sid\n"
	                      "[gateway sendgrid]\n"
	                      "channel = email\n"
	                      "url = https://api.sendgrid.com/v3/mail/send\n"
	                      "auth = bearer\n"
	                      "secret_file = @SECRET@\n"
	                      "body = {\"personalizations\":[{\"to\":[{\"email\":\"{{to}}\"}]}],"
	                      "\"subject\":\"{{subject}}\"}\n"
	                      "success_status = 202\n"
	                      "message_id_field = header:X-Message-Id\n"
	                      "[gateway mailgun]\n"
	                      "channel = email\n"
	                      "url = https://api.mailgun.net/v3/mg.example.com/messages\n"
	                      "auth = basic\n"
	                      "username = api\n"
	                      "secret_file = @SECRET@\n"
	                      "escape = form\n"
	                      "body = to={{to}}&subject={{subject}}&text={{text}}\n"
	                      "message_id_field = id\n");
	const struct conf_gateway *g;

	ck_assert_int_eq(c->ngateways, 3);
	g = conf_gateway_find(c, "twilio");
	ck_assert_int_eq(g->auth, CONF_GW_AUTH_BASIC);
	ck_assert_str_eq(g->username, "AC1");
	ck_assert_int_eq(g->nstatus, 1);
	ck_assert_int_eq(g->status[0], 201);
	g = conf_gateway_find(c, "sendgrid");
	ck_assert_int_eq(g->channel, CONF_GW_EMAIL);
	ck_assert_int_eq(g->auth, CONF_GW_AUTH_BEARER);
	ck_assert_str_eq(g->secret, CONF_TEST_SECRET);
	ck_assert_int_eq(g->status[0], 202);
	ck_assert_str_eq(g->message_id_field, "header:X-Message-Id");
	g = conf_gateway_find(c, "mailgun");
	ck_assert_str_eq(g->username, "api");
	ck_assert_int_eq(g->line, 19);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_smtp_loads)
{
	struct conf *c = conf_test_gw_load("[gateway mail]\n"
	                                   "channel = email\n"
	                                   "type = smtp\n"
	                                   "url = smtps://smtp.example.com:465\n"
	                                   "username = billing@example.com\n"
	                                   "secret_file = @SECRET@\n"
	                                   "mail_from = billing@example.com\n"
	                                   "body_file = @BODY@\n"
	                                   "[gateway relay]\n"
	                                   "channel = email\n"
	                                   "type = smtp\n"
	                                   "url = smtp://127.0.0.1:25\n"
	                                   "mail_from = a@b\n");
	const struct conf_gateway *g = &c->gateways[0];

	ck_assert_int_eq(g->type, CONF_GW_SMTP);
	ck_assert_str_eq(g->mail_from, "billing@example.com");
	ck_assert_str_eq(g->secret, CONF_TEST_SECRET);
	/* The body file's lines, less the trailing newline. */
	ck_assert_str_eq(g->body, "{\"to\":\"{{to}}\",\n \"text\":\"{{text}}\"}");
	ck_assert_ptr_nonnull(g->body_file);
	ck_assert_int_eq(g->body_mode, TEMPLATE_RAW);
	ck_assert_ptr_null(g->content_type);
	ck_assert_int_eq(g->nstatus, 0);
	g = &c->gateways[1];
	ck_assert_ptr_null(g->body);
	ck_assert_ptr_null(g->secret);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_get_and_raw_and_header_auth)
{
	struct conf *c =
	    conf_test_gw_load("[gateway get]\n"
	                      "channel = sms\n"
	                      "method = GET\n"
	                      "url = https://sms.example.net/send?to={{to}}&text={{text}}\n"
	                      "auth = header\n"
	                      "auth_header = X-Api-Key\n"
	                      "secret_file = @SECRET@\n"
	                      "[gateway raw]\n"
	                      "channel = sms\n"
	                      "method = put\n"
	                      "url = https://sms.example.net/m/{{message_id}}\n"
	                      "escape = raw\n"
	                      "content_type = text/plain; charset=utf-8\n"
	                      "body = \"  {{text}}  \"\n");
	const struct conf_gateway *g = &c->gateways[0];

	ck_assert_int_eq(g->method, CONF_GW_GET);
	ck_assert_ptr_null(g->body);
	ck_assert_ptr_null(g->content_type);
	ck_assert_int_eq(g->auth, CONF_GW_AUTH_HEADER);
	ck_assert_str_eq(g->auth_header, "X-Api-Key");
	g = &c->gateways[1];
	ck_assert_int_eq(g->method, CONF_GW_PUT);
	ck_assert_int_eq(g->body_mode, TEMPLATE_RAW);
	ck_assert_str_eq(g->content_type, "text/plain; charset=utf-8");
	ck_assert_str_eq(g->body, "  {{text}}  ");
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_repeated_header)
{
	struct conf *c = conf_test_gw_load(GW_SMS "header = X-Request-Id: {{message_id}}\n"
	                                          "header = Accept-Language:{{ language }}\n"
	                                          "header = X-Empty:\n"
	                                          "header = X-Static: one two\n");
	const struct conf_gateway *g = &c->gateways[0];

	ck_assert_int_eq(g->nheaders, 4);
	ck_assert_str_eq(g->header_name[0], "X-Request-Id");
	ck_assert_str_eq(g->header_value[0], "{{message_id}}");
	ck_assert_str_eq(g->header_name[1], "Accept-Language");
	ck_assert_str_eq(g->header_value[1], "{{ language }}");
	ck_assert_str_eq(g->header_value[2], "");
	ck_assert_str_eq(g->header_value[3], "one two");
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_sixteen_headers_accepted_seventeenth_refused)
{
	char text[4096];
	size_t off;
	struct conf *c;
	int i;

	off = (size_t)snprintf(text, sizeof text, "%s", GW_SMS);
	for (i = 0; i < 16; i++)
		off +=
		    (size_t)snprintf(text + off, sizeof text - off, "header = X-H%d: %d\n", i, i);
	c = conf_test_gw_load(text);
	ck_assert_int_eq(c->gateways[0].nheaders, 16);
	ck_assert_str_eq(c->gateways[0].header_name[15], "X-H15");
	conf_free(c);
	snprintf(text + off, sizeof text - off, "header = X-H16: 16\n");
	conf_test_gw_fail(text, 23, "gateway.sms1.header", "more than 16 headers");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_secret_read_and_newline_stripped)
{
	const char *sec = conf_test_file("tok en\r\n");
	char text[512];
	struct conf *c;

	snprintf(text, sizeof text,
	    "[gateway g]\nchannel = sms\nurl = https://x/\n"
	    "auth = bearer\nsecret_file = \"%s\"\nbody = x\nescape = raw\n"
	    "content_type = text/plain\n",
	    sec);
	c = conf_test_load(text);
	ck_assert_str_eq(c->gateways[0].secret, "tok en");
	ck_assert_str_eq(c->gateways[0].secret_file, sec);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_section_names)
{
	conf_test_fail("[gateway]\n", 1, "[gateway]", "needs a name");
	conf_test_fail("[gateway Sms]\n", 1, "[gateway Sms]", "bad gateway name");
	conf_test_fail("[gateway a.b]\n", 1, "[gateway a.b]", "bad gateway name");
	conf_test_fail(
	    "[gateway 0123456789abcdef0123456789abcdefX]\n", 1, NULL, "bad gateway name");
	conf_test_fail("[gatewayx]\n", 1, "[gatewayx]",
	    "unknown section (known: database, "
	    "mqtt, ingest, journal, commands, http, payments, log, gateway NAME)");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_name_of_32_characters_accepted)
{
	struct conf *c = conf_test_gw_load("[gateway  0123456789abcdef0123456789_-cdef ]\n"
	                                   "channel = sms\nurl = https://h/\nmethod = GET\n");

	ck_assert_str_eq(c->gateways[0].name, "0123456789abcdef0123456789_-cdef");
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_duplicate_gateway_name)
{
	conf_test_gw_fail(GW_SMS "\n[mqtt]\nhost = a\n[gateway sms1]\n", 10, "[gateway sms1]",
	    "duplicate gateway (first on line 1)");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_too_many_gateways)
{
	char text[8192];
	size_t off = 0;
	struct conf *c;
	int i;

	for (i = 0; i < 16; i++)
		off += (size_t)snprintf(text + off, sizeof text - off,
		    "[gateway g%d]\nchannel = sms\nurl = https://h/\nmethod = GET\n", i);
	c = conf_test_gw_load(text);
	ck_assert_int_eq(c->ngateways, CONF_GATEWAYS_MAX);
	ck_assert_str_eq(c->gateways[15].name, "g15");
	conf_free(c);
	snprintf(text + off, sizeof text - off, "[gateway g16]\n");
	conf_test_gw_fail(text, 65, "[gateway g16]", "more than 16 gateways");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_keys)
{
	conf_test_gw_fail(GW_SMS "colour = red\n", 7, "gateway.sms1.colour", "unknown key");
	conf_test_gw_fail(GW_SMS "channel = sms\n", 7, "gateway.sms1.channel",
	    "duplicate key (first set on line 2)");
	conf_test_gw_fail(GW_SMS "timeout = 5\n", 7, "gateway.sms1.timeout", "unknown key");
	conf_test_gw_fail(GW_SMS "oops\n", 7, "gateway.sms1.oops", "missing '='");
	conf_test_gw_fail(GW_SMS "= 1\n", 7, "gateway.sms1", "missing key name");
	conf_test_gw_fail("[gateway a]\nchannel = fax\n", 2, "gateway.a.channel",
	    "\"fax\" is not one of sms or email");
	conf_test_gw_fail("[gateway a]\nmethod = PATCH\n", 2, "gateway.a.method",
	    "\"PATCH\" is not one of POST, GET or PUT");
	conf_test_gw_fail(
	    "[gateway a]\nescape = xml\n", 2, "gateway.a.escape", "not one of json, form or raw");
	conf_test_gw_fail("[gateway a]\nauth = digest\n", 2, "gateway.a.auth",
	    "not one of none, basic, bearer or header");
	conf_test_gw_fail("[gateway a]\nsigner = aws\n", 2, "gateway.a.signer",
	    "not one of none, aliyun or tencent");
	conf_test_gw_fail("[gateway a]\ntimeout_ms = 99\n", 2, "gateway.a.timeout_ms",
	    "99 is out of range (100..120000)");
	conf_test_gw_fail("[gateway a]\nconcurrency = 65\n", 2, "gateway.a.concurrency", "(1..64)");
	conf_test_gw_fail(
	    "[gateway a]\nmax_attempts = 0\n", 2, "gateway.a.max_attempts", "(1..20)");
	conf_test_gw_fail("[gateway a]\nmax_attempts = x\n", 2, "gateway.a.max_attempts",
	    "not a decimal integer");
	conf_test_gw_fail("[gateway a]\nbody = \"abc\n", 2, "gateway.a.body",
	    "unterminated "
	    "quoted string");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_required_keys_point_at_header)
{
	conf_test_gw_fail("[mqtt]\n[gateway a]\nurl = https://h/\nmethod = GET\n", 2,
	    "gateway.a.channel", "missing");
	conf_test_gw_fail(
	    "[gateway a]\nchannel = sms\n[log]\n", 1, "gateway.a.url", "missing (required)");
	/* POST is the default: the missing body is the section's fault. */
	conf_test_gw_fail("\n[gateway a]\nchannel = sms\nurl = https://h/\n", 2, "gateway.a.body",
	    "required with method POST (or body_file)");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nmethod = PUT\nurl = https://h/\n", 3,
	    "gateway.a.body", "required with method PUT");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_url)
{
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = ftp://h/\n", 3, "gateway.a.url",
	    "must begin with http:// or https:// for type http");
	conf_test_gw_fail(
	    "[gateway a]\nchannel = sms\nurl = smtps://h/\n", 3, "gateway.a.url", "http://");
	conf_test_gw_fail("[gateway a]\nchannel = email\ntype = smtp\nmail_from = a@b\n"
	                  "url = https://h/\n",
	    5, "gateway.a.url", "must begin with smtp:// or smtps:// for type smtp");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nmethod = GET\n"
	                  "url = https://{{to}}.example.net/\n",
	    4, "gateway.a.url", "host must not contain a placeholder");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nmethod = GET\n"
	                  "url = https://user:pw@example.net/\n",
	    4, "gateway.a.url", "must not hold credentials");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nmethod = GET\nurl = https:///x\n", 4,
	    "gateway.a.url", "has no host");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_unknown_placeholder)
{
	conf_test_gw_fail("[gateway a]\nchannel = sms\n"
	                  "url = https://h/?to={{to}}&x={{balanse}}\n",
	    3, "gateway.a.url", "unknown placeholder 'balanse' at offset 23");
	conf_test_gw_fail(GW_SMS "header = X-Id: {{msgid}}\n", 7, "gateway.sms1.header",
	    "unknown placeholder 'msgid' at offset 6");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\n"
	                  "body = {\"to\":\"{{to}}\",\"x\":\"{{ Name }}\"}\n",
	    4, "gateway.a.body", "invalid placeholder name 'Name' at offset 20");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\n"
	                  "body = {\"to\":\"{{to}\"}\n",
	    4, "gateway.a.body", "unterminated '{{' at offset 7");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\n"
	                  "body = x={{amount}}\n",
	    4, "gateway.a.body", "unknown placeholder 'amount' at offset 2");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_unknown_placeholder_in_body_file)
{
	const char *body = conf_test_file("line one\nHi {{name}}, pay {{due}}\n");
	char text[512], want[256];

	snprintf(text, sizeof text,
	    "[gateway a]\nchannel = sms\nurl = https://h/\n\n"
	    "body_file = %s\n",
	    body);
	snprintf(want, sizeof want, "unknown placeholder 'due' at offset 26 (in %s)", body);
	conf_test_fail(text, 5, "gateway.a.body_file", want);
	conf_test_fail("[gateway a]\nbody_file = /nonexistent/body\n", 2, "gateway.a.body_file",
	    "cannot read /nonexistent/body: No such file");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_body_and_body_file)
{
	conf_test_gw_fail(
	    GW_SMS "body_file = @BODY@\n", 7, "gateway.sms1.body_file", "body is set too (line 6)");
	conf_test_gw_fail("[gateway a]\nbody_file = @BODY@\nchannel = sms\nbody = x\n", 4,
	    "gateway.a.body", "body_file is set too (line 2)");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nmethod = GET\n"
	                  "body = x\n",
	    5, "gateway.a.body", "no body with method GET");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nescape = form\n"
	                  "method = GET\n",
	    4, "gateway.a.escape", "not used with method GET");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nescape = raw\n"
	                  "body = x\n",
	    4, "gateway.a.content_type", "required with escape raw");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_auth)
{
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nbody = x\n"
	                  "auth = basic\nusername = u\n",
	    5, "gateway.a.secret_file", "required with auth basic");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nbody = x\n"
	                  "auth = basic\nsecret_file = @SECRET@\n",
	    5, "gateway.a.username", "required with auth basic");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nbody = x\n"
	                  "auth = basic\nusername = a:b\nsecret_file = @SECRET@\n",
	    6, "gateway.a.username", "must not contain ':'");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nbody = x\n"
	                  "auth = bearer\n",
	    5, "gateway.a.secret_file", "required with auth bearer");
	conf_test_gw_fail(
	    GW_SMS "username = u\n", 7, "gateway.sms1.username", "only used with auth basic");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nbody = x\n"
	                  "auth = header\nsecret_file = @SECRET@\n",
	    5, "gateway.a.auth_header", "required with auth header");
	conf_test_gw_fail(GW_SMS "auth_header = X-Key\n", 7, "gateway.sms1.auth_header",
	    "only used with auth header");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nbody = x\n"
	                  "secret_file = @SECRET@\n",
	    5, "gateway.a.secret_file", "auth is none and there is no signer");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nbody = x\n"
	                  "auth = bearer\nsecret_file = /nonexistent/key\n",
	    6, "gateway.a.secret_file", "cannot read /nonexistent/key: No such file");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_empty_secret_file)
{
	const char *empty = conf_test_file("\n");
	char text[512];

	snprintf(text, sizeof text, "[gateway a]\nauth = bearer\nsecret_file = %s\n", empty);
	conf_test_fail(text, 3, "gateway.a.secret_file", "is empty");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_headers)
{
	conf_test_gw_fail(GW_SMS "header = Authorization: Basic abc\n", 7, "gateway.sms1.header",
	    "Authorization is set by auth bearer");
	conf_test_gw_fail(GW_SMS "header = X-A: 1\nheader = content-type: text/plain\n", 8,
	    "gateway.sms1.header", "use content_type");
	conf_test_gw_fail(GW_SMS "header = Host: example.net\n", 7, "gateway.sms1.header",
	    "Host is set by the daemon");
	conf_test_gw_fail(
	    GW_SMS "header = no colon here\n", 7, "gateway.sms1.header", "must be \"Name: value\"");
	conf_test_gw_fail(
	    GW_SMS "header = Bad Name: x\n", 7, "gateway.sms1.header", "token characters");
	conf_test_gw_fail(GW_SMS "header = : x\n", 7, "gateway.sms1.header", "token characters");
	conf_test_gw_fail(GW_SMS "header = X-A: 1\nheader = x-a: 2\n", 8, "gateway.sms1.header",
	    "header X-A given twice");
	conf_test_gw_fail("[gateway a]\nchannel = sms\nurl = https://h/\nbody = x\n"
	                  "auth = header\nauth_header = X-Key\nsecret_file = @SECRET@\n"
	                  "header = x-key: {{to}}\n",
	    8, "gateway.a.header", "is set by auth header");
	conf_test_cleanup();
}
END_TEST

/* A valid Aliyun gateway, lines 1..7, to break. */
#define GW_ALIYUN                                                                                  \
	"[gateway ali]\n"                                                                          \
	"channel = sms\n"                                                                          \
	"url = https://dysmsapi.aliyuncs.com/\n"                                                   \
	"signer = aliyun\n"                                                                        \
	"secret_file = @SECRET@\n"                                                                 \
	"escape = form\n"                                                                          \
	"body = PhoneNumbers={{to}}\n"

START_TEST(test_error_gateway_signer)
{
	conf_test_gw_fail(GW_ALIYUN, 4, "gateway.ali.access_key_id", "required with signer aliyun");
	conf_test_gw_fail("[gateway ali]\nchannel = sms\nurl = https://h/\nescape = form\n"
	                  "body = a={{to}}\nsigner = aliyun\naccess_key_id = K\n",
	    6, "gateway.ali.secret_file", "required with signer aliyun");
	conf_test_gw_fail(GW_ALIYUN "access_key_id = K\nauth = bearer\n", 9, "gateway.ali.auth",
	    "must be none with signer aliyun");
	conf_test_gw_fail(GW_ALIYUN "access_key_id = K\nmethod = PUT\n", 9, "gateway.ali.method",
	    "must be POST with signer aliyun");
	conf_test_gw_fail("[gateway ali]\nchannel = sms\nurl = https://h/\nsigner = aliyun\n"
	                  "access_key_id = K\nsecret_file = @SECRET@\nbody = x\n",
	    1, "gateway.ali.escape", "must be form with signer aliyun");
	conf_test_gw_fail(GW_ALIYUN "access_key_id = K\nservice = sms\n", 9, "gateway.ali.service",
	    "only used with signer tencent");
	conf_test_gw_fail(GW_ALIYUN "access_key_id = K\nheader = Authorization: x\n", 9,
	    "gateway.ali.header", "Authorization is set by signer aliyun");
	conf_test_gw_fail(GW_ALIYUN "access_key_id = K\nregion = cn hangzhou\n", 9,
	    "gateway.ali.region", "letters, digits");
	conf_test_gw_fail("[gateway t]\nchannel = sms\nurl = https://h/\nsigner = tencent\n"
	                  "access_key_id = K\nsecret_file = @SECRET@\nbody = {}\n",
	    4, "gateway.t.region", "required with signer tencent");
	conf_test_gw_fail("[gateway t]\nchannel = sms\nurl = https://h/\nsigner = tencent\n"
	                  "access_key_id = K\nsecret_file = @SECRET@\nbody = a=b\nregion = r\n"
	                  "escape = form\n",
	    9, "gateway.t.escape", "must be json with signer tencent");
	conf_test_gw_fail("[gateway t]\nchannel = sms\nurl = https://h/\nsigner = tencent\n"
	                  "access_key_id = K\nsecret_file = @SECRET@\nbody = {}\nregion = r\n"
	                  "header = X-TC-Action: x\n",
	    9, "gateway.t.header", "set by signer tencent");
	conf_test_gw_fail(GW_SMS "access_key_id = K\n", 7, "gateway.sms1.access_key_id",
	    "only used with a signer");
	conf_test_gw_fail(
	    GW_SMS "region = ap-guangzhou\n", 7, "gateway.sms1.region", "only used with a signer");
	conf_test_gw_fail(
	    GW_SMS "api_version = 1\n", 7, "gateway.sms1.api_version", "only used with a signer");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_error_gateway_success_rules)
{
	conf_test_gw_fail(GW_SMS "success_field = Code\n", 7, "gateway.sms1.success_field",
	    "set without success_value");
	conf_test_gw_fail(GW_SMS "success_value = OK\n", 7, "gateway.sms1.success_value",
	    "set without success_field");
	conf_test_gw_fail(
	    GW_SMS "success_field = a..b\n", 7, "gateway.sms1.success_field", "dot path");
	conf_test_gw_fail(
	    GW_SMS "success_field = .a\n", 7, "gateway.sms1.success_field", "dot path");
	conf_test_gw_fail(
	    GW_SMS "success_field = a b\n", 7, "gateway.sms1.success_field", "dot path");
	conf_test_gw_fail(GW_SMS "message_id_field = header:\n", 7, "gateway.sms1.message_id_field",
	    "header name");
	conf_test_gw_fail(
	    GW_SMS "message_id_field = a.\n", 7, "gateway.sms1.message_id_field", "dot path");
	conf_test_gw_fail(GW_SMS "success_status = 200,abc\n", 7, "gateway.sms1.success_status",
	    "\"abc\" is not an HTTP status code");
	conf_test_gw_fail(GW_SMS "success_status = 600\n", 7, "gateway.sms1.success_status",
	    "not an HTTP status code (100..599)");
	conf_test_gw_fail(GW_SMS "success_status = 200,,201\n", 7, "gateway.sms1.success_status",
	    "comma-separated");
	conf_test_gw_fail(
	    GW_SMS "success_status = 200,\n", 7, "gateway.sms1.success_status", "comma-separated");
	conf_test_gw_fail(
	    GW_SMS "success_status =\n", 7, "gateway.sms1.success_status", "comma-separated");
	conf_test_gw_fail(GW_SMS "success_status = 200, 200\n", 7, "gateway.sms1.success_status",
	    "200 is listed twice");
	conf_test_gw_fail(GW_SMS "retry_initial_ms = 5000\nretry_max_ms = 4000\n", 8,
	    "gateway.sms1.retry_max_ms", "4000 is less than retry_initial_ms (5000)");
	conf_test_gw_fail(GW_SMS "retry_initial_ms = 400000\n", 7, "gateway.sms1.retry_initial_ms",
	    "greater than retry_max_ms (300000)");
	conf_test_gw_fail(
	    GW_SMS "mail_from = a@b\n", 7, "gateway.sms1.mail_from", "only used with type smtp");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_status_list_spacing_accepted)
{
	struct conf *c = conf_test_gw_load(GW_SMS "success_status = 200, 204 ,299\n");

	ck_assert_int_eq(c->gateways[0].nstatus, 3);
	ck_assert_int_eq(c->gateways[0].status[1], 204);
	ck_assert_int_eq(c->gateways[0].status[2], 299);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

#define GW_SMTP                                                                                    \
	"[gateway mail]\n"                                                                         \
	"channel = email\n"                                                                        \
	"type = smtp\n"                                                                            \
	"url = smtp://mail.example.net:587\n"

START_TEST(test_error_gateway_smtp)
{
	conf_test_gw_fail(GW_SMTP, 1, "gateway.mail.mail_from", "required with type smtp");
	conf_test_gw_fail(
	    GW_SMTP "mail_from = Billing <b@x>\n", 5, "gateway.mail.mail_from", "bare address");
	conf_test_gw_fail(
	    GW_SMTP "mail_from = nobody\n", 5, "gateway.mail.mail_from", "bare address");
	conf_test_gw_fail("[gateway mail]\nchannel = sms\ntype = smtp\n"
	                  "url = smtp://h\nmail_from = a@b\n",
	    3, "gateway.mail.type", "smtp needs channel email");
	conf_test_gw_fail(GW_SMTP "mail_from = a@b\nmethod = POST\n", 6, "gateway.mail.method",
	    "not used with type smtp");
	conf_test_gw_fail(GW_SMTP "mail_from = a@b\nsuccess_status = 250\n", 6,
	    "gateway.mail.success_status", "not used with type smtp");
	conf_test_gw_fail(GW_SMTP "mail_from = a@b\nheader = X-A: b\n", 6, "gateway.mail.header",
	    "not used with type smtp");
	conf_test_gw_fail(GW_SMTP "mail_from = a@b\nusername = u\n", 6, "gateway.mail.username",
	    "set without secret_file");
	conf_test_gw_fail(GW_SMTP "mail_from = a@b\nsecret_file = @SECRET@\n", 6,
	    "gateway.mail.secret_file", "set without username");
	conf_test_cleanup();
}
END_TEST

/*
 * The secret is read before the error in every case here; no message, of
 * any kind, may quote it.
 */
START_TEST(test_error_never_shows_the_secret)
{
	static const char *tails[] = {
	    "header = X-A: {{bad}}\n",
	    "success_status = TOPSECRET\n",
	    "channel = TOPSECRET\n",
	    "colour = x\n",
	    "header = Authorization: Bearer x\n",
	    "retry_max_ms = 100\n",
	    "body_file = @SECRET@\n",
	    "[gateway sms1]\n",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(tails); i++) {
		char text[1024], err[1024];
		const char *path;

		snprintf(text, sizeof text, "%s%s", GW_SMS, tails[i]);
		path = conf_test_file(conf_test_gw_text(text));
		ck_assert_ptr_null(conf_load(path, err, sizeof err));
		ck_assert_msg(strstr(err, CONF_TEST_SECRET) == NULL, "%s", err);
		ck_assert_msg(strstr(err, ":7: ") != NULL, "%s", err);
		conf_test_cleanup();
	}
}
END_TEST

START_TEST(test_gateways_reload_with_the_new_file)
{
	struct conf *a = conf_test_gw_load(GW_SMS "[mqtt]\nhost = a\n");
	struct conf *b =
	    conf_test_gw_load("[mqtt]\nhost = b\n[gateway other]\nchannel = email\n"
	                      "url = https://h/\nmethod = GET\n[gateway sms1]\nchannel = sms\n"
	                      "url = https://h2/\nmethod = GET\n");
	char out[64];

	/* Gateways never need a restart: only mqtt.host does here. */
	ck_assert(conf_needs_restart(a, b, out, sizeof out));
	ck_assert_str_eq(out, "mqtt.host");
	conf_keep_fixed(b, a);
	ck_assert_str_eq(b->mqtt_host, "a");
	ck_assert_int_eq(b->ngateways, 2);
	ck_assert_str_eq(b->gateways[0].name, "other");
	ck_assert_str_eq(conf_gateway_find(b, "sms1")->url, "https://h2/");
	ck_assert_ptr_null(conf_gateway_find(b, "sms1")->secret);
	conf_free(a);
	conf_free(b);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_gateway_change_alone_needs_no_restart)
{
	struct conf *a = conf_test_gw_load(GW_SMS);
	struct conf *b = conf_test_load("");
	char out[64];

	ck_assert(!conf_needs_restart(a, b, out, sizeof out));
	conf_keep_fixed(b, a);
	ck_assert_int_eq(b->ngateways, 0);
	conf_free(a);
	conf_free(b);
	conf_test_cleanup();
}
END_TEST

START_TEST(test_every_gateway_default_parses_as_its_type)
{
	const struct conf_key *k;
	size_t n, i, j;
	bool found;

	k = conf_gateway_keys(&n);
	ck_assert_uint_gt(n, 25);
	for (i = 0; i < n; i++) {
		ck_assert_str_eq(k[i].section, "gateway");
		ck_assert_ptr_nonnull(k[i].help);
		ck_assert(k[i].reloadable);
		if (k[i].type == CONF_INT) {
			long v;

			ck_assert_ptr_nonnull(k[i].def);
			v = strtol(k[i].def, NULL, 10);
			ck_assert_msg(v >= k[i].min && v <= k[i].max,
			    "gateway.%s default outside its range", k[i].name);
		}
		if (k[i].type == CONF_ENUM) {
			ck_assert_ptr_nonnull(k[i].choices);
			found = k[i].def == NULL;
			for (j = 0; k[i].choices[j] != NULL && !found; j++)
				found = strcmp(k[i].choices[j], k[i].def) == 0;
			ck_assert_msg(found, "gateway.%s default not a choice", k[i].name);
		}
	}
	ck_assert_str_eq(conf_gateway_placeholders()[0], "to");
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

START_TEST(test_error_payments_need_their_keys)
{
	/* A provider's path without the ids and keys it needs: the path's line. */
	conf_test_fail("[payments]\nwechat_path = /pay/wx\nwechat_mchid = 1\n", 2,
	    "payments.wechat_path", "need payments.wechat_appids");
	conf_test_fail("[payments]\nwechat_mchid = 1\nwechat_appids = a\nwechat_path = /pay/wx\n"
	               "wechat_apiv3_key_file = /etc/hostname\n",
	    4, "payments.wechat_path",
	    "need payments.wechat_platform_certs or wechat_public_key_file");
	conf_test_fail("[payments]\nalipay_path = /pay/ali\nalipay_app_id = 1\n", 2,
	    "payments.alipay_path", "need payments.alipay_public_key_file");
	conf_test_fail("[payments]\nwechat_public_key_id = PUB_KEY_ID_1\n", 2,
	    "payments.wechat_public_key_id", "give both");
	conf_test_fail(
	    "[payments]\nwechat_path = pay\n", 2, "payments.wechat_path", "absolute path");
	conf_test_fail(
	    "[payments]\nwechat_path = /pay?x=1\n", 2, "payments.wechat_path", "without query");
	conf_test_fail(
	    "[payments]\nalipay_path = /metrics\n", 2, "payments.alipay_path", "daemon's own");
	conf_test_fail(
	    "[payments]\nwechat_path = /p\nwechat_mchid = 1\nwechat_appids = a\n"
	    "wechat_apiv3_key_file = /etc/hostname\nwechat_platform_certs = /etc/hostname\n"
	    "alipay_path = /p\nalipay_app_id = 2\nalipay_public_key_file = /etc/hostname\n",
	    7, "payments.alipay_path", "same as the other");
	conf_test_fail("[payments]\nalipay_public_key_file = /nonexistent/alipay.pem\n", 2,
	    "payments.alipay_public_key_file", "/nonexistent/alipay.pem");
	conf_test_cleanup();
}
END_TEST

START_TEST(test_payments_off_by_default)
{
	struct conf *c = conf_test_load("");

	ck_assert_ptr_null(c->payments_wechat_path);
	ck_assert_ptr_null(c->payments_alipay_path);
	ck_assert_int_eq(c->payments_connections, 4);
	ck_assert_int_eq(c->payments_answer_within_ms, 4000);
	ck_assert_int_eq(c->http_max_connections, 256);
	ck_assert_int_eq(c->http_deadline_ms, 10000);
	conf_free(c);
	conf_test_cleanup();
}
END_TEST

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
			if (strncmp(lines[j], ".Ss ", 4) == 0 ||
			    strncmp(lines[j], ".Sh ", 4) == 0) {
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
	ck_assert_int_eq(c->ngateways, 0);
	conf_free(c);
}
END_TEST

/* A commented "[gateway NAME]" line of the sample opens an example block. */
static bool
conf_test_sample_gateway_line(const char *line)
{
	while (*line == ' ' || *line == '\t')
		line++;
	if (*line == ';' || *line == '#')
		line++;
	return strncmp(line, "[gateway ", 9) == 0;
}

START_TEST(test_sample_config_documents_every_gateway_key)
{
	const struct conf_key *k;
	char **lines, missing[2048] = "";
	size_t nkeys, nlines, i, j;
	bool found, in_gateway;

	k = conf_gateway_keys(&nkeys);
	lines = conf_test_read_lines(CONF_SAMPLE, &nlines);
	for (i = 0; i < nkeys; i++) {
		found = in_gateway = false;
		for (j = 0; j < nlines && !found; j++) {
			char section[64];

			if (conf_test_sample_gateway_line(lines[j])) {
				in_gateway = true;
				continue;
			}
			if (conf_test_section_line(lines[j], section, sizeof section)) {
				in_gateway = false;
				continue;
			}
			if (in_gateway && lines[j][0] == ';' &&
			    conf_test_sample_line_names(lines[j], k[i].name))
				found = true;
		}
		if (!found) {
			strncat(missing, " gateway.", sizeof missing - strlen(missing) - 1);
			strncat(missing, k[i].name, sizeof missing - strlen(missing) - 1);
		}
	}
	conf_test_free_lines(lines, nlines);
	ck_assert_msg(missing[0] == '\0', "%s lacks gateway keys:%s", CONF_SAMPLE, missing);
}
END_TEST

START_TEST(test_manual_documents_every_gateway_key)
{
	const struct conf_key *k;
	char **lines, want[128], missing[2048] = "";
	size_t nkeys, nlines, i, j, wlen;
	bool found, in_gateway;

	k = conf_gateway_keys(&nkeys);
	lines = conf_test_read_lines(CONF_MANUAL, &nlines);
	for (i = 0; i < nkeys; i++) {
		found = in_gateway = false;
		wlen = (size_t)snprintf(want, sizeof want, ".It Cm %s", k[i].name);
		for (j = 0; j < nlines && !found; j++) {
			if (strncmp(lines[j], ".Ss ", 4) == 0 ||
			    strncmp(lines[j], ".Sh ", 4) == 0) {
				in_gateway = strncmp(lines[j], ".Ss [gateway NAME]", 18) == 0;
				continue;
			}
			if (in_gateway && strncmp(lines[j], want, wlen) == 0 &&
			    (lines[j][wlen] == '\0' || lines[j][wlen] == ' '))
				found = true;
		}
		if (!found) {
			strncat(missing, " gateway.", sizeof missing - strlen(missing) - 1);
			strncat(missing, k[i].name, sizeof missing - strlen(missing) - 1);
		}
	}
	conf_test_free_lines(lines, nlines);
	ck_assert_msg(missing[0] == '\0', "%s lacks gateway keys:%s", CONF_MANUAL, missing);
}
END_TEST

/*
 * Every commented example gateway of the sample, uncommented, loads: the
 * examples are what operators copy. Their secret and body files are
 * replaced by temporary ones.
 */
START_TEST(test_sample_gateway_examples_load)
{
	static const char *const expect[] = {
	    "aliyun", "tencent", "twilio", "sendgrid", "mailgun", "smtp", "webhook"};
	char **lines, err[1024];
	const char *sec = conf_test_file("key\n");
	const char *body = conf_test_file("Subject: {{subject}}\n\n{{text}}\n");
	struct sbuf text = {0};
	size_t nlines, j;
	bool in_gateway = false;
	struct conf *c;
	const char *l;
	char section[64];

	lines = conf_test_read_lines(CONF_SAMPLE, &nlines);
	for (j = 0; j < nlines; j++) {
		if (conf_test_sample_gateway_line(lines[j]))
			in_gateway = true;
		else if (conf_test_section_line(lines[j], section, sizeof section))
			in_gateway = false;
		if (!in_gateway || lines[j][0] != ';')
			continue;
		l = lines[j] + 1;
		if (strncmp(l, "secret_file =", 13) == 0)
			sbuf_printf(&text, "secret_file = %s\n", sec);
		else if (strncmp(l, "body_file =", 11) == 0)
			sbuf_printf(&text, "body_file = %s\n", body);
		else
			sbuf_printf(&text, "%s\n", l);
	}
	conf_test_free_lines(lines, nlines);
	ck_assert_ptr_nonnull(text.p);
	c = conf_load(conf_test_file(text.p), err, sizeof err);
	ck_assert_msg(c != NULL, "%s", err);
	ck_assert_int_eq(c->ngateways, (int)ARRAY_SIZE(expect));
	for (j = 0; j < ARRAY_SIZE(expect); j++)
		ck_assert_msg(conf_gateway_find(c, expect[j]) != NULL, "%s", expect[j]);
	ck_assert_int_eq(conf_gateway_find(c, "aliyun")->signer, CONF_GW_SIGNER_ALIYUN);
	ck_assert_int_eq(conf_gateway_find(c, "tencent")->signer, CONF_GW_SIGNER_TENCENT);
	ck_assert_int_eq(conf_gateway_find(c, "twilio")->status[0], 201);
	ck_assert_int_eq(conf_gateway_find(c, "sendgrid")->status[0], 202);
	ck_assert_str_eq(conf_gateway_find(c, "mailgun")->username, "api");
	ck_assert_int_eq(conf_gateway_find(c, "smtp")->type, CONF_GW_SMTP);
	ck_assert_int_eq(conf_gateway_find(c, "webhook")->nheaders, 2);
	conf_free(c);
	free(text.p);
	conf_test_cleanup();
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
	tcase_add_test(tc, test_error_payments_need_their_keys);
	tcase_add_test(tc, test_payments_off_by_default);
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

	tc = tcase_create("gateways");
	tcase_add_test(tc, test_gateway_minimal_has_defaults);
	tcase_add_test(tc, test_gateway_aliyun_loads);
	tcase_add_test(tc, test_gateway_tencent_loads);
	tcase_add_test(tc, test_gateway_twilio_sendgrid_mailgun_load);
	tcase_add_test(tc, test_gateway_smtp_loads);
	tcase_add_test(tc, test_gateway_get_and_raw_and_header_auth);
	tcase_add_test(tc, test_gateway_repeated_header);
	tcase_add_test(tc, test_gateway_sixteen_headers_accepted_seventeenth_refused);
	tcase_add_test(tc, test_gateway_secret_read_and_newline_stripped);
	tcase_add_test(tc, test_gateway_name_of_32_characters_accepted);
	tcase_add_test(tc, test_gateway_status_list_spacing_accepted);
	tcase_add_test(tc, test_every_gateway_default_parses_as_its_type);
	tcase_add_test(tc, test_error_gateway_section_names);
	tcase_add_test(tc, test_error_duplicate_gateway_name);
	tcase_add_test(tc, test_error_too_many_gateways);
	tcase_add_test(tc, test_error_gateway_keys);
	tcase_add_test(tc, test_error_gateway_required_keys_point_at_header);
	tcase_add_test(tc, test_error_gateway_url);
	tcase_add_test(tc, test_error_gateway_unknown_placeholder);
	tcase_add_test(tc, test_error_gateway_unknown_placeholder_in_body_file);
	tcase_add_test(tc, test_error_gateway_body_and_body_file);
	tcase_add_test(tc, test_error_gateway_auth);
	tcase_add_test(tc, test_error_gateway_empty_secret_file);
	tcase_add_test(tc, test_error_gateway_headers);
	tcase_add_test(tc, test_error_gateway_signer);
	tcase_add_test(tc, test_error_gateway_success_rules);
	tcase_add_test(tc, test_error_gateway_smtp);
	tcase_add_test(tc, test_error_never_shows_the_secret);
	tcase_add_test(tc, test_gateways_reload_with_the_new_file);
	tcase_add_test(tc, test_gateway_change_alone_needs_no_restart);
	suite_add_tcase(s, tc);

	tc = tcase_create("docs");
	tcase_add_test(tc, test_sample_config_documents_every_key);
	tcase_add_test(tc, test_manual_documents_every_key);
	tcase_add_test(tc, test_sample_config_loads);
	tcase_add_test(tc, test_sample_config_documents_every_gateway_key);
	tcase_add_test(tc, test_manual_documents_every_gateway_key);
	tcase_add_test(tc, test_sample_gateway_examples_load);
	tcase_add_test(tc, test_secret_mode_rules);
	tcase_add_test(tc, test_world_readable_apiv3_key_refused);
	tcase_add_test(tc, test_world_readable_mqtt_key_refused);
	tcase_add_test(tc, test_world_readable_gateway_secret_refused);
	tcase_add_test(tc, test_open_config_and_password_warned);
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
