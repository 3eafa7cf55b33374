"""One table for tensor element types: protocol strings, config enums and numpy dtypes.

KServe v2 names datatypes with strings ("FP32"), Triton's config with enums (TYPE_FP32), numpy and
onnxruntime with dtypes. BYTES tensors are numpy object arrays of `bytes`; BF16 tensors are arrays of
ml_dtypes.bfloat16 (numpy has no bfloat16; onnxruntime needs them passed as OrtValues, see
server/backends/bf16.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from protos import model_config_pb2 as mc


@dataclass(frozen=True, slots=True)
class Datatype:
    wire: str  # KServe v2 datatype string
    config: int  # model_config_pb2.DataType value
    numpy: np.dtype  # element dtype; object for BYTES
    onnx: str  # onnxruntime's type string, e.g. "tensor(float)"


_ALL = (
    Datatype("BOOL", mc.TYPE_BOOL, np.dtype(np.bool_), "tensor(bool)"),
    Datatype("UINT8", mc.TYPE_UINT8, np.dtype(np.uint8), "tensor(uint8)"),
    Datatype("UINT16", mc.TYPE_UINT16, np.dtype(np.uint16), "tensor(uint16)"),
    Datatype("UINT32", mc.TYPE_UINT32, np.dtype(np.uint32), "tensor(uint32)"),
    Datatype("UINT64", mc.TYPE_UINT64, np.dtype(np.uint64), "tensor(uint64)"),
    Datatype("INT8", mc.TYPE_INT8, np.dtype(np.int8), "tensor(int8)"),
    Datatype("INT16", mc.TYPE_INT16, np.dtype(np.int16), "tensor(int16)"),
    Datatype("INT32", mc.TYPE_INT32, np.dtype(np.int32), "tensor(int32)"),
    Datatype("INT64", mc.TYPE_INT64, np.dtype(np.int64), "tensor(int64)"),
    Datatype("FP16", mc.TYPE_FP16, np.dtype(np.float16), "tensor(float16)"),
    Datatype("BF16", mc.TYPE_BF16, np.dtype(ml_dtypes.bfloat16), "tensor(bfloat16)"),
    Datatype("FP32", mc.TYPE_FP32, np.dtype(np.float32), "tensor(float)"),
    Datatype("FP64", mc.TYPE_FP64, np.dtype(np.float64), "tensor(double)"),
    Datatype("BYTES", mc.TYPE_STRING, np.dtype(object), "tensor(string)"),
)

BY_WIRE: dict[str, Datatype] = {d.wire: d for d in _ALL}
BY_CONFIG: dict[int, Datatype] = {d.config: d for d in _ALL}
BY_ONNX: dict[str, Datatype] = {d.onnx: d for d in _ALL}
# Fixed-size element types by numpy dtype (BYTES is recognised by dtype.kind in "OSU").
BY_NUMPY: dict[np.dtype, Datatype] = {d.numpy: d for d in _ALL if d.wire != "BYTES"}
BYTES = BY_WIRE["BYTES"]


def from_numpy(dtype: np.dtype) -> Datatype:
    """The datatype of a numpy array; str/bytes/object arrays are BYTES."""
    if dtype.kind in "OSU":
        return BYTES
    try:
        return BY_NUMPY[dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype") from None


def config_name(config_type: int) -> str:
    """'TYPE_FP32' for mc.TYPE_FP32, for messages; an unknown number (a config may hold any) as itself."""
    if config_type not in mc.DataType.values():
        return str(config_type)
    return str(mc.DataType.Name(config_type))
