"""Recording delivery against a real aiohttp receiver: Kazoo uploads (paths, bodies,
retries, spool, redirects, resume), local storage and metadata, SignalWire status
callbacks, and the recordings path resolver."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mediaserver.config import ConfigError
from mediaserver.logs import configure_logging
from mediaserver.recording_delivery import (
    CallFacts,
    FinishedFile,
    RecordingStore,
    RecordResult,
    RecordStatusCallbacks,
    SignalWireRecording,
    deliver_kazoo,
    record_status_payload,
    recording_file_name,
    recording_url_path,
    resolve_recording,
    resume_spool,
    store_recording,
)

GREGORIAN_UNIX_OFFSET = 62_167_219_200  # seconds from 0000-01-01 to 1970-01-01
CALL = CallFacts(
    call_id="a1b2 c3@10.0.0.1",
    from_="1000@example.com",
    to="2000@example.com",
    direction="inbound",
    caller_id_name="Alice Smith",
    caller_id_number="+15550001000",
    account_id="acc123",
    interaction_id="63800000000-abcd",
)
STARTED = 1_700_000_000.0  # 2023-11-14 UTC


@dataclass
class Receiver:
    """A recording server: answers with ``statuses`` in turn (then 201), records requests."""

    base: str = ""
    statuses: list[int] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0  # seconds before answering the first request
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append({"method": request.method, "path": request.path,
                          "query": dict(request.query), "body": body,
                          "content_type": request.headers.get("Content-Type"),
                          "auth": request.headers.get("Authorization"),
                          "length": request.headers.get("Content-Length")})  # fmt: skip
        self.arrived.set()
        if self.delay and len(self.seen) == 1:
            await asyncio.sleep(self.delay)
        if request.path.startswith("/old/"):
            moved = request.url.with_path("/new/" + request.path.removeprefix("/old/"))
            raise web.HTTPFound(str(moved.with_query(request.query)))  # absolute Location
        return web.Response(status=self.statuses.pop(0) if self.statuses else 201)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", rx.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rx.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rx
    await runner.cleanup()


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(
        directory=str(tmp_path / "recordings"),
        spool_directory=str(tmp_path / "spool"),
        retries=3,
        retry_delay=0.01,
        retry_delay_max=0.02,
        http_timeout=5,
    )


@pytest.fixture
def logs() -> io.StringIO:
    out = io.StringIO()
    configure_logging("INFO", json=True, stream=out)
    return out


def events(out: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in out.getvalue().splitlines())
    return [e for e in lines if e["event"] == name]


def finished(tmp_path: Path, fmt: str = "mp3", size: int = 200_000) -> tuple[FinishedFile, bytes]:
    """A finished recording of ``size`` random bytes (several upload chunks)."""
    data = os.urandom(size)
    path = tmp_path / "out" / f"rec.{fmt}"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return FinishedFile.at(path, duration_ms=12_345), data


def spool_files(store: RecordingStore) -> list[str]:
    spool = store.spool_path
    return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


# ---------------------------------------------------------------- Kazoo upload


async def test_put_lands_at_call_recording_path_with_kazoo_query(
    receiver: Receiver, store: RecordingStore, tmp_path: Path
) -> None:
    rec, data = finished(tmp_path, "mp3")
    result = await deliver_kazoo(store, rec, CALL, url=receiver.base + "/kzr/", started_at=STARTED)
    assert result.outcome == "uploaded" and result.attempts == 1 and result.status == 201
    [req] = receiver.seen
    assert req["method"] == "PUT"
    assert req["path"] == "/kzr/call_recording_a1b2 c3@10.0.0.1.mp3"  # trailing / stripped
    assert req["content_type"] == "audio/mpeg"
    assert req["body"] == data and req["length"] == str(len(data))  # sized, not chunked
    assert req["query"] == {
        "from": "1000@example.com", "to": "2000@example.com", "caller_id_name": "Alice Smith",
        "caller_id_number": "+15550001000", "call_id": "a1b2 c3@10.0.0.1",
        "cdr_id": "202311-a1b2 c3@10.0.0.1", "interaction_id": "63800000000-abcd",
        "account_id": "acc123",
    }  # fmt: skip
    # Delivered and not stored: nothing left anywhere.
    assert not rec.path.exists() and spool_files(store) == []
    assert result.path is None and not store.recordings_path.exists()


async def test_post_keeps_the_urls_own_query_and_sends_wav(
    receiver: Receiver, store: RecordingStore, tmp_path: Path
) -> None:
    rec, data = finished(tmp_path, "wav")
    result = await deliver_kazoo(store, rec, CALL, url=receiver.base + "/in?token=s3cret",
                                 method="post", started_at=STARTED)  # fmt: skip
    assert result.outcome == "uploaded"
    [req] = receiver.seen
    assert (req["method"], req["content_type"]) == ("POST", "audio/wav")
    assert req["path"] == "/in/call_recording_a1b2 c3@10.0.0.1.wav"
    assert req["query"] == {"token": "s3cret"}
    assert req["body"] == data


async def test_two_failures_then_success_takes_three_attempts_and_stores_with_metadata(
    receiver: Receiver, tmp_path: Path, logs: io.StringIO
) -> None:
    store = RecordingStore(directory=str(tmp_path / "recordings"),
                           spool_directory=str(tmp_path / "spool"), store_recordings=True,
                           retries=5, retry_delay=0.01, retry_delay_max=0.05)  # fmt: skip
    receiver.statuses = [500, 500, 200]
    rec, data = finished(tmp_path, "mp3")
    result = await deliver_kazoo(
        store, rec, CALL, url=receiver.base + "/r", media_name="board-meeting", label="sales",
        started_at=STARTED,
    )  # fmt: skip
    assert result.outcome == "uploaded" and result.attempts == 3 and result.status == 200
    assert [r["body"] == data for r in receiver.seen] == [True, True, True]
    assert spool_files(store) == []
    assert result.path is not None and result.path.parent == store.recordings_path
    assert result.path.read_bytes() == data
    meta = json.loads(result.path.with_name(result.path.name + ".json").read_text())
    assert meta == {
        "name": "board-meeting.mp3",
        "description": "recording board-meeting.mp3",
        "content_type": "audio/mpeg",
        "media_source": "recorded",
        "from": CALL.from_,
        "to": CALL.to,
        "direction": "inbound",
        "start": int(STARTED) + GREGORIAN_UNIX_OFFSET,
        "duration": 12,
        "duration_ms": 12_345,
        "call_id": CALL.call_id,
        "url": receiver.base + "/r",
        "origin": "callflow : sales",
    }
    assert len(events(logs, "recording.upload_retry")) == 2
    assert events(logs, "recording.uploaded")[0]["attempts"] == 3


async def test_a_receiver_that_always_fails_leaves_the_file_in_the_spool_with_its_reason(
    receiver: Receiver, store: RecordingStore, tmp_path: Path, logs: io.StringIO
) -> None:
    receiver.statuses = [503] * 10
    rec, data = finished(tmp_path, "mp3")
    url = receiver.base.replace("http://", "http://user:pa55word@") + "/r"
    result = await deliver_kazoo(store, rec, CALL, url=url, started_at=STARTED)
    assert result.outcome == "failed" and result.attempts == 4  # 1 + retries
    assert len(receiver.seen) == 4 and receiver.seen[0]["auth"] is not None
    assert result.path is not None and result.path.read_bytes() == data  # nothing lost
    assert spool_files(store) == sorted([result.path.name, result.path.name + ".json"])
    job = json.loads(result.path.with_name(result.path.name + ".json").read_text())
    assert job["state"] == "failed" and job["reason"] == "HTTP 503" and job["attempts"] == 4
    assert job["metadata"]["url"] == receiver.base + "/r"  # no credentials in the metadata
    [failed] = events(logs, "recording.upload_failed")
    assert failed["url"].startswith(receiver.base + "/r/call_recording_")
    assert failed["attempts"] == 4 and failed["spool"] == str(result.path)
    assert "pa55word" not in logs.getvalue()


async def test_redirects_are_followed_with_the_same_method_and_body(
    receiver: Receiver, store: RecordingStore, tmp_path: Path
) -> None:
    url = receiver.base.replace("http://", "http://user:pw@") + "/old/x"
    for method in ("put", "post"):
        rec, data = finished(tmp_path, "mp3")
        result = await deliver_kazoo(store, rec, CALL, url=url, method=method,
                                     started_at=STARTED)  # fmt: skip
        assert result.outcome == "uploaded" and result.attempts == 1
        moved = receiver.seen[-1]
        assert moved["path"] == "/new/x/call_recording_a1b2 c3@10.0.0.1.mp3"
        assert moved["method"] == method.upper() and moved["body"] == data
        assert moved["auth"] == receiver.seen[-2]["auth"] is not None  # same origin: same user


async def test_resume_spool_sends_what_an_interrupted_run_left(
    receiver: Receiver, tmp_path: Path
) -> None:
    slow = RecordingStore(directory=str(tmp_path / "recordings"),
                          spool_directory=str(tmp_path / "spool"), retry_delay=30)  # fmt: skip
    receiver.statuses = [500]
    rec, data = finished(tmp_path, "mp3")
    task = asyncio.create_task(deliver_kazoo(slow, rec, CALL, url=receiver.base + "/r"))
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    await asyncio.sleep(0.05)
    task.cancel()  # the process dies while waiting to retry
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(spool_files(slow)) == 2 and not rec.path.exists()

    results = await resume_spool(slow)  # next start-up; the receiver now accepts
    assert [r.outcome for r in results] == ["uploaded"]
    assert receiver.seen[-1]["body"] == data and len(receiver.seen) == 2
    assert receiver.seen[-1]["path"] == "/r/call_recording_a1b2 c3@10.0.0.1.mp3"
    assert spool_files(slow) == []


async def test_two_resumes_at_once_upload_a_leftover_once(
    receiver: Receiver, store: RecordingStore, tmp_path: Path
) -> None:
    receiver.statuses = [500] * 4
    rec, data = finished(tmp_path, "mp3")
    assert (await deliver_kazoo(store, rec, CALL, url=receiver.base + "/r")).outcome == "failed"
    receiver.seen.clear()
    receiver.delay = 0.2  # the first resume holds the file while the second looks
    first, second = await asyncio.gather(resume_spool(store), resume_spool(store))
    assert sorted(len(r) for r in (first, second)) == [0, 1]
    assert len(receiver.seen) == 1 and receiver.seen[0]["body"] == data
    assert spool_files(store) == []


async def test_without_url_the_recording_is_stored_or_deleted(
    tmp_path: Path, logs: io.StringIO
) -> None:
    keep = RecordingStore(directory=str(tmp_path / "keep"), spool_directory=str(tmp_path / "sp"),
                          store_recordings=True)  # fmt: skip
    rec, data = finished(tmp_path, "wav")
    stored = await deliver_kazoo(keep, rec, CALL, label="main", started_at=STARTED)
    assert stored.outcome == "stored" and stored.path is not None
    assert stored.path.read_bytes() == data and not rec.path.exists()
    meta = json.loads(stored.path.with_name(stored.path.name + ".json").read_text())
    assert meta["url"] is None and meta["content_type"] == "audio/wav"
    assert meta["name"].endswith(".wav") and len(meta["name"]) == 32 + 4  # random hex + .wav
    assert meta["origin"] == "callflow : main"
    rec2, _ = finished(tmp_path, "wav")  # same call again: a second file, not an overwrite
    again = await deliver_kazoo(keep, rec2, CALL, started_at=STARTED)
    assert again.path is not None and again.path != stored.path and stored.path.exists()

    drop = RecordingStore(directory=str(tmp_path / "drop"), spool_directory=str(tmp_path / "sp"))
    rec3, _ = finished(tmp_path, "wav")
    gone = await deliver_kazoo(drop, rec3, CALL)
    assert gone.outcome == "discarded" and gone.path is None and not rec3.path.exists()
    assert not drop.recordings_path.exists()
    assert events(logs, "recording.discarded")[0]["path"] == str(rec3.path)


# ---------------------------------------------------------------- settings


def test_settings_validate_and_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^\[recording\] retries: must be >= 0, got -1$"):
        RecordingStore(retries=-1)
    with pytest.raises(ConfigError, match=r"\[recording\] http_timeout: must be > 0"):
        RecordingStore(http_timeout=0)
    with pytest.raises(ConfigError, match=r"\[recording\] spool_directory: must differ"):
        RecordingStore(directory="x", spool_directory="x")
    with pytest.raises(ConfigError, match=r"\[recording\] retries: must be an integer"):
        RecordingStore.from_table({"retries": "5"})
    with pytest.raises(ConfigError, match=r"\[recording\] colour: unknown option"):
        RecordingStore.from_table({"colour": "red"})
    table = RecordingStore.from_table({"retry_delay": 2, "store_recordings": True})
    assert table.retry_delay == 2.0 and table.store_recordings


def test_default_schedule_backs_off_and_time_limit_is_clamped() -> None:
    default = RecordingStore()
    assert default.retry_waits() == (5.0, 10.0, 20.0, 40.0, 60.0)
    assert RecordingStore(retries=4, retry_delay_max=5).retry_waits() == (5.0,) * 4
    assert default.time_limit(20_000) == 10800 and default.time_limit(1200) == 1200
    assert default.time_limit(None) == 10800


# ---------------------------------------------------------------- SignalWire


SW = SignalWireRecording(
    call_id="call-1",
    control_id="ctl-1",
    node_id="node-1",
    project_id="proj-1",
    space_id="space-1",
    swml_session_id="sess-1",
)


@pytest.mark.parametrize("state", ["recording", "paused", "no_input", "error"])
def test_status_payload_without_record(state: Any) -> None:
    payload = record_status_payload(state, SW, timestamp=1640000000.123)
    assert payload == {
        "event_type": "calling.call.record",
        "event_channel": "swml:sess-1",
        "timestamp": 1640000000.123,
        "project_id": "proj-1",
        "space_id": "space-1",
        "params": {"call_id": "call-1", "node_id": "node-1", "control_id": "ctl-1",
                   "state": state},
    }  # fmt: skip
    with pytest.raises(ValueError, match="record"):
        record_status_payload(state, SW, timestamp=0, record=RecordResult("u", 1.0, 2, "wav"))


def test_status_payload_finished_carries_the_record(tmp_path: Path) -> None:
    rec, _ = finished(tmp_path, "wav", size=4321)
    result = RecordResult.of(rec, "http://media:8081/recordings/x.wav")
    payload = record_status_payload("finished", SW, timestamp=5.5, record=result)
    assert payload["params"]["state"] == "finished"
    assert payload["params"]["record"] == {
        "url": "http://media:8081/recordings/x.wav",
        "duration": 12.345,
        "size": 4321,
        "format": "wav",
    }
    with pytest.raises(ValueError, match="record"):
        record_status_payload("finished", SW, timestamp=0)


async def test_status_callbacks_arrive_in_order(receiver: Receiver) -> None:
    receiver.delay = 0.2  # "recording" is answered slowly; "finished" must still come second
    callbacks = RecordStatusCallbacks(receiver.base + "/status", SW)
    callbacks.report("recording", now=1.0)
    callbacks.report("finished", RecordResult("http://m/recordings/a.wav", 2.5, 80_044, "wav"),
                     now=2.0)  # fmt: skip
    await callbacks.drain()
    bodies = [json.loads(r["body"]) for r in receiver.seen]
    assert [b["params"]["state"] for b in bodies] == ["recording", "finished"]
    assert all(r["method"] == "POST" and r["path"] == "/status" for r in receiver.seen)
    assert receiver.seen[0]["content_type"] == "application/json"
    assert bodies[1]["params"]["record"]["size"] == 80_044 and bodies[1]["timestamp"] == 2.0


async def test_status_callback_failures_retry_once_and_never_raise(
    receiver: Receiver, logs: io.StringIO
) -> None:
    receiver.statuses = [500] * 10
    callbacks = RecordStatusCallbacks(receiver.base + "/status", SW, retry_delay=0.01)
    callbacks.report("error")
    await callbacks.drain()
    assert len(receiver.seen) == 2  # one retry, then given up
    [failed] = events(logs, "recording.status_failed")
    assert failed["state"] == "error" and failed["error"] == "HTTP 500"


# ---------------------------------------------------------------- served files


def test_stored_recording_is_served_at_its_url_path(store: RecordingStore, tmp_path: Path) -> None:
    rec, data = finished(tmp_path, "wav")
    name = recording_file_name("call 1/../ctl-1", "wav")
    assert "/" not in name and not name.startswith(".")
    stored = store_recording(store, rec, name)
    url_path = recording_url_path(name)
    assert url_path.startswith("/recordings/")
    found = resolve_recording(store, url_path)
    assert found is not None and found.read_bytes() == data and found == stored.resolve()


def test_resolver_refuses_everything_outside_the_recordings_directory(
    store: RecordingStore, tmp_path: Path
) -> None:
    store.recordings_path.mkdir(parents=True)
    (tmp_path / "secret.wav").write_bytes(b"secret")
    (store.recordings_path / "sub").mkdir()
    (store.recordings_path / "sub" / "x.wav").write_bytes(b"x")
    (store.recordings_path / "a.wav.json").write_text("{}")
    (store.recordings_path / ".hidden.wav").write_bytes(b"h")
    (store.recordings_path / "link.wav").symlink_to(tmp_path / "secret.wav")
    for path in [
        "/recordings/../secret.wav",
        "/recordings/%2e%2e/secret.wav",
        "/recordings/..%2Fsecret.wav",
        "/recordings/" + str(tmp_path / "secret.wav"),
        "/recordings/%2F" + str(tmp_path / "secret.wav").lstrip("/"),
        "/recordings/sub/x.wav",
        "/recordings/sub%2Fx.wav",
        "/recordings/a.wav.json",
        "/recordings/.hidden.wav",
        "/recordings/link.wav",
        "/recordings/missing.wav",
        "/recordings/",
        "/elsewhere/x.wav",
    ]:
        assert resolve_recording(store, path) is None, path
