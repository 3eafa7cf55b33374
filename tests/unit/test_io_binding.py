"""IO binding on the CPU provider: the same code path a CUDA instance runs (server/backends/io_binding.py),
checked against session.run for the demo MLP and CNN with batches gathered from several requests,
BF16 models, pinned staging (over a fake CUDA runtime: host memory), and the fixed buffers CUDA
graphs use. Which mode an instance picks, from its device and the `io_binding` parameter."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from batcher.scatter import gather, scatter
from protos import model_config_pb2 as mc
from server.backends.cudart import CudaRuntime
from server.backends.io_binding import (
    CPU_DEVICE,
    BoundRunner,
    Device,
    FixedRunner,
    fixed_shapes,
    graphs_enabled,
    io_mode,
    session_device,
    string_binding_notes,
)
from server.backends.onnxruntime_backend import CPU, OrtBackend, OrtOptions, ort_options_for
from server.backends.pinned import PinnedStaging
from server.models.config import ConfigError
from server.models.onnx_completion import OnnxTensor
from tests.support.bf16_models import bf16_model
from tests.support.fake_cudart import FakeCudart
from tests.support.fixed_model import fixed_model
from tests.support.repositories import demo_repository

BF16 = np.dtype(ml_dtypes.bfloat16)
CUDA, TRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"


def backend(path: Path, io_binding: bool | None) -> OrtBackend:
    executor = ThreadPoolExecutor(max_workers=1)
    options = OrtOptions(intra_op_threads=1, io_binding=io_binding)
    return OrtBackend(path, options, [(CPU, {})], executor, model_name="m")


def test_the_device_is_what_the_session_runs_on() -> None:
    assert session_device([CPU], {CPU: {}}) == CPU_DEVICE
    assert str(session_device([CUDA, CPU], {CUDA: {"device_id": "3"}, CPU: {}})) == "cuda:3"
    assert session_device([TRT, CUDA, CPU], {TRT: {"device_id": "1"}}) == Device("cuda", 1)
    assert str(CPU_DEVICE) == "cpu"
    assert graphs_enabled([CUDA, CPU], {CUDA: {"enable_cuda_graph": "1"}})
    assert graphs_enabled([TRT, CUDA], {TRT: {"trt_cuda_graph_enable": "True"}})
    assert not graphs_enabled([CUDA], {CUDA: {"enable_cuda_graph": "0"}})
    assert not graphs_enabled([CPU, CUDA], {CUDA: {"enable_cuda_graph": "1"}})  # CUDA not first


def test_the_mode_follows_the_device_the_parameter_and_graphs() -> None:
    gpu = Device("cuda", 0)
    flags = {"fixed": True, "strings": False, "bf16": False}
    assert io_mode(CPU_DEVICE, None, graphs=False, **flags) == "plain"  # slower on the CPU: measured
    assert io_mode(CPU_DEVICE, True, graphs=False, **flags) == "bound"
    assert io_mode(gpu, None, graphs=False, **flags) == "bound"
    assert io_mode(gpu, False, graphs=False, **flags) == "plain"
    assert io_mode(gpu, None, graphs=True, **flags) == "fixed"
    assert io_mode(gpu, True, graphs=False, fixed=True, strings=True, bf16=False) == "plain"
    for blocked in ({"fixed": False}, {"strings": True}, {"bf16": True}):
        with pytest.raises(ValueError, match="CUDA graphs replay fixed shapes"):
            io_mode(gpu, None, graphs=True, **{**flags, **blocked})
    assert fixed_shapes([OnnxTensor("x", "tensor(float)", [2, 3])])
    assert not fixed_shapes([OnnxTensor("x", "tensor(float)", ["N", 3])])
    assert not fixed_shapes([OnnxTensor("x", "tensor(float)", [None, 3])])


@pytest.mark.parametrize(
    ("model", "name", "shape"), [("mlp", "features", (64,)), ("resnet", "image", (3, 224, 224))]
)
def test_bound_batches_equal_plain_batches(model: str, name: str, shape: tuple[int, ...]) -> None:
    path = demo_repository() / model / "1" / "model.onnx"
    plain, bound = backend(path, None), backend(path, True)
    assert (plain.io.mode, bound.io.mode) == ("plain", "bound")
    rng = np.random.default_rng(7)
    rows = [1, 2, 1]  # three requests gathered into one batch of four, as the batcher does
    requests = [{name: rng.standard_normal((n, *shape)).astype(np.float32)} for n in rows]
    inputs, offsets = gather(requests, rows)
    expected, got = plain.run_blocking(inputs), bound.run_blocking(inputs)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    for want, part in zip(scatter(expected, offsets), scatter(got, offsets), strict=True):
        for key in want:
            np.testing.assert_array_equal(part[key], want[key])
    # One request alone passes through gather: a read-only view of the wire bytes, bound as it is.
    alone = np.frombuffer(requests[1][name].tobytes(), np.float32).reshape(requests[1][name].shape)
    assert not alone.flags.writeable
    for key, want in plain.run_blocking({name: alone}).items():
        np.testing.assert_array_equal(bound.run_blocking({name: alone})[key], want)
    plain.close()
    bound.close()


def test_bf16_models_run_bound_bit_for_bit(tmp_path: Path) -> None:
    path = bf16_model(tmp_path / "bf16.onnx")
    plain, bound = backend(path, None), backend(path, True)
    bits = np.asarray([0x0000, 0x8000, 0x3F80, 0xC020, 0x7F7F, 0x0001, 0x7F80, 0x7FC1] * 2, np.uint16)
    x = bits.view(BF16).reshape(4, 4)
    expected, got = plain.run_blocking({"x": x}), bound.run_blocking({"x": x})
    assert bound.io.mode == "bound" and got["y"].dtype == BF16
    for key in ("y", "doubled", "wide"):
        assert got[key].view(np.uint8).tobytes() == expected[key].view(np.uint8).tobytes()


def test_pinned_staging_binds_inputs_from_its_buffer() -> None:
    path = demo_repository() / "mlp" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=[CPU])
    lib = FakeCudart()
    staging = PinnedStaging(CudaRuntime(lib), max_buffers=2)
    # A CPU session takes the pinned pointer as any host pointer: the CUDA path's binding, tested here.
    runner = BoundRunner(session, ["scores"], CPU_DEVICE, staging=staging)
    for rows in (3, 5, 2):
        wide = np.random.default_rng(rows).standard_normal((rows, 128)).astype(np.float32)
        x = wide[:, ::2]  # not contiguous: staged in C order
        (got,) = runner.run({"features": x}, ort.RunOptions())
        np.testing.assert_array_equal(got, session.run(["scores"], {"features": np.ascontiguousarray(x)})[0])
    assert len(lib.pinned) == 1 and staging.pinned_bytes == 1 << 20  # one buffer, reused
    del runner, staging
    gc.collect()
    assert lib.pinned == {}  # freed with the instance


def test_fixed_buffers_are_updated_in_place_and_answers_are_copies(tmp_path: Path) -> None:
    session = ort.InferenceSession(str(fixed_model(tmp_path / "fixed.onnx")), providers=[CPU])
    inputs = [OnnxTensor(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
    outputs = [OnnxTensor(o.name, o.type, list(o.shape)) for o in session.get_outputs()]
    runner = FixedRunner(session, inputs, outputs, CPU_DEVICE)
    first_x = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = runner.run({"x": first_x}, ort.RunOptions())
    second = runner.run({"x": -first_x}, ort.RunOptions())
    np.testing.assert_array_equal(first[0], first_x * 2)  # not overwritten by the second run
    np.testing.assert_array_equal(first[1], first_x + 1)
    np.testing.assert_array_equal(second[0], -first_x * 2)
    with pytest.raises(ValueError, match="takes every input each run"):
        runner.run({}, ort.RunOptions())
    with pytest.raises(ValueError, match=r"shape \[1, 4\], the graph's is \[2, 4\]"):
        runner.run({"x": first_x[:1]}, ort.RunOptions())
    with pytest.raises(ValueError, match="every input and output shape fixed"):
        FixedRunner(session, [OnnxTensor("x", "tensor(float)", ["N", 4])], outputs, CPU_DEVICE)


def test_the_io_binding_parameter_reaches_the_instance(tmp_path: Path) -> None:
    config = text_format.Parse(
        'parameters { key: "io_binding" value: { string_value: "true" } }', mc.ModelConfig()
    )
    assert ort_options_for(config, OrtOptions()).io_binding is True
    assert ort_options_for(mc.ModelConfig(), OrtOptions()).io_binding is None
    bad = text_format.Parse(
        'parameters { key: "io_binding" value: { string_value: "maybe" } }', mc.ModelConfig()
    )
    with pytest.raises(ConfigError, match="parameters 'io_binding' value 'maybe' is not a boolean"):
        ort_options_for(bad, OrtOptions())
    strings = tmp_path / "strings.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, strings)
    instance = backend(strings, True)
    assert instance.io.mode == "plain" and str(instance.device) == "cpu"  # strings are never bound
    out = instance.run_blocking({"s": np.asarray([[b"a"], [b"b"]], dtype=object)})
    assert out["t"].tolist() == [[b"a"], [b"b"]]


def test_io_binding_asked_of_a_model_with_strings_is_said_in_the_load_warning() -> None:
    # Such a model runs session.run all the same (io_mode): it was dropped without a word.
    text = 'parameters { key: "io_binding" value: { string_value: "%s" } }'
    asked = text_format.Parse(text % "true", mc.ModelConfig(name="m"))
    inputs = [OnnxTensor("x", "tensor(float)", ["N", 2]), OnnxTensor("s", "tensor(string)", ["N", 1])]
    outputs = [OnnxTensor("t", "tensor(string)", ["N", 1])]
    (note,) = string_binding_notes(asked, inputs, outputs)
    assert note.startswith("parameters 'io_binding' (input 's', output 't' are strings (BYTES)")
    assert "batches run through session.run" in note
    (one,) = string_binding_notes(asked, inputs, [OnnxTensor("y", "tensor(float)", ["N", 2])])
    assert "input 's' is a string (BYTES)" in one
    # Not asked, asked off, or nothing unbound: nothing to say.
    off = text_format.Parse(text % "0", mc.ModelConfig(name="m"))
    assert string_binding_notes(off, inputs, outputs) == []
    assert string_binding_notes(mc.ModelConfig(name="m"), inputs, outputs) == []
    assert string_binding_notes(asked, inputs[:1], []) == []
