"""A tiny reader for classic libpcap captures (test helper, not part of the package).

Reads the format SIPp's bundled captures use: the classic pcap file header
(either byte order, microsecond or nanosecond timestamps), Ethernet (with
an optional 802.1Q tag) or raw-IP link types, IPv4, UDP. Yields each UDP
datagram with its capture time; anything else is skipped. No pcapng, no
IPv6, no IP reassembly: the test captures need none of them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

SIPP_CAPTURES = Path("/usr/share/sip-tester")

_LINK_ETHERNET = 1
_LINK_RAW = 101
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_VLAN = 0x8100
_PROTO_UDP = 17


class UdpDatagram(NamedTuple):
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def read_udp(path: Path | str) -> Iterator[UdpDatagram]:
    data = Path(path).read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise ValueError(f"{path}: not a classic pcap file (magic {magic.hex()})")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    (link,) = struct.unpack_from(order + "I", data, 20)
    record = struct.Struct(order + "IIII")
    pos = 24
    while pos + record.size <= len(data):
        sec, frac, captured, _ = record.unpack_from(data, pos)
        pos += record.size
        frame = data[pos : pos + captured]
        pos += captured
        time = sec + frac / (1e9 if nano else 1e6)
        if link == _LINK_ETHERNET:
            (ethertype,) = struct.unpack_from("!H", frame, 12)
            offset = 14
            if ethertype == _ETHERTYPE_VLAN:
                (ethertype,) = struct.unpack_from("!H", frame, 16)
                offset = 18
            if ethertype != _ETHERTYPE_IPV4:
                continue
        elif link == _LINK_RAW:
            offset = 0
        else:
            raise ValueError(f"{path}: link type {link} not supported")
        ip = frame[offset:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != _PROTO_UDP:
            continue
        header = (ip[0] & 0x0F) * 4
        (total,) = struct.unpack_from("!H", ip, 2)
        udp = ip[header:total]
        sport, dport, length = struct.unpack_from("!HHH", udp)
        yield UdpDatagram(
            time, (_ip(ip[12:16]), sport), (_ip(ip[16:20]), dport), bytes(udp[8:length])
        )
