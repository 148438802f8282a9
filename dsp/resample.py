"""Streaming sample-rate conversion for a batch of legs: polyphase FIR in numpy.

Owns: the anti-alias/anti-image filter design for every pair of the telephony
rates in :data:`SUPPORTED_RATES` (cached per pair), the :class:`Resampler`
stage (per-slot history, batch ``[legs, samples]`` in and out, the stateful
stage convention of :mod:`dsp`), and the float-to-int16 conversion of its
output (:func:`to_int16`).

Must not: do I/O, read a clock, log, or call scipy on the hot path (scipy only
designs the filters, once per rate pair). Chunked calls of a stateless
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
straight into the output. All groups go to numpy as one ``[group, leg, window]``
view in one call, so the Python-level cost is a few calls per stage, whatever
the number of groups or legs. When a call has few legs but
many groups (a long signal), each leg's groups are multiplied in a few calls
instead, through strided views of that leg's row (still no copy).

Cost. A group's matmul costs (window rows) x (outputs) multiply-adds per leg
plus one packing step per window element, and a decimator's window grows by M
rows per output it shares: the band's zeros, not the taps, set the price of a
large M. Two structures cut it where measurements showed a gain (see
``bench/dsp_resample.py``, which times them against the one-stage design):

- Cascades (``_CASCADES``: 48k->8k, 64k->8k). Only the last stage, at the low
  rate, carries the sharp transition; the first is a short filter with a wide
  transition that only keeps aliases out of ``0..0.55 x`` the lower rate
  (48k->8k = /3 with 27 taps, then the half-band /2 below; one stage would
  need ~230 taps and ~330-row windows). Every stage keeps its own history, so a
  cascade streams exactly like one stage. Its rate changes commute, so it *is*
  one rational resampler with the equivalent filter in
  :attr:`PolyphaseFilter.taps` (what the tests check it against), linear
  phase with a constant group delay.
- Half-band /2 stages (16k->8k, 32k->16k, 48k->24k, 64k->32k, and the last
  stage of the cascades): every tap at an even distance from the centre is
  zero except the centre (1/2). The stage copies out its even input samples
  and runs the matmul on them only (at 16k->8k: 52 taps instead of a plain
  design's 79, and windows that grow by 1 row per output instead of 2); the
  odd samples enter through the centre tap as one addition.

Measured and dropped: cascades for the other decimations (a wide first stage
at a high input rate costs about what it saves) and for interpolations (a
stage at the output rate costs per output about what one stage does),
half-band stages with a wide transition, and one matmul per phase over all
legs' windows at once (contiguous output rows; ~12 % faster only for 48k<->64k,
where few windows straddle two legs, and no pair under budget that way).
The matmuls run at 60-80 % of this core's sgemm peak on the multiply-adds
they do, so what remains over the 2 ms budget at 1000 legs (16k, 24k, 32k
and 48k to 64k, 48k<->32k, and every pair from 64k) is multiply-adds the
filter spec and the band's zeros need, not overhead. Per output, a group of
P periods costs about ``(J + M*P) * (1 + c / (L*P))`` multiply-add times, J
the nonzero taps per output: the band's zeros add ``M*P``, and BLAS packs
each window element once per call at the price of c ~ 13-17 multiply-adds
(measured on the reference core), shared by the group's ``L*P`` outputs.
Small groups waste packing, large ones multiply zeros; at the best P,
48k<->64k still takes ~2.7x the nonzero multiply-adds' time.
``bench/dsp_resample.py`` times every over-budget pair's matmuls alone over a
sweep of P (the designed P is within a few % of the best) next to the nonzero
multiply-adds at the core's sgemm rate. Also measured and dropped: time-major
buffers (``[samples, legs]``: ~10-20 % faster matmuls, but each transpose in
or out costs 0.7-1.4 ms) and legs processed in cache-sized blocks (no gain
beyond noise).

Filters: equiripple (Parks-McClellan) low-pass with the passband up to 0.45 x
the lower rate, the stopband from 0.55 x the lower rate, i.e. the transition
is centred on the lower Nyquist frequency. Aliases of content just above that
Nyquist frequency may land in the top of the transition band (0.45-0.5 x the
lower rate), never in the passband. Targets, checked on the equivalent filter
of every pair: passband ripple within +-0.03 dB, stopband at least 86 dB down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray

__all__ = [
    "SUPPORTED_RATES",
    "PolyphaseFilter",
    "PolyphaseStage",
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
"""Design passband deviation (linear) of a sharp stage: +-0.026 dB."""
WIDE_RIPPLE = 0.001
"""Design passband deviation (linear) of a wide-transition stage of a cascade."""
STOPBAND_DB = 88.0
"""Design stopband attenuation; the accepted design must reach ``MIN_STOPBAND_DB``."""
MIN_STOPBAND_DB = 86.0
MAX_PASSBAND_DB = 0.03
"""Largest accepted passband deviation from 0 dB of a finished design."""

_CASCADES: dict[tuple[int, int], tuple[int, ...]] = {
    (48000, 8000): (16000,),
    (64000, 8000): (16000,),
}
"""Intermediate rates of the pairs that run as a cascade (all others: one stage)."""

_MAX_GROUP_OUTPUTS = 384
"""Most outputs one matmul group may produce (columns of the banded matrix)."""

_INT16_MIN = -32768.0
_INT16_MAX = 32767.0


@dataclass(frozen=True, eq=False)
class PolyphaseStage:
    """One rate change of a pair: up by ``up``, filter ``taps``, keep every ``down``-th sample.

    ``taps`` is the low-pass at ``up * in_rate`` (gain ``up``). A plain stage
    multiplies windows of ``history + periods * down`` input samples by
    ``matrix`` to get ``periods * up`` outputs. A half-band stage
    (``halfband``: down 2, every tap at an even distance from the centre is
    zero but the centre, 1/2) multiplies windows of its *even* input samples
    by ``matrix`` (the nonzero taps, doubled) and adds the odd sample at the
    centre tap; ``history`` then counts input samples of both parities.
    """

    in_rate: int
    out_rate: int
    up: int
    down: int
    taps: NDArray[np.float64]
    halfband: bool
    history: int
    periods: int
    matrix: NDArray[np.float32]

    @property
    def delay(self) -> float:
        """Group delay in this stage's output samples (the filter is linear phase)."""
        return (len(self.taps) - 1) / (2 * self.down)

    def group_matrix(self, periods: int) -> NDArray[np.float32]:
        """The banded matrix for groups of ``periods`` periods (``matrix`` is the designed one)."""
        return _stage_matrix(self.taps, self.up, self.down, self.halfband, periods)


@dataclass(frozen=True, eq=False)
class PolyphaseFilter:
    """A designed rate pair: its stages and the single filter they are equivalent to.

    The pair converts by ``up / down`` (reduced); running ``stages`` in order
    gives exactly "up by ``up``, filter ``taps`` at ``up * in_rate``, keep every
    ``down``-th sample".
    """

    in_rate: int
    out_rate: int
    up: int
    down: int
    taps: NDArray[np.float64]
    stages: tuple[PolyphaseStage, ...]

    @property
    def delay(self) -> float:
        """Group delay in output samples (every stage is linear phase)."""
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
    taps: NDArray[np.float64], fs: float, f_lo: float, f_hi: float
) -> NDArray[np.float64]:
    """Magnitude response (dB) of ``taps`` at rate ``fs`` on a fine grid of ``f_lo..f_hi`` Hz."""
    points = max(1 << 16, 1 << math.ceil(math.log2(8 * len(taps))))
    spectrum = np.abs(np.fft.rfft(taps, points))
    freqs = np.arange(len(spectrum)) * fs / points
    band = spectrum[(freqs >= f_lo) & (freqs <= f_hi)]
    db: NDArray[np.float64] = 20.0 * np.log10(np.maximum(band, 1e-300))
    return db


def _meets(
    taps: NDArray[np.float64], fs: float, f_pass: float, f_stop: float, ripple_db: float
) -> bool:
    """Unity-gain passband within ``ripple_db`` and stopband at least ``MIN_STOPBAND_DB`` down."""
    passband = _response_db(taps, fs, 0.0, f_pass)
    stopband = _response_db(taps, fs, f_stop, fs / 2)
    return bool(np.abs(passband).max() <= ripple_db and stopband.max() <= -MIN_STOPBAND_DB)


def _lowpass(fs: float, f_pass: float, f_stop: float, ripple: float) -> NDArray[np.float64]:
    """Equiripple low-pass at rate ``fs`` with unity gain (scipy, design time only)."""
    from scipy.signal import remez  # design time only; not imported on the hot path

    delta_s = 10.0 ** (-STOPBAND_DB / 20.0)
    ripple_db = 20.0 * math.log10(1.0 + ripple) * 1.15
    # Herrmann/Kaiser length estimate for an equiripple design, then grow until met.
    span = -10.0 * math.log10(ripple * delta_s) - 13.0
    numtaps = max(5, math.ceil(span / (14.6 * (f_stop - f_pass) / fs)) + 1)
    for _ in range(40):
        taps = np.asarray(
            remez(
                numtaps,
                [0.0, f_pass, f_stop, fs / 2],
                [1.0, 0.0],
                weight=[1.0, ripple / delta_s],
                fs=fs,
                maxiter=100,
            ),
            dtype=np.float64,
        )
        if _meets(taps, fs, f_pass, f_stop, min(ripple_db, MAX_PASSBAND_DB)):
            return taps
        numtaps += max(1, numtaps // 50)
    raise RuntimeError(f"low-pass design did not converge at {fs} Hz")  # pragma: no cover


def _halfband(fs: float, f_pass: float) -> NDArray[np.float64]:
    """Equiripple half-band low-pass at rate ``fs``, unity gain, passband to ``f_pass``.

    Length ``4m - 1``: the centre tap is 1/2 and every other tap at an even
    distance from it is zero, so the transition is centred on ``fs / 4`` and
    the stopband starts at ``fs / 2 - f_pass``. Designed as a one-band type II
    filter ``g`` of length ``2m`` (whose response is zero at Nyquist) that
    becomes the odd-distance taps.
    """
    from scipy.signal import remez  # design time only; not imported on the hot path

    for m in range(2, 200):
        g = np.asarray(remez(2 * m, [0.0, 2.0 * f_pass / fs], [1.0], fs=1.0, maxiter=200))
        taps = np.zeros(4 * m - 1, dtype=np.float64)
        taps[0::2] = 0.5 * g
        taps[2 * m - 1] = 0.5
        if _meets(taps, fs, f_pass, fs / 2 - f_pass, MAX_PASSBAND_DB):
            return taps
    raise RuntimeError(f"half-band design did not converge at {fs} Hz")  # pragma: no cover


def _group_us(window: int, outputs: int) -> float:
    """Modelled time (µs) of one ``[1000 legs, window] @ [window, outputs]`` float32 matmul.

    Fitted (within ~10 %) to OpenBLAS sgemm on one core of the reference
    machine (x86-64, AVX2) with the strided rows and output columns this
    module uses: a per-row cost, one per window element (packing), one per
    multiply-add and one per output written. The kernel works on 8 columns at
    a time and handles a column count that is not a multiple of 4 slowly, so
    23 columns cost about as much as 28.
    """
    padded = -(-outputs // 8) * 8 + (0 if outputs % 4 == 0 else 4)
    return 1.5 + 11.0 + 0.146 * window + 0.0206 * window * padded + 0.369 * outputs


def _group_periods(up: int, down: int, history: int, tick_periods: int) -> int:
    """Periods per matmul group that make a 20 ms tick cheapest under :func:`_group_us`.

    A group of P periods costs ``(history + P*down) * P*up`` multiply-adds per
    leg, of which only ``~history * P*up`` are non-zero taps: large groups waste
    work on the band's zeros, small groups starve BLAS of columns and pay the
    per-row costs more often.
    """
    best_p, best_cost = 1, math.inf
    for p in range(1, tick_periods + 1):
        if p * up > _MAX_GROUP_OUTPUTS:
            break
        full, rest = divmod(tick_periods, p)
        cost = full * _group_us(history + p * down, p * up)
        if rest:
            cost += _group_us(history + rest * down, rest * up)
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


def _stage_matrix(
    taps: NDArray[np.float64], up: int, down: int, halfband: bool, periods: int
) -> NDArray[np.float32]:
    """A stage's banded matrix for groups of ``periods`` periods.

    A half-band stage's matmul runs on the even samples with the nonzero
    off-centre taps, doubled: the odd sample then enters unscaled (see
    ``_StageState``).
    """
    if halfband:
        even = 2.0 * taps[0::2]
        return _banded_matrix(even, 1, 1, len(even) - 1, periods)
    return _banded_matrix(taps, up, down, -(-len(taps) // up) - 1, periods)


def _upsample(taps: NDArray[np.float64], factor: int) -> NDArray[np.float64]:
    """``taps`` with ``factor - 1`` zeros between samples (the filter at ``factor`` x the rate)."""
    out = np.zeros((len(taps) - 1) * factor + 1, dtype=np.float64)
    out[::factor] = taps
    return out


def _stage(in_rate: int, out_rate: int, low_rate: int, halfband_ok: bool) -> PolyphaseStage:
    """Design one stage of a pair whose lower rate is ``low_rate``.

    The stage that reaches ``low_rate`` carries the sharp transition (a
    half-band filter for /2 when ``halfband_ok``); a stage to a higher
    intermediate rate r only needs a flat passband and a stopband from
    ``r - 0.55 x low_rate`` (what would alias below the final stopband edge),
    a much wider transition, so a much shorter filter.
    """
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    fs = float(up * in_rate)
    sharp = min(in_rate, out_rate) == low_rate
    tick_samples = in_rate // 50
    halfband = halfband_ok and sharp and (up, down) == (1, 2)
    if halfband:
        taps = _halfband(fs, PASSBAND_EDGE * low_rate)
        history = len(taps) - 1  # input samples: twice the even samples' history
        periods = _group_periods(1, 1, len(taps[0::2]) - 1, tick_samples // 2)
    else:
        if sharp:
            f_stop, ripple = STOPBAND_EDGE * low_rate, PASSBAND_RIPPLE
        else:
            f_stop, ripple = min(in_rate, out_rate) - STOPBAND_EDGE * low_rate, WIDE_RIPPLE
        taps = _lowpass(fs, PASSBAND_EDGE * low_rate, f_stop, ripple) * up
        history = -(-len(taps) // up) - 1
        periods = _group_periods(up, down, history, max(1, tick_samples // down))
    matrix = _stage_matrix(taps, up, down, halfband, periods)
    taps.flags.writeable = False
    matrix.flags.writeable = False
    return PolyphaseStage(in_rate, out_rate, up, down, taps, halfband, history, periods, matrix)


@cache
def design_filter(in_rate: int, out_rate: int, *, one_stage: bool = False) -> PolyphaseFilter:
    """Design (once per pair, cached) the stages for ``in_rate`` -> ``out_rate``.

    ``one_stage`` designs the plain single polyphase stage instead (no cascade,
    no half-band filter): same targets, more multiply-adds; the bench times
    the structures against it.
    """
    _check_rate("in_rate", in_rate)
    _check_rate("out_rate", out_rate)
    in_rate, out_rate = int(in_rate), int(out_rate)
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    if up == down:
        taps = np.ones(1, dtype=np.float64)
        taps.flags.writeable = False
        return PolyphaseFilter(in_rate, out_rate, 1, 1, taps, ())
    low = min(in_rate, out_rate)
    middle = () if one_stage else _CASCADES.get((in_rate, out_rate), ())
    rates = (in_rate, *middle, out_rate)
    stages = tuple(_stage(a, b, low, not one_stage) for a, b in pairwise(rates))
    # The equivalent single filter: rate changes commute when gcd(down so far, up) == 1.
    taps = np.ones(1, dtype=np.float64)
    total_up, total_down = 1, 1
    for s in stages:
        if math.gcd(total_down, s.up) != 1:  # pragma: no cover - a bad _CASCADES entry
            raise AssertionError(f"stages of {in_rate}->{out_rate} do not commute")
        taps = np.convolve(_upsample(taps, s.up), _upsample(s.taps, total_down))
        total_up, total_down = total_up * s.up, total_down * s.down
    assert (total_up, total_down) == (up, down)
    for pending in range(down):  # stage pending counts must repeat every period
        if _stage_pending(stages, pending) != _stage_pending(stages, pending + down):
            raise AssertionError(f"stages of {in_rate}->{out_rate} are not periodic")
    if len(stages) > 1 and not _meets(
        taps / up, float(up * in_rate), PASSBAND_EDGE * low, STOPBAND_EDGE * low, MAX_PASSBAND_DB
    ):  # pragma: no cover - the stage specs guarantee it
        raise AssertionError(f"cascade {rates} misses the targets")
    taps.flags.writeable = False
    return PolyphaseFilter(in_rate, out_rate, up, down, taps, stages)


def _stage_pending(stages: Sequence[PolyphaseStage], samples: int) -> tuple[int, ...]:
    """Samples each stage holds pending after the pair was fed ``samples`` samples."""
    counts, n = [], samples
    for stage in stages:
        counts.append(n % stage.down)
        n = (n // stage.down) * stage.up
    return tuple(counts)


def to_int16(samples: NDArray[np.floating]) -> NDArray[np.int16]:
    """Round (half to even) and saturate float samples in int16 scale to int16."""
    out = np.rint(samples)
    np.clip(out, _INT16_MIN, _INT16_MAX, out=out)
    result: NDArray[np.int16] = out.astype(np.int16)
    return result


def _multiply_groups(
    buf: NDArray[np.float32],
    matrix: NDArray[np.float32],
    subs: dict[int, NDArray[np.float32]],
    down: int,
    up: int,
    group: int,
    periods: int,
    out: NDArray[np.float32],
) -> None:
    """Write into ``out`` the product of every group of ``group`` periods of ``buf``.

    ``buf`` holds, per row, the matrix's history then at least ``periods * down``
    samples; ``subs`` caches the matrices of a last, shorter group.
    """
    rows, width = buf.shape[0], matrix.shape[0]
    step_in, step_out = group * down, group * up
    full, rest = divmod(periods, group)
    apart = -(-width // step_in)  # windows of groups this many apart do not overlap
    if rows * apart < full:
        # Few legs, many groups (a long signal): per leg, the windows of every
        # apart-th group form one strided matrix, so a few matmuls cover them.
        item = buf.itemsize
        for row in range(rows):
            line, dest = buf[row], out[row, : full * step_out].reshape(full, step_out)
            for first in range(min(apart, full)):
                windows = as_strided(
                    line[first * step_in :],
                    shape=(-(-(full - first) // apart), width),
                    strides=(apart * step_in * item, item),
                    writeable=False,
                )
                np.matmul(windows, matrix, out=dest[first::apart])
    elif full:
        # Many legs: one matmul call over a [group, leg, window] view of buf
        # and a [group, leg, output] view of out. numpy hands each group's
        # slice to BLAS as is (both are row-strided matrices), so this is the
        # per-group loop without its Python-level cost per group.
        windows = as_strided(
            buf,
            shape=(full, rows, width),
            strides=(step_in * buf.strides[1], buf.strides[0], buf.strides[1]),
            writeable=False,
        )
        dest = as_strided(
            out,
            shape=(full, rows, step_out),
            strides=(step_out * out.strides[1], out.strides[0], out.strides[1]),
        )
        np.matmul(windows, matrix, out=dest)
    if rest:
        sub = subs.get(rest)
        if sub is None:
            history = width - step_in
            sub = subs[rest] = np.ascontiguousarray(matrix[: history + rest * down, : rest * up])
        a, b = full * step_in, full * step_out
        np.matmul(buf[:, a : a + sub.shape[0]], sub, out=out[:, b:])


class _StageState:
    """The history (and pending samples) of one stage for every slot, plus its scaling.

    A stage's input buffer may hold the signal times ``in_scale`` and its output
    comes out times ``out_scale``; the matrix is scaled to match. A half-band
    stage always doubles the scale (its odd samples enter unscaled), so the
    stage before it halves its output for free, and the last stage's output is
    rescaled only when nothing could absorb it.
    """

    def __init__(
        self, stage: PolyphaseStage, capacity: int, in_scale: float, out_scale: float
    ) -> None:
        self.stage = stage
        if stage.halfband:
            if out_scale != 2.0 * in_scale:  # pragma: no cover - Resampler sets them so
                raise AssertionError("a half-band stage doubles the scale")
            self.matrix = stage.matrix  # already doubled
        else:
            scaled = stage.matrix.astype(np.float64) * (out_scale / in_scale)
            self.matrix = scaled.astype(np.float32)
        self.subs: dict[int, NDArray[np.float32]] = {}
        self.state = np.zeros((capacity, stage.history + stage.down - 1), dtype=np.float32)

    def run(self, buf: NDArray[np.float32], periods: int, out: NDArray[np.float32]) -> None:
        """Write into ``out`` the outputs of ``periods`` periods of ``buf`` (history, samples)."""
        s = self.stage
        if not periods:
            return
        if not s.halfband:
            _multiply_groups(buf, self.matrix, self.subs, s.down, s.up, s.periods, periods, out)
            return
        # Half-band /2: the matmul on the even samples; the odd sample of output
        # n sits at position half + 2n (half = s.history / 2, odd) on the centre tap.
        half = s.history // 2
        even = np.empty((buf.shape[0], half + periods), dtype=np.float32)
        np.copyto(even, buf[:, 0 : 2 * (half + periods) : 2])
        _multiply_groups(even, self.matrix, self.subs, 1, 1, s.periods, periods, out)
        np.add(out, buf[:, half : half + 2 * periods : 2], out=out)


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

    ``design`` replaces :func:`design_filter`'s design for the pair, e.g. with
    ``design_filter(in_rate, out_rate, one_stage=True)``.
    """

    def __init__(
        self,
        capacity: int,
        in_rate: int,
        out_rate: int,
        *,
        design: PolyphaseFilter | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        _check_rate("in_rate", in_rate)  # before the cache: 8000.0 would hit the 8000 entry
        _check_rate("out_rate", out_rate)
        if design is None:
            design = design_filter(int(in_rate), int(out_rate))
        elif (design.in_rate, design.out_rate) != (in_rate, out_rate):
            raise ValueError(
                f"design is for {design.in_rate}->{design.out_rate} Hz, "
                f"not {in_rate}->{out_rate} Hz"
            )
        self._filter = design
        self._capacity = int(capacity)
        self._pending = np.zeros(self._capacity, dtype=np.intp)
        stages = self._filter.stages
        self._stages: list[_StageState] = []
        scale = 1.0
        for i, stage in enumerate(stages):
            if stage.halfband:
                out_scale = 2.0 * scale
            elif i + 1 < len(stages) and stages[i + 1].halfband:
                out_scale = 0.5
            else:
                out_scale = 1.0
            self._stages.append(_StageState(stage, self._capacity, scale, out_scale))
            scale = out_scale
        self._final_scale = scale
        # Pending samples of each stage for each overall pending count (they
        # repeat every period, which design_filter checks).
        self._stage_pending = [_stage_pending(stages, p) for p in range(self._filter.down)]

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
        for stage in self._stages:
            stage.state[index] = 0.0

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
        if not self._stages:
            return checked.astype(np.float32, copy=True)

        held = self._pending[:rows] if index is None else self._pending[index]
        pending = int(held[0]) if rows else 0
        if rows and (held != pending).any():
            raise ValueError(
                "rows have different pending sample counts; feed every leg of a batch "
                "the same chunk lengths (or reset them together)"
            )
        stage_pending = self._stage_pending[pending]

        buf = self._stage_buffer(0, stage_pending[0], count, rows, index)
        buf[:, buf.shape[1] - count :] = checked
        for k, stage in enumerate(self._stages):
            s = stage.stage
            total = stage_pending[k] + count
            periods = total // s.down
            count = periods * s.up
            if k + 1 < len(self._stages):
                following = self._stage_buffer(k + 1, stage_pending[k + 1], count, rows, index)
                out = following[:, following.shape[1] - count :]
            else:
                following = out = np.empty((rows, count), dtype=np.float32)
            stage.run(buf, periods, out)
            keep = s.history + total - periods * s.down
            if index is None:
                stage.state[:rows, :keep] = buf[:, periods * s.down :]
            else:
                stage.state[index, :keep] = buf[:, periods * s.down :]
            buf = following
        if self._final_scale != 1.0:
            out *= np.float32(1.0 / self._final_scale)

        total = pending + checked.shape[1]
        if index is None:
            self._pending[:rows] = total % self._filter.down
        else:
            self._pending[index] = total % self._filter.down
        return out

    def process_int16(
        self,
        frames: NDArray[np.int16] | NDArray[np.floating],
        slots: NDArray[np.intp] | None = None,
    ) -> NDArray[np.int16]:
        """:meth:`process`, rounded to nearest and saturated to int16."""
        return to_int16(self.process(frames, slots))

    def _stage_buffer(
        self, k: int, pending: int, count: int, rows: int, index: NDArray[np.intp] | None
    ) -> NDArray[np.float32]:
        """Stage ``k``'s input buffer: its history and pending samples, then room for ``count``."""
        stage = self._stages[k]
        held = stage.stage.history + pending
        buf = np.empty((rows, held + count), dtype=np.float32)
        if index is None:
            buf[:, :held] = stage.state[:rows, :held]
        else:
            buf[:, :held] = stage.state[index, :held]
        return buf

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
