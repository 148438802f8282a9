"""The reference receiver, driven by a real websockets client that sends like jambonz.

What a receiver developer relies on: the WAV holds exactly the audio sent,
with the right rate and channel order; the metadata and every text frame are
kept; violations are reported while the stream keeps going; auth refuses with
401 and never leaks the password; ``--play`` talks back; stall and
close_after behave like a slow or impatient receiver; the CLI process writes
the files and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from mediaserver.logs import configure_logging
from mediaserver.receiver import (
    ReceivedCall,
    Receiver,
    load_play_message,
    parse_auth,
    parse_listen,
    run_receiver,
)

JAMBONZ = "audio.jambonz.org"
CHANNELS = {"mono": 1, "mixed": 1, "stereo": 2}
ROOT = Path(__file__).resolve().parents[2]


# -- a sender that behaves like jambonz ---------------------------------------------


def metadata(call_sid: str, sample_rate: int = 8000, mix_type: str = "mono") -> dict[str, Any]:
    return {
        "sampleRate": sample_rate,
        "mixType": mix_type,
        "callSid": call_sid,
        "direction": "inbound",
        "from": "+15551230000",
        "to": "+15559870000",
        "callId": f"{call_sid}@10.0.0.1",
        "callStatus": "in-progress",
        "accountSid": "acct-1",
        "campaign": "spring",  # user metadata, merged at the top level
    }


def signal_pcm(seconds: float, sample_rate: int, channels: int, seed: int) -> NDArray[np.int16]:
    """A known signal, different on each channel: [samples, channels] int16."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    cols = [
        8000 * np.sin(2 * np.pi * (300 + 400 * ch) * t) + rng.normal(0, 500, n)
        for ch in range(channels)
    ]
    return np.clip(np.stack(cols, axis=1), -32768, 32767).astype(np.int16)


def frames_20ms(pcm: NDArray[np.int16], sample_rate: int) -> list[bytes]:
    """One L16 little-endian message per 20 ms, channels interleaved."""
    step = sample_rate // 50
    wire = pcm.astype("<i2")
    return [wire[i : i + step].tobytes() for i in range(0, len(wire), step)]


@asynccontextmanager
async def sender(
    url: str,
    *,
    subprotocols: Sequence[str] | None = (JAMBONZ,),
    auth: tuple[str, str] | None = None,
) -> AsyncIterator[ClientConnection]:
    headers = {}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    protos = [Subprotocol(p) for p in subprotocols] if subprotocols is not None else None
    async with connect(
        url, subprotocols=protos, additional_headers=headers, compression=None, open_timeout=5
    ) as ws:
        yield ws


async def stream_call(
    url: str,
    meta: dict[str, Any],
    pcm: NDArray[np.int16],
    *,
    dtmf_at: int | None = None,
    **kwargs: Any,
) -> ClientConnection:
    """Metadata, 20 ms frames (a dtmf frame after frame ``dtmf_at``), close 1000."""
    async with sender(url, **kwargs) as ws:
        await ws.send(json.dumps(meta))
        for i, frame in enumerate(frames_20ms(pcm, meta["sampleRate"])):
            await ws.send(frame)
            if i == dtmf_at:
                await ws.send(json.dumps({"event": "dtmf", "dtmf": "2", "duration": "1600"}))
    return ws


def read_wav(path: Path) -> tuple[wave._wave_params, NDArray[np.int16]]:
    """Read with the stdlib parser, independent of the receiver's own writer."""
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        data = np.frombuffer(w.readframes(params.nframes), dtype="<i2")
    return params, data.reshape(-1, params.nchannels).astype(np.int16)


def events(call: ReceivedCall) -> list[dict[str, Any]]:
    return [json.loads(line) for line in call.events_path.read_text().splitlines()]


def codes(call: ReceivedCall) -> list[str]:
    return [v.split(":", 1)[0] for v in call.violations]


# -- streams are recorded exactly ----------------------------------------------------


@pytest.mark.parametrize(
    ("sample_rate", "mix_type"),
    [(8000, "mono"), (16000, "mono"), (8000, "stereo"), (16000, "stereo"), (16000, "mixed")],
)
async def test_the_wav_holds_exactly_what_was_sent(
    tmp_path: Path, sample_rate: int, mix_type: str
) -> None:
    channels = CHANNELS[mix_type]
    pcm = signal_pcm(1.0, sample_rate, channels, seed=sample_rate + channels)
    meta = metadata("CA-exact", sample_rate, mix_type)
    async with Receiver(tmp_path) as rx:
        ws = await stream_call(rx.url, meta, pcm, dtmf_at=10)
        [call] = await rx.wait_for_calls(1, timeout=5)

    assert ws.subprotocol == JAMBONZ
    params, audio = read_wav(call.wav_path)
    assert (params.nchannels, params.framerate, params.sampwidth) == (channels, sample_rate, 2)
    np.testing.assert_array_equal(audio, pcm)  # left stays left, right stays right
    np.testing.assert_array_equal(call.audio, pcm)
    assert call.violations == []
    assert (call.close_code, call.closed_by) == (1000, "sender")
    assert call.seconds == pytest.approx(1.0)
    frame_bytes = sample_rate // 50 * 2 * channels
    assert call.sizes == {frame_bytes: 50}

    saved = json.loads(call.json_path.read_text())
    assert saved["metadata"] == meta
    assert saved["summary"]["frames"] == 50
    assert saved["summary"]["violations"] == 0
    assert saved["summary"]["closeCode"] == 1000
    assert saved["summary"]["subprotocol"] == JAMBONZ
    assert saved["summary"]["messageSizes"] == {str(frame_bytes): 50}

    log = events(call)
    assert log[0]["kind"] == "open" and log[-1]["kind"] == "close"
    assert log[-1]["code"] == 1000
    dtmf = {"event": "dtmf", "dtmf": "2", "duration": "1600"}
    assert [e["message"] for e in log if e["kind"] == "text"] == [dtmf]
    assert [e["message"] for e in log if e["kind"] == "metadata"] == [meta]
    assert call.frames_of("dtmf") == [dtmf]


async def test_merged_intervals_are_allowed_and_counted_by_size(tmp_path: Path) -> None:
    """The real sender merges 20 ms intervals under load: not a violation."""
    pcm = signal_pcm(0.5, 8000, 2, seed=7)
    wire = pcm.astype("<i2").tobytes()
    sizes = [640, 640 * 3, 640, 640 * 5]  # 1 + 3 + 1 + 5 intervals
    async with Receiver(tmp_path) as rx:
        async with sender(rx.url) as ws:
            await ws.send(json.dumps(metadata("CA-merged", 8000, "stereo")))
            pos = 0
            for size in sizes:
                await ws.send(wire[pos : pos + size])
                pos += size
        [call] = await rx.wait_for_calls(1, timeout=5)
    assert call.violations == []
    assert call.sizes == {640: 2, 1920: 1, 3200: 1}
    np.testing.assert_array_equal(call.audio, pcm[: pos // 4])


async def test_the_wav_is_on_disk_and_valid_while_the_call_is_live(tmp_path: Path) -> None:
    pcm = signal_pcm(2.5, 8000, 1, seed=3)
    async with Receiver(tmp_path) as rx, sender(rx.url) as ws:
        await ws.send(json.dumps(metadata("CA-live")))
        for frame in frames_20ms(pcm, 8000):
            await ws.send(frame)
        live = await rx.wait_for_audio("CA-live", 2.5, timeout=5)
        assert not live.closed
        params, audio = read_wav(live.wav_path)  # header patched at least every second
        assert params.nframes >= 2 * 8000
        np.testing.assert_array_equal(audio, pcm[: len(audio)])
        assert json.loads(live.json_path.read_text())["summary"] == {"state": "live"}


# -- violations are reported, the stream keeps going ------------------------------------


async def test_violations_are_reported_and_the_stream_keeps_going(tmp_path: Path) -> None:
    pcm = signal_pcm(0.4, 8000, 2, seed=11)
    wire = pcm.astype("<i2").tobytes()
    log = io.StringIO()
    configure_logging("INFO", json=True, stream=log)
    async with Receiver(tmp_path) as rx:
        async with sender(rx.url) as ws:
            await ws.send(b"\x00" * 640)  # binary before the metadata
            await ws.send("{not json")  # a first text frame that is not JSON
            await ws.send(json.dumps(metadata("CA-bad", 8000, "stereo")))
            await ws.send(wire[:641])  # not a whole number of 4-byte stereo frames
            await ws.send(wire[641:1280])  # ... the next one completes it
            await ws.send("hello")  # later text frame: not JSON
            await ws.send(json.dumps({"type": "transcription", "text": "hi"}))  # unknown type
            await ws.send(json.dumps({"event": "dtmf", "dtmf": "5", "duration": 1600}))  # int
            await ws.send(wire[1280:])
        [call] = await rx.wait_for_calls(1, timeout=5)

    assert codes(call) == [
        "binary-before-metadata",
        "metadata-not-json",
        "partial-sample-frame",
        "partial-sample-frame",
        "text-not-json",
        "unknown-type",
        "bad-dtmf",
    ]
    # the odd bytes were carried, so every sample is where it belongs
    np.testing.assert_array_equal(call.audio, pcm)
    assert call.close_code == 1000 and call.closed_by == "sender"
    assert json.loads(call.json_path.read_text())["summary"]["violations"] == 7
    logged = [json.loads(line) for line in log.getvalue().splitlines()]
    warnings = [e for e in logged if e["event"] == "receiver.violation"]
    assert len(warnings) == 7 and all(e["call_sid"] == "CA-bad" for e in warnings[2:])
    kinds = [e["kind"] for e in events(call)]
    assert kinds.count("violation") == 7


@pytest.mark.parametrize(
    ("patch", "code", "rate", "channels"),
    [
        ({"sampleRate": 44100}, "sample-rate", 44100, 1),
        ({"sampleRate": "16000"}, "sample-rate", 16000, 1),
        ({"sampleRate": None}, "sample-rate", 8000, 1),
        ({"mixType": "quad"}, "mix-type", 8000, 1),
        ({"callSid": None}, "call-sid", 8000, 1),
        ({"blob": "x" * 9000}, "metadata-too-large", 8000, 1),
    ],
)
async def test_bad_metadata_is_reported_and_recorded_anyway(
    tmp_path: Path, patch: dict[str, Any], code: str, rate: int, channels: int
) -> None:
    meta = {k: v for k, v in {**metadata("CA-meta"), **patch}.items() if v is not None}
    pcm = signal_pcm(0.2, 8000, 1, seed=5)
    async with Receiver(tmp_path) as rx:
        async with sender(rx.url) as ws:
            await ws.send(json.dumps(meta))
            await ws.send(pcm.astype("<i2").tobytes())
        [call] = await rx.wait_for_calls(1, timeout=5)
    assert codes(call) == [code]
    assert (call.sample_rate, call.channels) == (rate, channels)
    params, audio = read_wav(call.wav_path)
    assert params.framerate == rate
    np.testing.assert_array_equal(audio, pcm)
    assert call.wav_path.parent == tmp_path
    if code == "call-sid":
        assert call.call_sid.startswith("unnamed-")


async def test_metadata_that_is_not_an_object_and_a_call_with_none(tmp_path: Path) -> None:
    async with Receiver(tmp_path) as rx:
        async with sender(rx.url) as ws:
            await ws.send("[1, 2]")
        async with sender(rx.url) as ws:
            await ws.send(b"\x01\x02")
        calls = await rx.wait_for_calls(2, timeout=5)
    assert sorted(tuple(codes(c)) for c in calls) == [
        ("binary-before-metadata", "no-metadata"),
        ("metadata-not-object", "no-metadata"),
    ]
    for call in calls:  # still a complete record on disk
        assert call.wav_path.exists() and call.json_path.exists()
        assert events(call)[-1]["kind"] == "close"


async def test_repeated_violations_are_counted_not_listed_forever(tmp_path: Path) -> None:
    async with Receiver(tmp_path) as rx:
        async with sender(rx.url) as ws:
            await ws.send(json.dumps(metadata("CA-flood")))
            for _ in range(100):
                await ws.send(b"\x00" * 321)
        [call] = await rx.wait_for_calls(1, timeout=5)
    assert call.violation_counts["partial-sample-frame"] == 100
    assert len(call.violations) < 30
    assert json.loads(call.json_path.read_text())["summary"]["violations"] == 100
    assert call.samples == 100 * 321 // 2  # carried bytes still land in the WAV


async def test_unsafe_and_repeated_call_sids_stay_in_the_output_directory(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    pcm = signal_pcm(0.1, 8000, 1, seed=1)
    async with Receiver(out) as rx:
        await stream_call(rx.url, metadata("../escape"), pcm)
        await stream_call(rx.url, metadata("../escape"), pcm)
        calls = await rx.wait_for_calls(2, timeout=5)
    paths = {c.wav_path for c in calls}
    assert len(paths) == 2
    assert all(p.parent == out for p in paths)
    assert {c.call_sid for c in calls} == {"../escape"}
    assert not list(tmp_path.glob("*.wav"))


# -- handshake: subprotocols and auth ---------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "answer_with", "expected"),
    [
        ((JAMBONZ,), JAMBONZ, JAMBONZ),
        (("audio.drachtio.org",), JAMBONZ, "audio.drachtio.org"),
        (None, JAMBONZ, None),  # clients that offer none are accepted
        ((JAMBONZ,), None, None),  # a receiver that answers with none (like the jambonz SDK)
    ],
)
async def test_subprotocol_negotiation(
    tmp_path: Path,
    offered: tuple[str, ...] | None,
    answer_with: str | None,
    expected: str | None,
) -> None:
    pcm = signal_pcm(0.1, 8000, 1, seed=2)
    async with Receiver(tmp_path, subprotocol=answer_with) as rx:
        ws = await stream_call(rx.url, metadata("CA-proto"), pcm, subprotocols=offered)
        [call] = await rx.wait_for_calls(1, timeout=5)
    assert ws.subprotocol == expected
    assert call.subprotocol == expected
    assert call.violations == []
    np.testing.assert_array_equal(call.audio, pcm)
    notes = [e["code"] for e in events(call) if e["kind"] == "note"]
    assert ("no-subprotocol" in notes) == (offered is None)


async def test_an_unknown_subprotocol_is_accepted_and_reported(tmp_path: Path) -> None:
    async with Receiver(tmp_path) as rx:
        await stream_call(rx.url, metadata("CA-x"), signal_pcm(0.1, 8000, 1, 0), subprotocols=["x"])
        [call] = await rx.wait_for_calls(1, timeout=5)
    assert codes(call) == ["unknown-subprotocol"]
    assert call.subprotocol is None


async def test_basic_auth_accepts_the_right_password_and_refuses_others_with_401(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-Pa55"
    log = io.StringIO()
    configure_logging("DEBUG", json=True, stream=log)
    caplog.set_level(logging.DEBUG)  # even at DEBUG, no header dump may leak the password
    pcm = signal_pcm(0.2, 8000, 1, seed=9)
    async with Receiver(tmp_path, auth=("rec", secret)) as rx:
        for wrong in (None, ("rec", "nope"), ("other", secret)):
            with pytest.raises(InvalidStatus) as refused:
                await stream_call(rx.url, metadata("CA-refused"), pcm, auth=wrong)
            assert refused.value.response.status_code == 401
        await stream_call(rx.url, metadata("CA-auth"), pcm, auth=("rec", secret))
        [call] = await rx.wait_for_calls(1, timeout=5)

    assert call.authorization_ok and call.username == "rec"
    np.testing.assert_array_equal(call.audio, pcm)
    assert [r.reason for r in rx.refused] == [
        "missing credentials",
        "wrong credentials",
        "wrong credentials",
    ]
    assert [c.call_sid for c in rx.calls] == ["CA-auth"]  # refused ones never became calls
    token = base64.b64encode(f"rec:{secret}".encode()).decode()
    server_side = "\n".join(  # the test's own client logs its headers at DEBUG: skip those
        r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client")
    )
    assert "connection open" in server_side  # the receiver's websockets logger was captured
    everything = (
        log.getvalue()
        + server_side
        + "".join(p.read_text(errors="replace") for p in tmp_path.iterdir() if p.suffix != ".wav")
    )
    assert "receiver.auth_refused" in log.getvalue()
    assert secret not in everything and token not in everything and "nope" not in everything


# -- talking back -------------------------------------------------------------------------


def write_wav(path: Path, pcm: NDArray[np.int16], rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())


async def test_play_sends_a_wav_play_audio_and_records_play_done(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.wav"
    write_wav(prompt, signal_pcm(0.3, 16000, 1, seed=4)[:, 0], 16000)
    out = tmp_path / "out"
    async with Receiver(out, play=prompt) as rx, sender(rx.url) as ws:
        await ws.send(json.dumps(metadata("CA-play")))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["type"] == "playAudio"
        assert frame["data"]["audioContentType"] == "wav"
        assert base64.b64decode(frame["data"]["audioContent"]) == prompt.read_bytes()
        done = {"type": "playDone", "data": {"playbackSeconds": 0, "playbackMilliseconds": 300}}
        await ws.send(json.dumps(done))
        assert await rx.wait_for_text("CA-play", "playDone", timeout=5) == done
        await ws.close()
        [call] = await rx.wait_for_calls(1, timeout=5)
    assert call.violations == []
    sent = [e for e in events(call) if e["kind"] == "sent"]
    assert sent[0]["message"]["type"] == "playAudio"
    assert "base64 chars" in sent[0]["message"]["data"]["audioContent"]  # not the payload
    assert any(e.get("message") == done for e in events(call))


def write_flac_tone(path: Path, freq: float, seconds: float, rate: int) -> None:
    import av

    pcm = (8000 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.int16)
    with av.open(str(path), "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_play_of_a_non_wav_file_is_sent_as_raw_l16_at_8000(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    write_flac_tone(path, 440.0, 0.5, 16000)
    message = load_play_message(path)
    data = message["data"]
    assert (data["audioContentType"], data["sampleRate"]) == ("raw", 8000)
    pcm = np.frombuffer(base64.b64decode(data["audioContent"]), dtype="<i2")
    assert abs(len(pcm) - 4000) < 200
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    assert np.fft.rfftfreq(len(pcm), 1 / 8000)[np.argmax(spectrum)] == pytest.approx(440, abs=5)


def test_play_of_an_unreadable_file_names_it(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(ValueError, match=r"junk\.bin"):
        load_play_message(junk)
    with pytest.raises(ValueError, match=r"missing\.wav"):
        load_play_message(tmp_path / "missing.wav")
    damaged = tmp_path / "damaged.wav"  # chunk sizes past the end: the stdlib raised RuntimeError
    damaged.write_bytes(b"RIFF\x10\0\0\0WAVEjunkjunk")
    with pytest.raises(ValueError, match=r"damaged\.wav: not a playable WAV file"):
        load_play_message(damaged)


async def test_send_on_open_and_send_reach_the_sender(tmp_path: Path) -> None:
    hello = {"type": "mark", "data": {"name": "m1"}}
    async with Receiver(tmp_path, send_on_open=[hello]) as rx, sender(rx.url) as ws:
        await ws.send(json.dumps(metadata("CA-send")))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == hello
        await rx.wait_for_open(1, timeout=5)
        await rx.send("CA-send", {"type": "killAudio"})
        await rx.send("CA-send", b"\x01\x00" * 160)
        await rx.send("CA-send", "{broken")
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "killAudio"}
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x01\x00" * 160
        assert await asyncio.wait_for(ws.recv(), 5) == "{broken"
        with pytest.raises(LookupError, match="CA-nobody"):
            await rx.send("CA-nobody", {"type": "disconnect"})
        await rx.close_call("CA-send", 1000, "done")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1000
    [call] = rx.calls
    assert call.closed_by == "receiver" and call.close_code == 1000


async def test_wait_for_calls_times_out_with_a_useful_message(tmp_path: Path) -> None:
    async with Receiver(tmp_path) as rx:
        with pytest.raises(TimeoutError, match="0 call"):
            await rx.wait_for_calls(1, timeout=0.1)


# -- slow and impatient receivers -----------------------------------------------------------


async def test_stall_stops_reading_until_resumed(tmp_path: Path) -> None:
    chunk = b"\x00\x01" * 16000  # 32 kB messages fill the buffers quickly
    async with Receiver(tmp_path, stall=True) as rx, sender(rx.url) as ws:
        await ws.send(json.dumps(metadata("CA-stall", 16000, "stereo")))
        await rx.wait_for_open(1, timeout=5)
        sent, blocked = 0, False
        while sent < 64 * 2**20:  # bounded: the kernel buffers are a few MB at most
            try:
                await asyncio.wait_for(ws.send(chunk), 0.5)
            except TimeoutError:
                blocked = True
                break
            sent += len(chunk)
        assert blocked, "the sender's buffer never filled"
        call = rx.call("CA-stall")
        assert call.frames == 0 and not call.closed
        rx.resume("CA-stall")
        await rx.wait_for_audio("CA-stall", sent / 64000 / 2, timeout=10)
    assert call.frames > 0


async def test_shutdown_while_stalled_still_finishes_the_files(tmp_path: Path) -> None:
    async with Receiver(tmp_path, stall=True) as rx, sender(rx.url) as ws:
        await ws.send(json.dumps(metadata("CA-stuck")))
        await ws.send(b"\x00" * 320)
        await rx.wait_for_open(1, timeout=5)
        await rx.close()
    [call] = rx.calls
    assert call.closed
    assert json.loads(call.json_path.read_text())["summary"]["closeCode"] == 1006
    assert events(call)[-1]["kind"] == "close"


async def test_close_after_closes_with_1000_after_that_much_audio(tmp_path: Path) -> None:
    pcm = signal_pcm(3.0, 8000, 1, seed=8)
    async with Receiver(tmp_path, close_after=0.5) as rx:
        async with sender(rx.url) as ws:
            await ws.send(json.dumps(metadata("CA-short")))
            with pytest.raises(ConnectionClosed):
                for frame in frames_20ms(pcm, 8000):
                    await ws.send(frame)
                    await asyncio.sleep(0.001)  # let the receiver read as it goes
                await asyncio.wait_for(ws.recv(), 5)
        [call] = await rx.wait_for_calls(1, timeout=5)
    assert ws.close_code == 1000
    assert (call.close_code, call.closed_by) == (1000, "receiver")
    assert 0.5 <= call.seconds < 3.0
    np.testing.assert_array_equal(call.audio, pcm[: len(call.audio)])


async def test_shutdown_closes_live_calls_with_1001(tmp_path: Path) -> None:
    async with Receiver(tmp_path) as rx, sender(rx.url) as ws:
        await ws.send(json.dumps(metadata("CA-going")))
        await rx.wait_for_open(1, timeout=5)
        await rx.close()
        assert ws.close_code == 1001
    assert rx.calls[0].closed and rx.calls[0].closed_by == "receiver"


# -- the command line -------------------------------------------------------------------------


def test_listen_and_auth_arguments() -> None:
    assert parse_listen("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    for bad in ("8765", "host:port", "1.2.3.4:70000", "::1:80"):
        with pytest.raises(ValueError, match="--listen"):
            parse_listen(bad)
    assert parse_auth("user:pa:ss") == ("user", "pa:ss")
    with pytest.raises(ValueError, match="--auth") as err:
        parse_auth("justapassword")
    assert "justapassword" not in str(err.value)


def test_run_receiver_refuses_bad_arguments_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_receiver("nonsense", str(tmp_path), None, None) == 2
    assert "--listen" in capsys.readouterr().err
    assert run_receiver("127.0.0.1:0", str(tmp_path), None, str(tmp_path / "nope.wav")) == 2
    assert "nope.wav" in capsys.readouterr().err


_DIRECT = (
    "import sys; from mediaserver.logs import configure_logging; "
    "from mediaserver.receiver import run_receiver; configure_logging('INFO', json=True); "
    "sys.exit(run_receiver(sys.argv[1], sys.argv[2], None, None))"
)


@pytest.mark.parametrize("entry", ["cli", "run_receiver"])
async def test_the_receiver_process_records_a_call_and_exits_on_sigterm(
    tmp_path: Path, entry: str
) -> None:
    out = tmp_path / "rx"
    if entry == "cli":
        argv = [sys.executable, "-m", "mediaserver.cli", "receiver"]
        argv += ["--listen", "127.0.0.1:0", "--out", str(out)]
    else:
        argv = [sys.executable, "-c", _DIRECT, "127.0.0.1:0", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        if entry == "cli" and not line:
            err = (await asyncio.wait_for(proc.stderr.read(), 5)).decode()
            if "not yet available" in err:
                pytest.skip("the CLI's receiver subcommand is not wired to run_receiver yet")
        match = re.search(r"ws://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        pcm = signal_pcm(0.5, 16000, 2, seed=12)
        await stream_call(match.group(0), metadata("CA-cli", 16000, "stereo"), pcm, dtmf_at=3)
        summary = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert "CA-cli" in summary and "0.50 s" in summary and "CA-cli.wav" in summary
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    params, audio = read_wav(out / "CA-cli.wav")
    assert (params.nchannels, params.framerate) == (2, 16000)
    np.testing.assert_array_equal(audio, pcm)
    saved = json.loads((out / "CA-cli.json").read_text())
    assert saved["metadata"]["callSid"] == "CA-cli" and saved["summary"]["closeCode"] == 1000
    lines = (out / "CA-cli.events.jsonl").read_text().splitlines()
    assert any(json.loads(x).get("message", {}).get("event") == "dtmf" for x in lines)
