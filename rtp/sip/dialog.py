"""SIP dialogs (RFC 3261 §12): identity, sequence numbers, target and route set.

Owns ``Dialog``: the dialog ID (Call-ID, local tag, remote tag), the local
and remote CSeq (a remote request numbered below the last one is refused
with 500), the remote target (from Contact, refreshed by re-INVITE and 2xx)
and the route set (from Record-Route, reversed for the UAC), and building
requests inside the dialog: BYE, re-INVITE, and the ACK for a 2xx, with the
Request-URI and Route headers of §12.2.1.1 (loose and strict routing) and
the next hop to send them to.

Must not: retransmit, run timers or decide what a call does next (that is
the endpoint's), or do I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rtp.sip.address import NameAddr, SipUri
from rtp.sip.errors import SipRemoteError
from rtp.sip.message import Headers, SipRequest, SipResponse

__all__ = ["Dialog", "DialogId"]

DialogId = tuple[str, str, str]


def _contact_target(message: SipRequest | SipResponse) -> str:
    contact = message.contact
    if contact is None:
        raise SipRemoteError(400, "Missing Contact header")
    contact.sip_uri()  # a target we cannot route to is refused up front
    return contact.uri


def _route_uri(route: str) -> SipUri:
    return NameAddr.parse(route, "Route header").sip_uri()


def _route_set(values: list[str]) -> tuple[str, ...]:
    for value in values:
        try:
            _route_uri(value)
        except SipRemoteError:
            raise SipRemoteError(400, "Malformed Record-Route header") from None
    return tuple(values)


@dataclass
class Dialog:
    """A dialog as one user agent sees it.

    ``local_party``/``remote_party`` are the From/To values (tags included)
    our requests carry; ``route_set`` holds Route values as written.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_party: str
    remote_party: str
    remote_target: str
    route_set: tuple[str, ...] = ()
    local_cseq: int = 0
    remote_cseq: int | None = None
    secure: bool = False

    @property
    def id(self) -> DialogId:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(cls, request: SipRequest, local_tag: str) -> Dialog:
        """The dialog a UAS creates by answering ``request`` (RFC 3261 §12.1.1).

        Refuses (400/416) a request whose Contact or Record-Route could not
        be routed to later, so the endpoint can check that on arrival.
        """
        to = request.headers.get("To") or ""
        if request.to_addr.tag is None:
            to = f"{to};tag={local_tag}"
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_addr.tag or "",
            local_party=to,
            remote_party=request.headers.get("From") or "",
            remote_target=_contact_target(request),
            route_set=_route_set(request.headers.get_list("Record-Route")),
            local_cseq=0,
            remote_cseq=request.cseq.number,
            secure=request.sip_uri.scheme == "sips",
        )

    @classmethod
    def as_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The dialog a UAC gets from a response with a To tag (RFC 3261 §12.1.2).

        A 2xx without a usable Contact still needs its ACK and BYE: the
        Request-URI of the INVITE stands in as the remote target, and an
        unreadable Record-Route is ignored.
        """
        try:
            target = _contact_target(response)
        except SipRemoteError:
            target = request.uri
        try:
            routes = _route_set(response.headers.get_list("Record-Route"))
        except SipRemoteError:
            routes = ()  # unusable: go straight to the target rather than nowhere
        return cls(
            call_id=request.call_id,
            local_tag=request.from_addr.tag or "",
            remote_tag=response.to_addr.tag or "",
            local_party=request.headers.get("From") or "",
            remote_party=response.headers.get("To") or "",
            remote_target=target,
            route_set=tuple(reversed(routes)),
            local_cseq=request.cseq.number,
            remote_cseq=None,
            secure=request.sip_uri.scheme == "sips",
        )

    def accept_remote_cseq(self, request: SipRequest) -> None:
        """Check a remote in-dialog request's CSeq (RFC 3261 §12.2.2) and record it.

        ACK and CANCEL reuse their INVITE's number and are not checked.
        """
        if request.method in ("ACK", "CANCEL"):
            return
        number = request.cseq.number
        if self.remote_cseq is not None and number < self.remote_cseq:
            raise SipRemoteError(500, "CSeq lower than the dialog's last request")
        self.remote_cseq = number

    def refresh_target(self, message: SipRequest | SipResponse) -> None:
        """Take a new remote target from a target-refresh request/2xx Contact, if any."""
        if message.contact is not None:
            self.remote_target = _contact_target(message)

    def next_hop(self) -> tuple[str, int]:
        """Where in-dialog requests go: the first route, else the remote target."""
        uri = _route_uri(self.route_set[0]) if self.route_set else SipUri.parse(self.remote_target)
        return uri.host_port(5061 if uri.scheme == "sips" else 5060)

    def request(
        self,
        method: str,
        *,
        via: str,
        cseq: int | None = None,
        contact: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipRequest:
        """A request inside this dialog (RFC 3261 §12.2.1.1).

        ``cseq`` is taken as given (ACK, CANCEL) or else the next local number.
        """
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        uri = self.remote_target
        routes = list(self.route_set)
        if routes and not _route_uri(routes[0]).params.has("lr"):
            # Strict routing: the first route becomes the Request-URI.
            uri = str(_route_uri(routes[0]))
            routes = [*routes[1:], f"<{self.remote_target}>"]
        fields = Headers(
            [
                ("Via", via),
                ("Max-Forwards", "70"),
                ("From", self.local_party),
                ("To", self.remote_party),
                ("Call-ID", self.call_id),
                ("CSeq", f"{cseq} {method}"),
            ]
        )
        for route in routes:
            fields.add("Route", route)
        if contact is not None:
            fields.add("Contact", contact)
        for name, value in headers:
            fields.add(name, value)
        if body and content_type is not None:
            fields.add("Content-Type", content_type)
        return SipRequest(method, uri, fields, body)
