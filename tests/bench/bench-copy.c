/*
 * bench-copy.c: the batched-COPY ceiling for tests/bench/bench.sh. It
 * generates N readings shaped like prepaid-sim's load mode (meters
 * SIM0001.., round robin, seq from 1, ts = now with microseconds, a
 * cumulative register, relay closed) and COPYs them into prepaid.readings in
 * batches of B rows, each COPY its own transaction and so its own commit.
 * That is the most a writer of these rows can get out of PostgreSQL at the
 * daemon's batch size; the daemon, which also keeps each meter's latest
 * state and checks sequence numbers, is measured against it. Prints
 * `RESULT rows=N batch=B seconds=S rate=R`. It links libpq only, no project
 * sources.
 */
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

static void copy_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void
copy_fatal(const char *fmt, ...)
{
	va_list ap;

	fputs("bench-copy: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static int64_t
copy_now_us(int clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long long
copy_number(const char *s, long long min, long long max, const char *what)
{
	char *end;
	long long v;

	v = strtoll(s, &end, 10);
	if (end == s || *end != '\0' || v < min || v > max)
		copy_fatal("%s: %s is not a number from %lld to %lld", what, s, min, max);
	return v;
}

/*
 * RFC 3339 in local time with its offset and microseconds, as the
 * simulator's load mode stamps a reading (PostgreSQL parses it as it is).
 */
static void
copy_format_ts(int64_t us, char *out, size_t outlen)
{
	time_t sec = (time_t)(us / 1000000);
	struct tm tm;
	char head[32];
	int off;

	localtime_r(&sec, &tm);
	strftime(head, sizeof head, "%Y-%m-%dT%H:%M:%S", &tm);
	off = (int)(tm.tm_gmtoff / 60 % (24 * 60));
	snprintf(out, outlen, "%.19s.%06d%c%02d:%02d", head, (int)(us % 1000000),
	    off < 0 ? '-' : '+', abs(off) / 60, abs(off) % 60);
}

static void
copy_usage(void)
{
	fprintf(stderr, "usage: bench-copy -d conninfo [-N rows] [-b batch] [-m meters]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	const char *conninfo = NULL;
	long long rows = 300000, batch = 1000, meters = 1000, done = 0, k, i, seq;
	int64_t t0, t1;
	char *buf, ts[64];
	size_t cap, len;
	double secs;
	PGconn *conn;
	PGresult *res;
	int c, n;

	while ((c = getopt(argc, argv, "b:d:m:N:")) != -1) {
		switch (c) {
		case 'b':
			batch = copy_number(optarg, 1, 1000000, "-b");
			break;
		case 'd':
			conninfo = optarg;
			break;
		case 'm':
			meters = copy_number(optarg, 1, 9999, "-m");
			break;
		case 'N':
			rows = copy_number(optarg, 1, 1000000000, "-N");
			break;
		default:
			copy_usage();
		}
	}
	if (conninfo == NULL || optind != argc)
		copy_usage();

	conn = PQconnectdb(conninfo);
	if (PQstatus(conn) != CONNECTION_OK)
		copy_fatal("%s", PQerrorMessage(conn));

	/* A row is under 128 bytes: meter, seq, ts, energy, relay, two stamps. */
	cap = (size_t)batch * 192;
	if ((buf = malloc(cap)) == NULL)
		copy_fatal("out of memory");

	t0 = copy_now_us(CLOCK_MONOTONIC);
	while (done < rows) {
		/* Formatting is part of any writer's cost: keep it in the timing. */
		len = 0;
		copy_format_ts(copy_now_us(CLOCK_REALTIME), ts, sizeof ts);
		for (k = 0; k < batch && done < rows; k++, done++) {
			i = done % meters;
			seq = done / meters + 1;
			/*
			 * The simulator's register: 1000 W for 1 s a reading, in
			 * whole Wh. ingested_at "now" is the transaction's start,
			 * a few milliseconds before its commit.
			 */
			n = snprintf(buf + len, cap - len,
			    "SIM%04lld\t%lld\t%s\t%lld\tclosed\t%s\tnow\n", i + 1, seq, ts,
			    1000000 + (seq - 1) * 1000 / 3600, ts);
			if (n < 0 || (size_t)n >= cap - len)
				copy_fatal("row buffer too small");
			len += (size_t)n;
		}
		/* Outside a transaction block, each COPY commits on its own. */
		res = PQexec(conn, "COPY prepaid.readings (meter_id, seq, ts, energy_wh, "
		                   "relay, received_at, ingested_at) FROM STDIN");
		if (PQresultStatus(res) != PGRES_COPY_IN)
			copy_fatal("COPY: %s", PQerrorMessage(conn));
		PQclear(res);
		if (PQputCopyData(conn, buf, (int)len) != 1 || PQputCopyEnd(conn, NULL) != 1)
			copy_fatal("COPY data: %s", PQerrorMessage(conn));
		while ((res = PQgetResult(conn)) != NULL) {
			if (PQresultStatus(res) != PGRES_COMMAND_OK)
				copy_fatal("COPY: %s", PQerrorMessage(conn));
			PQclear(res);
		}
	}
	t1 = copy_now_us(CLOCK_MONOTONIC);

	secs = (double)(t1 - t0) / 1e6;
	printf("RESULT rows=%lld batch=%lld seconds=%.3f rate=%.0f\n", rows, batch, secs,
	    secs > 0 ? (double)rows / secs : 0.0);
	free(buf);
	PQfinish(conn);
	return 0;
}
