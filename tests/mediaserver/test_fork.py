"""The WebSocket fork against a real websockets server on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.streams import StreamReader

from mediaserver.fork import ForkConnectError, WebSocketFork, binary_frame


class Peer:
    """A receiver that records what it gets and can talk back or stall."""

    def __init__(
        self,
        *,
        subprotocols: list[str] | None = None,
        stall: bool = False,
        need_auth: str | None = None,
    ) -> None:
        self.messages: list[Any] = []
        self.headers: list[Headers] = []
        self.subprotocols = subprotocols
        self.stall = stall
        self.need_auth = need_auth
        self.connections: list[ServerConnection] = []
        self.closed = asyncio.Event()
        self.release = asyncio.Event()
        self.close_code: int | None = None

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        self.headers.append(ws.request.headers if ws.request else Headers())
        if self.stall:
            await self.release.wait()
        try:
            async for message in ws:
                self.messages.append(message)
        finally:
            self.close_code = ws.close_code
            self.closed.set()

    def check(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.need_auth and request.headers.get("Authorization") != self.need_auth:
            return conn.respond(401, "no\n")
        return None

    async def __aenter__(self) -> str:
        select = None
        if self.subprotocols == []:
            select = lambda conn, offered: None  # noqa: E731 - answer with no subprotocol
        self.server = await serve(
            self.handler,
            "127.0.0.1",
            0,
            subprotocols=self.subprotocols if self.subprotocols else ["audio.jambonz.org"],
            select_subprotocol=select,
            process_request=self.check,
        )
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/calls"

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        self.server.close()
        await self.server.wait_closed()


async def test_handshake_text_binary_and_close_1000() -> None:
    peer = Peer()
    async with peer as url:
        fork = await WebSocketFork.connect(url, max_buffer_bytes=48000)
        assert fork.subprotocol == "audio.jambonz.org"
        fork.send_text('{"sampleRate": 8000}')
        for i in range(5):
            fork.send_audio(bytes([i]) * 320)
        await fork.close(1000)
        await asyncio.wait_for(peer.closed.wait(), 5)
    assert peer.messages[0] == '{"sampleRate": 8000}'
    assert peer.messages[1:] == [bytes([i]) * 320 for i in range(5)]
    assert peer.close_code == 1000
    assert fork.frames_sent == 5 and fork.frames_dropped == 0


@pytest.mark.parametrize("size", [0, 1, 125, 126, 320, 1280, 65535, 65536, 70000])
def test_binary_frame_parses_as_a_masked_final_binary_frame(size: int) -> None:
    data = bytes((i * 7 + 3) & 0xFF for i in range(size))
    reader = StreamReader()
    wires = [binary_frame(data) for _ in range(3)]
    for wire in wires:
        reader.feed_data(wire)
    for wire in wires:
        # websockets' own server-side parser, which insists on client masking
        parser = Frame.parse(reader.read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as done:
            frame = done.value
        assert frame.opcode is Opcode.BINARY and frame.fin and not frame.rsv1
        assert bytes(frame.data) == data
        assert wire[1] & 0x80  # MASK bit
    keys = {w[-size - 4 : len(w) - size] for w in wires}
    assert len(keys) == 3  # a fresh masking key per frame


async def test_text_and_audio_keep_their_order_on_the_wire() -> None:
    peer = Peer()
    async with peer as url:
        fork = await WebSocketFork.connect(url, max_buffer_bytes=48000)
        for i in range(50):
            fork.send_audio(bytes([i]) * 640)
            if i % 10 == 0:
                fork.send_text(f"mark {i}")
        await fork.close(1000)
        await asyncio.wait_for(peer.closed.wait(), 5)
    expected: list[Any] = []
    for i in range(50):
        expected.append(bytes([i]) * 640)
        if i % 10 == 0:
            expected.append(f"mark {i}")
    assert peer.messages == expected
    assert fork.bytes_sent == 50 * 640


async def test_server_without_subprotocol_is_accepted() -> None:
    peer = Peer(subprotocols=[])
    async with peer as url:
        fork = await WebSocketFork.connect(url, max_buffer_bytes=1000)
        assert fork.subprotocol is None and fork.open
        await fork.close()


async def test_basic_auth_header_and_refusal() -> None:
    peer = Peer(need_auth="Basic dTpw")  # u:p
    async with peer as url:
        fork = await WebSocketFork.connect(url, username="u", password="p", max_buffer_bytes=1000)
        await fork.close()
        with pytest.raises(ForkConnectError, match="handshake refused") as err:
            await WebSocketFork.connect(url, username="u", password="wrong", max_buffer_bytes=1)
        assert "wrong" not in str(err.value)


async def test_server_messages_and_far_end_close_are_reported() -> None:
    peer = Peer()
    texts: list[str] = []
    closed: list[tuple[int | None, str]] = []
    async with peer as url:
        fork = await WebSocketFork.connect(url, max_buffer_bytes=1000)
        fork.on_text = texts.append
        fork.on_closed = lambda code, reason: closed.append((code, reason))
        fork.send_text("hello")
        while not peer.connections:
            await asyncio.sleep(0.01)
        await peer.connections[0].send('{"type": "disconnect"}')
        await peer.connections[0].close(1000, "done")
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.02)
    assert texts == ['{"type": "disconnect"}']
    assert closed == [(1000, "done")]
    assert not fork.open


async def test_connect_failures_have_reasons() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ForkConnectError, match="cannot connect"):
        await WebSocketFork.connect(f"ws://127.0.0.1:{port}/", max_buffer_bytes=1)
    # a TCP server that never answers the handshake: the connect limit applies
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    with pytest.raises(ForkConnectError, match=r"no WebSocket handshake within 0\.3 s"):
        await WebSocketFork.connect(f"ws://127.0.0.1:{port}/", max_buffer_bytes=1, timeout=0.3)
    silent.close()


async def test_stalled_receiver_bounds_the_buffer_and_counts_drops() -> None:
    peer = Peer(stall=True)
    async with peer as url:
        fork = await WebSocketFork.connect(url, max_buffer_bytes=32000)  # 1 s at 16 kB/s
        frame = b"\x01" * 640
        for _ in range(20000):  # 400 s of 16 kHz mono: far beyond every buffer
            fork.send_audio(frame)
            if fork.frames_dropped and _ % 500 == 0:
                await asyncio.sleep(0)
        assert fork.frames_dropped > 0
        # memory bound: our backlog stays at the limit whatever the receiver does
        assert fork._backlog_bytes <= 32000
        fork.abort()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make a lab certificate"
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_wss_verifies_certificates_unless_the_lab_opt_out_is_set(
    self_signed: tuple[str, str],
) -> None:
    import ssl

    cert, key = self_signed
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    got: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            got.append(message)

    async with serve(handler, "127.0.0.1", 0, ssl=context,
                     subprotocols=["audio.jambonz.org"]) as server:  # fmt: skip
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"wss://127.0.0.1:{port}/"
        with pytest.raises(ForkConnectError, match=r"cannot connect|CERTIFICATE_VERIFY_FAILED"):
            await WebSocketFork.connect(url, max_buffer_bytes=1000)
        fork = await WebSocketFork.connect(url, max_buffer_bytes=1000, verify_tls=False)
        fork.send_text("over tls")
        await fork.close()
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.02)
    assert got == ["over tls"]
