"""The media engine: one clock per process, every live leg processed as a batch.

Owns the per-tick media work for all call legs: play out one frame from
every leg's jitter buffer, decode all legs of a codec in one call, conceal
lost frames, detect in-band DTMF (one detector call per sample rate), take
RFC 4733 key presses from the telephone-event receivers, build what each
caller hears (playback, or silence) and send it as RTP at the leg's ptime,
and hand read/write audio to the listeners attached to a leg (forks,
recorders) at the rate each one asked for, resampled in one call per rate
pair.

``MediaEngine.tick(now)`` is synchronous and takes the media time in
seconds, so tests drive it directly; ``EngineClock`` is the thin asyncio
driver that calls it on an absolute schedule (``loop.call_at``), counts
overruns and catches up instead of skipping ticks.

The per-leg Python work left on the hot path is what cannot be batched: one
jitter-buffer pop and one datagram send per leg per tick (and a decode or
encode call for stateful codecs: G.722, Opus).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol, cast

import numpy as np
from numpy.typing import NDArray

from dsp.codecs import Codec, CodecError, Decoder, Encoder, get_codec
from dsp.conceal import LossConcealer
from dsp.dtmf import DtmfDetector
from dsp.dtmf import KeyDown as InbandKeyDown
from dsp.mix import MixType, mix, saturating_sum
from dsp.resample import SUPPORTED_RATES, Resampler, to_int16
from dsp.silence import SilenceDetector, SilenceExpiry
from mediaserver.logs import get_logger
from rtp.jitter import FrameStatus, JitterBuffer
from rtp.packet import RtpError, RtpPacket, build_packet, is_rtcp, parse_header
from rtp.telephone_event import KeyDown as RtpKeyDown
from rtp.telephone_event import KeyEvent, TelephoneEventReceiver, encode_key_press

__all__ = [
    "DtmfKey",
    "EngineClock",
    "FrameListener",
    "Leg",
    "LegBridge",
    "LegListener",
    "LegStats",
    "MediaEngine",
    "PcmSource",
    "Playback",
]

TICK_MS = 20
log = get_logger("engine")
_SILENCE_BYTE = {"PCMU": b"\xff", "PCMA": b"\xd5"}


@dataclass(frozen=True, slots=True)
class DtmfKey:
    """A key press on a leg, reported at key-down (``ended=False``) and key-up."""

    digit: str
    source: Literal["rfc4733", "inband"]
    ended: bool
    duration: int = 0  # 8 kHz timestamp units, known at key-up


class PcmSource(Protocol):
    """A stream of PCM at a leg's rate: ``read(n)`` returns exactly ``n`` int16 samples."""

    def read(self, n: int) -> NDArray[np.int16]: ...


class FrameListener(Protocol):
    """A fork: wants each tick already mixed (``mix_type``) as L16 little-endian bytes.

    The engine mixes all forks of one rate and mix type in one call.
    """

    sample_rate: int
    mix_type: MixType

    def on_frame(self, data: bytes) -> None: ...


class LegListener(Protocol):
    """A consumer of a leg's audio, called once per tick at its ``sample_rate``.

    ``read`` is what the far end of the leg says, ``write`` what it hears;
    both int16 mono of one tick. Must return quickly and never block.
    """

    sample_rate: int

    def on_audio(self, read: NDArray[np.int16], write: NDArray[np.int16]) -> None: ...


@dataclass(slots=True)
class LegStats:
    datagrams: int = 0
    malformed: int = 0  # dropped: not RTP
    rtcp: int = 0  # RTCP on the RTP port (counted, not processed)
    unknown_payload_type: int = 0
    dtmf_rfc4733: int = 0
    dtmf_inband: int = 0
    frames_lost: int = 0  # frames concealed after packet loss
    packets_sent: int = 0


class LegBridge:
    """A ``PcmSource`` that is what another leg's far end says (a bridged call).

    It reads the other leg's latest decoded frame (at most one tick old: the
    engine processes codec groups in turn) and resamples it when the two legs
    run at different rates, e.g. a G.722 caller bridged to a PCMU callee.
    """

    def __init__(self, source: Leg, rate: int) -> None:
        self.source = source
        self.rate = rate
        source.feeds_bridge = True
        self._rs = Resampler(1, source.sample_rate, rate) if source.sample_rate != rate else None

    def read(self, n: int) -> NDArray[np.int16]:
        frame = self.source.last_read
        if frame is None:
            return np.zeros(n, np.int16)
        if self._rs is not None:
            frame = self._rs.process_int16(frame[None, :])[0]
        if frame.shape[0] != n:
            out = np.zeros(n, np.int16)
            m = min(n, frame.shape[0])
            out[:m] = frame[:m]
            return out
        return frame


class Playback:
    """What a leg plays to its far end: a queue of PCM items at the leg's rate.

    Each item may carry a callback fired (from the engine tick) when it has
    been played completely; ``clear`` drops everything without callbacks
    and returns how many items were dropped.
    """

    def __init__(self) -> None:
        self._items: deque[tuple[NDArray[np.int16], Callable[[], None] | None]] = deque()
        self._pos = 0

    def __len__(self) -> int:
        return len(self._items)

    def enqueue(self, pcm: NDArray[np.int16], on_done: Callable[[], None] | None = None) -> None:
        self._items.append((np.ascontiguousarray(pcm, dtype=np.int16), on_done))

    def clear(self) -> int:
        n = len(self._items)
        self._items.clear()
        self._pos = 0
        return n

    def read_into(self, out: NDArray[np.int16]) -> list[Callable[[], None]]:
        """Fill ``out`` (zeros where nothing is queued); return the finished callbacks."""
        done: list[Callable[[], None]] = []
        filled = 0
        n = out.shape[0]
        while filled < n and self._items:
            pcm, cb = self._items[0]
            take = min(n - filled, pcm.shape[0] - self._pos)
            out[filled : filled + take] = pcm[self._pos : self._pos + take]
            filled += take
            self._pos += take
            if self._pos >= pcm.shape[0]:
                self._items.popleft()
                self._pos = 0
                if cb is not None:
                    done.append(cb)
        out[filled:] = 0
        return done


class Leg:
    """One RTP audio stream of a call, as the engine sees it.

    Receive side: ``receive_datagram`` parses each datagram (malformed ones
    are dropped and counted), routes audio to the jitter buffer and
    telephone-event packets to the RFC 4733 receiver. Send side: whatever is
    queued on ``playback`` (else silence) is encoded and handed to ``send``
    every ``ptime_ms``; ``send`` is None while the leg must not send (hold,
    recvonly). Key presses, from RFC 4733 or detected in-band, go to every
    handler in ``dtmf_handlers``; silence timers (``MediaEngine.add_silence_watch``,
    any number per leg) live in ``silence_watches``.
    """

    def __init__(
        self,
        *,
        call_sid: str,
        codec: str,
        payload_type: int,
        ptime_ms: int = 20,
        telephone_event_pt: int | None = None,
        send: Callable[[bytes], None] | None = None,
        inband_dtmf: bool = True,
        ssrc: int | None = None,
        jitter_target: float = 0.04,
    ) -> None:
        self.call_sid = call_sid
        self.codec: Codec = get_codec(codec)
        info = self.codec.info
        if ptime_ms % 10 or ptime_ms <= 0:
            raise ValueError(f"ptime: must be a positive multiple of 10 ms, got {ptime_ms}")
        self.payload_type = payload_type
        self.telephone_event_pt = telephone_event_pt
        self.ptime_ms = ptime_ms
        self.sample_rate = info.sample_rate
        self.frame_samples = info.samples_per_frame(TICK_MS)
        self.send = send
        self.inband_dtmf = inband_dtmf
        self.dtmf_handlers: list[Callable[[Leg, DtmfKey], None]] = []
        self.silence_watches: list[SilenceWatch] = []
        self._default_watch: SilenceWatch | None = None  # watch_silence's
        self.listeners: list[LegListener | FrameListener] = []
        self.playback = Playback()
        # What else this leg's far end hears besides playback, mixed in each tick:
        # the other party when bridged (the B leg of dial, the callee of a simulated
        # call). ``read(n)`` returns n samples at the leg's rate.
        self.heard: PcmSource | None = None
        self.last_read: NDArray[np.int16] | None = None  # the latest decoded frame
        self.feeds_bridge = False  # a LegBridge hears this leg: keep last_read fresh
        self.stats = LegStats()
        self.last_packet_at: float | None = None
        self.slot = -1
        packet_mode = self.codec.batch is None and info.name.lower() == "opus"
        bytes_per_unit = None if packet_mode else (2 if info.name.upper() == "L16" else 1)
        fill = _SILENCE_BYTE.get(info.name.upper(), b"\x00" * (bytes_per_unit or 1))
        self.jitter = JitterBuffer(
            clock_rate=info.clock_rate,
            frame_units=info.timestamp_increment(TICK_MS),
            bytes_per_unit=bytes_per_unit,
            fill=fill if bytes_per_unit else b"\x00",
            packet_units=info.timestamp_increment(ptime_ms),
            target_delay=jitter_target,
        )
        self.events = TelephoneEventReceiver()
        self._decoder: Decoder | None = None if self.codec.batch else self.codec.new_decoder()
        self._decoded: deque[NDArray[np.int16]] = deque()  # packet-mode PCM carry-over
        self._decoded_len = 0
        self._encoder: Encoder | None = (
            None if self.codec.batch else self.codec.new_encoder(ptime_ms)
        )
        # per-packet sizes, computed once: the send path runs for every leg every tick
        self._packet_samples = info.samples_per_frame(ptime_ms)
        self._packet_units = info.timestamp_increment(ptime_ms)
        self._tick_units = info.timestamp_increment(TICK_MS)
        self._send_bytes = bytearray()  # encoded audio not yet sent (batch codecs)
        self._send_pcm: NDArray[np.int16] = np.zeros(0, dtype=np.int16)  # stateful codecs
        # RFC 3550: random SSRC, initial sequence number and timestamp
        self._ssrc = ssrc if ssrc is not None else secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._marker = True
        self._pending_keys: list[DtmfKey] = []
        self._dtmf_out: list[tuple[bytes, int, bool]] = []

    # -- receive side (called from the socket callback) -------------------------

    def receive_datagram(self, data: bytes, now: float) -> None:
        stats = self.stats
        stats.datagrams += 1
        try:
            pt, marker, seq, ts, ssrc, lo, hi = parse_header(data)
        except RtpError:
            if is_rtcp(data):  # e.g. a short RTCP packet
                stats.rtcp += 1
            else:
                stats.malformed += 1
            return
        if marker and 64 <= pt <= 95:  # second octet 192-223: RTCP (= is_rtcp, RFC 5761)
            stats.rtcp += 1
            return
        self.last_packet_at = now
        if pt == self.payload_type:
            self.jitter.push(ssrc, seq, ts, marker, data[lo:hi], now)
        elif pt == self.telephone_event_pt:
            try:
                events = self.events.receive(RtpPacket.parse(data), now)
            except RtpError:
                self.stats.malformed += 1
                return
            self._key_events(events)
        else:
            self.stats.unknown_payload_type += 1

    def _key_events(self, events: list[KeyEvent]) -> None:
        for ev in events:
            if ev.digit is None:
                continue
            if isinstance(ev, RtpKeyDown):
                # A leg that speaks RFC 4733 carries its keys there: stop listening
                # for the same keys in-band, or each press would count twice.
                self.inband_dtmf = False
                self._pending_keys.append(DtmfKey(ev.digit, "rfc4733", ended=False))
            else:
                self.stats.dtmf_rfc4733 += 1
                self._pending_keys.append(
                    DtmfKey(ev.digit, "rfc4733", ended=True, duration=ev.duration)
                )

    # -- send side ----------------------------------------------------------------

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Send one RFC 4733 key press to the far end (needs a telephone-event PT)."""
        if self.telephone_event_pt is None:
            raise ValueError("send_dtmf: no telephone-event payload type was negotiated")
        units = self.codec.info.clock_rate * duration_ms // 1000
        step = self.codec.info.timestamp_increment(TICK_MS)
        for pkt in encode_key_press(digit, self._ts, units, ptime_samples=step):
            self._dtmf_out.append((pkt.payload, pkt.timestamp, pkt.marker))

    def _emit(self, payload: bytes, pt: int, ts: int, marker: bool) -> None:
        if self.send is None:
            return
        self.send(build_packet(pt, marker, self._seq, ts & 0xFFFFFFFF, self._ssrc, payload))
        self._seq = (self._seq + 1) & 0xFFFF
        self.stats.packets_sent += 1

    def _send_tick(self, pcm: NDArray[np.int16], payload: bytes | None) -> None:
        """Queue one tick of outgoing audio (encoded already for batch codecs)."""
        if self._dtmf_out:  # an RFC 4733 press replaces audio packets while it lasts
            te_payload, ts, marker = self._dtmf_out.pop(0)
            assert self.telephone_event_pt is not None
            self._emit(te_payload, self.telephone_event_pt, ts, marker)
            # media time goes on under the event: audio resumes at the right timestamp
            self._ts += self._tick_units
            self._send_bytes.clear()
            self._send_pcm = self._send_pcm[:0]
            return
        per_packet = self._packet_samples
        if payload is not None and per_packet == pcm.shape[0] and not self._send_bytes:
            self._emit_audio(payload)  # ptime == tick (the usual 20 ms): one packet as is
            return
        if payload is not None:  # sample-addressable: cut the byte stream into packets
            buf = self._send_bytes
            buf += payload
            size = len(payload) * per_packet // pcm.shape[0]
            while len(buf) >= size:
                self._emit_audio(bytes(buf[:size]))
                del buf[:size]
        else:  # stateful codec: cut the PCM stream, encode one packet at a time
            self._send_pcm = np.concatenate((self._send_pcm, pcm))
            while self._send_pcm.shape[0] >= per_packet:
                assert self._encoder is not None
                self._emit_audio(self._encoder.encode(self._send_pcm[:per_packet]))
                self._send_pcm = self._send_pcm[per_packet:]

    def _emit_audio(self, body: bytes) -> None:
        # _emit, inlined: this runs for every leg every tick
        send = self.send
        if send is not None:
            pt = self.payload_type
            send(build_packet(pt, self._marker, self._seq, self._ts & 0xFFFFFFFF, self._ssrc, body))
            self._seq = (self._seq + 1) & 0xFFFF
            self.stats.packets_sent += 1
        self._marker = False
        self._ts += self._packet_units

    # -- stateful decode (G.722, Opus) ---------------------------------------------

    def _decode_frame(self, payload: bytes) -> NDArray[np.int16]:
        assert self._decoder is not None
        out = np.zeros(self.frame_samples, dtype=np.int16)
        try:
            pcm = self._decoder.decode(payload)
        except CodecError:
            self.stats.malformed += 1
            return out
        n = min(out.shape[0], pcm.shape[0])
        out[:n] = pcm[:n]
        return out

    def _decode_packets(self, packets: list[bytes]) -> NDArray[np.int16]:
        assert self._decoder is not None
        for payload in packets:
            try:
                pcm = self._decoder.decode(payload)
            except CodecError:
                self.stats.malformed += 1
                continue
            self._decoded.append(pcm)
            self._decoded_len += pcm.shape[0]
        out = np.zeros(self.frame_samples, dtype=np.int16)
        filled = 0
        while filled < out.shape[0] and self._decoded:
            head = self._decoded[0]
            take = min(out.shape[0] - filled, head.shape[0])
            out[filled : filled + take] = head[:take]
            filled += take
            if take == head.shape[0]:
                self._decoded.popleft()
            else:
                self._decoded[0] = head[take:]
        self._decoded_len -= filled
        return out


@dataclass(eq=False)
class SilenceWatch:
    """One set of FreeSWITCH silence timers on what a leg's far end says.

    ``on_expiry(watch, expiry)`` is called once, from a tick, when a timer
    expires; ``speech_detected`` says whether anyone has spoken. Each watch
    has its own detector row, so a listen ``timeout`` and any number of
    recordings can time the same leg independently, all in one batched
    detector call per tick and rate.
    """

    leg: Leg
    on_expiry: Callable[[SilenceWatch, SilenceExpiry], None]
    row: int
    threshold: float = 200.0
    initial_timeout_ms: int = 0
    final_timeout_ms: int = 0
    detector: SilenceDetector | None = None  # where its row lives (by the leg's rate)

    @property
    def speech_detected(self) -> bool:
        return self.detector is not None and self.detector.speech_detected(self.row)


@dataclass
class _CodecGroup:
    legs: list[Leg] = field(default_factory=list)


class MediaEngine:
    """All live legs of the process; ``tick(now)`` runs one 20 ms step for all of them."""

    def __init__(self, capacity: int = 1024) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity: must be > 0, got {capacity}")
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))
        self._legs: dict[int, Leg] = {}
        self._groups: dict[str, _CodecGroup] = {}
        self._concealers: dict[int, LossConcealer] = {}
        self._dtmf: dict[int, DtmfDetector] = {}
        self._resamplers: dict[tuple[int, int, str], Resampler] = {}
        self._silence: dict[int, SilenceDetector] = {}  # by rate; rows = watches
        self._silence_rows = 4 * capacity  # a listen timeout + recordings per leg
        self._free_rows = list(range(self._silence_rows - 1, -1, -1))
        # Called with the media time at the start of every tick, before any leg is
        # played out: simulated legs push the RTP that is due, in lock-step with the
        # clock whatever the machine's load (mediaserver call, tests).
        self.feeders: list[Callable[[float], None]] = []
        self.ticks = 0

    # -- legs ---------------------------------------------------------------------

    @property
    def legs(self) -> list[Leg]:
        return list(self._legs.values())

    def add_leg(self, leg: Leg) -> None:
        if leg.slot >= 0:
            raise ValueError("add_leg: leg is already in an engine")
        if not self._free:
            raise RuntimeError(f"engine full: {self.capacity} legs")
        slot = self._free.pop()
        leg.slot = slot
        self._legs[slot] = leg
        self._groups.setdefault(leg.codec.info.key, _CodecGroup()).legs.append(leg)
        self._reset_slot(slot)

    def remove_leg(self, leg: Leg) -> None:
        if self._legs.get(leg.slot) is not leg:
            return
        for watch in list(leg.silence_watches):
            self.remove_silence_watch(watch)
        del self._legs[leg.slot]
        group = self._groups[leg.codec.info.key]
        group.legs.remove(leg)
        if not group.legs:
            del self._groups[leg.codec.info.key]
        self._free.append(leg.slot)
        leg.slot = -1

    def _reset_slot(self, slot: int) -> None:
        for concealer in self._concealers.values():
            concealer.reset(slot)
        for detector in self._dtmf.values():
            detector.reset(slot)
        for resampler in self._resamplers.values():
            resampler.reset(slot)

    @staticmethod
    def warm_up() -> None:
        """Do the one-off work a first call would otherwise pay inside a tick.

        Importing scipy.signal and designing every resampling filter takes
        over a second: done lazily, it stalled the clock on the first fork.
        """
        for a in SUPPORTED_RATES:
            for b in SUPPORTED_RATES:
                if a != b:
                    Resampler(1, a, b)

    def add_silence_watch(
        self,
        leg: Leg,
        on_expiry: Callable[[SilenceWatch, SilenceExpiry], None],
        *,
        threshold: float = 200.0,
        initial_timeout_ms: int = 0,
        final_timeout_ms: int = 0,
    ) -> SilenceWatch:
        """Start FreeSWITCH-style silence timers on ``leg`` (see ``SilenceWatch``)."""
        if leg.slot < 0 or self._legs.get(leg.slot) is not leg:
            raise ValueError("add_silence_watch: the leg is not in this engine")
        if not self._free_rows:
            raise RuntimeError(f"silence watches full: {self._silence_rows}")
        row = self._free_rows.pop()
        watch = SilenceWatch(leg, on_expiry, row, threshold, initial_timeout_ms, final_timeout_ms)
        self._arm(watch, leg.sample_rate)
        leg.silence_watches.append(watch)
        return watch

    def _arm(self, watch: SilenceWatch, rate: int) -> None:
        detector = self._silence.get(rate)
        if detector is None:
            detector = self._silence[rate] = SilenceDetector(self._silence_rows, rate)
        watch.detector = detector
        detector.configure(  # also restarts the row's timers
            watch.row,
            threshold=watch.threshold,
            initial_timeout_ms=watch.initial_timeout_ms,
            final_timeout_ms=watch.final_timeout_ms,
        )

    def move_silence_watches(self, old: Leg, new: Leg) -> None:
        """Hand ``old``'s watches to ``new`` (a codec change replaces the leg).

        At the same rate the timers run on undisturbed; at another rate they
        restart (the detector state is per rate).
        """
        for watch in list(old.silence_watches):
            old.silence_watches.remove(watch)
            if new.sample_rate != old.sample_rate:
                self._arm(watch, new.sample_rate)
            watch.leg = new
            new.silence_watches.append(watch)
        new._default_watch, old._default_watch = old._default_watch, None

    def remove_silence_watch(self, watch: SilenceWatch) -> None:
        """Stop a watch (idempotent); its row is free for the next one."""
        if watch not in watch.leg.silence_watches:
            return
        watch.leg.silence_watches.remove(watch)
        self._free_rows.append(watch.row)

    def watch_silence(
        self,
        leg: Leg,
        on_expiry: Callable[[Leg, SilenceExpiry], None],
        *,
        threshold: float = 200.0,
        initial_timeout_ms: int = 0,
        final_timeout_ms: int = 0,
    ) -> None:
        """The leg's one default watch (a listen ``timeout``): ``on_expiry(leg, expiry)``
        once when a timer expires. Watching again restarts the timers."""
        self.unwatch_silence(leg)
        leg._default_watch = self.add_silence_watch(
            leg,
            lambda watch, expiry: on_expiry(watch.leg, expiry),
            threshold=threshold,
            initial_timeout_ms=initial_timeout_ms,
            final_timeout_ms=final_timeout_ms,
        )

    def unwatch_silence(self, leg: Leg) -> None:
        if leg._default_watch is not None:
            self.remove_silence_watch(leg._default_watch)
            leg._default_watch = None

    def _concealer(self, frame: int) -> LossConcealer:
        c = self._concealers.get(frame)
        if c is None:
            c = self._concealers[frame] = LossConcealer(self.capacity, frame)
        return c

    def _detector(self, rate: int) -> DtmfDetector:
        d = self._dtmf.get(rate)
        if d is None:
            d = self._dtmf[rate] = DtmfDetector(self.capacity, rate)
        return d

    def _resampler(self, in_rate: int, out_rate: int, stream: str) -> Resampler:
        key = (in_rate, out_rate, stream)
        rs = self._resamplers.get(key)
        if rs is None:
            rs = self._resamplers[key] = Resampler(self.capacity, in_rate, out_rate)
        return rs

    # -- the tick -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """One 20 ms step for every leg, ``now`` = media time in seconds."""
        self.ticks += 1
        for feed in list(self.feeders):
            feed(now)
        callbacks: list[Callable[[], None]] = []
        for group in self._groups.values():
            self._tick_group(group, now, callbacks)
        for leg in self._legs.values():
            if leg.events.get_timer() is not None:
                leg._key_events(leg.events.handle_timer(now))
            if leg._pending_keys:
                keys, leg._pending_keys = leg._pending_keys, []
                for key in keys:
                    for handler in list(leg.dtmf_handlers):
                        handler(leg, key)
        for cb in callbacks:
            cb()

    def _tick_group(
        self, group: _CodecGroup, now: float, callbacks: list[Callable[[], None]]
    ) -> None:
        legs = group.legs
        codec = legs[0].codec
        n = len(legs)
        frame = legs[0].frame_samples
        rate = legs[0].sample_rate
        slots = np.fromiter((leg.slot for leg in legs), dtype=np.intp, count=n)
        lost = np.zeros(n, dtype=np.bool_)
        # One pass over the legs per tick: pop the jitter buffers and note which legs
        # need anything more, so later stages touch only those (per-leg Python is
        # what limits capacity, not the numpy work).
        payloads: list[bytes] = []
        lost_rows: list[int] = []
        bridged: list[int] = []
        listening: list[int] = []
        playing: list[int] = []
        sending: list[int] = []
        watching: list[int] = []
        stateful = codec.batch is None
        read = np.empty((n, frame), dtype=np.int16) if stateful else None
        for i, leg in enumerate(legs):
            f = leg.jitter.pop(now)
            if f.status is FrameStatus.LOST:
                lost_rows.append(i)
            if read is None:
                payloads.append(f.payload)
            elif leg.jitter.bytes_per_unit is None:  # packet mode (Opus)
                read[i] = leg._decode_packets(f.packets)
            elif f.status is FrameStatus.PLAYED or f.status is FrameStatus.PARTIAL:
                read[i] = leg._decode_frame(f.payload)  # never feed G.722 fill bytes
            else:
                read[i] = 0
            if leg.feeds_bridge:
                bridged.append(i)
            if leg.listeners:
                listening.append(i)
            if leg.playback or leg.heard is not None:
                playing.append(i)
            if leg.send is not None:
                sending.append(i)
            if leg.silence_watches:
                watching.append(i)

        # 1. decode the whole group at once, conceal the lost frames in one call
        if read is None:
            assert codec.batch is not None
            raw = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(n, -1)
            read = codec.batch.decode_batch(raw)
        if lost_rows:
            lost[lost_rows] = True
            for i in lost_rows:
                legs[i].stats.frames_lost += 1
        read = self._concealer(frame).process(read, lost, slots)
        for i in bridged:
            legs[i].last_read = read[i]  # what the bridged peer hears next (LegBridge)

        # 2. in-band DTMF, one detector call for the legs that want it
        inband = np.fromiter((leg.inband_dtmf for leg in legs), dtype=np.bool_, count=n)
        if inband.any():
            rows = np.flatnonzero(inband)
            events = self._detector(rate).process(read[rows], slots[rows])
            by_slot = {leg.slot: leg for leg in legs}
            for ev in events:
                leg = by_slot[ev.slot]
                if isinstance(ev, InbandKeyDown):
                    leg._pending_keys.append(DtmfKey(ev.digit, "inband", ended=False))
                else:
                    leg.stats.dtmf_inband += 1
                    leg._pending_keys.append(
                        DtmfKey(ev.digit, "inband", ended=True, duration=ev.duration_8k)
                    )

        # 2b. silence timers: one detector call for every watch on this group's legs
        if watching:
            frame_rows: list[int] = []
            watches: list[SilenceWatch] = []
            for i in watching:
                for watch in legs[i].silence_watches:
                    frame_rows.append(i)
                    watches.append(watch)
            det_rows = np.fromiter((w.row for w in watches), dtype=np.intp, count=len(watches))
            decisions = self._silence[rate].process(read[frame_rows], det_rows)
            for k in np.flatnonzero(decisions.expiry).tolist():
                expiry = SilenceExpiry(int(decisions.expiry[k]))
                callbacks.append(partial(watches[k].on_expiry, watches[k], expiry))

        # 3. what each far end hears: playback or silence, encoded as a batch
        write = np.zeros((n, frame), dtype=np.int16)
        for i in playing:
            leg = legs[i]
            if leg.playback:
                callbacks.extend(leg.playback.read_into(write[i]))
            if leg.heard is not None:
                write[i] = saturating_sum(write[i][None, :], leg.heard.read(frame)[None, :])[0]
        if sending:
            if codec.batch is not None:
                encoded = codec.batch.encode_batch(write[sending])
                for row, i in enumerate(sending):
                    leg = legs[i]
                    if leg._packet_samples == frame and not leg._dtmf_out and not leg._send_bytes:
                        leg._emit_audio(encoded[row].tobytes())  # _send_tick's usual case
                    else:
                        leg._send_tick(write[i], encoded[row].tobytes())
            else:
                for i in sending:
                    legs[i]._send_tick(write[i], None)

        # 4. listeners, at the rate each asked for (one resampler call per rate pair)
        wanted: dict[int, list[int]] = {}
        for i in listening:
            for listener in legs[i].listeners:
                rows_for_rate = wanted.setdefault(listener.sample_rate, [])
                if not rows_for_rate or rows_for_rate[-1] != i:
                    rows_for_rate.append(i)
        for out_rate, rows_list in wanted.items():
            rows = np.asarray(rows_list, dtype=np.intp)
            if out_rate == rate:
                r_out, w_out = read[rows], write[rows]
            else:
                up_read = self._resampler(rate, out_rate, "read")
                up_write = self._resampler(rate, out_rate, "write")
                r_out = to_int16(up_read.process(read[rows], slots[rows]))
                w_out = to_int16(up_write.process(write[rows], slots[rows]))
            # Forks: mixed as one batch per mix type, handed over as L16 little-endian
            # bytes; other listeners (dumps, recorders) get the two streams.
            by_mix: dict[MixType, list[tuple[int, FrameListener]]] = {}
            for row, i in enumerate(rows_list):
                for listener in legs[i].listeners:
                    if listener.sample_rate != out_rate:
                        continue
                    if hasattr(listener, "on_frame"):  # cheaper than a Protocol isinstance
                        fork = cast(FrameListener, listener)
                        by_mix.setdefault(fork.mix_type, []).append((row, fork))
                    else:
                        listener.on_audio(r_out[row], w_out[row])
            for mix_type, targets in by_mix.items():
                sel = np.fromiter((row for row, _ in targets), dtype=np.intp, count=len(targets))
                frames = mix(mix_type, r_out[sel], w_out[sel]).astype("<i2", copy=False)
                for k, (_, listener) in enumerate(targets):
                    listener.on_frame(frames[k].tobytes())


@dataclass
class ClockStats:
    ticks: int = 0
    overruns: int = 0  # ticks that started late by more than one tick period
    max_tick_ms: float = 0.0
    total_tick_ms: float = 0.0
    errors: int = 0  # ticks that raised (logged; the clock keeps going)


class EngineClock:
    """Drives ``engine.tick`` every 20 ms on an absolute schedule.

    Tick k is due at ``start + k * period``; if the loop is late, the tick
    runs at once with its own media time and counts as an overrun when it
    is more than one period late, so media time never drifts or skips.
    ``speed`` > 1 runs media time faster than wall time (simulated calls).
    """

    def __init__(self, engine: MediaEngine, *, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed: must be > 0, got {speed}")
        self.engine = engine
        self.speed = speed
        self.period = TICK_MS / 1000 / speed
        self.stats = ClockStats()
        self._start = 0.0
        self._k = 0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []  # (due tick, id, ...)
        self._sleeper_ids = itertools.count()

    def media_time(self) -> float:
        """The media time of the next tick, seconds."""
        return self._k * TICK_MS / 1000

    def now(self) -> float:
        """Media time now (seconds since start, running ``speed`` times wall time).

        Packets handed to legs must carry this time, so arrival times, tick
        times and timers all live on one clock.
        """
        if self._loop is None:
            return 0.0
        return (self._loop.time() - self._start) * self.speed

    async def sleep(self, media_seconds: float) -> None:
        """Sleep for ``media_seconds`` of media time, counted in ticks (rounded up).

        Counted in ticks, not on the wall clock, so a ``pause`` spans exactly
        the audio the engine processed meanwhile, even when a loaded loop
        runs the ticks late and catches up (at ``speed`` > 1 that happens).
        """
        ticks = math.ceil(max(0.0, media_seconds) * 1000 / TICK_MS - 1e-9)
        if ticks <= 0 or self._loop is None or self._handle is None:
            await asyncio.sleep(max(0.0, media_seconds) / self.speed)
            return
        due: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._sleepers, (self._k + ticks, next(self._sleeper_ids), due))
        await due

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._k = 0
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        while self._sleepers:  # no more ticks: nobody may wait for one forever
            _, _, due = heapq.heappop(self._sleepers)
            if not due.done():
                due.set_result(None)

    def _schedule(self) -> None:
        assert self._loop is not None
        self._handle = self._loop.call_at(self._start + self._k * self.period, self._run)

    def _run(self) -> None:
        assert self._loop is not None
        late = self._loop.time() - (self._start + self._k * self.period)
        if late > self.period:
            self.stats.overruns += 1
        t0 = time.perf_counter()
        try:
            self.engine.tick(self._k * TICK_MS / 1000)
        except Exception:  # a bug must not stop the media clock for every call
            self.stats.errors += 1
            if self.stats.errors == 1 or self.stats.errors % 500 == 0:
                log.exception("engine.tick_failed", errors=self.stats.errors)
        ms = (time.perf_counter() - t0) * 1000
        self.stats.ticks += 1
        self.stats.total_tick_ms += ms
        self.stats.max_tick_ms = max(self.stats.max_tick_ms, ms)
        self._k += 1
        sleepers = self._sleepers
        while sleepers and sleepers[0][0] <= self._k:
            _, _, due = heapq.heappop(sleepers)
            if not due.done():  # a cancelled sleeper's future is done already
                due.set_result(None)
        self._schedule()
