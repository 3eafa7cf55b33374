"""The parts every Triton QA suite run shares: Triton's files, its model generators, a server, a client.

Nothing of Triton's is kept in this repository: `extract_qa` copies `qa/common` and the suites' own
folders out of a Triton server checkout or git mirror that the caller provides, and `generate` runs
Triton's own `qa/common/gen_qa_*.py` generators (ONNX branch) once per work folder. `Server` is one
`python -m server serve` on 127.0.0.1 and a free port; `run_client` runs named unittest cases of a
suite's test file in a process of its own (see `client.py`), which points every tritonclient built
for "<host>:8001" at that port and writes one outcome per test.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

READY = re.compile(r"sluiceway ready on ([0-9.]+):(\d+)")
CLIENT = Path(__file__).resolve().parent / "client.py"

# Triton's generator runs, as qa/common/gen_qa_model_repository makes them (ONNX and ensemble branches
# only), keyed by the folder they write under the generation root.
GENERATORS: dict[str, list[str]] = {
    "qa_model_repository": ["gen_qa_models.py", "--onnx"],
    "qa_variable_model_repository": ["gen_qa_models.py", "--onnx", "--variable"],
    "qa_identity_model_repository": ["gen_qa_identity_models.py", "--onnx"],
    "qa_reshape_model_repository": ["gen_qa_reshape_models.py", "--onnx", "--variable"],
    "qa_sequence_model_repository": ["gen_qa_sequence_models.py", "--onnx"],
    "qa_variable_sequence_model_repository": ["gen_qa_sequence_models.py", "--onnx", "--variable"],
    "qa_sequence_implicit_model_repository": ["gen_qa_implicit_models.py", "--onnx"],
    "qa_variable_sequence_implicit_model_repository": ["gen_qa_implicit_models.py", "--onnx", "--variable"],
    "qa_ensemble_model_repository/qa_model_repository": ["gen_qa_models.py", "--ensemble"],
    "qa_ensemble_model_repository/qa_variable_model_repository": [
        "gen_qa_models.py",
        "--ensemble",
        "--variable",
    ],
    "qa_ensemble_model_repository/qa_identity_model_repository": ["gen_qa_identity_models.py", "--ensemble"],
    "qa_ensemble_model_repository/qa_reshape_model_repository": ["gen_qa_reshape_models.py", "--ensemble"],
    "qa_ensemble_model_repository/qa_sequence_model_repository": ["gen_qa_sequence_models.py", "--ensemble"],
    "qa_ensemble_model_repository/qa_variable_sequence_model_repository": [
        "gen_qa_sequence_models.py",
        "--ensemble",
        "--variable",
    ],
}


def _git(git_dir: Path, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True, timeout=timeout_s)


def extract_qa(triton: Path, rev: str, parts: list[str], dest: Path) -> str:
    """Copy `parts` (e.g. qa/common) out of a Triton git mirror (bare or not) or a plain checkout.

    Returns the commit (or a note that the source is a plain folder)."""
    git_dir = triton if _git(triton, "rev-parse", rev).returncode == 0 else triton / ".git"
    probe = _git(git_dir, "rev-parse", rev)
    if probe.returncode == 0:
        commit = probe.stdout.decode().strip()
        archive = _git(git_dir, "archive", "--format=tar", commit, *parts)
        if archive.returncode != 0:
            raise SystemExit(f"git archive {' '.join(parts)}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
        return commit
    if not (triton / "qa" / "common" / "gen_qa_models.py").is_file():
        raise SystemExit(f"{triton}: neither a git repository nor a Triton checkout with qa/common")
    for part in parts:
        shutil.copytree(triton / part, dest / part)
    return "working tree (not a git repository)"


def generate(common: Path, gen: Path, name: str, timeout_s: float) -> Path:
    """Run the generator that writes `gen/name` (once per work folder); returns that folder."""
    target = gen / name
    done = gen / f".{name.replace('/', '__')}.done"
    if done.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    script, *flags = GENERATORS[name]
    if "--onnx" in flags:  # as gen_qa_model_repository passes $ONNX_OPSET to the ONNX generators
        flags.append(f"--onnx_opset={newest_loadable_opset()}")
    log = gen / f"{name.replace('/', '__')}.log"
    with log.open("w") as f:
        subprocess.run(
            [sys.executable, script, *flags, f"--models_dir={target}"],
            cwd=common,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=True,
        )
    done.touch()
    return target


def newest_loadable_opset() -> int:
    """The newest ONNX opset the installed onnx writes and the installed onnxruntime loads.

    onnx's default opset may be one onnxruntime calls "under development" and refuses; Triton's
    generators take `--onnx_opset` for that (Triton's own script pins onnx instead)."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    tensor = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", tensor[:1], tensor[1:])
    for opset in range(onnx.defs.onnx_opset_version(), 12, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = min(model.ir_version, 10)  # the opset alone is probed (IR: see triton_qa.sh)
        try:
            onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # refused: try the opset below
            continue
        return opset
    raise RuntimeError("onnxruntime loads no opset from 13 up: check the onnx and onnxruntime versions")


def copy_models(source: Path, repository: Path, pattern: str = "*") -> list[str]:
    """cp -r source/<pattern> repository/ ; returns the model names copied."""
    names = []
    for model in sorted(source.glob(pattern)):
        if model.is_dir():
            shutil.copytree(model, repository / model.name, dirs_exist_ok=True)
            names.append(model.name)
    return names


def append_config(model_dir: Path, text: str) -> None:
    with (model_dir / "config.pbtxt").open("a") as f:
        f.write(f"\n{text}\n")


class Server:
    """One `python -m server serve` on 127.0.0.1 and a free port, in a process group of its own."""

    def __init__(self, src: Path, repository: Path, log: Path, extra: list[str], env: dict[str, str]) -> None:
        self.log = log
        self._log_file = log.open("w")
        cmd = [sys.executable, "-m", "server", "serve", "--model-repository", str(repository)]
        cmd += ["--host", "127.0.0.1", "--port", "0", *extra]
        self.proc = subprocess.Popen(
            cmd, cwd=src, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = READY.search(self.log.read_text(errors="replace"))
            if match:
                return int(match.group(2))
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout_s:.0f} s: {self.tail()}")

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self._log_file.close()


@dataclass
class Outcome:
    suite: str
    run: str  # the server configuration the test ran against (cpu, FIXED, ...)
    test: str  # Class.test_name
    status: str  # pass, fail, error, skipped, timeout, server-failed, excluded
    seconds: float
    message: str


def client_env(port: int, extra: dict[str, str]) -> dict[str, str]:
    """The QA test's environment: gRPC only, no shared memory, 127.0.0.1, plus the suite's own."""
    env = dict(os.environ)
    for name in ("TRITONSERVER_DELAY_SCHEDULER", "PYTHONPATH"):
        env.pop(name, None)
    env.update(
        USE_GRPC="1",
        USE_HTTP="0",
        TEST_SYSTEM_SHARED_MEMORY="0",
        TEST_CUDA_SHARED_MEMORY="0",
        TRITONSERVER_IPADDR="127.0.0.1",
        TRITON_SERVER_CPU_ONLY="1",
        QA_SERVER_PORT=str(port),
    )
    env.update(extra)
    return env


def run_client(
    cwd: Path,
    module: str,
    tests: list[str],
    excluded: Path,
    port: int,
    env: dict[str, str],
    result: Path,
    log: Path,
    timeout_s: float,
) -> list[dict[str, object]] | str:
    """Run `tests` of `module` (cwd: the suite's folder); the per-test outcomes, or why there are none."""
    cmd = [sys.executable, str(CLIENT), module, str(result), str(excluded), *tests]
    with log.open("w") as f:
        try:
            subprocess.run(
                cmd, cwd=cwd, env=client_env(port, env), stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            partial = json.loads(result.read_text()) if result.exists() else []
            return partial or f"no result after {timeout_s:.0f} s"
    if not result.exists():
        return f"client wrote no result; see {log}"
    outcomes: list[dict[str, object]] = json.loads(result.read_text())
    return outcomes
