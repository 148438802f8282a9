"""Engine tick cost at N PCMU legs, in-process (no sockets): where per-leg Python goes.

Each leg receives one 20 ms RTP packet per tick through Leg.receive_datagram,
sends RTP back (to a counter) and feeds one mono fork sink. Prints the mean
receive and tick time per 20 ms tick, and with --profile the top functions
(cProfile, by own time). This isolates the engine from sockets and asyncio;
bench/capacity.py measures the whole server against a naive baseline.

Usage: .venv/bin/python bench/engine_tick.py [--legs 1000] [--ticks 200] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from dsp.mix import MixType
from mediaserver.engine import Leg, MediaEngine
from rtp.packet import build_packet


class Sink:
    sample_rate = 8000
    mix_type = MixType.MONO

    def __init__(self) -> None:
        self.frames = 0

    def on_frame(self, data: bytes) -> None:
        self.frames += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--legs", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    engine = MediaEngine(args.legs + 8)
    engine.warm_up()
    sent = [0]

    def send(data: bytes) -> None:
        sent[0] += 1

    legs = []
    for i in range(args.legs):
        leg = Leg(call_sid=str(i), codec="PCMU/8000", payload_type=0, telephone_event_pt=101,
                  send=send)  # fmt: skip
        leg.listeners.append(Sink())
        engine.add_leg(leg)
        legs.append(leg)
    payload = b"\xff" * 160

    def feed(t: int) -> None:
        for i, leg in enumerate(legs):
            leg.receive_datagram(build_packet(0, t == 0, t, t * 160, 1000 + i, payload), t * 0.02)

    for t in range(5):
        feed(t)
        engine.tick(t * 0.02)
    profile = cProfile.Profile() if args.profile else None
    receive = tick = 0.0
    for t in range(5, 5 + args.ticks):
        t0 = time.perf_counter()
        feed(t)
        t1 = time.perf_counter()
        if profile:
            profile.enable()
        engine.tick(t * 0.02)
        if profile:
            profile.disable()
        t2 = time.perf_counter()
        receive += t1 - t0
        tick += t2 - t1
    n = args.ticks
    print(f"{args.legs} PCMU legs: receive {receive / n * 1e3:.2f} ms + tick "
          f"{tick / n * 1e3:.2f} ms per 20 ms tick"
          f"{' (profiled)' if profile else ''}; {sent[0]} RTP packets sent")  # fmt: skip
    if profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
