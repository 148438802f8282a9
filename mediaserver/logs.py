"""Structured logging for the whole process, configured once.

Owns the structlog set-up: human-readable lines when stderr is a terminal,
one JSON object per line otherwise (files, pipes, CI, log shippers), and the
redaction of secrets (wsAuth passwords, Authorization headers) before any
renderer sees an event. Per-call loggers carry ``call_sid``.

It must not be configured from library code paths: ``configure_logging`` is
called by the CLI entry point (and by tests that want a specific output).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["REDACTED", "call_logger", "configure_logging", "get_logger", "redact_secrets"]

REDACTED = "***"

# Keys whose values are secrets wherever they appear in an event, at any depth.
_SECRET_KEYS = frozenset(
    {"password", "authorization", "proxy-authorization", "wsauth", "ws_auth", "secret", "token"}
)


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if str(k).lower() in _SECRET_KEYS else _redact(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: replace the value of every secret-named key by ``***``."""
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time (test capture, redirection)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(
    level: str | int = "INFO", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog for the process.

    ``json=None`` picks by the stream: console rendering on a terminal, JSON
    lines otherwise. Calling it again replaces the previous configuration.
    """
    out: TextIO | _CurrentStderr = stream if stream is not None else _CurrentStderr()
    if isinstance(level, str):
        level_no = logging.getLevelName(level.upper())
        if not isinstance(level_no, int):
            raise ValueError(f"log level: unknown level {level!r}")
    else:
        level_no = level
    use_json = json if json is not None else not out.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger, optionally bound to ``initial`` values."""
    log = structlog.get_logger(name) if name else structlog.get_logger()
    return log.bind(**initial) if initial else log


def call_logger(call_sid: str, **initial: Any) -> Any:
    """The logger for one call: every event it emits carries ``call_sid``."""
    return get_logger(call_sid=call_sid, **initial)
