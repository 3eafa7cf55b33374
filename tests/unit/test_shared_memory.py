"""The shared-memory registry, its tensors and the CUDA seam, without a server (objects in a temp dir)."""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server import datatypes
from server.backends.cuda_shm import cuda_shared_memory
from server.errors import (
    InvalidRequest,
    RegionExists,
    RegionNotFound,
    SharedMemoryLimit,
    Unsupported,
)
from server.protocol import shm_tensors
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_regions import RegionGone, object_name


def registry(directory: Path, **limits: int) -> SharedMemoryRegistry:
    return SharedMemoryRegistry(
        allowed=True,
        max_regions=limits.get("max_regions", 8),
        max_bytes=limits.get("max_bytes", 1 << 20),
        directory=directory,
    )


def obj(directory: Path, name: str, data: bytes) -> str:
    (directory / name).write_bytes(data)
    return "/" + name


@pytest.mark.parametrize("key", ["", "/", "//", "a/b", "/../x", "..", ".", "a\0b", "x" * 256])
def test_keys_that_name_no_object_are_refused(key: str) -> None:
    with pytest.raises(InvalidRequest):
        object_name(key)


def test_leading_slashes_are_dropped_as_shm_open_does() -> None:
    assert object_name("/abc") == object_name("abc") == object_name("//abc") == "abc"


def test_register_status_unregister(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    key = obj(tmp_path, "o", bytes(range(256)) * 32)
    shm.register("a", key, 4100, 100)  # an offset that is not page-aligned
    assert [(r.name, r.key, r.offset, r.byte_size) for r in shm.status("")] == [("a", key, 4100, 100)]
    region = shm.lookup("a")
    assert bytes(region.read(0, 4)) == bytes([4100 % 256 + i for i in range(4)])
    with pytest.raises(RegionExists, match="already in manager"):
        shm.register("a", key, 0, 8)
    with pytest.raises(InvalidRequest, match="beyond the end"):
        shm.register("b", key, 8190, 3)
    with pytest.raises(RegionNotFound):
        shm.status("b")
    shm.unregister("nope")  # unknown names are fine, as Triton
    shm.unregister("")
    assert shm.status("") == []


def test_symlinks_and_other_files_are_refused(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    (tmp_path / "target").write_bytes(b"x" * 64)
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "dir").mkdir()
    for key in ("/link", "/dir"):
        with pytest.raises(InvalidRequest, match="not a regular file"):
            shm.register("r", key, 0, 8)


def test_unregistered_region_stays_mapped_while_a_request_holds_it(tmp_path: Path) -> None:
    shm = registry(tmp_path, max_regions=1)
    shm.register("a", obj(tmp_path, "o", b"\1" * 64), 0, 64)
    held = shm.lookup("a")  # what a request in flight holds
    mapping = weakref.ref(held.mapping)
    shm.unregister("a")
    with pytest.raises(RegionNotFound):
        shm.lookup("a")  # a new request cannot use the name
    assert shm.live_mappings == (1, 64)
    with pytest.raises(SharedMemoryLimit, match="max_shm_regions"):  # still counted
        shm.register("b", "/o", 0, 64)
    assert bytes(held.read(0, 8)) == b"\1" * 8  # still readable
    del held
    gc.collect()
    assert mapping() is None and shm.live_mappings == (0, 0)
    shm.register("b", "/o", 0, 64)


def test_bytes_limit_names_the_setting(tmp_path: Path) -> None:
    shm = registry(tmp_path, max_bytes=8192)
    key = obj(tmp_path, "o", bytes(3 * 4096))
    shm.register("a", key, 0, 4096)
    with pytest.raises(SharedMemoryLimit, match="max_shm_bytes is 8192"):
        shm.register("b", key, 0, 8192)


def test_disabled_registry_refuses_with_the_flag_to_set(tmp_path: Path) -> None:
    shm = SharedMemoryRegistry(allowed=False, max_regions=1, max_bytes=1, directory=tmp_path)
    with pytest.raises(Unsupported, match="--allow-client-shm"):
        shm.register("a", "/o", 0, 8)
    with pytest.raises(Unsupported, match="--allow-client-shm"):
        shm.lookup("a")
    assert shm.status("") == []


def test_truncated_object_is_refused_not_touched(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    shm.register("a", obj(tmp_path, "o", bytes(8192)), 4096, 4096)
    region = shm.lookup("a")
    region.check_size()
    (tmp_path / "o").write_bytes(bytes(100))  # truncated: reading the pages would be SIGBUS
    with pytest.raises(RegionGone, match="is now 100 bytes"):
        region.check_size()


def _tensor_params(region: str, size: int, offset: int = 0) -> dict[str, pb.InferParameter]:
    return {
        "shared_memory_region": pb.InferParameter(string_param=region),
        "shared_memory_byte_size": pb.InferParameter(int64_param=size),
        "shared_memory_offset": pb.InferParameter(int64_param=offset),
    }


def test_inputs_are_views_when_aligned_and_copies_when_not_or_private(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    values = np.arange(6, dtype=np.float32)
    shm.register("a", obj(tmp_path, "o", values.tobytes() + b"\0" + values.tobytes()), 0, 49)
    request = pb.ModelInferRequest(
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="x", parameters=_tensor_params("a", 24)),
            pb.ModelInferRequest.InferInputTensor(name="y", parameters=_tensor_params("a", 24, 25)),
        ]
    )
    tensors = shm_tensors.resolve(request, shm)
    assert tensors is not None
    fp32 = datatypes.BY_WIRE["FP32"]
    x = tensors.read("x", fp32, (2, 3))
    y = tensors.read("y", fp32, (2, 3))
    for array in (x, y):
        np.testing.assert_array_equal(array, values.reshape(2, 3))
        assert not array.flags.writeable
        assert not np.shares_memory(array, shm.lookup("a").mapping)  # copied out, never a view
    with pytest.raises(InvalidRequest, match="expected 16"):
        tensors.read("x", fp32, (2, 2))


def test_outputs_that_do_not_fit_name_the_output(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    shm.register("o", obj(tmp_path, "o", bytes(64)), 0, 64)
    request = pb.ModelInferRequest(
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name="out", parameters=_tensor_params("o", 8))
        ]
    )
    tensors = shm_tensors.resolve(request, shm)
    assert tensors is not None
    tensors.write("out", np.array([1.5, 2.5], np.float32))
    assert (tmp_path / "o").read_bytes()[:8] == np.array([1.5, 2.5], np.float32).tobytes()
    with pytest.raises(InvalidRequest, match=r"output 'out' \(8 bytes\) should be at least 12 bytes"):
        tensors.write("out", np.zeros(3, np.float32))


def test_a_request_without_shared_memory_resolves_to_none() -> None:
    assert (
        shm_tensors.resolve(
            pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="x")]), None
        )
        is None
    )
    lone = pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", parameters=_tensor_params("a", 8))]
    )
    with pytest.raises(InvalidRequest, match="does not serve tensors in shared memory"):
        shm_tensors.resolve(lone, None)


def test_cuda_seam_says_why_it_refuses() -> None:
    cpu = cuda_shared_memory(["CPUExecutionProvider"])
    with pytest.raises(Unsupported, match=r"needs a GPU: none is visible .*CPUExecutionProvider"):
        cpu.register("g", b"", 0, 8)
    assert cpu.status("") == [] and cpu.unregister("g") is None
    with pytest.raises(RegionNotFound, match="Unable to find cuda shared memory region: 'g'"):
        cpu.status("g")
    # onnxruntime-gpu, registration off (the default): the runtime is not even touched.
    gpu = cuda_shared_memory(["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(Unsupported, match="--allow-client-shm"):
        gpu.register("g", b"", 0, 8)


def test_settings_take_shared_memory_with_several_workers_and_refuse_bad_grpc_args() -> None:
    from pydantic import ValidationError

    from server.settings import ServerSettings
    from server.settings_rules import parse_grpc_args

    # Regions are every worker's (shm_book.py): no longer refused with workers > 1.
    assert ServerSettings(allow_client_shm=True, workers=2).workers == 2
    assert parse_grpc_args("grpc.http2.lookahead_bytes=4194304, grpc.a=-1") == [
        ("grpc.http2.lookahead_bytes", 4194304),
        ("grpc.a", -1),
    ]
    with pytest.raises(ValidationError, match=r"is not grpc\.<argument>=<integer>"):
        ServerSettings(grpc_server_args="lookahead=big")


@pytest.mark.parametrize("where", ["open", "mmap"])
def test_the_servers_open_file_limit_is_resource_exhausted_not_the_clients_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Registering at the server's fd limit (ulimit -n 128) was INTERNAL from mmap (29 of 80), or
    would be INVALID_ARGUMENT from open: neither is the client's mistake."""
    import errno

    from server.errors import SharedMemoryLimit
    from server.protocol import shm_regions

    def out_of_files(*args: object, **kwargs: object) -> object:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    key = obj(tmp_path, "region", b"\0" * 64)
    if where == "open":
        monkeypatch.setattr(shm_regions.os, "open", out_of_files)
    else:
        monkeypatch.setattr(shm_regions.mmap, "mmap", out_of_files)
    with pytest.raises(SharedMemoryLimit, match=r"no file descriptor left \(its open-file limit, ulimit -n"):
        shm_regions.open_region("r", key, 0, 64, tmp_path)


def test_a_region_whose_object_shrank_is_refused_on_read_and_write_never_touched(tmp_path: Path) -> None:
    """Reads and writes go through the descriptor (pread, pwrite), never the mapping: a touch of
    the mapping past a truncated object's end is a SIGBUS, and a size check before it cannot close
    the race (a tester's shrinking loop killed the server between check and copy)."""
    shm = registry(tmp_path)
    key = obj(tmp_path, "o", bytes(range(64)))
    shm.register("a", key, 0, 64)
    held = shm.lookup("a")
    assert bytes(held.read(8, 4)) == bytes([8, 9, 10, 11])
    os.truncate(tmp_path / "o", 10)  # shrinks below the region, after the request's checks
    with pytest.raises(RegionGone, match="is now 10 bytes"):
        held.read(8, 4)  # [8, 12) ends past the object's 10 bytes: a short pread
    held.write(60, np.ones(4, np.uint8))  # grows the object back (a write past its end), no SIGBUS
    assert (tmp_path / "o").stat().st_size == 64
    assert bytes(held.read(60, 4)) == bytes([1] * 4)
