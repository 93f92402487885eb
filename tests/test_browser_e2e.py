"""A real browser: examples/presence.html on one origin, the daemon on another.

Headless Chromium (Debian's ``chromium``) driven by Playwright, never a
downloaded browser: the page opens one EventSource for two users across
origins (so CORS must work), shows the stored and a live ping, and reconnects
by itself when the daemon restarts on the same port.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers.clients import post_ping
from tests.helpers.processes import REPO, free_port, need_binary

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Reconnecting waits retry: (2 s) after the daemon is back; twistd's start-up
# on a loaded machine comes on top.
RECONNECT_TIMEOUT_MS = 20_000


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_origin() -> Iterator[str]:
    """``examples/`` served on its own loopback port: the page's origin."""
    handler = partial(_QuietHandler, directory=str(REPO / "examples"))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator:
    chromium = need_binary("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is required under CI (pip install '.[test]')")
        pytest.skip("playwright not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page()
        yield page
        browser.close()


def test_contact_list_goes_live_across_origins_and_survives_a_restart(
        start_daemon, page_origin, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    daemon = start_daemon(env={"CORS_ORIGINS": page_origin})
    assert post_ping(daemon.port, "0", userid="alice")[0] == 200

    page.clock.install()
    page.goto(f"{page_origin}/presence.html?server={daemon.url}&user=alice&user=bob")
    alice = page.locator('li[data-user="alice"] .presence')
    bob = page.locator('li[data-user="bob"] .presence')
    badge = page.locator("#connection")
    expect(alice).to_have_text("online")  # the stored ping
    expect(bob).to_have_text("never seen")
    expect(badge).to_have_attribute("data-opens", "1")

    assert post_ping(daemon.port, "1", userid="bob")[0] == 200
    expect(bob).to_have_text("away")  # a live ping, same stream

    daemon.stop()
    expect(badge).to_have_attribute("data-state", "reconnecting")
    # The server decides presence: a short timeout so alice goes offline soon.
    start_daemon(env={"CORS_ORIGINS": page_origin, "PRESENCE_TIMEOUT": "2"}, port=daemon.port)
    expect(badge).to_have_attribute("data-opens", "2", timeout=RECONNECT_TIMEOUT_MS)
    expect(badge).to_have_text("live")
    assert post_ping(daemon.port, "2", userid="alice")[0] == 200
    expect(alice).to_have_text("do not disturb")

    # The server's offline event, then the page's own clock ages "last seen".
    expect(alice).to_have_text("last seen just now", timeout=10_000)
    expect(page.locator('li[data-user="alice"]')).to_have_attribute("data-state", "offline")
    page.clock.fast_forward("03:00")
    expect(alice).to_have_text("last seen 3 min ago")
