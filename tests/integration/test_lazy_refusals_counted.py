"""Over a real server: a request a lazy model not loaded refuses before its load (judged by the
signatures its load would serve) is counted as the loaded model's refusal of it would be: in
ModelStatistics' `fail`, `nv_inference_request_failure{reason="OTHER"}` and
`sluiceway_rejection_total{reason="invalid"}` of the version it names, or, naming none, the newest
its load would serve; shown while the model is not loaded (without loading it), and kept by that
version once it loads. They had been counted nowhere (0 everywhere, where the build that loaded
the model first counted 3 of 3).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess

LAZY_TWO_VERSIONS = """
name: "lz"
backend: "identity"
max_batch_size: 8
version_policy { all { } }
input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }
parameters { key: "lazy_load" value { string_value: "true" } }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    for version in ("1", "2"):
        (repo / "lz" / version).mkdir(parents=True)
    (repo / "lz" / "config.pbtxt").write_text(LAZY_TWO_VERSIONS)
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


def request(columns: int, version: str = "") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="lz", model_version=version)
    message.inputs.add(name="x", datatype="FP32", shape=[1, columns])
    message.raw_input_contents.append(np.zeros((1, columns), np.float32).tobytes())
    return message


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        lines = answer.read().decode().splitlines()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith(name + "{") and all(w in line.split("}", 1)[0] for w in wanted)
    )


def fails(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, tuple[int, int]]:
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name="lz"), timeout=30)
    return {
        s.version: (s.inference_stats.success.count, s.inference_stats.fail.count) for s in answer.model_stats
    }


def test_refusals_before_the_load_are_counted_in_the_version_they_would_reach(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as unknown:  # no refusal yet: not available, as Triton
            stub.ModelStatistics(pb.ModelStatisticsRequest(name="lz"), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        for version in ("", "", "", "1", "7"):  # 3 naming none, 1 naming version 1, 1 not served
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request(3, version), timeout=30)
            expected = grpc.StatusCode.NOT_FOUND if version == "7" else grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.code() == expected, refused.value.details()

        ready = stub.ModelReady(pb.ModelReadyRequest(name="lz"), timeout=30)
        assert not ready.ready  # judged without loading it, and ModelStatistics does not load it
        assert fails(stub) == {"2": (0, 3), "1": (0, 1)}
        assert not stub.ModelReady(pb.ModelReadyRequest(name="lz"), timeout=30).ready
        one = stub.ModelStatistics(pb.ModelStatisticsRequest(name="lz", version="1"), timeout=30)
        assert [s.inference_stats.fail.count for s in one.model_stats] == [1]
        every = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=30)
        assert sorted((s.name, s.version) for s in every.model_stats) == [("lz", "1"), ("lz", "2")]
        for version, count in (("2", 3), ("1", 1)):
            labels = {"model": "lz", "version": version}
            assert metric(server, "nv_inference_request_failure", reason="OTHER", **labels) == count
            assert metric(server, "sluiceway_rejection_total", reason="invalid", **labels) == count

        stub.ModelInfer(request(4), timeout=60)  # valid: loads it
        assert fails(stub) == {"2": (1, 3), "1": (0, 1)}  # its versions keep the counts
        assert metric(server, "nv_inference_request_failure", model="lz", version="2", reason="OTHER") == 3
        assert metric(server, "sluiceway_rejection_total", model="lz", version="2", reason="invalid") == 3
