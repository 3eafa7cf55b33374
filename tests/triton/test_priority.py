"""tritonclient's `priority` against a real sluiceway process: Triton's meaning, levels it lacks."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.support.server_process import ServerProcess


@pytest.mark.parametrize("priority", [0, 1, 2, 1000, 2**63 - 1, 2**64 - 1])
def test_any_priority_is_served_levels_the_model_lacks_at_its_default(
    demo_server: ServerProcess, priority: int
) -> None:
    # tritonclient sends `priority` as uint64; the demo mlp has one level. Triton's
    # InferenceRequest::SetPriority maps 0 and levels above the model's to its default level.
    client = grpcclient.InferenceServerClient(url=demo_server.address)
    data = np.ones((2, 64), np.float32)
    tensor = grpcclient.InferInput("features", [2, 64], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("mlp", [tensor], priority=priority, client_timeout=30.0)
    assert result.as_numpy("scores").shape == (2, 2)
