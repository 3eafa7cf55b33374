"""The batches a server has run for a model, from its ModelStatistics (Triton's batch_stats): what
the load-test scripts read before and after a point to say how the server batched during it."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack

import grpc

from loadtest.worker_channels import channels_to_each_worker
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc


def batches_run(address: str, model: str, timeout_s: float = 30.0) -> Counter[int]:
    """Batches the server has run for `model` (all versions), by batch size."""
    with grpc.insecure_channel(address) as channel:
        return _batches(channel, model, timeout_s)


def every_workers_batches(address: str, model: str, workers: int, timeout_s: float = 30.0) -> Counter[int]:
    """Under `serve --workers N`, whose workers each keep their own statistics: the batches of them
    all, each read over a connection to that worker (loadtest/worker_channels.py)."""
    with ExitStack() as stack:
        channels = channels_to_each_worker(address, workers, stack, model, timeout_s)
        return sum((_batches(channel, model, timeout_s) for channel in channels.values()), Counter())


def _batches(channel: grpc.Channel, model: str, timeout_s: float) -> Counter[int]:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=timeout_s)
    return Counter({b.batch_size: b.compute_infer.count for s in stats.model_stats for b in s.batch_stats})


def rows_and_runs(ran: Counter[int]) -> tuple[int, int]:
    """(rows, runs) of batch counts by size."""
    return sum(size * count for size, count in ran.items()), sum(ran.values())
