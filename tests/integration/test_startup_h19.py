"""What a client sees while a real server starts: from the moment its port opens, ServerReady is
never true before every model the start loads is ready, and a request for a model of the
repository is never NOT_FOUND (UNAVAILABLE "not ready (loading: ...)", which clients retry).

Before, with 300 MLPs, ServerReady was true on the empty index and flapped ~35 times while the
models loaded, and a model not reached yet was NOT_FOUND ("Request for unknown model"), retried by
no client. Here five identity models wait 0.3 s each in their loads (`creation_delay_sec`), so
that a client polling from the port's opening sees the start-up load under way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess
from tests.support.slow_steps import one_step_ensemble, slow_identity, write_repository

SLOW_LOAD = 'parameters { key: "creation_delay_sec" value: { string_value: "0.3" } }'
LAZY = 'parameters { key: "lazy_load" value: { string_value: "true" } }'
LOADED_AT_START = ["s1", "s2", "s3", "s4", "s5", "ens"]
MODELS = [*LOADED_AT_START, "lz"]
# Connect as soon as the port opens (grpc's first reconnect waits 1 s, then longer).
QUICK_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 10), ("grpc.max_reconnect_backoff_ms", 50)]


@dataclass
class Seen:
    """What the polling client was told, round after round."""

    rounds: int = 0
    rounds_loading: int = 0  # rounds in which a model the start loads was not ready yet
    problems: list[str] = field(default_factory=list)


def repository(tmp_path: Path) -> Path:
    configs = {name: slow_identity(name, 0, SLOW_LOAD) for name in LOADED_AT_START[:-1]}
    configs["ens"] = one_step_ensemble("ens", "s5")
    configs["lz"] = slow_identity("lz", 0, LAZY)
    return write_repository(tmp_path / "repo", configs)


def one_row(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.ones((1, 1), np.float32).tobytes())
    return request


def one_round(stub: pb_grpc.GRPCInferenceServiceStub, seen: Seen) -> None:
    """ServerReady, then each model's readiness, index entry and answer (readiness only grows
    during a start: a model not ready after ServerReady said true was not ready before it)."""
    server_ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    ready = {m: stub.ModelReady(pb.ModelReadyRequest(name=m), timeout=10).ready for m in LOADED_AT_START}
    listed = {m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models}
    seen.rounds += 1
    seen.rounds_loading += not all(ready.values())
    if server_ready and not all(ready.values()):
        seen.problems.append(f"ServerReady true while not ready: {sorted(m for m in ready if not ready[m])}")
    if set(MODELS) - listed:
        seen.problems.append(f"RepositoryIndex left out {sorted(set(MODELS) - listed)}")
    for model in LOADED_AT_START:
        try:
            stub.ModelInfer(one_row(model), timeout=10)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or "is not ready" not in (err.details() or ""):
                seen.problems.append(f"{model}: {err.code().name} {err.details()}")


def test_a_client_polling_from_the_ports_opening_never_sees_ready_early_nor_not_found(tmp_path: Path) -> None:
    # The server binds a free port itself (--port 0, ServerProcess's default) and names it once
    # its endpoint answers, before the models load: a port picked here and bound by the server
    # later could be taken meanwhile by another test worker's server.
    server = ServerProcess("--model-repository", str(repository(tmp_path)))
    started = threading.Thread(target=server.start)
    started.start()
    seen = Seen()
    try:
        port = server.listening_port()
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=QUICK_RECONNECT) as channel:
            grpc.channel_ready_future(channel).result(timeout=120)  # the port is open
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while started.is_alive():  # until the ready line (or a failed start)
                one_round(stub, seen)
            one_round(stub, seen)  # once ready: everything as it serves
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    finally:
        started.join(180)
        server.terminate()
        server.kill()
    assert server.port == port, server.output()[-2000:]
    assert seen.rounds_loading > 0, "the client never saw the start-up load under way"
    assert seen.problems == [], seen.problems[:10]
