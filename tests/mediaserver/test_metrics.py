"""ServerMetrics: what /metrics reports, read from one server's live state.

A real engine clock, legs fed real RTP packets, a listen fork to the
reference receiver and an actionHook to a real HTTP server, all in-process.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from mediaserver.app import Application
from mediaserver.call import Call
from mediaserver.config import load_config
from mediaserver.engine import EngineClock, Leg, MediaEngine
from mediaserver.hooks import hook_observer, send_hook
from mediaserver.listen_options import parse_hook
from mediaserver.receiver import Receiver
from mediaserver.server import SipServer
from rtp.packet import build_packet
from rtp.sip.events import CallHandle
from tests.e2e.harness import free_port_range, free_udp_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: SipServer) -> Samples:
    text = server.metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
async def server() -> AsyncIterator[SipServer]:
    low, high = free_port_range(8)
    config = load_config(sip_port=free_udp_port(), rtp_port_low=low, rtp_port_high=high)
    engine = MediaEngine(8)
    clock = EngineClock(engine)
    srv = SipServer(config, engine, clock)
    clock.start()
    yield srv
    clock.stop()


class HookServer:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.payloads.append(await request.json())
        return web.json_response([])

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def packets(lost: set[int]) -> Iterator[bytes]:
    """PCMU packets one per 20 ms, sequence numbers in ``lost`` never sent."""
    seq = 0
    while True:
        if seq not in lost:
            yield build_packet(0, seq == 0, seq, seq * 160, 0x1234, b"\xff" * 160)
        seq += 1


class _Quiet:
    """Signalling for a call whose SIP side is not under test."""

    def answer(self, call: Call, sdp: bytes) -> None: ...
    def reject(self, call: Call, status: int, reason: str | None = None) -> None: ...
    def hangup(self, call: Call) -> None: ...


def simulated_call(server: SipServer, verbs: list[dict[str, Any]], lost: set[int]) -> Call:
    """A call on ``server`` with a PCMU leg fed one packet per tick until the call ends."""
    sid = str(uuid.uuid4())
    call = Call(
        attributes={"callSid": sid, "callId": f"{sid}@test", "from": "alice", "to": "bob"},
        media=None,
        engine=server.engine,
        clock=server.clock,
        app=Application.from_verbs(verbs),
        signalling=_Quiet(),
    )
    leg = Leg(call_sid=sid, codec="PCMU/8000", payload_type=0)
    stream = packets(lost)

    def feed(now: float) -> None:
        if call.end_reason is None:
            leg.receive_datagram(next(stream), now)

    server.engine.feeders.append(feed)
    server.engine.add_leg(leg)
    call.leg = leg
    return call


def start(server: SipServer, call: Call, serial: int) -> CallHandle:
    """What SipServer._incoming does with an accepted call: list it, run it, hear its hooks."""
    handle = CallHandle(serial, call.attributes["callId"], "inbound")
    server.calls[handle] = call
    context = contextvars.copy_context()
    context.run(hook_observer.set, server.metrics.observe_hook)
    call.task = asyncio.get_running_loop().create_task(call.run(b""), context=context)
    return handle


LIVE = (
    "mediaserver_rtp_packets_received_total",
    "mediaserver_rtp_packets_lost_total",
    "mediaserver_listen_frames_sent_total",
)


async def test_a_call_counts_while_live_while_ending_and_after_never_less(
    server: SipServer, tmp_path: Path
) -> None:
    hooks = HookServer()
    async with Receiver(tmp_path / "rx") as receiver, hooks as hook_url:
        verbs = [{"verb": "listen", "url": receiver.url, "actionHook": hook_url}]
        call = simulated_call(server, verbs, lost={5, 6, 7})
        handle = start(server, call, 1)
        (rx,) = await receiver.wait_for_open(1)
        await receiver.wait_for_audio(rx.call_sid, 0.5)
        during = scrape(server)
        assert value(during, "mediaserver_calls_active") == 1
        assert value(during, "mediaserver_listen_forks_open") == 1
        assert value(during, "mediaserver_rtp_packets_received_total") > 20
        assert value(during, "mediaserver_rtp_packets_lost_total") == 3
        assert value(during, "mediaserver_listen_frames_sent_total") > 20
        await receiver.wait_for_audio(rx.call_sid, 0.8)  # more audio than any scrape saw

        # a remote BYE: the server drops the call from its list, then ends it; the
        # task is still closing the fork and posting the hook
        del server.calls[handle]
        server.metrics.call_forgotten(call)
        call.end("hangup")
        ending = scrape(server)
        assert value(ending, "mediaserver_calls_active") == 0
        for name in LIVE:
            assert value(ending, name) >= value(during, name), name
        assert call.task is not None
        await call.task
        after = scrape(server)
    (payload,) = hooks.payloads
    assert payload["reason"] == "hangup"
    leg = call.leg
    assert leg is not None
    # folded exactly once: the totals are the finished call's own numbers
    assert value(after, "mediaserver_rtp_packets_received_total") == leg.jitter.stats.received
    assert value(after, "mediaserver_rtp_packets_lost_total") == 3
    assert value(after, "mediaserver_listen_frames_sent_total") == payload["frames_sent"]
    assert payload["frames_sent"] > value(during, "mediaserver_listen_frames_sent_total")
    assert value(after, "mediaserver_listen_forks_open") == 0
    assert value(after, "mediaserver_hook_duration_seconds_count", outcome="ok") == 1
    assert value(after, "mediaserver_hook_duration_seconds_count", outcome="error") == 0
    # a second scrape of a quiet server says the same
    assert {k: v for k, v in scrape(server).items() if k[0] in LIVE} == {
        k: v for k, v in after.items() if k[0] in LIVE
    }


async def test_hook_latency_goes_to_the_server_whose_call_sent_it(server: SipServer) -> None:
    low, high = free_port_range(4)
    config = load_config(sip_port=free_udp_port(), rtp_port_low=low, rtp_port_high=high)
    other = SipServer(config, server.engine, server.clock)  # a second registry: no clash
    dead = parse_hook(f"http://127.0.0.1:{free_udp_port()}/nobody", None)
    async with HookServer() as url:
        hook = parse_hook(url, None)
        assert hook is not None and dead is not None
        context = contextvars.copy_context()
        context.run(hook_observer.set, server.metrics.observe_hook)
        for target in (hook, hook, dead):
            await asyncio.get_running_loop().create_task(
                send_hook(target, {"call_sid": "x"}, timeout=2.0), context=context
            )
        await send_hook(hook, {"call_sid": "y"})  # outside any call: nobody counts it
    mine, theirs = scrape(server), scrape(other)
    assert value(mine, "mediaserver_hook_duration_seconds_count", outcome="ok") == 2
    assert value(mine, "mediaserver_hook_duration_seconds_count", outcome="error") == 1
    assert value(mine, "mediaserver_hook_duration_seconds_sum", outcome="ok") > 0
    assert value(theirs, "mediaserver_hook_duration_seconds_count", outcome="ok") == 0
    assert REGISTRY.get_sample_value("mediaserver_calls_active") is None  # not the global one


async def test_engine_ports_and_sip_counters_are_read_at_scrape_time(server: SipServer) -> None:
    await server.start()
    try:
        await asyncio.sleep(0.2)
        samples = scrape(server)
        ticks = server.clock.stats.ticks
        assert value(samples, "mediaserver_engine_tick_seconds_count") == ticks >= 5
        assert value(samples, "mediaserver_engine_tick_seconds_sum") == pytest.approx(
            server.clock.stats.total_tick_ms / 1000
        )
        assert value(samples, "mediaserver_engine_overruns_total") == 0
        assert value(samples, "mediaserver_rtp_ports_capacity") == 4
        assert value(samples, "mediaserver_accepting_calls") == 1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.sendto(
                options(port, server.config.sip_port), ("127.0.0.1", server.config.sip_port)
            )
            answer = await asyncio.get_running_loop().run_in_executor(None, sock.recv, 4096)
        assert answer.startswith(b"SIP/2.0 200")
        await asyncio.sleep(0.1)
        samples = scrape(server)
        assert value(samples, "mediaserver_sip_requests_received_total") == 1
        assert value(samples, "mediaserver_sip_datagrams_received_total") == 1
        assert value(samples, "mediaserver_engine_tick_seconds_count") > ticks
        server.accepting = False
        assert value(scrape(server), "mediaserver_accepting_calls") == 0
    finally:
        await server.stop(drain=0)


def options(port: int, to_port: int) -> bytes:
    return (
        f"OPTIONS sip:ping@127.0.0.1:{to_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-m-{uuid.uuid4().hex}\r\n"
        f"From: <sip:probe@127.0.0.1:{port}>;tag=p1\r\nTo: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
