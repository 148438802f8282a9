"""Bench: in-band DTMF detection, cost at 1000 legs and accuracy vs multimon-ng.

Peers, measured in the same run:
  * multimon-ng (C, Debian package; ``-a DTMF -t raw``, 22050 Hz input): the
    same generated battery, resampled 8 kHz -> 22050 Hz for it, one process
    per battery category; its CPU time is read from the children's rusage;
  * the naive ways to run our own detector: one ``process`` call per leg, and
    the textbook Goertzel recurrence (a loop over samples, vectorised over
    legs), which costs more than our whole detector before deciding anything.

Cost cases: no key (noise on every leg); every leg holding a key (the same
long tone on all 1000 legs); and a load test where all 1000 legs press keys
in step (100 ms on, 100 ms off), reported as the mean tick over the cycle and
its worst tick, the one where 1000 keys go down at once; that tick returns
1000 ``KeyDown`` objects, and building them alone is printed below it.

Accuracy is scored per category by aligning the expected digit sequence with
the reported one (longest common subsequence): hits, misses, and extra or
wrong digits. Both detectors see exactly the same samples.
"""

from __future__ import annotations

import itertools
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.io import wavfile
from scipy.signal import resample_poly

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import per_call_ms, row

from dsp.dtmf import DTMF_KEYS, DtmfDetector, KeyDown
from dsp.tones import ToneSegment, dtmf_frequencies, render

LEGS = 1000
FRAME = 160
RATE = 8000
GAP_S = 0.25  # silence after each trial
LEVEL = -10.0  # dBFS per tone (about -7 dBm0)

SPEECH = (
    "Thank you for calling. Please listen carefully, as our menu options have changed. "
    "For billing questions, press one. To report a problem with your service, press two. "
    "Seven hundred and ninety seven people waited for the nine forty one train to Boston. "
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells. "
    "Hello, can you hear me now? I am calling about invoice number four eight six one."
)


class Category:
    """One row of the accuracy table: a stream of trials and the digits it should yield."""

    def __init__(self, name: str, expect: str, audio: NDArray[np.int16], digits: str) -> None:
        self.name, self.expect, self.audio, self.digits = name, expect, audio, digits


def _trials(
    digits: str,
    *,
    seconds: float = 0.08,
    shifts: tuple[float, float] = (0.0, 0.0),
    level: float = LEVEL,
    twist_db: float = 0.0,
) -> list[ToneSegment]:
    out = [ToneSegment.silence(0.2)]
    for d in digits:
        low, high = dtmf_frequencies(d)
        comps = ((low * (1 + shifts[0]), level), (high * (1 + shifts[1]), level - twist_db))
        out += [ToneSegment(comps, seconds), ToneSegment.silence(GAP_S)]
    return out


def _shifted(pct: float) -> list[tuple[float, float]]:
    s = [-pct / 100, 0.0, pct / 100]
    return [(a, b) for a in s for b in s if (a, b) != (0.0, 0.0)]


def _category(name: str, expect: str, segments: list[ToneSegment], digits: str) -> Category:
    return Category(name, expect, render(segments), digits)


def _noisy(x: NDArray[np.int16], snr_db: float, seed: int) -> NDArray[np.int16]:
    tone_power = 2 * (32767 * 10 ** (LEVEL / 20)) ** 2 / 2  # two tones
    sigma = np.sqrt(tone_power / 10 ** (snr_db / 10))
    noise = np.random.default_rng(seed).normal(0.0, sigma, x.size)
    return np.clip(np.rint(x + noise), -32768, 32767).astype(np.int16)


def _speech() -> NDArray[np.int16] | None:
    if shutil.which("espeak-ng") is None:
        return None
    parts = []
    with tempfile.TemporaryDirectory() as folder:
        for voice, speed in [("en", 140), ("en+f3", 200), ("en-us+m3", 170), ("en+f4", 140)]:
            path = Path(folder) / "speech.wav"
            cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), SPEECH]
            subprocess.run(cmd, check=True, capture_output=True)
            rate, samples = wavfile.read(path)
            parts.append(resample_poly(samples.astype(np.float64), RATE // 50, rate // 50))
    speech: NDArray[np.int16] = np.clip(np.rint(np.concatenate(parts)), -32768, 32767).astype(
        np.int16
    )
    return speech


def battery() -> list[Category]:
    keys = DTMF_KEYS
    cats = [
        _category(
            "nominal, 3 levels",
            "detect",
            [s for lv in (-6.0, -16.0, -26.0) for s in _trials(keys, level=lv)],
            keys * 3,
        )
    ]
    for pct, expect in [(1.5, "detect"), (3.0, "either"), (3.5, "reject"), (5.0, "reject")]:
        segs = [s for sh in _shifted(pct) for s in _trials(keys, shifts=sh)]
        cats.append(_category(f"offset +-{pct} % (8 combos)", expect, segs, keys * 8))
    for twist, expect, label in [
        (8.0, "detect", "normal twist 8 dB"),
        (-4.0, "detect", "reverse twist 4 dB"),
        (12.0, "reject", "normal twist 12 dB"),
        (-8.0, "reject", "reverse twist 8 dB"),
    ]:
        cats.append(_category(label, expect, _trials(keys, twist_db=twist, level=-6.0), keys))
    for ms, expect in [(20, "reject"), (30, "either"), (40, "detect"), (60, "detect")]:
        segs = _trials(keys * 2, seconds=ms / 1000)
        cats.append(_category(f"duration {ms} ms", expect, segs, keys * 2))
    for snr in (20.0, 10.0, 6.0):
        clean = render(_trials(keys * 2))
        cats.append(
            Category(f"white noise, SNR {snr:g} dB", "detect", _noisy(clean, snr, 9), keys * 2)
        )
    speech = _speech()
    if speech is not None:
        cats.append(
            Category(f"talk-off: {len(speech) / RATE:.0f} s espeak-ng", "reject", speech, "")
        )
    return cats


def _ours(cats: list[Category]) -> tuple[list[str], float]:
    """Each category on its own leg, all in one batch; returns digits and CPU seconds."""
    length = -(-max(len(c.audio) for c in cats) // FRAME) * FRAME + 4 * FRAME
    batch = np.zeros((len(cats), length), dtype=np.int16)
    for i, c in enumerate(cats):
        batch[i, : len(c.audio)] = c.audio
    det = DtmfDetector(len(cats))
    found = [""] * len(cats)
    t0 = time.process_time()
    for at in range(0, length, FRAME):
        for event in det.process(batch[:, at : at + FRAME]):
            if isinstance(event, KeyDown):
                found[event.slot] += event.digit
    return found, time.process_time() - t0


def _multimon(cats: list[Category]) -> tuple[list[str], float, float]:
    """Digits multimon-ng reports per category, its CPU seconds, and seconds of audio."""
    found, audio_s = [], 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for c in cats:
        up = resample_poly(c.audio.astype(np.float64), 441, 160)
        raw = np.clip(np.rint(up), -32768, 32767).astype("<i2").tobytes()
        cmd = ["multimon-ng", "-q", "-c", "-a", "DTMF", "-t", "raw", "-"]
        out = subprocess.run(cmd, input=raw, capture_output=True, check=True).stdout.decode()
        found.append(
            "".join(
                line.split(":", 1)[1].strip()
                for line in out.splitlines()
                if line.startswith("DTMF:")
            )
        )
        audio_s += len(c.audio) / RATE
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return found, cpu, audio_s


def _lcs(a: str, b: str) -> int:
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _score(cat: Category, got: str) -> str:
    hits = _lcs(cat.digits, got)
    extra = len(got) - hits
    if cat.expect == "reject":
        return f"{len(got)} acc"
    return f"{hits}/{len(cat.digits)}" + (f" +{extra}" if extra else "")


def _goertzel_recurrence(frames: NDArray[np.float32]) -> Callable[[], object]:
    coeff = (
        2 * np.cos(2 * np.pi * np.array([697, 770, 852, 941, 1209, 1336, 1477, 1633]) / RATE)
    ).astype(np.float32)

    def run() -> object:
        s1 = np.zeros((frames.shape[0], 8), np.float32)
        s2 = np.zeros_like(s1)
        for n in range(frames.shape[1]):
            s0 = frames[:, n, None] + coeff * s1 - s2
            s2, s1 = s1, s0
        return s1 * s1 + s2 * s2 - coeff * s1 * s2

    return run


def _press_cycle() -> tuple[float, float]:
    """All legs press 1, 5, 9, # in step (100 ms on, 100 ms off): mean and worst tick, ms."""
    segments = []
    for digit in "159#":
        segments += [ToneSegment.dtmf(digit, 0.1, LEVEL), ToneSegment.silence(0.1)]
    signal = render(segments)
    ticks = [
        np.ascontiguousarray(np.broadcast_to(signal[at : at + FRAME], (LEGS, FRAME)))
        for at in range(0, len(signal) - FRAME + 1, FRAME)
    ]
    det = DtmfDetector(LEGS)
    for tick in ticks:  # warm-up: one whole cycle
        det.process(tick)
    times: list[list[float]] = [[] for _ in ticks]
    for _ in range(7):
        for i, tick in enumerate(ticks):
            t0 = time.perf_counter()
            det.process(tick)
            times[i].append(time.perf_counter() - t0)
    medians = [statistics.median(t) * 1e3 for t in times]
    return statistics.mean(medians), max(medians)


def _cost_table(mm_ms_per_tick: float | None) -> None:
    rng = np.random.default_rng(3)
    idle = (rng.standard_normal((LEGS, FRAME)) * 1500).astype(np.int16)
    det_idle = DtmfDetector(LEGS)
    held = render([ToneSegment.dtmf("5", 60.0, LEVEL)])
    ticks = [
        np.ascontiguousarray(np.broadcast_to(held[i * FRAME : (i + 1) * FRAME], (LEGS, FRAME)))
        for i in range(40)
    ]
    det_busy = DtmfDetector(LEGS)
    cycle = itertools.cycle(ticks)
    for _ in range(10):  # keys down on every leg before timing
        det_busy.process(next(cycle))
    few = 100
    rows = [np.array([i]) for i in range(few)]

    def per_leg(det: DtmfDetector, frames: Iterator[NDArray[np.int16]]) -> Callable[[], object]:
        """One ``process`` call per leg for the first ``few`` legs (the naive engine)."""

        def run() -> object:
            tick = next(frames)
            return [det.process(tick[i : i + 1], rows[i]) for i in range(few)]

        return run

    ours_idle = per_call_ms(lambda: det_idle.process(idle))
    ours_busy = per_call_ms(lambda: det_busy.process(next(cycle)))
    naive_idle = per_leg(DtmfDetector(LEGS), itertools.repeat(idle))
    naive = per_call_ms(naive_idle, repeat=5, number=5) * (LEGS / few)
    naive_held = per_leg(DtmfDetector(LEGS), itertools.cycle(ticks))
    for _ in range(10):
        naive_held()
    naive_busy = per_call_ms(naive_held, repeat=5, number=5) * (LEGS / few)
    press_mean, press_worst = _press_cycle()
    downs = [(slot, "5", 1000 + slot, RATE) for slot in range(LEGS)]
    objects = per_call_ms(lambda: [KeyDown(*args) for args in downs], repeat=5, number=10)
    goertzel = per_call_ms(_goertzel_recurrence(idle.astype(np.float32)), repeat=5, number=10)

    print(f"== DTMF detector cost: {LEGS} legs x one 20 ms frame at 8 kHz (ms per tick) ==")
    print(row("case", "ours", "peer", "peer/ours"))
    print(row("no key (noise) vs per-leg calls", ours_idle, naive, f"{naive / ours_idle:.1f}x"))
    print(
        row("no key vs Goertzel recurrence*", ours_idle, goertzel, f"{goertzel / ours_idle:.1f}x")
    )
    print(
        row(
            "every leg holding a key vs per-leg",
            ours_busy,
            naive_busy,
            f"{naive_busy / ours_busy:.1f}x",
        )
    )
    print(row("keys pressed in step: mean tick", press_mean, "", ""))
    print(row("keys pressed in step: worst tick", press_worst, "", ""))
    print(f"  (of which building the 1000 KeyDown objects it returns: {objects:.3f} ms)")
    if mm_ms_per_tick is not None:
        ratio = mm_ms_per_tick / ours_idle
        print(row("no key vs multimon-ng CPU**", ours_idle, mm_ms_per_tick, f"{ratio:.1f}x"))
    print(
        "  * 8-bin Goertzel filter bank only, loop over samples, vectorised over legs; no decisions"
    )
    print("  ** multimon-ng CPU per 20 ms of 22050 Hz audio x 1000 streams, from the battery run")


def main() -> None:
    cats = battery()
    ours, ours_cpu = _ours(cats)
    have_mm = shutil.which("multimon-ng") is not None
    mm, mm_cpu, audio_s = _multimon(cats) if have_mm else ([""] * len(cats), 0.0, 1.0)
    mm_per_tick = mm_cpu / audio_s * 0.020 * LEGS * 1000 if have_mm else None
    _cost_table(mm_per_tick)

    print()
    print("== DTMF accuracy on the same battery: ours vs multimon-ng ==")
    print("   detect rows: hits/trials (+extra or wrong digits); reject rows: accepted tones")
    widths = (34, 8, 14, 14)
    print(row("category", "expect", "ours", "multimon-ng", widths=widths))
    for cat, a, b in zip(cats, ours, mm, strict=True):
        print(
            row(
                cat.name,
                cat.expect,
                _score(cat, a),
                _score(cat, b) if have_mm else "n/a",
                widths=widths,
            )
        )
    if not have_mm:
        print("  multimon-ng not installed: peer column skipped (scripts/setup.sh --system)")
    total_audio = sum(len(c.audio) for c in cats) / RATE
    print(
        f"  battery: {total_audio:.0f} s of audio; ours {ours_cpu:.2f} s CPU "
        f"({len(cats)} legs batched), multimon-ng {mm_cpu:.2f} s CPU"
    )


if __name__ == "__main__":
    main()
