"""The differential tester's scenario on a real server: `ens` = (x*1)*2 over two lazy one-node ONNX
models whose files are a few hundred bytes and whose loads measure ~1.1 MiB each (onnxruntime's
arena chunk, allocated by the load's zero run on 1.31, at session creation on 1.23), under a 2 MiB
budget. Each request had been refused RESOURCE_EXHAUSTED "loading model 'ens' needs about 0.0 MiB
... no idle lazy model to evict", retried by our client, with both steps loaded, 2.3 of 2 MiB used.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import Client
from clients.endpoints import RetryPolicy
from clients.errors import SluicewayError
from tests.support.models import scale_model
from tests.support.server_process import ServerProcess

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
ONE = "instance_group [ { count: 1 kind: KIND_CPU } ]\n"  # the sizes below are one instance's
STEP = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n' + ONE + LAZY
ENS = """platform: "ensemble"
max_batch_size: 8
input { name: "IN" data_type: TYPE_FP32 dims: [4] }
output { name: "OUT" data_type: TYPE_FP32 dims: [4] }
ensemble_scheduling {
 step { model_name: "one" model_version: -1
        input_map { key: "x" value: "IN" } output_map { key: "y" value: "A" } }
 step { model_name: "two" model_version: -1
        input_map { key: "x" value: "A" } output_map { key: "y" value: "OUT" } }
}
"""


def repository(repo: Path) -> Path:
    for name, k in (("one", 1.0), ("two", 2.0)):
        (repo / name / "1").mkdir(parents=True)
        scale_model(repo / name / "1" / "model.onnx", k)
        (repo / name / "config.pbtxt").write_text(STEP)
    (repo / "ens" / "1").mkdir(parents=True)
    (repo / "ens" / "config.pbtxt").write_text(ENS)
    return repo


def test_an_ensemble_whose_steps_measure_over_the_budget_is_refused_for_good_naming_them(
    tmp_path: Path,
) -> None:
    with (
        ServerProcess(
            "--model-repository", str(repository(tmp_path)), "--model-memory-budget-mb", "2"
        ) as server,
        Client(server.address, retry=RetryPolicy(max_attempts=5)) as client,
    ):
        for _ in range(3):
            with pytest.raises(SluicewayError) as refused:
                client.infer("ens", {"IN": np.ones((1, 4), np.float32)}, timeout_s=60)
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
            assert refused.value.reason == "OUTGROWS_MEMORY_BUDGET", refused.value  # not retried
            message = str(refused.value)
            assert "loading ensemble 'ens' needs its step models loaded together: 'one'" in message, message
            assert "'two' 1." in message and "needs about 0.0 MiB" not in message, message
        server.wait_for_output("loaded in", times=2)  # the output pump can lag behind the answers
        server.wait_for_output("model one evicted: ")
        log = server.output()
        assert log.count("loaded in") == 2, log  # each step once: later requests load nothing
        # The steps loaded for it went back within the budget: the first of them evicted.
        evicted = re.search(r"model one evicted: [\d.]+ MiB freed; budget ([\d.]+) of 2 MiB used", log)
        assert evicted is not None and float(evicted.group(1)) <= 2.0, log
        # A step alone loads and answers (its ensemble's refusal holds nothing loaded).
        answer = client.infer("two", {"x": np.ones((1, 4), np.float32)}, timeout_s=60)
        assert answer["y"].tolist() == [[2.0] * 4], answer
