#!/usr/bin/env bash
# SIPp call-setup rate ramp against serve (issue 6), loopback only, bounded in time.
#
# Starts serve (pinned to CPU 0 with taskset where available; app: a 30 s
# pause, so serve never hangs up first), then for each rate runs SIPp's
# built-in UAC scenario (INVITE, ACK, 1 s call, BYE) for SECONDS seconds
# and prints the rate asked, the calls per second completed, and failed
# calls. Stops at the first rate with a failure. Kills serve on exit.
#
# Usage: bench/sipp_load.sh [RATES] [SECONDS]   e.g. bench/sipp_load.sh "50 100 200 300" 10
# It must not touch anything but loopback ports and a temporary directory.
set -euo pipefail

RATES=${1:-"50 100 200 300 400"}
SECONDS_PER_RATE=${2:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
command -v sipp >/dev/null || { echo "sipp not found (Debian: sip-tester)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/sipp-load.XXXXXX)
SERVE_PID=""
cleanup() {
  if [[ -n $SERVE_PID ]] && kill -0 "$SERVE_PID" 2>/dev/null; then
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVE_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
SIP_PORT=$(free_port)
SIPP_PORT=$(free_port)
ADMIN_PORT=$(free_port)
echo '[{"verb": "pause", "length": 30}]' >"$WORK/app.json"
PIN=()
if command -v taskset >/dev/null && [[ $(nproc) -gt 1 ]]; then PIN=(taskset -c 0); fi
(cd "$ROOT" && exec "${PIN[@]}" "$PY" -m mediaserver.cli --log-json --log-level WARNING serve \
   --sip "127.0.0.1:$SIP_PORT" --rtp-ports 42000-45999 --app "$WORK/app.json" \
   --max-calls 2000 --admin "127.0.0.1:$ADMIN_PORT") >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 150); do
  curl -fs "http://127.0.0.1:$ADMIN_PORT/health" >/dev/null 2>&1 && break
  kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
  sleep 0.2
done

printf '%-10s %-10s %-12s %-8s %-8s\n' "rate" "calls" "completed" "failed" "CPS"
for RATE in $RATES; do
  CALLS=$((RATE * SECONDS_PER_RATE))
  START=$(date +%s.%N)
  set +e
  (cd "$WORK" && timeout $((SECONDS_PER_RATE + 40)) sipp "127.0.0.1:$SIP_PORT" -sn uac \
     -i 127.0.0.1 -p "$SIPP_PORT" -r "$RATE" -m "$CALLS" -d 1000 -l $((RATE * 4)) \
     -nostdin -timeout $((SECONDS_PER_RATE + 30))s -timeout_error -recv_timeout 5000 \
     -trace_stat -stf "stat_$RATE.csv" -fd 1 >/dev/null 2>&1)
  set -e
  END=$(date +%s.%N)
  STAT="$WORK/stat_$RATE.csv"
  # SIPp's stat CSV: last line, cumulative SuccessfulCall(C) and FailedCall(C) columns
  read -r OK FAILED < <("$PY" - "$STAT" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=";"))
head, last = rows[0], rows[-1]
print(last[head.index("SuccessfulCall(C)")], last[head.index("FailedCall(C)")])
PY
)
  CPS=$("$PY" -c "print(f'{$OK / ($END - $START - 1.0):.1f}')")
  printf '%-10s %-10s %-12s %-8s %-8s\n' "$RATE" "$CALLS" "$OK" "$FAILED" "$CPS"
  if [[ $FAILED -ne 0 || $OK -ne $CALLS ]]; then
    echo "stopped: $FAILED failed, $OK of $CALLS completed at $RATE calls/s"
    break
  fi
  sleep 2  # let serve finish the last calls before the next rate
done
