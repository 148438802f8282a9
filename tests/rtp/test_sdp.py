"""SDP parsing/serialisation and RFC 3264 offer/answer on real-world offer shapes."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtp.sdp import (
    Answer,
    Direction,
    NegotiatedMedia,
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    build_offer,
    negotiate,
    process_answer,
)

# --------------------------------------------------------------------------- fixtures
# Written for these tests in the shape each product sends (not captured traffic).

# SIPp's built-in `uac` scenario (`sipp -sd uac`): PCMU only, c= at session level.
SIPP_UAC = """\
v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""

# SIPp's `uac_pcap`: PCMA plus RFC 2833 events 0-11 and 16.
SIPP_UAC_PCAP = """\
v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-11,16
"""

# linphone/baresip style: opus first, speex, telephone-event at 48000, 16000 and 8000.
LINPHONE = """\
v=0
o=alice 3218 1042 IN IP4 192.168.1.20
s=Talk
c=IN IP4 192.168.1.20
t=0 0
a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics
a=record:off
m=audio 7078 RTP/AVP 96 97 98 0 8 101 99 100
a=rtpmap:96 opus/48000/2
a=fmtp:96 useinbandfec=1
a=rtpmap:97 speex/16000
a=fmtp:97 vbr=on
a=rtpmap:98 speex/8000
a=fmtp:98 vbr=on
a=rtpmap:101 telephone-event/48000
a=rtpmap:99 telephone-event/16000
a=rtpmap:100 telephone-event/8000
a=rtcp:7079
a=rtcp-fb:* trr-int 1000
a=rtcp-fb:* ccm tmmbr
"""

# Zoiper style: many codecs, opus first, G.722, iLBC, GSM, rtcp-mux, an unknown line type.
ZOIPER = """\
v=0
o=Z 1700000000001 1 IN IP4 10.1.2.3
s=Z
c=IN IP4 10.1.2.3
t=0 0
m=audio 52000 RTP/AVP 106 9 98 101 0 8 3 97 18
b=AS:84
a=rtpmap:106 opus/48000/2
a=fmtp:106 sprop-maxcapturerate=16000; minptime=20; useinbandfec=1
a=rtpmap:98 telephone-event/48000
a=fmtp:98 0-16
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtpmap:97 iLBC/8000
a=fmtp:97 mode=20
a=fmtp:18 annexb=no
a=sendrecv
a=rtcp-mux
y=zoiper-private-line
"""

# FreeSWITCH style: G.722 first, a=ptime:20, CN, explicit a=rtcp with address.
FREESWITCH = """\
v=0
o=FreeSWITCH 1700001234 1700001235 IN IP4 172.16.0.5
s=FreeSWITCH
c=IN IP4 172.16.0.5
t=0 0
m=audio 24680 RTP/AVP 9 0 8 102 101 13
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:102 L16/16000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtpmap:13 CN/8000
a=ptime:20
a=sendrecv
a=rtcp:24690 IN IP4 172.16.0.5
"""

IPV6 = """\
v=0
o=- 20518 0 IN IP6 2001:db8::10
s=-
c=IN IP6 2001:db8::10
t=0 0
m=audio 30000 RTP/AVP 8 0 101
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
"""

UNSUPPORTED_ONLY = """\
v=0
o=- 1 1 IN IP4 198.51.100.7
s=-
c=IN IP4 198.51.100.7
t=0 0
m=audio 40000 RTP/AVP 3 18 101
a=rtpmap:3 GSM/8000
a=rtpmap:18 G729/8000
a=fmtp:18 annexb=no
a=rtpmap:101 telephone-event/8000
"""

SAVP_ONLY = """\
v=0
o=- 1 1 IN IP4 198.51.100.7
s=-
c=IN IP4 198.51.100.7
t=0 0
m=audio 40000 RTP/SAVP 0 8
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz
"""

HOLD_SENDONLY = """\
v=0
o=- 77 2 IN IP4 203.0.113.9
s=-
c=IN IP4 203.0.113.9
t=0 0
m=audio 41000 RTP/AVP 0 101
a=rtpmap:101 telephone-event/8000
a=sendonly
"""

HOLD_NULL_ADDRESS = """\
v=0
o=- 77 3 IN IP4 203.0.113.9
s=-
c=IN IP4 0.0.0.0
t=0 0
m=audio 41000 RTP/AVP 0
"""

MEDIA_LEVEL_C = """\
v=0
o=- 5 5 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
a=recvonly
m=audio 42000 RTP/AVP 8
c=IN IP4 192.0.2.99
a=sendrecv
"""

PORT_ZERO_FIRST = """\
v=0
o=- 9 9 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 0 RTP/AVP 0
m=audio 43000 RTP/AVP 8
"""

AUDIO_AND_VIDEO = """\
v=0
o=- 11 11 IN IP4 192.0.2.1
s=-
c=IN IP4 192.0.2.1
t=0 0
m=audio 44000 RTP/AVP 0 8
a=rtpmap:0 PCMU/8000
m=video 44002 RTP/AVP 96
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=42e01f
"""

ALL_FIXTURES = [
    SIPP_UAC,
    SIPP_UAC_PCAP,
    LINPHONE,
    ZOIPER,
    FREESWITCH,
    IPV6,
    UNSUPPORTED_ONLY,
    SAVP_ONLY,
    HOLD_SENDONLY,
    HOLD_NULL_ADDRESS,
    MEDIA_LEVEL_C,
    PORT_ZERO_FIRST,
    AUDIO_AND_VIDEO,
]

US = "192.0.2.50"


def answer(text: str, **options: object) -> Answer:
    options.setdefault("local_address", US)
    options.setdefault("local_port", 20000)
    return negotiate(SessionDescription.parse(text), **options)  # type: ignore[arg-type]


def lines(sdp: SessionDescription) -> list[str]:
    return str(sdp).split("\r\n")


def audio_section(sdp: SessionDescription, index: int = 0) -> list[str]:
    """The answer's text for one m= section."""
    text = str(sdp)
    sections = re.split(r"\r\n(?=m=)", text)
    return sections[index + 1].strip("\r\n").split("\r\n")


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text", ALL_FIXTURES)
def test_fixture_round_trips_text_and_objects(text: str) -> None:
    sdp = SessionDescription.parse(text)
    crlf = text.replace("\n", "\r\n")
    assert str(sdp) == crlf
    assert SessionDescription.parse(str(sdp)) == sdp
    assert SessionDescription.parse(crlf.encode()) == sdp


def test_unknown_lines_and_attributes_survive() -> None:
    sdp = SessionDescription.parse(ZOIPER)
    (media,) = sdp.media
    assert ("y", "zoiper-private-line") in media.other_lines
    assert "y=zoiper-private-line" in str(sdp)
    session = SessionDescription.parse(LINPHONE)
    assert "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics" in lines(
        session
    )


def test_static_payload_types_need_no_rtpmap() -> None:
    (media,) = SessionDescription.parse(IPV6).media
    keys = {f.payload_type: f.key for f in media.payload_formats}
    assert keys == {8: "PCMA/8000", 0: "PCMU/8000", 101: "telephone-event/8000"}


def test_dynamic_payload_type_without_rtpmap_is_left_out() -> None:
    text = SIPP_UAC.replace("RTP/AVP 0", "RTP/AVP 0 120")
    (media,) = SessionDescription.parse(text).media
    assert [f.payload_type for f in media.payload_formats] == [0]


def test_lenient_on_harmless_variations() -> None:
    messy = (
        "v=0  \r\no=- 1 1 IN IP4 10.0.0.1\t\r\n\r\nc=IN  IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\n"
    )
    sdp = SessionDescription.parse(messy)
    assert sdp.session_name == "-"  # missing s= reads as "-"
    assert len(sdp.timings) == 1 and sdp.timings[0].start == 0  # missing t= reads as t=0 0
    assert sdp.connection is not None and sdp.connection.address == "10.0.0.1"
    assert SessionDescription.parse(str(sdp)) == sdp


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty SDP"),
        ("o=- 1 1 IN IP4 1.2.3.4\n", "line 1 (o=): an SDP body must start with v=0"),
        ("v=1\n", "unsupported SDP version"),
        ("v=0\ns=-\n", "missing o="),
        ("v=0\no=- x 1 IN IP4 1.2.3.4\n", "line 2 (o=): o= sess-id 'x' is not a number"),
        ("v=0\no=- 1 1 IN IP4\n", "o= needs 6 fields"),
        (SIPP_UAC.replace("m=audio 6000", "m=audio 6x00"), "line 6 (m=): m= port '6x00'"),
        (SIPP_UAC.replace("m=audio 6000", "m=audio 70000"), "above 65535"),
        (SIPP_UAC.replace("RTP/AVP 0", "RTP/AVP 128"), "payload type '128'"),
        (SIPP_UAC.replace("RTP/AVP 0", "RTP/AVP"), "m= lists no media format"),
        (SIPP_UAC.replace("rtpmap:0 PCMU/8000", "rtpmap:0 PCMU"), "line 7 (a=): rtpmap must be"),
        (SIPP_UAC.replace("c=IN IP4 127.0.0.1", "c=IN IP4"), "c= needs 3 fields"),
        (SIPP_UAC.replace("c=IN IP4 127.0.0.1\n", ""), "no c= line"),
        (SIPP_UAC.replace("t=0 0", "t=now"), "line 5 (t=): t= must be two numbers"),
        (SIPP_UAC + "a=ptime:fast\n", "ptime must be a positive number"),
        (SIPP_UAC + "a=sendonly\na=recvonly\n", "conflicting direction attributes"),
        (SIPP_UAC + "t=0 0\n", "t= is a session-level line and may not follow m="),
        (SIPP_UAC.replace("s=-\n", "s=-\ns=again\n"), "s= may appear only once"),
        (SIPP_UAC + "this is not sdp\n", "expected '<letter>=<value>'"),
        (SIPP_UAC + "a=x\x00y\n", "NUL or CR"),
        (SIPP_UAC + "b=AS\n", "b= must be <bwtype>:<bandwidth>"),
        (SIPP_UAC + "a=rtcp:99999\n", "rtcp must be"),
    ],
)
def test_garbage_is_rejected_with_the_line_and_field(text: str, fragment: str) -> None:
    with pytest.raises(SdpError) as error:
        SessionDescription.parse(text)
    assert fragment in str(error.value)


def test_invalid_utf8_is_an_sdp_error() -> None:
    with pytest.raises(SdpError, match="UTF-8"):
        SessionDescription.parse(SIPP_UAC.encode() + b"s=\xff\n")


def test_error_types() -> None:
    assert issubclass(SdpError, ValueError)
    assert issubclass(SdpNegotiationError, SdpError)
    assert SdpNegotiationError.status_code == 488


# --------------------------------------------------------------------------- answering


def test_sipp_uac_gets_pcmu_at_our_address() -> None:
    result = answer(SIPP_UAC)
    media = result.media
    assert (media.codec, media.payload_type, media.clock_rate) == ("PCMU/8000", 0, 8000)
    assert (media.remote_address, media.remote_port, media.remote_rtcp_port) == (
        "127.0.0.1",
        6000,
        6001,
    )
    assert media.direction is Direction.SENDRECV and not media.on_hold
    assert media.telephone_event_payload_type is None
    sdp = result.sdp
    assert sdp.connection is not None and sdp.connection.host == US
    assert audio_section(sdp) == [
        "m=audio 20000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
        "a=ptime:20",
        "a=sendrecv",
    ]
    assert SessionDescription.parse(str(result)) == sdp


def test_sipp_uac_pcap_keeps_pcma_and_its_events() -> None:
    media = answer(SIPP_UAC_PCAP).media
    assert (media.codec, media.payload_type) == ("PCMA/8000", 8)
    assert media.telephone_event_payload_type == 101
    assert media.telephone_events == "0-11,16"
    assert "a=fmtp:101 0-11,16" in audio_section(answer(SIPP_UAC_PCAP).sdp)


@pytest.mark.skipif(shutil.which("sipp") is None, reason="SIPp is not installed")
@pytest.mark.parametrize(("scenario", "codec"), [("uac", "PCMU/8000"), ("uac_pcap", "PCMA/8000")])
def test_sipp_builtin_scenario_offers_are_answered(scenario: str, codec: str) -> None:
    xml = subprocess.run(["sipp", "-sd", scenario], capture_output=True, text=True).stdout
    body = xml[xml.index("v=0") : xml.index("]]>", xml.index("v=0"))]
    filled = (
        body.replace("[local_ip_type]", "4")
        .replace("[media_ip_type]", "4")
        .replace("[local_ip]", "127.0.0.1")
        .replace("[media_ip]", "127.0.0.1")
        .replace("[auto_media_port]", "6000")
        .replace("[media_port]", "6000")
    )
    filled = "\n".join(line.strip() for line in filled.splitlines())
    result = answer(filled)
    assert result.media.codec == codec
    assert result.media.remote_port == 6000


def test_linphone_opus_echoes_dynamic_payload_type_and_prefers_event_8000() -> None:
    result = answer(LINPHONE, preference=("opus", "PCMU"))
    media = result.media
    assert (media.codec, media.payload_type, media.channels) == ("opus/48000/2", 96, 2)
    assert media.fmtp == "useinbandfec=1"
    assert media.telephone_event_payload_type == 100  # the /8000 one, not 101 (/48000)
    assert media.telephone_event_clock_rate == 8000
    assert media.remote_rtcp_port == 7079  # a=rtcp wins over port + 1
    section = audio_section(result.sdp)
    assert section[0] == "m=audio 20000 RTP/AVP 96 100"
    assert "a=rtpmap:96 opus/48000/2" in section
    assert "a=rtpmap:100 telephone-event/8000" in section


def test_telephone_event_at_the_codec_rate_when_no_8000() -> None:
    only_48k = LINPHONE.replace("a=rtpmap:100 telephone-event/8000\n", "").replace(" 99 100", "")
    opus = answer(only_48k, preference=("opus",)).media
    assert (opus.telephone_event_payload_type, opus.telephone_event_clock_rate) == (101, 48000)
    pcmu = answer(only_48k, preference=("PCMU",)).media
    assert pcmu.codec == "PCMU/8000" and pcmu.telephone_event_payload_type is None


def test_zoiper_default_preference_is_ours_not_the_offerers() -> None:
    media = answer(ZOIPER).media
    assert (media.codec, media.payload_type) == ("PCMU/8000", 0)
    assert media.telephone_event_payload_type == 101


@pytest.mark.parametrize(
    ("preference", "codec", "payload_type"),
    [
        (("PCMU", "PCMA"), "PCMU/8000", 0),
        (("PCMA", "PCMU"), "PCMA/8000", 8),
        (("G722", "PCMU"), "G722/8000", 9),
        (("opus", "PCMU"), "opus/48000/2", 106),
    ],
)
def test_preference_order_changes_the_choice(
    preference: tuple[str, ...], codec: str, payload_type: int
) -> None:
    media = answer(ZOIPER, preference=preference).media
    assert (media.codec, media.payload_type) == (codec, payload_type)


def test_honouring_the_offerers_order() -> None:
    media = answer(ZOIPER, preference=("PCMU",), honour_offerer_order=True).media
    assert media.codec == "opus/48000/2"
    media = answer(FREESWITCH, honour_offerer_order=True).media
    assert media.codec == "G722/8000"


def test_supported_limits_the_choice_and_keys_match_case_insensitively() -> None:
    media = answer(FREESWITCH, supported=("L16/16000",)).media
    assert (media.codec, media.payload_type, media.clock_rate) == ("L16/16000", 102, 16000)
    lower = SIPP_UAC.replace("PCMU/8000", "pcmu/8000")
    assert answer(lower).media.codec == "PCMU/8000"


def test_opus_needs_two_channels() -> None:
    mono_opus = SIPP_UAC.replace("RTP/AVP 0", "RTP/AVP 111").replace(
        "rtpmap:0 PCMU/8000", "rtpmap:111 opus/48000"
    )
    with pytest.raises(SdpNegotiationError, match="opus/48000"):
        answer(mono_opus)


def test_freeswitch_ptime_and_rtcp() -> None:
    media = answer(FREESWITCH, ptime=40).media
    assert media.ptime == 20  # the offer's ptime wins over our default
    assert media.remote_rtcp_port == 24690


@pytest.mark.parametrize(("offered", "ours", "expected"), [(30, 20, 30), (None, 40, 40)])
def test_ptime_is_honoured(offered: int | None, ours: int, expected: int) -> None:
    text = SIPP_UAC + (f"a=ptime:{offered}\n" if offered else "")
    result = answer(text, ptime=ours)
    assert result.media.ptime == expected
    assert f"a=ptime:{expected}" in audio_section(result.sdp)


def test_maxptime_caps_our_ptime() -> None:
    assert answer(SIPP_UAC + "a=maxptime:20\n", ptime=40).media.ptime == 20


def test_ptime_the_codec_cannot_frame_falls_back() -> None:
    opus = {"preference": ("opus",)}
    assert answer(LINPHONE + "a=ptime:30\n", **opus).media.ptime == 20  # no 30 ms opus frames
    assert answer(LINPHONE + "a=ptime:40\n", **opus).media.ptime == 40
    assert answer(LINPHONE + "a=maxptime:30\n", ptime=40, **opus).media.ptime == 20
    assert answer(SIPP_UAC + "a=ptime:500\n").media.ptime == 20
    assert answer(SIPP_UAC + "a=ptime:22.5\n").media.ptime == 20


def test_ipv6_offer_answered_from_ipv4_and_ipv6() -> None:
    result = answer(IPV6)
    assert result.media.remote_address == "2001:db8::10"
    assert result.media.codec == "PCMU/8000"
    assert result.media.telephone_events == "0-15"
    assert "c=IN IP4 192.0.2.50" in lines(result.sdp)
    v6 = answer(SIPP_UAC, local_address="2001:db8::1")
    assert "c=IN IP6 2001:db8::1" in lines(v6.sdp)
    assert v6.sdp.origin.addrtype == "IP6"


def test_only_unsupported_codecs_is_488_naming_them() -> None:
    with pytest.raises(SdpNegotiationError) as error:
        answer(UNSUPPORTED_ONLY)
    message = str(error.value)
    assert "GSM/8000" in message and "G729/8000" in message
    assert "no supported codec" in message
    assert error.value.status_code == 488


def test_savp_only_is_rejected() -> None:
    with pytest.raises(SdpNegotiationError, match=r"RTP/SAVP.*SRTP is not supported"):
        answer(SAVP_ONLY)


def test_no_audio_at_all() -> None:
    no_media = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nt=0 0\n"
    with pytest.raises(SdpNegotiationError, match="no m= line"):
        answer(no_media)
    video_only = AUDIO_AND_VIDEO.replace("m=audio 44000", "m=audio 0")
    with pytest.raises(SdpNegotiationError, match=r"m-line 2 \(video RTP/AVP\): not audio"):
        answer(video_only)


@pytest.mark.parametrize(
    ("offered", "ours", "answered", "on_hold"),
    [
        (Direction.SENDRECV, Direction.SENDRECV, Direction.SENDRECV, False),
        (Direction.SENDONLY, Direction.SENDRECV, Direction.RECVONLY, True),
        (Direction.RECVONLY, Direction.SENDRECV, Direction.SENDONLY, False),
        (Direction.INACTIVE, Direction.SENDRECV, Direction.INACTIVE, True),
        (Direction.SENDRECV, Direction.SENDONLY, Direction.SENDONLY, False),
        (Direction.RECVONLY, Direction.RECVONLY, Direction.INACTIVE, False),
    ],
)
def test_direction_answers_per_rfc3264(
    offered: Direction, ours: Direction, answered: Direction, on_hold: bool
) -> None:
    result = answer(SIPP_UAC + f"a={offered.value}\n", direction=ours)
    assert result.media.direction is answered
    assert result.media.on_hold is on_hold
    assert f"a={answered.value}" in audio_section(result.sdp)


def test_sendonly_hold_answers_recvonly() -> None:
    media = answer(HOLD_SENDONLY).media
    assert media.direction is Direction.RECVONLY and media.on_hold
    assert media.remote_address == "203.0.113.9"


def test_null_address_hold_has_no_remote() -> None:
    media = answer(HOLD_NULL_ADDRESS).media
    assert media.on_hold
    assert media.remote_address is None and media.remote_port is None


def test_media_level_c_and_direction_win_over_session_level() -> None:
    media = answer(MEDIA_LEVEL_C).media
    assert media.remote_address == "192.0.2.99"
    assert media.direction is Direction.SENDRECV


def test_session_level_direction_applies_without_media_level() -> None:
    text = SIPP_UAC.replace("t=0 0\n", "t=0 0\na=sendonly\n")
    assert answer(text).media.direction is Direction.RECVONLY


def test_port_zero_stream_is_skipped_and_answered_with_port_zero() -> None:
    result = answer(PORT_ZERO_FIRST)
    assert result.media.stream_index == 1 and result.media.codec == "PCMA/8000"
    first, second = result.sdp.media
    assert first.port == 0 and first.formats == ("0",)
    assert second.port == 20000


def test_video_is_rejected_with_port_zero_and_same_mline_count() -> None:
    result = answer(AUDIO_AND_VIDEO)
    audio, video = result.sdp.media
    assert (audio.media, audio.port) == ("audio", 20000)
    assert (video.media, video.port, video.formats) == ("video", 0, ("96",))
    assert "m=video 0 RTP/AVP 96" in lines(result.sdp)


def test_savp_stream_rejected_next_to_avp_stream() -> None:
    both = SAVP_ONLY + "m=audio 40002 RTP/AVP 0\n"
    result = answer(both)
    assert result.media.stream_index == 1
    assert [m.port for m in result.sdp.media] == [0, 20000]


def test_extra_audio_streams_are_rejected() -> None:
    two = SIPP_UAC + "m=audio 6002 RTP/AVP 8\n"
    result = answer(two)
    assert [m.port for m in result.sdp.media] == [20000, 0]


def test_answer_copies_the_offers_timing() -> None:
    timed = SIPP_UAC.replace("t=0 0", "t=3034423619 3042462419")
    assert "t=3034423619 3042462419" in lines(answer(timed).sdp)


def test_rtcp_mux_only_when_offered_and_accepted() -> None:
    assert not answer(ZOIPER).media.rtcp_mux
    accepted = answer(ZOIPER, rtcp_mux=True)
    assert accepted.media.rtcp_mux and accepted.media.remote_rtcp_port == 52000
    assert "a=rtcp-mux" in audio_section(accepted.sdp)
    assert not answer(SIPP_UAC, rtcp_mux=True).media.rtcp_mux


def test_reinvite_keeps_session_id_and_increments_version() -> None:
    first = answer(SIPP_UAC, session_id=4242, session_version=7)
    assert (first.sdp.origin.session_id, first.sdp.origin.session_version) == (4242, 7)
    hold = answer(HOLD_SENDONLY, previous=first.sdp)
    assert (hold.sdp.origin.session_id, hold.sdp.origin.session_version) == (4242, 8)
    assert hold.media.on_hold
    unhold = answer(SIPP_UAC, previous=hold.sdp)
    assert unhold.sdp.origin.session_version == 9
    assert not unhold.media.on_hold


def test_fresh_sessions_get_different_ids() -> None:
    ids = {answer(SIPP_UAC).sdp.origin.session_id for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("local_port", 0, "local_port"),
        ("local_port", 70000, "local_port"),
        ("local_address", "", "local_address"),
        ("local_address", "10.0.0.1 evil", "local_address"),
        ("username", "two words", "username"),
        ("session_name", "a\r\nm=video 1 RTP/AVP 0", "session_name"),
        ("session_id", -1, "negative"),
    ],
)
def test_our_own_bad_options_are_refused(option: str, value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        answer(SIPP_UAC, **{option: value})


ZOIPER_CODECS = ["PCMU", "PCMA", "G722", "opus"]


@settings(max_examples=50, deadline=None)
@given(st.permutations(ZOIPER_CODECS))
def test_the_first_preferred_codec_offered_wins(preference: list[str]) -> None:
    media = answer(ZOIPER, preference=tuple(preference)).media
    assert media.codec.split("/")[0] == preference[0]


# --------------------------------------------------------------------------- offering


def test_offer_assigns_static_and_dynamic_payload_types() -> None:
    offer = build_offer("10.0.0.1", 5000, ["PCMU/8000", "opus/48000/2", "G722/8000"], ptime=30)
    (media,) = offer.media
    keys = [(f.payload_type, f.key) for f in media.payload_formats]
    assert keys == [
        (0, "PCMU/8000"),
        (96, "opus/48000/2"),
        (9, "G722/8000"),
        (97, "telephone-event/8000"),
        (98, "telephone-event/48000"),
    ]
    assert media.ptime == 30
    assert SessionDescription.parse(str(offer)) == offer


def test_offer_answer_loop_between_our_two_sides() -> None:
    offer = build_offer("10.0.0.1", 5000, ["opus/48000/2", "PCMA/8000"], ptime=20)
    far_end = negotiate(offer, local_address="10.0.0.2", local_port=7000, preference=("opus",))
    ours = process_answer(offer, far_end.sdp)
    assert ours.codec == far_end.media.codec == "opus/48000/2"
    assert ours.payload_type == far_end.media.payload_type == 96
    assert ours.telephone_event_payload_type == 97  # /8000 preferred
    assert (ours.remote_address, ours.remote_port) == ("10.0.0.2", 7000)
    assert ours.direction is Direction.SENDRECV and not ours.on_hold


def test_process_answer_uses_first_common_codec_and_ignores_extras() -> None:
    offer = build_offer("10.0.0.1", 5000, ["PCMU/8000", "PCMA/8000"], telephone_event=False)
    reply = SessionDescription.parse(
        "v=0\no=- 3 3 IN IP4 10.0.0.9\ns=-\nc=IN IP4 10.0.0.9\nt=0 0\n"
        "m=audio 9000 RTP/AVP 18 8 0\na=rtpmap:18 G729/8000\na=ptime:30\na=sendonly\n"
    )
    media = process_answer(offer, reply)
    assert (media.codec, media.payload_type, media.ptime) == ("PCMA/8000", 8, 30)
    assert media.direction is Direction.RECVONLY and media.on_hold
    assert media.telephone_event_payload_type is None


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        ("m=audio 9000 RTP/AVP 18\n", "not among those offered"),
        ("m=audio 0 RTP/AVP 0\n", "rejected the audio stream"),
        ("m=audio 9000 RTP/AVP 0\nm=video 0 RTP/AVP 96\n", "2 m= lines"),
        ("m=audio 9000 RTP/SAVP 0\n", "answered as audio RTP/SAVP"),
    ],
)
def test_process_answer_rejects_answers_that_do_not_fit(reply: str, fragment: str) -> None:
    offer = build_offer("10.0.0.1", 5000, ["PCMU/8000"])
    head = "v=0\no=- 3 3 IN IP4 10.0.0.9\ns=-\nc=IN IP4 10.0.0.9\nt=0 0\n"
    with pytest.raises(SdpNegotiationError, match=fragment):
        process_answer(offer, SessionDescription.parse(head + reply))


def test_offer_reinvite_and_bad_codec_key() -> None:
    first = build_offer("10.0.0.1", 5000, session_id=1, session_version=1)
    held = build_offer("10.0.0.1", 5000, direction=Direction.SENDONLY, previous=first)
    assert (held.origin.session_id, held.origin.session_version) == (1, 2)
    assert held.direction is Direction.SENDRECV and held.media[0].direction() is Direction.SENDONLY
    with pytest.raises(ValueError, match="codec key"):
        build_offer("10.0.0.1", 5000, ["PCMU"])


# --------------------------------------------------------------------------- fuzzing


def _accept_or_sdp_error(data: str | bytes) -> None:
    """Parsing either succeeds (and then round-trips and answers) or raises SdpError."""
    try:
        sdp = SessionDescription.parse(data)
    except SdpError:
        return
    assert SessionDescription.parse(str(sdp)) == sdp
    try:
        result = negotiate(sdp, local_address=US, local_port=20000)
    except SdpNegotiationError:
        return
    assert isinstance(result.media, NegotiatedMedia)
    assert len(result.sdp.media) == len(sdp.media)
    assert SessionDescription.parse(str(result.sdp)) == result.sdp


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_random_text_parses_or_raises_sdp_error(text: str) -> None:
    _accept_or_sdp_error(text)
    _accept_or_sdp_error("v=0\no=- 1 1 IN IP4 1.2.3.4\n" + text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_parse_or_raise_sdp_error(data: bytes) -> None:
    _accept_or_sdp_error(data)


_LINE_CHARS = st.text(
    alphabet=st.sampled_from(list("aAcmtov=0123456789 /:.-\t\r\x00\u00e9\u2028#*RTPAVPIN")),
    max_size=12,
)


@st.composite
def mutated_fixture(draw: st.DrawFn) -> str:
    """A valid fixture with a few lines deleted, duplicated, swapped or spliced with junk."""
    fixture_lines = draw(st.sampled_from(ALL_FIXTURES)).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        if not fixture_lines:
            break
        i = draw(st.integers(0, len(fixture_lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "splice", "truncate"]))
        if action == "delete":
            del fixture_lines[i]
        elif action == "duplicate":
            fixture_lines.insert(i, fixture_lines[i])
        elif action == "swap":
            j = draw(st.integers(0, len(fixture_lines) - 1))
            fixture_lines[i], fixture_lines[j] = fixture_lines[j], fixture_lines[i]
        elif action == "splice":
            line = fixture_lines[i]
            at = draw(st.integers(0, len(line)))
            fixture_lines[i] = line[:at] + draw(_LINE_CHARS) + line[at:]
        else:
            fixture_lines[i] = fixture_lines[i][: draw(st.integers(0, len(fixture_lines[i])))]
    return draw(st.sampled_from(["\n", "\r\n"])).join(fixture_lines)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_fixture())
def test_mutated_offers_parse_or_raise_sdp_error(text: str) -> None:
    _accept_or_sdp_error(text)
