"""Sequence routing notes follow their sequences' lives (server/models/sequence_routing.py).

The notes of starts were one table for every model, bounded at 16,384 with the oldest dropped: after
20,000 sequences started and ended, a stream's start read but not yet run had lost its note, and
its continuation went by the new weights to a version where it was "never started"; one model's
churn dropped another's notes. Now a note goes when its version's batcher says the sequence is gone,
the bound is per model (what its versions hold, plus a slack), and a start naming a version on a
stream is noted too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from batcher.sequence import SequenceBatcher
from batcher.sequence_types import SequenceId, SequenceLimitReached, UnknownSequence
from protos import grpc_service_pb2 as pb
from server.models.manager import ModelManager
from server.models.sequence_routing import NOTE_SLACK, Routed, SequenceRouting
from server.models.versions import READY, ModelEntry
from server.protocol import controls as controls_module
from server.protocol.request_path import RequestPath
from server.protocol.sequence_params import SequenceParams
from server.settings import ServerSettings
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.unit.test_sequence_batcher import adm, make, x

CHURN = 20_000  # past the old shared bound (16,384)


@dataclass
class Request:
    id: str
    parameters: dict[str, object] = field(default_factory=dict)


@dataclass
class Policy:
    """The traffic policy's choice: `to`, whatever the request (a weight change sets it)."""

    to: int

    def __call__(self, entry: ModelEntry, request: object, point: float | None = None) -> int:
        return self.to


def routed(sid: SequenceId, start: bool = False, end: bool = False) -> Routed:
    return Routed(Request(f"r-{sid}"), SequenceParams(sid, start, end))


def model(name: str, routing: SequenceRouting, *batchers: SequenceBatcher) -> ModelEntry:
    """A model whose version n (from 1) runs batchers[n - 1]; its notes follow them."""
    versions: dict[int, Any] = {
        n: SimpleNamespace(name=name, version=n, sequences=sb) for n, sb in enumerate(batchers, 1)
    }
    for version in versions.values():
        routing.follow(version)
    return ModelEntry(name, versions=versions, state=READY, order=sorted(versions, reverse=True))


async def test_sequences_started_and_ended_leave_no_notes_so_a_pipelined_start_keeps_its_own() -> None:
    routing, policy = SequenceRouting(), Policy(1)
    (sb1, _, _, _), (sb2, _, _, _) = make(), make()
    m = model("m", routing, sb1, sb2)
    assert routing.route(m, routed("early", start=True), policy) == 1  # read on a stream, not yet run
    for sid in range(1, CHURN + 1):
        assert routing.route(m, routed(sid, start=True, end=True), policy) == 1
        await sb1.infer(sid, x(1.0), adm(), start=True, end=True)
    assert routing.noted("m") == 1  # the churn's notes went with their sequences
    policy.to = 2  # a weight change
    assert routing.route(m, routed("early"), policy) == 1  # was 2: "it was never started"
    await sb1.infer("early", x(1.0), adm(), start=True)
    assert (await sb1.infer("early", x(2.0), adm()))["out"][0, 0] == 3.0


async def test_one_models_unended_starts_never_drop_another_models_notes() -> None:
    routing = SequenceRouting()
    (a1, _, _, _), (a2, _, _, _), (b1, _, _, _) = make(), make(), make(max_sequences=4)
    a, b = model("a", routing, a1, a2), model("b", routing, b1)
    assert routing.route(a, routed("s", start=True), Policy(1)) == 1
    for sid in range(CHURN):  # a client starting sequences it never ends (none run yet)
        routing.route(b, routed(sid, start=True), Policy(1))
    assert routing.noted("b") == NOTE_SLACK + 4  # what b's version holds, plus the slack
    assert routing.route(a, routed("s"), Policy(2)) == 1  # was 2: b's churn had dropped a's note


async def test_a_restart_refused_elsewhere_leaves_the_live_sequence_on_its_version() -> None:
    routing, policy = SequenceRouting(), Policy(1)
    (sb1, _, _, _), (sb2, _, _, _) = make(), make(max_sequences=1)
    m = model("m", routing, sb1, sb2)
    routing.route(m, routed(7, start=True), policy)
    await sb1.infer(7, x(1.0), adm(), start=True)
    policy.to = 2
    routing.route(m, routed(99, start=True), policy)
    await sb2.infer(99, x(1.0), adm(), start=True)  # version 2 is full now
    assert routing.route(m, routed(7, start=True), policy) == 2  # a restart goes by the policy...
    with pytest.raises(SequenceLimitReached):
        await sb2.infer(7, x(5.0), adm(), start=True)  # ...and is refused there, opening nothing
    assert routing.route(m, routed(7), policy) == 1  # was 2: the refused start's note had stayed
    assert (await sb1.infer(7, x(2.0), adm()))["out"][0, 0] == 3.0
    # Refused before its batcher (a bad input, say): the request path drops the note as well.
    assert routing.route(m, routed(7, start=True), policy) == 2
    routing.refused(m.versions[2], routed(7, start=True))
    assert routing.route(m, routed(7), policy) == 1


async def test_a_note_goes_at_the_end_and_the_idle_release_and_a_late_request_hears_why() -> None:
    routing, policy = SequenceRouting(), Policy(1)
    (sb1, _, clock, timers), (sb2, _, _, _) = make(), make()
    m = model("m", routing, sb1, sb2)
    for sid in (1, 2):
        routing.route(m, routed(sid, start=True), policy)
        await sb1.infer(sid, x(1.0), adm(), start=True)
    await sb1.infer(1, x(1.0), adm(), end=True)
    clock.now += 60.0
    timers.fire()  # sequence 2 idles out
    assert routing.noted("m") == 0
    policy.to = 2
    for sid, why in ((1, "its sequence_end request was answered"), (2, "without a request")):
        assert routing.route(m, routed(sid), policy) == 1  # the version that released it says why
        with pytest.raises(UnknownSequence, match=why):
            await sb1.infer(sid, x(1.0), adm())


# -- through the request path, with a real model (versions 1 and 2; the newest takes requests) ---


def infer_request(sid: int, version: str = "", **flags: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="acc", model_version=version, id=f"{sid}")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    request.parameters["sequence_id"].int64_param = sid
    for name, on in flags.items():
        request.parameters[f"sequence_{name}"].bool_param = on
    return request


@pytest.fixture()
async def manager(tmp_path: Path) -> Any:
    repo = tmp_path / "repo"
    config = sm.accumulator_config() + "version_policy { all { } }\n"
    write_model(repo, "acc", sm.accumulator_model(tmp_path / "acc.onnx"), config, versions=(1, 2))
    loaded = ModelManager(repo, ServerSettings(cache_dir=tmp_path / "cache"), lambda name, ready: None)
    await loaded.load_all()
    yield loaded
    await loaded.stop(1.0)


async def test_a_stream_start_naming_a_version_is_followed_by_its_unversioned_continuation(
    manager: ModelManager,
) -> None:
    path, stream = RequestPath(manager, lambda: False), object()
    start, more = infer_request(3, "1", start=True), infer_request(3)
    now = time.perf_counter_ns()
    # As a stream reads them: each resolved once (model_of), the start not yet run.
    started, _ = path.start(start, 30.0, now, path.model_of(start), stream)
    continued, _ = path.start(more, 30.0, now, path.model_of(more), stream)
    assert continued.served.version == 1  # was 2, the newest: "it was never started"
    await path.finish(started, now)
    answer = await path.finish(continued, now)
    assert answer.model_version == "1"
    assert np.frombuffer(answer.raw_output_contents[0], np.float32)[0] == 2.0


async def test_a_routed_requests_sequence_parameters_are_parsed_once(
    manager: ModelManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[object] = []
    parse = controls_module.parse_sequence

    def counted(parameters: Any) -> SequenceParams | None:
        parsed.append(parameters)
        return parse(parameters)

    monkeypatch.setattr(controls_module, "parse_sequence", counted)
    # The routing's own parse, before: counted too if it is there.
    monkeypatch.setattr("server.models.sequence_routing.parse_sequence", counted, raising=False)
    path, now = RequestPath(manager, lambda: False), time.perf_counter_ns()
    job, _ = path.start(infer_request(4, start=True), 30.0, now)
    assert len(parsed) == 1  # was 2: routing and the batcher path each parsed them
    await path.finish(job, now)
    bad = infer_request(5, start=True)
    bad.parameters["sequence_end"].int64_param = 1
    with pytest.raises(Exception, match="parameter 'sequence_end' must be a bool, got int64_param"):
        path.start(bad, 30.0, now)
