"""Per-row dynamic quantization (server/backends/row_quantization.py) on raw onnxruntime, no server:
how much a batch mate changes a row's answer, per batch and per row, and what per row costs in
model time (best of 3 windows), for the demo MLP and a transformer-sized feed-forward block, and
what the rewrite adds to each instance's load.

    .venv/bin/python -m loadtest.row_quantization_raw
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from server.backends.row_quantization import make_per_row, row_quantized
from server.models.demo import build_mlp

WINDOW_S = 0.4


def ffn_block(path: Path) -> Path:
    """768 -> 3072 -> 768 (BERT-base's feed-forward), x [N, S, 768]."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal(shape) * 0.02).astype(np.float32), name)
        for name, shape in (("w0", (768, 3072)), ("w1", (3072, 768)))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("MatMul", ["r", "w1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 768])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 768])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def quantized_sessions(source: Path, path: Path) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's advice, every call
    quantize_dynamic(source, path, weight_type=QuantType.QInt8)
    model = onnx.load(str(path))
    make_per_row(model)
    cpu = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), providers=cpu), ort.InferenceSession(
        model.SerializeToString(), providers=cpu
    )


def _us_per_run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    for _ in range(5):
        session.run(None, feed)
    best = float("inf")
    for _ in range(3):
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < WINDOW_S:
            session.run(None, feed)
            runs += 1
        best = min(best, (time.perf_counter() - start) / runs * 1e6)
    return best


def _coupling(session: ort.InferenceSession, x: np.ndarray) -> tuple[float, float]:
    """The largest change of a row's answer (rows 1..) batched with x[0] against alone, and the
    magnitude of that row's answer."""
    batched = session.run(None, {"features": x})[0]
    worst, size = 0.0, 0.0
    for i in range(1, len(x)):
        alone = session.run(None, {"features": x[i : i + 1]})[0][0]
        change = float(np.abs(batched[i] - alone).max())
        if change > worst:
            worst, size = change, float(np.abs(alone).max())
    return worst, size


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="rowq-"))
    (folder / "mlp.onnx").write_bytes(build_mlp())
    mlp = quantized_sessions(folder / "mlp.onnx", folder / "mlp_int8.onnx")
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    x[0] *= 10
    for name, session in zip(("per_batch", "per_row"), mlp, strict=True):
        worst, size = _coupling(session, x)
        if worst == 0:
            print(f"mlp {name}: no row's answer changed, batched with a 10x row")
        else:
            print(
                f"mlp {name}: a row batched with a 10x row changed by up to {worst:.4g} "
                f"(that row's answer: {size:.3g})"
            )
    ffn = quantized_sessions(ffn_block(folder / "ffn.onnx"), folder / "ffn_int8.onnx")
    load_ms = []
    for _ in range(5):  # what each instance's load adds: the scan, the parse, the rewrite, the bytes
        start = time.perf_counter()
        rewritten = row_quantized(folder / "ffn_int8.onnx", "ffn")
        assert rewritten is not None
        rewritten.SerializeToString()
        load_ms.append((time.perf_counter() - start) * 1e3)
    size_mb = (folder / "ffn_int8.onnx").stat().st_size / 1e6
    print(
        f"ffn load: the per-row rewrite of its {size_mb:.1f} MB file took "
        f"{sorted(load_ms)[2]:.1f} ms (median of 5)"
    )
    rng = np.random.default_rng(1)
    for model, sessions, name, shapes in (
        ("mlp", mlp, "features", [(1, 64), (8, 64), (64, 64)]),
        ("ffn", ffn, "x", [(1, 128, 768), (8, 128, 768)]),
    ):
        for shape in shapes:
            feed = {name: rng.standard_normal(shape).astype(np.float32)}
            per_batch, per_row = (_us_per_run(s, feed) for s in sessions)
            print(
                f"{model} {list(shape)}: per batch {per_batch:9.1f} us, per row {per_row:9.1f} us, "
                f"ratio {per_row / per_batch:.3f}"
            )


if __name__ == "__main__":
    main()
