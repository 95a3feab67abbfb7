/*
 * template.h: the one template language of prepaidd, used for message texts
 * (per channel and language) and for HTTP gateway requests (URL, headers,
 * body). A template is parsed once, when the config is checked, so that a
 * bad one fails `prepaidd -n`; it is then rendered many times, each value
 * escaped for where it lands (a JSON string, a form field, a URL component,
 * a header value). Pure functions, no I/O, no global state.
 *
 * Syntax:
 *   {{name}}    a placeholder; name is [a-z0-9_.]+, spaces or tabs may
 *               surround it inside the braces: {{ balance }}.
 *   {{#name}}text{{/name}}
 *               a section: text (placeholders included) is kept when name
 *               has a non-empty value, and left out, with no error, when
 *               it is empty or missing: "Please top up{{#link}}: {{link}}
 *               {{/link}}." for an optional field. Sections nest (at most
 *               8 deep); each must be closed, innermost first.
 *   {{{{        a literal "{{" (doubled, like printf's %%).
 *   { and }     any other brace is literal, so JSON bodies need no escaping:
 *               {"text":"{{text}}"} is a valid template.
 * A "{{" that is not closed by "}}" on the same line, before the next "{{",
 * is an error ("unterminated").
 *
 * Errors are returned through char **cause: an xmalloc'd message the caller
 * frees (cause may be NULL if the caller does not want it). Messages name
 * the placeholder and the byte offset (0-based) of its "{{" in the template
 * text, so the config layer can prefix them with file:line. They never
 * contain a value: values may be phone numbers or names.
 */
#ifndef PREPAIDD_TEMPLATE_H
#define PREPAIDD_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "common.h"

/*
 * How a value is escaped where it lands. Every mode but TEMPLATE_RAW
 * rejects a value that is not valid UTF-8 (a render error), since gateways
 * expect UTF-8 and would otherwise deliver mojibake to the occupant.
 */
enum template_mode {
	TEMPLATE_RAW = 0, /* as is: message texts */
	TEMPLATE_JSON, /* inside a JSON string literal the template already
	                  quotes: " \ and control characters escaped,
	                  UTF-8 kept as is */
	TEMPLATE_FORM, /* application/x-www-form-urlencoded field: all but
	                  A-Z a-z 0-9 - . _ ~ percent-encoded, space as + */
	TEMPLATE_URL, /* one RFC 3986 component (query value or path
	                 segment): as FORM but space as %20; / is encoded */
	TEMPLATE_HEADER /* an HTTP header value: as is, but CR, LF and other
	                   control characters (except tab) are an error,
	                   so a value cannot inject a header */
};

/* "raw", "json", "form", "url", "header"; false if s is none of them. */
bool template_mode_parse(const char *s, enum template_mode *mode);
const char *template_mode_name(enum template_mode mode);

struct template;

/*
 * Parse text (copied: the caller keeps its string). known, if not NULL, is a
 * NULL-terminated list of the placeholder names the caller can supply; a
 * placeholder outside it is an error ("unknown placeholder 'x' at offset
 * N"). With known == NULL any well-formed name is accepted; check them later
 * with template_names(). Returns NULL and sets *cause on error.
 */
struct template *template_parse(const char *text, const char *const *known, char **cause);
void template_free(struct template *t);

/* The template text as parsed (owned by t). */
const char *template_text(const struct template *t);

/*
 * The distinct placeholder names t uses, in order of first use, as a
 * NULL-terminated array owned by t (valid until template_free). *n, if not
 * NULL, receives the count.
 */
const char *const *template_names(const struct template *t, size_t *n);

/*
 * Where values come from. Returns the value of name as a NUL-terminated
 * string, borrowed: it must stay valid until template_render returns; or
 * NULL if the caller does not know the name (a render error).
 */
typedef const char *(*template_lookup_fn)(void *arg, const char *name);
/*
 * Render. In TEMPLATE_JSON mode a placeholder whose name ends in "_json"
 * (params_json) is a JSON value the caller built and is inserted as is,
 * not as the content of a string; in every other mode it is escaped like
 * any value.
 */

/*
 * Render t with values from lookup, each escaped for mode. Returns an
 * xmalloc'd NUL-terminated string the caller frees, or NULL with *cause set
 * (an unknown name, or a value the mode rejects). Literal template text is
 * never escaped: it is the template author's JSON, form or URL.
 */
char *template_render(const struct template *t, enum template_mode mode, template_lookup_fn lookup,
    void *arg, char **cause);

/* A name/value pair; arrays of them end with { NULL, NULL }. */
struct template_var {
	const char *name;
	const char *value;
};

/* template_render with values from vars (borrowed; the caller owns them). */
char *template_render_vars(const struct template *t, enum template_mode mode,
    const struct template_var *vars, char **cause);

/*
 * Append value (len bytes) to out escaped for mode, as template_render does.
 * Returns false and sets *cause (without naming a placeholder) if the mode
 * rejects the value; out then holds a partial result.
 */
bool template_escape(
    struct sbuf *out, enum template_mode mode, const char *value, size_t len, char **cause);

/*
 * Money for message texts. in is a plain decimal as PostgreSQL prints a
 * numeric: -?[0-9]+(\.[0-9]{1,7})?, at most TEMPLATE_MONEY_IN_MAX characters
 * (more than 7 decimals is refused: it smells of floating point). out gets
 * yuan with exactly 2 decimals, rounded half away from zero with string
 * arithmetic: "12.345" -> "12.35", "-0.005" -> "-0.01", "7" -> "7.00",
 * "007.1" -> "7.10". A result that rounds to zero has no sign: "-0.004" ->
 * "0.00" (an occupant should never read "-0.00"). Returns false and sets
 * *cause if in is not such a decimal.
 */
#define TEMPLATE_MONEY_IN_MAX 64
#define TEMPLATE_MONEY_MAX (TEMPLATE_MONEY_IN_MAX + 8)
bool template_money(const char *in, char out[TEMPLATE_MONEY_MAX], char **cause);

#endif
