"""Rollout: which version answers a request that names none, per model, and what operators and
the automatic rollback change about it (weights, promote, roll back, shadow).

A model's rollout state is read from its config's traffic policy (server/models/traffic.py) the
first time a request is routed after the model was (re)loaded: a reload starts again from the
config, so changes made through the admin service last until the next reload. Rollback counts
outlive reloads (they are /metrics counters). Under `--workers N` a model's state is its config's
policy plus its generation's change log (server/models/rollout_share.py): a reload that loads the
same files (the same generation) keeps the state (rollout_carry.py), and a state built anew catches
up with the log before it routes anything.

A request's routing key and the version a split picks for it are routing_key.py's rule, shared
with the early judge of a lazy model not loaded.

Everything runs on the event loop; /metrics reads `rollback_counts` from its own thread (a copy).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from server.errors import InvalidRequest, ModelNotFound, RolloutRefused
from server.models.rollback import Figures, RollbackMonitor
from server.models.rollout_carry import carries, carry, carry_rollbacks
from server.models.rollout_ops import generation
from server.models.rollout_shared_log import SharedLog
from server.models.rollout_state import (
    MANUAL_REASON,
    EventOrigin,
    ModelRollout,
    RollbackEvent,
    figures_of,
    stop_shadow,
    window_line,
)
from server.models.routing_key import RoutedRequest, pick_version, routing_key
from server.models.shadow import ShadowFigures, ShadowRunner
from server.models.traffic import format_weights, parse_policy, point_of

if TYPE_CHECKING:
    from batcher.types import Tensors
    from server.models.versions import ModelEntry, ModelVersion

__all__ = ["ModelRollout", "Rollout", "figures_of"]

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 30.0  # a window for the shadow log line when no rollback is configured
# The kind and HELP of each name gauge_values yields (server/observability/metrics.py's Catalog).
METRICS = {
    "sluiceway_shadow_requests": ("gauge", "Shadow copies by outcome (cumulative): mirrored, compared, "
                                  "errors, shed, dropped"),
    "sluiceway_shadow_max_abs_diff": ("gauge", "Largest absolute difference between a shadow copy's "
                                      "outputs and the served version's"),
    "sluiceway_shadow_argmax_agreement": ("gauge", "Share of compared rows whose argmax agreed (0..1)"),
}  # fmt: skip


class Rollout:
    """Every model's rollout state, built lazily per loaded entry."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()  # routing, not secrets
        self._models: dict[str, ModelRollout] = {}
        self._rollbacks: dict[tuple[str, int, str], int] = {}  # (model, version, trigger) -> count
        # Under --workers: every change goes through the workers' log (rollout_share.py).
        self.shared: SharedLog | None = None

    # -- the request path -------------------------------------------------------------------

    def route(self, entry: ModelEntry, request: RoutedRequest, point: float | None = None) -> int:
        """The version number for a request that names none. `point`: the random point drawn for it
        before its lazy model's load (`draw`), so that the version it was judged by serves it."""
        state = self.state(entry)
        if state.slices is None:
            return entry.order[0]
        now = self._clock()
        if state.monitor.due(now):
            self._close_window(state, now)  # may roll a candidate back: slices change
        draw = self._rng.random if point is None else lambda: point
        return pick_version(state.slices, state.sticky_key, request, draw)

    def draw(self) -> float:
        """A random point for routing a request without a routing key (Slices.pick)."""
        return self._rng.random()

    def answered(self, served: ModelVersion, request: RoutedRequest, explicit: bool, inputs: Tensors,
                 rows: int, outputs: Tensors | None, elapsed_ns: int) -> None:  # fmt: skip
        """A request was answered OK by `served`: mirror it to the shadow candidate when due."""
        state = self._models.get(served.name)
        if explicit or outputs is None or state is None or state.shadow is None:
            return
        shadow = state.shadow
        policy = shadow.policy
        if served.version == policy.version or state.entry.versions.get(served.version) is not served:
            return  # the candidate's own answers, or a version a reload has replaced
        key = routing_key(request, state.sticky_key)
        if (point_of(key, b"shadow:") if key else self._rng.random()) >= policy.fraction:
            return
        candidate = state.entry.versions.get(policy.version)
        if candidate is not None:
            shadow.offer(candidate, inputs, rows, outputs, elapsed_ns)

    # -- state ------------------------------------------------------------------------------

    def state(self, entry: ModelEntry) -> ModelRollout:
        state = self._models.get(entry.name)
        if state is None or state.entry is not entry:
            if state is not None and state.shadow is not None:
                state.shadow.cancel()
            built = self._build(entry)
            carried = None
            if state is not None and carries(state, built, self.shared is not None):
                carry(state, built)  # an operator's state outlives the rebuild (rollout_carry.py)
            elif self.shared is not None:  # other files: their period's log (rollout_periods.py)
                switching = state is not None and not state.held
                built.generation = self.shared.log_generation(entry.name, built.files, switching)
                if state is not None:
                    carried = self.shared.carry_proposal(state, built)  # logged, not applied
            elif state is not None:
                carry_rollbacks(state, built)  # its rollbacks of versions whose files are the same
            state = self._models[entry.name] = built
            if self.shared is not None:  # stored first: the log's changes find this state
                self.shared.built(entry, carried)
        return state

    def rebase(self, entry: ModelEntry, generation: str) -> None:
        """Under --workers: follow the log `generation` of the same files from the config's state
        (this worker was left on an older period's: rollout_periods.py)."""
        old = self._models.pop(entry.name, None)
        if old is not None and old.shadow is not None:
            old.shadow.cancel()
        built = self._build(entry)
        built.generation = generation
        self._models[entry.name] = built
        if self.shared is not None:
            self.shared.built(entry)

    def built_for(self, entry: ModelEntry) -> ModelRollout | None:
        """`entry`'s state if one was built for this load of it (none is built here)."""
        state = self._models.get(entry.name)
        return state if state is not None and state.entry is entry else None

    def kept(self, name: str) -> ModelRollout | None:
        """`name`'s state kept for its next load (evicted: `hold`); None when there is none."""
        state = self._models.get(name)
        return state if state is not None and state.held else None

    def names(self) -> list[str]:
        """The models with a state here."""
        return list(self._models)

    def forget(self, name: str) -> None:
        """The model was unloaded: its state and its /metrics series go (they were shown for ever)."""
        state = self._models.pop(name, None)
        if state is not None and state.shadow is not None:
            state.shadow.cancel()
        if state is not None and self.shared is not None:
            self.shared.unloaded(name)  # its next load starts from the config, as in one process

    def hold(self, name: str) -> None:
        """The model was evicted to fit the memory budget: its next load, by a request, is not an
        operator's reload, so the weights, rollbacks and events set since its config carry over
        (a rolled-back canary came back at its config's weight by itself)."""
        state = self._models.get(name)
        if state is not None:
            state.held = True
            if state.shadow is not None:
                state.shadow.cancel()

    def _build(self, entry: ModelEntry) -> ModelRollout:
        config = entry.versions[entry.order[0]].config
        policy = parse_policy(config, f"model '{entry.name}'", entry.versions)  # checked at load
        figures = ShadowFigures()
        shadow = None if policy is None or policy.shadow is None else ShadowRunner(policy.shadow, figures)
        rollback = None if policy is None else policy.rollback
        window_s = rollback.window_s if rollback is not None else DEFAULT_WINDOW_S
        state = ModelRollout(
            entry=entry,
            config_policy=policy,
            weights=None,
            slices=None,
            sticky_key="" if policy is None else policy.sticky_key,
            shadow=shadow,
            rollback=rollback,
            monitor=RollbackMonitor(window_s, self._clock(), {}),
            shadow_figures=figures,
        )
        state.set_weights(None if policy is None else dict(policy.weights))
        state.entry_versions = frozenset(entry.versions)
        state.version_files = {number: version.fingerprint for number, version in entry.versions.items()}
        if self.shared is not None:  # the log's key; a hash of every version's fingerprint
            state.files = state.generation = generation(entry)  # the log: Rollout.state sets it
        state.monitor = RollbackMonitor(window_s, self._clock(), self._figures(state))  # needs the state
        if policy is not None:
            log.info("rollout: model %s traffic %s%s", entry.name, format_weights(policy.weights),
                     "" if shadow is None else f", shadow to version {shadow.policy.version}")  # fmt: skip
        return state

    def _figures(self, state: ModelRollout) -> dict[int, Figures]:
        """Each served version's cumulative figures; the shadow candidate's are its copies' when
        it takes no weighted traffic."""
        out = {v: figures_of(served) for v, served in state.entry.versions.items()}
        shadow = state.shadow
        if shadow is not None and not (state.weights or {}).get(shadow.policy.version):
            f = state.shadow_figures
            out[shadow.policy.version] = Figures(
                f.compared, f.errors, tuple(f.shadow_latency.counts), 0, "shadow"
            )
        return out

    def _close_window(self, state: ModelRollout, now: float) -> None:
        stable = state.stable()
        report = state.monitor.close(now, self._figures(state), stable, state.candidates(), state.rollback)
        state.last_window = report
        if any(f.requests for f in report.figures.values()):
            log.info("rollout: model %s window %.0f s: %s", state.entry.name, report.seconds,
                     window_line(report, state))  # fmt: skip
        for version, reason in report.verdicts.items():
            if self.shared is not None:  # in the workers' order, after the changes logged before
                self.shared.auto_rollback(state.entry, version, reason)
            else:
                self._roll_back(state, version, "auto", reason)

    # -- operator actions (the admin service) -----------------------------------------------

    @staticmethod
    def check_weights(entry: ModelEntry, weights: Mapping[int, int]) -> None:
        """Raise what `set_weights(entry, weights)` would refuse, changing nothing."""
        unknown = sorted(set(weights) - set(entry.versions))
        if unknown:
            raise ModelNotFound(
                f"model '{entry.name}' does not serve versions {unknown} (served: {entry.order})"
            )
        if not any(w > 0 for w in weights.values()):
            raise InvalidRequest("weights: at least one version needs a positive weight")

    def set_weights(self, entry: ModelEntry, weights: Mapping[int, int]) -> ModelRollout:
        state = self.state(entry)
        self.check_weights(entry, weights)
        state.set_weights(dict(weights))
        state.source = "admin"
        state.rolled_back -= {v for v, w in weights.items() if w > 0}
        log.warning("rollout: model %s weights set to %s", entry.name, format_weights(weights))
        return state

    def promote(self, entry: ModelEntry, version: int) -> ModelRollout:
        """`version` takes every request; it stops being a shadow candidate."""
        state = self.set_weights(entry, {version: 100})
        if state.shadow is not None and state.shadow.policy.version == version:
            stop_shadow(state)
            state.shadow_promoted = True
        return state

    def roll_back(
        self, entry: ModelEntry, version: int | None, reason: str, origin: EventOrigin | None = None
    ) -> ModelRollout:
        """Take `version` (None: every candidate) out of traffic and out of shadowing (`origin`:
        under --workers, the logged change this is)."""
        state = self.state(entry)
        for target in self.rollback_targets(entry, version):
            if not self._in_traffic(state, target):  # already out: nothing to do, nothing counted
                log.info("rollout: model %s version %d takes no traffic already", entry.name, target)
                continue
            self._roll_back(state, target, "manual", reason or MANUAL_REASON, origin)
        return state

    def rollback_targets(self, entry: ModelEntry, version: int | None) -> list[int]:
        """The versions `roll_back(entry, version, ...)` takes out; raise what it would refuse,
        changing nothing."""
        state = self.state(entry)
        targets = state.candidates() if version is None else [version]
        # Without a policy the newest version takes every request: it cannot be rolled back either
        # (it was answered OK and counted, and kept serving).
        weights = state.weights if state.weights is not None else {entry.order[0]: 100}
        for target in targets:
            if target not in entry.versions:
                raise ModelNotFound(f"model '{entry.name}' does not serve version {target}")
            if weights.get(target, 0) > 0 and not any(w > 0 for v, w in weights.items() if v != target):
                raise RolloutRefused(
                    f"version {target} is the only version of '{entry.name}' taking requests; "
                    "promote or weight another version first"
                )
        return targets

    def follow(
        self,
        entry: ModelEntry,
        version: int,
        reason: str,
        origin: EventOrigin | None = None,
        trigger: str = "shared",
    ) -> bool:
        """A logged rollback of `version` (server/models/rollout_share.py, rollout_ops.py), another
        worker's (trigger "shared"; this worker's own, applied to a state built later: its own
        trigger): do the same here, unless it takes no traffic here already or is the only version
        taking requests (said in the log: the workers' states differ). True when rolled back here."""
        state = self.state(entry)
        refusal = self.auto_refusal(state, version)
        if refusal:
            if refusal != "out":
                log.warning("rollout: model %s: %s: not applied here: %s", entry.name, reason, refusal)
            return False
        self._roll_back(state, version, trigger, reason, origin)
        return True

    def auto_refusal(self, state: ModelRollout, version: int) -> str:
        """Why rolling `version` back automatically changes nothing ("out": it takes no traffic
        already) or is refused (the only version taking requests); "" when it can be."""
        others = any(w > 0 for v, w in (state.weights or {}).items() if v != version)
        if version not in state.entry.versions or not self._in_traffic(state, version):
            return "out"
        if not others:
            return f"version {version} is the only version taking requests"
        return ""

    def roll_back_auto(
        self, state: ModelRollout, version: int, reason: str, origin: EventOrigin | None = None
    ) -> None:
        """This worker's window rolled `version` back (rollout_share.py, once it is logged)."""
        self._roll_back(state, version, "auto", reason, origin)

    @staticmethod
    def _in_traffic(state: ModelRollout, version: int) -> bool:
        """`version` takes weighted requests or shadow copies now."""
        shadow = state.shadow
        mirrored = shadow is not None and shadow.policy.version == version and shadow.policy.fraction > 0
        return mirrored or (state.weights or {}).get(version, 0) > 0

    def _roll_back(
        self, state: ModelRollout, version: int, trigger: str, reason: str, origin: EventOrigin | None = None
    ) -> None:
        if state.weights is not None and state.weights.get(version, 0) > 0:
            state.set_weights({**state.weights, version: 0})
        if state.shadow is not None and state.shadow.policy.version == version:
            stop_shadow(state)
        state.rolled_back.add(version)
        state.source = "rollback"
        state.events.append(RollbackEvent(version, trigger, reason, self._wall(), origin))
        key = (state.entry.name, version, trigger)
        self._rollbacks[key] = self._rollbacks.get(key, 0) + 1
        if origin is not None:  # a logged change's: a snapshot carries its count (rollout_carry.restore)
            logged = (version, origin.worker, origin.kind)
            state.log_rollbacks[logged] = state.log_rollbacks.get(logged, 0) + 1
        log.warning(
            "rollout: model %s version %d rolled back (%s): %s", state.entry.name, version, trigger, reason
        )

    # -- reading ----------------------------------------------------------------------------

    def rollback_counts(self) -> Iterator[tuple[dict[str, str], int]]:
        """(labels, count) for sluiceway_rollbacks_total; safe from another thread."""
        for (model, version, trigger), count in dict(self._rollbacks).items():
            yield {"model": model, "version": str(version), "trigger": trigger}, count

    def gauge_values(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Each model's shadow figures as /metrics gauges (Metrics.add_gauge_source), from the
        metrics thread: copies of the dict, plain numbers read once each."""
        for name, state in dict(self._models).items():
            shadow = state.shadow
            if shadow is None:
                continue
            f = state.shadow_figures
            labels = {"model": name, "version": str(shadow.policy.version)}
            for outcome in ("mirrored", "compared", "errors", "shed", "dropped"):
                yield "sluiceway_shadow_requests", {**labels, "outcome": outcome}, getattr(f, outcome)
            yield "sluiceway_shadow_max_abs_diff", labels, f.max_abs_diff
            if f.argmax_rows:
                yield "sluiceway_shadow_argmax_agreement", labels, f.argmax_agree / f.argmax_rows

    def count_rollbacks(self, model: str, counts: Mapping[tuple[int, str], int]) -> None:
        """Count rollbacks of `model` applied without `_roll_back` ((version, trigger) -> count): the
        logged ones a state restored from the workers' snapshot skipped (rollout_carry.restore)."""
        for (version, trigger), count in counts.items():
            key = (model, version, trigger)
            self._rollbacks[key] = self._rollbacks.get(key, 0) + count

    def rollbacks_of(self, model: str) -> int:
        return sum(c for (m, _, _), c in dict(self._rollbacks).items() if m == model)
