"""A bare SIP phone for tests: INVITE, ACK, send RTP, hang up or answer a BYE.

Blocking sockets, meant to run in a thread (``asyncio.to_thread``) next to an
in-process receiver. It speaks just enough SIP for one call to ``serve``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field

import numpy as np

from dsp.g711 import ulaw_encode
from rtp.packet import RtpPacket, build_packet


@dataclass
class PhoneCall:
    received: list[RtpPacket] = field(default_factory=list)
    answered: bool = False
    bye_from_server: bool = False
    final_status: int = 0


def call_serve(
    host: str,
    sip_port: int,
    audio: np.ndarray | None,
    *,
    seconds: float,
    hang_up: bool = True,
) -> PhoneCall:
    """Call serve, send ``audio`` (8 kHz int16, PCMU) for up to ``seconds``, then BYE."""
    out = PhoneCall()
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind((host, 0))
    rtp.bind((host, 0))
    sport, rport = sip.getsockname()[1], rtp.getsockname()[1]
    dest = (host, sip_port)
    sdp = (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
           f"m=audio {rport} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")  # fmt: skip
    common = (f"From: <sip:phone@{host}:{sport}>;tag=ph{sport}\r\nCall-ID: phone-{sport}\r\n"
              f"Max-Forwards: 70\r\n")  # fmt: skip
    invite = (f"INVITE sip:svc@{host}:{sip_port} SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP {host}:{sport};branch=z9hG4bK-inv-{sport}\r\n{common}"
              f"To: <sip:svc@{host}>\r\nCSeq: 1 INVITE\r\n"
              f"Contact: <sip:phone@{host}:{sport}>\r\nContent-Type: application/sdp\r\n"
              f"Content-Length: {len(sdp)}\r\n\r\n{sdp}")  # fmt: skip
    sip.settimeout(10)
    sip.sendto(invite.encode(), dest)
    while True:
        text = sip.recv(65536).decode()
        status = int(text.split(" ", 2)[1]) if text.startswith("SIP/2.0") else 0
        if status >= 200:
            break
    out.final_status = status
    if status != 200:
        # ACK a failure within its INVITE transaction (same branch), as a UA must
        to_tag = next(line for line in text.split("\r\n") if line.startswith("To:"))
        ack = (f"ACK sip:svc@{host}:{sip_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {host}:{sport};branch=z9hG4bK-inv-{sport}\r\n{common}"
               f"{to_tag}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
        sip.sendto(ack.encode(), dest)
        sip.close()
        rtp.close()
        return out
    out.answered = True
    to = next(line for line in text.split("\r\n") if line.startswith("To:"))
    body = text.split("\r\n\r\n", 1)[1]
    media_port = int(next(ln for ln in body.split("\r\n") if ln.startswith("m=audio")).split()[1])
    ack = (f"ACK sip:svc@{host}:{sip_port} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP {host}:{sport};branch=z9hG4bK-ack-{sport}\r\n{common}{to}\r\n"
           f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
    sip.sendto(ack.encode(), dest)
    rtp.setblocking(False)
    sip.setblocking(False)
    payload = ulaw_encode(audio) if audio is not None else None
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        due = int((time.monotonic() - start) / 0.02)
        while payload is not None and sent <= due and (sent + 1) * 160 <= payload.size:
            chunk = payload[sent * 160 : (sent + 1) * 160].tobytes()
            rtp.sendto(build_packet(0, sent == 0, sent, sent * 160, 0xFEED, chunk),
                       (host, media_port))  # fmt: skip
            sent += 1
        with contextlib.suppress(BlockingIOError):
            while True:
                out.received.append(RtpPacket.parse(rtp.recv(2048)))
        with contextlib.suppress(BlockingIOError):
            req = sip.recv(65536).decode()
            if req.startswith("BYE"):
                names = ("Via", "From", "To", "Call-ID", "CSeq")
                keep = [ln for ln in req.split("\r\n") if ln.split(":")[0] in names]
                sip.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(keep)
                            + "\r\nContent-Length: 0\r\n\r\n").encode(), dest)  # fmt: skip
                out.bye_from_server = True
                break
        time.sleep(0.005)
    if hang_up and not out.bye_from_server:
        bye = (f"BYE sip:svc@{host}:{sip_port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {host}:{sport};branch=z9hG4bK-bye-{sport}\r\n{common}{to}\r\n"
               f"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
        sip.setblocking(True)
        sip.settimeout(5)
        sip.sendto(bye.encode(), dest)
        with contextlib.suppress(TimeoutError):
            while not sip.recv(65536).decode().startswith("SIP/2.0 200"):
                pass
    sip.close()
    rtp.close()
    return out
