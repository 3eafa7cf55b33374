"""The command-line flags for TLS and a bearer token, shared by every tool that dials a server
(the load-test harness, `sluiceway top`): the same names, meanings and refusals everywhere."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from clients.security import TlsOptions, bearer_metadata, check_ca_pem, check_client_pair
from protos.regular_files import MAX_PEM_FILE_BYTES, read_or_refuse

# --token-file holds one token (the server takes at most 4096 characters), a line or two.
MAX_TOKEN_FILE_BYTES = 64 << 10


def add_security_arguments(parser: argparse.ArgumentParser, title: str) -> None:
    group = parser.add_argument_group(title)
    group.add_argument("--tls", action="store_true", help="TLS with the system's trusted roots")
    group.add_argument("--tls-ca", type=Path, help="PEM CA bundle for the server's certificate (implies TLS)")
    group.add_argument("--tls-cert", type=Path, help="client certificate chain, PEM, for mutual TLS")
    group.add_argument("--tls-key", type=Path, help="client private key, PEM, for mutual TLS")
    group.add_argument("--tls-server-name", help="name to check the server's certificate against")
    group.add_argument("--token", help="bearer token (visible in `ps`: prefer --token-file)")
    group.add_argument("--token-file", type=Path, help="file holding the bearer token")


@dataclass(frozen=True)
class SecurityFlags:
    """What the flags say, files read: `tls` asked for by a flag, PEM bytes, and the token."""

    tls: bool
    root_certificates: bytes | None
    certificate_chain: bytes | None
    private_key: bytes | None
    server_name: str | None
    token: str | None

    def tls_options(self) -> TlsOptions | None:
        """None for plaintext; a CA or a client certificate implies TLS."""
        if not (self.tls or self.root_certificates or self.certificate_chain):
            return None
        return TlsOptions(self.root_certificates, self.certificate_chain, self.private_key, self.server_name)


def security_flags(args: argparse.Namespace) -> SecurityFlags:
    """The flags' values; ValueError naming the flag when they do not fit or a file cannot be read."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.token is not None and args.token_file is not None:
        raise ValueError("pass --token or --token-file, not both")
    token = args.token
    if args.token_file is not None:
        data = _read(args.token_file, "--token-file", MAX_TOKEN_FILE_BYTES) or b""
        token = data.decode("utf-8", "replace").strip()
    try:
        bearer_metadata(token)
    except ValueError as exc:
        raise ValueError(f"--token{'-file' if args.token_file else ''}: {exc}") from None
    root = _read(args.tls_ca, "--tls-ca")
    if root is not None:  # checked here: grpc had failed inside the channel, no flag named
        check_ca_pem(root, f"--tls-ca {args.tls_ca}")
    chain, key = _read(args.tls_cert, "--tls-cert"), _read(args.tls_key, "--tls-key")
    if chain is not None:
        check_client_pair(
            args.tls_cert, args.tls_key, f"--tls-cert {args.tls_cert} and --tls-key {args.tls_key}"
        )
    return SecurityFlags(
        tls=args.tls or args.tls_server_name is not None,
        root_certificates=root,
        certificate_chain=chain,
        private_key=key,
        server_name=args.tls_server_name,
        token=token,
    )


def _read(path: Path | None, flag: str, max_bytes: int = MAX_PEM_FILE_BYTES) -> bytes | None:
    """The file a flag names: a regular file of at most `max_bytes`, checked before it is read (a
    FIFO or /dev/zero as --token-file had hung `sluiceway top` until MemoryError)."""
    return None if path is None else read_or_refuse(path, max_bytes, flag, flag)
