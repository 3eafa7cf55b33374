"""`sluiceway optimize --fp16` of a model whose graph output another node also reads (y = MatMul,
z = Relu(y), outputs y and z; a stateful model's `state_out = Identity(y)`): onnxconverter-common
left the FP16 tensor under the output's name and onnxruntime refused the result ("Type
(tensor(float16)) of output arg ... does not match expected type (tensor(float))"; a tester,
session 49). Each such output now has an Identity of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.optimize.quantize import convert_fp16

pytest.importorskip("onnxconverter_common", reason="the optimize extra is not installed")


def test_an_output_read_inside_the_graph_converts_and_keeps_fp32_outputs(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "W"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3]) for name in ("y", "z")],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    convert_fp16(tmp_path / "m.onnx", tmp_path / "f.onnx")
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})
    converted = ort.InferenceSession(str(tmp_path / "f.onnx"))
    assert [o.name for o in converted.get_outputs()] == ["y", "z"]
    for got, expected in zip(converted.run(None, {"x": x}), want, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)
