"""tritonclient and sluiceway's clients in one Python process, imported in either order.

Both ship generated modules for protobuf package `inference`; ours are built in a private
descriptor pool (protos/pool.py), so neither import fails and each library's messages work
against a real server. Each order runs in a fresh interpreter: whichever module is imported first
is what matters, and this pytest process has long since imported both.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.server_process import REPO_ROOT, ServerProcess

IMPORTS = {
    "tritonclient first": "import tritonclient.grpc as tc\nimport clients\n",
    "clients first": "import clients\nimport tritonclient.grpc as tc\n",
}

# After the imports: one real call through each library, same input, same answer; then each
# library's ModelConfig, and messages crossing between the two (same wire names and numbers).
CALLS = """
import sys
import numpy as np
from google.protobuf import text_format
from protos import grpc_service_pb2 as pb, model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as triton_pb

address = sys.argv[1]
features = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
with clients.Client(address) as ours:
    our_scores = ours.infer("mlp", {"features": features})["scores"]
    our_config = ours.model_config("mlp")
triton = tc.InferenceServerClient(url=address)
tensor = tc.InferInput("features", list(features.shape), "FP32")
tensor.set_data_from_numpy(features)
their_scores = triton.infer("mlp", [tensor]).as_numpy("scores")
their_config = triton.get_model_config("mlp").config
np.testing.assert_array_equal(our_scores, their_scores)
assert our_config.max_batch_size == their_config.max_batch_size > 0
assert type(our_config) is mc.ModelConfig and type(their_config) is not mc.ModelConfig
request = pb.ModelInferRequest(model_name="mlp")
request.parameters["timeout"].int64_param = 5
theirs = triton_pb.ModelInferRequest.FromString(request.SerializeToString())
assert theirs.parameters["timeout"].int64_param == 5
assert pb.ModelInferRequest.FromString(theirs.SerializeToString()) == request
assert text_format.Parse("max_batch_size: 4", mc.ModelConfig()).max_batch_size == 4
print("coexist ok", our_scores.shape)
"""


@pytest.mark.parametrize("order", sorted(IMPORTS))
def test_both_clients_work_in_one_process(order: str, demo_server: ServerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS[order] + CALLS, demo_server.address],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "coexist ok (3, 2)" in done.stdout
