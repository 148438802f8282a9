"""SIP message parsing/serialising: real-shaped messages, every refusal, limits, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtp.sip.errors import SipLocalError, SipRemoteError
from rtp.sip.message import (
    Headers,
    SipLimits,
    SipRequest,
    SipResponse,
    SipStreamFramer,
    build_response,
    parse_message,
)
from tests.rtp.sip.samples import (
    SIPP_PCMA_DTMF_SDP,
    SOFTPHONE_INVITE,
    SOFTPHONE_SDP,
    sipp_invite,
    sipp_request,
    sipp_uas_response,
)


def _refusal(data: bytes, **kwargs: object) -> SipRemoteError:
    with pytest.raises(SipRemoteError) as caught:
        parse_message(data, **kwargs)  # type: ignore[arg-type]
    return caught.value


def _replace(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


# --- round trips on what SIPp and softphones send ---------------------------


@pytest.mark.parametrize(
    "data",
    [
        sipp_invite(),
        sipp_invite(sdp=SIPP_PCMA_DTMF_SDP),
        sipp_request("ACK", to_tag="abc"),
        sipp_request("BYE", to_tag="abc", cseq=2),
        sipp_uas_response(
            "180 Ringing",
            invite_headers={
                "Via": "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport",
                "From": "<sip:a@127.0.0.1>;tag=x",
                "To": "<sip:b@127.0.0.1:5090>",
                "Call-ID": "c1",
                "CSeq": "1 INVITE",
            },
            to_tag="4242SIPpTag011",
        ),
    ],
    ids=["uac-invite", "uac_pcap-invite", "ack", "bye", "uas-180"],
)
def test_sipp_messages_round_trip_byte_for_byte(data: bytes) -> None:
    assert bytes(parse_message(data)) == data


def test_sipp_invite_fields_are_readable() -> None:
    request = parse_message(sipp_invite(sdp=SIPP_PCMA_DTMF_SDP))
    assert isinstance(request, SipRequest)
    assert request.method == "INVITE"
    assert request.sip_uri.user == "service"
    assert request.sip_uri.host_port() == ("127.0.0.1", 5060)
    assert request.top_via.branch == "z9hG4bK-4242-1-0"
    assert request.top_via.sent_by == "127.0.0.1:5061"
    assert request.from_addr.display_name == "sipp"
    assert request.from_addr.tag == "4242SIPpTag001"
    assert request.to_addr.tag is None
    assert request.call_id == "1-4242@127.0.0.1"
    assert (request.cseq.number, request.cseq.method) == (1, "INVITE")
    assert request.max_forwards == 70
    contact = request.contact
    assert contact is not None
    assert contact.sip_uri().host_port() == ("127.0.0.1", 5061)
    assert request.content_type == "application/sdp"
    assert request.body == SIPP_PCMA_DTMF_SDP.encode()


def test_sipp_uas_200_is_a_response_with_its_body() -> None:
    response = parse_message(
        sipp_uas_response(
            "200 OK",
            invite_headers={
                "Via": "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1",
                "From": "<sip:a@127.0.0.1>;tag=x",
                "To": "<sip:b@127.0.0.1:5090>",
                "Call-ID": "c1",
                "CSeq": "1 INVITE",
            },
            to_tag="t9",
        )
    )
    assert isinstance(response, SipResponse)
    assert (response.status, response.reason) == (200, "OK")
    assert response.to_addr.tag == "t9"
    assert response.body.startswith(b"v=0\r\n")


def test_softphone_invite_multiple_vias_compact_folded_ipv6() -> None:
    request = parse_message(SOFTPHONE_INVITE)
    assert isinstance(request, SipRequest)
    vias = request.vias
    assert [v.branch for v in vias] == ["z9hG4bKp2", "z9hG4bKp1", "z9hG4bK77"]
    assert vias[0].host == "[2001:db8::1]" and vias[0].address == "2001:db8::1"
    assert vias[0].port == 5060
    assert vias[2].received == "198.51.100.7" and vias[2].rport == 40000
    assert request.top_via.branch == "z9hG4bKp2"
    # Compact names answer to their full names, and the other way round.
    assert request.headers.get("Call-ID") == "a84b4c76e66710@pc33.example.com"
    assert request.headers.get("i") == request.headers.get("call-id")
    assert request.headers.get_list("Supported") == ["replaces", "timer"]
    assert request.from_addr.display_name == 'Alice "Al" Smith'
    assert request.from_addr.tag == "1928301774"
    assert request.sip_uri.host == "[2001:db8::10]"
    assert request.sip_uri.params.get("transport") == "udp"
    contact = request.contact
    assert contact is not None and contact.sip_uri().address == "2001:db8::7"
    assert contact.params.get("+sip.instance") == '"<urn:uuid:f81d>"'
    assert request.headers.get_list("Record-Route") == [
        "<sip:[2001:db8::1];lr>",
        "<sip:192.0.2.4;lr;ftag=as8a7d>",
    ]
    assert request.headers.get("Subject") == "Lunch plans"  # folded line joined
    assert request.max_forwards == 68
    assert request.body == SOFTPHONE_SDP.encode()


def test_softphone_invite_reserialises_with_its_own_names_and_order() -> None:
    request = parse_message(SOFTPHONE_INVITE)
    wire = bytes(request)
    assert b'\r\nf: "Alice' in wire and b"\r\ni: a84b" in wire and b"\r\nl: " in wire
    names = [name for name, _ in request.headers]
    assert names[:3] == ["v", "Via", "Record-Route"]
    assert parse_message(wire) == request


def test_bare_lf_line_ends_and_leading_crlf_are_tolerated() -> None:
    head, body = sipp_invite().split(b"\r\n\r\n", 1)
    data = b"\r\n\r\n" + head.replace(b"\r\n", b"\n") + b"\n\n" + body
    request = parse_message(data)
    assert isinstance(request, SipRequest)
    assert request.call_id == "1-4242@127.0.0.1"
    assert request.body == body


# --- Content-Length (RFC 3261 §18.3 for UDP) ---------------------------------


def test_datagram_longer_than_content_length_is_truncated() -> None:
    message = parse_message(sipp_invite() + b"garbage after the body")
    assert message.body.endswith(b"a=rtpmap:0 PCMU/8000\r\n")


def test_body_shorter_than_content_length_is_400_with_the_request() -> None:
    data = sipp_invite()
    error = _refusal(data[:-10])
    assert error.code == 400
    assert error.request is not None and error.request.call_id == "1-4242@127.0.0.1"


def test_without_content_length_the_body_is_the_rest_of_the_datagram() -> None:
    data = sipp_request("OPTIONS", to_tag=None)
    data = _replace(data, b"Content-Length: 0\r\n", b"") + b"hello"
    assert parse_message(data).body == b"hello"


@pytest.mark.parametrize("value", [b"-1", b"abc", b"1e3"])
def test_malformed_content_length_is_400(value: bytes) -> None:
    data = _replace(sipp_request("OPTIONS", to_tag=None), b"Content-Length: 0", b"l: " + value)
    assert _refusal(data).code == 400


def test_two_disagreeing_content_lengths_are_400() -> None:
    data = _replace(sipp_request("OPTIONS", to_tag=None), b"Content-Length: 0", b"l: 0\r\nl: 4")
    assert _refusal(data + b"abcd").code == 400


# --- refusals carry the status to answer with ---------------------------------


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0\r\n", "Via"),
        (b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=4242SIPpTag001\r\n", "From"),
        (b"To: service <sip:service@127.0.0.1:5060>\r\n", "To"),
        (b"Call-ID: 1-4242@127.0.0.1\r\n", "Call-ID"),
        (b"CSeq: 1 INVITE\r\n", "CSeq"),
    ],
)
def test_missing_mandatory_header_is_400_naming_it(header: bytes, name: str) -> None:
    error = _refusal(_replace(sipp_invite(), header, b""))
    assert error.code == 400
    assert name in error.reason
    assert error.request is not None and error.request.method == "INVITE"


def test_missing_max_forwards_is_tolerated_but_a_bad_one_is_400() -> None:
    data = sipp_invite()
    assert isinstance(parse_message(_replace(data, b"Max-Forwards: 70\r\n", b"")), SipRequest)
    assert _refusal(_replace(data, b"Max-Forwards: 70", b"Max-Forwards: seventy")).code == 400


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        (b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia", 505),
        (b"INVITE sip:service@", b"INVITE tel:+1555", 416),
        (b"INVITE sip:service@127.0.0.1:5060", b"INVITE http://example.com/", 416),
        (b"CSeq: 1 INVITE", b"CSeq: 1 BYE", 400),
        (b"CSeq: 1 INVITE", b"CSeq: one INVITE", 400),
        (b"CSeq: 1 INVITE", b"CSeq: 4294967296 INVITE", 400),
        (b"Via: SIP/2.0/UDP 127.0.0.1:5061", b"Via: SIP/2.0/UDP 127.0.0.1:99999", 400),
        (b"From: sipp <sip:sipp", b"From: sipp sip:sipp", 400),
        (b"Call-ID: 1-4242", b"Call-ID: 1 4242", 400),
        (b"INVITE sip:service@127.0.0.1:5060", b"INVITE sip:service@[::1", 400),
    ],
    ids=[
        "version",
        "tel-scheme",
        "http-scheme",
        "cseq-method",
        "cseq-number",
        "cseq-range",
        "via-port",
        "from",
        "call-id",
        "ipv6",
    ],
)
def test_malformed_requests_get_their_status(old: bytes, new: bytes, code: int) -> None:
    error = _refusal(_replace(sipp_invite(), old, new))
    assert error.code == code
    assert error.request is not None


@pytest.mark.parametrize(
    "data",
    [
        b"INVITE\r\n\r\n",
        b"INVITE sip:a@b\r\n\r\n",
        b"INV ITE sip:a@b SIP/2.0\r\n\r\n",
        b"SIP/2.0 abc OK\r\n\r\n",
        b"SIP/2.0 99 Low\r\n\r\n",
        b"\x00\x01\x02",
        b"\r\n\r\n",
    ],
)
def test_unreadable_start_lines_are_400_without_a_request(data: bytes) -> None:
    error = _refusal(data)
    assert error.code == 400
    assert error.request is None


def test_bare_cr_inside_a_line_is_400() -> None:
    assert _refusal(_replace(sipp_invite(), b"To: service", b"To: serv\rice")).code == 400
    assert _refusal(_replace(sipp_invite(), b"INVITE sip", b"INVITE\rsip")).code == 400


def test_header_line_without_colon_is_400_and_keeps_the_request() -> None:
    error = _refusal(_replace(sipp_invite(), b"Subject: Performance Test", b"Subject Test"))
    assert error.code == 400
    assert error.request is not None and error.request.method == "INVITE"


def test_response_without_cseq_is_refused() -> None:
    data = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: x\r\n\r\n"
    assert _refusal(data).code == 400


# --- limits -----------------------------------------------------------------


def test_message_over_64_kib_is_513_and_still_answerable() -> None:
    data = sipp_invite(sdp="a=" + "x" * 65 * 1024 + "\r\n")
    error = _refusal(data)
    assert error.code == 513
    assert error.request is not None and error.request.call_id == "1-4242@127.0.0.1"


def test_message_of_exactly_64_kib_is_accepted() -> None:
    base = sipp_invite(sdp="")
    body_size = 65536 - len(base) - 4  # Content-Length grows from 1 digit to 5
    data = sipp_invite(sdp="x" * body_size)
    assert len(data) == 65536
    assert len(parse_message(data).body) == body_size


def test_500_headers_are_513() -> None:
    extra = tuple(f"X-Filler-{i}: {i}" for i in range(500))
    error = _refusal(sipp_invite(extra=extra))
    assert error.code == 513
    assert error.request is not None and error.request.call_id == "1-4242@127.0.0.1"


def test_header_count_limit_is_configurable() -> None:
    extra = tuple(f"X-Filler-{i}: {i}" for i in range(20))
    data = sipp_invite(extra=extra)
    assert isinstance(parse_message(data), SipRequest)
    assert _refusal(data, limits=SipLimits(max_headers=20)).code == 513


def test_over_long_header_line_is_513_even_when_folded() -> None:
    long_value = "y" * 9000
    assert _refusal(sipp_invite(extra=(f"X-Long: {long_value}",))).code == 513
    folded = "X-Long: start" + "".join(f"\r\n {'z' * 100}" for _ in range(100))
    assert _refusal(sipp_invite(extra=(folded,))).code == 513


def test_over_long_request_line_is_414() -> None:
    data = _replace(sipp_invite(), b"sip:service@", b"sip:" + b"s" * 9000 + b"@")
    assert _refusal(data).code == 414


def test_content_length_beyond_the_limit_is_413() -> None:
    data = _replace(sipp_invite(), b"Content-Length: 129", b"Content-Length: 70000")
    assert _refusal(data).code == 413


# --- Headers and building messages -------------------------------------------


def test_headers_lookup_ignores_case_and_keeps_names_and_order() -> None:
    headers = Headers([("VIA", "a"), ("v", "b"), ("Subject", "s")])
    assert headers.get_all("via") == ["a", "b"]
    assert "SUBJECT" in headers and "Contact" not in headers
    headers.replace_first("Via", "a2")
    assert list(headers) == [("VIA", "a2"), ("v", "b"), ("Subject", "s")]
    headers.set("Via", "only")
    assert list(headers) == [("VIA", "only"), ("Subject", "s")]
    assert headers.remove("subject") == 1 and len(headers) == 1


@pytest.mark.parametrize(
    ("name", "value"), [("X-Evil", "a\r\nInjected: yes"), ("Bad Name", "v"), ("X", "a\nb")]
)
def test_header_injection_is_a_local_error(name: str, value: str) -> None:
    with pytest.raises(SipLocalError):
        Headers([(name, value)])


def test_serialising_rewrites_content_length_to_the_body() -> None:
    request = SipRequest("MESSAGE", "sip:a@b", [("Content-Length", "999")], b"hello")
    assert bytes(request).endswith(b"Content-Length: 5\r\n\r\nhello")
    assert b"Content-Length: 0\r\n" in bytes(SipResponse(200))


def test_build_response_copies_vias_from_to_callid_cseq_and_adds_the_tag() -> None:
    request = parse_message(SOFTPHONE_INVITE)
    assert isinstance(request, SipRequest)
    response = build_response(request, 486, to_tag="our-tag")
    assert response.reason == "Busy Here"
    assert response.headers.get_all("Via") == request.headers.get_all("Via")
    assert [v.branch for v in response.vias] == ["z9hG4bKp2", "z9hG4bKp1", "z9hG4bK77"]
    assert response.to_addr.tag == "our-tag"
    assert response.from_addr == request.from_addr
    assert response.call_id == request.call_id
    assert response.cseq == request.cseq
    again = parse_message(bytes(response))
    assert isinstance(again, SipResponse) and again.status == 486


def test_build_response_keeps_an_existing_to_tag() -> None:
    request = parse_message(sipp_request("BYE", to_tag="theirs", cseq=2))
    assert isinstance(request, SipRequest)
    assert build_response(request, 200, to_tag="other").to_addr.tag == "theirs"


# --- stream framing (TCP) ----------------------------------------------------------

STREAM = [sipp_invite(), sipp_request("ACK", to_tag="t"), SOFTPHONE_INVITE]


def test_framer_cuts_a_stream_into_its_messages_whatever_the_chunking() -> None:
    data = b"\r\n\r\n".join(STREAM)  # CRLF keep-alives between messages
    for size in (1, 7, 100, len(data)):
        framer = SipStreamFramer()
        got = []
        for i in range(0, len(data), size):
            got.extend(framer.feed(data[i : i + size]))
        assert [bytes(m) for m in got if isinstance(m, SipRequest)] == [
            bytes(parse_message(m)) for m in STREAM
        ]
        assert framer.pending == 0


@given(st.lists(st.integers(1, len(b"".join(STREAM))), max_size=6))
def test_framer_split_points_do_not_matter(cuts: list[int]) -> None:
    data = b"".join(STREAM)
    framer = SipStreamFramer()
    got = []
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        got.extend(framer.feed(data[previous:cut]))
        previous = max(previous, cut)
    assert len(got) == len(STREAM)


def test_framer_returns_a_bad_but_framed_message_as_its_error_and_goes_on() -> None:
    bad = sipp_invite().replace(b"CSeq: 1 INVITE\r\n", b"")
    framer = SipStreamFramer()
    error, good = framer.feed(bad + STREAM[1])
    assert isinstance(error, SipRemoteError) and error.code == 400
    assert isinstance(good, SipRequest) and good.method == "ACK"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (_replace(sipp_request("ACK", to_tag="t"), b"Content-Length: 0\r\n", b""), 400),
        (_replace(sipp_request("ACK", to_tag="t"), b"Content-Length: 0", b"l: 1\r\nl: 2"), 400),
        (_replace(sipp_invite(), b"Content-Length: 129", b"Content-Length: 99999"), 513),
        (b"INVITE sip:a@b SIP/2.0\r\nX: " + b"x" * 70000, 513),
    ],
    ids=["no-length", "two-lengths", "body-too-big", "endless-headers"],
)
def test_framer_refuses_what_cannot_be_framed(data: bytes, code: int) -> None:
    with pytest.raises(SipRemoteError) as caught:
        SipStreamFramer().feed(data)
    assert caught.value.code == code


# --- fuzz: accept or raise the documented error --------------------------------

VALID = [
    sipp_invite(),
    sipp_invite(sdp=SIPP_PCMA_DTMF_SDP),
    SOFTPHONE_INVITE,
    sipp_request("BYE", to_tag="t", cseq=2),
    sipp_request("CANCEL", to_tag=None),
]


def _accepts_or_refuses(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipRemoteError as error:
        assert 400 <= error.code <= 599
        return
    # Whatever was accepted serialises to a wire form that reads back as itself,
    # and a request's fields can be copied into an answer.
    wire = bytes(message)
    assert bytes(parse_message(wire)) == wire
    if isinstance(message, SipRequest):
        assert b"\r\n\r\n" in bytes(build_response(message, 400, to_tag="t"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_parse_or_raise_sip_remote_error(data: bytes) -> None:
    _accepts_or_refuses(data)


_SPECIALS = [b":", b";", b"<", b">", b'"', b",", b"\r\n", b"\r\n ", b" ", b"@", b"[", b"="]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dupline"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from(_SPECIALS))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 20))]
        elif kind == "truncate":
            del data[pos:]
        else:
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_mutated_messages_parse_or_raise_sip_remote_error(data: bytes) -> None:
    _accepts_or_refuses(data)
