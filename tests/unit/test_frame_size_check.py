"""The size check of request messages (server/protocol/frame_size.py): over max_message_bytes a
message is refused unparsed, with the head a stream's error frame needs; grpc's own limit, which
ends a stream, is a ceiling above it."""

from __future__ import annotations

from protos import grpc_service_pb2 as pb
from server.protocol.frame_size import (
    GRPC_INT_MAX,
    HEAD_MAX_BYTES,
    HEAD_MAX_FIELDS,
    Oversized,
    received_ceiling,
    request_head,
)
from server.protocol.malformed import Malformed, tolerant_deserializer
from server.protocol.stream_bytes import HeldBytes


def big_request(pad: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="frame-7")
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    request.inputs.add(name="x", datatype="UINT8", shape=[pad])
    request.raw_input_contents.append(b"\1" * pad)
    return request


def test_a_message_over_the_limit_is_refused_unparsed_with_its_size() -> None:
    deserialize = tolerant_deserializer(pb.ModelInferRequest, max_bytes=1000)
    garbage = b"\xff" * 1001  # would not parse: refused for its size, never parsed
    refused = deserialize(garbage)
    assert isinstance(refused, Oversized) and (refused.size, refused.limit) == (1001, 1000)
    assert refused.reason.startswith(
        "request message larger than max (1001 vs. 1000 bytes, the server's max_message_bytes)"
    )
    assert isinstance(deserialize(b"\xff" * 1000), Malformed)  # at the limit: parsed as before


def test_a_message_at_the_limit_parses() -> None:
    data = big_request(500).SerializeToString()
    parsed = tolerant_deserializer(pb.ModelInferRequest, max_bytes=len(data))(data)
    assert isinstance(parsed, pb.ModelInferRequest) and parsed.id == "frame-7"


def test_the_head_of_an_oversized_frame_has_its_id_not_its_parameters_or_tensors() -> None:
    data = big_request(200_000).SerializeToString()
    refused = tolerant_deserializer(pb.ModelInferRequest, max_bytes=100_000)(data)
    assert isinstance(refused, Oversized) and refused.head is not None
    head = refused.head
    assert (head.model_name, head.model_version, head.id) == ("m", "2", "frame-7")
    assert not head.parameters  # an error frame names model, version and id only
    assert not head.inputs and not head.raw_input_contents


def test_a_head_is_read_however_many_parameters_follow_it() -> None:
    request = pb.ModelInferRequest(model_name="m", id="many", raw_input_contents=[b"x"])
    for n in range(HEAD_MAX_FIELDS * 2):  # past the head's field bound, had they been walked
        request.parameters[f"p{n}"].int64_param = n
    head = request_head(request.SerializeToString())
    assert head is not None and (head.model_name, head.id) == ("m", "many")
    assert not head.parameters


def test_a_head_longer_than_its_bound_or_not_a_message_is_left_out() -> None:
    long_id = pb.ModelInferRequest(id="i" * HEAD_MAX_BYTES, raw_input_contents=[b"x"])
    assert request_head(long_id.SerializeToString()) is None
    assert request_head(b"\x08\x01" + b"\0" * 100) is None  # field 1 as a varint: not our message
    assert request_head(b"\x0a\xff\xff\xff\xff\x0f") is None  # a length far past the bytes
    assert request_head(b"") == pb.ModelInferRequest()


def test_other_message_types_get_no_head() -> None:
    refused = tolerant_deserializer(pb.ModelConfigRequest, max_bytes=10)(b"\x0a\x20" + b"n" * 32)
    assert isinstance(refused, Oversized) and refused.head is None


def test_grpcs_limit_is_a_bounded_ceiling_above_the_servers() -> None:
    assert received_ceiling(64 << 20) == 128 << 20
    assert received_ceiling(GRPC_INT_MAX) == GRPC_INT_MAX  # a C int: grpc takes no more


def test_an_oversized_frame_holds_no_bytes_of_the_stream() -> None:
    """What a stream holds (stream_max_held_bytes) is unchanged by frames over the limit: the
    frame's bytes are gone once refused, and its answer carries none."""
    held = HeldBytes(1000)
    refused = Oversized(5000, 1000)
    held.read(refused)
    assert held.held == 0
    released = held.answered(refused, 0)
    held.written(released)
    assert held.held == 0


def test_a_head_of_many_fields_is_not_walked_past_its_bound() -> None:
    """8,192 empty model_name fields fit in 16 KiB: walking them in Python held the loop ~14 ms a
    frame (a tester's crafted head). Past HEAD_MAX_FIELDS the frame is answered without its head."""
    many = b"\x0a\x00" * 8192 + big_request(10).SerializeToString()
    assert request_head(many) is None
    few = (
        b"\x0a\x00" * (HEAD_MAX_FIELDS - 4) + big_request(10).SerializeToString()
    )  # its 4: name, version, id, a parameter
    head = request_head(few)
    assert head is not None and head.id == "frame-7"


def test_only_an_inference_requests_refusal_suggests_fewer_rows() -> None:
    infer = tolerant_deserializer(pb.ModelInferRequest, max_bytes=100)(big_request(200).SerializeToString())
    other = tolerant_deserializer(pb.ServerLiveRequest, max_bytes=100)(b"\x00" * 101)
    assert isinstance(infer, Oversized) and infer.reason.endswith("use shared memory for inputs")
    assert isinstance(other, Oversized) and other.reason.endswith("the server's max_message_bytes)")
