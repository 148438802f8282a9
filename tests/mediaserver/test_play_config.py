"""play and config verbs on simulated calls, observed through a background fork."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from dsp.tones import tone
from mediaserver.harness import run_call
from mediaserver.receiver import Receiver

SPEED = 10.0


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def peak_hz(x: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x.astype(np.float64)))) * rate / x.size)


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    async with Receiver(tmp_path / "rx") as rx:
        yield rx


@pytest.fixture
async def prompt_server(tmp_path: Path) -> AsyncIterator[str]:
    wav = write_wav(tmp_path / "served.wav", tone(900.0, 0.8, -10.0, rate=16000), 16000)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/prompt.wav":
            return web.FileResponse(wav)
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_play_file_and_url_reach_the_caller_in_order(
    tmp_path: Path, receiver: Receiver, prompt_server: str
) -> None:
    local = write_wav(tmp_path / "local.wav", tone(500.0, 0.6, -10.0), 8000)
    app = [
        {"verb": "config", "listen": {"url": receiver.url, "mixType": "stereo"}},
        {"verb": "play", "url": str(local)},
        {"verb": "play", "url": f"{prompt_server}/missing.wav"},  # logged, call goes on
        {"verb": "play", "url": [f"{prompt_server}/prompt.wav"], "loop": 2},
    ]
    result = await run_call(app, caller="silence:10", speed=SPEED)
    assert result.reason == "app-done"
    (rx,) = await receiver.wait_for_calls(1)
    right = rx.audio[:, 1]
    loud = np.flatnonzero(np.abs(right.astype(np.int32)) > 300)
    start = int(loud[0])
    assert abs(peak_hz(right[start : start + 4000], 8000) - 500) < 5  # the file first
    later = right[start + 5200 :]
    second = int(np.flatnonzero(np.abs(later.astype(np.int32)) > 300)[0])
    assert abs(peak_hz(later[second : second + 6000], 8000) - 900) < 5  # then the URL
    assert loud.size >= 0.9 * (0.6 + 2 * 0.8) * 8000  # both loops of the URL prompt


async def test_config_listen_runs_in_the_background_until_disabled(receiver: Receiver) -> None:
    app = [
        {"verb": "config", "listen": {"url": receiver.url}},
        {"verb": "pause", "length": 1},
        {"verb": "config", "listen": {"enable": False}},
        {"verb": "pause", "length": 1},
    ]
    result = await run_call(app, caller="tone:440:5", speed=SPEED)
    assert result.reason == "app-done"
    (rx,) = await receiver.wait_for_calls(1)
    assert rx.close_code == 1000
    assert 0.8 <= rx.seconds <= 1.1  # only while the fork was enabled
    assert [r["reason"] for r in result.listens] == ["stopped"]
