"""Shared timing helpers for the bench scripts (not part of the package).

``per_call_ms`` returns the median wall time of ``fn()`` in milliseconds over
several repeats after a warm-up, so one scheduling hiccup on a busy 2-core
machine does not decide a comparison.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def per_call_ms(fn: Callable[[], object], *, repeat: int = 7, number: int = 20) -> float:
    fn()  # warm-up: caches, lazy tables, BLAS threads
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - t0) / number)
    return statistics.median(runs) * 1e3


def row(*cells: object, widths: tuple[int, ...] = (34, 12, 12, 10)) -> str:
    out = []
    for i, cell in enumerate(cells):
        w = widths[i] if i < len(widths) else 12
        text = f"{cell:.3f}" if isinstance(cell, float) else str(cell)
        out.append(text.ljust(w) if i == 0 else text.rjust(w))
    return " ".join(out)
