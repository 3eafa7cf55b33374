"""Hypothesis strategies for tensors and for near-valid ModelInferRequests against a signature.

Near-valid requests are what find bugs: mostly right (names, datatypes, shapes and bytes that a
model accepts), with one or a few things wrong at a time: a dimension off by one, a byte too many,
a typed value out of its datatype's range, raw and typed contents together, a duplicate or unknown
name, odd parameters. Random bytes rarely get past the protobuf parser; these reach every check.
"""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from batcher.types import Array
from protos import grpc_service_pb2 as pb
from protos import wire
from server import datatypes
from server.protocol import codec
from server.protocol.validate import Signature, TensorSpec

WIRE_NAMES = tuple(datatypes.BY_WIRE)
PARAMETER_NAMES = ("timeout", "priority", "sequence_id", "sequence_start", "sequence_end", "binary_data")
# Proto strings must be UTF-8: no lone surrogates.
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
SMALL_DIM = st.integers(0, 3)
HOSTILE_DIM = st.sampled_from([-1, -(2**63), 2**31, 2**40, 2**41, 2**62, 2**63 - 1])


def byte_elements() -> st.SearchStrategy[bytes]:
    """Mostly UTF-8 text (what a model takes), sometimes any bytes."""
    return st.one_of(TEXT.map(str.encode), TEXT.map(str.encode), st.binary(max_size=6))


def rarely(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in `one_in` draws (hypothesis favours the ends of integer ranges)."""
    return st.sampled_from([False] * (one_in - 1) + [True])


def arrays_of(dtype: datatypes.Datatype, shape: tuple[int, ...]) -> st.SearchStrategy[Array]:
    """Arrays of `dtype` and `shape`; BYTES as object arrays of bytes (sometimes not UTF-8)."""
    if dtype is datatypes.BYTES:
        count = prod(shape)
        return st.lists(byte_elements(), min_size=count, max_size=count).map(
            lambda items: _object_array(items, shape)
        )
    if dtype.wire == "BF16":  # hypothesis has no bfloat16: any 16-bit pattern, NaNs included
        return hnp.arrays(np.dtype(np.uint16), shape).map(lambda bits: bits.view(dtype.numpy))
    return hnp.arrays(dtype.numpy, shape)


def _object_array(items: list[bytes], shape: tuple[int, ...]) -> Array:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def shapes(max_dims: int = 4, max_side: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    return hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side)


def any_arrays(max_dims: int = 4) -> st.SearchStrategy[Array]:
    """An array of any datatype and a small shape."""
    return st.tuples(st.sampled_from(WIRE_NAMES), shapes(max_dims)).flatmap(
        lambda ds: arrays_of(datatypes.BY_WIRE[ds[0]], ds[1])
    )


def typed_values(array: Array) -> list[Any]:
    """The Python values typed `contents` carry for `array`."""
    values: list[Any] = array.reshape(-1).tolist()
    return [bytes(item) for item in values] if array.dtype.kind == "O" else values


def parameters() -> st.SearchStrategy[pb.InferParameter]:
    return st.one_of(
        st.integers(0, 10**7).map(lambda v: pb.InferParameter(int64_param=v)),
        st.integers(-(2**63), 2**63 - 1).map(lambda v: pb.InferParameter(int64_param=v)),
        st.integers(0, 2**64 - 1).map(lambda v: pb.InferParameter(uint64_param=v)),
        st.booleans().map(lambda v: pb.InferParameter(bool_param=v)),
        TEXT.map(lambda v: pb.InferParameter(string_param=v)),
        st.floats().map(lambda v: pb.InferParameter(double_param=v)),
        st.just(pb.InferParameter()),
    )


# One request carries at most a few of these, each in one input: the rest of it is right, so the
# fault is what the server must answer.
SHAPE_FAULTS = ("off_by_one", "rank", "many_dims", "hostile_dim")
TYPE_FAULTS = ("other_datatype", "junk_datatype")
RAW_FAULTS = ("raw_short", "raw_long")
TYPED_FAULTS = ("typed_short", "typed_long", "typed_range", "typed_field")
FAULTS_BY_FORM = {
    "raw": (*SHAPE_FAULTS, *TYPE_FAULTS, *RAW_FAULTS),
    "typed": (*SHAPE_FAULTS, *TYPE_FAULTS, *TYPED_FAULTS),
    "both": (*SHAPE_FAULTS, *TYPE_FAULTS, *RAW_FAULTS, *TYPED_FAULTS),
}


def _shape(draw: st.DrawFn, sig: Signature, spec: TensorSpec, rows: int, fault: str | None) -> list[int]:
    dims = [draw(SMALL_DIM) if d == -1 else d for d in spec.dims]
    shape = [rows, *dims] if sig.max_batch_size > 0 else dims
    if fault == "off_by_one" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = max(0, shape[i] + draw(st.sampled_from([-1, 1])))
    elif fault == "rank":
        drop = bool(shape) and draw(st.booleans())
        shape = shape[:-1] if drop else [*shape, draw(SMALL_DIM)]
    elif fault == "many_dims":  # more than numpy can describe
        shape = [*shape, *[1] * draw(st.integers(60, 70))]
    elif fault == "hostile_dim":
        shape = [*shape] or [0]
        shape[draw(st.integers(0, len(shape) - 1))] = draw(HOSTILE_DIM)
    return shape


def _elements(shape: list[int]) -> int:
    """How many elements to send for `shape`: all of them, or one where that would be too many
    (hostile shapes travel with a little data, as an attacker's would)."""
    count = prod(shape) if all(d >= 0 for d in shape) else 1
    return count if count <= 8000 else 1  # hypothesis draws lists of at most 8192 items


@st.composite
def _tensor(
    draw: st.DrawFn, sig: Signature, spec: TensorSpec, rows: int, form: str, fault: str | None
) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    """One input tensor and its raw bytes (b"" when typed); right but for `fault`."""
    dtype = spec.datatype
    if fault == "other_datatype":
        dtype = datatypes.BY_WIRE[draw(st.sampled_from(WIRE_NAMES))]
    datatype = (
        draw(st.sampled_from(["", "FP8", "fp32", "STRING"])) if fault == "junk_datatype" else dtype.wire
    )
    shape = _shape(draw, sig, spec, rows, fault)
    tensor = pb.ModelInferRequest.InferInputTensor(name=spec.name, datatype=datatype, shape=shape)
    array = draw(arrays_of(dtype, (_elements(shape),)))  # the wire form is flat
    raw = b""
    if form in ("raw", "both"):
        raw = codec.raw_bytes(array)
        raw = raw[:-1] if fault == "raw_short" else raw + b"\x00" if fault == "raw_long" else raw
    if form in ("typed", "both"):
        _set_typed(draw, tensor, dtype, array, fault)
    return tensor, raw


def _set_typed(
    draw: st.DrawFn,
    tensor: pb.ModelInferRequest.InferInputTensor,
    dtype: datatypes.Datatype,
    array: Array,
    fault: str | None,
) -> None:
    field = wire.CONTENTS_FIELD.get(dtype.wire) or draw(st.sampled_from(sorted(wire.CONTENTS_DTYPE)))
    if fault == "typed_field":  # values in another datatype's field
        field = draw(st.sampled_from([*sorted(wire.CONTENTS_DTYPE), "bytes_contents"]))
    values: list[Any]
    if field == "bytes_contents":
        values = (
            typed_values(array) if array.dtype.kind == "O" else draw(st.lists(byte_elements(), max_size=4))
        )
    else:
        wide = wire.CONTENTS_DTYPE[field]
        if fault != "typed_range" and array.dtype.kind == wide.kind and array.dtype.itemsize <= wide.itemsize:
            values = typed_values(array.astype(wide))
        else:  # anything the field can carry: out of range for narrower datatypes
            values = typed_values(draw(hnp.arrays(wide, array.size)))
    if fault == "typed_short":
        values = values[:-1]
    elif fault == "typed_long":
        values = [*values, *values[:1]]
    getattr(tensor.contents, field).extend(values)


@st.composite
def near_valid_requests(draw: st.DrawFn, sig: Signature, max_faults: int = 2) -> pb.ModelInferRequest:
    """A request for `sig`'s model, right but for up to `max_faults` faults (FAULTS_BY_FORM) and
    request-level ones: rows, missing, duplicate, unknown inputs, raw and typed together, a raw
    entry too many, odd outputs and parameters."""
    request = pb.ModelInferRequest(model_name=sig.model, id=draw(TEXT))
    top = max(sig.max_batch_size, 1)
    rows = draw(st.one_of(st.integers(1, min(top, 4)), st.integers(0, top + 2)))
    form = draw(st.sampled_from(["raw"] * 4 + ["typed"] * 3 + ["both"]))
    specs = list(sig.inputs.values())
    specs = draw(st.permutations(specs)) if draw(st.booleans()) else specs
    if len(specs) > 1 and draw(rarely(10)):
        specs.pop(draw(st.integers(0, len(specs) - 1)))
    extra = draw(st.sampled_from([None] * 8 + ["duplicate", "unknown"]))
    if extra is not None:
        spec = draw(st.sampled_from(specs))
        specs.append(spec if extra == "duplicate" else TensorSpec(draw(TEXT), spec.datatype, spec.dims))
    faults: dict[int, str] = draw(
        st.dictionaries(
            st.integers(0, len(specs) - 1), st.sampled_from(FAULTS_BY_FORM[form]), max_size=max_faults
        )
    )
    for index, spec in enumerate(specs):
        tensor, raw = draw(_tensor(sig, spec, rows, form, faults.get(index)))
        request.inputs.append(tensor)
        if form != "typed":
            request.raw_input_contents.append(raw)
    if form != "typed" and draw(rarely(20)):
        request.raw_input_contents.append(b"")  # one raw entry too many
    outputs = list(sig.outputs)
    for name in draw(st.lists(st.sampled_from([*outputs, "nope", ""]), max_size=3)):
        request.outputs.add(name=name)
    for key, value in draw(
        st.dictionaries(st.sampled_from(PARAMETER_NAMES), parameters(), max_size=2)
    ).items():
        request.parameters[key].CopyFrom(value)
    return request


@st.composite
def mutated(draw: st.DrawFn, payload: bytes) -> bytes:
    """`payload` with a few bytes flipped, inserted or deleted (a message that may no longer parse,
    or parses into something else)."""
    buffer = bytearray(payload)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(buffer)))
        edit = draw(st.sampled_from(["flip", "insert", "delete"]))
        if edit == "insert" or not buffer:
            buffer[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif edit == "flip":
            buffer[min(at, len(buffer) - 1)] ^= draw(st.integers(1, 255))
        else:
            del buffer[at : at + draw(st.integers(1, 8))]
    return bytes(buffer)
