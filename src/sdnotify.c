/*
 * sdnotify.c: the systemd notification calls of sdnotify.h over
 * libsystemd's sd_notify(), or no-ops when built without it.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "sdnotify.h"

#ifdef HAVE_SYSTEMD
static void
sdnotify_send(const char *msg)
{
	sd_notify(0, msg);
}
#else
static void
sdnotify_send(const char *msg)
{
	UNUSED(msg);
}
#endif

void
sdnotify_ready(void)
{
	sdnotify_send("READY=1");
}

void
sdnotify_reloading(void)
{
	char msg[64];

	snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%lld", (long long)now_mono_us());
	sdnotify_send(msg);
}

void
sdnotify_stopping(void)
{
	sdnotify_send("STOPPING=1");
}

void
sdnotify_watchdog(void)
{
	sdnotify_send("WATCHDOG=1");
}

void
sdnotify_status(const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	int n;

	n = snprintf(msg, sizeof msg, "STATUS=");
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof msg - (size_t)n, fmt, ap);
	va_end(ap);
	sdnotify_send(msg);
}

uint64_t
sdnotify_watchdog_usec(void)
{
#ifdef HAVE_SYSTEMD
	uint64_t usec = 0;

	if (sd_watchdog_enabled(0, &usec) > 0)
		return usec;
#endif
	return 0;
}
