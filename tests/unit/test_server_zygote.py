"""The tests' server zygote (tests/support/server_zygote.py): a forked server serves, says its exit
code as Popen would, and an environment the zygote cannot give falls back to a command."""

from __future__ import annotations

import os
import signal
import subprocess

import numpy as np
import pytest

from clients import Client
from tests.support.server_process import _ZYGOTE, CACHE_DIR, REPO_ROOT, ServerProcess
from tests.support.server_zygote import ForkedServer, Zygote

zygote_on = pytest.mark.skipif(
    os.environ.get("SLUICEWAY_TEST_ZYGOTE") == "0", reason="SLUICEWAY_TEST_ZYGOTE=0 turns the zygote off"
)


@zygote_on
def test_a_forked_server_serves_and_exits_0_on_sigterm() -> None:
    server = ServerProcess("--log-level", "info", env={"SLUICEWAY_MAX_QUEUE_SIZE": "7"}).start()
    try:
        assert isinstance(server.process, ForkedServer), _ZYGOTE.refusal
        answer = Client(server.address).infer("mlp", {"features": np.ones((2, 64), np.float32)})
        assert next(iter(answer.values())).shape[0] == 2
        assert server.process.poll() is None
        assert server.terminate() == 0
        assert server.process.returncode == 0
    finally:
        server.kill()


@zygote_on
def test_a_killed_forked_server_says_the_signal_and_wait_times_out_before() -> None:
    zygote = Zygote(REPO_ROOT)
    argv = ["server", "serve", "--port", "0", "--metrics-port", "0", "--cache-dir", str(CACHE_DIR)]
    forked = zygote.start(argv, dict(os.environ))
    assert forked is not None
    try:
        assert any("sluiceway ready on" in line for line in forked.stdout)  # its output's pipe
        with pytest.raises(subprocess.TimeoutExpired):
            forked.wait(0.1)
        forked.send_signal(signal.SIGKILL)
        assert forked.wait(30) == -signal.SIGKILL
    finally:
        forked.kill()
        forked.stdout.close()
        zygote.close()


def test_an_environment_read_at_import_falls_back_to_a_command() -> None:
    zygote = Zygote(REPO_ROOT)
    argv = ["server", "serve", "--port", "0"]
    assert zygote.start(argv, {**os.environ, "HOME": "/nonexistent"}) is None
    assert zygote.start(argv, {k: v for k, v in os.environ.items() if k != "PATH"}) is None
    zygote.close()


@zygote_on
def test_a_changed_environment_gets_a_new_zygote_and_the_old_ones_servers_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zygote = Zygote(REPO_ROOT)
    argv = ["server", "serve", "--port", "0", "--metrics-port", "0", "--cache-dir", str(CACHE_DIR)]
    first = zygote.start(argv, dict(os.environ))
    monkeypatch.setenv("ZYGOTE_TEST_CHANGED", "1")  # the test process's own environment changes
    second = zygote.start(argv, dict(os.environ))
    try:
        assert first is not None and second is not None, zygote.refusal
        for forked in (first, second):
            assert any("sluiceway ready on" in line for line in forked.stdout)
        assert first.poll() is None  # its zygote, retired, still reaps it: no false end
        for forked in (first, second):
            forked.send_signal(signal.SIGTERM)
            assert forked.wait(30) == 0
    finally:
        for forked in (first, second):
            if forked is not None:
                forked.kill()
                forked.stdout.close()
        zygote.close()
