"""Packet-loss concealment for G.711-style codecs, on batches.

Owns what a leg plays when the jitter buffer reports a frame as lost: the
last good frame repeated with a falling gain (full, then halving each frame)
for ``fade_frames`` frames, then silence until audio returns. Good frames
pass through and become the new "last good frame". Per-slot state follows
the stateful-stage convention of :mod:`dsp`.

This is the simple repeat-and-fade scheme (in the spirit of G.711 Appendix I,
without its pitch search); it must not do I/O, read a clock or log.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["LossConcealer"]

Slots = int | Sequence[int] | NDArray[np.intp]


class LossConcealer:
    """Repeat-and-fade concealment for ``capacity`` slots of ``frame`` samples."""

    def __init__(self, capacity: int, frame: int, fade_frames: int = 4) -> None:
        if capacity <= 0 or frame <= 0:
            raise ValueError(f"capacity and frame: must be > 0, got {capacity}, {frame}")
        if fade_frames < 0:
            raise ValueError(f"fade_frames: must be >= 0, got {fade_frames}")
        self.capacity = capacity
        self.frame = frame
        self._gains = np.array([0.5**k for k in range(fade_frames)] + [0.0], dtype=np.float32)
        self._last = np.zeros((capacity, frame), dtype=np.int16)
        self._run = np.zeros(capacity, dtype=np.intp)  # consecutive lost frames

    def reset(self, slots: Slots) -> None:
        idx = np.atleast_1d(np.asarray(slots, dtype=np.intp))
        self._last[idx] = 0
        self._run[idx] = 0

    def process(
        self,
        frames: NDArray[np.int16],
        lost: NDArray[np.bool_],
        slots: NDArray[np.intp] | None = None,
    ) -> NDArray[np.int16]:
        """Rows flagged in ``lost`` are replaced by concealment; the rest pass through."""
        x = np.asarray(frames)
        if x.dtype != np.int16 or x.ndim != 2 or x.shape[1] != self.frame:
            raise ValueError(f"frames: need int16 [legs, {self.frame}], got {x.dtype} {x.shape}")
        idx = np.arange(x.shape[0], dtype=np.intp) if slots is None else np.asarray(slots)
        lost = np.asarray(lost, dtype=np.bool_)
        if lost.shape != (x.shape[0],) or idx.shape != (x.shape[0],):
            raise ValueError("lost and slots: need one entry per frames row")
        good = ~lost
        if good.all():
            self._last[idx] = x
            self._run[idx] = 0
            return x
        out = x.copy()
        bad = idx[lost]
        run = self._run[bad]
        gain = self._gains[np.minimum(run, self._gains.size - 1)]
        out[lost] = (self._last[bad] * gain[:, None]).astype(np.int16)
        self._run[bad] = run + 1
        self._last[idx[good]] = x[good]
        self._run[idx[good]] = 0
        return out
