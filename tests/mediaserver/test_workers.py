"""The supervisor's pieces that need no processes: merging the workers' metrics,
and the channel a worker reads its configuration and orders from.

(The supervisor itself runs real workers in tests/e2e/test_workers.py.)
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter as Tally

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mediaserver.config import load_config, worker_share
from mediaserver.workers import WorkerLink, merge_expositions


def exposition(calls: dict[str, int], active: float, hook_seconds: list[float]) -> str:
    """What a worker's /metrics looks like: labelled counter, gauge, histogram."""
    registry = CollectorRegistry()
    total = Counter("mediaserver_calls", "Calls ended", ["result"], registry=registry)
    for result, n in calls.items():
        total.labels(result).inc(n)
    Gauge("mediaserver_calls_active", "Calls now", registry=registry).set(active)
    hook = Histogram("mediaserver_hook_duration_seconds", "Hooks", buckets=(0.1, 1.0),
                     registry=registry)  # fmt: skip
    for seconds in hook_seconds:
        hook.observe(seconds)
    return generate_latest(registry).decode()


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_sample_gets_its_worker_label_and_each_family_appears_once() -> None:
    zero = exposition({"hangup": 3, "rejected-503": 1}, 2, [0.05, 0.5])
    one = exposition({"hangup": 5}, 4, [2.0])
    merged = merge_expositions([("0", zero), ("1", one)])

    families = list(text_string_to_metric_families(merged))
    names = [f.name for f in families]
    assert len(names) == len(set(names))  # no family split in two
    assert set(names) >= {
        "mediaserver_calls",
        "mediaserver_calls_active",
        "mediaserver_hook_duration_seconds",
    }
    type_lines = Tally(line.split()[2] for line in merged.splitlines() if line.startswith("# TYPE"))
    assert set(type_lines.values()) == {1}
    assert all(s.labels.get("worker") in ("0", "1") for f in families for s in f.samples)

    samples = parse(merged)
    calls = "mediaserver_calls_total"
    assert samples[(calls, frozenset({("worker", "0"), ("result", "hangup")}))] == 3
    assert samples[(calls, frozenset({("worker", "0"), ("result", "rejected-503")}))] == 1
    assert samples[(calls, frozenset({("worker", "1"), ("result", "hangup")}))] == 5
    assert samples[("mediaserver_calls_active", frozenset({("worker", "1")}))] == 4
    count = "mediaserver_hook_duration_seconds_count"
    assert samples[(count, frozenset({("worker", "0")}))] == 2
    le1 = frozenset({("worker", "1"), ("le", "1.0")})
    assert samples[("mediaserver_hook_duration_seconds_bucket", le1)] == 0
    # every source sample is there, labelled, and nothing else
    assert len(samples) == len(parse(zero)) + len(parse(one))


def test_bare_and_empty_label_sets_and_untyped_samples() -> None:
    text = '# TYPE up gauge\nup 1\nodd{} 2.5\nodd_total{a="x"} 3 1700000000000\n'
    merged = merge_expositions([("7", text)])
    assert parse(merged) == {
        ("up", frozenset({("worker", "7")})): 1,
        ("odd", frozenset({("worker", "7")})): 2.5,
        ("odd_total", frozenset({("worker", "7"), ("a", "x")})): 3,
    }
    assert merge_expositions([]) == ""


@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=6))
def test_merged_values_parse_back_per_worker(values: list[int]) -> None:
    texts = [(str(i), exposition({"hangup": v}, v / 2, [])) for i, v in enumerate(values)]
    samples = parse(merge_expositions(texts))
    for i, v in enumerate(values):
        labels = frozenset({("worker", str(i)), ("result", "hangup")})
        assert samples[("mediaserver_calls_total", labels)] == v
        assert samples[("mediaserver_calls_active", frozenset({("worker", str(i))}))] == v / 2


async def test_a_worker_reads_its_config_then_follows_drain_and_interrupt_orders() -> None:
    cfg = load_config(
        None,
        workers=2,
        allowed_sources=("10.0.0.0/8",),
        codecs=("PCMA", "PCMU"),
        max_calls=9,
        recording_options=(("directory", "/tmp/rec-w"), ("retries", 2)),
    )
    ours, theirs = socket.socketpair()
    first = {"index": 1, "workers": 2, "config": worker_share(cfg, 1).__dict__}
    # the orders are already queued behind the config line: open() must not eat them
    ours.sendall(json.dumps(first).encode() + b"\ndrain\n")
    link = WorkerLink.open(theirs.detach())
    try:
        assert (link.index, link.workers) == (1, 2)
        assert link.config == worker_share(cfg, 1)  # tuples and all, as the supervisor meant
        assert link.config.max_calls == 5
        # [recording] arrives intact; recordings are reported under the public admin URL
        assert link.config.recording.directory == "/tmp/rec-w"
        assert link.config.recording.retries == 2
        assert link.config.public_admin_url == "http://127.0.0.1:8081"
        stop, interrupt = asyncio.Event(), asyncio.Event()
        follow = asyncio.create_task(link.follow(stop, interrupt))
        await asyncio.wait_for(stop.wait(), 2)
        assert not interrupt.is_set()
        await link.report_ready(sip_port=5062, admin="http://127.0.0.1:1")
        ready = json.loads(await asyncio.to_thread(ours.recv, 4096))
        assert ready["ready"] and ready["sip_port"] == 5062
        ours.sendall(b"interrupt\n")
        await asyncio.wait_for(interrupt.wait(), 2)
        ours.close()  # the supervisor gone: follow() ends
        await asyncio.wait_for(follow, 2)
    finally:
        link.close()


async def test_a_vanished_supervisor_means_drain() -> None:
    ours, theirs = socket.socketpair()
    cfg = load_config(None, workers=2)
    first = {"index": 0, "workers": 2, "config": worker_share(cfg, 0).__dict__}
    ours.sendall(json.dumps(first).encode() + b"\n")
    link = WorkerLink.open(theirs.detach())
    try:
        ours.close()
        stop, interrupt = asyncio.Event(), asyncio.Event()
        await asyncio.wait_for(link.follow(stop, interrupt), 2)
        assert stop.is_set() and not interrupt.is_set()
    finally:
        link.close()
