"""StreamSession without gRPC: unread answers bound what it reads, answers keep their order where
the model asks for it, and `finish()` stops reading but answers every request already read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from batcher.stats import ModelStats
from protos import grpc_service_pb2 as pb
from server.protocol import stream_sequences
from server.protocol.controls import parse_controls
from server.protocol.loop_pace import LoopPace
from server.protocol.malformed import Malformed
from server.protocol.request_path import RequestPath
from server.protocol.stream import StreamSession
from server.protocol.stream_sequences import SeenSequences

# Enough loop turns for an unbounded reader to read far past any bound below.
SETTLE_TURNS = 200


def job_of(request: pb.ModelInferRequest) -> Any:
    """A fake InferJob: the request's id, and a served version counting in no statistics."""
    return SimpleNamespace(id=request.id, served=SimpleNamespace(stats=None))


class InstantPath:
    """Answers every request at once (as a cache hit or the fast path would)."""

    def model_of(self, request: pb.ModelInferRequest) -> None:
        return None  # no model: no latest-frame-wins, no order (server/protocol/latest_frame.py)

    def needs_load(self, request: pb.ModelInferRequest) -> bool:
        return False  # no lazy model (server/models/lazy.py)

    def evictable(self, request: pb.ModelInferRequest) -> bool:
        return False

    def frame_rules(self, request: pb.ModelInferRequest) -> None:
        return None

    def start(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        named: object = None,
        owner: object = None,
    ) -> tuple[Any, pb.ModelInferResponse | None]:
        return job_of(request), pb.ModelInferResponse(id=request.id)


class HeldPath(InstantPath):
    """Answers only once `release` is set (requests in flight in a batcher)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def start(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        named: object = None,
        owner: object = None,
    ) -> tuple[Any, pb.ModelInferResponse | None]:
        return job_of(request), None

    async def finish(
        self, job: Any, start_ns: int, turn: object = None, before: object = None
    ) -> pb.ModelInferResponse:
        await self.release.wait()
        return pb.ModelInferResponse(id=job.id)


class OrderedPath(InstantPath):
    """A preserve_ordering model: odd-numbered requests are answered at once, even-numbered ones
    wait in a batcher until `release`d, in any order."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Event] = {}
        self.model = SimpleNamespace(name="m", version=1, latest_frame_wins=False, preserve_ordering=True)

    def model_of(self, request: pb.ModelInferRequest) -> Any:
        return self.model

    def start(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        named: object = None,
        owner: object = None,
    ) -> tuple[Any, pb.ModelInferResponse | None]:
        if int(request.id) % 2:
            return job_of(request), pb.ModelInferResponse(id=request.id)
        self.waiting[request.id] = asyncio.Event()
        return job_of(request), None

    async def finish(
        self, job: Any, start_ns: int, turn: object = None, before: object = None
    ) -> pb.ModelInferResponse:
        await self.waiting[job.id].wait()
        return pb.ModelInferResponse(id=job.id)

    async def serve(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        claim: object,
        owner: object = None,
        turn: object = None,  # always None here: no lazy model
        before: object = None,  # the answer ahead: the session waits for it too
    ) -> Any:
        job, now = self.start(request, remaining_s, 0)  # started once the answer before it was made
        return job, now if now is not None else await self.finish(job, 0)


class Source:
    """A request stream that counts what was taken from it: endless, or `limit` messages and then
    silence (a caller that sends nothing more and does not close)."""

    def __init__(self, limit: int | None = None) -> None:
        self.read = 0
        self.limit = limit
        self.silence = asyncio.Event()  # never set

    async def requests(self) -> AsyncIterator[pb.ModelInferRequest | Malformed]:
        while self.limit is None or self.read < self.limit:
            self.read += 1
            yield pb.ModelInferRequest(model_name="m", id=str(self.read))
        await self.silence.wait()


async def settle() -> None:
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


def session(source: Source, path: object, max_in_flight: int) -> StreamSession:
    return StreamSession(
        source.requests(), cast(RequestPath, path), max_in_flight=max_in_flight, deadline=None
    )


async def test_a_client_that_stops_reading_answers_stops_the_reads() -> None:
    source = Source()
    answers = session(source, InstantPath(), max_in_flight=4).answers()
    first = await anext(answers)
    assert first.infer_response.id == "1"
    await settle()
    # Four answers may wait unwritten (the first is written); the reader then waits for a slot.
    assert source.read <= 4 + 1, source.read
    before = source.read
    await anext(answers)
    await settle()
    assert source.read == before + 1
    await answers.aclose()


async def test_finish_answers_what_was_read_refuses_what_follows_and_ends_when_the_caller_is_quiet() -> None:
    source = Source(limit=5)
    path = HeldPath()
    stream = session(source, path, max_in_flight=3)
    answers = stream.answers()
    first = asyncio.ensure_future(anext(answers))
    await settle()
    assert source.read == 3  # three in flight; the reader waits for a slot
    stream.finish()
    path.release.set()
    got = [await first]
    got += [a async for a in answers]  # ends once the caller has been quiet (DRAIN_QUIET_S)
    ok = sorted(a.infer_response.id for a in got if not a.error_message)
    refused = sorted(a.infer_response.id for a in got if a.error_message)
    assert ok == ["1", "2", "3"]
    # Sent after the drain began: answered UNAVAILABLE (telling the caller to stop), not computed.
    assert refused == ["4", "5"]
    assert all(
        a.error_message.startswith("UNAVAILABLE: server is shutting down") for a in got if a.error_message
    )
    assert stream.ended_by == "drain"
    assert source.read == 5


async def test_a_malformed_message_is_answered_in_band_and_the_stream_goes_on() -> None:
    async def requests() -> AsyncIterator[pb.ModelInferRequest | Malformed]:
        yield Malformed("request is not a valid inference.ModelInferRequest message (3 bytes): bad")
        yield pb.ModelInferRequest(model_name="m", id="after")

    stream = StreamSession(requests(), cast(RequestPath, InstantPath()), max_in_flight=2, deadline=None)
    got = [a async for a in stream.answers()]
    assert got[0].error_message.startswith("INVALID_ARGUMENT: request is not a valid")
    assert got[1].infer_response.id == "after"


@pytest.mark.parametrize(
    ("sid", "expected"),
    [
        (("uint64_param", 7), 7),
        (("string_param", "cam-1"), "cam-1"),
        (("int64_param", 0), None),
        (None, None),
    ],
)
def test_a_sequence_is_noted_alike_from_the_request_and_from_its_parsed_controls(
    sid: tuple[str, object] | None, expected: object
) -> None:
    # The session notes a prepared request's sequence from InferJob.controls, others by parsing.
    request = pb.ModelInferRequest(model_name="m", model_version="2")
    if sid is not None:
        setattr(request.parameters["sequence_id"], *sid)
    by_request, by_controls = SeenSequences(), SeenSequences()
    by_request.note(request)
    by_controls.note(request, parse_controls(request.parameters))
    noted = set() if expected is None else {("m", "2", expected)}
    assert set(by_controls) == set(by_request) == noted


def test_the_noted_sequences_are_bounded_in_bytes_and_names_of_no_model_are_not_noted() -> None:
    # A stream of frames each naming a new 1 MiB model (NOT_FOUND) with a sequence_id had held
    # every name till the stream ended: 4,000 frames, 4 GB.
    seen = SeenSequences()
    for i in range(64):
        request = pb.ModelInferRequest(model_name=f"{i:0>1000}")  # 1,000 characters: names no model
        request.parameters["sequence_id"].int64_param = 1
        seen.note(request)
    assert set(seen) == set()
    wide = "m" * stream_sequences.MODEL_NAME_MAX  # the longest a model name can be: noted
    for i in range(10_000):
        request = pb.ModelInferRequest(model_name=wide)
        request.parameters["sequence_id"].string_param = f"{i:0>1000}"  # ids of 1,000 bytes
        seen.note(request)
    kept = len(set(seen))
    assert kept == stream_sequences.MAX_SEEN_BYTES // (len(wide) + 1000)  # the bytes' bound, not 10,000
    again = pb.ModelInferRequest(model_name="m")
    again.parameters["sequence_id"].string_param = "x" * 1000
    seen.note(again)
    assert len(set(seen)) == kept  # past the bytes' bound: not noted


async def collect(answers: AsyncIterator[pb.ModelStreamInferResponse], got: list[str]) -> None:
    async for answer in answers:
        got.append(answer.infer_response.id)


async def test_answers_made_at_once_wait_for_earlier_ones_of_an_order_preserving_model() -> None:
    # Requests 2, 4, 6 wait in a batcher and are released last first; 1, 3, 5, 7 could be answered
    # at once, but not ahead of the ones before them.
    source, path = Source(limit=7), OrderedPath()
    got: list[str] = []
    reading = asyncio.ensure_future(collect(session(source, path, max_in_flight=8).answers(), got))
    await settle()
    assert source.read == 7
    assert got == ["1"]  # nothing before it
    for rid in ("6", "4", "2"):
        path.waiting[rid].set()
        await settle()
    assert got == [str(i) for i in range(1, 8)]
    reading.cancel()


async def test_an_answer_made_at_once_never_overtakes_one_made_before_it() -> None:
    # Request 2's answer is made (its batch ran) in the same turn as request 3 arrives; 3 is then
    # answered at once, after 2.
    sent: asyncio.Queue[pb.ModelInferRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.ModelInferRequest | Malformed]:
        while True:
            yield await sent.get()

    path = OrderedPath()
    got: list[str] = []
    stream = StreamSession(requests(), cast(RequestPath, path), max_in_flight=8, deadline=None)
    reading = asyncio.ensure_future(collect(stream.answers(), got))
    for rid in ("1", "2"):
        sent.put_nowait(pb.ModelInferRequest(model_name="m", id=rid))
    await settle()
    assert got == ["1"]
    path.waiting["2"].set()
    sent.put_nowait(pb.ModelInferRequest(model_name="m", id="3"))
    await settle()
    assert got == ["1", "2", "3"]
    reading.cancel()


class EchoBytesPath(InstantPath):
    """Answers at once with outputs as large as the request's raw inputs (an identity model)."""

    def start(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        named: object = None,
        owner: object = None,
    ) -> tuple[Any, pb.ModelInferResponse | None]:
        return job_of(request), pb.ModelInferResponse(
            id=request.id, raw_output_contents=list(request.raw_input_contents)
        )


class BigSource(Source):
    """Endless requests of `frame_bytes` raw bytes each (none: no tensors), ids of at least
    `id_bytes` characters."""

    def __init__(self, frame_bytes: int, id_bytes: int = 0, parameter_bytes: int = 0) -> None:
        super().__init__()
        self.frame = [b"\0" * frame_bytes] if frame_bytes else []
        self.id_bytes = id_bytes
        self.parameter = "p" * parameter_bytes

    async def requests(self) -> AsyncIterator[pb.ModelInferRequest | Malformed]:
        while True:
            self.read += 1
            rid = f"{self.read:0>{self.id_bytes}}" if self.id_bytes else str(self.read)
            request = pb.ModelInferRequest(model_name="m", id=rid, raw_input_contents=self.frame)
            if self.parameter:
                request.parameters["pad"].string_param = self.parameter
            yield request


# Each test makes its own source (a source counts what it read): one made once, at collection, is
# read from again when the test runs again in the same process (mutmut runs the suite twice in one),
# and its ids no longer start at 1.
@pytest.mark.parametrize(
    ("make_source", "most"),
    [
        (lambda: BigSource(frame_bytes=100_000), 1 + 5 + 1),  # each frame held twice (request and answer)
        (lambda: BigSource(frame_bytes=0, id_bytes=100_000), 1 + 5 + 1),  # the answer echoes the id
        (lambda: BigSource(frame_bytes=0, parameter_bytes=100_000), 1 + 10 + 1),  # the request's alone
    ],
    ids=["raw", "id", "parameter"],
)
async def test_what_a_stream_holds_in_bytes_bounds_what_it_reads(
    make_source: Callable[[], BigSource], most: int
) -> None:
    """A client that never reads its answers: requests alone bounded it (256 answers of 0.5 MB a
    stream, 1.1 GB for 8 streams); the bytes of requests read and answers unwritten bound it now,
    ids and parameters too (answers of 16 MiB ids, or 8 MiB parameters, no tensors, had weighed
    nothing: 4 GB and 1.1 GB a stream)."""
    source = make_source()
    stream = StreamSession(
        source.requests(),
        cast(RequestPath, EchoBytesPath()),
        max_in_flight=256,
        deadline=None,
        max_held_bytes=1_000_000,
    )
    answers = stream.answers()
    first = await anext(answers)
    assert first.infer_response.id.endswith("1")
    await settle()
    # The reader stops at 1 MB of frames read and answers unwritten, and one more.
    assert source.read <= most, source.read
    before = source.read
    await anext(answers)  # one written frees its bytes: one more is read
    await settle()
    assert before < source.read <= before + 1
    await answers.aclose()


async def test_one_frame_larger_than_the_bound_is_read_alone() -> None:
    source = BigSource(frame_bytes=3_000_000)
    stream = StreamSession(
        source.requests(),
        cast(RequestPath, EchoBytesPath()),
        max_in_flight=8,
        deadline=None,
        max_held_bytes=1_000_000,
    )
    answers = stream.answers()
    assert (await anext(answers)).infer_response.id == "1"
    assert (await anext(answers)).infer_response.id == "2"
    await settle()
    assert source.read <= 3, source.read  # the one being written, and at most one more held
    await answers.aclose()


async def test_a_client_that_reads_nothing_and_sends_nothing_has_its_call_ended() -> None:
    """Its reader died: the idle timeout had not ended it (waiting answers counted as activity),
    and it kept its slot and its answers until its deadline, or for good."""
    source = Source(limit=3)
    ended = asyncio.Event()
    stream = StreamSession(
        source.requests(),
        cast(RequestPath, InstantPath()),
        max_in_flight=8,
        deadline=None,
        idle_timeout_s=0.05,
        on_stalled=ended.set,
    )
    answers = stream.answers()
    assert (await anext(answers)).infer_response.id == "1"  # then nothing more is read by the client
    await asyncio.wait_for(ended.wait(), 30)
    assert stream.ended_by == "stalled" and source.read == 3
    await answers.aclose()


async def test_a_client_that_reads_its_answers_is_not_ended_while_it_waits_for_more() -> None:
    source = Source(limit=2)
    path = HeldPath()
    stalled = asyncio.Event()
    stream = StreamSession(
        # 1 s: a loaded machine may take 50 ms between an answer made and its read.
        source.requests(), cast(RequestPath, path), max_in_flight=8, deadline=None, idle_timeout_s=1.0,
        on_stalled=stalled.set,
    )  # fmt: skip
    answers = stream.answers()
    pending = asyncio.ensure_future(anext(answers))
    await settle()
    assert source.read == 2
    path.release.set()  # answered after a while in the batcher: read at once by its client
    assert (await pending).infer_response.id in ("1", "2")
    assert (await anext(answers)).infer_response.id in ("1", "2")
    with pytest.raises(StopAsyncIteration):  # then idle, with nothing unsent: ended "idle"
        await asyncio.wait_for(anext(answers), 30)
    assert stream.ended_by == "idle" and not stalled.is_set()


async def test_a_stalled_client_with_one_answer_in_grpcs_write_has_its_call_ended() -> None:
    """Its only unwritten answer had left the queue (grpc was writing it): the idle timeout ended
    the session "idle", the stuck write kept the call, and on_stalled never came (found by review)."""
    source = Source(limit=1)
    ended = asyncio.Event()
    stream = StreamSession(
        source.requests(), cast(RequestPath, InstantPath()), max_in_flight=8, deadline=None,
        idle_timeout_s=0.05, on_stalled=ended.set,
    )  # fmt: skip
    answers = stream.answers()
    await anext(answers)  # taken by grpc, whose write then never completes
    await asyncio.wait_for(ended.wait(), 30)
    assert stream.ended_by == "stalled"
    await answers.aclose()


async def test_a_client_that_stops_reading_is_checked_again_when_it_would_stall() -> None:
    """The check before the stall re-armed a full period from itself: a tester's stream whose
    client stopped reading was cut at 14.5-16.5 s with stream_idle_timeout_s 8."""
    source = Source(limit=2)
    stream = StreamSession(
        source.requests(), cast(RequestPath, InstantPath()), max_in_flight=8, deadline=None,
        idle_timeout_s=10.0, on_stalled=lambda: None,
    )  # fmt: skip
    answers = stream.answers()
    await anext(answers)  # one read; the second answer waits unwritten
    await settle()
    stream._last_written -= 6.0  # its client went quiet 6 s ago (as the clock would say)
    stream._last_read -= 6.0
    stream._idle_check()  # not stalled yet: 4 s to go
    assert stream.ended_by is None and stream._idle_timer is not None
    # Due when it would stall: 10 s after it was last written to or read, not 10 s after this check
    # (read against those points, not against now: a stall of this machine's moves now).
    stalls_at = max(stream._last_written, stream._last_read) + 10.0
    assert stream._idle_timer.when() == pytest.approx(stalls_at, abs=0.5)
    await answers.aclose()


class CountedPath(InstantPath):
    """InstantPath whose answers are counted in one model version's statistics."""

    def __init__(self) -> None:
        self.stats = ModelStats()

    def start(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        named: object = None,
        owner: object = None,
    ) -> tuple[Any, pb.ModelInferResponse | None]:
        job = SimpleNamespace(id=request.id, served=SimpleNamespace(stats=self.stats))
        return job, pb.ModelInferResponse(id=request.id)


async def test_a_stalled_calls_answer_in_grpcs_write_is_not_counted_unsent() -> None:
    """grpc sends it before the status the server sends the stalled call (late_status.py) once its
    client reads: a tester read it, where it had been counted unsent (delivered = success - 1)."""
    source = Source(limit=1)
    path = CountedPath()
    ended = asyncio.Event()
    stream = StreamSession(
        source.requests(), cast(RequestPath, path), max_in_flight=8, deadline=None,
        idle_timeout_s=0.05, on_stalled=ended.set,
    )  # fmt: skip
    answers = stream.answers()
    await anext(answers)  # taken by grpc, whose write then never completes
    await asyncio.wait_for(ended.wait(), 30)
    assert stream.ended_by == "stalled"
    assert sum(path.stats.unsent.values()) == 0, path.stats.unsent
    await answers.aclose()


class BigAnswerPath(HeldPath):
    """A batched model whose answers (500 KB) are much larger than its requests (1 KB)."""

    async def finish(
        self, job: Any, start_ns: int, turn: object = None, before: object = None
    ) -> pb.ModelInferResponse:
        await self.release.wait()
        return pb.ModelInferResponse(id=job.id, raw_output_contents=[bytes(500_000)])


async def test_answers_larger_than_their_requests_are_charged_when_the_requests_are_read() -> None:
    """Answers had been charged only once made: 1 KB requests were all read (256) and their 500 KB
    answers held 128 MB, 7.6 times a 16 MiB bound (found by review)."""
    source = BigSource(frame_bytes=1_000)
    path = BigAnswerPath()
    bound = 16 * 1024 * 1024
    stream = StreamSession(
        source.requests(), cast(RequestPath, path), max_in_flight=256, deadline=None, max_held_bytes=bound
    )
    answers = stream.answers()
    first = asyncio.ensure_future(anext(answers))
    await settle()
    assert source.read <= 8 + 1  # before any answer gives their size, 8 are read ahead
    path.release.set()
    await first
    await settle()
    held_answers = 500_000 * (source.read - 1)  # every request read is answered; one was written
    assert held_answers <= bound + 2 * 500_000, (source.read, held_answers)
    await answers.aclose()


class FirstAnsweredBigPath(HeldPath):
    """Request "1" is answered at once with 500 KB; every other one waits in a batcher (never
    released): a client that stops reading after its first answer."""

    def start(
        self,
        request: pb.ModelInferRequest,
        remaining_s: float | None,
        start_ns: int,
        named: object = None,
        owner: object = None,
    ) -> tuple[Any, pb.ModelInferResponse | None]:
        if request.id == "1":
            return job_of(request), pb.ModelInferResponse(id="1", raw_output_contents=[bytes(500_000)])
        return job_of(request), None


class RefusedBetweenSource(Source):
    """One 1 KB request, then `refused` messages that do not parse, then endless 1 KB requests."""

    def __init__(self, refused: int) -> None:
        super().__init__()
        self.refused = refused

    async def requests(self) -> AsyncIterator[pb.ModelInferRequest | Malformed]:
        while True:
            self.read += 1
            if 1 < self.read <= 1 + self.refused:
                yield Malformed("not a ModelInferRequest")
            else:
                yield pb.ModelInferRequest(
                    model_name="m", id=str(self.read), raw_input_contents=[bytes(1_000)]
                )


async def test_refused_frames_do_not_wear_down_the_guess_of_an_answers_size() -> None:
    """A refused frame's error answer carries no outputs, and it had halved the stream's guess of
    an answer's size: after ~20 of them the guess was 0 and every later request was charged its own
    1 KB alone, so a client that stopped reading had up to `max_in_flight` 500 KB answers held
    against a 1 MiB bound (tester: 97-201 answers computed, +85-136 MB, against 9 without refusals)."""
    source = RefusedBetweenSource(refused=30)
    bound = 2_000_000
    stream = StreamSession(
        source.requests(),
        cast(RequestPath, FirstAnsweredBigPath()),
        max_in_flight=256,
        deadline=None,
        max_held_bytes=bound,
    )
    answers = stream.answers()
    first = await anext(answers)
    assert first.infer_response.id == "1"
    await settle()
    held = source.read - 1 - 30  # requests read after the refused ones, charged an answer each
    assert 0 < held <= bound // 500_000 + 1, source.read
    await answers.aclose()


async def test_a_paced_stream_reads_a_frame_a_tick_while_the_loop_lags_and_every_frame_is_answered() -> None:
    # server/protocol/loop_pace.py: samples given by hand; the sampler's own tick is an hour away.
    pace = LoopPace(0.002, 3600.0, lambda: True)
    pace.lag_sample(0.010, 1.0)  # late, and calls wait: reads are held
    source = Source(limit=5)
    stream = StreamSession(
        source.requests(), cast(RequestPath, InstantPath()), max_in_flight=8, deadline=None, pace=pace
    )
    got: list[str] = []
    collector = asyncio.create_task(collect(stream.answers(), got))
    await settle()
    assert source.read == 0 and got == []
    pace.lag_sample(0.010, 1.01)  # a tick, still late: one more frame read
    await settle()
    assert source.read == 1 and got == ["1"]
    pace.lag_sample(0.0, 1.02)  # on time again: the rest is read at once
    await settle()
    assert source.read == 5 and got == ["1", "2", "3", "4", "5"] and pace.held == 2
    collector.cancel()  # the source stays open, silent: end the stream as grpc would
    with contextlib.suppress(asyncio.CancelledError):
        await collector
    pace.close()
