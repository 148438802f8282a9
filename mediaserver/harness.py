"""``mediaserver call``: scripted calls without SIP equipment, and their Python API.

Owns turning a call script (caller audio, what the caller hears, key
presses, codec, ptime) into RTP packets and feeding them through the **same
receive path as a SIP call** (``Leg.receive_datagram``: jitter buffer,
decode, engine), in lock-step with the engine's media clock, which runs
``speed`` times real time. The app's verbs run exactly as in ``serve``.
The caller hangs up when its audio ends, unless the app ends the call first.

Sources (``--caller``/``--callee``): any audio file PyAV can read,
``tone:FREQ[:SECONDS]`` (default 5 s) or ``silence:SECONDS``.
Key presses: ``"1@2.5,#@4"`` (key @ seconds), sent as RFC 4733 events in the
caller's RTP or mixed in-band as DTMF tones.

Python API for receiver developers' own tests::

    from mediaserver.harness import run_call
    result = await run_call([{"verb": "listen", "url": "ws://127.0.0.1:8080/"}],
                            caller="tone:440:3", speed=10)
    result.reason, result.frames_sent, result.hook_payloads
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsp.codecs import get_codec
from dsp.tones import dtmf_tone, tone
from mediaserver.app import Application
from mediaserver.audio_decode import AudioDecodeError, decode_audio, resample_whole
from mediaserver.call import Call
from mediaserver.engine import EngineClock, Leg, MediaEngine
from mediaserver.record import RecordingService
from mediaserver.recording_delivery import RecordingStore
from rtp.packet import build_packet
from rtp.telephone_event import encode_key_press

__all__ = [
    "CODECS",
    "CallResult",
    "CallScript",
    "HarnessError",
    "load_source",
    "parse_dtmf",
    "run_call",
    "run_calls",
]

# --codec name -> (codec registry key, RTP payload type)
CODECS: dict[str, tuple[str, int]] = {
    "PCMU": ("PCMU/8000", 0),
    "PCMA": ("PCMA/8000", 8),
    "G722": ("G722/8000", 9),
    "OPUS": ("opus/48000/2", 111),
    "L16": ("L16/16000", 96),
}
TELEPHONE_EVENT_PT = 101
_KEYS = set("0123456789*#ABCD")
_KEY_SECONDS = 0.1  # each scripted key press lasts 100 ms


class HarnessError(ValueError):
    """A bad call script; the message names the option."""


def parse_dtmf(spec: str | None) -> list[tuple[str, float]]:
    """``"1@2.5,#@4"`` -> ``[("1", 2.5), ("#", 4.0)]``."""
    if not spec:
        return []
    presses = []
    for item in spec.split(","):
        key, sep, at = item.strip().partition("@")
        if not sep or key not in _KEYS:
            raise HarnessError(f"--dtmf: expected KEY@SECONDS with KEY in 0-9*#A-D, got {item!r}")
        try:
            seconds = float(at)
        except ValueError:
            raise HarnessError(f"--dtmf: {at!r} is not a number of seconds") from None
        if seconds < 0:
            raise HarnessError(f"--dtmf: {item!r} is before the call starts")
        presses.append((key, seconds))
    return sorted(presses, key=lambda p: p[1])


def load_source(spec: str, rate: int, what: str = "--caller") -> NDArray[np.int16]:
    """Mono int16 PCM at ``rate`` for a source spec (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "tone" and rest:
        freq, _, secs = rest.partition(":")
        try:
            f, s = float(freq), float(secs or 5.0)
        except ValueError:
            raise HarnessError(f"{what}: expected tone:FREQ[:SECONDS], got {spec!r}") from None
        if not (0 < f < rate / 2 and s > 0):
            raise HarnessError(f"{what}: tone frequency/duration out of range in {spec!r}")
        return tone(f, s, level_dbfs=-12.0, rate=rate)
    if kind == "silence" and rest:
        try:
            quiet = float(rest)
        except ValueError:
            raise HarnessError(f"{what}: expected silence:SECONDS, got {spec!r}") from None
        return np.zeros(round(quiet * rate), np.int16)
    path = Path(spec)
    if not path.is_file():
        raise HarnessError(f"{what}: no such file {spec!r} (or use tone:FREQ[:S], silence:S)")
    try:
        pcm, source_rate = decode_audio(path.read_bytes())
    except OSError as exc:
        raise HarnessError(f"{what}: cannot read {spec!r}: {exc.strerror or exc}") from None
    except AudioDecodeError as exc:
        raise HarnessError(f"{what}: cannot read audio from {spec!r}: {exc}") from None
    if not pcm.size:
        raise HarnessError(f"{what}: no audio in {spec!r}")
    return resample_whole(pcm, source_rate, rate)


class _PcmQueue:
    """What the caller hears from the 'callee': read n samples, zeros after the end."""

    def __init__(self, pcm: NDArray[np.int16]) -> None:
        self.pcm = pcm
        self.pos = 0

    def read(self, n: int) -> NDArray[np.int16]:
        out = np.zeros(n, np.int16)
        chunk = self.pcm[self.pos : self.pos + n]
        out[: chunk.size] = chunk
        self.pos += n
        return out


@dataclass
class CallScript:
    caller: str = "tone:440:5"
    callee: str | None = None
    dtmf: str | None = None
    dtmf_mode: str = "rfc4733"  # or "inband"
    codec: str = "PCMU"
    ptime: int = 20

    def check(self) -> None:
        if self.codec.upper() not in CODECS:
            raise HarnessError(f"--codec: choose from {', '.join(CODECS)}, got {self.codec!r}")
        if self.dtmf_mode not in ("rfc4733", "inband"):
            raise HarnessError(f"--dtmf-mode: rfc4733 or inband, got {self.dtmf_mode!r}")
        if self.ptime % 10 or not 10 <= self.ptime <= 60:
            raise HarnessError(f"--ptime: 10, 20, 30, 40, 50 or 60 ms, got {self.ptime}")


@dataclass
class CallResult:
    call_sid: str
    reason: str
    duration: float
    digits: str
    frames_sent: int
    frames_dropped: int
    hook_payloads: list[dict[str, Any]] = field(default_factory=list)
    listens: list[dict[str, Any]] = field(default_factory=list)
    recordings: list[dict[str, Any]] = field(default_factory=list)  # record_call results
    variables: dict[str, Any] = field(default_factory=dict)  # record_call_url, ...

    def summary(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "reason": self.reason,
            "duration": round(self.duration, 3),
            "digits": self.digits,
            "frames_sent": self.frames_sent,
            "frames_dropped": self.frames_dropped,
        }


class _NoSignalling:
    """A simulated call has no SIP: answering and hanging up only change state."""

    def answer(self, call: Call, sdp: bytes) -> None:
        pass

    def reject(self, call: Call, status: int, reason: str | None = None) -> None:
        pass

    def hangup(self, call: Call) -> None:
        pass


class _SimulatedCaller:
    """One scripted caller: its RTP packets, fed to a leg by media time."""

    def __init__(self, script: CallScript) -> None:
        script.check()
        key, pt = CODECS[script.codec.upper()]
        self.codec = get_codec(key)
        info = self.codec.info
        self.payload_type = pt
        self.ptime = script.ptime
        audio = load_source(script.caller, info.sample_rate, "--caller")
        self.callee = (
            load_source(script.callee, info.sample_rate, "--callee") if script.callee else None
        )
        presses = parse_dtmf(script.dtmf)
        if script.dtmf_mode == "inband":
            audio = audio.astype(np.int32)
            for digit, at in presses:
                start = round(at * info.sample_rate)
                burst = dtmf_tone(digit, _KEY_SECONDS, -8.0, info.sample_rate).astype(np.int32)
                end = start + burst.size
                if end > audio.size:
                    audio = np.pad(audio, (0, end - audio.size))
                audio[start:end] += burst
            audio = np.clip(audio, -32768, 32767).astype(np.int16)
        try:
            encoder = self.codec.new_encoder(script.ptime)
        except ValueError as exc:
            raise HarnessError(f"--ptime: {exc}") from None
        n = info.samples_per_frame(script.ptime)
        step = info.timestamp_increment(script.ptime)
        ssrc = int.from_bytes(uuid.uuid4().bytes[:4], "big")
        packets: list[tuple[float, bytes]] = []
        frames = -(-audio.size // n)
        audio = np.pad(audio, (0, frames * n - audio.size))
        for i in range(frames):
            body = encoder.encode(audio[i * n : (i + 1) * n])
            pkt = build_packet(pt, i == 0, i & 0xFFFF, (i * step) & 0xFFFFFFFF, ssrc, body)
            packets.append((i * script.ptime / 1000, pkt))
        if script.dtmf_mode == "rfc4733":
            seq = frames
            event_step = info.timestamp_increment(20)
            for digit, at in presses:
                ts = round(at * info.clock_rate)
                units = round(_KEY_SECONDS * info.clock_rate)
                for j, e in enumerate(encode_key_press(digit, ts, units, ptime_samples=event_step)):
                    body = build_packet(
                        TELEPHONE_EVENT_PT, e.marker, seq & 0xFFFF, e.timestamp, ssrc, e.payload
                    )
                    packets.append((at + j * 0.02, body))
                    seq += 1
        packets.sort(key=lambda p: p[0])
        self.packets = packets
        self.audio_seconds = frames * script.ptime / 1000
        self._next = 0

    def feed(self, leg: Leg, now: float) -> bool:
        """Deliver the packets due by ``now``; True once the caller's audio is over."""
        packets = self.packets
        while self._next < len(packets) and packets[self._next][0] <= now:
            leg.receive_datagram(packets[self._next][1], now)
            self._next += 1
        return self._next >= len(packets) and now >= self.audio_seconds


def _app_for(app: str | Sequence[dict[str, Any]] | Application) -> Application:
    if isinstance(app, Application):
        return app
    if isinstance(app, str):
        if app.startswith(("ws://", "wss://")):  # a receiver URL: fork the call to it
            return Application.from_verbs([{"verb": "listen", "url": app}])
        return Application(app)
    return Application.from_verbs(list(app))


async def _run_one(
    app: Application,
    script: CallScript,
    engine: MediaEngine,
    clock: EngineClock,
    *,
    listen_buffer: float = 3.0,
    verify_tls: bool = True,
    caller: _SimulatedCaller | None = None,
    recordings: RecordingService | None = None,
) -> CallResult:
    sim = caller or _SimulatedCaller(script)
    call_sid = str(uuid.uuid4())
    attributes: dict[str, Any] = {
        "callSid": call_sid,
        "direction": "inbound",
        "from": "caller",
        "to": "callee",
        "callId": f"{call_sid}@mediaserver-call",
        "sipStatus": 100,
        "callStatus": "trying",
        "callerId": "caller",
        "originatingSipIp": "127.0.0.1",
        "traceId": uuid.uuid4().hex,
    }
    call = Call(
        attributes=attributes,
        media=None,
        engine=engine,
        clock=clock,
        app=app,
        signalling=_NoSignalling(),
        listen_buffer=listen_buffer,
        verify_tls=verify_tls,
        recordings=recordings,
    )
    leg = Leg(
        call_sid=call_sid,
        codec=sim.codec.info.key,
        payload_type=sim.payload_type,
        ptime_ms=sim.ptime,
        telephone_event_pt=TELEPHONE_EVENT_PT,
    )
    leg.dtmf_handlers.append(call._on_dtmf)
    if sim.callee is not None:
        leg.heard = _PcmQueue(sim.callee)
    engine.add_leg(leg)
    call.leg = leg
    loop = asyncio.get_running_loop()
    started = clock.now()
    over = asyncio.Event()

    def feeder(now: float) -> None:
        if sim.feed(leg, now - started) and not over.is_set():
            over.set()  # the caller's audio ended: it hangs up (outside the tick)

    engine.feeders.append(feeder)
    call.task = loop.create_task(call.run(b""))
    waiter = loop.create_task(over.wait())
    try:
        await asyncio.wait({call.task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if call.end_reason is None:
            call.end("hangup")  # the caller hung up; listen still posts its actionHook
        with contextlib.suppress(asyncio.CancelledError):
            await call.task
    finally:
        waiter.cancel()
        engine.feeders.remove(feeder)
        if call.end_reason is None:
            call.end("error")
    results = call.listen_results
    recorded = []
    if call.recordings is not None:
        for run, rec in zip(call.recordings.runs, await call.recordings.wait(), strict=True):
            recorded.append(
                {
                    "dialect": run.dialect,
                    "control_id": run.control_id or None,
                    "cause": rec.cause.value,
                    "kept": rec.kept,
                    "path": str(rec.file.path),
                    "duration_ms": rec.file.duration_ms,
                    "url": run.url or None,
                }
            )
    return CallResult(
        call_sid=call_sid,
        reason=call.end_reason or "error",
        duration=clock.now() - started,
        digits="".join(k.digit for k in call.digits),
        frames_sent=sum(r.frames_sent for r in results),
        frames_dropped=sum(r.frames_dropped for r in results),
        hook_payloads=call.hook_payloads,
        listens=[asdict(r) for r in results],
        recordings=recorded,
        variables=dict(call.variables),
    )


async def run_calls(
    app: str | Sequence[dict[str, Any]] | Application,
    script: CallScript,
    *,
    calls: int = 1,
    speed: float = 1.0,
    listen_buffer: float = 3.0,
    verify_tls: bool = True,
    recording_store: RecordingStore | None = None,
) -> list[CallResult]:
    """Run ``calls`` copies of ``script`` at once on one engine; return their results.

    Recordings (``record_call``) go where ``recording_store`` says (default:
    ``./recordings``, created only when something records); Kazoo uploads
    are waited for before this returns (a failed one stays in the spool).
    """
    if calls < 1:
        raise HarnessError(f"--calls: must be >= 1, got {calls}")
    if speed <= 0:
        raise HarnessError(f"--speed: must be > 0, got {speed}")
    application = _app_for(app)
    callers = [_SimulatedCaller(script) for _ in range(calls)]  # errors before any call
    engine = MediaEngine(capacity=max(2, calls * 2))
    engine.warm_up()
    clock = EngineClock(engine, speed=speed)
    service = RecordingService(recording_store)
    clock.start()
    try:
        return list(
            await asyncio.gather(
                *(
                    _run_one(
                        application,
                        script,
                        engine,
                        clock,
                        listen_buffer=listen_buffer,
                        verify_tls=verify_tls,
                        caller=c,
                        recordings=service,
                    )
                    for c in callers
                )
            )
        )
    finally:
        clock.stop()
        while service.deliveries:  # each ends by itself: its retry schedule is bounded
            await asyncio.gather(*list(service.deliveries), return_exceptions=True)


async def run_call(
    app: str | Sequence[dict[str, Any]] | Application,
    *,
    caller: str = "tone:440:5",
    callee: str | None = None,
    dtmf: str | None = None,
    dtmf_mode: str = "rfc4733",
    codec: str = "PCMU",
    ptime: int = 20,
    speed: float = 1.0,
    recording_store: RecordingStore | None = None,
) -> CallResult:
    """Run one scripted call against ``app`` (verbs, a JSON file, an app URL or a ws:// URL)."""
    script = CallScript(caller, callee, dtmf, dtmf_mode, codec, ptime)
    (result,) = await run_calls(app, script, calls=1, speed=speed, recording_store=recording_store)
    return result


@contextlib.asynccontextmanager
async def scripted_call(
    app: str | Sequence[dict[str, Any]] | Application, **kwargs: Any
) -> AsyncIterator[asyncio.Task[CallResult]]:
    """Start a scripted call in the background; ``await`` the yielded task for its result.

    On exit the call is awaited (or cancelled if the block raised).
    """
    task = asyncio.create_task(run_call(app, **kwargs))
    try:
        yield task
        await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
