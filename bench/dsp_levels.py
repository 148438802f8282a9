"""Bench: energy score, silence detection and mixing at 1000 legs vs audioop.

Peer: Python's ``audioop`` (C), called once per leg as a per-call server
would: ``audioop.rms`` for the frame energy, ``audioop.add`` for mixing.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import per_call_ms, row

from dsp.mix import mix
from dsp.silence import SilenceDetector, energy_score

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

LEGS = 1000
FRAME = 160


def main() -> None:
    rng = np.random.default_rng(1)
    read = (rng.standard_normal((LEGS, FRAME)) * 3000).astype(np.int16)
    write = (rng.standard_normal((LEGS, FRAME)) * 3000).astype(np.int16)
    read_bytes = [r.tobytes() for r in read]
    write_bytes = [w.tobytes() for w in write]
    det = SilenceDetector(LEGS)
    det.configure(np.arange(LEGS), initial_timeout_ms=10_000, final_timeout_ms=10_000)

    print(f"== energy, silence, mixing: {LEGS} legs x one 20 ms frame at 8 kHz (ms per tick) ==")
    print(row("stage", "ours", "audioop", "ours/peer"))
    cases = [
        (
            "energy score vs audioop.rms",
            lambda: energy_score(read),
            lambda: [audioop.rms(b, 2) for b in read_bytes],
        ),
        (
            "silence detector (score+timers)",
            lambda: det.process(read),
            lambda: [audioop.rms(b, 2) < 200 for b in read_bytes],
        ),
        (
            "mixed (saturating) vs audioop.add",
            lambda: mix("mixed", read, write),
            lambda: [audioop.add(a, b, 2) for a, b in zip(read_bytes, write_bytes, strict=True)],
        ),
        (
            "stereo interleave vs audioop",
            lambda: mix("stereo", read, write),
            lambda: [
                audioop.add(audioop.tostereo(a, 2, 1, 0), audioop.tostereo(b, 2, 0, 1), 2)
                for a, b in zip(read_bytes, write_bytes, strict=True)
            ],
        ),
    ]
    for name, ours, peer in cases:
        a, b = per_call_ms(ours), per_call_ms(peer)
        print(row(name, a, b, f"{a / b:.2f}x"))

    long = (rng.standard_normal((1, 8000 * 60)) * 3000).astype(np.int16)
    long_bytes = long.tobytes()
    a = per_call_ms(lambda: energy_score(long.reshape(-1, FRAME)), number=3)
    b = per_call_ms(
        lambda: [audioop.rms(long_bytes[i : i + 320], 2) for i in range(0, len(long_bytes), 320)],
        number=3,
    )
    print(row("60 s signal, per-20ms energy", a, b, f"{a / b:.2f}x"))
    print()


if __name__ == "__main__":
    main()
