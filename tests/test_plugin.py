"""The twistd plugin and the .tac file build the same service."""

import gc
import subprocess

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins

from heartbeat.daemon.service import HeartbeatService
from heartbeat.daemon.tap import Options, makeService
from tests.helpers.clients import SSEClient, post_ping
from tests.helpers.processes import REPO, TWISTD, free_port, wait_for_port


def test_plugin_is_found_by_twistd():
    makers = {p.tapname: p for p in getPlugins(IServiceMaker) if IPlugin.providedBy(p)}
    assert makers["heartbeat"].options is Options


def test_make_service_builds_the_tree_without_listening():
    options = Options()
    options.parseOptions(["--listen", "127.0.0.1:9123", "--keepalive", "5"])
    reactor = MemoryReactorClock()
    service = makeService(options, reactor)
    assert isinstance(service, HeartbeatService)
    children = list(service)
    assert service.listening in children
    assert service.hub.keepalive_every == 5  # each stream's comment, on the hub's wheel
    assert reactor.tcpServers == []
    service.startService()
    port, _, backlog, interface = reactor.tcpServers[0]
    assert (port, backlog, interface) == (9123, 4096, "127.0.0.1")


def test_starting_takes_start_up_objects_out_of_garbage_collection_building_does_not():
    gc.unfreeze()
    threshold = gc.get_threshold()
    service = makeService(Options(), MemoryReactorClock())
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == threshold
    service.startService()
    # conftest's autouse fixture undoes both after the test.
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold() == threshold  # Python's: larger young generations pause longer


def test_tac_file_runs_the_same_service(tmp_path):
    port = free_port()
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "LISTEN": f"127.0.0.1:{port}"}
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "-y", str(REPO / "heartbeat.tac")],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        assert post_ping(port, "1")[0] == 200
        assert SSEClient(port, "/subscribe/alice").event()["status"] == "1"
    finally:
        proc.terminate()
        proc.wait(10)
