/*
 * bench-naive.c: the naive baseline for tests/bench/bench.sh — the
 * subscriber everyone writes first. libmosquitto's own loop at QoS 1 on
 * <prefix>/+/reading; for each message it parses the JSON with jansson and
 * runs ONE autocommit INSERT with a blocking PQexecParams, so every reading
 * pays a full round trip and a commit (an fsync) of its own. That blocking
 * is the point: the daemon must beat it by an order of magnitude. It prints
 * READY once the broker has granted the subscription (the benchmark starts
 * the load then), and after N messages prints
 * `RESULT inserted=N seconds=S rate=R`, timed from the first message. It
 * links libmosquitto, jansson and libpq only, no project sources.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <mosquitto.h>

static struct {
	PGconn *conn;
	long long want;
	long long inserted;
	long long failed;
	int64_t t0_us;
	int64_t t1_us;
	const char *prefix;
} naive;

static void naive_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void
naive_fatal(const char *fmt, ...)
{
	va_list ap;

	fputs("bench-naive: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static int64_t
naive_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long long
naive_number(const char *s, long long min, long long max, const char *what)
{
	char *end;
	long long v;

	v = strtoll(s, &end, 10);
	if (end == s || *end != '\0' || v < min || v > max)
		naive_fatal("%s: %s is not a number from %lld to %lld", what, s, min, max);
	return v;
}

/* One reading object, one statement, one commit. */
static void
naive_insert(const char *meter, json_t *r)
{
	static const char *sql =
	    "INSERT INTO prepaid.readings (meter_id, seq, ts, energy_wh, relay, "
	    "received_at, ingested_at) "
	    "VALUES ($1, $2, $3, $4, $5, now(), clock_timestamp())";
	const char *params[5];
	char seq[24], energy[24];
	json_t *ts, *relay;
	PGresult *res;

	ts = json_object_get(r, "ts");
	relay = json_object_get(r, "relay");
	if (!json_is_integer(json_object_get(r, "seq")) || !json_is_string(ts) ||
	    !json_is_integer(json_object_get(r, "energy_wh"))) {
		naive.failed++;
		return;
	}
	snprintf(seq, sizeof seq, "%" JSON_INTEGER_FORMAT,
	    json_integer_value(json_object_get(r, "seq")));
	snprintf(energy, sizeof energy, "%" JSON_INTEGER_FORMAT,
	    json_integer_value(json_object_get(r, "energy_wh")));
	params[0] = meter;
	params[1] = seq;
	params[2] = json_string_value(ts);
	params[3] = energy;
	params[4] = json_is_string(relay) ? json_string_value(relay) : NULL;
	res = PQexecParams(naive.conn, sql, 5, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_COMMAND_OK)
		naive.inserted++;
	else {
		if (naive.failed++ == 0)
			fprintf(stderr, "bench-naive: INSERT: %s", PQerrorMessage(naive.conn));
		if (PQstatus(naive.conn) != CONNECTION_OK)
			naive_fatal("lost the database connection");
	}
	PQclear(res);
}

static void
naive_on_message(struct mosquitto *mosq, void *arg, const struct mosquitto_message *msg)
{
	char meter[64];
	const char *id, *slash;
	json_t *root, *r;
	json_error_t err;
	size_t i, plen = strlen(naive.prefix);

	(void)arg;
	if (naive.t0_us == 0)
		naive.t0_us = naive_now_us();
	/* <prefix>/<id>/reading */
	if (strncmp(msg->topic, naive.prefix, plen) != 0 || msg->topic[plen] != '/' ||
	    (slash = strchr(msg->topic + plen + 1, '/')) == NULL ||
	    (size_t)(slash - (msg->topic + plen + 1)) >= sizeof meter) {
		naive.failed++;
		goto out;
	}
	id = msg->topic + plen + 1;
	memcpy(meter, id, (size_t)(slash - id));
	meter[slash - id] = '\0';

	root = json_loadb(msg->payload, (size_t)msg->payloadlen, 0, &err);
	if (json_is_array(root)) {
		json_array_foreach(root, i, r) naive_insert(meter, r);
	} else if (json_is_object(root))
		naive_insert(meter, root);
	else
		naive.failed++;
	json_decref(root);

out:
	if (naive.inserted + naive.failed >= naive.want && naive.t1_us == 0) {
		naive.t1_us = naive_now_us();
		mosquitto_disconnect(mosq);
	}
}

static void
naive_on_connect(struct mosquitto *mosq, void *arg, int rc)
{
	char *topic;
	size_t len;

	(void)arg;
	if (rc != 0)
		naive_fatal("broker refused the connection: %s", mosquitto_connack_string(rc));
	len = strlen(naive.prefix) + sizeof "/+/reading";
	if ((topic = malloc(len)) == NULL)
		naive_fatal("out of memory");
	snprintf(topic, len, "%s/+/reading", naive.prefix);
	if (mosquitto_subscribe(mosq, NULL, topic, 1) != MOSQ_ERR_SUCCESS)
		naive_fatal("subscribe %s failed", topic);
	free(topic);
}

static void
naive_on_subscribe(
    struct mosquitto *mosq, void *arg, int mid, int qos_count, const int *granted_qos)
{
	(void)mosq;
	(void)arg;
	(void)mid;
	if (qos_count < 1 || granted_qos[0] != 1)
		naive_fatal("broker did not grant QoS 1");
	printf("READY\n");
	fflush(stdout);
}

static void
naive_usage(void)
{
	fprintf(stderr, "usage: bench-naive -d conninfo [-h host] [-p port] [-N count] "
	                "[-P prefix]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *conninfo = NULL;
	struct mosquitto *mosq;
	int port = 1883, c, rc;
	double secs;

	naive.want = 20000;
	naive.prefix = "meters";
	while ((c = getopt(argc, argv, "d:h:N:P:p:")) != -1) {
		switch (c) {
		case 'd':
			conninfo = optarg;
			break;
		case 'h':
			host = optarg;
			break;
		case 'N':
			naive.want = naive_number(optarg, 1, 1000000000, "-N");
			break;
		case 'P':
			naive.prefix = optarg;
			break;
		case 'p':
			port = (int)naive_number(optarg, 1, 65535, "-p");
			break;
		default:
			naive_usage();
		}
	}
	if (conninfo == NULL || optind != argc)
		naive_usage();

	naive.conn = PQconnectdb(conninfo);
	if (PQstatus(naive.conn) != CONNECTION_OK)
		naive_fatal("%s", PQerrorMessage(naive.conn));

	mosquitto_lib_init();
	if ((mosq = mosquitto_new(NULL, true, NULL)) == NULL)
		naive_fatal("mosquitto_new failed");
	mosquitto_connect_callback_set(mosq, naive_on_connect);
	mosquitto_subscribe_callback_set(mosq, naive_on_subscribe);
	mosquitto_message_callback_set(mosq, naive_on_message);
	if (mosquitto_connect(mosq, host, port, 60) != MOSQ_ERR_SUCCESS)
		naive_fatal("cannot connect to %s:%d", host, port);
	rc = mosquitto_loop_forever(mosq, -1, 1);
	if (naive.t1_us == 0)
		naive_fatal("the broker connection ended early: %s", mosquitto_strerror(rc));

	secs = (double)(naive.t1_us - naive.t0_us) / 1e6;
	printf("RESULT inserted=%lld seconds=%.3f rate=%.0f\n", naive.inserted, secs,
	    secs > 0 ? (double)naive.inserted / secs : 0.0);
	if (naive.failed > 0)
		fprintf(
		    stderr, "bench-naive: %lld messages or readings not inserted\n", naive.failed);
	mosquitto_destroy(mosq);
	mosquitto_lib_cleanup();
	PQfinish(naive.conn);
	return naive.failed > 0 ? 1 : 0;
}
