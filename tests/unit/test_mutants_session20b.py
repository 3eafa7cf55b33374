"""The code changed later on 2026-12-02 under mutation testing: a lazy `preserve_ordering` model's
frames chained while it is not loaded (server/protocol/stream_order.py), the weights replayed from
a generation's change log (server/models/rollout_replay.py) and carried through an eviction
(server/models/rollout_carry.py), cycles of ensembles (server/models/ensemble_config.py) and the
sample writer's queued bytes (server/observability/sampling_writer.py): the cases mutmut found
untested (tests/MUTANTS.md, "Run of 2026-12-02 (twentieth session, later)"). Unit tests: no
server."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.models.ensemble_config import cycle_refusals, ensemble_cycle, steps_of
from server.models.frame_rules import FrameRules
from server.models.rollout import Rollout
from server.models.rollout_carry import carried_weights, skipped_rollbacks
from server.models.rollout_ops import OperatorChange, change_file_name, claim, generation, log_key
from server.models.rollout_replay import logged_weights
from server.models.rollout_snapshot import Snapshot, snapshot_file_name, write_snapshot
from server.models.rollout_state import ModelRollout
from server.models.traffic import parse_policy
from server.models.versions import ModelEntry, ModelVersion
from server.observability.sampling_writer import Sample, SampleWriter
from server.protocol.stream_order import AllOf, StreamOrder
from tests.support.rollout_workers import POLICY, Worker, model_entry
from tests.unit.test_sampling_h19b import HeldSave, Source, held, strings

__all__ = ["held"]  # the fixture, used here

UNLOADED = FrameRules(False, "", preserve_ordering=True)  # a lazy preserve_ordering model's rules

# -- stream_order --------------------------------------------------------------------------------


def _served(name: str, version: int) -> ModelVersion:
    return cast(ModelVersion, SimpleNamespace(name=name, version=version, preserve_ordering=True))


async def test_a_frame_not_loaded_waits_once_for_the_frame_every_chain_of_the_model_ends_in() -> None:
    """After a frame read while not loaded, both versions' chains end in it: the next such frame
    waits for that one event, not for it once per chain."""
    order = StreamOrder()
    request = pb.ModelInferRequest(model_name="p")
    order.place(request, _served("p", 1), ordered=False)
    order.place(request, _served("p", 2), ordered=False)
    first, waiting = order.place(request, UNLOADED, ordered=False)
    assert isinstance(first, AllOf)
    after, _ = order.place(request, UNLOADED, ordered=False)
    assert after is waiting


async def test_a_frame_not_loaded_waits_for_no_chain_already_answered() -> None:
    order = StreamOrder()
    request = pb.ModelInferRequest(model_name="p")
    _, v1 = order.place(request, _served("p", 1), ordered=False)
    _, v2 = order.place(request, _served("p", 2), ordered=False)
    assert v1 is not None and v2 is not None
    v1.set()
    after, _ = order.place(request, UNLOADED, ordered=False)
    assert after is v2  # the one answer still due, alone
    _, waiting = order.place(request, UNLOADED, ordered=False)  # every chain of the model ends in it now
    assert waiting is not None
    v2.set()
    waiting.set()
    assert order.place(request, UNLOADED, ordered=False)[0] is None  # every answer made: none to wait for


# -- rollout_replay: the replay against a worker loading the model (Rollout and RolloutShare) -----

GEN = generation(cast(ModelEntry, model_entry()))
NO_POLICY: dict[str, str] = {}


def _snapshot(seq: int, weights: dict[int, int] | None, gen: str = GEN, model: str = "m") -> Snapshot:
    pairs = None if weights is None else tuple(sorted(weights.items()))
    return Snapshot(model, gen, seq, pairs, "admin", (), False, False, (), ())


def _change(
    seq: int, kind: str, weights: dict[int, int] | None = None, versions: tuple[int, ...] = ()
) -> OperatorChange:
    pairs = tuple(sorted((weights or {}).items()))
    return OperatorChange("m", GEN, seq, 3, kind, pairs, versions, "drill", 0.0)


def _loaded_weights(directory: Path, entry: SimpleNamespace) -> dict[int, int] | None:
    """The weights a worker loading `entry` now routes by: its config's, then the log applied."""
    return Worker(1, directory, entry).weights()


def _config_weights(entry: SimpleNamespace) -> dict[int, int] | None:
    return None if not entry.versions[1].config.parameters else {1: 50, 2: 50}


def _replayed(directory: Path, entry: SimpleNamespace) -> dict[int, int] | None:
    gen = generation(cast(ModelEntry, entry))
    return logged_weights(directory, "m", gen, _config_weights(entry), set(entry.versions))


STARTS: list[dict[int, int] | None] = [
    None,
    {1: 100},
    {1: 100, 2: 0},
    {1: 0, 2: 100},
    {1: 50, 2: 50},
    {1: 1, 2: 1},
    {1: 1, 2: 0},
    {1: 0, 2: 1, 3: 1},
]
CHANGES: list[tuple[str, dict[int, int] | None, tuple[int, ...]]] = [
    ("weights", {3: 100}, ()),
    ("weights", {1: 0, 2: 0}, ()),
    ("weights", {1: 1, 2: 0}, ()),
    ("weights", {2: 1}, ()),
    ("weights", {1: 0, 2: 1, 3: 1}, ()),
    ("weights", {}, ()),
    ("promote", None, (1,)),
    ("promote", None, (2, 1)),
    ("promote", None, (3,)),
    ("promote", None, (3, 1)),
    ("promote", None, ()),
    ("rollback", None, (1,)),
    ("rollback", None, (2,)),
    ("auto", None, (2,)),
    ("rollback", None, (3,)),
    ("rollback", None, (1, 2)),
    ("auto", None, (2, 1)),
    ("rollback", None, ()),
]


def test_each_change_moves_the_replayed_weights_as_a_loading_workers_rollout_moves_them(
    tmp_path: Path,
) -> None:
    """From every kind of state (a snapshot sets it: weights with zeros, ones, a version missing,
    none; never all 0, which no state writes), each kind of change, refused ones included: the
    replay ends where the worker's state does (Rollout.set_weights, promote, follow:
    RolloutShare.catch_up)."""
    cases = 0
    for versions in ((1, 2), (1, 2, 3)):
        for policy in (POLICY, NO_POLICY):
            entry = model_entry(policy=policy, versions=versions)
            gen = generation(cast(ModelEntry, entry))
            for start in STARTS:
                if start is not None and not set(start) <= set(versions):
                    continue
                for kind, weights, targets in CHANGES:
                    directory = tmp_path / str(cases)
                    directory.mkdir()
                    write_snapshot(directory, _snapshot(1, start, gen), log_key("m", gen))
                    change = OperatorChange("m", gen, 2, 3, kind, tuple(sorted((weights or {}).items())),
                                            targets, "drill", 0.0)  # fmt: skip
                    assert claim(directory, change)
                    case = (versions, bool(policy), start, kind, weights, targets)
                    assert _replayed(directory, entry) == _loaded_weights(directory, entry), case
                    cases += 1
    assert cases > 400


def _both(directory: Path, entry: SimpleNamespace | None = None) -> dict[int, int] | None:
    """The replay's weights, asserted equal to the loading worker's."""
    entry = entry or model_entry()
    replayed = _replayed(directory, entry)
    assert replayed == _loaded_weights(directory, entry)
    return replayed


def test_a_snapshot_at_the_first_missing_change_is_taken(tmp_path: Path) -> None:
    """Change 1's file compacted away and the snapshot after change 1: its weights."""
    write_snapshot(tmp_path, _snapshot(1, {1: 0, 2: 100}), log_key("m", GEN))
    assert _both(tmp_path) == {1: 0, 2: 100}


def test_the_change_after_the_snapshot_is_applied_then_the_next_one(tmp_path: Path) -> None:
    write_snapshot(tmp_path, _snapshot(3, {1: 0, 2: 100}), log_key("m", GEN))
    assert claim(tmp_path, _change(4, "weights", {1: 30, 2: 70}))
    assert _both(tmp_path) == {1: 30, 2: 70}
    assert claim(tmp_path, _change(5, "promote", versions=(1,)))
    assert _both(tmp_path) == {1: 100}


def test_an_unreadable_change_and_one_naming_another_are_passed_over(tmp_path: Path) -> None:
    (tmp_path / change_file_name("m", GEN, 1)).write_text("not json", encoding="utf-8")
    assert claim(tmp_path, _change(2, "weights", {1: 20, 2: 80}))
    assert _both(tmp_path) == {1: 20, 2: 80}
    # Change 3's file holds a change numbered 4: passed over, as the workers do.
    misnamed = _change(4, "weights", {1: 90, 2: 10})
    (tmp_path / change_file_name("m", GEN, 3)).write_text(json.dumps(asdict(misnamed)), encoding="utf-8")
    assert _both(tmp_path) == {1: 20, 2: 80}
    assert claim(tmp_path, _change(4, "weights", {1: 60, 2: 40}))
    assert _both(tmp_path) == {1: 60, 2: 40}


def test_a_snapshot_of_another_generation_or_model_under_the_logs_name_is_not_used(tmp_path: Path) -> None:
    key = log_key("m", GEN)
    write_snapshot(
        tmp_path, _snapshot(2, {1: 0, 2: 100}, gen=generation(cast(ModelEntry, model_entry("b")))), key
    )
    assert _both(tmp_path) == {1: 50, 2: 50}
    write_snapshot(tmp_path, _snapshot(2, {1: 0, 2: 100}, model="n"), key)
    assert _both(tmp_path) == {1: 50, 2: 50}
    (tmp_path / snapshot_file_name(key)).write_text("[]", encoding="utf-8")  # no snapshot at all
    assert _both(tmp_path) == {1: 50, 2: 50}


def test_a_snapshot_of_a_model_without_a_policy_has_no_weights_and_one_with_has_its_own(
    tmp_path: Path,
) -> None:
    entry = model_entry(policy=NO_POLICY)
    gen = generation(cast(ModelEntry, entry))
    (tmp_path / "none").mkdir()
    write_snapshot(tmp_path / "none", _snapshot(2, None, gen), log_key("m", gen))
    assert _both(tmp_path / "none", entry) is None
    (tmp_path / "set").mkdir()
    write_snapshot(tmp_path / "set", _snapshot(2, {1: 100, 2: 0}, gen), log_key("m", gen))
    assert _both(tmp_path / "set", entry) == {1: 100, 2: 0}


# -- rollout_carry: the weights an eviction keeps, as the early judge predicts and Rollout carries ---


def _evicted(
    weights: dict[int, int] | None, policy: Mapping[str, str] = POLICY
) -> tuple[Rollout, ModelRollout]:
    """One process's rollout whose model, its weights set to `weights` by an operator (None: as
    its config's), was evicted: (the rollout, the state it keeps)."""
    rollout = Rollout(clock=lambda: 100.0, wall=lambda: 0.0)
    entry = cast(ModelEntry, model_entry(policy=policy))
    rollout.state(entry)
    if weights is not None:
        rollout.set_weights(entry, weights)
    rollout.hold("m")
    kept = rollout.kept("m")
    assert kept is not None
    return rollout, kept


def _predicted_and_loaded(
    weights: dict[int, int] | None,
    policy: Mapping[str, str] = POLICY,
    versions: tuple[int, ...] = (1, 2),
    reloaded: Mapping[str, str] | None = None,
) -> tuple[dict[int, int] | None, dict[int, int] | None]:
    """(carried_weights of the kept state for the next load, the weights that load routes by)."""
    rollout, kept = _evicted(weights, policy)
    entry = model_entry(policy=policy if reloaded is None else reloaded, versions=versions)
    config = entry.versions[1].config
    files = {n: v.fingerprint for n, v in entry.versions.items()}
    predicted = carried_weights(kept, parse_policy(config, "model 'm'", entry.versions), files)
    return predicted, rollout.state(cast(ModelEntry, entry)).weights


def test_the_weights_kept_through_an_eviction_are_those_the_reload_routes_by() -> None:
    for weights in ({1: 0, 2: 100}, {1: 1, 2: 0}, {2: 7}):
        predicted, loaded = _predicted_and_loaded(weights)
        assert predicted == loaded == weights
    predicted, loaded = _predicted_and_loaded(None)  # the config's, kept: the same either way
    assert predicted == loaded == {1: 50, 2: 50}


def test_a_reload_of_other_versions_or_another_policy_routes_by_its_configs_weights() -> None:
    # A version added beside the ones the weights name (their files the same): carried, as a
    # reload in one process carries them (rollout_carry.kept_serving).
    predicted, loaded = _predicted_and_loaded({1: 0, 2: 100}, versions=(1, 2, 3))
    assert predicted == loaded == {1: 0, 2: 100}
    other = {**POLICY, "traffic_weights": "1:20,2:80"}
    predicted, loaded = _predicted_and_loaded({1: 0, 2: 100}, reloaded=other)
    assert predicted is None and loaded == {1: 20, 2: 80}


def test_a_model_without_a_policy_keeps_none_and_its_reload_routes_to_the_newest() -> None:
    predicted, loaded = _predicted_and_loaded(None, policy=NO_POLICY)
    assert predicted is None and loaded is None


def test_kept_weights_routing_nothing_are_not_carried() -> None:
    files = {1: ("a", 1), 2: ("a", 2)}
    old = cast(
        ModelRollout,
        SimpleNamespace(
            config_policy=None, weights={1: 0, 2: 0}, rolled_back=set(), shadow=None, version_files=files
        ),
    )
    assert carried_weights(old, None, files) is None


def test_carry_logs_what_it_carries_and_keeps_the_logged_rollback_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="server.models.rollout_carry")
    rollout, kept = _evicted({1: 0, 2: 100})
    kept.log_rollbacks[(2, 0, "manual")] = 3
    state = rollout.state(cast(ModelEntry, model_entry()))
    assert state.log_rollbacks == {(2, 0, "manual"): 3} and state.log_rollbacks is not kept.log_rollbacks
    said = [r.getMessage() for r in caplog.records if r.name == "server.models.rollout_carry"]
    assert said == [
        "rollout: model m loaded again, the versions its weights name unchanged: weights 1:0,2:100 "
        "(admin) carried over"
    ]
    caplog.clear()
    rollout, _ = _evicted(None)  # the config's weights: carried, nothing to say
    rollout.state(cast(ModelEntry, model_entry()))
    assert not [r for r in caplog.records if r.name == "server.models.rollout_carry"]
    rollout, _ = _evicted({1: 0, 2: 100})  # version 2, which the weights name, from other files
    state = rollout.state(cast(ModelEntry, model_entry("b")))
    assert state.weights == {1: 50, 2: 50} and state.source == "config"
    assert not [r for r in caplog.records if r.name == "server.models.rollout_carry"]


SHADOWED = {"traffic_weights": "1:100,2:0", "shadow_version": "2", "shadow_fraction": "0.5"}


def _restored(tmp_path: Path, shadow_stopped: bool) -> ModelRollout:
    """A worker loading a model shadowing version 2, the log's snapshot after change 2 in place."""
    entry = model_entry(policy=SHADOWED)
    gen = generation(cast(ModelEntry, entry))
    snapshot = Snapshot(
        "m", gen, 2, ((1, 60), (2, 40)), "admin", (2,), shadow_stopped, True, (), ((2, 0, "manual", 1),)
    )
    write_snapshot(tmp_path, snapshot, log_key("m", gen))
    worker = Worker(1, tmp_path, entry)
    return worker.rollout.state(worker.index["m"])


def test_a_restored_snapshot_stops_the_shadow_only_when_it_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.models.rollout_carry")
    (tmp_path / "on").mkdir()
    state = _restored(tmp_path / "on", shadow_stopped=False)
    assert state.shadow is not None and state.shadow.policy.fraction == 0.5
    assert state.shadow_promoted is True and state.weights == {1: 60, 2: 40} and state.log_seq == 2
    said = [r.getMessage() for r in caplog.records if r.name == "server.models.rollout_carry"]
    assert said == ["rollout: model m took the workers' state after change 2: weights 1:60,2:40 (admin)"]
    (tmp_path / "off").mkdir()
    state = _restored(tmp_path / "off", shadow_stopped=True)
    assert state.shadow is not None and state.shadow.policy.fraction == 0


def test_the_skipped_rollbacks_are_those_counted_in_the_snapshot_and_not_in_the_state() -> None:
    snapshot = Snapshot("m", GEN, 4, None, "rollback", (), False, False, (),
                        ((2, 0, "manual", 1), (2, 1, "auto", 2), (3, 0, "auto", 2)))  # fmt: skip
    state = cast(ModelRollout, SimpleNamespace(log_rollbacks={(3, 0, "auto"): 2}))
    # Worker 1: worker 0's rollbacks are "shared" ones, its own keep their kind.
    assert skipped_rollbacks(state, snapshot, 1) == {(2, "shared"): 1, (2, "auto"): 2}


# -- ensemble_config: the steps of ensembles, cycles --------------------------------------------


def _ensemble(*steps: str) -> mc.ModelConfig:
    config = mc.ModelConfig(platform="ensemble")
    for step in steps:
        config.ensemble_scheduling.step.add(model_name=step)
    return config


class CountedReads(dict[str, mc.ModelConfig]):
    """Configs that count each model's reads by `get`."""

    def __init__(self, configs: Mapping[str, mc.ModelConfig]) -> None:
        super().__init__(configs)
        self.reads: Counter[str] = Counter()

    def get(self, key: str, default: object = None) -> Any:
        self.reads[key] += 1
        return super().get(key, default)


def test_the_steps_of_nested_ensembles_past_a_plain_step_and_none_of_those_asked() -> None:
    configs = {
        "e": _ensemble("f", "m"),  # "m" is taken from the list first: a plain model, nothing more
        "f": _ensemble("g", "missing"),
        "g": _ensemble("m"),
        "m": mc.ModelConfig(backend="identity"),
    }
    assert steps_of({"e"}, configs) == {"f", "g", "m", "missing"}
    assert steps_of({"e", "f"}, configs) == {"g", "m", "missing"}  # the names asked are not steps
    assert steps_of({"m", "unknown"}, configs) == set()


def test_a_cycle_is_found_past_a_step_that_is_the_ensemble_itself_or_one_seen() -> None:
    configs = {"a": _ensemble("a", "x", "x", "b"), "b": _ensemble("a"), "x": _ensemble("m")}
    assert ensemble_cycle("a", configs) == ["a", "b", "a"]


def test_each_ensemble_is_read_once_however_many_steps_lead_to_it() -> None:
    configs = CountedReads({"a": _ensemble("x", "y", "x"), "y": _ensemble("x"), "x": _ensemble("m")})
    assert ensemble_cycle("a", configs) is None
    assert configs.reads["x"] == 1


def test_a_cycles_refusal_in_full() -> None:
    configs = {"a": _ensemble("b"), "b": _ensemble("a")}
    assert cycle_refusals(configs) == {
        name: f"ensemble '{name}' is in a cycle of ensembles: {name} -> {other} -> {name} (an ensemble "
        "cannot reach itself through its steps; change a step in one of their config.pbtxt)"
        for name, other in (("a", "b"), ("b", "a"))
    }


# -- sampling_writer: a source's pending count ---------------------------------------------------


def test_samples_written_before_close_gives_up_are_not_counted_lost(tmp_path: Path, held: HeldSave) -> None:
    writer = SampleWriter(tmp_path, 256 << 20, 1024, 64 << 20, save=held, chunk_age_s=0)
    source = Source()
    tensor = strings([b"v"], (1, 1))
    held.release.set()
    assert writer.put(Sample(source, {"X": tensor}, {"Y": tensor}, 0, 18))
    assert writer.flush(30) and source.written == 1
    held.release.clear()
    held.entered.clear()
    assert writer.put(Sample(source, {"X": tensor}, {"Y": tensor}, 0, 18))
    assert held.entered.wait(30)
    writer.close(0.05)  # the thread is held: it cannot finish in time
    assert (source.written, source.lost_count) == (1, 1)
