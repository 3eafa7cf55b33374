"""The order a stream's answers leave in: per model version, for the requests that keep one.

Answers leave a stream as they complete, except those of models with `preserve_ordering` and
latest-frame-wins frames (server/protocol/latest_frame.py): those leave in request order among the
stream's requests to the same model version, each waiting for the one before it, as Triton's
`preserve_ordering` orders a model's responses. One chain for every model had made a fast model's
frame wait for a slow model's earlier frame (1.0 s behind a 1 s run, for a 2 ms model).
Latest-frame-wins frames are chained by model name and version as requested, the frames that
supersede one another: known before a lazy model's load too, where no version is (its frames
waiting for the load had been answered in any order, a dropped answer before older computed ones).
"""

from __future__ import annotations

import asyncio

from protos import grpc_service_pb2 as pb
from server.models.versions import ModelVersion


class StreamOrder:
    """One stream's latest ordered answer per model version (at most one entry per version the
    repository serves: requests of unknown models keep no order)."""

    def __init__(self) -> None:
        self._tails: dict[tuple[str, int | str], asyncio.Event] = {}

    def place(
        self, request: pb.ModelInferRequest, served: ModelVersion | None, ordered: bool
    ) -> tuple[asyncio.Event | None, asyncio.Event | None]:
        """(the answer to wait for, the event to set once answered) for `request`: (None, None)
        unless it is `ordered` (a latest-frame-wins frame: by its model and version as requested)
        or its model preserves ordering. `served`: the version the request names
        (RequestPath.model_of; None when not loaded, or unknown: then it fails in `start`)."""
        key: tuple[str, int | str]
        if ordered:  # the request's own version string: an int key is a served version's
            key = (request.model_name, request.model_version)
        elif served is not None and served.preserve_ordering:
            key = (served.name, served.version)
        else:
            return None, None
        after = self._tails.get(key)
        done = self._tails[key] = asyncio.Event()
        return after, done
