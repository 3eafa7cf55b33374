"""An ensemble over lazy steps whose steps' load already tried it (EnsembleDependents.load_waiting)
and saw it fail (server/models/lazy.py): its request's load is not tried a second time from the
same config. It had been, and one request logged the failure twice (a tester, session 53, F7)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from server.errors import ModelNotReady, RepositoryError
from server.models.lazy import ModelLoads
from server.models.repository import OVERRIDE_WHERE, ModelSource, load_model_source
from server.models.versions import READY, UNAVAILABLE, ModelEntry
from tests.unit.test_lazy_ensemble_evict import steps_and_ensemble
from tests.unit.test_lazy_loads import FakeManager

WHY = "ensemble 'ens' step 1 (model 'add_one'): version 1 is not found; served versions: 2"


class TryingManager(FakeManager):
    """A step's load tries the ensemble as the real manager's load_waiting does (once both steps
    are loaded, while it is not READY); `fits`: whether a load of it from the repository ends READY
    (one from an operator's override always does)."""

    def __init__(self, fits: bool, tries: bool = True) -> None:
        super().__init__()
        self.fits, self.tries = fits, tries
        self.ensemble_loads: list[str] = []  # where each load of "ens" came from

    async def load(self, name: str, source: ModelSource | None = None, keep_unchanged: bool = False) -> None:
        if name == "ens":
            given = source is not None and source.where == OVERRIDE_WHERE
            self.ensemble_loads.append(OVERRIDE_WHERE if given else "its own")
            self._try_ensemble(given)
            if self.entries["ens"].state != READY:
                raise RepositoryError(f"load failed for model 'ens': {self.entries['ens'].reason}")
            return
        await super().load(name, source, keep_unchanged)
        steps_up = all(self.entries[s].state == READY for s in ("add_one", "double"))
        if self.tries and steps_up and self.entries["ens"].state != READY:
            self.ensemble_loads.append("load_waiting")
            self._try_ensemble(False)

    def _try_ensemble(self, given: bool) -> None:
        ok = self.fits or given
        self.entries["ens"] = ModelEntry("ens", state=READY if ok else UNAVAILABLE, reason="" if ok else WHY)


def loads_over(tmp_path: Path, fake: TryingManager) -> ModelLoads:
    return steps_and_ensemble(tmp_path, fake, 0)


async def test_a_failure_its_steps_load_saw_is_the_requests_answer_without_a_second_try(
    tmp_path: Path,
) -> None:
    fake = TryingManager(fits=False)
    loads = loads_over(tmp_path, fake)
    with pytest.raises(ModelNotReady, match="version 1 is not found"):
        await loads.ready("ens", 30.0)
    assert fake.ensemble_loads == ["load_waiting"]  # was a second, its own
    assert loads.stats.failures == 1  # counted once, as before


async def test_an_operators_config_override_is_still_tried_after_the_steps_load_failed_it(
    tmp_path: Path,
) -> None:
    """A RepositoryModelLoad `config` is not what load_waiting tried: it gets its own load."""
    fake = TryingManager(fits=False)
    loads = loads_over(tmp_path, fake)
    source = dataclasses.replace(load_model_source(tmp_path, "ens"), where=OVERRIDE_WHERE)
    await loads.load("ens", source)
    assert fake.ensemble_loads == ["load_waiting", OVERRIDE_WHERE]
    assert fake.entries["ens"].state == READY


async def test_an_ensemble_its_steps_load_brought_up_is_not_loaded_again(tmp_path: Path) -> None:
    fake = TryingManager(fits=True)
    loads = loads_over(tmp_path, fake)
    await loads.ready("ens", 30.0)
    assert fake.ensemble_loads == ["load_waiting"]
    assert fake.entries["ens"].state == READY and not loads.needs_load("ens")


async def test_steps_that_never_tried_the_ensemble_leave_its_load_to_the_request(tmp_path: Path) -> None:
    """Its entry the same object after the steps' loads: nothing was tried, so the load goes on."""
    fake = TryingManager(fits=True, tries=False)
    loads = loads_over(tmp_path, fake)
    await loads.ready("ens", 30.0)
    assert fake.ensemble_loads == ["its own"]
    assert loads.stats.failures == 0
