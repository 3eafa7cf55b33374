"""The load's reading of ops that mix rows (server/backends/onnx_row_mixing.py), where a tester of
session 50 found it short: axes stored as external data, model-local functions, Loop and Scan
bodies that declare no input shapes, ops it had not listed, and inputs read for their type only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends import onnx_row_mixing
from server.backends.onnx_row_mixing import row_mixing_outputs

F = TensorProto.FLOAT
X = [helper.make_tensor_value_info("x", F, [None, 3])]
Y = [helper.make_tensor_value_info("y", F, None)]


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto] = X,
    inits: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    functions: Sequence[onnx.FunctionProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(Y), initializer=list(inits))
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("local", 1)] if functions else [])
    model = helper.make_model(graph, opset_imports=imports, functions=list(functions))
    model.ir_version = 8 if opset < 20 else 10
    return model


def _const(name: str, value: object, dtype: type = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _why(op: str, made: str, axis: int, shown: str = "'x' ['batch', 3]") -> str:
    return f"the {op} node making '{made}' works along the batch's axis, axis {axis} of {shown}"


def test_an_axis_stored_as_external_data_is_not_read_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It had been read relative to the server's working directory: a model refused with a bare
    # ValidationError, or a file of the same name there read as its axis.
    model = _model([helper.make_node("CumSum", ["x", "a"], ["y"])], inits=[_const("a", 0)])
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0, location="w.bin")
    parsed = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    assert parsed.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert "y" in row_mixing_outputs(parsed)  # the axis cannot be told: any, the batch's too
    trap = tmp_path / "cwd"
    trap.mkdir()
    (trap / "w.bin").write_bytes(np.int64(1).tobytes())  # axis 1, read from here, would batch
    monkeypatch.chdir(trap)
    assert "y" in row_mixing_outputs(parsed)


def test_a_softmax_inside_a_model_local_function_is_read() -> None:
    body = helper.make_function(
        "local", "F", ["a"], ["b"], [helper.make_node("Softmax", ["a"], ["b"], axis=0)],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    called = _model([helper.make_node("F", ["x"], ["y"], domain="local")], functions=[body])
    got = row_mixing_outputs(called)
    assert set(got) == {"y"} and "Softmax" in got["y"] and "axis 0 of 'x' ['batch', 3]" in got["y"], got


def _recentring_loop(declared: list[int | str | None] | None) -> onnx.ModelProto:
    """y = x re-centred over the batch twice: a Loop whose carried value declares `declared`."""
    body = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["acc_in"], ["mean"], axes=[0]),
            helper.make_node("Sub", ["acc_in", "mean"], ["acc_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", F, declared)
            if declared is not None
            else onnx.ValueInfoProto(name="acc_in"),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", F, None),
        ],
    )
    loop = helper.make_node("Loop", ["two", "yes", "x"], ["y"], body=body, name="turns")
    return _model([loop], inits=[_const("two", 2), _const("yes", True, np.bool_)], opset=13)


@pytest.mark.parametrize("declared", [None, ["N", 3], [None, None]])
def test_a_loop_body_is_read_with_the_shape_its_carried_value_comes_with(
    declared: list[int | str | None] | None,
) -> None:
    # Declared without a shape, the body's input had carried no batch symbol, and the loop loaded
    # batched: row 0 got [-1.5, ...] beside a batch mate where alone it gets [0, 0, 0].
    got = row_mixing_outputs(_recentring_loop(declared))
    assert set(got) == {"y"} and got["y"].startswith("the ReduceMean node making 'mean'"), got
    assert got["y"].endswith(", inside Loop node 'turns'"), got


def _scan(axis: int, states: int, x: list[int | str | None]) -> onnx.ModelProto:
    """A running sum along `axis` of x (with a state), or each slice doubled (without)."""
    slice_in = onnx.ValueInfoProto(name="s_in")
    if states:
        nodes = [
            helper.make_node("Add", ["acc_in", "s_in"], ["acc_out"]),
            helper.make_node("Identity", ["acc_out"], ["s_out"]),
        ]
        inputs = [onnx.ValueInfoProto(name="acc_in"), slice_in]
        outputs = [
            helper.make_tensor_value_info("acc_out", F, None),
            helper.make_tensor_value_info("s_out", F, None),
        ]
    else:
        nodes = [helper.make_node("Add", ["s_in", "s_in"], ["s_out"])]
        inputs, outputs = [slice_in], [helper.make_tensor_value_info("s_out", F, None)]
    body = helper.make_graph(nodes, "body", inputs, outputs)
    feeds = (["init"] if states else []) + ["x"]
    outs = (["last"] if states else []) + ["y"]
    scan = helper.make_node(
        "Scan", feeds, outs, body=body, num_scan_inputs=1, scan_input_axes=[axis], scan_output_axes=[axis]
    )
    first = [
        _const("init", np.zeros([d for i, d in enumerate([4, 3, 2]) if i != axis][: len(x) - 1]), np.float32)
    ]
    return _model([scan], [helper.make_tensor_value_info("x", F, x)], inits=first if states else [])


def test_a_scan_carrying_state_along_the_batch_mixes_and_one_along_time_does_not() -> None:
    got = row_mixing_outputs(_scan(0, 1, [None, 3]))
    assert got["y"] == (
        "the Scan node making 'last' carries its state along the batch's axis, axis 0 of 'x' ['batch', 3]"
    )
    assert row_mixing_outputs(_scan(0, 0, [None, 3])) == {}  # each row on its own: per row


def test_a_scan_body_is_read_with_its_slices_shapes() -> None:
    # Along time (axis 1) of x [N, T]: the body's slice is [N], the batch's; a Softmax over it mixes.
    body = helper.make_graph(
        [helper.make_node("Softmax", ["s_in"], ["s_out"], axis=0)],
        "body",
        [onnx.ValueInfoProto(name="s_in")],
        [helper.make_tensor_value_info("s_out", F, None)],
    )
    scan = helper.make_node(
        "Scan", ["x"], ["y"], body=body, num_scan_inputs=1, scan_input_axes=[1], name="steps"
    )
    got = row_mixing_outputs(_model([scan], [helper.make_tensor_value_info("x", F, [None, "T"])]))
    inner = _why("Softmax", "s_out", 0, "'s_in' ['batch']")
    assert got == {"y": f"{inner}, inside Scan node 'steps'"}


def _pooled() -> list[onnx.NodeProto]:
    """x [N, 3] read as one image: [1, 3, N] (the batch on the spatial axis)."""
    return [
        helper.make_node("Transpose", ["x"], ["t"]),
        helper.make_node("Unsqueeze", ["t", "zero"], ["img"]),
    ]


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool", "InstanceNormalization", "LRN"])
def test_pools_and_normalizations_over_the_batch_mix(op: str) -> None:
    extra = {"InstanceNormalization": ["s", "b"]}.get(op, [])
    inits = [_const("zero", [0])] + [_const(n, np.ones(3), np.float32) for n in extra]
    nodes = [*_pooled(), helper.make_node(op, ["img", *extra], ["y"], **({"size": 1} if op == "LRN" else {}))]
    if op == "LRN":  # across channels: the batch as the channel axis, [1, N, 3]
        nodes = [helper.make_node("Unsqueeze", ["x", "zero"], ["img"]), nodes[-1]]
    got = row_mixing_outputs(_model(nodes, inits=inits, opset=13))
    assert set(got) == {"y"} and got["y"].startswith(
        f"the {op} node making 'y' works along the batch's axis"
    ), got


def test_scatters_and_reverse_sequence_along_the_batch_mix() -> None:
    indices, updates = _const("i", [[0, 0, 0]]), _const("u", np.ones((1, 3)), np.float32)
    scatter = helper.make_node("ScatterElements", ["x", "i", "u"], ["y"])
    assert row_mixing_outputs(_model([scatter], inits=[indices, updates])) == {
        "y": _why("ScatterElements", "y", 0)
    }
    along = helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1)
    assert row_mixing_outputs(_model([along], inits=[indices, updates])) == {}
    nd = helper.make_node("ScatterND", ["x", "j", "u"], ["y"])
    assert row_mixing_outputs(_model([nd], inits=[_const("j", [[0]]), updates])) == {
        "y": _why("ScatterND", "y", 0)
    }
    lengths = [helper.make_tensor_value_info("lengths", TensorProto.INT64, [3])]
    reverse = helper.make_node("ReverseSequence", ["x", "lengths"], ["y"], time_axis=0, batch_axis=1)
    assert row_mixing_outputs(_model([reverse], [*X, *lengths])) == {"y": _why("ReverseSequence", "y", 0)}


def test_a_dft_along_the_batch_mixes_by_its_attribute_or_its_input() -> None:
    x3 = [helper.make_tensor_value_info("x", F, [None, 4, 1])]
    old = _model([helper.make_node("DFT", ["x"], ["y"], axis=0)], x3, opset=17)
    assert row_mixing_outputs(old) == {"y": _why("DFT", "y", 0, "'x' ['batch', 4, 1]")}
    assert row_mixing_outputs(_model([helper.make_node("DFT", ["x"], ["y"])], x3, opset=17)) == {}
    given = _model([helper.make_node("DFT", ["x", "", "a"], ["y"])], x3, inits=[_const("a", 0)], opset=20)
    assert row_mixing_outputs(given) == {"y": _why("DFT", "y", 0, "'x' ['batch', 4, 1]")}
    default = _model([helper.make_node("DFT", ["x"], ["y"])], x3, opset=20)  # axis -2: per row
    assert row_mixing_outputs(default) == {}


def test_an_input_read_for_its_type_or_shape_only_does_not_mix() -> None:
    softmax = helper.make_node("Softmax", ["x"], ["s"], axis=0)
    assert row_mixing_outputs(_model([softmax, helper.make_node("CastLike", ["x", "s"], ["y"])])) == {}
    assert row_mixing_outputs(_model([softmax, helper.make_node("CastLike", ["s", "x"], ["y"])]))
    shaped = [helper.make_node("Shape", ["s"], ["sh"]), helper.make_node("ConstantOfShape", ["sh"], ["y"])]
    assert row_mixing_outputs(_model([softmax, *shaped])) == {}
    # EyeLike reads only its input's shape, but its values are each row's place (session 55): it mixes.
    eye = row_mixing_outputs(_model([helper.make_node("EyeLike", ["x"], ["y"])]))
    assert "EyeLike node making 'y' works along the batch's axis" in eye["y"]


def test_an_unnamed_branch_node_is_named_by_its_output() -> None:
    then = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["s"], axis=0)],
        "then",
        [],
        [helper.make_tensor_value_info("s", F, None)],
    )
    cond = [helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    got = row_mixing_outputs(
        _model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then)], [*X, *cond])
    )
    assert got == {"y": f"{_why('Softmax', 's', 0)}, inside the If node making 'y'"}


def test_a_graph_the_reading_cannot_read_is_refused_for_batching_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # No proof of rows: every output refused (it had been assumed per row; session 52).
    def broken(*args: object) -> list[tuple[int, list[int]]]:
        raise ValueError("an attribute of an unexpected type")

    monkeypatch.setattr(onnx_row_mixing, "mixed_axes", broken)
    got = row_mixing_outputs(_model([helper.make_node("Softmax", ["x"], ["y"], axis=0)]))
    why = "the load could not read the graph for ops that mix rows (ValueError: "
    why += "an attribute of an unexpected type)"
    assert got == {"y": why}
    assert (
        "could not read graph 'g' for ops that mix rows (an attribute of an unexpected type)" in caplog.text
    )
