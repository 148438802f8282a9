"""The recording verbs on a call: Kazoo ``record_call`` and SignalWire ``record_call``.

Owns running the two dialects' verbs on one call (``CallRecordings``) over the
same core: a ``Recorder`` (``mediaserver.recording``) added to the caller's
leg, so the engine hands it each tick at its rate (left = what the caller
says, right = what the caller hears, which includes the other party when
bridged), and what happens when a recording ends: Kazoo's upload/spool/store
(``deliver_kazoo``), SignalWire's stored file served by the admin endpoint and
its ``status_url`` events. ``RecordingService`` is the per-process part: the
``[recording]`` store, the admin endpoint's base URL and the deliveries still
running after their call ended.

Dialect decisions, documented here once:

- Kazoo: one recording at a time per call (a second ``start`` while one runs
  is logged and ignored, as the real system keeps the running one);
  ``action: stop`` and hangup stop it; ``record_on_answer`` waits for the
  answer, ``record_on_bridge`` for the next ``dial`` to bridge. Stereo
  records both directions in two channels; mono mixes them.
- SignalWire: any number of recordings, each with its ``control_id``;
  ``stop_record_call`` stops the one named or the last one started that is
  still running. ``stereo`` records both directions in two channels whatever
  ``direction`` says; mono records ``direction``'s side (``both``: mixed).
  The file is recorded at the leg's own rate into the recordings directory
  and reported at ``<admin>/recordings/<name>``. Variables
  ``record_control_id``, ``record_call_url`` (set at start) and
  ``record_call_result`` (``success``/``failed``, at the end) go into the
  call's hook payloads. Status events: ``recording`` at start; at the end
  ``finished`` (a file was kept), ``no_input`` (the initial timeout passed
  with no speech) or ``error``.

It must not parse SIP or speak WebSocket; verb parsing is in
``mediaserver.record_options``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dsp.tones import beep
from mediaserver.engine import DtmfKey, Leg, MediaEngine, SilenceWatch
from mediaserver.record_options import (
    KazooRecordOptions,
    RecordError,
    SwmlRecordOptions,
    parse_kazoo_record,
    parse_swml_record,
    parse_swml_stop,
)
from mediaserver.recording import (
    Recorder,
    RecordingCause,
    RecordingFormat,
    RecordingLayout,
    RecordingOptions,
    RecordingResult,
    SilenceOptions,
)
from mediaserver.recording_delivery import (
    CallFacts,
    DeliveryResult,
    RecordingStore,
    RecordResult,
    RecordStatusCallbacks,
    SignalWireRecording,
    deliver_kazoo,
    recording_file_name,
    recording_url_path,
    resume_spool,
)

__all__ = ["CallRecordings", "RecordingService"]


class RecordingService:
    """The per-process side of recording: settings, admin base URL, running deliveries."""

    def __init__(
        self,
        store: RecordingStore | None = None,
        *,
        admin_url: Callable[[], str | None] | None = None,
        log: Any = None,
    ) -> None:
        self.store = store if store is not None else RecordingStore()
        self._admin_url = admin_url
        self.log = log
        self.deliveries: set[asyncio.Task[Any]] = set()
        self.results: list[DeliveryResult] = []  # Kazoo deliveries finished so far

    @property
    def admin_url(self) -> str:
        """Base URL recordings are reported under (empty: no admin endpoint)."""
        url = self._admin_url() if self._admin_url is not None else None
        return (url or "").rstrip("/")

    def work_path(self) -> Path:
        """Where recordings are written while they run (created on demand)."""
        path = self.store.recordings_path
        path.mkdir(parents=True, exist_ok=True)
        return path

    def track(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` (a delivery) beyond its call; ``drain`` waits for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self.deliveries.add(task)
        task.add_done_callback(self.deliveries.discard)
        return task

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for running deliveries; the rest stay in the spool."""
        pending = set(self.deliveries)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()  # the file stays in the spool: resume_spool sends it next start
        if late:
            await asyncio.wait(late, timeout=2)

    async def resume(self) -> list[DeliveryResult]:
        """Retry what a previous run left in the spool (at start-up)."""
        return await resume_spool(self.store, log=self.log)


class RecordingCall(Protocol):
    """What a recording needs from its call (``mediaserver.call.Call``)."""

    call_sid: str
    attributes: dict[str, Any]
    variables: dict[str, Any]
    leg: Leg | None
    answered_at: float | None
    log: Any
    engine: MediaEngine


@dataclass
class _Run:
    dialect: str
    recorder: Recorder
    leg: Leg
    started_at: float  # Unix seconds
    control_id: str = ""
    kazoo: KazooRecordOptions | None = None
    swml: SwmlRecordOptions | None = None
    url: str = ""  # SignalWire: where the file is reported
    status: RecordStatusCallbacks | None = None
    dtmf_handler: Callable[[Leg, DtmfKey], None] | None = None
    silence: SilenceWatch | None = None  # the engine's timers for this recording
    done: asyncio.Future[RecordingResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class CallRecordings:
    """One call's recordings in both dialects (see the module docstring)."""

    def __init__(self, call: RecordingCall, service: RecordingService) -> None:
        self.call = call
        self.service = service
        self.runs: list[_Run] = []
        self._pending_answer: list[KazooRecordOptions] = []
        self._pending_bridge: list[KazooRecordOptions] = []
        self._seq = itertools.count(1)
        self._ended = False

    @property
    def active(self) -> list[_Run]:
        return [r for r in self.runs if not r.recorder.stopped]

    # -- Kazoo ------------------------------------------------------------------------

    def kazoo(self, data: dict[str, Any], index: int) -> None:
        """Run a Kazoo ``record_call`` element (start or stop); never blocks the verbs."""
        try:
            opts = parse_kazoo_record(data, max_time_limit=self.service.store.time_limit(None))
        except RecordError as exc:  # parse_verbs checked it already; a hook's verbs too
            self.call.log.error("verb.invalid", verb="record_call", index=index, error=str(exc))
            return
        for warning in opts.warnings:
            self.call.log.warning("record_call.adjusted", dialect="kazoo", warning=warning)
        if opts.action == "stop":
            for run in self.active:
                if run.dialect == "kazoo":
                    run.recorder.stop(RecordingCause.SUCCESS_STOP)
            self._pending_answer.clear()
            self._pending_bridge.clear()
            return
        if any(r.dialect == "kazoo" for r in self.active):
            self.call.log.warning("record_call.already_recording", dialect="kazoo")
            return
        if opts.record_on_bridge:
            self._pending_bridge.append(opts)
        elif opts.record_on_answer and self.call.answered_at is None:
            self._pending_answer.append(opts)
        else:
            self._start_kazoo(opts)

    def on_answer(self) -> None:
        pending, self._pending_answer = self._pending_answer, []
        for opts in pending:
            self._start_kazoo(opts)

    def on_bridge(self) -> None:
        pending, self._pending_bridge = self._pending_bridge, []
        for opts in pending:
            self._start_kazoo(opts)

    def _start_kazoo(self, opts: KazooRecordOptions) -> None:
        leg = self.call.leg
        if leg is None or self._ended:
            return
        silence = None
        if opts.silence_detection:
            silence = SilenceOptions(
                threshold=max(opts.silence_threshold, 1e-6),
                initial_timeout_ms=opts.silence_initial_timeout_ms,
                final_timeout_ms=opts.silence_final_timeout_ms,
            )
        options = RecordingOptions(
            format=RecordingFormat.parse(opts.format),
            layout=RecordingLayout.STEREO if opts.stereo else RecordingLayout.BOTH,
            sample_rate=opts.sample_rate,
            time_limit=float(opts.time_limit),
            silence=silence,
            min_seconds=float(opts.min_seconds),
        )
        # hidden name: the admin endpoint never serves a file awaiting its upload
        name = f".kazoo-{self.call.call_sid}-{next(self._seq)}.{opts.format}"
        self._start("kazoo", options, name, kazoo=opts)

    # -- SignalWire ---------------------------------------------------------------------

    async def swml_record(self, data: dict[str, Any], index: int) -> None:
        """Run SWML ``record_call``: starts a background recording and returns."""
        try:
            opts = parse_swml_record(data)
        except RecordError as exc:
            self.call.log.error("verb.invalid", verb="record_call", index=index, error=str(exc))
            self.call.variables["record_call_result"] = "failed"
            return
        leg = self.call.leg
        if leg is None or self._ended:
            return
        if opts.beep:  # to the caller, before recording starts
            played: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def beeped() -> None:
                if not played.done():
                    played.set_result(None)

            leg.playback.enqueue(beep(leg.sample_rate), on_done=beeped)
            await played
            if self._ended:
                return
        silence = None
        if opts.initial_timeout > 0 or opts.end_silence_timeout > 0:
            silence = SilenceOptions(
                threshold=opts.silence_threshold,
                initial_timeout_ms=round(opts.initial_timeout * 1000),
                final_timeout_ms=round(opts.end_silence_timeout * 1000),
            )
        layout = RecordingLayout.STEREO if opts.stereo else RecordingLayout.parse(opts.direction)
        options = RecordingOptions(
            format=RecordingFormat.parse(opts.format),
            layout=layout,
            sample_rate=leg.sample_rate,
            time_limit=opts.max_length,
            silence=silence,
        )
        name = recording_file_name(f"{self.call.call_sid}-{opts.control_id}", opts.format)
        url = self.service.admin_url + recording_url_path(name)
        status = None
        if opts.status_url is not None:
            who = SignalWireRecording(
                call_id=self.call.call_sid,
                control_id=opts.control_id,
                node_id=str(self.call.attributes.get("traceId", "")),
                project_id=str(self.call.attributes.get("accountSid", "")),
                space_id=str(self.call.attributes.get("applicationSid", "")),
                swml_session_id=self.call.call_sid,
            )
            status = RecordStatusCallbacks(opts.status_url, who, log=self.call.log)
        run = self._start(
            "swml",
            options,
            name,
            swml=opts,
            control_id=opts.control_id,
            url=url,
            status=status,
        )
        if run is None:
            self.call.variables["record_call_result"] = "failed"
            if status is not None:
                status.report("error")
            return
        self.call.variables.update(record_control_id=opts.control_id, record_call_url=url)
        if status is not None:
            status.report("recording")
        if opts.terminators:
            terminators = opts.terminators

            def on_key(_leg: Leg, key: DtmfKey) -> None:
                if key.ended and key.digit in terminators:
                    run.recorder.stop(RecordingCause.SUCCESS_STOP)

            run.dtmf_handler = on_key
            leg.dtmf_handlers.append(on_key)

    def swml_stop(self, data: dict[str, Any], index: int) -> None:
        """SWML ``stop_record_call``: the recording named, else the last one still running."""
        try:
            opts = parse_swml_stop(data)
        except RecordError as exc:
            self.call.log.error(
                "verb.invalid", verb="stop_record_call", index=index, error=str(exc)
            )
            return
        running = [r for r in self.active if r.dialect == "swml"]
        if opts.control_id is not None:
            running = [r for r in running if r.control_id == opts.control_id]
        if not running:
            self.call.log.warning("stop_record_call.nothing_to_stop", control_id=opts.control_id)
            return
        running[-1].recorder.stop(RecordingCause.SUCCESS_STOP)

    # -- both ---------------------------------------------------------------------------

    def hangup(self) -> None:
        """The call ended: stop every recording (cause ``success-hangup``)."""
        self._ended = True
        self._pending_answer.clear()
        self._pending_bridge.clear()
        for run in self.active:
            run.recorder.stop(RecordingCause.SUCCESS_HANGUP)

    async def wait(self) -> list[RecordingResult]:
        """Every recording's result (for tests and the harness)."""
        return [await r.done for r in self.runs]

    def _start(
        self,
        dialect: str,
        options: RecordingOptions,
        name: str,
        **extra: Any,
    ) -> _Run | None:
        leg = self.call.leg
        assert leg is not None
        holder: list[_Run] = []

        def on_stop(result: RecordingResult) -> None:
            if holder:
                self._stopped(holder[0], result)

        def spoke() -> bool:
            watch = holder[0].silence if holder else None
            return watch is not None and watch.speech_detected

        try:
            # Silence timers run in the engine, batched with every other watch (a
            # detector call per recording per tick cost ~50 us); without timers
            # nobody needs to know whether anyone spoke.
            recorder = Recorder(
                self.service.work_path() / name,
                options,
                on_stop=on_stop,
                own_silence_detector=False,
                speech_source=spoke,
            )
        except (OSError, ValueError) as exc:
            self.call.log.error("record_call.open_failed", dialect=dialect, error=str(exc))
            return None
        run = _Run(dialect, recorder, leg, time.time(), **extra)
        holder.append(run)
        silence = options.silence
        if silence is not None and leg.slot >= 0:
            run.silence = self.call.engine.add_silence_watch(
                leg,
                lambda _watch, expiry: recorder.silence_expired(expiry),
                threshold=silence.threshold,
                initial_timeout_ms=silence.initial_timeout_ms,
                final_timeout_ms=silence.final_timeout_ms,
            )
        self.runs.append(run)
        leg.listeners.append(recorder)
        self.call.log.info(
            "record_call.started",
            dialect=dialect,
            control_id=run.control_id or None,
            format=options.format.value,
            layout=options.layout.value,
            rate=options.sample_rate,
        )
        return run

    def _stopped(self, run: _Run, result: RecordingResult) -> None:
        """A recorder ended (inside an engine tick, or from stop()): detach, deliver."""

        def detach() -> None:  # not while the engine iterates the listeners
            with contextlib.suppress(ValueError):
                run.leg.listeners.remove(run.recorder)
            if run.silence is not None:
                self.call.engine.remove_silence_watch(run.silence)
            if run.dtmf_handler is not None:
                with contextlib.suppress(ValueError):
                    run.leg.dtmf_handlers.remove(run.dtmf_handler)

        loop = asyncio.get_running_loop()
        loop.call_soon(detach)
        if not run.done.done():
            run.done.set_result(result)
        self.call.log.info(
            "record_call.stopped",
            dialect=run.dialect,
            control_id=run.control_id or None,
            cause=result.cause.value,
            kept=result.kept,
            duration_ms=result.file.duration_ms,
            speech=result.speech_detected,
            error=result.error,
        )
        if run.dialect == "kazoo":
            self._deliver_kazoo(run, result)
        else:
            self._finish_swml(run, result)

    def _deliver_kazoo(self, run: _Run, result: RecordingResult) -> None:
        opts = run.kazoo
        assert opts is not None
        if not result.kept:
            return  # too short / empty / failed: Kazoo discards it (logged above)
        attrs = self.call.attributes
        facts = CallFacts(
            call_id=str(attrs.get("callId") or self.call.call_sid),
            from_=str(attrs.get("from", "")),
            to=str(attrs.get("to", "")),
            direction=str(attrs.get("direction", "inbound")),
            caller_id_name=str(attrs.get("callerId", "")),
            caller_id_number=str(attrs.get("from", "")),
            account_id=str(attrs.get("accountSid", "")),
        )

        async def deliver() -> None:
            outcome = await deliver_kazoo(
                self.service.store,
                result.file,
                facts,
                url=opts.url or "",
                method=opts.method,
                media_name=opts.media_name,
                label=opts.label,
                started_at=run.started_at,
                log=self.call.log,
            )
            self.service.results.append(outcome)
            self.call.log.info(
                "record_call.delivered",
                outcome=outcome.outcome,
                attempts=outcome.attempts,
                url=outcome.url or None,
                path=str(outcome.path) if outcome.path else None,
            )

        self.service.track(deliver())

    def _finish_swml(self, run: _Run, result: RecordingResult) -> None:
        if result.cause is RecordingCause.NO_INPUT_TIMEOUT:
            state = "no_input"
        elif result.kept and result.cause is not RecordingCause.ERROR:
            state = "finished"
        else:
            state = "error"
        self.call.variables["record_call_result"] = "success" if state == "finished" else "failed"
        if run.status is None:
            return
        if state == "finished":
            run.status.report("finished", RecordResult.of(result.file, run.url))
        else:
            run.status.report(state)  # type: ignore[arg-type]  # no_input | error
        self.service.track(run.status.drain())
