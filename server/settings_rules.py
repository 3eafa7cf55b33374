"""Rules across server settings, checked when ServerSettings is built (its validators call them):
ports that collide, streams that could take every RPC slot, a host that cannot be bound (each had
passed the settings and failed later, named as something else or not at all), and the text of
`grpc_server_args`."""

from __future__ import annotations

import ipaddress
import re
import socket

GRPC_INT_MAX = 2**31 - 1  # grpc core takes its arguments as C ints
_GRPC_INT = re.compile(r"-?[0-9]+")  # a grpc argument's value: ASCII digits, an optional minus
# A host name's labels (RFC 1123): letters, digits and inner hyphens, at most 63 each.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def check_ports(port: int, metrics: bool, metrics_port: int, workers: int) -> None:
    """ValueError when the metrics ports (metrics_port + i for worker i) pass 65535 or take the
    gRPC port: the bind failed after start, exit 1, read as if another process held the port."""
    if not metrics or not metrics_port:
        return
    last = metrics_port + workers - 1
    if last > 65535:
        raise ValueError(
            f"metrics_port {metrics_port} with workers={workers}: worker i serves "
            f"metrics on metrics_port + i, and {last} is above 65535 (or use metrics_port 0)"
        )
    if port and metrics_port <= port <= last:
        taken = "metrics_port" if workers == 1 else f"metrics_port + i (ports {metrics_port}-{last})"
        raise ValueError(f"port {port} is also {taken}: the gRPC and metrics ports must differ")


def stream_cap(max_streams: int, max_concurrent_rpcs: int, given: bool) -> int:
    """max_streams, below max_concurrent_rpcs so open streams never take every RPC slot (health
    checks and unary calls were answered RESOURCE_EXHAUSTED, and a liveness probe failed): a given
    one at or above it is refused; the default is lowered to half of it."""
    if max_streams < max_concurrent_rpcs:
        return max_streams
    if given:
        raise ValueError(
            f"max_streams {max_streams} must be below max_concurrent_rpcs {max_concurrent_rpcs}: "
            "open streams would take every RPC slot (health checks, unary calls)"
        )
    if max_concurrent_rpcs < 2:
        raise ValueError("max_concurrent_rpcs must be at least 2: one stream would take the only RPC slot")
    return max_concurrent_rpcs // 2


def check_host(host: str) -> str:
    """`host` when it can name an address to bind: an IP address (IPv6 with or without brackets),
    or a host name (RFC 1123 labels, `_` allowed as resolvers do; a trailing dot dropped, which
    grpc's resolver refused). A dotted quad out of range ("999.1.1.1") or a bad name had failed in
    grpc's bind, exit 1, with a raw grpc line (not JSON under --log-format json), no setting named."""
    text = unbracketed(host)
    try:
        ipaddress.ip_address(text)
        return host
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if all(label.isdigit() for label in labels):  # an IPv4 shorthand (127.1) resolves, 999.1.1.1 not
        try:  # as its dotted quad: grpc's resolver refused the shorthand itself (a tester, session 55)
            return socket.inet_ntoa(socket.inet_aton(text.rstrip(".")))
        except OSError:
            raise ValueError(f"'{host[:80]}' is not an IP address or a host name") from None
    if ":" in text or len(text) > 253 or not all(_LABEL.fullmatch(x) for x in labels):
        raise ValueError(f"'{host[:80]}' is not an IP address or a host name")
    return text.rstrip(".")


def unbracketed(host: str) -> str:
    """`host` without the brackets of an IPv6 address ("[::1]" -> "::1"), as sockets take it."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def grpc_address(host: str, port: int) -> str:
    """host:port as grpc binds it: an IPv6 address in brackets ("::" alone had failed grpc's
    resolver, "Misformatted domain name", exit 1)."""
    bare = unbracketed(host)
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


# grpc arguments a setting of ours owns: given in grpc_server_args they replaced it (a receive
# limit of -5, grpc's "unlimited", went around max_message_bytes without a word).
OWNED_GRPC_ARGS = {
    "grpc.max_send_message_length": "max_message_bytes",
    "grpc.max_receive_message_length": "max_message_bytes",
    "grpc.so_reuseport": "workers",
}


def parse_grpc_args(text: str) -> list[tuple[str, int]]:
    """ "grpc.a=1,grpc.b=2" -> [("grpc.a", 1), ("grpc.b", 2)]; ValueError naming a bad entry, or
    one a setting owns (OWNED_GRPC_ARGS)."""
    pairs: list[tuple[str, int]] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = entry.partition("=")
        # ASCII digits only: str.isdigit() and int() had taken "=\u0661" (Arabic-Indic one) as 1.
        if not name.startswith("grpc.") or not _GRPC_INT.fullmatch(value.strip()):
            raise ValueError(f"'{entry[:80]}' is not grpc.<argument>=<integer>")
        if len(value.strip().lstrip("-")) > 12:  # Python's int() of 4,300+ digits had said its own limit
            raise ValueError(f"'{name.strip()[:80]}': grpc takes -2^31 to 2^31-1")
        number = int(value)
        if not -GRPC_INT_MAX - 1 <= number <= GRPC_INT_MAX:  # a C int: grpc's OverflowError at start
            raise ValueError(f"'{entry}': grpc takes -2^31 to 2^31-1")
        owner = OWNED_GRPC_ARGS.get(name.strip())
        if owner is not None:
            raise ValueError(f"'{name.strip()}' is set by the setting {owner}: use that")
        if any(seen == name.strip() for seen, _ in pairs):  # the last one had silently won
            raise ValueError(f"'{name.strip()}' is given twice")
        pairs.append((name.strip(), number))
    return pairs
