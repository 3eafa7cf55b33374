"""server/protocol/stream_bytes.py: survivors of the 2026-12-05 mutation run. An answer weighs its raw
outputs and every string it carries: the echoed id and model name and an error's message each add
their length (a long model name or error message is held as surely as a long id)."""

from __future__ import annotations

from protos import grpc_service_pb2 as pb
from server.protocol.stream_bytes import answer_bytes


def test_an_answer_weighs_its_outputs_id_model_name_and_error_message_added_up() -> None:
    # 5 + 3 raw bytes, id 2, model name 7, error message 11: each adds. A model name subtracted
    # (`id - model_name`) or an error message subtracted made large answers weigh less than nothing.
    response = pb.ModelStreamInferResponse(
        error_message="x" * 11,
        infer_response=pb.ModelInferResponse(
            id="ab", model_name="m" * 7, raw_output_contents=[b"\x00" * 5, b"\x01" * 3]
        ),
    )
    assert answer_bytes(response) == 5 + 3 + 2 + 7 + 11


def test_an_error_answer_weighs_its_message() -> None:
    # An error frame alone (no outputs, no id): its message is what the stream holds until written.
    assert answer_bytes(pb.ModelStreamInferResponse(error_message="e" * 1000)) == 1000
