"""What a client sees while the server starts (server/models/control.py `RepositoryControl.start`,
server/models/manager.py `all_ready`, `resolve`).

Before, ServerReady was true on the empty index right after the port opened and each time the
models loaded so far were ready (it flapped ~35 times over 300 models), and a request for a model
the start had not reached yet was NOT_FOUND, which no client retries. Now every model of the
repository is listed before the first load (those to load LOADING, answered UNAVAILABLE "not
ready (loading: ...)"), and ServerReady stays false until the start-up load has ended.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import grpc
import onnxruntime as ort
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.backends.instance_groups import plan_instances
from server.errors import ModelNotFound, ModelNotReady
from server.models.control import NOT_CHOSEN, RepositoryControl
from server.models.lazy import NOT_LOADED, ModelLoads
from server.models.manager import ModelManager
from server.models.repository import ModelSource
from server.models.versions import LOADING, READY, UNAVAILABLE
from server.protocol.calls import CallTracker, StreamLimits
from server.protocol.servicer import InferenceServicer
from server.settings import ServerSettings
from tests.support.slow_steps import one_step_ensemble, slow_identity, write_repository

LAZY = 'parameters { key: "lazy_load" value: { string_value: "true" } }'


class SeenAtEachLoad(ModelLoads):
    """ModelLoads noting, as each load of the start begins, what a client would be told then."""

    def __init__(self, manager: ModelManager, root: Path, watched: list[str]) -> None:
        super().__init__(manager, root, 0, one_time_costs=lambda: None, runs=manager.runs)
        self._watched = watched
        self.seen: list[dict[str, Any]] = []

    async def load(self, name: str, source: ModelSource | None = None, keep_unchanged: bool = False) -> None:
        manager = self._manager
        answers: dict[str, str] = {}
        for model in self._watched:
            try:
                manager.resolve(model)
                answers[model] = "OK"
            except ModelNotFound:
                answers[model] = "NOT_FOUND"
            except ModelNotReady as exc:
                answers[model] = f"UNAVAILABLE: {exc}"
        states = {entry.name: entry.state for entry in manager.entries()}
        ready = manager.all_ready
        self.seen.append({"load": name, "server_ready": ready, "index": states, "answers": answers})
        await super().load(name, source, keep_unchanged)


def start_parts(
    repo: Path, tmp_path: Path, watched: list[str], **settings: Any
) -> tuple[ModelManager, SeenAtEachLoad, RepositoryControl]:
    """The manager, loads and control as SluicewayServer makes them."""
    server_settings = ServerSettings(cache_dir=tmp_path / "cache", **settings)
    manager = ModelManager(repo, server_settings, lambda name, ready: None)
    loads = SeenAtEachLoad(manager, repo, watched)
    manager.on_demand = loads
    return manager, loads, RepositoryControl(repo, server_settings, manager, loads)


def repository(tmp_path: Path) -> Path:
    """a, b, c (identity), ens over c, and lazy lz."""
    configs = {name: slow_identity(name, 0) for name in ("a", "b", "c")}
    configs["ens"] = one_step_ensemble("ens", "c")
    configs["lz"] = slow_identity("lz", 0, LAZY)
    return write_repository(tmp_path / "repo", configs)


async def test_server_ready_stays_false_and_every_model_is_listed_throughout_the_start_up_load(
    tmp_path: Path,
) -> None:
    names = ["a", "b", "c", "ens", "lz"]
    manager, loads, control = start_parts(repository(tmp_path), tmp_path, names)
    assert not manager.all_ready  # the empty index: it had been true
    try:
        await control.start()
        assert [seen["load"] for seen in loads.seen] == ["a", "b", "c", "ens"]  # lz: listed, not loaded
        for seen in loads.seen:
            assert seen["server_ready"] is False, seen  # it had been true between two loads
            assert set(seen["index"]) == set(names), seen  # every model from the first load on
            for model, answer in seen["answers"].items():
                assert answer != "NOT_FOUND", seen
                if model != "lz" and seen["index"][model] != READY:
                    assert answer.startswith(f"UNAVAILABLE: model '{model}' is not ready (loading: "), seen
        first = loads.seen[0]
        assert first["index"]["ens"] == LOADING
        turn = "waiting for its turn in the start-up load"
        assert first["answers"]["ens"] == f"UNAVAILABLE: model 'ens' is not ready (loading: {turn})"
        assert manager.entry("lz").state == UNAVAILABLE and manager.entry("lz").reason == NOT_LOADED
        assert not manager.all_ready  # until the app has ended its start (then health "" too)
        manager.start_load_ended()
        assert manager.all_ready
        with pytest.raises(ModelNotFound):  # a model not in the repository: NOT_FOUND, as before
            manager.resolve("nope")
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)


def test_a_request_before_the_repository_is_listed_is_unavailable_not_not_found(tmp_path: Path) -> None:
    manager, _, _ = start_parts(repository(tmp_path), tmp_path, [])
    manager.reading_repository()  # as SluicewayServer.start, before the port opens
    with pytest.raises(ModelNotReady, match="model 'a' is not ready: the server is starting"):
        manager.resolve("a")
    manager.start_listed()  # RepositoryControl.start: every model of the repository is listed now
    with pytest.raises(ModelNotFound):
        manager.resolve("a")


async def test_the_repository_index_asked_for_while_the_repository_is_read_waits_for_the_listing(
    tmp_path: Path,
) -> None:
    """Before: an index asked for between the port's opening and the listing was empty (a CI run's
    polling client saw none of its seven models once; tests/integration/test_startup_h19.py)."""
    manager, _, control = start_parts(repository(tmp_path), tmp_path, [])
    calls = CallTracker(StreamLimits(8, 8, 8))
    servicer = InferenceServicer(
        manager, calls, lambda: False, stream_max_in_flight=8, stream_idle_timeout_s=5
    )
    context = cast(grpc.aio.ServicerContext, None)  # RepositoryIndex reads nothing of it
    manager.reading_repository()  # as SluicewayServer.start, before the port opens
    asked = asyncio.ensure_future(servicer.RepositoryIndex(pb.RepositoryIndexRequest(), context))
    try:
        for _ in range(20):  # the loop goes round; the index waits
            await asyncio.sleep(0)
        assert not asked.done(), asked.result()
        await control.start()
        listed = await asyncio.wait_for(asked, 10)
        assert {model.name for model in listed.models} == {"a", "b", "c", "ens", "lz"}
        ready_only = await servicer.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), context)
        assert {model.name for model in ready_only.models} == {"a", "b", "c", "ens"}
    finally:
        asked.cancel()
        await control.stop()
        await manager.stop(drain_timeout_s=1)


async def test_explicit_mode_lists_the_models_not_asked_for_before_its_first_load(tmp_path: Path) -> None:
    names = ["a", "b", "c", "ens", "lz"]
    manager, loads, control = start_parts(
        repository(tmp_path), tmp_path, names, model_control_mode="explicit", load_model=("ens",)
    )
    try:
        await control.start()
        assert [seen["load"] for seen in loads.seen] == ["c", "ens"]  # the ensemble brings its step
        first = loads.seen[0]
        assert set(first["index"]) == set(names)
        assert first["index"]["ens"] == LOADING and first["index"]["a"] == UNAVAILABLE
        assert first["answers"]["a"] == f"UNAVAILABLE: model 'a' is not ready (unavailable: {NOT_CHOSEN})"
        manager.start_load_ended()
        assert manager.all_ready  # models not asked for do not make it false
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)


async def test_an_ensemble_over_a_lazy_model_is_listed_lazy_and_neither_loads(tmp_path: Path) -> None:
    configs = {"lz": slow_identity("lz", 0, LAZY), "lens": one_step_ensemble("lens", "lz")}
    configs["a"] = slow_identity("a", 0)
    repo = write_repository(tmp_path / "repo", configs)
    manager, loads, control = start_parts(repo, tmp_path, ["a", "lens", "lz"])
    try:
        await control.start()
        assert [seen["load"] for seen in loads.seen] == ["a"]
        assert set(loads.seen[0]["index"]) == {"a", "lens", "lz"}
        for name in ("lz", "lens"):
            entry = manager.entry(name)
            assert entry.state == UNAVAILABLE and entry.dormant and entry.reason == NOT_LOADED
        manager.start_load_ended()
        assert manager.all_ready
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)


async def test_a_model_that_failed_to_load_at_start_keeps_server_ready_false(tmp_path: Path) -> None:
    configs = {"a": slow_identity("a", 0), "bad": slow_identity("bad", 0, "no_such_field: 1")}
    repo = write_repository(tmp_path / "repo", configs)
    manager, _, control = start_parts(repo, tmp_path, ["a", "bad"])
    try:
        await control.start()
        manager.start_load_ended()
        assert manager.entry("a").state == READY and manager.entry("bad").state == UNAVAILABLE
        assert not manager.all_ready  # README "Deploying at scale": ServerReady is false
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)


def missing_provider() -> str:
    """A provider onnxruntime knows but this build lacks (CUDA on a CPU build)."""
    available = set(ort.get_available_providers())
    return next(name for name in ort.get_all_providers() if name not in available)


def test_a_provider_the_setting_names_is_warned_once_naming_the_setting_not_each_config() -> None:
    missing = missing_provider()
    setting = (missing, "CPUExecutionProvider")  # the GPU overlay's SLUICEWAY_EXECUTION_PROVIDERS
    cpu_group = mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU)
    plain = mc.ModelConfig(name="mlp", instance_group=[cpu_group])
    plan = plan_instances(plain, setting)
    assert not [note for note in plan.unapplied if missing in note]  # its config.pbtxt names none
    assert [name for name, _ in plan.providers] == ["CPUExecutionProvider"]
    from server.backends.instance_groups import setting_note  # here: its module is the subject

    note = setting_note(setting)
    assert note is not None and "execution_providers setting" in note and repr([missing]) in note
    assert setting_note(("CPUExecutionProvider",)) is None
    # A config that asks for a provider itself is still told so in its own load warning.
    accelerated = mc.ModelConfig(name="gpu_model")
    accelerated.optimization.execution_accelerators.gpu_execution_accelerator.add(name="cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        asked = plan_instances(accelerated, ("CPUExecutionProvider",)).unapplied
        assert any("CUDAExecutionProvider" in note for note in asked), asked


async def test_a_lazy_model_listed_at_start_knows_its_latest_frame_wins_before_its_first_load(
    tmp_path: Path,
) -> None:
    """Listed at start without its config's rules, a never-loaded lazy model's frames waiting for its
    first load did not take part in latest-frame-wins: computed, answered out of request order."""
    wins = 'parameters { key: "latest_frame_wins" value: { string_value: "true" } }'
    repo = write_repository(tmp_path / "repo", {"cam": slow_identity("cam", 0, f"{LAZY}\n{wins}")})
    manager, loads, control = start_parts(repo, tmp_path, ["cam"])
    try:
        await control.start()
        assert manager.entry("cam").dormant and not loads.seen  # listed, never loaded
        rules = loads.frame_rules("cam")
        assert rules is not None and rules.latest_frame_wins and rules.refused_for == ""
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)
