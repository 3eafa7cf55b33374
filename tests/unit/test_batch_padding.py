"""CUDA instances pad batches to a steady size (server/backends/batch_padding.py): onnxruntime's CUDA
Conv builds its plan again at every change of input shape, and on an H200 served resnet ran at 32
rows/s in batches of 8 where raw runs at a steady 8 did 5,539 (BENCHMARKS.md section 16).

The padded runner wraps a real BoundRunner on the CPU provider here (the CUDA path's runner, as
test_io_binding.py runs it): padded answers equal unpadded ones row for row. That only CUDA sessions
are padded is read from the session's providers; tests/integration/test_gpu.py sees it on a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from batcher.scatter import Gathered, gather
from protos import model_config_pb2 as mc
from server.backends import batch_padding, io_binding
from server.backends.batch_padding import (
    PaddedRunner,
    Padding,
    StickySize,
    batch_major,
    batch_rows,
    bucket,
    pad,
    padding_for,
)
from server.backends.cudart import CudaRuntime
from server.backends.io_binding import CPU_DEVICE, BoundRunner, instance_io
from server.backends.onnxruntime_backend import CPU, OrtOptions, ort_options_for
from server.backends.pinned import PinnedStaging
from server.models.config import ConfigError
from server.models.config_backend import backend_parameters, paddable
from server.models.onnx_completion import OnnxTensor
from tests.support.fake_cudart import FakeCudart
from tests.support.repositories import demo_repository

BATCHED = """
name: "m" max_batch_size: 16
input { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }
dynamic_batching { }
"""


def config(text: str = BATCHED) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def test_buckets_are_powers_of_two_up_to_the_largest_batch() -> None:
    assert [bucket(n, 16) for n in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert bucket(13, 12) == 12 and bucket(7, 6) == 6


def test_the_size_holds_while_the_load_holds_and_follows_it_when_it_moves() -> None:
    size = StickySize(64, shrink_after=1)
    steady = [size.size_for(n) for n in (8, 7, 6, 8, 5, 3, 8)]
    assert steady == [8] * 7 and size.changes == 1  # one shape: one plan build
    assert size.size_for(9) == 16  # grows at once to hold the batch
    assert [size.size_for(n) for n in (5, 9, 16)] == [16, 16, 16]
    assert size.size_for(4) == 4 and size.changes == 3  # a quarter or less: the load went down
    assert size.size_for(100) == 100 and size.current == 4  # larger than batches are: left alone


@pytest.mark.parametrize(("shrink_after", "changes"), [(1, 40), (8, 1)])
def test_a_lone_request_between_full_batches_keeps_the_size_by_default(
    shrink_after: int, changes: int
) -> None:
    """The batcher alternates a lone request (the idle instance takes it as a batch ends) with the
    rest (BENCHMARKS.md section 12: sizes 1 and 7 in turn). With shrink_after 1, the first default,
    every batch changed the shape, each change a cuDNN plan build per convolution on a GPU (resnet_u8
    at 64 in flight: 367 rows/s, p50 237 ms); the default now holds it."""
    size = StickySize(64, shrink_after)
    for _ in range(20):
        size.size_for(63)
        size.size_for(1)
    assert size.changes == changes
    assert StickySize(64).shrink_after == 8  # the default


def test_a_size_shrinks_only_after_so_many_small_batches_in_a_row() -> None:
    size = StickySize(64, shrink_after=3)
    assert size.size_for(40) == 64
    assert [size.size_for(n) for n in (10, 12, 30, 9, 16)] == [64] * 5  # a larger batch restarts the count
    assert size.size_for(3) == 4 and size.changes == 2  # the third small one in a row
    assert StickySize(8, shrink_after=0).shrink_after == 1


def test_rows_are_the_first_dimension_every_input_shares() -> None:
    assert batch_rows({"a": np.zeros((3, 4)), "b": np.zeros((3,))}) == 3
    assert batch_rows({"a": np.zeros((3, 4)), "b": np.zeros((2, 4))}) is None
    assert batch_rows({"a": np.zeros((3, 4)), "s": np.zeros(())}) is None
    assert batch_rows({}) is None


def test_padding_repeats_the_last_row() -> None:
    x = np.arange(6, dtype=np.int32).reshape(3, 2)  # integers: a zero row could be a zero divisor
    padded = pad({"x": x}, 3, 8)["x"]
    assert padded.shape == (8, 2)
    np.testing.assert_array_equal(padded[:3], x)
    assert (padded[3:] == x[2]).all()


class Echo:
    """A runner that returns its input doubled and a per-batch scalar, recording the rows it ran."""

    def __init__(self) -> None:
        self.ran: list[int] = []

    def run(self, feed: dict[str, Any], run_options: ort.RunOptions) -> list[Any]:
        x = feed["x"]
        self.ran.append(x.shape[0])
        return [x * 2, np.float32(x.shape[0])]


def test_only_graphs_whose_first_dimensions_are_one_batch_symbol_are_padded() -> None:
    x, y = OnnxTensor("x", "tensor(float)", ["N", 4]), OnnxTensor("y", "tensor(float)", ["N", 2])
    flag = OnnxTensor("flag", "tensor(int64)", [])  # the division guard's count: 0-d, kept whole
    assert batch_major([x], [y, flag])
    # A column sum (its first dim unknown) would take the padding rows in: not padded.
    assert not batch_major([x], [OnnxTensor("sums", "tensor(float)", [None])])
    assert not batch_major([x], [OnnxTensor("y", "tensor(float)", ["M", 2])])  # another symbol
    assert not batch_major([x, OnnxTensor("z", "tensor(float)", ["B", 4])], [y])  # inputs disagree
    assert not batch_major([OnnxTensor("x", "tensor(float)", [8, 4])], [y])  # a fixed first dim
    assert not batch_major([], [y])


def test_by_default_only_a_model_with_a_convolution_is_padded() -> None:
    demo = demo_repository()
    mlp, resnet = demo / "mlp" / "1" / "model.onnx", demo / "resnet" / "1" / "model.onnx"
    assert padding_for(Padding(64), mlp) is None  # Gemm and Relu only: no plan to keep
    assert padding_for(Padding(64), resnet) == Padding(64)
    assert padding_for(Padding(64, convolutions_only=False), mlp) == Padding(64, convolutions_only=False)
    assert padding_for(None, resnet) is None


def test_the_runner_pads_and_cuts_the_outputs_back() -> None:
    inner = Echo()
    runner = PaddedRunner(inner, Padding(16))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    doubled, scalar = runner.run({"x": x}, ort.RunOptions())
    assert inner.ran == [4] and doubled.shape == (3, 4) and scalar == 4  # a 0-d output is kept whole
    np.testing.assert_array_equal(doubled, x * 2)
    runner.run({"x": x[:2]}, ort.RunOptions())  # 2 rows still run at 4: no new shape
    runner.run({"x": np.zeros((4, 4), np.float32)}, ort.RunOptions())  # exactly the size: as sent
    assert inner.ran == [4, 4, 4]


def test_an_output_whose_first_dim_is_not_the_padded_size_is_left_as_run() -> None:
    class Columns:
        def run(self, feed: dict[str, Any], run_options: ort.RunOptions) -> list[Any]:
            return [feed["x"].sum(axis=0)]  # 6 column sums, whatever the rows

    (sums,) = PaddedRunner(Columns(), Padding(64)).run({"x": np.ones((5, 6), np.float32)}, ort.RunOptions())
    assert sums.shape == (6,)  # 5 rows ran as 8; not cut to 5: scatter refuses it, loudly


@pytest.mark.parametrize(
    ("model", "name", "shape", "sizes", "last"),
    [("mlp", "features", (64,), (3, 5, 1, 17), 32), ("resnet", "image", (3, 224, 224), (3, 2, 5), 8)],
)
def test_padded_answers_equal_unpadded_ones_row_for_row(
    model: str, name: str, shape: tuple[int, ...], sizes: tuple[int, ...], last: int
) -> None:
    path = demo_repository() / model / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=[CPU])
    output = session.get_outputs()[0].name
    plain = BoundRunner(session, [output], CPU_DEVICE)
    padded = PaddedRunner(BoundRunner(session, [output], CPU_DEVICE), Padding(64))
    rng = np.random.default_rng(3)
    for rows in sizes:
        x = rng.standard_normal((rows, *shape)).astype(np.float32)
        (want,) = plain.run({name: x}, ort.RunOptions())
        (got,) = padded.run({name: x}, ort.RunOptions())
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # another batch size: other kernels
    assert padded.size.current == last  # the last batch's rows ran padded to this


@pytest.mark.parametrize("max_bytes", [1 << 30, 16])  # staged; too large to stage (padded in numpy)
def test_a_staged_batch_is_padded_in_its_pinned_copy(max_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A padded batch had been copied twice on a CUDA instance: padded (5.6 ms for 33 resnet rows
    to 64), then staged into pinned memory. Staged, it is padded in the pinned copy: numpy's pad is
    not called. Over a stand-in CUDA runtime whose pinned memory is host memory; answers as unpadded."""
    path = demo_repository() / "mlp" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=[CPU])
    output = session.get_outputs()[0].name
    staging = PinnedStaging(CudaRuntime(FakeCudart()), max_buffers=2, max_bytes=max_bytes)
    plain = BoundRunner(session, [output], CPU_DEVICE)
    padded = PaddedRunner(BoundRunner(session, [output], CPU_DEVICE, staging=staging), Padding(64))
    numpy_pads: list[int] = []

    def counted(feed: Any, rows: int, size: int) -> Any:
        numpy_pads.append(size)
        return pad(feed, rows, size)

    monkeypatch.setattr(io_binding, "pad", counted)
    monkeypatch.setattr(batch_padding, "pad", counted)  # the runner's own, for runners that copy nothing
    rng = np.random.default_rng(5)
    for rows in (3, 5, 17):
        x = rng.standard_normal((rows, 64)).astype(np.float32)
        (want,) = plain.run({"features": x}, ort.RunOptions())
        (got,) = padded.run({"features": x}, ort.RunOptions())
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert numpy_pads == ([] if max_bytes > 16 else [4, 8, 32])
    assert (staging.pinned_bytes > 0) == (max_bytes > 16)


@pytest.mark.parametrize("rows", [3, 16])  # padded to 4; exactly a size (16): staged as it is
def test_a_batch_of_requests_is_gathered_into_its_pinned_copy(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's "gathered into one pinned host buffer": a batch's requests had been concatenated
    into one array (on the event loop), then copied into the pinned buffer. Now the requests go
    straight into the pinned buffer, padded there: the batch is never joined anywhere else."""
    path = demo_repository() / "mlp" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=[CPU])
    output = session.get_outputs()[0].name
    staging = PinnedStaging(CudaRuntime(FakeCudart()), max_buffers=2)
    padded = PaddedRunner(BoundRunner(session, [output], CPU_DEVICE, staging=staging), Padding(64))
    padded.size.size_for(16)  # the size is 16 already: 3 rows pad to it, 16 run as they are
    rng = np.random.default_rng(9)
    requests = [{"features": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(rows)]
    batch, _ = gather(requests, [1] * rows)
    whole = np.concatenate([r["features"] for r in requests])
    (want,) = BoundRunner(session, [output], CPU_DEVICE).run({"features": whole}, ort.RunOptions())

    def joined(self: Gathered, name: str) -> Any:
        raise AssertionError(f"input {name!r} joined outside the pinned copy")

    monkeypatch.setattr(Gathered, "__getitem__", joined)
    (got,) = padded.run(batch, ort.RunOptions())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert got.shape == (rows, 2) and staging.pinned_bytes > 0


def test_only_cuda_sessions_are_padded() -> None:
    session = ort.InferenceSession(str(demo_repository() / "mlp" / "1" / "model.onnx"), providers=[CPU])
    inputs = [OnnxTensor(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
    outputs = [OnnxTensor(o.name, o.type, list(o.shape)) for o in session.get_outputs()]
    io = instance_io(session, inputs, outputs, True, padding=Padding(64))
    assert io.mode == "bound" and not io.padded and not isinstance(io.runner, PaddedRunner)


def test_the_config_decides_what_may_be_padded() -> None:
    assert ort_options_for(config(), OrtOptions()).padding == Padding(16, 8, convolutions_only=True)
    assert paddable(config())
    off = BATCHED + 'parameters { key: "gpu_batch_padding" value { string_value: "false" } }'
    assert ort_options_for(config(off), OrtOptions()).padding is None
    on = BATCHED + 'parameters { key: "gpu_batch_padding" value { string_value: " TRUE " } }'
    assert ort_options_for(config(on), OrtOptions()).padding == Padding(16, 8, convolutions_only=False)
    later = BATCHED + 'parameters { key: "gpu_batch_padding_shrink_after" value { string_value: "32" } }'
    assert ort_options_for(config(later), OrtOptions()).padding == Padding(16, 32)
    for bad in ("0", "-1", "1.5", "\uff12", "1000001"):  # a fullwidth 2 too
        text = (
            BATCHED
            + f'parameters {{ key: "gpu_batch_padding_shrink_after" value {{ string_value: "{bad}" }} }}'
        )
        with pytest.raises(ConfigError, match=r"gpu_batch_padding_shrink_after.*a count of batches from 1"):
            ort_options_for(config(text), OrtOptions())
    for text in (
        BATCHED.replace("dynamic_batching { }", ""),  # each request runs alone
        BATCHED.replace("dynamic_batching { }", "sequence_batching { }"),  # rows carry state
        BATCHED.replace("dims: [ 4 ] }\noutput", "dims: [ 4 ] allow_ragged_batch: true }\noutput"),
        BATCHED
        + 'batch_input { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 source_input: "x" }',
    ):
        assert not paddable(config(text)), text
    bad = BATCHED + 'parameters { key: "gpu_batch_padding" value { string_value: "sometimes" } }'
    with pytest.raises(
        ConfigError, match=r"gpu_batch_padding.*auto \(the default: models with a convolution\)"
    ):
        ort_options_for(config(bad), OrtOptions())


def test_padding_keys_that_cannot_apply_are_named_in_the_load_warning() -> None:
    keys = 'parameters { key: "gpu_batch_padding_shrink_after" value { string_value: "8" } }'
    assert backend_parameters(config(BATCHED + keys), has_gpu=True).unapplied == ()
    (note,) = backend_parameters(config(BATCHED + keys), has_gpu=False).unapplied
    assert "gpu_batch_padding_shrink_after" in note and "no GPU" in note
    alone = BATCHED.replace("dynamic_batching { }", "") + keys
    (note,) = backend_parameters(config(alone), has_gpu=True).unapplied
    assert "no dynamic batching of plain rows" in note
