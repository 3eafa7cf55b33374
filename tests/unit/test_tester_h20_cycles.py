"""Cycles of ensembles, tried as an operator and a hostile client would.

- A cycle closed through the versions serving now (a RepositoryModelLoad `config` override, which
  the repository's files do not show) is refused at load: it had loaded, and one request to it
  nested the two ensembles without end (1.8 GB in 5 s; SIGTERM no longer stopped the server).
- An ensemble refused for a cycle loads again once the cycle is fixed and a step model loads, as
  one waiting on a step model does: it had stayed refused, "in a cycle", until its own files changed
  (the build before refused no cycle, and loaded it again).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format, text_format

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import RepositoryError
from server.models.versions import READY, UNAVAILABLE
from tests.support.slow_steps import one_step_ensemble, slow_identity, write_repository
from tests.unit.test_startup_h19 import start_parts


def override(name: str, step: str) -> dict[str, pb.ModelRepositoryParameter]:
    """RepositoryModelLoad's `config` parameter: ensemble `name` over `step`."""
    config = text_format.Parse(one_step_ensemble(name, step), mc.ModelConfig())
    return {"config": pb.ModelRepositoryParameter(string_param=json_format.MessageToJson(config))}


async def test_a_config_override_closing_a_cycle_with_the_serving_versions_is_refused(tmp_path: Path) -> None:
    configs = {"m": slow_identity("m", 0), "a": one_step_ensemble("a", "m"), "b": one_step_ensemble("b", "m")}
    repo = write_repository(tmp_path / "repo", configs)
    manager, _, control = start_parts(repo, tmp_path, [], model_control_mode="explicit", load_model=("*",))
    try:
        await control.start()
        await control.load_rpc("a", override("a", "b"))  # a -> b: no cycle
        serving_cycle = "cycle of ensembles with the versions serving now: b -> a -> b"
        with pytest.raises(RepositoryError, match=serving_cycle):
            await control.load_rpc("b", override("b", "a"))  # the files still say a -> m
        entry = manager.entry("b")
        assert entry.state == READY and "b -> a -> b" in entry.reason  # its version over m still serves
        served = manager.resolve("b", "", None).config.ensemble_scheduling.step
        assert [step.model_name for step in served] == ["m"]
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)


def cycle(tmp_path: Path) -> Path:
    configs = {"s": slow_identity("s", 0), "a": one_step_ensemble("a", "b"), "b": one_step_ensemble("b", "a")}
    return write_repository(tmp_path / "repo", configs)


async def test_poll_mode_an_ensemble_refused_for_a_cycle_loads_once_the_cycle_is_fixed(
    tmp_path: Path,
) -> None:
    repo = cycle(tmp_path)
    manager, _, control = start_parts(repo, tmp_path, [])  # poll mode's start, without the watcher
    try:
        await control.start()
        assert manager.entry("a").state == UNAVAILABLE and "a -> b -> a" in manager.entry("a").reason
        (repo / "b" / "config.pbtxt").write_text(one_step_ensemble("b", "s"))
        await control._refresh("b")  # what the poller does with b's changed directory
        assert manager.entry("b").state == READY
        assert manager.entry("a").state == READY, manager.entry("a").reason  # a's files never changed
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)


async def test_explicit_mode_a_cycle_member_not_asked_for_stays_unloaded_after_the_fix(
    tmp_path: Path,
) -> None:
    repo = cycle(tmp_path)
    manager, _, control = start_parts(repo, tmp_path, [], model_control_mode="explicit", load_model=("s",))
    try:
        await control.start()
        (repo / "b" / "config.pbtxt").write_text(one_step_ensemble("b", "s"))
        await control.load_rpc("b", {})
        assert manager.entry("b").state == READY
        assert manager.entry("a").state == UNAVAILABLE  # never asked for: not loaded by b's load
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)
