"""Streaming sample-rate conversion for a batch of legs: polyphase FIR in numpy.

Owns: the anti-alias/anti-image filter design for every pair of the telephony
rates in :data:`SUPPORTED_RATES` (cached per pair), the :class:`Resampler`
stage (per-slot history, batch ``[legs, samples]`` in and out, the stateful
stage convention of :mod:`dsp`), and the float-to-int16 conversion of its
output (:func:`to_int16`).

Must not: do I/O, read a clock, log, or call scipy on the hot path (scipy only
designs the filter, once per rate pair). Chunked calls of a stateless
resampler such as ``scipy.signal.resample_poly`` are no substitute: without
history every chunk edge leaks a click (about -40 dB), which is why the
history lives here.

How it works. Converting ``in_rate`` to ``out_rate`` is "up by L, low-pass
filter h at ``L * in_rate``, keep every M-th sample" with ``L / M`` the reduced
ratio. That is periodic: each *period* of M input samples yields L output
samples, and output ``n`` is ``sum_i x[i] * h[n*M - i*L]``. For a group of P
periods, the map from its window of ``H + P*M`` input samples (H samples of
history before the group) to its ``P*L`` outputs is one fixed banded matrix.
A call concatenates history and new samples per leg once, then runs one
float32 BLAS matmul per group of periods for *all legs at once*: the window of
group g is a strided view of that buffer (no copy), and the product is written
straight into the output. The Python-level cost grows with the number of
groups per call (9 to 54 per 20 ms tick, depending on the pair), never with
the number of legs. When a call has few legs but many groups (a long signal),
the groups' windows are copied into one matrix and multiplied at once.

Filter: equiripple (Parks-McClellan) low-pass with the passband up to 0.45 x
the lower rate, the stopband from 0.55 x the lower rate, i.e. the transition
is centred on the lower Nyquist frequency. Aliases of content just above that
Nyquist frequency may land in the top of the transition band (0.45-0.5 x the
lower rate), never in the passband. Targets: passband ripple within
+-0.03 dB, stopband at least 86 dB down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

__all__ = [
    "SUPPORTED_RATES",
    "PolyphaseFilter",
    "Resampler",
    "design_filter",
    "to_int16",
]

SUPPORTED_RATES: tuple[int, ...] = (8000, 16000, 24000, 32000, 48000, 64000)
"""Sample rates (Hz) the resampler converts between, in any direction."""

PASSBAND_EDGE = 0.45
"""Passband edge as a fraction of the lower of the two rates."""
STOPBAND_EDGE = 0.55
"""Stopband edge as a fraction of the lower of the two rates."""
PASSBAND_RIPPLE = 0.003
"""Design passband deviation (linear): +-0.026 dB."""
STOPBAND_DB = 88.0
"""Design stopband attenuation; the accepted design must reach ``MIN_STOPBAND_DB``."""
MIN_STOPBAND_DB = 86.0
MAX_PASSBAND_DB = 0.03
"""Largest accepted passband deviation from 0 dB of a finished design."""

_WINDOW_BLOCK = 1 << 18
"""Window samples (float32) copied per matmul on the few-legs, many-groups path: ~1 MB."""

_INT16_MIN = -32768.0
_INT16_MAX = 32767.0


@dataclass(frozen=True, eq=False)
class PolyphaseFilter:
    """A designed rate pair: the filter and the banded matrix the stage multiplies by.

    ``taps`` is the low-pass at ``up * in_rate`` (gain ``up`` so the output keeps
    the input's level); ``matrix`` maps a window of ``history + periods * down``
    inputs to ``periods * up`` outputs (``periods`` = periods per matmul group).
    """

    in_rate: int
    out_rate: int
    up: int
    down: int
    taps: NDArray[np.float64]
    history: int
    periods: int
    matrix: NDArray[np.float32]

    @property
    def delay(self) -> float:
        """Group delay in output samples (the filter is linear phase)."""
        return (len(self.taps) - 1) / (2 * self.down)


def _check_rate(name: str, rate: int) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise ValueError(f"{name} must be an int in Hz, got {rate!r}")
    if int(rate) not in SUPPORTED_RATES:
        raise ValueError(
            f"unsupported {name} {rate} Hz; supported rates are "
            + ", ".join(str(r) for r in SUPPORTED_RATES)
        )


def _response_db(
    taps: NDArray[np.float64], freqs: NDArray[np.float64], fs: float
) -> NDArray[np.float64]:
    """Magnitude response (dB, relative to unity gain per phase) at ``freqs`` Hz."""
    n = np.arange(len(taps))
    resp = np.exp(-2j * np.pi * np.outer(freqs / fs, n)) @ taps
    db: NDArray[np.float64] = 20.0 * np.log10(np.maximum(np.abs(resp), 1e-300))
    return db


def _lowpass(up: int, in_rate: int, low_rate: int) -> NDArray[np.float64]:
    """Equiripple low-pass at ``up * in_rate`` meeting the targets (scipy, design time only)."""
    from scipy.signal import remez  # design time only; not imported on the hot path

    fs = float(up * in_rate)
    f_pass = PASSBAND_EDGE * low_rate
    f_stop = STOPBAND_EDGE * low_rate
    delta_s = 10.0 ** (-STOPBAND_DB / 20.0)
    # Herrmann/Kaiser length estimate for an equiripple design, then grow until met.
    span = -10.0 * math.log10(PASSBAND_RIPPLE * delta_s) - 13.0
    numtaps = math.ceil(span / (14.6 * (f_stop - f_pass) / fs)) + 1
    pass_grid = np.linspace(0.0, f_pass, 64)
    stop_grid = np.linspace(f_stop, fs / 2, 2048)
    for _ in range(20):
        taps = np.asarray(
            remez(
                numtaps,
                [0.0, f_pass, f_stop, fs / 2],
                [1.0, 0.0],
                weight=[1.0, PASSBAND_RIPPLE / delta_s],
                fs=fs,
                maxiter=100,
            ),
            dtype=np.float64,
        )
        passband = _response_db(taps, pass_grid, fs)
        stopband = _response_db(taps, stop_grid, fs)
        if np.abs(passband).max() <= MAX_PASSBAND_DB and stopband.max() <= -MIN_STOPBAND_DB:
            return taps * up
        numtaps += max(2, numtaps // 50)
    raise RuntimeError(
        f"filter design did not converge for {in_rate} Hz x {up}"
    )  # pragma: no cover


def _matmul_us(rows: int, cols: int) -> float:
    """Modelled time (µs) of one ``[1000 legs, rows] @ [rows, cols]`` float32 matmul.

    Fitted to OpenBLAS sgemm on one core of the reference machine (x86-64, AVX2):
    the kernel works on 8 columns at a time (16 at least), so 30 columns cost
    as much as 32; a call has a fixed cost that grows with the window rows.
    """
    padded = max(16, -(-cols // 8) * 8)
    return 15.0 + 0.135 * rows + (0.0201 * rows + 0.28) * padded


def _group_periods(up: int, down: int, history: int, tick_periods: int) -> int:
    """Periods per matmul group that make a 20 ms tick cheapest under :func:`_matmul_us`.

    A group of P periods costs ``(history + P*down) * P*up`` multiply-adds per
    leg, of which only ``~history * P*up`` are non-zero taps: large groups waste
    work on the band's zeros, small groups starve BLAS of columns and pay the
    per-call overhead more often.
    """
    best_p, best_cost = 1, math.inf
    for p in range(1, tick_periods + 1):
        if p * up > 384:
            break
        full, rest = divmod(tick_periods, p)
        cost = full * _matmul_us(history + p * down, p * up)
        if rest:
            cost += _matmul_us(history + rest * down, rest * up)
        if cost < best_cost:
            best_p, best_cost = p, cost
    return best_p


def _banded_matrix(
    taps: NDArray[np.float64], up: int, down: int, history: int, periods: int
) -> NDArray[np.float32]:
    """``W[row, col] = taps[col*down - (row - history)*up]`` where that index is valid."""
    rows = np.arange(history + periods * down)[:, None]
    cols = np.arange(periods * up)[None, :]
    k = cols * down - (rows - history) * up
    valid = (k >= 0) & (k < len(taps))
    matrix = np.where(valid, taps[np.clip(k, 0, len(taps) - 1)], 0.0)
    return np.ascontiguousarray(matrix, dtype=np.float32)


@cache
def design_filter(in_rate: int, out_rate: int) -> PolyphaseFilter:
    """Design (once per pair, cached) the polyphase filter for ``in_rate`` -> ``out_rate``."""
    _check_rate("in_rate", in_rate)
    _check_rate("out_rate", out_rate)
    in_rate, out_rate = int(in_rate), int(out_rate)
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    if up == down:
        taps = np.ones(1, dtype=np.float64)
    else:
        taps = _lowpass(up, in_rate, min(in_rate, out_rate))
    history = -(-len(taps) // up) - 1
    periods = 1 if up == down else _group_periods(up, down, history, max(1, in_rate // 50 // down))
    matrix = _banded_matrix(taps, up, down, history, periods)
    matrix.flags.writeable = False
    taps.flags.writeable = False
    return PolyphaseFilter(in_rate, out_rate, up, down, taps, history, periods, matrix)


def to_int16(samples: NDArray[np.floating]) -> NDArray[np.int16]:
    """Round (half to even) and saturate float samples in int16 scale to int16."""
    out = np.rint(samples)
    np.clip(out, _INT16_MIN, _INT16_MAX, out=out)
    result: NDArray[np.int16] = out.astype(np.int16)
    return result


class Resampler:
    """Streaming ``in_rate`` -> ``out_rate`` conversion for up to ``capacity`` legs.

    ``process(frames, slots)`` takes ``[legs, samples]`` int16 or float (int16
    scale) and returns float32 ``[legs, out_samples]`` in int16 scale;
    :meth:`process_int16` rounds and saturates. Feeding a leg's signal in chunks
    of any lengths gives the same output as feeding it whole.

    Pending samples: a call consumes whole periods (``down`` input samples
    each, see :attr:`period`); the remaining ``< period`` samples stay pending
    in the slot and are used by the next call. The count is tracked per slot,
    and every row of one call must have the same count (always true when all
    legs get the same chunk lengths; with 20 ms chunks it is always zero, since
    every supported rate pair has a period dividing 20 ms). :meth:`reset`
    clears a slot's history and turns its pending samples into silence but
    keeps their *count*, so the slot stays in step with the legs it is batched
    with: after a reset the slot behaves exactly like a fresh resampler that
    was first fed that many zeros (and exactly like a fresh one when nothing
    was pending).

    Output lags the input by :attr:`delay` output samples (constant).
    """

    def __init__(self, capacity: int, in_rate: int, out_rate: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        _check_rate("in_rate", in_rate)  # before the cache: 8000.0 would hit the 8000 entry
        _check_rate("out_rate", out_rate)
        self._filter = design_filter(int(in_rate), int(out_rate))
        self._capacity = int(capacity)
        f = self._filter
        # History (f.history samples already consumed) followed by pending samples.
        self._state = np.zeros((self._capacity, f.history + f.down - 1), dtype=np.float32)
        self._pending = np.zeros(self._capacity, dtype=np.intp)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_rate(self) -> int:
        return self._filter.in_rate

    @property
    def out_rate(self) -> int:
        return self._filter.out_rate

    @property
    def period(self) -> int:
        """Input samples per period: calls consume whole periods, the rest stays pending."""
        return self._filter.down

    @property
    def delay(self) -> float:
        """Constant group delay in output samples: output ``n`` is the input at ``n - delay``."""
        return self._filter.delay

    @property
    def filter(self) -> PolyphaseFilter:
        return self._filter

    def pending(
        self, slots: int | Sequence[int] | NDArray[np.intp] | None = None
    ) -> NDArray[np.intp]:
        """Input samples pending per slot (all slots when ``slots`` is None)."""
        if slots is None:
            return self._pending.copy()
        return self._pending[self._check_slots(np.atleast_1d(np.asarray(slots)), None)].copy()

    def output_length(self, samples: int, pending: int = 0) -> int:
        """Output samples a call with ``samples`` new inputs per row yields."""
        return ((pending + samples) // self._filter.down) * self._filter.up

    def reset(self, slots: int | Sequence[int] | NDArray[np.intp]) -> None:
        """Clear the history of ``slots`` so a new call can reuse them (see the class note)."""
        index = self._check_slots(np.atleast_1d(np.asarray(slots)), None)
        self._state[index] = 0.0

    def process(
        self,
        frames: NDArray[np.int16] | NDArray[np.floating],
        slots: NDArray[np.intp] | None = None,
    ) -> NDArray[np.float32]:
        """Resample one chunk per leg; row i of ``frames`` belongs to slot ``slots[i]``.

        ``slots`` must be distinct; None means rows 0..len(frames)-1. Returns
        float32 ``[legs, output_length(samples, pending)]`` in int16 scale.
        """
        checked = self._check_frames(frames)
        rows, count = checked.shape
        index = None if slots is None else self._check_slots(slots, rows)
        f = self._filter
        up, down, hist = f.up, f.down, f.history
        if up == down:
            return checked.astype(np.float32, copy=True)

        held = self._pending[:rows] if index is None else self._pending[index]
        pending = int(held[0]) if rows else 0
        if rows and (held != pending).any():
            raise ValueError(
                "rows have different pending sample counts; feed every leg of a batch "
                "the same chunk lengths (or reset them together)"
            )
        total = pending + count
        periods = total // down
        consumed = periods * down
        keep = hist + total - consumed

        buf = np.empty((rows, hist + total), dtype=np.float32)
        if index is None:
            buf[:, : hist + pending] = self._state[:rows, : hist + pending]
        else:
            buf[:, : hist + pending] = self._state[index, : hist + pending]
        buf[:, hist + pending :] = checked

        out = np.empty((rows, periods * up), dtype=np.float32)
        group, matrix = f.periods, f.matrix
        step_in, step_out, width = group * down, group * up, matrix.shape[0]
        full = periods // group
        if full > 4 * rows and rows * width <= _WINDOW_BLOCK // 16:
            # Few legs, many groups (a long signal): copy the groups' windows into
            # one matrix (blocks of ~1 MB) and multiply once per block, instead of
            # paying a matmul call per group on a handful of rows.
            windows = sliding_window_view(buf, width, axis=1)[:, ::step_in]
            per_block = max(1, _WINDOW_BLOCK // (rows * width))
            for g0 in range(0, full, per_block):
                g1 = min(full, g0 + per_block)
                block = windows[:, g0:g1].reshape(rows * (g1 - g0), width)
                product = block @ matrix
                out[:, g0 * step_out : g1 * step_out] = product.reshape(rows, -1)
        else:
            for g in range(full):
                a, b = g * step_in, g * step_out
                np.matmul(buf[:, a : a + width], matrix, out=out[:, b : b + step_out])
        rest = periods - full * group
        if rest:
            a, b = full * step_in, full * step_out
            sub = matrix[: hist + rest * down, : rest * up]
            np.matmul(buf[:, a : a + hist + rest * down], sub, out=out[:, b:])

        if index is None:
            self._state[:rows, :keep] = buf[:, consumed:]
            self._pending[:rows] = total - consumed
        else:
            self._state[index, :keep] = buf[:, consumed:]
            self._pending[index] = total - consumed
        return out

    def process_int16(
        self,
        frames: NDArray[np.int16] | NDArray[np.floating],
        slots: NDArray[np.intp] | None = None,
    ) -> NDArray[np.int16]:
        """:meth:`process`, rounded to nearest and saturated to int16."""
        return to_int16(self.process(frames, slots))

    def _check_frames(
        self, frames: NDArray[np.int16] | NDArray[np.floating]
    ) -> NDArray[np.generic]:
        if not isinstance(frames, np.ndarray):
            raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
        if frames.ndim != 2:
            raise ValueError(
                f"frames must be 2-D [legs, samples], got {frames.ndim}-D shape {frames.shape}"
            )
        if frames.dtype not in (np.int16, np.float32, np.float64):
            raise ValueError(f"frames must be int16, float32 or float64, got dtype {frames.dtype}")
        if frames.shape[0] > self._capacity:
            raise ValueError(f"frames has {frames.shape[0]} rows but capacity is {self._capacity}")
        return frames

    def _check_slots(self, slots: NDArray[np.generic], rows: int | None) -> NDArray[np.intp]:
        slots = np.asarray(slots)
        if slots.ndim != 1 or (slots.size and slots.dtype.kind not in "iu"):
            raise ValueError(
                f"slots must be a 1-D integer array, got dtype {slots.dtype} shape {slots.shape}"
            )
        if rows is not None and len(slots) != rows:
            raise ValueError(f"slots has {len(slots)} entries for {rows} rows of frames")
        if slots.size and (int(slots.min()) < 0 or int(slots.max()) >= self._capacity):
            raise ValueError(
                f"slots must lie in [0, {self._capacity}), got {slots.min()}..{slots.max()}"
            )
        return slots.astype(np.intp, copy=False)
