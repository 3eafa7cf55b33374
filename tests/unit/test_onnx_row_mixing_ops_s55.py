"""Ops the row-mixing reading had not known (server/backends/onnx_mixing_ops.py, onnx_pool_indices.py,
onnx_grown_rows.py), found by a tester of session 55 who ran onnx's own node tests through a server
batching 4 one-row requests: RMSNormalization over the batch, EyeLike, MaxPool's Indices and
MaxUnpool, BitwiseAnd/Or/Xor broadcasting, a LayerNormalization scale sent with the batch, and
QLinearMatMul scales all loaded batched and answered with batch mates' values, OK. Each case here
is refused now where it mixes, and loads where its rows are its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_mixing_ops import BROADCAST_OPS, ROW_WISE_OPS, unknown_op
from server.backends.onnx_row_mixing import row_mixing_outputs

F, I64, U8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.UINT8
Dims = Sequence[int | str | None]


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Mapping[str, tuple[Any, Sequence[Any]]],
    outputs: Sequence[str] = ("y",),
    inits: Sequence[onnx.TensorProto] = (),
    opset: int = 23,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(name, kind, list(dims)) for name, (kind, dims) in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in outputs],
        initializer=list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 20 else 10
    return model


def _init(name: str, value: object, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


X = {"x": (F, ["N", 4])}
IMAGE = {"x": (F, ["N", 1, 4, 4])}


@pytest.mark.parametrize(("axis", "mixes"), [(0, True), (-2, True), (1, False), (-1, False)])
def test_rms_normalization_over_the_batchs_axis_mixes(axis: int, mixes: bool) -> None:
    node = helper.make_node("RMSNormalization", ["x", "w"], ["y"], axis=axis)
    found = row_mixing_outputs(
        _model([node], X, inits=[_init("w", np.ones(4 if axis in (1, -1) else (2, 4)))])
    )
    assert bool(found) == mixes
    if mixes:
        assert "the RMSNormalization node making 'y' works along the batch's axis" in found["y"]


def test_eyelike_of_a_batched_input_gives_each_row_its_place() -> None:
    found = row_mixing_outputs(_model([helper.make_node("EyeLike", ["x"], ["y"])], X))
    assert "the EyeLike node making 'y' works along the batch's axis" in found["y"]


def test_maxpools_indices_returned_mix_its_values_do_not() -> None:
    pool = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2])
    found = row_mixing_outputs(_model([pool], IMAGE, outputs=("y", "i"), opset=17))
    assert list(found) == ["i"]
    assert "returns in 'i' positions counted over the whole batch" in found["i"]


def test_maxunpool_of_its_own_maxpools_indices_keeps_rows() -> None:
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["p"], ["r"]),
        helper.make_node("MaxUnpool", ["r", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    assert row_mixing_outputs(_model(nodes, IMAGE, opset=17)) == {}


def test_maxunpool_of_indices_a_client_sends_mixes() -> None:
    node = helper.make_node("MaxUnpool", ["x", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    found = row_mixing_outputs(_model([node], {**IMAGE, "i": (I64, ["N", 1, 4, 4])}, opset=17))
    assert "the MaxUnpool node making 'y' works along the batch's axis" in found["y"]


def test_torchs_per_plane_indices_keep_rows() -> None:
    """torch's export of return_indices=True: the indices less each plane's first (a kernel-1
    MaxPool's, sliced to the first position): the batch's place cancels."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxPool", ["x"], ["q", "flat"], kernel_shape=[1, 1], strides=[1, 1]),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["first"]),
        helper.make_node("Sub", ["i", "first"], ["y"]),
    ]
    inits = [
        _init("starts", [0, 0], np.int64),
        _init("ends", [1, 1], np.int64),
        _init("axes", [2, 3], np.int64),
    ]
    assert row_mixing_outputs(_model(nodes, IMAGE, inits=inits, opset=17)) == {}
    # Less a constant instead, the batch's place stays in them.
    minus = [nodes[0], helper.make_node("Sub", ["i", "k"], ["y"])]
    assert row_mixing_outputs(_model(minus, IMAGE, inits=[_init("k", 1, np.int64)], opset=17))


@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
def test_bitwise_ops_broadcasting_the_batch_against_another_axis_mix(op: str) -> None:
    node = helper.make_node(op, ["x", "m"], ["y"])
    paired = _model([node], {"x": (U8, ["N", 4, 3]), "m": (U8, ["N", 3])}, opset=18)
    assert "pairs each row of the batch with every other" in row_mixing_outputs(paired)["y"]
    alike = _model([node], {"x": (U8, ["N", 3]), "m": (U8, ["N", 3])}, opset=18)
    assert row_mixing_outputs(alike) == {}


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
def test_a_scale_sent_with_the_batch_against_another_axis_mixes(op: str) -> None:
    node = helper.make_node(op, ["x", "s"], ["y"], axis=-1)
    found = row_mixing_outputs(_model([node], {**X, "s": (F, ["N"])}))
    assert f"the {op} node making 'y' pairs each row of the batch with every other" in found["y"]
    assert row_mixing_outputs(_model([node], X, inits=[_init("s", np.ones(4))])) == {}


def test_qlinear_matmul_contracts_like_matmul_and_its_scales_are_whole() -> None:
    names = ["a", "a_s", "a_z", "w", "w_s", "w_z", "y_s", "y_z"]
    node = helper.make_node("QLinearMatMul", names, ["y"])
    scalars = [_init(n, 0.1) for n in ("w_s", "y_s")] + [_init(n, 0, np.uint8) for n in ("w_z", "y_z", "a_z")]
    weights = [_init("w", np.ones((4, 3)), np.uint8), *scalars]
    per_row = _model([node], {"a": (U8, ["N", 4])}, inits=[*weights, _init("a_s", 0.1)], opset=21)
    assert row_mixing_outputs(per_row) == {}
    sent = _model([node], {"a": (U8, ["N", 2, 4]), "a_s": (F, ["N"])}, inits=weights, opset=21)
    assert "the QLinearMatMul node making 'y' works along the batch's axis" in row_mixing_outputs(sent)["y"]


@pytest.mark.parametrize(
    ("equation", "others", "mixes"),
    [
        ("nk,kj->nj", {"w": [4, 3]}, False),
        ("nk->k", {}, True),  # summed over the batch
        ("nk->nk", {}, False),
        ("nk,mk->nm", {"z": ["N", 4]}, True),  # the batch named twice: x @ x^T
        ("nk,nk->n", {"z": ["N", 4]}, False),  # a row's own dot product
        ("...k,kj->...j", {"w": [4, 3]}, False),
    ],
)
def test_einsum_reads_its_equation(equation: str, others: dict[str, list[Any]], mixes: bool) -> None:
    second = list(others)
    node = helper.make_node("Einsum", ["x", *second], ["y"], equation=equation)
    inits = [_init(name, np.ones(dims)) for name, dims in others.items() if "N" not in dims]
    inputs = {**X, **{name: (F, dims) for name, dims in others.items() if "N" in dims}}
    assert bool(row_mixing_outputs(_model([node], inputs, inits=inits, opset=17))) == mixes


@pytest.mark.parametrize(("scales", "mixes"), [([1, 1, 2, 2], False), ([2, 1, 1, 1], True)])
def test_a_resize_mixes_only_where_it_scales_the_batchs_axis(scales: list[float], mixes: bool) -> None:
    node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")
    model = _model([node], IMAGE, inits=[_init("sc", scales)], opset=17)
    found = row_mixing_outputs(model)
    assert bool(found) == mixes
    if mixes:
        assert "may resize the batch's axis 0" in found["y"]


def test_a_resize_to_a_computed_size_that_keeps_the_batch_keeps_rows() -> None:
    """torch's F.interpolate(x, size=(8, 8)): sizes = Concat(Shape(x)[:2], [8, 8])."""
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"], end=2),
        helper.make_node("Concat", ["sh", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest"),
    ]
    model = _model(nodes, IMAGE, inits=[_init("hw", [8, 8], np.int64)], opset=17)
    assert row_mixing_outputs(model) == {}


def test_scan_8_scans_axis_1_of_each_batch_row() -> None:
    """Scan-8's axis 0 is its own batch (a tester, session 55: refused as a scan along the batch)."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["o"])],
        "body",
        [helper.make_tensor_value_info(n, F, [2]) for n in ("s_in", "x_t")],
        [helper.make_tensor_value_info(n, F, [2]) for n in ("s_out", "o")],
    )
    node = helper.make_node("Scan", ["", "init", "x"], ["y", "ys"], num_scan_inputs=1, body=body)
    model = _model([node], {"init": (F, ["N", 2]), "x": (F, ["N", 3, 2])}, outputs=("y", "ys"), opset=8)
    model.ir_version = 7
    assert row_mixing_outputs(model) == {}


@pytest.mark.parametrize(
    ("node", "mixes"),
    [
        (helper.make_node("GroupNormalization", ["x", "g", "b"], ["y"], num_groups=1), False),
        (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=1), False),
        (helper.make_node("SoftmaxCrossEntropyLoss", ["x", "lab"], ["y"]), True),  # mean over the batch
        (helper.make_node("SoftmaxCrossEntropyLoss", ["x", "lab"], ["y"], reduction="none"), False),
    ],
)
def test_other_ops_by_what_they_span(node: onnx.NodeProto, mixes: bool) -> None:
    inits = [_init("g", np.ones(1)), _init("b", np.zeros(1))]
    inputs = {**IMAGE, "lab": (I64, ["N", 4, 4])}
    assert bool(row_mixing_outputs(_model([node], inputs, inits=inits, opset=21))) == mixes


def test_a_standard_op_not_known_here_is_taken_as_mixing() -> None:
    assert unknown_op("SomeOpOfALaterOnnx") and not unknown_op("Relu") and not unknown_op("Softmax")
    assert not ROW_WISE_OPS & {"Softmax", "RMSNormalization", "EyeLike", "MaxUnpool"}
    # Elementwise ops of several inputs are read for their broadcasting: a graph of PRelu alone had
    # been taken as row-wise throughout and not read (a batched slope loaded, INTERNAL at its run).
    assert not ROW_WISE_OPS & BROADCAST_OPS
    # Every standard op this onnx defines is known to the reading, one way or another.
    standard = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")}
    deprecated = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.deprecated}
    assert sorted(op for op in standard - deprecated if unknown_op(op)) == []


def test_a_resize_to_a_size_written_for_the_batchs_axis_mixes() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"], start=1),
        helper.make_node("Concat", ["one", "sh"], ["sizes"], axis=0),  # [1, C, H, W]: every row to one
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear"),
    ]
    model = _model(nodes, IMAGE, inits=[_init("one", [1], np.int64)], opset=17)
    assert "may resize the batch's axis 0" in row_mixing_outputs(model)["y"]


@pytest.mark.parametrize(
    ("roi", "axes", "mixes"),
    [
        ([0, 0, 0, 0, 1, 1, 1, 1], None, False),  # the whole batch's axis, scale 1: rows kept
        ([0.5, 0, 0, 0, 1, 1, 1, 1], None, True),  # half the batch's rows
        ([0.2, 0.2, 0.8, 0.8], [2, 3], False),  # its axes leave the batch's out (a tester, s55)
    ],
)
def test_a_crop_by_roi_mixes_where_it_crops_the_batchs_axis(
    roi: list[float], axes: list[int] | None, mixes: bool
) -> None:
    scales = [1, 1, 2, 2] if axes is None else [2, 2]
    attributes = {"axes": axes} if axes else {}
    node = helper.make_node(
        "Resize", ["x", "roi", "sc"], ["y"], coordinate_transformation_mode="tf_crop_and_resize", **attributes
    )
    inits = [_init("roi", roi), _init("sc", scales)]
    assert bool(row_mixing_outputs(_model([node], IMAGE, inits=inits, opset=18))) == mixes


def test_a_size_computed_from_the_batchs_size_is_no_proof() -> None:
    """(N + 1) // 2, then Shape(x) again: taken as kept, it had batched and answered wrong, OK
    (a tester, session 55). A size is kept only where it is a Shape's entry for the batch."""
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Add", ["sh", "one"], ["up"]),
        helper.make_node("Div", ["up", "two"], ["half"]),
        helper.make_node("Resize", ["x", "", "", "half"], ["y"], mode="nearest"),
    ]
    inits = [_init("one", [1, 0, 0, 0], np.int64), _init("two", [2, 1, 1, 1], np.int64)]
    why = row_mixing_outputs(_model(nodes, IMAGE, inits=inits, opset=17))["y"]
    assert why.startswith("the Resize node making 'y' takes 'half', made from the batch's size"), why


@pytest.mark.parametrize(
    ("picked", "mixes"),
    [
        (([0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 2, 3]), True),  # i[0:1]: the first row's
        (([-1], [-(2**63)], [0], [-1]), True),  # i[::-1]: a flip along the batch
        (([0, 0], [1, 1], [2, 3]), False),  # each plane's first: torch's
    ],
)
def test_positions_moved_along_the_batch_are_not_taken_back(
    picked: tuple[list[int], ...], mixes: bool
) -> None:
    """i - Slice(i): the Slice's own mixing is not cancelled by the subtraction (a tester, s55)."""
    names = ["starts", "ends", "axes", "steps"][: len(picked)]
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Slice", ["i", *names], ["s"]),
        helper.make_node("Sub", ["i", "s"], ["y"]),
    ]
    inits = [_init(name, values, np.int64) for name, values in zip(names, picked, strict=True)]
    assert bool(row_mixing_outputs(_model(nodes, IMAGE, inits=inits, opset=17))) == mixes


def test_a_maxunpool_of_flipped_indices_mixes() -> None:
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Slice", ["i", "starts", "ends", "axes", "steps"], ["flipped"]),
        helper.make_node("MaxUnpool", ["p", "flipped"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    inits = [
        _init(n, v, np.int64)
        for n, v in (("starts", [-1]), ("ends", [-(2**63)]), ("axes", [0]), ("steps", [-1]))
    ]
    assert row_mixing_outputs(_model(nodes, IMAGE, inits=inits, opset=17))


def test_a_sequence_made_from_the_batch_concatenated_mixes() -> None:
    """SequenceConstruct, ConcatFromSequence along the batch: a sequence has no shape to read (a
    tester, session 55: batched, wrong, OK)."""
    nodes = [
        helper.make_node("SequenceConstruct", ["x", "x"], ["seq"]),
        helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0),
    ]
    found = row_mixing_outputs(_model(nodes, X, opset=17))
    assert "concatenates a sequence made from the batch" in found["y"]


def test_a_graph_of_one_broadcasting_op_is_read() -> None:
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    found = row_mixing_outputs(_model([node], {"x": (F, ["N", 4, 5]), "slope": (F, ["N", 5])}))
    assert "pairs each row of the batch with every other" in found["y"]


def test_a_split_along_the_columns_concatenated_back_keeps_rows() -> None:
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["cols"], axis=1),
        helper.make_node("ConcatFromSequence", ["cols"], ["y"], axis=1),
    ]
    assert row_mixing_outputs(_model(nodes, X, opset=17)) == {}


def test_a_convolutions_weights_sent_with_the_batch_mix() -> None:
    """Weights are whole: a W carrying the batch is each request's own (9 ConvTranspose cases of
    onnx's tests had loaded batched, answered right only by the retry in halves)."""
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"])
    found = row_mixing_outputs(_model([node], {**IMAGE, "w": (F, ["N", 1, 3, 3])}, opset=17))
    assert "works along the batch's axis, axis 0 of 'w'" in found["y"]
    assert (
        row_mixing_outputs(_model([node], IMAGE, inits=[_init("w", np.ones((1, 1, 3, 3)))], opset=17)) == {}
    )


@pytest.mark.parametrize(
    ("makers", "attributes", "mixes"),
    [
        ([helper.make_node("SequenceConstruct", ["x", "x"], ["seq"])], {"axis": 1}, False),
        ([helper.make_node("SequenceConstruct", ["x", "x"], ["seq"])], {}, True),
        ([helper.make_node("SequenceConstruct", ["x", "x"], ["seq"])], {"axis": 1, "new_axis": 1}, True),
        ([helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1, keepdims=0)], {"axis": 1}, True),
        ([helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1)], {"axis": 1}, False),
        (
            [
                helper.make_node("SequenceEmpty", [], ["empty"], dtype=onnx.TensorProto.FLOAT),
                helper.make_node("SequenceInsert", ["empty", "x"], ["seq"]),
            ],
            {"axis": 1},
            True,
        ),
    ],
)
def test_a_sequence_concatenation_is_read_by_what_made_it(
    makers: list[onnx.NodeProto], attributes: dict[str, int], mixes: bool
) -> None:
    nodes = [*makers, helper.make_node("ConcatFromSequence", ["seq"], ["y"], **attributes)]
    found = row_mixing_outputs(_model(nodes, X, opset=17))
    assert bool(found) == mixes, found
    if mixes:
        said = "concatenates a sequence made from the batch's rows along them"
        assert found["y"] == f"the ConcatFromSequence node making 'y' {said}"


def test_a_sequence_of_tensors_carrying_the_batch_on_a_later_axis() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),  # [4, N]
        helper.make_node("SequenceConstruct", ["xt", "xt"], ["seq"]),
    ]
    along = row_mixing_outputs(
        _model([*nodes, helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=1)], X)
    )
    assert along  # along the batch's axis, 1 of the elements
    across = [*nodes, helper.make_node("ConcatFromSequence", ["seq"], ["c"], axis=0)]
    back = helper.make_node("Transpose", ["c"], ["y"], perm=[1, 0])
    assert row_mixing_outputs(_model([*across, back], X)) == {}


def test_a_sequence_made_from_constants_alone_keeps_rows() -> None:
    nodes = [
        helper.make_node("SequenceConstruct", ["w", "w"], ["seq"]),
        helper.make_node("ConcatFromSequence", ["seq"], ["cat"], axis=1),  # [1, 4]: one row for each
        helper.make_node("Add", ["x", "cat"], ["y"]),
    ]
    assert row_mixing_outputs(_model(nodes, X, inits=[_init("w", np.ones((1, 2)))], opset=17)) == {}


@pytest.mark.parametrize(
    ("second", "mixes"),
    [
        (
            [
                helper.make_node("Mul", ["i", "two"], ["scaled"]),
                helper.make_node("Sub", ["scaled", "first"], ["y"]),
            ],
            True,
        ),
        ([helper.make_node("Add", ["i", "first"], ["y"])], True),  # the row's start twice, not cancelled
        ([helper.make_node("Sub", ["i", "first"], ["y"])], False),
    ],
)
def test_only_a_difference_of_positions_as_they_are_takes_the_batch_out(
    second: list[onnx.NodeProto], mixes: bool
) -> None:
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxPool", ["x"], ["q", "flat"], kernel_shape=[1, 1], strides=[1, 1]),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["first"]),
        *second,
    ]
    inits = [
        _init("starts", [0, 0], np.int64), _init("ends", [1, 1], np.int64), _init("axes", [2, 3], np.int64),
        _init("two", 2, np.int64),
    ]  # fmt: skip
    found = row_mixing_outputs(_model(nodes, IMAGE, inits=inits, opset=17))
    assert bool(found) == mixes, found
    if mixes:
        assert found["y"] == (
            "the MaxPool node making 'p' returns in 'i' positions counted over the whole batch "
            "(each row's from its place in it)"
        )


def test_a_standard_op_the_reading_does_not_know_mixes_where_it_takes_the_batch() -> None:
    """An op of a later onnx (here a made-up name in onnx's domain): no proof of rows, so mixed,
    naming the input that carries the batch; on inputs without it, nothing to say."""
    node = helper.make_node("SomeOpOfALaterOnnx", ["w", "x"], ["y"])
    found = row_mixing_outputs(_model([node], X, inits=[_init("w", np.ones(4))], opset=17))
    said = "is an op the load does not know to keep rows apart, on axis 0 of 'x' ['N', 4]"
    assert found == {"y": f"the SomeOpOfALaterOnnx node making 'y' {said}: its rows are taken as mixed"}
    alone = [helper.make_node("SomeOpOfALaterOnnx", ["w"], ["z"]), helper.make_node("Add", ["x", "z"], ["y"])]
    apart = _model(alone, X, inits=[_init("w", np.ones(4))], opset=17)
    assert "against 'z', whose shape the load cannot tell" in row_mixing_outputs(apart)["y"]  # (session 61)
    apart.graph.value_info.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [4]))
    assert row_mixing_outputs(apart) == {}  # of a known shape


def test_a_maxunpool_to_its_inputs_shape_keeps_rows() -> None:
    """output_shape = Shape(x): the batch's size as a shape (a tester, session 55: refused as
    taking the batch's size as a value)."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["x"], ["shx"]),
        helper.make_node("MaxUnpool", ["p", "i", "shx"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    assert row_mixing_outputs(_model(nodes, IMAGE, opset=17)) == {}
