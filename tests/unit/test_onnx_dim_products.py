"""A Reshape's -1 worked out as its data's dims over its other entries (onnx_dim_products.py,
onnx_partial_ints.py): a tester, session 60, found a ViT's position table resized to its patch
grid and viewed pos.view(-1, C, h * w) refused since 05301ef (its -1, 1 at run time, read as a
length the load cannot tell against the batch's axis), rows independent."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_dim_products import minus_one, of_dim, product, quotient
from server.backends.onnx_partial_ints import Made, PartialInts
from server.backends.onnx_row_mixing import row_mixing_outputs

N = helper.make_node
F = TensorProto.FLOAT


def test_a_product_keeps_its_numbers_and_names() -> None:
    assert product([of_dim(2), of_dim("h"), of_dim("w"), of_dim(3)]) == (6, ("h", "w"))
    assert product([of_dim("h"), None]) is None
    assert of_dim(None) is None


@pytest.mark.parametrize(
    ("whole", "part", "left"),
    [
        ((8, ("h", "w")), (8, ("h", "w")), 1),
        ((8, ("N", "h", "w")), (8, ("h", "w")), "N"),
        ((8, ("h", "h")), (4, ("h",)), None),  # 2 * h: more than one dim
        ((8, ("h",)), (3, ("h",)), None),  # 8 / 3: not whole
        ((8, ("h",)), (1, ("w",)), None),  # w not in it
        ((8, ("h",)), (0, ()), None),
    ],
)
def test_a_quotient_is_a_number_or_one_dim(
    whole: tuple[int, tuple[str, ...]], part: tuple[int, tuple[str, ...]], left: int | str | None
) -> None:
    assert quotient(whole, part) == left


def test_minus_one_is_the_data_over_the_other_entries() -> None:
    assert minus_one([1, 8, "h", "w"], [of_dim(8), (1, ("h", "w"))]) == 1
    assert minus_one(["N", 4], [of_dim(4)]) == "N"
    assert minus_one(["N", None], [of_dim(4)]) is None  # a dim not known: nothing said


def _seen(nodes: list[onnx.NodeProto], dims: dict[str, list[int | str | None]]) -> PartialInts:
    partial = PartialInts()
    for node in nodes:
        partial.see(node, dims.get, lambda i: None)
    return partial


def test_a_reduce_prod_of_a_shapes_entries_is_their_product() -> None:
    dims: dict[str, list[int | str | None]] = {"x": ["N", 3, "h", "w"], "s": [2], "hw": [1]}
    nodes = [N("Shape", ["x"], ["s"], start=2), N("ReduceProd", ["s"], ["hw"], keepdims=1)]
    (hw,) = _seen(nodes, dims).named("hw", None) or (None,)
    assert hw == Made(frozenset({"h", "w"})) and isinstance(hw, Made) and hw.factors == (1, ("h", "w"))
    whole = [N("Shape", ["x"], ["s"], start=1), N("ReduceProd", ["s"], ["hw"], keepdims=0)]
    assert _seen(whole, dims).named("hw", None) == (Made(frozenset({"h", "w"})),)
    numbers = [N("Shape", ["x"], ["s"], start=1, end=2), N("ReduceProd", ["s"], ["hw"])]
    assert _seen(numbers, dims).named("hw", None) == (3,)
    computed = [N("Shape", ["x"], ["s"], start=2), N("ReduceProd", ["s", "axes"], ["hw"])]
    assert _seen(computed, dims).named("hw", None) is None  # its axes computed: not followed


def test_a_reshapes_minus_one_is_filled_where_the_dims_divide() -> None:
    partial = PartialInts()
    partial.known["shape"] = np.array([-1, 8, Made(frozenset({"h", "w"}), (1, ("h", "w")))], dtype=object)
    dims: dict[str, list[int | str | None]] = {"pos": [1, 8, "h", "w"], "flat": ["unk__4", 8, "unk__5"]}
    view = N("Reshape", ["pos", "shape"], ["flat"])
    assert partial.reshaped(view, dims.get, lambda i: None) == [1, 8, "unk__5"]
    dims["pos"] = [2, 8, "h", "h"]  # 2 * 8 * h * h over 8 * h * w: not a length
    assert partial.reshaped(view, dims.get, lambda i: None) is None


def _vit() -> onnx.ModelProto:
    """tokens [N, h*w, 8] of a stride-2 Conv, plus pos [1, 8, 4, 4] resized to (h, w), then viewed."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((1, 8, 4, 4)).astype(np.float32), "pos"),
        numpy_helper.from_array(np.array([-1, 8], np.int64), "m18"),
        numpy_helper.from_array(np.array([0, 8, -1], np.int64), "r08m"),
    ]
    nodes = [
        N("Conv", ["x", "w1"], ["feat"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        N("Shape", ["pos"], ["sp"], start=0, end=2),
        N("Shape", ["feat"], ["sf"], start=2, end=4),
        N("Concat", ["sp", "sf"], ["sizes"], axis=0),
        N("Resize", ["pos", "", "", "sizes"], ["posr"], mode="linear"),
        N("ReduceProd", ["sf"], ["hw"], keepdims=1),
        N("Concat", ["m18", "hw"], ["rsh"], axis=0),  # pos.view(-1, C, h * w)
        N("Reshape", ["posr", "rsh"], ["pf"]),
        N("Transpose", ["pf"], ["pt"], perm=[0, 2, 1]),
        N("Reshape", ["feat", "r08m"], ["ff"]),
        N("Transpose", ["ff"], ["ft"], perm=[0, 2, 1]),
        N("Add", ["ft", "pt"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vit",
        [helper.make_tensor_value_info("x", F, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", F, ["N", None, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def test_a_vit_position_table_viewed_minus_one_c_hw_batches_and_rows_are_independent() -> None:
    model = _vit()
    assert row_mixing_outputs(model) == {}  # refused since 05301ef: "against a length the load cannot tell"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    requests = [np.random.default_rng(k).standard_normal((1, 3, 8, 8)).astype(np.float32) for k in range(4)]
    batched = session.run(None, {"x": np.concatenate(requests)})[0]
    for i, request in enumerate(requests):
        np.testing.assert_allclose(session.run(None, {"x": request})[0], batched[i : i + 1], rtol=1e-5)


def test_a_reduce_prod_of_no_axes_that_reduces_nothing_is_not_a_product() -> None:
    # noop_with_empty_axes=1 and no axes: the input itself, not h * w (a fifth tester, session 61).
    dims: dict[str, list[int | str | None]] = {"x": ["N", 3, "h", "w"], "s": [2], "hw": [2]}
    nodes = [N("Shape", ["x"], ["s"], start=2), N("ReduceProd", ["s"], ["hw"], noop_with_empty_axes=1)]
    assert _seen(nodes, dims).named("hw", None) is None
