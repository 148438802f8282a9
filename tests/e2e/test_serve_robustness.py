"""``serve`` under bad input: it answers errors clearly and keeps working."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest

from tests.e2e.harness import Server, free_udp_port, run_sipp

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP {pts}\r\n{maps}"
)


class Client:
    """A bare SIP UDP client: send text, read one response's status line."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(1.0)
        self.port = self.sock.getsockname()[1]
        self.dest = ("127.0.0.1", server.sip_port)
        self.n = 0

    def request(
        self,
        method: str,
        *,
        headers: dict[str, str] | None = None,
        body: str = "",
        omit: tuple[str, ...] = (),
    ) -> str:
        self.n += 1
        branch = f"z9hG4bK-test-{self.n}-{time.time_ns()}"
        fields = {
            "Via": f"SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch}",
            "From": f"<sip:tester@127.0.0.1:{self.port}>;tag=t{self.n}",
            "To": f"<sip:svc@127.0.0.1:{self.dest[1]}>",
            "Call-ID": f"robust-{self.n}-{time.time_ns()}@127.0.0.1",
            "CSeq": f"1 {method}",
            "Max-Forwards": "70",
            "Contact": f"<sip:tester@127.0.0.1:{self.port}>",
        }
        fields.update(headers or {})
        for name in omit:
            fields.pop(name, None)
        if body:
            fields["Content-Type"] = "application/sdp"
        fields["Content-Length"] = str(len(body.encode()))
        text = f"{method} sip:svc@127.0.0.1:{self.dest[1]} SIP/2.0\r\n"
        text += "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n" + body
        # UDP loses datagrams under load; like any SIP client (timer E), retransmit
        for _ in range(4):
            self.sock.sendto(text.encode(), self.dest)
            try:
                return self.final_response(branch)
            except TimeoutError:
                continue
        raise TimeoutError(f"no final response to {method} after 4 tries")

    def final_response(self, branch: str) -> str:
        while True:
            data, _ = self.sock.recvfrom(65536)
            text = data.decode(errors="replace")
            if branch in text and not text.startswith("SIP/2.0 1"):
                return text

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    with Server(tmp_path, [{"verb": "pause", "length": 30}]) as srv:
        yield srv


def status(response: str) -> int:
    return int(response.split(" ", 2)[1])


def test_options_is_answered_with_allow_and_accept(server: Server) -> None:
    c = Client(server)
    res = c.request("OPTIONS")
    c.close()
    assert status(res) == 200
    assert "INVITE" in res and "BYE" in res and "application/sdp" in res


def test_two_thousand_random_datagrams_do_not_stop_it_answering(server: Server) -> None:
    rng = random.Random(2026)
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(2000):
            if i % 4 == 0:  # half-plausible SIP
                head = rng.choice([b"INVITE ", b"SIP/2.0 ", b"BYE sip:", b"OPTIONS x SIP/2.0\r\n"])
                payload = head + rng.randbytes(rng.randint(0, 600))
            else:
                payload = rng.randbytes(rng.randint(1, 1400))
            junk.sendto(payload, ("127.0.0.1", server.sip_port))
            if i % 200 == 0:
                time.sleep(0.01)  # bounded rate: stay within loopback buffers
    finally:
        junk.close()
    c = Client(server)
    assert status(c.request("OPTIONS")) == 200
    c.close()


@pytest.mark.parametrize(
    ("omit", "code"),
    [
        (("Call-ID",), 400),
        (("CSeq",), 400),
        (("From",), 400),
        (("To",), 400),
        (("Contact",), 400),
    ],
)
def test_invite_missing_a_mandatory_header_gets_400(
    server: Server, omit: tuple[str, ...], code: int
) -> None:
    c = Client(server)
    sdp = SDP.format(port=free_udp_port(), pts="0", maps="a=rtpmap:0 PCMU/8000\r\n")
    res = c.request("INVITE", body=sdp, omit=omit)
    c.close()
    assert status(res) == code, res


def test_invite_with_only_unusable_codecs_gets_488(server: Server) -> None:
    c = Client(server)
    sdp = SDP.format(port=free_udp_port(), pts="3 18", maps="a=rtpmap:18 G729/8000\r\n")
    res = c.request("INVITE", body=sdp)
    c.close()
    assert status(res) == 488, res
    assert server.wait_for("call.refused")[0]["status"] == 488


def test_invite_with_garbage_sdp_gets_a_4xx(server: Server) -> None:
    c = Client(server)
    res = c.request("INVITE", body="this is not sdp\r\n")
    c.close()
    assert 400 <= status(res) < 500, res


def test_unknown_method_gets_501_and_bye_outside_a_dialog_gets_481(server: Server) -> None:
    c = Client(server)
    assert status(c.request("FROBNICATE")) == 501
    assert status(c.request("BYE", headers={"To": "<sip:svc@127.0.0.1>;tag=nosuch"})) == 481
    c.close()


def test_a_call_without_rtp_is_hung_up_after_the_rtp_timeout(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text("[rtp]\ntimeout = 2.0\n")
    with Server(tmp_path, [{"verb": "pause", "length": 30}], "--config", str(config)) as srv:
        # SIPp's plain uac sends no RTP; it holds the call 10 s, we hang up at ~2 s
        run_sipp(tmp_path, srv, "-sn", "uac", "-m", "1", "-d", "10000", timeout=30)
        end = srv.wait_for("call.end", timeout=15)[0]
    assert end["reason"] == "rtp-timeout"
    assert 1.5 <= end["duration"] < 6


def test_unreachable_call_hook_rejects_the_call_with_500(tmp_path: Path) -> None:
    dead_hook = f"http://127.0.0.1:{free_udp_port()}/call"  # nothing listens there (TCP)
    with Server(tmp_path, dead_hook) as srv:
        c = Client(srv)
        sdp = SDP.format(port=free_udp_port(), pts="0", maps="a=rtpmap:0 PCMU/8000\r\n")
        assert status(c.request("INVITE", body=sdp)) == 500
        c.close()
        error = srv.wait_for("app.error")[0]
        assert "call hook failed" in error["error"]
        srv.wait_for("call.end")
        assert srv.stop() == 0
    assert srv.events("serve.stopped")[0]["calls"] == {"app-error": 1}
