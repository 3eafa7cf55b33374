"""A stream's frames across a lazy model's eviction and load, on the real StreamSession and
RequestPath over a fake lazy model whose evictions, loads and batcher the test drives.

1. A sequence's START prepared on the fast path (model loaded), evicted before its task ran, waited
   for the reload (`_load_again_for`) holding no place: its continuations, read after the eviction,
   were refused "never started" by the early judge, or overtook it after the load; the START then
   ran and its sequence stayed live.
2. Latest-frame-wins did nothing for frames waiting for the load (no loaded version to read the
   setting from): every one computed, answered in any order; a request's `true` for a sequence
   model not loaded was ignored, where the loaded model refuses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np

from batcher.claim import Claim
from batcher.errors import NotAccepting
from batcher.sequence_types import NEVER_STARTED, not_live
from batcher.stats import ModelStats
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server import datatypes
from server.errors import ModelNotReady
from server.models.frame_rules import FrameRules, config_rules
from server.models.lazy_judged import JudgedSignatures
from server.models.lazy_sequences import SequencesBeforeLoad
from server.models.manager import ModelManager
from server.models.repository import ModelSource
from server.protocol.controls import Controls, parse_controls
from server.protocol.infer_job import InferJob
from server.protocol.latest_frame import FRAME_DROPPED
from server.protocol.request_path import RequestPath
from server.protocol.stream import StreamSession
from server.protocol.validate import Signature, TensorSpec

SETTLE_TURNS = 200  # loop turns enough for every runnable task to run as far as it can
SEQ = "lazy_seq"  # a lazy sequence model (an accumulator)
LFW = "lazy_lfw"  # a lazy model with latest_frame_wins "true"


async def settle() -> None:
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


class Batcher:
    """One version's queue: the first frame queued on an idle instance is taken at once (no longer
    withdrawable); the others wait until `run_all`. A continuation of a sequence not live is refused
    as the real sequence batcher refuses it."""

    def __init__(self, submitted: list[str]) -> None:
        self.submitted = submitted
        self.live: set[object] = set()
        self.running: tuple[Job, asyncio.Future[pb.ModelInferResponse]] | None = None
        self.queued: list[tuple[Job, asyncio.Future[pb.ModelInferResponse]]] = []
        self.stopped = False

    async def enqueue(self, job: Job) -> pb.ModelInferResponse:
        if self.stopped:
            raise NotAccepting()
        claim = job.claim
        if claim is not None and claim.withdrawn is not None:
            raise claim.withdrawn
        self.submitted.append(job.request.id)
        sequence = job.controls.sequence
        if sequence is not None:  # an accumulator: answered at once, in order of arrival
            if not sequence.start and sequence.sid not in self.live:
                raise not_live(job.request.model_name, sequence.sid, NEVER_STARTED)
            (self.live.discard if sequence.end else self.live.add)(sequence.sid)
            return pb.ModelInferResponse(model_name=job.request.model_name, id=job.request.id)
        entry = (job, asyncio.get_running_loop().create_future())
        if self.running is None:
            self.running = entry  # taken by a batch at once: too late to withdraw
        else:
            self.queued.append(entry)
            if claim is not None:
                claim.bind(lambda exc: self._remove(entry, exc))
        if claim is not None:
            claim.admitted()
        try:
            return await entry[1]
        finally:
            if claim is not None:
                claim.settle()

    def _remove(self, entry: tuple[Job, asyncio.Future[pb.ModelInferResponse]], exc: BaseException) -> bool:
        if entry not in self.queued:
            return False
        self.queued.remove(entry)
        entry[1].set_exception(exc)
        return True

    def run_all(self) -> None:
        for job, future in [*([self.running] if self.running else []), *self.queued]:
            future.set_result(pb.ModelInferResponse(model_name=job.request.model_name, id=job.request.id))
        self.running, self.queued = None, []


class LazyDemand:
    """OnDemand for the lazy models named in `rules`; each waiter of a load resumes when the test
    ends the load (`end_load`), in the order the test says."""

    def __init__(self, models: Models, rules: dict[str, FrameRules]) -> None:
        self.models = models
        self.rules = rules
        self.loaded: set[str] = set()
        self.waiters: list[asyncio.Future[None]] = []
        self.refused_early = SimpleNamespace(stats_for=lambda name, number: ModelStats())

    def needs_load(self, name: str) -> bool:
        return name in self.rules and name not in self.loaded

    def is_lazy(self, name: str) -> bool:
        return name in self.rules

    def frame_rules(self, name: str) -> FrameRules | None:
        return self.rules.get(name)

    async def signatures(self, name: str) -> dict[int, Signature] | None:
        x = TensorSpec(name="x", datatype=datatypes.BY_WIRE["FP32"], dims=(4,))
        sequences = self.rules[name].refused_for == "a sequence model"
        return {1: Signature(model=name, max_batch_size=8, inputs={"x": x}, outputs={}, sequences=sequences)}

    def routing(self, name: str) -> None:
        return None

    async def ready(self, name: str, remaining_s: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        await waiter

    def evict(self, name: str) -> None:
        self.loaded.discard(name)
        self.models.versions[name].batcher.stopped = True

    def end_load(
        self, name: str, order: Callable[[list[asyncio.Future[None]]], list[asyncio.Future[None]]]
    ) -> None:
        """The load ended: a new version serves; its waiters resume in `order`."""
        self.loaded.add(name)
        self.models.load(name)
        waiters, self.waiters = self.waiters, []
        for waiter in order(waiters):
            waiter.set_result(None)


class Models:
    """The manager's part RequestPath uses."""

    def __init__(self, rules: dict[str, FrameRules]) -> None:
        self.on_demand = LazyDemand(self, rules)
        routing = SimpleNamespace(ended_why=lambda name, sid: None)
        self.sequences_before_load = SequencesBeforeLoad(cast(Any, routing))
        self.sequence_routing = SimpleNamespace(refused=lambda *a: None)
        self.rollout = SimpleNamespace(answered=lambda *a: None)
        self.submitted: list[str] = []  # request ids in the order they reached a batcher
        self.versions: dict[str, Any] = {}

    def load(self, name: str) -> None:
        rules = self.on_demand.rules[name]
        self.versions[name] = SimpleNamespace(
            name=name, version=1, version_str="1", stats=ModelStats(), preserve_ordering=False,
            latest_frame_wins=rules.latest_frame_wins, ensemble=None, batcher=Batcher(self.submitted),
            sequences=object() if rules.refused_for else None,
        )  # fmt: skip

    def resolve(self, name: str, version: str = "", routed: object = None) -> Any:
        if self.on_demand.needs_load(name) or name not in self.versions:
            raise ModelNotReady(f"model '{name}' is not ready")
        return self.versions[name]


class Job:
    """InferJob's part the path uses; it reaches its version's batcher at `answer_later`'s first step."""

    shm = None
    owner = None
    call_deadline = None
    made = None  # nothing answered at once left to encode
    inputs = outputs = None  # offered to the (fake) rollout once answered
    admission = SimpleNamespace(rows=1, hard=None)  # no deadline

    def __init__(self, served: Any, request: pb.ModelInferRequest, controls: Controls) -> None:
        self.served, self.request, self.controls = served, request, controls
        self.claim: Claim | None = None

    @classmethod
    def prepare(
        cls,
        served: Any,
        request: pb.ModelInferRequest,
        left: object,
        regions: object,
        controls: Controls | None,
    ) -> Job:
        return cls(served, request, controls or parse_controls(request.parameters))

    def limit_answer(self, limit: int | None, framed: bool) -> None:
        return None

    def answer_now(self) -> None:
        return None

    def retarget(self, served: Any) -> None:
        self.served = served

    async def answer_later(self) -> pb.ModelInferResponse:
        return cast(pb.ModelInferResponse, await self.served.batcher.enqueue(self))


class Frames:
    """A stream's requests as the test sends them, and actions run between two reads (in the
    reader's own step: before the tasks of the frames read so far have run)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[pb.ModelInferRequest | Callable[[], None] | None] = asyncio.Queue()

    def send(self, request: pb.ModelInferRequest) -> None:
        self._queue.put_nowait(request)

    def then(self, action: Callable[[], None]) -> None:
        self._queue.put_nowait(action)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def requests(self) -> AsyncIterator[pb.ModelInferRequest]:
        while (item := await self._queue.get()) is not None:
            if isinstance(item, pb.ModelInferRequest):
                yield item
            else:
                item()


def frame(model: str, frame_id: str, **params: bool | int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=frame_id)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
    for key, value in params.items():
        if isinstance(value, bool):
            request.parameters[key].bool_param = value
        else:
            request.parameters[key].int64_param = value
    return request


def sequence(sid: int, length: int) -> list[pb.ModelInferRequest]:
    return [
        frame(SEQ, str(i), sequence_id=sid, sequence_start=i == 0, sequence_end=i == length - 1)
        for i in range(length)
    ]


def stream_over(models: Models, frames: Frames) -> AsyncIterator[pb.ModelStreamInferResponse]:
    path = RequestPath(cast(ModelManager, models), lambda: False, job_type=cast(type[InferJob], Job))
    return StreamSession(frames.requests(), path.frames(), max_in_flight=64, deadline=None).answers()


async def answers_after(
    frames: Frames, answers: AsyncIterator[pb.ModelStreamInferResponse], reading: asyncio.Future[Any]
) -> list[pb.ModelStreamInferResponse]:
    frames.close()
    return [await reading] + [a async for a in answers]


def reverse(waiters: list[asyncio.Future[None]]) -> list[asyncio.Future[None]]:
    return waiters[::-1]


SEQ_RULES = {SEQ: FrameRules(False, "a sequence model")}


async def test_a_start_evicted_before_its_task_ran_keeps_its_place_and_its_id_through_the_reload() -> None:
    models = Models(SEQ_RULES)
    models.on_demand.end_load(SEQ, reverse)  # loaded before the stream
    frames = Frames()
    answers = stream_over(models, frames)
    reading = asyncio.ensure_future(anext(answers))
    start, *continuations = sequence(7, 4)
    frames.send(start)  # prepared on the fast path, its task not run yet
    frames.then(lambda: models.on_demand.evict(SEQ))  # evicted before that task runs
    for request in continuations:
        frames.send(request)
    await settle()
    assert models.submitted == []  # the start waits for the reload; so do its continuations
    models.on_demand.end_load(SEQ, reverse)  # the waiters resume, the last first
    await settle()
    got = await answers_after(frames, answers, reading)
    assert [(a.infer_response.id, a.error_message) for a in got] == [(str(i), "") for i in range(4)]
    assert models.submitted == ["0", "1", "2", "3"]


async def test_frames_read_after_a_fast_path_frame_was_evicted_reach_the_batcher_behind_it() -> None:
    rules = {"lazy_plain": FrameRules(False)}
    models = Models(rules)
    models.on_demand.end_load("lazy_plain", reverse)
    models.versions["lazy_plain"].batcher.running = "busy"  # the others queue behind a batch
    frames = Frames()
    answers = stream_over(models, frames)
    reading = asyncio.ensure_future(anext(answers))
    frames.send(frame("lazy_plain", "0"))
    frames.then(lambda: models.on_demand.evict("lazy_plain"))
    frames.send(frame("lazy_plain", "1"))
    frames.send(frame("lazy_plain", "2"))
    await settle()
    models.on_demand.end_load("lazy_plain", reverse)
    await settle()
    assert models.submitted == ["0", "1", "2"]
    models.versions["lazy_plain"].batcher.run_all()
    await settle()
    got = await answers_after(frames, answers, reading)
    assert sorted((a.infer_response.id, a.error_message) for a in got) == [("0", ""), ("1", ""), ("2", "")]


async def test_latest_frame_wins_applies_to_frames_waiting_for_the_load_answered_in_order() -> None:
    models = Models({LFW: FrameRules(True)})
    frames = Frames()
    answers = stream_over(models, frames)
    reading = asyncio.ensure_future(anext(answers))
    for i in range(6):
        frames.send(frame(LFW, str(i)))  # read while the model is not loaded
    await settle()
    assert len(models.on_demand.waiters) == 6
    models.on_demand.end_load(LFW, reverse)
    await settle()
    # "0" was taken by a batch at once; each later one withdrew the one before it, "5" waits.
    models.versions[LFW].batcher.run_all()
    await settle()
    got = await answers_after(frames, answers, reading)
    kinds = [
        (a.infer_response.id, a.error_message, FRAME_DROPPED in a.infer_response.parameters) for a in got
    ]
    assert kinds == [("0", "", False), *((str(i), "", True) for i in range(1, 5)), ("5", "", False)]
    assert models.submitted == ["0", "1", "2", "3", "4", "5"]


async def test_a_latest_frame_wins_true_for_a_sequence_model_not_loaded_is_refused_at_once() -> None:
    models = Models(SEQ_RULES)
    frames = Frames()
    answers = stream_over(models, frames)
    reading = asyncio.ensure_future(anext(answers))
    frames.send(frame(SEQ, "0", sequence_id=3, sequence_start=True, latest_frame_wins=True))
    await settle()
    models.on_demand.end_load(SEQ, reverse)  # had it waited for the load, it is computed now
    await settle()
    got = await answers_after(frames, answers, reading)
    assert [a.error_message for a in got] == [
        "INVALID_ARGUMENT: parameter 'latest_frame_wins' true is not supported for a sequence model"
    ]


def _config(text: str) -> mc.ModelConfig:
    from google.protobuf import text_format

    return text_format.Parse(text, mc.ModelConfig())


def test_a_lazy_models_rules_come_from_its_config_then_from_its_last_load() -> None:
    wins = 'name: "m" parameters { key: "latest_frame_wins" value: { string_value: "true" } }'
    assert config_rules(_config(wins), "m") == FrameRules(True, "")
    assert config_rules(_config('name: "m" sequence_batching { }'), "m") == FrameRules(
        False, "a sequence model"
    )
    assert config_rules(_config('name: "m" platform: "ensemble"'), "m") == FrameRules(False, "an ensemble")
    bad = 'name: "m" parameters { key: "latest_frame_wins" value: { string_value: "maybe" } }'
    assert config_rules(_config(bad), "m") is None  # its load says what is wrong
    judged = JudgedSignatures(cast(ModelManager, None), Path("/nonexistent"), 8, cast(Any, None), set)
    assert judged.frame_rules("m") is None
    judged.listed(cast(ModelSource, SimpleNamespace(name="m", config=_config(wins), where="m")))
    assert judged.frame_rules("m") == FrameRules(True, "")
    version = SimpleNamespace(
        signature=None, latest_frame_wins=False, ensemble=None, sequences=None, preserve_ordering=False
    )
    judged.loaded("m", (), {1: cast(Any, version)})
    assert judged.frame_rules("m") == FrameRules(False, "")
    judged.forget("m")
    assert judged.frame_rules("m") is None
