"""Sans-I/O SIP (RFC 3261) over UDP: messages, transactions, dialogs, a user agent.

Bytes and ``now`` go in, objects, events and datagrams come out; nothing in
this package opens a socket, reads the clock, logs or awaits.

- ``message``: parse/serialise requests and responses, limits, compact forms;
- ``address``: URIs, name-addr, Via, CSeq;
- ``transaction``: the four RFC 3261 §17 state machines, as tables;
- ``dialog``: dialog state and in-dialog requests;
- ``endpoint``: ``SipEndpoint``, the UAS/UAC the I/O layer drives;
- ``events``: what the endpoint reports; ``errors``: the exception tree.
"""

from rtp.sip.address import CSeq, NameAddr, Params, SipUri, Via
from rtp.sip.dialog import Dialog
from rtp.sip.endpoint import CallState, SipCounters, SipEndpoint
from rtp.sip.errors import SipError, SipLocalError, SipRemoteError
from rtp.sip.events import (
    CallAcked,
    CallCancelled,
    CallEnded,
    CallHandle,
    CallReinvited,
    IncomingCall,
    OutgoingCallAnswered,
    OutgoingCallFailed,
    OutgoingCallProgress,
    RemoteError,
    SipEvent,
)
from rtp.sip.message import (
    Headers,
    SipLimits,
    SipMessage,
    SipRequest,
    SipResponse,
    SipStreamFramer,
    build_response,
    parse_message,
)
from rtp.sip.timers import SipTimers

__all__ = [
    "CSeq",
    "CallAcked",
    "CallCancelled",
    "CallEnded",
    "CallHandle",
    "CallReinvited",
    "CallState",
    "Dialog",
    "Headers",
    "IncomingCall",
    "NameAddr",
    "OutgoingCallAnswered",
    "OutgoingCallFailed",
    "OutgoingCallProgress",
    "Params",
    "RemoteError",
    "SipCounters",
    "SipEndpoint",
    "SipError",
    "SipEvent",
    "SipLimits",
    "SipLocalError",
    "SipMessage",
    "SipRemoteError",
    "SipRequest",
    "SipResponse",
    "SipStreamFramer",
    "SipTimers",
    "SipUri",
    "Via",
    "build_response",
    "parse_message",
]
