"""check_request reads inputs in shared memory last (server/protocol/request_checks.py): a request
its metadata condemns (rows, names, shapes) is refused before any byte of a region is read, and
what only the bytes show (an object that shrank, BYTES text) is still refused once they are."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server import datatypes, triton_text
from server.errors import InvalidRequest
from server.protocol.request_checks import check_request
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_regions import RegionGone
from server.protocol.validate import Signature, TensorSpec
from tests.unit.test_mutants_shm import params
from tests.unit.test_shared_memory import obj, registry

SIGNATURE = Signature(
    model="m",
    max_batch_size=2,
    inputs={
        "a": TensorSpec("a", datatypes.BY_WIRE["FP32"], (1,)),
        "s": TensorSpec("s", datatypes.BY_WIRE["FP32"], (3,)),
        "t": TensorSpec("t", datatypes.BYTES, (1,), optional=True),
    },
    outputs={"y": TensorSpec("y", datatypes.BY_WIRE["FP32"], (1,))},
)
ROWS = np.arange(6, dtype=np.float32).reshape(2, 3)


def tensor(
    name: str, datatype: str, shape: list[int], p: dict[str, pb.InferParameter] | None = None
) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape, parameters=p)


def request(rows: int, *extra: pb.ModelInferRequest.InferInputTensor) -> pb.ModelInferRequest:
    """Input s ([rows, 3] FP32) in region r, then a ([rows, 1]) raw, then `extra` (in shared memory)."""
    inputs = [tensor("s", "FP32", [rows, 3], params("r", rows * 12)), tensor("a", "FP32", [rows, 1]), *extra]
    raw = [np.zeros((rows, 1), np.float32).tobytes()]
    return pb.ModelInferRequest(model_name="m", inputs=inputs, raw_input_contents=raw)


@pytest.fixture
def shm(tmp_path: Path) -> SharedMemoryRegistry:
    found = registry(tmp_path)
    found.register("r", obj(tmp_path, "o", ROWS.tobytes().ljust(1024, b"\0")), 0, 1024)
    return found


def test_a_request_passing_its_checks_has_its_region_read_in_the_request_order(
    shm: SharedMemoryRegistry,
) -> None:
    checked = check_request(SIGNATURE, request(2), shm, None, sequences=False)
    assert list(checked.inputs) == ["s", "a"] and checked.rows == 2
    np.testing.assert_array_equal(checked.inputs["s"], ROWS)


def test_rows_are_refused_before_the_region_is_read(tmp_path: Path, shm: SharedMemoryRegistry) -> None:
    (tmp_path / "o").write_bytes(b"")  # the object shrank: reading it is RegionGone
    with pytest.raises(InvalidRequest) as refused:
        check_request(SIGNATURE, request(20), shm, None, sequences=False)
    assert str(refused.value) == triton_text.batch_too_large("m", 2, 20)  # not RegionGone: nothing read
    with pytest.raises(RegionGone):  # a request the checks pass reads it, and finds it gone
        check_request(SIGNATURE, request(2), shm, None, sequences=False)


def test_bytes_text_in_shared_memory_is_checked_once_read(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    framed = struct.pack("<I", 2) + b"\xff\xfe" + struct.pack("<I", 1) + b"x"
    shm.register("r", obj(tmp_path, "o", ROWS.tobytes() + framed), 0, 24 + len(framed))
    text = tensor("t", "BYTES", [2, 1], {**params("r", len(framed)), **params(None, None, 24)})
    with pytest.raises(InvalidRequest, match="input 't': BYTES element 0 is not UTF-8 text"):
        check_request(SIGNATURE, request(2, text), shm, None, sequences=False)
