"""Header value grammar: SIP URIs, name-addr, Via, CSeq, parameters, lists."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp.sip.address import (
    CSeq,
    NameAddr,
    Params,
    SipUri,
    Via,
    format_host,
    split_header_list,
    unbracket,
)
from rtp.sip.errors import SipRemoteError


def test_full_sip_uri_parts() -> None:
    uri = SipUri.parse("sips:alice:secret@atlanta.example.com:5071;transport=tcp;lr?subject=x")
    assert uri.scheme == "sips"
    assert (uri.user, uri.password) == ("alice", "secret")
    assert (uri.host, uri.port) == ("atlanta.example.com", 5071)
    assert uri.params.get("transport") == "tcp"
    assert uri.params.has("lr") and uri.params.get("lr") is None
    assert uri.headers == "subject=x"
    assert str(uri) == "sips:alice:secret@atlanta.example.com:5071;transport=tcp;lr?subject=x"


def test_ipv6_uri_keeps_brackets_and_gives_the_socket_form() -> None:
    uri = SipUri.parse("sip:bob@[2001:db8::10]:5062")
    assert uri.host == "[2001:db8::10]"
    assert uri.host_port() == ("2001:db8::10", 5062)
    assert SipUri.parse("sip:[::1]").host_port() == ("::1", 5060)


def test_uri_user_may_hold_telephone_subscriber_parameters() -> None:
    uri = SipUri.parse("sip:+15551234;phone-context=example.com@gw.example.com;user=phone")
    assert uri.user == "+15551234;phone-context=example.com"
    assert uri.host == "gw.example.com"
    assert uri.params.get("user") == "phone"


@pytest.mark.parametrize("text", ["tel:+15551234", "http://example.com/", "urn:service:sos"])
def test_other_uri_schemes_are_416(text: str) -> None:
    with pytest.raises(SipRemoteError) as caught:
        SipUri.parse(text)
    assert caught.value.code == 416


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:@host",
        "sip:a@",
        "sip:a@host:port",
        "sip:a@[::1",
        "sip:a@[zz::1]",
        "nocolon",
        "sip:a@host:50\t;transport=udp",
        "sip:a@host;x=a b",
        'sip:a@host?h="v"',
    ],
)
def test_malformed_uris_are_400(text: str) -> None:
    with pytest.raises(SipRemoteError) as caught:
        SipUri.parse(text)
    assert caught.value.code == 400


_hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9\-]{0,10}(\.[a-z][a-z0-9]{0,5}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)


@given(
    host=_hosts,
    user=st.none() | st.from_regex(r"[A-Za-z0-9_.!~*'()+\-]{1,12}", fullmatch=True),
    port=st.none() | st.integers(1, 65535),
    params=st.lists(
        st.tuples(
            st.from_regex(r"[a-z]{1,8}", fullmatch=True),
            st.none() | st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
        ),
        max_size=3,
    ),
)
def test_uri_survives_str_and_parse(
    host: str, user: str | None, port: int | None, params: list[tuple[str, str | None]]
) -> None:
    uri = SipUri(host=host, user=user, port=port, params=Params(tuple(params)))
    assert SipUri.parse(str(uri)) == uri


def test_name_addr_with_quoted_display_name_and_escapes() -> None:
    addr = NameAddr.parse('"Bob \\"the\\" Builder" <sip:bob@biloxi.com>;tag=a6c85cf')
    assert addr.display_name == 'Bob "the" Builder'
    assert addr.uri == "sip:bob@biloxi.com"
    assert addr.tag == "a6c85cf"
    assert NameAddr.parse(str(addr)) == addr


def test_name_addr_token_display_and_bare_addr_spec() -> None:
    assert NameAddr.parse("sipp <sip:sipp@127.0.0.1:5061>;tag=1").display_name == "sipp"
    # Without angle brackets, ;params belong to the header, not to the URI.
    bare = NameAddr.parse("sip:sipp@127.0.0.1:5061;tag=42")
    assert bare.uri == "sip:sipp@127.0.0.1:5061"
    assert bare.tag == "42"
    assert bare.display_name is None
    # Inside angle brackets they stay with the URI.
    inside = NameAddr.parse("<sip:proxy.example.com;lr>")
    assert inside.sip_uri().params.has("lr") and inside.tag is None


def test_name_addr_with_tag_replaces_the_tag() -> None:
    addr = NameAddr.parse("<sip:a@b>;tag=old;x=1").with_tag("new")
    assert str(addr) == "<sip:a@b>;tag=new;x=1"


@pytest.mark.parametrize(
    "text", ['"unterminated <sip:a@b>', "<sip:a@b", "Bob sip:a@b", "<sip:a@b> junk", "*"]
)
def test_malformed_name_addr_is_400(text: str) -> None:
    with pytest.raises(SipRemoteError) as caught:
        NameAddr.parse(text)
    assert caught.value.code == 400


def test_via_parts_with_loose_whitespace() -> None:
    via = Via.parse("SIP / 2.0 / udp pc33.atlanta.com : 5066 ;branch=z9hG4bK776 ; received=1.2.3.4")
    assert via.transport == "UDP"
    assert (via.host, via.port) == ("pc33.atlanta.com", 5066)
    assert via.branch == "z9hG4bK776"
    assert via.received == "1.2.3.4"
    assert str(via) == "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776;received=1.2.3.4"


def test_via_rport_forms() -> None:
    asked = Via.parse("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bK1")
    assert asked.wants_rport and asked.rport is None
    filled = asked.with_params(received="203.0.113.9", rport="40123")
    assert filled.rport == 40123
    assert str(filled) == (
        "SIP/2.0/UDP 10.0.0.1:5060;rport=40123;branch=z9hG4bK1;received=203.0.113.9"
    )
    assert not Via.parse("SIP/2.0/UDP 10.0.0.1").wants_rport


def test_via_with_ipv6_sent_by() -> None:
    via = Via.parse("SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bK9")
    assert via.address == "2001:db8::9" and via.port == 5070
    assert via.sent_by == "[2001:db8::9]:5070"


@pytest.mark.parametrize(
    "text",
    [
        "SIP/1.0/UDP host;branch=x",
        "SIP/2.0 host",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP host:70000",
        "SIP/2.0/UDP host;rport=abc",
        "SIP/2.0/UDP ho st",
    ],
)
def test_malformed_via_is_400(text: str) -> None:
    with pytest.raises(SipRemoteError) as caught:
        Via.parse(text)
    assert caught.value.code == 400


def test_cseq() -> None:
    assert CSeq.parse(" 314159  INVITE ") == CSeq(314159, "INVITE")
    assert str(CSeq(2, "BYE")) == "2 BYE"
    for bad in ("INVITE", "1", "2147483648 INVITE", "-1 BYE", "1 IN VITE"):
        with pytest.raises(SipRemoteError):
            CSeq.parse(bad)


def test_header_lists_split_only_outside_quotes_and_brackets() -> None:
    value = '"Smith, John" <sip:a@b;x=1,2>;q=0.7, <sip:c@d>,  sip:e@f ,'
    assert split_header_list(value) == [
        '"Smith, John" <sip:a@b;x=1,2>;q=0.7',
        "<sip:c@d>",
        "sip:e@f",
    ]


def test_params_are_case_insensitive_and_replace_in_place() -> None:
    params = Params.parse(";Branch=z9hG4bK1;lr;ttl=16")
    assert params.get("branch") == "z9hG4bK1"
    assert params.has("LR")
    assert str(params.replace("TTL", "1")) == ";Branch=z9hG4bK1;lr;ttl=1"
    assert str(params.replace("maddr", "x")) == ";Branch=z9hG4bK1;lr;ttl=16;maddr=x"


def test_host_bracketing_helpers() -> None:
    assert format_host("2001:db8::1") == "[2001:db8::1]"
    assert format_host("[::1]") == "[::1]" and format_host("10.0.0.1") == "10.0.0.1"
    assert unbracket("[::1]") == "::1" and unbracket("host") == "host"
