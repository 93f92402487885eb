"""A real Redis Cluster for tests: three masters, three replicas, on free loopback ports."""

from __future__ import annotations

import subprocess
import time
from itertools import count
from pathlib import Path

from heartbeat.store.redis.keys import slot
from tests.helpers.processes import RedisServer, free_port, need_binary

# Small, so a killed master's replica is promoted within a few seconds.
NODE_TIMEOUT_MS = 2000


class RedisCluster:
    """Six ``redis-server --cluster-enabled yes``, joined by ``redis-cli --cluster create``."""

    def __init__(self, directory: Path, size: int = 6) -> None:
        self.directory = directory
        self.nodes: list[RedisServer] = []
        for n in range(size):
            node_dir = directory / f"node{n}"
            node_dir.mkdir()
            self.nodes.append(RedisServer(node_dir, args=[
                "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # A replica may take over whatever its master's last contact was.
                "--cluster-replica-validity-factor", "0",
            ]))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[:3])

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [need_binary("redis-cli"), "--cluster", "create",
             *(node.address for node in self.nodes), "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_ok()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def alive(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says ``cluster_state:ok``, there are three masters,
        and each has its replicas in sync (``cluster_state:ok`` comes before)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if all(b"cluster_state:ok" in node.command("CLUSTER", "INFO")
                       for node in self.alive()) and len(self.masters()) == 3 and all(
                           self._replicas_online(self.node(address)) for address in self.masters()):
                    return
            except subprocess.CalledProcessError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster is not ok")
            time.sleep(0.1)

    def _replicas_online(self, master: RedisServer) -> bool:
        replication = master.command("INFO", "replication").decode()
        wanted = len(self.alive()) // 3 - 1
        return replication.count("state=online") >= wanted

    def masters(self) -> dict[str, list[tuple[int, int]]]:
        """Each live master's address and slot ranges, as a live node sees them."""
        node = self.alive()[0]
        masters: dict[str, list[tuple[int, int]]] = {}
        for line in node.command("CLUSTER", "NODES").decode().splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2] or len(fields) < 9:
                continue
            ranges = [field for field in fields[8:] if not field.startswith("[")]
            address = fields[1].split("@")[0]
            masters[address] = [
                (int(r.split("-")[0]), int(r.split("-")[-1])) for r in ranges
            ]
        return masters

    def node(self, address: str) -> RedisServer:
        return next(node for node in self.nodes if node.address == address)

    def owner(self, slot: int) -> RedisServer:
        for address, ranges in self.masters().items():
            if any(start <= slot <= end for start, end in ranges):
                return self.node(address)
        raise LookupError(f"no master serves slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        return node.command("CLUSTER", "MYID").decode().strip()


def migrate_slot(cluster: RedisCluster, slot: int, target: RedisServer,
                 pause: float = 0.0) -> None:
    """Move ``slot`` to ``target`` by hand, key by key, as ``redis-cli --cluster reshard`` does.

    ``pause`` seconds between steps leave clients time to meet ``ASK``
    (keys gone already) and ``TRYAGAIN`` (a script's keys split between
    the two nodes) on the way.
    """
    source = cluster.owner(slot)
    if source is target:
        return
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    target.command("CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
    source.command("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    time.sleep(pause)
    while True:
        keys = source.command("CLUSTER", "GETKEYSINSLOT", str(slot), "1").decode().split()
        if not keys:
            break
        source.command("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)
        time.sleep(pause)
    for node in (target, source, *(n for n in cluster.alive() if n not in (target, source))):
        node.command("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)


_ids = count()


def fresh_user() -> str:
    """A user id no other test of the run has used."""
    return f"user{next(_ids)}"


def user_slot(userid: str) -> int:
    """The hash slot of ``userid``'s keys and channel (the default prefix)."""
    return slot("heartbeat:" + userid)


def users_on_every_master(cluster: RedisCluster, per_master: int = 2) -> list[str]:
    """Fresh user ids, ``per_master`` of them in each master's slots."""
    wanted: dict[str, list[str]] = {address: [] for address in cluster.masters()}
    while any(len(users) < per_master for users in wanted.values()):
        userid = fresh_user()
        owner = cluster.owner(user_slot(userid)).address
        if len(wanted[owner]) < per_master:
            wanted[owner].append(userid)
    return [userid for users in wanted.values() for userid in users]


def shard_subscribers(cluster: RedisCluster, userid: str) -> int:
    """How many sharded subscribers ``userid``'s channel has on its master."""
    channel = "heartbeat:" + userid
    reply = cluster.owner(slot(channel)).command("PUBSUB", "SHARDNUMSUB", channel)
    return int(reply.split()[1])


def moved_off(cluster: RedisCluster, userid: str, master: RedisServer) -> bool:
    """Whether a master other than ``master`` now serves ``userid``'s slot."""
    try:
        return cluster.owner(user_slot(userid)) is not master
    except LookupError:  # no master for the slot yet
        return False
