"""Small constants computed at load by onnx's reference implementation
(server/backends/onnx_reference_fold.py): as the graph's opset defines the op, never an output
larger than the limit made, and "not known" for anything else. Session 66."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends import onnx_reference_fold as reference_fold
from server.backends.onnx_constant_fold import MAX_ELEMENTS, folded
from server.backends.onnx_reference_fold import REFERENCE_OPS, reference_folded
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import graph_model, rows_independent


def _i(*values: int) -> np.ndarray:
    return np.asarray(values, np.int64)


def test_an_op_is_run_as_its_graphs_opset_defines_it() -> None:
    """A ReduceSum's axes: an attribute before opset 13, an input from 13 on."""
    by_attribute = helper.make_node("ReduceSum", ["a"], ["b"], axes=[1], keepdims=0)
    by_input = helper.make_node("ReduceSum", ["a", "axes"], ["b"], keepdims=0)
    table = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert reference_folded(by_attribute, [table], 11, MAX_ELEMENTS).tolist() == [3, 12]  # type: ignore[union-attr]
    assert reference_folded(by_input, [table, _i(1)], 13, MAX_ELEMENTS).tolist() == [3, 12]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "want"),
    [
        ("Abs", [np.array([-3.0], np.float32)], {}, [3.0]),
        ("Div", [_i(-7), _i(2)], {}, [-3]),  # integer division truncates, as onnxruntime's
        ("Mod", [_i(-7), _i(2)], {"fmod": 1}, [-1]),
        ("Max", [_i(2, 9), _i(5)], {}, [5, 9]),
        ("Range", [np.array(0), np.array(4), np.array(2)], {}, [0, 2]),
        ("Tile", [_i(1, 2), _i(2)], {}, [1, 2, 1, 2]),
        ("ReduceProd", [_i(3, 4)], {"keepdims": 0}, 12),
        ("CumSum", [_i(1, 2, 3), np.array(0)], {}, [1, 3, 6]),  # its axis kept an integer in the check
        ("ReduceSum", [_i(2, 3), _i(0)], {"keepdims": 0}, 5),
    ],
)
def test_ops_of_the_list_are_computed(
    op: str, inputs: list[np.ndarray], attrs: dict[str, int], want: object
) -> None:
    made = folded(
        helper.make_node(op, [f"in{i}" for i in range(len(inputs))], ["out"], **attrs), inputs, opset=17
    )
    assert made is not None and made.tolist() == want


def test_an_optional_input_left_out_is_its_default() -> None:
    clip = helper.make_node("Clip", ["a", "", "top"], ["b"])
    assert reference_folded(clip, [_i(-7, 9), None, np.array(3, np.int64)], 17, MAX_ELEMENTS).tolist() == [
        -7,
        3,
    ]  # type: ignore[union-attr]
    assert (
        reference_folded(helper.make_node("Clip", ["a", "low"], ["b"]), [_i(1), None], 17, MAX_ELEMENTS)
        is None
    )


@pytest.mark.parametrize(
    ("op", "inputs"),
    [
        ("Range", [np.array(0), np.array(10**12), np.array(1)]),  # never made: 1e12 values
        ("Range", [np.array(0), np.array(5), np.array(0)]),  # no step
        ("Tile", [_i(1, 2), _i(10**9)]),
        ("Tile", [_i(1, 2), _i(-1)]),
        ("Expand", [_i(1, 2), _i(10**6, 2)]),
        ("Expand", [_i(1, 2), _i(3, 3)]),  # shapes that do not broadcast
        ("Abs", [np.zeros(MAX_ELEMENTS + 1, np.int64)]),  # an input over the limit
        (
            "Sum",
            [np.zeros((MAX_ELEMENTS, 1), np.int64), np.zeros(MAX_ELEMENTS, np.int64)],
        ),  # an output over it
    ],
)
def test_nothing_over_the_limit_is_made(op: str, inputs: list[np.ndarray]) -> None:
    node = helper.make_node(op, [f"in{i}" for i in range(len(inputs))], ["out"])
    assert reference_folded(node, inputs, 17, MAX_ELEMENTS) is None


def test_ops_not_listed_and_failures_are_not_known() -> None:
    for op in ("RandomUniformLike", "Sigmoid", "If", "Shape"):
        assert op not in REFERENCE_OPS
        assert reference_folded(helper.make_node(op, ["a"], ["b"]), [_i(1)], 17, MAX_ELEMENTS) is None
    matmul = helper.make_node("MatMul", ["a", "b"], ["c"])
    assert reference_folded(matmul, [_i(1, 2, 3), _i(1, 2)], 17, MAX_ELEMENTS) is None  # 3 by 2: refused
    assert reference_folded(helper.make_node("Abs", ["a"], ["b"]), [None], 17, MAX_ELEMENTS) is None
    assert reference_folded(helper.make_node("Abs", ["a"], ["b"]), [], 17, MAX_ELEMENTS) is None


def test_float_results_onnxruntime_may_round_otherwise_are_not_known() -> None:
    """A float Range adds its step each turn in onnxruntime (Range(0, 2.5, 0.1)'s last 2.3999999),
    the reference multiplies (2.4): an axis floored from it had been read as 1 where onnxruntime
    takes 0 (a tester, session 66). Sums, transcendentals and Pow of floats are not folded; of
    integers they are, and exact float ops (a Floor, a Max) still are."""
    r = helper.make_node("Range", ["s", "l", "d"], ["r"])
    floats = [np.array(0.0, np.float32), np.array(2.5, np.float32), np.array(0.1, np.float32)]
    assert reference_folded(r, floats, 17, MAX_ELEMENTS) is None
    assert reference_folded(r, [np.array(0), np.array(3), np.array(1)], 17, MAX_ELEMENTS).tolist() == [
        0,
        1,
        2,
    ]  # type: ignore[union-attr]
    for op in ("Exp", "Log", "Sqrt", "ReduceSum", "CumSum"):
        ins = ["a", "axis"] if op == "CumSum" else ["a"]
        given = [np.array([2.0], np.float32), np.array(0)][: len(ins)]
        assert reference_folded(helper.make_node(op, ins, ["b"]), given, 17, MAX_ELEMENTS) is None, op
    pow_ = helper.make_node("Pow", ["a", "b"], ["c"])
    assert reference_folded(pow_, [np.array([2.0], np.float32), np.array([2.0], np.float32)], 17, 64) is None
    assert reference_folded(pow_, [_i(2), _i(3)], 17, MAX_ELEMENTS).tolist() == [8]  # type: ignore[union-attr]
    floor = helper.make_node("Floor", ["a"], ["b"])
    assert reference_folded(floor, [np.array([2.7], np.float32)], 17, MAX_ELEMENTS).tolist() == [2.0]  # type: ignore[union-attr]


def test_the_served_reading_of_an_axis_from_a_float_range() -> None:
    """CumSum(x, axis=Cast(Floor(ReduceMax(Range(0, 2.5, 0.1)) * 10)) - 23): axis 0 in onnxruntime,
    along the batch: refused (the tester's graph)."""
    nodes = [
        helper.make_node("Range", ["s", "l", "d"], ["r"]),
        helper.make_node("ReduceMax", ["r"], ["top"], keepdims=0),
        helper.make_node("Mul", ["top", "ten"], ["m"]),
        helper.make_node("Floor", ["m"], ["f"]),
        helper.make_node("Cast", ["f"], ["t"], to=TensorProto.INT64),
        helper.make_node("Sub", ["t", "k"], ["axis"]),
        helper.make_node("CumSum", ["x", "axis"], ["y"]),
    ]
    inits = [
        *(
            numpy_helper.from_array(np.asarray(v, np.float32), n)
            for n, v in (("s", 0), ("l", 2.5), ("d", 0.1))
        ),
        numpy_helper.from_array(np.asarray(10.0, np.float32), "ten"),
        numpy_helper.from_array(np.asarray(23, np.int64), "k"),
    ]
    model = graph_model(nodes, inits, shape=("N", 4))
    assert not rows_independent(model, (4,))
    assert "the CumSum node making 'y' works along the batch's axis" in row_mixing_outputs(model).get("y", "")


def test_an_op_whose_inputs_were_attributes_in_an_older_opset_is_run_as_that_opset() -> None:
    """Clip's bounds: attributes until opset 11, inputs after (run as the latest opset, Clip-6's are
    not its bounds)."""
    clip = helper.make_node("Clip", ["a"], ["b"], min=0.0, max=3.0)
    given = [np.array([-1.0, 5.0], np.float32)]
    assert reference_folded(clip, given, 6, MAX_ELEMENTS).tolist() == [0.0, 3.0]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("op", "inputs", "want"),
    [
        ("Range", [np.array(0), np.array(MAX_ELEMENTS), np.array(1)], MAX_ELEMENTS),  # the most made
        ("Range", [np.array(100), np.array(110), np.array(1)], 10),  # from 100, not 0
        ("Range", [np.array(0), np.array(60), np.array(2)], 30),  # 30 steps of 2
        ("Range", [np.array(0), np.array(100), np.array(10)], 10),
        ("Tile", [np.zeros(8, np.int64), _i(8)], MAX_ELEMENTS),
        ("Tile", [_i(1, 2), _i(0)], 0),  # no copies: nothing made
        ("Expand", [_i(1), _i(MAX_ELEMENTS)], MAX_ELEMENTS),
        ("Abs", [np.zeros(MAX_ELEMENTS, np.int64)], MAX_ELEMENTS),
    ],
)
def test_sizes_up_to_the_limit_are_made(op: str, inputs: list[np.ndarray], want: int) -> None:
    node = helper.make_node(op, [f"in{i}" for i in range(len(inputs))], ["out"])
    made = reference_folded(node, inputs, 17, MAX_ELEMENTS)
    assert made is not None and made.size == want


@pytest.mark.parametrize(
    ("op", "inputs"),
    [
        ("Range", [np.array(0), np.array(10**12), np.array(1)]),
        ("Range", [np.array(0), np.array(MAX_ELEMENTS + 1), np.array(1)]),
        ("Tile", [_i(1, 2), _i(10**9)]),
        ("Tile", [np.zeros(8, np.int64), _i(9)]),
        ("Expand", [_i(1, 2), _i(10**6, 2)]),
        ("Expand", [_i(1), _i(MAX_ELEMENTS + 1)]),
        ("Expand", [np.zeros(8, np.int64), _i(9, 1)]),  # 72 values: the data's shape counts too
        ("Expand", [_i(1, 2), _i(3, 3)]),  # shapes that do not broadcast: not run either
    ],
)
def test_an_output_over_the_limit_is_never_run(
    op: str, inputs: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told from the inputs before anything runs: a Range to 1e12 is never made."""
    ran: list[str] = []
    monkeypatch.setattr(reference_fold, "_run", lambda node, given, opset: ran.append(node.op_type))
    node = helper.make_node(op, [f"in{i}" for i in range(len(inputs))], ["out"])
    assert reference_folded(node, inputs, 17, MAX_ELEMENTS) is None
    assert ran == []


@pytest.mark.parametrize(
    ("op", "inputs", "attrs"),
    [
        ("ArgMax", [np.array([1.0, np.nan, 0.5], np.float32)], {"select_last_index": 1}),  # 1 here, 0 there
        ("ReduceMax", [np.array([1.0, np.nan, 0.5], np.float32)], {}),  # NaN here, 1.0 there
        ("Clip", [np.array([2.0], np.float32), np.array(np.nan, np.float32), np.array(3.0, np.float32)], {}),
        ("Sign", [np.array([np.nan], np.float16)], {}),  # NaN here, 0 there
        ("Abs", [np.array([np.inf], np.float32)], {}),
        ("ReduceSum", [np.array([2**31 - 1, 2**31 - 1, 14], np.int32)], {}),  # wraps to 12 here
        ("ReduceProd", [np.array([2**40, 2**40], np.int64)], {}),
    ],
    ids=[
        "ArgMax NaN",
        "ReduceMax NaN",
        "Clip NaN",
        "Sign fp16 NaN",
        "inf",
        "int32 sum wraps",
        "int64 product wraps",
    ],
)
def test_what_onnxruntime_computes_otherwise_is_not_known(
    op: str, inputs: list[np.ndarray], attrs: dict[str, int]
) -> None:
    """A NaN or an infinity among float inputs, or an integer sum or product past its type (a tester,
    session 66: each folded to 12 where onnxruntime gave 24, and x.view(-1, k) loaded batched)."""
    node = helper.make_node(op, [f"in{i}" for i in range(len(inputs))], ["out"], **attrs)
    assert reference_folded(node, inputs, 17, MAX_ELEMENTS) is None
    finite = [np.nan_to_num(v, nan=0.0, posinf=1.0) if v.dtype.kind == "f" else v // 2**20 for v in inputs]
    assert reference_folded(node, finite, 17, MAX_ELEMENTS) is not None  # the same op, plain numbers


def test_a_float_attribute_not_finite_is_not_known() -> None:
    clip = helper.make_node("Clip", ["a"], ["b"], min=float("nan"), max=3.0)
    assert reference_folded(clip, [np.array([2.0], np.float32)], 6, MAX_ELEMENTS) is None


def test_a_cast_to_a_type_numpy_does_not_have_is_not_known() -> None:
    """float8's saturation: 3000 is 448 in onnxruntime, NaN as numpy's cast of ml_dtypes."""
    for to in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.BFLOAT16):
        cast = helper.make_node("Cast", ["a"], ["b"], to=to)
        assert folded(cast, [np.array([3000.0], np.float32)]) is None
    cast = helper.make_node("Cast", ["a"], ["b"], to=TensorProto.FLOAT16)
    assert folded(cast, [np.array([3000.0], np.float32)]).tolist() == [3000.0]  # type: ignore[union-attr]


def test_a_type_numpy_does_not_have_among_the_inputs_is_not_known() -> None:
    import ml_dtypes

    abs_ = helper.make_node("Abs", ["a"], ["b"])
    assert reference_folded(abs_, [np.array([-1.0], ml_dtypes.bfloat16)], 17, MAX_ELEMENTS) is None


def test_a_small_constants_reshape_copies_a_dim_for_a_zero() -> None:
    reshape = helper.make_node("Reshape", ["a", "s"], ["b"])
    table = np.arange(6, dtype=np.int64).reshape(3, 2)
    assert folded(reshape, [table, _i(0, -1)]).shape == (3, 2)  # type: ignore[union-attr]
    assert folded(reshape, [table, _i(-1, 0)]).shape == (3, 2)  # type: ignore[union-attr]
    table = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert folded(reshape, [table, _i(3, 0)]) is None  # the 0 copies 3: (3, 3) holds 9 values, not 6
    kept = helper.make_node("Reshape", ["a", "s"], ["b"], allowzero=1)
    assert folded(kept, [table, _i(0, -1)]) is None  # a zero-length axis: 6 values do not fit
    assert folded(reshape, [np.arange(3, dtype=np.int64), _i(3, 0)]) is None  # no dim 1 to copy
