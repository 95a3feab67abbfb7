/*
 * mqtt.c: the broker link (see mqtt.h). libmosquitto 2.0 without its thread:
 * we watch mosquitto_socket() on the libevent loop, call the library's
 * loop_read/loop_write/loop_misc, and do the reconnecting ourselves.
 *
 * Facts about libmosquitto 2.0.11 this file relies on (read in its source):
 * - mosquitto_loop_read() ignores max_packets: it reads as many packets as
 *   it has QoS>0 messages in flight (at least one), and stops early when a
 *   read() says EAGAIN. It reads a packet with exact-size read() calls, so
 *   nothing waits in a user-space buffer afterwards, except decrypted TLS
 *   records, which it drains itself (SSL_pending). We call it repeatedly
 *   while each call delivers a message, up to a bound per event: a call
 *   that delivers none has met EAGAIN, a partial packet or another kind of
 *   packet, and the (level-triggered) read event calls us again if bytes
 *   remain. (Asking the kernel with FIONREAD instead cost a system call
 *   per message.)
 * - Every way the link can end (read/write error, keepalive timeout in
 *   loop_misc, DISCONNECT from the broker, our own DISCONNECT) closes the
 *   socket and then calls the disconnect callback; mqtt_link_down() is the
 *   one place that reacts. The library never reconnects by itself here.
 * - mosquitto_connect_bind_async()/mosquitto_reconnect_async() connect
 *   without blocking (name resolution still blocks: use an address or
 *   /etc/hosts for the broker). Only mosquitto_connect_bind_v5(), which
 *   blocks, takes CONNECT properties; it stores them before validating the
 *   port, and every later (re)connect sends the stored ones. We use that to
 *   set the session expiry interval, then connect asynchronously.
 * - Pausing stops reading, so a PINGRESP is not seen either: the library
 *   drops the link itself after 1 to 2 keepalive intervals of pause (the
 *   broker keeps the session and resends unacknowledged messages). Pauses
 *   are meant to last seconds.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "log.h"
#include "mqtt.h"

#define MQTT_BACKOFF_MIN_MS 250
#define MQTT_CONNECT_TIMEOUT_US (10 * 1000000LL)
#define MQTT_SESSION_EXPIRY_S (7 * 24 * 3600)
#define MQTT_INFLIGHT_MAX 1000
#define MQTT_READ_BURST 100 /* loop_read calls per read event */
#define MQTT_NSUBS 3

struct mqtt {
	struct event_base *base;
	struct mosquitto *mosq;
	struct mqtt_handlers h;
	char *host;
	int port;
	int keepalive;
	int qos;
	int reconnect_max_ms;
	char *subs[MQTT_NSUBS];

	int fd; /* socket being watched, -1 if none */
	struct event *ev_read;
	struct event *ev_write;
	bool write_armed;
	struct event *ev_misc; /* 1 s: keepalive, connect timeout */
	struct event *ev_retry; /* next connect attempt */
	int64_t attempt_us; /* when the current attempt started */

	bool started; /* the library knows host and port */
	bool connected; /* CONNACK accepted */
	bool ever_connected;
	bool expect_session; /* an earlier run had a session */
	bool paused;
	bool deferred; /* a connect attempt waits for resume */
	bool stopping; /* mqtt_disconnect() called */
	bool fail_logged;
	int backoff_ms;
	char refused[160]; /* CONNACK refusal, for the disconnect log */
	uint64_t delivered; /* messages handed to on_message */
};

static bool mqtt_lib_ready;

static void
mqtt_update_write(struct mqtt *m)
{
	bool want;

	if (m->fd < 0)
		return;
	want = mosquitto_want_write(m->mosq);
	if (want && !m->write_armed)
		event_add(m->ev_write, NULL);
	else if (!want && m->write_armed)
		event_del(m->ev_write);
	m->write_armed = want;
}

/* Forget the socket's events (the library has closed or will close it). */
static void
mqtt_unwatch(struct mqtt *m)
{
	if (m->ev_read != NULL)
		event_free(m->ev_read);
	if (m->ev_write != NULL)
		event_free(m->ev_write);
	m->ev_read = m->ev_write = NULL;
	m->write_armed = false;
	m->fd = -1;
}

static void
mqtt_retry_ms(struct mqtt *m, int ms)
{
	struct timeval tv;

	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(m->ev_retry, &tv);
}

/* Next attempt after the backoff, with +-20% jitter, then double it. */
static void
mqtt_schedule(struct mqtt *m)
{
	int span = m->backoff_ms / 5, delay = m->backoff_ms;

	if (span > 0)
		delay += (int)(now_mono_us() % (2 * span + 1)) - span;
	log_debug("mqtt: next connect attempt in %d ms", delay);
	mqtt_retry_ms(m, delay);
	if (m->backoff_ms < m->reconnect_max_ms / 2)
		m->backoff_ms *= 2;
	else
		m->backoff_ms = m->reconnect_max_ms;
}

static const char *
mqtt_strerror(int rc)
{
	if (rc == MOSQ_ERR_ERRNO)
		return strerror(errno);
	/* 2.0.11 calls this one "Unknown error". */
	if (rc == MOSQ_ERR_KEEPALIVE)
		return "no answer from the broker within the keepalive interval";
	return mosquitto_strerror(rc);
}

/*
 * The link ended or an attempt failed; the library has closed the socket.
 * Called from the disconnect callback, and directly when a call failed
 * without reaching it; idempotent.
 */
static void
mqtt_link_down(struct mqtt *m, const char *why)
{
	bool was_connected = m->connected;

	if (m->refused[0] != '\0')
		why = m->refused;
	mqtt_unwatch(m);
	m->connected = false;
	if (m->stopping) {
		log_info("mqtt: disconnected");
		m->refused[0] = '\0';
		return;
	}
	if (was_connected) {
		log_warn("mqtt: connection to %s:%d lost: %s", m->host, m->port, why);
		/* The outage was logged: failed attempts that follow go to debug. */
		m->fail_logged = true;
		if (m->h.on_disconnect != NULL)
			m->h.on_disconnect(m->h.arg, why);
	} else if (!m->fail_logged) {
		log_warn("mqtt: cannot connect to %s:%d: %s", m->host, m->port, why);
		m->fail_logged = true;
	} else {
		log_debug("mqtt: cannot connect to %s:%d: %s", m->host, m->port, why);
	}
	m->refused[0] = '\0';
	if (!m->stopping && !evtimer_pending(m->ev_retry, NULL))
		mqtt_schedule(m);
}

static void
mqtt_on_disconnect(struct mosquitto *mosq, void *arg, int rc, const mosquitto_property *props)
{
	struct mqtt *m = arg;
	char why[160];

	UNUSED(mosq);
	UNUSED(props);
	/* rc is a library error, or the broker's reason code in a DISCONNECT. */
	if (rc == MOSQ_ERR_SUCCESS)
		snprintf(why, sizeof why, "closed");
	else
		snprintf(why, sizeof why, "%s (%d)", mqtt_strerror(rc), rc);
	mqtt_link_down(m, why);
}

/* A loop_* call failed; the disconnect callback normally ran already. */
static void
mqtt_failed(struct mqtt *m, int rc)
{
	char why[160];

	if (m->fd < 0)
		return;
	snprintf(why, sizeof why, "%s (%d)", mqtt_strerror(rc), rc);
	mqtt_link_down(m, why);
}

static void
mqtt_on_connect(
    struct mosquitto *mosq, void *arg, int rc, int flags, const mosquitto_property *props)
{
	struct mqtt *m = arg;
	bool resumed = (flags & 1) != 0;
	int i, r;

	UNUSED(mosq);
	UNUSED(props);
	if (rc != 0) {
		/* The library ends the link next; mqtt_link_down() logs this. */
		snprintf(m->refused, sizeof m->refused, "refused by broker: %s (%d)",
		    mosquitto_reason_string(rc), rc);
		return;
	}
	m->connected = true;
	m->backoff_ms = MQTT_BACKOFF_MIN_MS;
	m->fail_logged = false;
	log_info(
	    "mqtt: connected to %s:%d (session %s)", m->host, m->port, resumed ? "resumed" : "new");
	if ((m->ever_connected || m->expect_session) && !resumed) {
		log_warn("mqtt: the broker did not keep our session: what it queued for us "
		         "while we were away is lost");
		if (m->h.on_session_lost != NULL)
			m->h.on_session_lost(m->h.arg);
	}
	m->ever_connected = true;
	/* The session keeps them too, but a broker may have lost it. */
	for (i = 0; i < MQTT_NSUBS; i++) {
		r = mosquitto_subscribe_v5(m->mosq, NULL, m->subs[i], m->qos, 0, NULL);
		if (r != MOSQ_ERR_SUCCESS)
			log_error("mqtt: cannot subscribe to %s: %s", m->subs[i], mqtt_strerror(r));
	}
	if (m->h.on_connect != NULL)
		m->h.on_connect(m->h.arg);
}

static void
mqtt_on_subscribe(struct mosquitto *mosq, void *arg, int mid, int count, const int *granted,
    const mosquitto_property *props)
{
	int i;

	UNUSED(mosq);
	UNUSED(arg);
	UNUSED(mid);
	UNUSED(props);
	for (i = 0; i < count; i++) {
		if (granted[i] >= 128)
			log_error("mqtt: broker refused a subscription: %s (%d)",
			    mosquitto_reason_string(granted[i]), granted[i]);
	}
}

static void
mqtt_on_message(struct mosquitto *mosq, void *arg, const struct mosquitto_message *msg,
    const mosquitto_property *props)
{
	struct mqtt *m = arg;

	UNUSED(mosq);
	UNUSED(props);
	m->delivered++;
	if (m->h.on_message != NULL)
		m->h.on_message(m->h.arg, msg->topic, msg->payload,
		    (size_t)(msg->payloadlen > 0 ? msg->payloadlen : 0));
}

static void
mqtt_on_publish(
    struct mosquitto *mosq, void *arg, int mid, int reason, const mosquitto_property *props)
{
	struct mqtt *m = arg;

	UNUSED(mosq);
	UNUSED(props);
	/* 16 "no matching subscribers" is a success; >= 128 is a refusal. */
	if (reason >= 128)
		log_warn("mqtt: broker refused publish %d: %s (%d)", mid,
		    mosquitto_reason_string(reason), reason);
	if (m->h.on_publish != NULL)
		m->h.on_publish(m->h.arg, mid);
}

static void
mqtt_on_log(struct mosquitto *mosq, void *arg, int level, const char *line)
{
	UNUSED(mosq);
	UNUSED(arg);
	UNUSED(level);
	log_debug("mqtt: library: %s", line);
}

static void
mqtt_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mqtt *m = arg;
	uint64_t before;
	int i, rc;

	UNUSED(what);
	for (i = 0; i < MQTT_READ_BURST; i++) {
		before = m->delivered;
		rc = mosquitto_loop_read(m->mosq, 1);
		if (rc != MOSQ_ERR_SUCCESS) {
			mqtt_failed(m, rc);
			return;
		}
		/* The link went down or a handler paused us. */
		if (m->fd != fd || m->paused)
			break;
		if (m->delivered == before)
			break;
	}
	mqtt_update_write(m);
}

static void
mqtt_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mqtt *m = arg;
	int rc;

	UNUSED(fd);
	UNUSED(what);
	rc = mosquitto_loop_write(m->mosq, 1);
	if (rc != MOSQ_ERR_SUCCESS) {
		mqtt_failed(m, rc);
		return;
	}
	mqtt_update_write(m);
}

static void
mqtt_misc_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mqtt *m = arg;
	int rc;

	UNUSED(fd);
	UNUSED(what);
	if (m->fd < 0)
		return;
	if (!m->connected && now_mono_us() - m->attempt_us > MQTT_CONNECT_TIMEOUT_US) {
		/*
		 * No CONNACK in time (a black-holed broker). Shutting the
		 * socket down makes the library's next read fail, which
		 * takes the usual path: close, disconnect callback, retry.
		 */
		snprintf(m->refused, sizeof m->refused, "timeout waiting for CONNACK");
		shutdown(m->fd, SHUT_RDWR);
		rc = mosquitto_loop_read(m->mosq, 1);
		if (rc != MOSQ_ERR_SUCCESS)
			mqtt_failed(m, rc);
		return;
	}
	rc = mosquitto_loop_misc(m->mosq);
	if (rc != MOSQ_ERR_SUCCESS) {
		mqtt_failed(m, rc);
		return;
	}
	mqtt_update_write(m);
}

static void
mqtt_connect_start(struct mqtt *m)
{
	int rc, fd;
	char why[160];

	m->attempt_us = now_mono_us();
	m->refused[0] = '\0';
	if (!m->started) {
		rc = mosquitto_connect_bind_async(m->mosq, m->host, m->port, m->keepalive, NULL);
		m->started = rc != MOSQ_ERR_INVAL;
	} else {
		rc = mosquitto_reconnect_async(m->mosq);
	}
	fd = mosquitto_socket(m->mosq);
	if (rc != MOSQ_ERR_SUCCESS || fd < 0) {
		snprintf(why, sizeof why, "%s",
		    rc != MOSQ_ERR_SUCCESS ? mqtt_strerror(rc) : "no socket");
		mqtt_link_down(m, why);
		return;
	}
	m->fd = fd;
	m->ev_read = event_new(m->base, fd, EV_READ | EV_PERSIST, mqtt_read_cb, m);
	m->ev_write = event_new(m->base, fd, EV_WRITE | EV_PERSIST, mqtt_write_cb, m);
	if (m->ev_read == NULL || m->ev_write == NULL) {
		log_error("mqtt: cannot create events");
		abort();
	}
	if (!m->paused)
		event_add(m->ev_read, NULL);
	log_debug("mqtt: connecting to %s:%d", m->host, m->port);
	mqtt_update_write(m);
}

static void
mqtt_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mqtt *m = arg;

	UNUSED(fd);
	UNUSED(what);
	if (m->stopping || m->fd >= 0)
		return;
	/*
	 * While paused we could not read the CONNACK without also taking the
	 * messages behind it, so the attempt waits for mqtt_pause(false).
	 */
	if (m->paused) {
		m->deferred = true;
		return;
	}
	mqtt_connect_start(m);
}

/* Readings are shared between daemons; acknowledgements and events are not. */
static char *
mqtt_filter(const struct conf *conf, const char *leaf)
{
	const char *prefix = conf->mqtt_topic_prefix != NULL ? conf->mqtt_topic_prefix : "meters";
	char *s;

	if (conf->mqtt_shared_group != NULL && *conf->mqtt_shared_group != '\0' &&
	    strcmp(leaf, "reading") == 0)
		xasprintf(&s, "$share/%s/%s/+/%s", conf->mqtt_shared_group, prefix, leaf);
	else
		xasprintf(&s, "%s/+/%s", prefix, leaf);
	return s;
}

struct mqtt *
mqtt_new(struct event_base *base, const struct conf *conf, const struct mqtt_handlers *h, char *err,
    size_t errlen)
{
	static const char *leaves[MQTT_NSUBS] = {"reading", "event", "ack"};
	struct timeval sec = {1, 0};
	struct mqtt *m;
	mosquitto_property *props = NULL;
	int rc, i;

	if (!mqtt_lib_ready) {
		mosquitto_lib_init();
		mqtt_lib_ready = true;
	}
	if (conf->mqtt_client_id == NULL || *conf->mqtt_client_id == '\0') {
		snprintf(err, errlen, "mqtt: a client id is needed for a persistent session");
		return NULL;
	}
	m = xcalloc(1, sizeof *m);
	m->base = base;
	m->h = *h;
	m->host = xstrdup(conf->mqtt_host != NULL ? conf->mqtt_host : "localhost");
	m->port = conf->mqtt_port;
	m->keepalive = conf->mqtt_keepalive;
	m->qos = conf->mqtt_qos;
	m->reconnect_max_ms = conf->mqtt_reconnect_max_ms > MQTT_BACKOFF_MIN_MS
	                          ? conf->mqtt_reconnect_max_ms
	                          : MQTT_BACKOFF_MIN_MS;
	m->backoff_ms = MQTT_BACKOFF_MIN_MS;
	m->fd = -1;
	for (i = 0; i < MQTT_NSUBS; i++)
		m->subs[i] = mqtt_filter(conf, leaves[i]);

	m->mosq = mosquitto_new(conf->mqtt_client_id, false, m);
	if (m->mosq == NULL) {
		snprintf(err, errlen, "mqtt: cannot create client: %s", strerror(errno));
		goto fail;
	}
	/* The protocol first: the credential checks depend on it. */
	mosquitto_int_option(m->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	mosquitto_int_option(m->mosq, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_int_option(m->mosq, MOSQ_OPT_RECEIVE_MAXIMUM, MQTT_INFLIGHT_MAX);
	mosquitto_int_option(m->mosq, MOSQ_OPT_SEND_MAXIMUM, MQTT_INFLIGHT_MAX);
	if (conf->mqtt_username != NULL || conf->mqtt_password != NULL) {
		rc = mosquitto_username_pw_set(m->mosq, conf->mqtt_username, conf->mqtt_password);
		if (rc != MOSQ_ERR_SUCCESS) {
			snprintf(err, errlen, "mqtt: credentials: %s", mqtt_strerror(rc));
			goto fail;
		}
	}
	if (conf->mqtt_tls_ca != NULL && *conf->mqtt_tls_ca != '\0') {
		rc = mosquitto_tls_set(m->mosq, conf->mqtt_tls_ca, NULL, conf->mqtt_tls_cert,
		    conf->mqtt_tls_key, NULL);
		if (rc != MOSQ_ERR_SUCCESS) {
			snprintf(err, errlen,
			    "mqtt: TLS settings (CA, certificate or key "
			    "file unreadable, or only one of certificate and key): %s",
			    mqtt_strerror(rc));
			goto fail;
		}
	}

	/*
	 * Store the session expiry interval as CONNECT property: port -1
	 * makes the call return MOSQ_ERR_INVAL after storing the properties
	 * and before it would connect (and block). Without it an MQTT v5
	 * broker ends our session, and drops what it queued for us, on
	 * every disconnect.
	 */
	mosquitto_property_add_int32(
	    &props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, MQTT_SESSION_EXPIRY_S);
	rc = mosquitto_connect_bind_v5(m->mosq, m->host, -1, m->keepalive, NULL, props);
	mosquitto_property_free_all(&props);
	if (rc != MOSQ_ERR_INVAL) {
		snprintf(err, errlen, "mqtt: unexpected answer storing connect properties: %s",
		    mqtt_strerror(rc));
		goto fail;
	}

	mosquitto_connect_v5_callback_set(m->mosq, mqtt_on_connect);
	mosquitto_disconnect_v5_callback_set(m->mosq, mqtt_on_disconnect);
	mosquitto_message_v5_callback_set(m->mosq, mqtt_on_message);
	mosquitto_publish_v5_callback_set(m->mosq, mqtt_on_publish);
	mosquitto_subscribe_v5_callback_set(m->mosq, mqtt_on_subscribe);
	/* The library formats a line per packet: only when it will be shown. */
	if (log_get_level() >= LOG_LVL_DEBUG)
		mosquitto_log_callback_set(m->mosq, mqtt_on_log);

	m->ev_misc = event_new(base, -1, EV_PERSIST, mqtt_misc_cb, m);
	m->ev_retry = evtimer_new(base, mqtt_retry_cb, m);
	if (m->ev_misc == NULL || m->ev_retry == NULL) {
		snprintf(err, errlen, "mqtt: cannot create events");
		goto fail;
	}
	event_add(m->ev_misc, &sec);
	/* Connect from the loop, so no handler runs before we return. */
	mqtt_retry_ms(m, 0);
	return m;

fail:
	mqtt_free(m);
	return NULL;
}

void
mqtt_free(struct mqtt *m)
{
	int i;

	if (m == NULL)
		return;
	mqtt_unwatch(m);
	if (m->ev_misc != NULL)
		event_free(m->ev_misc);
	if (m->ev_retry != NULL)
		event_free(m->ev_retry);
	if (m->mosq != NULL)
		mosquitto_destroy(m->mosq); /* closes the socket, no callbacks */
	for (i = 0; i < MQTT_NSUBS; i++)
		free(m->subs[i]);
	free(m->host);
	free(m);
}

bool
mqtt_connected(const struct mqtt *m)
{
	return m->connected;
}

void
mqtt_expect_session(struct mqtt *m, bool expect)
{
	m->expect_session = expect;
}

void
mqtt_pause(struct mqtt *m, bool pause)
{
	if (pause == m->paused)
		return;
	m->paused = pause;
	if (m->ev_read != NULL) {
		if (pause)
			event_del(m->ev_read);
		else
			event_add(m->ev_read, NULL);
	}
	log_debug("mqtt: reading %s", pause ? "paused" : "resumed");
	if (!pause && m->deferred) {
		m->deferred = false;
		if (!m->stopping && m->fd < 0)
			mqtt_retry_ms(m, 0);
	}
}

int
mqtt_publish(struct mqtt *m, const char *topic, const void *payload, size_t len, int qos,
    unsigned expiry_s, int *mid)
{
	mosquitto_property *props = NULL;
	int rc;

	if (!m->connected || len > (size_t)INT32_MAX)
		return -1;
	if (expiry_s > 0)
		mosquitto_property_add_int32(&props, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, expiry_s);
	rc = mosquitto_publish_v5(m->mosq, mid, topic, (int)len, payload, qos, false, props);
	mosquitto_property_free_all(&props);
	if (rc != MOSQ_ERR_SUCCESS && qos > 0 &&
	    (rc == MOSQ_ERR_ERRNO || rc == MOSQ_ERR_CONN_LOST || rc == MOSQ_ERR_NO_CONN)) {
		/*
		 * The library queued the message before the write failed and
		 * resends it after the reconnect: report it as queued, or the
		 * caller would send it twice.
		 */
		log_debug("mqtt: publish %d to %s deferred to the next connection",
		    mid != NULL ? *mid : 0, topic);
		return 0;
	}
	if (rc != MOSQ_ERR_SUCCESS) {
		log_warn("mqtt: cannot publish to %s: %s", topic, mqtt_strerror(rc));
		return -1;
	}
	mqtt_update_write(m);
	return 0;
}

void
mqtt_disconnect(struct mqtt *m)
{
	int rc;

	m->stopping = true;
	evtimer_del(m->ev_retry);
	if (m->fd < 0)
		return;
	/* Writes what is queued, then DISCONNECT, as far as the socket takes. */
	rc = mosquitto_disconnect_v5(m->mosq, MQTT_RC_NORMAL_DISCONNECTION, NULL);
	if (rc == MOSQ_ERR_SUCCESS && m->fd >= 0)
		mosquitto_loop_write(m->mosq, 1);
	mqtt_unwatch(m);
	m->connected = false;
}
