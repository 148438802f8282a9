"""Recordings: one leg's audio turned into a finished WAV, MP3 or MP4 file.

Owns three things used by both ``record_call`` dialects (Kazoo, SignalWire):

- ``RecordingFormat``: ``wav`` | ``mp3`` | ``mp4``, with file extension and
  Content-Type, and a strict ``parse`` (the dialects pick defaults and
  fallbacks, not this module).
- ``open_recording``: a streaming file writer. Audio is encoded as it comes
  (WAV through the standard ``wave`` module, MP3 through LAME and MP4 = AAC
  through PyAV), so memory stays constant whatever the length. The file is
  written as ``<name>.part`` and renamed to ``<name>`` only once complete, so
  a crash never leaves a truncated file that looks finished.
- ``Recorder``: the engine ``LegListener`` that lays out the channels, runs
  FreeSWITCH-style silence timers and the time limit in *media time* (samples
  received, never a clock), and reports exactly one completion cause through
  ``on_stop``.

Completion causes (``RecordingCause``), FreeSWITCH's names where it has one:
``success-silence`` (final silence timeout after speech), ``no-input-timeout``
(initial timeout, nobody spoke), ``success-maxtime`` (time limit),
``success-stop`` (stopped by the verb), ``success-hangup`` (the call ended),
``empty-file`` (nothing recorded), ``input-too-short`` (shorter than
``min_seconds``) and ``error`` (the file could not be written). The
``success-*`` causes become ``empty-file`` / ``input-too-short`` when the
recording is empty / too short; ``no-input-timeout`` is kept (it says more:
nobody spoke) but a too-short file is discarded all the same. Discarded and
failed recordings leave no file behind.

It must not upload, name files after a dialect's rules, read a clock, or
raise into the engine tick: ``Recorder.on_audio`` turns any failure into the
``error`` cause.
"""

from __future__ import annotations

import contextlib
import os
import threading
import wave
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from numpy.typing import NDArray

from dsp.mix import interleave, saturating_sum
from dsp.resample import SUPPORTED_RATES
from dsp.silence import DEFAULT_THRESHOLD, SilenceDetector, SilenceExpiry
from mediaserver.engine import TICK_MS
from mediaserver.logs import get_logger

__all__ = [
    "Recorder",
    "RecordingCause",
    "RecordingFile",
    "RecordingFormat",
    "RecordingInfo",
    "RecordingLayout",
    "RecordingOptions",
    "RecordingResult",
    "SilenceOptions",
    "open_recording",
]

log = get_logger("recording")

PART_SUFFIX = ".part"


class RecordingFormat(StrEnum):
    """A recording file format: the value is also the file extension."""

    WAV = "wav"
    MP3 = "mp3"
    MP4 = "mp4"

    @property
    def extension(self) -> str:
        """File name extension, without the dot."""
        return self.value

    @property
    def content_type(self) -> str:
        """HTTP Content-Type of a file in this format."""
        return _CONTENT_TYPES[self]

    @classmethod
    def parse(cls, value: str) -> RecordingFormat:
        """The format named ``value``; the error names the field and the allowed values."""
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(f.value for f in cls)
            raise ValueError(f"format: must be one of {allowed}, got {value!r}") from None


_CONTENT_TYPES = {
    RecordingFormat.WAV: "audio/wav",
    RecordingFormat.MP3: "audio/mpeg",
    RecordingFormat.MP4: "audio/mp4",
}
# Sample rates each encoder accepts (WAV takes any rate).
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000)


@dataclass(frozen=True, slots=True)
class RecordingInfo:
    """What a closed recording file holds."""

    path: Path  # the finished file (it may since have been discarded: see RecordingResult.kept)
    format: RecordingFormat
    sample_rate: int
    channels: int
    samples: int  # per channel
    size_bytes: int

    @property
    def duration_ms(self) -> int:
        return self.samples * 1000 // self.sample_rate

    @property
    def empty(self) -> bool:
        return self.samples == 0


class RecordingFile(ABC):
    """A recording being written: ``write`` per tick, then ``close`` (or ``abort``).

    ``write`` takes int16 samples interleaved L R L R (mono: just the samples).
    While open the data lives in ``part_path``; ``close`` finishes the file,
    renames it to ``path`` and returns its ``RecordingInfo``; ``abort`` closes
    it quietly and removes what was written.
    """

    def __init__(
        self, path: Path, format: RecordingFormat, sample_rate: int, channels: int
    ) -> None:
        self.path = path
        self.part_path = path.with_name(path.name + PART_SUFFIX)
        self.format = format
        self.sample_rate = sample_rate
        self.channels = channels
        self.samples = 0  # per channel, written so far
        self.closed = False

    def write(self, frames: NDArray[np.int16]) -> None:
        if self.closed:
            raise ValueError("write: the recording is closed")
        pcm = np.ascontiguousarray(frames, dtype="<i2")
        if pcm.ndim != 1 or pcm.shape[0] % self.channels:
            raise ValueError(
                f"frames: need 1-D interleaved samples, a multiple of {self.channels} long, "
                f"got shape {pcm.shape}"
            )
        if pcm.shape[0]:
            self._write(pcm)
            self.samples += pcm.shape[0] // self.channels

    def close(self) -> RecordingInfo:
        """Finish the file and give it its final name."""
        if self.closed:
            raise ValueError("close: the recording is already closed")
        self.closed = True
        try:
            self._finish()
            os.replace(self.part_path, self.path)
        except BaseException:
            self._discard()
            raise
        return RecordingInfo(
            path=self.path,
            format=self.format,
            sample_rate=self.sample_rate,
            channels=self.channels,
            samples=self.samples,
            size_bytes=self.path.stat().st_size,
        )

    def abort(self) -> None:
        """Stop writing and remove the partial file; never raises."""
        if not self.closed:
            self.closed = True
            self._discard()

    def _discard(self) -> None:
        with contextlib.suppress(Exception):
            self._release()
        with contextlib.suppress(OSError):
            self.part_path.unlink()

    @abstractmethod
    def _write(self, pcm: NDArray[np.int16]) -> None: ...

    @abstractmethod
    def _finish(self) -> None:
        """Flush and close the ``.part`` file (complete and valid when this returns)."""

    @abstractmethod
    def _release(self) -> None:
        """Close whatever is open, without caring whether the file is valid."""


class _WavFile(RecordingFile):
    """16-bit PCM WAV; ``wave`` patches the header with the final length at close."""

    def __init__(
        self, path: Path, format: RecordingFormat, sample_rate: int, channels: int
    ) -> None:
        super().__init__(path, format, sample_rate, channels)
        # wave opens (and always closes) the file itself, also when garbage-collected
        self._wav = wave.open(str(self.part_path), "wb")  # noqa: SIM115 - closed in _finish
        try:
            self._wav.setnchannels(channels)
            self._wav.setsampwidth(2)
            self._wav.setframerate(sample_rate)
        except BaseException:
            self._release()
            self.part_path.unlink()
            raise

    def _write(self, pcm: NDArray[np.int16]) -> None:
        self._wav.writeframesraw(pcm)  # type: ignore[arg-type]  # any contiguous buffer

    def _finish(self) -> None:
        self._wav.close()  # writes the final header (also for 0 samples), closes the file

    def _release(self) -> None:
        self._wav.close()


_ENCODER_LOCK = threading.Lock()
_ENCODER: ThreadPoolExecutor | None = None
ENCODE_CHUNK_SECONDS = 0.2
"""Audio an encoded recording collects in the tick before it is handed to the encoder."""
MAX_PENDING_CHUNKS = 50
"""Chunks (10 s of audio) a recording may have waiting for the encoder before ``write``
waits for it: the bound on memory when encoding falls behind."""


def _encoder() -> ThreadPoolExecutor:
    """The process's encoder thread (one: each file's chunks are encoded in order)."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            _ENCODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recording-encoder")
        return _ENCODER


class _EncodedFile(RecordingFile):
    """MP3 (LAME) or MP4 (AAC) through PyAV, encoded off the engine tick.

    ``write`` runs inside the tick, so it only collects samples; every
    ``ENCODE_CHUNK_SECONDS`` they go to the process's encoder thread as one
    job (PyAV releases the GIL while LAME/AAC work, so the tick is not held
    up: 16 kHz stereo MP3 cost ~0.4 ms per recording per tick in the tick).
    A failed job (disk full) is raised by the next ``write`` or by ``close``;
    ``close`` waits for this file's last job, so the file is complete when it
    returns. At most ``MAX_PENDING_CHUNKS`` jobs wait per file: beyond that
    ``write`` waits for the oldest, which bounds memory if encoding falls
    behind. In a job, the encoders take fixed frames (AAC 1024 samples, MP3
    576 or 1152 by rate) through a carry buffer of one codec frame.

    Bit rate: 16 kbit/s per channel per 8 kHz of sample rate (16 kbit/s for
    8 kHz mono, 64 kbit/s for 16 kHz stereo). Encoder speed settings are
    picked because encoding runs inside the engine tick: LAME quality 7 and
    the ``fast`` AAC coder cost about 40 % less per frame than the encoders'
    defaults (measured on 8 kHz mono noise and tone; bench/recording.py has
    the resulting per-tick cost).
    """

    def __init__(
        self, path: Path, format: RecordingFormat, sample_rate: int, channels: int
    ) -> None:
        super().__init__(path, format, sample_rate, channels)
        codec, sample_format, options = (
            ("libmp3lame", "s16p", {"compression_level": "7"})
            if format is RecordingFormat.MP3
            else ("aac", "fltp", {"aac_coder": "fast"})
        )
        # A file object of ours rather than a path: a failed write (disk full) raises
        # at the next 32 KB flush, where FFmpeg's own file output noticed it much later.
        self._out = open(self.part_path, "wb", buffering=0)  # noqa: SIM115 - closed in _finish
        try:
            self._container: Any = av.open(self._out, "w", format=format.value)
        except BaseException:
            self._out.close()
            self.part_path.unlink()
            raise
        try:
            stream: Any = self._container.add_stream(
                codec, rate=sample_rate, layout="mono" if channels == 1 else "stereo"
            )
            ctx = stream.codec_context
            ctx.format = sample_format
            ctx.bit_rate = 16000 * sample_rate // 8000 * channels
            ctx.options = options
            ctx.open()
            self._frame_size = int(ctx.frame_size)
            self._container.start_encoding()  # creates the .part file and writes the header
        except BaseException:
            self._release()
            self.part_path.unlink()
            raise
        self._stream = stream
        self._layout = ctx.layout.name
        self._sample_format = sample_format
        self._float = sample_format == "fltp"
        self._time_base = Fraction(1, sample_rate)
        dtype = np.float32 if self._float else np.int16
        self._carry = np.zeros((channels, self._frame_size), dtype=dtype)  # planar
        self._fill = 0
        self._pts = 0
        self._collected: list[NDArray[np.int16]] = []
        self._collected_samples = 0
        self._chunk_samples = max(1, round(ENCODE_CHUNK_SECONDS * sample_rate)) * channels
        self._jobs: deque[Future[None]] = deque()

    def _write(self, pcm: NDArray[np.int16]) -> None:
        self._reap()
        self._collected.append(pcm.copy())  # the engine reuses nothing, but be sure
        self._collected_samples += pcm.shape[0]
        if self._collected_samples >= self._chunk_samples:
            self._submit()
            while len(self._jobs) > MAX_PENDING_CHUNKS:
                self._jobs.popleft().result()  # the encoder is behind: wait, bounded memory

    def _submit(self) -> None:
        if not self._collected:
            return
        chunk = np.concatenate(self._collected)
        self._collected, self._collected_samples = [], 0
        self._jobs.append(_encoder().submit(self._encode_pcm, chunk))

    def _reap(self) -> None:
        """Forget finished jobs; raise the first failure (it ends the recording)."""
        jobs = self._jobs
        while jobs and jobs[0].done():
            jobs.popleft().result()

    def _encode_pcm(self, pcm: NDArray[np.int16]) -> None:  # in the encoder thread
        planar = pcm.reshape(-1, self.channels).T  # a view: [channels, samples]
        n = planar.shape[1]
        pos = 0
        size = self._frame_size
        while pos < n:
            take = min(n - pos, size - self._fill)
            self._carry[:, self._fill : self._fill + take] = planar[:, pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == size:
                self._encode(self._carry)
                self._fill = 0

    def _encode(self, planar: NDArray[Any]) -> None:
        data = planar * np.float32(1 / 32768) if self._float else planar
        frame = av.AudioFrame.from_ndarray(data, format=self._sample_format, layout=self._layout)
        frame.sample_rate = self.sample_rate
        frame.time_base = self._time_base
        frame.pts = self._pts
        self._pts += planar.shape[1]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def _finish(self) -> None:
        self._submit()
        last = _encoder().submit(self._flush)
        self._jobs.append(last)
        try:
            last.result()  # FIFO: every earlier chunk of this file is encoded too
        finally:
            while self._jobs:  # surface the first failure, if any
                self._jobs.popleft().result()

    def _flush(self) -> None:  # in the encoder thread
        if self._fill:
            self._encode(np.ascontiguousarray(self._carry[:, : self._fill]))
            self._fill = 0
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._close_files()

    def _release(self) -> None:
        jobs: deque[Future[None]] = getattr(self, "_jobs", deque())  # none yet in __init__
        for job in jobs:  # abort: let queued chunks run out before closing
            with contextlib.suppress(Exception):
                job.result()
        jobs.clear()
        self._close_files()

    def _close_files(self) -> None:
        try:
            self._container.close()
        finally:
            self._out.close()


def open_recording(
    path: Path | str, format: RecordingFormat | str, sample_rate: int, channels: int
) -> RecordingFile:
    """Start writing a recording that will be ``path`` once closed (``path.part`` until then)."""
    fmt = format if isinstance(format, RecordingFormat) else RecordingFormat.parse(format)
    if channels not in (1, 2):
        raise ValueError(f"channels: must be 1 or 2, got {channels}")
    allowed = {RecordingFormat.MP3: _MP3_RATES, RecordingFormat.MP4: _AAC_RATES}.get(fmt)
    if sample_rate <= 0 or (allowed is not None and sample_rate not in allowed):
        rates = ", ".join(map(str, allowed)) if allowed else "a positive rate"
        raise ValueError(f"sample_rate: {fmt.value} needs one of {rates}, got {sample_rate}")
    target = Path(path)
    if fmt is RecordingFormat.WAV:
        return _WavFile(target, fmt, sample_rate, channels)
    return _EncodedFile(target, fmt, sample_rate, channels)


# -- the recorder ---------------------------------------------------------------------


class RecordingLayout(StrEnum):
    """Which audio goes into the file, as which channels.

    ``read`` is what the party says (the caller), ``write`` what it hears.
    """

    STEREO = "stereo"  # left = read, right = write
    SPEAK = "speak"  # mono: read only
    LISTEN = "listen"  # mono: write only
    BOTH = "both"  # mono: read + write, saturated to int16

    @property
    def channels(self) -> int:
        return 2 if self is RecordingLayout.STEREO else 1

    @classmethod
    def parse(cls, value: str) -> RecordingLayout:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ValueError(f"layout: must be one of {allowed}, got {value!r}") from None


class RecordingCause(StrEnum):
    """Why a recording ended (see the module docstring)."""

    SUCCESS_SILENCE = "success-silence"
    NO_INPUT_TIMEOUT = "no-input-timeout"
    SUCCESS_MAXTIME = "success-maxtime"
    SUCCESS_STOP = "success-stop"
    SUCCESS_HANGUP = "success-hangup"
    EMPTY_FILE = "empty-file"
    INPUT_TOO_SHORT = "input-too-short"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class SilenceOptions:
    """FreeSWITCH silence detection on what the party says (``dsp.silence``).

    ``threshold``: energy score below which a 20 ms frame is silent.
    ``initial_timeout_ms``: stop when nobody has spoken this long (0 = off).
    ``final_timeout_ms``: after speech, stop after this much silence (0 = off).
    """

    threshold: float = DEFAULT_THRESHOLD
    initial_timeout_ms: int = 0
    final_timeout_ms: int = 0

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"silence_threshold: must be > 0, got {self.threshold}")
        for name, value in (
            ("silence_initial_timeout", self.initial_timeout_ms),
            ("silence_final_timeout", self.final_timeout_ms),
        ):
            if value < 0:
                raise ValueError(f"{name}: must be >= 0 ms (0 disables it), got {value}")


@dataclass(frozen=True, slots=True)
class RecordingOptions:
    """How to record: everything here is already decided by the dialect.

    ``time_limit`` and ``min_seconds`` are seconds of recorded audio;
    ``silence`` None means no silence detection (speech is still noted).
    """

    format: RecordingFormat = RecordingFormat.WAV
    layout: RecordingLayout = RecordingLayout.STEREO
    sample_rate: int = 8000
    time_limit: float | None = None
    silence: SilenceOptions | None = None
    min_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.sample_rate not in SUPPORTED_RATES:
            rates = ", ".join(map(str, SUPPORTED_RATES))
            raise ValueError(f"sample_rate: must be one of {rates}, got {self.sample_rate}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit: must be > 0 seconds, got {self.time_limit}")
        if not self.min_seconds >= 0:
            raise ValueError(f"min_seconds: must be >= 0, got {self.min_seconds}")


@dataclass(frozen=True, slots=True)
class RecordingResult:
    """How a recording ended: ``kept`` says whether ``file.path`` exists."""

    cause: RecordingCause
    speech_detected: bool
    file: RecordingInfo
    kept: bool
    error: str | None = field(default=None)


class Recorder:
    """A ``LegListener`` recording one leg to ``path`` (``path.part`` while recording).

    Opening the file happens here (an ``OSError`` or ``ValueError`` is raised to
    the caller, outside any tick). Then the engine calls ``on_audio`` every
    tick with 20 ms of ``read`` (what the party says) and ``write`` (what it
    hears); the recording ends on a silence timer, the time limit or
    ``stop(cause)``, whichever comes first. It ends once: ``on_stop`` is called
    exactly once with the ``RecordingResult`` and later ``on_audio`` calls
    are ignored (the caller removes the recorder from ``leg.listeners``).

    Closing the file (flushing the encoder, renaming) runs inside the tick
    that ends the recording.
    """

    def __init__(
        self,
        path: Path | str,
        options: RecordingOptions | None = None,
        on_stop: Callable[[RecordingResult], None] | None = None,
        *,
        own_silence_detector: bool = True,
        speech_source: Callable[[], bool] | None = None,
    ) -> None:
        """``own_silence_detector=False``: the caller runs the silence timers (the
        engine's batched ``SilenceWatch``, one detector call for all recordings)
        and reports expiries with ``silence_expired``; ``speech_source`` then says
        whether anyone spoke. No detector runs here."""
        opts = options if options is not None else RecordingOptions()
        self.options = opts
        self.sample_rate = opts.sample_rate
        self.on_stop = on_stop
        self.result: RecordingResult | None = None
        self._layout = opts.layout
        self._limit = None if opts.time_limit is None else round(opts.time_limit * opts.sample_rate)
        self._min_samples = round(opts.min_seconds * opts.sample_rate)
        silence = opts.silence or SilenceOptions()
        self._silence = SilenceDetector(1, opts.sample_rate, TICK_MS)
        self._silence.configure(
            0,
            threshold=silence.threshold,
            initial_timeout_ms=silence.initial_timeout_ms,
            final_timeout_ms=silence.final_timeout_ms,
        )
        self._speech = False
        # The detector runs while it can still change something: until the first
        # speech when there is no final timeout (it still says whether anyone spoke).
        self._watching = own_silence_detector
        self._speech_source = speech_source
        self._final_timer = silence.final_timeout_ms > 0
        self._file = open_recording(path, opts.format, opts.sample_rate, opts.layout.channels)

    @property
    def path(self) -> Path:
        """The finished file's name."""
        return self._file.path

    @property
    def part_path(self) -> Path:
        """Where the audio is while recording."""
        return self._file.part_path

    @property
    def stopped(self) -> bool:
        return self.result is not None

    @property
    def speech_detected(self) -> bool:
        return self._speech

    def silence_expired(self, expiry: SilenceExpiry) -> None:
        """An outside silence timer expired: end as ``on_audio`` would have."""
        if self.result is not None:
            return
        if expiry == SilenceExpiry.SILENCE:
            self._speech = True  # the final timer runs only after speech
            self._finish(RecordingCause.SUCCESS_SILENCE)
        else:
            self._finish(RecordingCause.NO_INPUT_TIMEOUT)

    @property
    def recorded_ms(self) -> int:
        """Media time recorded so far."""
        return self._file.samples * 1000 // self.sample_rate

    def on_audio(self, read: NDArray[np.int16], write: NDArray[np.int16]) -> None:
        if self.result is not None:
            return
        try:
            expiry = 0
            if self._watching:
                decisions = self._silence.process(read[None, :])
                self._speech = bool(decisions.speech_detected[0])
                expiry = int(decisions.expiry[0])
                self._watching = not (self._speech and not self._final_timer)
            cause: RecordingCause | None = None
            if self._limit is not None:
                room = self._limit - self._file.samples
                if read.shape[0] >= room:
                    read, write = read[:room], write[:room]
                    cause = RecordingCause.SUCCESS_MAXTIME
            self._file.write(self._frames(read, write))
            if cause is None and expiry:
                cause = (
                    RecordingCause.SUCCESS_SILENCE
                    if expiry == SilenceExpiry.SILENCE
                    else RecordingCause.NO_INPUT_TIMEOUT
                )
        except Exception as exc:  # disk full, a bad frame...: never into the engine tick
            self._fail(exc)
            return
        if cause is not None:
            self._finish(cause)

    def stop(self, cause: RecordingCause = RecordingCause.SUCCESS_STOP) -> RecordingResult:
        """End the recording now (the verb's stop, or hangup); idempotent."""
        if self.result is not None:
            return self.result
        return self._finish(cause)

    def _frames(self, read: NDArray[np.int16], write: NDArray[np.int16]) -> NDArray[np.int16]:
        layout = self._layout
        if layout is RecordingLayout.STEREO:
            stereo: NDArray[np.int16] = interleave(read[None, :], write[None, :])[0]
            return stereo
        if layout is RecordingLayout.SPEAK:
            return read
        if layout is RecordingLayout.LISTEN:
            return write
        both: NDArray[np.int16] = saturating_sum(read[None, :], write[None, :])[0]
        return both

    def _finish(self, cause: RecordingCause) -> RecordingResult:
        if self._speech_source is not None:
            self._speech = self._speech or self._speech_source()
        try:
            info = self._file.close()
        except Exception as exc:
            return self._fail(exc)
        kept = True
        if info.empty or info.samples < self._min_samples:
            if cause is not RecordingCause.NO_INPUT_TIMEOUT:
                cause = RecordingCause.EMPTY_FILE if info.empty else RecordingCause.INPUT_TOO_SHORT
            info.path.unlink(missing_ok=True)
            kept = False
        return self._report(RecordingResult(cause, self._speech, info, kept))

    def _fail(self, exc: Exception) -> RecordingResult:
        self._file.abort()
        message = str(exc) or type(exc).__name__
        log.warning("recording.failed", path=str(self._file.path), error=message)
        info = RecordingInfo(
            path=self._file.path,
            format=self._file.format,
            sample_rate=self._file.sample_rate,
            channels=self._file.channels,
            samples=self._file.samples,
            size_bytes=0,
        )
        return self._report(
            RecordingResult(RecordingCause.ERROR, self._speech, info, kept=False, error=message)
        )

    def _report(self, result: RecordingResult) -> RecordingResult:
        self.result = result
        if self.on_stop is not None:
            try:
                self.on_stop(result)
            except Exception:  # the caller's bug must not break the tick
                log.exception("recording.on_stop_failed", path=str(result.file.path))
        return result
