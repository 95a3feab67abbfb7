/*
 * check_template.c: unit tests of template.c. What an occupant and a gateway
 * care about: a name with quotes, backslashes, ampersands, newlines, Chinese
 * or control bytes arrives intact inside a body that still parses (checked
 * with jansson and with an independent form decoder, not by comparing
 * strings); a bad template is refused at config-check time with the offset
 * to fix; and money reads exactly, rounded half away from zero.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <jansson.h>

#include "template.h"

/* A name that tries to break every body format at once. */
static const char hostile[] = "Li \"Lei\" \\ O'Brien & Co=1+1 50%\n\tline2 王小明\x01\x1f\x7f end";

static struct template *
parse_ok(const char *text)
{
	char *cause = NULL;
	struct template *t = template_parse(text, NULL, &cause);

	ck_assert_msg(t != NULL, "parse '%s': %s", text, cause ? cause : "?");
	ck_assert_ptr_null(cause);
	return t;
}

/* Render text with vars in mode; the template and the result must be fine. */
static char *
render_ok(const char *text, enum template_mode mode, const struct template_var *vars)
{
	struct template *t = parse_ok(text);
	char *cause = NULL, *out;

	out = template_render_vars(t, mode, vars, &cause);
	ck_assert_msg(out != NULL, "render '%s': %s", text, cause ? cause : "?");
	ck_assert_ptr_null(cause);
	template_free(t);
	return out;
}

/* Parse must fail with exactly this message. */
static void
parse_fails(const char *text, const char *const *known, const char *expect)
{
	char *cause = NULL;
	struct template *t = template_parse(text, known, &cause);

	ck_assert_msg(t == NULL, "'%s' parsed", text);
	ck_assert_ptr_nonnull(cause);
	ck_assert_str_eq(cause, expect);
	free(cause);
}

/* Render must fail with exactly this message, which must not leak value. */
static void
render_fails(const char *text, enum template_mode mode, const char *value, const char *expect)
{
	struct template_var vars[] = {{"v", value}, {NULL, NULL}};
	struct template *t = parse_ok(text);
	char *cause = NULL, *out;

	out = template_render_vars(t, mode, vars, &cause);
	ck_assert_msg(out == NULL, "rendered '%s'", out);
	ck_assert_ptr_nonnull(cause);
	ck_assert_str_eq(cause, expect);
	free(cause);
	template_free(t);
}

START_TEST(json_body_keeps_hostile_name_intact_and_valid)
{
	struct template_var vars[] = {
	    {"name", hostile}, {"phone", "+8613800138000"}, {"balance", "-12.35"}, {NULL, NULL}};
	json_error_t jerr;
	json_t *root, *v;
	char *out, expect_text[256];

	out = render_ok("{\"to\":\"{{phone}}\",\"name\":\"{{ name }}\","
	                "\"text\":\"{{name}}, balance {{balance}} yuan\",\"obj\":{\"n\":1}}",
	    TEMPLATE_JSON, vars);
	root = json_loads(out, 0, &jerr);
	ck_assert_msg(root != NULL, "not JSON (%s): %s", jerr.text, out);
	v = json_object_get(root, "name");
	ck_assert(json_is_string(v));
	ck_assert_uint_eq(json_string_length(v), strlen(hostile));
	ck_assert_str_eq(json_string_value(v), hostile);
	snprintf(expect_text, sizeof expect_text, "%s, balance -12.35 yuan", hostile);
	ck_assert_str_eq(json_string_value(json_object_get(root, "text")), expect_text);
	ck_assert_str_eq(json_string_value(json_object_get(root, "to")), "+8613800138000");
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(root, "obj"), "n")), 1);
	/* Chinese stays UTF-8 (not \u escapes); controls use the short forms or \u00XX. */
	ck_assert_ptr_nonnull(strstr(out, "王小明\\u0001\\u001f\\u007f end"));
	ck_assert_ptr_nonnull(strstr(out, "\\\"Lei\\\" \\\\ O'Brien"));
	ck_assert_ptr_nonnull(strstr(out, "50%\\n\\tline2"));
	json_decref(root);
	free(out);
}
END_TEST

START_TEST(json_placeholders_ending_in_json_go_in_as_json)
{
	struct template_var vars[] = {
	    {"params_json", "{\"name\":\"O\\\"B\",\"n\":\"1\"}"}, {"name", "A&B"}, {NULL, NULL}};
	json_error_t jerr;
	json_t *root;
	char *out;

	/* In a JSON body the value is a JSON object, not a string's content. */
	out = render_ok("{\"p\":{{params_json}},\"n\":\"{{name}}\"}", TEMPLATE_JSON, vars);
	root = json_loads(out, 0, &jerr);
	ck_assert_msg(root != NULL, "not JSON (%s): %s", jerr.text, out);
	ck_assert_str_eq(
	    json_string_value(json_object_get(json_object_get(root, "p"), "name")), "O\"B");
	json_decref(root);
	free(out);
	/* In a form it is one escaped field like any other value. */
	out = render_ok("TemplateParam={{params_json}}", TEMPLATE_FORM, vars);
	ck_assert_str_eq(
	    out, "TemplateParam=%7B%22name%22%3A%22O%5C%22B%22%2C%22n%22%3A%221%22%7D");
	free(out);
}
END_TEST

START_TEST(json_every_control_byte_round_trips)
{
	char value[64], *out;
	struct template_var vars[] = {{"v", value}, {NULL, NULL}};
	json_error_t jerr;
	json_t *root;
	size_t i, n = 0;

	for (i = 1; i < 0x20; i++)
		value[n++] = (char)i;
	value[n++] = 0x7f;
	value[n++] = '"';
	value[n++] = '\\';
	value[n++] = '/';
	value[n] = '\0';
	out = render_ok("[\"{{v}}\"]", TEMPLATE_JSON, vars);
	for (i = 0; out[i] != '\0'; i++)
		ck_assert_msg((unsigned char)out[i] >= 0x20 && out[i] != 0x7f,
		    "raw control byte 0x%02x in JSON output", (unsigned char)out[i]);
	root = json_loads(out, 0, &jerr);
	ck_assert_msg(root != NULL, "not JSON (%s): %s", jerr.text, out);
	ck_assert_str_eq(json_string_value(json_array_get(root, 0)), value);
	json_decref(root);
	free(out);
}
END_TEST

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decode one x-www-form-urlencoded component ('+' is space); NULL if malformed. */
static char *
form_decode(const char *s, size_t len)
{
	char *out = malloc(len + 1);
	size_t i, o = 0;

	for (i = 0; i < len; i++) {
		if (s[i] == '+')
			out[o++] = ' ';
		else if (s[i] == '%') {
			if (i + 2 >= len)
				goto bad;
			if (hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
				goto bad;
			out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		} else
			out[o++] = s[i];
	}
	out[o] = '\0';
	return out;
bad:
	free(out);
	return NULL;
}

/* The decoded value of key in a form body, or NULL; the caller frees it. */
static char *
form_get(const char *body, const char *key)
{
	const char *p = body, *amp, *eq;
	char *k, *v;

	while (*p != '\0') {
		amp = strchr(p, '&');
		if (amp == NULL)
			amp = p + strlen(p);
		eq = memchr(p, '=', (size_t)(amp - p));
		ck_assert_msg(eq != NULL, "field without '=' in %s", body);
		k = form_decode(p, (size_t)(eq - p));
		ck_assert_ptr_nonnull(k);
		if (strcmp(k, key) == 0) {
			free(k);
			v = form_decode(eq + 1, (size_t)(amp - eq - 1));
			ck_assert_ptr_nonnull(v);
			return v;
		}
		free(k);
		p = *amp ? amp + 1 : amp;
	}
	return NULL;
}

START_TEST(form_body_decodes_back_to_the_values)
{
	const char *text = "a&b=c+d e 王小明 100% ~x*y";
	struct template_var vars[] = {
	    {"phone", "+86 138-0013-8000"}, {"text", text}, {"name", hostile}, {NULL, NULL}};
	char *out, *v;
	size_t i, nfields = 1;

	out = render_ok("To={{phone}}&Body={{text}}&Name={{name}}&Fixed=1", TEMPLATE_FORM, vars);
	/* Only the template's own & and = may appear raw. */
	for (i = 0; out[i] != '\0'; i++) {
		if (out[i] == '&')
			nfields++;
		ck_assert_msg(
		    strchr("%+&=-._~", out[i]) != NULL || (out[i] >= 'A' && out[i] <= 'Z') ||
		        (out[i] >= 'a' && out[i] <= 'z') || (out[i] >= '0' && out[i] <= '9'),
		    "unescaped 0x%02x in %s", (unsigned char)out[i], out);
	}
	ck_assert_uint_eq(nfields, 4);
	ck_assert_ptr_nonnull(strstr(out, "Body=a%26b%3Dc%2Bd+e+%E7%8E%8B"));
	v = form_get(out, "To");
	ck_assert_str_eq(v, "+86 138-0013-8000");
	free(v);
	v = form_get(out, "Body");
	ck_assert_str_eq(v, text);
	free(v);
	v = form_get(out, "Name");
	ck_assert_str_eq(v, hostile);
	free(v);
	v = form_get(out, "Fixed");
	ck_assert_str_eq(v, "1");
	free(v);
	free(out);
}
END_TEST

START_TEST(url_mode_percent_encodes_components)
{
	struct template_var vars[] = {
	    {"q", "a b/c?d&e=f+g~h.i_j-k 王"}, {"id", "m-1.2"}, {NULL, NULL}};
	char *out;

	out = render_ok("https://gw.example/send/{{id}}?q={{q}}&x=1", TEMPLATE_URL, vars);
	ck_assert_str_eq(out,
	    "https://gw.example/send/m-1.2?q=a%20b%2Fc%3Fd%26e%3Df%2Bg~h.i_j-k%20%E7%8E%8B&x=1");
	free(out);
}
END_TEST

START_TEST(raw_mode_inserts_values_as_they_are)
{
	struct template_var vars[] = {{"name", hostile}, {"balance", "-0.01"}, {NULL, NULL}};
	char *out, expect[256];

	out = render_ok("尊敬的{{name}}：您的余额为{{balance}}元。", TEMPLATE_RAW, vars);
	snprintf(expect, sizeof expect, "尊敬的%s：您的余额为-0.01元。", hostile);
	ck_assert_str_eq(out, expect);
	free(out);
	/* RAW does not judge bytes: that is the escaping modes' job. */
	vars[0].value = "\xff\xfe";
	out = render_ok("{{name}}", TEMPLATE_RAW, vars);
	ck_assert_str_eq(out, "\xff\xfe");
	free(out);
}
END_TEST

START_TEST(header_mode_refuses_injection)
{
	struct template_var vars[] = {{"v", "Bearer abc\ttoken 王"}, {NULL, NULL}};
	char *out;

	out = render_ok("X-Name: {{v}}", TEMPLATE_HEADER, vars);
	ck_assert_str_eq(out, "X-Name: Bearer abc\ttoken 王");
	free(out);
	render_fails("X: {{v}}", TEMPLATE_HEADER, "Li\r\nX-Evil: 1",
	    "placeholder 'v' at offset 3: value contains control character 0x0d at 2, not "
	    "allowed in a header (header)");
	render_fails("X: {{v}}", TEMPLATE_HEADER, "Li\nX-Evil: 1",
	    "placeholder 'v' at offset 3: value contains control character 0x0a at 2, not "
	    "allowed in a header (header)");
}
END_TEST

START_TEST(invalid_utf8_is_rejected_in_escaping_modes)
{
	static const struct {
		const char *value, *why;
	} bad[] = {
	    {"a\x80", "byte 0x80 at 1"}, /* lone continuation */
	    {"\xc0\xaf", "byte 0xc0 at 0"}, /* overlong '/' */
	    {"ab\xe0\x80\xaf", "byte 0xe0 at 2"}, /* overlong, 3 bytes */
	    {"\xed\xa0\x80", "byte 0xed at 0"}, /* UTF-16 surrogate */
	    {"\xf4\x90\x80\x80", "byte 0xf4 at 0"}, /* past U+10FFFF */
	    {"王\xe7\x8e", "byte 0xe7 at 3"}, /* truncated */
	    {"\xff", "byte 0xff at 0"},
	};
	enum template_mode modes[] = {TEMPLATE_JSON, TEMPLATE_FORM, TEMPLATE_URL, TEMPLATE_HEADER};
	char expect[200];
	size_t i, m;

	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		for (m = 0; m < ARRAY_SIZE(modes); m++) {
			snprintf(expect, sizeof expect,
			    "placeholder 'v' at offset 5: value is not valid UTF-8 (%s) (%s)",
			    bad[i].why, template_mode_name(modes[m]));
			render_fails("{\"x\":{{v}}}", modes[m], bad[i].value, expect);
		}
	}
	/* The largest code point and a 4-byte emoji are fine. */
	{
		struct template_var vars[] = {{"v", "\xf4\x8f\xbf\xbf😀"}, {NULL, NULL}};
		char *out = render_ok("\"{{v}}\"", TEMPLATE_JSON, vars);

		ck_assert_str_eq(out, "\"\xf4\x8f\xbf\xbf😀\"");
		free(out);
	}
}
END_TEST

START_TEST(unknown_placeholder_names_it_and_its_offset)
{
	static const char *const known[] = {"name", "balance", "meter.id", NULL};
	struct template_var vars[] = {{"name", "x"}, {NULL, NULL}};
	struct template *t;
	char *cause = NULL;

	parse_fails("Dear {{name}}, meter {{ meter_id }}", known,
	    "unknown placeholder 'meter_id' at offset 21");
	t = template_parse("Dear {{name}}, meter {{ meter.id }}, {{balance}}", known, &cause);
	ck_assert_ptr_nonnull(t);
	ck_assert_ptr_null(cause);
	/* Known to the template, not supplied at render time: same message shape. */
	ck_assert_ptr_null(template_render_vars(t, TEMPLATE_RAW, vars, &cause));
	ck_assert_str_eq(cause, "unknown placeholder 'meter.id' at offset 21");
	free(cause);
	/* A NULL cause is allowed. */
	ck_assert_ptr_null(template_render_vars(t, TEMPLATE_RAW, vars, NULL));
	template_free(t);
	ck_assert_ptr_null(template_parse("{{nope}}", known, NULL));
}
END_TEST

START_TEST(malformed_placeholders_fail_with_offsets)
{
	parse_fails("Hello {{name", NULL, "unterminated '{{' at offset 6");
	parse_fails("Hello {{", NULL, "unterminated '{{' at offset 6");
	parse_fails("Hi {{name, pay {{amount}}", NULL, "unterminated '{{' at offset 3");
	parse_fails("{{name\n}}", NULL, "unterminated '{{' at offset 0");
	parse_fails("ok {{a}} {{b}", NULL, "unterminated '{{' at offset 9");
	parse_fails("x{{}}", NULL, "empty placeholder at offset 1");
	parse_fails("x{{ \t }}", NULL, "empty placeholder at offset 1");
	parse_fails(
	    "{{Name}}", NULL, "invalid placeholder name 'Name' at offset 0 (names are [a-z0-9_.])");
	parse_fails(
	    "ab{{a b}}", NULL, "invalid placeholder name 'a b' at offset 2 (names are [a-z0-9_.])");
	parse_fails("{{{name}}}", NULL,
	    "invalid placeholder name '{name' at offset 0 (names are [a-z0-9_.])");
	parse_fails(
	    "{{a-b}}", NULL, "invalid placeholder name 'a-b' at offset 0 (names are [a-z0-9_.])");
}
END_TEST

/* An optional field in a section: the text reads well when it is empty. */
START_TEST(sections_leave_out_an_empty_optional_field)
{
	const char *text = "Balance {{balance}} yuan. Please top up{{#link}}: {{link}}{{/link}}.";
	struct template_var with[] = {
	    {"balance", "5.00"}, {"link", "https://pay.example/m"}, {NULL, NULL}};
	struct template_var empty[] = {{"balance", "5.00"}, {"link", ""}, {NULL, NULL}};
	struct template_var missing[] = {{"balance", "5.00"}, {NULL, NULL}};
	struct template_var nested[] = {{"a", "x"}, {"b", ""}, {NULL, NULL}};
	char *out;

	out = render_ok(text, TEMPLATE_RAW, with);
	ck_assert_str_eq(out, "Balance 5.00 yuan. Please top up: https://pay.example/m.");
	free(out);
	out = render_ok(text, TEMPLATE_RAW, empty);
	ck_assert_str_eq(out, "Balance 5.00 yuan. Please top up.");
	free(out);
	out = render_ok(text, TEMPLATE_RAW, missing);
	ck_assert_str_eq(out, "Balance 5.00 yuan. Please top up.");
	free(out);
	/* nested: an empty inner section inside a kept outer one */
	out = render_ok("[{{#a}}<{{a}}{{#b}}({{b}}){{/b}}>{{/a}}]", TEMPLATE_RAW, nested);
	ck_assert_str_eq(out, "[<x>]");
	free(out);
	out = render_ok("[{{#b}}<{{#a}}{{a}}{{/a}}>{{/b}}]", TEMPLATE_RAW, nested);
	ck_assert_str_eq(out, "[]");
	free(out);
	/* spaces inside the braces, as for names */
	out = render_ok("a{{ #link }}b{{ /link }}c", TEMPLATE_RAW, empty);
	ck_assert_str_eq(out, "ac");
	free(out);
}
END_TEST

START_TEST(sections_must_nest)
{
	parse_fails("x{{#a}}y", NULL, "section 'a' at offset 1 is not closed ('{{/a}}')");
	parse_fails("x{{/a}}", NULL, "'{{/a}}' at offset 1 closes no open section");
	parse_fails("{{#a}}{{#b}}{{/a}}{{/b}}", NULL,
	    "'{{/a}}' at offset 12 closes no open section: open is b");
	parse_fails("{{#A}}{{/A}}", NULL,
	    "invalid placeholder name 'A' at offset 0 (names are [a-z0-9_.])");
	parse_fails("{{#}}", NULL, "empty placeholder at offset 0");
}
END_TEST

START_TEST(literal_braces)
{
	struct template_var vars[] = {{"name", "Lei"}, {NULL, NULL}};
	char *out;

	out = render_ok("{{{{not a placeholder}} {{name}} }} { } {x}", TEMPLATE_RAW, vars);
	ck_assert_str_eq(out, "{{not a placeholder}} Lei }} { } {x}");
	free(out);
	out = render_ok("{{{{{{{{", TEMPLATE_RAW, vars);
	ck_assert_str_eq(out, "{{{{");
	free(out);
	/* JSON bodies need no escaping of their own braces. */
	out = render_ok("{\"a\":{\"b\":\"{{name}}\"}}", TEMPLATE_JSON, vars);
	ck_assert_str_eq(out, "{\"a\":{\"b\":\"Lei\"}}");
	free(out);
	out = render_ok("", TEMPLATE_JSON, vars);
	ck_assert_str_eq(out, "");
	free(out);
	out = render_ok("{{name}}{{name}}", TEMPLATE_RAW, vars);
	ck_assert_str_eq(out, "LeiLei");
	free(out);
}
END_TEST

START_TEST(names_lists_distinct_placeholders_in_order)
{
	struct template *t = parse_ok("{{b}} {{ a }} {{b}} {{{{c}} {{meter.id}} {{a}}");
	const char *const *names;
	size_t n = 99;

	names = template_names(t, &n);
	ck_assert_uint_eq(n, 3);
	ck_assert_str_eq(names[0], "b");
	ck_assert_str_eq(names[1], "a");
	ck_assert_str_eq(names[2], "meter.id");
	ck_assert_ptr_null(names[3]);
	ck_assert_str_eq(template_text(t), "{{b}} {{ a }} {{b}} {{{{c}} {{meter.id}} {{a}}");
	template_free(t);

	t = parse_ok("no placeholders");
	names = template_names(t, NULL);
	ck_assert_ptr_null(names[0]);
	template_free(t);
	template_free(NULL);
}
END_TEST

static const char *
count_lookup(void *arg, const char *name)
{
	int *calls = arg;

	(*calls)++;
	return strcmp(name, "n") == 0 ? "7" : NULL;
}

START_TEST(parsed_once_rendered_many_times_with_a_callback)
{
	struct template *t = parse_ok("{\"n\":\"{{n}}\",\"m\":\"{{ n }}\"}");
	char *out, *cause = NULL;
	int i, calls = 0;

	for (i = 0; i < 100; i++) {
		out = template_render(t, TEMPLATE_JSON, count_lookup, &calls, &cause);
		ck_assert_ptr_nonnull(out);
		ck_assert_str_eq(out, "{\"n\":\"7\",\"m\":\"7\"}");
		free(out);
	}
	ck_assert_int_eq(calls, 200);
	template_free(t);
}
END_TEST

START_TEST(mode_names)
{
	enum template_mode m;

	ck_assert(template_mode_parse("json", &m) && m == TEMPLATE_JSON);
	ck_assert(template_mode_parse("form", &m) && m == TEMPLATE_FORM);
	ck_assert(template_mode_parse("url", &m) && m == TEMPLATE_URL);
	ck_assert(template_mode_parse("raw", &m) && m == TEMPLATE_RAW);
	ck_assert(template_mode_parse("header", &m) && m == TEMPLATE_HEADER);
	ck_assert(!template_mode_parse("JSON", &m));
	ck_assert_str_eq(template_mode_name(TEMPLATE_FORM), "form");
}
END_TEST

static void
money_is(const char *in, const char *expect)
{
	char out[TEMPLATE_MONEY_MAX];
	char *why = NULL;

	ck_assert_msg(template_money(in, out, &why), "'%s' refused: %s", in, why);
	ck_assert_msg(strcmp(out, expect) == 0, "'%s' -> '%s', expected '%s'", in, out, expect);
}

static void
money_refused(const char *in, const char *expect_why)
{
	char out[TEMPLATE_MONEY_MAX];
	char *why = NULL;

	ck_assert_msg(!template_money(in, out, &why), "'%s' accepted", in);
	ck_assert_str_eq(why, expect_why);
	free(why);
}

START_TEST(money_rounds_half_away_from_zero_exactly)
{
	char big[TEMPLATE_MONEY_IN_MAX + 2];

	money_is("12.345", "12.35");
	money_is("-0.005", "-0.01");
	money_is("7", "7.00");
	money_is("0", "0.00");
	money_is("-0", "0.00");
	money_is("0.0", "0.00");
	money_is("-0.004", "0.00");
	money_is("-0.0049999", "0.00");
	money_is("0.0049999", "0.00");
	money_is("0.005", "0.01");
	money_is("12.344", "12.34");
	money_is("-12.3456789", "-12.35");
	money_is("-12.3449999", "-12.34");
	money_is("12.3", "12.30");
	money_is("12.30", "12.30");
	money_is("1.995", "2.00");
	money_is("-1.995", "-2.00");
	money_is("9.995", "10.00");
	money_is("-99.9950000", "-100.00");
	money_is("0.9999999", "1.00");
	money_is("007.1", "7.10");
	money_is("-000.004", "0.00");
	/* numeric(20,7) extremes, and beyond what any double holds exactly. */
	money_is("9999999999999.9999999", "10000000000000.00");
	money_is("-9999999999999.9949999", "-9999999999999.99");
	money_is("123456789012345678901234567890.125", "123456789012345678901234567890.13");
	money_is("0.1234567", "0.12");

	money_refused("", "amount is not a plain decimal");
	money_refused("-", "amount is not a plain decimal");
	money_refused("+1", "amount is not a plain decimal");
	money_refused(".5", "amount is not a plain decimal");
	money_refused("5.", "amount is not a plain decimal");
	money_refused("1e3", "amount is not a plain decimal");
	money_refused("1,000.00", "amount is not a plain decimal");
	money_refused(" 1", "amount is not a plain decimal");
	money_refused("1 ", "amount is not a plain decimal");
	money_refused("NaN", "amount is not a plain decimal");
	money_refused("--1", "amount is not a plain decimal");
	money_refused("1.2.3", "amount is not a plain decimal");
	money_refused("0x10", "amount is not a plain decimal");
	money_refused("1.23456789", "amount has more than 7 decimals");
	memset(big, '9', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	money_refused(big, "amount too long");
	/* The longest accepted input fits the output, carry included. */
	big[TEMPLATE_MONEY_IN_MAX] = '\0';
	big[TEMPLATE_MONEY_IN_MAX - 4] = '.';
	{
		char out[TEMPLATE_MONEY_MAX];

		ck_assert(template_money(big, out, NULL));
		ck_assert_uint_eq(strlen(out), TEMPLATE_MONEY_IN_MAX - 4 + 1 + 3);
		ck_assert(out[0] == '1' && strcmp(out + strlen(out) - 3, ".00") == 0);
	}
}
END_TEST

static Suite *
template_suite(void)
{
	Suite *s = suite_create("template");
	TCase *tc;

	tc = tcase_create("escaping");
	tcase_add_test(tc, json_body_keeps_hostile_name_intact_and_valid);
	tcase_add_test(tc, json_every_control_byte_round_trips);
	tcase_add_test(tc, form_body_decodes_back_to_the_values);
	tcase_add_test(tc, url_mode_percent_encodes_components);
	tcase_add_test(tc, raw_mode_inserts_values_as_they_are);
	tcase_add_test(tc, header_mode_refuses_injection);
	tcase_add_test(tc, invalid_utf8_is_rejected_in_escaping_modes);
	suite_add_tcase(s, tc);

	tc = tcase_create("syntax");
	tcase_add_test(tc, unknown_placeholder_names_it_and_its_offset);
	tcase_add_test(tc, malformed_placeholders_fail_with_offsets);
	tcase_add_test(tc, literal_braces);
	tcase_add_test(tc, names_lists_distinct_placeholders_in_order);
	tcase_add_test(tc, parsed_once_rendered_many_times_with_a_callback);
	tcase_add_test(tc, mode_names);
	tcase_add_test(tc, sections_leave_out_an_empty_optional_field);
	tcase_add_test(tc, sections_must_nest);
	tcase_add_test(tc, json_placeholders_ending_in_json_go_in_as_json);
	suite_add_tcase(s, tc);

	tc = tcase_create("money");
	tcase_add_test(tc, money_rounds_half_away_from_zero_exactly);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(template_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
