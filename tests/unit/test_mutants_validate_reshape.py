"""server/protocol/validate.py's reshape check, through Signature.check_inputs: an input whose config
has a `reshape` takes a row whose elements fill it (with a variable dimension: a multiple of the
fixed ones, 0 when a fixed one is 0), and refuses any other INVALID_ARGUMENT, naming the elements
per row, the reshape and what it needs. A refused row had failed its whole batch INTERNAL in the run.

Every model here is one the server loads (validate_config): `reshape` has a -1 where `dims` has one,
and without one both hold as many elements, so such a row always fits (its shape matched `dims`)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from server.errors import InvalidRequest, status_for
from server.models.config import parse_config, validate_config
from server.protocol.validate import Signature


def signature(max_batch_size: int, dims: list[int], reshape: list[int]) -> Signature:
    text = (
        'name: "reshaped"\nbackend: "onnxruntime"\n'
        f"max_batch_size: {max_batch_size}\n"
        f'input [ {{ name: "x" data_type: TYPE_FP32 dims: {dims} reshape {{ shape: {reshape} }} }} ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    config = parse_config(text, "reshaped")
    validate_config(config, "reshaped")  # a config the server loads
    return Signature.from_config(config)


def refusal(
    max_batch_size: int, dims: list[int], reshape: list[int], shape: tuple[int, ...]
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(InvalidRequest) as refused:
        signature(max_batch_size, dims, reshape).check_inputs({"x": np.zeros(shape, np.float32)})
    code, message, expected = status_for(refused.value)
    assert expected
    return code, message


@pytest.mark.parametrize(
    ("max_batch_size", "dims", "reshape", "shape", "rows"),
    [
        (4, [4], [2, 2], (3, 4), 3),  # no variable dimension: the row is exactly what the reshape holds
        (4, [4], [1, 4], (1, 4), 1),
        (0, [2, 3], [6], (2, 3), 1),  # no batch dimension: the whole input is the row
        (4, [-1], [-1, 3], (2, 6), 2),  # a multiple of the fixed dimensions
        (4, [-1], [-1, 3], (2, 3), 2),
        (4, [-1], [1, -1, 3], (1, 9), 1),  # a fixed 1 changes nothing
        (4, [-1], [-1, 3], (1, 0), 1),  # 0 is a multiple of any
        (0, [-1], [-1, 4], (8,), 1),
        (4, [-1], [-1, 0], (2, 0), 2),  # a fixed 0: only a row of no elements fits
        (4, [-1, 0], [0, -1], (1, 5, 0), 1),
        (0, [-1], [-1, 0], (0,), 1),
    ],
)
def test_a_row_that_fills_the_reshape_is_taken(
    max_batch_size: int, dims: list[int], reshape: list[int], shape: tuple[int, ...], rows: int
) -> None:
    assert signature(max_batch_size, dims, reshape).check_inputs({"x": np.zeros(shape, np.float32)}) == rows


@pytest.mark.parametrize(
    ("max_batch_size", "dims", "reshape", "shape", "message"),
    [
        (
            4,
            [-1],
            [-1, 3],
            (2, 7),  # 14 elements in all: the row counts, not the request
            "7 elements per row cannot take the model's reshape [-1, 3] (a multiple of 3 needed)",
        ),
        (
            4,
            [-1],
            [-1, 3],
            (1, 1),
            "1 elements per row cannot take the model's reshape [-1, 3] (a multiple of 3 needed)",
        ),
        (
            0,
            [-1],
            [1, -1, 4],
            (6,),  # without a batch dimension the whole input is the row
            "6 elements per row cannot take the model's reshape [1, -1, 4] (a multiple of 4 needed)",
        ),
        (
            4,
            [-1, 2],
            [2, -1, 3],
            (1, 5, 2),
            "10 elements per row cannot take the model's reshape [2, -1, 3] (a multiple of 6 needed)",
        ),
        (
            4,
            [-1],
            [-1, 0],
            (1, 3),  # the only multiple of 0 is 0
            "3 elements per row cannot take the model's reshape [-1, 0] (a multiple of 0 needed)",
        ),
        (
            0,
            [-1],
            [-1, 0],
            (1,),
            "1 elements per row cannot take the model's reshape [-1, 0] (a multiple of 0 needed)",
        ),
    ],
)
def test_a_row_that_cannot_fill_the_reshape_is_refused_naming_what_it_needs(
    max_batch_size: int, dims: list[int], reshape: list[int], shape: tuple[int, ...], message: str
) -> None:
    said = f"input 'x': {message}"
    assert refusal(max_batch_size, dims, reshape, shape) == (grpc.StatusCode.INVALID_ARGUMENT, said)


def test_the_refusal_names_the_reshaped_input_among_others() -> None:
    text = (
        'name: "two"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'
        'input [ { name: "plain" data_type: TYPE_FP32 dims: [ -1 ] }, '
        '{ name: "grid" data_type: TYPE_FP32 dims: [ -1 ] reshape { shape: [ -1, 2 ] } } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    config = parse_config(text, "two")
    validate_config(config, "two")
    two = Signature.from_config(config)
    odd = {"plain": np.zeros((2, 3), np.float32), "grid": np.zeros((2, 3), np.float32)}
    with pytest.raises(InvalidRequest) as refused:
        two.check_inputs(odd)
    assert status_for(refused.value)[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'grid': 3 elements per row cannot take the model's reshape [-1, 2] (a multiple of 2 needed)",
    )
    even = {"plain": np.zeros((2, 3), np.float32), "grid": np.zeros((2, 4), np.float32)}
    assert two.check_inputs(even) == 2
