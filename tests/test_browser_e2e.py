"""A real browser: examples/presence.html on one origin, the daemon on another.

Headless Chromium (Debian's ``chromium``) driven by Playwright, never a
downloaded browser: the page, built on the client library (clients/js), opens
one stream for two users across origins (so CORS must work), shows the stored
and a live ping, and reconnects by itself when the daemon restarts on the same
port.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.browsers import checkout_site, chromium
from tests.helpers.clients import post_ping

# Reconnecting waits the client's backoff after the daemon is back; twistd's
# start-up on a loaded machine comes on top.
RECONNECT_TIMEOUT_MS = 20_000


@pytest.fixture
def page_origin() -> Iterator[str]:
    with checkout_site() as origin:
        yield origin


@pytest.fixture
def browser_page() -> Iterator:
    with chromium() as browser:
        yield browser.new_page()


def test_contact_list_goes_live_across_origins_and_survives_a_restart(
        start_daemon, page_origin, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    daemon = start_daemon(env={"CORS_ORIGINS": page_origin})
    assert post_ping(daemon.port, "0", userid="alice")[0] == 200

    page.clock.install()
    page.goto(f"{page_origin}/examples/presence.html?server={daemon.url}&user=alice&user=bob")
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
