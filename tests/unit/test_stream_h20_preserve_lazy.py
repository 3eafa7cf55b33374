"""A lazy `preserve_ordering` model's stream frames read while it is not loaded (its first load, and a
reload after an eviction) are answered in the order read, as the loaded model's are: the setting is
read from its config where the model is listed (as latest_frame_wins is) and such frames are
chained with every frame of the model, read before or after them. They had kept no order (the
setting was read from the loaded version, None while not loaded).

On the real StreamSession and RequestPath over the fake lazy model of test_stream_load_order_h19b,
whose batcher the test completes in reverse order; and StreamOrder alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from google.protobuf import text_format

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.models.frame_rules import FrameRules, config_rules, version_rules
from server.models.lazy_judged import JudgedSignatures
from server.models.manager import ModelManager
from server.models.repository import ModelSource
from server.models.versions import ModelVersion
from server.protocol.stream_order import AllOf, StreamOrder
from tests.unit.test_stream_load_order_h19b import (
    Frames,
    Models,
    answers_after,
    frame,
    reverse,
    settle,
    stream_over,
)

PO = "lazy_po"  # a lazy model with dynamic_batching { preserve_ordering: true }
PO_RULES = {PO: FrameRules(False, "", preserve_ordering=True)}


class OrderedModels(Models):
    """The fake's versions keep their model's preserve_ordering (the fake's own are all False)."""

    def load(self, name: str) -> None:
        super().load(name)
        self.versions[name].preserve_ordering = self.on_demand.rules[name].preserve_ordering


def complete_last_first(models: Models, name: str) -> list[Any]:
    """Every frame the model's current batcher holds, answered the last queued first."""
    batcher = models.versions[name].batcher
    entries = [*([batcher.running] if batcher.running else []), *batcher.queued]
    batcher.running, batcher.queued = None, []
    return entries[::-1]


async def finish(entries: list[Any]) -> None:
    for job, future in entries:  # one at a time: each answer could leave before the next is made
        future.set_result(pb.ModelInferResponse(model_name=job.request.model_name, id=job.request.id))
        await settle()


def ids(got: list[pb.ModelStreamInferResponse]) -> list[tuple[str, str]]:
    return [(a.infer_response.id, a.error_message) for a in got]


async def test_frames_waiting_for_a_preserve_ordering_models_first_load_are_answered_in_read_order() -> None:
    models = OrderedModels(PO_RULES)
    frames = Frames()
    answers = stream_over(models, frames)
    reading = asyncio.ensure_future(anext(answers))
    for i in range(4):
        frames.send(frame(PO, str(i)))  # read while the model is not loaded
    await settle()
    models.on_demand.end_load(PO, reverse)
    await settle()
    frames.send(frame(PO, "4"))  # read once loaded: behind those read before
    await settle()
    assert models.submitted == ["0", "1", "2", "3", "4"]
    await finish(complete_last_first(models, PO))
    got = await answers_after(frames, answers, reading)
    assert ids(got) == [(str(i), "") for i in range(5)]


async def test_frames_waiting_for_a_preserve_ordering_models_reload_keep_order_with_those_before() -> None:
    models = OrderedModels(PO_RULES)
    models.on_demand.end_load(PO, reverse)  # loaded before the stream
    frames = Frames()
    answers = stream_over(models, frames)
    reading = asyncio.ensure_future(anext(answers))
    frames.send(frame(PO, "0"))  # queued on the loaded version
    await settle()
    evicted = models.versions[PO]
    models.on_demand.evict(PO)
    for i in (1, 2, 3):
        frames.send(frame(PO, str(i)))  # read while it is not loaded
    await settle()
    models.on_demand.end_load(PO, reverse)
    await settle()
    frames.send(frame(PO, "4"))
    await settle()
    assert models.submitted == ["0", "1", "2", "3", "4"]
    old = complete_last_first(cast(Models, SimpleNamespace(versions={PO: evicted})), PO)
    await finish(complete_last_first(models, PO) + old)  # the reloaded version's first, "0" last
    got = await answers_after(frames, answers, reading)
    assert ids(got) == [(str(i), "") for i in range(5)]


async def test_frames_of_a_lazy_model_without_preserve_ordering_keep_no_order() -> None:
    models = OrderedModels({PO: FrameRules(False)})
    frames = Frames()
    answers = stream_over(models, frames)
    reading = asyncio.ensure_future(anext(answers))
    for i in range(3):
        frames.send(frame(PO, str(i)))
    await settle()
    models.on_demand.end_load(PO, reverse)
    await settle()
    await finish(complete_last_first(models, PO))
    got = await answers_after(frames, answers, reading)
    assert ids(got) == [(str(i), "") for i in (2, 1, 0)]  # as they completed


def _served(name: str, version: int, preserve_ordering: bool = True) -> ModelVersion:
    served = SimpleNamespace(name=name, version=version, preserve_ordering=preserve_ordering)
    return cast(ModelVersion, served)


async def test_a_frame_not_loaded_waits_for_every_version_of_its_model_and_they_for_it() -> None:
    order = StreamOrder()
    request = pb.ModelInferRequest(model_name="p")
    _, v1 = order.place(request, _served("p", 1), ordered=False)
    _, v2 = order.place(request, _served("p", 2), ordered=False)
    _, other = order.place(pb.ModelInferRequest(model_name="q"), _served("q", 1), ordered=False)
    after, waiting = order.place(request, PO_RULES[PO], ordered=False)
    assert isinstance(after, AllOf) and waiting is not None and not after.is_set()
    assert v1 is not None and v2 is not None and other is not None
    v1.set()
    assert not after.is_set()
    v2.set()  # another model's answer is not waited for
    assert after.is_set() and await after.wait()
    assert order.place(request, _served("p", 1), ordered=False)[0] is waiting
    assert order.place(request, _served("p", 3), ordered=False)[0] is waiting  # a version new since
    assert order.place(request, _served("p", 2, False), ordered=False) == (None, None)
    assert order.place(request, FrameRules(False), ordered=False) == (None, None)
    _, lfw = order.place(request, FrameRules(True), ordered=True)  # by the request, as before
    assert order.place(request, FrameRules(True), ordered=True)[0] is lfw


async def test_frames_not_loaded_chain_one_after_another_from_the_first() -> None:
    order = StreamOrder()
    request = pb.ModelInferRequest(model_name="p")
    assert order.place(request, PO_RULES[PO], ordered=False)[0] is None  # nothing before it
    _, first = order.place(request, PO_RULES[PO], ordered=True)
    assert order.place(request, PO_RULES[PO], ordered=False)[0] is first  # one chain, not AllOf


def _config(text: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse(text, config)
    return config


def test_preserve_ordering_is_read_from_a_lazy_models_config_then_from_its_last_load() -> None:
    ordered = _config('name: "m" dynamic_batching { preserve_ordering: true }')
    assert config_rules(ordered, "m") == FrameRules(False, "", preserve_ordering=True)
    assert config_rules(_config('name: "m" dynamic_batching { }'), "m") == FrameRules(False)
    judged = JudgedSignatures(cast(ModelManager, None), Path("/nonexistent"), 8, cast(Any, None), set)
    judged.listed(cast(ModelSource, SimpleNamespace(name="m", config=ordered, where="m")))
    rules = judged.frame_rules("m")
    assert rules is not None and rules.preserve_ordering
    version = SimpleNamespace(
        signature=None, latest_frame_wins=False, ensemble=None, sequences=None, preserve_ordering=False
    )
    judged.loaded("m", (), {1: cast(Any, version)})
    assert judged.frame_rules("m") == FrameRules(False)
    version.preserve_ordering = True
    assert version_rules(cast(ModelVersion, version)).preserve_ordering
