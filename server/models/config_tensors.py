"""Config inputs and outputs: names, types, dims, `reshape`, `format`, `optional` and `label_filename`.

Triton's rules: `dims` is the shape on the wire (without the batch dimension when the model
batches); with `reshape`, the model sees `reshape.shape` instead, so the ONNX graph is checked
against it, and the two must hold the same number of elements. FORMAT_NHWC / FORMAT_NCHW only
require three dims. An optional input may be omitted by a request, which onnxruntime allows for
inputs that have an initializer (an overridable initializer).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from batcher.types import Array
from protos import model_config_pb2 as mc
from server import datatypes
from server.models.config_errors import ConfigError
from server.models.model_files import read_model_file

_IMAGE_FORMATS = (mc.ModelInput.FORMAT_NHWC, mc.ModelInput.FORMAT_NCHW)
MAX_LABELS_BYTES = 64 << 20  # a labels file larger than this is not a labels file


def model_dims(tensor: mc.ModelInput | mc.ModelOutput) -> list[int]:
    """The dims the model itself has (without the batch dimension): `reshape.shape`, else `dims`."""
    return list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)


def check_tensor(kind: str, tensor: Any, source: str) -> None:
    """One config input or output on its own (before completion from the graph)."""
    where = f"{source}: {kind} '{tensor.name}'"
    if not tensor.name:
        raise ConfigError(f"{source}: {kind} without a name")
    if tensor.data_type != mc.TYPE_INVALID and tensor.data_type not in datatypes.BY_CONFIG:
        raise ConfigError(f"{where}: data_type {datatypes.config_name(tensor.data_type)} is not supported")
    if any(d < -1 for d in tensor.dims):
        raise ConfigError(f"{where}: dims {list(tensor.dims)} has a value below -1")
    if tensor.HasField("reshape"):
        _check_reshape(where, list(tensor.dims), list(tensor.reshape.shape))
    if kind == "input" and tensor.format in _IMAGE_FORMATS and len(tensor.dims) != 3:
        name = mc.ModelInput.Format.Name(tensor.format)
        raise ConfigError(f"{where}: format {name} needs 3 dims, got dims {list(tensor.dims)}")


def _check_reshape(where: str, dims: list[int], shape: list[int]) -> None:
    if any(d < -1 for d in shape):
        raise ConfigError(f"{where}: reshape.shape {shape} has a value below -1")
    if not dims:
        raise ConfigError(f"{where}: reshape needs dims (the wire shape) to be given")
    if shape.count(-1) > 1:
        raise ConfigError(f"{where}: reshape.shape {shape} has more than one variable (-1) dimension")
    if dims.count(-1) != shape.count(-1):
        raise ConfigError(
            f"{where}: reshape.shape {shape} must have as many variable (-1) dimensions as dims {dims}"
        )
    if -1 not in dims and prod(dims) != prod(shape):
        raise ConfigError(
            f"{where}: reshape.shape {shape} holds {prod(shape)} elements but dims {dims} hold {prod(dims)}"
        )


def check_optional(config: mc.ModelConfig, required: Collection[str], source: str) -> None:
    """An optional input must be one onnxruntime can run without: an overridable initializer."""
    for tensor in config.input:
        if tensor.optional and tensor.name in required:
            raise ConfigError(
                f"{source}: input '{tensor.name}' is optional but the ONNX model cannot run without it "
                "(only inputs with an initializer may be omitted)"
            )


def load_labels(config: mc.ModelConfig, directory: Path, source: str) -> dict[str, tuple[str, ...]]:
    """Each output's labels from its `label_filename` (one a line, relative to the model directory)."""
    labels: dict[str, tuple[str, ...]] = {}
    for tensor in config.output:
        if not tensor.label_filename:
            continue
        where = f"{source}: output '{tensor.name}': label_filename '{tensor.label_filename}'"
        raw = read_model_file(directory, tensor.label_filename, where, MAX_LABELS_BYTES)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{where} cannot be read: {err}") from None
        labels[tensor.name] = tuple(text.splitlines())
    return labels


@dataclass(frozen=True)
class ReshapePlan:
    """A model's `reshape`s: per-row shapes inputs take before the run and outputs after it.
    Only views are made (numpy reshape of contiguous arrays), the batch dimension is kept."""

    batched: bool
    inputs: Mapping[str, tuple[int, ...]]  # input name -> the model's shape per row
    outputs: Mapping[str, tuple[int, ...]]  # output name -> the wire shape (`dims`) per row

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> ReshapePlan | None:
        inputs = {t.name: tuple(t.reshape.shape) for t in config.input if t.HasField("reshape")}
        outputs = {t.name: tuple(t.dims) for t in config.output if t.HasField("reshape")}
        if not inputs and not outputs:
            return None
        return cls(config.max_batch_size > 0, inputs, outputs)

    def _apply(self, arrays: Mapping[str, Array], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Array]:
        out = dict(arrays)
        for name, shape in shapes.items():
            array = out.get(name)
            if array is not None:  # an optional input may be absent
                out[name] = array.reshape((array.shape[0], *shape) if self.batched else shape)
        return out

    def to_model(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        return self._apply(inputs, self.inputs)

    def to_wire(self, outputs: Mapping[str, Array]) -> dict[str, Array]:
        return self._apply(outputs, self.outputs)
