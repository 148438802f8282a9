"""The reference ``audio.jambonz.org`` receiver (``mediaserver receiver``).

Owns the server side of the ``listen`` fork as the protocol notes
(``listen-protocol.md``) describe it: a WebSocket server that accepts the
subprotocol ``audio.jambonz.org`` (and the older ``audio.drachtio.org``, and
clients that offer none), optional HTTP Basic auth at the handshake, and, per
connection (one fork of one call), validation of the stream: the first
message is the JSON metadata frame, then raw L16 little-endian binary frames
at ``sampleRate`` with 1 (``mono``/``mixed``) or 2 (``stereo``) channels,
plus the sender's text frames (``dtmf``, ``playDone``, ``mark``, ``error``).
Every deviation is reported as a violation (an event, a warning log line and
an entry in the call's summary); nothing the sender does stops the receiver.

Per call it writes into the output directory ``<callSid>.wav`` (PCM16 at the
call's rate and channel count, streamed to disk, header kept valid every
second), ``<callSid>.json`` (the metadata frame as received plus a summary at
close) and ``<callSid>.events.jsonl`` (open, every text frame, every
violation, what the receiver sent, close).

Two ways in: :class:`Receiver`, an async context manager the project's tests
use as the real WebSocket peer of ``listen`` (it can talk back with
``playAudio``/``killAudio``/``disconnect``/``mark``, stall, or close early),
and :func:`run_receiver`, the blocking entry point of the CLI subcommand.

It must not import the sender side (``mediaserver.fork``, the verbs): it is
the independent peer they are tested against. Secrets (the auth password,
Authorization headers) are never logged nor written to the output files.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import signal
import socket
import struct
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from mediaserver.audio_decode import AudioDecodeError, decode_audio, resample_whole
from mediaserver.logs import call_logger, get_logger

__all__ = [
    "MIX_TYPES",
    "SAMPLE_RATES",
    "SUBPROTOCOLS",
    "VIOLATIONS",
    "ReceivedCall",
    "Receiver",
    "RefusedHandshake",
    "load_play_message",
    "parse_auth",
    "parse_listen",
    "run_receiver",
]

SUBPROTOCOLS = ("audio.jambonz.org", "audio.drachtio.org")
SAMPLE_RATES = frozenset({8000, 16000, 24000, 32000, 48000, 64000})
MIX_TYPES = {"mono": 1, "mixed": 1, "stereo": 2}  # mixType -> channels
METADATA_LIMIT = 8192  # bytes; the real sender caps the metadata string here
MAX_MESSAGE = 16 * 2**20  # a sender may merge seconds of audio into one message
VIOLATIONS_LISTED = 20  # per code; later ones of the same code are only counted
DTMF_KEYS = frozenset("0123456789*#ABCD")
KNOWN_TYPES = frozenset({"playDone", "mark", "error"})  # sender -> receiver text frames
KNOWN_EVENTS = frozenset({"dtmf"})
# Call attributes the real sender always puts in the metadata (listen-protocol.md §3).
USUAL_ATTRIBUTES = ("callSid", "direction", "from", "to", "callId", "callStatus", "accountSid")

# What each violation code means (the codes appear in events, logs and summaries).
VIOLATIONS = {
    "binary-before-metadata": "a binary message arrived before the JSON metadata text frame",
    "metadata-not-json": "a text frame before the metadata is not valid JSON",
    "metadata-not-object": "the metadata frame is JSON but not an object",
    "metadata-too-large": f"the metadata frame is larger than {METADATA_LIMIT} bytes",
    "sample-rate": "sampleRate is missing, not an integer, or not one of "
    + ", ".join(str(r) for r in sorted(SAMPLE_RATES)),
    "mix-type": "mixType is missing or not one of " + ", ".join(MIX_TYPES),
    "call-sid": "callSid is missing or not a non-empty string",
    "no-metadata": "the connection closed without a metadata frame",
    "partial-sample-frame": "a binary message is not a whole number of sample frames "
    "(2 bytes x channels); the remainder is carried to the next message",
    "trailing-partial-frame": "bytes of an incomplete sample frame were left at close",
    "text-not-json": "a text frame after the metadata is not valid JSON",
    "text-not-object": "a text frame after the metadata is JSON but not an object",
    "no-event-or-type": "a text frame has neither an 'event' nor a 'type' key",
    "unknown-event": "a text frame has an 'event' the protocol does not define",
    "unknown-type": "a text frame has a 'type' the protocol does not define",
    "bad-dtmf": "a dtmf frame is not {event: dtmf, dtmf: <one key>, duration: <digits string>}",
    "bad-play-done": "a playDone frame has no data object with numeric playbackSeconds "
    "and playbackMilliseconds",
    "bad-mark": "a mark frame has no data object with a string name and event "
    "'playout' or 'cleared'",
    "unknown-subprotocol": "the client offered subprotocols, none of them audio.jambonz.org "
    "or audio.drachtio.org",
}

_log = get_logger("mediaserver.receiver")

# websockets logs every request header at DEBUG (Authorization included): give it a
# logger that never enables DEBUG, whatever the root logger's level is.
_WS_LOG = logging.getLogger("mediaserver.receiver.websockets")
_WS_LOG.setLevel(logging.INFO)

_STALL_RCVBUF = 16 * 1024  # a stalled connection's kernel receive buffer (bytes)
_PENDING_EVENTS = 200  # events kept in memory before the metadata names the call


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RefusedHandshake:
    """A connection refused with HTTP 401 (the password is never kept)."""

    path: str
    reason: str  # "missing credentials" | "malformed credentials" | "wrong credentials"
    username: str | None
    remote: str


@dataclass(eq=False)
class ReceivedCall:
    """One fork as the receiver saw it: live while the socket is open, final after close.

    ``frames`` counts binary messages (whatever their size), ``samples`` the
    sample frames written to the WAV (one sample per channel each), and
    ``sizes`` the number of binary messages per size in bytes.
    ``audio`` is ``[samples, channels]`` int16, read back from the WAV at
    close (empty while the call is live or when the receiver does not keep
    audio).
    """

    call_sid: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    subprotocol: str | None = None
    offered_subprotocols: list[str] = field(default_factory=list)
    sample_rate: int = 8000
    channels: int = 1
    mix_type: str = "mono"
    audio: NDArray[np.int16] = field(default_factory=lambda: np.zeros((0, 1), np.int16))
    text_frames: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    violation_counts: dict[str, int] = field(default_factory=dict)
    close_code: int | None = None
    close_reason: str = ""
    closed_by: str | None = None  # "sender" | "receiver" | None (no close frame: dropped)
    wav_path: Path = field(default_factory=Path)
    json_path: Path = field(default_factory=Path)
    events_path: Path = field(default_factory=Path)
    authorization_ok: bool = True
    username: str | None = None
    path: str = "/"
    remote: str = ""
    frames: int = 0
    bytes: int = 0
    samples: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    opened_at: str = ""
    closed_at: str | None = None
    closed: bool = False

    @property
    def seconds(self) -> float:
        """Seconds of audio received (whole sample frames only)."""
        return self.samples / self.sample_rate if self.sample_rate > 0 else 0.0

    @property
    def violation_total(self) -> int:
        return sum(self.violation_counts.values())

    def frames_of(self, match: str | Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Text frames whose ``type`` or ``event`` is ``match`` (or that satisfy it)."""
        return [f for f in self.text_frames if _matches(f, match)]

    def summary(self) -> dict[str, Any]:
        return {
            "callSid": self.call_sid,
            "subprotocol": self.subprotocol,
            "offeredSubprotocols": self.offered_subprotocols,
            "sampleRate": self.sample_rate,
            "channels": self.channels,
            "mixType": self.mix_type,
            "frames": self.frames,
            "bytes": self.bytes,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "messageSizes": {str(k): v for k, v in sorted(self.sizes.items())},
            "textFrames": len(self.text_frames),
            "violations": self.violation_total,
            "violationCounts": dict(self.violation_counts),
            "violationsListed": self.violations,
            "closeCode": self.close_code,
            "closeReason": self.close_reason,
            "closedBy": self.closed_by,
            "authorizationOk": self.authorization_ok,
            "username": self.username,
            "path": self.path,
            "remote": self.remote,
            "openedAt": self.opened_at,
            "closedAt": self.closed_at,
            "wav": str(self.wav_path),
        }


def _matches(frame: dict[str, Any], match: str | Callable[[dict[str, Any]], bool]) -> bool:
    if isinstance(match, str):
        return frame.get("type") == match or frame.get("event") == match
    return bool(match(frame))


class _WavStream:
    """A PCM16 WAV written as audio arrives; the header is patched every second and at close."""

    HEADER_BYTES = 44

    def __init__(self, path: Path, sample_rate: int, channels: int) -> None:
        self._file: IO[bytes] = path.open("wb")
        self._rate = sample_rate
        self._channels = channels
        self._bytes_per_second = sample_rate * 2 * channels
        self.data_bytes = 0
        self._unpatched = 0
        self._file.write(self._header())

    def _header(self) -> bytes:
        block = 2 * self._channels
        return struct.pack(
            "<4sI4s4sIHHIIHH4sI",
            b"RIFF",
            min(36 + self.data_bytes, 0xFFFFFFFF),
            b"WAVE",
            b"fmt ",
            16,
            1,  # PCM
            self._channels,
            self._rate,
            self._rate * block,
            block,
            16,
            b"data",
            min(self.data_bytes, 0xFFFFFFFF),
        )

    def write(self, data: bytes | memoryview) -> None:
        self._file.write(data)  # the wire is L16 little-endian, as WAV is
        self.data_bytes += len(data)
        self._unpatched += len(data)
        if self._unpatched >= self._bytes_per_second:
            self._patch()

    def _patch(self) -> None:
        end = self._file.tell()
        self._file.seek(0)
        self._file.write(self._header())
        self._file.seek(end)
        self._unpatched = 0

    def close(self) -> None:
        if not self._file.closed:
            self._patch()
            self._file.close()


def _read_wav(path: Path, channels: int) -> NDArray[np.int16]:
    data = np.fromfile(path, dtype="<i2", offset=_WavStream.HEADER_BYTES)
    data = data[: len(data) - len(data) % channels]
    return data.astype(np.int16).reshape(-1, channels)


def load_play_message(path: Path) -> dict[str, Any]:
    """The ``playAudio`` frame that ``--play FILE`` answers with.

    A WAV file is sent as is (``audioContentType: wav``); anything else PyAV
    can decode is converted to raw L16 mono at 8000 Hz. Raises ``ValueError``
    naming the file when it cannot be read.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--play {path}: cannot read: {exc.strerror or exc}") from None
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        try:  # the check the server's playAudio makes: any sample format and rate FFmpeg reads
            decode_audio(data, wav_only=True)
        except AudioDecodeError as exc:
            raise ValueError(f"--play {path}: not a playable WAV file: {exc}") from None
        content = base64.b64encode(data).decode("ascii")
        return {"type": "playAudio", "data": {"audioContent": content, "audioContentType": "wav"}}
    pcm = _decode_to_l16_8k(path, data)
    return {
        "type": "playAudio",
        "data": {
            "audioContent": base64.b64encode(pcm).decode("ascii"),
            "audioContentType": "raw",
            "sampleRate": 8000,
        },
    }


def _decode_to_l16_8k(path: Path, data: bytes) -> bytes:
    try:
        pcm, rate = decode_audio(data)
    except AudioDecodeError as exc:
        raise ValueError(f"--play {path}: cannot decode audio: {exc}") from None
    if not pcm.size:
        raise ValueError(f"--play {path}: no audio decoded")
    return resample_whole(pcm, rate, 8000).astype("<i2").tobytes()


def _describe_sent(message: dict[str, Any] | str | bytes) -> dict[str, Any]:
    """What the events log keeps of a frame the receiver sent (no base64 payloads)."""
    if isinstance(message, bytes):
        return {"binaryBytes": len(message)}
    if isinstance(message, str):
        return {"text": message[:1000]}
    shown = dict(message)
    data = shown.get("data")
    if isinstance(data, dict) and isinstance(data.get("audioContent"), str):
        shown["data"] = {**data, "audioContent": f"<{len(data['audioContent'])} base64 chars>"}
    return {"message": shown}


class _Fork:
    """One connection: validates what arrives and writes the call's three files."""

    def __init__(self, receiver: Receiver, connection: ServerConnection) -> None:
        self.receiver = receiver
        self.connection = connection
        self.call = ReceivedCall()
        self.t0 = time.monotonic()
        self.call.opened_at = _now_iso()
        remote = connection.remote_address
        self.call.remote = f"{remote[0]}:{remote[1]}" if remote else ""
        self.log: Any = _log.bind(remote=self.call.remote)
        self.named = False
        self.pending_events: list[dict[str, Any]] = []
        self.events_file: IO[str] | None = None
        self.wav: _WavStream | None = None
        self.carry = b""
        self.counts: Counter[str] = Counter()
        self.resume = asyncio.Event()
        self.stalled = False
        self.closing: asyncio.Task[None] | None = None
        self.discarded_bytes = 0

    # -- records -----------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": _now_iso(), "t": round(time.monotonic() - self.t0, 3), "kind": kind}
        record.update(fields)
        if self.events_file is None:
            if len(self.pending_events) < _PENDING_EVENTS:  # bounded before the call has files
                self.pending_events.append(record)
        else:
            self.events_file.write(json.dumps(record, default=str) + "\n")

    def violation(self, code: str, detail: str) -> None:
        self.counts[code] += 1
        self.call.violation_counts[code] = self.counts[code]
        n = self.counts[code]
        if n <= VIOLATIONS_LISTED:
            self.call.violations.append(f"{code}: {detail}")
            self.event("violation", code=code, detail=detail)
            self.log.warning("receiver.violation", code=code, detail=detail)
        elif n == VIOLATIONS_LISTED + 1:
            self.event(
                "note",
                code="violations-counted-only",
                detail=f"further {code!r} violations are counted in the summary, not listed",
            )
        self.receiver._notify()

    # -- the handshake ------------------------------------------------------------

    def on_open(self) -> None:
        conn = self.connection
        request = conn.request
        call = self.call
        call.subprotocol = conn.subprotocol
        if request is not None:
            call.path = request.path
            offered = request.headers.get_all("Sec-WebSocket-Protocol")
            call.offered_subprotocols = [
                p.strip() for h in offered for p in h.split(",") if p.strip()
            ]
            call.username, call.authorization_ok = self.receiver._credentials_of(request.headers)
        self.event(
            "open",
            remote=call.remote,
            path=call.path,
            subprotocol=call.subprotocol,
            offeredSubprotocols=call.offered_subprotocols,
            username=call.username,
            authorization="ok" if self.receiver.auth else "not required",
        )
        if not call.offered_subprotocols:
            self.event(
                "note", code="no-subprotocol", detail="the client offered no subprotocol; accepted"
            )
        elif not set(call.offered_subprotocols) & set(SUBPROTOCOLS):
            self.violation(
                "unknown-subprotocol", f"offered {call.offered_subprotocols}; accepted without one"
            )

    # -- naming the call: files exist from here on ---------------------------------

    def name(self, call_sid: str) -> None:
        call = self.call
        call.call_sid = call_sid
        stem = self.receiver._claim_stem(call_sid)
        out = self.receiver.out_dir
        call.wav_path = out / f"{stem}.wav"
        call.json_path = out / f"{stem}.json"
        call.events_path = out / f"{stem}.events.jsonl"
        self.wav = _WavStream(call.wav_path, call.sample_rate, call.channels)
        self.events_file = call.events_path.open("w", encoding="utf-8", buffering=1)
        for record in self.pending_events:
            self.events_file.write(json.dumps(record, default=str) + "\n")
        self.pending_events.clear()
        self.write_json(summary=None)
        self.log = call_logger(call_sid, remote=call.remote)
        self.named = True
        self.receiver.calls.append(call)
        self.receiver._notify()

    def write_json(self, summary: dict[str, Any] | None) -> None:
        doc = {
            "metadata": self.call.metadata,  # as received; rejected frames are in the events
            "summary": summary if summary is not None else {"state": "live"},
        }
        tmp = self.call.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.call.json_path)

    # -- messages -----------------------------------------------------------------

    def on_text(self, text: str) -> bool:
        """Handle a text frame; True when it was the metadata frame."""
        if not self.named:
            return self.on_metadata(text)
        try:
            obj = json.loads(text)
        except ValueError:
            self.event("text", raw=text[:1000])
            self.violation("text-not-json", f"text frame is not JSON: {text[:80]!r}")
            return False
        self.event("text", message=obj)
        if not isinstance(obj, dict):
            self.violation("text-not-object", f"text frame is JSON {type(obj).__name__}")
            return False
        self.call.text_frames.append(obj)
        self.log.info("receiver.text", message=obj)
        self.check_text(obj)
        self.receiver._notify()
        return False

    def check_text(self, obj: dict[str, Any]) -> None:
        if "event" in obj:
            name = obj["event"]
            if name not in KNOWN_EVENTS:
                self.violation("unknown-event", f"event {name!r}")
            elif name == "dtmf":
                key, duration = obj.get("dtmf"), obj.get("duration")
                if not (isinstance(key, str) and key in DTMF_KEYS):
                    self.violation("bad-dtmf", f"dtmf must be one key of 0-9*#A-D, got {key!r}")
                if not (isinstance(duration, str) and duration.isdigit()):
                    self.violation(
                        "bad-dtmf",
                        f"duration must be a string of RTP timestamp units, got {duration!r}",
                    )
            return
        if "type" not in obj:
            self.violation("no-event-or-type", f"keys {sorted(obj)[:10]}")
            return
        kind, data = obj["type"], obj.get("data")
        if kind not in KNOWN_TYPES:
            self.violation("unknown-type", f"type {kind!r}")
        elif kind == "playDone":
            ok = isinstance(data, dict) and all(
                isinstance(data.get(k), int | float) and not isinstance(data.get(k), bool)
                for k in ("playbackSeconds", "playbackMilliseconds")
            )
            if not ok:
                self.violation("bad-play-done", f"data {data!r:.200}")
        elif kind == "mark" and not (
            isinstance(data, dict)
            and isinstance(data.get("name"), str)
            and data.get("event") in ("playout", "cleared")
        ):
            self.violation("bad-mark", f"data {data!r:.200}")

    def on_metadata(self, text: str) -> bool:
        try:
            obj = json.loads(text)
        except ValueError:
            self.event("text", raw=text[:1000])
            self.violation("metadata-not-json", f"first text frame is not JSON: {text[:80]!r}")
            return False
        if not isinstance(obj, dict):
            self.event("text", message=obj)
            self.violation(
                "metadata-not-object",
                f"first text frame is JSON {type(obj).__name__}, not an object",
            )
            return False
        call = self.call
        call.metadata = obj
        size = len(text.encode("utf-8"))
        if size > METADATA_LIMIT:
            self.violation("metadata-too-large", f"{size} bytes (limit {METADATA_LIMIT})")
        call.sample_rate = self.sample_rate_of(obj)
        mix = obj.get("mixType")
        if mix in MIX_TYPES:
            call.mix_type = str(mix)
        else:
            self.violation(
                "mix-type",
                "missing mixType"
                if mix is None
                else f"mixType {mix!r} is not one of {', '.join(MIX_TYPES)}; recording as mono",
            )
        call.channels = MIX_TYPES[call.mix_type]
        sid = obj.get("callSid")
        if not (isinstance(sid, str) and sid):
            sid = f"unnamed-{uuid.uuid4().hex[:12]}"
            self.violation("call-sid", f"callSid missing or invalid; using {sid}")
        missing = [k for k in USUAL_ATTRIBUTES if k not in obj]
        if missing and missing != ["callSid"]:
            self.event(
                "note",
                code="missing-call-attributes",
                detail=f"not in the metadata: {', '.join(missing)}",
            )
        self.event("metadata", message=obj, bytes=size)
        self.name(sid)
        self.log.info(
            "receiver.call_open",
            subprotocol=call.subprotocol,
            sample_rate=call.sample_rate,
            mix_type=call.mix_type,
            path=call.path,
        )
        return True

    def sample_rate_of(self, meta: dict[str, Any]) -> int:
        rate = meta.get("sampleRate")
        if isinstance(rate, int) and not isinstance(rate, bool) and rate in SAMPLE_RATES:
            return rate
        if rate is None:
            self.violation("sample-rate", "missing sampleRate; recording at 8000 Hz")
            return 8000
        usable: int | None = None
        if isinstance(rate, int) and not isinstance(rate, bool):
            usable = rate
        elif isinstance(rate, str) and rate.isdigit():
            usable = int(rate)
        if usable is not None and 0 < usable <= 384000:
            self.violation(
                "sample-rate",
                f"sampleRate {rate!r} is not one of "
                f"{sorted(SAMPLE_RATES)} as a number; recording at {usable} Hz",
            )
            return usable
        self.violation("sample-rate", f"sampleRate {rate!r} is unusable; recording at 8000 Hz")
        return 8000

    def on_binary(self, data: bytes) -> None:
        call = self.call
        if not self.named or self.wav is None:
            self.discarded_bytes += len(data)
            self.violation(
                "binary-before-metadata", f"{len(data)} bytes before the metadata frame (discarded)"
            )
            return
        n = len(data)
        call.frames += 1
        call.bytes += n
        call.sizes[n] = call.sizes.get(n, 0) + 1
        frame_bytes = 2 * call.channels
        if n % frame_bytes:
            self.violation(
                "partial-sample-frame",
                f"message {call.frames} has {n} bytes, not a multiple of "
                f"{frame_bytes} ({call.channels} channel(s) x 2 bytes)",
            )
        if self.carry:
            data = self.carry + data
        whole = len(data) - len(data) % frame_bytes
        self.carry = data[whole:]
        if whole:
            self.wav.write(memoryview(data)[:whole])
            call.samples += whole // frame_bytes
        self.receiver._notify()
        limit = self.receiver.close_after
        if limit is not None and self.closing is None and call.seconds >= limit:
            self.start_close(1000, f"close_after {limit:g} s of audio")

    def start_close(self, code: int, reason: str) -> None:
        self.event("closing", by="receiver", code=code, reason=reason)
        self.log.info("receiver.closing", code=code, reason=reason)
        self.closing = asyncio.get_running_loop().create_task(self.connection.close(code, reason))

    # -- sending ------------------------------------------------------------------

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        self.event("sent", **_describe_sent(message))
        if isinstance(message, dict):
            await self.connection.send(json.dumps(message))
        else:
            await self.connection.send(message)

    # -- the connection's life ------------------------------------------------------

    async def run(self) -> None:
        self.on_open()
        while True:
            if self.stalled:
                await self.resume.wait()
                self.stalled = False
                if self.receiver._stopping:
                    self.event(
                        "note",
                        code="stalled-at-shutdown",
                        detail="the receiver shut down while stalled; connection aborted",
                    )
                    self.connection.transport.abort()
                    self.call.close_reason = "receiver shut down while stalled"
                    await self.connection.wait_closed()
                    return
                self.event("note", code="resumed", detail="the receiver reads again")
            try:
                message = await self.connection.recv()
            except ConnectionClosed as exc:
                self.on_closed(exc)
                return
            if isinstance(message, str):
                if self.on_text(message):
                    await self.after_metadata()
            else:
                self.on_binary(message)

    async def after_metadata(self) -> None:
        receiver = self.receiver
        try:
            if receiver._play_message is not None:
                await self.send(receiver._play_message)
                self.log.info("receiver.play_sent", file=str(receiver.play))
            for message in receiver.send_on_open or ():
                await self.send(message)
        except ConnectionClosed:
            return  # the next recv() reports the close
        if receiver.stall:
            self.stalled = True
            self.event("note", code="stalled", detail="the receiver stopped reading")
            self.log.info("receiver.stalled")

    def on_closed(self, exc: ConnectionClosed) -> None:
        call = self.call
        if exc.rcvd is not None:
            call.close_code, call.close_reason = int(exc.rcvd.code), exc.rcvd.reason
            call.closed_by = "receiver" if exc.rcvd_then_sent is False else "sender"
        elif exc.sent is not None:
            call.close_code, call.close_reason = int(exc.sent.code), exc.sent.reason
            call.closed_by = "receiver"
        else:
            call.close_code, call.close_reason = 1006, "connection dropped without a close frame"

    def finish(self) -> None:
        """Close the files, write the summary; safe to call once whatever happened."""
        call = self.call
        if self.connection.close_code is not None and call.close_code is None:
            call.close_code = int(self.connection.close_code)
            call.close_reason = call.close_reason or self.connection.close_reason or ""
        if not self.named:
            self.violation(
                "no-metadata",
                "closed before any metadata frame"
                + (f" ({self.discarded_bytes} bytes discarded)" if self.discarded_bytes else ""),
            )
            self.name(f"unnamed-{uuid.uuid4().hex[:12]}")
        if self.carry:
            self.violation("trailing-partial-frame", f"{len(self.carry)} bytes left at close")
            self.carry = b""
        call.closed_at = _now_iso()
        self.event(
            "close",
            code=call.close_code,
            reason=call.close_reason,
            closedBy=call.closed_by,
            frames=call.frames,
            bytes=call.bytes,
            seconds=round(call.seconds, 3),
            violations=call.violation_total,
        )
        if self.wav is not None:
            self.wav.close()
        if self.events_file is not None:
            self.events_file.close()
        summary = call.summary()
        self.write_json(summary)
        if self.receiver.keep_audio:
            call.audio = _read_wav(call.wav_path, call.channels)
        else:
            call.audio = np.zeros((0, call.channels), np.int16)
        call.closed = True
        self.log.info(
            "receiver.call_closed",
            **{
                k: summary[k]
                for k in (
                    "seconds",
                    "frames",
                    "bytes",
                    "violations",
                    "closeCode",
                    "closedBy",
                    "wav",
                )
            },
        )


class Receiver:
    """The reference receiver as an async context manager (the real peer for tests).

    ``subprotocol`` is the one answered when offered (``audio.drachtio.org``
    is answered when only it is offered; clients offering none are accepted);
    ``None`` answers with no subprotocol at all. ``stall`` reads the metadata
    frame, sends what it has to send, then stops reading (see :meth:`resume`).
    ``close_after`` closes with 1000 once that many seconds of audio arrived.
    ``send_on_open`` frames go out right after the metadata (after ``play``).
    ``keep_audio`` reads each WAV back into ``ReceivedCall.audio`` at close;
    ``keep_finished=False`` forgets calls once closed (a long-running CLI).
    ``on_call_end`` is called with each call once its files are final.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: tuple[str, str] | None = None,
        play: Path | None = None,
        subprotocol: str | None = "audio.jambonz.org",
        stall: bool = False,
        close_after: float | None = None,
        send_on_open: Sequence[dict[str, Any] | str | bytes] | None = None,
        keep_audio: bool = True,
        keep_finished: bool = True,
        on_call_end: Callable[[ReceivedCall], None] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.host = host
        self.port = port
        self.auth = auth
        self.play = play
        self.subprotocol = subprotocol
        self.stall = stall
        self.close_after = close_after
        self.send_on_open = list(send_on_open) if send_on_open else []
        self.keep_audio = keep_audio
        self.keep_finished = keep_finished
        self.on_call_end = on_call_end
        self.calls: list[ReceivedCall] = []
        self.refused: list[RefusedHandshake] = []
        self.finished_count = 0
        self._finished: list[ReceivedCall] = []  # in closing order
        self._forks: dict[int, _Fork] = {}
        self._stems: set[str] = set()
        self._server: Server | None = None
        self._changed = asyncio.Event()
        self._waiting = 0  # coroutines in _wait: only then is a change worth signalling
        self._stopping = False
        self._play_message: dict[str, Any] | None = None

    # -- life -----------------------------------------------------------------------

    async def start(self) -> Receiver:
        """Load ``play``, create the output directory and start listening."""
        if self.play is not None:
            self._play_message = load_play_message(Path(self.play))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._changed = asyncio.Event()
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            compression=None,  # like most receivers; audio does not compress anyway
            ping_interval=None,  # the real sender never pings; neither do we
            max_size=MAX_MESSAGE,
            close_timeout=2,
            logger=_WS_LOG,
        )
        if self.stall:  # accepted sockets inherit it, so the TCP window starts small
            for sock in self._server.sockets:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _STALL_RCVBUF)
        _log.info(
            "receiver.listening",
            url=self.url,
            out=str(self.out_dir),
            auth=self.auth is not None,
            stall=self.stall,
            close_after=self.close_after,
        )
        return self

    async def close(self) -> None:
        """Stop listening, close live calls with 1001 and finish their files."""
        if self._server is None:
            return
        self._stopping = True
        for fork in list(self._forks.values()):
            fork.resume.set()  # a stalled fork aborts its connection
        self._server.close()
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout=5)
        except TimeoutError:
            for fork in list(self._forks.values()):
                fork.connection.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
        self._server = None
        _log.info("receiver.stopped", calls=self.finished_count)

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """``ws://host:port/`` of the running server."""
        if self._server is None:
            raise RuntimeError("the receiver is not running (use `async with Receiver(...)`)")
        sockname = self._server.sockets[0].getsockname()
        host = sockname[0]
        return f"ws://[{host}]:{sockname[1]}/" if ":" in host else f"ws://{host}:{sockname[1]}/"

    # -- the handshake ----------------------------------------------------------------

    def _select_subprotocol(
        self, _connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        if self.subprotocol is None:
            return None
        if self.subprotocol in offered:
            return Subprotocol(self.subprotocol)
        for name in SUBPROTOCOLS:
            if name in offered:
                return Subprotocol(name)
        return None  # none offered, or only unknown ones: accept, and the fork notes it

    def _credentials_of(self, headers: Headers) -> tuple[str | None, bool]:
        """(username from an HTTP Basic header if any, whether the credentials are right)."""
        value = headers.get("Authorization")
        username: str | None = None
        password: str | None = None
        if value is not None:
            with contextlib.suppress(InvalidHeader):
                username, password = parse_authorization_basic(value)
        if self.auth is None:
            return username, True
        ok = username == self.auth[0] and password == self.auth[1]
        return username, ok

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.auth is None:
            return None
        remote = connection.remote_address
        where = f"{remote[0]}:{remote[1]}" if remote else ""
        value = request.headers.get("Authorization")
        username, ok = self._credentials_of(request.headers)
        if ok:
            return None
        if value is None:
            reason = "missing credentials"
        elif username is None:
            reason = "malformed credentials"
        else:
            reason = "wrong credentials"
        self.refused.append(RefusedHandshake(request.path, reason, username, where))
        _log.warning(
            "receiver.auth_refused",
            reason=reason,
            username=username,
            path=request.path,
            remote=where,
        )
        response = connection.respond(HTTPStatus.UNAUTHORIZED, f"{reason}\n")
        response.headers["WWW-Authenticate"] = build_www_authenticate_basic("mediaserver receiver")
        self._notify()
        return response

    def _claim_stem(self, call_sid: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", call_sid)[:120].lstrip(".") or "unnamed"
        candidate, n = stem, 1
        while candidate in self._stems:
            n += 1
            candidate = f"{stem}-{n}"
        self._stems.add(candidate)
        return candidate

    # -- connections ------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        fork = _Fork(self, connection)
        self._forks[id(fork)] = fork
        try:
            await fork.run()
        except Exception:  # a bug here must not take the receiver down
            fork.log.exception("receiver.internal_error")
            with contextlib.suppress(Exception):
                await connection.close(1011, "receiver error")
        finally:
            self._forks.pop(id(fork), None)
            try:
                fork.finish()
            except Exception:
                fork.log.exception("receiver.finish_failed")
            call = fork.call
            call.closed = True
            self.finished_count += 1
            self._finished.append(call)
            if self.on_call_end is not None:
                try:
                    self.on_call_end(call)
                except Exception:
                    fork.log.exception("receiver.on_call_end_failed")
            if not self.keep_finished:
                self._finished.remove(call)
                with contextlib.suppress(ValueError):
                    self.calls.remove(call)
            self._notify()

    def _notify(self) -> None:
        if self._waiting:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- the API tests use ----------------------------------------------------------------

    def live_calls(self) -> list[ReceivedCall]:
        return [c for c in self.calls if not c.closed]

    def call(self, call_sid: str) -> ReceivedCall:
        """The call with that callSid (the live one, else the latest)."""
        found = [c for c in self.calls if c.call_sid == call_sid]
        if not found:
            raise LookupError(f"no call {call_sid!r}; calls: {[c.call_sid for c in self.calls]}")
        live = [c for c in found if not c.closed]
        return (live or found)[-1]

    def _fork_of(self, call_sid: str) -> _Fork:
        for fork in reversed(list(self._forks.values())):
            if fork.named and fork.call.call_sid == call_sid:
                return fork
        live = [f.call.call_sid for f in self._forks.values() if f.named]
        raise LookupError(f"no live call {call_sid!r}; live calls: {live}")

    async def send(self, call_sid: str, message: dict[str, Any] | str | bytes) -> None:
        """Send a frame to a live call: a dict as JSON text, a str as is, bytes as binary."""
        await self._fork_of(call_sid).send(message)

    def resume(self, call_sid: str) -> None:
        """Start reading a stalled call again."""
        self._fork_of(call_sid).resume.set()

    async def close_call(self, call_sid: str, code: int = 1000, reason: str = "") -> None:
        """Close a live call's socket from the receiver side (it keeps draining until closed)."""
        fork = self._fork_of(call_sid)
        if fork.closing is None:
            fork.start_close(code, reason)

    async def _wait(self, ready: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waiting += 1
        try:
            while True:
                result = ready()
                if result:
                    return result
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"after {timeout:g} s: {what()}")
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self._waiting -= 1

    def _state(self) -> str:
        return (
            f"{len(self._finished)} call(s) closed, live: "
            f"{[(c.call_sid, round(c.seconds, 2)) for c in self.live_calls()]}, "
            f"refused handshakes: {len(self.refused)}"
        )

    async def wait_for_calls(self, n: int = 1, timeout: float = 10.0) -> list[ReceivedCall]:
        """The first ``n`` calls to close (in closing order), once they have."""
        found: list[ReceivedCall] = await self._wait(
            lambda: self._finished[:n] if len(self._finished) >= n else None,
            timeout,
            lambda: f"waiting for {n} closed call(s); {self._state()}",
        )
        return found

    async def wait_for_open(self, n: int = 1, timeout: float = 10.0) -> list[ReceivedCall]:
        """The first ``n`` calls whose metadata frame arrived (live or closed)."""
        found: list[ReceivedCall] = await self._wait(
            lambda: self.calls[:n] if len(self.calls) >= n else None,
            timeout,
            lambda: f"waiting for {n} call(s) to open; {self._state()}",
        )
        return found

    async def wait_for_text(
        self,
        call_sid: str,
        match: str | Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
        *,
        count: int = 1,
    ) -> dict[str, Any]:
        """The ``count``-th text frame of the call whose type/event is ``match``."""

        def ready() -> dict[str, Any] | None:
            try:
                frames = self.call(call_sid).frames_of(match)
            except LookupError:
                return None
            return frames[count - 1] if len(frames) >= count else None

        def what() -> str:
            try:
                seen = [f.get("type") or f.get("event") for f in self.call(call_sid).text_frames]
            except LookupError:
                seen = []
            return f"waiting for text frame {match!r} #{count} on {call_sid}; seen {seen}"

        frame: dict[str, Any] = await self._wait(ready, timeout, what)
        return frame

    async def wait_for_audio(
        self, call_sid: str, seconds: float, timeout: float = 10.0
    ) -> ReceivedCall:
        """The call, once it has received at least ``seconds`` of audio."""

        def ready() -> ReceivedCall | None:
            try:
                call = self.call(call_sid)
            except LookupError:
                return None
            return call if call.seconds >= seconds else None

        def what() -> str:
            return f"waiting for {seconds:g} s of audio on {call_sid}; {self._state()}"

        call: ReceivedCall = await self._wait(ready, timeout, what)
        return call


# -- the CLI subcommand ----------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (all interfaces); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError(f"--listen: expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"--listen: write an IPv6 address as [ADDR]:PORT, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen: port must be 0..65535, got {port!r}")
    return host or "0.0.0.0", int(port)


def parse_auth(value: str) -> tuple[str, str]:
    """``USER:PASS`` (the password may contain ``:``); the value is never echoed back."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth: expected USER:PASS with a non-empty user and password")
    return user, password


def _summary_line(call: ReceivedCall) -> str:
    return (
        f"call {call.call_sid}: {call.seconds:.2f} s, {call.frames} frames, "
        f"{call.violation_total} violations -> {call.wav_path}"
    )


async def _serve_until_signal(receiver: Receiver) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    try:
        await receiver.start()
    except OSError as exc:
        print(
            f"mediaserver receiver: cannot listen on {receiver.host}:{receiver.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    print(f"receiver listening on {receiver.url} (writing to {receiver.out_dir})", flush=True)
    await stop.wait()
    await receiver.close()
    print(f"receiver stopped after {receiver.finished_count} call(s)", flush=True)
    return 0


def run_receiver(listen: str, out: str, auth: str | None, play: str | None) -> int:
    """``mediaserver receiver``: serve until SIGINT/SIGTERM; the exit status.

    2 for a bad argument (named), 1 when the address cannot be bound, else 0.
    """
    try:
        host, port = parse_listen(listen)
        credentials = parse_auth(auth) if auth is not None else None
        play_path = Path(play) if play is not None else None
        if play_path is not None:
            load_play_message(play_path)  # fail now, with a message, not per call
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--out {out}: cannot create: {exc.strerror or exc}") from None
    except ValueError as exc:
        print(f"mediaserver receiver: {exc}", file=sys.stderr)
        return 2

    def print_summary(call: ReceivedCall) -> None:
        print(_summary_line(call), flush=True)

    receiver = Receiver(
        Path(out),
        host=host,
        port=port,
        auth=credentials,
        play=play_path,
        keep_audio=False,
        keep_finished=False,
        on_call_end=print_summary,
    )
    return asyncio.run(_serve_until_signal(receiver))
