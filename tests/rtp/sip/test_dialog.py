"""Dialogs: identity, route sets (loose and strict), CSeq order, in-dialog requests."""

from __future__ import annotations

import pytest

from rtp.sip.dialog import Dialog
from rtp.sip.errors import SipRemoteError
from rtp.sip.message import SipRequest, SipResponse, build_response, parse_message
from tests.rtp.sip.samples import SOFTPHONE_INVITE, sipp_invite, sipp_request

VIA = "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKours;rport"


def _request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


def test_uas_dialog_from_a_proxied_invite_routes_back_through_the_proxies() -> None:
    invite = _request(SOFTPHONE_INVITE)
    dialog = Dialog.as_uas(invite, "ourtag")
    assert dialog.id == ("a84b4c76e66710@pc33.example.com", "ourtag", "1928301774")
    assert dialog.remote_target == "sip:alice@[2001:db8::7]:5062;transport=udp"
    assert dialog.remote_cseq == 314159
    # Loose routing: the Request-URI is the remote target, Routes in Record-Route order.
    bye = dialog.request("BYE", via=VIA)
    assert bye.uri == dialog.remote_target
    assert bye.headers.get_all("Route") == [
        "<sip:[2001:db8::1];lr>",
        "<sip:192.0.2.4;lr;ftag=as8a7d>",
    ]
    assert dialog.next_hop() == ("2001:db8::1", 5060)
    # From/To swap sides, tags included; the CSeq is ours and counts up.
    assert bye.from_addr.tag == "ourtag" and bye.from_addr.uri == "sip:bob@example.com"
    assert bye.to_addr.tag == "1928301774" and bye.to_addr.display_name == 'Alice "Al" Smith'
    assert bye.call_id == invite.call_id
    assert bye.cseq.method == "BYE"
    assert dialog.request("INVITE", via=VIA).cseq.number == bye.cseq.number + 1
    assert bytes(parse_message(bytes(bye))) == bytes(bye)  # a valid request on the wire


def test_uas_dialog_without_routes_sends_to_the_contact() -> None:
    dialog = Dialog.as_uas(_request(sipp_invite()), "t1")
    bye = dialog.request("BYE", via=VIA)
    assert bye.uri == "sip:sipp@127.0.0.1:5061"
    assert "Route" not in bye.headers
    assert dialog.next_hop() == ("127.0.0.1", 5061)


def _answer(invite: SipRequest, *, contact: str | None, record_route: list[str]) -> SipResponse:
    response = build_response(invite, 200, to_tag="remote")
    for value in record_route:
        response.headers.add("Record-Route", value)
    if contact is not None:
        response.headers.add("Contact", contact)
    return response


def test_uac_dialog_reverses_record_route_and_acks_with_the_invite_cseq() -> None:
    invite = _request(sipp_invite(cseq=7))
    response = _answer(
        invite,
        contact="<sip:uas@203.0.113.5:5070>",
        record_route=["<sip:p2.example.com;lr>", "<sip:p1.example.com:5080;lr>"],
    )
    dialog = Dialog.as_uac(invite, response)
    assert dialog.id == (invite.call_id, "4242SIPpTag001", "remote")
    assert dialog.route_set == ("<sip:p1.example.com:5080;lr>", "<sip:p2.example.com;lr>")
    assert dialog.next_hop() == ("p1.example.com", 5080)
    ack = dialog.request("ACK", via=VIA, cseq=invite.cseq.number)
    assert ack.cseq.number == 7 and ack.cseq.method == "ACK"
    assert ack.uri == "sip:uas@203.0.113.5:5070"
    assert dialog.request("BYE", via=VIA).cseq.number == 8


def test_strict_route_becomes_the_request_uri() -> None:
    invite = _request(sipp_invite())
    response = _answer(
        invite, contact="<sip:uas@203.0.113.5>", record_route=["<sip:strict.example.com>"]
    )
    dialog = Dialog.as_uac(invite, response)
    bye = dialog.request("BYE", via=VIA)
    assert bye.uri == "sip:strict.example.com"
    assert bye.headers.get_all("Route") == ["<sip:uas@203.0.113.5>"]
    assert dialog.next_hop() == ("strict.example.com", 5060)


def test_uac_dialog_without_contact_falls_back_to_the_request_uri() -> None:
    invite = _request(sipp_invite())
    dialog = Dialog.as_uac(invite, _answer(invite, contact=None, record_route=[]))
    assert dialog.remote_target == invite.uri


def test_remote_cseq_must_not_go_down() -> None:
    dialog = Dialog.as_uas(_request(sipp_invite(cseq=5)), "t")
    dialog.accept_remote_cseq(_request(sipp_request("BYE", to_tag="t", cseq=6)))
    assert dialog.remote_cseq == 6
    with pytest.raises(SipRemoteError) as caught:
        dialog.accept_remote_cseq(_request(sipp_request("INVITE", to_tag="t", cseq=4)))
    assert caught.value.code == 500
    # ACK and CANCEL reuse their INVITE's number and are never refused.
    dialog.accept_remote_cseq(_request(sipp_request("ACK", to_tag="t", cseq=5)))
    assert dialog.remote_cseq == 6


def test_target_refresh_takes_the_new_contact() -> None:
    dialog = Dialog.as_uas(_request(sipp_invite()), "t")
    reinvite = _request(
        sipp_request("INVITE", to_tag="t", cseq=2, port=5099)  # Contact on port 5099
    )
    dialog.refresh_target(reinvite)
    assert dialog.next_hop() == ("127.0.0.1", 5099)


def test_invite_without_usable_contact_cannot_make_a_dialog() -> None:
    invite = _request(sipp_invite())
    invite.headers.remove("Contact")
    with pytest.raises(SipRemoteError) as caught:
        Dialog.as_uas(invite, "t")
    assert caught.value.code == 400
    invite.headers.add("Contact", "<tel:+15551234>")
    with pytest.raises(SipRemoteError) as caught:
        Dialog.as_uas(invite, "t")
    assert caught.value.code == 416
