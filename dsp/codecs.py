"""RTP audio codecs and the registry that finds them by their SDP rtpmap name.

Owns: the codec registry (``get_codec``, ``supported_codecs``), the codec
description (``CodecInfo``: RTP clock rate vs PCM sample rate, channels as
signalled, static payload type), per-leg ``Decoder``/``Encoder`` objects, the
whole-batch ``BatchCodec`` for stateless codecs, and the exceptions raised
for bad input.

Supported (keys are case-insensitive on the name)::

    PCMU/8000  PCMA/8000   G.711 by table lookup (dsp.g711); batchable
    L16/8000  L16/16000    RFC 3551 linear PCM, big-endian, mono; batchable
    G722/8000              16 kHz audio on an 8000 Hz RTP clock (RFC 3551 quirk)
    opus/48000/2           RFC 7587: always signalled as 2 channels; we decode
                           to mono and encode mono (48 kHz)

A mono codec is also found with an explicit ``/1`` channel count
(``PCMU/8000/1``) and Opus without one (``opus/48000``).

Stateless codecs (G.711, L16) carry a ``BatchCodec``: the engine converts the
payloads of all its legs with one numpy call per tick (``[legs, bytes]`` to
``[legs, samples]`` and back). G.722 and Opus keep per-leg state (ADPCM
predictors, Opus range coder and lookahead) inside a PyAV/FFmpeg codec
context, so each leg gets its own ``Decoder``/``Encoder`` and the engine calls
them once per leg per tick: that Python loop is unavoidable and is not where
the time goes (FFmpeg's own coding dominates; ``bench/dsp_codecs.py`` measures
the per-frame cost). All codecs expose the same per-leg interface.

Encoders take exactly one ptime of mono int16 PCM and return exactly one RTP
payload; they never buffer, so nothing is left to flush when a call ends (the
codec's lookahead is a delay, not a buffer: G.722 about 22 samples at 16 kHz,
Opus 312 samples at 48 kHz in this configuration). Opus can only frame 10, 20,
40, 60, 80, 100 or 120 ms. Decoders return the mono int16 PCM at
``info.sample_rate`` that the payload holds (an Opus packet says its own
duration). Packet-loss concealment is not done here.

Exceptions (all ``ValueError``, so one ``except ValueError`` guards a leg)::

    CodecError
    ├── UnsupportedCodecError   key not in the registry (names key and the supported ones)
    ├── UnsupportedPtimeError   ptime the codec cannot frame (<= 0 ms; Opus 30 ms, ...)
    ├── PayloadError            payload cannot be decoded: empty, odd-length L16, corrupt
    │                           Opus, batch payloads that are not a 2-D uint8 array
    └── PcmError                PCM to encode is not int16, not mono, or not one ptime long

G.722 has no invalid code words: any non-empty payload decodes (garbage
becomes noise), so only an empty one raises ``PayloadError``.

Must not: parse SDP or RTP headers, negotiate payload types, resample, do
I/O, read a clock or log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

import av
import numpy as np
from av.error import FFmpegError
from numpy.typing import NDArray

from dsp.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

__all__ = [
    "OPUS_APPLICATION",
    "OPUS_BIT_RATE",
    "OPUS_PTIMES_MS",
    "BatchCodec",
    "Codec",
    "CodecError",
    "CodecInfo",
    "Decoder",
    "Encoder",
    "PayloadError",
    "PcmError",
    "UnsupportedCodecError",
    "UnsupportedPtimeError",
    "get_codec",
    "supported_codecs",
]

#: Opus encoder bit rate (bit/s): transparent wideband speech, mono.
OPUS_BIT_RATE = 32_000
#: libopus application mode. "audio" keeps the waveform (prompts, beeps and
#: music on hold survive); "voip" favours intelligibility of speech only.
OPUS_APPLICATION = "audio"
#: Packet durations libopus can produce (RFC 6716 frames and multi-frame packets).
OPUS_PTIMES_MS = (10, 20, 40, 60, 80, 100, 120)


class CodecError(ValueError):
    """Base of every error this module raises."""


class UnsupportedCodecError(CodecError):
    """The rtpmap key names no codec in the registry."""

    def __init__(self, key: str, supported: list[str]) -> None:
        self.key = key
        self.supported = supported
        super().__init__(f"unsupported codec {key!r}; supported: {', '.join(supported)}")


class UnsupportedPtimeError(CodecError):
    """The codec cannot frame audio at this packet time."""


class PayloadError(CodecError):
    """An RTP payload that cannot be decoded."""


class PcmError(CodecError):
    """PCM handed to an encoder is not one ptime of mono int16."""


@dataclass(frozen=True)
class CodecInfo:
    """What SDP says about a codec, plus the PCM rate it decodes to."""

    name: str  #: encoding name as conventionally written in SDP ("PCMU", "opus")
    clock_rate: int  #: RTP timestamp rate (8000 for G.722)
    sample_rate: int  #: PCM rate of decoded audio (16000 for G.722, 48000 for Opus)
    channels: int  #: as signalled in SDP (2 for Opus); decoded PCM is always mono
    static_payload_type: int | None  #: 0 PCMU, 8 PCMA, 9 G722; None when dynamic

    @property
    def key(self) -> str:
        """The rtpmap form: ``PCMU/8000``, ``opus/48000/2`` (channels only when > 1)."""
        base = f"{self.name}/{self.clock_rate}"
        return base if self.channels == 1 else f"{base}/{self.channels}"

    def samples_per_frame(self, ptime_ms: int) -> int:
        """Mono PCM samples (at ``sample_rate``) in one packet of ``ptime_ms``."""
        return self.sample_rate * _checked_ptime(ptime_ms) // 1000

    def timestamp_increment(self, ptime_ms: int) -> int:
        """RTP timestamp units (at ``clock_rate``) between packets of ``ptime_ms``."""
        return self.clock_rate * _checked_ptime(ptime_ms) // 1000


def _checked_ptime(ptime_ms: int) -> int:
    if isinstance(ptime_ms, bool) or not isinstance(ptime_ms, int) or ptime_ms <= 0:
        raise UnsupportedPtimeError(
            f"ptime must be a positive whole number of ms, got {ptime_ms!r}"
        )
    return ptime_ms


class Decoder(Protocol):
    """One leg's decoder: RTP payload in, mono int16 PCM at ``info.sample_rate`` out."""

    def decode(self, payload: bytes) -> NDArray[np.int16]: ...


class Encoder(Protocol):
    """One leg's encoder: exactly one ptime of mono int16 PCM in, one RTP payload out."""

    def encode(self, pcm: NDArray[np.int16]) -> bytes: ...


class BatchCodec(Protocol):
    """Whole-batch conversion for stateless codecs (one numpy call for all legs)."""

    def decode_batch(self, payloads: NDArray[np.uint8]) -> NDArray[np.int16]:
        """``[legs, bytes]`` uint8 payloads to ``[legs, samples]`` int16 PCM."""
        ...

    def encode_batch(self, pcm: NDArray[np.int16]) -> NDArray[np.uint8]:
        """``[legs, samples]`` int16 PCM to ``[legs, bytes]`` uint8 payloads."""
        ...


@dataclass(frozen=True)
class Codec:
    """What the registry returns: the description and factories for one codec."""

    info: CodecInfo
    #: Whole-batch decode/encode for stateless codecs; None for G.722 and Opus.
    batch: BatchCodec | None
    _decoder_factory: Callable[[], Decoder] = field(repr=False)
    _encoder_factory: Callable[[int], Encoder] = field(repr=False)
    _ptimes_ms: tuple[int, ...] | None = field(default=None, repr=False)

    def new_decoder(self) -> Decoder:
        """A decoder for one leg (stateful codecs must not share one)."""
        return self._decoder_factory()

    def new_encoder(self, ptime_ms: int = 20) -> Encoder:
        """An encoder for one leg producing one payload per ``ptime_ms`` of audio.

        Raises ``UnsupportedPtimeError`` if the codec cannot frame that ptime.
        """
        _checked_ptime(ptime_ms)
        if self._ptimes_ms is not None and ptime_ms not in self._ptimes_ms:
            allowed = ", ".join(str(p) for p in self._ptimes_ms)
            raise UnsupportedPtimeError(
                f"{self.info.key} cannot frame {ptime_ms} ms packets; use one of {allowed} ms"
            )
        return self._encoder_factory(self.info.samples_per_frame(ptime_ms))


# --- input checks shared by every codec -------------------------------------


def _payload_codes(payload: bytes, key: str) -> NDArray[np.uint8]:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise PayloadError(f"{key} payload must be bytes, got {type(payload).__name__}")
    if len(payload) == 0:
        raise PayloadError(f"{key} payload is empty")
    return np.frombuffer(payload, dtype=np.uint8)


def _batch_codes(payloads: NDArray[np.uint8], key: str) -> NDArray[np.uint8]:
    if not isinstance(payloads, np.ndarray) or payloads.dtype != np.uint8 or payloads.ndim != 2:
        got = (
            f"{payloads.dtype} array of shape {payloads.shape}"
            if isinstance(payloads, np.ndarray)
            else type(payloads).__name__
        )
        raise PayloadError(f"{key} batch payloads must be a 2-D uint8 array, got {got}")
    return payloads


def _frame_pcm(pcm: NDArray[np.int16], samples: int, key: str) -> NDArray[np.int16]:
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16:
        got = pcm.dtype if isinstance(pcm, np.ndarray) else type(pcm).__name__
        raise PcmError(f"{key} encoder takes int16 PCM, got {got}")
    if pcm.shape != (samples,):
        raise PcmError(
            f"{key} encoder takes one frame of {samples} mono samples, got shape {pcm.shape}"
        )
    return pcm


def _batch_pcm(pcm: NDArray[np.int16], key: str) -> NDArray[np.int16]:
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 2:
        got = (
            f"{pcm.dtype} array of shape {pcm.shape}"
            if isinstance(pcm, np.ndarray)
            else type(pcm).__name__
        )
        raise PcmError(f"{key} batch PCM must be a 2-D int16 array [legs, samples], got {got}")
    return pcm


# --- G.711 ------------------------------------------------------------------

_G711Decode = Callable[[NDArray[np.uint8]], NDArray[np.int16]]
_G711Encode = Callable[[NDArray[np.int16]], NDArray[np.uint8]]


@dataclass(frozen=True)
class _G711:
    """Stateless G.711 law: serves as the batch codec and as every leg's coder."""

    key: str
    to_pcm: _G711Decode
    to_codes: _G711Encode
    samples: int = 0  # frame length this instance encodes (0: the batch instance)

    def decode(self, payload: bytes) -> NDArray[np.int16]:
        return self.to_pcm(_payload_codes(payload, self.key))

    def encode(self, pcm: NDArray[np.int16]) -> bytes:
        return self.to_codes(_frame_pcm(pcm, self.samples, self.key)).tobytes()

    def decode_batch(self, payloads: NDArray[np.uint8]) -> NDArray[np.int16]:
        return self.to_pcm(_batch_codes(payloads, self.key))

    def encode_batch(self, pcm: NDArray[np.int16]) -> NDArray[np.uint8]:
        return self.to_codes(_batch_pcm(pcm, self.key))


def _g711_codec(info: CodecInfo, to_pcm: _G711Decode, to_codes: _G711Encode) -> Codec:
    law = _G711(info.key, to_pcm, to_codes)
    return Codec(
        info=info,
        batch=law,
        _decoder_factory=lambda: law,
        _encoder_factory=lambda samples: _G711(info.key, to_pcm, to_codes, samples),
    )


# --- L16 (RFC 3551 section 4.5.11: big-endian two's complement) --------------

_NETWORK_INT16 = np.dtype(">i2")


@dataclass(frozen=True)
class _L16:
    """Stateless mono L16: serves as the batch codec and as every leg's coder."""

    key: str
    samples: int = 0  # frame length this instance encodes (0: the batch instance)

    def decode(self, payload: bytes) -> NDArray[np.int16]:
        codes = _payload_codes(payload, self.key)
        if len(codes) % 2:
            raise PayloadError(f"{self.key} payload has an odd length ({len(codes)} bytes)")
        return codes.view(_NETWORK_INT16).astype(np.int16)

    def encode(self, pcm: NDArray[np.int16]) -> bytes:
        return _frame_pcm(pcm, self.samples, self.key).astype(_NETWORK_INT16).tobytes()

    def decode_batch(self, payloads: NDArray[np.uint8]) -> NDArray[np.int16]:
        codes = _batch_codes(payloads, self.key)
        if codes.shape[1] % 2:
            raise PayloadError(f"{self.key} payloads have an odd length ({codes.shape[1]} bytes)")
        return np.ascontiguousarray(codes).view(_NETWORK_INT16).astype(np.int16)

    def encode_batch(self, pcm: NDArray[np.int16]) -> NDArray[np.uint8]:
        network: NDArray[np.uint8] = _batch_pcm(pcm, self.key).astype(_NETWORK_INT16).view(np.uint8)
        return network


def _l16_codec(info: CodecInfo) -> Codec:
    batch = _L16(info.key)
    return Codec(
        info=info,
        batch=batch,
        _decoder_factory=lambda: batch,
        _encoder_factory=lambda samples: _L16(info.key, samples),
    )


# --- G.722 and Opus through PyAV (FFmpeg) ------------------------------------


def _audio_context(codec_name: str, mode: Literal["r", "w"]) -> av.AudioCodecContext:
    # PyAV types create() by codec name literal; these names are audio codecs.
    return cast(av.AudioCodecContext, av.CodecContext.create(codec_name, mode))


def _mono_int16(frame: av.AudioFrame) -> NDArray[np.int16]:
    """A decoded frame as mono int16 PCM, whatever layout/format FFmpeg chose."""
    channels = frame.layout.nb_channels
    if channels == 1 and frame.format.name == "s16":
        # What our mono decoders produce; ~3 µs cheaper than to_ndarray().
        mono: NDArray[np.int16] = np.frombuffer(
            memoryview(frame.planes[0]), dtype=np.int16, count=frame.samples
        ).copy()
        return mono
    samples = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row, channels interleaved
        samples = samples.reshape(-1, channels).T
    if samples.dtype.kind == "f":  # float formats are normalised to +-1
        samples = np.clip(np.rint(samples * 32768.0), -32768, 32767)
    if channels > 1:
        samples = np.rint(samples.mean(axis=0, dtype=np.float64))
    return np.asarray(samples, dtype=np.int16).reshape(-1)


class _PyAVDecoder:
    """One leg's stateful FFmpeg decoder."""

    def __init__(self, codec_name: str, info: CodecInfo) -> None:
        self._key = info.key
        self._context = _audio_context(codec_name, "r")
        self._context.sample_rate = info.sample_rate
        self._context.layout = "mono"  # libopus downmixes stereo streams itself
        self._context.open()

    def decode(self, payload: bytes) -> NDArray[np.int16]:
        # An empty packet would be taken as end of stream and disable the
        # context for good, so it is rejected before FFmpeg sees it.
        _payload_codes(payload, self._key)
        try:
            frames = self._context.decode(av.Packet(bytes(payload)))
        except FFmpegError as error:  # InvalidDataError for corrupt Opus
            raise PayloadError(f"{self._key} payload could not be decoded: {error}") from error
        if not frames:
            raise PayloadError(f"{self._key} payload decoded to no audio")
        if len(frames) == 1:
            return _mono_int16(frames[0])
        return np.concatenate([_mono_int16(frame) for frame in frames])


class _PyAVEncoder:
    """One leg's stateful FFmpeg encoder, configured to emit one packet per frame."""

    def __init__(
        self,
        codec_name: str,
        info: CodecInfo,
        samples: int,
        options: dict[str, str],
        bit_rate: int | None = None,
    ) -> None:
        self._key = info.key
        self._samples = samples
        self._sample_rate = info.sample_rate
        self._next_pts = 0
        self._context = _audio_context(codec_name, "w")
        self._context.sample_rate = info.sample_rate
        self._context.layout = "mono"
        self._context.format = "s16"
        if bit_rate is not None:
            self._context.bit_rate = bit_rate
        self._context.options = options
        self._context.open()
        if self._context.frame_size not in (0, samples):
            raise UnsupportedPtimeError(
                f"{self._key} encoder frames {self._context.frame_size} samples, not {samples}"
            )

    def encode(self, pcm: NDArray[np.int16]) -> bytes:
        pcm = _frame_pcm(pcm, self._samples, self._key)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self._sample_rate
        frame.pts = self._next_pts
        self._next_pts += self._samples
        packets = self._context.encode(frame)
        if len(packets) == 1:
            return bytes(packets[0])
        return b"".join(bytes(packet) for packet in packets)


def _g722_codec(info: CodecInfo) -> Codec:
    return Codec(
        info=info,
        batch=None,
        _decoder_factory=lambda: _PyAVDecoder("g722", info),
        # FFmpeg's G.722 encoder accepts any even frame size; without it,
        # PyAV re-chunks input to 320 samples and payloads drift off ptime.
        _encoder_factory=lambda samples: _PyAVEncoder(
            "g722", info, samples, {"frame_size": str(samples)}
        ),
    )


def _opus_codec(info: CodecInfo) -> Codec:
    def new_encoder(samples: int) -> Encoder:
        ptime_ms = samples * 1000 // info.sample_rate
        options = {"application": OPUS_APPLICATION, "frame_duration": str(ptime_ms)}
        return _PyAVEncoder("libopus", info, samples, options, bit_rate=OPUS_BIT_RATE)

    return Codec(
        info=info,
        batch=None,
        _decoder_factory=lambda: _PyAVDecoder("libopus", info),
        _encoder_factory=new_encoder,
        _ptimes_ms=OPUS_PTIMES_MS,
    )


# --- the registry -------------------------------------------------------------

_CODECS: tuple[Codec, ...] = (
    _g711_codec(CodecInfo("PCMU", 8000, 8000, 1, 0), ulaw_decode, ulaw_encode),
    _g711_codec(CodecInfo("PCMA", 8000, 8000, 1, 8), alaw_decode, alaw_encode),
    _g722_codec(CodecInfo("G722", 8000, 16000, 1, 9)),
    _opus_codec(CodecInfo("opus", 48000, 48000, 2, None)),
    _l16_codec(CodecInfo("L16", 8000, 8000, 1, None)),
    _l16_codec(CodecInfo("L16", 16000, 16000, 1, None)),
)


def _lookup_keys(info: CodecInfo) -> tuple[str, str]:
    """Both spellings of a key, lower-cased: with and without the channel count."""
    base = f"{info.name}/{info.clock_rate}".lower()
    return base, f"{base}/{info.channels}"


_REGISTRY: dict[str, Codec] = {
    spelling: codec for codec in _CODECS for spelling in _lookup_keys(codec.info)
}


def get_codec(key: str) -> Codec:
    """The codec for an rtpmap encoding (``"PCMU/8000"``, ``"opus/48000/2"``).

    The name is case-insensitive; surrounding whitespace is ignored. Raises
    ``UnsupportedCodecError`` (a ``ValueError``) naming the key and the
    supported ones.
    """
    codec = _REGISTRY.get(key.strip().lower()) if isinstance(key, str) else None
    if codec is None:
        raise UnsupportedCodecError(str(key), [c.info.key for c in _CODECS])
    return codec


def supported_codecs() -> list[CodecInfo]:
    """Every codec the registry knows, one entry per codec (not per spelling)."""
    return [codec.info for codec in _CODECS]
