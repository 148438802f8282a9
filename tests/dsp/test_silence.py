"""Silence detection: FreeSWITCH score, thresholds, media-time timers, batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsp.silence import (
    DEFAULT_THRESHOLD,
    SilenceDetector,
    SilenceExpiry,
    dbfs_from_threshold,
    energy_score,
    threshold_from_dbfs,
)

RATE = 8000
FRAME = 160


def tone(amplitude: float, seconds: float, rate: int = RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def run(det: SilenceDetector, signal: np.ndarray, frame: int = FRAME) -> list[tuple[int, int]]:
    """Feed a [legs, n] signal tick by tick; return (tick, expiry) for each expiry of leg 0."""
    fired = []
    for i in range(signal.shape[1] // frame):
        d = det.process(signal[:, i * frame : (i + 1) * frame])
        if d.expiry[0]:
            fired.append((i, int(d.expiry[0])))
    return fired


def test_score_is_mean_abs_at_8k_and_doubled_at_16k() -> None:
    x = np.full((1, 160), -300, dtype=np.int16)
    assert energy_score(x, 8000)[0] == pytest.approx(300.0)
    y = np.full((1, 320), 300, dtype=np.int16)
    assert energy_score(y, 16000)[0] == pytest.approx(600.0)


def test_score_handles_full_scale_negative_without_overflow() -> None:
    x = np.full((2, 160), -32768, dtype=np.int16)
    assert energy_score(x)[0] == pytest.approx(32768.0)


def test_dbfs_view_round_trips_and_places_default_near_minus_44() -> None:
    assert dbfs_from_threshold(DEFAULT_THRESHOLD) == pytest.approx(-44.29, abs=0.01)
    for db in (-60.0, -44.0, -20.0, 0.0):
        assert dbfs_from_threshold(threshold_from_dbfs(db)) == pytest.approx(db)
    with pytest.raises(ValueError, match="threshold"):
        dbfs_from_threshold(0)


def test_frames_below_threshold_are_silent_above_are_loud() -> None:
    det = SilenceDetector(2)
    quiet = tone(150, 0.02)  # mean |x| ~ 95
    loud = tone(1000, 0.02)  # mean |x| ~ 637
    d = det.process(np.stack([quiet, loud]))
    assert d.silent[:, 0].tolist() == [True, False]
    assert d.speech_detected.tolist() == [False, True]


def test_final_timeout_fires_once_after_speech_then_silence() -> None:
    det = SilenceDetector(1)
    det.configure(0, final_timeout_ms=1000)
    sig = np.concatenate([tone(3000, 0.5), np.zeros(int(3 * RATE), np.int16)])[None, :]
    fired = run(det, sig)
    # speech ends after tick 24 (0.5 s); 1000 ms of silence = 50 ticks later
    assert fired == [(24 + 50, SilenceExpiry.SILENCE)]


def test_initial_timeout_reports_no_input_when_nobody_speaks() -> None:
    det = SilenceDetector(1)
    det.configure(0, initial_timeout_ms=2000, final_timeout_ms=500)
    fired = run(det, np.zeros((1, 3 * RATE), np.int16))
    assert fired == [(99, SilenceExpiry.NO_INPUT)]


def test_new_speech_restarts_the_silence_clock() -> None:
    det = SilenceDetector(1)
    det.configure(0, final_timeout_ms=600)
    pieces = [
        tone(3000, 0.2),
        np.zeros(int(0.4 * RATE), np.int16),
        tone(3000, 0.2),
        np.zeros(int(1.0 * RATE), np.int16),
    ]
    fired = run(det, np.concatenate(pieces)[None, :])
    # 0.4 s gap is shorter than the 0.6 s timeout; expiry 0.6 s after the second burst (tick 39)
    assert fired == [(39 + 30, SilenceExpiry.SILENCE)]


def test_disabled_timers_never_fire() -> None:
    det = SilenceDetector(1)
    assert run(det, np.zeros((1, 5 * RATE), np.int16)) == []


def test_batch_slots_have_independent_settings_and_timers() -> None:
    det = SilenceDetector(4)
    det.configure([1], initial_timeout_ms=200)
    det.configure([3], initial_timeout_ms=400)
    hits: dict[int, int] = {}
    for i in range(30):
        d = det.process(np.zeros((2, FRAME), np.int16), slots=np.array([3, 1]))
        for row, slot in enumerate((3, 1)):
            if d.expiry[row]:
                hits[slot] = i
    assert hits == {1: 9, 3: 19}


def test_multi_frame_chunks_match_tick_by_tick() -> None:
    rng = np.random.default_rng(7)
    sig = (
        rng.standard_normal((3, 4 * RATE)) * np.repeat(rng.uniform(0, 600, (3, 200)), 160, axis=1)
    ).astype(np.int16)
    a, b = SilenceDetector(3), SilenceDetector(3)
    for det in (a, b):
        det.configure([0, 1, 2], initial_timeout_ms=300, final_timeout_ms=300)
    tick = [a.process(sig[:, i : i + 160]) for i in range(0, sig.shape[1], 160)]
    chunk = [b.process(sig[:, i : i + 800]) for i in range(0, sig.shape[1], 800)]
    np.testing.assert_array_equal(
        np.concatenate([d.silent for d in tick], axis=1),
        np.concatenate([d.silent for d in chunk], axis=1),
    )
    np.testing.assert_array_equal(
        np.sum([d.expiry != 0 for d in tick], axis=0),
        np.sum([d.expiry != 0 for d in chunk], axis=0),
    )


@settings(max_examples=40, deadline=None)
@given(
    reset_at=st.integers(min_value=0, max_value=40),
    other=st.integers(min_value=0, max_value=2),
)
def test_reset_makes_a_slot_fresh_and_leaves_others_alone(reset_at: int, other: int) -> None:
    """A reset slot behaves exactly like a fresh detector; other slots don't notice."""
    rng = np.random.default_rng(reset_at)
    levels = np.repeat(rng.choice([0, 0, 0, 2000], size=(3, 60)), FRAME, axis=1)
    sig = (rng.standard_normal((3, 60 * FRAME)) * levels).astype(np.int16)
    det, control, fresh = SilenceDetector(3), SilenceDetector(3), SilenceDetector(1)
    for d in (det, control):
        d.configure([0, 1, 2], initial_timeout_ms=200, final_timeout_ms=100)
    fresh.configure(0, initial_timeout_ms=200, final_timeout_ms=100)
    target = (other + 1) % 3
    for i in range(60):
        frame = sig[:, i * FRAME : (i + 1) * FRAME]
        if i == reset_at:
            det.reset(target)
        got, ref = det.process(frame), control.process(frame)
        untouched = [s for s in range(3) if s != target]
        np.testing.assert_array_equal(got.expiry[untouched], ref.expiry[untouched])
        if i >= reset_at:
            new = fresh.process(frame[target : target + 1])
            assert got.expiry[target] == new.expiry[0]
            assert got.speech_detected[target] == new.speech_detected[0]


def test_bad_input_names_the_field() -> None:
    det = SilenceDetector(2)
    with pytest.raises(ValueError, match="dtype"):
        det.process(np.zeros((2, 160), np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of 160"):
        det.process(np.zeros((2, 100), np.int16))
    with pytest.raises(ValueError, match="slots"):
        det.process(np.zeros((1, 160), np.int16), slots=np.array([5]))
    with pytest.raises(ValueError, match="initial_timeout_ms"):
        det.configure(0, initial_timeout_ms=-1)
    with pytest.raises(ValueError, match="sample_rate"):
        SilenceDetector(1, sample_rate=11025)


def test_16k_frames_use_16k_frame_length() -> None:
    det = SilenceDetector(1, sample_rate=16000)
    det.configure(0, final_timeout_ms=100)
    sig = np.concatenate([tone(3000, 0.1, 16000), np.zeros(3200, np.int16)])[None, :]
    assert run(det, sig, frame=320) == [(4 + 5, SilenceExpiry.SILENCE)]
