"""What sluiceway does with every field of Triton's ModelConfig (the schema declares all of them).

`FIELDS` names each field by its dotted path: honoured, accepted (a documented no-op, or with one
warning at load when it cannot apply here), or refused naming the field. A field not listed takes
its nearest listed parent's status. The README's field table is `markdown_table()`, and a test
walks the ModelConfig descriptor so that a new field cannot be forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Literal

from google.protobuf.descriptor import Descriptor

from protos import model_config_pb2 as mc

logger = logging.getLogger(__name__)

Status = Literal["honoured", "no-op", "warned", "refused"]
_LABELS: dict[Status, str] = {
    "honoured": "honoured",
    "no-op": "accepted, no-op",
    "warned": "accepted, one warning at load",
    "refused": "refused",
}
_GPU = "needs a GPU"

FIELDS: dict[str, tuple[Status, str]] = {
    "name": ("honoured", "optional; must equal the model's directory name, as Triton"),
    "platform": ("honoured", '`onnxruntime_onnx`, or `ensemble` (README "Ensembles"); others are refused'),
    "backend": (
        "honoured",
        '`onnxruntime`, or `identity` (Triton\'s test backend, outputs copy inputs: README "Ensembles"); '
        "others are refused",
    ),
    "runtime": ("honoured", "only `onnxruntime`; others are refused"),
    "version_policy": (
        "honoured",
        "latest / all / specific, as Triton (a listed version missing on disk is a warning, the "
        "others serve)",
    ),
    "max_batch_size": ("honoured", "0: no batch dimension"),
    "input": (
        "honoured",
        "checked against the ONNX graph; missing ones completed from it unless the config lists both "
        "inputs and outputs (then, as Triton, nothing is completed: a graph input left out is a load error)",
    ),
    "input.dims": (
        "honoured",
        "fixed dims multiplying past 2^40 elements, or more than 32 dims with the batch dimension, "
        "are a load error (no request could send such a tensor)",
    ),
    "input.format": ("honoured", "FORMAT_NCHW/NHWC need 3 dims (Triton's only check)"),
    "input.reshape": ("honoured", "the wire shape is `dims`; the model sees `reshape.shape`"),
    "input.is_shape_tensor": ("refused", "TensorRT shape tensors; an ONNX model has none"),
    "input.allow_ragged_batch": (
        "honoured",
        "flattened and concatenated over the batch; the model takes it 1-D",
    ),
    "input.optional": ("honoured", "a request may omit it; the model is then not fed it"),
    "input.is_non_linear_format_io": ("refused", "TensorRT non-linear I/O formats only"),
    "output": (
        "honoured",
        "checked against the ONNX graph; missing ones completed from it unless the config lists both "
        "inputs and outputs (then only the listed ones are served, as Triton)",
    ),
    "output.dims": ("honoured", "bounded as `input.dims`"),
    "output.reshape": ("honoured", "the model's shape is `reshape.shape`; clients see `dims`"),
    "output.label_filename": ("honoured", "labels of the classification extension"),
    "output.is_shape_tensor": ("refused", "TensorRT shape tensors; an ONNX model has none"),
    "output.is_non_linear_format_io": ("refused", "TensorRT non-linear I/O formats only"),
    "instance_group": (
        "honoured",
        "`count` instances per group (per listed GPU); unset, Triton's: 2 for a KIND_CPU group of "
        "onnxruntime (KIND_AUTO on the CPU too), else 1; none: one instance on each visible GPU, else "
        "2 CPU instances, shown in ModelConfig",
    ),
    "instance_group.name": (
        "honoured",
        "shown in the load log; none: `<model>_<index>` in ModelConfig, as Triton names it (the group "
        "added to a config without `instance_group`: `<model>`)",
    ),
    "instance_group.gpus": ("honoured", f"`count` instances per GPU; {_GPU}, else one warning"),
    "instance_group.kind": (
        "honoured",
        "KIND_CPU / KIND_GPU / KIND_AUTO (resolved at load: KIND_GPU where a GPU is visible, "
        "else KIND_CPU); KIND_MODEL and numbers outside the enum refused",
    ),
    "instance_group.profile": ("refused", "TensorRT optimization profiles"),
    "instance_group.rate_limiter": (
        "warned",
        "sluiceway has no rate limiter (Triton too ignores it unless started with --rate-limit)",
    ),
    "instance_group.passive": ("refused", "passive instances serve only ensembles and sequences"),
    "instance_group.secondary_devices": ("refused", "NVDLA devices of the TensorRT backend"),
    "instance_group.host_policy": ("refused", "sluiceway has no --host-policy settings to name"),
    "default_model_filename": (
        "honoured",
        "the file in each version directory: a name (no `/`, `\\` or `..`: a path is a load error)",
    ),
    "cc_model_filenames": ("refused", f"one model file per GPU compute capability; {_GPU}"),
    "metric_tags": (
        "honoured",
        "labels `_<key>` on the model's metrics, as Triton names them; a key of "
        "letters, digits and `_`, not starting with `_` (a load error otherwise: `_name__` had "
        "made the label `__name__`, and Prometheus's parsers refused the whole page)",
    ),
    "dynamic_batching": (
        "honoured",
        "see the batching rules; a config that leaves batching to the graph gets it, as Triton's "
        "onnxruntime backend",
    ),
    "dynamic_batching.max_queue_delay_microseconds": (
        "honoured",
        "at most 3600000000 (one hour), else a load error: longer, a request without batch mates waits "
        "until its deadline",
    ),
    "dynamic_batching.preserve_ordering": (
        "honoured",
        "answers in arrival order, as Triton: a stream's in request order, unary calls' per model "
        "version; a load error with several priority levels or a DELAY queue policy, as Triton",
    ),
    "dynamic_batching.priority_levels": (
        "honoured",
        "with levels, `default_priority_level` must be set (a load error otherwise, as Triton); any "
        "number up to 2^64-1 (nothing is allocated per level)",
    ),
    "dynamic_batching.priority_queue_policy": ("honoured", "per-level queue size and timeouts"),
    "sequence_batching": (
        "honoured",
        'README "Stateful sequences"; with max_batch_size 0 each request runs alone',
    ),
    "sequence_batching.iterative_sequence": ("refused", "iterative sequences are not implemented"),
    "sequence_batching.direct": (
        "honoured",
        "served as `oldest` (same answers); minimum_slot_utilization is refused",
    ),
    "sequence_batching.oldest": (
        "honoured",
        "max_queue_delay_microseconds, preferred_batch_size; max_candidate_sequences and "
        "preserve_ordering are no-ops (every live sequence is a candidate, always in order)",
    ),
    "sequence_batching.state": (
        "honoured",
        "implicit state; use_growable_memory refused, use_same_buffer_for_input_output a no-op",
    ),
    # Three levels deep: enforced by server/models/sequence_config.py, listed here for the table.
    "sequence_batching.direct.minimum_slot_utilization": ("refused", "slot utilization is not modelled"),
    "sequence_batching.direct.max_queue_delay_microseconds": (
        "honoured",
        "at most one hour, as `dynamic_batching`'s",
    ),
    "sequence_batching.oldest.max_queue_delay_microseconds": (
        "honoured",
        "at most one hour, as `dynamic_batching`'s",
    ),
    "sequence_batching.oldest.max_candidate_sequences": ("no-op", "every live sequence is a candidate"),
    "sequence_batching.oldest.preserve_ordering": ("no-op", "a sequence's requests always run in order"),
    "sequence_batching.state.use_growable_memory": ("refused", "state buffers have fixed dims"),
    "sequence_batching.state.use_same_buffer_for_input_output": ("no-op", "state is copied per run on CPU"),
    "ensemble_scheduling": ("honoured", 'with platform `ensemble` only; README "Ensembles"'),
    "ensemble_scheduling.step": (
        "honoured",
        "model_name, model_version, input_map, output_map; a model_namespace is refused",
    ),
    "ensemble_scheduling.step.model_namespace": ("refused", "no model namespaces: one repository's names"),
    "ensemble_scheduling.max_inflight_requests": (
        "refused",
        "no per-ensemble limit: each step model's queue bounds its own requests",
    ),
    "optimization": ("honoured", "see its fields"),
    "optimization.graph": ("honoured", "-1: basic, 0 (default): all, 1: extended, 2: none"),
    "optimization.priority": ("honoured", "only PRIORITY_DEFAULT; others are refused"),
    "optimization.cuda": ("honoured", "see its fields"),
    # Three levels deep: warned by server/backends/tensorrt_options.py, listed here for the table.
    "optimization.cuda.graphs": (
        "honoured",
        "CUDA graphs on CUDA/TensorRT instances of models with fixed shapes (max_batch_size 0); "
        "otherwise, and on the CPU, one warning at load",
    ),
    "optimization.cuda.busy_wait_events": ("warned", "the TensorRT backend's event polling"),
    "optimization.cuda.graph_spec": ("warned", "the TensorRT backend's per-shape graphs"),
    "optimization.cuda.output_copy_stream": ("warned", "the TensorRT backend's output copy stream"),
    "optimization.execution_accelerators": (
        "honoured",
        "tensorrt / cuda / openvino providers, parameters checked; without them, one warning",
    ),
    "optimization.input_pinned_memory": ("no-op", "CPU instances copy nothing to a device"),
    "optimization.output_pinned_memory": ("no-op", "CPU instances copy nothing from a device"),
    "optimization.gather_kernel_buffer_threshold": ("warned", f"a GPU gather kernel; {_GPU}"),
    "optimization.eager_batching": (
        "warned",
        "the batcher always forms a batch as soon as an instance is free",
    ),
    "parameters": (
        "honoured",
        "the onnxruntime backend's keys and sluiceway's own; identity: `execute_delay_ms`, "
        "`instance_wise_delay_multiplier`, `creation_delay_sec` (others warned, as Triton ignores them)",
    ),
    "model_warmup": (
        "honoured",
        "run on every instance before it is ready; a sample naming an unknown input, leaving one "
        "out, past max_batch_size, with a count past 1000, or with inputs larger than "
        "max_message_bytes is a load error naming the sample; on a sequence model a sample may leave "
        'out the state and control inputs, which the server fills (section "Stateful sequences")',
    ),
    "model_operations": ("refused", "loading native custom-op libraries is not supported"),
    "model_transaction_policy": ("honoured", "decoupled false only"),
    "model_transaction_policy.decoupled": ("refused", "one response per request only"),
    "batch_input": ("honoured", "BATCH_ELEMENT_COUNT and the ACCUMULATED kinds; other kinds refused by name"),
    "batch_output": ("refused", "BATCH_SCATTER_WITH_INPUT_SHAPE is not built: outputs scatter by rows"),
    "model_repository_agents": ("refused", "repository agents (checksum, decryption) not run"),
    "response_cache": ("honoured", "needs the server's response cache"),
    "model_metrics": ("warned", "custom metric buckets: the server's buckets are used"),
}


def _walk(descriptor: Descriptor, prefix: str, seen: frozenset[str]) -> Iterator[str]:
    for field in descriptor.fields:
        path = prefix + field.name
        yield path
        sub = field.message_type
        if sub is not None and not sub.GetOptions().map_entry and sub.full_name not in seen:
            yield from _walk(sub, path + ".", seen | {sub.full_name})


def all_fields() -> list[str]:
    """Every ModelConfig field's dotted path, in declaration order (maps count as leaves)."""
    root = mc.ModelConfig.DESCRIPTOR
    return list(_walk(root, "", frozenset({root.full_name})))


def status_of(path: str) -> tuple[Status, str]:
    """The status of a field: its own entry, else its nearest listed parent's."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        entry = FIELDS.get(".".join(parts[:end]))
        if entry is not None:
            return entry if end == len(parts) else (entry[0], f"as `{'.'.join(parts[:end])}`")
    raise KeyError(path)


def markdown_table() -> str:
    """The README's table: one row per field."""
    rows = ["| field | status | why |", "|---|---|---|"]
    for path in all_fields():
        status, why = status_of(path)
        rows.append(f"| `{path}` | {_LABELS[status]} | {why} |")
    return "\n".join(rows)


def _set(message: object, field: str) -> bool:
    value = getattr(message, field)
    if isinstance(value, bool | int | float | str | bytes):
        return bool(value)
    try:
        return message.HasField(field)  # type: ignore[attr-defined, no-any-return]
    except ValueError:  # repeated or map
        return len(value) > 0


def _set_fields(config: mc.ModelConfig) -> Iterator[tuple[str, str]]:
    """(schema path, path naming the instance) of every set field whose status is its own entry."""
    for path in FIELDS:
        head, _, rest = path.partition(".")
        if "." in rest:
            continue  # deeper entries are checked by the module their reason names
        if not rest:
            if _set(config, head):
                yield path, path
            continue
        owner = getattr(config, head)
        if head in ("input", "output"):
            yield from ((path, f"{head} '{t.name}': {rest}") for t in owner if _set(t, rest))
        elif head == "instance_group":
            yield from ((path, f"instance_group[{i}].{rest}") for i, g in enumerate(owner) if _set(g, rest))
        elif _set(owner, rest):
            yield path, path


def unhandled_fields(config: mc.ModelConfig) -> list[str]:
    """The named set fields that sluiceway refuses."""
    return [name for path, name in _set_fields(config) if FIELDS[path][0] == "refused"]


def unapplied_fields(config: mc.ModelConfig) -> list[str]:
    """The named set fields accepted with a warning, each with why it does not apply."""
    return [
        f"{name} ({FIELDS[path][1]})" for path, name in _set_fields(config) if FIELDS[path][0] == "warned"
    ]


def warn_unapplied(config: mc.ModelConfig, source: str, extra: list[str] | None = None) -> None:
    """One warning line at a model's load for the fields it sets that cannot apply here."""
    found = unapplied_fields(config) + (extra or [])
    if found:
        logger.warning("%s: accepted but not applied here: %s", source, "; ".join(found))


def sequence_hidden_names(config: mc.ModelConfig) -> tuple[frozenset[str], frozenset[str]]:
    """(graph inputs, graph outputs) that sequence_batching fills or keeps (control inputs, implicit
    state): not part of the model's public inputs and outputs (server/models/sequence_config.py)."""
    if not config.HasField("sequence_batching"):
        return frozenset(), frozenset()
    sb = config.sequence_batching
    inputs = {c.name for c in sb.control_input} | {s.input_name for s in sb.state}
    return frozenset(inputs), frozenset(s.output_name for s in sb.state)
