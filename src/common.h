/*
 * common.h: what every prepaidd module shares — the allocation wrappers
 * (which abort on out-of-memory so call sites stay clean), small helpers and
 * project-wide limits. Module interfaces live in their own headers.
 *
 * Error reasons, one convention per layer (each header restates its own):
 * - start-up (conf_load, the *_new constructors, key loading): NULL or -1
 *   and a line in the caller's err buffer; main() prints it and exits 1.
 * - decoders of what meters and payment providers send (payload.c,
 *   payverify.c): false, TOPIC_UNKNOWN or a PAY_E* code and a line the
 *   caller neither frees nor keeps (its own buffer, or a static phrase):
 *   nothing is allocated on the per-message path.
 * - builders of what goes out (template.c, signer.c, gwreq.c, httpc_send):
 *   NULL or false and *cause, an xmalloc'd line the caller frees (cause may
 *   be NULL).
 * - run-time I/O (pgconn, mqtt, httpc, and the modules on them): the
 *   outcome reaches a callback with a const char *err valid during the
 *   call; it is logged with its context, and never stops the daemon.
 */
#ifndef PREPAIDD_COMMON_H
#define PREPAIDD_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* DESIGN.md: a meter id is 1-32 characters of [A-Za-z0-9_.-]. */
#define METER_ID_MAX 32

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define UNUSED(x) ((void)(x))

#if defined(__GNUC__)
#define PRINTFLIKE(f, a) __attribute__((format(printf, f, a)))
#define NORETURN __attribute__((noreturn))
#else
#define PRINTFLIKE(f, a)
#define NORETURN
#endif

/* xmalloc.c: allocation that never returns NULL (aborts with a message). */
void *xmalloc(size_t size);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *ptr, size_t size);
void *xreallocarray(void *ptr, size_t nmemb, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
int xasprintf(char **out, const char *fmt, ...) PRINTFLIKE(2, 3);
int xvasprintf(char **out, const char *fmt, va_list ap) PRINTFLIKE(2, 0);

/* A growable string (xmalloc.c). Initialise with {0}; free p when done. */
struct sbuf {
	char *p;
	size_t len, cap;
};
void sbuf_add(struct sbuf *b, const char *s, size_t n);
void sbuf_adds(struct sbuf *b, const char *s);
void sbuf_printf(struct sbuf *b, const char *fmt, ...) PRINTFLIKE(2, 3);
void sbuf_reset(struct sbuf *b);
/* Lower-case hex of the first max bytes of buf. */
void sbuf_hex(struct sbuf *b, const void *buf, size_t len, size_t max);

/* Monotonic and wall clocks, in microseconds. */
int64_t now_mono_us(void);
int64_t now_wall_us(void);

#endif
