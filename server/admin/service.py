"""sluiceway.admin.v1.Admin: rollout status and changes, served on the inference port.

Every RPC needs the `admin` scope when bearer-token auth is on (server/security/auth.py). Errors
are answered through the one exception table (server/errors.py): an unknown model or version is
NOT_FOUND, a bad weight INVALID_ARGUMENT, a change leaving no version serving FAILED_PRECONDITION.

Under `--workers N` a change goes through the workers' shared log (server/models/rollout_share.py):
the worker that got it checks it as one process would, applies it and answers; the others apply
it within rollout_share.CHECK_S. Other workers' changes taking its number every try answer ABORTED
(retry), a shared directory gone UNAVAILABLE.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import grpc

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from server.errors import InvalidRequest, ModelNotReady, RolloutRefused, ShuttingDown
from server.models.manager import ModelManager
from server.models.rollback import quantile_s
from server.models.rollout import Rollout
from server.models.rollout_share import RolloutShare
from server.models.rollout_state import ModelRollout, figures_of
from server.models.traffic import MAX_WEIGHT
from server.models.versions import READY, ModelEntry
from server.protocol.answers import answers_errors_untracked

log = logging.getLogger(__name__)

SERVICE_NAME = apb.DESCRIPTOR.services_by_name["Admin"].full_name
MAX_REASON_CHARS = 500  # a rollback reason is cut here (it is logged and kept in the status)


class AdminServicer(apb_grpc.AdminServicer):
    def __init__(
        self,
        models: ModelManager,
        worker: int | None = None,
        share: RolloutShare | None = None,
        is_stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._models = models
        self._is_stopping = is_stopping
        # Under --workers N: this worker's index, and the log through which every worker applies
        # the changes any of them receives.
        self._worker = worker
        self._share = share

    def _change(
        self, entry: ModelEntry, kind: str, version: int | None, weights: Mapping[int, int], reason: str
    ) -> ModelRollout:
        """Apply a change here (and, under --workers, log it for the other workers)."""
        if self._is_stopping():  # answered OK, it had been lost with the process a moment later
            raise ShuttingDown("server is shutting down: rollout changes are not taken")
        if self._share is not None:
            return self._share.submit(entry, kind, version, weights, reason)
        if self._worker is not None:  # a worker with no shared directory: it would reach one
            raise RolloutRefused(
                "rollout changes under --workers need the workers' shared directory, which this "
                "worker was not given; set traffic_* in config.pbtxt"
            )
        if kind == "weights":
            return self._rollout.set_weights(entry, weights)
        if kind == "promote" and version is not None:
            return self._rollout.promote(entry, version)
        return self._rollout.roll_back(entry, version, reason)

    @property
    def _rollout(self) -> Rollout:
        return self._models.rollout

    def _entry(self, name: str) -> ModelEntry:
        if not name:
            raise InvalidRequest("model is empty")
        entry = self._models.entry(name)
        if entry.state != READY:
            raise ModelNotReady(f"model '{name}' is not ready ({entry.state.lower()}: {entry.reason})")
        return entry

    @answers_errors_untracked
    async def RolloutStatus(
        self, request: apb.RolloutStatusRequest, context: grpc.aio.ServicerContext
    ) -> apb.RolloutStatusResponse:
        return self._status(self._rollout.state(self._entry(request.model)))

    @answers_errors_untracked
    async def SetWeights(
        self, request: apb.SetWeightsRequest, context: grpc.aio.ServicerContext
    ) -> apb.RolloutStatusResponse:
        entry = self._entry(request.model)
        if not request.weights:
            raise InvalidRequest("weights is empty: give VERSION:WEIGHT for at least one version")
        bad = sorted(v for v in request.weights if v <= 0)
        if bad:  # as Promote's: not a version any model could serve (NOT_FOUND said it was unknown)
            raise InvalidRequest(f"weights: version must be a positive version number, got {bad[0]}")
        heavy = {v: w for v, w in request.weights.items() if w > MAX_WEIGHT}
        if heavy:
            raise InvalidRequest(f"weights: {heavy} above the largest weight, {MAX_WEIGHT}")
        return self._status(self._change(entry, "weights", None, dict(request.weights), ""))

    @answers_errors_untracked
    async def Promote(
        self, request: apb.PromoteRequest, context: grpc.aio.ServicerContext
    ) -> apb.RolloutStatusResponse:
        entry = self._entry(request.model)
        if request.version <= 0:
            raise InvalidRequest(f"version must be a positive version number, got {request.version}")
        return self._status(self._change(entry, "promote", request.version, {}, ""))

    @answers_errors_untracked
    async def Rollback(
        self, request: apb.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> apb.RolloutStatusResponse:
        entry = self._entry(request.model)
        if request.version < 0:
            raise InvalidRequest(
                f"version must be a version number (0: every candidate), got {request.version}"
            )
        version = request.version or None
        # The reason goes into log lines and the status: printable text only (a newline in it wrote
        # a line of the caller's choosing into the server's log).
        reason = "".join(c if c.isprintable() else " " for c in request.reason[:MAX_REASON_CHARS])
        return self._status(self._change(entry, "rollback", version, {}, reason))

    def _status(self, state: ModelRollout) -> apb.RolloutStatusResponse:
        status = status_message(state, self._rollout.rollbacks_of(state.entry.name))
        if self._worker is not None:  # the figures and counts are this worker's own
            status.worker = str(self._worker)
        return status


def status_message(state: ModelRollout, rollbacks: int) -> apb.RolloutStatusResponse:
    """A model's rollout state as the admin service answers it."""
    entry = state.entry
    weights = state.weights if state.weights is not None else {entry.order[0]: 100}
    total = sum(weights.values()) or 1
    # A shadow stopped by a rollback or a promotion is no candidate: "off" (or "stable"), where it
    # had still read "shadow" though nothing was mirrored (its figures stay below, at fraction 0).
    stable, candidates = state.stable(), set(state.candidates())
    out = apb.RolloutStatusResponse(
        model=entry.name,
        source=state.source if state.weights is not None else "",
        sticky_key=state.sticky_key,
        rollbacks=rollbacks,
    )
    for version in sorted(entry.versions):
        served = entry.versions[version]
        f = figures_of(served)
        s = served.stats
        requests = s.success.count + s.fail.count
        weight = weights.get(version, 0)
        role = "off"
        if version == stable:
            role = "stable"
        elif version in candidates:
            role = "candidate" if weight > 0 else "shadow"
        out.versions.append(
            apb.VersionFigures(
                version=version,
                weight=weight,
                share=weight / total,
                role=role,
                rolled_back=version in state.rolled_back,
                requests=requests,
                errors=f.errors,
                error_rate=f.errors / requests if requests else 0.0,
                p50_ms=_ms(quantile_s(f.latency, 0.5)),
                p99_ms=_ms(quantile_s(f.latency, 0.99)),
            )
        )
    if state.shadow is not None:
        g = state.shadow_figures
        out.has_shadow = True
        out.shadow.CopyFrom(
            apb.ShadowFigures(
                version=state.shadow.policy.version,
                fraction=state.shadow.policy.fraction,
                mirrored=g.mirrored,
                compared=g.compared,
                errors=g.errors,
                shed=g.shed,
                dropped=g.dropped,
                max_abs_diff=g.max_abs_diff,
                argmax_rows=g.argmax_rows,
                argmax_agree=g.argmax_agree,
                shadow_p50_ms=_ms(quantile_s(g.shadow_latency.counts, 0.5)),
                shadow_p99_ms=_ms(quantile_s(g.shadow_latency.counts, 0.99)),
                stable_p50_ms=_ms(quantile_s(g.stable_latency.counts, 0.5)),
                stable_p99_ms=_ms(quantile_s(g.stable_latency.counts, 0.99)),
            )
        )
    t = state.rollback
    if t is not None:
        out.rollback.CopyFrom(
            apb.RollbackPolicy(
                enabled=True,
                window_s=t.window_s,
                min_requests=t.min_requests,
                error_margin=t.error_margin,
                latency_margin=t.latency_margin,
            )
        )
    for event in reversed(state.events):
        out.events.append(
            apb.RollbackEvent(
                version=event.version, trigger=event.trigger, reason=event.reason, unix_time=event.unix_time
            )
        )
    return out


def _ms(seconds: float | None) -> float:
    if seconds is None:
        return 0.0
    return math.inf if math.isinf(seconds) else seconds * 1000
