"""numpy <-> the protocol's raw tensor form, and building ModelInferRequest messages.

Inputs always travel as `raw_input_contents` (one contiguous little-endian buffer per input);
outputs are read from `raw_output_contents` as zero-copy `np.frombuffer` views (read-only arrays
sharing the response's memory). BYTES elements are a 4-byte little-endian length then the bytes;
they decode to object arrays of `bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import ml_dtypes
import numpy as np
import numpy.typing as npt

from protos import grpc_service_pb2 as pb
from protos.wire import CONTENTS_FIELD, pack_bytes, unpack_bytes

Array = npt.NDArray[np.generic]

# Fixed-size datatypes; BYTES is any str/bytes/object array. Little-endian, as the protocol says.
DTYPE_BY_WIRE: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),  # numpy has none; raw bytes only, 2 an element
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
# bfloat16 is kind "V" (void), like any structured dtype: matched by equality, not kind and size.
_WIRE_BY_KIND_SIZE = {(d.kind, d.itemsize): wire for wire, d in DTYPE_BY_WIRE.items() if wire != "BF16"}


def wire_datatype(array: Array) -> str:
    """The protocol datatype of a numpy array; str, bytes and object arrays are BYTES."""
    dtype = array.dtype
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype == DTYPE_BY_WIRE["BF16"]:
        return "BF16"
    wire = _WIRE_BY_KIND_SIZE.get((dtype.kind, dtype.itemsize))
    if wire is None:
        raise TypeError(f"numpy dtype {dtype} has no KServe v2 datatype")
    return wire


def raw_bytes(array: Array, wire: str) -> bytes:
    if wire == "BYTES":
        return pack_bytes(array)
    # One copy into the message; byte order fixed to little-endian when the array is big-endian.
    return np.ascontiguousarray(array, dtype=DTYPE_BY_WIRE[wire]).tobytes()


def as_array(value: object) -> Array:
    """An input as numpy. A list of bytes or str becomes an object array holding the elements
    themselves: np.asarray made a fixed-width "S"/"U" array, which drops trailing NUL bytes
    (b"a\\x00" was sent as b"a"). An array given as such is sent as it is."""
    array = np.asarray(value)
    if array.dtype.kind in "SU" and not isinstance(value, np.ndarray):
        return np.array(value, dtype=object)
    return array


def build_request(
    model: str,
    inputs: Mapping[str, Array],
    *,
    version: str | int | None = None,
    request_id: str | None = None,
    priority: int | None = None,
    outputs: Sequence[str] | None = None,
    latest_frame_wins: bool | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input in raw_input_contents (no timeout: see set_timeout).
    No inputs is a request too: a model may have none (a constant or a generator).
    `latest_frame_wins`: a stream frame's parameter (None: the model's setting)."""
    if not isinstance(inputs, Mapping):  # a list of arrays had failed with a bare AttributeError
        raise TypeError(f"inputs must be a mapping of input name -> array, got {type(inputs).__name__}")
    request = pb.ModelInferRequest(
        model_name=model, model_version="" if version is None else str(version), id=request_id or ""
    )
    for name, value in inputs.items():
        array = as_array(value)
        wire = wire_datatype(array)
        request.inputs.add(name=name, datatype=wire, shape=array.shape)
        request.raw_input_contents.append(raw_bytes(array, wire))
    for name in outputs or ():
        request.outputs.add(name=name)
    if priority is not None:
        if priority < 0:
            raise ValueError(f"priority must be >= 0 (1 is highest, 0 the model's default), got {priority}")
        request.parameters["priority"].int64_param = priority
    if latest_frame_wins is not None:
        request.parameters["latest_frame_wins"].bool_param = latest_frame_wins
    return request


def set_timeout(request: pb.ModelInferRequest, timeout_s: float) -> None:
    """The request's `timeout` parameter, in whole microseconds, never 0 (0 means none)."""
    request.parameters["timeout"].int64_param = max(1, math.ceil(timeout_s * 1e6))


def decode_response(response: pb.ModelInferResponse) -> dict[str, Array]:
    """Output name -> numpy array; fixed-size types are zero-copy read-only views of the message."""
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise ValueError(f"answer has {len(raw)} raw_output_contents for {len(response.outputs)} outputs")
    result: dict[str, Array] = {}
    for index, tensor in enumerate(response.outputs):
        shape = tuple(int(d) for d in tensor.shape)
        if raw:
            result[tensor.name] = _from_raw(tensor.datatype, raw[index], shape, tensor.name)
        else:
            result[tensor.name] = _from_contents(tensor, shape)
    return result


def _from_raw(wire: str, data: bytes, shape: tuple[int, ...], name: str) -> Array:
    count = math.prod(shape)
    if wire == "BYTES":
        return unpack_bytes(data, count).reshape(shape)
    dtype = DTYPE_BY_WIRE.get(wire)
    if dtype is None:
        raise ValueError(f"output '{name}': unknown datatype '{wire}'")
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"output '{name}': {len(data)} bytes do not hold {wire} {list(shape)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _from_contents(tensor: pb.ModelInferResponse.InferOutputTensor, shape: tuple[int, ...]) -> Array:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise ValueError(f"output '{tensor.name}': no typed contents for datatype '{tensor.datatype}'")
    values = list(getattr(tensor.contents, field))
    if tensor.datatype == "BYTES":
        items = np.empty(len(values), dtype=object)
        items[:] = values
        return items.reshape(shape)
    return np.asarray(values, dtype=DTYPE_BY_WIRE[tensor.datatype]).reshape(shape)


__all__ = ["Array", "build_request", "decode_response", "set_timeout", "wire_datatype"]
