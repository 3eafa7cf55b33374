"""For tests that run a SluicewayServer in their own process and hold its event loop on purpose
(test_drain_h19.py, test_stream_pace_calls_wait.py): the demo mlp alone, one request for it, and
grpc core's count of the calls it has taken."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protos import grpc_service_pb2 as pb
from server.protocol.core_calls import CoreCalls
from tests.support.repositories import write_model


def mlp_only_repo(demo_repo: Path, root: Path) -> Path:
    """A repository at `root` holding the demo mlp with its config, nothing else."""
    config = (demo_repo / "mlp" / "config.pbtxt").read_text()
    write_model(root, "mlp", demo_repo / "mlp" / "1" / "model.onnx", config)
    return root


def mlp_request(rid: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp", id=rid)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    return request


def core_started(core: CoreCalls) -> int:
    """The calls grpc core has taken (0 when its counts cannot be read)."""
    counts = core.counts()
    return 0 if counts is None else counts.started
