"""A reload of changed files is judged by the new files' size (the floor of its need), over the
fake manager of test_lazy_loads (sizes are the files': the meter reads 0).

A poll-mode swap of a loaded 0.1 MiB model's file for a 1.22 MiB one under a 1 MiB budget had been
estimated at the old footprint, loaded as a reload "holding no more than now", and then evicted
every idle lazy model (budget 2.9 of 1 MiB used). Files over the whole budget are refused at once,
OUTGROWS_MEMORY_BUDGET, with no load and no eviction, and the loaded version keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import cast

import pytest

from server.errors import OutgrowsMemoryBudget
from server.models.control import RepositoryControl
from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.models.memory_budget import load_need
from server.models.versions import READY, ModelVersion
from server.settings import ServerSettings
from tests.unit.test_lazy_loads import FakeManager, loads_for, model

BUDGET = 100_000


class NotingManager(FakeManager):
    """The fake manager, noting the reasons of failed reloads (the index's)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.set()
        self.failed_reloads: dict[str, str] = {}

    def note_failed_reload(self, name: str, reason: str) -> None:
        self.failed_reloads[name] = reason


async def three_loaded(repo: Path) -> tuple[ModelLoads, NotingManager]:
    """m1, m2 (40,000 bytes each) and u (10,000), lazy, all loaded: 90,000 of 100,000 used."""
    fake = NotingManager()
    loads = loads_for(repo, fake, BUDGET)
    for name, size in (("u", 10_000), ("m1", 40_000), ("m2", 40_000)):
        model(repo, name, size)
        loads.register_lazy(name)
        await loads.ready(name, 30.0)
    fake.entries["u"].versions = {1: cast(ModelVersion, "serving")}  # loaded versions to keep
    return loads, fake


def swap_files(repo: Path, name: str, size: int) -> None:
    (repo / name / "1" / "model.onnx").write_bytes(b"\0" * size)


async def test_a_reload_of_files_over_the_budget_is_refused_without_a_load_or_an_eviction(
    tmp_path: Path,
) -> None:
    loads, fake = await three_loaded(tmp_path)
    swap_files(tmp_path, "u", 150_000)
    with pytest.raises(OutgrowsMemoryBudget) as refused:  # as RepositoryModelLoad and the poller do
        await loads.load("u", keep_unchanged=True)
    assert "needs 150000 bytes (about 0.1 MiB, its files' size), more than the whole memory budget" in str(
        refused.value
    )
    assert fake.loaded == ["u", "m1", "m2"] and fake.evicted == [] and loads.stats.refused == 1
    assert loads.budget.used_bytes == 90_000 and fake.entries["u"].state == READY


async def test_the_poller_keeps_the_loaded_version_serving_when_new_files_outgrow_the_budget(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    loads, fake = await three_loaded(repo)
    settings = ServerSettings(model_control_mode="poll", repository_poll_secs=1, cache_dir=tmp_path / "cache")
    control = RepositoryControl(repo, settings, cast(ModelManager, fake), loads)
    swap_files(repo, "u", 150_000)
    with caplog.at_level(logging.INFO, logger="server.models.control"):
        await control._apply_changes({"u"})  # what the poller calls with the changed models
    assert fake.loaded == ["u", "m1", "m2"] and fake.evicted == []
    assert fake.entries["u"].state == READY and "its files' size" in fake.failed_reloads["u"]
    assert "change not applied, the loaded versions keep serving" in caplog.text


async def test_new_files_within_the_budget_but_bigger_than_now_make_room_before_the_load(
    tmp_path: Path,
) -> None:
    """Estimated at the old footprint, the load went first, over the budget, and evicted after."""
    loads, fake = await three_loaded(tmp_path)
    swap_files(tmp_path, "u", 30_000)
    fake.gate.clear()  # hold the load at the manager: what was evicted before it?
    fake.entered.clear()
    task = asyncio.create_task(loads.load("u", keep_unchanged=True))
    await fake.entered.wait()
    assert fake.evicted == ["m1"]  # room made first (m1 is the least recently used)
    fake.gate.set()
    await task
    assert loads.budget.used_bytes == 70_000


def test_the_need_is_the_larger_of_the_footprint_now_and_the_new_files() -> None:
    assert load_need(10_000, None, 150_000) == (150_000, "its files' size")
    assert load_need(60_000, None, 20_000) == (60_000, "its footprint now")
    assert load_need(None, None, 20_000) == (20_000, "its files' size")


async def test_the_poller_says_a_changed_lazy_model_not_loaded_is_only_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It had logged "changed on disk; loading it" and loaded nothing (its next request does)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    fake = NotingManager()
    loads = loads_for(repo, fake, BUDGET)
    model(repo, "u", 10_000)
    loads.register_lazy("u")
    settings = ServerSettings(model_control_mode="poll", repository_poll_secs=1, cache_dir=tmp_path / "cache")
    control = RepositoryControl(repo, settings, cast(ModelManager, fake), loads)
    swap_files(repo, "u", 20_000)
    with caplog.at_level(logging.INFO, logger="server.models.control"):
        await control._apply_changes({"u"})
    assert fake.loaded == [] and loads.needs_load("u")
    listed = "model u changed on disk; not loaded now (lazy_load): listed, its next request loads it"
    assert listed in caplog.text
    assert "loading it" not in caplog.text
