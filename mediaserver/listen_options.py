"""The ``listen`` (alias ``stream``) verb's options: parsing and validation.

Owns turning a verb object into ``ListenOptions``: defaults, types, allowed
values, relative URL resolution against the application URL (``http`` ->
``ws``, ``https`` -> ``wss``), hook objects, and the 8192-byte metadata cap.
Every error is a ``ListenError`` whose message names the field and, where
there is a fixed set, the allowed values.

It must not open sockets or touch media.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

__all__ = [
    "BIDIRECTIONAL_RATES",
    "SAMPLE_RATES",
    "Hook",
    "ListenError",
    "ListenOptions",
    "parse_hook",
    "parse_listen",
]

SAMPLE_RATES = (8000, 16000, 24000, 32000, 48000, 64000)
BIDIRECTIONAL_RATES = SAMPLE_RATES
METADATA_LIMIT = 8192
_DTMF_KEYS = set("0123456789*#ABCD")


class ListenError(ValueError):
    """A bad ``listen`` option; the message names the field."""


@dataclass(frozen=True)
class Hook:
    """An actionHook: a URL plus method and optional basic auth."""

    url: str
    method: str = "POST"
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ListenOptions:
    url: str  # absolute ws:// or wss://
    action_hook: Hook | None = None
    mix_type: str = "mono"
    sample_rate: int = 8000
    max_length: float | None = None  # seconds
    timeout: float | None = None  # seconds of continuous silence
    finish_on_key: str = ""
    play_beep: bool = False
    pass_dtmf: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    ws_username: str | None = None
    ws_password: str | None = field(default=None, repr=False)
    bidirectional: bool = False
    bidirectional_streaming: bool = False
    bidirectional_rate: int = 8000
    disable_bidirectional: bool = False  # nested in dial: not supported on the A leg


def _base(app_url: str | None) -> str | None:
    if not app_url or not app_url.startswith(("http://", "https://")):
        return None
    parts = urlsplit(app_url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/"


def _ws_url(value: Any, app_url: str | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ListenError("url: required, a ws://, wss://, http:// or https:// URL")
    url = value.strip()
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        base = _base(app_url)
        if base is None:
            raise ListenError(
                f"url: {url!r} is relative, but the application has no http(s) URL to resolve it"
            )
        url = urljoin(base, url)
        scheme = urlsplit(url).scheme.lower()
    mapped = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(scheme)
    if mapped is None:
        raise ListenError(f"url: scheme must be ws, wss, http or https, got {scheme!r}")
    parts = urlsplit(url)
    if not parts.hostname:
        raise ListenError(f"url: no host in {value!r}")
    return url.replace(parts.scheme + "://", mapped + "://", 1)


def parse_hook(value: Any, app_url: str | None, name: str = "actionHook") -> Hook | None:
    """A hook given as a URL string or ``{url, method, username, password}``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, dict):
        raise ListenError(f"{name}: must be a URL or an object with url, got {value!r}")
    url = value.get("url")
    if not isinstance(url, str) or not url:
        raise ListenError(f"{name}.url: required")
    if not urlsplit(url).scheme:
        base = _base(app_url)
        if base is None:
            raise ListenError(
                f"{name}: {url!r} is relative, but the application has no http(s) URL"
            )
        url = urljoin(base, url)
    if urlsplit(url).scheme not in ("http", "https"):
        raise ListenError(f"{name}: must be an http(s) URL, got {url!r}")
    method = str(value.get("method", "POST")).upper()
    if method not in ("POST", "GET"):
        raise ListenError(f"{name}.method: must be POST or GET, got {value.get('method')!r}")
    user, password = value.get("username"), value.get("password")
    for key, v in (("username", user), ("password", password)):
        if v is not None and not isinstance(v, str):
            raise ListenError(f"{name}.{key}: must be a string")
    return Hook(url, method, user, password)


def _number(data: dict[str, Any], key: str, minimum: float = 0.0) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ListenError(f"{key}: must be a number of seconds, got {data[key]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= minimum:
        raise ListenError(f"{key}: must be a number > {minimum:g}, got {data[key]!r}")
    return float(value)


def _bool(data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ListenError(f"{key}: must be true or false, got {value!r}")
    return value


def _rate(value: Any, name: str, allowed: tuple[int, ...]) -> int:
    try:
        rate = int(value)
    except (TypeError, ValueError):
        rate = -1
    if (
        isinstance(value, bool)
        or rate not in allowed
        or (isinstance(value, float) and value != rate)
    ):
        choices = ", ".join(str(r) for r in allowed)
        raise ListenError(f"{name}: must be one of {choices}, got {value!r}")
    return rate


def parse_listen(data: dict[str, Any], app_url: str | None = None) -> ListenOptions:
    """Validate a ``listen``/``stream`` verb body (without the ``verb`` key)."""
    known = {
        "url", "actionHook", "mixType", "sampleRate", "maxLength", "timeout", "finishOnKey",
        "playBeep", "passDtmf", "metadata", "wsAuth", "bidirectionalAudio", "transcribe",
        "channel", "enable", "id", "disableBidirectionalAudio",
    }  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise ListenError(
            f"{unknown[0]}: unknown option; listen accepts {', '.join(sorted(known))}"
        )
    url = _ws_url(data.get("url"), app_url)
    mix = data.get("mixType", "mono")
    if mix not in ("mono", "stereo", "mixed"):
        raise ListenError(f"mixType: must be one of mono, stereo, mixed, got {mix!r}")
    rate = _rate(data.get("sampleRate", 8000), "sampleRate", SAMPLE_RATES)
    keys = data.get("finishOnKey", "")
    if not isinstance(keys, str) or not set(keys) <= _DTMF_KEYS:
        raise ListenError(f"finishOnKey: must be a string of 0-9 * # A-D, got {keys!r}")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ListenError(f"metadata: must be an object, got {type(metadata).__name__}")
    size = len(json.dumps(metadata).encode())
    if size > METADATA_LIMIT:
        raise ListenError(f"metadata: {size} bytes as JSON, the limit is {METADATA_LIMIT}")
    auth = data.get("wsAuth")
    user = password = None
    raw_url = data.get("url")
    if auth is None and isinstance(raw_url, str) and not urlsplit(raw_url.strip()).scheme:
        # A relative socket URL lives on the app's own server: the real sender
        # authenticates with the app URL's basic-auth credentials.
        app_parts = urlsplit(app_url or "")
        if app_parts.username is not None and app_parts.password is not None:
            user, password = unquote(app_parts.username), unquote(app_parts.password)
    if auth is not None:
        if not isinstance(auth, dict):
            raise ListenError("wsAuth: must be an object with username and password")
        user, password = auth.get("username"), auth.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            raise ListenError("wsAuth: username and password must both be strings")
    bidi = data.get("bidirectionalAudio", {})
    if not isinstance(bidi, dict):
        raise ListenError("bidirectionalAudio: must be an object {enabled, streaming, sampleRate}")
    for key in ("enabled", "streaming"):
        if key in bidi and not isinstance(bidi[key], bool):
            raise ListenError(f"bidirectionalAudio.{key}: must be true or false")
    bidi_rate = _rate(
        bidi.get("sampleRate", 8000), "bidirectionalAudio.sampleRate", BIDIRECTIONAL_RATES
    )
    return ListenOptions(
        url=url,
        action_hook=parse_hook(data.get("actionHook"), app_url),
        mix_type=mix,
        sample_rate=rate,
        max_length=_number(data, "maxLength"),
        timeout=_number(data, "timeout"),
        finish_on_key=keys,
        play_beep=_bool(data, "playBeep"),
        pass_dtmf=_bool(data, "passDtmf"),
        metadata=metadata,
        ws_username=user,
        ws_password=password,
        bidirectional=bool(bidi.get("enabled", True)),
        bidirectional_streaming=bool(bidi.get("streaming", False)),
        bidirectional_rate=bidi_rate,
        disable_bidirectional=_bool(data, "disableBidirectionalAudio"),
    )
