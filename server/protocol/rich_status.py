"""gRPC's rich error model (google.rpc.Status in the `grpc-status-details-bin` trailer): an
overload refusal carries a google.rpc.RetryInfo with the server's estimate of when to retry; a run
the watchdog cut carries a google.rpc.ErrorInfo saying so (a client must not send it again)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from batcher.errors import RunTimedOut
from batcher.sequence_types import SequenceRetired
from server.errors import OutgrowsMemoryBudget

DETAILS_KEY = "grpc-status-details-bin"
# A hint shorter than this says "now": it is rounded up so clients still back off a little.
MIN_RETRY_S = 0.001


def retry_info_trailer(code: grpc.StatusCode, message: str, retry_after_s: float) -> tuple[tuple[str, bytes]]:
    """The trailing metadata of a status with a RetryInfo detail (readable by grpc_status.rpc_status)."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(max(MIN_RETRY_S, retry_after_s) * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return ((DETAILS_KEY, status.SerializeToString()),)


ERROR_DOMAIN = "sluiceway"
# The reasons are the exceptions' own `error_reason` (server/protocol/answers.py `status_of`).
# The request's run outlived the model's run timeout: it was computing, and may hang any instance
# it is sent to. Clients must not retry it (ours did, on every endpoint, killing an instance each).
RUN_TIMED_OUT = RunTimedOut.error_reason
# The model needs more than the whole memory budget: every retry is refused the same way (our
# client had retried it as an overload until its attempts ran out).
OUTGROWS_MEMORY_BUDGET = OutgrowsMemoryBudget.error_reason
# A sequence's request that its retired model version did not run: its state is gone, so the same
# request is refused anywhere; the sequence starts again.
SEQUENCE_RETIRED = SequenceRetired.error_reason


def error_info_trailer(code: grpc.StatusCode, message: str, reason: str) -> tuple[tuple[str, bytes]]:
    """The trailing metadata of a status with an ErrorInfo detail naming `reason`."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return ((DETAILS_KEY, status.SerializeToString()),)
