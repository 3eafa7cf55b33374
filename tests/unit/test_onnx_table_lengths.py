"""A tester, session 59 (at ec0a446): a table t [L, 1] (a Loop stacking its turn number, or
Range(0, L)[:, None]) broadcast against x's batch axis, then (x + t)[:N], loaded batched, wrong,
OK, where L was a length of no batch the lineage had not counted as one: Shape(x)[1] of x declared
[N, ?], Size(x[0]), Shape(x[:, :T - 1])[1], Shape(TopK(x, T).values)[1]. A batch of four gave
request i the table's row i, alone its row 0. onnx_told_dims.py; the served cases are in
scripts/unread_cases.py (tests/integration/test_size_count_sweep.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_told_dims import TOLD_SYMBOL, dims_made_apart, told_unnamed

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
N = helper.make_node
UNTOLD = "against a length the load cannot tell of axis 0 of 't'"
# A length read off x's fixed 4 (Size(x[0]), Shape(TopK(x, 4))[1]) is computed at load since session 67
# (onnx_fixed_lengths.py): a Range of it is 4 long, told as such.
FIXED = "against a fixed length 4 of axis 0 of 't'"
INITS = [
    numpy_helper.from_array(np.array(value, np.int64), name)
    for name, value in (("i0", 0), ("i1", 1), ("r0", 0), ("r1", 1), ("z0", [0]), ("z1", [1]))
]


def _model(
    nodes: list[onnx.NodeProto], x: list[int | str | None], more: tuple[onnx.TensorProto, ...] = ()
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, x)],
        [helper.make_tensor_value_info("y", F, x)],
        [*INITS, *more],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _turns() -> onnx.GraphProto:
    """A Loop's body stacking its turn number as a [1] float: t[i] = i."""
    given = [helper.make_tensor_value_info("turn", I64, []), helper.make_tensor_value_info("c_in", BOOL, [])]
    made = [helper.make_tensor_value_info("c_out", BOOL, []), helper.make_tensor_value_info("row", F, [1])]
    nodes = [
        N("Identity", ["c_in"], ["c_out"]),
        N("Cast", ["turn"], ["tf"], to=F),
        N("Unsqueeze", ["tf", "z0"], ["row"]),
    ]
    return helper.make_graph(nodes, "turns", given, made)


TABLES = {  # t [L, 1] from a scalar int64 'L'
    "loop": [N("Loop", ["L", ""], ["t"], body=_turns())],
    "range": [
        N("Range", ["r0", "L", "r1"], ["r"]),
        N("Cast", ["r"], ["rf"], to=F),
        N("Unsqueeze", ["rf", "z1"], ["t"]),
    ],
}
LENGTHS = {  # (x's dims, L: 4 for x of 4 columns, 3 for the cut)
    "a_unnamed_axis": (["N", None], [N("Shape", ["x"], ["s"]), N("Gather", ["s", "i1"], ["L"])]),
    "b_size_of_row": (["N", 4], [N("Gather", ["x", "i0"], ["x0"]), N("Size", ["x0"], ["L"])]),
    "b_size_of_named_row": (["N", "T"], [N("Gather", ["x", "i0"], ["x0"]), N("Size", ["x0"], ["L"])]),
    "c_cut_by_computed_bound": (
        ["N", "T"],
        [
            N("Shape", ["x"], ["s1"], start=1, end=2),
            N("Sub", ["s1", "z1"], ["k"]),
            N("Slice", ["x", "z0", "k", "z1"], ["cut"]),
            N("Shape", ["cut"], ["sc"]),
            N("Gather", ["sc", "i1"], ["L"]),
        ],
    ),
    "d_top_k_values": (
        ["N", 4],
        [
            N("Shape", ["x"], ["k"], start=1, end=2),
            N("TopK", ["x", "k"], ["tv", "ti"]),
            N("Shape", ["tv"], ["st"]),
            N("Gather", ["st", "i1"], ["L"]),
        ],
    ),
}
FIRST_ROWS = [N("Shape", ["x"], ["n1"], start=0, end=1), N("Slice", ["z", "z0", "n1", "z0"], ["y"])]


def _spread(length: str, table: str, tail: list[onnx.NodeProto]) -> onnx.ModelProto:
    x, made = LENGTHS[length]
    return _model([*made, *TABLES[table], N("Add", ["x", "t"], ["z"]), *tail], x)


def _rows_differ(model: onnx.ModelProto, columns: int) -> bool:
    """Whether onnxruntime gives some request batched with three others another row than alone."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    requests = [np.full((1, columns), 10.0 * (k + 1), np.float32) for k in range(4)]
    alone = [session.run(None, {"x": r})[0] for r in requests]
    batched = session.run(None, {"x": np.concatenate(requests)})[0]
    return any(not np.allclose(a, batched[i : i + 1]) for i, a in enumerate(alone))


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_a_table_as_long_as_a_length_of_no_batch_broadcast_against_the_batch_is_refused(
    length: str, table: str
) -> None:
    served = _spread(length, table, FIRST_ROWS)  # (x + t)[:N]: {} at ec0a446
    assert "y" in row_mixing_outputs(served)
    found = row_mixing_outputs(_spread(length, table, [N("Identity", ["z"], ["y"])]))["y"]
    fixed = LENGTHS[length][0][1] == 4 and table == "range"
    assert (FIXED if fixed else UNTOLD) in found


def test_the_served_forms_do_give_a_request_another_row_batched() -> None:
    # The refusals above are of models onnxruntime answers wrong batched (c's cut is 3 rows: a
    # batch of four fails there, so it is left to the refusal).
    for length in ("a_unnamed_axis", "b_size_of_row", "d_top_k_values"):
        assert _rows_differ(_spread(length, "loop", FIRST_ROWS), 4), length


def test_the_table_across_each_row_still_batches() -> None:
    # t [1, L] (transposed): added across each row's values, rows kept.
    for length in ("a_unnamed_axis", "b_size_of_row", "d_top_k_values"):
        x, made = LENGTHS[length]
        for table in sorted(TABLES):
            across = [N("Transpose", ["t"], ["tt"], perm=[1, 0]), N("Add", ["x", "tt"], ["y"])]
            model = _model([*made, *TABLES[table], *across], x)
            assert row_mixing_outputs(model) == {}, (length, table)
            assert not _rows_differ(model, 4), (length, table)


def test_a_position_table_cut_to_an_unnamed_length_still_batches() -> None:
    # pos[:T] with T = Shape(x)[1], x [N, ?]: added along each row.
    pos = numpy_helper.from_array(np.arange(16, dtype=np.float32), "pos")
    nodes = [
        N("Shape", ["x"], ["s1"], start=1, end=2),
        N("Slice", ["pos", "z0", "s1", "z0"], ["cut"]),
        N("Add", ["x", "cut"], ["z"]),
        *FIRST_ROWS,
    ]
    model = _model(nodes, ["N", None], (pos,))
    assert row_mixing_outputs(model) == {}
    assert not _rows_differ(model, 4)


def test_a_cut_by_the_batchs_size_makes_no_dim_apart() -> None:
    # x[:, :N]: its axis 1 is made from the batch's size, so a table that long is not apart.
    cut = N("Slice", ["x", "z0", "n", "z1"], ["cut"])
    shapes = {"x": ["N", 8], "cut": ["N", "unk__0"]}.get
    assert dims_made_apart(cut, shapes, lambda dim: False, lambda name: name != "n") == set()
    assert dims_made_apart(cut, shapes, lambda dim: False, lambda name: True) == {"unk__0"}
    named = {"x": ["N", "M"], "cut": ["N", "unk__0"]}.get  # of a length a graph input names
    assert dims_made_apart(cut, named, {"M"}.__contains__, lambda name: True) == {"unk__0"}
    assert dims_made_apart(cut, named, lambda dim: False, lambda name: True) == set()


def test_told_unnamed_names_a_clients_unnamed_dims_past_the_first() -> None:
    ints = [helper.make_tensor_value_info("w", F, [None, None])]
    graph = helper.make_graph(
        [],
        "g",
        [
            helper.make_tensor_value_info("x", F, [None, None, "T", 3]),
            helper.make_tensor_value_info("state", F, [1, None]),
            *ints,
        ],
        [],
        [numpy_helper.from_array(np.zeros((2, 2), np.float32), "w")],
    )
    probe = told_unnamed(helper.make_model(graph), server_fed={"state"})
    shown = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else d.dim_param or None
            for d in v.type.tensor_type.shape.dim
        ]
        for v in probe.graph.input
    }
    assert shown == {
        "x": [None, TOLD_SYMBOL.format(0, 1), "T", 3],
        "state": [1, None],  # the server feeds it: left as it is
        "w": [None, None],  # an initializer
    }
