"""Per-call media dumps for lab debugging (``serve --dump-dir DIR``).

Owns writing, for each call, what the media engine decoded: a stereo WAV at
the leg's sample rate (left = what the caller said, right = what the
caller heard) streamed to disk tick by tick, and a JSON summary beside it
when the call ends (attributes, key presses, RTP counters, end reason).
Files are named by call SID.

It must not decide anything about the call; it only records.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsp.mix import interleave

__all__ = ["CallDump"]


class CallDump:
    """A ``LegListener`` writing one call's audio to ``<dir>/<call_sid>.wav``."""

    def __init__(self, directory: Path, call_sid: str, sample_rate: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.sample_rate = sample_rate
        self.wav_path = directory / f"{call_sid}.wav"
        self.json_path = directory / f"{call_sid}.json"
        # open for the whole call, written tick by tick; closed in close()
        self._wav: wave.Wave_write | None = wave.open(str(self.wav_path), "wb")  # noqa: SIM115
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)
        self.frames = 0

    def on_audio(self, read: NDArray[np.int16], write: NDArray[np.int16]) -> None:
        if self._wav is None:
            return
        stereo = interleave(read[None, :], write[None, :])[0]
        self._wav.writeframesraw(stereo.astype("<i2").tobytes())
        self.frames += 1

    def close(self, summary: dict[str, Any]) -> None:
        if self._wav is not None:
            self._wav.close()  # patches the header with the final length
            self._wav = None
        self.json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
