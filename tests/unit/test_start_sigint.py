"""Ctrl-C (SIGINT) during `sluiceway serve`'s start-up: exit 130 with one line, `sluiceway:
interrupted`, whatever the interrupted code made of the KeyboardInterrupt (server/start_signals.py
`StartUpSigint`, server/__main__.py).

Before, an import that caught it and raised its own error (numpy's C init: its traceback printed,
then "ImportError: import numpy failed") ended the start with exit 1 and a 37-75 line traceback
(4 of 8 Ctrl-Cs 0.4-0.55 s into a start), and one before `main`'s handling (in its own imports)
with exit -2 and a traceback. No timing here: the signal is raised where the test puts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server.start_signals import INTERRUPTED, StartUpSigint, default_sigterm, interrupted, raise_on_sigint
from tests.support.server_process import REPO_ROOT

# What numpy's C init does with a KeyboardInterrupt in its import: print it, raise ImportError.
LIKE_NUMPY = """
import signal, traceback
try:
    signal.raise_signal(signal.SIGINT)
    x = sum(range(1000))  # the handler runs by here
except BaseException:
    traceback.print_exc()
    raise ImportError("import numpy failed") from None
"""

# `main` as the command runs it, the CLI replaced by what the test names. The start-up handlers
# are the command's own: SIGINT Python's default when it starts.
START = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[1])
import server.__main__, server.cli

def importing():
    import like_numpy

def outside_an_import():
    try:
        signal.raise_signal(signal.SIGINT)
        x = sum(range(1000))
    except KeyboardInterrupt:
        raise ImportError("import numpy failed") from None  # nothing of the interrupt left in it

def swallowing():
    try:
        signal.raise_signal(signal.SIGINT)
        x = sum(range(1000))
    except KeyboardInterrupt:
        pass
    return 0

ways = {"importing": importing, "outside": outside_an_import, "swallowing": swallowing}
server.cli.main = ways[sys.argv[2]]
sys.exit(server.__main__.main())
"""


def _start(tmp_path: Path, how: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "like_numpy.py").write_text(LIKE_NUMPY)
    return subprocess.run(
        [sys.executable, "-c", START, str(tmp_path), how],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("how", ["importing", "outside", "swallowing"])
def test_a_start_up_sigint_exits_130_with_only_the_line(tmp_path: Path, how: str) -> None:
    """In an import: the process ends there (before numpy's traceback); outside one: the handler
    noted the signal, so the ImportError made of it is still a Ctrl-C, as is a KeyboardInterrupt
    something swallowed."""
    out = _start(tmp_path, how)
    assert (out.returncode, out.stdout) == (130, ""), (out.returncode, out.stdout, out.stderr)
    assert out.stderr == f"{INTERRUPTED}\n", out.stderr


# Before `main` runs: SIGINT raised as `python -m server` imports server/start_signals.py.
BEFORE_MAIN = """
import os, runpy, signal, sys
def hook(event, args):
    if event == "import" and args[0] == "server.start_signals" and not fired:
        fired.append(True)
        signal.raise_signal(signal.SIGINT)
fired = []
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.addaudithook(hook)
sys.argv = ["server", "serve"]
runpy.run_module("server", run_name="__main__", alter_sys=True)
"""


def test_a_sigint_before_the_handlers_exits_130_with_only_the_line() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BEFORE_MAIN],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (out.returncode, out.stderr) == (130, f"{INTERRUPTED}\n"), (out.returncode, out.stderr)


def _wrapped(exc: BaseException, inner: BaseException, how: str) -> BaseException:
    setattr(exc, how, inner)
    return exc


@pytest.mark.parametrize(
    ("exc", "received", "expected"),
    [
        (KeyboardInterrupt(), False, True),
        (_wrapped(ImportError("import numpy failed"), KeyboardInterrupt(), "__context__"), False, True),
        (_wrapped(RuntimeError("init"), KeyboardInterrupt(), "__cause__"), False, True),
        (
            _wrapped(
                ImportError("x"), _wrapped(ValueError("y"), KeyboardInterrupt(), "__context__"), "__cause__"
            ),
            False,
            True,
        ),
        (ImportError("import numpy failed"), True, True),  # the handler saw the signal
        (ImportError("no module named x"), False, False),
        (SystemExit(2), False, False),
    ],
)
def test_what_counts_as_a_ctrl_c(exc: BaseException, received: bool, expected: bool) -> None:
    handler = StartUpSigint()
    handler.received = received
    assert interrupted(exc, handler) is expected


def test_a_cycle_of_contexts_ends() -> None:
    first, second = ImportError("a"), ImportError("b")
    first.__context__, second.__context__ = second, first
    assert interrupted(first) is False


def test_outside_an_import_the_handler_raises_keyboard_interrupt() -> None:
    """Where nothing is being imported, the exception unwinds as Python's own would."""
    handler = StartUpSigint()
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, sys._getframe())
    assert handler.received


def test_an_ignored_sigint_stays_ignored_and_other_commands_get_pythons_own() -> None:
    saved = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's: to be ignored, as asked
        raise_on_sigint()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise_on_sigint()
        assert isinstance(signal.getsignal(signal.SIGINT), StartUpSigint)
        default_sigterm()  # `top`, `optimize`, ...: Ctrl-C as Python's KeyboardInterrupt
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, saved)
