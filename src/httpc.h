/*
 * httpc.h: the asynchronous HTTP client that notification gateways use.
 *
 * One libcurl multi handle per daemon on the libevent loop (curl's
 * hiperfifo pattern), so that keep-alive connections to a gateway are
 * pooled and reused, and so that no call ever blocks the loop. Concurrency
 * per host is bounded by the multi handle (CURLMOPT_MAX_HOST_CONNECTIONS);
 * requests beyond the bound wait inside curl, and that wait counts against
 * the request's timeout. Connections are never multiplexed (no HTTP/2
 * streams side by side), so the bound really is the number of requests a
 * gateway sees at once.
 *
 * Every request ends in exactly one call of its completion callback, from
 * the event loop, never from inside httpc_send() — unless the request is
 * cancelled or the client freed first, in which case it is never called.
 * httpc_classify() maps an outcome to ok / retry / final; retrying is the
 * caller's job (with backoff, honouring retry_after_s). A transport error
 * or a timeout may come after the gateway received the request: a retry
 * can send a message twice unless the gateway de-duplicates (pass it an
 * idempotency key where it has one).
 *
 * Secrets (basic auth password, bearer token, signed query strings) are
 * never logged: log lines carry the URL without user info and query.
 * Errors: httpc_send() refuses with *cause (the caller frees it); every
 * later outcome is in the httpc_result, valid during the callback.
 */
#ifndef PREPAIDD_HTTPC_H
#define PREPAIDD_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/event.h>

#define HTTPC_BODY_MAX_DEFAULT (64 * 1024)
#define HTTPC_MSGID_MAX 128

struct httpc;
struct httpc_req;

struct httpc_config {
	int max_host_connections; /* per host:port; <= 0: 4 */
	int max_total_connections; /* all hosts; <= 0: unlimited */
	const char *user_agent; /* NULL: "prepaidd/<version>" */
};

struct httpc_request {
	const char *url;
	/* "GET", "POST", "PUT", ...; NULL: POST when there is a body, else GET. */
	const char *method;
	/* NULL-terminated "Name: value" lines, or NULL. "Name:" removes a
	 * header curl would add (e.g. "Content-Type:"). */
	const char *const *headers;
	const void *body; /* copied; may contain any bytes */
	size_t body_len;
	int timeout_ms; /* whole request, queueing included; <= 0: 30000 */
	size_t body_max; /* response bytes kept; 0: HTTPC_BODY_MAX_DEFAULT */
	/* Basic auth when user is set; bearer token when bearer is set. */
	const char *user;
	const char *password;
	const char *bearer;
	const char *tag; /* for log lines (the gateway's name); may be NULL */
	/*
	 * E-mail: with an smtp:// or smtps:// URL the request is an SMTP
	 * transaction from mail_from to mail_rcpt whose message is the body
	 * (a complete RFC 5322 message with CRLF line ends); user/password
	 * log in. smtp:// upgrades with STARTTLS when the server offers it,
	 * smtps:// is TLS from the start.
	 */
	const char *mail_from;
	const char *mail_rcpt;
};

/*
 * The outcome of one request, valid only during the completion callback
 * (copy what you need).
 */
struct httpc_result {
	CURLcode code; /* CURLE_OK when an HTTP answer arrived */
	const char *error; /* one line; "" when code is CURLE_OK */
	long status; /* HTTP status, 0 when none arrived */
	const char *body; /* NUL-terminated; may contain NULs (use body_len) */
	size_t body_len;
	bool truncated; /* the answer was longer than body_max */
	int retry_after_s; /* Retry-After in seconds (either form), -1 if none */
	char message_id[HTTPC_MSGID_MAX]; /* X-Message-Id, "" if none */
	int64_t total_us; /* from httpc_send() to completion, queueing included */
	long new_connections; /* connections this request opened (0: reused) */
	const char *tag;
	struct httpc_req *req; /* for httpc_result_header() */
	bool smtp; /* status is then the server's last SMTP reply code */
};

typedef void (*httpc_cb)(void *arg, const struct httpc_result *res);

enum httpc_class {
	HTTPC_OK, /* 2xx */
	HTTPC_RETRY, /* transport error, timeout, 429, 5xx */
	HTTPC_FINAL /* any other answer, or a request that can never work */
};

/* Stats for /metrics. */
struct httpc_stats {
	uint64_t started;
	uint64_t completed;
	uint64_t transport_errors;
	uint64_t connections; /* opened since start */
	int in_flight;
};

struct httpc *httpc_new(struct event_base *base, const struct httpc_config *cfg);
/*
 * Cancel every request in flight without calling its callback, close the
 * pooled connections and free the client. May be called from a completion
 * callback: the rest is then torn down once that callback returns.
 */
void httpc_free(struct httpc *h);
/* New limits (SIGHUP); they apply to transfers started from now on. */
void httpc_set_limits(struct httpc *h, int max_host_connections, int max_total_connections);

/*
 * Start a request; every string and the body are copied. Returns a handle
 * for httpc_cancel(), valid until the callback returns, or NULL with *cause
 * set (free it) if the request could not even be started.
 */
struct httpc_req *httpc_send(
    struct httpc *h, const struct httpc_request *r, httpc_cb cb, void *arg, char **cause);
/* Abandon a request in flight; its callback is not called. */
void httpc_cancel(struct httpc_req *req);

/* A response header by name (first of several), or NULL. Only during the
 * completion callback. */
const char *httpc_result_header(const struct httpc_result *res, const char *name);

void httpc_stats(const struct httpc *h, struct httpc_stats *st);

/* Pure helpers, exposed for the unit tests. */
/*
 * HTTP: 2xx ok; transport errors, timeouts, 429 and 5xx retry; the rest
 * final. SMTP: accepted ok; transport errors, timeouts and 4xx replies
 * retry; 5xx replies (a refused recipient, a refused login) final.
 */
enum httpc_class httpc_classify(const struct httpc_result *res);
const char *httpc_class_name(enum httpc_class c);
/* Seconds from now for a Retry-After value (delay-seconds or HTTP-date),
 * clamped to [0, 86400]; -1 if it is neither. */
int httpc_parse_retry_after(const char *value, time_t now);
/* The URL without user info, query and fragment, for log lines. */
void httpc_redact_url(const char *url, char *out, size_t outlen);

#endif
