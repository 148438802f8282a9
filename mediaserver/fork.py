"""The WebSocket client side of one audio fork, on a raw asyncio transport.

Owns the connection to a receiver: TCP (and TLS for ``wss``), the opening
handshake with subprotocol ``audio.jambonz.org`` (a server that answers with
no subprotocol is accepted, as the real sender does), HTTP Basic auth, the
10 s connect limit, sending text and binary frames without awaiting, the
bounded per-fork buffer (the oldest audio is dropped when a receiver is
slow, and every dropped frame is counted), receiving the server's frames,
and the closing handshake.

It uses websockets' sans-I/O ``ClientProtocol``: bytes in with
``receive_data``, text and control frames out with ``send_text``/``send_close``
and ``data_to_send``, so a frame costs a few microseconds and no task. Audio
frames, the hot path (one per fork per 20 ms tick), are framed here instead
(:func:`binary_frame`): a cached header, a masking key from a pool filled by
one ``os.urandom`` call per 1024 frames, websockets' C ``apply_mask``, one
``transport.write``. websockets' generic path (``Frame.serialize``, a
``getrandom`` syscall per key, ``data_to_send``) cost 3x that per frame in a
profile of serve at 200 calls. That is sound because no extension is
negotiated (the handshake offers none) and audio is never fragmented, so a
binary frame changes no protocol state; frames still go out in the order
they were sent.
Backpressure comes from the transport: asyncio calls ``pause_writing`` when
its buffer passes the high-water mark, and audio then waits in the fork's
own deque, whose size is bounded.

It must not decide what the frames mean (the ``listen`` verb does).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI, ProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

try:  # websockets' C extension; its pure-Python twin otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the wheel ships the extension
    from websockets.utils import apply_mask

__all__ = ["ForkConnectError", "WebSocketFork"]

SUBPROTOCOL = "audio.jambonz.org"
CONNECT_TIMEOUT = 10.0
_TRANSPORT_HIGH_WATER = 64 * 1024
_KERNEL_SEND_BUFFER = 64 * 1024  # Linux doubles it
_MAX_INCOMING = 32 * 1024 * 1024  # playAudio carries whole files as base64
_MASK_POOL_KEYS = 1024


class _MaskPool:
    """Client masking keys (RFC 6455 5.3: from a strong entropy source), 4 bytes
    each, drawn from one ``os.urandom`` call per ``_MASK_POOL_KEYS`` frames."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def key(self) -> bytes:
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(4 * _MASK_POOL_KEYS)
            at = 0
        self._at = at + 4
        return self._pool[at : at + 4]


_MASKS = _MaskPool()
_HEADERS: dict[int, bytes] = {}


def binary_frame(data: bytes) -> bytes:
    """One masked, final, unfragmented binary frame carrying ``data`` (RFC 6455 5.2)."""
    n = len(data)
    head = _HEADERS.get(n)
    if head is None:
        if n < 126:
            head = bytes((0x82, 0x80 | n))
        elif n < 65536:
            head = bytes((0x82, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x82, 0x80 | 127)) + n.to_bytes(8, "big")
        if len(_HEADERS) < 64:  # audio frames come in a handful of sizes
            _HEADERS[n] = head
    key = _MASKS.key()
    return head + key + apply_mask(data, key)


class ForkConnectError(ConnectionError):
    """The fork could not be opened; the message says why (no secrets in it)."""


class WebSocketFork(asyncio.Protocol):
    """One client WebSocket; see the module docstring."""

    def __init__(
        self,
        protocol: ClientProtocol,
        *,
        max_buffer_bytes: int,
        on_text: Callable[[str], None] | None = None,
        on_binary: Callable[[bytes], None] | None = None,
        on_closed: Callable[[int | None, str], None] | None = None,
    ) -> None:
        self.ws = protocol
        self.max_buffer_bytes = max_buffer_bytes
        self.on_text = on_text
        self.on_binary = on_binary
        self.on_closed = on_closed
        self.frames_sent = 0
        self.frames_dropped = 0
        self.bytes_sent = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._handshake: asyncio.Future[None] | None = None
        self._closed = False
        self._lost: asyncio.Future[None] | None = None

    # -- opening ---------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        max_buffer_bytes: int,
        verify_tls: bool = True,
        timeout: float = CONNECT_TIMEOUT,
        user_agent: str = "jambonz-mediaserver-emulator",
    ) -> WebSocketFork:
        """Open the socket and complete the handshake within ``timeout`` seconds."""
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise ForkConnectError(f"bad url: {exc}") from None
        ws = ClientProtocol(uri, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=_MAX_INCOMING)
        fork = cls(ws, max_buffer_bytes=max_buffer_bytes)
        loop = asyncio.get_running_loop()
        fork._handshake = loop.create_future()
        fork._lost = loop.create_future()
        context: ssl.SSLContext | None = None
        if uri.secure:
            context = ssl.create_default_context()
            if not verify_tls:  # documented lab opt-out for self-signed certificates
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        request = ws.connect()
        if username is not None and password is not None:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            request.headers["Authorization"] = f"Basic {token}"
        request.headers["User-Agent"] = user_agent
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: fork,
                    uri.host,
                    uri.port,
                    ssl=context,
                    server_hostname=uri.host if context else None,
                )
                ws.send_request(request)
                fork._flush()
                await fork._handshake
        except TimeoutError:
            fork.abort()
            raise ForkConnectError(f"no WebSocket handshake within {timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            fork.abort()
            raise ForkConnectError(f"cannot connect to {uri.host}:{uri.port}: {exc}") from None
        return fork

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN and not self._closed

    # -- sending -------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        if not self.open:
            return
        self.ws.send_text(text.encode())
        self._flush()

    def send_audio(self, data: bytes) -> None:
        """Send one audio frame now, or keep it in the bounded backlog while paused."""
        if self._closed or self.ws.state is not State.OPEN:  # self.open, inlined: hot path
            return
        if self._paused or self._backlog:
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            while self._backlog_bytes > self.max_buffer_bytes and len(self._backlog) > 1:
                dropped = self._backlog.popleft()  # the oldest audio goes first
                self._backlog_bytes -= len(dropped)
                self.frames_dropped += 1
            return
        self._send_binary(data)

    def _send_binary(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(binary_frame(data))
        self.frames_sent += 1
        self.bytes_sent += len(data)

    @property
    def buffered_bytes(self) -> int:
        transport = self._transport.get_write_buffer_size() if self._transport else 0
        return self._backlog_bytes + transport

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()  # the protocol is done sending (after a close)

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=_TRANSPORT_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # The kernel's send buffer grows to megabytes (minutes of audio) before
            # asyncio sees any backpressure; keep it small so a stalled receiver is
            # noticed within the fork's own bounded buffer, not after minutes.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _KERNEL_SEND_BUFFER)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        while self._backlog and not self._paused and self.open:
            data = self._backlog.popleft()
            self._backlog_bytes -= len(data)
            self._send_binary(data)

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._process()
        return None

    def _process(self) -> None:
        for event in self.ws.events_received():
            if isinstance(event, Response):
                self._on_handshake()
            elif isinstance(event, Frame):
                self._on_frame(event)
        self._flush()
        if self.ws.close_expected() and self._transport is not None:
            # websockets: once the closing handshake is done the client may close TCP
            self._transport.close()

    def _on_handshake(self) -> None:
        fut = self._handshake
        if fut is None or fut.done():
            return
        if self.ws.handshake_exc is None and self.ws.extensions:
            # binary_frame writes plain frames: it cannot apply an extension
            fut.set_exception(ForkConnectError("server negotiated an extension we did not offer"))
        elif self.ws.handshake_exc is not None:
            fut.set_exception(ForkConnectError(f"handshake refused: {self.ws.handshake_exc}"))
        else:
            fut.set_result(None)

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT and self.on_text is not None:
            self.on_text(bytes(frame.data).decode(errors="replace"))
        elif frame.opcode is Opcode.BINARY and self.on_binary is not None:
            self.on_binary(bytes(frame.data))
        elif frame.opcode is Opcode.CLOSE:
            try:
                close = Close.parse(bytes(frame.data))
                self._report_closed(close.code, close.reason)
            except ProtocolError:
                self._report_closed(1002, "bad close frame")

    def _report_closed(self, code: int | None, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_code = code
        self.close_reason = reason
        if self.on_closed is not None:
            self.on_closed(self.close_code, self.close_reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._handshake is not None and not self._handshake.done():
            reason = f"connection lost during handshake: {exc}" if exc else "connection closed"
            self._handshake.set_exception(ForkConnectError(reason))
        if not self._closed:
            self._report_closed(1006, "connection lost")
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # -- closing ---------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 2.0) -> None:
        """Closing handshake with ``code`` (pending backlog is sent first if possible)."""
        if self.ws.state is State.OPEN:
            self._closed = True  # our own close: no on_closed callback for it
            self.ws.send_close(code, reason)
            self._flush()
        if self._lost is not None and self._transport is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._lost)
            except TimeoutError:
                self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
            self._transport = None

    def stats(self) -> dict[str, Any]:
        return {
            "frames_sent": self.frames_sent,
            "frames_dropped": self.frames_dropped,
            "bytes_sent": self.bytes_sent,
        }
