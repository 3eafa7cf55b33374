"""The transport floor: a bare grpc.aio KServe v2 server with no batcher, no queue, no validation.

    .venv/bin/python -m loadtest.peers.floor --mode echo --model mlp --port 8101
    .venv/bin/python -m loadtest.peers.floor --mode ort --model resnet --port 8101 --intra-op-threads 2

`echo` answers every ModelInfer with a fixed, correctly shaped output (zeros) without reading the
input: what gRPC + protobuf alone cost. `ort` runs onnxruntime on each request as it comes, inline on
the event loop (one at a time, no batching) unless `--executor-threads N` hands runs to N threads.
`--api sync` serves the same on grpc's sync API instead (floor_sync.py: each call on a pool thread).
ServerMetadata, ModelMetadata, ModelConfig and ModelStatistics answer just enough for perf_analyzer.
Prints `ready on 127.0.0.1:PORT`; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from loadtest.peers.common import (
    HOST,
    SPECS,
    ModelSpec,
    add_model_args,
    exit_within,
    intra_threads,
    model_file,
    ort_session,
)
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def model_config(spec: ModelSpec) -> mc.ModelConfig:
    config = mc.ModelConfig(name=spec.name, platform="onnxruntime_onnx", max_batch_size=spec.max_batch_size)
    config.input.add(name=spec.input, data_type=mc.TYPE_FP32, dims=spec.input_dims)
    config.output.add(name=spec.output, data_type=mc.TYPE_FP32, dims=spec.output_dims)
    return config


class FloorCore:
    """What both servicers answer with (aio below, sync in floor_sync.py): the inference and the
    few metadata answers perf_analyzer needs, as plain functions of the request."""

    def __init__(self, spec: ModelSpec, session: Any | None) -> None:
        self.spec = spec
        self._session = session
        # Echo: one zero buffer for the largest batch; a request's answer is a prefix of it.
        self._row_bytes = 4 * int(np.prod(spec.output_dims))
        self._zeros = bytes(self._row_bytes * spec.max_batch_size)
        self.count = 0
        self.infer_ns = 0

    def run(self, request: pb.ModelInferRequest) -> tuple[int, bytes]:
        shape = [int(d) for d in request.inputs[0].shape]
        if self._session is None:
            return shape[0], self._zeros[: shape[0] * self._row_bytes]
        features = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(shape)
        (out,) = self._session.run([self.spec.output], {self.spec.input: features})
        return shape[0], np.ascontiguousarray(out, dtype=np.float32).tobytes()

    def response(
        self, request: pb.ModelInferRequest, rows: int, raw: bytes, start_ns: int
    ) -> pb.ModelInferResponse:
        self.count += rows
        self.infer_ns += time.perf_counter_ns() - start_ns
        output = pb.ModelInferResponse.InferOutputTensor(
            name=self.spec.output, datatype="FP32", shape=[rows, *self.spec.output_dims]
        )
        return pb.ModelInferResponse(
            model_name=self.spec.name,
            model_version="1",
            id=request.id,
            outputs=[output],
            raw_output_contents=[raw],
        )

    def answer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Run inline and answer (the sync servicer's path, and the aio one's without an executor)."""
        start = time.perf_counter_ns()
        rows, raw = self.run(request)
        return self.response(request, rows, raw, start)

    def metadata(self) -> pb.ModelMetadataResponse:
        tensor = pb.ModelMetadataResponse.TensorMetadata
        s = self.spec
        return pb.ModelMetadataResponse(
            name=s.name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=s.input, datatype=s.datatype, shape=[-1, *s.input_dims])],
            outputs=[tensor(name=s.output, datatype=s.datatype, shape=[-1, *s.output_dims])],
        )

    def statistics(self) -> pb.ModelStatisticsResponse:
        # Counts only, so perf_analyzer's server-side report has something to difference.
        success = pb.StatisticDuration(count=self.count, ns=self.infer_ns)
        stats = pb.ModelStatistics(
            name=self.spec.name,
            version="1",
            inference_count=self.count,
            execution_count=self.count,
            inference_stats=pb.InferStatistics(success=success, compute_infer=success),
        )
        return pb.ModelStatisticsResponse(model_stats=[stats])


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: FloorCore, executor: ThreadPoolExecutor | None) -> None:
        self._core = core
        self._name = core.spec.name
        self._executor = executor

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        if self._executor is None:
            return self._core.answer(request)
        start = time.perf_counter_ns()
        loop = asyncio.get_running_loop()
        rows, raw = await loop.run_in_executor(self._executor, self._core.run, request)
        return self._core.response(request, rows, raw, start)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        if request.model_name != self._name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.model_name}'")
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            yield pb.ModelStreamInferResponse(infer_response=await self._infer(request))

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == self._name)

    async def ServerMetadata(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="sluiceway-floor", version="0.1.0", extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        if request.name != self._name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return self._core.metadata()

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        if request.name != self._name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return pb.ModelConfigResponse(config=model_config(self._core.spec))

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name and request.name != self._name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return self._core.statistics()


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


def floor_core(args: argparse.Namespace) -> FloorCore:
    session = None
    if args.mode == "ort":
        session = ort_session(
            model_file(args.model, args.cache_dir), intra_threads(args), args.inter_op_threads
        )
    return FloorCore(SPECS[args.model], session)


async def serve(args: argparse.Namespace) -> None:
    core = floor_core(args)
    executor = ThreadPoolExecutor(args.executor_threads) if args.executor_threads > 0 else None
    server = grpc.aio.server(options=SERVER_OPTIONS)
    servicer = FloorServicer(core, executor)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"{HOST}:{args.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"floor ({args.mode}, model {core.spec.name}) ready on {HOST}:{port}", flush=True)
    await stop.wait()
    exit_within()
    await server.stop(1.0)
    if executor is not None:
        executor.shutdown(wait=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.peers.floor", description=__doc__.split("\n")[0]
    )
    add_model_args(parser)
    parser.add_argument("--mode", choices=["echo", "ort"], default="echo")
    parser.add_argument(
        "--executor-threads", type=int, default=0, help="ort mode: run in N threads (0: inline on the loop)"
    )
    parser.add_argument("--uvloop", action="store_true", help="run the event loop on uvloop")
    parser.add_argument(
        "--api", choices=["aio", "sync"], default="aio",
        help="grpc.aio (an event loop) or grpc's sync API (a handler thread per call: floor_sync.py)",
    )  # fmt: skip
    parser.add_argument("--sync-threads", type=int, default=32, help="sync API: handler threads")
    args = parser.parse_args(argv)
    if args.api == "sync":
        from loadtest.peers.floor_sync import serve_sync

        serve_sync(args, floor_core(args))
    elif args.uvloop:
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
