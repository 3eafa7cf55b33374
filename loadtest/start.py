"""The common start of a step's load processes: each connects its channels and says so; the
coordinator then sends every one the same start time, a short margin ahead.

A fixed delay from sending the plans (0.5 s for the load steps, 3 s for the real-time ones, which
also spawn their processes) had been mostly waiting: the processes connect in milliseconds, and a
machine slow enough to need more got no more. Worker side: `common_start`; coordinator side:
`wait_connected`, then `send_start`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

# Time for the start message to reach each process's loop once all are connected.
START_MARGIN_S = 0.1
CONNECT_TIMEOUT_S = 60.0
# How long the target may take to accept a connection: before the first step (metadata) and by
# each worker before each step; past it the run ends target_unreachable (exit 3).
CONNECT_WAIT_S = 5.0
CONNECTED = "connected"
UNREACHABLE = "unreachable"


class Stopped(Exception):
    """The coordinator sent None instead of a start time: the run is over."""


class TargetUnreachable(RuntimeError):
    """A load process could not connect to the target (a server that died between steps)."""


class ProcessExited(RuntimeError):
    """A load process's pipe closed without a word: it exited (killed, crashed) mid-run."""

    def __init__(self, index: int) -> None:
        super().__init__(f"load process {index + 1} exited")
        self.index = index  # 0-based, in the coordinator's list of pipes


def receive(conn: Connection, index: int) -> Any:
    """Coordinator side: the next message from process `index`; ProcessExited where it has gone
    (a bare EOFError traceback had been all an operator saw of a killed worker)."""
    try:
        return conn.recv()
    except (EOFError, ConnectionResetError) as err:
        raise ProcessExited(index) from err


async def common_start(conn: Connection) -> float:
    """Worker side, once its channels are connected: say so and wait for the common start."""
    conn.send((CONNECTED, None))
    start_at: float | None = await asyncio.to_thread(conn.recv)
    if start_at is None:
        raise Stopped
    return start_at


def wait_connected(
    conns: Sequence[Connection], tick: Callable[[], None] = lambda: None, timeout_s: float = CONNECT_TIMEOUT_S
) -> None:
    """Coordinator side: until every process has said it is connected; a process that failed
    instead (("error", traceback)) or silence past `timeout_s` raises RuntimeError, one that exited
    ProcessExited, one that could not reach the target TargetUnreachable."""
    pending = list(conns)
    give_up = time.monotonic() + timeout_s
    while pending:
        remaining = give_up - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"load processes did not connect within {timeout_s:.0f} s")
        ready = wait(pending, timeout=min(0.25, remaining))  # a short timeout keeps `tick` going
        for index, conn in enumerate(conns):
            if conn not in pending or conn not in ready:
                continue
            kind, value = receive(conn, index)
            if kind == UNREACHABLE:
                raise TargetUnreachable(value)
            if kind != CONNECTED:
                raise RuntimeError(f"a load process failed:\n{value}")
            pending.remove(conn)
        tick()


def send_start(conns: Sequence[Connection]) -> float:
    """The common start, START_MARGIN_S from now, sent to every process; returned."""
    start_at = time.monotonic() + START_MARGIN_S
    for conn in conns:
        conn.send(start_at)
    return start_at
