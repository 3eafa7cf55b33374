"""Poll mode's retries of loads the OS failed (server/models/load_retry.py): which failures are the
OS's, and when each model is tried again."""

from __future__ import annotations

import errno

import pytest

from server.models.config import ConfigError
from server.models.load_retry import LoadRetries, os_failure


def wrapped(error: BaseException) -> ConfigError:
    """As load_config_file wraps it: `raise ConfigError(...) from None`, the cause kept as context."""
    try:
        try:
            raise error
        except OSError as err:
            raise ConfigError(f"config.pbtxt: cannot read: {err}") from None
    except ConfigError as exc:
        return exc


@pytest.mark.parametrize(
    ("failure", "by_the_os"),
    [
        (wrapped(OSError(errno.EMFILE, "Too many open files")), True),
        (wrapped(PermissionError(errno.EACCES, "Permission denied")), True),
        (MemoryError(), True),
        (RuntimeError("can't start new thread"), True),
        (RuntimeError("[ONNXRuntimeError] : 1 : FAIL : open file: Too many open files"), True),
        (ConfigError("config.pbtxt: max_batch_size must be >= 0"), False),
        (ValueError("not a readable ONNX model"), False),
    ],
)
def test_failures_of_the_os_are_told_from_those_of_the_files(failure: BaseException, by_the_os: bool) -> None:
    assert os_failure(failure) is by_the_os


def test_retries_wait_twice_as_long_each_time_up_to_the_bound() -> None:
    retries = LoadRetries(first_s=0.5, max_s=3.0)
    delays = [retries.failed("m", now=0.0).delay_s for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retries.failures("m") == 5


def test_a_model_is_handed_out_once_when_due_and_forgotten_on_success() -> None:
    retries = LoadRetries(first_s=1.0)
    retry = retries.failed("m", now=10.0)
    assert (retry.delay_s, retry.attempt) == (1.0, 2) and "tries again in 1 s, attempt 2" in retry.note()
    assert retries.due(10.5) == set()
    assert retries.due(11.0) == {"m"}
    assert retries.due(20.0) == set()  # handed out once; a new failure schedules it again
    retries.forget("m")
    assert retries.failures("m") == 0 and retries.failed("m", now=30.0).delay_s == 1.0
