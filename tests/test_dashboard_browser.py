"""The built-in dashboard page, in a real headless chromium reading the real metrics stream.

One browser serves the whole module; each test gets its own stream server and a
freshly loaded page, and ends by checking that the page logged no errors. Without
chromium and chromedriver the browser tests skip, unless FASTHYSTRIX_REQUIRE_BROWSER=1
(CI) makes that a failure.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any
from urllib.parse import quote

import pytest

import fasthystrix
from fasthystrix._observability._dashboard import dashboard_page
from support import WAIT  # every wait polls and returns as soon as the page shows the value

# Debian's paths by default; elsewhere (GitHub's runners ship Google Chrome) the environment says.
CHROMIUM = os.environ.get("FASTHYSTRIX_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FASTHYSTRIX_CHROMEDRIVER", "/usr/bin/chromedriver")

XSS_NAMES = ("<img src=x onerror=alert(1)>", '"><script>window.__xss=1</script>')


def _fallback(err: BaseException) -> None:
    return None


def _boom() -> None:
    raise RuntimeError("boom")


def run(name: str, successes: int = 0, failures: int = 0) -> None:
    """Run ``name`` to record that many successes and failures (the failures fall back)."""
    for _ in range(successes):
        fasthystrix.do(name, lambda: None)
    for _ in range(failures):
        fasthystrix.do(name, _boom, _fallback)


def semaphore(name: str, **config: Any) -> None:
    fasthystrix.configure_command(name, {"isolation": "semaphore", **config})


# -- the page, in the browser ----------------------------------------------------------

# Finds a card by its exact name (dataset, so any character works; no CSS selector escaping).
_CARD_JS = """
const [kind, name] = arguments;
return [...document.querySelectorAll('#' + kind + ' > .card')].find(e => e.dataset.name === name) || null;
"""
_FIELD_JS = """
const [kind, name, cls] = arguments;
const card = [...document.querySelectorAll('#' + kind + ' > .card')].find(e => e.dataset.name === name);
if (!card) return null;
const field = cls ? card.getElementsByClassName(cls)[0] : card;
return field ? field.textContent : null;
"""
_ORDER_JS = """
return [...document.querySelectorAll('#' + arguments[0] + ' > .card')].filter(e => !e.hidden).map(e => e.dataset.name);
"""


class Page:
    """The dashboard loaded in the browser, with polling reads of what it shows."""

    def __init__(self, driver: Any, server: Any) -> None:
        self.driver = driver
        self.server = server
        self.expect_network_errors = False

    def open(self, url: str | None = None) -> Page:
        self.driver.get(url or self.server.dashboard_url)
        self.wait_for(lambda: self.connection() == "connected", "the stream to connect")
        return self

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
            lambda _: condition(), message=f"timed out waiting for {what}"
        )

    def field(self, name: str, cls: str, kind: str = "commands") -> str | None:
        text: str | None = self.js(_FIELD_JS, kind, name, cls)
        return text

    def wait_field(self, name: str, cls: str, expected: str, kind: str = "commands") -> None:
        from selenium.common.exceptions import TimeoutException

        try:
            self.wait_for(lambda: self.field(name, cls, kind) == expected, f"{kind} {name!r} .{cls} == {expected!r}")
            return
        except TimeoutException:
            pass
        pytest.fail(f"{kind} {name!r} .{cls} shows {self.field(name, cls, kind)!r} after {WAIT} s, not {expected!r}")

    def card(self, name: str, kind: str = "commands") -> Any:
        return self.js(_CARD_JS, kind, name)

    def order(self, kind: str = "commands") -> list[str]:
        names: list[str] = self.js(_ORDER_JS, kind)
        return names

    def connection(self) -> str:
        state: str = self.js("return document.getElementById('connection').dataset.state")
        return state

    def click(self, element_id: str) -> None:
        self.driver.find_element("id", element_id).click()

    def console_problems(self) -> list[dict[str, Any]]:
        """Console entries that are errors or warnings (network ones only unless expected)."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        return [
            e
            for e in entries
            if e["level"] in ("SEVERE", "WARNING") and not (self.expect_network_errors and e["source"] == "network")
        ]


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            found = shutil.which(os.path.basename(path))
            hint = f" (found {found}: set FASTHYSTRIX_CHROMIUM / FASTHYSTRIX_CHROMEDRIVER)" if found else ""
            return f"{path} is missing{hint}"
    return None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """One headless chromium for the module, driven by Debian's chromedriver (no downloads)."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("FASTHYSTRIX_REQUIRE_BROWSER", "") == "1":
            pytest.fail(f"FASTHYSTRIX_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager is never consulted, so nothing is downloaded.
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def server() -> Iterator[Any]:
    with fasthystrix.serve_stream(0, interval=0.2) as srv:
        yield srv


@pytest.fixture
def page(driver: Any, server: Any) -> Iterator[Page]:
    """A page for this test's server; afterwards, the page must have logged no error or warning."""
    page = Page(driver, server)
    driver.get_log("browser")  # drop what an earlier test left
    yield page
    problems = page.console_problems()
    # Leave the page before the server goes, so its reconnect attempts cannot reach the next test.
    driver.get("about:blank")
    driver.get_log("browser")
    assert not problems, f"the page logged: {problems}"


# -- the tests -------------------------------------------------------------------------


@pytest.mark.browser
def test_renders_commands_and_pools_from_the_live_stream(page: Page) -> None:
    semaphore("orders.get")
    run("orders.get", successes=3, failures=2)
    page.open()

    page.wait_field("orders.get", "count-success", "3")
    assert page.field("orders.get", "count-failure") == "2"
    assert page.field("orders.get", "count-rejected") == "0"
    assert page.field("orders.get", "count-short-circuited") == "0"
    assert page.field("orders.get", "count-timeout") == "0"
    assert page.field("orders.get", "error-percent") == "40.0"
    assert page.field("orders.get", "status") == "Closed"
    assert page.field("orders.get", "rate") == "0.5"  # 5 requests over the 10 s window
    assert page.field("orders.get", "hosts") == "1"
    assert page.field("orders.get", "count-fallback-success") == "2"
    assert page.card("orders.get").get_attribute("data-status") == "closed"
    # Its thread pool (one per command), with the command's rejections.
    page.wait_field("orders.get", "executed", "5", kind="pools")
    assert page.field("orders.get", "active", kind="pools") == "0"
    assert page.field("orders.get", "max", kind="pools") == "10"
    assert page.field("orders.get", "rejected", kind="pools") == "0"
    # The relative default stream URL resolved against the page's URL.
    assert page.js("return document.getElementById('stream-shown').textContent") == page.server.stream_url
    assert page.js("return document.getElementById('stream-url').value") == "hystrix.stream"
    # The health circle and the sparkline are drawn.
    circle = page.js(
        "const c = arguments[0].querySelector('circle.health'); return [c.getAttribute('r'), c.getAttribute('fill')]",
        page.card("orders.get"),
    )
    assert float(circle[0]) >= 5
    assert circle[1].startswith("rgb(")
    page.wait_for(
        lambda: page.js(
            "return arguments[0].querySelector('path.sparkline').getAttribute('d')", page.card("orders.get")
        ),
        "the sparkline",
    )


@pytest.mark.browser
def test_counts_follow_new_events(page: Page) -> None:
    semaphore("live")
    semaphore("full", max_concurrent_requests=0)  # every call is rejected
    semaphore("slow", timeout=1)
    run("live", successes=1)
    page.open()
    page.wait_field("live", "count-success", "1")

    run("live", successes=6, failures=1)
    page.wait_field("live", "count-success", "7")
    page.wait_field("live", "count-failure", "1")
    page.wait_field("live", "error-percent", "13.0")  # 1 in 8, rounded as hystrix-go does

    for _ in range(3):
        fasthystrix.do("full", lambda: None, _fallback)
    fasthystrix.do("slow", lambda: time.sleep(0.02), _fallback)
    page.wait_field("full", "count-rejected", "3")
    page.wait_field("full", "rejected", "3", kind="pools")
    page.wait_field("slow", "count-timeout", "1")
    page.wait_field("full", "error-percent", "100.0")


@pytest.mark.browser
def test_open_and_forced_open_circuits(page: Page) -> None:
    semaphore("forced")
    semaphore("tripped", request_volume_threshold=3, error_percent_threshold=50)
    semaphore("healthy")
    run("forced", successes=1)
    run("healthy", successes=1)
    fasthystrix.get_circuit("forced")[0].force_open = True
    run("tripped", failures=4)  # the fourth call finds 3 failures out of 3 and opens the circuit
    assert fasthystrix.get_circuit("tripped")[0].state() == "open"
    page.open()

    page.wait_field("forced", "status", "Forced open")
    page.wait_field("tripped", "status", "Open")
    page.wait_field("healthy", "status", "Closed")
    assert page.card("forced").get_attribute("data-status") == "forced-open"
    assert page.card("tripped").get_attribute("data-status") == "open"

    fasthystrix.do("forced", lambda: None, _fallback)
    page.wait_field("forced", "count-short-circuited", "1")
    fasthystrix.get_circuit("forced")[0].force_open = False
    page.wait_field("forced", "status", "Closed")


@pytest.mark.browser
def test_filter_by_name(page: Page) -> None:
    from selenium.webdriver.common.keys import Keys

    for name in ("orders.get", "orders.put", "payments"):
        semaphore(name)
        run(name, successes=1)
    page.open()
    page.wait_for(lambda: len(page.order()) == 3 and len(page.order("pools")) == 3, "three commands and pools")

    filter_box = page.driver.find_element("id", "filter")
    filter_box.send_keys("ORDERS")  # case-insensitive substring
    page.wait_for(lambda: sorted(page.order()) == ["orders.get", "orders.put"], "the filter")
    assert sorted(page.order("pools")) == ["orders.get", "orders.put"]
    assert page.js("return document.getElementById('command-count').textContent") == "2 / 3"

    filter_box.clear()
    filter_box.send_keys(".put")
    page.wait_for(lambda: page.order() == ["orders.put"], "the narrower filter")

    filter_box.clear()
    filter_box.send_keys("x", Keys.BACKSPACE)
    page.wait_for(lambda: len(page.order()) == 3, "the cleared filter")


@pytest.mark.browser
def test_sorting(page: Page) -> None:
    semaphore("a-busy")
    semaphore("b-failing")
    semaphore("c-flaky")
    run("a-busy", successes=10)  # 0 % errors, 1.0/s
    run("b-failing", successes=1, failures=3)  # 75 %, 0.4/s
    run("c-flaky", successes=4, failures=1)  # 20 %, 0.5/s
    page.open()
    page.wait_for(lambda: page.field("c-flaky", "error-percent") == "20.0", "the last command")
    for name in ("a-busy", "b-failing"):
        page.wait_field(name, "count-success", "10" if name == "a-busy" else "1")

    # Default: error rate, then volume (the Netflix dashboard's default).
    page.wait_for(lambda: page.order() == ["b-failing", "c-flaky", "a-busy"], "the default sort")
    page.click("sort-name")
    page.wait_for(lambda: page.order() == ["a-busy", "b-failing", "c-flaky"], "sort by name")
    page.click("sort-name")  # a second click reverses
    page.wait_for(lambda: page.order() == ["c-flaky", "b-failing", "a-busy"], "sort by name, reversed")
    page.click("sort-volume")
    page.wait_for(lambda: page.order() == ["a-busy", "c-flaky", "b-failing"], "sort by volume")
    page.click("sort-error")
    page.wait_for(lambda: page.order() == ["b-failing", "c-flaky", "a-busy"], "sort by error rate")
    assert page.driver.find_element("id", "sort-error").get_attribute("aria-pressed") == "true"
    assert page.driver.find_element("id", "sort-name").get_attribute("aria-pressed") == "false"


@pytest.mark.browser
def test_command_names_are_shown_as_text_and_never_run(page: Page) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    for name in XSS_NAMES:
        semaphore(name)
        run(name, successes=2)
    page.open()
    for name in XSS_NAMES:
        page.wait_field(name, "count-success", "2")
        page.wait_field(name, "executed", "2", kind="pools")
        assert page.field(name, "name") == name
        assert page.field(name, "name", kind="pools") == name

    assert page.js("return document.querySelectorAll('main img, main script, main iframe').length") == 0
    assert page.js("return [document.images.length, document.scripts.length]") == [0, 1]
    assert page.js("return typeof window.__xss") == "undefined"
    with pytest.raises(NoAlertPresentException):
        page.driver.switch_to.alert.text  # noqa: B018


@pytest.mark.browser
def test_offline_page_same_origin_requests_only(page: Page) -> None:
    semaphore("one")
    run("one", successes=1)
    page.open(page.server.url + "/")  # the root serves the page too, reading the same stream
    page.wait_field("one", "count-success", "1")

    assert page.js("return document.getElementById('stream-shown').textContent") == page.server.stream_url
    urls = page.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(page.server.url + "/") for url in urls), urls
    assert page.js("return document.querySelectorAll('link[rel=stylesheet], script[src], img[src]').length") == 0
    # The styles are applied: the legend's success colour is green-ish.
    colour = page.js("return getComputedStyle(document.querySelector('.legend .success')).color")
    red, green, blue = (int(v) for v in re.findall(r"\d+", colour)[:3])
    assert green > 120 and green > red and green > blue, colour


@pytest.mark.browser
def test_stream_url_field_query_parameter_and_reconnect(page: Page) -> None:
    semaphore("cmd")
    run("cmd", successes=2)
    server = page.server

    # ?stream= picks the stream; the URL field shows it.
    stream = server.stream_url + "?from=param"
    page.open(server.dashboard_url + "?stream=" + quote(stream, safe=""))
    page.wait_field("cmd", "count-success", "2")
    assert page.js("return document.getElementById('stream-url').value") == stream
    assert page.js("return document.getElementById('stream-shown').textContent") == stream

    # A stream that is not there: the page says so and keeps retrying, without errors of its own.
    page.expect_network_errors = True
    url_box = page.driver.find_element("id", "stream-url")
    url_box.clear()
    url_box.send_keys("/no-such.stream")
    page.click("connect")
    page.wait_for(lambda: page.connection() == "reconnecting", "the failed connection")
    assert page.order() == []
    assert "stream=%2Fno-such.stream" in page.driver.current_url

    # Back to the default stream through the field.
    url_box.clear()
    url_box.send_keys("hystrix.stream")
    page.click("connect")
    page.wait_for(lambda: page.connection() == "connected", "the reconnection")
    page.wait_field("cmd", "count-success", "2")
    assert "stream=" not in page.driver.current_url

    # The server goes away and comes back on the same port: the page reconnects by itself.
    port = server.port
    server.close()
    page.wait_for(lambda: page.connection() == "reconnecting", "the lost connection")
    with fasthystrix.serve_stream(port, interval=0.2):
        run("cmd", successes=1)
        page.wait_for(lambda: page.connection() == "connected", "the automatic reconnection")
        page.wait_field("cmd", "count-success", "3")
        page.driver.get("about:blank")


# -- the page itself, no browser needed ------------------------------------------------


@pytest.mark.parametrize("impl", ["pure"], indirect=True)  # no implementation is involved: run once
def test_dashboard_page_is_one_self_contained_document() -> None:
    page = dashboard_page()
    assert dashboard_page() is page  # built once
    html = page.decode("utf-8")
    files = resources.files("fasthystrix._observability").joinpath("dashboard")
    js = files.joinpath("dashboard.js").read_text(encoding="utf-8")
    css = files.joinpath("dashboard.css").read_text(encoding="utf-8")

    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<html") == 1 and html.count("</html>") == 1
    assert html.count("<script") == 1 and html.count("<style") == 1
    assert "<script>\n" + js + "</script>" in html
    assert "<style>\n" + css + "</style>" in html
    assert 'rel="stylesheet"' not in html
    assert "<script src" not in html
    # Nothing is fetched: every src/href is inline data (the favicon).
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", html.split("<style>")[0])
    assert refs and all(ref.startswith("data:") for ref in refs), refs
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html

    # The Content-Security-Policy allows exactly the inlined script and style.
    def digest(text: str) -> str:
        return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html)
    assert csp is not None
    assert f"script-src 'sha256-{digest(chr(10) + js)}'" in csp.group(1)
    assert f"style-src 'sha256-{digest(chr(10) + css)}'" in csp.group(1)
    assert "default-src 'none'" in csp.group(1)


# -- the dashboard during the demo ------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_dashboard_during_the_demo(driver: Any, tmp_path: Any) -> None:
    """``python -m fasthystrix demo`` (shortened) with the page open: the circuit shows open, then closed.

    The screenshot taken while the downstream is down goes to ``tmp_path``, or to the
    path in ``FASTHYSTRIX_SCREENSHOT`` (how ``docs/dashboard.png`` is made).
    """
    import io
    import threading

    from fasthystrix.demo import DemoRun, run_demo

    phases: dict[str, threading.Event] = {}
    runs: list[DemoRun] = []

    def on_phase(name: str, run: DemoRun) -> None:
        runs.append(run)
        phases.setdefault(name, threading.Event()).set()

    def phase(name: str) -> threading.Event:
        return phases.setdefault(name, threading.Event())

    summaries: list[Any] = []
    errors: list[BaseException] = []

    def demo() -> None:
        try:
            summaries.append(run_demo(duration=12, rate=60, port=0, out=io.StringIO(), on_phase=on_phase))
        except BaseException as exc:  # re-raised on the test's thread below
            errors.append(exc)

    thread = threading.Thread(target=demo, name="demo")
    thread.start()
    try:
        assert phase("healthy").wait(WAIT), "the demo did not start"
        page = Page(driver, server=None)
        driver.get_log("browser")
        page.open(runs[0].dashboard_url)
        page.wait_for(lambda: int(page.field("downstream", "count-success") or 0) > 0, "successes")
        # Phases run on (up to a few seconds each) when a busy machine delays their effect.
        assert phase("down").wait(3 * WAIT), "the demo never reached the 'down' phase"
        page.wait_field("downstream", "status", "Open")
        page.wait_for(lambda: int(page.field("downstream", "count-short-circuited") or 0) > 0, "short-circuits")
        # The overload's rejections reopened it (the failures before went with the window
        # when a trial closed the circuit in between).
        assert int(page.field("downstream", "count-rejected") or 0) > 0
        shot = os.environ.get("FASTHYSTRIX_SCREENSHOT") or str(tmp_path / "dashboard.png")
        size = driver.get_window_size()
        driver.set_window_size(760, 1000)  # the demo has one command: frame it
        try:
            page.wait_field("downstream", "status", "Open")
            assert driver.save_screenshot(shot)
        finally:
            driver.set_window_size(size["width"], size["height"])
        with open(shot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert phase("recovered").wait(3 * WAIT), "the demo never reached the 'recovered' phase"
        page.wait_field("downstream", "status", "Closed")
        problems = page.console_problems()
        assert not problems, f"the page logged: {problems}"
    except BaseException:
        if runs:
            runs[0].stop()  # end the demo early: the test already failed
        raise
    finally:
        thread.join(3 * WAIT)
        driver.get("about:blank")
    if errors:
        raise errors[0]
    assert summaries and summaries[0].closed_again
