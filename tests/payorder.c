/*
 * payorder.c: drives payout_create_order() -- the entry point the pay page
 * calls -- from the command line, on the daemon's own event loop and HTTP
 * client, so that tests/it/payout.sh can create orders at the fake
 * providers exactly as the page will.
 *
 * Usage: [PAYORDER_EXPIRES_AT=UNIX] payorder CONFIG CHANNEL OUT_TRADE_NO FEN
 * [OPENID|CLIENT_IP|RETURN_URL] Prints the result as one JSON object ({"error":..} or the fields of
 * struct payout_order_result) and exits 0 on success, 1 on an error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "common.h"
#include "conf.h"
#include "payout.h"

static int payorder_rc = 1;
static struct event_base *payorder_base;

static void
payorder_done(void *arg, const struct payout_order_result *r)
{
	json_t *j = json_object();
	char *s;

	UNUSED(arg);
	if (r->error != NULL)
		json_object_set_new(j, "error", json_string(r->error));
	if (r->code_url != NULL)
		json_object_set_new(j, "code_url", json_string(r->code_url));
	if (r->prepay_id != NULL)
		json_object_set_new(j, "prepay_id", json_string(r->prepay_id));
	if (r->jsapi_params != NULL)
		json_object_set(j, "jsapi", r->jsapi_params);
	if (r->h5_url != NULL)
		json_object_set_new(j, "h5_url", json_string(r->h5_url));
	if (r->qr_code != NULL)
		json_object_set_new(j, "qr_code", json_string(r->qr_code));
	if (r->pay_url != NULL)
		json_object_set_new(j, "pay_url", json_string(r->pay_url));
	s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
	printf("%s\n", s);
	free(s);
	json_decref(j);
	payorder_rc = r->error == NULL ? 0 : 1;
	event_base_loopexit(payorder_base, NULL);
}

int
main(int argc, char **argv)
{
	struct payout_order o;
	struct conf *conf;
	struct payout *p;
	char err[1024];
	int ch;

	if (argc < 5 || argc > 6 || (ch = payapi_channel_parse(argv[2])) < 0) {
		fprintf(stderr, "usage: payorder CONFIG native|jsapi|h5|precreate|wap OUT_TRADE_NO "
		                "FEN [OPENID|CLIENT_IP|RETURN_URL]\n");
		return 2;
	}
	if ((conf = conf_load(argv[1], err, sizeof err)) == NULL) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	payorder_base = event_base_new();
	if ((p = payout_new(payorder_base, conf, err, sizeof err)) == NULL) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	memset(&o, 0, sizeof o);
	o.out_trade_no = argv[3];
	o.amount_fen = strtoll(argv[4], NULL, 10);
	o.channel = (enum payapi_channel)ch;
	o.description = "电费 test";
	/* The order's own expiry (prepaid.orders.expires_at), so that a repeat
	 * sends the same parameters. */
	o.expires_at = getenv("PAYORDER_EXPIRES_AT") != NULL
	                   ? strtoll(getenv("PAYORDER_EXPIRES_AT"), NULL, 10)
	                   : 0;
	if (argc == 6) {
		o.openid = argv[5];
		o.client_ip = argv[5];
		o.return_url = argv[5];
	}
	payout_create_order(p, &o, payorder_done, NULL);
	event_base_dispatch(payorder_base);
	payout_free(p);
	conf_free(conf);
	event_base_free(payorder_base);
	return payorder_rc;
}
