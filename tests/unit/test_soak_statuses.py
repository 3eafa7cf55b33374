"""The soak's error classes: a queue at its max_queue_size (UNAVAILABLE "Exceeds maximum queue
size", Triton's answer) is a load status, allowed like shedding; any other UNAVAILABLE is not."""

from __future__ import annotations

import grpc

from loadtest.soak_report import LOAD, QUEUE_FULL, WATCHDOG
from loadtest.soak_traffic import status_of

CODE = grpc.StatusCode


def test_a_full_queue_is_a_load_status_and_other_unavailables_are_not() -> None:
    said = "Exceeds maximum queue size (8 requests waiting; max_queue_size=8)"
    assert status_of(CODE.UNAVAILABLE, said, 0.0, 10.0) == QUEUE_FULL
    assert QUEUE_FULL in LOAD
    assert status_of(CODE.UNAVAILABLE, "model 'm' is not ready", 0.0, 10.0) == "UNAVAILABLE"
    assert "UNAVAILABLE" not in LOAD
    assert status_of(CODE.UNAVAILABLE, "run past run_timeout_s (2 s)", 0.0, 10.0) == WATCHDOG
