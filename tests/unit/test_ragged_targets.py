"""A `batch_input` whose target is not an input of the ONNX graph, or of another type than the
graph's, fails the load naming `batch_input[i]` (server/models/ragged_config.py). It had loaded
READY, and onnxruntime then refused every request INVALID_ARGUMENT: a config fault blamed on the
client."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.backends.onnx_inspect import inspect_onnx
from server.models.config import ConfigError, parse_config, validate_config
from server.models.onnx_completion import complete_from_onnx
from tests.support.ragged_models import RAGGED_AT_ONCE, ragged_sum_model


def complete(tmp_path: Path, text: str) -> None:
    config = parse_config(text, "cfg")
    validate_config(config, "cfg")
    graph_in, graph_out = inspect_onnx(ragged_sum_model(tmp_path / "m.onnx"))
    complete_from_onnx(config, graph_in, graph_out, source="cfg")


def test_a_batch_input_target_the_graph_lacks_fails_the_load(tmp_path: Path) -> None:
    text = RAGGED_AT_ONCE.replace('target_name: "COUNT"', 'target_name: "BOGUS"')
    with pytest.raises(ConfigError) as info:
        complete(tmp_path, text)
    assert str(info.value).startswith(
        "cfg: batch_input[1]: target_name 'BOGUS' is not an input of the ONNX model (its inputs: "
    )
    assert "'END'" in str(info.value) and "'x'" in str(info.value)


@pytest.mark.parametrize(("index", "target", "dtype"), [(1, "COUNT", "TYPE_INT32"), (0, "END", "TYPE_FP32")])
def test_a_batch_input_of_another_type_than_the_graphs_fails_the_load(
    tmp_path: Path, index: int, target: str, dtype: str
) -> None:
    text = RAGGED_AT_ONCE.replace(f'"{target}" data_type: TYPE_INT64', f'"{target}" data_type: {dtype}')
    with pytest.raises(ConfigError) as info:
        complete(tmp_path, text)
    assert str(info.value) == (
        f"cfg: batch_input[{index}]: data_type {dtype} of target '{target}' does not match the ONNX "
        "model's TYPE_INT64"
    )


def test_batch_inputs_matching_the_graph_load(tmp_path: Path) -> None:
    complete(tmp_path, RAGGED_AT_ONCE)
