"""Applications: where a call's verbs come from, and what a valid verb is.

Owns the jambonz application model: a verb array read from a JSON file, or
returned by an http(s) *call hook* that is POSTed the call attributes
(snake_case) for each new call; and the validation of each verb, with
messages that name the verb's position, its name and the field at fault.

The recording verbs of two other platforms may appear in the same array; the
shape says the dialect: Kazoo's callflow element ``{"module": "record_call",
"data": {...}}`` and SignalWire's SWML ``{"record_call": {...}}`` /
``{"stop_record_call": {...}}`` (``Verb.dialect`` is ``kazoo``/``swml``,
``jambonz`` for the rest).

It must not run verbs (``mediaserver.call`` does) or touch media.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["AppError", "Application", "Verb", "camel_to_snake", "parse_verbs", "snake_case"]

SUPPORTED_VERBS = ("config", "dial", "hangup", "listen", "pause", "play", "stream")
RECORDING_VERBS = ("record_call", "stop_record_call")  # Kazoo module / SWML methods


class AppError(ValueError):
    """The application could not be loaded or a verb is invalid; the message says where."""


@dataclass(frozen=True)
class Verb:
    name: str
    data: dict[str, Any]
    index: int
    dialect: str = "jambonz"  # or "kazoo" / "swml" for the recording verbs

    def describe(self) -> str:
        return f"verb {self.index} ({self.name!r})"


def _number(verb: Verb, key: str, *, minimum: float = 0.0, required: bool = False) -> None:
    if key not in verb.data:
        if required:
            raise AppError(f"{verb.describe()}: {key} is required")
        return
    value = verb.data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise AppError(f"{verb.describe()}: {key} must be a number >= {minimum:g}, got {value!r}")


def _validate(verb: Verb) -> None:
    if verb.name == "pause":
        _number(verb, "length", required=True)
    elif verb.name == "play":
        url = verb.data.get("url")
        urls = url if isinstance(url, list) else [url]
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise AppError(f"{verb.describe()}: url must be a URL/path or a list of them")
        loop = verb.data.get("loop", 1)
        if loop != "forever" and (isinstance(loop, bool) or not isinstance(loop, int) or loop < 1):
            raise AppError(f'{verb.describe()}: loop must be a count >= 1 or "forever"')
    elif verb.name == "config":
        listen = verb.data.get("listen")
        if listen is not None and not isinstance(listen, dict):
            raise AppError(f"{verb.describe()}: listen must be an object")
    elif verb.name == "hangup":
        headers = verb.data.get("headers", {})
        if not isinstance(headers, dict):
            raise AppError(f"{verb.describe()}: headers must be an object, got {headers!r}")
    elif verb.name in RECORDING_VERBS:
        from mediaserver.record_options import (
            RecordError,
            parse_kazoo_record,
            parse_swml_record,
            parse_swml_stop,
        )

        try:
            if verb.dialect == "kazoo":
                parse_kazoo_record(verb.data)
            elif verb.name == "record_call":
                parse_swml_record(verb.data)
            else:
                parse_swml_stop(verb.data)
        except RecordError as exc:
            raise AppError(f"{verb.describe()}: {exc}") from None


def parse_verbs(doc: Any, source: str = "app") -> list[Verb]:
    """Validate a verb array; raise ``AppError`` naming the first bad verb and field.

    Verbs are objects with a ``"verb"`` name (jambonz style); a verb object may
    also be written ``{"pause": {...}}`` with one key. Kazoo's
    ``{"module": "record_call", "data": {...}}`` and SWML's ``{"record_call":
    {...}}``/``{"stop_record_call": {...}}`` are the recording verbs. Unknown
    verbs are errors that list the supported ones.
    """
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise AppError(f"{source}: must be a JSON array of verbs, got {type(doc).__name__}")
    verbs = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise AppError(f"{source}: verb {i} must be an object, got {item!r}")
        dialect = "jambonz"
        if "verb" in item:
            name = item["verb"]
            data = {k: v for k, v in item.items() if k != "verb"}
        elif "module" in item:  # a Kazoo callflow element
            name, data, dialect = item["module"], item.get("data", {}), "kazoo"
            if name != "record_call":
                raise AppError(
                    f"{source}: verb {i}: Kazoo module {name!r} is not supported (only record_call)"
                )
            if not isinstance(data, dict):
                raise AppError(f"{source}: verb {i} ('record_call'): data must be an object")
        elif len(item) == 1 and isinstance(next(iter(item.values())), dict | None):
            name, data = next(iter(item.items()))
            data = data or {}
            if name in RECORDING_VERBS:
                dialect = "swml"
        else:
            raise AppError(f'{source}: verb {i} has no "verb" field: {item!r}')
        if not isinstance(name, str):
            raise AppError(f'{source}: verb {i}: "verb" must be a string, got {name!r}')
        verb = Verb(name, dict(data), i, dialect)
        if name in RECORDING_VERBS and dialect == "jambonz":
            raise AppError(
                f"{source}: {verb.describe()}: write it as SignalWire does, "
                f'{{"{name}": {{...}}}}, or as a Kazoo element '
                '{"module": "record_call", "data": {...}}'
            )
        if name not in SUPPORTED_VERBS + RECORDING_VERBS:
            supported = ", ".join(SUPPORTED_VERBS + RECORDING_VERBS)
            raise AppError(f"{source}: {verb.describe()}: unknown verb; supported: {supported}")
        try:
            _validate(verb)
        except AppError as exc:
            raise AppError(f"{source}: {exc}") from None
        verbs.append(verb)
    return verbs


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def snake_case(attrs: dict[str, Any]) -> dict[str, Any]:
    """Call attributes as hooks receive them (``callSid`` -> ``call_sid``)."""
    return {camel_to_snake(k): v for k, v in attrs.items()}


class Application:
    """Where verbs come from: a JSON file (read for every call) or a call-hook URL."""

    def __init__(self, source: str, *, timeout: float = 5.0) -> None:
        self.source = source
        self.timeout = timeout
        self.is_url = source.startswith(("http://", "https://"))
        self._verbs: list[dict[str, Any]] | None = None
        if not self.is_url and source and not Path(source).is_file():
            raise AppError(f"app: no such file {source!r} (or give an http(s) URL)")

    @classmethod
    def from_verbs(cls, verbs: list[dict[str, Any]]) -> Application:
        """An application given as a verb array in memory (validated now)."""
        parse_verbs(verbs, "app")
        app = cls("")
        app._verbs = verbs
        return app

    async def verbs_for_call(self, attrs: dict[str, Any]) -> list[Verb]:
        if self._verbs is not None:
            return parse_verbs(json.loads(json.dumps(self._verbs)), "app")
        if not self.source:
            return []
        if not self.is_url:
            try:
                doc = json.loads(Path(self.source).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise AppError(f"{self.source}: cannot read the verb array: {exc}") from None
            return parse_verbs(doc, self.source)
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(self.source, json=snake_case(attrs)) as resp,
            ):
                if resp.status // 100 != 2:
                    raise AppError(f"{self.source}: call hook answered HTTP {resp.status}")
                body = await resp.text()
        except TimeoutError:
            raise AppError(
                f"{self.source}: call hook did not answer in {self.timeout:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise AppError(f"{self.source}: call hook failed: {exc}") from None
        try:
            doc = json.loads(body)
        except json.JSONDecodeError as exc:
            raise AppError(f"{self.source}: call hook returned invalid JSON: {exc}") from None
        return parse_verbs(doc, self.source)
