"""The client under a careless application's use, no server: message-size errors, UNAVAILABLE
answers and endpoint health, metadata, repository changes on a client of several endpoints."""

from __future__ import annotations

import random

import grpc
import pytest

from clients import Backoff, Client, MessageTooLarge, Overloaded, RetryPolicy, SluicewayError, Unavailable
from clients.endpoints import Attempts, ChannelOptions, EndpointPool
from clients.errors import InternalError, from_rpc_error, from_stream_message
from clients.stream_results import write_failure
from tests.support.client_fakes import FakeClock, FakeRpcError

CODE = grpc.StatusCode


def attempts_over(addresses: list[str]) -> tuple[Attempts, EndpointPool, FakeClock]:
    clock = FakeClock()
    pool = EndpointPool(addresses, recheck=Backoff(1.0, 8.0, jitter=0.0), clock=clock, rng=random.Random(0))
    policy = RetryPolicy(max_attempts=5, backoff=Backoff(0.05, 0.05, jitter=0.0))
    return Attempts(pool, policy, 10.0, clock=clock, rng=random.Random(0)), pool, clock


@pytest.mark.parametrize(
    "details",
    ["CLIENT: Received message larger than max (9 vs. 8)", "Sent message larger than max (9 vs. 8)"],
)
def test_a_message_over_a_size_limit_is_never_retried(details: str) -> None:
    """It was Overloaded and retried: one call ran the model six times, then failed anyway."""
    error = from_rpc_error(FakeRpcError(CODE.RESOURCE_EXHAUSTED, details))
    assert isinstance(error, MessageTooLarge) and not isinstance(error, Overloaded)
    attempts, pool, _ = attempts_over(["a", "b"])
    with pytest.raises(MessageTooLarge):
        attempts.failed(attempts.next(), FakeRpcError(CODE.RESOURCE_EXHAUSTED, details))
    assert pool.health() == {"a": True, "b": True}
    full = from_rpc_error(FakeRpcError(CODE.RESOURCE_EXHAUSTED, "queue is full"))
    assert type(full) is Overloaded  # a full queue is still retried


def test_tritons_unavailable_for_a_full_queue_is_overloaded_and_the_endpoint_kept() -> None:
    """A queue at its config's max_queue_size is UNAVAILABLE "Exceeds maximum queue size" (Triton's
    answer): retried with backoff as Overloaded, and the endpoint, which is well, not re-checked."""
    said = "Exceeds maximum queue size (2 requests waiting; max_queue_size=2)"
    full = from_rpc_error(FakeRpcError(CODE.UNAVAILABLE, said))
    assert type(full) is Overloaded and full.code == CODE.UNAVAILABLE and full.message == said
    framed = from_stream_message(f"UNAVAILABLE: in ensemble 'e', {said}; step 1 (model 'm')")
    assert type(framed) is Overloaded
    attempts, pool, _ = attempts_over(["a", "b"])
    step = attempts.next()
    assert attempts.failed(step, FakeRpcError(CODE.UNAVAILABLE, said)) == 0.0  # the other one, at once
    assert pool.health() == {"a": True, "b": True}
    assert type(from_rpc_error(FakeRpcError(CODE.UNAVAILABLE, "model 'x' is not ready"))) is Unavailable


def test_an_unavailable_answer_has_the_endpoint_checked_at_once_not_shunned() -> None:
    """A model not ready on one endpoint marked the whole endpoint down for the re-check backoff:
    every other model it served got no traffic there (200 of 200 calls went elsewhere)."""
    attempts, pool, _ = attempts_over(["a", "b"])
    step = attempts.next()
    assert step.address == "a"
    attempts.failed(step, FakeRpcError(CODE.UNAVAILABLE, "model 'x' is not ready"))
    assert pool.health()["a"] is False
    choices = [pool.choose() for _ in range(2)]  # no time has passed
    assert ("a", True) in [(c.address, c.probe) for c in choices]  # health-checked now, not in 1 s
    pool.mark_up("a")  # its check passed: the endpoint serves again
    assert {pool.choose().address for _ in range(4)} == {"a", "b"}


def test_metadata_is_checked_when_the_client_is_made() -> None:
    """Each of these failed every call, as INTERNAL "Invalid metadata" or a bare TypeError."""
    for bad in ([("X-Tenant", "a")], [("tenant", "é")], [("trace-bin", "text")], [("grpc-x", "1")]):
        with pytest.raises(ValueError, match="metadata"):
            Client("127.0.0.1:1", metadata=bad)
    Client("127.0.0.1:1", metadata=[("x-tenant", "a"), ("trace-bin", b"\x00\x01")]).close()


def test_a_repository_change_goes_to_one_named_endpoint() -> None:
    """A refusal on one endpoint was retried on the next, which then did it."""
    with Client(["127.0.0.1:1", "127.0.0.1:2"]) as client:
        with pytest.raises(ValueError, match="endpoint= one of"):
            client.load_model("m")
        with pytest.raises(ValueError, match="not one of this client's"):
            client.unload_model("m", endpoint="127.0.0.1:3")
    assert Client("127.0.0.1:1").endpoint_for(None, "load_model") == "127.0.0.1:1"


def test_reconnects_are_not_left_to_grpcs_two_minute_backoff() -> None:
    options = dict(ChannelOptions().as_grpc())
    assert options["grpc.max_reconnect_backoff_ms"] == 2_000
    assert options["grpc.use_local_subchannel_pool"] == 1


class CutByTheWatchdog(FakeRpcError):
    """UNAVAILABLE with the server's ErrorInfo RUN_TIMED_OUT, as the server sends it."""

    def __init__(self) -> None:
        super().__init__(CODE.UNAVAILABLE, "the model instance did not finish the batch in time")

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        from server.protocol.rich_status import RUN_TIMED_OUT, error_info_trailer

        return error_info_trailer(CODE.UNAVAILABLE, self.details(), RUN_TIMED_OUT)


def test_a_run_the_watchdog_cut_is_neither_retried_nor_held_against_the_endpoint() -> None:
    assert from_rpc_error(CutByTheWatchdog()).reason == "RUN_TIMED_OUT"
    assert from_rpc_error(FakeRpcError(CODE.UNAVAILABLE, "model not ready")).reason is None
    attempts, pool, _ = attempts_over(["a", "b"])
    with pytest.raises(SluicewayError, match="did not finish"):
        attempts.failed(attempts.next(), CutByTheWatchdog())
    assert pool.health() == {"a": True, "b": True}


class RetiredWhileQueued(FakeRpcError):
    """A sequence's request its retired model version did not run, as the server answers it."""

    def __init__(self) -> None:
        super().__init__(CODE.UNAVAILABLE, "sequence 7 of model 'm' ended while this request waited")

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        from server.protocol.rich_status import SEQUENCE_RETIRED, error_info_trailer

        return error_info_trailer(CODE.UNAVAILABLE, self.details(), SEQUENCE_RETIRED)


def test_a_sequence_request_a_retired_version_did_not_run_is_not_retried() -> None:
    """Sent again it reaches the version serving now, where its sequence is not live: refused
    INVALID_ARGUMENT "must specify the START flag", the UNAVAILABLE that said why lost."""
    attempts, pool, _ = attempts_over(["a", "b"])
    with pytest.raises(SluicewayError, match="ended while this request waited") as info:
        attempts.failed(attempts.next(), RetiredWhileQueued())
    assert info.value.reason == "SEQUENCE_RETIRED"
    assert pool.health() == {"a": True, "b": True}


def test_a_stream_write_grpc_core_failed_is_unavailable_not_internal() -> None:
    """A frozen server's stream: after ~20 s grpc core failed the blocked write INTERNAL "Internal
    error from Core", a failure of the client's own connection, raised as if the server had failed."""
    core = write_failure(FakeRpcError(CODE.INTERNAL, "Internal error from Core"), "f-1")
    assert type(core) is Unavailable and "'f-1'" in core.message
    server = write_failure(FakeRpcError(CODE.INTERNAL, "the model failed"), "f-2")
    assert type(server) is InternalError  # a server's own INTERNAL stays what it is
