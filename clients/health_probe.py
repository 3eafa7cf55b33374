"""A container health check: exit 0 when the server answers grpc.health.v1 SERVING, else 1.

    python -m clients.health_probe [--address 127.0.0.1:8001] [--service ""] [--timeout-s 2]

The Dockerfiles' HEALTHCHECK runs it (Kubernetes uses its own native gRPC probe instead). The
default port is SLUICEWAY_PORT, as the server reads it, else 8001. Plaintext only, like
Kubernetes' gRPC probe; health checks need no token when auth is on.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.base import is_serving


def default_address(env: Mapping[str, str]) -> str:
    return f"127.0.0.1:{env.get('SLUICEWAY_PORT') or 8001}"


def check(address: str, service: str, timeout_s: float) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return is_serving(response)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clients.health_probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--address", default=default_address(os.environ))
    parser.add_argument("--service", default="", help='"" (default): the whole server')
    parser.add_argument("--timeout-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    serving = check(args.address, args.service, args.timeout_s)
    print(f"{args.address}: {'SERVING' if serving else 'NOT SERVING'}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
