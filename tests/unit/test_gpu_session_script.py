"""scripts/gpu_session.sh, issue 15's prepared device call, over stand-ins for gpu_check.sh and for
the GPU venv's Python: the four steps in order with their settings, each bounded by its share and
by what the call has left."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _session(tmp_path: Path, **env: str) -> tuple[list[list[str]], str]:
    """Run the script with a stand-in check that records its settings and writes a table row."""
    calls = tmp_path / "calls"
    stand_in = tmp_path / "check.sh"
    stand_in.write_text(
        "#!/usr/bin/env bash\n"
        f'env | grep "^GPU_CHECK_" | sort | tr "\\n" " " >>{calls}; echo >>{calls}\n'
        'mkdir -p "$1" && echo "| resnet | H200 | served | 64 in flight | 1.0 |" >"$1/gpu_check.md"\n'
    )
    python = tmp_path / "python"  # the host step's: records its arguments as one more call
    python.write_text(f'#!/usr/bin/env bash\necho "HOST $*" >>{calls}\necho "host ceiling line"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    stand_ins = {"GPU_SESSION_CHECK": str(stand_in), "GPU_SESSION_PYTHON": str(python)}
    done = subprocess.run(
        ["bash", "scripts/gpu_session.sh", str(out)],
        cwd=REPO, env={**os.environ, **stand_ins, **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [line.split() for line in lines], (out / "session.log").read_text()


def test_the_four_steps_run_in_order_with_their_settings(tmp_path: Path) -> None:
    calls, log = _session(tmp_path)
    assert len(calls) == 4, log
    shared, host, workers, mps = calls
    # the session host alone, on the CUDA provider, after `shared` made the venv; its lines kept
    assert host[:4] == ["HOST", "-m", "loadtest.host_ceiling", "--provider"] and host[4] == "cuda"
    assert "--rows" in host and host[host.index("--rows") + 1] == "1,8,32"
    assert (tmp_path / "out" / "host" / "host_ceiling.txt").read_text() == "host ceiling line\n"
    for call in (shared, workers, mps):
        assert "GPU_CHECK_SERVER_WORKERS=8" in call and "GPU_CHECK_CLIENT_PROCESSES=8" in call
        assert "GPU_CHECK_PROVIDERS=cuda" in call
    assert "GPU_CHECK_SERVER_ARGS=--shared-sessions=gpu" in shared and "GPU_CHECK_LIMIT_S=280" in shared
    # perf_analyzer (the venv's) on resnet in the shared step only, shared memory across the workers
    assert "GPU_CHECK_PA_MODELS=resnet" in shared and not any("PERF_ANALYZER" in c for c in shared)
    assert "GPU_CHECK_PERF_ANALYZER=0" in workers and "GPU_CHECK_PERF_ANALYZER=0" in mps
    assert "GPU_CHECK_TESTS=0" not in shared  # the GPU tests (the shared-session one) run once, here
    assert "GPU_CHECK_TESTS=0" in workers and not any(c.startswith("GPU_CHECK_SERVER_ARGS") for c in workers)
    assert "GPU_CHECK_MPS=1" in mps and "GPU_CHECK_LIMIT_S=85" in mps
    assert (tmp_path / "out" / "resnet_rows.md").read_text().count("| resnet |") == 3


def test_a_step_gets_no_more_than_the_call_has_left_and_none_under_a_minute(tmp_path: Path) -> None:
    calls, log = _session(tmp_path, GPU_SESSION_LIMIT_S="80", GPU_SESSION_STEPS="workers mps")
    assert len(calls) == 2, log
    # 95 and 85 cut to the call's 80 s, less what has passed: next to nothing with the stand-in,
    # but the script counts whole seconds (`date +%s`), so a second boundary can fall between.
    limits = [
        int(item.split("=", 1)[1]) for call in calls for item in call if item.startswith("GPU_CHECK_LIMIT_S=")
    ]
    assert len(limits) == 2 and all(75 <= limit <= 80 for limit in limits), limits
    assert "GPU_CHECK_MPS=1" in calls[1] and "shared" not in log
    (tmp_path / "short").mkdir()
    calls, log = _session(tmp_path / "short", GPU_SESSION_LIMIT_S="50")
    assert calls == [] and log.count("not run") == 4


def test_the_host_step_is_not_run_without_the_venv_the_check_makes(tmp_path: Path) -> None:
    calls, log = _session(tmp_path, GPU_SESSION_STEPS="host", GPU_SESSION_PYTHON=str(tmp_path / "none"))
    assert calls == [] and "host: not run" in log and "none" in log
