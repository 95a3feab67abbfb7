/*
 * fuzz_payapi.c: libFuzzer harness for what payapi.c reads from the
 * providers: Alipay answers (the exact *_response text and its sign), the
 * WeChat Pay transaction of a query, the WeChat Pay CSV bill and the Alipay
 * bill (a ZIP of GBK CSVs, not signed: whatever the download URL serves).
 * The first byte picks the parser. Besides surviving any input, a parsed
 * bill row has a transaction id and a non-negative amount, and a member
 * span lies inside the input and starts with '{'. Built with
 * --enable-fuzzing (clang); seeds: tests/data/pay.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "payapi.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_check_bill(const struct payapi_bill *b)
{
	size_t i;

	for (i = 0; i < b->n; i++)
		if (b->rows[i].txn[0] == '\0' || b->rows[i].fen < 0)
			abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data + 1;
	size_t n = size > 0 ? size - 1 : 0, off, len, dlen, ulen;
	struct payapi_bill b;
	struct payapi_trade t;
	char err[256], *det, *utf8;
	json_t *r;

	if (size == 0)
		return 0;
	memset(&b, 0, sizeof b);
	switch (data[0] % 5) {
	case 0:
		if (payapi_json_member_span(s, n, "alipay_trade_query_response", &off, &len) ==
		    PAY_OK) {
			if (off + len > n || s[off] != '{')
				abort();
		}
		/* no key: never believed, whatever the bytes */
		if (payapi_ali_answer(NULL, "alipay.trade.query", s, n, &r, err, sizeof err) ==
		    PAY_OK)
			abort();
		break;
	case 1:
		payapi_wx_trade_parse(s, n, &t, err, sizeof err);
		break;
	case 2:
		if (payapi_wx_bill_parse(s, n, &b, err, sizeof err) == PAY_OK)
			fuzz_check_bill(&b);
		else if (b.n != 0)
			abort();
		payapi_bill_free(&b);
		break;
	case 3:
		if (payapi_ali_bill_parse(s, n, &b, err, sizeof err) == PAY_OK)
			fuzz_check_bill(&b);
		else if (b.n != 0)
			abort();
		payapi_bill_free(&b);
		break;
	default:
		if (payapi_unzip_detail(s, n, &det, &dlen, err, sizeof err) == PAY_OK) {
			utf8 = payapi_gbk_to_utf8(det, dlen, &ulen);
			if (utf8 != NULL &&
			    payapi_ali_bill_parse(utf8, ulen, &b, err, sizeof err) == PAY_OK)
				fuzz_check_bill(&b);
			payapi_bill_free(&b);
			free(utf8);
			free(det);
		}
		break;
	}
	return 0;
}
