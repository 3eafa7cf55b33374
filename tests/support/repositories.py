"""Small Triton-layout repositories for tests, reusing the built demo model files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.server_process import CACHE_DIR


def demo_repository() -> Path:
    """Build (once) and locate the demo repository, in a child process: see server_process.py."""
    env = {**os.environ, "SLUICEWAY_CACHE_DIR": str(CACHE_DIR)}
    out = subprocess.run(
        [sys.executable, "-m", "server", "build-demo"], env=env, check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def write_model(
    repo: Path, name: str, onnx_file: Path, config: str | None, versions: tuple[int, ...] = (1,)
) -> Path:
    """<repo>/<name>/config.pbtxt (when given) and <repo>/<name>/<v>/model.onnx for each version."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for version in versions:
        (model_dir / str(version)).mkdir(exist_ok=True)
        target = model_dir / str(version) / "model.onnx"
        try:
            target.symlink_to(onnx_file)
        except OSError:
            shutil.copyfile(onnx_file, target)
    return model_dir


def newer(path: Path) -> None:
    """`path` as if written again: its modification time 2 s later. A load reloads a version only
    when its files or config changed; this makes a reload of the same bytes a real one. A link
    (write_model links the demo's files) becomes a copy first: the time of the file behind it had
    changed for every other test's repository linking it, and a concurrent test's reload of
    unchanged files took it for a new version (its statistics reset; a CI run on 2026-12-04)."""
    if path.is_symlink():
        target = path.resolve()
        path.unlink()
        shutil.copyfile(target, path)
    later = path.stat().st_mtime_ns + 2_000_000_000
    os.utime(path, ns=(later, later))
