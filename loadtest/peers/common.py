"""What every peer shares: the demo models' signatures, their files, private venvs, free ports.

Runs in sluiceway's own venv (it builds the demo repository with `sluiceway build-demo`). The code
that runs inside a peer's own venv (`_pytriton_app.py`, `_mlserver_app.py`) imports nothing from here:
it gets the model file, names, shapes and thread settings on its command line.
"""

from __future__ import annotations

import argparse
import faulthandler
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PEERS_CACHE = REPO_ROOT / ".cache" / "peers"
HOST = "127.0.0.1"
EXIT_TIMEOUT_S = 10.0  # after the stop signal, how long a peer may take to exit (see exit_within)


@dataclass(frozen=True)
class ModelSpec:
    """One demo model as every peer serves it: same name, tensor names, datatypes and row limit."""

    name: str
    input: str
    input_dims: tuple[int, ...]  # without the batch dimension
    output: str
    output_dims: tuple[int, ...]
    max_batch_size: int
    datatype: str = "FP32"
    intra_op_threads: int = 0  # the demo config's intra_op_thread_count (0: onnxruntime's default)

    def to_json(self, path: Path) -> str:
        return json.dumps({**asdict(self), "path": str(path)})


SPECS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", "features", (64,), "scores", (2,), 128, intra_op_threads=1),
    "resnet": ModelSpec("resnet", "image", (3, 224, 224), "logits", (1000,), 16),
}


def default_cache_dir() -> Path:
    """sluiceway's own default (`ServerSettings.cache_dir`), so peers load the very same files."""
    return Path(os.environ.get("SLUICEWAY_CACHE_DIR", str(Path.home() / ".cache" / "sluiceway")))


def model_file(model: str, cache_dir: Path | None = None) -> Path:
    """`<demo repository>/<model>/1/model.onnx`, building the demo repository when it is not there.

    Through `sluiceway build-demo` in a child process: loadtest never imports server/ (it drives
    any server, and the peers must not depend on ours)."""
    env = {**os.environ, "SLUICEWAY_CACHE_DIR": str(cache_dir or default_cache_dir())}
    built = subprocess.run(
        [sys.executable, "-m", "server", "build-demo"], env=env, check=True, capture_output=True, text=True
    )
    repository = Path(built.stdout.strip().splitlines()[-1])
    return repository / model / "1" / "model.onnx"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for a peer's HTTP and metrics listeners)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def add_model_args(parser: argparse.ArgumentParser, *, port: int | None = 8001) -> None:
    """The options every peer takes; thread defaults are sluiceway's (the demo config's intra-op
    threads, `intra_threads`; inter 1)."""
    parser.add_argument("--model", choices=sorted(SPECS), default="mlp")
    if port is not None:
        parser.add_argument("--port", type=int, default=port, help="gRPC port on 127.0.0.1")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=None,
        help="onnxruntime intra-op threads (0: its default; unset: the demo config's, as sluiceway runs it)",
    )
    parser.add_argument("--inter-op-threads", type=int, default=1, help="onnxruntime inter-op threads")
    parser.add_argument("--cache-dir", type=Path, default=None, help="sluiceway cache dir (demo models)")


def exec_peer_app(
    python: Path, app: Path, args: argparse.Namespace, env: dict[str, str], extra: list[str]
) -> None:
    """Replace this process with a peer's app in its venv: the model spec, ports and threads from
    `add_model_args`'s options, then `extra`. SIGTERM then reaches the server directly, and its
    exit code is ours."""
    spec = SPECS[args.model]
    command = [
        str(python),
        "-I",  # isolated: the launcher's folder (with e.g. mlserver.py) must not shadow the package
        str(app),
        "--spec",
        spec.to_json(model_file(args.model, args.cache_dir)),
        "--grpc-port",
        str(args.port or free_port()),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--intra-op-threads",
        str(intra_threads(args)),
        "--inter-op-threads",
        str(args.inter_op_threads),
        *extra,
    ]
    sys.stdout.flush()
    os.execve(command[0], command, env)


def intra_threads(args: argparse.Namespace) -> int:
    """`--intra-op-threads` if given, else what sluiceway's demo config gives the model."""
    given = args.intra_op_threads
    return int(given if given is not None else SPECS[args.model].intra_op_threads)


def ort_session(path: Path, intra_op_threads: int, inter_op_threads: int) -> Any:
    """An onnxruntime CPU session configured as sluiceway configures its own (no spinning, all opts)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def onnxruntime_pin() -> str:
    """The exact onnxruntime sluiceway's venv runs, so every peer computes with the same kernels."""
    from importlib.metadata import version

    return f"onnxruntime=={version('onnxruntime')}"


def base_python() -> str:
    """The interpreter sluiceway's venv was made from (a shared-libpython CPython, e.g. pyenv's)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidate = Path(sys.base_prefix) / "bin" / version
    return str(candidate) if candidate.exists() else sys.executable


def ensure_venv(name: str, requirements: list[str]) -> Path:
    """`.cache/peers/<name>/venv` with exactly `requirements` installed; returns its python.

    Idempotent: a marker file records what was installed; a changed pin reinstalls. A file lock keeps
    two first starts from installing at once. The pip log goes to `.cache/peers/<name>/install.log`.
    """
    home = PEERS_CACHE / name
    venv = home / "venv"
    python = venv / "bin" / "python"
    marker = home / "installed.json"
    wanted = json.dumps(sorted(requirements))
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and marker.exists() and marker.read_text() == wanted:
            return python
        marker.unlink(missing_ok=True)
        print(f"installing peer '{name}' into {venv} (first use; log: {home / 'install.log'})", flush=True)
        if not python.exists():
            subprocess.run([base_python(), "-m", "venv", str(venv)], check=True)
        with open(home / "install.log", "w") as log:
            done = subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check", *requirements],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if done.returncode != 0:
            tail = (home / "install.log").read_text(errors="replace").splitlines()[-15:]
            sys.exit(f"installing peer '{name}' failed:\n" + "\n".join(tail))
        marker.write_text(wanted)
    return python


def libpython_dir(python: Path) -> str:
    """LIBDIR of `python` (where its libpython3.X.so lies)."""
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    return subprocess.run(
        [str(python), "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def exit_within(timeout_s: float = EXIT_TIMEOUT_S) -> None:
    """Call on the stop signal: a process still running `timeout_s` later prints every thread's
    stack and exits 0, as Triton's --exit-timeout-secs ends a server whose shutdown does not finish.

    Once in a CI run, a floor peer on grpc's sync API outlived the test's 60 s wait after SIGTERM
    (its main thread never ran the handler: floor_sync.py now wakes to run it). A baseline that
    cannot exit must not fail the run; the stacks say where it stuck.
    """

    def expire() -> None:
        print(f"peer: still running {timeout_s:g} s after the stop signal; every thread:", flush=True)
        faulthandler.dump_traceback(file=sys.stdout, all_threads=True)
        sys.stdout.flush()
        os._exit(0)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
