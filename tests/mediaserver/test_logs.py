"""Logging: JSON lines off a terminal, call_sid bound, secrets never printed."""

from __future__ import annotations

import io
import json

import pytest

from mediaserver.logs import REDACTED, call_logger, configure_logging


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_a_terminal_with_call_sid_bound() -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    log = call_logger("c0ffee", call_id="abc@host")
    log.info("call.answered", codec="PCMU")
    log.debug("hidden")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "call.answered"
    assert event["call_sid"] == "c0ffee"
    assert event["call_id"] == "abc@host"
    assert event["level"] == "info"
    assert "timestamp" in event


def test_human_readable_on_a_terminal() -> None:
    out = FakeTTY()
    configure_logging("DEBUG", stream=out)
    call_logger("c1").warning("fork.dropped", frames=3)
    text = out.getvalue()
    assert "fork.dropped" in text and "c1" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_secrets_are_redacted_at_any_depth() -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    call_logger("c2").info(
        "listen.start",
        password="hunter2",
        wsAuth={"username": "u", "password": "hunter2"},
        headers={"Authorization": "Basic aHVudGVyMg==", "X-Other": "fine"},
        hooks=[{"url": "http://h", "password": "hunter2"}],
    )
    line = out.getvalue()
    assert "hunter2" not in line and "aHVudGVyMg" not in line
    event = json.loads(line)
    assert event["password"] == REDACTED
    assert event["wsAuth"] == REDACTED
    assert event["headers"] == {"Authorization": REDACTED, "X-Other": "fine"}
    assert event["hooks"][0]["password"] == REDACTED


def test_bad_level_is_named() -> None:
    with pytest.raises(ValueError, match="log level: unknown level 'LOUD'"):
        configure_logging("LOUD", stream=io.StringIO())
