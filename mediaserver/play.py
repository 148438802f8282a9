"""Audio for the ``play`` verb: fetch a URL or read a file, decode, fit the leg.

Owns loading a prompt from ``http(s)://`` (aiohttp GET, time-limited), from
``file://`` or a plain path, decoding it in a worker thread so the event
loop never blocks (``mediaserver.audio_decode``: any format and rate FFmpeg
reads, mixed down to mono) and resampling it to the leg's rate. Every
failure is a ``PlayError`` naming the URL (without credentials) and why.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import numpy as np
from numpy.typing import NDArray

from mediaserver.audio_decode import AudioDecodeError, decode_audio, resample_whole
from mediaserver.hooks import safe_url

__all__ = ["PlayError", "load_prompt"]

MAX_PROMPT_BYTES = 50 * 1024 * 1024


class PlayError(ValueError):
    """A prompt that cannot be played; the message names the URL and the reason."""


async def _fetch(url: str, timeout: float) -> bytes:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.get(url) as resp,
            ):
                if resp.status // 100 != 2:
                    raise PlayError(f"play {safe_url(url)}: HTTP {resp.status}")
                data = await resp.content.read(MAX_PROMPT_BYTES + 1)
        except TimeoutError:
            raise PlayError(f"play {safe_url(url)}: no answer in {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise PlayError(f"play {safe_url(url)}: {exc}") from None
    else:
        path = Path(unquote(parts.path) if parts.scheme == "file" else url)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise PlayError(f"play {url}: cannot read the file ({exc.strerror})") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise PlayError(f"play {safe_url(url)}: larger than {MAX_PROMPT_BYTES} bytes")
    return data


def _decode(data: bytes, name: str) -> tuple[NDArray[np.int16], int]:
    try:
        return decode_audio(data)
    except AudioDecodeError as exc:
        raise PlayError(f"play {name}: {exc}") from None


async def load_prompt(url: str, rate: int, *, timeout: float = 10.0) -> NDArray[np.int16]:
    """The prompt at ``url`` as mono int16 at ``rate``."""
    data = await _fetch(url, timeout)
    pcm, source_rate = await asyncio.to_thread(_decode, data, safe_url(url))
    return resample_whole(pcm, source_rate, rate)
