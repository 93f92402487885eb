"""The relay from the Redis bus to the hub: each message's changes, delivered."""

from __future__ import annotations

from twisted.logger import Logger

from heartbeat.core.store_contract import BusListener
from heartbeat.store.redis.codec import from_message

log = Logger()


def relay(listener: BusListener | None, prefix: str, channel: str, text: object) -> None:
    """Hand the changes a bus message on ``channel`` carries to ``listener``.

    An exception here would escape into the subscriber protocol and drop
    the subscriber connection for every stream of this process: logged instead.
    """
    if not (isinstance(text, str) and channel.startswith(prefix)):
        return
    changes = from_message(channel[len(prefix):], text)
    if changes and listener is not None:
        try:
            for change in changes:
                listener.deliver(change)
        except Exception:
            log.failure("delivering a ping failed")
