"""Jitter buffer: one frame per pop whatever the network does."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.jitter import FrameStatus, JitterBuffer
from rtp.packet import RtpPacket
from tests.rtp.pcap import SIPP_CAPTURES, read_udp

TICK = 0.02


def pcmu_buffer(**kw: float) -> JitterBuffer:
    return JitterBuffer(clock_rate=8000, frame_units=160, bytes_per_unit=1, fill=b"\xff", **kw)


def payload(i: int, size: int = 160) -> bytes:
    """A recognisable payload: every byte says which packet it came from."""
    return bytes([i % 251]) * size


class Stream:
    """A sender: 20 ms packets, sequence and timestamp counting from chosen bases."""

    def __init__(self, seq: int = 1000, ts: int = 5000, ssrc: int = 0x1234, size: int = 160):
        self.seq, self.ts, self.ssrc, self.size = seq, ts, ssrc, size
        self.n = 0

    def next(self) -> tuple[int, int, int, bool, bytes]:
        pkt = (self.ssrc, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.n == 0, payload(self.n))
        self.seq += 1
        self.ts += self.size
        self.n += 1
        return pkt


def play(
    jb: JitterBuffer,
    packets: list[tuple[int, int, int, bool, bytes]],
    ticks: int,
    per_tick: int = 1,
) -> list[tuple[FrameStatus, bytes]]:
    """Deliver ``per_tick`` packets per tick then pop once, like the engine."""
    out = []
    it = iter(packets)
    for t in range(ticks):
        now = t * TICK
        for _ in range(per_tick):
            pkt = next(it, None)
            if pkt is not None:
                jb.push(*pkt, now=now)
        f = jb.pop(now)
        out.append((f.status, f.payload))
    return out


def test_in_order_stream_plays_every_packet_once_after_the_target_delay() -> None:
    jb = pcmu_buffer(target_delay=0.04)
    s = Stream()
    frames = play(jb, [s.next() for _ in range(50)], 55)
    assert all(len(p) == 160 for _, p in frames)
    played = [p[0] for st_, p in frames if st_ is FrameStatus.PLAYED]
    assert played == [i % 251 for i in range(50)]
    # 40 ms target delay: packet 0 arrives at tick 0 and plays at tick 2
    assert frames[2] == (FrameStatus.PLAYED, payload(0))
    assert jb.stats.received == 50 and jb.stats.lost == 0 and jb.stats.late == 0


def test_before_the_first_packet_frames_are_idle_silence() -> None:
    jb = pcmu_buffer()
    f = jb.pop(0.0)
    assert f.status is FrameStatus.IDLE and f.payload == b"\xff" * 160


def test_reordered_packets_play_in_order() -> None:
    jb = pcmu_buffer(target_delay=0.06)
    s = Stream()
    pkts = [s.next() for _ in range(20)]
    pkts[5], pkts[6] = pkts[6], pkts[5]
    played = [p[0] for st_, p in play(jb, pkts, 25) if st_ is FrameStatus.PLAYED]
    assert played == list(range(20))
    assert jb.stats.reordered == 1 and jb.stats.lost == 0


def test_lost_packet_is_one_lost_frame_of_fill_and_counted() -> None:
    jb = pcmu_buffer()
    s = Stream()
    pkts = [s.next() for _ in range(20)]
    del pkts[7]
    frames = play(jb, pkts, 22)
    statuses = [st_ for st_, _ in frames]
    assert statuses.count(FrameStatus.LOST) == 1
    lost_at = statuses.index(FrameStatus.LOST)
    assert frames[lost_at][1] == b"\xff" * 160
    assert frames[lost_at - 1][1] == payload(6) and frames[lost_at + 1][1] == payload(8)
    assert jb.stats.lost == 1


def test_duplicates_are_counted_and_played_once() -> None:
    jb = pcmu_buffer()
    s = Stream()
    pkts = [s.next() for _ in range(10)]
    pkts.insert(4, pkts[3])
    played = [p[0] for st_, p in play(jb, pkts, 15) if st_ is FrameStatus.PLAYED]
    assert played == list(range(10))
    assert jb.stats.duplicate == 1


def test_packet_after_its_playout_time_is_late_and_dropped() -> None:
    jb = pcmu_buffer(target_delay=0.02)
    s = Stream()
    pkts = [s.next() for _ in range(30)]
    late = pkts.pop(5)
    frames = play(jb, pkts[:15], 15)
    jb.push(*late, now=15 * TICK)
    frames += play(jb, pkts[15:], 20)
    assert jb.stats.late == 1
    played = [p[0] for st_, p in frames if st_ is FrameStatus.PLAYED]
    assert 5 not in played and played == [i for i in range(30) if i != 5]


@pytest.mark.parametrize(("seq", "ts"), [(65530, 1000), (100, 0xFFFFFF00), (65534, 0xFFFFFFC0)])
def test_sequence_and_timestamp_wrap_are_seamless(seq: int, ts: int) -> None:
    jb = pcmu_buffer()
    s = Stream(seq=seq, ts=ts)
    frames = play(jb, [s.next() for _ in range(30)], 33)
    played = [p[0] for st_, p in frames if st_ is FrameStatus.PLAYED]
    assert played == list(range(30))
    assert jb.stats.lost == 0 and jb.stats.late == 0 and jb.stats.resyncs == 0


def test_sipp_g711a_capture_30ms_reframes_into_exact_20ms_frames() -> None:
    """SIPp's bundled PCMA capture uses 30 ms packets; the audio must come out intact."""
    pkts = [RtpPacket.parse(d.payload) for d in read_udp(SIPP_CAPTURES / "g711a.pcap")]
    assert {len(p.payload) for p in pkts[:-1]} == {240}
    jb = JitterBuffer(clock_rate=8000, frame_units=160, bytes_per_unit=1, fill=b"\xd5")
    out = bytearray()
    t0 = pkts[0].timestamp
    tick = 0
    i = 0
    while i < len(pkts) or jb.depth_seconds > 0:
        now = tick * TICK
        # deliver every packet whose media time has come (30 ms cadence)
        while i < len(pkts) and (pkts[i].timestamp - t0) / 8000 <= now:
            p = pkts[i]
            jb.push(p.ssrc, p.sequence, p.timestamp, p.marker, p.payload, now)
            i += 1
        f = jb.pop(now)
        assert len(f.payload) == 160
        if f.status is not FrameStatus.IDLE:
            out += f.payload
        tick += 1
    expected = b"".join(p.payload for p in pkts)
    assert bytes(out[: len(expected)]) == expected
    assert jb.stats.lost == 0 and jb.stats.late == 0


def test_new_ssrc_flushes_and_reanchors() -> None:
    jb = pcmu_buffer()
    a, b = Stream(ssrc=1), Stream(seq=7, ts=999_999, ssrc=2)
    frames = play(jb, [a.next() for _ in range(10)] + [b.next() for _ in range(10)], 25)
    played = [p[0] for st_, p in frames if st_ is FrameStatus.PLAYED]
    assert played[-10:] == list(range(10))  # all of the second source played
    assert jb.source.ssrc_changes == 1 and jb.stats.late == 0


def test_timestamp_jump_without_marker_reanchors_instead_of_waiting() -> None:
    jb = pcmu_buffer(max_jump=2.0)
    s = Stream()
    pkts = [s.next() for _ in range(10)]
    s.ts += 8000 * 60  # the sender's clock leaps a minute
    pkts += [s.next() for _ in range(10)]
    frames = play(jb, pkts, 25)
    assert sum(st_ is FrameStatus.PLAYED for st_, _ in frames) == 20
    assert jb.stats.resyncs == 1


def test_silence_suppression_gap_is_idle_not_lost() -> None:
    jb = pcmu_buffer()
    s = Stream()
    first = [s.next() for _ in range(10)]
    s.ts += 160 * 50  # 1 s of DTX: timestamps advance, no packets
    resumed = []
    for _ in range(10):
        pkt = s.next()
        resumed.append(pkt)
    resumed[0] = (*resumed[0][:3], True, resumed[0][4])  # marker on the talkspurt
    frames = play(jb, first, 12)
    frames += play(jb, [], 48)  # the gap, in real time
    frames += play(jb, resumed, 15)
    statuses = [st_ for st_, _ in frames]
    assert statuses.count(FrameStatus.PLAYED) == 20
    # Only the first 100 ms after a talkspurt ends may count as loss; the rest of
    # the pause and the pre-roll of the next talkspurt are idle.
    assert statuses[12:60].count(FrameStatus.LOST) <= 5
    assert statuses[50:62] == [FrameStatus.IDLE] * 12
    assert jb.stats.lost == 0 and jb.stats.late == 0


def test_burst_is_bounded_by_max_delay() -> None:
    jb = pcmu_buffer(target_delay=0.04, max_delay=0.2)
    s = Stream()
    for _ in range(100):  # two seconds of audio at once
        jb.push(*s.next(), now=0.0)
    jb.pop(0.0)
    assert jb.depth_seconds <= 0.2 + 1e-9
    assert jb.stats.skipped_units > 0


def test_slow_sender_is_followed_not_dropped() -> None:
    """A sender whose clock runs 2 % slow: our cursor overtakes it, we re-anchor."""
    jb = pcmu_buffer(target_delay=0.02)
    s = Stream()
    frames = []
    t = 0.0
    pops = 0
    for _ in range(300):
        jb.push(*s.next(), now=t)
        t += TICK * 1.02
        while pops * TICK <= t:
            frames.append(jb.pop(pops * TICK))
            pops += 1
    frames += [jb.pop(0.0) for _ in range(5)]  # drain
    played = [f.payload[0] for f in frames if f.status is FrameStatus.PLAYED]
    assert played == [i % 251 for i in range(300)]  # nothing dropped as late
    assert jb.stats.late == 0 and jb.stats.resyncs > 0


def test_packet_mode_hands_out_whole_packets() -> None:
    jb = JitterBuffer(clock_rate=48000, frame_units=960, bytes_per_unit=None, packet_units=960)
    s = Stream(size=960)
    got = []
    for t in range(15):
        jb.push(*s.next(), now=t * TICK)
        f = jb.pop(t * TICK)
        got.extend(p[0] for p in f.packets)
        assert len(f.packets) <= 1
    assert got == list(range(len(got))) and len(got) >= 12


def test_bad_payload_sizes_are_dropped_and_counted() -> None:
    jb = JitterBuffer(clock_rate=8000, frame_units=160, bytes_per_unit=2, fill=b"\0\0")
    jb.push(1, 1, 0, False, b"\x00" * 3, 0.0)  # odd byte count for L16
    jb.push(1, 2, 160, False, b"", 0.0)
    assert jb.stats.dropped == 2


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0, 0.3),
    jitter_ticks=st.integers(0, 2),
    seq0=st.integers(0, 65535),
    ts0=st.integers(0, 2**32 - 1),
)
def test_any_network_gives_one_ordered_frame_per_tick(
    seed: int, loss: float, jitter_ticks: int, seq0: int, ts0: int
) -> None:
    rng = random.Random(seed)
    jb = pcmu_buffer(target_delay=0.02 + 0.02 * jitter_ticks)
    s = Stream(seq=seq0, ts=ts0)
    arrivals: dict[int, list[tuple[int, int, int, bool, bytes]]] = {}
    for t in range(200):
        pkt = s.next()
        if rng.random() >= loss:
            arrivals.setdefault(t + rng.randint(0, jitter_ticks), []).append(pkt)
    played: list[int] = []
    for t in range(210):
        batch = arrivals.get(t, [])
        rng.shuffle(batch)
        for pkt in batch:
            jb.push(*pkt, now=t * TICK)
        f = jb.pop(t * TICK)
        assert len(f.payload) == 160
        if f.status is FrameStatus.PLAYED:
            played.append(f.payload[0])
    delivered = sum(len(v) for v in arrivals.values())
    # every delivered packet is played exactly once, in sending order
    assert len(played) == delivered
    assert all(a < b for a, b in itertools.pairwise(played))
    assert jb.stats.late == 0
