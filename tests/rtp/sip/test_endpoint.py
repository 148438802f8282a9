"""The SIP endpoint as a peer sees it: datagrams in, datagrams and events out, time explicit."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtp.sip.endpoint import SipEndpoint
from rtp.sip.errors import SipLocalError
from rtp.sip.events import (
    CallAcked,
    CallCancelled,
    CallEnded,
    CallHandle,
    CallReinvited,
    IncomingCall,
    OutgoingCallAnswered,
    OutgoingCallFailed,
    OutgoingCallProgress,
    RemoteError,
    SipEvent,
)
from rtp.sip.message import SipRequest, SipResponse, parse_message
from rtp.sip.timers import SipTimers
from tests.rtp.sip.samples import (
    SIPP_PCMA_DTMF_SDP,
    SOFTPHONE_INVITE,
    sipp_invite,
    sipp_request,
    sipp_uas_response,
)

T = SipTimers()
SIPP = ("127.0.0.1", 5061)
ANSWER_SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"


class Peer:
    """Drives one endpoint from the network side, with time passed in."""

    def __init__(self) -> None:
        self.ep = SipEndpoint("127.0.0.1", 5060, now=0.0, rng=random.Random(7))
        self.now = 0.0

    def send(self, data: bytes, at: float | None = None, addr: tuple[str, int] = SIPP) -> None:
        if at is not None:
            self.now = at
        self.ep.receive_datagram(data, addr, self.now)

    def out(self) -> list[tuple[SipRequest | SipResponse, tuple[str, int]]]:
        return [(parse_message(d), a) for d, a in self.ep.datagrams_to_send(self.now)]

    def responses(self) -> list[SipResponse]:
        result = []
        for message, _ in self.out():
            assert isinstance(message, SipResponse)
            result.append(message)
        return result

    def one(self, status: int) -> SipResponse:
        """The single datagram sent since last asked: a response with ``status``."""
        (message, _) = self.out_one()
        assert isinstance(message, SipResponse) and message.status == status, message
        return message

    def one_request(self, method: str) -> SipRequest:
        (message, _) = self.out_one()
        assert isinstance(message, SipRequest) and message.method == method, message
        return message

    def out_one(self) -> tuple[SipRequest | SipResponse, tuple[str, int]]:
        out = self.out()
        assert len(out) == 1, out
        return out[0]

    def events(self) -> list[SipEvent]:
        return list(iter(self.ep.next_event, None))

    def run(self, until: float) -> Iterator[tuple[float, SipRequest | SipResponse]]:
        """Fire every timer up to ``until``, yielding what is sent and when."""
        while (deadline := self.ep.get_timer()) is not None and deadline <= until:
            self.now = deadline
            self.ep.handle_timer(deadline)
            for message, _ in self.out():
                yield deadline, message
        self.now = until

    def incoming_call(self, data: bytes | None = None) -> CallHandle:
        self.send(data or sipp_invite())
        trying = self.one(100)
        assert trying.to_addr.tag is None
        (event,) = self.events()
        assert isinstance(event, IncomingCall)
        return event.call

    def answered_call(self) -> tuple[CallHandle, SipResponse]:
        call = self.incoming_call()
        self.ep.answer(call, ANSWER_SDP)
        ok = self.one(200)
        assert isinstance(ok, SipResponse)
        return call, ok

    def established_call(self) -> tuple[CallHandle, str]:
        call, ok = self.answered_call()
        tag = ok.to_addr.tag
        assert tag is not None
        self.send(sipp_request("ACK", to_tag=tag))
        assert isinstance(self.events()[0], CallAcked)
        return call, tag


def _schedule(until: float, start: float = 0.0) -> list[float]:
    times, t, interval = [], start, T.t1
    while t + interval < start + until:
        t += interval
        times.append(t)
        interval = min(2 * interval, T.t2)
    return times


# --- inbound calls ------------------------------------------------------------


def test_invite_gets_100_then_the_answer_is_retransmitted_until_the_ack() -> None:
    peer = Peer()
    call = peer.incoming_call(sipp_invite(sdp=SIPP_PCMA_DTMF_SDP))
    assert call.call_id == "1-4242@127.0.0.1" and call.direction == "inbound"
    peer.ep.answer(call, ANSWER_SDP)
    ok, addr = peer.out_one()
    assert isinstance(ok, SipResponse) and ok.status == 200 and addr == SIPP
    assert ok.body == ANSWER_SDP and ok.content_type == "application/sdp"
    assert ok.to_addr.tag and ok.from_addr.tag == "4242SIPpTag001"
    assert ok.cseq.method == "INVITE" and ok.call_id == call.call_id
    contact = ok.contact
    assert contact is not None and contact.sip_uri().host_port() == ("127.0.0.1", 5060)
    assert "INVITE" in (ok.headers.get("Allow") or "")
    retransmitted = list(peer.run(4.0))
    assert [t for t, _ in retransmitted] == _schedule(4.0)  # T1, 2T1, 4T1 ...
    assert all(bytes(m) == bytes(ok) for _, m in retransmitted)
    peer.send(sipp_request("ACK", to_tag=ok.to_addr.tag), at=4.0)
    (acked,) = peer.events()
    assert isinstance(acked, CallAcked) and acked.call == call
    assert [m for _, m in peer.run(20.0)] == []


def test_no_ack_means_bye_after_64_t1_and_call_ended() -> None:
    peer = Peer()
    call, ok = peer.answered_call()
    sent = list(peer.run(T.timeout + 0.01))
    retransmissions = [t for t, m in sent if isinstance(m, SipResponse)]
    assert retransmissions == _schedule(T.timeout)
    byes = [(t, m) for t, m in sent if isinstance(m, SipRequest)]
    assert [(t, m.method) for t, m in byes] == [(T.timeout, "BYE")]
    bye = byes[0][1]
    assert bye.to_addr.tag == "4242SIPpTag001" and bye.from_addr.tag == ok.to_addr.tag
    assert bye.uri == "sip:sipp@127.0.0.1:5061"
    (ended,) = peer.events()
    assert ended == CallEnded(call, "local", "no ACK for 200 OK")


def test_retransmitted_invite_gets_the_last_response_and_no_second_call() -> None:
    peer = Peer()
    call = peer.incoming_call()
    peer.send(sipp_invite(), at=0.5)
    assert peer.one(100)
    peer.ep.ringing(call)
    ringing = peer.one(180)
    peer.send(sipp_invite(), at=1.0)
    assert bytes(peer.one(180)) == bytes(ringing)
    assert peer.events() == []
    assert peer.ep.counters.retransmissions_received == 2


def test_reject_is_retransmitted_until_the_ack_for_it() -> None:
    peer = Peer()
    call = peer.incoming_call()
    peer.ep.reject(call, 486)
    busy = peer.one(486)
    assert busy.to_addr.tag
    assert peer.events() == [CallEnded(call, "local", "rejected with 486")]
    peer.send(sipp_invite(), at=0.2)
    assert bytes(peer.one(486)) == bytes(busy)
    sent = list(peer.run(1.0))
    assert [t for t, _ in sent] == [0.5]
    # The ACK for a non-2xx reuses the INVITE's branch (RFC 3261 §17.1.1.3).
    ack = sipp_request("ACK", to_tag=busy.to_addr.tag, branch="z9hG4bK-4242-1-0")
    peer.send(ack, at=1.0)
    assert list(peer.run(T.timeout + T.t4)) == []
    assert peer.ep.call_count == 0 and peer.ep.transaction_count == 0


def test_503_over_the_call_limit_carries_retry_after() -> None:
    peer = Peer()
    call = peer.incoming_call()
    peer.ep.reject(call, 503, headers=[("Retry-After", "5")])
    unavailable = peer.one(503)
    assert unavailable.reason == "Service Unavailable"
    assert unavailable.headers.get("Retry-After") == "5"


def test_cancel_before_answer_gives_200_and_487_and_call_cancelled() -> None:
    peer = Peer()
    call = peer.incoming_call()
    peer.ep.ringing(call)
    ringing = peer.one(180)
    cancel = sipp_request("CANCEL", to_tag=None, branch="z9hG4bK-4242-1-0")
    peer.send(cancel, at=0.3)
    ok, terminated = peer.responses()
    assert (ok.status, ok.cseq.method) == (200, "CANCEL")
    assert (terminated.status, terminated.cseq.method) == (487, "INVITE")
    assert ok.to_addr.tag == terminated.to_addr.tag == ringing.to_addr.tag
    (event,) = peer.events()
    assert isinstance(event, CallCancelled) and event.call == call
    peer.ep.answer(call, ANSWER_SDP)  # the app was too late: nothing happens
    assert peer.out() == []
    peer.send(cancel, at=0.4)  # CANCEL retransmission: its 200 again, nothing else
    assert bytes(peer.one(200)) == bytes(ok)


def test_cancel_matching_nothing_is_481() -> None:
    peer = Peer()
    peer.send(sipp_request("CANCEL", to_tag=None, branch="z9hG4bK-unknown"))
    assert peer.one(481).cseq.method == "CANCEL"


def test_cancel_after_answer_changes_nothing() -> None:
    peer = Peer()
    _, ok = peer.answered_call()
    peer.send(sipp_request("CANCEL", to_tag=None, branch="z9hG4bK-4242-1-0"))
    assert peer.one(200).cseq.method == "CANCEL"
    assert peer.events() == []
    peer.send(sipp_request("ACK", to_tag=ok.to_addr.tag))
    assert isinstance(peer.events()[0], CallAcked)


def test_bye_gets_200_and_call_ended_once() -> None:
    peer = Peer()
    call, tag = peer.established_call()
    bye = sipp_request("BYE", to_tag=tag, cseq=2, branch="z9hG4bK-4242-1-7")
    peer.send(bye, at=5.0)
    ok = peer.one(200)
    assert ok.cseq.method == "BYE"
    assert peer.events() == [CallEnded(call, "remote", "BYE")]
    peer.send(bye, at=5.5)  # retransmitted BYE: same 200, no second event
    assert bytes(peer.one(200)) == bytes(ok)
    assert peer.events() == []
    list(peer.run(100.0))
    assert peer.ep.call_count == 0 and peer.ep.transaction_count == 0
    assert peer.ep.get_timer() is None


def test_bye_for_an_unknown_dialog_is_481() -> None:
    peer = Peer()
    peer.send(sipp_request("BYE", to_tag="nosuchtag", cseq=2))
    assert peer.one(481).reason == "Call/Transaction Does Not Exist"
    peer.send(sipp_request("BYE", to_tag=None, cseq=2, branch="z9hG4bK-b2"))
    assert peer.one(481).to_addr.tag  # outside a dialog too


def test_reinvite_for_an_unknown_dialog_is_481() -> None:
    peer = Peer()
    peer.send(sipp_request("INVITE", to_tag="nosuchtag", cseq=2, body="v=0\r\n"))
    assert peer.one(481).cseq.method == "INVITE"


def test_reinvite_is_reported_and_answered_with_new_sdp() -> None:
    peer = Peer()
    call, tag = peer.established_call()
    hold = "v=0\r\na=sendonly\r\n"
    reinvite = sipp_request("INVITE", to_tag=tag, cseq=2, branch="z9hG4bK-r1", body=hold, port=5071)
    peer.send(reinvite, at=10.0)
    assert peer.one(100)
    (event,) = peer.events()
    assert isinstance(event, CallReinvited) and event.call == call
    assert event.request.body == hold.encode()
    peer.ep.answer(call, b"v=0\r\na=recvonly\r\n")
    ok = peer.one(200)
    assert ok.body == b"v=0\r\na=recvonly\r\n" and ok.to_addr.tag == tag
    peer.send(sipp_request("ACK", to_tag=tag, cseq=2, branch="z9hG4bK-r1a"), at=10.1)
    (acked,) = peer.events()
    assert isinstance(acked, CallAcked) and acked.call == call and acked.request.cseq.number == 2
    assert [m for _, m in peer.run(20.0)] == []  # the ACK stopped the 200's retransmission
    # The Contact of the re-INVITE is the new target: our BYE goes there.
    peer.ep.hangup(call)
    bye, addr = peer.out_one()
    assert isinstance(bye, SipRequest) and bye.method == "BYE"
    assert addr == ("127.0.0.1", 5071)


def test_answering_a_reinvite_after_our_own_hangup_does_nothing() -> None:
    peer = Peer()
    call, tag = peer.established_call()
    peer.send(sipp_request("INVITE", to_tag=tag, cseq=2, branch="z9hG4bK-r1", body="v=0\r\n"))
    peer.one(100)
    assert isinstance(peer.events()[0], CallReinvited)
    peer.ep.hangup(call)
    terminated, bye = (m for m, _ in peer.out())
    assert isinstance(terminated, SipResponse) and terminated.status == 487
    assert isinstance(bye, SipRequest) and bye.method == "BYE"
    peer.ep.answer(call, ANSWER_SDP)  # the app's answer raced its hangup: ignored
    peer.ep.hangup(call)
    assert peer.out() == []


def test_reinvite_rejected_with_488_keeps_the_call() -> None:
    peer = Peer()
    call, tag = peer.established_call()
    peer.send(sipp_request("INVITE", to_tag=tag, cseq=2, branch="z9hG4bK-r1", body="v=0\r\n"))
    peer.one(100)
    peer.events()
    peer.ep.reject(call, 488)
    assert peer.one(488).to_addr.tag == tag
    peer.send(sipp_request("BYE", to_tag=tag, cseq=3, branch="z9hG4bK-b3"))
    assert peer.one(200).cseq.method == "BYE"
    assert peer.events() == [CallEnded(call, "remote", "BYE")]


def test_second_reinvite_while_one_is_pending_is_500_with_retry_after() -> None:
    peer = Peer()
    _, tag = peer.established_call()
    peer.send(sipp_request("INVITE", to_tag=tag, cseq=2, branch="z9hG4bK-r1", body="v=0\r\n"))
    peer.one(100)
    peer.send(sipp_request("INVITE", to_tag=tag, cseq=3, branch="z9hG4bK-r2", body="v=0\r\n"))
    pending = peer.one(500)
    assert 0 <= int(pending.headers.get("Retry-After") or "-1") <= 10


def test_lower_cseq_in_dialog_is_500() -> None:
    peer = Peer()
    call, tag = peer.established_call()
    peer.send(sipp_request("INVITE", to_tag=tag, cseq=3, branch="z9hG4bK-r3", body="v=0\r\n"))
    peer.one(100)
    peer.events()
    peer.ep.reject(call, 488)
    peer.one(488)
    peer.send(sipp_request("BYE", to_tag=tag, cseq=2, branch="z9hG4bK-b2"))
    assert peer.one(500).cseq.method == "BYE"
    assert peer.ep.call_count == 1  # the call goes on


def test_hangup_waits_for_the_ack_before_sending_bye() -> None:
    peer = Peer()
    call, ok = peer.answered_call()
    peer.ep.hangup(call)
    assert peer.out() == []  # RFC 3261 §15: no BYE before the ACK
    peer.send(sipp_request("ACK", to_tag=ok.to_addr.tag), at=0.2)
    bye = peer.one_request("BYE")
    assert isinstance(peer.events()[0], CallAcked)
    assert isinstance(bye, SipRequest)
    ok_bye = sipp_uas_response(
        "200 OK",
        invite_headers={
            "Via": bye.headers.get("Via") or "",
            "From": bye.headers.get("From") or "",
            "To": (bye.headers.get("To") or "").split(";tag=")[0],
            "Call-ID": bye.call_id,
            "CSeq": str(bye.cseq),
        },
        to_tag="4242SIPpTag001",
    )
    peer.send(ok_bye, at=0.3)
    assert peer.events() == [CallEnded(call, "local", "BYE answered 200")]


def test_hangup_before_answer_declines() -> None:
    peer = Peer()
    call = peer.incoming_call()
    peer.ep.hangup(call)
    assert peer.one(603).reason == "Decline"
    assert peer.events() == [CallEnded(call, "local", "rejected with 603")]


def test_a_call_the_app_never_answers_is_refused_408_and_forgotten() -> None:
    peer = Peer()
    peer.ep = SipEndpoint("127.0.0.1", 5060, now=0.0, answer_timeout=10.0)
    call = peer.incoming_call()
    sent = list(peer.run(10.0))
    assert [(t, m.status) for t, m in sent if isinstance(m, SipResponse)] == [(10.0, 408)]
    assert peer.events() == [CallEnded(call, "local", "not answered in time")]
    peer.ep.answer(call, ANSWER_SDP)  # too late: ignored
    assert peer.out() == []
    assert peer.ep.call_count == 0


# --- out-of-dialog requests and errors ------------------------------------------


def test_options_gets_200_with_allow_and_accept() -> None:
    peer = Peer()
    peer.send(sipp_request("OPTIONS", to_tag=None))
    ok = peer.one(200)
    assert ok.headers.get_list("Allow") == ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"]
    assert ok.headers.get("Accept") == "application/sdp"
    assert ok.to_addr.tag
    assert peer.events() == []


@pytest.mark.parametrize("method", ["REGISTER", "INFO", "SUBSCRIBE", "FROB"])
def test_unknown_method_is_501_with_allow(method: str) -> None:
    peer = Peer()
    peer.send(sipp_request(method, to_tag=None))
    response = peer.one(501)
    assert response.cseq.method == method
    assert "OPTIONS" in (response.headers.get("Allow") or "")
    (event,) = peer.events()
    assert event == RemoteError(501, "Not Implemented", SIPP, True)


def test_method_left_out_of_allow_is_405() -> None:
    peer = Peer()
    peer.ep = SipEndpoint("127.0.0.1", 5060, now=0.0, allow=("INVITE", "ACK", "CANCEL", "BYE"))
    peer.send(sipp_request("OPTIONS", to_tag=None))
    assert peer.one(405).headers.get("Allow") == "INVITE, ACK, CANCEL, BYE"


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        (b"Call-ID: 1-4242@127.0.0.1\r\n", b"", 400),
        (b"From: sipp <sip:sipp@127.0.0.1:5061>;tag=4242SIPpTag001\r\n", b"", 400),
        (b"To: service <sip:service@127.0.0.1:5060>\r\n", b"", 400),
        (b"Contact: sip:sipp@127.0.0.1:5061\r\n", b"", 400),
        (b"SIP/2.0\r\nVia", b"SIP/2.1\r\nVia", 505),
        (b"INVITE sip:service@127.0.0.1:5060", b"INVITE tel:+15550001", 416),
        (b"Subject: Performance Test", b"Require: 100rel", 420),
        (b"Content-Type: application/sdp", b"Content-Type: multipart/mixed;boundary=x", 415),
        (b"Subject: Performance Test", b"X-Padding: " + b"p" * 66000, 513),
        (b"Subject: Performance Test", b"Record-Route: <sip:[::1;lr>", 400),
    ],
    ids=[
        "call-id",
        "from",
        "to",
        "contact",
        "version",
        "scheme",
        "require",
        "body",
        "size",
        "record-route",
    ],
)
def test_bad_invites_are_answered_with_their_error(old: bytes, new: bytes, code: int) -> None:
    peer = Peer()
    data = sipp_invite()
    assert old in data
    peer.send(data.replace(old, new, 1))
    # Read the answer as bytes: it copies only what the request had (no Call-ID
    # in, none out), so it need not be a complete response itself.
    ((answer, addr),) = peer.ep.datagrams_to_send(peer.now)
    assert addr == SIPP
    head = answer.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0].startswith(b"SIP/2.0 %d " % code)
    assert b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0" in head
    assert b"CSeq: 1 INVITE" in head
    (event,) = peer.events()
    assert isinstance(event, RemoteError) and event.code == code and event.answered
    assert peer.ep.counters.errors_answered == 1
    if code == 420:
        assert b"Unsupported: 100rel" in head
    if code == 415:
        assert b"Accept: application/sdp" in head


def test_supported_extensions_pass_require() -> None:
    peer = Peer()
    peer.ep = SipEndpoint("127.0.0.1", 5060, now=0.0, supported=("timer",))
    peer.send(sipp_invite(extra=("Require: timer",)))
    assert peer.one(100)


@pytest.mark.parametrize(
    "data",
    [
        sipp_invite().replace(b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-1-0\r\n", b""),
        sipp_invite().replace(b"Via: SIP/2.0/UDP 127.0.0.1:5061", b"Via: SIP/2.0/UDP [::1"),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"SIP/2.0 200 OK\r\n\r\n",
    ],
    ids=["no-via", "bad-via", "tls-hello", "bare-response"],
)
def test_unanswerable_messages_are_dropped_and_counted(data: bytes) -> None:
    peer = Peer()
    peer.send(data)
    assert peer.out() == []
    (event,) = peer.events()
    assert isinstance(event, RemoteError) and not event.answered
    assert peer.ep.counters.dropped == 1


def test_request_without_cseq_gets_400_matching_the_senders_transaction() -> None:
    peer = Peer()
    peer.send(sipp_invite().replace(b"CSeq: 1 INVITE\r\n", b""))
    ((data, _addr),) = peer.ep.datagrams_to_send(peer.now)
    text = data.decode()
    assert text.startswith("SIP/2.0 400 ")
    assert "CSeq: 0 INVITE\r\n" in text
    assert "branch=z9hG4bK-4242-1-0" in text
    assert peer.ep.counters.errors_answered == 1 and peer.ep.counters.dropped == 0


def test_malformed_ack_is_never_answered() -> None:
    peer = Peer()
    peer.send(sipp_request("ACK", to_tag="x").replace(b"Call-ID: 1-4242@127.0.0.1\r\n", b""))
    assert peer.out() == []
    assert peer.ep.counters.dropped == 1


def test_merged_request_is_482() -> None:
    peer = Peer()
    peer.incoming_call()
    peer.send(sipp_invite(branch="z9hG4bK-via-another-proxy"))
    assert peer.one(482).reason == "Loop Detected"
    assert peer.events() == [RemoteError(482, "Loop Detected", SIPP, True)]


def test_pinger_reusing_call_id_and_cseq_is_not_a_loop() -> None:
    peer = Peer()
    for i in range(3):
        peer.send(sipp_request("OPTIONS", to_tag=None, branch=f"z9hG4bK-ping-{i}"), at=i * 5.0)
        assert peer.one(200).cseq.method == "OPTIONS"


def test_crlf_keepalives_are_ignored() -> None:
    peer = Peer()
    peer.send(b"\r\n\r\n")
    assert peer.out() == [] and peer.events() == []
    assert peer.ep.counters.keepalives == 1


def test_responses_follow_via_received_and_rport() -> None:
    peer = Peer()
    # rport asked for: fill in the source address and answer to it (RFC 3581).
    behind_nat = sipp_request("OPTIONS", to_tag=None).replace(
        b"branch=z9hG4bK-4242-1-5", b"rport;branch=z9hG4bK-4242-1-5"
    )
    peer.send(behind_nat, addr=("203.0.113.9", 40123))
    ok, addr = peer.out_one()
    assert addr == ("203.0.113.9", 40123)
    assert ok.top_via.received == "203.0.113.9" and ok.top_via.rport == 40123
    # No rport, other source address: received added, port from sent-by.
    peer.send(sipp_request("OPTIONS", to_tag=None, branch="z9hG4bK-2"), addr=("10.1.1.1", 999))
    ok, addr = peer.out_one()
    assert addr == ("10.1.1.1", 5061)
    assert ok.top_via.received == "10.1.1.1" and ok.top_via.rport is None
    # Same address as sent-by: the Via is left exactly as it came.
    peer.send(sipp_request("OPTIONS", to_tag=None, branch="z9hG4bK-3"))
    ok, addr = peer.out_one()
    assert addr == SIPP and ok.headers.get("Via") == "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-3"


def test_proxied_invite_answer_keeps_every_via_and_the_record_route() -> None:
    peer = Peer()
    call = peer.incoming_call(SOFTPHONE_INVITE)
    peer.ep.answer(call, ANSWER_SDP)
    ok, addr = peer.out_one()
    assert isinstance(ok, SipResponse)
    # The source (127.0.0.1) differs from the top Via: received added, sent-by port.
    assert addr == ("127.0.0.1", 5060)
    assert [v.branch for v in ok.vias] == ["z9hG4bKp2", "z9hG4bKp1", "z9hG4bK77"]
    assert ok.top_via.received == "127.0.0.1"
    assert ok.headers.get_list("Record-Route") == [
        "<sip:[2001:db8::1];lr>",
        "<sip:192.0.2.4;lr;ftag=as8a7d>",
    ]


# --- outbound calls (UAC) ---------------------------------------------------------

UAS = ("127.0.0.1", 5090)


class Callee:
    """A SIPp-``uas``-shaped peer answering our INVITEs."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.invite: SipRequest | None = None

    def receive_invite(self) -> SipRequest:
        invite, addr = self.peer.out_one()
        assert isinstance(invite, SipRequest) and invite.method == "INVITE" and addr == UAS
        self.invite = invite
        return invite

    def respond(self, status: str, at: float, tag: str = "4242SIPpTag011") -> None:
        assert self.invite is not None
        headers = {
            name: self.invite.headers.get(name) or ""
            for name in ("Via", "From", "To", "Call-ID", "CSeq")
        }
        data = sipp_uas_response(status, invite_headers=headers, to_tag=tag)
        if status.startswith("100"):
            data = data.replace(b";tag=" + tag.encode(), b"")
        self.peer.send(data, at=at, addr=UAS)


def _dial(peer: Peer, **kwargs: object) -> tuple[CallHandle, Callee]:
    call = peer.ep.invite(
        "sip:service@127.0.0.1:5090",
        from_uri="sip:mediaserver@127.0.0.1",
        sdp=ANSWER_SDP,
        **kwargs,  # type: ignore[arg-type]
    )
    callee = Callee(peer)
    invite = callee.receive_invite()
    assert invite.top_via.branch and invite.top_via.branch.startswith("z9hG4bK")
    assert invite.top_via.wants_rport
    assert invite.from_addr.tag and invite.to_addr.tag is None
    assert invite.body == ANSWER_SDP and invite.content_type == "application/sdp"
    assert invite.call_id == call.call_id and call.direction == "outbound"
    return call, callee


def test_outgoing_call_progress_answer_ack_and_local_bye() -> None:
    peer = Peer()
    call, callee = _dial(peer)
    callee.respond("100 Trying", at=0.05)
    callee.respond("180 Ringing", at=0.1)
    callee.respond("200 OK", at=1.0)
    ack, addr = peer.out_one()
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert addr == UAS  # the 200's Contact
    assert ack.to_addr.tag == "4242SIPpTag011" and ack.cseq.number == 1
    assert ack.top_via.branch != callee.invite.top_via.branch  # type: ignore[union-attr]
    progress, answered = peer.events()
    assert isinstance(progress, OutgoingCallProgress) and progress.status == 180
    assert isinstance(answered, OutgoingCallAnswered) and answered.response.body
    callee.respond("200 OK", at=1.5)  # the 200 again: the same ACK again
    again, _ = peer.out_one()
    assert bytes(again) == bytes(ack) and peer.events() == []
    peer.ep.hangup(call)
    bye, addr = peer.out_one()
    assert isinstance(bye, SipRequest) and bye.method == "BYE" and addr == UAS
    assert bye.cseq.number == 2 and bye.to_addr.tag == "4242SIPpTag011"
    ok = sipp_uas_response(
        "200 OK",
        invite_headers={
            "Via": bye.headers.get("Via") or "",
            "From": bye.headers.get("From") or "",
            "To": "<sip:service@127.0.0.1:5090>",
            "Call-ID": bye.call_id,
            "CSeq": "2 BYE",
        },
        to_tag="4242SIPpTag011",
    )
    peer.send(ok, at=2.0, addr=UAS)
    assert peer.events() == [CallEnded(call, "local", "BYE answered 200")]
    list(peer.run(100.0))
    assert peer.ep.call_count == 0 and peer.ep.transaction_count == 0


def test_outgoing_call_busy_is_acked_and_failed() -> None:
    peer = Peer()
    call, callee = _dial(peer)
    callee.respond("486 Busy Here", at=0.2)
    ack, addr = peer.out_one()
    assert isinstance(ack, SipRequest) and ack.method == "ACK" and addr == UAS
    assert ack.top_via.branch == callee.invite.top_via.branch  # type: ignore[union-attr]
    assert peer.events() == [OutgoingCallFailed(call, 486, "Busy Here")]


def test_outgoing_call_without_any_response_fails_408_after_timer_b() -> None:
    peer = Peer()
    call, _ = _dial(peer)
    sent = list(peer.run(T.timeout))
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5][: len(sent)]
    assert all(isinstance(m, SipRequest) and m.method == "INVITE" for _, m in sent)
    assert peer.events() == [OutgoingCallFailed(call, 408, "Request Timeout")]


def test_hangup_before_answer_cancels_once_ringing() -> None:
    peer = Peer()
    call, callee = _dial(peer)
    peer.ep.hangup(call)
    assert peer.out() == []  # no CANCEL before a provisional (RFC 3261 §9.1)
    callee.respond("180 Ringing", at=0.2)
    cancel, addr = peer.out_one()
    assert isinstance(cancel, SipRequest) and cancel.method == "CANCEL" and addr == UAS
    invite = callee.invite
    assert invite is not None
    assert cancel.top_via.branch == invite.top_via.branch
    assert (cancel.cseq.number, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.uri == invite.uri and cancel.to_addr.tag is None
    assert peer.events() == []  # no progress event for a call we are leaving
    callee.respond("487 Request Terminated", at=0.3)
    ack, _ = peer.out_one()
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert peer.events() == [CallEnded(call, "local", "cancelled")]


def test_no_answer_in_time_fails_408_and_cancels() -> None:
    peer = Peer()
    call, callee = _dial(peer, timeout=5.0)
    callee.respond("180 Ringing", at=0.2)
    peer.events()
    sent = list(peer.run(5.0))
    assert [(t, m.method) for t, m in sent if isinstance(m, SipRequest)] == [(5.0, "CANCEL")]
    assert peer.events() == [OutgoingCallFailed(call, 408, "No answer")]
    callee.respond("487 Request Terminated", at=5.1)
    assert peer.events() == []  # already reported


def test_answer_racing_our_cancel_is_acked_then_byed() -> None:
    peer = Peer()
    call, callee = _dial(peer)
    callee.respond("180 Ringing", at=0.1)
    peer.events()
    peer.ep.hangup(call)
    peer.one_request("CANCEL")
    callee.respond("200 OK", at=0.2)
    methods = [m.method for m, _ in peer.out() if isinstance(m, SipRequest)]
    assert methods == ["ACK", "BYE"]
    assert peer.events() == []


def test_remote_bye_ends_an_outgoing_call() -> None:
    peer = Peer()
    call, callee = _dial(peer)
    callee.respond("200 OK", at=0.1)
    peer.out()
    peer.events()
    invite = callee.invite
    assert invite is not None
    from_tag = invite.from_addr.tag
    bye = (
        "BYE sip:127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-uas-bye\r\n"
        f"From: <sip:service@127.0.0.1:5090>;tag=4242SIPpTag011\r\n"
        f"To: <sip:mediaserver@127.0.0.1>;tag={from_tag}\r\n"
        f"Call-ID: {call.call_id}\r\n"
        "CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    peer.send(bye, at=3.0, addr=UAS)
    response, addr = peer.out_one()
    assert isinstance(response, SipResponse) and response.status == 200 and addr == UAS
    assert peer.events() == [CallEnded(call, "remote", "BYE")]


# --- misuse is the application's error ------------------------------------------------


def test_api_misuse_raises_sip_local_error() -> None:
    peer = Peer()
    call, _ = peer.answered_call()
    with pytest.raises(SipLocalError):
        peer.ep.answer(call, ANSWER_SDP)  # twice
    with pytest.raises(SipLocalError):
        peer.ep.ringing(call)  # after the answer
    with pytest.raises(SipLocalError):
        peer.ep.reject(call, 200)
    with pytest.raises(SipLocalError):
        peer.ep.hangup(CallHandle(999, "x", "inbound"))
    with pytest.raises(SipLocalError):
        peer.ep.invite("mailto:x@y", from_uri="sip:a@b", sdp=b"")
    with pytest.raises(SipLocalError):
        SipEndpoint("h", 5060, now=0.0, allow=("INVITE", "REGISTER"))


# --- robustness -----------------------------------------------------------------------

SEEDS = [
    sipp_invite(),
    sipp_invite(sdp=SIPP_PCMA_DTMF_SDP),
    SOFTPHONE_INVITE,
    sipp_request("ACK", to_tag="t"),
    sipp_request("BYE", to_tag="t", cseq=2),
    sipp_request("CANCEL", to_tag=None),
    sipp_request("OPTIONS", to_tag=None),
    sipp_request("INVITE", to_tag="t", cseq=3, body="v=0\r\n"),
]


@st.composite
def _datagrams(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.integers(0, 2))
        if action == 0 and data:
            data[pos] = draw(st.integers(0, 255))
        elif action == 1:
            data[pos:pos] = draw(st.sampled_from([b";", b":", b"<", b",", b"\r\n", b" ", b"@"]))
        else:
            del data[pos : pos + draw(st.integers(1, 30))]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_datagrams(), min_size=1, max_size=6), st.booleans())
def test_endpoint_never_raises_and_keeps_answering_options(
    datagrams: list[bytes], answer: bool
) -> None:
    peer = Peer()
    for i, data in enumerate(datagrams):
        peer.send(data, at=i * 0.1)
        for event in peer.events():
            if isinstance(event, IncomingCall | CallReinvited):
                if answer:
                    peer.ep.answer(event.call, ANSWER_SDP)
                else:
                    peer.ep.reject(event.call, 488)
        for data, _ in peer.ep.datagrams_to_send(peer.now):
            # Error answers copy only what the request had; still SIP on the wire.
            assert data.startswith(b"SIP/2.0 ") or data.split(b" ", 1)[0] in (b"ACK", b"BYE")
    list(peer.run(200.0))
    peer.events()
    peer.send(sipp_request("OPTIONS", to_tag=None, branch="z9hG4bK-final-check"), at=300.0)
    assert peer.one(200).cseq.method == "OPTIONS"


def _mutate(draw: Callable[[st.SearchStrategy[Any]], Any], data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, max(len(buffer) - 1, 0)))
        if draw(st.booleans()) and buffer:
            buffer[pos] = draw(st.integers(0, 255))
        else:
            buffer[pos:pos] = draw(st.sampled_from([b";", b":", b"<", b",", b"\r\n", b"@", b"["]))
    return bytes(buffer)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_outgoing_call_survives_mangled_responses(data: st.DataObject) -> None:
    peer = Peer()
    call = peer.ep.invite("sip:svc@127.0.0.1:5090", from_uri="sip:ms@127.0.0.1", sdp=ANSWER_SDP)
    ((invite_bytes, _),) = peer.ep.datagrams_to_send(0.0)
    invite = parse_message(invite_bytes)
    assert isinstance(invite, SipRequest)
    headers = {n: invite.headers.get(n) or "" for n in ("Via", "From", "To", "Call-ID", "CSeq")}
    statuses = ["100 Trying", "180 Ringing", "200 OK", "486 Busy Here", "183 Session Progress"]
    for i, status in enumerate(data.draw(st.lists(st.sampled_from(statuses), max_size=4))):
        response = sipp_uas_response(status, invite_headers=headers, to_tag="t9")
        peer.send(_mutate(data.draw, response), at=0.1 * (i + 1), addr=UAS)
        peer.ep.datagrams_to_send(peer.now)
        peer.events()
    peer.ep.hangup(call)
    list(peer.run(200.0))
    peer.events()
    assert peer.ep.call_count == 0 and peer.ep.transaction_count == 0


def test_2000_random_datagrams_then_options_still_answered() -> None:
    peer = Peer()
    rng = random.Random(2000)
    for i in range(2000):
        peer.send(rng.randbytes(rng.randint(0, 1500)), at=i * 0.001)
    assert peer.ep.counters.dropped == 2000 - peer.ep.counters.keepalives
    peer.out()
    peer.events()
    peer.send(sipp_request("OPTIONS", to_tag=None), at=3.0)
    assert peer.one(200).headers.get("Accept") == "application/sdp"


# --- a real peer: SIPp on loopback ---------------------------------------------------

SIPP_BINARY = shutil.which("sipp")
needs_sipp = pytest.mark.skipif(SIPP_BINARY is None, reason="sipp (Debian sip-tester) not found")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LoopbackUdp(asyncio.DatagramProtocol):
    """The thinnest asyncio adapter: datagrams and loop time in, datagrams and events out."""

    def __init__(self, on_event: Callable[[SipEndpoint, SipEvent], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_event = on_event
        self.events: list[SipEvent] = []
        self.ep: SipEndpoint | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = self.transport.get_extra_info("sockname")[:2]
        self.ep = SipEndpoint(host, port, now=self.loop.time())

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.ep is not None
        self.ep.receive_datagram(data, addr, self.loop.time())
        self.pump()

    def on_timer(self) -> None:
        assert self.ep is not None
        self.ep.handle_timer(self.loop.time())
        self.pump()

    def pump(self) -> None:
        assert self.ep is not None and self.transport is not None
        while (event := self.ep.next_event()) is not None:
            self.events.append(event)
            self.on_event(self.ep, event)
            self.changed.set()
        for data, addr in self.ep.datagrams_to_send(self.loop.time()):
            self.transport.sendto(data, addr)
        if self.timer is not None:
            self.timer.cancel()
        deadline = self.ep.get_timer()
        self.timer = None if deadline is None else self.loop.call_at(deadline, self.on_timer)

    async def wait_for(self, kind: type[SipEvent], timeout: float = 10.0) -> SipEvent:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if isinstance(event, kind):
                        return event
                self.changed.clear()
                await self.changed.wait()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.close()


async def _sipp(*args: str, cwd: str) -> asyncio.subprocess.Process:
    assert SIPP_BINARY is not None
    return await asyncio.create_subprocess_exec(
        SIPP_BINARY,
        *args,
        "-m",
        "1",
        "-i",
        "127.0.0.1",
        "-mi",
        "127.0.0.1",
        "-mp",
        str(_free_udp_port()),
        "-timeout",
        "15",
        "-timeout_error",
        "-nostdin",
        cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


def _answer_calls(ep: SipEndpoint, event: SipEvent) -> None:
    if isinstance(event, IncomingCall):
        ep.ringing(event.call)
        ep.answer(event.call, ANSWER_SDP)


@needs_sipp
async def test_sipp_uac_calls_us_and_hangs_up(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    transport, adapter = await loop.create_datagram_endpoint(
        lambda: LoopbackUdp(_answer_calls), local_addr=("127.0.0.1", 0)
    )
    try:
        assert adapter.ep is not None
        target = f"127.0.0.1:{adapter.ep.local_port}"
        port = str(_free_udp_port())  # not SIPp's default 5060: other suites may hold it
        sipp = await _sipp("-sn", "uac", target, "-p", port, "-d", "100", cwd=str(tmp_path))
        ended = await adapter.wait_for(CallEnded)
        _, stderr = await asyncio.wait_for(sipp.communicate(), 20)
        assert sipp.returncode == 0, stderr.decode(errors="replace")
        assert isinstance(ended, CallEnded) and ended.by == "remote"
        kinds = [type(e).__name__ for e in adapter.events]
        assert kinds == ["IncomingCall", "CallAcked", "CallEnded"]
    finally:
        transport.close()


@needs_sipp
async def test_we_call_sipp_uas_and_hang_up(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    port = _free_udp_port()
    sipp = await _sipp("-sn", "uas", "-p", str(port), cwd=str(tmp_path))
    transport, adapter = await loop.create_datagram_endpoint(
        lambda: LoopbackUdp(lambda ep, event: None), local_addr=("127.0.0.1", 0)
    )
    try:
        assert adapter.ep is not None
        await asyncio.sleep(0.3)  # let SIPp bind its port
        call = adapter.ep.invite(
            f"sip:service@127.0.0.1:{port}", from_uri="sip:mediaserver@127.0.0.1", sdp=ANSWER_SDP
        )
        adapter.pump()
        answered = await adapter.wait_for(OutgoingCallAnswered)
        assert isinstance(answered, OutgoingCallAnswered) and answered.call == call
        adapter.ep.hangup(call)
        adapter.pump()
        ended = await adapter.wait_for(CallEnded)
        assert ended == CallEnded(call, "local", "BYE answered 200")
        _, stderr = await asyncio.wait_for(sipp.communicate(), 20)
        assert sipp.returncode == 0, stderr.decode(errors="replace")
    finally:
        transport.close()
        if sipp.returncode is None:
            sipp.kill()
            await sipp.wait()
