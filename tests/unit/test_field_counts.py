"""An inference request's parameters and tensors counted on the wire before it is parsed
(server/protocol/field_counts.py): refused past each bound, naming it; never for a request within
the bounds, a small one, or bytes protobuf must refuse in its own words."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.crowded_request import varint
from protos import grpc_service_pb2 as pb
from server.protocol import field_counts
from server.protocol.codec import MAX_BYTES_ELEMENTS, MAX_TYPED_ELEMENTS
from server.protocol.field_counts import MAX_PARAMETERS, MAX_TENSORS, WALK_FROM_BYTES, crowded
from server.protocol.malformed import Malformed, tolerant_deserializer

PAD = "x" * WALK_FROM_BYTES  # makes any request long enough to be walked


def _request(**counts: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id=PAD)
    for i in range(counts.get("parameters", 0)):
        request.parameters[f"p{i}"].int64_param = i
    for i in range(counts.get("inputs", 0)):
        request.inputs.add(name=f"i{i}", datatype="FP32", shape=[1, 4])
    for i in range(counts.get("outputs", 0)):
        request.outputs.add(name=f"o{i}")
    for _ in range(counts.get("raw", 0)):
        request.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
    return request


@pytest.mark.parametrize(
    ("kind", "bound", "name"),
    [("parameters", MAX_PARAMETERS, "parameters"), ("inputs", MAX_TENSORS, "inputs"),
     ("outputs", MAX_TENSORS, "outputs"), ("raw", MAX_TENSORS, "raw_input_contents")],
)  # fmt: skip
def test_each_count_is_refused_one_past_its_bound_and_not_at_it(kind: str, bound: int, name: str) -> None:
    assert crowded(_request(**{kind: bound}).SerializeToString()) is None
    said = crowded(_request(**{kind: bound + 1}).SerializeToString())
    assert said == f"the request has more than {bound} {name} (the server's bound)"


@pytest.mark.parametrize("tensor", ["input", "requested output"])
def test_a_tensors_own_parameters_are_bounded(tensor: str) -> None:
    def with_parameters(count: int) -> bytes:
        request = _request()
        target = request.inputs.add(name="x") if tensor == "input" else request.outputs.add(name="y")
        for i in range(count):
            target.parameters[f"p{i}"].bool_param = True
        return request.SerializeToString()

    assert crowded(with_parameters(MAX_PARAMETERS)) is None
    said = crowded(with_parameters(MAX_PARAMETERS + 1))
    assert said is not None and said.startswith(
        f"{tensor} 0 of the request has more than {MAX_PARAMETERS} parameters"
    )


def test_fields_protobuf_does_not_know_count_too() -> None:
    # Unknown fields are kept by protobuf at a cost per field: 100,000 of them are refused, the walk
    # stopping at the bound.
    unknown = bytes([15 << 3 | 0, 1]) * 100_000  # field 15, a varint
    said = crowded(_request().SerializeToString() + unknown)
    assert said is not None and "fields (the server's bound)" in said


def test_a_small_request_is_not_walked() -> None:
    small = pb.ModelInferRequest(model_name="m")
    for i in range(MAX_PARAMETERS + 1):
        small.parameters[f"{i}"].bool_param = True
    data = small.SerializeToString()
    assert len(data) <= WALK_FROM_BYTES
    assert crowded(data) is None


def test_bytes_that_end_inside_a_field_are_left_to_protobuf() -> None:
    data = _request(parameters=MAX_PARAMETERS + 1).SerializeToString()
    assert crowded(data[: WALK_FROM_BYTES + 10]) is None  # cut inside the padding's field
    within = _request(parameters=2).SerializeToString()
    assert crowded(within + b"\x0a\xff") is None  # a length past the end


def test_a_large_request_within_the_bounds_parses_as_before() -> None:
    request = _request(parameters=8, inputs=3, outputs=2, raw=3)
    request.inputs[0].contents.fp32_contents.extend(np.arange(100_000, dtype=np.float32))
    request.inputs[1].parameters["shared_memory_region"].string_param = "r"
    data = request.SerializeToString()
    assert crowded(data) is None
    parsed = tolerant_deserializer(pb.ModelInferRequest)(data)
    assert parsed == request


def test_the_deserializer_answers_a_crowded_request_malformed_unparsed() -> None:
    data = _request(outputs=MAX_TENSORS + 1).SerializeToString()
    answer = tolerant_deserializer(pb.ModelInferRequest)(data)
    assert isinstance(answer, Malformed)
    assert answer.reason == (
        f"request is not parsed ({len(data)} bytes): the request has more than {MAX_TENSORS} outputs "
        "(the server's bound)"
    )
    # Other messages are not walked: a stream's other services parse theirs as before.
    assert not isinstance(tolerant_deserializer(pb.ModelInferResponse)(b""), Malformed)


def test_a_tensor_too_short_to_pass_its_bound_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[int] = []
    real = field_counts._tensor_fault

    def spy(data: bytes, pos: int, end: int, field: int, budget: field_counts._Budget) -> str | None:
        walked.append(end - pos)
        return real(data, pos, end, field, budget)

    monkeypatch.setattr(field_counts, "_tensor_fault", spy)
    request = _request(inputs=2)
    request.inputs[0].contents.fp32_contents.extend(np.zeros(1000, np.float32))
    assert crowded(request.SerializeToString()) is None
    assert walked == [request.inputs[0].ByteSize()]  # the long one only


def test_a_group_anywhere_walked_is_refused_not_stepped_over() -> None:
    # Protobuf parses an unknown group and all after it: 62 MiB of parameters behind a 4-byte group
    # had passed the walk (which gave up at it) and held the loop 3-4 s.
    group = bytes([15 << 3 | 3, 0x08, 0x01, 15 << 3 | 4])  # field 15: start, a varint, end
    behind = _request(parameters=MAX_PARAMETERS + 1).SerializeToString()
    said = "the request holds a protobuf group, which this protocol has none of"
    assert len(pb.ModelInferRequest.FromString(group + behind).parameters) > MAX_PARAMETERS  # taken
    assert crowded(group + behind) == said
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1])
    for i in range(40):
        tensor.parameters[f"p{i}"].bool_param = True  # long enough to be walked
    body = group + tensor.SerializeToString()
    crafted = _request().SerializeToString() + bytes([5 << 3 | 2]) + varint(len(body)) + body
    assert pb.ModelInferRequest.FromString(crafted).inputs[0].name == "x"  # protobuf takes it
    assert crowded(crafted) == said


def test_an_inputs_packed_shape_longer_than_its_dims_can_be_is_refused() -> None:
    request = _request()
    request.inputs.add(name="x", datatype="FP32", shape=[1] * (field_counts.MAX_DIMS * 10 + 1))
    said = crowded(request.SerializeToString())
    dims = field_counts.MAX_DIMS
    assert said == f"input 0 of the request has a shape of more than {dims} dims (the server's bound)"
    request = _request()
    request.inputs.add(name="x", datatype="FP32", shape=[2**62] * field_counts.MAX_DIMS)  # 10-byte dims
    assert crowded(request.SerializeToString()) is None


def _contents(*fills: bytes) -> bytes:
    """A walked request with one INT32 input per fill, each fill its contents' bytes as sent."""
    data = _request().SerializeToString()
    for fill in fills:
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT32", shape=[1])
        body = tensor.SerializeToString() + bytes([5 << 3 | 2]) + varint(len(fill)) + fill
        data += bytes([5 << 3 | 2]) + varint(len(body)) + body
    return data


def _strings(count: int, size: int = 1) -> bytes:
    return pb.InferTensorContents(bytes_contents=[b"s" * size] * count).SerializeToString()


STRINGS = MAX_BYTES_ELEMENTS
OTHERS = field_counts.MAX_OTHER_CONTENTS_FIELDS


def test_strings_in_typed_contents_are_counted_across_the_requests_inputs() -> None:
    # 62 MiB of one-byte strings held the loop ~1 s in protobuf's parse: refused past as many
    # strings as the decode takes, the walk stopping there.
    half = STRINGS // 2
    assert crowded(_contents(_strings(half), _strings(STRINGS - half))) is None
    said = crowded(_contents(_strings(half), _strings(STRINGS - half + 1)))
    assert said == (
        f"input 1 of the request has typed contents that take the request past {STRINGS} strings "
        "(the server's bound)"
    )


@pytest.mark.parametrize("size", [1, 200, 20_000])  # a length of one byte, two, three
def test_strings_of_every_length_are_counted(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(field_counts._Budget, "__init__", _small_budget)  # 300 strings
    assert crowded(_contents(_strings(150, size), _strings(150, size))) is None
    said = crowded(_contents(_strings(150, size), _strings(151, size)))
    assert said is not None and said.startswith("input 1 of the request has typed contents that take")


def _small_budget(self: field_counts._Budget) -> None:
    self.strings, self.packed, self.other_fields, self.varints = 300, 4, 4, 4


def test_unpacked_values_and_unknown_fields_in_contents_are_bounded() -> None:
    unpacked = bytes([2 << 3 | 0, 1])  # an int_contents value with its own key
    unknown = bytes([0xA0, 0x01, 1])  # field 20, a varint: two bytes of key
    for unit in (unpacked, unknown):
        assert crowded(_contents(unit * (OTHERS // 2), unit * (OTHERS - OTHERS // 2))) is None
        said = crowded(_contents(unit * (OTHERS // 2), unit * (OTHERS - OTHERS // 2 + 1)))
        assert said == (
            f"input 1 of the request has typed contents that take the request past {OTHERS} fields "
            "other than strings and packed numbers (unpacked values, unknown fields) (the server's bound)"
        )


def test_packed_varints_are_counted_by_their_elements() -> None:
    most = MAX_TYPED_ELEMENTS

    def packed(values: int, width: int = 1, field: int = 2) -> bytes:
        body = (b"\xff" * (width - 1) + b"\x01") * values
        return bytes([field << 3 | 2]) + varint(len(body)) + body

    assert crowded(_contents(packed(most // 2, 3), packed(most - most // 2))) is None
    said = f"input 1 of the request has packed contents that take the request past {most} values"
    assert (
        crowded(_contents(packed(most // 2, 3), packed(most - most // 2 + 1)))
        == f"{said} (the server's bound)"
    )
    assert (
        crowded(_contents(packed(most + 1, 10)))
        == said.replace("input 1", "input 0") + " (the server's bound)"
    )
    floats = bytes([6 << 3 | 2]) + varint(4 * most + 4) + bytes(4 * most + 4)  # fp32_contents
    assert crowded(_contents(floats)) is None  # fixed-size numbers parse at memory speed: not counted
    assert len(pb.InferTensorContents.FromString(floats).fp32_contents) == most + 1


def test_packed_fields_are_bounded_in_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(field_counts._Budget, "__init__", _small_budget)
    one = pb.InferTensorContents(fp32_contents=np.zeros(100, np.float32)).SerializeToString()
    assert crowded(_contents(one * 2, one * 2)) is None
    said = crowded(_contents(one * 2, one * 3))
    assert said == (
        f"input 1 of the request has typed contents that take the request past {MAX_TENSORS} packed "
        "fields (the server's bound)"
    )


def test_contents_that_end_past_their_tensor_are_left_to_protobuf() -> None:
    cut = bytes([8 << 3 | 2, 100]) + b"s" * 50  # a string's length past the contents' end
    data = _contents(_strings(400) + cut)
    assert crowded(data) is None
    with pytest.raises(Exception, match="Error parsing message"):
        pb.ModelInferRequest.FromString(data)


def test_a_parameters_entry_and_its_value_are_bounded_in_fields() -> None:
    most = field_counts.MAX_ENTRY_FIELDS
    value = bytes([2 << 3 | 0, 1])  # InferParameter's int64_param

    def entry(keys: int, values: int) -> bytes:
        body = bytes([1 << 3 | 2, 1, 65]) * keys + bytes([2 << 3 | 2]) + varint(2 * values) + value * values
        return bytes([4 << 3 | 2]) + varint(len(body)) + body

    base = _request().SerializeToString()
    assert crowded(base + entry(most - 1, most)) is None
    assert pb.ModelInferRequest.FromString(base + entry(most - 1, most)).parameters["A"].int64_param == 1
    said = f"request parameter 0 has a parameter of more than {most} fields (the server's bound)"
    assert crowded(base + entry(most, 1)) == said  # one key too many: the entry's value is a field
    assert crowded(base + entry(1, most + 1)) == said
    assert crowded(base + entry(20_000_000 // 3, 1)) == said  # the walk stops at the bound
    request = _request()
    request.parameters["long"].string_param = "v" * 100_000  # a long value is one field
    request.inputs.add(name="x").parameters["shared_memory_region"].string_param = "r" * 1_000
    assert crowded(request.SerializeToString()) is None
    tensor = pb.ModelInferRequest.InferInputTensor(name="x").SerializeToString() + entry(200, 1)  # walked
    crafted = base + bytes([5 << 3 | 2]) + varint(len(tensor)) + tensor
    assert crowded(crafted) == (
        f"input 0 of the request has a parameter of more than {most} fields (its parameter 0) "
        "(the server's bound)"
    )


def test_the_benchmarks_walk_mode_times_each_case() -> None:
    from loadtest.crowded_request import KINDS, walk_times

    times = walk_times(3.0)  # past each kind's bound, as the integration test's requests
    assert len(times) == len(KINDS) + 3
    for name, (walked, parse, said) in times.items():
        assert walked > 0
        if "strings of" in name:  # at the bound: passes, then parsed
            assert said == "passes" and parse is not None
        else:
            assert "(the server's bound" in said and parse is None, (name, said)
