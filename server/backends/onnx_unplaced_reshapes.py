"""A Reshape of the batch's rows whose output is not known to carry the batch, read as mixing
(onnx_row_mixing.py asks last, after the readings that name a cause).

A reshape's reading (onnx_reshape_rows.py) proves where the batch goes from its input's and
output's dims. Where its shape's entries are not known at load (computed by ops the load does not
follow, or read from an If of two ranks a request chooses) the output's dims are not known either,
and until session 66 such a reshape was "no proof", loaded batched: x [N, 4, 3] viewed as [-1, k]
folds the rows for k = 3 and pairs them for k = 24, and Transpose(x) [4, N, 3] viewed by a shape
read from If(c, Flatten(x), x) moves values between rows (a tester, session 65). Now it is refused
batching, unless its shape holds the batch's size itself as its first entry and the batch leads its
data alone: then each output row is the input row of its place, whatever the other entries are.
A Reshape or a Flatten of a value whose axes only some branches of an If give the batch
(If(c, x, x.T) [N, 4, 3] or [4, N, 3], viewed by x's own shape) is refused too: it moves rows in the
branches that moved the batch (a tester, session 66).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from server.backends.graph_names import described
from server.backends.onnx_batch_size_value import BatchSizeValues, Dims
from server.backends.onnx_reshape_rows import places_batch

Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known


def unplaced_reshape(
    node: onnx.NodeProto, values: BatchSizeValues, dims: Callable[[str], Dims | None], constant: Constant
) -> str | None:
    """Why a Reshape that no other reading flagged may still move the batch's rows: its input carries
    the batch and its output is not known to (a fold the reshape's reading found is spelled out as
    the batch's, and counts as carrying it)."""
    if node.op_type not in ("Reshape", "Flatten") or not node.input or not node.output:
        return None
    names = values.names
    before, after = dims(node.input[0]), dims(node.output[0])
    if before is not None and (partly := [dim for dim in before if dim in names.partly]):
        return (
            f"{described(node)} reshapes '{node.input[0]}' {names.shown(before)}, whose axes "
            f"{names.shown(partly)} only some branches of an If give the batch: the load cannot tell "
            "where the batch's rows go"
        )
    if node.op_type != "Reshape" or len(node.input) < 2:
        return None
    if before is None or places_batch(before, after, names.roots, names.folds, names.relations):
        return None
    if _size_leads(node, values, names.spelled(before), constant):
        return None
    target = "a shape of no known rank" if after is None else str(names.shown(after))
    fixed = after is not None and all(isinstance(dim, int) for dim in after)  # (a pixel shuffle at batch 1)
    why = (
        "a shape of fixed lengths has no axis of the batch's size, so a batch's rows fill it otherwise"
        if fixed
        else "its shape's entries are not all known at load, so the load cannot tell where the batch's "
        "rows go"
    )
    shown = names.shown(names.spelled(before))
    return f"{described(node)} reshapes '{node.input[0]}' {shown} to {target}: {why}"


def _size_leads(node: onnx.NodeProto, values: BatchSizeValues, data: Dims, constant: Constant) -> bool:
    """Whether the reshape's first entry is the batch's size itself and its data has the batch's
    axis first and on no other (x.view(t.size(0), -1) where t is an If's value of two ranks)."""
    shape = node.input[1]
    if shape not in values.sized or not data:
        return False
    roots = values.names.roots
    led = isinstance(data[0], str) and data[0] in roots and not any(dim in roots for dim in data[1:])
    slots = values.slots(shape, values.partial.named(shape, constant(1)))
    return led and slots is not None and slots.get(0) is True
