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
from server.backends.ort_known_crashes import known_crash, onnxruntime_version, unnamed_required_output


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
    assert why == (
        "the ExpandDims node making 'y' (com.microsoft) crashes onnxruntime 1.23.2, this server's, as it "
        "opens a session (the whole server with it); onnxruntime 1.31 opens it: write it as ONNX's "
        "Unsqueeze, or run the server with a newer onnxruntime (Python 3.11 or later)"
    )
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


def _graph(nodes: list[onnx.NodeProto], domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    halves = numpy_helper.from_array(np.array([2, 2], np.int64), "halves")
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(domain, 1) for domain in domains)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [halves]), opset_imports=opsets)
    model.ir_version = 8
    return model


def test_an_unnamed_required_output_is_named_by_op_and_place_wherever_it_sits() -> None:
    relu = helper.make_node("Relu", ["x"], ["y"])
    second = helper.make_node("Split", ["x", "halves"], ["a", ""], axis=1)
    assert unnamed_required_output(_graph([relu, second])) == (
        "the Split node's output 1 ('outputs') is left unnamed, which ONNX allows only for an optional "
        "output (onnxruntime crashes running such a graph): name it"
    )
    spelled = helper.make_node("Split", ["x", "halves"], ["", "b"], axis=1, domain="ai.onnx")
    assert unnamed_required_output(_graph([spelled])) is not None  # ONNX's domain by its other name
    unknown = helper.make_node("NotAnOp", ["x"], ["", "u"])  # onnx knows no such op: passed over
    assert unnamed_required_output(_graph([unknown, second])) is not None
    custom = helper.make_node("Split", ["x", "halves"], ["", "c"], domain="local")  # another domain's op
    assert unnamed_required_output(_graph([custom], ("local",))) is None
    mask = helper.make_node("Dropout", ["x"], ["y", ""])  # its mask is optional
    assert unnamed_required_output(_graph([mask])) is None


def test_a_crashing_op_with_no_output_is_still_named() -> None:
    bare = helper.make_node("ExpandDims", ["x", "axis"], [], domain="com.microsoft")
    why = known_crash(_graph([bare], ("com.microsoft",)), "1.23.2")
    assert why is not None and why.startswith("the ExpandDims node making '' (com.microsoft)"), why
