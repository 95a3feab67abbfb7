/*
 * fuzz_money.c: libFuzzer harness for pay_money_parse, the one place where
 * an Alipay amount ("12.50" yuan) becomes integer fen. A wrong digit here is
 * money credited or lost, so besides surviving any input the harness checks
 * the promises the ledger relies on: an accepted amount is in range, the
 * input was nothing but digits with at most one point and two decimals, and
 * the amount written back in canonical form parses to the same fen. Built
 * with --enable-fuzzing (clang).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "payverify.h"

/* 999999999999.99 yuan: twelve integer digits, the parser's ceiling. */
#define FUZZ_MAX_FEN INT64_C(99999999999999)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	char canon[32];
	int64_t fen, back;
	size_t i, points = 0, decimals = 0;

	if (pay_money_parse(s, size, &fen) != PAY_OK)
		return 0;
	if (fen < 0 || fen > FUZZ_MAX_FEN || size == 0)
		abort();
	for (i = 0; i < size; i++) {
		if (s[i] == '.') {
			if (++points > 1 || i == 0)
				abort();
		} else if (s[i] < '0' || s[i] > '9') {
			abort();
		} else if (points > 0 && ++decimals > 2) {
			abort();
		}
	}
	if (points == 1 && decimals == 0)
		abort();
	snprintf(
	    canon, sizeof canon, "%lld.%02lld", (long long)(fen / 100), (long long)(fen % 100));
	if (pay_money_parse(canon, strlen(canon), &back) != PAY_OK || back != fen)
		abort();
	return 0;
}
