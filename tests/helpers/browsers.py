"""A real browser for end-to-end tests: Debian's chromium through Playwright.

Never a downloaded browser (``playwright install`` is not used). The pages are
served from the checkout by a plain static server on their own loopback origin,
so the daemon is reached across origins (``CORS_ORIGINS``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.helpers.processes import REPO, free_port, need_binary

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def checkout_site() -> Iterator[str]:
    """The checkout served on a loopback port (``/examples/…``, ``/clients/js/…``): its origin."""
    handler = partial(_QuietHandler, directory=str(REPO))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium (a Playwright ``Browser``); skipped without one, failed under CI."""
    executable = need_binary("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("playwright is required under CI (pip install '.[test]')")
        pytest.skip("playwright not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
