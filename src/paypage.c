/*
 * paypage.c: the pay page of paypage.h, rendered from data. One small
 * HTML document per answer, inline CSS, no script and no external asset
 * (the Content-Security-Policy paysite.c sends allows none), every
 * dynamic value escaped, every text in Chinese and English. Amounts are
 * integer fen and energy integer Wh from end to end, formatted here.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <qrencode.h>

#include "paypage.h"

/* ------------------------------------------------------------ requests */

/* The q of one Accept-Language item's parameters ("; q=0.8"), in
 * thousandths. */
static int
paypage_q(const char *p, const char *end)
{
	int q = 1000, scale = 100;

	while (p < end && (p = memchr(p, ';', (size_t)(end - p))) != NULL) {
		p++;
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		if (end - p >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
			p += 2;
			if (p < end && *p == '1')
				return 1000;
			if (p >= end || *p != '0')
				return 0;
			q = 0;
			for (p++, p += p < end && *p == '.';
			     p < end && isdigit((unsigned char)*p) && scale > 0; p++, scale /= 10)
				q += (*p - '0') * scale;
			return q;
		}
	}
	return q;
}

enum paypage_lang
paypage_lang_pick(const char *al)
{
	int zh = -1, en = -1, q;
	const char *p = al, *end, *tag;
	size_t n;

	if (al == NULL)
		return PAYPAGE_ZH;
	while (*p != '\0') {
		end = strchr(p, ',');
		if (end == NULL)
			end = p + strlen(p);
		tag = p;
		while (tag < end && (*tag == ' ' || *tag == '\t'))
			tag++;
		n = strcspn(tag, ";, \t");
		q = paypage_q(tag, end);
		if (n >= 2 && strncasecmp(tag, "zh", 2) == 0 && (n == 2 || tag[2] == '-')) {
			if (q > zh)
				zh = q;
		} else if (n >= 2 && strncasecmp(tag, "en", 2) == 0 && (n == 2 || tag[2] == '-')) {
			if (q > en)
				en = q;
		}
		p = *end != '\0' ? end + 1 : end;
	}
	return en > 0 && en > zh ? PAYPAGE_EN : PAYPAGE_ZH;
}

enum paypage_client
paypage_client_of(const char *ua)
{
	if (ua == NULL)
		return PAYPAGE_DESKTOP;
	if (strstr(ua, "MicroMessenger") != NULL)
		return PAYPAGE_IN_WECHAT;
	if (strstr(ua, "Mobile") != NULL || strstr(ua, "Android") != NULL ||
	    strstr(ua, "iPhone") != NULL)
		return PAYPAGE_MOBILE;
	return PAYPAGE_DESKTOP;
}

bool
paypage_token_ok(const char *s, size_t n)
{
	size_t i;

	if (s == NULL || n != PAYPAGE_TOKEN_LEN)
		return false;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
			return false;
	return true;
}

int64_t
paypage_yuan_parse(const char *s)
{
	int64_t yuan = 0, fen = 0;
	int digits = 0, dec = 0;

	if (s == NULL)
		return -1;
	for (; isdigit((unsigned char)*s); s++) {
		if (++digits > 7)
			return -1;
		yuan = yuan * 10 + (*s - '0');
	}
	if (digits == 0)
		return -1;
	if (*s == '.') {
		for (s++; isdigit((unsigned char)*s); s++) {
			if (++dec > 2)
				return -1;
			fen = fen * 10 + (*s - '0');
		}
		if (dec == 0)
			return -1;
		if (dec == 1)
			fen *= 10;
	}
	if (*s != '\0')
		return -1;
	fen += yuan * 100;
	return fen > 0 && fen <= 100000000 ? fen : -1;
}

int
paypage_amounts_parse(const char *list, int64_t *fen, int max, char *why, size_t whylen)
{
	char word[32];
	const char *p = list;
	int n = 0;
	size_t len;

	while (p != NULL && *p != '\0') {
		p += strspn(p, " \t,");
		len = strcspn(p, " \t,");
		if (len == 0)
			break;
		if (len >= sizeof word) {
			snprintf(why, whylen, "an amount is too long");
			return -1;
		}
		memcpy(word, p, len);
		word[len] = '\0';
		if (n == max) {
			snprintf(why, whylen, "more than %d amounts", max);
			return -1;
		}
		if ((fen[n] = paypage_yuan_parse(word)) < 0) {
			snprintf(why, whylen,
			    "\"%s\" is not a yuan amount (positive, at most 2 decimals)", word);
			return -1;
		}
		n++;
		p += len;
	}
	if (n == 0)
		snprintf(why, whylen, "no amount given");
	return n > 0 ? n : -1;
}

void
paypage_html(struct sbuf *b, const char *s)
{
	const char *run = s;

	if (s == NULL)
		return;
	for (; *s != '\0'; s++) {
		const char *e = *s == '&'    ? "&amp;"
		                : *s == '<'  ? "&lt;"
		                : *s == '>'  ? "&gt;"
		                : *s == '"'  ? "&quot;"
		                : *s == '\'' ? "&#39;"
		                             : NULL;
		if (e == NULL)
			continue;
		sbuf_add(b, run, (size_t)(s - run));
		sbuf_adds(b, e);
		run = s + 1;
	}
	sbuf_add(b, run, (size_t)(s - run));
}

/* ------------------------------------------------------------- limiter */

#define PAYPAGE_UNIT 60000000LL /* units per request; rate is per minute */
#define PAYPAGE_PROBE 8

void
paypage_limiter_init(struct paypage_limiter *l, int rate_per_minute, int burst)
{
	memset(l->slots, 0, sizeof l->slots);
	l->rate_per_minute = rate_per_minute;
	l->burst = burst;
}

static uint32_t
paypage_hash(const char *s)
{
	uint32_t h = 2166136261u;

	for (; *s != '\0'; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

bool
paypage_limiter_take(struct paypage_limiter *l, const char *addr, int64_t now_us)
{
	uint32_t h = paypage_hash(addr);
	struct paypage_limiter_slot *s = NULL, *oldest = NULL, *c;
	int64_t cap = (int64_t)l->burst * PAYPAGE_UNIT;
	int i;

	for (i = 0; i < PAYPAGE_PROBE; i++) {
		c = &l->slots[(h + (uint32_t)i) % PAYPAGE_LIMIT_SLOTS];
		if (c->addr[0] != '\0' && strcmp(c->addr, addr) == 0) {
			s = c;
			break;
		}
		if (oldest == NULL || c->addr[0] == '\0' ||
		    (oldest->addr[0] != '\0' && c->last_us < oldest->last_us))
			oldest = c;
	}
	if (s == NULL) {
		s = oldest;
		snprintf(s->addr, sizeof s->addr, "%s", addr);
		s->units = cap;
		s->last_us = now_us;
	}
	if (now_us > s->last_us) {
		int64_t dt = now_us - s->last_us;

		/* No overflow: a full bucket is reached long before. */
		if (dt > 3600LL * 1000000)
			dt = 3600LL * 1000000;
		s->units += dt * l->rate_per_minute;
		if (s->units > cap)
			s->units = cap;
	}
	s->last_us = now_us;
	if (s->units < PAYPAGE_UNIT)
		return false;
	s->units -= PAYPAGE_UNIT;
	return true;
}

/* Is word one of the space-separated words of list? */
static bool
paypage_word_in(const char *word, const char *list)
{
	size_t n = strlen(word), len;
	const char *s = list;

	if (list == NULL || n == 0)
		return false;
	while (*s != '\0') {
		s += strspn(s, " \t,");
		len = strcspn(s, " \t,");
		if (len == n && strncmp(s, word, n) == 0)
			return true;
		s += len;
	}
	return false;
}

void
paypage_client_addr(
    const char *peer, const char *xff, const char *trusted, char *out, size_t outlen)
{
	const char *last;
	size_t n;

	snprintf(out, outlen, "%s", peer != NULL ? peer : "?");
	if (xff == NULL || peer == NULL || !paypage_word_in(peer, trusted))
		return;
	last = strrchr(xff, ',');
	last = last != NULL ? last + 1 : xff;
	last += strspn(last, " \t");
	n = strcspn(last, " \t");
	if (n == 0 || n >= outlen || strspn(last, "0123456789abcdefABCDEF.:") < n)
		return; /* not an address: count it against the proxy */
	memcpy(out, last, n);
	out[n] = '\0';
}

/* ---------------------------------------------------------------- text */

/* One text in both languages. */
#define T(zh, en) (lang == PAYPAGE_ZH ? (zh) : (en))

static void
paypage_money(struct sbuf *b, int64_t fen)
{
	uint64_t a = fen < 0 ? (uint64_t)0 - (uint64_t)fen : (uint64_t)fen;

	sbuf_printf(
	    b, "%s&#165;%" PRIu64 ".%02u", fen < 0 ? "-" : "", a / 100, (unsigned)(a % 100));
}

static void
paypage_kwh(struct sbuf *b, int64_t wh)
{
	if (wh < 0)
		wh = 0;
	sbuf_printf(b, "%" PRId64 ".%02d", wh / 1000, (int)(wh % 1000) / 10);
}

static const char paypage_css[] =
    "body{font:16px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}"
    "main{max-width:28em;margin:0 auto;padding:1em}"
    "section{background:#fff;border-radius:8px;padding:1em;margin:0 0 1em}"
    "h1{font-size:1.2em;margin:0 0 .5em}"
    ".bal{font-size:2em;font-weight:bold}.neg{color:#b00}"
    ".st{display:inline-block;padding:.1em .5em;border-radius:4px;background:#e8f5e9}"
    ".off{background:#ffebee}.armed{background:#fff8e1}"
    ".note{background:#fff8e1;border-left:4px solid #f0a000}"
    "table{width:100%;border-collapse:collapse}td{padding:.1em 0}"
    ".bar{background:#4a90d9;height:.8em;border-radius:2px}"
    ".amts{display:flex;flex-wrap:wrap;gap:.5em;border:0;padding:0;margin:0 0 1em}"
    ".amts label{flex:1 0 28%}.amts input{margin-right:.3em}"
    "button{font-size:1em;width:100%;padding:.8em;margin:.3em 0;border:0;border-radius:6px;"
    "color:#fff}.ali{background:#1677ff}.wx{background:#07c160}"
    "a{color:#1677ff}.small{font-size:.85em;color:#666}";

static void
paypage_head(struct sbuf *b, enum paypage_lang lang, const char *title, bool refresh)
{
	sbuf_printf(b,
	    "<!DOCTYPE html>\n<html lang=\"%s\"><head><meta charset=\"utf-8\">"
	    "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
	    "<meta name=\"referrer\" content=\"no-referrer\">%s<title>",
	    T("zh-CN", "en"), refresh ? "<meta http-equiv=\"refresh\" content=\"3\">" : "");
	paypage_html(b, title);
	sbuf_printf(b, "</title><style>%s</style></head><body><main>\n", paypage_css);
}

static void
paypage_foot(struct sbuf *b)
{
	sbuf_adds(b, "</main></body></html>\n");
}

static void
paypage_relay(struct sbuf *b, enum paypage_lang lang, const char *relay)
{
	if (relay != NULL && strcmp(relay, "closed") == 0)
		sbuf_printf(
		    b, "<span class=\"st\" id=\"relay\">%s</span>", T("供电正常", "Power on"));
	else if (relay != NULL && strcmp(relay, "open") == 0)
		sbuf_printf(b, "<span class=\"st off\" id=\"relay\">%s</span>",
		    T("已断电", "Power off (tripped)"));
	else if (relay != NULL && strcmp(relay, "armed") == 0)
		sbuf_printf(b, "<span class=\"st armed\" id=\"relay\">%s</span>",
		    T("待恢复供电", "Ready to restore"));
	else
		sbuf_printf(b, "<span class=\"st\" id=\"relay\">%s</span>", T("未知", "Unknown"));
}

/* How to restore power at the meter once it is armed. */
static void
paypage_restore(struct sbuf *b, enum paypage_lang lang)
{
	sbuf_printf(b, "<section class=\"note\" id=\"restore\"><h1>%s</h1><p>%s</p></section>\n",
	    T("恢复供电", "Restore power"),
	    T("请长按电表上的按钮 10 秒以上；或插入 IC 卡，然后按按钮三次。",
	        "Hold the button on the meter for more than 10 seconds, or insert the IC card "
	        "and press the button three times."));
}

static void
paypage_meter_head(
    struct sbuf *b, enum paypage_lang lang, const char *meter, int64_t balance, const char *relay)
{
	sbuf_printf(b, "<section><h1>%s <span id=\"meter\">", T("电表", "Meter"));
	paypage_html(b, meter);
	sbuf_printf(b,
	    "</span></h1><div class=\"small\">%s</div><div class=\"bal%s\" id=\"balance\">",
	    T("余额", "Balance"), balance < 0 ? " neg" : "");
	paypage_money(b, balance);
	sbuf_adds(b, "</div><p>");
	paypage_relay(b, lang, relay);
	sbuf_adds(b, "</p></section>\n");
}

void
paypage_render_meter(const struct paypage_view *v, struct sbuf *b)
{
	enum paypage_lang lang = v->lang;
	int64_t max = 1;
	int i;
	bool armed = v->restoring || (v->relay != NULL && strcmp(v->relay, "armed") == 0);

	paypage_head(b, lang, T("电费充值", "Pay for electricity"), false);
	paypage_meter_head(b, lang, v->meter_id, v->balance_fen, v->relay);
	if (armed)
		paypage_restore(b, lang);
	/* Use, newest day first, with a bar scaled to the largest day. */
	for (i = 0; i < v->ndays; i++)
		if (v->use_wh[i] > max)
			max = v->use_wh[i];
	sbuf_printf(
	    b, "<section><h1>%s</h1><table id=\"use\">", T("最近用电 (kWh)", "Recent use (kWh)"));
	for (i = v->ndays - 1; i >= 0; i--) {
		int days_ago = v->ndays - 1 - i;

		if (days_ago == 0)
			sbuf_printf(b, "<tr><td>%s</td><td>", T("今天", "Today"));
		else if (days_ago == 1)
			sbuf_printf(b, "<tr><td>%s</td><td>", T("昨天", "Yesterday"));
		else
			sbuf_printf(b,
			    lang == PAYPAGE_ZH ? "<tr><td>%d 天前</td><td>"
			                       : "<tr><td>%d days ago</td><td>",
			    days_ago);
		paypage_kwh(b, v->use_wh[i]);
		sbuf_printf(b,
		    "</td><td style=\"width:50%%\"><div class=\"bar\" style=\"width:%d%%\">"
		    "</div></td></tr>",
		    (int)(v->use_wh[i] > 0 ? v->use_wh[i] * 100 / max : 0));
	}
	sbuf_adds(b, "</table></section>\n");
	/* The form: amount radio buttons, one submit button per provider. */
	sbuf_printf(b, "<section><h1>%s</h1>", T("充值", "Top up"));
	if ((!v->wechat && !v->alipay) || v->namounts == 0) {
		sbuf_printf(b, "<p>%s</p></section>\n",
		    T("暂不支持在线支付，请联系物业。",
		        "Online payment is not available; please contact the property office."));
		paypage_foot(b);
		return;
	}
	sbuf_adds(b, "<form method=\"post\" action=\"");
	paypage_html(b, v->pay_action);
	sbuf_adds(b, "\"><fieldset class=\"amts\">");
	for (i = 0; i < v->namounts; i++) {
		int64_t f = v->amounts_fen[i];

		sbuf_printf(b,
		    "<label><input type=\"radio\" name=\"amount\" value=\"%" PRId64 ".%02d\"%s>",
		    f / 100, (int)(f % 100), i == 0 ? " checked" : "");
		paypage_money(b, f);
		sbuf_adds(b, "</label>");
	}
	sbuf_adds(b, "</fieldset>");
	if (v->wechat)
		sbuf_printf(b,
		    "<button class=\"wx\" name=\"via\" value=\"wechat\" "
		    "id=\"pay-wechat\">%s</button>",
		    T("微信支付", "Pay with WeChat Pay"));
	if (v->alipay && v->client != PAYPAGE_IN_WECHAT)
		sbuf_printf(b,
		    "<button class=\"ali\" name=\"via\" value=\"alipay\" "
		    "id=\"pay-alipay\">%s</button>",
		    T("支付宝", "Pay with Alipay"));
	if (v->alipay && !v->wechat && v->client == PAYPAGE_IN_WECHAT)
		sbuf_printf(b, "<p class=\"small\">%s</p>",
		    T("请点击右上角，在浏览器中打开本页以使用支付宝。",
		        "To pay with Alipay, open this page in your browser (menu, top right)."));
	sbuf_adds(b, "</form></section>\n");
	paypage_foot(b);
}

void
paypage_render_result(const struct paypage_result *r, struct sbuf *b)
{
	enum paypage_lang lang = r->lang;
	bool pending = r->state != NULL && strcmp(r->state, "pending") == 0;
	bool paid = r->state != NULL && strcmp(r->state, "paid") == 0;
	bool armed = r->restoring || (r->relay != NULL && strcmp(r->relay, "armed") == 0);

	paypage_head(b, lang, T("支付结果", "Payment result"), pending);
	sbuf_printf(b, "<section><h1 id=\"result\" data-state=\"");
	paypage_html(b, r->state);
	sbuf_adds(b, "\">");
	if (paid)
		sbuf_adds(b, T("支付成功", "Payment received"));
	else if (pending)
		sbuf_adds(b, T("正在确认支付…", "Waiting for the payment to be confirmed…"));
	else if (r->state != NULL && strcmp(r->state, "expired") == 0)
		sbuf_adds(b, T("订单已过期，未扣款", "This order expired; nothing was charged"));
	else
		sbuf_adds(b, T("支付需人工核对，请联系物业", "Payment under review; please contact "
		                                             "the property office"));
	sbuf_printf(b, "</h1><p>%s ", T("金额", "Amount"));
	paypage_money(b, r->amount_fen);
	sbuf_printf(b, "</p><p class=\"small\">%s ", T("订单号", "Order"));
	paypage_html(b, r->out_trade_no);
	sbuf_adds(b, "</p></section>\n");
	paypage_meter_head(b, lang, r->meter_id, r->balance_fen, r->relay);
	if (paid && armed)
		paypage_restore(b, lang);
	sbuf_adds(b, "<p><a href=\"");
	paypage_html(b, r->back);
	sbuf_printf(b, "\">%s</a></p>\n", T("返回", "Back"));
	paypage_foot(b);
}

/* The QR code of text as inline SVG (no image to fetch, so the page's CSP
 * holds): one path, a run of dark modules per subpath, a 4-module quiet
 * zone. Nothing when the text does not fit a QR code. */
static void
paypage_qr_svg(struct sbuf *b, const char *text)
{
	QRcode *qr = QRcode_encodeString8bit(text, 0, QR_ECLEVEL_M);
	int x, y, run;

	if (qr == NULL)
		return;
	sbuf_printf(b,
	    "<svg id=\"qr\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %d %d\" "
	    "width=\"240\" height=\"240\" shape-rendering=\"crispEdges\">"
	    "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/><path fill=\"#000\" d=\"",
	    qr->width + 8, qr->width + 8);
	for (y = 0; y < qr->width; y++) {
		for (x = 0; x<qr->width; x += run> 0 ? run : 1) {
			for (run = 0;
			     x + run < qr->width && (qr->data[y * qr->width + x + run] & 1); run++)
				;
			if (run > 0)
				sbuf_printf(b, "M%d %dh%dv1h-%dz", x + 4, y + 4, run, run);
		}
	}
	sbuf_adds(b, "\"/></svg>");
	QRcode_free(qr);
}

void
paypage_render_code(
    enum paypage_lang lang, const char *code_url, const char *result, struct sbuf *b)
{
	paypage_head(b, lang, T("微信扫码支付", "Scan with WeChat"), false);
	sbuf_printf(b, "<section><h1>%s</h1><p>", T("请用微信扫码支付", "Scan with WeChat to pay"));
	paypage_qr_svg(b, code_url);
	sbuf_adds(b, "</p><p class=\"small\"><a id=\"code\" href=\"");
	paypage_html(b, code_url);
	sbuf_adds(b, "\">");
	paypage_html(b, code_url);
	sbuf_printf(b, "</a></p><p><a href=\"");
	paypage_html(b, result);
	sbuf_printf(b, "\">%s</a></p></section>\n", T("我已支付", "I have paid"));
	paypage_foot(b);
}

/* A JSON text or a URL as a JavaScript string or value inside <script>:
 * nothing in it can end the script or start markup. */
static void
paypage_js(struct sbuf *b, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '<' || *s == '>' || *s == '&' || *s == '\'' || *s == '\n' || *s == '\r')
			sbuf_printf(b, "\\u%04x", (unsigned char)*s);
		else
			sbuf_add(b, s, 1);
	}
}

void
paypage_render_jsapi(enum paypage_lang lang, const char *params, const char *result,
    const char *nonce, struct sbuf *b)
{
	paypage_head(b, lang, T("微信支付", "WeChat Pay"), false);
	sbuf_printf(b, "<section><h1>%s</h1><p><a id=\"result-link\" href=\"",
	    T("正在打开微信支付…", "Opening WeChat Pay…"));
	paypage_html(b, result);
	sbuf_printf(
	    b, "\">%s</a></p></section>\n<script nonce=\"", T("查看支付结果", "See the result"));
	paypage_html(b, nonce);
	sbuf_adds(b, "\">(function(){var p=");
	paypage_js(b, params);
	sbuf_adds(b, ",r='");
	paypage_js(b, result);
	sbuf_adds(b, "';function go(){WeixinJSBridge.invoke('getBrandWCPayRequest',p,function(){"
	             "location.replace(r);});}"
	             "if(typeof WeixinJSBridge==='undefined'){document.addEventListener("
	             "'WeixinJSBridgeReady',go,false);}else{go();}})();</script>\n");
	paypage_foot(b);
}

void
paypage_render_nothing(enum paypage_lang lang, struct sbuf *b)
{
	paypage_head(b, lang, T("链接无效", "Link not valid"), false);
	sbuf_printf(b, "<section><h1 id=\"nothing\">%s</h1><p>%s</p></section>\n",
	    T("链接无效", "This link is not valid"),
	    T("请扫描电表上的二维码，或联系物业。",
	        "Scan the QR code on the meter, or contact the property office."));
	paypage_foot(b);
}

void
paypage_render_message(
    enum paypage_lang lang, enum paypage_msg msg, const char *back, struct sbuf *b)
{
	const char *text;

	switch (msg) {
	case PAYPAGE_MSG_SLOW_DOWN:
		text = T("请求过于频繁，请稍后再试。", "Too many requests; please wait a minute.");
		break;
	case PAYPAGE_MSG_BAD_AMOUNT:
		text = T("请选择金额和支付方式。", "Please choose an amount and a way to pay.");
		break;
	case PAYPAGE_MSG_UNAVAILABLE:
		text = T("暂不支持该支付方式，请选择其他方式或联系物业。",
		    "This way to pay is not available; choose another or contact the property "
		    "office.");
		break;
	case PAYPAGE_MSG_TOO_MANY_ORDERS:
		text = T("未完成的订单过多，请稍后再试。",
		    "Too many unfinished orders for this meter; please try again later.");
		break;
	case PAYPAGE_MSG_BUSY:
	default:
		text =
		    T("服务繁忙，请稍后再试。", "The service is busy; please try again shortly.");
		break;
	}
	paypage_head(b, lang, T("电费充值", "Pay for electricity"), false);
	sbuf_printf(b, "<section><h1 id=\"message\">%s</h1>", text);
	if (back != NULL) {
		sbuf_adds(b, "<p><a href=\"");
		paypage_html(b, back);
		sbuf_printf(b, "\">%s</a></p>", T("返回", "Back"));
	}
	sbuf_adds(b, "</section>\n");
	paypage_foot(b);
}

/* ------------------------------------------------------------ provider */

const char *
paypage_channel_name(enum paypage_channel c)
{
	switch (c) {
	case PAYPAGE_ALIPAY_WAP:
		return "alipay_wap";
	case PAYPAGE_WECHAT_NATIVE:
		return "wechat_native";
	case PAYPAGE_WECHAT_JSAPI:
		return "wechat_jsapi";
	case PAYPAGE_WECHAT_H5:
	default:
		return "wechat_h5";
	}
}

/* Percent-encode s for a query value (RFC 3986 unreserved kept). */
static void
paypage_urlenc(struct sbuf *b, const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
			sbuf_add(b, (const char *)&c, 1);
		else
			sbuf_printf(b, "%%%02X", c);
	}
}

enum paypage_handoff_kind
paypage_stub_handoff(const char *stub_url, const struct paypage_order *o, struct sbuf *b)
{
	char yuan[32];

	if (stub_url == NULL)
		return PAYPAGE_UNAVAILABLE;
	snprintf(
	    yuan, sizeof yuan, "%" PRId64 ".%02d", o->amount_fen / 100, (int)(o->amount_fen % 100));
	sbuf_adds(b, stub_url);
	sbuf_adds(b, strchr(stub_url, '?') != NULL ? "&" : "?");
	sbuf_adds(b, "out_trade_no=");
	paypage_urlenc(b, o->out_trade_no);
	sbuf_adds(b, "&total_amount=");
	paypage_urlenc(b, yuan);
	sbuf_adds(b, "&meter=");
	paypage_urlenc(b, o->meter_id);
	sbuf_adds(b, "&channel=");
	paypage_urlenc(b, paypage_channel_name(o->channel));
	sbuf_adds(b, "&return_url=");
	paypage_urlenc(b, o->return_url);
	if (o->oauth_code != NULL) {
		sbuf_adds(b, "&oauth_code=");
		paypage_urlenc(b, o->oauth_code);
	}
	return PAYPAGE_REDIRECT;
}
