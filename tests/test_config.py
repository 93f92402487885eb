"""Settings: precedence, the LISTEN and REDIS forms, and one-line errors."""

import subprocess

import pytest
from twisted.internet.testing import MemoryReactor
from twisted.python.usage import UsageError

from heartbeat.daemon.config import (
    SETTINGS,
    RedisAddress,
    Settings,
    listen_endpoint,
    load_settings,
    parse_redis,
    read_dotenv,
)
from heartbeat.daemon.tap import Options, makeService
from tests.helpers.processes import REPO, TWISTD


def settings(options=None, env=None, dotenv=None) -> Settings:
    return load_settings(options or {}, env or {}, dotenv or {})


def test_defaults():
    s = settings()
    assert (s.listen, s.redis, s.redis_prefix, s.keepalive) == (":8080", None, "heartbeat:", 25.0)
    assert (s.jwt_secret, s.cors_origins, s.max_users_per_stream) == (None, (), 256)
    assert (s.backlog, s.workers) == (4096, 1)


def test_every_setting_is_a_field_and_an_option():
    assert {s.name.lower() for s in SETTINGS} == set(Settings.__dataclass_fields__)
    assert {o[0] for o in Options.optParameters} == {s.option for s in SETTINGS}


def test_option_beats_environment_beats_dotenv_beats_default():
    assert settings(dotenv={"KEEPALIVE": "7"}).keepalive == 7
    assert settings(env={"KEEPALIVE": "5"}, dotenv={"KEEPALIVE": "7"}).keepalive == 5
    assert settings({"keepalive": "3"}, {"KEEPALIVE": "5"}, {"KEEPALIVE": "7"}).keepalive == 3


def test_options_parse_into_settings():
    options = Options()
    options.parseOptions(["--redis-prefix", "hb:", "--max-users-per-stream", "9"])
    s = load_settings(options, {}, {})
    assert (s.redis_prefix, s.max_users_per_stream) == ("hb:", 9)


def test_dotenv_is_read_from_the_directory(tmp_path):
    (tmp_path / ".env").write_text("# comment\nLISTEN=:9999\nKEEPALIVE='4'\n")
    assert read_dotenv(tmp_path) == {"LISTEN": ":9999", "KEEPALIVE": "4"}
    assert read_dotenv(tmp_path / "missing") == {}


@pytest.mark.parametrize("value, expected", [
    (":8080", "tcp:8080:backlog=4096"),
    ("127.0.0.1:8080", "tcp:8080:interface=127.0.0.1:backlog=4096"),
    ("localhost:81", "tcp:81:interface=localhost:backlog=4096"),
    ("[::1]:8080", r"tcp6:8080:interface=\:\:1:backlog=4096"),
    ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=4096"),
    ("tcp:8080:backlog=10", "tcp:8080:backlog=10"),
    ("unix:/run/heartbeat.sock", "unix:/run/heartbeat.sock:backlog=4096"),
    ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
])
def test_listen_forms(value, expected):
    assert listen_endpoint(value, 4096) == expected


@pytest.mark.parametrize("value, expected", [
    ("", None),
    (":6379", RedisAddress("localhost", 6379)),
    ("redis.internal:6380", RedisAddress("redis.internal", 6380)),
    ("[::1]:6379", RedisAddress("::1", 6379)),
    ("redis://:s%40cret@10.0.0.1:6390/2", RedisAddress("10.0.0.1", 6390, "s@cret", 2)),
    ("redis://localhost", RedisAddress("localhost", 6379)),
    ("redis://app:pa%3Ass@[::1]:6390", RedisAddress("::1", 6390, "pa:ss", 0, "app")),
    ("rediss://app:pw@redis.example.com/1",
     RedisAddress("redis.example.com", 6379, "pw", 1, "app", tls=True)),
    ("redis+sentinel://s1:26380,s2,[::1]:26381/mymaster",
     RedisAddress("s1", 26380, kind="sentinel", master="mymaster",
                  servers=(("s1", 26380), ("s2", 26379), ("::1", 26381)))),
    ("rediss+sentinel://u:p@s1:1/mymaster/4",
     RedisAddress("s1", 1, "p", 4, "u", tls=True, kind="sentinel", master="mymaster",
                  servers=(("s1", 1),))),
    ("redis+cluster://n1:7000,n2:7001",
     RedisAddress("n1", 7000, kind="cluster", servers=(("n1", 7000), ("n2", 7001)))),
])
def test_redis_forms(value, expected):
    assert parse_redis(value) == expected


@pytest.mark.parametrize("name, value", [
    ("KEEPALIVE", "abc"), ("KEEPALIVE", "0"), ("KEEPALIVE", "-1"), ("KEEPALIVE", "inf"),
    ("BACKLOG", "0"), ("BACKLOG", "x"), ("MAX_USERS_PER_STREAM", "1.5"),
    ("WORKERS", "0"), ("REDIS", "nohost"), ("REDIS", "host:99999"),
    ("REDIS", "http://x:1"), ("REDIS", "redis://h:1/db"), ("REDIS_PREFIX", ""),
    ("REDIS", "redis+sentinel://h:1"), ("REDIS", "redis://a:1,b:2"),
    ("REDIS", "redis://user@h:1"), ("REDIS", "redis://h:1/0/x"),
    ("REDIS", "redis+sentinel://h:1/m/x"), ("REDIS", "redis+cluster://h:1/0"),
    ("REDIS_WAIT_REPLICAS", "-1"), ("REDIS_WAIT_REPLICAS", "one"),
    ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
])
def test_bad_values_name_the_setting(name, value):
    with pytest.raises(UsageError, match=f"^bad setting {name}"):
        settings(env={name: value})


@pytest.mark.parametrize("env, message", [
    ({"REDIS": ":6379", "REDIS_CA_FILE": __file__}, "^bad setting REDIS_CA_FILE"),
    ({"REDIS_WAIT_REPLICAS": "1"}, "^bad setting REDIS_WAIT_REPLICAS"),
])
def test_redis_settings_that_do_not_go_together(env, message):
    with pytest.raises(UsageError, match=message):
        settings(env=env)


def test_a_ca_file_that_is_no_pem_bundle_is_a_bad_setting(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    with pytest.raises(UsageError, match="^bad setting REDIS_CA_FILE=.*no PEM certificate"):
        settings(env={"REDIS": "rediss://h:1", "REDIS_CA_FILE": str(bundle)})


def test_workers_need_redis():
    with pytest.raises(UsageError, match="WORKERS"):
        settings(env={"WORKERS": "2"})
    assert settings(env={"WORKERS": "2", "REDIS": ":6379"}).workers == 2


def test_workers_refuse_tls_they_would_answer_in_plain_text():
    with pytest.raises(UsageError, match="^bad setting WORKERS: .*LISTEN=ssl:"):
        settings(env={"WORKERS": "2", "REDIS": ":6379",
                      "LISTEN": "ssl:8443:privateKey=k.pem:certKey=c.pem"})
    assert settings(env={"LISTEN": "ssl:8443:privateKey=k.pem:certKey=c.pem"}).workers == 1


def test_bad_listen_exits_with_one_line():
    options = Options()
    options.parseOptions(["--listen", "bogus:thing"])
    with pytest.raises(SystemExit, match="^heartbeat: bad setting LISTEN='bogus:thing'"):
        makeService(options, MemoryReactor())


def test_bad_setting_from_twistd_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "heartbeat", "--keepalive", "soon"],
        cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("heartbeat: bad setting KEEPALIVE='soon'")


def test_dotenv_in_working_directory_configures_twistd(tmp_path):
    (tmp_path / ".env").write_text("MAX_USERS_PER_STREAM=zero\n")
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "heartbeat"],
        cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert "bad setting MAX_USERS_PER_STREAM='zero'" in result.stderr


@pytest.mark.parametrize("text, seconds", [
    ("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400), ("30d", 2_592_000), ("1.5h", 5400),
])
def test_durations(text, seconds):
    assert settings(env={"DEVICE_RETENTION": text}).device_retention == seconds


@pytest.mark.parametrize("text", ["", "0", "-1d", "5w", "d", "1e999", "nan"])
def test_bad_durations_name_the_setting(text):
    with pytest.raises(UsageError, match="DEVICE_RETENTION"):
        settings(env={"DEVICE_RETENTION": text})


def test_api_keys_and_drain():
    s = settings(env={"API_KEY": " one, two ,,", "DRAIN_SECONDS": "2.5"})
    assert (s.api_key, s.drain_seconds) == (("one", "two"), 2.5)
    assert (settings().api_key, settings().drain_seconds, settings().device_retention) == (
        (), 0, 30 * 86400)
    with pytest.raises(UsageError, match="DRAIN_SECONDS"):
        settings(env={"DRAIN_SECONDS": "-1"})


def test_api_keys_are_never_logged():
    from heartbeat.daemon.logs import MASK, masked

    assert masked(settings(env={"API_KEY": "secret-one,secret-two"}))["API_KEY"] == MASK
