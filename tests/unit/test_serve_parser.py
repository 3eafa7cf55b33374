"""`sluiceway serve` builds only its own parser: the other commands' flags come from modules a
server does not need (the top view pulls in the whole client package), and the test command starts
some 280 servers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.cli import _parser
from tests.support.server_process import REPO_ROOT

NOT_FOR_SERVING = (
    "clients",
    "server.observability.top",
    "server.observability.top_reader",
    "server.admin.cli",
    "server.optimize.cli",
)


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--port", "0", "--model-repository", "/x", "--load-model", "a", "--load-model", "b"],
        ["serve", "--no-reflection", "--idle-dispatch", "--max-queue-size", "3", "--log-format", "json"],
    ],
)
def test_the_serve_parser_alone_reads_a_serve_line_as_the_whole_cli_does(argv: list[str]) -> None:
    assert _parser(only_serve=True).parse_args(argv) == _parser().parse_args(argv)


def test_a_serve_command_line_does_not_import_the_other_commands() -> None:
    # A bad setting ends `serve` after its flags are parsed, before any model or port.
    code = (
        "import sys, server.cli; rc = server.cli.main(['serve', '--model-repository', '/nonexistent/x']); "
        "print(rc, sorted(m for m in sys.modules "
        f"if m.split('.')[0] == 'clients' or m in {NOT_FOR_SERVING!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
