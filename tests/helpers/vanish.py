"""A client that vanishes without a FIN, in a private network (run by a test as root).

    unshare -n python -m tests.helpers.vanish

Runs inside a fresh network namespace: the daemon listens there, a watcher
reads it over loopback, and the presence stream's client lives in a second
namespace joined by a veth pair. Taking the client's link down is a phone
in a tunnel: nothing more reaches it, nothing comes back, no FIN, no RST.
Prints one JSON line: the seconds from the vanishing to the watcher's
offline event.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers.clients import SSEClient
from tests.helpers.processes import Daemon, free_port

SERVER, CLIENT = "10.211.0.1", "10.211.0.2"
CLIENT_CODE = """
import json, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
claim = json.dumps({"userid": "alice", "clientid": "phone"})
sock.sendall(("GET /subscribe/bob?presence=0 HTTP/1.1\\r\\nHost: x\\r\\n"
              "X-User-Claim: " + claim + "\\r\\n\\r\\n").encode())
sock.recv(4096)
print("open", flush=True)
while sock.recv(4096):
    pass
"""


def run(*command: str) -> None:
    subprocess.run(command, check=True)


def main() -> None:
    timeout, grace = sys.argv[1], sys.argv[2]
    run("ip", "link", "set", "lo", "up")
    run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    holder = subprocess.Popen(["unshare", "-n", "sleep", "600"])
    time.sleep(0.2)
    inside = ["nsenter", "-t", str(holder.pid), "-n"]
    daemon = client = None
    try:
        run("ip", "link", "set", "v1", "netns", str(holder.pid))
        run("ip", "addr", "add", f"{SERVER}/24", "dev", "v0")
        run("ip", "link", "set", "v0", "up")
        run(*inside, "ip", "link", "set", "lo", "up")
        run(*inside, "ip", "addr", "add", f"{CLIENT}/24", "dev", "v1")
        run(*inside, "ip", "link", "set", "v1", "up")
        port = free_port()
        daemon = Daemon(Path(tempfile.mkdtemp()), ["--presence-timeout", timeout,
                                                   "--leave-grace", grace, "--keepalive", "1"],
                        {"DATABASE": ":memory:"}, port, listen=f"tcp:{port}").start()
        watcher = SSEClient(port, "/subscribe/alice")
        client = subprocess.Popen([*inside, sys.executable, "-c", CLIENT_CODE, SERVER, str(port)],
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdout.readline() == "open\n"
        assert watcher.event(timeout=10)["online"] is True
        time.sleep(1)
        run(*inside, "ip", "link", "set", "v1", "down")
        vanished = time.monotonic()
        event = watcher.event(timeout=60)
        print(json.dumps({"online": event["online"], "seconds": time.monotonic() - vanished}))
    finally:
        for proc in (client, holder):
            if proc is not None:
                proc.kill()
                proc.wait()
        if daemon is not None:
            daemon.stop()


if __name__ == "__main__":
    main()
