"""Sans-I/O SIP (RFC 3261) over UDP: messages, transactions, dialogs, a user agent.

Bytes and ``now`` go in, objects, events and datagrams come out; nothing in
this package opens a socket, reads the clock, logs or awaits.
"""
