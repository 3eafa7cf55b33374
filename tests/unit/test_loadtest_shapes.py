"""`--shape` and `--batch-size` as perf_analyzer takes them (loadtest/shapes.py): for a batched
input (a leading -1) the shape names the dims after the batch dim and `--batch-size` the rows; a
shape or batch size the model's dims cannot take is refused before any load, saying what to pass."""

from __future__ import annotations

import pytest

from loadtest.shapes import InputMismatch, input_shapes, parse_shapes, rows_sent
from protos import grpc_service_pb2 as pb


def model(**inputs: list[int]) -> pb.ModelMetadataResponse:
    metadata = pb.ModelMetadataResponse(name="m")
    for name, dims in inputs.items():
        metadata.inputs.add(name=name, datatype="FP32", shape=dims)
    return metadata


def test_a_batched_inputs_shape_names_the_dims_after_the_batch_dim() -> None:
    # As perf_analyzer's --shape: `features=64` on [-1,64] had been sent as [64] (every request
    # refused "Expected [-1,64], got [64]").
    assert input_shapes(model(features=[-1, 64]), 4, {"features": (64,)}) == {"features": (4, 64)}
    assert input_shapes(model(x=[-1, -1, 3]), 2, {"x": (5, 3)}) == {"x": (2, 5, 3)}
    # Without --shape: the batch dim is --batch-size, other -1 dims are 1.
    assert input_shapes(model(x=[-1, -1, 3]), 2, {}) == {"x": (2, 1, 3)}


def test_a_non_batched_inputs_shape_is_its_whole_shape() -> None:
    assert input_shapes(model(x=[2, -1]), 1, {"x": (2, 7)}) == {"x": (2, 7)}
    assert input_shapes(model(x=[2, -1]), 1, {}) == {"x": (2, 1)}


def test_a_shape_with_the_batch_dim_is_refused_saying_what_to_pass() -> None:
    # It had sent one row a request while throughput_ips counted --batch-size rows (4x too many).
    with pytest.raises(InputMismatch) as refused:
        input_shapes(model(features=[-1, 64]), 4, {"features": (1, 64)})
    said = str(refused.value)
    assert "input 'features' with dims [-1,64]" in said
    assert "leading -1 is the batch dimension" in said
    assert "pass --shape features=64 and the rows as --batch-size" in said


@pytest.mark.parametrize(
    ("dims", "given", "expected"),
    [
        (
            [-1, 64],
            (32,),
            "matching [64] (-1: any size), e.g. --shape features=64",
        ),  # a fixed dim contradicted
        (
            [-1, 64],
            (2, 3, 64),
            "pass the 1 dim after the batch dimension",
        ),  # a dim too many beyond the batch
        ([-1, -1, 3], (5,), "matching [-1,3] (-1: any size), e.g. --shape features=5,3"),  # one too few
        ([2, 3], (3, 2), "pass 2 dims matching them (-1: any size), e.g. --shape features=2,3"),
        ([-1], (1,), "it has no dims after the batch dimension to set: leave --shape features out"),
    ],
)
def test_a_shape_that_does_not_fit_the_dims_is_refused(
    dims: list[int], given: tuple[int, ...], expected: str
) -> None:
    with pytest.raises(InputMismatch) as refused:
        input_shapes(model(features=dims), 1, {"features": given})
    said = str(refused.value)
    assert f"does not fit input 'features' with dims [{','.join(map(str, dims))}]" in said
    assert expected in said


def test_a_shape_for_an_input_the_model_does_not_have_is_refused() -> None:
    # It had been ignored silently.
    with pytest.raises(
        InputMismatch, match=r"--shape feature: the model has no such input \(inputs: \['features'\]\)"
    ):
        input_shapes(model(features=[-1, 64]), 1, {"feature": (64,)})


def test_a_batch_size_for_a_model_without_a_batch_dim_is_refused() -> None:
    # One row a request went out while the results counted --batch-size rows.
    with pytest.raises(
        InputMismatch, match=r"--batch-size 4: input 'x' has dims \[2,3\], no batch dimension"
    ):
        input_shapes(model(x=[2, 3]), 4, {})
    assert input_shapes(model(x=[2, 3]), 1, {}) == {"x": (2, 3)}


@pytest.mark.parametrize(
    "item", ["features", "features=", "=64", "features=a,64", "features=0,64", "features=-1"]
)
def test_a_malformed_shape_flag_is_refused(item: str) -> None:
    with pytest.raises(InputMismatch, match=r"--shape expects NAME=D1,D2,\.\.\. of whole numbers >= 1"):
        parse_shapes([item])


def test_shape_flags_parse() -> None:
    assert parse_shapes(["a=64", "b=3,224,224"]) == {"a": (64,), "b": (3, 224, 224)}


def test_rows_sent_are_the_batch_dim_of_the_batched_inputs() -> None:
    metadata = model(a=[-1, 64], b=[-1, 2], c=[3])
    assert rows_sent(metadata, {"a": (4, 64), "b": (4, 2), "c": (3,)}) == 4
    assert rows_sent(model(c=[3]), {"c": (3,)}) == 1
    with pytest.raises(InputMismatch, match="different rows"):
        rows_sent(metadata, {"a": (4, 64), "b": (2, 2), "c": (3,)})
