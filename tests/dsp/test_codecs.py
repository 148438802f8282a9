"""Codec registry and codecs: what a call hears after encode/decode, and bad input."""

from __future__ import annotations

import shutil
import subprocess
import warnings
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray
from scipy.signal import correlate, resample_poly

from dsp.codecs import (
    OPUS_PTIMES_MS,
    Codec,
    CodecError,
    PayloadError,
    PcmError,
    UnsupportedCodecError,
    UnsupportedPtimeError,
    _mono_int16,
    get_codec,
    supported_codecs,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

# What SDP and RFC 3551 / RFC 7587 say about each codec:
# key -> (clock rate, PCM sample rate, channels signalled, static payload type).
SPEC: dict[str, tuple[int, int, int, int | None]] = {
    "PCMU/8000": (8000, 8000, 1, 0),
    "PCMA/8000": (8000, 8000, 1, 8),
    "G722/8000": (8000, 16000, 1, 9),
    "opus/48000/2": (48000, 48000, 2, None),
    "L16/8000": (8000, 8000, 1, None),
    "L16/16000": (16000, 16000, 1, None),
}
# key -> {ptime: (PCM samples per packet, RTP timestamp increment)}.
FRAMING: dict[str, dict[int, tuple[int, int]]] = {
    "PCMU/8000": {20: (160, 160), 30: (240, 240)},
    "PCMA/8000": {20: (160, 160), 30: (240, 240)},
    "G722/8000": {20: (320, 160), 30: (480, 240)},
    "opus/48000/2": {20: (960, 960), 30: (1440, 1440)},
    "L16/8000": {20: (160, 160), 30: (240, 240)},
    "L16/16000": {20: (320, 320), 30: (480, 480)},
}
STATELESS = ["PCMU/8000", "PCMA/8000", "L16/8000", "L16/16000"]
STATEFUL = ["G722/8000", "opus/48000/2"]
# Longest plausible codec delay to search when aligning output with input.
MAX_DELAY_MS = {"G722/8000": 5, "opus/48000/2": 20}


# --- registry -----------------------------------------------------------------


@pytest.mark.parametrize("key", list(SPEC))
def test_every_supported_key_resolves_to_its_rtp_description(key: str) -> None:
    info = get_codec(key).info
    assert info.key == key
    assert (info.clock_rate, info.sample_rate, info.channels, info.static_payload_type) == SPEC[key]


def test_supported_codecs_lists_each_codec_once() -> None:
    assert [info.key for info in supported_codecs()] == list(SPEC)


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("pcmu/8000", "PCMU/8000"),
        ("Pcma/8000", "PCMA/8000"),
        ("g722/8000", "G722/8000"),
        ("OPUS/48000/2", "opus/48000/2"),
        ("opus/48000", "opus/48000/2"),
        ("l16/16000", "L16/16000"),
        ("L16/8000/1", "L16/8000"),
        ("PCMU/8000/1", "PCMU/8000"),
        (" PCMU/8000 ", "PCMU/8000"),
    ],
)
def test_rtpmap_spellings_are_case_insensitive_and_channel_count_optional(
    spelling: str, key: str
) -> None:
    assert get_codec(spelling) is get_codec(key)


@pytest.mark.parametrize("key", ["G729/8000", "PCMU/16000", "opus/48000/1", "L16/8000/2", ""])
def test_unknown_key_error_names_the_key_and_the_supported_ones(key: str) -> None:
    with pytest.raises(UnsupportedCodecError) as caught:
        get_codec(key)
    assert isinstance(caught.value, ValueError)
    assert caught.value.key == key
    message = str(caught.value)
    assert repr(key) in message
    assert all(supported in message for supported in SPEC)


@pytest.mark.parametrize("key", list(FRAMING))
@pytest.mark.parametrize("ptime_ms", [20, 30])
def test_framing_for_20_and_30_ms_ptime(key: str, ptime_ms: int) -> None:
    info = get_codec(key).info
    samples, increment = FRAMING[key][ptime_ms]
    assert info.samples_per_frame(ptime_ms) == samples
    assert info.timestamp_increment(ptime_ms) == increment


@pytest.mark.parametrize("ptime_ms", [0, -20])
def test_nonpositive_ptime_is_rejected(ptime_ms: int) -> None:
    codec = get_codec("PCMU/8000")
    with pytest.raises(UnsupportedPtimeError):
        codec.info.samples_per_frame(ptime_ms)
    with pytest.raises(UnsupportedPtimeError):
        codec.new_encoder(ptime_ms)


def test_opus_refuses_a_ptime_it_cannot_frame() -> None:
    with pytest.raises(UnsupportedPtimeError, match="30 ms"):
        get_codec("opus/48000/2").new_encoder(30)


# --- helpers -------------------------------------------------------------------


def frames_of(signal: NDArray[np.int16], samples: int) -> list[NDArray[np.int16]]:
    whole = len(signal) // samples * samples
    return list(signal[:whole].reshape(-1, samples))


def round_trip(codec: Codec, signal: NDArray[np.int16], ptime_ms: int) -> NDArray[np.int16]:
    """Encode frame by frame, decode each payload; every decoded frame must be one ptime."""
    samples = codec.info.samples_per_frame(ptime_ms)
    encoder, decoder = codec.new_encoder(ptime_ms), codec.new_decoder()
    decoded = []
    for frame in frames_of(signal, samples):
        pcm = decoder.decode(encoder.encode(frame))
        assert pcm.dtype == np.int16
        assert pcm.shape == (samples,)
        decoded.append(pcm)
    return np.concatenate(decoded)


def aligned_correlation(
    sent: NDArray[np.int16], heard: NDArray[np.int16], rate: int, max_delay_ms: int
) -> tuple[float, int]:
    """Correlation of ``heard`` with ``sent`` once the codec delay is taken out.

    The delay is found per 100 ms block (Opus shifts it by a few samples when
    it switches between its SILK and CELT modes); the blocks, aligned, are
    then correlated as one signal. The first 100 ms are left out: encoders
    start from silence. Returns the correlation and the median delay.
    """
    x = sent.astype(np.float64)
    y = heard.astype(np.float64)
    block = rate // 10
    max_lag = rate * max_delay_ms // 1000
    sent_blocks, heard_blocks, lags = [], [], []
    for start in range(block, len(y) - block - max_lag + 1, block):
        window = x[start : start + block]
        candidates = y[start : start + block + max_lag]
        energy = np.convolve(candidates**2, np.ones(block), mode="valid")
        scores = correlate(candidates, window, mode="valid") / np.sqrt(energy + 1.0)
        lag = int(np.argmax(scores))
        sent_blocks.append(window)
        heard_blocks.append(y[start + lag : start + lag + block])
        lags.append(lag)
    r = float(np.corrcoef(np.concatenate(sent_blocks), np.concatenate(heard_blocks))[0, 1])
    return r, int(np.median(lags))


def tone(rate: int, seconds: float = 1.0, hz: float = 1000.0) -> NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    signal: NDArray[np.int16] = np.rint(10000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return signal


def chirp(rate: int, seconds: float = 1.0) -> NDArray[np.int16]:
    # 200 Hz to 3.4 kHz: the telephone band, every frequency a voice uses.
    t = np.arange(int(rate * seconds)) / rate
    sweep = 200 * t + (3400 - 200) / (2 * seconds) * t**2
    signal: NDArray[np.int16] = np.rint(8000 * np.sin(2 * np.pi * sweep)).astype(np.int16)
    return signal


@pytest.fixture(scope="module")
def speech_22k(tmp_path_factory: pytest.TempPathFactory) -> NDArray[np.int16]:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed")
    path = Path(tmp_path_factory.mktemp("speech")) / "speech.wav"
    text = "Your call is being recorded. Please say your account number after the tone."
    subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path)) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        assert wav.getframerate() == 22050
        frames = wav.readframes(wav.getnframes())
    speech: NDArray[np.int16] = np.frombuffer(frames, dtype="<i2").astype(np.int16)
    return speech


def at_rate(signal_22k: NDArray[np.int16], rate: int) -> NDArray[np.int16]:
    up, down = rate // 50, 22050 // 50  # 22050 -> 16000 or 48000
    resampled = resample_poly(signal_22k.astype(np.float64), up, down)
    signal: NDArray[np.int16] = np.clip(np.rint(resampled), -32768, 32767).astype(np.int16)
    return signal


# --- G.722 and Opus: what the far end hears ---------------------------------------


@pytest.mark.parametrize("key", STATEFUL)
@pytest.mark.parametrize("make_signal", [tone, chirp], ids=["tone_1kHz", "chirp"])
def test_stateful_codec_round_trip_keeps_the_waveform(
    key: str, make_signal: Callable[[int], NDArray[np.int16]]
) -> None:
    codec = get_codec(key)
    rate = codec.info.sample_rate
    sent = make_signal(rate)
    heard = round_trip(codec, sent, 20)
    r, _ = aligned_correlation(sent, heard, rate, MAX_DELAY_MS[key])
    assert r >= 0.95


@pytest.mark.parametrize("key", STATEFUL)
def test_stateful_codec_round_trip_keeps_speech(key: str, speech_22k: NDArray[np.int16]) -> None:
    codec = get_codec(key)
    rate = codec.info.sample_rate
    sent = at_rate(speech_22k, rate)
    heard = round_trip(codec, sent, 20)
    r, lag = aligned_correlation(sent, heard, rate, MAX_DELAY_MS[key])
    assert r >= 0.95
    assert lag < rate * MAX_DELAY_MS[key] // 1000  # a real delay was found, not the edge


@pytest.mark.parametrize(("key", "ptime_ms"), [("G722/8000", 30), ("opus/48000/2", 40)])
def test_other_ptimes_produce_one_payload_per_packet(key: str, ptime_ms: int) -> None:
    codec = get_codec(key)
    rate = codec.info.sample_rate
    sent = chirp(rate)
    heard = round_trip(codec, sent, ptime_ms)
    r, _ = aligned_correlation(sent, heard, rate, MAX_DELAY_MS[key])
    assert r >= 0.95


def test_g722_payload_is_one_byte_per_two_16khz_samples() -> None:
    # 64 kbit/s: a 20 ms packet is 160 bytes, a 30 ms one 240 bytes.
    codec = get_codec("G722/8000")
    for ptime_ms, size in ((20, 160), (30, 240)):
        encoder = codec.new_encoder(ptime_ms)
        frame = np.zeros(codec.info.samples_per_frame(ptime_ms), dtype=np.int16)
        assert [len(encoder.encode(frame)) for _ in range(3)] == [size] * 3


@pytest.mark.parametrize("ptime_ms", OPUS_PTIMES_MS)
def test_opus_encodes_every_ptime_it_advertises(ptime_ms: int) -> None:
    codec = get_codec("opus/48000/2")
    samples = codec.info.samples_per_frame(ptime_ms)
    payload = codec.new_encoder(ptime_ms).encode(np.zeros(samples, dtype=np.int16))
    assert codec.new_decoder().decode(payload).shape == (samples,)


@pytest.mark.parametrize("key", STATEFUL)
def test_each_leg_keeps_its_own_codec_state(key: str) -> None:
    # Two calls coded in interleaved ticks must sound exactly as if each ran
    # alone: no state (and so no crosstalk) shared between legs.
    codec = get_codec(key)
    rate = codec.info.sample_rate
    samples = codec.info.samples_per_frame(20)
    calls = [tone(rate, 0.2, 440.0), chirp(rate, 0.2)]

    def alone(signal: NDArray[np.int16]) -> list[NDArray[np.int16]]:
        encoder, decoder = codec.new_encoder(20), codec.new_decoder()
        return [decoder.decode(encoder.encode(f)) for f in frames_of(signal, samples)]

    encoders = [codec.new_encoder(20) for _ in calls]
    decoders = [codec.new_decoder() for _ in calls]
    together: list[list[NDArray[np.int16]]] = [[], []]
    for tick_frames in zip(*(frames_of(s, samples) for s in calls), strict=True):
        for leg, frame in enumerate(tick_frames):
            together[leg].append(decoders[leg].decode(encoders[leg].encode(frame)))
    for leg, signal in enumerate(calls):
        np.testing.assert_array_equal(np.concatenate(together[leg]), np.concatenate(alone(signal)))


def test_stereo_opus_from_the_far_end_is_heard_as_mono() -> None:
    # RFC 7587 lets a sender use stereo; we must still deliver one channel.
    rate, samples = 48000, 960
    left = chirp(rate).astype(np.int32)
    right = tone(rate).astype(np.int32) // 2
    stereo = np.stack([left, right], axis=1).astype(np.int16)
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = rate, "stereo", "s16"
    encoder.bit_rate = 128_000
    encoder.open()
    decoder = get_codec("opus/48000/2").new_decoder()
    heard = []
    for pts, start in enumerate(range(0, rate - samples + 1, samples)):
        frame = av.AudioFrame.from_ndarray(
            stereo[start : start + samples].reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = rate, pts * samples
        for packet in encoder.encode(frame):
            pcm = decoder.decode(bytes(packet))
            assert pcm.shape == (samples,)
            heard.append(pcm)
    mix = ((left + right) // 2).astype(np.int16)
    r, _ = aligned_correlation(mix, np.concatenate(heard), rate, MAX_DELAY_MS["opus/48000/2"])
    assert r >= 0.95


@pytest.mark.parametrize(
    ("layout", "sample_format"),
    [("stereo", "s16"), ("stereo", "s16p"), ("stereo", "fltp"), ("stereo", "flt"), ("mono", "flt")],
)
def test_decoded_frames_in_any_layout_become_mono_int16(layout: str, sample_format: str) -> None:
    # Whatever FFmpeg hands back (a stereo stream, a float decoder), the leg
    # gets mono int16 at full scale: the average of the channels.
    left = np.array([1000, -2000, 30000, -32768, 7], dtype=np.int16)
    right = np.array([3000, 2000, 30000, -32768, 7], dtype=np.int16)
    channels = [left, right] if layout == "stereo" else [left]
    planes: NDArray[Any] = np.stack(channels)
    if sample_format.startswith("flt"):
        planes = planes.astype(np.float32) / 32768
    if not sample_format.endswith("p"):
        planes = planes.T.reshape(1, -1)  # packed: channels interleaved in one row
    frame = av.AudioFrame.from_ndarray(planes, format=sample_format, layout=layout)
    expected = np.mean(np.stack(channels).astype(np.float64), axis=0)
    mono = _mono_int16(frame)
    assert mono.dtype == np.int16
    np.testing.assert_array_equal(mono, expected.astype(np.int16))


# --- G.711 and L16: stateless, batchable ---------------------------------------------


@pytest.mark.parametrize(
    ("key", "reference"), [("PCMU/8000", audioop.ulaw2lin), ("PCMA/8000", audioop.alaw2lin)]
)
def test_g711_payloads_decode_like_audioop(key: str, reference: object) -> None:
    payload = bytes(range(256))
    expected = np.frombuffer(reference(payload, 2), dtype=np.int16)  # type: ignore[operator]
    codec = get_codec(key)
    np.testing.assert_array_equal(codec.new_decoder().decode(payload), expected)
    assert codec.batch is not None
    batch = np.frombuffer(payload * 3, dtype=np.uint8).reshape(3, 256)
    np.testing.assert_array_equal(codec.batch.decode_batch(batch), np.tile(expected, (3, 1)))


def test_l16_is_big_endian_on_the_wire() -> None:
    codec = get_codec("L16/8000")
    encoder = codec.new_encoder(20)
    pcm = np.zeros(160, dtype=np.int16)
    pcm[:3] = [1, -2, 0x1234]
    payload = encoder.encode(pcm)
    assert len(payload) == 320
    assert payload[:6] == b"\x00\x01\xff\xfe\x12\x34"
    np.testing.assert_array_equal(codec.new_decoder().decode(payload), pcm)


@given(
    pcm=hnp.arrays(np.int16, st.tuples(st.integers(1, 8), st.integers(0, 400))),
    key=st.sampled_from(["L16/8000", "L16/16000"]),
)
def test_l16_round_trip_is_exact(pcm: NDArray[np.int16], key: str) -> None:
    codec = get_codec(key)
    assert codec.batch is not None
    payloads = codec.batch.encode_batch(pcm)
    assert payloads.dtype == np.uint8
    assert payloads.shape == (pcm.shape[0], 2 * pcm.shape[1])
    np.testing.assert_array_equal(codec.batch.decode_batch(payloads), pcm)
    decoder = codec.new_decoder()
    for row, payload in zip(pcm, payloads, strict=True):
        if len(payload):
            np.testing.assert_array_equal(decoder.decode(payload.tobytes()), row)


@pytest.mark.parametrize("key", STATELESS)
def test_batch_and_per_leg_coding_agree(key: str) -> None:
    codec = get_codec(key)
    assert codec.batch is not None
    samples = codec.info.samples_per_frame(20)
    rng = np.random.default_rng(3)
    pcm = rng.integers(-32768, 32768, size=(5, samples)).astype(np.int16)
    payloads = codec.batch.encode_batch(pcm)
    encoder, decoder = codec.new_encoder(20), codec.new_decoder()
    for row, payload in zip(pcm, payloads, strict=True):
        assert encoder.encode(row) == payload.tobytes()
        np.testing.assert_array_equal(
            decoder.decode(payload.tobytes()), codec.batch.decode_batch(payload.reshape(1, -1))[0]
        )


@pytest.mark.parametrize("key", STATEFUL)
def test_stateful_codecs_have_no_batch_path(key: str) -> None:
    assert get_codec(key).batch is None


# --- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("key", list(SPEC))
def test_empty_payload_is_rejected_and_the_leg_keeps_decoding(key: str) -> None:
    codec = get_codec(key)
    decoder = codec.new_decoder()
    samples = codec.info.samples_per_frame(20)
    good = codec.new_encoder(20).encode(tone(codec.info.sample_rate)[:samples])
    with pytest.raises(PayloadError, match="empty"):
        decoder.decode(b"")
    assert decoder.decode(good).shape == (samples,)


@pytest.mark.parametrize("key", ["L16/8000", "L16/16000"])
def test_odd_length_l16_is_rejected(key: str) -> None:
    codec = get_codec(key)
    with pytest.raises(PayloadError, match="odd"):
        codec.new_decoder().decode(b"\x00\x01\x02")
    assert codec.batch is not None
    with pytest.raises(PayloadError, match="odd"):
        codec.batch.decode_batch(np.zeros((2, 3), dtype=np.uint8))


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x03\xff\xff", b"\xff" * 200])
def test_corrupt_opus_is_rejected_and_the_leg_keeps_decoding(garbage: bytes) -> None:
    codec = get_codec("opus/48000/2")
    decoder = codec.new_decoder()
    good = codec.new_encoder(20).encode(tone(48000)[:960])
    with pytest.raises(PayloadError):
        decoder.decode(garbage)
    assert decoder.decode(good).shape == (960,)


@pytest.mark.parametrize("key", list(SPEC))
@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=0, max_size=400))
def test_any_payload_decodes_or_raises_payload_error(key: str, payload: bytes) -> None:
    decoder = get_codec(key).new_decoder()
    try:
        pcm = decoder.decode(payload)
    except PayloadError:
        return
    assert pcm.dtype == np.int16
    assert pcm.ndim == 1


@pytest.mark.parametrize("key", list(SPEC))
def test_encoders_reject_pcm_that_is_not_one_frame_of_mono_int16(key: str) -> None:
    codec = get_codec(key)
    samples = codec.info.samples_per_frame(20)
    encoder = codec.new_encoder(20)
    for bad in (
        np.zeros(samples, dtype=np.float32),
        np.zeros(samples, dtype=np.int32),
        np.zeros(samples - 1, dtype=np.int16),
        np.zeros((2, samples), dtype=np.int16),
        [0] * samples,
    ):
        with pytest.raises(PcmError):
            encoder.encode(bad)  # type: ignore[arg-type]
    assert len(encoder.encode(np.zeros(samples, dtype=np.int16))) > 0


@pytest.mark.parametrize("key", STATELESS)
def test_batch_paths_reject_wrong_dtypes_and_shapes(key: str) -> None:
    batch = get_codec(key).batch
    assert batch is not None
    with pytest.raises(PayloadError):
        batch.decode_batch(np.zeros((2, 160), dtype=np.int16))
    with pytest.raises(PayloadError):
        batch.decode_batch(np.zeros(160, dtype=np.uint8))
    with pytest.raises(PcmError):
        batch.encode_batch(np.zeros((2, 160), dtype=np.float32))
    with pytest.raises(PcmError):
        batch.encode_batch(np.zeros(160, dtype=np.int16))


@pytest.mark.parametrize("key", list(SPEC))
def test_non_bytes_payload_is_rejected(key: str) -> None:
    with pytest.raises(PayloadError):
        get_codec(key).new_decoder().decode("PCMU")  # type: ignore[arg-type]


def test_every_error_is_a_value_error() -> None:
    for error in (UnsupportedCodecError, UnsupportedPtimeError, PayloadError, PcmError):
        assert issubclass(error, CodecError)
    assert issubclass(CodecError, ValueError)
