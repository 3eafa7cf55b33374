"""onnx_told_dims.dims_made_apart op by op (session 60): which output dims each op makes of which
input dims or values, so that a dim onnx names `unk__` counts as a length of no batch only where
every source is one. Mutation testing at 7c80a79 left 69 of _sources' mutants alive: each case
here pins one op's mapping (positions, negative axes, the inputs read by value)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from onnx import NodeProto, helper

from server.backends.onnx_told_dims import dims_made_apart

N = helper.make_node
Dims = dict[str, list[int | str | None]]
APART = {"T", "U"}.__contains__


def _made(node: NodeProto, dims: Dims, free: Callable[[str], bool] = lambda name: True) -> set[str]:
    return dims_made_apart(node, dims.get, APART, free)


@pytest.mark.parametrize(
    ("axis", "out"),
    [
        (1, ["N", "unk__0", 5]),
        (-2, ["N", "unk__0", 5]),
        (2, ["N", "T", "unk__0"]),
        (-1, ["N", "T", "unk__0"]),
    ],
)
def test_a_gather_takes_its_indices_dims_at_its_axis(axis: int, out: list[int | str | None]) -> None:
    dims: Dims = {"d": ["N", "T", 5], "i": ["U"], "o": out}
    assert _made(N("Gather", ["d", "i"], ["o"], axis=axis), dims) == {
        "unk__0",
        *(["T"] if "T" in out else []),
    }


def test_a_gather_by_indices_of_two_axes_and_by_the_batch() -> None:
    two: Dims = {"d": ["N", 7], "i": ["T", "U"], "o": ["N", "unk__0", "unk__1"]}
    assert _made(N("Gather", ["d", "i"], ["o"], axis=1), two) == {"unk__0", "unk__1"}
    rows: Dims = {"d": [16, 3], "i": ["N", "unk__1"], "o": ["unk__2", "unk__3", 3]}  # an embedding
    assert _made(N("Gather", ["d", "i"], ["o"]), rows) == set()  # the batch's, and an unknown one
    first: Dims = {"d": ["N", "T", 5], "i": ["U"], "o": ["unk__0", "T", 5]}
    assert _made(N("Gather", ["d", "i"], ["o"], axis=0), first) == {"unk__0", "T"}  # the batch's axis picked
    unknown: Dims = {"d": ["N", "T"], "o": ["N", "unk__0"]}  # indices of no known rank
    assert _made(N("Gather", ["d", "i"], ["o"], axis=1), unknown) == set()


def test_gather_elements_takes_its_indices_dims() -> None:
    dims: Dims = {"d": ["N", "T"], "i": ["N", "U"], "o": ["unk__0", "unk__1"]}
    assert _made(N("GatherElements", ["d", "i"], ["o"], axis=1), dims) == {"unk__1"}


@pytest.mark.parametrize(
    ("axis", "out", "want"),
    [
        (None, ["N", "T", "unk__2"], {"T", "unk__2"}),  # -1 by default: the depth last
        (-1, ["N", "T", "unk__2"], {"T", "unk__2"}),
        (1, ["N", "unk__2", "T"], {"unk__2", "T"}),
        (-2, ["N", "unk__2", "T"], {"unk__2", "T"}),
        (0, ["unk__2", "N", "T"], {"unk__2", "T"}),
    ],
)
def test_a_one_hot_puts_its_depth_at_its_axis(
    axis: int | None, out: list[int | str | None], want: set[str]
) -> None:
    attrs = {} if axis is None else {"axis": axis}
    node = N("OneHot", ["i", "depth", "values"], ["o"], **attrs)
    dims: Dims = {"i": ["N", "T"], "depth": [], "values": [2], "o": out}
    assert _made(node, dims) == want
    assert _made(node, dims, free=lambda name: name != "depth") == set()  # a depth made from the batch
    assert _made(node, dims, free=lambda name: name != "values") == want  # its values: not a length


@pytest.mark.parametrize("axis", [1, -1])
def test_a_compress_along_an_axis_counts_its_condition(axis: int) -> None:
    dims: Dims = {"x": ["N", "T"], "c": [4], "o": ["N", "unk__0"]}
    assert _made(N("Compress", ["x", "c"], ["o"], axis=axis), dims) == {"unk__0"}
    assert _made(N("Compress", ["x", "c"], ["o"], axis=axis), dims, free=lambda name: name != "c") == set()
    along: Dims = {"x": ["N", "T"], "c": [4], "o": ["unk__0", "T"]}  # along the batch: kept where told
    assert _made(N("Compress", ["x", "c"], ["o"], axis=0), along) == {"unk__0", "T"}


@pytest.mark.parametrize(
    ("axis", "want"), [(1, {"unk__1"}), (2, {"unk__1"}), (-1, {"unk__1"}), (-2, {"unk__1"})]
)
def test_a_flatten_splits_its_dims_at_its_axis(axis: int, want: set[str]) -> None:
    dims: Dims = {"x": ["N", "T", 2], "f": ["unk__0", "unk__1"]}  # unk__0 holds N: never apart
    assert _made(N("Flatten", ["x"], ["f"], axis=axis), dims) == want
    before: Dims = {"x": [3, "N", "T"], "f": ["unk__0", "unk__1"]}  # the batch second
    assert _made(N("Flatten", ["x"], ["f"], axis=-1), before) == {"unk__1"}  # 3 * N; T
    assert _made(N("Flatten", ["x"], ["f"], axis=1), before) == {"unk__0"}  # 3; N * T
    assert _made(N("Flatten", ["x"], ["f"], axis=2), before) == {"unk__1"}  # 3 * N; T
    middle: Dims = {"x": ["T", "N", 2], "f": ["unk__0", "unk__1"]}  # axis -2 of rank 3 is 1 (read as 2)
    assert _made(N("Flatten", ["x"], ["f"], axis=-2), middle) == {"unk__0"}  # T; N * 2


@pytest.mark.parametrize("op", ["Range", "NonZero", "ConstantOfShape"])
def test_lengths_made_of_values_count_where_those_are_of_no_batch(op: str) -> None:
    node = N(op, ["a", "b", "c"] if op == "Range" else ["a"], ["o"])
    dims: Dims = {"a": [], "o": ["unk__0", "unk__1"] if op != "Range" else ["unk__0"]}
    want = {"unk__0", "unk__1"} if op != "Range" else {"unk__0"}
    assert _made(node, dims) == want
    assert _made(node, dims, free=lambda name: name != "a") == set()


def test_a_concat_joins_its_inputs_dims_along_its_axis() -> None:
    dims: Dims = {"x": ["N", "T"], "y": ["N", 3], "o": ["N", "unk__0"]}
    assert _made(N("Concat", ["x", "y"], ["o"], axis=1), dims) == {"unk__0"}
    batch: Dims = {"x": ["N", "T"], "y": ["N", "T"], "o": ["unk__0", "T"]}
    assert _made(N("Concat", ["x", "y"], ["o"], axis=0), batch) == {"T"}  # N + N: not apart
    unknown: Dims = {"x": ["N", "T"], "o": ["N", "unk__0"]}  # y of no known rank: its share unknown
    assert _made(N("Concat", ["x", "y"], ["o"], axis=1), unknown) == set()


def test_an_op_by_axis_reads_its_amounts_by_value_and_its_data_by_axis() -> None:
    dims: Dims = {"x": ["N", "T"], "k": [1], "v": ["N", "unk__0"], "i": ["N", "unk__0"]}
    top = N("TopK", ["x", "k"], ["v", "i"])
    assert _made(top, dims) == {"unk__0"}
    assert _made(top, dims, free=lambda name: name != "k") == set()
    wider: Dims = {"x": ["T"], "s": [2], "o": ["unk__0", "unk__1"]}  # an Expand's new leading axis
    assert _made(N("Expand", ["x", "s"], ["o"]), wider) == {"unk__0", "unk__1"}
    half: Dims = {"x": ["N", "T"], "k": [1], "i": ["N", "unk__0"]}  # the values' dims not known
    assert _made(top, half) == {"unk__0"}  # the indices' are read all the same
    assert _made(N("Relu", ["x"], ["o"]), {"x": ["N", "T"], "o": ["N", "unk__0"]}) == set()  # not traced
    assert _made(N("Slice", ["x"], ["o"]), {"o": ["N", "unk__0"]}) == set()  # its data of no known rank


def test_defaults_and_edges_of_the_axes() -> None:
    # Survivors of the mutation run at 9326543: a Flatten's default axis (1) and its axis at the
    # rank, a OneHot's default axis (-1) where the two placings differ, a scalar's Expand, a
    # scalar index, and a Concat's inputs read by axis, not by value.
    flat: Dims = {"x": ["N", "T"], "f": ["unk__0", "unk__1"]}
    assert _made(N("Flatten", ["x"], ["f"]), flat) == {"unk__1"}  # N; T
    wide: Dims = {"x": ["N", "V", "T"], "f": ["unk__0", "unk__1"]}  # V: a length not told
    assert _made(N("Flatten", ["x"], ["f"]), wide) == set()  # N; V * T (not V; T at axis 2)
    assert _made(N("Flatten", ["x"], ["f"], axis=2), flat) == {"unk__1"}  # N * T; 1
    hot: Dims = {"i": ["N", "V"], "depth": [], "values": [2], "o": ["N", "unk__7", "unk__2"]}
    assert _made(N("OneHot", ["i", "depth", "values"], ["o"]), hot) == {"unk__2"}  # V not apart
    assert _made(N("OneHot", ["i", "depth", "values"], ["o"], axis=1), hot) == {"unk__7"}
    scalar: Dims = {"x": [], "s": [1], "o": ["unk__0"]}
    assert _made(N("Expand", ["x", "s"], ["o"]), scalar) == {"unk__0"}
    picked: Dims = {"d": ["T", "U"], "i": [], "o": ["unk__0"]}
    assert _made(N("Gather", ["d", "i"], ["o"]), picked) == {"unk__0"}  # row i of a [T, U] table
    joined: Dims = {"x": ["N", "T"], "y": ["N", "U"], "o": ["N", "unk__0"]}
    concat = N("Concat", ["x", "y"], ["o"], axis=1)
    assert _made(concat, joined, free=lambda name: False) == {"unk__0"}  # batched inputs, told lengths
