"""transformers' padding mask per row, as torch's legacy exporter writes its index
(masking_utils: mask[batch_idx, kv_idx] of arange(N) and arange(L)), in HF ConditionalDETR's encoder
and decoder: a Gather from the mask flattened to [N*L, 1] at arange(N)[:, None, None, None] * L +
arange(L)[None, None, None, :]. Each row reads its own L values (onnx_row_positions.py: a Range
from 0 by 1 to a dim's size bounds an offset by that size). The decoder reads N from zeros_like of
the queries tiled to the batch, a name onnx makes up anew for the batch's own size: its arange is
each row's place as the input's is. Offsets that reach past a row, or bounded by another input's
steps, or by the batch's size, still mix."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs


def _batch_size(queries: bool) -> list[onnx.NodeProto]:
    """n: the batch's size, read from x, or from zeros_like(table.unsqueeze(0).repeat(N, 1, 1))."""
    read = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "zero"], ["n" if not queries else "n0"], axis=0),
    ]
    if not queries:
        return read
    return [
        *read,
        helper.make_node("Unsqueeze", ["n0", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "ones2"], ["reps"], axis=0),
        helper.make_node("Unsqueeze", ["table", "ax0"], ["row"]),
        helper.make_node("Tile", ["row", "reps"], ["q"]),
        helper.make_node("Shape", ["q"], ["qs"]),
        helper.make_node("ConstantOfShape", ["qs"], ["z"], value=helper.make_tensor("v", 1, [1], [0.0])),
        helper.make_node("Shape", ["z"], ["zs"]),
        helper.make_node("Gather", ["zs", "zero"], ["n"], axis=0),
    ]


def _masked(
    queries: bool = False,
    start: int = 0,
    kv_of: str = "m",
    stride_of: str = "m",
    kv_limit: str = "",
    transposed: bool = False,
) -> onnx.ModelProto:
    """y = x.sum(1) * mask[arange(N), arange(L)] (the mask gathered per row), [N, 1, 1, L]."""
    nodes = [
        *_batch_size(queries),
        helper.make_node("Cast", ["n"], ["n64"], to=TensorProto.INT64),
        helper.make_node("Range", ["zero", "n64", "one"], ["rows"]),
        helper.make_node("Unsqueeze", ["rows", "ax123"], ["rows4"]),
        helper.make_node("Shape", [stride_of], ["ms"]),
        helper.make_node("Gather", ["ms", "at1"], ["stride"], axis=0),
        helper.make_node("Mul", ["rows4", "stride"], ["starts"]),
        helper.make_node("Shape", [kv_of], ["ks"]),
        helper.make_node("Gather", ["ks", "one"], ["steps"], axis=0),
        helper.make_node("Cast", ["steps"], ["steps64"], to=TensorProto.INT64),
        helper.make_node("Range", ["first", kv_limit or "steps64", "one"], ["kv"]),
        helper.make_node("Unsqueeze", ["kv", "ax012"], ["kv4"]),
        helper.make_node("Add", ["kv4", "starts"], ["at"]),
        helper.make_node("Transpose", ["m"], ["mt"], perm=[1, 0] if transposed else [0, 1]),
        helper.make_node("Flatten", ["mt"], ["flat"], axis=2),
        helper.make_node("Gather", ["flat", "at"], ["picked"], axis=0),
        helper.make_node("Shape", ["at"], ["at_shape"]),
        helper.make_node("Reshape", ["picked", "at_shape"], ["mask4"]),
        helper.make_node("ReduceSum", ["x", "at1"], ["total"], keepdims=1),  # each row's own sum
        helper.make_node("Unsqueeze", ["total", "ax12"], ["x4"]),
        helper.make_node("Mul", ["x4", "mask4"], ["y"]),
    ]
    values = {
        "zero": 0,
        "one": 1,
        "first": start,
        "at1": [1],
        "ax0": [0],
        "ones2": [1, 1],
        "ax12": [1, 2],
        "ax123": [1, 2, 3],
        "ax012": [0, 1, 2],
    }
    inits = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in values.items()]
    inits.append(numpy_helper.from_array(np.ones((5, 4), np.float32), "table"))
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"]),
        helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", "L"]),
        helper.make_tensor_value_info("k", TensorProto.FLOAT, ["N", "L"]),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _rows_mix(model: onnx.ModelProto) -> bool:
    """onnxruntime's truth: a batch of 2 against each row alone."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal((2, 6)).astype(np.float32) for name in "xmk"}
    batched = session.run(None, feeds)[0]
    for row in range(2):
        alone = session.run(None, {name: value[row : row + 1] for name, value in feeds.items()})[0]
        if batched[row : row + 1].shape != alone.shape or not np.allclose(batched[row : row + 1], alone):
            return True
    return False


@pytest.mark.parametrize("queries", [False, True])
def test_the_padding_mask_read_per_row_at_arange_n_times_l_plus_arange_l_is_batched(queries: bool) -> None:
    model = _masked(queries=queries)
    assert not _rows_mix(model)
    assert row_mixing_outputs(model) == {}


def test_an_offset_from_minus_one_reads_the_row_before_and_stays_refused() -> None:
    model = _masked(start=-1)  # arange(-1, L): row i's first value is row i - 1's last
    assert _rows_mix(model)
    assert "y" in row_mixing_outputs(model)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kv_of": "k"},  # L from another input of the same declared name: sent wider, it reads the next row
        {"kv_limit": "n64"},  # arange(N) as the offset: a width set by the batch's size
    ],
)
def test_offsets_bounded_by_another_input_or_the_batchs_size_stay_refused(kwargs: dict[str, str]) -> None:
    assert "y" in row_mixing_outputs(_masked(**kwargs))  # type: ignore[arg-type]


def test_a_stride_by_the_batchs_size_under_another_name_stays_refused() -> None:
    # rows * N + arange(L) over [N*L] values: row i reads from i * N, not its own L values.
    model = _masked(queries=True, stride_of="z", kv_of="m")
    model.graph.node[[n.output[0] for n in model.graph.node].index("stride")].input[1] = "zero"
    assert _rows_mix(model)
    assert "y" in row_mixing_outputs(model)


def test_the_mask_transposed_before_its_flatten_stays_refused() -> None:
    # [L, N] flattened: row i * L + kv reads the column-major mask, other rows' values.
    model = _masked(transposed=True)
    assert _rows_mix(model)
    assert "y" in row_mixing_outputs(model)
