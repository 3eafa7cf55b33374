"""The identity backend (`backend: "identity"`) through a real server, with our client and
tritonclient: FP32 and BYTES round trips, batched requests from concurrent clients each answered
with its own rows, `execute_delay_ms` in the statistics' compute time, a load refusal naming the
tensors, and a Triton-QA-style ensemble (identity nop -> ONNX add/sub -> identity nop)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper

from clients import NO_RETRY, AsyncClient, Client
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

DELAY_MS = 300  # the slow model's execute_delay_ms


def _io(*tensors: tuple[str, str, str]) -> str:
    kinds = {"INPUT": "input", "OUTPUT": "output"}
    text = ""
    for kind in ("INPUT", "OUTPUT"):
        entries = [
            f'{{ name: "{n}" data_type: TYPE_{t} dims: [ {d} ] }}'
            for n, t, d in tensors
            if n.startswith(kind)
        ]
        text += f"{kinds[kind]} [ {', '.join(entries)} ]\n"
    return text


IDENT = (
    'backend: "identity"\nmax_batch_size: 8\ndynamic_batching { }\n'
    + _io(
        ("INPUT0", "FP32", "-1"),
        ("INPUT1", "STRING", "2"),
        ("OUTPUT1", "STRING", "2"),
        ("OUTPUT0", "FP32", "-1"),
    )
    + "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
)
SLOW = (
    'backend: "identity"\nmax_batch_size: 8\ndynamic_batching { }\n'
    + _io(("INPUT0", "FP32", "4"), ("OUTPUT0", "FP32", "4"))
    + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    + f'parameters {{ key: "execute_delay_ms" value: {{ string_value: "{DELAY_MS}" }} }}\n'
)
# Triton's QA nop step (qa/common/gen_ensemble_model_utils.py create_nop_modelconfig) for FP32 [-1].
NOP = (
    'name: "nop_TYPE_FP32_-1"\nbackend: "identity"\nmax_batch_size: 1024\n'
    + _io(
        ("INPUT0", "FP32", "-1"),
        ("INPUT1", "FP32", "-1"),
        ("OUTPUT0", "FP32", "-1"),
        ("OUTPUT1", "FP32", "-1"),
    )
    + "instance_group [ { kind: KIND_CPU } ]\n"
)
BAD_PAIR = 'backend: "identity"\nmax_batch_size: 8\n' + _io(
    ("INPUT0", "FP32", "4"), ("OUTPUT0", "INT32", "4")
)


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = "".join(f'input_map {{ key: "{k}" value: "{v}" }} ' for k, v in inputs.items())
    maps += "".join(f'output_map {{ key: "{k}" value: "{v}" }} ' for k, v in outputs.items())
    return f'step {{ model_name: "{model}" model_version: -1 {maps}}}\n'


PAIR = {"INPUT0": "0", "INPUT1": "1"}
# As Triton's QA ensembles of a "simple" model: nop -> addsub -> nop.
QA_ENSEMBLE = (
    'platform: "ensemble"\nmax_batch_size: 8\n'
    + _io(
        ("INPUT0", "FP32", "-1"),
        ("INPUT1", "FP32", "-1"),
        ("OUTPUT0", "FP32", "-1"),
        ("OUTPUT1", "FP32", "-1"),
    )
    + "ensemble_scheduling {\n"
    + _step("nop_TYPE_FP32_-1", {"INPUT0": "INPUT0", "INPUT1": "INPUT1"}, {"OUTPUT0": "a", "OUTPUT1": "b"})
    + _step("addsub", {"INPUT0": "a", "INPUT1": "b"}, {"OUTPUT0": "sum", "OUTPUT1": "diff"})
    + _step(
        "nop_TYPE_FP32_-1", {"INPUT0": "sum", "INPUT1": "diff"}, {"OUTPUT0": "OUTPUT0", "OUTPUT1": "OUTPUT1"}
    )
    + "}\n"
)


def addsub_model(path: Path) -> Path:
    """INPUT0, INPUT1 FP32 [N, D] -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "addsub",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "D"]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "D"]) for n in ("OUTPUT0", "OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("identity-repo")
    files = tmp_path_factory.mktemp("identity-files")
    write_model(
        repo, "addsub", addsub_model(files / "addsub.onnx"), "max_batch_size: 8\ndynamic_batching { }\n"
    )
    for name, config in (
        ("ident", IDENT),
        ("slow", SLOW),
        ("nop_TYPE_FP32_-1", NOP),
        ("bad_pair", BAD_PAIR),
        ("qa_ensemble", QA_ENSEMBLE),
    ):
        (repo / name / "1").mkdir(parents=True)  # empty: neither needs a model file
        (repo / name / "config.pbtxt").write_text(config)
    with ServerProcess("--model-repository", str(repo)) as process:
        yield process


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.address, retry=NO_RETRY) as c:
        yield c


def _strings(rows: int, seed: int) -> np.ndarray:
    # Any bytes, not only UTF-8 text: the identity backend passes them through.
    return np.array(
        [[f"r{seed}-{i}".encode(), bytes([255, seed % 256, i])] for i in range(rows)], dtype=object
    )


def test_metadata_names_the_backend_and_a_bad_pair_is_refused_naming_it(client: Client) -> None:
    meta = client.model_metadata("ident")
    assert meta.platform == "identity"  # Triton's: the platform, else the backend
    assert [t.name for t in meta.inputs] == ["INPUT0", "INPUT1"]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("OUTPUT1", "BYTES"), ("OUTPUT0", "FP32")]
    assert client.model_config("nop_TYPE_FP32_-1").backend == "identity"
    index = {m.name: m for m in client.repository_index().models}
    assert index["ident"].state == "READY" and index["qa_ensemble"].state == "READY"
    assert index["bad_pair"].state == "UNAVAILABLE"
    assert "'INPUT0' with output 'OUTPUT0', but their data_types differ (TYPE_FP32 and TYPE_INT32)" in (
        index["bad_pair"].reason
    )


def test_fp32_and_bytes_come_back_unchanged_through_tritonclient(server: ServerProcess) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = _strings(2, 7)
    with triton.InferenceServerClient(server.address) as tc:
        inputs = [triton.InferInput("INPUT0", [2, 3], "FP32"), triton.InferInput("INPUT1", [2, 2], "BYTES")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(s)
        result = tc.infer("ident", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    assert result.as_numpy("OUTPUT1").tolist() == s.tolist()


def test_concurrent_clients_are_batched_and_each_gets_its_own_rows(
    client: Client, server: ServerProcess
) -> None:
    """The slow model's one instance is busy with the first request while the others queue: they
    share the next run, and the scatter gives each its own rows back."""
    rows = [1, 2, 1, 2, 1, 1]  # 7 rows queue behind the first: one batch of max_batch_size 8 holds them

    async def clients() -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        async def one(i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            x = np.full((rows[i], 4), i, dtype=np.float32) + np.arange(4, dtype=np.float32)
            async with AsyncClient(server.address, retry=NO_RETRY) as aclient:
                return x, await aclient.infer("slow", {"INPUT0": x}, timeout_s=30)

        return await asyncio.gather(*(one(i) for i in range(len(rows))))

    before = client.model_statistics("slow").model_stats[0]
    for x, out in asyncio.run(clients()):
        np.testing.assert_array_equal(out["OUTPUT0"], x)
    after = client.model_statistics("slow").model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == sum(rows) and executions < len(rows), (inferences, executions)

    async def bytes_clients() -> list[tuple[int, dict[str, np.ndarray]]]:
        async with AsyncClient(server.address, retry=NO_RETRY) as aclient:

            async def one(i: int) -> tuple[int, dict[str, np.ndarray]]:
                x = np.full((1 + i % 3, 5), i, dtype=np.float32)
                return i, await aclient.infer("ident", {"INPUT0": x, "INPUT1": _strings(1 + i % 3, i)})

            return await asyncio.gather(*(one(i) for i in range(16)))

    for i, out in asyncio.run(bytes_clients()):
        np.testing.assert_array_equal(out["OUTPUT0"], np.full((1 + i % 3, 5), i, dtype=np.float32))
        assert out["OUTPUT1"].tolist() == _strings(1 + i % 3, i).tolist()


def test_execute_delay_shows_in_the_compute_time(client: Client) -> None:
    before = client.model_statistics("slow").model_stats[0].inference_stats.compute_infer
    client.infer("slow", {"INPUT0": np.ones((1, 4), np.float32)}, timeout_s=30)
    after = client.model_statistics("slow").model_stats[0].inference_stats.compute_infer
    assert after.count == before.count + 1
    assert after.ns - before.ns >= DELAY_MS * 1_000_000


def test_a_qa_style_ensemble_runs_identity_steps_around_an_onnx_model(
    client: Client, server: ServerProcess
) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 3, dtype=np.float32)
    before = client.model_statistics("nop_TYPE_FP32_-1").model_stats[0].inference_stats.success.count
    out = client.infer("qa_ensemble", {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    after = client.model_statistics("nop_TYPE_FP32_-1").model_stats[0].inference_stats.success.count
    assert after == before + 2  # the nop model ran both its steps
    with triton.InferenceServerClient(server.address) as tc:
        inputs = [triton.InferInput(n, [2, 4], "FP32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = tc.infer("qa_ensemble", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
