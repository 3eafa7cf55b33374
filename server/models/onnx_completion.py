"""A config completed from its ONNX graph, as Triton's auto-complete: inputs, outputs and
max_batch_size come from the graph where the config does not list them, and whatever it does list
must agree with the graph (names, data types, dims without the batch dimension)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from protos import model_config_pb2 as mc
from server import datatypes
from server.models.config import (
    BACKEND,
    DEFAULT_MAX_BATCH_SIZE,
    PLATFORM,
    ROWS_INDEPENDENT,
    bool_parameter,
    check_platform,
    requests_share_runs,
)
from server.models.config_errors import ConfigError
from server.models.config_fields import sequence_hidden_names
from server.models.config_tensors import check_optional, model_dims
from server.models.ragged_config import batch_input_targets, check_batch_input_targets, ragged_graph_shapes

log = logging.getLogger(__name__)


class OnnxTensor(NamedTuple):
    """One graph input or output as onnxruntime describes it (`NodeArg` has the same attributes)."""

    name: str
    type: str  # onnxruntime type string, e.g. "tensor(float)"
    shape: Sequence[int | str | None]  # str or None: a symbolic / unknown dimension
    # Why its first dim is not the batch, read in the graph's ops (server/backends/onnx_data_sized.py).
    not_batch: str | None = None
    # Why its rows depend on other rows of the batch (server/backends/onnx_row_mixing.py).
    mixes_rows: str | None = None
    # An overridable initializer's own shape: what a run that leaves it out takes.
    default: tuple[int, ...] | None = None


def _as_tensor(item: Any) -> OnnxTensor:
    if isinstance(item, OnnxTensor):
        return item._replace(shape=list(item.shape))
    if isinstance(item, tuple):
        name, type_, shape = item
        return OnnxTensor(str(name), str(type_), list(shape))
    return OnnxTensor(item.name, item.type, list(item.shape))


def _dims(shape: Iterable[int | str | None]) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _is_batch_dim(shape: Sequence[int | str | None]) -> bool:
    return len(shape) > 0 and not (isinstance(shape[0], int) and shape[0] >= 0)


def _not_batch(tensor: OnnxTensor, graph: Sequence[OnnxTensor]) -> str | None:
    """Why `tensor`'s variable first dim is provably not the batch (None: it may be): its symbol
    names a later dim of some graph input or output (x [N, M] -> y [M], ReduceSum over axis 0, or a
    Gram matrix [N, N]), or the data's values size it (NonZero upstream: `tensor.not_batch`).
    Batching such a model handed each request another slice of the batch's result as its own rows
    (column sums of three coalesced requests, one element each, OK)."""
    if tensor.not_batch is not None:
        return tensor.not_batch
    first = tensor.shape[0] if tensor.shape else None
    if not isinstance(first, str) or not first:
        return None
    for other in graph:
        for axis, dim in enumerate(other.shape[1:], start=1):
            if dim == first:
                return f"its first dim '{first}' is dim {axis} of '{other.name}' {list(other.shape)}"
    return None


def _as_evidence(outputs: Sequence[OnnxTensor], inputs: Sequence[OnnxTensor]) -> list[OnnxTensor]:
    """The outputs as `_not_batch` weighs them: a later dim's symbol that no input has is the
    exporter's guess, not proof. torch's legacy exporter names an image generator's output
    ['Tanh181_dim_0', 3, 'Tanh181_dim_0', ...] after a Pad it could not infer, and the model could
    not be batched by any config (a tester, session 50); column sums' 'M' and a Gram matrix's 'N'
    are the inputs' own."""
    named = {dim for tensor in inputs for dim in tensor.shape if isinstance(dim, str)}
    return [
        t._replace(
            shape=[t.shape[0], *(d if not isinstance(d, str) or d in named else None for d in t.shape[1:])]
        )
        if t.shape
        else t
        for t in outputs
    ]


def _batches_but_for_mixing(inputs: Sequence[OnnxTensor], graph: Sequence[OnnxTensor]) -> bool:
    """Whether completion would batch the graph if no output mixed rows (every tensor's first dim
    variable, none shown not to be the batch)."""
    return bool(inputs) and all(_is_batch_dim(t.shape) and _not_batch(t, graph) is None for t in graph)


def _onnx_datatype(tensor: OnnxTensor, source: str) -> int:
    dt = datatypes.BY_ONNX.get(tensor.type)
    if dt is None:
        hint = ""
        if tensor.type.startswith(("seq(", "map(", "optional(")):  # skl2onnx's ZipMap, for one
            hint = " (only tensors are served: export tensors, e.g. skl2onnx's options {'zipmap': False})"
        raise ConfigError(f"{source}: ONNX tensor '{tensor.name}' has unsupported type {tensor.type}{hint}")
    return dt.config


def _config_type(tensor: OnnxTensor) -> int | None:
    dt = datatypes.BY_ONNX.get(tensor.type)
    return None if dt is None else dt.config


def _dims_match(config_dims: Sequence[int], model_dims: Sequence[int]) -> bool:
    # Triton's rule: a variable (-1) graph dim takes any config dim; a fixed one must be stated as
    # it is (a config -1 there would let requests through that onnxruntime then refuses).
    return len(config_dims) == len(model_dims) and all(
        c == m or m == -1 for c, m in zip(config_dims, model_dims, strict=True)
    )


def _model_dims(
    kind: str, tensor: OnnxTensor, max_batch_size: int, source: str, graph: Sequence[OnnxTensor] = ()
) -> list[int]:
    """The tensor's dims as the config states them: without the batch dimension when batching.
    `graph`: every input and output of the graph, to tell a first dim that is not the batch."""
    shape = list(tensor.shape)
    if max_batch_size == 0:
        return _dims(shape)
    if not _is_batch_dim(shape):
        raise ConfigError(
            f"{source}: max_batch_size is {max_batch_size} but ONNX {kind} '{tensor.name}' "
            f"has shape {shape} with no variable first (batch) dimension"
        )
    if (why := _not_batch(tensor, graph)) is not None:
        hatch = (
            ""
            if tensor.not_batch is None
            else "; if it is the batch, name it in the graph as the inputs' first dim"
        )
        raise ConfigError(
            f"{source}: max_batch_size is {max_batch_size} but ONNX {kind} '{tensor.name}' has shape "
            f"{shape}: {why}, so it is not the batch dimension (batching would split it as rows); "
            f"set max_batch_size: 0{hatch}"
        )
    return _dims(shape[1:])


def _complete_tensors(
    kind: str,
    entries: Any,
    model: list[OnnxTensor],
    max_batch_size: int,
    source: str,
    listable: Sequence[OnnxTensor] = (),
    add: bool = True,  # add the graph's tensors the config does not list
    graph: Sequence[OnnxTensor] = (),  # every graph input and output (_not_batch)
) -> None:
    # `listable`: tensors a config may list but that are not completed from the graph (initializers).
    by_name = {t.name: t for t in (*listable, *model)}
    for entry in entries:
        tensor = by_name.get(entry.name)
        if tensor is None:
            raise ConfigError(
                f"{source}: {kind} '{entry.name}' is not in the ONNX model (its {kind}s: {sorted(by_name)})"
            )
        model_type = _onnx_datatype(tensor, source)
        graph_dims = _model_dims(kind, tensor, max_batch_size, source, graph)
        if entry.data_type == mc.TYPE_INVALID:
            entry.data_type = model_type
        elif entry.data_type != model_type:
            raise ConfigError(
                f"{source}: {kind} '{entry.name}' data_type {datatypes.config_name(entry.data_type)} "
                f"does not match the ONNX model's {datatypes.config_name(model_type)} ({tensor.type})"
            )
        if not entry.dims and graph_dims:
            entry.dims.extend(graph_dims)
        elif _scalar_as_one(entry, graph_dims):
            entry.reshape.SetInParent()  # as Triton: dims [1] on the wire, a scalar (per row) in the model
        elif not _dims_match(model_dims(entry), graph_dims):
            what = "dims (without the batch dimension)" if max_batch_size > 0 else "dims"
            what = "reshape.shape" if entry.HasField("reshape") else what
            raise ConfigError(
                f"{source}: {kind} '{entry.name}' {what} {model_dims(entry)} do not match "
                f"the ONNX model's {graph_dims} (-1 is variable)"
            )
    listed = {e.name for e in entries}
    for tensor in model:
        if add and tensor.name not in listed:
            # Its type first: a sequence of maps (skl2onnx's ZipMap) had been refused for its shape.
            data_type = _onnx_datatype(tensor, source)
            dims = _model_dims(kind, tensor, max_batch_size, source, graph)
            entry = entries.add(name=tensor.name, data_type=data_type, dims=dims or [1])
            if not dims:  # a scalar (per row): Triton's completion writes dims [1] and reshape []
                entry.reshape.SetInParent()


def _scalar_as_one(entry: Any, graph_dims: Sequence[int]) -> bool:
    """A config's dims [1] for a scalar (per row) of the graph, with no reshape: Triton accepts it
    (its own completion writes it); here it failed the load."""
    return not graph_dims and list(entry.dims) == [1] and not entry.HasField("reshape")


def complete_from_onnx(
    config: mc.ModelConfig,
    onnx_inputs: Sequence[Any],
    onnx_outputs: Sequence[Any],
    *,
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    source: str = "config",
    initializers: Sequence[Any] = (),
) -> mc.ModelConfig:
    """A copy of `config` with inputs, outputs, max_batch_size and platform filled in from the graph.

    `onnx_inputs`/`onnx_outputs` hold `OnnxTensor`s, (name, type, shape) tuples or onnxruntime
    `NodeArg`s. Whatever the config already lists must agree with the graph. `initializers`: the
    graph's overridable initializers, which a config may list as (optional) inputs, as Triton.
    """
    check_platform(config, source)
    done = mc.ModelConfig()
    done.CopyFrom(config)
    done.platform = done.platform or PLATFORM
    done.backend = done.backend or BACKEND
    inputs = [_as_tensor(t) for t in onnx_inputs]
    outputs = [_as_tensor(t) for t in onnx_outputs]
    hidden_in, hidden_out = sequence_hidden_names(done)
    hidden_out -= {entry.name for entry in done.output}  # a state output listed: the client's too
    if hidden_in or hidden_out:  # sequence controls and state: the server's, not the client's
        inputs = [t for t in inputs if t.name not in hidden_in]
        outputs = [t for t in outputs if t.name not in hidden_out]
    targets = batch_input_targets(done)  # batch inputs: filled by the server, as sequence controls
    _refuse_server_tensors(done, source)
    check_batch_input_targets(done, {t.name: _config_type(t) for t in inputs}, source)
    ragged = ragged_graph_shapes(done, {t.name: t.shape for t in inputs}, source)
    inputs = [t._replace(shape=ragged.get(t.name, t.shape)) for t in inputs if t.name not in targets]
    graph = (*inputs, *_as_evidence(outputs, inputs))
    mixing = _mixing_outputs(done, outputs, source)
    would_batch = _batches_but_for_mixing(inputs, graph)
    model_batches = would_batch and not mixing
    if done.max_batch_size == 0 and not done.input and mixing and would_batch:
        name, mixes = next(iter(mixing.items()))
        log.warning(
            "%s: completed with max_batch_size 0, each request run alone: ONNX output '%s' mixes the rows "
            "of a batch (%s); if its rows are in fact independent, set parameters '%s' to 'true'",
            source, name, mixes, ROWS_INDEPENDENT,
        )  # fmt: skip
    if done.max_batch_size == 0 and not done.input and model_batches:
        # Nothing said about batching: a graph whose every tensor has a variable first dim batches,
        # and with the dynamic batcher on, as Triton's onnxruntime backend completes it (without
        # it each request ran alone: 90 runs for 90 requests from 6 concurrent clients).
        done.max_batch_size = default_max_batch_size
        if done.max_batch_size > 1 and not done.HasField("sequence_batching"):
            done.dynamic_batching.SetInParent()
    if done.max_batch_size == 0 and done.HasField("dynamic_batching"):
        why = "the ONNX model does not have a variable first (batch) dimension on every input and output"
        if mixing:
            name, mixes = next(iter(mixing.items()))
            why = f"the ONNX model's output '{name}' mixes the rows of a batch: {mixes}"
        elif model_batches:  # the config listed inputs: nothing is completed
            why = "a config that lists inputs is not completed with one"
        raise ConfigError(
            f"{source}: dynamic_batching needs max_batch_size > 0 (the config's is 0 or unset, and {why}); "
            "set max_batch_size or remove dynamic_batching"
        )
    listable = [_as_tensor(t) for t in initializers]
    # Triton completes nothing when the config lists inputs and outputs: the outputs it leaves out
    # are not served (they were, and a default request got every one of them).
    listed = bool(config.input) and bool(config.output)
    _complete_tensors("input", done.input, inputs, done.max_batch_size, source, listable, not listed, graph)
    if listed:
        missing = sorted({t.name for t in inputs} - {e.name for e in done.input})
        if missing:
            raise ConfigError(
                f"{source}: the ONNX model's inputs {missing} are not in the config's inputs (a "
                "config that lists inputs and outputs is not completed from the graph, as in Triton)"
            )
    check_optional(done, {t.name for t in inputs}, source)
    _complete_tensors("output", done.output, outputs, done.max_batch_size, source, (), not listed, graph)
    _refuse_mixed_batches(done, mixing, source)
    return done


def _mixing_outputs(config: mc.ModelConfig, outputs: Sequence[OnnxTensor], source: str) -> dict[str, str]:
    """The graph's outputs whose rows the load reads as mixed with other rows of the batch, and
    why; none where the config's `rows_independent` says they are not."""
    if bool_parameter(config, ROWS_INDEPENDENT, source):
        return {}
    return {t.name: t.mixes_rows for t in outputs if t.mixes_rows is not None}


def _refuse_mixed_batches(config: mc.ModelConfig, mixing: dict[str, str], source: str) -> None:
    """A config that batches requests together, of a graph one of whose served outputs mixes
    the rows of a batch: coalesced, a request's answer would depend on its batch mates (a
    Softmax over axis 0 gave a one-row request 0.002 beside three other rows, 1.0 alone, OK)."""
    # Not with batch_input: the model is told each request's share of the batch.
    together = requests_share_runs(config) and not config.batch_input
    served = [entry.name for entry in config.output if entry.name in mixing]
    if together and served:
        dynamic = config.HasField("dynamic_batching")
        batching = "dynamic_batching" if dynamic else "sequence_batching"
        alone = (
            "remove dynamic_batching (each request then runs alone, its own rows together)"
            if dynamic
            else "set max_batch_size: 1 (one sequence a batch)"
        )
        raise ConfigError(
            f"{source}: ONNX output '{served[0]}' mixes the rows of a batch ({mixing[served[0]]}): "
            f"with {batching}, a request's answer would depend on the requests batched with it; "
            f"{alone}, or set max_batch_size: 0; if the rows are in fact independent, set "
            f"parameters '{ROWS_INDEPENDENT}' to 'true'"
        )


def server_fed_inputs(config: mc.ModelConfig) -> frozenset[str]:
    """The graph inputs the server feeds itself: batch_input targets, a sequence's states and
    control inputs."""
    return frozenset(_fed_input_roles(config))


def _fed_input_roles(config: mc.ModelConfig) -> dict[str, str]:
    """Graph input -> what it is, for the inputs the server feeds itself (a state's output_name
    may be listed as an output: Triton then answers it too)."""
    roles: dict[str, str] = {}
    for entry in config.batch_input:
        for target in entry.target_name:
            roles[target] = "a batch_input's target_name"
    if config.HasField("sequence_batching"):
        sb = config.sequence_batching
        for state in sb.state:
            roles[state.input_name] = "a sequence_batching state's input_name"
        for control in sb.control_input:
            roles[control.name] = "a sequence_batching control_input"
    return roles


def _refuse_server_tensors(config: mc.ModelConfig, source: str) -> None:
    """An input the server feeds (a sequence control or state, a batch input) listed as an input
    of the config too: refused as missing from the ONNX model, which has it."""
    roles = _fed_input_roles(config)
    for entry in config.input:
        if (role := roles.get(entry.name)) is not None:
            raise ConfigError(
                f"{source}: input '{entry.name}' is {role}, which the server feeds, not the client: "
                "remove it from the config's inputs"
            )
