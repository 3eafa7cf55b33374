"""The calls in progress: counted so a drain can wait for them, and streams capped so no client
can take every RPC slot (in all, per connection and per peer host).

grpc.aio's own `stop(grace)` cancels handlers still running (CANCELLED to their callers), so the
server waits here for its calls to answer before it stops the gRPC endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import NamedTuple, Protocol

from server.errors import StreamLimitReached
from server.protocol.core_calls import CoreCounts

# A refused stream is answered once its caller has sent nothing for this long (at most the max),
# or at once after a message that came a pause after the one before (a paced writer): at least
# REFUSAL_PACED_GAP_S more than its own transfer would take at REFUSAL_SLOW_BYTES_PER_S, twice over.
REFUSAL_QUIET_S = 0.05
REFUSAL_PACED_GAP_S = 0.01
REFUSAL_SLOW_BYTES_PER_S = 50e6
REFUSAL_MAX_S = 1.0
# How often a drain's quiet wait looks at grpc core's call counts (core_calls.py).
CORE_LOOK_S = 0.02


async def read_until_quiet(
    requests: AsyncIterator[object], quiet_s: float = REFUSAL_QUIET_S, max_s: float = REFUSAL_MAX_S
) -> None:
    """Read (and drop) a refused stream's messages until it half-closes or goes quiet briefly.

    grpc/grpc#36066: a grpc.aio client whose write races with a stream's early status sees
    "INTERNAL: Internal error from Core" instead of that status; answering once its burst of
    writes has landed avoids the race. A paced writer (a camera at 20 fps) is answered right after
    one of its messages, a period before its next write: waiting for it to go quiet for 50 ms had
    ended the call just as its next frame went out (a load test's refused streams read INTERNAL).
    A pause is a gap well past the message's own transfer time: a burst of 1 MB messages on a busy
    machine arrived 10 ms apart and, taken for a paced writer, read INTERNAL in 13 of 60 tries.
    Bounded, so a silent or never-pausing caller cannot hold the call.
    """
    deadline = time.monotonic() + max_s
    iterator = aiter(requests)
    last_read: float | None = None  # the first message may open a burst: no gap to judge
    with contextlib.suppress(Exception):  # a timeout, the end of the stream, a broken call
        while (left := deadline - time.monotonic()) > 0:
            message = await asyncio.wait_for(anext(iterator), min(quiet_s, left))
            now = time.monotonic()
            if last_read is not None and now - last_read >= paused_after(message):
                return
            last_read = now


def paused_after(message: object) -> float:
    """The gap before `message` that says its writer paused rather than sent it in a burst."""
    size = len(message) if isinstance(message, bytes | bytearray) else 0
    byte_size = getattr(message, "ByteSize", None)
    if callable(byte_size):
        size = int(byte_size())
    return REFUSAL_PACED_GAP_S + 2 * size / REFUSAL_SLOW_BYTES_PER_S


class QuietRefusals:
    """`read_until_quiet` for refused streams, at most `limit` at once. Each holds grpc core's call
    (and, refused by a stream cap, one of the server's `max_concurrent_rpcs` slots) for up to
    REFUSAL_MAX_S: a client that kept writing on streams refused for want of a token
    or past the stream caps took every slot, and health checks and unary calls were refused
    (RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!", 35 of 43 ServerLive calls). Past the
    bound a refusal is answered at once (its client may then see grpc/grpc#36066's INTERNAL)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lingering = 0

    async def read_until_quiet(self, requests: AsyncIterator[object]) -> None:
        if self.lingering >= self.limit:
            return
        self.lingering += 1
        try:
            await read_until_quiet(requests)
        finally:
            self.lingering -= 1


def refusal_room(max_concurrent_rpcs: int, max_streams: int) -> int:
    """Refused streams that may linger: half the slots the open streams can never take (at least
    1), so unary calls and health checks keep the other half."""
    return max(1, (max_concurrent_rpcs - max_streams) // 2)


class StreamLimits(NamedTuple):
    total: int
    per_connection: int
    per_peer: int


class Finishable(Protocol):
    def finish(self, why: str = ...) -> None: ...


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5000' -> 'ipv4:127.0.0.1'; 'ipv6:[::1]:5000' -> 'ipv6:[::1]'; else as is."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, sep, port = peer.rpartition(":")
        if sep and port.isdigit():
            return host
    return peer


# /metrics: streams refused by which cap (before: counted nowhere, only the caller told).
STREAMS_REFUSED = "sluiceway_streams_refused_total"
METRICS = {
    STREAMS_REFUSED: (
        "counter",
        "ModelStreamInfer, health Watch and reflection streams refused RESOURCE_EXHAUSTED at a stream "
        "cap: limit max_streams, max_streams_per_connection or max_streams_per_peer",
    ),
}


class CallTracker:
    def __init__(self, limits: StreamLimits) -> None:
        self._limits = limits
        self.refused: Counter[str] = Counter()  # streams refused, by the setting that refused them
        self._active = 0
        self._last_arrival = 0.0
        self._idle = asyncio.Event()
        self._idle.set()
        self._sessions: set[Finishable] = set()
        self._by_connection: Counter[str] = Counter()
        self._by_peer: Counter[str] = Counter()
        self._stalled = 0  # side streams left to a client that stopped reading (side_streams.py)

    @property
    def active(self) -> int:
        return self._active

    @property
    def open_streams(self) -> int:
        return len(self._sessions)

    def enter(self) -> None:
        """One call begins (a unary handler, or a whole stream); pair with `exit` in a finally.
        Plain methods, not a context manager: this runs once per request."""
        self._active += 1
        self._last_arrival = time.monotonic()
        self._idle.clear()

    def exit(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    @contextlib.contextmanager
    def stream(self, peer: str, session: Finishable) -> Iterator[None]:
        """Register an open stream, or raise StreamLimitReached naming the limit it would pass."""
        host = peer_host(peer)
        limits = self._limits
        if len(self._sessions) >= limits.total:
            self.refused["max_streams"] += 1
            raise StreamLimitReached(f"too many open streams on this server (max_streams={limits.total})")
        if self._by_connection[peer] >= limits.per_connection:
            self.refused["max_streams_per_connection"] += 1
            raise StreamLimitReached(
                "too many open streams on this connection "
                f"(max_streams_per_connection={limits.per_connection})"
            )
        if self._by_peer[host] >= limits.per_peer:
            self.refused["max_streams_per_peer"] += 1
            raise StreamLimitReached(
                f"too many open streams from {host} (max_streams_per_peer={limits.per_peer})"
            )
        self._sessions.add(session)
        self._by_connection[peer] += 1
        self._by_peer[host] += 1
        self.enter()
        try:
            yield
        finally:
            self.exit()
            self._sessions.discard(session)
            for counter, key in ((self._by_connection, peer), (self._by_peer, host)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]

    def gauge_values(self) -> Iterator[tuple[str, Mapping[str, str], float]]:
        """The counts for /metrics (a gauge source: server/observability/metrics.py)."""
        for limit, count in self.refused.items():
            yield STREAMS_REFUSED, {"limit": limit}, float(count)

    @property
    def stalled(self) -> int:
        return self._stalled

    def note_stalled(self) -> None:
        """A health Watch or reflection stream whose client took no write for a while was left as
        it is in the drain: grpc core holds its call, which owes no answer (until `stalled_ended`)."""
        self._stalled += 1

    def stalled_ended(self) -> None:
        self._stalled = max(0, self._stalled - 1)

    def only_stalled_left(self, core: CoreCounts | None) -> bool:
        """Whether the only calls grpc core still holds are stalled side streams (no handler runs,
        and core's count says so): a stop need not wait for them."""
        return (
            self._stalled > 0 and self._active == 0 and core is not None and core.unanswered <= self._stalled
        )

    def finish_streams(self) -> None:
        """Tell every open stream to stop reading, answer what it has read, and end."""
        for session in list(self._sessions):
            session.finish("drain")

    async def wait_quiet(
        self, deadline: float, quiet_s: float, core: Callable[[], CoreCounts | None] | None = None
    ) -> bool:
        """Wait until no call is in progress and none has arrived for `quiet_s`, or `deadline`.

        A handler that has returned may still be sending its answer, and calls a client sent
        before it saw UNAVAILABLE are still arriving: grpc.aio cancels both at stop(), so the
        endpoint stays open until the callers have gone quiet. `core` (core_calls.py) adds what
        grpc core has taken: a call no handler has seen yet counts as an arrival, and the wait
        goes on while core has calls unanswered (grpc/grpc#41785 answers them CANCELLED).
        """
        seen: CoreCounts | None = None
        core_arrival = 0.0
        while await self.wait_idle(deadline):
            now = time.monotonic()
            counts = core() if core is not None else None
            if counts is not None:
                if seen is not None and counts.started != seen.started:
                    core_arrival = now  # taken by core since the last look, maybe by no handler yet
                seen = counts
            quiet_at = max(self._last_arrival, core_arrival) + quiet_s
            if now >= quiet_at and (counts is None or counts.unanswered <= self._stalled):
                return True
            if now >= deadline:
                return False
            # grpc core tells of no call it takes: its counts are looked at again every
            # CORE_LOOK_S while the drain waits (bounded by `deadline`: at most 1 s in a drain).
            wake_at = min(quiet_at if counts is None else now + CORE_LOOK_S, deadline)
            await asyncio.sleep(max(0.0, wake_at - now))
        return False

    async def wait_idle(self, deadline: float) -> bool:
        """Wait until no call is in progress or `deadline` (time.monotonic()); True if idle."""
        left = deadline - time.monotonic()
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, left))
        except asyncio.TimeoutError:
            return False
        return True
