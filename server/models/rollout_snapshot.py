"""Under `--workers N`: a model's rollout state after change `seq` of its generation's log, the file
that lets the log's older change files go (server/models/rollout_ops.py's compact).

A snapshot holds what the log's changes set on the config's state (weights, who set them, the
rolled-back versions, whether the shadow was stopped or promoted, the last events, each with the
change it came from: the worker that logged it, manual or automatic, the logged reason; and how many
rollbacks each worker's manual or automatic changes applied, per version), so applying it to a state
built from the same config (the same generation) leaves it as applying changes 1..seq would, each
event shown and each skipped rollback counted as the reader would have (rollout_carry.restore).
One file per log, `snap-<model>-<generation>.json`, replaced whole (a rename of a written file) and
only by a later one (under the log's lock): a reader sees the old or the new, never part.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.models.rollout_state import MAX_EVENTS, EventOrigin, RollbackEvent
from server.models.share_files import field, is_int, is_pair, read_json_object

if TYPE_CHECKING:
    from server.models.rollout_state import ModelRollout

SNAPSHOT_PREFIX = "snap-"
MAX_SNAPSHOT_BYTES = 1024 * 1024  # MAX_EVENTS events with reasons up to a change file's 16 KiB
SOURCES = ("config", "admin", "rollback")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """`model`'s rollout state in `generation` after the log's changes 1..`seq`."""

    model: str
    generation: str
    seq: int
    weights: tuple[tuple[int, int], ...] | None  # None: no policy (the newest version takes all)
    source: str  # one of SOURCES
    rolled_back: tuple[int, ...]
    shadow_stopped: bool  # a rollback stopped the shadow copies (or the shadow was promoted)
    shadow_promoted: bool
    events: tuple[RollbackEvent, ...]  # the last MAX_EVENTS, oldest first, as the writer saw them
    # Every rollback changes 1..seq applied: (version, the worker that logged it, kind, count).
    rollbacks: tuple[tuple[int, int, str, int], ...]


def snapshot_of(state: ModelRollout) -> Snapshot:
    """What the log has set on `state` so far (its config's state plus changes 1..log_seq)."""
    shadow = state.shadow
    return Snapshot(
        model=state.entry.name,
        generation=state.generation,
        seq=state.log_seq,
        weights=None if state.weights is None else tuple(sorted(state.weights.items())),
        source=state.source,
        rolled_back=tuple(sorted(state.rolled_back)),
        shadow_stopped=shadow is not None and shadow.policy.fraction == 0,
        shadow_promoted=state.shadow_promoted,
        events=tuple(state.events),
        rollbacks=tuple((v, w, k, c) for (v, w, k), c in sorted(state.log_rollbacks.items())),
    )


def snapshot_file_name(key: tuple[str, str]) -> str:
    """The snapshot's name for the log `key` (rollout_ops.log_key)."""
    return f"{SNAPSHOT_PREFIX}{key[0]}-{key[1]}.json"


def write_snapshot(directory: Path, snapshot: Snapshot, key: tuple[str, str]) -> None:
    """Replace the log's snapshot with `snapshot` whole: a rename of a written file. The caller
    holds the log's lock exclusively (rollout_ops.compact), so no older one replaces it."""
    final = directory / snapshot_file_name(key)
    temporary = directory / f".{final.name}.{os.getpid()}.tmp"
    try:
        temporary.write_text(json.dumps(snapshot_raw(snapshot)), encoding="utf-8")
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def snapshot_raw(snapshot: Snapshot) -> dict[str, object]:
    """`snapshot` as JSON values (its file; a carry change's `state`, rollout_ops.py)."""
    return {
        "model": snapshot.model,
        "generation": snapshot.generation,
        "seq": snapshot.seq,
        "weights": None if snapshot.weights is None else [list(p) for p in snapshot.weights],
        "source": snapshot.source,
        "rolled_back": list(snapshot.rolled_back),
        "shadow_stopped": snapshot.shadow_stopped,
        "shadow_promoted": snapshot.shadow_promoted,
        "events": [_event_list(e) for e in snapshot.events],
        "rollbacks": [list(r) for r in snapshot.rollbacks],
    }


def read_snapshot(path: Path) -> Snapshot:
    """The snapshot in `path`; FileNotFoundError when there is none; ValueError (or another
    OSError) when it is not one."""
    return snapshot_from_raw(read_json_object(path, MAX_SNAPSHOT_BYTES))


def snapshot_from_raw(raw: dict[str, object]) -> Snapshot:
    """The snapshot `raw` (snapshot_raw's form) holds; ValueError naming a field that is wrong."""
    weights = raw.get("weights")
    if weights is not None and not (isinstance(weights, list) and all(is_pair(p) for p in weights)):
        raise ValueError("field 'weights' is neither null nor a list of [version, weight] pairs")
    if weights is not None and (any(p[1] < 0 for p in weights) or not any(p[1] > 0 for p in weights)):
        # No state writes these: restore() raised on them, failing the model's load (catch_up).
        raise ValueError("field 'weights' has a negative weight or none positive")
    source = field(raw, "source", str)
    if source not in SOURCES:
        raise ValueError(f"field 'source' is {source!r}, not one of {SOURCES}")
    rolled_back = field(raw, "rolled_back", list)
    if not all(is_int(v) for v in rolled_back):
        raise ValueError("field 'rolled_back' is not a list of version numbers")
    events = field(raw, "events", list)
    if len(events) > MAX_EVENTS or not all(_is_event(e) for e in events):
        raise ValueError(f"field 'events' is not a list of up to {MAX_EVENTS} events")
    rollbacks = field(raw, "rollbacks", list)
    if not all(_is_count(r) for r in rollbacks):
        raise ValueError("field 'rollbacks' is not a list of [version, worker, kind, count] counts")
    return Snapshot(
        model=field(raw, "model", str),
        generation=field(raw, "generation", str),
        seq=field(raw, "seq", int),
        weights=None if weights is None else tuple((p[0], p[1]) for p in weights),
        source=source,
        rolled_back=tuple(rolled_back),
        shadow_stopped=_flag(raw, "shadow_stopped"),
        shadow_promoted=_flag(raw, "shadow_promoted"),
        events=tuple(RollbackEvent(e[0], e[1], e[2], float(e[3]), _origin(e[4])) for e in events),
        rollbacks=tuple((r[0], r[1], r[2], r[3]) for r in rollbacks),
    )


def _event_list(event: RollbackEvent) -> list[object]:
    origin = event.origin
    plain = None if origin is None else [origin.worker, origin.kind, origin.reason]
    return [event.version, event.trigger, event.reason, event.unix_time, plain]


def _origin(value: list[object] | None) -> EventOrigin | None:
    if value is None:
        return None
    worker, kind, reason = value
    assert isinstance(worker, int) and isinstance(kind, str) and isinstance(reason, str)  # _is_event
    return EventOrigin(worker, kind, reason)


def _is_event(value: object) -> bool:
    """[version, trigger, reason, unix time, origin: null or [worker, "manual"|"auto", reason]]"""
    return (
        isinstance(value, list)
        and len(value) == 5
        and is_int(value[0])
        and isinstance(value[1], str)
        and isinstance(value[2], str)
        and isinstance(value[3], (int, float))
        and not isinstance(value[3], bool)
        and (value[4] is None or _is_origin(value[4]))
    )


def _is_origin(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and is_int(value[0])
        and value[1] in ("manual", "auto")
        and isinstance(value[2], str)
    )


def _is_count(value: object) -> bool:
    """[version, worker, "manual"|"auto", count]"""
    return (
        isinstance(value, list)
        and len(value) == 4
        and is_int(value[0])
        and is_int(value[1])
        and value[2] in ("manual", "auto")
        and is_int(value[3])
        and value[3] > 0
    )


def _flag(raw: dict[str, object], name: str) -> bool:
    value = raw.get(name)
    if not isinstance(value, bool):
        raise ValueError(f"field '{name}' is not true or false")
    return value
