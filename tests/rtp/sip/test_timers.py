"""The deadline queue behind get_timer/handle_timer, and the RFC 3261 defaults."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rtp.sip.timers import SipTimers, TimerQueue


def test_rfc3261_defaults() -> None:
    timers = SipTimers()
    assert (timers.t1, timers.t2, timers.t4, timers.d) == (0.5, 4.0, 5.0, 32.0)
    assert timers.timeout == 32.0
    assert SipTimers(t1=0.1).timeout == 6.4


def test_earliest_first_and_only_when_due() -> None:
    queue: TimerQueue[str] = TimerQueue()
    queue.arm("b", 2.0)
    queue.arm("a", 1.0)
    assert queue.next_deadline() == 1.0
    assert queue.pop_due(0.5) is None
    assert queue.pop_due(1.0) == "a"
    assert queue.pop_due(1.5) is None
    assert queue.pop_due(5.0) == "b"
    assert queue.next_deadline() is None and len(queue) == 0


def test_rearming_replaces_and_disarming_removes() -> None:
    queue: TimerQueue[str] = TimerQueue()
    queue.arm("retransmit", 1.0)
    queue.arm("retransmit", 3.0)
    queue.arm("giveup", 2.0)
    queue.disarm("giveup")
    assert queue.next_deadline() == 3.0
    assert queue.deadline("retransmit") == 3.0 and queue.deadline("giveup") is None
    assert queue.pop_due(2.5) is None
    assert queue.pop_due(3.0) == "retransmit"
    assert queue.pop_due(10.0) is None


@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.floats(0, 100), st.booleans()),
        max_size=200,
    )
)
def test_pops_every_armed_key_once_in_deadline_order(ops: list[tuple[int, float, bool]]) -> None:
    queue: TimerQueue[int] = TimerQueue()
    expected: dict[int, float] = {}
    for key, deadline, disarm in ops:
        if disarm:
            queue.disarm(key)
            expected.pop(key, None)
        else:
            queue.arm(key, deadline)
            expected[key] = deadline
    popped: list[int] = []
    while (due := queue.pop_due(1000.0)) is not None:
        popped.append(due)
    assert sorted(popped) == sorted(expected)
    deadlines = [expected[k] for k in popped]
    assert deadlines == sorted(deadlines)
