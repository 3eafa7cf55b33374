"""Channels to a target, plaintext or TLS, and the metadata that carries the bearer token.

Every connection the harness opens (metadata, statistics, each worker's load) comes from here,
so `--tls-*` and `--token` reach all of them. TLS and token handling is the Python client's
(clients/security.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import grpc

from clients.security import TlsOptions, bearer_metadata
from clients.security_flags import add_security_arguments, security_flags
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
    add_security_arguments(parser, "security (every target, every worker)")


def security_from(args: argparse.Namespace) -> Security:
    """The Security the flags describe; ValueError naming the flag when they do not fit."""
    flags = security_flags(args)
    return Security(
        tls=flags.tls,
        root_certificates=flags.root_certificates,
        certificate_chain=flags.certificate_chain,
        private_key=flags.private_key,
        server_name=flags.server_name,
        token=flags.token,
    )
