"""RFC 3261 §17 transactions driven by their tables, time passed in explicitly."""

from __future__ import annotations

from typing import Any

import pytest

from rtp.sip.errors import SipLocalError
from rtp.sip.message import SipRequest, SipResponse, build_response, parse_message
from rtp.sip.timers import SipTimers, TimerQueue
from rtp.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    Do,
    Transaction,
    TxInput,
    TxMachine,
    TxState,
    ack_for_final,
    client_key,
    response_input,
    server_key,
)
from tests.rtp.sip.samples import sipp_invite, sipp_request

TIMERS = SipTimers()
PEER = ("127.0.0.1", 5061)


def _request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


class Rig:
    """One transaction, its timer queue and outbox; timers fire at their deadlines."""

    def __init__(self, machine: TxMachine, request: SipRequest, *, reliable: bool = False) -> None:
        self.queue: TimerQueue[Any] = TimerQueue()
        self.outbox: list[tuple[bytes, tuple[str, int]]] = []
        self.tx = Transaction(
            machine,
            request,
            PEER,
            settings=TIMERS,
            queue=self.queue,
            outbox=self.outbox,
            reliable=reliable,
        )
        self.sent_at: list[float] = []
        self.signals: list[tuple[float, Do]] = []

    def take(self, now: float) -> list[bytes]:
        data = [d for d, _ in self.outbox]
        self.sent_at.extend([now] * len(data))
        self.outbox.clear()
        return data

    def run_until(self, until: float) -> None:
        while (deadline := self.queue.next_deadline()) is not None and deadline <= until:
            key = self.queue.pop_due(deadline)
            assert key is not None and key[0] is self.tx
            signal = self.tx.fire(key[1], deadline)
            if signal is not None:
                self.signals.append((deadline, signal))
            self.take(deadline)


def _schedule(first: float, cap: float | None, until: float) -> list[float]:
    """Retransmission times per RFC 3261: first interval T1, doubling, maybe capped."""
    times, t, interval = [], 0.0, first
    while t + interval < until:
        t += interval
        times.append(t)
        interval = 2 * interval if cap is None else min(2 * interval, cap)
    return times


def _response(request: SipRequest, status: int, tag: str | None = "uas") -> SipResponse:
    return build_response(request, status, to_tag=tag if status > 100 else None)


# --- INVITE server ------------------------------------------------------------


def test_invite_server_retransmits_non_2xx_until_timer_h() -> None:
    rig = Rig(INVITE_SERVER, _request(sipp_invite()))
    rig.tx.respond(_response(rig.tx.request, 100), 0.0)
    rig.tx.fire(TxInput.REQUEST, 0.1)  # the INVITE again: the 100 again
    first, again = rig.take(0.1)
    assert first == again and b" 100 Trying" in first
    rig.tx.respond(_response(rig.tx.request, 486), 0.0)
    final = rig.take(0.0)
    rig.sent_at.clear()
    rig.run_until(60.0)
    assert rig.sent_at == _schedule(TIMERS.t1, TIMERS.t2, TIMERS.timeout)
    assert rig.signals == [(TIMERS.timeout, Do.REPORT_TIMEOUT)]
    assert rig.tx.terminated and len(rig.queue) == 0
    assert final[0].startswith(b"SIP/2.0 486 Busy Here")


def test_invite_server_ack_stops_retransmission_and_timer_i_ends_it() -> None:
    rig = Rig(INVITE_SERVER, _request(sipp_invite()))
    rig.tx.respond(_response(rig.tx.request, 603), 0.0)
    rig.run_until(1.0)
    assert rig.tx.fire(TxInput.ACK, 1.2) is None
    assert rig.tx.state is TxState.CONFIRMED
    rig.take(1.2)
    rig.sent_at.clear()
    rig.tx.fire(TxInput.ACK, 2.0)  # ACK retransmissions are absorbed
    rig.run_until(1.2 + TIMERS.t4 - 0.01)
    assert not rig.tx.terminated and rig.sent_at == []
    rig.run_until(1.2 + TIMERS.t4)
    assert rig.tx.terminated and rig.signals == []


def test_invite_server_retransmitted_invite_after_final_gets_the_final_again() -> None:
    rig = Rig(INVITE_SERVER, _request(sipp_invite()))
    rig.tx.respond(_response(rig.tx.request, 486), 0.0)
    final = rig.take(0.0)
    rig.tx.fire(TxInput.REQUEST, 0.2)
    assert rig.take(0.2) == final


def test_invite_server_2xx_goes_to_accepted_where_the_tu_owns_retransmission() -> None:
    rig = Rig(INVITE_SERVER, _request(sipp_invite()))
    rig.tx.respond(_response(rig.tx.request, 200), 0.0)
    assert rig.tx.state is TxState.ACCEPTED
    rig.take(0.0)
    assert rig.tx.fire(TxInput.REQUEST, 0.3) is None
    assert rig.take(0.3) == []  # INVITE retransmission absorbed (RFC 6026)
    rig.tx.respond(_response(rig.tx.request, 200), 0.5)  # the TU's retransmission
    assert len(rig.take(0.5)) == 1
    assert rig.tx.fire(TxInput.ACK, 0.6) is Do.DELIVER
    rig.run_until(TIMERS.timeout)
    assert rig.tx.terminated


def test_invite_server_refuses_a_second_final_from_the_tu() -> None:
    rig = Rig(INVITE_SERVER, _request(sipp_invite()))
    rig.tx.respond(_response(rig.tx.request, 486), 0.0)
    with pytest.raises(SipLocalError):
        rig.tx.respond(_response(rig.tx.request, 200), 0.1)


# --- non-INVITE server ----------------------------------------------------------


def test_non_invite_server_answers_retransmissions_with_the_last_response() -> None:
    rig = Rig(NON_INVITE_SERVER, _request(sipp_request("BYE", to_tag="t", cseq=2)))
    rig.tx.fire(TxInput.REQUEST, 0.0)
    assert rig.take(0.0) == []  # nothing to repeat yet
    rig.tx.respond(_response(rig.tx.request, 200), 0.1)
    (ok,) = rig.take(0.1)
    rig.tx.fire(TxInput.REQUEST, 5.0)
    assert rig.take(5.0) == [ok]
    rig.run_until(0.1 + TIMERS.timeout - 0.01)
    assert rig.tx.state is TxState.COMPLETED
    rig.run_until(0.1 + TIMERS.timeout)
    assert rig.tx.terminated
    with pytest.raises(SipLocalError):
        rig.tx.respond(_response(rig.tx.request, 200), 40.0)


def test_reliable_transport_needs_no_wait_in_completed() -> None:
    rig = Rig(NON_INVITE_SERVER, _request(sipp_request("BYE", to_tag="t")), reliable=True)
    rig.tx.respond(_response(rig.tx.request, 200), 3.0)
    rig.run_until(3.0)
    assert rig.tx.terminated


# --- INVITE client ---------------------------------------------------------------


def test_invite_client_retransmits_with_timer_a_until_timer_b() -> None:
    rig = Rig(INVITE_CLIENT, _request(sipp_invite()))
    rig.tx.start(0.0)
    rig.take(0.0)
    rig.run_until(100.0)
    assert rig.sent_at == [0.0, *_schedule(TIMERS.t1, None, TIMERS.timeout)]
    assert rig.signals == [(TIMERS.timeout, Do.REPORT_TIMEOUT)]
    assert rig.tx.terminated


def test_invite_client_over_reliable_transport_sends_once() -> None:
    rig = Rig(INVITE_CLIENT, _request(sipp_invite()), reliable=True)
    rig.tx.start(0.0)
    rig.take(0.0)
    rig.run_until(100.0)
    assert rig.sent_at == [0.0]
    assert rig.signals == [(TIMERS.timeout, Do.REPORT_TIMEOUT)]


def test_invite_client_acks_a_failure_itself_and_once_per_retransmission() -> None:
    invite = _request(sipp_invite())
    rig = Rig(INVITE_CLIENT, invite)
    rig.tx.start(0.0)
    rig.take(0.0)
    ringing = _response(invite, 180)
    assert rig.tx.fire(response_input(180), 0.2, ringing) is Do.DELIVER
    rig.run_until(10.0)
    assert rig.sent_at == [0.0]  # a provisional stops timer A
    busy = _response(invite, 486)
    assert rig.tx.fire(response_input(486), 10.0, busy) is Do.DELIVER
    (ack_bytes,) = rig.take(10.0)
    ack = _request(ack_bytes)
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert ack.top_via.branch == invite.top_via.branch
    assert ack.cseq.number == invite.cseq.number and ack.cseq.method == "ACK"
    assert ack.to_addr.tag == "uas" and ack.from_addr == invite.from_addr
    assert ack_bytes == bytes(ack_for_final(invite, busy))
    assert rig.tx.fire(response_input(486), 11.0, busy) is None  # not delivered twice
    assert rig.take(11.0) == [ack_bytes]
    rig.run_until(10.0 + TIMERS.d)
    assert rig.tx.terminated


def test_invite_client_passes_every_2xx_up_and_never_acks_it() -> None:
    invite = _request(sipp_invite())
    rig = Rig(INVITE_CLIENT, invite)
    rig.tx.start(0.0)
    rig.take(0.0)
    ok = _response(invite, 200)
    assert rig.tx.fire(response_input(200), 0.1, ok) is Do.DELIVER
    assert rig.tx.fire(response_input(200), 0.6, ok) is Do.DELIVER
    assert rig.take(0.6) == []
    rig.run_until(0.1 + TIMERS.timeout)
    assert rig.tx.terminated


# --- non-INVITE client -------------------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_until_timer_f() -> None:
    rig = Rig(NON_INVITE_CLIENT, _request(sipp_request("BYE", to_tag="t", cseq=2)))
    rig.tx.start(0.0)
    rig.take(0.0)
    rig.run_until(100.0)
    assert rig.sent_at == [0.0, *_schedule(TIMERS.t1, TIMERS.t2, TIMERS.timeout)]
    assert rig.signals == [(TIMERS.timeout, Do.REPORT_TIMEOUT)]


def test_non_invite_client_in_proceeding_retransmits_every_t2() -> None:
    bye = _request(sipp_request("BYE", to_tag="t", cseq=2))
    rig = Rig(NON_INVITE_CLIENT, bye)
    rig.tx.start(0.0)
    rig.take(0.0)
    rig.run_until(0.6)  # one retransmission at T1; next due at 1.5
    assert rig.tx.fire(response_input(100), 0.7, _response(bye, 100)) is Do.DELIVER
    rig.sent_at.clear()
    rig.run_until(12.0)
    gaps = [b - a for a, b in zip(rig.sent_at, rig.sent_at[1:], strict=False)]
    assert rig.sent_at[0] == 1.5 and gaps and all(gap == TIMERS.t2 for gap in gaps)
    ok = _response(bye, 200)
    assert rig.tx.fire(response_input(200), 12.0, ok) is Do.DELIVER
    assert rig.tx.fire(response_input(200), 12.5, ok) is None  # absorbed in Completed
    rig.sent_at.clear()
    rig.run_until(12.0 + TIMERS.t4)
    assert rig.sent_at == [] and rig.tx.terminated


# --- matching ------------------------------------------------------------------------


def test_server_key_matches_retransmission_ack_and_cancel_target() -> None:
    invite = _request(sipp_invite())
    assert server_key(_request(sipp_invite())) == server_key(invite)
    ack_same_branch = _request(sipp_request("ACK", to_tag="x", branch="z9hG4bK-4242-1-0"))
    assert server_key(ack_same_branch) == server_key(invite)
    cancel = _request(sipp_request("CANCEL", to_tag=None, branch="z9hG4bK-4242-1-0"))
    assert server_key(cancel) != server_key(invite)
    assert server_key(cancel, method="INVITE") == server_key(invite)
    assert server_key(_request(sipp_invite(branch="z9hG4bK-other"))) != server_key(invite)


def test_rfc2543_requests_without_a_cookie_branch_match_on_their_fields() -> None:
    old = _request(sipp_invite(branch="1"))
    assert server_key(_request(sipp_invite(branch="1"))) == server_key(old)
    ack = _request(sipp_request("ACK", to_tag="ours", branch="1"))
    assert server_key(ack) == server_key(old)
    assert server_key(_request(sipp_invite(branch="1", cseq=2))) != server_key(old)
    assert server_key(_request(sipp_invite(branch="1", from_tag="x"))) != server_key(old)


def test_client_key_pairs_a_response_with_its_request() -> None:
    invite = _request(sipp_invite())
    assert client_key(_response(invite, 180)) == client_key(invite)
    bye = _request(sipp_request("BYE", to_tag="t", branch="z9hG4bK-4242-1-0", cseq=2))
    assert client_key(_response(bye, 200)) != client_key(invite)


def test_every_table_row_leads_to_a_state_with_declared_timers() -> None:
    for machine in (INVITE_SERVER, NON_INVITE_SERVER, INVITE_CLIENT, NON_INVITE_CLIENT):
        for (state, _), (next_state, actions, timers) in machine.table.items():
            assert state in machine.timers_alive and next_state in machine.timers_alive
            # A timer a row arms must be allowed to run in the state it leads to.
            assert set(timers) <= machine.timers_alive[next_state], (machine.name, state)
            assert (Do.ARM in actions) == bool(timers)
