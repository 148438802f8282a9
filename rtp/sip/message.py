"""SIP messages: parsing bytes into requests/responses and serialising back.

Owns ``SipRequest``/``SipResponse``, their ordered, case-insensitive
``Headers`` multi-dict (original names and order kept; compact forms such as
``v``/``i``/``f`` looked up as their full names), ``parse_message`` with its
``SipLimits`` (message size, header count, line length), the framing rules of
RFC 3261 §7 and §18.3 (line folding, Content-Length, a datagram longer than
Content-Length is truncated, a shorter one refused; ``SipStreamFramer`` cuts
a TCP byte stream into messages by Content-Length), the checks every request
must pass to be answerable (version, URI scheme, mandatory headers, CSeq
method), ``build_response`` (RFC 3261 §8.2.6: Via/From/To/Call-ID/CSeq
copied) and the standard reason phrases.

A peer's bad bytes raise ``SipRemoteError`` carrying the status to answer
with, and nothing else: no other exception escapes ``parse_message``.
Building a message with a header value that would break the framing (a line
break) raises ``SipLocalError``.

Must not: keep transaction or dialog state, or do I/O. Header values are
parsed into ``Via``/``NameAddr``/``CSeq`` on access, by ``rtp.sip.address``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeAlias

from rtp.sip.address import CSeq, NameAddr, SipUri, Via, split_header_list
from rtp.sip.errors import SipLocalError, SipRemoteError

__all__ = [
    "COMPACT_FORMS",
    "REASON_PHRASES",
    "Headers",
    "SipLimits",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "SipStreamFramer",
    "build_response",
    "canonical_header_name",
    "parse_message",
    "reason_phrase",
]

SIP_VERSION = "SIP/2.0"

#: RFC 3261 §7.3.3 (and later RFCs) compact header names → full names.
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_COMPACT_KEYS = {short: full.lower() for short, full in COMPACT_FORMS.items()}

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_STATUS_RE = re.compile(r"[1-6][0-9][0-9]")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # any byte round-trips, nothing fails to decode


def reason_phrase(status: int) -> str:
    """The standard reason phrase for ``status`` (class default if unknown)."""
    return REASON_PHRASES.get(status) or REASON_PHRASES.get(status // 100 * 100, "Unknown")


def canonical_header_name(name: str) -> str:
    """The lookup key of a header name: lowercase, compact form expanded."""
    lowered = name.lower()
    return _COMPACT_KEYS.get(lowered, lowered)


@dataclass(frozen=True)
class SipLimits:
    """What a peer may send before ``parse_message`` refuses with 413/513."""

    max_message_bytes: int = 65536
    max_headers: int = 100
    max_line_bytes: int = 8192


DEFAULT_LIMITS = SipLimits()


def _check_field(name: str, value: str) -> None:
    if not _TOKEN_RE.fullmatch(name):
        raise SipLocalError(f"invalid SIP header name {name!r}")
    if "\r" in value or "\n" in value:
        raise SipLocalError(f"header {name} value contains a line break")


class Headers:
    """Ordered header fields; lookups ignore case and accept compact names.

    Each field keeps the name it was written with (``v`` stays ``v`` on the
    wire); ``get("Via")`` finds it all the same. Values are stored unfolded
    and stripped.
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str, str]] = []
        for name, value in fields:
            self.add(name, value)

    @classmethod
    def _trusted(cls, fields: list[tuple[str, str, str]]) -> Headers:
        headers = cls.__new__(cls)
        headers._fields = fields
        return headers

    def add(self, name: str, value: str) -> None:
        """Append a field (after validating it)."""
        _check_field(name, value)
        self._fields.append((name, value, canonical_header_name(name)))

    def set(self, name: str, value: str) -> None:
        """Replace the first field called ``name`` in place, drop the rest; append if absent."""
        _check_field(name, value)
        key = canonical_header_name(name)
        fields: list[tuple[str, str, str]] = []
        done = False
        for field_ in self._fields:
            if field_[2] == key:
                if not done:
                    fields.append((field_[0], value, key))
                    done = True
            else:
                fields.append(field_)
        if not done:
            fields.append((name, value, key))
        self._fields = fields

    def replace_first(self, name: str, value: str) -> None:
        """Replace only the first field called ``name`` (others kept); append if absent."""
        _check_field(name, value)
        key = canonical_header_name(name)
        for i, (old_name, _, field_key) in enumerate(self._fields):
            if field_key == key:
                self._fields[i] = (old_name, value, key)
                return
        self._fields.append((name, value, key))

    def remove(self, name: str) -> int:
        """Drop every field called ``name``; return how many there were."""
        key = canonical_header_name(name)
        before = len(self._fields)
        self._fields = [f for f in self._fields if f[2] != key]
        return before - len(self._fields)

    def get(self, name: str) -> str | None:
        """The first value of ``name``, or ``None``."""
        key = canonical_header_name(name)
        for _, value, field_key in self._fields:
            if field_key == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order, as written (not comma-split)."""
        key = canonical_header_name(name)
        return [value for _, value, field_key in self._fields if field_key == key]

    def get_list(self, name: str) -> list[str]:
        """Every element of a list-valued header, comma-split across all its fields."""
        return [item for value in self.get_all(name) for item in split_header_list(value)]

    def copy(self) -> Headers:
        return Headers._trusted(list(self._fields))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((name, value) for name, value, _ in self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


def _missing(name: str) -> SipRemoteError:
    return SipRemoteError(400, f"Missing {name} header")


class _SipMessageBase:
    """What requests and responses share: headers, body, typed header access."""

    headers: Headers
    body: bytes
    version: str

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise _missing(name)
        return value

    @property
    def call_id(self) -> str:
        value = self._required("Call-ID")
        if not value or any(c in value for c in " \t"):
            raise SipRemoteError(400, "Malformed Call-ID header")
        return value

    @property
    def cseq(self) -> CSeq:
        return CSeq.parse(self._required("CSeq"))

    @property
    def vias(self) -> list[Via]:
        """Every Via value, topmost first (comma-separated and repeated fields)."""
        values = self.headers.get_list("Via")
        if not values:
            raise _missing("Via")
        return [Via.parse(value) for value in values]

    @property
    def top_via(self) -> Via:
        values = self.headers.get_list("Via")
        if not values:
            raise _missing("Via")
        return Via.parse(values[0])

    @property
    def from_addr(self) -> NameAddr:
        return NameAddr.parse(self._required("From"), "From header")

    @property
    def to_addr(self) -> NameAddr:
        return NameAddr.parse(self._required("To"), "To header")

    @property
    def contact(self) -> NameAddr | None:
        """The first Contact, or ``None`` if there is none."""
        values = self.headers.get_list("Contact")
        return NameAddr.parse(values[0], "Contact header") if values else None

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        if value is None:
            return None
        if not _DIGITS_RE.fullmatch(value):
            raise SipRemoteError(400, "Malformed Max-Forwards header")
        return int(value)

    @property
    def content_type(self) -> str | None:
        """The media type without parameters, lowercase (``application/sdp``)."""
        value = self.headers.get("Content-Type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()

    def start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        """The wire form; Content-Length is always (re)written to match the body."""
        lines = [self.start_line()]
        length_written = False
        for name, value, key in self.headers._fields:
            if key == "content-length":
                if length_written:
                    continue
                value = str(len(self.body))
                length_written = True
            lines.append(f"{name}: {value}")
        if not length_written:
            lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode(_ENCODING, _ERRORS) + self.body

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _SipMessageBase)
        return (
            self.start_line() == other.start_line()
            and self.headers == other.headers
            and self.body == other.body
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.start_line()!r}, {len(self.headers)} headers,"
            f" {len(self.body)} body bytes>"
        )


class SipRequest(_SipMessageBase):
    """A SIP request: method, Request-URI (text), headers, body."""

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body
        self.version = version

    @property
    def sip_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"


class SipResponse(_SipMessageBase):
    """A SIP response: status code, reason phrase, headers, body."""

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = SIP_VERSION,
    ) -> None:
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"


SipMessage: TypeAlias = SipRequest | SipResponse


def build_response(
    request: SipRequest, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> SipResponse:
    """A response skeleton per RFC 3261 §8.2.6.2.

    Copies every Via field (in order, as written), From, To, Call-ID and CSeq;
    adds ``;tag=to_tag`` to To unless it already has a tag. Callers add
    Contact, Record-Route, body, etc.
    """
    fields: list[tuple[str, str]] = [("Via", v) for v in request.headers.get_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "To" and to_tag is not None and not _has_tag(value):
            value = f"{value};tag={to_tag}"
        fields.append((name, value))
    return SipResponse(status, reason, Headers(fields))


def _has_tag(value: str) -> bool:
    try:
        return NameAddr.parse(value).tag is not None
    except SipRemoteError:
        return ";tag=" in value.lower()


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def _head_end(data: bytes | bytearray) -> tuple[int, int] | None:
    """(end of the header section, start of the body) at the first empty line."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return None


def _split_head(data: bytes) -> tuple[bytes, bytes, bool]:
    """(header section, body, had a blank line) at the first empty line."""
    end = _head_end(data)
    if end is None:
        return data, b"", False
    return data[: end[0]], data[end[1] :], True


def _parse_fields(lines: list[str], limits: SipLimits) -> tuple[list[tuple[str, str, str]], str]:
    """Header lines (after the start line) → fields, plus the first limit hit ("" if none).

    Parsing stops at the header-count limit; an over-long line is kept (the
    caller refuses the message but can still answer from the fields).
    """
    fields: list[tuple[str, str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise SipRemoteError(400, "Folded line before any header")
            name, value, key = fields[-1]
            if "\r" in line:
                raise SipRemoteError(400, "Malformed header line")
            fields[-1] = (name, f"{value} {line.strip()}".strip(), key)
            if len(fields[-1][1]) > limits.max_line_bytes:
                return fields, "header line too long"
            continue
        if len(fields) >= limits.max_headers:
            return fields, "too many headers"
        if len(line) > limits.max_line_bytes:
            return fields, "header line too long"
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _TOKEN_RE.fullmatch(name) or "\r" in value:
            raise SipRemoteError(400, "Malformed header line")
        fields.append((name, value.strip(), canonical_header_name(name)))
    return fields, ""


def _parse_start_line(line: str) -> SipRequest | SipResponse:
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        status_text, _, reason = rest.partition(" ")
        if version.upper() != SIP_VERSION or not _STATUS_RE.fullmatch(status_text):
            raise SipRemoteError(400, "Malformed status line")
        return SipResponse(int(status_text), reason.strip(), Headers(), b"", version)
    parts = line.split()
    if len(parts) != 3 or not parts[2][:4].upper() == "SIP/" or not _TOKEN_RE.fullmatch(parts[0]):
        raise SipRemoteError(400, "Malformed request line")
    method, uri, version = parts
    return SipRequest(method, uri, Headers(), b"", version)


def _content_length(headers: Headers) -> int | None:
    values = headers.get_all("Content-Length")
    if not values:
        return None
    if any(not _DIGITS_RE.fullmatch(v) for v in values) or len(set(map(int, values))) > 1:
        raise SipRemoteError(400, "Malformed Content-Length header")
    return int(values[0])


def _check_request(request: SipRequest) -> None:
    """What every request must satisfy before a UA may act on it."""
    if request.version.upper() != SIP_VERSION:
        raise SipRemoteError(505, "Version Not Supported")
    request.sip_uri  # noqa: B018 - 416 for other schemes, 400 if unreadable
    request.top_via  # noqa: B018
    cseq = request.cseq
    if cseq.method != request.method:
        raise SipRemoteError(400, "CSeq method does not match the request method")
    request.call_id  # noqa: B018
    request.from_addr  # noqa: B018
    request.to_addr  # noqa: B018
    request.max_forwards  # noqa: B018 - tolerated missing, refused malformed


def _check_response(response: SipResponse) -> None:
    """What a response must have before any transaction acts on it."""
    response.top_via  # noqa: B018
    response.cseq  # noqa: B018
    response.call_id  # noqa: B018
    response.from_addr  # noqa: B018
    response.to_addr  # noqa: B018


def parse_message(data: bytes, *, limits: SipLimits = DEFAULT_LIMITS) -> SipMessage:
    """Parse one SIP message from a datagram (RFC 3261 §7, §18.3).

    Leading CRLFs are skipped; bare LF line ends are tolerated; folded header
    lines are joined with one space. Without Content-Length the body is the
    rest of the datagram; with it, extra bytes are dropped and a shorter body
    is refused. Requests are checked for SIP/2.0, a sip/sips Request-URI, a
    readable Via, From, To, Call-ID and CSeq (whose method must match), and a
    numeric Max-Forwards if present (a missing one is tolerated, as many
    devices omit it on in-dialog requests). Responses need Via, CSeq,
    Call-ID, From and To. Anything else raises ``SipRemoteError`` whose ``request`` is the
    readable part when the message was a request.
    """
    too_big = len(data) > limits.max_message_bytes
    if too_big:
        data = data[: limits.max_message_bytes]
    head_bytes, body, complete = _split_head(data.lstrip(b"\r\n"))
    if too_big and not complete:
        # The cut fell inside the header section: read the whole lines before
        # it, so the refusal can still be answered.
        head_bytes = head_bytes[: max(head_bytes.rfind(b"\n"), 0)]
        if not head_bytes:
            raise SipRemoteError(513, "Message Too Large")
    lines = head_bytes.decode(_ENCODING, _ERRORS).split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines[0].strip() or "\r" in lines[0]:
        raise SipRemoteError(400, "Empty or malformed start line")
    message = _parse_start_line(lines[0])
    request = message if isinstance(message, SipRequest) else None
    try:
        fields, limit_hit = _parse_fields(lines[1:], limits)
        message.headers = Headers._trusted(fields)
        if too_big:
            raise SipRemoteError(513, "Message Too Large")
        if limit_hit:
            raise SipRemoteError(513, f"Message Too Large ({limit_hit})")
        if len(lines[0]) > limits.max_line_bytes:
            raise SipRemoteError(414 if request else 513, "Start line too long")
        length = _content_length(message.headers)
        if length is not None:
            if length > limits.max_message_bytes:
                raise SipRemoteError(413, "Request Entity Too Large")
            if len(body) < length:
                raise SipRemoteError(400, "Body shorter than Content-Length")
            body = body[:length]
        message.body = body
        if request is not None:
            _check_request(request)
        else:
            assert isinstance(message, SipResponse)
            _check_response(message)
    except SipRemoteError as error:
        error.request = request
        raise
    return message


_STREAM_LENGTH_RE = re.compile(
    rb"^(?:content-length|l)[ \t]*:[ \t]*([0-9]+)[ \t]*\r?$", re.I | re.M
)


class SipStreamFramer:
    """Cuts a stream transport's bytes (TCP) into messages (RFC 3261 §18.3).

    On a stream every message must carry Content-Length. CRLFs between
    messages (keep-alives, RFC 5626) are skipped. A framing error (no or
    conflicting Content-Length, a header section or message over the limits)
    raises ``SipRemoteError``: the stream cannot be resynchronised and the
    connection should be closed. A well-framed message that fails to parse is
    returned as its ``SipRemoteError`` so the caller can answer it and go on.
    """

    def __init__(self, *, limits: SipLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[SipMessage | SipRemoteError]:
        """Add bytes; return every message (or per-message error) now complete."""
        self._buffer += data
        out: list[SipMessage | SipRemoteError] = []
        buffer = self._buffer
        while True:
            start = 0
            while start < len(buffer) and buffer[start] in b"\r\n":
                start += 1
            del buffer[:start]
            end = _head_end(buffer[: self.limits.max_message_bytes])
            if end is None:
                if len(buffer) > self.limits.max_message_bytes:
                    raise SipRemoteError(513, "Message Too Large (header section)")
                return out
            head_end, body_start = end
            lengths = {int(m) for m in _STREAM_LENGTH_RE.findall(buffer[:head_end])}
            if len(lengths) != 1:
                raise SipRemoteError(400, "Stream message needs one Content-Length")
            total = body_start + lengths.pop()
            if total > self.limits.max_message_bytes:
                raise SipRemoteError(513, "Message Too Large")
            if len(buffer) < total:
                return out
            try:
                out.append(parse_message(bytes(buffer[:total]), limits=self.limits))
            except SipRemoteError as error:
                out.append(error)
            del buffer[:total]

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)
