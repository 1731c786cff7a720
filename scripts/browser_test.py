#!/usr/bin/env python3
"""The waiting room's page (`/campaigns/{id}/room`) in a real browser: headless
Chromium driven by Playwright, against a running api with its worker (the rows
are checked). scripts/browser-test brings one up and runs this; it can also run
against any stack:

  ROOM_TEST_BASE=http://127.0.0.1:8080 ROOM_TEST_ADMIN_TOKEN=… ROOM_TEST_JWT_SECRET=… \\
  ROOM_TEST_STOP='…' ROOM_TEST_START='…' scripts/browser_test.py [--shots DIR] [scenario…]

ROOM_TEST_STOP and ROOM_TEST_START are shell commands that stop the api the
page talks to and bring it back (START returns once it answers again);
ROOM_TEST_EMBEDDER is an origin in the api's APP_HTTP__ROOM_PAGE_ORIGINS
(default http://localhost:28090; the test serves
the shop's page there, and from http://127.0.0.1 on the same port, an origin not
in the list). Each scenario makes campaigns of its own and waits
on states the page shows (`#room[data-state]`) or the api reports, never on a
fixed delay, except the one check that polling stops while the tab is hidden
(an absence is seen only over a window of time; it cannot fail because the
machine is slow).

Scenarios: signed_link (join, the line moves, admitted, a double click issues
once, a reload shows the coupon), reload (keyboard only; a reload while the
issue is in flight issues once), not_started (the start in the user's time
zone), sold_out, closed (and polling paused while hidden), embedded (the
token by postMessage from an allowed origin; framing refused to another),
unavailable (the api stops and comes back). Screenshots of each state go to
--shots (default target/browser-test).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
BASE = os.environ.get("ROOM_TEST_BASE", "http://127.0.0.1:28080").rstrip("/")
ADMIN = os.environ.get("ROOM_TEST_ADMIN_TOKEN", "")
SECRET = os.environ.get("ROOM_TEST_JWT_SECRET", "")
EMBEDDER = os.environ.get("ROOM_TEST_EMBEDDER", "http://localhost:28090")
CHROMIUM = os.environ.get("ROOM_TEST_CHROMIUM", "/usr/bin/chromium")
RUN = uuid.uuid4().hex[:6]
# Generous: the machine may be busy building.
WAIT_MS = 30_000
PHONE = {"width": 390, "height": 520}


def log(message):
    print(f"[browser-test] {message}", file=sys.stderr, flush=True)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(user, ttl=3600):
    """An HS256 user token, as the shop would mint it."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": user, "exp": int(time.time()) + ttl}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(signature)}"


def http(method, path, token=None, body=None, headers=None):
    request = urllib.request.Request(BASE + path, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, data, timeout=15) as reply:
            raw, status, got = reply.read(), reply.status, reply.headers
    except urllib.error.HTTPError as e:
        raw, status, got = e.read(), e.code, e.headers
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"raw": raw.decode(errors="replace")}
    return status, parsed, got


def until(what, check, within=WAIT_MS / 1000):
    """Polls `check` until it returns something true; fails after `within` s."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s (last: {value!r})")
        time.sleep(0.1)


def campaign(stock, rate, starts_in=None, ttl=120):
    body = {
        "name": f"browser test {RUN}",
        "stock": stock,
        "waiting_room": {"admit_per_second": rate, "admission_ttl_secs": ttl},
    }
    if starts_in is not None:
        body["starts_at"] = (datetime.now(timezone.utc) + timedelta(seconds=starts_in)).isoformat()
    status, reply, _ = http("POST", "/api/v1/campaigns", ADMIN, body)
    assert status == 201, (status, reply)
    return reply["id"]


def join(c, user):
    status, reply, _ = http("POST", f"/api/v1/campaigns/{c}/room", mint(user))
    assert status in (200, 202), (status, reply)
    return reply


def place(c, user):
    return http("GET", f"/api/v1/campaigns/{c}/room/me", mint(user))[1]


def slots_and_rows(c, user):
    """The gate's count of slots taken, and the user's rows."""
    taken = http("GET", f"/api/v1/campaigns/{c}", ADMIN)[1]["taken"]
    coupons = http("GET", f"/api/v1/campaigns/{c}/coupons?limit=1000", ADMIN)[1]["coupons"]
    return taken, [row for row in coupons if row["user_id"] == user]


def one_slot_one_row(c, user):
    """Waits for the user's row (the worker writes it); then exactly one
    slot taken and one row."""
    def written():
        taken, rows = slots_and_rows(c, user)
        return (taken, rows) if rows else None

    taken, rows = until(f"{user}'s row", written)
    assert taken == 1 and len(rows) == 1, (taken, rows)
    return rows[0]


class Browser:
    def __init__(self, playwright, shots):
        self.browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        self.shots = shots

    def context(self, **options):
        options.setdefault("viewport", PHONE)
        options.setdefault("locale", "en-US")
        # The pulse stands still: the screenshots are stable.
        options.setdefault("reduced_motion", "reduce")
        return self.browser.new_context(**options)

    def shot(self, page, name):
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def room_url(c, user):
    return f"{BASE}/campaigns/{c}/room#token={mint(user)}"


def state(page, *states, within=WAIT_MS):
    """Waits until the page shows one of `states`; returns it."""
    selector = ", ".join(f'#room[data-state="{s}"]' for s in states)
    page.wait_for_selector(selector, timeout=within)
    return page.get_attribute("#room", "data-state")


def text(page, element):
    return page.inner_text(f"#{element}")


def issue_requests(page):
    """Records the Idempotency-Key of every issue request the page sends."""
    keys = []
    page.on("request", lambda r: keys.append(r.headers.get("idempotency-key"))
            if r.method == "POST" and r.url.endswith("/issue") else None)
    return keys


def signed_link(b):
    """Join by a signed link; the line moves; admitted; a double click issues once."""
    # 40 ahead at 2 a second: the room asks the page back in 10 s (its
    # longest retry_after_ms), before its turn (if the page joins within 10 s
    # of the start), so the page sees the line move.
    c = campaign(stock=50, rate=2)
    created = time.monotonic()
    for i in range(40):
        join(c, f"ahead-{RUN}-{i}")
    user = f"shopper-{RUN}"
    status, _, headers = http("GET", f"/campaigns/{c}/room")
    assert status == 200
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy, policy
    assert "unsafe" not in policy and "frame-ancestors" in policy, policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"

    ctx = b.context()
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    keys = issue_requests(page)
    page.goto(room_url(c, user))
    state(page, "waiting")
    log(f"signed_link: waiting {time.monotonic() - created:.1f} s after the start")
    assert "#" not in page.url, f"the token stays in the address: {page.url}"
    assert page.evaluate("sessionStorage.getItem('coupon-room:token')"), "token not kept"
    assert text(page, "position") == "41", text(page, "position")
    first = int(text(page, "ahead").replace(",", ""))
    b.shot(page, "waiting")
    assert page.get_attribute("#status", "aria-live") == "polite"
    assert page.evaluate("getComputedStyle(document.getElementById('pulse')).animationName") == "none"
    page.wait_for_function(f"() => Number(document.getElementById('ahead').textContent) < {first}",
                           timeout=WAIT_MS)
    state(page, "admitted")
    assert page.evaluate("document.activeElement.id") == "issue", "focus not on the issue button"
    b.shot(page, "admitted")
    page.dblclick("#issue")
    state(page, "issued")
    page.wait_for_function("() => document.getElementById('detail').textContent.includes('issued')",
                           timeout=WAIT_MS)
    b.shot(page, "issued")
    assert len(keys) == 1, f"a double click sent {len(keys)} issue requests"
    row = one_slot_one_row(c, user)
    page.reload()
    state(page, "taken")
    assert row["id"] in text(page, "detail")
    assert len(keys) == 1 and one_slot_one_row(c, user) == row
    assert not errors, errors
    ctx.close()


def reload(b):
    """Keyboard only; a reload while the issue is in flight issues once."""
    c = campaign(stock=5, rate=50)
    user = f"reloader-{RUN}"
    ctx = b.context()
    page = ctx.new_page()
    keys = issue_requests(page)
    page.goto(room_url(c, user))
    state(page, "admitted")
    page.keyboard.press("Enter")  # focus is on the button once admitted
    page.reload()
    state(page, "issued", "taken")
    page.wait_for_function("() => document.getElementById('detail').textContent.includes('issued')",
                           timeout=WAIT_MS)
    assert keys and len(set(keys)) == 1, f"issue requests under several keys: {keys}"
    row = one_slot_one_row(c, user)
    page.reload()
    state(page, "taken")
    assert len(set(keys)) == 1 and one_slot_one_row(c, user) == row
    ctx.close()


def not_started(b):
    """Before the start: the start time in the user's own time zone."""
    starts_in = 3600
    c = campaign(stock=5, rate=10, starts_in=starts_in)
    ctx = b.context(timezone_id="Asia/Seoul")
    page = ctx.new_page()
    page.goto(room_url(c, f"early-{RUN}"))
    state(page, "not_started")
    status, view, _ = http("GET", f"/api/v1/campaigns/{c}", ADMIN)
    starts = datetime.fromisoformat(view["starts_at"].replace("Z", "+00:00")).astimezone(ZoneInfo("Asia/Seoul"))
    detail = text(page, "detail")
    assert starts.strftime("%I:%M %p") in detail and "GMT+9" in detail, (detail, starts)
    assert "Opens in" in text(page, "clock")
    b.shot(page, "not_started")
    ctx.close()


def sold_out(b):
    c = campaign(stock=1, rate=50)
    buyer = f"buyer-{RUN}"
    join(c, buyer)
    until("the buyer admitted", lambda: place(c, buyer).get("state") == "admitted")
    status, reply, _ = http("POST", f"/api/v1/campaigns/{c}/issue", mint(buyer))
    assert status == 202, (status, reply)
    ctx = b.context()
    page = ctx.new_page()
    page.goto(room_url(c, f"late-{RUN}"))
    state(page, "sold_out")
    b.shot(page, "sold_out")
    ctx.close()


def closed(b):
    """Closed while the user waits for the start; polling pauses while the
    tab is hidden."""
    c = campaign(stock=10, rate=1, starts_in=3600)
    ctx = b.context()
    page = ctx.new_page()
    looks = []
    page.on("request", lambda r: looks.append(r.url) if r.url.endswith("/room/me") else None)
    page.goto(room_url(c, f"closer-{RUN}"))
    state(page, "not_started")
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {value: true, configurable: true});
        Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    status, _, _ = http("POST", f"/api/v1/campaigns/{c}/close", ADMIN)
    assert status == 200
    before = len(looks)
    # Before the start the room asks the page back within 5 s
    # (retry_after_ms): hidden, it must not ask.
    page.wait_for_timeout(6000)
    assert len(looks) == before, "the hidden page kept polling"
    assert state(page, "not_started") == "not_started"
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {value: false, configurable: true});
        Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    state(page, "closed", within=10_000)
    b.shot(page, "closed")
    ctx.close()


SHOP = """<!doctype html><title>shop</title><iframe src="%(room)s" title="Waiting room"
width="390" height="600"></iframe><script>
window.states = [];
addEventListener('message', (e) => {
  if (e.origin !== %(api)s) return;
  if (e.data.type === 'coupon-room:ready' || e.data.type === 'coupon-room:need-token')
    e.source.postMessage({type: 'coupon-room:token', token: %(token)s}, e.origin);
  if (e.data.type === 'coupon-room:state') window.states.push(e.data.state);
});
</script>"""


class Shop(BaseHTTPRequestHandler):
    """A shop's checkout page framing the room's page: /<campaign>/<user>.
    A real server on the loopback (the browser refuses a public page that
    frames a local address)."""

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) != 2:
            self.send_error(404)
            return
        c, user = parts
        body = (SHOP % {"room": f"{BASE}/campaigns/{c}/room", "api": json.dumps(BASE),
                        "token": json.dumps(mint(user))}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def embedded(b):
    """The shop frames the page and hands it the token by postMessage; a page
    of an origin not in the list cannot frame it."""
    port = urllib.parse.urlsplit(EMBEDDER).port
    server = ThreadingHTTPServer(("127.0.0.1", port), Shop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        c = campaign(stock=5, rate=50)
        user = f"framed-{RUN}"
        ctx = b.context()
        page = ctx.new_page()
        page.goto(f"{EMBEDDER}/{c}/{user}")
        frame = page.frame_locator("iframe")
        frame.locator('#room[data-state="admitted"]').wait_for(timeout=WAIT_MS)
        frame.locator("#issue").click()
        frame.locator('#room[data-state="issued"]').wait_for(timeout=WAIT_MS)
        states = page.evaluate("window.states")
        assert states[:1] == ["signin"] and "admitted" in states and "issued" in states, states
        one_slot_one_row(c, user)

        # The same shop page from another origin (the address, not the name).
        other = ctx.new_page()
        other.goto(f"http://127.0.0.1:{port}/{c}/{user}-elsewhere")
        framed = other.frames[1]
        assert framed.url.startswith("chrome-error:") or not framed.query_selector("#room"), framed.url
        ctx.close()
    finally:
        server.shutdown()


def unavailable(b):
    """The api stops under the page and comes back: the page says so and retries."""
    c = campaign(stock=5, rate=50, ttl=600)
    ctx = b.context()
    page = ctx.new_page()
    page.goto(room_url(c, f"patient-{RUN}"))
    state(page, "admitted")
    log("stopping the api")
    subprocess.run(["bash", "-c", os.environ["ROOM_TEST_STOP"]], check=True)
    state(page, "unavailable")
    assert "keeps trying" in text(page, "detail") and "Trying again" in text(page, "clock")
    b.shot(page, "unavailable")
    log("bringing the api back")
    subprocess.run(["bash", "-c", os.environ["ROOM_TEST_START"]], check=True, stdout=subprocess.DEVNULL)
    state(page, "admitted", within=60_000)
    ctx.close()


SCENARIOS = [signed_link, reload, not_started, sold_out, closed, embedded, unavailable]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", default=str(ROOT / "target" / "browser-test"))
    parser.add_argument("scenario", nargs="*", help="some of: " + " ".join(s.__name__ for s in SCENARIOS))
    args = parser.parse_args()
    unknown = set(args.scenario) - {s.__name__ for s in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenario {' '.join(sorted(unknown))}")
    assert ADMIN and SECRET, "ROOM_TEST_ADMIN_TOKEN and ROOM_TEST_JWT_SECRET are required"
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in SCENARIOS if not args.scenario or s.__name__ in args.scenario]
    started = time.monotonic()
    with sync_playwright() as playwright:
        b = Browser(playwright, shots)
        for scenario in chosen:
            t = time.monotonic()
            scenario(b)
            log(f"{scenario.__name__}: ok ({time.monotonic() - t:.1f} s)")
        b.browser.close()
    log(f"{len(chosen)} scenarios passed in {time.monotonic() - started:.0f} s; screenshots in {shots}")


if __name__ == "__main__":
    main()
