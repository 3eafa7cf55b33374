"""A failure's google.rpc.ErrorInfo reason comes from its exception class (`error_reason`), not from
a list of classes in `status_of`: RUN_TIMED_OUT and OUTGROWS_MEMORY_BUDGET had been two isinstance
checks there, so a new never-retry reason needed an edit of the answer code as well."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from batcher.errors import Overloaded, RunTimedOut
from batcher.sequence_types import SequenceRetired
from clients.errors import NOT_RETRIED
from server.errors import ModelNotReady, OutgrowsMemoryBudget
from server.protocol.answers import status_of
from server.protocol.rich_status import DETAILS_KEY, ERROR_DOMAIN, error_info_trailer


class ComesBackTheSame(ModelNotReady):
    """A refusal of a kind status_of has never heard of, whose class names its reason."""

    error_reason = "COMES_BACK_THE_SAME"


def error_info(trailer: tuple[tuple[str, bytes], ...] | None) -> tuple[int, str, error_details_pb2.ErrorInfo]:
    assert trailer is not None and len(trailer) == 1 and trailer[0][0] == DETAILS_KEY
    status = status_pb2.Status.FromString(trailer[0][1])
    assert len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return status.code, status.message, info


def test_an_exception_class_naming_a_reason_gets_its_error_info() -> None:
    status = status_of(ComesBackTheSame("model 'm' is not ready"))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    code, message, info = error_info(status.trailer)
    assert (code, message) == (grpc.StatusCode.UNAVAILABLE.value[0], status.message)
    assert (info.reason, info.domain) == ("COMES_BACK_THE_SAME", ERROR_DOMAIN)


def test_the_two_reasons_go_on_the_wire_as_before() -> None:
    known = ((RunTimedOut(), "RUN_TIMED_OUT"), (OutgrowsMemoryBudget("too big"), "OUTGROWS_MEMORY_BUDGET"))
    for exc, reason in known:
        status = status_of(exc)
        assert status.trailer == error_info_trailer(status.code, status.message, reason)


def test_a_retry_hint_still_wins_and_an_exception_without_a_reason_has_no_trailer() -> None:
    hinted = status_of(Overloaded("busy", retry_after_s=0.5))
    assert hinted.trailer is not None and b"RetryInfo" in hinted.trailer[0][1]
    assert status_of(ModelNotReady("model 'm' is not ready")).trailer is None


def test_a_sequence_request_its_retired_version_did_not_run_says_not_to_send_it_again() -> None:
    """UNAVAILABLE (the client did nothing wrong), with ErrorInfo SEQUENCE_RETIRED: the same
    continuation is refused as not live anywhere, so our client raises it at once."""
    status = status_of(SequenceRetired("sequence 7 of model 'm' ended while this request waited"))
    assert status.code == grpc.StatusCode.UNAVAILABLE
    _, _, info = error_info(status.trailer)
    assert info.reason == "SEQUENCE_RETIRED" and info.reason in NOT_RETRIED
