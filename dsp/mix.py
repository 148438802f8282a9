"""Channel mixing for forks and recordings, on batches.

Owns the three ``listen`` mix types (jambonz ``mixType``) and the two-channel
layout of recordings:

- ``mono``: the caller only (the "read" stream: what the far end of the leg
  says); what is played to the caller is not included.
- ``stereo``: sample-interleaved L0 R0 L1 R1 ...; left = caller (read),
  right = what the caller hears (write). A missing side is zero-filled.
- ``mixed``: both sides summed per sample, saturated to int16.

Inputs are int16 ``[legs, samples]`` at one common rate (resample first).
This module must not do I/O, read a clock or log.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

__all__ = ["MixType", "channels", "interleave", "mix", "saturating_sum"]

PCM = NDArray[np.int16]


class MixType(StrEnum):
    MONO = "mono"
    STEREO = "stereo"
    MIXED = "mixed"

    @classmethod
    def parse(cls, value: str) -> MixType:
        """The mix type named ``value``; the error names the allowed values."""
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ValueError(f"mixType: must be one of {allowed}, got {value!r}") from None


def channels(mix_type: MixType) -> int:
    """Channels in the output of ``mix_type``."""
    return 2 if mix_type is MixType.STEREO else 1


def saturating_sum(a: PCM, b: PCM) -> PCM:
    """Per-sample ``a + b`` clamped to the int16 range."""
    total = a.astype(np.int32) + b.astype(np.int32)
    np.clip(total, -32768, 32767, out=total)
    return total.astype(np.int16)


def interleave(left: PCM, right: PCM) -> PCM:
    """``[legs, n]`` + ``[legs, n]`` -> ``[legs, 2n]`` as L0 R0 L1 R1 ..."""
    out = np.empty((left.shape[0], left.shape[1] * 2), dtype=np.int16)
    out[:, 0::2] = left
    out[:, 1::2] = right
    return out


def mix(mix_type: MixType | str, read: PCM, write: PCM | None = None) -> PCM:
    """Mix a batch for ``mix_type``.

    ``read`` is what each caller says, ``write`` what each caller hears
    (``None`` = nothing, zero-filled). Returns int16 ``[legs, n * channels]``.
    """
    kind = mix_type if isinstance(mix_type, MixType) else MixType.parse(mix_type)
    r = _check("read", read)
    w = np.zeros_like(r) if write is None else _check("write", write)
    if w.shape != r.shape:
        raise ValueError(f"write: shape {w.shape} must match read {r.shape}")
    if kind is MixType.MONO:
        return r
    if kind is MixType.STEREO:
        return interleave(r, w)
    return saturating_sum(r, w)


def _check(name: str, x: PCM) -> PCM:
    a = np.asarray(x)
    if a.dtype != np.int16:
        raise ValueError(f"{name}: dtype must be int16, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: must be 2-D [legs, samples], got shape {a.shape}")
    return a
