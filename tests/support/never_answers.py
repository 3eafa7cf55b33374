"""An address on this machine that takes connections and never answers, as a frozen server (or a
port behind a black-holing firewall) looks to a client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def never_answers() -> Iterator[str]:
    """`127.0.0.1:P` listening and never accepting: the kernel completes each connection (the
    backlog) and keeps what the client sends, and nothing is ever read or written back."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(64)
        yield f"127.0.0.1:{listening.getsockname()[1]}"
