"""A hostile tester's findings on the command lines (h19 cli2): the load-test harness against a
target that never answers, `sluiceway top`'s options, `sluiceway drift` on a model with nothing
to score."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from loadtest import cli, inputs
from loadtest import runner as runner_module
from loadtest.runner import RunRecord
from loadtest.scenario import Scenario


@pytest.fixture
def sigterm_kept() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)  # cli.main takes SIGTERM as Ctrl-C
    yield
    signal.signal(signal.SIGTERM, before)


def _nothing_listening() -> Iterator[str]:
    with socket.socket() as free:  # bound, never listened: the connection is refused
        free.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{free.getsockname()[1]}"


def _never_answering() -> Iterator[str]:
    with socket.socket() as held:  # listening, never accepted: the kernel completes TCP, no HTTP/2
        held.bind(("127.0.0.1", 0))
        held.listen(8)
        yield f"127.0.0.1:{held.getsockname()[1]}"


@pytest.mark.usefixtures("sigterm_kept")
@pytest.mark.parametrize("target", [_nothing_listening, _never_answering])
def test_a_target_unreachable_from_the_start_exits_3_not_2(
    target: Callable[[], Iterator[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The real metadata fetch, without the worker processes (a second each to start).
    def run_scenario(
        scenario: Scenario, tick: Any, on_record: Callable[[RunRecord], None]
    ) -> list[RunRecord]:
        inputs.payloads_for(scenario.targets[0], scenario, "closed")
        raise AssertionError("the metadata of a target that never answered")

    monkeypatch.setattr(runner_module, "run_scenario", run_scenario)
    monkeypatch.setattr(inputs, "CONNECT_WAIT_S", 0.5, raising=False)  # keeps the test short
    for address in target():
        assert cli.main(["--target", address, "--concurrency", "2", "--no-plots", "--quiet"]) == 3
        err = capsys.readouterr().err
        assert err == (
            f"sluiceway-loadtest: target {address} accepted no connection within 0.5 s (is a server "
            "listening there?); no step was measured\n"
        )
