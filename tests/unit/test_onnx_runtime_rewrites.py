"""What onnxruntime computes of shapes that onnx's inference reads otherwise (a tester, session 67):
ReshapeFusion's -1 for the one entry it does not check, turned off in the server's sessions
(onnxruntime_backend.UNCHECKING_OPTIMIZERS), and a Cast to 8 or 16 bits that wraps a length,
written into the reading's copy (onnx_runtime_rewrites.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from server.backends.onnx_output_shapes import inferred_shapes
from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_runtime_rewrites import as_onnxruntime_runs
from server.backends.onnxruntime_backend import CPU, OrtBackend, OrtOptions
from tests.support.onnx_graphs import F, graph_model, ints, node

SIZES = [ints(f"at{a}", a) for a in range(3)] + [ints("zero1", [0]), ints("minus1", [-1]), ints("four1", [4])]


def _dim(source: str, axis: int, out: str) -> list[onnx.NodeProto]:
    """Shape(source)[axis] as a [1] tensor `out` (the Unsqueeze ReshapeFusion matches)."""
    return [
        node("Shape", [source], f"{out}_s"),
        node("Gather", [f"{out}_s", f"at{axis}"], f"{out}_g", axis=0),
        node("Unsqueeze", [f"{out}_g", "zero1"], out),
    ]


def _views(first: list[str]) -> onnx.ModelProto:
    """x [N, H, K] viewed by `first` (entries of n, w, k and constants) as a second output 'u', and
    as [-1, W, K] for 'y' (W read off z [N, W])."""
    nodes = [
        *_dim("x", 0, "n"),
        *_dim("z", 1, "w"),
        *_dim("x", 2, "k"),
        node("Concat", first, "to_u", axis=0),
        node("Reshape", ["x", "to_u"], "u"),
        *_dim("x", 2, "k2"),
        *_dim("z", 1, "w2"),
        node("Concat", ["minus1", "w2", "k2"], "to_y", axis=0),
        node("Reshape", ["x", "to_y"], "y"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F, ["N", "H", "K"]),
        helper.make_tensor_value_info("z", F, ["N", "W"]),
    ]
    model = graph_model(nodes, SIZES, inputs=inputs)
    model.graph.output.append(helper.make_tensor_value_info("u", F, None))
    return model


async def test_the_servers_sessions_check_each_reshape_as_written(tmp_path: Path) -> None:
    """x.view(N, W, K) of x [N, H, K]: onnxruntime's ReshapeFusion runs it as [0, -1, 0], [N, H, K]
    whatever W is, so a later x.view(-1, W, K) read as N gave two requests' rows as four at H = 4,
    W = 2 (a tester, session 67). The server's sessions of a load that batches turn ReshapeFusion off:
    the view by W is checked, the batch refused by onnxruntime (as each request alone is), and the
    reading, which takes W for H through it, batches rightly."""
    model = _views(["n", "w", "k"])
    x, z = np.ones((2, 4, 3), np.float32), np.ones((2, 2), np.float32)
    fused = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert fused.run(["y"], {"x": x, "z": z})[0].shape == (4, 2, 3)  # onnxruntime's default
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    batched = OrtOptions(checked_reshapes=True)  # (a config batching requests: config_backend.py)
    backend = OrtBackend(path, batched, [(CPU, {})], ThreadPoolExecutor(1), model_name="m")
    try:
        with pytest.raises(Exception, match="reshape"):
            await backend.run({"x": x, "z": z})
        square = await backend.run({"x": np.ones((2, 2, 3), np.float32), "z": z})  # H == W: it runs
        assert square["y"].shape == (2, 2, 3)
    finally:
        backend.close()
    assert row_mixing_outputs(model) == {}


def test_a_cast_to_eight_bits_is_read_as_the_wrapped_value() -> None:
    """x.view(-1, int64(uint8(H)), K): at H = 260 the view is [65N, 4, K] alone (rows split in 65),
    so N rows batched are 65N, not N. Batched at 0995c0b (onnx passed H through the Cast)."""
    nodes = [
        *_dim("x", 1, "h"),
        node("Cast", ["h"], "h8", to=TensorProto.UINT8),
        node("Cast", ["h8"], "h64", to=TensorProto.INT64),
        *_dim("x", 2, "k"),
        node("Concat", ["minus1", "h64", "k"], "to", axis=0),
        node("Reshape", ["x", "to"], "y"),
    ]
    model = graph_model(nodes, SIZES, shape=("N", "H", "K"))
    assert "reshapes 'x'" in row_mixing_outputs(model)["y"]
    inferred = inferred_shapes(model)
    assert as_onnxruntime_runs(inferred)
    mods = [n for n in inferred.graph.node if n.op_type == "Mod"]
    assert len(mods) == 1 and int(helper.get_attribute_value(mods[0].attribute[0])) == 0
    for graph_model_ in (model, inferred):  # the same values, wrapped alike
        session = ort.InferenceSession(graph_model_.SerializeToString(), providers=["CPUExecutionProvider"])
        assert session.run(None, {"x": np.ones((1, 260, 2), np.float32)})[0].shape == (65, 4, 2)
