"""The documentation site, built in strict mode and read in a real headless chromium.

The site is built once for the module (``mkdocs build --strict`` into a temporary directory),
served on 127.0.0.1, and every page is opened: it must have its title, its navigation and its
heading, every image must have loaded, and the server must have answered no request of the page
with an error (a missing stylesheet, script, image or search index). Then the theme's search
must find a query's pages. Without mkdocs (the docs extra) these tests skip, unless
FASTHYSTRIX_REQUIRE_DOCS=1 (CI, whose tests session installs the docs extra) makes that a
failure; without chromium and chromedriver the browser tests skip unless
FASTHYSTRIX_REQUIRE_BROWSER=1, as the dashboard's do.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support import WAIT
from test_dashboard_browser import CHROMEDRIVER, CHROMIUM, _browser_missing

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.docs


def _docs_missing() -> str | None:
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{module} is not installed (pip install -e '.[docs]')"
    return None


def _require_docs() -> None:
    """Skip without mkdocs, or fail when FASTHYSTRIX_REQUIRE_DOCS=1 says it must be there."""
    missing = _docs_missing()
    if missing:
        if os.environ.get("FASTHYSTRIX_REQUIRE_DOCS", "") == "1":
            pytest.fail(f"FASTHYSTRIX_REQUIRE_DOCS=1 but {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for the module with the checkout's mkdocs.yml, in strict mode."""
    _require_docs()
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    result = subprocess.run(
        [*command, "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, f"the strict build failed:\n{result.stdout}\n{result.stderr}"
    return out


def _pages(site: Path) -> list[str]:
    """Every page of the built site, as a URL path (``/``, ``/concepts/``...)."""
    pages = sorted("/" + str(p.parent.relative_to(site)).replace(".", "").strip("/") for p in site.rglob("index.html"))
    return [p if p == "/" else p + "/" for p in pages]


class _Handler(SimpleHTTPRequestHandler):
    errors: list[tuple[int, str]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if isinstance(code, int) or str(code).isdigit():
            if int(code) >= 400:
                self.errors.append((int(code), self.path))

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's parameter name
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    """The site over HTTP on loopback, and the requests it answered with an error."""
    errors: list[tuple[int, str]] = []
    handler = type("Handler", (_Handler,), {"errors": errors})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, name="docs-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", errors
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def driver(site: Path) -> Iterator[Any]:
    """One headless chromium, set up as tests/test_dashboard_browser.py's (no downloads)."""
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
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # An element the page draws again (the search results, redrawn as the query runs) can go stale
    # between finding and reading it: the condition is tried again, as for one not there yet.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, WAIT, ignored_exceptions=ignored).until(lambda d: condition(d), message=what)


def test_without_mkdocs_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mkdocs" else real(name, *a))
    monkeypatch.delenv("FASTHYSTRIX_REQUIRE_DOCS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="mkdocs is not installed"):
        _require_docs()
    monkeypatch.setenv("FASTHYSTRIX_REQUIRE_DOCS", "1")
    with pytest.raises(pytest.fail.Exception, match="FASTHYSTRIX_REQUIRE_DOCS=1 but mkdocs is not installed"):
        _require_docs()


def test_the_site_has_every_page(site: Path) -> None:
    """The nav's pages were built, the API reference among them, with the public modules in it."""
    pages = _pages(site)
    for page in ("/", "/getting-started/", "/concepts/", "/configuration/", "/integrations/asgi/", "/changelog/"):
        assert page in pages
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for module in ("asgi", "wsgi", "httpx", "requests", "prometheus", "statsd", "otel", "stream", "metric_collector"):
        assert f'id="fasthystrix.{module}"' in reference, module
    assert 'id="fasthystrix.configure_command"' in reference
    # The changelog and the architecture are the repository's files, not copies.
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    first_entry = (ROOT / "CHANGES.md").read_text(encoding="utf-8").split("\n- ", 1)[1].split("`", 1)[0].strip()
    assert first_entry and first_entry in changelog


@pytest.mark.browser
def test_every_page_renders(site: Path, served: tuple[str, list[tuple[int, str]]], driver: Any) -> None:
    from selenium.webdriver.common.by import By

    base, errors = served
    pages = _pages(site)
    assert len(pages) >= 20
    for page in pages:
        before = len(errors)
        driver.get(base + page)
        _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", f"{page} loaded")
        assert "fasthystrix" in driver.title, (page, driver.title)
        assert driver.find_elements(By.CSS_SELECTOR, "nav.md-nav--primary"), f"{page} has no navigation"
        assert driver.find_elements(By.CSS_SELECTOR, "article h1"), f"{page} has no heading"
        broken = driver.execute_script(
            "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
        )
        assert broken == [], f"{page}: images that did not load: {broken}"
        # Assets are fetched as the page loads (scripts, the search worker's index, fonts):
        # give late ones a moment, then no request of this page may have failed.
        _wait(
            driver,
            lambda d: d.execute_script("return performance.getEntriesByType('resource').every(r => r.responseEnd > 0)"),
            f"{page}'s assets fetched",
        )
        assert errors[before:] == [], f"{page}: the server answered errors: {errors[before:]}"
    # The check above can fail: a missing file is an error the server records.
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(base + "/assets/no-such-script.js", timeout=WAIT)
    assert errors.pop() == (404, "/assets/no-such-script.js")


@pytest.mark.browser
def test_search_finds_pages(served: tuple[str, list[tuple[int, str]]], driver: Any) -> None:
    """The theme's search: a query typed into the header's field lists the pages that have it."""
    from selenium.webdriver.common.by import By

    base, errors = served
    driver.get(base + "/")
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", "the home page")
    # At this window's width the field is in the header (narrower windows show a button first).
    field = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input.md-search__input"), "the search field")
    _wait(driver, lambda d: field.is_displayed(), "the search field shown")
    field.click()
    field.send_keys("rejections_count_as_errors")

    def configuration_found(d: Any) -> list[str] | None:
        # Read in the condition: the list is redrawn while the search runs.
        links = [r.get_attribute("href") for r in d.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")]
        return links if any("/configuration/" in link for link in links) else None

    assert _wait(driver, configuration_found, "a search result on the configuration page")
    # A query that matches nothing says so.
    field.clear()
    field.send_keys("zzqxjvw")
    _wait(
        driver,
        lambda d: "No matching documents" in d.find_element(By.CSS_SELECTOR, ".md-search-result__meta").text,
        "no results for a nonsense query",
    )
    assert errors == []
