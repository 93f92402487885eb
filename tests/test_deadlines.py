"""One timer structure for every deadline (core/deadlines.py), on a fake clock.

It serves presence timeouts (keyed by device), request timeouts (by
connection) and token expiry (by stream); each rule is checked here once.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from heartbeat.core.deadlines import DUE_PER_TURN, Deadlines


def test_the_deadline_wheel_moves_a_re_armed_device_and_yields_in_deadline_order():
    clock = Clock()
    due: list[tuple[str, str]] = []
    wheel: Deadlines[tuple[str, str]] = Deadlines(clock, due.append)
    wheel.arm_at(("a", "1"), 10.2)
    wheel.arm_at(("b", "1"), 10.5)
    wheel.arm_at(("c", "1"), 12.0)
    wheel.arm_at(("a", "1"), 13.0)  # re-armed: no longer due at 11
    clock.advance(10.9)
    assert due == []
    clock.advance(0.1)
    assert due == [("b", "1")]
    wheel.disarm(("c", "1"))
    clock.advance(1)
    assert due == [("b", "1")]
    assert len(wheel) == 1
    clock.advance(1)
    assert due == [("b", "1"), ("a", "1")] and len(wheel) == 0


def test_the_deadline_wheel_moves_its_timer_earlier_and_keeps_arming_order():
    clock = Clock()
    due: list[str] = []
    wheel: Deadlines[str] = Deadlines(clock, due.append)
    wheel.arm_at("late", 60)
    wheel.arm_at("x", 2.5)  # earlier than the timer: it moves
    wheel.arm_at("y", 2.1)  # same slot: falls due after x, in arming order
    clock.advance(3)
    assert due == ["x", "y"]
    # A deadline already past falls due on the next turn, not during arm_at.
    wheel.arm_at("past", 1)
    assert due == ["x", "y"]
    clock.advance(0)
    assert due == ["x", "y", "past"]
    clock.advance(57)
    assert due == ["x", "y", "past", "late"] and len(wheel) == 0


def test_items_fall_due_in_deadline_order_with_one_timer_for_all():
    clock = Clock()
    due: list[tuple[str, float]] = []
    wheel: Deadlines[str] = Deadlines(clock, lambda item: due.append((item, clock.seconds())))
    for name, end in (("c", 30), ("a", 10), ("b", 20), ("a2", 10)):
        wheel.arm_at(name, end)
        assert len(clock.getDelayedCalls()) == 1
    clock.advance(9.9)
    assert due == []
    clock.advance(0.1)
    assert due == [("a", 10), ("a2", 10)]
    clock.advance(10)
    assert due == [("a", 10), ("a2", 10), ("b", 20)]
    clock.advance(100)
    assert [name for name, _ in due] == ["a", "a2", "b", "c"]
    assert clock.getDelayedCalls() == [] and len(wheel) == 0


def test_a_sooner_deadline_moves_the_timer_a_later_one_does_not():
    clock = Clock()
    due: list[str] = []
    wheel: Deadlines[str] = Deadlines(clock, due.append)
    wheel.arm_at("late", 100)
    (timer,) = clock.getDelayedCalls()
    wheel.arm_at("later", 200)
    assert clock.getDelayedCalls() == [timer]
    wheel.arm_at("soon", 5)
    (moved,) = clock.getDelayedCalls()
    assert moved.getTime() == 5
    clock.advance(5)
    assert due == ["soon"]
    assert clock.getDelayedCalls()[0].getTime() == 100


def test_a_deadline_between_seconds_falls_due_at_the_next_whole_second():
    clock = Clock()
    due: list[float] = []
    wheel: Deadlines[str] = Deadlines(clock, lambda item: due.append(clock.seconds()))
    wheel.arm("x", 1.25)
    clock.advance(1.9)
    assert due == []
    clock.advance(0.1)
    assert due == [2.0]


def test_disarmed_items_are_forgotten_at_once():
    clock = Clock()
    due: list[int] = []
    wheel: Deadlines[int] = Deadlines(clock, due.append)
    for n in range(5000):
        wheel.arm_at(n, 1e6 + n)
    assert len(clock.getDelayedCalls()) == 1
    for n in range(5000):
        wheel.disarm(n)
    assert len(wheel) == 0 and 0 not in wheel
    clock.advance(2e6)
    assert due == []


def test_stop_forgets_every_deadline_and_the_timer():
    clock = Clock()
    due: list[str] = []
    wheel: Deadlines[str] = Deadlines(clock, due.append)
    wheel.arm("a", 5)
    wheel.stop()
    assert clock.getDelayedCalls() == [] and len(wheel) == 0
    clock.advance(10)
    assert due == []


def test_thousands_due_together_are_spread_over_turns_in_order():
    clock = Clock()
    due: list[object] = []

    def on_due(n: int) -> None:
        if n == 0:  # other work that comes meanwhile runs between two turns' worth
            clock.callLater(0, due.append, "other")
        due.append(n)

    deadlines: Deadlines[int] = Deadlines(clock, on_due)
    for n in range(2 * DUE_PER_TURN + 10):
        deadlines.arm(n, 1)
    clock.advance(1)
    assert due == [*range(DUE_PER_TURN), "other", *range(DUE_PER_TURN, 2 * DUE_PER_TURN + 10)]
    assert len(deadlines) == 0
