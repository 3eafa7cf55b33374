"""A load's instances share what its first instance prepared (server/backends/prepared_graph.py):
the per-row quantization and the division guard are made once per load, not once per instance,
and every instance runs the same rewritten graph. A replacement made after the load prepares
its own, and nothing is held once the load's last instance is made."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from server.backends import onnxruntime_backend
from server.backends.instances import InstanceFactory
from server.backends.onnxruntime_backend import CPU, OrtBackend, OrtOptions
from server.errors import ModelRefusedInput
from tests.support.division_models import int_div
from tests.support.dynamic_int8 import dynamic_int8, float_mlp, rows_with_an_outlier

INSTANCES = 3


class Counted:
    """Wraps one of the backend's preparation steps and counts its calls."""

    def __init__(self, step: Callable[..., Any]) -> None:
        self.step = step
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.step(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counted]:
    steps = {
        name: Counted(getattr(onnxruntime_backend, name)) for name in ("row_quantized", "division_guard_for")
    }
    for name, step in steps.items():
        monkeypatch.setattr(onnxruntime_backend, name, step)
    return steps


def factory(path: Path, options: OrtOptions) -> InstanceFactory:
    return InstanceFactory(path, options, [(CPU, {})], name="m", workers=1, faults=None, planned=INSTANCES)


def load(made: InstanceFactory) -> Iterator[OrtBackend]:
    for _ in range(INSTANCES):
        instance = made.session()
        assert isinstance(instance, OrtBackend)
        yield instance


def test_the_per_row_rewrite_is_made_once_per_load_and_every_instance_runs_it(
    tmp_path: Path, counted: dict[str, Counted]
) -> None:
    path = dynamic_int8(float_mlp(tmp_path / "f.onnx"), tmp_path / "q.onnx")
    made = factory(path, OrtOptions(row_quantization=True))
    instances = list(load(made))
    try:
        assert counted["row_quantized"].calls == 1 and counted["division_guard_for"].calls == 1
        assert made._prepared == {}  # the load's last instance made: no bytes held
        x = rows_with_an_outlier(8)
        original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        alone = np.concatenate([original.run(None, {"x": x[i : i + 1]})[0] for i in range(8)])
        for instance in instances:  # per row on each: every row exactly as alone
            np.testing.assert_array_equal(instance.run_blocking({"x": x})[instance.outputs[0].name], alone)
        replacement = made.session(None, 0)  # the watchdog's, after the load: prepares its own
        instances.append(replacement)  # type: ignore[arg-type]
        assert counted["row_quantized"].calls == 2 and made._prepared == {}
        np.testing.assert_array_equal(replacement.run_blocking({"x": x})[instances[0].outputs[0].name], alone)
    finally:
        for instance in instances:
            instance.close()


def test_the_division_guard_is_made_once_per_load_and_guards_every_instance(
    tmp_path: Path, counted: dict[str, Counted]
) -> None:
    made = factory(int_div(tmp_path / "div.onnx"), OrtOptions(int_division_guard=True))
    instances = list(load(made))
    try:
        assert counted["division_guard_for"].calls == 1
        feed = {"x": np.asarray([7, -7, 9], np.int32), "y": np.asarray([2, 0, 3], np.int32)}
        for instance in instances:
            with pytest.raises(ModelRefusedInput, match="division by zero in node 'Div_xy'"):
                instance.run_blocking(feed)
            ok = instance.run_blocking({**feed, "y": np.asarray([2, 2, 3], np.int32)})
            assert ok["q"].tolist() == [3, -3, 3]  # the guard's flags are not among the outputs
    finally:
        for instance in instances:
            instance.close()


def test_a_model_with_nothing_to_rewrite_is_looked_at_once_per_load(
    tmp_path: Path, counted: dict[str, Counted]
) -> None:
    made = factory(float_mlp(tmp_path / "f.onnx"), OrtOptions(row_quantization=True))
    instances = list(load(made))
    for instance in instances:
        instance.close()
    assert counted["row_quantized"].calls == 1 and counted["division_guard_for"].calls == 1
