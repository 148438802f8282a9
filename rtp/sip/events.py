"""What the SIP endpoint tells the application: call handles and events.

Owns ``CallHandle`` (the opaque, hashable name of one call, inbound or
outbound) and the events ``SipEndpoint.next_event()`` returns, as frozen
dataclasses. Every call handle receives exactly one *terminal* event:
``CallEnded``, ``CallCancelled`` or ``OutgoingCallFailed``; after it the
handle is dead and the endpoint ignores calls made on it.

Must not: hold behaviour or state; events are plain records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rtp.sip.message import SipRequest, SipResponse

__all__ = [
    "CallAcked",
    "CallCancelled",
    "CallEnded",
    "CallHandle",
    "CallReinvited",
    "IncomingCall",
    "OutgoingCallAnswered",
    "OutgoingCallFailed",
    "OutgoingCallProgress",
    "RemoteError",
    "SipEvent",
]


@dataclass(frozen=True)
class CallHandle:
    """Names one call for the application; compare and hash freely."""

    serial: int
    call_id: str
    direction: Literal["inbound", "outbound"]


@dataclass(frozen=True)
class SipEvent:
    """Base class of every event."""


@dataclass(frozen=True)
class IncomingCall(SipEvent):
    """An INVITE outside any dialog; 100 Trying has already been sent.

    Answer with ``answer``, ``ringing`` first if you like, or ``reject``.
    """

    call: CallHandle
    request: SipRequest
    addr: tuple[str, int]


@dataclass(frozen=True)
class CallAcked(SipEvent):
    """The ACK for our 2xx (to the INVITE or a re-INVITE) arrived; media may flow."""

    call: CallHandle
    request: SipRequest


@dataclass(frozen=True)
class CallReinvited(SipEvent):
    """A re-INVITE in an established dialog; answer it with ``answer`` or ``reject``."""

    call: CallHandle
    request: SipRequest


@dataclass(frozen=True)
class CallCancelled(SipEvent):
    """Terminal: the caller cancelled before we answered (200 to CANCEL and 487 sent)."""

    call: CallHandle
    request: SipRequest


@dataclass(frozen=True)
class CallEnded(SipEvent):
    """Terminal: the call is over.

    ``by="remote"``: a BYE arrived (already answered 200). ``by="local"``:
    our ``hangup``/``reject`` finished, or the ACK for our 2xx never came and
    the endpoint sent a BYE itself (``reason`` says which).
    """

    call: CallHandle
    by: Literal["local", "remote"]
    reason: str


@dataclass(frozen=True)
class OutgoingCallProgress(SipEvent):
    """A provisional response (101-199) to our INVITE."""

    call: CallHandle
    status: int
    response: SipResponse


@dataclass(frozen=True)
class OutgoingCallAnswered(SipEvent):
    """A 2xx to our INVITE; the endpoint has already sent the ACK."""

    call: CallHandle
    response: SipResponse


@dataclass(frozen=True)
class OutgoingCallFailed(SipEvent):
    """Terminal: our INVITE got a 300-699, no answer in time (408), or no response (408)."""

    call: CallHandle
    status: int
    reason: str


@dataclass(frozen=True)
class RemoteError(SipEvent):
    """A peer's message was refused: answered with ``code`` or, if unanswerable, dropped."""

    code: int
    reason: str
    addr: tuple[str, int]
    answered: bool
