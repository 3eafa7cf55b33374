"""A model with an instance on a GPU never runs a batch inline on the event loop
(server/models/gpu_load.py): the estimator's CPU time does not show the device's share of a run.
Which instance is on a GPU is an argument (devices), so the rule runs without one."""

from __future__ import annotations

import pytest

from server.models.gpu_load import inline_limit_s, on_gpu


def test_batches_never_run_inline_when_an_instance_is_on_a_gpu() -> None:
    assert inline_limit_s(["cpu", "cpu"], 300) == pytest.approx(300e-6)
    assert inline_limit_s(["cpu", "cuda:0"], 300) == 0.0
    assert inline_limit_s(["cuda:1"], 0) == 0.0
    assert inline_limit_s([], 300) == pytest.approx(300e-6)


def test_on_gpu_reads_the_instances_devices() -> None:
    assert on_gpu(["cuda:0"]) and not on_gpu(["cpu"]) and not on_gpu([])
