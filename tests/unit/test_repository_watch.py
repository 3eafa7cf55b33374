"""Poll mode's grouping of repository events (server/models/repository_watch.py), over a scripted
stand-in for watchfiles and a fake clock: a file written again and again keeps its model's group
open, continuous changes are applied at most 10 quiet times apart, and a replaced root is a rescan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest

import server.models.repository_watch as watch_module
from server.models.repository_watch import RepositoryWatch

Change = set[tuple[int, str]]


class Script:
    """watchfiles.awatch's stand-in: each step sets the clock and yields its changes (an empty set
    is a timeout tick), after running that step's action if any; after the last step it sets the
    stop event, as a SIGTERM would."""

    def __init__(self, clock: list[float], steps: list[tuple[float, Change]], stop: asyncio.Event) -> None:
        self.clock, self.steps, self.stop = clock, steps, stop
        self.actions: dict[int, Any] = {}  # step index -> an action run before that step
        self.index = 0

    async def __call__(self, *paths: Path, **options: Any) -> AsyncIterator[Change]:
        assert options["step"] <= 100 and options["rust_timeout"] <= 250  # short: a stop is seen soon
        while self.index < len(self.steps):
            at, changes = self.steps[self.index]
            action = self.actions.pop(self.index, None)
            self.index += 1
            if action is not None:
                action()
            self.clock[0] = at
            yield changes
        self.stop.set()


Applied = list[tuple[float, set[str]]]


def run(
    root: Path,
    steps: list[tuple[float, Change]],
    monkeypatch: pytest.MonkeyPatch,
    known: Iterable[str] = (),
    actions: dict[int, Any] | None = None,
) -> Applied:
    clock = [0.0]
    applied: Applied = []

    async def main() -> None:
        stop = asyncio.Event()
        script = Script(clock, steps, stop)
        script.actions = dict(actions or {})
        monkeypatch.setattr(watch_module.watchfiles, "awatch", script)

        async def apply(names: set[str]) -> None:
            applied.append((clock[0], names))

        watcher = RepositoryWatch(root, 1.0, stop, apply, lambda: list(known), clock=lambda: clock[0])
        await asyncio.wait_for(watcher.run(asyncio.Event()), 30)

    asyncio.run(main())
    return applied


def test_a_file_written_again_and_again_keeps_its_group_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model file written in chunks 0.5 s apart, quiet time 1 s: applied 1 s after the last
    chunk. Watchfiles alone took the repeated write for one event and applied it mid-write."""
    (tmp_path / "m").mkdir()
    write = {(2, str(tmp_path / "m" / "1" / "model.onnx"))}
    steps = [(0.0, write), (0.5, write), (1.0, write), (1.5, write), (2.0, set()), (2.4, set()), (2.6, set())]
    assert run(tmp_path, steps, monkeypatch) == [(2.6, {"m"})]


def test_changes_that_never_stop_are_applied_every_ten_quiet_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = {(2, str(tmp_path / "m" / "config.pbtxt"))}
    steps = [(t * 0.5, write) for t in range(45)]  # every 0.5 s for 22 s
    assert [at for at, _ in run(tmp_path, steps, monkeypatch)] == [10.0, 20.5]


def test_a_replaced_root_is_a_rescan_of_every_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mv repo repo.old; mv repo.new repo`: the watch had stayed on the old directory, and the
    new one's models never loaded."""
    root, new = tmp_path / "repo", tmp_path / "repo.new"
    for name in ("m01", "m02"):
        (root / name).mkdir(parents=True)
    for name in ("m01", "m03"):
        (new / name).mkdir(parents=True)

    def swap() -> None:
        root.rename(tmp_path / "repo.old")
        new.rename(root)

    steps = [(0.0, set()), (0.3, set()), (0.6, set())]
    applied = run(root, steps, monkeypatch, known=["m01", "m02"], actions={1: swap})
    assert applied == [(0.3, {"m01", "m02", "m03"})]  # m02 is looked at: it is gone, so unloaded
