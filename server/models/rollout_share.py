"""Under `--workers N`: every worker applies the same rollout changes in the same order.

Each worker judges its own traffic (server/models/rollout.py's windows), but its verdicts and the
operators' changes (SetWeights, Promote, Rollback) it receives go into one numbered log per model
and generation (server/models/rollout_ops.py) in a private directory the parent made (0700,
`rollout_share_dir`). Every worker's state of a model is its config's policy plus that log applied
in order (ModelRollout.log_seq says how far), so the same sequence from the same start leaves every
worker with the same weights, and a change refused on one is refused on all. A worker applies the
log at every check (CHECK_S), before it claims a number of its own, and whenever it builds a
model's state (a lazy model's load, a reload of other files), so nothing is routed by the config
alone while the log holds changes. A follower's rollback is trigger "shared".

The generation is a digest of what a model's serving versions were loaded from
(repository.version_fingerprint: config and files with sizes and modification times), the same in
every worker for the same files. A change applies to the workers serving its generation: a worker
that loaded other files starts again from their config and follows their log, whose change 1 is
what the first worker to build a state for them carried from the files before (a "carry": what one
process keeps across such a reload, rollout_carry.carried_snapshot). A reload of the same files
keeps the state (rollout_carry.carries) and its place in the log.

The log is compacted (rollout_ops.compact): every COMPACT_EVERY-th change's claimant writes the
state after it as the log's snapshot and removes the older change files, keeping the last
COMPACT_EVERY; a state whose next change file is gone takes the snapshot, then follows the files
after it. A check looks for the snapshot only when the directory changed since the last check
that did (its modification time, from the one stat a check makes) or every PROBE_EVERY-th check
(a change within the same clock tick as that stat): with nothing new, a check opens one file per
model, as before compaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from server.errors import ModelNotFound, RolloutRetry, RolloutShareLost, ServiceError
from server.models.rollout_carry import carried_snapshot, restore
from server.models.rollout_log_files import LogFiles
from server.models.rollout_ops import (
    COMPACT_EVERY,
    OperatorChange,
    claim,
    compact,
    generation,
)
from server.models.rollout_periods import current, generation_for, logged_generation, unloaded
from server.models.rollout_replay import logged_weights
from server.models.rollout_snapshot import Snapshot, snapshot_of
from server.models.rollout_state import EventOrigin, seen_by
from server.models.traffic import format_weights
from server.models.versions import READY

if TYPE_CHECKING:
    from server.models.rollout import Rollout
    from server.models.rollout_state import ModelRollout
    from server.models.versions import ModelEntry

__all__ = ["CHECK_S", "RolloutShare", "generation"]

log = logging.getLogger(__name__)

CHECK_S = 0.5  # how often a worker applies the changes its peers logged
MAX_CLAIMS = 8  # tries to claim a change's number against other workers claiming at the same time
PROBE_EVERY = 20  # checks between looks for a snapshot when the directory seems unchanged


class Models(Protocol):
    """What the share reads of the model manager (server/models/manager.py)."""

    rollout: Rollout

    def entry(self, name: str) -> ModelEntry: ...


class RolloutShare:
    """A worker's side of the shared log: claim its own changes, apply everyone's in order."""

    def __init__(self, directory: Path, worker: int, models: Models) -> None:
        self.directory = directory
        self.worker = worker
        self._models = models
        self.log_files = LogFiles(directory)
        self._catching_up: set[str] = set()  # models whose log is being applied now (no re-entry)
        self._task: asyncio.Task[None] | None = None
        self._checks = 0
        self._probed_stamp: int | None = None  # the directory's mtime at the last check that probed
        models.rollout.shared = self

    @property
    def files_opened(self) -> int:
        """Change and snapshot files looked for (found or not): a check's cost."""
        return self.log_files.opened

    # -- following -------------------------------------------------------------------------

    def check(self) -> int:
        """Apply the changes logged since each model's state here last looked; how many changed
        something here. One open per model with a state here, plus one per new change."""
        stamp = self.log_files.stamp()
        if stamp is None:
            return 0
        self._checks += 1
        # A compaction changes the directory (a rename, removals): look for snapshots then.
        probe = stamp != self._probed_stamp or self._checks % PROBE_EVERY == 0
        applied = 0
        for name in self._models.rollout.names():
            try:
                entry = self._models.entry(name)
            except ModelNotFound:  # unloaded here meanwhile
                continue
            if entry.state == READY and entry.versions:
                if probe:  # a switch of periods writes the directory (rollout_periods.py)
                    self._follow_period(entry)
                applied += self.catch_up(entry, snapshots=probe)
        if probe:
            self._probed_stamp = stamp
        return applied

    def built(self, entry: ModelEntry, carried: Snapshot | None = None) -> None:
        """Rollout built a state for `entry` (Rollout.state): the log's changes before it routes,
        `carried` (carry_proposal) claimed first as change 1 when the log holds none yet."""
        if carried is not None:
            self._claim_carry(entry, carried)
        if entry.name not in self._catching_up:  # else the catch-up under way reads it
            self.catch_up(entry)

    def catch_up(self, entry: ModelEntry, snapshots: bool = True) -> int:
        """Apply every change of `entry`'s generation logged after the state's log_seq, in order,
        starting from the log's snapshot when the next change's file was compacted away (looked
        for when `snapshots`); how many changed something here."""
        if entry.name in self._catching_up:
            return 0
        self._catching_up.add(entry.name)
        try:
            return self._apply_log(self._models.rollout.state(entry), snapshots)  # built here once
        finally:
            self._catching_up.discard(entry.name)

    def _apply_log(self, state: ModelRollout, snapshots: bool) -> int:
        entry, applied = state.entry, 0
        while True:
            seq = state.log_seq + 1
            change = self.log_files.change(entry.name, state.generation, seq)
            if change is None:
                snapshot = self.log_files.snapshot(entry.name, state.generation) if snapshots else None
                if snapshot is None or snapshot.seq < seq:  # nothing logged after log_seq yet
                    return applied
                skipped = restore(state, snapshot, self.worker)  # changes up to it were removed
                self._models.rollout.count_rollbacks(entry.name, skipped)
                snapshots = False
                applied += 1
                continue
            state.log_seq = seq
            if isinstance(change, OperatorChange):  # not one passed over
                applied += self._follow(entry, change)

    def carry_proposal(self, old: ModelRollout, new: ModelRollout) -> Snapshot | None:
        """`old` (still the model's state: its changes apply to it) after the rest of its
        generation's log, carried onto `new`, a load of other files: what this worker proposes as
        change 1 of their log (every worker takes change 1, whoever claimed it: one state).
        A worker still serving the old files may log a change there after this: it is not carried."""
        self._apply_log(old, snapshots=True)
        return carried_snapshot(old, new)

    def _claim_carry(self, entry: ModelEntry, carried: Snapshot) -> None:
        change = OperatorChange(entry.name, carried.generation, 1, self.worker, "carry", (), (),
                                "", time.time(), carried)  # fmt: skip
        try:
            won = claim(self.directory, change)
        except OSError as err:  # the config's state, as on every worker following no carry
            log.error("rollout: cannot log model %s's carried state for the other workers in %s: %s",
                      entry.name, self.directory, err)  # fmt: skip
            return
        if won:
            log.info("rollout: model %s's new files take the state the files before had: weights %s "
                     "(%s); logged for the other workers", entry.name,
                     format_weights(dict(carried.weights or ())), carried.source)  # fmt: skip

    def _follow(self, entry: ModelEntry, change: OperatorChange) -> int:
        """Apply a logged change here; 1 when it changed something, 0 when refused (logged)."""
        rollout = self._models.rollout
        who = f"worker {change.worker}"
        try:
            if change.kind == "carry" and change.state is not None:  # change 1: what the files before had
                restore(self._models.rollout.state(entry), change.state, self.worker)
            elif change.kind == "weights":
                rollout.set_weights(entry, dict(change.weights))
            elif change.kind == "promote" and change.versions:
                rollout.promote(entry, change.versions[0])
            else:
                kind = "auto" if change.kind == "auto" else "manual"
                origin = EventOrigin(change.worker, kind, change.reason)
                trigger, text = seen_by(origin, self.worker)  # as the snapshot's readers show it
                return int(any([rollout.follow(entry, v, text, origin, trigger) for v in change.versions]))
        except ServiceError as err:  # the same state refuses alike: a sign the states differ
            log.warning("rollout: %s's change %d of model %s not applied here: %s",
                        who, change.seq, change.model, err)  # fmt: skip
            return 0
        return 1

    def logged_weights(
        self, model: str, files: str, weights: Mapping[int, int] | None, served: Collection[int]
    ) -> dict[int, int] | None:
        """`weights` (its config's) after the log a load of `model`'s files `files` would follow
        (a lazy model not loaded here: rollout_replay.py). Reads files only: off the event loop."""
        generation = logged_generation(self.directory, model, files)
        return logged_weights(self.directory, model, generation, weights, served)

    # -- periods of files (rollout_periods.py) ----------------------------------------------------

    def log_generation(self, model: str, files: str, switching: bool) -> str:
        """The log a state built now for `model`'s files `files` follows (rollout_periods.py);
        `switching`: from this worker's state of other files."""
        try:
            return generation_for(self.directory, model, files, switching)
        except OSError as err:  # the directory is gone: said at the next change; the files' own log
            log.error("rollout: cannot read model %s's period in %s: %s", model, self.directory, err)
            return files

    def unloaded(self, model: str) -> None:
        try:
            unloaded(self.directory, model)
        except OSError as err:
            log.error("rollout: cannot record model %s's unload in %s: %s", model, self.directory, err)

    def _follow_period(self, entry: ModelEntry) -> None:
        """This worker's state of `entry` follows an older period of the same files than the
        current one (the files flipped back before it looked): take the current period's log."""
        state = self._models.rollout.built_for(entry)  # else the catch-up builds it: not left behind
        now = None if state is None else current(self.directory, entry.name)
        if (
            state is not None
            and now is not None
            and now.files == state.files
            and now.generation != state.generation
        ):
            log.info("rollout: model %s: the other workers serve these files in a later period: its log "
                     "applies here", entry.name)  # fmt: skip
            self._models.rollout.rebase(entry, now.generation)

    # -- claiming --------------------------------------------------------------------------

    def submit(
        self, entry: ModelEntry, kind: str, version: int | None, weights: Mapping[int, int], reason: str
    ) -> ModelRollout:
        """An operator's change (rollout_ops.KINDS) this worker received: checked and applied here
        after every change logged before it, and logged for the other workers (they apply it
        within CHECK_S). A change refused here raises as in one process and is never logged."""
        pairs = tuple(sorted(weights.items()))
        for _ in range(MAX_CLAIMS):
            self.catch_up(entry)  # the changes logged so far: this one comes after them
            state = self._models.rollout.state(entry)
            versions = self._check_change(entry, kind, version, weights)
            change = OperatorChange(entry.name, state.generation, state.log_seq + 1, self.worker, kind,
                                    pairs, versions, reason, time.time())  # fmt: skip
            if self._claim(change):
                state.log_seq = change.seq
                applied = self._apply_own(entry, kind, version, weights, reason)
                self._compact(state)
                return applied
        raise RolloutRetry(
            f"other workers' changes to model '{entry.name}' came first {MAX_CLAIMS} times: nothing "
            "changed; try again"
        )

    def auto_rollback(self, entry: ModelEntry, version: int, reason: str) -> None:
        """This worker's window says roll `version` back: after the changes logged before it, if it
        still applies, claim its number, then roll back here. A decision the log made moot (another
        version rolled back meanwhile, say) is dropped here and never logged."""
        rollout = self._models.rollout
        for _ in range(MAX_CLAIMS):
            self.catch_up(entry)
            state = rollout.state(entry)
            refusal = rollout.auto_refusal(state, version)
            if refusal:
                if refusal != "out":
                    log.warning("rollout: model %s version %d's automatic rollback (%s) dropped after "
                                "the changes logged before it: %s", entry.name, version, reason,
                                refusal)  # fmt: skip
                return
            change = OperatorChange(entry.name, state.generation, state.log_seq + 1, self.worker,
                                    "auto", (), (version,), reason, time.time())  # fmt: skip
            try:
                claimed = self._claim(change)
            except RolloutShareLost:  # the rollback stands here; the others judge on their own
                log.error("rollout: cannot tell the other workers of model %s version %d's rollback",
                          entry.name, version)  # fmt: skip
                rollout.roll_back_auto(state, version, reason)
                return
            if claimed:
                state.log_seq = change.seq
                rollout.roll_back_auto(state, version, reason, EventOrigin(self.worker, "auto", reason))
                self._compact(state)
                return
        log.error("rollout: model %s version %d's automatic rollback lost its number %d times to other "
                  "workers' changes: not rolled back; the next window judges again", entry.name, version,
                  MAX_CLAIMS)  # fmt: skip

    def _claim(self, change: OperatorChange) -> bool:
        try:
            return claim(self.directory, change)
        except OSError as err:  # never applied here alone: the workers would route apart
            log.error("rollout: cannot log model %s's %s change for the other workers in %s: %s",
                      change.model, change.kind, self.directory, err)  # fmt: skip
            cause = (
                f"the workers' shared directory {self.directory} is gone (removed while the server "
                "runs; restart it)"
                if not (self.log_files.stamp() is not None)
                else f"the workers' shared directory {self.directory} cannot be written ({err.strerror})"
            )
            raise RolloutShareLost(
                f"{cause}: the change could not reach the other workers; nothing changed"
            ) from err

    def _compact(self, state: ModelRollout) -> None:
        """After this worker's own change: every COMPACT_EVERY-th, the state after it becomes the
        log's snapshot and the older change files go (rollout_ops.compact)."""
        if state.log_seq % COMPACT_EVERY:
            return
        try:
            removed = compact(self.directory, snapshot_of(state))
        except OSError as err:  # the files stay; the next COMPACT_EVERY-th change tries again
            log.warning("rollout: cannot compact model %s's change log in %s: %s",
                        state.entry.name, self.directory, err)  # fmt: skip
            return
        log.info("rollout: model %s's change log compacted at change %d (%d files removed)",
                 state.entry.name, state.log_seq, removed)  # fmt: skip

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
        return rollout.roll_back(entry, version, reason, EventOrigin(self.worker, "manual", reason))

    # -- the periodic check ----------------------------------------------------------------

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
                log.exception("rollout: applying the workers' shared changes failed")
            await asyncio.sleep(CHECK_S)
