"""The ``mediaserver call`` command: argument checks, progress, summary output.

Owns presenting a harness run: errors that name the option, a progress line
on a terminal, a human summary, and with ``--json`` exactly one JSON object
as the last line of stdout. The calls themselves run in
``mediaserver.harness``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from mediaserver.app import AppError
from mediaserver.config import ConfigError
from mediaserver.harness import CallResult, CallScript, HarnessError, run_calls
from mediaserver.recording_delivery import RecordingStore

__all__ = ["run_call_command", "summarise"]


def summarise(results: list[CallResult]) -> dict[str, Any]:
    """One call's summary, or the aggregate of several (with each call listed)."""
    if len(results) == 1:
        one = results[0].summary()
        one["hooks"] = results[0].hook_payloads
        if results[0].recordings:
            one["recordings"] = results[0].recordings
            one["variables"] = results[0].variables
        return one
    return {
        "calls": len(results),
        "reasons": dict(Counter(r.reason for r in results)),
        "frames_sent": sum(r.frames_sent for r in results),
        "frames_dropped": sum(r.frames_dropped for r in results),
        "digits": dict(Counter(r.digits for r in results)),
        "duration_max": round(max(r.duration for r in results), 3),
        "recordings": dict(Counter(rec["cause"] for r in results for rec in r.recordings)),
        "results": [r.summary() for r in results],
    }


async def _with_progress(coro: Any, calls: int) -> list[CallResult]:
    task = asyncio.ensure_future(coro)
    if not sys.stderr.isatty():
        result: list[CallResult] = await task
        return result
    started = time.monotonic()
    while not task.done():
        await asyncio.wait({task}, timeout=0.5)
        print(
            f"\r{calls} call(s) running, {time.monotonic() - started:5.1f} s",
            end="",
            file=sys.stderr,
        )
    print(file=sys.stderr)
    done: list[CallResult] = task.result()
    return done


def run_call_command(args: argparse.Namespace) -> int:
    script = CallScript(
        caller=args.caller or "tone:440:5",
        callee=args.callee,
        dtmf=args.dtmf,
        dtmf_mode=args.dtmf_mode,
        codec=args.codec,
        ptime=args.ptime,
    )
    try:
        store = RecordingStore(
            directory=args.recordings,
            spool_directory=args.recordings.rstrip("/") + "-spool",
            store_recordings=args.store_recordings,
        )
        runs = run_calls(
            args.app, script, calls=args.calls, speed=args.speed, recording_store=store
        )
        results = asyncio.run(_with_progress(runs, args.calls))
    except (HarnessError, AppError, ConfigError) as exc:
        print(f"mediaserver call: {exc}", file=sys.stderr)
        return 2
    summary = summarise(results)
    if args.json:
        print(json.dumps(summary))
    else:
        for r in results:
            print(
                f"call {r.call_sid}: {r.reason} after {r.duration:.2f} s, digits "
                f"{r.digits or '-'}, frames sent {r.frames_sent}, dropped {r.frames_dropped}"
            )
            for rec in r.recordings:
                where = rec["path"] if rec["kept"] else "not kept"
                cause, ms = rec["cause"], rec["duration_ms"]
                print(f"  {rec['dialect']} recording: {cause}, {ms} ms, {where}")
    return 0 if all(r.reason != "error" for r in results) else 1
