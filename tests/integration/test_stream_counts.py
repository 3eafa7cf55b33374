"""ModelStatistics of stream requests that do not end in a written answer: each request that enters
the counters ends in exactly one of success or fail (or CANCELED on /metrics, for one never
computed), and queue, compute and inference_count count the successes only.

(A caller cancelled after its run answered it, before its await resumed, is the race in
tests/unit/test_batcher_cancel_counts.py: it counts a success now.)
"""

from __future__ import annotations

import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

SHM = Path("/dev/shm")
BOUND_S = 30.0
SENT = 8
# Answers in request order, each run 300 ms: when the stream ends after its first answer, later
# requests are queued, running, or computed and waiting for their turn; and the server has read
# them all (a request it never read is never counted: with 50 ms runs, a CI run under load once
# cancelled before the server had read the last ones, and waited 60 s for their counts).
ORDERED = """
backend: "identity"
max_batch_size: 2
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { preserve_ordering: true }
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "execute_delay_ms" value { string_value: "300" } }
"""


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("stream_counts")
    write_model(repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", None)
    (repo / "ordered" / "1").mkdir(parents=True)
    (repo / "ordered" / "config.pbtxt").write_text(ORDERED)
    with ServerProcess("--model-repository", str(repo), "--allow-client-shm") as process:
        yield process


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def stats(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> dict[str, int]:
    (m,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=BOUND_S).model_stats
    s = m.inference_stats
    return {
        "rows": m.inference_count,
        "success": s.success.count,
        "fail": s.fail.count,
        "queue": s.queue.count,
        "compute": s.compute_infer.count,
    }


def canceled(server: ServerProcess, model: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as page:
        text = page.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "nv_inference_request_failure":
            for sample in family.samples:
                if sample.labels.get("model") == model and sample.labels.get("reason") == "CANCELED":
                    return int(sample.value)
    return 0


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in after}


def test_a_cancelled_streams_requests_each_end_in_one_count(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before, canceled_before = stats(stub, "ordered"), canceled(server, "ordered")
    frames = [
        pb.ModelInferRequest(
            model_name="ordered",
            id=f"r{i}",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=[1, 4])],
            raw_input_contents=[np.ones((1, 4), np.float32).tobytes()],
        )
        for i in range(SENT)
    ]
    sent_all = threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        yield from frames
        sent_all.set()  # grpc asks for the next once it has sent the one before

    call = stub.ModelStreamInfer(requests(), timeout=BOUND_S)
    assert next(call).infer_response.id == "r0"
    assert sent_all.wait(BOUND_S)
    call.cancel()  # the others: queued, running, or computed and not yet sent

    def settled() -> bool:
        d = delta(stats(stub, "ordered"), before)
        return d["success"] + d["fail"] + canceled(server, "ordered") - canceled_before == SENT

    try:
        wait_until(settled, "every request of the cancelled stream to be counted once")
    except AssertionError as exc:  # with the counts it stopped at
        now, cut = delta(stats(stub, "ordered"), before), canceled(server, "ordered") - canceled_before
        raise AssertionError(f"{exc}: {now}, CANCELED {cut}") from None
    d = delta(stats(stub, "ordered"), before)
    assert d["fail"] == 0
    # Queue, compute and rows: exactly the successes (1 row each), computed-but-unsent included.
    assert d["rows"] == d["queue"] == d["compute"] == d["success"] >= 1, d


def test_an_output_region_too_small_is_refused_before_it_is_computed(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    key = f"sluiceway_it_{uuid.uuid4().hex[:12]}"
    path = SHM / key
    path.write_bytes(bytes(64))
    try:
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name=f"small-{key}", key="/" + key, byte_size=8),
            timeout=BOUND_S,
        )
        before = stats(stub, "mlp")
        params = {
            "shared_memory_region": pb.InferParameter(string_param=f"small-{key}"),
            "shared_memory_byte_size": pb.InferParameter(int64_param=8),
        }
        request = pb.ModelInferRequest(
            model_name="mlp",
            id="too-small",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[2, 64])],
            raw_input_contents=[np.ones((2, 64), np.float32).tobytes()],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="scores", parameters=params)],
        )
        call = stub.ModelStreamInfer(iter([request]), timeout=BOUND_S)
        (answer,) = list(call)
        assert answer.error_message.startswith("INVALID_ARGUMENT: shared memory size specified"), answer
        assert "output 'scores' (8 bytes) should be at least 16 bytes" in answer.error_message
        assert f"region 'small-{key}'" in answer.error_message
        # A failure, never computed: neither in queue nor compute nor inference_count.
        assert delta(stats(stub, "mlp"), before) == {
            "rows": 0,
            "success": 0,
            "fail": 1,
            "queue": 0,
            "compute": 0,
        }
    finally:
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=f"small-{key}"))
        path.unlink(missing_ok=True)
