/*
 * template.c: parsing and rendering of the {{placeholder}} templates
 * described in template.h, the escaping of values for JSON strings, form
 * fields, URL components and header values, and exact money formatting for
 * message texts. Parsing turns the text into a list of parts (literal runs
 * of the source, or a reference to a name) so that rendering, which happens
 * for every message, is one pass with no re-scanning and no error but a bad
 * value.
 */
#include <stdlib.h>
#include <string.h>

#include "template.h"

/* Longest piece of template text quoted in an error message. */
#define TEMPLATE_QUOTE_MAX 40

enum template_part_kind {
	TEMPLATE_LITERAL,
	TEMPLATE_NAME, /* {{name}} */
	TEMPLATE_OPEN, /* {{#name}}: a section, kept when name is not empty */
	TEMPLATE_CLOSE /* {{/name}} */
};

struct template_part {
	size_t off; /* literal: start in text; name: offset of its "{{" */
	size_t len; /* literal: length; name: unused */
	int name; /* index into names, or -1 for a literal */
	enum template_part_kind kind;
};

/* How deep sections may nest. */
#define TEMPLATE_DEPTH_MAX 8

struct template
{
	char *text;
	struct template_part *parts;
	size_t nparts, partcap;
	char **names; /* NULL-terminated */
	size_t nnames;
};

static const char *template_mode_names[] = {"raw", "json", "form", "url", "header"};

bool
template_mode_parse(const char *s, enum template_mode *mode)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(template_mode_names); i++) {
		if (strcmp(s, template_mode_names[i]) == 0) {
			*mode = (enum template_mode)i;
			return true;
		}
	}
	return false;
}

const char *
template_mode_name(enum template_mode mode)
{
	if ((size_t)mode >= ARRAY_SIZE(template_mode_names))
		return "?";
	return template_mode_names[mode];
}

PRINTFLIKE(2, 3) static void template_cause(char **cause, const char *fmt, ...)
{
	va_list ap;

	if (cause == NULL)
		return;
	va_start(ap, fmt);
	xvasprintf(cause, fmt, ap);
	va_end(ap);
}

static void
template_add_part_kind(
    struct template *t, size_t off, size_t len, int name, enum template_part_kind kind)
{
	if (name < 0 && len == 0)
		return;
	if (t->nparts == t->partcap) {
		t->partcap = t->partcap ? t->partcap * 2 : 8;
		t->parts = xreallocarray(t->parts, t->partcap, sizeof *t->parts);
	}
	t->parts[t->nparts].off = off;
	t->parts[t->nparts].len = len;
	t->parts[t->nparts].name = name;
	t->parts[t->nparts].kind = kind;
	t->nparts++;
}

static void
template_add_part(struct template *t, size_t off, size_t len, int name)
{
	template_add_part_kind(t, off, len, name, name < 0 ? TEMPLATE_LITERAL : TEMPLATE_NAME);
}

/* Index of name (len bytes) in t's names, adding it if new. */
static int
template_add_name(struct template *t, const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < t->nnames; i++) {
		if (strlen(t->names[i]) == len && memcmp(t->names[i], name, len) == 0)
			return (int)i;
	}
	t->names = xreallocarray(t->names, t->nnames + 2, sizeof *t->names);
	t->names[t->nnames] = xstrndup(name, len);
	t->names[t->nnames + 1] = NULL;
	return (int)t->nnames++;
}

static bool
template_known(const char *const *known, const char *name, size_t len)
{
	for (; *known != NULL; known++) {
		if (strlen(*known) == len && memcmp(*known, name, len) == 0)
			return true;
	}
	return false;
}

static bool
template_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
}

/*
 * Parse the placeholder whose "{{" is at text + at. On success adds the
 * part and returns the offset just past its "}}"; on error returns 0 (a
 * placeholder never ends at offset 0).
 */
static size_t
template_parse_name(struct template *t, size_t at, const char *const *known, char **cause)
{
	const char *s = t->text;
	size_t i = at + 2, end, b, e;
	enum template_part_kind kind = TEMPLATE_NAME;

	/*
	 * The end is the first "}}"; a newline, another "{{" or the end of the
	 * text first means this one was never closed, which is the mistake a
	 * reader makes ("Hi {{name, pay {{amount}}"), not a strange name.
	 */
	while (s[i] != '\0' && s[i] != '\n' && !(s[i] == '}' && s[i + 1] == '}') &&
	       !(s[i] == '{' && s[i + 1] == '{'))
		i++;
	if (s[i] != '}') {
		template_cause(cause, "unterminated '{{' at offset %zu", at);
		return 0;
	}
	end = i + 2;

	for (b = at + 2; b < i && (s[b] == ' ' || s[b] == '\t'); b++)
		;
	if (b < i && (s[b] == '#' || s[b] == '/')) {
		kind = s[b] == '#' ? TEMPLATE_OPEN : TEMPLATE_CLOSE;
		b++;
	}
	for (e = i; e > b && (s[e - 1] == ' ' || s[e - 1] == '\t'); e--)
		;
	if (b == e) {
		template_cause(cause, "empty placeholder at offset %zu", at);
		return 0;
	}
	for (i = b; i < e; i++) {
		if (!template_name_char(s[i])) {
			template_cause(cause,
			    "invalid placeholder name '%.*s' at offset %zu (names are [a-z0-9_.])",
			    (int)(e - b > TEMPLATE_QUOTE_MAX ? TEMPLATE_QUOTE_MAX : e - b), s + b,
			    at);
			return 0;
		}
	}
	if (known != NULL && !template_known(known, s + b, e - b)) {
		template_cause(cause, "unknown placeholder '%.*s' at offset %zu",
		    (int)(e - b > TEMPLATE_QUOTE_MAX ? TEMPLATE_QUOTE_MAX : e - b), s + b, at);
		return 0;
	}
	template_add_part_kind(t, at, 0, template_add_name(t, s + b, e - b), kind);
	return end;
}

/* Sections must nest: every {{#x}} closed by {{/x}}, innermost first. */
static bool
template_check_sections(const struct template *t, char **cause)
{
	const struct template_part *open[TEMPLATE_DEPTH_MAX];
	size_t i, depth = 0;

	for (i = 0; i < t->nparts; i++) {
		const struct template_part *pt = &t->parts[i];

		if (pt->kind == TEMPLATE_OPEN) {
			if (depth == TEMPLATE_DEPTH_MAX) {
				template_cause(cause,
				    "sections nested more than %d deep at offset %zu",
				    TEMPLATE_DEPTH_MAX, pt->off);
				return false;
			}
			open[depth++] = pt;
		} else if (pt->kind == TEMPLATE_CLOSE) {
			if (depth == 0 || open[depth - 1]->name != pt->name) {
				template_cause(cause,
				    "'{{/%s}}' at offset %zu closes no open section%s%s",
				    t->names[pt->name], pt->off, depth > 0 ? ": open is " : "",
				    depth > 0 ? t->names[open[depth - 1]->name] : "");
				return false;
			}
			depth--;
		}
	}
	if (depth > 0) {
		template_cause(cause, "section '%s' at offset %zu is not closed ('{{/%s}}')",
		    t->names[open[depth - 1]->name], open[depth - 1]->off,
		    t->names[open[depth - 1]->name]);
		return false;
	}
	return true;
}

struct template *
template_parse(const char *text, const char *const *known, char **cause)
{
	struct template *t;
	const char *s;
	size_t i = 0, lit = 0;

	if (cause != NULL)
		*cause = NULL;
	t = xcalloc(1, sizeof *t);
	t->text = xstrdup(text);
	t->names = xcalloc(1, sizeof *t->names);
	s = t->text;

	while (s[i] != '\0') {
		if (s[i] != '{' || s[i + 1] != '{') {
			i++;
			continue;
		}
		if (s[i + 2] == '{' && s[i + 3] == '{') {
			/* "{{{{": keep the first two braces, skip the others. */
			template_add_part(t, lit, i + 2 - lit, -1);
			i += 4;
			lit = i;
			continue;
		}
		template_add_part(t, lit, i - lit, -1);
		i = template_parse_name(t, i, known, cause);
		if (i == 0) {
			template_free(t);
			return NULL;
		}
		lit = i;
	}
	template_add_part(t, lit, i - lit, -1);
	if (!template_check_sections(t, cause)) {
		template_free(t);
		return NULL;
	}
	return t;
}

void
template_free(struct template *t)
{
	size_t i;

	if (t == NULL)
		return;
	for (i = 0; i < t->nnames; i++)
		free(t->names[i]);
	free(t->names);
	free(t->parts);
	free(t->text);
	free(t);
}

const char *
template_text(const struct template *t)
{
	return t->text;
}

const char *const *
template_names(const struct template *t, size_t *n)
{
	if (n != NULL)
		*n = t->nnames;
	return (const char *const *)t->names;
}

/*
 * Length of the valid UTF-8 sequence at p (at most n bytes available), or 0
 * if it is not one: overlong forms, surrogates and code points past
 * U+10FFFF are refused, as JSON parsers (jansson among them) refuse them.
 */
static size_t
template_utf8_len(const unsigned char *p, size_t n)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t len, k;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if (n < len || p[1] < lo || p[1] > hi)
		return 0;
	for (k = 2; k < len; k++) {
		if (p[k] < 0x80 || p[k] > 0xbf)
			return 0;
	}
	return len;
}

static bool
template_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

static void
template_escape_json(struct sbuf *out, unsigned char c)
{
	switch (c) {
	case '"':
		sbuf_add(out, "\\\"", 2);
		break;
	case '\\':
		sbuf_add(out, "\\\\", 2);
		break;
	case '\b':
		sbuf_add(out, "\\b", 2);
		break;
	case '\f':
		sbuf_add(out, "\\f", 2);
		break;
	case '\n':
		sbuf_add(out, "\\n", 2);
		break;
	case '\r':
		sbuf_add(out, "\\r", 2);
		break;
	case '\t':
		sbuf_add(out, "\\t", 2);
		break;
	default:
		/* Other C0 controls, and DEL which some gateways choke on. */
		if (c < 0x20 || c == 0x7f)
			sbuf_printf(out, "\\u%04x", c);
		else
			sbuf_add(out, (const char *)&c, 1);
		break;
	}
}

bool
template_escape(
    struct sbuf *out, enum template_mode mode, const char *value, size_t len, char **cause)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p = (const unsigned char *)value;
	size_t i = 0, n, k;
	char pct[3] = {'%', 0, 0};

	if (mode == TEMPLATE_RAW) {
		sbuf_add(out, value, len);
		return true;
	}
	while (i < len) {
		n = template_utf8_len(p + i, len - i);
		if (n == 0) {
			template_cause(
			    cause, "value is not valid UTF-8 (byte 0x%02x at %zu)", p[i], i);
			return false;
		}
		for (k = i; k < i + n; k++) {
			switch (mode) {
			case TEMPLATE_JSON:
				template_escape_json(out, p[k]);
				break;
			case TEMPLATE_FORM:
			case TEMPLATE_URL:
				if (template_unreserved(p[k]))
					sbuf_add(out, (const char *)p + k, 1);
				else if (p[k] == ' ' && mode == TEMPLATE_FORM)
					sbuf_add(out, "+", 1);
				else {
					pct[1] = hex[p[k] >> 4];
					pct[2] = hex[p[k] & 15];
					sbuf_add(out, pct, 3);
				}
				break;
			case TEMPLATE_HEADER:
				if ((p[k] < 0x20 && p[k] != '\t') || p[k] == 0x7f) {
					template_cause(cause,
					    "value contains control character 0x%02x at %zu, not "
					    "allowed in a header",
					    p[k], k);
					return false;
				}
				sbuf_add(out, (const char *)p + k, 1);
				break;
			case TEMPLATE_RAW:
				break;
			}
		}
		i += n;
	}
	return true;
}

static bool
template_is_json_name(const char *name)
{
	size_t n = strlen(name);

	return n > 5 && strcmp(name + n - 5, "_json") == 0;
}

char *
template_render(const struct template *t, enum template_mode mode, template_lookup_fn lookup,
    void *arg, char **cause)
{
	struct sbuf b = {0};
	const struct template_part *pt;
	const char *name, *value;
	char *why;
	size_t i;

	if (cause != NULL)
		*cause = NULL;
	sbuf_add(&b, "", 0);
	for (i = 0; i < t->nparts; i++) {
		pt = &t->parts[i];
		if (pt->kind == TEMPLATE_LITERAL) {
			sbuf_add(&b, t->text + pt->off, pt->len);
			continue;
		}
		if (pt->kind == TEMPLATE_CLOSE)
			continue;
		name = t->names[pt->name];
		value = lookup(arg, name);
		if (pt->kind == TEMPLATE_OPEN) {
			/* An empty or missing optional field: leave its section out
			 * (sections nest, checked when parsed). */
			if (value == NULL || value[0] == '\0') {
				size_t depth = 1;

				while (depth > 0 && ++i < t->nparts) {
					if (t->parts[i].kind == TEMPLATE_OPEN)
						depth++;
					else if (t->parts[i].kind == TEMPLATE_CLOSE)
						depth--;
				}
			}
			continue;
		}
		if (value == NULL) {
			template_cause(
			    cause, "unknown placeholder '%s' at offset %zu", name, pt->off);
			goto fail;
		}
		why = NULL;
		/* A *_json placeholder is a JSON value already: in a JSON body it
		 * goes in as is (it must not be quoted), elsewhere it is escaped
		 * like any text. */
		if (mode == TEMPLATE_JSON && template_is_json_name(name)) {
			sbuf_adds(&b, value);
			continue;
		}
		if (!template_escape(&b, mode, value, strlen(value), &why)) {
			template_cause(cause, "placeholder '%s' at offset %zu: %s (%s)", name,
			    pt->off, why, template_mode_name(mode));
			free(why);
			goto fail;
		}
	}
	return b.p;

fail:
	free(b.p);
	return NULL;
}

static const char *
template_vars_lookup(void *arg, const char *name)
{
	const struct template_var *v;

	for (v = arg; v->name != NULL; v++) {
		if (strcmp(v->name, name) == 0)
			return v->value;
	}
	return NULL;
}

char *
template_render_vars(const struct template *t, enum template_mode mode,
    const struct template_var *vars, char **cause)
{
	/* The lookup only reads vars; the cast is the price of a void * arg. */
	return template_render(t, mode, template_vars_lookup, (void *)(uintptr_t)vars, cause);
}

static bool
template_digit(char c)
{
	return c >= '0' && c <= '9';
}

bool
template_money(const char *in, char out[TEMPLATE_MONEY_MAX], char **cause)
{
	char d[TEMPLATE_MONEY_MAX]; /* integer digits and two decimals, no point */
	const char *p = in, *ib, *ie, *fb = NULL, *fe = NULL;
	bool neg = false, zero;
	size_t n, i, o = 0;

	if (strnlen(in, TEMPLATE_MONEY_IN_MAX + 1) > TEMPLATE_MONEY_IN_MAX) {
		template_cause(cause, "amount too long");
		return false;
	}
	if (*p == '-') {
		neg = true;
		p++;
	}
	for (ib = p; template_digit(*p); p++)
		;
	ie = p;
	if (*p == '.') {
		for (fb = ++p; template_digit(*p); p++)
			;
		fe = p;
	}
	if (ie == ib || *p != '\0' || (fb != NULL && fe == fb)) {
		template_cause(cause, "amount is not a plain decimal");
		return false;
	}
	if (fb != NULL && fe - fb > 7) {
		template_cause(cause, "amount has more than 7 decimals");
		return false;
	}

	/* Integer part without leading zeros ("0" if nothing is left), then cents. */
	while (ie - ib > 1 && *ib == '0')
		ib++;
	n = (size_t)(ie - ib);
	memcpy(d, ib, n);
	for (i = 0; i < 2; i++)
		d[n++] = (fb != NULL && fb + i < fe) ? fb[i] : '0';

	/*
	 * Half away from zero works on the magnitude: the third decimal alone
	 * decides, since 5 there is already at least half a cent whatever
	 * follows.
	 */
	if (fb != NULL && fe - fb > 2 && fb[2] >= '5') {
		for (i = n; i > 0; i--) {
			if (d[i - 1] != '9') {
				d[i - 1]++;
				break;
			}
			d[i - 1] = '0';
		}
		if (i == 0) {
			memmove(d + 1, d, n);
			d[0] = '1';
			n++;
		}
	}

	zero = true;
	for (i = 0; i < n; i++) {
		if (d[i] != '0')
			zero = false;
	}
	if (neg && !zero)
		out[o++] = '-';
	memcpy(out + o, d, n - 2);
	o += n - 2;
	out[o++] = '.';
	out[o++] = d[n - 2];
	out[o++] = d[n - 1];
	out[o] = '\0';
	return true;
}
