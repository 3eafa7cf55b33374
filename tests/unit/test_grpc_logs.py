"""The filter drops only grpc.aio's unsent-answer errors, and counts them."""

from __future__ import annotations

import logging
import sys

from server.protocol.grpc_logs import GRPC_AIO_LOGGER, UnsentAnswerFilter, quiet_unsent_answers


class ExecuteBatchError(Exception):  # same name as grpc's Cython class, which cannot be imported
    pass


def _record(exc: BaseException | None) -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord(GRPC_AIO_LOGGER, logging.ERROR, __file__, 1, "boom", None, exc_info)


def test_drops_unsent_answers_and_keeps_other_errors() -> None:
    unsent = UnsentAnswerFilter()
    assert unsent.filter(_record(ExecuteBatchError("Failed execute_batch"))) is False
    assert unsent.filter(_record(RuntimeError("a real problem"))) is True
    assert unsent.filter(_record(None)) is True
    assert unsent.dropped == 1


def test_installed_on_grpc_aio_logger_only() -> None:
    logger = logging.getLogger(GRPC_AIO_LOGGER)
    unsent = quiet_unsent_answers()
    try:
        assert unsent in logger.filters
        assert unsent not in logging.getLogger().filters
    finally:
        logger.removeFilter(unsent)
