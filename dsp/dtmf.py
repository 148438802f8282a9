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

Cost (bench/dsp_dtmf.py, one core, one BLAS thread, 1000 legs, 20 ms ticks):
about 0.65 ms per tick with no key down and 1.0 ms with every leg holding a
key. Most of it is the block DFT product, the block gather and the energy sum;
the decisions avoid numpy reductions along short axes (run row by row, they
cost more than the maths). The key state machine runs only on legs with a
digit, a run or a key down, with a few array operations per block; the phase
work stops once a run is past the key-down count, so a long press is cheap.
If all 1000 legs press at once, the tick that returns their 1000 ``KeyDown``
objects costs about 2 ms, some 0.8 ms of it building those objects.
"""

from __future__ import annotations

import itertools
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
_TILE_ROWS = 64  # blocks per row when the window is multiplied into many blocks
_DIGIT_MILLIWATT_DBFS = -3.17  # 0 dBm0 relative to a full-scale sine
_FULL_SCALE_POWER = 32767.0**2 / 2.0
# Fields (rows) of the per-slot key state: the key held and the digit of the
# current run (-1 none), the run's length in blocks and first block start, the
# held key's start and last block start, and blocks since the held key was seen.
_KEY, _CAND, _RUN, _RUN_START, _KEY_START, _KEY_LAST, _MISS = range(7)
_IDLE_STATE = np.array([-1, -1, 0, 0, 0, 0, 0], dtype=np.int64)
# The bins (0..7) of each digit's low tone (row 0) and high tone (row 1).
_TONES_OF_DIGIT = np.array([[d // 4 for d in range(16)], [d % 4 + 4 for d in range(16)]])
_KEY_NAMES = np.array(list(DTMF_KEYS))
# Events found in one block: kind, block, legs, digit, start, end (samples).
_UP, _DOWN = 0, 1
_Found = tuple[int, int, NDArray[np.intp], NDArray[np.intp], NDArray[np.int64], NDArray[np.int64]]
_PACK = np.uint64(0x0102040810204080)  # moves one bit of each byte into the top byte


def _pattern(flags: NDArray[np.bool_]) -> NDArray[np.uint64]:
    """``[rows, 8]`` booleans (C-contiguous) -> one number 0..255 per row, all distinct."""
    word: NDArray[np.uint64] = flags.view(np.uint64)[:, 0]
    return (word * _PACK) >> np.uint64(56)


def _pattern_digits() -> NDArray[np.intp]:
    """Digit of each pattern of "clear of the group's strongest" flags, -1 if none.

    A digit has exactly one tone of each group not clear: its own.
    """
    flags = np.array(list(itertools.product((False, True), repeat=8)), dtype=np.bool_)
    table = np.full(256, -1, dtype=np.intp)
    for row, code in zip(flags, _pattern(flags).tolist(), strict=True):
        if row[:4].sum() == 3 and row[4:].sum() == 3:
            table[code] = int(np.argmin(row[:4])) * 4 + int(np.argmin(row[4:]))
    return table


_DIGIT_OF_PATTERN = _pattern_digits()


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
        # Columns re, im of tone 0, re, im of tone 1, ...: the product's rows
        # read as complex64 [8] without a copy.
        basis = np.empty((n, 8, 2))
        basis[..., 0] = window[:, None] * np.cos(angle)
        basis[..., 1] = -window[:, None] * np.sin(angle)
        self._basis = basis.reshape(n, 16).astype(np.float32)
        # |X|^2 * tone_scale = power of a sine (A^2/2); energy * total_scale = mean power.
        self._tone_scale = np.float32(2.0 / window.sum() ** 2)
        self._window_sq = (window**2 / (window**2).sum()).astype(np.float32)
        self._window_sq_tile = np.tile(self._window_sq, _TILE_ROWS)
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

        # Per-slot state. The key machine's integers live in one array, one
        # row per field (_KEY, _CAND, ...), so a batch gathers and scatters them
        # with one index operation instead of one per field.
        self._carry = np.zeros((capacity, n), dtype=np.float32)  # last n samples seen
        self._next = np.full(capacity, n, dtype=np.int64)  # next block start, carry coords
        self._seen = np.zeros(capacity, dtype=np.int64)  # samples since reset
        self._prev = np.zeros((capacity, 8), dtype=np.complex64)  # last block's bins
        self._state = np.tile(_IDLE_STATE[:, None], (1, capacity))  # [fields, slots]
        self._acc = np.zeros((2, capacity), dtype=np.complex64)  # phase advance, low/high
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
        self._state[:, s] = _IDLE_STATE[:, None]
        self._acc[:, s] = 0.0

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
        flat = combined.reshape(-1)
        # Every n-sample window of ``flat`` (only ever read): a bare ndarray
        # view, ~20x cheaper to make than np.lib.stride_tricks.as_strided.
        stride = flat.strides[0]
        windows = np.ndarray((flat.size - n + 1, n), np.float32, flat, 0, (stride, stride))
        blocks = windows[offsets.reshape(-1)]
        # The 8 bins of every block (re, im interleaved), then one row per leg
        # holding the bins of the block before its first one (the last call's
        # last block).
        nb = legs * kmax
        bins = self._scratch("bins", (nb + legs, 16))
        y = bins[:nb]
        # Row chunks small enough that OpenBLAS stays on one thread: on a busy
        # 2-core box its thread hand-off cost 10-50x the product itself. The
        # chunks go as one stacked matmul (numpy calls sgemm per chunk in C),
        # not a Python loop of ~35 calls.
        step = self._chunk_rows
        whole = nb - nb % step
        np.matmul(
            blocks[:whole].reshape(-1, step, n),
            self._basis,
            out=y[:whole].reshape(-1, step, 16),
        )
        np.matmul(blocks[whole:], self._basis, out=y[whole:])
        # Mean power of each block: sum of window^2 * x^2. The window is
        # multiplied in over _TILE_ROWS blocks at a time (numpy's loop over
        # short rows costs more than the multiplication).
        weighted = self._scratch("weighted", (nb, n))
        whole = nb - nb % _TILE_ROWS
        np.multiply(
            blocks[:whole].reshape(-1, _TILE_ROWS * n),
            self._window_sq_tile,
            out=weighted[:whole].reshape(-1, _TILE_ROWS * n),
        )
        np.multiply(blocks[whole:], self._window_sq, out=weighted[whole:])
        total = np.einsum("ij,ij->i", weighted, blocks)  # no BLAS
        squares = self._scratch("squares", (nb, 16))
        np.multiply(y, y, out=squares)
        power = self._scratch("power", (nb, 8))
        np.add(squares[:, 0::2], squares[:, 1::2], out=power)
        power *= self._tone_scale
        # Digits [blocks, legs]: blocks first, so each block's row is contiguous.
        digit = np.ascontiguousarray(self._classify(power, total).reshape(legs, kmax).T)
        digit[np.arange(kmax)[:, None] >= blocks_per_leg] = -2  # past the leg's end

        # Keep the last valid block's bins for the next call's phase advance.
        complex_bins = bins.view(np.complex64)
        complex_bins[nb:] = self._prev[sel]
        last = np.take(
            complex_bins, np.arange(legs) * kmax + np.maximum(blocks_per_leg - 1, 0), axis=0
        )
        if (blocks_per_leg > 0).all():
            self._prev[sel] = last
        else:
            self._prev[sel] = np.where((blocks_per_leg > 0)[:, None], last, complex_bins[nb:])

        # Legs with a digit in a block, a run going or a key down.
        busy = np.maximum(self._state[_KEY, sel], self._state[_CAND, sel])
        for k in range(kmax):
            np.maximum(busy, digit[k], out=busy)
        active = (busy >= 0).nonzero()[0]
        if active.size == 0:
            return []
        slot_of_active = active if slots is None else np.asarray(sel)[active]
        first_start = seen[active] - n + start[active]
        return self._track(
            slot_of_active, active, np.take(digit, active, axis=1), complex_bins, nb, first_start
        )

    def _classify(self, power: NDArray[np.float32], total: NDArray[np.float32]) -> NDArray[np.intp]:
        """Digit shown by each block (``-1`` none), from ``[blocks, 8]`` tone powers.

        ``total`` is the blocks' mean power. The cheap tests (level, share of
        the energy) run on every block; the rest only on the blocks that pass
        them, gathered by row. No reductions along the 4-tone axis: numpy
        runs those row by row, which cost more than everything else here.
        """
        p_low = np.maximum(
            np.maximum(power[:, 0], power[:, 1]), np.maximum(power[:, 2], power[:, 3])
        )
        p_high = np.maximum(
            np.maximum(power[:, 4], power[:, 5]), np.maximum(power[:, 6], power[:, 7])
        )
        digit = np.full(total.shape, -1, dtype=np.intp)
        maybe = np.flatnonzero(
            (p_low + p_high >= total * self._min_ratio)
            & (p_low >= self._min_power)
            & (p_high >= self._min_power)
        )
        if maybe.size == 0:
            return digit
        group = np.take(power, maybe, axis=0)
        c_low, c_high = np.take(p_low, maybe), np.take(p_high, maybe)
        # Which tones are clear of their group's strongest by the margin; a
        # digit has all but one tone of each group clear (its own two tones).
        # The 8 flags of a block, one byte each, read as one uint64 and packed
        # into a pattern number that a table maps to the digit (or -1).
        strongest = np.repeat(np.stack((c_low, c_high), axis=1), 4, axis=1)
        clear = group * _GROUP_MARGIN <= strongest
        twist_ok = (c_low <= c_high * self._normal_twist) & (c_high <= c_low * self._reverse_twist)
        digit[maybe] = np.where(twist_ok, _DIGIT_OF_PATTERN[_pattern(clear)], -1)
        return digit

    def _advances(
        self,
        rows: NDArray[np.intp],
        digit: NDArray[np.intp],
        wanted: NDArray[np.bool_],
        bins: NDArray[np.complex64],
        nb: int,
    ) -> NDArray[np.complex64]:
        """Phase advance ``[2, blocks, legs]`` of the digit's low/high bin since the block before.

        Only for the ``wanted`` blocks (zero elsewhere); ``digit`` and
        ``wanted`` are ``[blocks, legs]``, ``rows`` the legs' rows in the
        batch; ``bins`` holds the batch's ``nb`` blocks (``kmax`` per row, in
        row order) then, per batch row, the bins of the block before its first.
        One-dimensional ``take`` and scatters only: numpy's multi-dimensional
        fancy indexing costs several times more at these sizes.
        """
        kmax, legs = digit.shape
        advance = np.zeros((2, kmax * legs), dtype=np.complex64)
        at = np.flatnonzero(wanted)
        if at.size:
            here = rows * kmax + np.arange(kmax)[:, None]  # [blocks, legs]: row in bins
            before = here - 1
            before[0] = nb + rows
            tones = np.take(_TONES_OF_DIGIT, np.take(digit, at), axis=1)  # [2, blocks]
            flat = bins.reshape(-1)
            now = np.take(flat, np.take(here, at) * 8 + tones)
            then = np.take(flat, np.take(before, at) * 8 + tones)
            turn = now * then.conj()
            advance[0][at] = turn[0]
            advance[1][at] = turn[1]
        return advance.reshape(2, kmax, legs)

    def _track(
        self,
        slots: NDArray[np.intp],
        rows: NDArray[np.intp],
        digit: NDArray[np.intp],
        bins: NDArray[np.complex64],
        nb: int,
        first_start: NDArray[np.int64],
    ) -> list[DtmfEvent]:
        """Run the key state machine over the blocks, in time order, for ``slots``.

        ``digit`` is ``[blocks, legs]`` (-1 no digit, -2 past the leg's end),
        blocks first so that each block's row is contiguous. What does not
        depend on the key held (run lengths, which blocks can make a key go
        down) is worked out for all blocks at once; the per-block step is a few
        array operations over the legs, and the event bookkeeping runs only in
        blocks where a key goes down or up.
        """
        kmax = digit.shape[0]
        state = np.take(self._state, slots, axis=1)  # [fields, legs], updated in place
        key, cand, run, run_start, key_start, key_last, miss = state
        valid = digit > -2
        present = digit >= 0
        same = np.empty_like(present)
        np.equal(digit[0], cand, out=same[0])
        np.equal(digit[1:], digit[:-1], out=same[1:])
        same &= present
        fresh = present ^ same
        # The run's length after each block (blocks past a leg's end keep it).
        keep = same | ~valid
        runs = np.empty_like(digit)
        length = run
        for k in range(kmax):
            runs[k] = length = np.where(keep[k], length, 0) + present[k]
        run[:] = length
        # A key can go down only where a run reaches _KEY_DOWN_BLOCKS, and the
        # phase advance only matters up to there (a run past it never fires),
        # so a key held for long costs no phase work at all.
        reaches = valid & (runs == _KEY_DOWN_BLOCKS)
        tuning = same & (runs <= _KEY_DOWN_BLOCKS)
        fire_rows: NDArray[np.bool_] = np.logical_or.reduce(reaches, axis=1)
        acc_rows: NDArray[np.bool_] = np.logical_or.reduce(tuning | fresh, axis=1)
        tuned = bool(acc_rows.any())
        if tuned:
            acc = np.take(self._acc, slots, axis=1)
            advance = self._advances(rows, digit, tuning, bins, nb)
        held = key >= 0
        found: list[_Found] = []

        for k in range(kmax):
            d, v = digit[k], valid[k]
            bs = first_start + self.hop * k
            np.copyto(cand, d, where=v)
            if acc_rows[k]:
                np.copyto(run_start, bs, where=fresh[k])
                acc = np.where(fresh[k], 0, acc + advance[:, k])
            hit = present[k] & (d == key)
            np.copyto(key_last, bs, where=hit)
            miss += v & held
            miss[hit] = 0
            # With no key held miss stays 0, so ``gone`` needs no ``held``.
            gone = miss >= _KEY_UP_BLOCKS
            fire = None  # legs whose key goes down in this block (another one is released)
            if fire_rows[k]:
                ready = reaches[k] & (d != key)
                if ready.any():
                    ready[ready] = self._in_tune(d[ready], acc[:, ready])
                    if ready.any():
                        fire = ready
                        gone |= fire & held
            released = bool(gone.any())
            if released:
                i = gone.nonzero()[0]
                found.append((_UP, k, i, key[i], key_start[i], key_last[i] + self._end_offset))
                key[i] = -1
                miss[i] = 0
            if fire is not None:
                i = fire.nonzero()[0]
                begin = np.maximum(run_start[i] + self._start_offset, 0)
                found.append((_DOWN, k, i, d[i], begin, begin))
                key[i] = d[i]
                key_start[i] = begin
                key_last[i] = bs[i]
                miss[i] = 0
            if released or fire is not None:
                held = key >= 0

        self._state[:, slots] = state
        if tuned:
            self._acc[:, slots] = acc
        return self._events(slots, found) if found else []

    def _events(self, slots: NDArray[np.intp], found: list[_Found]) -> list[DtmfEvent]:
        """Event objects, per slot in time order (a release before a press in the same block).

        Built group by group with ``map`` (one object per event is most of the
        cost when many legs press at once), then put in order if needed.
        """
        events: list[DtmfEvent] = []
        rate = itertools.repeat(self.rate)
        for kind, _, legs, digit, begin, end in found:
            names = _KEY_NAMES[digit].tolist()
            slot = slots[legs].tolist()
            if kind == _UP:
                events += map(KeyUp, slot, names, begin.tolist(), (end - begin).tolist(), rate)
            else:
                events += map(KeyDown, slot, names, begin.tolist(), rate)
        slot_of = slots[np.concatenate([f[2] for f in found])]
        if len(found) == 1 and bool((slot_of[1:] > slot_of[:-1]).all()):
            return events
        kind_of = np.concatenate([np.full(f[2].size, f[0]) for f in found])
        block_of = np.concatenate([np.full(f[2].size, f[1]) for f in found])
        return [events[i] for i in np.lexsort((kind_of, block_of, slot_of)).tolist()]

    def _in_tune(self, cand: NDArray[np.intp], acc: NDArray[np.complex64]) -> NDArray[np.bool_]:
        """Whether both tones of each run are within ``freq_tolerance`` of nominal.

        ``acc`` is ``[2, runs]``: the summed phase advance of the low and the
        high tone's bin.
        """
        index = np.take(_TONES_OF_DIGIT, cand, axis=1)
        turned = acc * self._hop_turn[index]
        offset_hz = np.angle(turned) * self.rate / (2.0 * np.pi * self.hop)
        within = np.abs(offset_hz) <= self._freq_tolerance * self._freqs[index]
        ok: NDArray[np.bool_] = within[0] & within[1]
        return ok
