"""Orchestration: worker processes, steps x rounds x targets interleaved, server statistics deltas.

The coordinator (this process) only plans, waits and reads ModelStatistics at the window edges;
the load comes from `processes` spawned workers (loadtest/worker.py) that live for the whole run,
so their start-up cost is paid once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import TracebackType

import grpc

from loadtest import channels, inputs, server_metrics
from loadtest.scenario import (
    PLAINTEXT,
    Scenario,
    Security,
    Step,
    Target,
    WorkerPlan,
    drain_s_for,
    split_evenly,
)
from loadtest.start import (
    START_MARGIN_S,
    ProcessExited,
    TargetUnreachable,
    receive,
    send_start,
    wait_connected,
)
from loadtest.stats import Counts, merge_counts
from loadtest.worker import worker_main
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

STATS_TIMEOUT_S = 2.0
# gRPC core's older client I/O path polls sockets in the caller's threads instead of handing each
# event to event-engine threads: about 15% less client CPU and ~0.1 ms less per round trip, which
# matters on a 2-core machine shared with the server. Workers get it unless GRPC_EXPERIMENTS is set.
WORKER_GRPC_EXPERIMENTS = "-event_engine_client"
Tick = Callable[[], None]


@dataclass(frozen=True)
class ServerTotals:
    """Cumulative ModelStatistics counters of one model (all versions); deltas of two are a window's."""

    inferences: int
    executions: int
    queue_count: int
    queue_ns: int
    metrics: server_metrics.Figures = ()  # from the server's /metrics, when the target has one

    def __sub__(self, other: ServerTotals) -> ServerTotals:
        return ServerTotals(
            self.inferences - other.inferences,
            self.executions - other.executions,
            self.queue_count - other.queue_count,
            self.queue_ns - other.queue_ns,
            server_metrics.difference(self.metrics, other.metrics),
        )


@dataclass(frozen=True)
class RunRecord:
    """One step against one target in one round."""

    step_index: int
    step: Step
    target: Target
    round: int
    counts: Counts
    duration_s: float
    processes: int
    server: ServerTotals | None
    connections: int = 1  # the load's connections to the target, every process's


class LoadWorkerFailed(RuntimeError):
    """A load worker exited or failed mid-run: the run ends, keeping the steps measured before."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail  # the worker's traceback, where it sent one


class WorkerPool:
    """`size` spawned worker processes, each fed plans over its own pipe (one plan per worker)."""

    def __init__(self, size: int, tick: Tick = lambda: None) -> None:
        context = multiprocessing.get_context("spawn")
        self.tick = tick
        self.conns: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        with _worker_environment():
            for _ in range(size):
                parent, child = context.Pipe()
                process = context.Process(target=worker_main, args=(child,), daemon=True)
                process.start()
                child.close()
                self.conns.append(parent)
                self.processes.append(process)
        try:
            for index, conn in enumerate(self.conns):
                if not conn.poll(60):
                    raise RuntimeError("a load worker did not start within 60 s")
                try:
                    receive(conn, index)
                except ProcessExited as exc:
                    raise LoadWorkerFailed(f"load worker {index + 1} {self.exited(index)} at start") from exc
        except BaseException:
            self.close(hurry=True)  # no `with` holds the pool yet: its other workers are stopped here
            raise

    def run(
        self, plans: Sequence[WorkerPlan], at_window_edge: Callable[[str], None], during: str = "a step"
    ) -> list[Counts]:
        """Send one plan per worker; call at_window_edge('begin'/'end') on time; return their Counts.
        A worker that exits or fails raises LoadWorkerFailed naming it and `during`."""
        try:
            return self._run(plans, at_window_edge)
        except ProcessExited as exc:
            ended = self.exited(exc.index)
            raise LoadWorkerFailed(f"load worker {exc.index + 1} {ended} during {during}") from exc
        except LoadWorkerFailed as exc:
            raise LoadWorkerFailed(f"{exc} during {during}", exc.detail) from exc
        except TargetUnreachable as exc:
            raise TargetUnreachable(f"{exc} before {during}") from exc

    def _run(self, plans: Sequence[WorkerPlan], at_window_edge: Callable[[str], None]) -> list[Counts]:
        conns = self.conns[: len(plans)]
        for conn, plan in zip(conns, plans, strict=True):
            conn.send(plan)
        # Each worker connects, then all start together (loadtest/start.py): no fixed delay.
        try:
            wait_connected(conns, self.tick)
        except (ProcessExited, TargetUnreachable):
            raise
        except RuntimeError as exc:  # a worker's traceback: it failed before its load began
            raise LoadWorkerFailed("a load worker failed to connect", str(exc)) from exc
        start_at = send_start(conns)
        begin, end = dataclasses.replace(plans[0], start_at=start_at).window
        results: dict[int, Counts] = {}
        self._wait(conns, results, begin)
        at_window_edge("begin")
        self._wait(conns, results, end)
        at_window_edge("end")
        self._wait(conns, results, end + plans[0].drain_s + 30.0, until_all=True)
        if len(results) < len(conns):
            raise RuntimeError("load workers did not report within the drain time")
        return [results[i] for i in range(len(conns))]

    def _wait(
        self, conns: list[Connection], results: dict[int, Counts], until: float, until_all: bool = False
    ) -> None:
        while len(results) < len(conns):
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            pending = [conn for i, conn in enumerate(conns) if i not in results]
            # A short timeout keeps the progress bar moving while the workers run.
            ready = wait(pending, timeout=min(0.25, remaining))
            for index, conn in enumerate(conns):
                if conn in ready:
                    kind, value = receive(conn, index)
                    if kind == "error":
                        last = value.strip().splitlines()[-1] if value.strip() else "no traceback"
                        raise LoadWorkerFailed(f"load worker {index + 1} failed ({last})", value)
                    results[index] = value
            self.tick()
            if not until_all and time.monotonic() >= until:
                return

    def exited(self, index: int) -> str:
        """How worker `index` ended, for a message: 'exited (signal 9, SIGKILL)'."""
        if index >= len(self.processes):
            return "closed its pipe"
        process = self.processes[index]
        process.join(2)  # its pipe closed as it died: the exit status follows at once
        code = process.exitcode
        if code is None:
            return "closed its pipe"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"exited (signal {-code}, {signal.Signals(-code).name})"
            return f"exited (signal {-code})"
        return f"exited (exit status {code})"

    def close(self, hurry: bool = False) -> None:
        """Each worker gets None and exits; `hurry` (the run failed or was interrupted): the ones
        still running a plan are stopped at once, not after their window and 5 s."""
        for conn, process in zip(self.conns, self.processes, strict=True):
            with contextlib.suppress(OSError):  # a worker that died has closed its pipe
                conn.send(None)
            if hurry and process.is_alive():
                process.terminate()
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(hurry=exc is not None)


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """GRPC_EXPERIMENTS for spawned workers only (they inherit os.environ as it is at start)."""
    if "GRPC_EXPERIMENTS" in os.environ:
        yield
        return
    os.environ["GRPC_EXPERIMENTS"] = WORKER_GRPC_EXPERIMENTS
    try:
        yield
    finally:
        del os.environ["GRPC_EXPERIMENTS"]


class StatsReader:
    """ModelStatistics of each target's model; None where a target does not serve them."""

    def __init__(self, targets: Sequence[Target], security: Security = PLAINTEXT) -> None:
        self.channels = {t.name: channels.channel(t.address, security) for t in targets}
        self.metadata = channels.metadata(security)

    def totals(self, target: Target) -> ServerTotals | None:
        stub = pb_grpc.GRPCInferenceServiceStub(self.channels[target.name])  # type: ignore[no-untyped-call]
        try:
            response = stub.ModelStatistics(
                pb.ModelStatisticsRequest(name=target.model), timeout=STATS_TIMEOUT_S, metadata=self.metadata
            )
        except grpc.RpcError:
            return None
        stats = [s for s in response.model_stats if s.name == target.model]
        if not stats:
            return None
        return ServerTotals(
            inferences=sum(s.inference_count for s in stats),
            executions=sum(s.execution_count for s in stats),
            queue_count=sum(s.inference_stats.queue.count for s in stats),
            queue_ns=sum(s.inference_stats.queue.ns for s in stats),
            metrics=server_metrics.read(target.metrics_url, target.model) if target.metrics_url else (),
        )

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def plan_step(
    scenario: Scenario, step: Step, target: Target, payloads: tuple[bytes, ...], seed: int, start_at: float
) -> list[WorkerPlan]:
    """Split one step over the workers: concurrency and streams in whole shares, rate evenly."""
    deadline_s = scenario.deadline_ms / 1000 if scenario.deadline_ms else None
    if step.mode == "open":
        count = max(1, min(scenario.processes, int(step.level)))
        shares: list[int] = [1] * count
        rate = step.level / count
    else:
        shares = split_evenly(int(step.level), scenario.processes)
        rate = scenario.fps
    return [
        WorkerPlan(
            address=target.address,
            mode=step.mode,
            concurrency=share,
            rate=rate,
            arrival=scenario.arrival,
            # Constant arrivals: process i sends at i/level + k*count/level, one even sequence.
            phase_s=index / step.level if step.mode == "open" else 0.0,
            payloads=payloads,
            deadline_s=deadline_s,
            start_at=start_at,
            warmup_s=scenario.warmup_s,
            duration_s=scenario.duration_s,
            drain_s=drain_s_for(deadline_s),
            max_requests=max(1, scenario.max_requests // len(shares)),
            max_in_flight=scenario.max_in_flight,
            seed=seed * 7919 + index,
            security=scenario.security,
            # At most one a closed-loop user or a stream (none idle); open-loop requests rotate.
            connections=max(
                1, scenario.connections if step.mode == "open" else min(scenario.connections, share)
            ),
        )
        for index, share in enumerate(shares)
    ]


def run_scenario(
    scenario: Scenario, tick: Tick = lambda: None, on_record: Callable[[RunRecord], None] = lambda r: None
) -> list[RunRecord]:
    """Every step, `rounds` times, against every target in turn (A/B/A/B), so drift on a noisy
    machine hits all targets alike."""
    # Every target's and mode's inputs before any load: one its model cannot take (a --shape that
    # does not fit) is refused at the start, not after the steps before it were measured.
    payloads = {
        (target.name, mode): inputs.payloads_for(target, scenario, mode)
        for mode in dict.fromkeys(step.mode for step in scenario.steps)
        for target in scenario.targets
    }
    records: list[RunRecord] = []
    stats = StatsReader(scenario.targets, scenario.security)
    rng = random.Random(scenario.seed)
    try:
        with WorkerPool(scenario.processes, tick) as pool:
            for step_index, step in enumerate(scenario.steps):
                for round_index in range(scenario.rounds):
                    for target in scenario.targets:
                        record = _run_one(
                            pool, stats, scenario, step_index, step, target, round_index,
                            payloads[target.name, step.mode], rng.randrange(1 << 30),
                        )  # fmt: skip
                        records.append(record)
                        on_record(record)
    finally:
        stats.close()
    return records


def _run_one(
    pool: WorkerPool,
    stats: StatsReader,
    scenario: Scenario,
    step_index: int,
    step: Step,
    target: Target,
    round_index: int,
    payloads: tuple[bytes, ...],
    seed: int,
) -> RunRecord:
    # start_at is a placeholder: the pool sets the common start once every worker is connected.
    plans = plan_step(scenario, step, target, payloads, seed, time.monotonic() + START_MARGIN_S)
    edges: dict[str, ServerTotals | None] = {}

    def at_edge(edge: str) -> None:
        edges[edge] = stats.totals(target)

    where = [step.label, *[target.name] * (len(scenario.targets) > 1)]
    where += [f"r{round_index}"] * (scenario.rounds > 1)
    during = f"step {step_index + 1} ({', '.join(where)})"
    parts = pool.run(plans, at_edge, during)
    before, after = edges.get("begin"), edges.get("end")
    counts = merge_counts(parts)
    return RunRecord(
        step_index=step_index,
        step=step,
        target=target,
        round=round_index,
        counts=counts,
        # --max-requests may end the load before the window: rates over the time it took.
        duration_s=counts.stopped_after_s or scenario.duration_s,
        processes=len(plans),
        server=after - before if before is not None and after is not None else None,
        connections=sum(plan.connections for plan in plans),
    )
