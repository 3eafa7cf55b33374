"""A target that stops answering: requests that could not reach it (UNAVAILABLE, the channel's
connection gone) are counted `unreachable`, said in a line and exit 3 (the run had exited 0); a
closed-loop user waits for the connection, at most CONNECTION_BACKOFF_S, before its next request
(it had spun: 65,225 failures in ~4 s at 140% of a core). An UNAVAILABLE the target answers with
is a measurement: not counted, no wait, exit 0."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadtest import cli, ending, worker
from loadtest import runner as runner_module
from loadtest.runner import RunRecord, plan_step
from loadtest.scenario import Scenario, Step, Target
from loadtest.stats import Recorder
from tests.support.nothing_listening import nothing_listening

WINDOW_S = 0.5
CONCURRENCY = 4


def _plan(address: str) -> Any:
    target = Target("t", address, "mlp")
    scenario = Scenario(
        targets=(target,), steps=(Step("closed", CONCURRENCY),), warmup_s=0.0, duration_s=WINDOW_S
    )
    (plan,) = plan_step(scenario, scenario.steps[0], target, (b"",), seed=1, start_at=0.0)
    return plan


async def _closed_loop(address: str) -> Recorder:
    plan = dataclasses.replace(_plan(address), start_at=time.monotonic())
    recorder = Recorder(plan.window, plan.deadline_s)
    async with grpc.aio.insecure_channel(address) as channel:
        await worker._closed([channel], plan, recorder)
    return recorder


def test_a_closed_loop_against_a_gone_target_counts_unreachable_and_waits_between_tries() -> None:
    with nothing_listening() as address:
        recorder = asyncio.run(_closed_loop(address))
    assert recorder.outcomes.keys() == {"UNAVAILABLE"}
    assert recorder.unreachable == recorder.scheduled > 0
    # Each user tries once per back-off at most (it had been thousands of tries in the window).
    tries_each = WINDOW_S / worker.CONNECTION_BACKOFF_S + 2
    assert recorder.scheduled <= CONCURRENCY * tries_each, recorder.scheduled


async def _refusing_server() -> tuple[grpc.aio.Server, int]:
    async def refuse(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded, try later")
        raise AssertionError("abort returns no answer")

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(refuse)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def test_an_unavailable_the_target_answers_with_is_a_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    # A long back-off, so that any wait per refusal shows in the count however busy the machine:
    # with 0.1 s, a CI run's 27 refusals in the window (no back-off, 3 workers on 2 cores) fell
    # under the bound of 28 a back-off could allow.
    monkeypatch.setattr(worker, "CONNECTION_BACKOFF_S", 5.0)

    async def main() -> Recorder:
        server, port = await _refusing_server()
        try:
            return await _closed_loop(f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    recorder = asyncio.run(main())
    assert recorder.outcomes.keys() == {"UNAVAILABLE"}
    assert recorder.unreachable == 0
    assert recorder.messages["UNAVAILABLE"] == "overloaded, try later"
    # No back-off: answered refusals come as fast as the server gives them.
    assert recorder.scheduled > CONCURRENCY * (WINDOW_S / worker.CONNECTION_BACKOFF_S + 2)


def _entry(unreachable: int, errors: dict[str, int]) -> dict[str, Any]:
    return {
        "target": "t",
        "step": {"label": "closed c=8"},
        "requests": 100,
        "unreachable": unreachable,
        "errors": errors,
        "error_messages": {"UNAVAILABLE": "Stream removed (Socket closed)"},
    }


def test_the_exit_status_is_3_only_for_requests_that_could_not_reach_the_target() -> None:
    gone = {"results": [_entry(40, {"UNAVAILABLE": 40})]}
    assert ending.exit_status(gone) == 3
    assert ending.lines(gone) == [
        "sluiceway-loadtest: t closed c=8: the target stopped answering: 40 of 100 requests could not "
        "reach it (UNAVAILABLE, e.g. Stream removed (Socket closed))"
    ]
    refused = {"results": [_entry(0, {"RESOURCE_EXHAUSTED": 60, "UNAVAILABLE": 5, "DEADLINE_EXCEEDED": 3})]}
    assert ending.exit_status(refused) == 0 and ending.lines(refused) == []
    message = "127.0.0.1:1 accepted no connection within 5 s before step 2 (closed c=4)"
    stopped = ending.stopped_by(ending.TARGET_UNREACHABLE, message)
    unreachable_before_a_step = {"results": [], "interrupted": True, "stopped_by": stopped}
    assert ending.exit_status(unreachable_before_a_step) == 3


@pytest.fixture
def sigterm_kept() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.mark.usefixtures("sigterm_kept")
def test_a_run_whose_target_died_exits_3_with_its_steps_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = Target("sluiceway", "127.0.0.1:1", "mlp")

    def run_scenario(
        scenario: Scenario, tick: Any, on_record: Callable[[RunRecord], None]
    ) -> list[RunRecord]:
        recorder = Recorder((10.0, 20.0), deadline_s=None)
        for i in range(30):
            recorder.record(10.0 + i * 0.1, 10.001 + i * 0.1, "OK", sent=10.0 + i * 0.1)
        for i in range(20):
            recorder.record(
                13.0 + i * 0.1, 13.0 + i * 0.1, "UNAVAILABLE", 13.0, "Socket closed", unreachable=True
            )
        record = RunRecord(0, Step("closed", 8), target, 0, recorder.counts(0.1), 10.0, 1, None)
        on_record(record)
        return [record]

    monkeypatch.setattr(runner_module, "run_scenario", run_scenario)
    argv = ["--target", target.address, "--concurrency", "8", "--out", str(tmp_path), "--no-plots", "--quiet"]
    assert cli.main(argv) == 3
    (entry,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert entry["unreachable"] == 20 and entry["errors"] == {"UNAVAILABLE": 20}
    assert "the target stopped answering: 20 of 50 requests could not reach it" in capsys.readouterr().err


def test_realtime_against_a_target_nothing_listens_on_says_so_and_exits_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: a traceback ending in TargetUnreachable, exit status 1."""
    from loadtest import realtime

    with nothing_listening() as address:
        argv = ["--target", address, "--streams", "1", "--duration-s", "0.1", "--warmup-s", "0"]
        status = realtime.main(argv)
    err = capsys.readouterr().err
    assert status == ending.EXIT_UNREACHABLE == 3, err
    assert f"target {address} accepted no connection" in err and "Traceback" not in err, err
