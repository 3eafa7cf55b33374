"""Upload directories are named with their server's pid, and a server starting in explicit mode
removes those of servers that are gone: a crashed server's (OOM, SIGKILL) had stayed for good."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from server.models.load_request import remove_dead_uploads, write_model_directory


def test_only_the_uploads_of_servers_that_are_gone_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # a process that has exited
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        for name in (f"load-{dead_pid}-abc", f"load-{alive.pid}-def", "load-_wh9b7x1", "other"):
            (tmp_path / name / "m" / "1").mkdir(parents=True)
        removed = remove_dead_uploads(tmp_path)
        assert sorted(p.name for p in removed) == sorted([f"load-{dead_pid}-abc", "load-_wh9b7x1"])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"load-{alive.pid}-def", "other"])
    finally:
        alive.communicate(b"")


def test_an_upload_is_named_with_its_servers_pid(tmp_path: Path) -> None:
    from pathlib import PurePosixPath

    directory = write_model_directory(tmp_path, "m", {PurePosixPath("1/model.onnx"): b"x"})
    assert directory.name.startswith(f"load-{os.getpid()}-")
    assert remove_dead_uploads(tmp_path) == [directory]  # ours from before: stale
