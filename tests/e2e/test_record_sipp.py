"""SIPp uac_pcap -> serve running both recording dialects on one call: the Kazoo
upload and the SignalWire file served by the admin endpoint, against real HTTP."""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiohttp import web

from tests.e2e.harness import Server, run_sipp
from tests.e2e.test_listen_sipp import best_correlation
from tests.e2e.test_serve_sipp import capture_audio


class Hooks:
    def __init__(self) -> None:
        self.uploads: list[tuple[str, str, bytes]] = []
        self.statuses: list[dict[str, Any]] = []

    async def upload(self, request: web.Request) -> web.Response:
        self.uploads.append(
            (request.path, request.headers.get("Content-Type", ""), await request.read())
        )
        return web.Response(status=200)

    async def status(self, request: web.Request) -> web.Response:
        self.statuses.append(await request.json())
        return web.Response(status=204)

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_put("/rec/{name}", self.upload)
        app.router.add_post("/status", self.status)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def decode_mono_8k(data: bytes) -> np.ndarray:
    """Any uploaded file, decoded by PyAV (FFmpeg) to one channel at 8 kHz: the left one."""
    out = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16p", rate=8000)
        for frame in container.decode(stream):
            for res in resampler.resample(frame):
                out.append(res.to_ndarray()[0])
        for res in resampler.resample(None):
            out.append(res.to_ndarray()[0])
    return np.concatenate(out)


def wav(data: bytes) -> tuple[int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return w.getframerate(), pcm.reshape(-1, w.getnchannels())


async def test_kazoo_and_signalwire_recordings_of_a_sipp_call(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        f'[recording]\ndirectory = "{tmp_path / "rec"}"\n'
        f'spool_directory = "{tmp_path / "spool"}"\nretry_delay = 0.1\n'
    )
    hooks = Hooks()
    async with hooks as base:
        app = [
            {"record_call": {"control_id": "sw-1", "stereo": True, "status_url": f"{base}/status"}},
            {"module": "record_call", "data": {"format": "mp3", "url": f"{base}/rec"}},
            {"verb": "pause", "length": 30},
        ]
        with Server(tmp_path, app, "--config", str(config)) as server:
            res = await asyncio.to_thread(run_sipp, tmp_path, server, "-sn", "uac_pcap", "-m", "1")
            assert res.returncode == 0, res.stdout[-2000:]
            for _ in range(200):  # uploads and status events follow the BYE
                if hooks.uploads and len(hooks.statuses) == 2:
                    break
                await asyncio.sleep(0.05)
            assert [s["params"]["state"] for s in hooks.statuses] == ["recording", "finished"]
            record = hooks.statuses[1]["params"]["record"]
            async with aiohttp.ClientSession() as session:
                async with session.get(record["url"]) as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"] == "audio/wav"
                    served = await resp.read()
                missing = record["url"].rsplit("/", 1)[0] + "/..%2Fserver.toml"
                async with session.get(missing) as resp:
                    assert resp.status == 404
    expected = capture_audio()
    # SignalWire: stereo at the leg's rate, served at record.url; left = the caller
    assert len(served) == record["size"] and record["format"] == "wav"
    rate, pcm = wav(served)
    assert rate == 8000 and pcm.shape[1] == 2
    assert best_correlation(pcm[:, 0], expected) > 0.9
    # Kazoo: PUT to URL/call_recording_<Call-ID>.mp3, stereo 16 kHz by default
    ((path, content_type, body),) = hooks.uploads
    assert path.startswith("/rec/call_recording_") and path.endswith(".mp3")
    assert content_type == "audio/mpeg"
    with av.open(io.BytesIO(body)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels) == (16000, 2)
        assert container.duration is not None  # the container says how long it is
        seconds = container.duration / 1e6
    caller = decode_mono_8k(body)
    assert best_correlation(caller, expected) > 0.8  # lossy at telephony bit rates
    assert abs(caller.size / 8000 - record["duration"]) < 0.3
    assert abs(seconds - record["duration"]) < 0.3


async def test_kazoo_record_on_bridge_starts_when_dial_bridges(tmp_path: Path) -> None:
    from dsp.tones import tone
    from tests.e2e.phone import call_serve
    from tests.e2e.test_dial_sipp import start_callee

    config = tmp_path / "server.toml"
    config.write_text(
        f'[recording]\ndirectory = "{tmp_path / "rec"}"\n'
        f'spool_directory = "{tmp_path / "spool"}"\nstore_recordings = true\n'
    )
    callee, callee_port = start_callee(tmp_path)
    try:
        app = [
            {"module": "record_call", "data": {"format": "wav", "record_on_bridge": True}},
            {"verb": "pause", "length": 2},
            {
                "verb": "dial",
                "target": [{"type": "sip", "sipUri": f"sip:b@127.0.0.1:{callee_port}"}],
            },
        ]
        with Server(tmp_path, app, "--config", str(config)) as server:
            await asyncio.to_thread(
                call_serve, "127.0.0.1", server.sip_port, tone(600.0, 9.0, -10.0), seconds=8.5
            )
            server.wait_for("record_call.delivered", timeout=15)
        assert await asyncio.to_thread(callee.wait, 15) == 0
    finally:
        if callee.poll() is None:
            callee.kill()
    (stored,) = (tmp_path / "rec").glob("call_recording_*.wav")
    rate, pcm = wav(stored.read_bytes())
    assert (rate, pcm.shape[1]) == (16000, 2)
    # started at the bridge, not with the verb: the 2 s pause and the dial's setup are not in it
    assert pcm.shape[0] / rate < 6.6
    left = pcm[:, 0].astype(np.float64)
    assert abs(np.argmax(np.abs(np.fft.rfft(left))) * rate / left.size - 600) < 5  # the caller
    assert best_correlation(pcm[::2, 1], capture_audio()) > 0.9  # right: the callee, bridged


async def test_sigterm_spools_failed_uploads_and_the_next_start_delivers_them(
    tmp_path: Path,
) -> None:
    """Nothing is lost: uploads failing at shutdown stay in the spool; the next
    serve sends them."""
    import signal

    from tests.e2e.test_operations import SCENARIOS

    calls = 4
    config = tmp_path / "server.toml"
    config.write_text(
        f'[calls]\ndrain_seconds = 3\n[recording]\ndirectory = "{tmp_path / "rec"}"\n'
        f'spool_directory = "{tmp_path / "spool"}"\nretries = 1\nretry_delay = 0.2\n'
    )
    received: list[bytes] = []
    accept = False

    async def upload(request: web.Request) -> web.Response:
        body = await request.read()
        if not accept:
            return web.Response(status=503)
        received.append(body)
        return web.Response(status=201)

    app_ = web.Application()
    app_.router.add_put("/rec/{name}", upload)
    runner = web.AppRunner(app_)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    app = [
        {"module": "record_call", "data": {"format": "wav", "url": f"{base}/rec"}},
        {"verb": "pause", "length": 60},
    ]
    try:
        with Server(tmp_path, app, "--config", str(config)) as server:
            sipp = asyncio.create_task(
                asyncio.to_thread(
                    run_sipp, tmp_path, server, "-sf", str(SCENARIOS / "server_bye.xml"),
                    "-m", str(calls), "-l", str(calls), "-r", str(calls), timeout=45,
                )
            )  # fmt: skip
            # blocking waits go to a thread: the loop must start SIPp meanwhile
            await asyncio.to_thread(server.wait_for, "record_call.started", calls, 20)
            await asyncio.sleep(1.5)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(server.proc.wait, 20) == 0
            await sipp
        assert received == []
        spooled = sorted((tmp_path / "spool").glob("*.wav"))
        assert len(spooled) == calls  # every recording kept, none uploaded
        accept = True
        (tmp_path / "dumps").mkdir(exist_ok=True)
        with Server(tmp_path, app, "--config", str(config)) as again:
            for _ in range(200):
                if len(received) == calls:
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(again.wait_for, "serve.listening")
    finally:
        await runner.cleanup()
    assert len(received) == calls  # the next start delivered every spooled file
    for body in received:
        rate, pcm = wav(body)
        assert rate == 16000 and pcm.shape[1] == 2 and pcm.shape[0] / rate > 1.0
    assert list((tmp_path / "spool").glob("*.wav")) == []
