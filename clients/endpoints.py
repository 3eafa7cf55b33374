"""Endpoint health, selection and the retry policy: pure bookkeeping over a clock and a random source.

Nothing here does I/O. The sync and asyncio clients drive an `Attempts` object: it says which
endpoint to use next (and whether to health-check it first), how long the attempt may take, and
after a failure whether to retry and after how long. Tests drive the same objects with a fake
clock and a seeded `random.Random`.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import grpc

from clients.errors import (
    NOT_RETRIED,
    DeadlineExceeded,
    MessageTooLarge,
    Overloaded,
    SluicewayError,
    from_rpc_error,
)

Clock = Callable[[], float]

# Worth another try, maybe elsewhere: the endpoint is down/draining, or its queue is full.
# CANCELLED is here because the clients never cancel a call themselves (an awaiting task that is
# cancelled raises asyncio.CancelledError instead): it is the server abandoning the call, as a
# gRPC server does to calls that race with its shutdown.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
)
# Say the endpoint (not the request) is in trouble: stop choosing it until a health check passes.
ENDPOINT_DOWN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays with jitter: attempt k waits in [(1 - jitter) * d, d], d = initial * m**k."""

    initial_s: float
    max_s: float
    multiplier: float = 2.0
    jitter: float = 0.5  # fraction of each delay drawn at random, so callers do not retry in step

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * rng.random())


RETRY_BACKOFF = Backoff(initial_s=0.05, max_s=2.0)
RECHECK_BACKOFF = Backoff(initial_s=0.5, max_s=10.0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed call is tried again. Never past the call's deadline, never for request errors."""

    max_attempts: int = 5
    backoff: Backoff = RETRY_BACKOFF
    # An attempt with less time than this left is not worth starting: the last error is raised.
    min_attempt_s: float = 0.001
    # Health checks of endpoints that failed earlier get at most this long (and never past the call).
    probe_timeout_s: float = 1.0
    # Longest one attempt may take; None: all the call has left. A server that hangs with its
    # connection open (frozen, or cut off by the network) refuses nothing, so without it every call
    # sent there waits out its whole deadline. An attempt cut short by it counts as its endpoint
    # failing: marked down, retried elsewhere. Set it above the slowest normal answer, which is
    # cut and retried too.
    attempt_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.attempt_timeout_s is not None and not 0 < self.attempt_timeout_s < float("inf"):
            raise ValueError(f"attempt_timeout_s must be positive and finite, got {self.attempt_timeout_s}")

    def delay(
        self,
        code: grpc.StatusCode,
        attempt: int,
        remaining_s: float,
        rng: random.Random,
        retry_after_s: float | None = None,
    ) -> float | None:
        """Seconds to wait before retrying after failed attempt number `attempt` (0-based); None: give up.

        `retry_after_s`: the server's RetryInfo hint for the endpoint that refused; the wait is at
        least that. When it leaves too little of the deadline, give up now: the caller gets the
        overload answer at once instead of a late DEADLINE_EXCEEDED. (A retry on an endpoint the
        call has not tried yet does not wait: see Attempts.failed.)"""
        if code not in RETRYABLE or attempt + 1 >= self.max_attempts:
            return None
        wait = self.backoff.delay(attempt, rng)
        if retry_after_s is not None:
            wait = max(wait, retry_after_s)
        if remaining_s - wait < self.min_attempt_s:
            return None
        return wait


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(slots=True)
class _Endpoint:
    address: str
    healthy: bool = True  # optimistic until a call or a health check fails
    failures: int = 0  # consecutive failures, for the re-check backoff
    recheck_at: float = 0.0  # a down endpoint may be health-checked again from then on


@dataclass(frozen=True, slots=True)
class Choice:
    address: str
    probe: bool  # health-check it (grpc.health.v1, service "") before sending the call


class EndpointPool:
    """Round-robin over healthy primaries; a fallback only while every primary is down.

    Health is cached: an endpoint stays healthy until a call to it fails with UNAVAILABLE (or a
    health check fails); a down endpoint is health-checked again after a jittered, growing delay,
    by the next call that would use it. Thread-safe; the lock is never held across I/O.
    """

    def __init__(
        self,
        primaries: Sequence[str],
        fallback: str | None = None,
        *,
        recheck: Backoff = RECHECK_BACKOFF,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not primaries:
            raise ValueError("at least one endpoint is needed")
        addresses = [*primaries, *([fallback] if fallback else [])]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"endpoints must be distinct, got {addresses}")
        self._primaries = [_Endpoint(a) for a in primaries]
        self._fallback = _Endpoint(fallback) if fallback else None
        self._by_address = {e.address: e for e in self._all()}
        self._recheck = recheck
        self._clock = clock
        self._rng = rng or random.Random()
        self._cursor = 0
        self._lock = threading.Lock()

    @property
    def addresses(self) -> list[str]:
        """Primaries in order, then the fallback."""
        return [e.address for e in self._all()]

    def health(self) -> dict[str, bool]:
        """The cached view: address -> whether it is considered healthy now."""
        with self._lock:
            return {e.address: e.healthy for e in self._all()}

    def choose(self, avoid: Collection[str] = ()) -> Choice:
        """The next endpoint. `avoid`: addresses the call tried already; a healthy endpoint not
        among them comes first (see untried), else the usual choice, which may be one of them."""
        now = self._clock()
        with self._lock:
            fresh = self._untried(avoid) if avoid else None
            if fresh is not None:
                if fresh in self._primaries:
                    self._cursor = (self._primaries.index(fresh) + 1) % len(self._primaries)
                return Choice(fresh.address, probe=False)
            count = len(self._primaries)
            for step in range(count):
                endpoint = self._primaries[(self._cursor + step) % count]
                if endpoint.healthy or endpoint.recheck_at <= now:
                    self._cursor = (self._cursor + step + 1) % count
                    return self._choice(endpoint, now)
            fallback = self._fallback
            if fallback is not None and (fallback.healthy or fallback.recheck_at <= now):
                return self._choice(fallback, now)
            # All down and none due for a check: trying the one due first beats failing untried.
            return Choice(min(self._all(), key=lambda e: e.recheck_at).address, probe=False)

    def untried(self, avoid: Collection[str]) -> str | None:
        """The healthy endpoint a call that tried `avoid` goes to next, or None: a healthy primary
        (round-robin), else the fallback while no primary is healthy."""
        with self._lock:
            endpoint = self._untried(avoid)
            return None if endpoint is None else endpoint.address

    def _untried(self, avoid: Collection[str]) -> _Endpoint | None:
        count = len(self._primaries)
        for step in range(count):
            endpoint = self._primaries[(self._cursor + step) % count]
            if endpoint.healthy and endpoint.address not in avoid:
                return endpoint
        fallback = self._fallback
        if fallback is None or not fallback.healthy or fallback.address in avoid:
            return None
        return None if any(e.healthy for e in self._primaries) else fallback

    def mark_up(self, address: str) -> None:
        with self._lock:
            endpoint = self._by_address[address]
            endpoint.healthy, endpoint.failures = True, 0

    def mark_suspect(self, address: str) -> None:
        """An endpoint answered UNAVAILABLE: health-check it before its next use, at once. It may
        be down or draining, or only the model may not be ready there (or a load refused): marking
        it down outright starved every other model it served (200 of 200 calls went elsewhere)."""
        with self._lock:
            endpoint = self._by_address[address]
            endpoint.healthy, endpoint.recheck_at = False, self._clock()

    def mark_down(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            endpoint = self._by_address[address]
            endpoint.healthy = False
            endpoint.recheck_at = now + self._recheck.delay(endpoint.failures, self._rng)
            endpoint.failures += 1

    def _choice(self, endpoint: _Endpoint, now: float) -> Choice:
        if endpoint.healthy:
            return Choice(endpoint.address, probe=False)
        # Claim the check: concurrent callers skip this endpoint until its result is in.
        endpoint.recheck_at = now + self._recheck.delay(endpoint.failures, self._rng)
        return Choice(endpoint.address, probe=True)

    def _all(self) -> list[_Endpoint]:
        return [*self._primaries, *([self._fallback] if self._fallback else [])]


@dataclass(frozen=True, slots=True)
class Step:
    address: str
    probe: bool
    timeout_s: float  # this attempt's gRPC deadline: the call's time left, or attempt_timeout_s
    left_s: float  # time left before the call's deadline


class Attempts:
    """One call's attempts within its overall deadline. The client does the I/O and reports back."""

    def __init__(
        self, pool: EndpointPool, policy: RetryPolicy, timeout_s: float, *, clock: Clock, rng: random.Random
    ) -> None:
        self._pool = pool
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._deadline = clock() + timeout_s
        self._attempt = 0
        self._last: SluicewayError | None = None
        # Endpoints failed since the last backoff: a retry goes to one not among them at once.
        self._tried: set[str] = set()

    def next(self) -> Step:
        """Where and how long to try next; raises the last error once the deadline has passed."""
        left = self._deadline - self._clock()
        if left <= 0:
            raise self._last or DeadlineExceeded("the call's deadline passed before it could be sent")
        choice = self._pool.choose(avoid=self._tried)
        limit = self._policy.attempt_timeout_s
        return Step(choice.address, choice.probe, left if limit is None else min(limit, left), left)

    def probe_timeout(self, step: Step) -> float:
        return min(self._policy.probe_timeout_s, step.timeout_s)

    def probed(self, step: Step, healthy: bool) -> None:
        (self._pool.mark_up if healthy else self._pool.mark_down)(step.address)

    def succeeded(self, step: Step) -> None:
        self._pool.mark_up(step.address)

    def failed(self, step: Step, exc: BaseException) -> float:
        """Seconds to wait before the next attempt; raises the mapped error when not retrying."""
        error = exc if isinstance(exc, SluicewayError) else from_rpc_error(exc)
        if isinstance(error, MessageTooLarge) or error.reason in NOT_RETRIED:
            raise error  # the same message fails again, anywhere; or it may hang another instance
        # Cut short by attempt_timeout_s, with time left: the endpoint hangs; try another one.
        hung = error.code == grpc.StatusCode.DEADLINE_EXCEEDED and step.timeout_s < step.left_s
        if hung:
            self._pool.mark_down(step.address)
        elif error.code in ENDPOINT_DOWN and not isinstance(error, Overloaded):  # a full queue is well
            self._pool.mark_suspect(step.address)  # its health check decides (next use)
        # Another endpoint not tried yet: go there at once. A refused connection had waited the
        # backoff (25-50 ms) first, and a 50 ms call then gave up without trying the live one.
        self._tried.add(step.address)
        code = grpc.StatusCode.UNAVAILABLE if hung else error.code
        left = self._deadline - self._clock()
        if self._pool.untried(self._tried) is not None:
            # Whether to retry at all is still the policy's (code, attempts; a subclass may count
            # it), asked with no deadline since there is no wait: any time left will do.
            granted = self._policy.delay(code, self._attempt, math.inf, self._rng) is not None
            delay = 0.0 if granted and left >= self._policy.min_attempt_s else None
        else:
            # The hint is about the endpoint that refused: with another one up, retry there instead.
            others_up = any(up for address, up in self._pool.health().items() if address != step.address)
            hint = None if others_up else error.retry_after_s
            delay = self._policy.delay(code, self._attempt, left, self._rng, hint)
            self._tried.clear()  # every endpoint had its try: a new round after the backoff
        if delay is None:
            raise error
        self._attempt += 1
        self._last = error
        return delay


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """gRPC channel arguments, set explicitly rather than left to library defaults."""

    max_message_bytes: int = 64 * 1024 * 1024
    # Pings find dead connections (a NAT or load balancer dropping them) between calls. 60 s with
    # no pings on idle connections stays within gRPC servers' default ping policy (5 min minimum
    # without calls; more draws a GOAWAY "too_many_pings").
    keepalive_time_ms: int = 60_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    # "round_robin": each endpoint's channel spreads calls over every address its target resolves
    # to, e.g. a Kubernetes headless Service ("dns:///sluiceway-headless.ns.svc.cluster.local:8001"),
    # and stops using one whose connection fails. "": gRPC's default, one address per channel.
    load_balancing: str = ""
    # gRPC's reconnect backoff grows to 120 s by default: a server back after a 45 s outage got
    # traffic again only 33 s later, whatever the client's own re-checks said.
    max_reconnect_backoff_ms: int = 2_000

    def as_grpc(self) -> list[tuple[str, int | str]]:
        balancing: list[tuple[str, int | str]] = (
            [("grpc.lb_policy_name", self.load_balancing)] if self.load_balancing else []
        )
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            # grpc core waits this long for a keepalive ping's ack (keepalive_timeout_ms alone
            # did nothing: a dead server's stream hung 60 s, this argument's default).
            ("grpc.http2.ping_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
            ("grpc.initial_reconnect_backoff_ms", min(1_000, self.max_reconnect_backoff_ms)),
            ("grpc.max_reconnect_backoff_ms", self.max_reconnect_backoff_ms),
            # This client's own connections: a new client for a server that came back found the
            # process-wide pool's failed connection ("Connection refused") for a while.
            ("grpc.use_local_subchannel_pool", 1),
            *balancing,
        ]
