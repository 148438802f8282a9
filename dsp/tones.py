"""Tone synthesis: DTMF digits, the 1500 Hz beep, arbitrary tones and sequences.

Owns the DTMF keypad table (digit -> low/high frequency), the level convention
(dBFS where 0 dBFS is a full-scale sine, amplitude 32767; each component of a
multi-frequency tone gets its own level), and the rendering of tone plans into
int16 PCM, either in one shot (``render``, ``tone``, ``dtmf_tone``, ``beep``,
``render_digits``) or pulled frame by frame by a tick-driven player
(``ToneStream.read``).

Every sample is a function of its position inside its segment only, so a
stream read in any chunk sizes is sample-for-sample the one-shot render: the
phase is continuous across reads, and each tone starts at phase 0 with a short
raised-cosine ramp at both edges (``ramp_s``, 2 ms by default) so starts and
stops do not click.

This module must not do I/O, read a clock, log, or decide *when* tones play
(callers place digits, e.g. jambonz ``"1@2.5,#@4"``, and pass the placements).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BEEP_HZ",
    "BEEP_SECONDS",
    "DTMF_HIGH_HZ",
    "DTMF_KEYS",
    "DTMF_LOW_HZ",
    "FULL_SCALE",
    "ToneSegment",
    "ToneStream",
    "amplitude_from_dbfs",
    "beep",
    "dtmf_frequencies",
    "dtmf_tone",
    "render",
    "render_digits",
    "tone",
]

DTMF_LOW_HZ: tuple[float, float, float, float] = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH_HZ: tuple[float, float, float, float] = (1209.0, 1336.0, 1477.0, 1633.0)
# Keypad layout: row = low-group tone, column = high-group tone.
DTMF_KEYS = "123A456B789C*0#D"

BEEP_HZ = 1500.0
BEEP_SECONDS = 0.5
FULL_SCALE = 32767.0
DEFAULT_RAMP_S = 0.002


def amplitude_from_dbfs(level_dbfs: float) -> float:
    """Peak amplitude (int16 scale) of a sine at ``level_dbfs`` (0 dBFS = full-scale sine)."""
    return float(FULL_SCALE * 10.0 ** (level_dbfs / 20.0))


def dtmf_frequencies(digit: str) -> tuple[float, float]:
    """The (low-group, high-group) frequencies of a DTMF key (0-9, *, #, A-D)."""
    index = DTMF_KEYS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"digit: not a DTMF key (0-9 * # A-D): {digit!r}")
    return DTMF_LOW_HZ[index // 4], DTMF_HIGH_HZ[index % 4]


@dataclass(frozen=True, slots=True)
class ToneSegment:
    """``seconds`` of the sum of ``components`` ``(frequency_hz, level_dbfs)``; none = silence."""

    components: tuple[tuple[float, float], ...]
    seconds: float

    def __post_init__(self) -> None:
        if not self.seconds >= 0.0 or not math.isfinite(self.seconds):
            raise ValueError(f"seconds: must be a finite number >= 0, got {self.seconds}")
        for freq, level in self.components:
            if not freq > 0.0 or not math.isfinite(freq):
                raise ValueError(f"frequency: must be a finite number > 0 Hz, got {freq}")
            if not math.isfinite(level):
                raise ValueError(f"level_dbfs: must be finite, got {level}")

    @classmethod
    def silence(cls, seconds: float) -> ToneSegment:
        return cls((), seconds)

    @classmethod
    def tone(
        cls, freqs: float | Sequence[float], seconds: float, level_dbfs: float = -10.0
    ) -> ToneSegment:
        """One or more frequencies, each at ``level_dbfs``."""
        fs = (freqs,) if isinstance(freqs, int | float) else tuple(freqs)
        return cls(tuple((float(f), float(level_dbfs)) for f in fs), seconds)

    @classmethod
    def dtmf(
        cls, digit: str, seconds: float, level_dbfs: float = -10.0, twist_db: float = 0.0
    ) -> ToneSegment:
        """A DTMF key: low tone at ``level_dbfs``, high tone ``twist_db`` dB below it.

        Positive ``twist_db`` is *normal* twist (high group weaker), negative is
        *reverse* twist (high group stronger).
        """
        low, high = dtmf_frequencies(digit)
        return cls(((low, level_dbfs), (high, level_dbfs - twist_db)), seconds)


def _segment_lengths(segments: Sequence[ToneSegment], rate: int) -> NDArray[np.int64]:
    # Cumulative rounding: the total length never drifts from sum(seconds).
    ends = np.rint(np.cumsum([0.0, *(s.seconds for s in segments)]) * rate).astype(np.int64)
    lengths: NDArray[np.int64] = np.diff(ends)
    return lengths


def _check_rate(rate: int) -> None:
    if rate <= 0:
        raise ValueError(f"rate: must be > 0 Hz, got {rate}")


class ToneStream:
    """A tone plan pulled in frames: ``read(n)`` returns the next ``n`` int16 samples.

    Past the end of the plan ``read`` pads with zeros (a tick-driven player can
    keep pulling fixed-size frames); ``done`` says when the plan is exhausted.
    """

    def __init__(
        self, segments: Sequence[ToneSegment], rate: int = 8000, ramp_s: float = DEFAULT_RAMP_S
    ) -> None:
        _check_rate(rate)
        if not ramp_s >= 0.0:
            raise ValueError(f"ramp_s: must be >= 0, got {ramp_s}")
        self.rate = rate
        self._segments = tuple(segments)
        self._lengths = _segment_lengths(self._segments, rate)
        self._starts = np.concatenate(([0], np.cumsum(self._lengths)))
        self._ramp = round(ramp_s * rate)
        self._position = 0

    @property
    def total(self) -> int:
        """Length of the whole plan in samples."""
        return int(self._starts[-1])

    @property
    def position(self) -> int:
        return self._position

    @property
    def remaining(self) -> int:
        return max(0, self.total - self._position)

    @property
    def done(self) -> bool:
        return self._position >= self.total

    def read(self, n: int) -> NDArray[np.int16]:
        if n < 0:
            raise ValueError(f"n: must be >= 0, got {n}")
        out = np.zeros(n, dtype=np.float64)
        begin, end = self._position, self._position + n
        first = int(np.searchsorted(self._starts, begin, side="right")) - 1
        for i in range(max(first, 0), len(self._segments)):
            seg_start, seg_len = int(self._starts[i]), int(self._lengths[i])
            if seg_start >= end:
                break
            lo, hi = max(begin, seg_start), min(end, seg_start + seg_len)
            if hi > lo and self._segments[i].components:
                local = np.arange(lo - seg_start, hi - seg_start, dtype=np.int64)
                out[lo - begin : hi - begin] = self._synthesise(self._segments[i], local, seg_len)
        self._position = end
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def _synthesise(
        self, segment: ToneSegment, local: NDArray[np.int64], length: int
    ) -> NDArray[np.float64]:
        acc = np.zeros(local.shape, dtype=np.float64)
        for freq, level in segment.components:
            # Phase from the exact rational position (freq*n mod rate) keeps
            # long tones precise and every sample independent of the chunking.
            cycles = np.mod(local * freq, float(self.rate)) / self.rate
            acc += amplitude_from_dbfs(level) * np.sin(2.0 * np.pi * cycles)
        ramp = min(self._ramp, length // 2)
        if ramp > 0:
            edge = np.minimum(local, length - 1 - local)
            rising = edge < ramp
            acc[rising] *= 0.5 - 0.5 * np.cos(np.pi * (edge[rising] + 0.5) / ramp)
        return acc


def render(
    segments: Sequence[ToneSegment], rate: int = 8000, ramp_s: float = DEFAULT_RAMP_S
) -> NDArray[np.int16]:
    """The whole plan in one buffer (identical to reading a ``ToneStream`` to its end)."""
    stream = ToneStream(segments, rate, ramp_s)
    return stream.read(stream.total)


def tone(
    freqs: float | Sequence[float],
    seconds: float,
    level_dbfs: float = -10.0,
    rate: int = 8000,
    ramp_s: float = DEFAULT_RAMP_S,
) -> NDArray[np.int16]:
    """A tone of one or more frequencies, each component at ``level_dbfs``."""
    return render([ToneSegment.tone(freqs, seconds, level_dbfs)], rate, ramp_s)


def dtmf_tone(
    digit: str,
    seconds: float = 0.1,
    level_dbfs: float = -10.0,
    rate: int = 8000,
    twist_db: float = 0.0,
    ramp_s: float = DEFAULT_RAMP_S,
) -> NDArray[np.int16]:
    """One DTMF key; see ``ToneSegment.dtmf`` for the level and twist convention."""
    return render([ToneSegment.dtmf(digit, seconds, level_dbfs, twist_db)], rate, ramp_s)


def beep(rate: int = 8000, level_dbfs: float = -10.0) -> NDArray[np.int16]:
    """The jambonz ``playBeep`` tone: 1500 Hz for 500 ms."""
    return tone(BEEP_HZ, BEEP_SECONDS, level_dbfs, rate)


def render_digits(
    placements: Sequence[tuple[str, float, float]],
    rate: int = 8000,
    level_dbfs: float = -10.0,
    total_seconds: float | None = None,
    twist_db: float = 0.0,
    ramp_s: float = DEFAULT_RAMP_S,
) -> NDArray[np.int16]:
    """Render ``(digit, start_s, duration_s)`` placements into one silent buffer.

    The buffer lasts ``total_seconds`` (default: until the last digit ends).
    Placements may come in any order but must not overlap.
    """
    _check_rate(rate)
    spans = sorted(
        (round(start * rate), round((start + duration) * rate), digit)
        for digit, start, duration in placements
    )
    for (_, end, digit), (start, _, nxt) in itertools.pairwise(spans):
        if start < end:
            raise ValueError(f"placements: {digit!r} and {nxt!r} overlap")
    if spans and (spans[0][0] < 0 or any(end < start for start, end, _ in spans)):
        raise ValueError("placements: start and duration must be >= 0")
    length = max((end for _, end, _ in spans), default=0)
    if total_seconds is not None:
        wanted = round(total_seconds * rate)
        if wanted < length:
            raise ValueError(f"total_seconds: {total_seconds} ends before the last digit")
        length = wanted
    out = np.zeros(length, dtype=np.int16)
    for start, end, digit in spans:
        segment = ToneSegment.dtmf(digit, (end - start) / rate, level_dbfs, twist_db)
        out[start:end] = render([segment], rate, ramp_s)
    return out
