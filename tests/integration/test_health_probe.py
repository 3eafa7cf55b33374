"""`python -m clients.health_probe`, the images' HEALTHCHECK: 0 for a serving server, 1 otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clients.health_probe import main
from tests.support.nothing_listening import nothing_listening
from tests.support.server_process import REPO_ROOT, ServerProcess


def test_exits_0_for_a_serving_server_and_1_for_a_dead_address(
    zoo_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--address", zoo_server.address]) == 0
    assert main(["--address", zoo_server.address, "--service", "no-such-service"]) == 1
    with nothing_listening() as dead:  # held: no other test's server can take the port meanwhile
        assert main(["--address", dead, "--timeout-s", "1"]) == 1
    # Each "NOT SERVING" says why (it had said nothing more for either).
    lines = capsys.readouterr().out.splitlines()
    no_service = "NOT_FOUND: the server has no health service 'no-such-service'"
    assert lines[1] == f"{zoo_server.address}: NOT SERVING ({no_service})"
    assert lines[2].startswith(f"{dead}: NOT SERVING (UNAVAILABLE: ") or lines[2].startswith(
        f"{dead}: NOT SERVING (DEADLINE_EXCEEDED: "
    ), lines[2]


def test_as_the_image_runs_it_the_port_comes_from_sluiceway_port(zoo_server: ServerProcess) -> None:
    env = {**os.environ, "SLUICEWAY_PORT": str(zoo_server.port)}
    result = subprocess.run(
        [sys.executable, "-m", "clients.health_probe", "--timeout-s", "3"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"127.0.0.1:{zoo_server.port}: SERVING"
