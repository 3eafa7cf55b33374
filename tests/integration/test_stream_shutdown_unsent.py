"""A stream whose client reads nothing while the server stops: the answers it made and never wrote
are counted `reason="shutdown"` and said in one line before the process exits (that reason had
unit tests only).

A tester checking the README saw no such line in 1 run of 3 with 10 frames of 500 KB: grpc takes
about 8 such answers into its buffers, so some runs left nothing unwritten to count. Here 30 frames
are sent and 14 computed before the stop, more than grpc takes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, wait_until_async

ECHO = """
backend: "identity"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_UINT8 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_UINT8 dims: [ -1 ] } ]
"""
FRAME_BYTES = 500_000
FRAMES = 30  # more than grpc takes into its buffers (about 8 of 500 KB), within the held bytes


def frame(i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo", id=str(i))
    request.inputs.add(name="INPUT0", datatype="UINT8", shape=[1, FRAME_BYTES])
    request.raw_input_contents.append(bytes(FRAME_BYTES))
    return request


async def test_answers_a_stream_left_unwritten_at_the_servers_stop_are_said_before_it_exits(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "echo_stop"
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "config.pbtxt").write_text(ECHO)
    server = ServerProcess("--model-repository", str(repo), "--shutdown-grace-s", "1").start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            call = stub.ModelStreamInfer()

            async def write_all() -> None:  # never reads: answers wait to be written
                for i in range(FRAMES):
                    await call.write(frame(i))

            writer = asyncio.ensure_future(write_all())

            async def computed() -> bool:
                stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="echo"), timeout=30)
                return stats.model_stats[0].inference_stats.success.count >= 14

            try:
                await wait_until_async(computed, "14 answers made and not read")
                assert server.process is not None
                code = await asyncio.to_thread(server.terminate, 60)
            finally:
                writer.cancel()
                call.cancel()
        assert code == 0
        server.wait_for_output('counted in sluiceway_stream_answers_dropped_total{reason="shutdown"}')
    finally:
        server.kill()
