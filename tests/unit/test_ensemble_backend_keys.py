"""onnxruntime backend parameters set on an ensemble (CUDA settings, batch padding, threads): its
steps run the models and Triton ignores them there, so they load, but the ensemble's load warning
names them (a tester's finding: they had been taken without a word)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from server.models.manager import ModelManager
from server.settings import ServerSettings
from tests.support.ensemble_repo import STEP, _step, _unary, ensemble
from tests.support.repositories import write_model


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        (
            {"gpu_batch_padding": "true", "cudnn_conv_algo_search": "1"},
            "['cudnn_conv_algo_search', 'gpu_batch_padding']",
        ),
        ({}, None),
    ],
)
async def test_an_ensembles_backend_keys_are_named_in_its_load_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, keys: dict[str, str], named: str | None
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add_one", _unary(tmp_path / "add_one.onnx", "Add", 1.0), STEP)
    config = ensemble([_step("add_one", {"x": "IN"}, {"y": "OUT"})])
    (repo / "plus" / "1").mkdir(parents=True)
    (repo / "plus" / "config.pbtxt").write_text(config + "".join(_parameter(k, v) for k, v in keys.items()))
    manager = ModelManager(
        repo, ServerSettings(cache_dir=tmp_path / "cache", metrics=False), lambda n, r: None
    )
    with caplog.at_level(logging.WARNING):
        await manager.load_all()
    try:
        assert {e.name: e.state for e in manager.entries()} == {"add_one": "READY", "plus": "READY"}
        lines = [
            r.getMessage()
            for r in caplog.records
            if "plus" in r.getMessage() and "not applied" in r.getMessage()
        ]
        if named is None:
            assert lines == []
            return
        (line,) = lines
        assert f"parameters {named} (onnxruntime settings; an ensemble runs no model itself" in line
    finally:
        await manager.stop(drain_timeout_s=1.0)
