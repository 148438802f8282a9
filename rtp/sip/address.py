"""Structured SIP header values: URIs, name-addr, Via, CSeq and parameters.

Owns the grammar of the header values the stack reasons about (RFC 3261 §19,
§20, §25): ``SipUri`` (sip/sips, user, password, host with IPv6 ``[...]``,
port, parameters, headers), ``NameAddr`` (From/To/Contact/Route: display
name, URI, header parameters such as ``tag``), ``Via`` (transport, sent-by,
``branch``/``received``/``rport``), ``CSeq`` and ``Params``, plus
``split_header_list`` for comma-separated header values. Every parser raises
``SipRemoteError(400, ...)`` (416 for a URI scheme other than sip/sips) on
input it cannot read; every value object serialises back with ``str()``.

Must not: know about whole messages, transactions or dialogs, and never
resolve names or touch sockets (hosts stay strings).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from rtp.sip.errors import SipRemoteError

__all__ = [
    "MAGIC_COOKIE",
    "CSeq",
    "NameAddr",
    "Params",
    "SipUri",
    "Via",
    "format_host",
    "split_header_list",
    "unbracket",
]

#: Branch prefix marking an RFC 3261 branch (RFC 3261 §8.1.1.7).
MAGIC_COOKIE = "z9hG4bK"

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-._]*[A-Za-z0-9_])?\.?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_VIA_RE = re.compile(
    r"SIP\s*/\s*2\.0\s*/\s*(" + _TOKEN + r")\s+([^;\s]+(?:\s*:\s*[0-9]+)?)\s*(;.*)?",
    re.IGNORECASE | re.DOTALL,
)
_CSEQ_RE = re.compile(r"([0-9]{1,10})\s+(" + _TOKEN + r")")
_MAX_CSEQ = 2**31 - 1
_NOT_IN_URI_RE = re.compile(r'[\s"<>]')


def _bad(what: str) -> SipRemoteError:
    return SipRemoteError(400, f"Malformed {what}")


def unbracket(host: str) -> str:
    """``[2001:db8::1]`` → ``2001:db8::1``; other hosts unchanged (socket form)."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def format_host(host: str) -> str:
    """A host in URI/Via form: an IPv6 literal gets its brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _check_host(host: str, what: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise _bad(what)
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _bad(what) from None
        return host
    if not _HOSTNAME_RE.fullmatch(host):
        raise _bad(what)
    return host


def _split_host_port(text: str, what: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _bad(what)
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _bad(what)
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_raw = text.partition(":")
        port_text = port_text_raw.strip() if sep else None
        host = host.strip()
    port: int | None = None
    if port_text is not None:
        if not _PORT_RE.fullmatch(port_text) or int(port_text) > 65535:
            raise _bad(what)
        port = int(port_text)
    return _check_host(host, what), port


def _split_outside_quotes(text: str, separator: str, *, angle: bool = False) -> list[str]:
    """Split on ``separator`` outside double quotes (and ``<...>`` if ``angle``)."""
    if '"' not in text and not (angle and ("<" in text or ">" in text)):
        return text.split(separator)  # nothing to protect: the common case
    parts: list[str] = []
    start = 0
    quoted = False
    depth = 0
    i = 0
    length = len(text)
    while i < length:
        char = text[i]
        if quoted:
            if char == "\\":
                i += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif angle and char == "<":
            depth += 1
        elif angle and char == ">" and depth:
            depth -= 1
        elif char == separator and not depth:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted or depth:
        raise _bad("header value (unbalanced quote or bracket)")
    parts.append(text[start:])
    return parts


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header value (Via, Route, Contact, Allow, ...).

    Commas inside quoted strings and inside ``<...>`` do not split; empty
    elements are dropped; each element is stripped.
    """
    return [part.strip() for part in _split_outside_quotes(value, ",", angle=True) if part.strip()]


@dataclass(frozen=True)
class Params:
    """Ordered ``;name=value`` parameters; names compare case-insensitively.

    A parameter without ``=`` (``;lr``, ``;rport``) has the value ``None``.
    """

    items: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Params:
        """Parse ``;a=1;b`` (the leading ``;`` optional; empty text → no params)."""
        text = text.strip()
        if not text:
            return cls()
        if text.startswith(";"):
            text = text[1:]
        items: list[tuple[str, str | None]] = []
        for part in _split_outside_quotes(text, ";"):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not _TOKEN_RE.fullmatch(name):
                raise _bad("parameter")
            items.append((name, value.strip() if sep else None))
        return cls(tuple(items))

    def has(self, name: str) -> bool:
        lowered = name.lower()
        return any(key.lower() == lowered for key, _ in self.items)

    def get(self, name: str) -> str | None:
        """The value of ``name`` (first occurrence); ``None`` if absent or valueless."""
        lowered = name.lower()
        for key, value in self.items:
            if key.lower() == lowered:
                return value
        return None

    def replace(self, name: str, value: str | None) -> Params:
        """A copy with ``name`` set to ``value`` (in place if present, else appended)."""
        lowered = name.lower()
        items: list[tuple[str, str | None]] = []
        done = False
        for key, old in self.items:
            if key.lower() == lowered:
                if not done:
                    items.append((key, value))
                    done = True
            else:
                items.append((key, old))
        if not done:
            items.append((name, value))
        return Params(tuple(items))

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __str__(self) -> str:
        return "".join(
            f";{key}" if value is None else f";{key}={value}" for key, value in self.items
        )


@dataclass(frozen=True)
class SipUri:
    """A ``sip:``/``sips:`` URI (RFC 3261 §19.1).

    ``host`` keeps IPv6 brackets (``[::1]``); ``address`` is the socket form.
    ``headers`` is the raw text after ``?`` (empty if none).
    """

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = field(default_factory=Params)
    headers: str = ""
    scheme: str = "sip"

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        if _NOT_IN_URI_RE.search(text):
            raise _bad("URI (whitespace, quote or angle bracket)")
        scheme, colon, rest = text.partition(":")
        if not colon or not scheme:
            raise _bad("URI")
        scheme = scheme.lower()
        if scheme not in ("sip", "sips"):
            if re.fullmatch(r"[a-z][a-z0-9+\-.]*", scheme):
                raise SipRemoteError(416, "Unsupported URI Scheme")
            raise _bad("URI")
        rest, _, headers = rest.partition("?")
        user: str | None = None
        password: str | None = None
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            user, sep, pw = userinfo.partition(":")
            password = pw if sep else None
            if not user or any(c in user for c in ' \t<>"'):
                raise _bad("URI user part")
        hostport, semi, param_text = rest.partition(";")
        host, port = _split_host_port(hostport, "URI host")
        params = Params.parse(param_text) if semi else Params()
        return cls(
            host=host,
            user=user,
            password=password,
            port=port,
            params=params,
            headers=headers,
            scheme=scheme,
        )

    @property
    def address(self) -> str:
        """The host in socket form (no IPv6 brackets)."""
        return unbracket(self.host)

    def host_port(self, default_port: int = 5060) -> tuple[str, int]:
        """Where to send to reach this URI (``maddr`` ignored; port defaulted)."""
        return self.address, self.port if self.port is not None else default_port

    def __str__(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user if self.password is None else f"{self.user}:{self.password}"
            userinfo += "@"
        port = "" if self.port is None else f":{self.port}"
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.host}{port}{self.params}{headers}"


def _parse_quoted(text: str, what: str) -> tuple[str, str]:
    """``"a \\"b\\"" rest`` → (``a "b"``, `` rest``)."""
    out: list[str] = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if char == '"':
            return "".join(out), text[i + 1 :]
        out.append(char)
        i += 1
    raise _bad(what)


@dataclass(frozen=True)
class NameAddr:
    """A From/To/Contact/Route/Record-Route value (RFC 3261 §20.10, §25.1).

    ``uri`` is kept as text (it may use a scheme other than sip, e.g. ``tel:``);
    ``sip_uri()`` parses it. ``params`` are the header parameters that follow
    the address (``tag``, ``expires``, ...), not the URI's own.
    """

    uri: str
    display_name: str | None = None
    params: Params = field(default_factory=Params)

    @classmethod
    def parse(cls, text: str, what: str = "address") -> NameAddr:
        text = text.strip()
        display: str | None = None
        if text.startswith('"'):
            display, text = _parse_quoted(text, what)
            text = text.strip()
            if not text.startswith("<"):
                raise _bad(what)
        if "<" in text:
            lt = text.index("<")
            gt = text.find(">", lt)
            if gt < 0:
                raise _bad(what)
            if display is None:
                display = text[:lt].strip() or None
            elif text[:lt].strip():
                raise _bad(what)
            uri = text[lt + 1 : gt].strip()
            rest = text[gt + 1 :].strip()
            if rest and not rest.startswith(";"):
                raise _bad(what)
        else:
            uri, _, rest = text.partition(";")
            uri = uri.strip()
            rest = ";" + rest if rest else ""
            if " " in uri or "\t" in uri:
                raise _bad(what)
        if not uri or ":" not in uri:
            raise _bad(what)
        return cls(uri=uri, display_name=display, params=Params.parse(rest))

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def sip_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def with_tag(self, tag: str) -> NameAddr:
        return NameAddr(self.uri, self.display_name, self.params.replace("tag", tag))

    def __str__(self) -> str:
        if self.display_name is None:
            display = ""
        elif _TOKEN_RE.fullmatch(self.display_name.replace(" ", "")):
            display = self.display_name + " "
        else:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '
        return f"{display}<{self.uri}>{self.params}"


@dataclass(frozen=True)
class Via:
    """One Via value (RFC 3261 §20.42, RFC 3581 ``rport``).

    ``host`` keeps IPv6 brackets. ``rport`` is ``None`` when absent or empty;
    ``wants_rport`` says whether the parameter is present at all.
    """

    transport: str
    host: str
    port: int | None = None
    params: Params = field(default_factory=Params)

    @classmethod
    def parse(cls, text: str) -> Via:
        match = _VIA_RE.fullmatch(text.strip())
        if match is None:
            raise _bad("Via header")
        transport, sent_by, param_text = match.groups()
        host, port = _split_host_port(sent_by.replace(" ", ""), "Via header")
        params = Params.parse(param_text or "")
        rport = params.get("rport")
        if rport is not None and not (_PORT_RE.fullmatch(rport) and int(rport) <= 65535):
            raise _bad("Via rport")
        return cls(transport=transport.upper(), host=host, port=port, params=params)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def wants_rport(self) -> bool:
        return self.params.has("rport")

    @property
    def rport(self) -> int | None:
        value = self.params.get("rport")
        return int(value) if value else None

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return unbracket(self.host)

    def with_params(self, **values: str | None) -> Via:
        params = self.params
        for name, value in values.items():
            params = params.replace(name, value)
        return Via(self.transport, self.host, self.port, params)

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{self.params}"


@dataclass(frozen=True)
class CSeq:
    """``CSeq: <number> <method>`` (RFC 3261 §20.16; number below 2**31)."""

    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        match = _CSEQ_RE.fullmatch(text.strip())
        if match is None or int(match.group(1)) > _MAX_CSEQ:
            raise _bad("CSeq header")
        return cls(int(match.group(1)), match.group(2))

    def __str__(self) -> str:
        return f"{self.number} {self.method}"
