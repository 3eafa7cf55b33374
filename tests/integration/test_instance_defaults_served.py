"""Triton's instance_group defaults through a real server, read with tritonclient and our client:
a model without config.pbtxt gets one group named after it with 2 CPU instances (onnxruntime's
count), a KIND_CPU group without `count` 2, a given count its own, and the identity backend 1.
The load log names the instances actually made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from clients import Client
from protos import model_config_pb2 as mc
from tests.support.models import scale_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

CPU = mc.ModelInstanceGroup.KIND_CPU
TENSORS = (
    'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
)
GROUPS = 'instance_group [ { kind: KIND_CPU }, { name: "one" count: 1 } ]\n'
GROUPED = "max_batch_size: 8\n" + TENSORS + GROUPS
IDENT = 'backend: "identity"\nmax_batch_size: 8\n' + TENSORS


def _groups(config: mc.ModelConfig) -> list[tuple[str, int, int]]:
    return [(g.name, g.kind, g.count) for g in config.instance_group]


def test_groups_without_a_count_or_a_name_get_tritons_defaults(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    onnx_file = scale_model(tmp_path / "scale.onnx", 2.0)
    write_model(repo, "auto", onnx_file, None)  # no config.pbtxt at all
    write_model(repo, "grouped", onnx_file, GROUPED)
    (repo / "ident" / "1").mkdir(parents=True)
    (repo / "ident" / "config.pbtxt").write_text(IDENT)
    # The server sees no GPU here (a CPU-only onnxruntime in CI): KIND_AUTO resolves to KIND_CPU.
    with ServerProcess("--model-repository", str(repo)) as server:
        for line in (
            "model auto version 1: instances auto x2 (cpu)",
            "model grouped version 1: instances grouped_0 x2 (cpu), one x1 (cpu)",
            "model ident version 1: instances ident x1 (cpu)",
        ):
            server.wait_for_output(line)
        tc = triton.InferenceServerClient(server.address)
        try:
            assert _groups(tc.get_model_config("auto").config) == [("auto", CPU, 2)]
            assert _groups(tc.get_model_config("grouped").config) == [("grouped_0", CPU, 2), ("one", CPU, 1)]
            x = triton.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            answer = tc.infer("auto", [x]).as_numpy("y")
            assert answer is not None and answer.tolist() == [[2.0] * 4]
        finally:
            tc.close()
        with Client(server.address) as client:
            assert _groups(client.model_config("ident", timeout_s=10)) == [("ident", CPU, 1)]
            out = client.infer("grouped", {"x": np.full((3, 4), 1.5, np.float32)}, timeout_s=60)
            assert out["y"].tolist() == [[3.0] * 4] * 3
