"""TLS and mutual TLS: checking the PEM files at start-up, and binding the port with them.

The files are checked with the standard library's `ssl` (which parses them the way OpenSSL does
and knows whether a key belongs to a certificate), so a bad file stops the server with a message
naming the setting instead of failing in gRPC's handshake later. Certificates are read once, at
start-up: rotating them takes a restart.
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from protos.regular_files import MAX_PEM_FILE_BYTES, read_or_refuse

if TYPE_CHECKING:
    from server.settings import ServerSettings

log = logging.getLogger(__name__)


def _no_password() -> bytes:
    # An encrypted key fails here instead of OpenSSL prompting for a pass phrase on the terminal.
    return b""


def read_pem(path: Path) -> bytes:
    """The bytes of a PEM file the settings name: a regular file of at most MAX_PEM_FILE_BYTES,
    checked before it is read (a FIFO had hung start-up for good; /dev/zero was read until the
    SSL library gave up; a 200 MB file was read whole, twice)."""
    return read_or_refuse(path, MAX_PEM_FILE_BYTES, "a PEM file")


def check_key_pair(cert_file: Path, key_file: Path) -> None:
    """The server's certificate chain and its unencrypted private key, both PEM, matching."""
    read_pem(cert_file)  # ssl reads the files by name: each is checked first
    read_pem(key_file)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file, password=_no_password)
    except ssl.SSLError as exc:
        raise ValueError(
            f"{cert_file} and {key_file} are not a PEM certificate chain and its unencrypted private "
            f"key ({exc.reason or exc})"
        ) from None


def check_ca_file(path: Path) -> None:
    """PEM CA certificates (one or more), as trusted for client certificates."""
    read_pem(path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(f"{path} holds no PEM CA certificate ({exc.reason or exc})") from None


def validity_problem(cert_file: Path, now_s: float) -> str | None:
    """What is wrong with the dates of the file's first (leaf) certificate at `now_s`, or None. An
    expired certificate loads, and every client that checks it then fails the handshake with a
    message about the client's side only. Decoded by CPython's own (undocumented) helper; where it
    is missing, nothing is said."""
    decode = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None:
        return None
    try:
        cert = decode(str(cert_file))
        not_before = ssl.cert_time_to_seconds(cert["notBefore"])
        not_after = ssl.cert_time_to_seconds(cert["notAfter"])
    except (ssl.SSLError, OSError, ValueError, KeyError):
        return None
    if now_s > not_after:
        return f"expired on {cert['notAfter']}"
    if now_s < not_before:
        return f"is not valid before {cert['notBefore']}"
    return None


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings; None for plaintext. A client CA requires client certs."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    problem = validity_problem(settings.tls_cert_file, time.time())
    if problem is not None:
        log.warning(
            "tls_cert_file %s: the certificate %s: clients that check it refuse the handshake",
            settings.tls_cert_file,
            problem,
        )
    pair = (read_pem(settings.tls_key_file), read_pem(settings.tls_cert_file))
    client_ca = read_pem(settings.tls_client_ca_file) if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def bind_port(server: grpc.aio.Server, address: str, settings: ServerSettings) -> int:
    """Add the listening port, with TLS when configured; the bound port (0 when binding failed)."""
    credentials = server_credentials(settings)
    if credentials is None:
        port: int = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    return port
