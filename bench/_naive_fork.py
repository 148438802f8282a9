"""The capacity bench's naive baseline: a per-call fork with no batching.

Owns, in its own process, what a straightforward per-call implementation
of ``listen`` 8 kHz mono does: one UDP socket per call; each packet is
handled as it arrives (RTP header unpacked with ``struct``, the PCMU
payload decoded with ``audioop.ulaw2lin`` — C, per packet — or a per-packet
numpy table lookup where audioop is gone); the frame goes to a bounded
per-call ``asyncio.Queue`` (3 s, oldest dropped and counted, as serve
does); and one task per fork does ``await websocket.send(frame)``
(websockets' asyncio client). Like serve it answers each call with RTP: one
20 ms PCMU silence packet back to the sender per packet received (serve
sends one per leg per tick), so both carry the same traffic. No jitter
buffer, no clock: that makes its latency a lower bound, and its CPU the
cost of the per-item design.

Started with ``--port LOW --calls N --url ws://...``; prints ``{"ready": N}``
once every fork is connected; line commands on stdin: ``report`` (packets
and drops), ``quit``.

It must not be used as a server: it exists to be measured against serve.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import struct
import sys
import warnings
from collections.abc import Callable

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from dsp.g711 import ulaw_decode

_TABLE = ulaw_decode(np.arange(256, dtype=np.uint8)).astype("<i2")


def _numpy_ulaw2lin(payload: bytes) -> bytes:
    return _TABLE[np.frombuffer(payload, dtype=np.uint8)].tobytes()


def _decoder() -> Callable[[bytes], bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:
            return _numpy_ulaw2lin
    return lambda payload: audioop.ulaw2lin(payload, 2)


DECODE = _decoder()
QUEUE_FRAMES = 150  # 3 s of 20 ms frames


class Stats:
    packets = 0
    dropped = 0
    sent = 0


_HEADER = struct.Struct("!BBHII")
_SILENCE = b"\xff" * 160  # 20 ms of PCMU silence


class NaiveLeg(asyncio.DatagramProtocol):
    """One call: every datagram decoded and queued the moment it arrives, and
    answered with one packet of silence."""

    def __init__(self, queue: asyncio.Queue[bytes], ssrc: int) -> None:
        self.queue = queue
        self.ssrc = ssrc
        self.seq = 0
        self.ts = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDPTransport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if len(data) < 12:
            return
        first, pt = struct.unpack_from("!BB", data)
        if pt & 0x7F != 0:
            return
        offset = 12 + 4 * (first & 0x0F)
        Stats.packets += 1
        if self.transport is not None:
            self.seq = (self.seq + 1) & 0xFFFF
            self.ts = (self.ts + 160) & 0xFFFFFFFF
            packet = _HEADER.pack(0x80, 0, self.seq, self.ts, self.ssrc) + _SILENCE
            self.transport.sendto(packet, addr)
        frame = DECODE(data[offset:])
        if self.queue.full():
            self.queue.get_nowait()
            Stats.dropped += 1
        self.queue.put_nowait(frame)


async def fork(ws: ClientConnection, queue: asyncio.Queue[bytes]) -> None:
    while True:
        frame = await queue.get()
        await ws.send(frame)
        Stats.sent += 1


async def run(host: str, port: int, calls: int, url: str) -> None:
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    sockets: list[ClientConnection] = []
    for i in range(calls):
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_FRAMES)
        ws = await connect(url, subprotocols=[Subprotocol("audio.jambonz.org")], compression=None)
        await ws.send(json.dumps({"sampleRate": 8000, "mixType": "mono", "callSid": f"n{i}"}))
        sockets.append(ws)
        await loop.create_datagram_endpoint(
            functools.partial(NaiveLeg, queue, 0x4E000000 + i), local_addr=(host, port + 2 * i)
        )
        tasks.append(asyncio.create_task(fork(ws, queue)))
    sys.stdout.write(json.dumps({"ready": calls}) + "\n")
    sys.stdout.flush()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode():
        cmd = line.strip()
        if cmd == "report":
            out = {"packets": Stats.packets, "dropped": Stats.dropped, "sent": Stats.sent}
            sys.stdout.write(json.dumps(out) + "\n")
            sys.stdout.flush()
        elif cmd == "quit":
            break
    for task in tasks:
        task.cancel()
    for ws in sockets:
        ws.transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="first UDP port (even)")
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--url", required=True)
    args = parser.parse_args()
    coro = run(args.host, args.port, args.calls, args.url)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
