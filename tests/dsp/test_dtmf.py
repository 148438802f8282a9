"""Tests for dsp/dtmf.py: Q.24 acceptance/rejection, timing, streaming, talk-off."""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy.io import wavfile
from scipy.signal import resample_poly

from dsp.dtmf import DTMF_KEYS, DtmfDetector, DtmfEvent, KeyDown, KeyUp
from dsp.tones import ToneSegment, dtmf_frequencies, render, render_digits

RATE = 8000
LEAD = 800  # silence before each test signal, samples at 8 kHz
DIGITS = list(DTMF_KEYS)
# Per-tone level used unless a test is about levels: -10 dBFS = about -7 dBm0.
LEVEL = -10.0


def run(
    signals: list[NDArray[np.int16]],
    *,
    rate: int = RATE,
    tick: int | None = None,
    lead: int = LEAD,
    detector: DtmfDetector | None = None,
) -> list[list[DtmfEvent]]:
    """Feed each signal (after ``lead`` samples of silence, then 0.3 s of
    silence) to its own leg in one batch, ``tick`` samples per call; return
    the events of each leg."""
    tick = tick or rate // 50
    length = lead + max(len(s) for s in signals) + int(0.3 * rate)
    length = -(-length // tick) * tick
    batch = np.zeros((len(signals), length), dtype=np.int16)
    for i, s in enumerate(signals):
        batch[i, lead : lead + len(s)] = s
    det = detector or DtmfDetector(len(signals), rate)
    per_leg: list[list[DtmfEvent]] = [[] for _ in signals]
    for at in range(0, length, tick):
        for event in det.process(batch[:, at : at + tick]):
            per_leg[event.slot].append(event)
    return per_leg


def keys(events: list[DtmfEvent]) -> list[tuple[str, str]]:
    return [(type(e).__name__, e.digit) for e in events]


def pressed(events: list[DtmfEvent]) -> str:
    """The digits of the completed key presses, checking Down/Up pairing."""
    assert [type(e) for e in events] == [KeyDown, KeyUp] * (len(events) // 2), events
    downs, ups = events[0::2], events[1::2]
    for down, up in zip(downs, ups, strict=True):
        assert (down.digit, down.start) == (up.digit, up.start)
    return "".join(e.digit for e in downs)


def dual(
    digit: str,
    seconds: float,
    *,
    low_shift: float = 0.0,
    high_shift: float = 0.0,
    level: float = LEVEL,
    twist_db: float = 0.0,
    rate: int = RATE,
) -> NDArray[np.int16]:
    """A DTMF pair with each tone shifted by a fraction of its frequency."""
    low, high = dtmf_frequencies(digit)
    segment = ToneSegment(
        ((low * (1 + low_shift), level), (high * (1 + high_shift), level - twist_db)), seconds
    )
    return render([segment], rate)


# -- every digit, frequency tolerance, twist, level -------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000])
def test_every_digit_is_reported_once_with_its_start_and_duration(rate: int) -> None:
    lead = LEAD * rate // RATE
    results = run([dual(d, 0.1, rate=rate) for d in DIGITS], rate=rate, lead=lead)
    for digit, events in zip(DIGITS, results, strict=True):
        assert pressed(events) == digit
        down, up = events
        assert isinstance(up, KeyUp)
        assert abs(down.start - lead) <= 0.005 * rate
        assert abs(up.duration - 0.1 * rate) <= 0.008 * rate
        assert abs(up.duration_ms - 100.0) <= 8.0
        assert abs(up.duration_8k - 800) <= 64  # passDtmf units, whatever the rate


SHIFTS_OK = [-0.015, 0.0, 0.015]


def test_digits_within_1_5_percent_are_accepted_in_every_combination() -> None:
    cases = [(d, lo, hi) for d in DIGITS for lo in SHIFTS_OK for hi in SHIFTS_OK]
    results = run([dual(d, 0.08, low_shift=lo, high_shift=hi) for d, lo, hi in cases])
    missed = [c for c, events in zip(cases, results, strict=True) if pressed(events) != c[0]]
    assert missed == []


SHIFTS_BAD = [-0.035, 0.0, 0.035]


@pytest.mark.parametrize("bad", [0.035, 0.05])
def test_digits_off_by_3_5_percent_or_more_are_rejected(bad: float) -> None:
    shifts = [-bad, 0.0, bad]
    cases = [
        (d, lo, hi) for d in DIGITS for lo in shifts for hi in shifts if (lo, hi) != (0.0, 0.0)
    ]
    results = run([dual(d, 0.1, low_shift=lo, high_shift=hi) for d, lo, hi in cases])
    accepted = [c for c, events in zip(cases, results, strict=True) if events]
    assert accepted == []


@pytest.mark.parametrize(
    ("twist", "accepted"), [(8.0, True), (-4.0, True), (12.0, False), (-8.0, False)]
)
def test_twist_limits(twist: float, accepted: bool) -> None:
    # Positive twist: high group weaker (normal); negative: high group stronger (reverse).
    results = run([dual(d, 0.08, twist_db=twist, level=-6.0) for d in DIGITS])
    got = "".join(pressed(events) for events in results)
    assert got == ("".join(DIGITS) if accepted else "")


def test_quiet_digits_below_the_level_floor_are_ignored() -> None:
    # -30 dBm0 per tone is the floor; 0 dBm0 is 3.17 dB below a full-scale sine.
    loud = [dual(d, 0.08, level=-26.0 - 3.17) for d in DIGITS]
    quiet = [dual(d, 0.08, level=-36.0 - 3.17) for d in DIGITS]
    results = run(loud + quiet)
    assert [pressed(e) for e in results[:16]] == DIGITS
    assert not any(results[16:])


def test_a_second_tone_in_the_same_group_blocks_detection() -> None:
    # 697 + 770 + 1209 Hz is not a key, even though 697 + 1209 is "1".
    segment = ToneSegment(((697.0, LEVEL), (770.0, LEVEL), (1209.0, LEVEL)), 0.1)
    assert run([render([segment])]) == [[]]


# -- timing ------------------------------------------------------------------------------


def test_40_ms_is_accepted_and_25_ms_rejected_wherever_the_tone_falls() -> None:
    offsets = range(0, 160, 9)  # tone onset relative to the 20 ms tick grid
    durations = {0.040: True, 0.025: False, 0.020: False}
    cases = [(d, dur, off) for d in "159D" for dur in durations for off in offsets]
    signals = [np.concatenate([np.zeros(off, np.int16), dual(d, dur)]) for d, dur, off in cases]
    results = run(signals)
    wrong = [
        c
        for c, events in zip(cases, results, strict=True)
        if pressed(events) != (c[0] if durations[c[1]] else "")
    ]
    assert wrong == []


@pytest.mark.parametrize("tick", [160, 80, 37, 320, 1])
def test_detection_does_not_depend_on_tick_boundaries(tick: int) -> None:
    offsets = list(range(0, 160, 13))
    signals = [np.concatenate([np.zeros(off, np.int16), dual("7", 0.06)]) for off in offsets]
    if tick == 1:
        signals = signals[:2]  # sample-by-sample is slow; two offsets are enough
    results = run(signals, tick=tick)
    for off, events in zip(offsets, results, strict=False):
        assert pressed(events) == "7"
        down, up = events
        assert isinstance(up, KeyUp)
        assert abs(down.start - (LEAD + off)) <= 40  # 5 ms
        assert abs(up.duration - 480) <= 64  # 60 ms +- 8 ms


def test_key_down_arrives_soon_after_the_onset_and_key_up_after_the_release() -> None:
    tone = render_digits([("#", 0.5, 0.3)], total_seconds=1.5)
    det = DtmfDetector(1)
    arrivals: list[tuple[str, int]] = []
    for at in range(0, len(tone), 160):
        for event in det.process(tone[None, at : at + 160]):
            arrivals.append((type(event).__name__, at + 160))
    assert [a[0] for a in arrivals] == ["KeyDown", "KeyUp"]
    down_latency = arrivals[0][1] - 4000
    up_latency = arrivals[1][1] - 6400
    assert 0 < down_latency <= 480  # <= 60 ms after the key went down
    assert 0 < up_latency <= 480


def test_sequence_with_50_ms_gaps_reports_every_key_once_in_order() -> None:
    on, off = 0.05, 0.05
    placements = [(d, i * (on + off), on) for i, d in enumerate(DIGITS * 2)]
    results = run([render_digits(placements)])
    assert pressed(results[0]) == "".join(DIGITS * 2)
    starts = [e.start - LEAD for e in results[0][0::2]]
    expected = [round(p[1] * RATE) for p in placements]
    assert np.abs(np.subtract(starts, expected)).max() <= 40


def test_a_long_press_is_one_key_and_a_short_dropout_does_not_split_it() -> None:
    long_press = dual("0", 2.0)
    broken = np.concatenate([dual("0", 0.3), np.zeros(120, np.int16), dual("0", 0.3)])
    pause = np.concatenate([dual("0", 0.3), np.zeros(400, np.int16), dual("0", 0.3)])
    results = run([long_press, broken, pause])
    assert pressed(results[0]) == "0"
    up = results[0][1]
    assert isinstance(up, KeyUp) and abs(up.duration - 16000) <= 64
    assert pressed(results[1]) == "0"  # a 15 ms dropout is not a release
    assert pressed(results[2]) == "00"  # a 50 ms pause is


def test_a_new_digit_without_a_pause_releases_the_previous_key() -> None:
    x = np.concatenate([dual("1", 0.1), dual("2", 0.1)])
    (events,) = run([x])
    assert pressed(events) == "12"
    first, second = events[1], events[2]
    assert isinstance(first, KeyUp)
    assert abs(first.duration - 800) <= 64 and abs(second.start - (LEAD + 800)) <= 40


# -- noise and speech ----------------------------------------------------------------------


@pytest.mark.parametrize("snr_db", [20.0, 10.0])
def test_white_noise_does_not_block_detection(snr_db: float) -> None:
    rng = np.random.default_rng(int(snr_db))
    signals = []
    for digit in DIGITS * 2:
        clean = dual(digit, 0.06).astype(np.float64)
        framed = np.concatenate([np.zeros(400), clean, np.zeros(2400)])
        noise_power = np.mean(clean**2) / 10 ** (snr_db / 10)
        noisy = framed + rng.normal(0.0, np.sqrt(noise_power), framed.size)
        signals.append(np.clip(np.rint(noisy), -32768, 32767).astype(np.int16))
    results = run(signals, lead=0)
    assert [pressed(events) for events in results] == DIGITS * 2


@pytest.mark.parametrize("dbfs", [-40.0, -20.0, -6.0])
def test_white_noise_alone_is_not_a_key(dbfs: float) -> None:
    rng = np.random.default_rng(7)
    sigma = 32767 / np.sqrt(2) * 10 ** (dbfs / 20)
    noise = [np.clip(rng.normal(0, sigma, 5 * RATE), -32768, 32767).astype(np.int16)]
    assert run(noise * 4) == [[], [], [], []]


SENTENCES = (
    "Thank you for calling. Please listen carefully, as our menu options have changed. "
    "For billing questions, press one. To report a problem with your service, press two. "
    "Seven hundred and ninety seven people waited for the nine forty one train to Boston. "
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells. "
    "Hello, can you hear me now? I am calling about invoice number four eight six one."
)


@pytest.fixture(scope="session")
def speech_8k(tmp_path_factory: pytest.TempPathFactory) -> list[NDArray[np.int16]]:
    """About 100 s of espeak-ng speech, four voice/speed combinations, at 8 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.fail(
            "espeak-ng is not installed; the talk-off test needs it "
            "(scripts/setup.sh --system installs it, or apt-get install espeak-ng)"
        )
    out: list[NDArray[np.int16]] = []
    folder = tmp_path_factory.mktemp("speech")
    for voice, speed in [("en", 140), ("en+f3", 200), ("en-us+m3", 170), ("en+f4", 140)]:
        path = Path(folder) / f"{voice}-{speed}.wav"
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), SENTENCES]
        subprocess.run(cmd, check=True, capture_output=True)
        rate, samples = wavfile.read(path)
        assert rate == 22050
        resampled = resample_poly(samples.astype(np.float64), 160, 441)
        out.append(np.clip(np.rint(resampled), -32768, 32767).astype(np.int16))
    return out


def test_no_digits_detected_in_speech(speech_8k: list[NDArray[np.int16]]) -> None:
    total_seconds = sum(len(s) for s in speech_8k) / RATE
    assert total_seconds >= 60.0
    louder = [np.clip(s.astype(np.int32) * 2, -32768, 32767).astype(np.int16) for s in speech_8k]
    quieter = [(s // 4).astype(np.int16) for s in speech_8k]
    results = run(speech_8k + louder + quieter)
    false_keys = [(i, e) for i, events in enumerate(results) for e in events]
    assert false_keys == [], f"talk-off: {len(false_keys)} events in {3 * total_seconds:.0f} s"


def test_digits_are_still_found_right_after_speech(speech_8k: list[NDArray[np.int16]]) -> None:
    x = np.concatenate([speech_8k[0][: 8 * RATE], render_digits([("4", 0.1, 0.07)])])
    (events,) = run([x])
    assert pressed(events) == "4"


# -- batching, slots, reset ------------------------------------------------------------------

plans = st.lists(
    st.tuples(
        st.sampled_from(DIGITS),
        st.integers(20, 120),  # on, ms
        st.integers(30, 120),  # off, ms
        st.floats(-25.0, -6.0),  # level, dBFS per tone
    ),
    min_size=0,
    max_size=3,
)


def render_plan(plan: list[tuple[str, int, int, float]]) -> NDArray[np.int16]:
    segments = []
    for digit, on, off, level in plan:
        segments += [ToneSegment.dtmf(digit, on / 1000, level), ToneSegment.silence(off / 1000)]
    return render(segments) if segments else np.zeros(160, np.int16)


@settings(max_examples=25, deadline=None)
@given(
    legs=st.lists(plans, min_size=1, max_size=4),
    order=st.randoms(use_true_random=False),
    tick=st.sampled_from([160, 80, 240]),
)
def test_batch_result_equals_per_leg_result(
    legs: list[list[tuple[str, int, int, float]]], order: random.Random, tick: int
) -> None:
    signals = [render_plan(plan) for plan in legs]
    length = -(-(max(map(len, signals)) + 3000) // tick) * tick
    batch = np.zeros((len(signals), length), np.int16)
    for i, s in enumerate(signals):
        batch[i, 400 : 400 + len(s)] = s
    capacity = 6
    slots = list(range(capacity))
    order.shuffle(slots)
    slots = slots[: len(signals)]
    batched = DtmfDetector(capacity)
    together: list[DtmfEvent] = []
    for at in range(0, length, tick):
        together += batched.process(batch[:, at : at + tick], np.array(slots))
    for i, slot in enumerate(slots):
        alone = DtmfDetector(1)
        own: list[DtmfEvent] = []
        for at in range(0, length, tick):
            own += alone.process(batch[i : i + 1, at : at + tick])
        mine = [e for e in together if e.slot == slot]
        assert [(type(e), e.digit, e.start) for e in mine] == [
            (type(e), e.digit, e.start) for e in own
        ]
        assert [e.duration for e in mine if isinstance(e, KeyUp)] == [
            e.duration for e in own if isinstance(e, KeyUp)
        ]


def test_legs_in_different_states_in_one_batch_each_match_the_leg_alone() -> None:
    # One batch where, in the same ticks, some legs start runs, some reach the
    # key-down count (in tune or not), some hold a key for long, some drop
    # out briefly, some release or switch digits without a pause: no leg's
    # events may depend on what the others are doing.
    rng = random.Random(2024)
    signals = []
    for _ in range(48):
        segments = [ToneSegment.silence(rng.randrange(0, 160) / RATE)]
        for _ in range(rng.randint(1, 4)):
            digit = rng.choice(DIGITS)
            shift = rng.choice([0.0, 0.0, 0.0, 0.01, -0.035])
            low, high = dtmf_frequencies(digit)
            tone = ((low * (1 + shift), LEVEL), (high, LEVEL - rng.choice([0.0, 4.0])))
            segments.append(ToneSegment(tone, rng.choice([0.025, 0.04, 0.06, 0.1, 0.3])))
            segments.append(ToneSegment.silence(rng.choice([0.0, 0.01, 0.03, 0.06, 0.1])))
        signals.append(render(segments))
    tick = 160
    length = -(-(max(map(len, signals)) + 2400) // tick) * tick
    batch = np.zeros((len(signals), length), np.int16)
    for i, s in enumerate(signals):
        batch[i, : len(s)] = s
    slots = np.array(rng.sample(range(64), len(signals)))
    together: list[DtmfEvent] = []
    batched = DtmfDetector(64)
    for at in range(0, length, tick):
        together += batched.process(batch[:, at : at + tick], slots)
    assert sum(isinstance(e, KeyDown) for e in together) >= 40  # the mix really has keys
    for i, slot in enumerate(slots.tolist()):
        alone = DtmfDetector(1)
        own: list[DtmfEvent] = []
        for at in range(0, length, tick):
            own += alone.process(batch[i : i + 1, at : at + tick])
        mine = [e for e in together if e.slot == slot]
        assert [replace(e, slot=0) for e in mine] == own, f"leg {i}"


@settings(max_examples=25, deadline=None)
@given(
    victim=st.integers(0, 2),
    reset_ms=st.integers(0, 400),
    digits=st.lists(st.sampled_from(DIGITS), min_size=3, max_size=3),
    after=st.sampled_from(["", "5", "#"]),
)
def test_reset_mid_tone_clears_only_that_slot(
    victim: int, reset_ms: int, digits: list[str], after: str
) -> None:
    tick = 160
    signals = [
        render_digits([(d, 0.1, 0.25 + 0.05 * i)], total_seconds=1.0) for i, d in enumerate(digits)
    ]
    batch = np.stack(signals)
    reset_at = reset_ms * RATE // 1000 // tick * tick
    fresh = render_digits([(after, 0.1, 0.1)], total_seconds=0.6) if after else np.zeros(4800)
    fresh = fresh.astype(np.int16)

    baseline = run(signals, lead=0)
    det = DtmfDetector(3)
    events: list[DtmfEvent] = []
    before_reset: list[DtmfEvent] = []
    for at in range(0, reset_at, tick):
        before_reset += det.process(batch[:, at : at + tick])
    det.reset(victim)
    # After the reset the victim slot carries a new call: silence, maybe a new key.
    tail = batch[:, reset_at:].copy()
    tail[victim] = 0
    tail[victim, : min(len(fresh), tail.shape[1])] = fresh[: tail.shape[1]]
    tail = np.concatenate([tail, np.zeros((3, 2400), np.int16)], axis=1)
    for at in range(0, tail.shape[1], tick):
        events += det.process(tail[:, at : at + tick])

    for slot in range(3):
        mine = [e for e in before_reset + events if e.slot == slot]
        if slot != victim:
            assert mine == baseline[slot]  # neighbours never notice
        else:
            after_reset = [e for e in events if e.slot == victim]
            # The interrupted key is dropped (no KeyUp); the new call sees only its own key,
            # timed from the reset.
            if after:
                assert pressed(after_reset) == after
                assert abs(after_reset[0].start - 800) <= 40
            else:
                assert after_reset == []


def test_slots_map_rows_to_state_rows() -> None:
    det = DtmfDetector(5)
    x = np.stack([dual("3", 0.1), dual("C", 0.1)])
    x = np.concatenate([x, np.zeros((2, 3200), np.int16)], axis=1)
    events: list[DtmfEvent] = []
    for at in range(0, x.shape[1] - 160, 160):
        events += det.process(x[:, at : at + 160], [4, 1])
    assert sorted((e.slot, e.digit) for e in events if isinstance(e, KeyUp)) == [
        (1, "C"),
        (4, "3"),
    ]


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="rate"):
        DtmfDetector(1, rate=11025)
    det = DtmfDetector(2)
    with pytest.raises(ValueError, match="slots"):
        det.process(np.zeros((2, 160), np.int16), [0, 2])
    with pytest.raises(ValueError, match="slots"):
        det.process(np.zeros((2, 160), np.int16), [0])
    with pytest.raises(ValueError, match="frames"):
        det.process(np.zeros(160, np.int16))
    with pytest.raises(ValueError, match="frames"):
        det.process(np.zeros((3, 160), np.int16))
