"""server/backends/int_division_guard.py: integer Div/Mod rewritten so that a zero divisor never
reaches onnxruntime, and flagged; and the onnxruntime backend running such a model on each of its
run paths (session.run, IO binding, BF16 OrtValues). Every run here is safe on any onnxruntime: the
originals run only with nonzero divisors, the rewritten models divide by 1 where a zero was."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from server.backends.int_division_guard import (
    BY_ZERO,
    OVERFLOW,
    RESERVED_PREFIX,
    DivisionGuard,
    division_guard_for,
    guard_model,
)
from server.backends.onnx_inspect import inspect_onnx
from server.backends.onnxruntime_backend import CPU, OrtBackend, OrtOptions
from server.errors import ModelRefusedInput
from tests.support.division_models import (
    constant_zero_divisor,
    external_data_div,
    int_div,
    mixed_divisions,
    narrow_mods,
    subgraph_divisions,
)

FEED = {
    "x": np.asarray([[7, -7, 9], [100, 3, -1]], np.int32),
    "y": np.asarray([[2, 2, -4], [7, 5, 1]], np.int32),
    "a": np.asarray([[7, -7, 9], [100, 3, -1]], np.int64),
    "b": np.asarray([[3, 3, -4], [7, -5, 2]], np.int64),
    "u": np.asarray([[1, 2, 3], [4, 5, 6]], np.float32),
    "v": np.asarray([[0, 2, 3], [4, 0, 6]], np.float32),
}


def session(model: bytes | Path) -> ort.InferenceSession:
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=[CPU])


def guarded(path: Path) -> DivisionGuard:
    guard = guard_model(onnx.load(str(path)))
    assert guard is not None
    return guard


def guarded_model(model: onnx.ModelProto) -> DivisionGuard:
    guard = guard_model(model)
    assert guard is not None
    return guard


def run_guarded(guard: DivisionGuard, feed: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """The model's own outputs and each flag's count."""
    s = session(guard.model_bytes)
    own = [o.name for o in s.get_outputs() if o.name not in guard.flags]
    values = s.run([*own, *guard.flags], feed)
    return values[: len(own)], [int(v) for v in values[len(own) :]]


def test_integer_divisions_by_a_variable_are_guarded_constants_and_floats_left_alone(tmp_path: Path) -> None:
    guard = guarded(mixed_divisions(tmp_path / "m.onnx"))
    assert guard.nodes == ("Div_3", "Div_3", "Mod_int64")  # a signed Div: zeros, and MIN / -1
    assert guard.faults == (BY_ZERO, OVERFLOW, BY_ZERO)
    assert len(guard.flags) == 3 and all(f.startswith(RESERVED_PREFIX) for f in guard.flags)
    rewritten = onnx.load_from_string(guard.model_bytes)
    divisors = {n.name: n.input[1] for n in rewritten.graph.node if n.op_type in ("Div", "Mod")}
    assert divisors["Div_const"] == "nonzero" and divisors["Div_float"] == "v"
    assert divisors["Div_3"].startswith(RESERVED_PREFIX) and divisors["Mod_int64"].startswith(RESERVED_PREFIX)
    onnx.checker.check_model(rewritten)


def test_the_rewritten_model_answers_as_the_original_for_nonzero_divisors(tmp_path: Path) -> None:
    path = mixed_divisions(tmp_path / "m.onnx")
    original = session(path).run(None, FEED)
    outputs, counts = run_guarded(guarded(path), FEED)
    assert counts == [0, 0, 0]
    for want, got in zip(original, outputs, strict=True):
        np.testing.assert_array_equal(got, want)
    assert outputs[0].tolist() == [[3, -3, -2], [14, 0, -1]]  # truncated toward zero, as ONNX says


@pytest.mark.parametrize(
    ("zero_in", "flagged"),
    [("y", [1, 0, 0]), ("b", [0, 0, 1]), ("both", [1, 0, 1])],
)
def test_the_flag_is_set_exactly_where_a_divisor_holds_a_zero(
    tmp_path: Path, zero_in: str, flagged: list[int]
) -> None:
    feed = {name: array.copy() for name, array in FEED.items()}
    for name in ("y", "b") if zero_in == "both" else (zero_in,):
        feed[name][1, 2] = 0
    _, counts = run_guarded(guarded(mixed_divisions(tmp_path / "m.onnx")), feed)
    assert [min(c, 1) for c in counts] == flagged


def test_an_empty_batch_sets_no_flag(tmp_path: Path) -> None:
    empty = {name: array[:0] for name, array in FEED.items()}
    outputs, counts = run_guarded(guarded(mixed_divisions(tmp_path / "m.onnx")), empty)
    assert counts == [0, 0, 0] and outputs[0].shape == (0, 3)


def test_narrow_integer_types_are_guarded_through_int64(tmp_path: Path) -> None:
    path = narrow_mods(tmp_path / "n.onnx")
    guard = guarded(path)
    assert guard.nodes == ("Mod_int8", "Mod_uint16")  # Mod_const: a Constant with no zero
    feed = {
        "a8": np.asarray([7, -7, 100], np.int8),
        "b8": np.asarray([3, 3, -9], np.int8),
        "a16": np.asarray([7, 65535, 1], np.uint16),
        "b16": np.asarray([2, 1000, 65535], np.uint16),
    }
    outputs, counts = run_guarded(guard, feed)
    assert counts == [0, 0]
    for want, got in zip(session(path).run(None, feed), outputs, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    feed["b16"][0] = 0
    assert run_guarded(guard, feed)[1] == [0, 1]


def test_a_constant_divisor_holding_a_zero_is_guarded(tmp_path: Path) -> None:
    guard = guarded(constant_zero_divisor(tmp_path / "z.onnx"))
    assert guard.nodes == ("Div_const_zero", "Div_const_zero")
    outputs, counts = run_guarded(guard, {"x": np.asarray([[4, 4, 10]], np.int64)})
    assert counts == [1, 0] and outputs[0].tolist() == [[2, 4, 2]]  # divided by 1: never an answer


def test_models_without_integer_divisions_are_not_rewritten(tmp_path: Path) -> None:
    model = onnx.load(str(mixed_divisions(tmp_path / "m.onnx")))
    kept = [n for n in model.graph.node if n.name in ("Div_const", "Div_float")]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    assert guard_model(model) is None


def test_every_runtime_gets_the_guard_unless_it_is_turned_off(tmp_path: Path) -> None:
    path = mixed_divisions(tmp_path / "m.onnx")  # 1.31 raises on a zero, but traps on MIN / -1
    for version in ("1.23.2", "1.31.1", "2.0.0", "x"):
        assert division_guard_for(path, "m", version) is not None
    assert division_guard_for(path, "m", "1.23.2", wanted=False) is None


def test_a_model_with_external_data_is_guarded_and_reads_its_weights_beside_its_file(tmp_path: Path) -> None:
    path = external_data_div(tmp_path / "ext" / "m.onnx")
    assert division_guard_for(path, "ext", "1.23.2") is not None
    b = backend(path, int_division_guard=True)
    try:
        good = {"x": np.asarray([7, -9, 100], np.int32), "y": np.asarray([2, 4, -7], np.int32)}
        assert b.run_blocking(good)["q"].tolist() == [7, -6, -42]  # (x * [2, 3, 3]) / y
        with pytest.raises(ModelRefusedInput, match="division by zero in node 'Div_ext'"):
            b.run_blocking({**good, "y": np.asarray([2, 0, -7], np.int32)})
    finally:
        b.close()


def test_an_opset_below_7_loads_unguarded_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = int_div(tmp_path / "old.onnx", opset=6)  # Equal/Add there ask for broadcast attributes
    with caplog.at_level(logging.WARNING, logger="server.backends.int_division_guard"):
        assert division_guard_for(path, "old", "1.23.2") is None
    (record,) = caplog.records
    assert "opset 6 is older than the guard's nodes" in record.getMessage()


def backend(path: Path, **options: bool) -> OrtBackend:
    executor = ThreadPoolExecutor(max_workers=1)
    return OrtBackend(path, OrtOptions(**options), [(CPU, {})], executor, model_name="div")  # type: ignore[arg-type]


@pytest.mark.parametrize("path_kind", ["run", "io_binding", "bf16"])
def test_the_backend_refuses_a_zero_divisor_on_each_run_path_and_shows_only_the_models_outputs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, path_kind: str
) -> None:
    path = mixed_divisions(tmp_path / "m.onnx", bf16=path_kind == "bf16")
    feed = dict(FEED)
    if path_kind == "bf16":
        feed["s"] = np.asarray([[1.5, -2], [0.25, 8]], np.float32).astype(ml_dtypes.bfloat16)
    io = {"io_binding": True} if path_kind == "io_binding" else {}
    plain = backend(path, int_division_guard=False)
    guarded_backend = backend(path, int_division_guard=True, **io)
    try:
        assert guarded_backend.io.mode == ("bound" if io else "plain")
        assert guarded_backend.outputs == plain.outputs == inspect_onnx(path)[1]
        want = plain.run_blocking(feed)
        got = guarded_backend.run_blocking(feed)
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
        zero = {**feed, "y": np.asarray([[2, 2, -4], [7, 0, 1]], np.int32)}
        refused = "model 'div': integer division by zero in node 'Div_3'"
        with (
            caplog.at_level(logging.WARNING, logger="server.backends.int_division_guard"),
            pytest.raises(ModelRefusedInput, match=refused),
        ):
            guarded_backend.run_blocking(zero)
        assert len(caplog.records) == 1 and "Div_3" in caplog.records[0].getMessage()
        np.testing.assert_array_equal(guarded_backend.run_blocking(feed)["q"], want["q"])  # still serves
    finally:
        plain.close()
        guarded_backend.close()


def test_the_zero_run_of_a_load_is_not_logged_as_a_refused_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = backend(int_div(tmp_path / "d.onnx"), int_division_guard=True)
    try:
        zeros = {"x": np.zeros(3, np.int32), "y": np.zeros(3, np.int32)}
        with (
            caplog.at_level(logging.WARNING, logger="server.backends.int_division_guard"),
            pytest.raises(ModelRefusedInput, match="node 'Div_xy'"),
        ):
            b.run_blocking(zeros, log_failure=False)
        assert caplog.records == []
    finally:
        b.close()


MIN32, MIN64 = int(np.iinfo(np.int32).min), int(np.iinfo(np.int64).min)


def test_the_overflow_flag_is_set_exactly_for_min_over_minus_one(tmp_path: Path) -> None:
    guard = guarded(mixed_divisions(tmp_path / "m.onnx"))
    feed = {name: array.copy() for name, array in FEED.items()}
    feed["x"][0] = [MIN32, MIN32, 5]
    feed["y"][0] = [1, 2, -1]  # MIN / 1, MIN / 2, 5 / -1: all fine
    outputs, counts = run_guarded(guard, feed)
    assert counts == [0, 0, 0] and outputs[0][0].tolist() == [MIN32, MIN32 // 2, -5]
    feed["y"][0, 0] = -1
    assert run_guarded(guard, feed)[1] == [0, 1, 0]


def test_a_signed_mod_by_minus_one_answers_zero_with_no_flag(tmp_path: Path) -> None:
    feed = {name: array.copy() for name, array in FEED.items()}
    feed["a"][0] = [MIN64, 7, -7]
    feed["b"][0] = [-1, -1, -1]
    outputs, counts = run_guarded(guarded(mixed_divisions(tmp_path / "m.onnx")), feed)
    assert counts == [0, 0, 0]
    np.testing.assert_array_equal(outputs[1], np.mod(feed["a"], feed["b"]))  # Python's mod, as ONNX's


@pytest.mark.parametrize("seed", range(4))
def test_random_divisions_answer_bit_for_bit_as_plain_onnxruntime(tmp_path: Path, seed: int) -> None:
    """Negative and extreme values, the trapping pairs left out (the plain model would end the
    process on them): the guarded model's answers are the plain model's, bit for bit."""
    path = mixed_divisions(tmp_path / "m.onnx")
    rng = np.random.default_rng(seed)
    feed = {name: array.copy() for name, array in FEED.items()}
    for name, dtype in (("x", np.int32), ("y", np.int32), ("a", np.int64), ("b", np.int64)):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=(64, 3), dtype=dtype, endpoint=True)
        values[:8] = rng.choice([info.min, info.max, -1, 1, -2, 2], size=(8, 3)).astype(dtype)
        feed[name] = values
    for dividend, divisor, dtype in (("x", "y", np.int32), ("a", "b", np.int64)):
        trapping = (feed[divisor] == 0) | ((feed[dividend] == np.iinfo(dtype).min) & (feed[divisor] == -1))
        feed[divisor][trapping] = 3
    feed["u"] = rng.standard_normal((64, 3)).astype(np.float32)
    feed["v"] = rng.standard_normal((64, 3)).astype(np.float32)
    want = session(path).run(None, feed)
    got, counts = run_guarded(guarded(path), feed)
    assert counts == [0, 0, 0]
    for plain, mine in zip(want, got, strict=True):
        assert plain.dtype == mine.dtype and plain.tobytes() == mine.tobytes()


def test_divisions_inside_if_and_loop_bodies_are_guarded_and_flagged_out(tmp_path: Path) -> None:
    path = subgraph_divisions(tmp_path / "s.onnx")
    guard = guarded(path)
    assert guard.nodes == (
        "Div_then (in If_q)",
        "Div_then (in If_q)",
        "Div_loop (in Loop_l)",
        "Div_loop (in Loop_l)",
    )
    assert guard.faults == (BY_ZERO, OVERFLOW, BY_ZERO, OVERFLOW)
    onnx.checker.check_model(onnx.load_from_string(guard.model_bytes), full_check=True)
    for x in ([100, -50, 7], [-100, -50, 7]):  # the If's then branch, then its else branch
        good = {"x": np.asarray(x, np.int32), "y": np.asarray([3, 4, -2], np.int32)}
        outputs, counts = run_guarded(guard, good)
        assert counts == [0, 0, 0, 0]
        for want, got in zip(session(path).run(None, good), outputs, strict=True):
            assert want.tobytes() == got.tobytes()
    zero = {"x": np.asarray([-100, -50, 7], np.int32), "y": np.asarray([3, 0, -2], np.int32)}
    assert run_guarded(guard, zero)[1] == [0, 0, 2, 0]  # else branch: no If count; twice round the Loop
    overflow = {"x": np.asarray([100, MIN32, 7], np.int32), "y": np.asarray([3, -1, -2], np.int32)}
    # sum(x) < 0: the else branch; MIN / -1 in both of the Loop's turns (each divided by 1 instead)
    assert run_guarded(guard, overflow)[1] == [0, 0, 0, 2]


def test_a_graph_input_shadowing_an_initializer_divisor_is_guarded(tmp_path: Path) -> None:
    model = onnx.load(str(int_div(tmp_path / "d.onnx")))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray([1, 2, 3], np.int32), "y"))
    guard = guard_model(model)  # y is an input with a default: a client may send zeros for it
    assert guard is not None and guard.nodes == ("Div_xy", "Div_xy")


def test_a_body_input_shadowing_an_outer_constant_is_guarded(tmp_path: Path) -> None:
    """The Loop body's `y` is its own carried value, not the outer constant [3, 4, 5] of that name."""
    model = onnx.load(str(subgraph_divisions(tmp_path / "s.onnx")))
    graph = model.graph
    graph.node.insert(
        0,
        onnx.helper.make_node(
            "Constant", [], ["k"], value=onnx.numpy_helper.from_array(np.asarray([3, 4, 5], np.int32))
        ),
    )
    body = next(a.g for n in graph.node if n.op_type == "Loop" for a in n.attribute)
    body.input[2].name = "k"  # the carried acc is now named k in the body
    body.node[0].input[:] = ["y", "k"]  # y / k: k is the carried value (x at first), not the constant
    guard = guarded_model(model)
    assert "Div_loop (in Loop_l)" in guard.nodes
    assert (
        run_guarded(guard, {"x": np.asarray([-1, 0, 1], np.int32), "y": np.asarray([3, 4, 5], np.int32)})[1][
            2
        ]
        == 1
    )


def test_a_division_in_a_model_local_function_is_guarded_where_it_is_called(tmp_path: Path) -> None:
    function = onnx.helper.make_function(
        "local",
        "divide",
        ["a", "b"],
        ["c"],
        [onnx.helper.make_node("Div", ["a", "b"], ["c"], name="Div_fn")],
        [onnx.helper.make_opsetid("", 13)],
    )
    model = onnx.load(str(int_div(tmp_path / "d.onnx")))
    model.graph.node[0].CopyFrom(
        onnx.helper.make_node("divide", ["x", "y"], ["q"], name="call", domain="local")
    )
    model.functions.append(function)
    model.opset_import.append(onnx.helper.make_opsetid("local", 1))
    guard = guarded_model(model)
    assert len(guard.nodes) == 2 and guard.faults == (BY_ZERO, OVERFLOW)
    zero = {"x": np.asarray([1, 2, 3], np.int32), "y": np.asarray([1, 0, 3], np.int32)}
    assert run_guarded(guard, zero)[1] == [1, 0]


def test_a_mod_inside_a_scan_body_is_guarded_per_iteration() -> None:
    """Scan's body: s += 10 % e over the scanned e; its scan_output_directions gets an entry for
    the count's scan output, as onnx requires one per scan output."""
    value = onnx.helper.make_tensor_value_info
    body = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Mod", ["ten", "e"], ["r"], name="Mod_scan"),
            onnx.helper.make_node("Add", ["s", "r"], ["s_out"]),
            onnx.helper.make_node("Identity", ["r"], ["r_out"]),
        ],
        "scan_body",
        [value("s", onnx.TensorProto.INT64, []), value("e", onnx.TensorProto.INT64, [])],
        [value("s_out", onnx.TensorProto.INT64, []), value("r_out", onnx.TensorProto.INT64, [])],
    )
    scan = onnx.helper.make_node(
        "Scan",
        ["s0", "es"],
        ["s_final", "rs"],
        name="S",
        body=body,
        num_scan_inputs=1,
        scan_output_directions=[0],
    )
    graph = onnx.helper.make_graph(
        [scan],
        "scanned",
        [value("s0", onnx.TensorProto.INT64, []), value("es", onnx.TensorProto.INT64, ["N"])],
        [value("s_final", onnx.TensorProto.INT64, []), value("rs", onnx.TensorProto.INT64, ["N"])],
        initializer=[onnx.numpy_helper.from_array(np.asarray(10, np.int64), "ten")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    guard = guarded_model(model)
    assert guard.nodes == ("Mod_scan (in S)",) and guard.faults == (BY_ZERO,)
    good = {"s0": np.asarray(0, np.int64), "es": np.asarray([3, -1, 4], np.int64)}
    outputs, counts = run_guarded(guard, good)
    assert counts == [0] and outputs[1].tolist() == [1, 0, 2] and int(outputs[0]) == 3
    assert run_guarded(guard, {**good, "es": np.asarray([3, 0, 0, 4], np.int64)})[1] == [2]


def test_a_model_already_naming_values_with_the_prefix_is_guarded_under_another(tmp_path: Path) -> None:
    """A node, an output and a graph output of the model's own named `RESERVED_PREFIX...`."""
    model = onnx.load(str(int_div(tmp_path / "d.onnx")))
    taken = f"{RESERVED_PREFIX}0/zero_divisors"  # the name the guard's first count would take
    model.graph.node[0].name = f"{RESERVED_PREFIX}0/0"
    model.graph.node.append(onnx.helper.make_node("Identity", ["q"], [taken], name="mine"))
    model.graph.output.append(onnx.helper.make_tensor_value_info(taken, onnx.TensorProto.INT32, [3]))
    guard = guarded_model(model)
    assert not any(f.startswith(RESERVED_PREFIX) for f in guard.flags)
    outputs, counts = run_guarded(
        guard, {"x": np.asarray([4, 4, 4], np.int32), "y": np.asarray([2, 0, 1], np.int32)}
    )
    assert counts == [1, 0] and outputs[1].tolist() == outputs[0].tolist()  # its own output untouched


def test_a_clients_zeros_are_logged_once_a_period_and_the_rest_counted_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hostile client's zero divisors had written a line each (batcher/log_ration.py)."""
    guarded_backend = backend(mixed_divisions(tmp_path / "m.onnx"), int_division_guard=True)
    zero = {**FEED, "y": np.asarray([[2, 2, -4], [7, 0, 1]], np.int32)}
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            with pytest.raises(ModelRefusedInput):
                guarded_backend.run_blocking(zero)
        assert [r.getMessage().split(":")[1] for r in caplog.records] == [" refused a batch's inputs"]
        guarded_backend.close()
    assert (
        caplog.records[-1].getMessage() == "model div: 4 more refused batches' lines not logged by its close"
    )
