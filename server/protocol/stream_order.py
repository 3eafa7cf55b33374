"""The order a stream's answers leave in: per model version, for the requests that keep one.

Answers leave a stream as they complete, except those of models with `preserve_ordering` and
latest-frame-wins frames (server/protocol/latest_frame.py): those leave in request order among the
stream's requests to the same model version, each waiting for the one before it, as Triton's
`preserve_ordering` orders a model's responses. One chain for every model had made a fast model's
frame wait for a slow model's earlier frame (1.0 s behind a 1 s run, for a 2 ms model).
"""

from __future__ import annotations

import asyncio

from server.models.versions import ModelVersion


class StreamOrder:
    """One stream's latest ordered answer per model version (at most one entry per version the
    repository serves: requests of unknown models keep no order)."""

    def __init__(self) -> None:
        self._tails: dict[tuple[str, int], asyncio.Event] = {}

    def place(
        self, served: ModelVersion | None, ordered: bool
    ) -> tuple[asyncio.Event | None, asyncio.Event | None]:
        """(the answer to wait for, the event to set once answered) for a request to `served`:
        (None, None) unless its model preserves ordering or the request is `ordered` (a
        latest-frame-wins frame). `served`: the version the request names (RequestPath.model_of;
        None when the model is unknown: its request fails in `start`, in no order)."""
        if served is None or not (ordered or served.preserve_ordering):
            return None, None
        key = (served.name, served.version)
        after = self._tails.get(key)
        done = self._tails[key] = asyncio.Event()
        return after, done
