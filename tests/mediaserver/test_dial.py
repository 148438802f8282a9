"""dial options: validation messages name the field; nested listen rules."""

from __future__ import annotations

from typing import Any

import pytest

from mediaserver.dial import DialError, DialResult, parse_dial

SIP = [{"type": "sip", "sipUri": "sip:bob@127.0.0.1:5090"}]


def test_minimal_and_full_dial() -> None:
    d = parse_dial({"target": SIP})
    assert d.targets == ("sip:bob@127.0.0.1:5090",) and d.timeout == 60 and d.listen is None
    nested = {"url": "ws://r/", "mixType": "stereo", "channel": 2}
    full = parse_dial({"target": [*SIP, {"type": "sip", "sipUri": "sip:alice@h"}],
                       "callerId": "+15551234", "timeout": 20, "answerOnBridge": True,
                       "headers": {"X-Test": "1"}, "actionHook": "http://h/dial",
                       "listen": nested})  # fmt: skip
    assert full.targets[1] == "sip:alice@h" and full.caller_id == "+15551234"
    assert full.headers == (("X-Test", "1"),)
    assert full.listen is not None and full.listen.mix_type == "stereo"
    assert full.listen_channel == 2 and not full.listen.disable_bidirectional
    a_leg = parse_dial({"target": SIP, "listen": {"url": "ws://r/"}})
    assert a_leg.listen is not None and a_leg.listen.disable_bidirectional  # A leg: no playback


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "target"),
        ({"target": [{"type": "phone", "number": "123"}]}, "target[0].type"),
        ({"target": [{"type": "sip", "sipUri": "bob@h"}]}, "target[0].sipUri"),
        ({"target": SIP, "timeout": 0}, "timeout"),
        ({"target": SIP, "answerOnBridge": "yes"}, "answerOnBridge"),
        ({"target": SIP, "headers": {"X": 1}}, "headers"),
        ({"target": SIP, "listen": {"url": "ws://r/", "channel": 3}}, "listen.channel"),
        ({"target": SIP, "listen": {"url": "ws://r/", "sampleRate": 1}}, "listen.sampleRate"),
        ({"target": SIP, "dialTone": True}, "dialTone"),
    ],
)
def test_bad_options_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(DialError) as err:
        parse_dial(data)
    assert str(err.value).startswith(field)


def test_hook_fields() -> None:
    assert DialResult("completed", 200, 12.7, "b-sid").hook_fields() == {
        "dial_call_status": "completed",
        "dial_call_duration": 12,
        "dial_sip_status": 200,
        "dial_call_sid": "b-sid",
    }
    assert DialResult("busy", 486).hook_fields()["dial_call_status"] == "busy"
