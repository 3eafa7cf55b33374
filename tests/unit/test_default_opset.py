"""The opset the rewrites build their nodes for is ONNX's own operators' as onnxruntime reads it:
a model may import the default domain twice, as "ai.onnx" and as "", and onnxruntime keeps the
last import (checked: Trilu, opset 14, runs under ["ai.onnx" 11, "" 14] and not the other way
round). Both rewrites took the first: the division guard refused a model as too old that
onnxruntime runs at a newer opset, leaving its divisions unguarded (a client's zero divisor is a
SIGFPE that ends the server), and the per-row rewrite built ReduceMin's opset-17 form for an
opset-18 model, which onnxruntime refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from server.backends.graph_names import default_opset
from server.backends.int_division_guard import guard_model
from tests.unit.test_mutants_row_quantization import assert_each_row_as_alone, quantized


def _imports(*pairs: tuple[str, int]) -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid(domain, version) for domain, version in pairs]


def test_the_default_domains_last_import_is_its_opset_in_either_spelling() -> None:
    graph = helper.make_graph([], "g", [], [])
    for pairs, expected in [
        ((("ai.onnx", 11), ("", 14)), 14),
        ((("", 14), ("ai.onnx", 11)), 11),
        ((("", 13), ("com.microsoft", 1)), 13),
        ((("com.microsoft", 1),), None),
        ((), None),
    ]:
        model = helper.make_model(graph, opset_imports=_imports(*pairs))
        del model.opset_import[len(pairs) :]  # make_model adds a "" import when given none
        assert default_opset(model) == expected, pairs


def test_the_division_guard_reads_the_opset_onnxruntime_runs() -> None:
    # First "ai.onnx" 6 (older than the guard's nodes), then "" 13, which onnxruntime runs: guarded,
    # and a zero divisor is counted instead of reaching Div.
    value = [helper.make_tensor_value_info(name, TensorProto.INT32, ["N"]) for name in ("x", "y", "q")]
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "y"], ["q"], name="Div_q")], "g", value[:2], value[2:]
    )
    model = helper.make_model(graph, opset_imports=_imports(("ai.onnx", 6), ("", 13)), ir_version=8)
    guard = guard_model(model)
    assert guard is not None and guard.nodes == ("Div_q", "Div_q")
    session = ort.InferenceSession(guard.model_bytes, providers=["CPUExecutionProvider"])
    x, y = np.array([7, 7, -8], np.int32), np.array([2, 0, 4], np.int32)
    q, zeros, overflows = session.run(["q", *guard.flags], {"x": x, "y": y})
    assert (int(zeros), int(overflows)) == (1, 0)
    assert q[[0, 2]].tolist() == [3, -2]


def test_the_per_row_rewrite_reads_the_opset_onnxruntime_runs() -> None:
    # "ai.onnx" 17 first, then "" 18: ReduceMin takes its axes as an input (opset 18's form), or
    # onnxruntime refuses the rewritten graph ("Unrecognized attribute: axes").
    model = quantized("dql", opset=18)
    model.opset_import.insert(0, helper.make_opsetid("ai.onnx", 17))
    assert_each_row_as_alone(model, check=False)
