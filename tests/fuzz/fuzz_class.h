/*
 * fuzz_class.h: what every classified payment notification promises,
 * whichever provider sent it (fuzz_alipay.c, fuzz_wechat.c): a payment
 * has both ids and an amount, a notice a kind, a refusal 400 or 403 and a
 * reason, and every id kept is one fit to store and log.
 */
#ifndef PREPAIDD_FUZZ_CLASS_H
#define PREPAIDD_FUZZ_CLASS_H

#include <stdlib.h>

#include "payverify.h"

static void
fuzz_class_check(const struct pay_class *c)
{
	switch (c->action) {
	case PAY_RECORD:
		if (c->out_trade_no[0] == '\0' || c->txn[0] == '\0' || c->fen < 0 ||
		    c->status == NULL)
			abort();
		break;
	case PAY_NOTICE:
		if (c->kind == NULL)
			abort();
		break;
	case PAY_REFUSE:
		if ((c->http_status != 400 && c->http_status != 403) || c->reason[0] == '\0')
			abort();
		break;
	default:
		abort();
	}
	if ((c->out_trade_no[0] != '\0' && !pay_id_ok(c->out_trade_no)) ||
	    (c->txn[0] != '\0' && !pay_id_ok(c->txn)) || c->fen < -1)
		abort();
}

#endif
