"""The admin endpoint over real HTTP: /health, /metrics, /calls, a taken port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mediaserver.admin import AdminEndpoint
from mediaserver.config import load_config
from mediaserver.engine import EngineClock, MediaEngine
from mediaserver.server import SipServer
from tests.e2e.harness import Server, free_port_range, free_udp_port
from tests.e2e.test_serve_robustness import Client, status
from tests.mediaserver.test_metrics import simulated_call, start


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


@pytest.fixture
async def admin(server: SipServer) -> AsyncIterator[AdminEndpoint]:
    endpoint = AdminEndpoint(server, "127.0.0.1", 0)
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def get_json(url: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


async def test_health_says_ok_then_draining_with_503(
    server: SipServer, admin: AdminEndpoint
) -> None:
    assert admin.port > 0 and admin.url == f"http://127.0.0.1:{admin.port}"
    assert await get_json(admin.url + "/health") == (
        200,
        {"status": "ok", "calls": 0, "max_calls": 100},
    )
    server.accepting = False  # what stop() does first
    assert await get_json(admin.url + "/health") == (
        503,
        {"status": "draining", "calls": 0, "max_calls": 100},
    )


async def test_metrics_is_prometheus_text(admin: AdminEndpoint) -> None:
    code, content_type, text = await get(admin.url + "/metrics")
    assert code == 200 and content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["mediaserver_calls_active"].type == "gauge"
    assert families["mediaserver_calls"].type == "counter"
    assert families["mediaserver_engine_tick_seconds"].type == "summary"
    assert families["mediaserver_hook_duration_seconds"].type == "histogram"
    code, _, _ = await get(admin.url + "/nothing")
    assert code == 404


async def test_calls_lists_a_live_call_with_its_rtp_counters(
    server: SipServer, admin: AdminEndpoint
) -> None:
    assert await get_json(admin.url + "/calls") == (200, {"calls": []})
    call = simulated_call(server, [{"verb": "pause", "length": 5}], lost={3})
    handle = start(server, call, 1)
    await asyncio.sleep(0.4)
    code, body = await get_json(admin.url + "/calls")
    assert code == 200 and isinstance(body, dict)
    (live,) = body["calls"]
    assert live["call_sid"] == call.call_sid and live["call_id"] == call.attributes["callId"]
    assert (live["from"], live["to"], live["codec"]) == ("alice", "bob", "PCMU/8000")
    assert live["call_status"] == "in-progress"
    assert 0.2 <= live["answered_seconds_ago"] <= 2
    assert live["rtp"]["received"] >= 10 and live["rtp"]["lost"] == 1
    assert live["listen_forks_open"] == 0
    del server.calls[handle]
    call.end("hangup")
    assert call.task is not None
    with contextlib.suppress(asyncio.CancelledError):
        await call.task
    assert await get_json(admin.url + "/calls") == (200, {"calls": []})


async def test_a_taken_port_is_an_os_error(server: SipServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = AdminEndpoint(server, "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError):
            await endpoint.start()


def test_serve_runs_on_without_admin_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = tmp_path / "server.toml"
        config.write_text(f"[admin]\nport = {taken.getsockname()[1]}\n")
        app = [{"verb": "pause", "length": 1}]
        with Server(tmp_path, app, "--config", str(config), admin=None) as srv:
            (failed,) = srv.events("admin.bind_failed")
            assert str(taken.getsockname()[1]) in failed["admin"]
            assert srv.events("serve.listening")[0]["admin"] is None
            client = Client(srv)
            try:
                assert status(client.request("OPTIONS")) == 200  # SIP is served all the same
            finally:
                client.close()
