"""The GPU path on a real GPU (marked `gpu`: skipped without onnxruntime-gpu and an NVIDIA device;
scripts/gpu_check.sh runs them). CUDA instances batch through IO binding with pinned staging,
CUDA graphs replay a fixed-shape model, TensorRT builds its engines before READY into a cache a
restart reuses, and CUDA shared memory regions carry inputs and outputs (tritonclient's client).
The same code runs on the CPU provider in tests/unit/test_io_binding.py and test_cuda_shm.py."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from clients import tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.backends.onnxruntime_backend import CPU, CUDA, TENSORRT, OrtBackend, OrtOptions
from tests.support.fixed_model import fixed_model
from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import ServerProcess

pytestmark = pytest.mark.gpu
BOUND_S = 120.0
# onnxruntime's CUDA provider multiplies float32 in TF32 (use_tf32, on by default) on Ampere and
# later: 10 bits of mantissa. On the H200 one of 16 MLP scores differed from the CPU's by 1.7e-3.
TF32 = {"rtol": 1e-2, "atol": 1e-2}
# A connection of its own (grpc shares one per target by default): under --workers, either worker.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
GPU_BATCHING = """
max_batch_size: 16
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: {kind} }} ]
{extra}
"""
# The MLP, not the CNN: its engines build in seconds, within gpu_check.sh's budget for the tests.
MLP_TENSORRT_FP16 = """
max_batch_size: 16
dynamic_batching { preferred_batch_size: [ 8 ] }
instance_group [ { count: 1 kind: KIND_GPU } ]
optimization { execution_accelerators { gpu_execution_accelerator [ {
  name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }
"""
FIXED_GRAPHS = """
max_batch_size: 0
input { name: "x" data_type: TYPE_FP32 dims: [ 2, 4 ] }
output { name: "twice" data_type: TYPE_FP32 dims: [ 2, 4 ] }
output { name: "plus" data_type: TYPE_FP32 dims: [ 2, 4 ] }
instance_group [ { count: 1 kind: KIND_GPU } ]
optimization { cuda { graphs: true } }
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo = demo_repository()
    root = tmp_path_factory.mktemp("gpu-repo")
    mlp = demo / "mlp" / "1" / "model.onnx"
    # Padding asked for: the default (`auto`) pads only models with a convolution, not the MLP.
    padded = 'parameters { key: "gpu_batch_padding" value: { string_value: "true" } }'
    write_model(root, "mlp_gpu", mlp, GPU_BATCHING.format(kind="KIND_GPU", extra=padded))
    write_model(root, "mlp_cpu", mlp, GPU_BATCHING.format(kind="KIND_CPU", extra=""))
    fixed = fixed_model(tmp_path_factory.mktemp("gpu-files") / "fixed.onnx")
    write_model(root, "fixed_graphs", fixed, FIXED_GRAPHS)
    if TENSORRT in ort.get_available_providers():
        write_model(root, "mlp_trt", mlp, MLP_TENSORRT_FP16)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-cache")


@pytest.fixture(scope="module")
def server(repo: Path, cache_dir: Path) -> Iterator[ServerProcess]:
    args = ("--model-repository", str(repo), "--cache-dir", str(cache_dir), "--allow-client-shm")
    with ServerProcess(*args) as running:
        yield running


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    return tensors.decode_response(stub.ModelInfer(tensors.build_request(model, inputs), timeout=BOUND_S))


def test_a_cuda_instance_stages_in_pinned_memory_and_answers_as_the_cpu() -> None:
    path = demo_repository() / "mlp" / "1" / "model.onnx"
    gpu = OrtBackend(path, OrtOptions(), [(CUDA, {"device_id": "0"}), (CPU, {})], ThreadPoolExecutor(1))
    cpu = OrtBackend(path, OrtOptions(), [(CPU, {})], ThreadPoolExecutor(1))
    assert str(gpu.device) == "cuda:0" and gpu.io.mode == "bound" and gpu.io.staging is not None
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    np.testing.assert_allclose(
        gpu.run_blocking({"features": x})["scores"],
        cpu.run_blocking({"features": x})["scores"],
        **TF32,
    )
    assert gpu.io.staging.pinned_bytes > 0  # the batch went through a pinned buffer
    gpu.close()
    cpu.close()


def test_gpu_instances_batch_through_io_binding(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    log = "".join(server.lines)
    # Padded to a steady size on the CUDA provider (server/backends/batch_padding.py): 3 rows run as 4.
    assert "mlp_gpu version 1: instances mlp_gpu_0 x1 (cuda:0, IO binding, padded batches)" in log
    rng = np.random.default_rng(1)
    requests = [{"features": rng.standard_normal((rows, 64)).astype(np.float32)} for rows in (1, 3, 4)]
    with ThreadPoolExecutor(3) as pool:
        gpu = list(pool.map(lambda x: infer(stub, "mlp_gpu", x), requests))
    for x, got in zip(requests, gpu, strict=True):
        np.testing.assert_allclose(got["scores"], infer(stub, "mlp_cpu", x)["scores"], **TF32)


@pytest.fixture(scope="module")
def workers_server(repo: Path, cache_dir: Path) -> Iterator[ServerProcess]:
    """`--workers 2 --shared-sessions gpu --allow-client-shm`; the last test using it stops it."""
    args = ("--model-repository", str(repo), "--cache-dir", str(cache_dir), "--workers", "2")
    shared = ("--shared-sessions", "gpu", "--max-batches-in-flight", "2", "--allow-client-shm")
    with ServerProcess(*args, *shared) as running:
        yield running


def test_cuda_shared_memory_is_every_workers_under_workers(workers_server: ServerProcess, repo: Path) -> None:
    """A CUDA region registered through one connection serves requests on fresh connections,
    whichever worker they reach (each maps the handle itself), and an Unregister through one ends it
    for all (server/protocol/cuda_shm_workers.py)."""
    pytest.importorskip("cuda.bindings.runtime")  # tritonclient's CUDA utilities need cuda-python
    import tritonclient.grpc as grpcclient
    import tritonclient.utils.cuda_shared_memory as cudashm

    address = workers_server.address
    x = np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32)
    local = ort.InferenceSession(str(repo / "mlp_cpu" / "1" / "model.onnx"))
    want = local.run(["scores"], {"features": x})[0]
    region = cudashm.create_shared_memory_region("in", x.nbytes, 0)

    def ask(_: int) -> np.ndarray | str:
        client = grpcclient.InferenceServerClient(address, channel_args=OWN_CONNECTION)
        try:
            feed = grpcclient.InferInput("features", [4, 64], "FP32")
            feed.set_shared_memory("in", x.nbytes)
            return client.infer("mlp_gpu", [feed], client_timeout=BOUND_S).as_numpy("scores")
        except grpcclient.InferenceServerException as err:
            return f"{err.status()} {err.message()}"
        finally:
            client.close()

    registrar = grpcclient.InferenceServerClient(address)
    try:
        cudashm.set_shared_memory_region(region, [x])
        registrar.register_cuda_shared_memory("in", cudashm.get_raw_handle(region), 0, x.nbytes)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(16)))
        for got in answers:
            assert not isinstance(got, str), got
            np.testing.assert_allclose(got, want, **TF32)
        registrar.unregister_cuda_shared_memory("in")
        with ThreadPoolExecutor(8) as pool:
            after = list(pool.map(ask, range(8)))
        gone = "Unable to find shared memory region: 'in'"
        assert all(isinstance(a, str) and gone in a for a in after), after
    finally:
        registrar.unregister_cuda_shared_memory()
        registrar.close()
        cudashm.destroy_shared_memory_region(region)


def test_shared_sessions_run_the_workers_batches_in_one_cuda_session(
    workers_server: ServerProcess, repo: Path
) -> None:
    """`--workers 2 --shared-sessions gpu`: the CUDA instance's session in the session host, shared
    by both workers (one CUDA context); the CPU instance stays in each worker. (It stops the
    module's workers server, to read its last lines: the last test to use it.)"""
    running = workers_server
    log = "".join(running.lines)
    assert "mlp_gpu_0 x1 (cuda:0, IO binding, padded batches, shared session)" in log, log[-3000:]
    assert "mlp_cpu_0 x1 (cpu)" in log
    rng = np.random.default_rng(2)
    shapes = [(rows, 64) for rows in (1, 2, 3) * 8]
    requests = [{"features": rng.standard_normal(shape).astype(np.float32)} for shape in shapes]
    local = ort.InferenceSession(str(repo / "mlp_cpu" / "1" / "model.onnx"))

    def ask(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with grpc.insecure_channel(running.address, options=OWN_CONNECTION) as channel:
            return infer(pb_grpc.GRPCInferenceServiceStub(channel), "mlp_gpu", x)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, requests))
    for x, got in zip(requests, answers, strict=True):
        np.testing.assert_allclose(got["scores"], local.run(["scores"], x)[0], **TF32)
    assert running.terminate() == 0
    assert "model mlp_gpu: shared session ran" in "".join(running.lines)


def test_cuda_graphs_replay_a_fixed_shape_model(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    assert "fixed_graphs_0 x1 (cuda:0, IO binding, CUDA graphs)" in "".join(server.lines)
    for step in range(3):  # each replay sees the new inputs copied into the captured addresses
        x = np.full((2, 4), step, np.float32) + np.arange(8, dtype=np.float32).reshape(2, 4)
        out = infer(stub, "fixed_graphs", {"x": x})
        np.testing.assert_array_equal(out["twice"], x * 2)
        np.testing.assert_array_equal(out["plus"], x + 1)


def test_tensorrt_builds_engines_before_ready_into_a_cache_a_restart_reuses(
    server: ServerProcess, repo: Path, cache_dir: Path, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    if TENSORRT not in ort.get_available_providers():
        pytest.skip("this onnxruntime-gpu has no TensorRT provider (install sluiceway[tensorrt])")
    log = "".join(server.lines)
    if "model mlp_trt: requested TensorrtExecutionProvider" in log:  # listed, but its libraries missing
        pytest.skip("the TensorRT provider did not start (install sluiceway[tensorrt]); see the server log")
    assert "model mlp_trt: TensorRT engines built for 3 batch shapes" in log  # batch 1, 8 and 16
    engines = cache_dir / "tensorrt" / "mlp_trt" / "1"
    built = {p.name: p.stat().st_mtime_ns for p in engines.glob("*.engine")}
    assert built, sorted(p.name for p in engines.iterdir())
    x = np.random.default_rng(2).standard_normal((5, 64)).astype(np.float32)
    want = infer(stub, "mlp_cpu", {"features": x})["scores"]
    got = infer(stub, "mlp_trt", {"features": x})["scores"]
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05 * float(np.abs(want).max()))  # FP16
    args = ("--model-repository", str(repo), "--cache-dir", str(cache_dir), "--load-model", "mlp_trt")
    with ServerProcess(*args, "--model-control-mode", "explicit"):
        pass  # ready: the engines were loaded from the cache
    assert {p.name: p.stat().st_mtime_ns for p in engines.glob("*.engine")} == built  # not rebuilt


def test_server_metadata_advertises_cuda_shared_memory_on_a_gpu(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    extensions = stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
    assert "cuda_shared_memory" in extensions and "system_shared_memory" in extensions


def test_cuda_shared_memory_carries_inputs_and_outputs(server: ServerProcess) -> None:
    pytest.importorskip("cuda.bindings.runtime")  # tritonclient's CUDA utilities need cuda-python
    import tritonclient.grpc as grpcclient
    import tritonclient.utils.cuda_shared_memory as cudashm

    x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    client = grpcclient.InferenceServerClient(server.address)
    inp = cudashm.create_shared_memory_region("in", x.nbytes, 0)
    out = cudashm.create_shared_memory_region("out", 4 * 2 * 4, 0)
    try:
        cudashm.set_shared_memory_region(inp, [x])
        client.register_cuda_shared_memory("in", cudashm.get_raw_handle(inp), 0, x.nbytes)
        client.register_cuda_shared_memory("out", cudashm.get_raw_handle(out), 0, 32)
        status = client.get_cuda_shared_memory_status(as_json=True)
        assert {r["name"]: int(r["byte_size"]) for r in status["regions"].values()} == {
            "in": x.nbytes,
            "out": 32,
        }
        feed = grpcclient.InferInput("features", [4, 64], "FP32")
        feed.set_shared_memory("in", x.nbytes)
        wanted = grpcclient.InferRequestedOutput("scores")
        wanted.set_shared_memory("out", 32)
        client.infer("mlp_gpu", [feed], outputs=[wanted])
        got = cudashm.get_contents_as_numpy(out, np.float32, [4, 2])
        reference = client.infer(
            "mlp_cpu", [grpcclient.InferInput("features", [4, 64], "FP32").set_data_from_numpy(x)]
        )
        np.testing.assert_allclose(got, reference.as_numpy("scores"), **TF32)
    finally:
        client.unregister_cuda_shared_memory()
        cudashm.destroy_shared_memory_region(inp)
        cudashm.destroy_shared_memory_region(out)
        client.close()
    assert client_status_empty(server)


def client_status_empty(server: ServerProcess) -> bool:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(), timeout=30).regions


def test_tritons_gpu_gauges_show_every_gpu_nvidia_smi_lists(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """NVML's readings on the real GPU (server/observability/gpu_usage.py), one series of each
    gauge per GPU, labelled with the UUID `nvidia-smi -L` gives it; the GPU models' memory counted."""
    import re
    import subprocess
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    infer(stub, "mlp_gpu", {"features": np.ones((4, 64), np.float32)})
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True)
    uuids = set(re.findall(r"UUID: (GPU-[0-9a-f-]+)", listing.stdout))
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    by_gpu = {s.labels["gpu_uuid"]: s.value for s in families["nv_gpu_memory_used_bytes"].samples}
    assert set(by_gpu) == uuids, (by_gpu, listing.stdout)
    total = {s.labels["gpu_uuid"]: s.value for s in families["nv_gpu_memory_total_bytes"].samples}
    assert all(0 < by_gpu[uuid] < total[uuid] for uuid in uuids)  # the CUDA session holds memory
    assert all(0.0 <= s.value <= 1.0 for s in families["nv_gpu_utilization"].samples)
    assert families["nv_energy_consumption"].type == "counter"
    # Power where the board reports it (printed: gpu_check.sh's log keeps what the H200 said).
    print({name: [s.value for s in families[name].samples] for name in families if name.startswith("nv_")})
