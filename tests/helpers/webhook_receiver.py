"""A real webhook endpoint for end-to-end tests: an HTTP server that checks every signature."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

from tests.helpers.processes import free_port

SECRET = "whsec_" + base64.b64encode(b"e2e-secret-0123456789abcdef").decode()


class Receiver:
    """A webhook endpoint: answers from ``answers`` (then 200), checks every signature."""

    def __init__(self) -> None:
        self.port = free_port()
        self.answers: list[object] = []
        self.bad_signatures = 0
        self.requests: list[tuple[str, list[dict]]] = []
        self.accepted: list[dict] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    payload = Webhook(SECRET).verify(body, dict(self.headers.items()))
                except Exception:
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    payload = json.loads(body)
                with receiver.lock:
                    receiver.requests.append((self.headers["webhook-id"], payload["changes"]))
                    answer = receiver.answers.pop(0) if receiver.answers else 200
                if answer == "hang":
                    time.sleep(11)  # past the sender's 10 s
                    answer = 200
                elif answer == 200:
                    with receiver.lock:
                        receiver.accepted.extend(payload["changes"])
                try:
                    self.send_response(int(answer))  # type: ignore[call-overload]
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except ConnectionError:  # the sender gave up on it (the hung one)
                    pass

            def log_message(self, *args: object) -> None: ...

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait_for(self, ids: set[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= {c["id"] for c in self.accepted}:
            assert time.monotonic() < deadline, f"missing {ids - {c['id'] for c in self.accepted}}"
            time.sleep(0.1)
