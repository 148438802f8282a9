"""Prometheus metrics of one ``serve`` process, in a registry of its own.

Owns ``ServerMetrics``: a ``CollectorRegistry`` per server (never the global
one, so several servers can live in one process, as in the tests); a
collector that reads everything at scrape time from the server's state (live
calls and their legs, the engine clock, the port pool, the SIP endpoint's
counters) instead of counting on the media hot path; the totals folded in
from finished calls; and the one metric observed as it happens, the hook
latency histogram (fed through ``mediaserver.hooks.hook_observer``).

Counters derived from live state (RTP packets, fork frames) never go down:
a value that would (a fork's frames between its close and its result
reaching the call, a leg replaced by a codec-changing re-INVITE) is held at
the last value exported until the truth passes it.

It must not open sockets (``mediaserver.admin`` serves ``render()``), log,
or change the server's state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from mediaserver.engine import Leg
from mediaserver.fork import WebSocketFork
from mediaserver.hooks import HookResult

if TYPE_CHECKING:
    from mediaserver.call import Call
    from mediaserver.server import SipServer

__all__ = ["CONTENT_TYPE", "ServerMetrics", "leg_forks"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# SipCounters field -> help text (mediaserver_sip_<field>_total)
_SIP_COUNTERS = {
    "datagrams_received": "UDP datagrams received on the SIP port",
    "keepalives": "CRLF keep-alives received",
    "requests_received": "SIP requests received (retransmissions included)",
    "responses_received": "SIP responses received",
    "retransmissions_received": "Requests recognised as retransmissions",
    "retransmissions_sent": "2xx responses retransmitted while waiting for the ACK",
    "errors_answered": "Bad requests answered with a SIP error (400, 481, 405, ...)",
    "dropped": "Messages dropped unanswerable (no readable Via, ACKs, ...)",
    "stray_responses": "Responses matching no transaction of ours",
    "stray_acks": "ACKs matching no call",
}

# the live-state counters: (name, help)
_LIVE_COUNTERS = {
    "rtp_packets_received": "RTP audio packets received on call legs",
    "rtp_packets_lost": "RTP packets lost (RFC 3550 cumulative loss, per leg)",
    "rtp_packets_late": "RTP packets that arrived after their audio was played out",
    "rtp_packets_sent": "RTP packets sent to callers",
    "listen_frames_sent": "Audio frames sent to listen forks",
    "listen_frames_dropped": "Audio frames dropped for slow listen receivers",
}


def leg_forks(leg: Leg) -> list[WebSocketFork]:
    """The listen forks attached to ``leg`` (open or closing)."""
    forks = []
    for listener in leg.listeners:
        fork = getattr(listener, "fork", None)
        if isinstance(fork, WebSocketFork):
            forks.append(fork)
    return forks


def _call_totals(call: Call) -> dict[str, int]:
    """What one call contributes to the live-state counters, forks it still has open aside."""
    out = dict.fromkeys(_LIVE_COUNTERS, 0)
    legs = [call.leg] if call.leg is not None else []
    for leg in legs + call.dialled_legs:  # the caller's leg and any dial B legs
        jitter = leg.jitter.stats
        out["rtp_packets_received"] += jitter.received
        out["rtp_packets_lost"] += max(0, jitter.lost)  # duplicates can make it negative
        out["rtp_packets_late"] += jitter.late
        out["rtp_packets_sent"] += leg.stats.packets_sent
    for result in call.listen_results:
        out["listen_frames_sent"] += result.frames_sent
        out["listen_frames_dropped"] += result.frames_dropped
    return out


class ServerMetrics:
    """The metrics of ``server``; ``render()`` is the ``/metrics`` body."""

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.hook_seconds = Histogram(
            "mediaserver_hook_duration_seconds",
            "Time to send an actionHook and read its answer, by outcome",
            ["outcome"],
            buckets=HOOK_BUCKETS,
            registry=self.registry,
        )
        for outcome in ("ok", "error"):
            self.hook_seconds.labels(outcome)  # both series exist from the start
        self._finished = dict.fromkeys(_LIVE_COUNTERS, 0)
        self._ending: set[Call] = set()  # popped from server.calls, task still running
        self._exported: dict[str, int] = {}
        self.registry.register(self)

    # -- fed by the server ---------------------------------------------------------

    def observe_hook(self, result: HookResult) -> None:
        self.hook_seconds.labels("ok" if result.ok else "error").observe(result.seconds)

    def call_forgotten(self, call: Call) -> None:
        """``call`` left ``server.calls``; fold it in once its task has finished.

        Its task may still be closing forks and posting hooks (a remote BYE
        ends the call before the listen verb has reported), so until then it
        is counted as live.
        """
        task = call.task
        if task is None or task.done():
            self._fold(call)
            return
        self._ending.add(call)
        task.add_done_callback(lambda _task: self._fold(call))

    def _fold(self, call: Call) -> None:
        self._ending.discard(call)
        for name, value in _call_totals(call).items():
            self._finished[name] += value

    # -- scraping ------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _monotonic(self, name: str, value: int) -> int:
        value = max(value, self._exported.get(name, 0))
        self._exported[name] = value
        return value

    def collect(self) -> Iterator[Metric]:
        """prometheus-client's collector hook: every value read now."""
        server = self.server
        calls = list(server.calls.values())
        yield GaugeMetricFamily(
            "mediaserver_calls_active",
            "Calls in progress (being set up, answered, or ending)",
            value=len(calls),
        )
        yield GaugeMetricFamily(
            "mediaserver_accepting_calls",
            "1 while new calls are accepted, 0 while draining for shutdown",
            value=1 if server.accepting else 0,
        )
        yield GaugeMetricFamily(
            "mediaserver_calls_max", "The [calls] max_calls limit", value=server.config.max_calls
        )
        total = CounterMetricFamily(
            "mediaserver_calls",
            "Calls ended, by result: the call.end reason (hangup, app-done, shutdown, "
            "rtp-timeout, ...) or rejected-<status> for a refused INVITE",
            labels=["result"],
        )
        for result, count in sorted(server.calls_total.items()):
            total.add_metric([result], count)
        yield total
        yield from self._live_counters(calls)
        yield from self._engine()
        yield from self._sip()

    def _live_counters(self, calls: Iterable[Call]) -> Iterator[Metric]:
        sums = dict(self._finished)
        for call in [*calls, *self._ending]:
            for name, value in _call_totals(call).items():
                sums[name] += value
        forks_open = 0
        for leg in self.server.engine.legs:
            for fork in leg_forks(leg):
                sums["listen_frames_sent"] += fork.frames_sent
                sums["listen_frames_dropped"] += fork.frames_dropped
                forks_open += fork.open
        for name, text in _LIVE_COUNTERS.items():
            yield CounterMetricFamily(
                f"mediaserver_{name}", text, value=self._monotonic(name, sums[name])
            )
        yield GaugeMetricFamily(
            "mediaserver_listen_forks_open", "listen WebSockets open now", value=forks_open
        )

    def _engine(self) -> Iterator[Metric]:
        server = self.server
        stats = server.clock.stats
        yield SummaryMetricFamily(
            "mediaserver_engine_tick_seconds",
            "Time the media engine spent per 20 ms tick (all legs at once)",
            count_value=stats.ticks,
            sum_value=stats.total_tick_ms / 1000,
        )
        yield GaugeMetricFamily(
            "mediaserver_engine_tick_max_seconds",
            "Longest engine tick since start",
            value=stats.max_tick_ms / 1000,
        )
        yield CounterMetricFamily(
            "mediaserver_engine_overruns",
            "Ticks that started more than one period late (the loop was too busy)",
            value=stats.overruns,
        )
        yield CounterMetricFamily(
            "mediaserver_engine_tick_errors", "Ticks that raised (logged)", value=stats.errors
        )
        yield GaugeMetricFamily(
            "mediaserver_engine_legs",
            "Legs the engine processes each tick",
            value=len(server.engine.legs),
        )
        yield GaugeMetricFamily(
            "mediaserver_rtp_ports_in_use", "RTP ports bound", value=len(server.ports.in_use)
        )
        yield GaugeMetricFamily(
            "mediaserver_rtp_ports_capacity",
            "RTP ports in the configured range (one per leg)",
            value=server.ports.capacity,
        )

    def _sip(self) -> Iterator[Metric]:
        server = self.server
        counters = server.endpoint.counters if server.endpoint is not None else None
        for name, text in _SIP_COUNTERS.items():
            value = getattr(counters, name) if counters is not None else 0
            yield CounterMetricFamily(f"mediaserver_sip_{name}", text, value=value)
        yield CounterMetricFamily(
            "mediaserver_sip_forbidden",
            "Requests answered 403 because their source is outside [sip] allowed_sources",
            value=server.forbidden,
        )
