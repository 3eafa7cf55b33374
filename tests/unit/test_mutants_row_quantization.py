"""Per-row dynamic quantization (server/backends/row_quantization.py) on small hand-built graphs: the
three forms it rewrites (DynamicQuantizeLinear + MatMulInteger, + onnxruntime's MatMulIntegerToFloat,
and the fused DynamicQuantizeMatMul) with and without a weights' zero point and a bias, each row of a
batch bit for bit what the model gives it alone; and what it keeps per batch, named word for word."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.row_quantization import make_per_row, row_quantized

K, M = 6, 3
MS = "com.microsoft"


def _weights(b_zero: bool) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(5)
    if b_zero:  # uint8 weights around a zero point of 131
        w = numpy_helper.from_array(rng.integers(100, 160, (K, M)).astype(np.uint8), "w")
        zero = numpy_helper.from_array(np.uint8(131), "wz")
    else:
        w = numpy_helper.from_array(rng.integers(-90, 90, (K, M)).astype(np.int8), "w")
        zero = numpy_helper.from_array(np.int8(0), "wz")
    scale = numpy_helper.from_array(np.float32(0.0125), "ws")
    bias = numpy_helper.from_array(np.float32([0.5, -1.0, 2.0]), "bias")
    return [w, zero, scale, bias]


def quantized(
    form: str, *, b_zero: bool = False, bias: bool = False, opset: int = 17, lead: tuple[str, ...] = ("N",)
) -> onnx.ModelProto:
    """y [N, 3] from x [N, 6] through one dynamically quantized MatMul, in `form`: "dql" (as
    quantize_dynamic writes it), "to_float" (MatMulIntegerToFloat) or "fused" (DynamicQuantizeMatMul)."""
    wz = "wz" if b_zero else ""
    b = "bias" if bias else ""
    if form == "fused":
        inputs = ["x", "w", "ws", wz, b]
        while not inputs[-1]:  # optional inputs left out at the end, as exporters write them
            inputs.pop()
        nodes = [helper.make_node("DynamicQuantizeMatMul", inputs, ["y"], domain=MS, name="dqmm")]
    else:
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dql")]
        if form == "to_float":
            nodes.append(
                helper.make_node(
                    "MatMulIntegerToFloat", ["q", "w", "s", "ws", "z", wz, b], ["y"], domain=MS, name="mm"
                )
            )
        else:
            nodes += [
                helper.make_node("MatMulInteger", ["q", "w", "z", *([wz] if wz else [])], ["acc"], name="mm"),
                helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["s", "ws"], ["scales"]),
                helper.make_node("Mul", ["acc_f", "scales"], ["y0" if b else "y"]),
            ]
            if b:
                nodes.append(helper.make_node("Add", ["y0", "bias"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, M])],
        initializer=_weights(b_zero),
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def rows(*lead: int) -> np.ndarray:
    """Rows that quantize differently: ordinary, one 40x larger, all positive, all negative, zeros
    (of [5, *lead, 6])."""
    x = np.random.default_rng(9).standard_normal((5, *lead, K)).astype(np.float32)
    x[1] *= 40
    x[2] = np.abs(x[2]) + 0.25
    x[3] = -np.abs(x[3]) - 0.25
    x[4] = 0
    return x


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def assert_each_row_as_alone(model: onnx.ModelProto, check: bool = True) -> None:
    x = rows()
    alone = [run(model, x[i : i + 1])[0] for i in range(len(x))]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    done = make_per_row(rewritten)
    assert len(done.per_row) == 1 and done.kept == [], done
    if check:  # onnx's checker wants an opset import for "ai.onnx" spelled out; onnxruntime does not
        onnx.checker.check_model(rewritten)
    batched = run(rewritten, x)
    for i in range(len(x)):
        np.testing.assert_array_equal(batched[i], alone[i], err_msg=f"row {i}")


@pytest.mark.parametrize("form", ["dql", "to_float", "fused"])
@pytest.mark.parametrize(("b_zero", "bias"), [(False, False), (True, False), (True, True)])
def test_every_form_makes_each_row_of_a_batch_exactly_what_it_gets_alone(
    form: str, b_zero: bool, bias: bool
) -> None:
    assert_each_row_as_alone(quantized(form, b_zero=b_zero, bias=bias))


@pytest.mark.parametrize("opset", [11, 12, 13, 18])
def test_each_row_alone_at_the_opsets_where_the_rewrite_changes_form(opset: int) -> None:
    # ReduceMin/Max take `axes` as an input from 18; QuantizeLinear a per-row scale from 13.
    assert_each_row_as_alone(quantized("dql", b_zero=True, opset=opset))


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("form", ["dql", "fused"])
def test_a_rank_three_input_is_quantized_along_its_last_axis(opset: int, form: str) -> None:
    # [N, S, K]: each of a request's S rows of K on its own (what the model gives that row alone),
    # at either form of ReduceMin/Max.
    model = quantized(form, opset=opset, lead=("N", "S"))
    x = rows(2)
    x[0, 1] *= 30  # one row of the first request larger than its other row
    alone = np.stack([[run(model, x[n, s][None, None])[0, 0] for s in range(2)] for n in range(len(x))])
    assert len(make_per_row(model).per_row) == 1
    np.testing.assert_array_equal(run(model, x), alone)


def test_a_row_of_zeros_gets_the_scale_1_as_onnxruntime_gives_it() -> None:
    # The scale a Mul reads is seen when the product is an output of the graph.
    model = quantized("dql", b_zero=True)
    model.graph.output.append(helper.make_tensor_value_info("scales", TensorProto.FLOAT, []))
    x = rows()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    alone = [session.run(["scales"], {"x": x[i : i + 1]})[0] for i in range(len(x))]
    assert alone[4] == np.float32(0.0125)  # zeros: scale 1 times the weights' scale
    assert make_per_row(model).per_row == ["DynamicQuantizeLinear node 'dql'"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    scales = session.run(["scales"], {"x": x})[0]
    assert scales.shape == (5, 1)  # one a row
    np.testing.assert_array_equal(scales[:, 0], np.asarray(alone))


def test_the_rewritten_graph_has_no_stale_intermediate_shapes() -> None:
    model = quantized("dql")
    model.graph.value_info.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    make_per_row(model)
    assert list(model.graph.value_info) == []


def test_a_graph_without_dynamic_quantization_is_not_touched() -> None:
    model = quantized("dql")
    model.graph.node[0].op_type = "DynamicQuantizeLinearish"  # not the op: nothing to make per row
    model.graph.value_info.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    before = model.SerializeToString()
    done = make_per_row(model)
    assert (done.per_row, done.kept) == ([], [])
    assert model.SerializeToString() == before


def test_a_custom_domains_dynamic_quantize_linear_is_not_onnxs() -> None:
    model = quantized("dql")
    model.graph.node[0].domain = "com.example"
    assert make_per_row(model).per_row == []


def test_the_fused_op_outside_onnxruntimes_domain_is_not_rewritten() -> None:
    model = quantized("fused")
    model.graph.node[0].domain = "com.example"
    assert make_per_row(model).per_row == []


@pytest.mark.parametrize(
    ("taken", "prefix"),
    [
        ([], "sluiceway_rowq/"),
        (["sluiceway_rowq/taken"], "sluiceway_rowq2/"),
        (["sluiceway_rowq/taken", "sluiceway_rowq2/also"], "sluiceway_rowq3/"),
    ],
)
def test_the_added_names_take_a_prefix_no_tensor_of_the_graph_uses(taken: list[str], prefix: str) -> None:
    model = quantized("dql")
    if taken:  # the exporter's own names under the prefix: a node's output, an initializer
        model.graph.node[-1].output[0] = taken[0]
        model.graph.node.append(helper.make_node("Identity", [taken[0]], ["y"]))
        model.graph.initializer.extend(numpy_helper.from_array(np.float32(1), name) for name in taken[1:])
    before = {n.name for n in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    assert make_per_row(model).per_row == ["DynamicQuantizeLinear node 'dql'"]
    after = {n.name for n in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    added = after - before - {"acc"}  # the matmul's output is kept under its name
    assert added and all(name.startswith(f"{prefix}0/") for name in added), sorted(added)


def test_two_quantizations_in_one_graph_are_named_apart() -> None:
    model = quantized("dql")
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", K]))
    graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", M]))
    graph.node.append(
        helper.make_node("DynamicQuantizeMatMul", ["x2", "w", "ws"], ["y2"], domain=MS, name="second")
    )
    done = make_per_row(model)
    assert done.per_row == ["DynamicQuantizeLinear node 'dql'", "DynamicQuantizeMatMul node 'second'"]
    onnx.checker.check_model(model)
    made = [o for n in model.graph.node for o in n.output if o.startswith("sluiceway_rowq/")]
    assert {name.split("/")[1] for name in made} == {"0", "1"}
    assert len(made) == len(set(made))
    x = rows()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, y2 = session.run(None, {"x": x, "x2": x})
    np.testing.assert_array_equal(y, y2)  # the same weights, each row per row on both paths


# --- what is kept per batch, and why, word for word ---------------------------------------------------


def test_onnxruntimes_other_fused_ops_are_named_as_kept() -> None:
    model = quantized("dql")
    model.graph.node.append(helper.make_node("QAttention", ["x"], ["att"], domain=MS, name="qa"))
    model.graph.node.append(helper.make_node("DynamicQuantizeLSTM", ["x"], ["lstm"], domain=MS))
    done = make_per_row(model)
    assert done.per_row == ["DynamicQuantizeLinear node 'dql'"]
    assert done.kept == [
        "QAttention node 'qa' (fused; not rewritten)",
        "DynamicQuantizeLSTM node 'lstm' (fused; not rewritten)",
    ]


def test_quantization_inside_nested_subgraphs_is_named() -> None:
    inner = helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "ws"], ["y_in"], domain=MS, name="deep")],
        "inner",
        [],
        [helper.make_tensor_value_info("y_in", TensorProto.FLOAT, None)],
    )
    outer = helper.make_graph(
        [helper.make_node("If", ["c"], ["y_mid"], then_branch=inner, else_branch=inner, name="in_if")],
        "outer",
        [],
        [helper.make_tensor_value_info("y_mid", TensorProto.FLOAT, None)],
    )
    model = quantized("dql")
    model.graph.node.append(helper.make_node("Loop", ["", "c"], ["y_loop"], body=outer, name="loop"))
    kept = make_per_row(model).kept
    assert kept == [
        "DynamicQuantizeMatMul node 'deep' (inside If node 'in_if'; not rewritten)",
        "DynamicQuantizeMatMul node 'deep' (inside If node 'in_if'; not rewritten)",
    ]


def _kept(model: onnx.ModelProto) -> list[str]:
    done = make_per_row(model)
    assert done.per_row == []
    return done.kept


def test_weights_from_an_input_are_kept_per_batch() -> None:
    model = quantized("dql")
    del model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.INT8, [K, M]))
    assert _kept(model) == [
        "DynamicQuantizeLinear node 'dql' (MatMulInteger node 'mm''s weights are not a constant matrix)"
    ]


def test_weights_that_are_no_matrix_are_kept_per_batch() -> None:
    model = quantized("fused")
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((1, K, M), np.int8), "w"))
    assert _kept(model) == [
        "DynamicQuantizeMatMul node 'dqmm' "
        "(DynamicQuantizeMatMul node 'dqmm''s weights are not a constant matrix)"
    ]


@pytest.mark.parametrize("form", ["dql", "to_float", "fused"])
def test_a_weights_zero_point_from_an_input_is_kept_per_batch(form: str) -> None:
    model = quantized(form, b_zero=True)
    del model.graph.initializer[1]
    model.graph.input.append(helper.make_tensor_value_info("wz", TensorProto.UINT8, []))
    name = {"dql": "MatMulInteger node 'mm'", "to_float": "MatMulIntegerToFloat node 'mm'"}.get(
        form, "DynamicQuantizeMatMul node 'dqmm'"
    )
    why = f"{name}'s weights' zero point is not a constant"
    owner = "DynamicQuantizeMatMul node 'dqmm'" if form == "fused" else "DynamicQuantizeLinear node 'dql'"
    assert _kept(model) == [f"{owner} ({why})"]


def test_a_weights_zero_point_in_external_data_is_kept_per_batch() -> None:
    model = quantized("fused", b_zero=True)
    zero = model.graph.initializer[1]
    zero.data_location = TensorProto.EXTERNAL
    assert _kept(model) == [
        "DynamicQuantizeMatMul node 'dqmm' (DynamicQuantizeMatMul node 'dqmm''s weights are in an external "
        "data file (their column sums are not read))"
    ]


def test_a_quantization_feeding_another_op_is_kept_and_names_it() -> None:
    model = quantized("dql")
    model.graph.node.append(helper.make_node("Identity", ["z"], ["z_seen"], name="look"))
    assert _kept(model) == ["DynamicQuantizeLinear node 'dql' (feeds Identity node 'look')"]


def test_a_scale_read_by_a_custom_domains_mul_is_kept() -> None:
    model = quantized("dql")
    model.graph.node.append(helper.make_node("Mul", ["s", "s"], ["s2"], domain="com.example", name="odd"))
    assert _kept(model) == ["DynamicQuantizeLinear node 'dql' (feeds Mul node 'odd')"]


def test_a_scale_read_by_an_ai_onnx_mul_in_either_slot_is_per_row_too() -> None:
    model = quantized("dql")
    mul = next(n for n in model.graph.node if n.op_type == "Mul" and "s" in n.input)
    mul.input[:] = ["ws", "s"]
    mul.domain = "ai.onnx"
    assert_each_row_as_alone(model, check=False)


def test_a_matmul_reading_the_quantization_in_the_wrong_slot_is_kept() -> None:
    model = quantized("dql")
    model.graph.node.append(helper.make_node("MatMulInteger", ["w", "q"], ["odd"], name="swapped"))
    assert _kept(model) == ["DynamicQuantizeLinear node 'dql' (feeds MatMulInteger node 'swapped')"]


def test_a_matmul_with_another_zero_point_is_kept() -> None:
    model = quantized("dql")
    mm = next(n for n in model.graph.node if n.op_type == "MatMulInteger")
    mm.input[2] = "wz"  # q read, but not with its own zero point
    assert _kept(model) == [
        "DynamicQuantizeLinear node 'dql' (MatMulInteger node 'mm' does not read all of it)"
    ]


def test_a_matmul_to_float_without_the_zero_point_is_kept() -> None:
    model = quantized("to_float")
    mm = model.graph.node[1]
    del mm.input[4:]  # no zero point for A, no B zero point or bias
    assert _kept(model) == [
        "DynamicQuantizeLinear node 'dql' (MatMulIntegerToFloat node 'mm' does not read all of it)"
    ]


def test_a_quantization_shown_as_a_graph_output_is_kept() -> None:
    model = quantized("dql")
    model.graph.output.append(helper.make_tensor_value_info("q", TensorProto.UINT8, ["N", K]))
    assert _kept(model) == ["DynamicQuantizeLinear node 'dql' (an output of the graph)"]


# --- row_quantized: the file, and what it logs ----------------------------------------------------------


def test_the_rewrite_of_a_file_is_logged_word_for_word(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = quantized("dql")
    model.graph.node.append(helper.make_node("QAttention", ["x"], ["att"], domain=MS, name="qa"))
    onnx.save(model, tmp_path / "m.onnx")
    with caplog.at_level(logging.INFO, logger="server.backends.row_quantization"):
        rewritten = row_quantized(tmp_path / "m.onnx", "mlp")
    assert rewritten is not None and rewritten.graph.node[0].op_type != "DynamicQuantizeLinear"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.INFO,
            "model mlp: dynamic quantization made per row in 1 node(s) (a batched request's answer "
            "does not depend on its batch mates)",
        ),
        (
            logging.WARNING,
            "model mlp: dynamic quantization left per batch in QAttention node 'qa' (fused; not "
            "rewritten): a batched request's answer may depend on the requests batched with it",
        ),
    ]


def test_a_file_with_only_kept_quantization_is_served_as_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = quantized("dql")
    model.graph.node.append(helper.make_node("Identity", ["z"], ["z_seen"], name="look"))
    model.graph.node.append(helper.make_node("QAttention", ["x"], ["att"], domain=MS, name="qa"))
    onnx.save(model, tmp_path / "m.onnx")
    with caplog.at_level(logging.INFO, logger="server.backends.row_quantization"):
        assert row_quantized(tmp_path / "m.onnx", "kept") is None
    assert [r.getMessage() for r in caplog.records] == [
        "model kept: dynamic quantization left per batch in QAttention node 'qa' (fused; not rewritten); "
        "DynamicQuantizeLinear node 'dql' (feeds Identity node 'look'): a batched request's answer may "
        "depend on the requests batched with it"
    ]


def test_a_file_onnx_cannot_read_is_left_to_the_sessions_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"DynamicQuantizeLinear" * 3)  # holds the mark, is no model
    with caplog.at_level(logging.INFO, logger="server.backends.row_quantization"):
        assert row_quantized(path, "broken") is None
    assert caplog.records == []


def test_a_file_whose_weights_are_outside_it_is_served_as_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The weights are not read into memory for the look (their column sums would need them).
    model = quantized("fused", b_zero=True)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, size_threshold=0, location="w.bin")
    with caplog.at_level(logging.WARNING, logger="server.backends.row_quantization"):
        assert row_quantized(tmp_path / "ext.onnx", "ext") is None
    assert "weights are in an external data file" in caplog.text


def test_a_rewrite_that_fails_is_said_once_word_for_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import server.backends.row_quantization as module

    def broken(_model: onnx.ModelProto) -> None:
        raise ValueError("odd graph")

    monkeypatch.setattr(module, "make_per_row", broken)
    onnx.save(quantized("dql"), tmp_path / "m.onnx")
    with caplog.at_level(logging.INFO, logger="server.backends.row_quantization"):
        assert module.row_quantized(tmp_path / "m.onnx", "odd") is None
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "model odd: dynamic quantization left per batch: its rewrite failed (odd graph)")
    ]


def test_one_quantization_read_by_two_matmuls_with_biases_is_per_row_in_both() -> None:
    # onnxruntime's fusion of two MatMuls sharing one DynamicQuantizeLinear, each with a bias.
    model = quantized("to_float", b_zero=True, bias=True)
    graph = model.graph
    graph.node.append(
        helper.make_node(
            "MatMulIntegerToFloat", ["q", "w", "s", "ws", "z", "wz", "bias"], ["y2"], domain=MS, name="mm2"
        )
    )
    graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", M]))
    x = rows()
    alone = [run(model, x[i : i + 1])[0] for i in range(len(x))]
    assert make_per_row(model).per_row == ["DynamicQuantizeLinear node 'dql'"]
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, y2 = session.run(None, {"x": x})
    for i in range(len(x)):
        np.testing.assert_array_equal(y[i], alone[i], err_msg=f"row {i}")
    np.testing.assert_array_equal(y2, y)


def test_a_custom_domains_matmul_reading_the_quantization_is_kept() -> None:
    model = quantized("dql")
    model.graph.node.append(
        helper.make_node("MatMulInteger", ["q", "w"], ["odd"], domain="com.example", name="own")
    )
    assert _kept(model) == ["DynamicQuantizeLinear node 'dql' (feeds MatMulInteger node 'own')"]


def test_quantization_inside_a_list_of_subgraphs_is_named() -> None:
    body = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["bq", "bs", "bz"], name="listed")],
        "body",
        [],
        [helper.make_tensor_value_info("bq", TensorProto.UINT8, None)],
    )
    node = helper.make_node("Branches", ["x"], ["b"], domain="com.example", name="custom")
    node.attribute.append(helper.make_attribute("bodies", [body]))
    model = quantized("dql")
    model.graph.node.append(node)
    assert make_per_row(model).kept == [
        "DynamicQuantizeLinear node 'listed' (inside Branches node 'custom'; not rewritten)"
    ]


def test_a_quantization_whose_values_nobody_reads_is_made_per_row_without_a_matmul() -> None:
    # Only its scale is read (by a Mul): nothing to replace downstream, the quantization per row.
    model = quantized("dql")
    del model.graph.node[1:]
    model.graph.node.append(helper.make_node("Mul", ["s", "ws"], ["y"]))
    assert make_per_row(model).per_row == ["DynamicQuantizeLinear node 'dql'"]
    assert "MatMulInteger" not in {n.op_type for n in model.graph.node}


def test_a_model_importing_only_onnxruntimes_domain_gets_the_standard_opset_the_rewrite_needs() -> None:
    # A lone DynamicQuantizeMatMul needs no ai.onnx import; onnxruntime reads none as its newest
    # opset, where ReduceMin takes `axes` as an input, and refused the rewrite written for opset 0.
    model = quantized("fused")
    del model.opset_import[0]
    assert [o.domain for o in model.opset_import] == [MS]
    assert_each_row_as_alone(model, check=False)
