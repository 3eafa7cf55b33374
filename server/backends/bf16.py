"""Runs of models with BF16 inputs or outputs on onnxruntime.

numpy has no bfloat16, so the server holds BF16 tensors as ml_dtypes.bfloat16 arrays. onnxruntime's
`InferenceSession.run` takes neither those ("Numpy_type 256 can't be converted to MLDataType") nor
returns them ("No corresponding Numpy type for Tensor Type. bfloat16"). What it does take is an
OrtValue built from the 16-bit payload with the ONNX type named, run with `run_with_ort_values`;
a BF16 output is copied out of its OrtValue (the shape is known only after the run). Models without
BF16 tensors never come here and keep the plain `run` path.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from math import prod

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort

from batcher.types import Array

BF16 = np.dtype(ml_dtypes.bfloat16)
ONNX_TYPE = "tensor(bfloat16)"


def has_bf16(types: Sequence[str]) -> bool:
    """Whether any of the graph's tensor types (onnxruntime's spelling) is bfloat16."""
    return ONNX_TYPE in types


def string_inputs_refusal(model: str, string_inputs: Sequence[str]) -> str:
    """Why a model with BF16 tensors cannot also take strings: onnxruntime builds OrtValues (and
    binds inputs) only from non-string arrays, and `run` cannot take the BF16 ones."""
    names = ", ".join(f"'{name}'" for name in sorted(string_inputs))
    return (
        f"model '{model}': a model with BF16 tensors cannot have string inputs ({names}): onnxruntime's "
        "Python API passes BF16 only as OrtValues, which it cannot build from strings"
    )


def to_ort_value(array: Array) -> ort.OrtValue:
    """An input as an OrtValue; BF16 arrays go in as their 16-bit payload, typed BFLOAT16."""
    if array.dtype == BF16:
        payload = np.require(array, requirements="C").view(np.uint16)  # ascontiguousarray makes 0-d 1-d
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(payload, onnx.TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(np.require(array, requirements="C"))


def from_ort_value(value: ort.OrtValue) -> Array:
    """An output as a numpy array that owns its memory; BF16 is copied out of the OrtValue's
    buffer (the OrtValue is freed after the run, so a view would dangle)."""
    if value.data_type() != ONNX_TYPE:
        return np.asarray(value.numpy())
    shape = tuple(int(d) for d in value.shape())
    count = prod(shape)
    out = np.empty(count, dtype=np.uint16)
    if count:
        nbytes = value.tensor_size_in_bytes()
        if nbytes != count * 2:  # a sanity check on what onnxruntime reports, never expected
            raise RuntimeError(f"bfloat16 output holds {nbytes} bytes for shape {list(shape)}")
        ctypes.memmove(out.ctypes.data, value.data_ptr(), nbytes)
    result: Array = out.view(BF16).reshape(shape)
    return result


def run_with_bf16(
    session: ort.InferenceSession,
    output_names: Sequence[str],
    feed: Mapping[str, Array],
    run_options: ort.RunOptions,
) -> list[Array]:
    """One run through OrtValues: `session.run`'s results, for a model with BF16 tensors."""
    values = {name: to_ort_value(array) for name, array in feed.items()}
    results = session.run_with_ort_values(list(output_names), values, run_options)
    return [from_ort_value(value) for value in results]
