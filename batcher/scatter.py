"""Gather requests into one batch along axis 0, and scatter a batch's outputs back by row offsets.

Pure. Offsets have one entry more than requests: request i owns rows offsets[i]:offsets[i + 1].
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from itertools import pairwise

import numpy as np

from batcher.errors import OutputNotSplit, OutputRowsWrong
from batcher.types import Array, Tensors


def offsets_of(rows: Sequence[int]) -> list[int]:
    out = [0]
    for r in rows:
        out.append(out[-1] + r)
    return out


class Gathered(Mapping[str, Array]):
    """A batch's inputs, each concatenated from its requests' arrays when first read (in the
    instance's thread, not the event loop's), or copied by a backend straight into memory of its
    own (`into`): a CUDA instance gathers them into its pinned staging buffer, the one host copy
    before the device's (server/backends/pinned.py), where a gathered array had been copied again."""

    def __init__(self, requests: Sequence[Tensors], rows: int) -> None:
        self._requests = list(requests)
        self.rows = rows  # every input's first dimension
        self._joined: dict[str, Array] = {}

    def spec(self, name: str) -> tuple[tuple[int, ...], np.dtype[np.generic]]:
        """The input's batch shape and dtype, without gathering it."""
        first = self._requests[0][name]
        return (self.rows, *first.shape[1:]), first.dtype

    def into(self, name: str, target: Array) -> None:
        """Gather the input into `target` (its batch shape, any memory): one copy of each part."""
        np.concatenate([req[name] for req in self._requests], axis=0, out=target)

    def __getitem__(self, name: str) -> Array:
        joined = self._joined.get(name)
        if joined is None:
            joined = self._joined[name] = np.concatenate([req[name] for req in self._requests], axis=0)
        return joined

    def __iter__(self) -> Iterator[str]:
        return iter(self._requests[0])  # the first request's order: a backend may care (most do not)

    def __len__(self) -> int:
        return len(self._requests[0])


def gather(requests: Sequence[Tensors], rows: Sequence[int]) -> tuple[Tensors, list[int]]:
    """Each input of `requests` (whose batch sizes are `rows`) along axis 0.

    One np.concatenate per input, when the backend reads it (Gathered); a single request passes its
    arrays through without a copy.
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
    return Gathered(requests, offsets[-1]), offsets


Part = dict[str, Array] | OutputNotSplit  # a request's outputs, or why it has none


def scatter(outputs: Tensors, offsets: Sequence[int], per_request: bool = False) -> list[Part]:
    """Split each output by `offsets` into one mapping per request; slices are views, no copies.

    Every output has the batch's rows: split by rows. `per_request` (a ragged model: its batch
    inputs have one value per request) also takes outputs of one row per request, when the batch
    has more rows than requests: each request of one row gets its own row, by its index; a request
    of several rows fails (OutputNotSplit, Triton's words first), as its rows cannot be told apart.
    Splitting such outputs by rows had given a request the rows of the requests after it, as OK.
    Raises OutputRowsWrong (a ValueError) for any other output (no batch dimension, or rows neither
    the batch's nor, per request, one a request): the backend broke the batch contract, and no
    request's rows can be told apart, so the whole run fails.
    """
    total = offsets[-1]
    requests = len(offsets) - 1
    short: str | None = None  # the first output of one row per request, not per row
    for name, arr in outputs.items():
        if arr.ndim > 0 and arr.shape[0] == total:
            continue
        if not (per_request and arr.ndim > 0 and arr.shape[0] == requests):
            raise OutputRowsWrong(
                f"backend returned output {name!r} with shape {arr.shape} for a batch of {total} rows"
                + (f" in {requests} requests" if per_request else "")
            )
        short = short or name
    if short is None:
        return [{name: arr[start:stop] for name, arr in outputs.items()} for start, stop in pairwise(offsets)]
    parts: list[Part] = []
    for i, (start, stop) in enumerate(pairwise(offsets)):
        if stop - start != 1:
            parts.append(OutputNotSplit(not_split(short, requests, stop - start)))
        else:
            parts.append(
                {
                    name: arr[start:stop] if arr.shape[0] == total else arr[i : i + 1]
                    for name, arr in outputs.items()
                }
            )
    return parts


def not_split(output: str, requests: int, rows: int) -> str:
    """Triton's words (its output responder) first, for a request of `rows` rows whose model
    answered `output` with one row per request (`requests` of them)."""
    return (
        f"failed to split the output tensor '{output}' in responses: the model answered one row per "
        f"request ({requests} rows for {requests} requests) and this request has {rows} rows: send one "
        "row per request"
    )
