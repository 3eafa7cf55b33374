"""Dims a graph names alike on the inputs clients send (server/models/dim_ties.py): which ties a
config and a graph make, and a request refused where its sizes at a tie differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.errors import InvalidRequest
from server.models.dim_ties import DimTie, batched_together, dim_ties
from server.models.lazy_signatures import predicted_signatures
from server.models.onnx_completion import OnnxTensor
from server.models.repository import load_model_source
from server.protocol.validate import Signature
from tests.support.repositories import write_model
from tests.support.zoo_models import tied_steps

BATCHED = "max_batch_size: 8\ndynamic_batching {}\n"
X = OnnxTensor("x", "tensor(float)", ["N", "T", 4])
IDS = OnnxTensor("ids", "tensor(float)", ["N", "T"])


def config(text: str, inputs: dict[str, list[int]]) -> mc.ModelConfig:
    parsed = text_format.Parse(text, mc.ModelConfig(name="m"))
    for name, dims in inputs.items():
        parsed.input.add(name=name, data_type=mc.TYPE_FP32, dims=dims)
    return parsed


def test_two_inputs_naming_their_steps_alike_are_tied_at_the_request_axes() -> None:
    ties = dim_ties(config(BATCHED, {"x": [-1, 4], "ids": [-1]}), [X, IDS])
    assert ties == (DimTie("T", (("x", 1), ("ids", 1))),)


@pytest.mark.parametrize(
    "text",
    [
        "max_batch_size: 8\n",  # each request runs alone
        "max_batch_size: 1\ndynamic_batching {}\n",  # one row a batch: never two requests
        "max_batch_size: 0\n",
    ],
)
def test_no_ties_where_requests_do_not_share_a_run(text: str) -> None:
    cfg = config(text, {"x": [-1, 4], "ids": [-1]})
    assert not batched_together(cfg)
    assert dim_ties(cfg, [X, IDS]) == ()


def test_sequence_batching_shares_runs_too() -> None:
    cfg = config("max_batch_size: 4\nsequence_batching {}\n", {"x": [-1, 4], "ids": [-1]})
    assert batched_together(cfg) and len(dim_ties(cfg, [X, IDS])) == 1


def test_the_batch_name_is_never_a_tie_wherever_it_appears() -> None:
    square = OnnxTensor("m", "tensor(float)", ["N", "N", "T"])
    ties = dim_ties(config(BATCHED, {"x": [-1, 4], "m": [-1, -1]}), [X, square])
    assert ties == (DimTie("T", (("x", 1), ("m", 2))),)


def test_one_input_naming_two_of_its_dims_alike_is_tied_with_itself() -> None:
    mask = OnnxTensor("mask", "tensor(float)", ["N", "S", "S"])
    assert dim_ties(config(BATCHED, {"mask": [-1, -1]}), [mask]) == (DimTie("S", (("mask", 1), ("mask", 2))),)


def test_inputs_reshaped_ragged_unlisted_or_of_another_rank_are_left_out() -> None:
    reshaped = config(BATCHED, {"x": [-1, 4], "ids": [-1]})
    reshaped.input[1].reshape.shape.extend([-1])
    ragged = config(BATCHED, {"x": [-1, 4], "ids": [-1]})
    ragged.input[1].allow_ragged_batch = True
    unlisted = config(BATCHED, {"x": [-1, 4]})
    ranked = config(BATCHED, {"x": [-1, 4], "ids": [-1, 1]})
    for cfg in (reshaped, ragged, unlisted, ranked):
        assert dim_ties(cfg, [X, IDS]) == (), cfg


def test_unnamed_and_numbered_dims_tie_nothing() -> None:
    a = OnnxTensor("a", "tensor(float)", [None, None, 3])
    b = OnnxTensor("b", "tensor(float)", [None, None, 3])
    assert dim_ties(config(BATCHED, {"a": [-1, 3], "b": [-1, 3]}), [a, b]) == ()


def _signature(ties: tuple[DimTie, ...]) -> Signature:
    cfg = config(BATCHED, {"x": [-1, 4], "ids": [-1]})
    cfg.input[1].optional = True
    return Signature.from_config(cfg, ties)


def test_a_request_whose_tied_sizes_differ_is_refused_naming_both_inputs_and_the_name() -> None:
    signature = _signature(dim_ties(config(BATCHED, {"x": [-1, 4], "ids": [-1]}), [X, IDS]))
    x = np.zeros((2, 3, 4), np.float32)
    assert signature.check_inputs({"x": x, "ids": np.zeros((2, 3), np.float32)}) == 2
    assert signature.check_inputs({"x": x}) == 2  # an optional input left out ties nothing
    with pytest.raises(InvalidRequest) as err:
        signature.check_inputs({"x": x, "ids": np.zeros((2, 5), np.float32)})
    assert str(err.value) == (
        "input 'ids': dim 1 is 5, but input 'x' dim 1 is 3; the model's graph names both 'T', "
        "and requests batched together are read as equal there"
    )


def test_three_places_are_checked_against_the_first_sent() -> None:
    tie = DimTie("T", (("x", 1), ("ids", 1), ("x", 2)))
    signature = Signature.from_config(config(BATCHED, {"x": [-1, -1], "ids": [-1]}), (tie,))
    same = np.zeros((1, 3, 3), np.float32)
    assert signature.check_inputs({"x": same, "ids": np.zeros((1, 3), np.float32)}) == 1
    with pytest.raises(InvalidRequest, match="input 'x': dim 2 is 4, but input 'x' dim 1 is 3"):
        signature.check_inputs({"x": np.zeros((1, 3, 4), np.float32), "ids": np.zeros((1, 3), np.float32)})


def test_a_lazy_models_early_judge_knows_the_ties_its_graph_makes(tmp_path: Path) -> None:
    model = tied_steps(tmp_path / "tied.onnx")
    write_model(tmp_path / "repo", "m", model, BATCHED)
    signatures = predicted_signatures(load_model_source(tmp_path / "repo", "m"), 8)
    assert signatures is not None
    assert signatures[1].ties == (DimTie("T", (("x", 1), ("ids", 1))),)
