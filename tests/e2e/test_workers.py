"""``serve --workers 2``: one SIP address, two worker processes, real SIPp callers.

The supervisor is the ``Server`` subprocess; its workers are its children.
SIPp runs with ``-t un`` (a socket per call), so the kernel's SO_REUSEPORT
hash spreads the calls over both workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mediaserver.workers import RESTARTS_PER_MINUTE
from tests.e2e.harness import Server, free_udp_port, run_sipp
from tests.e2e.test_operations import until
from tests.e2e.test_serve_robustness import SDP

SCENARIOS = Path(__file__).parent / "scenarios"
PAUSE = [{"verb": "pause", "length": 30}]
# a UDP socket per call: each call has its own source port for the kernel to hash
SPREAD = ("-t", "un", "-max_socket", "100")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Admin:
    """The supervisor's admin endpoint (its URL from serve.listening)."""

    def __init__(self, server: Server, session: aiohttp.ClientSession) -> None:
        (listening,) = server.events("serve.listening")
        (admin,) = server.events("admin.listening")  # the workers' are private
        assert listening["admin"] == admin["url"]
        self.url = admin["url"]
        self.session = session

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.url + path) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.text()

    async def metrics(self) -> Samples:
        code, text = await self.get("/metrics")
        assert code == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def per_worker(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    """``name``'s value by worker label (samples with exactly ``labels`` besides it)."""
    out: dict[str, float] = {}
    for (sample, sample_labels), value in samples.items():
        rest = dict(sample_labels)
        worker = rest.pop("worker", None)
        if sample == name and worker is not None and rest == labels:
            out[worker] = value
    return out


def workers(tmp_path: Path, app: Any, *extra: str) -> Server:
    config = tmp_path / "server.toml"
    config.write_text("[calls]\nworkers = 2\ndrain_seconds = 10\n")
    return Server(tmp_path, app, "--config", str(config), *extra)


async def test_forty_calls_complete_and_both_workers_take_some(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        with workers(tmp_path, PAUSE) as server:
            admin = Admin(server, session)
            code, health = await admin.get("/health")
            assert code == 200 and [w["status"] for w in health["workers"]] == ["ok", "ok"]
            assert health["max_calls"] == 100  # 50 each
            res = await asyncio.to_thread(
                run_sipp, tmp_path, server, "-sn", "uac", *SPREAD,
                "-m", "40", "-l", "20", "-r", "40", "-d", "500",
            )  # fmt: skip
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]

            async def all_counted() -> Samples | None:
                now = await admin.metrics()
                done = per_worker(now, "mediaserver_calls_total", result="hangup")
                return now if sum(done.values()) == 40 else None

            metrics = await until(all_counted, 10, "40 hung-up calls in the merged /metrics")
            assert server.stop() == 0
    hangups = per_worker(metrics, "mediaserver_calls_total", result="hangup")
    assert set(hangups) == {"0", "1"} and min(hangups.values()) > 0, hangups
    assert per_worker(metrics, "mediaserver_worker_up") == {"0": 1.0, "1": 1.0}
    # each worker used only its own half of the RTP range
    listening = server.events("serve.listening")[0]
    halves = [tuple(map(int, r.split("-"))) for r in listening["rtp_ports"]]
    assert halves[0][1] < halves[1][0]
    for event in server.events("call.answered"):
        low, high = halves[event["worker"]]
        assert low <= event["rtp_port"] <= high
    stopped = server.events("serve.stopped")
    assert sorted(e["worker"] for e in stopped) == [0, 1]
    assert all(e["live_calls"] == 0 and e["rtp_ports_in_use"] == 0 for e in stopped)


def sip(method: str, port: int, call_id: str, *, cseq: int, to_tag: str = "", body: str = "",
        uri: str = "sip:svc@127.0.0.1") -> bytes:  # fmt: skip
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call_id}-{cseq}-{method};rport\r\n"
        f"From: <sip:tester@127.0.0.1:{port}>;tag=caller\r\n"
        f"To: <sip:svc@127.0.0.1>{';tag=' + to_tag if to_tag else ''}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:tester@127.0.0.1:{port}>\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    return text.encode()


def final(sock: socket.socket, method: str) -> tuple[str, tuple[str, int]]:
    """The next final response to ``method`` on ``sock`` and where it came from."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data, source = sock.recvfrom(65536)
        text = data.decode()
        cseq = next(line for line in text.splitlines() if line.startswith("CSeq:"))
        if cseq.endswith(method) and not text.startswith("SIP/2.0 1"):
            return text, source
    raise AssertionError(f"no final response to {method}")


def header(text: str, name: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.lower().startswith(name.lower() + ":"))  # fmt: skip


async def test_in_dialog_requests_reach_the_dialogs_worker_from_any_source(
    tmp_path: Path,
) -> None:
    """The 200 (and its retransmission) comes from the public port and names the
    worker's private port in Contact; a BYE sent there from another source port
    (which the kernel's hash could have given to the other worker) ends the call
    and is answered from there."""
    with workers(tmp_path, PAUSE) as server:
        private = set(server.events("serve.listening")[0]["worker_sip_ports"])
        caller, other = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        try:
            for s in (caller, other):
                s.bind(("127.0.0.1", 0))
                s.settimeout(5)
            port, other_port = caller.getsockname()[1], other.getsockname()[1]
            call_id = f"workers-{time.time_ns()}"
            sdp = SDP.format(port=free_udp_port(), pts="0", maps="a=rtpmap:0 PCMU/8000\r\n")
            public = ("127.0.0.1", server.sip_port)
            caller.sendto(sip("INVITE", port, call_id, cseq=1, body=sdp), public)
            ok, source = await asyncio.to_thread(final, caller, "INVITE")
            assert ok.startswith("SIP/2.0 200") and source == public
            # no ACK yet: the 200 is retransmitted on a timer, from the public port too
            again, source = await asyncio.to_thread(final, caller, "INVITE")
            assert again == ok and source == public
            contact_port = int(header(ok, "Contact").rstrip(">").rsplit(":", 1)[1])
            assert contact_port in private
            tag = header(ok, "To").split("tag=")[1]
            uri = f"sip:svc@127.0.0.1:{contact_port}"
            target = ("127.0.0.1", contact_port)
            caller.sendto(sip("ACK", port, call_id, cseq=1, to_tag=tag, uri=uri), target)
            other.sendto(sip("BYE", other_port, call_id, cseq=2, to_tag=tag, uri=uri), target)
            bye, source = await asyncio.to_thread(final, other, "BYE")
        finally:
            caller.close()
            other.close()
        assert bye.startswith("SIP/2.0 200"), bye
        assert source == target
        (end,) = server.wait_for("call.end")
    assert end["reason"] == "hangup"


async def test_sigterm_drains_every_workers_calls(tmp_path: Path) -> None:
    calls = 16
    async with aiohttp.ClientSession() as session:
        with workers(tmp_path, PAUSE) as server:
            admin = Admin(server, session)
            sipp = asyncio.create_task(
                asyncio.to_thread(
                    run_sipp, tmp_path, server, "-sf", str(SCENARIOS / "server_bye.xml"), *SPREAD,
                    "-m", str(calls), "-l", str(calls), "-r", str(calls), timeout=40,
                )
            )  # fmt: skip

            async def all_live() -> bool:
                _, body = await admin.get("/calls")
                return len(body["calls"]) == calls

            await until(all_live, 20, f"{calls} live calls in /calls")
            _, body = await admin.get("/calls")
            by_worker = {c["worker"] for c in body["calls"]}
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            async def draining() -> bool:
                code, health = await admin.get("/health")
                return code == 503 and health["status"] == "draining"

            await until(draining, 5, "/health answering 503 draining")
            code = await asyncio.to_thread(server.proc.wait, 20)
            exited_after = time.monotonic() - signalled
            res = await sipp
    assert code == 0 and exited_after < 10, (code, exited_after)
    assert by_worker == {0, 1}
    assert res.returncode == 0, res.stdout[-3000:]  # every call got (and answered) a BYE
    drained = server.events("serve.drained")
    assert sorted(e["worker"] for e in drained) == [0, 1]
    assert not server.events("serve.drain_incomplete")
    ends = server.events("call.end")
    assert len(ends) == calls and {e["reason"] for e in ends} == {"shutdown"}
    assert server.events("serve.workers_stopped")[0]["exit_codes"] == [0, 0]


async def test_a_killed_worker_is_replaced_and_calls_go_on(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        with workers(tmp_path, PAUSE) as server:
            admin = Admin(server, session)
            victim = server.events("serve.listening")[0]["worker_pids"][1]
            os.kill(victim, signal.SIGKILL)
            (exited,) = server.wait_for("serve.worker_exited", timeout=10)
            assert (exited["worker"], exited["pid"]) == (1, victim)
            assert exited["signal"] == "SIGKILL"
            # the replacement takes a second or two to start: meanwhile /health says who is out
            code, health = await admin.get("/health")
            assert code == 503 and health["failing"] == ["worker 1: restarting"], health
            (restarted,) = server.wait_for("serve.worker_ready", timeout=20)
            assert restarted["worker"] == 1 and restarted["pid"] != victim

            async def healthy() -> bool:
                return (await admin.get("/health"))[0] == 200

            await until(healthy, 10, "/health 200 again with the new worker")
            res = await asyncio.to_thread(
                run_sipp, tmp_path, server, "-sn", "uac", *SPREAD,
                "-m", "20", "-l", "20", "-r", "40", "-d", "300",
            )  # fmt: skip
            assert res.returncode == 0, res.stdout[-3000:]

            async def counted() -> Samples | None:
                now = await admin.metrics()
                done = per_worker(now, "mediaserver_calls_total", result="hangup")
                return now if sum(done.values()) == 20 else None

            metrics = await until(counted, 10, "the 20 calls in the merged /metrics")
            assert server.stop() == 0
    assert metrics[("mediaserver_worker_restarts_total", frozenset())] == 1
    assert per_worker(metrics, "mediaserver_worker_up") == {"0": 1.0, "1": 1.0}
    assert server.events("serve.workers_stopped")[0]["exit_codes"] == [0, 0]


async def test_workers_that_keep_dying_stop_the_server_with_an_error(tmp_path: Path) -> None:
    with workers(tmp_path, PAUSE) as server:
        (tmp_path / "app.json").unlink()  # from now on a new worker cannot load the app
        victim = server.events("serve.listening")[0]["worker_pids"][1]
        os.kill(victim, signal.SIGKILL)
        assert server.proc is not None
        code = await asyncio.to_thread(server.proc.wait, 30)
    (failing,) = server.events("serve.workers_failing")
    assert failing["deaths_last_minute"] == RESTARTS_PER_MINUTE + 1
    exits = server.events("serve.worker_exited")
    assert len(exits) == RESTARTS_PER_MINUTE + 1 and {e["worker"] for e in exits} == {1}
    assert len(server.events("serve.bad_app")) == RESTARTS_PER_MINUTE
    assert code != 0
    # the healthy worker was drained, not killed
    assert [e["worker"] for e in server.events("serve.drained")] == [0]
