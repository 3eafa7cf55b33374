"""Outputs whose first dim the data's values size (server/backends/onnx_data_sized.py), and what
config completion does with them: NonZero's indices [nnz, 2] had been completed as batched, and a
run whose indices happened to hold as many rows as the run was split by rows (two of three
coalesced requests got another's indices, OK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos import model_config_pb2 as mc
from server.backends.onnx_data_sized import data_sized_outputs
from server.backends.onnx_inspect import read_signature
from server.models.config_errors import ConfigError
from server.models.onnx_completion import complete_from_onnx

Shape = list[int | str | None]


def _model(
    nodes: list[onnx.NodeProto],
    outputs: dict[str, Shape],
    x: Shape | None = None,
    initializer: list[onnx.TensorProto] | None = None,
    opset: int = 17,
    out_type: int = TensorProto.INT64,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x if x is not None else ["N", 4])],
        [helper.make_tensor_value_info(name, out_type, shape) for name, shape in outputs.items()],
        initializer=initializer or [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _nonzero_rows(first: int | str | None = "nnz", x: Shape | None = None) -> onnx.ModelProto:
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
        helper.make_node("Transpose", ["nz"], ["idx"], perm=[1, 0]),
    ]
    return _model(nodes, {"idx": [first, 2]}, x)


@pytest.mark.parametrize("x", [["N", 4], [None, 4]])
def test_nonzeros_indices_are_named_with_the_op(x: Shape) -> None:
    assert data_sized_outputs(_nonzero_rows(x=x)) == {"idx": "NonZero node 'nz'"}


def test_an_unnamed_node_is_named_by_what_it_makes() -> None:
    nodes = [helper.make_node("Unique", ["x"], ["u"]), helper.make_node("Identity", ["u"], ["y"])]
    model = _model(nodes, {"y": ["k"]}, out_type=TensorProto.FLOAT)
    assert data_sized_outputs(model) == {"y": "the Unique node making 'u'"}


def test_kept_boxes_of_non_max_suppression_are_data_sized() -> None:
    # boxes [N, 4] read as one image's; scores built from x: selected [k, 3].
    nodes = [
        helper.make_node("Unsqueeze", ["x", "zero"], ["boxes"]),
        helper.make_node("ReduceSum", ["x", "one"], ["s"], keepdims=0),
        helper.make_node("Unsqueeze", ["s", "zero_one"], ["scores"]),
        helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"], name="nms"),
    ]
    init = [
        numpy_helper.from_array(np.int64([0]), "zero"),
        numpy_helper.from_array(np.int64([1]), "one"),
        numpy_helper.from_array(np.int64([0, 1]), "zero_one"),
    ]
    model = _model(nodes, {"selected": ["k", 3]}, initializer=init)
    assert data_sized_outputs(model) == {"selected": "NonMaxSuppression node 'nms'"}


def test_a_row_wise_output_downstream_of_nonzero_is_cleared_by_shape_inference() -> None:
    # y = x * (count of nonzeros): NonZero feeds it, but y's first dim is x's.
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Size", ["nz"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "nf"], ["y"]),
    ]
    for x in (["N", 4], [None, 4]):
        model = _model(nodes, {"y": ["whatever", 4]}, x, out_type=TensorProto.FLOAT)
        assert data_sized_outputs(model) == {}, x


def test_a_graph_that_declares_the_inputs_first_dim_is_taken_at_its_word() -> None:
    assert data_sized_outputs(_nonzero_rows(first="N")) == {}
    assert data_sized_outputs(_nonzero_rows(first=None)) == {"idx": "NonZero node 'nz'"}


def test_an_op_inside_a_subgraph_taints_its_nodes_outputs() -> None:
    then = helper.make_graph(
        [helper.make_node("Compress", ["x", "keep"], ["kept"], axis=0, name="c")],
        "then",
        [],
        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["same"])],
        "else",
        [],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["cond"]),
        helper.make_node("Greater", ["x", "zero"], ["gt"]),
        helper.make_node("ReduceMin", ["gt_f", "one"], ["keep_f"], keepdims=0),
        helper.make_node("Cast", ["gt"], ["gt_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["keep_f"], ["keep"], to=TensorProto.BOOL),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="pick"),
    ]
    init = [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.int64([1]), "one")]
    model = _model(nodes, {"y": ["k", 4]}, initializer=init, out_type=TensorProto.FLOAT)
    assert data_sized_outputs(model) == {"y": "Compress node 'c' inside If node 'pick'"}


def test_a_custom_domains_nonzero_is_not_read_as_onnxs() -> None:
    nodes = [helper.make_node("NonZero", ["x"], ["idx"], domain="com.example")]
    model = _model(nodes, {"idx": ["k", 2]})
    assert data_sized_outputs(model) == {}


def test_a_plain_batched_model_is_not_suspect() -> None:
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"y": ["N", 3]}, [None, 4], [w])
    assert data_sized_outputs(model) == {}


def _signature(tmp_path: Path, model: onnx.ModelProto) -> tuple[list, list]:  # type: ignore[type-arg]
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    signature = read_signature(path)
    return signature.inputs, signature.outputs


def test_completion_leaves_a_data_sized_output_unbatched(tmp_path: Path) -> None:
    inputs, outputs = _signature(tmp_path, _nonzero_rows())
    done = complete_from_onnx(mc.ModelConfig(name="nz"), inputs, outputs)
    assert done.max_batch_size == 0 and not done.HasField("dynamic_batching")
    assert [list(o.dims) for o in done.output] == [[-1, 2]]
    # Named as the inputs' first dim by the graph: taken for the batch's length, but its first column
    # is each non-zero's row in the batch, a position there: the row-mixing reading leaves it unbatched
    # (batched until session 58, when a Transpose stopped the reading's shortcut for row-wise graphs).
    inputs, outputs = _signature(tmp_path, _nonzero_rows(first="N"))
    assert outputs[0].not_batch is None and "made from the batch's size" in (outputs[0].mixes_rows or "")
    assert complete_from_onnx(mc.ModelConfig(name="nz"), inputs, outputs).max_batch_size == 0


def test_a_config_that_batches_a_data_sized_output_fails_naming_output_and_op(tmp_path: Path) -> None:
    inputs, outputs = _signature(tmp_path, _nonzero_rows())
    config = mc.ModelConfig(name="nz", max_batch_size=8)
    config.dynamic_batching.SetInParent()
    with pytest.raises(ConfigError) as err:
        complete_from_onnx(config, inputs, outputs, source="nz/config.pbtxt")
    text = str(err.value)
    assert text.startswith("nz/config.pbtxt: max_batch_size is 8 but ONNX output 'idx'"), text
    assert "sized by the values of the data (NonZero node 'nz')" in text, text
    assert "set max_batch_size: 0" in text and "name it in the graph as the inputs' first dim" in text, text


def _int(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.int64(values), name)


def _scalar(name: str, value: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.int64(value), name)


def test_a_range_whose_limit_the_data_sets_is_data_sized() -> None:
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["limit"], to=TensorProto.INT64),
        helper.make_node("Range", ["start", "limit", "step"], ["y"], name="r"),
    ]
    model = _model(nodes, {"y": ["k"]}, initializer=[_scalar("start", 0), _scalar("step", 1)])
    assert data_sized_outputs(model) == {"y": "Range node 'r', from its input 'limit'"}


def test_a_shape_from_shapes_alone_is_not_the_datas() -> None:
    # y = Reshape(x, [N * 4]) with N read by Shape: sized by x's shape, not its values.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("ReduceProd", ["s"], ["n"], keepdims=1),
        helper.make_node("Reshape", ["x", "n"], ["y"], name="flat"),
    ]
    model = _model(nodes, {"y": ["k"]}, out_type=TensorProto.FLOAT)
    assert data_sized_outputs(model) == {}


def test_a_shape_a_client_sends_is_the_datas() -> None:
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"], name="grow")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, ["N", 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert data_sized_outputs(model) == {"y": "Expand node 'grow', from its input 'shape'"}


def test_a_reshape_that_keeps_the_first_dim_by_shape_is_cleared() -> None:
    # y = Reshape(x, [N, k]) with k from the values: the first dim is still x's.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=1),
        helper.make_node("Reshape", ["m", "one"], ["m1"]),
        helper.make_node("Cast", ["m1"], ["k"], to=TensorProto.INT64),
        helper.make_node("Concat", ["n", "k"], ["shape"], axis=0),
        helper.make_node("Expand", ["x", "shape"], ["y"], name="grow"),
    ]
    init = [_int("zero", [0]), _int("one", [1])]
    model = _model(nodes, {"y": ["a", "b"]}, initializer=init, out_type=TensorProto.FLOAT)
    assert data_sized_outputs(model) == {}


def test_a_subgraph_that_sizes_by_an_outer_value_is_data_sized() -> None:
    branch = helper.make_graph(
        [helper.make_node("Range", ["start", "limit", "step"], ["r"], name="inner")],
        "then",
        [],
        [helper.make_tensor_value_info("r", TensorProto.INT64, None)],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["limit"], to=TensorProto.INT64),
        helper.make_node("Greater", ["limit", "start"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch, name="pick"),
    ]
    model = _model(nodes, {"y": ["k"]}, initializer=[_scalar("start", 0), _scalar("step", 1)])
    assert data_sized_outputs(model) == {
        "y": "Range node 'inner', from its input 'limit' inside If node 'pick'"
    }


def _k_from_data() -> list[onnx.NodeProto]:
    """k = [max over x], as int64 [1]: a size computed from the data's values."""
    return [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["m64"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["m64", "one"], ["k"]),
    ]


@pytest.mark.parametrize(("axis", "sized"), [(0, True), (-1, False)])
def test_top_k_with_k_from_the_data_is_data_sized_along_its_axis(axis: int, sized: bool) -> None:
    nodes = [*_k_from_data(), helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=axis, name="top")]
    outputs: dict[str, Shape] = {"i": ["k", 4] if axis == 0 else ["N", "k"]}
    one = numpy_helper.from_array(np.asarray([1], np.int64), "one")
    found = data_sized_outputs(_model(nodes, outputs, initializer=[one]))
    # Along the last axis onnx's inference carries the input's first dim: the batch, cleared.
    assert found == ({"i": "TopK node 'top', from its input 'k'"} if sized else {})


def test_one_hot_whose_depth_the_data_sets_is_data_sized_on_a_leading_axis() -> None:
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["depth"], to=TensorProto.INT64),
        helper.make_node("OneHot", ["idx", "depth", "values"], ["y"], axis=0, name="hot"),
    ]
    initializer = [
        numpy_helper.from_array(np.asarray([0, 1], np.int64), "idx"),
        numpy_helper.from_array(np.asarray([0, 1], np.int64), "values"),
    ]
    found = data_sized_outputs(_model(nodes, {"y": ["d", 2]}, initializer=initializer))
    assert found == {"y": "OneHot node 'hot', from its input 'depth'"}


# --- what the walk reads exactly (tests/MUTANTS.md: the run of the twenty-third session) ----------


def test_a_nonzero_in_the_explicit_ai_onnx_domain_is_onnxs() -> None:
    nodes = [helper.make_node("NonZero", ["x"], ["idx"], domain="ai.onnx", name="nz")]
    model = _model(nodes, {"idx": ["k", 2]})
    assert data_sized_outputs(model) == {"idx": "NonZero node 'nz'"}


def test_a_size_from_an_explicit_ai_onnx_range_is_the_datas() -> None:
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["limit"], to=TensorProto.INT64),
        helper.make_node("Range", ["start", "limit", "step"], ["y"], domain="ai.onnx", name="r"),
    ]
    model = _model(nodes, {"y": ["k"]}, initializer=[_scalar("start", 0), _scalar("step", 1)])
    assert data_sized_outputs(model) == {"y": "Range node 'r', from its input 'limit'"}


def test_an_initializer_listed_among_the_inputs_is_not_the_datas() -> None:
    # Older exporters list initializers as graph inputs too: their values are the model's.
    model = _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="flat")],
        {"y": ["k"]},
        initializer=[_int("shape", [-1])],
        out_type=TensorProto.FLOAT,
    )
    model.graph.input.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [1]))
    assert data_sized_outputs(model) == {}


def test_a_size_input_left_empty_or_absent_is_not_read() -> None:
    # Resize by constant scales (no sizes input) and Slice without steps: sized by x's shape only.
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["y"], name="grow"),
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["z"], name="cut"),
        helper.make_node("Dropout", ["x"], ["d", ""], name="drop"),  # an optional output left unnamed
        helper.make_node("Resize", ["d", "", "", "sizes"], ["w"], name="fixed"),
    ]
    init = [
        numpy_helper.from_array(np.float32([1, 2]), "scales"),
        _int("starts", [0]),
        _int("ends", [2]),
        _int("axes", [1]),
        _int("sizes", [3, 8]),
    ]
    model = _model(
        nodes, {"y": ["a", 8], "z": ["b", 2], "w": [3, 8]}, initializer=init, out_type=TensorProto.FLOAT
    )
    assert data_sized_outputs(model) == {}


def test_an_unnamed_optional_output_of_a_data_sized_op_taints_nothing() -> None:
    # Unique's unnamed outputs are "": an empty (absent) input of a later node is not its output.
    nodes = [
        helper.make_node("Unique", ["x"], ["u", "", "", ""], name="uniq"),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="fixed"),
    ]
    model = _model(
        nodes,
        {"u": ["k"], "y": [3, 8]},
        initializer=[_int("sizes", [3, 8])],
        out_type=TensorProto.FLOAT,
    )
    assert data_sized_outputs(model) == {"u": "Unique node 'uniq'"}


def test_a_value_passed_through_an_if_branch_is_still_the_datas() -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["limit"], ["same"])],
        "then",
        [],
        [helper.make_tensor_value_info("same", TensorProto.INT64, None)],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["limit"], to=TensorProto.INT64),
        helper.make_node("If", ["always"], ["passed"], then_branch=branch, else_branch=branch),
        helper.make_node("Range", ["start", "passed", "step"], ["y"], name="r"),
    ]
    init = [_scalar("start", 0), _scalar("step", 1), numpy_helper.from_array(np.bool_(True), "always")]
    model = _model(nodes, {"y": ["k"]}, initializer=init)
    assert data_sized_outputs(model) == {"y": "Range node 'r', from its input 'passed'"}


def _loop_of_ranges(limit_from_data: bool) -> onnx.ModelProto:
    """A Loop whose body makes a Range up to its carried value: the data's when the Loop's
    initial value is."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v"], ["v_out"]),
            helper.make_node("Range", ["start", "v", "step"], ["r"], name="inner"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.INT64, []),
            helper.make_tensor_value_info("r", TensorProto.INT64, None),
        ],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["limit"], to=TensorProto.INT64),
        helper.make_node(
            "Loop", ["trips", "", "limit" if limit_from_data else "ten"], ["v_last", "rs"], body=body
        ),
    ]
    init = [_scalar("start", 0), _scalar("step", 1), _scalar("trips", 2), _scalar("ten", 10)]
    return _model(nodes, {"rs": ["t", "k"]}, initializer=init)


def test_a_loop_body_reading_a_value_the_data_set_is_data_sized() -> None:
    assert data_sized_outputs(_loop_of_ranges(True)) == {
        "rs": "Range node 'inner', from its input 'v' inside Loop node 'v_last'"
    }
    assert data_sized_outputs(_loop_of_ranges(False)) == {}


def test_an_op_inside_a_list_of_subgraphs_taints_its_nodes_outputs() -> None:
    body = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["nz"], name="inner")],
        "body",
        [],
        [helper.make_tensor_value_info("nz", TensorProto.INT64, None)],
    )
    node = helper.make_node("Branches", ["x"], ["y"], domain="com.example", name="custom")
    node.attribute.append(helper.make_attribute("bodies", [body, body]))
    model = _model([node], {"y": ["k", 2]})
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert data_sized_outputs(model) == {"y": "NonZero node 'inner' inside Branches node 'custom'"}


def test_a_scalar_input_beside_the_data_does_not_stop_the_look() -> None:
    model = _nonzero_rows()
    model.graph.input.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, []))
    assert data_sized_outputs(model) == {"idx": "NonZero node 'nz'"}


@pytest.mark.parametrize("x", [["N"], [None]])
def test_nonzero_of_a_one_dimensional_input_is_data_sized(x: Shape) -> None:
    assert data_sized_outputs(_nonzero_rows(x=x)) == {"idx": "NonZero node 'nz'"}


def test_a_fixed_first_dim_is_no_batch_symbol() -> None:
    # An input of a fixed first dim names no batch: an output with an unnamed first dim is not its.
    assert data_sized_outputs(_nonzero_rows(first=None, x=[2, 4])) == {"idx": "NonZero node 'nz'"}
    assert data_sized_outputs(_nonzero_rows(first=None, x=[2, "N"])) == {"idx": "NonZero node 'nz'"}
