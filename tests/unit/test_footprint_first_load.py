"""The first model a process loads is charged its own footprint, not the process's one-time costs.

A footprint is the heap's growth over a load (server/models/footprint.py). The first load of a
process also paid onnxruntime's once-a-process allocations (its environment, CPU kernel registry:
1.33 MB) and numpy's import of numpy.random (0.4 MB, by the warm-up): the demo MLP measured 2.19 MB
on its first load and 0.45 MB on every later one (3.10's onnxruntime 1.23: 3.10 against 1.52),
so a 1 MiB budget refused it for good once evicted. Only a fresh process shows it: the test
measures in a child interpreter (a pytest worker has loaded models already).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import REPO_ROOT

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'

# Loads `a` then `b` (the same files) in one fresh process; prints their footprints in bytes.
MEASURE = """
import asyncio, json, sys
from pathlib import Path
from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.settings import ServerSettings

async def main() -> None:
    root, cache = Path(sys.argv[1]), Path(sys.argv[2])
    manager = ModelManager(root, ServerSettings(cache_dir=cache, metrics=False), lambda n, r: None)
    loads = ModelLoads(manager, root, 0)
    manager.on_demand = loads
    sizes = []
    try:
        for name in ("a", "b"):
            loads.register_lazy(name)
            await loads.ready(name, 120.0)
            sizes.append(loads.budget.size_of(name))
    finally:
        await manager.stop(drain_timeout_s=5)
    print(json.dumps(sizes))

asyncio.run(main())
"""


# mutmut's copy (mutants/) runs every function through its trampoline: the second load there
# measured 0.80 MB to the first's 0.48 (session 56's stats run failed on it).
@pytest.mark.skipif(REPO_ROOT.name == "mutants", reason="mutmut's trampolines change what a load allocates")
def test_the_first_load_in_a_process_is_charged_its_own_footprint(tmp_path: Path) -> None:
    mlp = demo_repository() / "mlp"
    config = (mlp / "config.pbtxt").read_text()
    for name in ("a", "b"):
        write_model(
            tmp_path / "repo", name, mlp / "1" / "model.onnx", config.replace('"mlp"', f'"{name}"') + LAZY
        )
    (tmp_path / "cache").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "repo"), str(tmp_path / "cache")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = json.loads(out.stdout.strip().splitlines()[-1])
    # Measured after the fix: 0.466 and 0.448 MB (3.13), 1.528 and 1.523 MB (3.10). Before: 2.19
    # and 0.45; with onnxruntime's costs paid but numpy.random still imported by the first
    # warm-up, 0.86 and 0.45 (1.93 and 1.53 with 3.10); a walk kept by a cycle, 0.81 and 0.45.
    # Under a full CPU (the suite's workers) a load's thread hops can start a pool thread inside
    # it, its allocations counted too: 0.50 and 0.44 MB seen at 098d7b5 and after (session 57, two
    # busy loops beside; once, 0.52 and 0.45 in CI). Allowed: 15%, or 96 KiB.
    assert abs(first - second) <= max(second * 0.15, 96 * 1024), (first, second)
