"""The in-process store and bus: one instance, nothing kept across restarts."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed

from heartbeat.core.feed import Listener
from heartbeat.core.presence import Ping


class MemoryStore:
    """The in-process store and bus: one instance, nothing kept across restarts."""

    listener: Listener | None = None
    available = True
    kind = "memory"

    def __init__(self) -> None:
        self._pings: dict[str, Ping] = {}
        self._subscribed: set[str] = set()
        self.reconnects: dict[str, int] = {}

    def ping(self, ping: Ping) -> Deferred[None]:
        self._pings[ping.userid] = ping
        if ping.userid in self._subscribed and self.listener is not None:
            self.listener.deliver(ping)
        return succeed(None)

    def get(self, userids: Iterable[str]) -> Deferred[dict[str, Ping | None]]:
        return succeed({userid: self._pings.get(userid) for userid in userids})

    def subscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.add(userid)
        return succeed(None)

    def unsubscribe(self, userid: str) -> Deferred[None]:
        self._subscribed.discard(userid)
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)
