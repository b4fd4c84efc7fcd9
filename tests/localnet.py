"""A free TCP port on 127.0.0.1 for the tests that start a server or a rendezvous (review,
label, serve, torchrun)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (the OS's choice; freed again before it is returned)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
