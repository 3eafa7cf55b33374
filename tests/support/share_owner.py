"""A process that makes a --workers share directory (server/models/rollout_dir.py's make_share_dir)
and keeps living until told to stop: the owner a parent's clean-up must tell from a dead one."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# argv: the temp directory, then how to run: "plain", or "spawn" (also start a process by exec
# that inherits every fd it may: a worker, which must not hold the owner's lock). It prints the
# directory's name once made (and then the spawned pid), then waits for stdin to close.
_SCRIPT = """
import subprocess, sys
from pathlib import Path
from server.models.rollout_dir import DIR_PREFIX, make_share_dir
made = make_share_dir(Path(sys.argv[1]))
print(next(p.name for p in Path(sys.argv[1]).iterdir() if p.name.startswith(DIR_PREFIX)), flush=True)
if sys.argv[2] == "spawn":
    worker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], close_fds=False)
    print(worker.pid, flush=True)
sys.stdin.read()
"""


def start_owner(temp_dir: Path, how: str = "plain", prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """An owner process (under the command `prefix`, e.g. unshare) that has made its directory in
    `temp_dir` (alone there) and waits; close its stdin to end it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", _SCRIPT, str(temp_dir), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def made_by(owner: subprocess.Popen[str], temp_dir: Path) -> Path:
    """The directory `owner` made (read from its first line: it is made by then)."""
    assert owner.stdout is not None
    line = owner.stdout.readline().strip()
    assert line, f"the owner exited ({owner.wait()}) without making its directory"
    return temp_dir / line


def end(owner: subprocess.Popen[str]) -> None:
    """Let `owner` exit (if it runs) and reap it."""
    if owner.stdin is not None and not owner.stdin.closed:
        with contextlib.suppress(BrokenPipeError):
            owner.stdin.close()
    owner.wait(30)
