"""dial: serve bridges a caller to SIPp as the callee, with a nested stereo listen."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from dsp.tones import tone
from mediaserver.receiver import Receiver
from tests.e2e.harness import SIPP, SIPP_SHARE, Server, free_port_range, free_udp_port
from tests.e2e.phone import call_serve
from tests.e2e.test_listen_sipp import best_correlation
from tests.e2e.test_serve_sipp import capture_audio

SCENARIOS = Path(__file__).parent / "scenarios"


@pytest.fixture
async def hooks() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({"path": request.path, **(await request.json())})
        return web.json_response([])

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


def start_callee(
    tmp_path: Path, scenario: str = "callee_pcap.xml"
) -> tuple[subprocess.Popen[str], int]:
    assert SIPP is not None, "SIPp missing: scripts/test.sh installs Debian's sip-tester"
    link = tmp_path / "pcap"
    if not link.exists():
        link.symlink_to(SIPP_SHARE)
    port = free_udp_port()
    proc = subprocess.Popen(
        # an absolute ``scenario`` path wins over SCENARIOS in the join
        [SIPP, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port),
         "-mp", str(free_port_range(4)[0]), "-m", "1", "-nostdin", "-timeout", "40s",
         "-trace_err"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, port


async def test_dial_bridges_both_ways_and_the_fork_has_each_party_on_its_channel(
    tmp_path: Path, hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    base, seen = hooks
    callee, callee_port = start_callee(tmp_path)
    try:
        async with Receiver(tmp_path / "rx") as rx:
            app = [{"verb": "dial", "target": [{"type": "sip",
                                               "sipUri": f"sip:bob@127.0.0.1:{callee_port}"}],
                    "actionHook": f"{base}/dial-done",
                    "listen": {"url": rx.url, "mixType": "stereo",
                               "actionHook": f"{base}/listen-done"}}]  # fmt: skip
            with Server(tmp_path, app) as server:
                caller_audio = tone(600.0, 9.0, -10.0)
                phone = await asyncio.to_thread(
                    call_serve, "127.0.0.1", server.sip_port, caller_audio, seconds=8.5
                )
                (fork,) = await rx.wait_for_calls(1, timeout=15)
                for _ in range(200):  # the hooks come after the B leg's BYE completes
                    if {p["path"] for p in seen} >= {"/dial-done", "/listen-done"}:
                        break
                    await asyncio.sleep(0.05)
            assert await asyncio.to_thread(callee.wait, 15) == 0  # the callee got our BYE
    finally:
        if callee.poll() is None:
            callee.kill()
    assert phone.answered
    # what the caller heard through the bridge: the callee's capture
    from dsp.g711 import ulaw_decode

    heard = ulaw_decode(np.frombuffer(b"".join(p.payload for p in phone.received), np.uint8))
    assert best_correlation(heard, capture_audio()) >= 0.9
    # the nested stereo fork: left = caller (600 Hz), right = callee (the capture)
    left = fork.audio[4000:40000, 0].astype(np.float64)
    peak = np.argmax(np.abs(np.fft.rfft(left))) * 8000 / left.size
    assert abs(peak - 600) < 3
    assert best_correlation(fork.audio[:, 1], capture_audio()) >= 0.9
    assert fork.close_code == 1000
    by_path = {p["path"]: p for p in seen}
    assert by_path["/dial-done"]["dial_call_status"] == "completed"
    assert by_path["/dial-done"]["dial_call_duration"] >= 6
    assert by_path["/listen-done"]["reason"] == "hangup"


async def test_dial_to_nobody_reports_no_answer(
    tmp_path: Path, hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    base, seen = hooks
    app = [{"verb": "dial", "timeout": 1.5,
            "target": [{"type": "sip", "sipUri": f"sip:nobody@127.0.0.1:{free_udp_port()}"}],
            "actionHook": f"{base}/dial-done"}, {"verb": "pause", "length": 0.5}]  # fmt: skip
    with Server(tmp_path, app) as server:
        phone = await asyncio.to_thread(
            call_serve, "127.0.0.1", server.sip_port, None, seconds=6, hang_up=True
        )
        server.wait_for("call.end")
    assert phone.answered and phone.bye_from_server  # the app went on, then hung up
    (payload,) = seen
    assert (payload["dial_call_status"], payload["dial_sip_status"]) == ("no-answer", 408)


async def test_callee_hanging_up_ends_the_caller_too(
    tmp_path: Path, hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    base, seen = hooks
    callee, port = start_callee(tmp_path, "callee_bye.xml")
    try:
        app = [{"verb": "dial", "target": [{"type": "sip", "sipUri": f"sip:bob@127.0.0.1:{port}"}],
                "actionHook": f"{base}/dial-done"}, {"verb": "pause", "length": 30}]  # fmt: skip
        with Server(tmp_path, app) as server:
            phone = await asyncio.to_thread(
                call_serve, "127.0.0.1", server.sip_port, tone(600.0, 10.0, -10.0), seconds=10
            )
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
            end = server.wait_for("call.end")[0]
        assert await asyncio.to_thread(callee.wait, 15) == 0
    finally:
        if callee.poll() is None:
            callee.kill()
    assert phone.bye_from_server  # the callee's BYE ended the caller's leg as well
    assert end["reason"] == "dial-callee-hangup"  # the app's pause did not keep it up
    (payload,) = seen
    assert payload["dial_call_status"] == "completed"
    assert 2 <= payload["dial_call_duration"] <= 4


async def test_sipp_caller_and_sipp_callee_land_on_their_own_channels(
    tmp_path: Path, hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    """Issue 5's interop case: SIPp calls serve, serve dials SIPp; both play audio."""
    from tests.e2e.harness import run_sipp
    from tests.e2e.pcapgen import write_pcma_pcap
    from tests.rtp.pcap import read_udp

    base, seen = hooks
    tone_pcap = write_pcma_pcap(tmp_path / "tone600.pcap", tone(600.0, 10.0, -10.0))
    assert len(list(read_udp(tone_pcap))) == 500  # our own reader agrees with the format
    scenario = tmp_path / "callee_tone.xml"
    scenario.write_text((SCENARIOS / "callee_pcap.xml").read_text()
                        .replace("pcap/g711a.pcap", str(tone_pcap)))  # fmt: skip
    callee, port = start_callee(tmp_path, str(scenario))
    try:
        async with Receiver(tmp_path / "rx") as rx:
            nested = {"url": rx.url, "mixType": "stereo", "sampleRate": 16000}
            app = [{"verb": "dial", "target": [{"type": "sip",
                                               "sipUri": f"sip:bob@127.0.0.1:{port}"}],
                    "actionHook": f"{base}/dial-done", "listen": nested}]  # fmt: skip
            with Server(tmp_path, app) as server:
                res = await asyncio.to_thread(
                    run_sipp, tmp_path, server, "-sn", "uac_pcap", "-m", "1"
                )
                assert res.returncode == 0, res.stdout[-2000:]
                (fork,) = await rx.wait_for_calls(1, timeout=15)
                for _ in range(200):
                    if seen:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # the call's totals land once its task is done
                admin = server.events("admin.listening")[0]["url"]
                metrics = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(f"{admin}/metrics", timeout=5).read().decode()
                )
        assert await asyncio.to_thread(callee.wait, 15) == 0
    finally:
        if callee.poll() is None:
            callee.kill()
    from dsp.resample import Resampler

    left16 = Resampler(1, 8000, 16000).process_int16(capture_audio()[None, :])[0]
    assert best_correlation(fork.audio[:, 0], left16) >= 0.9  # the caller: SIPp's capture
    right = fork.audio[8000:64000, 1].astype(np.float64)
    assert abs(np.argmax(np.abs(np.fft.rfft(right))) * 16000 / right.size - 600) < 3
    assert seen[0]["dial_call_status"] == "completed"
    # /metrics counts both legs' RTP: SIPp's capture (236 packets) and the callee's (~9 s)
    received = next(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("mediaserver_rtp_packets_received_total"))  # fmt: skip
    assert received >= 236 + 300


async def test_answer_on_bridge_waits_for_the_callee(
    tmp_path: Path, hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    base, seen = hooks
    nobody = f"sip:nobody@127.0.0.1:{free_udp_port()}"
    app = [{"verb": "dial", "answerOnBridge": True, "timeout": 1.5,
            "target": [{"type": "sip", "sipUri": nobody}],
            "actionHook": f"{base}/dial-done"}]  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Server(tmp_path / "a", app) as server:
        phone = await asyncio.to_thread(
            call_serve, "127.0.0.1", server.sip_port, None, seconds=1, hang_up=False
        )
        for _ in range(100):  # let the hook arrive before the blocking server stop
            if seen:
                break
            await asyncio.sleep(0.05)
    assert not phone.answered and phone.final_status == 480  # no 200 before the callee
    assert seen[0]["dial_call_status"] == "no-answer"
    callee, port = start_callee(tmp_path)
    try:
        app[0]["target"] = [{"type": "sip", "sipUri": f"sip:bob@127.0.0.1:{port}"}]
        with Server(tmp_path / "b", app) as server:
            phone = await asyncio.to_thread(
                call_serve, "127.0.0.1", server.sip_port, None, seconds=2
            )
            answered = server.wait_for("call.answered")[0]
            bridged = server.wait_for("dial.answered")[0]
        assert await asyncio.to_thread(callee.wait, 15) == 0
    finally:
        if callee.poll() is None:
            callee.kill()
    assert phone.answered
    assert answered["timestamp"] >= bridged["timestamp"]  # A answered only once B did


async def test_busy_callee_maps_to_busy(
    tmp_path: Path, hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    base, seen = hooks
    callee, port = start_callee(tmp_path, "callee_busy.xml")
    try:
        app = [{"verb": "dial", "target": [{"type": "sip", "sipUri": f"sip:bob@127.0.0.1:{port}"}],
                "actionHook": f"{base}/dial-done"}]  # fmt: skip
        with Server(tmp_path, app) as server:
            await asyncio.to_thread(call_serve, "127.0.0.1", server.sip_port, None, seconds=2)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
        assert await asyncio.to_thread(callee.wait, 15) == 0  # SIPp got its ACK
    finally:
        if callee.poll() is None:
            callee.kill()
    assert (seen[0]["dial_call_status"], seen[0]["dial_sip_status"]) == ("busy", 486)


async def test_channel_2_forks_the_callee_view_and_headers_reach_the_callee(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "callee_headers.xml"
    text = (SCENARIOS / "callee_pcap.xml").read_text()
    text = text.replace('<recv request="INVITE" crlf="true"/>', (
        '<recv request="INVITE" crlf="true"><action>'
        '<ereg regexp="lab-on" search_in="hdr" header="X-Lab:" check_it="true" assign_to="x"/>'
        '</action></recv>'))  # fmt: skip
    text = text.replace("</scenario>", '<Reference variables="x"/>\n</scenario>')
    scenario.write_text(text)
    callee, port = start_callee(tmp_path, str(scenario))
    try:
        async with Receiver(tmp_path / "rx") as rx:
            target = [{"type": "sip", "sipUri": f"sip:bob@127.0.0.1:{port}"}]
            app = [{"verb": "dial", "target": target, "headers": {"X-Lab": "lab-on"},
                    "listen": {"url": rx.url, "mixType": "stereo", "channel": 2}}]  # fmt: skip
            with Server(tmp_path, app) as server:
                await asyncio.to_thread(
                    call_serve, "127.0.0.1", server.sip_port, tone(600.0, 8.0, -10.0), seconds=6
                )
                (fork,) = await rx.wait_for_calls(1, timeout=15)
        assert await asyncio.to_thread(callee.wait, 15) == 0  # the X-Lab check passed
    finally:
        if callee.poll() is None:
            callee.kill()
    # channel 2: the B leg's view, left = the callee (capture), right = the caller (tone)
    assert best_correlation(fork.audio[:, 0], capture_audio()) >= 0.9
    right = fork.audio[4000:36000, 1].astype(np.float64)
    assert abs(np.argmax(np.abs(np.fft.rfft(right))) * 8000 / right.size - 600) < 3


async def test_caller_hanging_up_while_the_callee_rings_cancels_it(
    tmp_path: Path, hooks: tuple[str, list[dict[str, Any]]]
) -> None:
    base, seen = hooks
    callee, port = start_callee(tmp_path, "callee_ringing.xml")
    try:
        target = [{"type": "sip", "sipUri": f"sip:bob@127.0.0.1:{port}"}]
        app = [{"verb": "dial", "target": target, "actionHook": f"{base}/dial-done"}]
        with Server(tmp_path, app) as server:
            await asyncio.to_thread(call_serve, "127.0.0.1", server.sip_port, None, seconds=1.5)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
        assert await asyncio.to_thread(callee.wait, 15) == 0  # CANCEL, 200, 487, ACK all seen
    finally:
        if callee.poll() is None:
            callee.kill()
    assert (seen[0]["dial_call_status"], seen[0]["dial_sip_status"]) == ("canceled", 487)


async def test_callee_reinvite_is_answered_and_the_bridge_goes_on(tmp_path: Path) -> None:
    callee, port = start_callee(tmp_path, "callee_reinvite.xml")
    try:
        target = [{"type": "sip", "sipUri": f"sip:bob@127.0.0.1:{port}"}]
        with Server(tmp_path, [{"verb": "dial", "target": target}]) as server:
            phone = await asyncio.to_thread(
                call_serve, "127.0.0.1", server.sip_port, tone(600.0, 5.0, -10.0), seconds=4
            )
            reinvite = server.wait_for("uac.reinvite")[0]
        assert await asyncio.to_thread(callee.wait, 15) == 0  # 200 to its re-INVITE, then BYE
    finally:
        if callee.poll() is None:
            callee.kill()
    assert reinvite["answered"] is True
    assert phone.answered and not phone.bye_from_server  # the caller hung up, not us
