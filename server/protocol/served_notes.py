"""What a failed request's exception carries for whoever catches it: the version that served it
(its failure line names it) and the statistics its outcome was counted in (a stream whose answer is
never written counts it unsent there). Set where the outcome is counted (request_path.py,
load_wait.py), read where the failure is caught (stream.py).
"""

from __future__ import annotations

import contextlib

from batcher.stats import ModelStats
from server.observability.logs import SERVED_VERSION

_COUNTED_IN = "counted_in"  # set on an exception by `note_served`: the ModelStats it was counted in


def note_served(exc: BaseException, version: str, stats: ModelStats) -> None:
    """Note on a failure which version served the request (its log line names it) and the
    statistics it was counted in (a stream whose answer is never written counts it unsent there)."""
    with contextlib.suppress(AttributeError):  # an exception type without a __dict__
        setattr(exc, SERVED_VERSION, version)
        setattr(exc, _COUNTED_IN, stats)


def counted_in(exc: BaseException) -> ModelStats | None:
    """The statistics a failure was counted in, as noted by `note_served` (None: in none). Read it
    where the failure is caught, before any await: one exception may fail every request of a run."""
    stats = getattr(exc, _COUNTED_IN, None)
    return stats if isinstance(stats, ModelStats) else None
