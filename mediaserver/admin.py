"""The admin HTTP endpoint of ``serve``: health, metrics, live calls.

Owns a small aiohttp server (loopback by default; it has no authentication)
with three read-only views of one ``SipServer``:

- ``GET /health``: 200 ``{"status": "ok", ...}`` while calls are accepted,
  503 ``{"status": "draining", ...}`` once shutdown has begun (a load
  balancer stops sending calls);
- ``GET /metrics``: ``ServerMetrics.render()``, the Prometheus text format;
- ``GET /calls``: the live calls as JSON (call_sid, call_id, from, to,
  codec, seconds since answered, RTP counters, listen forks open);
- ``GET /recordings/<name>``: a finished SignalWire ``record_call`` file
  from the ``[recording]`` directory, at the ``record.url`` its status
  events reported (404 for anything else: hidden, in-progress or
  still-uploading files, paths outside the directory).

It must not change the server or its calls, nor log per request (scrapers
poll it all day).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from mediaserver.metrics import CONTENT_TYPE, leg_forks
from mediaserver.recording_delivery import RecordingStore, content_type_for, resolve_recording

if TYPE_CHECKING:
    from mediaserver.call import Call
    from mediaserver.server import SipServer

__all__ = ["AdminEndpoint", "call_summary", "recording_response", "serve_on"]


async def serve_on(runner: web.AppRunner, host: str, port: int) -> int:
    """Start ``runner`` on ``host:port`` and return the bound port (``port`` 0: any
    free one); on ``OSError`` (address taken) the runner is cleaned up and it raises."""
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return int(runner.addresses[0][1])


def recording_response(store: RecordingStore, request: web.Request) -> web.StreamResponse:
    """``GET /recordings/<name>``: the finished recording from ``store``'s directory, or 404."""
    path = resolve_recording(store, request.raw_path)
    if path is None:
        raise web.HTTPNotFound(text="no such recording\n")
    return web.FileResponse(
        path, headers={"Content-Type": content_type_for(path.suffix.lstrip("."))}
    )


def call_summary(call: Call, now: float) -> dict[str, Any]:
    """One live call as ``/calls`` shows it; ``now`` is the engine clock's time."""
    attrs = call.attributes
    leg = call.leg
    rtp: dict[str, Any] | None = None
    forks_open = 0
    if leg is not None:
        stats = leg.jitter.stats
        rtp = {
            "received": stats.received,
            "lost": max(0, stats.lost),
            "late": stats.late,
            "jitter_ms": round(stats.jitter * 1000, 1),
            "sent": leg.stats.packets_sent,
        }
        forks_open = sum(fork.open for fork in leg_forks(leg))
    answered = call.answered_at
    return {
        "call_sid": call.call_sid,
        "call_id": attrs.get("callId"),
        "from": attrs.get("from"),
        "to": attrs.get("to"),
        "direction": attrs.get("direction"),
        "source": attrs.get("originatingSipIp"),
        "call_status": attrs.get("callStatus"),
        "codec": leg.codec.info.key if leg is not None else None,
        "answered_seconds_ago": round(now - answered, 1) if answered is not None else None,
        "rtp": rtp,
        "listen_forks_open": forks_open,
    }


class AdminEndpoint:
    """``/health``, ``/metrics`` and ``/calls`` for ``server`` on ``host:port``."""

    def __init__(self, server: SipServer, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port  # 0 until start() when asked for any free port
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/calls", self.calls)
        app.router.add_get("/recordings/{name}", self.recording)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        """Bind and serve; ``OSError`` if the address is taken."""
        self.port = await serve_on(self._runner, self.host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def health(self, _request: web.Request) -> web.Response:
        server = self.server
        body: dict[str, Any] = {"calls": len(server.calls), "max_calls": server.config.max_calls}
        if server.accepting:
            return web.json_response({"status": "ok", **body})
        return web.json_response({"status": "draining", **body}, status=503)

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.server.metrics.render(), headers={"Content-Type": CONTENT_TYPE}
        )

    async def recording(self, request: web.Request) -> web.StreamResponse:
        return recording_response(self.server.recordings.store, request)

    async def calls(self, _request: web.Request) -> web.Response:
        now = self.server.clock.now()
        calls = [call_summary(call, now) for call in list(self.server.calls.values())]
        return web.json_response({"calls": calls})
