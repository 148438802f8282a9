"""The ``listen`` verb: fork a call's audio to a WebSocket, as jambonz does.

Owns one run of the verb on one leg: the optional beep to the caller, the
connection (``mediaserver.fork``), the first JSON text frame (sampleRate,
mixType, the call attributes, then ``metadata`` merged last), one binary
L16 little-endian frame per 20 ms tick in the chosen mix, the ways the verb
ends (maxLength, silence timeout, finishOnKey, hangup, far-end close,
``disconnect``, connect failure), ``passDtmf`` text frames, and the
bidirectional messages (playAudio with a queue of 10, playDone, killAudio,
streaming playback with marks, clearMarks). Long playAudio clips are decoded
in a worker thread, and the messages after one wait for it, so the far end's
order holds and the ticks never stall. Bad messages get an error text
frame and a log line; they never end the call. The socket is always closed
with 1000 when the verb ends.

The result (reason, duration, digits, frames sent/dropped) goes to the
actionHook; ``mediaserver.call`` sends it and runs whatever verbs it returns.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsp.mix import MixType
from dsp.resample import Resampler, to_int16
from dsp.silence import SilenceExpiry
from dsp.tones import beep
from mediaserver.audio_decode import AudioDecodeError, decode_audio, resample_whole
from mediaserver.engine import DtmfKey, EngineClock, Leg, MediaEngine
from mediaserver.fork import ForkConnectError, WebSocketFork
from mediaserver.hooks import safe_url
from mediaserver.listen_options import BIDIRECTIONAL_RATES, ListenOptions

__all__ = ["ListenResult", "ListenRun", "decode_play_audio"]

MAX_QUEUED_PLAYS = 10
MAX_MARKS = 30
INLINE_DECODE_CHARS = 256 * 1024
"""playAudio content up to this many base64 characters (~2 s of 48 kHz L16) is
decoded on the event loop (~2 ms at most); larger clips in a worker thread."""
MAX_WAITING_MESSAGES = 1000
MAX_WAITING_BYTES = 64 * 1024 * 1024
"""Bounds on the far end's messages held while a playAudio decodes (two of the
largest messages the fork accepts); past them a message is dropped with an error."""
SMALL_MESSAGE_BYTES = 4096
"""Messages this small (killAudio, disconnect, marks) are held whatever the bytes waiting."""


@dataclass
class ListenResult:
    reason: str  # maxLength, timeout, finishOnKey, hangup, disconnect, ws-closed, connect-failed
    duration: float = 0.0  # seconds of forked audio (media time)
    digits: str | None = None
    frames_sent: int = 0
    frames_dropped: int = 0
    error: str | None = None

    def hook_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "reason": self.reason,
            "duration": round(self.duration, 3),
            "dial_call_duration": int(self.duration),
            "frames_sent": self.frames_sent,
            "frames_dropped": self.frames_dropped,
        }
        if self.digits is not None:
            fields["digits"] = self.digits
        if self.error is not None:
            fields["error"] = self.error
        return fields


class PlayAudioError(ValueError):
    """A playAudio message the fork cannot play; the message says why."""


def decode_play_audio(data: Any, leg_rate: int) -> NDArray[np.int16]:
    """The PCM (mono, at ``leg_rate``) of a playAudio ``data`` object."""
    if not isinstance(data, dict):
        raise PlayAudioError("playAudio: data must be an object")
    content = data.get("audioContent")
    if not isinstance(content, str) or not content:
        raise PlayAudioError("playAudio: data.audioContent must be a base64 string")
    try:
        raw = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise PlayAudioError("playAudio: data.audioContent is not valid base64") from None
    kind = str(data.get("audioContentType", "raw")).lower()
    if kind in ("wav", "wave"):
        try:
            frames, rate = decode_audio(raw, wav_only=True)
        except AudioDecodeError as exc:
            raise PlayAudioError(f"playAudio: {exc}") from None
    elif kind == "raw":
        try:
            rate = int(data.get("sampleRate", 8000))
        except (TypeError, ValueError):
            rate = -1
        if rate not in BIDIRECTIONAL_RATES:
            allowed = ", ".join(str(r) for r in BIDIRECTIONAL_RATES)
            got = data.get("sampleRate")
            raise PlayAudioError(
                f"playAudio: data.sampleRate must be one of {allowed}, got {got!r}"
            )
        frames = np.frombuffer(raw[: len(raw) // 2 * 2], "<i2")
    else:
        raise PlayAudioError(
            f"playAudio: data.audioContentType must be raw, wav or wave, got {kind!r}"
        )
    return resample_whole(frames.astype(np.int16), rate, leg_rate)


@dataclass
class _Mark:
    name: str
    cleared: bool = False


@dataclass
class _ForkSink:
    """The engine's FrameListener for one fork: each tick's mixed frame -> one message."""

    sample_rate: int
    mix_type: MixType
    fork: WebSocketFork
    max_ticks: int | None = None  # maxLength, counted in media ticks: exact at any speed
    on_max_length: Callable[[], None] | None = None
    ticks: int = 0
    active: bool = True

    def on_frame(self, data: bytes) -> None:
        if not self.active:
            return
        self.ticks += 1
        self.fork.send_audio(data)
        if self.max_ticks is not None and self.ticks >= self.max_ticks and self.on_max_length:
            self.on_max_length()


@dataclass
class ListenRun:
    """One run of ``listen`` on ``leg``; ``await run()`` returns the result."""

    options: ListenOptions
    leg: Leg
    engine: MediaEngine
    clock: EngineClock
    attributes: dict[str, Any]
    log: Any
    buffer_seconds: float = 3.0
    verify_tls: bool = True
    # The result lives here, not in a future: cancelling the task (hangup) cancels
    # whatever it awaits, and the result must survive that.
    _result: ListenResult | None = None
    _ended: asyncio.Event = field(default_factory=asyncio.Event)
    _fork: WebSocketFork | None = None
    _sink: _ForkSink | None = None
    _plays: list[int] = field(default_factory=list)  # ids of our queued playback items
    _marks: list[_Mark] = field(default_factory=list)
    _stream_rs: Resampler | None = None
    _stream_carry: bytes = b""
    _started_at: float = 0.0
    _next_play: int = 0
    # Messages from the far end wait here, in order, behind a playAudio being
    # decoded in a worker thread; empty when nothing is being decoded.
    _waiting: list[asyncio.Task[None]] = field(default_factory=list)
    _waiting_bytes: int = 0

    async def run(self) -> ListenResult:
        loop = asyncio.get_running_loop()
        opts = self.options
        try:
            if opts.play_beep:  # to the caller, before the fork starts: not in the fork
                played: asyncio.Future[None] = loop.create_future()

                def beeped() -> None:
                    if not played.done():
                        played.set_result(None)

                self.leg.playback.enqueue(beep(self.leg.sample_rate), on_done=beeped)
                await played
            channels = 2 if opts.mix_type == "stereo" else 1
            try:
                self._fork = await WebSocketFork.connect(
                    opts.url,
                    username=opts.ws_username,
                    password=opts.ws_password,
                    max_buffer_bytes=int(self.buffer_seconds * opts.sample_rate * 2 * channels),
                    verify_tls=self.verify_tls,
                )
            except ForkConnectError as exc:
                self.log.warning("listen.connect_failed", url=safe_url(opts.url), error=str(exc))
                self._result = ListenResult("connect-failed", error=str(exc))
                return self._result
            fork = self._fork
            fork.on_text = self._on_text
            fork.on_binary = self._on_binary
            fork.on_closed = lambda code, reason: self._finish("ws-closed")
            first = {"sampleRate": opts.sample_rate, "mixType": opts.mix_type}
            first.update(self.attributes)
            first.update(opts.metadata)
            fork.send_text(json.dumps(first))
            self.log.info(
                "listen.start",
                url=safe_url(opts.url),
                subprotocol=fork.subprotocol,
                mix_type=opts.mix_type,
                sample_rate=opts.sample_rate,
            )
            self._started_at = self.clock.now()
            self._sink = _ForkSink(opts.sample_rate, MixType(opts.mix_type), fork)
            if opts.max_length:
                self._sink.max_ticks = max(1, round(opts.max_length / 0.02))
                self._sink.on_max_length = lambda: self._finish("maxLength")
            self.leg.listeners.append(self._sink)
            self.leg.dtmf_handlers.append(self._on_dtmf)
            if opts.timeout:
                ms = int(opts.timeout * 1000)
                self.engine.watch_silence(
                    self.leg, self._on_silence, initial_timeout_ms=ms, final_timeout_ms=ms
                )
            await self._ended.wait()
        except asyncio.CancelledError:
            self._finish("hangup")  # the call ended under us: report it, then clean up
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled: the caller still posts the actionHook
        finally:
            await self._cleanup()
        assert self._result is not None
        return self._result

    # -- ending ------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """End the fork from outside (config with listen.enable false)."""
        self._finish(reason)

    def _finish(self, reason: str, digits: str | None = None) -> None:
        if self._result is not None:
            return
        sink = self._sink
        self._result = ListenResult(
            reason, duration=(sink.ticks if sink is not None else 0) * 0.02, digits=digits
        )
        if sink is not None:
            sink.active = False  # not one more frame after the end
        self._ended.set()

    def _on_silence(self, _leg: Leg, expiry: SilenceExpiry) -> None:
        self._finish("timeout")

    def _on_dtmf(self, _leg: Leg, key: DtmfKey) -> None:
        if not key.ended:
            if key.digit in self.options.finish_on_key:
                self._finish("finishOnKey", digits=key.digit)
            return
        if self.options.pass_dtmf and self._fork is not None:
            self._fork.send_text(
                json.dumps({"event": "dtmf", "dtmf": key.digit, "duration": str(key.duration)})
            )

    async def _cleanup(self) -> None:
        waiting, self._waiting = self._waiting, []
        for task in waiting:
            task.cancel()  # a decode thread runs on; its clip is dropped
        await asyncio.gather(*waiting, return_exceptions=True)
        if self._sink is not None:
            self._sink.active = False
            if self._sink in self.leg.listeners:
                self.leg.listeners.remove(self._sink)
        if self._on_dtmf in self.leg.dtmf_handlers:
            self.leg.dtmf_handlers.remove(self._on_dtmf)
        if self.options.timeout:
            self.engine.unwatch_silence(self.leg)
        if self._fork is not None:
            await self._fork.close(1000)
        result = self._result
        if result is not None and self._fork is not None:
            result.frames_sent = self._fork.frames_sent
            result.frames_dropped = self._fork.frames_dropped
        if result is not None:
            self.log.info(
                "listen.end",
                reason=result.reason,
                duration=result.duration,
                frames_sent=result.frames_sent,
                frames_dropped=result.frames_dropped,
            )

    # -- what the far end sends --------------------------------------------------------

    def _error(self, message: str) -> None:
        self.log.warning("listen.bad_message", error=message)
        if self._fork is not None:
            self._fork.send_text(json.dumps({"type": "error", "error": message}))

    def _in_order(self, handle: Callable[[], None], size: int) -> None:
        """Run ``handle`` now, or after the messages that wait for a decode if any do.

        What waits is bounded: a message of ``size`` bytes that would take the
        waiting messages past ``MAX_WAITING_MESSAGES`` or (unless it is small,
        like a killAudio or disconnect) past ``MAX_WAITING_BYTES`` is dropped
        with an error frame.
        """
        if not self._waiting:
            handle()
            return
        if len(self._waiting) >= MAX_WAITING_MESSAGES or (
            size > SMALL_MESSAGE_BYTES and self._waiting_bytes + size > MAX_WAITING_BYTES
        ):
            self._error(
                f"message dropped: {len(self._waiting)} messages "
                f"({self._waiting_bytes} bytes) already wait for a playAudio decode"
            )
            return
        self._wait_then(handle, None, size)

    def _wait_then(
        self, handle: Callable[[], None], work: Callable[[], Any] | None, size: int
    ) -> None:
        """Queue behind what waits: ``handle()``, after running ``work()`` in a thread if given."""
        before = self._waiting[-1] if self._waiting else None
        self._waiting_bytes += size

        async def later() -> None:
            if before is not None:
                await asyncio.wait([before])
            if work is not None:
                await asyncio.to_thread(work)
            if self._result is None:  # nothing more once the verb has ended
                handle()

        task = asyncio.get_running_loop().create_task(later())
        self._waiting.append(task)

        def done(t: asyncio.Task[None]) -> None:
            self._waiting_bytes -= size
            if t in self._waiting:
                self._waiting.remove(t)
            if not t.cancelled() and t.exception() is not None:
                self.log.error("listen.message_failed", error=repr(t.exception()))

        task.add_done_callback(done)

    def _on_text(self, text: str) -> None:
        self._in_order(lambda: self._handle_text(text), len(text))

    def _handle_text(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            self._error("message is not JSON")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self._error('message must be an object with a "type"')
            return
        kind = msg["type"]
        if kind == "disconnect":
            self._finish("disconnect")
        elif kind == "killAudio":
            self._kill_audio()
        elif kind == "playAudio":
            self._play_audio(msg.get("data"))
        elif kind == "mark":
            self._mark(msg.get("data"))
        elif kind == "clearMarks":
            for mark in self._marks:
                mark.cleared = True
            self._marks.clear()
        else:
            known = "playAudio, killAudio, disconnect, mark, clearMarks"
            self._error(f"unknown type {kind!r}; expected {known}")

    def _bidirectional_refused(self) -> bool:
        if self.options.disable_bidirectional or not self.options.bidirectional:
            self._error("bidirectional audio is disabled for this listen")
            return True
        return False

    def _play_audio(self, data: Any) -> None:
        if self._bidirectional_refused():
            return
        content = data.get("audioContent") if isinstance(data, dict) else None
        if isinstance(content, str) and len(content) > INLINE_DECODE_CHARS:
            outcome: list[NDArray[np.int16] | PlayAudioError] = []

            def decode() -> None:  # in a worker thread: a long clip must not stall the ticks
                outcome.append(self._decoded(data))

            self._wait_then(lambda: self._enqueue_play(data, outcome[0]), decode, len(content))
            return
        self._enqueue_play(data, self._decoded(data))

    def _decoded(self, data: Any) -> NDArray[np.int16] | PlayAudioError:
        try:
            return decode_play_audio(data, self.leg.sample_rate)
        except PlayAudioError as exc:
            return exc

    def _enqueue_play(self, data: Any, pcm: NDArray[np.int16] | PlayAudioError) -> None:
        if isinstance(pcm, PlayAudioError):
            self._error(str(pcm))
            return
        assert isinstance(data, dict)
        queue = bool(data.get("queuePlay", False))
        if queue and len(self._plays) >= MAX_QUEUED_PLAYS:
            self._error(f"playAudio: {MAX_QUEUED_PLAYS} plays already queued")
            return
        if not queue and self._plays:
            self._kill_audio(send_cleared=True)
        play_id = self._next_play
        self._next_play += 1
        self._plays.append(play_id)
        seconds = pcm.size / self.leg.sample_rate

        def done() -> None:
            if play_id in self._plays:
                self._plays.remove(play_id)
            payload: dict[str, Any] = {
                "playbackSeconds": round(seconds, 3),
                "playbackMilliseconds": round(seconds * 1000),
            }
            if "id" in data:
                payload["id"] = data["id"]
            if self._fork is not None:
                self._fork.send_text(json.dumps({"type": "playDone", "data": payload}))

        self.leg.playback.enqueue(pcm, on_done=done)

    def _kill_audio(self, send_cleared: bool = True) -> None:
        self.leg.playback.clear()
        self._plays.clear()
        self._stream_carry = b""
        if send_cleared and self._fork is not None:
            for mark in self._marks:
                if not mark.cleared:
                    mark.cleared = True
                    self._fork.send_text(
                        json.dumps(
                            {"type": "mark", "data": {"name": mark.name, "event": "cleared"}}
                        )
                    )
        self._marks.clear()

    def _mark(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            self._error("mark: data.name must be a string")
            return
        if len(self._marks) >= MAX_MARKS:
            self._error(f"mark: at most {MAX_MARKS} marks may be pending")
            return
        mark = _Mark(data["name"])
        self._marks.append(mark)

        def reached() -> None:
            if mark.cleared or self._fork is None:
                return
            if mark in self._marks:
                self._marks.remove(mark)
            self._fork.send_text(
                json.dumps({"type": "mark", "data": {"name": mark.name, "event": "playout"}})
            )

        self.leg.playback.enqueue(np.zeros(0, np.int16), on_done=reached)

    def _on_binary(self, data: bytes) -> None:
        self._in_order(lambda: self._handle_binary(data), len(data))

    def _handle_binary(self, data: bytes) -> None:
        opts = self.options
        if not opts.bidirectional_streaming:
            self._error("binary audio needs bidirectionalAudio.streaming: true")
            return
        if self._bidirectional_refused():
            return
        data = self._stream_carry + data
        cut = len(data) // 2 * 2
        self._stream_carry = data[cut:]  # an odd byte waits for the next frame
        pcm = np.frombuffer(data[:cut], "<i2").astype(np.int16)
        rate = opts.bidirectional_rate
        if rate != self.leg.sample_rate:
            if self._stream_rs is None:
                self._stream_rs = Resampler(1, rate, self.leg.sample_rate)
            pcm = to_int16(self._stream_rs.process(pcm[None, :])[0])
        self.leg.playback.enqueue(pcm)
