/*
 * mqtt.h: the broker link. libmosquitto driven through its socket on the
 * libevent loop (no library thread): a read event calls
 * mosquitto_loop_read(), a write event is armed only while
 * mosquitto_want_write(), a 1 s timer calls mosquitto_loop_misc(). MQTT v5,
 * persistent session (clean_start off) with a stable client id, TCP_NODELAY,
 * optional TLS and credentials. Reconnects with exponential backoff and
 * re-subscribes on every connect. Reading can be paused (backpressure): the
 * broker then holds messages for our session. Start-up errors go to the
 * caller's err buffer; later ones reach on_disconnect as a why valid
 * during the call.
 */
#ifndef PREPAIDD_MQTT_H
#define PREPAIDD_MQTT_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

#include "conf.h"

struct mqtt;

struct mqtt_handlers {
	/* Connected and subscriptions sent (every (re)connect). */
	void (*on_connect)(void *arg);
	void (*on_disconnect)(void *arg, const char *why);
	/*
	 * The broker answered a (re)connect without our session although one
	 * was expected (we had one in this process, or mqtt_expect_session()):
	 * what it queued for us while we were away is gone. Called before
	 * on_connect.
	 */
	void (*on_session_lost)(void *arg);
	/* A message; topic and payload are valid only during the call. */
	void (*on_message)(void *arg, const char *topic, const void *payload, size_t len);
	/* The broker acknowledged our publish with this mid (QoS >= 1). */
	void (*on_publish)(void *arg, int mid);
	void *arg;
};

/*
 * Create and start connecting. Subscribes, at conf->mqtt_qos, to
 * <prefix>/+/reading — wrapped as $share/<group>/... when mqtt_shared_group
 * is set — and to <prefix>/+/event and <prefix>/+/ack always unshared: with
 * several daemons each receives every acknowledgement and event, so that
 * they reach a live daemon when another is down (the broker would keep
 * dealing a share to the dead daemon's session); processing them twice is
 * harmless. Returns NULL with a
 * message in err if the library refuses the settings (bad TLS files...).
 */
struct mqtt *mqtt_new(struct event_base *base, const struct conf *conf,
    const struct mqtt_handlers *h, char *err, size_t errlen);
void mqtt_free(struct mqtt *m);

bool mqtt_connected(const struct mqtt *m);

/* A session should exist at the broker already (from an earlier run). */
void mqtt_expect_session(struct mqtt *m, bool expect);

/* Stop (true) or resume (false) reading the socket. Idempotent. */
void mqtt_pause(struct mqtt *m, bool pause);

/*
 * Publish (never retained). expiry_s > 0 sets the MQTT v5 message-expiry
 * interval. Returns 0 and the message id in *mid, or -1 if not connected or
 * the library refused (then nothing was queued).
 */
int mqtt_publish(struct mqtt *m, const char *topic, const void *payload, size_t len, int qos,
    unsigned expiry_s, int *mid);

/* Disconnect cleanly (on shutdown), flushing what can be written. */
void mqtt_disconnect(struct mqtt *m);

#endif
