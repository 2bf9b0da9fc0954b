"""Helpers for browser tests: a live server for the test app, Debian's Chromium, screenshots.

Playwright drives the Chromium that Debian installs (scripts/setup): its own browser
download cannot work on our machines. A missing browser fails the test, locally and on CI.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, Playwright, sync_playwright
from werkzeug.serving import make_server

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root, and no background traffic: the machine's network is closed, and
# Chromium's own connections (sync, updates, QUIC probes) would only be refused.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@contextmanager
def live_server(app: Flask) -> Iterator[str]:
    """Serve `app` on a free port of 127.0.0.1 in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless; fails with the fix when it is not installed."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: browser tests need Debian's chromium (scripts/setup installs it)"
    )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


def save_screenshot(page: Page, test_name: str) -> Path:
    """A full-page screenshot in test-artifacts/, named after the test."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", test_name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, for one test module."""
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def open_page(browser: Browser) -> Page:
    """A page in a fresh browser context, as a person in the trust sees the desk (en-GB,
    Europe/London); close it with `page.context.close()`."""
    context = browser.new_context(locale="en-GB", timezone_id="Europe/London")
    context.set_default_timeout(15_000)
    return context.new_page()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context per test; a screenshot when the test failed."""
    failures_before = request.session.testsfailed
    page = open_page(browser)
    yield page
    # The call's report is logged before teardown, so a failed test has counted by now.
    if request.session.testsfailed > failures_before:
        print("screenshot:", save_screenshot(page, request.node.name))
    page.context.close()


@pytest.fixture
def live_url(app: Flask) -> Iterator[str]:
    """The test app served on a free loopback port."""
    with live_server(app) as url:
        yield url
