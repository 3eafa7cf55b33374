"""A cycle of two or more ensembles (`ens_a` -> `ens_b` -> `ens_a`) is refused naming the cycle, at
start, by RepositoryModelLoad and by the poller (server/models/ensemble_config.py `cycle_refusals`).

Before, each was UNAVAILABLE with a reason nesting the other's: "model 'ens_b' is not ready
(loading: waiting for its turn in the start-up load)", or "not loaded (lazy)" when lazy, naming no
cycle (an ensemble that is its own step was already refused as a cycle).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protos import model_config_pb2 as mc
from server.errors import RepositoryError
from server.models.ensemble_config import cycle_refusals, ensemble_cycle
from server.models.versions import READY, UNAVAILABLE
from tests.support.slow_steps import one_step_ensemble, slow_identity, write_repository
from tests.unit.test_startup_h19 import start_parts

LAZY = 'parameters { key: "lazy_load" value: { string_value: "true" } }'


def ensemble(*steps: str) -> mc.ModelConfig:
    config = mc.ModelConfig(platform="ensemble")
    for step in steps:
        config.ensemble_scheduling.step.add(model_name=step)
    return config


def test_the_cycle_is_the_path_back_to_the_ensemble() -> None:
    configs = {
        "a": ensemble("m", "b"),
        "b": ensemble("c"),
        "c": ensemble("a"),
        "m": mc.ModelConfig(backend="identity"),
        "x": ensemble("a"),  # uses the cycle, is not in it
        "d": ensemble("m", "e"),
        "e": ensemble("m"),  # a diamond: no cycle
        "self": ensemble("self"),  # its own step: check_ensemble's refusal, not this one's
    }
    assert ensemble_cycle("a", configs) == ["a", "b", "c", "a"]
    assert ensemble_cycle("c", configs) == ["c", "a", "b", "c"]
    for name in ("x", "d", "e", "m", "self", "missing"):
        assert ensemble_cycle(name, configs) is None, name
    refused = cycle_refusals(configs)
    assert sorted(refused) == ["a", "b", "c"]
    assert refused["b"].startswith("ensemble 'b' is in a cycle of ensembles: b -> c -> a -> b (")


def cycle_repository(tmp_path: Path, extra: str = "") -> Path:
    configs = {
        "s": slow_identity("s", 0),
        "ens_a": one_step_ensemble("ens_a", "ens_b") + extra,
        "ens_b": one_step_ensemble("ens_b", "ens_a") + extra,
        "ens_s": one_step_ensemble("ens_s", "s"),
    }
    return write_repository(tmp_path / "repo", configs)


@pytest.mark.parametrize("lazy", [False, True])
async def test_a_cycle_of_two_ensembles_is_refused_at_start_naming_it(tmp_path: Path, lazy: bool) -> None:
    manager, loads, control = start_parts(cycle_repository(tmp_path, LAZY if lazy else ""), tmp_path, [])
    try:
        await control.start()
        for name, other in (("ens_a", "ens_b"), ("ens_b", "ens_a")):
            entry = manager.entry(name)
            assert entry.state == UNAVAILABLE, (name, entry)
            cycle = f"ensemble '{name}' is in a cycle of ensembles: {name} -> {other} -> {name}"
            assert entry.reason.startswith(cycle), (name, entry.reason)
        assert loads.stats.failures == 2
        assert manager.entry("s").state == READY and manager.entry("ens_s").state == READY
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)


async def test_a_load_by_rpc_and_a_polled_change_that_close_a_cycle_are_refused_naming_it(
    tmp_path: Path,
) -> None:
    repo = write_repository(tmp_path / "repo", {"s": slow_identity("s", 0)})
    manager, _, control = start_parts(repo, tmp_path, [], model_control_mode="explicit", load_model=("s",))
    try:
        await control.start()
        write_repository(repo, {"ens_a": one_step_ensemble("ens_a", "ens_b")})
        write_repository(repo, {"ens_b": one_step_ensemble("ens_b", "ens_a")})
        with pytest.raises(RepositoryError, match="ens_a -> ens_b -> ens_a"):
            await control.load_rpc("ens_a", {})
        assert manager.entry("ens_a").state == UNAVAILABLE and "cycle" in manager.entry("ens_a").reason
        await control._refresh("ens_b")  # what the poller does with a changed directory
        assert manager.entry("ens_b").reason.startswith("ensemble 'ens_b' is in a cycle of ensembles")
        assert manager.entry("s").state == READY
    finally:
        await control.stop()
        await manager.stop(drain_timeout_s=1)
