"""Call control, verbs, sockets and the command line: everything that owns I/O."""

__version__ = "0.1.0"
