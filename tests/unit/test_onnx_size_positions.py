"""Where the batch's size lands in a small integer tensor (server/backends/onnx_size_positions.py),
and the load's reading through it: `n, c = x.shape` written as a Split leaves c a dim, not the
size, so x * c batches; a Split whose parts the load cannot read marks every part."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_size_positions import (
    EVERY,
    joined_positions,
    length_of,
    picked_positions,
    sliced_positions,
    split_parts,
    split_positions,
)


def _constants(**values: list[int]) -> dict[int, np.ndarray]:
    return {int(key[1:]): np.array(value, np.int64) for key, value in values.items()}


def _split(outputs: int, *inputs: str, **attrs: object) -> onnx.NodeProto:
    return helper.make_node("Split", ["s", *inputs], [f"o{k}" for k in range(outputs)], **attrs)


def test_a_splits_parts_given_equal_or_not_read() -> None:
    given = _constants(i1=[1, 2])
    assert split_parts(_split(2, "parts"), 3, given.get) == [1, 2]
    assert split_parts(_split(2, split=[1, 2]), 3, {}.get) == [1, 2]  # opset 11's attribute
    assert split_parts(_split(2), 3, {}.get) == [2, 1]  # opset 18's num_outputs: the last smaller
    assert split_parts(_split(3), 4, {}.get) == [2, 2, 0]
    assert split_parts(_split(2), 4, {}.get) == [2, 2]
    assert split_parts(_split(2, "parts"), 3, {}.get) is None  # computed at run time
    assert split_parts(_split(2, "parts"), 4, given.get) is None  # they do not sum to the length
    assert split_parts(_split(3, "parts"), 3, given.get) is None  # one per output
    assert split_parts(_split(2, "parts"), 3, _constants(i1=[4, -1]).get) is None  # a negative part


def test_each_part_of_a_split_holds_its_share_of_the_positions() -> None:
    parts = _constants(i1=[1, 2])
    assert split_positions(_split(2, "parts"), frozenset({0}), [3], parts.get) == [
        frozenset({0}),
        frozenset(),
    ]
    assert split_positions(_split(2, "parts"), frozenset({2}), [3], parts.get) == [
        frozenset(),
        frozenset({1}),
    ]
    boundary = split_positions(_split(2, "parts"), frozenset({1}), [3], parts.get)
    assert boundary == [frozenset(), frozenset({0})]  # the second part's first
    assert split_positions(_split(2, "parts", axis=-1), frozenset({2}), [3], parts.get) == [
        frozenset(),
        frozenset({1}),
    ]
    assert split_positions(_split(2, "parts", axis=1), frozenset({0}), [3], parts.get) is None
    assert split_positions(_split(2, "parts"), EVERY, [3], parts.get) is None
    assert split_positions(_split(2, "parts"), frozenset({0}), ["n"], parts.get) is None
    assert split_positions(helper.make_node("Concat", ["s"], ["o"]), frozenset({0}), [3], parts.get) is None


def test_lengths_picks_slices_and_joins_of_positions() -> None:
    assert length_of([]) == 1 and length_of([4]) == 4 and length_of(["n"]) is None
    assert length_of([2, 2]) is None and length_of(None, np.zeros((2, 2))) is None
    assert length_of(None, np.zeros(3)) == 3
    assert picked_positions(frozenset({1}), np.array([1, 0]), 2) == frozenset({0})
    assert picked_positions(frozenset({1}), None, 2) == EVERY
    assert picked_positions(frozenset({1}), np.array([0]), None) == frozenset()  # from the start
    assert picked_positions(frozenset({1}), np.array([0, 1]), None) == frozenset({1})
    assert picked_positions(frozenset({1}), np.array([-1]), None) == EVERY  # from the end: not known
    assert picked_positions(EVERY, np.array([0]), 2) == EVERY
    node = helper.make_node("Slice", ["s", "a", "b", "c", "d"], ["o"])
    bounds = _constants(i1=[1], i2=[3], i3=[-1], i4=[1])
    assert sliced_positions(frozenset({1, 2}), node, bounds.get, 3) == frozenset({0, 1})
    stepped = _constants(i1=[0], i2=[3], i4=[2])
    plain = helper.make_node("Slice", ["s", "a", "b", "", "d"], ["o"])
    assert sliced_positions(frozenset({2}), plain, stepped.get, 3) == frozenset({1})  # 0, 2: its second
    unstepped = helper.make_node("Slice", ["s", "a", "b"], ["o"])
    assert sliced_positions(frozenset({1}), unstepped, _constants(i1=[0], i2=[3]).get, 3) == frozenset({1})
    assert sliced_positions(frozenset({1}), node, _constants(i1=[0], i2=[3], i3=[1]).get, 3) == EVERY
    assert sliced_positions(frozenset({1}), node, _constants(i1=[0]).get, 3) == EVERY
    assert sliced_positions(frozenset({1}), node, _constants(i2=[3]).get, 3) == EVERY
    # A vector of no known length (a Shape of an If's output of no known rank): from its start only.
    assert sliced_positions(frozenset({1, 2}), unstepped, _constants(i1=[1], i2=[2]).get, None) == {0}
    assert sliced_positions(frozenset({0, 3}), plain, _constants(i1=[1], i2=[1 << 62], i4=[2]).get, None) == {
        1
    }
    assert sliced_positions(frozenset({0}), unstepped, _constants(i1=[0], i2=[-1]).get, None) == EVERY
    assert sliced_positions(frozenset({0}), unstepped, _constants(i1=[-2], i2=[5]).get, None) == EVERY
    assert sliced_positions(frozenset({0}), plain, _constants(i1=[5], i2=[0], i4=[-1]).get, None) == EVERY
    assert sliced_positions(frozenset({0}), unstepped, _constants(i1=[0], i2=[0]).get, None) == frozenset()
    # A known length reads a bound from the end: x.shape[-1:] of [N, 3, N]'s shape is its last N.
    assert sliced_positions(frozenset({2}), unstepped, _constants(i1=[-1], i2=[3]).get, 3) == {0}
    assert joined_positions([frozenset({0}), frozenset(), frozenset({0})], [1, 3, 1]) == frozenset({0, 4})
    # An input of no known length: its own positions hold; any after it cannot be placed.
    assert joined_positions([frozenset({0}), frozenset({0})], [1, None]) == frozenset({0, 1})
    assert joined_positions([frozenset({1}), frozenset()], [None, 1]) == frozenset({1})
    assert joined_positions([frozenset({0}), frozenset({0})], [None, 1]) == EVERY
    assert joined_positions([frozenset(), frozenset(), frozenset({0})], [None, 1, 1]) == EVERY
    with pytest.raises(ValueError):
        joined_positions([frozenset({0})], [1, 2])


def test_a_dim_split_from_the_shape_is_no_size() -> None:
    """n, c = x.shape (opset 18's Split, and at a negative axis): x * c batches; x * n does not."""
    for attrs in ({"num_outputs": 2}, {"num_outputs": 2, "axis": -1}):
        for taken, batched in (("c", True), ("n", False)):
            nodes = [
                helper.make_node("Shape", ["x"], ["shape"]),
                helper.make_node("Split", ["shape"], ["n", "c"], **attrs),
                helper.make_node("Cast", [taken], ["f"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["x", "f"], ["y"]),
            ]
            x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
            y = helper.make_value_info("y", onnx.TypeProto())
            model = helper.make_model(
                helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)]
            )
            model.ir_version = 8
            got = row_mixing_outputs(model)
            assert (got == {}) == batched, (attrs, taken, got)
