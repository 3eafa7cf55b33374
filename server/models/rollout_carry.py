"""How a model's operator rollout state outlives a rebuild of its state: carried onto the state of
the model's next load, or restored from the workers' log snapshot.

Separate from Rollout (rollout.py), which routes and changes one live state, because this is the
rule for moving what operators and rollbacks set (weights, who set them, rolled-back versions,
events, a stopped or promoted shadow) from one state to another: in one process after an eviction
(Rollout.hold) or a reload that kept the versions it names serving, under --workers when the same
files (generation) are loaded again, and from a snapshot once the log's older change files are
gone (rollout_snapshot.py).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from server.models.rollout_snapshot import Snapshot
from server.models.rollout_state import (
    MAX_EVENTS,
    EventOrigin,
    ModelRollout,
    event_seen_by,
    seen_by,
    stop_shadow,
)
from server.models.traffic import format_weights

if TYPE_CHECKING:
    from server.models.traffic import TrafficPolicy

log = logging.getLogger(__name__)


def carries(old: ModelRollout, new: ModelRollout, shared: bool) -> bool:
    """Whether `old`'s operator state goes onto `new`. Under --workers (`shared`): exactly when the
    same files were loaded again (evicted or reloaded), so the log goes on applying on top of it;
    other files start from the config and their own log, as every worker loading them does (its
    change 1 the state the first of them carried: carried_snapshot).
    In one process: after a reload, or an eviction's load (Rollout.hold), that serves what the
    state names from the same files (`kept_serving`). An evicted model loaded again after a
    version it names got new files had kept the operator's weights (by version numbers alone),
    where a reload takes the config's, as under --workers."""
    if shared:
        return old.files == new.files
    return kept_serving(old, new)


def kept_serving(old: ModelRollout, new: ModelRollout) -> bool:
    """A reload that keeps `old`'s state: the config's traffic policy unchanged, and every version
    the state names (weighted, rolled back, the shadow) kept serving as it was (the same instance:
    ModelManager keeps a version whose files did not change; or, after an eviction, the same
    files). A version added beside them, or a config rewritten with the same text, had reset the
    state: a rolled-back canary came back at its config's weight and failed requests again. A
    named version loaded from new files, or another policy, starts from the config's."""
    if old.config_policy != new.config_policy:
        return False
    named = named_versions(old)
    return served_as_before(old, new, named) == named


def named_versions(state: ModelRollout) -> set[int]:
    """The versions `state`'s operator changes name: weighted, rolled back, the shadow."""
    named = {v for v, w in (state.weights or {}).items() if w > 0} | state.rolled_back
    if state.shadow is not None:
        named.add(state.shadow.policy.version)
    return named


def served_as_before(old: ModelRollout, new: ModelRollout, versions: Iterable[int]) -> set[int]:
    """Those of `versions` `new` serves as `old` did: the same instances (a reload keeps a version
    whose files did not change), or loaded again from the same files (an eviction's load)."""
    now, before, files = new.entry.versions, old.entry.versions, old.version_files
    return {
        v
        for v in versions
        if v in now and (now[v] is before.get(v) or (bool(files.get(v)) and now[v].fingerprint == files[v]))
    }


def carried_weights(
    old: ModelRollout, policy: TrafficPolicy | None, files: Mapping[int, tuple[object, ...]]
) -> dict[int, int] | None:
    """The weights a load reading `policy` and serving versions loaded from `files` (version ->
    its fingerprint) routes by when it takes what `old` keeps (an evicted state: Rollout.kept),
    as the lazy model's early judge predicts it: kept_serving's, else rollbacks_kept's rule, on
    the files; None when that load routes by its config's."""
    if old.config_policy != policy:
        return None
    same = {v for v, f in files.items() if f and old.version_files.get(v) == f}
    if named_versions(old) <= same:
        weights = old.weights or {}
        return dict(weights) if any(w > 0 for w in weights.values()) else None
    found = weights_without(old.rolled_back & same, files, None if policy is None else policy.weights)
    return None if found is None else found[1]


def carry_rollbacks(old: ModelRollout, new: ModelRollout) -> bool:
    """A reload that does not carry `old` whole (a version it names has new files, or is no longer
    served, in one process): the config's weights apply, but the versions `old` rolled back that are
    still served as they were stay rolled back (weight 0, their events kept). A rolled-back canary
    had come back at its config's weight when the stable version was redeployed. False when none
    does, or when nothing would be left to route."""
    found = rollbacks_kept(old, new)
    if found is None:
        return False
    kept, weights = found
    new.set_weights(weights)
    new.rolled_back, new.source, new.events = set(kept), "rollback", old.events
    if new.shadow is not None and new.shadow.policy.version in kept:
        stop_shadow(new)
    log.info("rollout: model %s reloaded with new files for, or without, a version its weights name: "
             "the config's weights, version(s) %s kept rolled back: %s", new.entry.name,
             ", ".join(map(str, sorted(kept))), format_weights(weights))  # fmt: skip
    return True


def rollbacks_kept(old: ModelRollout, new: ModelRollout) -> tuple[set[int], dict[int, int]] | None:
    """carry_rollbacks' rule: (the versions that stay rolled back, the weights `new` routes by);
    None when it keeps nothing."""
    if old.config_policy != new.config_policy:
        return None
    return weights_without(served_as_before(old, new, old.rolled_back), new.entry.versions, new.weights)


def weights_without(
    kept: set[int], served: Iterable[int], weights: Mapping[int, int] | None
) -> tuple[set[int], dict[int, int]] | None:
    """(`kept`, the config's `weights` with the versions in `kept` at 0), the weights a load
    serving `served` routes by when those stay rolled back; None when none does, or when nothing
    would be left to route."""
    others = [v for v in served if v not in kept]
    if not kept or not others:
        return None
    # No policy: the newest version takes every request, so the newest not rolled back does.
    result = dict(weights) if weights is not None else {max(others): 100}
    result.update(dict.fromkeys(kept, 0))
    return (kept, result) if any(w > 0 for w in result.values()) else None


def carried_snapshot(old: ModelRollout, new: ModelRollout) -> Snapshot | None:
    """Under --workers, a load of other files (`new`, another generation) after `old`'s: the
    state one process would carry onto it (kept_serving, else rollbacks_kept), as change 1 of the
    new generation's log (rollout_share.py); None when the config's state is the news. Its
    rollback counts start again (the counters on /metrics outlive the reload anyway)."""
    if old.held:  # evicted: its versions were loaded again, never served as before
        return None
    stopped = new.shadow is not None and old.shadow is not None and old.shadow.policy.fraction == 0
    if kept_serving(old, new):
        if old.source == "config" and not old.rolled_back and not old.shadow_promoted and not stopped:
            return None
        weights, source, rolled_back, promoted = old.weights, old.source, old.rolled_back, old.shadow_promoted
    else:
        found = rollbacks_kept(old, new)
        if found is None:
            return None
        rolled_back, weights = found
        source, promoted = "rollback", False
        stopped = new.shadow is not None and new.shadow.policy.version in rolled_back
    return Snapshot(
        model=new.entry.name,
        generation=new.generation,
        seq=1,
        weights=None if weights is None else tuple(sorted(weights.items())),
        source=source,
        rolled_back=tuple(sorted(rolled_back)),
        shadow_stopped=stopped,
        shadow_promoted=promoted,
        events=tuple(old.events),
        rollbacks=(),
    )


def carry(old: ModelRollout, new: ModelRollout) -> None:
    """`old`'s operator state onto `new`, a state `carries` said takes it."""
    new.set_weights(None if old.weights is None else dict(old.weights))
    new.source, new.rolled_back, new.events = old.source, set(old.rolled_back), old.events
    new.shadow_promoted, new.log_seq = old.shadow_promoted, old.log_seq
    new.log_rollbacks = dict(old.log_rollbacks)
    if old.shadow is not None and old.shadow.policy.fraction == 0:  # stopped by a rollback
        stop_shadow(new)
    if old.source != "config":
        log.info("rollout: model %s loaded again, the versions its weights name unchanged: "
                 "weights %s (%s) carried over",
                 new.entry.name, format_weights(new.weights or {}), old.source)  # fmt: skip


def restore(state: ModelRollout, snapshot: Snapshot, worker: int) -> dict[tuple[int, str], int]:
    """Under --workers: the log's snapshot after change `snapshot.seq` (rollout_snapshot.py) onto
    `state`, worker `worker`'s state of the same generation that has applied fewer of its
    changes: it ends as applying them would, its events as this worker would have recorded them
    (not as the snapshot's writer did). Returns the rollbacks of the changes it skipped,
    (version, trigger as this worker's) -> count, for its rollback counters (Rollout.count_rollbacks)."""
    skipped = skipped_rollbacks(state, snapshot, worker)
    state.log_rollbacks = {(v, w, k): c for v, w, k, c in snapshot.rollbacks}
    state.set_weights(None if snapshot.weights is None else dict(snapshot.weights))
    state.source, state.rolled_back = snapshot.source, set(snapshot.rolled_back)
    state.shadow_promoted = snapshot.shadow_promoted
    state.events = deque((event_seen_by(e, worker) for e in snapshot.events), maxlen=MAX_EVENTS)
    if snapshot.shadow_stopped and state.shadow is not None and state.shadow.policy.fraction > 0:
        stop_shadow(state)
    state.log_seq = snapshot.seq
    log.info("rollout: model %s took the workers' state after change %d: weights %s (%s)",
             state.entry.name, snapshot.seq, format_weights(state.weights or {}),
             state.source)  # fmt: skip
    return skipped


def skipped_rollbacks(state: ModelRollout, snapshot: Snapshot, worker: int) -> dict[tuple[int, str], int]:
    """The rollbacks the snapshot's changes applied that `state` has not: (version, trigger as
    worker `worker` records it: its own `manual`/`auto`, the others' `shared`) -> count."""
    skipped: dict[tuple[int, str], int] = {}
    for version, writer, kind, count in snapshot.rollbacks:
        missed = count - state.log_rollbacks.get((version, writer, kind), 0)
        if missed > 0:
            trigger = seen_by(EventOrigin(writer, kind, ""), worker)[0]
            skipped[(version, trigger)] = skipped.get((version, trigger), 0) + missed
    return skipped
