"""RTP packets (RFC 3550): parse and serialise, counter arithmetic, receiver statistics.

Owns: the RTP wire format (`RtpPacket`, the `parse_header` / `build_packet`
fast paths), the one exception a malformed packet raises (`RtpError`),
16/32-bit wraparound arithmetic (`seq_diff`, `seq_lt`, `ts_diff`, `ts_lt`),
RFC 3550 appendix A.1 extended sequence numbers (`SequenceTracker`), per-leg
receiver statistics with SSRC change handling and A.8 interarrival jitter
(`RtpSource`), and RTP/RTCP demultiplexing on one port (`is_rtcp`).

Must not: touch sockets, read the clock (arrival time comes in as ``now``,
in seconds, from the caller), log, or decode payloads (codecs live in
``dsp/``; RFC 4733 events in ``rtp.telephone_event``).

Errors: every malformed datagram makes the parsers raise `RtpError` (a
`ValueError`) whose message says what is wrong: too short, bad version,
truncated CSRC list, truncated header extension, bad padding. Nothing else
escapes `RtpPacket.parse` or `parse_header`, whatever the bytes. Building a
packet from out-of-range fields raises a plain `ValueError`.

Why not aiortc's ``RtpPacket``: measured on this machine (``bench/rtp_parse.py``)
its ``parse`` costs over 10x a bare ``struct.unpack_from``, because it always
builds a ``HeaderExtensions`` object and copies the CSRC list word by word;
its ``serialize`` writes random padding bytes (``os.urandom``) and rebuilds
header extensions through a map of negotiated ids, so a captured packet with
padding or an unregistered extension does not round-trip byte for byte; and
its ``is_rtcp`` tests 192-208 rather than RFC 5761's 192-223. Here the packet
keeps the raw extension block and padding bytes, so ``bytes(parse(x)) == x``
for every valid ``x``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "HEADER_SIZE",
    "Arrival",
    "HeaderExtension",
    "RtpError",
    "RtpPacket",
    "RtpSource",
    "SequenceTracker",
    "build_packet",
    "is_rtcp",
    "parse_header",
    "seq_diff",
    "seq_lt",
    "ts_diff",
    "ts_lt",
]

HEADER_SIZE = 12
"""Size of the fixed RTP header in bytes (no CSRCs, no extension)."""

_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32

_FIXED = struct.Struct("!BBHII")
_unpack_fixed = _FIXED.unpack_from
_pack_fixed = _FIXED.pack
_EXTENSION_HEAD = struct.Struct("!HH")

Buffer = bytes | bytearray | memoryview
"""What the parsers accept: the datagram as received (``recv`` or ``recv_into``)."""


class RtpError(ValueError):
    """A datagram is not a valid RTP packet or RFC 4733 payload.

    The one exception the ``rtp.packet`` and ``rtp.telephone_event`` parsers
    raise for bad input; the message names what is wrong. The receive path
    catches it, counts the datagram as malformed and carries on.
    """


class HeaderExtension(NamedTuple):
    """The RTP header extension block (X bit), kept as raw bytes.

    ``profile`` is the 16-bit "defined by profile" word (0xBEDE for RFC 8285
    one-byte elements, 0x100x for two-byte ones); ``data`` is the extension
    body without its 4-byte head, a multiple of 4 bytes long. It is not
    decoded: nothing in a telephony media path needs the elements, and
    keeping the bytes makes the round trip exact.
    """

    profile: int
    data: bytes


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 section 5.1), version 2.

    ``payload`` is ``bytes`` (a copy), so a packet stays valid when the
    receive buffer it came from is reused; it excludes padding. ``padding``
    holds the padding bytes exactly as received, count octet included
    (empty when the P bit is clear), and ``extension`` the raw extension
    block, so ``bytes(RtpPacket.parse(x)) == x`` byte for byte. For the hot
    path where only the header fields are needed, use `parse_header`.
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: HeaderExtension | None = None
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> RtpPacket:
        """Parse one datagram; raise `RtpError` saying what is wrong if it is not RTP."""
        if type(data) is not bytes:
            data = bytes(data)
        try:
            b0, b1, sequence, timestamp, ssrc = _unpack_fixed(data)
        except struct.error:
            raise RtpError(
                f"too short for an RTP header: {len(data)} bytes, need {HEADER_SIZE}"
            ) from None
        if b0 == 0x80:  # version 2, no padding, no extension, no CSRC: nearly every packet
            return cls(b1 & 0x7F, sequence, timestamp, ssrc, data[HEADER_SIZE:], b1 > 127)
        start, end, csrc, extension = _layout(data, b0)
        return cls(
            b1 & 0x7F,
            sequence,
            timestamp,
            ssrc,
            data[start:end],
            b1 > 127,
            csrc,
            extension,
            data[end:],
        )

    def __bytes__(self) -> bytes:
        """Serialise; ``bytes(RtpPacket.parse(x)) == x`` for every valid packet ``x``."""
        pt = self.payload_type
        if pt >> 7:
            raise ValueError(f"payload_type must be 0..127, got {pt}")
        csrc, extension, padding = self.csrc, self.extension, self.padding
        b0 = 0x80
        if csrc:
            if len(csrc) > 15:
                raise ValueError(f"at most 15 CSRCs fit in the header, got {len(csrc)}")
            b0 |= len(csrc)
        if extension is not None:
            b0 |= 0x10
        if padding:
            if padding[-1] != len(padding):
                raise ValueError(
                    f"padding of {len(padding)} bytes must end with its own length, "
                    f"ends with {padding[-1]}"
                )
            b0 |= 0x20
        try:
            head = _pack_fixed(
                b0, 0x80 | pt if self.marker else pt, self.sequence, self.timestamp, self.ssrc
            )
        except struct.error:
            raise ValueError(
                "sequence must be 0..65535, timestamp and ssrc 0..2**32-1; got "
                f"{self.sequence}, {self.timestamp}, {self.ssrc}"
            ) from None
        if b0 == 0x80:
            return head + self.payload
        parts = [head]
        if csrc:
            try:
                parts.append(struct.pack(f"!{len(csrc)}I", *csrc))
            except struct.error:
                raise ValueError(f"each CSRC must be 0..2**32-1, got {csrc}") from None
        if extension is not None:
            body = extension.data
            if len(body) % 4 or len(body) > 0xFFFF * 4:
                raise ValueError(
                    f"extension data must be a multiple of 4 bytes, at most {0xFFFF * 4}; "
                    f"got {len(body)}"
                )
            if not 0 <= extension.profile <= 0xFFFF:
                raise ValueError(f"extension profile must be 0..65535, got {extension.profile}")
            parts.append(_EXTENSION_HEAD.pack(extension.profile, len(body) // 4))
            parts.append(body)
        parts.append(self.payload)
        parts.append(padding)
        return b"".join(parts)


def _layout(data: Buffer, b0: int) -> tuple[int, int, tuple[int, ...], HeaderExtension | None]:
    """Validate a header that is not the plain 0x80 case.

    Return (payload start, payload end, CSRCs, extension).
    """
    version = b0 >> 6
    if version != 2:
        raise RtpError(f"bad RTP version {version}, expected 2")
    size = len(data)
    count = b0 & 0x0F
    pos = HEADER_SIZE + 4 * count
    if size < pos:
        raise RtpError(
            f"truncated CSRC list: {count} CSRCs need {pos} header bytes, packet has {size}"
        )
    csrc: tuple[int, ...] = struct.unpack_from(f"!{count}I", data, HEADER_SIZE) if count else ()
    extension = None
    if b0 & 0x10:
        if size < pos + 4:
            raise RtpError(
                f"truncated header extension: its 4-byte head needs {pos + 4} bytes, "
                f"packet has {size}"
            )
        profile, words = _EXTENSION_HEAD.unpack_from(data, pos)
        end = pos + 4 + 4 * words
        if size < end:
            raise RtpError(
                f"truncated header extension: {words} words need {end} bytes, packet has {size}"
            )
        extension = HeaderExtension(profile, bytes(data[pos + 4 : end]))
        pos = end
    end = size
    if b0 & 0x20:
        pad = data[-1]
        if pad == 0 or pad > size - pos:
            raise RtpError(
                f"bad padding: count octet says {pad} bytes, {size - pos} bytes follow the header"
            )
        end = size - pad
    return pos, end, csrc, extension


def parse_header(data: Buffer) -> tuple[int, bool, int, int, int, int, int]:
    """Hot-path parse: the header fields and where the payload lies, without copying.

    Return ``(payload_type, marker, sequence, timestamp, ssrc, payload_start,
    payload_end)``; the payload is ``data[payload_start:payload_end]`` (CSRCs,
    extension and padding skipped). One ``struct.unpack_from`` for the common
    packet with no CSRC, extension or padding; anything else is validated as
    fully as `RtpPacket.parse` does. Raise `RtpError` if ``data`` is not RTP.
    """
    try:
        b0, b1, sequence, timestamp, ssrc = _unpack_fixed(data)
    except struct.error:
        raise RtpError(
            f"too short for an RTP header: {len(data)} bytes, need {HEADER_SIZE}"
        ) from None
    if b0 == 0x80:
        return b1 & 0x7F, b1 > 127, sequence, timestamp, ssrc, HEADER_SIZE, len(data)
    start, end, _, _ = _layout(data, b0)
    return b1 & 0x7F, b1 > 127, sequence, timestamp, ssrc, start, end


def build_packet(
    payload_type: int,
    marker: bool,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: Buffer,
) -> bytes:
    """Hot-path serialise: a plain packet (no CSRC, extension or padding).

    Same bytes as ``bytes(RtpPacket(...))`` for those fields. Out-of-range
    values raise ``ValueError``.
    """
    if payload_type >> 7:
        raise ValueError(f"payload_type must be 0..127, got {payload_type}")
    try:
        return (
            _pack_fixed(
                0x80, 0x80 | payload_type if marker else payload_type, sequence, timestamp, ssrc
            )
            + payload
        )
    except struct.error:
        raise ValueError(
            "sequence must be 0..65535, timestamp and ssrc 0..2**32-1; got "
            f"{sequence}, {timestamp}, {ssrc}"
        ) from None


def is_rtcp(data: Buffer) -> bool:
    """True if a datagram on a muxed RTP/RTCP port is RTCP (RFC 5761 section 4).

    RTCP packet types 192-223 sit where RTP has the marker bit and payload
    types 64-95, which RFC 5761 forbids for RTP when muxing, so the second
    octet alone tells them apart. The version bits must say 2 as well.
    """
    return len(data) >= 2 and data[0] >> 6 == 2 and 192 <= data[1] <= 223


def seq_diff(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers: the shortest signed distance, in -32768..32767.

    Positive means ``a`` comes after ``b``. Exactly half the circle apart is
    ambiguous (RFC 1982) and comes out as -32768 in both directions.
    """
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_lt(a: int, b: int) -> bool:
    """True if sequence number ``a`` comes before ``b`` (across the 65535 -> 0 wrap)."""
    return ((a - b + 0x8000) & 0xFFFF) < 0x8000


def ts_diff(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps: the shortest signed distance mod 2**32."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def ts_lt(a: int, b: int) -> bool:
    """True if timestamp ``a`` comes before ``b`` (across the 2**32 wrap)."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) < 0x80000000


class Arrival(enum.Enum):
    """What one received packet means for its stream (`RtpSource.receive`).

    Play: ``NEXT``, ``LATE`` (the jitter buffer decides if it is still
    useful), ``NEW_SOURCE`` and ``RESTART`` (flush the jitter buffer first:
    sequence numbers and timestamps start from a new base). Drop:
    ``PROBATION`` and ``STRAY``.
    """

    NEXT = "next"
    """In order: after the highest sequence so far, possibly past a gap (loss)."""
    LATE = "late"
    """At or behind the highest sequence so far: reordered or a duplicate."""
    NEW_SOURCE = "new-source"
    """The first valid packet of a source: the first of the leg, or a new SSRC."""
    RESTART = "restart"
    """Same SSRC, but the sequence jumped and the next packet confirmed the jump."""
    PROBATION = "probation"
    """From a source not yet confirmed by enough sequential packets."""
    STRAY = "stray"
    """A large sequence jump not (yet) confirmed, or a straggler from the replaced SSRC."""


# Module-level aliases: reading a global is cheaper than an Enum class attribute on the hot path.
_NEXT = Arrival.NEXT
_LATE = Arrival.LATE
_NEW_SOURCE = Arrival.NEW_SOURCE
_RESTART = Arrival.RESTART
_PROBATION = Arrival.PROBATION
_STRAY = Arrival.STRAY


class SequenceTracker:
    """Extended sequence numbers and loss for one SSRC (RFC 3550 appendix A.1).

    Created at a source's first packet. ``min_sequential`` packets in a row
    validate the source (the RFC suggests 2 for a source announced by
    nobody; 1, the default, accepts a signalled peer's first packet). A jump
    of ``max_dropout`` or more ahead (or more than ``max_misorder`` behind)
    is held as suspect; if the very next packet follows it, the sender
    restarted and counting starts again from there.

    ``received`` counts valid packets including duplicates; ``expected`` is
    the span of extended sequence numbers; ``lost = expected - received``
    (negative when duplicates outnumber losses, as the RFC says). All three
    include earlier runs before a restart.
    """

    __slots__ = (
        "_bad_seq",
        "_prior_expected",
        "_prior_received",
        "_run_received",
        "base_seq",
        "cycles",
        "extended",
        "max_dropout",
        "max_misorder",
        "max_seq",
        "min_sequential",
        "probation",
        "restarts",
    )

    def __init__(
        self,
        first_seq: int,
        *,
        min_sequential: int = 1,
        max_dropout: int = 3000,
        max_misorder: int = 100,
    ) -> None:
        if min_sequential < 1:
            raise ValueError(f"min_sequential must be >= 1, got {min_sequential}")
        self.min_sequential = min_sequential
        self.max_dropout = max_dropout
        self.max_misorder = max_misorder
        self.base_seq = first_seq
        self.max_seq = (first_seq - 1) & 0xFFFF
        self.cycles = 0
        self.probation = min_sequential
        self.extended = -1
        """Extended sequence number of the last valid packet (cycles * 65536 + seq)."""
        self.restarts = 0
        self._bad_seq = -1
        self._run_received = 0
        self._prior_expected = 0
        self._prior_received = 0

    def _start_run(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.cycles = 0
        self._bad_seq = -1
        self._run_received = 0

    def update(self, seq: int) -> Arrival:
        """Account for one packet; say whether it is valid and how it arrived.

        Returns ``NEW_SOURCE`` for the packet that validates the source,
        ``NEXT``, ``LATE``, ``RESTART`` (valid, counting restarted here),
        ``PROBATION`` or ``STRAY`` (not valid, not counted).
        """
        max_seq = self.max_seq
        if self.probation:
            if seq == (max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._start_run(seq)
                    self._run_received = 1
                    self.extended = seq
                    return _NEW_SOURCE
            else:  # out of order: this packet starts a new run of sequential ones
                self.probation = self.min_sequential - 1
                self.max_seq = seq
            return _PROBATION
        delta = (seq - max_seq) & 0xFFFF
        if 0 < delta < self.max_dropout:
            if seq < max_seq:
                self.cycles += _SEQ_MOD
            self.max_seq = seq
            self._run_received += 1
            self.extended = self.cycles + seq
            return _NEXT
        if delta == 0 or delta > _SEQ_MOD - self.max_misorder:
            self._run_received += 1
            self.extended = self.cycles + max_seq + delta - (_SEQ_MOD if delta else 0)
            return _LATE
        if seq == self._bad_seq:
            self._prior_expected += self.cycles + max_seq - self.base_seq + 1
            self._prior_received += self._run_received
            self.restarts += 1
            self._start_run(seq)
            self._run_received = 1
            self.extended = seq
            return _RESTART
        self._bad_seq = (seq + 1) & 0xFFFF
        return _STRAY

    @property
    def extended_max(self) -> int:
        """Extended highest sequence number received (cycles * 65536 + max_seq)."""
        return self.cycles + self.max_seq

    @property
    def received(self) -> int:
        return self._prior_received + self._run_received

    @property
    def expected(self) -> int:
        if self.probation:
            return self._prior_expected
        return self._prior_expected + self.cycles + self.max_seq - self.base_seq + 1

    @property
    def lost(self) -> int:
        return self.expected - self.received


class RtpSource:
    """Receiver statistics for the RTP stream arriving on one leg (RFC 3550 A.1, A.3, A.8).

    Feed it every RTP packet of the leg, in arrival order, with
    ``receive(ssrc, sequence, timestamp, now)``; it returns an `Arrival`
    saying whether to play the packet and whether to flush first.

    SSRC changes: a packet with another SSRC starts a candidate source; once
    it has ``min_sequential`` packets in a row it replaces the current one
    (``NEW_SOURCE``: flush the jitter buffer), so a stray datagram cannot
    hijack the leg when ``min_sequential > 1``. After a switch, packets from
    the replaced SSRC at or behind its highest sequence are stragglers
    (``STRAY``); one ahead of it means the sender switched back.

    Counters (``received``, ``expected``, ``lost``) cover the whole leg,
    across SSRC changes and restarts. ``jitter`` is the A.8 interarrival
    jitter of the current source in timestamp units (``jitter_seconds`` in
    seconds), updated only by packets passed with ``audio=True``: RFC 4733
    event packets repeat their start timestamp and would read as jitter.
    """

    __slots__ = (
        "_candidate",
        "_candidate_ssrc",
        "_last_arrival",
        "_last_timestamp",
        "_prior_expected",
        "_prior_received",
        "_replaced_max",
        "_replaced_ssrc",
        "_tracker",
        "clock_rate",
        "jitter",
        "max_dropout",
        "max_misorder",
        "min_sequential",
        "ssrc",
        "ssrc_changes",
        "strays",
    )

    def __init__(
        self,
        clock_rate: int,
        *,
        min_sequential: int = 1,
        max_dropout: int = 3000,
        max_misorder: int = 100,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        if min_sequential < 1:
            raise ValueError(f"min_sequential must be >= 1, got {min_sequential}")
        self.clock_rate = clock_rate
        self.min_sequential = min_sequential
        self.max_dropout = max_dropout
        self.max_misorder = max_misorder
        self.ssrc: int | None = None
        """SSRC of the current (validated) source, None before the first one."""
        self.ssrc_changes = 0
        """How many times a new SSRC replaced the current one (not counting the first)."""
        self.strays = 0
        """Packets not played: probation, unconfirmed jumps, stragglers."""
        self.jitter = 0.0
        self._tracker: SequenceTracker | None = None
        self._candidate: SequenceTracker | None = None
        self._candidate_ssrc = -1
        self._replaced_ssrc = -1
        self._replaced_max = 0
        self._prior_expected = 0
        self._prior_received = 0
        self._last_arrival = 0.0
        self._last_timestamp: int | None = None

    def _new_tracker(self, seq: int) -> SequenceTracker:
        return SequenceTracker(
            seq,
            min_sequential=self.min_sequential,
            max_dropout=self.max_dropout,
            max_misorder=self.max_misorder,
        )

    def receive(
        self, ssrc: int, sequence: int, timestamp: int, now: float, *, audio: bool = True
    ) -> Arrival:
        """Account for one packet that arrived at ``now`` (seconds, any epoch)."""
        tracker = self._tracker
        if ssrc == self.ssrc and tracker is not None:
            arrival = tracker.update(sequence)
            if arrival is _RESTART:
                self._last_timestamp = None
            elif arrival is _STRAY:
                self.strays += 1
                return arrival
        else:
            arrival = self._other_ssrc(ssrc, sequence)
            if arrival is not _NEW_SOURCE:
                self.strays += 1
                return arrival
        if audio:  # RFC 3550 A.8, inlined: this runs for every packet of every call
            arrived = now * self.clock_rate
            last = self._last_timestamp
            if last is not None:
                # D(i-1, i) = (R_i - R_{i-1}) - (S_i - S_{i-1}); J += (|D| - J) / 16
                sent = ((timestamp - last + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                d = arrived - self._last_arrival - sent
                self.jitter += ((d if d >= 0 else -d) - self.jitter) * 0.0625
            self._last_arrival = arrived
            self._last_timestamp = timestamp
        return arrival

    def _other_ssrc(self, ssrc: int, sequence: int) -> Arrival:
        if ssrc == self._replaced_ssrc and seq_diff(sequence, self._replaced_max) <= 0:
            return _STRAY
        candidate = self._candidate
        if candidate is None or ssrc != self._candidate_ssrc:
            candidate = self._new_tracker(sequence)
            self._candidate, self._candidate_ssrc = candidate, ssrc
        arrival = candidate.update(sequence)
        if arrival is not _NEW_SOURCE:
            return _PROBATION
        old = self._tracker
        if old is not None and self.ssrc is not None:
            self._prior_expected += old.expected
            self._prior_received += old.received
            self._replaced_ssrc = self.ssrc
            self._replaced_max = old.max_seq
            self.ssrc_changes += 1
        self._tracker, self._candidate, self._candidate_ssrc = candidate, None, -1
        self.ssrc = ssrc
        self.jitter = 0.0
        self._last_timestamp = None
        return arrival

    @property
    def jitter_seconds(self) -> float:
        return self.jitter / self.clock_rate

    @property
    def extended_max(self) -> int:
        """Extended highest sequence number of the current source (-1 before any)."""
        return self._tracker.extended_max if self._tracker is not None else -1

    @property
    def extended(self) -> int:
        """Extended sequence number of the last valid packet of the current source."""
        return self._tracker.extended if self._tracker is not None else -1

    @property
    def restarts(self) -> int:
        """Confirmed sequence jumps within the current source."""
        return self._tracker.restarts if self._tracker is not None else 0

    @property
    def received(self) -> int:
        """Valid packets received on the leg (duplicates included, as RFC 3550 counts)."""
        current = self._tracker.received if self._tracker is not None else 0
        return self._prior_received + current

    @property
    def expected(self) -> int:
        current = self._tracker.expected if self._tracker is not None else 0
        return self._prior_expected + current

    @property
    def lost(self) -> int:
        """Cumulative packets lost: expected - received (negative if duplicates dominate)."""
        return self.expected - self.received
