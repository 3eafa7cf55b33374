"""Dims a model's graph gives one name across the inputs clients send: batched requests must
agree there.

The load's reading of a graph for ops that mix the rows of a batch (onnx_row_mixing.py) takes two
dims named alike ('T' on x [N, T, 4] and on ids [N, T]) for the same size, as the exporter says
they are. onnxruntime does not check it: a request whose x had 3 steps and ids 5 ran, and a pick
bounded by ids's steps read the next request's rows of x, answered OK on a server. So where
requests are batched together, a request whose sizes differ at dims one name ties is refused,
its inputs read as the model sees them (after a config `reshape`; a left-out overridable
initializer's own shape). Inputs the server feeds (a sequence's state, controls) are not checked:
the reading names their dims apart instead (onnx_mixing_probe.named_apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protos import model_config_pb2 as mc
from server.models.config import requests_share_runs
from server.models.onnx_completion import OnnxTensor


@dataclass(frozen=True, slots=True)
class TiePlace:
    """One dim of a tie: input `input`'s axis `axis` as the model sees it (the batch dim axis 0;
    after the config's `reshape`, where it has one). `default`: the size there of the initializer
    a request that leaves the input out runs with (an overridable initializer's), if any."""

    input: str
    axis: int
    default: int | None = None


@dataclass(frozen=True, slots=True)
class DimTie:
    """The dims of the request's inputs the graph names `name`: two or more places."""

    name: str
    places: tuple[TiePlace, ...]


def dim_ties(
    config: mc.ModelConfig, graph_inputs: Sequence[OnnxTensor], initializers: Sequence[OnnxTensor] = ()
) -> tuple[DimTie, ...]:
    """The ties among the inputs `config` lists, as the graph names their dims (none where requests
    run alone); `initializers`: overridable initializers the config lists (clients may send them;
    a request leaving one out runs with its own shape). Left out: the batch's own name, wherever it
    appears (a request's rows are not the batch's), inputs batched ragged (the graph's dims are
    not a request's), and inputs whose graph rank is not the config's plus the batch dim."""
    if not requests_share_runs(config):
        return ()
    listed = {entry.name: entry for entry in config.input}
    sent = [t for t in (*graph_inputs, *initializers) if _sent_as_is(listed.get(t.name), t)]
    batch_names = {t.shape[0] for t in sent if isinstance(t.shape[0], str)}
    places: dict[str, list[TiePlace]] = {}
    for tensor in sent:
        for axis, dim in enumerate(tensor.shape[1:], start=1):
            if isinstance(dim, str) and dim and dim not in batch_names:
                default = tensor.default[axis] if tensor.default and len(tensor.default) > axis else None
                places.setdefault(dim, []).append(TiePlace(tensor.name, axis, default))
    return tuple(DimTie(name, tuple(where)) for name, where in places.items() if len(where) > 1)


def _sent_as_is(entry: mc.ModelInput | None, tensor: OnnxTensor) -> bool:
    """An input whose graph dims a request's shape gives: its own, or its config reshape's."""
    if entry is None or entry.allow_ragged_batch or not tensor.shape:
        return False
    rank = len(entry.reshape.shape) if entry.HasField("reshape") else len(entry.dims)
    return len(tensor.shape) == rank + 1
