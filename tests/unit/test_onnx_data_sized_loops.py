"""Loops that their condition stops, and sizes read from overridable initializers
(server/backends/onnx_data_sized.py): both had loaded batched. A Loop of 100 turns at most that
its body's condition stopped after the batch's largest value, and a Range up to an overridable
initializer a client sent, made outputs as long as the data said; a batch whose output happened to
hold its rows was split by rows, and a request got another's values, OK (a tester, session 49)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from protos import model_config_pb2 as mc
from server.backends.onnx_data_sized import data_sized_outputs
from server.models.completion import complete_version
from server.models.config_errors import ConfigError
from server.models.repository import ModelSource
from tests.support.zoo_models import loop_until, range_to_overridable


def _vi(name: str, elem: int, shape: list[int | str | None] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _looped(
    body_nodes: list[onnx.NodeProto], loop_inputs: list[str], carried: bool = True
) -> onnx.ModelProto:
    """x [N, 4] -> limit = ReduceMax(x) as int64; a Loop named 'l' over `body_nodes`, whose body
    takes (turn, cond_in[, v]) and gives (cond_out[, v_out], step); y is its scan output."""
    body_in = [_vi("turn", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, [])]
    body_out = [_vi("cond_out", TensorProto.BOOL, [])]
    outputs = ["y"]
    if carried:
        body_in.append(_vi("v", TensorProto.INT64, []))
        body_out.append(_vi("v_out", TensorProto.INT64, []))
        outputs = ["v_last", "y"]
    body_out.append(_vi("step", TensorProto.INT64, []))
    body = helper.make_graph(body_nodes, "body", body_in, body_out)
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["limit"], to=TensorProto.INT64),
        helper.make_node("Loop", loop_inputs, outputs, name="l", body=body),
    ]
    constants = [numpy_helper.from_array(np.int64(v), n) for n, v in (("trips", 3), ("zero", 0), ("ten", 10))]
    constants.append(numpy_helper.from_array(np.bool_(True), "go"))
    graph = helper.make_graph(
        nodes, "g", [_vi("x", TensorProto.FLOAT, ["N", 4])], [_vi("y", TensorProto.INT64, ["t"])], constants
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_loop_that_its_bodys_condition_stops_on_the_datas_value_is_data_sized(tmp_path: Path) -> None:
    model = onnx.load(loop_until(tmp_path / "until.onnx"))
    assert data_sized_outputs(model) == {
        "y": "Loop node 'until', whose body's condition 'cond_out' is the data's"
    }


def test_a_loops_first_condition_from_the_data_is_its_size() -> None:
    nodes = [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Identity", ["turn"], ["step"]),
    ]
    model = _looped(nodes, ["trips", "c"], carried=False)
    model.graph.node.insert(2, helper.make_node("Less", ["limit", "ten"], ["c"]))
    assert data_sized_outputs(model) == {"y": "Loop node 'l', from its input 'c'"}


def test_a_value_the_body_carries_from_the_data_stops_it_on_a_later_turn() -> None:
    # v starts at 0 (a constant): the data's only from the second turn on, as v_out adds the limit.
    nodes = [
        helper.make_node("Add", ["v", "limit"], ["v_out"]),
        helper.make_node("Less", ["v", "ten"], ["cond_out"]),
        helper.make_node("Identity", ["turn"], ["step"]),
    ]
    assert data_sized_outputs(_looped(nodes, ["trips", "go", "zero"])) == {
        "y": "Loop node 'l', whose body's condition 'cond_out' is the data's"
    }


@pytest.mark.parametrize("condition", ["passed on", "turn number"])
def test_a_loop_of_fixed_turns_over_the_datas_values_is_not_data_sized(condition: str) -> None:
    # An exporter's for-loop: its condition passed on unchanged (or read from the turn number only),
    # its carried value the data's. As many turns as `trips` says, whatever the data.
    stop = (
        helper.make_node("Identity", ["cond_in"], ["cond_out"])
        if condition == "passed on"
        else helper.make_node("Less", ["turn", "ten"], ["cond_out"])
    )
    nodes = [
        stop,
        helper.make_node("Add", ["v", "turn"], ["v_out"]),
        helper.make_node("Identity", ["v"], ["step"]),
    ]
    assert data_sized_outputs(_looped(nodes, ["trips", "go", "limit"])) == {}


def test_an_overridable_initializer_is_the_datas_only_when_clients_may_send_it(tmp_path: Path) -> None:
    model = onnx.load(range_to_overridable(tmp_path / "ranged.onnx"))
    assert data_sized_outputs(model) == {}
    assert data_sized_outputs(model, fed={"n"}) == {"y": "Range node 'count', from its input 'limit'"}
    assert data_sized_outputs(model, fed={"zero_is_not_an_input", "x"}) == {}


def _source(path: Path, config_text: str) -> ModelSource:
    config = text_format.Parse(config_text, mc.ModelConfig())
    return ModelSource("ranged", path.parent.parent, config, {1: path}, "ranged/config.pbtxt")


BATCHED = "max_batch_size: 8\ndynamic_batching {}\n"


def test_a_config_that_lets_clients_send_the_initializer_cannot_batch_the_model(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    path = range_to_overridable(tmp_path / "1" / "model.onnx")
    listed = BATCHED + 'input [ { name: "n" data_type: TYPE_INT64 dims: [ 1 ] optional: true } ]'
    with pytest.raises(ConfigError) as caught:
        complete_version(_source(path, listed), path, 8)
    assert "output 'y'" in str(caught.value), caught.value
    assert "sized by the values of the data (Range node 'count', from its input 'limit')" in str(caught.value)
    completed, _, outputs, _ = complete_version(_source(path, BATCHED), path, 8)
    assert completed.max_batch_size == 8 and [i.name for i in completed.input] == ["x"]
    assert [o.not_batch for o in outputs] == [None, None]


def _scanned(over: str) -> onnx.ModelProto:
    """y = a Scan over `over` ([1] int64) whose body makes Range(0, element): as long as the element."""
    body = helper.make_graph(
        [helper.make_node("Range", ["zero", "element", "one"], ["counted"], name="inner")],
        "body",
        [_vi("element", TensorProto.INT64, [])],
        [_vi("counted", TensorProto.INT64, None)],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["limit"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["limit", "axis"], ["limits"]),
        helper.make_node("Scan", [over], ["y"], name="s", body=body, num_scan_inputs=1),
    ]
    constants = [numpy_helper.from_array(np.int64(v), n) for n, v in (("zero", 0), ("one", 1))]
    constants += [numpy_helper.from_array(np.array([0], np.int64), "axis")]
    constants += [numpy_helper.from_array(np.array([5], np.int64), "fives")]
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi("x", TensorProto.FLOAT, ["N", 4])],
        [_vi("y", TensorProto.INT64, ["t", "k"])],
        constants,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_scan_over_the_datas_values_sizes_what_its_body_makes_from_them() -> None:
    # A Scan's body inputs are the data's when its inputs are (not a Loop's turn-by-turn seeding).
    assert data_sized_outputs(_scanned("limits")) == {
        "y": "Range node 'inner', from its input 'element' inside Scan node 's'"
    }
    assert data_sized_outputs(_scanned("fives")) == {}


def test_a_value_carried_from_the_data_stays_the_datas_when_another_joins_it() -> None:
    # a starts as the data's and its next is a constant; b becomes the data's only through the body.
    # Both stay seeded once the second pass adds b: the condition reads a.
    nodes = [
        helper.make_node("Identity", ["ten"], ["a_out"]),
        helper.make_node("Identity", ["limit"], ["b_out"]),
        helper.make_node("Less", ["a", "ten"], ["cond_out"]),
        helper.make_node("Identity", ["turn"], ["step"]),
    ]
    body = helper.make_graph(
        nodes,
        "body",
        [_vi(n, e, []) for n, e in (("turn", TensorProto.INT64), ("cond_in", TensorProto.BOOL))]
        + [_vi(n, TensorProto.INT64, []) for n in ("a", "b")],
        [_vi("cond_out", TensorProto.BOOL, [])]
        + [_vi(n, TensorProto.INT64, []) for n in ("a_out", "b_out", "step")],
    )
    model = _looped([], ["trips", "go", "limit", "zero"])
    loop = model.graph.node[2]
    loop.ClearField("output")
    loop.output.extend(["a_last", "b_last", "y"])
    loop.attribute[0].g.CopyFrom(body)
    assert data_sized_outputs(model) == {
        "y": "Loop node 'l', whose body's condition 'cond_out' is the data's"
    }


@pytest.mark.parametrize("stop", ["trip count", "condition"])
@pytest.mark.parametrize("declared", ["q", "N"])
def test_a_loops_turns_size_its_carried_values_unless_the_graph_names_them_the_batch(
    stop: str, declared: str
) -> None:
    # A carried value may grow a row a turn (Concat, below): as long as the turns the data sets.
    # Exempting carried values (a loop run to convergence keeps its rows) had served such a model
    # batched, and batch mates got each other's rows, OK (a tester, session 49). One that keeps
    # its rows says so by its first dim's symbol: the inputs' batch symbol ("N") clears it.
    nodes = [
        helper.make_node("Add", ["v", "limit"], ["v_out"]),
        helper.make_node("Less", ["v", "limit"], ["cond_out"] if stop == "condition" else ["unused"]),
        helper.make_node("Identity", ["turn"], ["step"]),
    ]
    if stop == "trip count":
        nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    model = _looped(nodes, ["limit" if stop == "trip count" else "trips", "go", "zero"])
    model.graph.output.append(_vi("v_last", TensorProto.INT64, [declared]))
    said = (
        "Loop node 'l', from its input 'limit'"
        if stop == "trip count"
        else "Loop node 'l', whose body's condition 'cond_out' is the data's"
    )
    expected = {"y": said} if declared == "N" else {"y": said, "v_last": said}
    assert data_sized_outputs(model) == expected


def test_a_carried_value_that_grows_a_row_a_turn_is_data_sized() -> None:
    # acc starts with no rows; each turn appends [[turn]]: as many rows as turns, max(x) of them.
    nodes = [
        helper.make_node("Unsqueeze", ["turn", "axes01"], ["row"]),
        helper.make_node("Concat", ["acc", "row"], ["acc_out"], axis=0),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    body = helper.make_graph(
        nodes,
        "body",
        [
            _vi("turn", TensorProto.INT64, []),
            _vi("cond_in", TensorProto.BOOL, []),
            _vi("acc", TensorProto.INT64, [None, 1]),
        ],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("acc_out", TensorProto.INT64, [None, 1])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Cast", ["m"], ["limit"], to=TensorProto.INT64),
            helper.make_node("Loop", ["limit", "", "empty"], ["y"], name="grow", body=body),
        ],
        "g",
        [_vi("x", TensorProto.FLOAT, ["N", 1])],
        [_vi("y", TensorProto.INT64, [None, 1])],
        [
            numpy_helper.from_array(np.zeros((0, 1), np.int64), "empty"),
            numpy_helper.from_array(np.array([0, 1], np.int64), "axes01"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert data_sized_outputs(model) == {"y": "Loop node 'grow', from its input 'limit'"}


def _ranged_by_carried(body_nodes: list[onnx.NodeProto], loop_inputs: list[str]) -> onnx.ModelProto:
    """_looped's model with r = Range(0, v_last, 1) its only output: sized by the carried value."""
    model = _looped(body_nodes, loop_inputs)
    model.graph.node.append(helper.make_node("Range", ["zero", "v_last", "one_step"], ["r"], name="r"))
    model.graph.initializer.append(numpy_helper.from_array(np.int64(1), "one_step"))
    model.graph.ClearField("output")
    model.graph.output.append(_vi("r", TensorProto.INT64, ["k"]))
    return model


PASS_ON = [
    helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    helper.make_node("Identity", ["turn"], ["step"]),
]


@pytest.mark.parametrize(
    ("v_out", "loop_inputs", "said"),
    [
        # Its first value a constant; its next one the data's (an outer value read in the body).
        (
            helper.make_node("Add", ["v", "limit"], ["v_out"]),
            ["trips", "go", "zero"],
            "Range node 'r', from its input 'v_last'",
        ),
        # Its trip count the data's, the value itself passed on: the Range reads a value of the data.
        (
            helper.make_node("Identity", ["v"], ["v_out"]),
            ["limit", "go", "zero"],
            "Range node 'r', from its input 'v_last'",
        ),
        # Nothing of the data anywhere: the carried value is a constant's.
        (helper.make_node("Identity", ["v"], ["v_out"]), ["trips", "go", "zero"], None),
    ],
)
def test_a_carried_value_is_the_datas_as_its_loop_makes_it(
    v_out: onnx.NodeProto, loop_inputs: list[str], said: str | None
) -> None:
    model = _ranged_by_carried([*PASS_ON, v_out], loop_inputs)
    assert data_sized_outputs(model) == ({} if said is None else {"r": said})
