"""A model with an instance on a GPU never runs a batch inline on the event loop
(server/models/gpu_load.py): the estimator's CPU time does not show the device's share of a run.
Which instance is on a GPU is an argument (devices), so the rule runs without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.models.gpu_load import inline_limit_s, on_gpu
from server.models.manager import ModelManager
from server.settings import ServerSettings
from tests.support.repositories import demo_repository, write_model

MLP = 'name: "m"\nmax_batch_size: 8\ndynamic_batching { }\n'


def test_batches_never_run_inline_when_an_instance_is_on_a_gpu() -> None:
    assert inline_limit_s(["cpu", "cpu"], 300) == pytest.approx(300e-6)
    assert inline_limit_s(["cpu", "cuda:0"], 300) == 0.0
    assert inline_limit_s(["cuda:1"], 0) == 0.0
    assert inline_limit_s([], 300) == pytest.approx(300e-6)


def test_on_gpu_reads_the_instances_devices() -> None:
    assert on_gpu(["cuda:0"]) and not on_gpu(["cpu"]) and not on_gpu([])


@pytest.mark.parametrize(("device", "inline_s"), [("cpu", 300e-6), ("cuda:0", 0.0)])
async def test_a_load_turns_inline_runs_off_when_an_instance_is_on_a_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, inline_s: float
) -> None:
    """The wiring in version_loader.py: where the loaded instances say they run decides the
    batcher's inline limit (a CPU machine's instance is made to say `cuda:0` here)."""
    monkeypatch.setattr("server.models.version_loader.instance_device", lambda session: device)
    repo = tmp_path / "repo"
    write_model(repo, "m", demo_repository() / "mlp" / "1" / "model.onnx", MLP)
    manager = ModelManager(repo, ServerSettings(cache_dir=tmp_path, metrics=False), lambda n, r: None)
    await manager.load_all()
    try:
        fast_path = manager.resolve("m").batcher._fast_path
        assert fast_path._inline_max_s == pytest.approx(inline_s)
    finally:
        await manager.stop(drain_timeout_s=1.0)
