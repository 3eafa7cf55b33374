"""The integer division guard's look (a parse of the whole model file) once per model version when
the file has nothing to guard, and on every instance when it has (server/backends/instances.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.backends import int_division_guard
from server.backends.instances import InstanceFactory
from server.backends.onnxruntime_backend import CPU, OrtBackend, OrtOptions
from server.errors import ModelRefusedInput
from tests.support.division_models import int_div
from tests.support.models import scale_model


def counted_looks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The model files the guard parses (onnx.load: only the guard parses here), from now on."""
    looks: list[str] = []
    load = int_division_guard.onnx.load

    def counting(path: str, **kwargs: object) -> object:
        looks.append(path)
        return load(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(int_division_guard.onnx, "load", counting)
    return looks


def factory(path: Path) -> InstanceFactory:
    return InstanceFactory(path, OrtOptions(), [(CPU, {})], name="m", workers=1, faults=None)


def test_a_model_with_no_division_is_looked_at_once_for_all_its_instances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks = counted_looks(monkeypatch)
    made = factory(scale_model(tmp_path / "m.onnx", 2.0))
    sessions = [made.session() for _ in range(3)]
    try:
        assert looks == [str(tmp_path / "m.onnx")]
        assert all(isinstance(s, OrtBackend) and s.guard is None for s in sessions)
    finally:
        for session in sessions:
            session.close()


def test_every_instance_of_a_dividing_model_is_guarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    looks = counted_looks(monkeypatch)
    made = factory(int_div(tmp_path / "m.onnx"))
    sessions = [made.session() for _ in range(2)]
    try:
        assert len(looks) == 2
        assert all(isinstance(s, OrtBackend) and s.guard is not None for s in sessions)
        second = sessions[1]
        assert isinstance(second, OrtBackend)
        zero = {"x": np.array([6, 4, 2], np.int32), "y": np.array([3, 0, 1], np.int32)}
        with pytest.raises(ModelRefusedInput, match="integer division by zero in node 'Div_xy'"):
            second.run_blocking(zero, log_failure=False)
    finally:
        for session in sessions:
            session.close()
