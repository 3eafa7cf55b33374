"""Gather requests into one batch along axis 0, and scatter a batch's outputs back by row offsets.

Pure. Offsets have one entry more than requests: request i owns rows offsets[i]:offsets[i + 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from batcher.errors import OutputNotSplit
from batcher.types import Array, Tensors


def offsets_of(rows: Sequence[int]) -> list[int]:
    out = [0]
    for r in rows:
        out.append(out[-1] + r)
    return out


def gather(requests: Sequence[Tensors], rows: Sequence[int]) -> tuple[dict[str, Array], list[int]]:
    """Concatenate each input of `requests` (whose batch sizes are `rows`) along axis 0.

    One np.concatenate per input; a single request passes its arrays through without a copy.
    Raises ValueError when requests disagree on input names or an array's first dimension is not
    its request's row count (callers validate first: this guards the offsets scatter relies on).
    """
    if not requests or len(requests) != len(rows):
        raise ValueError("gather needs one row count per request, and at least one request")
    names = set(requests[0])
    for i, (req, n) in enumerate(zip(requests, rows, strict=True)):
        if set(req) != names:
            raise ValueError(f"request {i} has inputs {sorted(req)}, expected {sorted(names)}")
        for name, arr in req.items():
            if arr.ndim == 0 or arr.shape[0] != n:
                raise ValueError(f"input {name!r} of request {i} has shape {arr.shape}, expected {n} rows")
    offsets = offsets_of(rows)
    if len(requests) == 1:
        return dict(requests[0]), offsets
    # Keys in the first request's order: a backend may care (most do not).
    return {name: np.concatenate([req[name] for req in requests], axis=0) for name in requests[0]}, offsets


Part = dict[str, Array] | OutputNotSplit  # a request's outputs, or why it has none


def scatter(outputs: Tensors, offsets: Sequence[int]) -> list[Part]:
    """Split each output by `offsets` into one mapping per request; slices are views, no copies.

    An output with fewer rows than the batch fails only the requests whose rows lie past its end
    (OutputNotSplit, in Triton's words: its output responder does the same); the requests before
    them are answered. A ragged model that answers one row per request, sent a request of several
    rows, gives such outputs: failing the whole batch had failed requests that were fine.
    Raises ValueError when an output has no batch dimension or more rows than the batch: the
    backend broke the batch contract, and no request's rows can be told apart.
    """
    total = offsets[-1]
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] > total:
            raise ValueError(
                f"backend returned output {name!r} with shape {arr.shape} for a batch of {total} rows"
            )
    parts: list[Part] = []
    for start, stop in pairwise(offsets):
        short = next((name for name, arr in outputs.items() if arr.shape[0] < stop), None)
        if short is None:
            parts.append({name: arr[start:stop] for name, arr in outputs.items()})
        else:
            parts.append(OutputNotSplit(not_split(short, stop, outputs[short].shape[0])))
    return parts


def not_split(output: str, rows: int, got: int) -> str:
    """Triton's words (its output responder) for an output of `got` rows that a request whose
    rows end at `rows` cannot be given its rows of."""
    return (
        f"failed to split the output tensor '{output}' in responses: expected batch size of at "
        f"least {rows} in model output, got {got}"
    )
