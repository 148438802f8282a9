"""mediaserver call: scripted calls through the real receive path into a real receiver."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from mediaserver.harness import (
    CallScript,
    HarnessError,
    load_source,
    run_call,
    run_calls,
    scripted_call,
)
from mediaserver.receiver import Receiver

SPEED = 10.0


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    async with Receiver(tmp_path / "rx") as rx:
        yield rx


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    espeak = shutil.which("espeak-ng")
    assert espeak, "espeak-ng missing: scripts/test.sh installs it"
    path = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run([espeak, "-w", str(path), "Hello, this is a scripted call for testing."],
                   check=True, timeout=30)  # fmt: skip
    return path


def peak_hz(x: np.ndarray, rate: int) -> float:
    x = x.astype(np.float64)
    return float(np.argmax(np.abs(np.fft.rfft(x))) * rate / x.size)


def best_correlation(got: np.ndarray, sent: np.ndarray, max_shift: int = 8000) -> float:
    """Normalised correlation at the best alignment, either direction.

    The fork may start after the caller (audio before the socket opened is
    discarded, as the real sender does), or lag it (jitter buffer).
    """
    x, y = got.astype(np.float64), sent.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(x.size + y.size)))
    cc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)
    lags = np.r_[np.arange(0, max_shift), np.arange(-max_shift, 0)]
    lag = int(lags[np.argmax(np.r_[cc[:max_shift], cc[-max_shift:]])])
    seg, ref = (x[lag:], y) if lag >= 0 else (x, y[-lag:])
    m = min(seg.size, ref.size)
    seg, ref = seg[:m], ref[:m]
    return float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref)))


async def test_file_caller_reaches_the_receiver_intact(
    receiver: Receiver, speech_wav: Path
) -> None:
    result = await run_call(receiver.url, caller=str(speech_wav), speed=SPEED)
    (rx,) = await receiver.wait_for_calls(1)
    assert result.reason == "hangup"
    assert rx.close_code == 1000 and rx.violations == []
    sent = load_source(str(speech_wav), 8000)
    assert best_correlation(rx.audio[:, 0], sent) >= 0.95
    assert result.frames_sent == rx.frames and result.frames_dropped == 0


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722", "OPUS", "L16"])
async def test_every_codec_carries_the_caller_audio(receiver: Receiver, codec: str) -> None:
    app = [{"verb": "listen", "url": receiver.url, "sampleRate": 16000}]
    result = await run_call(app, caller="tone:600:2", codec=codec, speed=SPEED)
    (rx,) = await receiver.wait_for_calls(1)
    assert result.reason in ("hangup", "app-done")
    assert peak_hz(rx.audio[3200:20000, 0], 16000) == pytest.approx(600, abs=3)
    sent = load_source("tone:600:2", 16000)
    assert best_correlation(rx.audio[:, 0], sent) >= 0.95


async def test_stereo_right_channel_is_the_callee(receiver: Receiver) -> None:
    app = [{"verb": "listen", "url": receiver.url, "mixType": "stereo"}]
    await run_call(app, caller="tone:500:2", callee="tone:1300:2", speed=SPEED)
    (rx,) = await receiver.wait_for_calls(1)
    assert peak_hz(rx.audio[2000:12000, 0], 8000) == pytest.approx(500, abs=3)
    assert peak_hz(rx.audio[2000:12000, 1], 8000) == pytest.approx(1300, abs=3)


@pytest.mark.parametrize("mode", ["rfc4733", "inband"])
async def test_key_presses_reach_pass_dtmf_once_each(receiver: Receiver, mode: str) -> None:
    app = [{"verb": "listen", "url": receiver.url, "passDtmf": True}]
    result = await run_call(app, caller="silence:3", dtmf="4@0.5,#@1.2,9@2",
                            dtmf_mode=mode, speed=SPEED)  # fmt: skip
    (rx,) = await receiver.wait_for_calls(1)
    assert result.digits == "4#9"
    assert [f["dtmf"] for f in rx.frames_of("dtmf")] == ["4", "#", "9"]
    for frame in rx.frames_of("dtmf"):
        assert isinstance(frame["duration"], str)
        assert 700 <= int(frame["duration"]) <= 900  # 100 ms presses in 8 kHz units


@pytest.fixture
async def hook_url() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response([])

    app = web.Application()
    app.router.add_post("/done", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/done", seen
    await runner.cleanup()


async def test_max_length_follows_media_time_and_hook_gets_the_result(
    receiver: Receiver, hook_url: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = hook_url
    app = [{"verb": "listen", "url": receiver.url, "maxLength": 2, "actionHook": url}]
    result = await run_call(app, caller="tone:440:6", speed=20.0)
    assert result.reason == "app-done"  # verbs ran out before the caller's 6 s
    assert 2.0 <= result.duration < 6.0  # the hook's round trip counts at 20x too
    (payload,) = result.hook_payloads
    assert seen == [payload]
    assert payload["reason"] == "maxLength" and payload["frames_sent"] == 100
    assert payload["duration"] == 2.0  # media ticks: exact at any speed
    assert payload["call_sid"] == result.call_sid


async def test_concurrent_calls_and_the_context_manager_api(receiver: Receiver) -> None:
    results = await run_calls(receiver.url, CallScript(caller="tone:440:1"), calls=4,
                              speed=SPEED)  # fmt: skip
    assert len({r.call_sid for r in results}) == 4
    assert all(r.reason == "hangup" and r.frames_dropped == 0 for r in results)
    async with scripted_call(receiver.url, caller="tone:700:1", speed=SPEED) as call:
        result = await call
    assert result.frames_sent >= 45
    assert len(await receiver.wait_for_calls(5)) == 5


def test_bad_scripts_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="--dtmf"):
        CallScript(dtmf="x@1").check() or run_calls_sync("ws://127.0.0.1:9/", dtmf="x@1")
    with pytest.raises(HarnessError, match="--caller: no such file"):
        load_source(str(tmp_path / "missing.wav"), 8000)
    with pytest.raises(HarnessError, match="--codec: choose from"):
        CallScript(codec="GSM").check()
    with pytest.raises(HarnessError, match="--callee: expected tone"):
        load_source("tone:abc", 8000, "--callee")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....not audio")
    with pytest.raises(HarnessError, match="cannot read audio"):
        load_source(str(broken), 8000)


def run_calls_sync(app: str, **script: Any) -> None:
    import asyncio

    asyncio.run(run_calls(app, CallScript(**script)))


def test_cli_prints_one_json_object_last(tmp_path: Path) -> None:
    app = tmp_path / "app.json"
    app.write_text(json.dumps([{"verb": "pause", "length": 1}]))
    res = subprocess.run(
        [sys.executable, "-m", "mediaserver.cli", "--log-level", "WARNING", "call", str(app),
         "--caller", "tone:440:3", "--dtmf", "7@0.5", "--speed", "20", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["reason"] == "app-done" and summary["digits"] == "7"
    assert summary["duration"] == pytest.approx(1.0, abs=0.2)
    bad = subprocess.run(
        [sys.executable, "-m", "mediaserver.cli", "call", str(app), "--caller", "nope.wav"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "--caller: no such file 'nope.wav'" in bad.stderr


def test_wav_written_by_the_receiver_cli_is_valid(tmp_path: Path) -> None:
    """The receiver CLI and the call CLI together: the README's demo flow."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rx"
    rx = subprocess.Popen([sys.executable, "-m", "mediaserver.cli", "receiver",
                           "--listen", f"127.0.0.1:{port}", "--out", str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert rx.stdout is not None
        assert "listening" in rx.stdout.readline()
        res = subprocess.run(
            [sys.executable, "-m", "mediaserver.cli", "--log-level", "WARNING", "call",
             f"ws://127.0.0.1:{port}/", "--caller", "tone:440:2", "--speed", "10", "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        call_sid = json.loads(res.stdout.strip().splitlines()[-1])["call_sid"]
        for _ in range(100):
            if (out / f"{call_sid}.json").exists():
                break
            import time

            time.sleep(0.05)
        with wave.open(str(out / f"{call_sid}.wav")) as w:
            assert (w.getnchannels(), w.getframerate()) == (1, 8000)
            assert w.getnframes() >= 8000 * 1.8
    finally:
        rx.terminate()
        rx.wait(10)


async def test_hook_server_down_is_logged_and_the_call_goes_on(receiver: Receiver) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/done"
    app = [{"verb": "listen", "url": receiver.url, "maxLength": 0.5, "actionHook": dead},
           {"verb": "pause", "length": 0.5}]  # fmt: skip
    result = await run_call(app, caller="tone:440:3", speed=SPEED)
    assert result.reason == "app-done"  # the pause after the failed hook still ran
    assert result.hook_payloads[0]["reason"] == "maxLength"


async def test_bad_listen_is_reported_to_its_hook_and_the_call_goes_on(
    hook_url: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = hook_url
    app = [{"verb": "listen", "url": "ws://127.0.0.1:9/", "sampleRate": 11025, "actionHook": url},
           {"verb": "pause", "length": 0.5}]  # fmt: skip
    result = await run_call(app, caller="tone:440:3", speed=SPEED)
    assert result.reason == "app-done"
    (payload,) = seen
    assert payload["reason"] == "error"
    assert "sampleRate: must be one of 8000, 16000" in payload["error"]


async def test_stream_is_a_synonym_of_listen(receiver: Receiver) -> None:
    result = await run_call([{"verb": "stream", "url": receiver.url, "maxLength": 0.5}],
                            caller="tone:440:2", speed=SPEED)  # fmt: skip
    (rx,) = await receiver.wait_for_calls(1)
    assert result.listens[0]["reason"] == "maxLength"
    assert rx.frames == 25
