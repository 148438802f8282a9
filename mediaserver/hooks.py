"""HTTP webhooks: actionHooks and the like, POSTed (or GET) with a JSON payload.

Owns sending one hook: method, basic auth, time limit, and reading a verb
array back from the response when there is one. Failures (refused, timeout,
non-2xx, invalid JSON) are returned as a ``HookResult`` with the reason and
logged; they are never raised into the call. Credentials and Authorization
headers are never logged. ``hook_observer`` (a context variable ``serve``
sets in each call's task) is told every result, for its metrics.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from mediaserver.listen_options import Hook

__all__ = ["HookResult", "hook_observer", "safe_url", "send_hook"]


def safe_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(frozen=True)
class HookResult:
    ok: bool
    status: int | None = None
    body: Any = None  # parsed JSON body, if any
    error: str | None = None
    seconds: float = 0.0


# Who is told how each hook went (serve's /metrics); per task, so servers don't mix.
hook_observer: ContextVar[Callable[[HookResult], None] | None] = ContextVar(
    "hook_observer", default=None
)


async def send_hook(
    hook: Hook, payload: dict[str, Any], *, timeout: float = 5.0, log: Any = None
) -> HookResult:
    """Send ``payload`` to ``hook`` and return what happened."""
    started = time.perf_counter()
    headers = {}
    if hook.username is not None and hook.password is not None:
        token = base64.b64encode(f"{hook.username}:{hook.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout), headers=headers
        ) as session:
            if hook.method == "GET":
                params = {k: json.dumps(v) if isinstance(v, dict | list) else str(v)
                          for k, v in payload.items()}  # fmt: skip
                request = session.get(hook.url, params=params)
            else:
                request = session.post(hook.url, json=payload)
            async with request as resp:
                text = await resp.text()
                status = resp.status
    except TimeoutError:
        result = HookResult(False, error=f"no answer in {timeout:g} s")
    except aiohttp.ClientError as exc:
        result = HookResult(False, error=f"request failed: {exc}")
    else:
        body: Any = None
        error = None
        if text.strip():
            try:
                body = json.loads(text)
            except json.JSONDecodeError:
                error = "response is not JSON"
        ok = 200 <= status < 300
        if not ok:
            error = f"HTTP {status}"
        result = HookResult(ok, status, body, error)
    result = HookResult(
        result.ok, result.status, result.body, result.error, time.perf_counter() - started
    )
    if log is not None:
        log.info(
            "hook.sent",
            url=safe_url(hook.url),
            method=hook.method,
            status=result.status,
            ok=result.ok,
            error=result.error,
            ms=round(result.seconds * 1000, 1),
        )
    observe = hook_observer.get()
    if observe is not None:
        observe(result)
    return result
