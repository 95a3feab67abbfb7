#!/usr/bin/python3
"""tests/it/paypage_browser.py: the pay page in a real headless Chromium,
driven through Selenium (Debian's chromium, chromium-driver and
python3-selenium), started by tests/it/paypage-browser.sh.

It also plays the fake Alipay WAP cashier: the page's order is handed to
http://127.0.0.1:<PP_CASHIER_PORT>/cashier, which shows the order and a
"pay" button; paying there has tests/paysign send the signed Alipay
notification to the daemon, then sends the browser back to the return URL,
as Alipay does.

Exit status: 0 passed, 1 failed, 77 Chromium could not start.
"""
import html
import os
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ENV = os.environ
PAID = []


def ok(what):
    print("ok - " + what, flush=True)


def fail(what):
    print("FAIL: " + what, file=sys.stderr, flush=True)
    sys.exit(1)


class Cashier(BaseHTTPRequestHandler):
    """The fake Alipay WAP cashier."""

    def log_message(self, *args):
        pass

    def reply(self, code, body, location=None):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.path != "/cashier" or "out_trade_no" not in q:
            return self.reply(404, "no")
        fields = "".join(
            '<input type="hidden" name="%s" value="%s">' % (k, html.escape(v))
            for k, v in q.items())
        self.reply(200, "<!DOCTYPE html><title>Fake Alipay</title>"
                   "<p id='amount'>%s</p><form method='post' action='/cashier/pay'>%s"
                   "<button id='confirm'>Pay</button></form>"
                   % (html.escape(q.get("total_amount", "")), fields))

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        q = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
        rc = subprocess.run(
            [ENV["PAYSIGN"], "alipay", ENV["PP_ALI"], "--keys", ENV["KEYS"],
             "--out-trade-no", q["out_trade_no"], "--trade-no",
             "20261207" + q["out_trade_no"][-10:], "--total", q["total_amount"],
             "--expect", "200"], capture_output=True, text=True)
        if rc.returncode != 0:
            return self.reply(500, "notification refused: " + html.escape(rc.stderr))
        PAID.append((q["out_trade_no"], q["total_amount"], q.get("channel")))
        self.reply(302, "", location=q["return_url"])


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = ENV.get("CHROMIUM", "/usr/bin/chromium")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--lang=en-US",
              "--user-data-dir=" + tempfile.mkdtemp(prefix="chromium.", dir=ENV.get("LIB_TMP"))):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    service = Service(executable_path=ENV.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    try:
        return webdriver.Chrome(service=service, options=opts)
    except WebDriverException as e:
        print("SKIP: Chromium could not start: %s" % str(e).splitlines()[0], file=sys.stderr)
        sys.exit(77)


def text(d, css):
    return d.find_element(By.CSS_SELECTOR, css).text


def shows_nothing(d, url, what):
    d.get(url)
    body = d.find_element(By.TAG_NAME, "body").text
    if not d.find_elements(By.ID, "nothing"):
        fail("%s: not the 'not valid' page: %r" % (what, body[:300]))
    for leak in ("PPB1", "PPB2", "Balance", "¥", "kWh"):
        if leak in body or leak in d.page_source:
            fail("%s: the page shows %r" % (what, leak))
    if d.find_elements(By.TAG_NAME, "form"):
        fail("%s: the page has a form" % what)
    ok("%s shows nothing about any meter" % what)
    return d.page_source


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", int(ENV["PP_CASHIER_PORT"])), Cashier)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    d = browser()
    try:
        d.set_page_load_timeout(20)
        d.get(ENV["PP_URL"])
        ok("opened the meter's link: %s" % d.title)
        if text(d, "#meter") != "PPB1":
            fail("meter shown: %r" % text(d, "#meter"))
        if text(d, "#balance") != "-¥12.34":
            fail("balance shown: %r" % text(d, "#balance"))
        ok("the page shows meter PPB1 and its balance -¥12.34")
        if "Power off" not in text(d, "#relay"):
            fail("relay shown: %r" % text(d, "#relay"))
        ok("the page says the power is off")
        if d.find_elements(By.ID, "restore"):
            fail("restore instructions before paying")

        d.find_element(By.CSS_SELECTOR, "input[name=amount][value='50.00']").click()
        d.find_element(By.ID, "pay-alipay").click()
        WebDriverWait(d, 15).until(lambda x: x.find_elements(By.ID, "confirm"))
        if text(d, "#amount") != "50.00":
            fail("the cashier got amount %r" % text(d, "#amount"))
        ok("handed over to the (fake) Alipay cashier for 50.00 yuan")
        d.find_element(By.ID, "confirm").click()
        WebDriverWait(d, 30).until(
            lambda x: x.find_elements(By.CSS_SELECTOR, "#result[data-state=paid]"))
        if not PAID or PAID[0][2] != "alipay_wap":
            fail("the cashier did not pay through the WAP channel: %r" % PAID)
        ok("back on the result page: %s" % text(d, "#result"))
        if text(d, "#balance") != "¥37.66":
            fail("balance after paying: %r" % text(d, "#balance"))
        ok("the result shows the new balance ¥37.66")
        restore = text(d, "#restore")
        for want in ("more than 10 seconds", "insert the IC card", "three times"):
            if want not in restore:
                fail("restore instructions lack %r: %r" % (want, restore))
        ok("the result says how to restore power: %s" % restore.replace("\n", " "))

        wrong = shows_nothing(d, ENV["PP_WRONG"], "a wrong token")
        revoked = shows_nothing(d, ENV["PP_REVOKED"], "a revoked token")
        if wrong != revoked:
            fail("the wrong and the revoked token's pages differ")
        ok("the wrong and the revoked token's pages are the same")
    finally:
        d.quit()
        srv.shutdown()
    print("PASS")


if __name__ == "__main__":
    main()
