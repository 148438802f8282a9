"""Streaming batch resampler: chunking, state per slot, quality, validation.

Quality figures are asserted at the issue's targets (the bench prints the
precise values): passband flat within 0.1 dB up to 0.45 x the lower rate,
THD+N of a 1 kHz sine at -3 dBFS below -80 dB, out-of-band tones at least
80 dB down. Pairs that run a cascade or a half-band stage get the streaming
and reset checks with explicit chunkings too, not only hypothesis' picks.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray
from scipy.signal import upfirdn

import dsp.resample as resample_module
from dsp.resample import SUPPORTED_RATES, Resampler, design_filter, to_int16

PAIRS = list(itertools.product(SUPPORTED_RATES, SUPPORTED_RATES))
CONVERTING = [(a, b) for a, b in PAIRS if a != b]
MINUS_3_DBFS = 32767 * 10 ** (-3 / 20)
# Pairs with more than one stage or a half-band stage (see dsp.resample's docstring).
STRUCTURED = [
    (16000, 8000),
    (32000, 16000),
    (48000, 24000),
    (64000, 32000),
    (48000, 8000),
    (64000, 8000),
]


def _speech_like(legs: int, rate: int, seconds: float, seed: int = 0) -> NDArray[np.int16]:
    """Noise plus a few tones per leg, int16, loud enough to exercise every tap."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    x = rng.standard_normal((legs, t.size)) * 3000
    for leg in range(legs):
        for f in rng.uniform(100, 0.45 * rate, 3):
            x[leg] += 4000 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def _in_chunks(
    r: Resampler, x: NDArray[np.int16] | NDArray[np.float64], sizes: list[int]
) -> NDArray[np.float32]:
    outs, start = [], 0
    for size in sizes:
        outs.append(r.process(x[:, start : start + size]))
        start += size
    outs.append(r.process(x[:, start:]))
    return np.concatenate(outs, axis=1)


def _fit_tone(y: NDArray[np.floating], freq: float, rate: int) -> tuple[float, float, float]:
    """Least-squares fit of ``A sin(2 pi f n / rate + phase) + dc``: (A, phase, residual RMS)."""
    n = np.arange(y.size)
    w = 2 * np.pi * freq / rate
    basis = np.stack([np.sin(w * n), np.cos(w * n), np.ones_like(n, dtype=float)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y.astype(np.float64), rcond=None)
    resid = y - basis @ coef
    return (
        float(np.hypot(coef[0], coef[1])),
        float(np.arctan2(coef[1], coef[0])),
        float(np.sqrt(np.mean(resid**2))),
    )


def _settled(r: Resampler, y: NDArray[np.floating]) -> NDArray[np.floating]:
    """Drop the start-up transient (the filter filling from silence)."""
    skip = int(2 * r.delay) + 2 * r.filter.up + 2
    return y[..., skip:]


# --- chunking ---------------------------------------------------------------


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_20ms_chunks_give_the_whole_signal_output(in_rate: int, out_rate: int) -> None:
    x = _speech_like(2, in_rate, 0.2)
    whole = Resampler(2, in_rate, out_rate).process(x)
    chunked = _in_chunks(Resampler(2, in_rate, out_rate), x, [in_rate // 50] * 9)
    assert whole.shape == (2, x.shape[1] * out_rate // in_rate)
    assert chunked.shape == whole.shape
    assert np.abs(chunked - whole).max() < 1.0


@pytest.mark.parametrize(("in_rate", "out_rate"), CONVERTING)
def test_output_is_the_designed_filter_applied_to_the_stream(in_rate: int, out_rate: int) -> None:
    """Independent reference: scipy's upfirdn with the same taps, on the whole signal."""
    x = _speech_like(1, in_rate, 0.1, seed=3)
    r = Resampler(1, in_rate, out_rate)
    y = _in_chunks(r, x, [in_rate // 50, 7, 101])
    f = r.filter
    ref = upfirdn(f.taps, x[0].astype(np.float64), f.up, f.down)[: y.shape[1]]
    assert np.abs(y[0] - ref).max() < 0.05


@pytest.mark.parametrize(("in_rate", "out_rate"), STRUCTURED)
def test_plain_one_stage_design_is_the_same_pair_with_its_own_filter(
    in_rate: int, out_rate: int
) -> None:
    """The comparison design the bench times is a correct resampler of the pair."""
    design = design_filter(in_rate, out_rate, one_stage=True)
    assert len(design.stages) == 1 and not design.stages[0].halfband
    x = _speech_like(1, in_rate, 0.1, seed=4)
    y = _in_chunks(Resampler(1, in_rate, out_rate, design=design), x, [in_rate // 50, 9])
    ref = upfirdn(design.taps, x[0].astype(np.float64), design.up, design.down)[: y.shape[1]]
    assert np.abs(y[0] - ref).max() < 0.05


def test_a_design_for_another_pair_is_refused() -> None:
    with pytest.raises(ValueError, match="48000->8000"):
        Resampler(1, 48000, 16000, design=design_filter(48000, 8000))


@pytest.mark.parametrize(("in_rate", "out_rate"), STRUCTURED)
def test_cascade_and_half_band_pairs_stream_through_pending_samples_and_resets(
    in_rate: int, out_rate: int
) -> None:
    sizes = [in_rate // 50, 7, 1, 13, 0, 333, 5]
    x = _speech_like(3, in_rate, (sum(sizes) + 400) / in_rate, seed=12)
    whole = Resampler(3, in_rate, out_rate).process(x)
    chunked = _in_chunks(Resampler(3, in_rate, out_rate), x, sizes)
    assert np.abs(chunked - whole).max() < 0.05

    # Reset slot 1 while samples are pending (in every stage of a cascade).
    cut = sum(sizes) - 2
    r, untouched = Resampler(3, in_rate, out_rate), Resampler(3, in_rate, out_rate)
    for resampler in (r, untouched):
        _in_chunks(resampler, x[:, :cut], [cut // 3, cut // 3])
    pending = int(r.pending([1])[0])
    assert pending == cut % r.period > 0
    r.reset(1)
    y, y_untouched = r.process(x[:, cut:]), untouched.process(x[:, cut:])
    np.testing.assert_array_equal(y[[0, 2]], y_untouched[[0, 2]])
    fresh_in = np.concatenate([np.zeros((1, pending), np.int16), x[1:2, cut:]], axis=1)
    fresh = Resampler(1, in_rate, out_rate).process(fresh_in)
    np.testing.assert_allclose(y[1], fresh[0], rtol=0, atol=0.05)


@settings(max_examples=60, deadline=None)
@given(
    pair=st.sampled_from(CONVERTING),
    sizes=st.lists(st.integers(0, 700), min_size=1, max_size=8),
)
def test_any_chunk_partition_gives_the_same_output(pair: tuple[int, int], sizes: list[int]) -> None:
    in_rate, out_rate = pair
    x = _speech_like(3, in_rate, 0.06, seed=len(sizes))
    whole = Resampler(3, in_rate, out_rate).process(x)
    r = Resampler(3, in_rate, out_rate)
    chunked = _in_chunks(r, x, sizes)
    # Identical up to float32 rounding order (< 0.05 LSB), far below 1 LSB.
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=0.05)
    assert (r.pending() == x.shape[1] % r.period).all()


# --- slots and batches ------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    pair=st.sampled_from(CONVERTING),
    before=st.lists(st.integers(0, 400), min_size=1, max_size=4),
    after=st.lists(st.integers(0, 400), min_size=1, max_size=4),
    slot=st.integers(0, 2),
)
def test_reset_makes_a_slot_fresh_and_leaves_the_others_alone(
    pair: tuple[int, int], before: list[int], after: list[int], slot: int
) -> None:
    in_rate, out_rate = pair
    x = _speech_like(3, in_rate, (sum(before) + sum(after) + 50) / in_rate, seed=7)
    cut = sum(before)
    r = Resampler(3, in_rate, out_rate)
    untouched = Resampler(3, in_rate, out_rate)
    _in_chunks(r, x[:, :cut], before[:-1])
    _in_chunks(untouched, x[:, :cut], before[:-1])
    pending = int(r.pending([slot])[0])

    r.reset([slot])
    y = _in_chunks(r, x[:, cut:], after)
    y_untouched = _in_chunks(untouched, x[:, cut:], after)

    others = [s for s in range(3) if s != slot]
    np.testing.assert_array_equal(y[others], y_untouched[others])
    # The reset slot behaves like a fresh resampler that was first fed the
    # pending count of zeros (zero zeros with whole periods, e.g. 20 ms chunks).
    fresh_in = np.concatenate([np.zeros((1, pending), np.int16), x[slot : slot + 1, cut:]], axis=1)
    fresh = Resampler(1, in_rate, out_rate).process(fresh_in)
    np.testing.assert_allclose(y[slot], fresh[0], rtol=0, atol=0.05)


def test_reset_between_20ms_ticks_is_exactly_a_fresh_leg() -> None:
    x = _speech_like(4, 8000, 0.1, seed=11)
    r = Resampler(4, 8000, 48000)
    r.process(x[:, :160])
    r.reset(2)
    y = r.process(x[:, 160:320])
    fresh = Resampler(1, 8000, 48000).process(x[2:3, 160:320])
    np.testing.assert_allclose(y[2], fresh[0], rtol=0, atol=0.05)
    assert np.abs(y[2] - Resampler(1, 8000, 48000).process(x[2:3, :320])[0, 960:]).max() > 10


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (48000, 8000), (24000, 64000)])
def test_each_row_of_a_batch_is_what_that_leg_gets_alone(in_rate: int, out_rate: int) -> None:
    legs, tick = 5, in_rate // 50
    x = _speech_like(legs, in_rate, 0.1, seed=5)
    alone = [Resampler(1, in_rate, out_rate) for _ in range(legs)]
    batch = Resampler(8, in_rate, out_rate)
    rng = np.random.default_rng(0)
    for t in range(5):
        # Legs live in arbitrary, changing slot positions within the batch order.
        slots = np.array([3, 0, 7, 5, 1])
        order = rng.permutation(legs)
        frames = x[order, t * tick : (t + 1) * tick]
        got = batch.process(frames, slots[order])
        for row, leg in enumerate(order):
            want = alone[leg].process(x[leg : leg + 1, t * tick : (t + 1) * tick])
            np.testing.assert_allclose(got[row], want[0], rtol=0, atol=0.05)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 48000), (48000, 8000), (32000, 24000)])
def test_a_long_signal_on_one_leg_equals_the_same_leg_in_a_ticked_batch(
    in_rate: int, out_rate: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The few-legs path (each leg's groups as strided windows) and the batch path agree."""
    strided: list[int] = []  # ndim of every strided view: 3 = all legs' groups, 2 = one leg's

    def counting(*args: object, **kwargs: object) -> object:
        view = as_strided(*args, **kwargs)  # type: ignore[call-overload]
        strided.append(view.ndim)
        return view

    monkeypatch.setattr(resample_module, "as_strided", counting)
    legs, tick = 48, in_rate // 50
    x = _speech_like(legs, in_rate, 0.2, seed=9)
    batch = Resampler(legs, in_rate, out_rate)
    ticked = _in_chunks(batch, x, [tick] * 9)
    assert strided and set(strided) == {3}  # 48 legs per tick: every group of all legs at once
    strided.clear()
    for leg in (0, 17, 47):
        alone = Resampler(1, in_rate, out_rate).process(x[leg : leg + 1])
        np.testing.assert_allclose(alone[0], ticked[leg], rtol=0, atol=0.05)
    assert strided and set(strided) == {2}  # one leg, 0.2 s: a few matmuls over strided windows


def test_identity_passes_samples_through() -> None:
    x = _speech_like(2, 16000, 0.02)
    r = Resampler(2, 16000, 16000)
    assert r.delay == 0
    assert r.process_int16(x).tolist() == x.tolist()


# --- quality ----------------------------------------------------------------


@pytest.mark.parametrize(("in_rate", "out_rate"), CONVERTING)
def test_passband_is_flat_within_0_1_db_and_delay_is_the_stated_one(
    in_rate: int, out_rate: int
) -> None:
    low = min(in_rate, out_rate)
    freqs = np.linspace(40.0, 0.45 * low, 17)
    t = np.arange(int(0.12 * in_rate)) / in_rate
    x = 10000.0 * np.sin(2 * np.pi * freqs[:, None] * t)  # one frequency per leg
    r = Resampler(len(freqs), in_rate, out_rate)
    y = _settled(r, r.process(x))
    skip = r.output_length(x.shape[1]) - y.shape[1]
    for f, row in zip(freqs, y, strict=True):
        amp, phase, _ = _fit_tone(row, f, out_rate)
        assert abs(20 * np.log10(amp / 10000.0)) < 0.1, f"{f:.0f} Hz"
        # Output n is the input at (n - delay) / out_rate: a pure time shift.
        want = -2 * np.pi * f * (r.delay - skip) / out_rate
        assert abs(np.angle(np.exp(1j * (phase - want)))) < 1e-3, f"{f:.0f} Hz"


@pytest.mark.parametrize("out_rate", [16000, 48000])
def test_thd_n_of_1khz_at_minus_3_dbfs_from_8k_is_below_minus_80_db(out_rate: int) -> None:
    t = np.arange(8000) / 8000
    x = np.rint(MINUS_3_DBFS * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)[None, :]
    r = Resampler(1, 8000, out_rate)
    y = _settled(r, r.process_int16(x)[0])
    amp, _, noise = _fit_tone(y, 1000.0, out_rate)
    assert 20 * np.log10(noise / (amp / np.sqrt(2))) < -80


@pytest.mark.parametrize(("in_rate", "out_rate"), [(a, b) for a, b in CONVERTING if b > a])
def test_upsampling_images_are_80_db_down(in_rate: int, out_rate: int) -> None:
    f = 0.3 * in_rate
    t = np.arange(int(0.2 * in_rate)) / in_rate
    x = (MINUS_3_DBFS * np.sin(2 * np.pi * f * t))[None, :]
    r = Resampler(1, in_rate, out_rate)
    amp, _, rest = _fit_tone(_settled(r, r.process(x)[0]), f, out_rate)
    assert 20 * np.log10(rest / (amp / np.sqrt(2))) < -80


def test_5khz_tone_is_80_db_down_after_48k_to_8k() -> None:
    t = np.arange(48000) / 48000
    x = (MINUS_3_DBFS * np.sin(2 * np.pi * 5000 * t))[None, :]
    r = Resampler(1, 48000, 8000)
    y = _settled(r, r.process(x)[0])
    assert 20 * np.log10(np.sqrt(np.mean(y**2)) / (MINUS_3_DBFS / np.sqrt(2))) < -80


@pytest.mark.parametrize(("in_rate", "out_rate"), [(a, b) for a, b in CONVERTING if b < a])
def test_downsampling_rejects_tones_above_the_new_nyquist_by_80_db(
    in_rate: int, out_rate: int
) -> None:
    freqs = np.array([0.5625, 0.625, 0.75, 0.9]) * out_rate
    freqs = freqs[freqs < 0.5 * in_rate]
    t = np.arange(int(0.1 * in_rate)) / in_rate
    x = MINUS_3_DBFS * np.sin(2 * np.pi * freqs[:, None] * t)
    r = Resampler(len(freqs), in_rate, out_rate)
    y = _settled(r, r.process(x))
    level = 20 * np.log10(np.sqrt(np.mean(y**2, axis=1)) / (MINUS_3_DBFS / np.sqrt(2)))
    assert (level < -80).all(), dict(zip(freqs.tolist(), level.round(1).tolist(), strict=True))


# --- int16 output -------------------------------------------------------------


def test_to_int16_rounds_and_saturates_instead_of_wrapping() -> None:
    y = np.array([[1.4, -1.6, 2.5, 40000.0, -40000.0, 32767.4]], np.float32)
    assert to_int16(y).tolist() == [[1, -2, 2, 32767, -32768, 32767]]


def test_full_scale_square_wave_saturates_on_int16_output() -> None:
    # Band-limiting a full-scale square overshoots (Gibbs); int16 output must clip, not wrap.
    x = np.tile(np.repeat(np.array([32767, -32768], np.int16), 20), 20)[None, :]
    y = Resampler(1, 8000, 16000).process(x)[0]
    y16 = Resampler(1, 8000, 16000).process_int16(x)[0]
    assert y.max() > 32768 and y.min() < -32769
    assert (y16[y > 32767] == 32767).all()
    assert (y16[y < -32768] == -32768).all()
    assert np.array_equal(y16, to_int16(y))


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("rate", [44100, 11025, 0, -8000])
def test_unsupported_rate_is_named(rate: int) -> None:
    with pytest.raises(ValueError, match=str(rate)):
        Resampler(1, rate, 8000)
    with pytest.raises(ValueError, match="out_rate"):
        Resampler(1, 8000, rate)


def test_rate_must_be_an_int() -> None:
    with pytest.raises(ValueError, match="int"):
        Resampler(1, 8000.0, 16000)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.complex64])
def test_wrong_dtype_is_named(dtype: type) -> None:
    with pytest.raises(ValueError, match=np.dtype(dtype).name):
        Resampler(1, 8000, 16000).process(np.zeros((1, 160), dtype))


def test_wrong_shape_is_named() -> None:
    r = Resampler(2, 8000, 16000)
    with pytest.raises(ValueError, match="2-D"):
        r.process(np.zeros(160, np.int16))
    with pytest.raises(ValueError, match="capacity"):
        r.process(np.zeros((3, 160), np.int16))
    with pytest.raises(ValueError, match="slots"):
        r.process(np.zeros((2, 160), np.int16), np.array([0]))
    with pytest.raises(ValueError, match="slots"):
        r.process(np.zeros((1, 160), np.int16), np.array([2]))
    with pytest.raises(ValueError, match="slots"):
        r.reset(-1)
    with pytest.raises(ValueError, match="capacity"):
        Resampler(0, 8000, 16000)


def test_rows_with_different_pending_counts_are_refused() -> None:
    r = Resampler(2, 48000, 8000)
    r.process(np.zeros((1, 7), np.int16))  # slot 0 keeps 1 sample pending, slot 1 none
    assert r.pending().tolist() == [1, 0]
    with pytest.raises(ValueError, match="pending"):
        r.process(np.zeros((2, 960), np.int16))


def test_design_is_cached_per_pair() -> None:
    assert design_filter(8000, 48000) is Resampler(3, 8000, 48000).filter
