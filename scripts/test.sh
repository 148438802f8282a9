#!/usr/bin/env bash
# The test command: installs everything the suite needs (Debian packages,
# virtualenv with dev extras), then runs lint, type checks and the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k resample).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system --extras dev,bench
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
