"""``REDIS_WAIT_REPLICAS``: whether a ``WAIT`` counted enough replicas."""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()


class Replicas:
    """Counts a ``WAIT``'s answer against ``REDIS_WAIT_REPLICAS``.

    Logged when that changes, not for every batch, as a short count lasts
    until a replica is back.
    """

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self._short = False

    def enough(self, acknowledged: object) -> bool:
        short = not (isinstance(acknowledged, (int, str)) and int(acknowledged) >= self.wanted)
        if short != self._short:
            self._short = short
            if short:
                log.warn("redis: {acknowledged} of {wanted} replicas acknowledged (REDIS_WAIT_REPLICAS):"
                         " pings get 503", acknowledged=acknowledged, wanted=self.wanted)
            else:
                log.info("redis: replicas acknowledge pings again")
        return not short
