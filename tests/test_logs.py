"""The start-up line masks secrets; LOG_FORMAT=json gives twisted.logger's JSON."""

from __future__ import annotations

import io
import json

import pytest
from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger
from twisted.python.usage import UsageError

from heartbeat.daemon.config import load_settings
from heartbeat.daemon.logs import log_observer, masked
from tests.helpers.in_memory import MemoryServer


def test_secrets_are_masked_and_everything_else_shown():
    settings = load_settings(
        {}, environ={"JWT_SECRET": "hunter2", "REDIS": "redis://:pa55@[::1]:6390/2",
                     "CORS_ORIGINS": "https://a, https://b"}, dotenv={},
    )
    shown = masked(settings)
    text = " ".join(shown.values())
    assert "hunter2" not in text and "pa55" not in text
    assert shown["JWT_SECRET"] == "***"
    assert shown["REDIS"] == "redis://:***@[::1]:6390/2"
    assert shown["CORS_ORIGINS"] == "https://a,https://b"
    assert shown["LISTEN"] == ":8080"
    assert shown["LOG_FORMAT"] == "text"


@pytest.mark.parametrize("value, shown", [
    ("rediss://app:pa55@redis.example.com:6390/1", "rediss://app:***@redis.example.com:6390/1"),
    ("redis+sentinel://app:pa55@s1:26379,s2:26380/mymaster",
     "redis+sentinel://app:***@s1:26379,s2:26380/mymaster/0"),
])
def test_every_redis_form_shows_without_its_password(value, shown):
    assert masked(load_settings({}, environ={"REDIS": value}, dotenv={}))["REDIS"] == shown


def test_unset_secrets_say_unset():
    shown = masked(load_settings({}, environ={"REDIS": ":6379"}, dotenv={}))
    assert shown["JWT_SECRET"] == "unset"
    assert shown["REDIS"] == "redis://localhost:6379/0"


def test_bad_log_format_names_the_setting():
    with pytest.raises(UsageError, match="LOG_FORMAT"):
        load_settings({"log-format": "xml"}, environ={}, dotenv={})


def test_json_observer_writes_one_json_object_per_line():
    out = io.StringIO()
    observer = log_observer(load_settings({}, environ={"LOG_FORMAT": "json"}, dotenv={}), out)
    Logger(observer=observer).info("hello {who}", who="ops")
    line, = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["who"] == "ops" and event["log_format"] == "hello {who}"


def test_text_keeps_twistds_observer():
    assert log_observer(load_settings({}, environ={}, dotenv={})) is None


def test_the_application_gets_the_json_observer():
    service = MemoryServer(LOG_FORMAT="json").service
    application = Application("heartbeat")
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver) is service.log_observer is not None
