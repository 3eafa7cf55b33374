"""Poll mode's watch of the repository (server/models/control.py): file events (watchfiles), grouped
per model until nothing has changed for `quiet_s` (at most 10 times that while changes keep
coming), then applied; the repository root itself replaced is a rescan of every model.

Watchfiles is asked for events in short steps and the grouping is done here: handed the whole
quiet time as its step, it checked for a stop only once a step (SIGTERM took up to
repository_poll_secs to exit: 15.5 s for 15), and it took a file written again and again for one
unchanged event (a model file still being written in chunks was loaded half-written). It watches
a directory, not a path: a repository replaced by `mv` or by swapping a symlink (git-sync,
Kubernetes volumes) had gone unnoticed, the old models serving for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import watchfiles

log = logging.getLogger(__name__)

STEP_MS = 100  # events closer than this are one batch from watchfiles
TICK_MS = 250  # with no event, the loop still wakes this often: a stop, a quiet group, a new root
Identity = tuple[int, int] | None


def identity(path: Path) -> Identity:
    """The directory `path` leads to now (device and inode, through symlinks); None if none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def model_names(root: Path) -> set[str]:
    """The model directories in `root` now."""
    try:
        return {entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")}
    except OSError:
        return set()


class RepositoryWatch:
    """Calls `apply` with the names of the models whose directories changed, until `stop` is set.
    `known`: the models the server lists now (a rescan also looks at those, so that a model
    missing from a new root is unloaded)."""

    def __init__(
        self,
        root: Path,
        quiet_s: float,
        stop: asyncio.Event,
        apply: Callable[[set[str]], Awaitable[None]],
        known: Callable[[], Iterable[str]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = root
        self._quiet_s = quiet_s
        self._stop = stop
        self._apply = apply
        self._known = known
        self._clock = clock

    async def run(self, watching: asyncio.Event) -> None:
        """Watch until stopped; `watching` is set once the first watches exist."""
        while not self._stop.is_set():
            root = identity(self._root)
            if root is None:  # between the two moves of a swap: wait for a root
                watching.set()
                await self._pause()
                continue
            replaced = await self._watch(self._root.resolve(), root, watching)
            if replaced and not self._stop.is_set():
                log.info("repository %s was replaced; rescanning every model", self._root)
                await self._apply(model_names(self._root) | set(self._known()))

    async def _pause(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), TICK_MS / 1000)

    async def _watch(self, target: Path, watched: Identity, watching: asyncio.Event) -> bool:
        """Watch `target` until the root leads elsewhere (True) or a stop (False)."""
        pending: set[str] = set()
        first: float | None = None  # when the pending group's first change was seen
        last = 0.0
        # set() only wakes start() after this step: the loop's first step below creates the
        # watches (awatch builds its RustNotify before its first await), so they exist by then.
        watching.set()
        async for changes in watchfiles.awatch(
            target,
            stop_event=self._stop,
            step=STEP_MS,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            recursive=True,
        ):
            now = self._clock()
            if identity(self._root) != watched:
                return True
            names = self.changed_models((path for _, path in changes), target)
            if names:
                pending |= names
                last = now
                first = now if first is None else first
            if first is not None and (now - last >= self._quiet_s or now - first >= 10 * self._quiet_s):
                batch, pending, first = pending, set(), None
                await self._apply(batch)
        return False

    def changed_models(self, paths: Iterable[str], target: Path) -> set[str]:
        """The model directories the changed paths are in (links are not followed: a model file may
        be a link to a file elsewhere)."""
        names: set[str] = set()
        roots = {self._root.absolute(), target}
        for path in paths:
            changed = Path(os.path.abspath(path))
            for root in roots:
                if changed.is_relative_to(root) and changed != root:
                    first = changed.relative_to(root).parts[0]
                    if not first.startswith("."):
                        names.add(first)
        return names
