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
from collections.abc import Iterable
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
    In one process: after an eviction (Rollout.hold) that loads the same versions under the same
    policy, and after a reload that kept serving what the state names (`kept_serving`)."""
    if shared:
        return old.generation == new.generation
    if not old.held:
        return kept_serving(old, new)
    if same_load(old, new.config_policy, new.entry.versions):
        return True
    log.info("rollout: model %s reloaded with another policy or versions: its config's applies",
             new.entry.name)  # fmt: skip
    return False


def kept_serving(old: ModelRollout, new: ModelRollout) -> bool:
    """A reload that keeps `old`'s state: the config's traffic policy unchanged, and every version
    the state names (weighted, rolled back, the shadow) kept serving as it was (the same instance:
    ModelManager keeps a version whose files did not change). A version added beside them, or a
    config rewritten with the same text, had reset the state: a rolled-back canary came back at
    its config's weight and failed requests again. A named version loaded from new files, or
    another policy, starts from the config's."""
    if old.config_policy != new.config_policy:
        return False
    named = {v for v, w in (old.weights or {}).items() if w > 0} | old.rolled_back
    if old.shadow is not None:
        named.add(old.shadow.policy.version)
    return served_as_before(old, new, named) == named


def served_as_before(old: ModelRollout, new: ModelRollout, versions: Iterable[int]) -> set[int]:
    """Those of `versions` `new` serves as the same instances `old` did (files unchanged)."""
    now, before = new.entry.versions, old.entry.versions
    return {v for v in versions if v in now and now[v] is before.get(v)}


def same_load(old: ModelRollout, policy: TrafficPolicy | None, served: Iterable[int]) -> bool:
    """A load reading `policy` and serving `served` takes `old`'s operator state (`carry`):
    otherwise its config's is the news."""
    return old.config_policy == policy and set(old.entry_versions) == set(served)


def carried_weights(
    old: ModelRollout, policy: TrafficPolicy | None, served: Iterable[int]
) -> dict[int, int] | None:
    """The weights a load reading `policy` and serving `served` routes by when it takes `old`'s
    state (kept through an eviction: Rollout.kept), as the lazy model's early judge predicts it;
    None when that load routes by its config's (or `old` sets none that route anything)."""
    if not same_load(old, policy, served) or not any(w > 0 for w in (old.weights or {}).values()):
        return None
    return dict(old.weights or {})


def carry_rollbacks(old: ModelRollout, new: ModelRollout) -> bool:
    """A reload that does not carry `old` whole (a version it names has new files, in one
    process): the config's weights apply, but the versions `old` rolled back that are still served
    as they were stay rolled back (weight 0, their events kept). A rolled-back canary had come back
    at its config's weight when the stable version was redeployed. False when none does, or when
    nothing would be left to route."""
    found = rollbacks_kept(old, new)
    if found is None:
        return False
    kept, weights = found
    new.set_weights(weights)
    new.rolled_back, new.source, new.events = set(kept), "rollback", old.events
    if new.shadow is not None and new.shadow.policy.version in kept:
        stop_shadow(new)
    log.info("rollout: model %s reloaded with new files for a version its weights name: the config's "
             "weights, version(s) %s kept rolled back: %s", new.entry.name,
             ", ".join(map(str, sorted(kept))), format_weights(weights))  # fmt: skip
    return True


def rollbacks_kept(old: ModelRollout, new: ModelRollout) -> tuple[set[int], dict[int, int]] | None:
    """carry_rollbacks' rule: (the versions that stay rolled back, the weights `new` routes by);
    None when it keeps nothing."""
    if old.config_policy != new.config_policy:
        return None
    kept = served_as_before(old, new, old.rolled_back)
    others = [v for v in new.entry.versions if v not in kept]
    if not kept or not others:
        return None
    # No policy: the newest version takes every request, so the newest not rolled back does.
    weights = dict(new.weights) if new.weights is not None else {max(others): 100}
    weights.update(dict.fromkeys(kept, 0))
    return (kept, weights) if any(w > 0 for w in weights.values()) else None


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
