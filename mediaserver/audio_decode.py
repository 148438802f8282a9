"""Whole audio files and clips to mono int16 PCM at a rate the engine uses.

Owns decoding the audio the server is *given* (``play`` prompts, a fork's
``playAudio`` WAV clips) and fitting it to a leg: 16-bit PCM WAV at one of
the resampler's rates is read with the stdlib and resampled by
:mod:`dsp.resample`; anything else (other WAV sample formats such as 8-bit or
mu-law, and rates outside that set such as 44.1, 22.05 or 11.025 kHz, which
TTS services and desktop tools write; MP3, Ogg, ...) goes through PyAV
(FFmpeg's libswresample) to 48 kHz first. Multi-channel audio is averaged to
mono. This is whole-file work, off the tick: callers with large inputs run
it in a worker thread.

Must not: touch the network or the file system (callers fetch the bytes).
"""

from __future__ import annotations

import io
import wave

import numpy as np
from numpy.typing import NDArray

from dsp.resample import SUPPORTED_RATES, Resampler

__all__ = ["AudioDecodeError", "decode_audio", "resample_whole"]

FALLBACK_RATE = 48000
"""Rate of whatever PyAV decodes (the highest telephony rate FFmpeg's input usually has)."""


MIN_RATE, MAX_RATE = 1000, 384000
"""Sample rates (Hz) a WAV may declare; anything else is a damaged or hostile header."""


class AudioDecodeError(ValueError):
    """Bytes that hold no audio we can play; the message says why (callers add whose)."""


def resample_whole(pcm: NDArray[np.int16], rate: int, out_rate: int) -> NDArray[np.int16]:
    """A whole mono signal from ``rate`` to ``out_rate`` (both resampler rates), delay removed."""
    if rate == out_rate or pcm.size == 0:
        return pcm
    rs = Resampler(1, rate, out_rate)
    tail = int(np.ceil(rs.delay * rate / out_rate)) + rs.period * 2
    out = rs.process_int16(np.concatenate([pcm, np.zeros(tail, np.int16)])[None, :])[0]
    start = round(rs.delay)
    trimmed: NDArray[np.int16] = out[start : start + round(pcm.size * out_rate / rate)]
    return trimmed


def _is_wav(data: bytes) -> bool:
    return data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE"


def _mono(pcm: NDArray[np.int16], channels: int) -> NDArray[np.int16]:
    if channels <= 1:
        return pcm
    frames = pcm[: pcm.size // channels * channels].reshape(-1, channels)
    mixed: NDArray[np.int16] = frames.astype(np.int32).mean(axis=1).astype(np.int16)
    return mixed


def _pcm16_wav(data: bytes) -> tuple[NDArray[np.int16], int] | None:
    """Mono samples and rate of a 16-bit PCM WAV as the stdlib reads it; None for any other file."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate, channels = w.getframerate(), w.getnchannels()
            if w.getsampwidth() != 2:
                return None
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)
    except Exception:  # wave raises wave.Error, EOFError, RuntimeError... on damaged files
        return None  # not a PCM WAV the stdlib reads (mu-law, float, damaged): FFmpeg decides
    return _mono(pcm, channels), rate


def _swr(pcm: NDArray[np.int16], rate: int) -> NDArray[np.int16]:
    """``pcm`` from any ``rate`` to ``FALLBACK_RATE`` through libswresample, as one frame.

    One frame, not the container's many small ones: PyAV's per-frame cost made
    a 5 s 44.1 kHz clip take ~16 ms through the demuxer and ~5 ms this way.
    """
    import av  # only here: keeps FFmpeg's start-up off the common path

    if pcm.size == 0:
        return pcm
    resampler = av.AudioResampler(format="s16", layout="mono", rate=FALLBACK_RATE)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm)[None, :], format="s16",
                                       layout="mono")  # fmt: skip
    frame.sample_rate = rate
    out = [*resampler.resample(frame), *resampler.resample(None)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in out]).astype(np.int16)


def decode_audio(data: bytes, *, wav_only: bool = False) -> tuple[NDArray[np.int16], int]:
    """Mono int16 PCM and its rate (one of ``SUPPORTED_RATES``) from a whole file's bytes.

    ``wav_only`` accepts only RIFF/WAVE files (what a ``playAudio`` of type
    wav may hold), whatever their sample format and rate.
    """
    if wav_only and not _is_wav(data):
        raise AudioDecodeError("not a wav file (no RIFF/WAVE header)")
    pcm16 = _pcm16_wav(data)
    if pcm16 is not None:
        pcm, rate = pcm16
        if rate in SUPPORTED_RATES:
            return pcm, rate
        if not MIN_RATE <= rate <= MAX_RATE:
            raise AudioDecodeError(f"sample rate {rate} Hz is outside {MIN_RATE}..{MAX_RATE}")
        return _swr(pcm, rate), FALLBACK_RATE
    import av  # only here: keeps FFmpeg's start-up off the common PCM16 path

    chunks: list[NDArray[np.generic]] = []  # s16 frames, whatever PyAV declares
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=FALLBACK_RATE)
            for frame in container.decode(container.streams.audio[0]):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except (av.error.FFmpegError, IndexError) as exc:
        raise AudioDecodeError(f"not audio FFmpeg can decode ({exc})") from None
    if not chunks:
        raise AudioDecodeError("no audio in it")
    return np.concatenate(chunks).astype(np.int16), FALLBACK_RATE
