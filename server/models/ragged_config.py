"""Ragged batching in a model's config: `allow_ragged_batch` inputs and `batch_input` entries,
checked and turned into the batcher's RaggedPlan (batcher/ragged.py).

As Triton's onnxruntime backend: a ragged input reaches the model flattened and concatenated over
the batch's requests, so the ONNX graph declares it 1-D; the batch inputs' targets are graph inputs
the server fills (one value per request), not inputs a client sends. Only the element-count kinds
are built; the others are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from batcher.ragged import COUNT_KINDS, BatchInputSpec, RaggedPlan
from protos import model_config_pb2 as mc
from server import datatypes
from server.models.config_errors import ConfigError

# Types a count can be given in (Triton's examples use INT32, INT64 and FP32).
_COUNT_TYPES = (mc.TYPE_INT32, mc.TYPE_INT64, mc.TYPE_UINT32, mc.TYPE_UINT64, mc.TYPE_FP32, mc.TYPE_FP64)


def _kind_name(kind: int) -> str:
    return str(mc.BatchInput.Kind.Name(kind)) if kind in mc.BatchInput.Kind.values() else str(kind)


def check_ragged(config: mc.ModelConfig, source: str) -> None:
    """Refuse, naming the field, what the ragged path cannot do (before completion from the graph)."""
    ragged = [i.name for i in config.input if i.allow_ragged_batch]
    if not ragged and not config.batch_input:
        return
    what = f"input '{ragged[0]}' allow_ragged_batch" if ragged else "batch_input"
    if config.max_batch_size <= 0:
        raise ConfigError(f"{source}: {what} needs max_batch_size > 0 (ragged batching batches requests)")
    if config.HasField("sequence_batching"):
        raise ConfigError(f"{source}: {what} is not supported with sequence_batching")
    listed = {i.name for i in config.input}
    targets: set[str] = set()
    for i, entry in enumerate(config.batch_input):
        where = f"{source}: batch_input[{i}]"
        kind = _kind_name(entry.kind)
        if kind not in COUNT_KINDS:
            raise ConfigError(f"{where}: kind {kind} is not supported (supported: {', '.join(COUNT_KINDS)})")
        if not entry.target_name:
            raise ConfigError(f"{where}: target_name is empty")
        if len(entry.source_input) != 1:
            raise ConfigError(
                f"{where}: {kind} needs exactly one source_input, got {len(entry.source_input)}"
            )
        if entry.source_input[0] not in listed:
            raise ConfigError(f"{where}: source_input '{entry.source_input[0]}' is not a config input")
        if entry.data_type not in _COUNT_TYPES:
            names = ", ".join(datatypes.config_name(t) for t in _COUNT_TYPES)
            raise ConfigError(
                f"{where}: data_type {datatypes.config_name(entry.data_type)} is not supported ({names})"
            )
        for target in entry.target_name:
            if target in listed:
                raise ConfigError(f"{where}: target_name '{target}' is also a config input")
            if target in targets:
                raise ConfigError(f"{where}: target_name '{target}' is filled by another batch_input")
            targets.add(target)


def batch_input_targets(config: mc.ModelConfig) -> frozenset[str]:
    """Graph inputs the server fills: not part of the model's public inputs."""
    return frozenset(t for entry in config.batch_input for t in entry.target_name)


def check_batch_input_targets(config: mc.ModelConfig, graph: Mapping[str, int | None], source: str) -> None:
    """Refuse a batch input whose target is not a graph input, or of another type than the graph's
    (`graph`: each input's config data type, None when it has none). Loaded, every request had been
    refused INVALID_ARGUMENT by onnxruntime: a config fault blamed on the client. Triton's
    onnxruntime backend refuses an unknown target at load too."""
    for i, entry in enumerate(config.batch_input):
        for target in entry.target_name:
            if target not in graph:
                raise ConfigError(
                    f"{source}: batch_input[{i}]: target_name '{target}' is not an input of the ONNX "
                    f"model (its inputs: {sorted(graph)})"
                )
            graph_type = graph[target]
            if graph_type != entry.data_type:
                theirs = "an unsupported type" if graph_type is None else datatypes.config_name(graph_type)
                raise ConfigError(
                    f"{source}: batch_input[{i}]: data_type {datatypes.config_name(entry.data_type)} of "
                    f"target '{target}' does not match the ONNX model's {theirs}"
                )


def ragged_graph_shapes(
    config: mc.ModelConfig, graph: Mapping[str, Sequence[int | str | None]], source: str
) -> dict[str, list[int | str | None]]:
    """For each ragged input the config lists, the shape to check its config entry against: the
    graph has it 1-D (flattened over the batch), the config gives a request's shape."""
    shapes: dict[str, list[int | str | None]] = {}
    for entry in config.input:
        if not entry.allow_ragged_batch or entry.name not in graph:
            continue
        shape = list(graph[entry.name])
        if len(shape) != 1:
            raise ConfigError(
                f"{source}: input '{entry.name}' has allow_ragged_batch, so the ONNX model must take it "
                f"1-D (the batch's elements concatenated), but its shape is {shape}"
            )
        dims: list[int | str | None] = list(entry.dims) or [None]
        shapes[entry.name] = [None, *dims]
    return shapes


def ragged_plan(config: mc.ModelConfig) -> RaggedPlan | None:
    """The batcher's plan for a checked config; None when nothing is ragged."""
    ragged = frozenset(i.name for i in config.input if i.allow_ragged_batch)
    if not ragged and not config.batch_input:
        return None
    specs = tuple(
        BatchInputSpec(
            kind=_kind_name(entry.kind),  # type: ignore[arg-type]  # checked in check_ragged
            targets=tuple(entry.target_name),
            dtype=datatypes.BY_CONFIG[entry.data_type].numpy,
            source=entry.source_input[0],
        )
        for entry in config.batch_input
    )
    return RaggedPlan(inputs=ragged, batch_inputs=specs)
