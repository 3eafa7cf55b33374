"""A request for a lazy model not loaded: judged by the signatures the load will have, then waits
for the load within its deadline (`await_load`, called by request_path.py), the `timeout`
parameter included.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from protos import grpc_service_pb2 as pb
from server.models.early_refusals import counted_version
from server.models.lazy_sequences import SequencesBeforeLoad
from server.models.on_demand import OnDemand
from server.observability.metrics_reasons import DEADLINE_SLACK_S, record_failed
from server.protocol.controls import Controls, parse_controls, try_parse_controls
from server.protocol.declared import check_declared_by_any
from server.protocol.served_notes import note_served
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.validate import Signature


async def await_load(
    demand: OnDemand,
    sequences: SequencesBeforeLoad,
    request: pb.ModelInferRequest,
    remaining_s: float | None,
    regions: SharedMemoryRegistry | None = None,
) -> tuple[float | None, float | None]:
    """Wait for a lazy model's load within the request's deadline: its gRPC deadline, or its
    `timeout` parameter when that is sooner (it had been counted only from after the load: a 1 s
    timeout was answered OK after a 5 s load). The wait ends DEADLINE_SLACK_S before the gRPC
    deadline, so the answer naming the load reaches the caller before its own timer fires (it had
    seen only gRPC's "Deadline Exceeded"). A request the load's signatures would refuse is refused
    first, as the loaded model would (declared.py), and counted in the version it would have reached
    (early_refusals.py); so is a sequence's continuation no load could find live (`sequences`,
    lazy_sequences.py: a start waiting for the load holds its id meanwhile). What is left of the
    deadline after the wait, and the routing point drawn to judge a request naming no version (the
    traffic policy routes it by that point once loaded, as it was judged; None: none drawn)."""
    controls = try_parse_controls(request.parameters)
    with sequences.hold(request.model_name, None if controls is None else controls.sequence):
        return await _judge_and_wait(demand, request, remaining_s, regions, controls, sequences)


def _ensemble(signatures: Mapping[int, Signature]) -> bool:
    """The signatures are an ensemble's (its own: sequences are its steps' to judge)."""
    return any(signature.sequences is None for signature in signatures.values())


async def _judge_and_wait(
    demand: OnDemand,
    request: pb.ModelInferRequest,
    remaining_s: float | None,
    regions: SharedMemoryRegistry | None,
    controls: Controls | None,
    sequences: SequencesBeforeLoad,
) -> tuple[float | None, float | None]:
    began = time.monotonic()
    name = request.model_name
    signatures = await demand.signatures(name)
    point = None
    if signatures:  # an invalid request is refused without loading the model (and evicting)
        # Routed first, as the loaded model routes before its checks: a sticky key parameter of the
        # wrong type is refused here, counted nowhere (InvalidRequest), as once loaded.
        unnamed_to, point = _route_early(demand, request, controls, sequences, _ensemble(signatures))
        try:
            check_declared_by_any(signatures, request, regions, controls, unnamed_to=unnamed_to)
            if controls is not None and demand.needs_load(name) and not _ensemble(signatures):
                # Still not loaded: no sequence is live. Not so for an ensemble's sequence step,
                # loaded with live sequences while the ensemble is not: its steps judge that.
                sequences.check(name, controls.sequence)
        except Exception as exc:
            # Counted as the loaded model's refusal would be (it had been counted nowhere).
            number = counted_version(signatures, request.model_version, unnamed_to)
            if number is not None:
                stats = demand.refused_early.stats_for(name, number)
                record_failed(stats, int((time.monotonic() - began) * 1e9), exc)
                note_served(exc, str(number), stats)
            raise
    if controls is None:  # a model not judged: its refused parameter is named without loading it
        controls = parse_controls(request.parameters)
    bound = min((b for b in (remaining_s, controls.timeout_s) if b is not None), default=None)
    slack = DEADLINE_SLACK_S if bound is not None and bound == remaining_s else 0.0
    left = None if bound is None else bound - (time.monotonic() - began)
    await demand.ready(name, None if left is None else max(0.0, left - slack))
    return None if bound is None else bound - (time.monotonic() - began), point


def _route_early(
    demand: OnDemand,
    request: pb.ModelInferRequest,
    controls: Controls | None,
    sequences: SequencesBeforeLoad,
    ensemble: bool,
) -> tuple[int | None, float | None]:
    """The version a request naming none will be routed to once its model is loaded, and the
    routing point drawn for it (kept for that routing: a policy splitting the traffic picks at
    random without a routing key). (None, None) when not known here: it names a version, the
    routing is not known (its config could not be read), or it continues a sequence whose start
    waits for the same load (it goes where its start goes: judged by every version unless one
    version takes all the traffic)."""
    routing = demand.routing(request.model_name)
    if request.model_version or routing is None:
        return None, None
    unnamed_to, point = routing.pick(request, demand.draw)  # a wrong sticky key raises, as once loaded
    sequence = None if controls is None else controls.sequence
    if not ensemble and sequences.follows_start(request.model_name, sequence):
        return routing.only, point
    return unnamed_to, point
