"""Open streams never take every RPC slot (a tester's finding): with `--max-concurrent-rpcs 12` and
max_streams left at its default (2048), 14 open streams had answered health checks, ServerLive and
unary calls RESOURCE_EXHAUSTED (a liveness probe would have restarted the pod). max_streams now
stays below max_concurrent_rpcs: left unset it is half of it."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess

STREAMS = 14
CLIENT_WRITE_RACE = "INTERNAL: Internal error from Core"
SLOTS_REFUSAL = "RESOURCE_EXHAUSTED: Concurrent RPC limit exceeded!"  # rpc_slots.py, then the limit


def frame() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[np.ones((1, 64), np.float32).tobytes()],
    )


async def test_open_streams_leave_slots_for_health_checks_and_unary_calls() -> None:
    with ServerProcess("--max-concurrent-rpcs", "12") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            calls = [stub.ModelStreamInfer() for _ in range(STREAMS)]
            outcomes = []
            for call in calls:  # each stream answered (open) or refused, in turn
                try:
                    await call.write(frame())
                    answer = await call.read()
                    outcomes.append(answer.error_message or "ok")
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):  # refused: the call is over
                    outcomes.append(f"{(await call.code()).name}: {await call.details()}")
            assert outcomes.count("ok") == 6, outcomes  # max_streams: 12 // 2
            # The server's refusal of each; the client's own "Internal error from Core" where its
            # write met the call the refusal had just ended (grpc's client, not the server: its
            # INTERNAL would carry our message; 1 of 8 refusals in a CI run on 2026-12-04).
            refused = [o for o in outcomes if o != "ok" and o != CLIENT_WRITE_RACE]
            assert len(refused) >= len(outcomes) - 6 - 1, outcomes
            # Each call opens at once (grpc.aio starts it when made): 14 arrive against 12 slots, so
            # up to 2 may be refused at max_concurrent_rpcs, while the refusals ahead still hold
            # theirs (a loaded CI run, 2026-12-05). Every other refusal is a stream cap's.
            at_slots = [o for o in refused if o.startswith(SLOTS_REFUSAL)]
            assert len(at_slots) <= STREAMS - 12, outcomes
            assert all("max_concurrent_rpcs=12" in o for o in at_slots), at_slots
            ours = [o for o in refused if not o.startswith(SLOTS_REFUSAL)]
            assert ours and all("RESOURCE_EXHAUSTED" in o and "max_streams=6" in o for o in ours), refused
            health = health_pb2_grpc.HealthStub(channel)
            checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
            answer = await stub.ModelInfer(frame(), timeout=10)
            assert list(answer.outputs[0].shape) == [1, 2]
            for call in calls:
                call.cancel()
