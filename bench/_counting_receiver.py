"""The capacity bench's receiver: a WebSocket server that only counts and times frames.

Owns, in its own process: accepting listen forks (subprotocol
``audio.jambonz.org``) on websockets' sans-I/O ``ServerProtocol`` driven on a
raw asyncio transport (a frame costs a few microseconds, so the receiver is
not the bottleneck of the measurement), counting binary frames, and turning
the send-time marker the load generator put in each packet (see
``bench/_loadgen.py``: the first 8 samples are μ-law codes ``0xF0 | nibble``,
decoded by serve into L16) into one latency sample per frame:
``now_us - sent_us`` on CLOCK_MONOTONIC, modulo 2**32.

Line commands on stdin, one JSON line back each: ``reset`` (forget the
latency samples and frame counts), ``report`` (counts and latency
percentiles since the last reset), ``quit``. It prints ``{"port": P}`` once
it listens.

It must not store audio nor answer anything but the WebSocket protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array

import numpy as np
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from dsp.g711 import ulaw_decode

# L16 value of μ-law code 0xF0|n -> n; as little-endian bytes, for a dict lookup per sample
_NIBBLE = {
    int(v).to_bytes(2, "little", signed=True): n
    for n, v in enumerate(ulaw_decode(np.arange(0xF0, 0x100, dtype=np.uint8)))
}


def sent_us(frame: bytes) -> int | None:
    """The send time (low 32 bits of μs) carried by an L16 frame, or None if absent."""
    t = 0
    for k in range(8):
        n = _NIBBLE.get(frame[2 * k : 2 * k + 2])
        if n is None:
            return None
        t |= n << (4 * k)
    return t


class Tally:
    def __init__(self) -> None:
        self.open = 0
        self.total = 0
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.unmarked = 0
        self.text = 0
        self.latency_us: array[int] = array("q")

    def report(self) -> dict[str, float]:
        lat = np.frombuffer(self.latency_us, dtype=np.int64) / 1000.0
        pct = np.percentile(lat, [50, 99]) if lat.size else np.array([np.nan, np.nan])
        return {
            "open": self.open,
            "total": self.total,
            "frames": self.frames,
            "unmarked": self.unmarked,
            "text": self.text,
            "p50_ms": round(float(pct[0]), 2),
            "p99_ms": round(float(pct[1]), 2),
            "max_ms": round(float(lat.max()), 2) if lat.size else float("nan"),
            "min_ms": round(float(lat.min()), 2) if lat.size else float("nan"),
        }


class ForkConnection(asyncio.Protocol):
    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.ws = ServerProtocol(subprotocols=[Subprotocol("audio.jambonz.org")])
        self.transport: asyncio.Transport | None = None
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now_us = time.monotonic_ns() // 1000
        ws = self.ws
        ws.receive_data(data)
        tally = self.tally
        for event in ws.events_received():
            if isinstance(event, Request):
                ws.send_response(ws.accept(event))
                if ws.state is State.OPEN:
                    self.counted = True
                    tally.open += 1
                    tally.total += 1
            elif isinstance(event, Frame):
                if event.opcode is Opcode.BINARY:
                    tally.frames += 1
                    sent = sent_us(bytes(event.data[:16]))
                    if sent is None:
                        tally.unmarked += 1
                    else:
                        tally.latency_us.append((now_us - sent) & 0xFFFFFFFF)
                elif event.opcode is Opcode.TEXT:
                    tally.text += 1
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.write_eof() if self.transport.can_write_eof() else None
        if self.ws.state is State.CLOSED:
            self.transport.close()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.tally.open -= 1
            self.counted = False


async def run(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    server = await loop.create_server(lambda: ForkConnection(tally), host, port, backlog=2048)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": bound}) + "\n")
    sys.stdout.flush()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode():
        cmd = line.strip()
        if cmd == "reset":
            tally.reset()
            sys.stdout.write('{"ok": 1}\n')
        elif cmd == "report":
            sys.stdout.write(json.dumps(tally.report()) + "\n")
        elif cmd == "quit":
            break
        sys.stdout.flush()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args.host, args.port))
    else:
        uvloop.run(run(args.host, args.port))


if __name__ == "__main__":
    main()
