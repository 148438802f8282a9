"""Decoding the audio the server is given: prompts for ``play``, WAV clips in ``playAudio``."""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from mediaserver import audio_decode
from mediaserver.audio_decode import AudioDecodeError, decode_audio
from mediaserver.listen import PlayAudioError, decode_play_audio
from mediaserver.play import PlayError, load_prompt


def _sine(freq: float, seconds: float, rate: int, amplitude: float = 10000.0) -> NDArray[np.int16]:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _wav(pcm: NDArray[np.int16], rate: int, channels: int = 1, width: int = 2) -> bytes:
    """A PCM WAV; ``pcm`` is [samples] or [samples, channels]; width 1 writes unsigned 8-bit."""
    if width == 2:
        body = pcm.astype("<i2").tobytes()
    else:
        body = ((pcm >> 8) + 128).astype(np.uint8).tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(body)
    return buf.getvalue()


def _mulaw_wav(pcm: NDArray[np.int16], rate: int) -> bytes:
    """A G.711 mu-law WAV (format tag 7), written by FFmpeg."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="wav") as out:
        stream = out.add_stream("pcm_mulaw", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _peak_hz(pcm: NDArray[np.int16], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    return float(np.argmax(spectrum)) * rate / pcm.size


def _rms(pcm: NDArray[np.int16]) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def test_pcm16_wav_at_a_resampler_rate_is_read_without_ffmpeg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    left, right = _sine(700.0, 0.2, 16000), _sine(700.0, 0.2, 16000, amplitude=2000.0)
    data = _wav(np.stack([left, right], axis=1), 16000, channels=2)

    def no_ffmpeg(*args: object, **kwargs: object) -> None:
        raise AssertionError("the PCM16 path must not open FFmpeg")

    monkeypatch.setattr(av, "open", no_ffmpeg)
    pcm, rate = decode_audio(data)
    assert rate == 16000 and pcm.dtype == np.int16
    want = ((left.astype(np.int32) + right) / 2).astype(np.int16)  # channels averaged
    np.testing.assert_array_equal(pcm, want)


@pytest.mark.parametrize("source_rate", [44100, 22050, 11025])
def test_a_wav_at_a_cd_or_tts_rate_comes_out_at_48k_with_its_tone_level_and_length(
    source_rate: int,
) -> None:
    tone = _sine(1000.0, 0.5, source_rate)
    pcm, rate = decode_audio(_wav(tone, source_rate))
    assert rate == audio_decode.FALLBACK_RATE == 48000
    assert pcm.size == pytest.approx(24000, rel=0.01)
    body = pcm[2400:-2400]  # away from the filter's edges
    assert _peak_hz(body, rate) == pytest.approx(1000.0, abs=3.0)
    assert 20 * np.log10(_rms(body) / _rms(tone)) == pytest.approx(0.0, abs=0.5)


@pytest.mark.parametrize("kind", ["8-bit", "mu-law"])
def test_wav_sample_formats_the_stdlib_does_not_read_go_through_ffmpeg(kind: str) -> None:
    tone = _sine(500.0, 0.4, 8000)
    data = _wav(tone, 8000, width=1) if kind == "8-bit" else _mulaw_wav(tone, 8000)
    pcm, rate = decode_audio(data, wav_only=True)
    assert rate == 48000
    assert pcm.size == pytest.approx(19200, rel=0.01)
    assert _peak_hz(pcm[4800:-4800], rate) == pytest.approx(500.0, abs=3.0)
    assert 20 * np.log10(_rms(pcm[4800:-4800]) / _rms(tone)) == pytest.approx(0.0, abs=0.6)


def test_bad_bytes_get_an_error_that_says_why() -> None:
    raw_l16 = _sine(500.0, 0.1, 8000).astype("<i2").tobytes()
    with pytest.raises(AudioDecodeError, match="not a wav file"):
        decode_audio(raw_l16, wav_only=True)
    with pytest.raises(AudioDecodeError, match="not audio FFmpeg can decode"):
        decode_audio(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk", wav_only=True)
    with pytest.raises(AudioDecodeError, match="not audio FFmpeg can decode"):
        decode_audio(b"hello, this is plain text and no audio at all\n" * 4)
    with pytest.raises(AudioDecodeError, match="sample rate 10 Hz is outside"):
        decode_audio(_wav(_sine(1.0, 1.0, 10), 10))


def test_play_audio_takes_a_44k1_stereo_wav_and_fits_it_to_the_leg() -> None:
    tone = _sine(1200.0, 0.3, 44100)
    data = _wav(np.stack([tone, tone], axis=1), 44100, channels=2)
    message = {"audioContent": base64.b64encode(data).decode(), "audioContentType": "wav"}
    pcm = decode_play_audio(message, 8000)
    assert pcm.dtype == np.int16
    assert pcm.size == pytest.approx(2400, abs=30)
    assert _peak_hz(pcm[400:-400], 8000) == pytest.approx(1200.0, abs=10.0)


def test_play_audio_wav_must_be_a_wav() -> None:
    raw = base64.b64encode(_sine(500.0, 0.1, 8000).astype("<i2").tobytes()).decode()
    with pytest.raises(PlayAudioError, match=r"playAudio: not a wav file"):
        decode_play_audio({"audioContent": raw, "audioContentType": "wav"}, 8000)


def test_play_prompt_in_a_44k1_wav_file_plays_at_the_leg_rate(tmp_path: Path) -> None:
    path = tmp_path / "prompt.wav"
    path.write_bytes(_wav(_sine(900.0, 0.5, 44100), 44100))
    pcm = asyncio.run(load_prompt(str(path), 16000))
    assert pcm.size == pytest.approx(8000, abs=80)
    assert _peak_hz(pcm[800:-800], 16000) == pytest.approx(900.0, abs=5.0)
    text = tmp_path / "notes.txt"
    text.write_text("not audio\n" * 20)
    with pytest.raises(PlayError, match=r"play .*notes\.txt: not audio FFmpeg can decode"):
        asyncio.run(load_prompt(str(text), 8000))
