"""Bench: the streaming batch resampler at 1000 legs vs soxr and PyAV, and its quality.

Peers, measured in the same run (ours and each peer interleaved, median of
several ticks after a warm-up):

- soxr ``ResampleStream(in, out, 1000, dtype='float32', quality='HQ')``: one
  multi-channel stream for the whole batch, fed its native layout (float32
  ``[samples, channels]``, prepared outside the timing). Ours is fed int16
  ``[legs, samples]`` and returns float32, conversion included.
- PyAV ``av.AudioResampler`` (libswresample, default quality): one per leg, as
  a per-call server would use it, frame construction and ``to_ndarray``
  included; timed on 50 legs and scaled to 1000 (said so in the table).

numpy's BLAS is limited to one thread while timing (the "one core" target);
soxr and PyAV run single-threaded anyway.

Every pair: ours on all 30 pairs, the pairs taking turns round by round (so
background load hits them alike), median of the rounds; pairs over the 2 ms
budget are marked. The pairs that run a cascade or a half-band stage are also
timed against the plain one-stage polyphase design of the same pair
(``design_filter(..., one_stage=True)``, what this module used before).

Pairs over budget: each one's matmuls alone (no buffer work), at the designed
group size and at the best of a sweep of group sizes, next to the filters'
nonzero multiply-adds at this core's sgemm rate (measured in the same run):
what a kernel with no band zeros and no packing would need. The gap between
the first two is Python-side work; between the matmuls and "at peak" it is
the band's zeros and BLAS packing, which no group size removes.

Quality: passband deviation up to 0.45 x the lower rate, THD+N of a 1 kHz
sine at -3 dBFS (8k->16k, 8k->48k, int16 output) and the level of a 5 kHz
tone after 48k->8k, for ours, soxr HQ, and scipy's ``resample_poly`` applied
per 20 ms chunk without state (what "just call resample_poly" gives a stream).
"""

from __future__ import annotations

import contextlib
import ctypes
import statistics
import time
from collections.abc import Callable, Iterator
from functools import partial

import av
import numpy as np
import soxr
from numpy.typing import NDArray
from scipy.signal import resample_poly

from dsp.resample import (
    SUPPORTED_RATES,
    PolyphaseStage,
    Resampler,
    _multiply_groups,
    design_filter,
)

LEGS = 1000
AV_LEGS = 50
TICK_PAIRS = [
    (8000, 16000),
    (8000, 48000),
    (16000, 8000),
    (48000, 8000),
    (16000, 48000),
    (48000, 16000),
]
MINUS_3_DBFS = 32767 * 10 ** (-3 / 20)
BUDGET_MS = 2.0
STRUCTURED = [
    (a, b)
    for a in SUPPORTED_RATES
    for b in SUPPORTED_RATES
    if len(design_filter(a, b).stages) > 1 or any(st.halfband for st in design_filter(a, b).stages)
]


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[str]:
    """Limit the OpenBLAS numpy loaded to one thread (restored afterwards)."""
    libs = []
    with open("/proc/self/maps") as maps:  # Linux; elsewhere we just report "unknown"
        paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for setter, getter in (
            ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
            ("openblas_set_num_threads", "openblas_get_num_threads"),
        ):
            if hasattr(lib, setter) and hasattr(lib, getter):
                libs.append((getattr(lib, setter), int(getattr(lib, getter)())))
                break
    for set_threads, _ in libs:
        set_threads(1)
    try:
        yield "1 BLAS thread" if libs else "BLAS threads: unknown (could not limit)"
    finally:
        for set_threads, before in libs:
            set_threads(before)


def _interleaved_ms(fns: list[Callable[[], object]], *, number: int, repeat: int) -> list[float]:
    """Mean ms per call of each fn over ``number`` consecutive calls, median of ``repeat`` runs.

    Consecutive calls, not single ones: soxr's stream buffers input and emits
    output in bursts every few ticks, so a single call's time says nothing. The
    fns take turns run by run so background load hits them alike.
    """
    for fn in fns:
        for _ in range(3):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, bucket in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            bucket.append((time.perf_counter() - t0) / number)
    return [statistics.median(bucket) * 1e3 for bucket in times]


def _row(*cells: object) -> str:
    widths = (12, 9, 9, 9, 12, 10)
    out = []
    for i, cell in enumerate(cells):
        text = f"{cell:.3f}" if isinstance(cell, float) else str(cell)
        out.append(text.ljust(widths[i]) if i == 0 else text.rjust(widths[i] if i < 6 else 10))
    return " ".join(out)


def _label(in_rate: int, out_rate: int) -> str:
    return f"{in_rate // 1000}k->{out_rate // 1000}k"


class _PyAVLegs:
    """One PyAV ``AudioResampler`` per leg, each fed its leg's 20 ms frame per tick."""

    def __init__(self, pcm: NDArray[np.int16], in_rate: int, out_rate: int) -> None:
        self.pcm, self.in_rate, self.pts = pcm, in_rate, 0
        self.resamplers = [
            av.AudioResampler(format="s16", layout="mono", rate=out_rate) for _ in pcm
        ]

    def tick(self) -> None:
        for leg, resampler in enumerate(self.resamplers):
            frame = av.AudioFrame.from_ndarray(self.pcm[leg : leg + 1], format="s16", layout="mono")
            frame.sample_rate = self.in_rate
            frame.pts = self.pts
            for out in resampler.resample(frame):
                out.to_ndarray()
        self.pts += self.pcm.shape[1]


def _tick_section(rng: np.random.Generator) -> None:
    print(f"-- 20 ms ticks at {LEGS} legs, ms per tick (mean of 12 ticks, median of 7 runs) --")
    print(_row("pair", "ours", "soxr HQ", "ours/sox", "PyAV x1000*", "ours/PyAV"))
    for in_rate, out_rate in TICK_PAIRS:
        pcm = (rng.standard_normal((LEGS, in_rate // 50)) * 3000).astype(np.int16)
        ours = Resampler(LEGS, in_rate, out_rate)
        stream = soxr.ResampleStream(in_rate, out_rate, LEGS, dtype="float32", quality="HQ")
        interleaved = np.ascontiguousarray(pcm.T, dtype=np.float32)
        pyav = _PyAVLegs(pcm[:AV_LEGS], in_rate, out_rate)
        a, b, c = _interleaved_ms(
            [partial(ours.process, pcm), partial(stream.resample_chunk, interleaved), pyav.tick],
            number=12,
            repeat=7,
        )
        c *= LEGS / AV_LEGS
        print(_row(_label(in_rate, out_rate), a, b, f"{a / b:.2f}x", c, f"{a / c:.3f}x"))
    print(f"* PyAV: one AudioResampler per leg, timed on {AV_LEGS} legs, scaled x{LEGS // AV_LEGS}")


def _all_pairs_section(rng: np.random.Generator) -> dict[tuple[int, int], float]:
    print(
        f"-- ours, every pair: ms per 20 ms tick at {LEGS} legs (rows: from, columns: to; "
        "median of 9 rounds of 4 ticks; * over 2 ms) --"
    )
    pcm = {
        r: (rng.standard_normal((LEGS, r // 50)) * 3000).astype(np.int16) for r in SUPPORTED_RATES
    }
    pairs = [(a, b) for a in SUPPORTED_RATES for b in SUPPORTED_RATES]
    fns: list[Callable[[], object]] = [
        partial(Resampler(LEGS, a, b).process, pcm[a]) for a, b in pairs
    ]
    cells = dict(zip(pairs, _interleaved_ms(fns, number=4, repeat=9), strict=True))
    print("from\\to " + "".join(f"{r // 1000:>7}k" for r in SUPPORTED_RATES))
    for a in SUPPORTED_RATES:
        row = "".join(
            f"{cells[a, b]:>7.2f}{'*' if cells[a, b] > BUDGET_MS else ' '}" for b in SUPPORTED_RATES
        )
        print(f"{a // 1000:>7}k" + row)
    return cells


FLOOR_PERIODS = (1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40)
"""Group sizes (periods per matmul) the floor section tries on a pair's biggest stage."""


def _stage_matmuls(
    stage: PolyphaseStage, periods_per_group: int, rng: np.random.Generator
) -> Callable[[], object]:
    """One tick of ``stage``'s matmuls at 1000 legs with ``periods_per_group``, nothing else."""
    matrix = stage.group_matrix(periods_per_group)
    up, down = (1, 1) if stage.halfband else (stage.up, stage.down)  # half-band: even samples
    periods = stage.in_rate // 50 // stage.down
    history = matrix.shape[0] - periods_per_group * down
    buf = rng.standard_normal((LEGS, history + periods * down)).astype(np.float32)
    out = np.empty((LEGS, periods * up), dtype=np.float32)
    return partial(_multiply_groups, buf, matrix, {}, down, up, periods_per_group, periods, out)


def _sgemm_gmacs(rng: np.random.Generator) -> float:
    """This core's float32 matmul rate (multiply-adds/s) on a BLAS-friendly shape."""
    a = rng.standard_normal((LEGS, 256)).astype(np.float32)
    b = rng.standard_normal((256, 256)).astype(np.float32)
    (ms,) = _interleaved_ms([partial(np.matmul, a, b)], number=10, repeat=7)
    return LEGS * 256 * 256 / (ms * 1e-3)


def _nonzero_macs(a: int, b: int) -> float:
    """Multiply-adds per tick at 1000 legs if only the filters' nonzero taps were applied."""
    total = 0.0
    for st in design_filter(a, b).stages:
        outputs = st.out_rate // 50
        total += outputs * np.count_nonzero(st.taps) / st.up
    return total * LEGS


def _floor_section(rng: np.random.Generator, cells: dict[tuple[int, int], float]) -> None:
    """Why the pairs over budget stay over: their matmuls alone, at any group size."""
    over = [pair for pair, ms in cells.items() if ms > BUDGET_MS]
    if not over:
        return
    peak = _sgemm_gmacs(rng)
    print(
        f"-- pairs over {BUDGET_MS:g} ms: the matmuls alone, ms per tick at {LEGS} legs "
        f"(this core's sgemm: {peak / 1e9:.1f} GMAC/s) --"
    )
    print(_row("pair", "ours", "matmuls", "best P", "at peak*") + "   best periods per group")
    for a, b in over:
        pcm = (rng.standard_normal((LEGS, a // 50)) * 3000).astype(np.int16)
        stages = design_filter(a, b).stages
        main = max(range(len(stages)), key=lambda i: len(stages[i].taps))
        designed = [_stage_matmuls(st, st.periods, rng) for st in stages]
        others = (
            sum(_interleaved_ms(designed[:main] + designed[main + 1 :], number=4, repeat=5))
            if len(stages) > 1
            else 0.0
        )
        sweep = [p for p in FLOOR_PERIODS if p * stages[main].up <= 160]
        fns: list[Callable[[], object]] = [
            partial(Resampler(LEGS, a, b).process, pcm),
            designed[main],
            *(_stage_matmuls(stages[main], p, rng) for p in sweep),
        ]
        t_ours, t_main, *t_sweep = _interleaved_ms(fns, number=4, repeat=5)
        best = min(range(len(sweep)), key=lambda i: t_sweep[i])
        print(
            _row(
                _label(a, b),
                t_ours,
                t_main + others,
                t_sweep[best] + others,
                _nonzero_macs(a, b) / peak * 1e3,
            )
            + f"   {sweep[best]} (designed: {stages[main].periods})"
        )
    print(
        "* at peak: the filters' nonzero multiply-adds at the sgemm rate above, i.e. a kernel\n"
        "  with no band zeros and no packing (not reachable through a numpy matmul)"
    )


def _structure_section(rng: np.random.Generator) -> None:
    print(f"-- cascade / half-band vs the one-stage design, ms per tick at {LEGS} legs --")
    print(_row("pair", "ours", "1 stage", "ours/1st") + "   ours: stages (taps)")
    for a, b in STRUCTURED:
        pcm = (rng.standard_normal((LEGS, a // 50)) * 3000).astype(np.int16)
        ours = Resampler(LEGS, a, b)
        plain = Resampler(LEGS, a, b, design=design_filter(a, b, one_stage=True))
        t_ours, t_plain = _interleaved_ms(
            [partial(ours.process, pcm), partial(plain.process, pcm)], number=6, repeat=9
        )
        stages = " + ".join(
            f"{'/2 half-band' if st.halfband else f'x{st.up}/{st.down}'} ({len(st.taps)})"
            for st in ours.filter.stages
        )
        print(_row(_label(a, b), t_ours, t_plain, f"{t_ours / t_plain:.2f}x") + "   " + stages)


def _ours_once(pcm: NDArray[np.int16], in_rate: int, out_rate: int) -> NDArray[np.float32]:
    return Resampler(1, in_rate, out_rate).process(pcm)


def _long_section(rng: np.random.Generator) -> None:
    print("-- one 60 s mono signal in one call, ms (x realtime) --")
    print(_row("pair", "ours", "soxr HQ", "ours/sox"))
    for in_rate, out_rate in [(8000, 48000), (48000, 8000), (16000, 8000)]:
        pcm = (rng.standard_normal((1, 60 * in_rate)) * 3000).astype(np.int16)
        as_float = pcm[0].astype(np.float32)
        a, b = _interleaved_ms(
            [
                partial(_ours_once, pcm, in_rate, out_rate),
                partial(soxr.resample, as_float, in_rate, out_rate, quality="HQ"),
            ],
            number=1,
            repeat=5,
        )
        cells = (f"{a:.1f} ({60e3 / a:.0f}x)", f"{b:.1f} ({60e3 / b:.0f}x)", f"{a / b:.2f}x")
        print(_row(_label(in_rate, out_rate), *cells))


# --- quality -----------------------------------------------------------------

Converter = Callable[[NDArray[np.float64], int, int], NDArray[np.float64]]


def _ours(x: NDArray[np.float64], in_rate: int, out_rate: int) -> NDArray[np.float64]:
    r = Resampler(x.shape[0], in_rate, out_rate)
    return np.concatenate([r.process(c) for c in _chunks(x, in_rate)], axis=1).astype(np.float64)


def _soxr(x: NDArray[np.float64], in_rate: int, out_rate: int) -> NDArray[np.float64]:
    stream = soxr.ResampleStream(in_rate, out_rate, x.shape[0], dtype="float64", quality="HQ")
    parts = [stream.resample_chunk(np.ascontiguousarray(c.T)) for c in _chunks(x, in_rate)]
    return np.concatenate(parts, axis=0).T


def _poly_chunked(x: NDArray[np.float64], in_rate: int, out_rate: int) -> NDArray[np.float64]:
    g = np.gcd(in_rate, out_rate)
    parts = [resample_poly(c, out_rate // g, in_rate // g, axis=1) for c in _chunks(x, in_rate)]
    return np.concatenate(parts, axis=1)


def _chunks(x: NDArray[np.float64], in_rate: int) -> list[NDArray[np.float64]]:
    tick = in_rate // 50
    return [x[:, i : i + tick] for i in range(0, x.shape[1], tick)]


def _fit(y: NDArray[np.float64], freq: float, rate: int) -> tuple[float, float]:
    """Amplitude of the best-fitting sine at ``freq`` and the RMS of everything else."""
    n = np.arange(y.size)
    w = 2 * np.pi * freq / rate
    basis = np.stack([np.sin(w * n), np.cos(w * n), np.ones(y.size)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(coef[0], coef[1])), float(np.sqrt(np.mean((y - basis @ coef) ** 2)))


def _settle(y: NDArray[np.float64], out_rate: int) -> NDArray[np.float64]:
    """Skip the first 50 ms (start-up transient of every converter) and the last 20 ms."""
    return y[..., out_rate // 20 : y.shape[-1] - out_rate // 50]


def _passband_dev_db(convert: Converter, in_rate: int, out_rate: int) -> float:
    low = min(in_rate, out_rate)
    freqs = np.linspace(50.0, 0.45 * low, 25)
    t = np.arange(in_rate // 2) / in_rate
    y = _settle(
        convert(10000.0 * np.sin(2 * np.pi * freqs[:, None] * t), in_rate, out_rate), out_rate
    )
    gains = [
        20 * np.log10(_fit(row, f, out_rate)[0] / 10000.0) for f, row in zip(freqs, y, strict=True)
    ]
    return float(np.max(np.abs(gains)))


def _thd_n_db(convert: Converter, out_rate: int) -> float:
    t = np.arange(8000) / 8000
    x = np.rint(MINUS_3_DBFS * np.sin(2 * np.pi * 1000 * t))[None, :]
    y = np.clip(np.rint(convert(x, 8000, out_rate)), -32768, 32767)  # int16 output
    amp, rest = _fit(_settle(y, out_rate)[0], 1000.0, out_rate)
    return float(20 * np.log10(rest / (amp / np.sqrt(2))))


def _tone_5k_db(convert: Converter) -> float:
    t = np.arange(48000) / 48000
    y = _settle(convert(MINUS_3_DBFS * np.sin(2 * np.pi * 5000 * t)[None, :], 48000, 8000), 8000)
    return float(20 * np.log10(np.sqrt(np.mean(y**2)) / (MINUS_3_DBFS / np.sqrt(2))))


def _quality_section() -> None:
    converters: list[tuple[str, Converter]] = [
        ("ours", _ours),
        ("soxr HQ", _soxr),
        ("resample_poly/20ms", _poly_chunked),
    ]
    print("-- quality, 20 ms chunks (dB; targets: dev < 0.1, THD+N < -80, 5 kHz < -80) --")
    print(f"{'figure':<28}" + "".join(f"{name:>20}" for name, _ in converters))
    figures: list[tuple[str, Callable[[Converter], float]]] = [
        (f"passband dev {_label(a, b)}", partial(_passband_dev_db, in_rate=a, out_rate=b))
        for a, b in TICK_PAIRS
    ]
    figures += [
        ("THD+N 1 kHz 8k->16k", partial(_thd_n_db, out_rate=16000)),
        ("THD+N 1 kHz 8k->48k", partial(_thd_n_db, out_rate=48000)),
        ("5 kHz tone level 48k->8k", _tone_5k_db),
    ]
    for name, measure in figures:
        print(f"{name:<28}" + "".join(f"{measure(convert):>20.3f}" for _, convert in converters))
    taps = ", ".join(f"{_label(a, b)} {len(design_filter(a, b).taps)}" for a, b in TICK_PAIRS)
    print(f"ours: equiripple taps per pair: {taps}")


def main() -> None:
    rng = np.random.default_rng(7)
    with _one_blas_thread() as threads:
        print(f"== resample: streaming polyphase vs soxr / PyAV ({threads}) ==")
        _tick_section(rng)
        cells = _all_pairs_section(rng)
        _floor_section(rng, cells)
        _structure_section(rng)
        _long_section(rng)
    _quality_section()
    print()


if __name__ == "__main__":
    main()
