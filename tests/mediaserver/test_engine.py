"""The media engine, driven tick by tick with real RTP bytes."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from dsp.codecs import get_codec
from dsp.tones import dtmf_tone, tone
from mediaserver.engine import DtmfKey, EngineClock, Leg, MediaEngine
from rtp.packet import RtpPacket, build_packet
from rtp.telephone_event import TelephoneEventReceiver, encode_key_press

TICK = 0.02


class Capture:
    """A listener that keeps everything it is given."""

    def __init__(self, rate: int) -> None:
        self.sample_rate = rate
        self.read: list[np.ndarray] = []
        self.write: list[np.ndarray] = []

    def on_audio(self, read: np.ndarray, write: np.ndarray) -> None:
        self.read.append(read.copy())
        self.write.append(write.copy())

    def read_all(self) -> np.ndarray:
        return np.concatenate(self.read)


def rtp_stream(codec_key: str, pt: int, pcm: np.ndarray, ptime_ms: int = 20) -> list[bytes]:
    codec = get_codec(codec_key)
    enc = codec.new_encoder(ptime_ms)
    n = codec.info.samples_per_frame(ptime_ms)
    step = codec.info.timestamp_increment(ptime_ms)
    return [
        build_packet(pt, i == 0, i, 1000 + i * step, 0xABC, enc.encode(pcm[i * n : (i + 1) * n]))
        for i in range(pcm.shape[0] // n)
    ]


def run(engine: MediaEngine, feeds: dict[Leg, list[bytes]], ticks: int) -> None:
    for t in range(ticks):
        now = t * TICK
        for leg, packets in feeds.items():
            if t < len(packets):
                leg.receive_datagram(packets[t], now)
        engine.tick(now)


def aligned(got: np.ndarray, sent: np.ndarray) -> int:
    """Offset of ``sent`` inside ``got`` (the jitter-buffer delay), by correlation."""
    corr = np.correlate(got.astype(np.float64), sent[:800].astype(np.float64), mode="valid")
    return int(np.argmax(corr))


@pytest.mark.parametrize(("key", "pt"), [("PCMU/8000", 0), ("PCMA/8000", 8)])
def test_g711_legs_decode_sample_exact_in_one_batch(key: str, pt: int) -> None:
    engine = MediaEngine(8)
    rng = np.random.default_rng(3)
    audio = [(rng.standard_normal(8000) * 3000).astype(np.int16) for _ in range(3)]
    legs, caps, feeds = [], [], {}
    for a in audio:
        leg = Leg(call_sid="c", codec=key, payload_type=pt)
        cap = Capture(8000)
        leg.listeners.append(cap)
        engine.add_leg(leg)
        legs.append(leg)
        caps.append(cap)
        feeds[leg] = rtp_stream(key, pt, a)
    run(engine, feeds, 60)
    codec = get_codec(key)
    assert codec.batch is not None
    for a, cap in zip(audio, caps, strict=True):
        expected = codec.batch.decode_batch(codec.batch.encode_batch(a[None, :]))[0]
        got = cap.read_all()
        start = aligned(got, expected)
        np.testing.assert_array_equal(got[start : start + expected.size], expected)


def test_g722_leg_decodes_16k_audio() -> None:
    engine = MediaEngine(4)
    leg = Leg(call_sid="c", codec="G722/8000", payload_type=9)
    cap = Capture(16000)
    leg.listeners.append(cap)
    engine.add_leg(leg)
    sent = tone(1000.0, 1.0, level_dbfs=-10, rate=16000)
    run(engine, {leg: rtp_stream("G722/8000", 9, sent)}, 50)
    got = cap.read_all().astype(np.float64)
    assert got.size == 50 * 320
    spectrum = np.abs(np.fft.rfft(got[4000:12000]))
    assert np.argmax(spectrum) * 16000 / 8000 == pytest.approx(1000, abs=4)


def test_lost_packet_is_concealed_and_counted() -> None:
    engine = MediaEngine(2)
    leg = Leg(call_sid="c", codec="PCMU/8000", payload_type=0)
    cap = Capture(8000)
    leg.listeners.append(cap)
    engine.add_leg(leg)
    packets = rtp_stream("PCMU/8000", 0, tone(400.0, 1.0, -10.0))
    packets[20] = b""  # never delivered
    for t in range(52):  # 50 packets + 40 ms jitter-buffer delay: stop as the last one plays
        if t < len(packets) and packets[t]:
            leg.receive_datagram(packets[t], t * TICK)
        engine.tick(t * TICK)
    assert leg.stats.frames_lost == 1
    levels = [np.abs(f.astype(np.int32)).mean() for f in cap.read]
    assert min(levels[3:50]) > 500  # the lost frame was filled by repeating audio, not a hole


def test_rfc4733_key_press_reported_once_and_inband_then_ignored() -> None:
    engine = MediaEngine(2)
    keys: list[DtmfKey] = []
    leg = Leg(call_sid="c", codec="PCMU/8000", payload_type=0, telephone_event_pt=101)
    leg.dtmf_handlers.append(lambda _leg, key: keys.append(key))
    engine.add_leg(leg)
    # the caller sends "5" as RFC 4733 *and* as an in-band tone (some phones do both)
    audio = np.zeros(16000, np.int16)
    audio[4000:4800] = dtmf_tone("5", 0.1)
    packets = rtp_stream("PCMU/8000", 0, audio)
    events = encode_key_press("5", 1000 + 25 * 160, 800)
    te = [
        build_packet(101, e.marker, 5000 + i, e.timestamp, 0xABC, e.payload)
        for i, e in enumerate(events)
    ]
    for t in range(100):
        if t < len(packets):
            leg.receive_datagram(packets[t], t * TICK)
        if 25 <= t < 25 + len(te):
            leg.receive_datagram(te[t - 25], t * TICK)
        engine.tick(t * TICK)
    ended = [k for k in keys if k.ended]
    assert [(k.digit, k.source) for k in ended] == [("5", "rfc4733")]
    assert ended[0].duration == 800
    assert [k.digit for k in keys if not k.ended] == ["5"]


def test_inband_dtmf_detected_on_a_plain_audio_leg() -> None:
    engine = MediaEngine(2)
    keys: list[DtmfKey] = []
    leg = Leg(call_sid="c", codec="PCMA/8000", payload_type=8)
    leg.dtmf_handlers.append(lambda _leg, key: keys.append(key))
    engine.add_leg(leg)
    audio = np.zeros(16000, np.int16)
    for i, d in enumerate("19#"):
        start = 2000 + i * 2400
        audio[start : start + 800] = dtmf_tone(d, 0.1)
    run(engine, {leg: rtp_stream("PCMA/8000", 8, audio)}, 100)
    assert [(k.digit, k.source) for k in keys if k.ended] == [
        ("1", "inband"),
        ("9", "inband"),
        ("#", "inband"),
    ]


def test_playback_is_sent_as_rtp_at_the_negotiated_ptime_and_reports_done() -> None:
    engine = MediaEngine(2)
    sent: list[bytes] = []
    leg = Leg(call_sid="c", codec="PCMU/8000", payload_type=0, ptime_ms=30, send=sent.append)
    engine.add_leg(leg)
    done: list[str] = []
    beep = tone(1500.0, 0.5, -10.0)
    leg.playback.enqueue(beep, on_done=lambda: done.append("beep"))
    for t in range(60):
        engine.tick(t * TICK)
        if t == 23:  # 24 ticks = 480 ms of the 500 ms beep
            assert done == []
    assert done == ["beep"]
    pkts = [RtpPacket.parse(d) for d in sent]
    assert len(pkts) == 40  # 60 ticks x 20 ms / 30 ms
    assert {len(p.payload) for p in pkts} == {240}
    assert pkts[0].marker and not any(p.marker for p in pkts[1:])
    assert all((b.timestamp - a.timestamp) % 2**32 == 240 for a, b in itertools.pairwise(pkts))
    assert all((b.sequence - a.sequence) % 2**16 == 1 for a, b in itertools.pairwise(pkts))
    pcmu = get_codec("PCMU/8000").batch
    assert pcmu is not None
    heard = pcmu.decode_batch(np.frombuffer(b"".join(p.payload for p in pkts), np.uint8)[None])[0]
    spectrum = np.abs(np.fft.rfft(heard[:4000].astype(np.float64)))
    assert np.argmax(spectrum) * 8000 / 4000 == pytest.approx(1500, abs=3)
    assert np.abs(heard[4400:].astype(np.int32)).max() < 10  # silence after the beep


def test_no_rtp_is_sent_while_send_is_none() -> None:
    engine = MediaEngine(1)
    leg = Leg(call_sid="c", codec="PCMU/8000", payload_type=0)
    engine.add_leg(leg)
    for t in range(5):
        engine.tick(t * TICK)
    assert leg.stats.packets_sent == 0


def test_send_dtmf_emits_rfc4733_that_a_receiver_reads_as_one_press() -> None:
    engine = MediaEngine(1)
    sent: list[bytes] = []
    leg = Leg(
        call_sid="c", codec="PCMU/8000", payload_type=0, telephone_event_pt=101, send=sent.append
    )
    engine.add_leg(leg)
    engine.tick(0.0)
    leg.send_dtmf("#", duration_ms=100)
    for t in range(1, 20):
        engine.tick(t * TICK)
    rx = TelephoneEventReceiver()
    events = []
    audio_ts = []
    for d in sent:
        p = RtpPacket.parse(d)
        if p.payload_type == 101:
            events += rx.receive(p, 0.0)
        else:
            audio_ts.append(p.timestamp)
    assert [type(e).__name__ for e in events] == ["KeyDown", "KeyUp"]
    assert events[1].digit == "#" and events[1].duration == 800
    # audio resumes with timestamps that account for the time the event took
    gaps = [(b - a) % 2**32 for a, b in itertools.pairwise(audio_ts)]
    assert sorted(set(gaps))[0] == 160 and sum(gaps) == 160 * (len(sent) - 1)


def test_listener_at_another_rate_gets_resampled_audio() -> None:
    engine = MediaEngine(2)
    leg = Leg(call_sid="c", codec="PCMU/8000", payload_type=0)
    cap16 = Capture(16000)
    cap8 = Capture(8000)
    leg.listeners += [cap16, cap8]
    engine.add_leg(leg)
    run(engine, {leg: rtp_stream("PCMU/8000", 0, tone(700.0, 1.0, -10.0))}, 50)
    assert cap16.read_all().size == 2 * cap8.read_all().size == 50 * 320
    x = cap16.read_all()[8000:16000].astype(np.float64)
    assert np.argmax(np.abs(np.fft.rfft(x))) * 16000 / 8000 == pytest.approx(700, abs=3)


def test_bad_datagrams_are_dropped_and_counted() -> None:
    engine = MediaEngine(1)
    leg = Leg(call_sid="c", codec="PCMU/8000", payload_type=0)
    engine.add_leg(leg)
    leg.receive_datagram(b"\x00\x01", 0.0)  # not RTP
    leg.receive_datagram(bytes([0x81, 200, 0, 1]) + b"\0" * 4, 0.0)  # RTCP sender report
    leg.receive_datagram(build_packet(96, False, 1, 0, 1, b"x" * 160), 0.0)
    engine.tick(0.0)
    assert (leg.stats.malformed, leg.stats.rtcp, leg.stats.unknown_payload_type) == (1, 1, 1)


def test_slots_are_reused_and_full_engine_refuses() -> None:
    engine = MediaEngine(2)
    a, b = (Leg(call_sid=s, codec="PCMU/8000", payload_type=0) for s in "ab")
    engine.add_leg(a)
    engine.add_leg(b)
    with pytest.raises(RuntimeError, match="engine full"):
        engine.add_leg(Leg(call_sid="c", codec="PCMU/8000", payload_type=0))
    slot = a.slot
    engine.remove_leg(a)
    c = Leg(call_sid="c", codec="PCMU/8000", payload_type=0)
    engine.add_leg(c)
    assert c.slot == slot and a.slot == -1
    engine.tick(0.0)


async def test_clock_ticks_on_schedule_in_media_time() -> None:
    engine = MediaEngine(1)
    clock = EngineClock(engine, speed=4.0)
    clock.start()
    await asyncio.sleep(0.2)
    clock.stop()
    # 0.2 s of wall time at 4x speed is about 40 ticks of 20 ms media time
    assert 20 <= clock.stats.ticks <= 45
    assert engine.ticks == clock.stats.ticks
    assert clock.media_time() == pytest.approx(clock.stats.ticks * 0.02)


async def test_clock_keeps_ticking_when_a_tick_fails() -> None:
    engine = MediaEngine(1)
    leg = Leg(call_sid="c", codec="PCMU/8000", payload_type=0)

    class Broken:
        sample_rate = 8000

        def on_audio(self, read: np.ndarray, write: np.ndarray) -> None:
            raise RuntimeError("listener bug")

    leg.listeners.append(Broken())
    engine.add_leg(leg)
    clock = EngineClock(engine, speed=4.0)
    clock.start()
    await asyncio.sleep(0.15)
    clock.stop()
    assert clock.stats.ticks >= 10
    assert clock.stats.errors == clock.stats.ticks


def test_silence_watch_fires_once_per_leg_after_speech_stops() -> None:
    from dsp.silence import SilenceExpiry

    engine = MediaEngine(4)
    fired: list[tuple[str, SilenceExpiry, int]] = []
    legs = [Leg(call_sid=s, codec="PCMU/8000", payload_type=0) for s in "ab"]
    for leg in legs:
        engine.add_leg(leg)
    tick = {"t": 0}
    for leg in legs:
        engine.watch_silence(
            leg,
            lambda lg, e: fired.append((lg.call_sid, e, tick["t"])),
            initial_timeout_ms=2000,
            final_timeout_ms=400,
        )
    talk = tone(300.0, 0.5, -10.0)
    quiet = np.zeros(8000 * 2, np.int16)
    feeds = {
        legs[0]: rtp_stream("PCMU/8000", 0, np.concatenate([talk, quiet])),
        legs[1]: rtp_stream("PCMU/8000", 0, quiet),
    }
    for t in range(120):
        tick["t"] = t
        for leg, pkts in feeds.items():
            if t < len(pkts):
                leg.receive_datagram(pkts[t], t * TICK)
        engine.tick(t * TICK)
    by_leg = {sid: (e, t) for sid, e, t in fired}
    assert len(fired) == 2
    assert by_leg["a"][0] is SilenceExpiry.SILENCE
    assert 2 + 25 + 20 - 2 <= by_leg["a"][1] <= 2 + 25 + 20 + 2  # 400 ms after the talk ends
    assert by_leg["b"][0] is SilenceExpiry.NO_INPUT
    assert 98 <= by_leg["b"][1] <= 100  # 2 s of nothing but silence


def test_several_silence_watches_on_one_leg_time_independently() -> None:
    from dsp.silence import SilenceExpiry

    engine = MediaEngine(2)
    leg = Leg(call_sid="a", codec="PCMU/8000", payload_type=0)
    engine.add_leg(leg)
    fired: list[tuple[str, SilenceExpiry, int]] = []
    tick = {"t": 0}

    def watch(name: str, final_ms: int) -> object:
        return engine.add_silence_watch(
            leg, lambda w, e: fired.append((name, e, tick["t"])), final_timeout_ms=final_ms
        )

    short, long_, dropped = watch("short", 400), watch("long", 800), watch("dropped", 400)
    engine.remove_silence_watch(dropped)  # type: ignore[arg-type]
    engine.remove_silence_watch(dropped)  # type: ignore[arg-type]  # idempotent
    engine.watch_silence(leg, lambda lg, e: fired.append(("default", e, tick["t"])),
                         final_timeout_ms=600)  # fmt: skip
    pkts = rtp_stream("PCMU/8000", 0, np.concatenate([tone(300.0, 0.5, -10.0),
                                                      np.zeros(8000 * 2, np.int16)]))  # fmt: skip
    for t in range(120):
        tick["t"] = t
        if t < len(pkts):
            leg.receive_datagram(pkts[t], t * TICK)
        engine.tick(t * TICK)
    at = {name: t for name, e, t in fired if e is SilenceExpiry.SILENCE}
    assert set(at) == {"short", "long", "default"}  # the removed one never fires
    assert at["long"] - at["short"] == 20 and at["default"] - at["short"] == 10  # 400/200 ms
    assert short.speech_detected and long_.speech_detected  # type: ignore[attr-defined]
    engine.remove_leg(leg)
    assert leg.silence_watches == []  # removing the leg frees every row


def test_silence_watches_follow_a_codec_change_to_the_new_leg() -> None:
    from dsp.silence import SilenceExpiry

    engine = MediaEngine(4)
    old = Leg(call_sid="a", codec="PCMU/8000", payload_type=0)
    engine.add_leg(old)
    fired: list[tuple[str, SilenceExpiry, int]] = []
    tick = {"t": 0}
    engine.add_silence_watch(old, lambda w, e: fired.append((w.leg.codec.info.key, e, tick["t"])),
                             initial_timeout_ms=1000)  # fmt: skip
    engine.watch_silence(old, lambda lg, e: fired.append(("default", e, tick["t"])),
                         initial_timeout_ms=1400)  # fmt: skip
    for t in range(20):  # 400 ms of nothing on the old leg
        tick["t"] = t
        engine.tick(t * TICK)
    new = Leg(call_sid="a", codec="PCMA/8000", payload_type=8)  # same rate: timers go on
    engine.move_silence_watches(old, new)
    engine.remove_leg(old)
    engine.add_leg(new)
    assert len(new.silence_watches) == 2 and old.silence_watches == []
    for t in range(20, 80):
        tick["t"] = t
        engine.tick(t * TICK)
    assert [(k, e) for k, e, _ in fired] == [
        ("PCMA/8000", SilenceExpiry.NO_INPUT),
        ("default", SilenceExpiry.NO_INPUT),
    ]
    assert [t for _, _, t in fired] == [49, 69]  # 1.0 s and 1.4 s of silence, uninterrupted
    wide = Leg(call_sid="a", codec="G722/8000", payload_type=9)  # 16 kHz: timers restart
    engine.move_silence_watches(new, wide)
    engine.remove_leg(new)
    engine.add_leg(wide)
    engine.unwatch_silence(wide)  # the default watch moved with the rest
    assert len(wide.silence_watches) == 1


def test_bridge_transcodes_between_g722_and_pcmu_legs() -> None:
    from mediaserver.engine import LegBridge

    engine = MediaEngine(4)
    sent_a: list[bytes] = []
    sent_b: list[bytes] = []
    a = Leg(call_sid="a", codec="G722/8000", payload_type=9, send=sent_a.append)
    b = Leg(call_sid="b", codec="PCMU/8000", payload_type=0, send=sent_b.append)
    engine.add_leg(a)
    engine.add_leg(b)
    a.heard = LegBridge(b, a.sample_rate)
    b.heard = LegBridge(a, b.sample_rate)
    feeds = {a: rtp_stream("G722/8000", 9, tone(1000.0, 1.0, -10.0, rate=16000)),
             b: rtp_stream("PCMU/8000", 0, tone(400.0, 1.0, -10.0))}  # fmt: skip
    run(engine, feeds, 50)
    # what B's far end hears: A's 1 kHz, decoded from G.722 and re-encoded as PCMU at 8 kHz
    pcmu = get_codec("PCMU/8000").batch
    assert pcmu is not None
    heard_b = pcmu.decode_batch(
        np.frombuffer(b"".join(RtpPacket.parse(d).payload for d in sent_b), np.uint8)[None]
    )[0]
    assert np.argmax(np.abs(np.fft.rfft(heard_b[2000:6000].astype(np.float64)))) * 2 == 1000
    # what A's far end hears: B's 400 Hz, upsampled to 16 kHz and encoded as G.722
    dec = get_codec("G722/8000").new_decoder()
    heard_a = np.concatenate([dec.decode(RtpPacket.parse(d).payload) for d in sent_a])
    spectrum = np.abs(np.fft.rfft(heard_a[4000:12000].astype(np.float64)))
    assert np.argmax(spectrum) * 16000 / 8000 == pytest.approx(400, abs=3)
