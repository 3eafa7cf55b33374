"""Protocol tensors <-> numpy arrays.

Inputs are decoded from `raw_input_contents` as zero-copy `np.frombuffer` views (or from typed
`contents` when a client sends those: never both in one request, as Triton); outputs always leave
as `raw_output_contents`, the fast form every client reads. BYTES tensors use the protocol's raw
form: each element a 4-byte little-endian length followed by its bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from math import prod
from typing import Any

import numpy as np
import numpy.typing as npt

from batcher.types import Array
from protos import grpc_service_pb2 as pb
from protos import wire
from server import datatypes, triton_text
from server.errors import InvalidRequest
from server.protocol.shm_tensors import ShmTensors
from server.tensor_bounds import MAX_DIMS as MAX_DIMS
from server.tensor_bounds import MAX_ELEMENTS as MAX_ELEMENTS

# Elements decoded one by one in Python, on the event loop, per request: BYTES elements (~1 us
# each in, as much again out) and typed `contents` values (~0.14 us each). One request of 5,000,000
# empty strings held the loop for seconds and other callers' deadlines passed; these bounds keep a
# request's decoding under ~0.3 s here. Tensors beyond them go in raw_input_contents (numbers) or
# several requests (strings).
MAX_BYTES_ELEMENTS = 262_144
MAX_TYPED_ELEMENTS = 2_097_152


def decode_inputs(
    request: pb.ModelInferRequest, shm: ShmTensors | None = None, *, read_shm: bool = True
) -> dict[str, Array]:
    """The request's input tensors as numpy arrays, checked for self-consistency.

    Raises InvalidRequest naming the input for unknown datatypes, negative dims, duplicate names,
    byte or element counts that do not match the declared shape, typed values out of their
    datatype's range, typed contents in another datatype's field, and typed contents in a request
    that sends raw_input_contents. Inputs in `shm` are copied out of their shared-memory regions;
    raw_input_contents then holds one entry per other input, as Triton. `read_shm` False: they
    are stand-ins of their datatype and shape, sizes checked and nothing read (ShmTensors.unread).
    """
    raw = request.raw_input_contents
    in_shm = 0 if shm is None else len(shm.inputs)
    if raw and len(raw) != len(request.inputs) - in_shm:
        where = " outside shared memory" if in_shm else ""
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{len(request.inputs) - in_shm} inputs{where}"
        )
    arrays: dict[str, Array] = {}
    string_errors: list[str] = []
    index = 0  # into raw_input_contents
    strings = typed = 0  # elements decoded one by one so far (see MAX_BYTES_ELEMENTS)
    for tensor in request.inputs:
        name = tensor.name
        if name in arrays:
            raise InvalidRequest(f"input '{name}' appears more than once")
        dtype = datatypes.BY_WIRE.get(tensor.datatype)
        if dtype is None:
            raise InvalidRequest(f"input '{name}': unknown datatype '{tensor.datatype}'")
        if (dims := len(tensor.shape)) > MAX_DIMS:  # before the tuple: 65 million dims took 3.6 s
            raise InvalidRequest(f"input '{name}': shape has {dims} dimensions, at most {MAX_DIMS}")
        shape = tuple(tensor.shape)
        if any(dim < 0 for dim in shape):
            raise InvalidRequest(f"input '{name}': shape {list(shape)} has a negative dimension")
        if prod(dim for dim in shape if dim) > MAX_ELEMENTS:
            # Even with a zero dimension: numpy cannot describe such an array (and says so as an
            # error that would otherwise surface as INTERNAL).
            raise InvalidRequest(_too_many_elements(name, shape))
        count = prod(shape)
        strings += count if dtype is datatypes.BYTES else 0
        if strings > MAX_BYTES_ELEMENTS:  # before any of them is decoded
            raise InvalidRequest(
                f"input '{name}': the request holds {strings} BYTES elements so far; at most "
                f"{MAX_BYTES_ELEMENTS} per request (each is decoded one by one: send more requests)"
            )
        is_typed = not raw and (shm is None or name not in shm.inputs) and dtype is not datatypes.BYTES
        typed += count if is_typed else 0
        if typed > MAX_TYPED_ELEMENTS:
            raise InvalidRequest(
                f"input '{name}': the request holds {typed} typed contents values so far; at most "
                f"{MAX_TYPED_ELEMENTS} per request (send large tensors in raw_input_contents)"
            )
        if shm is not None and name in shm.inputs:
            arrays[name] = shm.read(name, dtype, shape) if read_shm else shm.unread(name, dtype, shape)
        elif raw:
            if tensor.HasField("contents"):
                # Triton's rule and wording: one of the two would otherwise be silently ignored.
                raise InvalidRequest(
                    f"input '{name}': contents field must not be specified when using raw_input_contents"
                )
            try:
                arrays[name] = _from_raw(name, request.model_name, index, raw[index], dtype, shape)
            except _StringCountMismatch as exc:
                string_errors.append(str(exc))
            index += 1
        else:
            arrays[name] = _from_contents(name, tensor, dtype, shape)
    if string_errors:
        # Triton checks BYTES element counts walking its inputs' hash map, which visits them last
        # sent first; its QA tests expect the error of that input, so the last one is reported.
        raise InvalidRequest(string_errors[-1])
    return arrays


def _too_many_elements(name: str, shape: tuple[int, ...]) -> str:
    if 0 not in shape:
        return f"input '{name}': shape {list(shape)} exceeds {MAX_ELEMENTS} elements"
    # Zero elements: the bound is on the other dimensions, whose product numpy must still hold.
    return (
        f"input '{name}': shape {list(shape)}: its nonzero dimensions multiply past {MAX_ELEMENTS}, "
        "the bound on any tensor's dimensions (even one with a 0 dimension and so no elements)"
    )


class _StringCountMismatch(InvalidRequest):
    """A BYTES input whose data holds another number of elements than its shape says."""


def _from_raw(
    name: str, model: str, index: int, data: bytes, dtype: datatypes.Datatype, shape: tuple[int, ...]
) -> Array:
    count = prod(shape)
    if dtype is datatypes.BYTES:
        try:
            return wire.unpack_bytes(data, count).reshape(shape)
        except wire.ElementCutShort as exc:  # the element, not a count: its length runs past the data
            raise InvalidRequest(f"input '{name}': {exc}") from None
        except ValueError as exc:  # one walk when well formed; Triton's words for a wrong count
            wrong_count = triton_text.string_count(name, model, data, count)
            if wrong_count is not None:
                raise _StringCountMismatch(wrong_count) from None
            raise InvalidRequest(f"input '{name}': {exc}") from None
    expected = count * dtype.numpy.itemsize
    if len(data) != expected:
        detail = f"raw_input_contents[{index}] for shape {list(shape)} of {dtype.wire}"
        raise InvalidRequest(triton_text.byte_size_mismatch(name, model, expected, len(data), detail))
    return np.frombuffer(data, dtype=dtype.numpy).reshape(shape)


def _from_contents(
    name: str,
    tensor: pb.ModelInferRequest.InferInputTensor,
    dtype: datatypes.Datatype,
    shape: tuple[int, ...],
) -> Array:
    field = wire.CONTENTS_FIELD.get(dtype.wire)
    if field is None:
        raise InvalidRequest(f"input '{name}': {dtype.wire} data must be sent in raw_input_contents")
    for descriptor, _ in tensor.contents.ListFields():
        if descriptor.name != field:
            raise InvalidRequest(
                f"input '{name}': {dtype.wire} data goes in contents.{field}, not contents.{descriptor.name}"
            )
    values = getattr(tensor.contents, field)
    count = prod(shape)
    if len(values) != count:
        raise InvalidRequest(
            f"input '{name}': contents.{field} has {len(values)} elements, expected {count} "
            f"for shape {list(shape)}"
        )
    if dtype is datatypes.BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.asarray(values, dtype=wire.CONTENTS_DTYPE[field])
    if wide.dtype != dtype.numpy:
        _check_range(name, field, wide, dtype)
    return wide.astype(dtype.numpy, copy=False).reshape(shape)


def _check_range(name: str, field: str, values: npt.NDArray[Any], dtype: datatypes.Datatype) -> None:
    """Integers of a typed field (int32, uint32) that `dtype` (narrower) cannot hold are the
    client's mistake; numpy would raise OverflowError (INTERNAL) or wrap them silently."""
    limits = np.iinfo(dtype.numpy)
    bad = np.flatnonzero((values < limits.min) | (values > limits.max))
    if bad.size:
        raise InvalidRequest(
            f"input '{name}': contents.{field} element {bad[0]} ({values[bad[0]]}) is out of range "
            f"for {dtype.wire} [{limits.min}, {limits.max}]"
        )


def unpack_bytes(name: str, data: bytes, count: int) -> Array:
    """BYTES elements of input `name`; malformed data is an InvalidRequest naming the input."""
    try:
        return wire.unpack_bytes(data, count)
    except ValueError as exc:
        raise InvalidRequest(f"input '{name}': {exc}") from None


def raw_bytes(array: Array) -> bytes:
    """The raw wire form of one tensor."""
    if array.dtype.kind in "OSU":
        return wire.pack_bytes(array)
    return np.ascontiguousarray(array).tobytes()


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: Mapping[str, Array],
    names: Iterable[str],
    shm: ShmTensors | None = None,
) -> pb.ModelInferResponse:
    """A ModelInferResponse holding `names` from `outputs` as raw_output_contents; those in `shm`
    are written into their regions and have an empty entry (Triton's form)."""
    tensors: list[pb.ModelInferResponse.InferOutputTensor] = []
    contents: list[bytes] = []
    for name in names:
        array = outputs[name]
        tensors.append(
            pb.ModelInferResponse.InferOutputTensor(
                name=name, datatype=datatypes.from_numpy(array.dtype).wire, shape=array.shape
            )
        )
        if shm is not None and name in shm.outputs:
            shm.write(name, array)
            contents.append(b"")
        else:
            contents.append(raw_bytes(array))
    return pb.ModelInferResponse(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        outputs=tensors,
        raw_output_contents=contents,
    )


def requested_outputs(request: pb.ModelInferRequest) -> Sequence[str]:
    """Names of the outputs the request asked for (empty: all of them)."""
    return [output.name for output in request.outputs]
