"""HIDDEN_STATUSES (SPEC §1): the setting and the rule of which statuses hide.

Presence applies the rule (what is stored and sent for a hidden ping); these
tests cover what is built before it: parsing, validation, and the rule.
"""

from __future__ import annotations

import pytest
from twisted.python.usage import UsageError

from heartbeat.core.hidden import Hiding, parse_hidden_statuses
from heartbeat.daemon.config import load_settings
from heartbeat.daemon.logs import masked
from heartbeat.daemon.tap import Options


def test_unset_hides_nothing():
    settings = load_settings({}, {}, {})
    assert settings.hidden_statuses == ()
    hiding = Hiding.of(settings.hidden_statuses)
    assert not hiding
    assert not any(hiding.hides(status) for status in ("0", "1", "2", "3", ""))
    assert masked(settings)["HIDDEN_STATUSES"] == "unset"


def test_beeps_invisible_hides_and_nothing_else_does():
    hiding = Hiding.of(load_settings({}, {"HIDDEN_STATUSES": "3"}, {}).hidden_statuses)
    assert hiding
    assert hiding.hides("3")
    assert not any(hiding.hides(status) for status in ("0", "1", "2", "33", " 3", "3 "))


def test_a_list_is_trimmed_and_counted_once_in_order():
    assert parse_hidden_statuses(" 3, invisible ,,3, ") == ("3", "invisible")
    assert parse_hidden_statuses("") == ()
    assert parse_hidden_statuses("ünsichtbar") == ("ünsichtbar",)


def test_option_beats_environment():
    settings = load_settings({"hidden-statuses": "4"}, {"HIDDEN_STATUSES": "3"}, {})
    assert settings.hidden_statuses == ("4",)
    assert any(o[0] == "hidden-statuses" for o in Options.optParameters)


@pytest.mark.parametrize("bad", ["3,\x01", "x" * 65, "3,a\x85b"])
def test_a_status_no_ping_could_send_is_a_bad_setting(bad):
    with pytest.raises(UsageError, match="^bad setting HIDDEN_STATUSES=") as raised:
        load_settings({}, {"HIDDEN_STATUSES": bad}, {})
    assert "\n" not in str(raised.value)


def test_a_status_of_the_longest_length_is_fine():
    assert parse_hidden_statuses("x" * 64) == ("x" * 64,)
