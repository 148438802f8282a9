"""The UAC path (outgoing calls, for ``dial``) against SIPp's built-in UAS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mediaserver.config import load_config
from mediaserver.engine import EngineClock, MediaEngine
from mediaserver.server import SipServer
from rtp.sdp import SessionDescription, build_offer, process_answer
from rtp.sip.events import OutgoingCallAnswered, OutgoingCallFailed
from tests.e2e.harness import SIPP, free_port_range, free_udp_port


async def start_server() -> SipServer:
    low, high = free_port_range(8)
    config = load_config(sip_port=free_udp_port(), rtp_port_low=low, rtp_port_high=high)
    engine = MediaEngine(4)
    server = SipServer(config, engine, EngineClock(engine))
    await server.start()
    return server


async def test_outgoing_call_to_sipp_uas_is_answered_acked_and_hung_up(tmp_path: Path) -> None:
    assert SIPP is not None, "SIPp missing: scripts/test.sh installs Debian's sip-tester"
    uas_port = free_udp_port()
    uas = subprocess.Popen(
        [
            SIPP,
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            str(uas_port),
            "-m",
            "1",
            "-mp",
            str(free_port_range(4)[0]),
            "-nostdin",
            "-timeout",
            "20s",
            "-trace_err",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = await start_server()
    try:
        offer = build_offer("127.0.0.1", 30000, codecs=("PCMU/8000", "PCMA/8000"))
        handle, outcome = await server.place_call(
            f"sip:service@127.0.0.1:{uas_port}",
            from_uri=f"sip:mediaserver@127.0.0.1:{server.config.sip_port}",
            sdp=bytes(offer),
            timeout=10,
        )
        assert isinstance(outcome, OutgoingCallAnswered), outcome
        media = process_answer(offer, SessionDescription.parse(outcome.response.body))
        assert media.codec == "PCMU/8000"
        ended = await server.end_outgoing(handle)
        assert ended.by == "local"
        assert uas.wait(15) == 0, uas.stderr.read() if uas.stderr else ""
    finally:
        await server.stop(drain=1)
        if uas.poll() is None:
            uas.kill()
            uas.wait(5)


async def test_outgoing_call_to_nobody_fails_with_408() -> None:
    server = await start_server()
    try:
        offer = build_offer("127.0.0.1", 30000)
        _, outcome = await server.place_call(
            f"sip:nobody@127.0.0.1:{free_udp_port()}",
            from_uri="sip:mediaserver@127.0.0.1",
            sdp=bytes(offer),
            timeout=1.5,
        )
    finally:
        await server.stop(drain=1)
    assert isinstance(outcome, OutgoingCallFailed)
    assert outcome.status == 408


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    from mediaserver.logs import configure_logging

    configure_logging("WARNING")
