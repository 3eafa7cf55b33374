"""A start-up SIGTERM or SIGHUP that lands inside an import ends the process there and then: exit 0
and the one start-up line (server/start_signals.py `StartUpSigterm`).

Before, it raised `Terminated` inside the import; an extension's init that caught it printed its
own traceback (numpy's PyErr_Print, in about 1 start-up SIGTERM of 4 between 0.4 and 1.1 s) before
the line, and one start in ~35 crashed (SIGSEGV). Here a module stands in for such an extension: it
catches what the signal raised in its import, prints the traceback, and the import goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server.start_signals import LINE, StartUpSigterm, Terminated
from tests.support.server_process import REPO_ROOT

LIKE_AN_EXTENSION = """
import os, signal, traceback
try:
    signal.raise_signal(getattr(signal, os.environ["SIGNAL"]))
    x = sum(range(1000))  # the handler runs by here
except BaseException:
    traceback.print_exc()  # what an extension's PyErr_Print writes
    print("the import went on")
"""

# SIGHUP's default first, even under nohup: here, not in a preexec_fn, which makes subprocess fork
# the pytest worker (grpc's threads and all: a CI run's child wrote grpc's "epoll_wait error: Bad file
# descriptor" to stderr before the line) where it otherwise starts the child without a fork.
START = """
import signal, sys
signal.signal(signal.SIGHUP, signal.SIG_DFL)
from server.start_signals import raise_on_sigterm
raise_on_sigterm()
sys.path.insert(0, sys.argv[1])
import like_an_extension
print("the start went on")
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_start_up_signal_inside_an_import_exits_0_with_only_the_line(tmp_path: Path, name: str) -> None:
    (tmp_path / "like_an_extension.py").write_text(LIKE_AN_EXTENSION)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "SIGNAL": name}
    out = subprocess.run(
        [sys.executable, "-c", START, str(tmp_path)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (out.returncode, out.stdout) == (0, ""), (out.returncode, out.stdout, out.stderr)
    assert out.stderr == f"sluiceway: {LINE.format(signal=name)}\n", out.stderr


def test_outside_an_import_the_handler_raises_terminated() -> None:
    """Where nothing is being imported, the exception unwinds as before (the app's and the workers'
    parent's cleanups, `serve`'s stop before ready)."""
    handler = StartUpSigterm()
    with pytest.raises(Terminated):
        handler(signal.SIGTERM, sys._getframe())
    assert handler.received and handler.signal_name == "SIGTERM"
