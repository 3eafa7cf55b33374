"""BF16 tensors over a real server with sluiceway's client: metadata, exact round trips, batching
of several BF16 requests into one run, and the refusals (typed contents, byte counts, strings)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import ml_dtypes
import numpy as np
import pytest

from clients import Client, tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc
from tests.support.bf16_models import bf16_repository
from tests.support.server_process import ServerProcess

BF16 = np.dtype(ml_dtypes.bfloat16)
BOUND_S = 30.0  # generous: only the 60 s queue delay (which batching must not wait for) exceeds it
# Bit patterns worth keeping exact: 0, -0, 1, -2.5, the largest finite, the smallest subnormal, inf, NaN.
SPECIAL_BITS = [0x0000, 0x8000, 0x3F80, 0xC020, 0x7F7F, 0x0001, 0x7F80, 0x7FC1]


@pytest.fixture(scope="module")
def bf16_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = bf16_repository(tmp_path_factory.mktemp("bf16"), tmp_path_factory.mktemp("bf16-files"))
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server


@pytest.fixture()
def client(bf16_server: ServerProcess) -> Iterator[Client]:
    with Client(bf16_server.address) as c:
        yield c


@pytest.fixture()
def stub(bf16_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(bf16_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def rows_of(values: list[float], rows: int) -> np.ndarray:
    return np.resize(np.asarray(values, np.float32), (rows, 4)).astype(BF16)


def test_metadata_and_config_name_bf16(client: Client) -> None:
    meta = client.model_metadata("bf16")
    assert [(t.name, t.datatype) for t in meta.inputs] == [("x", "BF16")]
    assert {t.name: t.datatype for t in meta.outputs} == {"y": "BF16", "doubled": "BF16", "wide": "FP32"}
    config = client.model_config("bf16")
    assert config.input[0].data_type == mc.TYPE_BF16


def test_bf16_round_trips_bit_for_bit(client: Client) -> None:
    x = np.asarray(SPECIAL_BITS, np.uint16).view(BF16).reshape(2, 4)
    out = client.infer("bf16", {"x": x})
    assert out["y"].dtype == BF16 and out["y"].shape == (2, 4)
    assert out["y"].view(np.uint16).tolist() == x.view(np.uint16).tolist()  # NaN payload, -0 kept
    np.testing.assert_array_equal(out["wide"], x.astype(np.float32))
    wide = x.astype(np.float32)
    small = np.isfinite(wide) & (np.abs(wide) < 1e38)  # 2x of the largest finite is inf: skipped
    np.testing.assert_array_equal(out["doubled"].astype(np.float32)[small], wide[small] * 2)


def test_bf16_requests_are_batched_together_and_answered_each(
    client: Client, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    # 1 + 1 + 2 rows reach the preferred size of 4: one run, three answers.
    inputs = [rows_of([1.5, -2, 3.25, 8], 1), rows_of([0.125, 7, -9, 1e3], 1), rows_of([4, 5, 6, 7], 2)]
    futures = [stub.ModelInfer.future(tensors.build_request("bf16_batched", {"x": x})) for x in inputs]
    for x, future in zip(inputs, futures, strict=True):
        out = tensors.decode_response(future.result(timeout=BOUND_S))
        assert out["y"].view(np.uint16).tolist() == x.view(np.uint16).tolist()
        np.testing.assert_array_equal(out["doubled"].astype(np.float32), x.astype(np.float32) * 2)
    (stats,) = client.model_statistics("bf16_batched").model_stats
    assert stats.inference_count == 4 and stats.execution_count == 1
    assert {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == {4: 1}


def test_typed_contents_are_refused_for_bf16(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="bf16")
    request.inputs.add(name="x", datatype="BF16", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=BOUND_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x': BF16 data must be sent in raw_input_contents" in str(info.value.details())


def test_a_bf16_byte_count_off_by_one_is_refused(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="bf16", raw_input_contents=[bytes(7)])
    request.inputs.add(name="x", datatype="BF16", shape=[1, 4])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=BOUND_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(info.value.details())  # the wording may follow Triton's; the facts must be there
    assert all(fact in details for fact in ("'x'", "7", "8", "BF16")), details


def test_a_bf16_model_with_string_inputs_is_refused_at_load_by_name(client: Client) -> None:
    index = {m.name: m for m in client.repository_index().models}
    assert index["bf16_str"].state != "READY"
    assert "cannot have string inputs ('s')" in index["bf16_str"].reason
    assert index["bf16"].state == "READY"
