"""`sluiceway rollout status|set|promote|rollback MODEL`: a running server's rollout, over its
admin service (sluiceway.admin.v1.Admin), shown as rich tables.

The token (the `admin` scope, when the server checks tokens) comes from --token or
SLUICEWAY_TOKEN; --ca-file switches to TLS with that CA, and --tls-cert/--tls-key (the flags of
`sluiceway top` and the load-test harness) present a client certificate to a server that asks
for one (mutual TLS).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from clients.security import bearer_metadata
from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from server.security.tls import check_ca_file, check_key_pair, read_pem

if TYPE_CHECKING:  # rich is imported when a command runs: `sluiceway serve` never loads it
    from rich.console import Console

TIMEOUT_S = 10.0  # every admin call has a deadline


def add_rollout_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = commands.add_parser("rollout", help="a running server's traffic weights, shadow and rollbacks")
    actions = rollout.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", help="the model's name")
    common.add_argument("--target", default="127.0.0.1:8001", help="the server's gRPC HOST:PORT")
    common.add_argument("--token", help="bearer token with the admin scope (default: $SLUICEWAY_TOKEN)")
    common.add_argument("--ca-file", type=Path, help="PEM CA to verify the server's TLS certificate")
    common.add_argument("--tls-cert", type=Path, help="client certificate chain, PEM, for mutual TLS")
    common.add_argument("--tls-key", type=Path, help="client private key, PEM, for mutual TLS")
    actions.add_parser("status", parents=[common], help="weights, per-version figures, shadow, rollbacks")
    set_ = actions.add_parser("set", parents=[common], help="replace the weights, e.g. 1:90,2:10")
    set_.add_argument("weights", help="VERSION:WEIGHT pairs; versions not named get 0")
    promote = actions.add_parser("promote", parents=[common], help="one version takes every request")
    promote.add_argument("version", type=_version)
    rollback = actions.add_parser(
        "rollback", parents=[common], help="a version (default: every candidate) out"
    )
    rollback.add_argument("version", type=_version, nargs="?", default=0)
    rollback.add_argument("--reason", default="", help="recorded with the rollback event")


def _version(text: str) -> int:
    """A version number as the admin RPCs take it (int64): 2**63 ended in a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version number: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"version {text} is out of range (0 to 2**63-1)")
    return value


def run_rollout(args: argparse.Namespace) -> int:
    from rich.console import Console

    from server.models.traffic import parse_weights

    console = Console(width=max(Console().width, 100))
    try:
        metadata = _metadata(args.token)
        credentials = _credentials(args.ca_file, args.tls_cert, args.tls_key)
    except ValueError as exc:
        print(f"sluiceway rollout: {exc}", file=sys.stderr)
        return 2
    try:
        with _channel(args.target, credentials) as channel:
            stub = apb_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
            if args.action == "status":
                answer = stub.RolloutStatus(
                    apb.RolloutStatusRequest(model=args.model), timeout=TIMEOUT_S, metadata=metadata
                )
            elif args.action == "set":
                try:
                    weights = parse_weights(args.weights)
                except ValueError as exc:
                    print(f"sluiceway rollout: weights {exc}", file=sys.stderr)
                    return 2
                answer = stub.SetWeights(
                    apb.SetWeightsRequest(model=args.model, weights=weights),
                    timeout=TIMEOUT_S,
                    metadata=metadata,
                )
            elif args.action == "promote":
                answer = stub.Promote(
                    apb.PromoteRequest(model=args.model, version=args.version),
                    timeout=TIMEOUT_S,
                    metadata=metadata,
                )
            else:
                request = apb.RollbackRequest(model=args.model, version=args.version, reason=args.reason)
                answer = stub.Rollback(request, timeout=TIMEOUT_S, metadata=metadata)
    except grpc.RpcError as err:
        print(f"sluiceway rollout {args.action}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    render(answer, console)
    if args.action != "status" and answer.worker:  # under --workers: one worker answered
        from server.models.rollout_share import CHECK_S

        console.print(
            f"worker {answer.worker} applied it; the other workers serving the same model files "
            f"apply it within {CHECK_S:g} s"
        )
    return 0


def _metadata(flag_token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The token's metadata, checked here: a line break had made grpc answer "INTERNAL: Invalid
    metadata" on the client's side."""
    token = flag_token or os.environ.get("SLUICEWAY_TOKEN")
    try:
        return bearer_metadata(token or None) or None
    except ValueError as exc:
        raise ValueError(f"{'--token' if flag_token else 'SLUICEWAY_TOKEN'}: {exc}") from None


def _credentials(
    ca_file: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials for --ca-file and --tls-cert/--tls-key (None: plaintext), the files checked
    first: a missing file or a directory had ended in a traceback, and a file without a PEM
    certificate in grpc's own "Cannot load server root certificates" line, then UNAVAILABLE. A
    client certificate without --ca-file checks the server against the system's roots."""
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if ca_file is None and cert is None:
        return None
    root = None if ca_file is None else _checked(ca_file, "--ca-file", lambda: check_ca_file(ca_file))
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root)
    flag = f"--tls-cert {cert} and --tls-key {key}"
    _checked(cert, flag, lambda: check_key_pair(cert, key))  # one chain and its unencrypted key
    chain = _checked(cert, "--tls-cert", lambda: None)
    private = _checked(key, "--tls-key", lambda: None)
    return grpc.ssl_channel_credentials(root, private_key=private, certificate_chain=chain)


def _checked(path: Path, flag: str, check: Callable[[], None]) -> bytes:
    """`path`'s bytes after `check` (the server's own checks of such files, with ssl), each
    refusal a ValueError naming `flag`; read bounded: a FIFO cannot hang it."""
    try:
        check()
        return read_pem(path)
    except (ValueError, OSError) as exc:
        why = exc if isinstance(exc, ValueError) else f"cannot read {path}: {exc.strerror or exc}"
        raise ValueError(f"{flag}: {why}") from None


def _channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials)


def render(status: apb.RolloutStatusResponse, console: Console) -> None:
    """Print a model's rollout: a table of versions, then the shadow comparison and events."""
    from rich.table import Table

    source = status.source or "none (the newest version takes every request)"
    sticky = f", sticky on '{status.sticky_key}'" if status.sticky_key else ", by request id"
    table = Table(title=f"{status.model}: weights from {source}{sticky}", title_justify="left")
    for column in (
        "version",
        "role",
        "weight",
        "share",
        "requests",
        "errors",
        "error rate",
        "p50 ms",
        "p99 ms",
    ):
        table.add_column(column, justify="left" if column == "role" else "right")
    for v in status.versions:
        role = v.role + (" (rolled back)" if v.rolled_back else "")
        table.add_row(
            str(v.version), role, str(v.weight), f"{v.share:.1%}", str(v.requests), str(v.errors),
            f"{v.error_rate:.2%}", _ms(v.p50_ms), _ms(v.p99_ms),
        )  # fmt: skip
    console.print(table)
    if status.has_shadow:
        s = status.shadow
        agree = f"{s.argmax_agree / s.argmax_rows:.2%}" if s.argmax_rows else "-"
        console.print(
            f"shadow: version {s.version} at {s.fraction:g}{' (stopped)' if not s.fraction else ''}: "
            f"mirrored {s.mirrored}, compared {s.compared}, "
            f"errors {s.errors}, shed {s.shed}, dropped {s.dropped}; max abs diff {s.max_abs_diff:.4g}, "
            f"argmax agreement {agree} of {s.argmax_rows} rows; p50/p99 ms shadow "
            f"{_ms(s.shadow_p50_ms)}/{_ms(s.shadow_p99_ms)} vs stable "
            f"{_ms(s.stable_p50_ms)}/{_ms(s.stable_p99_ms)}"
        )
    r = status.rollback
    if r.enabled:
        console.print(
            f"automatic rollback: windows of {r.window_s:g} s with >= {r.min_requests} requests each; "
            f"error margin {r.error_margin:g}, p99 margin {r.latency_margin:g}"
        )
    else:
        console.print("automatic rollback: off")
    # Under --workers one worker answers, with its own figures (rollbacks are followed by all).
    worker = f" (answered by worker {status.worker})" if status.worker else ""
    console.print(f"rollbacks since start: {status.rollbacks}{worker}")
    for e in status.events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.unix_time))
        console.print(f"  {when} version {e.version} rolled back ({e.trigger}): {e.reason}")


def _ms(value: float) -> str:
    if math.isinf(value):
        return "> 1000"
    return "-" if value == 0 else f"<= {value:g}"
