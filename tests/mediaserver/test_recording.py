"""Recordings: the files a user gets back, and when and why a recording ends.

Files are decoded with PyAV (and ``wave``) and checked for rate, channels,
duration and which audio went where; timers are driven in media ticks.
"""

from __future__ import annotations

import resource
import tracemalloc
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from dsp.codecs import get_codec
from dsp.tones import tone
from mediaserver.engine import Leg, MediaEngine
from mediaserver.recording import (
    Recorder,
    RecordingCause,
    RecordingFormat,
    RecordingLayout,
    RecordingOptions,
    RecordingResult,
    SilenceOptions,
    open_recording,
)
from rtp.packet import build_packet

TICK_S = 0.02
# Samples one codec frame may add at the end (the encoder pads its last frame).
FRAME_SLACK = {RecordingFormat.WAV: 0, RecordingFormat.MP3: 1152, RecordingFormat.MP4: 1024}


def ticks(rate: int, *signals: NDArray[np.int16]) -> list[tuple[NDArray[np.int16], ...]]:
    """Cut equally long signals into 20 ms ticks."""
    n = rate // 50
    return [tuple(s[i : i + n] for s in signals) for i in range(0, signals[0].shape[0], n)]


def silence(seconds: float, rate: int = 8000) -> NDArray[np.int16]:
    return np.zeros(round(seconds * rate), dtype=np.int16)


def decode(path: Path) -> tuple[int, NDArray[np.float64]]:
    """(sample rate, samples as ``[channels, n]``) of a recording file."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        chunks = []
        for frame in container.decode(stream):
            data = frame.to_ndarray().astype(np.float64)
            if not frame.format.is_planar:  # packed: [1, n * channels]
                data = data.reshape(-1, len(frame.layout.channels)).T
            chunks.append(data)
    return rate, np.concatenate(chunks, axis=1)


def peak_hz(x: NDArray[np.float64], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spectrum) * rate / x.shape[0])


def band_level(x: NDArray[np.float64], rate: int, hz: float) -> float:
    """Spectrum magnitude at ``hz`` relative to the strongest bin."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    k = round(hz * x.shape[0] / rate)
    return float(spectrum[k - 2 : k + 3].max() / spectrum.max())


class Stops:
    """An ``on_stop`` that keeps every result it is given."""

    def __init__(self) -> None:
        self.results: list[RecordingResult] = []

    def __call__(self, result: RecordingResult) -> None:
        self.results.append(result)

    @property
    def only(self) -> RecordingResult:
        assert len(self.results) == 1, self.results
        return self.results[0]


def run_until_stopped(rec: Recorder, chunks: list[tuple[NDArray[np.int16], ...]]) -> int:
    """Feed ticks until the recorder stops; the number of ticks it took."""
    for k, (read, write) in enumerate(chunks, start=1):
        rec.on_audio(read, write)
        if rec.stopped:
            return k
    return len(chunks)


# -- formats --------------------------------------------------------------------------


def test_formats_have_extension_and_content_type() -> None:
    got = {f.extension: f.content_type for f in RecordingFormat}
    assert got == {"wav": "audio/wav", "mp3": "audio/mpeg", "mp4": "audio/mp4"}
    assert RecordingFormat.parse("mp4") is RecordingFormat.MP4


def test_unknown_format_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"^format: must be one of wav, mp3, mp4, got 'ogg'"):
        RecordingFormat.parse("ogg")


def test_rate_the_encoder_cannot_take_is_rejected_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^sample_rate: mp3 needs one of"):
        open_recording(tmp_path / "x.mp3", "mp3", 64000, 1)
    assert list(tmp_path.iterdir()) == []


# -- what ends up in the file ------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(RecordingFormat))
def test_stereo_left_is_what_the_caller_says_right_what_it_hears(
    tmp_path: Path, fmt: RecordingFormat
) -> None:
    rate = 16000
    stops = Stops()
    rec = Recorder(
        tmp_path / f"call.{fmt.extension}",
        RecordingOptions(format=fmt, sample_rate=rate),
        on_stop=stops,
    )
    said = tone(440.0, 1.0, -12.0, rate)
    heard = tone(1000.0, 1.0, -12.0, rate)
    for read, write in ticks(rate, said, heard):
        rec.on_audio(read, write)
    rec.stop()

    info = stops.only.file
    assert stops.only.cause is RecordingCause.SUCCESS_STOP and stops.only.kept
    assert (info.samples, info.channels, info.duration_ms) == (rate, 2, 1000)
    got_rate, audio = decode(info.path)
    assert got_rate == rate and audio.shape[0] == 2
    assert rate <= audio.shape[1] <= rate + FRAME_SLACK[fmt]
    middle = audio[:, 2000:14000]
    assert peak_hz(middle[0], rate) == pytest.approx(440, abs=3)
    assert peak_hz(middle[1], rate) == pytest.approx(1000, abs=3)
    assert info.size_bytes == info.path.stat().st_size


@pytest.mark.parametrize(
    ("layout", "want_440", "want_1000"),
    [
        (RecordingLayout.SPEAK, True, False),
        (RecordingLayout.LISTEN, False, True),
        (RecordingLayout.BOTH, True, True),
    ],
)
@pytest.mark.parametrize("fmt", [RecordingFormat.WAV, RecordingFormat.MP3])
def test_mono_layouts_carry_the_chosen_side(
    tmp_path: Path, fmt: RecordingFormat, layout: RecordingLayout, want_440: bool, want_1000: bool
) -> None:
    stops = Stops()
    rec = Recorder(
        tmp_path / f"call.{fmt.extension}",
        RecordingOptions(format=fmt, layout=layout, sample_rate=8000),
        on_stop=stops,
    )
    for read, write in ticks(8000, tone(440.0, 1.0, -12.0), tone(1000.0, 1.0, -12.0)):
        rec.on_audio(read, write)
    rec.stop()
    rate, audio = decode(stops.only.file.path)
    assert (rate, audio.shape[0]) == (8000, 1)
    mono = audio[0, 1000:7000]
    assert (band_level(mono, rate, 440.0) > 0.5) is want_440
    assert (band_level(mono, rate, 1000.0) > 0.5) is want_1000


def test_both_saturates_instead_of_wrapping(tmp_path: Path) -> None:
    stops = Stops()
    rec = Recorder(tmp_path / "loud.wav", RecordingOptions(layout=RecordingLayout.BOTH), stops)
    loud = np.full(160, 30000, dtype=np.int16)
    rec.on_audio(loud, loud)
    rec.stop()
    with wave.open(str(stops.only.file.path)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert samples.tolist() == [32767] * 160


@pytest.mark.parametrize("fmt", list(RecordingFormat))
def test_part_file_while_recording_then_the_final_name(
    tmp_path: Path, fmt: RecordingFormat
) -> None:
    final = tmp_path / f"call_recording_abc.{fmt.extension}"
    rec = Recorder(final, RecordingOptions(format=fmt))
    for read, write in ticks(8000, tone(440.0, 0.5), tone(1000.0, 0.5)):
        rec.on_audio(read, write)
    assert rec.part_path == tmp_path / f"call_recording_abc.{fmt.extension}.part"
    assert sorted(p.name for p in tmp_path.iterdir()) == [rec.part_path.name]
    result = rec.stop(RecordingCause.SUCCESS_HANGUP)
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]
    assert result.cause is RecordingCause.SUCCESS_HANGUP and result.kept
    assert result.file.path == final and result.file.duration_ms == 500


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunks=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=8),
    fmt=st.sampled_from(list(RecordingFormat)),
)
def test_any_write_sizes_give_the_whole_audio(
    tmp_path: Path, chunks: list[int], fmt: RecordingFormat
) -> None:
    total = sum(chunks)
    rng = np.random.default_rng(total)
    pcm = (rng.standard_normal(total) * 2000).astype(np.int16)
    path = tmp_path / f"chunks.{fmt.extension}"
    writer = open_recording(path, fmt, 8000, 1)
    pos = 0
    for n in chunks:
        writer.write(pcm[pos : pos + n])
        pos += n
    info = writer.close()
    assert info.samples == total and not writer.part_path.exists()
    if total == 0:
        assert info.empty and path.exists()  # a valid, empty file: closing never fails on it
        return
    _, audio = decode(path)
    if fmt is RecordingFormat.WAV:
        np.testing.assert_array_equal(audio[0].astype(np.int16), pcm)  # bit exact
    else:
        assert total <= audio.shape[1] <= total + FRAME_SLACK[fmt]


# -- when and why it ends ---------------------------------------------------------------


def test_nobody_speaks_no_input_timeout_at_the_initial_timeout(tmp_path: Path) -> None:
    stops = Stops()
    options = RecordingOptions(
        silence=SilenceOptions(initial_timeout_ms=1000, final_timeout_ms=300)
    )
    rec = Recorder(tmp_path / "r.wav", options, stops)
    # what the caller hears (a prompt) is loud: silence is judged on what the caller says
    chunks = ticks(8000, silence(3.0), tone(1000.0, 3.0))
    assert run_until_stopped(rec, chunks) == 50  # 1000 ms of media, at any harness speed
    result = stops.only
    assert result.cause is RecordingCause.NO_INPUT_TIMEOUT
    assert not result.speech_detected
    assert result.file.duration_ms == 1000 and result.kept


def test_speech_then_silence_is_success_silence_after_the_final_timeout(tmp_path: Path) -> None:
    stops = Stops()
    options = RecordingOptions(silence=SilenceOptions(initial_timeout_ms=300, final_timeout_ms=800))
    rec = Recorder(tmp_path / "r.wav", options, stops)
    # 200 ms of quiet (< initial timeout), 600 ms of speech, then silence
    said = np.concatenate([silence(0.2), tone(440.0, 0.6, -20.0), silence(3.0)])
    assert run_until_stopped(rec, ticks(8000, said, silence(3.8))) == (200 + 600 + 800) // 20
    result = stops.only
    assert result.cause is RecordingCause.SUCCESS_SILENCE and result.speech_detected
    assert result.file.duration_ms == 1600


def test_quiet_noise_below_the_threshold_counts_as_silence(tmp_path: Path) -> None:
    stops = Stops()
    options = RecordingOptions(
        silence=SilenceOptions(threshold=500, initial_timeout_ms=400, final_timeout_ms=400)
    )
    rec = Recorder(tmp_path / "r.wav", options, stops)
    hum = tone(300.0, 2.0, -40.0)  # mean |x| ~ 200 (score 200 < 500)
    assert run_until_stopped(rec, ticks(8000, hum, hum)) == 20
    assert stops.only.cause is RecordingCause.NO_INPUT_TIMEOUT


def test_time_limit_stops_at_exactly_that_much_audio(tmp_path: Path) -> None:
    stops = Stops()
    rec = Recorder(tmp_path / "r.wav", RecordingOptions(time_limit=1.01), stops)
    chunks = ticks(8000, tone(440.0, 2.0), tone(1000.0, 2.0))
    assert run_until_stopped(rec, chunks) == 51  # the limit falls inside tick 51
    result = stops.only
    assert result.cause is RecordingCause.SUCCESS_MAXTIME
    with wave.open(str(result.file.path)) as w:
        assert w.getnframes() == 8080 == result.file.samples


def test_shorter_than_min_seconds_is_input_too_short_and_removed(tmp_path: Path) -> None:
    stops = Stops()
    rec = Recorder(
        tmp_path / "r.mp3", RecordingOptions(format=RecordingFormat.MP3, min_seconds=2), stops
    )
    for read, write in ticks(8000, tone(440.0, 1.5), tone(1000.0, 1.5)):
        rec.on_audio(read, write)
    rec.stop()
    result = stops.only
    assert result.cause is RecordingCause.INPUT_TOO_SHORT and not result.kept
    assert result.file.duration_ms == 1500
    assert list(tmp_path.iterdir()) == []


def test_min_seconds_reached_keeps_the_file(tmp_path: Path) -> None:
    stops = Stops()
    rec = Recorder(tmp_path / "r.wav", RecordingOptions(min_seconds=1), stops)
    for read, write in ticks(8000, tone(440.0, 1.0), tone(1000.0, 1.0)):
        rec.on_audio(read, write)
    assert rec.stop().kept and stops.only.cause is RecordingCause.SUCCESS_STOP
    assert (tmp_path / "r.wav").exists()


def test_no_input_timeout_keeps_its_cause_but_a_short_file_is_discarded(tmp_path: Path) -> None:
    stops = Stops()
    options = RecordingOptions(min_seconds=5, silence=SilenceOptions(initial_timeout_ms=1000))
    rec = Recorder(tmp_path / "r.wav", options, stops)
    run_until_stopped(rec, ticks(8000, silence(2.0), silence(2.0)))
    assert stops.only.cause is RecordingCause.NO_INPUT_TIMEOUT and not stops.only.kept
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", list(RecordingFormat))
def test_stopped_before_any_audio_is_empty_file(tmp_path: Path, fmt: RecordingFormat) -> None:
    stops = Stops()
    rec = Recorder(tmp_path / f"r.{fmt.extension}", RecordingOptions(format=fmt), stops)
    result = rec.stop(RecordingCause.SUCCESS_HANGUP)
    assert result.cause is RecordingCause.EMPTY_FILE and result.file.empty and not result.kept
    assert list(tmp_path.iterdir()) == []


def test_stop_reports_once_and_later_audio_is_ignored(tmp_path: Path) -> None:
    stops = Stops()
    rec = Recorder(tmp_path / "r.wav", RecordingOptions(time_limit=10), stops)
    chunks = ticks(8000, tone(440.0, 1.0), tone(1000.0, 1.0))
    for read, write in chunks[:25]:
        rec.on_audio(read, write)
    first = rec.stop(RecordingCause.SUCCESS_STOP)
    assert rec.stop(RecordingCause.SUCCESS_HANGUP) is first
    for read, write in chunks[25:]:
        rec.on_audio(read, write)  # the engine may call once more before it is detached
    assert stops.only is first and first.cause is RecordingCause.SUCCESS_STOP
    with wave.open(str(first.file.path)) as w:
        assert w.getnframes() == 25 * 160


def test_an_on_stop_that_raises_does_not_reach_the_engine(tmp_path: Path) -> None:
    def broken(result: RecordingResult) -> None:
        raise RuntimeError("verb bug")

    options = RecordingOptions(silence=SilenceOptions(initial_timeout_ms=100))
    rec = Recorder(tmp_path / "r.wav", options, broken)
    run_until_stopped(rec, ticks(8000, silence(0.2), silence(0.2)))
    assert rec.result is not None and rec.result.cause is RecordingCause.NO_INPUT_TIMEOUT


@pytest.mark.parametrize("fmt", list(RecordingFormat))
def test_disk_full_ends_with_error_and_never_raises(tmp_path: Path, fmt: RecordingFormat) -> None:
    stops = Stops()
    rec = Recorder(
        tmp_path / f"r.{fmt.extension}", RecordingOptions(format=fmt, sample_rate=16000), stops
    )
    rng = np.random.default_rng(5)
    noise = (rng.standard_normal(16000 * 30) * 6000).astype(np.int16)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Files may not grow past 16 KB: writes fail with EFBIG as on a full disk (Python
    # ignores SIGXFSZ). Restored before anything else writes.
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, hard))
    try:
        fed = run_until_stopped(rec, ticks(16000, noise, noise))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    result = stops.only
    assert result.cause is RecordingCause.ERROR and not result.kept
    assert result.error and "too large" in result.error.lower()
    assert fed < 30 * 50  # noticed while recording, not at the end
    assert list(tmp_path.iterdir()) == []  # no .part, no truncated final file
    rec.on_audio(noise[:320], noise[:320])  # still quiet afterwards
    assert len(stops.results) == 1


def test_a_malformed_tick_ends_with_error_instead_of_raising(tmp_path: Path) -> None:
    stops = Stops()
    rec = Recorder(tmp_path / "r.wav", RecordingOptions(), stops)
    rec.on_audio(np.zeros(7, np.int16), np.zeros(7, np.int16))  # not a 20 ms tick
    assert stops.only.cause is RecordingCause.ERROR and "frames" in (stops.only.error or "")
    assert list(tmp_path.iterdir()) == []


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^sample_rate:"):
        RecordingOptions(sample_rate=11025)
    with pytest.raises(ValueError, match=r"^time_limit:"):
        RecordingOptions(time_limit=0)
    with pytest.raises(ValueError, match=r"^silence_final_timeout:"):
        SilenceOptions(final_timeout_ms=-1)
    with pytest.raises(ValueError, match=r"^layout: must be one of stereo, speak, listen, both"):
        RecordingLayout.parse("left")


# -- constant memory ----------------------------------------------------------------------


def _growth(rec: Recorder, frame: NDArray[np.int16], total: int, baseline_at: int) -> int:
    """Peak traced memory after ``baseline_at`` ticks minus the memory at that point."""
    tracemalloc.start()
    try:
        for k in range(total):
            if k == baseline_at:
                base, _ = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
            rec.on_audio(frame, frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def test_thirty_minutes_of_wav_in_constant_memory(tmp_path: Path) -> None:
    stops = Stops()
    rec = Recorder(tmp_path / "long.wav", RecordingOptions(layout=RecordingLayout.SPEAK), stops)
    frame = tone(440.0, 0.02)
    # 90,000 ticks = 30 min. Keeping the audio would grow 24 MB from minute 5 to 30;
    # 1 MB leaves room for the allocator, not for anything that grows with length.
    assert _growth(rec, frame, 90_000, baseline_at=15_000) < 1_000_000
    rec.stop()
    assert stops.only.file.duration_ms == 30 * 60 * 1000
    assert stops.only.file.size_bytes == 44 + 90_000 * 320


def test_mp3_encoding_in_constant_memory(tmp_path: Path) -> None:
    stops = Stops()
    rec = Recorder(
        tmp_path / "long.mp3",
        RecordingOptions(format=RecordingFormat.MP3, layout=RecordingLayout.SPEAK),
        stops,
    )
    frame = tone(440.0, 0.02)
    # 4 minutes (12,000 ticks) measured from minute 1: the encoded file is ~470 KB,
    # the raw audio ~3.8 MB; neither may pile up in Python memory (C-side buffers of
    # FFmpeg are not traced; their size is fixed per stream).
    assert _growth(rec, frame, 15_000, baseline_at=3_000) < 300_000
    rec.stop()
    assert stops.only.kept and stops.only.file.duration_ms == 5 * 60 * 1000


# -- through the real engine ----------------------------------------------------------


def test_recording_a_leg_through_the_media_engine(tmp_path: Path) -> None:
    engine = MediaEngine(4)
    leg = Leg(call_sid="c1", codec="PCMU/8000", payload_type=0)
    engine.add_leg(leg)
    said = tone(440.0, 1.4, -12.0)
    encoder = get_codec("PCMU/8000").new_encoder(20)
    packets = [
        build_packet(
            0, i == 0, i, 1000 + i * 160, 0x1234, encoder.encode(said[i * 160 : (i + 1) * 160])
        )
        for i in range(said.shape[0] // 160)
    ]
    leg.playback.enqueue(tone(1000.0, 2.0, -12.0))  # what the caller hears
    stops = Stops()
    # 16 kHz stereo on an 8 kHz leg: the engine resamples for the recorder
    rec = Recorder(tmp_path / "call_recording_c1.wav", RecordingOptions(sample_rate=16000), stops)
    leg.listeners.append(rec)
    for t in range(60):
        if t < len(packets):
            leg.receive_datagram(packets[t], t * TICK_S)
        engine.tick(t * TICK_S)
    rec.stop(RecordingCause.SUCCESS_HANGUP)

    result = stops.only
    assert result.cause is RecordingCause.SUCCESS_HANGUP
    assert result.speech_detected
    rate, audio = decode(result.file.path)
    assert rate == 16000 and audio.shape == (2, 60 * 320)  # one tick of audio per tick
    middle = audio[:, 6000:18000]  # after the jitter-buffer delay
    assert peak_hz(middle[0], rate) == pytest.approx(440, abs=3)
    assert peak_hz(middle[1], rate) == pytest.approx(1000, abs=3)
