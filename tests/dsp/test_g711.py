"""G.711 against Python's ``audioop`` (exhaustive) and G.711's own invariants."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from dsp.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

Decode = Callable[[NDArray[np.uint8]], NDArray[np.int16]]
Encode = Callable[[NDArray[np.int16]], NDArray[np.uint8]]

ALL_CODES = np.arange(256, dtype=np.uint8)
ALL_LINEAR = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)

LAWS = pytest.mark.parametrize(
    ("encode", "decode", "ref_encode", "ref_decode"),
    [
        (ulaw_encode, ulaw_decode, audioop.lin2ulaw, audioop.ulaw2lin),
        (alaw_encode, alaw_decode, audioop.lin2alaw, audioop.alaw2lin),
    ],
    ids=["ulaw", "alaw"],
)
LAW_PAIRS = pytest.mark.parametrize(
    ("encode", "decode"),
    [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)],
    ids=["ulaw", "alaw"],
)


@LAWS
def test_decode_matches_audioop_for_all_256_codes(
    encode: Encode, decode: Decode, ref_encode: object, ref_decode: Callable[[bytes, int], bytes]
) -> None:
    expected = np.frombuffer(ref_decode(ALL_CODES.tobytes(), 2), dtype=np.int16)
    np.testing.assert_array_equal(decode(ALL_CODES), expected)
    # A tick's worth of codes takes the batched (code-pair table) path.
    many = np.tile(ALL_CODES, (8, 2))
    np.testing.assert_array_equal(decode(many), np.tile(expected, (8, 2)))


@LAWS
def test_encode_matches_audioop_for_all_65536_values(
    encode: Encode, decode: Decode, ref_encode: Callable[[bytes, int], bytes], ref_decode: object
) -> None:
    expected = np.frombuffer(ref_encode(ALL_LINEAR.tobytes(), 2), dtype=np.uint8)
    np.testing.assert_array_equal(encode(ALL_LINEAR), expected)


@LAW_PAIRS
def test_batches_keep_their_shape_and_match_row_by_row(encode: Encode, decode: Decode) -> None:
    rng = np.random.default_rng(7)
    pcm = rng.integers(-32768, 32768, size=(3, 5, 160)).astype(np.int16)
    codes = encode(pcm)
    assert codes.shape == pcm.shape
    assert decode(codes).shape == pcm.shape
    for index in np.ndindex(pcm.shape[:-1]):
        np.testing.assert_array_equal(codes[index], encode(pcm[index].copy()))
        np.testing.assert_array_equal(decode(codes)[index], decode(codes[index].copy()))


@LAW_PAIRS
@pytest.mark.parametrize("length", [0, 1, 159, 160, 161])
def test_decode_of_odd_sliced_and_strided_batches_matches_code_by_code(
    encode: Encode, decode: Decode, length: int
) -> None:
    rng = np.random.default_rng(length)
    codes = rng.integers(0, 256, size=(32, 2 * length + 2), dtype=np.uint8)
    per_code = decode(ALL_CODES)
    for view in (codes[:, :length], codes[:, ::2][:, :length], codes[::2, 1 : length + 1]):
        np.testing.assert_array_equal(decode(view), per_code[view.astype(np.intp)])


@LAW_PAIRS
@given(codes=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40)))
def test_reencoding_decoded_audio_is_lossless(
    encode: Encode, decode: Decode, codes: NDArray[np.uint8]
) -> None:
    # A relay that decodes and re-encodes G.711 must not degrade it.
    decoded = decode(codes)
    np.testing.assert_array_equal(decode(encode(decoded)), decoded)


def test_reencoding_is_lossless_for_every_code() -> None:
    for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        decoded = decode(ALL_CODES)
        np.testing.assert_array_equal(decode(encode(decoded)), decoded)


@LAW_PAIRS
@given(pcm=hnp.arrays(np.int16, hnp.array_shapes(min_dims=1, max_dims=2, max_side=64)))
def test_encoding_error_stays_within_one_quantisation_step(
    encode: Encode, decode: Decode, pcm: NDArray[np.int16]
) -> None:
    # The decoded sample is one of the two reconstruction levels around the
    # input (or the extreme level when the input lies beyond it).
    levels = np.unique(decode(ALL_CODES).astype(np.int32))
    x = pcm.astype(np.int32).ravel()
    above = np.clip(np.searchsorted(levels, x, side="left"), 1, len(levels) - 1)
    below_level, above_level = levels[above - 1], levels[above]
    y = decode(encode(pcm)).astype(np.int32).ravel()
    inside = (x >= levels[0]) & (x <= levels[-1])
    assert np.all(~inside | (y == below_level) | (y == above_level))
    assert np.all(inside | (y == np.clip(x, levels[0], levels[-1])))


@pytest.mark.parametrize("decode", [ulaw_decode, alaw_decode])
def test_decode_rejects_codes_that_are_not_uint8(decode: Decode) -> None:
    with pytest.raises(ValueError, match="uint8"):
        decode(np.arange(4, dtype=np.int16))


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_encode_rejects_pcm_that_is_not_int16(encode: Encode) -> None:
    with pytest.raises(ValueError, match="int16"):
        encode(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="int16"):
        encode([0, 1, 2])  # type: ignore[arg-type]
