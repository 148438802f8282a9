"""serve: the beep and playAudio from the receiver reach the SIP caller as RTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import socket
import time
import wave
from pathlib import Path

import numpy as np

from dsp.g711 import ulaw_decode
from dsp.tones import tone
from mediaserver.receiver import Receiver
from rtp.packet import RtpPacket
from tests.e2e.harness import Server


def wav_b64(pcm: np.ndarray, rate: int = 8000) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def phone_call(server: Server, seconds: float) -> list[RtpPacket]:
    """INVITE serve from a bare SIP socket, ACK, answer its BYE; return the RTP we got."""
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", 0))
    rtp.bind(("127.0.0.1", 0))
    sport, rport = sip.getsockname()[1], rtp.getsockname()[1]
    dest = ("127.0.0.1", server.sip_port)
    sdp = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           f"m=audio {rport} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")  # fmt: skip
    common = (f"From: <sip:phone@127.0.0.1:{sport}>;tag=ph1\r\nCall-ID: playback-{sport}\r\n"
              f"Max-Forwards: 70\r\n")  # fmt: skip
    invite = (f"INVITE sip:svc@127.0.0.1:{dest[1]} SIP/2.0\r\n"
              f"Via: SIP/2.0/UDP 127.0.0.1:{sport};branch=z9hG4bK-inv-{sport}\r\n{common}"
              f"To: <sip:svc@127.0.0.1>\r\nCSeq: 1 INVITE\r\n"
              f"Contact: <sip:phone@127.0.0.1:{sport}>\r\nContent-Type: application/sdp\r\n"
              f"Content-Length: {len(sdp)}\r\n\r\n{sdp}")  # fmt: skip
    sip.settimeout(5)
    sip.sendto(invite.encode(), dest)
    while True:
        text = sip.recv(65536).decode()
        if text.startswith("SIP/2.0 200"):
            break
    to = next(line for line in text.split("\r\n") if line.startswith("To:"))
    ack = (f"ACK sip:svc@127.0.0.1:{dest[1]} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:{sport};branch=z9hG4bK-ack-{sport}\r\n{common}{to}\r\n"
           f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
    sip.sendto(ack.encode(), dest)
    rtp.settimeout(0.2)
    sip.settimeout(0.01)
    packets: list[RtpPacket] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            packets.append(RtpPacket.parse(rtp.recv(2048)))
        try:
            req = sip.recv(65536).decode()
        except TimeoutError:
            continue
        if req.startswith("BYE"):
            keep = [line for line in req.split("\r\n")
                    if line.split(":")[0] in ("Via", "From", "To", "Call-ID", "CSeq")]  # fmt: skip
            sip.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) +
                        "\r\nContent-Length: 0\r\n\r\n").encode(), dest)  # fmt: skip
            break
    sip.close()
    rtp.close()
    return packets


def peak_hz(x: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x.astype(np.float64)))) * 8000 / x.size)


async def test_beep_then_play_audio_are_heard_by_the_caller(tmp_path: Path) -> None:
    play = {"type": "playAudio", "data": {"audioContent": wav_b64(tone(700.0, 0.6, -10.0)),
                                          "audioContentType": "wav"}}  # fmt: skip
    async with Receiver(tmp_path / "rx", send_on_open=[play]) as rx:
        app = [{"verb": "listen", "url": rx.url, "playBeep": True, "maxLength": 2},
               {"verb": "hangup"}]  # fmt: skip
        with Server(tmp_path, app) as server:
            packets = await asyncio.to_thread(phone_call, server, 8.0)
            (call,) = await rx.wait_for_calls(1)
    assert [f["type"] for f in call.frames_of("playDone")] == ["playDone"]
    assert {p.payload_type for p in packets} == {0}
    heard = ulaw_decode(np.frombuffer(b"".join(p.payload for p in packets), np.uint8))
    loud = np.flatnonzero(np.abs(heard.astype(np.int32)) > 500)
    start = int(loud[0])
    assert abs(peak_hz(heard[start : start + 3600]) - 1500) < 5  # the 500 ms beep first
    after = heard[start + 4400 :]
    second = np.flatnonzero(np.abs(after.astype(np.int32)) > 500)
    seg = after[int(second[0]) : int(second[0]) + 4000]
    assert abs(peak_hz(seg) - 700) < 5  # then the receiver's playAudio
