"""Deadlines of a few milliseconds over a real server (batcher/hop.py). The demo MLP runs inline in
tens of microseconds; a fixed 5 ms margin for the hop had refused every request with 5 ms or less
("plus a 5.0 ms margin, 4.0 ms left"), each one, whatever the load. The `timeout` parameter sets
the deadline from the request's arrival at the server, so no time on the wire counts against it:
what decides is the server's rule alone, not the machine's speed."""

from __future__ import annotations

import re

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess

BOUND_S = 20.0  # the gRPC deadline: never what ends these requests


def request(timeout_us: int) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[np.full((1, 64), 0.5, np.float32).tobytes()],
    )
    if timeout_us:
        req.parameters["timeout"].int64_param = timeout_us
    return req


def outcome(stub: pb_grpc.GRPCInferenceServiceStub, timeout_us: int) -> tuple[grpc.StatusCode, str]:
    try:
        answer = stub.ModelInfer(request(timeout_us), timeout=BOUND_S)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    assert answer.outputs[0].shape == [1, 2]  # the demo MLP: 64 features in, 2 scores out
    return grpc.StatusCode.OK, ""


def test_a_4_ms_deadline_is_served_and_a_300_us_one_refused_naming_the_margin(
    zoo_server: ServerProcess,
) -> None:
    with grpc.insecure_channel(zoo_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(20):  # its runs seen: the rule refuses nothing on an unknown cost
            assert outcome(stub, 0)[0] == grpc.StatusCode.OK
        # Some of five: a loop stalled for 3.5 ms between arrival and admission refuses one rightly.
        four_ms = [outcome(stub, 4000) for _ in range(5)]
        assert grpc.StatusCode.OK in [code for code, _ in four_ms], four_ms
        for code, said in four_ms:
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED), said
        code, said = outcome(stub, 300)  # less than the margin's 1 ms floor: never admitted
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert re.fullmatch(
            r"deadline cannot be met: about \d+\.\d{1,3} ms of compute needed \(the fastest recent run of 1 "
            r"rows or fewer(?:, \d+\.\d ms when seen, faded with its age)?\) plus a (\d\.\d{1,3}) ms margin, "
            r"0\.[0-3]\d{0,2} ms left|deadline exceeded before the request was queued",
            said,
        ), said
        assert outcome(stub, 0)[0] == grpc.StatusCode.OK  # and it serves on
