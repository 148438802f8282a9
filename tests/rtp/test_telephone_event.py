"""RFC 4733 telephone-events: SIPp's captures, exactly-once key presses, the encoder."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.packet import RtpError, RtpPacket
from rtp.telephone_event import (
    EVENT_DIGITS,
    MAX_DURATION,
    EventPacket,
    KeyDown,
    KeyEvent,
    KeyUp,
    TelephoneEvent,
    TelephoneEventReceiver,
    digit_for_event,
    encode_key_press,
    event_for_digit,
    parse_events,
)
from tests.rtp.pcap import SIPP_CAPTURES, read_udp

CAPTURES = {
    **{str(d): f"dtmf_2833_{d}.pcap" for d in range(10)},
    "*": "dtmf_2833_star.pcap",
    "#": "dtmf_2833_pound.pcap",
}
needs_sipp = pytest.mark.skipif(
    not (SIPP_CAPTURES / "dtmf_2833_1.pcap").exists(), reason="SIPp captures missing"
)

PT = 101
SSRC = 0x1234


def _presses(events: list[KeyEvent]) -> list[tuple[str | None, int]]:
    """(digit, duration) for every completed press, checking downs and ups pair up."""
    downs = [e for e in events if isinstance(e, KeyDown)]
    ups = [e for e in events if isinstance(e, KeyUp)]
    assert [d.timestamp for d in downs] == [u.timestamp for u in ups]
    return [(u.digit, u.duration) for u in ups]


def _rtp(packets: list[EventPacket], first_seq: int = 100, ssrc: int = SSRC) -> list[RtpPacket]:
    return [
        RtpPacket(PT, (first_seq + i) & 0xFFFF, p.timestamp, ssrc, p.payload, p.marker)
        for i, p in enumerate(packets)
    ]


def _feed(
    receiver: TelephoneEventReceiver, packets: list[RtpPacket], t0: float = 0.0
) -> list[KeyEvent]:
    events: list[KeyEvent] = []
    for i, packet in enumerate(packets):
        events += receiver.receive(packet, t0 + 0.02 * i)
    return events


# --- SIPp's RFC 2833 captures -----------------------------------------------------------------


@needs_sipp
@pytest.mark.parametrize(("digit", "name"), sorted(CAPTURES.items()))
def test_sipp_capture_is_exactly_one_press_of_its_digit(digit: str, name: str) -> None:
    datagrams = list(read_udp(SIPP_CAPTURES / name))
    receiver = TelephoneEventReceiver()
    events: list[KeyEvent] = []
    reports = []
    for datagram in datagrams:
        packet = RtpPacket.parse(datagram.payload)
        assert bytes(packet) == datagram.payload
        assert packet.payload_type == PT
        reports.append(TelephoneEvent.parse(packet.payload))
        assert bytes(reports[-1]) == packet.payload
        events += receiver.receive(packet, datagram.time)
    # Several packets, one timestamp, growing durations, the End report three times...
    assert len(datagrams) >= 5 and [r.end for r in reports].count(True) == 3
    # ...and exactly one key press, as long as the End report says.
    final = max(r.duration for r in reports)
    assert _presses(events) == [(digit, final)]
    assert isinstance(events[-1], KeyUp) and events[-1].reason == "end"
    assert receiver.get_timer() is None
    assert receiver.handle_timer(datagrams[-1].time + 10) == []


# --- the payload ------------------------------------------------------------------------------


def test_digits_map_both_ways() -> None:
    for event, digit in enumerate("0123456789*#ABCD"):
        assert digit_for_event(event) == digit and event_for_digit(digit) == event
    assert event_for_digit("a") == 12
    assert digit_for_event(16) == "F" and event_for_digit("F") == 16  # flash
    assert digit_for_event(17) is None and digit_for_event(36) is None
    with pytest.raises(ValueError, match="digit"):
        event_for_digit("x")


def test_payload_fields() -> None:
    report = TelephoneEvent.parse(bytes([11, 0x80 | 0x40 | 7, 0x03, 0x20]))
    assert report == TelephoneEvent(11, end=True, volume=7, duration=800)
    assert report.digit == "#"
    assert bytes(report) == bytes([11, 0x80 | 7, 0x03, 0x20])  # reserved bit sent as 0


@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_payload_round_trips(event: int, end: bool, volume: int, duration: int) -> None:
    report = TelephoneEvent(event, end, volume, duration)
    assert TelephoneEvent.parse(bytes(report)) == report
    assert parse_events(bytes(report) * 3) == [report] * 3


@pytest.mark.parametrize("size", [0, 1, 3, 5, 7])
def test_malformed_payload_raises_rtp_error(size: int) -> None:
    with pytest.raises(RtpError, match="multiple of 4"):
        TelephoneEvent.parse(b"\x01" * size)
    with pytest.raises(RtpError, match="multiple of 4"):
        TelephoneEventReceiver().receive(RtpPacket(PT, 1, 2, 3, b"\x01" * size), 0.0)


@given(st.binary(max_size=24))
def test_random_payloads_parse_or_raise_rtp_error(payload: bytes) -> None:
    try:
        reports = parse_events(payload)
    except RtpError:
        return
    # Accepted payloads re-serialise to the same bytes, reserved bits cleared.
    cleared = bytes(b & 0xBF if i % 4 == 1 else b for i, b in enumerate(payload))
    assert b"".join(bytes(r) for r in reports) == cleared


@pytest.mark.parametrize(
    "report", [TelephoneEvent(256), TelephoneEvent(1, volume=64), TelephoneEvent(1, duration=-1)]
)
def test_impossible_fields_do_not_serialise(report: TelephoneEvent) -> None:
    with pytest.raises(ValueError):
        bytes(report)


# --- the encoder ------------------------------------------------------------------------------


def test_encoder_packets_follow_rfc_4733() -> None:
    packets = encode_key_press("5", 1000, 800, ptime_samples=160, volume=12)
    reports = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [p.marker for p in packets] == [True] + [False] * (len(packets) - 1)
    assert {p.timestamp for p in packets} == {1000}
    assert [r.duration for r in reports] == [160, 320, 480, 640, 800, 800, 800]
    assert [r.end for r in reports] == [False] * 4 + [True] * 3
    assert [p.end for p in packets] == [r.end for r in reports]
    assert {(r.event, r.volume) for r in reports} == {(5, 12)}


def test_encoder_splits_long_events_into_segments() -> None:
    duration = 2 * MAX_DURATION + 500
    packets = encode_key_press("0", 0xFFFFFF00, duration, ptime_samples=400)
    reports = [TelephoneEvent.parse(p.payload) for p in packets]
    starts = list(dict.fromkeys(p.timestamp for p in packets))
    # Three segments, each starting where the previous one's 0xFFFF ended (across the wrap).
    assert starts == [(0xFFFFFF00 + k * MAX_DURATION) & 0xFFFFFFFF for k in range(3)]
    assert max(r.duration for r in reports) == MAX_DURATION
    assert [r.duration for r, p in zip(reports, packets, strict=True) if p.end] == [500] * 3
    assert sum(p.marker for p in packets) == 1


@pytest.mark.parametrize(("digit", "duration", "ptime"), [("1", 0, 160), ("1", 160, 0)])
def test_encoder_rejects_empty_presses(digit: str, duration: int, ptime: int) -> None:
    with pytest.raises(ValueError):
        encode_key_press(digit, 0, duration, ptime)


@settings(max_examples=150)
@given(
    st.sampled_from(EVENT_DIGITS),
    st.integers(0, 0xFFFFFFFF),
    st.integers(1, 3 * MAX_DURATION),
    st.sampled_from([80, 160, 240, 320, 480, 960]),
    st.integers(0, 0xFFFF),
)
def test_encoded_press_is_received_as_exactly_one_press(
    digit: str, start: int, duration: int, ptime: int, seq: int
) -> None:
    receiver = TelephoneEventReceiver()
    events = _feed(receiver, _rtp(encode_key_press(digit, start, duration, ptime), seq))
    assert _presses(events) == [(digit, duration)]
    assert events[0] == KeyDown(digit, event_for_digit(digit), start, 10)
    assert isinstance(events[-1], KeyUp) and events[-1].reason == "end"


# --- exactly once, whatever the network did -----------------------------------------------------


def test_consecutive_presses_of_the_same_digit_are_two_presses() -> None:
    first = encode_key_press("7", 8000, 800)
    second = encode_key_press("7", 8000 + 1600, 640)
    events = _feed(TelephoneEventReceiver(), _rtp(first + second))
    assert _presses(events) == [("7", 800), ("7", 640)]


@given(st.integers(1, 10), st.integers(0, 0xFFFF))
def test_lost_start_packets_still_give_one_press(lost: int, seq: int) -> None:
    packets = _rtp(encode_key_press("9", 5000, 1600), seq)
    events = _feed(TelephoneEventReceiver(), packets[lost:])
    assert _presses(events) == [("9", 1600)]


def test_lost_end_packets_end_the_press_on_timeout() -> None:
    packets = _rtp(encode_key_press("3", 0, 1600))[:-3]  # all three End reports lost
    receiver = TelephoneEventReceiver(timeout=0.5)
    events = _feed(receiver, packets, t0=100.0)
    assert [type(e) for e in events] == [KeyDown]
    last_at = 100.0 + 0.02 * (len(packets) - 1)
    assert receiver.get_timer() == pytest.approx(last_at + 0.5)
    assert receiver.handle_timer(last_at + 0.4) == []
    (up,) = receiver.handle_timer(last_at + 0.5)
    assert isinstance(up, KeyUp) and up.reason == "timeout" and up.digit == "3"
    assert up.duration == TelephoneEvent.parse(packets[-1].payload).duration
    assert receiver.get_timer() is None and receiver.handle_timer(last_at + 9) == []
    # The End reports turning up after all do not report the press again.
    late = _rtp(encode_key_press("3", 0, 1600))[-3:]
    assert _feed(receiver, late, t0=last_at + 1) == []


def test_a_new_press_ends_one_whose_end_packets_were_lost() -> None:
    first = _rtp(encode_key_press("1", 0, 800))[:-3]
    second = _rtp(encode_key_press("2", 2400, 800), first_seq=200)
    events = _feed(TelephoneEventReceiver(), first + second)
    assert _presses(events) == [("1", 640), ("2", 800)]
    assert [e.reason for e in events if isinstance(e, KeyUp)] == ["next-event", "end"]


def test_only_end_packets_seen_is_still_one_press() -> None:
    packets = _rtp(encode_key_press("#", 0, 960))[-3:]
    events = _feed(TelephoneEventReceiver(), packets)
    assert _presses(events) == [("#", 960)]


@given(st.randoms(use_true_random=False), st.integers(0, 0xFFFF))
def test_reordered_packets_give_one_press_per_key(rng: random.Random, seq: int) -> None:
    packets = _rtp(
        encode_key_press("4", 0, 1200) + encode_key_press("8", 4000, 1200), first_seq=seq
    )
    # Reorder within a window of three packets, as a network path might.
    shuffled: list[RtpPacket] = []
    for i in range(0, len(packets), 3):
        window = packets[i : i + 3]
        rng.shuffle(window)
        shuffled += window
    events = _feed(TelephoneEventReceiver(), shuffled)
    digits = [e.digit for e in events if isinstance(e, KeyDown)]
    assert digits == ["4", "8"]
    assert [d for d, _ in _presses(events)] == ["4", "8"]


def test_late_packet_of_an_old_press_is_not_a_new_press() -> None:
    first = _rtp(encode_key_press("1", 0, 800))
    second = _rtp(encode_key_press("2", 2400, 800), first_seq=200)
    receiver = TelephoneEventReceiver()
    events = _feed(receiver, first + second[:2])
    events += receiver.receive(first[1], 0.5)  # a straggler of the "1"
    events += _feed(receiver, second[2:], t0=0.6)
    assert _presses(events) == [("1", 800), ("2", 800)]
    assert receiver.presses == 2 and receiver.ignored >= 3


def test_sender_timestamp_reset_with_newer_sequence_is_a_new_press() -> None:
    first = _rtp(encode_key_press("1", 90000, 800), first_seq=10)
    second = _rtp(encode_key_press("1", 400, 800), first_seq=40)
    assert _presses(_feed(TelephoneEventReceiver(), first + second)) == [("1", 800), ("1", 800)]


def test_ssrc_change_ends_the_press_and_resets_ordering() -> None:
    first = _rtp(encode_key_press("6", 90000, 1600))[:3]
    second = _rtp(encode_key_press("6", 10, 800), first_seq=5, ssrc=0x9999)
    events = _feed(TelephoneEventReceiver(), first + second)
    assert _presses(events) == [("6", 480), ("6", 800)]
    assert [e.reason for e in events if isinstance(e, KeyUp)] == ["new-source", "end"]


def test_long_press_is_one_press_with_its_whole_duration() -> None:
    ten_seconds = 80000  # more than 0xFFFF: two segments on the wire
    packets = _rtp(encode_key_press("0", 123, ten_seconds))
    assert len({p.timestamp for p in packets}) == 2
    receiver = TelephoneEventReceiver()
    events = _feed(receiver, packets)
    assert _presses(events) == [("0", ten_seconds)]
    assert receiver.presses == 1


def test_unknown_event_codes_are_reported_without_a_digit() -> None:
    events = _feed(TelephoneEventReceiver(), _rtp(encode_key_press(36, 0, 4000)))  # fax CNG
    down, up = events
    assert isinstance(down, KeyDown) and down.digit is None and down.event == 36
    assert isinstance(up, KeyUp) and up.digit is None and up.duration == 4000


def test_several_events_in_one_packet() -> None:
    ended = TelephoneEvent(1, end=True, volume=10, duration=800)
    ongoing = TelephoneEvent(2, end=False, volume=10, duration=160)
    receiver = TelephoneEventReceiver()
    events = receiver.receive(RtpPacket(PT, 1, 1000, SSRC, bytes(ended) + bytes(ongoing)), 0.0)
    # The "2" started where the "1" ended; its own packets then carry that timestamp.
    durations = [320, 480, 640, 800, 800, 800]
    rest = [
        RtpPacket(PT, 2 + i, 1800, SSRC, bytes(TelephoneEvent(2, i >= 3, 10, d)))
        for i, d in enumerate(durations)
    ]
    events += _feed(receiver, rest, t0=0.02)
    assert _presses(events) == [("1", 800), ("2", 800)]
    assert receiver.presses == 2
