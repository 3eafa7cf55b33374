"""Survivors of the 2026-12-05 whole-scope mutation run in server/backends/hosted_session.py that a
test can tell apart: a lone batch of a scalar input fed as it came (never gathered), and a waiting
batch of no rows that does not fill a run of one row on a GPU's second runner (the mutants
killed: `_run_merged__mutmut_2`, `_full__mutmut_6`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from server.backends.hosted_session import HostCounts
from server.backends.onnxruntime_backend import OrtBackend
from tests.unit.test_mutants_shared_sessions import _model, _open, _rows_taken
from tests.unit.test_session_host import _rows, _session


def _scalar_doubled(path: Path) -> Path:
    """x FP32 [] -> y FP32 [] = x + x: a model whose only input is 0-d (no rows at all)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    return _model(path, [helper.make_node("Add", ["x", "x"], ["y"])], [x], [y])


def test_a_lone_batch_of_a_scalar_input_runs_with_its_inputs_as_sent(tmp_path: Path) -> None:
    """A run of one batch feeds that batch's own arrays. Fed as a gathered batch of one (a copy by
    concatenation along the rows), a 0-d input cannot be gathered at all and the run failed."""
    session = _open(_scalar_doubled(tmp_path / "scalar.onnx"), 8)
    job = session.submit({"x": np.array(3.0, np.float32)})
    taken = session._take()
    assert taken == [job]
    session._run(taken)
    session._finished()
    assert job.error is None and job.outputs is not None
    assert job.outputs["y"].shape == () and float(job.outputs["y"]) == 6.0
    assert session.counts() == HostCounts(runs=1, rows=0, merged=0)
    session.close()


def test_on_a_gpu_a_waiting_batch_of_no_rows_does_not_fill_a_run_of_one_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_batch_size 1, one run in progress: the second runner starts only a full run. A batch of
    no rows fills nothing (a row may still come to run with it); one row behind it fills the run.
    Taking every batch as full whenever the limit is 1 started the empty batch at once."""
    monkeypatch.setattr(OrtBackend, "device", property(lambda self: type("D", (), {"kind": "cuda"})()))
    session = _session(tmp_path, max_rows=1)
    assert session._runners == 2
    session.submit(_rows(1))
    assert _rows_taken(session) == [1]  # in progress
    session.submit({"x": np.zeros((0, 4), np.float32)})
    assert not session._may_start()
    session.submit(_rows(1))  # fits behind it: 0 + 1 rows, a full run of one row
    assert session._may_start()
    assert _rows_taken(session) == [0, 1]
    session.close()
