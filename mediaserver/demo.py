"""``mediaserver demo``: a demo call into the reference receiver, and the DSP demo.

``run_call_demo`` (the default): starts the reference receiver, places one
scripted call (speech-like caller audio with three key presses, a tone as
what the caller hears) whose app forks it with ``listen`` (stereo, 16 kHz,
passDtmf), and prints what the receiver got and where its WAV landed.

``run_demo`` (``--dsp``): the receive and DSP path on a batch of generated calls.

Each call's caller sends a speech-like signal with DTMF key presses and then
goes quiet; the callee side is a tone (what the caller hears). The caller's
audio is encoded to PCMU, packetised as RTP (20 ms, with one packet dropped
and one pair swapped per call to exercise the jitter buffer), parsed back,
played out by a jitter buffer per leg, and then processed tick by tick *as
one batch*: G.711 decode, 8 kHz -> 16 kHz resampling, in-band DTMF and
silence detection, stereo mix. It reports what it found per call and writes
each call as a 16 kHz stereo WAV (left caller, right what the caller hears),
as a ``listen`` fork with ``mixType: stereo`` would deliver it.

Runs in simulated media time (as fast as the machine goes), so it finishes
in about a second. Exit status 0 when every call's key presses and silence
were detected as sent, 1 otherwise.
"""

from __future__ import annotations

import uuid
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from dsp.codecs import get_codec
from dsp.dtmf import DtmfDetector, KeyUp
from dsp.mix import mix
from dsp.resample import Resampler, to_int16
from dsp.silence import SilenceDetector, SilenceExpiry
from dsp.tones import render_digits, tone
from mediaserver.logs import call_logger
from rtp.jitter import FrameStatus, JitterBuffer
from rtp.packet import build_packet, parse_header

__all__ = ["run_demo"]

RATE = 8000
OUT_RATE = 16000
TICK_S = 0.02
FRAME = RATE * 20 // 1000
SILENCE_TIMEOUT_MS = 1000
DIGIT_SETS = ("123", "#0*", "4567", "89AB", "C#D1", "2580", "*9", "741")


@dataclass
class DemoCall:
    index: int
    call_sid: str
    digits_sent: str
    caller: NDArray[np.int16]
    callee: NDArray[np.int16]
    speech_end_s: float
    digits_heard: str = ""
    silence_at_s: float | None = None
    frames: list[NDArray[np.int16]] = field(default_factory=list)
    jitter: JitterBuffer = field(
        default_factory=lambda: JitterBuffer(
            clock_rate=RATE, frame_units=FRAME, bytes_per_unit=1, fill=b"\xff"
        )
    )


def _speech_like(seconds: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """Syllable-rate bursts of a wandering harmonic voice: loud, varied, not DTMF."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    noise = rng.standard_normal(n) * 0.05
    out: NDArray[np.float64] = (voice * syllables + noise) * 2500
    return out


def _make_call(index: int, seconds: float, rng: np.random.Generator) -> DemoCall:
    digits = DIGIT_SETS[index % len(DIGIT_SETS)]
    speech_s = max(1.0, seconds - SILENCE_TIMEOUT_MS / 1000 - 1.5)
    n = int(seconds * RATE)
    caller = np.zeros(n)
    talk = _speech_like(speech_s * 0.5, rng)
    caller[: talk.size] += talk
    key_start = speech_s * 0.5 + 0.2
    placements = [(d, key_start + 0.15 * i, 0.08) for i, d in enumerate(digits)]
    keys = render_digits(placements, RATE, total_seconds=speech_s).astype(np.float64)
    caller[: keys.size] += keys
    tail = _speech_like(speech_s - (key_start + 0.15 * len(digits)), rng)
    start = int((key_start + 0.15 * len(digits)) * RATE)
    caller[start : start + tail.size] += tail
    callee = tone(440.0 + 110 * index, seconds, level_dbfs=-20.0, rate=RATE)
    return DemoCall(
        index=index,
        call_sid=str(uuid.uuid4()),
        digits_sent=digits,
        caller=np.clip(caller, -32768, 32767).astype(np.int16)[:n],
        callee=callee[:n],
        speech_end_s=speech_s,
    )


def _network(call: DemoCall) -> list[list[bytes]]:
    """The caller's RTP datagrams per tick, with one loss and one reordering."""
    pcmu = get_codec("PCMU/8000")
    assert pcmu.batch is not None
    ticks = call.caller.size // FRAME
    payloads = pcmu.batch.encode_batch(call.caller[: ticks * FRAME].reshape(ticks, FRAME))
    ssrc = 0x5EED0000 + call.index
    packets = [
        build_packet(0, i == 0, (1000 + i) & 0xFFFF, 160 * i, ssrc, payloads[i].tobytes())
        for i in range(ticks)
    ]
    schedule: list[list[bytes]] = [[p] for p in packets]
    lost = 30 + 7 * call.index
    if lost < ticks:
        schedule[lost] = []
    if lost + 20 < ticks - 1:
        a = lost + 20
        schedule[a], schedule[a + 1] = schedule[a + 1], schedule[a]
    return schedule


def _write_wav(path: Path, stereo: NDArray[np.int16]) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(OUT_RATE)
        w.writeframes(stereo.astype("<i2").tobytes())


def run_demo(out_dir: str = "out", seconds: float = 6.0, calls: int = 4) -> int:
    if calls < 1 or seconds < 3.0:
        raise SystemExit("mediaserver demo: need --calls >= 1 and --seconds >= 3")
    rng = np.random.default_rng(2026)
    batch = [_make_call(i, seconds, rng) for i in range(calls)]
    logs = [call_logger(c.call_sid, call=c.index) for c in batch]
    schedules = [_network(c) for c in batch]
    ticks = min(len(s) for s in schedules)

    pcmu = get_codec("PCMU/8000")
    assert pcmu.batch is not None
    up_caller = Resampler(calls, RATE, OUT_RATE)
    up_callee = Resampler(calls, RATE, OUT_RATE)
    dtmf = DtmfDetector(calls, RATE)
    silence = SilenceDetector(calls, RATE)
    silence.configure(np.arange(calls), final_timeout_ms=SILENCE_TIMEOUT_MS)
    for c, log in zip(batch, logs, strict=True):
        log.info("demo.call.start", digits=c.digits_sent, seconds=seconds)

    payloads = np.empty((calls, FRAME), dtype=np.uint8)
    filled = 0
    for t in range(ticks):
        now = t * TICK_S
        for c, sched in zip(batch, schedules, strict=True):  # network receive: per packet
            for datagram in sched[t]:
                _pt, marker, seq, ts, ssrc, lo, hi = parse_header(datagram)
                c.jitter.push(ssrc, seq, ts, marker, datagram[lo:hi], now)
        lost = np.zeros(calls, dtype=np.bool_)
        for i, c in enumerate(batch):  # playout: exactly one frame per leg per tick
            frame = c.jitter.pop(now)
            payloads[i] = np.frombuffer(frame.payload, dtype=np.uint8)
            lost[i] = frame.status is FrameStatus.LOST
        read = pcmu.batch.decode_batch(payloads)  # one call for every leg
        filled += int(lost.sum())
        for event in dtmf.process(read):
            if isinstance(event, KeyUp):
                batch[event.slot].digits_heard += event.digit
                logs[event.slot].info(
                    "dtmf", digit=event.digit, duration=event.duration_8k, at_s=round(now, 2)
                )
        decisions = silence.process(read)
        for slot in np.flatnonzero(decisions.expiry == SilenceExpiry.SILENCE).tolist():
            batch[slot].silence_at_s = now
            logs[slot].info("silence.timeout", at_s=round(now, 2), timeout_ms=SILENCE_TIMEOUT_MS)
        heard = np.stack([c.callee[t * FRAME : (t + 1) * FRAME] for c in batch])
        left = to_int16(up_caller.process(read))
        right = to_int16(up_callee.process(heard))
        stereo = mix("stereo", left, right)
        for i, c in enumerate(batch):
            c.frames.append(stereo[i])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = True
    print(f"{'call':<5} {'sent':<6} {'detected':<9} {'silence at':>10}  wav")
    for c, log in zip(batch, logs, strict=True):
        path = out / f"demo-call{c.index}.wav"
        _write_wav(path, np.concatenate(c.frames))
        expected_silence = c.speech_end_s + SILENCE_TIMEOUT_MS / 1000
        silence_ok = c.silence_at_s is not None and abs(c.silence_at_s - expected_silence) < 0.3
        good = c.digits_heard == c.digits_sent and silence_ok
        ok &= good
        at = "none" if c.silence_at_s is None else f"{c.silence_at_s:.2f} s"
        print(f"{c.index:<5} {c.digits_sent:<6} {c.digits_heard:<9} {at:>10}  {path}")
        log.info(
            "demo.call.end",
            ok=good,
            rtp=asdict(c.jitter.stats),
            wav=str(path),
        )
    print(
        f"{calls} calls x {ticks * TICK_S:.1f} s processed as one batch per 20 ms tick; "
        f"{filled} lost frames filled with silence; stereo 16 kHz WAVs in {out.resolve()}"
    )
    print("result:", "all key presses and silences detected as sent" if ok else "MISMATCH")
    return 0 if ok else 1


def run_call_demo(out_dir: str = "out", seconds: float = 6.0, speed: float = 4.0) -> int:
    """One scripted call forked to the reference receiver; print where the WAV landed."""
    import asyncio

    from mediaserver.harness import run_call
    from mediaserver.receiver import Receiver

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    caller_wav = out / "demo-caller.wav"
    pcm = np.clip(_speech_like(seconds, np.random.default_rng(7)), -32768, 32767)
    with wave.open(str(caller_wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())

    async def demo() -> int:
        async with Receiver(out / "receiver") as rx:
            app = [
                {
                    "verb": "listen",
                    "url": rx.url,
                    "mixType": "stereo",
                    "sampleRate": 16000,
                    "passDtmf": True,
                    "metadata": {"demo": True},
                }
            ]
            result = await run_call(
                app,
                caller=str(caller_wav),
                callee=f"tone:440:{seconds}",
                dtmf="1@1.5,2@2.5,#@3.5",
                speed=speed,
            )
            (got,) = await rx.wait_for_calls(1, timeout=10)
        keys = "".join(f["dtmf"] for f in got.frames_of("dtmf"))
        print(f"call {result.call_sid}: {result.reason} after {result.duration:.1f} s of media")
        print(
            f"receiver got {got.seconds:.2f} s of {got.sample_rate} Hz "
            f"{'stereo' if got.channels == 2 else 'mono'} audio in {got.frames} frames, "
            f"dtmf {keys or '-'}, {len(got.violations)} protocol violations, "
            f"closed with {got.close_code}"
        )
        print(f"WAV:      {got.wav_path.resolve()}")
        print(f"metadata: {got.json_path.resolve()}")
        print(f"events:   {got.events_path.resolve()}")
        ok = keys == "12#" and got.close_code == 1000 and not got.violations
        return 0 if ok else 1

    return asyncio.run(demo())
