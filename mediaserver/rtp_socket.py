"""RTP sockets: the port pool and the asyncio datagram adapter for one leg.

Owns binding one UDP port per leg from the configured range (even ports,
RTCP on the odd one above is not opened), pumping received datagrams into
the leg with the engine's media time, and sending the leg's packets to the
far end. Symmetric RTP: once RTP arrives from an address other than the
one in the SDP (a NAT), replies go there instead.

It must not parse or interpret RTP (``Leg.receive_datagram`` does).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import cast

from mediaserver.engine import Leg

__all__ = ["PortPool", "PortsExhausted", "RtpSocket"]


class PortsExhausted(RuntimeError):
    """No free even port is left in the RTP range."""


class PortPool:
    """Even UDP ports from ``low..high``, bound on ``host`` when taken."""

    def __init__(self, host: str, low: int, high: int) -> None:
        self.host = host
        self.low = low + (low % 2)
        self.high = high
        self._free = list(range(self.low, high + 1, 2))
        self._next = 0
        self.in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        return len(self._free)

    def take(self) -> socket.socket:
        """A bound, non-blocking UDP socket on a free port; ``PortsExhausted`` if none."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(len(self._free)):
            port = self._free[self._next]
            self._next = (self._next + 1) % len(self._free)  # rotate: don't reuse at once
            if port in self.in_use:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((self.host, port))
            except OSError:
                sock.close()  # taken by another process: skip it
                continue
            sock.setblocking(False)
            self.in_use.add(port)
            return sock
        raise PortsExhausted(f"no free RTP port in {self.low}-{self.high} on {self.host}")

    def give_back(self, port: int) -> None:
        self.in_use.discard(port)


class RtpSocket(asyncio.DatagramProtocol):
    """One leg's UDP socket: datagrams in to the leg, the leg's packets out."""

    def __init__(
        self, leg: Leg, remote: tuple[str, int] | None, media_now: Callable[[], float]
    ) -> None:
        self.leg = leg
        self.remote = remote
        self._media_now = media_now
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.latched = False
        self.send_errors = 0

    @classmethod
    async def open(
        cls,
        pool: PortPool,
        leg: Leg,
        remote: tuple[str, int] | None,
        media_now: Callable[[], float],
    ) -> RtpSocket:
        sock = pool.take()
        return await cls.adopt(sock, int(sock.getsockname()[1]), pool, leg, remote, media_now)

    @classmethod
    async def adopt(
        cls,
        sock: socket.socket,
        port: int,
        pool: PortPool,
        leg: Leg,
        remote: tuple[str, int] | None,
        media_now: Callable[[], float],
    ) -> RtpSocket:
        """Serve ``leg`` on a socket already taken from ``pool`` (bound before the
        SDP offer went out, attached once the answer says which codec)."""
        loop = asyncio.get_running_loop()
        try:
            _, proto = await loop.create_datagram_endpoint(
                lambda: cls(leg, remote, media_now), sock=sock
            )
        except BaseException:
            sock.close()
            pool.give_back(port)
            raise
        proto.port = port
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.latched:  # symmetric RTP: answer where the media comes from
            self.remote = (str(addr[0]), int(addr[1]))
            self.latched = True
        self.leg.receive_datagram(data, self._media_now())

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1  # ICMP port unreachable etc.: the far end is not there yet

    def send(self, data: bytes) -> None:
        if self._transport is not None and self.remote is not None:
            self._transport.sendto(data, self.remote)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
