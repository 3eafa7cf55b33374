"""The string field of an unparseable request that is not UTF-8, found by its bytes twin."""

from __future__ import annotations

from protos import grpc_service_pb2 as pb
from server.protocol.malformed import Malformed, tolerant_deserializer
from server.protocol.utf8_fields import MAX_FIELDS_WALKED, BytesTwins

BAD = b"B\xffD!"


def _not_utf8(request: pb.ModelInferRequest) -> bytes:
    data = request.SerializeToString()
    assert data.count(b"BAD!") == 1
    return data.replace(b"BAD!", BAD)


def test_the_field_and_the_valid_head_are_found() -> None:
    request = pb.ModelInferRequest(model_name="mlp", id="r1")
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    request.inputs.add(name="x").parameters["note"].string_param = "BAD!"
    fault = BytesTwins().fault(_not_utf8(request), pb.ModelInferRequest)
    assert fault is not None and fault.field == "inputs[0].parameters['note'].value.string_param"
    assert fault.head is not None and (fault.head.model_name, fault.head.id) == ("mlp", "r1")
    assert not fault.head.parameters  # an error frame names model, version and id only


def test_a_fault_past_the_walk_is_reported_without_its_place() -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    for _ in range(MAX_FIELDS_WALKED):
        request.outputs.add(name="o")
    request.outputs.add(name="BAD!")
    fault = BytesTwins().fault(_not_utf8(request), pb.ModelInferRequest)
    assert fault is not None and fault.field is None
    assert fault.reason.startswith("a string field is not valid UTF-8")


def test_bytes_that_are_no_message_keep_the_parsers_words() -> None:
    assert BytesTwins().fault(b"\xff\xff\xff\xff\x0f", pb.ModelInferRequest) is None
    read = tolerant_deserializer(pb.ModelInferRequest)(b"\xff\xff\xff\xff\x0f")
    assert isinstance(read, Malformed) and "Error parsing message" in read.reason and read.head is None


def test_other_messages_are_named_and_have_no_head() -> None:
    data = _not_utf8(pb.ModelMetadataRequest(name="BAD!"))
    read = tolerant_deserializer(pb.ModelMetadataRequest)(data)
    assert isinstance(read, Malformed) and read.head is None
    assert read.reason.endswith("field 'name' is not valid UTF-8 (protobuf string fields must be UTF-8)")
