"""A model file's graph inputs and outputs as onnx describes them, read without loading weights or
starting a session (config completion runs before any instance is made)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import onnx

from server.backends.onnx_data_sized import data_sized_outputs
from server.backends.onnx_output_shapes import refined_outputs
from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnxruntime_backend import BackendLoadError
from server.backends.ort_known_crashes import known_crash, onnxruntime_version, unnamed_required_output
from server.models.onnx_completion import OnnxTensor


@dataclass(frozen=True)
class OnnxSignature:
    """What config completion reads of a model file, from one parse of it."""

    inputs: list[OnnxTensor]  # graph inputs that are not initializers, as onnxruntime lists them
    outputs: list[OnnxTensor]
    overridable: list[OnnxTensor]  # initializers also listed as graph inputs (overridable_initializers)


def _onnx_type(type_proto: onnx.TypeProto) -> str:
    """onnxruntime's spelling: FLOAT -> tensor(float), seq(tensor(float)), optional(...), map(...)
    (the others are reported as unsupported by config completion)."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({_element(type_proto.tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({_onnx_type(type_proto.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_onnx_type(type_proto.optional_type.elem_type)})"
    if kind == "map_type":
        return f"map({_element(type_proto.map_type.key_type)},{_onnx_type(type_proto.map_type.value_type)})"
    return "no type" if kind is None else str(kind)


def _element(elem_type: int) -> str:
    return str(onnx.TensorProto.DataType.Name(elem_type).lower())


def _onnx_shape(type_proto: onnx.TypeProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for dim in type_proto.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or None)
    return dims


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ...: all mean "not a model"
        raise BackendLoadError(f"{path}: not a readable ONNX model: {err}") from None


def read_signature(path: Path, server_fed: Collection[str] = ()) -> OnnxSignature:
    """Inputs, outputs and overridable initializers of the model at `path`, parsed once: a parse of
    the 47 MB demo resnet takes ~70 ms, and completion had parsed each version's file twice.
    `server_fed`: the inputs the server feeds itself (a sequence's state, controls)."""
    model = _load(path)
    crash = unnamed_required_output(model) or known_crash(model, onnxruntime_version())
    if crash is not None:
        raise BackendLoadError(f"{path}: {crash}")
    return OnnxSignature(*_inputs_outputs(model, server_fed), _overridable(model))


def inspect_onnx(path: Path) -> tuple[list[OnnxTensor], list[OnnxTensor]]:
    """Graph inputs (initializers excluded, as onnxruntime does) and outputs, without loading weights."""
    return _inputs_outputs(_load(path))


def overridable_initializers(path: Path) -> list[OnnxTensor]:
    """Initializers also listed as graph inputs (IR >= 4): onnxruntime lets a run override them,
    and a run may omit them. Triton accepts a config listing one as an input."""
    return _overridable(_load(path))


def outputs_fed(path: Path, fed: set[str], server_fed: Collection[str] = ()) -> list[OnnxTensor]:
    """The graph's outputs, judged with the overridable initializers in `fed` sent by clients: a
    Range up to such a value is as long as a client says (parsed again: a config lists one as an
    input only now and then)."""
    return _outputs(_load(path), fed, server_fed)


def _inputs_outputs(
    model: onnx.ModelProto, server_fed: Collection[str] = ()
) -> tuple[list[OnnxTensor], list[OnnxTensor]]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [
        OnnxTensor(v.name, _onnx_type(v.type), _onnx_shape(v.type))
        for v in model.graph.input
        if v.name not in initializers
    ]
    return inputs, _outputs(model, None, server_fed)


def _outputs(
    model: onnx.ModelProto, fed: set[str] | None = None, server_fed: Collection[str] = ()
) -> list[OnnxTensor]:
    """The graph's outputs as onnxruntime describes them (onnx_output_shapes.py), each with why
    the data's values size its first dim, if they do."""
    sized = data_sized_outputs(model, fed or ())
    mixing = row_mixing_outputs(model, fed or (), server_fed)
    outputs = []
    for v in refined_outputs(model):
        if v.type.WhichOneof("value") == "tensor_type" and not v.type.tensor_type.HasField("shape"):
            # Taken for a scalar, it had loaded, and every request had failed INTERNAL.
            raise BackendLoadError(
                f"ONNX output '{v.name}' has no shape, and onnx's shape inference finds none: "
                "declare its shape in the graph"
            )
        outputs.append(
            OnnxTensor(
                v.name,
                _onnx_type(v.type),
                _onnx_shape(v.type),
                _sized_why(sized.get(v.name)),
                mixing.get(v.name),
            )
        )
    return outputs


def _sized_why(origin: str | None) -> str | None:
    if origin is None:
        return None
    return f"its first dim is sized by the values of the data ({origin})"


def _overridable(model: onnx.ModelProto) -> list[OnnxTensor]:
    if model.ir_version < 4:
        return []
    listed = {v.name: v for v in model.graph.input}
    return [
        OnnxTensor(
            init.name,
            _onnx_type(listed[init.name].type),
            _onnx_shape(listed[init.name].type),
            default=tuple(init.dims),
        )
        for init in model.graph.initializer
        if init.name in listed
    ]
