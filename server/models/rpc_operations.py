"""Loads and unloads by RPC (RepositoryModelLoad/Unload), each run to its end in a task of its own
even when its caller goes (a deadline, a disconnect), as Triton does; the server's stop cancels
those still going and answers their callers UNAVAILABLE.

Cancelled inside the RPC's own task, a load had stopped halfway, the versions it had started leaked
(63 MiB a try) and the model never loaded; an unload had left a half-retired version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from server.errors import ShuttingDown

log = logging.getLogger(__name__)


class RpcOperations:
    """The repository changes RPCs started that are still running (RepositoryControl's)."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping  # set by RepositoryControl.stop before it cancels what runs
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run `work` to its end: a caller that leaves stops waiting for it, not the work."""
        task = asyncio.create_task(work, name=what)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self._stopping.is_set():
                # stop() ended the work, not the caller: answer it. The CancelledError had left the
                # call unanswered until grpc's own stop, the whole grace later ("Cancelling all calls").
                why = f"server is shutting down: the {what} was stopped before it ended"
                raise ShuttingDown(why) from None
            raise

    async def cancel(self) -> None:
        """The server stops: end the loads and unloads whose callers left, and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here too: a caller that went away never reads it. It answered the caller
            # (if still there) and the load's own failure was logged where it failed.
            log.debug("%s failed after its caller left: %s", task.get_name(), task.exception())
