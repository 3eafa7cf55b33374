"""`serve --workers 3 --shared-sessions all`: the workers' sessions in one session host process
(server/backends/session_host.py), over a real port, with our stubs and tritonclient.

Every answer is the model's for its own request, whichever workers' batches a run merged; a
model whose tensors cannot cross shared memory runs in each worker as before; a stop drains and
removes the host's folder; a host that dies takes the server down (exit 1), as a worker does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from onnx import numpy_helper

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.bf16_models import bf16_model
from tests.support.procfs import children_of
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until
from tests.support.zoo_models import token_pool

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own: any worker
TOKENS = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"
SHARED = ("--workers", "3", "--shared-sessions", "all", "--max-batches-in-flight", "2")


def _repository(demo_repo: Path, root: Path) -> Path:
    repo, files = root / "repo", root / "files"
    files.mkdir()
    mlp = demo_repo / "mlp"
    write_model(repo, "mlp", mlp / "1" / "model.onnx", (mlp / "config.pbtxt").read_text())
    write_model(repo, "tokens", token_pool(files / "tokens.onnx"), TOKENS)
    write_model(repo, "bf16", bf16_model(files / "bf16.onnx"), None)  # BF16: not plain arrays
    return repo


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _repository(demo_repo, tmp_path_factory.mktemp("shared-sessions"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess("--model-repository", str(repo), *SHARED) as running:
        yield running


def _host_pid(parent: int) -> int:
    for pid in children_of(parent):
        if b"session_host" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError(f"no session host among {children_of(parent)}")


def _shared_figures(server: ServerProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    figures = {}
    for what in ("runs", "rows"):
        line = rf'^sluiceway_shared_session_{what}_total{{model="mlp",version="1"}} (\S+)$'
        match = re.search(line, text, re.M)
        assert match is not None, text[-2000:]
        figures[what] = float(match.group(1))
    return figures


def _mlp_request(features: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="features", datatype="FP32", shape=list(features.shape))
    request.raw_input_contents.append(features.tobytes())
    return request


def test_every_answer_is_its_own_requests_whichever_runs_merged(server: ServerProcess, repo: Path) -> None:
    local = ort.InferenceSession(str(repo / "mlp" / "1" / "model.onnx"))
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((int(rng.integers(1, 4)), 64)).astype(np.float32) for _ in range(96)]

    def ask(chunk: list[np.ndarray]) -> list[np.ndarray]:
        with grpc.insecure_channel(server.address, options=OWN_CONNECTION) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            answers = []
            for features in chunk:
                reply = stub.ModelInfer(_mlp_request(features), timeout=30)
                shape = tuple(reply.outputs[0].shape)
                answers.append(np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(shape))
            return answers

    before = _shared_figures(server)
    with ThreadPoolExecutor(12) as pool:  # 12 connections, spread over the 3 workers by the kernel
        chunks = [inputs[i::12] for i in range(12)]
        answered = dict(zip(range(12), pool.map(ask, chunks), strict=True))
    after = _shared_figures(server)  # the host's counts, which any worker's page shows
    assert after["rows"] - before["rows"] == sum(len(x) for x in inputs)
    assert 0 < after["runs"] - before["runs"] <= len(inputs)
    for i, chunk in enumerate(chunks):
        for features, answer in zip(chunk, answered[i], strict=True):
            (expected,) = local.run(None, {"features": features})
            np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
    assert "instances mlp_0 x1 (cpu, shared session)" in server.output()


def test_tritonclient_gets_the_answers_of_a_model_with_two_inputs(server: ServerProcess, repo: Path) -> None:
    local = ort.InferenceSession(str(repo / "tokens" / "1" / "model.onnx"))
    client = triton.InferenceServerClient(server.address)
    for rows, length in ((1, 3), (2, 5), (3, 3)):  # other lengths: batches that never merge
        ids = np.arange(rows * length, dtype=np.int64).reshape(rows, length) % 64
        mask = np.ones((rows, length), np.int64)
        wired = [
            triton.InferInput("ids", [rows, length], "INT64"),
            triton.InferInput("mask", [rows, length], "INT64"),
        ]
        wired[0].set_data_from_numpy(ids)
        wired[1].set_data_from_numpy(mask)
        result = client.infer("tokens", wired)
        pooled, top = local.run(["pooled", "top"], {"ids": ids, "mask": mask})
        np.testing.assert_allclose(result.as_numpy("pooled"), pooled, rtol=1e-6)
        np.testing.assert_array_equal(result.as_numpy("top"), top)


def test_a_model_whose_tensors_are_not_plain_arrays_runs_in_each_worker(server: ServerProcess) -> None:
    server.wait_for_output("runs here, not in the session host", times=3)  # once per worker
    assert re.search(
        r"model bf16: instance 0 runs here, not in the session host: tensors \[", server.output()
    )
    client = triton.InferenceServerClient(server.address)
    assert client.is_model_ready("bf16")


def test_a_reload_of_changed_weights_is_served_by_every_worker(demo_repo: Path, tmp_path: Path) -> None:
    """Poll mode, the model file replaced in place: the reload's instances open while the old ones
    still hold the old session, and with the session keyed by path alone the old weights went on
    being served (a tester's). Keyed by what the load read, every worker serves the new ones."""
    repo = tmp_path / "repo"
    model = repo / "mlp" / "1" / "model.onnx"
    model.parent.mkdir(parents=True)
    shutil.copyfile(demo_repo / "mlp" / "1" / "model.onnx", model)
    (repo / "mlp" / "config.pbtxt").write_text((demo_repo / "mlp" / "config.pbtxt").read_text())
    poll = ("--model-control-mode", "poll", "--repository-poll-secs", "1")
    features = np.ones((1, 64), np.float32)
    with ServerProcess("--model-repository", str(repo), *SHARED, *poll) as running:
        before = _mlp_scores(running.address, features)
        graph = onnx.load(str(model))
        bias = next(i for i in graph.graph.initializer if tuple(i.dims) == (2,))  # the last layer's
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 100.0, bias.name))
        onnx.save(graph, str(model.with_suffix(".new")))
        os.replace(model.with_suffix(".new"), model)
        running.wait_for_output("model mlp ready", times=3 * 2)  # each of 3 workers: load, reload
        answers = [_mlp_scores(running.address, features) for _ in range(12)]  # own connections
    for answer in answers:
        np.testing.assert_allclose(answer, before + 100.0, rtol=1e-5)


def _mlp_scores(address: str, features: np.ndarray) -> np.ndarray:
    with grpc.insecure_channel(address, options=OWN_CONNECTION) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.ModelInfer(_mlp_request(features), timeout=30)
    return np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(tuple(reply.outputs[0].shape))


def test_a_stop_drains_and_removes_the_hosts_folder(repo: Path) -> None:
    with ServerProcess("--model-repository", str(repo), *SHARED) as running:
        match = re.search(r"session host: listening on (\S+)", running.output())
        assert match is not None, running.output()[-3000:]
        folder = Path(match.group(1)).parent
        assert folder.is_dir() and oct(folder.stat().st_mode & 0o777) == "0o700"
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            stub.ModelInfer(_mlp_request(np.ones((2, 64), np.float32)), timeout=30)
        assert running.terminate() == 0
    assert re.search(r"model mlp: shared session ran \d+ batches of \d+ rows", running.output())
    assert not folder.exists()


def test_a_session_host_that_dies_takes_the_server_down(repo: Path) -> None:
    running = ServerProcess("--model-repository", str(repo), *SHARED).start()
    try:
        assert running.process is not None
        os.kill(_host_pid(running.process.pid), signal.SIGKILL)
        wait_until(lambda: running.process is not None and running.process.poll() is not None, "the exit")
        assert running.process.returncode == 1
        running.wait_for_output("the session host exited; stopping the others")
    finally:
        running.kill()
