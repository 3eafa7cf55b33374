"""Under a small memory budget: the first model a process loads is loaded again after its eviction
(it had been charged the process's one-time costs and refused for good), and a model that needs
more than the whole budget is refused saying so (it had blamed "no idle lazy model to evict")."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from clients import Client
from clients.endpoints import RetryPolicy
from clients.errors import SluicewayError
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import summed
from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import ServerProcess

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
BUDGET_MIB = 2  # the MLP holds 0.45 MB (1.5 MB with 3.10's onnxruntime 1.23): one fits, not two


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    """Lazy MLPs `a` and `b` and a lazy resnet `r`; yields the server and the resnet's file size."""
    demo, repo = demo_repository(), tmp_path_factory.mktemp("footprint_budget")
    for name, source in (("a", "mlp"), ("b", "mlp"), ("r", "resnet")):
        config = (demo / source / "config.pbtxt").read_text().replace(f'"{source}"', f'"{name}"')
        write_model(repo, name, demo / source / "1" / "model.onnx", config + LAZY)
    with ServerProcess(
        "--model-repository", str(repo), "--model-memory-budget-mb", str(BUDGET_MIB)
    ) as process:
        yield process, (demo / "resnet" / "1" / "model.onnx").stat().st_size


def infer(address: str, model: str) -> pb.ModelInferResponse:
    name, shape = ("image", [1, 3, 224, 224]) if model == "r" else ("features", [1, 64])
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype="FP32", shape=shape)
    message.raw_input_contents.append(np.zeros(shape, np.float32).tobytes())
    with grpc.insecure_channel(address) as channel:
        response: pb.ModelInferResponse = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            message, timeout=60
        )
        return response


def test_the_first_model_loaded_loads_again_after_its_eviction(server: tuple[ServerProcess, int]) -> None:
    """Before: a's first load measured 2.19 MB (3.10: 3.10 MB), more than the budget, and its
    reload was refused RESOURCE_EXHAUSTED "needs about 2.1 MiB (as measured at its last load)"."""
    process, _ = server
    for model in ("a", "b", "a"):  # with 3.10 two do not fit: b's load evicts a, a's evicts b
        assert infer(process.address, model).model_name == model


def test_a_model_needing_more_than_the_whole_budget_is_refused_saying_so(
    server: tuple[ServerProcess, int],
) -> None:
    process, resnet_bytes = server
    with pytest.raises(grpc.RpcError) as refused:
        infer(process.address, "r")
    details = refused.value.details() or ""
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert f"needs {resnet_bytes} bytes" in details, details
    budget = f"model_memory_budget_mb is {BUDGET_MIB} ({BUDGET_MIB << 20} bytes"
    assert f"more than the whole memory budget: {budget}" in details, details
    assert "--model-memory-budget-mb" in details and "no idle lazy model" not in details, details


def test_a_model_needing_more_than_the_whole_budget_is_not_retried_by_our_client(
    server: tuple[ServerProcess, int],
) -> None:
    """The refusal carries ErrorInfo OUTGROWS_MEMORY_BUDGET, so our client raises it at once: it had
    retried it as an overload (Overloaded) until its attempts ran out, each refused alike."""
    process, _ = server
    refusals = "sluiceway_model_load_refusals_total"
    before = summed(process, refusals)
    with (
        Client(process.address, retry=RetryPolicy(max_attempts=5)) as client,
        pytest.raises(SluicewayError) as refused,
    ):
        client.infer("r", {"image": np.zeros((1, 3, 224, 224), np.float32)}, timeout_s=60)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    assert refused.value.reason == "OUTGROWS_MEMORY_BUDGET", refused.value
    assert summed(process, refusals) == before + 1  # sent once: 5 refusals before
