"""One call in ``serve``: its attributes, its media leg, and its verbs.

Owns a call's life from the accepted INVITE to the last log line: building
the jambonz call attributes from the SIP request, opening the RTP socket and
engine leg for the negotiated media, running the verbs in order (``pause``,
``hangup``; a call whose verbs run out is hung up, as jambonz does),
re-negotiating media on re-INVITE (hold, codec change), and releasing
everything exactly once whichever side ends it.

It must not speak SIP itself: it asks ``CallSignalling`` (the server) to
answer, reject or hang up.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from mediaserver.app import AppError, Application, Verb, parse_verbs, snake_case
from mediaserver.dial import DialError, DialRun, DialSignalling, parse_dial
from mediaserver.dump import CallDump
from mediaserver.engine import DtmfKey, EngineClock, Leg, MediaEngine
from mediaserver.hooks import safe_url, send_hook
from mediaserver.listen import ListenResult, ListenRun
from mediaserver.listen_options import Hook, ListenError, ListenOptions, parse_hook, parse_listen
from mediaserver.logs import call_logger
from mediaserver.play import PlayError, load_prompt
from mediaserver.record import CallRecordings, RecordingService
from mediaserver.rtp_socket import PortPool, RtpSocket
from rtp.sdp import NegotiatedMedia, SessionDescription
from rtp.sip.address import SipUri, format_host
from rtp.sip.errors import SipRemoteError
from rtp.sip.events import CallHandle
from rtp.sip.message import SipRequest

__all__ = ["Call", "CallSignalling", "call_attributes"]


class CallSignalling(Protocol):
    def answer(self, call: Call, sdp: bytes) -> None: ...
    def reject(self, call: Call, status: int, reason: str | None = None) -> None: ...
    def hangup(self, call: Call) -> None: ...


def call_attributes(
    request: SipRequest,
    source: tuple[str, int],
    *,
    call_sid: str,
    account_sid: str = "",
    application_sid: str = "",
) -> dict[str, Any]:
    """The jambonz call attributes (camelCase) for an inbound INVITE."""
    frm, to = request.from_addr, request.to_addr

    def user(uri: str) -> str:
        try:
            return SipUri.parse(uri).user or ""
        except SipRemoteError:  # tel: or another scheme: keep it as it came
            return uri

    attrs: dict[str, Any] = {
        "callSid": call_sid,
        "direction": "inbound",
        "from": user(frm.uri),
        "to": user(to.uri),
        "callId": request.call_id,
        "sipStatus": 100,
        "sipReason": "Trying",
        "callStatus": "trying",
        "callerId": frm.display_name or user(frm.uri),
        "originatingSipIp": source[0],
        "accountSid": account_sid,
        "applicationSid": application_sid,
        "traceId": uuid.uuid4().hex,
    }
    return {k: v for k, v in attrs.items() if v not in ("", None)}


class Call:
    """An inbound call accepted by the server (see the module docstring)."""

    def __init__(
        self,
        *,
        attributes: dict[str, Any],
        media: NegotiatedMedia | None,
        engine: MediaEngine,
        clock: EngineClock,
        app: Application,
        signalling: CallSignalling,
        handle: CallHandle | None = None,
        ports: PortPool | None = None,
        inband_dtmf: bool = True,
        jitter_target: float = 0.04,
        dump_dir: Path | None = None,
        listen_buffer: float = 3.0,
        verify_tls: bool = True,
        recordings: RecordingService | None = None,
    ) -> None:
        """A call: SIP-backed (``handle``, ``media``, ``ports``) or simulated (``media=None``:
        the caller attaches ``leg`` itself, see ``mediaserver.harness``)."""
        self.handle = handle
        self.attributes = attributes
        self.call_sid = str(attributes["callSid"])
        self.media = media
        self.engine = engine
        self.clock = clock
        self.ports = ports
        self.app = app
        self.signalling = signalling
        self.inband_dtmf = inband_dtmf
        self.jitter_target = jitter_target
        self.dump_dir = dump_dir
        self.listen_buffer = listen_buffer
        self.verify_tls = verify_tls
        self.verbs: deque[Verb] = deque()
        self._sdp_answer = b""
        self.dump: CallDump | None = None
        self.log = call_logger(self.call_sid, call_id=attributes.get("callId"))
        self.hook_payloads: list[dict[str, Any]] = []  # what this call's hooks were sent
        self.listen_results: list[ListenResult] = []
        self.background_listen: ListenRun | None = None  # config's fork
        self.background_tasks: list[asyncio.Task[None]] = []
        self.dialled_legs: list[Leg] = []  # B legs placed by dial (for metrics)
        self.leg: Leg | None = None
        self.rtp: RtpSocket | None = None
        self.digits: list[DtmfKey] = []
        self.end_reason: str | None = None
        self.answered_at: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.answer_sdp: SessionDescription | None = None  # our last answer (for re-INVITEs)
        self.done = asyncio.Event()
        # what verbs set for the app to see in later hook payloads (record_call_url, ...)
        self.variables: dict[str, Any] = {}
        self.recordings = CallRecordings(self, recordings) if recordings is not None else None

    # -- media ------------------------------------------------------------------

    async def open_media(self) -> int:
        """Create the leg and bind its RTP port; return the port for the SDP answer."""
        assert self.media is not None and self.ports is not None
        self.leg = self._new_leg(self.media)
        if self.dump_dir is not None:
            self.dump = CallDump(self.dump_dir, self.call_sid, self.leg.sample_rate)
            self.leg.listeners.append(self.dump)
        remote = self._remote(self.media)
        self.rtp = await RtpSocket.open(self.ports, self.leg, remote, self.clock.now)
        self._apply_direction(self.media)
        self.engine.add_leg(self.leg)
        return self.rtp.port

    def _new_leg(self, media: NegotiatedMedia) -> Leg:
        leg = Leg(
            call_sid=self.call_sid,
            codec=media.codec,
            payload_type=media.payload_type,
            ptime_ms=media.ptime,
            telephone_event_pt=media.telephone_event_payload_type,
            inband_dtmf=self.inband_dtmf,
            jitter_target=self.jitter_target,
        )
        leg.dtmf_handlers.append(self._on_dtmf)
        return leg

    @staticmethod
    def _remote(media: NegotiatedMedia) -> tuple[str, int] | None:
        if media.remote_address is None or not media.remote_port:
            return None
        return (media.remote_address, media.remote_port)

    def _apply_direction(self, media: NegotiatedMedia) -> None:
        assert self.leg is not None and self.rtp is not None
        sends = media.direction.sends and not media.on_hold and media.remote_address is not None
        self.leg.send = self.rtp.send if sends else None

    def renegotiate(self, media: NegotiatedMedia) -> None:
        """A re-INVITE was answered: follow hold/unhold, new address, new codec."""
        assert self.leg is not None and self.rtp is not None and self.media is not None
        old = self.media
        self.media = media
        if media.codec != old.codec or media.payload_type != old.payload_type:
            old_leg = self.leg
            self.leg = self._new_leg(media)
            # forks, dumps and recordings follow the call at their own rate; so do key
            # subscribers and silence timers (a listen timeout, a recording's)
            self.leg.listeners = old_leg.listeners
            self.leg.dtmf_handlers = old_leg.dtmf_handlers
            self.engine.move_silence_watches(old_leg, self.leg)
            self.engine.remove_leg(old_leg)
            self.rtp.leg = self.leg
            self.engine.add_leg(self.leg)
        remote = self._remote(media)
        if remote is not None:
            self.rtp.remote = remote
            self.rtp.latched = False
        self._apply_direction(media)
        self.log.info(
            "call.reinvite",
            codec=media.codec,
            on_hold=media.on_hold,
            direction=str(media.direction),
        )

    def _on_dtmf(self, _leg: Leg, key: DtmfKey) -> None:
        if key.ended:
            self.digits.append(key)
            self.log.info("dtmf", digit=key.digit, source=key.source, duration=key.duration)

    # -- control ----------------------------------------------------------------

    async def run(self, sdp_answer: bytes) -> None:
        """Fetch the verbs, answer, run them, hang up when they run out."""
        try:
            verbs = await self.app.verbs_for_call(self.attributes)
        except AppError as exc:
            self.log.error("app.error", error=str(exc))
            self.end("app-error")  # first: reject() reports the end synchronously
            self.signalling.reject(self, 500, "Application Error")
            return
        self._sdp_answer = sdp_answer
        first = verbs[0] if verbs else None
        if not (first and first.name == "dial" and first.data.get("answerOnBridge") is True):
            self._answer(verbs)
        self.verbs = deque(verbs)
        while self.verbs:
            verb = self.verbs.popleft()
            if self.end_reason is not None:
                return
            if not await self._run_verb(verb):
                return
        if self.end_reason is None:
            self.signalling.hangup(self)
            self.end("app-done")

    def _answer(self, verbs: list[Verb] | None = None) -> None:
        """Answer the caller (200 OK) once: at the start, or when dial bridges (answerOnBridge)."""
        if self.answered_at is not None:
            return
        self.signalling.answer(self, self._sdp_answer)
        self.answered_at = self.clock.now()
        self.attributes.update(sipStatus=200, sipReason="OK", callStatus="in-progress")
        if self.recordings is not None:
            self.recordings.on_answer()  # Kazoo record_on_answer
        self.log.info(
            "call.answered",
            codec=self.leg.codec.info.key if self.leg else None,
            ptime=self.leg.ptime_ms if self.leg else None,
            remote=self._remote(self.media) if self.media else None,
            rtp_port=self.rtp.port if self.rtp else None,
            verbs=[v.name for v in verbs or self.verbs],
        )

    async def _run_verb(self, verb: Verb) -> bool:
        """Run one verb; False when the call is over."""
        self.log.info("verb.start", verb=verb.name, index=verb.index)
        if verb.name == "pause":
            await self.clock.sleep(float(verb.data["length"]))
            return True
        if verb.name == "hangup":
            self.signalling.hangup(self)
            self.end("hangup-verb")
            return False
        if verb.name in ("listen", "stream"):
            await self._listen(verb)
            return self.end_reason is None
        if verb.name == "dial":
            await self._dial(verb)
            return self.end_reason is None
        if verb.name == "play":
            await self._play(verb)
            return self.end_reason is None
        if verb.name == "config":
            self._config(verb)
            return True
        if verb.name in ("record_call", "stop_record_call"):
            await self._record(verb)
            return self.end_reason is None
        self.log.error("verb.unknown", verb=verb.name, index=verb.index)  # parse_verbs forbids
        return True

    async def _record(self, verb: Verb) -> None:
        """The recording verbs (Kazoo element or SWML method): start or stop, then go on."""
        if self.recordings is None or self.leg is None:
            self.log.error("verb.unsupported", verb=verb.name, why="no recording store configured")
            return
        if verb.dialect == "kazoo":
            self.recordings.kazoo(verb.data, verb.index)
        elif verb.name == "record_call":
            await self.recordings.swml_record(verb.data, verb.index)
        else:
            self.recordings.swml_stop(verb.data, verb.index)

    def _bridged(self) -> None:
        """dial's B leg answered: answer the caller (answerOnBridge), start record_on_bridge."""
        self._answer()
        if self.recordings is not None:
            self.recordings.on_bridge()

    @property
    def app_url(self) -> str | None:
        return self.app.source if self.app.is_url else None

    async def _listen(self, verb: Verb) -> None:
        try:
            options = parse_listen(verb.data, self.app_url)
        except ListenError as exc:
            # A bad verb never leaves the call hanging: say which field, tell the
            # actionHook if there is a usable one, and go on with the next verb.
            self.log.error("verb.invalid", verb=verb.name, index=verb.index, error=str(exc))
            hook = _hook_or_none(verb.data.get("actionHook"), self.app_url)
            if hook is not None:
                result = ListenResult("error", error=f"{verb.name}: {exc}")
                await self._action_hook(hook, result.hook_fields(), replace_verbs=True)
            return
        assert self.leg is not None
        await self._run_listen(self._new_listen(options, self.leg), options, verbs_follow=True)

    async def _dial(self, verb: Verb) -> None:
        try:
            options = parse_dial(verb.data, self.app_url)
        except DialError as exc:
            self.log.error("verb.invalid", verb="dial", index=verb.index, error=str(exc))
            hook = _hook_or_none(verb.data.get("actionHook"), self.app_url)
            if hook is not None:
                fields = {"dial_call_status": "failed", "reason": "error", "error": f"dial: {exc}"}
                await self._action_hook(hook, fields, replace_verbs=True)
            return
        signalling = self.signalling
        if not isinstance(signalling, DialSignalling) or self.ports is None or self.leg is None:
            self.log.error("verb.unsupported", verb="dial", why="dial needs serve (a SIP stack)")
            if options.action_hook is not None:
                why = "dial: not available without SIP (mediaserver call)"
                fields = {"dial_call_status": "failed", "reason": "error", "error": why}
                await self._action_hook(options.action_hook, fields, replace_verbs=True)
            return
        config = signalling.config
        run = DialRun(
            options=options,
            a_leg=self.leg,
            attributes=self.attributes,
            signalling=signalling,
            ports=self.ports,
            media_engine=self.engine,
            clock=self.clock,
            local_address=config.rtp_address,
            from_host=format_host(config.sip_host) + f":{config.sip_port}",
            log=self.log,
            start_listen=self._nested_listen,
            on_answered=self._bridged,
            dialled_legs=self.dialled_legs,
        )
        result = await run.run()
        if self.answered_at is None and self.end_reason is None:
            # answerOnBridge and the dial failed: the caller gets the failure, not a 200
            code = {"busy": 486, "no-answer": 480}.get(result.status, result.sip_status or 503)
            self.log.info("dial.not_bridged", status=result.status, answered_with=code)
            self.end(f"dial-{result.status}")
            self.signalling.reject(self, code if 300 <= code <= 699 else 503)
            if options.action_hook is not None:
                await self._action_hook(options.action_hook, result.hook_fields(),
                                        replace_verbs=False)  # fmt: skip
            return
        self.log.info("dial.end", **result.hook_fields(), ended_by=result.ended_by)
        if options.action_hook is not None:
            await self._action_hook(
                options.action_hook, result.hook_fields(), replace_verbs=self.end_reason is None
            )
        if result.ended_by == "callee" and self.end_reason is None:
            # either side hanging up ends both legs
            self.signalling.hangup(self)
            self.end("dial-callee-hangup")

    async def _play(self, verb: Verb) -> None:
        """Play each URL/file ``loop`` times to the caller (``forever``: until hangup)."""
        assert self.leg is not None
        url = verb.data["url"]
        urls = url if isinstance(url, list) else [url]
        loop = verb.data.get("loop", 1)
        played = 0
        try:
            prompts = [await load_prompt(u, self.leg.sample_rate) for u in urls]
        except PlayError as exc:
            self.log.error("play.failed", error=str(exc))
            return
        while loop == "forever" or played < loop:
            for pcm in prompts:
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self.leg.playback.enqueue(pcm, on_done=partial(_resolve, done))
                await done
            played += 1

    def _config(self, verb: Verb) -> None:
        """config with listen: a background fork for the rest of the call (or stop it)."""
        listen = verb.data.get("listen")
        if listen is None:
            return
        if listen.get("enable", True) is False:
            if self.background_listen is not None:
                self.background_listen.stop("stopped")
            return
        try:
            options = parse_listen({k: v for k, v in listen.items() if k != "enable"},
                                   self.app_url)  # fmt: skip
        except ListenError as exc:
            self.log.error("verb.invalid", verb="config", index=verb.index, error=f"listen.{exc}")
            return
        if self.background_listen is not None:
            self.background_listen.stop("stopped")
        assert self.leg is not None
        run = self.background_listen = self._new_listen(options, self.leg)
        task = self._run_listen(run, options, verbs_follow=False)
        self.background_tasks.append(asyncio.get_running_loop().create_task(task))

    async def _nested_listen(self, options: ListenOptions, leg: Leg) -> None:
        # nested in dial: the hook's response is ignored
        await self._run_listen(self._new_listen(options, leg), options, verbs_follow=False)

    def _new_listen(self, options: ListenOptions, leg: Leg) -> ListenRun:
        return ListenRun(
            options=options,
            leg=leg,
            engine=self.engine,
            clock=self.clock,
            attributes=self.attributes,
            log=self.log,
            buffer_seconds=self.listen_buffer,
            verify_tls=self.verify_tls,
        )

    async def _run_listen(
        self, run: ListenRun, options: ListenOptions, *, verbs_follow: bool
    ) -> None:
        """Run a fork to its end, keep its result, post its actionHook.

        ``verbs_follow``: the hook's verb array replaces the rest of the app
        (top-level listen, while the call is still up).
        """
        result = await run.run()
        self.listen_results.append(result)
        if options.action_hook is not None:
            replace = verbs_follow and self.end_reason is None
            await self._action_hook(
                options.action_hook, result.hook_fields(), replace_verbs=replace
            )

    async def _action_hook(
        self, hook: Hook, fields: dict[str, Any], *, replace_verbs: bool
    ) -> None:
        payload = snake_case(self.attributes)
        payload.update(self.variables)
        payload.update(fields)
        self.hook_payloads.append(payload)
        result = await send_hook(hook, payload, log=self.log)
        if not replace_verbs or not result.ok or result.body is None:
            return
        try:
            verbs = parse_verbs(result.body, f"actionHook {safe_url(hook.url)}")
        except AppError as exc:
            self.log.error("app.error", error=str(exc))
            return
        self.verbs = deque(verbs)  # the hook's verbs replace what was left, as in jambonz

    def end(self, reason: str) -> None:
        """Release everything once; ``reason`` is why the call ended."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self.attributes.update(callStatus="completed")
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        for task in self.background_tasks:
            task.cancel()  # a config fork ends with the call (and still posts its hook)
        if self.recordings is not None:
            self.recordings.hangup()  # files close now; deliveries run on in the service
        stats: dict[str, Any] = {}
        if self.leg is not None:
            self.engine.remove_leg(self.leg)
            stats = {"rtp": asdict(self.leg.jitter.stats), "leg": asdict(self.leg.stats)}
        if self.rtp is not None and self.ports is not None:
            self.rtp.close()
            self.ports.give_back(self.rtp.port)
        duration = (
            round(self.clock.now() - self.answered_at, 3) if self.answered_at is not None else 0
        )
        digits = "".join(k.digit for k in self.digits)
        self.log.info(
            "call.end",
            reason=reason,
            codec=self.leg.codec.info.key if self.leg else None,
            duration=duration,
            digits=digits,
            **stats,
        )
        if self.dump is not None:
            self.dump.close(
                {
                    "attributes": self.attributes,
                    "reason": reason,
                    "codec": self.leg.codec.info.key if self.leg else None,
                    "duration": duration,
                    "digits": [asdict(k) for k in self.digits],
                    **stats,
                }
            )
        self.done.set()


def _hook_or_none(value: Any, app_url: str | None) -> Hook | None:
    """The hook of a verb that failed validation, if the hook itself is usable."""
    try:
        return parse_hook(value, app_url)
    except ListenError:
        return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
