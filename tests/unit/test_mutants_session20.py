"""The last two sessions' modules under mutation testing: a stream's frames held in order across a
lazy load (server/protocol/load_order.py), latest-frame-wins rules of a model not loaded
(server/models/frame_rules.py), a sample chunk's arrays (server/observability/sample_layout.py), an
ensemble's steps judged against the memory budget (server/models/ensemble_budget.py), a load's run
of zeros (server/models/first_run.py) and a lazy ensemble's plan checked from configs
(server/models/lazy_plans.py): the cases mutmut found untested (tests/MUTANTS.md, "Run of
2026-12-02 (twentieth session)"). Unit tests: no server; fake sessions; configs in tmp_path."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextvars import Context
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from google.protobuf import text_format

from batcher.sequence_types import ControlKind, ControlSpec, SequenceSpec, StateSpec
from protos import model_config_pb2 as mc
from server.backends.fault_backend import Session
from server.errors import OutgrowsMemoryBudget
from server.models.ensemble_budget import judge_steps
from server.models.first_run import FIRST_RUN_MAX_S, first_run, first_run_limit, zero_feed
from server.models.frame_rules import FrameRules, refused_for, version_rules
from server.models.lazy_plans import PlanCheck, StepModels, plan_refusal
from server.models.lazy_signatures import completed_config
from server.models.memory_budget import MemoryBudget
from server.models.repository import ModelSource, load_model_source
from server.models.sequence_config import SequenceModel
from server.models.versions import LOADING, READY, ModelEntry, ModelVersion
from server.observability.sample_layout import (
    AnyArray,
    bytes_tensor,
    chunk_arrays,
    exact_bytes,
    layout,
    split_values,
    stored_bytes,
)
from server.protocol.load_order import LoadOrder, Turn

# -- frame_rules --------------------------------------------------------------------------------


def _version(
    *, ensemble: bool = False, sequences: bool = False, wins: bool = False, ordered: bool = False
) -> ModelVersion:
    served = SimpleNamespace(
        ensemble=object() if ensemble else None,
        sequences=object() if sequences else None,
        latest_frame_wins=wins,
        preserve_ordering=ordered,
    )
    return cast(ModelVersion, served)


def test_a_loaded_version_says_what_it_is_when_latest_frame_wins_is_refused() -> None:
    assert refused_for(_version(ensemble=True)) == "an ensemble"
    assert refused_for(_version(sequences=True)) == "a sequence model"
    assert refused_for(_version(ensemble=True, sequences=True)) == "an ensemble"
    assert refused_for(_version()) == ""
    # Kept for its next load once evicted: the same words, and its setting.
    assert version_rules(_version(sequences=True)) == FrameRules(False, "a sequence model")
    assert version_rules(_version(ensemble=True)) == FrameRules(False, "an ensemble")
    assert version_rules(_version(wins=True)) == FrameRules(True, "")
    assert version_rules(_version(ordered=True)) == FrameRules(False, "", preserve_ordering=True)


# -- load_order ---------------------------------------------------------------------------------


class _CountingFuture(asyncio.Future[None]):
    """The frame before: counts the callbacks hooked on it."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks = 0

    def add_done_callback(self, fn: Callable[[Any], object], *, context: Context | None = None) -> None:
        self.hooks += 1
        super().add_done_callback(fn, context=context)


async def test_a_turn_with_nothing_ahead_or_all_done_waits_for_nothing() -> None:
    order = LoadOrder()
    first = order.enter("m")
    await first.wait()  # nothing before it
    first.admitted()
    second = order.enter("m")
    await second.wait()  # the one before it released already
    assert second.came


async def test_a_frame_said_admitted_twice_hooks_the_frame_before_it_once() -> None:
    # A queued frame says `admitted` again as it ends: one callback on the chain, not one a call.
    order = LoadOrder()
    before = _CountingFuture()
    turn = Turn(order, "m", before)
    turn.admitted()
    turn.admitted()
    assert before.hooks == 1 and not turn.future.done()
    before.set_result(None)
    await turn.future  # released by that one callback


# -- sample_layout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    outputs: Mapping[str, AnyArray]
    inputs: Mapping[str, AnyArray] | None = None
    time_ns: int = 0


def _objects(values: list[Any], shape: tuple[int, ...]) -> AnyArray:
    out = np.empty(shape, dtype=object)
    out.reshape(-1)[:] = values
    return out


def test_a_layout_is_the_names_kinds_and_shapes_past_the_rows() -> None:
    sample = _Sample(
        inputs={"a": np.zeros((2, 3, 4), np.float32), "t": _objects([b"x", b"y"], (2,))},
        outputs={"y": np.zeros((2, 5), np.int64)},
    )
    assert layout(sample) == (("in:a", "<f4", (3, 4)), ("in:t", "S", ()), ("out:y", "<i8", (5,)))
    # BYTES of any numpy form share a layout; numbers of another type or shape do not.
    fixed = _Sample(inputs={"t": np.array([b"abc"], "S3")}, outputs={"y": np.zeros((1,), np.float32)})
    text = _Sample(inputs={"t": np.array(["é"], "U1")}, outputs={"y": np.zeros((1,), np.float32)})
    assert layout(fixed) == layout(text) == (("in:t", "S", ()), ("out:y", "<f4", ()))
    assert layout(_Sample({"y": np.zeros((1, 2, 3))})) != layout(_Sample({"y": np.zeros((1, 3, 3))}))
    assert layout(_Sample({"y": np.zeros(1, np.int32)})) != layout(_Sample({"y": np.zeros(1, np.float32)}))


def test_a_chunk_keeps_each_samples_rows_and_time_and_the_load() -> None:
    run = [
        _Sample({"y": np.array([1.0, 2.0], np.float32)}, time_ns=11),
        _Sample({"y": np.array([3.0], np.float32)}, time_ns=22),
    ]
    arrays = chunk_arrays(run, load_ns=7)
    assert sorted(arrays) == ["load_ns", "out:y", "rows", "time_ns"]
    assert arrays["out:y"].tolist() == [1.0, 2.0, 3.0]
    for key, expected in (("rows", [2, 1]), ("time_ns", [11, 22]), ("load_ns", [7])):
        assert arrays[key].dtype == np.int64 and arrays[key].tolist() == expected


def test_zero_dimensional_outputs_are_one_row_each_and_no_outputs_no_rows() -> None:
    two = chunk_arrays([_Sample({"y": np.array(1.5)}), _Sample({"y": np.array(2.5)})], load_ns=0)
    assert two["out:y"].tolist() == [1.5, 2.5] and two["rows"].tolist() == [1, 1]
    one = chunk_arrays([_Sample({"y": np.array(1.5)})], load_ns=0)
    assert one["out:y"].shape == (1,) and one["rows"].tolist() == [1]
    inputs_only = chunk_arrays([_Sample({}, inputs={"x": np.zeros((3, 2))})], load_ns=0)
    assert inputs_only["rows"].tolist() == [0] and inputs_only["in:x"].shape == (3, 2)


def test_a_bytes_tensor_with_no_values_has_int64_lengths_of_its_shape() -> None:
    arrays = chunk_arrays([_Sample({"t": np.empty((1, 0), dtype=object)})], load_ns=0)
    assert arrays["len:out:t"].dtype == np.int64 and arrays["len:out:t"].shape == (1, 0)
    assert arrays["bytes:out:t"].dtype == np.uint8 and arrays["bytes:out:t"].size == 0
    assert bytes_tensor(arrays, "out:t").shape == (1, 0)


def test_values_and_lengths_that_disagree_are_refused_with_both_figures() -> None:
    with pytest.raises(ValueError, match=r"^the lengths add up to 5 bytes, the values hold 3$"):
        split_values(np.frombuffer(b"abc", np.uint8), np.array([2, 3], np.int64))
    with pytest.raises(ValueError, match=r"^the lengths add up to 3 bytes, the values hold 3$"):
        split_values(np.frombuffer(b"abc", np.uint8), np.array([4, -1], np.int64))  # a negative length
    empty = split_values(np.zeros(0, np.uint8), np.zeros((0,), np.int64))
    assert empty.shape == (0,) and empty.dtype == object
    with pytest.raises(ValueError):  # zip(strict=True): a length for every value
        exact_bytes(np.array([b"a", b"b"], "S1"), np.array([1, 1, 1], np.int64))


def test_bytes_values_of_every_buffer_type_are_counted_and_others_refused() -> None:
    values = _objects([bytearray(b"ab"), memoryview(b"cde"), "é", b""], (4,))
    assert stored_bytes(values) == 2 + 3 + 2 + 0 + 8 * 4
    with pytest.raises(TypeError, match=r"^BYTES values must be bytes or str, got int$"):
        stored_bytes(_objects([b"a", 3], (2,)))


def test_earlier_layouts_of_two_dimensional_bytes_tensors_read_back_in_shape() -> None:
    fixed = np.array([[b"a", b"bc"], [b"", b"d"]], "S2")
    alone = bytes_tensor({"in:t": fixed}, "in:t")  # fixed-width values only (trailing NULs lost)
    assert alone.shape == (2, 2) and alone.tolist() == [[b"a", b"bc"], [b"", b"d"]]
    lengths = np.array([[1, 3], [0, 2]], np.int64)  # with their lengths: the NULs padded back
    exact = bytes_tensor({"in:t": fixed, "len:in:t": lengths}, "in:t")
    assert exact.shape == (2, 2) and exact.tolist() == [[b"a", b"bc\0"], [b"", b"d\0"]]


# -- ensemble_budget ----------------------------------------------------------------------------


def _held(**sizes: int) -> MemoryBudget:
    """A 100-byte budget holding each step model loaded with its size."""
    budget = MemoryBudget(100)
    for name, size in sizes.items():
        budget.record(name, size, pinned=False, now=0.0)
    return budget


async def test_steps_are_judged_down_to_a_one_byte_budget_and_a_one_byte_step() -> None:
    def dormant(name: str) -> bool:
        return False

    one_byte = MemoryBudget(1)
    for name in ("a", "b"):
        one_byte.record(name, 1, pinned=False, now=0.0)
    with pytest.raises(OutgrowsMemoryBudget):  # 2 bytes together in a budget of 1
        await judge_steps(["ens"], ["a", "b"], one_byte, Path("/nonexistent"), dormant)
    with pytest.raises(OutgrowsMemoryBudget):  # 100 + 1 bytes: the 1-byte step counts
        await judge_steps(["ens"], ["a", "b"], _held(a=100, b=1), Path("/nonexistent"), dormant)
    # A step holding 0 bytes is no second step: the other's own load judges it alone.
    await judge_steps(["ens"], ["a", "b"], _held(a=200, b=0), Path("/nonexistent"), dormant)


# -- first_run ----------------------------------------------------------------------------------


def _config(text: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse('name: "m"\nbackend: "onnxruntime"\n' + text, config)
    return config


FP32_4 = 'input { name: "x" data_type: TYPE_FP32 dims: [4] }\n'  # 16 bytes a row


def test_the_zero_feed_is_bounded_by_every_input_together_and_at_the_bound_taken() -> None:
    config = _config("max_batch_size: 8\n" + FP32_4)
    assert zero_feed(config, max_bytes=16) is not None  # exactly the bound
    assert zero_feed(config, max_bytes=15) is None
    two = _config("max_batch_size: 8\n" + FP32_4 + FP32_4.replace('"x"', '"y"'))
    assert zero_feed(two, max_bytes=31) is None  # 16 + 16 together
    assert set(cast(dict[str, Any], zero_feed(two, max_bytes=32))) == {"x", "y"}


def test_the_zero_feed_skips_optional_inputs_and_takes_empty_and_unbatched_shapes() -> None:
    config = _config(
        "max_batch_size: 1\n"
        'input { name: "opt" data_type: TYPE_FP32 dims: [2] optional: true }\n'
        'input { name: "x" data_type: TYPE_INT64 dims: [0, 3] }\n'
    )
    feed = cast(dict[str, Any], zero_feed(config, max_bytes=1 << 20))
    assert list(feed) == ["x"] and feed["x"].shape == (1, 0, 3)  # max_batch_size 1: one row
    unbatched = cast(dict[str, Any], zero_feed(_config("max_batch_size: 0\n" + FP32_4), 1 << 20))
    assert unbatched["x"].shape == (4,)


def test_the_first_runs_limit_is_the_run_timeout_at_most_its_maximum() -> None:
    assert first_run_limit(0.0) == FIRST_RUN_MAX_S  # no watchdog
    assert first_run_limit(2.5) == 2.5
    assert first_run_limit(FIRST_RUN_MAX_S + 1) == FIRST_RUN_MAX_S


class _InlineExecutor(Executor):
    """Runs what it is given at once, and counts it: the session's own executor."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            done.set_exception(exc)
        return done


class _Session:
    """A fake instance: records the feeds it ran; fails, or blocks until abandoned, if told to."""

    def __init__(self, *, fail: Exception | None = None, block: bool = False) -> None:
        self.executor: Executor = _InlineExecutor()
        self.feeds: list[tuple[dict[str, Any], bool]] = []
        self.fail, self.abandoned = fail, threading.Event()
        if block:
            self.executor = ThreadPoolExecutor(1)

    def run_blocking(self, inputs: dict[str, Any], *, log_failure: bool = True) -> dict[str, Any]:
        self.feeds.append((dict(inputs), log_failure))
        if isinstance(self.executor, ThreadPoolExecutor):
            self.abandoned.wait()  # a run that never ends by itself
        if self.fail is not None:
            raise self.fail
        return {}

    def abandon(self) -> None:
        self.abandoned.set()


async def _never_renewed(index: int) -> Session:
    raise AssertionError(f"instance {index} renewed")


async def test_the_first_run_goes_through_each_sessions_own_executor_unlogged() -> None:
    sessions = [_Session(), _Session()]
    config = _config("max_batch_size: 8\n" + FP32_4)
    await first_run(config, cast(list[Session], sessions), 1 << 20, renew=_never_renewed)
    for session in sessions:
        assert cast(_InlineExecutor, session.executor).submitted == 1
        [(feed, log_failure)] = session.feeds
        assert list(feed) == ["x"] and log_failure is False


async def test_a_sequence_models_first_run_is_one_requests_sequence_on_the_graphs_axes() -> None:
    start = ControlSpec("START", ControlKind.START, np.dtype(np.int32))
    state = StateSpec("s_in", "s_out", np.full((1, 2), 5.0, np.float32))
    sequence = SequenceModel(SequenceSpec((start,), (state,), 1.0), {"s_in": 1})
    session = _Session()
    config = _config("max_batch_size: 8\n" + FP32_4)
    await first_run(config, cast(list[Session], [session]), 1 << 20, sequence, renew=_never_renewed)
    [(feed, _)] = session.feeds
    assert sorted(feed) == ["START", "s_in", "x"]
    assert feed["START"].tolist() == [[1]] and feed["START"].dtype == np.int32  # one row, started
    assert feed["s_in"].shape == (2, 1) and feed["s_in"].tolist() == [[5.0], [5.0]]  # batch axis 1


async def test_no_first_run_and_why_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="server.models.first_run")
    session = _Session()
    config = _config("max_batch_size: 8\n" + 'input { name: "t" data_type: TYPE_STRING dims: [1] }\n')
    await first_run(config, cast(list[Session], [session]), 1 << 20, renew=_never_renewed)
    assert session.feeds == []
    assert [r.getMessage() for r in caplog.records] == [
        "model m: no first run in its load (model_warmup, or no safe zero input)"
    ]


async def test_a_failed_first_run_is_one_info_line_naming_the_model_and_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="server.models.first_run")
    config = _config("max_batch_size: 8\n" + FP32_4)
    sessions = [_Session(fail=RuntimeError("boom")), _Session()]
    await first_run(config, cast(list[Session], sessions), 1 << 20, renew=_never_renewed)
    assert [r.getMessage() for r in caplog.records] == [
        "model m: first run of zeros failed, its footprint may be counted short: boom"
    ]
    assert sessions[1].feeds == []  # one measure is enough to say it failed


async def test_a_first_run_past_its_limit_is_abandoned_and_its_instance_renewed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="server.models.first_run")
    config = _config("max_batch_size: 8\n" + FP32_4)
    slow, fresh = _Session(block=True), _Session()
    sessions = cast(list[Session], [_Session(), slow])

    async def renew(index: int) -> Session:
        return cast(Session, fresh)

    try:
        # The run blocks until abandoned: it times out whatever the limit (no timing asserted).
        await first_run(config, sessions, 1 << 20, renew=renew, limit_s=0.01)
    finally:
        slow.abandon()
        cast(ThreadPoolExecutor, slow.executor).shutdown(wait=True)
    assert slow.abandoned.is_set() and sessions[1] is cast(Session, fresh)
    assert [r.getMessage() for r in caplog.records] == [
        "model m: first run of zeros took longer than 0.01 s: stopped, instance 1 replaced; its "
        "footprint is measured without that run (the zero input may take a path real inputs do "
        "not: give the model a model_warmup with real samples)"
    ]


# -- lazy_plans ---------------------------------------------------------------------------------

_STEP = (
    'backend: "identity"\nmax_batch_size: 8\n{policy}'
    'input {{ name: "X" data_type: TYPE_{kind} dims: [4] }}\n'
    'output {{ name: "Y" data_type: TYPE_{kind} dims: [4] }}\n'
)
_ENSEMBLE = (
    'platform: "ensemble"\nmax_batch_size: 8\n'
    'input { name: "X" data_type: TYPE_FP32 dims: [4] }\n'
    'output { name: "Y" data_type: TYPE_FP32 dims: [4] }\n'
    'ensemble_scheduling { step { model_name: "%s" model_version: %d '
    'input_map { key: "X" value: "X" } output_map { key: "Y" value: "Y" } } }\n'
)


def _model(root: Path, name: str, text: str, versions: tuple[int, ...] = (1,)) -> None:
    for number in versions:
        (root / name / str(number)).mkdir(parents=True, exist_ok=True)
    (root / name / "config.pbtxt").write_text(text)


def _step(
    root: Path, name: str = "step", kind: str = "FP32", versions: tuple[int, ...] = (1,), policy: str = ""
) -> None:
    _model(root, name, _STEP.format(kind=kind, policy=policy), versions)


def _ensemble(root: Path, name: str, step: str, version: int = -1) -> ModelSource:
    _model(root, name, _ENSEMBLE % (step, version))
    return load_model_source(root, name)


class _Completions:
    """`complete` that records which versions it completed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, source: ModelSource, number: int) -> mc.ModelConfig:
        self.calls.append((source.name, number))
        return completed_config(source, number, 8)


def _lazy(*names: str) -> StepModels:
    return StepModels({}, frozenset(names))


def test_step_models_are_the_ready_ones_and_the_lazy_dormant_ones() -> None:
    config = mc.ModelConfig(name="r")
    version = cast(ModelVersion, SimpleNamespace(config=config))
    entries = [
        ModelEntry("r", versions={3: version}, state=READY, order=[3]),
        ModelEntry("loading", versions={1: version}, state=LOADING, order=[1]),
        ModelEntry("ready_without_versions", state=READY),
        ModelEntry("dormant", dormant=True),
        ModelEntry("dormant_not_lazy", dormant=True),
    ]
    models = StepModels.of(entries, ["dormant", "not_an_entry", "r"])
    assert dict(models.loaded) == {"r": (3, {3: config})}
    assert models.lazy == frozenset({"dormant"})


def test_a_step_runs_the_version_it_names_or_the_newest(tmp_path: Path) -> None:
    fp16 = text_format.Parse(_STEP.format(kind="FP16", policy=""), mc.ModelConfig(name="step"))
    fp32 = text_format.Parse(_STEP.format(kind="FP32", policy=""), mc.ModelConfig(name="step"))
    loaded = StepModels({"step": (2, {1: fp16, 2: fp32})}, frozenset())
    newest = _ensemble(tmp_path, "ens", "step")
    assert plan_refusal(newest, tmp_path, loaded, _Completions()) is None  # version 2, FP32
    named = _ensemble(tmp_path, "ens1", "step", 1)
    why = plan_refusal(named, tmp_path, loaded, _Completions())
    assert why is not None and "TYPE_FP16" in why
    absent = _ensemble(tmp_path, "ens3", "step", 3)
    assert plan_refusal(absent, tmp_path, loaded, _Completions()) == (
        f"{absent.where}: ensemble 'ens3' step 1 (model 'step'): version 3 is not served"
    )
    assert plan_refusal(absent, tmp_path, StepModels({}, frozenset()), _Completions()) == (
        f"{absent.where}: ensemble 'ens3' step 1 (model 'step'): not ready"
    )


def test_a_lazy_step_is_completed_at_the_version_its_load_would_serve(tmp_path: Path) -> None:
    _step(tmp_path, versions=(1, 3), policy="version_policy { all {} }\n")
    complete = _Completions()
    assert plan_refusal(_ensemble(tmp_path, "ens", "step"), tmp_path, _lazy("step"), complete) is None
    assert plan_refusal(_ensemble(tmp_path, "ens1", "step", 1), tmp_path, _lazy("step"), complete) is None
    assert complete.calls == [("step", 3), ("step", 1)]
    absent = _ensemble(tmp_path, "ens2", "step", 2)
    assert plan_refusal(absent, tmp_path, _lazy("step"), complete) == (
        f"{absent.where}: ensemble 'ens2' step 1 (model 'step'): version 2 is not served"
    )


def test_a_nested_lazy_ensemble_is_planned_first_and_a_cycle_named(tmp_path: Path) -> None:
    _step(tmp_path, "good")
    _step(tmp_path, "bad", kind="FP16")
    _ensemble(tmp_path, "inner_good", "good")
    inner_bad = _ensemble(tmp_path, "inner_bad", "bad")
    lazy = _lazy("good", "bad", "inner_good", "inner_bad", "outer", "other")
    complete = _Completions()
    assert plan_refusal(_ensemble(tmp_path, "outer", "inner_good"), tmp_path, lazy, complete) is None
    assert complete.calls == [("good", 1)]  # the nested ensemble's step, not the ensemble
    outer_bad = _ensemble(tmp_path, "outer_bad", "inner_bad")
    why = plan_refusal(outer_bad, tmp_path, lazy, complete)
    assert why is not None
    assert why.startswith(
        f"{outer_bad.where}: ensemble 'outer_bad' step 1 (model 'inner_bad'): "
        f"{inner_bad.where}: ensemble 'inner_bad' step 1 (model 'bad'): "
    ), why
    assert "TYPE_FP16" in why
    # outer -> other -> outer: refused where the chain comes back.
    outer = _ensemble(tmp_path, "outer", "other")
    other = _ensemble(tmp_path, "other", "outer")
    assert plan_refusal(outer, tmp_path, lazy, complete) == (
        f"{outer.where}: ensemble 'outer' step 1 (model 'other'): "
        f"{other.where}: ensemble 'other' step 1 (model 'outer'): ensembles use each other"
    )


def test_a_step_whose_files_fail_with_no_message_is_named_by_its_error(tmp_path: Path) -> None:
    _step(tmp_path)

    def unreadable(source: ModelSource, number: int) -> mc.ModelConfig:
        raise ValueError()

    ensemble = _ensemble(tmp_path, "ens", "step")
    assert plan_refusal(ensemble, tmp_path, _lazy("step"), unreadable) == "ValueError"


async def test_the_plan_check_completes_a_steps_files_once_until_they_change(tmp_path: Path) -> None:
    _step(tmp_path)
    complete = _Completions()
    check = PlanCheck(tmp_path, complete)
    ensemble = _ensemble(tmp_path, "ens", "step")
    dormant = [ModelEntry("step", dormant=True)]
    assert await check.refusal(ensemble, dormant, ["step"]) is None
    assert await check.refusal(ensemble, dormant, ["step"]) is None
    assert complete.calls == [("step", 1)]  # kept: completing reads its graph
    _step(tmp_path, kind="FP16")  # new files (another config): completed again, and judged by them
    (tmp_path / "step" / "config.pbtxt").touch()
    why = await check.refusal(ensemble, dormant, ["step"])
    assert why is not None and "TYPE_FP16" in why and complete.calls == [("step", 1), ("step", 1)]
    assert await check.refusal(ensemble, [], []) == (
        f"{ensemble.where}: ensemble 'ens' step 1 (model 'step'): not ready"
    )
