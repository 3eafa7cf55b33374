"""Under `serve --workers N`: an open channel to each worker. The kernel spreads connections over
the workers sharing the port, so fresh connections (a subchannel pool of their own each) are opened
until every worker has answered one; RolloutStatus names the worker that answered."""

from __future__ import annotations

from contextlib import ExitStack

import grpc

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc

CONNECTIONS_A_WORKER = 32  # fresh connections tried, per worker (8 workers missed one in 64 ~1/700)
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def channels_to_each_worker(
    address: str, workers: int, stack: ExitStack, model: str, timeout_s: float = 30.0
) -> dict[str, grpc.Channel]:
    """Worker number -> a channel to it, closed with `stack` (the others tried are closed at once);
    RuntimeError when CONNECTIONS_A_WORKER a worker did not reach them all. `model`: one the
    server has (RolloutStatus asks about a model)."""
    found: dict[str, grpc.Channel] = {}
    tries = CONNECTIONS_A_WORKER * workers
    for _ in range(tries):
        channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
        stub = apb_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
        worker = stub.RolloutStatus(apb.RolloutStatusRequest(model=model), timeout=timeout_s).worker
        if worker in found:
            channel.close()
            continue
        found[worker] = stack.enter_context(channel)
        if len(found) >= workers:
            return found
    raise RuntimeError(f"{tries} connections reached only workers {sorted(found)} of {workers}")
