"""A client of another toolkit, hostile or buggy, on the wire of a real server: compressed requests
(a decompression bomb among them), oversized metadata and odd deadlines, and protobuf that python's
own client would never send (strings that are not UTF-8, unknown fields, a singular field sent twice,
a parameter with no value), over ModelInfer and ModelStreamInfer.

Strings that are not UTF-8 had been answered "Error parsing message" naming no field, and on a
stream with an error frame carrying no id (a client matching answers by id could not tell which
request it was): both fail on the code before utf8_fields.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import ServerProcess

MAX_MESSAGE_BYTES = 1024 * 1024
LIMIT_SAID = f"vs. {MAX_MESSAGE_BYTES} bytes, the server's max_message_bytes"
BAD = b"B\xffD!"  # not UTF-8; put in place of the 4 bytes of "BAD!" in a serialized request
UNKNOWN_FIELD = b"\xf8\x06\x05"  # field 111 (no field of ModelInferRequest), varint 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("wire_hostile")
    demo = demo_repository()
    write_model(repo, "mlp", demo / "mlp" / "1" / "model.onnx", (demo / "mlp" / "config.pbtxt").read_text())
    with ServerProcess(
        "--model-repository", str(repo), "--max-message-bytes", str(MAX_MESSAGE_BYTES)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    # A client may send what it likes: its own send limit stays out of the way.
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", -1)]) as opened:
        yield opened


def _mlp(rid: str = "", raw: bytes | None = None, **fields: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(**{"model_name": "mlp", "id": rid, **fields})
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes() if raw is None else raw)
    return request


def _raw_infer(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda data: data,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def _raw_stream(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda data: data,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )


def _status(call: grpc.UnaryUnaryMultiCallable, data: bytes, **kwargs: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(data, timeout=30, **kwargs)
    return caught.value.code(), caught.value.details() or ""


def _served(channel: grpc.Channel) -> bool:
    return bool(pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_mlp("still"), timeout=30).outputs)


def _peak_kib(server: ServerProcess) -> int:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


# --- compression ---


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests_are_answered_and_refused_by_their_decompressed_size(
    channel: grpc.Channel, compression: grpc.Compression
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ModelInfer(_mlp("zipped"), timeout=30, compression=compression).outputs
    # ~1.5 MiB once decompressed (a few KiB on the wire): over max_message_bytes, under grpc's ceiling.
    over = _mlp("over", raw=bytes(1536 * 1024)).SerializeToString()
    code, details = _status(_raw_infer(channel), over, compression=compression)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and LIMIT_SAID in details, details
    # On a stream that frame alone is refused, with its id; the others are answered.
    frames = [_mlp("a").SerializeToString(), over, _mlp("b").SerializeToString()]
    answers = list(_raw_stream(channel)(iter(frames), timeout=30, compression=compression))
    assert sorted(a.infer_response.id for a in answers if not a.error_message) == ["a", "b"]
    refused = [a for a in answers if a.error_message]
    assert len(refused) == 1 and refused[0].infer_response.id == "over"
    assert (
        refused[0].error_message.startswith("RESOURCE_EXHAUSTED: ") and LIMIT_SAID in refused[0].error_message
    )


def test_a_decompression_bomb_is_refused_without_allocating_it(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    # 64 MiB of zeros, ~64 KiB gzipped: grpc core stops decompressing at its receive ceiling
    # (twice max_message_bytes), so the server's peak memory barely moves.
    bomb = _mlp("bomb", raw=bytes(64 * 1024 * 1024)).SerializeToString()
    before = _peak_kib(server)
    code, details = _status(_raw_infer(channel), bomb, compression=grpc.Compression.Gzip)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details, details
    with pytest.raises(grpc.RpcError) as caught:  # on a stream grpc core ends the call (frame_size.py)
        list(_raw_stream(channel)(iter([bomb]), timeout=30, compression=grpc.Compression.Gzip))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _peak_kib(server) - before < 24 * 1024, "the server allocated for the bomb's decompressed size"
    assert _served(channel)


# --- metadata and deadlines ---


def test_metadata_over_grpcs_hard_limit_is_resource_exhausted_naming_it(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    for metadata in ([("x-big", "v" * 20000)], [("x-bin", b"\xff\x00" * 9000)]):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_mlp(), timeout=30, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        assert "metadata size exceeds" in (caught.value.details() or "")
    assert _served(channel)


def test_deadlines_at_either_extreme_get_a_precise_answer(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    for timeout in (1e-6, 0.0):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_mlp(), timeout=timeout)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # ~31 years: grpc sends it in hours; the server's deadline arithmetic must not overflow.
    assert stub.ModelInfer(_mlp("far"), timeout=1e9).outputs
    answers = list(stub.ModelStreamInfer(iter([_mlp("far")]), timeout=1e9))
    assert [a.infer_response.id for a in answers if not a.error_message] == ["far"]


# --- protobuf that python's client would not send ---


def _not_utf8(request: pb.ModelInferRequest) -> bytes:
    """`request` serialized, its one field holding "BAD!" holding 4 bytes that are not UTF-8 instead."""
    data = request.SerializeToString()
    assert data.count(b"BAD!") == 1
    return data.replace(b"BAD!", BAD)


def _named_input(name: str) -> pb.ModelInferRequest:
    request = _mlp()
    request.inputs[0].name = name
    return request


def _with_parameter(key: str, value: pb.InferParameter) -> pb.ModelInferRequest:
    request = _mlp()
    request.parameters[key].CopyFrom(value)
    return request


NOT_UTF8 = {
    "model_name": _not_utf8(_mlp(model_name="BAD!")),
    "model_version": _not_utf8(_mlp(model_version="BAD!")),
    "inputs[0].name": _not_utf8(_named_input("BAD!")),
    "parameters[0].key": _not_utf8(_with_parameter("BAD!", pb.InferParameter(int64_param=1))),
    "parameters['tag'].value.string_param": _not_utf8(
        _with_parameter("tag", pb.InferParameter(string_param="BAD!"))
    ),
}


@pytest.mark.parametrize("field", sorted(NOT_UTF8))
def test_a_string_that_is_not_utf8_is_invalid_argument_naming_the_field(
    channel: grpc.Channel, field: str
) -> None:
    code, details = _status(_raw_infer(channel), NOT_UTF8[field])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"field '{field}' is not valid UTF-8" in details, details


def test_stream_frames_that_are_not_utf8_are_each_answered_once_with_their_id(channel: grpc.Channel) -> None:
    # Each faulty frame's id is appended: a singular field sent again is merged, the last wins.
    faulty = [
        data + pb.ModelInferRequest(id=f"bad-{field}").SerializeToString() for field, data in NOT_UTF8.items()
    ]
    frames = [_mlp("before").SerializeToString(), *faulty, _mlp("after").SerializeToString()]
    answers = list(_raw_stream(channel)(iter(frames), timeout=30))
    assert len(answers) == len(frames)
    assert sorted(a.infer_response.id for a in answers if not a.error_message) == ["after", "before"]
    refused = {a.infer_response.id: a.error_message for a in answers if a.error_message}
    assert sorted(refused) == sorted(f"bad-{field}" for field in NOT_UTF8)
    for field in NOT_UTF8:
        message = refused[f"bad-{field}"]
        assert message.startswith("INVALID_ARGUMENT: ") and f"field '{field}' is not valid UTF-8" in message


def test_protobuf_merging_rules_are_honoured(channel: grpc.Channel) -> None:
    infer = _raw_infer(channel)
    valid = _mlp("merged").SerializeToString()
    # Unknown fields are skipped, as proto3 says; a singular field sent twice: the last wins.
    assert infer(valid + UNKNOWN_FIELD, timeout=30).outputs
    assert infer(pb.ModelInferRequest(model_name="nope").SerializeToString() + valid, timeout=30).outputs
    code, details = _status(infer, valid + pb.ModelInferRequest(model_name="nope").SerializeToString())
    assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details
    # A parameters map entry with a key and no value at all: a known one is refused naming it.
    no_value = b"\x22\x09\x0a\x07timeout"  # parameters (4) { key (1): "timeout" }
    code, details = _status(infer, valid + no_value)
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and details == "parameter 'timeout' must be an integer, got nothing"
    )
