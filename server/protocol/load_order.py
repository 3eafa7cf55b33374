"""A stream's frames for one model, in the order read, across that model's (lazy) load.

A frame for a lazy model not loaded waits for the load (load_wait.py `await_load`); a frame read
just after the load ended went straight to the loaded batcher and overtook the frames still
waiting, and those resumed from the load in any order among themselves: a sequence's
continuations ran before their start ("never started") or before its earlier frames (wrong sums
answered OK, 4 trials of 10 in a tester's run). So while a frame of a stream waits for its
model's load, each later frame of the stream for the same model takes a `Turn` behind it: it may
wait for the load itself (judged early, within its own deadline) but reaches the batcher only
after every earlier frame of that model has reached it or failed. Frames of other models do not
wait (a stream's answers keep no order across models: README "Protocol"). A model with no frame
waiting costs the hot path one check of an empty dict.

A frame prepared while its lazy model was loaded, whose task queues it later, takes a turn too
(the stream's later frames of the model wait behind it): evicted in between, it waits for the
reload (request_path.py `_load_again_for`), and the frames read meanwhile had taken turns with
nothing ahead and overtaken it. A model that is not lazy is never evicted: its frames take none.
"""

from __future__ import annotations

import asyncio


class Turn:
    """One frame's place in its stream's order for a model: `wait()` for the frames before it,
    then `admitted()` once it has reached the batcher, or failed before (idempotent)."""

    __slots__ = ("_admitted", "_after", "_mine", "_name", "_order")

    def __init__(self, order: LoadOrder, name: str, after: asyncio.Future[None] | None) -> None:
        self._order = order
        self._name = name
        self._after = after  # the frame before it: done once it and those before it are admitted
        self._mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._admitted = False  # said once: a queued frame says it again as it ends

    @property
    def future(self) -> asyncio.Future[None]:
        return self._mine

    @property
    def came(self) -> bool:
        """Every earlier frame of this model on the stream has reached the batcher or failed."""
        return self._after is None or self._after.done()

    async def wait(self) -> None:
        """Until every earlier frame of this model on the stream has reached the batcher or failed.
        Bounded: each of those ends at its load (or its deadline), as this one did."""
        if self._after is not None and not self._after.done():
            await asyncio.shield(self._after)  # a cancelled waiter must not cancel the chain

    def admitted(self) -> None:
        """This frame reached the batcher, or will not: the next may go once those before it have
        too (a frame failed early must not let the next overtake one still waiting)."""
        if self._admitted:
            return
        self._admitted = True
        after = self._after
        if after is None or after.done():
            self._release()
        else:
            after.add_done_callback(lambda _: self._release())

    def _release(self) -> None:
        if not self._mine.done():
            self._mine.set_result(None)
            self._order.released(self._name, self._mine)


class LoadOrder:
    """One stream's chain per model name of frames held in order (at most one entry per model
    with a frame waiting; none once they have all reached the batcher)."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Future[None]] = {}

    def waiting(self, name: str) -> bool:
        """Whether an earlier frame of model `name` on this stream has not reached the batcher."""
        return bool(self._tails) and name in self._tails

    def enter(self, name: str) -> Turn:
        """The next place in model `name`'s order (behind the frames of it still held)."""
        turn = Turn(self, name, self._tails.get(name))
        self._tails[name] = turn.future
        return turn

    def released(self, name: str, future: asyncio.Future[None]) -> None:
        if self._tails.get(name) is future:  # the last of the chain: nothing held for the model
            del self._tails[name]
