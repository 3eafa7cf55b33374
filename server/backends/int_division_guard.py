"""Integer Div and Mod guarded against a divisor x86 `idiv` traps on: zero, and -1 under the type's
minimum (INT_MIN / -1 overflows).

x86 `idiv` raises SIGFPE on both, and onnxruntime divides integers with it: before 1.31 (1.23.2 is
the newest for Python 3.10) a zero divisor ends the whole server process, and every request in flight
with it (onnxruntime issue #27686); 1.31 checks for a zero but still traps on INT_MIN / -1 (int32 and
int64; narrower types are divided as int). A signal cannot be caught and resumed from Python, so such
a pair must never reach a Div or Mod: on every onnxruntime a model's top-level integer Div/Mod nodes
are rewritten at load, divisor `B` -> `Where(bad, 1, B)`, and each guarded node gets extra graph
outputs, the count of bad pairs it met (`ReduceSum(Cast(bad, INT64))`: a sum is 0 over an empty
tensor, where ReduceMax's value differs between onnxruntime versions). `bad` is `Equal(B, 0)`, and
for a 32/64-bit signed Div also `Equal(A, MIN) and Equal(B, -1)`, counted apart (its own flag). A
signed Mod by -1 is replaced by a Mod by 1 instead, the same answer (0) with no flag. The backend
fetches the counts with every run, never shows or sends them, and fails a batch whose count is not 0
with the inputs' fault (INVALID_ARGUMENT), as onnxruntime 1.31 does for a zero.

Left alone: a divisor that is a constant with no zero (and no -1 where it could overflow), float
types, nodes inside subgraphs (If, Loop, Scan bodies). A model this cannot rewrite (external data,
an opset without Where, a divisor type shape inference cannot tell) loads unguarded, with one
WARNING line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper, shape_inference

from batcher.types import Array
from server.errors import ModelRefusedInput

log = logging.getLogger(__name__)

RESERVED_PREFIX = "__sluiceway_int_division_guard__/"  # names of the nodes and outputs added here
MIN_OPSET = 9  # Where's first opset
_DIVISIONS = ("Div", "Mod")
_INTEGERS = frozenset(
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
BY_ZERO = "integer division by zero"
OVERFLOW = "integer division overflow (the type's minimum / -1)"


class GuardUnavailable(Exception):
    """The model's integer divisions cannot be guarded; the message says why."""


@dataclass(frozen=True)
class DivisionGuard:
    """A rewritten model: its bytes, its extra outputs (flags) and, for each, its node and fault."""

    model_bytes: bytes
    flags: tuple[str, ...]  # extra graph outputs, the count of bad divisors a guarded node met
    nodes: tuple[str, ...]  # the guarded node of each flag, as a message names it
    faults: tuple[str, ...]  # what each flag counts: BY_ZERO or OVERFLOW

    def check(self, model: str, counts: Sequence[Array], *, log_it: bool = True) -> None:
        """Raise ModelRefusedInput when a run's `counts` (the flags' values, in order) say a
        divisor was bad: the run divided by 1 there, and its outputs are not the model's."""
        hit: dict[str, list[str]] = {}
        for node, fault, count in zip(self.nodes, self.faults, counts, strict=True):
            if np.asarray(count).any():
                hit.setdefault(fault, []).append(repr(node))
        if not hit:
            return
        where = "; ".join(f"{fault} in node {', '.join(nodes)}" for fault, nodes in hit.items())
        if log_it:  # as run_errors.py logs onnxruntime's refusals: once per batch
            log.warning("model %s: refused a batch's inputs: %s", model, where)
        raise ModelRefusedInput(f"model '{model}': {where}")


def division_guard_for(
    path: Path, model: str, runtime_version: str, wanted: bool | None = None
) -> DivisionGuard | None:
    """The guarded model for `path` unless `wanted` is False (None: on every onnxruntime, as all
    known trap on MIN / -1), when the model has integer divisions to guard; None otherwise, also
    when it cannot be rewritten (one WARNING naming `runtime_version`)."""
    if wanted is False:
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
        return guard_model(proto)
    except Exception as err:  # GuardUnavailable, or onnx cannot read what onnxruntime may
        log.warning(
            "model %s: integer Div/Mod left unguarded (onnxruntime %s ends the process on a zero "
            "divisor or MIN / -1; a request with one will end this server): %s",
            model,
            runtime_version,
            err,
        )
        return None


def guard_model(model: onnx.ModelProto) -> DivisionGuard | None:
    """Rewrite `model` in place (see the module's docstring); None when nothing needs a guard."""
    graph = model.graph
    candidates = [i for i, node in enumerate(graph.node) if _is_division(node)]
    if not candidates:
        return None
    constants = _constant_divisors(graph)
    types = _value_types(model)
    targets: list[tuple[int, int]] = []  # (node index, element type)
    for index in candidates:
        node = graph.node[index]
        elem = next((types[n] for n in (*node.input[:2], node.output[0]) if n in types), None)
        if elem is None:
            raise GuardUnavailable(f"the type of node {_label(node, index)!r} is not known")
        if elem in _INTEGERS and not _safe_constant(constants.get(node.input[1]), elem):
            targets.append((index, elem))
    if not targets:
        return None
    if any(initializer.data_location == TensorProto.EXTERNAL for initializer in graph.initializer):
        raise GuardUnavailable("its weights are in external data files")
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        raise GuardUnavailable(f"opset {opset} has no Where (opset {MIN_OPSET} or newer is needed)")
    if any(name.startswith(RESERVED_PREFIX) for name in _names(graph)):
        raise GuardUnavailable(f"it already names values '{RESERVED_PREFIX}...'")
    return _rewrite(model, targets)


def _rewrite(model: onnx.ModelProto, targets: Sequence[tuple[int, int]]) -> DivisionGuard:
    graph = model.graph
    guards: dict[int, list[onnx.NodeProto]] = {}
    flags: list[str] = []
    labels: list[str] = []
    faults: list[str] = []
    for index, elem in targets:
        node = graph.node[index]
        prefix = f"{RESERVED_PREFIX}{index}/"
        nodes, safe, counted = _guard_nodes(prefix, node, elem)
        guards[index] = nodes
        node.input[1] = safe
        for flag, fault in counted:
            graph.output.append(helper.make_tensor_value_info(flag, TensorProto.INT64, []))
            flags.append(flag)
            labels.append(_label(node, index))
            faults.append(fault)
    ordered: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):  # each guard right before its node: still topological
        ordered.extend(guards.get(index, ()))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return DivisionGuard(model.SerializeToString(), tuple(flags), tuple(labels), tuple(faults))


def _guard_nodes(
    prefix: str, node: onnx.NodeProto, elem: int
) -> tuple[list[onnx.NodeProto], str, list[tuple[str, str]]]:
    """The nodes computing a safe divisor for `node` (its divisor of type `elem`) and the counts of
    bad ones: those nodes, the safe divisor's name and (count's name, fault) for each count."""
    dividend, divisor = node.input[0], node.input[1]
    build = _Nodes(prefix)
    work, work_type = divisor, elem
    if elem not in _DIRECT:
        work, work_type = build.add("Cast", [divisor], "wide", to=TensorProto.INT64), TensorProto.INT64
    is_zero = build.add("Equal", [work, build.constant("zero", work_type, 0)], "is_zero")
    counts = [(build.count(is_zero, "zero_divisors"), BY_ZERO)]
    bad = is_zero
    if elem in _DIRECT:  # MIN / -1 traps too; narrower types are divided as int, unsigned never
        minus_one = build.add("Equal", [work, build.constant("minus_one", work_type, -1)], "is_minus_one")
        if node.op_type == "Mod":  # x mod -1 == x mod 1 == 0: divide by 1, the same answer
            bad = build.add("Or", [is_zero, minus_one], "bad")
        else:
            minimum = build.constant("minimum", work_type, _MINIMUM[elem])
            at_min = build.add("Equal", [dividend, minimum], "is_minimum")
            overflow = build.add("And", [at_min, minus_one], "overflows")
            counts.append((build.count(overflow, "overflows_count"), OVERFLOW))
            bad = build.add("Or", [is_zero, overflow], "bad")
    replaced = build.add("Where", [bad, build.constant("one", work_type, 1), work], "safe_wide")
    safe = replaced if elem in _DIRECT else build.add("Cast", [replaced], "safe", to=elem)
    return build.nodes, safe, counts


class _Nodes:
    """Guard nodes under one prefix: each named `prefix + position`, each output `prefix + name`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []

    def add(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        name = self.prefix + output
        node = helper.make_node(op, inputs, [name], name=f"{self.prefix}{len(self.nodes)}", **attrs)
        self.nodes.append(node)
        return name

    def constant(self, output: str, elem: int, value: int) -> str:
        name = self.prefix + output
        return self.add("Constant", [], output, value=helper.make_tensor(name, elem, [], [value]))

    def count(self, condition: str, output: str) -> str:
        """The number of true elements of `condition` (0 for an empty one), as a scalar INT64."""
        counted = self.add("Cast", [condition], output + "_int64", to=TensorProto.INT64)
        # No axes (attribute before opset 13, input since): every axis, in both forms.
        return self.add("ReduceSum", [counted], output, keepdims=0)


def _is_division(node: onnx.NodeProto) -> bool:
    return node.op_type in _DIVISIONS and node.domain in ("", "ai.onnx") and len(node.input) >= 2


def _label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type} (unnamed, node {index} of the graph)"


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    names.update(init.name for init in graph.initializer)
    for node in graph.node:
        names.update(node.output)
        names.add(node.name)
    return names


def _constant_divisors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto | onnx.AttributeProto]:
    """Values fixed at load: initializers no graph input overrides, and Constant nodes' values."""
    inputs = {v.name for v in graph.input}
    constants: dict[str, onnx.TensorProto | onnx.AttributeProto] = {
        init.name: init for init in graph.initializer if init.name not in inputs
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
            constants[node.output[0]] = node.attribute[0]
    return constants


def _safe_constant(value: onnx.TensorProto | onnx.AttributeProto | None, elem: int) -> bool:
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


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of the graph's values, by onnx's shape inference over a copy of the model
    without its weights (each initializer stands as a typed input: types need no values)."""
    source = model.graph
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    for field in ("node", "input", "output", "value_info"):
        getattr(graph, field).extend(getattr(source, field))
    inputs = {v.name for v in graph.input}
    for init in source.initializer:
        if init.name not in inputs:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    inferred = shape_inference.infer_shapes(skeleton).graph
    types: dict[str, int] = {}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for node in inferred.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            types.setdefault(node.output[0], node.attribute[0].t.data_type)
    return types
