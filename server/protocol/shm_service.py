"""The six shared-memory RPCs, as a mixin InferenceServicer inherits (it sets `shm`, `cuda_shm`
and `calls`). Errors map through server/errors.py's one table, as every other handler's."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from protos import grpc_service_pb2 as pb
from server.backends.cuda_shm import CudaSharedMemory
from server.errors import status_for
from server.protocol.calls import CallTracker
from server.protocol.shared_memory import SharedMemoryRegistry

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["SharedMemoryRpcs", Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _answers_errors(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(handler)
    async def wrapped(self: SharedMemoryRpcs, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        self.calls.enter()  # a drain waits for it
        try:
            return await handler(self, request, context)
        except Exception as exc:
            code, message, expected = status_for(exc)
            if not expected:
                log.error("shared memory call failed", exc_info=exc)
            await context.abort(code, message)
            raise AssertionError("unreachable: context.abort raises") from None
        finally:
            self.calls.exit()

    return wrapped


class SharedMemoryRpcs:
    shm: SharedMemoryRegistry
    cuda_shm: CudaSharedMemory
    calls: CallTracker

    @_answers_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        status = pb.SystemSharedMemoryStatusResponse.RegionStatus
        return pb.SystemSharedMemoryStatusResponse(
            regions={
                r.name: status(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size)
                for r in self.shm.status(request.name)
            }
        )

    @_answers_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_answers_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_answers_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        status = pb.CudaSharedMemoryStatusResponse.RegionStatus
        return pb.CudaSharedMemoryStatusResponse(
            regions={
                r.name: status(name=r.name, device_id=r.device_id, byte_size=r.byte_size)
                for r in self.cuda_shm.status(request.name)
            }
        )

    @_answers_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self.cuda_shm.register(request.name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @_answers_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self.cuda_shm.unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()
