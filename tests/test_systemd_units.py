"""The shipped systemd units: what they promise, and that systemd accepts them."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.processes import REPO, need_binary

UNITS = REPO / "contrib" / "systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_service_runs_twistd_as_notify_with_hardening():
    service = unit("heartbeat.service")["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith("twistd -n --pidfile= heartbeat")
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "-/etc/heartbeat.env"
    for key in ("DynamicUser", "NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert service["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"


def test_service_keeps_the_embedded_store_in_its_state_directory():
    service = unit("heartbeat.service")["Service"]
    assert service["StateDirectory"] == "heartbeat"
    assert "DATABASE=/var/lib/heartbeat/heartbeat.db" in service["Environment"].split()


def test_service_gives_the_drain_time_to_stop():
    service = unit("heartbeat.service")["Service"]
    env = dict(item.split("=", 1) for item in service["Environment"].split())
    assert float(service["TimeoutStopSec"]) > float(env["DRAIN_SECONDS"]) + 5


def test_socket_and_its_drop_in_agree():
    assert unit("heartbeat.socket")["Socket"]["ListenStream"]
    drop_in = unit("socket-activation.conf")
    assert drop_in["Service"]["Environment"] == "LISTEN=systemd:domain=INET:index=0"
    assert drop_in["Unit"]["Requires"] == "heartbeat.socket"


def test_systemd_accepts_the_units(tmp_path: Path):
    # Skipped only outside CI: .ci/run installs systemd for its analyzer.
    analyze = need_binary("systemd-analyze")
    # verify insists ExecStart exists: point it at this environment's twistd.
    text = (UNITS / "heartbeat.service").read_text()
    twistd = str(Path(sys.executable).with_name("twistd"))
    (tmp_path / "heartbeat.service").write_text(text.replace("/opt/heartbeat/bin/twistd", twistd))
    shutil.copy(UNITS / "heartbeat.socket", tmp_path)
    result = subprocess.run([analyze, "verify", "heartbeat.socket", "heartbeat.service"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
