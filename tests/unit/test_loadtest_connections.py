"""The harness's `--connections`: how many connections each load process opens to a target, its
closed-loop users, streams and open-loop requests spread over them (`serve --workers N` spreads
connections, not requests, over its workers: loadtest/connection_spread.py). Counted at a stand-in
server in this process, by the peers its calls came from."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from loadtest.runner import plan_step
from loadtest.scenario import Scenario, Step, Target, WorkerPlan
from loadtest.worker import run_plan
from protos import grpc_service_pb2 as pb


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[str, Counter[str]]]:
    """A server answering every ModelInfer with one output; the peers of its calls counted."""
    peers: Counter[str] = Counter()

    async def infer(
        request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        peers[context.peer()] += 1
        answer = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        answer.outputs.add(name="y", datatype="FP32", shape=[1, 1])
        answer.raw_output_contents.append(b"\0\0\0\0")
        return answer

    handler = grpc.unary_unary_rpc_method_handler(
        infer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=pb.ModelInferResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", peers
    finally:
        await server.stop(0)


def plan(address: str, mode: str, concurrency: int, connections: int) -> WorkerPlan:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1.0)
    return WorkerPlan(
        address=address, mode=mode, concurrency=concurrency, rate=200.0, arrival="constant", phase_s=0.0,
        payloads=(request.SerializeToString(),), deadline_s=None, start_at=time.monotonic() + 0.2,
        warmup_s=0.0, duration_s=0.3, drain_s=2.0, max_requests=10_000, max_in_flight=64, seed=1,
        connections=connections,
    )  # fmt: skip


@pytest.mark.parametrize(("concurrency", "connections"), [(4, 1), (4, 2), (6, 3)])
async def test_closed_loop_users_spread_over_the_connections(
    stand_in: tuple[str, Counter[str]], concurrency: int, connections: int
) -> None:
    address, peers = stand_in
    counts = await run_plan(plan(address, "closed", concurrency, connections))
    assert counts.scheduled > 0 and set(counts.outcomes) == {"OK"}, counts.outcomes
    assert len(peers) == connections, peers  # one peer (client port) a connection


async def test_open_loop_requests_rotate_over_the_connections(stand_in: tuple[str, Counter[str]]) -> None:
    address, peers = stand_in
    await run_plan(plan(address, "open", 1, 3))
    assert len(peers) == 3, peers
    assert max(peers.values()) - min(peers.values()) <= 1, peers  # round-robin


def test_a_step_gives_each_process_at_most_one_connection_a_user() -> None:
    target = Target("t", "127.0.0.1:1", "m")
    cases = [("closed", 16, 8, 8), ("closed", 16, 20, 8), ("closed", 3, 8, 2), ("stream", 4, 8, 2),
             ("open", 100, 5, 5), ("closed", 16, 1, 1)]  # fmt: skip
    for mode, level, asked, want in cases:
        scenario = Scenario(targets=(target,), steps=(Step(mode, level),), processes=2, connections=asked)
        plans = plan_step(scenario, Step(mode, level), target, (b"",), 1, 0.0)  # type: ignore[arg-type]
        assert max(p.connections for p in plans) == want, (mode, level, asked, [p.connections for p in plans])


def test_the_results_say_how_many_connections_the_load_came_over() -> None:
    from loadtest.results import summarize
    from loadtest.runner import RunRecord
    from loadtest.stats import Counts

    target = Target("t", "127.0.0.1:1", "m")
    scenario = Scenario(targets=(target,), steps=(Step("closed", 16),), processes=2, connections=8)
    record = RunRecord(0, Step("closed", 16), target, 0, Counts(), 1.0, 2, None, connections=16)
    (entry,) = summarize(scenario, [record])["results"]
    assert entry["client_cpu"]["processes"] == 2 and entry["client_cpu"]["connections"] == 16
