"""Writing an event straight to the socket when nothing is queued before it.

A Twisted transport queues every write and sends it on the reactor's next
turn, registering the socket for writability first and unregistering it
once the queue is empty: two ``epoll_ctl`` calls per write. Fanning one
ping out to thousands of streams is one small write per stream, and py-spy
put those ``epoll_ctl`` calls at over a third of the fan-out's time. When
the transport has nothing queued, sending at once is what its next turn
would do anyway, minus the registration; whatever the socket does not take
(or any error) goes through the transport as usual, so ordering, buffering
and flow control stay Twisted's.
"""

from __future__ import annotations

from twisted.internet.interfaces import ITransport
from twisted.internet.tcp import Connection


def eager_write(transport: ITransport, data: bytes) -> None:
    """Write ``data`` on ``transport``, sending it now if nothing is ahead of it."""
    if (
        isinstance(transport, Connection)  # TCP and unix sockets
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
    ):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # otherwise an error the transport will meet again
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)
