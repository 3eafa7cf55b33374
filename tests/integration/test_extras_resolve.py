"""The runtime extras are alternatives: pip resolves `.[cpu,test]` (what scripts/bootstrap.sh installs)
without the GPU wheel or any NVIDIA library, and `.[gpu,gpucheck]` without the CPU wheel, against the
package index this machine's pip uses (`pip install --dry-run --report`, nothing installed; about
20-35 s). The pins must exist there for this Python: a pin with no wheel fails here, not at install.
Skipped, saying why, when the index cannot be reached. Once per test command, on its oldest Python
(tests/support/once.py): the newest one's install is what scripts/bootstrap.sh has just done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.once import EXTRAS_RESOLVE, once_per_command

REPO = Path(__file__).resolve().parents[2]
DEFAULT_INDEX = "https://pypi.org/simple"
PROBE_TIMEOUT_S = 10.0
RESOLVE_TIMEOUT_S = 300.0  # 40 s here; a repeated run at load average ~14 took longer than 120

# pytest-timeout's 120 s per test would end the fixture's resolutions (bounded at RESOLVE_TIMEOUT_S)
# first: at a load average of ~10 they took over 120 s and the fixture errored.
pytestmark = [
    pytest.mark.network,
    once_per_command(EXTRAS_RESOLVE),
    pytest.mark.timeout(RESOLVE_TIMEOUT_S + 60),
]


def index_url() -> str:
    """The index pip would ask (PIP_INDEX_URL, else `pip config`, else PyPI)."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    configured = done.stdout.strip() if done.returncode == 0 else ""
    return (configured or DEFAULT_INDEX).rstrip("/")


@pytest.fixture(scope="module")
def reachable_index() -> str:
    url = f"{index_url()}/onnxruntime/"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as answer:
            answer.read(1)
    except (urllib.error.URLError, OSError) as err:
        pytest.skip(f"the package index is not reachable ({url}: {err}); the extras were not resolved")
    return url


def resolve(extras: str) -> dict[str, str]:
    """Name -> version of what `pip install .[extras]` would install into an empty environment."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", "-", f".[{extras}]"]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"pip could not resolve .[{extras}]:\n{done.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(done.stdout)
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in report["install"]
    }


@pytest.fixture(scope="module")
def installs(reachable_index: str) -> dict[str, dict[str, str]]:
    # Both resolutions at once: each is mostly waiting on the index, and this is CI's slowest setup.
    # `gpu,gpucheck` is what scripts/gpu_check.sh installs beside NVIDIA's libraries.
    extras = ("cpu,test", "gpu,gpucheck")
    with ThreadPoolExecutor(len(extras)) as pool:
        return dict(zip(extras, pool.map(resolve, extras), strict=True))


@pytest.fixture(scope="module")
def cpu_install(installs: dict[str, dict[str, str]]) -> dict[str, str]:
    return installs["cpu,test"]


@pytest.fixture(scope="module")
def gpu_install(installs: dict[str, dict[str, str]]) -> dict[str, str]:
    return installs["gpu,gpucheck"]


def test_the_cpu_install_never_pulls_the_gpu_wheel(cpu_install: dict[str, str]) -> None:
    assert "onnxruntime" in cpu_install, sorted(cpu_install)
    # nvidia-ml-py is NVML's binding, pure Python (ctypes), for the tests of the GPU gauges; it
    # loads nothing of CUDA, and a server without the driver never imports it.
    gpu = sorted(
        n
        for n in cpu_install
        if n == "onnxruntime-gpu" or (n.startswith(("nvidia-", "tensorrt")) and n != "nvidia-ml-py")
    )
    assert gpu == [], f"the CPU install pulls GPU packages: {gpu}"


def test_the_gpu_install_never_pulls_the_cpu_wheel(gpu_install: dict[str, str]) -> None:
    assert "onnxruntime-gpu" in gpu_install, sorted(gpu_install)
    assert "onnxruntime" not in gpu_install, "the GPU install pulls the CPU wheel as well"
    # The CUDA shared-memory test's client (tritonclient imports cuda.bindings), CUDA's major matching.
    cuda = "13." if sys.version_info >= (3, 11) else "12."
    assert gpu_install.get("cuda-bindings", "").startswith(cuda), sorted(gpu_install)
    assert "nvidia-ml-py" in gpu_install, "the GPU gauges' binding (server/observability/gpu_usage.py)"


def test_the_pins_match(cpu_install: dict[str, str], gpu_install: dict[str, str]) -> None:
    # The same version of both wheels on this Python: the extras pin them together.
    assert cpu_install["onnxruntime"] == gpu_install["onnxruntime-gpu"]
