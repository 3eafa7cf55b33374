"""Row-wise models whose batch onnx's inference renames (`unk__`), read against the batch's axis as
another length since every input's length the load cannot tell is read (onnx_broadcast_pairs.py):
a tester, session 60, found nine such forms refused under that reading. Each batches here, its
rows independent in onnxruntime: a name onnx made up for an axis the walk refines as the batch's is
the batch's wherever onnx kept it (a Resize's, then a Conv's: onnx_batch_names.BatchNames.renamed),
an Upsample's dims are read as a Resize's, a Reshape's -1 is its data's dims over its other entries
with folds spelled out (view(-1, D) -> Gemm -> view(-1, T, D)), and a MatMul's stacks of matrices
carry the batch's name (torch's bmm)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs

F = TensorProto.FLOAT
N = helper.make_node
RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


def _i(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _model(
    nodes: list[onnx.NodeProto], x: list[int | str | None], inits: list[onnx.TensorProto], opset: int = 17
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, x)],
        [helper.make_tensor_value_info("y", F, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _fpn_merge() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """A pyramid level upsampled (Resize by scales 1, 1, 2, 2), through a 1x1 Conv, added to the one above."""
    nodes = [
        N("Conv", ["x", "w1"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        N("Conv", ["c2", "w2"], ["c3"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        N("Resize", ["c3", "", "scales"], ["up"], mode="nearest"),
        N("Conv", ["up", "w3"], ["lateral"], kernel_shape=[1, 1]),
        N("Add", ["c2", "lateral"], ["y"]),
    ]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    inits = [_w("w1", 4, 3, 3, 3), _w("w2", 4, 4, 3, 3), _w("w3", 4, 4, 1, 1), scales]
    return _model(nodes, ["N", 3, "H", "W"], inits), (3, 8, 8)


def _upsample_fuse() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """HRNet's fuse as opset 9 writes it: x + Upsample(BatchNormalization(Conv(x, stride 2)))."""
    nodes = [
        N("Conv", ["x", "w1"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        N("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"]),
        N("Upsample", ["bn", "scales"], ["up"], mode="nearest"),
        N("Add", ["x", "up"], ["y"]),
    ]
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    stats = [numpy_helper.from_array(v, n) for n, v in (("g", ones), ("b", zeros), ("m", zeros), ("v", ones))]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    return _model(nodes, ["N", 4, "H", "W"], [_w("w1", 4, 4, 3, 3), *stats, scales], opset=9), (4, 8, 8)


def _view_and_back() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """x.view(-1, D) -> Gemm -> .view(-1, T, D) -> + x, T read off x's shape."""
    nodes = [
        N("Reshape", ["x", "flat"], ["f"]),
        N("Gemm", ["f", "w", "b"], ["g"], transB=1),
        N("Shape", ["x"], ["sx"]),
        N("Gather", ["sx", "one"], ["t"]),
        N("Concat", ["minus_one", "t", "d"], ["back"], axis=0),
        N("Reshape", ["g", "back"], ["h"]),
        N("Add", ["x", "h"], ["y"]),
    ]
    inits = [
        _i("flat", [-1, 8]),
        _w("w", 8, 8),
        _w("b", 8),
        _i("one", [1]),
        _i("minus_one", [-1]),
        _i("d", [8]),
    ]
    return _model(nodes, ["N", "T", 8], inits), (5, 8)


def _bmm() -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """torch.bmm(softmax(q @ x^T), x) + x, the scores' batch renamed by a Tile of repeats computed 1s."""
    nodes = [
        N("MatMul", ["x", "wq"], ["q"]),
        N("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        N("MatMul", ["q", "xt"], ["scores"]),
        N("Shape", ["x"], ["sx"], start=2),
        N("Div", ["sx", "sx"], ["one"]),
        N("Concat", ["one", "one", "one"], ["repeats"], axis=0),
        N("Tile", ["scores", "repeats"], ["tiled"]),
        N("Softmax", ["tiled"], ["p"], axis=-1),
        N("MatMul", ["p", "x"], ["o"]),
        N("Add", ["x", "o"], ["y"]),
    ]
    return _model(nodes, ["N", "T", 8], [_w("wq", 8, 8)]), (4, 8)


FORMS: dict[str, Callable[[], tuple[onnx.ModelProto, tuple[int, ...]]]] = {
    "fpn_merge": _fpn_merge,
    "upsample_fuse": _upsample_fuse,
    "view_and_back": _view_and_back,
    "bmm": _bmm,
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_row_wise_model_whose_batch_onnx_renamed_batches(form: str) -> None:
    assert row_mixing_outputs(FORMS[form]()[0]) == {}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_its_rows_are_independent(form: str) -> None:
    model, row = FORMS[form]()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    requests = [np.random.default_rng(k).standard_normal((1, *row)).astype(np.float32) for k in range(4)]
    batched = session.run(None, {"x": np.concatenate(requests)})[0]
    for i, request in enumerate(requests):
        np.testing.assert_allclose(
            session.run(None, {"x": request})[0], batched[i : i + 1], rtol=1e-4, atol=1e-5
        )


def test_silero_vads_sequence_export_is_refused_its_lstm_runs_along_the_requests() -> None:
    # Its input [sequence_length, 576] stacks requests on the LSTM's time axis: the second of four
    # chunks answered 0.0128 batched, 0.0137 alone. It loaded batched at 3a1cb79 (the LSTM's input
    # axis was a name onnx made up, which BatchNames.renamed now reads as the batch's).
    spec = importlib.util.find_spec("silero_vad")  # (importing it needs torch: only its files are read)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the silero-vad package is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "silero_vad_16k_sequence.onnx"
    if not path.exists():
        pytest.skip(f"{path.name} is not in this silero-vad package")
    reasons = row_mixing_outputs(onnx.load(path))
    assert "LSTM node '/recurrent/LSTM' works along the batch's axis" in reasons["hn"]
    assert "speech_probs" in reasons
