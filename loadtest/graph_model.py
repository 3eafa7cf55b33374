"""A load-test model made on the spot: one ONNX graph written into a Triton repository
(`REPO/NAME/1/model.onnx`, opset 18, and its config.pbtxt), for transport_ceiling's meanpool and
connection_spread's sleepy model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_graph_model(repo: Path, graph: Any, config: str) -> None:
    """`graph` (an onnx GraphProto) as model `graph.name`, its config that name, the onnxruntime
    platform and `config`'s lines."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    (repo / graph.name / "1").mkdir(parents=True)
    onnx.save(model, repo / graph.name / "1" / "model.onnx")
    header = f'name: "{graph.name}"\nplatform: "onnxruntime_onnx"\n'
    (repo / graph.name / "config.pbtxt").write_text(header + config)
