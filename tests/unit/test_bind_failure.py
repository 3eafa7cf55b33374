"""Why the gRPC port was not bound, said as an operator can act on it (server/bind_failure.py):
grpc says only "Failed to bind ... set GRPC_VERBOSITY=debug" (testers, session 55)."""

from __future__ import annotations

import errno
import socket

import pytest

from server import bind_failure as module
from server.bind_failure import bind_failure
from server.settings import ServerSettings

GRPC = "Failed to bind to address 127.0.0.1:8001; set GRPC_VERBOSITY=debug environment variable"


def test_a_port_another_process_holds_is_said_so() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        said = str(bind_failure(ServerSettings(host="127.0.0.1", port=port), f"127.0.0.1:{port}", GRPC))
    assert said == f"cannot listen on 127.0.0.1:{port}: the port is in use (another process holds it)"


NOT_MINE = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
NO_RIGHT = OSError(errno.EACCES, "Permission denied")
NO_NAME = socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (NOT_MINE, "the address is not one of this machine's"),
        (NO_RIGHT, "a port below 1024 needs privileges this process does not have"),
        (NO_NAME, "the host name does not resolve (Name or service not known)"),
        (OSError(errno.EPERM, "Operation not permitted"), GRPC),  # not known here: grpc's words
        (None, GRPC),  # a plain socket binds: grpc's words
    ],
)
def test_why_a_plain_socket_could_not_bind(
    monkeypatch: pytest.MonkeyPatch, error: OSError | None, why: str
) -> None:
    monkeypatch.setattr(module, "_bind_error", lambda host, port: error)
    said = str(bind_failure(ServerSettings(host="127.0.0.1", port=8001), "127.0.0.1:8001", GRPC))
    assert said == f"cannot listen on 127.0.0.1:8001: {why}"
