"""A model instance whose graph keeps a tensor's batch on another axis (server/backends/batch_axes.py):
the batcher always sees batch-first tensors, the graph always gets its own layout, and the wrapped
instance's other duties (close, abandon, its executor) are passed through unchanged."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from batcher.types import Array, Tensors
from server.backends.batch_axes import BatchAxes, BlockingBatchAxes, from_model, to_model, with_batch_axes

AXES = {"s": 1, "s_out": 2}


def batch_first(rows: int = 2) -> Array:
    """[rows, 3, 4]: row r holds r * 100 + its position, so a mixed-up axis shows."""
    return (np.arange(rows)[:, None, None] * 100 + np.arange(12).reshape(3, 4)).astype(np.float32)


class Graph:
    """A fake instance: records what the graph was given, answers `s_out` with the batch on axis 2
    (its state [3, 4, B] as `s` [3, B, 4] moved) and `y` batch-first."""

    def __init__(self) -> None:
        self.given: list[dict[str, Array]] = []
        self.closed = 0
        self.abandoned = 0

    def answer(self, inputs: Tensors) -> dict[str, Array]:
        self.given.append(dict(inputs))
        return {"s_out": np.moveaxis(np.asarray(inputs["s"]), 1, 2), "y": np.asarray(inputs["x"]) * 2}

    async def run(self, inputs: Tensors) -> Tensors:
        return self.answer(inputs)

    def close(self) -> None:
        self.closed += 1

    def abandon(self) -> None:
        self.abandoned += 1


class BlockingGraph(Graph):
    def __init__(self, executor: Executor) -> None:
        super().__init__()
        self.executor = executor

    def run_blocking(self, inputs: Tensors) -> dict[str, Array]:
        return self.answer(inputs)


def test_to_model_moves_each_named_tensors_batch_to_its_axis_contiguous_and_leaves_others() -> None:
    s, x = batch_first(), np.ones((2, 5), np.float32)
    graph = to_model({"s": s, "x": x}, {"s": 1})
    assert graph["s"].shape == (3, 2, 4) and graph["s"].flags.c_contiguous
    np.testing.assert_array_equal(graph["s"][:, 1], s[1])
    assert graph["x"] is x  # not named: passed as it is


def test_to_model_skips_a_named_tensor_the_request_left_out() -> None:
    x = np.ones((2, 5), np.float32)
    assert to_model({"x": x}, {"s": 1}) == {"x": x}


def test_to_model_does_not_change_the_callers_mapping() -> None:
    inputs = {"s": batch_first()}
    to_model(inputs, {"s": 1})
    assert inputs["s"].shape == (2, 3, 4)


def test_from_model_brings_each_batch_axis_first_as_a_view_and_leaves_others() -> None:
    graph_out = np.moveaxis(batch_first(), 0, 2).copy()  # [3, 4, B]
    y = np.zeros((2, 1), np.float32)
    out = from_model({"s_out": graph_out, "y": y}, {"s_out": 2, "absent": 1})
    np.testing.assert_array_equal(out["s_out"], batch_first())
    assert np.shares_memory(out["s_out"], graph_out)  # a view: scatter slices it, no copy
    assert out["y"] is y and set(out) == {"s_out", "y"}


def test_the_wrapper_gives_the_graph_its_layout_and_the_batcher_batch_first_tensors() -> None:
    graph = Graph()
    wrapped = with_batch_axes(graph, AXES)
    assert type(wrapped) is BatchAxes and not hasattr(wrapped, "run_blocking")
    s, x = batch_first(), np.arange(2, dtype=np.float32)
    out = asyncio.run(wrapped.run({"s": s, "x": x}))
    (given,) = graph.given
    assert given["s"].shape == (3, 2, 4) and given["x"] is x
    np.testing.assert_array_equal(out["s_out"], s)  # moved back from axis 2
    np.testing.assert_array_equal(out["y"], x * 2)


def test_the_wrapper_passes_close_and_abandon_to_the_instance() -> None:
    graph = Graph()
    wrapped = with_batch_axes(graph, AXES)
    wrapped.close()
    assert (graph.closed, graph.abandoned) == (1, 0)
    wrapped.abandon()
    assert (graph.closed, graph.abandoned) == (1, 1)


def test_the_wrapper_keeps_the_axes_it_was_made_with() -> None:
    axes = {"s": 1}
    graph = Graph()
    wrapped = with_batch_axes(graph, axes)
    axes["s"] = 0  # the caller's dict changed later: the wrapper's copy stands
    asyncio.run(wrapped.run({"s": batch_first(), "x": np.zeros(2, np.float32)}))
    assert graph.given[0]["s"].shape == (3, 2, 4)


def test_a_blocking_instance_stays_blocking_with_its_executor() -> None:
    with ThreadPoolExecutor(1) as executor:
        graph = BlockingGraph(executor)
        wrapped = with_batch_axes(graph, AXES)
        assert isinstance(wrapped, BlockingBatchAxes)
        assert wrapped.executor is executor
        s, x = batch_first(3), np.arange(3, dtype=np.float32)
        out = wrapped.run_blocking({"s": s, "x": x})
        assert graph.given[0]["s"].shape == (3, 3, 4) and graph.given[0]["s"].flags.c_contiguous
        np.testing.assert_array_equal(out["s_out"], s)
        np.testing.assert_array_equal(out["y"], x * 2)
        out = asyncio.run(wrapped.run({"s": s, "x": x}))  # awaited too, the same layouts
        np.testing.assert_array_equal(out["s_out"], s)
        wrapped.close()
        wrapped.abandon()
        assert (graph.closed, graph.abandoned) == (1, 1)


def test_an_instance_whose_batch_axes_are_all_first_is_not_wrapped() -> None:
    graph = Graph()
    assert with_batch_axes(graph, {}) is graph
