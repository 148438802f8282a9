"""The command line: help describes the real subcommands; stubs say so clearly."""

from __future__ import annotations

import subprocess
import sys

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
