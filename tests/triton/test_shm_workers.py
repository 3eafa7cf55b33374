"""System shared memory under `serve --workers 2`: a region registered through one worker is read
and written by the other, and an Unregister through either ends it in both (shm_book.py). Each
channel is a connection of its own, and the worker behind it is asked (RolloutStatus), so both
workers are certainly reached."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

from loadtest.worker_channels import OWN_CONNECTION, channels_to_each_worker
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

ROWS = 3


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("shm-workers") / "repo"
    mlp = demo_repo / "mlp"
    write_model(repo, "mlp", mlp / "1" / "model.onnx", (mlp / "config.pbtxt").read_text())
    with ServerProcess("--model-repository", str(repo), "--workers", "2", "--allow-client-shm") as process:
        yield process


def infer(channel: grpc.Channel, in_region: str, out_region: str) -> None:
    """The MLP on ROWS rows read from `in_region`, its scores written to `out_region`."""
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="features", datatype="FP32", shape=[ROWS, 64])
    tensor.parameters["shared_memory_region"].string_param = in_region
    tensor.parameters["shared_memory_byte_size"].int64_param = ROWS * 64 * 4
    output = request.outputs.add(name="scores")
    output.parameters["shared_memory_region"].string_param = out_region
    output.parameters["shared_memory_byte_size"].int64_param = ROWS * 2 * 4
    reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert list(reply.raw_output_contents) in ([], [b""])  # the scores are in the region


def register(channel: grpc.Channel, name: str, key: str, byte_size: int) -> None:
    request = pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=0, byte_size=byte_size)
    pb_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryRegister(request, timeout=30)


def unregister(channel: grpc.Channel, name: str) -> None:
    request = pb.SystemSharedMemoryUnregisterRequest(name=name)
    pb_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryUnregister(request, timeout=30)


def status(channel: grpc.Channel) -> dict[str, str]:
    request = pb.SystemSharedMemoryStatusRequest()
    answer = pb_grpc.GRPCInferenceServiceStub(channel).SystemSharedMemoryStatus(request, timeout=30)
    return {name: region.key for name, region in answer.regions.items()}


def test_a_region_is_every_workers_from_register_to_unregister(
    server: ServerProcess, demo_repo: Path, regions: list[object]
) -> None:
    session = ort.InferenceSession(str(demo_repo / "mlp" / "1" / "model.onnx"))
    rng = np.random.default_rng(11)
    first, second = (rng.standard_normal((ROWS, 64)).astype(np.float32) for _ in range(2))
    keys = {n: f"/sluiceway_workers_{n}_{uuid.uuid4().hex[:10]}" for n in ("in", "in2", "out")}
    handles = {n: shm.create_shared_memory_region(n, k, ROWS * 64 * 4) for n, k in keys.items()}
    regions += handles.values()
    shm.set_shared_memory_region(handles["in"], [first])
    shm.set_shared_memory_region(handles["in2"], [second])
    with ExitStack() as stack:
        worker = channels_to_each_worker(server.address, 2, stack, "mlp")
        register(worker["0"], "in", keys["in"], ROWS * 64 * 4)
        register(worker["0"], "out", keys["out"], ROWS * 2 * 4)
        assert status(worker["1"]) == {"in": keys["in"], "out": keys["out"]}
        with pytest.raises(grpc.RpcError) as again:  # one name across the workers
            register(worker["1"], "in", keys["in2"], ROWS * 64 * 4)
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS, again.value.details()

        for name in ("1", "0"):  # worker 1 never saw a Register: it maps both at this request
            shm.set_shared_memory_region(handles["out"], [np.zeros((ROWS, 2), np.float32)])
            infer(worker[name], "in", "out")
            got = shm.get_contents_as_numpy(handles["out"], np.float32, [ROWS, 2])
            (expected,) = session.run(["scores"], {"features": first})
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"worker {name}")

        unregister(worker["1"], "in")  # through the other worker: gone in both
        for name in ("0", "1"):
            with pytest.raises(grpc.RpcError) as gone:
                infer(worker[name], "in", "out")
            assert "Unable to find shared memory region: 'in'" in (gone.value.details() or "")
        assert status(worker["0"]) == {"out": keys["out"]}

        register(worker["1"], "in", keys["in2"], ROWS * 64 * 4)  # the name again, another object
        infer(worker["0"], "in", "out")  # worker 0 maps the new one, not its old mapping
        got = shm.get_contents_as_numpy(handles["out"], np.float32, [ROWS, 2])
        (expected,) = session.run(["scores"], {"features": second})
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        unregister(worker["0"], "")
        assert status(worker["1"]) == {}


def test_tritonclient_registers_and_infers_through_any_worker(
    server: ServerProcess, demo_repo: Path, regions: list[object]
) -> None:
    """tritonclient as a user runs it, many clients, each on a connection of its own: every one
    reads the regions one of them registered."""
    session = ort.InferenceSession(str(demo_repo / "mlp" / "1" / "model.onnx"))
    data = np.random.default_rng(5).standard_normal((ROWS, 64)).astype(np.float32)
    key = f"/sluiceway_workers_tc_{uuid.uuid4().hex[:10]}"
    handle = shm.create_shared_memory_region("tc_in", key, data.nbytes)
    regions.append(handle)
    shm.set_shared_memory_region(handle, [data])
    clients = [
        grpcclient.InferenceServerClient(url=server.address, channel_args=OWN_CONNECTION) for _ in range(8)
    ]
    try:
        clients[0].register_system_shared_memory("tc_in", key, data.nbytes)
        (expected,) = session.run(["scores"], {"features": data})
        for client in clients:
            tensor = grpcclient.InferInput("features", [ROWS, 64], "FP32")
            tensor.set_shared_memory("tc_in", data.nbytes)
            result = client.infer("mlp", [tensor])
            np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=1e-5, atol=1e-5)
        clients[-1].unregister_system_shared_memory()
        assert clients[0].get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    finally:
        for client in clients:
            client.close()


def test_the_load_scripts_read_every_workers_statistics(server: ServerProcess) -> None:
    """loadtest.model_statistics.every_workers_batches: each worker keeps its own statistics, so a
    point's rows under --workers are read from every worker (transport_ceiling's CPU per row)."""
    from loadtest.model_statistics import every_workers_batches, rows_and_runs

    before = rows_and_runs(every_workers_batches(server.address, "mlp", 2))
    data = np.zeros((2, 64), np.float32)
    with ExitStack() as stack:
        for channel in channels_to_each_worker(server.address, 2, stack, "mlp").values():
            request = pb.ModelInferRequest(model_name="mlp", raw_input_contents=[data.tobytes()])
            request.inputs.add(name="features", datatype="FP32", shape=[2, 64])
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    after = rows_and_runs(every_workers_batches(server.address, "mlp", 2))
    assert after[0] - before[0] == 4 and after[1] - before[1] == 2  # 2 rows through each worker


def test_a_region_is_the_object_registered_even_after_the_client_unlinks_its_key(
    server: ServerProcess, demo_repo: Path, regions: list[object]
) -> None:
    """Register binds the object, as in one process and in Triton: the other worker opens the
    registering worker's descriptor (another process's, through /proc), not the key again."""
    session = ort.InferenceSession(str(demo_repo / "mlp" / "1" / "model.onnx"))
    data = np.random.default_rng(9).standard_normal((ROWS, 64)).astype(np.float32)
    keys = {n: f"/sluiceway_workers_{n}_{uuid.uuid4().hex[:10]}" for n in ("gone_in", "gone_out")}
    handles = {n: shm.create_shared_memory_region(n, k, ROWS * 64 * 4) for n, k in keys.items()}
    regions += handles.values()
    shm.set_shared_memory_region(handles["gone_in"], [data])
    with ExitStack() as stack:
        worker = channels_to_each_worker(server.address, 2, stack, "mlp")
        register(worker["0"], "gone_in", keys["gone_in"], ROWS * 64 * 4)
        register(worker["0"], "gone_out", keys["gone_out"], ROWS * 2 * 4)
        for key in keys.values():  # the client keeps its own mapping (tritonclient's handle)
            (Path("/dev/shm") / key.lstrip("/")).unlink()
        try:
            infer(worker["1"], "gone_in", "gone_out")
            got = shm.get_contents_as_numpy(handles["gone_out"], np.float32, [ROWS, 2])
            (expected,) = session.run(["scores"], {"features": data})
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        finally:
            unregister(worker["1"], "")
            for key in keys.values():  # (so that the fixture's destroy finds them)
                (Path("/dev/shm") / key.lstrip("/")).touch()
