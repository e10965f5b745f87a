"""The report site in a real browser: headless Chromium driven by Selenium, with networking off.

Builds a site from small real runs (tests/site_runs.py), serves it on 127.0.0.1 and opens every
page with Chromium whose proxy is a closed port and whose DNS resolves nothing but localhost.
On each page: it loads, the console has no errors, every plotly plot drew its SVG/WebGL
elements, every image loads, every link resolves, and nothing was requested outside the site.
The run named '<script>...' shows the name as text and runs no script; the keyboard drives the
plot controls; the pages also work opened from disk (file://).

Skipped, with the reason, only where Chromium, chromedriver or selenium are missing
(Debian: apt-get install chromium chromium-driver; pip install selenium). Set
LOSSPROBE_SITE_SCREENSHOTS=DIR to save a full-page screenshot of each page there.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from lossprobe.cli.serve import QuietHandler
from site_runs import EVIL_NAME, EVIL_NOTE, make_runs


def _find(*names: str) -> str | None:
    for n in names:
        p = shutil.which(n) or (n if os.path.isabs(n) and os.access(n, os.X_OK) else None)
        if p:
            return p
    return None


CHROMIUM = _find(os.environ.get("LOSSPROBE_CHROMIUM", "chromium"), "chromium", "chromium-browser",
                 "google-chrome", "/usr/lib/chromium/chromium")
CHROMEDRIVER = _find(os.environ.get("LOSSPROBE_CHROMEDRIVER", "chromedriver"), "chromedriver",
                     "/usr/lib/chromium/chromedriver")
try:
    import selenium  # noqa: F401
    _SELENIUM = True
except ImportError:
    _SELENIUM = False

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and _SELENIUM),
    reason="browser test needs Chromium, chromedriver and selenium "
    f"(found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}, selenium={_SELENIUM}); "
    "Debian: apt-get install chromium chromium-driver",
)


def _closed_port() -> int:
    """A local TCP port with nothing listening (the browser's proxy: every outside request fails)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Recorder(QuietHandler):  # what `lossprobe serve` runs, so its checks and headers are in the test
    def log_request(self, code="-", size="-"):
        self.server.requests.append((self.path, int(code) if str(code).isdigit() else code))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from lossprobe.report.site import build_site

    root = tmp_path_factory.mktemp("browser")
    runs = make_runs(root / "runs")
    out = root / "site"
    build_site([root / "runs"], out)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Recorder, directory=str(out)))
    server.requests = []
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"out": out, "runs": runs, "base": f"http://127.0.0.1:{server.server_address[1]}/", "server": server}
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(site):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lossprobe-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900",
                 f"--user-data-dir={profile}",
                 # networking off: every request that is not to 127.0.0.1 goes to a closed port,
                 # and no host name but localhost resolves
                 f"--proxy-server=http://127.0.0.1:{_closed_port()}",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(driver, url: str, timeout: float = 30.0) -> None:
    """Load `url` and wait until every plot has been drawn (site.js marks the body)."""
    driver.get_log("browser")  # the console log from here on is this page's
    driver.get(url)
    t0 = time.time()
    while time.time() - t0 < timeout:
        done = driver.execute_script(
            "const n = document.querySelectorAll('[data-plot]').length;"
            "return document.readyState === 'complete' && "
            "(n === 0 || document.body.getAttribute('data-plots-rendered') === String(n));")
        if done:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url}: plots not rendered within {timeout} s")


def _until(check, timeout: float = 10.0) -> bool:
    """Poll `check()` until it is true (plotly redraws asynchronously) or `timeout` passes."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


def _images_loaded(driver, timeout: float = 15.0) -> list[str]:
    """Load lazy images now; return the src of every image that failed (naturalWidth 0)."""
    driver.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; });")
    t0 = time.time()
    while time.time() - t0 < timeout:
        if driver.execute_script("return [...document.images].every(i => i.complete);"):
            break
        time.sleep(0.1)
    return driver.execute_script("return [...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src);")


PLOT_STATE = """
return [...document.querySelectorAll('[data-plot]')].map(el => ({
  id: el.id, rendered: el.getAttribute('data-rendered'),
  surface: el.classList.contains('surface'),
  svg: el.querySelectorAll('svg.main-svg').length,
  canvas: [...el.querySelectorAll('canvas')].filter(c => c.width > 0 && c.height > 0).length,
  marks: el.querySelectorAll('.scatterlayer .trace path, .contourlayer path, .heatmaplayer image').length,
}));
"""

LINKS = """
return [...document.querySelectorAll('a[href], link[href], script[src], img[src]')]
  .map(e => e.href || e.src);
"""


def _local(site, url: str) -> Path | None:
    if not url.startswith(site["base"]):
        return None
    return site["out"] / unquote(urlsplit(url).path.lstrip("/"))


def _pages(site) -> list[str]:
    out = site["out"]
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))


def test_every_page_in_headless_chromium_with_networking_off(site, browser):
    webgl = None
    pages = _pages(site)
    assert len(pages) == 6, pages  # index, 4 runs, 1 comparison
    shots = os.environ.get("LOSSPROBE_SITE_SCREENSHOTS")
    browser.get_log("performance")  # start from an empty log
    for rel in pages:
        url = site["base"] + rel
        _open(browser, url)
        # loads: a title and one h1
        assert browser.title and len(browser.find_elements("tag name", "h1")) == 1, rel
        # every plot drew its SVG (and WebGL canvas for 3-D surfaces)
        if webgl is None:
            webgl = browser.execute_script(
                "const c = document.createElement('canvas'); return !!(c.getContext('webgl') || "
                "c.getContext('experimental-webgl'));")
        for p in browser.execute_script(PLOT_STATE):
            assert p["rendered"] == "true" and p["svg"] > 0, (rel, p)
            if p["surface"] and webgl:
                assert p["canvas"] > 0, (rel, p)
            else:
                assert p["marks"] > 0 or p["canvas"] > 0, (rel, p)
        # every image loads
        assert _images_loaded(browser) == [], rel
        # every link resolves to a file of the site (or an anchor on the page)
        for link in browser.execute_script(LINKS):
            if link == "data:,":  # the empty favicon, so that no /favicon.ico is requested
                continue
            target = _local(site, link)
            assert target is not None, (rel, link)  # nothing points outside the site
            if "#" in link and link.split("#")[0] == url:
                assert browser.find_elements("id", link.split("#", 1)[1]), (rel, link)
            else:
                assert target.is_file() or (target / "index.html").is_file(), (rel, link)
        # the console has no errors (a failed load is logged as SEVERE too)
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], (rel, severe)
        if shots:
            h = browser.execute_script("return document.documentElement.scrollHeight")
            browser.set_window_size(1280, min(h, 8000))
            browser.save_screenshot(str(Path(shots) / (rel.replace("/", "_") + ".png")))
            browser.set_window_size(1280, 900)
    # nothing was requested outside the site: from the browser's network log ...
    urls = set()
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.add(msg["params"]["request"]["url"])
    # (chrome:// pages are the browser's own new-tab page, not network requests)
    outside = [u for u in urls if not u.startswith((site["base"], "data:", "blob:", "about:", "chrome:",
                                                    "chrome-untrusted:", "chrome-extension:", "devtools:"))]
    assert any(u.startswith(site["base"]) for u in urls) and outside == [], outside
    # ... and the server answered every request it got
    assert site["server"].requests and all(code in (200, 304) for _, code in site["server"].requests), \
        [r for r in site["server"].requests if r[1] not in (200, 304)]
    # the network really is off for anything but the site
    err = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('http://example.com/', {mode: 'no-cors'}).then(() => done('reached'), e => done('blocked'));")
    assert err == "blocked"
    assert all("example.com" in e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE")


def test_script_run_name_is_text_and_not_executed(site, browser):
    for rel in ("runs/evil/index.html", "index.html", "compare/spiral-pair.html"):
        _open(browser, site["base"] + rel)
        assert browser.execute_script("return window.__pwned === undefined"), rel
        assert EVIL_NAME in browser.find_element("tag name", "body").text, rel
        # the only scripts are the site's own (plotly, site.js) and inline JSON data
        scripts = browser.execute_script(
            "return [...document.scripts].map(s => s.src ? s.src.split('/').pop() : s.type);")
        assert set(scripts) <= {"plotly.min.js", "site.js", "application/json"}, (rel, scripts)
        assert not browser.find_elements("css selector", "iframe, img[src='x'], img[onerror]"), rel
    _open(browser, site["base"] + "runs/evil/index.html")
    assert browser.find_element("tag name", "h1").text == EVIL_NAME
    assert EVIL_NOTE in browser.find_element("css selector", "p.note").text


def test_plot_controls_work_from_the_keyboard(site, browser):
    from selenium.webdriver.common.keys import Keys

    _open(browser, site["base"] + "runs/surface/index.html")
    body = browser.find_element("tag name", "body")
    body.send_keys(Keys.TAB)  # the first Tab lands on the skip link
    assert browser.switch_to.active_element.text == "Skip to content"
    eye = "return document.getElementById('plot-1')._fullLayout.scene.camera.eye;"
    before = browser.execute_script(eye)
    button = browser.find_element("css selector", "button[data-action='right'][data-target='plot-1']")
    browser.execute_script("arguments[0].focus();", button)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert _until(lambda: (lambda a: abs(a["x"] - before["x"]) + abs(a["y"] - before["y"]) > 0.1)(
        browser.execute_script(eye)))
    _open(browser, site["base"] + "runs/pair-a/index.html")
    log = browser.find_element("css selector", "button[data-action='logy'][data-target='plot-1']")
    browser.execute_script("arguments[0].focus();", log)
    browser.switch_to.active_element.send_keys(Keys.SPACE)
    assert _until(lambda: log.get_attribute("aria-pressed") == "true")
    assert _until(lambda: browser.execute_script("return document.getElementById('plot-1').layout.yaxis.type")
                  == "log")


def test_pages_work_opened_from_disk(site, browser):
    for rel in ("index.html", "runs/surface/index.html", "compare/spiral-pair.html"):
        url = (site["out"] / rel).resolve().as_uri()
        _open(browser, url)
        for p in browser.execute_script(PLOT_STATE):
            assert p["rendered"] == "true" and p["svg"] > 0, (rel, p)
        assert _images_loaded(browser) == [], rel
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], (rel, severe)


def test_remote_images_in_report_md_are_not_loaded_and_the_policy_blocks_injected_ones(site, browser):
    _open(browser, site["base"] + "runs/evil/index.html")
    body = browser.find_element("tag name", "body").text
    assert "remote image not shown: tracker" in body and "remote image not shown: proto" in body
    srcs = browser.execute_script("return [...document.images].map(i => i.src)")
    assert all(s.startswith(site["base"]) for s in srcs), srcs
    hrefs = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
    assert not any(h.lower().startswith(("javascript:", "data:")) for h in hrefs), hrefs
    # the Content-Security-Policy would block a remote request even if something injected one
    got = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "document.addEventListener('securitypolicyviolation', e => done(e.violatedDirective + ' ' + e.blockedURI));"
        "const img = document.createElement('img'); img.src = 'http://localhost:9/pixel.png';"
        "document.body.appendChild(img); setTimeout(() => done('no violation'), 5000);")
    assert got.startswith("img-src") and "localhost:9" in got, got
    browser.get_log("browser")  # the violation is logged on purpose; later pages start clean
