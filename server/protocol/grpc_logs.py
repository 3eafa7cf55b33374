"""Quiets one grpc.aio log line that is expected under load, without hiding other gRPC errors.

When a caller's deadline passes (or it hangs up) while its request is being computed, grpc.aio
fails to send the answer and logs ERROR "ExecuteBatchError" with a traceback for every such call.
Under overload that is thousands of tracebacks a second: CPU the server needs, and noise that
hides real errors. The caller already got DEADLINE_EXCEEDED or CANCELLED from gRPC itself.
"""

from __future__ import annotations

import logging

GRPC_AIO_LOGGER = "grpc._cython.cygrpc"


class UnsentAnswerFilter(logging.Filter):
    """Drops grpc.aio's ExecuteBatchError records (answers to callers already gone) and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ExecuteBatchError":
            self.dropped += 1
            return False
        return True


def quiet_unsent_answers() -> UnsentAnswerFilter:
    """Install the filter on grpc.aio's logger; returns it (remove with `logger.removeFilter`)."""
    unsent = UnsentAnswerFilter()
    logging.getLogger(GRPC_AIO_LOGGER).addFilter(unsent)
    return unsent
