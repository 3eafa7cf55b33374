"""Over a real server: a request that waits in a busy queue until no run could end before its
deadline is answered then, with the server's reason, before its client's own timer ends the call.

Answered at the server's copy of its deadline (later than its client's: gRPC sends the time left,
and the call takes time to arrive), such a request reached its client after the client's own timer
had fired, and the client saw gRPC's "Deadline Exceeded" instead of the server's words.

How the queue is kept busy without timing it: the model's one instance runs an identity model that
sleeps 500 ms a run (a sleep, not compute: CPU contention from other tests barely moves it), and
every third run hangs 2.5 s first (fault injection). The first two runs teach the estimator a run's
cost; the third holds the instance while the request under test waits behind it with a 2 s
deadline: admitted (the forecast expects the running batch to end in ~500 ms and the request's own
run to take ~500 more, far below 2 s however loaded the machine), then hopeless ~500 ms before its
deadline, which is how far ahead of its client's own timer the server's answer comes (300 ms
until session 64: a loaded server's loop late by that much would let the client's timer win). A ~100 ms
compute-bound model with a 1 s deadline had been shed at admission in a full parallel run (its
runs, slowed by contention, forecast 1243 ms) and left the early answer only ~100 ms.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import summed
from tests.support.server_process import ServerProcess, wait_until
from tests.support.slow_steps import one_row, slow_identity, write_repository

BOUND_S = 20.0  # generous upper bound for an answer that must come
DEADLINE_S = 2.0
CONFIG = slow_identity(
    "slow",
    500,
    'parameters { key: "fault_hang_every" value: { string_value: "3" } }\n'
    'parameters { key: "fault_hang_s" value: { string_value: "2.5" } }\n',
)
SERVERS_REASON = re.compile(
    r"^deadline cannot be met: about (\d+\.\d{1,3}) ms of compute needed \(the fastest recent run of 1 rows "
    r"or fewer(?:, \d+\.\d ms when seen, faded with its age)?\)"  # a faded floor says its run
    r" plus a (\d\.\d{1,3}) ms margin, (\d+\.\d{1,3}) ms left, while waiting in the queue$"
)


def request() -> pb.ModelInferRequest:
    return one_row("slow")


def test_a_request_that_can_no_longer_be_served_in_time_hears_the_servers_reason(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo", {"slow": CONFIG})  # identity: no model file
    args = ("--model-repository", str(repo), "--allow-fault-injection")
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(2):  # runs 1 and 2: their cost is now known
            stub.ModelInfer(request(), timeout=BOUND_S)
        started = time.monotonic()
        running = stub.ModelInfer.future(request(), timeout=BOUND_S)  # run 3: hangs 2.5 s first
        in_flight = 'sluiceway_batches_in_flight{model="slow",version="1"} '
        wait_until(lambda: running.done() or summed(server, in_flight) >= 1, "run 3 to start")
        assert not running.done(), f"run 3 ended at once: {running.exception()!r}"
        call = stub.ModelInfer.future(request(), timeout=DEADLINE_S)
        try:
            call.result(timeout=BOUND_S)
            raise AssertionError("answered OK behind a 2.5 s run with a 2 s deadline")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
            # The server's words, not gRPC's own "Deadline Exceeded" of the client's timer.
            reason = SERVERS_REASON.match(err.details() or "")
            assert reason, err.details()
            # What it names as needed covers the time left: it had said "about 274.3 ms of compute
            # needed, 276.2 ms left" (the 5 ms margin unnamed). Up to 1 ms over, where the estimate
            # faded while it waited (the queue re-arms its timer only for a later point > 1 ms on).
            compute_ms, margin_ms, left_ms = map(float, reason.groups())
            assert compute_ms + margin_ms + 1.1 >= left_ms, err.details()
        try:
            running.result(timeout=BOUND_S)
        except grpc.FutureTimeoutError:  # seen once (CI, 3.10): what each side said, for the next look
            raise AssertionError(
                f"run 3 unanswered {time.monotonic() - started:.1f} s after it was sent, past its own"
                f" {BOUND_S} s deadline; the server said:\n{server.output()[-4000:]}"
            ) from None
        expired = 'sluiceway_deadline_outcome_total{model="slow",outcome="expired",version="1"} '
        wait_until(lambda: summed(server, expired) == 1, "the early answer counted expired")
