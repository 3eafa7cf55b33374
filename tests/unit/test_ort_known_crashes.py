"""Ops that crash an install's onnxruntime opening a session (server/backends/ort_known_crashes.py):
onnxruntime 1.23 (Python 3.10's) aborts the process on com.microsoft's ExpandDims, so a repository
holding one took the whole server down at its load (session 56). The load refuses such a model
there, naming the node and the release that opens it; a newer onnxruntime loads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends import onnx_inspect
from server.backends.onnxruntime_backend import BackendLoadError
from server.backends.ort_known_crashes import known_crash, onnxruntime_version


def _model(domain: str = "com.microsoft", nested: bool = False) -> onnx.ModelProto:
    expand = helper.make_node("ExpandDims", ["x", "axis"], ["y"], domain=domain)
    axis = numpy_helper.from_array(np.array(1, np.int32), "axis")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 4])
    if nested:  # inside an If's branches
        branch = helper.make_graph([expand], "b", [], [y], [axis])
        node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
        cond = numpy_helper.from_array(np.array(True), "c")
        graph = helper.make_graph([node], "g", [x], [y], [cond])
    else:
        graph = helper.make_graph([expand], "g", [x], [y], [axis])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


@pytest.mark.parametrize("nested", [False, True])
def test_an_op_that_crashes_this_onnxruntime_is_named_before_a_session_opens(nested: bool) -> None:
    why = known_crash(_model(nested=nested), "1.23.2")
    assert why is not None and why.startswith("the ExpandDims node making 'y' (com.microsoft)"), why
    assert "crashes onnxruntime 1.23.2" in why and "onnxruntime 1.31 opens it" in why, why
    assert known_crash(_model(nested=nested), "1.31.1") is None
    assert known_crash(_model(nested=nested), "1.32.0.dev20261201") is None
    assert known_crash(_model(domain="local"), "1.23.2") is None  # another domain's op of that name
    assert known_crash(_model(), "unknown") is None


def test_the_load_refuses_it_as_the_model_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(_model(), str(path))
    monkeypatch.setattr(onnx_inspect, "onnxruntime_version", lambda: "1.23.2")
    with pytest.raises(BackendLoadError, match="the ExpandDims node making 'y'"):
        onnx_inspect.read_signature(path)
    monkeypatch.setattr(onnx_inspect, "onnxruntime_version", lambda: "1.31.1")
    assert [t.name for t in onnx_inspect.read_signature(path).inputs] == ["x"]


def test_the_version_read_is_this_installs() -> None:
    import onnxruntime

    assert onnxruntime_version() == onnxruntime.__version__
