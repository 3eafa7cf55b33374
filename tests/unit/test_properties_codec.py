"""Properties of the codec and validation (server/protocol/codec.py, validate.py, protos/wire.py):
round trips for every datatype, and any request either decodes to what it declares or is refused
with InvalidRequest (INVALID_ARGUMENT) naming the field, never another exception.

Also the regression tests for what these properties found (see the last section).
"""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.types import Array
from protos import grpc_service_pb2 as pb
from protos import wire
from server import datatypes
from server.errors import InvalidRequest
from server.protocol import codec
from server.protocol.validate import Signature
from tests.support.fuzz_target import fuzz_configs
from tests.support.request_strategies import (
    TEXT,
    WIRE_NAMES,
    any_arrays,
    arrays_of,
    byte_elements,
    typed_values,
)

SIGNATURES = [Signature.from_config(config) for config in fuzz_configs()]
Tensor = pb.ModelInferRequest.InferInputTensor


def raw_request(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        inputs=[Tensor(name=name, datatype=datatype, shape=shape)], raw_input_contents=[raw]
    )


def assert_same(decoded: Array, array: Array) -> None:
    """Equal dtype, shape and elements (bit for bit: NaNs and -0.0 included)."""
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    if array.dtype.kind == "O":
        assert decoded.reshape(-1).tolist() == typed_values(array)
    else:
        assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()


# --- round trips ----------------------------------------------------------------------------------


@given(array=any_arrays(), transpose=st.booleans())
def test_raw_round_trip_of_every_datatype(array: Array, transpose: bool) -> None:
    array = array.T if transpose else array  # a non-contiguous view is sent in C order
    response = codec.encode_response("m", "1", "id", {"out": array}, ["out"])
    out = response.outputs[0]
    assert out.datatype == datatypes.from_numpy(array.dtype).wire
    assert tuple(out.shape) == array.shape
    decoded = codec.decode_inputs(
        raw_request("x", out.datatype, array.shape, response.raw_output_contents[0])
    )
    assert_same(decoded["x"], array)


@given(array=any_arrays())
def test_typed_round_trip_of_every_datatype_but_fp16_and_bf16(array: Array) -> None:
    dtype = datatypes.from_numpy(array.dtype)
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="x", datatype=dtype.wire, shape=array.shape)
    field = wire.CONTENTS_FIELD.get(dtype.wire)
    if field is None:  # FP16 and BF16 have no typed field
        message = f"input 'x': {dtype.wire} data must be sent in raw_input_contents"
        with pytest.raises(InvalidRequest, match=message):
            codec.decode_inputs(request)
        return
    getattr(tensor.contents, field).extend(typed_values(array))
    assert_same(codec.decode_inputs(request)["x"], array)


@given(items=st.lists(byte_elements(), max_size=8))
def test_bytes_framing_round_trip(items: list[bytes]) -> None:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    data = wire.pack_bytes(array)
    assert len(data) == sum(4 + len(item) for item in items)
    assert wire.unpack_bytes(data, len(items)).tolist() == items


@given(data=st.binary(max_size=40), count=st.integers(0, 12))
def test_bytes_framing_reads_exactly_the_data_or_refuses_it(data: bytes, count: int) -> None:
    try:
        items = wire.unpack_bytes(data, count)
    except ValueError:
        return
    assert items.shape == (count,)
    assert wire.pack_bytes(items) == data  # every byte accounted for, nothing left over


# --- decode: what it declares, or InvalidRequest ---------------------------------------------------

DIMS = st.one_of(st.integers(0, 4), st.integers(-3, 2**63 - 1))
SHAPES = st.one_of(
    st.lists(st.integers(0, 4), max_size=4),
    st.lists(DIMS, max_size=70),
    st.integers(28, 70).map(lambda n: [1] * n),  # more dimensions than numpy describes
)


@st.composite
def loose_tensors(draw: st.DrawFn, typed: bool) -> tuple[Tensor, bytes]:
    """An input tensor whose name, datatype, shape and data need not agree (and often do)."""
    datatype = (
        draw(st.sampled_from(WIRE_NAMES) | TEXT) if draw(st.booleans()) else draw(st.sampled_from(WIRE_NAMES))
    )
    tensor = Tensor(name=draw(st.sampled_from(["a", "b", ""])), datatype=datatype, shape=draw(SHAPES))
    dtype = datatypes.BY_WIRE.get(datatype)
    count = prod(tensor.shape) if all(d >= 0 for d in tensor.shape) else -1
    fits = dtype is not None and 0 <= count <= 8 and draw(st.booleans())  # data of the declared size
    if typed or draw(st.booleans()):
        field = draw(st.sampled_from([*wire.CONTENTS_DTYPE, "bytes_contents"]))
        if fits and dtype is not None and draw(st.booleans()):
            field = wire.CONTENTS_FIELD.get(dtype.wire, field)
        size = count if fits else draw(st.integers(0, 6))
        if field == "bytes_contents":
            values: list[Any] = draw(st.lists(byte_elements(), min_size=size, max_size=size))
        else:
            values = typed_values(draw(arrays_of(datatypes.from_numpy(wire.CONTENTS_DTYPE[field]), (size,))))
        getattr(tensor.contents, field).extend(values)
    if fits and dtype is not None and dtype is not datatypes.BYTES:
        nbytes = count * dtype.numpy.itemsize
        return tensor, draw(st.binary(min_size=nbytes, max_size=nbytes))
    return tensor, draw(st.binary(max_size=24))


@st.composite
def loose_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    typed = draw(st.booleans())
    tensors = draw(st.lists(loose_tensors(typed), max_size=3))
    request = pb.ModelInferRequest(inputs=[tensor for tensor, _ in tensors])
    if not typed:
        request.raw_input_contents.extend(
            raw for _, raw in tensors[: len(tensors) + draw(st.integers(-1, 1))]
        )
    return request


@given(request=loose_requests())
def test_decode_gives_what_the_request_declares_or_invalid_request(request: pb.ModelInferRequest) -> None:
    try:
        arrays = codec.decode_inputs(request)
    except InvalidRequest as exc:
        assert str(exc)
        return
    assert list(arrays) == [tensor.name for tensor in request.inputs]
    for tensor in request.inputs:
        array = arrays[tensor.name]
        assert array.shape == tuple(tensor.shape)
        assert array.dtype == datatypes.BY_WIRE[tensor.datatype].numpy


# --- validation ---------------------------------------------------------------------------------


@st.composite
def inputs_for(draw: st.DrawFn, sig: Signature, exact: bool) -> dict[str, Array]:
    """Arrays for `sig`'s inputs: matching it (`exact`), or with names, datatypes, shapes off."""
    rows = draw(st.integers(1, min(max(sig.max_batch_size, 1), 4)))
    arrays: dict[str, Array] = {}
    for spec in sig.inputs.values():
        if spec.optional and draw(st.booleans()):
            continue
        dims = tuple(draw(st.integers(0, 2)) if d == -1 else d for d in spec.dims)
        shape = (rows, *dims) if sig.max_batch_size > 0 else dims
        dtype = spec.datatype
        name = spec.name
        if not exact:
            shape = tuple(draw(st.lists(st.integers(0, 9), max_size=4))) if draw(st.booleans()) else shape
            dtype = datatypes.BY_WIRE[draw(st.sampled_from(WIRE_NAMES))] if draw(st.booleans()) else dtype
            name = draw(st.sampled_from([name, name, "", "other"]))
        arrays[name] = draw(arrays_of(dtype, shape))
    return arrays


def is_utf8(item: bytes) -> bool:
    try:
        item.decode()
    except UnicodeDecodeError:
        return False
    return True


def signatures_and_inputs(exact: bool) -> st.SearchStrategy[tuple[Signature, dict[str, Array]]]:
    return st.sampled_from(SIGNATURES).flatmap(lambda sig: st.tuples(st.just(sig), inputs_for(sig, exact)))


@given(case=signatures_and_inputs(exact=False))
def test_check_inputs_accepts_only_what_the_signature_describes(
    case: tuple[Signature, dict[str, Array]],
) -> None:
    sig, arrays = case
    try:
        rows = sig.check_inputs(arrays)
    except InvalidRequest:
        return
    assert set(arrays) <= set(sig.inputs)
    assert {n for n, spec in sig.inputs.items() if not spec.optional} <= set(arrays)
    for name, array in arrays.items():
        spec = sig.inputs[name]
        assert array.dtype == spec.datatype.numpy
        assert spec.matches(array.shape[1:] if sig.max_batch_size > 0 else array.shape)
        if sig.max_batch_size > 0:
            assert array.shape[0] == rows
    assert 1 <= rows <= max(sig.max_batch_size, 1)


@given(case=signatures_and_inputs(exact=True))
def test_check_inputs_accepts_what_the_signature_describes(case: tuple[Signature, dict[str, Array]]) -> None:
    sig, arrays = case
    texts = [item for array in arrays.values() if array.dtype.kind == "O" for item in typed_values(array)]
    text_ok = all(is_utf8(item) for item in texts)
    if not text_ok:  # BYTES that are not UTF-8 are refused on purpose
        with pytest.raises(InvalidRequest, match="is not UTF-8 text"):
            sig.check_inputs(arrays)
        return
    rows = sig.check_inputs(arrays)
    expected = next(iter(arrays.values())).shape[0] if sig.max_batch_size > 0 else 1
    assert rows == expected


@given(sig=st.sampled_from(SIGNATURES), data=st.data())
def test_check_outputs_gives_distinct_known_outputs_or_invalid_request(
    sig: Signature, data: st.DataObject
) -> None:
    names = data.draw(st.lists(st.sampled_from([*sig.outputs, "", "nope"]), max_size=4))
    try:
        chosen = list(sig.check_outputs(names))
    except InvalidRequest:
        assert any(n not in sig.outputs for n in names) or len(set(names)) < len(names)
        return
    assert chosen == (names or list(sig.outputs))
    assert len(set(chosen)) == len(chosen)


# --- regressions: what the properties and the fuzz target found -----------------------------------


@pytest.mark.parametrize("contents", [[1.0, 2.0], []])
def test_raw_and_typed_contents_together_are_refused_naming_the_input(contents: list[float]) -> None:
    # Both forms at once: one of them was silently ignored. Triton refuses it with this wording.
    request = raw_request("x", "FP32", (2,), np.ones(2, np.float32).tobytes())
    request.inputs[0].contents.SetInParent()  # present, even when empty
    request.inputs[0].contents.fp32_contents.extend(contents)
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(request)
    assert str(info.value) == (
        "input 'x': contents field must not be specified when using raw_input_contents"
    )


@pytest.mark.parametrize(
    ("datatype", "field", "value", "limits"),
    [
        ("UINT8", "uint_contents", 256, "[0, 255]"),
        ("UINT16", "uint_contents", 70_000, "[0, 65535]"),
        ("INT8", "int_contents", -129, "[-128, 127]"),
        ("INT16", "int_contents", 40_000, "[-32768, 32767]"),
    ],
)
def test_typed_values_out_of_their_datatypes_range_are_refused(
    datatype: str, field: str, value: int, limits: str
) -> None:
    # numpy raised OverflowError (INTERNAL) here, or with numpy 1.x wrapped the value silently.
    request = pb.ModelInferRequest()
    getattr(request.inputs.add(name="x", datatype=datatype, shape=[2]).contents, field).extend([1, value])
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(request)
    assert str(info.value) == (
        f"input 'x': contents.{field} element 1 ({value}) is out of range for {datatype} {limits}"
    )


def test_typed_values_at_their_datatypes_limits_are_accepted() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([-128, 127])
    request.inputs.add(name="y", datatype="UINT16", shape=[2]).contents.uint_contents.extend([0, 65535])
    arrays = codec.decode_inputs(request)
    assert arrays["x"].tolist() == [-128, 127] and arrays["x"].dtype == np.int8
    assert arrays["y"].tolist() == [0, 65535] and arrays["y"].dtype == np.uint16


def test_typed_contents_in_another_datatypes_field_are_refused() -> None:
    # They were ignored: an FP32 input of shape [0] with int_contents decoded as empty.
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[0]).contents.int_contents.extend([7])
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(request)
    assert str(info.value) == "input 'x': FP32 data goes in contents.fp32_contents, not contents.int_contents"


def test_a_shape_with_more_dimensions_than_numpy_describes_is_refused() -> None:
    # 65 dimensions of 1 with 4 bytes of data: numpy's reshape raised ValueError (INTERNAL). The
    # limit is numpy 1.x's 32 (numpy 2 describes 64), so it holds with either.
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(raw_request("x", "FP32", (1,) * 65, b"\x00" * 4))
    assert str(info.value) == "input 'x': shape has 65 dimensions, at most 32"
    with pytest.raises(InvalidRequest, match="shape has 33 dimensions, at most 32"):
        codec.decode_inputs(raw_request("x", "FP32", (1,) * 33, b"\x00" * 4))
    assert codec.decode_inputs(raw_request("x", "FP32", (1,) * 32, b"\x00" * 4))["x"].ndim == 32


def test_an_output_requested_twice_is_refused() -> None:
    # The answer held the tensor twice; Triton refuses it too.
    sig = SIGNATURES[0]
    (name,) = sig.outputs
    with pytest.raises(InvalidRequest) as info:
        sig.check_outputs([name, name])
    assert str(info.value) == f"output '{name}' is requested more than once"
