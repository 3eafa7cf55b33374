"""The batches a server has run for a model, from its ModelStatistics (Triton's batch_stats): what
the load-test scripts read before and after a point to say how the server batched during it."""

from __future__ import annotations

from collections import Counter

import grpc

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

CONNECTIONS_A_WORKER = 32  # fresh connections tried, per worker, until every worker answered one


def batches_run(address: str, model: str, timeout_s: float = 30.0) -> Counter[int]:
    """Batches the server has run for `model` (all versions), by batch size."""
    with grpc.insecure_channel(address) as channel:
        return _batches(channel, model, timeout_s)


def every_workers_batches(address: str, model: str, workers: int, timeout_s: float = 30.0) -> Counter[int]:
    """Under `serve --workers N`, whose workers each keep their own statistics: the batches of them
    all, read over fresh connections until each worker has answered one (RolloutStatus names it);
    RuntimeError after CONNECTIONS_A_WORKER a worker that did not reach them all (8 workers missed
    one in 64 connections about once in 700 reads)."""
    found: dict[str, Counter[int]] = {}
    tries = CONNECTIONS_A_WORKER * workers
    for _ in range(tries):
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            asked = apb.RolloutStatusRequest(model=model)
            stub = apb_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
            worker = stub.RolloutStatus(asked, timeout=timeout_s).worker
            if worker not in found:
                found[worker] = _batches(channel, model, timeout_s)
        if len(found) >= workers:
            return sum(found.values(), Counter())
    raise RuntimeError(f"{tries} connections reached only workers {sorted(found)} of {workers}")


def _batches(channel: grpc.Channel, model: str, timeout_s: float) -> Counter[int]:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=timeout_s)
    return Counter({b.batch_size: b.compute_infer.count for s in stats.model_stats for b in s.batch_stats})


def rows_and_runs(ran: Counter[int]) -> tuple[int, int]:
    """(rows, runs) of batch counts by size."""
    return sum(size * count for size, count in ran.items()), sum(ran.values())
