"""The recording verbs on simulated calls: Kazoo uploads and SignalWire status events
against a real HTTP server on loopback, real files decoded back."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from mediaserver.harness import run_call
from mediaserver.receiver import Receiver
from mediaserver.recording_delivery import RecordingStore

SPEED = 10.0


@dataclass
class Hooks:
    """An HTTP server that keeps every request: uploads, status events, action hooks."""

    url: str = ""
    uploads: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    fail_uploads: int = 0

    async def upload(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail_uploads > 0:
            self.fail_uploads -= 1
            return web.Response(status=503)
        self.uploads.append(
            (request.method, request.path_qs, request.headers.get("Content-Type", ""), body)
        )
        return web.Response(status=201)

    async def status(self, request: web.Request) -> web.Response:
        self.statuses.append(await request.json())
        return web.Response(status=200)

    async def action(self, request: web.Request) -> web.Response:
        self.actions.append(await request.json())
        return web.json_response([])


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    h = Hooks()
    app = web.Application()
    app.router.add_route("PUT", "/rec/{name}", h.upload)
    app.router.add_route("POST", "/rec/{name}", h.upload)
    app.router.add_post("/status", h.status)
    app.router.add_post("/action", h.action)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    h.url = f"http://127.0.0.1:{port}"
    try:
        yield h
    finally:
        await runner.cleanup()


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(
        directory=str(tmp_path / "recordings"),
        spool_directory=str(tmp_path / "spool"),
        retries=2,
        retry_delay=0.05,
    )


def wav_channels(data: bytes) -> tuple[int, int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return rate, channels, pcm.reshape(-1, channels)


def peak_hz(x: np.ndarray, rate: int) -> float:
    x = x.astype(np.float64)
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate / x.size)


# -- Kazoo ------------------------------------------------------------------------------


async def test_kazoo_records_stereo_and_puts_the_file_at_hangup(
    hooks: Hooks, store: RecordingStore
) -> None:
    app = [
        {"module": "record_call", "data": {"format": "wav", "url": f"{hooks.url}/rec/"}},
        {"verb": "pause", "length": 1.5},
    ]
    result = await run_call(
        app, caller="tone:440:3", callee="tone:1000:3", speed=SPEED, recording_store=store
    )
    assert [r["cause"] for r in result.recordings] == ["success-hangup"]
    (upload,) = hooks.uploads
    method, path, content_type, body = upload
    call_id = result.call_sid + "@mediaserver-call"
    assert method == "PUT" and content_type == "audio/wav"
    assert path.startswith(f"/rec/call_recording_{call_id}.wav?")  # + Kazoo's query
    assert "call_id=" in path and "from=" in path
    rate, channels, pcm = wav_channels(body)
    assert (rate, channels) == (16000, 2)  # Kazoo: stereo, 16 kHz
    assert 1.3 <= pcm.shape[0] / rate <= 1.7  # from the verb to the hangup after the pause
    assert abs(peak_hz(pcm[:, 0], rate) - 440) < 10  # left: what the caller says
    assert abs(peak_hz(pcm[:, 1], rate) - 1000) < 10  # right: what the caller hears
    assert not any(store.spool_path.iterdir())  # delivered: nothing left behind


async def test_kazoo_stop_action_and_post_method(hooks: Hooks, store: RecordingStore) -> None:
    app = [
        {
            "module": "record_call",
            "data": {
                "format": "mp3",
                "url": f"{hooks.url}/rec",
                "method": "post",
                "stereo": False,
            },
        },
        {"verb": "pause", "length": 1},
        {"module": "record_call", "data": {"action": "stop"}},
        {"verb": "pause", "length": 1},
    ]
    result = await run_call(app, caller="tone:440:3", speed=SPEED, recording_store=store)
    assert [r["cause"] for r in result.recordings] == ["success-stop"]
    ((method, path, content_type, body),) = hooks.uploads
    assert method == "POST" and content_type == "audio/mpeg"
    assert ".mp3" in path and body[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")
    assert 0.8 <= result.recordings[0]["duration_ms"] / 1000 <= 1.3  # stopped, not at hangup


async def test_kazoo_upload_failures_are_retried_then_delivered(
    hooks: Hooks, store: RecordingStore
) -> None:
    hooks.fail_uploads = 2
    app = [
        {"module": "record_call", "data": {"format": "wav", "url": f"{hooks.url}/rec"}},
        {"verb": "pause", "length": 0.5},
    ]
    await run_call(app, caller="tone:440:2", speed=SPEED, recording_store=store)
    assert len(hooks.uploads) == 1  # the third attempt landed
    assert not any(store.spool_path.iterdir())


async def test_kazoo_upload_that_never_succeeds_stays_in_the_spool(
    hooks: Hooks, store: RecordingStore
) -> None:
    hooks.fail_uploads = 100
    app = [
        {"module": "record_call", "data": {"format": "wav", "url": f"{hooks.url}/rec"}},
        {"verb": "pause", "length": 0.5},
    ]
    await run_call(app, caller="tone:440:2", speed=SPEED, recording_store=store)
    assert hooks.uploads == []
    kept = sorted(p.suffix for p in store.spool_path.iterdir())
    assert kept == [".json", ".wav"]  # the audio and why it is still there
    job = json.loads(next(store.spool_path.glob("*.json")).read_text())
    assert job["state"] == "failed"


async def test_kazoo_without_url_stores_with_metadata_and_min_sec_discards(
    tmp_path: Path,
) -> None:
    store = RecordingStore(
        directory=str(tmp_path / "rec"), spool_directory=str(tmp_path / "sp"), store_recordings=True
    )
    app = [
        {"module": "record_call", "data": {"format": "wav", "label": "lab", "stereo": False}},
        {"verb": "pause", "length": 1},
    ]
    result = await run_call(app, caller="tone:440:2", speed=SPEED, recording_store=store)
    call_id = result.call_sid + "@mediaserver-call"
    audio = store.recordings_path / f"call_recording_{call_id}.wav"
    meta = json.loads(audio.with_name(audio.name + ".json").read_text())
    assert meta["call_id"] == call_id and meta["content_type"] == "audio/wav"
    assert meta["origin"] == "callflow : lab" and meta["url"] is None
    rate, channels, _ = wav_channels(audio.read_bytes())
    assert (rate, channels) == (8000, 1)  # mono defaults to 8 kHz

    short = [
        {"module": "record_call", "data": {"format": "wav", "record_min_sec": 5}},
        {"verb": "pause", "length": 1},
    ]
    result = await run_call(short, caller="tone:440:2", speed=SPEED, recording_store=store)
    assert result.recordings[0]["cause"] == "input-too-short"
    assert not result.recordings[0]["kept"]
    short_name = f"call_recording_{result.call_sid}@mediaserver-call.wav"
    assert not (store.recordings_path / short_name).exists()


async def test_kazoo_silence_detection_stops_the_recording(
    hooks: Hooks, store: RecordingStore
) -> None:
    app = [
        {
            "module": "record_call",
            "data": {
                "format": "wav",
                "url": f"{hooks.url}/rec",
                "silence_detection": True,
                "silence_initial_timeout": 600,
                "silence_final_timeout": 600,
            },
        },
        {"verb": "pause", "length": 3},
    ]
    result = await run_call(app, caller="silence:4", speed=SPEED, recording_store=store)
    assert result.recordings[0]["cause"] == "no-input-timeout"
    assert 0.5 <= result.recordings[0]["duration_ms"] / 1000 <= 0.8


# -- SignalWire -------------------------------------------------------------------------


async def test_swml_status_events_variables_and_the_served_url(
    hooks: Hooks, store: RecordingStore, tmp_path: Path
) -> None:
    async with Receiver(tmp_path / "rx") as receiver:
        app = [
            {
                "record_call": {
                    "control_id": "rec-1",
                    "stereo": True,
                    "status_url": f"{hooks.url}/status",
                }
            },
            {"verb": "pause", "length": 1},
            {"stop_record_call": {"control_id": "rec-1"}},
            # a later hook sees the recording's variables
            {
                "verb": "listen",
                "url": receiver.url,
                "maxLength": 0.3,
                "actionHook": f"{hooks.url}/action",
            },
        ]
        result = await run_call(
            app, caller="tone:440:3", callee="tone:1000:3", speed=SPEED, recording_store=store
        )
    states = [s["params"]["state"] for s in hooks.statuses]
    assert states == ["recording", "finished"]
    finished = hooks.statuses[1]
    assert finished["event_type"] == "calling.call.record"
    assert finished["params"]["control_id"] == "rec-1"
    record = finished["params"]["record"]
    assert record["format"] == "wav" and 0.8 <= record["duration"] <= 1.3
    name = f"{result.call_sid}-rec-1.wav"
    assert record["url"].endswith(f"/recordings/{name}")
    path = store.recordings_path / name
    assert record["size"] == path.stat().st_size
    rate, channels, pcm = wav_channels(path.read_bytes())
    assert (rate, channels) == (8000, 2)  # the leg's own rate, stereo asked
    assert abs(peak_hz(pcm[:, 0], rate) - 440) < 10
    assert abs(peak_hz(pcm[:, 1], rate) - 1000) < 10
    (action,) = hooks.actions
    assert action["record_control_id"] == "rec-1"
    assert action["record_call_url"] == record["url"]
    assert action["record_call_result"] == "success"
    assert result.variables["record_call_result"] == "success"


async def test_swml_initial_timeout_reports_no_input(hooks: Hooks, store: RecordingStore) -> None:
    app = [
        {"record_call": {"initial_timeout": 0.5, "status_url": f"{hooks.url}/status"}},
        {"verb": "pause", "length": 2},
    ]
    result = await run_call(app, caller="silence:3", speed=SPEED, recording_store=store)
    assert [s["params"]["state"] for s in hooks.statuses] == ["recording", "no_input"]
    assert result.variables["record_call_result"] == "failed"


async def test_swml_terminator_key_and_concurrent_recordings(
    hooks: Hooks, store: RecordingStore
) -> None:
    app = [
        {"record_call": {"control_id": "a", "terminators": "#", "direction": "speak"}},
        {"record_call": {"control_id": "b", "format": "mp4", "direction": "listen"}},
        {"verb": "pause", "length": 2},
        {"stop_record_call": {}},  # the last one started: b
        {"verb": "pause", "length": 0.5},
    ]
    result = await run_call(
        app, caller="tone:440:3", dtmf="#@1.0", speed=SPEED, recording_store=store
    )
    by_id = {r["control_id"]: r for r in result.recordings}
    assert by_id["a"]["cause"] == "success-stop"  # the # key, at ~1 s
    assert 0.8 <= by_id["a"]["duration_ms"] / 1000 <= 1.4
    assert by_id["b"]["cause"] == "success-stop" and by_id["b"]["kept"]
    assert 1.8 <= by_id["b"]["duration_ms"] / 1000 <= 2.3
    assert Path(by_id["b"]["path"]).suffix == ".mp4"


async def test_swml_end_silence_timeout_and_max_length(
    hooks: Hooks, store: RecordingStore, tmp_path: Path
) -> None:
    # speech for 1 s then silence: the end_silence_timeout ends it ~0.6 s later
    speech_then_silence = tmp_path / "caller.wav"
    pcm = np.zeros(8000 * 4, np.int16)
    pcm[:8000] = (8000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.int16)
    with wave.open(str(speech_then_silence), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())
    app = [
        {"record_call": {"control_id": "s", "end_silence_timeout": 0.6}},
        {"record_call": {"control_id": "m", "max_length": 1.5}},
        {"verb": "pause", "length": 3},
    ]
    result = await run_call(
        app, caller=str(speech_then_silence), speed=SPEED, recording_store=store
    )
    by_id = {r["control_id"]: r for r in result.recordings}
    assert by_id["s"]["cause"] == "success-silence"
    assert 1.4 <= by_id["s"]["duration_ms"] / 1000 <= 1.9  # 1 s speech + 0.6 s (+ jitter hold)
    assert by_id["m"]["cause"] == "success-maxtime"
    assert by_id["m"]["duration_ms"] == 1500  # cut at exactly max_length


async def test_swml_direction_picks_the_side_in_mono(store: RecordingStore) -> None:
    app = [
        {"record_call": {"control_id": "speak", "direction": "speak"}},
        {"record_call": {"control_id": "listen", "direction": "listen"}},
        {"record_call": {"control_id": "both", "direction": "both"}},
        {"verb": "pause", "length": 1},
    ]
    result = await run_call(
        app, caller="tone:440:2", callee="tone:1000:2", speed=SPEED, recording_store=store
    )
    spectra = {}
    for rec in result.recordings:
        rate, channels, pcm = wav_channels(Path(rec["path"]).read_bytes())
        assert channels == 1 and rate == 8000
        spectrum = np.abs(np.fft.rfft(pcm[:, 0].astype(np.float64)))
        bins = np.fft.rfftfreq(pcm.shape[0], 1 / rate)
        spectra[rec["control_id"]] = {
            hz: float(spectrum[np.abs(bins - hz) < 15].max()) for hz in (440, 1000)
        }
    assert spectra["speak"][440] > 100 * spectra["speak"][1000]  # only what the caller says
    assert spectra["listen"][1000] > 100 * spectra["listen"][440]  # only what it hears
    both = spectra["both"]
    assert 0.5 < both[440] / both[1000] < 2  # both, mixed


async def test_kazoo_upload_to_a_server_that_is_down_keeps_the_file(
    store: RecordingStore,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/rec"
    app = [
        {"module": "record_call", "data": {"format": "mp4", "url": dead}},
        {"verb": "pause", "length": 0.5},
    ]
    await run_call(app, caller="tone:440:2", speed=SPEED, recording_store=store)
    kept = sorted(p.suffix for p in store.spool_path.iterdir())
    assert kept == [".json", ".mp4"]
    job = json.loads(next(store.spool_path.glob("*.json")).read_text())
    assert job["state"] == "failed" and job["attempts"] == 3  # 1 + 2 retries


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_30_minute_call_records_in_flat_memory(store: RecordingStore) -> None:
    """30 minutes of media as fast as the engine goes (~40x here): the recording
    streams to disk, so RSS after the first minutes stays flat. Keeping the audio
    in memory instead would add 30 min x 8000/s x 2 ch x 2 B = 58 MB."""
    app = [
        {"record_call": {"control_id": "long", "stereo": True}},
        {"verb": "pause", "length": 1800},
    ]
    samples: list[float] = []

    async def sample() -> None:
        while True:
            samples.append(_rss_mb())
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    try:
        result = await run_call(app, caller="silence:1801", speed=1000, recording_store=store)
    finally:
        sampler.cancel()
    (rec,) = result.recordings
    assert rec["cause"] == "success-hangup" and rec["duration_ms"] == 1_800_000
    rate, channels, _ = wav_channels(Path(rec["path"]).read_bytes()[:4096])
    assert (rate, channels) == (8000, 2)
    assert Path(rec["path"]).stat().st_size >= 1800 * 8000 * 2 * 2
    settled = samples[len(samples) // 10 :]  # after the first ~3 minutes of media
    assert len(settled) > 20
    assert max(settled) - settled[0] < 5.0, f"RSS grew: {settled[0]:.1f} -> {max(settled):.1f} MB"


async def test_a_recording_that_cannot_open_reports_error_and_the_call_goes_on(
    hooks: Hooks, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the recordings directory should be")
    store = RecordingStore(directory=str(blocked), spool_directory=str(tmp_path / "spool"))
    app = [
        {"record_call": {"control_id": "x", "status_url": f"{hooks.url}/status"}},
        {"module": "record_call", "data": {"format": "wav"}},
        {"verb": "pause", "length": 0.5},
    ]
    result = await run_call(app, caller="tone:440:2", speed=SPEED, recording_store=store)
    assert result.reason == "hangup" or result.reason == "app-done"
    assert result.recordings == []  # neither could start
    assert result.variables["record_call_result"] == "failed"
    for _ in range(100):
        if hooks.statuses:
            break
        await asyncio.sleep(0.02)
    assert [s["params"]["state"] for s in hooks.statuses] == ["error"]


@dataclass
class _FakeCall:
    """What CallRecordings reads from a call, without SIP or an engine."""

    leg: Any
    call_sid: str = "fake"
    attributes: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    answered_at: float | None = None
    log: Any = field(default_factory=lambda: __import__("structlog").get_logger())


async def test_kazoo_record_on_answer_and_on_bridge_wait_for_their_moment(
    store: RecordingStore,
) -> None:
    from mediaserver.engine import Leg
    from mediaserver.record import CallRecordings, RecordingService

    leg = Leg(call_sid="fake", codec="PCMU/8000", payload_type=0)
    call = _FakeCall(leg)
    recordings = CallRecordings(call, RecordingService(store))
    recordings.kazoo({"format": "wav", "record_on_answer": True}, 0)
    assert recordings.runs == [] and leg.listeners == []  # not answered yet
    call.answered_at = 1.0
    recordings.on_answer()
    assert [r.dialect for r in recordings.runs] == ["kazoo"] and len(leg.listeners) == 1
    tick = np.full(320, 1000, np.int16)  # 20 ms at the recording's 16 kHz
    for _ in range(10):
        recordings.runs[0].recorder.on_audio(tick, tick)
    recordings.kazoo({"action": "stop"}, 1)
    recordings.kazoo({"format": "wav", "record_on_bridge": True}, 2)
    assert len(recordings.runs) == 1  # waits for a bridge, even though answered
    recordings.on_bridge()
    assert len(recordings.runs) == 2 and not recordings.runs[1].recorder.stopped
    for _ in range(10):
        recordings.runs[1].recorder.on_audio(tick, tick)
    recordings.hangup()
    results = await recordings.wait()
    assert [r.cause.value for r in results] == ["success-stop", "success-hangup"]
