"""Config values no request could be served with are load errors naming the field and the bound
(server/models/config_bounds.py), through validate_config as a repository or an override loads."""

from __future__ import annotations

import pytest

from server.models.config import ConfigError, parse_config, validate_config
from server.models.config_bounds import MAX_QUEUE_DELAY_US
from server.tensor_bounds import MAX_ELEMENTS


def _config(dims: str = "3", extra: str = "", max_batch_size: int = 4) -> str:
    return (
        f'backend: "identity"\nmax_batch_size: {max_batch_size}\n'
        f'input {{ name: "INPUT0" data_type: TYPE_FP32 dims: [{dims}] }}\n'
        'output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [3] }\n' + extra
    )


def _validate(text: str) -> None:
    validate_config(parse_config(text, "m/config.pbtxt"), "m/config.pbtxt")


def _refusal(text: str) -> str:
    with pytest.raises(ConfigError) as refused:
        _validate(text)
    return str(refused.value)


def test_dims_whose_fixed_dimensions_pass_the_element_bound_are_refused() -> None:
    big = 2**62
    assert _refusal(_config(f"{big}, {big}")) == (
        f"m/config.pbtxt: input 'INPUT0': dims [{big}, {big}]: its fixed dimensions multiply past "
        f"{MAX_ELEMENTS} (2**40), the most elements one tensor may describe: no request could send it"
    )
    # Variable and zero dimensions do not count, as a request's shape is checked (codec.py).
    _validate(_config(f"-1, 0, {2**20}, {2**20}"))
    reshaped = _config("-1").replace("dims: [-1] }", f"dims: [-1] reshape {{ shape: [-1, {2**41}] }} }}")
    assert f"input 'INPUT0': reshape.shape [-1, {2**41}]: its fixed dimensions" in _refusal(reshaped)


def test_more_dimensions_than_a_request_may_have_are_refused() -> None:
    assert "has 32 dimensions; at most 31 (one more is the batch dimension)" in _refusal(
        _config(", ".join(["1"] * 32))
    )
    _validate(_config(", ".join(["1"] * 32), max_batch_size=0))


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (f"dynamic_batching {{ max_queue_delay_microseconds: {2**64 - 1} }}\n", "dynamic_batching"),
        (
            f"sequence_batching {{ oldest {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US + 1} }} }}\n",
            "sequence_batching.oldest",
        ),
    ],
)
def test_a_queue_delay_past_one_hour_is_refused(extra: str, field: str) -> None:
    assert f"{field}.max_queue_delay_microseconds" in _refusal(_config(extra=extra))
    assert f"exceeds {MAX_QUEUE_DELAY_US} (one hour)" in _refusal(_config(extra=extra))


def test_bounds_that_can_serve_stay_accepted() -> None:
    _validate(_config(extra=f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}\n"))
    # Levels are counted only where requests are queued: the most uint64 holds is served.
    top = 2**64 - 1
    _validate(_config(extra=f"dynamic_batching {{ priority_levels: {top} default_priority_level: {top} }}\n"))
