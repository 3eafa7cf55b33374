"""A request for a lazy model that is not loaded, judged by the signatures its load would serve
(server/models/lazy.py): refused without loading it when the loaded model would refuse it, with the
same status and message, found in the same order (the loaded path's own checks, request_checks.py,
up to the request's sequence parameters; admission and classification are left to the load).

Only what is certainly wrong is refused here, so this never refuses a request the loaded model
would take. Its inputs are decoded to judge them (as the load does: their counts, byte sizes and
text are checked there), then dropped: decoded again once the model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping

from protos import grpc_service_pb2 as pb
from server import triton_text
from server.errors import ModelNotFound, ServiceError
from server.models.versions import version_number
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
    before its admission."""
    check_request(signature, request, regions, controls, sequences=signature.sequences)


def check_declared_by_any(
    signatures: Mapping[int, Signature],
    request: pb.ModelInferRequest,
    regions: SharedMemoryRegistry | None = None,
    controls: Controls | None = None,
) -> None:
    """Judge `request` by the version it names (a version the load will not serve is NOT_FOUND, as
    the loaded model's), or, naming none, refuse it only if every version would (a traffic policy
    may route it to any); the newest version's error is the one raised."""
    named = request.model_version
    if named:
        number = version_number(named)  # INVALID_ARGUMENT naming it, as the loaded model's resolve
        signature = signatures.get(number)
        if signature is None:
            served = sorted(signatures, reverse=True)
            raise ModelNotFound(triton_text.unknown_version(request.model_name, named, served))
        check_declared(signature, request, regions, controls)
        return
    error: ServiceError | None = None
    for number in sorted(signatures, reverse=True):
        try:
            check_declared(signatures[number], request, regions, controls)
            return
        except ServiceError as exc:
            error = error or exc
    if error is not None:
        raise error
