#!/usr/bin/env bash
# The main command: installs the project and runs it on its embedded defaults.
# Extra arguments go to `mediaserver demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mediaserver --log-level WARNING demo "$@"
