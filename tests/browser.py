"""A headless Chromium driven through the Chrome DevTools Protocol, for the browser tests.

No browser automation package: Chromium is started with
``--remote-debugging-pipe`` and speaks the DevTools protocol (JSON messages,
each ended by a NUL byte) over two pipes, its file descriptors 3 (commands
in) and 4 (answers and events out). Nothing is downloaded: the browser is the
system's Chromium (Debian's ``chromium`` package), found by ``find_chromium``.

Offline on purpose: every host name but the local server's resolves to
nothing (``--host-resolver-rules``), so a page that still needs a CDN fails
here the way it fails in a classroom without internet.

    with serve(html_dir) as base, Chromium() as browser:
        page = browser.open(base + "/index.html")
        report = page.evaluate(JS_CHECKS)
        png = page.screenshot()
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

__all__ = ["find_chromium", "serve", "Chromium", "Page", "BrowserError"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # offline, except the local server
    "--remote-debugging-pipe",
]


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """The Chromium executable: $SSM_BOOK_CHROMIUM, else the first of CANDIDATES on PATH."""
    explicit = os.environ.get("SSM_BOOK_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(directory):
    """Serve ``directory`` on 127.0.0.1 (a free port) from a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Chromium:
    """One headless Chromium process; ``open(url)`` gives a ``Page`` in a new tab."""

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 900):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError("Chromium not found (apt-get install chromium)")
        self.width, self.height = width, height

    def __enter__(self):
        self._profile = tempfile.TemporaryDirectory(prefix="ssm-book-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [self.executable, *FLAGS, f"--user-data-dir={self._profile.name}",
                f"--window-size={self.width},{self.height}", "about:blank"]
        # A small Python trampoline puts our pipe ends on the descriptors 3 and 4 that
        # Chromium reads and writes, then becomes Chromium.
        trampoline = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
        self._log = open(os.path.join(self._profile.name, "chromium.log"), "w+b")  # a file: a full pipe would block it
        self._proc = subprocess.Popen([sys.executable, "-c", trampoline, str(to_browser_r), str(from_browser_w), *args],
                                      pass_fds=(to_browser_r, from_browser_w),
                                      stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: dict[int, dict] = {}
        self._events: list[dict] = []
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.version = self.call("Browser.getVersion", timeout=60)["product"]
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            if not self._closed:
                self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        self._profile.cleanup()

    def log(self) -> str:
        """The last lines Chromium wrote to its stderr."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    # -- the protocol -------------------------------------------------------

    def _read(self):
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self._events.append(message)
                self._cond.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30):
        """Send one command and wait for its answer; raises BrowserError on a protocol error."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._answers:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    stderr = self.log() if self._closed else ""
                    raise BrowserError(f"{method}: no answer within {timeout} s" + (f"; browser exited: {stderr}" if stderr else ""))
                self._cond.wait(left)
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def events(self, session: str, method: str | None = None) -> list[dict]:
        with self._cond:
            return [e for e in self._events if e.get("sessionId") == session and (method is None or e["method"] == method)]

    def wait_event(self, session: str, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self._events:
                    if e.get("sessionId") == session and e["method"] == method:
                        return e
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise BrowserError(f"no {method} event within {timeout} s")
                self._cond.wait(left)

    def open(self, url: str, timeout: float = 60) -> "Page":
        """A new tab showing ``url``, returned once its load event has fired."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False}, session)
        answer = self.call("Page.navigate", {"url": url}, session)
        if answer.get("errorText"):
            raise BrowserError(f"{url}: {answer['errorText']}")
        self.wait_event(session, "Page.loadEventFired", timeout)
        return page


class Page:
    """One tab: evaluate JavaScript, read what the page logged and requested, take screenshots."""

    def __init__(self, browser: Chromium, target: str, session: str):
        self.browser, self.target, self.session = browser, target, session

    def evaluate(self, expression: str, timeout: float = 60):
        """The value of a JavaScript expression (awaited if it is a promise), as JSON."""
        answer = self.browser.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                        "returnByValue": True, "timeout": timeout * 1000},
                                   self.session, timeout=timeout + 5)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise BrowserError(f"JavaScript error: {details.get('exception', {}).get('description', details.get('text'))}")
        return answer["result"].get("value")

    def screenshot(self, path=None, full_page: bool = False) -> bytes:
        params = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size[0], "height": min(size[1], 16000), "scale": 1})
        png = base64.b64decode(self.browser.call("Page.captureScreenshot", params, self.session)["data"])
        if path is not None:
            with open(path, "wb") as f:
                f.write(png)
        return png

    def javascript_errors(self) -> list[str]:
        """Uncaught exceptions and console.error messages."""
        out = []
        for e in self.browser.events(self.session, "Runtime.exceptionThrown"):
            d = e["params"]["exceptionDetails"]
            out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        for e in self.browser.events(self.session, "Runtime.consoleAPICalled"):
            if e["params"]["type"] == "error":
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"]))
        return out

    def failed_requests(self) -> list[str]:
        """Requests that failed (network error or HTTP status >= 400), with their URLs."""
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"]
                for e in self.browser.events(self.session, "Network.requestWillBeSent")}
        out = []
        for e in self.browser.events(self.session, "Network.loadingFailed"):
            p = e["params"]
            if p.get("canceled"):
                continue
            out.append(f"{urls.get(p['requestId'], '?')}: {p.get('errorText')}")
        for e in self.browser.events(self.session, "Network.responseReceived"):
            r = e["params"]["response"]
            if r["status"] >= 400:
                out.append(f"{r['url']}: HTTP {r['status']}")
        return out

    def close(self):
        self.browser.call("Target.closeTarget", {"targetId": self.target})


# ----------------------------------------------------------------------------
# Checks of one page of the built book
# ----------------------------------------------------------------------------

#: Messages of Jupyter Book 1's own scripts, on every page, that change nothing the
#: reader sees: sphinx-thebe declares THEBE_JS_URL in two inline scripts, and the
#: theme warns once that a fresh profile has no stored light/dark choice.
KNOWN_JS_NOISE = ("Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode")

#: Run in the page once it has loaded: waits for MathJax's first typesetting pass
#: and for the widget manager, then reports what a reader would see.
PAGE_REPORT = r"""
(async () => {
  const wait = ms => new Promise(r => setTimeout(r, ms));
  const out = {title: document.title};
  out.mathjax = !!(window.MathJax && MathJax.startup && MathJax.startup.promise);
  if (out.mathjax) await MathJax.startup.promise;
  const views = Array.from(document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]'));
  const isRendered = v => { const p = v.previousElementSibling;
    return !!(p && p.classList.contains('widget-subarea') && p.querySelector('.jupyter-widgets, .lm-Widget')); };
  const hasState = !!document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
  for (let i = 0; hasState && i < 200 && views.some(v => !isRendered(v)); i++) await wait(100);  // the manager renders after 'load'
  const article = document.querySelector('article') || document.body;
  const imgs = () => Array.from(article.querySelectorAll('img'));
  for (let i = 0; i < 100 && imgs().some(im => !im.complete); i++) await wait(100);
  out.widget_state = hasState;
  out.widget_views = views.length;
  out.widgets_unrendered = views.filter(v => !isRendered(v)).map(v => v.textContent.slice(0, 120));
  out.widget_images = article.querySelectorAll('.widget-subarea img').length;
  out.images = imgs().length;
  out.output_figures = imgs().filter(im => (im.getAttribute('src') || '').includes('_images/')).length;
  out.broken_images = imgs().filter(im => !(im.complete && im.naturalWidth > 0)).map(im => (im.getAttribute('src') || '').slice(0, 100));
  out.math_elements = article.querySelectorAll('span.math, div.math').length;
  out.mjx = article.querySelectorAll('mjx-container').length;
  out.untypeset = Array.from(article.querySelectorAll('span.math, div.math'))
    .filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80));
  out.tex_errors = [];  // with the TeX source of each formula MathJax could not typeset
  if (out.mathjax) for (const item of MathJax.startup.document.math) {
    const err = item.typesetRoot && item.typesetRoot.querySelector('mjx-merror');
    const tex = item.math.slice(0, 80).replace(/[\u0000-\u001f]/g, c => '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0'));
    if (err) out.tex_errors.push(`"${tex}": ${err.getAttribute('data-mjx-error') || err.textContent}`);
  }
  const prose = article.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight').forEach(e => e.remove());
  const text = prose.textContent;
  out.raw_tex = [/\\\(/, /\\\[/, /\$\$/, /\\begin\{/, /\$[^$\n]{0,80}[\\^_{][^$\n]{0,80}\$/]
    .map(re => text.match(re)).filter(m => m)
    .map(m => text.slice(Math.max(0, m.index - 40), m.index + 60).replace(/\s+/g, ' '));
  // A chapter may print an error message on purpose (a failure mode, caught): only tracebacks,
  // error outputs and errors written to stderr count.
  out.tracebacks = (article.innerText.match(/Traceback \(most recent call last\)/g) || []).slice(0, 5);
  out.error_outputs = Array.from(article.querySelectorAll('.output.traceback, .output.error, .output.stderr'))
    .filter(e => !e.classList.contains('stderr') || /Error|Exception/.test(e.textContent))
    .map(e => e.textContent.trim().slice(0, 200));
  out.links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href).filter(h => h.startsWith(location.origin));
  return out;
})()
"""


def _ids(path, cache={}):  # noqa: B006 (a cache per process on purpose)
    if path not in cache:
        import re

        cache[path] = set(re.findall(r'\b(?:id|name)="([^"]+)"', path.read_text(errors="replace")))
    return cache[path]


def broken_links(links, base: str, html_dir) -> list[str]:
    """Links into the book (absolute URLs under ``base``) whose file or anchor is missing from ``html_dir``."""
    from pathlib import Path
    from urllib.parse import unquote

    html_dir, problems = Path(html_dir), []
    for url in sorted(set(links)):
        path, _, fragment = url[len(base):].partition("#")
        path = unquote(path.split("?")[0]).lstrip("/")
        target = html_dir / path
        if not path or path.endswith("/") or target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"link to a missing file: {url}")
        elif fragment and target.suffix == ".html" and unquote(fragment) not in _ids(target):
            problems.append(f"link to a missing anchor: {url}")
    return problems


def check_book_page(page: Page, base: str, html_dir, chapter: bool) -> tuple[dict, list[str]]:
    """What a reader sees on one page, and the list of problems with it (empty: all good).

    Every page: it loads, its maths is typeset by MathJax (no raw TeX left, no
    TeX errors), its images load, it has no traceback or error output, its
    internal links resolve, no request fails (offline: a CDN request fails
    too) and no script raises. A chapter page also has figures, and every
    widget renders from its saved state.
    """
    report = page.evaluate(PAGE_REPORT, timeout=90)
    problems = []
    if report["math_elements"] and not report["mathjax"]:  # Sphinx loads MathJax only on pages with maths
        problems.append("MathJax did not load")
    if report["math_elements"] and report["mjx"] == 0:
        problems.append(f"{report['math_elements']} maths elements but no MathJax output")
    problems += [f"maths not typeset: {t!r}" for t in report["untypeset"][:5]]
    problems += [f"TeX error in {t}" + (" (\\x08 is a backspace: '\\b' in a JSON or Python string where '\\\\b' was meant)"
                                       if "\\x08" in t else "") for t in report["tex_errors"][:5]]
    problems += [f"raw TeX in the text: ...{t}..." for t in report["raw_tex"]]
    problems += [f"image does not load: {src}" for src in report["broken_images"]]
    problems += [f"error output: {t!r}" for t in report["tracebacks"] + report["error_outputs"]]
    if chapter:
        if report["output_figures"] < 1:
            problems.append("no figure")
        if report["widget_views"] and not report["widget_state"]:
            problems.append("widgets without saved state")
        problems += [f"widget not rendered: {t}" for t in report["widgets_unrendered"]]
    problems += broken_links(report["links"], base, html_dir)
    problems += [f"request failed: {r}" for r in page.failed_requests() if "/favicon.ico:" not in r]  # the book has none
    problems += [f"script error: {e}" for e in page.javascript_errors() if not any(k in e for k in KNOWN_JS_NOISE)]
    return report, problems


# Kernel listings: the book's code lines are at most 88 characters, and a listing must fit the column.
LISTING_COLUMNS = 88
LISTINGS_JS = """Array.from(document.querySelectorAll('pre')).map(p => p.textContent)
    .filter(t => t.includes('@triton.jit')).map(t => Math.max(...t.split('\\n').map(l => l.length)))"""


def listing_problems(page) -> list[str]:
    """A kernel listing is on the page (folded or not), and no line of it is wider than the column."""
    widths = page.evaluate(LISTINGS_JS)
    if not widths:
        return ["no Triton kernel source (@triton.jit) on the page"]
    return [f"a kernel listing has a line of {w} characters (the column holds {LISTING_COLUMNS})"
            for w in widths if w > LISTING_COLUMNS]
