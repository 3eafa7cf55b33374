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

A lazy `preserve_ordering` model's frames read while it is not loaded (its setting read from its
config: server/models/frame_rules.py) serve a version known only once it is: each waits for the
stream's earlier answers of every version of the model, and the model's frames read after it (any
version) wait for it. They had kept no order (every trial of 8 frames over two instances out of
order, where the loaded model kept it).
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias

from protos import grpc_service_pb2 as pb
from server.models.frame_rules import FrameRules
from server.models.versions import ModelVersion


class AllOf:
    """Set once every one of `events` is (an answer that waits for several chains)."""

    __slots__ = ("_events",)

    def __init__(self, events: list[asyncio.Event]) -> None:
        self._events = events

    def is_set(self) -> bool:
        return all(event.is_set() for event in self._events)

    async def wait(self) -> bool:
        for event in self._events:
            await event.wait()
        return True


Before: TypeAlias = "asyncio.Event | AllOf"  # what an answer waits for


class StreamOrder:
    """One stream's latest ordered answer per model version (at most one entry per version the
    repository serves: requests of unknown models keep no order), and per lazy `preserve_ordering`
    model whose frames were read while it was not loaded."""

    def __init__(self) -> None:
        self._tails: dict[tuple[str, int | str], asyncio.Event] = {}
        # The last such frame per model name: a chain of the model started after it waits for it.
        self._unloaded: dict[str, asyncio.Event] = {}

    def place(
        self, request: pb.ModelInferRequest, served: ModelVersion | FrameRules | None, ordered: bool
    ) -> tuple[Before | None, asyncio.Event | None]:
        """(the answer to wait for, the event to set once answered) for `request`: (None, None)
        unless it is `ordered` (a latest-frame-wins frame: by its model and version as requested)
        or its model preserves ordering. `served`: the version the request names
        (RequestPath.model_of; None when not known: then it fails in `start`), or a lazy model's
        rules while it is not loaded (RequestPath.frame_rules)."""
        if isinstance(served, FrameRules):
            if served.preserve_ordering:
                return self._place_unloaded(request.model_name)
            served = None
        key: tuple[str, int | str]
        if served is not None and served.preserve_ordering:
            # Every frame of the version, latest-frame-wins ones too: keyed apart (those by the
            # request) a superseded frame's answer had overtaken an earlier frame's of the version.
            key = (served.name, served.version)
            after = self._tails.get(key)
            if after is None:  # the version's first frame: behind those read before the load
                after = self._unloaded.get(served.name)
        elif ordered:  # the request's own version string: an int key is a served version's
            key = (request.model_name, request.model_version)
            after = self._tails.get(key)
        else:
            return None, None
        done = self._tails[key] = asyncio.Event()
        return after, done

    def _place_unloaded(self, name: str) -> tuple[Before | None, asyncio.Event]:
        """A frame of lazy `preserve_ordering` model `name`, not loaded: behind every chain of the
        model, and the tail of each (a chain begun later starts behind it: `_unloaded`)."""
        keys = [key for key in self._tails if key[0] == name]
        tails = [self._tails[key] for key in keys]
        last = self._unloaded.get(name)
        if last is not None:
            tails.append(last)
        pending: list[asyncio.Event] = []
        for tail in tails:  # each once: after such a frame every chain of the model ends in it
            if not tail.is_set() and all(tail is not seen for seen in pending):
                pending.append(tail)
        done = self._unloaded[name] = asyncio.Event()
        for key in keys:
            self._tails[key] = done
        if not pending:
            return None, done
        return (pending[0] if len(pending) == 1 else AllOf(pending)), done
