"""A client that stops reading its stream's answers, over a real server: what the stream holds is
bounded in bytes (`stream_max_held_bytes`), and once the client has read no answer and sent nothing
for `stream_idle_timeout_s` the server ends the call, freeing its slot and its answers.

Found by a camera-fleet tester: 8 streams that never read held 256 answers of 0.5 MB each (1.1 GB),
and a stalled stream stayed open until its deadline, or for good.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

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
HELD_BYTES = 2_000_000  # four frames' bytes: two requests and their two answers
FRAMES = 100  # sent by the client that never reads: every one was read and computed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("echo")
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "config.pbtxt").write_text(ECHO)
    args = ["--model-repository", str(repo), "--stream-idle-timeout-s", "1"]
    with ServerProcess(*args, "--stream-max-held-bytes", str(HELD_BYTES)) as running:
        yield running


def streams_open(server: ServerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as page:
        text = page.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sluiceway_streams_open":
                return float(sample.value)
    return 0.0


def frame(i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo", id=str(i))
    request.inputs.add(name="INPUT0", datatype="UINT8", shape=[1, FRAME_BYTES])
    request.raw_input_contents.append(bytes(FRAME_BYTES))
    return request


def computed(stub: pb_grpc.GRPCInferenceServiceStub) -> int:
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name="echo"), timeout=30)
    return int(answer.model_stats[0].inference_stats.success.count)


async def test_a_client_that_never_reads_is_bounded_in_bytes_then_ended(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as sync_channel:
        before = computed(pb_grpc.GRPCInferenceServiceStub(sync_channel))
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()

        async def write_all() -> None:  # blocks once flow control pushes back; never reads
            for i in range(FRAMES):
                await call.write(frame(i))

        writer = asyncio.ensure_future(write_all())
        try:

            async def opened() -> bool:
                return await asyncio.to_thread(streams_open, server) == 1

            async def ended() -> bool:
                return await asyncio.to_thread(streams_open, server) == 0

            await wait_until_async(opened, "the stream to open")
            # Ended by the server once nothing was read or sent for stream_idle_timeout_s (1 s).
            await wait_until_async(ended, "the server to end the stalled stream")
            # Reading again, the client gets what grpc had taken, then the call's end: grpc.aio
            # sends no status for a handler the server cancels, and it waited until its deadline
            # (for good without one, as here; a camera-fleet tester).
            read: list[object] = []

            async def read_all() -> None:
                async for answer in call:
                    read.append(answer)

            with pytest.raises(grpc.aio.AioRpcError) as ended_by:
                await asyncio.wait_for(read_all(), 60)
            code, details = ended_by.value.code(), ended_by.value.details() or ""
            if code == grpc.StatusCode.INTERNAL:  # grpc.aio's word for the status racing the write
                assert details == "Internal error from Core", ended_by.value  # still blocked (#36066)
            else:
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED, ended_by.value
                assert "stream_idle_timeout_s" in details, ended_by.value
            assert len(read) < FRAMES
        finally:
            writer.cancel()
            call.cancel()
    with grpc.insecure_channel(server.address) as sync_channel:
        stub = pb_grpc.GRPCInferenceServiceStub(sync_channel)
        # HELD_BYTES holds two frames with their answers; answers grpc took (its buffers and the
        # HTTP/2 window: about 8 here) left the stream's count. Nowhere near all of them.
        assert computed(stub) - before <= FRAMES // 2
        answer = stub.ModelInfer(frame(99), timeout=30)  # and the server serves on
        assert np.frombuffer(answer.raw_output_contents[0], np.uint8).size == FRAME_BYTES
    server.wait_for_output("its client read no answer and sent nothing for 1 s")
