"""A container health check: exit 0 when the server answers grpc.health.v1 SERVING, else 1.

    python -m clients.health_probe [--address 127.0.0.1:8001] [--service ""] [--timeout-s 2]
        [--tls-ca CA.pem [--tls-cert CERT.pem --tls-key KEY.pem] [--tls-server-name NAME]]

The Dockerfiles' HEALTHCHECK runs it (Kubernetes uses its own native gRPC probe instead). The
default port is SLUICEWAY_PORT, as the server reads it, else 8001: a port given to the server as
`--port` is not seen here, so in the images the port is set with SLUICEWAY_PORT. Plaintext unless `--tls-ca`
(or HEALTH_PROBE_TLS_CA) names the CA that signed the server's certificate; with mutual TLS also
a client certificate and key (HEALTH_PROBE_TLS_CERT, HEALTH_PROBE_TLS_KEY). A server with TLS on
refuses plaintext, so without these the probe of a healthy TLS server failed; a client certificate
or a server name without the CA is refused. Health checks need no token when auth is on.

A mistake in the probe's own options (a flag, SLUICEWAY_PORT, a HEALTH_PROBE_* variable, a TLS file
that cannot be used) is one line naming it, on stderr, and exit 1 as well, never "NOT SERVING":
Docker reserves exit 2 of a HEALTHCHECK. `--address` is HOST:PORT (probe_options.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.base import check_timeout, is_serving
from clients.probe_options import check_address, credentials, default_address

USAGE_ERROR = 1  # the probe's own options are wrong; 0 is SERVING, 1 anything else (never 2)


def _channel(address: str, tls: grpc.ChannelCredentials | None, server_name: str | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, tls, options=options)


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


class _Parser(argparse.ArgumentParser):
    """A usage error is one line and exit 1, as every failure of a probe: Docker reserves exit 2 of
    a HEALTHCHECK ("do not use"), and Kubernetes takes any other code as a failed probe."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m clients.health_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--address", help="HOST:PORT (default: 127.0.0.1:SLUICEWAY_PORT, else 8001)")
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
        address = default_address(env) if args.address is None else check_address(args.address)
        tls = credentials(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    except ValueError as exc:  # the probe's own options: not the server's health
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    serving, why = check(address, args.service, args.timeout_s, tls, args.tls_server_name)
    print(f"{address}: SERVING" if serving else f"{address}: NOT SERVING ({why})")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
