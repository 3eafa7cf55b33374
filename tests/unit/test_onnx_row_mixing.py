"""The load's reading of ops that mix the rows of a batch (server/backends/onnx_row_mixing.py):
each op along the batch's axis, and the same op along another axis, which must not be flagged."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends import onnx_row_mixing
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.zoo_models import range_to_overridable, time_major

F = TensorProto.FLOAT
_INFER = onnx.shape_inference.infer_shapes  # onnx's own, whatever a test puts in its place
X = [helper.make_tensor_value_info("x", F, [None, 3])]
Y = [helper.make_tensor_value_info("y", F, None)]


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto] = X,
    outputs: Sequence[onnx.ValueInfoProto] = Y,
    inits: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # MeanVarianceNormalization's own expansion fails onnx's strict inference (onnx 1.x).
    if all(node.domain == "" and node.op_type != "MeanVarianceNormalization" for node in nodes):
        # Each model as onnx takes it, its shapes agreeing (not checked by the code under test).
        _INFER(model, check_type=True, strict_mode=True, data_prop=True)
    return model


def _const(name: str, value: object, dtype: type = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _why(op: str, made: str, axis: int, shown: str = "'x' ['batch', 3]") -> str:
    return f"the {op} node making '{made}' works along the batch's axis, axis {axis} of {shown}"


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
def test_a_softmax_over_the_batch_mixes_and_over_a_row_does_not(op: str) -> None:
    assert row_mixing_outputs(_model([helper.make_node(op, ["x"], ["y"], axis=0)])) == {"y": _why(op, "y", 0)}
    assert row_mixing_outputs(_model([helper.make_node(op, ["x"], ["y"], axis=1)])) == {}
    assert row_mixing_outputs(_model([helper.make_node(op, ["x"], ["y"])])) == {}  # axis -1


def test_before_opset_13_a_softmax_reads_its_input_flattened_from_its_axis() -> None:
    # Opset 11: axis 1 by default, every dim from it on one row; axis 0 flattens the batch in.
    x4 = [helper.make_tensor_value_info("x", F, [None, 3, 4])]
    assert row_mixing_outputs(_model([helper.make_node("Softmax", ["x"], ["y"])], x4, opset=11)) == {}
    mixed = row_mixing_outputs(_model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], x4, opset=11))
    assert mixed == {"y": _why("Softmax", "y", 0, "'x' ['batch', 3, 4]")}
    # Axis -3 of three dims is the batch's too, and the message says axis 0.
    back = row_mixing_outputs(_model([helper.make_node("Softmax", ["x"], ["y"], axis=-3)], x4, opset=11))
    assert back == mixed


@pytest.mark.parametrize(("op", "default_mixes"), [("ArgMax", True), ("ArgMin", True), ("TopK", False)])
def test_an_axis_op_mixes_along_the_batch_only(op: str, default_mixes: bool) -> None:
    extra = ["k"] if op == "TopK" else []
    inits = [_const("k", [1])] if op == "TopK" else []
    outs = ["y", "i"] if op == "TopK" else ["y"]
    out = [helper.make_tensor_value_info("y", F if op == "TopK" else TensorProto.INT64, None)]
    on_batch = _model([helper.make_node(op, ["x", *extra], outs, axis=0)], outputs=out, inits=inits)
    assert row_mixing_outputs(on_batch)["y"] == _why(op, "y", 0)
    on_row = _model([helper.make_node(op, ["x", *extra], outs, axis=1)], outputs=out, inits=inits)
    assert row_mixing_outputs(on_row) == {}
    default = _model([helper.make_node(op, ["x", *extra], outs)], outputs=out, inits=inits)
    assert bool(row_mixing_outputs(default)) is default_mixes


def test_lp_normalization_and_layer_normalization_mix_along_the_batch_only() -> None:
    assert row_mixing_outputs(_model([helper.make_node("LpNormalization", ["x"], ["y"], axis=0)]))
    assert not row_mixing_outputs(_model([helper.make_node("LpNormalization", ["x"], ["y"])]))
    scale = [_const("s", [1.0, 1.0, 1.0], np.float32)]
    norm = helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=1)
    assert row_mixing_outputs(_model([norm], inits=scale)) == {}
    # axis 0: every dim from the batch on is normalized together (the scale then covers [N, 3]).
    over = helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=0)
    assert row_mixing_outputs(_model([over], inits=scale)) == {"y": _why("LayerNormalization", "y", 0)}


def test_gathers_along_the_batch_mix_and_an_embedding_lookup_does_not() -> None:
    row0 = _model([helper.make_node("Gather", ["x", "i"], ["y"])], inits=[_const("i", 0)])
    assert row_mixing_outputs(row0) == {"y": _why("Gather", "y", 0)}
    column = _model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], inits=[_const("i", 0)])
    assert row_mixing_outputs(column) == {}
    ids = [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 5])]
    table = _const("table", np.zeros((10, 4)), np.float32)
    lookup = _model([helper.make_node("Gather", ["table", "ids"], ["y"])], ids, inits=[table])
    assert row_mixing_outputs(lookup) == {}
    elements = helper.make_node("GatherElements", ["x", "j"], ["y"])
    assert row_mixing_outputs(_model([elements], inits=[_const("j", [[0, 0, 0]])]))
    along = helper.make_node("GatherElements", ["x", "j"], ["y"], axis=1)
    assert not row_mixing_outputs(_model([along], inits=[_const("j", [[0, 0, 0]])]))


def test_gather_nd_mixes_unless_the_batch_is_one_of_its_batch_dims() -> None:
    free = _model([helper.make_node("GatherND", ["x", "j"], ["y"])], inits=[_const("j", [[0, 1]])])
    assert row_mixing_outputs(free) == {"y": _why("GatherND", "y", 0)}
    j = [helper.make_tensor_value_info("j", TensorProto.INT64, [None, 1])]
    per_row = helper.make_node("GatherND", ["x", "j"], ["y"], batch_dims=1)
    assert row_mixing_outputs(_model([per_row], [*X, *j])) == {}


@pytest.mark.parametrize(("axis", "mixes"), [(0, True), (1, False), (-2, True), (-1, False)])
def test_cumsum_mixes_along_the_batch_with_its_axis_from_an_initializer(axis: int, mixes: bool) -> None:
    model = _model([helper.make_node("CumSum", ["x", "a"], ["y"])], inits=[_const("a", axis)])
    assert bool(row_mixing_outputs(model)) is mixes


def test_cumsum_reads_its_axis_from_a_constant_node_and_takes_a_computed_one_for_any() -> None:
    constant = helper.make_node("Constant", [], ["a"], value=_const("v", 0))
    assert row_mixing_outputs(_model([constant, helper.make_node("CumSum", ["x", "a"], ["y"])]))
    scalar = helper.make_node("Constant", [], ["a"], value_int=0)
    assert row_mixing_outputs(_model([scalar, helper.make_node("CumSum", ["x", "a"], ["y"])]))
    axis_in = [helper.make_tensor_value_info("a", TensorProto.INT64, [])]
    computed = _model([helper.make_node("CumSum", ["x", "a"], ["y"])], [*X, *axis_in])
    assert "y" in row_mixing_outputs(computed)  # any axis, the batch's too (read as none until s58)
    pair = _model([helper.make_node("CumSum", ["x", "a"], ["y"])], inits=[_const("a", [0, 1])])
    assert "y" in row_mixing_outputs(pair)  # not one axis (onnxruntime refuses it): any


def test_a_reduction_over_the_batch_mixes_every_value_made_from_it() -> None:
    mean = helper.make_node("ReduceMean", ["x"], ["m"], axes=[0])
    model = _model([mean, helper.make_node("Sub", ["x", "m"], ["y"])], opset=13)
    assert row_mixing_outputs(model) == {"y": _why("ReduceMean", "m", 0)}
    per_row = helper.make_node("ReduceMean", ["x"], ["m"], axes=[1])
    assert row_mixing_outputs(_model([per_row, helper.make_node("Sub", ["x", "m"], ["y"])], opset=13)) == {}


def test_a_reductions_axes_as_an_input_all_axes_and_noop_with_empty_axes() -> None:
    sub = helper.make_node("Sub", ["x", "m"], ["y"])
    given = helper.make_node("ReduceMax", ["x", "axes"], ["m"])
    assert row_mixing_outputs(_model([given, sub], inits=[_const("axes", [0])], opset=18))
    assert not row_mixing_outputs(_model([given, sub], inits=[_const("axes", [1])], opset=18))
    every = helper.make_node("ReduceMax", ["x"], ["m"])
    assert row_mixing_outputs(_model([every, sub], opset=18)) == {"y": _why("ReduceMax", "m", 0)}
    noop = helper.make_node("ReduceMax", ["x"], ["m"], noop_with_empty_axes=1)
    assert row_mixing_outputs(_model([noop, sub], opset=18)) == {}
    axes_in = [helper.make_tensor_value_info("axes", TensorProto.INT64, [1])]
    # Given at run time: any of them (read as none until session 58; a tester's reduction over the batch).
    assert row_mixing_outputs(_model([given, sub], [*X, *axes_in], opset=18)) == {
        "y": _why("ReduceMax", "m", 0)
    }


def test_mean_variance_normalization_mixes_by_default_and_batch_norm_when_training() -> None:
    x4 = [helper.make_tensor_value_info("x", F, [None, 2, 3, 3])]
    assert row_mixing_outputs(_model([helper.make_node("MeanVarianceNormalization", ["x"], ["y"])], x4))
    spatial = helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=[2, 3])
    assert row_mixing_outputs(_model([spatial], x4)) == {}
    stats = [_const(n, [1.0, 1.0], np.float32) for n in ("s", "b", "mean", "var")]
    outs = ["y", "running_mean", "running_var"]
    training = helper.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], outs, training_mode=1)
    got = row_mixing_outputs(_model([training], x4, inits=stats, opset=15))
    assert got == {"y": _why("BatchNormalization", "y", 0, "'x' ['batch', 2, 3, 3]")}
    inference = helper.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["y"])
    assert row_mixing_outputs(_model([inference], x4, inits=stats, opset=15)) == {}


def _paired(op: str, made: str, rows: str, columns: str) -> str:
    return (
        f"the {op} node making '{made}' pairs each row of the batch with every other: its rows come "
        f"from {rows} and its columns from {columns}, both the batch's axis"
    )


def test_a_matmul_contracting_or_pairing_the_batch_mixes_and_a_weight_does_not() -> None:
    t = helper.make_node("Transpose", ["x"], ["xt"])
    gram = _model([t, helper.make_node("MatMul", ["xt", "x"], ["y"])])
    assert row_mixing_outputs(gram) == {"y": _why("MatMul", "y", 1, "'xt' [3, 'batch']")}
    outer = _model([t, helper.make_node("MatMul", ["x", "xt"], ["y"])])
    rows, columns = "axis 0 of 'x' ['batch', 3]", "axis 1 of 'xt' [3, 'batch']"
    assert row_mixing_outputs(outer) == {"y": _paired("MatMul", "y", rows, columns)}
    weight = _const("w", np.ones((3, 2)), np.float32)
    assert row_mixing_outputs(_model([helper.make_node("MatMul", ["x", "w"], ["y"])], inits=[weight])) == {}
    # W @ x^T: a column a row, per row (feature-major linear layers; a tester, session 50).
    wide = _const("w", np.ones((2, 3)), np.float32)
    by_columns = _model([t, helper.make_node("MatMul", ["w", "xt"], ["y"])], inits=[wide])
    assert row_mixing_outputs(by_columns) == {}


def test_a_matmul_with_a_vector_contracts_its_only_axis() -> None:
    v = [helper.make_tensor_value_info("v", F, [None])]
    dot = _model(
        [helper.make_node("MatMul", ["w", "v"], ["y"])], v, inits=[_const("w", np.ones((2, 3)), np.float32)]
    )
    # w [2, 3] @ v [N] needs N == 3; onnx takes it: a sum over the batch's values.
    assert row_mixing_outputs(dot) == {"y": _why("MatMul", "y", 0, "'v' ['batch']")}


def test_a_gemm_mixes_where_it_contracts_or_pairs_the_batch() -> None:
    weight = _const("w", np.ones((3, 2)), np.float32)
    assert row_mixing_outputs(_model([helper.make_node("Gemm", ["x", "w"], ["y"])], inits=[weight])) == {}
    square = _const("w", np.ones((2, 2)), np.float32)
    transposed = helper.make_node("Gemm", ["x", "w"], ["y"], transA=1)
    assert row_mixing_outputs(_model([transposed], inits=[square])) == {"y": _why("Gemm", "y", 0)}
    wide = _const("w", np.ones((2, 3)), np.float32)
    per_row = helper.make_node("Gemm", ["w", "x"], ["y"], transB=1)  # [2, 3] x [3, N]
    assert row_mixing_outputs(_model([per_row], inits=[wide])) == {}
    contracted = _model(
        [helper.make_node("Gemm", ["w", "x"], ["y"])], inits=[_const("w", np.ones((2, 2)), np.float32)]
    )
    # [2, 2] x [N, 3]: the batch's rows contracted (N must be 2 at run time).
    assert row_mixing_outputs(contracted) == {"y": _why("Gemm", "y", 0)}
    both = helper.make_node("Gemm", ["x", "x"], ["y"], transB=1)  # [N, 3] x [3, N]
    rows, columns = "axis 0 of 'x' ['batch', 3]", "axis 0 of 'x' ['batch', 3]"
    assert row_mixing_outputs(_model([both])) == {"y": _paired("Gemm", "y", rows, columns)}


@pytest.mark.parametrize("op", ["RNN", "LSTM", "GRU"])
def test_a_recurrence_over_the_batch_mixes_and_batch_first_does_not(op: str) -> None:
    gates = {"RNN": 1, "LSTM": 4, "GRU": 3}[op]
    w = _const("w", np.ones((1, gates * 2, 3)), np.float32)
    r = _const("r", np.ones((1, gates * 2, 2)), np.float32)
    x3 = [helper.make_tensor_value_info("x", F, [None, 1, 3])]
    seq = helper.make_node(op, ["x", "w", "r"], ["y"], hidden_size=2)
    assert row_mixing_outputs(_model([seq], x3, inits=[w, r])) == {
        "y": _why(op, "y", 0, "'x' ['batch', 1, 3]")
    }
    first = helper.make_node(op, ["x", "w", "r"], ["y"], hidden_size=2, layout=1)
    assert row_mixing_outputs(_model([first], x3, inits=[w, r])) == {}


def test_a_reshape_to_the_batchs_own_size_keeps_its_name_through_the_datas_propagation() -> None:
    # x.view(x.size(0), -1): the new shape is read from x's, which only data propagation carries.
    x3 = [helper.make_tensor_value_info("x", F, [None, 2, 3])]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["rows"]),
        helper.make_node("Concat", ["rows", "rest"], ["flat"], axis=0),
        helper.make_node("Reshape", ["x", "flat"], ["r"]),
        helper.make_node("Softmax", ["r"], ["y"], axis=0),
    ]
    got = row_mixing_outputs(_model(nodes, x3, inits=[_const("zero", [0]), _const("rest", [-1])]))
    assert got == {"y": _why("Softmax", "y", 0, "'r' ['batch', 6]")}  # the -1 worked out


def test_a_shape_of_mixed_rows_is_not_mixed() -> None:
    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], axis=0),
        helper.make_node("Shape", ["s"], ["shape"]),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    assert row_mixing_outputs(_model(nodes)) == {}


def test_a_mixing_op_inside_a_branch_or_a_mixed_condition_mixes_its_outputs() -> None:
    y = helper.make_tensor_value_info("y", F, None)
    inner = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["s"], axis=0)],
        "then",
        [],
        [helper.make_tensor_value_info("s", F, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["i"])],
        "else",
        [],
        [helper.make_tensor_value_info("i", F, None)],
    )
    cond = [helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    branch = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=other, name="pick")
    got = row_mixing_outputs(_model([branch], [*X, *cond], [y]))
    assert got == {"y": f"{_why('Softmax', 's', 0)}, inside If node 'pick'"}
    plain = helper.make_node("If", ["c"], ["y"], then_branch=other, else_branch=other)
    assert row_mixing_outputs(_model([plain], [*X, *cond], [y])) == {}
    decided = [
        helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
        helper.make_node("Greater", ["top", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=other, else_branch=other),
    ]
    zero = _const("zero", 0.0, np.float32)
    assert row_mixing_outputs(_model(decided, inits=[zero], opset=13)) == {"y": _why("ReduceMax", "top", 0)}


def test_a_custom_domain_op_on_the_batch_mixes_and_a_fixed_first_dim_is_not_read() -> None:
    # Session 56: an op of another domain was taken as row-wise (and everything after it unread).
    custom = helper.make_node("Softmax", ["x"], ["y"], axis=0, domain="com.example")
    model = _model([custom])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert row_mixing_outputs(model) == {
        "y": "the Softmax node making 'y' is an op of domain 'com.example' that the load does not read, on "
        "'x', made from the batch: its rows are taken as mixed"
    }
    on_constants = helper.make_node("Softmax", ["w"], ["s"], axis=0, domain="com.example")
    added = helper.make_node("Add", ["x", "s"], ["y"])
    apart = _model([on_constants, added], inits=[numpy_helper.from_array(np.ones(3, np.float32), "w")])
    apart.opset_import.append(helper.make_opsetid("com.example", 1))
    assert "against 's', whose shape the load cannot tell" in row_mixing_outputs(apart)["y"]  # (session 61)
    apart.graph.value_info.append(helper.make_tensor_value_info("s", F, [3]))
    assert row_mixing_outputs(apart) == {}  # not on the batch's path, of a known shape
    fixed = [helper.make_tensor_value_info("x", F, [4, 3])]
    assert row_mixing_outputs(_model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], fixed)) == {}


def test_inference_runs_only_where_a_mixing_op_and_a_variable_first_dim_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def infer(model: onnx.ModelProto, data_prop: bool = False) -> onnx.ModelProto:
        calls.append(model.graph.name)
        raise RuntimeError("onnx refuses this graph")

    monkeypatch.setattr(onnx_row_mixing.onnx.shape_inference, "infer_shapes", infer)
    assert row_mixing_outputs(_model([helper.make_node("Relu", ["x"], ["y"])])) == {}
    fixed = [helper.make_tensor_value_info("x", F, [4, 3])]
    assert row_mixing_outputs(_model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], fixed)) == {}
    assert calls == []
    # Where onnx refuses the graph, nothing is proved: every output is refused for batching (it had
    # been assumed per row, and a graph onnx's inference refused loaded batched; session 52).
    got = row_mixing_outputs(_model([helper.make_node("Softmax", ["x"], ["y"], axis=0)]))
    assert got == {
        "y": "the load could not read the graph for ops that mix rows (RuntimeError: onnx refuses this graph)"
    }
    assert calls == ["g"]


def test_a_symbol_the_graph_names_is_shown_as_named_and_a_time_major_softmax_is_per_row(
    tmp_path: Path,
) -> None:
    named = [helper.make_tensor_value_info("x", F, ["rows", 3])]
    got = row_mixing_outputs(_model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], named))
    assert got == {"y": _why("Softmax", "y", 0, "'x' ['rows', 3]")}
    assert row_mixing_outputs(onnx.load(time_major(tmp_path / "t.onnx"))) == {}


def test_an_overridable_initializer_mixes_only_when_clients_may_send_it(tmp_path: Path) -> None:
    # y = 0 .. max(n) - 1: n declared [N, 1] but holding the model's constant [[2]] unless sent.
    model = onnx.load(range_to_overridable(tmp_path / "ranged.onnx"))
    assert row_mixing_outputs(model) == {}
    sent = row_mixing_outputs(model, fed={"n"})
    assert sent == {"y": _why("ReduceMax", "limit", 0, "'n' ['N', 1]")}
