"""A request for a lazy model that is not loaded, judged by the signatures its load would serve
(server/models/lazy.py): refused without loading it when the loaded model would refuse it, with the
same status and message, found in the same order (the loaded path's own checks, request_checks.py,
then what follows them with no loaded state: the classification parameters, and a sequence
request's single row, which the loaded model's sequence batcher refuses after admission). What
admission itself refuses needs the loaded batcher's figures (a deadline it cannot meet, a full
queue) and is left to the load; it refuses nothing the checks above let through by itself
(`priority` above the model's levels means its default level, as Triton).

Only what is certainly wrong is refused here, so this never refuses a request the loaded model
would take. Its inputs are decoded to judge them (as the load does: their counts, byte sizes and
text are checked there), then dropped: decoded again once the model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

from batcher.errors import BatcherError
from batcher.sequence_types import check_one_row
from protos import grpc_service_pb2 as pb
from server import triton_text
from server.errors import ModelNotFound, ServiceError
from server.models.versions import version_number
from server.protocol.classification import requested_classes
from server.protocol.controls import Controls
from server.protocol.request_checks import check_request
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.validate import Signature


def check_declared(
    signature: Signature,
    request: pb.ModelInferRequest,
    regions: SharedMemoryRegistry | None = None,
    controls: Controls | None = None,
) -> None:
    """Raise the error the loaded model (`signature`'s) would answer `request` with, if any
    before its queue (InferJob.prepare's order: the checks, classification, a sequence's row)."""
    checked = check_request(signature, request, regions, controls, sequences=signature.sequences)
    requested_classes(request, signature)
    sequence = checked.controls.sequence
    if signature.sequences and sequence is not None:
        check_one_row(signature.model, sequence.sid, checked.rows)


def check_declared_by_any(
    signatures: Mapping[int, Signature],
    request: pb.ModelInferRequest,
    regions: SharedMemoryRegistry | None = None,
    controls: Controls | None = None,
    *,
    unnamed_to: int | None = None,
) -> None:
    """Judge `request` by the version it names (a version the load will not serve is NOT_FOUND, as
    the loaded model's), or, naming none, by version `unnamed_to` when the loaded model's routing
    sends every such request there (the newest without a traffic policy, as Triton's version_policy;
    the one version a policy's weights give all the traffic), else refuse it only if every version
    would (a policy splitting the traffic may route it to any); the newest version's error is the
    one raised."""
    named = request.model_version
    if named:
        number = version_number(named)  # INVALID_ARGUMENT naming it, as the loaded model's resolve
        signature = signatures.get(number)
        if signature is None:
            served = sorted(signatures, reverse=True)
            raise ModelNotFound(triton_text.unknown_version(request.model_name, named, served))
        check_declared(signature, request, regions, controls)
        return
    newest_first = sorted(signatures, reverse=True)
    error: ServiceError | BatcherError | None = None
    judges = newest_first if unnamed_to is None or unnamed_to not in signatures else [unnamed_to]
    for number in judges:
        try:
            check_declared(signatures[number], request, regions, controls)
            return
        except (ServiceError, BatcherError) as exc:  # a sequence's row refusal is the batcher's
            error = error or exc
    if error is not None:
        raise error
