"""Under Triton's `triton_grpc_error: true` header a stream's first error answer ends the call with
its status: that answer is delivered (as the status), not dropped. It had been counted in
`sluiceway_stream_answers_dropped_total{reason="cancelled"}` and named in a warning ("answers not
written ... grpc cancelled the call: its client cancelled it"), a false alarm from every client
that sets the header. The answers the end leaves unwritten (made, held behind a request still in
flight) are counted, under `reason="grpc_error_ended"`, and the line says why.

Answers are held deterministically, as in test_stream_ceiling_loss.py: the model keeps its order
(preserve_ordering) and its second run hangs (fault injection), so a cache hit and a refusal made
after that request wait unwritten behind it; the error that ends the call is another model's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import metrics_lines
from tests.support.models import scale_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until_async

# Its second run hangs until the instance closes (the server's stop), far past any test.
HELD = """max_batch_size: 8
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { preserve_ordering: true }
response_cache { enable: true }
parameters { key: "fault_hang_every" value: { string_value: "2" } }
parameters { key: "fault_hang_s" value: { string_value: "600" } }
"""
ENDS_ON_ERROR = (("triton_grpc_error", "true"),)
NOT_WRITTEN = "answers not written"  # the stream-end warning's words


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    # One server per test: a test asserts that none of its lines is the stream-end warning.
    onnx_file = scale_model(tmp_path / "scale.onnx", 2.0)
    write_model(tmp_path, "held", onnx_file, 'name: "held"\n' + HELD)
    write_model(tmp_path, "plain", onnx_file, None)
    args = ("--model-repository", str(tmp_path), "--allow-fault-injection",
            "--response-cache-bytes", "1000000", "--shutdown-grace-s", "0")  # fmt: skip
    with ServerProcess(*args) as process:
        yield process


def request(model: str, rid: str, value: float, columns: int = 4) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model,
        id=rid,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, columns])],
        raw_input_contents=[np.full((1, columns), value, np.float32).tobytes()],
    )


def dropped(server: ServerProcess, model: str) -> dict[str, float]:
    """`model`'s sluiceway_stream_answers_dropped_total by reason (absent: {})."""
    prefix = f'sluiceway_stream_answers_dropped_total{{model="{model}",reason="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics_lines(server)
        if line.startswith(prefix)
    }


async def counts(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> tuple[int, int, int]:
    """`model`'s success, fail and cache-hit counts."""
    answer = await stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
    s = answer.model_stats[0].inference_stats
    return s.success.count, s.fail.count, s.cache_hit.count


async def test_the_error_that_ends_the_call_is_delivered_not_counted_dropped(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(timeout=60, metadata=ENDS_ON_ERROR)
        await call.write(request("plain", "good", 1.0))
        first = await call.read()
        await call.write(request("plain", "bad", 1.0, columns=3))  # INVALID_ARGUMENT: ends the call
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert (await counts(stub, "plain"))[:2] == (1, 1)
    assert isinstance(first, pb.ModelStreamInferResponse) and first.infer_response.id == "good"
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ended.value
    assert "expected [-1,4], got [1,3]" in (ended.value.details() or "").lower()
    # Counted before the status is sent: nothing was dropped, under any reason.
    assert set(dropped(server, "plain").values()) == {0.0}, dropped(server, "plain")
    # Logged (had it been) before the status too: every line before the stop has been read by then.
    server.terminate()
    server.wait_for_output("shutting down (")
    assert NOT_WRITTEN not in server.output(), server.output()[-3000:]


async def test_answers_left_unwritten_when_the_error_ends_the_call_are_counted_as_such(
    server: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request("held", "prime", 1.0), timeout=30)  # run 1: cached
        call = stub.ModelStreamInfer(timeout=60, metadata=ENDS_ON_ERROR)
        await call.write(request("held", "hangs", 3.0))  # run 2 hangs
        await call.write(request("held", "hit", 1.0))  # answered from the cache at once, held in order
        await call.write(request("held", "refused", 1.0, columns=3))  # INVALID_ARGUMENT at once, held

        async def both_made() -> bool:
            return (await counts(stub, "held"))[1:] == (1, 1)  # the refusal; the hit

        await wait_until_async(both_made, "the cache hit and the refusal counted")
        await call.write(request("plain", "bad", 1.0, columns=3))  # answered at once: ends the call
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert await counts(stub, "held") == (2, 1, 1)  # the prime and the hit; never taken back
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ended.value
    assert "'plain'" in (ended.value.details() or "")
    held = dropped(server, "held")
    assert held["grpc_error_ended"] == 2, held  # the hit and the refusal, made and never written
    assert {reason: n for reason, n in held.items() if n} == {"grpc_error_ended": 2}, held
    assert set(dropped(server, "plain").values()) == {0.0}  # its error was the status
    server.wait_for_output("ended with 2 answers not written (1 counted successes, 1 counted failures")
    assert "an error answer ended the call with its status (the call set triton_grpc_error" in server.output()
    assert "its client cancelled it" not in server.output()
    assert '2 counted in sluiceway_stream_answers_dropped_total{reason="grpc_error_ended"}' in server.output()
