"""Client-side failover under load: N servers, one AsyncClient balancing over them, one SIGKILLed.

    .venv/bin/python -m loadtest.failover [--servers 3] [--clients 8] [--before-s 5] [--after-s 5]

Starts N `sluiceway serve` processes (demo models) on free 127.0.0.1 ports, drives closed-loop mlp
calls through one `clients.AsyncClient` that knows every address, and `--before-s` seconds in
SIGKILLs the first server (no drain: its connections just die) or, with `--fault stop`, SIGSTOPs it
(it hangs with its connections open, as a node cut off by the network); the load goes on for
`--window-s` plus `--after-s` more. Each call carries `--deadline-s`; the client retries failed
attempts within it (`--attempt-timeout-s`: RetryPolicy.attempt_timeout_s). Reports p50/p99/max
latency of calls made before the fault (from the second second on: connections are open by
then), during the failover (in flight at the fault, or started within `--window-s` after it) and
after, calls lost (any error: must be 0), and the client's retries by status. Bounded: the run
ends at its duration or after `--max-requests` calls. Exits 1 when a call was lost. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from clients import AsyncClient, RetryPolicy
from clients.errors import SluicewayError
from loadtest.server import SpawnedServer

WARMUP_S = 1.0  # calls started this early open connections: not in the "before" figures


@dataclass(frozen=True)
class CountingRetry(RetryPolicy):
    """The client's retry policy, counting each retry it grants by status (the client has no hook)."""

    retries: Counter[str] = field(default_factory=Counter, compare=False)

    def delay(
        self,
        code: grpc.StatusCode,
        attempt: int,
        remaining_s: float,
        rng: random.Random,
        retry_after_s: float | None = None,
    ) -> float | None:
        wait = super().delay(code, attempt, remaining_s, rng, retry_after_s)
        if wait is not None:
            self.retries[code.name] += 1
        return wait


@dataclass(frozen=True, slots=True)
class Call:
    start: float
    end: float
    error: str | None


@dataclass(slots=True)
class Plan:
    servers: int
    clients: int
    before_s: float
    window_s: float
    after_s: float
    deadline_s: float
    max_requests: int
    fault: str = "kill"  # "kill": SIGKILL; "stop": SIGSTOP (hangs: nothing refuses, nothing answers)
    attempt_timeout_s: float | None = None


def percentiles(latencies_s: list[float]) -> dict[str, float | int | None]:
    if not latencies_s:
        return {"calls": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "calls": len(latencies_s),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def phases(calls: list[Call], warm_at: float, killed_at: float, window_s: float) -> dict[str, Any]:
    """Calls by phase: from `warm_at` to the kill; in flight at it or started within the window; after."""
    before = [c.end - c.start for c in calls if c.start >= warm_at and c.end < killed_at]
    during = [c.end - c.start for c in calls if c.end >= killed_at and c.start < killed_at + window_s]
    after = [c.end - c.start for c in calls if c.start >= killed_at + window_s]
    # Calls in flight at the kill (a share of them on the killed server): how long after the kill
    # the last one was answered bounds how long failing over took.
    caught = [c.end - killed_at for c in calls if c.start < killed_at <= c.end]
    return {
        "before": percentiles(before),
        "during": percentiles(during),
        "after": percentiles(after),
        "in_flight_at_kill": len(caught),
        "last_in_flight_answered_ms_after_kill": round(max(caught) * 1000.0, 2) if caught else None,
    }


async def drive(addresses: list[str], plan: Plan, kill: Any) -> tuple[list[Call], float, float, Counter[str]]:
    """Closed-loop calls from `plan.clients` tasks; `kill()` runs `before_s` in. The calls, when
    the warm-up (first connections) ended, when the kill was, and the client's retries."""
    policy = CountingRetry(max_attempts=10, attempt_timeout_s=plan.attempt_timeout_s)
    features = {"features": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}
    calls: list[Call] = []
    start = time.monotonic()
    end = start + plan.before_s + plan.window_s + plan.after_s
    killed_at = float("inf")

    async with AsyncClient(addresses, default_timeout_s=plan.deadline_s, retry=policy) as client:

        async def loop() -> None:
            while time.monotonic() < end and len(calls) < plan.max_requests:
                began = time.monotonic()
                error = None
                try:
                    await client.infer("mlp", features)
                except SluicewayError as exc:
                    error = exc.code.name
                calls.append(Call(began, time.monotonic(), error))

        tasks = [asyncio.create_task(loop()) for _ in range(plan.clients)]
        await asyncio.sleep(plan.before_s)  # the run's schedule, not a synchronisation
        kill()
        killed_at = time.monotonic()
        await asyncio.gather(*tasks)
    return calls, start + min(WARMUP_S, plan.before_s / 2), killed_at, policy.retries


def run(plan: Plan) -> dict[str, Any]:
    with ExitStack() as stack:
        servers = [stack.enter_context(SpawnedServer()) for _ in range(plan.servers)]
        victim = servers[0]

        def kill() -> None:
            assert victim.process is not None
            # SIGKILL: no drain, the kernel closes its sockets. SIGSTOP: they stay open, unanswered.
            victim.process.send_signal(signal.SIGKILL if plan.fault == "kill" else signal.SIGSTOP)

        try:
            calls, warm_at, killed_at, retries = asyncio.run(drive([s.address for s in servers], plan, kill))
        finally:
            if victim.process is not None:
                victim.process.kill()  # a stopped process would sit out SpawnedServer's SIGTERM
    lost = Counter(c.error for c in calls if c.error is not None)
    ended = max((c.end for c in calls), default=killed_at)
    return {
        "fault": plan.fault,
        "attempt_timeout_s": plan.attempt_timeout_s,
        "servers": plan.servers,
        "clients": plan.clients,
        "deadline_s": plan.deadline_s,
        "window_s": plan.window_s,
        "calls": len(calls),
        "calls_per_s": round(len(calls) / max(1e-9, ended - min(c.start for c in calls)), 1) if calls else 0,
        "lost": sum(lost.values()),
        "lost_by_status": dict(lost),
        "retries_by_status": dict(retries),
        **phases(calls, warm_at, killed_at, plan.window_s),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8, help="concurrent closed-loop calls")
    parser.add_argument("--before-s", type=float, default=5.0, help="load before the kill")
    parser.add_argument("--window-s", type=float, default=1.0, help="the failover phase after the kill")
    parser.add_argument("--after-s", type=float, default=5.0, help="load after the failover phase")
    parser.add_argument("--deadline-s", type=float, default=2.0, help="each call's deadline")
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--fault", choices=("kill", "stop"), default="kill", help="SIGKILL or SIGSTOP")
    parser.add_argument(
        "--attempt-timeout-s",
        type=float,
        default=None,
        help="the client's per-attempt timeout (default none)",
    )
    args = parser.parse_args(argv)
    if not 2 <= args.servers <= 8 or not 1 <= args.clients <= 256:
        parser.error("--servers must be 2..8 and --clients 1..256")
    plan = Plan(
        args.servers, args.clients, args.before_s, args.window_s, args.after_s, args.deadline_s,
        args.max_requests, args.fault, args.attempt_timeout_s,
    )  # fmt: skip
    result = run(plan)
    print(json.dumps(result, indent=2))
    return 1 if result["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
