"""Small integer tensors known in part (server/backends/onnx_partial_ints.py): each op it follows,
with what it keeps known and what it leaves computed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from server.backends.onnx_partial_ints import MAX_ELEMENTS, Made, PartialInts

Dims = list[int | str | None]


def _run(
    nodes: Sequence[onnx.NodeProto],
    dims: Mapping[str, Dims],
    constants: Mapping[str, Sequence[int] | int] | None = None,
    known: Mapping[str, Sequence[int | None]] | None = None,
) -> PartialInts:
    values = {name: np.asarray(v, np.int64) for name, v in (constants or {}).items()}
    tracked = PartialInts()
    for name, entries in (known or {}).items():
        tracked.known[name] = np.array(list(entries), dtype=object)
    for node in nodes:

        def constant(i: int, n: onnx.NodeProto = node) -> np.ndarray | None:
            return values.get(n.input[i]) if i < len(n.input) else None

        tracked.see(node, dims.get, constant)
    return tracked


def _entries(tracked: PartialInts, name: str) -> list[int | None] | None:
    found = tracked.entries(name, None)
    return None if found is None else list(found)


def test_a_shape_holds_its_fixed_dims_from_start_to_end() -> None:
    dims: dict[str, Dims] = {"x": ["N", 4, "W", 8]}
    got = _run([helper.make_node("Shape", ["x"], ["s"])], dims)
    assert _entries(got, "s") == [None, 4, None, 8]
    part = _run([helper.make_node("Shape", ["x"], ["s"], start=1, end=-1)], dims)
    assert _entries(part, "s") == [4, None]
    assert _entries(_run([helper.make_node("Shape", ["y"], ["s"])], dims), "s") is None


def test_a_concat_joins_known_and_computed_entries_in_order() -> None:
    dims: dict[str, Dims] = {"q": [1], "zeros": [2]}
    concat = helper.make_node("Concat", ["zeros", "q"], ["p"], axis=0)
    got = _run([concat], dims, {"zeros": [0, 0]}, {"q": [None]})
    assert _entries(got, "p") == [0, 0, None]
    # An input of unknown length: nothing known.
    unknown = _run([helper.make_node("Concat", ["q", "r"], ["p"], axis=0)], {"q": [1]}, known={"q": [3]})
    assert _entries(unknown, "p") is None


def test_a_reshape_slice_and_transpose_move_entries_as_torchs_pad_writes_them() -> None:
    # torch's legacy F.pad: [a, b, c, d, e, f, g, h] -> pairs -> pairs reversed -> transposed -> flat.
    nodes = [
        helper.make_node("Reshape", ["p", "pairs"], ["r"]),
        helper.make_node("Slice", ["r", "start", "end", "axis", "step"], ["s"]),
        helper.make_node("Transpose", ["s"], ["t"], perm=[1, 0]),
        helper.make_node("Reshape", ["t", "flat"], ["f"]),
    ]
    constants = {"pairs": [-1, 2], "start": [-1], "end": [-(2**63)], "axis": [0], "step": [-1], "flat": [-1]}
    got = _run(nodes, {}, constants, {"p": [0, 1, 2, None, 4, 5, 6, 7]})
    assert got.known["r"].tolist() == [[0, 1], [2, None], [4, 5], [6, 7]]
    assert got.known["s"].tolist() == [[6, 7], [4, 5], [2, None], [0, 1]]
    assert _entries(got, "f") == [6, 4, 2, 0, 7, 5, None, 1]
    # A Slice without axes or steps names the first axes; one with computed bounds is not followed.
    slice_node = helper.make_node("Slice", ["p", "start", "end"], ["s"])
    plain = _run([slice_node], {}, {"start": [1], "end": [3]}, {"p": [0, 1, 2, 3]})
    assert _entries(plain, "s") == [1, 2]
    computed = _run([slice_node], {}, {"start": [1]}, {"p": [0, 1]})
    assert "s" not in computed.known


def test_a_reshape_copies_a_zero_dim_from_its_input() -> None:
    tracked = PartialInts()
    tracked.known["p"] = np.array([[1, 2], [3, None]], dtype=object)
    node = helper.make_node("Reshape", ["p", "shape"], ["r"])
    tracked.see(node, {}.get, lambda i: np.array([0, -1], np.int64) if i == 1 else None)
    assert tracked.known["r"].tolist() == [[1, 2], [3, None]]


def test_transpose_without_perm_reverses_the_axes() -> None:
    got = _run([helper.make_node("Transpose", ["p"], ["t"])], {}, known={})
    assert _entries(got, "t") is None
    tracked = PartialInts()
    tracked.known["p"] = np.array([[1, None], [3, 4]], dtype=object)
    tracked.see(helper.make_node("Transpose", ["p"], ["t"]), {}.get, lambda _: None)
    assert _entries(tracked, "t") == [1, 3, None, 4]


@pytest.mark.parametrize(
    ("node", "constants", "want"),
    [
        (helper.make_node("Unsqueeze", ["p", "axes"], ["o"]), {"axes": [0]}, [[5, None]]),
        (helper.make_node("Unsqueeze", ["p"], ["o"], axes=[1]), {}, [[5], [None]]),
        (helper.make_node("Squeeze", ["u", "axes"], ["o"]), {"axes": [0]}, [5, None]),
        (helper.make_node("Squeeze", ["u"], ["o"]), {}, [5, None]),
        (helper.make_node("Gather", ["p", "at"], ["o"], axis=0), {"at": 1}, None),
        (helper.make_node("Gather", ["p", "at"], ["o"], axis=0), {"at": [0]}, [5]),
        (helper.make_node("Cast", ["p"], ["o"], to=7), {}, [5, None]),
        (helper.make_node("Identity", ["p"], ["o"]), {}, [5, None]),
    ],
)
def test_moves_of_entries(node: onnx.NodeProto, constants: dict[str, list[int] | int], want: object) -> None:
    tracked = PartialInts()
    tracked.known["p"] = np.array([5, None], dtype=object)
    tracked.known["u"] = np.array([[5, None]], dtype=object)
    values = {k: np.asarray(v, np.int64) for k, v in constants.items()}

    def constant(i: int) -> np.ndarray | None:
        return values.get(node.input[i]) if i < len(node.input) else None

    tracked.see(node, {}.get, constant)
    got = tracked.known.get("o")
    assert (None if got is None else got.tolist()) == want


def test_arithmetic_on_entries_all_known_is_done_and_otherwise_left_computed() -> None:
    cases = {
        "Add": [7, 9], "Sub": [3, 5], "Mul": [10, 14], "Div": [2, 3], "Mod": [1, 1],
        "Max": [5, 7], "Min": [2, 2],
    }  # fmt: skip
    for op, want in cases.items():
        got = _run([helper.make_node(op, ["a", "b"], ["o"])], {"o": [2]}, {"b": [2, 2]}, {"a": [5, 7]})
        assert _entries(got, "o") == want, op
    for op, want in {"Neg": [-5, -7], "Abs": [5, 7], "Floor": [5, 7], "Ceil": [5, 7]}.items():
        got = _run([helper.make_node(op, ["a"], ["o"])], {"o": [2]}, known={"a": [5, 7]})
        assert _entries(got, "o") == want, op
    # Entry by entry where some are not known: each known pair still done, a division by 0 not.
    by_zero = _run([helper.make_node("Div", ["a", "b"], ["o"])], {"o": [2]}, {"b": [0, 1]}, {"a": [5, 7]})
    assert _entries(by_zero, "o") == [None, 7]
    partly = _run([helper.make_node("Add", ["a", "b"], ["o"])], {"o": [2]}, {"b": [1, 1]}, {"a": [5, None]})
    assert _entries(partly, "o") == [6, None]
    spread = _run([helper.make_node("Mul", ["a", "b"], ["o"])], {"o": ["n"]}, {"b": [3]}, {"a": [None, 2]})
    assert _entries(spread, "o") == [None, 6]  # the length from the inputs' broadcast
    add = helper.make_node("Add", ["a", "b"], ["o"])
    unequal = _run([add], {"o": [2]}, {"b": [1, 2, 3]}, {"a": [None, 2]})
    assert _entries(unequal, "o") == [None, None]  # no broadcast: its dims' length, computed
    no_length = _run([helper.make_node("Add", ["a", "r"], ["o"])], {"o": ["n"]}, {}, {"a": [None]})
    assert _entries(no_length, "o") is None


def test_arithmetic_on_a_named_dim_is_made_from_it() -> None:
    shape = helper.make_node("Shape", ["x"], ["s"])
    dims: dict[str, Dims] = {"x": ["N", "T", 4], "o": [3]}
    for op in ("Add", "Sub", "Mul", "Div", "Mod", "Max", "Min"):
        got = _run([shape, helper.make_node(op, ["s", "k"], ["o"])], dims, {"k": [2]})
        named = got.named("o", None)
        assert named is not None and named[2] == _fold(op, 4, 2), op
        assert named[:2] == (Made(frozenset({"N"})), Made(frozenset({"T"}))), op
    both = _run([shape, helper.make_node("Mul", ["s", "s"], ["o"])], dims)
    assert both.named("o", None) == (Made(frozenset({"N"})), Made(frozenset({"T"})), 16)
    unknown = _run([helper.make_node("Neg", ["a"], ["o"])], {"o": [2]}, known={"a": [None, 3]})
    assert unknown.named("o", None) == (None, -3)  # computed from no name: None


def _fold(op: str, a: int, b: int) -> int:
    return {"Add": a + b, "Sub": a - b, "Mul": a * b, "Div": a // b, "Mod": a % b, "Max": max(a, b)}.get(
        op, min(a, b)
    )


def test_a_legacy_expand_shape_is_read_through_its_equal_and_where() -> None:
    """torch's legacy expand(N, -1, -1): Where(Equal(shape, -1), ones, shape) is [N, 1, 1]."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Equal", ["s", "minus"], ["eq"]),
        helper.make_node("Where", ["eq", "ones", "s"], ["o"]),
    ]
    dims: dict[str, Dims] = {"x": ["N", 3, "T"]}
    values = {"minus": np.array([-1, 3, 3]), "ones": np.array([1, 1, 1])}
    tracked = PartialInts()
    for node in nodes:
        tracked.see(node, dims.get, lambda i, n=node: values.get(n.input[i]) if i < len(n.input) else None)
    assert tracked.named("eq", None) == (0, 1, Made(frozenset({"T"})))  # T == 3: not known
    assert tracked.named("o", None) == ("N", 1, Made(frozenset({"T"})))
    where = helper.make_node("Where", ["c", "a", "b"], ["o"])
    chosen = _run([where], {}, {"c": [1, 0], "b": [7, 8]}, {"a": [5, None]})
    assert _entries(chosen, "o") == [5, 8]
    unknown = _run([where], {}, {"a": [1], "b": [2]}, {"c": [None]})
    assert _entries(unknown, "o") == [None]


def test_constant_of_shape_fills_its_shape() -> None:
    fill = numpy_helper.from_array(np.array([3], np.int64))
    node = helper.make_node("ConstantOfShape", ["s"], ["o"], value=fill)
    assert _entries(_run([node], {}, known={"s": [2]}), "o") == [3, 3]
    zeros = helper.make_node("ConstantOfShape", ["s"], ["o"])
    assert _entries(_run([zeros], {}, known={"s": [3]}), "o") == [0, 0, 0]
    floats = helper.make_node(
        "ConstantOfShape", ["s"], ["o"], value=numpy_helper.from_array(np.array([1.5], np.float32))
    )
    assert _entries(_run([floats], {}, known={"s": [2]}), "o") == [None, None]
    computed = _run([zeros], {"o": [2]}, known={"s": [None]})  # its length from onnx's inference
    assert _entries(computed, "o") == [0, 0]
    unknown = _run([zeros], {"o": ["n"]}, known={"s": [None]})
    assert "o" not in unknown.known


def test_only_what_comes_in_known_is_followed_and_only_small_tensors_are_kept() -> None:
    untouched = _run([helper.make_node("Add", ["a", "b"], ["o"])], {"o": [2]})
    assert "o" not in untouched.known
    big = _run([helper.make_node("Identity", ["a"], ["o"])], {}, known={"a": [0] * (MAX_ELEMENTS + 1)})
    assert "o" not in big.known
    fits = _run([helper.make_node("Identity", ["a"], ["o"])], {}, known={"a": [0] * MAX_ELEMENTS})
    assert "o" in fits.known
    unlisted = _run([helper.make_node("Softmax", ["a"], ["o"])], {}, known={"a": [1]})
    assert "o" not in unlisted.known
    no_output = _run([helper.make_node("Identity", ["a"], [""])], {}, known={"a": [1]})
    assert "" not in no_output.known
    refused = _run([helper.make_node("Reshape", ["a", "s"], ["o"])], {}, {"s": [3]}, {"a": [1, 2]})
    assert "o" not in refused.known  # 2 entries into 3: a graph onnxruntime refuses


def test_entries_of_a_constant_and_a_copy_for_a_body() -> None:
    tracked = PartialInts()
    assert tracked.entries("c", np.array([[1, 2]], np.int64)) == (1, 2)
    assert tracked.entries("c", np.array([1.0])) is None
    assert tracked.entries("c", np.zeros(MAX_ELEMENTS + 1, np.int64)) is None
    tracked.known["a"] = np.array([1], dtype=object)
    inner = tracked.within()
    inner.known["b"] = np.array([2], dtype=object)
    assert "b" not in tracked.known and inner.entries("a", None) == (1,)


def test_a_constant_of_shape_too_large_to_follow_is_not_made() -> None:
    """Its shape [W, W] read from an input's fixed dims: counted before it is made (a 315-byte model
    had a load allocate 1.1 GiB at W = 12000, quadratic in W; a tester, session 57)."""
    import tracemalloc

    fill = numpy_helper.from_array(np.array([0.0], np.float32))
    node = helper.make_node("ConstantOfShape", ["s"], ["o"], value=fill)
    tracemalloc.start()
    try:
        got = _run([node], {"o": [2000, 2000]}, known={"s": [2000, 2000]})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.entries("o", None) is None
    assert peak < 1 << 20, peak  # 4 million entries would be 32 MB of references alone
    negative = _run([node], {}, known={"s": [-1, 4]})
    assert negative.entries("o", None) is None
