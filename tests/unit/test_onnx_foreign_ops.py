"""Ops outside ONNX's domain in the row-mixing reading (server/backends/onnx_foreign_ops.py and the
stand-ins of onnx_stand_ins*.py): an op no stand-in reads is taken as mixing on the batch's path
only, ai.onnx.ml's ops by their samples, an opaque shape after one is not read past, a stand-in
inherits the mixing of the inputs it does not read, and each stand-in's details (attributes that
change what it mixes or its shape) as onnxruntime runs the op."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_foreign_ops import foreign
from server.backends.onnx_output_shapes import refined_outputs
from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_stand_ins import with_stand_ins

F, U8 = TensorProto.FLOAT, TensorProto.UINT8
MS, ML = "com.microsoft", "ai.onnx.ml"
NOT_READ = "that the load does not read"


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[str] = ("y",),
    inits: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
) -> onnx.ModelProto:
    outs = [helper.make_value_info(name, onnx.TypeProto()) for name in outputs]  # left to the load
    graph = helper.make_graph(list(nodes), "g", list(inputs), outs, list(inits))
    ops = [helper.make_opsetid("", opset), helper.make_opsetid(MS, 1), helper.make_opsetid(ML, 3)]
    model = helper.make_model(graph, opset_imports=ops)
    model.ir_version = 8
    return model


def _x(*dims: int | str, kind: int = F, name: str = "x") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, kind, list(dims))


def _init(name: str, value: object, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _ms(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, domain=MS, **attrs)


def _ml(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, domain=ML, **attrs)


def _completed(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    return {
        v.name: [
            d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim
        ]
        for v in refined_outputs(model)
    }


def _run(model: onnx.ModelProto, **feeds: np.ndarray) -> list[tuple[int, ...]]:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(out).shape for out in session.run(None, feeds)]


def test_foreign_is_another_domain_or_an_onnx_op_before_its_opset() -> None:
    assert foreign(helper.make_node("Gelu", ["x"], ["y"], domain=MS), 17)
    assert foreign(helper.make_node("LayerNormalization", ["x", "s"], ["y"]), 13)
    assert not foreign(helper.make_node("LayerNormalization", ["x", "s"], ["y"]), 17)
    assert not foreign(helper.make_node("Relu", ["x"], ["y"], domain="ai.onnx"), 13)
    assert not foreign(helper.make_node("NoSuchOpAnywhere", ["x"], ["y"]), 17)  # unknown_op's


def test_an_unread_op_mixes_on_the_batch_path_only() -> None:
    on_batch = _model([_ms("Unique", ["x"], ["y", "i", "c"])], [_x("N")])
    why = row_mixing_outputs(on_batch)["y"]
    assert why == (
        "the Unique node making 'y' is an op of domain 'com.microsoft' that the load does not read, on 'x', "
        "made from the batch: its rows are taken as mixed"
    )
    apart = _model(
        [
            _ms("Unique", ["w"], ["u", "i", "c"]),
            helper.make_node("Shape", ["u"], ["s"]),
            helper.make_node("Cast", ["s"], ["f"], to=F),
            helper.make_node("Add", ["x", "f"], ["y"]),
        ],
        [_x("N", 1)],
        inits=[_init("w", [1.0, 2.0, 2.0])],
    )
    assert row_mixing_outputs(apart) == {}


def test_layer_normalization_before_opset_17_is_read_through() -> None:
    nodes = [helper.make_node("LayerNormalization", ["x", "s"], ["n"], axis=-1)]
    over_batch = [helper.make_node("ReduceSum", ["n", "ax"], ["y"], keepdims=1)]
    inits = [_init("s", np.ones(4)), _init("ax", [0], np.int64)]
    mixed = row_mixing_outputs(_model(nodes + over_batch, [_x("N", 4)], inits=inits, opset=13))
    assert "the ReduceSum node making 'y' works along the batch's axis, axis 0 of 'n'" in mixed["y"]
    alone = _model(
        [helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=-1)],
        [_x("N", 4)],
        inits=inits[:1],
        opset=13,
    )
    assert row_mixing_outputs(alone) == {} and _completed(alone) == {"y": ["N", 4]}
    transposed = _model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
            helper.make_node("LayerNormalization", ["t", "s1"], ["y"], axis=-1),
        ],
        [_x("N", 4)],
        inits=[_init("s1", [1.0])],
        opset=13,
    )
    assert (
        "the LayerNormalization node making 'y' (ai.onnx) works along the batch's axis"
        in row_mixing_outputs(transposed)["y"]
    )


def test_a_stand_in_inherits_the_mixing_of_an_input_it_does_not_read() -> None:
    """Attention's mask is not read by its stand-in: made over the batch, its mixing is inherited."""
    mask = [
        helper.make_node("ReduceMax", ["m"], ["top"], axes=[0], keepdims=1),
        helper.make_node("Add", ["m", "top"], ["mm"]),
    ]
    attention = _ms("Attention", ["x", "w", "b", "mm"], ["y"], num_heads=2)
    inits = [_init("w", np.ones((8, 24))), _init("b", np.zeros(24))]
    model = _model(
        [*mask, attention], [_x("N", 3, 8), _x("N", 3, kind=TensorProto.INT32, name="m")], inits=inits
    )
    assert "the ReduceMax node making 'top' works along the batch's axis" in row_mixing_outputs(model)["y"]
    plain = _model(
        [_ms("Attention", ["x", "w", "b", "m"], ["y"], num_heads=2)],
        [_x("N", 3, 8), _x("N", 3, kind=TensorProto.INT32, name="m")],
        inits=inits,
    )
    assert row_mixing_outputs(plain) == {} and _completed(plain) == {"y": ["N", 3, 8]}


def test_a_stand_in_inside_a_branch_is_read() -> None:
    gelu = _ms("Gelu", ["x"], ["g"])
    body = helper.make_graph(
        [gelu, helper.make_node("ReduceSum", ["g", "ax"], ["r"], keepdims=1)],
        "then",
        [],
        [helper.make_tensor_value_info("r", F, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["o"])],
        "else",
        [],
        [helper.make_tensor_value_info("o", F, None)],
    )
    branch = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)
    model = _model(
        [branch], [_x("N", 4), _x(kind=TensorProto.BOOL, name="c")], inits=[_init("ax", [0], np.int64)]
    )
    assert "the ReduceSum node making 'r' works along the batch's axis" in row_mixing_outputs(model)["y"]


def test_ml_ops_by_their_samples() -> None:
    elementwise = _model([_ml("Binarizer", ["x"], ["y"], threshold=0.5)], [_x("N")])
    assert row_mixing_outputs(elementwise) == {}
    columns = _model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
            _ml("LinearClassifier", ["t"], ["y", "p"], coefficients=[1.0] * 8, classlabels_ints=[0, 1]),
        ],
        [_x("N", 4)],
        outputs=("y", "p"),
    )
    assert (
        "the LinearClassifier node making 'y' reads 't' [4, 'N'] as samples along its first axis"
        in row_mixing_outputs(columns)["y"]
    )
    picked = _model(
        [
            helper.make_node("Cast", ["i"], ["at"], to=TensorProto.INT64),
            _ml("ArrayFeatureExtractor", ["x", "at"], ["y"]),
        ],
        [_x("N", 4), _x("N", kind=TensorProto.INT32, name="i")],
    )
    assert (
        "the ArrayFeatureExtractor node making 'y' picks each row's features at positions 'at', made from "
        "the batch: its rows" in row_mixing_outputs(picked)["y"]
    )


def test_a_shape_onnx_cannot_infer_is_not_read_past() -> None:
    """SVMClassifier has no stand-in and onnx infers no shape of its scores: a ReduceSum over their
    columns is not read (taken as mixing); an elementwise op is."""
    svm = _ml(
        "SVMClassifier",
        ["x"],
        ["label", "z"],
        classlabels_ints=[0, 1],
        coefficients=[1.0, -1.0],
        kernel_type="LINEAR",
        vectors_per_class=[1, 1],
        support_vectors=[1.0] * 8,
        rho=[0.0],
    )
    reduced = _model(
        [svm, helper.make_node("ReduceSum", ["z", "ax"], ["y"], keepdims=1)],
        [_x("N", 4)],
        inits=[_init("ax", [1], np.int64)],
    )
    assert (
        "the ReduceSum node making 'y' reads 'z', whose shape onnx cannot infer"
        in row_mixing_outputs(reduced)["y"]
    )
    cast = _model([svm, helper.make_node("Abs", ["z"], ["y"])], [_x("N", 4)])
    assert row_mixing_outputs(cast) == {}


@pytest.mark.parametrize(
    ("node", "inputs", "inits", "said"),
    [
        (_ms("FusedMatMul", ["x", "x"], ["y"], transBatchA=1), [_x("N", 2, 3)], [], NOT_READ),
        (_ms("MultiHeadAttention", ["x"], ["y"], num_heads=1), [_x("N", 3, 4)], [], NOT_READ),
        (
            _ms("ExpandDims", ["x", "a"], ["y"]),
            [_x("N", 3), _x(kind=TensorProto.INT32, name="a")],
            [],
            NOT_READ,
        ),
        (
            _ms("QLinearAveragePool", ["x", "s", "z", "s", "z"], ["y"], channels_last=1, kernel_shape=[2, 2]),
            [_x("N", 4, 4, 2, kind=U8)],
            [_init("s", 0.1), _init("z", 0, np.uint8)],
            NOT_READ,
        ),
        (
            _ms("QLinearSoftmax", ["x", "s", "z", "s", "z"], ["y"], axis=0, opset=11),
            [_x("N", 5, kind=U8)],
            [_init("s", 0.1), _init("z", 0, np.uint8)],
            "works along the batch's axis, axis 1 of 'x, in the QLinearSoftmax (0)' [1, 'N*5']",
        ),
        (
            _ms("QLinearSoftmax", ["x", "s", "z", "s", "z"], ["y"], axis=-2, opset=11),
            [_x("N", 5, kind=U8)],
            [_init("s", 0.1), _init("z", 0, np.uint8)],
            "works along the batch's axis, axis 1 of 'x, in the QLinearSoftmax (0)' [1, 'N*5']",
        ),
    ],
)
def test_attributes_a_stand_in_cannot_read_or_that_reach_the_batch(
    node: onnx.NodeProto, inputs: list[onnx.ValueInfoProto], inits: list[onnx.TensorProto], said: str
) -> None:
    why = row_mixing_outputs(_model([node], inputs, inits=inits))["y"]
    assert f"the {node.op_type} node making 'y'" in why and said in why, why


def test_stand_in_shapes_follow_the_ops_attributes() -> None:
    """Each completed output shape as onnxruntime gives it, four rows in."""
    scale, zero = _init("s", 0.1), _init("z", 128, np.uint8)
    cases: list[tuple[onnx.ModelProto, dict[str, np.ndarray]]] = [
        (
            _model(
                [
                    _ms(
                        "QLinearAveragePool",
                        ["x", "s", "z", "s", "z"],
                        ["y"],
                        kernel_shape=[2, 2],
                        strides=[2, 2],
                        ceil_mode=1,
                    )
                ],
                [_x("N", 2, 5, 5, kind=U8)],
                inits=[scale, zero],
            ),
            {"x": np.full((4, 2, 5, 5), 130, np.uint8)},
        ),
        (
            _model(
                [_ms("QGemm", ["x", "s", "z", "w", "s", "wz"], ["y"], transB=1)],
                [_x("N", 3, kind=U8)],
                inits=[scale, zero, _init("w", np.ones((2, 3)), np.int8), _init("wz", 0, np.int8)],
            ),
            {"x": np.ones((4, 3), np.uint8)},
        ),
        (
            _model(
                [_ms("Pad", ["x", "p"], ["y"])], [_x("N", 3)], inits=[_init("p", [[0, 1, 0, 2]], np.int64)]
            ),
            {"x": np.ones((4, 3), np.float32)},
        ),
        (
            _model([_ml("LinearRegressor", ["x"], ["y"], coefficients=[1.0] * 6, targets=2)], [_x("N", 3)]),
            {"x": np.ones((4, 3), np.float32)},
        ),
        (
            _model(
                [_ml("FeatureVectorizer", ["x", "b"], ["y"], inputdimensions=[3, 2])],
                [_x("N", 3), _x("N", 2, name="b")],
            ),
            {"x": np.ones((4, 3), np.float32), "b": np.ones((4, 2), np.float32)},
        ),
        (
            _model(
                [_ms("EmbedLayerNormalization", ["i", "", "w", "p", "", "g", "b"], ["y", "m"])],
                [_x("N", 5, kind=TensorProto.INT32, name="i")],
                outputs=("y", "m"),
                inits=[
                    _init("w", np.ones((7, 4))),
                    _init("p", np.ones((6, 4))),
                    _init("g", np.ones(4)),
                    _init("b", np.zeros(4)),
                ],
            ),
            {"i": np.ones((4, 5), np.int32)},
        ),
        (
            _model(
                [_ms("MultiHeadAttention", ["x", "k", "k"], ["y"], num_heads=2)],
                [_x("N", 3, 4), _x("N", 5, 4, name="k")],
            ),
            {"x": np.ones((4, 3, 4), np.float32), "k": np.ones((4, 5, 4), np.float32)},
        ),
    ]
    for model, feeds in cases:
        completed = _completed(model)
        for (name, dims), shape in zip(completed.items(), _run(model, **feeds), strict=True):
            assert dims[0] == "N" and dims[1:] == list(shape[1:]), (
                model.graph.node[0].op_type,
                name,
                dims,
                shape,
            )


@pytest.mark.parametrize("time_major", [True, False])
def test_a_dynamically_quantized_lstm_is_read_as_an_lstm(time_major: bool, tmp_path: Path) -> None:
    """quantize_dynamic's DynamicQuantizeLSTM: along its sequence (axis 0); batched where the graph
    moved the batch to axis 1 first, refused where the batch is its sequence."""
    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # onnxruntime.quantization's advice, not this test's
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        rng = np.random.default_rng(0)
        inits = [_init("W", rng.standard_normal((1, 16, 3))), _init("R", rng.standard_normal((1, 16, 4)))]
        first = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2])] if time_major else []
        lstm = helper.make_node("LSTM", ["t" if time_major else "x", "W", "R"], ["Y", "h"], hidden_size=4)
        last = helper.make_node(
            "Transpose" if time_major else "Identity",
            ["h"],
            ["y"],
            **({"perm": [1, 0, 2]} if time_major else {}),
        )
        onnx.save(_model([*first, lstm, last], [_x("N", 5, 3)], inits=inits, opset=14), tmp_path / "f.onnx")
        quantize_dynamic(
            tmp_path / "f.onnx",
            tmp_path / "q.onnx",
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["LSTM"],
        )
    finally:
        logging.disable(quiet)
    model = onnx.load(tmp_path / "q.onnx")
    assert "DynamicQuantizeLSTM" in [node.op_type for node in model.graph.node]
    mixed = row_mixing_outputs(model)
    if time_major:
        assert mixed == {} and _completed(model) == {"y": ["N", 1, 4]}
    else:
        assert (
            "the DynamicQuantizeLSTM node making 'Y' (com.microsoft) works along the batch's axis"
            in mixed["y"]
        )


def test_an_attention_mask_folded_from_each_rows_pair_is_not_read_as_rows() -> None:
    """A [2B] mask is every row's end, then every row's start: flattened from [B, 2] it gives each
    row another's positions (a tester, session 56: three of four answers wrong, OK)."""
    inits = [_init("w", np.ones((8, 24))), _init("b", np.zeros(24)), _init("flat", [-1], np.int64)]
    mask = _x("N", 2, kind=TensorProto.INT32, name="m")
    folded = helper.make_node("Reshape", ["m", "flat"], ["mask"])
    attention = _ms("Attention", ["x", "w", "b", "mask"], ["y"], num_heads=2)
    why = row_mixing_outputs(_model([folded, attention], [_x("N", 3, 8), mask], inits=inits))["y"]
    assert why == (
        "the Attention node making 'y' (com.microsoft) reads 'mask' ['N*2'] by each batch row's place on its "
        "axis 0, and that axis is not the batch's alone: its rows are taken as mixed"
    )
    per_row = _ms("Attention", ["x", "w", "b", "m"], ["y"], num_heads=2)  # [B, S]: each row's own
    assert (
        row_mixing_outputs(
            _model([per_row], [_x("N", 3, 8), _x("N", 3, kind=TensorProto.INT32, name="m")], inits=inits)
        )
        == {}
    )


def test_multi_head_attention_is_as_wide_as_its_value() -> None:
    narrow = _model(
        [_ms("MultiHeadAttention", ["q", "k", "v"], ["y"], num_heads=2)],
        [_x("N", 3, 8, name="q"), _x("N", 4, 8, name="k"), _x("N", 4, 12, name="v")],
    )
    feeds = {
        "q": np.ones((2, 3, 8), np.float32),
        "k": np.ones((2, 4, 8), np.float32),
        "v": np.ones((2, 4, 12), np.float32),
    }
    assert _completed(narrow) == {"y": ["N", 3, 12]} and _run(narrow, **feeds) == [(2, 3, 12)]
    cached = _model(
        [_ms("MultiHeadAttention", ["q", "k", "v"], ["y"], num_heads=2)],
        [_x("N", 3, 8, name="q"), _x("N", 2, 4, 3, name="k"), _x("N", 2, 4, 5, name="v")],
    )
    assert _completed(cached) == {"y": ["N", 3, 10]}  # [B, N, L, H] values: heads x head size


def test_ml_regressors_of_one_sample_and_float_statistics() -> None:
    one = _model([_ml("LinearRegressor", ["x"], ["y"], coefficients=[1.0] * 6, targets=2)], [_x(3)])
    assert _completed(one) == {"y": [1, 2]} and _run(one, x=np.ones(3, np.float32)) == [(1, 2)]
    half = TensorProto.FLOAT16
    stats = _model(
        [helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"], axis=-1)],
        [_x("N", 4, kind=half)],
        outputs=("y", "mean"),
        inits=[_init("s", np.ones(4), np.float16)],
        opset=13,
    )
    kinds = {v.name: v.type.tensor_type.elem_type for v in refined_outputs(stats)}
    assert kinds == {"y": half, "mean": F}


def test_a_width_a_model_gives_is_not_allocated() -> None:
    """FeatureVectorizer's inputdimensions of 10**9 (a 161-byte model had taken 2 GB to load with
    10**8): its stand-in broadcasts, so no tensor of the probe is that wide."""
    wide = _model([_ml("FeatureVectorizer", ["x"], ["y"], inputdimensions=[10**9])], [_x("N", 3)])
    probe = onnx.ModelProto()
    probe.CopyFrom(wide)
    with_stand_ins(probe, 17)
    sizes = [int(np.prod(a.t.dims)) for node in probe.graph.node for a in node.attribute if a.name == "value"]
    assert max(sizes) <= 1 and _completed(wide) == {"y": ["N", 10**9]}


def test_an_op_of_another_domain_inside_a_function_gets_its_shape() -> None:
    body = onnx.helper.make_function(
        "local",
        "fused",
        ["a"],
        ["b"],
        [_ms("Gelu", ["a"], ["b"])],
        [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)],
    )
    model = _model([helper.make_node("fused", ["x"], ["y"], domain="local")], [_x("N", 4)])
    model.functions.append(body)
    model.opset_import.append(helper.make_opsetid("local", 1))
    assert _completed(model) == {"y": ["N", 4]} and row_mixing_outputs(model) == {}


def test_a_stand_in_does_not_constrain_its_inputs_type_at_an_older_opset() -> None:
    """A QLinearSoftmax of uint8 at opset 11, where ONNX's ReduceMax takes no uint8: read all the
    same (onnx's inference here does not check types), batched along its last axis."""
    scale, zero = _init("s", 0.1), _init("z", 0, np.uint8)
    node = _ms("QLinearSoftmax", ["x", "s", "z", "s", "z"], ["y"], axis=-1, opset=13)
    model = _model([node], [_x("N", 5, kind=U8)], inits=[scale, zero], opset=11)
    assert row_mixing_outputs(model) == {} and _completed(model) == {"y": ["N", 5]}


@pytest.mark.parametrize(("rank", "axis"), [(2, 1), (3, 2), (3, 1)])
def test_a_softmax_of_the_old_opsets_from_a_positive_axis_to_the_last_is_read(rank: int, axis: int) -> None:
    """QLinearSoftmax with `opset` below 13 normalises from `axis` to the last, the input's rank not
    known to the load (torch's older exports write the last axis positive): batched, its shape kept."""
    scale, zero = _init("s", 0.1), _init("z", 0, np.uint8)
    product = helper.make_node("Identity", ["x"], ["h"])  # its rank known only after inference
    node = _ms("QLinearSoftmax", ["h", "s", "z", "s", "z"], ["y"], axis=axis, opset=12)
    dims = ["N", 3, 5][:rank]
    model = _model([product, node], [_x(*dims, kind=U8)], inits=[scale, zero], opset=12)
    assert row_mixing_outputs(model) == {} and _completed(model) == {"y": dims}


def test_fused_matmul_of_activations_transposed_is_read_by_an_einsum() -> None:
    """onnxruntime fuses q @ k^T of activations into FusedMatMul(transB=1): their ranks unknown to
    the load (a tester, s56: every optimized attention block had been refused)."""
    nodes = [
        helper.make_node("Identity", ["q"], ["qa"]),
        helper.make_node("Identity", ["k"], ["ka"]),
        _ms("FusedMatMul", ["qa", "ka"], ["y"], transB=1, alpha=0.5),
    ]
    model = _model(nodes, [_x("N", 3, 4, name="q"), _x("N", 5, 4, name="k")])
    assert row_mixing_outputs(model) == {} and _completed(model) == {"y": ["N", 3, 5]}
    gram = _model(
        [helper.make_node("Identity", ["q"], ["qa"]), _ms("FusedMatMul", ["qa", "qa"], ["y"], transA=1)],
        [_x("N", 4, name="q")],
    )
    assert "works along the batch's axis" in row_mixing_outputs(gram)["y"]


def test_scales_and_masks_made_from_the_batchs_size_mix() -> None:
    """An input a stand-in does not read, made from the batch's size (a scale N * 0.05; a mask
    arange(1, N + 1)), and a constant 1-D mask read by its length (testers, s56: batched, OK)."""
    size = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=F),
        helper.make_node("Mul", ["nf", "step"], ["sv"]),
        helper.make_node("Squeeze", ["sv"], ["scale"]),
    ]
    inits = [_init("zero", [0], np.int64), _init("step", [0.05]), _init("z", 0, np.uint8)]
    sigmoid = _ms("QLinearSigmoid", ["x", "scale", "z", "scale", "z"], ["y"])
    why = row_mixing_outputs(_model([*size, sigmoid], [_x("N", 4, kind=U8)], inits=inits))["y"]
    assert why.startswith(
        "the QLinearSigmoid node making 'y' (com.microsoft) reads 'scale': its values are made"
    )
    weights = [_init("w", np.ones((8, 24))), _init("b", np.zeros(24))]
    constant = _ms("Attention", ["x", "w", "b", "m"], ["y"], num_heads=2)
    mask = [_init("m", [4, 1], np.int32), *weights]
    why = row_mixing_outputs(_model([constant], [_x("N", 3, 8)], inits=mask))["y"]
    assert "reads 'm' by each batch row's place on its axis 0" in why
    bias = _ms("Attention", ["x", "w", "b", "", "", "ab"], ["y"], num_heads=2)  # [1, heads, S, S]: alike
    shared = [_init("ab", np.zeros((1, 2, 3, 3))), *weights]
    assert row_mixing_outputs(_model([bias], [_x("N", 3, 8)], inits=shared)) == {}


def test_stand_ins_below_opset_9_use_no_where() -> None:
    """A Normalizer of a 2-D input at opset 8 (older sklearn conversions): read, its shape given."""
    model = _model([_ml("Normalizer", ["x"], ["y"], norm="L2")], [_x("N", 4)], opset=8)
    assert row_mixing_outputs(model) == {} and _completed(model) == {"y": ["N", 4]}


def test_expand_dims_is_read_as_an_unsqueeze() -> None:
    """com.microsoft's ExpandDims of a constant axis: [N, 3] at -1 is [N, 3, 1] (onnxruntime 1.23
    crashes opening it, so its shape is not asked of onnxruntime here)."""
    model = _model([_ms("ExpandDims", ["x", "a"], ["y"])], [_x("N", 3)], inits=[_init("a", -1, np.int32)])
    assert row_mixing_outputs(model) == {} and _completed(model) == {"y": ["N", 3, 1]}
