/*
 * gwreq.c: gateway requests, as gwreq.h describes. Secrets go into the
 * request only (auth fields, signatures); nothing here logs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "gwreq.h"
#include "signer.h"
#include "template.h"

/* What the placeholders of one message read. */
struct gwreq_ctx {
	const struct gwreq_msg *msg;
	const struct gwreq *out; /* text and subject, once rendered */
	char *params_json;
	char id_text[24], stamp[32];
};

static const char *
gwreq_lookup(void *arg, const char *name)
{
	struct gwreq_ctx *c = arg;
	json_t *v;

	if (strcmp(name, "to") == 0)
		return c->msg->to;
	if (strcmp(name, "text") == 0)
		return c->out->text;
	if (strcmp(name, "subject") == 0)
		return c->out->subject ? c->out->subject : "";
	if (strcmp(name, "params_json") == 0)
		return c->params_json;
	if (strcmp(name, "message_id") == 0)
		return c->id_text;
	if (strcmp(name, "timestamp") == 0)
		return c->stamp;
	if (strcmp(name, "language") == 0)
		return c->msg->language;
	if (strcmp(name, "meter") == 0 && c->msg->meter != NULL)
		return c->msg->meter;
	v = json_object_get(c->msg->params, name);
	if (json_is_string(v))
		return json_string_value(v);
	return NULL;
}

/* Render a template text with the message's placeholders, escaped for mode. */
static char *
gwreq_render(struct gwreq_ctx *c, const char *text, enum template_mode mode, char **cause)
{
	struct template *t = template_parse(text, NULL, cause);
	char *out;

	if (t == NULL)
		return NULL;
	out = template_render(t, mode, gwreq_lookup, c, cause);
	template_free(t);
	return out;
}

/* Decode an application/x-www-form-urlencoded body into pairs (for Aliyun). */
static size_t
gwreq_form_pairs(char *body, struct signer_param *p, size_t max)
{
	size_t n = 0;
	char *pair, *save = NULL, *r, *w;

	for (pair = strtok_r(body, "&", &save); pair != NULL && n < max;
	     pair = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(pair, '=');

		if (eq == NULL)
			continue;
		*eq = '\0';
		p[n].name = pair;
		p[n].value = eq + 1;
		for (r = w = eq + 1; *r; r++, w++) {
			if (*r == '+')
				*w = ' ';
			else if (*r == '%' && r[1] && r[2]) {
				char hex[3] = {r[1], r[2], '\0'};

				*w = (char)strtol(hex, NULL, 16);
				r += 2;
			} else
				*w = *r;
		}
		*w = '\0';
		n++;
	}
	return n;
}

/* Base64 of len bytes, wrapped at 76 characters with CRLF when wrap is set. */
static void
gwreq_base64(struct sbuf *out, const void *data, size_t len, bool wrap)
{
	const unsigned char *p = data;
	unsigned char chunk[57 * 4 / 3 + 4];
	size_t off, n;

	for (off = 0; off < len; off += n) {
		n = len - off < 57 ? len - off : 57;
		EVP_EncodeBlock(chunk, p + off, (int)n);
		sbuf_adds(out, (const char *)chunk);
		if (wrap)
			sbuf_adds(out, "\r\n");
	}
}

/*
 * An RFC 5322 message for an SMTP gateway: the headers are written here
 * (the subject as a UTF-8 encoded word, so no value can add a header line),
 * the text goes base64-encoded. Returns NULL with *cause when the recipient
 * cannot be an address.
 */
static char *
gwreq_mail(const struct gwreq_msg *msg, const char *subject, const char *from, const char *text,
    char **cause)
{
	struct sbuf b = {0};
	char date[64];
	time_t now = (time_t)msg->now;
	struct tm tm;

	if (strpbrk(msg->to, "\r\n<>") != NULL || strchr(msg->to, '@') == NULL ||
	    strpbrk(from, "\r\n<>") != NULL || strchr(from, '@') == NULL) {
		xasprintf(cause, "the recipient or the sender is not an e-mail address");
		return NULL;
	}
	gmtime_r(&now, &tm);
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
	sbuf_printf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: =?UTF-8?B?", from, msg->to);
	gwreq_base64(&b, subject ? subject : "", subject ? strlen(subject) : 0, false);
	sbuf_printf(&b,
	    "?=\r\nDate: %s\r\nMessage-ID: <prepaidd.%lld.%d@%s>\r\n"
	    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=UTF-8\r\n"
	    "Content-Transfer-Encoding: base64\r\n\r\n",
	    date, msg->id, msg->attempt, strchr(from, '@') + 1);
	gwreq_base64(&b, text, strlen(text), true);
	return b.p;
}

static bool
gwreq_smtp(const struct conf_gateway *gw, struct gwreq_ctx *c, struct gwreq *out, char **cause)
{
	char *mailtext = NULL;

	if (gw->body != NULL && (mailtext = gwreq_render(c, gw->body, TEMPLATE_RAW, cause)) == NULL)
		return false;
	out->body = gwreq_mail(c->msg, out->subject, gw->mail_from ? gw->mail_from : "",
	    mailtext ? mailtext : out->text, cause);
	free(mailtext);
	if (out->body == NULL)
		return false;
	out->body_len = strlen(out->body);
	out->mail_from = gw->mail_from;
	out->mail_rcpt = c->msg->to;
	if (gw->username != NULL) {
		out->user = gw->username;
		out->password = gw->secret;
	}
	return true;
}

static bool
gwreq_sign_aliyun(
    const struct conf_gateway *gw, const struct gwreq_msg *msg, struct gwreq *out, char **cause)
{
	struct signer_param p[64];
	struct signer_aliyun_req ar;
	char *why = NULL;
	size_t np = gwreq_form_pairs(out->body, p, ARRAY_SIZE(p));
	char *signed_body;

	memset(&ar, 0, sizeof ar);
	ar.access_key_id = gw->access_key_id;
	ar.access_key_secret = gw->secret;
	ar.action = gw->action ? gw->action : "SendSms";
	ar.version = gw->api_version ? gw->api_version : "2017-05-25";
	ar.region_id = gw->region;
	ar.nonce = msg->nonce;
	ar.timestamp = msg->now;
	signed_body = signer_aliyun_form(&ar, p, np, &why);
	if (signed_body == NULL) {
		xasprintf(cause, "aliyun signer: %s", why ? why : "refused");
		free(why);
		return false;
	}
	free(out->body);
	out->body = signed_body;
	out->body_len = strlen(signed_body);
	return true;
}

static bool
gwreq_sign_tencent(const struct conf_gateway *gw, const struct gwreq_msg *msg, struct gwreq *out,
    int *nh, char **cause)
{
	struct signer_tc3_req tr;
	struct signer_tc3 tc3;
	char host[256] = "";
	const char *h = strstr(out->url, "://");
	char *why = NULL;
	size_t j;

	if (h != NULL) {
		h += 3;
		for (j = 0; h[j] && h[j] != '/' && h[j] != ':' && j + 1 < sizeof host; j++)
			host[j] = h[j];
		host[j] = '\0';
	}
	memset(&tr, 0, sizeof tr);
	memset(&tc3, 0, sizeof tc3);
	tr.secret_id = gw->access_key_id;
	tr.secret_key = gw->secret;
	tr.service = gw->service ? gw->service : "sms";
	tr.host = host;
	tr.action = gw->action ? gw->action : "SendSms";
	tr.version = gw->api_version ? gw->api_version : "2021-01-11";
	tr.region = gw->region;
	tr.timestamp = msg->now;
	tr.content_type = gw->content_type;
	tr.payload = out->body;
	tr.payload_len = out->body_len;
	if (!signer_tc3_sign(&tr, &tc3, &why)) {
		xasprintf(cause, "tencent signer: %s", why ? why : "refused");
		free(why);
		return false;
	}
	for (j = 0; tc3.headers[j] != NULL && *nh < GWREQ_HEADERS_MAX - 1; j++)
		out->headers[(*nh)++] = xstrdup(tc3.headers[j]);
	signer_tc3_free(&tc3);
	return true;
}

static const char *const gwreq_methods[] = {"POST", "GET", "PUT"};

static bool
gwreq_http(const struct conf_gateway *gw, struct gwreq_ctx *c, struct gwreq *out, char **cause)
{
	int i, nh = 0;
	bool signed_headers = false;

	for (i = 0; i < gw->nheaders; i++) {
		char *val = gwreq_render(
		    c, gw->header_value[i] ? gw->header_value[i] : "", TEMPLATE_HEADER, cause);

		if (val == NULL)
			return false;
		xasprintf(&out->headers[nh++], "%s: %s", gw->header_name[i], val);
		free(val);
	}
	if (gw->body != NULL) {
		if ((out->body = gwreq_render(c, gw->body, gw->body_mode, cause)) == NULL)
			return false;
		out->body_len = strlen(out->body);
	}
	if (gw->auth == CONF_GW_AUTH_HEADER && gw->auth_header != NULL)
		xasprintf(
		    &out->headers[nh++], "%s: %s", gw->auth_header, gw->secret ? gw->secret : "");
	if (gw->signer == CONF_GW_SIGNER_ALIYUN && out->body != NULL) {
		if (!gwreq_sign_aliyun(gw, c->msg, out, cause))
			return false;
	} else if (gw->signer == CONF_GW_SIGNER_TENCENT && out->body != NULL) {
		if (!gwreq_sign_tencent(gw, c->msg, out, &nh, cause))
			return false;
		signed_headers = true; /* they carry the Content-Type signed */
	}
	if (gw->content_type != NULL && !signed_headers)
		xasprintf(&out->headers[nh++], "Content-Type: %s", gw->content_type);
	out->method = gwreq_methods[gw->method];
	if (gw->auth == CONF_GW_AUTH_BASIC) {
		out->user = gw->username ? gw->username : "";
		out->password = gw->secret;
	} else if (gw->auth == CONF_GW_AUTH_BEARER)
		out->bearer = gw->secret;
	return true;
}

bool
gwreq_build(
    const struct conf_gateway *gw, const struct gwreq_msg *msg, struct gwreq *out, char **cause)
{
	struct gwreq_ctx c;
	json_t *pj = json_object(), *v;
	const char *k;
	time_t now = (time_t)msg->now;
	struct tm tm;
	bool ok = false;

	memset(out, 0, sizeof *out);
	memset(&c, 0, sizeof c);
	c.msg = msg;
	c.out = out;
	snprintf(c.id_text, sizeof c.id_text, "%lld", msg->id);
	gmtime_r(&now, &tm);
	strftime(c.stamp, sizeof c.stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
	/* params_json: every string param, for provider-side templates */
	if (json_is_object(msg->params)) {
		json_object_foreach(msg->params, k, v)
		{
			if (json_is_string(v))
				json_object_set(pj, k, v);
		}
	}
	c.params_json = json_dumps(pj, JSON_COMPACT);
	json_decref(pj);

	/* The message itself, then the request. */
	if ((out->text = gwreq_render(&c, msg->text_template, TEMPLATE_RAW, cause)) == NULL)
		goto done;
	if (msg->subject_template != NULL &&
	    (out->subject = gwreq_render(&c, msg->subject_template, TEMPLATE_RAW, cause)) == NULL)
		goto done;
	if ((out->url = gwreq_render(&c, gw->url, TEMPLATE_URL, cause)) == NULL)
		goto done;
	ok = gw->type == CONF_GW_SMTP ? gwreq_smtp(gw, &c, out, cause)
	                              : gwreq_http(gw, &c, out, cause);
done:
	free(c.params_json);
	if (!ok)
		gwreq_free(out);
	return ok;
}

void
gwreq_free(struct gwreq *r)
{
	size_t i;

	if (r == NULL)
		return;
	free(r->text);
	free(r->subject);
	free(r->url);
	for (i = 0; i < ARRAY_SIZE(r->headers); i++)
		free(r->headers[i]);
	free(r->body);
	memset(r, 0, sizeof *r);
}
