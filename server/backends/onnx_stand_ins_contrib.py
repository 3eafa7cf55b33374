"""Stand-ins (onnx_stand_ins.py) for com.microsoft's transformer ops, which onnxruntime's transformer
optimizer writes (Attention, QAttention, MultiHeadAttention, EmbedLayerNormalization), and for its
copies of standard ops (ExpandDims, Pad, Trilu, GridSample, GatherND, Inverse, CDist).

The transformer ops read their input as [batch, sequence, hidden]: each batch row's output is made
from its own row's every position, so a stand-in mixes along the sequence (axis 1) and the hidden
axis, never axis 0: a graph whose batch is their axis 0 batches, and one that moved the batch onto
another axis before them is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from server.backends.graph_names import attribute, int_attribute
from server.backends.onnx_stand_in_maker import Maker, attributes

SLICE_INPUTS = 10  # Slice's starts, ends and axes inputs from this opset on
EXPAND_OPSET = 8


def _attention(maker: Maker) -> bool:
    """Attention (input, weights [hidden, q + k + v], bias, mask, ...) and QAttention (input,
    weight, bias, scales, mask, zero points, ...): [batch, sequence, v] from the input projected by
    the weights' value columns, mixed along the sequence (its mask and bias: read for their rows
    only). Its `present` state: not read."""
    x, w = maker.inputs(0, 1)
    dims = maker.known.dims.get(w)
    if maker.outputs_used() > 1 or dims is None or len(dims) != 2 or not isinstance(dims[1], int):
        return False
    sizes = attribute(maker.node, "qkv_hidden_sizes", None)
    width = sizes[2] if isinstance(sizes, list) and len(sizes) == 3 else dims[1] // 3
    quantized = maker.node.op_type == "QAttention"
    if quantized:
        x, w = maker.floats([x, w])
    mask, past, bias = (5, 8, None) if quantized else (3, 4, 5)
    maker.rows_at(mask, 0, by_length=True)  # [B], [B, S], [B, S, T]: by rows; [2B] (ends, starts): not
    maker.rows_at(past, 1)  # [2, B, heads, P, head]
    if bias is not None:
        maker.rows_at(bias, 0)
    projected = maker.add("MatMul", [x, w])
    if maker.opset >= SLICE_INPUTS:
        value = maker.add("Slice", [projected, maker.ints([0]), maker.ints([width]), maker.ints([-1])])
    else:
        value = maker.add("Slice", [projected], starts=[0], ends=[width], axes=[-1])
    maker.spread(value, [1], maker.output(0))
    return True


def _multi_head(maker: Maker) -> bool:
    """MultiHeadAttention with its key and value given: [batch, sequence, v] (v: the value's last
    dim, or heads x head size where it is [B, N, L, H]), each position made from its own query row
    and the whole of its batch row's key and value. Packed forms, state outputs: not read."""
    query, key, value = maker.inputs(0, 1, 2)
    if not (key and value) or maker.outputs_used() > 1:
        return False
    maker.rows_at(4, 0, by_length=True)  # its key padding mask: [B] or [B, L] (a 1-D one by its length)
    for index in (5, 6, 7):  # attention bias, past key and value: by rows
        maker.rows_at(index, 0)
    if maker.known.rank(value) == 4:  # [B, N, L, H]: [B, N*H]
        widths = maker.add("Flatten", [maker.reduce("ReduceMax", value, [2], keepdims=0)], axis=1)
    else:  # [B, L, V]: [B, V]
        widths = maker.reduce("ReduceMax", value, [1], keepdims=0)
    keys = maker.reduce("ReduceMax", maker.add("Flatten", [key], axis=1), [1])  # [B, 1]
    each = maker.where(widths, keys)  # [B, V], from the whole of its key and value rows
    positions = maker.reduce("ReduceMax", query, [-1])  # [B, S, 1]
    maker.where(positions, maker.unsqueeze(each, 1), maker.output(0))
    return True


def _embedding(maker: Maker) -> bool:
    """EmbedLayerNormalization (ids, segment ids, word, position and segment tables, gamma, beta,
    mask, position ids): each id's word (plus segment) embedding normalised along the hidden axis;
    outputs: that, the mask's index per batch row [batch], the sum before normalising."""
    ids, segments, words, _, segment_table, gamma, beta, mask = maker.inputs(*range(8))
    maker.rows_at(7, 0)  # its mask [B, S]
    maker.rows_at(8, 0)  # its position ids [B, S] (or [1, S])
    summed = maker.add("Gather", [words, ids], axis=0)
    if segments and segment_table:
        summed = maker.add("Add", [summed, maker.add("Gather", [segment_table, segments], axis=0)])
    maker.scaled(maker.spread(summed, [-1]), gamma, beta)
    if maker.output(1):
        maker.reduce("ReduceMax", mask or ids, [1], maker.output(1), keepdims=0)
    if maker.output(2):
        maker.add("Identity", [summed], maker.output(2))
    return True


def _expand_dims(maker: Maker) -> bool:
    """ExpandDims (X, axis): an Unsqueeze at that axis, where the axis is a constant."""
    axis = maker.known.values.get(maker.inputs(1)[0])
    if axis is None or axis.size != 1:
        return False
    maker.unsqueeze(maker.node.input[0], int(axis.reshape(-1)[0]), maker.output(0))
    return maker.outputs_used() == 1


def _pad(maker: Maker) -> bool:
    """com.microsoft's Pad (data, pads [2r] or [1, 2r], value): ONNX's Pad (opset 11 on)."""
    data, pads, value = maker.inputs(0, 1, 2)
    if maker.opset < 11:
        return False
    listed = maker.known.values.get(pads)
    if listed is not None and listed.ndim == 2:
        pads = maker.ints([int(v) for v in listed.reshape(-1)])
    inputs = [data, pads] + ([value] if value else [])
    maker.add("Pad", inputs, maker.output(0), **attributes(maker.node, ("mode",)))
    return maker.outputs_used() == 1


def _standard(op: str, since: int, kept: tuple[str, ...]) -> Callable[[Maker], bool]:
    """A copy of ONNX's `op` (from opset `since`): that op, its inputs and attributes `kept`."""

    def build(maker: Maker) -> bool:
        if maker.opset < since:
            return False
        maker.add(op, list(maker.node.input), maker.output(0), **attributes(maker.node, kept))
        return maker.outputs_used() == 1

    return build


def _inverse(maker: Maker) -> bool:
    """Inverse: each matrix of its last two axes from all its values (a product of it with itself)."""
    x = maker.node.input[0]
    maker.add("MatMul", [x, x], maker.output(0))
    return maker.outputs_used() == 1


def _cdist(maker: Maker) -> bool:
    """CDist (A [M, K], B [N, K]): [M, N], each value from a row of A and a row of B."""
    a, b = maker.inputs(0, 1)
    maker.add("MatMul", [a, maker.transposed(b, 2)], maker.output(0))
    return maker.outputs_used() == 1


def _quantized_lstm(maker: Maker) -> bool:
    """DynamicQuantizeLSTM: an LSTM (its weights int8, stored transposed; its activations' scale is
    the whole batch's, left per batch with row_quantization.py's warning), where it says its
    hidden size (else onnx's inference would read it from the transposed weights)."""
    if int_attribute(maker.node, "hidden_size", 0) < 1:
        return False
    x, w, r, *rest = maker.inputs(*range(8))
    kept = (
        "activation_alpha",
        "activation_beta",
        "activations",
        "clip",
        "direction",
        "hidden_size",
        "input_forget",
    )
    attributes = [a for a in maker.node.attribute if a.name in kept]
    maker.add_outputs("LSTM", [x, *maker.floats([w, r]), *rest], attributes)
    return True


def _samples(maker: Maker) -> bool:
    """ai.onnx.ml's Normalizer, Scaler and Imputer ([N, F], element type kept, Normalizer's and
    Scaler's float), LinearRegressor ([N, targets]), SVMRegressor ([N, 1]) and FeatureVectorizer
    ([N, sum of inputdimensions]): each row from its own row's values, along its last axis (a 1-D
    input is one sample, [1, F]: a batch's rows mix)."""
    op = maker.node.op_type
    sources = list(maker.node.input) if op == "Imputer" else maker.floats(maker.node.input)
    sources = [
        maker.unsqueeze(x, 0) if maker.known.rank(name) == 1 else x
        for x, name in zip(sources, maker.node.input, strict=True)
    ]
    rows = [maker.reduce("ReduceMax", name, [-1]) for name in sources]
    if op in ("Normalizer", "Scaler", "Imputer"):
        maker.where(sources[0], rows[0], maker.output(0))
        return maker.outputs_used() == 1
    width = {"LinearRegressor": int_attribute(maker.node, "targets", 1), "SVMRegressor": 1}.get(op)
    if width is None:
        sizes = attribute(maker.node, "inputdimensions", [])
        width = sum(sizes) if isinstance(sizes, list) else 0
    if width < 1 or maker.opset < EXPAND_OPSET:
        return False
    row = rows[0]
    for other in rows[1:]:
        row = maker.where(row, other)
    # [N, 1] spread to [N, width] by broadcasting: no constant as wide as a model says (a tester, s56,
    # had a 161-byte model with width 1e8 take 2 GB of the server's memory to load).
    maker.add("Expand", [row, maker.ints([width])], maker.output(0))
    return maker.outputs_used() == 1


ML_BUILDERS: dict[str, Callable[[Maker], bool]] = {
    op: _samples
    for op in ("Normalizer", "Scaler", "Imputer", "LinearRegressor", "SVMRegressor", "FeatureVectorizer")
}
CONTRIB_BUILDERS: dict[str, Callable[[Maker], bool]] = {
    "Attention": _attention,
    "QAttention": _attention,
    "MultiHeadAttention": _multi_head,
    "EmbedLayerNormalization": _embedding,
    "ExpandDims": _expand_dims,
    "Pad": _pad,
    "Trilu": _standard("Trilu", 14, ("upper",)),
    "GridSample": _standard("GridSample", 16, ("align_corners", "mode", "padding_mode")),
    "GatherND": _standard("GatherND", 11, ()),
    "Inverse": _inverse,
    "DynamicQuantizeLSTM": _quantized_lstm,
    "CDist": _cdist,
}
