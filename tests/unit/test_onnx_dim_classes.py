"""Dims onnx's inference named apart that are the same size, named alike (onnx_dim_classes.py), and
a graph of opset 13 read as opset 14 for its Reshapes (onnx_output_shapes.inferred_shapes): each
test reads the dims the row-mixing reading is given, and a dim that is not proved keeps onnx's own
name (a join that is not so would let a pick reach past its row)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_dim_classes import declared_names
from server.backends.onnx_mixing_probe import inferred_probe
from server.backends.onnx_output_shapes import (
    _plain_domain,
    _read_as_14,
    _views,
    inference_probe,
    inferred_shapes,
    refined_outputs,
)
from tests.support.onnx_graphs import graph_model, ints, node, own_view

F, I64 = TensorProto.FLOAT, TensorProto.INT64
Dim = int | str | None


def _dims(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    inferred = inferred_probe(inference_probe(model, set()))
    return {
        value.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim]
        for value in (*inferred.graph.value_info, *inferred.graph.output)
        if (shape := value.type.tensor_type.shape) is not None
    }


def _x(shape: Sequence[Dim] = ("N", "T", 4)) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info("x", F, list(shape))]


def _table(name: str, shape: Sequence[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


SIZES = [ints("zero", 0), ints("one", 1), ints("two", 2), ints("axis0", [0])]


def _size(axis: str) -> list[onnx.NodeProto]:
    """'size' = x.shape[axis], a scalar; 'size1' the same as one value [1]."""
    return [
        node("Shape", ["x"], "shape"),
        node("Gather", ["shape", axis], "size", axis=0),
        node("Unsqueeze", ["size", "axis0"], "size1"),
    ]


def _positions(start: str = "zero", step: str = "one", axis: str = "one") -> onnx.ModelProto:
    """x + table[arange(start, x.shape[axis], step)]: torch's legacy position embeddings."""
    nodes = [
        *_size(axis),
        node("Range", [start, "size", step], "pos"),
        node("Gather", ["table", "pos"], "pe", axis=0),
        node("Add", ["x", "pe"], "y"),
    ]
    return graph_model(nodes, [*SIZES, _table("table", [32, 4])], inputs=_x())


def test_a_range_over_a_dims_size_is_that_dim_and_so_is_what_it_broadcasts_with() -> None:
    dims = _dims(_positions())
    assert dims["pos"] == ["T"] and dims["pe"] == ["T", 4]
    assert dims["y"] == ["N", "T", 4]  # onnx had named the sum's steps anew


def test_a_range_not_from_zero_by_one_keeps_onnxs_name() -> None:
    for start, step in (("one", "one"), ("zero", "two")):
        dims = _dims(_positions(start, step))
        assert dims["pos"] != ["T"] and dims["y"][1] != "T", (start, step, dims)


def test_a_range_over_the_batchs_size_is_not_named_the_batch() -> None:
    # arange(N) is each row's place, read by onnx_row_positions.py, not a tensor of the batch's.
    nodes = [
        *_size("zero"),
        node("Range", ["zero", "size", "one"], "places"),
        node("Cast", ["places"], "y", to=F),
    ]
    dims = _dims(graph_model(nodes, SIZES, inputs=_x()))
    assert dims["places"] != ["N"] and isinstance(dims["places"][0], str), dims


def test_two_names_broadcast_together_stay_apart() -> None:
    # 'A' and 'B' may be 1 and 5 at run time: the sum's axis is neither.
    inputs = [helper.make_tensor_value_info("x", F, ["N", "A"]), helper.make_tensor_value_info("z", F, ["B"])]
    dims = _dims(graph_model([node("Add", ["x", "z"], "y")], inputs=inputs))
    assert dims["y"][0] == "N" and dims["y"][1] not in ("A", "B")


def _viewed(*target: str) -> onnx.ModelProto:
    """x [N, T, 4] reshaped to [x.shape[0], *target] (-1 read at run time)."""
    nodes = [
        *_size("zero"),
        node("Concat", ["size1", *target], "view", axis=0),
        node("Reshape", ["x", "view"], "y"),
    ]
    return graph_model(nodes, [*SIZES, ints("m1", [-1]), ints("c2", [2]), ints("c1", [1])], inputs=_x())


def test_a_reshapes_minus_one_is_what_the_sizes_leave() -> None:
    assert _dims(_viewed("m1", "c2", "c2"))["y"] == ["N", "T", 2, 2]  # view(N, -1, 2, 2)
    assert _dims(_viewed("m1", "c1"))["y"][1] != "T"  # view(N, -1, 1): 4T values, no one dim


def test_a_slice_keeps_the_axes_it_does_not_cut_and_a_cut_to_a_dims_size_broadcast_with_it_is_it() -> None:
    # CLIP's position_ids[:, :L], the buffer a graph input [1, 32]: onnx gave the slice no dims.
    dims = _dims(_cut(32))
    assert dims["cut"] == [1, "T"] and dims["y"] == ["N", "T", 4]


def test_a_cut_of_a_one_wide_axis_is_not_the_dim_it_is_cut_to() -> None:
    # buf [1, 1] cut to [:, :T] is one step whatever T is: beside T it broadcasts, it is not T.
    dims = _dims(_cut(1))
    assert dims["cut"][1] != "T", dims


def test_a_matmul_joins_the_dims_it_contracts() -> None:
    # weights [N, T, k] (k a value sent: onnx names it anew) @ values [N, T, 4]: k must be T.
    inputs = [*_x(), helper.make_tensor_value_info("k", I64, [1])]
    nodes = [
        node("Shape", ["x"], "shape"),
        node("Slice", ["shape", "zero1", "two1"], "lead"),
        node("Concat", ["lead", "k"], "wshape", axis=0),
        node("ConstantOfShape", ["wshape"], "w"),
        node("MatMul", ["w", "x"], "y"),
    ]
    dims = _dims(graph_model(nodes, [ints("zero1", [0]), ints("two1", [2])], inputs=inputs))
    assert dims["w"] == ["N", "T", "T"] and dims["y"] == ["N", "T", 4]


def test_a_batch_onnx_lost_in_a_broadcast_is_found_and_a_range_over_it_is_left_unnamed() -> None:
    # [N, T, 4] + [1?, T, 4] (a cut onnx gave no dims): the sum is the batch's; a Range over the
    # sum's first dim is arange(N) and must not be named N.
    inputs = [*_x(), helper.make_tensor_value_info("buf", I64, [1, 32])]
    nodes = [
        *_size("one"),
        node("Slice", ["buf", "start", "size1", "axis1"], "cut"),
        node("Gather", ["table", "cut"], "pe", axis=0),
        node("Add", ["x", "pe"], "h"),
        node("Shape", ["h"], "hshape"),
        node("Gather", ["hshape", "zero"], "rows", axis=0),
        node("Range", ["zero", "rows", "one"], "y"),
    ]
    inits = [*SIZES, ints("start", [0]), ints("axis1", [1]), _table("table", [32, 4])]
    dims = _dims(graph_model(nodes, inits, inputs=inputs))
    assert dims["h"] == ["N", "T", 4] and dims["y"] != ["N"], dims


def _view13(*, batchnorm_outputs: int = 0) -> onnx.ModelProto:
    """x [N, T, 4] viewed as [N, T, 2, 2] by a shape read from x, at opset 13."""
    nodes = own_view("y", ["c2", "c2"])
    inits = [*SIZES, ints("c2", [2])]
    if batchnorm_outputs:
        outs = ["xb", *(f"stat{i}" for i in range(batchnorm_outputs - 1))]
        statistics = ["scale", "bias", "mean", "var"]
        nodes.insert(0, helper.make_node("BatchNormalization", ["x", *statistics], outs))
        nodes[-1] = node("Reshape", ["xb", "view"], "y")
        inits += [_table(name, [4]) for name in statistics]
    return graph_model(nodes, inits, inputs=_x(("N", "T", 4)), opset=13)


def test_an_opset_13_view_is_given_its_shape_and_the_graph_keeps_its_opset() -> None:
    inferred = inferred_probe(inference_probe(_view13(), set()))
    assert [o.version for o in inferred.opset_import] == [13]
    assert _dims(_view13())["y"] == ["N", "T", 2, 2]  # Reshape-13's inference gave it none


def test_an_opset_13_graph_with_a_training_batchnorm_is_read_at_13() -> None:
    # BatchNormalization-13 may have five outputs (torch's training export); 14 allows three.
    assert _dims(_view13(batchnorm_outputs=5)).get("y") in (None, [])
    assert _dims(_view13(batchnorm_outputs=1))["y"] == ["N", "T", 2, 2]


def test_an_opset_13_outputs_shape_is_completed_through_a_view() -> None:
    # The output declares no shape: the load had failed, "has no shape, and onnx's shape
    # inference finds none".
    (y,) = refined_outputs(_view13())
    dims = [d.dim_value or d.dim_param for d in y.type.tensor_type.shape.dim]
    assert dims == ["N", "T", 2, 2]


# --- edges: constants as nodes, the size's axis, ranks, cuts ---


def _constant(name: str, value: int | list[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.int64), name)
    )


def test_a_ranges_bounds_written_as_constant_nodes_are_read() -> None:
    # torch's legacy export writes Range's start and step as Constant nodes.
    nodes = [
        _constant("c0", 0),
        _constant("c1", 1),
        *_size("one"),
        node("Range", ["c0", "size", "c1"], "pos"),
        node("Gather", ["table", "pos"], "pe", axis=0),
        node("Add", ["x", "pe"], "y"),
    ]
    assert _dims(graph_model(nodes, [*SIZES, _table("table", [32, 4])], inputs=_x()))["y"] == ["N", "T", 4]
    # A Constant of another attribute (value_ints) is not read as a whole value here.
    nodes[1] = helper.make_node("Constant", [], ["c1"], value_ints=[1])
    assert _dims(graph_model(nodes, [*SIZES, _table("table", [32, 4])], inputs=_x()))["y"][1] != "T"


def test_the_size_is_read_only_from_a_shapes_own_axis_and_within_it() -> None:
    def pos(at: str, axis: int = 0) -> list[Dim]:
        nodes = [
            node("Shape", ["x"], "shape"),
            node("Gather", ["shape", at], "size", axis=axis),
            node("Range", ["zero", "size", "one"], "pos"),
            node("Cast", ["pos"], "y", to=F),
        ]
        return _dims(graph_model(nodes, [*SIZES, ints("minus2", -2), ints("three", 3)], inputs=_x()))["pos"]

    assert pos("one") == ["T"]
    assert pos("minus2") == ["T"]  # x.shape[-2]
    assert pos("three") != ["T"] and pos("two") != ["T"]  # past the shape, or x's last (4: a number)


def test_a_matmul_of_matrices_joins_its_contraction_and_broadcasts_its_batch_dims() -> None:
    # [T, k] @ [k', 4], k a value sent: k is T; a [1, T, k] @ [N, k', 4] broadcast keeps N.
    inputs = [*_x(("N", "T", 4)), helper.make_tensor_value_info("k", I64, [1])]
    lead = [node("Shape", ["x"], "shape"), node("Slice", ["shape", "one1", "two1"], "t1")]
    nodes = [*lead, node("Concat", ["t1", "k"], "wshape", axis=0), node("ConstantOfShape", ["wshape"], "w")]
    nodes += [node("Gather", ["x", "zero"], "x0", axis=0), node("MatMul", ["w", "x0"], "y")]
    inits = [*SIZES, ints("one1", [1]), ints("two1", [2])]
    assert _dims(graph_model(nodes, inits, inputs=inputs))["w"] == ["T", "T"]
    nodes[-2:] = [node("Unsqueeze", ["w", "axis0"], "w3"), node("MatMul", ["w3", "x"], "y")]
    dims = _dims(graph_model(nodes, inits, inputs=inputs))
    assert dims["w3"] == [1, "T", "T"] and dims["y"] == ["N", "T", 4]


def test_a_view_whose_minus_one_is_a_number_is_given_it() -> None:
    # [N, T, 4] viewed as [N, T, -1]: the -1 is 4 whatever T is.
    nodes = [
        node("Shape", ["x"], "shape"),
        node("Slice", ["shape", "zero1", "two1"], "lead"),
        node("Concat", ["lead", "m1"], "view", axis=0),
        node("Reshape", ["x", "view"], "y"),
    ]
    inits = [*SIZES, ints("zero1", [0]), ints("two1", [2]), ints("m1", [-1])]
    assert _dims(graph_model(nodes, inits, inputs=_x()))["y"] == ["N", "T", 4]


def _cut(width: int, *, steps: int | None = None) -> onnx.ModelProto:
    """ids [N, T] embedded plus table[buf[:, :T]] (buf [1, width] a graph input), an explicit step
    given where `steps` is."""
    inputs = [
        helper.make_tensor_value_info("ids", I64, ["N", "T"]),
        helper.make_tensor_value_info("buf", I64, [1, width]),
    ]
    cut = ["buf", "start", "size1", "axis1", *(["steps"] if steps is not None else [])]
    nodes = [
        node("Shape", ["ids"], "shape"),
        node("Gather", ["shape", "one"], "size", axis=0),
        node("Unsqueeze", ["size", "axis0"], "size1"),
        node("Slice", cut, "cut"),
        node("Gather", ["table", "cut"], "pe", axis=0),
        node("Gather", ["words", "ids"], "we", axis=0),
        node("Add", ["we", "pe"], "y"),
    ]
    inits = [*SIZES, ints("start", [0]), ints("axis1", [1]), ints("steps", [steps or 1])]
    return graph_model(nodes, [*inits, _table("table", [32, 4]), _table("words", [9, 4])], inputs=inputs)


def test_a_cut_of_two_or_more_by_one_step_is_the_dim_it_is_cut_to() -> None:
    assert _dims(_cut(2))["cut"] == [1, "T"]  # two values: min(2, T) beside T is T
    assert _dims(_cut(32, steps=1))["cut"] == [1, "T"]
    assert _dims(_cut(32, steps=2))["cut"][1] != "T"  # every other value: about T / 2


def test_declared_names_are_the_models_own_and_its_inputs_first_named_dims() -> None:
    inputs = [
        helper.make_tensor_value_info("x", F, ["N", "T"]),
        helper.make_tensor_value_info("fixed", F, [4, "S"]),
    ]
    named, firsts = declared_names(graph_model([node("Relu", ["x"], "y")], inputs=inputs))
    assert named >= {"N", "T", "S"} and firsts == {"N"}


# --- the opset's reading and the domain's spelling, function by function ---


def _reshape_model(opset: int, *, reshape: bool = True, bn_outputs: int = 0) -> onnx.ModelProto:
    nodes = [node("Reshape", ["x", "flat"], "y") if reshape else node("Relu", ["x"], "y")]
    inits = [ints("flat", [-1])]
    if bn_outputs:
        outs = ["xb", *(f"stat{i}" for i in range(bn_outputs - 1))]
        nodes.insert(0, helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], outs))
        inits += [_table(name, [4]) for name in "sbmv"]
    return graph_model(nodes, inits, inputs=_x(), opset=opset)


def test_only_an_opset_13_graph_with_a_reshape_and_no_training_batchnorm_is_read_as_14() -> None:
    for opset, kw, read in (
        (13, {}, True),
        (13, {"reshape": False}, False),
        (12, {}, False),
        (14, {}, False),
        (13, {"bn_outputs": 1}, True),
        (13, {"bn_outputs": 2}, False),
        (13, {"bn_outputs": 5}, False),
    ):
        model = _reshape_model(opset, **kw)  # type: ignore[arg-type]
        assert _read_as_14(model, 0) is read, (opset, kw)
        assert model.opset_import[0].version == (14 if read else opset), (opset, kw)


def test_the_inference_gives_the_probe_and_its_result_their_own_opset_back() -> None:
    probe = inference_probe(_reshape_model(13), set())
    inferred = inferred_shapes(probe)
    assert probe.opset_import[0].version == 13 and inferred.opset_import[0].version == 13


def test_views_are_reshapes_anywhere_in_the_graph() -> None:
    assert _views(_reshape_model(11)) and not _views(_reshape_model(11, reshape=False))


def test_onnxs_domain_spelt_ai_onnx_is_written_plain_and_other_domains_stay() -> None:
    model = _reshape_model(13)
    model.graph.node[0].domain = "ai.onnx"
    model.opset_import[0].domain = "ai.onnx"
    model.opset_import.insert(0, helper.make_opsetid("com.microsoft", 1))
    _plain_domain(model)
    assert [o.domain for o in model.opset_import] == ["com.microsoft", ""]
    assert model.graph.node[0].domain == ""
    # Both spellings imported: the nodes' is made plain, the imports stay.
    both = _reshape_model(13)
    both.opset_import.append(helper.make_opsetid("ai.onnx", 13))
    both.graph.node[0].domain = "ai.onnx"
    _plain_domain(both)
    assert [o.domain for o in both.opset_import] == ["", "ai.onnx"] and both.graph.node[0].domain == ""
