"""The SIP stack's exceptions, drawn once here.

::

    SipError
    ├── SipRemoteError   the peer sent something we cannot accept; carries the
    │                    status code (and reason, and any extra header fields)
    │                    to answer with, plus the request when enough of it was
    │                    readable to build an answer
    └── SipLocalError    the application misused the API (answering a call
                         twice, a header value with a line break, ...)

A remote error is never raised out of ``SipEndpoint.receive_datagram``: the
endpoint answers it or drops and counts it. A local error always reaches the
caller, because it is a bug in the caller.

Must not: import anything else from the SIP stack (every other module imports
this one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtp.sip.message import SipRequest

__all__ = ["SipError", "SipLocalError", "SipRemoteError"]


class SipError(Exception):
    """Base class of every exception the SIP stack raises."""


class SipRemoteError(SipError):
    """A peer's message is malformed, too large or asks for what we do not do.

    ``code`` and ``reason`` form the status line to answer with (400 malformed
    or missing mandatory header, 413/513 too large, 416 unsupported URI scheme,
    420 unsupported ``Require``, 505 SIP version, ...). ``headers`` are extra
    header fields the answer must carry (``Unsupported`` for a 420).
    ``request`` is the request as far as it could be read, set only when the
    message was recognisably a request; the endpoint answers from it when its
    top ``Via`` and ``CSeq`` are usable, and drops the message otherwise.
    """

    def __init__(
        self,
        code: int,
        reason: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        request: SipRequest | None = None,
    ) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason
        self.headers = tuple(headers)
        self.request = request


class SipLocalError(SipError):
    """The application used the API wrongly; never caused by a peer."""
