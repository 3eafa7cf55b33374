"""server/backends/int_division_rewrite.py, `_sequence_sums`: the nodes that sum a SequenceMap body's
per-item counts into its flags (a 0 put in each sequence, the sequence stacked, summed).

What its mutation survivors showed untested: sequences of different lengths in one graph (two
SequenceMaps, one over no items), the added nodes' names (under the guard's prefix and distinct, so
that an onnxruntime error or profile points at the guard; onnxruntime names an unnamed one after its
op, like the model's own), and that the rewritten model is valid ONNX beyond what onnxruntime 1.31
accepts (`new_axis` of ConcatFromSequence is 0 or 1 by the standard: onnx's checker refuses 2 and
onnx's reference runtime cannot stack the 0-d counts with it, while onnxruntime takes any nonzero as
1). Not pinned, equivalent: `zip(..., strict=True)` weakened, as its one caller builds both lists
from the same flags. Every run here divides only by nonzero values or through the guard, so it is
safe on any onnxruntime."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from server.backends.int_division_guard import (
    BY_ZERO,
    OVERFLOW,
    RESERVED_PREFIX,
    DivisionGuard,
    division_guard_for,
)
from server.backends.onnxruntime_backend import CPU
from tests.support.division_models import save, sequence_map_div

LOGGER = "server.backends.int_division_guard"
MIN32 = int(np.iinfo(np.int32).min)
# What the guard adds after a SequenceMap, per flag (the Constant 0 once per SequenceMap).
SUMMING_OPS = ("SequenceInsert", "ConcatFromSequence", "ReduceSum")


def _value(name: str, elem: int, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _sequence(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_sequence_value_info(name, elem, [3])


def _mapped(
    source: str, divisor: str, out: str, op: str, elem: int, node: str, map_node: str
) -> list[onnx.NodeProto]:
    """out = the sequence of each row of `source` `op` `divisor`, through a SequenceMap named
    `map_node` whose body's division is named `node` (rows of 3). Left a sequence: the model's own
    ConcatFromSequence would take no empty one, and a sequence of no rows is one case here."""
    body = helper.make_graph(
        [helper.make_node(op, [f"{node}_row", f"{node}_by"], [f"{node}_out"], name=node)],
        f"{node}_body",
        [_value(f"{node}_row", elem, [3]), _value(f"{node}_by", elem, [3])],
        [_value(f"{node}_out", elem, [3])],
    )
    return [
        helper.make_node("SplitToSequence", [source], [f"{source}_rows"], axis=0, keepdims=0),
        helper.make_node("SequenceMap", [f"{source}_rows", divisor], [out], name=map_node, body=body),
    ]


def two_sequence_maps(path: Path) -> Path:
    """q = each row of x (int32 [N, 3]) / y (int32 [3]) ('Div_row' in 'Map_x'), and r = each row of
    a (int64 [M, 3]) % b (int64 [3]) ('Mod_row' in 'Map_a'): two sequences of their own lengths."""
    graph = helper.make_graph(
        [
            *_mapped("x", "y", "q", "Div", TensorProto.INT32, "Div_row", "Map_x"),
            *_mapped("a", "b", "r", "Mod", TensorProto.INT64, "Mod_row", "Map_a"),
        ],
        "two_sequence_maps",
        [
            _value("x", TensorProto.INT32, ["N", 3]),
            _value("y", TensorProto.INT32, [3]),
            _value("a", TensorProto.INT64, ["M", 3]),
            _value("b", TensorProto.INT64, [3]),
        ],
        [_sequence("q", TensorProto.INT32), _sequence("r", TensorProto.INT64)],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def sequence_map_in_if(path: Path) -> Path:
    """q = If(c, then: each row of x (int32 [N, 3]) / y through 'Map_then', else: the rows of x)
    ('If_q'): the guard's sums inside the then branch."""
    then = helper.make_graph(
        _mapped("x", "y", "t", "Div", TensorProto.INT32, "Div_then", "Map_then"),
        "then",
        [],
        [_sequence("t", TensorProto.INT32)],
    )
    other = helper.make_graph(
        [helper.make_node("SplitToSequence", ["x"], ["e"], name="Rows", axis=0, keepdims=0)],
        "else",
        [],
        [_sequence("e", TensorProto.INT32)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["q"], name="If_q", then_branch=then, else_branch=other)],
        "sequence_map_in_if",
        [
            _value("c", TensorProto.BOOL, []),
            _value("x", TensorProto.INT32, ["N", 3]),
            _value("y", TensorProto.INT32, [3]),
        ],
        [_sequence("q", TensorProto.INT32)],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def guarded(path: Path, caplog: pytest.LogCaptureFixture) -> DivisionGuard:
    """The model's guard, made as the backend makes it, with no WARNING."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        guard = division_guard_for(path, path.stem, ort.__version__)
    assert guard is not None and caplog.records == []
    return guard


def run(
    model: bytes | Path, feed: dict[str, np.ndarray], flags: tuple[str, ...] = ()
) -> tuple[list[Any], list[int]]:
    """The model's own outputs, then each flag's count, by onnxruntime."""
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=[CPU])
    own = [o.name for o in session.get_outputs() if o.name not in flags]
    values = session.run([*own, *flags], feed)
    return values[: len(own)], [int(v) for v in values[len(own) :]]


def _listed(values: np.ndarray | list[np.ndarray]) -> list[Any]:
    """A tensor, or a sequence of them, as nested lists."""
    return [np.asarray(each).tolist() for each in values]


def _rows(count: int, row: list[int], dtype: type[np.integer]) -> np.ndarray:
    return np.asarray([row] * count, dtype).reshape(count, 3)


@pytest.mark.parametrize(("n", "m"), [(4, 2), (1, 5), (0, 3), (3, 0)])
def test_two_sequence_maps_of_different_lengths_are_each_counted_over_their_own_items(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, n: int, m: int
) -> None:
    path = two_sequence_maps(tmp_path / "two.onnx")
    guard = guarded(path, caplog)
    assert guard.nodes == ("Div_row (in Map_x)", "Div_row (in Map_x)", "Mod_row (in Map_a)")
    assert guard.faults == (BY_ZERO, OVERFLOW, BY_ZERO)
    feed = {
        "x": _rows(n, [7, MIN32, 9], np.int32),
        "y": np.asarray([0, -1, 0], np.int32),  # two zeros and MIN / -1 in each row of x
        "a": _rows(m, [5, 6, 7], np.int64),
        "b": np.asarray([0, 4, 3], np.int64),  # one zero in each row of a
    }
    (q, r), counts = run(guard.model_bytes, feed, guard.flags)
    assert counts == [2 * n, n, m]
    assert _listed(q) == [[7, MIN32, 9]] * n and _listed(r) == [[0, 2, 1]] * m  # by 1 where refused
    safe = {**feed, "y": np.asarray([2, 3, -4], np.int32), "b": np.asarray([2, 4, 3], np.int64)}
    outputs, counts = run(guard.model_bytes, safe, guard.flags)
    assert counts == [0, 0, 0]
    assert [_listed(o) for o in outputs] == [_listed(o) for o in run(path, safe)[0]]
    assert _listed(outputs[0]) == [[3, -715_827_882, -2]] * n  # truncated toward 0


@pytest.mark.parametrize("model", [two_sequence_maps, sequence_map_in_if])
def test_every_node_summing_the_sequences_is_named_under_the_prefix_and_no_two_alike(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, model: Callable[[Path], Path]
) -> None:
    """Named nodes: onnxruntime's errors and profile name a node by its name (an unnamed one gets its
    op and a number, like the model's own), so the guard's nodes are found by the prefix."""
    guard = guarded(model(tmp_path / "m.onnx"), caplog)
    rewritten = onnx.load_from_string(guard.model_bytes)
    graph = rewritten.graph  # where the SequenceMap is: the top graph or the If's then branch
    if model is sequence_map_in_if:
        graph = next(a.g for a in graph.node[0].attribute if a.name == "then_branch")
    added = [node for node in graph.node if node.output[0].startswith(RESERVED_PREFIX)]
    maps = sum(node.op_type == "SequenceMap" for node in graph.node)
    assert Counter(node.op_type for node in added) == Counter(
        {"Constant": maps, **{op: len(guard.flags) for op in SUMMING_OPS}}
    )
    names = [node.name for node in added]
    assert all(name.startswith(RESERVED_PREFIX) for name in names) and len(set(names)) == len(names)
    flags = [o.name for o in graph.output if o.name.startswith(RESERVED_PREFIX)]  # in order
    assert [node.name for node in added if node.op_type == "ReduceSum"] == flags


def test_a_sequence_map_inside_an_if_branch_is_counted_only_when_the_branch_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guard = guarded(sequence_map_in_if(tmp_path / "if.onnx"), caplog)
    assert guard.nodes == ("Div_then (in Map_then) (in If_q)",) * 2
    feed = {
        "c": np.asarray(True),
        "x": _rows(5, [1, MIN32, 3], np.int32),
        "y": np.asarray([0, -1, 0], np.int32),
    }
    (q,), counts = run(guard.model_bytes, feed, guard.flags)
    assert counts == [10, 5] and _listed(q) == [[1, MIN32, 3]] * 5
    assert run(guard.model_bytes, {**feed, "c": np.asarray(False)}, guard.flags)[1] == [0, 0]
    assert run(guard.model_bytes, {**feed, "x": _rows(0, [], np.int32)}, guard.flags)[1] == [0, 0]


@pytest.mark.parametrize("rows", [3, 1])
def test_the_guarded_sequence_map_is_valid_onnx_and_onnxs_reference_runtime_answers_alike(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, rows: int
) -> None:
    """onnx's full check (with its shape inference) passes, and onnx's reference runtime gives the
    answers and counts onnxruntime gives: the model is not one only onnxruntime 1.31 reads. (Its
    SequenceMap takes no empty sequence, onnx 1.23: rows of 0 are run by onnxruntime above.)"""
    guard = guarded(sequence_map_div(tmp_path / "seq.onnx"), caplog)
    rewritten = onnx.load_from_string(guard.model_bytes)
    onnx.checker.check_model(rewritten, full_check=True)
    feed = {"x": _rows(rows, [7, MIN32, 9], np.int32), "y": np.asarray([2, -1, 0], np.int32)}
    (q,), counts = run(guard.model_bytes, feed, guard.flags)
    reference = ReferenceEvaluator(rewritten).run(["q", *guard.flags], feed)
    assert counts == [rows, rows] and [int(c) for c in reference[1:]] == counts
    assert q.tolist() == reference[0].tolist() == [[3, MIN32, 9]] * rows
