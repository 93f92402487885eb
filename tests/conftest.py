from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Daemon, RedisServer


@pytest.fixture(autouse=True)
def _garbage_collection_as_it_was() -> Iterator[None]:
    """Undo what ``makeService`` does to the process's collector (freeze, thresholds)."""
    threshold = gc.get_threshold()
    frozen = gc.get_freeze_count()
    yield
    if gc.get_freeze_count() != frozen or gc.get_threshold() != threshold:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.fixture(autouse=True)
def _no_database_in_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process services keep nothing on disk unless a test asks (``DATABASE``).

    ``makeService`` reads the environment; without this each would open
    ``heartbeat.db`` in the checkout. Spawned daemons do not inherit it
    (``tests.support.Daemon`` drops every setting from the environment).
    """
    monkeypatch.setenv("DATABASE", ":memory:")


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
