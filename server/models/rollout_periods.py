"""Under `--workers N`: which change log a model's state follows, one per period of its files.

A log was keyed by the files' digest alone (repository.version_fingerprint of every version), so
files served again (a version directory added, then removed; a redeploy reverted with `cp -p`)
found their old log and every worker replayed it from change 1: the operator's rollback made
since was lost (a tester's). Now each period of a model's files has a log of its own, its
`generation`: the first period's is the files' digest (as before), each next one a digest of the
new files' digest and the generation before (`chained`), so going back to files served before
starts a new log, whose change 1 is what the files before carried (rollout_share.py).

One small file per model, `cur-<model key>.json` ({model, files, generation}), says the current
period: a worker loading other files reads it (under the share directory's lock) and joins that
period when it names the same files (another worker switched first), else chains a new one from it
and writes it. Chaining is deterministic, so workers that switch at the same moment agree. A worker
left on the files of an older period (the files flipped back before it looked) sees the file name
its files with another generation at its next check and follows that log (RolloutShare.check).
An unload writes a period of no files: a load after it starts from the config, as in one process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from server.models.rollout_ops import PREFIX, log_lock, model_key, parse_name
from server.models.rollout_snapshot import SNAPSHOT_PREFIX
from server.models.share_files import field, read_json_object

log = logging.getLogger(__name__)

POINTER_PREFIX = "cur-"
MAX_POINTER_BYTES = 4096
UNLOADED = "unloaded"  # the files of a period whose model was unloaded: none
# Logs of periods other than the current and the one before it are removed at a switch once this
# old (a worker still on one looks at the pointer within its next check: 0.5 s).
STALE_LOG_S = 600.0


@dataclass(frozen=True, slots=True)
class Period:
    model: str
    files: str  # the digest of the files (rollout_ops.generation), or UNLOADED
    generation: str  # the key of this period's change log


def chained(files: str, before: str) -> str:
    """The generation of a period of `files` that follows the period `before`."""
    return hashlib.sha256(f"{files}\0{before}".encode()).hexdigest()


def current(directory: Path, model: str) -> Period | None:
    """The model's current period; None when none was written (or it cannot be read)."""
    try:
        raw = read_json_object(directory / pointer_name(model), MAX_POINTER_BYTES)
        period = Period(field(raw, "model", str), field(raw, "files", str), field(raw, "generation", str))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:
        log.error(
            "rollout: %s in %s is unreadable (%s): a new period starts", pointer_name(model), directory, err
        )
        return None
    return period if period.model == model else None


def generation_for(directory: Path, model: str, files: str, switching: bool) -> str:
    """The generation of `model`'s files `files` for a state built now for them: the current
    period's when it names these files; else a new period's, written as the current one when this
    worker is `switching` from a state of other files (or no period was written yet). A first
    state of files the current period does not name (a worker that loads them later, or one
    behind the others) takes the period they would chain without writing it: one behind must not
    move the others' period back, and one ahead meets the same generation when they switch."""
    with log_lock(directory, exclusive=True):  # read, then write: no other switch between
        now = current(directory, model)
        if now is not None and now.files == files:
            return now.generation
        generation = files if now is None else chained(files, now.generation)
        if now is not None and not switching:
            return generation
        _write(directory, Period(model, files, generation))
    if now is not None:
        _remove_stale(directory, model, keep={generation, now.generation})
    return generation


def unloaded(directory: Path, model: str) -> None:
    """The model was unloaded here: a period of no files, so its next load starts anew."""
    with log_lock(directory, exclusive=True):
        now = current(directory, model)
        if now is None or now.files != UNLOADED:
            before = "" if now is None else now.generation
            _write(directory, Period(model, UNLOADED, chained(UNLOADED, before)))


def logged_generation(directory: Path, model: str, files: str) -> str:
    """The generation a load of `files` would take now (read only: a lazy model's early judge)."""
    now = current(directory, model)
    if now is not None and now.files == files:
        return now.generation
    return files if now is None else chained(files, now.generation)


def pointer_name(model: str) -> str:
    return f"{POINTER_PREFIX}{model_key(model)}.json"


def _write(directory: Path, period: Period) -> None:
    final = directory / pointer_name(period.model)
    temporary = directory / f".{final.name}.{os.getpid()}.tmp"
    try:
        temporary.write_text(json.dumps({"model": period.model, "files": period.files,
                                         "generation": period.generation}), encoding="utf-8")  # fmt: skip
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def _remove_stale(directory: Path, model: str, keep: set[str]) -> None:
    """Remove the change files and snapshots of `model`'s other periods not written for
    STALE_LOG_S: the logs of files no longer served had stayed for the server's life."""
    key, kept = model_key(model), {g[:16] for g in keep}
    snapshot_start = f"{SNAPSHOT_PREFIX}{key}-"
    cutoff = time.time() - STALE_LOG_S
    try:
        names = os.listdir(directory)  # once per switch of files
    except OSError:
        return
    for name in names:
        parsed = parse_name(name) if name.startswith(PREFIX) else None
        if parsed is not None:
            ours, generation = parsed[0][0] == key, parsed[0][1]
        elif name.startswith(snapshot_start) and name.endswith(".json"):
            ours, generation = True, name[len(snapshot_start) : -len(".json")]
        else:
            continue
        path = directory / name
        try:
            if ours and generation not in kept and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            continue
