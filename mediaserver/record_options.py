"""The recording verbs' options: Kazoo ``record_call`` and SignalWire ``record_call``.

Owns turning the two dialects' verb data into option objects: defaults,
types, allowed values and the documented quirks of the real systems
(``../shared/spec/recording-dialects.md``), and the mapping of SignalWire's
``input_sensitivity`` onto the FreeSWITCH energy threshold. Every error is a
``RecordError`` whose message names the field and, where there is a fixed
set, the allowed values.

- Kazoo (``{"module": "record_call", "data": {...}}``): ``action``
  start|stop, ``format`` (an unknown *string* falls back to mp3 as Kazoo
  does, reported in ``warnings``), ``time_limit`` 5..max (larger values are
  clamped to the configured maximum, as Kazoo clamps to
  ``max_recording_time_limit``), ``record_sample_rate`` (16000 for stereo,
  8000 for mono by default), ``record_on_answer``/``record_on_bridge``,
  ``record_min_sec``, the silence options (milliseconds), ``url``,
  ``method`` put|post, ``label``/``media_name``/``media_id``.
- SignalWire (``{"record_call": {...}}``, ``{"stop_record_call": {...}}``):
  ``control_id`` (generated when absent), ``stereo``, ``format``,
  ``direction``, ``terminators``, ``beep``, ``input_sensitivity``,
  ``initial_timeout``/``end_silence_timeout`` (seconds, 0 = off),
  ``max_length``, ``status_url``.

It must not open files or sockets, or touch media.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "FORMATS",
    "KazooRecordOptions",
    "RecordError",
    "SwmlRecordOptions",
    "SwmlStopOptions",
    "parse_kazoo_record",
    "parse_swml_record",
    "parse_swml_stop",
    "sensitivity_threshold",
]

FORMATS = ("wav", "mp3", "mp4")
RECORD_RATES = (8000, 16000, 24000, 32000, 48000, 64000)
DEFAULT_THRESHOLD = 200.0  # FreeSWITCH's silence threshold (mean |sample| at 8 kHz)
DEFAULT_SENSITIVITY = 44.0  # SignalWire's documented default
KAZOO_MIN_TIME_LIMIT = 5
KAZOO_DEFAULT_TIME_LIMIT = 3600
KAZOO_DEFAULT_FINAL_TIMEOUT_MS = 5000
_DTMF_KEYS = set("0123456789*#ABCD")


class RecordError(ValueError):
    """A bad recording option; the message names the field."""


def sensitivity_threshold(sensitivity: float) -> float:
    """SignalWire ``input_sensitivity`` (0..100, larger = more sensitive) as an energy threshold.

    The documented mapping: the default 44 gives FreeSWITCH's default
    threshold 200, and every 12 points of sensitivity halve the threshold
    (6 dB): ``200 * 2 ** ((44 - s) / 12)``. So 0 -> 2540 (only loud speech
    counts), 100 -> 7.9 (almost anything counts); strictly decreasing.
    """
    if not 0.0 <= sensitivity <= 100.0:
        raise RecordError(f"input_sensitivity: must be 0..100, got {sensitivity!r}")
    return float(DEFAULT_THRESHOLD * 2.0 ** ((DEFAULT_SENSITIVITY - sensitivity) / 12.0))


# -- field readers -------------------------------------------------------------------


def _bool(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise RecordError(f"{key}: must be true or false, got {value!r}")
    return value


def _number(data: dict[str, Any], key: str, default: float, *, minimum: float = 0.0) -> float:
    value = data.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise RecordError(f"{key}: must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _integer(data: dict[str, Any], key: str, default: int, *, minimum: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecordError(f"{key}: must be an integer >= {minimum}, got {value!r}")
    return value


def _string(data: dict[str, Any], key: str, default: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RecordError(f"{key}: must be a string, got {value!r}")
    return value


def _choice(data: dict[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or value.lower() not in allowed:
        raise RecordError(f"{key}: must be one of {', '.join(allowed)}, got {value!r}")
    return value.lower()


def _http_url(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RecordError(f"{key}: must be an http(s) URL, got {value!r}")
    parts = urlsplit(value.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise RecordError(f"{key}: must be an http:// or https:// URL, got {value!r}")
    return value.strip()


def _object(data: Any, verb: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecordError(f"{verb}: must be an object, got {data!r}")
    return data


# -- Kazoo ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KazooRecordOptions:
    action: str = "start"  # start | stop
    format: str = "mp3"
    time_limit: int = KAZOO_DEFAULT_TIME_LIMIT  # seconds, after clamping
    stereo: bool = True  # left = caller, right = what the caller hears
    sample_rate: int = 16000
    record_on_answer: bool = False
    record_on_bridge: bool = False
    min_seconds: int = 0  # record_min_sec: shorter recordings are discarded
    silence_detection: bool = False
    silence_threshold: float = DEFAULT_THRESHOLD
    silence_initial_timeout_ms: int = 0
    silence_final_timeout_ms: int = KAZOO_DEFAULT_FINAL_TIMEOUT_MS
    url: str | None = None
    method: str = "put"
    label: str = ""
    media_name: str = ""
    media_id: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)


def parse_kazoo_record(data: Any, *, max_time_limit: int = 10800) -> KazooRecordOptions:
    """Kazoo ``record_call`` ``data`` -> options; raise ``RecordError`` naming the field.

    ``max_time_limit`` is the system maximum (Kazoo's
    ``max_recording_time_limit``, default 10800 s) that larger limits are
    clamped to.
    """
    d = _object(data, "data")
    warnings: list[str] = []
    action = _choice(d, "action", "start", ("start", "stop"))
    fmt_value = d.get("format", "mp3")
    if not isinstance(fmt_value, str):
        raise RecordError(f"format: must be one of {', '.join(FORMATS)}, got {fmt_value!r}")
    fmt = fmt_value.lower()
    if fmt not in FORMATS:  # Kazoo records mp3 when it does not know the format
        warnings.append(f"format: unknown {fmt_value!r}, recording mp3 as Kazoo does")
        fmt = "mp3"
    limit = _integer(d, "time_limit", KAZOO_DEFAULT_TIME_LIMIT, minimum=KAZOO_MIN_TIME_LIMIT)
    if limit > max_time_limit:
        warnings.append(f"time_limit: {limit} s clamped to the system maximum {max_time_limit} s")
        limit = max_time_limit
    stereo = _bool(d, "stereo", True)
    rate = _integer(d, "record_sample_rate", 16000 if stereo else 8000, minimum=1)
    if rate not in RECORD_RATES:
        allowed = ", ".join(str(r) for r in RECORD_RATES)
        raise RecordError(f"record_sample_rate: must be one of {allowed}, got {rate}")
    label = _string(d, "label")
    return KazooRecordOptions(
        action=action,
        format=fmt,
        time_limit=limit,
        stereo=stereo,
        sample_rate=rate,
        record_on_answer=_bool(d, "record_on_answer", False),
        record_on_bridge=_bool(d, "record_on_bridge", False),
        min_seconds=_integer(d, "record_min_sec", 0),
        silence_detection=_bool(d, "silence_detection", False),
        silence_threshold=_number(d, "silence_threshold", DEFAULT_THRESHOLD),
        silence_initial_timeout_ms=_integer(d, "silence_initial_timeout", 0),
        silence_final_timeout_ms=_integer(
            d, "silence_final_timeout", KAZOO_DEFAULT_FINAL_TIMEOUT_MS
        ),
        url=_http_url(d, "url"),
        method=_choice(d, "method", "put", ("put", "post")),
        label=label,
        media_name=_string(d, "media_name"),
        media_id=_string(d, "media_id"),
        warnings=tuple(warnings),
    )


# -- SignalWire -------------------------------------------------------------------------


@dataclass(frozen=True)
class SwmlRecordOptions:
    control_id: str
    stereo: bool = False
    format: str = "wav"
    direction: str = "both"  # speak | listen | both
    terminators: str = ""
    beep: bool = False
    input_sensitivity: float = DEFAULT_SENSITIVITY
    initial_timeout: float = 0.0  # seconds without speech before no_input; 0 = off
    end_silence_timeout: float = 0.0  # seconds of silence after speech that end it; 0 = off
    max_length: float | None = None  # seconds
    status_url: str | None = None

    @property
    def silence_threshold(self) -> float:
        return sensitivity_threshold(self.input_sensitivity)


@dataclass(frozen=True)
class SwmlStopOptions:
    control_id: str | None = None  # None: the last recording started


def parse_swml_record(data: Any) -> SwmlRecordOptions:
    """SWML ``record_call`` object -> options; raise ``RecordError`` naming the field."""
    d = _object(data, "record_call")
    control_id = _string(d, "control_id") or str(uuid.uuid4())
    terminators = _string(d, "terminators")
    bad = sorted(set(terminators) - _DTMF_KEYS)
    if bad:
        raise RecordError(f"terminators: only DTMF keys 0-9 * # A-D, got {''.join(bad)!r}")
    sensitivity = _number(d, "input_sensitivity", DEFAULT_SENSITIVITY)
    sensitivity_threshold(sensitivity)  # range check, names the field
    max_length = None
    if d.get("max_length") is not None:
        max_length = _number(d, "max_length", 0.0)
        if max_length <= 0:
            raise RecordError(f"max_length: must be a number > 0, got {d['max_length']!r}")
    return SwmlRecordOptions(
        control_id=control_id,
        stereo=_bool(d, "stereo", False),
        format=_choice(d, "format", "wav", FORMATS),
        direction=_choice(d, "direction", "both", ("speak", "listen", "both")),
        terminators=terminators,
        beep=_bool(d, "beep", False),
        input_sensitivity=sensitivity,
        initial_timeout=_number(d, "initial_timeout", 0.0),
        end_silence_timeout=_number(d, "end_silence_timeout", 0.0),
        max_length=max_length,
        status_url=_http_url(d, "status_url"),
    )


def parse_swml_stop(data: Any) -> SwmlStopOptions:
    """SWML ``stop_record_call`` object -> options (``control_id`` optional)."""
    d = _object(data, "stop_record_call")
    control_id = _string(d, "control_id")
    return SwmlStopOptions(control_id or None)
