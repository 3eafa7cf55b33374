"""The sequences a stream drove, so they are released when the stream ends (Triton issue #5453).

The stream session notes each request's (model, version, sequence id) as it reads it, and on
close hands them to its `on_close` callback (ModelManager.release_sequences). Bounded: beyond
MAX_SEEN ids a stream's further ids are not noted (they are still released by their end request
or their idle timeout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from batcher.sequence_types import SequenceId
from protos import grpc_service_pb2 as pb
from server.protocol.controls import Controls
from server.protocol.sequence_params import SEQUENCE_ID, sequence_id

MAX_SEEN = 65536
Seen = tuple[str, str, SequenceId]
OnClose = Callable[[Iterable[Seen]], None]


class SeenSequences:
    def __init__(self) -> None:
        self._seen: set[Seen] = set()

    def note(self, request: pb.ModelInferRequest, controls: Controls | None = None) -> None:
        """Note the request's sequence; `controls`: its parameters as InferJob parsed them, when
        it got that far (saves parsing the id twice per message)."""
        if len(self._seen) >= MAX_SEEN:
            return
        if controls is not None:
            if controls.sequence is not None:
                self._seen.add((request.model_name, request.model_version, controls.sequence.sid))
            return
        param = request.parameters.get(SEQUENCE_ID)
        if param is None:
            return
        try:
            sid = sequence_id(param)
        except Exception:
            return  # the request itself is answered with why
        if sid != 0 and sid != "":
            self._seen.add((request.model_name, request.model_version, sid))

    def __iter__(self) -> Iterator[Seen]:
        return iter(self._seen)
