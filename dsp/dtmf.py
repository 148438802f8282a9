"""In-band DTMF detection on batches of legs, streaming, one call per tick.

Owns the per-leg detector state (sample carry-over, the current candidate run,
the key being held) and the decision of what is a key press: which digit, when
it went down, how long it lasted. It must not do I/O, read a clock or log; the
caller maps slots to calls and turns events into messages (e.g. jambonz
``passDtmf``, whose duration is in 8 kHz units: ``KeyUp.duration_8k``).

Rates: any multiple of 8000 Hz up to 48000 (8000 and 16000 are tested). Block
sizes scale with the rate, so the timing below holds at every rate.

How it works
    Every leg is cut into Hann-windowed blocks of 13.25 ms (106 samples at
    8 kHz) every 6.625 ms (53 samples): blocks straddle ticks through a
    per-leg carry-over of the last block's worth of samples, so nothing depends
    on where the 20 ms ticks fall. For each block the complex single-bin DFT at
    the 8 DTMF frequencies (what the Goertzel recurrence computes) is taken
    for all blocks of all legs as one matrix product; a sample-by-sample
    recurrence would be a Python loop over samples.

    A block shows a digit when, for the strongest tone of each group:
      * each tone is at least ``min_level_dbm0`` (default -30 dBm0, where
        0 dBm0 is a sine 3.17 dB below full scale, the G.711 digital milliwatt);
      * twist: *normal* twist is the high-group tone weaker than the low-group
        one, *reverse* twist the high-group tone stronger. Q.24 practice wants
        8 dB normal / 4 dB reverse accepted and 12 dB / 8 dB rejected; the
        defaults cut halfway (``max_normal_twist_db=10``, ``max_reverse_twist_db=6``);
      * the two tones hold at least ``min_tone_ratio`` (0.7) of the block's
        energy (rejects speech, music and noise, which spread their energy;
        on espeak-ng speech the best 40 ms stretches reach about 0.6, and
        0.5 lets a few through, so do not lower it lightly);
      * each tone is at least 3 dB above the runner-up of its group.
    A key goes down after 5 consecutive blocks show the same digit (a tone of
    >= ~38 ms is always accepted, < ~30 ms never) *and* the tones' measured
    frequencies are within ``freq_tolerance`` (default 2.5 %) of nominal: the
    frequency is measured from the phase advance of each tone's bin between
    consecutive blocks, averaged over the run, so a ±1.5 % tone passes and a
    ±3.5 % one is refused (Q.24), which block energies alone cannot do at this
    block length. A key stays down through dropouts shorter than ~30 ms; a
    pause of >= ~38 ms (6 blocks without the digit), or another digit
    qualifying, releases it. So one long press is one key and every press is
    reported exactly once.

Events (``process`` returns them in order, per slot in time order)
    ``KeyDown(slot, digit, start)`` as soon as the key qualifies (about 40 ms
    after the tone starts, plus up to one tick), so ``finishOnKey`` is fast;
    ``KeyUp(slot, digit, start, duration)`` once it is released (about 40 ms
    after the tone stops). ``start`` and ``duration`` are in samples at the
    detector's rate, counted from the slot's last ``reset``; both are estimates
    good to about ±5 ms. ``reset`` of a held key drops it without a ``KeyUp``.

Cost (bench/dsp_dtmf.py): about 1 ms per 20 ms tick for 1000 legs with no
key down; the per-block key state machine runs only on legs that have a
candidate digit or a key down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DTMF_HIGH_HZ",
    "DTMF_KEYS",
    "DTMF_LOW_HZ",
    "DtmfDetector",
    "DtmfEvent",
    "KeyDown",
    "KeyUp",
]

DTMF_LOW_HZ: tuple[float, float, float, float] = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH_HZ: tuple[float, float, float, float] = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = "123A456B789C*0#D"  # row = low-group tone, column = high-group tone

Slots = int | Sequence[int] | NDArray[np.intp]

# At 8 kHz; scaled by rate / 8000.
_BLOCK_8K = 106
_HOP_8K = 53
_KEY_DOWN_BLOCKS = 5  # consecutive blocks with the digit before a key goes down
_KEY_UP_BLOCKS = 6  # consecutive blocks without it before the key is released
_GROUP_MARGIN = 2.0  # strongest tone vs runner-up of its group (power ratio, 3 dB)
# Where the tone edges sit relative to the first/last qualifying block, in
# blocks and hops (calibrated on generated tones; see tests/dsp/test_dtmf.py).
_START_BLOCKS, _START_HOPS = 0.35, -0.5
_END_BLOCKS, _END_HOPS = 0.65, 0.5
_DIGIT_MILLIWATT_DBFS = -3.17  # 0 dBm0 relative to a full-scale sine
_FULL_SCALE_POWER = 32767.0**2 / 2.0


@dataclass(frozen=True, slots=True)
class KeyDown:
    """A key went down in ``slot``; ``start`` is the tone onset in samples since reset."""

    slot: int
    digit: str
    start: int
    rate: int


@dataclass(frozen=True, slots=True)
class KeyUp:
    """The key held in ``slot`` was released after ``duration`` samples."""

    slot: int
    digit: str
    start: int
    duration: int
    rate: int

    @property
    def duration_8k(self) -> int:
        """Duration in 8 kHz sample units (RFC 4733 / jambonz ``passDtmf``)."""
        return self.duration * 8000 // self.rate

    @property
    def duration_ms(self) -> float:
        return self.duration * 1000.0 / self.rate


DtmfEvent = KeyDown | KeyUp


def _slot_array(slots: Slots, capacity: int) -> NDArray[np.intp]:
    arr = np.atleast_1d(np.asarray(slots, dtype=np.intp))
    if arr.ndim != 1:
        raise ValueError("slots: must be an int or a 1-D sequence of ints")
    if arr.size and (arr.min() < 0 or arr.max() >= capacity):
        raise ValueError(f"slots: must be in 0..{capacity - 1}")
    return arr


class DtmfDetector:
    """Streaming DTMF detector for up to ``capacity`` legs (see the module docstring)."""

    def __init__(
        self,
        capacity: int,
        rate: int = 8000,
        *,
        min_level_dbm0: float = -30.0,
        max_normal_twist_db: float = 10.0,
        max_reverse_twist_db: float = 6.0,
        min_tone_ratio: float = 0.7,
        freq_tolerance: float = 0.025,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity: must be >= 0, got {capacity}")
        if rate <= 0 or rate % 8000 or rate > 48000:
            raise ValueError(f"rate: must be a multiple of 8000 Hz up to 48000, got {rate}")
        if not 0.0 < min_tone_ratio <= 1.0:
            raise ValueError(f"min_tone_ratio: must be in (0, 1], got {min_tone_ratio}")
        if not 0.0 < freq_tolerance < 0.05:
            raise ValueError(f"freq_tolerance: must be in (0, 0.05), got {freq_tolerance}")
        if max_normal_twist_db < 0 or max_reverse_twist_db < 0:
            raise ValueError("max_normal_twist_db / max_reverse_twist_db: must be >= 0")
        self.capacity = capacity
        self.rate = rate
        scale = rate // 8000
        n = self.block = _BLOCK_8K * scale
        self.hop = _HOP_8K * scale

        freqs = np.array(DTMF_LOW_HZ + DTMF_HIGH_HZ)
        m = np.arange(n)
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * (m + 1) / (n + 1))  # Hann, no zero ends
        angle = 2.0 * np.pi * np.outer(m, freqs) / rate
        self._basis = np.concatenate(
            (window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)), axis=1
        ).astype(np.float32)
        # |X|^2 * tone_scale = power of a sine (A^2/2); energy * total_scale = mean power.
        self._tone_scale = np.float32(2.0 / window.sum() ** 2)
        self._window_sq = (window**2 / (window**2).sum()).astype(np.float32)
        self._chunk_rows = max(16, 200_000 // (16 * n))  # OpenBLAS threads above ~262k MACs
        self._hop_turn = np.exp(-2j * np.pi * freqs * self.hop / rate).astype(np.complex64)
        self._freqs = freqs
        self._min_power = np.float32(
            _FULL_SCALE_POWER * 10.0 ** ((min_level_dbm0 + _DIGIT_MILLIWATT_DBFS) / 10.0)
        )
        self._normal_twist = np.float32(10.0 ** (max_normal_twist_db / 10.0))
        self._reverse_twist = np.float32(10.0 ** (max_reverse_twist_db / 10.0))
        self._min_ratio = np.float32(min_tone_ratio)
        self._freq_tolerance = freq_tolerance
        self._start_offset = round(_START_BLOCKS * n + _START_HOPS * self.hop)
        self._end_offset = round(_END_BLOCKS * n + _END_HOPS * self.hop)

        # Per-slot state.
        self._carry = np.zeros((capacity, n), dtype=np.float32)  # last n samples seen
        self._next = np.full(capacity, n, dtype=np.int64)  # next block start, carry coords
        self._seen = np.zeros(capacity, dtype=np.int64)  # samples since reset
        self._prev = np.zeros((capacity, 8), dtype=np.complex64)  # last block's bins
        self._cand = np.full(capacity, -1, dtype=np.int64)  # digit of the current run
        self._run = np.zeros(capacity, dtype=np.int64)  # blocks in the run
        self._run_start = np.zeros(capacity, dtype=np.int64)  # first block start of run
        self._acc = np.zeros((capacity, 2), dtype=np.complex64)  # phase advance, low/high
        self._key = np.full(capacity, -1, dtype=np.int64)  # key held (-1 none)
        self._key_start = np.zeros(capacity, dtype=np.int64)
        self._key_last = np.zeros(capacity, dtype=np.int64)  # last block start with key
        self._miss = np.zeros(capacity, dtype=np.int64)  # blocks without the held key
        self._buffers: dict[str, NDArray[np.float32]] = {}  # per-call work arrays, reused

    def _scratch(self, name: str, shape: tuple[int, int]) -> NDArray[np.float32]:
        """A reused float32 work array of ``shape`` (contents undefined)."""
        size = shape[0] * shape[1]
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size, dtype=np.float32)
        return buf[:size].reshape(shape)

    def reset(self, slots: Slots) -> None:
        """Forget everything about ``slots`` (a held key is dropped silently)."""
        s = _slot_array(slots, self.capacity)
        self._carry[s] = 0.0
        self._next[s] = self.block
        self._seen[s] = 0
        self._prev[s] = 0.0
        self._cand[s] = -1
        self._run[s] = 0
        self._acc[s] = 0.0
        self._key[s] = -1
        self._miss[s] = 0

    def process(
        self, frames: NDArray[np.int16] | NDArray[np.float32], slots: Slots | None = None
    ) -> list[DtmfEvent]:
        """Feed one frame per leg (``[legs, samples]``); return the events it completes.

        Row ``i`` belongs to state row ``slots[i]`` (default ``0..legs-1``); each
        slot may appear at most once per call. Frames of any length are fine.
        """
        x = np.asarray(frames)
        if x.ndim != 2:
            raise ValueError(f"frames: must be 2-D [legs, samples], got shape {x.shape}")
        legs, count = x.shape
        # State rows: a slice when the caller uses rows 0..legs-1 (no gather/scatter copies).
        sel: slice | NDArray[np.intp]
        if slots is None:
            if legs > self.capacity:
                raise ValueError(f"frames: {legs} rows for a capacity of {self.capacity}")
            sel = slice(0, legs)
        else:
            sel = _slot_array(slots, self.capacity)
            if sel.shape[0] != legs:
                raise ValueError(f"slots: {sel.shape[0]} slots for {legs} rows of frames")
        if legs == 0 or count == 0:
            return []
        n, hop = self.block, self.hop

        width = n + count
        combined = self._scratch("combined", (legs, width))
        combined[:, :n] = self._carry[sel]
        combined[:, n:] = x
        start = self._next[sel].copy()  # copies: ``sel`` may be a slice (views)
        seen = self._seen[sel].copy()
        blocks_per_leg = np.maximum(0, (count - start) // hop + 1)
        kmax = int(blocks_per_leg.max())

        self._carry[sel] = combined[:, count:]
        self._next[sel] = start + blocks_per_leg * hop - count
        self._seen[sel] = seen + count
        if kmax == 0:
            return []

        # Every block of every leg, [legs * kmax, n], gathered from a strided
        # view; blocks past a leg's end are clipped copies, marked invalid.
        # ``combined`` and the bins live in reused buffers: fresh large
        # temporaries every tick cost more than the maths.
        offsets = np.minimum(start[:, None] + hop * np.arange(kmax), count)
        offsets += width * np.arange(legs)[:, None]
        valid = np.arange(kmax) < blocks_per_leg[:, None]
        flat = combined.reshape(-1)
        windows = np.lib.stride_tricks.as_strided(
            flat, shape=(flat.size - n + 1, n), strides=(flat.strides[0],) * 2, writeable=False
        )
        blocks = windows[offsets.reshape(-1)]
        y2 = self._scratch("bins", (legs * kmax, 16))
        # Row chunks small enough that OpenBLAS stays on one thread: on a busy
        # 2-core box its thread hand-off cost 10-50x the product itself.
        step = self._chunk_rows
        for lo in range(0, legs * kmax, step):
            np.matmul(blocks[lo : lo + step], self._basis, out=y2[lo : lo + step])
        y = y2.reshape(legs, kmax, 16)  # re/im of the 8 bins
        weighted = self._scratch("weighted", (legs * kmax, n))
        np.multiply(blocks, self._window_sq, out=weighted)
        total = np.einsum("ij,ij->i", weighted, blocks).reshape(legs, kmax)  # no BLAS
        power = (y[..., :8] ** 2 + y[..., 8:] ** 2) * self._tone_scale
        digit, low, high = self._classify(power, total)
        digit[~valid] = -2

        # Keep the last valid block's bins for the next call's phase advance.
        prev = self._prev[sel].copy()
        has = blocks_per_leg > 0
        last = y[np.arange(legs), np.maximum(blocks_per_leg - 1, 0)]
        self._prev[sel] = np.where(has[:, None], last[:, :8] + 1j * last[:, 8:], prev)

        active = (
            (digit >= 0).any(axis=1) | (self._cand[sel] >= 0) | (self._key[sel] >= 0)
        ).nonzero()[0]
        if active.size == 0:
            return []
        slot_of_active = active if slots is None else np.asarray(sel)[active]

        # Phase advance of each block's low/high bin against the previous block.
        a_y = y[active]
        a_bins = (a_y[..., :8] + 1j * a_y[..., 8:]).astype(np.complex64)
        before = np.concatenate((prev[active][:, None, :], a_bins[:, :-1, :]), axis=1)
        advance = a_bins * before.conj()
        a_low, a_high = low[active], high[active]
        adv_low = np.take_along_axis(advance, a_low[..., None], axis=2)[..., 0]
        adv_high = np.take_along_axis(advance, (a_high + 4)[..., None], axis=2)[..., 0]
        block_start = (seen[active] - n + start[active])[:, None] + hop * np.arange(kmax)
        return self._track(slot_of_active, digit[active], adv_low, adv_high, block_start)

    def _classify(
        self, power: NDArray[np.float32], total: NDArray[np.float32]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """Digit shown by each block (-1 none) and its low/high group tone indices.

        ``power`` is ``[..., 8]`` tone powers, ``total`` the blocks' mean power.
        The cheap tests (level, share of the energy) run on every block; the
        rest only on the few blocks that pass them.
        """
        p = [power[..., i] for i in range(8)]
        p_low = np.maximum(np.maximum(p[0], p[1]), np.maximum(p[2], p[3]))
        p_high = np.maximum(np.maximum(p[4], p[5]), np.maximum(p[6], p[7]))
        digit = np.full(total.shape, -1, dtype=np.int64)
        low = np.zeros(total.shape, dtype=np.int64)
        high = np.zeros(total.shape, dtype=np.int64)
        maybe = (
            (p_low + p_high >= total * self._min_ratio)
            & (p_low >= self._min_power)
            & (p_high >= self._min_power)
        ).nonzero()
        if maybe[0].size == 0:
            return digit, low, high
        group = power[maybe]
        c_low, c_high = p_low[maybe], p_high[maybe]
        low[maybe] = lo = group[:, :4].argmax(axis=1)
        high[maybe] = hi = group[:, 4:].argmax(axis=1)
        # Clear of the runner-up: the other three of the group are weaker by the margin.
        ok = (
            ((group[:, :4] * _GROUP_MARGIN <= c_low[:, None]).sum(axis=1) == 3)
            & ((group[:, 4:] * _GROUP_MARGIN <= c_high[:, None]).sum(axis=1) == 3)
            & (c_low <= c_high * self._normal_twist)
            & (c_high <= c_low * self._reverse_twist)
        )
        digit[maybe] = np.where(ok, lo * 4 + hi, -1)
        return digit, low, high

    def _track(
        self,
        slots: NDArray[np.intp],
        digit: NDArray[np.int64],
        adv_low: NDArray[np.complex64],
        adv_high: NDArray[np.complex64],
        block_start: NDArray[np.int64],
    ) -> list[DtmfEvent]:
        """Run the key state machine over the blocks, in time order, for ``slots``."""
        cand, run, run_start = self._cand[slots], self._run[slots], self._run_start[slots]
        acc = self._acc[slots]
        key, key_start = self._key[slots], self._key_start[slots]
        key_last, miss = self._key_last[slots], self._miss[slots]
        events: list[tuple[int, int, DtmfEvent]] = []

        for k in range(digit.shape[1]):
            d = digit[:, k]
            valid = d > -2
            bs = block_start[:, k]
            present = valid & (d >= 0)
            same = present & (d == cand)
            fresh = present & ~same
            run = np.where(same, run + 1, np.where(valid, present.astype(np.int64), run))
            acc[same, 0] += adv_low[same, k]
            acc[same, 1] += adv_high[same, k]
            acc[fresh] = 0.0
            run_start = np.where(fresh, bs, run_start)
            cand = np.where(valid, np.where(present, d, -1), cand)

            held = valid & (key >= 0)
            hit = held & (d == key)
            key_last = np.where(hit, bs, key_last)
            miss = np.where(hit, 0, np.where(held, miss + 1, miss))

            fire = valid & (run == _KEY_DOWN_BLOCKS) & (cand != key)
            if fire.any():
                fire[fire] = self._in_tune(cand[fire], acc[fire])
            release = held & ((miss >= _KEY_UP_BLOCKS) | fire)
            for i in release.nonzero()[0]:
                begin = int(key_start[i])
                end = int(key_last[i]) + self._end_offset
                up = KeyUp(int(slots[i]), DTMF_KEYS[key[i]], begin, end - begin, self.rate)
                events.append((int(slots[i]), k, up))
            key = np.where(release, -1, key)
            for i in fire.nonzero()[0]:
                begin = max(0, int(run_start[i]) + self._start_offset)
                down = KeyDown(int(slots[i]), DTMF_KEYS[cand[i]], begin, self.rate)
                events.append((int(slots[i]), k, down))
            key = np.where(fire, cand, key)
            key_start = np.where(fire, np.maximum(run_start + self._start_offset, 0), key_start)
            key_last = np.where(fire, bs, key_last)
            miss = np.where(fire, 0, miss)

        self._cand[slots], self._run[slots], self._run_start[slots] = cand, run, run_start
        self._acc[slots] = acc
        self._key[slots], self._key_start[slots] = key, key_start
        self._key_last[slots], self._miss[slots] = key_last, miss
        events.sort(key=lambda e: (e[0], e[1]))
        return [e[2] for e in events]

    def _in_tune(self, cand: NDArray[np.int64], acc: NDArray[np.complex64]) -> NDArray[np.bool_]:
        """Whether both tones of each run are within ``freq_tolerance`` of nominal."""
        index = np.stack((cand // 4, cand % 4 + 4), axis=1)
        turned = acc * self._hop_turn[index]
        offset_hz = np.angle(turned) * self.rate / (2.0 * np.pi * self.hop)
        ok: NDArray[np.bool_] = (
            np.abs(offset_hz) <= self._freq_tolerance * self._freqs[index]
        ).all(axis=1)
        return ok
