"""SIP parsing cost: ``rtp.sip.parse_message`` against two baselines, same run.

Peers: a naive parser (split the head into lines, ``partition(":")`` each
into a dict, no validation: the floor any Python parser pays) and the
standard library's RFC 5322 header parser (``email.parser.BytesParser``, the
one ``http.client`` uses for HTTP headers). Ours does more than either: it
validates the start line, Via, From/To, CSeq, Call-ID and limits, which is
what lets the endpoint answer 400 instead of crashing. Also timed: one
whole inbound call through ``SipEndpoint`` (INVITE → 100, answer → 200,
ACK, BYE → 200), which bounds the call-setup rate one core can serve.

Usage: ``.venv/bin/python bench/sip_parse.py``; ``main()`` prints the section.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import compat32

from rtp.sip.endpoint import SipEndpoint
from rtp.sip.events import IncomingCall
from rtp.sip.message import SipResponse, parse_message

SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
    b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\n"
    b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-11,16\r\n"
)


def _invite(n: int = 1, branch: str = "z9hG4bK-1-1-0") -> bytes:
    head = (
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001\r\n"
        "To: service <sip:service@127.0.0.1:5060>\r\n"
        f"Call-ID: {n}-4242@127.0.0.1\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: sip:sipp@127.0.0.1:5061\r\n"
        "Max-Forwards: 70\r\n"
        "Subject: Performance Test\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    )
    return head.encode() + SDP


def _request(method: str, n: int, to: str, cseq: int, branch: str) -> bytes:
    return (
        f"{method} sip:service@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {n}-4242@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def naive_parse(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


_EMAIL = BytesParser(policy=compat32)


def stdlib_parse(data: bytes) -> object:
    start, _, rest = data.partition(b"\r\n")
    message = _EMAIL.parsebytes(rest)
    return start, message["Call-ID"], message["Via"], message.get_payload()


def ours(data: bytes) -> object:
    message = parse_message(data)
    return message.top_via.branch, message.call_id, message.cseq, message.from_addr.tag


def _per_call_us(fn: Callable[[], object], number: int) -> float:
    fn()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - t0) / number)
    return statistics.median(runs) * 1e6


def _one_call(ep: SipEndpoint, n: int) -> None:
    """INVITE → 100; answer → 200; ACK; BYE → 200, at increasing times."""
    t = n * 0.001
    peer = ("127.0.0.1", 5061)
    ep.receive_datagram(_invite(n, f"z9hG4bK-{n}-1"), peer, t)
    event = ep.next_event()
    assert isinstance(event, IncomingCall)
    ep.answer(event.call, SDP)
    sent = ep.datagrams_to_send(t)
    ok = parse_message(sent[-1][0])
    assert isinstance(ok, SipResponse) and ok.status == 200
    to = ok.headers.get("To") or ""
    ep.receive_datagram(_request("ACK", n, to, 1, f"z9hG4bK-{n}-2"), peer, t)
    ep.receive_datagram(_request("BYE", n, to, 2, f"z9hG4bK-{n}-3"), peer, t)
    ep.datagrams_to_send(t)
    while ep.next_event() is not None:
        pass


def main() -> None:
    print("## SIP parsing (bench/sip_parse.py): µs per message, median of 5 runs")
    print(
        f"{'message':<28}{'ours':>10}{'naive':>10}{'stdlib':>10}{'ours/naive':>12}{'ours/std':>10}"
    )
    cases = {
        "SIPp INVITE + SDP": _invite(),
        "SIPp ACK": _request("ACK", 1, "<sip:service@127.0.0.1>;tag=x", 1, "z9hG4bK-1-1-5"),
    }
    for name, data in cases.items():
        t_ours = _per_call_us(lambda d=data: ours(d), 2000)
        t_naive = _per_call_us(lambda d=data: naive_parse(d), 2000)
        t_std = _per_call_us(lambda d=data: stdlib_parse(d), 2000)
        print(
            f"{name:<28}{t_ours:>10.1f}{t_naive:>10.1f}{t_std:>10.1f}"
            f"{t_ours / t_naive:>12.2f}{t_std and t_ours / t_std:>10.2f}"
        )
    ep = SipEndpoint("127.0.0.1", 5060, now=0.0)
    counter = iter(range(1, 10**9))
    t_call = _per_call_us(lambda: _one_call(ep, next(counter)), 300)
    print(
        f"whole inbound call through SipEndpoint (4 requests, 4 responses): {t_call:.0f} µs"
        f" → about {1e6 / t_call:.0f} call set-ups/s on one core (no peer: absolute)"
    )


if __name__ == "__main__":
    main()
