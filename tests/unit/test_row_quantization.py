"""Dynamic INT8 quantization made per row (server/backends/row_quantization.py): each row of a batch
gets what it gets alone. Per batch, as onnxruntime's quantize_dynamic writes it, one row 40x the
others changed every other row's answer."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from protos import model_config_pb2 as mc
from server.backends.onnxruntime_backend import CPU, OrtBackend, OrtOptions
from server.backends.row_quantization import make_per_row, row_quantized
from server.errors import ModelRefusedInput
from server.models.config_backend import backend_parameters
from server.models.config_errors import ConfigError
from server.optimize.quantize import offline_optimize
from tests.support.dynamic_int8 import dynamic_int8, float_mlp, float_two_heads, rows_with_an_outlier


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _each_alone(session: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
    return [session.run(None, {"x": x[i : i + 1]})[0][0] for i in range(len(x))]


@pytest.mark.parametrize("opset", [11, 13, 17, 18])
@pytest.mark.parametrize("weights", ["int8", "uint8"])
def test_each_row_of_a_batch_gets_exactly_what_the_model_gives_it_alone(
    tmp_path: Path, opset: int, weights: str
) -> None:
    path = dynamic_int8(float_mlp(tmp_path / "f.onnx", opset), tmp_path / "q.onnx", weights)
    original = _session(path)
    x = rows_with_an_outlier(8)
    alone = _each_alone(original, x)
    batched = original.run(None, {"x": x})[0]
    # The defect: per batch, the outlier row changes the others' answers.
    assert not all(np.array_equal(batched[i], alone[i]) for i in range(1, 8))
    model = onnx.load(str(path))
    done = make_per_row(model)
    assert len(done.per_row) == 2 and done.kept == []
    onnx.checker.check_model(model)
    per_row = _session(model)
    batched = per_row.run(None, {"x": x})[0]
    for i in range(8):
        assert np.array_equal(batched[i], alone[i]), i  # bit for bit, the outlier and the zeros too


@pytest.mark.parametrize(
    ("build", "fused"),
    [(float_mlp, "DynamicQuantizeMatMul"), (float_two_heads, "MatMulIntegerToFloat")],
)
def test_onnxruntimes_fused_forms_are_made_per_row_too(tmp_path: Path, build: object, fused: str) -> None:
    # What `sluiceway optimize --int8 dynamic` saves: the graph after onnxruntime's fusions.
    quantized = dynamic_int8(build(tmp_path / "f.onnx"), tmp_path / "q.onnx")  # type: ignore[operator]
    offline_optimize(quantized, tmp_path / "saved.onnx")
    model = onnx.load(str(tmp_path / "saved.onnx"))
    assert fused in {n.op_type for n in model.graph.node}
    original = _session(tmp_path / "saved.onnx")
    x = rows_with_an_outlier(6)
    alone = _each_alone(original, x)
    assert not all(np.array_equal(original.run(None, {"x": x})[0][i], alone[i]) for i in range(1, 6))
    done = make_per_row(model)
    assert done.per_row and done.kept == [], done
    batched = _session(model).run(None, {"x": x})[0]
    for i in range(6):
        assert np.array_equal(batched[i], alone[i]), i


def test_rows_of_a_rank_three_input_are_its_last_axis(tmp_path: Path) -> None:
    path = dynamic_int8(float_mlp(tmp_path / "f.onnx", rank=3), tmp_path / "q.onnx")
    model = onnx.load(str(path))
    assert len(make_per_row(model).per_row) == 2
    session = _session(model)
    x = rows_with_an_outlier(4, lead=(3,))
    batched = session.run(None, {"x": x})[0]
    for i in range(4):  # a request's answer does not depend on the other requests in its batch
        assert np.array_equal(batched[i], session.run(None, {"x": x[i : i + 1]})[0][0]), i


def test_a_model_without_dynamic_quantization_is_left_as_it_is(tmp_path: Path) -> None:
    path = float_mlp(tmp_path / "f.onnx")
    assert row_quantized(path, "plain") is None
    model = onnx.load(str(path))
    before = model.SerializeToString()
    assert make_per_row(model).per_row == [] and model.SerializeToString() == before


def test_a_quantization_with_another_consumer_is_kept_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = dynamic_int8(float_mlp(tmp_path / "f.onnx"), tmp_path / "q.onnx")
    model = onnx.load(str(path))
    first = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear")
    model.graph.output.append(helper.make_tensor_value_info(first.output[1], TensorProto.FLOAT, []))
    onnx.save(model, tmp_path / "shown.onnx")
    with caplog.at_level(logging.INFO, logger="server.backends.row_quantization"):
        rewritten = row_quantized(tmp_path / "shown.onnx", "shown")
    assert rewritten is not None  # the other node still made per row
    kept = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(kept) == 1 and f"'{first.name}' (an output of the graph)" in kept[0], kept
    assert "model shown: dynamic quantization made per row in 1 node(s)" in caplog.text


def test_the_config_chooses_per_row_where_requests_batch(tmp_path: Path) -> None:
    def options(text: str) -> dict[str, object]:
        from google.protobuf import text_format

        config = text_format.Parse(text, mc.ModelConfig(name="m"))
        return backend_parameters(config, has_gpu=False).options

    assert options("max_batch_size: 8 dynamic_batching {}").get("row_quantization") is True
    assert options("max_batch_size: 8 sequence_batching {}").get("row_quantization") is True
    assert "row_quantization" not in options("max_batch_size: 8")  # each request runs alone
    assert "row_quantization" not in options("max_batch_size: 0")
    # ... and each Reshape run as written (onnxruntime's ReshapeFusion off; session 67).
    assert options("max_batch_size: 8 dynamic_batching {}").get("checked_reshapes") is True
    assert options("max_batch_size: 8 sequence_batching {}").get("checked_reshapes") is True
    assert "checked_reshapes" not in options("max_batch_size: 8")
    per_batch = (
        "max_batch_size: 8 dynamic_batching {} "
        'parameters { key: "dynamic_quantization" value { string_value: "per_batch" } }'
    )
    assert "row_quantization" not in options(per_batch)
    with pytest.raises(
        ConfigError, match="'dynamic_quantization' value 'per_tensor' is not per_row or per_batch"
    ):
        options(per_batch.replace("per_batch", "per_tensor"))


def test_the_backend_makes_it_per_row_and_guards_its_divisions_too(tmp_path: Path) -> None:
    # A quantized MLP with an integer division beside it: both rewrites, one session.
    quantized = onnx.load(str(dynamic_int8(float_mlp(tmp_path / "f.onnx"), tmp_path / "q.onnx")))
    graph = quantized.graph
    graph.input.extend([helper.make_tensor_value_info(n, TensorProto.INT32, ["N"]) for n in ("a", "b")])
    graph.node.append(helper.make_node("Div", ["a", "b"], ["ratio"], name="Div_ab"))
    graph.output.append(helper.make_tensor_value_info("ratio", TensorProto.INT32, ["N"]))
    onnx.save(quantized, tmp_path / "both.onnx")
    x = rows_with_an_outlier(4)
    ints = {"a": np.array([7, -9, 8, 5], np.int32), "b": np.array([2, 3, -4, 5], np.int32)}
    original = _session(tmp_path / "both.onnx")
    want = [
        original.run(["y"], {"x": x[i : i + 1], "a": ints["a"][i : i + 1], "b": ints["b"][i : i + 1]})[0][0]
        for i in range(4)
    ]
    backend = OrtBackend(
        tmp_path / "both.onnx",
        OrtOptions(row_quantization=True),
        [(CPU, {})],
        ThreadPoolExecutor(1),
        model_name="both",
    )
    try:
        got = backend.run_blocking({"x": x, **ints})
        assert list(got) == ["y", "ratio"]  # the guard's flags are not shown
        assert got["ratio"].tolist() == [3, -3, -2, 1]
        for i in range(4):
            assert np.array_equal(got["y"][i], want[i]), i
        with pytest.raises(ModelRefusedInput, match="division by zero in node 'Div_ab'"):
            backend.run_blocking({"x": x, "a": ints["a"], "b": np.array([2, 0, 1, 1], np.int32)})
    finally:
        backend.close()


def test_a_rewrite_that_does_not_load_falls_back_to_the_model_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import server.backends.onnxruntime_backend as backend_module
    from server.backends.int_division_guard import DivisionGuard

    path = dynamic_int8(float_mlp(tmp_path / "f.onnx"), tmp_path / "q.onnx")
    broken = onnx.load(str(path))
    broken.graph.node[0].op_type = "NoSuchOp"  # onnxruntime refuses this graph
    monkeypatch.setattr(backend_module, "row_quantized", lambda _path, _name: broken)
    bad_guard = DivisionGuard(b"not a model", ("flag",), ("Div_x",), ("division by zero",))
    monkeypatch.setattr(backend_module, "division_guard_for", lambda *_a, **_k: bad_guard)
    x = rows_with_an_outlier(3)
    with caplog.at_level(logging.WARNING):
        backend = OrtBackend(
            path, OrtOptions(row_quantization=True), [(CPU, {})], ThreadPoolExecutor(1), model_name="m"
        )
    try:
        # Neither rewrite: the model as written, per batch.
        assert np.array_equal(backend.run_blocking({"x": x})["y"], _session(path).run(None, {"x": x})[0])
    finally:
        backend.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("integer Div/Mod left unguarded: the guarded graph does not load" in m for m in messages), (
        messages
    )
    assert any(
        "dynamic quantization left per batch: its per-row graph does not load" in m for m in messages
    ), messages


def test_dynamic_quantization_inside_a_subgraph_is_named_not_rewritten() -> None:
    branch = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="inner_dql")],
        "then",
        [],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch, name="pick")],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    done = make_per_row(model)
    assert done.per_row == []
    assert done.kept == [
        "DynamicQuantizeLinear node 'inner_dql' (inside If node 'pick'; not rewritten)",
        "DynamicQuantizeLinear node 'inner_dql' (inside If node 'pick'; not rewritten)",
    ]


def test_saved_shapes_of_the_scales_do_not_fail_the_load(tmp_path: Path) -> None:
    path = dynamic_int8(float_mlp(tmp_path / "f.onnx"), tmp_path / "q.onnx")
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    scales = [v for v in inferred.graph.value_info if v.name.endswith("_scale")]
    assert scales and all(len(v.type.tensor_type.shape.dim) == 0 for v in scales)  # one value each
    assert len(make_per_row(inferred).per_row) == 2
    onnx.shape_inference.infer_shapes(inferred, strict_mode=True)  # refused stale shapes: rank 2 vs 0
    x = rows_with_an_outlier(3)
    alone = _each_alone(_session(path), x)
    batched = _session(inferred).run(None, {"x": x})[0]
    assert all(np.array_equal(batched[i], alone[i]) for i in range(3))


def test_weights_in_an_external_file_are_kept_per_batch_and_named(tmp_path: Path) -> None:
    path = dynamic_int8(float_mlp(tmp_path / "f.onnx"), tmp_path / "q.onnx")
    model = onnx.load(str(path))
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, size_threshold=0, location="w.bin")
    done = make_per_row(onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False))
    assert done.per_row == [] and len(done.kept) == 2, done
    assert all("weights are in an external data file" in why for why in done.kept), done.kept


def test_a_rewrite_that_fails_leaves_the_model_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import server.backends.row_quantization as module

    def broken(_model: onnx.ModelProto) -> None:
        raise ValueError("a graph it does not understand")

    monkeypatch.setattr(module, "make_per_row", broken)
    path = dynamic_int8(float_mlp(tmp_path / "f.onnx"), tmp_path / "q.onnx")
    with caplog.at_level(logging.WARNING):
        assert module.row_quantized(path, "odd") is None
    assert (
        "model odd: dynamic quantization left per batch: its rewrite failed (a graph it does not understand)"
        in caplog.text
    )
