"""The order a stream's answers leave in: per model version, for the requests that keep one.

Answers leave a stream as they complete, except those of models with `preserve_ordering` and
latest-frame-wins frames (server/protocol/latest_frame.py): those leave in request order among the
stream's requests to the same model version, each waiting for the one before it, as Triton's
`preserve_ordering` orders a model's responses. One chain for every model had made a fast model's
frame wait for a slow model's earlier frame (1.0 s behind a 1 s run, for a 2 ms model).
Latest-frame-wins frames of a model without `preserve_ordering` are chained by model name and
version as requested, the frames that supersede one another: known before a lazy model's load too,
where no version is (its frames waiting for the load had been answered in any order, a dropped
answer before older computed ones). A `preserve_ordering` version chains all its frames.
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
        if served is not None and served.preserve_ordering:
            # Every frame of the version, latest-frame-wins ones too: keyed apart (those by the
            # request) a superseded frame's answer had overtaken an earlier frame's of the version.
            key = (served.name, served.version)
        elif ordered:  # the request's own version string: an int key is a served version's
            key = (request.model_name, request.model_version)
        else:
            return None, None
        after = self._tails.get(key)
        done = self._tails[key] = asyncio.Event()
        return after, done
