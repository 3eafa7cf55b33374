"""Mutants of server/backends/io_binding.py that survived the whole-scope run of 2026-12-05
(tests/MUTANTS.md, forty-eighth session). Most were judged equivalent before (forty-fourth
session); what is left to pin: a bound run stages only the inputs it binds from the pinned copy,
so a large BF16 input (bound as an OrtValue, never staged) does not push the others out of it."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime as ort

from server.backends.cudart import CudaRuntime
from server.backends.io_binding import BoundRunner, Device
from server.backends.pinned import PinnedStaging, aligned
from tests.support.fake_cudart import FakeCudart
from tests.unit.test_mutants_io_binding import CPU, CUDA, Recording

BF16 = np.dtype(ml_dtypes.bfloat16)


def test_bf16_inputs_take_no_room_in_the_pinned_copy() -> None:
    """The staging limit holds the float input alone: staging every input (`names` None) would
    count the BF16 one too, find the batch too large and bind the float input unstaged."""
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    wide = np.ones((2, 400), BF16)  # 1600 bytes: with x's, past the limit
    lib = FakeCudart()
    staging = PinnedStaging(CudaRuntime(lib), 2, max_bytes=aligned(x.nbytes))
    session = Recording([CUDA, CPU], {})
    BoundRunner(session, ["y"], Device("cuda", 0), staging=staging).run({"x": x, "w": wide}, ort.RunOptions())
    ((binding, _),) = session.runs
    assert binding.inputs["w"][0] == "ortvalue"
    kind, index, dtype, shape, ptr = binding.inputs["x"]
    assert (kind, index, dtype, shape) == ("cpu", 0, np.float32, [2, 2])  # at its pinned pointer
    assert any(start <= ptr < start + size for start, size in lib.pinned.items())
    np.testing.assert_array_equal(binding.read["x"], x)
