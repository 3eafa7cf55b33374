"""IO binding's GPU path, run on the CPU: what instance_io builds for a CUDA session, what a bound
run hands onnxruntime (devices, run options, pinned pointers), padding in the pinned copy, CUDA
graphs' fixed buffers. Mutants of server/backends/io_binding.py that survived the tests before
(tests/MUTANTS.md, forty-fourth session). A CUDA session is a real CPU session that reports the
CUDA provider (`ClaimsCuda`), or a recording stand-in where a run would need a device."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest

from protos import model_config_pb2 as mc
from server.backends import io_binding
from server.backends.batch_padding import PaddedRunner, Padding
from server.backends.cudart import CudaRuntime, CudaUnavailable
from server.backends.io_binding import (
    CPU_DEVICE,
    GRAPH_ID,
    BoundRunner,
    Device,
    FixedRunner,
    fixed_shapes,
    graphs_enabled,
    instance_io,
    io_mode,
    prepare_run_options,
    session_device,
    string_binding_notes,
)
from server.backends.onnxruntime_backend import CPU
from server.backends.pinned import PinnedStaging
from server.models.onnx_completion import OnnxTensor
from tests.support.bf16_models import bf16_model
from tests.support.fake_cudart import FakeCudart
from tests.support.fixed_model import fixed_model
from tests.support.repositories import demo_repository

CUDA, TRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"
BF16 = np.dtype(ml_dtypes.bfloat16)
MLP = demo_repository() / "mlp" / "1" / "model.onnx"
FEATURES = [OnnxTensor("features", "tensor(float)", ["N", 64])]
SCORES = [OnnxTensor("scores", "tensor(float)", ["N", 10])]


class Value:
    """An output as run_with_iobinding leaves it: numpy() copies it to the host."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def numpy(self) -> np.ndarray:
        return self.array

    def data_type(self) -> str:
        return "tensor(float)"


class Binding:
    """An IOBinding that records its calls and reads pinned inputs at the run, as a DMA would."""

    def __init__(self) -> None:
        self.inputs: dict[str, tuple[Any, ...]] = {}
        self.outputs: list[tuple[str, str, int]] = []
        self.read: dict[str, np.ndarray] = {}

    def bind_cpu_input(self, name: str, array: np.ndarray) -> None:
        self.inputs[name] = ("array", array)

    def bind_input(self, name: str, kind: str, index: int, dtype: Any, shape: list[int], ptr: int) -> None:
        self.inputs[name] = (kind, index, dtype, shape, ptr)

    def bind_ortvalue_input(self, name: str, value: Any) -> None:
        self.inputs[name] = ("ortvalue", value)

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0) -> None:
        self.outputs.append((name, device_type, device_id))

    def get_outputs(self) -> list[Value]:
        return [Value(np.full((1,), i, np.float32)) for i, _ in enumerate(self.outputs)]


class Recording:
    """A session on `providers` whose runs record what they were given."""

    def __init__(self, providers: list[str], options: dict[str, dict[str, str]]) -> None:
        self.providers, self.options = providers, options
        self.runs: list[tuple[Binding, Any]] = []

    def get_providers(self) -> list[str]:
        return self.providers

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return self.options

    def io_binding(self) -> Binding:
        return Binding()

    def run_with_iobinding(self, binding: Binding, run_options: Any) -> None:
        for name, bound in binding.inputs.items():
            if bound[0] == "cpu":  # a pinned pointer: read what is there now
                _, _, dtype, shape, ptr = bound
                size = int(np.prod(shape)) * np.dtype(dtype).itemsize
                raw = ctypes.string_at(ptr, size)
                binding.read[name] = np.frombuffer(raw, dtype).reshape(shape)
        self.runs.append((binding, run_options))


class ClaimsCuda:
    """A real CPU session that says it runs on CUDA (`options` its CUDA provider's)."""

    def __init__(self, session: ort.InferenceSession, options: dict[str, str]) -> None:
        self._session, self._options = session, options

    def get_providers(self) -> list[str]:
        return [CUDA, CPU]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {CUDA: self._options, CPU: {}}

    def io_binding(self) -> ort.IOBinding:
        return self._session.io_binding()

    def run_with_iobinding(self, binding: ort.IOBinding, run_options: ort.RunOptions) -> None:
        self._session.run_with_iobinding(binding, run_options)


@pytest.fixture
def fake_runtime(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    lib = FakeCudart()
    monkeypatch.setattr(io_binding, "load_cudart", lambda: CudaRuntime(lib))
    return lib


def test_a_session_with_no_providers_or_no_options_for_its_first() -> None:
    """Empty providers run on the CPU; a CUDA provider without options, or with an empty device_id,
    is GPU 0; neither has graphs."""
    assert session_device([], {}) == CPU_DEVICE
    assert session_device([CUDA], {}) == Device("cuda", 0)
    assert session_device([CUDA], {CUDA: {}}) == Device("cuda", 0)
    assert session_device([CUDA], {CUDA: {"device_id": ""}}) == Device("cuda", 0)
    assert not graphs_enabled([], {})
    assert not graphs_enabled([CUDA], {})


def test_a_zero_length_dimension_is_fixed() -> None:
    assert fixed_shapes([OnnxTensor("x", "tensor(float)", [0, 3])])


def test_graphs_refused_say_what_to_turn_off() -> None:
    message = (
        "CUDA graphs replay fixed shapes and addresses: every input and output needs a fixed "
        "shape and a fixed-size type (turn enable_cuda_graph / trt_cuda_graph_enable off)"
    )
    with pytest.raises(ValueError) as raised:
        io_mode(Device("cuda", 0), None, graphs=True, fixed=False, strings=False, bf16=False)
    assert str(raised.value) == message


def test_fixed_runner_refusal_text(tmp_path: Path) -> None:
    session = ort.InferenceSession(str(fixed_model(tmp_path / "f.onnx")), providers=[CPU])
    with pytest.raises(ValueError) as raised:
        FixedRunner(session, [OnnxTensor("x", "tensor(float)", ["N", 4])], [], CPU_DEVICE)
    assert str(raised.value) == "fixed buffers need every input and output shape fixed"


def test_the_string_note_leaves_a_config_without_the_parameter_as_it_was() -> None:
    config = mc.ModelConfig(name="m")
    assert string_binding_notes(config, [OnnxTensor("s", "tensor(string)", ["N"])], []) == []
    assert "io_binding" not in config.parameters  # read, not created


def test_bound_outputs_stay_on_the_instances_gpu_and_bf16_ones_come_through_the_cpu() -> None:
    session = Recording([CUDA, CPU], {})
    runner = BoundRunner(session, ["a", "b"], Device("cuda", 2), bf16_outputs=frozenset({"b"}))
    options = ort.RunOptions()
    runner.run({"x": np.ones((2, 3), np.float32)}, options)
    ((binding, given),) = session.runs
    assert binding.outputs == [("a", "cuda", 2), ("b", "cpu", 0)]
    assert given is options  # the run's options (graph id, terminate) reach onnxruntime
    cpu = Recording([CPU], {})
    BoundRunner(cpu, ["a", "b"], CPU_DEVICE).run({"x": np.ones((1, 3), np.float32)}, options)
    assert cpu.runs[0][0].outputs == [("a", "cpu", 0), ("b", "cpu", 0)]


def test_a_staged_input_is_bound_at_its_pinned_pointer_on_the_host_padded_there() -> None:
    lib = FakeCudart()
    session = Recording([CUDA, CPU], {})
    runner = BoundRunner(
        session,
        ["y"],
        Device("cuda", 1),
        staging=PinnedStaging(CudaRuntime(lib), 2),
    )
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    options = ort.RunOptions()
    runner.run_padded({"x": x}, options, 5)
    ((binding, given),) = session.runs
    kind, index, dtype, shape, ptr = binding.inputs["x"]
    assert (kind, index, dtype, shape) == ("cpu", 0, np.float32, [5, 2])
    assert any(start <= ptr < start + size for start, size in lib.pinned.items())
    np.testing.assert_array_equal(binding.read["x"], np.concatenate([x, x[[2, 2]]]))
    assert given is options


def test_an_unstaged_batch_is_padded_before_it_is_bound() -> None:
    session = Recording([CPU], {})
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    BoundRunner(session, ["y"], CPU_DEVICE).run_padded({"x": x}, ort.RunOptions(), 4)
    kind, array = session.runs[0][0].inputs["x"]
    assert kind == "array"
    np.testing.assert_array_equal(array, np.concatenate([x, x[[1, 1]]]))


def test_bf16_inputs_are_padded_before_they_are_bound(tmp_path: Path) -> None:
    """BF16 inputs go in as OrtValues, not staged: a padded batch is grown first, on the host."""
    session = ort.InferenceSession(str(bf16_model(tmp_path / "bf16.onnx")), providers=[CPU])
    staging = PinnedStaging(CudaRuntime(FakeCudart()), 2)
    bf16 = frozenset({"y", "doubled"})
    runner = BoundRunner(session, ["y", "doubled", "wide"], CPU_DEVICE, bf16_outputs=bf16, staging=staging)
    x = np.arange(8, dtype=np.float32).reshape(2, 4).astype(BF16)
    y, doubled, wide = runner.run_padded({"x": x}, ort.RunOptions(), 5)
    want = np.concatenate([x, x[[1, 1, 1]]])
    assert y.dtype == BF16 and y.view(np.uint16).tolist() == want.view(np.uint16).tolist()
    np.testing.assert_array_equal(wide, want.astype(np.float32))
    assert doubled.shape == (5, 4)


def test_a_staged_batch_is_padded_in_its_pinned_copy() -> None:
    """A real run over the pinned copy: the padded rows repeat the last one."""
    session = ort.InferenceSession(str(MLP), providers=[CPU])
    staging = PinnedStaging(CudaRuntime(FakeCudart()), 2)
    runner = BoundRunner(session, ["scores"], CPU_DEVICE, staging=staging)
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    (got,) = runner.run_padded({"features": x}, ort.RunOptions(), 8)
    want = session.run(["scores"], {"features": np.concatenate([x, x[[2] * 5]])})[0]
    np.testing.assert_array_equal(got, want)


def test_fixed_buffers_take_a_strided_batch_and_the_runs_options(tmp_path: Path) -> None:
    session = ort.InferenceSession(str(fixed_model(tmp_path / "fixed.onnx")), providers=[CPU])
    given: list[Any] = []

    class Seen:
        def io_binding(self) -> ort.IOBinding:
            return session.io_binding()

        def run_with_iobinding(self, binding: ort.IOBinding, options: ort.RunOptions) -> None:
            given.append(options)
            session.run_with_iobinding(binding, options)

    inputs = [OnnxTensor("x", "tensor(float)", [2, 4])]
    outputs = [OnnxTensor("twice", "tensor(float)", [2, 4]), OnnxTensor("plus", "tensor(float)", [2, 4])]
    runner = FixedRunner(Seen(), inputs, outputs, CPU_DEVICE)
    wide = np.arange(16, dtype=np.float32).reshape(2, 8)
    options = ort.RunOptions()
    twice, plus = runner.run({"x": wide[:, ::2]}, options)
    np.testing.assert_array_equal(twice, wide[:, ::2] * 2)
    np.testing.assert_array_equal(plus, wide[:, ::2] + 1)
    assert given == [options]


def test_a_cuda_session_binds_on_its_gpu_with_pinned_staging(fake_runtime: FakeCudart) -> None:
    session = Recording([CUDA, CPU], {CUDA: {"device_id": "3"}})
    io = instance_io(session, FEATURES, SCORES, None)
    assert (io.device, io.mode, io.padded) == (Device("cuda", 3), "bound", False)
    assert isinstance(io.runner, BoundRunner) and isinstance(io.staging, PinnedStaging)
    io.runner.run({"features": np.ones((2, 64), np.float32)}, ort.RunOptions())
    ((binding, _),) = session.runs
    assert binding.outputs == [("scores", "cuda", 3)]
    assert binding.inputs["features"][:4] == ("cpu", 0, np.float32, [2, 64])
    assert len(fake_runtime.pinned) == 1  # the instance's staging, the one it reports


def test_a_padded_cuda_instance_wraps_its_bound_runner(fake_runtime: FakeCudart) -> None:
    session = Recording([CUDA, CPU], {CUDA: {"device_id": "1"}})
    padding = Padding(max_rows=8)
    io = instance_io(session, FEATURES, SCORES, None, padding)
    assert (io.device, io.mode, io.padded) == (Device("cuda", 1), "bound", True)
    assert isinstance(io.runner, PaddedRunner) and isinstance(io.staging, PinnedStaging)
    io.runner.run({"features": np.ones((3, 64), np.float32)}, ort.RunOptions())
    ((binding, _),) = session.runs
    assert binding.inputs["features"][3] == [4, 64]  # grown to the sticky size's power of two
    assert binding.outputs == [("scores", "cuda", 1)]
    assert len(fake_runtime.pinned) == 1


def test_padding_only_on_cuda_first_and_batch_major_graphs(fake_runtime: FakeCudart) -> None:
    padding = Padding(max_rows=8)
    trt = Recording([TRT, CUDA, CPU], {})
    assert not instance_io(trt, FEATURES, SCORES, None, padding).padded
    cuda = Recording([CUDA, CPU], {})
    fixed_batch = [OnnxTensor("features", "tensor(float)", [4, 64])]
    assert not instance_io(cuda, fixed_batch, SCORES, None, padding).padded
    io = instance_io(cuda, FEATURES, SCORES, None)
    assert not io.padded and isinstance(io.runner, BoundRunner)


def test_without_a_runtime_a_cuda_instance_binds_unstaged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing() -> CudaRuntime:
        raise CudaUnavailable("libcudart.so.12 not found")

    monkeypatch.setattr(io_binding, "load_cudart", missing)
    with caplog.at_level(logging.WARNING, logger=io_binding.__name__):
        io = instance_io(Recording([CUDA, CPU], {}), FEATURES, SCORES, None)
    assert io.staging is None and io.mode == "bound"
    assert [r.getMessage() for r in caplog.records] == [
        "no pinned staging of inputs: libcudart.so.12 not found"
    ]


def test_a_cuda_instance_stages_up_to_max_runs_batches(fake_runtime: FakeCudart) -> None:
    io = instance_io(Recording([CUDA, CPU], {}), FEATURES, SCORES, None)
    assert io.staging is not None
    held = [io.staging.stage({"x": np.ones((1, 4), np.float32)}) for _ in range(io_binding.MAX_RUNS + 1)]
    pointers = [cm.__enter__() for cm in held]
    assert [p is None for p in pointers] == [False] * io_binding.MAX_RUNS + [True]
    for cm in held:
        cm.__exit__(None, None, None)


def test_cuda_graphs_get_fixed_buffers_on_the_instances_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buffers are allocated where the instance runs (here recorded, then made on the CPU)."""
    session = ort.InferenceSession(str(fixed_model(tmp_path / "fixed.onnx")), providers=[CPU])
    allocated: list[tuple[list[int], Any, str, int]] = []
    make = ort.OrtValue.ortvalue_from_shape_and_type

    def on_cpu(shape: list[int], dtype: Any, kind: str = "cpu", index: int = 0) -> ort.OrtValue:
        allocated.append((shape, dtype, kind, index))
        return make(shape, dtype, "cpu", 0)

    monkeypatch.setattr(io_binding.ort.OrtValue, "ortvalue_from_shape_and_type", on_cpu)
    inputs = [OnnxTensor("x", "tensor(float)", [2, 4])]
    outputs = [OnnxTensor(n, "tensor(float)", [2, 4]) for n in ("twice", "plus")]
    claims = ClaimsCuda(session, {"device_id": "2", "enable_cuda_graph": "1"})
    io = instance_io(claims, inputs, outputs, None, Padding(max_rows=8))
    assert (io.device, io.mode, io.padded, io.staging) == (Device("cuda", 2), "fixed", False, None)
    assert allocated == [([2, 4], np.float32, "cuda", 2)] * 3
    assert io.runner is not None
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    twice, plus = io.runner.run({"x": x}, ort.RunOptions())
    np.testing.assert_array_equal(twice, x * 2)
    np.testing.assert_array_equal(plus, x + 1)


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        ([OnnxTensor("x", "tensor(float)", [2, 4])], [OnnxTensor("y", "tensor(float)", ["N", 4])]),
        ([OnnxTensor("x", "tensor(float)", ["N", 4])], [OnnxTensor("y", "tensor(float)", [2, 4])]),
        ([OnnxTensor("x", "tensor(bfloat16)", [2, 4])], [OnnxTensor("y", "tensor(float)", [2, 4])]),
    ],
)
def test_cuda_graphs_refused_for_a_free_dimension_or_bf16(
    inputs: list[OnnxTensor], outputs: list[OnnxTensor]
) -> None:
    session = Recording([CUDA, CPU], {CUDA: {"enable_cuda_graph": "1"}})
    with pytest.raises(ValueError, match="CUDA graphs replay fixed shapes"):
        instance_io(session, inputs, outputs, None)


def test_each_mode_names_its_graph_in_the_run_options() -> None:
    """Bound runs capture no graph (-1), fixed ones graph 0; plain runs are left alone."""
    for mode, want in (("bound", "-1"), ("fixed", "0")):
        options = ort.RunOptions()
        prepare_run_options(mode, options)
        assert options.get_run_config_entry(GRAPH_ID) == want
    plain = ort.RunOptions()
    prepare_run_options("plain", plain)
    with pytest.raises(RuntimeError, match="does not have configuration"):
        plain.get_run_config_entry(GRAPH_ID)
