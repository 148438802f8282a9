"""Bench: what a recording costs inside the engine tick, per format and layout.

Ours: ``Recorder.on_audio`` called once per 20 ms tick (channel layout, silence
bookkeeping, streaming encode into ``.part``), as the engine calls it; the
figure is the mean over 10 s of audio, plus the 99th percentile tick (the
ticks that hand a chunk over cost more than the others), the one-off ``stop``
(flush, rename) and the total CPU per tick of the whole process: MP3 and MP4
are encoded by a background thread (``mediaserver.recording``), so "in tick"
is what the engine waits for and "CPU" what the recording costs in all. Here
the 10 s are fed as fast as possible, so the encoder thread is behind and
``stop`` waits for it; at real time it waits for at most one chunk.

Peer: the same 10 s written in one go after the call, the naive
record-then-encode design: ``wave.writeframes`` for WAV, PyAV given the whole
buffer as one frame (its own frame-size chunking) for MP3 and MP4, with the
same encoder settings. Shown per 20 ms of audio, so ours/peer is the price
of encoding as we go (constant memory, no burst at hangup).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import row

from mediaserver.recording import (
    Recorder,
    RecordingFormat,
    RecordingLayout,
    RecordingOptions,
    SilenceOptions,
)

SECONDS = 10
REPEATS = 5
TICKS = SECONDS * 50


def _audio(rate: int) -> tuple[NDArray[np.int16], NDArray[np.int16]]:
    """Speech-like stand-ins: tones plus noise, so the encoders do real work."""
    rng = np.random.default_rng(7)
    t = np.arange(rate * SECONDS) / rate
    read = 6000 * np.sin(2 * np.pi * 440 * t) + rng.standard_normal(t.size) * 1500
    write = 6000 * np.sin(2 * np.pi * 1000 * t) + rng.standard_normal(t.size) * 1500
    return read.astype(np.int16), write.astype(np.int16)


def _ours(
    directory: Path, options: RecordingOptions, read: NDArray[np.int16], write: NDArray[np.int16]
) -> tuple[float, float, float]:
    """(mean us per tick, 99th percentile tick us, stop ms, CPU us per tick), medians."""
    n = options.sample_rate // 50
    means, worst, stops, cpus = [], [], [], []
    for k in range(REPEATS + 1):
        rec = Recorder(directory / f"ours{k}.{options.format.extension}", options)
        per_tick = []
        cpu0 = time.process_time()
        for i in range(TICKS):
            r, w = read[i * n : (i + 1) * n], write[i * n : (i + 1) * n]
            t0 = time.perf_counter()
            rec.on_audio(r, w)
            per_tick.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rec.stop()
        stop_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0  # every thread of the process
        if k == 0:
            continue  # warm-up: codec tables, first file
        means.append(statistics.fmean(per_tick) * 1e6)
        worst.append(float(np.percentile(per_tick, 99)) * 1e6)
        stops.append(stop_s * 1e3)
        cpus.append(cpu_s / TICKS * 1e6)
    return (
        statistics.median(means),
        statistics.median(worst),
        statistics.median(stops),
        statistics.median(cpus),
    )


def _peer_wav(path: Path, rate: int, planar: NDArray[np.int16]) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(planar.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(planar.T).astype("<i2").tobytes())


def _peer_av(path: Path, fmt: RecordingFormat, rate: int, planar: NDArray[np.int16]) -> None:
    codec, sample_format, options = (
        ("libmp3lame", "s16p", {"compression_level": "7"})
        if fmt is RecordingFormat.MP3
        else ("aac", "fltp", {"aac_coder": "fast"})
    )
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=fmt.value) as container:
        stream: Any = container.add_stream(codec, rate=rate, layout=layout)
        stream.codec_context.format = sample_format
        stream.codec_context.bit_rate = 16000 * rate // 8000 * planar.shape[0]
        stream.codec_context.options = options
        data: NDArray[Any] = (
            planar.astype(np.float32) / 32768 if sample_format == "fltp" else planar
        )
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(data), format=sample_format, layout=layout
        )
        frame.sample_rate = rate
        frame.time_base = Fraction(1, rate)
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _peer(
    directory: Path, options: RecordingOptions, read: NDArray[np.int16], write: NDArray[np.int16]
) -> float:
    """us per 20 ms of audio, writing the whole file at once."""
    layout = options.layout
    planar = (
        np.stack([read, write])
        if layout is RecordingLayout.STEREO
        else (read if layout is RecordingLayout.SPEAK else write)[None, :]
    )
    path = directory / f"peer.{options.format.extension}"
    run: Callable[[], None] = (
        (lambda: _peer_wav(path, options.sample_rate, planar))
        if options.format is RecordingFormat.WAV
        else (lambda: _peer_av(path, options.format, options.sample_rate, planar))
    )
    run()
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / TICKS * 1e6


def main() -> None:
    timers = SilenceOptions(initial_timeout_ms=10**9, final_timeout_ms=10**9)
    cases = [
        ("wav 8k mono", RecordingFormat.WAV, 8000, RecordingLayout.SPEAK, None),
        ("wav 8k mono, silence timers", RecordingFormat.WAV, 8000, RecordingLayout.SPEAK, timers),
        ("wav 16k stereo", RecordingFormat.WAV, 16000, RecordingLayout.STEREO, None),
        ("mp3 8k mono", RecordingFormat.MP3, 8000, RecordingLayout.SPEAK, None),
        ("mp3 16k stereo", RecordingFormat.MP3, 16000, RecordingLayout.STEREO, None),
        ("mp4 8k mono", RecordingFormat.MP4, 8000, RecordingLayout.SPEAK, None),
        ("mp4 16k stereo", RecordingFormat.MP4, 16000, RecordingLayout.STEREO, None),
    ]
    widths = (30, 11, 11, 11, 9, 11, 9)
    print(f"== recording: cost per 20 ms tick, {SECONDS} s of audio (us) ==")
    print("peer: the whole file written at once after the call (wave / PyAV, same settings)")
    print(row("case", "in tick", "CPU", "peer", "CPU/peer", "tick p99", "stop ms", widths=widths))
    with tempfile.TemporaryDirectory(prefix="bench-recording-") as tmp:
        directory = Path(tmp)
        audio = {rate: _audio(rate) for rate in (8000, 16000)}
        for name, fmt, rate, layout, silence in cases:
            options = RecordingOptions(format=fmt, layout=layout, sample_rate=rate, silence=silence)
            read, write = audio[rate]
            mean, worst, stop_ms, cpu = _ours(directory, options, read, write)
            peer = _peer(directory, options, read, write)
            ratio = f"{cpu / peer:.2f}x"
            print(row(name, mean, cpu, peer, ratio, worst, stop_ms, widths=widths))
    print()


if __name__ == "__main__":
    main()
