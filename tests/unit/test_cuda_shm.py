"""CUDA shared memory without a GPU: the handle's parsing, the registry's bounds and names, a
region's reads and writes through the CUDA runtime wrappers (a fake libcudart whose device memory
is host memory: tests/support/fake_cudart.py), requests naming a CUDA region, and the refusals.
The same code against a real GPU: tests/integration/test_gpu.py (marked `gpu`)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server import datatypes
from server.backends.cuda_shm import CudaRegistry, cuda_shared_memory
from server.backends.cudart import (
    IPC_HANDLE_SIZE,
    CudaRuntime,
    CudaUnavailable,
    load_cudart,
    parse_ipc_handle,
)
from server.errors import InvalidRequest, RegionExists, RegionNotFound, SharedMemoryLimit, Unsupported
from server.protocol import shm_tensors
from server.protocol.shared_memory import SharedMemoryRegistry
from tests.support.fake_cudart import FakeCudart

GPU_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def lib() -> FakeCudart:
    return FakeCudart(devices=2)


def registry(lib: FakeCudart, **limits: int) -> CudaRegistry:
    return CudaRegistry(
        CudaRuntime(lib),
        lib.devices,
        max_regions=limits.get("regions", 4),
        max_bytes=limits.get("bytes", 1024),
    )


def test_a_handle_is_exactly_one_cuda_ipc_handle() -> None:
    raw = bytes(range(IPC_HANDLE_SIZE))
    handle = parse_ipc_handle(raw)
    assert bytes(memoryview(handle)) == raw
    for size in (0, 63, 65, 88):  # 88: the base64 text of a handle, sent undecoded
        with pytest.raises(ValueError, match=f"64 bytes, got {size} bytes"):
            parse_ipc_handle(b"\0" * size)


def test_register_maps_the_handle_and_the_region_reads_and_writes_device_memory(lib: FakeCudart) -> None:
    handle, address = lib.export(64, fill=np.arange(16, dtype=np.float32).tobytes())
    cuda = registry(lib)
    cuda.register("gpu", handle, 1, 64)
    assert [(r.name, r.device_id, r.byte_size) for r in cuda.status("")] == [("gpu", 1, 64)]
    assert lib.open == {address: 1}  # opened on the named GPU
    region = cuda.lookup("gpu")
    assert region is not None and cuda.lookup("other") is None
    assert region.read(8, 8).view(np.float32).tolist() == [2.0, 3.0]
    region.write(60, np.frombuffer(b"\x01\x02\x03\x04", np.uint8))
    assert lib.read(address + 60, 4) == b"\x01\x02\x03\x04"
    assert cuda.live_mappings == (1, 64)


def test_register_refuses_bad_arguments_naming_them(lib: FakeCudart) -> None:
    handle, _ = lib.export(64)
    cuda = registry(lib)
    with pytest.raises(InvalidRequest, match="without a name"):
        cuda.register("", handle, 0, 64)
    with pytest.raises(InvalidRequest, match="byte_size must be > 0"):
        cuda.register("a", handle, 0, 0)
    with pytest.raises(InvalidRequest, match="device_id 2 is not one of this server's 2 GPUs"):
        cuda.register("a", handle, 2, 64)
    with pytest.raises(InvalidRequest, match="raw_handle must be one cudaIpcMemHandle_t of 64 bytes, got 3"):
        cuda.register("a", b"abc", 0, 64)
    stale = b"\x7f" * IPC_HANDLE_SIZE  # exported by nobody: the runtime refuses to map it
    with pytest.raises(
        InvalidRequest, match=r"cannot open its CUDA IPC handle on GPU 0: .*MapBufferObjectFailed"
    ):
        cuda.register("a", stale, 0, 64)
    assert cuda.status("") == [] and cuda.live_mappings == (0, 0)  # nothing counted for the failures
    cuda.register("a", handle, 0, 64)  # nor the name kept


def test_names_are_unique_across_cuda_and_system_regions(lib: FakeCudart) -> None:
    handle, _ = lib.export(64)
    system = {"sys"}
    cuda = CudaRegistry(CudaRuntime(lib), 1, max_regions=4, max_bytes=1024, taken=system.__contains__)
    cuda.register("gpu", handle, 0, 64)
    for name in ("gpu", "sys"):
        with pytest.raises(RegionExists, match=f"'{name}' already in manager"):
            cuda.register(name, handle, 0, 64)


def test_a_system_region_cannot_take_a_cuda_regions_name(lib: FakeCudart) -> None:
    cuda = registry(lib)
    cuda.register("gpu", lib.export(8)[0], 0, 8)
    system = SharedMemoryRegistry(allowed=True, max_regions=4, max_bytes=1 << 20)
    system.device_regions = cuda
    with pytest.raises(RegionExists, match="'gpu' already in manager"):
        system.register("gpu", "any-key", 0, 8)  # refused before any object is opened


def test_regions_are_bounded_in_count_and_bytes(lib: FakeCudart) -> None:
    cuda = registry(lib, regions=2, bytes=100)
    cuda.register("a", lib.export(40)[0], 0, 40)
    with pytest.raises(SharedMemoryLimit, match="of 61 bytes: 40 bytes are mapped and max_shm_bytes is 100"):
        cuda.register("b", lib.export(61)[0], 0, 61)
    cuda.register("b", lib.export(60)[0], 0, 60)
    with pytest.raises(SharedMemoryLimit, match=r"2 CUDA regions are mapped, .*max_shm_regions=2"):
        cuda.register("c", lib.export(1)[0], 0, 1)
    cuda.unregister("a")
    cuda.register("c", lib.export(1)[0], 0, 1)
    assert [r.name for r in cuda.status("")] == ["b", "c"]


def test_unregister_while_in_use_closes_the_mapping_after_the_last_holder(lib: FakeCudart) -> None:
    handle, address = lib.export(16, fill=b"held")
    cuda = registry(lib)
    cuda.register("gpu", handle, 0, 16)
    held = cuda.lookup("gpu")  # as a request that resolved it holds it
    cuda.unregister("gpu")
    with pytest.raises(RegionNotFound, match="'gpu'"):
        cuda.status("gpu")
    assert cuda.lookup("gpu") is None
    assert held is not None and held.read(0, 4).tobytes() == b"held"  # still mapped
    assert lib.closed == [] and cuda.live_mappings == (1, 16)  # still counted against the limits
    del held
    gc.collect()
    assert lib.closed == [address] and cuda.live_mappings == (0, 0)
    cuda.unregister("never")  # unknown names are fine, as Triton


def test_unregister_everything(lib: FakeCudart) -> None:
    cuda = registry(lib)
    for name in ("a", "b"):
        cuda.register(name, lib.export(8)[0], 0, 8)
    cuda.unregister("")
    gc.collect()
    assert cuda.status("") == [] and len(lib.closed) == 2


def test_a_failed_copy_is_the_clients_region_error_not_internal(lib: FakeCudart) -> None:
    cuda = registry(lib)
    cuda.register("gpu", lib.export(8)[0], 0, 8)
    region = cuda.lookup("gpu")
    assert region is not None
    lib.fail_copies = True
    with pytest.raises(InvalidRequest, match=r"region 'gpu': cudaMemcpy \(device to host\) failed"):
        region.read(0, 8)
    with pytest.raises(InvalidRequest, match=r"region 'gpu': cudaMemcpy \(host to device\) failed"):
        region.write(0, np.zeros(8, np.uint8))


def _shm_params(region: str, size: int) -> dict[str, pb.InferParameter]:
    return {
        "shared_memory_region": pb.InferParameter(string_param=region),
        "shared_memory_byte_size": pb.InferParameter(int64_param=size),
    }


def test_a_request_reads_inputs_from_and_writes_outputs_to_a_cuda_region(lib: FakeCudart) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    in_handle, _ = lib.export(24, fill=x.tobytes())
    out_handle, out_address = lib.export(24)
    cuda = registry(lib)
    cuda.register("in", in_handle, 0, 24)
    cuda.register("out", out_handle, 0, 24)
    system = SharedMemoryRegistry(allowed=True, max_regions=1, max_bytes=1)
    system.device_regions = cuda
    request = pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", parameters=_shm_params("in", 24))],
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name="y", parameters=_shm_params("out", 24))
        ],
    )
    tensors = shm_tensors.resolve(request, system)
    assert tensors is not None
    read = tensors.read("x", datatypes.BY_WIRE["FP32"], (2, 3))
    np.testing.assert_array_equal(read, x)
    tensors.write("y", x * 2)
    np.testing.assert_array_equal(np.frombuffer(lib.read(out_address, 24), np.float32), (x * 2).ravel())
    with pytest.raises(InvalidRequest, match="should be at least 48 bytes"):
        tensors.write("y", np.zeros((2, 6), np.float32))


def test_the_refusals_say_why() -> None:
    with pytest.raises(Unsupported, match=r"needs a GPU: none is visible .*CPUExecutionProvider"):
        cuda_shared_memory(["CPUExecutionProvider"], allowed=True).register("g", b"", 0, 8)
    touched: list[int] = []

    def loader() -> CudaRuntime:
        touched.append(1)
        raise CudaUnavailable("no libcudart here")

    with pytest.raises(Unsupported, match="--allow-client-shm"):
        cuda_shared_memory(GPU_PROVIDERS, allowed=False, loader=loader).register("g", b"", 0, 8)
    assert touched == []  # off: the runtime is not touched (forked workers could not use CUDA)
    with pytest.raises(
        Unsupported, match=r"needs a GPU: the CUDA runtime did not answer .*no libcudart here"
    ):
        cuda_shared_memory(GPU_PROVIDERS, allowed=True, loader=loader).register("g", b"", 0, 8)
    none = cuda_shared_memory(GPU_PROVIDERS, allowed=True, loader=lambda: CudaRuntime(FakeCudart(devices=0)))
    with pytest.raises(Unsupported, match="the CUDA runtime lists none"):
        none.register("g", b"", 0, 8)
    assert none.status("") == [] and none.lookup("g") is None
    two = cuda_shared_memory(
        GPU_PROVIDERS, allowed=True, max_regions=3, loader=lambda: CudaRuntime(FakeCudart(2))
    )
    assert isinstance(two, CudaRegistry) and two.max_regions == 3


def test_load_cudart_names_what_it_tried() -> None:
    def opener(name: str) -> object:
        raise OSError(f"{name}: cannot open shared object file")

    with pytest.raises(CudaUnavailable, match=r"libcudart.so.13: .*libcudart.so.12"):
        load_cudart(opener)
    assert isinstance(load_cudart(lambda name: FakeCudart()), CudaRuntime)


def test_close_forgets_every_region_and_closes_their_mappings(lib: FakeCudart) -> None:
    cuda = registry(lib)
    handle, address = lib.export(8)
    cuda.register("gpu", handle, 0, 8)
    cuda.close()
    gc.collect()
    assert cuda.lookup("gpu") is None and lib.closed == [address] and cuda.live_mappings == (0, 0)
