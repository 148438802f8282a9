"""SDP session descriptions (RFC 8866) and RFC 3264 offer/answer for one audio stream.

Owns three things:

* the **model and text form of SDP**: :meth:`SessionDescription.parse` turns
  text (``str`` or ``bytes``, CRLF or LF line ends) into frozen dataclasses and
  ``str(sdp)`` / ``bytes(sdp)`` turn them back into CRLF text;
* the **answerer** (UAS side): :func:`negotiate` picks one audio codec from an
  offer and builds the answer;
* the **offerer** (UAC side): :func:`build_offer` and :func:`process_answer`.

Both sides return a :class:`NegotiatedMedia`, which is all the media layer
needs: where to send RTP, which codec (as a codec-registry key such as
``"PCMU/8000"`` or ``"opus/48000/2"``) and payload type, the telephone-event
payload type, ptime, direction, rtcp-mux and whether the peer holds the call.

Errors: one exception tree. :class:`SdpError` (a ``ValueError``) means the
text is not SDP; its message names the line number and the field.
:class:`SdpNegotiationError` (a subclass) means the SDP is valid but nothing
in it is usable; its message says why, and the SIP layer answers
``488 Not Acceptable Here`` (``status_code``).

Parsing choices (strict on structure, lenient on harmless variations):

* rejected: text that is not UTF-8, a first line other than ``v=0``, a line
  without ``<letter>=``, a missing or malformed ``o=``, malformed ``c=``,
  ``b=``, ``t=``, ``m=`` lines, malformed ``rtpmap``/``fmtp``/``ptime``/
  ``maxptime``/``rtcp`` attributes, RTP payload types outside 0-127, ports
  above 65535, NUL or CR inside a line, session-only lines (``o= s= t=`` ...)
  after the first ``m=``, repeated single-instance lines, conflicting
  direction attributes in one section, and an active stream (port not 0)
  with no ``c=`` at media or session level;
* accepted: trailing whitespace, blank lines, runs of spaces between fields,
  any order of lines inside a section, a missing ``s=`` (read as ``s=-``), a
  missing ``t=`` (read as ``t=0 0``), fractional ``ptime``, a port-0 ``m=``
  line with no formats, several ``rtpmap`` lines for one payload type (the
  first wins), and unknown line types (kept, serialised at the end of their
  section).

Serialisation writes the RFC 8866 line order; ``parse(str(sdp)) == sdp``
holds for every description ``parse`` accepts.

This module must not do I/O, read a clock or log: text in, objects out.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

__all__ = [
    "DEFAULT_PREFERENCE",
    "DEFAULT_PTIME",
    "DEFAULT_SUPPORTED",
    "STATIC_PAYLOAD_TYPES",
    "SUPPORTED_TRANSPORTS",
    "Answer",
    "Attribute",
    "Bandwidth",
    "Connection",
    "Direction",
    "MediaDescription",
    "NegotiatedMedia",
    "Origin",
    "PayloadFormat",
    "SdpError",
    "SdpNegotiationError",
    "SessionDescription",
    "Timing",
    "build_offer",
    "negotiate",
    "process_answer",
]


class SdpError(ValueError):
    """The text is not a valid session description; the message names the line and field."""


class SdpNegotiationError(SdpError):
    """The description is valid but offers nothing usable (answer 488 Not Acceptable Here)."""

    status_code = 488
    reason_phrase = "Not Acceptable Here"


# --------------------------------------------------------------------------- constants

#: Codec choice order used by :func:`negotiate` unless told otherwise. An entry
#: is an encoding name (any clock rate) or a full registry key (``"L16/16000"``).
DEFAULT_PREFERENCE: tuple[str, ...] = ("PCMU", "PCMA", "G722", "opus", "L16")

#: Codec-registry keys the media layer can encode and decode: ``name/rate``,
#: plus ``/channels`` when there is more than one channel.
DEFAULT_SUPPORTED: tuple[str, ...] = (
    "PCMU/8000",
    "PCMA/8000",
    "G722/8000",
    "opus/48000/2",
    "L16/8000",
    "L16/16000",
)

#: RTP profiles we answer on. SRTP profiles (``RTP/SAVP``, ``RTP/SAVPF``,
#: ``UDP/TLS/RTP/SAVPF``) are rejected: there is no keying here. ``RTP/AVPF``
#: is plain RTP plus RTCP feedback we never send, so it is answered as offered.
SUPPORTED_TRANSPORTS: frozenset[str] = frozenset({"RTP/AVP", "RTP/AVPF"})

#: Packet time (ms) used when the offer states none.
DEFAULT_PTIME = 20

#: RFC 3551 static payload types: number -> (encoding, clock rate, channels).
#: Only some are in :data:`DEFAULT_SUPPORTED`; the rest are known but unsupported.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
    25: ("CelB", 90000, 1),
    26: ("JPEG", 90000, 1),
    28: ("nv", 90000, 1),
    31: ("H261", 90000, 1),
    32: ("MPV", 90000, 1),
    33: ("MP2T", 90000, 1),
    34: ("H263", 90000, 1),
}

_TELEPHONE_EVENT = "telephone-event"
_DEFAULT_EVENTS = "0-16"
_FIRST_DYNAMIC_PT = 96
_PTIME_RANGE = range(10, 121)  # ms we honour from an offer; others fall back to the default
_FRAMEABLE_PTIMES = {"opus": (10, 20, 40, 60, 80, 100, 120)}  # RFC 7587 frame sizes

_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_TOKEN_RE = re.compile(_TOKEN)
_PROTO_RE = re.compile(rf"{_TOKEN}(?:/{_TOKEN})*")
_DIGITS_RE = re.compile(r"[0-9]+")
_PORT_RE = re.compile(r"([0-9]+)(?:/([0-9]+))?")
_ADDRESS_RE = re.compile(r"[^\s/]+(?:/[0-9]+){0,2}")
_BANDWIDTH_RE = re.compile(rf"({_TOKEN}):([0-9]+)")
_ATTRIBUTE_RE = re.compile(rf"({_TOKEN})(?::(.*))?", re.DOTALL)
_RTPMAP_RE = re.compile(r"([0-9]+) +([^\s/]+)/([0-9]+)(?:/([0-9]+))?")
_FMTP_RE = re.compile(r"(\S+)(?: +(.*))?")
_PTIME_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))?")
_RTCP_RE = re.compile(r"([0-9]+)(?: +(\S+) +(\S+) +(\S+))?")
_CODEC_KEY_RE = re.compile(r"([^\s/]+)/([0-9]+)(?:/([0-9]+))?")
_LINE_RE = re.compile(r"([a-z])=(.*)", re.DOTALL)

_SESSION_ONLY = frozenset("vosuepztr")


# --------------------------------------------------------------------------- model


class Direction(StrEnum):
    """Media direction attribute, from the point of view of the SDP's author."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    @classmethod
    def from_flags(cls, *, sends: bool, receives: bool) -> Direction:
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE

    def reversed(self) -> Direction:
        """The same stream seen from the other end (sendonly <-> recvonly)."""
        return Direction.from_flags(sends=self.receives, receives=self.sends)

    def restricted_to(self, other: Direction) -> Direction:
        """Only what both allow (used to answer per RFC 3264 section 6.1)."""
        return Direction.from_flags(
            sends=self.sends and other.sends, receives=self.receives and other.receives
        )


@dataclass(frozen=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>``."""

    username: str
    session_id: int
    session_version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True)
class Connection:
    """``c=<nettype> <addrtype> <connection-address>`` (address may carry ``/ttl/count``)."""

    nettype: str
    addrtype: str
    address: str

    @property
    def host(self) -> str:
        """The address without any multicast ``/ttl/count`` suffix."""
        return self.address.split("/", 1)[0]

    @property
    def is_null(self) -> bool:
        """``0.0.0.0`` or ``::``: the RFC 2543 way of putting a call on hold."""
        ip = _ip(self.host)
        return ip is not None and ip.is_unspecified

    @property
    def is_multicast(self) -> bool:
        ip = _ip(self.host)
        return ip is not None and ip.is_multicast

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True)
class Bandwidth:
    """``b=<bwtype>:<bandwidth>`` (``AS`` is in kbit/s, ``TIAS`` in bit/s)."""

    type: str
    value: int

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


@dataclass(frozen=True)
class Timing:
    """``t=<start> <stop>`` and the raw ``r=`` lines that follow it."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attribute:
    """``a=<name>`` (``value`` None) or ``a=<name>:<value>``; value kept verbatim."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True)
class PayloadFormat:
    """One RTP payload type of an ``m=`` line, from its ``rtpmap`` or the static table."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def key(self) -> str:
        """The codec-registry form: ``"PCMU/8000"``, ``"opus/48000/2"``."""
        return _codec_key(self.encoding, self.clock_rate, self.channels)

    @property
    def is_telephone_event(self) -> bool:
        return self.encoding.lower() == _TELEPHONE_EVENT


@dataclass(frozen=True)
class MediaDescription:
    """One ``m=`` section: ``m=<media> <port>[/<count>] <proto> <fmt> ...`` and its lines."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None
    information: str | None = None
    connections: tuple[Connection, ...] = ()
    bandwidths: tuple[Bandwidth, ...] = ()
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()
    other_lines: tuple[tuple[str, str], ...] = ()

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto.upper()

    @property
    def is_srtp(self) -> bool:
        return "SAVP" in self.proto.upper()

    def attribute_values(self, name: str) -> list[str | None]:
        """Values of every attribute called ``name`` (case-insensitive), in order."""
        return _attribute_values(self.attributes, name)

    def has_attribute(self, name: str) -> bool:
        return bool(self.attribute_values(name))

    @property
    def payload_formats(self) -> tuple[PayloadFormat, ...]:
        """Formats of the ``m=`` line in offer order; dynamic types without rtpmap are left out."""
        if not self.is_rtp:
            return ()
        rtpmaps: dict[int, tuple[str, int, int]] = {}
        fmtps: dict[int, str] = {}
        for attribute in self.attributes:
            name = attribute.name.lower()
            if name == "rtpmap" and attribute.value is not None:
                pt, encoding, rate, channels = _parse_rtpmap(attribute.value)
                rtpmaps.setdefault(pt, (encoding, rate, channels))
            elif name == "fmtp" and attribute.value is not None:
                fmt, params = _parse_fmtp(attribute.value)
                if _DIGITS_RE.fullmatch(fmt):
                    fmtps.setdefault(int(fmt), params)
        formats = []
        for text in self.formats:
            pt = _payload_type(text)
            described = rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if described is not None:
                formats.append(PayloadFormat(pt, *described, fmtp=fmtps.get(pt)))
        return tuple(formats)

    def direction(self, session_default: Direction = Direction.SENDRECV) -> Direction:
        """The media-level direction attribute, else the session's, else sendrecv."""
        return _direction(self.attributes) or session_default

    @property
    def ptime(self) -> float | None:
        return _last_number(self.attributes, "ptime")

    @property
    def maxptime(self) -> float | None:
        return _last_number(self.attributes, "maxptime")

    @property
    def rtcp_mux(self) -> bool:
        return self.has_attribute("rtcp-mux")

    @property
    def rtcp_port(self) -> int | None:
        """The port of an ``a=rtcp`` attribute (RFC 3605), if any."""
        for value in self.attribute_values("rtcp"):
            if value is not None:
                return _parse_rtcp(value)
        return None


@dataclass(frozen=True)
class SessionDescription:
    """A whole SDP body. Build one with :meth:`parse`; ``str()`` gives CRLF text."""

    origin: Origin
    session_name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    timings: tuple[Timing, ...] = (Timing(),)
    time_zones: str | None = None
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()
    other_lines: tuple[tuple[str, str], ...] = ()
    media: tuple[MediaDescription, ...] = ()
    version: int = 0

    @classmethod
    def parse(cls, data: str | bytes) -> SessionDescription:
        """Parse SDP text; raise :class:`SdpError` naming the offending line and field."""
        return _Parser(data).parse()

    @property
    def direction(self) -> Direction:
        """The session-level direction attribute (sendrecv when absent)."""
        return _direction(self.attributes) or Direction.SENDRECV

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """The connection of a media section: media-level ``c=`` wins over session-level."""
        return media.connections[0] if media.connections else self.connection

    def __str__(self) -> str:
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name or ' '}"]
        lines += _optional("i", self.information) + _optional("u", self.uri)
        lines += [f"e={email}" for email in self.emails] + [f"p={phone}" for phone in self.phones]
        if self.connection is not None:
            lines.append(f"c={self.connection}")
        lines += [f"b={bandwidth}" for bandwidth in self.bandwidths]
        for timing in self.timings:
            lines.append(f"t={timing.start} {timing.stop}")
            lines += [f"r={repeat}" for repeat in timing.repeats]
        lines += _optional("z", self.time_zones) + _optional("k", self.key)
        lines += [f"a={attribute}" for attribute in self.attributes]
        lines += [f"{kind}={value}" for kind, value in self.other_lines]
        for media in self.media:
            port = (
                str(media.port) if media.port_count is None else f"{media.port}/{media.port_count}"
            )
            lines.append(" ".join(["m=" + media.media, port, media.proto, *media.formats]))
            lines += _optional("i", media.information)
            lines += [f"c={connection}" for connection in media.connections]
            lines += [f"b={bandwidth}" for bandwidth in media.bandwidths]
            lines += _optional("k", media.key)
            lines += [f"a={attribute}" for attribute in media.attributes]
            lines += [f"{kind}={value}" for kind, value in media.other_lines]
        return "\r\n".join(lines) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8")


@dataclass(frozen=True)
class NegotiatedMedia:
    """What the media layer needs from an offer/answer exchange.

    ``direction`` is *our* side's: ``sends`` means we may send RTP. We may only
    send when ``remote_address`` is not None (it is None when the peer's
    ``c=`` is ``0.0.0.0``/``::``). ``on_hold`` is true when the peer will not
    receive media: its direction is sendonly or inactive, or its address is null.
    ``fmtp`` is the peer's format parameters for the chosen codec (e.g. opus'
    ``stereo=1;useinbandfec=1``), for the encoder to honour.
    """

    stream_index: int
    codec: str
    payload_type: int
    clock_rate: int
    channels: int
    ptime: int
    direction: Direction
    remote_address: str | None
    remote_port: int | None
    remote_rtcp_port: int | None
    rtcp_mux: bool
    on_hold: bool
    telephone_event_payload_type: int | None = None
    telephone_event_clock_rate: int | None = None
    telephone_events: str | None = None
    fmtp: str | None = None


@dataclass(frozen=True)
class Answer:
    """The result of :func:`negotiate`: the SDP to send back and the negotiated media."""

    sdp: SessionDescription
    media: NegotiatedMedia

    def __str__(self) -> str:
        return str(self.sdp)


# --------------------------------------------------------------------------- parser


@dataclass
class _Section:
    """Lines of one section (session or media) gathered while parsing."""

    line: int
    single: dict[str, str] = field(default_factory=dict)
    connections: list[Connection] = field(default_factory=list)
    bandwidths: list[Bandwidth] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    origin: Origin | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    timings: list[tuple[int, int, list[str]]] = field(default_factory=list)
    media: str = ""
    port: int = 0
    port_count: int | None = None
    proto: str = ""
    formats: tuple[str, ...] = ()


class _Parser:
    def __init__(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SdpError(f"SDP is not valid UTF-8 (byte {exc.start})") from None
        self.text = data
        self.number = 0
        self.line = ""
        self.session = _Section(line=1)
        self.media: list[_Section] = []

    def error(self, message: str) -> SdpError:
        shown = self.line if len(self.line) <= 80 else self.line[:77] + "..."
        where = (
            f"line {self.number} ({self.line[:2]})"
            if self.line[1:2] == "="
            else f"line {self.number}"
        )
        return SdpError(f"{where}: {message}: {shown!r}")

    def parse(self) -> SessionDescription:
        seen_version = False
        for number, raw in enumerate(self.text.split("\n"), start=1):
            self.number, self.line = number, raw.rstrip()
            if not self.line:
                continue
            match = _LINE_RE.fullmatch(self.line)
            if match is None:
                raise self.error("expected '<letter>=<value>'")
            kind, value = match.group(1), match.group(2)
            if "\x00" in value or "\r" in value:
                raise self.error("NUL or CR inside a line")
            if not seen_version:
                if kind != "v":
                    raise self.error("an SDP body must start with v=0")
                if value != "0":
                    raise self.error(f"unsupported SDP version {value!r}")
                seen_version = True
            elif kind == "m":
                self.media.append(self.parse_media_line(value))
            elif self.media:
                self.media_line(self.media[-1], kind, value)
            else:
                self.session_line(kind, value)
        if not seen_version:
            raise SdpError("empty SDP: expected v=0 as the first line")
        return self.build()

    # --- session level

    def once(self, section: _Section, kind: str, value: str) -> None:
        if kind in section.single:
            raise self.error(f"{kind}= may appear only once in this section")
        section.single[kind] = value

    def session_line(self, kind: str, value: str) -> None:
        s = self.session
        if kind == "v":
            raise self.error("v= may appear only once")
        if kind == "o":
            if s.origin is not None:
                raise self.error("o= may appear only once")
            s.origin = self.parse_origin(value)
        elif kind in "siuzk":
            self.once(s, kind, value)
        elif kind == "e":
            s.emails.append(value)
        elif kind == "p":
            s.phones.append(value)
        elif kind == "c":
            if s.connections:
                raise self.error("c= may appear only once at session level")
            s.connections.append(self.parse_connection(value))
        elif kind == "b":
            s.bandwidths.append(self.parse_bandwidth(value))
        elif kind == "t":
            start, stop = self.parse_timing(value)
            s.timings.append((start, stop, []))
        elif kind == "r":
            if not s.timings:
                raise self.error("r= must follow a t= line")
            if not value.strip():
                raise self.error("empty repeat time")
            s.timings[-1][2].append(value)
        elif kind == "a":
            s.attributes.append(self.parse_attribute(value))
        else:
            s.other.append((kind, value))

    def parse_origin(self, value: str) -> Origin:
        fields = value.split()
        if len(fields) != 6:
            raise self.error(
                "o= needs 6 fields: username sess-id sess-version nettype addrtype address"
            )
        username, sess_id, sess_version, nettype, addrtype, address = fields
        for name, number in (("sess-id", sess_id), ("sess-version", sess_version)):
            if not _DIGITS_RE.fullmatch(number):
                raise self.error(f"o= {name} {number!r} is not a number")
        self.check_net(nettype, addrtype, "o=")
        return Origin(username, int(sess_id), int(sess_version), nettype, addrtype, address)

    def check_net(self, nettype: str, addrtype: str, where: str) -> None:
        if not _TOKEN_RE.fullmatch(nettype) or not _TOKEN_RE.fullmatch(addrtype):
            raise self.error(f"{where} nettype/addrtype {nettype!r} {addrtype!r} are not tokens")

    def parse_connection(self, value: str) -> Connection:
        fields = value.split()
        if len(fields) != 3:
            raise self.error("c= needs 3 fields: nettype addrtype connection-address")
        nettype, addrtype, address = fields
        self.check_net(nettype, addrtype, "c=")
        if not _ADDRESS_RE.fullmatch(address):
            raise self.error(f"c= connection-address {address!r} is malformed")
        return Connection(nettype, addrtype, address)

    def parse_bandwidth(self, value: str) -> Bandwidth:
        match = _BANDWIDTH_RE.fullmatch(value.strip())
        if match is None:
            raise self.error("b= must be <bwtype>:<bandwidth>")
        return Bandwidth(match.group(1), int(match.group(2)))

    def parse_timing(self, value: str) -> tuple[int, int]:
        fields = value.split()
        if len(fields) != 2 or not all(_DIGITS_RE.fullmatch(f) for f in fields):
            raise self.error("t= must be two numbers: <start-time> <stop-time>")
        return int(fields[0]), int(fields[1])

    def parse_attribute(self, value: str) -> Attribute:
        match = _ATTRIBUTE_RE.fullmatch(value)
        if match is None:
            raise self.error("a= attribute name is missing or not a token")
        attribute = Attribute(match.group(1), match.group(2))
        try:
            _check_attribute(attribute)
        except SdpError as exc:
            raise self.error(str(exc)) from None
        return attribute

    # --- media level

    def parse_media_line(self, value: str) -> _Section:
        fields = value.split()
        if len(fields) < 3:
            raise self.error("m= needs <media> <port> <proto> <fmt> ...")
        media, port_text, proto, *formats = fields
        if not _TOKEN_RE.fullmatch(media):
            raise self.error(f"m= media {media!r} is not a token")
        port_match = _PORT_RE.fullmatch(port_text)
        if port_match is None:
            raise self.error(f"m= port {port_text!r} is not a number")
        port = int(port_match.group(1))
        count = None if port_match.group(2) is None else int(port_match.group(2))
        if port > 65535:
            raise self.error(f"m= port {port} is above 65535")
        if count is not None and count < 1:
            raise self.error("m= port count must be at least 1")
        if not _PROTO_RE.fullmatch(proto):
            raise self.error(f"m= proto {proto!r} is malformed")
        if not formats and port != 0:
            raise self.error("m= lists no media format")
        rtp = "RTP/" in proto.upper()
        for fmt in formats:
            if not _TOKEN_RE.fullmatch(fmt):
                raise self.error(f"m= format {fmt!r} is not a token")
            if rtp and (not _DIGITS_RE.fullmatch(fmt) or int(fmt) > 127):
                raise self.error(f"m= RTP payload type {fmt!r} is not a number 0-127")
        return _Section(
            line=self.number,
            media=media,
            port=port,
            port_count=count,
            proto=proto,
            formats=tuple(formats),
        )

    def media_line(self, section: _Section, kind: str, value: str) -> None:
        if kind in _SESSION_ONLY:
            raise self.error(f"{kind}= is a session-level line and may not follow m=")
        if kind in "ik":
            self.once(section, kind, value)
        elif kind == "c":
            section.connections.append(self.parse_connection(value))
        elif kind == "b":
            section.bandwidths.append(self.parse_bandwidth(value))
        elif kind == "a":
            section.attributes.append(self.parse_attribute(value))
        else:
            section.other.append((kind, value))

    # --- assembly

    def build(self) -> SessionDescription:
        s = self.session
        if s.origin is None:
            raise SdpError("missing o= line (origin)")
        session_connection = s.connections[0] if s.connections else None
        _check_directions(s.attributes, "at session level")
        media = []
        for section in self.media:
            where = f"in the m= section of line {section.line}"
            if section.port != 0 and not section.connections and session_connection is None:
                raise SdpError(f"no c= line at media or session level for the stream {where}")
            _check_directions(section.attributes, where)
            media.append(
                MediaDescription(
                    media=section.media,
                    port=section.port,
                    proto=section.proto,
                    formats=section.formats,
                    port_count=section.port_count,
                    information=section.single.get("i"),
                    connections=tuple(section.connections),
                    bandwidths=tuple(section.bandwidths),
                    key=section.single.get("k"),
                    attributes=tuple(section.attributes),
                    other_lines=tuple(section.other),
                )
            )
        timings = tuple(Timing(a, b, tuple(r)) for a, b, r in s.timings) or (Timing(),)
        return SessionDescription(
            origin=s.origin,
            session_name=s.single.get("s", "-"),
            information=s.single.get("i"),
            uri=s.single.get("u"),
            emails=tuple(s.emails),
            phones=tuple(s.phones),
            connection=session_connection,
            bandwidths=tuple(s.bandwidths),
            timings=timings,
            time_zones=s.single.get("z"),
            key=s.single.get("k"),
            attributes=tuple(s.attributes),
            other_lines=tuple(s.other),
            media=tuple(media),
        )


def _check_directions(attributes: Sequence[Attribute], where: str) -> None:
    found = {a.name.lower() for a in attributes if a.name.lower() in _DIRECTIONS}
    if len(found) > 1:
        raise SdpError(f"conflicting direction attributes {where}: {', '.join(sorted(found))}")


_DIRECTIONS = frozenset(d.value for d in Direction)


def _optional(kind: str, value: str | None) -> list[str]:
    return [] if value is None else [f"{kind}={value}"]


def _check_attribute(attribute: Attribute) -> None:
    """Raise SdpError if a known attribute's value is malformed."""
    name, value = attribute.name.lower(), attribute.value
    if name == "rtpmap":
        _parse_rtpmap(value or "")
    elif name == "fmtp":
        _parse_fmtp(value or "")
    elif name in ("ptime", "maxptime"):
        _parse_ptime(name, value or "")
    elif name == "rtcp":
        _parse_rtcp(value or "")


def _parse_rtpmap(value: str) -> tuple[int, str, int, int]:
    match = _RTPMAP_RE.fullmatch(value.strip())
    if match is None:
        raise SdpError("rtpmap must be '<payload type> <encoding>/<clock rate>[/<channels>]'")
    pt, encoding, rate, channels = match.groups()
    if int(pt) > 127:
        raise SdpError(f"rtpmap payload type {pt} is above 127")
    if int(rate) == 0:
        raise SdpError("rtpmap clock rate is 0")
    if channels is not None and int(channels) == 0:
        raise SdpError("rtpmap channel count is 0")
    return int(pt), encoding, int(rate), 1 if channels is None else int(channels)


def _parse_fmtp(value: str) -> tuple[str, str]:
    match = _FMTP_RE.fullmatch(value.strip())
    if match is None:
        raise SdpError("fmtp must be '<format> <parameters>'")
    return match.group(1), match.group(2) or ""


def _parse_ptime(name: str, value: str) -> float:
    match = _PTIME_RE.fullmatch(value.strip())
    if match is None or float(match.group(0)) <= 0:
        raise SdpError(f"{name} must be a positive number of milliseconds")
    return float(match.group(0))


def _parse_rtcp(value: str) -> int:
    match = _RTCP_RE.fullmatch(value.strip())
    if match is None or int(match.group(1)) > 65535:
        raise SdpError("rtcp must be '<port> [<nettype> <addrtype> <address>]' with port <= 65535")
    return int(match.group(1))


def _attribute_values(attributes: Iterable[Attribute], name: str) -> list[str | None]:
    wanted = name.lower()
    return [a.value for a in attributes if a.name.lower() == wanted]


def _direction(attributes: Iterable[Attribute]) -> Direction | None:
    for attribute in attributes:
        name = attribute.name.lower()
        if name in _DIRECTIONS:
            return Direction(name)
    return None


def _last_number(attributes: Iterable[Attribute], name: str) -> float | None:
    values = [v for v in _attribute_values(attributes, name) if v is not None]
    return _parse_ptime(name, values[-1]) if values else None


def _payload_type(text: str) -> int:
    if not _DIGITS_RE.fullmatch(text) or int(text) > 127:
        raise SdpError(f"RTP payload type {text!r} is not a number 0-127")
    return int(text)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# --------------------------------------------------------------------------- codecs


def _codec_key(encoding: str, clock_rate: int, channels: int) -> str:
    key = f"{encoding}/{clock_rate}"
    return key if channels == 1 else f"{key}/{channels}"


def _parse_codec_key(key: str) -> tuple[str, int, int]:
    """``"opus/48000/2"`` -> ("opus", 48000, 2); raise ValueError for anything else."""
    match = _CODEC_KEY_RE.fullmatch(key)
    if match is None:
        raise ValueError(f"codec key {key!r} is not '<encoding>/<clock rate>[/<channels>]'")
    name, rate, channels = match.groups()
    return name, int(rate), 1 if channels is None else int(channels)


def _same_codec(fmt: PayloadFormat, codec: tuple[str, int, int]) -> bool:
    name, rate, channels = codec
    return (
        fmt.encoding.lower() == name.lower() and fmt.clock_rate == rate and fmt.channels == channels
    )


def _preference_rank(codec: tuple[str, int, int], preference: Sequence[str]) -> int:
    """Index of the first preference entry naming this codec; len(preference) if none."""
    name, rate, channels = codec
    for rank, entry in enumerate(preference):
        parts = entry.split("/")
        if parts[0].lower() != name.lower():
            continue
        if len(parts) > 1 and parts[1] != str(rate):
            continue
        if len(parts) > 2 and parts[2] != str(channels):
            continue
        return rank
    return len(preference)


def _pick_telephone_event(
    formats: Iterable[PayloadFormat], codec_clock: int
) -> PayloadFormat | None:
    """telephone-event/8000 if offered, else the one at the chosen codec's clock rate."""
    events = [f for f in formats if f.is_telephone_event]
    for rate in (8000, codec_clock):
        for fmt in events:
            if fmt.clock_rate == rate:
                return fmt
    return None


def _usable_ptime(value: float | None, encoding: str) -> int | None:
    """A whole-ms ptime this codec can frame (opus: RFC 7587 sizes; others: 10-120 ms)."""
    if value is None or value != int(value):
        return None
    allowed = _FRAMEABLE_PTIMES.get(encoding.lower(), _PTIME_RANGE)
    return int(value) if int(value) in allowed else None


def _choose_ptime(
    offered: float | None, offered_max: float | None, default: int, encoding: str
) -> int:
    """The offer's ptime when usable; else the largest usable one up to ours and maxptime."""
    ptime = _usable_ptime(offered, encoding)
    if ptime is not None:
        return ptime
    limit = default if offered_max is None else min(default, int(offered_max))
    for candidate in range(limit, _PTIME_RANGE.start - 1, -1):
        if _usable_ptime(candidate, encoding) is not None:
            return candidate
    return DEFAULT_PTIME


# --------------------------------------------------------------------------- origin


def _address_type(address: str) -> tuple[str, str]:
    """("IP4" | "IP6", address without brackets) for our own address; hostnames are IP4."""
    host = address.strip("[]")
    if not re.fullmatch(r"[^\s/]+", host):
        raise ValueError(f"local_address {address!r} is not an IP address or host name")
    ip = _ip(host)
    if ip is not None and ip.version == 6:
        return "IP6", host
    return "IP4", host


def _origin(
    address: str,
    previous: SessionDescription | None,
    session_id: int | None,
    session_version: int | None,
    username: str,
) -> Origin:
    addrtype, host = _address_type(address)
    if not re.fullmatch(r"\S+", username):
        raise ValueError(f"o= username {username!r} must be one word")
    if previous is not None:
        # RFC 3264 section 8: same o= line, version incremented by one.
        old = previous.origin
        return replace(old, session_version=old.session_version + 1)
    if session_id is None:
        session_id = secrets.randbits(62)
    version = 1 if session_version is None else session_version
    if session_id < 0 or version < 0:
        raise ValueError("session_id and session_version must not be negative")
    return Origin(username, session_id, version, "IN", addrtype, host)


def _our_connection(address: str) -> Connection:
    addrtype, host = _address_type(address)
    return Connection("IN", addrtype, host)


def _check_session_name(name: str) -> None:
    if any(c in name for c in "\r\n\x00"):
        raise ValueError(f"session_name {name!r} may not contain CR, LF or NUL")


def _check_port(port: int) -> None:
    if not 0 < port <= 65535:
        raise ValueError(f"local_port {port} is not a port number 1-65535")


# --------------------------------------------------------------------------- answerer


def _negotiated_media(
    index: int,
    codec: PayloadFormat,
    ptime: int,
    our_direction: Direction,
    peer: SessionDescription,
    peer_media: MediaDescription,
    mux: bool,
    peer_direction: Direction,
    event: PayloadFormat | None,
) -> NegotiatedMedia:
    """What the media layer needs from one negotiated stream (offer or answer side)."""
    remote = _remote(peer, peer_media)
    return NegotiatedMedia(
        stream_index=index,
        codec=codec.key,
        payload_type=codec.payload_type,
        clock_rate=codec.clock_rate,
        channels=codec.channels,
        ptime=ptime,
        direction=our_direction,
        remote_address=remote[0],
        remote_port=remote[1],
        remote_rtcp_port=_rtcp_port(peer_media, remote[1], mux),
        rtcp_mux=mux,
        on_hold=not peer_direction.receives or remote[0] is None,
        telephone_event_payload_type=None if event is None else event.payload_type,
        telephone_event_clock_rate=None if event is None else event.clock_rate,
        telephone_events=None if event is None else event.fmtp,
        fmtp=codec.fmtp,
    )


def negotiate(
    offer: SessionDescription,
    *,
    local_address: str,
    local_port: int,
    preference: Sequence[str] = DEFAULT_PREFERENCE,
    supported: Collection[str] = DEFAULT_SUPPORTED,
    honour_offerer_order: bool = False,
    ptime: int = DEFAULT_PTIME,
    direction: Direction = Direction.SENDRECV,
    rtcp_mux: bool = False,
    previous: SessionDescription | None = None,
    session_id: int | None = None,
    session_version: int | None = None,
    username: str = "-",
    session_name: str = "-",
) -> Answer:
    """Answer an offer (RFC 3264): one audio stream, one codec, plus telephone-event.

    The codec is the offered one that ranks first in *our* ``preference``
    (entries are encoding names or full keys; supported codecs not listed rank
    last, ties keep the offer's order). With ``honour_offerer_order=True`` the
    first supported codec in the offer's order wins instead. Names compare
    case-insensitively; clock rate and channels must match a ``supported``
    key. The offered payload type number is echoed. telephone-event is always
    accepted when offered: ``/8000`` first, else the one at the codec's clock
    rate, with its offered payload type and ``fmtp`` events.

    The offer's ``ptime`` is honoured when the codec can frame it (a whole
    number of ms, 10-120; for opus 10, 20, 40, 60 ... 120); otherwise we use
    our ``ptime``, lowered to the offer's ``maxptime`` and to a size the
    codec can frame. Our
    ``direction`` (e.g. ``SENDONLY`` to put the peer on hold) is combined with
    the offer's per RFC 3264 section 6.1. ``rtcp_mux`` says whether we accept
    an offered ``a=rtcp-mux``. Pass our ``previous`` SDP of this session on a
    re-INVITE to keep its ``o=`` line with the version incremented; otherwise
    ``session_id`` (random when None) and ``session_version`` (1 when None).

    The first usable audio ``m=`` line carries the call. Every offered ``m=``
    line is answered in order; all but the chosen audio stream get port 0.
    Raises :class:`SdpNegotiationError` (answer 488) when no audio stream is
    usable, saying why for each ``m=`` line.
    """
    _check_port(local_port)
    _check_session_name(session_name)
    wanted = [_parse_codec_key(key) for key in supported]
    chosen: tuple[int, PayloadFormat] | None = None
    reasons: list[str] = []
    for index, media in enumerate(offer.media):
        label = f"m-line {index + 1} ({media.media} {media.proto})"
        if media.media.lower() != "audio":
            reasons.append(f"{label}: not audio")
            continue
        if media.port == 0:
            reasons.append(f"{label}: port 0 (stream disabled by the offerer)")
            continue
        if media.proto.upper() not in SUPPORTED_TRANSPORTS:
            why = "SRTP is not supported" if media.is_srtp else "transport is not supported"
            reasons.append(f"{label}: {why}; only {', '.join(sorted(SUPPORTED_TRANSPORTS))}")
            continue
        connection = offer.connection_for(media)
        if connection is not None and connection.is_multicast:
            reasons.append(f"{label}: multicast address {connection.host} is not supported")
            continue
        candidates = []
        for position, fmt in enumerate(media.payload_formats):
            for codec in wanted:
                if _same_codec(fmt, codec):
                    rank = 0 if honour_offerer_order else _preference_rank(codec, preference)
                    candidates.append((rank, position, fmt, codec))
                    break
        if not candidates:
            offered = ", ".join(
                f.key for f in media.payload_formats if not f.is_telephone_event
            ) or ", ".join(media.formats)
            reasons.append(
                f"{label}: no supported codec offered ({offered}); "
                f"supported: {', '.join(supported)}"
            )
            continue
        _, _, fmt, codec = min(candidates, key=lambda c: (c[0], c[1]))
        name, rate, channels = codec
        chosen = (index, replace(fmt, encoding=name, clock_rate=rate, channels=channels))
        break
    if chosen is None:
        why = "; ".join(reasons) if reasons else "the offer has no m= line"
        raise SdpNegotiationError(f"no acceptable audio stream: {why}")

    index, codec_format = chosen
    media = offer.media[index]
    offer_direction = media.direction(offer.direction)
    our_direction = offer_direction.reversed().restricted_to(direction)
    event = _pick_telephone_event(media.payload_formats, codec_format.clock_rate)
    negotiated_ptime = _choose_ptime(media.ptime, media.maxptime, ptime, codec_format.encoding)
    mux = rtcp_mux and media.rtcp_mux

    formats = [str(codec_format.payload_type)]
    attributes = [Attribute("rtpmap", f"{codec_format.payload_type} {codec_format.key}")]
    if event is not None:
        formats.append(str(event.payload_type))
        attributes.append(
            Attribute("rtpmap", f"{event.payload_type} {event.encoding}/{event.clock_rate}")
        )
        if event.fmtp:
            attributes.append(Attribute("fmtp", f"{event.payload_type} {event.fmtp}"))
    attributes.append(Attribute("ptime", str(negotiated_ptime)))
    if mux:
        attributes.append(Attribute("rtcp-mux"))
    attributes.append(Attribute(our_direction.value))

    answered = []
    for i, stream in enumerate(offer.media):
        if i == index:
            answered.append(
                MediaDescription(
                    media=stream.media,
                    port=local_port,
                    proto=stream.proto,
                    formats=tuple(formats),
                    attributes=tuple(attributes),
                )
            )
        else:
            answered.append(
                MediaDescription(
                    media=stream.media, port=0, proto=stream.proto, formats=stream.formats
                )
            )

    sdp = SessionDescription(
        origin=_origin(local_address, previous, session_id, session_version, username),
        session_name=session_name,
        connection=_our_connection(local_address),
        timings=offer.timings,  # RFC 3264 section 6: t= of the answer equals the offer's
        media=tuple(answered),
    )
    media_result = _negotiated_media(
        index,
        codec_format,
        negotiated_ptime,
        our_direction,
        offer,
        media,
        mux,
        offer_direction,
        event,
    )
    return Answer(sdp, media_result)


def _remote(sdp: SessionDescription, media: MediaDescription) -> tuple[str | None, int | None]:
    connection = sdp.connection_for(media)
    if connection is None or connection.is_null or media.port == 0:
        return None, None
    return connection.host.strip("[]"), media.port


def _rtcp_port(media: MediaDescription, rtp_port: int | None, mux: bool) -> int | None:
    if rtp_port is None:
        return None
    if mux:
        return rtp_port
    explicit = media.rtcp_port
    return explicit if explicit is not None else rtp_port + 1


# --------------------------------------------------------------------------- offerer


def build_offer(
    local_address: str,
    local_port: int,
    codecs: Sequence[str] = ("PCMU/8000", "PCMA/8000"),
    ptime: int = DEFAULT_PTIME,
    telephone_event: bool = True,
    *,
    direction: Direction = Direction.SENDRECV,
    rtcp_mux: bool = False,
    previous: SessionDescription | None = None,
    session_id: int | None = None,
    session_version: int | None = None,
    username: str = "-",
    session_name: str = "-",
) -> SessionDescription:
    """An offer with one audio stream listing ``codecs`` (registry keys) in preference order.

    Codecs with an RFC 3551 static payload type use it (PCMU 0, PCMA 8, G722
    9); the others get dynamic types from 96 up. With ``telephone_event`` a
    ``telephone-event`` format (events ``0-16``) is added at 8000 Hz and at
    every other clock rate among the codecs, so the answerer can match its
    codec's rate. Pass our ``previous`` SDP of this session for a re-INVITE.
    """
    _check_port(local_port)
    _check_session_name(session_name)
    if not codecs:
        raise ValueError("build_offer needs at least one codec")
    parsed = [_parse_codec_key(key) for key in codecs]
    next_dynamic = _FIRST_DYNAMIC_PT
    formats: list[str] = []
    attributes: list[Attribute] = []
    for name, rate, channels in parsed:
        static = next(
            (
                pt
                for pt, c in STATIC_PAYLOAD_TYPES.items()
                if c[0].lower() == name.lower() and c[1:] == (rate, channels)
            ),
            None,
        )
        if static is None:
            static, next_dynamic = next_dynamic, next_dynamic + 1
        formats.append(str(static))
        attributes.append(Attribute("rtpmap", f"{static} {_codec_key(name, rate, channels)}"))
    if telephone_event:
        rates = [8000] + [r for _, r, _ in parsed if r != 8000]
        for rate in dict.fromkeys(rates):
            pt, next_dynamic = next_dynamic, next_dynamic + 1
            formats.append(str(pt))
            attributes.append(Attribute("rtpmap", f"{pt} {_TELEPHONE_EVENT}/{rate}"))
            attributes.append(Attribute("fmtp", f"{pt} {_DEFAULT_EVENTS}"))
    if next_dynamic > 128:
        raise ValueError("too many codecs for the dynamic payload type range 96-127")
    attributes.append(Attribute("ptime", str(ptime)))
    if rtcp_mux:
        attributes.append(Attribute("rtcp-mux"))
    attributes.append(Attribute(direction.value))
    return SessionDescription(
        origin=_origin(local_address, previous, session_id, session_version, username),
        session_name=session_name,
        connection=_our_connection(local_address),
        media=(
            MediaDescription(
                media="audio",
                port=local_port,
                proto="RTP/AVP",
                formats=tuple(formats),
                attributes=tuple(attributes),
            ),
        ),
    )


def process_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """Check a peer's answer against our offer and return the negotiated media.

    The answer must have as many ``m=`` lines as the offer and accept our
    audio stream (the first audio ``m=`` line with a port) with at least one
    codec we offered (same encoding, clock rate and channels); the first such
    codec in the answer is used, with the answer's payload type (RFC 3264
    section 7). Formats the answer adds that we never offered are ignored, as
    RFC 3264 allows. The ptime is the answer's if the codec can frame it,
    else our offer's. Raises :class:`SdpNegotiationError` otherwise.
    """
    if len(answer.media) != len(offer.media):
        raise SdpNegotiationError(
            f"the answer has {len(answer.media)} m= lines, the offer had {len(offer.media)}"
        )
    index = next(
        (i for i, m in enumerate(offer.media) if m.media.lower() == "audio" and m.port != 0),
        None,
    )
    if index is None:
        raise SdpNegotiationError("our offer has no active audio stream")
    ours, theirs = offer.media[index], answer.media[index]
    label = f"m-line {index + 1}"
    if theirs.media.lower() != ours.media.lower() or theirs.proto.upper() != ours.proto.upper():
        raise SdpNegotiationError(
            f"{label}: answered as {theirs.media} {theirs.proto}, offered {ours.media} {ours.proto}"
        )
    if theirs.port == 0:
        raise SdpNegotiationError(f"{label}: the answerer rejected the audio stream (port 0)")
    offered_formats = ours.payload_formats
    codec = None
    for fmt in theirs.payload_formats:
        if fmt.is_telephone_event:
            continue
        match = next(
            (
                o
                for o in offered_formats
                if not o.is_telephone_event
                and _same_codec(fmt, (o.encoding, o.clock_rate, o.channels))
            ),
            None,
        )
        if match is not None:
            codec = replace(fmt, encoding=match.encoding)
            break
    if codec is None:
        answered = ", ".join(f.key for f in theirs.payload_formats) or ", ".join(theirs.formats)
        offered = ", ".join(f.key for f in offered_formats if not f.is_telephone_event)
        raise SdpNegotiationError(
            f"{label}: the answer's codecs ({answered}) are not among those offered ({offered})"
        )
    offered_rates = {f.clock_rate for f in offered_formats if f.is_telephone_event}
    event = _pick_telephone_event(
        (f for f in theirs.payload_formats if f.clock_rate in offered_rates), codec.clock_rate
    )
    answer_direction = theirs.direction(answer.direction)
    our_direction = answer_direction.reversed().restricted_to(ours.direction(offer.direction))
    negotiated_ptime = (
        _usable_ptime(theirs.ptime, codec.encoding)
        or _usable_ptime(ours.ptime, codec.encoding)
        or DEFAULT_PTIME
    )
    mux = ours.rtcp_mux and theirs.rtcp_mux
    return _negotiated_media(
        index, codec, negotiated_ptime, our_direction, answer, theirs, mux, answer_direction, event
    )
