"""``mediaserver serve``: the SIP front door and the process that runs calls.

Owns the asyncio side of SIP: one UDP socket pumping datagrams into the
sans-I/O ``SipEndpoint`` and its datagrams and timers back out (as a worker
of ``serve --workers N``: two sockets, see ``SipServer``); the
allowed-source list (a request from outside ``[sip] allowed_sources`` is
answered 403 here, statelessly, before the endpoint sees it); turning SIP
events into calls (limits, SDP offer/answer, 488/503/500 refusals); the
RTP-timeout watchdog; and the process lifetime: engine clock, the admin
endpoint (``mediaserver.admin``), signals, and the graceful drain on
SIGTERM/SIGINT (503 to new INVITEs, BYE to every call, its forks closed with
1000 and its actionHooks posted, within ``[calls] drain_seconds``).

It must not parse SIP or SDP by hand beyond what a stateless 403 needs, nor
touch media samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import ipaddress
import signal
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import structlog

from mediaserver.admin import AdminEndpoint
from mediaserver.app import AppError, Application
from mediaserver.call import Call, call_attributes
from mediaserver.config import ServerConfig
from mediaserver.engine import EngineClock, MediaEngine
from mediaserver.hooks import hook_observer
from mediaserver.logs import get_logger
from mediaserver.metrics import ServerMetrics
from mediaserver.record import RecordingService
from mediaserver.rtp_socket import PortPool, PortsExhausted
from mediaserver.workers import WorkerLink
from rtp.sdp import (
    Answer,
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    negotiate,
)
from rtp.sip.address import split_header_list
from rtp.sip.endpoint import SipEndpoint
from rtp.sip.errors import SipRemoteError
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
from rtp.sip.message import SipRequest, build_response, parse_message

__all__ = ["SipServer", "run_server"]

_SOURCE_CACHE = 4096  # allowed/forbidden verdicts remembered per source address
# How long the arrival socket of an INVITE is remembered for its timer-driven responses
# (2xx and error retransmissions, 408): the endpoint's answer timeout (180 s) + 64*T1 + slack.
_INVITE_MEMORY = 240.0


class SipServer(asyncio.DatagramProtocol):
    """SIP over UDP for ``serve``: every call's signalling goes through here.

    With ``shared_port`` (a worker of ``serve --workers N``) it binds the
    public ``[sip] host:port`` with ``SO_REUSEPORT`` (the kernel hands each
    worker the datagrams of some source addresses) and a private port of its
    own on the same host, which the endpoint advertises in Contact and Via:
    in-dialog requests and responses to our requests come straight back to
    this worker. Requests we send leave from the private socket; a response
    leaves from the socket its request arrived on (RFC 3581 §4), so a caller
    behind NAT sees it come from the address it sent to.
    """

    def __init__(
        self,
        config: ServerConfig,
        engine: MediaEngine,
        clock: EngineClock,
        *,
        shared_port: bool = False,
    ) -> None:
        self.config = config
        self.shared_port = shared_port
        self.engine = engine
        self.clock = clock
        self.ports = PortPool(config.rtp_address, config.rtp_port_low, config.rtp_port_high)
        self.app = Application(config.app, timeout=config.app_timeout)
        self.log = get_logger("sip")
        self.calls: dict[CallHandle, Call] = {}
        self.calls_total: dict[str, int] = {}
        self.accepting = True
        self.endpoint: SipEndpoint | None = None
        self.metrics = ServerMetrics(self)
        self.admin_url: str | None = None  # set by run_server when the admin endpoint is up
        # record_call: the [recording] store; uploads outlive their calls
        self.recordings = RecordingService(
            config.recording,
            admin_url=lambda: config.public_admin_url or self.admin_url,
            log=get_logger("recording"),
        )
        self._resume: asyncio.Task[Any] | None = None
        self.forbidden = 0  # messages from outside allowed_sources (403 or dropped)
        self._allowed = config.allowed_networks
        self._verdicts: dict[str, bool] = {}
        self._call_tasks: set[asyncio.Task[None]] = set()
        self._transport: asyncio.DatagramTransport | None = None  # the [sip] port
        # shared_port only: the private socket and what was received on the public one
        self.private_port: int | None = None
        self._private: asyncio.DatagramTransport | None = None
        self._arrival: asyncio.DatagramTransport | None = None  # of the datagram in hand
        self._invite_sockets: dict[CallHandle, asyncio.DatagramTransport] = {}
        self._public_invites: dict[tuple[str, int, str], float] = {}  # (Call-ID, CSeq) -> time
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # UAC: outgoing calls placed by place_call (the dial verb builds on this)
        self._outgoing: dict[CallHandle, asyncio.Future[SipEvent]] = {}
        self._outgoing_ended: dict[CallHandle, asyncio.Future[CallEnded]] = {}
        self._outgoing_sdp: dict[CallHandle, bytes] = {}  # our offer, for callee re-INVITEs

    # -- lifetime -----------------------------------------------------------------

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        host, port = self.config.sip_host, self.config.sip_port
        advertised = port
        if self.shared_port:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _PrivateSipSocket(self), local_addr=(host, 0)
            )
            self._private = transport
            advertised = self.private_port = int(transport.get_extra_info("sockname")[1])
        self.endpoint = SipEndpoint(
            host, advertised, now=loop.time(), user_agent=self.config.user_agent
        )
        try:
            await loop.create_datagram_endpoint(
                lambda: self, local_addr=(host, port), reuse_port=self.shared_port or None
            )
        except OSError:
            if self._private is not None:
                self._private.close()
            raise
        self._watchdog = loop.create_task(self._rtp_watchdog())
        if self.recordings.store.spool_path.is_dir():  # uploads a previous run left unsent
            self._resume = self.recordings.track(self.recordings.resume())
        self.log.info(
            "serve.worker_listening" if self.shared_port else "serve.listening",
            sip=f"{host}:{port}",
            sip_private=self.private_port,
            rtp_ports=f"{self.config.rtp_port_low}-{self.config.rtp_port_high}",
            app=self.config.app or None,
            max_calls=self.config.max_calls,
            allowed_sources=list(self.config.allowed_sources) or "all",
            admin=self.admin_url,
        )

    async def stop(
        self, drain: float | None = None, *, interrupt: asyncio.Event | None = None
    ) -> None:
        """Drain, then close: refuse new calls and end the live ones cleanly.

        New INVITEs get 503 (and ``/health`` says draining). Each live call is
        ended with reason ``shutdown``: answered calls get a BYE, unanswered
        ones a 503; cancelling its task closes its listen forks with 1000 and
        posts their actionHooks. Waits for every call task (also of calls that
        ended just before) and for the BYEs to be answered, at most ``drain``
        seconds (default ``[calls] drain_seconds``) or until ``interrupt`` is
        set; whatever is left then is cancelled (1 s more at most).
        """
        loop = asyncio.get_running_loop()
        drain = self.config.drain_seconds if drain is None else drain
        started = loop.time()
        self.accepting = False
        calls = list(self.calls.values())
        self.log.info("serve.draining", calls=len(calls), drain_seconds=drain)
        for call in calls:
            if call.end_reason is not None:  # ending already: its task is awaited below
                continue
            answered = call.answered_at is not None
            call.end("shutdown")  # first: reject() reports the end synchronously
            if answered:
                self.hangup(call)
            else:
                self.reject(call, 503, "Service Unavailable")
        while not self._drained() and loop.time() - started < drain:
            if interrupt is not None and interrupt.is_set():
                break
            await asyncio.sleep(0.02)
        left = [task for task in self._call_tasks if not task.done()]
        sip_calls = self.endpoint.call_count if self.endpoint is not None else 0
        if left or sip_calls:
            self.log.warning(
                "serve.drain_incomplete",
                call_tasks=len(left),
                sip_calls=sip_calls,
                seconds=round(loop.time() - started, 3),
                interrupted=interrupt is not None and interrupt.is_set(),
            )
            for task in left:
                task.cancel()
            if left:
                await asyncio.wait(left, timeout=1.0)
        else:
            self.log.info("serve.drained", seconds=round(loop.time() - started, 3))
        if self.recordings.deliveries:  # uploads get what is left of the drain time
            left_s = max(0.5, drain - (loop.time() - started))
            pending = len(self.recordings.deliveries)
            await self.recordings.drain(left_s)
            self.log.info("serve.recordings_drained", deliveries=pending, seconds=round(left_s, 1))
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
        if self._private is not None:
            self._private.close()

    def _drained(self) -> bool:
        """No call task left and no SIP call left (every BYE answered or given up)."""
        if any(not task.done() for task in self._call_tasks):
            return False
        return self.endpoint is None or self.endpoint.call_count == 0

    # -- datagram plumbing ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self._transport is not None
        self.receive(data, addr, self._transport)

    def receive(
        self, data: bytes, addr: tuple[str | int, ...], socket: asyncio.DatagramTransport
    ) -> None:
        """A datagram from ``addr`` on ``socket`` (the public one, or a worker's private one)."""
        if self.endpoint is None or self._loop is None:
            return  # a worker's private port, before start() finished: nobody knows it yet
        source = (str(addr[0]), int(addr[1]))
        if (
            self._allowed
            and not self._source_allowed(source[0])
            and not self._admit(data, source, socket)
        ):
            return
        if (
            not self.accepting
            and data.startswith(b"OPTIONS ")
            and self._draining_options(data, source, socket)
        ):
            return
        self._arrival = socket
        try:
            self.endpoint.receive_datagram(data, source, self._loop.time())
            self._pump(socket)
        finally:
            self._arrival = None

    # -- allowed sources ---------------------------------------------------------------

    def _source_allowed(self, host: str) -> bool:
        verdict = self._verdicts.get(host)
        if verdict is None:
            try:
                ip = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                verdict = False
            else:
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                verdict = any(ip in net for net in self._allowed)
            if not verdict:
                self.log.warning("sip.forbidden_source", source=host)
            if len(self._verdicts) >= _SOURCE_CACHE:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict

    def _admit(
        self, data: bytes, source: tuple[str, int], socket: asyncio.DatagramTransport
    ) -> bool:
        """A datagram from a source outside ``allowed_sources``: let it through?

        Responses, and requests inside a dialog (To tag), go to the endpoint:
        they only match transactions and calls we already have (the callee
        of a dial may be outside the list). Any other request is answered
        403 Forbidden, statelessly (RFC 3261 §8.2.7: the To tag is derived
        from the request, so a retransmission gets the same answer); ACKs and
        unparseable datagrams are dropped.
        """
        assert self.endpoint is not None
        try:
            message = parse_message(data, limits=self.endpoint.limits)
            if not isinstance(message, SipRequest) or message.to_addr.tag is not None:
                return True
            self.forbidden += 1
            if message.method == "ACK":
                return False
            response, destination = self._stateless_response(message, source, 403, "Forbidden")
        except SipRemoteError:
            self.forbidden += 1
            return False
        self.log.debug("sip.forbidden", source=f"{source[0]}:{source[1]}", method=message.method)
        if message.method == "INVITE":
            self._count("rejected-403")
        socket.sendto(response, destination)
        return False

    def _draining_options(
        self, data: bytes, source: tuple[str, int], socket: asyncio.DatagramTransport
    ) -> bool:
        """While draining, OPTIONS probes (a load balancer's) get 503: take us out now.

        True when answered here; anything unparseable goes on to the endpoint.
        """
        assert self.endpoint is not None
        try:
            message = parse_message(data, limits=self.endpoint.limits)
            if not isinstance(message, SipRequest) or message.to_addr.tag is not None:
                return False
            response, destination = self._stateless_response(
                message, source, 503, "Service Unavailable", retry_after=5
            )
        except SipRemoteError:
            return False
        socket.sendto(response, destination)
        return True

    def _stateless_response(
        self,
        request: SipRequest,
        source: tuple[str, int],
        status: int,
        reason: str,
        *,
        retry_after: int | None = None,
    ) -> tuple[bytes, tuple[str, int]]:
        """A final response to ``request`` without a transaction, and where to send it
        (RFC 3261 §18.2.2, RFC 3581); a retransmission gets the same To tag."""
        via = request.top_via
        host, port = source
        if via.wants_rport:
            via, destination = via.with_params(received=host, rport=str(port)), source
        else:
            via = via.with_params(received=host)
            destination = (host, via.port if via.port is not None else 5060)
        vias = split_header_list(request.headers.get("Via") or "")
        request.headers.replace_first("Via", ", ".join([str(via), *vias[1:]]))
        seed = f"{request.call_id} {via.branch} {request.from_addr.tag}".encode()
        tag = hashlib.blake2s(seed, digest_size=8).hexdigest()
        response = build_response(request, status, reason, to_tag=tag)
        response.headers.add("Server", self.config.user_agent)
        if retry_after is not None:
            response.headers.add("Retry-After", str(retry_after))
        return bytes(response), destination

    def error_received(self, exc: Exception) -> None:
        self.log.debug("sip.socket_error", error=str(exc))

    def _pump(self, responses: asyncio.DatagramTransport | None = None) -> None:
        """Send what the endpoint queued, handle its events, re-arm its timer.

        ``responses``: the socket the responses now queued answer requests
        from (the datagram in hand's, or the inbound call's INVITE's); None
        when not known (a timer fired). Only a worker has more than one.
        """
        endpoint, loop = self.endpoint, self._loop
        assert endpoint is not None and loop is not None
        while True:
            event = endpoint.next_event()
            if event is None:
                break
            try:
                self._on_event(event)
            except Exception:  # one bad call must not stop the server
                self.log.exception("sip.event_failed", event=type(event).__name__)
        if self._private is not None:
            for data, addr in endpoint.datagrams_to_send(loop.time()):
                self._send(data, addr, responses)
        elif self._transport is not None:
            for data, addr in endpoint.datagrams_to_send(loop.time()):
                self._transport.sendto(data, addr)
        deadline = endpoint.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = loop.call_at(deadline, self._on_timer)

    def _send(
        self, data: bytes, addr: tuple[str, int], responses: asyncio.DatagramTransport | None
    ) -> None:
        """A worker's datagram out: requests from the private socket (their Via names
        it), responses from the socket their request arrived on."""
        assert self._private is not None
        socket = self._private
        if data.startswith(b"SIP/2.0 "):
            socket = responses if responses is not None else self._response_socket(data)
        socket.sendto(data, addr)

    def _response_socket(self, data: bytes) -> asyncio.DatagramTransport:
        """Which socket a timer-driven response leaves from.

        Only INVITE responses are sent on timers (2xx and error
        retransmissions, 408); the public socket if their INVITE came in there.
        """
        assert self._private is not None and self.endpoint is not None
        if self._public_invites and self._transport is not None:
            try:
                message = parse_message(data, limits=self.endpoint.limits)
                cseq = message.cseq
                key = (message.call_id, cseq.number, cseq.method)
            except SipRemoteError:
                return self._private
            if key in self._public_invites:
                return self._transport
        return self._private

    def _remember_invite(self, request: SipRequest) -> None:
        """A worker: note an INVITE that came in on the public socket, so the
        responses sent later (answer, reject, retransmissions) leave from it too."""
        if self._arrival is None or self._arrival is self._private or self._loop is None:
            return
        now = self._loop.time()
        invites = self._public_invites
        while invites:  # oldest first: forget what no timer can still answer
            oldest = next(iter(invites))
            if now - invites[oldest] < _INVITE_MEMORY:
                break
            del invites[oldest]
        cseq = request.cseq
        invites[(request.call_id, cseq.number, cseq.method)] = now

    def _call_socket(self, call: Call) -> asyncio.DatagramTransport | None:
        """Where responses to ``call``'s INVITE leave from (None: one socket only)."""
        if self._private is None or call.handle is None:
            return None
        return self._invite_sockets.get(call.handle, self._private)

    def _on_timer(self) -> None:
        assert self.endpoint is not None and self._loop is not None
        self._timer = None
        self.endpoint.handle_timer(self._loop.time())
        self._pump()

    # -- UAC ------------------------------------------------------------------------

    async def place_call(
        self,
        target_uri: str,
        *,
        from_uri: str,
        sdp: bytes,
        timeout: float = 30.0,
        headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[CallHandle, OutgoingCallAnswered | OutgoingCallFailed]:
        """INVITE ``target_uri`` (with extra ``headers``); return when answered or failed."""
        assert self.endpoint is not None and self._loop is not None
        handle = self.endpoint.invite(
            target_uri, from_uri=from_uri, sdp=sdp, timeout=timeout, headers=headers
        )
        answered: asyncio.Future[SipEvent] = self._loop.create_future()
        self._outgoing[handle] = answered
        self._outgoing_sdp[handle] = sdp
        self._outgoing_ended[handle] = self._loop.create_future()
        self._pump()
        try:
            outcome = await answered
        except asyncio.CancelledError:
            # Whoever waited is gone (the caller hung up while this rang): CANCEL it.
            ended = self._outgoing_ended.get(handle)
            if ended is not None:
                ended.add_done_callback(lambda _: self._outgoing_ended.pop(handle, None))
            self.endpoint.hangup(handle)
            self._pump()
            raise
        assert isinstance(outcome, OutgoingCallAnswered | OutgoingCallFailed)
        if isinstance(outcome, OutgoingCallFailed):
            self._outgoing_ended.pop(handle, None)  # over already: nobody will wait for it
        return handle, outcome

    def outgoing_ended(self, handle: CallHandle) -> asyncio.Future[CallEnded]:
        """Resolves when the answered outgoing call ``handle`` ends, whichever side ends it.

        Call this or ``end_outgoing`` once per answered call: the end is kept until then.
        """
        ended = self._outgoing_ended[handle]
        ended.add_done_callback(lambda _: self._outgoing_ended.pop(handle, None))
        return asyncio.shield(ended)

    async def end_outgoing(self, handle: CallHandle, timeout: float = 10.0) -> CallEnded:
        """Hang up an outgoing call (BYE, or CANCEL before answer); wait for the end."""
        assert self.endpoint is not None
        ended = self.outgoing_ended(handle)
        if not ended.done():
            self.endpoint.hangup(handle)
            self._pump()
        return await asyncio.wait_for(ended, timeout)

    def _outgoing_event(self, handle: CallHandle, event: SipEvent) -> None:
        answered = self._outgoing.get(handle)
        if isinstance(event, OutgoingCallProgress):
            self.log.info("uac.progress", call_id=handle.call_id, status=event.status)
            return
        if isinstance(event, OutgoingCallAnswered | OutgoingCallFailed):
            if isinstance(event, OutgoingCallFailed):
                self._finish_outgoing(handle, CallEnded(handle, "remote", event.reason))
            if answered is not None and not answered.done():
                answered.set_result(event)
            return
        if isinstance(event, CallReinvited):
            # The callee refreshes or re-offers the session (session timers, a PBX's
            # hold music): keep the media as negotiated and answer with our offer.
            assert self.endpoint is not None
            sdp = self._outgoing_sdp.get(handle)
            if sdp is None:
                self.endpoint.reject(handle, 488)
            else:
                self.endpoint.answer(handle, sdp)
            self.log.info("uac.reinvite", call_id=handle.call_id, answered=sdp is not None)
            return
        if isinstance(event, CallEnded):
            self._finish_outgoing(handle, event)

    def _finish_outgoing(self, handle: CallHandle, event: CallEnded) -> None:
        self._outgoing.pop(handle, None)
        self._outgoing_sdp.pop(handle, None)
        ended = self._outgoing_ended.get(handle)  # kept until outgoing_ended() collects it
        if ended is not None and not ended.done():
            ended.set_result(event)

    # -- CallSignalling ------------------------------------------------------------

    def answer(self, call: Call, sdp: bytes) -> None:
        assert self.endpoint is not None and call.handle is not None
        self.endpoint.answer(call.handle, sdp)
        self._pump(self._call_socket(call))

    def reject(self, call: Call, status: int, reason: str | None = None) -> None:
        assert self.endpoint is not None and call.handle is not None
        with contextlib.suppress(Exception):  # already answered or gone: nothing to refuse
            self.endpoint.reject(call.handle, status, reason)
        self._pump(self._call_socket(call))

    def hangup(self, call: Call) -> None:
        assert self.endpoint is not None and call.handle is not None
        self.endpoint.hangup(call.handle)
        self._pump(self._call_socket(call))

    # -- SIP events ----------------------------------------------------------------

    def _count(self, result: str) -> None:
        self.calls_total[result] = self.calls_total.get(result, 0) + 1

    def _forget(self, handle: CallHandle) -> Call | None:
        """Take the call off the live list (once); its totals go to the metrics."""
        call = self.calls.pop(handle, None)
        self._invite_sockets.pop(handle, None)
        if call is not None:
            self.metrics.call_forgotten(call)
        return call

    def _on_event(self, event: SipEvent) -> None:
        if self._private is not None and isinstance(event, IncomingCall | CallReinvited):
            self._remember_invite(event.request)
        handle = getattr(event, "call", None)
        if isinstance(handle, CallHandle) and handle.direction == "outbound":
            self._outgoing_event(handle, event)
            return
        if isinstance(event, IncomingCall):
            self._incoming(event)
        elif isinstance(event, CallReinvited):
            self._reinvite(event)
        elif isinstance(event, CallCancelled):
            call = self._forget(event.call)
            if call is not None:
                call.end("cancel")
                self._count(call.end_reason or "cancel")
        elif isinstance(event, CallEnded):
            call = self._forget(event.call)
            if call is not None:
                call.end("hangup" if event.by == "remote" else call.end_reason or event.reason)
                self._count(call.end_reason or "hangup")
        elif isinstance(event, CallAcked):
            pass
        elif isinstance(event, RemoteError):
            self.log.info(
                "sip.refused",
                code=event.code,
                reason=event.reason,
                source=f"{event.addr[0]}:{event.addr[1]}",
                answered=event.answered,
            )

    def _negotiate(self, body: bytes, port: int, previous: SessionDescription | None) -> Answer:
        offer = SessionDescription.parse(body)
        return negotiate(
            offer,
            local_address=self.config.rtp_address,
            local_port=port,
            preference=tuple(self.config.codecs),
            ptime=self.config.ptime,
            previous=previous,
        )

    def _incoming(self, event: IncomingCall) -> None:
        assert self.endpoint is not None
        handle = event.call
        log = self.log.bind(call_id=handle.call_id, source=f"{event.addr[0]}:{event.addr[1]}")
        if not self.accepting or len(self.calls) >= self.config.max_calls:
            log.warning("call.refused", status=503, active=len(self.calls))
            self.endpoint.reject(handle, 503, headers=[("Retry-After", "5")])
            self._count("rejected-503")
            return
        if (event.request.content_type or "").lower() != "application/sdp":
            log.warning("call.refused", status=488, why="no SDP offer (late offer unsupported)")
            self.endpoint.reject(handle, 488)
            self._count("rejected-488")
            return
        try:
            trial = self._negotiate(event.request.body, 9, None)  # validate before binding
        except SdpNegotiationError as exc:
            log.warning("call.refused", status=488, why=str(exc))
            self.endpoint.reject(handle, 488)
            self._count("rejected-488")
            return
        except SdpError as exc:
            log.warning("call.refused", status=400, why=str(exc))
            self.endpoint.reject(handle, 400, "Bad SDP")
            self._count("rejected-400")
            return
        attributes = call_attributes(
            event.request,
            event.addr,
            call_sid=str(uuid.uuid4()),
            account_sid=self.config.account_sid,
            application_sid=self.config.application_sid,
        )
        call = Call(
            handle=handle,
            attributes=attributes,
            media=trial.media,
            engine=self.engine,
            clock=self.clock,
            ports=self.ports,
            app=self.app,
            signalling=self,
            inband_dtmf=self.config.inband_dtmf,
            jitter_target=self.config.jitter_target,
            dump_dir=Path(self.config.dump_dir) if self.config.dump_dir else None,
            listen_buffer=self.config.listen_buffer,
            verify_tls=self.config.tls_verify,
            recordings=self.recordings,
        )
        self.calls[handle] = call
        public = self._transport
        if self._private is not None and public is not None and self._arrival is public:
            self._invite_sockets[handle] = public  # a worker: answer from the public port
        assert self._loop is not None
        context = contextvars.copy_context()  # this server's metrics hear the call's hooks
        context.run(hook_observer.set, self.metrics.observe_hook)
        call.task = self._loop.create_task(
            self._start_call(call, event.request.body), context=context
        )
        self._call_tasks.add(call.task)
        call.task.add_done_callback(self._call_tasks.discard)

    async def _start_call(self, call: Call, offer: bytes) -> None:
        try:
            port = await call.open_media()
        except (PortsExhausted, RuntimeError) as exc:
            call.log.warning("call.refused", status=503, why=str(exc))
            call.end("rejected-503")  # first: reject() reports the end synchronously
            self.reject(call, 503, "No Media Ports")
            return
        answer = self._negotiate(offer, port, None)
        call.answer_sdp = answer.sdp
        try:
            await call.run(bytes(answer.sdp))
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one call must be visible and must not leak the call
            call.log.exception("call.failed")
            if call.end_reason is None:
                self.hangup(call)
                call.end("error")
        finally:
            if call.end_reason is not None and call.handle is not None:
                self._forget(call.handle)

    def _reinvite(self, event: CallReinvited) -> None:
        assert self.endpoint is not None
        call = self.calls.get(event.call)
        if call is None or call.rtp is None or call.answer_sdp is None:
            self.endpoint.reject(event.call, 481)
            return
        try:
            answer = self._negotiate(event.request.body, call.rtp.port, call.answer_sdp)
        except SdpError as exc:
            call.log.warning("call.reinvite_refused", status=488, why=str(exc))
            self.endpoint.reject(event.call, 488)
            return
        call.answer_sdp = answer.sdp
        self.endpoint.answer(event.call, bytes(answer.sdp))
        call.renegotiate(answer.media)

    async def _rtp_watchdog(self) -> None:
        """Hang up calls that received no RTP for ``rtp_timeout`` seconds."""
        timeout = self.config.rtp_timeout
        while timeout > 0:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = self.clock.now()
            for call in list(self.calls.values()):
                if call.leg is None or call.answered_at is None:
                    continue
                if call.media is not None and call.media.on_hold:
                    continue
                last = call.leg.last_packet_at
                since = now - (last if last is not None else call.answered_at)
                if since >= timeout:
                    call.log.warning("call.rtp_timeout", seconds=round(since, 1))
                    self.hangup(call)
                    call.end("rtp-timeout")


class _PrivateSipSocket(asyncio.DatagramProtocol):
    """A worker's private SIP port: what arrives goes to the same ``SipServer``."""

    def __init__(self, server: SipServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self.server.receive(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        self.server.error_received(exc)


async def run_server(
    config: ServerConfig,
    *,
    ready: asyncio.Event | None = None,
    worker: WorkerLink | None = None,
) -> int:
    """Run ``serve`` until SIGINT/SIGTERM, drain, and return the exit status.

    The first signal starts the drain (``SipServer.stop``); a second one
    cuts it short. The admin endpoint stays up during the drain, so
    ``/health`` answers 503 until the process exits.

    As a ``worker`` of ``serve --workers N``: the SIP port is shared
    (``SipServer`` ``shared_port``), every log line carries ``worker``, the
    supervisor is told the private SIP port and admin URL once listening,
    and its ``drain``/``interrupt`` orders (or its disappearance) act like
    the first/second signal.
    """
    if worker is not None:
        structlog.contextvars.bind_contextvars(worker=worker.index)
    log = get_logger("serve")
    engine = MediaEngine(capacity=max(2, config.max_calls * 2))
    clock = EngineClock(engine)
    try:
        server = SipServer(config, engine, clock, shared_port=worker is not None)
    except AppError as exc:
        log.error("serve.bad_app", error=str(exc))
        return 2
    engine.warm_up()  # after the app check: a bad app is reported without the 1-2 s wait
    stop, interrupt = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        # Signals are counted, not inferred from stop: a worker's drain may have been
        # ordered by its supervisor, and the same signal reaching the worker directly
        # too (Ctrl-C, a whole process group or cgroup signalled) is not a second one.
        nonlocal signals
        signals += 1
        log.info("serve.signal", signal=sig.name, draining=stop.is_set())
        (interrupt if signals > 1 else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    clock.start()
    admin = await _start_admin(server, worker is not None) if config.admin_enabled else None
    try:
        await server.start()
    except OSError as exc:
        log.error("serve.bind_failed", sip=f"{config.sip_host}:{config.sip_port}", error=str(exc))
        clock.stop()
        if admin is not None:
            await admin.stop()
        return 2
    orders: asyncio.Task[None] | None = None
    if worker is not None:
        await worker.report_ready(
            sip_port=server.private_port, admin=admin.url if admin is not None else None
        )
        orders = loop.create_task(worker.follow(stop, interrupt))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await server.stop(interrupt=interrupt)
        if admin is not None:
            await admin.stop()
        clock.stop()
        if orders is not None:
            orders.cancel()
        await asyncio.sleep(0)  # let cancelled call tasks finish
        log.info(
            "serve.stopped",
            calls=server.calls_total,
            live_calls=len(server.calls),
            rtp_ports_in_use=len(server.ports.in_use),
            engine_legs=len(engine.legs),
            tasks=len(asyncio.all_tasks()) - 1,
            ticks=clock.stats.ticks,
            overruns=clock.stats.overruns,
            max_tick_ms=round(clock.stats.max_tick_ms, 3),
        )
    return 0


async def _start_admin(server: SipServer, private: bool = False) -> AdminEndpoint | None:
    """The admin endpoint, or ``None`` (logged) when its address cannot be bound:
    calls matter more than metrics, so ``serve`` runs on without it. A worker's
    is ``private``: only its supervisor asks it (and logs the public one)."""
    config = server.config
    admin = AdminEndpoint(server, config.admin_host, config.admin_port)
    log = get_logger("admin")
    try:
        await admin.start()
    except OSError as exc:
        log.error(
            "admin.bind_failed", admin=f"{config.admin_host}:{config.admin_port}", error=str(exc)
        )
        return None
    server.admin_url = admin.url
    event = "admin.worker_listening" if private else "admin.listening"
    log.info(event, url=admin.url, host=admin.host, port=admin.port)
    return admin
