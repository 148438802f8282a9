"""RTP packets: round trips on SIPp's capture, malformed input, wraparound, statistics."""

from __future__ import annotations

import itertools
import struct

import pytest
from aiortc.rtp import RtcpByePacket, RtcpRrPacket, RtcpSenderInfo, RtcpSrPacket
from aiortc.rtp import RtpPacket as AiortcPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.packet import (
    HEADER_SIZE,
    Arrival,
    HeaderExtension,
    RtpError,
    RtpPacket,
    RtpSource,
    SequenceTracker,
    build_packet,
    is_rtcp,
    parse_header,
    seq_diff,
    seq_lt,
    ts_diff,
    ts_lt,
)
from tests.rtp.pcap import SIPP_CAPTURES, read_udp

G711A = SIPP_CAPTURES / "g711a.pcap"
needs_sipp = pytest.mark.skipif(not G711A.exists(), reason="SIPp captures (sip-tester) missing")


def _capture() -> list[tuple[float, bytes]]:
    return [(d.time, d.payload) for d in read_udp(G711A)]


# --- SIPp's g711a.pcap: the audio of its uac_pcap scenario ---------------------------------


@needs_sipp
def test_every_captured_packet_round_trips_byte_exact() -> None:
    for _, data in _capture():
        packet = RtpPacket.parse(data)
        assert bytes(packet) == data
        pt, marker, seq, ts, ssrc, start, end = parse_header(data)
        assert (pt, marker, seq, ts, ssrc) == (
            packet.payload_type,
            packet.marker,
            packet.sequence,
            packet.timestamp,
            packet.ssrc,
        )
        assert data[start:end] == packet.payload
        assert build_packet(pt, marker, seq, ts, ssrc, data[start:end]) == data


@needs_sipp
def test_capture_is_pcma_at_30ms_with_continuous_sequence() -> None:
    packets = [RtpPacket.parse(data) for _, data in _capture()]
    assert len(packets) > 100
    assert {p.payload_type for p in packets} == {8}
    assert {len(p.payload) for p in packets} == {240}
    assert len({p.ssrc for p in packets}) == 1
    assert [p.marker for p in packets].count(True) == 1 and packets[0].marker
    for before, after in itertools.pairwise(packets):
        assert seq_diff(after.sequence, before.sequence) == 1
        assert ts_diff(after.timestamp, before.timestamp) == 240


@needs_sipp
def test_fields_agree_with_aiortc() -> None:
    for _, data in _capture()[:50]:
        ours, theirs = RtpPacket.parse(data), AiortcPacket.parse(data)
        assert (ours.payload_type, ours.marker, ours.sequence, ours.timestamp, ours.ssrc) == (
            theirs.payload_type,
            bool(theirs.marker),
            theirs.sequence_number,
            theirs.timestamp,
            theirs.ssrc,
        )
        assert ours.payload == theirs.payload


@needs_sipp
def test_receiver_statistics_on_the_capture() -> None:
    source = RtpSource(8000)
    arrivals = []
    for now, data in _capture():
        _, _, seq, ts, ssrc, _, _ = parse_header(data)
        arrivals.append(source.receive(ssrc, seq, ts, now))
    assert arrivals[0] is Arrival.NEW_SOURCE
    assert set(arrivals[1:]) == {Arrival.NEXT}
    assert source.received == source.expected == len(arrivals)
    assert source.lost == 0
    # Captured on a LAN at 30 ms: the interarrival jitter is a few ms at most.
    assert 0 < source.jitter_seconds < 0.005


# --- CSRC, extension, padding ----------------------------------------------------------------


def _header(b0: int, b1: int = 0, seq: int = 1, ts: int = 2, ssrc: int = 3) -> bytes:
    return struct.pack("!BBHII", b0, b1, seq, ts, ssrc)


def test_csrc_extension_and_padding_are_parsed_and_kept() -> None:
    data = (
        _header(0x80 | 0x20 | 0x10 | 2, 0x80 | 101, 65535, 0xFFFFFFFF, 0xDEADBEEF)
        + struct.pack("!II", 11, 22)
        + struct.pack("!HH", 0xBEDE, 1)
        + b"\x10\xaa\x00\x00"
        + b"DATA"
        + b"\x07\x00\x00\x04"  # 4 bytes of padding, arbitrary content, count octet last
    )
    packet = RtpPacket.parse(data)
    assert packet.payload_type == 101 and packet.marker
    assert (packet.sequence, packet.timestamp, packet.ssrc) == (65535, 0xFFFFFFFF, 0xDEADBEEF)
    assert packet.csrc == (11, 22)
    assert packet.extension == HeaderExtension(0xBEDE, b"\x10\xaa\x00\x00")
    assert packet.payload == b"DATA"
    assert packet.padding == b"\x07\x00\x00\x04"
    assert bytes(packet) == data
    *_, start, end = parse_header(data)
    assert data[start:end] == b"DATA"


def test_parse_accepts_bytearray_and_memoryview_and_copies_the_payload() -> None:
    buffer = bytearray(_header(0x80, 0) + b"abc")
    packet = RtpPacket.parse(memoryview(buffer))
    buffer[HEADER_SIZE:] = b"xyz"  # the receive buffer is reused for the next datagram
    assert packet.payload == b"abc"
    assert RtpPacket.parse(buffer).payload == b"xyz"


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"", "too short"),
        (_header(0x80)[:11], "too short"),
        (_header(0x40) + b"x", "version 1"),
        (_header(0x00), "version 0"),
        (_header(0x83) + b"\x00" * 8, "CSRC"),
        (_header(0x90) + b"\xbe\xde", "extension"),
        (_header(0x90) + b"\xbe\xde\x00\x02" + b"\x00" * 4, "extension"),
        (_header(0xA0) + b"ab\x00", "padding"),  # count octet 0
        (_header(0xA0) + b"ab\x04", "padding"),  # more padding than bytes after the header
        (_header(0xA0), "padding"),  # padding bit, but the count octet is in the header
    ],
)
def test_malformed_packets_raise_rtp_error_saying_what_is_wrong(
    data: bytes, complaint: str
) -> None:
    with pytest.raises(RtpError, match=complaint):
        RtpPacket.parse(data)
    with pytest.raises(RtpError, match=complaint):
        parse_header(data)


def test_rtp_error_is_a_value_error() -> None:
    assert issubclass(RtpError, ValueError)


@pytest.mark.parametrize(
    "packet",
    [
        RtpPacket(128, 1, 2, 3),
        RtpPacket(0, 65536, 2, 3),
        RtpPacket(0, 1, 2**32, 3),
        RtpPacket(0, 1, 2, 3, csrc=tuple(range(16))),
        RtpPacket(0, 1, 2, 3, extension=HeaderExtension(1, b"abc")),
        RtpPacket(0, 1, 2, 3, padding=b"\x00\x00\x02"),
    ],
)
def test_serialising_impossible_fields_raises_value_error(packet: RtpPacket) -> None:
    with pytest.raises(ValueError):
        bytes(packet)


valid_packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=64),
    marker=st.booleans(),
    csrc=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none()
    | st.builds(
        HeaderExtension,
        st.integers(0, 0xFFFF),
        st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4]),
    ),
    padding=st.integers(0, 255).flatmap(
        lambda n: (
            st.binary(min_size=n - 1, max_size=n - 1).map(lambda b: b + bytes([n]))
            if n
            else st.just(b"")
        )
    ),
)


@given(valid_packets)
def test_generated_packets_round_trip(packet: RtpPacket) -> None:
    data = bytes(packet)
    assert RtpPacket.parse(data) == packet
    assert bytes(RtpPacket.parse(data)) == data
    *_, start, end = parse_header(data)
    assert data[start:end] == packet.payload


@settings(max_examples=500)
@given(st.binary(max_size=80) | st.binary(max_size=60).map(lambda b: b"\x80" + b))
def test_random_bytes_parse_or_raise_rtp_error_and_accepted_ones_round_trip(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        with pytest.raises(RtpError):
            parse_header(data)
        return
    assert bytes(packet) == data
    *_, start, end = parse_header(data)
    assert data[start:end] == packet.payload


@given(st.binary(min_size=2, max_size=20))
def test_is_rtcp_never_mistakes_rtp_for_rtcp(tail: bytes) -> None:
    for pt in (0, 8, 9, 18, 96, 101, 127):
        for marker in (False, True):
            assert not is_rtcp(build_packet(pt, marker, 1, 2, 3, tail))


def test_is_rtcp_recognises_real_rtcp_packets() -> None:
    sender = RtcpSenderInfo(ntp_timestamp=1, rtp_timestamp=2, packet_count=3, octet_count=4)
    for packet in (
        RtcpSrPacket(ssrc=1, sender_info=sender),
        RtcpRrPacket(ssrc=1),
        RtcpByePacket(sources=[1]),
    ):
        assert is_rtcp(bytes(packet))
    assert not is_rtcp(b"\x80")


# --- wraparound arithmetic ---------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@given(u16, u16)
def test_seq_diff_is_antisymmetric_and_in_range(a: int, b: int) -> None:
    d = seq_diff(a, b)
    assert -0x8000 <= d < 0x8000
    assert (b + d) & 0xFFFF == a
    if d != -0x8000:  # exactly half way round is ambiguous either way
        assert seq_diff(b, a) == -d
        assert seq_lt(a, b) == (d < 0) and seq_lt(b, a) == (d > 0)


@given(u16, st.integers(-0x7FFF, 0x7FFF))
def test_seq_diff_is_consistent_across_the_wrap(a: int, k: int) -> None:
    b = (a + k) & 0xFFFF
    assert seq_diff(b, a) == k
    assert seq_lt(a, b) == (k > 0)


def test_seq_wrap_examples() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_lt(65535, 0) and not seq_lt(0, 65535)
    assert ts_diff(0, 0xFFFFFFFF) == 1 and ts_lt(0xFFFFFFF0, 5)


@given(u32, st.integers(-0x7FFFFFFF, 0x7FFFFFFF))
def test_ts_diff_is_consistent_across_the_wrap(a: int, k: int) -> None:
    b = (a + k) & 0xFFFFFFFF
    assert ts_diff(b, a) == k and ts_diff(a, b) == -k
    assert ts_lt(a, b) == (k > 0)


# --- extended sequence numbers and loss (RFC 3550 A.1) ----------------------------------------


@given(u16, st.lists(st.integers(1, 2999), min_size=1, max_size=200))
def test_extended_sequence_is_monotonic_over_wrapped_streams(start: int, steps: list[int]) -> None:
    tracker = SequenceTracker(start)
    assert tracker.update(start) is Arrival.NEW_SOURCE
    expected = start
    for step in steps:
        expected += step
        assert tracker.update(expected & 0xFFFF) is Arrival.NEXT
        assert tracker.extended == tracker.extended_max == expected
    assert tracker.expected == expected - start + 1
    assert tracker.lost == tracker.expected - (len(steps) + 1)


@given(
    u16,
    st.integers(2, 300),
    st.data(),
)
def test_reordering_and_duplicates_are_late_but_counted(
    start: int, n: int, data: st.DataObject
) -> None:
    order = list(range(n))
    # Swap neighbours here and there (network reordering) and repeat a few (duplicates).
    for i in data.draw(st.lists(st.integers(1, n - 2), max_size=n // 4)) if n > 2 else []:
        order[i], order[i + 1] = order[i + 1], order[i]
    dups = data.draw(st.lists(st.sampled_from(order[1:]), max_size=5))
    for d in dups:
        order.insert(order.index(d) + 1, d)
    tracker = SequenceTracker(start)
    highest = -1
    for k in order:
        arrival = tracker.update((start + k) & 0xFFFF)
        assert arrival is (
            Arrival.NEW_SOURCE if highest < 0 else (Arrival.NEXT if k > highest else Arrival.LATE)
        )
        assert tracker.extended == start + k
        highest = max(highest, k)
        assert tracker.extended_max == start + highest
    assert tracker.expected == n
    assert tracker.received == n + len(dups)
    assert tracker.lost == -len(dups)  # RFC 3550: duplicates make loss negative


def test_lost_packets_are_counted() -> None:
    tracker = SequenceTracker(65530)
    sent = [(65530 + k) & 0xFFFF for k in range(20)]
    dropped = {sent[3], sent[7], sent[8]}
    for seq in sent:
        if seq not in dropped:
            tracker.update(seq)
    assert tracker.lost == 3 and tracker.expected == 20 and tracker.extended_max == 65530 + 19


def test_large_jump_is_held_until_confirmed_then_restarts() -> None:
    tracker = SequenceTracker(100)
    for seq in range(100, 110):
        tracker.update(seq)
    assert tracker.update(40000) is Arrival.STRAY  # one wild packet: ignored
    assert tracker.update(110) is Arrival.NEXT
    assert tracker.update(50000) is Arrival.STRAY
    assert tracker.update(50001) is Arrival.RESTART  # two in a row: the sender restarted
    assert tracker.update(50002) is Arrival.NEXT
    assert tracker.restarts == 1
    assert tracker.received == 11 + 2
    assert tracker.expected == 11 + 2
    assert tracker.lost == 0


def test_probation_needs_sequential_packets() -> None:
    tracker = SequenceTracker(7, min_sequential=2)
    assert tracker.update(7) is Arrival.PROBATION
    assert tracker.update(9) is Arrival.PROBATION  # not sequential: the run starts again
    assert tracker.update(10) is Arrival.NEW_SOURCE
    assert tracker.update(11) is Arrival.NEXT
    assert tracker.received == 2 and tracker.lost == 0


# --- RtpSource: SSRC changes and jitter ---------------------------------------------------------


def _feed(source: RtpSource, ssrc: int, seqs: range, t0: float = 0.0) -> list[Arrival]:
    return [
        source.receive(ssrc, s & 0xFFFF, (s * 160) & 0xFFFFFFFF, t0 + i * 0.02)
        for i, s in enumerate(seqs)
    ]


def test_ssrc_change_is_reported_and_counters_span_the_leg() -> None:
    source = RtpSource(8000)
    first = _feed(source, 0xAAAA, range(1000, 1010))
    assert first[0] is Arrival.NEW_SOURCE and source.ssrc == 0xAAAA
    second = _feed(source, 0xBBBB, range(20, 25), t0=1.0)
    assert second[0] is Arrival.NEW_SOURCE and set(second[1:]) == {Arrival.NEXT}
    assert source.ssrc == 0xBBBB and source.ssrc_changes == 1
    assert source.received == 15 and source.expected == 15 and source.lost == 0
    # A straggler of the replaced stream is not a switch back...
    assert source.receive(0xAAAA, 1008, 0, 1.2) is Arrival.STRAY
    assert source.ssrc == 0xBBBB and source.strays == 1
    # ...but the old SSRC continuing past where it stopped is.
    assert source.receive(0xAAAA, 1011, 1011 * 160, 1.3) is Arrival.NEW_SOURCE
    assert source.ssrc == 0xAAAA and source.ssrc_changes == 2


def test_with_probation_a_stray_datagram_cannot_take_the_leg() -> None:
    source = RtpSource(8000, min_sequential=2)
    assert _feed(source, 1, range(10, 13)) == [
        Arrival.PROBATION,
        Arrival.NEW_SOURCE,
        Arrival.NEXT,
    ]
    assert source.receive(0x666, 5000, 0, 0.1) is Arrival.PROBATION
    assert source.receive(1, 13, 13 * 160, 0.1) is Arrival.NEXT
    assert source.ssrc == 1
    assert source.receive(2, 70, 0, 0.2) is Arrival.PROBATION
    assert source.receive(2, 71, 160, 0.22) is Arrival.NEW_SOURCE
    # Packets on probation are not counted (RFC 3550 A.1): 11, 12, 13 and 71.
    assert source.ssrc == 2 and source.received == 3 + 1


def test_sequence_restart_is_reported() -> None:
    source = RtpSource(8000)
    _feed(source, 9, range(10))
    assert source.receive(9, 30000, 0, 1.0) is Arrival.STRAY
    assert source.receive(9, 30001, 160, 1.02) is Arrival.RESTART
    assert source.restarts == 1 and source.received == 11


def test_jitter_is_zero_for_a_perfectly_paced_stream() -> None:
    source = RtpSource(8000)
    _feed(source, 1, range(65500, 65700), t0=12345.0)
    assert source.jitter == pytest.approx(0.0, abs=1e-6)


def test_jitter_follows_rfc_3550_a8() -> None:
    source = RtpSource(8000)
    delay = 0.004  # every other packet 4 ms late: |D| = 32 units on every packet
    for i in range(400):
        source.receive(1, i, i * 160, i * 0.02 + (delay if i % 2 else 0.0))
    assert source.jitter == pytest.approx(delay * 8000, rel=1e-6)
    assert source.jitter_seconds == pytest.approx(delay, rel=1e-6)
    # A single 10 ms hiccup in a steady stream moves J by |D|/16, then by the rebound.
    steady = RtpSource(8000)
    steady.receive(1, 0, 0, 0.0)
    steady.receive(1, 1, 160, 0.03)
    assert steady.jitter == pytest.approx(80 / 16)
    steady.receive(1, 2, 320, 0.04)
    assert steady.jitter == pytest.approx(80 / 16 + (80 - 80 / 16) / 16)


def test_event_packets_do_not_feed_jitter() -> None:
    source = RtpSource(8000)
    for i in range(20):  # RFC 4733 packets repeat their start timestamp every 20 ms
        source.receive(1, i, 800, i * 0.02, audio=False)
    assert source.jitter == 0.0 and source.received == 20
