"""Deadlines for the SIP stack: RFC 3261 timer settings and one deadline queue.

Owns ``SipTimers`` (T1, T2, T4 and timer D, with the derived intervals of
RFC 3261 §17 / Table 4) and ``TimerQueue``, a heap of named deadlines that
transactions and calls arm and disarm; the endpoint asks it for the earliest
deadline (``get_timer``) and for the keys that are due (``handle_timer``).
Disarming is lazy (stale heap entries are skipped), so arm/disarm are
O(log n) whatever the number of live calls.

Must not: read the clock (every deadline is computed from a ``now`` passed
in) or know what a key means.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["SipTimers", "TimerQueue"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class SipTimers:
    """RFC 3261 timer base values in seconds (defaults from §17.1.1.1 and Table 4)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    #: Timer D (INVITE client, wait for response retransmissions): at least 32 s on UDP.
    d: float = 32.0

    @property
    def timeout(self) -> float:
        """64·T1: timers B, F, H, J, L, M and the wait for an ACK to a 2xx."""
        return 64 * self.t1


class TimerQueue(Generic[K]):
    """Named deadlines; each key is armed at most once (re-arming replaces it)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._armed: dict[K, tuple[float, int]] = {}
        self._counter = itertools.count()

    def arm(self, key: K, deadline: float) -> None:
        serial = next(self._counter)
        self._armed[key] = (deadline, serial)
        heapq.heappush(self._heap, (deadline, serial, key))
        if len(self._heap) > 64 + 4 * len(self._armed):
            self._compact()

    def disarm(self, key: K) -> None:
        self._armed.pop(key, None)

    def deadline(self, key: K) -> float | None:
        armed = self._armed.get(key)
        return None if armed is None else armed[0]

    def next_deadline(self) -> float | None:
        """The earliest armed deadline, or ``None`` when nothing is armed."""
        heap = self._heap
        while heap:
            deadline, serial, key = heap[0]
            if self._armed.get(key) == (deadline, serial):
                return deadline
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> K | None:
        """Disarm and return the earliest key due at ``now`` (``None`` if none is)."""
        deadline = self.next_deadline()
        if deadline is None or deadline > now:
            return None
        _, _, key = heapq.heappop(self._heap)
        del self._armed[key]
        return key

    def __len__(self) -> int:
        return len(self._armed)

    def _compact(self) -> None:
        self._heap = [(d, s, k) for k, (d, s) in self._armed.items()]
        heapq.heapify(self._heap)
