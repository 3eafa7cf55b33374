"""Poll mode's second try at a load that failed for a reason of the moment, not of the files.

A load that fails on an OS error (too many open files, no memory, a thread that could not start)
may well succeed later with the very same files; one that fails on a bad config or model file will
not. The poller (control.py) had tried a model again only when its files changed, so a model that
met EMFILE once stayed UNAVAILABLE for good. `LoadRetries` says when to try again: after the poll
interval, then twice as long each time, never more than `RETRY_MAX_S` apart (pure; fake clock in
tests)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from server.errors import failure_chain

RETRY_MAX_S = 60.0  # the longest wait between two tries of one model
# onnxruntime and other C++ code report errno only in their text (and Python's thread start has
# its own words): these sentences mark such a failure as the OS's too.
_OS_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.ENOSPC)
_OS_WORDS = (*(os.strerror(code) for code in _OS_ERRNOS), "can't start new thread")


def os_failure(exc: BaseException) -> bool:
    """Whether the OS failed the load (an OSError or MemoryError among its causes, or an OS error's
    words in a library's message), rather than the model's files being wrong."""
    for seen in failure_chain(exc):
        if isinstance(seen, (OSError, MemoryError)):
            return True
        text = str(seen)
        if any(words in text for words in _OS_WORDS):
            return True
    return False


@dataclass(frozen=True)
class Retry:
    """A model's next try: `delay_s` from now, its `attempt`-th."""

    delay_s: float
    attempt: int

    def note(self, cause: str = "an OS error") -> str:
        """What the index adds to the failure's reason."""
        return f"({cause}: the poller tries again in {self.delay_s:.3g} s, attempt {self.attempt})"


class LoadRetries:
    """When each model that failed on an OS error is to be loaded again."""

    def __init__(self, first_s: float, max_s: float = RETRY_MAX_S) -> None:
        self._first_s = first_s
        self._max_s = max(max_s, first_s)
        self._due: dict[str, float] = {}  # model -> when to try again
        self._attempts: dict[str, int] = {}  # model -> tries so far, since its last success

    def failed(self, name: str, now: float) -> Retry:
        """`name` failed on an OS error at `now`: schedule its next try."""
        attempt = self._attempts.get(name, 0) + 1
        self._attempts[name] = attempt
        delay = min(self._first_s * 2 ** min(attempt - 1, 32), self._max_s)
        self._due[name] = now + delay
        return Retry(delay, attempt + 1)

    def forget(self, name: str) -> None:
        """`name` loaded, failed for a reason a retry cannot mend, or left the repository."""
        self._due.pop(name, None)
        self._attempts.pop(name, None)

    def hurry(self, names: set[str]) -> None:
        """Try these again at the next poll (room was made for them), whatever their wait."""
        for name in names & self._due.keys():
            self._due[name] = float("-inf")

    def due(self, now: float) -> set[str]:
        """The models whose time has come; each is handed out once per failure."""
        ready = {name for name, at in self._due.items() if at <= now}
        for name in ready:
            del self._due[name]
        return ready

    def failures(self, name: str) -> int:
        """How many loads of `name` in a row the OS failed."""
        return self._attempts.get(name, 0)
