/*
 * log.h: levelled logging to stderr (journald adds the time) with context,
 * and a rate limiter so that a misbehaving meter is logged once per interval
 * with a count of what was suppressed, not once per message.
 */
#ifndef PREPAIDD_LOG_H
#define PREPAIDD_LOG_H

#include "common.h"

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Prefix every line with a wall-clock time stamp (off under systemd). */
void log_set_timestamps(bool on);

void log_msg(enum log_level level, const char *fmt, ...) PRINTFLIKE(2, 3);
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

/*
 * Log at most once per interval_s for the given key (e.g. a meter id and a
 * category); later calls inside the interval are counted and the count is
 * reported with the next line that gets through. Bounded memory: keys share
 * a fixed table of slots by hash.
 */
void log_ratelimited(enum log_level level, const char *key, int interval_s, const char *fmt, ...)
    PRINTFLIKE(4, 5);

/* Mask all but the last 4 characters of a secret-ish string (phone, token). */
void log_mask(const char *in, char *out, size_t outlen);

#endif
