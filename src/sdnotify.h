/*
 * sdnotify.h: systemd notification (READY, RELOADING, STOPPING, STATUS,
 * WATCHDOG). Built without libsystemd these are no-ops, so call sites carry
 * no #ifdef.
 */
#ifndef PREPAIDD_SDNOTIFY_H
#define PREPAIDD_SDNOTIFY_H

#include <stdint.h>

#include "common.h"

void sdnotify_ready(void);
void sdnotify_reloading(void);
void sdnotify_stopping(void);
void sdnotify_watchdog(void);
void sdnotify_status(const char *fmt, ...) PRINTFLIKE(1, 2);
/* The watchdog interval systemd asked for in microseconds, or 0. */
uint64_t sdnotify_watchdog_usec(void);

#endif
