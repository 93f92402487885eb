from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

# The process fixtures live with the other helpers; importing them here makes them
# every test's.
from tests.helpers.fixtures import (  # noqa: F401
    any_redis,
    cluster,
    daemon,
    module_redis,
    redis_server,
    start_daemon,
    start_tls_daemon,
    tls_certificate,
    tls_trust,
)
from tests.helpers.redis_stores import make_redis_store, redis_address  # noqa: F401


@pytest.fixture(autouse=True)
def _garbage_collection_as_it_was() -> Iterator[None]:
    """Undo what starting ``makeService``'s tree does to the process's collector (freeze, thresholds)."""
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
    (``tests.helpers.processes.Daemon`` drops every setting from the environment).
    """
    monkeypatch.setenv("DATABASE", ":memory:")
