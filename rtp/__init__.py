"""Sans-I/O wire protocols: RTP, RFC 4733 events, jitter buffer, SDP, SIP.

Parsers take bytes (and ``now`` where time matters) and return objects and
events; they never touch sockets or read the clock.
"""
