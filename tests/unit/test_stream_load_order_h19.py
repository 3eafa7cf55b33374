"""A stream's frames for a lazy model reach its batcher in the order read, across its load: the real
StreamSession and RequestPath over a fake lazy model whose load the test ends, and whose waiters
the test resumes in any order (as their early judge's reads and the load's end let them). Frames
read after the load went straight to the batcher, ahead of those still waiting (a sequence's
continuations before their start: "never started", or wrong sums answered OK)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

from batcher.errors import DeadlineExceeded
from batcher.stats import ModelStats
from protos import grpc_service_pb2 as pb
from server.models.manager import ModelManager
from server.protocol.controls import Controls
from server.protocol.infer_job import InferJob
from server.protocol.load_order import LoadOrder
from server.protocol.request_path import RequestPath
from server.protocol.stream import StreamSession

SETTLE_TURNS = 200  # loop turns enough for every runnable task to run as far as it can


async def settle() -> None:
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


class LazyDemand:
    """OnDemand for lazy models not loaded until `loaded` names them; each waiter of a load
    resumes when the test says (`resume`), or fails (`fail`)."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.waiters: dict[str, asyncio.Future[None]] = {}  # in the order they began to wait

    def needs_load(self, name: str) -> bool:
        return name.startswith("lazy") and name not in self.loaded

    def is_lazy(self, name: str) -> bool:
        return name.startswith("lazy")

    def frame_rules(self, name: str) -> None:
        return None  # not latest-frame-wins

    async def signatures(self, name: str) -> None:
        return None  # not judged: straight to the load

    async def ready(self, name: str, remaining_s: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.waiters[f"{name}#{len(self.waiters)}"] = waiter
        await waiter

    def resume(self, key: str, error: Exception | None = None) -> None:
        waiter = self.waiters[key]
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


class Models:
    """The manager's part RequestPath uses; versions of every model, `demand` decides which load."""

    def __init__(self, demand: LazyDemand) -> None:
        self.on_demand = demand
        self.sequences_before_load = SimpleNamespace(hold=_hold)
        self.sequence_routing = SimpleNamespace(refused=lambda *a: None)
        self.rollout = SimpleNamespace(answered=lambda *a: None)
        self.submitted: list[str] = []  # request ids in the order they reached a batcher

    def resolve(self, name: str, version: str = "", routed: object = None) -> Any:
        if self.on_demand.needs_load(name):
            raise RuntimeError(f"model '{name}' is not ready")
        return SimpleNamespace(
            name=name, version=1, version_str="1", stats=ModelStats(), preserve_ordering=False,
            latest_frame_wins=False, ensemble=None, sequences=object(), submitted=self.submitted,
        )  # fmt: skip


class _Hold:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _hold(name: str, sequence: object) -> _Hold:
    return _Hold()


class Job:
    """InferJob's part the path uses: it reaches the batcher at the first step of `answer_later`
    (as a sequence request takes its place in its id's queue)."""

    shm = None
    claim = None
    owner = None
    call_deadline = None
    made = None  # nothing answered at once left to encode

    def __init__(self, served: Any, request: pb.ModelInferRequest) -> None:
        self.served, self.request = served, request
        self.controls = Controls(sequence=cast(Any, object()))  # a sequence's: no shadow, no cache

    @classmethod
    def prepare(cls, served: Any, request: pb.ModelInferRequest, *args: object) -> Job:
        return cls(served, request)

    def limit_answer(self, limit: int | None, framed: bool) -> None:
        return None

    def answer_now(self) -> None:
        return None

    async def answer_later(self) -> pb.ModelInferResponse:
        self.served.submitted.append(self.request.id)
        return pb.ModelInferResponse(model_name=self.request.model_name, id=self.request.id)


class Frames:
    """A stream's requests as the test sends them."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()

    def send(self, model: str, *ids: str) -> None:
        for frame_id in ids:
            self._queue.put_nowait(pb.ModelInferRequest(model_name=model, id=frame_id))

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def requests(self) -> AsyncIterator[pb.ModelInferRequest]:
        while (request := await self._queue.get()) is not None:
            yield request


def stream_over(models: Models, frames: Frames) -> AsyncIterator[pb.ModelStreamInferResponse]:
    path = RequestPath(cast(ModelManager, models), lambda: False, job_type=cast(type[InferJob], Job))
    session = StreamSession(frames.requests(), path.frames(), max_in_flight=64, deadline=None)
    return session.answers()


async def test_frames_read_after_the_load_wait_behind_those_still_waiting_for_it() -> None:
    demand = LazyDemand()
    models = Models(demand)
    frames = Frames()
    answers = stream_over(models, frames)
    reading = asyncio.ensure_future(anext(answers))
    frames.send("lazy", "0", "1", "2")  # a start and two continuations, read during the load
    await settle()
    assert len(demand.waiters) == 3 and models.submitted == []
    demand.loaded.add("lazy")  # the load ended; its waiters have not resumed yet
    frames.send("lazy", "3", "4", "5")  # read now: they had gone straight to the batcher
    frames.send("other", "x")  # another model's frame waits for nothing
    await settle()
    assert models.submitted == ["x"]
    for key in reversed(list(demand.waiters)):  # the waiters resume in any order
        demand.resume(key)
    await settle()
    frames.close()
    got = [await reading] + [a async for a in answers]
    assert sorted(a.infer_response.id for a in got) == ["0", "1", "2", "3", "4", "5", "x"]
    assert models.submitted == ["x", "0", "1", "2", "3", "4", "5"]


async def test_a_waiter_that_fails_lets_the_next_go_only_after_those_before_it() -> None:
    demand = LazyDemand()
    models = Models(demand)
    frames = Frames()
    answers = stream_over(models, frames)
    reading = asyncio.ensure_future(anext(answers))
    frames.send("lazy", "0", "1", "2")
    await settle()
    first, second, third = list(demand.waiters)
    demand.resume(second, DeadlineExceeded("deadline exceeded while loading"))  # its deadline passed
    await settle()
    assert models.submitted == []  # "2" waits behind "0", which still waits for the load
    demand.loaded.add("lazy")
    frames.send("lazy", "3")
    demand.resume(third)
    await settle()
    assert models.submitted == []
    demand.resume(first)
    await settle()
    frames.close()
    got = [await reading] + [a async for a in answers]
    assert models.submitted == ["0", "2", "3"]
    failed = [a.infer_response.id for a in got if a.error_message]
    assert failed == ["1"]


async def test_the_order_is_released_once_every_held_frame_has_gone() -> None:
    order = LoadOrder()
    first = order.enter("m")
    second = order.enter("m")
    assert order.waiting("m") and not order.waiting("n")
    assert first.came and not second.came
    second.admitted()  # failed early: released only behind the first
    assert order.waiting("m")
    first.admitted()
    await settle()
    assert second.came and not order.waiting("m")
