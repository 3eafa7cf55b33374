"""A request of a batch size not run yet is refused only on what runs prove, over a real server.

The model's run costs 1 s a batch, whatever its rows. After one 1-row run, an 8-row request with
a 3 s deadline had been refused at once on the by-rows guess ("about 8000 ms of compute needed"),
and so was every later one: a refused size never runs, so the guess was never corrected. The
nearest smaller size seen (1 s) is what the runs prove; a deadline below that is still refused.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess

PER_BATCH = """
backend: "identity"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { }
parameters { key: "execute_delay_ms" value { string_value: "1000" } }
"""


def request(rows: int) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="per_batch")
    r.inputs.add(name="INPUT0", datatype="FP32", shape=[rows, 4])
    r.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return r


def test_an_unseen_size_runs_unless_its_deadline_is_below_the_proven_lower_bound(tmp_path: Path) -> None:
    (tmp_path / "repo" / "per_batch" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "per_batch" / "config.pbtxt").write_text(PER_BATCH)
    with (
        ServerProcess("--model-repository", str(tmp_path / "repo")) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request(1), timeout=60)  # one 1-row run: 1 s, the only size seen
        # Below even the proven 1 s: refused at once, by the server (not the client's timer).
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request(8), timeout=0.5)
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "ms of compute needed" in str(refused.value.details())
        # Guessed 8 s by rows, proven 1 s: it runs (1 s) and is answered in time.
        answer = stub.ModelInfer(request(8), timeout=3.0)
        assert answer.outputs[0].shape == [8, 4]
