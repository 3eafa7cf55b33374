"""Ragged batching: the pure gather (batcher/ragged.py), formation grouping ragged requests
(batcher/form.py), and the config's checks and plan (server/models/ragged_config.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batcher.form import Pending, form_batch
from batcher.ragged import BatchInputSpec, RaggedPlan, batch_input, gather_ragged
from batcher.scatter import scatter
from batcher.types import BatchingPolicy
from server.backends.onnx_inspect import inspect_onnx
from server.models.config import ConfigError, batching_policy, parse_config, validate_config
from server.models.onnx_completion import complete_from_onnx
from tests.support.ragged_models import RAGGED_AT_ONCE, RAGGED_BATCH_OF_THREE, ragged_sum_model

I64 = np.dtype(np.int64)
PLAN = RaggedPlan(
    inputs=frozenset({"x"}),
    batch_inputs=(
        BatchInputSpec("BATCH_ACCUMULATED_ELEMENT_COUNT", ("END",), np.dtype(np.int32), "x"),
        BatchInputSpec("BATCH_ELEMENT_COUNT", ("COUNT", "COUNT2"), np.dtype(np.float32), "x"),
        BatchInputSpec("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", ("OFFSETS",), I64, "x"),
    ),
)


def x_of(*values: float) -> np.ndarray:
    return np.asarray([values], np.float32)


# --- gather ----------------------------------------------------------------------------------------


def test_ragged_inputs_are_flattened_and_concatenated_with_counts_per_request() -> None:
    requests = [
        {"x": x_of(1, 2, 3), "y": np.ones((1, 2))},
        {"x": x_of(), "y": np.full((1, 2), 7.0)},
        {"x": x_of(4, 5), "y": np.zeros((1, 2))},
    ]
    inputs, offsets = gather_ragged(requests, [1, 1, 1], PLAN)
    assert inputs["x"].tolist() == [1, 2, 3, 4, 5] and inputs["x"].ndim == 1
    assert inputs["y"].shape == (3, 2)  # not ragged: along axis 0 as usual
    assert inputs["END"].tolist() == [3, 3, 5] and inputs["END"].dtype == np.int32
    assert inputs["COUNT"].tolist() == [3, 0, 2] and inputs["COUNT"].dtype == np.float32
    assert inputs["COUNT2"] is inputs["COUNT"]  # every target gets the same values
    assert inputs["OFFSETS"].tolist() == [0, 3, 3, 5]
    assert offsets == [0, 1, 2, 3]


def test_counts_are_per_request_over_all_its_rows() -> None:
    inputs, offsets = gather_ragged([{"x": np.ones((2, 3), np.float32)}, {"x": x_of(1)}], [2, 1], PLAN)
    assert inputs["COUNT"].tolist() == [6, 1] and inputs["x"].shape == (7,)
    assert offsets == [0, 2, 3]


def test_a_lone_request_gets_its_batch_inputs() -> None:
    inputs, _ = gather_ragged([{"x": x_of(1, 2)}], [1], PLAN)
    assert inputs["OFFSETS"].tolist() == [0, 2] and inputs["END"].tolist() == [2]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("BATCH_ELEMENT_COUNT", [2, 0, 5]),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT", [2, 2, 7]),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", [0, 2, 2, 7]),
    ],
)
def test_batch_input_kinds(kind: str, expected: list[int]) -> None:
    assert batch_input(kind, [2, 0, 5]).tolist() == expected  # type: ignore[arg-type]


def test_gather_refuses_requests_that_break_the_contract() -> None:
    with pytest.raises(ValueError, match="expected"):
        gather_ragged([{"x": x_of(1)}, {"z": x_of(1)}], [1, 1], PLAN)
    with pytest.raises(ValueError, match="expected 2 rows"):
        gather_ragged([{"x": x_of(1)}], [2], PLAN)


def test_outputs_scatter_by_rows() -> None:
    _, offsets = gather_ragged([{"x": x_of(1, 2)}, {"x": x_of(3)}], [1, 1], PLAN)
    parts = scatter({"sum": np.asarray([[3.0], [3.0]])}, offsets)
    assert [p["sum"].tolist() for p in parts] == [[[3.0]], [[3.0]]]


# --- formation -------------------------------------------------------------------------------------


def pending(seq: int, width: int, ragged: frozenset[str]) -> Pending[int]:
    return Pending(
        inputs={"x": np.zeros((1, width), np.float32)},
        rows=1,
        priority=1,
        arrival=0.0,
        seq=seq,
        handle=seq,
        ragged=ragged,
    )


def test_formation_joins_ragged_requests_of_any_length_only() -> None:
    policy = BatchingPolicy(max_batch_size=8)
    ragged = [pending(i, width, frozenset({"x"})) for i, width in enumerate((3, 5, 0))]
    assert [p.handle for p in form_batch(ragged, 0.0, policy, lambda rows: 0.0).batch] == [0, 1, 2]
    plain = [pending(i, width, frozenset()) for i, width in enumerate((3, 5, 0))]
    assert [p.handle for p in form_batch(plain, 0.0, policy, lambda rows: 0.0).batch] == [0]


# --- config ----------------------------------------------------------------------------------------


def test_the_plan_comes_from_the_config(tmp_path: Path) -> None:
    config = parse_config(RAGGED_BATCH_OF_THREE, "cfg")
    validate_config(config, "cfg")
    graph_in, graph_out = inspect_onnx(ragged_sum_model(tmp_path / "m.onnx"))
    done = complete_from_onnx(config, graph_in, graph_out, source="cfg")
    assert [i.name for i in done.input] == ["x"]  # END, COUNT, OFFSETS are the server's
    plan = batching_policy(done, default_max_queue_size=4, max_batches_in_flight=1).ragged
    assert plan is not None and plan.inputs == {"x"}
    assert [(s.kind, s.targets, s.dtype, s.source) for s in plan.batch_inputs] == [
        ("BATCH_ACCUMULATED_ELEMENT_COUNT", ("END",), I64, "x"),
        ("BATCH_ELEMENT_COUNT", ("COUNT",), I64, "x"),
        ("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", ("OFFSETS",), I64, "x"),
    ]
    plain = parse_config("max_batch_size: 4", "cfg")
    assert batching_policy(plain, default_max_queue_size=4, max_batches_in_flight=1).ragged is None


def test_a_ragged_input_must_be_1d_in_the_graph(tmp_path: Path) -> None:
    config = parse_config(RAGGED_AT_ONCE, "cfg")
    graph_in, graph_out = inspect_onnx(ragged_sum_model(tmp_path / "m.onnx"))
    graph_in = [t._replace(shape=["N", "T"]) if t.name == "x" else t for t in graph_in]
    with pytest.raises(
        ConfigError, match=r"input 'x' has allow_ragged_batch, so the ONNX model must take it 1-D"
    ):
        complete_from_onnx(config, graph_in, graph_out, source="cfg")


BATCH_INPUT = (
    'batch_input [ {{ kind: {kind} target_name: "{target}" data_type: {dtype} source_input: "{source}" }} ]'
)
RAGGED_X = 'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]\n'


def batch_input_config(
    kind: str = "BATCH_ELEMENT_COUNT", target: str = "N", dtype: str = "TYPE_INT32", source: str = "x"
) -> str:
    return (
        "max_batch_size: 4\n"
        + RAGGED_X
        + BATCH_INPUT.format(kind=kind, target=target, dtype=dtype, source=source)
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            batch_input_config(kind="BATCH_ITEM_SHAPE"),
            r"batch_input\[0\]: kind BATCH_ITEM_SHAPE is not supported",
        ),
        (
            batch_input_config(kind="BATCH_ITEM_SHAPE_FLATTEN"),
            "kind BATCH_ITEM_SHAPE_FLATTEN is not supported",
        ),
        (
            batch_input_config(kind="BATCH_MAX_ELEMENT_COUNT_AS_SHAPE"),
            "kind BATCH_MAX_ELEMENT_COUNT_AS_SHAPE is not",
        ),
        (batch_input_config(source="nope"), r"batch_input\[0\]: source_input 'nope' is not a config input"),
        (
            batch_input_config(dtype="TYPE_STRING"),
            r"batch_input\[0\]: data_type TYPE_STRING is not supported",
        ),
        (batch_input_config(target="x"), r"batch_input\[0\]: target_name 'x' is also a config input"),
        (RAGGED_X, r"input 'x' allow_ragged_batch needs max_batch_size > 0"),
        (
            "max_batch_size: 4\n" + RAGGED_X + "sequence_batching { }",
            "allow_ragged_batch is not supported with sequence_batching",
        ),
        (
            "max_batch_size: 4\n" + RAGGED_X + 'batch_output [ { target_name: "y" source_input: "x" } ]',
            "batch_output is not supported",
        ),
    ],
)
def test_what_is_not_built_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(parse_config(text, "cfg"), "cfg")
