"""IO binding through a real server on the CPU provider (the path CUDA instances take by default):
the demo MLP and CNN and a BF16 model with `io_binding: "true"` answer batches of several requests
exactly as the same models without it, one run per batch; the load log and /metrics name each
instance's device."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import grpc
import ml_dtypes
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients import tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.bf16_models import bf16_model
from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_models import all_types

BF16 = np.dtype(ml_dtypes.bfloat16)
BOUND_S = 60.0  # generous: a CNN batch on a busy 2-core machine; only the 60 s queue delay exceeds it
# Four rows run at once as one batch; fewer wait (60 s, past any test's bound): requests sent
# together are batched together for certain.
BATCH_OF_FOUR = """
max_batch_size: 8
dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "idle_dispatch" value: {{ string_value: "false" }} }}
{extra}
"""
IO_BINDING = 'parameters { key: "io_binding" value: { string_value: "true" } }'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    demo = demo_repository()
    repo = tmp_path_factory.mktemp("io_binding")
    bf16 = bf16_model(tmp_path_factory.mktemp("io_binding-files") / "bf16.onnx")
    models = {
        "mlp": demo / "mlp" / "1" / "model.onnx",
        "resnet": demo / "resnet" / "1" / "model.onnx",
        "bf16": bf16,
    }
    for name, path in models.items():
        write_model(repo, f"{name}_bound", path, BATCH_OF_FOUR.format(extra=IO_BINDING))
        write_model(repo, f"{name}_plain", path, BATCH_OF_FOUR.format(extra=""))
    # String tensors are not bound: asked for, it is said at load (and the model runs session.run).
    strings = all_types(tmp_path_factory.mktemp("io_binding-strings") / "all_types.onnx")
    write_model(repo, "strings_bound", strings, BATCH_OF_FOUR.format(extra=IO_BINDING))
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def run_batch(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, inputs: list[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """Send the requests together (1 + 1 + 2 rows: one batch of four) and decode each answer."""
    futures = [stub.ModelInfer.future(tensors.build_request(model, x), timeout=BOUND_S) for x in inputs]
    return [tensors.decode_response(f.result(timeout=BOUND_S)) for f in futures]


def one_run_of_four(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> None:
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30).model_stats
    assert stats.inference_count == 4 and stats.execution_count == 1
    assert {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == {4: 1}


@pytest.mark.parametrize(
    ("model", "name", "shape"), [("mlp", "features", (64,)), ("resnet", "image", (3, 224, 224))]
)
def test_bound_batches_answer_as_plain_ones(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, name: str, shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(11)
    inputs = [{name: rng.standard_normal((rows, *shape)).astype(np.float32)} for rows in (1, 1, 2)]
    bound = run_batch(stub, f"{model}_bound", inputs)
    plain = run_batch(stub, f"{model}_plain", inputs)
    for got, want, sent in zip(bound, plain, inputs, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].shape[0] == sent[name].shape[0]
            np.testing.assert_array_equal(got[key], want[key])
    one_run_of_four(stub, f"{model}_bound")


def test_bf16_batches_run_bound_bit_for_bit(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    bits = [0x0000, 0x8000, 0x3F80, 0xC020, 0x7F7F, 0x0001, 0x7F80, 0x7FC1]
    inputs = [{"x": np.resize(np.asarray(bits, np.uint16), (rows, 4)).view(BF16)} for rows in (1, 1, 2)]
    for got, sent in zip(run_batch(stub, "bf16_bound", inputs), inputs, strict=True):
        assert got["y"].dtype == BF16
        assert got["y"].view(np.uint16).tolist() == sent["x"].view(np.uint16).tolist()
        np.testing.assert_array_equal(got["wide"], sent["x"].astype(np.float32))
    one_run_of_four(stub, "bf16_bound")


def test_the_load_log_and_metrics_name_each_instances_device(server: ServerProcess) -> None:
    log = "".join(server.lines)
    assert "mlp_bound version 1: instances mlp_bound_0 x1 (cpu, IO binding)" in log
    assert "mlp_plain version 1: instances mlp_plain_0 x1 (cpu)" in log
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as response:
        text = response.read().decode()
    instances = {
        (s.labels["model"], s.labels["device"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "sluiceway_model_instances"
    }
    assert instances[("mlp_bound", "cpu")] == 1 and instances[("resnet_plain", "cpu")] == 1
    assert {device for _, device in instances} == {"cpu"}  # KIND_CPU groups, on any machine


def test_io_binding_asked_of_a_string_model_is_said_once_at_load(server: ServerProcess) -> None:
    out = server.output()
    lines = [line for line in out.splitlines() if "strings_bound" in line and "WARNING" in line]
    assert len(lines) == 1, lines
    assert (
        "accepted but not applied here: parameters 'io_binding' (input 's', output 's2' are strings"
        in lines[0]
    )
    assert "strings_bound version 1: instances strings_bound_0 x1 (cpu)" in out  # session.run, no binding
