"""The DSP benchmark: every dsp/ stage side by side with a named peer.

Runs each section's ``main()`` in turn (bench/dsp_*.py): codecs vs audioop,
resampling vs soxr and PyAV, energy/silence/mixing vs audioop, in-band DTMF
accuracy vs multimon-ng. Usage: ``.venv/bin/python bench/dsp_bench.py
[section ...]`` where a section is codecs, resample, levels or dtmf.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ("codecs", "resample", "levels", "dtmf")


def _load(name: str) -> object:
    path = HERE / f"dsp_{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_dsp_{name}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"dsp_bench: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    chosen = argv or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        print(f"dsp_bench: unknown section(s) {unknown}; choose from {SECTIONS}", file=sys.stderr)
        return 2
    import numpy as np

    print(
        f"# dsp_bench on {platform.machine()} {platform.processor() or ''} "
        f"cpus={os.cpu_count()} python={platform.python_version()} numpy={np.__version__} "
        f"BLAS threads={os.environ['OPENBLAS_NUM_THREADS']} (one core, as the engine runs)"
    )
    start = time.perf_counter()
    for name in chosen:
        t0 = time.perf_counter()
        module = _load(name)
        module.main()  # type: ignore[attr-defined]
        print(f"({name}: {time.perf_counter() - t0:.1f} s)\n")
    print(f"# total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    # Measure on one core, as the engine runs: BLAS must not use a second thread.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    sys.path.insert(0, str(HERE))
    sys.exit(main(sys.argv[1:]))
