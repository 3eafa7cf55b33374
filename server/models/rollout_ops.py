"""Under `--workers N`: every rollout change (the operators' SetWeights, Promote and Rollback, and
each worker's automatic rollbacks), one ordered log per model and generation that every worker
applies in the same order, so the workers' states are alike: the config's policy, then the log.

The worker an admin RPC reaches first applies every change already logged for the model's
generation (server/models/rollout_share.py's check), checks the new one against that state exactly
as one process would (a refused change is never written), then claims the next sequence number: it
writes the change to a temporary file and hard-links it to `op-<model>-<generation>-<seq>.json`.
The link fails when that name exists, so of two workers claiming the same number one wins; the
other reads the winner's change, applies it, checks its own again and claims the next number. Each
file is whole when it appears (a link of a written file) and never changes. The claimant applies
its change at once and answers; every other worker applies it at its next check (CHECK_S), or at
once when it builds the model's state (a lazy model's first load, a new generation). An automatic
rollback is claimed the same way (kind "auto") by the worker whose window decided it, after it
applied what was logged before: a decision the earlier changes made moot is dropped there and
never logged, so no worker applies it.

A worker remembers, per model, the number its state has reached (ModelRollout.log_seq) and looks
only for the next file by name: a check costs one failed open per model, however long the log.

Compaction keeps the log bounded: the claimant of every COMPACT_EVERY-th change writes the state
after it as the log's snapshot (server/models/rollout_snapshot.py) and removes the change files
more than COMPACT_EVERY changes older, so a log holds at most 2 * COMPACT_EVERY - 1 change files and
one snapshot once a compaction is done; the COMPACT_EVERY-th change's file, and those other workers
claim before its claimant takes the log's lock to compact, add to them for that moment (a few). A
state whose next change file is gone starts from the snapshot (a worker that fell behind, a lazy
model's first load, a worker that loads the model later). A number once compacted
is never claimed again: a claim takes the log's lock shared and refuses a number the snapshot
already covers; compaction takes it exclusively and replaces the snapshot before it removes files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from server.models.rollout_snapshot import (
    MAX_SNAPSHOT_BYTES,
    Snapshot,
    read_snapshot,
    snapshot_file_name,
    snapshot_from_raw,
    snapshot_raw,
    write_snapshot,
)
from server.models.share_files import field, is_int, is_pair, read_json_object

if TYPE_CHECKING:
    from server.models.versions import ModelEntry

PREFIX = "op-"  # not a hex digit: the automatic rollbacks' files start with one
SUFFIX = ".json"
# A bigger file is no change of ours: not read. A carry holds a state (events with their reasons).
MAX_CHANGE_BYTES = 16 * 1024 + MAX_SNAPSHOT_BYTES
# "carry": change 1 of a new generation's log, the state the previous files' log had come to
# (rollout_carry.carried_snapshot), claimed by the first worker to load the new files.
KINDS = ("weights", "promote", "rollback", "auto", "carry")
COMPACT_EVERY = 32  # changes between snapshots; as many older change files are kept for followers
_NAME = re.compile(r"op-([0-9a-f]{16})-([0-9a-f]{1,16})-(\d{10})\.json")


@dataclass(frozen=True, slots=True)
class OperatorChange:
    """Change number `seq` to `model`'s rollout in its `generation`, received by `worker`."""

    model: str
    generation: str
    seq: int
    worker: int
    kind: str  # one of KINDS
    weights: tuple[tuple[int, int], ...]  # "weights": (version, weight) pairs
    versions: tuple[int, ...]  # "promote": the version; "rollback"/"auto": the versions taken out
    reason: str  # "rollback": the operator's reason; "auto": the window's verdict
    unix_time: float
    state: Snapshot | None = None  # "carry": the state every worker takes (seq 1 of this generation)

    def file_name(self) -> str:
        return change_file_name(self.model, self.generation, self.seq)


def generation(entry: ModelEntry) -> str:
    """A digest of what `entry`'s versions were loaded from (repository.version_fingerprint):
    equal in every worker that loaded the same files, different after any change a reload picks up."""
    return generation_of(entry.name, {n: v.fingerprint for n, v in entry.versions.items()})


def generation_of(model: str, fingerprints: Mapping[int, object]) -> str:
    """`generation` of a load of `model` whose versions have these fingerprints (version -> its
    repository.version_fingerprint), known before the load (a lazy model's early judge)."""
    digest = hashlib.sha256(model.encode())
    for number in sorted(fingerprints):
        digest.update(f"\0{number}\0{fingerprints[number]!r}".encode())
    return digest.hexdigest()


def model_key(model: str) -> str:
    """Any model name as a safe piece of a file name."""
    return hashlib.sha256(model.encode()).hexdigest()[:16]


def log_key(model: str, generation: str) -> tuple[str, str]:
    """The log a change of `model` in `generation` belongs to, as its file names spell it."""
    return model_key(model), generation[:16]


def change_file_name(model: str, generation: str, seq: int) -> str:
    key, gen = log_key(model, generation)
    return f"{PREFIX}{key}-{gen}-{seq:010d}{SUFFIX}"


def parse_name(name: str) -> tuple[tuple[str, str], int] | None:
    """(log key, sequence number) of a change's file name; None for any other name."""
    match = _NAME.fullmatch(name)
    return None if match is None else ((match.group(1), match.group(2)), int(match.group(3)))


def claim(directory: Path, change: OperatorChange) -> bool:
    """Write `change` under its sequence number unless another worker took that number first
    (False), or it is one the log's snapshot covers (compacted meanwhile: False, as taken). A
    reader sees the whole file or none: the name appears by a link of a written file."""
    final = directory / change.file_name()
    temporary = directory / f".{final.name}.{os.getpid()}.tmp"
    key = log_key(change.model, change.generation)
    with log_lock(directory, exclusive=False):  # no compaction between the check and the link
        if snapshot_seq(directory, key) >= change.seq:  # its old file may be removed: never reuse
            return False
        temporary.write_text(json.dumps(change_raw(change)), encoding="utf-8")
        try:
            os.link(temporary, final)
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)
    return True


def compact(directory: Path, snapshot: Snapshot) -> int:
    """Make `snapshot` the log's (unless a later one is there) and remove its change files numbered
    COMPACT_EVERY or more below it; how many were removed. The snapshot is in place before any file
    goes, so a reader that finds its next change gone finds the snapshot covering it."""
    key = log_key(snapshot.model, snapshot.generation)
    with log_lock(directory, exclusive=True):
        if snapshot_seq(directory, key) >= snapshot.seq:
            return 0
        write_snapshot(directory, snapshot, key)
        floor = snapshot.seq - COMPACT_EVERY
        removed = 0
        for name in os.listdir(directory):  # once per COMPACT_EVERY changes
            parsed = parse_name(name)
            if parsed is not None and parsed[0] == key and parsed[1] <= floor:
                (directory / name).unlink(missing_ok=True)
                removed += 1
        return removed


def snapshot_seq(directory: Path, key: tuple[str, str]) -> int:
    """The change number the log's snapshot is at; 0 when there is none (or none readable)."""
    try:
        return read_snapshot(directory / snapshot_file_name(key)).seq
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, RecursionError):  # said by the followers reading it
        return 0


@contextlib.contextmanager
def log_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    """The log's lock, a flock of the directory itself (no file of its own; the workers are
    processes of this host): claims hold it shared, compaction exclusively, each for a few file
    operations. OSError when the directory is gone."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def change_raw(change: OperatorChange) -> dict[str, object]:
    """`change` as JSON values (its file)."""
    raw: dict[str, object] = {f.name: getattr(change, f.name) for f in fields(change)}
    raw["state"] = None if change.state is None else snapshot_raw(change.state)
    return raw


def read_change(path: Path) -> OperatorChange:
    """The change in `path`; ValueError (or OSError) when it is not one."""
    raw = read_json_object(path, MAX_CHANGE_BYTES)
    kind = field(raw, "kind", str)
    if kind not in KINDS:
        raise ValueError(f"field 'kind' is {kind!r}, not one of {KINDS}")
    pairs = field(raw, "weights", list)
    if not all(is_pair(p) for p in pairs):
        raise ValueError("field 'weights' is not a list of [version, weight] pairs")
    versions = field(raw, "versions", list)
    if not all(is_int(v) for v in versions):
        raise ValueError("field 'versions' is not a list of version numbers")
    unix_time = raw.get("unix_time")
    if not isinstance(unix_time, (int, float)) or isinstance(unix_time, bool):
        raise ValueError("field 'unix_time' is not a number")
    state = None
    if kind == "carry":
        state = snapshot_from_raw(field(raw, "state", dict))
        if (state.model, state.generation, state.seq) != (raw.get("model"), raw.get("generation"), 1):
            raise ValueError("field 'state' is not its model's, generation's and change 1's")
    return OperatorChange(
        model=field(raw, "model", str),
        generation=field(raw, "generation", str),
        seq=field(raw, "seq", int),
        worker=field(raw, "worker", int),
        kind=kind,
        weights=tuple((p[0], p[1]) for p in pairs),
        versions=tuple(versions),
        reason=field(raw, "reason", str),
        unix_time=float(unix_time),
        state=state,
    )
