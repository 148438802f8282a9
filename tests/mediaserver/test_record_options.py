"""The two recording dialects' options: defaults, quirks, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.record_options import (
    RecordError,
    parse_kazoo_record,
    parse_swml_record,
    parse_swml_stop,
    sensitivity_threshold,
)

# -- Kazoo ------------------------------------------------------------------------------


def test_kazoo_defaults_follow_the_schema() -> None:
    opts = parse_kazoo_record({})
    assert opts.action == "start"
    assert opts.format == "mp3"
    assert opts.time_limit == 3600
    assert opts.stereo and opts.sample_rate == 16000  # stereo by default, 16 kHz then
    assert opts.method == "put" and opts.url is None
    assert not opts.record_on_answer and not opts.record_on_bridge
    assert not opts.silence_detection and opts.silence_threshold == 200.0
    assert opts.warnings == ()


def test_kazoo_mono_defaults_to_8k_and_explicit_rate_wins() -> None:
    assert parse_kazoo_record({"stereo": False}).sample_rate == 8000
    assert parse_kazoo_record({"stereo": False, "record_sample_rate": 16000}).sample_rate == 16000


def test_kazoo_seed_example_start_and_stop() -> None:
    start = parse_kazoo_record(
        {
            "action": "start",
            "time_limit": 1200,
            "format": "mp3",
            "url": "http://your.server.com/recordings",
        }
    )
    assert (start.action, start.time_limit, start.format) == ("start", 1200, "mp3")
    assert start.url == "http://your.server.com/recordings"
    assert parse_kazoo_record({"action": "stop"}).action == "stop"


def test_kazoo_time_limit_is_clamped_to_the_system_maximum() -> None:
    opts = parse_kazoo_record({"time_limit": 50000})
    assert opts.time_limit == 10800
    assert any("time_limit" in w for w in opts.warnings)
    assert parse_kazoo_record({"time_limit": 900}, max_time_limit=600).time_limit == 600
    with pytest.raises(RecordError, match=r"time_limit: must be an integer >= 5, got 4"):
        parse_kazoo_record({"time_limit": 4})


def test_kazoo_unknown_format_string_records_mp3_with_a_warning() -> None:
    opts = parse_kazoo_record({"format": "ogg"})
    assert opts.format == "mp3"
    assert opts.warnings and "ogg" in opts.warnings[0]
    assert parse_kazoo_record({"format": "WAV"}).format == "wav"
    assert parse_kazoo_record({"format": "mp4"}).format == "mp4"
    with pytest.raises(RecordError, match="format: must be one of wav, mp3, mp4"):
        parse_kazoo_record({"format": 3})


def test_kazoo_silence_options_in_milliseconds() -> None:
    opts = parse_kazoo_record(
        {
            "silence_detection": True,
            "silence_threshold": 350,
            "silence_initial_timeout": 3000,
            "silence_final_timeout": 1500,
            "record_min_sec": 2,
        }
    )
    assert opts.silence_detection and opts.silence_threshold == 350.0
    assert (opts.silence_initial_timeout_ms, opts.silence_final_timeout_ms) == (3000, 1500)
    assert opts.min_seconds == 2


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"action": "pause"}, "action: must be one of start, stop"),
        ({"method": "patch"}, "method: must be one of put, post"),
        ({"record_sample_rate": 11025}, "record_sample_rate: must be one of 8000"),
        ({"record_on_answer": "yes"}, "record_on_answer: must be true or false"),
        ({"record_min_sec": -1}, "record_min_sec: must be an integer >= 0"),
        ({"silence_threshold": "loud"}, "silence_threshold: must be a number"),
        ({"url": "ftp://host/x"}, "url: must be an http:// or https:// URL"),
        ({"label": 7}, "label: must be a string"),
    ],
)
def test_kazoo_errors_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError, match=field):
        parse_kazoo_record(data)


def test_kazoo_data_must_be_an_object() -> None:
    with pytest.raises(RecordError, match="data: must be an object"):
        parse_kazoo_record(["start"])


# -- SignalWire -------------------------------------------------------------------------


def test_swml_defaults_follow_the_docs() -> None:
    opts = parse_swml_record({})
    assert opts.control_id  # generated
    assert parse_swml_record({}).control_id != opts.control_id
    assert (opts.stereo, opts.format, opts.direction) == (False, "wav", "both")
    assert (opts.beep, opts.terminators, opts.input_sensitivity) == (False, "", 44.0)
    assert opts.initial_timeout == 0.0 and opts.end_silence_timeout == 0.0
    assert opts.max_length is None and opts.status_url is None
    assert opts.silence_threshold == pytest.approx(200.0)


def test_swml_full_object() -> None:
    opts = parse_swml_record(
        {
            "control_id": "rec-1",
            "stereo": True,
            "format": "mp4",
            "direction": "speak",
            "terminators": "#*",
            "beep": True,
            "input_sensitivity": 56,
            "initial_timeout": 2.5,
            "end_silence_timeout": 1,
            "max_length": 30,
            "status_url": "https://hooks.example.com/status",
        }
    )
    assert opts.control_id == "rec-1" and opts.stereo and opts.format == "mp4"
    assert opts.direction == "speak" and opts.terminators == "#*" and opts.beep
    assert opts.silence_threshold == pytest.approx(100.0)  # 12 points more: half
    assert (opts.initial_timeout, opts.end_silence_timeout, opts.max_length) == (2.5, 1.0, 30.0)
    assert opts.status_url == "https://hooks.example.com/status"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"format": "ogg"}, "format: must be one of wav, mp3, mp4"),
        ({"direction": "up"}, "direction: must be one of speak, listen, both"),
        ({"terminators": "#x"}, "terminators: only DTMF keys"),
        ({"input_sensitivity": 101}, "input_sensitivity: must be 0..100"),
        ({"input_sensitivity": -1}, "input_sensitivity: must be a number >= 0"),
        ({"initial_timeout": "soon"}, "initial_timeout: must be a number"),
        ({"max_length": 0}, "max_length: must be a number > 0"),
        ({"status_url": "mailto:a@b"}, "status_url: must be an http:// or https:// URL"),
        ({"stereo": 1}, "stereo: must be true or false"),
    ],
)
def test_swml_errors_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError, match=field):
        parse_swml_record(data)


def test_swml_stop_targets_a_control_id_or_the_last_one() -> None:
    assert parse_swml_stop({"control_id": "rec-1"}).control_id == "rec-1"
    assert parse_swml_stop({}).control_id is None
    assert parse_swml_stop(None).control_id is None
    with pytest.raises(RecordError, match="control_id: must be a string"):
        parse_swml_stop({"control_id": 5})


@given(st.floats(0, 100), st.floats(0, 100))
def test_sensitivity_mapping_is_strictly_decreasing(a: float, b: float) -> None:
    if a < b:  # strictly, wherever floats can tell the two apart
        assert sensitivity_threshold(a) >= sensitivity_threshold(b)
        if b - a > 1e-9:
            assert sensitivity_threshold(a) > sensitivity_threshold(b)
    assert 7.0 < sensitivity_threshold(a) < 2600.0


def test_sensitivity_mapping_anchors() -> None:
    assert sensitivity_threshold(44) == pytest.approx(200.0)
    assert sensitivity_threshold(32) == pytest.approx(400.0)
    assert sensitivity_threshold(0) == pytest.approx(200 * 2 ** (44 / 12))
