"""Scatters into, and element gathers from, a tensor that does not carry the batch, driven by ones
that do (onnx_row_mixing.py asks).

A ScatterElements or ScatterND whose indices or updates carry the batch while its data does not
writes every row's updates into one tensor: zeros(8).scatter_add_(0, idx, x), a bincount over the
batch, gave each request every batch mate's counts (a tester, session 58). A GatherElements whose
indices carry the batch on an axis it does not gather along, its data not the batch's there,
answers row i of the batch with row i of the data: a request's answer is its place in the batch
(so a GatherND's `batch_dims`). Each is refused; a lookup along the gathered axis itself (an
index per row into a table) keeps rows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import onnx

from server.backends.graph_names import described, int_attribute

Dims = list[int | str | None]
_SCATTERS = frozenset({"ScatterElements", "Scatter", "ScatterND", "TensorScatter"})


def _carries(dims: Dims | None, batch: Collection[str]) -> bool:
    return dims is not None and any(dim in batch for dim in dims)


def table_mixing(
    node: onnx.NodeProto, dims_of: Callable[[str], Dims | None], batch: Collection[str]
) -> str | None:
    """Why `node` makes a request's answer depend on its batch mates or its place in the batch
    through a tensor without the batch (None: it does not, or it is not such an op)."""
    op = node.op_type
    if (op not in _SCATTERS and op not in ("GatherElements", "GatherND")) or len(node.input) < 2:
        return None
    data = dims_of(node.input[0])
    if op in _SCATTERS:
        if _carries(data, batch):
            return None  # the batch's own rows written: onnx_mixing_ops.py reads the axis
        driving = [name for name in node.input[1:] if name and _carries(dims_of(name), batch)]
        if not driving:
            return None
        return (
            f"{described(node)} writes every row of the batch ('{driving[0]}') into '{node.input[0]}', "
            "which does not carry the batch"
        )
    indices = dims_of(node.input[1])
    if indices is None:
        return None
    data = data or []  # no shape known: a table of its own (a batched one is refused as unplaced)
    if op == "GatherElements":
        along = int_attribute(node, "axis", 0) % max(len(indices), 1)
        axes = [a for a in range(len(indices)) if a != along]
    else:  # GatherND's leading batch_dims pair the indices' rows with the data's
        axes = list(range(min(int_attribute(node, "batch_dims", 0), len(indices))))
    for axis in axes:
        if indices[axis] in batch and (axis >= len(data) or data[axis] not in batch):
            return (
                f"{described(node)} answers the batch's row i of '{node.input[1]}' with row i of "
                f"'{node.input[0]}' (axis {axis}), which does not carry the batch: each request reads "
                "its place in the batch"
            )
    return None
