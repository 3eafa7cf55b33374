"""The six shared-memory RPCs, as a mixin InferenceServicer inherits (it sets `shm`, `cuda_shm`
and `calls`). Errors map through server/errors.py's one table, as every other handler's."""

from __future__ import annotations

import grpc

from protos import grpc_service_pb2 as pb
from server.backends.cuda_shm import CudaSharedMemory
from server.errors import InvalidRequest
from server.protocol.answers import answers_errors
from server.protocol.calls import CallTracker
from server.protocol.shared_memory import SharedMemoryRegistry

# A region's name, as its key's (NAME_MAX): 256 regions of 4 MiB names had held 1 GB, and a Status
# of all of them (each name twice) took the event loop 28 s to build and was then refused for size.
REGION_NAME_MAX = 255


def checked_name(name: str) -> str:
    """`name` for a registration, refused INVALID_ARGUMENT past REGION_NAME_MAX bytes."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > REGION_NAME_MAX:
        raise InvalidRequest(
            f"shared memory region name '{name[:64]}...' is {size} bytes; at most {REGION_NAME_MAX}"
        )
    return name


class SharedMemoryRpcs:
    shm: SharedMemoryRegistry
    cuda_shm: CudaSharedMemory
    calls: CallTracker

    @answers_errors
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

    @answers_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.shm.register(checked_name(request.name), request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @answers_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @answers_errors
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

    @answers_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryRegisterResponse:
        name = checked_name(request.name)
        self.cuda_shm.register(name, request.raw_handle, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @answers_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self.cuda_shm.unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()
