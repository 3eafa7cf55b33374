"""Mutants of server/backends/onnx_data_sized.py that survived the whole-scope run of 2026-12-05
(tests/MUTANTS.md, forty-eighth session): an output declared without a shape is never taken for
one that carries an input's first dim (`_first_symbol`'s "" for it, whatever the inputs' dims are
called), and only the suspects' declared shapes are cleared before shape inference: another
output's declared shape is what inference knows of an op it has no schema for."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from server.backends.onnx_data_sized import data_sized_outputs


def _nonzero_indices(first_dim: str) -> onnx.ModelProto:
    """NonZero's indices [nnz, 2] as the output `idx`, declared without a shape (an exporter that
    writes none), from an input `x` whose first dim is called `first_dim`."""
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
        helper.make_node("Transpose", ["nz"], ["idx"], perm=[1, 0]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [first_dim, 4])],
        [helper.make_tensor_value_info("idx", TensorProto.INT64, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("first_dim", ["N", "batch", "XXXX"])
def test_an_output_declared_without_a_shape_stays_data_sized(first_dim: str) -> None:
    """No declared first dim is no claim that the output carries the input's: it stays suspect
    whatever the input's symbol. With "XXXX" for a shapeless output's symbol (the mutant), an input
    whose first dim had that name cleared NonZero's indices, which would then batch."""
    assert data_sized_outputs(_nonzero_indices(first_dim)) == {"idx": "NonZero node 'nz'"}


def _through_a_contrib_op(declared: list[int | str | None] | None) -> onnx.ModelProto:
    """`a`, a com.microsoft op's output (onnx has no schema for it: no inference), is a graph
    output declared `declared`; the suspect `z` adds a count of NonZero's indices to it, so its
    first dim is `a`'s: the input's batch N when `a` is declared [N, 4]."""
    nodes = [
        helper.make_node("Gelu", ["x"], ["a"], domain="com.microsoft"),
        helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
        helper.make_node("ReduceSum", ["nz"], ["count"], keepdims=0),
        helper.make_node("Cast", ["count"], ["scale"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "scale"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, declared),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def test_another_outputs_declared_shape_carries_the_batch_through_inference() -> None:
    """Only the suspects' shapes are cleared for inference: `a` keeps its declared [N, 4], the one
    thing inference knows of the contrib op, and so infers `z` as [N, 4], the input's first dim.
    The mutant cleared every output's shape, `z` came out shapeless and stayed data-sized: a
    batching config for this model would have failed its load."""
    assert data_sized_outputs(_through_a_contrib_op(["N", 4])) == {}


def test_without_that_declaration_the_suspect_stays() -> None:
    """The control: `a` declared without a shape, inference cannot size `z`, and it stays suspect,
    so the case above is cleared by `a`'s declaration and nothing else."""
    assert data_sized_outputs(_through_a_contrib_op(None)) == {"z": "NonZero node 'nz'"}
