"""Dims a graph names alike on the inputs clients send (server/models/dim_ties.py): which ties a
config and a graph make, and a request refused where its sizes at a tie differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.backends.onnx_mixing_probe import named_apart
from server.backends.onnx_row_mixing import row_mixing_outputs
from server.errors import InvalidRequest
from server.models.completion import complete_version
from server.models.config import requests_share_runs
from server.models.config_errors import ConfigError
from server.models.dim_ties import DimTie, TiePlace, dim_ties
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
    assert ties == (DimTie("T", (TiePlace("x", 1), TiePlace("ids", 1))),)


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
    assert not requests_share_runs(cfg)
    assert dim_ties(cfg, [X, IDS]) == ()


def test_sequence_batching_shares_runs_too() -> None:
    cfg = config("max_batch_size: 4\nsequence_batching {}\n", {"x": [-1, 4], "ids": [-1]})
    assert requests_share_runs(cfg) and len(dim_ties(cfg, [X, IDS])) == 1


def test_the_batch_name_is_never_a_tie_wherever_it_appears() -> None:
    square = OnnxTensor("m", "tensor(float)", ["N", "N", "T"])
    ties = dim_ties(config(BATCHED, {"x": [-1, 4], "m": [-1, -1]}), [X, square])
    assert ties == (DimTie("T", (TiePlace("x", 1), TiePlace("m", 2))),)


def test_one_input_naming_two_of_its_dims_alike_is_tied_with_itself() -> None:
    mask = OnnxTensor("mask", "tensor(float)", ["N", "S", "S"])
    assert dim_ties(config(BATCHED, {"mask": [-1, -1]}), [mask]) == (
        DimTie("S", (TiePlace("mask", 1), TiePlace("mask", 2))),
    )


def test_inputs_ragged_unlisted_or_of_another_rank_are_left_out() -> None:
    ragged = config(BATCHED, {"x": [-1, 4], "ids": [-1]})
    ragged.input[1].allow_ragged_batch = True
    unlisted = config(BATCHED, {"x": [-1, 4]})
    ranked = config(BATCHED, {"x": [-1, 4], "ids": [-1, 1]})
    reshaped_wrong = config(BATCHED, {"x": [-1, 4], "ids": [-1]})
    reshaped_wrong.input[1].reshape.shape.extend([-1, 1])  # the graph's rank is not the reshape's
    for cfg in (ragged, unlisted, ranked, reshaped_wrong):
        assert dim_ties(cfg, [X, IDS]) == (), cfg


def test_a_reshaped_input_is_tied_at_its_reshaped_axes_and_checked_as_reshaped() -> None:
    # ids sent [n, T, 1], reshaped to [T] a row: the graph's ids [N, T] (a tester, session 53: the
    # reshape had switched the check off, and three requests read the next one's rows, OK).
    cfg = config(BATCHED, {"x": [-1, 4], "ids": [-1, 1]})
    cfg.input[1].reshape.shape.extend([-1])
    ties = dim_ties(cfg, [X, IDS])
    assert ties == (DimTie("T", (TiePlace("x", 1), TiePlace("ids", 1))),)
    signature = Signature.from_config(cfg, ties)
    x = np.zeros((1, 3, 4), np.float32)
    assert signature.check_inputs({"x": x, "ids": np.zeros((1, 3, 1), np.float32)}) == 1
    with pytest.raises(InvalidRequest) as err:
        signature.check_inputs({"x": x, "ids": np.zeros((1, 5, 1), np.float32)})
    assert str(err.value).startswith(
        "input 'ids' (as reshaped to [1, 5]): dim 1 is 5, but input 'x' dim 1 is 3; "
        "the model's graph names both 'T'"
    ), err.value
    flat = config(BATCHED, {"x": [-1], "ids": [-1]})  # x sent flat, reshaped to [T, 4] a row
    flat.input[0].reshape.shape.extend([-1, 4])
    signature = Signature.from_config(flat, dim_ties(flat, [X, IDS]))
    assert (
        signature.check_inputs({"x": np.zeros((2, 12), np.float32), "ids": np.zeros((2, 3), np.float32)}) == 2
    )
    with pytest.raises(
        InvalidRequest, match=r"input 'ids': dim 1 is 5, but input 'x' \(as reshaped to \[2, 3, 4\]\)"
    ):
        signature.check_inputs({"x": np.zeros((2, 12), np.float32), "ids": np.zeros((2, 5), np.float32)})


def test_an_overridable_initializer_the_config_lists_is_tied_and_left_out_checked_by_its_own_shape() -> None:
    # ids also an initializer of shape [1, 3], listed optional: sent, it is checked as any input;
    # left out, the run takes the initializer's 3 steps (a tester, session 53).
    cfg = config(BATCHED, {"x": [-1, 4], "ids": [-1]})
    cfg.input[1].optional = True
    listed = OnnxTensor("ids", "tensor(float)", ["N", "T"], default=(1, 3))
    ties = dim_ties(cfg, [X], [listed])
    assert ties == (DimTie("T", (TiePlace("x", 1), TiePlace("ids", 1, 3))),)
    signature = Signature.from_config(cfg, ties)
    assert signature.check_inputs({"x": np.zeros((1, 3, 4), np.float32)}) == 1
    with pytest.raises(InvalidRequest, match="input 'ids': dim 1 is 5, but input 'x' dim 1 is 3"):
        signature.check_inputs({"x": np.zeros((1, 3, 4), np.float32), "ids": np.zeros((1, 5), np.float32)})
    with pytest.raises(InvalidRequest) as err:
        signature.check_inputs({"x": np.zeros((1, 5, 4), np.float32)})
    assert str(err.value).startswith(
        "input 'ids' (left out: its initializer's): dim 1 is 3, but input 'x' dim 1 is 5"
    ), err.value


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
    tie = DimTie("T", (TiePlace("x", 1), TiePlace("ids", 1), TiePlace("x", 2)))
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
    assert signatures[1].ties == (DimTie("T", (TiePlace("x", 1), TiePlace("ids", 1))),)


def test_a_state_named_like_the_inputs_steps_is_named_apart_for_the_reading(tmp_path: Path) -> None:
    # The state is the last request's x: 3 steps beside this request's 5, and a pick bounded by
    # the request's steps read the next sequence's state, OK (a tester, session 53). Its sizes are
    # never checked against a request's, so its 'T' proves nothing.
    model = onnx.load(tied_steps(tmp_path / "state.onnx", state=True))
    assert row_mixing_outputs(model) == {}  # read with the state's 'T' taken at its word
    mixing = row_mixing_outputs(model, server_fed={"st"})
    assert set(mixing) == {"y"} and "the Gather node making 'y' picks from 'flat'" in mixing["y"], mixing
    assert row_mixing_outputs(onnx.load(tied_steps(tmp_path / "tied.onnx")), server_fed={"st"}) == {}


def test_a_sequence_batching_config_with_such_a_state_fails_its_load(tmp_path: Path) -> None:
    path = tied_steps(tmp_path / "state.onnx", state=True)
    text = (
        "max_batch_size: 8\n"
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] }, '
        '{ name: "ids" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'sequence_batching { state [ { input_name: "st" output_name: "st_out" '
        "data_type: TYPE_FP32 dims: [ -1, 4 ] } ] }\n"
    )
    write_model(tmp_path / "repo", "m", path, text)
    with pytest.raises(ConfigError, match="ONNX output 'y' mixes the rows of a batch"):
        complete_version(load_model_source(tmp_path / "repo", "m"), path, 8)
    one = text.replace("max_batch_size: 8", "max_batch_size: 1")  # one sequence a batch
    write_model(tmp_path / "repo1", "m", path, one)
    assert complete_version(load_model_source(tmp_path / "repo1", "m"), path, 8).config.max_batch_size == 1


def test_two_rows_a_batch_are_two_requests_together() -> None:
    cfg = config("max_batch_size: 2\ndynamic_batching {}\n", {"x": [-1, 4], "ids": [-1]})
    assert requests_share_runs(cfg) and len(dim_ties(cfg, [X, IDS])) == 1


def test_a_left_out_input_between_two_sent_ones_skips_only_itself() -> None:
    tie = DimTie("T", (TiePlace("a", 1), TiePlace("opt", 1), TiePlace("b", 1)))
    cfg = config(BATCHED, {"a": [-1], "opt": [-1], "b": [-1]})
    cfg.input[1].optional = True
    signature = Signature.from_config(cfg, (tie,))
    with pytest.raises(InvalidRequest, match="input 'b': dim 1 is 5, but input 'a' dim 1 is 3"):
        signature.check_inputs({"a": np.zeros((1, 3), np.float32), "b": np.zeros((1, 5), np.float32)})


def _probe(inputs: list[tuple[str, list[int | str]]], initializers: tuple[str, ...] = ()) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        [],
        "g",
        [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape) for name, shape in inputs],
        [],
        initializer=[
            onnx.helper.make_tensor(name, onnx.TensorProto.FLOAT, [1], [0.0]) for name in initializers
        ],
    )
    return onnx.helper.make_model(graph)


def _dims(model: onnx.ModelProto, name: str) -> list[int | str]:
    [value] = [v for v in model.graph.input if v.name == name]
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]


def test_named_apart_renames_only_the_server_fed_inputs_dims_but_the_clients_batch_names() -> None:
    # The batch's names are the first dims of the inputs clients send: not a server-fed input's
    # (st's S), nor an initializer listed as an input (w's T); numbered dims stay numbers.
    probe = _probe([("x", ["N", "T"]), ("st", ["S", "N", "T", 4]), ("w", ["T"])], initializers=("w",))
    named_apart(probe, {"st"})
    assert _dims(probe, "st") == ["S@st", "N", "T@st", 4]
    assert _dims(probe, "x") == ["N", "T"] and _dims(probe, "w") == ["T"]
    untouched = _probe([("x", ["N", "T"]), ("st", ["N", "T"])])
    assert named_apart(untouched, ()) is untouched and _dims(untouched, "st") == ["N", "T"]


def test_a_default_shorter_than_the_declared_shape_gives_no_default_size() -> None:
    cfg = config(BATCHED, {"x": [-1, 4], "ids": [-1]})
    cfg.input[1].optional = True
    scalar_default = OnnxTensor("ids", "tensor(float)", ["N", "T"], default=(3,))
    assert dim_ties(cfg, [X], [scalar_default]) == (DimTie("T", (TiePlace("x", 1), TiePlace("ids", 1))),)


def test_a_reshape_with_a_zero_dim_reads_its_free_dim_as_zero() -> None:
    # ids sent [n, 0], reshaped to [0, -1]: the free dim is 0 (no elements to divide), tied to x's
    # steps, 0 as well.
    cfg = config(BATCHED, {"x": [-1, 4], "ids": [-1]})
    cfg.input[1].reshape.shape.extend([0, -1])
    ids = OnnxTensor("ids", "tensor(float)", ["N", 0, "T"])
    signature = Signature.from_config(cfg, dim_ties(cfg, [X, ids]))
    x = np.zeros((1, 0, 4), np.float32)
    assert signature.check_inputs({"x": x, "ids": np.zeros((1, 0), np.float32)}) == 1
