"""The sequences a stream drove, so they are released when the stream ends (Triton issue #5453).

The stream session notes each request's (model, version, sequence id) as it reads it, and on
close hands them to its `on_close` callback (ModelManager.release_sequences). Bounded: beyond
MAX_SEEN ids, or MAX_SEEN_BYTES of their names and ids, a stream's further ids are not noted (they
are still released by their end request or their idle timeout); nor is a model name longer than
a model's can be (a stream of frames naming no model, each a new 1 MiB name, had held 4 GB).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from batcher.sequence_types import SequenceId
from protos import grpc_service_pb2 as pb
from server.protocol.controls import Controls
from server.protocol.sequence_params import SEQUENCE_ID, sequence_id

MAX_SEEN = 65536
MAX_SEEN_BYTES = 1 << 20  # the noted model names, versions and string ids together
MODEL_NAME_MAX = 255  # a model is a repository directory: NAME_MAX bytes, so at most 255 characters
Seen = tuple[str, str, SequenceId]
OnClose = Callable[[Iterable[Seen]], None]


class SeenSequences:
    def __init__(self) -> None:
        self._seen: set[Seen] = set()
        self._bytes = 0

    def note(self, request: pb.ModelInferRequest, controls: Controls | None = None) -> None:
        """Note the request's sequence; `controls`: its parameters as InferJob parsed them, when
        it got that far (saves parsing the id twice per message)."""
        if len(self._seen) >= MAX_SEEN or len(request.model_name) > MODEL_NAME_MAX:
            return
        if controls is not None:
            if controls.sequence is not None:
                self._add((request.model_name, request.model_version, controls.sequence.sid))
            return
        param = request.parameters.get(SEQUENCE_ID)
        if param is None:
            return
        try:
            sid = sequence_id(param)
        except Exception:
            return  # the request itself is answered with why
        if sid != 0 and sid != "":
            self._add((request.model_name, request.model_version, sid))

    def _add(self, seen: Seen) -> None:
        model, version, sid = seen
        size = len(model) + len(version) + (len(sid) if isinstance(sid, str) else 8)
        if seen not in self._seen and self._bytes + size <= MAX_SEEN_BYTES:
            self._seen.add(seen)
            self._bytes += size

    def __iter__(self) -> Iterator[Seen]:
        return iter(self._seen)
