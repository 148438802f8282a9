"""Write RTP captures SIPp can play (classic pcap, Ethernet/IPv4/UDP), for tests.

SIPp's ``play_pcap_audio`` replays the RTP payloads of a capture with its
timing; tests need captures of signals they know (a tone) to tell two
SIPp-played legs apart.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from dsp.g711 import alaw_encode
from rtp.packet import build_packet


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_pcma_pcap(path: Path, pcm: np.ndarray, ptime_ms: int = 20) -> Path:
    """``pcm`` (8 kHz int16) as PCMA RTP packets every ``ptime_ms`` in a pcap file."""
    samples = 8 * ptime_ms
    codes = alaw_encode(pcm[: pcm.size // samples * samples])
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    for i in range(codes.size // samples):
        rtp = build_packet(8, i == 0, i, i * samples, 0xC0FFEE,
                           codes[i * samples : (i + 1) * samples].tobytes())  # fmt: skip
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0,
                                   64, 17, 0, src, dst))  # fmt: skip
        ip[10:12] = struct.pack("!H", _checksum(bytes(ip)))
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
        frame += bytes(ip) + udp
        t = i * ptime_ms / 1000
        out += struct.pack("<IIII", int(t), round((t % 1) * 1e6), len(frame), len(frame))
        out += frame
    path.write_bytes(bytes(out))
    return path
