"""preserve_ordering for unary calls: a model's answers leave in the order its requests arrived.

Triton holds each response of such a model until the responses of the requests before it are
sent, whatever the frontend. A stream keeps its own order (server/protocol/stream.py); this does
the same across unary calls, per model version: each call, once answered (or failed), waits for
the call that arrived before it. A call whose caller goes away releases the ones after it. A
computed answer waits within its own deadline only (answer_turn.py): past it, it is answered
DEADLINE_EXCEEDED at once, and the calls after it still wait for the ones before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from server.models.versions import ModelVersion
from server.protocol.answer_turn import LateForTurn, when_set

T = TypeVar("T")


class UnaryOrder:
    """The latest unanswered call per ordered model version (at most one entry per version)."""

    def __init__(self) -> None:
        self._tails: dict[tuple[str, int], asyncio.Event] = {}

    async def answer(
        self, served: ModelVersion | None, call: Callable[[asyncio.Event | None], Awaitable[T]]
    ) -> T:
        """`call(before)`'s result (or exception), after the answers of the calls to `served` that
        arrived before this one. `served`: the version the request names (None: not ordered).
        `before`: the answer ahead of it (None: none), which a computed answer waits for itself,
        within its deadline, before it counts (RequestPath.serve)."""
        if served is None or not served.preserve_ordering:
            return await call(None)
        key = (served.name, served.version)
        after = self._tails.get(key)
        done = self._tails[key] = asyncio.Event()
        try:
            try:
                result = await call(after)
            except (asyncio.CancelledError, LateForTurn):
                raise  # answered now: below, its place is released once `after` is
            except BaseException:
                if after is not None:  # a failure waits its turn too
                    await after.wait()
                raise
            if after is not None:  # set already where `call` waited for it (RequestPath.serve)
                await after.wait()
        except (asyncio.CancelledError, LateForTurn):
            # Its caller went away, or its deadline passed while it waited: the calls after it
            # still wait for the ones before it (set at once, the next call's answer overtook an
            # earlier one still computing).
            self._release_after(key, after, done)
            raise
        except BaseException:
            self._release(key, done)
            raise
        self._release(key, done)
        return result

    def _release(self, key: tuple[str, int], done: asyncio.Event) -> None:
        done.set()
        if self._tails.get(key) is done:
            del self._tails[key]

    def _release_after(self, key: tuple[str, int], after: asyncio.Event | None, done: asyncio.Event) -> None:
        if after is None or after.is_set():
            self._release(key, done)
            return
        when_set(after, lambda: self._release(key, done))
