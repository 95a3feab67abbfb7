/*
 * payments.h: the WeChat Pay v3 and Alipay callback endpoints.
 *
 * Each callback is verified on the event loop (signature, key, timestamp,
 * decryption, merchant) with payverify.c, then recorded by one call of
 * prepaid_internal.record_payment() on a payments connection of its own, in one
 * transaction with synchronous commit; the provider gets its success answer
 * only after that commit. Refused callbacks are answered at once and
 * audited in prepaid.payment_rejects. While PostgreSQL is away, or slower
 * than [payments] answer_within_ms, the answer is 503: the provider
 * retries, and a retry of a payment already recorded credits nothing.
 */
#ifndef PREPAIDD_PAYMENTS_H
#define PREPAIDD_PAYMENTS_H

#include <stddef.h>

#include <event2/event.h>

#include "conf.h"
#include "httpd.h"

struct payments;

/* Load and check the keys the configuration names (for -n and the start):
 * 0, or -1 with "file:line: payments.key: why" in err. */
int payments_check(const struct conf *conf, char *err, size_t errlen);

/* NULL with err set if the keys cannot be loaded. Registers the configured
 * paths on httpd. Returns a valid object even when no provider is set up. */
struct payments *payments_new(struct event_base *base, struct httpd *httpd, const struct conf *conf,
    char *err, size_t errlen);
/* Called after a payment's commit queued a command (arm, close) or a
 * message: the daemon wakes its outbox or dispatcher at once (the
 * transaction sent no NOTIFY, which would have made its commit wait). */
struct payments_hooks {
	void (*on_command)(void *arg);
	void (*on_message)(void *arg);
	void *arg;
};
void payments_set_hooks(struct payments *p, const struct payments_hooks *h);

/* SIGHUP: new keys and merchant ids (the old ones stay if the new keys
 * cannot be loaded), new conninfo. conf must outlive the payments. */
void payments_reconfigure(struct payments *p, const struct conf *conf);
/* Stopping: new callbacks are answered 503 (the provider retries, maybe
 * on another instance); those already in the database finish. */
void payments_stop(struct payments *p);
/* Callbacks waiting for the database. */
int payments_pending(const struct payments *p);
/* Answers 503 to callbacks still waiting and frees everything. */
void payments_free(struct payments *p);

#endif
