"""Kamailio (``configs/kamailio/kamailio.cfg``) in front of two ``serve`` instances.

Real Kamailio, real ``serve`` and real SIPp on loopback. SIPp's built-in
``uac`` scenario calls Kamailio; the dispatcher spreads the INVITEs over the
two instances, which answer with a 30 s ``pause`` (SIPp hangs up after 1 s).
The cfg is the shipped file, unchanged: the test only overrides its
``#!define`` parameters (ports, list file, faster probing) with ``-A``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.e2e.harness import SIPP, Server, free_port_range, free_udp_port

KAMAILIO = shutil.which("kamailio") or (
    "/usr/sbin/kamailio" if os.access("/usr/sbin/kamailio", os.X_OK) else None
)
CFG = Path(__file__).resolve().parents[2] / "configs" / "kamailio" / "kamailio.cfg"
APP = [{"verb": "pause", "length": 30}]
CALLS = 100

pytestmark = [
    pytest.mark.skipif(KAMAILIO is None, reason="kamailio missing: scripts/setup.sh --system"),
    pytest.mark.skipif(SIPP is None, reason="SIPp missing: scripts/setup.sh --system"),
]


def options_ping(port: int, timeout: float) -> str | None:
    """Send one OPTIONS to 127.0.0.1:port; return the status line of the reply, if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        local = s.getsockname()[1]
        tag = uuid.uuid4().hex[:8]
        request = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@127.0.0.1>;tag={tag}\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(request.encode(), ("127.0.0.1", port))
        try:
            data = s.recv(65536)
        except TimeoutError:
            return None
        return data.split(b"\r\n", 1)[0].decode(errors="replace")


class Kamailio:
    """The shipped cfg run in the foreground, its runtime files in ``tmp``."""

    def __init__(self, tmp: Path, servers: list[Server]) -> None:
        assert KAMAILIO is not None
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.log_path = tmp / "kamailio.log"
        self.list_path = tmp / "dispatcher.list"
        self.list_path.write_text(
            "".join(
                f"1 sip:127.0.0.1:{s.sip_port} 0 0 duid=media{i}\n"
                for i, s in enumerate(servers, 1)
            )
        )
        self.args = [
            KAMAILIO,
            "-f",
            str(CFG),
            "-DD",
            "-E",  # foreground, log to stderr
            "-Y",
            str(tmp),  # runtime dir: nothing under /run
            "-P",
            str(tmp / "kamailio.pid"),
            "-m",
            "32",
            "-M",
            "4",  # MB of shared / per-process memory
            "-A",
            f"LISTEN=udp:127.0.0.1:{self.port}",
            "-A",
            f'DISPATCHER_LIST="{self.list_path}"',
            "-A",
            "PING_INTERVAL=1",
            "-A",
            "PROBING_THRESHOLD=1",
            "-A",
            "FR_TIMER=1000",
            "-A",
            "FR_INV_TIMER=5000",
            "-A",
            "WORKERS=2",
            "-A",
            "LOG_LEVEL=3",  # logs "dispatch: <Call-ID> -> <instance>"
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Kamailio:
        log = self.log_path.open("wb")
        # Its own session: stopping it reaches the workers it forks.
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited early:\n{self.log_path.read_text()}")
            if options_ping(self.port, 0.2) == "SIP/2.0 200 OK":
                return self
        self.stop()
        raise RuntimeError(f"kamailio did not answer OPTIONS:\n{self.log_path.read_text()}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_sipp(cwd: Path, port: int, *args: str) -> subprocess.Popen[str]:
    """SIPp's built-in uac: CALLS calls at 20 per second, 1 s each, against port.

    At most 30 at once (``-l``): one instance alone must be able to take
    them all, and the harness gives each ``serve`` 64 RTP ports (32 calls).
    """
    assert SIPP is not None
    return subprocess.Popen(
        [
            SIPP,
            f"127.0.0.1:{port}",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_udp_port()),
            "-mp",
            str(free_port_range(4)[0]),
            "-sn",
            "uac",
            "-m",
            str(CALLS),
            "-r",
            "20",
            "-l",
            "30",
            "-d",
            "1000",
            "-nostdin",
            "-timeout",
            "40s",
            "-timeout_error",
            "-trace_err",
            *args,
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(sipp: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = sipp.communicate(timeout=50)
    except subprocess.TimeoutExpired:
        os.killpg(sipp.pid, signal.SIGKILL)
        out, _ = sipp.communicate()
    return sipp.returncode, out


def call_counts(sipp_out: str) -> tuple[int, int]:
    """(successful, failed) calls from SIPp's final statistics screen."""

    def cumulated(name: str) -> int:
        found = re.findall(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", sipp_out)
        assert found, f"no '{name}' line in SIPp's output:\n{sipp_out[-3000:]}"
        return int(found[-1])

    return cumulated("Successful call"), cumulated("Failed call")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Kamailio, list[Server]]]:
    with ExitStack() as stack:
        servers = []
        for name in ("media1", "media2"):
            (tmp_path / name).mkdir()
            servers.append(stack.enter_context(Server(tmp_path / name, APP)))
        kamailio = stack.enter_context(Kamailio(tmp_path / "kamailio", servers))
        yield kamailio, servers


def test_100_calls_are_spread_over_both_instances_and_all_complete(
    tmp_path: Path, cluster: tuple[Kamailio, list[Server]]
) -> None:
    kamailio, servers = cluster
    code, out = finish(start_sipp(tmp_path, kamailio.port))
    assert code == 0, out[-3000:]
    assert call_counts(out) == (CALLS, 0)
    answered = [len(s.wait_for("call.answered", 1, timeout=5)) for s in servers]
    assert sum(answered) == CALLS
    # Round-robin: each instance took about half.
    assert min(answered) >= CALLS // 2 - 5, answered
    # Every call ended on the instance that had it, by the caller's BYE: the
    # BYE was routed to the right instance.
    for server, count in zip(servers, answered, strict=True):
        ends = server.wait_for("call.end", count, timeout=10)
        assert len(ends) == count
        assert {e["reason"] for e in ends} == {"hangup"}, {e["reason"] for e in ends}


def test_killing_one_instance_mid_run_fails_only_the_calls_it_had(
    tmp_path: Path, cluster: tuple[Kamailio, list[Server]]
) -> None:
    kamailio, (victim, survivor) = cluster
    sipp = start_sipp(tmp_path, kamailio.port)
    try:
        # About 2 s in: the victim has completed calls, holds live ones, and
        # more are coming.
        victim.wait_for("call.end", 5, timeout=20)
        victim.kill()  # SIGKILL: a crashed host, not a drain
    finally:
        code, out = finish(sipp)
    victim_uri = f"sip:127.0.0.1:{victim.sip_port}"
    # Where Kamailio sent each call in the end (a failover logs a second line).
    last_hop = dict(re.findall(r"dispatch: (\S+) -> (\S+)", kamailio.log()))
    assert len(last_hop) == CALLS
    sent_to_victim = sum(hop == victim_uri for hop in last_hop.values())
    answered_by_victim = len(victim.events("call.answered"))
    completed_on_victim = len(victim.events("call.end"))
    live_on_victim = answered_by_victim - completed_on_victim
    assert completed_on_victim > 0 and live_on_victim > 0  # the kill really was mid-run
    successful, failed = call_counts(out)
    assert code == 1, out[-3000:]  # SIPp: "at least one call failed"
    assert successful + failed == CALLS, out[-3000:]
    # The calls the victim had when it died fail (their BYE cannot reach it;
    # an INVITE it had taken but not yet answered cannot be answered), and
    # no other call does ...
    assert live_on_victim <= failed <= sent_to_victim - completed_on_victim, (
        live_on_victim,
        failed,
        sent_to_victim - completed_on_victim,
    )
    # ... every other one, including those sent to the victim before Kamailio
    # noticed it was gone, was answered and completed by the survivor.
    survivor_answered = survivor.wait_for("call.answered", CALLS - sent_to_victim, timeout=10)
    assert len(survivor_answered) == CALLS - sent_to_victim
    survivor_ends = survivor.wait_for("call.end", len(survivor_answered), timeout=10)
    assert {e["reason"] for e in survivor_ends} == {"hangup"}
    # The OPTIONS probes (or the unanswered INVITE) took the dead instance out.
    down = [line for line in kamailio.log().splitlines() if "destination down" in line]
    assert any(f"sip:127.0.0.1:{victim.sip_port}" in line for line in down), down


def test_draining_one_instance_mid_run_ends_only_its_calls_and_new_ones_go_to_the_other(
    tmp_path: Path, cluster: tuple[Kamailio, list[Server]]
) -> None:
    kamailio, (victim, survivor) = cluster
    sipp = start_sipp(tmp_path, kamailio.port)
    try:
        victim.wait_for("call.end", 5, timeout=20)
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGTERM)  # an operator taking it out of service
        assert victim.proc.wait(15) == 0
    finally:
        code, out = finish(sipp)
    draining = victim.events("serve.draining")[0]
    ended_by_drain = [e for e in victim.events("call.end") if e["reason"] == "shutdown"]
    assert draining["calls"] == len(ended_by_drain) > 0  # the drain really was mid-run
    # The drain's BYEs reached the callers: serve follows the Record-Route
    # back through Kamailio, and SIPp answered them.
    assert victim.events("serve.drained")
    successful, failed = call_counts(out)
    assert code == 1, out[-3000:]  # SIPp: "at least one call failed"
    assert successful + failed == CALLS, out[-3000:]
    # Only the calls the drain hung up failed (SIPp's scenario did not expect
    # that BYE); INVITEs that reached the instance while it drained (503) or
    # after it exited (no answer) went on to the other one.
    assert failed == len(ended_by_drain), (failed, len(ended_by_drain), out[-3000:])
    answered_by_victim = len(victim.events("call.answered"))
    survivor_answered = survivor.wait_for("call.answered", CALLS - answered_by_victim, timeout=10)
    assert len(survivor_answered) == CALLS - answered_by_victim


def test_a_full_instance_refuses_with_503_and_its_calls_go_to_the_other(tmp_path: Path) -> None:
    with ExitStack() as stack:
        (tmp_path / "small").mkdir()
        (tmp_path / "large").mkdir()
        small = stack.enter_context(Server(tmp_path / "small", APP, max_calls=3))
        large = stack.enter_context(Server(tmp_path / "large", APP))
        kamailio = stack.enter_context(Kamailio(tmp_path / "kamailio", [small, large]))
        code, out = finish(start_sipp(tmp_path, kamailio.port))
    assert code == 0, out[-3000:]
    assert call_counts(out) == (CALLS, 0)
    refused = small.events("call.refused")
    assert refused and {e["status"] for e in refused} == {503}
    answered = len(small.events("call.answered")), len(large.events("call.answered"))
    assert answered[0] > 0 and sum(answered) == CALLS, answered
    # Still in service: a full instance answers the probes, it is not marked down.
    assert "destination down" not in kamailio.log()
