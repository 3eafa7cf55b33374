"""Which model files may hold a Loop (server/models/value_costed.py): their runs never go inline."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from server.models.value_costed import value_costed


def _save(path: Path, op: str) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    node = helper.make_node(op, ["x"], ["y"])
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.save(model, str(path))
    return path


def test_a_model_holding_a_loop_is_value_costed(tmp_path: Path) -> None:
    assert not value_costed(_save(tmp_path / "relu.onnx", "Relu"))
    loop = _save(tmp_path / "loop.onnx", "Loop")  # not a valid Loop: only its op_type is read
    assert value_costed(loop)
    assert not value_costed(tmp_path / "missing.onnx")
    assert not value_costed(tmp_path)  # a directory (the identity backend's path)
