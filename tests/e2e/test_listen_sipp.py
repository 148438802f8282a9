"""SIPp uac_pcap -> serve -> listen -> the reference receiver, with a real hook server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from dsp.resample import Resampler
from mediaserver.receiver import Receiver
from tests.e2e.harness import Server, run_sipp
from tests.e2e.test_serve_sipp import capture_audio


class HookServer:
    """A real HTTP actionHook endpoint that records payloads and answers with verbs."""

    def __init__(self, answer: list[dict[str, Any]]) -> None:
        self.answer = answer
        self.payloads: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.payloads.append(await request.json())
        return web.json_response(self.answer)

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/listen-done"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    async with Receiver(tmp_path / "rx") as rx:
        yield rx


def best_correlation(got: np.ndarray, sent: np.ndarray) -> float:
    x, y = got.astype(np.float64), sent.astype(np.float64)
    n = min(x.size, y.size)
    size = 1 << int(np.ceil(np.log2(x.size + n)))
    cc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y[:n], size)), size)
    lag = int(np.argmax(cc[: x.size - n // 2]))
    m = min(x.size - lag, n)
    seg, ref = x[lag : lag + m], y[:m]
    return float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref)))


async def test_stereo_fork_of_a_sipp_call_with_pass_dtmf(
    tmp_path: Path, receiver: Receiver
) -> None:
    hooks = HookServer([])
    async with hooks as hook_url:
        listen = {"verb": "listen", "url": receiver.url, "mixType": "stereo", "sampleRate": 16000}
        listen.update(passDtmf=True, actionHook=hook_url, metadata={"campaign": "e2e"})
        app = [listen]
        with Server(tmp_path, app) as server:
            res = await asyncio.to_thread(run_sipp, tmp_path, server, "-sn", "uac_pcap", "-m", "1")
            assert res.returncode == 0, res.stdout[-2000:]
            (rx,) = await receiver.wait_for_calls(1, timeout=15)
            for _ in range(100):
                if hooks.payloads:
                    break
                await asyncio.sleep(0.05)
    meta = rx.metadata
    assert (meta["sampleRate"], meta["mixType"], meta["campaign"]) == (16000, "stereo", "e2e")
    assert (meta["from"], meta["to"], meta["direction"]) == ("sipp", "service", "inbound")
    assert rx.close_code == 1000 and rx.violations == []
    assert rx.frames_of("dtmf") == [{"event": "dtmf", "dtmf": "1", "duration": "2240"}]
    expected = Resampler(1, 8000, 16000).process_int16(capture_audio()[None, :])[0]
    assert best_correlation(rx.audio[:, 0], expected) >= 0.95
    (payload,) = hooks.payloads
    assert payload["call_sid"] == meta["callSid"] and payload["call_id"] == meta["callId"]
    assert payload["reason"] == "hangup"
    assert payload["frames_dropped"] == 0
    assert payload["duration"] == pytest.approx(rx.seconds, abs=0.1)


async def test_finish_on_key_ends_the_fork_and_the_hook_verbs_continue_the_call(
    tmp_path: Path, receiver: Receiver
) -> None:
    hooks = HookServer([{"verb": "pause", "length": 30}])
    async with hooks as hook_url:
        app = [{"verb": "listen", "url": receiver.url, "finishOnKey": "1",
                "actionHook": hook_url}, {"verb": "hangup"}]  # fmt: skip
        with Server(tmp_path, app) as server:
            res = await asyncio.to_thread(run_sipp, tmp_path, server, "-sn", "uac_pcap", "-m", "1")
            assert res.returncode == 0, res.stdout[-2000:]  # the caller, not us, hung up
            (rx,) = await receiver.wait_for_calls(1, timeout=15)
            end = server.wait_for("call.end")[0]
    (payload,) = hooks.payloads
    assert (payload["reason"], payload["digits"]) == ("finishOnKey", "1")
    assert rx.close_code == 1000
    assert end["reason"] == "hangup"  # the hook's pause replaced the app's hangup verb
    verbs = [(e["verb"], e["index"]) for e in server.events("verb.start")]
    assert verbs == [("listen", 0), ("pause", 0)]
