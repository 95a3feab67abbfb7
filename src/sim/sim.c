/*
 * sim.c: prepaid-sim, a fleet of simulated prepaid meters speaking the MQTT
 * contract of DESIGN.md. It publishes readings (single objects or buffered
 * arrays), answers commands the way a meter does (trip, arm with a button
 * press after a delay, close, keep-power, resend of held readings) and
 * reports relay events. Integration tests, the quickstart demo and the
 * benchmark drive it, so its command line and its stdout lines are a
 * contract too (see prepaid-sim(1)). Commands are decoded by payload.c,
 * the code that encodes them in the daemon. Like the daemon it runs libmosquitto
 * on a libevent loop, on one thread, with no library thread and no locks.
 * It speaks MQTT 3.1.1: a v5 broker would impose its receive maximum (20 by
 * default in mosquitto) on the publish window and spoil the load mode.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>
#include <mosquitto.h>

#include "common.h"
#include "payload.h"

enum sim_relay { SIM_CLOSED = 0, SIM_OPEN, SIM_ARMED };
static const char *sim_relay_names[] = {"closed", "open", "armed"};

/* A reading as produced: kept for batching and for resend. */
struct sim_reading {
	int64_t seq;
	int64_t energy_wh;
	enum sim_relay relay;
	char ts[40];
};

/* A command is a few short fields; anything longer is not from prepaidd. */
#define SIM_CMD_MAX 4096
/* Commands a meter remembers, so that a repeat gets the same answer. */
#define SIM_MEMO 64
struct sim_memo {
	char *id;
	char *ack;
};

struct sim_meter {
	int index; /* 1-based */
	char id[METER_ID_MAX + 1];
	char *t_reading, *t_event, *t_ack;

	enum sim_relay relay;
	bool keep_power;
	struct event *press;

	int64_t next_seq;
	int64_t energy_wh;
	int64_t energy_rem; /* W*ms not yet a whole Wh */
	int64_t produced;

	/* held readings: a ring that grows up to opt.hold */
	struct sim_reading *hold;
	size_t hold_cap, hold_len, hold_head;

	/* readings produced but not yet published (-b) */
	struct sim_reading *batch;
	size_t batch_len;

	struct event *tick;
	int64_t first_due_us;

	struct sim_memo *memo; /* SIM_MEMO entries, allocated on first command */
	int memo_next;
};

static struct {
	const char *host;
	int port;
	const char *prefix;
	int n;
	const char *idprefix;
	int64_t count;
	int64_t interval_ms;
	int64_t watts;
	int qos;
	int batch;
	int64_t start_seq;
	int64_t start_energy;
	int64_t *skip;
	size_t nskip;
	bool duplicate;
	bool ts_step;
	int64_t ts_start; /* --ts-start: seconds since the epoch; -1: the start */
	int64_t press_delay_ms;
	bool commands;
	size_t hold;
	int64_t linger_ms;
	const char *client_id;
	int inflight;
	bool status;
	const char *record; /* --record: file of (meter, seq) the broker acknowledged */
	int64_t load;
	int64_t rate;
	bool verbose;
} opt = {
    .host = "127.0.0.1",
    .port = 1883,
    .prefix = "meters",
    .n = 10,
    .idprefix = "SIM",
    .count = 0,
    .interval_ms = 1000,
    .watts = 1000,
    .qos = 1,
    .batch = 1,
    .start_seq = 1,
    .start_energy = 1000000,
    .ts_start = -1,
    .press_delay_ms = 2000,
    .commands = true,
    .hold = 1000,
    .linger_ms = 0,
    .inflight = 100,
};

static struct {
	struct event_base *base;
	struct mosquitto *mosq;
	struct event *ev_read, *ev_write;
	struct event *ev_reconnect, *ev_second, *ev_linger, *ev_load, *ev_drain;
	struct event *ev_sigint, *ev_sigterm;
	bool connected;
	bool ever_connected;

	struct sim_meter *meters;
	int meters_done;
	bool linger_over;
	bool stopping;
	bool finished;

	/* per message id: how many readings it carries (0: not a reading) */
	uint32_t mid_readings[65536];
	uint8_t mid_tracked[65536];
	char *mid_rec[65536]; /* --record: "meter seq" lines of a message in flight */
	char *rec_next; /* lines of the reading message being published */
	FILE *rec;
	int64_t outstanding; /* QoS > 0 publishes awaiting their ack */
	int64_t outstanding_rd; /* of which reading messages */
	int64_t published; /* readings in reading messages sent */
	int64_t acked; /* readings in reading messages acknowledged */
	int64_t status_last;

	/* load mode */
	int64_t load_msgs_sent;
	int64_t load_readings_sent;
	int64_t load_t0_us;
	int64_t first_pub_us, last_ack_us;

	int64_t t0_us; /* monotonic start of the schedule */
	int64_t wall0_us; /* wall clock at start, for --ts-step */
	int ts_frac; /* digits of fraction in ts: 0, 3 or 6 */

	char *buf;
	size_t buf_len, buf_cap;
} sim;

static void sim_want_write(void);
static void sim_check_done(void);
static void sim_pump_load(void);

static void PRINTFLIKE(1, 2) sim_warn(const char *fmt, ...)
{
	va_list ap;

	fputs("prepaid-sim: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void PRINTFLIKE(1, 2) sim_debug(const char *fmt, ...)
{
	va_list ap;

	if (!opt.verbose)
		return;
	fputs("prepaid-sim: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

NORETURN static void PRINTFLIKE(1, 2) sim_fatal(const char *fmt, ...)
{
	va_list ap;

	fputs("prepaid-sim: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

/* The stdout lines are what tests grep: one line each, flushed at once. */
static void PRINTFLIKE(1, 2) sim_out(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

/* --- small helpers */

static void
sim_buf_reset(void)
{
	sim.buf_len = 0;
	if (sim.buf_cap == 0) {
		sim.buf_cap = 4096;
		sim.buf = xmalloc(sim.buf_cap);
	}
	sim.buf[0] = '\0';
}

static void PRINTFLIKE(1, 2) sim_buf_add(const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(sim.buf + sim.buf_len, sim.buf_cap - sim.buf_len, fmt, ap);
		va_end(ap);
		if (n < 0)
			sim_fatal("formatting failed");
		if ((size_t)n < sim.buf_cap - sim.buf_len)
			break;
		sim.buf_cap = (sim.buf_cap + (size_t)n) * 2;
		sim.buf = xrealloc(sim.buf, sim.buf_cap);
	}
	sim.buf_len += (size_t)n;
}

/*
 * RFC 3339 in local time with a numeric offset, as a meter in the field
 * reports it. localtime_r is cached per second: the load mode formats tens
 * of thousands of stamps a second.
 */
static void
sim_format_ts(int64_t us, int frac, char *out, size_t outlen)
{
	static time_t last_sec = (time_t)-1;
	static char head[32], zone[8];
	time_t sec = (time_t)(us / 1000000);
	struct tm tm;
	int off;

	if (sec != last_sec) {
		localtime_r(&sec, &tm);
		strftime(head, sizeof head, "%Y-%m-%dT%H:%M:%S", &tm);
		off = (int)(tm.tm_gmtoff / 60 % (24 * 60));
		snprintf(zone, sizeof zone, "%c%02d:%02d", off < 0 ? '-' : '+', abs(off) / 60,
		    abs(off) % 60);
		last_sec = sec;
	}
	if (frac == 6)
		snprintf(out, outlen, "%.19s.%06d%.6s", head, (int)(us % 1000000), zone);
	else if (frac == 3)
		snprintf(out, outlen, "%.19s.%03d%.6s", head, (int)(us % 1000000 / 1000), zone);
	else
		snprintf(out, outlen, "%.19s%.6s", head, zone);
}

static int64_t
sim_number(const char *s, int64_t min, int64_t max, const char *what)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
		sim_fatal("%s: %s is not a number from %" PRId64 " to %" PRId64, what, s, min, max);
	return v;
}

static int
sim_cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

static void
sim_parse_skip(const char *list)
{
	char *copy = xstrdup(list), *tok, *save = NULL;

	for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		opt.skip = xreallocarray(opt.skip, opt.nskip + 1, sizeof *opt.skip);
		opt.skip[opt.nskip++] = sim_number(tok, 0, INT64_MAX, "--skip-seq");
	}
	free(copy);
	qsort(opt.skip, opt.nskip, sizeof *opt.skip, sim_cmp64);
}

static bool
sim_skipped(int64_t seq)
{
	return opt.nskip > 0 && bsearch(&seq, opt.skip, opt.nskip, sizeof seq, sim_cmp64) != NULL;
}

static void
sim_timer_add(struct event *ev, int64_t delay_us)
{
	struct timeval tv;

	if (delay_us < 0)
		delay_us = 0;
	tv.tv_sec = (time_t)(delay_us / 1000000);
	tv.tv_usec = (suseconds_t)(delay_us % 1000000);
	evtimer_add(ev, &tv);
}

/* --- publishing */

/*
 * Publish one message and account for it. readings > 0 marks a reading
 * message: it counts in published/acked and in the load window. A QoS > 0
 * publish made while disconnected is kept by libmosquitto and sent after
 * the reconnect, so NO_CONN is not a loss there.
 */
static void
sim_publish(const char *topic, const char *payload, size_t len, int qos, uint32_t readings)
{
	int mid = 0, rc;

	rc = mosquitto_publish(sim.mosq, &mid, topic, (int)len, payload, qos, false);
	if (rc != MOSQ_ERR_SUCCESS && !(rc == MOSQ_ERR_NO_CONN && qos > 0)) {
		sim_warn("publish to %s failed: %s", topic, mosquitto_strerror(rc));
		return;
	}
	if (opt.verbose)
		sim_debug("pub %s mid=%d %.*s", topic, mid, len > 200 ? 200 : (int)len, payload);
	if (readings > 0 && sim.first_pub_us == 0)
		sim.first_pub_us = now_mono_us();
	sim.published += readings;
	if (qos == 0) {
		/* No acknowledgement will come: done when handed to the socket. */
		sim.acked += readings;
		if (readings > 0)
			sim.last_ack_us = now_mono_us();
		return;
	}
	sim.mid_readings[(uint16_t)mid] = readings;
	sim.mid_tracked[(uint16_t)mid] = 1;
	if (readings > 0 && sim.rec_next != NULL) {
		free(sim.mid_rec[(uint16_t)mid]);
		sim.mid_rec[(uint16_t)mid] = xstrdup(sim.rec_next);
	}
	sim.outstanding++;
	if (readings > 0)
		sim.outstanding_rd++;
}

static void
sim_on_publish(struct mosquitto *mosq, void *arg, int mid)
{
	uint16_t m = (uint16_t)mid;
	uint32_t n;

	UNUSED(mosq);
	UNUSED(arg);
	if (!sim.mid_tracked[m])
		return;
	sim.mid_tracked[m] = 0;
	if (sim.mid_rec[m] != NULL) {
		/* The broker acknowledged it: a loss after this is the head-end's. */
		fputs(sim.mid_rec[m], sim.rec);
		free(sim.mid_rec[m]);
		sim.mid_rec[m] = NULL;
	}
	n = sim.mid_readings[m];
	sim.mid_readings[m] = 0;
	sim.outstanding--;
	if (n > 0) {
		sim.outstanding_rd--;
		sim.acked += n;
		sim.last_ack_us = now_mono_us();
	}
}

/* Publish readings of one meter; array forces a JSON array for one item. */
static void
sim_publish_readings(
    struct sim_meter *m, const struct sim_reading *r, size_t n, bool array, bool skip_lost)
{
	size_t i, sent = 0;

	sim_buf_reset();
	if (array)
		sim_buf_add("[");
	for (i = 0; i < n; i++) {
		if (skip_lost && sim_skipped(r[i].seq))
			continue;
		sim_buf_add("%s{\"seq\":%" PRId64 ",\"ts\":\"%s\",\"energy_wh\":%" PRId64
		            ",\"relay\":\"%s\"}",
		    sent > 0 ? "," : "", r[i].seq, r[i].ts, r[i].energy_wh,
		    sim_relay_names[r[i].relay]);
		sent++;
	}
	if (array)
		sim_buf_add("]");
	if (sent == 0)
		return;
	if (sim.rec != NULL && opt.qos > 0) {
		struct sbuf lines = {0};

		for (i = 0; i < n; i++)
			if (!(skip_lost && sim_skipped(r[i].seq)))
				sbuf_printf(&lines, "%s %" PRId64 "\n", m->id, r[i].seq);
		sim.rec_next = lines.p;
	}
	sim_publish(m->t_reading, sim.buf, sim.buf_len, opt.qos, (uint32_t)sent);
	if (opt.duplicate)
		sim_publish(m->t_reading, sim.buf, sim.buf_len, opt.qos, (uint32_t)sent);
	free(sim.rec_next);
	sim.rec_next = NULL;
}

static void
sim_hold(struct sim_meter *m, const struct sim_reading *r)
{
	struct sim_reading *grown;
	size_t i, cap;

	if (opt.hold == 0)
		return;
	if (m->hold_len == m->hold_cap && m->hold_cap < opt.hold) {
		/* Grow lazily: a big fleet in load mode holds little per meter. */
		cap = m->hold_cap ? m->hold_cap * 2 : 16;
		if (cap > opt.hold)
			cap = opt.hold;
		grown = xreallocarray(NULL, cap, sizeof *grown);
		for (i = 0; i < m->hold_len; i++)
			grown[i] = m->hold[(m->hold_head + i) % m->hold_cap];
		free(m->hold);
		m->hold = grown;
		m->hold_cap = cap;
		m->hold_head = 0;
	}
	if (m->hold_len < m->hold_cap) {
		m->hold[(m->hold_head + m->hold_len) % m->hold_cap] = *r;
		m->hold_len++;
	} else {
		m->hold[m->hold_head] = *r;
		m->hold_head = (m->hold_head + 1) % m->hold_cap;
	}
}

/* Make the meter's next reading: register, relay, time stamp. */
static void
sim_produce(struct sim_meter *m, struct sim_reading *r)
{
	if (m->produced > 0 && m->relay == SIM_CLOSED) {
		/* An open relay draws nothing: only a closed one advances the register. */
		m->energy_rem += opt.watts * opt.interval_ms;
		m->energy_wh += m->energy_rem / 3600000;
		m->energy_rem %= 3600000;
	}
	r->seq = m->next_seq++;
	r->energy_wh = m->energy_wh;
	r->relay = m->relay;
	if (opt.ts_step)
		sim_format_ts(sim.wall0_us + (r->seq - opt.start_seq) * opt.interval_ms * 1000,
		    sim.ts_frac, r->ts, sizeof r->ts);
	else
		sim_format_ts(now_wall_us(), sim.ts_frac, r->ts, sizeof r->ts);
	m->produced++;
	sim_hold(m, r);
}

static void
sim_publish_ack(
    struct sim_meter *m, const char *id, const char *result, const char *detail, bool remember)
{
	json_t *o;
	char *s;
	struct sim_memo *slot;

	o = json_object();
	json_object_set_new(o, "id", json_string(id));
	json_object_set_new(o, "result", json_string(result));
	json_object_set_new(o, "relay", json_string(sim_relay_names[m->relay]));
	if (detail != NULL)
		json_object_set_new(o, "detail", json_string(detail));
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (s == NULL)
		sim_fatal("json_dumps failed");
	sim_publish(m->t_ack, s, strlen(s), 1, 0);
	if (remember) {
		if (m->memo == NULL)
			m->memo = xcalloc(SIM_MEMO, sizeof *m->memo);
		slot = &m->memo[m->memo_next];
		free(slot->id);
		free(slot->ack);
		slot->id = xstrdup(id);
		slot->ack = s;
		m->memo_next = (m->memo_next + 1) % SIM_MEMO;
	} else
		free(s);
}

static void
sim_publish_event(struct sim_meter *m, const char *cause)
{
	char ts[40], *s;
	int n;

	sim_format_ts(now_wall_us(), sim.ts_frac, ts, sizeof ts);
	n = xasprintf(&s, "{\"ts\":\"%s\",\"type\":\"relay\",\"relay\":\"%s\",\"cause\":\"%s\"}",
	    ts, sim_relay_names[m->relay], cause);
	sim_publish(m->t_event, s, (size_t)n, 1, 0);
	free(s);
	sim_out("event meter=%s relay=%s cause=%s", m->id, sim_relay_names[m->relay], cause);
}

/* --- relay and commands */

static void
sim_set_relay(struct sim_meter *m, enum sim_relay r)
{
	/* A pending button press only matters while the meter stays armed. */
	if (r != SIM_ARMED && m->press != NULL)
		evtimer_del(m->press);
	m->relay = r;
}

static void
sim_press(evutil_socket_t fd, short what, void *arg)
{
	struct sim_meter *m = arg;

	UNUSED(fd);
	UNUSED(what);
	if (m->relay != SIM_ARMED || sim.finished)
		return;
	sim_set_relay(m, SIM_CLOSED);
	sim_publish_event(m, "button");
	sim_want_write();
}

static struct sim_meter *
sim_meter_by_id(const char *id, size_t len)
{
	size_t plen = strlen(opt.idprefix);
	char want[METER_ID_MAX + 1];
	long idx = 0;
	size_t i;

	if (len <= plen || len > METER_ID_MAX || strncmp(id, opt.idprefix, plen) != 0)
		return NULL;
	for (i = plen; i < len; i++) {
		if (id[i] < '0' || id[i] > '9')
			return NULL;
		idx = idx * 10 + (id[i] - '0');
		if (idx > opt.n)
			return NULL;
	}
	if (idx < 1)
		return NULL;
	snprintf(want, sizeof want, "%s%04ld", opt.idprefix, idx);
	if (strlen(want) != len || strncmp(want, id, len) != 0)
		return NULL;
	return &sim.meters[idx - 1];
}

/* Command ids and actions go into a stdout line: keep it one grep-able line. */
static void
sim_printable(const char *in, char *out, size_t outlen)
{
	size_t i;

	for (i = 0; in[i] != '\0' && i + 1 < outlen; i++)
		out[i] = (in[i] > ' ' && in[i] < 127) ? in[i] : '?';
	out[i] = '\0';
}

static void
sim_resend(struct sim_meter *m, int64_t from_seq)
{
	struct sim_reading *out;
	size_t i, n = 0;

	if (m->hold_len == 0)
		return;
	out = xreallocarray(NULL, m->hold_len, sizeof *out);
	for (i = 0; i < m->hold_len; i++) {
		const struct sim_reading *r = &m->hold[(m->hold_head + i) % m->hold_cap];

		if (r->seq >= from_seq)
			out[n++] = *r;
	}
	/* What --skip-seq lost on the first send is recovered here. */
	if (n > 0)
		sim_publish_readings(m, out, n, true, false);
	free(out);
}

/* One command to one meter; the ack and the stdout line come from here. */
static void
sim_command(struct sim_meter *m, const char *payload, size_t len)
{
	struct meter_cmd cmd;
	const char *id, *action, *result = "ok", *detail = NULL, *event_cause = NULL;
	char pid[80], pact[40], why[160];
	int i;

	/* The daemon's own encoding, decoded as the daemon's contract says. */
	if (!payload_decode_cmd(payload, len, SIM_CMD_MAX, &cmd, why, sizeof why)) {
		sim_warn("meter %s: command ignored: %s", m->id, why);
		return;
	}
	id = cmd.id;
	action = cmd.action;
	sim_printable(id, pid, sizeof pid);
	sim_printable(action[0] != '\0' ? action : "-", pact, sizeof pact);

	/* A repeat gets the same answer, and nothing happens again. */
	for (i = 0; m->memo != NULL && i < SIM_MEMO; i++) {
		if (m->memo[i].id != NULL && strcmp(m->memo[i].id, id) == 0) {
			sim_publish(m->t_ack, m->memo[i].ack, strlen(m->memo[i].ack), 1, 0);
			sim_out("cmd meter=%s id=%s action=%s result=repeat relay=%s", m->id, pid,
			    pact, sim_relay_names[m->relay]);
			return;
		}
	}

	if (!cmd.has_valid_until) {
		result = "rejected";
		detail = "valid_until missing or not RFC 3339";
	} else if (cmd.valid_until_us < now_wall_us()) {
		/* Not executed, so not remembered: the contract says ignore it. */
		sim_publish_ack(m, id, "expired", NULL, false);
		sim_out("cmd meter=%s id=%s action=%s result=expired relay=%s", m->id, pid, pact,
		    sim_relay_names[m->relay]);
		return;
	} else if (strcmp(action, "trip") == 0) {
		if (m->keep_power) {
			/* DL/T 645 meters refuse a trip while keep-power is set. */
			result = "rejected";
			detail = "keep power is on";
		} else
			sim_set_relay(m, SIM_OPEN);
	} else if (strcmp(action, "arm") == 0) {
		/* Arming never cuts supply: a closed relay stays closed. */
		if (m->relay == SIM_OPEN) {
			sim_set_relay(m, SIM_ARMED);
			if (opt.press_delay_ms >= 0) {
				if (m->press == NULL)
					m->press = evtimer_new(sim.base, sim_press, m);
				sim_timer_add(m->press, opt.press_delay_ms * 1000);
			}
		}
	} else if (strcmp(action, "close") == 0) {
		if (m->relay != SIM_CLOSED) {
			sim_set_relay(m, SIM_CLOSED);
			event_cause = "remote";
		}
	} else if (strcmp(action, "keep_power_on") == 0) {
		m->keep_power = true;
	} else if (strcmp(action, "keep_power_off") == 0) {
		m->keep_power = false;
	} else if (strcmp(action, "resend") == 0) {
		if (!cmd.has_from_seq) {
			result = "rejected";
			detail = "from_seq missing or not a non-negative integer";
		} else
			sim_resend(m, cmd.from_seq);
	} else {
		result = "unsupported";
		detail = "unknown action";
	}
	sim_publish_ack(m, id, result, detail, true);
	sim_out("cmd meter=%s id=%s action=%s result=%s relay=%s", m->id, pid, pact, result,
	    sim_relay_names[m->relay]);
	/* The ack first: the head-end learns of the command before its effect. */
	if (event_cause != NULL)
		sim_publish_event(m, event_cause);
}

static void
sim_on_message(struct mosquitto *mosq, void *arg, const struct mosquitto_message *msg)
{
	size_t plen = strlen(opt.prefix), tlen;
	const char *topic = msg->topic, *id;
	struct sim_meter *m;

	UNUSED(mosq);
	UNUSED(arg);
	tlen = strlen(topic);
	/* "<prefix>/<id>/cmd" */
	if (tlen < plen + 6 || strncmp(topic, opt.prefix, plen) != 0 || topic[plen] != '/' ||
	    strcmp(topic + tlen - 4, "/cmd") != 0)
		return;
	id = topic + plen + 1;
	m = sim_meter_by_id(id, (size_t)(topic + tlen - 4 - id));
	if (m == NULL)
		return; /* another fleet's meter */
	sim_command(m, msg->payload, (size_t)msg->payloadlen);
}

/* --- the connection */

static void
sim_on_connect(struct mosquitto *mosq, void *arg, int rc)
{
	char *sub;

	UNUSED(arg);
	if (rc != 0) {
		sim_warn("broker refused the connection: %s", mosquitto_connack_string(rc));
		return;
	}
	sim_debug("connected to %s:%d", opt.host, opt.port);
	sim.connected = true;
	if (opt.commands) {
		xasprintf(&sub, "%s/+/cmd", opt.prefix);
		rc = mosquitto_subscribe(mosq, NULL, sub, 1);
		if (rc != MOSQ_ERR_SUCCESS)
			sim_warn("subscribe %s: %s", sub, mosquitto_strerror(rc));
		free(sub);
	}
}

static void
sim_on_disconnect(struct mosquitto *mosq, void *arg, int rc)
{
	UNUSED(mosq);
	UNUSED(arg);
	sim.connected = false;
	if (rc != 0 && !sim.finished)
		sim_warn("connection to %s:%d lost, reconnecting", opt.host, opt.port);
}

static void
sim_sock_drop(void)
{
	if (sim.ev_read != NULL) {
		event_free(sim.ev_read);
		sim.ev_read = NULL;
	}
	if (sim.ev_write != NULL) {
		event_free(sim.ev_write);
		sim.ev_write = NULL;
	}
}

static void
sim_lost(void)
{
	sim.connected = false;
	sim_sock_drop();
	if (!sim.finished)
		sim_timer_add(sim.ev_reconnect, 1000000);
}

static void
sim_on_write(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	if (mosquitto_loop_write(sim.mosq, 1) != MOSQ_ERR_SUCCESS) {
		sim_lost();
		return;
	}
	sim_want_write();
}

static void
sim_want_write(void)
{
	if (sim.ev_write == NULL)
		return;
	if (mosquitto_want_write(sim.mosq)) {
		if (!event_pending(sim.ev_write, EV_WRITE, NULL))
			event_add(sim.ev_write, NULL);
	} else if (event_pending(sim.ev_write, EV_WRITE, NULL))
		event_del(sim.ev_write);
}

static void sim_start_schedule(void);

static void
sim_on_read(evutil_socket_t fd, short what, void *arg)
{
	bool was = sim.connected;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	if (mosquitto_loop_read(sim.mosq, 64) != MOSQ_ERR_SUCCESS) {
		sim_lost();
		sim_check_done();
		return;
	}
	if (!was && sim.connected && !sim.ever_connected) {
		sim.ever_connected = true;
		sim_start_schedule();
	}
	if (opt.load > 0 && opt.rate == 0)
		sim_pump_load();
	sim_want_write();
	sim_check_done();
}

static void
sim_sock_setup(void)
{
	int fd = mosquitto_socket(sim.mosq);

	sim_sock_drop();
	sim.ev_read = event_new(sim.base, fd, EV_READ | EV_PERSIST, sim_on_read, NULL);
	sim.ev_write = event_new(sim.base, fd, EV_WRITE, sim_on_write, NULL);
	event_add(sim.ev_read, NULL);
	sim_want_write();
}

static void
sim_reconnect(evutil_socket_t fd, short what, void *arg)
{
	int rc;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	if (sim.finished)
		return;
	if (!sim.ever_connected && sim.ev_read == NULL)
		rc = mosquitto_connect(sim.mosq, opt.host, opt.port, 30);
	else
		rc = mosquitto_reconnect(sim.mosq);
	if (rc != MOSQ_ERR_SUCCESS) {
		sim_debug("connect %s:%d: %s", opt.host, opt.port,
		    rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
		if (sim.stopping) {
			sim_check_done();
			return;
		}
		sim_timer_add(sim.ev_reconnect, 1000000);
		return;
	}
	sim_sock_setup();
}

/* --- the schedules */

static void
sim_meter_flush(struct sim_meter *m)
{
	if (m->batch_len == 0)
		return;
	sim_publish_readings(m, m->batch, m->batch_len, opt.batch > 1, true);
	m->batch_len = 0;
}

static void
sim_meter_done(void)
{
	sim.meters_done++;
	if (sim.meters_done < opt.n)
		return;
	sim_debug("all meters published their readings");
	if (opt.linger_ms > 0)
		sim_timer_add(sim.ev_linger, opt.linger_ms * 1000);
	else if (opt.linger_ms == 0)
		sim.linger_over = true;
}

/* One meter's reading is due: make it, publish its batch when full. */
static void
sim_tick(evutil_socket_t fd, short what, void *arg)
{
	struct sim_meter *m = arg;

	UNUSED(fd);
	UNUSED(what);
	if (sim.stopping)
		return;
	sim_produce(m, &m->batch[m->batch_len++]);
	if (m->batch_len == (size_t)opt.batch || (opt.count > 0 && m->produced >= opt.count))
		sim_meter_flush(m);
	if (opt.count > 0 && m->produced >= opt.count) {
		sim_meter_done();
	} else {
		/* Absolute schedule: a late tick does not push the later ones. */
		sim_timer_add(m->tick,
		    m->first_due_us + m->produced * opt.interval_ms * 1000 - now_mono_us());
	}
	sim_want_write();
	sim_check_done();
}

static void
sim_load_timer(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	sim_pump_load();
	sim_want_write();
	sim_check_done();
}

/*
 * Load mode: round robin over the meters, one message (of -b readings) at
 * a time. Closed loop: keep the window of unacknowledged reading messages
 * full. Open loop (--rate): publish what is due by absolute time since the
 * start, whatever the window, and sleep until the next one is due.
 */
static void
sim_pump_load(void)
{
	struct sim_meter *m;
	int64_t due, now, k;

	if (sim.stopping || sim.load_readings_sent >= opt.load || !sim.ever_connected)
		return;
	if (opt.rate > 0) {
		now = now_mono_us();
		due = (now - sim.load_t0_us) * opt.rate / 1000000 + 1;
		if (due > opt.load)
			due = opt.load;
	} else
		due = opt.load;
	while (
	    sim.load_readings_sent < due && (opt.rate > 0 || sim.outstanding_rd < opt.inflight)) {
		m = &sim.meters[sim.load_msgs_sent % opt.n];
		for (k = 0; k < opt.batch && sim.load_readings_sent < opt.load; k++) {
			sim_produce(m, &m->batch[m->batch_len++]);
			sim.load_readings_sent++;
		}
		sim_meter_flush(m);
		sim.load_msgs_sent++;
		if (opt.qos == 0 && opt.rate == 0 && sim.load_msgs_sent % 256 == 0)
			break; /* QoS 0 has no window: let the loop breathe */
	}
	if (sim.load_readings_sent >= opt.load) {
		sim_debug("load: all %" PRId64 " readings published", opt.load);
		if (opt.linger_ms > 0)
			sim_timer_add(sim.ev_linger, opt.linger_ms * 1000);
		else if (opt.linger_ms == 0)
			sim.linger_over = true;
		return;
	}
	if (opt.rate > 0) {
		/* the next reading is number load_readings_sent, due at its own time */
		k = sim.load_readings_sent;
		sim_timer_add(sim.ev_load,
		    sim.load_t0_us + (k * 1000000 + opt.rate - 1) / opt.rate - now_mono_us());
	} else if (opt.qos == 0)
		sim_timer_add(sim.ev_load, 0);
}

static void
sim_start_schedule(void)
{
	int i;

	sim.t0_us = now_mono_us();
	if (opt.load > 0) {
		sim.load_t0_us = sim.t0_us;
		sim_pump_load();
		return;
	}
	for (i = 0; i < opt.n; i++) {
		struct sim_meter *m = &sim.meters[i];

		/* Stagger the fleet across one interval. */
		m->first_due_us = sim.t0_us + (int64_t)i * opt.interval_ms * 1000 / opt.n;
		m->tick = evtimer_new(sim.base, sim_tick, m);
		sim_timer_add(m->tick, m->first_due_us - sim.t0_us);
	}
}

/* --- the end */

static void
sim_finish(void)
{
	double secs, rate;

	if (sim.finished)
		return;
	sim.finished = true;
	if (opt.load > 0) {
		secs = sim.first_pub_us != 0 && sim.last_ack_us > sim.first_pub_us
		           ? (double)(sim.last_ack_us - sim.first_pub_us) / 1e6
		           : 0.0;
		rate = secs > 0 ? (double)sim.acked / secs : 0.0;
		sim_out("RESULT published=%" PRId64 " acked=%" PRId64 " seconds=%.3f rate=%.0f",
		    sim.published, sim.acked, secs, rate);
	} else
		sim_out("sim: published=%" PRId64 " acked=%" PRId64, sim.published, sim.acked);
	if (sim.connected) {
		mosquitto_disconnect(sim.mosq);
		mosquitto_loop_write(sim.mosq, 1);
	}
	event_base_loopbreak(sim.base);
}

static void
sim_check_done(void)
{
	if (sim.finished)
		return;
	if (sim.stopping) {
		if (sim.outstanding == 0 || !sim.connected)
			sim_finish();
		return;
	}
	if (opt.load > 0) {
		if (sim.load_readings_sent >= opt.load && sim.outstanding == 0 && sim.linger_over)
			sim_finish();
		return;
	}
	if (opt.count > 0 && sim.meters_done == opt.n && sim.linger_over && sim.outstanding == 0)
		sim_finish();
}

static void
sim_linger_over(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	sim.linger_over = true;
	sim_check_done();
}

static void
sim_drain_over(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	if (!sim.finished)
		sim_warn("%" PRId64 " publishes still unacknowledged at exit", sim.outstanding);
	sim_finish();
}

/* First SIGINT/SIGTERM: stop publishing, wait briefly for acks; second: now. */
static void
sim_on_signal(evutil_socket_t sig, short what, void *arg)
{
	UNUSED(what);
	UNUSED(arg);
	if (sim.stopping) {
		sim_finish();
		return;
	}
	sim_debug("signal %d: stopping", (int)sig);
	sim.stopping = true;
	sim_timer_add(sim.ev_drain, 3000000);
	sim_check_done();
}

static void
sim_second(evutil_socket_t fd, short what, void *arg)
{
	int closed = 0, open = 0, armed = 0, i;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	if (sim.ev_read != NULL) {
		mosquitto_loop_misc(sim.mosq); /* keepalive */
		if (mosquitto_socket(sim.mosq) == -1) {
			sim_lost();
			return;
		}
	}
	if (opt.status) {
		for (i = 0; i < opt.n; i++) {
			switch (sim.meters[i].relay) {
			case SIM_CLOSED:
				closed++;
				break;
			case SIM_OPEN:
				open++;
				break;
			case SIM_ARMED:
				armed++;
				break;
			}
		}
		fprintf(stderr,
		    "sim: readings/s=%" PRId64 " published=%" PRId64 " acked=%" PRId64
		    " closed=%d open=%d armed=%d%s\n",
		    sim.published - sim.status_last, sim.published, sim.acked, closed, open, armed,
		    sim.connected ? "" : " (disconnected)");
		sim.status_last = sim.published;
	}
	sim_want_write();
}

/* --- start-up */

static void
sim_usage(FILE *f)
{
	fprintf(f,
	    "usage: prepaid-sim [-v] [-b batch] [-c count] [-h host] [-i idprefix] [-n meters]\n"
	    "         [-P prefix] [-p port] [-q qos] [-r ms] [-w watts] [--client-id id]\n"
	    "         [--duplicate] [--hold n] [--inflight n] [--linger ms] [--load n]\n"
	    "         [--no-commands] [--press-delay ms] [--rate r] [--skip-seq list]\n"
	    "         [--record file] [--start-energy wh] [--start-seq n] [--status]\n"
	    "         [--ts-now | --ts-step | --ts-start epoch]\n");
}

enum {
	OPT_START_SEQ = 256,
	OPT_START_ENERGY,
	OPT_SKIP_SEQ,
	OPT_DUPLICATE,
	OPT_TS_NOW,
	OPT_TS_STEP,
	OPT_TS_START,
	OPT_PRESS_DELAY,
	OPT_NO_COMMANDS,
	OPT_HOLD,
	OPT_LINGER,
	OPT_CLIENT_ID,
	OPT_INFLIGHT,
	OPT_STATUS,
	OPT_RECORD,
	OPT_LOAD,
	OPT_RATE,
	OPT_HELP
};

static const struct option sim_longopts[] = {{"start-seq", required_argument, NULL, OPT_START_SEQ},
    {"start-energy", required_argument, NULL, OPT_START_ENERGY},
    {"skip-seq", required_argument, NULL, OPT_SKIP_SEQ},
    {"duplicate", no_argument, NULL, OPT_DUPLICATE}, {"ts-now", no_argument, NULL, OPT_TS_NOW},
    {"ts-step", no_argument, NULL, OPT_TS_STEP},
    {"ts-start", required_argument, NULL, OPT_TS_START},
    {"press-delay", required_argument, NULL, OPT_PRESS_DELAY},
    {"no-commands", no_argument, NULL, OPT_NO_COMMANDS},
    {"hold", required_argument, NULL, OPT_HOLD}, {"linger", required_argument, NULL, OPT_LINGER},
    {"client-id", required_argument, NULL, OPT_CLIENT_ID},
    {"inflight", required_argument, NULL, OPT_INFLIGHT}, {"status", no_argument, NULL, OPT_STATUS},
    {"record", required_argument, NULL, OPT_RECORD}, {"load", required_argument, NULL, OPT_LOAD},
    {"rate", required_argument, NULL, OPT_RATE}, {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0}};

static void
sim_options(int argc, char **argv)
{
	int c;

	while ((c = getopt_long(argc, argv, "b:c:h:i:n:P:p:q:r:vw:", sim_longopts, NULL)) != -1) {
		switch (c) {
		case 'b':
			opt.batch = (int)sim_number(optarg, 1, 100000, "-b");
			break;
		case 'c':
			opt.count = sim_number(optarg, 0, INT64_MAX / 2, "-c");
			break;
		case 'h':
			opt.host = optarg;
			break;
		case 'i':
			opt.idprefix = optarg;
			break;
		case 'n':
			opt.n = (int)sim_number(optarg, 1, 1000000, "-n");
			break;
		case 'P':
			opt.prefix = optarg;
			break;
		case 'p':
			opt.port = (int)sim_number(optarg, 1, 65535, "-p");
			break;
		case 'q':
			opt.qos = (int)sim_number(optarg, 0, 2, "-q");
			break;
		case 'r':
			opt.interval_ms = sim_number(optarg, 1, 86400000, "-r");
			break;
		case 'v':
			opt.verbose = true;
			break;
		case 'w':
			opt.watts = sim_number(optarg, 0, 10000000, "-w");
			break;
		case OPT_START_SEQ:
			opt.start_seq = sim_number(optarg, 0, INT64_MAX / 2, "--start-seq");
			break;
		case OPT_START_ENERGY:
			opt.start_energy = sim_number(optarg, 0, INT64_MAX / 2, "--start-energy");
			break;
		case OPT_SKIP_SEQ:
			sim_parse_skip(optarg);
			break;
		case OPT_DUPLICATE:
			opt.duplicate = true;
			break;
		case OPT_TS_NOW:
			opt.ts_step = false;
			break;
		case OPT_TS_STEP:
			opt.ts_step = true;
			break;
		case OPT_TS_START:
			opt.ts_step = true;
			opt.ts_start = sim_number(optarg, 0, INT64_MAX / 2000000, "--ts-start");
			break;
		case OPT_PRESS_DELAY:
			opt.press_delay_ms = sim_number(optarg, -1, 86400000, "--press-delay");
			break;
		case OPT_NO_COMMANDS:
			opt.commands = false;
			break;
		case OPT_HOLD:
			opt.hold = (size_t)sim_number(optarg, 0, 10000000, "--hold");
			break;
		case OPT_LINGER:
			opt.linger_ms = sim_number(optarg, -1, INT64_MAX / 1000, "--linger");
			break;
		case OPT_CLIENT_ID:
			opt.client_id = optarg;
			break;
		case OPT_INFLIGHT:
			opt.inflight = (int)sim_number(optarg, 1, 65535, "--inflight");
			break;
		case OPT_STATUS:
			opt.status = true;
			break;
		case OPT_RECORD:
			opt.record = optarg;
			break;
		case OPT_LOAD:
			opt.load = sim_number(optarg, 1, INT64_MAX / 2, "--load");
			break;
		case OPT_RATE:
			opt.rate = sim_number(optarg, 1, 100000000, "--rate");
			break;
		case OPT_HELP:
			sim_usage(stdout);
			exit(0);
		default:
			sim_usage(stderr);
			exit(2);
		}
	}
	if (optind != argc) {
		sim_usage(stderr);
		exit(2);
	}
	if (opt.rate > 0 && opt.load == 0)
		sim_fatal("--rate needs --load");
	if (opt.record != NULL && (sim.rec = fopen(opt.record, "w")) == NULL)
		sim_fatal("--record %s: %s", opt.record, strerror(errno));
}

static bool
sim_id_valid(const char *s)
{
	size_t i, len = strlen(s);

	if (len == 0 || len > METER_ID_MAX)
		return false;
	for (i = 0; i < len; i++) {
		char c = s[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		        c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

static void
sim_meters_init(void)
{
	int i;

	sim.meters = xcalloc((size_t)opt.n, sizeof *sim.meters);
	for (i = 0; i < opt.n; i++) {
		struct sim_meter *m = &sim.meters[i];

		m->index = i + 1;
		snprintf(m->id, sizeof m->id, "%s%04d", opt.idprefix, i + 1);
		if (!sim_id_valid(m->id) || strlen(opt.idprefix) + 4 > METER_ID_MAX)
			sim_fatal("meter id %s%04d is not 1-32 characters of [A-Za-z0-9_.-]",
			    opt.idprefix, i + 1);
		xasprintf(&m->t_reading, "%s/%s/reading", opt.prefix, m->id);
		xasprintf(&m->t_event, "%s/%s/event", opt.prefix, m->id);
		xasprintf(&m->t_ack, "%s/%s/ack", opt.prefix, m->id);
		m->relay = SIM_CLOSED;
		m->next_seq = opt.start_seq;
		m->energy_wh = opt.start_energy;
		m->batch = xreallocarray(NULL, (size_t)opt.batch, sizeof *m->batch);
	}
}

static void
sim_meters_free(void)
{
	int i, j;

	for (i = 0; i < opt.n; i++) {
		struct sim_meter *m = &sim.meters[i];

		if (m->tick != NULL)
			event_free(m->tick);
		if (m->press != NULL)
			event_free(m->press);
		for (j = 0; m->memo != NULL && j < SIM_MEMO; j++) {
			free(m->memo[j].id);
			free(m->memo[j].ack);
		}
		free(m->memo);
		free(m->hold);
		free(m->batch);
		free(m->t_reading);
		free(m->t_event);
		free(m->t_ack);
	}
	free(sim.meters);
}

int
main(int argc, char **argv)
{
	char defid[64];
	const char *cid;
	bool persistent;

	sim_options(argc, argv);
	signal(SIGPIPE, SIG_IGN);
	tzset();

	if (opt.load > 0)
		sim.ts_frac = 6;
	else
		sim.ts_frac = opt.interval_ms % 1000 == 0 ? 0 : 3;
	/*
	 * --ts-step: the first seq is stamped with the whole second of the start
	 * (--ts-start: with the second given).
	 */
	sim.wall0_us =
	    opt.ts_start >= 0 ? opt.ts_start * 1000000 : now_wall_us() / 1000000 * 1000000;
	sim_meters_init();

	sim.base = event_base_new();
	if (sim.base == NULL)
		sim_fatal("event_base_new failed");
	mosquitto_lib_init();
	snprintf(defid, sizeof defid, "prepaid-sim-%ld", (long)getpid());
	cid = opt.client_id != NULL ? opt.client_id : defid;
	/* A named client keeps its session (commands queue while it is away). */
	persistent = opt.client_id != NULL;
	sim.mosq = mosquitto_new(cid, !persistent, NULL);
	if (sim.mosq == NULL)
		sim_fatal("mosquitto_new: %s", strerror(errno));
	mosquitto_int_option(sim.mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
	mosquitto_int_option(sim.mosq, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_max_inflight_messages_set(sim.mosq, (unsigned int)opt.inflight);
	mosquitto_connect_callback_set(sim.mosq, sim_on_connect);
	mosquitto_disconnect_callback_set(sim.mosq, sim_on_disconnect);
	mosquitto_publish_callback_set(sim.mosq, sim_on_publish);
	mosquitto_message_callback_set(sim.mosq, sim_on_message);

	sim.ev_reconnect = evtimer_new(sim.base, sim_reconnect, NULL);
	sim.ev_linger = evtimer_new(sim.base, sim_linger_over, NULL);
	sim.ev_load = evtimer_new(sim.base, sim_load_timer, NULL);
	sim.ev_drain = evtimer_new(sim.base, sim_drain_over, NULL);
	sim.ev_second = event_new(sim.base, -1, EV_PERSIST, sim_second, NULL);
	sim.ev_sigint = evsignal_new(sim.base, SIGINT, sim_on_signal, NULL);
	sim.ev_sigterm = evsignal_new(sim.base, SIGTERM, sim_on_signal, NULL);
	evsignal_add(sim.ev_sigint, NULL);
	evsignal_add(sim.ev_sigterm, NULL);
	sim_timer_add(sim.ev_second, 1000000);

	sim_debug("%d meters %s0001.. on %s:%d prefix %s, MQTT 3.1.1, libmosquitto %d", opt.n,
	    opt.idprefix, opt.host, opt.port, opt.prefix, mosquitto_lib_version(NULL, NULL, NULL));
	sim_reconnect(-1, 0, NULL);
	if (sim.ev_read == NULL && !sim.ever_connected)
		sim_warn("cannot connect to %s:%d yet, retrying every second", opt.host, opt.port);
	event_base_dispatch(sim.base);

	sim_sock_drop();
	mosquitto_destroy(sim.mosq);
	mosquitto_lib_cleanup();
	sim_meters_free();
	event_free(sim.ev_reconnect);
	event_free(sim.ev_linger);
	event_free(sim.ev_load);
	event_free(sim.ev_drain);
	event_free(sim.ev_second);
	event_free(sim.ev_sigint);
	event_free(sim.ev_sigterm);
	event_base_free(sim.base);
	free(sim.buf);
	free(opt.skip);
	return 0;
}
