"""twistd plugin: ``twistd -n heartbeat``. Lazy, so ``twistd --help`` stays light."""

from twisted.application.service import ServiceMaker

heartbeat = ServiceMaker(
    "heartbeat",
    "heartbeat.tap",
    "Last-seen presence over Server-Sent Events",
    "heartbeat",
)
