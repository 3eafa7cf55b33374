"""Ragged batching (Triton's `allow_ragged_batch` and `batch_input`): gather for models whose ragged
inputs differ in shape between requests.

Pure. A ragged input is not concatenated along axis 0 like the others: every request's elements
are flattened and concatenated into one 1-D tensor (as Triton's onnxruntime backend does), and
the model learns where each request's elements lie from batch inputs the server computes, one
entry per request (not per row):
- BATCH_ELEMENT_COUNT: the element count of the source input in each request, shape [requests].
- BATCH_ACCUMULATED_ELEMENT_COUNT: their running sum, shape [requests].
- BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO: the same with a leading 0, shape [requests + 1].
Outputs keep a batch dimension and are scattered by rows, or by request when they hold one row
per request (batcher/scatter.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from batcher.scatter import offsets_of
from batcher.types import Array, Tensors

CountKind = Literal[
    "BATCH_ELEMENT_COUNT", "BATCH_ACCUMULATED_ELEMENT_COUNT", "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO"
]
COUNT_KINDS: tuple[CountKind, ...] = (
    "BATCH_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
)


@dataclass(frozen=True, slots=True)
class BatchInputSpec:
    """One config `batch_input`: `targets` (model inputs) get `kind` of `source`, as `dtype`."""

    kind: CountKind
    targets: tuple[str, ...]
    dtype: np.dtype
    source: str


@dataclass(frozen=True, slots=True)
class RaggedPlan:
    """A model's ragged inputs (by name) and the batch inputs computed for each batch."""

    inputs: frozenset[str]
    batch_inputs: tuple[BatchInputSpec, ...] = ()


def gather_ragged(
    requests: Sequence[Tensors], rows: Sequence[int], plan: RaggedPlan
) -> tuple[dict[str, Array], list[int]]:
    """The batch's model inputs and the row offsets for scatter.

    Ragged inputs: each request's elements flattened, then concatenated (1-D); other inputs:
    concatenated along axis 0 (the caller's formation grouped equal shapes). Then the batch inputs.
    Raises ValueError when requests disagree on input names, dtypes of a ragged input, or an
    array's first dimension is not its request's row count.
    """
    if not requests or len(requests) != len(rows):
        raise ValueError("gather needs one row count per request, and at least one request")
    names = list(requests[0])
    for i, (req, n) in enumerate(zip(requests, rows, strict=True)):
        if set(req) != set(names):
            raise ValueError(f"request {i} has inputs {sorted(req)}, expected {sorted(names)}")
        for name, arr in req.items():
            if arr.ndim == 0 or arr.shape[0] != n:
                raise ValueError(f"input {name!r} of request {i} has shape {arr.shape}, expected {n} rows")
    out: dict[str, Array] = {}
    for name in names:
        parts = [req[name] for req in requests]
        if name in plan.inputs:
            out[name] = np.concatenate([p.reshape(-1) for p in parts])
        else:
            out[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    for spec in plan.batch_inputs:
        counts = [int(req[spec.source].size) for req in requests]
        value = batch_input(spec.kind, counts).astype(spec.dtype)
        for target in spec.targets:
            out[target] = value
    return out, offsets_of(rows)


def batch_input(kind: CountKind, counts: Sequence[int]) -> Array:
    """One batch input's values from the source input's element count in each request."""
    array = np.asarray(counts, dtype=np.int64)
    if kind == "BATCH_ELEMENT_COUNT":
        return array
    accumulated = np.cumsum(array)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
        return accumulated
    return np.concatenate([np.zeros(1, np.int64), accumulated])
