#!/usr/bin/env bash
# Installs what the project needs on a fresh machine, idempotently:
#   scripts/setup.sh [--system] [--extras dev,bench]
#   --system   also install the Debian packages the tests and benches use
#              (sip-tester, baresip-core, espeak-ng, sox, multimon-ng, openssl,
#              kamailio)
#              when missing
#   --extras   pip extras for the virtualenv (default: none)
# The virtualenv lives in .venv; a stamp keyed on pyproject.toml skips pip
# when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

system=0
extras=""
while [ $# -gt 0 ]; do
  case "$1" in
    --system) system=1 ;;
    --extras) extras="$2"; shift ;;
    *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# command -> Debian package
declare -A SYSTEM_PACKAGES=(
  [sipp]=sip-tester
  [espeak-ng]=espeak-ng
  [sox]=sox
  [multimon-ng]=multimon-ng
  [openssl]=openssl
  [baresip]=baresip-core
  [kamailio]=kamailio
)

apt_install() {
  local runner=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      runner=(sudo -n)
    else
      echo "setup.sh: need root (or passwordless sudo) to apt-get install: $*" >&2
      exit 1
    fi
  fi
  echo "setup.sh: installing Debian packages: $*" >&2
  "${runner[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  "${runner[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "$system" = 1 ]; then
  missing=()
  for cmd in "${!SYSTEM_PACKAGES[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${SYSTEM_PACKAGES[$cmd]}")
  done
  # SIPp's bundled RTP captures are part of the test fixtures.
  [ -f /usr/share/sip-tester/g711a.pcap ] || missing+=(sip-tester)
  if [ ${#missing[@]} -gt 0 ]; then
    # shellcheck disable=SC2046
    apt_install $(printf '%s\n' "${missing[@]}" | sort -u)
  fi
fi

pick_python() {
  for py in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "setup.sh: need Python >= 3.11 (set PYTHON=/path/to/python3)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(pick_python)
  if ! "$py" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$py" -m venv .venv
  fi
fi

stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras:-none}"
if [ ! -f "$stamp" ]; then
  target="."
  [ -n "$extras" ] && target=".[$extras]"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "$target"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
