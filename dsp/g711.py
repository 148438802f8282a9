"""G.711 µ-law and A-law companding by table lookup.

Owns the four G.711 conversions (``ulaw_encode``/``ulaw_decode``,
``alaw_encode``/``alaw_decode``) and the lookup tables behind them. The tables
are computed once at import, vectorised, from the G.711 segment/quantisation
rules; encoding is one gather from a 65536-entry table indexed by the int16
sample viewed as uint16. Decoding gathers from a 256-entry table, or, for a
batch whose last axis is C-contiguous and of even length (a 20 ms frame is
160 codes), from a 65536-entry table of decoded *pairs* indexed by two code
bytes viewed as one uint16: half the gathers, which is what makes a batched
decode beat per-leg ``audioop`` calls (measured in ``bench/dsp_codecs.py``). Every
function works on any array shape, so a batch ``[legs, samples]`` is one call.

Reduction of 16-bit input to G.711's uniform input follows the classic
CCITT/Sun reference (the one Python's ``audioop`` uses): µ-law drops the two
low bits with an arithmetic shift (14-bit input), A-law the three low bits
(13-bit input) and maps negative values by one's complement. Results are
bit-exact with ``audioop.lin2ulaw``/``ulaw2lin``/``lin2alaw``/``alaw2lin``.

Must not: know about RTP, payload bytes or codec negotiation (that is
``dsp.codecs``), do I/O, or loop in Python per sample or per leg.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]

_SIGN_BIT = 0x80
_SEGMENT_MASK = 0x70
_SEGMENT_SHIFT = 4
_MANTISSA_MASK = 0x0F

# µ-law: bias added before segmentation, input clip (14-bit) and upper
# decision value of each of the eight segments (14-bit, biased).
_ULAW_BIAS = 0x84
_ULAW_CLIP_14BIT = 8159
_ULAW_SEGMENT_END_14BIT = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])

# A-law: even bits are inverted on the wire (0x55); upper value of each
# segment (13-bit magnitude).
_ALAW_EVEN_BIT_INVERSION = 0x55
_ALAW_SEGMENT_END_13BIT = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])

_ALL_CODES = np.arange(256, dtype=np.int32)
# Every int16 value, ordered by its uint16 bit pattern (0, 1, ..., 32767,
# -32768, ..., -1), so position == ``value.view(np.uint16)``.
_ALL_LINEAR = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_decode_table() -> NDArray[np.int16]:
    inverted = ~_ALL_CODES & 0xFF
    segment = (inverted & _SEGMENT_MASK) >> _SEGMENT_SHIFT
    magnitude = (((inverted & _MANTISSA_MASK) << 3) + _ULAW_BIAS) << segment
    linear = np.where(inverted & _SIGN_BIT, _ULAW_BIAS - magnitude, magnitude - _ULAW_BIAS)
    return linear.astype(np.int16)


def _build_ulaw_encode_table() -> NDArray[np.uint8]:
    sample_14bit = _ALL_LINEAR >> 2
    negative = sample_14bit < 0
    magnitude = np.minimum(np.abs(sample_14bit), _ULAW_CLIP_14BIT) + (_ULAW_BIAS >> 2)
    # First segment whose upper decision value is >= magnitude (8 = beyond).
    segment = np.searchsorted(_ULAW_SEGMENT_END_14BIT, magnitude, side="left")
    mantissa = (magnitude >> (np.minimum(segment, 7) + 1)) & _MANTISSA_MASK
    code = np.where(segment >= 8, 0x7F, (segment << _SEGMENT_SHIFT) | mantissa)
    sign_mask = np.where(negative, 0x7F, 0xFF)
    return (code ^ sign_mask).astype(np.uint8)


def _build_alaw_decode_table() -> NDArray[np.int16]:
    code = _ALL_CODES ^ _ALAW_EVEN_BIT_INVERSION
    segment = (code & _SEGMENT_MASK) >> _SEGMENT_SHIFT
    step = (code & _MANTISSA_MASK) << 4
    magnitude = np.where(
        segment == 0,
        step + 8,
        (step + 0x108) << np.maximum(segment - 1, 0),
    )
    linear = np.where(code & _SIGN_BIT, magnitude, -magnitude)
    return linear.astype(np.int16)


def _build_alaw_encode_table() -> NDArray[np.uint8]:
    sample_13bit = _ALL_LINEAR >> 3
    negative = sample_13bit < 0
    magnitude = np.where(negative, -sample_13bit - 1, sample_13bit)
    segment = np.searchsorted(_ALAW_SEGMENT_END_13BIT, magnitude, side="left")
    shift = np.clip(segment, 1, 7)  # segments 0 and 1 share the same step size
    code = np.where(
        segment >= 8,
        0x7F,
        (segment << _SEGMENT_SHIFT) | ((magnitude >> shift) & _MANTISSA_MASK),
    )
    sign_mask = np.where(negative, 0x55, 0xD5)
    return (code ^ sign_mask).astype(np.uint8)


def _build_pair_decode_table(decode: NDArray[np.int16]) -> NDArray[np.uint32]:
    """Entry ``i`` holds the two decoded samples of the code bytes whose
    native-order uint16 view is ``i``, packed so that viewing the gathered
    uint32 array as int16 yields the samples in order."""
    code_pairs = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.uint8).reshape(-1, 2)
    return np.ascontiguousarray(decode[code_pairs]).view(np.uint32).reshape(-1)


_ULAW_DECODE = _build_ulaw_decode_table()
_ULAW_ENCODE = _build_ulaw_encode_table()
_ALAW_DECODE = _build_alaw_decode_table()
_ALAW_ENCODE = _build_alaw_encode_table()
_ULAW_DECODE_PAIRS = _build_pair_decode_table(_ULAW_DECODE)
_ALAW_DECODE_PAIRS = _build_pair_decode_table(_ALAW_DECODE)
for _table in (
    _ULAW_DECODE,
    _ULAW_ENCODE,
    _ALAW_DECODE,
    _ALAW_ENCODE,
    _ULAW_DECODE_PAIRS,
    _ALAW_DECODE_PAIRS,
):
    _table.flags.writeable = False
del _table


def _require_dtype(array: NDArray[np.generic], dtype: type[np.generic], what: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{what} must be a numpy array of {np.dtype(dtype).name}, got {got}")


# Below this many samples (one leg's frame) plain fancy indexing has less
# fixed overhead than np.take; above it np.take gathers about twice as fast.
_SMALL = 1024


def _decode(
    codes: NDArray[np.uint8], table: NDArray[np.int16], pairs: NDArray[np.uint32]
) -> NDArray[np.int16]:
    if codes.size < _SMALL:
        return table[codes]
    if codes.shape[-1] % 2 == 0 and codes.flags.c_contiguous:
        decoded: NDArray[np.int16] = np.take(pairs, codes.view(np.uint16)).view(np.int16)
        return decoded
    return np.take(table, codes)


def _encode(pcm: NDArray[np.int16], table: NDArray[np.uint8]) -> NDArray[np.uint8]:
    index = pcm.view(np.uint16)
    return table[index] if pcm.size < _SMALL else np.take(table, index)


def ulaw_decode(codes: NDArray[np.uint8]) -> NDArray[np.int16]:
    """µ-law code bytes (any shape, uint8) to linear int16 PCM of the same shape.

    Raises ``ValueError`` if ``codes`` is not a uint8 array.
    """
    _require_dtype(codes, np.uint8, "µ-law codes")
    return _decode(codes, _ULAW_DECODE, _ULAW_DECODE_PAIRS)


def ulaw_encode(pcm: NDArray[np.int16]) -> NDArray[np.uint8]:
    """Linear int16 PCM (any shape) to µ-law code bytes of the same shape.

    Raises ``ValueError`` if ``pcm`` is not an int16 array.
    """
    _require_dtype(pcm, np.int16, "PCM")
    return _encode(pcm, _ULAW_ENCODE)


def alaw_decode(codes: NDArray[np.uint8]) -> NDArray[np.int16]:
    """A-law code bytes (any shape, uint8) to linear int16 PCM of the same shape.

    Raises ``ValueError`` if ``codes`` is not a uint8 array.
    """
    _require_dtype(codes, np.uint8, "A-law codes")
    return _decode(codes, _ALAW_DECODE, _ALAW_DECODE_PAIRS)


def alaw_encode(pcm: NDArray[np.int16]) -> NDArray[np.uint8]:
    """Linear int16 PCM (any shape) to A-law code bytes of the same shape.

    Raises ``ValueError`` if ``pcm`` is not an int16 array.
    """
    _require_dtype(pcm, np.int16, "PCM")
    return _encode(pcm, _ALAW_ENCODE)
