"""One inference request from decode to encode, in two halves: what can be answered at once
(a response-cache hit, or the batcher's synchronous fast path) and what must wait for a batch.

Splitting it lets a stream answer fast-path requests inline, without a task per request, and
lets both RPCs share one request path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from batcher.types import Tensors
from protos import grpc_service_pb2 as pb
from server import codec
from server.controls import parse_controls
from server.models import ModelVersion
from server.response_cache import request_key


@dataclass(slots=True)
class InferJob:
    served: ModelVersion
    request: pb.ModelInferRequest
    inputs: Tensors
    rows: int
    names: Sequence[str]
    priority: int
    timeout_s: float | None
    deadline: float | None  # absolute time.monotonic(), from the gRPC deadline
    cache_key: bytes = b""
    lookup_ns: int = 0
    looked_up: bool = False  # the cache was consulted: the miss is counted when outputs arrive

    @classmethod
    def prepare(
        cls, served: ModelVersion, request: pb.ModelInferRequest, remaining_s: float | None
    ) -> InferJob:
        """Decode and validate (raises InvalidRequest naming the field)."""
        signature = served.signature
        inputs = codec.decode_inputs(request)
        rows = signature.check_inputs(inputs)
        names = signature.check_outputs(codec.requested_outputs(request))
        controls = parse_controls(request.parameters)
        deadline = None if remaining_s is None else time.monotonic() + remaining_s
        return cls(served, request, inputs, rows, names, controls.priority, controls.timeout_s, deadline)

    def answer_now(self) -> pb.ModelInferResponse | None:
        """The response if it needs no waiting (a cache hit, or an idle model's cheap run)."""
        served = self.served
        cache = served.response_cache
        if cache is not None:
            start = time.perf_counter_ns()
            self.cache_key = request_key(served.name, served.version_str, self.inputs)
            hit = cache.lookup(self.cache_key)
            if hit is not None:  # answered from the cache without the batcher, as Triton does
                response = self._encode(hit)
                served.stats.cache_hit.add(time.perf_counter_ns() - start)
                return response
            self.lookup_ns = time.perf_counter_ns() - start
            self.looked_up = True
        outputs = served.batcher.run_now(
            self.inputs, self.rows, deadline=self.deadline, priority=self.priority, timeout_s=self.timeout_s
        )
        return None if outputs is None else self._computed(outputs)

    async def answer_later(self) -> pb.ModelInferResponse:
        """The response through the batcher's queue (after `answer_now` returned None)."""
        outputs = await self.served.batcher.submit(
            self.inputs, self.rows, deadline=self.deadline, priority=self.priority, timeout_s=self.timeout_s
        )
        return self._computed(outputs)

    def _computed(self, outputs: Tensors) -> pb.ModelInferResponse:
        served = self.served
        if self.looked_up:
            start = time.perf_counter_ns()
            if served.response_cache is not None:  # None once this version was retired meanwhile
                served.response_cache.insert(self.cache_key, served.name, outputs)
            served.stats.cache_miss.add(self.lookup_ns + time.perf_counter_ns() - start)
        return self._encode(outputs)

    def _encode(self, outputs: Tensors) -> pb.ModelInferResponse:
        served = self.served
        return codec.encode_response(served.name, served.version_str, self.request.id, outputs, self.names)
