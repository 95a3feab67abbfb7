/*
 * outbox.c: the command outbox of outbox.h. One claim round trip at a time
 * on the "commands" connection (its own, see main.c); a NOTIFY or a poll tick during a claim sets a
 * flag so that another claim follows. Claiming is skipped while the broker
 * is away: rows stay due in the database and nothing is marked sent that
 * could not be published.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "payload.h"

struct outbox {
	struct event_base *base;
	struct pgconn *pc;
	struct mqtt *mqtt;
	const struct conf *conf;
	struct event *poll_timer;
	bool ready;
	bool claiming;
	bool again;
};

static void outbox_claim(struct outbox *ob);

static const char outbox_claim_sql[] =
    "SELECT id, meter_id, action, from_seq, "
    "to_char(valid_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
    "ceil(extract(epoch FROM valid_until - clock_timestamp()))::bigint, attempts "
    "FROM prepaid_internal.claim_commands($1::int, $2::interval, $3::interval)";

/* Publish one claimed command; it is marked sent already (and will be re-sent). */
static void
outbox_publish(struct outbox *ob, PGresult *res, int row)
{
	const char *id = PQgetvalue(res, row, 0);
	const char *meter = PQgetvalue(res, row, 1);
	const char *action = PQgetvalue(res, row, 2);
	long long left = strtoll(PQgetvalue(res, row, 5), NULL, 10);
	struct meter_cmd cmd;
	char *body, *topic;
	int mid;

	memset(&cmd, 0, sizeof cmd);
	snprintf(cmd.id, sizeof cmd.id, "%s", id);
	snprintf(cmd.action, sizeof cmd.action, "%s", action);
	cmd.has_valid_until = payload_parse_rfc3339(PQgetvalue(res, row, 4), &cmd.valid_until_us);
	if (!PQgetisnull(res, row, 3)) {
		cmd.has_from_seq = true;
		cmd.from_seq = strtoll(PQgetvalue(res, row, 3), NULL, 10);
	}
	body = cmd.has_valid_until ? payload_encode_cmd(&cmd) : NULL;
	xasprintf(&topic, "%s/%s/cmd", ob->conf->mqtt_topic_prefix, meter);
	if (left < 1)
		left = 1;
	if (body &&
	    mqtt_publish(ob->mqtt, topic, body, strlen(body), 1, (unsigned)left, &mid) == 0) {
		metrics.commands_published++;
		log_info("command %s: %s sent to meter %s (attempt %s, valid %llds more)", id,
		    action, meter, PQgetvalue(res, row, 6), left);
	} else
		log_warn("command %s: %s for meter %s not published (%s); it will be re-sent", id,
		    action, meter, body ? "broker away" : "cannot encode it");
	free(body);
	free(topic);
}

static void
outbox_claimed(void *arg, PGresult *res, const char *err)
{
	struct outbox *ob = arg;
	int i, n = 0;

	ob->claiming = false;
	if (err != NULL) {
		log_warn("outbox: claiming commands failed: %s", err);
	} else {
		n = PQntuples(res);
		for (i = 0; i < n; i++)
			outbox_publish(ob, res, i);
	}
	/* A full page means more may be due; a wake-up during the claim too. */
	if (ob->again || (err == NULL && n >= ob->conf->commands_claim_batch)) {
		ob->again = false;
		outbox_claim(ob);
	}
}

static void
outbox_claim(struct outbox *ob)
{
	char limit[16], initial[32], max[32];
	const char *params[3] = {limit, initial, max};

	if (!ob->ready || !mqtt_connected(ob->mqtt))
		return;
	if (ob->claiming) {
		ob->again = true;
		return;
	}
	snprintf(limit, sizeof limit, "%d", ob->conf->commands_claim_batch);
	snprintf(initial, sizeof initial, "%d milliseconds", ob->conf->commands_retry_initial_ms);
	snprintf(max, sizeof max, "%d milliseconds", ob->conf->commands_retry_max_ms);
	ob->claiming = true;
	metrics.command_claims++;
	pgconn_query(ob->pc, outbox_claim_sql, 3, params, outbox_claimed, ob);
}

static void
outbox_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	outbox_claim(arg);
}

static void
outbox_arm_poll(struct outbox *ob)
{
	struct timeval tv;

	tv.tv_sec = ob->conf->commands_poll_interval_ms / 1000;
	tv.tv_usec = (ob->conf->commands_poll_interval_ms % 1000) * 1000;
	event_del(ob->poll_timer);
	event_add(ob->poll_timer, &tv);
}

struct outbox *
outbox_new(struct event_base *base, struct pgconn *pc, struct mqtt *mqtt, const struct conf *conf)
{
	struct outbox *ob = xcalloc(1, sizeof *ob);

	ob->base = base;
	ob->pc = pc;
	ob->mqtt = mqtt;
	ob->conf = conf;
	ob->poll_timer = event_new(base, -1, EV_PERSIST, outbox_poll_cb, ob);
	outbox_arm_poll(ob);
	return ob;
}

void
outbox_free(struct outbox *ob)
{
	if (ob == NULL)
		return;
	event_free(ob->poll_timer);
	free(ob);
}

void
outbox_set_conf(struct outbox *ob, const struct conf *conf)
{
	ob->conf = conf;
	outbox_arm_poll(ob);
}

void
outbox_set_ready(struct outbox *ob, bool ready)
{
	ob->ready = ready;
	if (!ready) {
		ob->claiming = false; /* the query failed with the connection */
		return;
	}
	/* Notifications sent while we were away are gone: LISTEN, then re-read. */
	pgconn_query_front(ob->pc, "LISTEN prepaid_commands", 0, NULL, NULL, NULL);
	outbox_claim(ob);
}

void
outbox_kick(struct outbox *ob)
{
	outbox_claim(ob);
}
