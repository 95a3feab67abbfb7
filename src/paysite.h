/*
 * paysite.h: the occupants' pay page on the HTTP listener ([paypage]).
 *
 *   GET  <path>/<token>                          the meter's page
 *   POST <path>/<token>/pay                      amount=<yuan>&via=alipay|wechat:
 *                                                creates the order, hands over
 *   GET  <path>/<token>/result/<out_trade_no>    the order's result
 *   GET  <path>/<token>/wechat?code=&state=      back from WeChat's openid
 *                                                step (state: out_trade_no)
 *
 * Every request is rate-limited per client address first. A token that is
 * malformed, unknown or revoked gets the same 404 page, which names no
 * meter. Database work goes through connections of its own, asynchronously
 * (pgconn), with the prepaid.pay_page* functions of sql/914_paypage.sql.
 */
#ifndef PREPAIDD_PAYSITE_H
#define PREPAIDD_PAYSITE_H

#include <stddef.h>

#include <event2/event.h>

#include "conf.h"
#include "httpd.h"
#include "paypage.h"

struct paysite;

/* NULL with err set on failure; a valid object that serves nothing when
 * [paypage] path is unset. */
struct paysite *paysite_new(struct event_base *base, struct httpd *httpd, const struct conf *conf,
    char *err, size_t errlen);
/*
 * Who creates orders at the providers (main.c: payout_paypage_create).
 * Until it is called, the stand-in of paypage_stub_handoff() ([paypage]
 * stub_handoff_url) is used. p is copied. The provider must not call a done callback after
 * paysite_free (stop its calls first).
 */
void paysite_set_provider(struct paysite *s, const struct paypage_provider *p);
/* SIGHUP: amounts, limits, public URL; conf must outlive the paysite. */
void paysite_reconfigure(struct paysite *s, const struct conf *conf);
/* Stopping: new requests get the busy page. */
void paysite_stop(struct paysite *s);
void paysite_free(struct paysite *s);

#endif
