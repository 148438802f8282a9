"""Applications: verb validation messages, files, and a real call-hook server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mediaserver.app import AppError, Application, camel_to_snake, parse_verbs, snake_case


def test_valid_verbs_parse_in_both_shapes() -> None:
    verbs = parse_verbs([{"verb": "pause", "length": 2}, {"hangup": {}}])
    assert [(v.name, v.index) for v in verbs] == [("pause", 0), ("hangup", 1)]
    assert verbs[0].data == {"length": 2}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"verb": "dance"}, "unknown verb; supported: config, dial, hangup, listen, pause, play"),
        ([{"verb": "pause"}], "verb 0 ('pause'): length is required"),
        ([{"verb": "pause", "length": "5"}], "length must be a number >= 0, got '5'"),
        ([{"verb": "pause", "length": -1}], "length must be a number >= 0, got -1"),
        ([{"verb": "hangup", "headers": []}], "headers must be an object"),
        ([{"length": 3}], 'verb 0 has no "verb" field'),
        (["pause"], "verb 0 must be an object"),
        ("pause", "must be a JSON array of verbs, got str"),
        ([{"verb": 7}], '"verb" must be a string, got 7'),
    ],
)
def test_bad_verbs_name_position_verb_and_field(doc: Any, message: str) -> None:
    with pytest.raises(AppError) as err:
        parse_verbs(doc, "app.json")
    assert message in str(err.value)
    assert str(err.value).startswith("app.json: ")


def test_recording_verbs_parse_with_their_dialect() -> None:
    verbs = parse_verbs(
        [
            {"module": "record_call", "data": {"action": "start", "format": "wav"}},
            {"record_call": {"control_id": "r1", "stereo": True}},
            {"stop_record_call": {}},
            {"stop_record_call": None},
            {"verb": "pause", "length": 1},
        ]
    )
    assert [(v.name, v.dialect) for v in verbs] == [
        ("record_call", "kazoo"),
        ("record_call", "swml"),
        ("stop_record_call", "swml"),
        ("stop_record_call", "swml"),
        ("pause", "jambonz"),
    ]
    assert verbs[0].data == {"action": "start", "format": "wav"}
    assert verbs[3].data == {}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            [{"module": "record_call", "data": {"method": "get"}}],
            "verb 0 ('record_call'): method: must be one of put, post",
        ),
        ([{"module": "voicemail", "data": {}}], "Kazoo module 'voicemail' is not supported"),
        ([{"module": "record_call", "data": []}], "data must be an object"),
        (
            [{"hangup": {}}, {"record_call": {"direction": "up"}}],
            "verb 1 ('record_call'): direction: must be one of speak, listen, both",
        ),
        ([{"verb": "record_call"}], "write it as SignalWire does"),
    ],
)
def test_bad_recording_verbs_name_the_field(doc: Any, message: str) -> None:
    with pytest.raises(AppError) as err:
        parse_verbs(doc, "app.json")
    assert message in str(err.value)


def test_snake_case_call_attributes() -> None:
    assert camel_to_snake("originatingSipIp") == "originating_sip_ip"
    assert snake_case({"callSid": "x", "from": "y"}) == {"call_sid": "x", "from": "y"}


async def test_file_app_is_read_per_call(tmp_path: Path) -> None:
    path = tmp_path / "app.json"
    path.write_text(json.dumps([{"verb": "hangup"}]))
    app = Application(str(path))
    assert [v.name for v in await app.verbs_for_call({})] == ["hangup"]
    path.write_text(json.dumps([{"verb": "pause", "length": 1}]))
    assert [v.name for v in await app.verbs_for_call({})] == ["pause"]
    path.write_text("{nope")
    with pytest.raises(AppError, match="cannot read the verb array"):
        await app.verbs_for_call({})


def test_missing_app_file_is_named() -> None:
    with pytest.raises(AppError, match=r"app: no such file 'nope\.json'"):
        Application("nope.json")


async def test_call_hook_gets_snake_case_attributes_and_returns_verbs() -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        if request.path == "/bad-json":
            return web.Response(text="not json")
        if request.path == "/error":
            return web.Response(status=500)
        return web.json_response([{"verb": "pause", "length": 1}, {"verb": "hangup"}])

    server = web.Application()
    server.router.add_post("/{tail:.*}", hook)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        app = Application(f"http://127.0.0.1:{port}/call")
        verbs = await app.verbs_for_call({"callSid": "abc", "originatingSipIp": "127.0.0.1"})
        assert [v.name for v in verbs] == ["pause", "hangup"]
        assert received[0] == {"call_sid": "abc", "originating_sip_ip": "127.0.0.1"}
        with pytest.raises(AppError, match="invalid JSON"):
            await Application(f"http://127.0.0.1:{port}/bad-json").verbs_for_call({})
        with pytest.raises(AppError, match="answered HTTP 500"):
            await Application(f"http://127.0.0.1:{port}/error").verbs_for_call({})
    finally:
        await runner.cleanup()
    with pytest.raises(AppError, match="call hook failed"):
        await Application(f"http://127.0.0.1:{port}/gone", timeout=2).verbs_for_call({})
