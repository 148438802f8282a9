"""The listen verb against the reference receiver, with media time sped up.

Each test runs a real engine on an EngineClock at SPEED x real time, feeds the
caller's RTP through the leg's receive path, and forks to a real WebSocket
server (mediaserver.receiver.Receiver) on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dsp.codecs import get_codec
from dsp.resample import Resampler
from dsp.tones import tone
from mediaserver import listen as listen_module
from mediaserver.engine import EngineClock, Leg, MediaEngine
from mediaserver.listen import INLINE_DECODE_CHARS, ListenResult, ListenRun
from mediaserver.listen_options import ListenError, parse_listen
from mediaserver.logs import get_logger
from mediaserver.receiver import Receiver
from rtp.packet import RtpPacket, build_packet
from rtp.telephone_event import encode_key_press

SPEED = 5.0
ATTRS = {"callSid": "sid-1", "callId": "cid@host", "from": "alice", "to": "bob",
         "direction": "inbound", "accountSid": "acct"}  # fmt: skip


class CallUnderTest:
    """An engine leg fed with a caller signal (and optional RFC 4733 keys) in media time."""

    def __init__(self, caller: np.ndarray, keys: list[tuple[str, float]] | None = None,
                 codec: str = "PCMU/8000", pt: int = 0) -> None:  # fmt: skip
        self.engine = MediaEngine(8)
        self.clock = EngineClock(self.engine, speed=SPEED)
        self.sent: list[bytes] = []
        self.leg = Leg(call_sid="sid-1", codec=codec, payload_type=pt,
                       telephone_event_pt=101, send=self.sent.append)  # fmt: skip
        self.engine.add_leg(self.leg)
        c = get_codec(codec)
        enc = c.new_encoder(20)
        n = c.info.samples_per_frame(20)
        self.packets: list[tuple[float, bytes]] = []
        for i in range(caller.size // n):
            body = enc.encode(caller[i * n : (i + 1) * n])
            self.packets.append((i * 0.02, build_packet(pt, i == 0, i, i * 160, 7, body)))
        for k, (digit, at) in enumerate(keys or []):
            ts = int(at * 8000)
            for j, e in enumerate(encode_key_press(digit, ts, 800)):
                pkt = build_packet(101, e.marker, 30000 + 20 * k + j, e.timestamp, 7, e.payload)
                self.packets.append((at + j * 0.02, pkt))
        self.packets.sort(key=lambda p: p[0])
        self._next = 0
        self.engine.feeders.append(self._feed)

    async def __aenter__(self) -> CallUnderTest:
        self.clock.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.clock.stop()

    def _feed(self, now: float) -> None:
        """Deliver every packet due by ``now``: in lock-step with media time."""
        while self._next < len(self.packets) and self.packets[self._next][0] <= now:
            self.leg.receive_datagram(self.packets[self._next][1], now)
            self._next += 1

    def listen(self, **verb: Any) -> ListenRun:
        return ListenRun(parse_listen(verb), self.leg, self.engine, self.clock, dict(ATTRS),
                         get_logger())  # fmt: skip

    def heard(self) -> np.ndarray:
        """What the caller was sent (decoded PCMU RTP, audio packets only)."""
        pcmu = get_codec("PCMU/8000").batch
        assert pcmu is not None
        audio = b"".join(RtpPacket.parse(d).payload for d in self.sent
                         if RtpPacket.parse(d).payload_type == 0)  # fmt: skip
        return pcmu.decode_batch(np.frombuffer(audio, np.uint8)[None, :])[0]


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    async with Receiver(tmp_path / "rx") as rx:
        yield rx


def correlation(got: np.ndarray, sent: np.ndarray, max_lag: int = 8000) -> float:
    """Normalised correlation of ``got`` with ``sent`` at the best lag, either way.

    ``got`` lags ``sent`` by the jitter delay, or starts later in ``sent`` when
    the fork opened after the caller started (audio before the socket opened is
    discarded, as the real sender does; on a loaded machine that is more media
    time at the test's speed-up).
    """
    x = got.astype(np.float64)
    y = sent.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(x.size + y.size)))
    cc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)
    lags = np.r_[np.arange(0, max_lag), np.arange(-max_lag, 0)]
    lag = int(lags[np.argmax(np.r_[cc[:max_lag], cc[-max_lag:]])])
    seg, ref = (x[lag:], y) if lag >= 0 else (x, y[-lag:])
    n = min(seg.size, ref.size)
    assert n > 1600, "not enough audio to correlate"
    seg, ref = seg[:n], ref[:n]
    return float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref)))


def speechlike(seconds: float, rate: int = 8000) -> np.ndarray:
    rng = np.random.default_rng(11)
    t = np.arange(int(seconds * rate)) / rate
    sig = (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 660 * t + 1)
           + 0.3 * rng.standard_normal(t.size))  # fmt: skip
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 2.0 * t)
    return (sig * env * 6000).astype(np.int16)


async def run_listen(call: CallUnderTest, **verb: Any) -> ListenResult:
    return await asyncio.wait_for(call.listen(**verb).run(), 30)


async def test_mono_fork_first_frame_audio_and_max_length(receiver: Receiver) -> None:
    caller = speechlike(3.0)
    async with CallUnderTest(caller) as call:
        result = await run_listen(call, url=receiver.url, maxLength=2,
                                  metadata={"campaign": "x", "from": "overridden"})  # fmt: skip
    (rx,) = await receiver.wait_for_calls(1)
    assert result.reason == "maxLength"
    assert result.duration == pytest.approx(2.0, abs=0.05)
    assert rx.subprotocol == "audio.jambonz.org"
    meta = rx.metadata
    assert (meta["sampleRate"], meta["mixType"], meta["callSid"]) == (8000, "mono", "sid-1")
    assert meta["campaign"] == "x" and meta["from"] == "overridden"  # metadata merged last
    assert list(meta)[:2] == ["sampleRate", "mixType"]
    assert rx.close_code == 1000 and rx.violations == []
    assert set(rx.sizes) == {320}  # 20 ms of 8 kHz mono L16 per message
    assert rx.seconds == pytest.approx(2.0, abs=0.05)
    pcmu = get_codec("PCMU/8000").batch
    assert pcmu is not None
    expected = pcmu.decode_batch(pcmu.encode_batch(caller[None, :]))[0]
    assert correlation(rx.audio[:, 0], expected) > 0.95


async def test_stereo_16k_left_is_caller_right_is_what_it_hears(receiver: Receiver) -> None:
    caller = speechlike(2.5)
    async with CallUnderTest(caller) as call:
        call.leg.playback.enqueue(tone(1000.0, 2.5, -12.0))  # what the caller hears
        result = await run_listen(call, url=receiver.url, mixType="stereo", sampleRate=16000,
                                  maxLength=2)  # fmt: skip
    (rx,) = await receiver.wait_for_calls(1)
    assert result.reason == "maxLength"
    assert (rx.sample_rate, rx.channels) == (16000, 2)
    assert set(rx.sizes) == {1280}
    up = Resampler(1, 8000, 16000)
    pcmu = get_codec("PCMU/8000").batch
    assert pcmu is not None
    caller16 = up.process_int16(pcmu.decode_batch(pcmu.encode_batch(caller[None, :])))[0]
    assert correlation(rx.audio[:, 0], caller16) > 0.95
    right = rx.audio[8000:24000, 1].astype(np.float64)
    assert np.argmax(np.abs(np.fft.rfft(right))) * 16000 / right.size == pytest.approx(1000, abs=3)
    left_spectrum = np.abs(np.fft.rfft(rx.audio[8000:24000, 0].astype(np.float64)))
    assert left_spectrum[1000] < 0.05 * left_spectrum.max()  # no 1 kHz tone on the caller side


async def test_mixed_is_the_saturated_sum(receiver: Receiver) -> None:
    async with CallUnderTest(np.full(16000, 3000, np.int16)) as call:
        call.leg.playback.enqueue(np.full(16000, 30000, np.int16))
        await run_listen(call, url=receiver.url, mixType="mixed", maxLength=1)
    (rx,) = await receiver.wait_for_calls(1)
    assert rx.channels == 1
    assert rx.audio[2000:6000, 0].max() == 32767  # 30000 + ~3000 clamps, never wraps
    assert rx.audio[2000:6000, 0].min() > 0


async def test_silence_timeout_ends_the_fork(receiver: Receiver) -> None:
    caller = np.concatenate([speechlike(1.0), np.zeros(8000 * 4, np.int16)])
    async with CallUnderTest(caller) as call:
        result = await run_listen(call, url=receiver.url, timeout=1.5)
    assert result.reason == "timeout"
    assert 2.3 <= result.duration <= 2.8  # 1 s of talk (+ jitter delay) then 1.5 s of silence
    (rx,) = await receiver.wait_for_calls(1)
    assert rx.close_code == 1000


async def test_finish_on_key_and_pass_dtmf_once_per_press(receiver: Receiver) -> None:
    caller = speechlike(4.0)
    async with CallUnderTest(caller, keys=[("5", 0.5), ("2", 1.2), ("#", 2.0)]) as call:
        result = await run_listen(call, url=receiver.url, passDtmf=True, finishOnKey="#*")
    assert (result.reason, result.digits) == ("finishOnKey", "#")
    (rx,) = await receiver.wait_for_calls(1)
    dtmf = rx.frames_of("dtmf")
    assert dtmf == [{"event": "dtmf", "dtmf": "5", "duration": "800"},
                    {"event": "dtmf", "dtmf": "2", "duration": "800"}]  # fmt: skip


async def test_disconnect_message_and_far_end_close_end_the_verb(tmp_path: Path) -> None:
    async with (
        Receiver(tmp_path / "a", send_on_open=[{"type": "disconnect"}]) as rx,
        CallUnderTest(speechlike(3.0)) as call,
    ):
        result = await run_listen(call, url=rx.url)
    assert result.reason == "disconnect"
    async with (
        Receiver(tmp_path / "b", close_after=0.5) as rx,
        CallUnderTest(speechlike(3.0)) as call,
    ):
        result = await run_listen(call, url=rx.url)
    assert result.reason == "ws-closed"
    assert 0.4 <= result.duration <= 1.0


async def test_connect_failure_is_a_result_not_an_exception() -> None:
    async with CallUnderTest(speechlike(1.0)) as call:
        result = await run_listen(call, url="ws://127.0.0.1:9/nothing")
    assert result.reason == "connect-failed" and result.error


async def test_ws_auth_accepted_and_refused(tmp_path: Path) -> None:
    async with (
        Receiver(tmp_path / "rx", auth=("user", "s3cret")) as rx,
        CallUnderTest(speechlike(2.0)) as call,
    ):
        good = {"username": "user", "password": "s3cret"}
        ok = await run_listen(call, url=rx.url, maxLength=0.5, wsAuth=good)
        bad = {"username": "user", "password": "nope"}
        refused = await run_listen(call, url=rx.url, maxLength=0.5, wsAuth=bad)
    assert ok.reason == "maxLength"
    assert refused.reason == "connect-failed"
    assert "nope" not in (refused.error or "") and "s3cret" not in (refused.error or "")


async def test_play_beep_goes_to_the_caller_not_the_fork(receiver: Receiver) -> None:
    async with CallUnderTest(np.zeros(8000 * 3, np.int16)) as call:
        result = await run_listen(call, url=receiver.url, playBeep=True, maxLength=0.5,
                                  mixType="stereo")  # fmt: skip
        heard = call.heard()
    assert result.reason == "maxLength"
    spectrum = np.abs(np.fft.rfft(heard[:4000].astype(np.float64)))
    assert np.argmax(spectrum) * 8000 / 4000 == pytest.approx(1500, abs=3)
    (rx,) = await receiver.wait_for_calls(1)
    assert np.abs(rx.audio.astype(np.int32)).max() < 50  # the beep is not forked


def wav_b64(pcm: np.ndarray, rate: int) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return base64.b64encode(buf.getvalue()).decode()


async def test_play_audio_raw_and_wav_reach_the_caller_and_report_play_done(
    receiver: Receiver,
) -> None:
    raw = base64.b64encode(tone(700.0, 0.4, -10.0, rate=16000).astype("<i2").tobytes()).decode()
    messages: list[dict[str, Any]] = [
        {"type": "playAudio", "data": {"audioContent": raw, "audioContentType": "raw",
                                       "sampleRate": "16000", "id": "a"}},
        {"type": "playAudio", "data": {"audioContent": wav_b64(tone(1200.0, 0.3, -10.0), 8000),
                                       "audioContentType": "wav", "queuePlay": True, "id": "b"}},
    ]  # fmt: skip
    async with CallUnderTest(np.zeros(8000 * 3, np.int16)) as call:
        task = asyncio.create_task(run_listen(call, url=receiver.url, mixType="stereo",
                                              maxLength=2))  # fmt: skip
        (live,) = await receiver.wait_for_open(1)
        for m in messages:
            await receiver.send(live.call_sid, m)
        await task
        heard = call.heard()
    (rx,) = await receiver.wait_for_calls(1)
    done = rx.frames_of("playDone")
    assert [d["data"]["id"] for d in done] == ["a", "b"]
    assert done[0]["data"]["playbackMilliseconds"] == 400
    assert done[1]["data"]["playbackMilliseconds"] == 300
    active = np.flatnonzero(np.abs(heard.astype(np.int32)) > 300)
    first = heard[active[0] : active[0] + 3000].astype(np.float64)
    second = heard[active[0] + 3400 : active[0] + 5600].astype(np.float64)
    assert np.argmax(np.abs(np.fft.rfft(first))) * 8000 / first.size == pytest.approx(700, abs=5)
    assert np.argmax(np.abs(np.fft.rfft(second))) * 8000 / second.size == pytest.approx(1200, abs=5)
    right = rx.audio[:, 1].astype(np.int32)  # played audio is what the caller hears: right
    assert np.abs(right).max() > 1000


def long_wav_b64(freq: float, seconds: float) -> str:
    """A 44.1 kHz stereo WAV long enough to be decoded off the event loop."""
    t = np.arange(round(seconds * 44100)) / 44100
    mono = (6000 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.stack([mono, mono], axis=1).tobytes())
    content = base64.b64encode(buf.getvalue()).decode()
    assert len(content) > INLINE_DECODE_CHARS
    Resampler(1, 48000, 8000)  # design the filter now, as serve's warm-up does, not in the call
    return content


async def test_a_long_clip_decoded_off_the_loop_keeps_its_place_in_the_queue(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decode = listen_module.decode_play_audio

    def slow_decode(data: Any, leg_rate: int) -> np.ndarray:
        if len(data["audioContent"]) > INLINE_DECODE_CHARS:
            time.sleep(0.2)  # a clip that takes long: on the loop this would stall every call
        return real_decode(data, leg_rate)

    monkeypatch.setattr(listen_module, "decode_play_audio", slow_decode)
    gaps: list[float] = []

    async def probe() -> None:  # how long the event loop goes without running us
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            gaps.append(time.perf_counter() - before)

    probing = asyncio.create_task(probe())
    short = base64.b64encode(tone(600.0, 0.3, -10.0).astype("<i2").tobytes()).decode()
    messages: list[dict[str, Any]] = [
        {"type": "playAudio", "data": {"audioContent": long_wav_b64(1000.0, 2.0),
                                       "audioContentType": "wav", "id": "long"}},
        {"type": "playAudio", "data": {"audioContent": short, "queuePlay": True, "id": "short"}},
    ]  # fmt: skip
    async with CallUnderTest(np.zeros(8000 * 6, np.int16)) as call:
        # 0.2 s of decode is 1 s of media at the test's speed-up, then 2.3 s of clips
        task = asyncio.create_task(run_listen(call, url=receiver.url, maxLength=5.5))
        (live,) = await receiver.wait_for_open(1)
        for m in messages:  # back to back: the short one arrives while the long one decodes
            await receiver.send(live.call_sid, m)
        await task
        heard = call.heard()
    probing.cancel()
    (rx,) = await receiver.wait_for_calls(1)
    assert max(gaps) < 0.15  # the 0.2 s decode ran in a thread
    done = rx.frames_of("playDone")
    assert [d["data"]["id"] for d in done] == ["long", "short"]
    assert done[0]["data"]["playbackMilliseconds"] == 2000
    active = np.flatnonzero(np.abs(heard.astype(np.int32)) > 300)
    first = heard[active[0] + 800 : active[0] + 14400].astype(np.float64)
    second = heard[active[0] + 16200 : active[0] + 18200].astype(np.float64)
    assert np.argmax(np.abs(np.fft.rfft(first))) * 8000 / first.size == pytest.approx(1000, abs=5)
    assert np.argmax(np.abs(np.fft.rfft(second))) * 8000 / second.size == pytest.approx(600, abs=5)


async def test_kill_audio_behind_a_long_decode_kills_that_clip(receiver: Receiver) -> None:
    data = {"audioContent": long_wav_b64(1000.0, 2.0), "audioContentType": "wav", "id": "long"}
    long_play = {"type": "playAudio", "data": data}
    short = base64.b64encode(tone(600.0, 0.3, -10.0).astype("<i2").tobytes()).decode()
    after = {"type": "playAudio", "data": {"audioContent": short, "id": "after"}}
    async with CallUnderTest(np.zeros(8000 * 3, np.int16)) as call:
        task = asyncio.create_task(run_listen(call, url=receiver.url, maxLength=2.5))
        (live,) = await receiver.wait_for_open(1)
        await receiver.send(live.call_sid, long_play)
        await receiver.send(live.call_sid, {"type": "killAudio"})
        await receiver.send(live.call_sid, after)
        await task
        heard = call.heard()
    (rx,) = await receiver.wait_for_calls(1)
    assert [d["data"]["id"] for d in rx.frames_of("playDone")] == ["after"]
    active = np.flatnonzero(np.abs(heard.astype(np.int32)) > 300)
    # the 0.3 s clip, plus at most a tick or two of the long one before the kill
    assert 2000 <= active.size < 2400 + 800
    last = heard[active[-1] - 1600 : active[-1]].astype(np.float64)
    assert np.argmax(np.abs(np.fft.rfft(last))) * 8000 / last.size == pytest.approx(600, abs=5)


async def test_messages_waiting_for_a_decode_are_bounded(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decode = listen_module.decode_play_audio

    def slow_decode(data: Any, leg_rate: int) -> np.ndarray:
        time.sleep(0.3)
        return real_decode(data, leg_rate)

    monkeypatch.setattr(listen_module, "decode_play_audio", slow_decode)
    monkeypatch.setattr(listen_module, "MAX_WAITING_MESSAGES", 3)
    data = {"audioContent": long_wav_b64(1000.0, 2.0), "audioContentType": "wav", "id": "long"}
    async with CallUnderTest(np.zeros(8000 * 7, np.int16)) as call:
        # 0.3 s of decode is 1.5 s of media at the test's speed-up, then 2 s of clip
        task = asyncio.create_task(run_listen(call, url=receiver.url, maxLength=6.5))
        (live,) = await receiver.wait_for_open(1)
        await receiver.send(live.call_sid, {"type": "playAudio", "data": data})
        for i in range(5):  # the decode and 2 marks may wait; the other 3 are dropped
            await receiver.send(live.call_sid, {"type": "mark", "data": {"name": f"m{i}"}})
        await task
    (rx,) = await receiver.wait_for_calls(1)
    errors = [f["error"] for f in rx.frames_of("error")]
    assert len(errors) == 3
    assert all("message dropped: 3 messages" in e for e in errors)
    assert [d["data"]["id"] for d in rx.frames_of("playDone")] == ["long"]


async def test_bad_messages_get_error_frames_and_never_end_the_call(receiver: Receiver) -> None:
    bad: list[Any] = [
        "not json",
        {"type": "sing"},
        {"type": "playAudio", "data": {"audioContent": "%%%"}},
        {"type": "playAudio", "data": {"audioContent": "AAAA", "sampleRate": 11025}},
        {"type": "mark"},
        # a damaged WAV (chunk sizes past the end) once raised RuntimeError out of the stdlib
        {"type": "playAudio", "data": {"audioContentType": "wav", "audioContent":
                                       base64.b64encode(b"RIFF\x10\0\0\0WAVEjunkjunk").decode()}},
    ]  # fmt: skip
    async with CallUnderTest(np.zeros(8000 * 3, np.int16)) as call:
        task = asyncio.create_task(run_listen(call, url=receiver.url, maxLength=1.5))
        (live,) = await receiver.wait_for_open(1)
        for m in bad:
            await receiver.send(live.call_sid, m if isinstance(m, str) else json.dumps(m))
        result = await task
    assert result.reason == "maxLength"
    (rx,) = await receiver.wait_for_calls(1)
    errors = [f["error"] for f in rx.frames_of("error")]
    assert len(errors) == len(bad)
    assert "not JSON" in errors[0] and "'sing'" in errors[1] and "base64" in errors[2]
    assert "sampleRate" in errors[3] and "data.name" in errors[4]
    assert "not audio FFmpeg can decode" in errors[5]


async def test_queue_limit_and_kill_audio(receiver: Receiver) -> None:
    clip = base64.b64encode(tone(500.0, 1.0, -10.0).astype("<i2").tobytes()).decode()
    play = {"type": "playAudio", "data": {"audioContent": clip, "queuePlay": True}}
    async with CallUnderTest(np.zeros(8000 * 4, np.int16)) as call:
        task = asyncio.create_task(run_listen(call, url=receiver.url, maxLength=2))
        (live,) = await receiver.wait_for_open(1)
        for _ in range(11):
            await receiver.send(live.call_sid, play)
        await asyncio.sleep(0.2 / SPEED)
        await receiver.send(live.call_sid, {"type": "killAudio"})
        await task
        heard = call.heard()
    (rx,) = await receiver.wait_for_calls(1)
    assert any("10 plays already queued" in f["error"] for f in rx.frames_of("error"))
    assert rx.frames_of("playDone") == []  # killed before any finished
    assert np.abs(heard[-8000:].astype(np.int32)).max() < 10  # silence after killAudio


async def test_streaming_playback_with_marks(tmp_path: Path) -> None:
    chunk = tone(400.0, 0.25, -10.0, rate=16000).astype("<i2").tobytes()
    async with Receiver(tmp_path / "rx") as rx:
        async with CallUnderTest(np.zeros(8000 * 4, np.int16)) as call:
            stream = {"enabled": True, "streaming": True, "sampleRate": 16000}
            task = asyncio.create_task(
                run_listen(call, url=rx.url, maxLength=2, bidirectionalAudio=stream)
            )
            (live,) = await rx.wait_for_open(1)
            await rx.send(live.call_sid, chunk[:1001])  # odd byte count: carried over
            await rx.send(live.call_sid, chunk[1001:])
            await rx.send(live.call_sid, {"type": "mark", "data": {"name": "after-chunk"}})
            await rx.wait_for_text(live.call_sid, "mark", 10)  # playout reached the mark
            await rx.send(live.call_sid, chunk)
            await rx.send(live.call_sid, {"type": "mark", "data": {"name": "end"}})
            await rx.send(live.call_sid, {"type": "clearMarks"})  # "end" is forgotten
            await task
            heard = call.heard()
        (got,) = await rx.wait_for_calls(1)
    marks = got.frames_of("mark")
    assert marks == [{"type": "mark", "data": {"name": "after-chunk", "event": "playout"}}]
    active = np.flatnonzero(np.abs(heard.astype(np.int32)) > 300)
    assert active.size > 3000  # ~0.5 s of the 400 Hz stream at 8 kHz reached the caller


async def test_stalled_receiver_drops_oldest_counts_and_spares_other_calls(
    tmp_path: Path,
) -> None:
    async with Receiver(tmp_path / "stall", stall=True) as slow, \
            Receiver(tmp_path / "ok") as fine:  # fmt: skip
        engine = MediaEngine(4)
        clock = EngineClock(engine, speed=20.0)
        legs = [Leg(call_sid=s, codec="PCMU/8000", payload_type=0) for s in ("slow", "ok")]
        for leg in legs:
            engine.add_leg(leg)
            leg.playback.enqueue(tone(300.0, 60.0, -10.0))  # 60 s of audio in both forks
        clock.start()
        try:
            runs = [
                ListenRun(parse_listen({"url": rx.url, "maxLength": 40, "mixType": "stereo",
                                        "sampleRate": 48000}),
                          leg, engine, clock, dict(ATTRS, callSid=leg.call_sid), get_logger(),
                          buffer_seconds=1.0)
                for rx, leg in ((slow, legs[0]), (fine, legs[1]))
            ]  # fmt: skip
            results = await asyncio.wait_for(asyncio.gather(*(r.run() for r in runs)), 30)
        finally:
            clock.stop()
    slow_result, ok_result = results
    assert slow_result.reason == ok_result.reason == "maxLength"
    assert slow_result.frames_dropped > 0
    assert ok_result.frames_dropped == 0
    assert ok_result.frames_sent == 2000  # every 20 ms of 40 s reached the healthy receiver


def test_bad_options_name_the_field() -> None:
    cases = {
        "sampleRate": {"url": "ws://h/", "sampleRate": 11025},
        "mixType": {"url": "ws://h/", "mixType": "surround"},
        "url": {},
        "metadata": {"url": "ws://h/", "metadata": {"x": "y" * 9000}},
        "finishOnKey": {"url": "ws://h/", "finishOnKey": "x"},
        "maxLength": {"url": "ws://h/", "maxLength": "long"},
        "wsAuth": {"url": "ws://h/", "wsAuth": {"username": "u"}},
        "playBeep": {"url": "ws://h/", "playBeep": "yes"},
    }
    for field, verb in cases.items():
        with pytest.raises(ListenError, match=f"^{field}"):
            parse_listen(verb)
    with pytest.raises(ListenError, match="must be one of 8000, 16000, 24000, 32000, 48000, 64000"):
        parse_listen({"url": "ws://h/", "sampleRate": 11025})


def test_relative_urls_resolve_against_the_app() -> None:
    opts = parse_listen(
        {"url": "/ws/calls", "actionHook": "/done"}, "https://u:p@app.example:8443/x"
    )
    assert opts.url == "wss://app.example:8443/ws/calls"
    assert opts.action_hook is not None
    assert opts.action_hook.url == "https://app.example:8443/done"
    assert (opts.ws_username, opts.ws_password) == ("u", "p")  # the app's own credentials
    explicit = parse_listen({"url": "/ws", "wsAuth": {"username": "a", "password": "b"}},
                            "https://u:p@app.example/")  # fmt: skip
    assert (explicit.ws_username, explicit.ws_password) == ("a", "b")
    absolute = parse_listen({"url": "wss://other.example/"}, "https://u:p@app.example/")
    assert absolute.ws_username is None  # never sent to another server
    with pytest.raises(ListenError, match="relative"):
        parse_listen({"url": "/ws"}, None)


async def test_hook_fields_for_the_action_hook(receiver: Receiver) -> None:
    async with CallUnderTest(speechlike(2.0), keys=[("7", 0.5)]) as call:
        result = await run_listen(call, url=receiver.url, finishOnKey="7")
    assert result.hook_fields() == {
        "reason": "finishOnKey",
        "duration": result.duration,
        "dial_call_duration": int(result.duration),
        "frames_sent": result.frames_sent,
        "frames_dropped": 0,
        "digits": "7",
    }
    assert result.frames_sent >= 20


async def test_kill_audio_clears_pending_marks(receiver: Receiver) -> None:
    long_chunk = tone(400.0, 1.5, -10.0, rate=8000).astype("<i2").tobytes()
    stream = {"enabled": True, "streaming": True, "sampleRate": 8000}
    async with CallUnderTest(np.zeros(8000 * 4, np.int16)) as call:
        task = asyncio.create_task(
            run_listen(call, url=receiver.url, maxLength=2, bidirectionalAudio=stream)
        )
        (live,) = await receiver.wait_for_open(1)
        await receiver.send(live.call_sid, long_chunk)
        await receiver.send(live.call_sid, {"type": "mark", "data": {"name": "m1"}})
        await receiver.send(live.call_sid, {"type": "killAudio"})
        await task
    (rx,) = await receiver.wait_for_calls(1)
    assert rx.frames_of("mark") == [{"type": "mark", "data": {"name": "m1", "event": "cleared"}}]


async def test_ws_auth_password_never_reaches_the_logs(tmp_path: Path) -> None:
    import io

    from mediaserver.logs import configure_logging

    out = io.StringIO()
    configure_logging("DEBUG", stream=out)
    secret = "hunter2-never-logged"
    try:
        async with (
            Receiver(tmp_path / "rx", auth=("user", secret)) as rx,
            CallUnderTest(speechlike(1.0)) as call,
        ):
            auth = {"username": "user", "password": secret}
            ok = await run_listen(call, url=rx.url, maxLength=0.3, wsAuth=auth)
            wrong = {"username": "user", "password": secret + "x"}
            bad = await run_listen(call, url=rx.url, maxLength=0.3, wsAuth=wrong)
    finally:
        configure_logging("INFO")
    assert ok.reason == "maxLength" and bad.reason == "connect-failed"
    logged = out.getvalue()
    assert "listen.start" in logged and "listen.connect_failed" in logged
    assert secret not in logged
    assert base64.b64encode(f"user:{secret}".encode()).decode() not in logged
