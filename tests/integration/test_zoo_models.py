"""A Triton user's own small models, served from one repository with and without config.pbtxt:
requests sent together (three of them, four rows in all, which the batching configs coalesce into
one run) through tritonclient and our client, each answer compared with onnxruntime run on that
request alone. Every element type, variable sequence lengths arriving together, PyTorch-style
names, a graph output that is its input, optional (overridable) inputs, no inputs, outputs
without a batch dim. Checked to fail when the scatter hands the batch's parts in reverse order
(9 of the 24 fail: every batched case)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clients import Client
from tests.support import zoo_models as zoo
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_checks import BATCH_OF_FOUR_ROWS, assert_each_alone, ours_together, triton_together

Requests = list[dict[str, np.ndarray]]
rng = np.random.default_rng(22)

# Served without batching (max_batch_size 0), its inputs listed so that completion keeps it so.
TOKENS_UNBATCHED = """
max_batch_size: 0
input [ { name: "ids" data_type: TYPE_INT64 dims: [ -1, -1 ] },
        { name: "mask" data_type: TYPE_INT64 dims: [ -1, -1 ] } ]
"""
# The initializer `bias`, listed as an optional input: a request may override it.
BIAS_OPTIONAL = """
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] },
        { name: "bias" data_type: TYPE_FP32 dims: [ 3 ] optional: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
"""


def _tokens(lengths: tuple[int, ...], rows: tuple[int, ...]) -> Requests:
    return [
        {
            "ids": rng.integers(0, 64, (r, s)).astype(np.int64),
            "mask": (rng.random((r, s)) < 0.7).astype(np.int64),
        }
        for s, r in zip(lengths, rows, strict=True)
    ]


def _all_types(rows: tuple[int, ...]) -> Requests:
    return [
        {
            "h": rng.standard_normal((r, 3)).astype(np.float16),
            "u": rng.integers(0, 256, (r, 3)).astype(np.uint8),
            "i": rng.integers(-128, 128, (r, 3)).astype(np.int8),
            "b": rng.random((r, 3)) < 0.5,
            "s": np.array([[f"row {k} of {r}".encode(), "\x00é ✓".encode()] for k in range(r)], dtype=object),
        }
        for r in rows
    ]


def _float(name: str, rows: tuple[int, ...], cols: int = 3) -> Requests:
    return [{name: rng.integers(-9, 9, (r, cols)).astype(np.float32)} for r in rows]


def _sparse(rows: tuple[int, ...]) -> Requests:
    return [{"x": (rng.random((r, 4)) < 0.4).astype(np.float32)} for r in rows]


@dataclass(frozen=True)
class Case:
    model: str
    build: Callable[[Path], Path]
    config: str | None  # None: no config.pbtxt, completed from the graph
    requests: Callable[[], Requests]
    batched: bool  # the config coalesces the three requests into one run


CASES = [
    Case("tokens_b4", zoo.token_pool, BATCH_OF_FOUR_ROWS, lambda: _tokens((5, 5, 5), (1, 2, 1)), True),
    Case("tokens_ragged", zoo.token_pool, None, lambda: _tokens((3, 7, 3), (1, 1, 2)), False),
    Case("tokens_unbatched", zoo.token_pool, TOKENS_UNBATCHED, lambda: _tokens((3, 7, 0), (2, 1, 1)), False),
    Case("types_b4", zoo.all_types, BATCH_OF_FOUR_ROWS, lambda: _all_types((1, 1, 2)), True),
    Case("types", zoo.all_types, None, lambda: _all_types((2, 1, 1)), False),
    Case("names_b4", zoo.odd_names, BATCH_OF_FOUR_ROWS, lambda: _float("input.1", (2, 1, 1)), True),
    Case("passthrough_b4", zoo.passthrough, BATCH_OF_FOUR_ROWS, lambda: _float("x", (1, 1, 2)), True),
    Case("mixed", zoo.mixed_outputs, None, lambda: _float("x", (1, 2, 3)), False),
    Case("nonzero", zoo.nonzero, None, lambda: _sparse((1, 2, 3)), False),
    Case("shape", zoo.shape_of, None, lambda: _float("x", (1, 2, 0), cols=5), False),
    Case("constant", zoo.constant_only, None, lambda: [{}, {}, {}], False),
    Case(
        "bias",
        zoo.overridable_bias,
        BIAS_OPTIONAL,
        lambda: [*_float("x", (1, 2)), {**_float("x", (2,))[0], "bias": np.float32([5, -6, 7])}],
        False,
    ),
]


@pytest.fixture(scope="module")
def zoo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, Path]]]:
    repo = tmp_path_factory.mktemp("zoo")
    files = tmp_path_factory.mktemp("zoo-files")
    built: dict[str, Path] = {}
    for case in CASES:
        if case.build.__name__ not in built:
            built[case.build.__name__] = case.build(files / f"{case.build.__name__}.onnx")
        write_model(repo, case.model, built[case.build.__name__], case.config)
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server, {case.model: built[case.build.__name__] for case in CASES}


def _runs(client: Client, model: str) -> tuple[int, int]:
    (stats,) = client.model_statistics(model).model_stats
    return stats.execution_count, stats.inference_count


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
@pytest.mark.parametrize("case", CASES, ids=[c.model for c in CASES])
def test_each_answer_is_onnxruntimes_for_its_request_alone(
    zoo_server: tuple[ServerProcess, dict[str, Path]], case: Case, send: str
) -> None:
    server, files = zoo_server
    requests = case.requests()
    with Client(server.address) as client:
        runs_before, rows_before = _runs(client, case.model)
        if send == "tritonclient":
            outputs = [o.name for o in client.model_metadata(case.model).outputs]
            answers = triton_together(server.address, case.model, requests, outputs)
        else:
            answers = ours_together(server.address, case.model, requests)
        assert_each_alone(files[case.model], requests, answers, case.model)
        runs, rows = _runs(client, case.model)
    if case.batched:  # one run for the three (four rows): the scatter, not three runs alone, answered them
        assert (runs - runs_before, rows - rows_before) == (
            1,
            sum(len(next(iter(r.values()))) for r in requests),
        )
