"""Hooks: POST/GET, basic auth, failures as results, no secrets in logs."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from mediaserver.hooks import safe_url, send_hook
from mediaserver.listen_options import Hook
from mediaserver.logs import configure_logging, get_logger


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "auth": request.headers.get("Authorization"),
                     "query": dict(request.query),
                     "body": await request.json() if request.can_read_body else None})  # fmt: skip
        if request.path == "/bad":
            return web.Response(status=503)
        return web.json_response([{"verb": "hangup"}])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


async def test_post_with_basic_auth_returns_the_body(server: tuple[str, list[Any]]) -> None:
    base, seen = server
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    result = await send_hook(Hook(f"{base}/done", "POST", "user", "pa55word"),
                             {"call_sid": "x", "reason": "timeout"}, log=get_logger())  # fmt: skip
    assert result.ok and result.status == 200 and result.body == [{"verb": "hangup"}]
    assert seen[0]["method"] == "POST" and seen[0]["body"]["reason"] == "timeout"
    assert seen[0]["auth"] == "Basic " + base64.b64encode(b"user:pa55word").decode()
    assert "pa55word" not in out.getvalue() and "Basic" not in out.getvalue()
    assert json.loads(out.getvalue().splitlines()[-1])["status"] == 200


async def test_get_sends_the_payload_as_query(server: tuple[str, list[Any]]) -> None:
    base, seen = server
    result = await send_hook(Hook(f"{base}/done", "GET"), {"reason": "hangup", "duration": 2.5})
    assert result.ok
    assert seen[0]["method"] == "GET"
    assert seen[0]["query"] == {"reason": "hangup", "duration": "2.5"}


async def test_failures_are_results_with_reasons(server: tuple[str, list[Any]]) -> None:
    base, _ = server
    bad = await send_hook(Hook(f"{base}/bad"), {})
    assert not bad.ok and bad.error == "HTTP 503"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = await send_hook(Hook(f"http://127.0.0.1:{port}/x"), {}, timeout=2)
    assert not down.ok and "request failed" in (down.error or "")


def test_safe_url_strips_credentials() -> None:
    assert safe_url("https://u:p@host:8443/x?y=1") == "https://host:8443/x?y=1"
    assert safe_url("http://host/x") == "http://host/x"
