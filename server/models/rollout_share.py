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

The operators' changes (SetWeights, Promote, Rollback) go through the same directory as an ordered
log (server/models/rollout_ops.py): `submit` is the worker that got the RPC, `check` applies the
others' changes in their order, before the automatic rollbacks. An automatic rollback names the
last change its worker had applied (`after_change`): it waits until a follower has applied that
change too, and is not applied over a later SetWeights or Promote (which replaced the weights it
changed, in the worker that decided it as well), so the workers end with the same weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from server.errors import ModelNotFound, RolloutRefused, ServiceError
from server.models.rollout_ops import OperatorChange, claim, log_key, parse_name, read_change
from server.models.versions import READY

if TYPE_CHECKING:
    from server.models.rollout import Rollout
    from server.models.rollout_state import ModelRollout
    from server.models.versions import ModelEntry

log = logging.getLogger(__name__)

CHECK_S = 0.5  # how often a worker looks for its peers' rollbacks
MAX_EVENT_BYTES = 16 * 1024  # a bigger file is no event of ours: not read
MAX_EVENT_FILES = 4096  # files looked at per check (each is one rollback of one generation)
SUFFIX = ".json"
MAX_CLAIMS = 8  # tries to claim a change's number against other workers claiming at the same time


@dataclass(frozen=True, slots=True)
class SharedRollback:
    """One worker's automatic rollback of `version` of `model` in its `generation`."""

    model: str
    version: int
    generation: str
    worker: int
    reason: str
    unix_time: float
    after_change: int = 0  # the last operator change of the generation its worker had applied

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
    after = raw.get("after_change", 0)
    if not isinstance(after, int) or isinstance(after, bool):
        raise ValueError("field 'after_change' is not an int")
    return SharedRollback(**values, after_change=after)  # type: ignore[arg-type]


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
        self._changes: dict[str, OperatorChange] = {}  # change files read, not yet applied
        self._applied: dict[tuple[str, str], int] = {}  # log key -> last change applied here
        self._replaced: dict[tuple[str, str], int] = {}  # log key -> last SetWeights/Promote applied
        self._task: asyncio.Task[None] | None = None
        self._listing_failed = False
        models.rollout.on_auto_rollback = self.publish

    def publish(self, entry: ModelEntry, version: int, reason: str) -> None:
        """This worker rolled `version` back automatically: tell the others. A small file written
        on the event loop: rollbacks are rare and the directory is private and local."""
        gen = generation(entry)
        after = self._applied.get(log_key(entry.name, gen), 0)
        event = SharedRollback(entry.name, version, gen, self.worker, reason, time.time(), after)
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
            listed = sorted(n for n in os.listdir(self.directory) if n.endswith(SUFFIX) and n[0] != ".")
        except OSError as err:
            if not self._listing_failed:  # said once, not every CHECK_S
                log.error("rollout: cannot read the workers' shared rollbacks in %s: %s", self.directory, err)
                self._listing_failed = True
            return 0
        names = [n for n in listed if parse_name(n) is None]
        applied = self._follow_changes([n for n in listed if parse_name(n) is not None])
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
            key = log_key(event.model, event.generation)
            if self._applied.get(key, 0) < event.after_change:
                continue  # decided after an operator's change not applied here yet
            self._handled.add(name)
            if self._replaced.get(key, 0) > event.after_change:
                log.info("rollout: worker %d's rollback of model %s version %d is older than the weights "
                         "set since: not applied", event.worker, event.model, event.version)  # fmt: skip
                continue
            entry = self._models.entry(event.model)
            reason = "".join(c if c.isprintable() else " " for c in event.reason)
            if self._models.rollout.follow(
                entry, event.version, f"rollback from worker {event.worker}: {reason}"
            ):
                applied += 1
        return applied

    def submit(
        self, entry: ModelEntry, kind: str, version: int | None, weights: Mapping[int, int], reason: str
    ) -> ModelRollout:
        """An operator's change (rollout_ops.KINDS) this worker received: checked and applied here
        after every change logged before it, and logged for the other workers (they apply it
        within CHECK_S). A change refused here raises as in one process and is never logged."""
        gen = generation(entry)
        key = log_key(entry.name, gen)
        pairs = tuple(sorted(weights.items()))
        for _ in range(MAX_CLAIMS):
            self.check()  # the changes (and rollbacks) logged so far, so this one comes after them
            versions = self._check_change(entry, kind, version, weights)
            seq = self._applied.get(key, 0) + 1
            change = OperatorChange(
                entry.name, gen, seq, self.worker, kind, pairs, versions, reason, time.time()
            )
            try:
                claimed = claim(self.directory, change)
            except OSError as err:  # never applied here alone: the workers would route apart
                log.error("rollout: cannot log model %s's %s change for the other workers in %s: %s",
                          entry.name, kind, self.directory, err)  # fmt: skip
                raise RolloutRefused(
                    "the change could not be passed to the other workers (see the server's log): "
                    "nothing changed"
                ) from err
            if claimed:
                self._mark(key, change)
                return self._apply_own(entry, kind, version, weights, reason)
        raise RolloutRefused(
            f"other workers' changes to model '{entry.name}' came first {MAX_CLAIMS} times: nothing "
            "changed; try again"
        )

    def _check_change(
        self, entry: ModelEntry, kind: str, version: int | None, weights: Mapping[int, int]
    ) -> tuple[int, ...]:
        """Raise what applying the change would refuse; the versions it names (a rollback's: those
        it takes out)."""
        rollout = self._models.rollout
        if kind == "weights":
            rollout.check_weights(entry, weights)
            return ()
        if kind == "promote" and version is not None:
            rollout.check_weights(entry, {version: 100})
            return (version,)
        return tuple(rollout.rollback_targets(entry, version))

    def _apply_own(
        self, entry: ModelEntry, kind: str, version: int | None, weights: Mapping[int, int], reason: str
    ) -> ModelRollout:
        rollout = self._models.rollout
        if kind == "weights":
            return rollout.set_weights(entry, weights)
        if kind == "promote" and version is not None:
            return rollout.promote(entry, version)
        return rollout.roll_back(entry, version, reason)

    def _follow_changes(self, names: list[str]) -> int:
        """Apply the other workers' logged changes not applied here yet, each log in its order;
        how many changed something here."""
        pending: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for name in names:
            parsed = parse_name(name)
            if parsed is not None and parsed[1] > self._applied.get(parsed[0], 0):
                pending.setdefault(parsed[0], []).append((parsed[1], name))
        applied = 0
        for key, changes in pending.items():
            for seq, name in sorted(changes):
                if seq != self._applied.get(key, 0) + 1:
                    break  # numbers are claimed in order: a gap is a file not listed yet
                change = self._change(name)
                if change is None:  # unreadable (said in the log): passed over
                    self._applied[key] = seq
                    continue
                if self._generation_of(change.model) != change.generation:
                    break  # another load of the model here: wait (or never, after a reload)
                if change.worker != self.worker:
                    applied += self._follow(self._models.entry(change.model), change)
                self._mark(key, change)
        return applied

    def _follow(self, entry: ModelEntry, change: OperatorChange) -> bool:
        rollout = self._models.rollout
        try:
            if change.kind == "weights":
                rollout.set_weights(entry, dict(change.weights))
            elif change.kind == "promote" and change.versions:
                rollout.promote(entry, change.versions[0])
            else:
                reason = "".join(c if c.isprintable() else " " for c in change.reason)
                text = f"rollback from worker {change.worker} (manual): {reason or 'by an operator'}"
                return any([rollout.follow(entry, v, text) for v in change.versions])
        except ServiceError as err:  # the same generation serves the same versions: not expected
            log.warning("rollout: worker %d's change %d of model %s not applied here: %s",
                        change.worker, change.seq, change.model, err)  # fmt: skip
            return False
        return True

    def _mark(self, key: tuple[str, str], change: OperatorChange) -> None:
        self._applied[key] = change.seq
        if change.kind in ("weights", "promote"):
            self._replaced[key] = change.seq
        self._changes.pop(change.file_name(), None)

    def _change(self, name: str) -> OperatorChange | None:
        """The change in file `name`, read once (kept until applied); None when unreadable."""
        change = self._changes.get(name)
        if change is None:
            try:
                change = self._changes[name] = read_change(self.directory / name)
            except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested JSON
                log.error("rollout: %s in %s is no operator change (%s): passed over",
                          name, self.directory, err)  # fmt: skip
        return change

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
