"""RFC 4733 telephone-events: the 4-byte payload, key presses received, key presses sent.

Owns: the telephone-event payload format (`TelephoneEvent`, `parse_events`),
the event-code/digit mapping, turning a leg's stream of event packets into
key presses reported exactly once (`TelephoneEventReceiver`, which emits
`KeyDown` and `KeyUp`), and the packets a sender emits for one key press
(`encode_key_press`).

Must not: touch sockets, read the clock (``now`` comes in, in seconds),
log, assign RTP sequence numbers (the sender's RTP stream does), or detect
in-band tones (``dsp/`` does).

Digits: events 0-9 are "0"-"9", 10 "*", 11 "#", 12-15 "A"-"D", and 16 (flash)
is "F", as FreeSWITCH spells it. Other event codes (modem, fax and line
events) are reported with ``digit=None`` and their code in ``event``.

Durations are in RTP timestamp units of the telephone-event clock (8000 per
second for telephone-event/8000), as RFC 4733 and jambonz's ``passDtmf``
(which wants it as a string) count them.

Malformed payloads raise `rtp.packet.RtpError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal, NamedTuple

from rtp.packet import RtpError, RtpPacket, seq_diff, ts_diff

__all__ = [
    "EVENT_DIGITS",
    "FLASH",
    "MAX_DURATION",
    "EventPacket",
    "KeyDown",
    "KeyEvent",
    "KeyUp",
    "KeyUpReason",
    "TelephoneEvent",
    "TelephoneEventReceiver",
    "digit_for_event",
    "encode_key_press",
    "event_for_digit",
    "parse_events",
]

EVENT_DIGITS = "0123456789*#ABCDF"
"""Key for each DTMF event code 0-16 (16 is flash, spelled "F")."""
FLASH = 16
MAX_DURATION = 0xFFFF
"""Largest duration one event report can carry; longer events are split into segments."""

_BLOCK = struct.Struct("!BBH")


def digit_for_event(event: int) -> str | None:
    """The digit an event code stands for, or None for codes that are not DTMF keys."""
    return EVENT_DIGITS[event] if 0 <= event <= FLASH else None


def event_for_digit(digit: str) -> int:
    """The event code for a digit: "0"-"9", "*", "#", "A"-"D" (either case), "F" for flash."""
    index = EVENT_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"not a telephone-event digit: {digit!r}; expected one of {EVENT_DIGITS}")
    return index


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One event report: the 4-byte block of RFC 4733 section 2.3.

    ``volume`` is the power in -dBm0 (0-63, DTMF only); ``duration`` the
    time since the event (segment) began, in timestamp units. The reserved
    R bit is ignored on receive and sent as 0.
    """

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @property
    def digit(self) -> str | None:
        return digit_for_event(self.event)

    @classmethod
    def parse(cls, payload: bytes | bytearray | memoryview) -> TelephoneEvent:
        """The first event report of a payload (the only one in nearly every packet)."""
        size = len(payload)
        if size < 4 or size % 4:
            raise RtpError(
                f"telephone-event payload must be a non-empty multiple of 4 bytes, got {size}"
            )
        event, flags, duration = _BLOCK.unpack_from(payload)
        return cls(event, flags > 127, flags & 0x3F, duration)

    def __bytes__(self) -> bytes:
        if not 0 <= self.volume <= 63:
            raise ValueError(f"volume must be 0..63 (-dBm0), got {self.volume}")
        try:
            return _BLOCK.pack(
                self.event, 0x80 | self.volume if self.end else self.volume, self.duration
            )
        except struct.error:
            raise ValueError(
                f"event must be 0..255 and duration 0..65535, got {self.event}, {self.duration}"
            ) from None


def parse_events(payload: bytes | bytearray | memoryview) -> list[TelephoneEvent]:
    """Every event report in a payload, in order (RFC 4733 section 2.5.1.5 packing).

    A sender may pack several reports into one packet: all but the last are
    events that have ended, and we read them as contiguous in time, the
    first starting at the packet's timestamp and each next one at the
    previous start plus its duration (`TelephoneEventReceiver` does so).
    """
    size = len(payload)
    if size < 4 or size % 4:
        raise RtpError(
            f"telephone-event payload must be a non-empty multiple of 4 bytes, got {size}"
        )
    return [
        TelephoneEvent(event, flags > 127, flags & 0x3F, duration)
        for event, flags, duration in _BLOCK.iter_unpack(payload)
    ]


KeyUpReason = Literal["end", "timeout", "next-event", "new-source"]


@dataclass(frozen=True, slots=True)
class KeyDown:
    """A key press began: reported once, at the first packet seen for it."""

    digit: str | None
    """"0"-"9", "*", "#", "A"-"D" or "F" (flash); None for a non-key event code."""
    event: int
    timestamp: int
    """RTP timestamp of the press (of its first segment seen)."""
    volume: int


@dataclass(frozen=True, slots=True)
class KeyUp:
    """A key press ended: reported once, with the press's whole duration.

    ``reason`` says how we know: "end" (an End-bit report arrived),
    "timeout" (no report for ``timeout`` seconds: the End packets were
    lost), "next-event" (a report of a newer press arrived first) or
    "new-source" (the sender's SSRC changed). ``duration`` is in timestamp
    units: the last reported duration, plus 0xFFFF per earlier segment of a
    long event; for an end other than "end" it is the longest duration seen.
    """

    digit: str | None
    event: int
    timestamp: int
    duration: int
    volume: int
    reason: KeyUpReason


KeyEvent = KeyDown | KeyUp


class _Press:
    """The key press being received (mutable, internal)."""

    __slots__ = ("event", "last_at", "prior", "segment", "segment_ts", "timestamp", "volume")

    def __init__(self, report: TelephoneEvent, timestamp: int, now: float) -> None:
        self.event = report.event
        self.volume = report.volume
        self.timestamp = timestamp
        self.segment_ts = timestamp
        self.prior = 0  # duration of the earlier, full segments of a long event
        self.segment = report.duration
        self.last_at = now


class TelephoneEventReceiver:
    """Turns one leg's telephone-event packets into key presses, each reported once.

    A sender reports one press as several packets sharing one RTP
    timestamp (the first usually with the marker bit), with growing
    durations, then the final report with the End bit, sent three times.
    For each press the receiver emits exactly one `KeyDown` (at the first
    packet seen for it, even if that is mid-event or already an End) and
    exactly one `KeyUp` (see its ``reason``). The rules:

    - the RTP timestamp identifies the press; more reports with the same
      timestamp update its duration, and any after its `KeyUp` (the End
      retransmissions, late packets) are ignored;
    - a report with an older timestamp is a late packet of an old press and
      is ignored, unless its sequence number is newer than any seen (the
      sender reset its timestamps), which makes it a new press;
    - a long event (section 2.5.1.3) continues in a new segment whose
      timestamp is the previous segment's plus 0xFFFF, same event, no
      marker: that continues the same press;
    - with no report for ``timeout`` seconds the press ends ("timeout").
      Drive this with `get_timer` / `handle_timer`; `receive` also applies
      an expired timeout before it looks at a packet.

    Feed it only the packets whose payload type is telephone-event.
    """

    def __init__(self, *, timeout: float = 0.5) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.presses = 0
        """Key presses reported (KeyDown events)."""
        self.ignored = 0
        """Reports ignored: retransmissions and late packets of presses already reported."""
        self._ssrc: int | None = None
        self._press: _Press | None = None
        self._last_ts: int | None = None
        self._last_seq: int | None = None

    def receive(self, packet: RtpPacket, now: float) -> list[KeyEvent]:
        """Account for one telephone-event packet; raise `RtpError` on a malformed payload."""
        reports = parse_events(packet.payload)
        if len(reports) == 1:
            return self.receive_report(
                reports[0], packet.timestamp, packet.sequence, packet.ssrc, now, packet.marker
            )
        events: list[KeyEvent] = []
        timestamp = packet.timestamp
        for index, report in enumerate(reports):
            events += self.receive_report(
                report, timestamp, packet.sequence, packet.ssrc, now, packet.marker and not index
            )
            timestamp = (timestamp + report.duration) & 0xFFFFFFFF
        return events

    def receive_report(
        self,
        report: TelephoneEvent,
        timestamp: int,
        sequence: int,
        ssrc: int,
        now: float,
        marker: bool = False,
    ) -> list[KeyEvent]:
        """Account for one event report already parsed from a packet with these header fields."""
        events: list[KeyEvent] = []
        press = self._press
        if press is not None and now - press.last_at >= self.timeout:
            self._finish(events, "timeout")
            press = None
        if ssrc != self._ssrc:
            if press is not None:
                self._finish(events, "new-source")
                press = None
            self._ssrc = ssrc
            self._last_ts = self._last_seq = None
        last_ts, last_seq = self._last_ts, self._last_seq
        if last_seq is None or seq_diff(sequence, last_seq) > 0:
            self._last_seq = sequence
        if last_ts is not None:
            age = ts_diff(timestamp, last_ts)
            if age == 0:
                if press is None:  # End retransmission or late report of a finished press
                    self.ignored += 1
                    return events
                press.last_at = now
                if report.duration > press.segment:
                    press.segment = report.duration
                if report.end:
                    self._finish(events, "end")
                return events
            if age < 0 and (last_seq is None or seq_diff(sequence, last_seq) <= 0):
                self.ignored += 1  # a late packet of an older press
                return events
            if (
                press is not None
                and age == MAX_DURATION
                and report.event == press.event
                and not marker
            ):  # the next segment of a long event
                press.prior += MAX_DURATION
                press.segment_ts = timestamp
                press.segment = report.duration
                press.last_at = now
                self._last_ts = timestamp
                if report.end:
                    self._finish(events, "end")
                return events
        if press is not None:
            self._finish(events, "next-event")
        press = self._press = _Press(report, timestamp, now)
        self._last_ts = timestamp
        self.presses += 1
        events.append(
            KeyDown(digit_for_event(report.event), report.event, timestamp, report.volume)
        )
        if report.end:
            self._finish(events, "end")
        return events

    def get_timer(self) -> float | None:
        """When `handle_timer` next has something to do (seconds, same clock as ``now``)."""
        press = self._press
        return None if press is None else press.last_at + self.timeout

    def handle_timer(self, now: float) -> list[KeyEvent]:
        """End a press whose reports stopped ``timeout`` seconds ago (its End packets were lost)."""
        events: list[KeyEvent] = []
        press = self._press
        if press is not None and now - press.last_at >= self.timeout:
            self._finish(events, "timeout")
        return events

    def _finish(self, events: list[KeyEvent], reason: KeyUpReason) -> None:
        press = self._press
        assert press is not None
        self._press = None
        events.append(
            KeyUp(
                digit_for_event(press.event),
                press.event,
                press.timestamp,
                press.prior + press.segment,
                press.volume,
                reason,
            )
        )


class EventPacket(NamedTuple):
    """One RTP packet a sender emits for a key press (it adds sequence number and SSRC)."""

    marker: bool
    timestamp: int
    payload: bytes
    end: bool


def encode_key_press(
    digit: str | int,
    start_timestamp: int,
    duration_samples: int,
    ptime_samples: int = 160,
    volume: int = 10,
) -> list[EventPacket]:
    """The packets for one key press, in sending order.

    Send one per ``ptime_samples`` tick (a segment boundary adds one; the
    End retransmissions may go in consecutive ticks or back to back).

    The first has the marker bit and reports ``ptime_samples`` of duration;
    each next one reports ``ptime_samples`` more, up to ``duration_samples``
    in a report with the End bit, which is sent three times in all (RFC 4733
    section 2.5.1.4). A press longer than 0xFFFF units is split into
    segments (section 2.5.1.3): a report of exactly 0xFFFF without End, then
    reports timestamped 0xFFFF later with the duration counted afresh, and
    no marker. ``digit`` is "0"-"9", "*", "#", "A"-"D", "F" or an
    event code 0-255.
    """
    event = event_for_digit(digit) if isinstance(digit, str) else digit
    if not 0 <= event <= 255:
        raise ValueError(f"event code must be 0..255, got {event}")
    if duration_samples <= 0 or ptime_samples <= 0:
        raise ValueError(
            f"duration and ptime must be positive, got {duration_samples}, {ptime_samples}"
        )
    if not 0 <= volume <= 63:
        raise ValueError(f"volume must be 0..63 (-dBm0), got {volume}")
    packets: list[EventPacket] = []
    segment_ts = start_timestamp & 0xFFFFFFFF
    segment_start = 0  # elapsed time at which the current segment began
    elapsed = 0
    while elapsed < duration_samples:
        elapsed = min(elapsed + ptime_samples, duration_samples)
        while elapsed - segment_start > MAX_DURATION:
            packets.append(
                EventPacket(
                    not packets,
                    segment_ts,
                    bytes(TelephoneEvent(event, False, volume, MAX_DURATION)),
                    False,
                )
            )
            segment_start += MAX_DURATION
            segment_ts = (segment_ts + MAX_DURATION) & 0xFFFFFFFF
        end = elapsed == duration_samples
        report = TelephoneEvent(event, end, volume, elapsed - segment_start)
        packets.append(EventPacket(not packets, segment_ts, bytes(report), end))
    final = packets[-1]
    packets += [final._replace(marker=False)] * 2
    return packets
