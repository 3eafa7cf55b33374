"""What one ModelStreamInfer call holds in bytes (server/protocol/stream.py): requests read and not
yet answered, and answers not yet written, bounded by `stream_max_held_bytes`. A request weighs its
tensors, parameters and strings, an answer its raw tensor bytes and the strings it echoes (id,
model name, an error's message): answers of 16 MiB ids a client never read had weighed 0, and 256
held 4 GB.

A request is charged when it is read for itself and for its answer, guessed from the stream's
recent answers, and the charge is settled when the answer is made: counting answers only once they
existed, 1 KB requests whose answers were 500 KB were all read while small, and the stream held
7.6 times its bound. Until a first answer gives the guess, at most FIRST_READS requests are read
ahead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from protos import grpc_service_pb2 as pb
from server.protocol.frame_size import Oversized
from server.protocol.malformed import Malformed

FIRST_READS = 8
# A frame as read: a request, or one refused unparsed (Malformed, Oversized: it holds no tensors).
Read = pb.ModelInferRequest | Malformed | Oversized


def frame_bytes(request: Read | None) -> int:
    """What a request holds as the stream keeps it in flight: its raw tensor bytes, typed contents,
    parameters' keys and strings, id and model name. Counted by raw tensor bytes alone, then also
    its id and model name, 8 MiB a frame of parameters had still weighed nothing (1.1 GB on one
    stream). Not ByteSize(): protobuf serializes the message to size it (52 ms for 16 MiB raw)."""
    if not isinstance(request, pb.ModelInferRequest):
        return 0
    size = sum(map(len, request.raw_input_contents)) + len(request.id) + len(request.model_name)
    size += _parameter_bytes(request.parameters)
    for tensor in request.inputs:
        size += _parameter_bytes(tensor.parameters)
        if tensor.HasField("contents"):  # typed values (a copy to size them: decoded one by one later)
            size += tensor.contents.ByteSize()
    for output in request.outputs:
        size += _parameter_bytes(output.parameters)
    return size


def _parameter_bytes(parameters: Mapping[str, pb.InferParameter]) -> int:
    return sum(len(key) + len(value.string_param) for key, value in parameters.items()) if parameters else 0


def answer_bytes(response: pb.ModelStreamInferResponse) -> int:
    """An answer's raw output bytes and the strings it echoes or says, as `frame_bytes`."""
    answer = response.infer_response
    strings = len(answer.id) + len(answer.model_name) + len(response.error_message)
    return sum(map(len, answer.raw_output_contents)) + strings


class HeldBytes:
    """The stream's bytes and its room to read; `limit` None: no bound (and no accounting)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.held = 0
        self._room = asyncio.Event()
        self._guess: int | None = None  # an answer's bytes, from the stream's recent answers
        # id(request) -> (its own bytes, its charge), until it is answered
        self._charged: dict[int, tuple[int, int]] = {}

    async def room(self) -> None:
        """Until there is room to read one more request (one larger than the bound is still read
        when the stream holds nothing else)."""
        while self.limit is not None and (
            self.held >= self.limit or (self._guess is None and len(self._charged) >= FIRST_READS)
        ):
            self._room.clear()
            await self._room.wait()

    def read(self, request: Read) -> None:
        if self.limit is None:
            return
        own = frame_bytes(request)
        charge = own + (own if self._guess is None else self._guess)
        self._charged[id(request)] = own, charge
        self.held += charge

    def answered(self, request: Read | None, made: int | None, refused: bool = False) -> int:
        """Settle `request`'s charge now its answer is made, of `made` bytes (answer_bytes; None: no
        answer will be sent); the bytes to release once the answer is written. `refused`: the
        answer is an error frame, which says nothing of what an answer weighs: each had halved the
        guess, and ~20 refused frames took it to 0, so the requests read after them were charged
        their own bytes alone (up to `stream_max_in_flight` large answers held past the bound)."""
        own, charged = (0, 0) if request is None else self._charged.pop(id(request), (0, 0))
        if self.limit is None:
            return 0
        if made is None:
            self._release(charged)
            return 0
        if not refused:
            self._guess = max(made, (self._guess or 0) // 2)  # recent answers weigh most
        self.held += own + made - charged
        self._release(0)
        return own + made

    def written(self, nbytes: int) -> None:
        self._release(nbytes)

    def _release(self, nbytes: int) -> None:
        self.held -= nbytes
        self._room.set()  # the reader looks again (room() re-checks)
