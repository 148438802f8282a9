"""Recording delivery: what happens to a recording once its file is finished.

Owns, for a finished file (``mediaserver/recording.py`` writes it):

- ``RecordingStore``, the ``[recording]`` settings: the recordings and spool
  directories, ``store_recordings``, the upload retry schedule, the HTTP time
  limit and ``max_recording_time_limit``;
- Kazoo ``record_call`` delivery (``deliver_kazoo``): the HTTP PUT/POST of the
  file to ``URL/call_recording_<CALL_ID>.<EXT>`` with retries, a spool that
  never loses a file (``resume_spool`` retries what a previous run left),
  local storage when there is no URL, and the metadata JSON written beside
  every stored recording;
- SignalWire ``record_call``: storing the file where the admin endpoint serves
  it (``store_recording``, ``recording_url_path``, ``resolve_recording``) and
  the ``status_url`` callbacks (``record_status_payload``,
  ``RecordStatusCallbacks``), posted in order and best effort.

It must not record or encode audio, parse verbs or touch the call. HTTP
failures are returned and logged, never raised into the caller. A recording
is only ever deleted after it was delivered, or deliberately when there is no
URL and ``store_recordings`` is false. Credentials in URLs are never logged.
File moves and JSON writes run in a worker thread, so a large recording never
stalls the event loop (and with it the media clock).

The spool, one directory shared by every worker process of a server:

- ``<id>.<ext>``: the recording, moved in before the first upload attempt;
- ``<id>.<ext>.json``: the delivery job beside it (target, method, the
  metadata, attempts, the last error and, after the last failure,
  ``"state": "failed"`` with the ``reason``). Written (atomically) after the
  audio is in place and removed after the audio is gone, so a crash at any
  point leaves either a job that ``resume_spool`` finishes or a stray file it
  reports; never a lost recording.

A delivery holds an exclusive ``flock`` on its audio file while it runs, so
``resume_spool`` in another worker (or twice in one process) skips it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from mediaserver.config import ConfigError
from mediaserver.hooks import safe_url
from mediaserver.logs import get_logger
from mediaserver.recording import RecordingFormat

__all__ = [
    "CONTENT_TYPES",
    "RECORDINGS_ROUTE",
    "RECORD_STATES",
    "CallFacts",
    "DeliveryResult",
    "FinishedFile",
    "FinishedRecording",
    "RecordResult",
    "RecordStatusCallbacks",
    "RecordingStore",
    "SignalWireRecording",
    "content_type_for",
    "deliver_kazoo",
    "kazoo_media_name",
    "kazoo_metadata",
    "kazoo_upload_url",
    "record_status_payload",
    "recording_file_name",
    "recording_url_path",
    "resolve_recording",
    "resume_spool",
    "store_recording",
]

CONTENT_TYPES: Mapping[str, str] = {f.value: f.content_type for f in RecordingFormat}
RECORDINGS_ROUTE = "/recordings/"
# Kazoo timestamps are Gregorian seconds (since year 0), not Unix seconds.
_GREGORIAN_UNIX_OFFSET = 62_167_219_200
_INCOMING = ".incoming"  # suffix of a recording being moved into the spool
_REDIRECTS = frozenset({301, 302, 307, 308})
_MAX_REDIRECTS = 10
# Each upload attempt may take http_timeout plus the file size at this rate.
_MIN_UPLOAD_BYTES_PER_SECOND = 64 * 1024
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._@+-]")
_URL_CREDENTIALS = re.compile(r"//[^/@\s]*@")


def content_type_for(fmt: str) -> str:
    """The Content-Type Kazoo sends for a recording in ``fmt`` (mp3, wav, mp4)."""
    return CONTENT_TYPES.get(fmt.lower(), "application/octet-stream")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RecordingStore:
    """The ``[recording]`` settings.

    Upload retry schedule: after a failed attempt ``n`` (1-based) the next one
    starts ``min(retry_delay * 2 ** (n - 1), retry_delay_max)`` seconds later,
    for ``retries`` retries (so ``1 + retries`` attempts in all). Defaults:
    6 attempts, waits of 5, 10, 20, 40, 60 s. Kazoo's own schedule (5 tries,
    5 s apart) is ``retries = 4, retry_delay_max = 5``.
    """

    directory: str = "recordings"  # stored recordings (served at /recordings/<name>)
    spool_directory: str = "recordings-spool"  # recordings waiting for their upload
    # Kazoo, no url: keep the recording in `directory` (true) or delete it (false, Kazoo's
    # default). With a url: also keep a copy after a successful upload.
    store_recordings: bool = False
    retries: int = 5
    retry_delay: float = 5.0  # seconds before the first retry; doubles for each next one
    retry_delay_max: float = 60.0
    http_timeout: float = 30.0  # seconds to connect and for each read of the answer
    max_recording_time_limit: int = 10800  # seconds; record_call time_limit is clamped to it

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, f.type, getattr(self, f.name))
        if not self.directory:
            _invalid("directory", "must not be empty", self.directory)
        if not self.spool_directory:
            _invalid("spool_directory", "must not be empty", self.spool_directory)
        if Path(self.spool_directory).resolve() == Path(self.directory).resolve():
            _invalid("spool_directory", "must differ from directory", self.spool_directory)
        if self.retries < 0:
            _invalid("retries", "must be >= 0", self.retries)
        if self.retry_delay < 0:
            _invalid("retry_delay", "must be >= 0", self.retry_delay)
        if self.retry_delay_max < self.retry_delay:
            _invalid("retry_delay_max", f"must be >= retry_delay ({self.retry_delay:g})",
                     self.retry_delay_max)  # fmt: skip
        if self.http_timeout <= 0:
            _invalid("http_timeout", "must be > 0", self.http_timeout)
        if self.max_recording_time_limit < 1:
            _invalid("max_recording_time_limit", "must be >= 1", self.max_recording_time_limit)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> RecordingStore:
        """The settings from a TOML ``[recording]`` table (unknown keys are errors)."""
        known = {f.name for f in fields(cls)}
        for key in table:
            if key not in known:
                raise ConfigError(
                    f"[recording] {key}: unknown option; [recording] has {', '.join(known)}"
                )
        values = dict(table)
        for key in ("retry_delay", "retry_delay_max", "http_timeout"):
            if isinstance(values.get(key), int) and not isinstance(values[key], bool):
                values[key] = float(values[key])
        return cls(**values)

    @property
    def recordings_path(self) -> Path:
        return Path(self.directory)

    @property
    def spool_path(self) -> Path:
        return Path(self.spool_directory)

    def retry_waits(self) -> tuple[float, ...]:
        """Seconds to wait before each retry, in order (see the class docstring)."""
        return tuple(
            min(self.retry_delay * 2.0**n, self.retry_delay_max) for n in range(self.retries)
        )

    def time_limit(self, requested: int | None) -> int:
        """A record_call ``time_limit``, clamped to ``max_recording_time_limit`` as Kazoo does;
        none requested means the maximum."""
        if requested is None or requested > self.max_recording_time_limit:
            return self.max_recording_time_limit
        return requested


def _invalid(name: str, rule: str, value: Any) -> None:
    raise ConfigError(f"[recording] {name}: {rule}, got {value!r}")


def _check_type(name: str, kind: Any, value: Any) -> None:
    if kind == "bool" and not isinstance(value, bool):
        _invalid(name, "must be true or false", value)
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        _invalid(name, "must be an integer", value)
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
        _invalid(name, "must be a number", value)
    if kind == "str" and not isinstance(value, str):
        _invalid(name, "must be a string", value)


# --------------------------------------------------------------------------- inputs


class FinishedRecording(Protocol):
    """What delivery needs to know about a finished recording file
    (``mediaserver.recording.RecordingInfo`` has this shape)."""

    @property
    def path(self) -> str | os.PathLike[str]: ...
    @property
    def format(self) -> str: ...  # file extension: mp3, wav, mp4
    @property
    def duration_ms(self) -> float: ...
    @property
    def size_bytes(self) -> int: ...  # bytes


@dataclass(frozen=True)
class FinishedFile:
    """A finished recording file (the simplest ``FinishedRecording``)."""

    path: Path
    format: str
    duration_ms: float
    size_bytes: int

    @classmethod
    def at(cls, path: str | os.PathLike[str], duration_ms: float) -> FinishedFile:
        """The file at ``path``; format from its extension, size from the disk."""
        p = Path(path)
        return cls(p, p.suffix.lstrip(".").lower(), duration_ms, p.stat().st_size)


@dataclass(frozen=True)
class CallFacts:
    """The call a Kazoo recording belongs to (metadata and upload query)."""

    call_id: str
    from_: str = ""  # "user@realm", as Kazoo's From
    to: str = ""
    direction: str = "inbound"
    caller_id_name: str = ""
    caller_id_number: str = ""
    account_id: str = ""
    cdr_id: str = ""  # empty: "<YYYYMM>-<call_id>" as Kazoo builds it
    interaction_id: str = ""


@dataclass(frozen=True)
class DeliveryResult:
    """How a delivery ended.

    ``outcome``: ``uploaded`` (2xx), ``stored`` (no URL, kept locally),
    ``discarded`` (no URL, ``store_recordings`` false), ``failed`` (every
    attempt failed: the file is in the spool, ``path``), ``skipped``
    (``resume_spool`` only: another delivery holds it).
    """

    outcome: Literal["uploaded", "stored", "discarded", "failed", "skipped"]
    path: Path | None  # where the recording is now; None once it is gone
    attempts: int = 0
    status: int | None = None  # last HTTP status seen
    error: str | None = None
    url: str = ""  # upload target, without credentials


# --------------------------------------------------------------------------- Kazoo


def kazoo_media_name(media_name: str, fmt: str) -> str:
    """The recording's ``name``: ``media_name`` with ``.<fmt>`` added unless it already
    ends so; none given means 32 random hex digits, as Kazoo does."""
    name = media_name or uuid.uuid4().hex
    return name if name.endswith(f".{fmt}") else f"{name}.{fmt}"


def _cdr_id(call: CallFacts, started_at: float) -> str:
    if call.cdr_id:
        return call.cdr_id
    return f"{datetime.fromtimestamp(started_at, UTC):%Y%m}-{call.call_id}"


def kazoo_upload_url(url: str, call: CallFacts, fmt: str, started_at: float) -> str:
    """``URL/call_recording_<CALL_ID>.<EXT>`` (``url``'s trailing ``/`` dropped), with
    Kazoo's query (from, to, caller_id_name, caller_id_number, call_id, cdr_id,
    interaction_id, account_id) only when ``url`` has no query of its own."""
    parts = urlsplit(str(URL(url)))  # yarl: percent-encoded, normalised
    name = quote(f"call_recording_{call.call_id}.{fmt}", safe="@")
    path = f"{parts.path.rstrip('/')}/{name}"
    query = parts.query or urlencode(
        [
            ("from", call.from_),
            ("to", call.to),
            ("caller_id_name", call.caller_id_name),
            ("caller_id_number", call.caller_id_number),
            ("call_id", call.call_id),
            ("cdr_id", _cdr_id(call, started_at)),
            ("interaction_id", call.interaction_id),
            ("account_id", call.account_id),
        ],
        quote_via=quote,
    )
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def kazoo_metadata(
    recording: FinishedRecording,
    call: CallFacts,
    *,
    url: str,
    media_name: str,
    label: str,
    started_at: float,
) -> dict[str, Any]:
    """The metadata document written beside a Kazoo recording.

    ``start`` is in Gregorian seconds like every Kazoo timestamp, ``duration``
    whole seconds, ``url`` the verb's URL without credentials (null without one).
    """
    fmt = recording.format.lower()
    name = kazoo_media_name(media_name, fmt)
    duration_ms = round(recording.duration_ms)
    return {
        "name": name,
        "description": f"recording {name}",
        "content_type": content_type_for(fmt),
        "media_source": "recorded",
        "from": call.from_,
        "to": call.to,
        "direction": call.direction,
        "start": int(started_at) + _GREGORIAN_UNIX_OFFSET,
        "duration": duration_ms // 1000,
        "duration_ms": duration_ms,
        "call_id": call.call_id,
        "url": safe_url(url) if url else None,
        "origin": f"callflow : {label}",
    }


async def deliver_kazoo(
    store: RecordingStore,
    recording: FinishedRecording,
    call: CallFacts,
    *,
    url: str = "",
    method: str = "put",
    media_name: str = "",
    label: str = "",
    started_at: float | None = None,
    session: aiohttp.ClientSession | None = None,
    log: Any = None,
) -> DeliveryResult:
    """Deliver a finished Kazoo recording; the result says how it ended.

    With ``url``: the file moves into the spool, then is sent with ``method``
    (put/post) on the retry schedule; after a 2xx it is deleted, or moved to
    the recordings directory (with its metadata) when ``store_recordings``.
    After the last failure it stays in the spool with its job JSON saying why,
    and ``recording.upload_failed`` is logged. Without ``url``: stored with its
    metadata, or deleted when ``store_recordings`` is false.
    ``started_at`` (Unix seconds) defaults to now minus the duration.
    Runs for as long as the schedule takes: start it as a task. Cancelling it
    leaves the recording in the spool for ``resume_spool``.
    """
    log = log if log is not None else get_logger()
    fmt = recording.format.lower()
    source = Path(recording.path)
    if started_at is None:
        started_at = time.time() - recording.duration_ms / 1000
    metadata = kazoo_metadata(
        recording, call, url=url, media_name=media_name, label=label, started_at=started_at
    )
    store_name = f"{_name_part('call_recording_' + call.call_id)}.{fmt}"
    if not url:
        return await _keep_or_discard(store, source, store_name, metadata, log)
    verb = method.upper()
    if verb not in ("PUT", "POST"):
        raise ValueError(f"record_call method: put or post, got {method!r}")
    target = kazoo_upload_url(url, call, fmt, started_at)

    spool = store.spool_path
    audio = spool / f"{_name_part(call.call_id)}-{uuid.uuid4().hex[:12]}.{fmt}"
    # In under a hidden name, locked, then renamed: resume_spool never sees it unclaimed.
    incoming = audio.with_name(f".{audio.name}{_INCOMING}")
    try:
        await asyncio.to_thread(_into_spool, source, incoming)
    except OSError as exc:
        log.error("recording.spool_failed", path=str(source), spool=str(spool), error=str(exc))
        return DeliveryResult(
            "failed", source if source.exists() else None, error=f"cannot spool: {exc}",
            url=safe_url(target),
        )  # fmt: skip
    job = {
        "recording": audio.name,
        "target": target,
        "method": verb,
        "content_type": content_type_for(fmt),
        "store_name": store_name,
        "metadata": metadata,
        "state": "pending",
        "attempts": 0,
        "spooled_at": _now_iso(),
    }
    with _claim(incoming) as claimed:
        if not claimed:  # cannot happen: nobody else knows the name
            return DeliveryResult("skipped", incoming, url=safe_url(target))
        try:
            os.rename(incoming, audio)
            await asyncio.to_thread(_write_json, _job_path(audio), job)
        except OSError as exc:
            where = audio if audio.exists() else incoming
            log.error("recording.spool_failed", path=str(where), error=str(exc))
            return DeliveryResult("failed", where, error=f"cannot spool: {exc}",
                                  url=safe_url(target))  # fmt: skip
        return await _send_job(store, audio, job, session, log)


async def resume_spool(
    store: RecordingStore, *, session: aiohttp.ClientSession | None = None, log: Any = None
) -> list[DeliveryResult]:
    """Retry every delivery a previous run left in the spool (call it at start-up).

    Each job gets the full retry schedule again. Jobs another delivery holds
    right now are skipped (not listed in the result). Recordings without a job
    (a crash between the move and the job write) are reported as
    ``recording.spool_orphan`` and left alone; jobs whose recording is gone (a
    crash after a delivery) are removed.
    """
    log = log if log is not None else get_logger()
    spool = store.spool_path
    if not spool.is_dir():
        return []
    listing = sorted(spool.iterdir())
    entries = [p for p in listing if not p.name.startswith(".")]
    job_paths = [p for p in entries if p.name.endswith(".json")]
    jobs = {p.name for p in job_paths}
    strays = [p for p in listing if p.name.startswith(".") and p.name.endswith(_INCOMING)]
    for audio in entries + strays:
        if audio.name.endswith(".json") or f"{audio.name}.json" in jobs or not audio.is_file():
            continue
        with _claim(audio) as claimed:
            if claimed and not _job_path(audio).exists():
                log.warning("recording.spool_orphan", path=str(audio))
    results: list[DeliveryResult] = []
    for job_path in job_paths:
        audio = job_path.with_name(job_path.name.removesuffix(".json"))
        with _claim(audio) as claimed:
            if not claimed:
                if not audio.exists() and job_path.exists():
                    job_path.unlink(missing_ok=True)
                    log.info("recording.spool_stale", path=str(job_path))
                continue
            try:
                job = json.loads(job_path.read_text(encoding="utf-8"))
                if not isinstance(job, dict):
                    raise ValueError("not a JSON object")
            except FileNotFoundError:
                continue  # delivered meanwhile
            except (OSError, ValueError) as exc:
                log.error("recording.spool_unreadable", path=str(job_path), error=str(exc))
                continue
            log.info("recording.upload_resumed", url=safe_url(str(job.get("target", ""))),
                     path=str(audio), attempts_before=job.get("attempts", 0))  # fmt: skip
            results.append(await _send_job(store, audio, job, session, log))
    return results


async def _send_job(
    store: RecordingStore,
    audio: Path,
    job: dict[str, Any],
    session: aiohttp.ClientSession | None,
    log: Any,
) -> DeliveryResult:
    """Run the retry schedule for the spooled ``audio``; the caller holds its claim."""
    target = str(job["target"])
    shown = safe_url(target)
    job_path = _job_path(audio)
    waits = store.retry_waits()
    status: int | None = None
    error: str | None = None
    tries = 0
    own = session is None
    http = session if session is not None else aiohttp.ClientSession()
    try:
        while True:
            if urlsplit(target).scheme not in ("http", "https"):
                status, error = None, "unsupported URL scheme (http or https only)"
                break
            status, error = await _upload_once(
                http, str(job["method"]), target, audio, str(job["content_type"]),
                store.http_timeout,
            )  # fmt: skip
            tries += 1
            job["attempts"] = int(job.get("attempts", 0)) + 1
            if error is None:
                return await _uploaded(store, audio, job, status, tries, log)
            job.update(last_error=error, last_status=status, last_attempt_at=_now_iso())
            if tries > len(waits):
                break
            await asyncio.to_thread(_write_json, job_path, job)
            log.warning("recording.upload_retry", url=shown, attempt=tries, error=error,
                        retry_in=waits[tries - 1])  # fmt: skip
            await asyncio.sleep(waits[tries - 1])
    finally:
        if own:
            await http.close()
    job.update(state="failed", reason=error, failed_at=_now_iso())
    await asyncio.to_thread(_write_json, job_path, job)
    log.error("recording.upload_failed", url=shown, method=job["method"], attempts=tries,
              status=status, error=error, spool=str(audio))  # fmt: skip
    return DeliveryResult("failed", audio, tries, status, error, shown)


async def _uploaded(
    store: RecordingStore,
    audio: Path,
    job: dict[str, Any],
    status: int | None,
    tries: int,
    log: Any,
) -> DeliveryResult:
    shown = safe_url(str(job["target"]))
    kept: Path | None = None
    try:
        if store.store_recordings:
            kept = await asyncio.to_thread(
                _store_with_metadata, store, audio, str(job["store_name"]), job["metadata"]
            )
        else:
            audio.unlink(missing_ok=True)
    except OSError as exc:  # delivered, so not retried; the file stays in the spool
        log.error("recording.store_failed", path=str(audio), error=str(exc))
        kept = audio
    _job_path(audio).unlink(missing_ok=True)
    log.info("recording.uploaded", url=shown, method=job["method"], status=status,
             attempts=tries, stored=str(kept) if kept else None)  # fmt: skip
    return DeliveryResult("uploaded", kept, tries, status, None, shown)


async def _keep_or_discard(
    store: RecordingStore, source: Path, name: str, metadata: dict[str, Any], log: Any
) -> DeliveryResult:
    if not store.store_recordings:
        source.unlink(missing_ok=True)
        log.info("recording.discarded", path=str(source),
                 reason="no url and store_recordings is false")  # fmt: skip
        return DeliveryResult("discarded", None)
    try:
        kept = await asyncio.to_thread(_store_with_metadata, store, source, name, metadata)
    except OSError as exc:
        log.error("recording.store_failed", path=str(source), error=str(exc))
        return DeliveryResult("failed", source if source.exists() else None, error=str(exc))
    log.info("recording.stored", path=str(kept))
    return DeliveryResult("stored", kept)


async def _upload_once(
    session: aiohttp.ClientSession,
    method: str,
    target: str,
    audio: Path,
    content_type: str,
    http_timeout: float,
) -> tuple[int | None, str | None]:
    """One attempt: send ``audio`` (streamed from disk), following redirects with the
    same method and body. Returns (last status, error or None on a 2xx).

    Redirects are followed here, not by aiohttp, because aiohttp turns a POST
    answered with 301/302 into a GET without body, whose 2xx would then count
    as a delivery. 303 (or any other 3xx) is a failure: the upload did not land.
    """
    url = URL(target, encoded=True)
    try:
        size = audio.stat().st_size
    except OSError as exc:
        return None, f"cannot read the recording: {exc}"
    timeout = aiohttp.ClientTimeout(
        total=http_timeout + size / _MIN_UPLOAD_BYTES_PER_SECOND,
        sock_connect=http_timeout,
        sock_read=http_timeout,
    )
    status: int | None = None
    try:
        for _ in range(_MAX_REDIRECTS + 1):
            with audio.open("rb") as body:
                async with session.request(
                    method, url, data=body, headers={"Content-Type": content_type},
                    allow_redirects=False, timeout=timeout,
                ) as resp:  # fmt: skip
                    status = resp.status
                    location = resp.headers.get("Location")
            if status in _REDIRECTS and location:
                url = _redirect_target(url, location)
                continue
            return status, None if 200 <= status < 300 else f"HTTP {status}"
        return status, f"more than {_MAX_REDIRECTS} redirects"
    except TimeoutError:
        return status, f"no answer in {timeout.total:g} s"
    except aiohttp.ClientError as exc:
        return status, _URL_CREDENTIALS.sub("//", f"request failed: {exc}")
    except OSError as exc:
        return status, f"cannot read the recording: {exc}"


def _redirect_target(current: URL, location: str) -> URL:
    """``location`` resolved against ``current``; same-origin hops keep the credentials."""
    nxt = current.join(URL(location))
    if current.user is not None and nxt.user is None and nxt.origin() == current.origin():
        nxt = nxt.with_user(current.user).with_password(current.password)
    return nxt


# --------------------------------------------------------------------------- files


def _name_part(text: str) -> str:
    """``text`` reduced to characters safe in a file name and a URL path segment."""
    cleaned = _UNSAFE_NAME_CHARS.sub("_", text).lstrip(".")
    return cleaned[:120] or "recording"


def _job_path(audio: Path) -> Path:
    return audio.with_name(f"{audio.name}.json")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def _claim(audio: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``audio`` (True), or False when it is gone or taken."""
    try:
        fd = os.open(audio, os.O_RDONLY)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        # Locked after its delivery unlinked it: nothing left to do.
        yield os.fstat(fd).st_nlink > 0
    finally:
        os.close(fd)


def _write_json(path: Path, data: Mapping[str, Any], mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _move(source: Path, dest: Path) -> None:
    """Move ``source`` to ``dest``; across file systems it appears at ``dest`` whole
    (copied under a hidden name, then renamed) before ``source`` is removed."""
    try:
        os.replace(source, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    part = dest.with_name(f".{dest.name}.part")
    try:
        shutil.copyfile(source, part)
        with part.open("rb") as copied:
            os.fsync(copied.fileno())
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    source.unlink()


def _into_spool(source: Path, audio: Path) -> None:
    audio.parent.mkdir(parents=True, exist_ok=True)
    _move(source, audio)


def _reserve(directory: Path, name: str) -> Path:
    """A new file ``name`` in ``directory`` (``stem-2.ext``, ... when taken), created empty."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    n = 1
    while True:
        candidate = directory / (name if n == 1 else f"{stem}-{n}{dot}{ext}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            n += 1
            continue
        return candidate


def _store_with_metadata(
    store: RecordingStore, source: Path, name: str, metadata: Mapping[str, Any]
) -> Path:
    directory = store.recordings_path
    directory.mkdir(parents=True, exist_ok=True)
    dest = _reserve(directory, name)
    meta = _job_path(dest)
    try:
        _write_json(meta, metadata, mode=0o644)
        _move(source, dest)
    except BaseException:
        meta.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
        raise
    return dest


# --------------------------------------------------------------------------- served files


def recording_file_name(stem: str, fmt: str) -> str:
    """A file name for a stored recording, safe on disk and in a URL path."""
    return f"{_name_part(stem)}.{fmt.lower()}"


def store_recording(store: RecordingStore, recording: FinishedRecording, name: str) -> Path:
    """Move a finished recording into the recordings directory as ``name`` (from
    ``recording_file_name``; an existing file of that name is replaced), where
    ``resolve_recording`` finds it. Blocking: call it via ``asyncio.to_thread``."""
    if not _servable(name):
        raise ValueError(f"not a recording file name: {name!r}")
    directory = store.recordings_path
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / name
    _move(Path(recording.path), dest)
    return dest


def recording_url_path(name: str) -> str:
    """The admin endpoint path a stored recording is served at: ``/recordings/<name>``."""
    return RECORDINGS_ROUTE + quote(name, safe="@+")


def _servable(name: str) -> bool:
    return (
        0 < len(name) <= 255
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
        and name.isprintable()
        and name.rpartition(".")[2].lower() in CONTENT_TYPES
    )


def resolve_recording(store: RecordingStore, url_path: str) -> Path | None:
    """The file a ``/recordings/<name>`` request path names, or None (answer 404).

    Only a regular recording file (mp3, wav, mp4; not hidden) directly inside
    the recordings directory: ``..``, absolute paths, sub-directories, encoded
    slashes and symlinks that lead outside the directory are all refused.
    """
    path = url_path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith(RECORDINGS_ROUTE):
        return None
    name = unquote(path[len(RECORDINGS_ROUTE) :])
    if not _servable(name):
        return None
    try:
        directory = store.recordings_path.resolve(strict=True)
        found = (directory / name).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if found.parent != directory or not found.is_file():
        return None
    return found


# --------------------------------------------------------------------------- SignalWire

RecordState = Literal["recording", "paused", "finished", "no_input", "error"]
RECORD_STATES: tuple[RecordState, ...] = ("recording", "paused", "finished", "no_input", "error")


@dataclass(frozen=True)
class SignalWireRecording:
    """Who a SignalWire ``record_call`` status event is about."""

    call_id: str
    control_id: str
    node_id: str = ""
    project_id: str = ""
    space_id: str = ""
    swml_session_id: str = ""  # event_channel is "swml:<this>"


@dataclass(frozen=True)
class RecordResult:
    """``params.record`` of a ``finished`` event."""

    url: str
    duration: float  # seconds
    size: int  # bytes
    format: str

    @classmethod
    def of(cls, recording: FinishedRecording, url: str) -> RecordResult:
        return cls(
            url, recording.duration_ms / 1000, recording.size_bytes, recording.format.lower()
        )


def record_status_payload(
    state: RecordState,
    recording: SignalWireRecording,
    *,
    timestamp: float,
    record: RecordResult | None = None,
) -> dict[str, Any]:
    """The ``calling.call.record`` event POSTed to ``status_url``; ``record`` is required
    with ``finished`` and refused with any other state."""
    if state not in RECORD_STATES:
        raise ValueError(f"record state: one of {', '.join(RECORD_STATES)}, got {state!r}")
    if (state == "finished") != (record is not None):
        raise ValueError("record: given with state 'finished' and only then")
    params: dict[str, Any] = {
        "call_id": recording.call_id,
        "node_id": recording.node_id,
        "control_id": recording.control_id,
        "state": state,
    }
    if record is not None:
        params["record"] = {
            "url": record.url,
            "duration": record.duration,
            "size": record.size,
            "format": record.format,
        }
    return {
        "event_type": "calling.call.record",
        "event_channel": f"swml:{recording.swml_session_id}",
        "timestamp": timestamp,
        "project_id": recording.project_id,
        "space_id": recording.space_id,
        "params": params,
    }


class RecordStatusCallbacks:
    """One recording's ``status_url`` events, POSTed as JSON in the order reported.

    ``report`` only queues (it never blocks nor raises for the network); one
    task at a time posts the queue, so ``recording`` reaches the receiver
    before ``finished``. Each event gets at most one retry; failures are logged
    as ``recording.status_failed`` and dropped (delivery is best effort).
    """

    def __init__(
        self,
        status_url: str,
        recording: SignalWireRecording,
        *,
        timeout: float = 3.0,
        retry_delay: float = 0.5,
        session: aiohttp.ClientSession | None = None,
        log: Any = None,
    ) -> None:
        self.status_url = status_url
        self.recording = recording
        self.timeout = timeout
        self.retry_delay = retry_delay
        self._session = session
        self._log = log if log is not None else get_logger()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def report(
        self, state: RecordState, record: RecordResult | None = None, *, now: float | None = None
    ) -> None:
        """Queue the event for ``state`` (stamped now) and make sure it gets posted."""
        payload = record_status_payload(
            state, self.recording, timestamp=time.time() if now is None else now, record=record
        )
        self._queue.append(payload)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._post_queued())

    async def drain(self) -> None:
        """Wait until every event reported so far was posted (or given up on)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _post_queued(self) -> None:
        own = self._session is None
        session = self._session if self._session is not None else aiohttp.ClientSession()
        try:
            while self._queue:
                await self._post(session, self._queue.popleft())
        finally:
            if own:
                await session.close()

    async def _post(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> None:
        state = payload["params"]["state"]
        error = ""
        for attempt in (1, 2):
            try:
                async with session.post(
                    self.status_url, json=payload, timeout=aiohttp.ClientTimeout(self.timeout)
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self._log.info("recording.status_sent", url=safe_url(self.status_url),
                                       state=state, status=resp.status)  # fmt: skip
                        return
                    error = f"HTTP {resp.status}"
            except TimeoutError:
                error = f"no answer in {self.timeout:g} s"
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                error = _URL_CREDENTIALS.sub("//", f"request failed: {exc}")
            if attempt == 1:
                await asyncio.sleep(self.retry_delay)
        self._log.warning(
            "recording.status_failed",
            url=safe_url(self.status_url),
            state=state,
            control_id=self.recording.control_id,
            attempts=2,
            error=error,
        )
