"""A ConcatFromSequence along the batch's axis (onnx_row_mixing.py asks): a sequence has no shape,
so its elements are read where a SequenceConstruct or a SplitToSequence keeping its axis made it (a
split along the columns, concatenated back, keeps rows); else any source carrying the batch mixes
(no proof: a tester, session 55, had [x, x] concatenated along the batch batched, wrong, OK)."""

from __future__ import annotations

from collections.abc import Callable, Collection

import onnx

from server.backends.graph_names import described, int_attribute

Dims = list[int | str | None]


def sequence_concat(
    node: onnx.NodeProto,
    maker: onnx.NodeProto | None,
    made_from: Callable[[str], frozenset[str]],
    dims_of: Callable[[str], Dims | None],
    batch: Collection[str],
) -> str | None:
    """Why the ConcatFromSequence `node` (its sequence made by `maker`, where known) mixes rows."""
    axis = int_attribute(node, "axis", 0)
    elements: list[str] | None = None  # the tensors the sequence holds, where known
    if maker is not None and not int_attribute(node, "new_axis", 0):
        if maker.op_type == "SequenceConstruct":
            elements = list(maker.input)
        elif maker.op_type == "SplitToSequence" and int_attribute(maker, "keepdims", 1):
            elements = [maker.input[0]]
    if elements is None:
        elements, axis = list(made_from(node.input[0])), -1  # any axis of what it is made from
    for name in elements:
        dims = dims_of(name) or []
        if any(dim in batch for at, dim in enumerate(dims) if axis == -1 or at == axis % len(dims)):
            return f"{described(node)} concatenates a sequence made from the batch's rows along them"
    return None
