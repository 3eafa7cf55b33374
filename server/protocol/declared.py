"""A request judged by what it declares (input names, datatypes, shapes; output names) against a
model's signature, before its bytes are decoded: how a request for a lazy model that is not loaded
is refused without loading it (server/models/lazy.py keeps the signatures of its last load).

Only what is certainly wrong is refused here; everything else (bytes, reshape, text) is checked
as usual once the model is loaded, so this never refuses a request the loaded model would take.
"""

from __future__ import annotations

from collections.abc import Mapping

from protos import grpc_service_pb2 as pb
from server import triton_text
from server.errors import InvalidRequest
from server.protocol.codec import requested_outputs
from server.protocol.validate import Signature


def check_declared(signature: Signature, request: pb.ModelInferRequest) -> None:
    """Raise InvalidRequest naming the field if no load of `signature`'s model could take `request`."""
    shapes = {tensor.name: list(tensor.shape) for tensor in request.inputs}
    signature.check_input_names(shapes)
    signature.check_declared_datatypes(request.inputs)
    _check_shapes(signature, shapes)
    signature.check_outputs(requested_outputs(request))


def _check_shapes(signature: Signature, shapes: Mapping[str, list[int]]) -> None:
    batching = signature.max_batch_size > 0
    for name, shape in shapes.items():
        spec = signature.inputs[name]
        if batching and (not shape or not spec.matches(shape[1:])):
            expected = signature.wire_shape(spec)
            raise InvalidRequest(triton_text.unexpected_shape(name, signature.model, expected, shape))
        if not batching and not spec.matches(shape):
            raise InvalidRequest(triton_text.unexpected_shape(name, signature.model, list(spec.dims), shape))
        limit = signature.max_batch_size
        if batching and shape[0] > limit:
            raise InvalidRequest(triton_text.batch_too_large(signature.model, limit, shape[0]))


def check_declared_by_any(signatures: Mapping[int, Signature], request: pb.ModelInferRequest) -> None:
    """Judge `request` by the version it names, or, naming none, refuse it only if every version
    would (a traffic policy may route it to any); the newest version's error is the one raised."""
    named = request.model_version
    if named:
        signature = signatures.get(int(named)) if named.isdigit() else None
        if signature is not None:
            check_declared(signature, request)
        return  # a version not known here: resolving it after the load says what is wrong
    error: InvalidRequest | None = None
    for number in sorted(signatures, reverse=True):
        try:
            check_declared(signatures[number], request)
            return
        except InvalidRequest as exc:
            error = error or exc
    if error is not None:
        raise error
