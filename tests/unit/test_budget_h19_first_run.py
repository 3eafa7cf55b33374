"""A model without `model_warmup` is measured with its own first-run arena chunk (server/models/
first_run.py): one row of zeros runs through each instance inside its measured load.

onnxruntime 1.31 allocates a session's CPU arena chunk at its first run: the demo MLP's load had
measured 0.45 MiB while it held 1.45 MiB after its first request, and that chunk fell into the next
model's load measure. (onnxruntime 1.23, the 3.10 venv, allocates it at creation: there the load
measured 1.5 MiB already.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protos import model_config_pb2 as mc
from server.models.first_run import zero_feed
from server.models.footprint import heap_meter
from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.settings import ServerSettings
from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import REPO_ROOT

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
MIB = 1 << 20


def config(max_batch_size: int = 8, *inputs: tuple[str, int, list[int], bool]) -> mc.ModelConfig:
    made = mc.ModelConfig(name="m", max_batch_size=max_batch_size)
    for name, data_type, dims, optional in inputs:
        made.input.add(name=name, data_type=data_type, dims=dims, optional=optional)
    return made


def test_the_zero_feed_is_one_row_of_each_needed_input() -> None:
    made = config(8, ("a", mc.TYPE_FP32, [64], False), ("b", mc.TYPE_INT64, [2, 3], False),
                  ("opt", mc.TYPE_FP32, [4], True))  # fmt: skip
    feed = zero_feed(made, 1 << 20)
    assert feed is not None and sorted(feed) == ["a", "b"]
    assert feed["a"].shape == (1, 64) and feed["a"].dtype == np.float32 and not feed["a"].any()
    assert feed["b"].shape == (1, 2, 3) and feed["b"].dtype == np.int64
    unbatched = zero_feed(config(0, ("a", mc.TYPE_FP32, [3, 4], False)), 1 << 20)
    assert unbatched is not None and unbatched["a"].shape == (3, 4)


@pytest.mark.parametrize(
    "why",
    ["variable dim", "bytes input", "over the message limit", "identity backend", "model_warmup"],
)
def test_no_zero_feed_where_no_safe_input_can_be_made(why: str) -> None:
    made = config(8, ("a", mc.TYPE_FP32, [64], False))
    if why == "variable dim":
        made = config(8, ("a", mc.TYPE_FP32, [-1, 4], False))
    elif why == "bytes input":
        made = config(8, ("a", mc.TYPE_STRING, [1], False))
    elif why == "identity backend":
        made.backend = "identity"
    elif why == "model_warmup":
        made.model_warmup.add(name="w", batch_size=1)
    limit = 64 * 4 - 1 if why == "over the message limit" else 1 << 20
    assert zero_feed(made, limit) is None


async def first_run_growth(tmp_path: Path) -> dict[str, int]:
    """Load a lazy copy `a` of the demo MLP under a budget, then run one request through it: its
    measured footprint, and the heap's growth over that first request's run."""
    mlp = demo_repository() / "mlp"
    text = (mlp / "config.pbtxt").read_text().replace('"mlp"', '"a"') + LAZY
    assert "model_warmup" not in text
    write_model(tmp_path / "repo", "a", mlp / "1" / "model.onnx", text)
    (tmp_path / "cache").mkdir()
    # The zero run is made under a memory budget only (test_budget_h19b_first_run.py).
    settings = ServerSettings(cache_dir=tmp_path / "cache", metrics=False, model_memory_budget_mb=100)
    manager = ModelManager(tmp_path / "repo", settings, lambda n, r: None)
    loads = ModelLoads(manager, tmp_path / "repo", 100 * MIB)
    manager.on_demand = loads
    meter = heap_meter()
    assert meter is not None
    try:
        loads.register_lazy("a")
        await loads.ready("a", 120.0)
        backend = manager.entry("a").versions[1].backends[0]
        before = meter()
        await backend.run({"features": np.ones((1, 64), np.float32)})
        return {"grown": meter() - before, "footprint": loads.budget.size_of("a") or 0}
    finally:
        await manager.stop(drain_timeout_s=5)


# Runs `first_run_growth` in a fresh interpreter; prints its result as JSON.
FIRST_RUN = """
import asyncio, json, sys
from pathlib import Path
from tests.unit.test_budget_h19_first_run import first_run_growth

print(json.dumps(asyncio.run(first_run_growth(Path(sys.argv[1])))))
"""


def test_a_model_without_warmup_holds_its_first_runs_chunk_in_its_footprint(tmp_path: Path) -> None:
    """Before (onnxruntime 1.31): footprint 0.45 MiB, and its first request's run added 1.03 MiB.

    Measured in a fresh child interpreter: the measure is the process's heap growth over the load,
    so in a pytest worker the frees of earlier tests' leftovers count too (a CI run read this load
    at 0.32 MiB, and its first run grew nothing: the chunk had been measured, then offset)."""
    if heap_meter() is None:
        pytest.skip("no mallinfo2 here (not glibc 2.33+)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", FIRST_RUN, str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    grown, footprint = int(result["grown"]), int(result["footprint"])
    assert grown < MIB // 4, (grown, footprint)  # before: 1,082,128 bytes
    assert footprint > MIB, footprint  # before: 0.45 MiB (3.13)
