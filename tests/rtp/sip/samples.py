"""SIP messages shaped like what real peers send, for the SIP tests.

The SIPp ones follow its built-in ``uac``, ``uac_pcap`` and ``uas``
scenarios (``sipp -sd uac``) with the keywords filled in as SIPp fills them;
the softphone INVITE has what a call through two proxies looks like: three
Vias (repeated and comma-separated), Record-Route, compact header names,
a folded header line and IPv6 hosts.
"""

from __future__ import annotations

CRLF = "\r\n"

SIPP_PCMU_SDP = (
    "v=0\r\n"
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)

SIPP_PCMA_DTMF_SDP = (
    "v=0\r\n"
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP 8 101\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-11,16\r\n"
)


def _message(start: str, headers: list[str], body: str = "") -> bytes:
    lines = [start, *headers, f"Content-Length: {len(body.encode())}", "", ""]
    return CRLF.join(lines).encode() + body.encode()


def sipp_invite(
    *,
    call_id: str = "1-4242@127.0.0.1",
    branch: str = "z9hG4bK-4242-1-0",
    from_tag: str = "4242SIPpTag001",
    cseq: int = 1,
    port: int = 5061,
    sdp: str = SIPP_PCMU_SDP,
    extra: tuple[str, ...] = (),
) -> bytes:
    """The INVITE of SIPp's ``uac`` scenario (``uac_pcap`` with its SDP)."""
    return _message(
        "INVITE sip:service@127.0.0.1:5060 SIP/2.0",
        [
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}",
            f"From: sipp <sip:sipp@127.0.0.1:{port}>;tag={from_tag}",
            "To: service <sip:service@127.0.0.1:5060>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} INVITE",
            f"Contact: sip:sipp@127.0.0.1:{port}",
            "Max-Forwards: 70",
            "Subject: Performance Test",
            *extra,
            "Content-Type: application/sdp",
        ],
        sdp,
    )


def sipp_request(
    method: str,
    *,
    to_tag: str | None,
    call_id: str = "1-4242@127.0.0.1",
    branch: str = "z9hG4bK-4242-1-5",
    from_tag: str = "4242SIPpTag001",
    cseq: int = 1,
    port: int = 5061,
    body: str = "",
    extra: tuple[str, ...] = (),
) -> bytes:
    """ACK/BYE/CANCEL/OPTIONS/re-INVITE as SIPp's scenarios write them."""
    to = "To: service <sip:service@127.0.0.1:5060>"
    if to_tag is not None:
        to += f";tag={to_tag}"
    headers = [
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}",
        f"From: sipp <sip:sipp@127.0.0.1:{port}>;tag={from_tag}",
        to,
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: sip:sipp@127.0.0.1:{port}",
        "Max-Forwards: 70",
        "Subject: Performance Test",
        *extra,
    ]
    if body:
        headers.append("Content-Type: application/sdp")
    return _message(f"{method} sip:service@127.0.0.1:5060 SIP/2.0", headers, body)


def sipp_uas_response(status: str, *, invite_headers: dict[str, str], to_tag: str) -> bytes:
    """180 Ringing / 200 OK as SIPp's ``uas`` scenario sends them ([last_*] copied)."""
    body = SIPP_PCMU_SDP if status.startswith("200") else ""
    headers = [
        f"Via: {invite_headers['Via']}",
        f"From: {invite_headers['From']}",
        f"To: {invite_headers['To']};tag={to_tag}",
        f"Call-ID: {invite_headers['Call-ID']}",
        f"CSeq: {invite_headers['CSeq']}",
        "Contact: <sip:127.0.0.1:5090;transport=UDP>",
    ]
    if body:
        headers.append("Content-Type: application/sdp")
    return _message(f"SIP/2.0 {status}", headers, body)


SOFTPHONE_SDP = (
    "v=0\r\n"
    "o=alice 2890844526 2890844526 IN IP6 2001:db8::7\r\n"
    "s=-\r\n"
    "c=IN IP6 2001:db8::7\r\n"
    "t=0 0\r\n"
    "m=audio 49170 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
)

SOFTPHONE_INVITE = (
    (
        "INVITE sip:bob@[2001:db8::10]:5060;transport=udp SIP/2.0\r\n"
        "v: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKp2,\r\n"
        " SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKp1\r\n"
        "Via: SIP/2.0/UDP 10.0.0.7:5062;received=198.51.100.7;rport=40000;branch=z9hG4bK77\r\n"
        "Record-Route: <sip:[2001:db8::1];lr>, <sip:192.0.2.4;lr;ftag=as8a7d>\r\n"
        "Max-Forwards: 68\r\n"
        'f: "Alice \\"Al\\" Smith" <sip:alice@example.com>;tag=1928301774\r\n'
        "t: <sip:bob@example.com>\r\n"
        "i: a84b4c76e66710@pc33.example.com\r\n"
        "CSeq: 314159 INVITE\r\n"
        'm: <sip:alice@[2001:db8::7]:5062;transport=udp>;+sip.instance="<urn:uuid:f81d>"\r\n'
        "k: replaces, timer\r\n"
        "Subject: Lunch\r\n"
        "\tplans\r\n"
        "c: application/sdp\r\n"
        f"l: {len(SOFTPHONE_SDP)}\r\n"
        "\r\n"
    )
    + SOFTPHONE_SDP
).encode()
