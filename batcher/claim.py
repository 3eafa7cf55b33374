"""A caller's claim on a queued request: take it back before it starts computing.

For latest-frame-wins (the server's stream sessions): a newer frame supersedes an older one that
is still waiting, and the older one is answered "dropped" instead of computed. Only a request that
has not left the queue can be withdrawn; once a batch has taken it, it runs and is answered.
"""

from __future__ import annotations

from collections.abc import Callable


class Claim:
    """Made by the caller before the request reaches the batcher (`enqueue(..., claim=)`).

    `withdraw(exc)` before the request is queued: `enqueue` raises `exc` without queueing it.
    While it is queued: it leaves the queue and its await raises `exc`. After a batch took it (or
    it was answered): nothing happens. Returns whether the request was withdrawn.
    """

    __slots__ = ("_on_admitted", "_remove", "_settled", "_withdrawn")

    def __init__(self, on_admitted: Callable[[], object] | None = None) -> None:
        self._remove: Callable[[BaseException], bool] | None = None  # set while queued
        self._withdrawn: BaseException | None = None
        self._settled = False  # left the queue for a batch, or answered: too late to withdraw
        self._on_admitted = on_admitted

    def admitted(self) -> None:
        """The request is queued (`enqueue` calls it), or was answered at once: `on_admitted` runs,
        once. A newer frame withdraws an older one only then: one refused for its inputs or by the
        queue (its deadline cannot be met, or has passed: a 1 ms `timeout`) had left neither
        computed."""
        hook, self._on_admitted = self._on_admitted, None
        if hook is not None:
            hook()

    @property
    def withdrawn(self) -> BaseException | None:
        return self._withdrawn

    def withdraw(self, exc: BaseException) -> bool:
        if self._settled or self._withdrawn is not None:
            return False
        if self._remove is not None and not self._remove(exc):
            self._settled = True  # a batch took it meanwhile
            return False
        self._withdrawn = exc
        return True

    # -- for the batcher ----------------------------------------------------------------------

    def bind(self, remove: Callable[[BaseException], bool]) -> None:
        """Queued: `remove(exc)` takes it out of the queue and fails its await with `exc`, or
        returns False once a batch has taken it."""
        self._remove = remove

    def settle(self) -> None:
        """The request's await ended (answered, failed, or withdrawn)."""
        self._remove = None
        self._settled = True
