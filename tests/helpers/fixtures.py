"""Pytest fixtures for real processes: daemons, a redis-server, a TLS certificate.

``tests/conftest.py`` imports them, so every test can ask for them by name.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.clients import health
from tests.helpers.processes import Daemon, RedisServer, free_port, need_binary
from tests.helpers.redis_cluster import RedisCluster
from tests.helpers.waiting import wait_for


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    """Start real daemons (``start_daemon(args, env)``); all stopped at the end."""
    started: list[Daemon] = []

    def start(args: list[str] = (), env: dict[str, str] | None = None,
              port: int | None = None, healthy: bool = True, **where: str) -> Daemon:
        daemon = Daemon(tmp_path, list(args), env, port, **where).start(healthy)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(start_daemon) -> Daemon:
    return start_daemon()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(key.pem, cert.pem) for localhost and 127.0.0.1, from the README's openssl command."""
    openssl = need_binary("openssl")
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem",
         "-out", "cert.pem", "-days", "365", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        cwd=directory, check=True, capture_output=True,
    )
    return directory / "key.pem", directory / "cert.pem"


@pytest.fixture
def tls_trust(tls_certificate: tuple[Path, Path]) -> ssl.SSLContext:
    """A client context trusting only that certificate, offering ALPN as curl and browsers do."""
    context = ssl.create_default_context(cafile=str(tls_certificate[1]))
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


@pytest.fixture
def start_tls_daemon(start_daemon, tls_certificate, tls_trust) -> Callable[..., Daemon]:
    """Start real daemons listening with TLS (``LISTEN=ssl:…``), once they serve over it."""
    def start(args: list[str] = ()) -> Daemon:
        key, cert = tls_certificate
        port = free_port()
        daemon = start_daemon(args, port=port, healthy=False,
                              listen=f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        wait_for(lambda: health(port, tls_trust)["status"] == "ok")
        return daemon

    return start


class AnyRedis:
    """One redis-server or a Redis Cluster: its ``REDIS`` and a FLUSHALL of every master."""

    def __init__(self, url: str, masters: list[RedisServer],
                 cluster: RedisCluster | None = None) -> None:
        self.url = url
        self._masters = masters
        # The Cluster, for tests that move its slots by hand (None: one redis-server).
        self.cluster = cluster

    def flush(self) -> None:
        for master in self._masters:
            master.command("FLUSHALL")

    def publish(self, channel: str, message: str) -> None:
        """Publish as another service does: on one Redis, ``PUBLISH``; in a Cluster,
        ``SPUBLISH`` on the master of the channel's slot (where heartbeat listens)."""
        if self.cluster is None:
            self._masters[0].command("PUBLISH", channel, message)
        else:
            from heartbeat.store.redis.keys import slot

            self.cluster.owner(slot(channel)).command("SPUBLISH", channel, message)


@contextmanager
def _redis_of(kind: str, directory: Path) -> Iterator[AnyRedis]:
    if kind == "single":
        server = RedisServer(directory).start()
        yield AnyRedis(server.address, [server])
        server.stop()
    else:
        cluster = RedisCluster(directory).start()
        yield AnyRedis(cluster.url, [cluster.node(address) for address in cluster.masters()],
                       cluster)
        cluster.stop()


@pytest.fixture(params=["single", "cluster"])
def any_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyRedis]:
    """A test run on one Redis, then on a Cluster: a rule both layouts share."""
    with _redis_of(request.param, tmp_path) as redis:
        yield redis


@pytest.fixture(scope="module", params=["single", "cluster"])
def module_redis(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnyRedis]:
    """As ``any_redis``, one of each for a module's tests (a Cluster takes seconds to
    build): each test flushes it first."""
    with _redis_of(request.param, tmp_path_factory.mktemp(request.param)) as redis:
        yield redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One Redis Cluster for a whole test module (it takes seconds to build): its tests
    use users of their own, and leave it with every master up."""
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    yield cluster
    cluster.stop()
