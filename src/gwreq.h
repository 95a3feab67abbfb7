/*
 * gwreq.h: building one gateway request, with no I/O. From a gateway's
 * configuration (conf.h [gateway NAME]) and one claimed message, render
 * the message text and subject from the message's templates, then the
 * request the gateway wants: method, URL, header lines and body, each
 * placeholder escaped for where it lands, then basic, bearer or header
 * auth, or an Aliyun or Tencent signature (signer.c). An SMTP gateway
 * gets a complete RFC 5322 message as its body. The clock and the Aliyun
 * nonce are inputs, so a test can expect the exact bytes; notify.c sends
 * the result with httpc.c.
 *
 * Placeholders of gateway templates: to, text, subject, name, meter,
 * balance, amount_due, link, language, message_id, params_json (the
 * message's params as a JSON object of strings, for providers whose
 * templates take parameters, such as Aliyun's TemplateParam), timestamp,
 * and any string param of the message.
 */
#ifndef PREPAIDD_GWREQ_H
#define PREPAIDD_GWREQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "conf.h"

/* One claimed message, as prepaid.claim_messages() returns it (borrowed). */
struct gwreq_msg {
	long long id;
	int attempt;
	const char *to;
	const char *meter; /* NULL: not about a meter */
	const char *language;
	const char *subject_template; /* NULL: no subject */
	const char *text_template;
	json_t *params; /* an object; NULL or anything else: no params */
	int64_t now; /* Unix seconds: timestamp, the mail's Date:, signers */
	const char *nonce; /* Aliyun SignatureNonce, unique per request */
};

/* Header lines: the configured ones, auth, a signer's, Content-Type. */
#define GWREQ_HEADERS_MAX (CONF_GW_HEADERS_MAX + 12)

/*
 * The request; every string is owned by it (gwreq_free) except method and
 * those borrowed from the gateway (user, password, bearer, mail_from),
 * which live as long as its configuration.
 */
struct gwreq {
	char *text; /* the message, rendered */
	char *subject; /* NULL: none */
	const char *method; /* "POST", "GET", "PUT"; NULL for SMTP */
	char *url;
	char *headers[GWREQ_HEADERS_MAX + 1]; /* "Name: value", NULL-terminated */
	char *body; /* NULL: none */
	size_t body_len;
	const char *user; /* basic auth or the SMTP login; NULL: none */
	const char *password;
	const char *bearer;
	const char *mail_from, *mail_rcpt; /* SMTP only */
};

/*
 * Build the request for msg through gw into *out. false with *cause (the
 * caller frees it) when a value cannot be rendered where it lands, the
 * recipient cannot be an e-mail address, or a signer refuses; *out is
 * then already freed.
 */
bool gwreq_build(
    const struct conf_gateway *gw, const struct gwreq_msg *msg, struct gwreq *out, char **cause);
void gwreq_free(struct gwreq *r);

#endif
