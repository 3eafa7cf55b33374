"""An unload forgets a name whole (lazy signatures, measured footprint, index entry) when the
repository has no directory for it: a name sent only with `file:` uploads. Each such name's records
had been kept for good, ~3 kB a distinct name (a tester: 1,500 upload-and-unload cycles, +4.5 MB).
Nothing outside the process shows them, so this watches what the unload asks of the loads."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from server.errors import ModelNotFound
from server.models.control import RepositoryControl
from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.settings import ServerSettings


class SpyLoads:
    def __init__(self) -> None:
        self.unloads: list[tuple[str, bool]] = []

    async def unload(self, name: str, *, forget: bool = False) -> None:
        self.unloads.append((name, forget))


class KnownNames:
    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.dropped: list[str] = []

    def entry(self, name: str) -> object:
        if name not in self.names:
            raise ModelNotFound(name)
        return object()

    def drop_entry(self, name: str) -> None:
        self.dropped.append(name)


async def test_an_unload_forgets_a_name_whole_only_where_the_repository_has_no_directory(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    (repo / "mlp" / "1").mkdir(parents=True)
    settings = ServerSettings(model_control_mode="explicit", cache_dir=tmp_path / "cache")
    loads, manager = SpyLoads(), KnownNames("mlp", "sent")
    control = RepositoryControl(repo, settings, cast(ModelManager, manager), cast(ModelLoads, loads))
    await control._unload("sent")  # uploads only
    await control._unload("mlp")  # a repository model: its records serve its next load
    await control._unload("never_was")  # unknown: nothing to do, as Triton
    assert loads.unloads == [("sent", True), ("mlp", False)]
    assert manager.dropped == ["sent"]
