"""The transport floor: a bare grpc.aio KServe v2 server with no batcher, no queue, no validation.

    .venv/bin/python -m loadtest.peers.floor --mode echo --model mlp --port 8101
    .venv/bin/python -m loadtest.peers.floor --mode ort --model resnet --port 8101 --intra-op-threads 2

`echo` answers every ModelInfer with a fixed, correctly shaped output (zeros) without reading the
input: what gRPC + protobuf alone cost. `ort` runs onnxruntime on each request as it comes, inline on
the event loop (one at a time, no batching) unless `--executor-threads N` hands runs to N threads.
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

from loadtest.peers.common import HOST, SPECS, ModelSpec, add_model_args, model_file, ort_session
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos import model_config_pb2 as mc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def model_config(spec: ModelSpec) -> mc.ModelConfig:
    config = mc.ModelConfig(name=spec.name, platform="onnxruntime_onnx", max_batch_size=spec.max_batch_size)
    config.input.add(name=spec.input, data_type=mc.TYPE_FP32, dims=spec.input_dims)
    config.output.add(name=spec.output, data_type=mc.TYPE_FP32, dims=spec.output_dims)
    return config


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, spec: ModelSpec, session: Any | None, executor: ThreadPoolExecutor | None) -> None:
        self._spec = spec
        self._session = session
        self._executor = executor
        # Echo: one zero buffer for the largest batch; a request's answer is a prefix of it.
        self._row_bytes = 4 * int(np.prod(spec.output_dims))
        self._zeros = bytes(self._row_bytes * spec.max_batch_size)
        self._count = 0
        self._infer_ns = 0

    def _check(self, name: str) -> None:
        if name != self._spec.name:
            raise LookupError(name)

    def _run(self, request: pb.ModelInferRequest) -> tuple[int, bytes]:
        shape = [int(d) for d in request.inputs[0].shape]
        if self._session is None:
            return shape[0], self._zeros[: shape[0] * self._row_bytes]
        features = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(shape)
        (out,) = self._session.run([self._spec.output], {self._spec.input: features})
        return shape[0], np.ascontiguousarray(out, dtype=np.float32).tobytes()

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        start = time.perf_counter_ns()
        if self._executor is None:
            rows, raw = self._run(request)
        else:
            loop = asyncio.get_running_loop()
            rows, raw = await loop.run_in_executor(self._executor, self._run, request)
        self._count += rows
        self._infer_ns += time.perf_counter_ns() - start
        output = pb.ModelInferResponse.InferOutputTensor(
            name=self._spec.output, datatype="FP32", shape=[rows, *self._spec.output_dims]
        )
        return pb.ModelInferResponse(
            model_name=self._spec.name,
            model_version="1",
            id=request.id,
            outputs=[output],
            raw_output_contents=[raw],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        if request.model_name != self._spec.name:
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
        return pb.ModelReadyResponse(ready=request.name == self._spec.name)

    async def ServerMetadata(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="sluiceway-floor", version="0.1.0", extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        if request.name != self._spec.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        tensor = pb.ModelMetadataResponse.TensorMetadata
        s = self._spec
        return pb.ModelMetadataResponse(
            name=s.name,
            versions=["1"],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=s.input, datatype=s.datatype, shape=[-1, *s.input_dims])],
            outputs=[tensor(name=s.output, datatype=s.datatype, shape=[-1, *s.output_dims])],
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        if request.name != self._spec.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        return pb.ModelConfigResponse(config=model_config(self._spec))

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name and request.name != self._spec.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model '{request.name}'")
        # Counts only, so perf_analyzer's server-side report has something to difference.
        success = pb.StatisticDuration(count=self._count, ns=self._infer_ns)
        stats = pb.ModelStatistics(
            name=self._spec.name,
            version="1",
            inference_count=self._count,
            execution_count=self._count,
            inference_stats=pb.InferStatistics(success=success, compute_infer=success),
        )
        return pb.ModelStatisticsResponse(model_stats=[stats])


async def serve(args: argparse.Namespace) -> None:
    spec = SPECS[args.model]
    session = None
    if args.mode == "ort":
        session = ort_session(
            model_file(args.model, args.cache_dir), args.intra_op_threads, args.inter_op_threads
        )
    executor = ThreadPoolExecutor(args.executor_threads) if args.executor_threads > 0 else None
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    servicer = FloorServicer(spec, session, executor)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"{HOST}:{args.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"floor ({args.mode}, model {spec.name}) ready on {HOST}:{port}", flush=True)
    await stop.wait()
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
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
