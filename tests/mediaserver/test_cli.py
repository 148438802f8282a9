"""The command line: help describes the real subcommands; stubs say so clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mediaserver.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mediaserver.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_describes_serve_call_and_receiver() -> None:
    res = run_cli("--help")
    assert res.returncode == 0
    for name in ("serve", "call", "receiver", "demo"):
        assert name in res.stdout
    serve = run_cli("serve", "--help").stdout
    for opt in ("--config", "--sip", "--rtp-ports", "--app", "--max-calls", "--workers"):
        assert opt in serve
    call = run_cli("call", "--help").stdout
    for opt in ("--caller", "--callee", "--dtmf", "--dtmf-mode", "--codec", "--speed", "--calls"):
        assert opt in call


def test_call_with_a_missing_app_file_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", "nope.json"]) == 2
    assert "app: no such file 'nope.json'" in capsys.readouterr().err


def test_bad_choice_is_a_usage_error_naming_the_option() -> None:
    res = run_cli("call", "app.json", "--codec", "GSM")
    assert res.returncode == 2
    assert "--codec" in res.stderr and "GSM" in res.stderr


def test_serve_reports_a_bad_config_value_by_field(tmp_path: object) -> None:
    res = run_cli("serve", "--rtp-ports", "5000-4000")
    assert res.returncode == 2
    assert "[rtp] port_low/port_high" in res.stderr
    res = run_cli("serve", "--sip", "127.0.0.1:99999")
    assert res.returncode == 2 and "--sip: port must be 1..65535" in res.stderr
    res = run_cli("serve", "--workers", "0")
    assert res.returncode == 2 and "[calls] workers: must be >= 1, got 0" in res.stderr
    res = run_cli("serve", "--workers", "3", "--rtp-ports", "40000-40004")
    assert res.returncode == 2
    assert "[rtp] port_low/port_high: 3 workers need at least 6 ports" in res.stderr


def test_call_records_in_both_dialects_and_reports_the_files(tmp_path: Path) -> None:
    app = tmp_path / "app.json"
    app.write_text(
        json.dumps(
            [
                {"record_call": {"control_id": "c1", "format": "mp3"}},
                {"module": "record_call", "data": {"format": "wav"}},
                {"verb": "pause", "length": 1},
            ]
        )
    )
    rec = tmp_path / "rec"
    res = run_cli(
        "--log-level", "WARNING", "call", str(app), "--caller", "tone:440:2", "--speed", "10",
        "--json", "--recordings", str(rec), "--store-recordings",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.splitlines()[-1])
    by_dialect = {r["dialect"]: r for r in summary["recordings"]}
    assert by_dialect["swml"]["cause"] == "success-hangup" and by_dialect["swml"]["kept"]
    assert Path(by_dialect["swml"]["path"]).is_file()
    assert summary["variables"]["record_control_id"] == "c1"
    stored = sorted(p.name for p in rec.iterdir())
    call_id = summary["call_sid"] + "@mediaserver-call"
    # Kazoo, no url, --store-recordings: kept with its metadata beside it
    assert f"call_recording_{call_id}.wav" in stored
    assert f"call_recording_{call_id}.wav.json" in stored
