"""A call made every so often on a daemon thread of its own, until closed: the workers' book checked
for regions unregistered elsewhere (protocol/booked_mappings.py), a model instance's shared segments
trimmed while no batch runs (backends/segment_pool.py). A failed call is logged and the next one
made: the thread must not end (out of descriptors, an unlink refused)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """`call()` every `every_s` seconds from now on; `what` names it in the log."""

    def __init__(self, call: Callable[[], None], every_s: float, what: str) -> None:
        self._call = call
        self._every_s = every_s
        self._what = what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=what, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._call()
            except Exception as err:
                log.warning("%s failed, tried again in %.1f s: %s", self._what, self._every_s, err)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout_s: float = 5.0) -> None:
        """No call after this returns (unless one outlasts `timeout_s`); from the thread itself, none
        after the current one."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)
