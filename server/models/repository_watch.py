"""Poll mode's watch of the repository (server/models/control.py): file events (watchfiles), grouped
per model until nothing has changed for `quiet_s` (at most 10 times that while changes keep
coming), then applied; the repository root itself replaced is a rescan of every model.

Watchfiles is asked for events in short steps and the grouping is done here: handed the whole
quiet time as its step, it checked for a stop only once a step (SIGTERM took up to
repository_poll_secs to exit: 15.5 s for 15), and it took a file written again and again for one
unchanged event (a model file still being written in chunks was loaded half-written). It watches
a directory, not a path: a repository replaced by `mv` or by swapping a symlink (git-sync,
Kubernetes volumes) had gone unnoticed, the old models serving for good. For the same reason a
model directory that is a symlink has its target watched too (inotify does not follow links: edits
inside it had gone unnoticed), and the watches are made again when such a link changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import watchfiles

log = logging.getLogger(__name__)

STEP_MS = 100  # events closer than this are one batch from watchfiles
TICK_MS = 250  # with no event, the loop still wakes this often: a stop, a quiet group, a new root
Identity = tuple[int, int] | None
Links = dict[str, tuple[Path, Identity]]  # model -> the directory its symlink leads to, and its identity


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


def linked_models(root: Path) -> Links | None:
    """The model directories in `root` that are symlinks to a directory (dangling ones left out),
    with where they lead now; a link to the root or above it is not watched (a whole file system).
    None when the root cannot be listed now (EMFILE): not "no links", which had read as every link
    gone, and the watches made again then failed on the same EMFILE, ending the poller."""
    links: Links = {}
    try:
        entries = [
            entry for entry in os.scandir(root) if entry.is_symlink() and not entry.name.startswith(".")
        ]
    except OSError:
        return None
    resolved_root = root.resolve()
    for entry in entries:
        try:
            target = Path(entry.path).resolve(strict=True)
        except (OSError, RuntimeError):  # dangling, or a loop of links
            continue
        if target.is_dir() and not resolved_root.is_relative_to(target):
            links[entry.name] = (target, identity(target))
    return links


@dataclass
class _Group:
    """Changed models waiting until nothing changed for the quiet time (at most 10 of them)."""

    pending: set[str] = field(default_factory=set)
    first: float | None = None  # when the group's first change was seen
    last: float = 0.0

    def add(self, names: set[str], now: float) -> None:
        if names:
            self.pending |= names
            self.last = now
            self.first = now if self.first is None else self.first

    def take(self, now: float, quiet_s: float) -> set[str]:
        """The group, once it is due; nothing before."""
        if self.first is None or (now - self.last < quiet_s and now - self.first < 10 * quiet_s):
            return set()
        batch, self.pending, self.first = self.pending, set(), None
        return batch


class RepositoryWatch:
    """Calls `apply` with the names of the models whose directories changed, until `stop` is set.
    `known`: the models the server lists now (a rescan also looks at those, so that a model
    missing from a new root is unloaded). `due`: the models to load again now whatever changed
    (loads the OS failed: load_retry.py)."""

    def __init__(
        self,
        root: Path,
        quiet_s: float,
        stop: asyncio.Event,
        apply: Callable[[set[str]], Awaitable[None]],
        known: Callable[[], Iterable[str]],
        due: Callable[[float], set[str]] = lambda now: set(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = root
        self._quiet_s = quiet_s
        self._stop = stop
        self._apply = apply
        self._known = known
        self._due = due
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
        """Watch `target` until the root leads elsewhere (True) or a stop (False); the watches are
        made again (the group kept) whenever the model directories that are links change."""
        group = _Group()
        links: Links = {}
        while not self._stop.is_set():
            listed = linked_models(self._root)
            links = links if listed is None else listed  # unlisted now (EMFILE): the last ones
            try:
                outcome = await self._watch_with(target, watched, links, group, watching)
            except OSError as exc:  # the watches cannot be made now (EMFILE): try again, never end
                log.warning("repository %s: cannot watch it now (%s); trying again", self._root, exc)
                await self._pause()
                continue
            if outcome is not None:
                return outcome
        return False

    async def _watch_with(
        self, target: Path, watched: Identity, links: Links, group: _Group, watching: asyncio.Event
    ) -> bool | None:
        """One set of watches: the root's and the linked models' targets; None when the links
        changed (the models concerned are added to `group`)."""
        paths = [target, *sorted({path for path, _ in links.values() if not path.is_relative_to(target)})]
        # set() only wakes start() after this step: the loop's first step below creates the
        # watches (awatch builds its RustNotify before its first await), so they exist by then.
        watching.set()
        async for changes in watchfiles.awatch(
            *paths,
            stop_event=self._stop,
            step=STEP_MS,
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            recursive=True,
        ):
            now = self._clock()
            if identity(self._root) != watched:
                return True
            changed = [Path(os.path.abspath(path)) for _, path in changes]
            group.add(self.changed_models((str(path) for path in changed), target, links), now)
            relinked = self._relinked(changed, target, links)
            if relinked:
                group.add(relinked, now)
                return None
            batch = group.take(now, self._quiet_s)
            if batch:
                await self._apply(batch)
            retry = self._due(now) - group.pending  # those in the group are loaded with it
            if retry:
                await self._apply(retry)
        return False

    def _relinked(self, changed: list[Path], target: Path, links: Links) -> set[str]:
        """The models whose link now leads elsewhere, or that became or stopped being links. The
        links are listed again only when the root's own entries changed; where each leads is
        checked at every wake (a link to a link may change with no event under the root)."""
        moved = {name for name, (_, was) in links.items() if identity(self._root / name) != was}
        roots = {self._root.absolute(), target}
        if moved or any(path.parent in roots for path in changed):
            now = linked_models(self._root)
            if now is None:  # cannot list the root now: judge by where the known links lead
                return moved
            moved |= {name for name in now.keys() | links.keys() if now.get(name) != links.get(name)}
        return moved

    def changed_models(self, paths: Iterable[str], target: Path, links: Links | None = None) -> set[str]:
        """The model directories the changed paths are in (links are not followed: a model file may
        be a link to a file elsewhere), a linked model's target standing for its directory."""
        names: set[str] = set()
        roots = {self._root.absolute(), target}
        for path in paths:
            changed = Path(os.path.abspath(path))
            for root in roots:
                if changed.is_relative_to(root) and changed != root:
                    first = changed.relative_to(root).parts[0]
                    if not first.startswith("."):
                        names.add(first)
            names |= {name for name, (linked, _) in (links or {}).items() if changed.is_relative_to(linked)}
        return names
