"""A `model_warmup` sample on a sequence model: the inputs the server fills (implicit state and
control inputs) that the sample leaves out.

Triton runs warm-up samples on the instance directly, past its sequence batcher, so a sample there
must give every state and control input itself (model_config.proto: "including control tensors"),
and one that names a state input gives that input's value. Here a sample may do the same (a value
it gives is used as given, checked against the state's or control's data_type and dims), or name
only the model's own inputs: each state input then gets its initial state, as a sequence start
would (`initial_state` zero_data or data_file, else zeros), one row per sample row, and each control
input the values of a one-request sequence: START, END and READY true, CORRID 0 (an empty string
for a STRING CORRID), the id no client sequence has. The warm-up runs the instances before the
model's sequence batcher exists, so it opens no sequence and leaves no state behind.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from batcher.sequence_types import ControlKind, ControlSpec, SequenceSpec
from batcher.types import Array
from protos import model_config_pb2 as mc
from server import datatypes

_Control = mc.ModelSequenceBatching.Control
_FLAG_TYPES = (
    ("int32_false_true", mc.TYPE_INT32),
    ("fp32_false_true", mc.TYPE_FP32),
    ("bool_false_true", mc.TYPE_BOOL),
)


def server_filled(config: mc.ModelConfig) -> dict[str, tuple[int, list[int], str]]:
    """The graph inputs sequence_batching fills: name -> (config data_type, dims without the batch
    dimension, what it is) for a sample that gives one itself."""
    if not config.HasField("sequence_batching"):
        return {}
    sb = config.sequence_batching
    filled: dict[str, tuple[int, list[int], str]] = {}
    for entry in sb.control_input:
        for control in entry.control[:1]:  # more than one is refused by sequence_config.py
            filled[entry.name] = (_control_type(control), [1], "control input")
    for state in sb.state:
        filled[state.input_name] = (state.data_type, list(state.dims), "state input")
    return filled


def check_server_filled(config: mc.ModelConfig, sample: mc.ModelWarmup) -> None:
    """ValueError naming the sample's input when it gives a state or control input of another
    data_type or dims than the config's (onnxruntime's own words named neither)."""
    for name, (data_type, dims, what) in server_filled(config).items():
        spec = sample.inputs.get(name)
        if spec is None:
            continue
        where = f"sample '{sample.name}': input '{name}' ({what} of sequence_batching)"
        if spec.data_type != data_type:
            given, want = datatypes.config_name(spec.data_type), datatypes.config_name(data_type)
            raise ValueError(f"{where}: data_type {given} is not the {what}'s {want}")
        given_dims = list(spec.dims)
        if len(given_dims) != len(dims) or any(
            w not in (-1, g) for g, w in zip(given_dims, dims, strict=True)
        ):
            raise ValueError(f"{where}: dims {given_dims} do not fit the {what}'s dims {dims}")


def with_server_filled(spec: SequenceSpec, inputs: Mapping[str, Array], rows: int) -> dict[str, Array]:
    """`inputs` and, for each state or control input they leave out, what a one-request sequence
    starting now gets (batch-first, `rows` rows; no batch dimension when the model has none)."""
    feed = dict(inputs)
    for state in spec.states:
        if state.input_name not in feed:
            initial = state.initial
            feed[state.input_name] = np.repeat(initial, rows, axis=0) if spec.batched else initial.copy()
    shape = (rows, 1) if spec.batched else (1,)
    for control in spec.controls:
        if control.name not in feed:
            feed[control.name] = _control_value(control, shape)
    return feed


def _control_value(control: ControlSpec, shape: tuple[int, ...]) -> Array:
    if control.kind is ControlKind.CORRID:
        return np.full(shape, b"" if control.dtype.kind == "O" else 0, dtype=control.dtype)
    return np.full(shape, control.true_value, dtype=control.dtype)  # START, END and READY: true


def _control_type(control: _Control) -> int:
    if control.kind == _Control.CONTROL_SEQUENCE_CORRID:
        return int(control.data_type)
    return next((t for field, t in _FLAG_TYPES if getattr(control, field)), mc.TYPE_INVALID)
