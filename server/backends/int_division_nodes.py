"""The nodes the integer division guard (int_division_guard.py) puts before one integer Div or Mod:
a safe divisor (1 where x86 `idiv` would trap) and the counts of the divisors replaced. Every node
here is in opset 7 but Where (opset 9), which is left out below opset 9 (`GuardNodes.safe_divisor`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

RESERVED_PREFIX = "__sluiceway_int_division_guard__/"  # names of the nodes and outputs added here
BY_ZERO = "integer division by zero"
OVERFLOW = "integer division overflow (the type's minimum / -1)"
_DIVISIONS = ("Div", "Mod")
INTEGERS = frozenset(
    {
        TensorProto.INT8,
        TensorProto.UINT8,
        TensorProto.INT16,
        TensorProto.UINT16,
        TensorProto.INT32,
        TensorProto.UINT32,
        TensorProto.INT64,
        TensorProto.UINT64,
    }
)
# Types Equal (opset 7) and Where (onnxruntime 1.23's kernels) take as they are; the others are
# compared and replaced in INT64 and cast back. They are also the types whose MIN / -1 traps.
_DIRECT = frozenset({TensorProto.INT32, TensorProto.INT64})
_MINIMUM: dict[int, int] = {
    TensorProto.INT32: int(np.iinfo(np.int32).min),
    TensorProto.INT64: int(np.iinfo(np.int64).min),
}


def is_division(node: onnx.NodeProto) -> bool:
    return node.op_type in _DIVISIONS and node.domain in ("", "ai.onnx") and len(node.input) >= 2


def guard_nodes(
    prefix: str, node: onnx.NodeProto, elem: int, *, where: bool = True
) -> tuple[list[onnx.NodeProto], str, list[tuple[str, str]]]:
    """The nodes computing a safe divisor for `node` (its divisor of type `elem`) and the counts of
    bad ones: those nodes, the safe divisor's name and (count's name, fault) for each count."""
    dividend, divisor = node.input[0], node.input[1]
    build = GuardNodes(prefix, where=where)
    work, work_type = divisor, elem
    if elem not in _DIRECT:
        work, work_type = build.add("Cast", [divisor], "wide", to=TensorProto.INT64), TensorProto.INT64
    is_zero = build.add("Equal", [work, build.constant("zero", work_type, 0)], "is_zero")
    counts = [(build.count(is_zero, "zero_divisors"), BY_ZERO)]
    minus_one_to_one = None  # where a -1 divisor must become 1
    if elem in _DIRECT:  # MIN / -1 traps too; narrower types are divided as int, unsigned never
        minus_one = build.add("Equal", [work, build.constant("minus_one", work_type, -1)], "is_minus_one")
        if node.op_type == "Mod":  # x mod -1 == x mod 1 == 0: divide by 1, the same answer
            minus_one_to_one = minus_one
        else:
            minimum = build.constant("minimum", work_type, _MINIMUM[elem])
            at_min = build.add("Equal", [dividend, minimum], "is_minimum")
            minus_one_to_one = build.add("And", [at_min, minus_one], "overflows")
            counts.append((build.count(minus_one_to_one, "overflows_count"), OVERFLOW))
    replaced = build.safe_divisor(work, work_type, is_zero, minus_one_to_one)
    safe = replaced if elem in _DIRECT else build.add("Cast", [replaced], "safe", to=elem)
    return build.nodes, safe, counts


class GuardNodes:
    """Guard nodes under one prefix: each named `prefix + position`, each output `prefix + name`."""

    def __init__(self, prefix: str, *, where: bool = True) -> None:
        self.prefix = prefix
        self.where = where  # False: the opset has no Where (below 9)
        self.nodes: list[onnx.NodeProto] = []

    def add(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        name = self.prefix + output
        node = helper.make_node(op, inputs, [name], name=f"{self.prefix}{len(self.nodes)}", **attrs)
        self.nodes.append(node)
        return name

    def constant(self, output: str, elem: int, value: int) -> str:
        name = self.prefix + output
        return self.add("Constant", [], output, value=helper.make_tensor(name, elem, [], [value]))

    def safe_divisor(self, divisor: str, elem: int, is_zero: str, minus_one_to_one: str | None) -> str:
        """`divisor` with 1 where `is_zero` or `minus_one_to_one` holds (never both: 0 is not -1).
        With Where (opset 9) where the model has it, else `divisor + zero + 2 * minus_one` (the
        conditions cast to `elem`): Equal/And/Or/Cast/Add are all in opset 7."""
        if self.where:
            bad = is_zero if minus_one_to_one is None else self.add("Or", [is_zero, minus_one_to_one], "bad")
            return self.add("Where", [bad, self.constant("one", elem, 1), divisor], "safe_wide")
        plus = self.add("Cast", [is_zero], "zero_as_one", to=elem)
        safe = self.add("Add", [divisor, plus], "zero_to_one")
        if minus_one_to_one is None:
            return safe
        minus = self.add("Cast", [minus_one_to_one], "minus_one_as_one", to=elem)
        twice = self.add("Add", [minus, minus], "minus_one_as_two")
        return self.add("Add", [safe, twice], "safe_wide")

    def count(self, condition: str, output: str) -> str:
        """The number of true elements of `condition` (0 for an empty one), as a scalar INT64."""
        counted = self.add("Cast", [condition], output + "_int64", to=TensorProto.INT64)
        # No axes (attribute before opset 13, input since): every axis, in both forms.
        return self.add("ReduceSum", [counted], output, keepdims=0)


def safe_constant(value: onnx.TensorProto | onnx.AttributeProto | None, elem: int) -> bool:
    """Whether a constant divisor is known to hold no zero, nor -1 where MIN / -1 traps (external
    or odd forms: not known)."""
    if value is None:
        return False
    if isinstance(value, onnx.AttributeProto):
        if value.name == "value_int":
            values = np.asarray([value.i])
        elif value.name == "value_ints":
            values = np.asarray(list(value.ints))
        elif value.name == "value" and not external_data_helper.uses_external_data(value.t):
            values = numpy_helper.to_array(value.t)
        else:
            return False
    elif external_data_helper.uses_external_data(value):
        return False
    else:
        values = numpy_helper.to_array(value)
    bad = (0, -1) if elem in _DIRECT else (0,)
    return bool(np.all(~np.isin(values, bad)))
