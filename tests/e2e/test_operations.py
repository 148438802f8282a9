"""Operating ``serve``: admin endpoint, allowed sources, limits, SIGTERM drain.

Real peers on loopback: ``serve`` as a subprocess, SIPp as the callers, the
reference receiver and an aiohttp actionHook server in the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from mediaserver.receiver import Receiver
from tests.e2e.harness import Server, free_port_range, free_udp_port, run_sipp
from tests.e2e.test_serve_robustness import SDP, Client, status

SCENARIOS = Path(__file__).parent / "scenarios"
CALLS = 20


class HookServer:
    """A real HTTP actionHook endpoint that records payloads, answering after ``delay``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.payloads: list[dict[str, Any]] = []  # answered
        self.arrived = 0  # requests read, answered or not yet
        self._released = asyncio.Event()  # set on exit: no handler outlives the test

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.arrived += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), self.delay)
        self.payloads.append(payload)
        return web.json_response([])

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/listen-done"

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        await self.runner.cleanup()


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    async with Receiver(tmp_path / "rx") as rx:
        yield rx


def config_file(tmp: Path, text: str = "") -> str:
    """A server TOML with the admin endpoint on any free loopback port."""
    path = tmp / "server.toml"
    path.write_text("[admin]\nport = 0\n" + text)
    return str(path)


async def until(check: Any, timeout: float, what: str) -> Any:
    """Poll ``check()`` (sync or async) without blocking the loop until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


class Admin:
    """HTTP client for one server's admin endpoint (its URL comes from the log)."""

    def __init__(self, server: Server, session: aiohttp.ClientSession) -> None:
        (event,) = server.events("admin.listening")
        assert server.events("serve.listening")[0]["admin"] == event["url"]
        self.url = event["url"]
        self.session = session

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.url + path) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        code, text = await self.get("/metrics")
        assert code == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_admin_metrics_and_calls_follow_a_sipp_call(
    tmp_path: Path, receiver: Receiver
) -> None:
    hooks = HookServer()
    async with hooks as hook_url, aiohttp.ClientSession() as session:
        app = [{"verb": "listen", "url": receiver.url, "actionHook": hook_url}]
        with Server(tmp_path, app, "--config", config_file(tmp_path)) as server:
            admin = Admin(server, session)
            assert await admin.get("/health") == (
                200,
                {"status": "ok", "calls": 0, "max_calls": 100},
            )
            before = await admin.metrics()
            sipp = asyncio.create_task(
                asyncio.to_thread(run_sipp, tmp_path, server, "-sn", "uac_pcap", "-m", "1")
            )

            async def live_call() -> dict[str, Any] | None:
                _, body = await admin.get("/calls")
                calls = body["calls"]
                ok = calls and calls[0]["rtp"]["received"] > 50 and calls[0]["listen_forks_open"]
                return calls[0] if ok else None

            call = await until(live_call, 15, "a live call with RTP and an open fork in /calls")
            (rx,) = await receiver.wait_for_open(1)
            assert call["call_sid"] == rx.call_sid and uuid.UUID(call["call_sid"])
            assert (call["from"], call["to"], call["codec"]) == ("sipp", "service", "PCMA/8000")
            assert call["answered_seconds_ago"] >= 0 and call["call_id"] == rx.metadata["callId"]
            during = await admin.metrics()
            assert value(during, "mediaserver_calls_active") == 1
            assert value(during, "mediaserver_listen_forks_open") == 1
            assert value(during, "mediaserver_rtp_packets_received_total") > 50
            assert value(during, "mediaserver_listen_frames_sent_total") > 0
            assert value(during, "mediaserver_engine_legs") == 1

            res = await sipp
            assert res.returncode == 0, res.stdout[-2000:]

            async def call_over() -> dict[Any, float] | None:
                now = await admin.metrics()
                hooked = value(now, "mediaserver_hook_duration_seconds_count", outcome="ok")
                return now if hooked and not value(now, "mediaserver_calls_active") else None

            after = await until(call_over, 10, "the call over and its actionHook counted")
    (payload,) = hooks.payloads
    assert payload["reason"] == "hangup"
    # the call is over: counted by result, nothing live, the counters only went up
    assert value(after, "mediaserver_calls_active") == 0
    assert value(after, "mediaserver_calls_total", result="hangup") == 1
    assert value(before, "mediaserver_calls_total", result="hangup") == 0
    assert value(after, "mediaserver_listen_forks_open") == 0
    rtp = value(after, "mediaserver_rtp_packets_received_total")
    assert rtp >= value(during, "mediaserver_rtp_packets_received_total")
    assert rtp > 200  # several seconds of 20 ms packets
    assert value(after, "mediaserver_listen_frames_sent_total") == payload["frames_sent"] > 0
    assert value(after, "mediaserver_hook_duration_seconds_count", outcome="ok") == 1
    assert value(after, "mediaserver_hook_duration_seconds_count", outcome="error") == 0
    ticks = "mediaserver_engine_tick_seconds_count"
    assert value(after, ticks) > value(during, ticks) > value(before, ticks) > 0
    assert value(after, "mediaserver_engine_tick_seconds_sum") > 0
    # INVITE, ACK, BYE at least (retransmissions may add more)
    assert value(after, "mediaserver_sip_requests_received_total") >= 3
    assert value(after, "mediaserver_rtp_ports_in_use") == 0


def raw_request(method: str, port: int, branch: str, body: str = "") -> bytes:
    text = (
        f"{method} sip:svc@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\n"
        f"From: <sip:intruder@127.0.0.1:{port}>;tag=x1\r\n"
        "To: <sip:svc@127.0.0.1>\r\n"
        f"Call-ID: {branch}@127.0.0.1\r\n"
        f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:intruder@127.0.0.1:{port}>\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    return text.encode()


async def test_sources_outside_the_allowed_list_get_403(tmp_path: Path) -> None:
    sdp = SDP.format(port=free_udp_port(), pts="0", maps="a=rtpmap:0 PCMU/8000\r\n")
    elsewhere = config_file(tmp_path, '[sip]\nallowed_sources = ["10.0.0.0/8"]\n')
    async with aiohttp.ClientSession() as session:
        with Server(tmp_path, [{"verb": "pause", "length": 5}], "--config", elsewhere) as server:
            client = Client(server)
            try:
                options = await asyncio.to_thread(client.request, "OPTIONS")
                invite = await asyncio.to_thread(client.request, "INVITE", body=sdp)
                # a retransmission (same branch) gets the same answer, To tag included
                branch = f"z9hG4bK-again-{time.time_ns()}"
                answers = []
                for _ in range(2):
                    client.sock.sendto(raw_request("INVITE", client.port, branch, sdp), client.dest)
                    answers.append(await asyncio.to_thread(client.final_response, branch))
            finally:
                client.close()
            metrics = await Admin(server, session).metrics()
    assert status(options) == 403 and "SIP/2.0 403 Forbidden" in options
    assert status(invite) == 403
    assert "Server: jambonz-mediaserver-emulator" in invite
    to_tags = [next(h for h in a.splitlines() if h.startswith("To:")) for a in answers]
    assert to_tags[0] == to_tags[1] and ";tag=" in to_tags[0]
    assert value(metrics, "mediaserver_sip_forbidden_total") == 4
    assert value(metrics, "mediaserver_calls_total", result="rejected-403") == 3
    assert value(metrics, "mediaserver_calls_active") == 0
    assert server.events("call.answered") == []

    allowed = config_file(tmp_path, '[sip]\nallowed_sources = ["127.0.0.0/8", "::1/128"]\n')
    with Server(tmp_path, [{"verb": "pause", "length": 5}], "--config", allowed) as server:
        client = Client(server)
        try:
            assert status(await asyncio.to_thread(client.request, "OPTIONS")) == 200
        finally:
            client.close()


async def test_rtp_port_exhaustion_is_answered_503(tmp_path: Path) -> None:
    low, _ = free_port_range(2)  # one even port: room for one call
    app = [{"verb": "pause", "length": 10}]
    async with aiohttp.ClientSession() as session:
        with Server(
            tmp_path,
            app,
            "--config",
            config_file(tmp_path, "[calls]\ndrain_seconds = 1\n"),  # our 200 is never ACKed
            "--rtp-ports",
            f"{low}-{low + 1}",
        ) as server:
            first, second = Client(server), Client(server)
            try:
                sdp = SDP.format(port=free_udp_port(), pts="0", maps="a=rtpmap:0 PCMU/8000\r\n")
                answered = await asyncio.to_thread(first.request, "INVITE", body=sdp)
                refused = await asyncio.to_thread(second.request, "INVITE", body=sdp)
            finally:
                first.close()
                second.close()
            metrics = await Admin(server, session).metrics()
    assert status(answered) == 200
    assert status(refused) == 503 and "No Media Ports" in refused
    assert value(metrics, "mediaserver_calls_total", result="rejected-503") == 1
    assert value(metrics, "mediaserver_rtp_ports_capacity") == 1
    assert value(metrics, "mediaserver_rtp_ports_in_use") == 1


async def test_sigterm_during_20_live_calls_ends_every_call_cleanly(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Issue 5: every call gets a BYE, every fork closes with 1000, every actionHook fires."""
    hooks = HookServer(delay=0.5)  # a slow hook server: the drain must wait for it
    drain = 10.0
    async with hooks as hook_url, aiohttp.ClientSession() as session:
        app = [{"verb": "listen", "url": receiver.url, "actionHook": hook_url}]
        config = config_file(tmp_path, f"[calls]\ndrain_seconds = {drain}\n")
        with Server(tmp_path, app, "--config", config) as server:
            admin = Admin(server, session)
            # SIPp answers the server's BYE with 200: a call succeeds only if it got one
            sipp = asyncio.create_task(
                asyncio.to_thread(
                    run_sipp,
                    tmp_path,
                    server,
                    "-sf",
                    str(SCENARIOS / "server_bye.xml"),
                    "-m",
                    str(CALLS),
                    "-l",
                    str(CALLS),
                    "-r",
                    str(CALLS),
                    timeout=45,
                )
            )
            await receiver.wait_for_open(CALLS, timeout=20)
            assert len(server.events("call.answered")) == CALLS
            _, body = await admin.get("/calls")
            assert len(body["calls"]) == CALLS
            assert all(c["listen_forks_open"] == 1 for c in body["calls"])

            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            async def draining() -> bool:
                code, body = await admin.get("/health")
                return code == 503 and body["status"] == "draining"

            await until(draining, 5, "/health answering 503 draining")
            # a new call during the drain is refused with 503
            late = Client(server)
            try:
                sdp = SDP.format(port=free_udp_port(), pts="0", maps="a=rtpmap:0 PCMU/8000\r\n")
                refused = await asyncio.to_thread(late.request, "INVITE", body=sdp)
                # a load balancer's OPTIONS probe is told to stop sending calls here
                probed = await asyncio.to_thread(late.request, "OPTIONS")
            finally:
                late.close()
            code = await asyncio.to_thread(server.proc.wait, drain + 5)
            exited_after = time.monotonic() - signalled
            res = await sipp
            closed = await receiver.wait_for_calls(CALLS, timeout=5)
    assert status(refused) == 503
    assert status(probed) == 503 and "Retry-After: 5" in probed
    assert code == 0 and exited_after < drain, (code, exited_after)
    assert server.events("serve.drained") and not server.events("serve.drain_incomplete")
    assert res.returncode == 0, res.stdout[-3000:]  # all 20 got (and answered) a BYE
    assert [c.close_code for c in closed] == [1000] * CALLS
    assert {c.closed_by for c in closed} == {"sender"}
    assert sorted(p["call_sid"] for p in hooks.payloads) == sorted(c.call_sid for c in closed)
    assert {p["reason"] for p in hooks.payloads} == {"hangup"}
    sent = server.events("hook.sent")  # the answers were read: nothing cut off at exit
    assert len(sent) == CALLS and {(e["status"], e["ok"]) for e in sent} == {(200, True)}
    ends = server.events("call.end")
    assert len(ends) == CALLS and {e["reason"] for e in ends} == {"shutdown"}
    stopped = server.events("serve.stopped")[0]
    assert stopped["live_calls"] == 0 and stopped["rtp_ports_in_use"] == 0
    assert stopped["calls"] == {"shutdown": CALLS, "rejected-503": 1}  # the late INVITE


@pytest.mark.parametrize("second_signal", [False, True], ids=["drain-time", "second-signal"])
async def test_a_stuck_hook_cannot_hold_the_exit_past_the_drain_time(
    tmp_path: Path, receiver: Receiver, second_signal: bool
) -> None:
    hooks = HookServer(delay=30)  # answers long after send_hook's own 5 s limit
    drain = 20.0 if second_signal else 1.0
    async with hooks as hook_url:
        app = [{"verb": "listen", "url": receiver.url, "actionHook": hook_url}]
        config = config_file(tmp_path, f"[calls]\ndrain_seconds = {drain}\n")
        with Server(tmp_path, app, "--config", config) as server:
            sipp = asyncio.create_task(
                asyncio.to_thread(
                    run_sipp, tmp_path, server, "-sf", str(SCENARIOS / "server_bye.xml"), "-m", "1"
                )
            )
            await receiver.wait_for_open(1, timeout=15)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await until(lambda: hooks.arrived, 5, "the hook request to arrive")
            if second_signal:
                server.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.proc.wait, 10)
            exited_after = time.monotonic() - signalled
            res = await sipp
    assert code == 0
    assert exited_after < (2.0 if second_signal else drain + 2.0), exited_after
    (incomplete,) = server.events("serve.drain_incomplete")
    assert incomplete["interrupted"] is second_signal and incomplete["call_tasks"] == 1
    assert res.returncode == 0, res.stdout[-2000:]  # the call still got its BYE
