"""SIGTERM before the server serves: a clean exit (0, a drain of nothing) with one log line.

`python -m server` spends ~1.5 s importing (pydantic, grpc, onnxruntime) before `serve` installs
its own handlers; a SIGTERM then (a pod deleted as it starts, a supervisor's restart) ended the
process by the signal (exit -15), which orchestrators report as a crash. The handler installed
here first turns it into `Terminated`, raised wherever the main thread is; `serve` replaces the
handler with its drain once its event loop runs. Standard library only: it must be cheap to import.
"""

from __future__ import annotations

# Before the handler can fire: pydantic_core's start-up imports datetime's C API, and pyo3 turns
# a Terminated raised in that import into a panic (a Rust backtrace, exit 1). Imported, it is not
# imported again there. ~1 ms.
import datetime  # noqa: F401
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported before the handler is in place: only what costs nothing at run time
    from collections.abc import Mapping, Sequence
    from types import FrameType

LINE = "SIGTERM during start-up: exiting before serving (nothing to drain)"


class Terminated(BaseException):
    """SIGTERM arrived during start-up. A BaseException, as KeyboardInterrupt: `except Exception`
    on the way up (an import's fallback, a model load's) must not swallow it."""


class StartUpSigterm:
    """The start-up handler: raises Terminated, and remembers it did, so an exception an import
    made of it (an extension's init that wraps what it caught) is still known for a SIGTERM."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        raise Terminated


def raise_on_sigterm() -> StartUpSigterm:
    """From now until `serve` installs its own handler, SIGTERM raises Terminated."""
    handler = StartUpSigterm()
    signal.signal(signal.SIGTERM, handler)
    return handler


def default_sigterm() -> None:
    """Commands other than `serve` (optimize, top, ...) keep SIGTERM's default action."""
    if isinstance(signal.getsignal(signal.SIGTERM), StartUpSigterm):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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


def terminated_line(json_lines: bool) -> str:
    """The one line a start-up SIGTERM writes, as the logs write an INFO line."""
    if not json_lines:
        return f"sluiceway: {LINE}"
    import logging  # here: ~10 ms of imports that the handler must not wait for

    from server.observability.logs import JsonFormatter

    record = logging.makeLogRecord({"name": "sluiceway", "levelname": "INFO", "levelno": logging.INFO})
    record.msg = LINE
    return JsonFormatter().format(record)


def exit_terminated() -> int:
    """Write the line; the exit code of a start-up SIGTERM (0)."""
    print(terminated_line(wants_json(sys.argv[1:], os.environ)), file=sys.stderr, flush=True)
    return 0
