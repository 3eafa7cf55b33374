"""server/protocol/codec.py's per-request bounds that mutation testing (2026-12-05) showed untested:
the BYTES and typed-contents counts are summed over a request's inputs (not per input), each count
holds only its own kind of input, exactly the bound passes, and inputs are counted as typed whenever
they are not in shared memory, also when only outputs are; and the message for a shape whose
nonzero dimensions are too many, chosen by a 0 dimension (not a 1)."""

from __future__ import annotations

import pytest

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest
from server.protocol import codec
from server.protocol.shm_tensors import ShmTensors

Tensor = pb.ModelInferRequest.InferInputTensor


def request(*inputs: Tensor) -> pb.ModelInferRequest:
    """A request of typed `contents` (no raw_input_contents), as the bounds on contents need."""
    return pb.ModelInferRequest(model_name="m", inputs=list(inputs))


def strings(name: str, count: int, values: list[bytes] | None = None) -> Tensor:
    """A BYTES input of shape [count]; `values` None: no contents at all (the count check fails
    later, once past the bounds, without decoding anything)."""
    tensor = Tensor(name=name, datatype="BYTES", shape=[count])
    if values is not None:
        tensor.contents.bytes_contents.extend(values)
    return tensor


def floats(name: str, count: int, values: list[float] | None = None) -> Tensor:
    tensor = Tensor(name=name, datatype="FP32", shape=[count])
    if values is not None:
        tensor.contents.fp32_contents.extend(values)
    return tensor


def test_bytes_elements_are_bounded_over_the_whole_request_not_per_input() -> None:
    # One string, then exactly the bound: 262,145 in the request. Counting each input alone
    # (`strings = count`) let it through, and several inputs just under the bound each could
    # hold the event loop as long as one huge one.
    with pytest.raises(
        InvalidRequest,
        match=rf"^input 'b': the request holds {codec.MAX_BYTES_ELEMENTS + 1} BYTES elements so far; "
        rf"at most {codec.MAX_BYTES_ELEMENTS} per request",
    ):
        codec.decode_inputs(request(strings("a", 1, [b"x"]), strings("b", codec.MAX_BYTES_ELEMENTS)))


def test_typed_inputs_do_not_count_against_the_bytes_bound() -> None:
    # An FP32 input beside exactly the bound of strings: the strings pass the bound and the request
    # fails only on its (empty) contents. Counting every other input as one string refused it.
    with pytest.raises(
        InvalidRequest,
        match=rf"^input 'b': contents.bytes_contents has 0 elements, expected {codec.MAX_BYTES_ELEMENTS} ",
    ):
        codec.decode_inputs(request(floats("a", 1, [1.0]), strings("b", codec.MAX_BYTES_ELEMENTS)))


def test_typed_values_are_bounded_over_the_whole_request_not_per_input() -> None:
    # One value, then exactly the bound: one too many in the request, refused before the second
    # input is decoded. Counting each input alone (`typed = count`) let it through.
    with pytest.raises(
        InvalidRequest,
        match=rf"^input 'b': the request holds {codec.MAX_TYPED_ELEMENTS + 1} typed contents values so "
        rf"far; at most {codec.MAX_TYPED_ELEMENTS} per request",
    ):
        codec.decode_inputs(request(floats("a", 1, [1.0]), floats("b", codec.MAX_TYPED_ELEMENTS)))


def test_exactly_the_typed_bound_passes_it() -> None:
    # MAX_TYPED_ELEMENTS values is "at most", not over: the request gets past the bound and fails
    # only because its contents hold none of them. `>=` refused it as too many.
    with pytest.raises(
        InvalidRequest,
        match=rf"^input 'x': contents.fp32_contents has 0 elements, expected {codec.MAX_TYPED_ELEMENTS} ",
    ):
        codec.decode_inputs(request(floats("x", codec.MAX_TYPED_ELEMENTS)))


def test_bytes_inputs_do_not_count_against_the_typed_bound() -> None:
    # A BYTES input (decoded under its own bound) beside exactly the typed bound: no typed value
    # too many. Counting every other input as one typed value refused it.
    with pytest.raises(
        InvalidRequest,
        match=rf"^input 'b': contents.fp32_contents has 0 elements, expected {codec.MAX_TYPED_ELEMENTS} ",
    ):
        codec.decode_inputs(request(strings("a", 1, [b"x"]), floats("b", codec.MAX_TYPED_ELEMENTS)))


def test_typed_values_are_bounded_when_only_outputs_are_in_shared_memory() -> None:
    # A request with its outputs in shared memory has a ShmTensors with no inputs: its inputs are
    # all typed contents, and bounded as such. `name in shm.inputs` counted only inputs in shared
    # memory (never typed) and let any number of typed values through.
    shm = ShmTensors(inputs={}, outputs={})
    with pytest.raises(
        InvalidRequest,
        match=rf"^input 'x': the request holds {codec.MAX_TYPED_ELEMENTS + 1} typed contents values so far",
    ):
        codec.decode_inputs(request(floats("x", codec.MAX_TYPED_ELEMENTS + 1)), shm)


def test_a_shape_with_a_1_and_too_many_elements_says_it_exceeds_the_bound() -> None:
    # A 1 is no 0: the tensor has 2**41 elements, past MAX_ELEMENTS, and is told so plainly (the
    # zero-size message, chosen by `1 in shape`, would say it has no elements).
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(request(Tensor(name="x", datatype="FP32", shape=[1, 2**41])))
    assert str(info.value) == f"input 'x': shape [1, {2**41}] exceeds {codec.MAX_ELEMENTS} elements"


def test_a_zero_size_shape_whose_other_dimensions_are_too_many_says_so_in_full() -> None:
    # A 0 dimension: no elements, but numpy cannot describe the others' product. The message says
    # why a tensor with nothing in it is refused; `1 not in shape` gave the plain "exceeds" one.
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(request(Tensor(name="x", datatype="FP32", shape=[0, 2**41])))
    assert str(info.value) == (
        f"input 'x': shape [0, {2**41}]: its nonzero dimensions multiply past {codec.MAX_ELEMENTS}, "
        "the bound on any tensor's dimensions (even one with a 0 dimension and so no elements)"
    )
