"""A step's common start is set once every load worker has connected, not a fixed delay ahead.

The fixed 0.5 s from sending the plans had been ~0.4 s of waiting in every step (the workers connect
in ms), and no guarantee on a machine slow enough to need more. Fake workers (threads on real pipes)
play the worker's side of the exchange: plan, "connected", the start time, the counts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from multiprocessing import Pipe
from multiprocessing.connection import Connection

import pytest

from loadtest.runner import WorkerPool, plan_step
from loadtest.scenario import Scenario, Step, Target
from loadtest.start import Stopped, common_start, wait_connected
from loadtest.stats import Counts

TARGET = Target("sluiceway", "127.0.0.1:1", "mlp")
SCENARIO = Scenario(targets=(TARGET,), steps=(Step("closed", 3),), processes=3, warmup_s=0.0, duration_s=0.01)


class FakeWorker(threading.Thread):
    """Receives a plan, says connected, waits for the start, answers with empty counts at the end of
    its window (as a worker does: it runs its load until then)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.connected_at = 0.0
        self.start_at: float | None = None

    def run(self) -> None:
        assert self.conn.poll(30), "no plan"
        plan = self.conn.recv()
        self.connected_at = time.monotonic()
        self.conn.send(("connected", None))
        assert self.conn.poll(30), "no start time"
        self.start_at = self.conn.recv()
        assert self.start_at is not None
        time.sleep(max(0.0, self.start_at + plan.warmup_s + plan.duration_s - time.monotonic()))
        self.conn.send(("ok", Counts()))


def test_the_common_start_follows_every_workers_connection() -> None:
    pool = WorkerPool(0)  # no processes: the fake workers hold the other ends of the pipes
    workers = []
    for _ in range(SCENARIO.processes):
        ours, theirs = Pipe()
        pool.conns.append(ours)
        workers.append(FakeWorker(theirs))
    for worker in workers:
        worker.start()
    edges: list[tuple[str, float]] = []
    plans = plan_step(SCENARIO, SCENARIO.steps[0], TARGET, (b"x",), seed=1, start_at=time.monotonic() + 60)
    counts = pool.run(plans, lambda edge: edges.append((edge, time.monotonic())))
    assert counts == [Counts()] * SCENARIO.processes
    for worker in workers:
        worker.join(30)
    starts = {worker.start_at for worker in workers}
    assert len(starts) == 1 and None not in starts, starts  # one common start, sent to each
    (start,) = starts
    assert start is not None and start > max(worker.connected_at for worker in workers)
    # The window's edges are read at the common start's window, not the plans' placeholder one.
    assert [edge for edge, _ in edges] == ["begin", "end"]
    assert edges[0][1] >= start + SCENARIO.warmup_s
    assert edges[0][1] < plans[0].start_at


def test_a_worker_that_fails_to_connect_fails_the_step_with_its_traceback() -> None:
    ours, theirs = Pipe()
    good_ours, good_theirs = Pipe()
    good_theirs.send(("connected", None))
    theirs.send(("error", "Traceback ...\nTimeoutError: channel not ready"))
    with pytest.raises(RuntimeError, match="channel not ready"):
        wait_connected([good_ours, ours])


def test_a_worker_told_none_instead_of_a_start_stops() -> None:
    ours, theirs = Pipe()
    ours.send(None)
    with pytest.raises(Stopped):
        asyncio.run(common_start(theirs))
    assert ours.recv() == ("connected", None)
