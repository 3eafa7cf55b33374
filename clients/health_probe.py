"""A container health check: exit 0 when the server answers grpc.health.v1 SERVING, else 1.

    python -m clients.health_probe [--address 127.0.0.1:8001] [--service ""] [--timeout-s 2]
        [--tls-ca CA.pem [--tls-cert CERT.pem --tls-key KEY.pem] [--tls-server-name NAME]]

The Dockerfiles' HEALTHCHECK runs it (Kubernetes uses its own native gRPC probe instead). The
default port is SLUICEWAY_PORT, as the server reads it, else 8001: a port given to the server as
`--port` is not seen here, so in the images the port is set with SLUICEWAY_PORT. Plaintext unless `--tls-ca`
(or HEALTH_PROBE_TLS_CA) names the CA that signed the server's certificate; with mutual TLS also
a client certificate and key (HEALTH_PROBE_TLS_CERT, HEALTH_PROBE_TLS_KEY). A server with TLS on
refuses plaintext, so without these the probe of a healthy TLS server failed. Health checks need
no token when auth is on.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.base import check_timeout, is_serving


def default_address(env: Mapping[str, str]) -> str:
    return f"127.0.0.1:{env.get('SLUICEWAY_PORT') or 8001}"


def _channel(address: str, tls: grpc.ChannelCredentials | None, server_name: str | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, tls, options=options)


def credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files (None without a CA: plaintext)."""
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together (a client certificate and its key)")
    if not ca:
        return None
    with open(ca, "rb") as f:
        root = f.read()
    chain = private = None
    if cert and key:
        with open(cert, "rb") as f:
            chain = f.read()
        with open(key, "rb") as f:
            private = f.read()
    return grpc.ssl_channel_credentials(root, private, chain)


def check(
    address: str,
    service: str,
    timeout_s: float,
    tls: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> tuple[bool, str]:
    """Whether it serves, and why not (the status it answered, or the call's error): the probe had
    said only "NOT SERVING" for an unreachable server and an unknown service alike."""
    with _channel(address, tls, server_name) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
            if code == grpc.StatusCode.NOT_FOUND and not details:  # grpc's health: no such service
                details = f"the server has no health service {service!r}"
            return False, f"{code.name if code is not None else 'ERROR'}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return is_serving(response), status


def _timeout_arg(text: str) -> float:
    """--timeout-s: 0 or less had probed anyway and printed NOT SERVING, blaming the server."""
    try:
        return check_timeout(float(text), "--timeout-s")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--timeout-s ")) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clients.health_probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--address", default=default_address(os.environ))
    parser.add_argument("--service", default="", help='"" (default): the whole server')
    parser.add_argument("--timeout-s", type=_timeout_arg, default=2.0)
    env = os.environ
    parser.add_argument(
        "--tls-ca", default=env.get("HEALTH_PROBE_TLS_CA"), help="CA of the server's certificate"
    )
    parser.add_argument(
        "--tls-cert", default=env.get("HEALTH_PROBE_TLS_CERT"), help="client certificate (mTLS)"
    )
    parser.add_argument("--tls-key", default=env.get("HEALTH_PROBE_TLS_KEY"), help="client key (mTLS)")
    parser.add_argument("--tls-server-name", default=env.get("HEALTH_PROBE_TLS_SERVER_NAME"))
    args = parser.parse_args(argv)
    try:
        tls = credentials(args.tls_ca, args.tls_cert, args.tls_key)
    except OSError as exc:
        print(f"{args.address}: NOT SERVING (cannot read {exc.filename}: {exc.strerror})")
        return 1
    except ValueError as exc:
        print(f"{args.address}: NOT SERVING ({exc})")
        return 1
    serving, why = check(args.address, args.service, args.timeout_s, tls, args.tls_server_name)
    print(f"{args.address}: SERVING" if serving else f"{args.address}: NOT SERVING ({why})")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
