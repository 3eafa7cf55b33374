"""Indices made from each row's own place (server/backends/onnx_row_positions.py): bounds, sizes,
the RowIndex each op makes, and when a Gather or GatherND picks from its own row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_positions import Bound, RowIndex, RowPositions

Dims = list[int | str | None]
ARANGE = RowIndex(1, Bound(0, None, 0), 1)


def _run(
    nodes: Sequence[onnx.NodeProto],
    dims: Mapping[str, Dims],
    constants: Mapping[str, Sequence[int] | int] | None = None,
    sized: Sequence[str] = (),
    lineage: Mapping[str, Sequence[str]] | None = None,
) -> RowPositions:
    values = {name: np.asarray(v, np.int64) for name, v in (constants or {}).items()}
    made = {name: frozenset(inputs) for name, inputs in (lineage or {}).items()}
    positions = RowPositions({"N"}, {"N", "F"})
    for node in nodes:

        def constant(i: int, n: onnx.NodeProto = node) -> np.ndarray | None:
            return values.get(n.input[i]) if i < len(n.input) else None

        positions.see(
            node, dims.get, constant, lambda name: name in sized, lambda n: made.get(n, frozenset())
        )
    return positions


_N = [
    helper.make_node("Shape", ["x"], ["s"]),
    helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
    helper.make_node("Range", ["zero", "n", "one"], ["rows"]),
]
_DIMS: dict[str, Dims] = {"x": ["N", "T", 8], "n": [], "rows": ["N"], "column": ["N", 1], "t": [1]}
_CONSTS: dict[str, Sequence[int] | int] = {"zero": 0, "one": 1, "axis1": [1], "four": 4}


def test_a_range_over_the_batchs_own_size_from_zero_by_one_is_each_rows_place() -> None:
    assert _run(_N, _DIMS, _CONSTS).found["rows"] == ARANGE
    shifted = _run(_N, _DIMS, {**_CONSTS, "zero": 1})  # Range(1, N): not from 0
    assert "rows" not in shifted.found
    steps = [*_N[:2], helper.make_node("Range", ["zero", "n", "two"], ["rows"])]
    assert "rows" not in _run(steps, _DIMS, {**_CONSTS, "two": 2}).found
    other = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["n"], axis=0)]
    assert "rows" not in _run([*other, _N[2]], _DIMS, _CONSTS).found  # Range(0, T)
    assert "rows" not in _run([_N[2]], _DIMS, _CONSTS).found  # a limit not read from a shape


def test_a_shapes_dims_are_held_and_picked_as_sizes() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1),
        helper.make_node("Gather", ["s", "zero"], ["t"], axis=0),
        helper.make_node("Cast", ["t"], ["t64"], to=TensorProto.INT64),
        helper.make_node("Cast", ["t"], ["t8"], to=TensorProto.INT8),
        helper.make_node("Slice", ["s", "one", "two"], ["last"]),
        helper.make_node("Unsqueeze", ["t", "axis0"], ["t1"]),
    ]
    got = _run(nodes, _DIMS, {**_CONSTS, "two": [2], "one": [1], "axis0": [0]})
    assert got.shapes["s"] == ["T", 8] and got.sizes["t"] == "T" and got.sizes["t64"] == "T"
    assert "t8" not in got.sizes  # an int8 of T wraps
    assert got.shapes["last"] == [8] and got.sizes["last"] == 8 and got.sizes["t1"] == "T"
    out_of_range = _run(
        [nodes[0], helper.make_node("Gather", ["s", "five"], ["t"], axis=0)], _DIMS, {"five": 5}
    )
    assert "t" not in out_of_range.sizes


@pytest.mark.parametrize(
    ("node", "extra", "want"),
    [
        (helper.make_node("ArgMax", ["x"], ["b"], axis=1), {}, Bound(0, "T", -1)),
        (helper.make_node("ArgMin", ["x"], ["b"], axis=2), {}, Bound(0, None, 7)),
        (helper.make_node("ArgMax", ["x"], ["b"], axis=5), {}, None),
        (helper.make_node("Mod", ["a", "four"], ["b"]), {"a": ["N"]}, Bound(0, None, 3)),
        (helper.make_node("Mod", ["a", "four"], ["b"], fmod=1), {"a": ["N"]}, None),
        (helper.make_node("Mod", ["a", "minus"], ["b"]), {"a": ["N"]}, None),
    ],
)
def test_bounds_of_picked_positions(
    node: onnx.NodeProto, extra: Mapping[str, Dims], want: Bound | None
) -> None:
    got = _run([node], {**_DIMS, **extra}, {**_CONSTS, "minus": -4})
    assert got.bounds.get("b") == want


def test_bounds_follow_constant_shifts_and_int_casts_only() -> None:
    nodes = [
        helper.make_node("ArgMax", ["x"], ["a"], axis=1),
        helper.make_node("Sub", ["a", "one"], ["down"]),
        helper.make_node("Add", ["a", "one"], ["up"]),
        helper.make_node("Cast", ["a"], ["i32"], to=TensorProto.INT32),
        helper.make_node("Cast", ["a"], ["i8"], to=TensorProto.INT8),
        helper.make_node("Add", ["a", "a"], ["twice"]),
        helper.make_node("Reshape", ["a", "flat"], ["moved"]),
    ]
    got = _run(nodes, _DIMS, {**_CONSTS, "flat": [-1]})
    assert got.bounds["down"] == Bound(-1, "T", -2) and got.bounds["up"] == Bound(1, "T", 0)
    assert got.bounds["i32"] == Bound(0, "T", -1)
    for name in ("i8", "twice", "moved"):
        assert name not in got.bounds, name
    topk = helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1)
    assert _run([topk], _DIMS, {"k": [2]}).bounds["indices"] == Bound(0, "T", -1)
    fill = helper.make_node(
        "ConstantOfShape", ["s"], ["z"], value=numpy_helper.from_array(np.array([2], np.int64))
    )
    shape = helper.make_node("Shape", ["x"], ["s"])
    assert _run([shape, fill], _DIMS).bounds["z"] == Bound(2, None, 2)
    mod = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
        helper.make_node("Mod", ["a", "t"], ["m"]),
    ]
    assert _run(mod, {**_DIMS, "a": ["N"]}, _CONSTS).bounds["m"] == Bound(0, "T", -1)


def _flat_pick(offset: str) -> list[onnx.NodeProto]:
    return [
        *_N,
        helper.make_node("Unsqueeze", ["rows", "axis1"], ["column"]),
        helper.make_node("Gather", ["s", "at1"], ["t"], axis=0),
        helper.make_node("Mul", ["column", "t"], ["starts"]),
        helper.make_node("Add", ["starts", offset], ["at"]),
        helper.make_node("Gather", ["h", "at"], ["y"], axis=0),
    ]


def _own(
    positions: RowPositions, node: onnx.NodeProto, size: int | str | None, data: Sequence[str] = ("x",)
) -> bool:
    return positions.own_rows(node, lambda name, axis: size, lambda name: frozenset(data))


def test_an_index_of_each_rows_place_times_its_steps_plus_a_bounded_offset_picks_its_own_row() -> None:
    nodes = [helper.make_node("ArgMax", ["x"], ["am"], axis=1, keepdims=1), *_flat_pick("am")]
    dims = {**_DIMS, "am": ["N", 1]}
    got = _run(nodes, dims, {**_CONSTS, "at1": [1]}, lineage={"x": ["x"]})
    index = got.found["at"]
    assert index == RowIndex("T", Bound(0, "T", -1), 2, sources=frozenset({"x"}))
    assert _own(got, nodes[-1], "T")
    assert not _own(got, nodes[-1], 8)  # another row size
    assert not _own(got, nodes[-1], None)
    assert not _own(got, nodes[-1], "T", data=("y",))  # its bound read from an input not in the data


def test_an_offset_broadcast_across_rows_or_made_from_the_batchs_size_is_no_own_row_pick() -> None:
    wide = [helper.make_node("ArgMax", ["x"], ["am"], axis=1, keepdims=0), *_flat_pick("am")]
    assert "at" not in _run(wide, {**_DIMS, "am": ["N"]}, {**_CONSTS, "at1": [1]}).found  # [N] beside [N, 1]
    sized = [helper.make_node("ArgMax", ["x"], ["am"], axis=1, keepdims=1), *_flat_pick("am")]
    got = _run(sized, {**_DIMS, "am": ["N", 1]}, {**_CONSTS, "at1": [1]}, sized=["am"])
    assert "at" not in got.found
    unknown = _run(sized, {**_DIMS, "am": None}, {**_CONSTS, "at1": [1]})  # type: ignore[dict-item]
    assert "at" not in unknown.found


@pytest.mark.parametrize(
    ("offsets", "size", "own"),
    [
        ([[0, 1, 2, 3]], 4, True),
        ([[1, 2, 3, 4]], 4, False),  # reaches the next row
        ([[-1, 0, 1, 2]], 4, False),  # the row before
        ([[0, 1]], 4, True),
    ],
)
def test_constant_offsets_stay_in_the_row(offsets: list[list[int]], size: int, own: bool) -> None:
    nodes = [
        *_N,
        helper.make_node("Unsqueeze", ["rows", "axis1"], ["column"]),
        helper.make_node("Mul", ["column", "four"], ["starts"]),
        helper.make_node("Add", ["starts", "off"], ["at"]),
        helper.make_node("Gather", ["h", "at"], ["y"], axis=0),
    ]
    got = _run(nodes, _DIMS, {**_CONSTS, "off": offsets})
    assert _own(got, nodes[-1], size) is own


def test_strides_of_a_whole_number_or_a_dims_size_but_not_the_batchs() -> None:
    column = [*_N, helper.make_node("Unsqueeze", ["rows", "axis1"], ["column"])]
    times = [*column, helper.make_node("Mul", ["column", "three"], ["c"])]
    assert _run(times, _DIMS, {**_CONSTS, "three": 3}).found["c"].stride == 3
    for bad in (0, -2):
        assert "c" not in _run(times, _DIMS, {**_CONSTS, "three": bad}).found
    by_n = [*column, helper.make_node("Mul", ["column", "n1"], ["c"])]
    by_n.insert(3, helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]))
    assert "c" not in _run(by_n, {**_DIMS, "n1": [1]}, {**_CONSTS, "axis0": [0]}).found
    twice = [*times, helper.make_node("Mul", ["c", "three"], ["d"])]
    assert _run(twice, _DIMS, {**_CONSTS, "three": 3}).found["d"].stride == 9


def test_unsqueezes_casts_and_columns() -> None:
    ahead = [*_N, helper.make_node("Unsqueeze", ["rows", "axis0"], ["u"])]
    assert "u" not in _run(ahead, _DIMS, {**_CONSTS, "axis0": [0]}).found  # rows no longer first
    attr = [*_N, helper.make_node("Unsqueeze", ["rows"], ["u"], axes=[1])]
    assert _run(attr, _DIMS, _CONSTS).found["u"].rank == 2
    cast = [*_N, helper.make_node("Cast", ["rows"], ["f"], to=TensorProto.FLOAT)]
    assert "f" not in _run(cast, _DIMS, _CONSTS).found
    nodes = [
        *_N,
        helper.make_node("Unsqueeze", ["rows", "axis1"], ["column"]),
        helper.make_node("Concat", ["column", "picks"], ["ix"], axis=-1),
        helper.make_node("GatherND", ["x", "ix"], ["y"]),
    ]
    got = _run(nodes, {**_DIMS, "picks": ["N", 1]}, _CONSTS)
    assert got.found["ix"].column and _own(got, nodes[-1], 1)
    first_axis = [*nodes[:-2], helper.make_node("Concat", ["column", "picks"], ["ix"], axis=0)]
    assert "ix" not in _run(first_axis, {**_DIMS, "picks": ["N", 1]}, _CONSTS).found
    late = [*nodes[:-2], helper.make_node("Concat", ["picks", "column"], ["ix"], axis=1)]
    assert "ix" not in _run(late, {**_DIMS, "picks": ["N", 1]}, _CONSTS).found
    sized = _run(nodes, {**_DIMS, "picks": ["N", 1]}, _CONSTS, sized=["picks"])
    assert "ix" not in sized.found
    batched_dims = helper.make_node("GatherND", ["x", "ix"], ["y"], batch_dims=1)
    assert not _own(got, batched_dims, 1)
    assert not _own(got, helper.make_node("Gather", ["x", "ix"], ["y"]), 1)  # a column is GatherND's


def test_a_copy_for_a_body_keeps_what_was_found() -> None:
    got = _run(_N, _DIMS, _CONSTS)
    inner = got.within({"N"})
    inner.found["other"] = ARANGE
    assert inner.found["rows"] == ARANGE and "other" not in got.found
