"""server/protocol/sequence_params.py: survivors of the 2026-12-05 mutation run. A string sequence id
is bounded at MAX_SEQUENCE_ID_BYTES of UTF-8, inclusive, and one over it is refused with a message
that says its size and the bound (the batcher keeps ids, so their size is memory the caller picks)."""

from __future__ import annotations

import pytest

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest
from server.protocol.sequence_params import MAX_SEQUENCE_ID_BYTES, sequence_id


def test_a_string_id_of_exactly_the_bound_in_utf8_bytes_is_an_id() -> None:
    # 512 two-byte characters: 1024 bytes, at most the bound. `>=` refused it.
    sid = "é" * (MAX_SEQUENCE_ID_BYTES // 2)
    assert sequence_id(pb.InferParameter(string_param=sid)) == sid


def test_a_string_id_one_byte_over_the_bound_is_refused_saying_its_size() -> None:
    # Counted in bytes, not characters (513 characters here); the message names both numbers.
    sid = "é" * (MAX_SEQUENCE_ID_BYTES // 2) + "x"
    with pytest.raises(InvalidRequest) as info:
        sequence_id(pb.InferParameter(string_param=sid))
    assert str(info.value) == (
        f"parameter 'sequence_id' is a string of {MAX_SEQUENCE_ID_BYTES + 1} bytes; "
        f"at most {MAX_SEQUENCE_ID_BYTES}"
    )
