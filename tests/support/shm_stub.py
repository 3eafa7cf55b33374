"""A stub for shared-memory tests that unregisters every region it leaves behind (the server's
limits count regions: one test's leftovers had refused the next test's)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc


@contextlib.contextmanager
def unregistering_stub(address: str) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        yield stub
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(), timeout=30)
