"""The RTP port pool: even ports, skip busy ones, exhaustion is explicit."""

from __future__ import annotations

import socket

import pytest

from mediaserver.rtp_socket import PortPool, PortsExhausted
from tests.e2e.harness import free_port_range


def test_pool_hands_out_even_ports_skips_busy_ones_and_runs_out() -> None:
    low, high = free_port_range(8)
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", low + 2))  # another process holds one port
    pool = PortPool("127.0.0.1", low, high)
    socks = []
    try:
        for _ in range(3):
            socks.append(pool.take())
        ports = sorted(s.getsockname()[1] for s in socks)
        assert ports == [low, low + 4, low + 6]
        with pytest.raises(PortsExhausted, match=f"no free RTP port in {low}-{high}"):
            pool.take()
        first = next(s for s in socks if s.getsockname()[1] == ports[0])
        first.close()
        pool.give_back(ports[0])
        again = pool.take()
        socks.append(again)
        assert again.getsockname()[1] == ports[0]
    finally:
        busy.close()
        for s in socks:
            s.close()
