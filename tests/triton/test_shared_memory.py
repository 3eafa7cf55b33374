"""tritonclient's system shared-memory helpers end to end against a real sluiceway process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.support.server_process import ServerProcess


@pytest.fixture
def client(shm_server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(url=shm_server.address)
    yield client
    client.unregister_system_shared_memory()
    client.close()


def _key() -> str:
    return f"/sluiceway_test_{uuid.uuid4().hex[:12]}"


def mlp_reference(demo_repo: Path, data: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(demo_repo / "mlp" / "1" / "model.onnx"))
    (out,) = session.run(["scores"], {"features": data})
    return np.asarray(out)


def test_mlp_inputs_and_outputs_in_system_shared_memory(
    demo_repo: Path, client: grpcclient.InferenceServerClient, regions: list[object]
) -> None:
    data = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    in_key, out_key = _key(), _key()
    in_handle = shm.create_shared_memory_region("in", in_key, data.nbytes)
    out_handle = shm.create_shared_memory_region("out", out_key, 4 * 2 * 4)
    regions += [in_handle, out_handle]
    shm.set_shared_memory_region(in_handle, [data])
    client.register_system_shared_memory("in", in_key, data.nbytes)
    client.register_system_shared_memory("out", out_key, 4 * 2 * 4)

    status = client.get_system_shared_memory_status(as_json=True)
    assert status["regions"]["in"] == {"name": "in", "key": in_key, "byte_size": str(data.nbytes)}

    tensor = grpcclient.InferInput("features", [4, 64], "FP32")
    tensor.set_shared_memory("in", data.nbytes)
    output = grpcclient.InferRequestedOutput("scores")
    output.set_shared_memory("out", 4 * 2 * 4)
    result = client.infer("mlp", [tensor], outputs=[output])

    answered = result.get_output("scores")
    assert answered.datatype == "FP32" and list(answered.shape) == [4, 2]
    assert result.get_response().raw_output_contents == [b""]  # Triton's form: data in the region
    got = shm.get_contents_as_numpy(out_handle, np.float32, [4, 2])
    np.testing.assert_allclose(got, mlp_reference(demo_repo, data), rtol=1e-5, atol=1e-5)


def test_shm_input_with_wire_output_and_an_offset(
    demo_repo: Path, client: grpcclient.InferenceServerClient, regions: list[object]
) -> None:
    data = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)
    key = _key()
    handle = shm.create_shared_memory_region("both", key, 1024 + data.nbytes)
    regions.append(handle)
    shm.set_shared_memory_region(handle, [data], offset=1024)
    client.register_system_shared_memory("both", key, 1024 + data.nbytes)
    tensor = grpcclient.InferInput("features", [2, 64], "FP32")
    tensor.set_shared_memory("both", data.nbytes, offset=1024)
    result = client.infer("mlp", [tensor])
    np.testing.assert_allclose(
        result.as_numpy("scores"), mlp_reference(demo_repo, data), rtol=1e-5, atol=1e-5
    )


def test_register_errors_as_triton(client: grpcclient.InferenceServerClient, regions: list[object]) -> None:
    key = _key()
    regions.append(shm.create_shared_memory_region("dup", key, 64))
    client.register_system_shared_memory("dup", key, 64)
    with pytest.raises(InferenceServerException) as info:
        client.register_system_shared_memory("dup", key, 64)
    assert info.value.status() == "StatusCode.ALREADY_EXISTS"
    assert "already in manager" in info.value.message()
    client.unregister_system_shared_memory("dup")
    assert client.get_system_shared_memory_status(as_json=True) == {}
    with pytest.raises(InferenceServerException) as info:
        client.register_system_shared_memory("big", key, 65)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    # A name is bounded as a key is (256 regions of 4 MiB names had held 1 GB): 255 bytes pass.
    client.register_system_shared_memory("n" * 255, key, 64)
    client.unregister_system_shared_memory("n" * 255)
    for register in (
        lambda name: client.register_system_shared_memory(name, key, 64),
        lambda name: client.register_cuda_shared_memory(name, b"\0" * 64, 0, 64),
    ):
        with pytest.raises(InferenceServerException) as info:
            register("n" * 1_000_000)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert (
            info.value.message() == f"shared memory region name '{'n' * 64}...' is 1000000 bytes; at most 255"
        )
    assert client.get_system_shared_memory_status(as_json=True) == {}


def test_cuda_shared_memory_is_refused_clearly(client: grpcclient.InferenceServerClient) -> None:
    assert client.get_cuda_shared_memory_status(as_json=True) == {}
    client.unregister_cuda_shared_memory()  # nothing registered: a no-op, as Triton's CPU build
    with pytest.raises(InferenceServerException) as info:
        client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 1024)
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "CUDA shared memory needs a GPU" in info.value.message()
    meta = client.get_server_metadata(as_json=True)
    assert "system_shared_memory" in meta["extensions"]
