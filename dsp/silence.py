"""Energy-based silence detection with FreeSWITCH semantics, on batches.

Owns the per-frame energy score, the silent/loud decision, and the two
silence timers used by ``listen`` (``timeout``), Kazoo ``record_call``
(``silence_initial_timeout`` / ``silence_final_timeout``) and SignalWire
``record_call`` (``initial_timeout`` / ``end_silence_timeout``).

The score is FreeSWITCH's: ``sum(|x|) / (samples / (rate / 8000))``, i.e. the
mean absolute 16-bit sample value scaled to an 8 kHz frame (twice the mean at
16 kHz, as the real system computes it). A frame is silent when its score is
below the threshold (default 200, about -44.3 dBFS in the dBFS view below).

Timers run in *media time* (samples processed), never on a clock: the initial
timeout is armed at start; the first loud frame sets "speech detected" and
switches to the final timeout; every run of silence restarts the count from
its first silent frame; when the active timeout is reached the slot reports
its expiry once (``NO_INPUT`` before any speech, ``SILENCE`` after) and
reports nothing further until it is reset or reconfigured.

This module must not do I/O, read a clock or log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_THRESHOLD",
    "SilenceDecisions",
    "SilenceDetector",
    "SilenceExpiry",
    "dbfs_from_threshold",
    "energy_score",
    "threshold_from_dbfs",
]

DEFAULT_THRESHOLD = 200.0
_FULL_SCALE = 32768.0

Slots = int | Sequence[int] | NDArray[np.intp]


def energy_score(frames: NDArray[np.int16], sample_rate: int = 8000) -> NDArray[np.float32]:
    """FreeSWITCH energy score of each row of ``frames`` (``[legs, samples]``)."""
    x = _as_batch(frames)
    if sample_rate <= 0 or sample_rate % 8000:
        raise ValueError(f"sample_rate: must be a positive multiple of 8000, got {sample_rate}")
    if x.shape[1] == 0:
        raise ValueError("frames: a frame needs at least one sample")
    total = np.abs(x.astype(np.int32)).sum(axis=1, dtype=np.int64)
    score: NDArray[np.float32] = (total * (sample_rate // 8000) / x.shape[1]).astype(np.float32)
    return score


def threshold_from_dbfs(dbfs: float) -> float:
    """The score threshold for a level in dBFS (0 dBFS = mean |x| of a full-scale square wave)."""
    return float(_FULL_SCALE * 10.0 ** (dbfs / 20.0))


def dbfs_from_threshold(threshold: float) -> float:
    """The dBFS view of a score threshold (inverse of :func:`threshold_from_dbfs`)."""
    if threshold <= 0:
        raise ValueError(f"threshold: must be > 0, got {threshold}")
    return float(20.0 * np.log10(threshold / _FULL_SCALE))


class SilenceExpiry(IntEnum):
    """What a slot's timer reported."""

    NONE = 0
    NO_INPUT = 1  # initial timeout passed with no speech (FreeSWITCH no-input-timeout)
    SILENCE = 2  # final timeout passed after speech (FreeSWITCH success-silence)


@dataclass(frozen=True)
class SilenceDecisions:
    """Result of one :meth:`SilenceDetector.process` call, row i = frames row i."""

    score: NDArray[np.float32]  # [legs, frames] energy score per frame
    silent: NDArray[np.bool_]  # [legs, frames] score < threshold
    speech_detected: NDArray[np.bool_]  # [legs] a loud frame was seen since reset
    expiry: NDArray[np.int8]  # [legs] SilenceExpiry that fired during this call (once per slot)


class SilenceDetector:
    """Per-slot silence detection and timers for a batch of legs.

    ``configure`` sets each slot's threshold and timeouts (milliseconds; 0
    disables a timer) and resets its timers; ``reset`` restarts the timers and
    keeps the configuration. Frames passed to ``process`` are split into
    ``frame_ms`` frames; their length must be a whole number of frames.
    """

    def __init__(self, capacity: int, sample_rate: int = 8000, frame_ms: int = 20) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity: must be > 0, got {capacity}")
        if sample_rate <= 0 or sample_rate % 8000:
            raise ValueError(f"sample_rate: must be a positive multiple of 8000, got {sample_rate}")
        if frame_ms <= 0 or (sample_rate * frame_ms) % 1000:
            raise ValueError(f"frame_ms: must give a whole number of samples, got {frame_ms}")
        self.capacity = capacity
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._threshold = np.full(capacity, DEFAULT_THRESHOLD, dtype=np.float32)
        self._initial = np.zeros(capacity, dtype=np.int64)  # samples; 0 = off
        self._final = np.zeros(capacity, dtype=np.int64)
        self._speech = np.zeros(capacity, dtype=np.bool_)
        self._silent_run = np.zeros(capacity, dtype=np.int64)  # samples of continuous silence
        self._fired = np.zeros(capacity, dtype=np.bool_)

    def configure(
        self,
        slots: Slots,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        initial_timeout_ms: int = 0,
        final_timeout_ms: int = 0,
    ) -> None:
        """Set threshold and timeouts for ``slots`` and restart their timers."""
        if not threshold > 0:
            raise ValueError(f"threshold: must be > 0, got {threshold}")
        for name, value in (
            ("initial_timeout_ms", initial_timeout_ms),
            ("final_timeout_ms", final_timeout_ms),
        ):
            if value < 0:
                raise ValueError(f"{name}: must be >= 0 (0 disables it), got {value}")
        idx = self._slots(slots)
        self._threshold[idx] = threshold
        self._initial[idx] = initial_timeout_ms * self.sample_rate // 1000
        self._final[idx] = final_timeout_ms * self.sample_rate // 1000
        self.reset(idx)

    def speech_detected(self, slot: int) -> bool:
        """Whether a loud frame was heard on ``slot`` since its last ``reset``."""
        return bool(self._speech[slot])

    def reset(self, slots: Slots) -> None:
        """Restart the timers of ``slots`` (speech flag cleared, nothing fired)."""
        idx = self._slots(slots)
        self._speech[idx] = False
        self._silent_run[idx] = 0
        self._fired[idx] = False

    def process(
        self, frames: NDArray[np.int16], slots: NDArray[np.intp] | None = None
    ) -> SilenceDecisions:
        x = _as_batch(frames)
        legs, n = x.shape
        if n == 0 or n % self.frame_samples:
            raise ValueError(
                f"frames: length must be a positive multiple of {self.frame_samples} samples "
                f"({self.frame_samples * 1000 // self.sample_rate} ms at {self.sample_rate} Hz), "
                f"got {n}"
            )
        idx = np.arange(legs, dtype=np.intp) if slots is None else self._slots(slots)
        if idx.shape != (legs,):
            raise ValueError(f"slots: need one slot per frames row ({legs}), got {idx.shape}")
        nframes = n // self.frame_samples
        score = energy_score(
            x.reshape(legs * nframes, self.frame_samples), self.sample_rate
        ).reshape(legs, nframes)
        threshold = self._threshold[idx]
        silent = score < threshold[:, None]

        speech = self._speech[idx]
        run = self._silent_run[idx]
        fired = self._fired[idx]
        initial = self._initial[idx]
        final = self._final[idx]
        expiry = np.zeros(legs, dtype=np.int8)
        step = self.frame_samples
        for f in range(nframes):  # usually one frame per tick; vectorised over legs
            loud = ~silent[:, f]
            speech |= loud
            run = np.where(loud, 0, run + step)
            limit = np.where(speech, final, initial)
            due = ~fired & (limit > 0) & (run >= limit)
            if due.any():
                kind = np.where(speech, SilenceExpiry.SILENCE, SilenceExpiry.NO_INPUT)
                expiry[due] = kind[due]
                fired |= due
        self._speech[idx] = speech
        self._silent_run[idx] = run
        self._fired[idx] = fired
        return SilenceDecisions(
            score=score, silent=silent, speech_detected=speech.copy(), expiry=expiry
        )

    def _slots(self, slots: Slots) -> NDArray[np.intp]:
        idx = np.atleast_1d(np.asarray(slots, dtype=np.intp))
        if idx.ndim != 1:
            raise ValueError("slots: must be an int or a 1-D sequence of ints")
        if idx.size and (idx.min() < 0 or idx.max() >= self.capacity):
            raise ValueError(f"slots: out of range 0..{self.capacity - 1}: {idx.tolist()}")
        return idx


def _as_batch(frames: NDArray[np.int16]) -> NDArray[np.int16]:
    x = np.asarray(frames)
    if x.dtype != np.int16:
        raise ValueError(f"frames: dtype must be int16, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"frames: must be 2-D [legs, samples], got shape {x.shape}")
    return x
