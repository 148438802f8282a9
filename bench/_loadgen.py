"""The capacity bench's load generator: N callers sending real RTP over UDP.

Owns, in its own process: placing calls on ``serve`` with the project's
sans-I/O UAC (``rtp.sip.endpoint.SipEndpoint``: INVITE, the ACK for the
2xx, BYE, answering serve's BYEs) over ``--lanes`` SIP sockets, calls
dealt round-robin (``serve --workers N`` shares its SIP port with
SO_REUSEPORT: the kernel spreads callers by source address:port, so one
socket would put every call on one worker), and sending PCMU 20 ms RTP for every
live call on one absolute 20 ms schedule, each packet on its own UDP
socket. Every packet carries its send time: the first 8 payload bytes are
the low 32 bits of ``time.monotonic_ns() // 1000`` (CLOCK_MONOTONIC, shared
by every process on the machine), one nibble per byte as the μ-law codes
``0xF0 | nibble``; the rest of the payload is silence (0xFF). The receiver
reads the nibbles back from the L16 samples serve forks, so each frame
gives one latency sample without any coordination.

Driven by line commands on stdin, each answered by one JSON line on stdout:

- ``sip N CPS``: place N calls at CPS calls per second, start their RTP,
  answer ``{"answered": a, "failed": f}`` once every INVITE has a final answer;
- ``rtp PORT N``: send RTP (no SIP) to ``127.0.0.1:PORT+2i`` for i < N
  (the naive baseline's sockets);
- ``stop``: stop RTP, hang up every SIP call, wait for the BYEs to be answered;
- ``quit``.

It must not measure anything but what it sent: the bench reads serve's
metrics and the receiver's counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import sys
import time
from dataclasses import dataclass

from rtp.packet import build_packet
from rtp.sip.endpoint import SipEndpoint
from rtp.sip.events import CallEnded, CallHandle, OutgoingCallAnswered, OutgoingCallFailed

PTIME = 0.02
SILENCE = b"\xff" * 152


def marker(now_us: int) -> bytes:
    """The 8-byte send-time marker: 32 bits of microseconds, one nibble per μ-law code."""
    t = now_us & 0xFFFFFFFF
    return bytes(0xF0 | ((t >> (4 * k)) & 0xF) for k in range(8))


@dataclass
class Stream:
    """One caller's RTP: a connected socket and its sequence/timestamp."""

    sock: socket.socket
    ssrc: int
    seq: int = 0
    ts: int = 0

    def send(self, payload: bytes) -> None:
        packet = build_packet(0, self.seq == 0, self.seq & 0xFFFF, self.ts, self.ssrc, payload)
        # the far end may be gone (ICMP unreachable): the receiver's count shows it
        with contextlib.suppress(OSError):
            self.sock.send(packet)
        self.seq += 1
        self.ts = (self.ts + 160) & 0xFFFFFFFF


class Lane(asyncio.DatagramProtocol):
    """One SIP socket and the UAC endpoint on it."""

    def __init__(self, gen: LoadGenerator) -> None:
        self.gen = gen
        self.loop = gen.loop
        self.endpoint: SipEndpoint | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def open(self, host: str) -> None:
        transport, _ = await self.loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))
        self.transport = transport
        port = int(transport.get_extra_info("sockname")[1])
        self.endpoint = SipEndpoint(host, port, now=self.loop.time(), answer_timeout=None)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        assert self.endpoint is not None
        self.endpoint.receive_datagram(data, (str(addr[0]), int(addr[1])), self.loop.time())
        self.pump()

    def pump(self) -> None:
        assert self.endpoint is not None and self.transport is not None
        now = self.loop.time()
        for data, addr in self.endpoint.datagrams_to_send(now):
            self.transport.sendto(data, addr)
        gen = self.gen
        while (event := self.endpoint.next_event()) is not None:
            if isinstance(event, OutgoingCallAnswered):
                gen.on_answer(event)
            elif isinstance(event, OutgoingCallFailed):
                gen.failed += 1
                sock = gen.pending.pop(event.call, None)
                if sock is not None:
                    sock.close()
            elif isinstance(event, CallEnded):
                gen.ended += 1
                stream = gen.streams.pop(event.call, None)
                if stream is not None:
                    stream.sock.close()
                sock = gen.pending.pop(event.call, None)
                if sock is not None:
                    sock.close()
        for data, addr in self.endpoint.datagrams_to_send(now):
            self.transport.sendto(data, addr)
        if self.timer is not None:
            self.timer.cancel()
        deadline = self.endpoint.get_timer()
        if deadline is not None:
            self.timer = self.loop.call_at(deadline, self.on_timer)

    def on_timer(self) -> None:
        assert self.endpoint is not None
        self.timer = None
        self.endpoint.handle_timer(self.loop.time())
        self.pump()


class LoadGenerator:
    def __init__(self, host: str, target: tuple[str, int], lanes: int = 16) -> None:
        self.host = host
        self.target = target
        self.streams: dict[object, Stream] = {}
        self.pending: dict[CallHandle, socket.socket] = {}
        self.answered = 0
        self.failed = 0
        self.ended = 0
        self.sent = 0
        self.loop = asyncio.get_running_loop()
        self.lanes = [Lane(self) for _ in range(max(1, lanes))]
        self.lane_of: dict[CallHandle, Lane] = {}
        self.serial = 0
        self.ticker: asyncio.TimerHandle | None = None
        self.tick_k = 0
        self.tick_start = 0.0

    async def open(self) -> None:
        for lane in self.lanes:
            await lane.open(self.host)

    @property
    def call_count(self) -> int:
        return sum(lane.endpoint.call_count for lane in self.lanes if lane.endpoint is not None)

    def on_answer(self, event: OutgoingCallAnswered) -> None:
        sock = self.pending.pop(event.call)
        body = event.response.body.decode(errors="replace")
        port = re.search(r"^m=audio (\d+)", body, re.M)
        addr = re.search(r"^c=IN IP[46] (\S+)", body, re.M)
        if port is None or addr is None:
            self.failed += 1
            sock.close()
            return
        sock.connect((addr.group(1), int(port.group(1))))
        self.answered += 1
        self.serial += 1
        self.streams[event.call] = Stream(sock, ssrc=0x10000 + self.serial)

    async def place(self, n: int, cps: float) -> dict[str, int]:
        self.answered = self.failed = 0
        host, port = self.target
        for i in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.host, 0))
            sock.setblocking(False)
            rport = sock.getsockname()[1]
            sdp = (
                f"v=0\r\no=- {rport} 1 IN IP4 {self.host}\r\ns=-\r\nc=IN IP4 {self.host}\r\n"
                f"t=0 0\r\nm=audio {rport} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n"
            )
            lane = self.lanes[i % len(self.lanes)]
            assert lane.endpoint is not None
            handle = lane.endpoint.invite(
                f"sip:load@{host}:{port}",
                from_uri=f"<sip:caller{i}@{self.host}>",
                sdp=sdp.encode(),
                timeout=30.0,
                now=self.loop.time(),
            )
            self.pending[handle] = sock
            self.lane_of[handle] = lane
            lane.pump()
            await asyncio.sleep(1.0 / cps)
        deadline = self.loop.time() + 30
        while self.pending and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.start_rtp()
        return {"answered": self.answered, "failed": self.failed}

    async def hang_up(self) -> dict[str, int]:
        self.stop_rtp()
        calls = [c for c in self.streams if isinstance(c, CallHandle)]
        self.ended = 0
        for call in calls:
            lane = self.lane_of.pop(call)
            assert lane.endpoint is not None
            lane.endpoint.hangup(call, now=self.loop.time())
        for lane in self.lanes:
            lane.pump()
        deadline = self.loop.time() + 15
        while self.call_count and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for stream in self.streams.values():
            stream.sock.close()
        self.streams.clear()
        self.lane_of.clear()
        return {"hung_up": len(calls), "ended": self.ended, "left": self.call_count}

    # -- raw RTP (naive baseline) --------------------------------------------------------

    def raw(self, port: int, n: int) -> dict[str, int]:
        for i in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.host, 0))
            sock.setblocking(False)
            sock.connect((self.host, port + 2 * i))
            self.streams[("raw", i)] = Stream(sock, ssrc=0x20000 + i)
        self.start_rtp()
        return {"streams": n}

    # -- the RTP clock ---------------------------------------------------------------------

    def start_rtp(self) -> None:
        if self.ticker is None:
            self.tick_k = 0
            self.tick_start = self.loop.time()
            self.ticker = self.loop.call_at(self.tick_start, self.tick)

    def stop_rtp(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None

    def tick(self) -> None:
        for stream in list(self.streams.values()):
            # the marker is taken per packet: it is this packet's own send time
            stream.send(marker(time.monotonic_ns() // 1000) + SILENCE)
        self.sent += len(self.streams)
        self.tick_k += 1
        due = self.tick_start + self.tick_k * PTIME
        self.ticker = self.loop.call_at(due, self.tick)


async def run(host: str, target: tuple[str, int], lanes: int) -> None:
    gen = LoadGenerator(host, target, lanes)
    await gen.open()
    reader = asyncio.StreamReader()
    await gen.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, int]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while line := (await reader.readline()).decode():
        words = line.split()
        if not words:
            continue
        if words[0] == "sip":
            reply(await gen.place(int(words[1]), float(words[2])))
        elif words[0] == "rtp":
            reply(gen.raw(int(words[1]), int(words[2])))
        elif words[0] == "stop":
            result = await gen.hang_up()
            result["sent"] = gen.sent
            reply(result)
        elif words[0] == "quit":
            break
    gen.stop_rtp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--target", default="127.0.0.1:5060", help="serve's SIP HOST:PORT")
    parser.add_argument("--lanes", type=int, default=16, help="SIP sockets, calls round-robin")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(args.host, (host, int(port)), args.lanes))
    else:
        uvloop.run(run(args.host, (host, int(port)), args.lanes))


if __name__ == "__main__":
    main()
