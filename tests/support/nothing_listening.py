"""An address on this machine where nothing listens, for tests of unreachable targets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def nothing_listening() -> Iterator[str]:
    """`127.0.0.1:P` with P bound and never listened on: a connection there is refused. The port
    stays bound until the block ends; a port bound and closed at once could be taken meanwhile by
    a server another test worker starts on a free port, and the "unreachable" target answered."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"
