/*
 * outbox.h: commands to meters. The rows of prepaid.commands are the truth;
 * this module LISTENs for prepaid_commands, claims due commands through
 * prepaid_internal.claim_commands() (FOR UPDATE SKIP LOCKED, so several daemons never
 * publish the same attempt twice), and publishes them to <prefix>/<id>/cmd
 * (QoS 1, never retained, MQTT v5 message expiry = time left until
 * valid_until) after the claim has committed. Re-sends and expiry are the
 * claim function's business: a command past valid_until is marked expired,
 * never published. Acknowledgements come back through ingest.
 */
#ifndef PREPAIDD_OUTBOX_H
#define PREPAIDD_OUTBOX_H

#include <stdbool.h>

#include <event2/event.h>

#include "conf.h"
#include "mqtt.h"
#include "pgconn.h"

struct outbox;

struct outbox *outbox_new(
    struct event_base *base, struct pgconn *pc, struct mqtt *mqtt, const struct conf *conf);
void outbox_free(struct outbox *ob);
void outbox_set_conf(struct outbox *ob, const struct conf *conf);

/* Its connection is up and the schema is right (LISTEN is issued here). */
void outbox_set_ready(struct outbox *ob, bool ready);
/* A NOTIFY on prepaid_commands, or the broker came back: claim now. */
void outbox_kick(struct outbox *ob);

#endif
