"""A load's zero run (server/models/first_run.py) only measures: it is bounded in time, runs only
under a memory budget, and a failure of it is not logged as a failed batch.

Found by an edge operator's tester: a model whose zero input takes a slow path (a Loop of 1e7 turns
only when its input sums to 0) loaded in 40 s with `--run-timeout-s 2`, and every other lazy load
waited behind it (loads run one at a time); a model that failed on zeros was also logged at ERROR
as a failed batch; the run happened without a budget too, where nothing reads the footprint.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.settings import ServerSettings
from tests.support.repositories import write_model

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
MIB = 1 << 20


def save(path: Path, graph: onnx.GraphProto) -> Path:
    made = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    made.ir_version = 8
    onnx.save(made, str(path))
    return path


def slow_on_zeros(path: Path, turns: int) -> Path:
    """y = x + (a Loop of `turns` turns when sum(x) == 0, else of none)."""
    vi = h.make_tensor_value_info
    body = h.make_graph(
        [h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body",
        [vi("i", T.INT64, []), vi("c_in", T.BOOL, []), vi("acc_in", T.FLOAT, [1])],
        [vi("c_out", T.BOOL, []), vi("acc_out", T.FLOAT, [1])],
        [nh.from_array(np.ones(1, np.float32), "one")],
    )
    nodes = [
        h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        h.make_node("Equal", ["s", "zero"], ["eq"]),
        h.make_node("Cast", ["eq"], ["eqi"], to=T.INT64),
        h.make_node("Mul", ["eqi", "n"], ["m"]),
        h.make_node("Loop", ["m", "true", "acc0"], ["acc"], body=body),
        h.make_node("Reshape", ["acc", "shape"], ["y0"]),
        h.make_node("Add", ["x", "y0"], ["y"]),
    ]
    consts = [
        nh.from_array(np.array(0, np.float32), "zero"),
        nh.from_array(np.array(turns, np.int64), "n"),
        nh.from_array(np.array(True), "true"),
        nh.from_array(np.zeros(1, np.float32), "acc0"),
        nh.from_array(np.array([1, 1], np.int64), "shape"),
    ]
    graph = h.make_graph(nodes, "g", [vi("x", T.FLOAT, ["b", 4])], [vi("y", T.FLOAT, ["b", 4])], consts)
    return save(path, graph)


def fails_on_zeros(path: Path) -> Path:
    """y = 1 / x in int32: onnxruntime fails a run on zeros (integer division by zero)."""
    vi = h.make_tensor_value_info
    graph = h.make_graph(
        [h.make_node("Div", ["one", "x"], ["y"])],
        "g",
        [vi("x", T.INT32, ["b", 4])],
        [vi("y", T.INT32, ["b", 4])],
        [nh.from_array(np.ones(1, np.int32), "one")],
    )
    return save(path, graph)


def fails_on_ones(path: Path) -> Path:
    """y = d[x - 100] with d of one row: any input but 100 is out of range (onnxruntime refuses it)."""
    vi = h.make_tensor_value_info
    graph = h.make_graph(
        [h.make_node("Sub", ["x", "hundred"], ["i"]), h.make_node("Gather", ["d", "i"], ["y"], axis=0)],
        "g",
        [vi("x", T.INT64, ["b", 1])],
        [vi("y", T.FLOAT, ["b", 1, 3])],
        [nh.from_array(np.ones((1, 3), np.float32), "d"), nh.from_array(np.array(100, np.int64), "hundred")],
    )
    return save(path, graph)


@pytest.fixture
async def lazy_model(tmp_path: Path) -> AsyncIterator[Callable[[Path, str, int], ModelLoads]]:
    """Loads made for a model `m` (its ONNX file, extra config lines, the budget in MiB)."""
    managers: list[ModelManager] = []

    def made(onnx_file: Path, extra: str, budget_mb: int) -> ModelLoads:
        repo, cache = tmp_path / f"repo{len(managers)}", tmp_path / f"cache{len(managers)}"
        write_model(repo, "m", onnx_file, 'name: "m"\nmax_batch_size: 4\n' + LAZY + extra)
        cache.mkdir()
        settings = ServerSettings(cache_dir=cache, metrics=False, model_memory_budget_mb=budget_mb)
        manager = ModelManager(repo, settings, lambda n, r: None)
        loads = ModelLoads(manager, repo, budget_mb * MIB)
        manager.on_demand = loads
        loads.register_lazy("m")
        managers.append(manager)
        return loads

    yield made
    for manager in managers:
        await manager.stop(drain_timeout_s=5)


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


async def test_a_slow_zero_run_is_stopped_at_the_run_timeout_and_its_instance_replaced(
    tmp_path: Path, lazy_model: Callable[[Path, str, int], ModelLoads], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the run went on to its end (about 10 s for these 5e6 turns here; the tester's 1e7:
    40 s), whatever run_timeout_s said, and every other load waited."""
    caplog.set_level(logging.INFO)
    timeout = 'parameters { key: "run_timeout_s" value { string_value: "0.3" } }\n'
    loads = lazy_model(slow_on_zeros(tmp_path / "slow.onnx", 5_000_000), timeout, 100)
    await loads.ready("m", 120.0)
    said = lines(caplog, "server.models.first_run")
    assert any("took longer than 0.3 s: stopped, instance 0 replaced" in line for line in said), said
    # The replacement serves: a real input (its sum is not 0) takes the short path.
    backend = loads._manager.entry("m").versions[1].backends[0]
    out = await backend.run({"x": np.ones((1, 4), np.float32)})
    assert out["y"].tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert loads.budget.size_of("m") is not None  # loaded and counted, measured without the run


async def test_no_zero_run_without_a_memory_budget(
    tmp_path: Path, lazy_model: Callable[[Path, str, int], ModelLoads], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing reads a footprint without a budget: a zero input's odd path is not taken (before:
    the run failed here, logged at INFO and ERROR)."""
    caplog.set_level(logging.DEBUG)
    loads = lazy_model(fails_on_zeros(tmp_path / "divz.onnx"), "", 0)
    await loads.ready("m", 120.0)
    assert lines(caplog, "server.models.first_run") == []
    assert lines(caplog, "server.backends.run_errors") == []


async def test_an_integer_input_is_fed_ones_so_a_division_by_it_does_not_end_the_process(
    tmp_path: Path, lazy_model: Callable[[Path, str, int], ModelLoads], caplog: pytest.LogCaptureFixture
) -> None:
    """onnxruntime 1.23 (3.10) ends the process (SIGFPE) on an integer division by zero: before,
    this load killed the test process there; on 3.13 the run failed (an INFO and an ERROR line)."""
    caplog.set_level(logging.INFO)
    loads = lazy_model(fails_on_zeros(tmp_path / "divz.onnx"), "", 100)
    await loads.ready("m", 120.0)
    assert lines(caplog, "server.models.first_run") == []
    assert lines(caplog, "server.backends.run_errors") == []


async def test_a_failed_zero_run_is_one_info_line_not_a_failed_batch(
    tmp_path: Path, lazy_model: Callable[[Path, str, int], ModelLoads], caplog: pytest.LogCaptureFixture
) -> None:
    """Before: also `ERROR server.backends.run_errors: model m: onnxruntime failed a batch (Fail)`
    (the tester's divz), here its WARNING twin `refused a batch's inputs`."""
    caplog.set_level(logging.INFO)
    loads = lazy_model(fails_on_ones(tmp_path / "gather.onnx"), "", 100)
    await loads.ready("m", 120.0)
    said = lines(caplog, "server.models.first_run")
    assert len(said) == 1 and "first run of zeros failed" in said[0], said
    assert lines(caplog, "server.backends.run_errors") == []
    # A real batch's failure is still logged as one.
    backend = loads._manager.entry("m").versions[1].backends[0]
    assert (await backend.run({"x": np.full((1, 1), 100, np.int64)}))["y"].shape == (1, 1, 3)
    with pytest.raises(Exception, match=r"out of bounds|out of range|indices"):
        await backend.run({"x": np.ones((1, 1), np.int64)})
    assert any("a batch" in line for line in lines(caplog, "server.backends.run_errors"))
