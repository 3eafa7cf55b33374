"""One model's live rollout state (weights, shadow, rollbacks, events) and how it reads: the
figures a version is judged on and the window's log line. Rollout (server/models/rollout.py) keeps
one per loaded model and changes it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.models.rollback import Figures, RollbackMonitor, WindowReport
from server.models.shadow import ShadowFigures, ShadowRunner
from server.models.traffic import RollbackThresholds, ShadowPolicy, Slices, TrafficPolicy

if TYPE_CHECKING:
    from server.models.versions import ModelEntry, ModelVersion

MAX_EVENTS = 20  # rollback events kept per model for the status


MANUAL_REASON = "rolled back by an operator"  # an operator's rollback without a reason


@dataclass(frozen=True, slots=True)
class EventOrigin:
    """Under --workers: the logged change a rollback event came from, so that any worker can show
    the event as applying that change itself would have (a snapshot's reader: event_seen_by)."""

    worker: int  # the worker that received the operator's rollback, or whose window decided it
    kind: str  # "manual" or "auto"
    reason: str  # as logged: the operator's reason ("": none given) or the window's verdict


@dataclass(frozen=True, slots=True)
class RollbackEvent:
    version: int
    trigger: str  # "auto" or "manual"; "shared" on a worker that followed another's
    reason: str
    unix_time: float
    origin: EventOrigin | None = None  # under --workers: the change it came from


def seen_by(origin: EventOrigin, worker: int) -> tuple[str, str]:
    """(trigger, reason) of the event `origin`'s change makes on `worker`: its own on the worker
    that logged it, "shared" and naming that worker on the others (rollout_share.py)."""
    if origin.worker == worker:
        return origin.kind, (origin.reason or MANUAL_REASON) if origin.kind == "manual" else origin.reason
    reason = "".join(c if c.isprintable() else " " for c in origin.reason)  # another's text: one line
    if origin.kind == "auto":
        return "shared", f"rollback from worker {origin.worker}: {reason}"
    return "shared", f"rollback from worker {origin.worker} (manual): {reason or 'by an operator'}"


def event_seen_by(event: RollbackEvent, worker: int) -> RollbackEvent:
    """`event`, recorded by any worker, as `worker` recorded it (or would have) applying its change."""
    if event.origin is None:  # not a logged change's (one process)
        return event
    trigger, reason = seen_by(event.origin, worker)
    return RollbackEvent(event.version, trigger, reason, event.unix_time, event.origin)


@dataclass(slots=True)
class ModelRollout:
    """One model's live rollout state (for one loaded set of its versions)."""

    entry: ModelEntry
    config_policy: TrafficPolicy | None
    weights: dict[int, int] | None  # None: no policy, the newest version takes every request
    slices: Slices | None  # the weights as routing slices (set with `set_weights`)
    sticky_key: str
    shadow: ShadowRunner | None
    rollback: RollbackThresholds | None
    monitor: RollbackMonitor
    source: str = "config"  # who set the weights last: "config", "admin" or "rollback"
    shadow_figures: ShadowFigures = field(default_factory=ShadowFigures)
    rolled_back: set[int] = field(default_factory=set)
    events: deque[RollbackEvent] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    last_window: WindowReport | None = None
    held: bool = False  # the model was evicted: carry this state onto its next load (Rollout.hold)
    shadow_promoted: bool = False  # the shadow version was promoted: no longer shown as the shadow
    # The versions served when built (the entry's own are cleared when it is unloaded).
    entry_versions: frozenset[int] = frozenset()
    # What each of them was loaded from (ModelVersion.fingerprint): an eviction clears the entry's.
    version_files: dict[int, tuple[object, ...]] = field(default_factory=dict)
    files: str = ""  # under --workers: what the versions were loaded from (rollout_ops.generation)
    generation: str = ""  # under --workers: the change log it follows (rollout_periods.py)
    log_seq: int = 0  # under --workers: the last change of the generation's log applied to this state
    # Under --workers: the logged rollbacks applied to this state, (version, the worker that logged
    # it, "manual" or "auto") -> count, so that a snapshot's reader counts the ones it skipped.
    log_rollbacks: dict[tuple[int, int, str], int] = field(default_factory=dict)

    def set_weights(self, weights: dict[int, int] | None) -> None:
        self.weights = weights
        self.slices = None if weights is None else Slices.of(weights)

    def stable(self) -> int:
        """The version with the most weight (ties: the older); the newest without a policy."""
        if not self.weights or not any(self.weights.values()):
            return self.entry.order[0]
        return max(sorted(self.weights), key=lambda v: self.weights[v] if self.weights else 0)

    def candidates(self) -> list[int]:
        stable = self.stable()
        out = {v for v, w in (self.weights or {}).items() if w > 0 and v != stable}
        if self.shadow is not None and self.shadow.policy.fraction > 0:
            out.add(self.shadow.policy.version)
        out.discard(stable)
        return sorted(out)


def stop_shadow(state: ModelRollout) -> None:
    """`state`'s shadow copies stop (a rollback, a promotion): its runner is replaced by one
    mirroring nothing, which keeps the figures gathered so far."""
    if state.shadow is not None:
        state.shadow.cancel()
        p = state.shadow.policy
        state.shadow = ShadowRunner(
            ShadowPolicy(p.version, 0.0, p.timeout_s, p.max_queue, p.max_in_flight), state.shadow_figures
        )


def figures_of(served: ModelVersion) -> Figures:
    """A version's cumulative figures from its statistics: backend failures and run timeouts are
    its errors (client mistakes, deadlines and cancellations are not); requests shed for the work
    queued ahead, expired in its queue or computed too late count as latency above every bound (a
    canary too slow for any deadline was never rolled back: it had no successes to judge).
    Requests refused for their deadline alone count only when the stable version was fast
    enough for them (Figures.charged)."""
    s = served.stats
    missed = s.rejections["overloaded"] + s.expired + s.late
    latency, refused = tuple(s.request_hist.counts), tuple(s.deadline_left_hist.counts)
    return Figures(s.success.count, s.failures["BACKEND"], latency, missed, "requests", refused)


def window_line(report: WindowReport, state: ModelRollout) -> str:
    parts = []
    for version, f in sorted(report.figures.items()):
        p99 = f.quantile_s(0.99)
        p99_text = "-" if p99 is None else "inf" if math.isinf(p99) else f"{p99 * 1000:g}ms"
        missed = f" missed_deadline={f.missed}" if f.missed else ""
        missed += f" deadline_refused={sum(f.refused)}" if any(f.refused) else ""
        parts.append(f"v{version} n={f.requests} err={f.error_rate:.1%}{missed} p99<={p99_text}")
    if state.shadow is not None:
        s = state.shadow_figures
        agree = f"{s.argmax_agree / s.argmax_rows:.1%}" if s.argmax_rows else "-"  # none compared
        parts.append(
            f"shadow v{state.shadow.policy.version}: mirrored={s.mirrored} compared={s.compared} "
            f"errors={s.errors} shed={s.shed} dropped={s.dropped} max_abs_diff={s.max_abs_diff:g} "
            f"argmax_agree={agree}"
        )
    return "; ".join(parts)
