"""A reload that fails on one version lets go of the versions it had already started (newest
first): they kept their sessions, batchers and threads for ever (63 MiB and a thread a try)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server.errors import RepositoryError
from server.models.manager import ModelManager
from server.models.versions import READY
from server.settings import ServerSettings
from tests.support.fixed_model import fixed_model


async def test_a_reload_failing_on_an_older_version_retires_the_newer_ones_it_started(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for version in (1, 2):
        (repo / "m" / str(version)).mkdir(parents=True)
        fixed_model(repo / "m" / str(version) / "model.onnx")
    (repo / "m" / "config.pbtxt").write_text("version_policy { all { } }\n")
    manager = ModelManager(repo, ServerSettings(cache_dir=tmp_path / "cache"), lambda name, ready: None)
    await manager.load_all()
    try:
        serving = manager.entry("m")
        assert serving.state == READY and serving.order == [2, 1]
        started: list[Any] = []
        load_version = manager._load_version

        async def spy(*args: Any) -> Any:
            version = await load_version(*args)
            started.append(version)
            return version

        manager._load_version = spy  # type: ignore[method-assign]
        (repo / "m" / "1" / "model.onnx").write_bytes(b"not an onnx model")
        with pytest.raises(
            RepositoryError, match=r"^load failed for model 'm' \(a reload; the versions serving stay\): "
        ):
            await manager.load("m")
        assert [v.version for v in started] == [2]  # version 2 started, then version 1 failed
        assert not started[0].batcher.accepting  # retired: stopped, its instances closed
        assert manager.entry("m") is serving and all(v.batcher.accepting for v in serving.versions.values())
    finally:
        await manager.stop(1.0)


async def test_a_model_being_loaded_says_loading(tmp_path: Path) -> None:
    """RepositoryIndex showed a model being loaded by RPC as `UNAVAILABLE not loaded`, and its
    requests were refused naming that stale reason; Triton says LOADING."""
    import asyncio

    from server.errors import ModelNotReady
    from server.models.versions import LOADING

    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    fixed_model(repo / "m" / "1" / "model.onnx")
    manager = ModelManager(repo, ServerSettings(cache_dir=tmp_path / "cache"), lambda name, ready: None)
    gate, entered = asyncio.Event(), asyncio.Event()
    load_version = manager._load_version

    async def held(*args: Any) -> Any:
        entered.set()
        await gate.wait()
        return await load_version(*args)

    manager._load_version = held  # type: ignore[method-assign]
    loading = asyncio.create_task(manager.load("m"))
    try:
        await entered.wait()
        assert (manager.entry("m").state, manager.entry("m").reason) == (LOADING, "a load is under way")
        with pytest.raises(ModelNotReady, match="loading"):
            manager.resolve("m")
        gate.set()
        await loading
        assert manager.entry("m").state == READY
    finally:
        gate.set()
        await asyncio.gather(loading, return_exceptions=True)
        await manager.stop(1.0)
