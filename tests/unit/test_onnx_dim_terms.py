"""Lengths computed from dims named by their computation, a roll's axis, a Pad's unpadded axes and an
Expand's shape read as dims (onnx_dim_terms.py, onnx_dim_classes.py), and a windows' count divided by
its mask's (onnx_batch_names.products, onnx_partial_arithmetic.py): HF transformers' Swin with a
dynamic image size batches (refused at 7e46334; a tester, session 66, and a real export, session 67).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from server.backends.onnx_batch_names import BatchNames
from server.backends.onnx_dim_products import divided_by
from server.backends.onnx_dim_terms import (
    Cut,
    computed_length,
    congruent,
    cut,
    joined_entries,
    rolled_axis,
    shape_entries,
)
from server.backends.onnx_reshape_rows import places_batch, related_quotient, relation, solved_batch_axis
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import graph_model, ints, node, rows_independent
from tests.support.window_graphs import C, window_block
from tests.unit.test_onnx_dim_classes import _dims

DYNAMIC = ("N", "H", "W", C)


def test_swins_shifted_window_block_of_a_dynamic_image_size_batches() -> None:
    model = window_block(shape=DYNAMIC)
    assert rows_independent(model, (8, 8, C)) and rows_independent(model, (8, 12, C))
    assert row_mixing_outputs(model) == {}  # at 7e46334: "takes the batch's size as a value"


def test_a_mask_of_a_fixed_count_or_windows_put_back_by_another_dim_is_still_refused() -> None:
    assert "y" in row_mixing_outputs(window_block("n_of", DYNAMIC))
    # H // ws twice: the windows' count over hq * hq is not N (the load does not take W for H).
    found = row_mixing_outputs(window_block(shape=DYNAMIC, back=("rh", "rh")))
    assert "reshapes 'att'" in found["y"] and "not all known at load" in found["y"]


def _same(dim: object) -> object:
    return dim


@pytest.mark.parametrize(
    ("op", "terms", "attrs", "name"),
    [
        ("Div", ["H", 4], {}, "~Div(H,4)"),
        ("Mod", ["H", 4], {}, "~Mod(H,4)"),
        ("Mul", ["W", "H"], {}, "~Mul(H,W)"),  # one name for H * W and W * H
        ("Add", [2, "H"], {}, "~Add(2,H)"),
        ("Div", ["H", "W"], {}, None),  # by a length that may be 0
        ("Div", ["H", 0], {}, None),
        ("Add", ["H", -1], {}, None),  # may be -1: a Reshape reads it otherwise
        ("Sub", ["H", 1], {}, None),
        ("Mod", ["H", 4], {"fmod": 1}, None),
        ("Div", [8, 4], {}, None),  # numbers: folded elsewhere
        ("Div", ["H", None], {}, None),
    ],
)
def test_a_length_computed_from_lengths_is_named_by_its_computation(
    op: str, terms: list, attrs: dict, name: str | None
) -> None:
    assert computed_length(helper.make_node(op, ["a", "b"], ["c"], **attrs), terms, _same) == name


def test_lengths_computed_alike_from_dims_of_one_class_are_joined_once_the_graph_is_read() -> None:
    """W // 4 named before W was known to be the mask's W: joined after (congruent), and a length of
    it too (its Mul), while H // 4 and a Mod of W stay apart."""
    parent = {"W2": "W1"}

    def same(dim: object) -> object:
        while isinstance(dim, str) and dim in parent:
            dim = parent[dim]
        return dim

    def join(first: str, second: str) -> None:
        parent[max(same(first), same(second))] = min(same(first), same(second))  # type: ignore[type-var]

    div = helper.make_node("Div", ["a", "b"], ["c"])
    assert computed_length(div, ["W2", 4], same) == "~Div(W2,4)"  # named by its operands as given
    terms = {
        "~Div(W1,4)": ("Div", "W1", 4),
        "~Div(H,4)": ("Div", "H", 4),
        "~Mod(W2,4)": ("Mod", "W2", 4),
        "~Div(W2,4)": ("Div", "W2", 4),
        "~Mul(~Div(W1,4),2)": ("Mul", "~Div(W1,4)", 2),
        "~Mul(2,~Div(W2,4))": ("Mul", 2, "~Div(W2,4)"),
    }
    congruent(terms, same, join)
    assert same("~Div(W1,4)") == same("~Div(W2,4)") != same("~Div(H,4)")
    assert same("~Mod(W2,4)") not in (same("~Div(W1,4)"), same("~Div(H,4)"))
    assert same("~Mul(~Div(W1,4),2)") == same("~Mul(2,~Div(W2,4))")


def _cuts(first: tuple[str, int, int, int], second: tuple[str, int, int, int]) -> dict[str, Cut]:
    return {"a": Cut(*first), "b": Cut(*second)}


@pytest.mark.parametrize(
    ("first", "second", "found"),
    [
        (("x", 1, 2, 1 << 62), ("x", 1, 0, 2), ("x", 1)),  # torch.roll(x, -2, 1)
        (("x", 1, 0, 2), ("x", 1, 2, 1 << 62), ("x", 1)),  # either order
        (("x", 1, -2, 1 << 62), ("x", 1, 0, -2), ("x", 1)),  # torch.roll(x, 2, 1)
        (("x", 1, 2, 1 << 62), ("x", 1, 0, 3), None),  # a value twice
        (("x", 1, 2, 1 << 62), ("y", 1, 0, 2), None),  # two tensors
        (("x", 1, 2, 6), ("x", 1, 0, 2), None),  # not to the end
        (("x", 1, 2, 1 << 62), ("x", 2, 0, 2), None),  # two axes
        (("x", 1, 2, 1 << 62), ("x", 1, 1, 2), None),  # not from 0
    ],
)
def test_a_concat_of_a_rolls_two_slices_is_as_long_as_the_axis(
    first: tuple[str, int, int, int], second: tuple[str, int, int, int], found: tuple[str, int] | None
) -> None:
    concat = helper.make_node("Concat", ["a", "b"], ["c"], axis=1)
    assert rolled_axis(concat, _cuts(first, second), 3) == found
    assert rolled_axis(helper.make_node("Concat", ["a", "b"], ["c"], axis=2), _cuts(first, second), 3) is None


def test_a_slice_is_a_cut_only_of_one_axis_by_constants_step_1() -> None:
    constants = {
        name: ints(name, value) for name, value in (("s", [2]), ("e", [9]), ("a", [-2]), ("two", [2]))
    }
    constants["both"] = ints("both", [0, 1])
    assert cut(helper.make_node("Slice", ["x", "s", "e", "a"], ["y"]), constants, 3) == Cut("x", 1, 2, 9)
    assert cut(helper.make_node("Slice", ["x", "s", "e", "a", "two"], ["y"]), constants, 3) is None
    assert cut(helper.make_node("Slice", ["x", "s", "e", "both"], ["y"]), constants, 3) is None
    assert cut(helper.make_node("Slice", ["x", "s", "k", "a"], ["y"]), constants, 3) is None  # computed end
    assert cut(helper.make_node("Slice", ["x", "s", "e"], ["y"]), constants, 3) is None  # no axes


def test_a_shapes_entries_are_its_lengths_numbers_and_unknowns_of_known_count() -> None:
    constants = {"c": ints("c", [4, 4])}
    concat = helper.make_node("Concat", ["n", "c", "k"], ["s"], axis=0)
    assert shape_entries(concat, {"n": "N"}, constants, {"k": [2]}) == ["N", 4, 4, None, None]
    assert shape_entries(concat, {"n": "N"}, constants, {"k": ["L"]}) is None  # how many: not known
    assert shape_entries(helper.make_node("Concat", ["n"], ["s"], axis=1), {"n": "N"}, {}, {}) is None


def _view_back(second: str) -> onnx.ModelProto:
    """x [N, H, W] viewed as [N, H // 2, 2, W // 2, 2] (two computed entries: onnxruntime checks
    both, onnx_runtime_rewrites.py) and, by another Div of H, back through [-1, `second`, 2, W // 2, 2]."""
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "one"], "h"),
        node("Div", ["h", "two"], "half"),
        node("Unsqueeze", ["half", "zero1"], "half1"),
        node("Gather", ["s", "two"], "w"),
        node("Div", ["w", "two"], "w_half"),
        node("Unsqueeze", ["w_half", "zero1"], "w_half1"),
        node("Gather", ["s", "zero"], "n"),
        node("Unsqueeze", ["n", "zero1"], "n1"),
        node("Concat", ["n1", "half1", "two1", "w_half1", "two1"], "to", axis=0),
        node("Reshape", ["x", "to"], "v"),
        node("Relu", ["v"], "rv"),  # (read by an op other than a Reshape: onnxruntime checks v's shape)
        node("Div", ["h", "two"], "half_b"),  # H // 2 computed anew
        node("Sub", ["h", "one"], "less"),
        node("Unsqueeze", [second, "zero1"], "second1"),
        node("Concat", ["minus1", "second1", "two1", "w_half1", "two1"], "back", axis=0),
        node("Reshape", ["rv", "back"], "y"),
    ]
    inits = [ints("zero", 0), ints("one", 1), ints("two", 2), ints("zero1", [0]), ints("two1", [2])]
    inits += [ints("minus1", [-1])]
    return graph_model(nodes, inits, shape=("N", "H", "W"))


def test_the_same_computation_of_one_dim_names_two_reshapes_dims_alike() -> None:
    dims = _dims(_view_back("half_b"))
    assert dims["v"][1] == dims["y"][1] and dims["y"][0] == "N"  # onnx named y's two apart
    dims = _dims(_view_back("less"))  # H - 1: another length, and one that may be -1
    assert dims["y"][1] != dims["v"][1]


def test_a_pad_by_zero_keeps_an_axis_and_an_expand_broadcasts_its_shapes_lengths() -> None:
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "one1"], "h1"),
        node("Mod", ["h1", "two1"], "odd"),  # computed: onnx names every padded axis anew
        node("Concat", ["zero1", "odd", "zero1", "zero1", "odd", "zero1"], "pads", axis=0),  # axis 1
        node("Pad", ["x", "pads"], "p"),
        node("Concat", ["one1", "h1", "c1"], "wide", axis=0),
        node("Expand", ["row", "wide"], "e"),  # [1, 1, C] to [1, H, C]
        node("Add", ["p", "e"], "y"),
    ]
    inits = [
        ints("one1", [1]),
        ints("two1", [2]),
        ints("zero1", [0]),
        ints("zeros2", [0, 0]),
        ints("c1", [C]),
    ]
    inits.append(numpy_helper.from_array(np.ones((1, 1, C), np.float32), "row"))
    dims = _dims(graph_model(nodes, inits, shape=("N", "H", C)))
    assert dims["p"][0] == "N" and dims["p"][2] == C and dims["p"][1] != "H"  # H + H % 2: another length
    assert dims["e"] == [1, "H", C]


def test_a_reshape_of_no_batch_records_its_product_and_a_fold_divides_by_it() -> None:
    names = BatchNames({"N"})
    reshape = helper.make_node("Reshape", ["m", "s"], ["w"])
    names.reshaped(reshape, [1, "hq", "wq", 4, 4, 1], ["unk__9", 4, 4, 1])
    assert names.products == {}  # not checked by onnxruntime (read only by Reshapes): nothing proved
    assert names.sources == {"w": [1, "hq", "wq", 4, 4, 1]}  # what the next Reshape is fused from
    names.checked = {"w", "w2"}
    names.reshaped(reshape, [1, "hq", "wq", 4, 4, 1], ["unk__9", 4, 4, 1])
    assert names.products == {"unk__9": [1, "hq", "wq"]}
    names.reshaped(helper.make_node("Reshape", ["m0", "s"], ["m1"]), [1, "hq", 4, "wq", 4, 1], [1, "hq", "q"])
    names.reshaped(helper.make_node("Reshape", ["m1", "s"], ["w2"]), [1, "hq", "q"], ["unk__6", 16])
    assert names.products["unk__6"] == [1, "hq", "wq"]  # of the first input of the fused pair
    names.reshaped(reshape, [1, "hq", 4], ["unk__8", 4])  # one dim: a class of onnx_dim_classes's
    names.reshaped(reshape, ["N", "hq", "wq", 4], ["unk__7", 4])  # the batch's: a fold
    assert "unk__8" not in names.products and "unk__7" not in names.products and "unk__7" in names.folds
    assert names.factored(["unk__9"]) == [1, "hq", "wq"]
    assert names.factored(["unk__7"]) == names.spelled(["unk__7"]) and "N" in names.spelled(["unk__7"])
    assert names.spelled(["unk__9"]) == ["unk__9"]  # the batch's reading spells folds only
    assert divided_by((4, ("N", "hq", "wq")), (1, ("hq", "wq"))) == (4, ("N",))
    assert divided_by((4, ("N", "hq")), (1, ("hq", "wq"))) is None
    assert divided_by((4, ("N",)), (8, ())) is None and divided_by((4, ("N",)), (0, ())) is None


def _halves_and_back(axis: int) -> onnx.ModelProto:
    """x [N, H, 4] viewed as [N, H // 2, 2, 4], then back as [-1, H, 4] (H read off x), and a
    Softmax along `axis`: the back view's -1 is N only by the first view's H = 2 * (H // 2)."""
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "zero1"], "n"),
        node("Gather", ["s", "one1"], "h"),
        node("Div", ["h", "two1"], "half"),
        node("Concat", ["n", "half", "two1", "four1"], "to", axis=0),
        node("Reshape", ["x", "to"], "v"),
        node("Relu", ["v"], "r"),
        node("Concat", ["minus1", "h", "four1"], "back", axis=0),
        node("Reshape", ["r", "back"], "b"),
        node("Softmax", ["b"], "y", axis=axis),
    ]
    inits = [
        ints("zero1", [0]),
        ints("one1", [1]),
        ints("two1", [2]),
        ints("four1", [4]),
        ints("minus1", [-1]),
    ]
    return graph_model(nodes, inits, shape=("N", "H", 4))


def test_a_view_back_by_a_length_a_view_proved_batches_and_carries_the_batch() -> None:
    rowwise = _halves_and_back(-1)
    assert rows_independent(rowwise, (6, 4)) and row_mixing_outputs(rowwise) == {}  # refused at 7e46334
    along = _halves_and_back(0)  # the back view's -1 read as the batch's: a Softmax along it mixes
    assert not rows_independent(along, (6, 4))
    assert "works along the batch's axis, axis 0 of 'b'" in row_mixing_outputs(along)["y"]


def test_a_reshape_proves_its_products_equal_and_a_later_minus_one_reads_them() -> None:
    proved = relation(["N", "Hp", "Wp", 3], ["N", "hq", 4, "wq", 4, 3])
    assert proved == ((1, (("Hp", 1), ("Wp", 1))), (16, (("hq", 1), ("wq", 1))))
    assert relation(["N", 4, 3], ["N", 12]) is None  # nothing left
    assert relation(["N", None], ["N", 2]) is None
    whole, part = (48, (("N", 1), ("hq", 1), ("wq", 1))), (3, (("Hp", 1), ("Wp", 1)))
    assert related_quotient(whole, part, [proved]) == [1, "N"]
    assert related_quotient(whole, part, []) is None
    assert related_quotient(whole, (3, (("Hp", 2),)), [proved]) is None  # Hp * Hp: no side of it
    before, after = ["N", "hq", 4, "wq", 4, 3], ["unk__9", "Hp", "Wp", 3]
    assert places_batch(before, after, {"N"}, {}, [proved]) and not places_batch(before, after, {"N"}, {})
    assert solved_batch_axis(before, after, {"N"}, {}, [proved]) == 0
    assert (
        solved_batch_axis(["hq", "N", 4, "wq", 4, 3], after, {"N"}, {}, [proved]) == 0
    )  # (the reading moves it)
    assert solved_batch_axis(before, ["N", "Hp", "Wp", 3], {"N"}, {}, [proved]) is None  # named already


def test_a_reshapes_dims_are_joined_with_its_lengths_but_a_mod_that_may_be_0() -> None:
    entries: list = ["N", "~Div(H,4)", 4, "~Mod(H,4)", None]
    made: list = ["unk__1", "unk__2", 4, "unk__3", "unk__4"]
    assert joined_entries(entries, made) == [("unk__1", "N"), ("unk__2", "~Div(H,4)")]
    assert joined_entries(entries, made, allowzero=True)[-1] == ("unk__3", "~Mod(H,4)")  # a 0 is a 0
    assert joined_entries(entries, made[:-1]) == []  # another rank: nothing
