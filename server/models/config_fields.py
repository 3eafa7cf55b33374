"""Triton config fields that parse (the schema declares all of Triton's) but are not honoured.

Each is refused naming the field, so a config never loads with a field silently ignored. A field
leaves this list when the server honours it or accepts it as a documented no-op.
"""

from __future__ import annotations

from protos import model_config_pb2 as mc

# Top-level ModelConfig fields, by name: set means refused.
_MODEL_FIELDS = (
    "sequence_batching",
    "ensemble_scheduling",
    "batch_input",
    "batch_output",
    "cc_model_filenames",
    "model_operations",
    "model_repository_agents",
    "model_metrics",
)
_INPUT_FIELDS = ("is_shape_tensor", "allow_ragged_batch", "is_non_linear_format_io")
_OUTPUT_FIELDS = ("is_shape_tensor", "is_non_linear_format_io")
_INSTANCE_FIELDS = ("profile", "rate_limiter", "passive", "secondary_devices", "host_policy")
_OPTIMIZATION_FIELDS = ("cuda", "gather_kernel_buffer_threshold", "eager_batching")


def _set(message: object, field: str) -> bool:
    value = getattr(message, field)
    if isinstance(value, bool | int | float | str | bytes):
        return bool(value)
    try:
        return message.HasField(field)  # type: ignore[attr-defined, no-any-return]
    except ValueError:  # repeated or map
        return len(value) > 0


def unhandled_fields(config: mc.ModelConfig) -> list[str]:
    """The dotted names of the set fields that sluiceway does not honour."""
    found = [f for f in _MODEL_FIELDS if _set(config, f)]
    if config.model_transaction_policy.decoupled:
        found.append("model_transaction_policy.decoupled")
    for kind, tensors, fields in (
        ("input", config.input, _INPUT_FIELDS),
        ("output", config.output, _OUTPUT_FIELDS),
    ):
        for tensor in tensors:
            found.extend(f"{kind} '{tensor.name}': {f}" for f in fields if _set(tensor, f))
    for i, group in enumerate(config.instance_group):
        found.extend(f"instance_group[{i}].{f}" for f in _INSTANCE_FIELDS if _set(group, f))
    found.extend(f"optimization.{f}" for f in _OPTIMIZATION_FIELDS if _set(config.optimization, f))
    return found
