"""The relay from the Redis bus to the hub: each message's changes, delivered."""

from __future__ import annotations

from functools import partial

from twisted.logger import Logger

from heartbeat.core.changes import Position
from heartbeat.core.store_contract import BusListener
from heartbeat.store.redis.codec import from_message
from heartbeat.store.redis.feed import RedisFeed

log = Logger()


def relay(listener: BusListener | None, prefix: str, channel: str, text: object,
          feed: RedisFeed | None = None) -> None:
    """Hand the changes a bus message on ``channel`` carries to ``listener``, with the
    feed positions it gives, as ``feed`` reads them.

    An exception here would escape into the subscriber protocol and drop
    the subscriber connection for every stream of this process: logged instead.
    """
    if not (isinstance(text, str) and channel.startswith(prefix)):
        return
    position = Position.parse if feed is None else partial(feed.bus_position, channel)
    changes, positions = from_message(channel[len(prefix):], text, position)
    if changes and listener is not None:
        try:
            for change in changes:
                if positions is None:
                    listener.deliver(change)
                else:
                    listener.deliver(change, positions.get(change.clientid), judged=True)
        except Exception:
            log.failure("delivering a ping failed")
