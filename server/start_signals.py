"""SIGTERM before the server serves: a clean exit (0, a drain of nothing) with one log line.

`python -m server` spends ~1.5 s importing (pydantic, grpc, onnxruntime) before `serve` installs
its own handlers; a SIGTERM then (a pod deleted as it starts, a supervisor's restart) ended the
process by the signal (exit -15), which orchestrators report as a crash. The handler installed
here first turns it into `Terminated`, raised wherever the main thread is; `serve` replaces the
handler with its drain once its event loop runs. Ctrl-C (SIGINT) then ends the start with exit
130 and one line, `sluiceway: interrupted`, whatever an interrupted import made of its
KeyboardInterrupt. Standard library only: it must be cheap to import.
"""

from __future__ import annotations

import contextlib

# Before the handler can fire: pydantic_core's start-up imports datetime's C API, and pyo3 turns
# a Terminated raised in that import into a panic (a Rust backtrace, exit 1). Imported, it is not
# imported again there. ~1 ms.
import datetime  # noqa: F401
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # imported before the handler is in place: only what costs nothing at run time
    from collections.abc import Mapping, Sequence
    from types import FrameType

LINE = "{signal} during start-up: exiting before serving (nothing to drain)"
INTERRUPTED = "sluiceway: interrupted"  # Ctrl-C during start-up: exit 130 with this line


class Terminated(BaseException):
    """SIGTERM (or SIGHUP) arrived during start-up. A BaseException, as KeyboardInterrupt: `except
    Exception` on the way up (an import's fallback, a model load's) must not swallow it."""


class StartUpSigterm:
    """The start-up handler: raises Terminated, and remembers it did (and for which signal), so an
    exception an import made of it (an extension's init that wraps what it caught), or one dropped
    on the way (raised in a `__del__` or weakref callback: "Exception ignored"), is still known
    for a stop: `serve` and the `--workers` parent ask `stop_was_asked` as they take over."""

    def __init__(self) -> None:
        self.received = False
        self.signal_name = "SIGTERM"

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        self.signal_name = signal.Signals(signum).name
        if _inside_an_import(frame):
            # Raised in an import, Terminated went through extensions' inits (numpy's printed its
            # PyErr_Print traceback in ~1 start-up SIGTERM of 4; one start crashed, SIGSEGV). Before
            # `serve` takes over nothing is made that an exit must undo: leave now, one line.
            exit_now(self.signal_name)
        raise Terminated


def _inside_an_import(frame: FrameType | None) -> bool:
    """Whether the main thread was stopped inside an import (importlib's frames are on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def exit_now(signal_name: str) -> NoReturn:
    """Write the start-up signal's line and end the process at once (exit 0), unwinding nothing."""
    try:
        exit_terminated(signal_name)
    except BaseException:  # the JSON line's imports, themselves half-imported: the plain line then
        print(f"sluiceway: {LINE.format(signal=signal_name)}", file=sys.stderr, flush=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


class StartUpSigint:
    """The start-up Ctrl-C handler: raises KeyboardInterrupt, as Python's own, and remembers it did,
    so an exception an import made of it is still known for a Ctrl-C (`interrupted`)."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        if _inside_an_import(frame):
            # Raised in an import, KeyboardInterrupt went through extensions' inits: numpy's printed
            # its traceback and became "ImportError: import numpy failed" (exit 1, 37-75 lines).
            exit_interrupted()
        raise KeyboardInterrupt


def raise_on_sigint() -> StartUpSigint:
    """From now until `serve` installs its own handlers, SIGINT raises KeyboardInterrupt, or ends
    the process inside an import; unless it is ignored (a background job's)."""
    handler = StartUpSigint()
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, handler)
    return handler


def interrupted(exc: BaseException, sigint: StartUpSigint | None = None) -> bool:
    """Whether `exc` ended a start-up for a Ctrl-C: a KeyboardInterrupt, one in its cause or context
    (an import that wrapped it), or anything once the handler saw SIGINT (an extension's init that
    printed the KeyboardInterrupt and raised its own error: numpy's "import numpy failed")."""
    if sigint is not None and sigint.received:
        return True
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        pending += [current.__cause__, current.__context__]
    return False


def exit_interrupted() -> NoReturn:
    """Write the Ctrl-C line and end the process at once (exit 130), unwinding nothing: a normal
    exit after a KeyboardInterrupt that some C code had seen could end by the signal (exit -2)."""
    print(INTERRUPTED, file=sys.stderr, flush=True)
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    os._exit(130)


def raise_on_sigterm() -> StartUpSigterm:
    """From now until `serve` installs its own handlers, SIGTERM raises Terminated, and so does
    SIGHUP (which `serve` drains on too; its default action had killed an importing process, exit
    129 without a line), unless SIGHUP is ignored (nohup)."""
    handler = StartUpSigterm()
    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, handler)
    return handler


def stop_was_asked(previous: object) -> bool:
    """Whether `previous`, the handler being replaced, is a start-up one and got its signal: a
    Terminated (or KeyboardInterrupt) lost on the way must still stop the server before it reports
    ready."""
    return isinstance(previous, (StartUpSigterm, StartUpSigint)) and previous.received


def default_sigterm() -> None:
    """Commands other than `serve` (optimize, top, ...) keep SIGTERM's and SIGHUP's default action,
    and Python's KeyboardInterrupt for SIGINT."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if isinstance(signal.getsignal(sig), StartUpSigterm):
            signal.signal(sig, signal.SIG_DFL)
    if isinstance(signal.getsignal(signal.SIGINT), StartUpSigint):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def wants_json(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Whether the logs are JSON (`--log-format json` or SLUICEWAY_LOG_FORMAT=json), read from the
    raw command line: the signal may land before the arguments are parsed. The flag wins."""
    value = environ.get("SLUICEWAY_LOG_FORMAT", "")
    for index, arg in enumerate(argv):
        if arg == "--log-format" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--log-format="):
            value = arg.partition("=")[2]
    return value.strip().lower() == "json"


def terminated_line(json_lines: bool, signal_name: str = "SIGTERM") -> str:
    """The one line a start-up SIGTERM (or SIGHUP) writes, as the logs write an INFO line."""
    line = LINE.format(signal=signal_name)
    if not json_lines:
        return f"sluiceway: {line}"
    import logging  # here: ~10 ms of imports that the handler must not wait for

    from server.observability.logs import JsonFormatter

    record = logging.makeLogRecord({"name": "sluiceway", "levelname": "INFO", "levelno": logging.INFO})
    record.msg = line
    return JsonFormatter().format(record)


def exit_terminated(signal_name: str = "SIGTERM") -> int:
    """Write the line; the exit code of a start-up SIGTERM or SIGHUP (0)."""
    line = terminated_line(wants_json(sys.argv[1:], os.environ), signal_name)
    print(line, file=sys.stderr, flush=True)
    return 0
