"""Hostile shapes over a real server: refused with INVALID_ARGUMENT, nothing allocated by them."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    ("model", "name", "datatype", "shape", "raw"),
    [
        ("identity", "in_BYTES", "BYTES", [4_000_000, 64], b"\x00" * 4),
        ("identity", "in_BYTES", "BYTES", [1_000_000_000, 64], b"\x00" * 4),
        ("mlp", "features", "BYTES", [4_000_000, 64], b"\x00" * 4),  # decoded before the dtype check
        ("identity", "in_FP32", "FP32", [0, 2**62, 2**62], b""),  # numpy cannot describe it
    ],
)
def test_a_tiny_request_with_a_huge_shape_is_invalid_argument_and_costs_no_memory(
    zoo_server: ServerProcess, model: str, name: str, datatype: str, shape: list[int], raw: bytes
) -> None:
    assert zoo_server.process is not None
    pid = zoo_server.process.pid
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)],
        raw_input_contents=[raw],
    )
    with grpc.insecure_channel(zoo_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = rss_kib(pid)
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert f"input '{name}'" in (err.value.details() or "")
        grown_mib = (rss_kib(pid) - before) / 1024
        assert grown_mib < 64, f"resident memory grew {grown_mib:.0f} MiB"
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
