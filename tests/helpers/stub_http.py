"""Requests to a Klein resource through treq's StubTreq, settled at once (no sockets)."""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def settled(client: StubTreq, d: Deferred):
    """``d``'s result once the stub's requests have run (raised if it failed)."""
    client.flush()
    results: list = []
    d.addBoth(results.append)
    (result,) = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


def call(client: StubTreq, method: str, url: str, **kwargs) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, body) of one request to ``http://heartbeat<url>``."""
    response = settled(client, client.request(method, "http://heartbeat" + url, **kwargs))
    body = settled(client, response.content())
    headers = {k.decode().lower(): v[-1].decode()
               for k, v in response.headers.getAllRawHeaders()}
    return response.code, headers, body
