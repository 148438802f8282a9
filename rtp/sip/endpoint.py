"""The SIP user agent (UAS and UAC) behind one UDP port, sans-I/O.

Owns ``SipEndpoint``: it takes datagrams and ``now`` in
(``receive_datagram``, ``handle_timer``) and gives datagrams, a timer
deadline and events out (``datagrams_to_send``, ``get_timer``,
``next_event``), in the style of aioquic. Between the two it runs the
transactions of ``rtp.sip.transaction``, the dialogs of ``rtp.sip.dialog``
and the call logic of RFC 3261: 100 Trying for every INVITE, 180/200/
rejections on the application's word, 2xx retransmission until the ACK
(§13.3.1.4; no ACK within 64·T1 → BYE), re-INVITE, BYE, CANCEL (200, then
487 to the INVITE), OPTIONS (200 with Allow/Accept), and for outgoing calls
INVITE, ACK for the 2xx, CANCEL and BYE.

Errors are answered, never raised out of ``receive_datagram``:

- 400 for a malformed request or a missing Via/From/To/Call-ID/CSeq (or,
  in an INVITE, a Contact or Record-Route we could not route back to); a
  missing Max-Forwards is tolerated;
- 481 for a request inside an unknown dialog or a CANCEL matching nothing;
- 482 for a merged INVITE (same From tag/Call-ID/CSeq, another branch);
- 405/501 for a method outside ``allow``/unknown, 415 for a body that is
  not ``application/sdp``, 416 for a non-SIP Request-URI, 420 for an
  unsupported ``Require``, 500 for an out-of-order CSeq or an INVITE while
  another is pending, 505 for another SIP version, 413/513 for size limits.

An error is answered when the top Via is readable (the response then
reaches the sender) and the CSeq is readable or the method is one we
implement (a missing CSeq is answered as ``CSeq: 0 <METHOD>``, which still
matches the sender's transaction by branch and method); whatever of From,
To and Call-ID is present is copied. Otherwise, and for ACKs, the message
is dropped. Either way ``counters`` counts it and a ``RemoteError`` event says
so. 503 for a call limit is the application's decision: ``reject(call, 503)``;
an INVITE the application leaves unanswered for ``answer_timeout`` gets 408.

Must not: open sockets, read the clock, log, or parse SDP (bodies are opaque
bytes with a content type).
"""

from __future__ import annotations

import enum
import ipaddress
import random
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from rtp.sip.address import MAGIC_COOKIE, NameAddr, SipUri, Via, format_host, split_header_list
from rtp.sip.dialog import Dialog, DialogId
from rtp.sip.errors import SipLocalError, SipRemoteError
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
from rtp.sip.message import (
    DEFAULT_LIMITS,
    Headers,
    SipLimits,
    SipRequest,
    SipResponse,
    build_response,
    parse_message,
)
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
    client_key,
    response_input,
    server_key,
)

__all__ = ["DEFAULT_ALLOW", "CallState", "SipCounters", "SipEndpoint"]

Address: TypeAlias = tuple[str, int]

#: Methods the endpoint implements; ``allow`` may advertise a subset.
IMPLEMENTED_METHODS = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS")
DEFAULT_ALLOW = IMPLEMENTED_METHODS


class CallState(enum.Enum):
    OFFERED = "offered"  # inbound: INVITE received, no final response yet
    CALLING = "calling"  # outbound: INVITE sent, no final response yet
    ANSWERED = "answered"  # inbound: 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"  # the dialog is up
    ENDING = "ending"  # our BYE is in flight
    ENDED = "ended"


class _CallTimer(enum.Enum):
    RETRANSMIT_2XX = "retransmit 2xx"
    ACK_WAIT = "give up waiting for the ACK"
    ANSWER_WAIT = "inbound call never answered by the application"
    RING = "outgoing call not answered in time"
    CANCEL_WAIT = "give up waiting for the INVITE's final response after CANCEL"


@dataclass
class SipCounters:
    """What went through the endpoint since it was created."""

    datagrams_received: int = 0
    keepalives: int = 0
    requests_received: int = 0
    responses_received: int = 0
    retransmissions_received: int = 0
    retransmissions_sent: int = 0
    errors_answered: int = 0
    dropped: int = 0
    stray_responses: int = 0
    stray_acks: int = 0


class _Call:
    """Per-call state the endpoint keeps (never shown to the application)."""

    def __init__(
        self,
        handle: CallHandle,
        state: CallState,
        local_tag: str,
        invite: SipRequest,
        invite_tx: Transaction,
    ) -> None:
        self.handle = handle
        self.state = state
        self.local_tag = local_tag
        self.invite = invite
        self.invite_tx = invite_tx
        self.index_key: DialogId | None = None
        self.dialog: Dialog | None = None
        self.reported = False  # the terminal event has been emitted
        # Inbound: an unanswered re-INVITE; the 2xx being retransmitted.
        self.reinvite_tx: Transaction | None = None
        self.pending_2xx: bytes | None = None
        self.pending_2xx_cseq = 0
        self.pending_2xx_dest: Address = ("", 0)
        self.retransmit_interval = 0.0
        self.bye_after_ack = False
        # Outbound.
        self.provisional_seen = False
        self.cancel_reason: Literal["hangup", "timeout"] | None = None
        self.cancel_sent = False
        self.ack: bytes | None = None

    def __repr__(self) -> str:
        return f"<_Call {self.handle.serial} {self.handle.direction} {self.state.value}>"


def _same_host(host: str, source: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(source)
    except ValueError:
        return host.lower() == source.lower()


class SipEndpoint:
    """A SIP user agent on ``local_host:local_port`` over UDP.

    ``local_host``/``local_port`` are what peers reach us at: they go into
    Via and Contact. App-side methods take an optional ``now``; without it
    the latest time the endpoint was given is used. An inbound call the
    application neither answers nor rejects within ``answer_timeout`` seconds
    is refused with 408, so a stuck application cannot leak calls.
    """

    def __init__(
        self,
        local_host: str,
        local_port: int,
        *,
        now: float,
        user_agent: str = "jambonz-mediaserver-emulator",
        allow: Sequence[str] = DEFAULT_ALLOW,
        supported: Sequence[str] = (),
        accept: Sequence[str] = ("application/sdp",),
        timers: SipTimers | None = None,
        limits: SipLimits = DEFAULT_LIMITS,
        answer_timeout: float | None = 180.0,
        rng: random.Random | None = None,
    ) -> None:
        unknown = [m for m in allow if m not in IMPLEMENTED_METHODS]
        if unknown:
            raise SipLocalError(f"cannot allow methods the endpoint does not implement: {unknown}")
        self.local_host = local_host
        self.local_port = local_port
        self.user_agent = user_agent
        self.allow = tuple(allow)
        self.supported = tuple(s.lower() for s in supported)
        self.accept = tuple(a.lower() for a in accept)
        self.timers = timers or SipTimers()
        self.limits = limits
        self.answer_timeout = answer_timeout
        self.counters = SipCounters()
        self._rng = rng or random.Random()
        self._now = now
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[SipEvent] = deque()
        self._queue: TimerQueue[tuple[Any, Hashable]] = TimerQueue()
        self._server_txs: dict[Hashable, Transaction] = {}
        self._client_txs: dict[Hashable, Transaction] = {}
        self._tx_keys: dict[Transaction, tuple[Hashable, Hashable | None]] = {}
        self._merge_index: dict[Hashable, Transaction] = {}
        self._tx_calls: dict[Transaction, _Call] = {}
        self._tx_tags: dict[Transaction, str] = {}
        self._calls: dict[DialogId, _Call] = {}
        self._handles: dict[CallHandle, _Call] = {}
        self._next_serial = 1
        self._contact = f"<sip:{format_host(local_host)}:{local_port}>"

    # ------------------------------------------------------------------
    # The sans-I/O surface
    # ------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Take one datagram from ``addr``; never raises for anything a peer sends."""
        self._advance(now)
        self.counters.datagrams_received += 1
        if not data.strip():  # CRLF keep-alive (RFC 5626 §4.4.1)
            self.counters.keepalives += 1
            return
        source = (addr[0], addr[1])
        try:
            message = parse_message(data, limits=self.limits)
        except SipRemoteError as error:
            self._refuse(error, source)
            return
        if isinstance(message, SipRequest):
            self.counters.requests_received += 1
            self._on_request(message, source, now)
        else:
            self.counters.responses_received += 1
            try:
                self._on_response(message, now)
            except SipRemoteError as error:
                self._refuse(error, source)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        """Everything queued for the network since the last call, in order."""
        self._advance(now)
        out = list(self._outbox)
        self._outbox.clear()  # cleared in place: transactions share this list
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (``None``: nothing pending)."""
        return self._queue.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now``."""
        self._advance(now)
        while (key := self._queue.pop_due(now)) is not None:
            owner, name = key
            if isinstance(owner, Transaction):
                assert isinstance(name, TxInput)
                self._fire_timer(owner, name, now)
            else:
                assert isinstance(owner, _Call) and isinstance(name, _CallTimer)
                self._on_call_timer(owner, name, now)

    def next_event(self) -> SipEvent | None:
        """The oldest event not yet taken, or ``None``."""
        return self._events.popleft() if self._events else None

    @property
    def call_count(self) -> int:
        """Calls not yet ended."""
        return len(self._handles)

    @property
    def transaction_count(self) -> int:
        return len(self._tx_keys)

    # ------------------------------------------------------------------
    # Application side: inbound calls
    # ------------------------------------------------------------------

    def ringing(self, call: CallHandle, *, now: float | None = None) -> None:
        """Send 180 Ringing for an inbound call not yet answered."""
        c = self._app_call(call)
        if c is None:
            return
        if c.state is not CallState.OFFERED:
            raise SipLocalError(f"ringing() needs an unanswered inbound call, not {c.state.value}")
        response = self._response(c.invite_tx.request, 180, to_tag=c.local_tag, dialog=True)
        c.invite_tx.respond(response, self._time(now))

    def answer(
        self,
        call: CallHandle,
        sdp: bytes,
        content_type: str = "application/sdp",
        *,
        headers: Sequence[tuple[str, str]] = (),
        now: float | None = None,
    ) -> None:
        """Answer the INVITE (or the pending re-INVITE) with 200 OK and ``sdp``.

        The 200 is retransmitted (T1, 2·T1, ... capped at T2) until the ACK
        arrives (``CallAcked``); after 64·T1 without it the call is ended
        with a BYE.
        """
        c = self._app_call(call)
        if c is None:
            return
        t = self._time(now)
        if c.state is CallState.OFFERED:
            tx = c.invite_tx
        elif c.reinvite_tx is not None:
            tx = c.reinvite_tx
        else:
            raise SipLocalError(f"nothing to answer on call {c.handle.serial} ({c.state.value})")
        response = self._response(
            tx.request, 200, to_tag=c.local_tag, dialog=True, headers=headers, body=sdp
        )
        if sdp:
            response.headers.add("Content-Type", content_type)
        if tx is c.invite_tx:
            c.state = CallState.ANSWERED
            self._queue.disarm((c, _CallTimer.ANSWER_WAIT))
        else:
            c.reinvite_tx = None
        tx.respond(response, t)
        c.pending_2xx = bytes(response)
        c.pending_2xx_cseq = tx.request.cseq.number
        c.pending_2xx_dest = tx.destination
        c.retransmit_interval = self.timers.t1
        self._queue.arm((c, _CallTimer.RETRANSMIT_2XX), t + self.timers.t1)
        self._queue.arm((c, _CallTimer.ACK_WAIT), t + self.timers.timeout)

    def reject(
        self,
        call: CallHandle,
        status: int,
        reason: str | None = None,
        headers: Sequence[tuple[str, str]] | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """Refuse the INVITE (ends the call) or the pending re-INVITE (call goes on).

        ``status`` is 300-699: e.g. 486, 488 for unusable SDP, 403, or 503
        with ``headers=[("Retry-After", "5")]`` when over the call limit.
        """
        if not 300 <= status <= 699:
            raise SipLocalError(f"reject() needs a status 300-699, not {status}")
        c = self._app_call(call)
        if c is None:
            return
        t = self._time(now)
        if c.state is CallState.OFFERED:
            tx = c.invite_tx
        elif c.reinvite_tx is not None:
            tx = c.reinvite_tx
        else:
            raise SipLocalError(f"nothing to reject on call {c.handle.serial} ({c.state.value})")
        response = self._response(
            tx.request, status, reason, to_tag=c.local_tag, headers=headers or ()
        )
        tx.respond(response, t)
        if tx is c.invite_tx:
            self._end(c, CallEnded(c.handle, "local", f"rejected with {status}"))
        else:
            c.reinvite_tx = None

    # ------------------------------------------------------------------
    # Application side: outbound calls and hanging up
    # ------------------------------------------------------------------

    def invite(
        self,
        target_uri: str,
        *,
        from_uri: str,
        sdp: bytes,
        content_type: str = "application/sdp",
        headers: Sequence[tuple[str, str]] = (),
        timeout: float = 60.0,
        now: float | None = None,
    ) -> CallHandle:
        """Place a call: INVITE ``target_uri`` from ``from_uri`` with ``sdp``.

        Sent to the first ``Route`` in ``headers`` if there is one, else to the
        target's host and port. Without a final response within ``timeout``
        seconds the call fails with 408 and is cancelled.
        """
        t = self._time(now)
        try:
            target = SipUri.parse(target_uri)
            sender = NameAddr.parse(from_uri, "from_uri")
            routes = [
                NameAddr.parse(v, "Route").sip_uri() for n, v in headers if n.lower() == "route"
            ]
        except SipRemoteError as error:
            raise SipLocalError(f"cannot place a call: {error.reason}") from None
        tag = self._token()
        call_id = self._token(16)
        fields = Headers(
            [
                ("Via", self._via()),
                ("Max-Forwards", "70"),
                ("From", str(sender.with_tag(tag))),
                ("To", f"<{target_uri}>"),
                ("Call-ID", call_id),
                ("CSeq", "1 INVITE"),
                ("Contact", self._contact),
                ("User-Agent", self.user_agent),
                ("Allow", ", ".join(self.allow)),
            ]
        )
        if self.supported:
            fields.add("Supported", ", ".join(self.supported))
        for name, value in headers:
            fields.add(name, value)
        if sdp:
            fields.add("Content-Type", content_type)
        request = SipRequest("INVITE", target_uri, fields, sdp)
        destination = (routes[0] if routes else target).host_port()
        tx = self._new_client_tx(INVITE_CLIENT, request, destination)
        handle = CallHandle(self._next_serial, call_id, "outbound")
        self._next_serial += 1
        c = _Call(handle, CallState.CALLING, tag, request, tx)
        self._handles[handle] = c
        self._tx_calls[tx] = c
        tx.start(t)
        self._queue.arm((c, _CallTimer.RING), t + timeout)
        return handle

    def hangup(self, call: CallHandle, *, now: float | None = None) -> None:
        """End the call whatever its state; ``CallEnded(by="local")`` follows.

        Inbound before answer: 603 Decline. Answered but not yet ACKed: BYE as
        soon as the ACK arrives (RFC 3261 §15). Established: BYE. Outbound
        before answer: CANCEL (once a provisional response has arrived).
        """
        c = self._app_call(call)
        if c is None:
            return
        t = self._time(now)
        if c.state is CallState.OFFERED:
            self.reject(call, 603, now=t)
        elif c.state is CallState.ANSWERED:
            c.bye_after_ack = True
        elif c.state is CallState.CONFIRMED:
            self._send_bye(c, t)
        elif c.state is CallState.CALLING and c.cancel_reason is None:
            c.cancel_reason = "hangup"
            if c.provisional_seen:
                self._send_cancel(c, t)

    # ------------------------------------------------------------------
    # Requests in
    # ------------------------------------------------------------------

    def _on_request(self, request: SipRequest, source: Address, now: float) -> None:
        try:
            self._stamp_via(request, source)
            if request.method == "ACK":
                self._on_ack(request, now)
                return
            key = server_key(request)
        except SipRemoteError as error:
            error.request = request
            self._refuse(error, source)
            return
        existing = self._server_txs.get(key)
        if existing is not None:
            self.counters.retransmissions_received += 1
            self._fire(existing, TxInput.REQUEST, now)
            return
        tx = self._new_server_tx(request, key)
        try:
            self._check_merged(request, tx)
            self._dispatch(request, tx, source, now)
        except SipRemoteError as error:
            if tx.state in (TxState.TRYING, TxState.PROCEEDING):
                response = self._response(
                    request,
                    error.code,
                    error.reason,
                    to_tag=self._tx_tag(tx),
                    headers=error.headers,
                )
                tx.respond(response, now)
                self.counters.errors_answered += 1
                self._events.append(RemoteError(error.code, error.reason, source, True))
            else:  # a final response is already out: nothing more can be said
                self.counters.dropped += 1
                self._events.append(RemoteError(error.code, error.reason, source, False))
            if tx.terminated:
                self._forget(tx)

    def _check_merged(self, request: SipRequest, tx: Transaction) -> None:
        """RFC 3261 §8.2.2.2, for INVITEs only: a forking loop would make two calls.

        (Applied to every method, it would turn away pingers that reuse their
        Call-ID and CSeq for each OPTIONS.)
        """
        if request.method != "INVITE" or request.to_addr.tag is not None:
            return
        cseq = request.cseq
        merge_key = (request.call_id, request.from_addr.tag, cseq.number, cseq.method)
        other = self._merge_index.get(merge_key)
        if other is not None and other is not tx:
            raise SipRemoteError(482, "Loop Detected")
        self._merge_index[merge_key] = tx
        self._tx_keys[tx] = (self._tx_keys[tx][0], merge_key)

    def _dispatch(self, request: SipRequest, tx: Transaction, source: Address, now: float) -> None:
        method = request.method
        if method not in IMPLEMENTED_METHODS:
            raise SipRemoteError(501, "Not Implemented", headers=[self._allow_header()])
        if method not in self.allow:
            raise SipRemoteError(405, "Method Not Allowed", headers=[self._allow_header()])
        if method == "CANCEL":
            self._on_cancel(request, tx, now)
            return
        self._check_require(request)
        to_tag = request.to_addr.tag
        if to_tag is not None:
            call = self._calls.get((request.call_id, to_tag, request.from_addr.tag or ""))
            if call is None or call.state is CallState.ENDED:
                raise SipRemoteError(481, "Call/Transaction Does Not Exist")
            self._in_dialog(call, request, tx, now)
        elif method == "INVITE":
            self._on_invite(request, tx, source, now)
        elif method == "OPTIONS":
            self._answer_options(tx, now)
        else:
            raise SipRemoteError(481, "Call/Transaction Does Not Exist")

    def _check_require(self, request: SipRequest) -> None:
        unsupported = [
            option
            for option in request.headers.get_list("Require")
            if option.lower() not in self.supported
        ]
        if unsupported:
            raise SipRemoteError(
                420, "Bad Extension", headers=[("Unsupported", ", ".join(unsupported))]
            )

    def _check_body(self, request: SipRequest) -> None:
        if not request.body:
            return
        content_type = request.content_type
        if content_type is not None and content_type not in self.accept:
            raise SipRemoteError(
                415, "Unsupported Media Type", headers=[("Accept", ", ".join(self.accept))]
            )
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() != "identity":
            raise SipRemoteError(
                415, "Unsupported Media Type", headers=[("Accept-Encoding", "identity")]
            )

    def _on_invite(self, request: SipRequest, tx: Transaction, source: Address, now: float) -> None:
        dialog = Dialog.as_uas(request, self._tx_tag(tx))  # 400/416: no route back
        self._check_body(request)
        handle = CallHandle(self._next_serial, request.call_id, "inbound")
        self._next_serial += 1
        c = _Call(handle, CallState.OFFERED, dialog.local_tag, request, tx)
        c.dialog = dialog
        c.index_key = (request.call_id, c.local_tag, request.from_addr.tag or "")
        self._calls[c.index_key] = c
        self._handles[handle] = c
        self._tx_calls[tx] = c
        tx.respond(self._response(request, 100), now)
        if self.answer_timeout is not None:
            self._queue.arm((c, _CallTimer.ANSWER_WAIT), now + self.answer_timeout)
        self._events.append(IncomingCall(handle, request, source))

    def _in_dialog(self, c: _Call, request: SipRequest, tx: Transaction, now: float) -> None:
        if c.dialog is not None:  # an outbound call has one from its 2xx on
            c.dialog.accept_remote_cseq(request)
        method = request.method
        if method == "BYE":
            self._on_bye(c, request, tx, now)
        elif method == "INVITE":
            self._on_reinvite(c, request, tx, now)
        else:  # OPTIONS
            self._answer_options(tx, now)

    def _on_bye(self, c: _Call, request: SipRequest, tx: Transaction, now: float) -> None:
        tx.respond(self._response(request, 200, to_tag=c.local_tag), now)
        if c.state is CallState.ENDING:
            return  # BYEs crossed; ours will finish the call
        for pending in (c.invite_tx if c.state is CallState.OFFERED else None, c.reinvite_tx):
            if pending is not None and pending.state is TxState.PROCEEDING:
                pending.respond(self._response(pending.request, 487, to_tag=c.local_tag), now)
        c.reinvite_tx = None
        self._end(c, CallEnded(c.handle, "remote", "BYE"))

    def _on_reinvite(self, c: _Call, request: SipRequest, tx: Transaction, now: float) -> None:
        busy = (
            c.state is not CallState.CONFIRMED
            or c.dialog is None
            or c.reinvite_tx is not None
            or c.pending_2xx is not None
        )
        if busy or c.dialog is None:
            retry = str(self._rng.randint(0, 10))
            raise SipRemoteError(500, "Request Pending", headers=[("Retry-After", retry)])
        self._check_body(request)
        c.dialog.refresh_target(request)
        tx.respond(self._response(request, 100), now)
        c.reinvite_tx = tx
        self._tx_calls[tx] = c
        self._events.append(CallReinvited(c.handle, request))

    def _on_cancel(self, request: SipRequest, tx: Transaction, now: float) -> None:
        invite_tx = self._server_txs.get(server_key(request, method="INVITE"))
        if invite_tx is None or invite_tx.machine is not INVITE_SERVER:
            raise SipRemoteError(481, "Call/Transaction Does Not Exist")
        c = self._tx_calls.get(invite_tx)
        tag = c.local_tag if c is not None else self._tx_tag(tx)
        tx.respond(self._response(request, 200, to_tag=tag), now)
        if invite_tx.state is not TxState.PROCEEDING:
            return  # already answered: the CANCEL has no effect (RFC 3261 §9.2)
        invite_tx.respond(self._response(invite_tx.request, 487, to_tag=tag), now)
        if c is None:
            return
        if invite_tx is c.invite_tx:
            self._end(c, CallCancelled(c.handle, request))
        elif invite_tx is c.reinvite_tx:
            c.reinvite_tx = None

    def _on_ack(self, request: SipRequest, now: float) -> None:
        tx = self._server_txs.get(server_key(request))
        if (
            tx is not None
            and tx.machine is INVITE_SERVER
            and self._fire(tx, TxInput.ACK, now) is not Do.DELIVER
        ):
            return  # the ACK for a non-2xx final: the transaction took it
        to_tag = request.to_addr.tag
        c = self._calls.get((request.call_id, to_tag or "", request.from_addr.tag or ""))
        if c is None or c.pending_2xx is None or request.cseq.number != c.pending_2xx_cseq:
            self.counters.stray_acks += 1
            return
        c.pending_2xx = None
        self._queue.disarm((c, _CallTimer.RETRANSMIT_2XX))
        self._queue.disarm((c, _CallTimer.ACK_WAIT))
        if c.state is CallState.ANSWERED:
            c.state = CallState.CONFIRMED
        self._events.append(CallAcked(c.handle, request))
        if c.bye_after_ack:
            self._send_bye(c, now)

    def _answer_options(self, tx: Transaction, now: float) -> None:
        response = self._response(tx.request, 200, to_tag=self._tx_tag(tx))
        response.headers.add("Allow", ", ".join(self.allow))
        response.headers.add("Accept", ", ".join(self.accept))
        if self.supported:
            response.headers.add("Supported", ", ".join(self.supported))
        tx.respond(response, now)

    # ------------------------------------------------------------------
    # Responses in (outbound calls, our BYEs and CANCELs)
    # ------------------------------------------------------------------

    def _on_response(self, response: SipResponse, now: float) -> None:
        tx = self._client_txs.get(client_key(response))
        if tx is None:
            self._on_stray_response(response)
            return
        c = self._tx_calls.get(tx)
        signal = self._fire(tx, response_input(response.status), now, response)
        if signal is not Do.DELIVER or c is None:
            return
        method = tx.request.method
        if method == "INVITE":
            self._on_invite_response(c, response, now)
        elif method == "BYE" and response.status >= 200:
            self._end(c, CallEnded(c.handle, "local", f"BYE answered {response.status}"))

    def _on_invite_response(self, c: _Call, response: SipResponse, now: float) -> None:
        status = response.status
        if status < 200:
            c.provisional_seen = True
            if c.cancel_reason is not None and not c.cancel_sent:
                self._send_cancel(c, now)
            if status > 100 and c.cancel_reason is None:
                self._events.append(OutgoingCallProgress(c.handle, status, response))
            return
        self._queue.disarm((c, _CallTimer.RING))
        if status >= 300:
            if c.cancel_reason == "hangup":
                self._end(c, CallEnded(c.handle, "local", "cancelled"))
            else:
                self._end(c, OutgoingCallFailed(c.handle, status, response.reason))
            return
        to_tag = response.to_addr.tag or ""
        if c.dialog is not None:
            if to_tag == c.dialog.remote_tag:
                if c.ack is not None:
                    self._outbox.append((c.ack, c.dialog.next_hop()))
            else:
                self._ack_and_bye_stray_2xx(c.invite, response, now)
            return
        dialog = Dialog.as_uac(c.invite, response)
        c.dialog = dialog
        c.index_key = dialog.id
        self._calls[dialog.id] = c
        ack = dialog.request("ACK", via=self._via(), cseq=c.invite.cseq.number)
        c.ack = bytes(ack)
        self._outbox.append((c.ack, dialog.next_hop()))
        self._queue.disarm((c, _CallTimer.CANCEL_WAIT))
        if c.cancel_reason is not None:
            self._send_bye(c, now)  # answered after we gave up: RFC 3261 §15
            return
        c.state = CallState.CONFIRMED
        self._events.append(OutgoingCallAnswered(c.handle, response))

    def _ack_and_bye_stray_2xx(self, invite: SipRequest, response: SipResponse, now: float) -> None:
        """A 2xx from another fork (or for a call we no longer know): ACK it, then BYE."""
        dialog = Dialog.as_uac(invite, response)
        ack = dialog.request("ACK", via=self._via(), cseq=invite.cseq.number)
        self._outbox.append((bytes(ack), dialog.next_hop()))
        bye = dialog.request("BYE", via=self._via(), headers=[("User-Agent", self.user_agent)])
        self._new_client_tx(NON_INVITE_CLIENT, bye, dialog.next_hop()).start(now)

    def _on_stray_response(self, response: SipResponse) -> None:
        cseq = response.cseq
        if cseq.method == "INVITE" and 200 <= response.status < 300:
            key = (response.call_id, response.from_addr.tag or "", response.to_addr.tag or "")
            c = self._calls.get(key)
            if c is not None and c.ack is not None and c.dialog is not None:
                self._outbox.append((c.ack, c.dialog.next_hop()))
                return
        self.counters.stray_responses += 1

    # ------------------------------------------------------------------
    # Timers
    # ------------------------------------------------------------------

    def _fire_timer(self, tx: Transaction, timer: TxInput, now: float) -> None:
        c = self._tx_calls.get(tx)
        if self._fire(tx, timer, now) is not Do.REPORT_TIMEOUT or c is None:
            return
        method = tx.request.method
        if tx.is_server or method == "CANCEL":
            return  # no ACK for our non-2xx: nothing left to tell
        if method == "INVITE":
            if c.cancel_reason == "hangup":
                self._end(c, CallEnded(c.handle, "local", "cancelled"))
            else:
                self._end(c, OutgoingCallFailed(c.handle, 408, "Request Timeout"))
        elif method == "BYE":
            self._end(c, CallEnded(c.handle, "local", "BYE timed out"))

    def _on_call_timer(self, c: _Call, timer: _CallTimer, now: float) -> None:
        if timer is _CallTimer.RETRANSMIT_2XX and c.pending_2xx is not None:
            self._outbox.append((c.pending_2xx, c.pending_2xx_dest))
            self.counters.retransmissions_sent += 1
            c.retransmit_interval = min(2 * c.retransmit_interval, self.timers.t2)
            self._queue.arm((c, timer), now + c.retransmit_interval)
        elif timer is _CallTimer.ACK_WAIT and c.pending_2xx is not None:
            c.pending_2xx = None
            self._queue.disarm((c, _CallTimer.RETRANSMIT_2XX))
            self._report(c, CallEnded(c.handle, "local", "no ACK for 200 OK"))
            self._send_bye(c, now)
        elif timer is _CallTimer.ANSWER_WAIT and c.state is CallState.OFFERED:
            # Like a proxy's timer C: an INVITE must not stay unanswered forever.
            c.invite_tx.respond(self._response(c.invite, 408, to_tag=c.local_tag), now)
            self._end(c, CallEnded(c.handle, "local", "not answered in time"))
        elif timer is _CallTimer.RING and c.state is CallState.CALLING:
            self._report(c, OutgoingCallFailed(c.handle, 408, "No answer"))
            if c.cancel_reason is None:
                c.cancel_reason = "timeout"
                if c.provisional_seen:
                    self._send_cancel(c, now)
        elif timer is _CallTimer.CANCEL_WAIT and c.state is CallState.CALLING:
            # RFC 3261 §9.1: no final response 64·T1 after CANCEL; give up.
            c.invite_tx.abandon()
            self._forget(c.invite_tx)
            self._end(c, CallEnded(c.handle, "local", "cancelled"))

    # ------------------------------------------------------------------
    # Building and sending
    # ------------------------------------------------------------------

    def _send_bye(self, c: _Call, now: float) -> None:
        assert c.dialog is not None
        self._queue.disarm((c, _CallTimer.RETRANSMIT_2XX))
        self._queue.disarm((c, _CallTimer.ACK_WAIT))
        c.pending_2xx = None
        if c.reinvite_tx is not None and c.reinvite_tx.state is TxState.PROCEEDING:
            c.reinvite_tx.respond(
                self._response(c.reinvite_tx.request, 487, to_tag=c.local_tag), now
            )
        c.reinvite_tx = None
        bye = c.dialog.request("BYE", via=self._via(), headers=[("User-Agent", self.user_agent)])
        tx = self._new_client_tx(NON_INVITE_CLIENT, bye, c.dialog.next_hop())
        self._tx_calls[tx] = c
        c.state = CallState.ENDING
        tx.start(now)

    def _send_cancel(self, c: _Call, now: float) -> None:
        invite = c.invite
        fields = Headers([("Via", invite.headers.get_list("Via")[0]), ("Max-Forwards", "70")])
        for name in ("From", "To", "Call-ID"):
            fields.add(name, invite.headers.get(name) or "")
        fields.add("CSeq", f"{invite.cseq.number} CANCEL")
        for route in invite.headers.get_all("Route"):
            fields.add("Route", route)
        fields.add("User-Agent", self.user_agent)
        cancel = SipRequest("CANCEL", invite.uri, fields)
        tx = self._new_client_tx(NON_INVITE_CLIENT, cancel, c.invite_tx.destination)
        self._tx_calls[tx] = c
        c.cancel_sent = True
        tx.start(now)
        self._queue.arm((c, _CallTimer.CANCEL_WAIT), now + self.timers.timeout)

    def _response(
        self,
        request: SipRequest,
        status: int,
        reason: str | None = None,
        *,
        to_tag: str | None = None,
        dialog: bool = False,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> SipResponse:
        """A response with our Server header; ``dialog`` adds Contact and Record-Route."""
        response = build_response(request, status, reason, to_tag=to_tag if status > 100 else None)
        if dialog:
            for record_route in request.headers.get_all("Record-Route"):
                response.headers.add("Record-Route", record_route)
            response.headers.add("Contact", self._contact)
            if status < 300:
                response.headers.add("Allow", ", ".join(self.allow))
                if self.supported:
                    response.headers.add("Supported", ", ".join(self.supported))
        response.headers.add("Server", self.user_agent)
        for name, value in headers:
            response.headers.add(name, value)
        response.body = body
        return response

    def _refuse(self, error: SipRemoteError, source: Address) -> None:
        """Answer a refused message statelessly if it can be, else drop it; count it."""
        request = error.request
        answered = False
        if request is not None and request.method != "ACK":
            try:
                self._stamp_via(request, source)
                destination = self._response_destination(request.top_via)
                try:
                    request.cseq  # noqa: B018 - the sender matches our answer by it
                except SipRemoteError:
                    if request.method not in IMPLEMENTED_METHODS:
                        raise
                    # No readable CSeq: still say why (RFC 3261 §8.2.2 asks for a 400).
                    # The sender's transaction matches on the Via branch and the
                    # method, which the request line gives; the number is unknown.
                    request.headers.set("CSeq", f"0 {request.method}")
                to_tag = None if request.headers.get("To") is None else self._token()
                response = self._response(
                    request, error.code, error.reason, to_tag=to_tag, headers=error.headers
                )
                self._outbox.append((bytes(response), destination))
                answered = True
            except SipRemoteError:
                pass
        if answered:
            self.counters.errors_answered += 1
        else:
            self.counters.dropped += 1
        self._events.append(RemoteError(error.code, error.reason, source, answered))

    def _stamp_via(self, request: SipRequest, source: Address) -> None:
        """Add ``received``/``rport`` to the top Via (RFC 3261 §18.2.1, RFC 3581)."""
        first = request.headers.get("Via")
        if first is None:
            return
        elements = split_header_list(first)
        if not elements:
            return
        top = Via.parse(elements[0])
        host, port = source
        if top.wants_rport and top.rport is None:
            top = top.with_params(received=host, rport=str(port))
        elif not _same_host(top.address, host):
            top = top.with_params(received=host)
        else:
            return
        elements[0] = str(top)
        request.headers.replace_first("Via", ", ".join(elements))

    @staticmethod
    def _response_destination(via: Via) -> Address:
        """Where responses go (RFC 3261 §18.2.2, RFC 3581 §4)."""
        host = via.received or via.address
        if via.rport is not None:
            return (host, via.rport)
        return (host, via.port if via.port is not None else 5060)

    def _new_server_tx(self, request: SipRequest, key: Hashable) -> Transaction:
        machine = INVITE_SERVER if request.method == "INVITE" else NON_INVITE_SERVER
        tx = Transaction(
            machine,
            request,
            self._response_destination(request.top_via),
            settings=self.timers,
            queue=self._queue,
            outbox=self._outbox,
        )
        self._server_txs[key] = tx
        self._tx_keys[tx] = (key, None)
        return tx

    def _new_client_tx(
        self, machine: TxMachine, request: SipRequest, destination: Address
    ) -> Transaction:
        tx = Transaction(
            machine,
            request,
            destination,
            settings=self.timers,
            queue=self._queue,
            outbox=self._outbox,
        )
        key = client_key(request)
        self._client_txs[key] = tx
        self._tx_keys[tx] = (key, None)
        return tx

    def _fire(
        self,
        tx: Transaction,
        event: TxInput,
        now: float,
        message: SipRequest | SipResponse | None = None,
    ) -> Do | None:
        signal = tx.fire(event, now, message)
        if tx.terminated:
            self._forget(tx)
        return signal

    def _forget(self, tx: Transaction) -> None:
        keys = self._tx_keys.pop(tx, None)
        if keys is not None:
            key, merge_key = keys
            table = self._server_txs if tx.is_server else self._client_txs
            if table.get(key) is tx:
                del table[key]
            if merge_key is not None and self._merge_index.get(merge_key) is tx:
                del self._merge_index[merge_key]
        self._tx_calls.pop(tx, None)
        self._tx_tags.pop(tx, None)

    def _report(self, c: _Call, event: SipEvent) -> None:
        if not c.reported:
            c.reported = True
            self._events.append(event)

    def _end(self, c: _Call, event: SipEvent) -> None:
        """Emit the terminal event (once) and drop the call from every index."""
        self._report(c, event)
        c.state = CallState.ENDED
        for timer in _CallTimer:
            self._queue.disarm((c, timer))
        if c.index_key is not None and self._calls.get(c.index_key) is c:
            del self._calls[c.index_key]
        self._handles.pop(c.handle, None)

    def _app_call(self, handle: CallHandle) -> _Call | None:
        c = self._handles.get(handle)
        if c is None:
            if isinstance(handle, CallHandle) and handle.serial < self._next_serial:
                return None  # already ended: a late call from the application is harmless
            raise SipLocalError(f"unknown call {handle!r}")
        # Ending (our BYE is out) counts as over: the app may race its own hangup.
        return None if c.state in (CallState.ENDING, CallState.ENDED) else c

    def _tx_tag(self, tx: Transaction) -> str:
        tag = self._tx_tags.get(tx)
        if tag is None:
            tag = self._tx_tags[tx] = self._token()
        return tag

    def _allow_header(self) -> tuple[str, str]:
        return ("Allow", ", ".join(self.allow))

    def _via(self) -> str:
        host = format_host(self.local_host)
        return f"SIP/2.0/UDP {host}:{self.local_port};branch={MAGIC_COOKIE}{self._token()};rport"

    def _token(self, nbytes: int = 8) -> str:
        return f"{self._rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"

    def _time(self, now: float | None) -> float:
        return self._now if now is None else self._advance(now)

    def _advance(self, now: float) -> float:
        if now > self._now:
            self._now = now
        return self._now
