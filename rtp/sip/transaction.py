"""RFC 3261 §17 transactions, with every state transition written as a table.

Owns the four transaction state machines (INVITE server, non-INVITE server,
INVITE client, non-INVITE client; the INVITE machines include RFC 6026's
*Accepted* state) as data: ``(state, input) → (next state, actions)``. An
input missing from a table is absorbed when it comes from the network or a
timer, and refused with ``SipLocalError`` when the transaction user (TU)
asked for it (a response the state does not allow). Each state also lists
the timers that may keep running in it; leaving the state disarms the rest.

``Transaction`` interprets the tables: it sends and retransmits through a
shared outbox, arms its named timers in a shared ``TimerQueue`` (keys are
``(transaction, TxInput.TIMER_x)``), builds the ACK for a non-2xx final
response, and tells the TU only two things: ``Do.DELIVER`` (pass the message
up) and ``Do.REPORT_TIMEOUT``. Transaction matching keys (RFC 3261 §17.1.3,
§17.2.3, with the RFC 2543 fallback for branch-less requests) live here too.

Must not: build responses or requests other than the non-2xx ACK (that is
the TU's job), keep dialog state, or read the clock.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from rtp.sip.address import MAGIC_COOKIE
from rtp.sip.errors import SipLocalError
from rtp.sip.message import Headers, SipRequest, SipResponse
from rtp.sip.timers import SipTimers, TimerQueue

__all__ = [
    "INVITE_CLIENT",
    "INVITE_SERVER",
    "NON_INVITE_CLIENT",
    "NON_INVITE_SERVER",
    "Do",
    "Transaction",
    "TxInput",
    "TxMachine",
    "TxState",
    "ack_for_final",
    "client_key",
    "response_input",
    "server_key",
]

Address: TypeAlias = tuple[str, int]
Outbox: TypeAlias = list[tuple[bytes, Address]]


class TxState(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class TxInput(enum.Enum):
    # From the network, server side.
    REQUEST = "request retransmission"
    ACK = "ACK"
    # From the TU, server side (FINAL is 300-699).
    SEND_1XX = "TU sends 1xx"
    SEND_2XX = "TU sends 2xx"
    SEND_FINAL = "TU sends 300-699"
    # From the network, client side.
    RECV_1XX = "1xx received"
    RECV_2XX = "2xx received"
    RECV_FINAL = "300-699 received"
    # Timers.
    TIMER_A = "timer A"
    TIMER_B = "timer B"
    TIMER_D = "timer D"
    TIMER_E = "timer E"
    TIMER_F = "timer F"
    TIMER_G = "timer G"
    TIMER_H = "timer H"
    TIMER_I = "timer I"
    TIMER_J = "timer J"
    TIMER_K = "timer K"
    TIMER_L = "timer L"
    TIMER_M = "timer M"


class Do(enum.Enum):
    SEND = "send the message handed in"
    RESEND = "retransmit the last message sent"
    SEND_ACK = "build and send the ACK for a non-2xx final"
    RESEND_ACK = "retransmit that ACK"
    DELIVER = "pass the message to the TU"
    REPORT_TIMEOUT = "tell the TU the transaction timed out"
    ARM = "arm the timer(s) named in the row"
    BACKOFF = "re-arm the firing retransmission timer at double its interval"
    HOLD_AT_T2 = "re-arm the firing retransmission timer at T2"


I = TxInput  # noqa: E741 - the tables read better with short names
S = TxState

# A row: next state, actions, timers armed by Do.ARM.
Row: TypeAlias = tuple[TxState, tuple[Do, ...], tuple[TxInput, ...]]

SEND_ONLY: tuple[Do, ...] = (Do.SEND,)
NOTHING: tuple[Do, ...] = ()


@dataclass(frozen=True)
class TxMachine:
    """One transaction kind: its start, its table and the timers each state keeps."""

    name: str
    initial: TxState
    initial_actions: tuple[Do, ...]
    initial_timers: tuple[TxInput, ...]
    table: Mapping[tuple[TxState, TxInput], Row]
    timers_alive: Mapping[TxState, frozenset[TxInput]]
    tu_inputs: frozenset[TxInput]


_SERVER_TU_INPUTS = frozenset({I.SEND_1XX, I.SEND_2XX, I.SEND_FINAL})

# RFC 3261 §17.2.1 (Figure 7) with RFC 6026 §7.1 (Accepted state).
INVITE_SERVER = TxMachine(
    name="INVITE server",
    initial=S.PROCEEDING,
    initial_actions=NOTHING,
    initial_timers=(),
    table={
        (S.PROCEEDING, I.REQUEST): (S.PROCEEDING, (Do.RESEND,), ()),
        (S.PROCEEDING, I.SEND_1XX): (S.PROCEEDING, SEND_ONLY, ()),
        (S.PROCEEDING, I.SEND_2XX): (S.ACCEPTED, (Do.SEND, Do.ARM), (I.TIMER_L,)),
        (S.PROCEEDING, I.SEND_FINAL): (S.COMPLETED, (Do.SEND, Do.ARM), (I.TIMER_G, I.TIMER_H)),
        (S.COMPLETED, I.REQUEST): (S.COMPLETED, (Do.RESEND,), ()),
        (S.COMPLETED, I.TIMER_G): (S.COMPLETED, (Do.RESEND, Do.BACKOFF), ()),
        (S.COMPLETED, I.TIMER_H): (S.TERMINATED, (Do.REPORT_TIMEOUT,), ()),
        (S.COMPLETED, I.ACK): (S.CONFIRMED, (Do.ARM,), (I.TIMER_I,)),
        (S.CONFIRMED, I.REQUEST): (S.CONFIRMED, NOTHING, ()),
        (S.CONFIRMED, I.ACK): (S.CONFIRMED, NOTHING, ()),
        (S.CONFIRMED, I.TIMER_I): (S.TERMINATED, NOTHING, ()),
        # RFC 6026: 2xx retransmissions are the TU's; INVITE retransmissions
        # are absorbed; an ACK (a 2xx ACK reusing the branch) goes up.
        (S.ACCEPTED, I.REQUEST): (S.ACCEPTED, NOTHING, ()),
        (S.ACCEPTED, I.SEND_2XX): (S.ACCEPTED, SEND_ONLY, ()),
        (S.ACCEPTED, I.ACK): (S.ACCEPTED, (Do.DELIVER,), ()),
        (S.ACCEPTED, I.TIMER_L): (S.TERMINATED, NOTHING, ()),
    },
    timers_alive={
        S.PROCEEDING: frozenset(),
        S.COMPLETED: frozenset({I.TIMER_G, I.TIMER_H}),
        S.CONFIRMED: frozenset({I.TIMER_I}),
        S.ACCEPTED: frozenset({I.TIMER_L}),
        S.TERMINATED: frozenset(),
    },
    tu_inputs=_SERVER_TU_INPUTS,
)

# RFC 3261 §17.2.2 (Figure 8).
NON_INVITE_SERVER = TxMachine(
    name="non-INVITE server",
    initial=S.TRYING,
    initial_actions=NOTHING,
    initial_timers=(),
    table={
        (S.TRYING, I.REQUEST): (S.TRYING, NOTHING, ()),
        (S.TRYING, I.SEND_1XX): (S.PROCEEDING, SEND_ONLY, ()),
        (S.TRYING, I.SEND_2XX): (S.COMPLETED, (Do.SEND, Do.ARM), (I.TIMER_J,)),
        (S.TRYING, I.SEND_FINAL): (S.COMPLETED, (Do.SEND, Do.ARM), (I.TIMER_J,)),
        (S.PROCEEDING, I.REQUEST): (S.PROCEEDING, (Do.RESEND,), ()),
        (S.PROCEEDING, I.SEND_1XX): (S.PROCEEDING, SEND_ONLY, ()),
        (S.PROCEEDING, I.SEND_2XX): (S.COMPLETED, (Do.SEND, Do.ARM), (I.TIMER_J,)),
        (S.PROCEEDING, I.SEND_FINAL): (S.COMPLETED, (Do.SEND, Do.ARM), (I.TIMER_J,)),
        (S.COMPLETED, I.REQUEST): (S.COMPLETED, (Do.RESEND,), ()),
        (S.COMPLETED, I.TIMER_J): (S.TERMINATED, NOTHING, ()),
    },
    timers_alive={
        S.TRYING: frozenset(),
        S.PROCEEDING: frozenset(),
        S.COMPLETED: frozenset({I.TIMER_J}),
        S.TERMINATED: frozenset(),
    },
    tu_inputs=_SERVER_TU_INPUTS,
)

_TO_COMPLETED_WITH_ACK: Row = (S.COMPLETED, (Do.SEND_ACK, Do.DELIVER, Do.ARM), (I.TIMER_D,))
_TO_ACCEPTED: Row = (S.ACCEPTED, (Do.DELIVER, Do.ARM), (I.TIMER_M,))

# RFC 3261 §17.1.1 (Figure 5) with RFC 6026 §7.2 (Accepted state).
INVITE_CLIENT = TxMachine(
    name="INVITE client",
    initial=S.CALLING,
    initial_actions=(Do.SEND, Do.ARM),
    initial_timers=(I.TIMER_A, I.TIMER_B),
    table={
        (S.CALLING, I.TIMER_A): (S.CALLING, (Do.RESEND, Do.BACKOFF), ()),
        (S.CALLING, I.TIMER_B): (S.TERMINATED, (Do.REPORT_TIMEOUT,), ()),
        (S.CALLING, I.RECV_1XX): (S.PROCEEDING, (Do.DELIVER,), ()),
        (S.CALLING, I.RECV_2XX): _TO_ACCEPTED,
        (S.CALLING, I.RECV_FINAL): _TO_COMPLETED_WITH_ACK,
        (S.PROCEEDING, I.RECV_1XX): (S.PROCEEDING, (Do.DELIVER,), ()),
        (S.PROCEEDING, I.RECV_2XX): _TO_ACCEPTED,
        (S.PROCEEDING, I.RECV_FINAL): _TO_COMPLETED_WITH_ACK,
        (S.COMPLETED, I.RECV_FINAL): (S.COMPLETED, (Do.RESEND_ACK,), ()),
        (S.COMPLETED, I.TIMER_D): (S.TERMINATED, NOTHING, ()),
        (S.ACCEPTED, I.RECV_2XX): (S.ACCEPTED, (Do.DELIVER,), ()),
        (S.ACCEPTED, I.TIMER_M): (S.TERMINATED, NOTHING, ()),
    },
    timers_alive={
        S.CALLING: frozenset({I.TIMER_A, I.TIMER_B}),
        S.PROCEEDING: frozenset(),
        S.COMPLETED: frozenset({I.TIMER_D}),
        S.ACCEPTED: frozenset({I.TIMER_M}),
        S.TERMINATED: frozenset(),
    },
    tu_inputs=frozenset(),
)

_TO_COMPLETED: Row = (S.COMPLETED, (Do.DELIVER, Do.ARM), (I.TIMER_K,))

# RFC 3261 §17.1.2 (Figure 6).
NON_INVITE_CLIENT = TxMachine(
    name="non-INVITE client",
    initial=S.TRYING,
    initial_actions=(Do.SEND, Do.ARM),
    initial_timers=(I.TIMER_E, I.TIMER_F),
    table={
        (S.TRYING, I.TIMER_E): (S.TRYING, (Do.RESEND, Do.BACKOFF), ()),
        (S.TRYING, I.TIMER_F): (S.TERMINATED, (Do.REPORT_TIMEOUT,), ()),
        (S.TRYING, I.RECV_1XX): (S.PROCEEDING, (Do.DELIVER,), ()),
        (S.TRYING, I.RECV_2XX): _TO_COMPLETED,
        (S.TRYING, I.RECV_FINAL): _TO_COMPLETED,
        (S.PROCEEDING, I.TIMER_E): (S.PROCEEDING, (Do.RESEND, Do.HOLD_AT_T2), ()),
        (S.PROCEEDING, I.TIMER_F): (S.TERMINATED, (Do.REPORT_TIMEOUT,), ()),
        (S.PROCEEDING, I.RECV_1XX): (S.PROCEEDING, (Do.DELIVER,), ()),
        (S.PROCEEDING, I.RECV_2XX): _TO_COMPLETED,
        (S.PROCEEDING, I.RECV_FINAL): _TO_COMPLETED,
        (S.COMPLETED, I.TIMER_K): (S.TERMINATED, NOTHING, ()),
    },
    timers_alive={
        S.TRYING: frozenset({I.TIMER_E, I.TIMER_F}),
        S.PROCEEDING: frozenset({I.TIMER_E, I.TIMER_F}),
        S.COMPLETED: frozenset({I.TIMER_K}),
        S.TERMINATED: frozenset(),
    },
    tu_inputs=frozenset(),
)

# Retransmission timers (doubling, some capped at T2) and what they are
# when the transport is reliable (not armed at all).
_RETRANSMIT_TIMERS = frozenset({I.TIMER_A, I.TIMER_E, I.TIMER_G})
_CAPPED_AT_T2 = frozenset({I.TIMER_E, I.TIMER_G})
# Wait timers that drop to zero over a reliable transport (RFC 3261 Table 4).
_ZERO_WHEN_RELIABLE = frozenset({I.TIMER_D, I.TIMER_I, I.TIMER_J, I.TIMER_K})


def _initial_interval(timer: TxInput, settings: SipTimers) -> float:
    if timer in _RETRANSMIT_TIMERS:
        return settings.t1
    if timer is I.TIMER_D:
        return settings.d
    if timer in (I.TIMER_I, I.TIMER_K):
        return settings.t4
    return settings.timeout  # B, F, H, J, L, M


def response_input(status: int) -> TxInput:
    """The client-side input a received response of ``status`` is."""
    if status < 200:
        return I.RECV_1XX
    return I.RECV_2XX if status < 300 else I.RECV_FINAL


def _send_input(status: int) -> TxInput:
    if status < 200:
        return I.SEND_1XX
    return I.SEND_2XX if status < 300 else I.SEND_FINAL


def server_key(request: SipRequest, method: str | None = None) -> Hashable:
    """The server transaction a request belongs to (RFC 3261 §17.2.3).

    An ACK maps to its INVITE's transaction; pass ``method="INVITE"`` to find
    the INVITE a CANCEL targets. Requests whose branch lacks the magic cookie
    are matched by the RFC 2543 rules (Request-URI, From tag, Call-ID, CSeq
    number, top Via).
    """
    via = request.top_via
    key_method = method or ("INVITE" if request.method == "ACK" else request.method)
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.sent_by.lower(), key_method)
    return (
        "rfc2543",
        request.uri,
        request.from_addr.tag,
        request.call_id,
        request.cseq.number,
        key_method,
        str(via).lower(),
    )


def client_key(message: SipRequest | SipResponse) -> Hashable:
    """The client transaction a response belongs to (top Via branch + CSeq method)."""
    method = message.method if isinstance(message, SipRequest) else message.cseq.method
    return (message.top_via.branch, method)


def ack_for_final(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK for a non-2xx final response to ``invite`` (RFC 3261 §17.1.1.3)."""
    headers = Headers([("Via", invite.headers.get_list("Via")[0])])
    for name in ("From",):
        value = invite.headers.get(name)
        if value is not None:
            headers.add(name, value)
    to = response.headers.get("To")
    if to is not None:
        headers.add("To", to)
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", f"{invite.cseq.number} ACK")
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    return SipRequest("ACK", invite.uri, headers)


class Transaction:
    """One transaction driven by its ``TxMachine`` table.

    Server transactions send responses to ``destination`` (the Via address);
    client transactions send their request (and a non-2xx ACK) there.
    ``last_response`` is the last response sent (server) or received (client).
    """

    def __init__(
        self,
        machine: TxMachine,
        request: SipRequest,
        destination: Address,
        *,
        settings: SipTimers,
        queue: TimerQueue[Any],
        outbox: Outbox,
        reliable: bool = False,
    ) -> None:
        self.machine = machine
        self.request = request
        self.destination = destination
        self.state = machine.initial
        self.last_response: SipResponse | None = None
        self.retransmissions = 0
        self._settings = settings
        self._queue = queue
        self._outbox = outbox
        self._reliable = reliable
        self._last_sent: bytes | None = None
        self._ack: bytes | None = None
        self._intervals: dict[TxInput, float] = {}

    @property
    def is_server(self) -> bool:
        return self.machine in (INVITE_SERVER, NON_INVITE_SERVER)

    @property
    def terminated(self) -> bool:
        return self.state is S.TERMINATED

    def start(self, now: float) -> None:
        """Run the machine's entry actions (a client sends its request here)."""
        self._run(self.machine.initial_actions, self.machine.initial_timers, None, None, now)

    def respond(self, response: SipResponse, now: float) -> None:
        """TU → server transaction: send ``response`` (refused if the state forbids it)."""
        self.fire(_send_input(response.status), now, response)

    def fire(
        self, event: TxInput, now: float, message: SipRequest | SipResponse | None = None
    ) -> Do | None:
        """Apply ``event``; return ``Do.DELIVER``/``Do.REPORT_TIMEOUT`` if the TU must act."""
        row = self.machine.table.get((self.state, event))
        if row is None:
            if event in self.machine.tu_inputs:
                raise SipLocalError(
                    f"{self.machine.name} transaction in state {self.state.value}"
                    f" cannot take '{event.value}'"
                )
            return None
        next_state, actions, timers = row
        if isinstance(message, SipResponse):
            self.last_response = message
        self.state = next_state
        for timer in _ALL_TIMERS - self.machine.timers_alive[next_state]:
            self._queue.disarm((self, timer))
        return self._run(actions, timers, event, message, now)

    def _run(
        self,
        actions: tuple[Do, ...],
        timers: tuple[TxInput, ...],
        event: TxInput | None,
        message: SipRequest | SipResponse | None,
        now: float,
    ) -> Do | None:
        tu_signal: Do | None = None
        for action in actions:
            if action is Do.SEND:
                self._send(bytes(message if message is not None else self.request))
            elif action is Do.RESEND:
                if self._last_sent is not None:
                    self.retransmissions += 1
                    self._outbox.append((self._last_sent, self.destination))
            elif action is Do.SEND_ACK:
                assert isinstance(message, SipResponse)
                self._ack = bytes(ack_for_final(self.request, message))
                self._outbox.append((self._ack, self.destination))
            elif action is Do.RESEND_ACK:
                if self._ack is not None:
                    self._outbox.append((self._ack, self.destination))
            elif action is Do.ARM:
                for timer in timers:
                    self._arm(timer, _initial_interval(timer, self._settings), now)
            elif action is Do.BACKOFF:
                assert event is not None
                interval = 2 * self._intervals.get(event, self._settings.t1)
                if event in _CAPPED_AT_T2:
                    interval = min(interval, self._settings.t2)
                self._arm(event, interval, now)
            elif action is Do.HOLD_AT_T2:
                assert event is not None
                self._arm(event, self._settings.t2, now)
            else:  # DELIVER, REPORT_TIMEOUT
                tu_signal = action
        return tu_signal

    def _send(self, data: bytes) -> None:
        self._last_sent = data
        self._outbox.append((data, self.destination))

    def _arm(self, timer: TxInput, interval: float, now: float) -> None:
        if self._reliable:
            if timer in _RETRANSMIT_TIMERS:
                return
            if timer in _ZERO_WHEN_RELIABLE:
                interval = 0.0
        self._intervals[timer] = interval
        self._queue.arm((self, timer), now + interval)

    def abandon(self) -> None:
        """Terminate at once (the TU gave up on it); its timers are disarmed."""
        self.state = S.TERMINATED
        for timer in _ALL_TIMERS:
            self._queue.disarm((self, timer))

    def __repr__(self) -> str:
        return f"<Transaction {self.machine.name} {self.request.method} {self.state.value}>"


_ALL_TIMERS = frozenset(t for t in TxInput if t.name.startswith("TIMER_"))
