"""``mediaserver serve`` against real SIPp on loopback.

SIPp's own ``uac_pcap`` scenario plays its bundled PCMA capture (30 ms
packets) and an RFC 2833 '1'; the server's per-call dump must hold exactly
the capture's audio and exactly one key press.
"""

from __future__ import annotations

import threading
import time
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from dsp.g711 import alaw_decode
from rtp.packet import RtpPacket
from tests.e2e.harness import SIPP_SHARE, Server, run_sipp
from tests.rtp.pcap import read_udp

SCENARIOS = Path(__file__).parent / "scenarios"


def capture_audio() -> np.ndarray:
    pkts = [RtpPacket.parse(d.payload) for d in read_udp(SIPP_SHARE / "g711a.pcap")]
    return alaw_decode(np.frombuffer(b"".join(p.payload for p in pkts), np.uint8))


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)


def test_uac_pcap_audio_matches_the_capture_and_one_key_is_detected(tmp_path: Path) -> None:
    with Server(tmp_path, [{"verb": "pause", "length": 30}]) as server:
        res = run_sipp(tmp_path, server, "-sn", "uac_pcap", "-m", "1")
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        server.wait_for("call.end")
    dumps = server.dumps()
    assert len(dumps) == 1
    summary = dumps[0]
    assert summary["codec"] == "PCMA/8000"
    assert [(k["digit"], k["source"]) for k in summary["digits"]] == [("1", "rfc4733")]
    assert summary["rtp"]["lost"] == 0 and summary["rtp"]["late"] == 0
    rate, audio = read_wav(server.dump_dir / f"{summary['attributes']['callSid']}.wav")
    assert rate == 8000
    caller = audio[:, 0]
    expected = capture_audio()
    start = int(np.flatnonzero(caller != caller[0])[0])  # first sample after the pre-roll
    start -= int(np.flatnonzero(expected != expected[0])[0])
    np.testing.assert_array_equal(caller[start : start + expected.size], expected)


def test_server_hangs_up_with_bye_when_the_app_says_so(tmp_path: Path) -> None:
    app = [{"verb": "pause", "length": 1}, {"verb": "hangup"}]
    with Server(tmp_path, app) as server:
        t0 = time.monotonic()
        res = run_sipp(tmp_path, server, "-sf", str(SCENARIOS / "server_bye.xml"), "-m", "1")
        assert res.returncode == 0, res.stdout[-2000:]
        assert time.monotonic() - t0 < 10
        end = server.wait_for("call.end")[0]
    assert end["reason"] == "hangup-verb"
    assert end["codec"] == "PCMA/8000"


@pytest.fixture
def slow_call_hook() -> Iterator[str]:
    """A real HTTP call hook that takes 3 s to answer (the caller cancels first)."""

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(3)
            body = b'[{"verb": "pause", "length": 5}]'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/call"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_cancel_before_answer_gets_487(tmp_path: Path, slow_call_hook: str) -> None:
    with Server(tmp_path, slow_call_hook) as server:
        res = run_sipp(tmp_path, server, "-sf", str(SCENARIOS / "cancel.xml"), "-m", "1")
        assert res.returncode == 0, res.stdout[-2000:]
        end = server.wait_for("call.end")[0]
    assert end["reason"] == "cancel"


def test_fifty_sequential_calls_leak_nothing(tmp_path: Path) -> None:
    with Server(tmp_path, [{"verb": "pause", "length": 30}]) as server:
        res = run_sipp(
            tmp_path, server, "-sn", "uac", "-m", "50", "-l", "1", "-d", "100", timeout=90
        )
        assert res.returncode == 0, res.stdout[-2000:]
        server.wait_for("call.end", count=50)
        assert server.stop() == 0
    stopped = server.events("serve.stopped")[0]
    assert stopped["calls"] == {"hangup": 50}  # SIPp hung up every call
    assert stopped["live_calls"] == 0
    assert stopped["rtp_ports_in_use"] == 0
    assert stopped["engine_legs"] == 0
    assert stopped["tasks"] == 0
    ports = {e["rtp_port"] for e in server.events("call.answered")}
    assert len(ports) > 1  # ports rotate through the range instead of reusing at once


def test_over_the_call_limit_is_503(tmp_path: Path) -> None:
    with Server(tmp_path, [{"verb": "pause", "length": 30}], max_calls=1) as server:
        res = run_sipp(tmp_path, server, "-sn", "uac", "-m", "2", "-l", "2", "-d", "2000")
        assert res.returncode != 0  # one of the two calls was refused
        refused = server.wait_for("call.refused")
    assert [e["status"] for e in refused] == [503]
    assert len(server.events("call.answered")) == 1


def test_reinvite_hold_then_codec_change(tmp_path: Path) -> None:
    with Server(tmp_path, [{"verb": "pause", "length": 30}]) as server:
        res = run_sipp(tmp_path, server, "-sf", str(SCENARIOS / "reinvite.xml"), "-m", "1")
        assert res.returncode == 0, res.stdout[-3000:]
        server.wait_for("call.end")
    changes = [(e["codec"], e["on_hold"]) for e in server.events("call.reinvite")]
    assert changes == [("PCMU/8000", True), ("PCMA/8000", False)]
    assert server.events("call.end")[0]["reason"] == "hangup"


def test_ipv6_loopback_call(tmp_path: Path) -> None:
    with Server(tmp_path, [{"verb": "pause", "length": 30}], host="::1") as server:
        res = run_sipp(tmp_path, server, "-sn", "uac", "-m", "1", "-d", "500")
        assert res.returncode == 0, res.stdout[-2000:]
        answered = server.wait_for("call.answered")[0]
        server.wait_for("call.end")
    assert answered["remote"][0] == "::1"
    assert answered["codec"] == "PCMU/8000"
