"""Jitter buffer for one leg's RTP audio, played out by the engine's clock.

Owns: reordering by timestamp, the playout cursor, loss/late/duplicate/
reordered accounting, re-anchoring on new sources, restarts, timestamp
jumps and underruns, and re-framing packets of any ptime into the engine's
tick (``frame_units`` timestamp units per ``pop``).

The engine calls ``pop(now)`` exactly once per tick for every leg, and
every call returns exactly one frame whatever the network did, so all legs
stay in lock-step for batch processing. ``push`` is called for each RTP
audio packet as it arrives (``now`` in seconds, any epoch; it is only used
for the RFC 3550 jitter estimate).

Two payload modes:

- *sample-addressable* payloads (G.711, G.722, L16: ``bytes_per_unit`` bytes
  per timestamp unit): ``pop`` returns exactly ``frame_units *
  bytes_per_unit`` bytes, assembled from whatever packets cover the frame's
  timestamp range; uncovered units hold ``fill`` (the codec's silence).
  Packets of 10, 20, 30 or 60 ms all re-frame into 20 ms ticks.
- *packet* payloads (Opus: ``bytes_per_unit=None``): ``pop`` returns the
  packets that start within the frame's range, for a stateful decoder.

Playout: the first packet of a source is played ``target_delay`` seconds
of media after it arrives (the cursor starts that far behind it). The
cursor then advances one frame per ``pop``. When the buffer holds more than
``max_delay`` ahead of the cursor (a burst, or a sender clock faster than
ours) the cursor skips forward to ``target_delay`` behind the newest audio
and the skipped audio is counted in ``skipped_units``. An in-order packet
that arrives behind the cursor while nothing is buffered means our clock ran
ahead of the sender (or the sender paused without a marker): the cursor
re-anchors on it instead of discarding the talkspurt. A new SSRC, a
confirmed sequence restart, or a timestamp jump larger than ``max_jump``
flushes the buffer and re-anchors. A marker bit after silence suppression
needs no special case: the packet waits until the cursor reaches its
timestamp, and the gap plays as ``IDLE`` frames, not as loss.

Must not: touch sockets, read a clock, log, or decode audio (frames come out
as payload bytes; the engine batch-decodes them and conceals ``LOST``
frames in PCM).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from rtp.packet import Arrival, RtpSource, seq_diff

__all__ = ["FrameStatus", "JitterBuffer", "JitterFrame", "JitterStats"]

_U32 = 1 << 32
_HALF = 1 << 31


class FrameStatus(IntEnum):
    """What a popped frame holds."""

    PLAYED = 0
    """Every unit of the frame came from received packets."""
    PARTIAL = 1
    """Some units came from packets, the rest is ``fill`` (a packet was lost)."""
    LOST = 2
    """Nothing arrived for this frame although the stream is live: conceal it."""
    IDLE = 3
    """No audio expected: before the first packet, after a flush, or in a pause."""


@dataclass(slots=True)
class JitterFrame:
    status: FrameStatus
    payload: bytes = b""
    """Sample-addressable mode: exactly ``frame_units * bytes_per_unit`` bytes."""
    packets: list[bytes] = field(default_factory=list)
    """Packet mode: the payloads whose packets start within this frame."""
    timestamp: int = 0
    """RTP timestamp (mod 2**32) of the frame's first unit."""


@dataclass(slots=True)
class JitterStats:
    received: int = 0  # valid audio packets pushed (duplicates included, as RFC 3550 counts)
    lost: int = 0  # RFC 3550 cumulative loss (expected - received)
    late: int = 0  # arrived after their audio was played out
    duplicate: int = 0  # same sequence number seen twice
    reordered: int = 0  # arrived behind a higher sequence number, not a duplicate
    dropped: int = 0  # not playable: probation, stray, bad size, far outside the window
    skipped_units: int = 0  # buffered audio skipped to keep the delay bounded
    resyncs: int = 0  # re-anchors: new source, restart, jump, underrun recovery
    jitter: float = 0.0  # RFC 3550 interarrival jitter, seconds


class JitterBuffer:
    """Per-leg playout buffer; see the module docstring for the model."""

    def __init__(
        self,
        *,
        clock_rate: int,
        frame_units: int,
        bytes_per_unit: int | None,
        fill: bytes = b"\x00",
        packet_units: int | None = None,
        target_delay: float = 0.04,
        max_delay: float = 0.3,
        max_jump: float = 2.0,
        lost_after: float = 0.1,
    ) -> None:
        if clock_rate <= 0 or frame_units <= 0:
            raise ValueError("clock_rate and frame_units must be positive")
        if bytes_per_unit is not None and (bytes_per_unit <= 0 or len(fill) != bytes_per_unit):
            raise ValueError("fill must be exactly one timestamp unit of silence (bytes_per_unit)")
        if not 0 <= target_delay < max_delay:
            raise ValueError(f"need 0 <= target_delay < max_delay, got {target_delay}, {max_delay}")
        self.clock_rate = clock_rate
        self.frame_units = frame_units
        self.bytes_per_unit = bytes_per_unit
        self._fill = fill
        self._silence = fill * frame_units if bytes_per_unit else b""
        self.packet_units = packet_units or frame_units
        self.target_units = round(target_delay * clock_rate)
        self.max_units = round(max_delay * clock_rate)
        self.jump_units = round(max_jump * clock_rate)
        self.lost_after_units = round(lost_after * clock_rate)
        self.source = RtpSource(clock_rate)
        self._stats = JitterStats()
        self._store: dict[int, tuple[int, bytes]] = {}  # extended ts -> (seq, payload)
        self._cursor: int | None = None  # extended ts of the next frame to play
        self._newest_end = 0  # extended ts just past the newest buffered audio
        self._covered_until = 0  # extended ts just past the last audio handed out
        self._recent_seqs: deque[int] = deque(maxlen=64)
        self._ts_offset = 0  # added to incoming timestamps after a rebase (mod 2**32)
        self._last_seq_played: int | None = None

    # -- receive side -------------------------------------------------------------

    def push(
        self, ssrc: int, seq: int, timestamp: int, marker: bool, payload: bytes, now: float
    ) -> None:
        """Accept one audio packet (any order, duplicates and strays welcome)."""
        stats = self._stats
        arrival = self.source.receive(ssrc, seq, timestamp, now)
        if arrival is Arrival.PROBATION or arrival is Arrival.STRAY:
            stats.dropped += 1
            return
        units = self._units_of(payload)
        if units is None:
            stats.dropped += 1
            return
        fresh = self._cursor is None
        if fresh:
            self._anchor(timestamp)
        cursor = self._cursor
        assert cursor is not None
        t = (timestamp + self._ts_offset) % _U32
        ext = cursor + ((t - cursor + _HALF) % _U32 - _HALF)
        if arrival is Arrival.LATE:
            if seq in self._recent_seqs:
                stats.duplicate += 1
                return
            stats.reordered += 1
        elif not fresh and (
            arrival is not Arrival.NEXT
            or ext - max(cursor, self._newest_end) > self.jump_units
            or cursor - ext > self.jump_units
        ):
            # New SSRC, confirmed sequence restart, or a timestamp leap: the sender's
            # timeline changed. Rebase it to continue right after the audio already
            # buffered (nothing buffered is thrown away).
            ext = max(self._newest_end, cursor + self.target_units)
            self._ts_offset = (ext - timestamp) % _U32
            stats.resyncs += 1
            if arrival is Arrival.NEW_SOURCE:
                self._recent_seqs.clear()
        self._recent_seqs.append(seq)
        if ext + units <= cursor:
            if arrival is Arrival.NEXT and not self._store:
                # Our clock ran ahead of the sender's: play this talkspurt, don't drop it.
                self._cursor = ext
                stats.resyncs += 1
            else:
                stats.late += 1
                return
        if ext in self._store:
            stats.duplicate += 1
            return
        self._store[ext] = (seq, payload)
        if ext + units > self._newest_end:
            self._newest_end = ext + units

    @property
    def stats(self) -> JitterStats:
        """The counters; received/lost/jitter are read from the RTP source now,
        not re-derived on every packet (this runs for every packet of every call)."""
        stats = self._stats
        stats.received = self.source.received
        stats.lost = max(0, self.source.lost)
        stats.jitter = self.source.jitter_seconds
        return stats

    # -- playout side -------------------------------------------------------------

    def pop(self, now: float) -> JitterFrame:
        """The next frame, exactly one per engine tick."""
        del now  # playout advances one frame per call; kept for API symmetry with push
        cursor = self._cursor
        if cursor is None:
            return JitterFrame(FrameStatus.IDLE, self._silence)
        end = cursor + self.frame_units
        ts = cursor % _U32
        if self.bytes_per_unit is None:
            frame = self._pop_packets(cursor, end, ts)
        else:
            frame = self._pop_samples(cursor, end, ts)
        self._cursor = end
        if self._newest_end - end > self.max_units:
            self._skip_to(self._newest_end - self.target_units)
        return frame

    @property
    def depth_seconds(self) -> float:
        """Audio buffered ahead of the playout cursor."""
        if self._cursor is None:
            return 0.0
        return max(0, self._newest_end - self._cursor) / self.clock_rate

    def _pop_samples(self, cursor: int, end: int, ts: int) -> JitterFrame:
        store = self._store
        bpu = self.bytes_per_unit
        assert bpu is not None
        hit = store.get(cursor)
        if hit is not None and len(hit[1]) == self.frame_units * bpu:  # ptime == tick
            del store[cursor]
            self._covered_until = end
            self._last_seq_played = hit[0]
            return JitterFrame(FrameStatus.PLAYED, hit[1], timestamp=ts)
        buf: bytearray | None = None
        covered = 0
        for start in sorted(store):
            if start >= end:
                break
            seq, payload = store[start]
            stop = start + len(payload) // bpu
            lo, hi = max(start, cursor), min(stop, end)
            if hi > lo:
                if buf is None:
                    buf = bytearray(self._silence)
                buf[(lo - cursor) * bpu : (hi - cursor) * bpu] = payload[
                    (lo - start) * bpu : (hi - start) * bpu
                ]
                covered += hi - lo
                self._last_seq_played = seq
            if stop <= end:
                del store[start]
        if buf is None:
            return JitterFrame(self._missing_status(cursor), self._silence, timestamp=ts)
        self._covered_until = end
        status = FrameStatus.PLAYED if covered >= self.frame_units else FrameStatus.PARTIAL
        return JitterFrame(status, bytes(buf), timestamp=ts)

    def _pop_packets(self, cursor: int, end: int, ts: int) -> JitterFrame:
        store = self._store
        due = sorted(k for k in store if k < end)
        if not due:
            if cursor < self._covered_until:  # inside a packet longer than one tick
                return JitterFrame(FrameStatus.PLAYED, timestamp=ts)
            return JitterFrame(self._missing_status(cursor), timestamp=ts)
        popped = [store.pop(k) for k in due]
        packets = [p for _, p in popped]
        self._last_seq_played = popped[-1][0]
        self._covered_until = max(self._covered_until, due[-1] + self.packet_units)
        return JitterFrame(FrameStatus.PLAYED, packets=packets, timestamp=ts)

    def _missing_status(self, cursor: int) -> FrameStatus:
        # A gap in sequence numbers before the next buffered packet proves loss; a
        # timestamp gap with consecutive sequence numbers is a pause (DTX, marker
        # talkspurt), and so is the pre-roll before the first packet plays. With
        # nothing buffered it counts as loss only shortly after the last audio.
        last = self._last_seq_played
        if last is None:
            return FrameStatus.IDLE
        if self._store:
            next_seq = self._store[min(self._store)][0]
            return FrameStatus.LOST if seq_diff(next_seq, last) > 1 else FrameStatus.IDLE
        if cursor - self._covered_until < self.lost_after_units:
            return FrameStatus.LOST
        return FrameStatus.IDLE

    # -- internals ----------------------------------------------------------------

    def _units_of(self, payload: bytes) -> int | None:
        if self.bytes_per_unit is None:
            return self.packet_units if payload else None
        n, rest = divmod(len(payload), self.bytes_per_unit)
        return n if n and not rest else None

    def _anchor(self, timestamp: int) -> None:
        """Start playout: the first packet plays ``target_delay`` after it arrives."""
        self._ts_offset = 0
        self._cursor = timestamp - self.target_units
        self._newest_end = timestamp
        self._covered_until = self._cursor

    def _skip_to(self, new_cursor: int) -> None:
        cursor = self._cursor
        assert cursor is not None
        self._stats.skipped_units += new_cursor - cursor
        self._cursor = new_cursor
        for start in [k for k in self._store if k < new_cursor]:
            _, payload = self._store[start]
            units = self._units_of(payload) or 0
            if start + units <= new_cursor:
                del self._store[start]
