"""The health probe's address and TLS files, checked before it dials (clients/health_probe.py).

A mistake in the probe's own options is a usage error naming the flag or variable, never
"NOT SERVING": a garbage CA or a client key of another certificate had been blamed on the server
(grpc fails the handshake it never started), a client certificate without a CA had probed in
plaintext without a word, `--address HOST` had dialed port 443 (grpc's default), and
SLUICEWAY_PORT=' 8001', which the server refuses, had been probed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import grpc

from clients.security import check_ca_pem, check_client_pair
from protos.regular_files import MAX_PEM_FILE_BYTES, read_or_refuse

DEFAULT_PORT = 8001  # the server's
# grpc target schemes passed through as they are (a HOST:PORT is checked).
GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
# What the server takes as a port (pydantic's integer text): a sign, digits, a fraction of zeros.
_SERVER_PORT = re.compile(r"\+?([0-9]+)(?:\.0+)?")
_BRACKETED = re.compile(r"\[([^\]]*)\]:(.*)")

# Each TLS option: its flag and its variable (the images set the variables).
NAMES = {
    "ca": "--tls-ca (HEALTH_PROBE_TLS_CA)",
    "cert": "--tls-cert (HEALTH_PROBE_TLS_CERT)",
    "key": "--tls-key (HEALTH_PROBE_TLS_KEY)",
    "server_name": "--tls-server-name (HEALTH_PROBE_TLS_SERVER_NAME)",
}


def default_address(env: Mapping[str, str]) -> str:
    """127.0.0.1 on SLUICEWAY_PORT as the server reads it, else 8001; ValueError for a value the
    server refuses, or 0 (the server then picks a free port, which the probe cannot know)."""
    text = env.get("SLUICEWAY_PORT")
    if text is None:
        return f"127.0.0.1:{DEFAULT_PORT}"
    match = _SERVER_PORT.fullmatch(text)
    if match is None or int(match.group(1)) > 65535:
        raise ValueError(
            f"SLUICEWAY_PORT {text!r} is not a port the server takes (1 to 65535, digits alone, no spaces)"
        )
    port = int(match.group(1))
    if port == 0:
        raise ValueError(
            f"SLUICEWAY_PORT {text!r} is 0: the server picks a free port, which the probe cannot know "
            "(pass --address)"
        )
    return f"127.0.0.1:{port}"


def check_address(address: str) -> str:
    """--address: HOST:PORT or [IPv6]:PORT (or a grpc target with its scheme, as it is);
    ValueError for anything else. The probe is this server's: no port is a mistake, not 443."""
    if not address.strip():
        raise ValueError("--address must not be empty (HOST:PORT, e.g. 127.0.0.1:8001)")
    if address.startswith(GRPC_SCHEMES):
        return address
    bracketed = _BRACKETED.fullmatch(address)
    if bracketed:
        host, colon, port = bracketed.group(1), ":", bracketed.group(2)
    elif address.startswith("["):  # [IPv6] without its port
        host, colon, port = address, "", ""
    else:
        host, colon, port = address.rpartition(":")
    if not colon:
        raise ValueError(f"--address {address!r} has no port: pass HOST:PORT (the server's default is 8001)")
    if ":" in host and not bracketed:
        raise ValueError(f"--address {address!r}: an IPv6 address goes in brackets, as [::1]:8001")
    if not host.strip() or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--address {address!r} is not HOST:PORT with a port of 1 to 65535")
    return address


def _pem(path: str, option: str) -> bytes:
    return read_or_refuse(path, MAX_PEM_FILE_BYTES, "a PEM file", NAMES[option])


def credentials(
    ca: str | None, cert: str | None, key: str | None, server_name: str | None = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files, checked with `ssl` (OpenSSL) before grpc sees them; None
    without any TLS option (plaintext). ValueError naming the flag and variable."""
    if bool(cert) != bool(key):
        raise ValueError(f"{NAMES['cert']} and {NAMES['key']} go together (a client certificate and its key)")
    if not ca:
        given = [f"{NAMES['cert']} and {NAMES['key']}"] if cert else []
        given += [NAMES["server_name"]] if server_name else []
        if given:  # else the probe speaks plaintext, and a TLS server refuses it
            raise ValueError(
                f"{' and '.join(given)} set without {NAMES['ca']}: TLS needs the CA of the server's "
                "certificate (the probe would have spoken plaintext)"
            )
        return None
    root = _pem(ca, "ca")
    check_ca_pem(root, f"{NAMES['ca']} {ca}")
    if not (cert and key):
        return grpc.ssl_channel_credentials(root)
    chain, private = _pem(cert, "cert"), _pem(key, "key")
    check_client_pair(cert, key, f"{NAMES['cert']} {cert} and {NAMES['key']} {key}")
    return grpc.ssl_channel_credentials(root, private, chain)
