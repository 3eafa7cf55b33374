"""Dims a model's graph gives one name across the inputs clients send: batched requests must
agree there.

The load's reading of a graph for ops that mix the rows of a batch (onnx_row_mixing.py) takes two
dims named alike ('T' on x [N, T, 4] and on ids [N, T]) for the same size, as the exporter says
they are. onnxruntime does not check it: a request whose x had 3 steps and ids 5 ran, and a pick
bounded by ids's steps read the next request's rows of x, answered OK on a server. So where
requests are batched together, a request whose sizes differ at dims one name ties is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protos import model_config_pb2 as mc
from server.models.onnx_completion import OnnxTensor


@dataclass(frozen=True, slots=True)
class DimTie:
    """The dims of the request's inputs the graph names `name`: (input, axis of the shape the
    client sends, the batch dim being axis 0). Two or more places."""

    name: str
    places: tuple[tuple[str, int], ...]


def batched_together(config: mc.ModelConfig) -> bool:
    """Whether requests may share one run: rows of several requests in one batch."""
    return config.max_batch_size > 1 and (
        config.HasField("dynamic_batching") or config.HasField("sequence_batching")
    )


def dim_ties(config: mc.ModelConfig, graph_inputs: Sequence[OnnxTensor]) -> tuple[DimTie, ...]:
    """The ties among the inputs `config` lists, as the graph names their dims (none where requests
    run alone). Left out: the batch's own name, wherever it appears (a request's rows are not the
    batch's), inputs the server reshapes or concatenates ragged (the graph's dims are not the
    wire's), and inputs whose graph rank is not the config's plus the batch dim."""
    if not batched_together(config):
        return ()
    listed = {entry.name: entry for entry in config.input}
    sent = [t for t in graph_inputs if _sent_as_is(listed.get(t.name), t)]
    batch_names = {t.shape[0] for t in sent if isinstance(t.shape[0], str)}
    places: dict[str, list[tuple[str, int]]] = {}
    for tensor in sent:
        for axis, dim in enumerate(tensor.shape):
            if axis > 0 and isinstance(dim, str) and dim and dim not in batch_names:
                places.setdefault(dim, []).append((tensor.name, axis))
    return tuple(DimTie(name, tuple(where)) for name, where in places.items() if len(where) > 1)


def _sent_as_is(entry: mc.ModelInput | None, tensor: OnnxTensor) -> bool:
    return (
        entry is not None
        and not entry.HasField("reshape")
        and not entry.allow_ragged_batch
        and len(tensor.shape) == len(entry.dims) + 1
    )
