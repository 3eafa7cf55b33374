"""Each op the reading came to know in session 55 (server/backends/onnx_mixing_ops.py), read exactly:
the inputs and axes it mixes along, its attributes' defaults and opset boundaries (mutation survivors
of the session's first run, tests/MUTANTS.md)."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from server.backends.onnx_mixing_ops import (
    BROADCAST_OPS,
    MIXING_OPS,
    ROW_WISE_OPS,
    paired_axes,
    scan_inputs,
    unknown_op,
)
from tests.unit.test_mutants_row_mixing_s50 import _axes


def _node(op: str, inputs: int = 1, **attributes: object) -> onnx.NodeProto:
    return helper.make_node(op, [f"i{k}" for k in range(inputs)], ["y"], **attributes)


@pytest.mark.parametrize(
    ("node", "ranks", "want"),
    [
        (_node("RMSNormalization", 2), [3, 1], [(0, [2])]),
        (_node("RMSNormalization", 2, axis=1), [3, 1], [(0, [1, 2])]),
        (_node("EyeLike"), [2], [(0, [0, 1])]),
        (_node("Det"), [3], [(0, [-2, -1])]),
        (_node("MatMulInteger", 2), [2, 2], [(0, [-1]), (1, [-2])]),
        (_node("MatMulInteger", 2), [2, 1], [(0, [-1]), (1, [-1])]),
        (
            _node("QLinearMatMul", 8),
            [2, 0, 0, 2, 0, 0, 0, 0],
            [(0, [-1]), (3, [-2]), (1, [0]), (2, [0]), (4, [0]), (5, [0]), (6, [0]), (7, [0])],
        ),
        (_node("QLinearMatMul", 4), [2, 1, 1, 1], [(0, [-1]), (3, [-1]), (1, [0]), (2, [0])]),
        (_node("Attention", 3), [4, 4, 4], [(1, [-2]), (2, [-2]), (3, [-2, -1]), (4, [-2]), (5, [-2])]),
        (
            _node("Attention", 3, is_causal=1),
            [4, 4, 4],
            [(1, [-2]), (2, [-2]), (3, [-2, -1]), (4, [-2]), (5, [-2]), (0, [-2])],
        ),
        (_node("LinearAttention", 2), [3, 4], [(0, [1, 2]), (1, [1, 2, 3])]),
        (_node("CausalConvWithState", 2), [3, 3], [(0, [1, 2]), (1, [1, 2])]),
        (_node("RotaryEmbedding", 3), [4, 2, 2], [(0, [-2, -1])]),
        (_node("DepthToSpace", blocksize=2), [4], [(0, [1, 2, 3])]),
        (_node("SpaceToDepth", blocksize=2), [4], [(0, [1, 2, 3])]),
        (_node("MaxUnpool", 2), [4, 4], [(1, [0, 1, 2, 3])]),
        (_node("MaxUnpool"), [4], [(1, [])]),
        (_node("GridSample", 2), [4, 4], [(0, [2, 3])]),
        (_node("STFT", 2), [3, 0], [(0, [1])]),
        (_node("Multinomial"), [2], [(0, [1])]),
        (_node("TfIdfVectorizer"), [2], [(0, [-1])]),
        (_node("Unique"), [3], [(0, [0, 1, 2])]),
        (_node("Unique", axis=1), [3], [(0, [0, 1, 2])]),  # whole slices: the batch too (session 60)
        (_node("Compress", 2), [2, 1], [(0, [0, 1])]),
        (_node("Compress", 2, axis=0), [2, 1], [(0, [0])]),
        (_node("NonMaxSuppression", 2), [3, 3], [(0, [0, 1, 2]), (1, [0, 1, 2])]),
        (_node("CenterCropPad", 2), [3, 1], [(0, [0, 1, 2]), (1, [0])]),
        (_node("CenterCropPad", 2, axes=[1, 2]), [3, 1], [(0, [1, 2]), (1, [1, 2])]),
        (_node("SoftmaxCrossEntropyLoss", 2), [3, 2], [(0, [0, 1, 2]), (1, [0, 1])]),
        (_node("SoftmaxCrossEntropyLoss", 2, reduction="sum"), [3, 2], [(0, [0, 1, 2]), (1, [0, 1])]),
        (_node("NegativeLogLikelihoodLoss", 3, reduction="none"), [3, 2, 1], [(0, [1]), (1, [1])]),
        (_node("GroupNormalization", 3, num_groups=1), [4, 1, 1], [(0, [1, 2, 3]), (1, [0]), (2, [0])]),
        (_node("DeformConv", 3), [4, 4, 4], [(0, [1, 2, 3]), (1, [0, 1, 2, 3]), (2, [0, 1, 2, 3])]),
        (_node("Scatter", 3), [2, 2, 2], [(0, [0])]),
        (_node("Scatter", 3, axis=1), [2, 2, 2], [(0, [1])]),
        (_node("TensorScatter", 3), [4, 4, 1], [(0, [-2])]),
        (_node("ConcatFromSequence", new_axis=1), [0], [(0, [0])]),
        (_node("Einsum", 2, equation="nk,kj->nj"), [2, 2], [(0, [1]), (1, [0])]),
    ],
)
def test_each_op_mixes_along_exactly_these_axes(node: onnx.NodeProto, ranks: list[int], want: object) -> None:
    assert _axes(node, ranks) == want


# Not one value, or computed: any axis (read as none until session 58, a tester's CumSum over the batch).
@pytest.mark.parametrize(
    ("axis", "want"), [([0], [(0, [0])]), ([1, 2], [(0, [0, 1])]), (None, [(0, [0, 1])])]
)
def test_cumprod_mixes_along_its_axis_where_the_graph_holds_it(axis: list[int] | None, want: object) -> None:
    consts = {1: axis} if axis is not None else {}
    assert _axes(_node("CumProd", 2), [2, 0], consts=consts) == want


@pytest.mark.parametrize(
    ("opset", "attributes", "count", "want"),
    [
        (8, {}, 2, [1, 1]),  # Scan-8: axis 0 is its batch
        (8, {"scan_input_axes": [0, 0]}, 2, [1, 1]),
        (9, {}, 2, [0, 0]),
        (9, {"scan_input_axes": [1, 2]}, 2, [1, 2]),
        (9, {"scan_input_axes": [1, 2, 3]}, 2, [1, 2]),
    ],
)
def test_a_scans_axes_by_its_opset(
    opset: int, attributes: dict[str, object], count: int, want: list[int]
) -> None:
    node = helper.make_node("Scan", ["s", "a", "b"], ["y"], num_scan_inputs=count, **attributes)
    assert scan_inputs(node, opset) == (1, want)
    assert scan_inputs(node) == scan_inputs(node, 9)  # the default: a later Scan


def test_quantized_products_pair_as_matmul_does() -> None:
    assert paired_axes(helper.make_node("MatMulInteger", ["a", "b"], ["y"])) == ((0, -2), (1, -1))


def test_the_ops_known_and_the_rest() -> None:
    for op in ("Reshape", "Flatten", "Expand", "Resize", "Upsample", "Relu", "Add", "Softmax"):
        assert not unknown_op(op), op
    for op in ("SomeOpOfALaterOnnx", "reshape", ""):
        assert unknown_op(op), op
    assert "Add" in BROADCAST_OPS and "RMSNormalization" in MIXING_OPS and "Relu" in ROW_WISE_OPS
