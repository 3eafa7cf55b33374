"""Triton's classification extension: an output returned as its top-k classes instead of its values.

A requested output with the parameter `classification` (an integer k > 0; tritonclient's
`InferRequestedOutput(name, class_count=k)`) comes back as BYTES of shape [batch, k] ([k] for a
model without a batch dimension): per row, the k highest values in descending order, each as
"value:index" or "value:index:label" with the label from the output's `label_filename`. Values are
formatted as Triton's C++ does (`std::to_string`: six decimals for floating point). k above the
row's element count returns them all, as Triton.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from batcher.types import Array, Tensors
from protos import grpc_service_pb2 as pb
from server import datatypes
from server.errors import InvalidRequest
from server.protocol.validate import Signature

PARAMETER = "classification"
# The datatypes Triton classifies (TopkClassifications): integers and FP32/FP64.
_CLASSIFIABLE = frozenset(
    {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"}
)


def requested_classes(request: pb.ModelInferRequest, signature: Signature) -> dict[str, int] | None:
    """Output name -> class count, for the requested outputs asking for classification (None: none)."""
    found: dict[str, int] | None = None
    for output in request.outputs:
        if PARAMETER not in output.parameters:
            continue
        param = output.parameters[PARAMETER]
        kind = param.WhichOneof("parameter_choice")
        if kind not in ("int64_param", "uint64_param"):
            raise InvalidRequest(
                f"output '{output.name}': parameter '{PARAMETER}' (the class count) must be an "
                f"integer, got {kind or 'no value'}"
            )
        count = int(getattr(param, kind))
        if count <= 0:
            raise InvalidRequest(
                f"output '{output.name}': parameter '{PARAMETER}' (the class count) must be positive, "
                f"got {count}"
            )
        spec = signature.outputs.get(output.name)
        if spec is not None and spec.datatype.wire not in _CLASSIFIABLE:
            raise InvalidRequest(
                f"output '{output.name}': parameter '{PARAMETER}': class result not available for "
                f"output due to unsupported type '{spec.datatype.wire}'"
            )
        found = found if found is not None else {}
        found[output.name] = count
    return found


def _text(value: np.generic, floating: bool) -> str:
    return f"{value.item():f}" if floating else str(value.item())


def top_classes(array: Array, count: int, labels: Sequence[str], batched: bool) -> Array:
    """The BYTES tensor of `array`'s top `count` classes per row (every element of a row competes)."""
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    n = rows.shape[1]
    k = min(count, n)
    # Descending by value, ties by lower index first: a stable ascending sort of the reversed row.
    order = (n - 1 - np.argsort(rows[:, ::-1], axis=1, kind="stable"))[:, ::-1][:, :k]
    floating = array.dtype.kind == "f"
    out = np.empty((rows.shape[0], k), dtype=object)
    for r in range(rows.shape[0]):
        for j, index in enumerate(order[r]):
            text = f"{_text(rows[r, index], floating)}:{index}"
            label = labels[index] if index < len(labels) else ""
            out[r, j] = (f"{text}:{label}" if label else text).encode()
    return out if batched else out.reshape(k)


def classify(
    outputs: Tensors,
    classes: Mapping[str, int],
    labels: Mapping[str, Sequence[str]],
    batched: bool,
) -> Tensors:
    """`outputs` with each output named in `classes` replaced by its top classes."""
    result = dict(outputs)
    for name, count in classes.items():
        array = result[name]
        if datatypes.from_numpy(array.dtype).wire not in _CLASSIFIABLE:  # the config said otherwise
            raise InvalidRequest(f"output '{name}': class result not available for its type")
        result[name] = top_classes(array, count, labels.get(name, ()), batched)
    return result
