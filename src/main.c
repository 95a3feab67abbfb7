/*
 * main.c: prepaidd's start-up, signals and the wiring between modules.
 *
 * Start-up order: options; --migrate=conninfo (stops here, the file is not
 * read); configuration (-n stops here); --migrate (stops here); the event
 * loop; signals; the HTTP listener; the payment callbacks (with a pool of
 * [payments] connections PostgreSQL connections of their own); three
 * PostgreSQL connections ("ingest" for reading batches; "control" for the
 * schema check, LISTEN prepaid_alerts and prepaid_messages, the message
 * dispatcher, the ladder and partition upkeep; "commands" for the command
 * outbox and LISTEN prepaid_commands); the journal (checked; what it holds
 * is replayed once PostgreSQL is usable, before anything new is read from
 * the broker); the broker link; then the loop runs until SIGTERM/SIGINT.
 * READY is told to systemd once the schema is verified, and both
 * PostgreSQL and the broker are connected.
 *
 * Errors: start-up failures exit 1 with a message on stderr; at run time a
 * failure of one connection or one message never stops the daemon. The
 * one exception is a database whose schema is older than this binary: the
 * daemon exits 1 and says to run --migrate.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <mosquitto.h>
#include <openssl/crypto.h>

#include "conf.h"
#include "httpd.h"
#include "ingest.h"
#include "ingestpool.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "migrate.h"
#include "mqtt.h"
#include "ladder.h"
#include "notify.h"
#include "outbox.h"
#include "payments.h"
#include "payout.h"
#include "paysite.h"
#include "pgconn.h"
#include "sdnotify.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define DEFAULT_CONF SYSCONFDIR "/prepaidd.conf"
/* How long a graceful stop waits for the last batch. */
#define STOP_GRACE_S 15
/* Partition upkeep interval. */
#define PARTITIONS_EVERY_S 3600

struct daemon {
	struct event_base *base;
	struct conf *conf;
	struct pgconn *pg_ingest, *pg_control, *pg_commands;
	struct mqtt *mqtt;
	struct ingestpool *ingest;
	struct outbox *outbox;
	struct notify *notify;
	struct ladder *ladder;
	struct httpd *httpd;
	struct payments *payments;
	struct payout *payout;
	struct paysite *paysite;
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *tick, *watchdog, *partitions, *stop_timer;
	bool schema_ok, ingest_up, control_up, commands_up, mqtt_up;
	bool ready_sent, stopping;
	int exit_code;
	struct event *lag_probe;
	int64_t lag_expected_us;
	uint64_t last_inserted;

	/* journal (NULL when [journal] enabled is off) */
	struct journal *jnl;
	struct event *jnl_sync, *jnl_replay;
	bool replaying; /* records of the last run still to replay */
	bool jnl_high; /* past its high-water mark: reading paused */
	bool ingest_full; /* the ingest queue asked to pause */
	bool paused; /* reading from the broker paused */
	bool session_noted; /* the state file says we have a session */
	bool resend_pending; /* session lost: resends not yet requested */
};

static void
usage(FILE *f)
{
	fprintf(f, "usage: prepaidd [-nv] [-c file] [--migrate[=conninfo]] [--version]\n"
	           "  -c file     configuration file (default " DEFAULT_CONF ")\n"
	           "  -n          check the configuration, print \"configuration OK\" and exit\n"
	           "  -v          more logging (debug)\n"
	           "  --migrate   apply pending database migrations and exit; with a\n"
	           "              conninfo, connect with it (the file is not read)\n"
	           "  --version   print the versions of prepaidd and its libraries\n");
}

static void
print_version(void)
{
	int pq = PQlibVersion();
	int maj, min, rev;

	mosquitto_lib_version(&maj, &min, &rev);
	printf("prepaidd %s (schema version %d)\n", PACKAGE_VERSION, migrate_latest());
	printf("  libevent %s\n", event_get_version());
	printf("  libpq %d.%d\n", pq / 10000, pq % 10000);
	printf("  libcurl %s\n", curl_version_info(CURLVERSION_NOW)->version);
	printf("  jansson %s\n", jansson_version_str());
	printf("  libmosquitto %d.%d.%d\n", maj, min, rev);
	printf("  %s\n", OpenSSL_version(OPENSSL_VERSION));
#ifdef HAVE_SYSTEMD
	printf("  libsystemd (sd_notify) enabled\n");
#else
	printf("  libsystemd not built in\n");
#endif
}

static void
apply_log_level(const struct conf *c, int verbose)
{
	enum log_level lvl = LOG_LVL_INFO;

	if (strcmp(c->log_level, "error") == 0)
		lvl = LOG_LVL_ERROR;
	else if (strcmp(c->log_level, "warning") == 0)
		lvl = LOG_LVL_WARN;
	else if (strcmp(c->log_level, "debug") == 0)
		lvl = LOG_LVL_DEBUG;
	if (verbose)
		lvl = LOG_LVL_DEBUG;
	log_set_level(lvl);
}

static int verbose_flag;

/* ------------------------------------------------------------ health */

static bool
daemon_healthy(void *arg, char *why, size_t whylen)
{
	struct daemon *d = arg;

	if (!d->schema_ok || !d->control_up || !d->ingest_up || !d->commands_up)
		snprintf(why, whylen, "PostgreSQL not connected");
	else if (!d->mqtt_up)
		snprintf(why, whylen, "broker not connected");
	else if (d->stopping)
		snprintf(why, whylen, "stopping");
	else
		return true;
	return false;
}

/* Recompute what depends on the links: readiness, ingest, the outbox, READY. */
static void
daemon_links_changed(struct daemon *d)
{
	bool pg = d->schema_ok && d->ingest_up && d->control_up && d->commands_up;

	metrics.pg_up = pg;
	metrics.mqtt_up = d->mqtt_up;
	ingestpool_set_ready(d->ingest, d->schema_ok && d->ingest_up);
	if (pg && d->mqtt_up && !d->ready_sent && !d->stopping) {
		d->ready_sent = true;
		sdnotify_ready();
		log_info("ready: connected to PostgreSQL and the broker");
	}
}

/* ------------------------------------------------------- PostgreSQL */

static void
partitions_done(void *arg, PGresult *res, const char *err)
{
	UNUSED(arg);
	if (err != NULL)
		log_warn("partitions: upkeep failed: %s", err);
	else if (res && PQntuples(res) == 1 && atoi(PQgetvalue(res, 0, 0)) > 0)
		log_info("partitions: created %s new reading partition(s)", PQgetvalue(res, 0, 0));
}

static void
partitions_upkeep(struct daemon *d)
{
	char ahead[16];
	const char *params[1] = {ahead};

	snprintf(ahead, sizeof ahead, "%d", d->conf->ingest_partitions_ahead);
	pgconn_query(d->pg_control, "SELECT prepaid_internal.ensure_partitions($1::int)", 1, params,
	    partitions_done, d);
}

static void
partitions_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	UNUSED(fd);
	UNUSED(what);
	if (d->control_up && d->schema_ok)
		partitions_upkeep(d);
}

static void
daemon_fatal_stop(struct daemon *d, int code)
{
	d->exit_code = code;
	event_base_loopbreak(d->base);
}

static void session_resend(struct daemon *d);

static void
schema_checked(void *arg, PGresult *res, const char *err)
{
	struct daemon *d = arg;
	int have = 0, want = migrate_latest();

	if (res == NULL)
		return; /* connection lost; checked again on reconnect */
	if (err != NULL) {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		/* 42P01 undefined_table, 3F000 invalid_schema_name: never migrated. */
		if (state == NULL || (strcmp(state, "42P01") != 0 && strcmp(state, "3F000") != 0)) {
			log_error("database: cannot read the schema version: %s", err);
			return;
		}
	} else if (PQntuples(res) == 1)
		have = atoi(PQgetvalue(res, 0, 0));
	if (have < want) {
		log_error("database: schema version %d is older than this prepaidd needs (%d): "
		          "run `prepaidd -c %s --migrate` first",
		    have, want, d->conf->path);
		daemon_fatal_stop(d, 1);
		return;
	}
	if (have > want)
		log_warn(
		    "database: schema version %d is newer than this prepaidd (%d)", have, want);
	if (err == NULL &&
	    (strcmp(PQgetvalue(res, 0, 2), "t") == 0 || strcmp(PQgetvalue(res, 0, 3), "t") == 0))
		log_warn("database: prepaidd connects as \"%s\", %s: it could change the ledger, "
		         "readings and payments behind the triggers; connect as a login role "
		         "holding only prepaid_daemon (see prepaidd(8), ROLES)",
		    PQgetvalue(res, 0, 4),
		    strcmp(PQgetvalue(res, 0, 2), "t") == 0 ? "a superuser"
		                                            : "a member of prepaid_owner");
	if (err == NULL &&
	    (PQgetisnull(res, 0, 1) || strcmp(PQgetvalue(res, 0, 1), sql_code_hash) != 0))
		log_warn("database: its functions and views are not this prepaidd's (sql/*.sql, "
		         "sha256 %.12s): run `prepaidd -c %s --migrate`",
		    sql_code_hash, d->conf->path);
	if (!d->schema_ok)
		log_info("database: schema version %d", have);
	d->schema_ok = true;
	d->control_up = true;
	metrics.pg_reconnects++;
	partitions_upkeep(d);
	pgconn_query_front(d->pg_control, "LISTEN prepaid_alerts", 0, NULL, NULL, NULL);
	if (d->commands_up)
		outbox_set_ready(d->outbox, true);
	notify_set_ready(d->notify, true);
	ladder_set_ready(d->ladder, true);
	daemon_links_changed(d);
	session_resend(d);
}

/* ---------------------------------------------------- session loss */

static void
session_resend_done(void *arg, PGresult *res, const char *err)
{
	struct daemon *d = arg;

	if (res == NULL) {
		d->resend_pending = true; /* connection lost: again on reconnect */
		return;
	}
	if (err != NULL) {
		log_error("mqtt: session lost, but requesting resends failed: %s", err);
		return;
	}
	log_warn("mqtt: session lost: %s meter(s) seen in the last %d h asked to resend, "
	         "%d a second",
	    PQgetvalue(res, 0, 0), d->conf->mqtt_session_resend_hours,
	    d->conf->mqtt_session_resend_rate);
}

/* Ask the meters to resend what the broker lost (once PostgreSQL is up). */
static void
session_resend(struct daemon *d)
{
	char hours[16], rate[16];
	const char *params[3] = {d->conf->mqtt_client_id, hours, rate};

	if (!d->resend_pending || !d->control_up || !d->schema_ok)
		return;
	d->resend_pending = false;
	snprintf(hours, sizeof hours, "%d", d->conf->mqtt_session_resend_hours);
	snprintf(rate, sizeof rate, "%d", d->conf->mqtt_session_resend_rate);
	pgconn_query(d->pg_control,
	    "SELECT prepaid_internal.broker_session_lost($1::text, $2::int, $3::int)", 3, params,
	    session_resend_done, d);
}

static void
control_connected(void *arg, struct pgconn *pc)
{
	struct daemon *d = arg;

	pgconn_query_front(pc, migrate_version_sql, 0, NULL, schema_checked, d);
}

static void
control_lost(void *arg, struct pgconn *pc, const char *why)
{
	struct daemon *d = arg;

	UNUSED(pc);
	UNUSED(why);
	d->control_up = false;
	notify_set_ready(d->notify, false);
	ladder_set_ready(d->ladder, false);
	daemon_links_changed(d);
}

/*
 * The command outbox has a connection of its own, so that an arm or a trip
 * is claimed at once rather than behind a ladder sweep or a message claim.
 * Its commits need not wait for the disk: a claim lost in a crash is
 * claimed and published again, and a meter ignores a command id it has
 * executed already.
 */
static void
commands_connected(void *arg, struct pgconn *pc)
{
	struct daemon *d = arg;

	pgconn_query_front(pc, "SET synchronous_commit = off", 0, NULL, NULL, NULL);
	d->commands_up = true;
	if (d->schema_ok)
		outbox_set_ready(d->outbox, true);
	daemon_links_changed(d);
}

static void
commands_lost(void *arg, struct pgconn *pc, const char *why)
{
	struct daemon *d = arg;

	UNUSED(pc);
	UNUSED(why);
	d->commands_up = false;
	outbox_set_ready(d->outbox, false);
	daemon_links_changed(d);
}

static void
commands_notified(void *arg, const char *channel, const char *payload)
{
	struct daemon *d = arg;

	UNUSED(payload);
	if (strcmp(channel, "prepaid_commands") == 0)
		outbox_kick(d->outbox);
}

/* A payment's commit queued an arm or a message without a NOTIFY. */
static void
payments_woke_outbox(void *arg)
{
	struct daemon *d = arg;

	outbox_kick(d->outbox);
}

static void
payments_woke_notify(void *arg)
{
	struct daemon *d = arg;

	notify_kick(d->notify);
}

static void
control_notified(void *arg, const char *channel, const char *payload)
{
	struct daemon *d = arg;

	if (strcmp(channel, "prepaid_messages") == 0)
		notify_kick(d->notify);
	else if (strcmp(channel, "prepaid_alerts") == 0) {
		metrics.alerts++;
		log_error("ALERT: %s", payload);
	}
}

static void
ingest_connected(void *arg, struct pgconn *pc)
{
	struct daemon *d = arg;

	UNUSED(pc);
	d->ingest_up = true;
	daemon_links_changed(d);
}

static void
ingest_lost(void *arg, struct pgconn *pc, const char *why)
{
	struct daemon *d = arg;

	UNUSED(pc);
	UNUSED(why);
	d->ingest_up = false;
	daemon_links_changed(d);
}

/* ------------------------------------------------------------- MQTT */

/* The journal's state file: which session at which broker we had. */
static void
session_key(const struct conf *c, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s@%s:%d", c->mqtt_client_id, c->mqtt_host, c->mqtt_port);
}

static void
mqtt_session_lost_cb(void *arg)
{
	struct daemon *d = arg;

	metrics.mqtt_session_lost++;
	d->resend_pending = true;
	session_resend(d);
}

static void
mqtt_connected_cb(void *arg)
{
	struct daemon *d = arg;
	char key[512];

	if (d->jnl != NULL && !d->session_noted) {
		session_key(d->conf, key, sizeof key);
		if (journal_state_set(d->jnl, "session", key) != 0)
			log_warn("journal: cannot record the broker session in %s: %s",
			    d->conf->journal_directory, strerror(errno));
		d->session_noted = true;
	}
	d->mqtt_up = true;
	metrics.mqtt_reconnects++;
	daemon_links_changed(d);
	outbox_kick(d->outbox);
}

static void
mqtt_lost_cb(void *arg, const char *why)
{
	struct daemon *d = arg;

	UNUSED(why);
	d->mqtt_up = false;
	daemon_links_changed(d);
}

/* ----------------------------------------------------------- journal */

static void daemon_update_pause(struct daemon *d);

static void
journal_failed(struct daemon *d, const char *err)
{
	log_error("%s: stopping; the next start replays what the journal holds", err);
	daemon_fatal_stop(d, 1);
}

static void
journal_sync_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	char err[512];

	UNUSED(fd);
	UNUSED(what);
	if (journal_sync(d->jnl, err, sizeof err) != 0)
		journal_failed(d, err);
}

/* Past 3/4 of its bound reading pauses; below 1/2 it resumes. */
static void
journal_check_high(struct daemon *d)
{
	uint64_t bytes = journal_bytes(d->jnl), max = journal_max_bytes(d->jnl);

	if (!d->jnl_high && bytes >= max / 4 * 3) {
		d->jnl_high = true;
		metrics.journal_full++;
		log_error("journal: %llu of %llu bytes used (%s): reading from the broker paused "
		          "until batches commit",
		    (unsigned long long)bytes, (unsigned long long)max, d->conf->journal_directory);
		daemon_update_pause(d);
	} else if (d->jnl_high && bytes <= max / 2) {
		d->jnl_high = false;
		log_info("journal: %llu bytes used: reading from the broker again",
		    (unsigned long long)bytes);
		daemon_update_pause(d);
	}
}

static void
replay_one(void *arg, uint64_t seq, int64_t received_us, const char *topic, const void *payload,
    size_t len)
{
	struct daemon *d = arg;

	ingestpool_message(d->ingest, seq, received_us, topic, payload, len);
}

/* Every 10 ms while replaying: feed the ingest queue up to half its bound. */
static void
journal_replay_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	size_t half = (size_t)d->conf->ingest_queue_bound / 2, depth;

	UNUSED(fd);
	UNUSED(what);
	if (d->stopping)
		return;
	if (d->schema_ok && d->ingest_up && (depth = ingestpool_depth(d->ingest)) < half)
		journal_replay(d->jnl, half - depth, replay_one, d);
	if (!journal_replaying(d->jnl)) {
		event_del(d->jnl_replay);
		d->replaying = false;
		log_info("journal: replayed %llu record(s) of the last run",
		    (unsigned long long)metrics.journal_replayed);
		daemon_update_pause(d);
	}
}

/* Read from the broker unless something asks to pause; sync before resuming. */
static void
daemon_update_pause(struct daemon *d)
{
	bool pause = d->ingest_full || d->stopping || d->replaying || d->jnl_high;
	char err[512];

	if (pause == d->paused)
		return;
	if (!pause && d->jnl != NULL && journal_dirty(d->jnl) &&
	    journal_sync(d->jnl, err, sizeof err) != 0) {
		journal_failed(d, err);
		return;
	}
	d->paused = pause;
	mqtt_pause(d->mqtt, pause);
}

static void
mqtt_message_cb(void *arg, const char *topic, const void *payload, size_t len)
{
	struct daemon *d = arg;
	int64_t now = now_wall_us();
	uint64_t seq = 0;
	char err[512];
	int rc;

	if (d->jnl != NULL) {
		/* Durable against kill -9 before it is queued; synced within sync_ms. */
		rc = journal_append(d->jnl, now, topic, payload, len, &seq, err, sizeof err);
		if (rc < 0) {
			journal_failed(d, err);
		} else if (rc > 0) {
			metrics.journal_overflow++;
			log_ratelimited(LOG_LVL_ERROR, "journal-full", 10,
			    "journal full (%s): a message is queued without a journal record; "
			    "a crash now would lose it",
			    d->conf->journal_directory);
		} else {
			if (!evtimer_pending(d->jnl_sync, NULL)) {
				struct timeval tv = {d->conf->journal_sync_ms / 1000,
				    (d->conf->journal_sync_ms % 1000) * 1000};

				evtimer_add(d->jnl_sync, &tv);
			}
			if (!d->jnl_high)
				journal_check_high(d);
		}
	}
	ingestpool_message(d->ingest, seq, now, topic, payload, len);
}

static void
ingest_pressure_cb(void *arg, bool full)
{
	struct daemon *d = arg;

	d->ingest_full = full;
	if (d->jnl != NULL)
		journal_check_high(d);
	daemon_update_pause(d);
}

/* ------------------------------------------------------------ timers */

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	int64_t now = now_mono_us();
	uint64_t ins = metrics.readings_inserted;

	UNUSED(fd);
	UNUSED(what);
	if (now / 1000000 % 5 == 0)
		sdnotify_status("%s; %llu readings/s; queue %zu; PostgreSQL %s; broker %s",
		    d->stopping ? "stopping" : "running",
		    (unsigned long long)(ins - d->last_inserted), ingestpool_depth(d->ingest),
		    metrics.pg_up ? "up" : "down", d->mqtt_up ? "up" : "down");
	d->last_inserted = ins;
	if (d->jnl != NULL)
		journal_check_high(d);
	if (d->stopping && ingestpool_idle(d->ingest) && payments_pending(d->payments) == 0) {
		log_info("stopped: all received readings and payments are written");
		event_base_loopexit(d->base, NULL);
	}
}

/* Every 10 ms: how late the loop runs a timer (the loop's lag). */
static void
lag_probe_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;
	int64_t now = now_mono_us();

	UNUSED(fd);
	UNUSED(what);
	metrics_lag(now - d->lag_expected_us);
	d->lag_expected_us = now + 10000;
}

static void
watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	sdnotify_watchdog();
}

static void
stop_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct daemon *d = arg;

	UNUSED(fd);
	UNUSED(what);
	log_error("stop: PostgreSQL did not take the last %zu queued items within %d s; "
	          "exiting without them (the meters' next readings carry the registers)",
	    ingestpool_depth(d->ingest), STOP_GRACE_S);
	d->exit_code = 1;
	event_base_loopexit(d->base, NULL);
}

/* ----------------------------------------------------------- signals */

static void
daemon_stop(struct daemon *d)
{
	struct timeval tv = {STOP_GRACE_S, 0};

	if (d->stopping) {
		log_warn("second stop signal: exiting now");
		exit(1);
	}
	d->stopping = true;
	sdnotify_stopping();
	log_info("stopping: no more reads from the broker; writing what is queued");
	daemon_update_pause(d);
	ingestpool_drain(d->ingest);
	payments_stop(d->payments);
	paysite_stop(d->paysite);
	if (ingestpool_idle(d->ingest) && payments_pending(d->payments) == 0) {
		event_base_loopexit(d->base, NULL);
		return;
	}
	evtimer_add(d->stop_timer, &tv);
}

/* Secrets found readable by others: accepted, but said at every load. */
static void
daemon_conf_warnings(const struct conf *c)
{
	int i;

	for (i = 0; i < c->nwarnings; i++)
		log_warn("%s", c->warnings[i]);
}

static void
daemon_reload(struct daemon *d)
{
	char err[512], what[64];
	struct conf *nc;

	sdnotify_reloading();
	nc = conf_load(d->conf->path, err, sizeof err);
	if (nc == NULL) {
		log_error("reload failed: %s", err);
		log_error("reload: keeping the running configuration");
		sdnotify_ready();
		return;
	}
	daemon_conf_warnings(nc);
	if (conf_needs_restart(d->conf, nc, what, sizeof what))
		log_warn("reload: %s (and possibly other keys) changed; such keys take effect "
		         "only after a restart",
		    what);
	conf_keep_fixed(nc, d->conf);
	if (d->httpd != NULL)
		httpd_reconfigure(d->httpd, nc);
	payments_reconfigure(d->payments, nc);
	payout_reconfigure(d->payout, nc);
	paysite_reconfigure(d->paysite, nc);
	ingestpool_set_conf(d->ingest, nc);
	outbox_set_conf(d->outbox, nc);
	notify_set_conf(d->notify, nc);
	pgconn_set_conninfo(d->pg_ingest, nc->database_conninfo);
	pgconn_set_conninfo(d->pg_control, nc->database_conninfo);
	pgconn_set_conninfo(d->pg_commands, nc->database_conninfo);
	apply_log_level(nc, verbose_flag);
	conf_free(d->conf);
	d->conf = nc;
	log_info("reload: configuration %s applied", nc->path);
	sdnotify_ready();
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct daemon *d = arg;

	UNUSED(what);
	if (sig == SIGHUP)
		daemon_reload(d);
	else
		daemon_stop(d);
}

/* -------------------------------------------------------------- main */

static int
daemon_run(struct conf *conf)
{
	struct daemon dd, *d = &dd;
	struct pgconn_handlers ph;
	struct mqtt_handlers mh;
	struct ingest_hooks ih;
	struct timeval one = {1, 0}, part = {PARTITIONS_EVERY_S, 0};
	char err[512];
	uint64_t wd;

	memset(d, 0, sizeof *d);
	d->conf = conf;
	metrics.started_wall_us = now_wall_us();
	signal(SIGPIPE, SIG_IGN);
	d->base = event_base_new();
	if (d->base == NULL) {
		fprintf(stderr, "prepaidd: cannot create the event loop\n");
		return 1;
	}
	d->sig_term = evsignal_new(d->base, SIGTERM, signal_cb, d);
	d->sig_int = evsignal_new(d->base, SIGINT, signal_cb, d);
	d->sig_hup = evsignal_new(d->base, SIGHUP, signal_cb, d);
	evsignal_add(d->sig_term, NULL);
	evsignal_add(d->sig_int, NULL);
	evsignal_add(d->sig_hup, NULL);

	if (conf->http_enabled) {
		d->httpd = httpd_new(d->base, conf, daemon_healthy, d, err, sizeof err);
		if (d->httpd == NULL) {
			fprintf(stderr, "prepaidd: %s\n", err);
			return 1;
		}
	}

	d->payments = payments_new(d->base, d->httpd, conf, err, sizeof err);
	if (d->payments == NULL) {
		fprintf(stderr, "prepaidd: %s\n", err);
		return 1;
	}
	d->payout = payout_new(d->base, conf, err, sizeof err);
	if (d->payout == NULL) {
		fprintf(stderr, "prepaidd: %s\n", err);
		return 1;
	}
	/* The pay page; payout makes its orders at the providers (with no
	 * merchant key at all, paypage.stub_handoff_url stands in). */
	d->paysite = paysite_new(d->base, d->httpd, conf, err, sizeof err);
	if (d->paysite == NULL) {
		fprintf(stderr, "prepaidd: %s\n", err);
		return 1;
	}
	paysite_set_provider(
	    d->paysite, &(struct paypage_provider){payout_paypage_create, d->payout});

	memset(&ph, 0, sizeof ph);
	ph.on_connect = ingest_connected;
	ph.on_disconnect = ingest_lost;
	ph.arg = d;
	d->pg_ingest = pgconn_new(
	    d->base, "ingest", conf->database_conninfo, conf->database_reconnect_max_ms, &ph);
	ph.on_connect = control_connected;
	ph.on_disconnect = control_lost;
	ph.on_notify = control_notified;
	d->pg_control = pgconn_new(
	    d->base, "control", conf->database_conninfo, conf->database_reconnect_max_ms, &ph);
	ph.on_connect = commands_connected;
	ph.on_disconnect = commands_lost;
	ph.on_notify = commands_notified;
	d->pg_commands = pgconn_new(
	    d->base, "commands", conf->database_conninfo, conf->database_reconnect_max_ms, &ph);

	memset(&ih, 0, sizeof ih);
	ih.on_pressure = ingest_pressure_cb;
	ih.arg = d;
	d->ingest = ingestpool_new(d->base, d->pg_ingest, conf, &ih);

	if (conf->journal_enabled) {
		d->jnl = journal_open(conf->journal_directory, (uint64_t)conf->journal_max_mb << 20,
		    0, err, sizeof err);
		if (d->jnl == NULL) {
			fprintf(stderr, "prepaidd: %s\n", err);
			return 1;
		}
		metrics.journal_max_bytes = (int64_t)journal_max_bytes(d->jnl);
		ingestpool_set_journal(d->ingest, d->jnl);
		d->jnl_sync = evtimer_new(d->base, journal_sync_cb, d);
		d->jnl_replay = event_new(d->base, -1, EV_PERSIST, journal_replay_cb, d);
		d->replaying = journal_replaying(d->jnl);
		if (d->replaying) {
			struct timeval ten = {0, 10000};

			event_add(d->jnl_replay, &ten);
		}
	} else
		log_warn("journal: off ([journal] enabled = false): messages received but not yet "
		         "written are lost if the daemon crashes");

	memset(&mh, 0, sizeof mh);
	mh.on_connect = mqtt_connected_cb;
	mh.on_disconnect = mqtt_lost_cb;
	mh.on_message = mqtt_message_cb;
	mh.on_session_lost = mqtt_session_lost_cb;
	mh.arg = d;
	d->mqtt = mqtt_new(d->base, conf, &mh, err, sizeof err);
	if (d->mqtt == NULL) {
		fprintf(stderr, "prepaidd: %s\n", err);
		return 1;
	}
	if (d->jnl != NULL) {
		char key[512];

		session_key(conf, key, sizeof key);
		d->session_noted = journal_state_is(d->jnl, "session", key);
		mqtt_expect_session(d->mqtt, d->session_noted);
	}
	/* Nothing is read from the broker until PostgreSQL is usable. */
	d->ingest_full = true;
	d->paused = true;
	mqtt_pause(d->mqtt, true);
	d->outbox = outbox_new(d->base, d->pg_commands, d->mqtt, conf);
	d->notify = notify_new(d->base, d->pg_control, conf);
	{
		struct payments_hooks pk = {payments_woke_outbox, payments_woke_notify, d};

		payments_set_hooks(d->payments, &pk);
	}
	d->ladder = ladder_new(d->base, d->pg_control);

	{
		struct timeval ten = {0, 10000};

		d->lag_probe = event_new(d->base, -1, EV_PERSIST, lag_probe_cb, d);
		d->lag_expected_us = now_mono_us() + 10000;
		event_add(d->lag_probe, &ten);
	}
	d->tick = event_new(d->base, -1, EV_PERSIST, tick_cb, d);
	event_add(d->tick, &one);
	d->partitions = event_new(d->base, -1, EV_PERSIST, partitions_cb, d);
	event_add(d->partitions, &part);
	d->stop_timer = evtimer_new(d->base, stop_timeout_cb, d);
	if ((wd = sdnotify_watchdog_usec()) > 0) {
		struct timeval half = {(time_t)(wd / 2000000), (suseconds_t)(wd / 2 % 1000000)};

		d->watchdog = event_new(d->base, -1, EV_PERSIST, watchdog_cb, d);
		event_add(d->watchdog, &half);
	}

	log_info("prepaidd %s starting (config %s, broker %s:%d, topics %s/+/reading|event|ack)",
	    PACKAGE_VERSION, conf->path, conf->mqtt_host, conf->mqtt_port, conf->mqtt_topic_prefix);
	daemon_conf_warnings(conf);
	event_base_dispatch(d->base);

	if (d->exit_code == 0)
		log_info("exiting");
	mqtt_disconnect(d->mqtt);
	payments_free(d->payments);
	/* payout first: its calls stop, and the pay page orders still
	 * waiting for one get their answer from paysite_free. */
	/* payout first: its calls stop, and the pay page's requests still
	 * waiting for an order get the busy page from paysite_free. */
	payout_free(d->payout);
	paysite_free(d->paysite);
	ladder_free(d->ladder);
	notify_free(d->notify);
	outbox_free(d->outbox);
	mqtt_free(d->mqtt);
	ingestpool_free(d->ingest);
	if (d->jnl_sync != NULL)
		event_free(d->jnl_sync);
	if (d->jnl_replay != NULL)
		event_free(d->jnl_replay);
	journal_close(d->jnl); /* syncs; what did not commit stays for the next start */
	pgconn_free(d->pg_ingest);
	pgconn_free(d->pg_control);
	pgconn_free(d->pg_commands);
	httpd_free(d->httpd);
	event_free(d->sig_term);
	event_free(d->sig_int);
	event_free(d->sig_hup);
	event_free(d->tick);
	event_free(d->lag_probe);
	event_free(d->partitions);
	event_free(d->stop_timer);
	if (d->watchdog)
		event_free(d->watchdog);
	event_base_free(d->base);
	conf_free(d->conf);
	return d->exit_code;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"migrate", optional_argument, NULL, 'M'},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *path = DEFAULT_CONF, *migrate_conninfo = NULL;
	bool check = false, migrate = false;
	struct conf *conf;
	char err[512];
	int ch, rc, i;

	while ((ch = getopt_long(argc, argv, "c:nvh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 'n':
			check = true;
			break;
		case 'v':
			verbose_flag++;
			break;
		case 'M':
			migrate = true;
			migrate_conninfo = optarg;
			break;
		case 'V':
			print_version();
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	/* --migrate=CONNINFO: the configuration file is not read at all. */
	if (migrate && migrate_conninfo != NULL && !check)
		return migrate_run(migrate_conninfo) == 0 ? 0 : 1;
	conf = conf_load(path, err, sizeof err);
	if (conf == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (check) {
		/* The start loads the payment keys itself (payments_new). */
		if (payments_check(conf, err, sizeof err) != 0 ||
		    payout_check(conf, err, sizeof err) != 0) {
			fprintf(stderr, "%s\n", err);
			conf_free(conf);
			return 1;
		}
		for (i = 0; i < conf->nwarnings; i++)
			fprintf(stderr, "warning: %s\n", conf->warnings[i]);
		printf("configuration OK\n");
		conf_free(conf);
		return 0;
	}
	if (migrate) {
		rc = migrate_run(conf->database_conninfo) == 0 ? 0 : 1;
		conf_free(conf);
		return rc;
	}
	apply_log_level(conf, verbose_flag);
	log_set_timestamps(getenv("INVOCATION_ID") == NULL);
	return daemon_run(conf);
}
