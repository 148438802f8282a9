"""The demo the README's main command runs: detections right, WAVs right."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from mediaserver.demo import run_demo


def test_demo_detects_every_key_and_writes_stereo_wavs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_demo(out_dir=str(tmp_path), seconds=5.0, calls=3) == 0
    out = capsys.readouterr().out
    assert "all key presses and silences detected as sent" in out
    for i, digits in enumerate(("123", "#0*", "4567")):
        assert f"{i:<5} {digits:<6} {digits:<9}" in out
        with wave.open(str(tmp_path / f"demo-call{i}.wav")) as w:
            assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 16000, 2)
            audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
        assert audio.shape[0] == pytest.approx(5.0 * 16000, abs=320)
        # right channel = what the caller hears: the call's callee tone
        right = audio[8000:24000, 1].astype(np.float64)
        peak_hz = np.argmax(np.abs(np.fft.rfft(right))) * 16000 / right.size
        assert peak_hz == pytest.approx(440 + 110 * i, abs=2)
        # left channel = the caller: loud while talking, near silent at the end
        left = audio[:, 0].astype(np.float64)
        assert np.abs(left[8000:16000]).mean() > 500
        assert np.abs(left[-8000:]).mean() < 5


def test_demo_rejects_nonsense_arguments() -> None:
    with pytest.raises(SystemExit, match="--calls"):
        run_demo(calls=0)


def test_call_demo_lands_a_stereo_wav_in_the_receiver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mediaserver.demo import run_call_demo

    assert run_call_demo(out_dir=str(tmp_path), seconds=4.0, speed=8.0) == 0
    out = capsys.readouterr().out
    assert "dtmf 12#, 0 protocol violations, closed with 1000" in out
    wav_line = next(line for line in out.splitlines() if line.startswith("WAV:"))
    path = Path(wav_line.split(None, 1)[1])
    assert path.parent == (tmp_path / "receiver").resolve()
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 16000)
        assert w.getnframes() >= 16000 * 3.8
