"""server/backends/int_division_guard.py: what session 48's mutation survivors showed untested.

- Where from opset 9 on (`where=opset >= WHERE_OPSET`): at opset 9 and 13 the safe divisor is one
  Where, not the Add form of opsets 7 and 8 (the same values: only the nodes tell).
- A model importing no default-domain opset is taken as opset 1 and refused with that reason (a
  None or missing fallback raised another error, a 2 named the wrong opset).
- `load_external_data=False`: the guard does not read a model's external weights; its bytes keep
  them external (read by the session beside the file), not inlined into memory.
- Typing (`_inferred`): a division typed only through initializers (onnx's inference needs them
  as typed inputs), a model with a local function that does not divide (its nodes' domains
  respelt, not None), a model importing "ai.onnx" and "" at two versions (no "" import added).

Not pinned, equivalent: `load_external_data=None` (onnx reads it as a truth value); the typing
copy's `ir_version` unset and its initializer inputs without dims (types do not depend on either);
the "" import added for an "ai.onnx"-only model dropped or renamed (onnx 1.23's inference reads an
"ai.onnx" import as the default domain) or added to a ""-only model (the same version again).

Every run divides only through the guard or by nonzero values, so it is safe on any onnxruntime."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.int_division_guard import (
    DivisionGuard,
    GuardUnavailable,
    division_guard_for,
    guard_model,
    session_source,
)
from server.backends.onnxruntime_backend import CPU
from tests.support.division_models import external_data_div, opset_div, save

LOGGER = "server.backends.int_division_guard"
MIN32 = int(np.iinfo(np.int32).min)


def _value(name: str, elem: int, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _guarded(path: Path, caplog: pytest.LogCaptureFixture) -> DivisionGuard:
    """The model's guard, made as the backend makes it, with no WARNING."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        guard = division_guard_for(path, path.stem, ort.__version__)
    assert guard is not None and caplog.records == []
    return guard


def _run(guard: DivisionGuard, feed: dict[str, np.ndarray], own: list[str]) -> list[np.ndarray]:
    s = ort.InferenceSession(guard.model_bytes, providers=[CPU])
    return list(s.run([*own, *guard.flags], feed))


@pytest.mark.parametrize("opset", [9, 13])
def test_from_opset_9_on_the_safe_divisor_is_a_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, opset: int
) -> None:
    """Opset 9 is Where's first: guarded with it (`>` in place of `>=` would build the Add form
    there, `where=None` everywhere); and it answers 1-divisions at a zero and at MIN / -1."""
    guard = _guarded(opset_div(tmp_path / "m.onnx", opset, TensorProto.INT32), caplog)
    ops = [n.op_type for n in onnx.load_from_string(guard.model_bytes).graph.node]
    assert "Where" in ops and "Add" not in ops
    x = np.asarray([7, MIN32, 9, MIN32], np.int32)
    y = np.asarray([0, -1, 2, 2], np.int32)
    q, zeros, overflows = _run(guard, {"x": x, "y": y}, ["q"])
    assert q.tolist() == [7, MIN32, 4, MIN32 // 2] and (int(zeros), int(overflows)) == (1, 1)


def test_a_model_importing_no_default_domain_is_refused_as_opset_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no "" or "ai.onnx" import, ONNX's ops are read as opset 1, older than the guard's
    nodes: one WARNING with that reason, no guard (not a TypeError or StopIteration instead)."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "y"], ["q"], name="Div_noimport")],
        "no_default_domain",
        [_value("x", TensorProto.INT32, [3]), _value("y", TensorProto.INT32, [3])],
        [_value("q", TensorProto.INT32, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("com.example", 1)])
    path = save(model, tmp_path / "noimport.onnx")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert division_guard_for(path, "noimport", "1.23.2") is None
    assert [r.getMessage() for r in caplog.records] == [
        "model noimport: integer Div/Mod left unguarded (onnxruntime 1.23.2 ends the process on a "
        "zero divisor or MIN / -1; a request with one will end this server): opset 1 is older than "
        "the guard's nodes (opset 7 or newer is needed)"
    ]


def test_external_weights_are_not_read_by_the_guard(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The guard parses the model without its external data: the rewritten bytes still point at
    `w.bin` (a load with the data would inline every weight into the bytes held per session), and
    a session from them reads `w` beside the file as the plain model does."""
    path = external_data_div(tmp_path / "ext" / "m.onnx")
    guard = _guarded(path, caplog)
    (weight,) = onnx.load_from_string(guard.model_bytes).graph.initializer
    assert weight.data_location == TensorProto.EXTERNAL and not weight.raw_data
    assert {e.key: e.value for e in weight.external_data}["location"] == "w.bin"
    options = ort.SessionOptions()
    s = ort.InferenceSession(session_source(guard, path, options), options, providers=[CPU])
    x, y = np.asarray([5, 7, 1], np.int32), np.asarray([2, 0, 3], np.int32)
    q, *counts = s.run(["q", *guard.flags], {"x": x, "y": y})
    assert q.tolist() == [5, 21, 1] and [int(c) for c in counts] == [1, 0]


def test_a_division_typed_only_through_initializers_is_guarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """d = table[i] / scale[i], both gathered from initializers: onnx's inference types the Gathers
    only when the initializers stand as typed inputs of the typing copy (the initializers that are
    not graph inputs; the mutant made inputs of the others only)."""
    table = numpy_helper.from_array(np.asarray([10, 20, 30], np.int64), "table")
    scale = numpy_helper.from_array(np.asarray([2, 0, 4], np.int64), "scale")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "i"], ["t"]),
            helper.make_node("Gather", ["scale", "i"], ["s"]),
            helper.make_node("Div", ["t", "s"], ["d"], name="Div_gathered"),
            helper.make_node("Neg", ["d"], ["q"]),
        ],
        "gathered",
        [_value("i", TensorProto.INT64, ["N"])],
        [_value("q", TensorProto.INT64, ["N"])],
        initializer=[table, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    guard = _guarded(save(model, tmp_path / "gathered.onnx"), caplog)
    assert guard.nodes == ("Div_gathered", "Div_gathered")
    q, zeros, overflows = _run(guard, {"i": np.asarray([0, 1, 2], np.int64)}, ["q"])
    assert q.tolist() == [-5, -20, -7] and (int(zeros), int(overflows)) == (1, 0)


def test_a_model_with_a_local_function_that_does_not_divide_is_guarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The function stays (only dividing ones are inlined), so the typing copy respells its nodes'
    domains too; passing None there raised, and the model's Div was left unguarded."""
    double = helper.make_function(
        "local",
        "Double",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        opset_imports=[helper.make_opsetid("", 13)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Double", ["x"], ["x2"], domain="local"),
            helper.make_node("Div", ["x2", "y"], ["q"], name="Div_main"),
        ],
        "with_function",
        [_value("x", TensorProto.INT32, [3]), _value("y", TensorProto.INT32, [3])],
        [_value("q", TensorProto.INT32, [3])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("local", 1)],
        functions=[double],
    )
    guard = _guarded(save(model, tmp_path / "function.onnx"), caplog)
    assert guard.nodes == ("Div_main", "Div_main")
    assert [f.name for f in onnx.load_from_string(guard.model_bytes).functions] == ["Double"]
    x, y = np.asarray([7, 9, 4], np.int32), np.asarray([2, 0, 4], np.int32)
    q, zeros, overflows = _run(guard, {"x": x, "y": y}, ["q"])
    assert q.tolist() == [7, 18, 2] and (int(zeros), int(overflows)) == (1, 0)


def test_guard_model_refuses_no_default_domain_itself() -> None:
    """The same refusal straight from `guard_model` (GuardUnavailable, opset 1)."""
    graph = helper.make_graph(
        [helper.make_node("Mod", ["x", "y"], ["q"], name="Mod_noimport")],
        "no_default_domain",
        [_value("x", TensorProto.INT64, [3]), _value("y", TensorProto.INT64, [3])],
        [_value("q", TensorProto.INT64, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("com.example", 1)])
    with pytest.raises(GuardUnavailable, match=r"^opset 1 is older than the guard's nodes"):
        guard_model(model)


def test_a_model_importing_ai_onnx_and_the_empty_domain_is_typed_at_its_own_versions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Imports "ai.onnx" 11 then "" 14 (one domain, spelt twice; onnxruntime runs Trilu, opset
    14, so it reads 14): the typing copy gets no extra "" import. An extra "" at the first version
    (11, as the mutant added to every model) makes onnx's inference read Trilu at 11, where it does
    not exist: the Div's values lose their types and the model was left unguarded."""
    v = [_value(name, TensorProto.INT64, [3, 3]) for name in ("x", "y", "q")]
    graph = helper.make_graph(
        [
            helper.make_node("Trilu", ["x"], ["tx"]),
            helper.make_node("Trilu", ["y"], ["ty"]),  # upper triangle: zeros below the diagonal
            helper.make_node("Div", ["tx", "ty"], ["d"], name="Div_trilu"),
            helper.make_node("Neg", ["d"], ["q"]),
        ],
        "two_spellings",
        v[:2],
        v[2:],
    )
    imports = [helper.make_opsetid("ai.onnx", 11), helper.make_opsetid("", 14)]
    guard = _guarded(save(helper.make_model(graph, opset_imports=imports), tmp_path / "two.onnx"), caplog)
    assert guard.nodes == ("Div_trilu", "Div_trilu")
    x = np.full((3, 3), 6, np.int64)
    y = np.full((3, 3), 2, np.int64)
    q, zeros, overflows = _run(guard, {"x": x, "y": y}, ["q"])
    assert q.tolist() == [[-3, -3, -3], [0, -3, -3], [0, 0, -3]] and (int(zeros), int(overflows)) == (3, 0)
