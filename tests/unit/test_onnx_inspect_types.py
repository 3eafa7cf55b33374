"""Graph types spelt as onnxruntime spells them (server/backends/onnx_inspect.py): completion names
them in its refusals, which had read `sequence_type`, `optional_type` or `None`."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from server.backends.onnx_inspect import _onnx_type


def test_each_kind_of_type_is_spelt_as_onnxruntime_does() -> None:
    tensor = helper.make_tensor_type_proto(TensorProto.FLOAT, None)
    assert _onnx_type(tensor) == "tensor(float)"
    assert _onnx_type(helper.make_sequence_type_proto(tensor)) == "seq(tensor(float))"
    assert _onnx_type(helper.make_optional_type_proto(tensor)) == "optional(tensor(float))"
    nested = helper.make_optional_type_proto(helper.make_sequence_type_proto(tensor))
    assert _onnx_type(nested) == "optional(seq(tensor(float)))"
    mapped = helper.make_map_type_proto(
        TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.INT64, None)
    )
    assert _onnx_type(mapped) == "map(string,tensor(int64))"
    assert _onnx_type(onnx.TypeProto()) == "no type"
    sparse = onnx.TypeProto()
    sparse.sparse_tensor_type.elem_type = TensorProto.FLOAT
    assert _onnx_type(sparse) == "sparse_tensor_type"
