"""Why the gRPC port could not be bound, said as an operator can act on it.

grpc core says only "Failed to bind to address" (or binds port 0), whether another process holds
the port or grpc refused the TLS key pair: a DSA or Ed448 key that Python's ssl module loads (the
settings' check passes) made the server exit 1 saying "cannot listen", the setting never named.
"""

from __future__ import annotations

import errno
import socket

from server.settings import ServerSettings
from server.settings_rules import unbracketed


class PortInUse(RuntimeError):
    """The port could not be bound: held by another process, or the host is not this machine's."""


class TlsRefused(PortInUse):
    """grpc refused the TLS certificate and key although the port is free: a setting's fault."""


def bind_failure(settings: ServerSettings, address: str, detail: str) -> PortInUse:
    """The error for a failed bind of `address`; `detail`: grpc's words, if any."""
    said = f": {detail}" if detail else " (port in use?)"
    if settings.tls_cert_file is not None and _free(settings.host, settings.port):
        return TlsRefused(
            f"invalid setting 'tls_cert_file': grpc refused {settings.tls_cert_file} and "
            f"{settings.tls_key_file} although {address} is free (grpc takes RSA and ECDSA keys; "
            "DSA and Ed448 are refused)"
        )
    # grpc says only "Failed to bind" and points at GRPC_VERBOSITY: why, where a plain socket can
    # tell (testers, session 55).
    refused = _bind_error(settings.host, settings.port)
    if isinstance(refused, socket.gaierror):
        return PortInUse(f"cannot listen on {address}: the host name does not resolve ({refused.strerror})")
    if refused is not None and refused.errno in _WHY:
        return PortInUse(f"cannot listen on {address}: {_WHY[refused.errno]}")
    return PortInUse(f"cannot listen on {address}{said}")


_WHY = {
    errno.EADDRINUSE: "the port is in use (another process holds it)",
    errno.EADDRNOTAVAIL: "the address is not one of this machine's",
    errno.EACCES: "a port below 1024 needs privileges this process does not have",
}


def _free(host: str, port: int) -> bool:
    """Whether a plain socket binds host:port now (port 0: any free one)."""
    return _bind_error(host, port) is None


def _bind_error(host: str, port: int) -> OSError | None:
    """Why a plain socket does not bind host:port now (None: it does)."""
    name = unbracketed(host)
    family = socket.AF_INET6 if ":" in name else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((name, port))
        return None
    except OSError as exc:
        return exc
