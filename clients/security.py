"""TLS, mutual TLS and bearer tokens for the clients: credentials, channel arguments, metadata.

    tls = TlsOptions.from_files(ca="ca.pem")                                   # TLS
    tls = TlsOptions.from_files(ca="ca.pem", cert="client.pem", key="client.key")  # mutual TLS
    Client("inference.internal:8001", tls=tls, token=os.environ["SLUICEWAY_TOKEN"])

The token travels as `authorization: Bearer <token>` metadata on every call (streams and health
checks included). Metadata is used rather than gRPC call credentials so a token also reaches a
plaintext endpoint behind a TLS-terminating proxy; without TLS it is readable on the network.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from protos.regular_files import MAX_PEM_FILE_BYTES, read_or_refuse

AUTHORIZATION = "authorization"


def check_ca_pem(root: bytes, named: str) -> None:
    """ValueError naming `named` (a flag and its file) unless `root` holds PEM CA certificates
    OpenSSL loads: grpc had failed inside the channel, with its own lines and no flag named."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=root.decode("ascii"))
    except UnicodeDecodeError:
        raise ValueError(f"{named} is not PEM text (DER? grpc takes PEM)") from None
    except (ssl.SSLError, ValueError) as exc:  # ValueError: an empty file
        reason = getattr(exc, "reason", None) or (exc.args[-1] if exc.args else exc)
        raise ValueError(f"{named} holds no PEM CA certificate ({reason})") from None


def check_client_pair(cert: str | Path, key: str | Path, named: str) -> None:
    """ValueError naming `named` unless the files are a PEM certificate chain and its unencrypted
    key (by name: ssl takes no bytes here; read as regular files already)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:  # an encrypted key fails here, no pass phrase prompt on the terminal
        raise ValueError(
            f"{named} are not a PEM certificate chain and its unencrypted private key ({exc.reason or exc})"
        ) from None


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """PEM bytes for a TLS channel. root_certificates None: the system's trusted roots.

    certificate_chain and private_key (together) are the client's identity for mutual TLS;
    server_name overrides the name checked against the server's certificate (when connecting by
    an address the certificate does not name).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its private key, and a key its certificate")

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsOptions:
        """Read PEM files: the CA bundle that signed the server's certificate, and the client's
        certificate chain and key for mutual TLS. Each must be a regular file of at most
        MAX_PEM_FILE_BYTES (1 MiB), else ValueError: a FIFO would block the read for good."""

        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else read_or_refuse(path, MAX_PEM_FILE_BYTES, "a PEM file")

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_args(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata that carries `token` (none for None); refuses tokens that cannot be a header."""
    if token is None:
        return ()
    if not token or not all("!" <= char <= "~" for char in token):
        raise ValueError("a token must be non-empty visible ASCII (no spaces or line breaks)")
    return ((AUTHORIZATION, f"Bearer {token}"),)
