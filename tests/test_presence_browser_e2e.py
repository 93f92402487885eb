"""A real browser tab holding a presence stream and running no timer, then reloaded.

Headless Chromium, driven as in ``tests/test_browser_e2e.py``. The page opens
its presence stream and runs no code after that, as a background tab whose
timers the browser throttles or freezes: its user stays online for a
watcher. A reload closes the stream and opens a new one within
``LEAVE_GRACE``: the watcher sees no offline event.

(Freezing the tab itself, ``Page.setWebLifecycleState`` ``frozen`` over
CDP, has no effect in headless Chromium 156: its timers keep running and no
``freeze`` event fires, so the test could not tell it had worked.)
"""

from __future__ import annotations

import time

import jwt

from tests.helpers.clients import SSEClient
from tests.test_browser_e2e import browser_page  # noqa: F401 (the fixture)

SECRET = "a-test-secret-of-at-least-32-bytes!"
TIMEOUT = 2
OPEN_PRESENCE = """token => new Promise((resolve, reject) => {
  window.presence = new EventSource(`/subscribe/bob?presence=0&token=${token}`);
  window.presence.onopen = () => resolve(true);
  setTimeout(() => reject(new Error("the presence stream did not open")), 10000);
})"""


def test_a_tab_with_no_ping_timer_stays_online_and_a_reload_shows_no_offline(
        start_daemon, browser_page):  # noqa: F811
    page = browser_page
    daemon = start_daemon(env={"JWT_SECRET": SECRET, "PRESENCE_TIMEOUT": str(TIMEOUT),
                               "LEAVE_GRACE": "5", "KEEPALIVE": "1"})
    token = jwt.encode({"userid": "alice", "clientid": "tab"}, SECRET, algorithm="HS256")
    watcher_token = jwt.encode({"userid": "carol"}, SECRET, algorithm="HS256")
    watcher = SSEClient(daemon.port, f"/subscribe/alice?token={watcher_token}")

    page.goto(f"{daemon.url}/health")  # the daemon's origin: no CORS needed
    assert page.evaluate(OPEN_PRESENCE, token)
    assert watcher.event()["online"] is True

    # Four timeouts with no ping: the open stream is the heartbeat.
    watcher.no_event(4 * TIMEOUT)

    page.reload()
    assert page.evaluate(OPEN_PRESENCE, token)
    event = watcher.event()
    assert event["online"] is True  # the new stream's opening, a ping
    watcher.no_event(5 + 2)  # past the grace of the stream the reload closed

    page.goto("about:blank")  # the tab closes its stream for good
    closed = time.monotonic()
    assert watcher.event(timeout=5 + 4)["online"] is False
    assert time.monotonic() - closed >= 5 - 0.5
