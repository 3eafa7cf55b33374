"""Channels to a target, plaintext or TLS, and the metadata that carries the bearer token.

Every connection the harness opens (metadata, statistics, each worker's load) comes from here,
so `--tls-*` and `--token` reach all of them. TLS and token handling is the Python client's
(clients/security.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from clients.security import TlsOptions, bearer_metadata
from loadtest.scenario import Security

Metadata = tuple[tuple[str, str], ...]


def tls_options(security: Security) -> TlsOptions | None:
    if not security.describe()["tls"]:
        return None
    return TlsOptions(
        security.root_certificates, security.certificate_chain, security.private_key, security.server_name
    )


def metadata(security: Security) -> Metadata | None:
    """Per-call metadata; None without a token (nothing to send)."""
    return bearer_metadata(security.token) or None


def channel(address: str, security: Security, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    tls = tls_options(security)
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.credentials(), options=[*options, *tls.channel_args()])


def aio_channel(
    address: str, security: Security, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    tls = tls_options(security)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.credentials(), options=[*options, *tls.channel_args()])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security (every target, every worker)")
    group.add_argument("--tls", action="store_true", help="TLS with the system's trusted roots")
    group.add_argument("--tls-ca", type=Path, help="PEM CA bundle for the server's certificate (implies TLS)")
    group.add_argument("--tls-cert", type=Path, help="client certificate chain, PEM, for mutual TLS")
    group.add_argument("--tls-key", type=Path, help="client private key, PEM, for mutual TLS")
    group.add_argument("--tls-server-name", help="name to check the server's certificate against")
    group.add_argument("--token", help="bearer token (visible in `ps`: prefer --token-file)")
    group.add_argument("--token-file", type=Path, help="file holding the bearer token")


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None


def security_from(args: argparse.Namespace) -> Security:
    """The Security the flags describe; ValueError naming the flag when they do not fit."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.token is not None and args.token_file is not None:
        raise ValueError("pass --token or --token-file, not both")
    token = args.token
    if args.token_file is not None:
        token = (_read(args.token_file, "--token-file") or b"").decode("utf-8", "replace").strip()
    try:
        bearer_metadata(token)
    except ValueError as exc:
        raise ValueError(f"--token{'-file' if args.token_file else ''}: {exc}") from None
    return Security(
        tls=args.tls or args.tls_server_name is not None,
        root_certificates=_read(args.tls_ca, "--tls-ca"),
        certificate_chain=_read(args.tls_cert, "--tls-cert"),
        private_key=_read(args.tls_key, "--tls-key"),
        server_name=args.tls_server_name,
        token=token,
    )
