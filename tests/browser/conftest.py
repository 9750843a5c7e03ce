"""Headless Chromium (Debian's package, driven by Playwright) against `python app.py` in demo mode."""
import os
import shutil
from urllib.parse import urlsplit

import pytest

from tests.conftest import LiveServer, require

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
TIMEOUT_MS = 10_000


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    "One headless Chromium per module; launch() gives it a fresh temporary profile."
    executable = chromium_path()
    require("Debian's chromium", executable is not None and os.path.exists(executable),
            "apt-get install -y chromium (or set CHROMIUM_PATH)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Visitor:
    """One browser context (its own cookies, so its own tasks) with one page, recording what the page does."""

    def __init__(self, browser, base_url: str):
        self.context = browser.new_context(base_url=base_url)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.loads = 0
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page = self.context.new_page()
        self.page.on("load", self._loaded)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _loaded(self, _page): self.loads += 1

    def open(self):
        self.page.goto("/")
        has_htmx = self.page.evaluate("typeof window.htmx !== 'undefined'")
        assert has_htmx, "htmx did not load from /static/vendor/htmx.min.js: run `make assets`"
        return self.page

    def remote_requests(self) -> list[str]:
        "Requests that left the machine (data: and blob: URLs never do)."
        return [url for url in self.requests
                if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).hostname not in LOCAL_HOSTS]

    def close(self): self.context.close()


@pytest.fixture
def visit(browser, live_server):
    "Open browser contexts on the live server; each ends the test having asked only localhost for anything."
    visitors = []

    def make() -> Visitor:
        visitors.append(Visitor(browser, live_server.url))
        return visitors[-1]
    yield make
    for visitor in visitors: visitor.close()


@pytest.fixture
def visit_server(browser, tmp_path):
    "Open a browser on an app started with extra settings (environment variables)."
    opened = []

    def make(**env) -> Visitor:
        server = LiveServer(tmp_path, **env)
        opened.append((server, Visitor(browser, server.url)))
        return opened[-1][1]
    yield make
    for server, visitor in opened:
        visitor.close()
        server.stop()
