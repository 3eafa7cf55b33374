"""Check decoded inputs and requested outputs against a model's signature.

A signature is built once per loaded model version from its completed ModelConfig, so a request
costs a few dictionary lookups and tuple compares.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from batcher.types import Array
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server import datatypes, triton_text
from server.errors import InvalidRequest, WrongDatatype, WrongShape
from server.models.config import IDENTITY
from server.models.dim_ties import DimTie, TiePlace
from server.models.ensemble_config import is_ensemble


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: datatypes.Datatype
    dims: tuple[int, ...]  # without the batch dimension when the model batches; -1 is variable
    optional: bool = False
    reshape: tuple[int, ...] | None = None  # config `reshape.shape`: what the model sees per row

    def matches(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.dims) and all(
            want in (-1, got) for want, got in zip(self.dims, shape, strict=True)
        )


@dataclass(frozen=True, slots=True)
class Signature:
    model: str
    max_batch_size: int  # 0: the model has no batch dimension
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    # BYTES inputs must be UTF-8 text (onnxruntime's strings); the identity backend takes any bytes.
    text_bytes: bool = True
    # The model has sequence_batching: its requests must name a sequence (None: an ensemble, whose
    # steps with sequence_batching take the sequence and the others ignore it).
    sequences: bool | None = False
    # Dims the graph names alike on the inputs clients send, where requests share runs (dim_ties.py).
    ties: tuple[DimTie, ...] = ()

    @classmethod
    def from_config(cls, config: mc.ModelConfig, ties: tuple[DimTie, ...] = ()) -> Signature:
        def spec(tensor: mc.ModelInput | mc.ModelOutput) -> TensorSpec:
            return TensorSpec(
                name=tensor.name,
                datatype=datatypes.BY_CONFIG[tensor.data_type],
                dims=tuple(tensor.dims),
                optional=getattr(tensor, "optional", False),
                reshape=tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None,
            )

        return cls(
            model=config.name,
            max_batch_size=config.max_batch_size,
            inputs={t.name: spec(t) for t in config.input},
            outputs={t.name: spec(t) for t in config.output},
            text_bytes=config.backend != IDENTITY,
            sequences=None if is_ensemble(config) else config.HasField("sequence_batching"),
            ties=ties,
        )

    def wire_shape(self, spec: TensorSpec) -> list[int]:
        """The shape clients see in metadata: -1 leads when the model batches."""
        return [-1, *spec.dims] if self.max_batch_size > 0 else list(spec.dims)

    def check_declared_datatypes(self, declared: Iterable[pb.ModelInferRequest.InferInputTensor]) -> None:
        """Each input's wire datatype as the request declares it, against the model's, before any
        bytes are decoded, as Triton's core checks them before byte sizes: FP64 sent with FP32's
        byte count had been refused as a byte-size mismatch whose expected size came from the wrong
        datatype. BYTES are left to the decoding: Triton's gRPC front end counts their elements
        first (tests/triton/test_triton_wording.py)."""
        for tensor in declared:
            spec = self.inputs.get(tensor.name)
            dtype = datatypes.BY_WIRE.get(tensor.datatype)
            if spec is not None and dtype not in (None, datatypes.BYTES, spec.datatype):
                raise _wrong_datatype(tensor.name, dtype, spec.datatype)

    def check_inputs(self, inputs: Mapping[str, Array]) -> int:
        """Validate inputs; return the request's rows (1 for a model without a batch dimension)."""
        self.check_input_names(inputs)
        rows: int | None = None
        for spec in self.inputs.values():
            array = inputs.get(spec.name)
            if array is None:
                continue  # optional: check_input_names let it be absent
            dtype = datatypes.from_numpy(array.dtype)
            if dtype is not spec.datatype:
                raise _wrong_datatype(spec.name, dtype, spec.datatype)
            if dtype is datatypes.BYTES and self.text_bytes:
                _check_text(spec.name, array)
            shape = array.shape
            if self.max_batch_size > 0:
                if len(shape) == 0 or not spec.matches(shape[1:]):
                    said = triton_text.unexpected_shape(
                        spec.name, self.model, self.wire_shape(spec), list(shape)
                    )
                    raise WrongShape(said, spec.name)
                batch = shape[0]
                if rows is None:
                    rows = batch
                elif batch != rows:
                    raise InvalidRequest(
                        f"input '{spec.name}': batch dimension {batch} differs from the other inputs' {rows}"
                    )
            elif not spec.matches(shape):
                said = triton_text.unexpected_shape(spec.name, self.model, list(spec.dims), list(shape))
                raise WrongShape(said, spec.name)
            if spec.reshape is not None:
                _check_reshape(spec, shape[1:] if self.max_batch_size > 0 else shape)
        self._check_ties(inputs)
        if self.max_batch_size <= 0:
            return 1
        if rows is None or rows < 1:
            raise InvalidRequest(f"request for model '{self.model}' has a batch dimension of 0 rows")
        if rows > self.max_batch_size:
            raise InvalidRequest(triton_text.batch_too_large(self.model, self.max_batch_size, rows))
        return rows

    def _check_ties(self, inputs: Mapping[str, Array]) -> None:
        """Sizes the graph names alike agree: a pick bounded by one input's steps reads the next
        request's rows of another input with fewer steps, where onnxruntime checks nothing."""
        for tie in self.ties:
            first: tuple[str, int, int] | None = None
            for place in tie.places:
                size, said = self._tied_size(place, inputs)
                if size is None:
                    continue  # an optional input left out, with no initializer of its own
                if first is None:
                    first = (said, place.axis, size)
                elif size != first[2]:
                    raise InvalidRequest(
                        f"{said}: dim {place.axis} is {size}, but {first[0]} dim {first[1]} is "
                        f"{first[2]}; the model's graph names both '{tie.name}', and requests batched "
                        "together are read as equal there"
                    )

    def _tied_size(self, place: TiePlace, inputs: Mapping[str, Array]) -> tuple[int | None, str]:
        """The size the model sees at `place`, and how the message names its input."""
        array = inputs.get(place.input)
        if array is None:
            return place.default, f"input '{place.input}' (left out: its initializer's)"
        reshape = self.inputs[place.input].reshape
        if reshape is None:
            return array.shape[place.axis], f"input '{place.input}'"
        seen = _reshaped(reshape, array.shape[1:])
        return seen[place.axis - 1], f"input '{place.input}' (as reshaped to {[array.shape[0], *seen]})"

    def check_texts(self, inputs: Mapping[str, Array]) -> None:
        """The text of BYTES inputs, as check_inputs checks it (for inputs read after it)."""
        for name, array in inputs.items():
            if self.text_bytes and array.dtype.kind in "OSU":
                _check_text(name, array)

    def check_input_names(self, names: Collection[str]) -> None:
        """Every input named is the model's, and every required one is named (Triton's words)."""
        for name in names:
            if name not in self.inputs:
                raise InvalidRequest(triton_text.unexpected_input(name, self.model, self.inputs))
        missing = [s.name for s in self.inputs.values() if not s.optional and s.name not in names]
        if missing:
            required = sum(not s.optional for s in self.inputs.values())
            message = triton_text.missing_inputs(self.model, names, missing, required, len(self.inputs))
            raise InvalidRequest(message)

    def check_outputs(self, names: Sequence[str]) -> Sequence[str]:
        """The outputs to return: the requested ones, checked, or all of them."""
        if not names:
            return list(self.outputs)
        seen: set[str] = set()
        for name in names:
            if name not in self.outputs:
                raise InvalidRequest(
                    f"unknown output '{name}' requested from model '{self.model}' "
                    f"(outputs: {', '.join(self.outputs)})"
                )
            if name in seen:  # Triton refuses it too; the answer would hold the tensor twice
                raise InvalidRequest(f"output '{name}' is requested more than once")
            seen.add(name)
        return names


def _check_text(name: str, array: Array) -> None:
    # onnxruntime string tensors hold text: reject undecodable bytes here, before they could fail
    # a whole batch of other callers' requests inside the backend.
    for index, item in enumerate(array.reshape(-1)):
        if isinstance(item, bytes):
            try:
                item.decode()
            except UnicodeDecodeError:
                raise InvalidRequest(f"input '{name}': BYTES element {index} is not UTF-8 text") from None


def _reshaped(reshape: Sequence[int], row_shape: Sequence[int]) -> list[int]:
    """A row's shape after the config's `reshape` (its -1 what the row's elements leave; checked
    by _check_reshape to divide evenly)."""
    fixed = math.prod(d for d in reshape if d != -1)
    rest = math.prod(row_shape) // fixed if fixed else 0
    return [rest if d == -1 else d for d in reshape]


def _check_reshape(spec: TensorSpec, row_shape: Sequence[int]) -> None:
    """A variable dimension in `reshape` takes what the row's elements leave: they must divide
    evenly (it failed the whole batch INTERNAL in the run's reshape, as a server error)."""
    assert spec.reshape is not None
    count = math.prod(row_shape)
    fixed = math.prod(d for d in spec.reshape if d != -1)
    fits = count == fixed if -1 not in spec.reshape else (count % fixed == 0 if fixed else count == 0)
    if not fits:
        need = f"a multiple of {fixed}" if -1 in spec.reshape else str(fixed)
        raise InvalidRequest(
            f"input '{spec.name}': {count} elements per row cannot take the model's reshape "
            f"{list(spec.reshape)} ({need} needed)"
        )


def _wrong_datatype(name: str, sent: datatypes.Datatype, model: datatypes.Datatype) -> WrongDatatype:
    message = f"input '{name}': datatype {sent.wire} does not match the model's {model.wire}"
    return WrongDatatype(message, name, sent.wire, model.wire)
