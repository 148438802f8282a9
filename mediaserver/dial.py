"""The ``dial`` verb: call a SIP target, bridge it to the caller, fork with ``listen``.

Owns one run of ``dial``: validating its options, placing the outgoing call
(UAC) through the server's SIP endpoint with an SDP offer from our codec
list, opening the B leg's RTP socket and engine leg for the negotiated
codec, bridging the two legs (each hears what the other says, resampled
when their rates differ: transcoding), starting a nested ``listen`` when
the B leg answers (on the A leg by default: left = caller, right = callee;
``"channel": 2`` forks the B leg's view instead), and ending both legs when
either hangs up. The result (``dial_call_status``, ``dial_sip_status``,
``dial_call_duration``, ``dial_call_sid``) goes to the dial's actionHook.

It must not speak SIP or SDP by hand: the server (``DialSignalling``) places
and ends the call, ``rtp.sdp`` builds the offer and reads the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mediaserver.engine import EngineClock, Leg, LegBridge, MediaEngine

if TYPE_CHECKING:
    from mediaserver.config import ServerConfig
from mediaserver.listen_options import Hook, ListenError, ListenOptions, parse_hook, parse_listen
from mediaserver.rtp_socket import PortPool, PortsExhausted, RtpSocket
from rtp.sdp import SdpError, SessionDescription, build_offer, process_answer
from rtp.sip.events import CallEnded, CallHandle, OutgoingCallAnswered, OutgoingCallFailed

__all__ = ["DialError", "DialOptions", "DialResult", "DialSignalling", "parse_dial"]

OFFER_CODECS = ("PCMU/8000", "PCMA/8000", "G722/8000", "opus/48000/2", "L16/16000")


class DialError(ValueError):
    """A bad ``dial`` option; the message names the field."""


@runtime_checkable
class DialSignalling(Protocol):
    """What dial needs of the server: its config and the UAC."""

    config: ServerConfig

    async def place_call(
        self,
        target_uri: str,
        *,
        from_uri: str,
        sdp: bytes,
        timeout: float = 30.0,
        headers: Sequence[tuple[str, str]] = (),
    ) -> tuple[CallHandle, OutgoingCallAnswered | OutgoingCallFailed]: ...

    async def end_outgoing(self, handle: CallHandle, timeout: float = 10.0) -> CallEnded: ...

    def outgoing_ended(self, handle: CallHandle) -> asyncio.Future[CallEnded]: ...


@dataclass(frozen=True)
class DialOptions:
    targets: tuple[str, ...]  # SIP URIs, tried in order
    caller_id: str | None = None
    timeout: float = 60.0
    answer_on_bridge: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    action_hook: Hook | None = None
    listen: ListenOptions | None = None
    listen_channel: int = 1  # 1: the A leg's view, 2: the B leg's


@dataclass
class DialResult:
    status: str  # completed, busy, no-answer, failed, canceled
    sip_status: int | None = None
    duration: float = 0.0  # seconds the legs were bridged
    call_sid: str | None = None  # the B leg's call SID
    ended_by: str | None = None  # "caller" | "callee" when completed

    def hook_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dial_call_status": self.status,
            "dial_call_duration": int(self.duration),
        }
        if self.sip_status is not None:
            out["dial_sip_status"] = self.sip_status
        if self.call_sid is not None:
            out["dial_call_sid"] = self.call_sid
        return out


def parse_dial(data: dict[str, Any], app_url: str | None = None) -> DialOptions:
    known = {"target", "callerId", "timeout", "answerOnBridge", "headers", "actionHook",
             "listen", "dialMusic", "timeLimit"}  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise DialError(f"{unknown[0]}: unknown option; dial accepts {', '.join(sorted(known))}")
    targets = data.get("target")
    if isinstance(targets, dict):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        raise DialError('target: required, a list of {"type": "sip", "sipUri": "sip:..."}')
    uris = []
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or t.get("type") != "sip":
            raise DialError(f'target[{i}].type: only "sip" targets are supported, got {t!r}')
        uri = t.get("sipUri")
        if not isinstance(uri, str) or not uri.startswith(("sip:", "sips:")):
            raise DialError(f"target[{i}].sipUri: must be a sip: URI, got {uri!r}")
        uris.append(uri)
    timeout = data.get("timeout", 60)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise DialError(f"timeout: must be a number of seconds > 0, got {timeout!r}")
    caller_id = data.get("callerId")
    if caller_id is not None and not isinstance(caller_id, str):
        raise DialError(f"callerId: must be a string, got {caller_id!r}")
    aob = data.get("answerOnBridge", False)
    if not isinstance(aob, bool):
        raise DialError(f"answerOnBridge: must be true or false, got {aob!r}")
    headers = data.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise DialError("headers: must be an object of string header values")
    try:
        hook = parse_hook(data.get("actionHook"), app_url)
    except ListenError as exc:
        raise DialError(str(exc)) from None
    listen = None
    channel = 1
    nested = data.get("listen")
    if nested is not None:
        if not isinstance(nested, dict):
            raise DialError("listen: must be a listen verb object")
        body = {k: v for k, v in nested.items() if k not in ("verb", "channel")}
        channel = nested.get("channel", 1)
        if channel not in (1, 2):
            raise DialError(f"listen.channel: must be 1 (A leg) or 2 (B leg), got {channel!r}")
        if channel == 1:
            body["disableBidirectionalAudio"] = True  # not supported on the A leg in a dial
        try:
            listen = parse_listen(body, app_url)
        except ListenError as exc:
            raise DialError(f"listen.{exc}") from None
    return DialOptions(
        targets=tuple(uris),
        caller_id=caller_id,
        timeout=float(timeout),
        answer_on_bridge=aob,
        headers=tuple(headers.items()),
        action_hook=hook,
        listen=listen,
        listen_channel=channel,
    )


def _status_for(sip_status: int) -> str:
    if sip_status in (486, 600):
        return "busy"
    if sip_status in (408, 480, 487):
        return "no-answer"
    return "failed"


@dataclass
class DialRun:
    """One run of ``dial`` from ``a_leg``; ``await run()`` returns the result."""

    options: DialOptions
    a_leg: Leg
    attributes: dict[str, Any]
    signalling: DialSignalling
    ports: PortPool
    media_engine: MediaEngine
    clock: EngineClock
    local_address: str
    from_host: str
    log: Any
    start_listen: Any = None  # async callable (ListenOptions, Leg) -> None, run while bridged
    on_answered: Any = None  # called when the B leg answers (answerOnBridge answers A then)
    dialled_legs: list[Leg] = field(default_factory=list)  # the call's record of B legs
    b_leg: Leg | None = None
    _rtp: RtpSocket | None = None
    _handle: CallHandle | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _bridged_at: float | None = None

    async def run(self) -> DialResult:
        result = DialResult("failed")  # no target at all
        try:
            for target in self.options.targets:
                result = await self._try(target)
                if result.status == "completed":
                    break
            return result
        except asyncio.CancelledError:
            # The caller hung up: end the B leg (BYE, or CANCEL before it answered).
            if self._handle is not None:
                with contextlib.suppress(Exception):
                    await self.signalling.end_outgoing(self._handle)
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if self._bridged_at is None:
                return DialResult("canceled", 487)
            b_sid = self.b_leg.call_sid if self.b_leg else None
            duration = self.clock.now() - self._bridged_at
            return DialResult("completed", 200, duration, b_sid, "caller")
        finally:
            await self._release()

    async def _try(self, target: str) -> DialResult:
        leg_probe = await self._open_rtp()
        if leg_probe is None:
            return DialResult("failed", 503)
        sock, port = leg_probe
        offer = build_offer(self.local_address, port, codecs=OFFER_CODECS)
        caller = self.options.caller_id or str(self.attributes.get("from") or "mediaserver")
        from_uri = f"<sip:{caller}@{self.from_host}>"
        self._handle, outcome = await self.signalling.place_call(
            target,
            from_uri=from_uri,
            sdp=bytes(offer),
            timeout=self.options.timeout,
            headers=self.options.headers,
        )
        if isinstance(outcome, OutgoingCallFailed):
            sock.close()
            self.ports.give_back(port)
            self.log.info("dial.failed", target=target, status=outcome.status)
            self._handle = None
            return DialResult(_status_for(outcome.status), outcome.status)
        try:
            media = process_answer(offer, SessionDescription.parse(outcome.response.body))
        except SdpError as exc:
            self.log.warning("dial.bad_answer", target=target, error=str(exc))
            sock.close()
            self.ports.give_back(port)
            await self.signalling.end_outgoing(self._handle)
            self._handle = None
            return DialResult("failed", 488)
        b_sid = str(uuid.uuid4())
        b = Leg(
            call_sid=b_sid,
            codec=media.codec,
            payload_type=media.payload_type,
            ptime_ms=media.ptime,
            telephone_event_pt=media.telephone_event_payload_type,
        )
        self.b_leg = b
        self.dialled_legs.append(b)
        remote = (
            (media.remote_address, media.remote_port)
            if media.remote_address and media.remote_port
            else None
        )
        self._rtp = await RtpSocket.adopt(sock, port, self.ports, b, remote, self.clock.now)
        b.send = self._rtp.send if remote is not None else None
        self.media_engine.add_leg(b)
        # the bridge: each leg hears what the other says
        self.a_leg.heard = LegBridge(b, self.a_leg.sample_rate)
        b.heard = LegBridge(self.a_leg, b.sample_rate)
        bridged_at = self._bridged_at = self.clock.now()
        self.log.info("dial.answered", target=target, codec=media.codec, dial_call_sid=b_sid)
        if self.on_answered is not None:
            self.on_answered()  # answerOnBridge: the caller is answered only now
        if self.options.listen is not None and self.start_listen is not None:
            leg = self.a_leg if self.options.listen_channel == 1 else b
            self._tasks.append(asyncio.create_task(self.start_listen(self.options.listen, leg)))
        ended = await self.signalling.outgoing_ended(self._handle)
        self._handle = None
        return DialResult(
            "completed", 200, self.clock.now() - bridged_at, b_sid,
            "callee" if ended.by == "remote" else "caller",
        )  # fmt: skip

    async def _open_rtp(self) -> tuple[Any, int] | None:
        try:
            sock = self.ports.take()
        except PortsExhausted as exc:
            self.log.warning("dial.no_port", error=str(exc))
            return None
        return sock, int(sock.getsockname()[1])

    async def _release(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.a_leg.heard is not None:
            self.a_leg.heard = None
        if self.b_leg is not None:
            self.media_engine.remove_leg(self.b_leg)
        if self._rtp is not None:
            self._rtp.close()
            self.ports.give_back(self._rtp.port)
            self._rtp = None
