"""Under `--workers N`: one worker's automatic rollback, followed by every other worker.

Each worker judges its own traffic (server/models/rollout.py's windows), but the verdict is shared:
a worker that rolls a version back writes a small event file into a private directory the parent
made (0700, `rollout_share_dir`), and every worker checks that directory every CHECK_S and rolls
the same version back (trigger "shared", reason "rollback from worker K: ..."). Before, each worker
rolled back on its own: connections reaching another worker went on getting the failing canary,
and RolloutStatus depended on the connection.

An event names the model's generation: a digest of what its serving versions were loaded from
(repository.version_fingerprint: config and files with sizes and modification times), the same in
every worker for the same files. A worker applies an event only while its model has that
generation, so an event from before a reload is never applied after it (a reload starts again from
the config), and one written by a worker that reloaded first waits until this worker has reloaded
too. The files stay until the parent removes the directory at exit: one per (model, generation,
version, worker), rewritten in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from server.errors import ModelNotFound
from server.models.versions import READY

if TYPE_CHECKING:
    from server.models.rollout import Rollout
    from server.models.versions import ModelEntry

log = logging.getLogger(__name__)

CHECK_S = 0.5  # how often a worker looks for its peers' rollbacks
MAX_EVENT_BYTES = 16 * 1024  # a bigger file is no event of ours: not read
MAX_EVENT_FILES = 4096  # files looked at per check (each is one rollback of one generation)
SUFFIX = ".json"


@dataclass(frozen=True, slots=True)
class SharedRollback:
    """One worker's automatic rollback of `version` of `model` in its `generation`."""

    model: str
    version: int
    generation: str
    worker: int
    reason: str
    unix_time: float

    def file_name(self) -> str:
        model = hashlib.sha256(self.model.encode()).hexdigest()[:16]  # any model name, a safe path
        return f"{model}-{self.generation[:16]}-v{self.version}-w{self.worker}{SUFFIX}"


def generation(entry: ModelEntry) -> str:
    """A digest of what `entry`'s versions were loaded from: equal in every worker that loaded the
    same files, different after any change a reload picks up."""
    digest = hashlib.sha256(entry.name.encode())
    for number in sorted(entry.versions):
        digest.update(f"\0{number}\0{entry.versions[number].fingerprint!r}".encode())
    return digest.hexdigest()


def write_event(directory: Path, event: SharedRollback) -> Path:
    """Write `event` atomically (a temporary name, then a rename): a reader sees all of it or none."""
    final = directory / event.file_name()
    temporary = directory / f".{final.name}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(asdict(event)), encoding="utf-8")
    os.replace(temporary, final)
    return final


def read_event(path: Path) -> SharedRollback:
    """The event in `path`; ValueError (or OSError) when it is not one."""
    with path.open("rb") as file:
        data = file.read(MAX_EVENT_BYTES + 1)
    if len(data) > MAX_EVENT_BYTES:
        raise ValueError(f"larger than {MAX_EVENT_BYTES} bytes")
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    fields = {
        "model": str,
        "version": int,
        "generation": str,
        "worker": int,
        "reason": str,
        "unix_time": float,
    }
    values: dict[str, object] = {}
    for name, kind in fields.items():
        value = raw.get(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"field '{name}' is not a {kind.__name__}")
        values[name] = value
    return SharedRollback(**values)  # type: ignore[arg-type]


class Models(Protocol):
    """What the share reads of the model manager (server/models/manager.py)."""

    rollout: Rollout

    def entry(self, name: str) -> ModelEntry: ...


class RolloutShare:
    """A worker's side of the shared verdicts: publish its own rollbacks, follow the others'."""

    def __init__(self, directory: Path, worker: int, models: Models) -> None:
        self.directory = directory
        self.worker = worker
        self._models = models
        self._events: dict[str, SharedRollback | None] = {}  # file name -> its event (None: unreadable)
        self._handled: set[str] = set()  # file names applied (or found applied already) here
        self._task: asyncio.Task[None] | None = None
        self._listing_failed = False
        models.rollout.on_auto_rollback = self.publish

    def publish(self, entry: ModelEntry, version: int, reason: str) -> None:
        """This worker rolled `version` back automatically: tell the others. A small file written
        on the event loop: rollbacks are rare and the directory is private and local."""
        event = SharedRollback(entry.name, version, generation(entry), self.worker, reason, time.time())
        try:
            path = write_event(self.directory, event)
        except OSError as err:  # the rollback stands here; the others judge on their own
            log.error("rollout: cannot tell the other workers of model %s version %d's rollback: %s",
                      entry.name, version, err)  # fmt: skip
            return
        self._handled.add(path.name)

    def check(self) -> int:
        """Follow the other workers' rollbacks of the generation each model has here; how many were
        applied now. One listing of a small private directory; each file is read once."""
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(SUFFIX) and n[0] != ".")
        except OSError as err:
            if not self._listing_failed:  # said once, not every CHECK_S
                log.error("rollout: cannot read the workers' shared rollbacks in %s: %s", self.directory, err)
                self._listing_failed = True
            return 0
        applied = 0
        generations: dict[str, str | None] = {}
        for name in names[:MAX_EVENT_FILES]:
            if name in self._handled:
                continue
            event = self._event(name)
            if event is None or event.worker == self.worker:
                continue
            if event.model not in generations:
                generations[event.model] = self._generation_of(event.model)
            if generations[event.model] != event.generation:
                continue  # another load of the model (before a reload, or after one not done here yet)
            self._handled.add(name)
            entry = self._models.entry(event.model)
            reason = "".join(c if c.isprintable() else " " for c in event.reason)
            if self._models.rollout.follow(
                entry, event.version, f"rollback from worker {event.worker}: {reason}"
            ):
                applied += 1
        return applied

    def _event(self, name: str) -> SharedRollback | None:
        if name not in self._events:
            try:
                self._events[name] = read_event(self.directory / name)
            except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested JSON
                log.warning(
                    "rollout: %s in %s is no shared rollback (%s): ignored", name, self.directory, err
                )
                self._events[name] = None
        return self._events[name]

    def _generation_of(self, model: str) -> str | None:
        """The generation `model` serves here now; None when it is not ready (or not known)."""
        try:
            entry = self._models.entry(model)
        except ModelNotFound:  # not in this worker's index (yet)
            return None
        return generation(entry) if entry.state == READY and entry.versions else None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="rollout share")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        # A periodic check, as the repository poller's tick (no file events to wait on portably).
        while True:
            try:
                self.check()
            except Exception:  # one bad check never ends the watch
                log.exception("rollout: checking the workers' shared rollbacks failed")
            await asyncio.sleep(CHECK_S)
