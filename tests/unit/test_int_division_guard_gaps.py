"""The integer division guard (server/backends/int_division_guard.py) on models it had left
unguarded with a WARNING: opsets 7 and 8 (no Where), a Div spelt in domain "ai.onnx", a Constant
divisor in external data and a Div inside a SequenceMap body. Every run here is safe on any
onnxruntime: plain models run only on divisors that do not trap, guarded ones divide by 1 there."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from server.backends.int_division_guard import (
    BY_ZERO,
    OVERFLOW,
    DivisionGuard,
    division_guard_for,
    guard_model,
)
from server.backends.onnxruntime_backend import CPU
from tests.support.division_models import ai_onnx_div, external_constant_div, opset_div, sequence_map_div

LOGGER = "server.backends.int_division_guard"
TYPES = {TensorProto.INT32: np.int32, TensorProto.INT64: np.int64, TensorProto.UINT32: np.uint32}


def guarded(path: Path, caplog: pytest.LogCaptureFixture) -> DivisionGuard:
    """The model's guard, made as the backend makes it, with no WARNING."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        guard = division_guard_for(path, path.stem, ort.__version__)
    assert guard is not None and caplog.records == []
    return guard


def run(model: bytes | Path, feed: dict[str, np.ndarray], flags: tuple[str, ...] = ()) -> list[np.ndarray]:
    """The model's own outputs, then each flag's value."""
    source = model if isinstance(model, bytes) else str(model)
    s = ort.InferenceSession(source, providers=[CPU])
    own = [o.name for o in s.get_outputs() if o.name not in flags]
    return list(s.run([*own, *flags], feed))


@pytest.mark.parametrize("opset", [7, 8])
@pytest.mark.parametrize("elem", sorted(TYPES), ids=TensorProto.DataType.Name)
def test_an_opset_without_where_is_guarded_with_add_and_answers_as_plain_onnxruntime(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, opset: int, elem: int
) -> None:
    path = opset_div(tmp_path / "old.onnx", opset, elem)
    guard = guarded(path, caplog)
    assert not any(node.op_type == "Where" for node in onnx.load_from_string(guard.model_bytes).graph.node)
    dtype = TYPES[elem]
    info = np.iinfo(dtype)
    rng = np.random.default_rng(opset)
    x = rng.integers(info.min, info.max, size=256, dtype=dtype, endpoint=True)
    y = rng.integers(info.min, info.max, size=256, dtype=dtype, endpoint=True)
    x[:8], y[:8] = np.asarray([info.min, info.max, 7, 1, 0, info.max, info.min, 5], dtype), 1
    y[8:16] = np.asarray([info.max, info.min, 2, 1, 3, 5, 7, 9], dtype)
    if info.min < 0:
        y[16:24] = -1  # not under MIN: answered, no flag
        x[16:24] = rng.integers(info.min + 1, info.max, size=8, dtype=dtype)
    y[y == 0] = 3
    want = run(path, {"x": x, "y": y})[0]
    got, *counts = run(guard.model_bytes, {"x": x, "y": y}, guard.flags)
    assert (
        got.dtype == want.dtype
        and got.tobytes() == want.tobytes()
        and [int(c) for c in counts] == [0] * len(counts)
    )


@pytest.mark.parametrize("opset", [7, 8])
def test_an_opset_without_where_flags_exactly_the_zeros_and_min_over_minus_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, opset: int
) -> None:
    guard = guarded(opset_div(tmp_path / "old.onnx", opset, TensorProto.INT64), caplog)
    assert guard.nodes == ("Div_old", "Div_old") and guard.faults == (BY_ZERO, OVERFLOW)
    minimum = np.iinfo(np.int64).min
    x = np.asarray([7, minimum, minimum, 9, 0, minimum], np.int64)
    y = np.asarray([0, -1, 2, 0, 0, 1], np.int64)
    q, zeros, overflows = run(guard.model_bytes, {"x": x, "y": y}, guard.flags)
    assert (int(zeros), int(overflows)) == (3, 1)
    assert q.tolist() == [7, minimum, minimum // 2, 9, 0, minimum]  # divided by 1 where refused
    empty = np.zeros(0, np.int64)
    assert [int(c) for c in run(guard.model_bytes, {"x": empty, "y": empty}, guard.flags)[1:]] == [0, 0]


@pytest.mark.parametrize("imports", ["", "ai.onnx"])  # the guard's nodes are in "" either way
def test_a_div_spelt_in_domain_ai_onnx_is_guarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, imports: str
) -> None:
    path = ai_onnx_div(tmp_path / "ai.onnx", imports)
    guard = guarded(path, caplog)
    assert guard.nodes == ("Div_ai", "Div_ai")
    node = next(n for n in onnx.load_from_string(guard.model_bytes).graph.node if n.name == "Div_ai")
    assert node.domain == "ai.onnx"  # the model keeps its spelling; only the typing copy is changed
    x, y = np.asarray([7, -9, np.iinfo(np.int32).min], np.int32), np.asarray([2, 0, -1], np.int32)
    q, zeros, overflows = run(guard.model_bytes, {"x": x, "y": y}, guard.flags)
    assert (int(zeros), int(overflows)) == (1, 1) and q[0] == 3
    good = np.asarray([2, 4, -7], np.int32)
    assert (
        run(guard.model_bytes, {"x": x, "y": good}, guard.flags)[0].tolist()
        == run(path, {"x": x, "y": good})[0].tolist()
    )


def test_a_constant_divisor_in_external_data_is_guarded_and_read_beside_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = external_constant_div(tmp_path / "ext" / "m.onnx")
    guard = guarded(path, caplog)  # [2, -1, 4] unread at the look: not known safe
    options = ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
    s = ort.InferenceSession(guard.model_bytes, options, providers=[CPU])
    x = np.asarray([7, np.iinfo(np.int32).min, 9], np.int32)
    q, zeros, overflows = s.run(["q", *guard.flags], {"x": x})
    assert (int(zeros), int(overflows)) == (0, 1)
    q, *counts = s.run(["q", *guard.flags], {"x": np.asarray([7, 8, 9], np.int32)})
    assert q.tolist() == [3, -8, 2] and [int(c) for c in counts] == [0, 0]


def test_a_div_in_a_sequence_map_body_is_counted_over_every_item(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = sequence_map_div(tmp_path / "seq.onnx")
    guard = guarded(path, caplog)
    assert guard.nodes == ("Div_row (in Map_rows)", "Div_row (in Map_rows)")
    minimum = np.iinfo(np.int32).min
    x = np.asarray([[7, minimum, 9], [1, minimum, 3], [4, 5, 6]], np.int32)
    q, zeros, overflows = run(guard.model_bytes, {"x": x, "y": np.asarray([2, -1, 0], np.int32)}, guard.flags)
    assert (int(zeros), int(overflows)) == (3, 2)  # one zero per row, MIN / -1 in two rows
    y = np.asarray([2, -1, 4], np.int32)
    x[:, 1] = 5
    q, *counts = run(guard.model_bytes, {"x": x, "y": y}, guard.flags)
    assert q.tolist() == run(path, {"x": x, "y": y})[0].tolist() and [int(c) for c in counts] == [0, 0]


def test_a_sequence_map_over_no_items_counts_zero(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The flags' sums take an empty sequence (the model's own ConcatFromSequence does not: it
    is cut off here so that the mapped sequence is the output)."""
    model = onnx.load(str(sequence_map_div(tmp_path / "seq.onnx")))
    del model.graph.node[-1]
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_sequence_value_info("rows_q", TensorProto.INT32, None))
    onnx.save(model, str(tmp_path / "mapped.onnx"))
    guard = guard_model(onnx.load(str(tmp_path / "mapped.onnx")))
    assert guard is not None
    feed = {"x": np.zeros((0, 3), np.int32), "y": np.asarray([2, 0, -1], np.int32)}
    rows, *counts = run(guard.model_bytes, feed, guard.flags)
    assert rows == [] and [int(c) for c in counts] == [0, 0]


def test_an_opset_8_loop_body_is_guarded_without_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The counts leave the body as scan outputs and are summed by ReduceSum's pre-13 form."""
    value = helper.make_tensor_value_info
    body = helper.make_graph(
        [
            helper.make_node("Div", ["acc_in", "y"], ["acc_out"], name="Div_loop8"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            value("i", TensorProto.INT64, []),
            value("cond_in", TensorProto.BOOL, []),
            value("acc_in", TensorProto.INT64, [3]),
        ],
        [value("cond_out", TensorProto.BOOL, []), value("acc_out", TensorProto.INT64, [3])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "yes", "x"], ["l"], name="Loop_8", body=body)],
        "loop8",
        [
            value("x", TensorProto.INT64, [3]),
            value("y", TensorProto.INT64, [3]),
            value("trips", TensorProto.INT64, []),
        ],
        [value("l", TensorProto.INT64, [3])],
        initializer=[onnx.numpy_helper.from_array(np.asarray(True), "yes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    onnx.save(model, str(tmp_path / "loop8.onnx"))
    guard = guarded(tmp_path / "loop8.onnx", caplog)
    assert guard.nodes == ("Div_loop8 (in Loop_8)", "Div_loop8 (in Loop_8)")
    x, trips = np.asarray([100, -50, 7], np.int64), np.asarray(2, np.int64)
    feed = {"x": x, "y": np.asarray([3, 0, -1], np.int64), "trips": trips}
    assert [int(c) for c in run(guard.model_bytes, feed, guard.flags)[1:]] == [2, 0]  # a zero each trip
    feed["x"] = np.asarray([100, -50, np.iinfo(np.int64).min], np.int64)
    feed["y"] = np.asarray([3, 4, -1], np.int64)
    counts = [int(c) for c in run(guard.model_bytes, feed, guard.flags)[1:]]
    assert counts == [0, 2]  # MIN / -1 on each trip: divided by 1 there, MIN stays MIN
    good = {"x": np.asarray([100, -50, 7], np.int64), "y": np.asarray([3, 4, -2], np.int64), "trips": trips}
    assert (
        run(guard.model_bytes, good, guard.flags)[0].tolist()
        == run(tmp_path / "loop8.onnx", good)[0].tolist()
    )
    assert run(guard.model_bytes, {**good, "trips": np.asarray(0, np.int64)}, guard.flags)[1:] == [0, 0]
