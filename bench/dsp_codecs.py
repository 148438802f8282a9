"""Bench: RTP codecs (dsp.g711, dsp.codecs) at 1000 legs and on one long signal.

Peers, measured in the same run:
- G.711 and L16: Python's ``audioop`` (C), called once per leg as a per-call
  server would (``audioop.lin2ulaw(frame, 2)``, ``audioop.byteswap`` for L16's
  network byte order), against our one batched numpy call for all legs.
- G.722 and Opus: raw PyAV (``CodecContext.encode``/``decode`` with no checks
  or conversions) against our per-leg ``Encoder``/``Decoder``; both are one
  FFmpeg call per leg per tick, so this shows what our wrapper adds and what a
  tick costs at 1000 legs.

Run: ``.venv/bin/python bench/dsp_codecs.py``.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

import av
import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import per_call_ms, row

from dsp.codecs import OPUS_APPLICATION, OPUS_BIT_RATE, get_codec
from dsp.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

LEGS = 1000
TICK_MS = 20
LONG_SECONDS = 60
STATEFUL_LEGS = 100  # PyAV legs actually measured; the 1000-leg figure is scaled
STATEFUL_TICKS = 5


def _speechlike(rate: int, seconds: float, seed: int) -> NDArray[np.int16]:
    """A gliding harmonic tone with a syllable-rate envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    pitch = 2 * np.pi * (120 * t + 20 * np.sin(2 * np.pi * 0.7 * t))
    voice = sum(np.sin(k * pitch) / k for k in range(1, 12))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi))
    signal = 4000 * envelope * voice + rng.normal(0, 200, t.size)
    pcm: NDArray[np.int16] = np.clip(signal, -32768, 32767).astype(np.int16)
    return pcm


def _batch_frames(rate: int) -> NDArray[np.int16]:
    samples = rate * TICK_MS // 1000
    long = _speechlike(rate, 2.0, seed=1)
    starts = np.random.default_rng(2).integers(0, long.size - samples, LEGS)
    return np.stack([long[s : s + samples] for s in starts])


def _g711_sections() -> None:
    pcm = _batch_frames(8000)
    pcm_rows = [r.tobytes() for r in pcm]
    ucodes, acodes = ulaw_encode(pcm), alaw_encode(pcm)
    ucode_rows, acode_rows = [r.tobytes() for r in ucodes], [r.tobytes() for r in acodes]
    pcmu, pcma = get_codec("PCMU/8000"), get_codec("PCMA/8000")
    assert pcmu.batch is not None and pcma.batch is not None
    ubatch, abatch = pcmu.batch, pcma.batch
    udec = pcmu.new_decoder()

    print(f"== G.711: {LEGS} legs x one {TICK_MS} ms frame at 8 kHz (ms per tick) ==")
    print("ours: one batched numpy call; audioop: one call per leg")
    print(row("operation", "ours", "audioop", "ours/peer"))
    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        (
            "ulaw decode",
            lambda: ubatch.decode_batch(ucodes),
            lambda: [audioop.ulaw2lin(b, 2) for b in ucode_rows],
        ),
        (
            "ulaw encode",
            lambda: ubatch.encode_batch(pcm),
            lambda: [audioop.lin2ulaw(b, 2) for b in pcm_rows],
        ),
        (
            "alaw decode",
            lambda: abatch.decode_batch(acodes),
            lambda: [audioop.alaw2lin(b, 2) for b in acode_rows],
        ),
        (
            "alaw encode",
            lambda: abatch.encode_batch(pcm),
            lambda: [audioop.lin2alaw(b, 2) for b in pcm_rows],
        ),
        (
            "ulaw decode, our per-leg Decoder",
            lambda: [udec.decode(b) for b in ucode_rows],
            lambda: [audioop.ulaw2lin(b, 2) for b in ucode_rows],
        ),
    ]
    for name, ours, peer in cases:
        a, b = per_call_ms(ours), per_call_ms(peer)
        print(row(name, a, b, a / b))

    long = _speechlike(8000, LONG_SECONDS, seed=3)
    long_bytes = long.tobytes()
    ulong, along = ulaw_encode(long), alaw_encode(long)
    ulong_bytes, along_bytes = ulong.tobytes(), along.tobytes()
    print(f"\n== G.711: one {LONG_SECONDS} s signal at 8 kHz (ms per call) ==")
    print(row("operation", "ours", "audioop", "ours/peer"))
    long_cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("ulaw decode", lambda: ulaw_decode(ulong), lambda: audioop.ulaw2lin(ulong_bytes, 2)),
        ("ulaw encode", lambda: ulaw_encode(long), lambda: audioop.lin2ulaw(long_bytes, 2)),
        ("alaw decode", lambda: alaw_decode(along), lambda: audioop.alaw2lin(along_bytes, 2)),
        ("alaw encode", lambda: alaw_encode(long), lambda: audioop.lin2alaw(long_bytes, 2)),
    ]
    for name, ours, peer in long_cases:
        a, b = per_call_ms(ours, number=5), per_call_ms(peer, number=5)
        print(row(name, a, b, a / b))


def _l16_section() -> None:
    codec = get_codec("L16/8000")
    assert codec.batch is not None
    batch = codec.batch
    pcm = _batch_frames(8000)
    pcm_rows = [r.tobytes() for r in pcm]
    payloads = batch.encode_batch(pcm)
    payload_rows = [r.tobytes() for r in payloads]
    long = _speechlike(8000, LONG_SECONDS, seed=4)
    long_bytes = long.tobytes()
    long_payload = batch.encode_batch(long.reshape(1, -1))
    long_payload_bytes = long_payload.tobytes()
    swap = "byteswap" if sys.byteorder == "little" else "copy (big-endian host)"
    print(f"\n== L16/8000 (big-endian): ours batched vs audioop.{swap} (ms) ==")
    print(row("operation", "ours", "audioop", "ours/peer"))
    cases: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        (
            f"pack, {LEGS} legs x {TICK_MS} ms",
            lambda: batch.encode_batch(pcm),
            lambda: [audioop.byteswap(b, 2) for b in pcm_rows],
        ),
        (
            f"unpack, {LEGS} legs x {TICK_MS} ms",
            lambda: batch.decode_batch(payloads),
            lambda: [audioop.byteswap(b, 2) for b in payload_rows],
        ),
        (
            f"pack, one {LONG_SECONDS} s signal",
            lambda: batch.encode_batch(long.reshape(1, -1)),
            lambda: audioop.byteswap(long_bytes, 2),
        ),
        (
            f"unpack, one {LONG_SECONDS} s signal",
            lambda: batch.decode_batch(long_payload),
            lambda: audioop.byteswap(long_payload_bytes, 2),
        ),
    ]
    for name, ours, peer in cases:
        a, b = per_call_ms(ours, number=5), per_call_ms(peer, number=5)
        print(row(name, a, b, a / b))


def _raw_pyav_context(
    codec_name: str, mode: Literal["r", "w"], rate: int, samples: int
) -> av.AudioCodecContext:
    context = cast(av.AudioCodecContext, av.CodecContext.create(codec_name, mode))
    context.sample_rate = rate
    context.layout = "mono"
    if mode == "w":
        context.format = "s16"
        if codec_name == "libopus":
            context.bit_rate = OPUS_BIT_RATE
            context.options = {
                "application": OPUS_APPLICATION,
                "frame_duration": str(samples * 1000 // rate),
            }
        else:
            context.options = {"frame_size": str(samples)}
    context.open()
    return context


def _per_frame_us(step: Callable[[int, int], object]) -> float:
    """Best of three runs of STATEFUL_TICKS ticks over STATEFUL_LEGS legs, per frame."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for tick in range(STATEFUL_TICKS):
            for leg in range(STATEFUL_LEGS):
                step(leg, tick)
        best = min(best, time.perf_counter() - start)
    return best / (STATEFUL_LEGS * STATEFUL_TICKS) * 1e6


def _stateful_rows(key: str, codec_name: str) -> None:
    codec = get_codec(key)
    rate = codec.info.sample_rate
    samples = codec.info.samples_per_frame(TICK_MS)
    signal = _speechlike(rate, 1.0, seed=5)
    frames = signal[: signal.size // samples * samples].reshape(-1, samples)

    # Leg and tick pick the frame, so neighbouring legs code different audio.
    def pick(leg: int, tick: int) -> int:
        return (leg + tick) % len(frames)

    encoders = [codec.new_encoder(TICK_MS) for _ in range(STATEFUL_LEGS)]
    raw_encoders = [_raw_pyav_context(codec_name, "w", rate, samples) for _ in encoders]
    pts = [0] * STATEFUL_LEGS

    def raw_encode(leg: int, tick: int) -> object:
        frame = av.AudioFrame.from_ndarray(
            frames[pick(leg, tick)].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        frame.pts = pts[leg]
        pts[leg] += samples
        return raw_encoders[leg].encode(frame)

    def ours_encode(leg: int, tick: int) -> object:
        return encoders[leg].encode(frames[pick(leg, tick)])

    payloads = [encoders[0].encode(frame) for frame in frames]
    decoders = [codec.new_decoder() for _ in range(STATEFUL_LEGS)]
    raw_decoders = [_raw_pyav_context(codec_name, "r", rate, samples) for _ in decoders]

    def raw_decode(leg: int, tick: int) -> object:
        packet = av.Packet(payloads[pick(leg, tick)])
        return [frame.to_ndarray() for frame in raw_decoders[leg].decode(packet)]

    def ours_decode(leg: int, tick: int) -> object:
        return decoders[leg].decode(payloads[pick(leg, tick)])

    for operation, ours, peer in (
        ("encode", ours_encode, raw_encode),
        ("decode", ours_decode, raw_decode),
    ):
        a, b = _per_frame_us(ours), _per_frame_us(peer)
        print(row(f"{key} {operation}", a, b, a / b, a * LEGS / 1000 / TICK_MS))


def _stateful_section() -> None:
    print(
        f"\n== G.722 and Opus through PyAV: one context per leg, {TICK_MS} ms frames "
        f"(measured on {STATEFUL_LEGS} legs) =="
    )
    print("us/frame per leg (= ms per tick at 1000 legs); cores@1000 = that / 20 ms")
    print(row("operation", "ours", "raw PyAV", "ours/peer", "cores@1000"))
    _stateful_rows("G722/8000", "g722")
    _stateful_rows("opus/48000/2", "libopus")


def main() -> None:
    _g711_sections()
    _l16_section()
    _stateful_section()


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"\n(codecs: {time.perf_counter() - start:.1f} s)")
