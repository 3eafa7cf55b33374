"""The protocol over a real port with our generated stubs: datatypes, encodings, errors, health."""

from __future__ import annotations

import struct
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc
from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import ServerProcess, wait_until

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


def pack_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def unpack_bytes(data: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        items.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


def mlp_request(rows: int = 1, **fields: object) -> pb.ModelInferRequest:
    data = np.arange(rows * 64, dtype=np.float32).reshape(rows, 64) / 100
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, 64])],
        raw_input_contents=[data.tobytes()],
        **fields,
    )


def error_of(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)  # type: ignore[operator]
    return info.value


def test_every_datatype_round_trips_raw(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    rng = np.random.default_rng(1)
    request = pb.ModelInferRequest(model_name="identity", id="all-types")
    sent: dict[str, object] = {}
    for wire, dtype in NUMPY.items():
        array = (rng.integers(0, 2, (2, 3)) if wire == "BOOL" else rng.integers(0, 100, (2, 3))).astype(dtype)
        request.inputs.add(name=f"in_{wire}", datatype=wire, shape=[2, 3])
        request.raw_input_contents.append(array.tobytes())
        sent[wire] = array
    words = [b"a", b"", "é".encode(), b"x" * 300, b"\x00\x01", b"z"]
    request.inputs.add(name="in_BYTES", datatype="BYTES", shape=[2, 3])
    request.raw_input_contents.append(pack_bytes(words))
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "all-types"
    by_name = {
        o.name: (o, raw) for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    for wire, array in sent.items():
        output, raw = by_name[f"out_{wire}"]
        assert output.datatype == wire
        assert list(output.shape) == [2, 3]
        np.testing.assert_array_equal(np.frombuffer(raw, dtype=NUMPY[wire]).reshape(2, 3), array)
    output, raw = by_name["out_BYTES"]
    assert output.datatype == "BYTES"
    assert unpack_bytes(raw) == words


def test_typed_contents_equal_raw_contents(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    raw_answer = stub.ModelInfer(mlp_request(2), timeout=30)
    data = np.arange(2 * 64, dtype=np.float32) / 100
    typed = pb.ModelInferRequest(model_name="mlp")
    tensor = typed.inputs.add(name="features", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(data.tolist())
    typed_answer = stub.ModelInfer(typed, timeout=30)
    assert typed_answer.raw_output_contents == raw_answer.raw_output_contents


def test_typed_contents_for_every_datatype_but_fp16(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="identity")
    fields = {
        "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
        "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
        "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
        "FP32": "fp32_contents", "FP64": "fp64_contents",
    }  # fmt: skip
    for wire, field in fields.items():
        tensor = request.inputs.add(name=f"in_{wire}", datatype=wire, shape=[1, 3])
        getattr(tensor.contents, field).extend([True, False, True] if wire == "BOOL" else [1, 2, 3])
    words = request.inputs.add(name="in_BYTES", datatype="BYTES", shape=[1, 3])
    words.contents.bytes_contents.extend([b"a", b"bb", b"ccc"])
    request.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 3])
    err = error_of(stub.ModelInfer, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'in_FP16': FP16 data must be sent in raw_input_contents" in err.details()
    del request.inputs[-1]
    request.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 3]).contents.fp32_contents.extend([1, 2, 3])
    # Typed FP16 contents are refused even if present in another field.
    assert error_of(stub.ModelInfer, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_requests_get_precise_statuses(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    short = mlp_request(1)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    err = error_of(stub.ModelInfer, short)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(
        "input byte size mismatch for input 'features' for model 'mlp'. Expected 256, got 252"
    )

    extra = mlp_request(1)
    extra.raw_input_contents.append(b"")
    err = error_of(stub.ModelInfer, extra)
    assert (
        err.code() == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents has 2 entries" in err.details()
    )

    for raw in (mlp_request(1).raw_input_contents[0], b"\0" * 512):  # FP32's byte count, and FP64's
        mislabelled = mlp_request(1)
        mislabelled.inputs[0].datatype = "FP64"
        mislabelled.raw_input_contents[0] = raw
        err = error_of(stub.ModelInfer, mislabelled)
        # The datatype first, as Triton: FP32's bytes had been "byte size mismatch ... Expected 512".
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "input 'features': datatype FP64 does not match the model's FP32"

    bad_type = mlp_request(1)
    bad_type.inputs[0].datatype = "FLOAT"
    err = error_of(stub.ModelInfer, bad_type)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown datatype 'FLOAT'" in err.details()

    negative = mlp_request(1)
    negative.parameters["timeout"].int64_param = -5
    err = error_of(stub.ModelInfer, negative)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'timeout'" in err.details()

    sequence = mlp_request(1)
    sequence.parameters["sequence_id"].int64_param = 9
    err = error_of(stub.ModelInfer, sequence)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "sequence_id" in err.details()

    err = error_of(stub.ModelInfer, pb.ModelInferRequest(model_name="corrupt"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in err.details()

    # Unknown parameters are ignored; the server is still serving after all of the above.
    fine = mlp_request(3)
    fine.parameters["binary_data_output"].bool_param = True
    fine.parameters["priority"].uint64_param = 1
    assert list(stub.ModelInfer(fine, timeout=30).outputs[0].shape) == [3, 2]


def test_bad_models_are_reported_and_the_others_serve(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30).models}
    assert index["mlp"].state == "READY"
    assert index["identity"].state == "READY"
    assert index["corrupt"].state == "UNAVAILABLE" and index["corrupt"].reason
    assert index["badconfig"].state == "UNAVAILABLE"
    assert "config.pbtxt:2" in index["badconfig"].reason and "sequence_batcher" in index["badconfig"].reason
    assert index["warm"].state == "READY"
    assert index["badwarm"].state == "UNAVAILABLE" and "model_warmup failed" in index["badwarm"].reason
    assert index["cached"].state == "READY"  # response_cache, with the server's default cache
    ready_only = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=30).models
    assert {m.name for m in ready_only} == {"mlp", "identity", "resnet", "warm", "held", "cached"}
    # Strict readiness: the server is not ready while one of its models is not.
    assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live


def test_model_without_config_is_completed_from_the_graph(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="identity"), timeout=30).config
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size > 0
    assert {i.name for i in config.input} == {f"in_{w}" for w in [*NUMPY, "BYTES"]}
    assert all(list(i.dims) == [3] for i in config.input)


def test_health_per_model_and_reflection(zoo_server: ServerProcess) -> None:
    with grpc.insecure_channel(zoo_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check
        serving = health_pb2.HealthCheckResponse.SERVING
        assert check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == serving
        assert check(health_pb2.HealthCheckRequest(service="mlp"), timeout=10).status == serving
        assert (
            check(health_pb2.HealthCheckRequest(service="corrupt"), timeout=10).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # "" stays SERVING beside a model that failed; ServerReady is the strict answer (README).
        assert (
            not pb_grpc.GRPCInferenceServiceStub(channel)
            .ServerReady(pb.ServerReadyRequest(), timeout=10)
            .ready
        )
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )
        names = {s.name for s in answers[0].list_services_response.service}
        assert "inference.GRPCInferenceService" in names
        assert "grpc.health.v1.Health" in names


def held_request(rows: int, timeout_us: int = 0) -> pb.ModelInferRequest:
    """A request to `held` (conftest.py): 1 row waits in its queue of one for 3 more rows."""
    request = mlp_request(rows)
    request.model_name = "held"
    if timeout_us:
        request.parameters["timeout"].int64_param = timeout_us
    return request


def test_cancelled_request_is_never_computed(zoo_server: ServerProcess) -> None:
    # The request is held in the queue by the batching rules (it waits for 3 more rows), not by a
    # busy instance, so the cancel lands while it is queued whatever the timing; whether it is
    # queued is read from the server (a probe finds the queue of one full), never assumed.
    with grpc.insecure_channel(zoo_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def stats() -> pb.ModelStatistics:
            answer: pb.ModelStatisticsResponse = stub.ModelStatistics(
                pb.ModelStatisticsRequest(name="held"), timeout=30
            )
            return answer.model_stats[0]

        def queue_is_full() -> bool:
            # A probe that never enters the queue: its 1 us timeout has passed by the time it would.
            # Refused "Exceeds maximum queue size" while a request is queued, else for its deadline.
            err = error_of(stub.ModelInfer, held_request(1, timeout_us=1))
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                assert "Exceeds maximum queue size" in err.details(), err.details()
                return True
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
            refused = ("before the request was queued", "cannot be met")  # not "while waiting in the queue"
            assert any(reason in err.details() for reason in refused), err.details()
            return False

        before = stats()
        assert not queue_is_full()
        cancelled = stub.ModelInfer.future(held_request(1), timeout=120)
        wait_until(lambda: cancelled.done() or queue_is_full(), "the request to be queued")
        assert cancelled.cancel(), f"answered before it was cancelled: {cancelled.exception()!r}"
        # At once: 20 s is far less than `held` would hold it (60 s, then formation would skip it).
        wait_until(lambda: not queue_is_full(), "the cancelled request to leave the queue", timeout_s=20)
        with pytest.raises(grpc.FutureCancelledError):
            cancelled.result()
        # A full batch runs at once, alone: the cancelled request was in no batch, then or before.
        assert list(stub.ModelInfer(held_request(4), timeout=30).outputs[0].shape) == [4, 2]
        after = stats()
        assert after.inference_count - before.inference_count == 4
        assert after.execution_count - before.execution_count == 1
        assert after.inference_stats.queue.count - before.inference_stats.queue.count == 1  # that batch


def test_model_config_shows_the_defaults_triton_fills_in(tmp_path: Path) -> None:
    """A model without a config.pbtxt: its ModelConfig showed no instance_group, version_policy
    or default_model_filename (Triton shows all three), and no dynamic_batching although its graph
    batches (Triton's onnxruntime backend completes it; each request had run alone)."""
    write_model(tmp_path / "repo", "auto", demo_repository() / "mlp" / "1" / "model.onnx", None)
    server = ServerProcess("--model-repository", str(tmp_path / "repo"))
    with server, grpc.insecure_channel(server.address) as channel:
        config = (
            pb_grpc.GRPCInferenceServiceStub(channel)
            .ModelConfig(pb.ModelConfigRequest(name="auto"), timeout=10)
            .config
        )
    # Triton's: the group named after the model, 2 CPU instances for onnxruntime (was `auto_0`, 1).
    assert [(g.name, g.count, g.kind) for g in config.instance_group] == [
        ("auto", 2, mc.ModelInstanceGroup.KIND_CPU)
    ]
    assert config.version_policy.latest.num_versions == 1
    assert config.default_model_filename == "model.onnx"
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    # Triton's normalized config: max_batch_size as the preferred size, pinned memory on.
    assert list(config.dynamic_batching.preferred_batch_size) == [config.max_batch_size]
    assert config.optimization.input_pinned_memory.enable and config.optimization.output_pinned_memory.enable


def test_instance_groups_without_a_name_or_count_are_named_and_counted_as_triton_does(tmp_path: Path) -> None:
    # Triton names such a group `<model>_<index>` and counts a KIND_CPU one 2 under onnxruntime;
    # ModelConfig had shown neither (the demo config's own group has no name, and count 1).
    groups = 'instance_group [ { kind: KIND_CPU }, { name: "mine" count: 2 kind: KIND_CPU } ]\n'
    config_text = (demo_repository() / "mlp" / "config.pbtxt").read_text() + groups
    write_model(tmp_path / "repo", "mlp", demo_repository() / "mlp" / "1" / "model.onnx", config_text)
    server = ServerProcess("--model-repository", str(tmp_path / "repo"))
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), timeout=10).config
    assert [(g.name, g.count) for g in config.instance_group] == [("mlp_0", 1), ("mlp_1", 2), ("mine", 2)]
