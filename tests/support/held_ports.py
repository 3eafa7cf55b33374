"""Consecutive localhost ports held for a server that must be told them (`--metrics-port P` under
`--workers N`: worker i serves metrics on P + i), so that no other program can take them between
the test's choice and the server's bind."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager


@contextmanager
def held_ports(count: int, attempts: int = 50) -> Iterator[int]:
    """The first of `count` consecutive ports on 127.0.0.1, each bound (never listened on) until the
    block ends. Each is bound without SO_REUSEADDR (so it fails where any socket has the port),
    then marked SO_REUSEADDR: Linux lets a server that binds with SO_REUSEADDR (prometheus_client's
    HTTP server, grpc) share a port whose other sockets all have it and none listens, while a bind
    to port 0 never picks such a port and a bind without the flag is refused. The block may last as
    long as the server: connections go to its listening socket, never to these."""
    for _ in range(attempts):
        with ExitStack() as held:
            first = held.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            sockets = [first]
            try:
                for offset in range(1, count):
                    sockets.append(held.enter_context(socket.socket()))
                    sockets[-1].bind(("127.0.0.1", port + offset))
            except (OSError, OverflowError):  # OverflowError: past port 65535
                continue  # a port after the first is in use: try another first port
            for sock in sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            yield port
            return
    raise AssertionError(f"no {count} consecutive free ports in {attempts} attempts")
