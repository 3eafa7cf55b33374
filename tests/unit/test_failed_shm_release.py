"""A failed request in shared memory lets go of its region as a successful one does: its mapping
goes at unregister, with the garbage collector off (no collection may free it by luck).

Reference cycles through the failure's traceback had kept the failed request's job, and so its
regions, mapped after unregister until a collection: the batcher's future holding the failure
whose frames held the future (batch_io.refusal, enqueue), the fast path's frame holding the
failure it raised (run_now), and grpc's AbortError (kept in the call's state, which its frames
hold) whose __context__ was the request's failure (answers_errors). The fake context below keeps
the AbortError as grpc.aio's does.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server.models.manager import ModelManager
from server.protocol.answers import answers_errors
from server.protocol.request_path import RequestPath
from server.protocol.shared_memory import SharedMemoryRegistry
from server.settings import ServerSettings
from tests.support.models import filler_model
from tests.support.repositories import write_model

LIMIT = 64 * 1024
REGION = "reg"


class AbortError(Exception):
    pass


class Context:
    """As grpc.aio's servicer context: abort keeps the exception it raises in the call's state."""

    def __init__(self) -> None:
        self.abort_exception: AbortError | None = None
        self.status: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()) -> None:
        self.status = (code, details)
        self.abort_exception = AbortError("Locally aborted.")
        raise self.abort_exception


class Calls:
    def enter(self) -> None: ...

    def exit(self) -> None: ...


class Servicer:
    """ModelInfer's error handling around a request path (servicer.py, without gRPC)."""

    calls = Calls()

    def __init__(self, path: RequestPath) -> None:
        self.path = path

    @answers_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        return await self.path.infer(request, None)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Servicer, SharedMemoryRegistry, Path]]:
    repo = tmp_path / "repo"
    write_model(repo, "filler", filler_model(tmp_path / "filler.onnx"), None)
    manager = ModelManager(repo, ServerSettings(cache_dir=tmp_path / "cache"), lambda name, ready: None)
    await manager.load_all()
    shm_dir = tmp_path / "shm"
    shm_dir.mkdir()
    registry = SharedMemoryRegistry(allowed=True, max_regions=4, max_bytes=1 << 20, directory=shm_dir)
    path = RequestPath(manager, lambda: False, regions=registry, max_answer_bytes=LIMIT)
    try:
        yield Servicer(path), registry, shm_dir
    finally:
        await manager.stop(0.5)


def request(columns: int, case: str) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="filler", id="r")
    shape = r.inputs.add(name="SHAPE", datatype="INT64", shape=[2])
    if case in ("input", "over"):  # SHAPE read from the region: 8 bytes (wrong) or 16
        shape.parameters["shared_memory_region"].string_param = REGION
        shape.parameters["shared_memory_byte_size"].int64_param = 8 if case == "input" else 16
    else:
        r.raw_input_contents.append(np.array([1, columns], np.int64).tobytes())
    if case == "small":  # Y into 64 bytes: 100 columns (400 bytes) do not fit, 10 do
        y = r.outputs.add(name="Y")
        y.parameters["shared_memory_region"].string_param = REGION
        y.parameters["shared_memory_byte_size"].int64_param = 64
    return r


async def answered(servicer: Servicer, r: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str] | None:
    """The call's status (None: OK); the context goes with the call, as grpc's does."""
    context = Context()
    try:
        await servicer.ModelInfer(r, context)  # type: ignore[arg-type]
    except AbortError:
        return context.status
    return None


@pytest.mark.parametrize(
    ("case", "columns", "code"),
    [
        ("small", 10, None),  # the control: a successful request's mapping goes at unregister
        ("small", 100, grpc.StatusCode.INVALID_ARGUMENT),  # its output region too small
        ("input", 0, grpc.StatusCode.INVALID_ARGUMENT),  # its input's byte size wrong (prepare)
        ("over", 0, grpc.StatusCode.RESOURCE_EXHAUSTED),  # its answer over max_message_bytes
    ],
)
@pytest.mark.parametrize("warm", [False, True], ids=["queued", "fast-path"])
async def test_a_failed_requests_region_is_unmapped_at_unregister_without_a_collection(
    setup: tuple[Servicer, SharedMemoryRegistry, Path], case: str, columns: int, code: object, warm: bool
) -> None:
    servicer, registry, shm_dir = setup
    if warm:  # a few cheap runs: the estimator lets the next one run at once on the loop (run_now)
        for _ in range(3):
            assert await answered(servicer, request(1, "none")) is None
    (shm_dir / "o").write_bytes(np.array([1, 20_000], np.int64).tobytes() + bytes(48))  # 80 KB answer
    gc.collect()
    gc.disable()
    try:
        registry.register(REGION, "/o", 0, 64)
        status = await answered(servicer, request(columns, case))
        assert (status and status[0]) == code, status
        registry.unregister(REGION)
        for _ in range(100):  # loop turns, not time: the run's own callbacks (its flight) finish
            if registry.live_mappings == (0, 0):
                break
            await asyncio.sleep(0)
        assert registry.live_mappings == (0, 0), f"{case}: still mapped after unregister ({status})"
    finally:
        gc.enable()
