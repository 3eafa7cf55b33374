"""SIGTERM while `sluiceway serve` starts (imports, settings, model loads): exit 0 and one line.

Before, a SIGTERM in the first ~1.5 s (the imports, before `serve` installed its handlers) ended
the process by the signal (exit -15). The signal is sent once the process is importing pydantic
(its extension is mapped), which `server/__main__.py` does after installing its handler; where it
lands after that varies with the machine's load, so either start-up line is accepted, and the
ready line with a normal shutdown when the server was quicker than the signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib  # type: ignore[no-redef]

from server.start_signals import terminated_line, wants_json
from tests.support.server_process import CACHE_DIR, REPO_ROOT, wait_until

# Ways a start-up SIGTERM may end: in the imports (server/start_signals.py), while models load
# (server/app.py), or after the ready line when the server was ready first.
START_UP = "during start-up"
AFTER_READY = "shutting down ("


def _importing_pydantic(process: subprocess.Popen[str]) -> bool:
    """True once the process maps pydantic's extension (or has ended)."""
    if process.poll() is not None:
        return True
    try:
        return "_pydantic_core" in Path(f"/proc/{process.pid}/maps").read_text()
    except OSError:  # gone meanwhile
        return True


# The two ways the server starts: `python -m server` and the `sluiceway` console script (the
# images' ENTRYPOINT), which is what pip writes for pyproject's entry point: import the function,
# call it. The script had called `server.cli:main`, which installed no start-up handler: exit -15.
def _console_script() -> list[str]:
    module, _, function = _pyproject()["project"]["scripts"]["sluiceway"].partition(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


LAUNCHES = {"python -m server": lambda: [sys.executable, "-m", "server"], "sluiceway": _console_script}


def _sigterm_while_starting(*flags: str, launch: str = "python -m server") -> tuple[int, str]:
    command = [*LAUNCHES[launch](), "serve", "--port", "0", "--metrics-port", "0",
               "--cache-dir", str(CACHE_DIR), *flags]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: _importing_pydantic(process), "the server to import pydantic")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out


def _how_it_ended(out: str) -> list[str]:
    return [line for line in out.splitlines() if START_UP in line or AFTER_READY in line]


@pytest.mark.parametrize("launch", LAUNCHES)
def test_a_sigterm_during_start_up_exits_0_with_one_line(launch: str) -> None:
    code, out = _sigterm_while_starting(launch=launch)
    assert code == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    ended = _how_it_ended(out)
    assert len(ended) == 1, out[-3000:]
    if "sluiceway ready on" not in out:
        assert START_UP in ended[0], out[-3000:]


def test_a_sigterm_during_start_up_writes_json_lines_when_asked() -> None:
    code, out = _sigterm_while_starting("--log-format", "json")
    assert code == 0, out[-3000:]
    records = [json.loads(line) for line in out.splitlines() if not line.startswith("sluiceway ")]
    ended = [r for r in records if START_UP in r["message"] or AFTER_READY in r["message"]]
    assert len(ended) == 1, out[-3000:]
    assert ended[0]["level"] == "INFO"


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["serve"], {}, False),
        (["serve", "--log-format", "json"], {}, True),
        (["serve", "--log-format=JSON"], {}, True),
        (["serve"], {"SLUICEWAY_LOG_FORMAT": "json"}, True),
        (["serve", "--log-format", "text"], {"SLUICEWAY_LOG_FORMAT": "json"}, False),
    ],
)
def test_the_start_up_line_follows_the_log_format(
    argv: list[str], environ: dict[str, str], expected: bool
) -> None:
    assert wants_json(argv, environ) is expected
    line = terminated_line(expected)
    assert (line.startswith("{") and json.loads(line)["message"].startswith("SIGTERM")) is expected
