"""The transport floor on grpc's sync API: each call, and each stream, runs on a pool thread.

    .venv/bin/python -m loadtest.peers.floor --api sync --mode echo --model mlp --port 8101

The same answers as floor.py's grpc.aio servicer (FloorCore), so the two APIs' per-message cost
can be compared with nothing else different (`python -m loadtest.stream_ratio --variant
'aio=FLOOR:--mode echo' --variant 'sync=FLOOR:--api sync --mode echo'`). A stream's handler
thread reads a message, answers it inline and yields the answer: one request in flight per
stream, as perf_analyzer's --streaming sends them.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from loadtest.peers.common import HOST, exit_within
from loadtest.peers.floor import SERVER_OPTIONS, FloorCore, model_config
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc


class SyncFloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: FloorCore) -> None:
        self._core = core
        self._name = core.spec.name
        # Handler threads share the counters (the GIL makes each += atomic enough for a
        # benchmark's statistics, but a lock keeps them exact).
        self._lock = threading.Lock()

    def _answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        with self._lock:
            return self._core.answer(request)

    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        if request.model_name != self._name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.model_name}'")
        return self._answer(request)

    def ModelStreamInfer(
        self, request_iterator: Iterator[pb.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        for request in request_iterator:
            yield pb.ModelStreamInferResponse(infer_response=self._answer(request))

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == self._name)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="sluiceway-floor-sync", version="0.1.0", extensions=[])

    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        if request.name != self._name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return self._core.metadata()

    def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.ServicerContext
    ) -> pb.ModelConfigResponse:
        if request.name != self._name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return pb.ModelConfigResponse(config=model_config(self._core.spec))

    def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name and request.name != self._name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        with self._lock:
            return self._core.statistics()


def serve_sync(args: argparse.Namespace, core: FloorCore) -> None:
    """Serve until SIGTERM/SIGINT. Each open stream holds a pool thread, so the pool must be larger
    than the streams a run opens (perf_analyzer --streaming: one per concurrency slot)."""
    pool = ThreadPoolExecutor(max_workers=args.sync_threads)
    server = grpc.server(pool, options=SERVER_OPTIONS, maximum_concurrent_rpcs=args.sync_threads)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(SyncFloorServicer(core), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"{HOST}:{args.port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"floor ({args.mode}, model {core.spec.name}, sync API) ready on {HOST}:{port}", flush=True)
    # Never stop.wait() with no timeout: Python runs signal handlers on the main thread only, and a
    # SIGTERM the kernel hands to another thread (any grpc or pool thread may take it) does not wake
    # a main thread blocked in a lock; the handler would run only once it woke, which it never did
    # (RELIABILITY.md: a floor outlived a test's 60 s wait after SIGTERM). Waking now and then runs it.
    while not stop.wait(0.2):
        pass
    exit_within()
    server.stop(1.0).wait()
    pool.shutdown(wait=True)
