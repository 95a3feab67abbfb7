/*
 * log.c: levelled logging to stderr and the per-key rate limiter described
 * in log.h. Under systemd (JOURNAL_STREAM set) lines carry a <N> priority
 * prefix instead of a time stamp, so journald files them at the right level.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

static enum log_level log_level = LOG_LVL_INFO;
static bool log_timestamps = true;
static bool log_journal = false;

#define LOG_RL_SLOTS 1024

struct log_rl_slot {
	uint64_t hash;
	int64_t last_us;
	unsigned long suppressed;
};
static struct log_rl_slot log_rl[LOG_RL_SLOTS];

void
log_set_level(enum log_level level)
{
	log_level = level;
	log_journal = getenv("JOURNAL_STREAM") != NULL;
}

enum log_level
log_get_level(void)
{
	return log_level;
}

void
log_set_timestamps(bool on)
{
	log_timestamps = on;
}

static void
log_vmsg(enum log_level level, const char *suffix, const char *fmt, va_list ap)
{
	static const char *names[] = {"error", "warning", "info", "debug"};
	static const int syslog_prio[] = {3, 4, 6, 7};
	char line[2048];
	char stamp[40] = "";
	int n;

	if (level > log_level)
		return;
	if (log_journal) {
		snprintf(stamp, sizeof stamp, "<%d>", syslog_prio[level]);
	} else if (log_timestamps) {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		n = (int)strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
		snprintf(stamp + n, sizeof stamp - (size_t)n, ".%03ld ", ts.tv_nsec / 1000000);
	}
	vsnprintf(line, sizeof line, fmt, ap);
	fprintf(stderr, "%s%s: %s%s\n", stamp, names[level], line, suffix ? suffix : "");
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, NULL, fmt, ap);
	va_end(ap);
}

static uint64_t
log_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h ? h : 1;
}

void
log_ratelimited(enum log_level level, const char *key, int interval_s, const char *fmt, ...)
{
	struct log_rl_slot *slot;
	uint64_t h;
	int64_t now;
	char suffix[64] = "";
	va_list ap;

	if (level > log_level)
		return;
	h = log_hash(key);
	slot = &log_rl[h % LOG_RL_SLOTS];
	now = now_mono_us();
	if (slot->hash == h && now - slot->last_us < (int64_t)interval_s * 1000000) {
		slot->suppressed++;
		return;
	}
	if (slot->hash == h && slot->suppressed > 0)
		snprintf(suffix, sizeof suffix, " (%lu more suppressed)", slot->suppressed);
	slot->hash = h;
	slot->last_us = now;
	slot->suppressed = 0;
	va_start(ap, fmt);
	log_vmsg(level, suffix, fmt, ap);
	va_end(ap);
}

void
log_mask(const char *in, char *out, size_t outlen)
{
	size_t len = strlen(in), i;

	if (outlen == 0)
		return;
	for (i = 0; i < len && i + 1 < outlen; i++)
		out[i] = (i + 4 < len) ? '*' : in[i];
	out[i] = '\0';
}
