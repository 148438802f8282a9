"""baresip, a second independent SIP stack, calling serve and being dialled by it.

baresip plays a WAV file as its microphone (its aufile module); the audio
must arrive at the reference receiver. baresip is pinned to 127.0.0.1 (-4 -n)
so that neither its SDP nor its RTP leaves loopback.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from dsp.tones import tone
from mediaserver.receiver import Receiver
from tests.e2e.harness import Server, free_port_range, free_udp_port
from tests.e2e.phone import call_serve

BARESIP = shutil.which("baresip")


def speechlike(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(5)
    t = np.arange(int(seconds * 8000)) / 8000
    sig = np.sin(2 * np.pi * 180 * t) + 0.6 * np.sin(2 * np.pi * 540 * t + 1)
    sig = sig + 0.3 * rng.standard_normal(t.size)
    return (sig * (0.6 + 0.4 * np.sin(2 * np.pi * 1.7 * t)) * 6000).astype(np.int16)


def baresip_dir(tmp: Path, source: np.ndarray, *, auto_answer: bool) -> tuple[Path, int]:
    """A baresip config: loopback only, PCMU, the given audio as its microphone."""
    cfg = tmp / "baresip"
    cfg.mkdir()
    wav = cfg / "mic.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(source.astype("<i2").tobytes())
    port = free_udp_port()
    low, high = free_port_range(16)
    (cfg / "config").write_text(
        "poll_method epoll\n"
        f"sip_listen 127.0.0.1:{port}\n"
        "audio_player aubridge,nowhere\n"
        f"audio_source aufile,{wav}\n"
        "audio_alert aubridge,nowhere\n"
        "audio_srate 8000\naudio_channels 1\n"
        "module_path /usr/lib/baresip/modules\n"
        "module g711.so\nmodule aufile.so\nmodule aubridge.so\nmodule menu.so\n"
        "module_app account.so\nmodule_app contact.so\n"
        f"rtp_ports {low}-{high}\n"
    )
    answer = ";answermode=auto" if auto_answer else ""
    (cfg / "accounts").write_text(f"<sip:bot@127.0.0.1:{port}>;regint=0{answer}\n")
    (cfg / "contacts").write_text("")
    return cfg, port


def run_baresip(cfg: Path, seconds: int, *commands: str) -> subprocess.Popen[str]:
    assert BARESIP, "baresip missing: scripts/test.sh installs Debian's baresip-core"
    args = [BARESIP, "-4", "-n", "127.0.0.1", "-f", str(cfg), "-t", str(seconds)]
    for command in commands:
        args += ["-e", command]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def best_correlation(got: np.ndarray, sent: np.ndarray) -> float:
    x, y = got.astype(np.float64), sent.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(x.size + y.size)))
    cc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)
    lags = np.r_[np.arange(0, 4000), np.arange(-4000, 0)]
    lag = int(lags[np.argmax(np.r_[cc[:4000], cc[-4000:]])])
    seg, ref = (x[lag:], y) if lag >= 0 else (x, y[-lag:])
    m = min(seg.size, ref.size)
    return float(np.dot(seg[:m], ref[:m]) / (np.linalg.norm(seg[:m]) * np.linalg.norm(ref[:m])))


async def test_baresip_calls_serve_and_its_audio_reaches_the_receiver(tmp_path: Path) -> None:
    mic = speechlike(6.0)
    cfg, _ = baresip_dir(tmp_path, mic, auto_answer=False)
    async with Receiver(tmp_path / "rx") as rx:
        app = [{"verb": "listen", "url": rx.url, "maxLength": 4}, {"verb": "hangup"}]
        with Server(tmp_path, app) as server:
            phone = run_baresip(cfg, 10, f"/dial sip:svc@127.0.0.1:{server.sip_port}")
            try:
                (call,) = await rx.wait_for_calls(1, timeout=20)
                out, _ = await asyncio.to_thread(phone.communicate, timeout=20)
            finally:
                if phone.poll() is None:
                    phone.kill()
            answered = server.wait_for("call.answered")[0]
    assert "Call established" in out
    assert answered["remote"][0] == "127.0.0.1"
    assert call.close_code == 1000 and call.seconds >= 3.8
    assert best_correlation(call.audio[:, 0], mic) >= 0.95


async def test_serve_dials_baresip_and_bridges_it_to_the_caller(tmp_path: Path) -> None:
    mic = speechlike(12.0)
    cfg, port = baresip_dir(tmp_path, mic, auto_answer=True)
    callee = run_baresip(cfg, 14)
    try:
        await asyncio.sleep(1.0)  # baresip up and listening
        async with Receiver(tmp_path / "rx") as rx:
            target = [{"type": "sip", "sipUri": f"sip:bot@127.0.0.1:{port}"}]
            app = [{"verb": "dial", "target": target,
                    "listen": {"url": rx.url, "mixType": "stereo"}}]  # fmt: skip
            with Server(tmp_path, app) as server:
                phone = await asyncio.to_thread(
                    call_serve, "127.0.0.1", server.sip_port, tone(600.0, 8.0, -10.0), seconds=6
                )
                (fork,) = await rx.wait_for_calls(1, timeout=20)
    finally:
        callee.kill()
        callee.wait(5)
    assert phone.answered
    left = fork.audio[4000:36000, 0].astype(np.float64)
    assert abs(np.argmax(np.abs(np.fft.rfft(left))) * 8000 / left.size - 600) < 3  # the caller
    assert best_correlation(fork.audio[:, 1], mic) >= 0.9  # baresip's microphone, bridged
