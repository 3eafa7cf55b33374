"""/metrics over a real server: known traffic, then a scrape parsed with prometheus_client's text
parser must show Triton's names and labels with the counts ModelStatistics shows, and ours (deadline
outcomes, dispatch reasons, rejections, streams) with the counts the traffic implies.

The server is this module's own, on a repository of its own (mlp copies with crafted batching
rules, a cached one, a slow and a failing fault-injected one), so counts start at zero. Requests
are known to be running when the batches-in-flight gauge says so: no sleeps.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

HANG_S = 1.0  # each run of `slow` takes this long (an injected hang before the real run)
TIMEOUT_US = 200_000  # the deadline of the requests sent to `slow`: well below HANG_S

HELD = """
max_batch_size: {mbs}
dynamic_batching {{ {preferred} max_queue_delay_microseconds: {delay_us} }}
parameters {{ key: "idle_dispatch" value: {{ string_value: "false" }} }}
"""


def fault(**values: str) -> str:
    """An mlp config with one instance and fault-injection parameters."""
    params = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in values.items()
    )
    return (
        "max_batch_size: 8\ndynamic_batching { }\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n" + params
    )


SLOW = fault(fault_hang_every="1", fault_hang_s=f"{HANG_S:g}")
RAISES = fault(fault_raise_every="1")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("metrics")
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(repo, "mlp", mlp, (demo_repo / "mlp" / "config.pbtxt").read_text())
    counted = (demo_repo / "mlp" / "config.pbtxt").read_text().replace('name: "mlp"', 'name: "counted"')
    write_model(repo, "counted", mlp, counted)  # one test's own
    write_model(repo, "cached", mlp, "response_cache { enable: true }\n")
    write_model(
        repo, "quad", mlp, HELD.format(mbs=8, preferred="preferred_batch_size: [ 4 ]", delay_us=60_000_000)
    )
    write_model(repo, "pair", mlp, HELD.format(mbs=2, preferred="", delay_us=60_000_000))
    write_model(
        repo, "delayed", mlp, HELD.format(mbs=8, preferred="preferred_batch_size: [ 4 ]", delay_us=100_000)
    )
    write_model(repo, "slow", mlp, SLOW)
    write_model(repo, "raises", mlp, RAISES)
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as process:
        assert process.metrics_port, process.output()
        yield process


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def request(model: str, seed: int = 0, timeout_us: int = 0, width: int = 64) -> pb.ModelInferRequest:
    data = np.random.default_rng(seed).standard_normal((1, width)).astype(np.float32)
    r = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, width])],
        raw_input_contents=[data.tobytes()],
    )
    if timeout_us:
        r.parameters["timeout"].int64_param = timeout_us
    return r


def scrape(server: ServerProcess) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, model: str | None = None, **labels: str) -> float:
    if model is not None:
        labels = {"model": model, "version": "1", **labels}
    return samples[(name, frozenset(labels.items()))]


def statistics(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    return stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30).model_stats[0]


def fails(call: object, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    assert info.value.code() == code, info.value.details()


def test_counts_match_model_statistics_under_triton_names(
    stub: pb_grpc.GRPCInferenceServiceStub, server: ServerProcess
) -> None:
    for seed in range(5):
        stub.ModelInfer(request("counted", seed), timeout=30)
    for _ in range(3):  # the wrong number of features
        fails(
            lambda: stub.ModelInfer(request("counted", width=3), timeout=30), grpc.StatusCode.INVALID_ARGUMENT
        )
    stub.ModelInfer(request("cached", 7), timeout=30)
    stub.ModelInfer(request("cached", 7), timeout=30)  # the same inputs: answered from the cache
    fails(lambda: stub.ModelInfer(request("raises"), timeout=30), grpc.StatusCode.INTERNAL)

    samples = scrape(server)
    for model in ("counted", "cached", "raises"):
        st = statistics(stub, model)
        infer = st.inference_stats
        assert value(samples, "nv_inference_request_success", model) == infer.success.count
        failures = sum(
            value(samples, "nv_inference_request_failure", model, reason=r)
            for r in ("REJECTED", "BACKEND", "OTHER")
        )
        assert failures == infer.fail.count
        assert value(samples, "nv_inference_count", model) == st.inference_count
        assert value(samples, "nv_inference_exec_count", model) == st.execution_count
        # Whole microseconds, as Triton's (they had carried fractions: 2605.867).
        assert value(samples, "nv_inference_request_duration_us", model) == infer.success.ns // 1000
        assert value(samples, "nv_inference_queue_duration_us", model) == infer.queue.ns // 1000
        for part in ("input", "infer", "output"):
            ns = getattr(infer, f"compute_{part}").ns
            assert value(samples, f"nv_inference_compute_{part}_duration_us", model) == ns // 1000
        assert value(samples, "sluiceway_request_duration_us_count", model) == infer.success.count
        assert value(samples, "sluiceway_goodput_total", model) == infer.success.count
        assert value(samples, "nv_inference_pending_request_count", model) == 0

    assert value(samples, "nv_inference_request_success", "counted") == 5
    assert value(samples, "nv_inference_request_failure", "counted", reason="OTHER") == 3
    assert value(samples, "sluiceway_rejection_total", "counted", reason="invalid") == 3
    assert value(samples, "nv_inference_request_failure", "raises", reason="BACKEND") == 1
    cached = statistics(stub, "cached").inference_stats
    assert value(samples, "nv_cache_num_hits_per_model", "cached") == cached.cache_hit.count == 1
    assert value(samples, "nv_cache_num_misses_per_model", "cached") == cached.cache_miss.count == 1
    assert ("nv_cache_num_hits_per_model", frozenset({"model": "mlp", "version": "1"}.items())) not in samples
    assert value(samples, "sluiceway_cpu_seconds_per_inference", "counted") > 0
    assert (
        value(samples, "sluiceway_batch_size_count", "counted") == statistics(stub, "counted").execution_count
    )


def test_deadline_outcomes_late_expired_shed(
    stub: pb_grpc.GRPCInferenceServiceStub, server: ServerProcess
) -> None:
    with ThreadPoolExecutor(2) as pool:
        # Runs at once (nothing known about `slow` yet, so nothing says it will be late): ends late.
        late = pool.submit(stub.ModelInfer, request("slow", 1, TIMEOUT_US), timeout=30)
        wait_until(lambda: value(scrape(server), "sluiceway_batches_in_flight", "slow") == 1, "slow running")
        # Queued behind it, still nothing known: admitted, then expires in the queue.
        expired = pool.submit(stub.ModelInfer, request("slow", 2, TIMEOUT_US), timeout=30)
        for future in (late, expired):
            with pytest.raises(grpc.RpcError) as info:
                future.result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Now a run is known to take HANG_S: refused at once.
    fails(
        lambda: stub.ModelInfer(request("slow", 3, TIMEOUT_US), timeout=30), grpc.StatusCode.DEADLINE_EXCEEDED
    )

    samples = scrape(server)
    outcomes = {
        o: value(samples, "sluiceway_deadline_outcome_total", "slow", outcome=o)
        for o in ("shed", "expired", "late", "on_time")
    }
    assert outcomes == {"shed": 1, "expired": 1, "late": 1, "on_time": 0}
    assert value(samples, "sluiceway_rejection_total", "slow", reason="deadline") == 1
    assert value(samples, "nv_inference_request_failure", "slow", reason="REJECTED") == 3
    assert value(samples, "sluiceway_batch_dispatch_total", "slow", reason="idle") == 1
    assert value(samples, "sluiceway_slack_at_dispatch_us_count", "slow") == 1
    assert (
        value(samples, "nv_inference_request_failure", "slow", reason="REJECTED")
        == statistics(stub, "slow").inference_stats.fail.count
    )


def test_dispatch_reasons(stub: pb_grpc.GRPCInferenceServiceStub, server: ServerProcess) -> None:
    with ThreadPoolExecutor(4) as pool:
        # `quad` waits 60 s for a batch of 4 (preferred); `pair` for max_batch_size 2 (full).
        for model, count in (("quad", 4), ("pair", 2)):
            futures = [pool.submit(stub.ModelInfer, request(model, i), timeout=30) for i in range(count)]
            for future in futures:
                future.result()
    stub.ModelInfer(request("delayed"), timeout=30)  # alone: waits its 100 ms queue delay
    stub.ModelInfer(request("mlp", 9), timeout=30)  # no delay: an idle instance takes it at once
    samples = scrape(server)

    def dispatched(model: str) -> dict[str, float]:
        reasons = ("full", "preferred", "delay_expired", "idle", "deadline", "drain")
        counts = {r: value(samples, "sluiceway_batch_dispatch_total", model, reason=r) for r in reasons}
        return {r: c for r, c in counts.items() if c}

    assert dispatched("quad") == {"preferred": 1}
    assert dispatched("pair") == {"full": 1}
    assert dispatched("delayed") == {"delay_expired": 1}
    assert set(dispatched("mlp")) == {"idle"}
    assert value(samples, "sluiceway_batch_size_bucket", "quad", le="4") == 1
    assert value(samples, "sluiceway_batch_size_bucket", "quad", le="2") == 0


def test_open_streams_and_gauge_labels(stub: pb_grpc.GRPCInferenceServiceStub, server: ServerProcess) -> None:
    done = threading.Event()

    def requests() -> Iterator[pb.ModelInferRequest]:
        yield request("mlp", 11)
        done.wait(30)

    answers = stub.ModelStreamInfer(requests(), timeout=30)
    assert not next(answers).error_message
    try:
        assert value(scrape(server), "sluiceway_streams_open") == 1
    finally:
        done.set()
    assert list(answers) == []
    wait_until(lambda: value(scrape(server), "sluiceway_streams_open") == 0, "the stream closed")
    samples = scrape(server)
    assert value(samples, "sluiceway_queue_requests", "mlp") == 0
    assert value(samples, "sluiceway_queue_bytes", "mlp") == 0
    # Exported from the start (server-wide); what makes it count: RELIABILITY.md, loadtest.beside_streams.
    assert value(samples, "sluiceway_stream_reads_paced_total") >= 0


def test_every_family_has_help_and_totals_are_counters(
    stub: pb_grpc.GRPCInferenceServiceStub, server: ServerProcess
) -> None:
    """Every family on a real server's /metrics (the views and the loader's, sampler's and
    rollout's sources) carries HELP, and each of ours counted in `_total` is typed counter."""
    stub.ModelInfer(request("mlp"), timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "sluiceway_model_loads" in families  # the loader's source is there
    assert not [name for name, f in families.items() if not f.documentation]
    typed = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert typed["sluiceway_model_loads_total"] == "counter"
    assert not [name for name, kind in typed.items() if name.endswith("_total") and kind != "counter"]


def test_tritons_cpu_gauges_show_this_machine(server: ServerProcess) -> None:
    """Triton's host gauges (server/observability/host_usage.py): the machine's memory as /proc
    says it, its CPU use a share, both on a real server's page."""
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc here: the gauges are left off")
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    samples = scrape(server)
    assert value(samples, "nv_cpu_memory_total_bytes") == int(meminfo["MemTotal"].split()[0]) * 1024
    assert 0 < value(samples, "nv_cpu_memory_used_bytes") < value(samples, "nv_cpu_memory_total_bytes")
    assert 0.0 <= value(samples, "nv_cpu_utilization") <= 1.0
