"""Calls past `max_concurrent_rpcs`, and streams past a stream cap, are refused by the server and
counted. Before, grpc's own bound refused such calls before any handler of ours ran: 12 of 20
calls were refused and showed in no statistic, series or log (a tester, session 53); refused
streams were counted nowhere either (README, Metrics: "Not there yet")."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, wait_until

MAX_RPCS = 6
HELD_S = 60.0  # bound on how long a held call waits for the test to let it go


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--max-concurrent-rpcs", str(MAX_RPCS), "--max-streams-per-connection", "1") as served:
        yield served


def series(server: ServerProcess, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels` on the server's /metrics (0 when not there yet)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as page:
        text = page.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def frame() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[np.ones((1, 64), np.float32).tobytes()],
    )


def test_calls_past_max_concurrent_rpcs_are_refused_named_counted_and_logged(server: ServerProcess) -> None:
    refused_before = series(server, "sluiceway_rpcs_refused_total")
    finish = threading.Event()

    def no_message() -> Iterator[bytes]:  # a call that holds its slot until `finish`
        finish.wait(HELD_S)
        yield from ()

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        silent = channel.stream_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=bytes,
            response_deserializer=bytes,
        )
        held = [silent.future(no_message(), timeout=HELD_S) for _ in range(MAX_RPCS)]
        try:
            # Read over HTTP (the metrics port), not a gRPC call: it takes no slot.
            wait_until(lambda: series(server, "sluiceway_rpcs_open") == MAX_RPCS, "every slot held")
            details = []
            for _ in range(4):
                with pytest.raises(grpc.RpcError) as info:
                    stub.ServerLive(pb.ServerLiveRequest(), timeout=30)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
                details.append(info.value.details())
            with pytest.raises(grpc.RpcError) as info:  # a stream too, refused before it is read
                list(stub.ModelStreamInfer(iter([frame()]), timeout=30))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
            details.append(info.value.details())
            client = triton.InferenceServerClient(server.address)
            with pytest.raises(InferenceServerException) as triton_info:
                client.is_server_live()
            assert triton_info.value.status() == "StatusCode.RESOURCE_EXHAUSTED", triton_info.value.message()
            client.close()
            for said in details:  # grpc's words, then the limit by name
                assert said.startswith("Concurrent RPC limit exceeded!"), said
                assert f"max_concurrent_rpcs={MAX_RPCS}" in said, said
            assert series(server, "sluiceway_rpcs_refused_total") == refused_before + 6
            assert series(server, "sluiceway_rpcs_open") == MAX_RPCS  # no refusal took a slot
            server.wait_for_output(" RESOURCE_EXHAUSTED: 6 calls were in progress (max_concurrent_rpcs)")
        finally:
            finish.set()
        for call in held:  # each held call answered once, for its missing message
            with pytest.raises(grpc.RpcError) as info:
                call.result()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        wait_until(lambda: series(server, "sluiceway_rpcs_open") == 0, "every slot given back")
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        assert list(stub.ModelInfer(frame(), timeout=30).outputs[0].shape) == [1, 2]
    assert series(server, "sluiceway_rpcs_refused_total") == refused_before + 6


def test_a_stream_past_a_stream_cap_is_counted_by_its_limit(server: ServerProcess) -> None:
    label = {"limit": "max_streams_per_connection"}
    before = series(server, "sluiceway_streams_refused_total", **label)
    finish = threading.Event()

    def frames() -> Iterator[pb.ModelInferRequest]:
        yield frame()
        finish.wait(HELD_S)

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelStreamInfer(frames(), timeout=HELD_S)
        try:
            assert next(first).error_message == ""  # open: the connection's one stream
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(iter([frame()]), timeout=30))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
            assert "max_streams_per_connection=1" in str(info.value.details())
            assert series(server, "sluiceway_streams_refused_total", **label) == before + 1
        finally:
            finish.set()
        assert list(first) == []
    assert series(server, "sluiceway_streams_refused_total", limit="max_streams") == 0
