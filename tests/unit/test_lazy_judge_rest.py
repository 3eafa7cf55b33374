"""What a lazy model not loaded judges without its load: a sequence's continuation that no load could
find live (server/models/lazy_sequences.py), the labels of its refusals' series
(server/models/early_refusals.py), and the one version a request naming none is routed to
(server/models/lazy_signatures.py)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest

from batcher.sequence_types import NEVER_STARTED, UnknownSequence, not_live
from protos import model_config_pb2 as mc
from server.models.early_refusals import EarlyRefusals, Series, counted_version
from server.models.lazy_sequences import SequencesBeforeLoad
from server.models.lazy_signatures import unnamed_version
from server.models.repository import ModelSource
from server.models.sequence_routing import SequenceRouting
from server.observability.metrics_page import series_labels
from server.protocol.sequence_params import SequenceParams


def continued(sid: int | str) -> SequenceParams:
    return SequenceParams(sid, start=False, end=False)


def started(sid: int | str) -> SequenceParams:
    return SequenceParams(sid, start=True, end=False)


def refusal(judge: SequencesBeforeLoad, name: str, sequence: SequenceParams) -> str:
    with pytest.raises(UnknownSequence) as refused:
        judge.check(name, sequence)
    return str(refused.value)


def test_a_continuation_no_load_could_find_live_is_refused_in_the_batchers_words() -> None:
    judge = SequencesBeforeLoad(SequenceRouting())
    assert refusal(judge, "m", continued(7)) == str(not_live("m", 7, NEVER_STARTED))
    assert "must specify the START flag" in refusal(judge, "m", SequenceParams(7, start=False, end=True))
    judge.check("m", started(7))  # a start is the load's to run
    judge.check("m", None)  # no sequence: judged elsewhere


def test_a_start_waiting_for_the_load_lets_its_continuations_wait_too() -> None:
    judge = SequencesBeforeLoad(SequenceRouting())
    with judge.hold("m", started(7)):
        with judge.hold("m", started(7)):  # two starts of one id (a restart)
            judge.check("m", continued(7))
        judge.check("m", continued(7))
        refusal(judge, "m", continued(8))  # another id
        refusal(judge, "other", continued(7))  # another model
    refusal(judge, "m", continued(7))  # the start went (ran after the load, or refused)
    with judge.hold("m", continued(8)):  # a continuation holds nothing
        refusal(judge, "m", continued(8))


def test_a_start_refused_while_held_releases_its_id() -> None:
    judge = SequencesBeforeLoad(SequenceRouting())
    with pytest.raises(RuntimeError), judge.hold("m", started("a")):
        raise RuntimeError("refused")
    refusal(judge, "m", continued("a"))


def test_why_an_evicted_models_sequence_ended_and_the_workers_hint_are_said() -> None:
    routing = SequenceRouting()
    why = "the model version serving it was unloaded or replaced"
    ended = OrderedDict([(7, why)])
    sequences = SimpleNamespace(close=lambda why: None, released=lambda: ended)
    routing.retire(SimpleNamespace(name="m", version=1, sequences=sequences))  # type: ignore[arg-type]
    judge = SequencesBeforeLoad(routing, unknown_hint="; hint")
    assert refusal(judge, "m", continued(7)).endswith(f"it is not live: {why}")
    assert refusal(judge, "m", continued(8)).endswith(f"it is not live: {NEVER_STARTED}; hint")


def test_early_refusals_series_are_labelled_by_the_config_last_read() -> None:
    early = EarlyRefusals()
    assert early.series("m") == Series()
    config = mc.ModelConfig()
    config.metric_tags["team"] = "vision"
    config.response_cache.enable = True
    early.describe("m", config)
    assert early.series("m") == Series({"team": "vision"}, cached=True)
    shown = series_labels("m", "1", early.series("m").tags)
    assert shown == {"model": "m", "version": "1", "_team": "vision"}
    early.forget("m")
    assert early.series("m") == Series()


def source(versions: list[int], **parameters: str) -> ModelSource:
    config = mc.ModelConfig(name="m")
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    where = "m/config.pbtxt"
    return ModelSource("m", Path("m"), config, {v: Path(f"m/{v}") for v in versions}, where)


def test_the_one_version_a_request_naming_none_reaches_is_known_from_the_config() -> None:
    assert unnamed_version(source([1, 2])) == 2  # no policy: the newest
    assert unnamed_version(source([1, 2, 3], traffic_weights="1:100,3:0")) == 1
    assert unnamed_version(source([1, 2], traffic_weights="2:5")) == 2
    assert unnamed_version(source([1, 2], shadow_version="1", shadow_fraction="0.5")) == 2  # no weights
    assert unnamed_version(source([1, 2], traffic_weights="1:50,2:50")) is None  # picked per request
    assert unnamed_version(source([1, 2], traffic_weights="3:100")) is None  # its load refuses it
    assert unnamed_version(source([])) is None


def test_an_unnamed_refusal_is_counted_in_the_version_routing_sends_it_to() -> None:
    served = {1: None, 2: None}
    assert counted_version(served, "", unnamed_to=1) == 1
    assert counted_version(served, "", unnamed_to=None) == 2  # not known: the newest
    assert counted_version(served, "", unnamed_to=5) == 2
    assert counted_version(served, "1", unnamed_to=2) == 1  # it names one
