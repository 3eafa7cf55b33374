"""Request messages other than an inference request, counted by their schema on the wire before
they are parsed (server/protocol/message_fields.py): refused past MAX_FIELDS, nested fields and
map entries and unknown fields included; never a real request. A RepositoryModelLoad of 4 million
parameter entries had held every other call 4.9 s, a ServerLive full of unknown fields ~1 s."""

from __future__ import annotations

from protos import grpc_service_pb2 as pb
from server.protocol.malformed import Malformed, tolerant_deserializer
from server.protocol.message_fields import MAX_FIELDS, too_many_fields

LOAD = pb.RepositoryModelLoadRequest


def _load(entries: int) -> bytes:
    request = LOAD(model_name="m")
    for i in range(entries):
        request.parameters[f"p{i}"].string_param = "x"
    data: bytes = request.SerializeToString()
    return data


def test_a_load_of_many_parameters_is_refused_naming_the_bound() -> None:
    # Each entry is four fields (the entry, its key, its value, the value's one field).
    assert too_many_fields(_load(MAX_FIELDS // 4 - 1), LOAD.DESCRIPTOR) is None
    said = too_many_fields(_load(MAX_FIELDS // 4 + 1), LOAD.DESCRIPTOR)
    bound = "(the server's bound for a RepositoryModelLoadRequest)"
    assert said == f"the request has more than {MAX_FIELDS} fields {bound}"


def test_a_real_load_with_its_files_is_not_refused() -> None:
    request = LOAD(model_name="m")
    request.parameters["config"].string_param = '{"max_batch_size": 8}' + " " * 100_000
    for i in range(64):
        request.parameters[f"file:1/part{i}.bin"].bytes_param = bytes(200_000)  # one field each
    data = request.SerializeToString()
    assert too_many_fields(data, LOAD.DESCRIPTOR) is None
    assert tolerant_deserializer(LOAD)(data) == request


def test_unknown_fields_and_nested_ones_count() -> None:
    unknown = bytes([15 << 3 | 0, 1]) * (MAX_FIELDS + 1)  # field 15, a varint: unknown to ServerLive
    said = too_many_fields(unknown, pb.ServerLiveRequest.DESCRIPTOR)
    assert said is not None and said.endswith("(the server's bound for a ServerLiveRequest)")
    key = bytes([1 << 3 | 2, 1, 65])  # a map entry repeating its key: nested in one top-level field
    entry = key * (MAX_FIELDS + 1)
    length = len(entry)
    prefix = bytearray()
    while length >= 0x80:
        prefix.append(length & 0x7F | 0x80)
        length >>= 7
    one_entry = bytes([3 << 3 | 2]) + bytes(prefix + bytes([length])) + entry
    assert too_many_fields(one_entry, LOAD.DESCRIPTOR) is not None
    assert too_many_fields(one_entry, pb.ServerLiveRequest.DESCRIPTOR) is None  # unknown: one field


def test_the_deserializer_refuses_it_unparsed_and_leaves_small_ones_alone() -> None:
    data = _load(MAX_FIELDS)
    answer = tolerant_deserializer(LOAD)(data)
    assert isinstance(answer, Malformed)
    assert answer.reason.startswith(f"request is not parsed ({len(data)} bytes): the request has more")
    small = _load(1000)  # 12 KB: not walked, parsed by protobuf alone (4,000 fields in all)
    assert len(small) <= 16 * 1024 and tolerant_deserializer(LOAD)(small) == LOAD.FromString(small)
