"""A request refused for what its metadata says (an input's name, shape, rows) is refused before its
shared-memory inputs are read: nothing of a 1 GiB region is copied for a request the server refuses.

The regions are sparse (ftruncate, nothing written), so the client's side costs nothing; the
server's peak resident memory (VmHWM) shows whether it copied one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server import triton_text
from tests.support.server_process import ServerProcess
from tests.support.shm_stub import unregistering_stub

SHM = Path("/dev/shm")
GIB = 1 << 30
ROWS = GIB // (64 * 4)  # mlp's features are [64] FP32 a row: 4,194,304 rows fill the region
SLACK_KIB = 256 * 1024  # far below the region: a copy of it would pass this many times over
FIRST_ROWS = np.arange(128, dtype=np.float32).reshape(2, 64)


@pytest.fixture(scope="module")
def server(demo_repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess("--model-repository", str(demo_repo), "--allow-client-shm") as process:
        yield process


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with unregistering_stub(server.address) as stub:
        yield stub


@pytest.fixture
def big_region(stub: pb_grpc.GRPCInferenceServiceStub) -> Iterator[str]:
    """A registered region of 1 GiB whose object holds one page (two rows of mlp's features, 0..127)
    and no other: its name."""
    key = f"sluiceway_it_{uuid.uuid4().hex[:12]}"
    path = SHM / key
    with path.open("wb") as f:
        os.ftruncate(f.fileno(), GIB)
        f.write(FIRST_ROWS.tobytes())
    try:
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name="big", key="/" + key, byte_size=GIB), timeout=30
        )
        yield "big"
    finally:
        path.unlink(missing_ok=True)


def reset_peak(server: ServerProcess) -> None:
    """Start the server's VmHWM afresh (Linux's clear_refs "5"), so each case sees only its own."""
    assert server.process is not None
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")


def peak_kib(server: ServerProcess) -> int:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


def in_shm(region: str, name: str, shape: list[int]) -> pb.ModelInferRequest:
    """An FP32 input `name` of `shape`, all of it in `region` (byte size as the shape says)."""
    params = {
        "shared_memory_region": pb.InferParameter(string_param=region),
        "shared_memory_byte_size": pb.InferParameter(int64_param=int(np.prod(shape)) * 4),
    }
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=shape, parameters=params)
    return pb.ModelInferRequest(model_name="mlp", inputs=[tensor])


CASES = {
    "rows": ("features", [ROWS, 64], triton_text.batch_too_large("mlp", 128, ROWS)),
    "name": ("nope", [ROWS, 64], triton_text.unexpected_input("nope", "mlp", ["features"])),
    "shape": (
        "features",
        [ROWS // 2, 128],
        triton_text.unexpected_shape("features", "mlp", [-1, 64], [ROWS // 2, 128]),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_request_refused_by_its_metadata_reads_none_of_its_region(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, big_region: str, case: str
) -> None:
    name, shape, says = CASES[case]
    reset_peak(server)
    before = peak_kib(server)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(in_shm(big_region, name, shape), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert caught.value.details() == says  # the full checks' words, unchanged
    # Read first, the 1 GiB region had been copied before the refusal: peak 117 MB -> 1.17 GB.
    assert peak_kib(server) - before < SLACK_KIB, (before, peak_kib(server))


def test_a_request_in_shared_memory_that_passes_the_checks_is_still_read(
    stub: pb_grpc.GRPCInferenceServiceStub, big_region: str
) -> None:
    """The read moved, not gone: a valid request's input comes from its region, as the same rows
    sent on the wire."""
    from_shm = stub.ModelInfer(in_shm(big_region, "features", [2, 64]), timeout=60)
    tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[2, 64])
    raw = pb.ModelInferRequest(model_name="mlp", inputs=[tensor], raw_input_contents=[FIRST_ROWS.tobytes()])
    on_wire = stub.ModelInfer(raw, timeout=60)
    assert from_shm.raw_output_contents[0] == on_wire.raw_output_contents[0]
