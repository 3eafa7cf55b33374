"""A burst that fits is admitted after single requests, over a real server.

The tester's case (identity model, 100 ms a batch, max_batch_size 4): after 5 single requests, a
burst of 24 with a 350 ms deadline had 19 refused as overloaded, where 9 could be answered in time.
Admission forecast the queue in batches as large as recent runs (~2 rows after single requests),
not in the batches of 4 formation runs. Here the deadline is generous (3 s: room for ~27 batches
of 4 after the first request's) and the burst (130) more than fits: the old rule answered 57-59 of
them (batches of 2 forecast), the new ~110; the count asserted leaves room for a slow machine.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess

BURST = 130
DEADLINE_S = 3.0
BOUND_S = 60.0  # a generous bound for a warm-up call

PER_BATCH = """
backend: "identity"
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { }
parameters { key: "execute_delay_ms" value { string_value: "100" } }
"""


def request(rows: int, rid: str = "") -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="per_batch", id=rid)
    r.inputs.add(name="INPUT0", datatype="FP32", shape=[rows, 4])
    r.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return r


def code(call: grpc.Future) -> str:
    try:
        call.result()
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def test_after_single_requests_a_burst_that_fits_is_admitted_and_answered(tmp_path: Path) -> None:
    (tmp_path / "repo" / "per_batch" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "per_batch" / "config.pbtxt").write_text(PER_BATCH)
    with (
        ServerProcess("--model-repository", str(tmp_path / "repo")) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):  # 4-row runs: their cost is seen (the cost is per batch)
            stub.ModelInfer(request(4), timeout=BOUND_S)
        for _ in range(5):  # then single requests: recent runs are of 1 row
            stub.ModelInfer(request(1), timeout=BOUND_S)
        calls = [stub.ModelInfer.future(request(1, str(i)), timeout=DEADLINE_S) for i in range(BURST)]
        codes = Counter(code(call) for call in calls)
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, codes
        assert codes["OK"] >= 75, codes  # what fits is admitted
        assert codes["RESOURCE_EXHAUSTED"] >= 1, codes  # what does not is still shed
