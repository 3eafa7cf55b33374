"""GPT-2's last-token pooling as torch's legacy exporter writes it (server/backends/
onnx_row_positions.py): logits[arange(N), lens] as a Gather from the logits flattened, at
arange(N) * S + lens, lens = (argmax(ids == pad) - 1) % S. The Mod bounds lens to [0, S) whatever
it divides: its bound is read from its divisor's input alone (a tester, session 57: with S read
from the logits and the ArgMax over the ids it was refused; the GatherND form batched)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs


def _pooled(steps_of: str) -> onnx.ModelProto:
    """The pooling, S read from `steps_of`'s dim 1."""
    nodes = [
        helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
        helper.make_node("Cast", ["is_pad"], ["flags"], to=TensorProto.INT32),
        helper.make_node("ArgMax", ["flags"], ["first"], axis=-1, keepdims=0),
        helper.make_node("Sub", ["first", "one"], ["before"]),
        helper.make_node("Shape", [steps_of], ["dims"]),
        helper.make_node("Gather", ["dims", "one"], ["steps"], axis=0),
        helper.make_node("Mod", ["before", "steps"], ["lens"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "zero"], ["n"], axis=0),
        helper.make_node("Range", ["zero", "n", "one"], ["rows"]),
        helper.make_node("Mul", ["rows", "steps"], ["starts"]),
        helper.make_node("Add", ["starts", "lens"], ["at"]),
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
        helper.make_node("Gather", ["flat", "at"], ["y"], axis=0),
    ]
    inits = [
        numpy_helper.from_array(np.array(v, np.int64), name)
        for name, v in (("zero", 0), ("one", 1), ("pad", 0))
    ]
    inits.append(numpy_helper.from_array(np.array([-1, 6], np.int64), "flat_shape"))
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 6]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"]),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, [out], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


def test_a_mod_by_the_logits_steps_bounds_the_pick_to_each_row() -> None:
    assert row_mixing_outputs(_pooled("x")) == {}


def test_a_mod_by_another_inputs_steps_is_no_bound_on_the_logits_rows() -> None:
    # ids sent wider than x: lens past x's steps would read the next request's row.
    got = row_mixing_outputs(_pooled("ids"))
    assert "the Gather node making 'y' picks from 'flat' at indices 'at'" in got["y"], got
