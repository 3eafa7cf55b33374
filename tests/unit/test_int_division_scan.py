"""server/backends/int_division_scan.py: whether a model file can hold a Div or Mod node, read
without its weights. It must never answer False for a model with one (the guard would then skip
it and a client's zero divisor end the server); a False for a model without one skips the parse."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends import int_division_scan
from server.backends.int_division_guard import division_guard_for
from server.backends.int_division_rewrite import has_division
from server.backends.int_division_scan import may_divide
from tests.support.division_models import (
    ai_onnx_div,
    external_constant_div,
    external_data_div,
    int_div,
    int_mod64,
    narrow_mods,
    save,
    sequence_map_div,
    subgraph_divisions,
)

MARKED = np.frombuffer(b"DivMod" * 4096, np.uint8)  # weights whose bytes hold both marks


def _weighted_identity(path: Path, node_name: str = "pass") -> Path:
    """y = x, beside an initializer and a sparse initializer whose bytes spell Div and Mod."""
    weights = numpy_helper.from_array(MARKED, "DivModWeights")
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(MARKED[:6].copy(), "values"),
        numpy_helper.from_array(np.arange(6, dtype=np.int64), "indices"),
        [64],
    )
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name=node_name)],
        "weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[weights],
        sparse_initializer=[sparse],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def _function_div(path: Path) -> Path:
    """q = local.Halve(x): the only Div is inside a model-local function, after marked weights."""
    function = helper.make_function(
        "local",
        "Halve",
        ["a"],
        ["b"],
        [helper.make_node("Div", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 13)],
    )
    graph = helper.make_graph(
        [helper.make_node("Halve", ["x"], ["q"], domain="local")],
        "function",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [3])],
        [helper.make_tensor_value_info("q", TensorProto.INT32, [3])],
        initializer=[numpy_helper.from_array(MARKED, "w")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    return save(model, path)


DIVIDING: dict[str, Callable[[Path], Path]] = {
    "int_div": int_div,
    "mod_only": int_mod64,
    "narrow_mods": narrow_mods,
    "if_and_loop_bodies": subgraph_divisions,
    "sequence_map_body": sequence_map_div,
    "external_weights": external_data_div,
    "external_constant": external_constant_div,
    "ai_onnx_domain": ai_onnx_div,
    "local_function": _function_div,
}


@pytest.mark.parametrize("build", DIVIDING.values(), ids=DIVIDING.keys())
def test_every_model_with_a_div_or_mod_node_may_divide(tmp_path: Path, build: Callable[[Path], Path]) -> None:
    path = build(tmp_path / "m" / "model.onnx")
    model = onnx.load(str(path), load_external_data=False)
    assert has_division(model.graph) or model.functions  # the model does divide
    assert may_divide(path)


def test_weights_spelling_the_marks_are_stepped_over(tmp_path: Path) -> None:
    path = _weighted_identity(tmp_path / "w.onnx")
    assert b"Div" in path.read_bytes() and b"Mod" in path.read_bytes()
    assert not may_divide(path)
    assert division_guard_for(path, "w", "1.23.2") is None


def test_a_mark_outside_the_weights_may_divide_and_the_full_look_decides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _weighted_identity(tmp_path / "w.onnx", node_name="Divider")
    assert may_divide(path)
    with caplog.at_level(logging.WARNING, logger="server.backends.int_division_guard"):
        assert division_guard_for(path, "w", "1.23.2") is None  # looked at: no division
    assert caplog.records == []


def test_a_non_minimal_length_is_read_as_protobuf_reads_it(tmp_path: Path) -> None:
    """The graph's length written in 5 bytes where 1 would do: protobuf takes it, so must the walk."""
    model = onnx.load(str(int_div(tmp_path / "div.onnx")))
    graph = model.graph.SerializeToString()
    rest = onnx.ModelProto()
    rest.CopyFrom(model)
    rest.ClearField("graph")
    size = len(graph)
    stretched = bytes([(size >> shift) & 0x7F | 0x80 for shift in (0, 7, 14, 21)] + [size >> 28])
    data = rest.SerializeToString() + b"\x3a" + stretched + graph  # field 7, length-delimited
    assert has_division(onnx.load_model_from_string(data).graph)
    (tmp_path / "stretched.onnx").write_bytes(data)
    assert may_divide(tmp_path / "stretched.onnx")


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff" * 16, b"\x3a\x40Div", b"\x0b\x0c"],  # empty, a bad varint, truncated, a group
    ids=["empty", "bad_varint", "truncated", "group"],
)
def test_what_the_walk_cannot_read_may_divide(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "odd.onnx").write_bytes(content)
    assert may_divide(tmp_path / "odd.onnx")


def test_a_missing_file_may_divide(tmp_path: Path) -> None:
    assert may_divide(tmp_path / "absent.onnx")  # the full look then reports it, as before


def test_a_file_that_shrinks_under_the_walk_may_divide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model copied over in place as it loads: the walk meets the end early and answers True (the
    # full look decides), never an error (and never SIGBUS: the file is read, not mapped).
    path = _weighted_identity(tmp_path / "m.onnx")
    assert not may_divide(path)
    fstat = os.fstat
    monkeypatch.setattr(
        int_division_scan.os, "fstat", lambda fd: SimpleNamespace(st_size=fstat(fd).st_size + 64)
    )
    assert may_divide(path)
